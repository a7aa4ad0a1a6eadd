"""The paper's setting (§3.1): 512 px inputs, global batch 32, SGD + Nesterov, lambda = 1."""

from fundax.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fundus_findings/manual"
    config.image_size = 512
    config.batch_size = 32
    config.num_train_steps = 60_000
    config.eval_every_steps = 1_000
    return config
