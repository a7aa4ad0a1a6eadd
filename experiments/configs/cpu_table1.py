"""The Table 1 grid (experiments/table1.py) at a scale that 2 CPU cores finish in a few hours.

144 px inputs: the guided CNN's activation map is 9x9, Inception-v3's CAM 3x3 (its
seven VALID reductions), so the macula, near the centre of a macula-centred photograph,
holds the centre cell of both. The guided CNN has cpu_demo's widths (0.33-0.47 M
parameters, by finding); Inception-v3 at width 1/8 has 0.34 M, so the comparison is
between networks of one size. Every run takes the same 600 steps with cpu_demo's recipe
(docs/GUIDANCE.md): a 100-step learning-rate warm-up and a cosine decay, lambda 0 until
the classifier has learnt (or step 300) and then rising to 1 over 200 steps; the best
checkpoint after the ramp, by ``selection_metric``, is tested. The unguided and
Inception-v3 runs share the schedule (with lambda 0 throughout) and the selection window.

The shortcut confounder belongs to one finding per synthetic set: give each finding
its own set, ``--data_dir='DATA/{finding}' --set='synthetic.shortcut_finding={finding}'``
(see experiments/RESULTS.md for the command and the wall time).
"""

from fundax.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fundus_findings/synthetic"
    config.image_size = 144
    config.synthetic.num_train = 1800
    config.synthetic.num_test = 400
    config.guided_cnn.stem_width = 16
    config.guided_cnn.units_per_stage = (1, 1, 1)
    config.guided_cnn.aspp_width = 32
    config.inception_v3.width_multiplier = 0.125
    config.batch_size = 32
    config.learning_rate = 0.05
    config.warmup_steps = 100
    config.lr_schedule = "cosine"
    config.guidance_start_bce = 0.5
    config.guidance_delay_steps = 300
    config.guidance_ramp_steps = 200
    config.early_stopping_patience = 0
    config.num_train_steps = 600
    config.eval_every_steps = 100
    config.log_every_steps = 50
    config.checkpoints_to_keep = 10  # every evaluated checkpoint: experiments/selection_study.py tests them all
    config.loader_threads = 4
    return config
