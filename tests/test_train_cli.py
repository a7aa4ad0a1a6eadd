"""``python -m fundax.train`` and ``python -m fundax.prepare`` end to end, and their bad inputs."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import fakes

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--config=experiments/configs/cpu_demo.py",
    "--config.image_size=32", "--config.batch_size=8", "--config.eval_every_steps=2",
    "--config.log_every_steps=1", "--config.synthetic.num_train=40", "--config.synthetic.num_test=8",
    "--config.guided_cnn.stem_width=4", "--config.guided_cnn.units_per_stage=(1,1,1)",
    "--config.guided_cnn.aspp_width=4",
    "--config.loader_threads=1",
    # The recipe's warm-up at this scale (it must end by num_train_steps), and a learning rate
    # that does not depend on num_train_steps, since the module's run resumes 4 -> 6 steps.
    "--config.warmup_steps=1", "--config.guidance_delay_steps=1", "--config.guidance_ramp_steps=2",
    "--config.lr_schedule=plateau",
]


def _run(module, *args, timeout=300, env_cache=True):
    env = dict(os.environ, XLA_FLAGS=fakes.xla_flags(2), TFDS_DISABLE_PROGRESS_BAR="1")
    if not env_cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run on an embedded synthetic set, then the same command to 6 steps.

    The first compiles into WORKDIR/jax_cache (no cache in the environment), the second into the
    session's cache that conftest names in JAX_COMPILATION_CACHE_DIR: the workdir's stays as it was.
    """
    base = tmp_path_factory.mktemp("run")
    data, work = base / "data", base / "work"
    first = _run("fundax.train", "--finding=macular_hole", f"--workdir={work}", f"--data_dir={data}",
                 *TINY, "--config.num_train_steps=4", env_cache=False)
    first.cached = sorted(p.name for p in (work / "jax_cache").iterdir()) if (work / "jax_cache").is_dir() else []
    second = _run("fundax.train", "--finding=macular_hole", f"--workdir={work}", f"--data_dir={data}",
                  *TINY, "--config.num_train_steps=6")
    return first, second, data, work


@pytest.mark.slow
def test_first_run_prepares_the_synthetic_set_and_trains(trained):
    first, _, data, work = trained
    assert first.returncode == 0, first.stderr[-3000:]
    assert "prepared the synthetic set (48 photographs at 32 px)" in first.stdout
    assert "finished at step 4" in first.stdout
    assert f"checkpoints: {work.absolute()}/checkpoints" in first.stdout
    assert "no accelerator found: training on 2 CPU device(s)" in first.stderr
    config = json.loads((work / "config.json").read_text())
    assert config["finding"] == "macular_hole" and config["image_size"] == 32
    assert (work / "tensorboard").is_dir() and any((work / "tensorboard").iterdir())
    assert len(first.cached) >= 2  # the train and the eval step, at least


@pytest.mark.slow
def test_rerun_resumes_and_metrics_continue(trained):
    first, second, _, work = trained
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr and "from step 4" in second.stderr
    assert "prepared the synthetic set" not in second.stdout  # prepared once
    assert sorted(p.name for p in (work / "jax_cache").iterdir()) == first.cached  # $JAX_COMPILATION_CACHE_DIR
    assert any(pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).iterdir())
    entries = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in entries if e["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    validation = [e for e in entries if e["split"] == "validation"]
    assert [e["step"] for e in validation] == [2, 4, 6]
    assert all({"val_loss", "val_bce", "val_guidance", "learning_rate"} <= set(e) for e in validation)
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6


@pytest.mark.slow
def test_workdir_of_another_finding_is_refused(trained):
    _, _, data, work = trained
    done = _run("fundax.train", "--finding=drusen", f"--workdir={work}", f"--data_dir={data}", *TINY,
                "--config.num_train_steps=8")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "finding 'macular_hole', not 'drusen'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_one_line_errors(tmp_path, trained):
    _, _, data, _ = trained
    unknown = _run("fundax.train", "--finding=glaucoma", f"--workdir={tmp_path}/w", f"--data_dir={data}", *TINY)
    # A bad flag or config value is a usage error (exit 2, one line); a dataset that is not there, a failure (1).
    assert unknown.returncode == 2 and "unknown finding 'glaucoma'; valid findings are:" in unknown.stderr
    bad_key = _run("fundax.train", "--finding=drusen", f"--workdir={tmp_path}/w", *TINY, "--config.no_such_key=1")
    assert bad_key.returncode == 2 and "no_such_key" in bad_key.stderr and "Traceback" not in bad_key.stderr
    bad_type = _run("fundax.train", "--finding=drusen", f"--workdir={tmp_path}/w", *TINY, "--config.batch_size=big")
    assert bad_type.returncode == 2 and "batch_size" in bad_type.stderr and "Traceback" not in bad_type.stderr
    no_split = _run("fundax.train", "--finding=drusen", f"--workdir={tmp_path}/w", f"--data_dir={tmp_path}/d",
                    *TINY, "--dataset=fundus_findings/manual")
    assert no_split.returncode == 1 and "not prepared" in no_split.stderr and "Traceback" not in no_split.stderr
    bad_value = _run("fundax.train", "--finding=drusen", f"--workdir={tmp_path}/w", f"--data_dir={data}", *TINY,
                     "--config.batch_size=7")
    assert bad_value.returncode == 2 and "batch_size 7 must be a positive multiple of the 2 devices" in bad_value.stderr


@pytest.mark.slow
def test_prepare_cli_summary(tmp_path):
    done = _run("fundax.prepare", "--source=synthetic", "--num_train=30", "--num_test=10", "--image_size=32",
                f"--data_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lines read 40, accepted 40, rejected 0" in done.stdout
    assert "macular_hole" in done.stdout and "rnfl_defect" in done.stdout
    missing = _run("fundax.prepare", "--source=manual", f"--data_dir={tmp_path}")
    assert missing.returncode == 1 and "error: --source=manual needs --manual_dir" in missing.stderr
