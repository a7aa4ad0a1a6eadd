"""Small enough to train macular_hole on the synthetic set on 2 CPU cores in minutes."""

from fundax.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fundus_findings/synthetic"
    config.image_size = 64
    config.synthetic.num_train = 600
    config.synthetic.num_test = 200
    config.model.stem_width = 8
    config.model.units_per_stage = (1, 1, 1)
    config.model.aspp_width = 16
    config.batch_size = 32
    config.learning_rate = 0.05
    config.num_train_steps = 600
    config.eval_every_steps = 100
    config.log_every_steps = 20
    config.loader_threads = 2
    return config
