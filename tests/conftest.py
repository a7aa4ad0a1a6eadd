"""Eight simulated CPU devices, so data-parallel code runs as on an accelerator host."""

import atexit
import os
import shutil
import tempfile

# LLVM's optimisations off: the tests' models are tiny, so compiling, not running, is what costs
# (a 4-step training run: 43 s → 23 s). Commands the tests start get these flags too (fakes.xla_flags).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")

# One compilation cache for the session, this process and the commands it starts: the tests
# compile the same tiny train and eval steps again and again. (fundax.train points its own
# runs at WORKDIR/jax_cache; the tests of the cache itself name theirs.)
_CACHE = tempfile.mkdtemp(prefix="fundax_test_jax_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the property tests with a fixed seed, so a run is repeatable; locally they explore.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic fundus_findings set at 32 px, prepared once for the session."""
    from fundax.data import preparation, synthetic

    data_dir = tmp_path_factory.mktemp("tiny_data")
    config = synthetic.SyntheticConfig(num_train=40, num_test=20, height_px=64, prevalence={"macular_hole": 0.5})
    prepared = preparation.prepare("synthetic", data_dir, image_size_px=32, synthetic_config=config,
                                   show_progress=False)
    return prepared, data_dir
