"""Small in-memory records shaped like prepared ``fundus_findings`` records."""

import os

import ml_collections
import numpy as np

from fundax import findings, regions
from fundax.configs import default
from fundax import models
from fundax import optimizer
from fundax import parallel
from fundax import workdir as workdirs


def xla_flags(devices: int | None = None) -> str:
    """The session's XLA_FLAGS (conftest) for a command the tests start, with ``devices`` CPU devices
    (None: the flag left out, one device)."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count=")]
    return " ".join(flags + ([f"--xla_force_host_platform_device_count={devices}"] if devices else []))


# The example line of docs/DATA_FORMAT.md.
EXAMPLE = {
    "image_id": "snubh-000123",
    "file": "images/000123.jpg",
    "split": "train",
    "disc": [812.5, 1290.0],
    "fovea": [1890.0, 1402.5],
    "annotations": [
        {"annotator": "r01", "findings": {"macular_hole": ["macula"], "drusen": ["macula", "temporal"]}},
        {"annotator": "r07", "findings": {}},
        {"annotator": "r12", "findings": {"macular_hole": ["macula", "superior_disc"]}},
    ],
}


def records(n: int, size: int = 32, seed: int = 0) -> list[dict]:
    """Random photographs with a disc left of centre, a fovea right of it, and votes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        votes = rng.integers(0, 4, len(findings.FINDINGS)).astype(np.int32)
        bits = np.where(votes > 0, regions.regions_to_bits(["macula", "temporal"]), 0).astype(np.uint8)
        out.append({
            "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "image_id": f"fake-{i}".encode(),
            "disc": np.array([0.3 * size, 0.5 * size], np.float32) + rng.normal(0, 1, 2).astype(np.float32),
            "fovea": np.array([0.65 * size, 0.52 * size], np.float32),
            "votes": votes,
            "region_bits": bits,
            "num_graders": np.int32(3),
        })
    return out


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """A config small enough to compile and step in seconds on a CPU."""
    config = default.get_config()
    config.image_size = 32
    config.guided_cnn.stem_width = 4
    config.guided_cnn.units_per_stage = (1, 1, 1)
    config.guided_cnn.aspp_width = 4
    config.batch_size = 8
    config.num_train_steps = 4
    config.eval_every_steps = 2
    config.log_every_steps = 1
    config.loader_threads = 1
    # lambda = 1 from the first step, as the paper trains: a few steps leave no room for a warm-up.
    config.warmup_steps = config.guidance_delay_steps = config.guidance_ramp_steps = 0
    config.guidance_start_bce = 0.0
    for key, value in overrides.items():
        config[key] = value
    return config


def train_command(workdir, data_dir, steps, **overrides) -> list[str]:
    """``python -m fundax.train`` on the tiny synthetic set of ``conftest.tiny_dataset``."""
    import sys

    config = {"image_size": 32, "batch_size": 8, "eval_every_steps": 4, "log_every_steps": 1,
              "checkpoint_every_steps": 2, "guided_cnn.stem_width": 4,
              "guided_cnn.units_per_stage": "(1,1,1)", "guided_cnn.aspp_width": 4, "loader_threads": 2,
              "num_train_steps": steps,
              # The recipe's warm-up at this scale: lambda from 0 to 1 over steps 2-3 (or from the gate).
              "warmup_steps": 1, "guidance_start_bce": 0.5, "guidance_delay_steps": 1, "guidance_ramp_steps": 2,
              # A cosine decay depends on num_train_steps; tests that resume with more steps need a rate that does not.
              "lr_schedule": "plateau",
              # conftest.tiny_dataset's generator settings, so that train reuses that set.
              "synthetic.num_train": 40, "synthetic.num_test": 20, "synthetic.height_px": 64,
              "synthetic.prevalence": "macular_hole=0.5", **overrides}
    return [sys.executable, "-m", "fundax.train", "--finding=macular_hole", f"--workdir={workdir}",
            f"--data_dir={data_dir}", "--dataset=fundus_findings/synthetic",
            "--config=experiments/configs/cpu_demo.py", *(f"--config.{k}={v}" for k, v in config.items())]


def restored_state(workdir, step):
    """The train state a tiny-config run saved at ``step``, as numpy arrays."""
    import jax

    from fundax import trainer

    config = tiny_config()
    mesh = parallel.make_mesh(jax.devices()[:1])
    abstract = trainer.abstract_train_state(models.create_model(config), optimizer.make_optimizer(config),
                                            config, mesh)
    ckpts = workdirs.Workdir(workdir).checkpoints(read_only=True)
    state, _ = ckpts.restore(step, abstract)
    ckpts.close()
    return jax.tree.map(np.asarray, state)


def ingest_refused(format_name: str, src, tmp_path) -> str:
    """The message of the IngestError importing ``src`` as ``format_name`` raises; checks that the
    refused import left neither its output nor its ``.partial`` folder behind."""
    import pytest

    from fundax.ingest import ingest
    from fundax.ingest.manual import IngestError

    with pytest.raises(IngestError) as raised:
        ingest(format_name, src, tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()
    return str(raised.value)

