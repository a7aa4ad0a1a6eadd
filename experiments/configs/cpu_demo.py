"""Small enough to train macular_hole on the synthetic set on 2 CPU cores in about 5 minutes.

128 px inputs give an 8x8 activation map. The recipe of docs/GUIDANCE.md at this scale:
the learning rate warms up over 100 steps; lambda stays 0 until the classifier has learnt
(the training BCE halves the BCE of the prevalence alone, around step 150-200 here) or
step 300, then rises to the paper's 1 over 200 steps; the learning rate decays on a cosine
over the 600 steps. Only checkpoints after the ramp are selected.
"""

from fundax.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fundus_findings/synthetic"
    config.image_size = 128
    config.synthetic.num_train = 1800
    config.synthetic.num_test = 200
    config.guided_cnn.stem_width = 16
    config.guided_cnn.units_per_stage = (1, 1, 1)
    config.guided_cnn.aspp_width = 32
    config.batch_size = 32
    config.learning_rate = 0.05
    config.warmup_steps = 100
    config.lr_schedule = "cosine"
    config.guidance_start_bce = 0.5
    config.guidance_delay_steps = 300
    config.guidance_ramp_steps = 200
    config.num_train_steps = 600
    config.eval_every_steps = 100
    config.log_every_steps = 50
    config.loader_threads = 4
    return config
