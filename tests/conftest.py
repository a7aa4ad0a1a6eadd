"""Eight simulated CPU devices, so data-parallel code runs as on an accelerator host."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")
