"""Two processes × two CPU devices (gloo collectives) against one process × four devices."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import fakes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices):
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                TFDS_DISABLE_PROGRESS_BAR="1")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(command, timeout=400):
    """The same command as process 0 and process 1 of one run."""
    port = _free_port()
    processes = [subprocess.Popen(
        [*command, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=timeout) for p in processes]
    for p, (out, err) in zip(processes, results):
        assert p.returncode == 0, err[-4000:]
    return results


def _entries(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir, step):
    return fakes.restored_state(workdir, step).params


@pytest.mark.slow
def test_two_processes_train_resume_and_evaluate_like_one(tiny_dataset, tmp_path):
    _, data_dir = tiny_dataset
    single, multi = tmp_path / "single", tmp_path / "multi"
    done = subprocess.run(fakes.train_command(single, data_dir, 6), cwd=ROOT, env=_env(4),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    _run_two(fakes.train_command(multi, data_dir, 4))
    (_, err0), _ = _run_two(fakes.train_command(multi, data_dir, 6))
    assert "from step 4" in err0  # resumed, every process from its own iterator state

    a, b = _entries(single), _entries(multi)
    assert [(e["step"], e["split"]) for e in a] == [(e["step"], e["split"]) for e in b]
    for x, y in zip(a, b):
        for key in ("loss", "bce", "guidance", "grad_norm", "val_loss", "val_bce", "val_guidance"):
            if key in x:
                np.testing.assert_allclose(x[key], y[key], rtol=1e-4, atol=1e-5, err_msg=f"{key} at {x['step']}")
    for p, q in zip(jax.tree.leaves(_params(single, 6)), jax.tree.leaves(_params(multi, 6))):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-5)

    evaluate = [sys.executable, "-m", "fundax.evaluate", "--split=test", "--checkpoint=latest"]
    done = subprocess.run([*evaluate, f"--workdir={single}"], cwd=ROOT, env=_env(4), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _run_two([*evaluate, f"--workdir={multi}"])
    m1 = json.loads((single / "eval" / "test_metrics.json").read_text())
    m2 = json.loads((multi / "eval" / "test_metrics.json").read_text())
    for key in ("n_positive", "n_negative", "n_excluded"):
        assert m1[key] == m2[key]
    for key in ("auroc", "air_tp", "air_tp_pooled", "threshold"):
        if m1[key] is not None:
            np.testing.assert_allclose(m1[key], m2[key], rtol=1e-4, atol=1e-5)
    rows1 = (single / "eval" / "test_examples.csv").read_text().splitlines()
    rows2 = (multi / "eval" / "test_examples.csv").read_text().splitlines()
    assert len(rows1) == len(rows2) == 21 and [r.split(",")[0] for r in rows1] == [r.split(",")[0] for r in rows2]
