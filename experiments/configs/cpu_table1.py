"""The Table 1 grid (experiments/table1.py) at a scale that 2 CPU cores finish within the hour.

Measured on 2 idle cores (experiments/RESULTS.md): at 144 px the guided CNN trains 3.6-3.7
steps/s and Inception-v3 6.0, so a run of 500 steps, evaluation included, takes about 2.5 min
(guided, unguided) and 1.8 min (Inception-v3): 3 findings x 3 variants x 2 seeds in ~42 min.

144 px inputs: the guided CNN's activation map is 9x9, Inception-v3's CAM 3x3 (its
seven VALID reductions), so the macula, near the centre of a macula-centred photograph,
holds the centre cell of both. The guided CNN has cpu_demo's widths (0.33-0.47 M
parameters, by finding); Inception-v3 at width 1/8 has 0.34 M, so the comparison is
between networks of one size. Every run takes the same number of steps (cosine decay,
no early stop) and the checkpoint with the lowest validation loss is tested, as in the
paper (§3.1).

The shortcut confounder belongs to one finding per synthetic set: give each finding
its own set, ``--data_dir='DATA/{finding}' --set='synthetic.shortcut_finding={finding}'``
(see experiments/RESULTS.md for the command).
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
    config.lr_schedule = "cosine"
    config.early_stopping_patience = 0
    config.num_train_steps = 500
    config.eval_every_steps = 100
    config.log_every_steps = 50
    config.loader_threads = 4
    return config
