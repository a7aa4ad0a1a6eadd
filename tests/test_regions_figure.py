"""python -m fundax.regions_figure: the picture, and the command line's usage errors and failures."""

import pathlib
import subprocess
import sys

import pytest
from PIL import Image

from fundax import regions_figure

ROOT = pathlib.Path(__file__).resolve().parents[1]
HINT = "(see python -m fundax.regions_figure --help)"


def _failure(argv, capsys, status: int) -> list[str]:
    """The stderr lines of a command line that fails with ``status``, nothing on stdout."""
    capsys.readouterr()
    try:
        code = regions_figure.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == status and out == "", err
    return err.splitlines()


def test_the_command_draws_the_regions_over_a_synthetic_eye(tmp_path):
    out = tmp_path / "demo" / "regions.png"
    done = subprocess.run([sys.executable, "-m", "fundax.regions_figure", "--demo", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out}\n"
    with Image.open(out) as picture:
        assert picture.size[0] > 300 and picture.mode in ("RGB", "RGBA")


@pytest.mark.parametrize("args, message", [
    ([], "missing required flag --demo"),
    (["--demo=a.png", "--image=photo.jpg"], "--image needs --disc and --fovea"),
    (["--demo=a.png", "--image=photo.jpg", "--disc=10,20"], "--image needs --disc and --fovea"),
    (["--demo=a.png", "--disc=10"], "bad flag --disc=10: want x,y in pixels, got '10'"),
    (["--demo=a.png", "--fovea", "x,y"], "bad flag --fovea=x,y: want x,y in pixels, got 'x,y'"),
    (["--demo=a.png", "--dics=10,20"], "unknown flag --dics"),
    (["--demo=a.png", "photo.jpg"], "unexpected arguments: photo.jpg"),
])
def test_bad_flags_are_usage_errors_in_one_line_naming_the_flag(capsys, args, message):
    assert _failure(args, capsys, 2) == [f"error: {message}", HINT]


def test_centres_that_coincide_are_a_usage_error_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "regions.png"
    lines = _failure([f"--demo={out}", "--disc=100,100", "--fovea=100,100"], capsys, 2)
    assert lines == [("error: --disc 100.0,100.0 --fovea 100.0,100.0: disc and fovea coincide at (100.0, 100.0): "
                      "the regions are undefined"), HINT]
    assert not out.exists()


def test_a_photograph_that_cannot_be_read_fails_in_one_line(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not a photograph")
    lines = _failure([f"--demo={tmp_path / 'regions.png'}", f"--image={photo}", "--disc=1,2", "--fovea=30,2"],
                     capsys, 1)
    assert len(lines) == 1 and lines[0].startswith(f"error: {photo}"), lines


def test_help_lists_the_flags_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        regions_figure.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("Draw the 8 anatomical regions over a fundus photograph.")
    for flag in ("--demo", "--image", "--disc", "--fovea"):
        assert f"\n  {flag}: " in out, flag
