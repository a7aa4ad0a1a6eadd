"""Stops, resumes and faults: preemption, exact resume after SIGKILL, NaN steps, damaged
checkpoints, a busy, unwritable or full workdir."""

import errno
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import fakes
from fundax import checkpoints, loop, reliability
from fundax import workdir as workdirs
from fundax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli_args(workdir, data_dir, steps, **overrides):
    return fakes.train_command(workdir, data_dir, steps, **overrides)


def _env():
    return dict(os.environ, XLA_FLAGS=fakes.xla_flags(2), TFDS_DISABLE_PROGRESS_BAR="1")


def _last_logged_step(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return max(steps, default=0)


def _start_and_stop_at(args, workdir, at_step, signum, timeout=240):
    """Start a training, and send ``signum`` once metrics.jsonl reaches ``at_step``."""
    process = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if _last_logged_step(workdir) >= at_step:
            process.send_signal(signum)
            break
        time.sleep(0.02)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _final_state(workdir, step):
    return fakes.restored_state(workdir, step)


@pytest.fixture(scope="module")
def prepared_dir(tiny_dataset):
    return tiny_dataset[1]


@pytest.mark.slow
def test_sigkill_at_random_steps_resumes_to_the_same_run(prepared_dir, tmp_path):
    steps = 30
    reference = tmp_path / "reference"
    done = subprocess.run(_cli_args(reference, prepared_dir, steps), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    rng = random.Random(7)
    kills = 0
    for target in sorted(rng.sample(range(3, steps - 3), 3)):
        code, _, err = _start_and_stop_at(_cli_args(interrupted, prepared_dir, steps), interrupted, target,
                                          signal.SIGKILL)
        if code == -signal.SIGKILL:
            kills += 1
        else:
            assert code == 0, err[-3000:]
    assert kills >= 2
    done = subprocess.run(_cli_args(interrupted, prepared_dir, steps), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    assert (interrupted / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    a, b = _final_state(reference, steps), _final_state(interrupted, steps)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sigterm_saves_and_exits_with_143_then_resumes(prepared_dir, tmp_path):
    work = tmp_path / "work"
    code, _, err = _start_and_stop_at(_cli_args(work, prepared_dir, 400), work, 5, signal.SIGTERM)
    assert code == 143, err[-3000:]
    stopped = int(err.split("stopped by SIGTERM at step ")[1].split()[0].rstrip(":;"))
    assert stopped >= 5 and "run the same command" in err
    ckpts = workdirs.Workdir(work).checkpoints(read_only=True)
    assert ckpts.latest_step() == stopped
    ckpts.close()
    assert _last_logged_step(work) == stopped
    done = subprocess.run(_cli_args(work, prepared_dir, stopped + 2), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"from step {stopped}" in done.stderr


def _poison(monkeypatch, at_batch):
    """A training stream whose ``at_batch``-th batch (0-based) carries a NaN weight."""
    original = pipeline.train_dataset

    def poisoned(*args, **kwargs):
        dataset = original(*args, **kwargs)

        def batches():
            for k, batch in enumerate(dataset):
                if k == at_batch:
                    batch = dict(batch, weight=batch["weight"].copy())
                    batch["weight"][0] = np.nan
                yield batch

        class Stream:
            def __iter__(self):
                return batches()

        return Stream()

    monkeypatch.setattr(pipeline, "train_dataset", poisoned)


def _config(data_dir, **overrides):
    settings = {"data_dir": str(data_dir), "checkpoint_every_steps": 2, "num_train_steps": 6,
                "eval_every_steps": 6, **overrides}
    return fakes.tiny_config(**settings)


def test_nonfinite_step_stops_and_keeps_the_last_good_checkpoint(prepared_dir, tmp_path, monkeypatch):
    _poison(monkeypatch, at_batch=2)  # the third step
    monkeypatch.setattr(checkpoints.Checkpoints, "save",
                        _saving_without_iterator(checkpoints.Checkpoints.save))
    with pytest.raises(reliability.NonFiniteError, match=r"at step 3; .*last good checkpoint is step 2"):
        loop.train_and_evaluate(_config(prepared_dir), tmp_path, prepared_dir, show_progress=False)
    ckpts = workdirs.Workdir(tmp_path).checkpoints(read_only=True)
    assert ckpts.all_steps() == [2]
    ckpts.close()


def test_nonfinite_steps_can_be_skipped_and_counted(prepared_dir, tmp_path, monkeypatch):
    _poison(monkeypatch, at_batch=2)
    monkeypatch.setattr(checkpoints.Checkpoints, "save",
                        _saving_without_iterator(checkpoints.Checkpoints.save))
    loop.train_and_evaluate(_config(prepared_dir, skip_nonfinite_steps=True), tmp_path, prepared_dir,
                            show_progress=False)
    entries = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {e["step"]: e.get("skipped_steps", 0) for e in entries if e["split"] == "train"}
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0}
    state = _final_state(tmp_path, 6)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


def _saving_without_iterator(save):
    # The poisoned stream is a plain generator, which has no checkpointable state.
    def wrapped(self, step, state, loop_json, data_iter=None, metrics=None):
        return save(self, step, state, loop_json, None, metrics)
    return wrapped


def _train_steps(data_dir, workdir, steps, **overrides):
    config = _config(data_dir, num_train_steps=steps)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return loop.train_and_evaluate(config, workdir, data_dir, show_progress=False)


def test_damaged_latest_checkpoint_falls_back_to_an_intact_one(prepared_dir, tmp_path, caplog):
    _train_steps(prepared_dir, tmp_path, 4)
    step4 = tmp_path / "checkpoints" / "4"
    for path in (step4 / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:10])  # truncated array data
    result = _train_steps(prepared_dir, tmp_path, 6)
    assert result["step"] == 6
    assert (workdirs.Workdir(tmp_path).damaged_checkpoint_dir / "4").is_dir()
    assert any("checkpoint 4 is damaged" in r.getMessage() and "resumed from step 2" in r.getMessage()
               for r in caplog.records)
    train_steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["split"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(prepared_dir, tmp_path):
    _train_steps(prepared_dir, tmp_path, 4)
    for step in ("2", "4"):
        shutil.rmtree(tmp_path / "checkpoints" / step / "loop")
    with pytest.raises(checkpoints.NoIntactCheckpointError, match="no intact checkpoint .*refusing to start over"):
        _train_steps(prepared_dir, tmp_path, 6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]


def test_a_checkpoint_of_another_layout_is_refused_and_left_in_place(prepared_dir, tmp_path):
    _train_steps(prepared_dir, tmp_path, 2)
    # A deeper first stage: the saved train state has fewer parameters than this config's.
    with pytest.raises(checkpoints.CheckpointMismatchError, match="checkpoint 2 in .* holds a train state of another "
                                                                  "layout .* train in another --workdir"):
        _train_steps(prepared_dir, tmp_path, 4, **{"guided_cnn.units_per_stage": (2, 1, 1)})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert not (workdirs.Workdir(tmp_path).damaged_checkpoint_dir).exists()


def test_busy_workdir_is_refused(prepared_dir, tmp_path):
    with workdirs.lock(tmp_path):
        with pytest.raises(reliability.WorkdirError, match=r"in use by another training \(pid \d+ on "):
            _train_steps(prepared_dir, tmp_path, 2)
    _train_steps(prepared_dir, tmp_path, 2)  # free again once released


def test_a_second_lock_on_a_workdir_is_refused_at_once_and_names_the_holder(tmp_path):
    with workdirs.lock(tmp_path):
        for _ in range(2):  # a refused attempt leaves the holder's lock in place
            started = time.monotonic()
            with pytest.raises(reliability.WorkdirError, match=rf"in use by another training \(pid {os.getpid()} on "):
                with workdirs.lock(tmp_path):
                    pass
            assert time.monotonic() - started < 1  # refused, not waited for
    with workdirs.lock(tmp_path / "run"):  # a workdir not there yet is made
        pass
    with workdirs.lock(tmp_path):  # free again once released
        pass
    assert "fcntl" not in reliability.__dict__


def test_unwritable_workdir_is_a_clear_error(prepared_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(reliability.WorkdirError, match="cannot write to workdir .*file/run"):
        _train_steps(prepared_dir, blocker / "run", 2)


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one(prepared_dir, tmp_path, monkeypatch):
    _train_steps(prepared_dir, tmp_path, 2)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        # The disk fills as step 4 is written: Orbax writes into a temporary folder, renamed only
        # once complete, so what a real full disk leaves behind is that folder, half written.
        if step == 4:
            (self.directory / "4.orbax-checkpoint-tmp").mkdir()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(checkpoints.CheckpointWriteError, match="step 4 failed .*No space left.*step 2, is kept"):
        _train_steps(prepared_dir, tmp_path, 4)
    monkeypatch.undo()
    ckpts = workdirs.Workdir(tmp_path).checkpoints(read_only=True)
    assert ckpts.all_steps() == [2]
    ckpts.close()
    assert _train_steps(prepared_dir, tmp_path, 4)["step"] == 4  # resumes from 2 once there is room


def test_save_clock_is_due_once_the_minutes_have_passed_since_the_last_save():
    now = [100.0]
    clock = loop.SaveClock(0.5, clock=lambda: now[0])
    assert not clock.due()
    now[0] = 129.9
    assert not clock.due()
    now[0] = 130.0
    assert clock.due()
    clock.saved()  # any save restarts the wait, an evaluation's too
    now[0] = 159.0
    assert not clock.due()
    assert not loop.SaveClock(0.0, clock=lambda: now[0]).due()  # 0: off


def test_checkpoint_every_minutes_saves_between_evaluations(prepared_dir, tmp_path, monkeypatch):
    # A fake clock a minute further on each reading (one at the start, one at each logging step's
    # check, one at each save): with checkpoint_every_minutes=2 every second logging step saves;
    # evaluations (every 6 steps, and the last) save as well and restart the wait.
    ticks = iter(range(0, 10_000, 60))
    real = loop.SaveClock
    monkeypatch.setattr(loop, "SaveClock", lambda minutes: real(minutes, clock=lambda: float(next(ticks))))
    _train_steps(prepared_dir, tmp_path, 9, checkpoint_every_steps=0, eval_every_steps=6,
                 checkpoint_every_minutes=2.0, checkpoints_to_keep=20)
    ckpts = workdirs.Workdir(tmp_path).checkpoints(read_only=True)
    saved = ckpts.all_steps()
    ckpts.close()
    assert sorted(saved) == [2, 4, 6, 8, 9]


@pytest.mark.parametrize("environ, fails", [
    ({}, False),  # not under SLURM
    ({"SLURM_LOCALID": "3"}, False),  # every GPU of the node visible
    ({"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, False),
    ({"SLURM_LOCALID": "0", "CUDA_VISIBLE_DEVICES": "5"}, False),  # the first task of a node: GPU 0 is there
    ({"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "3"}, True),  # one GPU bound to the task
    ({"SLURM_LOCALID": "3", "CUDA_VISIBLE_DEVICES": "3", "JAX_LOCAL_DEVICE_IDS": "0"}, False),
])
def test_a_slurm_task_bound_to_one_gpu_is_refused_at_start_up(environ, fails):
    from fundax import parallel

    if fails:
        with pytest.raises(ValueError, match=r"SLURM_LOCALID=3\) sees 1 GPU\(s\) \(CUDA_VISIBLE_DEVICES=3\), but JAX "
                                             r"would take GPU number 3.*JAX_LOCAL_DEVICE_IDS=0"):
            parallel.check_gpu_binding(environ)
    else:
        parallel.check_gpu_binding(environ)


def test_checkpoint_every_minutes_must_not_be_negative():
    from fundax import configs

    with pytest.raises(configs.ConfigError, match="checkpoint_every_minutes must be >= 0"):
        configs.validate(fakes.tiny_config(checkpoint_every_minutes=-1.0), 1)


def test_a_training_whose_lease_was_taken_over_stops_before_writing_a_checkpoint(prepared_dir, tmp_path,
                                                                                   monkeypatch):
    class TakenOver:  # a WorkdirLease whose renewal found another holder
        lost = True

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(workdirs, "lock", lambda workdir: TakenOver())
    with pytest.raises(reliability.WorkdirError, match="taken over by another training: stopped at step 2 "
                                                       "without saving it"):
        _train_steps(prepared_dir, tmp_path, 4)
    assert not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
