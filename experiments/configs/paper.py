"""The paper's setting (§3.1): 512 px inputs, global batch 32, SGD + Nesterov, lambda ending at 1.

It trains with fundax's recipe (docs/GUIDANCE.md, the defaults of fundax/configs/default.py):
a 500-step learning-rate warm-up; lambda 0 until the training BCE is half the BCE of the
prevalence alone (at the latest step 5,000), then rising to 1 over 2,000 steps; the plateau
schedule and the best checkpoint by validation BCE, counted after the ramp. The paper's own
setting, lambda = 1 from the first step and selection by the total validation loss:
``--config.guidance_start_bce=0 --config.guidance_delay_steps=0 --config.guidance_ramp_steps=0
--config.warmup_steps=0 --config.selection_metric=val_loss``.
"""

from fundax.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "fundus_findings/manual"
    config.image_size = 512
    config.batch_size = 32
    config.num_train_steps = 60_000
    config.eval_every_steps = 1_000
    return config
