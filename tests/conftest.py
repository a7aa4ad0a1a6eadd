"""Eight simulated CPU devices, so data-parallel code runs as on an accelerator host."""

import atexit
import os
import shutil
import tempfile

# LLVM's optimisations off: the tests' models are tiny, so compiling, not running, is what costs
# (a 4-step training run: 43 s → 23 s). Commands the tests start get these flags too (fakes.xla_flags);
# the workers of `make test` (pytest-xdist) inherit them from the first process, hence only once.
_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(_flags + [flag for flag in _XLA_FLAGS if flag not in _flags])
os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")

# One compilation cache for the session: this process, its workers and the commands they start
# compile the same tiny train and eval steps again and again. Bounded, so that JAX locks it around
# each read and write (fundax.parallel.enable_compilation_cache says why).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="fundax_test_jax_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
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
