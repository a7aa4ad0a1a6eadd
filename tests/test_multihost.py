"""Two processes × two CPU devices (gloo collectives) against one process × four devices."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fakes
from fundax import workdir as workdirs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(devices):
    return dict(os.environ, XLA_FLAGS=fakes.xla_flags(devices),
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
def test_two_processes_stopped_by_sigterm_resume_and_evaluate_like_one(tiny_dataset, tmp_path):
    """SIGTERM reaches the two processes 1.5 s apart, as a preemption notice reaches a pod's workers:
    both stop at one step with status 143; the resumed run then equals one uninterrupted process
    of four devices, step by step, and so does its evaluation."""
    _, data_dir = tiny_dataset
    single, multi = tmp_path / "single", tmp_path / "multi"
    processes = _start_two([fakes.train_command(multi, data_dir, 400)] * 2)
    deadline = time.monotonic() + 300
    while _logged_step(multi) < 3 and time.monotonic() < deadline and processes[0].poll() is None:
        time.sleep(0.05)
    processes[0].send_signal(signal.SIGTERM)
    time.sleep(1.5)
    if processes[1].poll() is None:
        processes[1].send_signal(signal.SIGTERM)
    steps = []
    for p, _, err in _finish(processes):
        assert p.returncode == 143, err[-3000:]
        steps.append(int(err.split("stopped by SIGTERM at step ")[1].split()[0].rstrip(":;")))
    assert steps[0] == steps[1] and 3 <= steps[0] < 400
    stopped, end = steps[0], steps[0] + 2
    ckpts = workdirs.Workdir(multi).checkpoints(read_only=True)
    assert ckpts.latest_step() == stopped
    ckpts.close()

    (_, err0), _ = _run_two(fakes.train_command(multi, data_dir, end))
    assert f"from step {stopped}" in err0  # resumed, every process from its own iterator state
    done = subprocess.run(fakes.train_command(single, data_dir, end), cwd=ROOT, env=_env(4),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]

    a, b = _entries(single), _entries(multi)
    assert [(e["step"], e["split"]) for e in a] == [(e["step"], e["split"]) for e in b]
    for x, y in zip(a, b):
        for key in ("loss", "bce", "guidance", "grad_norm", "val_loss", "val_bce", "val_guidance"):
            if key in x:
                np.testing.assert_allclose(x[key], y[key], rtol=1e-4, atol=1e-5, err_msg=f"{key} at {x['step']}")
    for p, q in zip(jax.tree.leaves(_params(single, end)), jax.tree.leaves(_params(multi, end))):
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


# --- fault paths of several processes ---------------------------------------------------------------------

def _start_two(commands, env_devices=2):
    """Process 0 and process 1 of one run, each with its own command line."""
    port = _free_port()
    return [subprocess.Popen(
        [*command, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=_env(env_devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, command in enumerate(commands)]


def _finish(processes, timeout=400):
    return [(p, *p.communicate(timeout=timeout)) for p in processes]


def _error_line(err):
    return [line for line in err.splitlines() if line.startswith("error:")]


def _two_process_python(code, timeout=120):
    """``code`` run by two processes of one CPU run; their (returncode, stdout, stderr)."""
    prelude = ("import sys, jax\n"
               "jax.config.update('jax_cpu_collectives_implementation', 'gloo')\n"
               "jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))\n"
               "from fundax import parallel\n")
    port = _free_port()
    processes = [subprocess.Popen([sys.executable, "-c", prelude + code, f"127.0.0.1:{port}", str(i)], cwd=ROOT,
                                  env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    return [(p.returncode, out, err) for p, (out, err) in ((p, p.communicate(timeout=timeout)) for p in processes)]


@pytest.mark.slow
def test_a_refusal_on_one_process_stops_every_process_with_its_line():
    code = ("error = ValueError('the disk of host 1 is full') if jax.process_index() == 1 else None\n"
            "try:\n    parallel.raise_together(error, RuntimeError)\n"
            "except Exception as e:\n    print(type(e).__name__, '|', e)\n"
            "parallel.raise_together(None, RuntimeError)\n"  # none failed: every process returns
            "same = 'abc' if jax.process_index() == 0 else 'abd'\n"
            "try:\n    parallel.check_same('abc', 'the thing', LookupError)\n    print('same')\n"
            "    parallel.check_same(same, 'the dataset in /data', LookupError)\n"
            "except LookupError as e:\n    print('differs |', e)\n")
    results = _two_process_python(code)
    for returncode, _, err in results:
        assert returncode == 0, err[-3000:]
    lines = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for _, out, _ in results]
    # Process 1 raises its own error; process 0 the same line, as the kind it was asked for.
    assert lines[0][0] == "RuntimeError | process 1: the disk of host 1 is full"
    assert lines[1][0] == "RuntimeError | process 1: the disk of host 1 is full"
    for out in lines:
        assert out[1] == "same"
        assert out[2].startswith("differs | the dataset in /data differs between processes: process(es) 1 ")


@pytest.mark.slow
def test_a_busy_workdir_stops_every_process_at_once_with_the_same_line(tiny_dataset, tmp_path):
    _, data_dir = tiny_dataset
    work = tmp_path / "work"
    with workdirs.lock(work):
        started = time.monotonic()
        results = _finish(_start_two([fakes.train_command(work, data_dir, 4)] * 2), timeout=120)
        elapsed = time.monotonic() - started
    lines = []
    for p, _, err in results:
        assert p.returncode == 1, err[-3000:]
        lines.append(_error_line(err))
    assert lines[0] == lines[1] and len(lines[0]) == 1 and "is in use by another training (pid " in lines[0][0]
    assert elapsed < 60  # not a collective's time-out


@pytest.mark.slow
def test_each_host_prepares_its_data_and_a_damaged_checkpoint_is_moved_once(tmp_path):
    """Two hosts, each with its own data_dir: each prepares the synthetic set; a damaged latest
    checkpoint is moved aside by one process while both resume from the one before."""
    work, dirs = tmp_path / "work", [tmp_path / "host0_data", tmp_path / "host1_data"]
    results = _finish(_start_two([fakes.train_command(work, d, 4) for d in dirs]))
    for p, out, err in results:
        assert p.returncode == 0, err[-3000:]
    for d in dirs:
        assert (d / "fundus_findings" / "synthetic").is_dir()
    (_, out0, _), (_, out1, _) = results
    assert "prepared the synthetic set" in out0 and "prepared the synthetic set" in out1
    assert "finished at step 4" in out0 and "finished at step" not in out1  # one summary, from process 0

    for path in (work / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])  # truncated array data
    results = _finish(_start_two([fakes.train_command(work, d, 6) for d in dirs]))
    for p, out, err in results:
        assert p.returncode == 0, err[-3000:]
        assert "checkpoint 4 is damaged" in err and "resumed from step 2" in err
        assert "prepared the synthetic set" not in out  # reused
    assert (work / "damaged_checkpoints" / "4").is_dir()
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())[-1] == 6
    train_steps = [e["step"] for e in _entries(work) if e["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]


def _logged_step(workdir):
    try:
        return max((e["step"] for e in _entries(workdir)), default=0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0
