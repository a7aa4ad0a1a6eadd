"""``python -m fundax.prepare`` and the preparing part of ``python -m fundax.train``: bad inputs in one line."""

import os
import pathlib
import subprocess
import sys

import pytest

import fakes
from test_dataset import _line, _photo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(module, *args, timeout=120):
    env = dict(os.environ, XLA_FLAGS=fakes.xla_flags(2), TFDS_DISABLE_PROGRESS_BAR="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(done, *parts):
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for part in parts:
        assert part in lines[0]


@pytest.fixture
def manual(tmp_path):
    root = tmp_path / "manual"
    _photo(root / "images" / "a.png")
    (root / "annotations.jsonl").write_text(_line("tr0", "images/a.png") + "\n")
    return root


def test_data_dir_that_is_a_file(tmp_path, manual):
    (tmp_path / "file").write_text("x")
    done = _run("fundax.prepare", "--source=manual", f"--manual_dir={manual}", f"--data_dir={tmp_path}/file")
    _one_line_error(done, f"--data_dir {tmp_path}/file is not a directory")
    under = _run("fundax.prepare", "--source=manual", f"--manual_dir={manual}", f"--data_dir={tmp_path}/file/data")
    _one_line_error(under, f"--data_dir {tmp_path}/file/data cannot be created")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes whatever the mode")
def test_data_dir_that_is_not_writable(tmp_path, manual):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o500)
    try:
        done = _run("fundax.prepare", "--source=manual", f"--manual_dir={manual}", f"--data_dir={data_dir}")
    finally:
        data_dir.chmod(0o700)
    _one_line_error(done, f"--data_dir {data_dir} is not writable")


def test_manual_dir_without_annotations(tmp_path):
    (tmp_path / "empty").mkdir()
    done = _run("fundax.prepare", "--source=manual", f"--manual_dir={tmp_path}/empty", f"--data_dir={tmp_path}/d")
    _one_line_error(done, f"--manual_dir {tmp_path}/empty holds no annotations.jsonl")


def test_a_train_only_directory_prepares_and_says_which_splits_are_empty(tmp_path, manual):
    done = _run("fundax.prepare", "--source=manual", f"--manual_dir={manual}", f"--data_dir={tmp_path}/d",
                "--image_size=32")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "empty splits, left out of the dataset: validation, test" in done.stdout
    assert (tmp_path / "d" / "fundus_findings" / "manual" / "1.1.0" / "rejects.jsonl").read_text() == ""


def test_train_checks_the_whole_config_before_preparing(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    done = _run("fundax.train", "--finding=macular_hole", f"--workdir={tmp_path}/work", f"--data_dir={data_dir}",
                "--config=experiments/configs/cpu_demo.py", "--config.synthetic.num_train=4",
                "--config.synthetic.num_test=2", "--config.dtype=float16", timeout=60)
    # A bad config value is a usage error: exit 2, the error on one line, then where the help is.
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines() == ["error: bad config: dtype must be 'float32' or 'bfloat16', got 'float16'",
                                        "(see python -m fundax.train --help)"]
    assert not any(data_dir.iterdir())
