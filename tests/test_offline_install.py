"""The offline install: the wheelhouse's resolver on a made-up index, and, end to end, a
wheelhouse built for this Python that installs fundax into a fresh venv with no package index.

The end-to-end test stands a "base image" in for the target: a new venv that sees this
checkout's ``.venv`` site-packages, less a few small distributions, through a ``.pth`` file.
The wheelhouse must bring exactly those (they are downloaded, the rest is not).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "launch" / "offline"

_spec = importlib.util.spec_from_file_location("wheelhouse", OFFLINE / "wheelhouse.py")
wh = importlib.util.module_from_spec(_spec)
sys.modules["wheelhouse"] = wh
_spec.loader.exec_module(wh)


def make_wheel(folder: pathlib.Path, name: str, version: str, requires: list[str] = (),
               tag: str = "py3-none-any") -> pathlib.Path:
    """A wheel with METADATA alone: all the resolver reads."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tag}.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


class FakePip:
    """An index in memory: {name: {version: requires}}; serves the newest version within a specifier."""

    def __init__(self, folder: pathlib.Path, index: dict[str, dict[str, list[str]]]):
        self.folder, self.index, self.asked = folder, index, []

    def download(self, name, specifier):
        self.asked.append(f"{name}{specifier}")
        versions = [v for v in self.index[name] if specifier.contains(v, prereleases=True)]
        if not versions:
            raise wh.WheelhouseError(f"no {name}{specifier}")
        best = max(versions, key=wh.Version)
        return make_wheel(self.folder, name, best, self.index[name][best])


TARGET = wh.Target("3.12", "manylinux_2_28_x86_64")


def resolve(tmp_path, root_requires, index, present=(), extras=(), omit=()):
    root = wh.read_wheel(make_wheel(tmp_path, "fundax", "0.1.0", root_requires))
    pip = FakePip(tmp_path, index)
    found = wh.resolve(root, set(extras), wh.read_present(list(present)), TARGET, pip, frozenset(omit))
    return found, pip


def versions(resolution):
    return {name: str(w.version) for name, w in resolution.wheels.items() if name != "fundax"}


def test_platform_tags_cover_every_older_glibc_and_the_legacy_names():
    tags = TARGET.pip_platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and tags[-3:] == [
        "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_29_x86_64" not in tags
    assert wh.Target("3.12", "manylinux2014_aarch64").pip_platforms()[0] == "manylinux_2_17_aarch64"
    assert wh.Target("3.12", "macosx_14_0_arm64").pip_platforms() == ["macosx_14_0_arm64"]
    env = wh.Target("3.11", "win_amd64").marker_environment()
    assert (env["sys_platform"], env["platform_machine"], env["python_version"]) == ("win32", "AMD64", "3.11")
    with pytest.raises(wh.WheelhouseError, match="a version like 3.12"):
        wh.Target("312", "manylinux_2_28_x86_64")
    with pytest.raises(wh.WheelhouseError, match="unknown --platform 'x86_64'"):
        wh.Target("3.12", "x86_64")


def test_present_reads_pip_freeze_lines():
    present = wh.read_present(["# a comment", "", "NumPy==2.4.6", "ml_collections==1.1.0  # pinned",
                               "-e git+https://example.org/x.git#egg=x", "local @ file:///tmp/local"])
    assert present == {"numpy": wh.Version("2.4.6"), "ml-collections": wh.Version("1.1.0"), "x": None, "local": None}
    with pytest.raises(wh.WheelhouseError, match="not a line of pip freeze"):
        wh.read_present(["==1.0"])


def test_the_walk_brings_what_is_missing_and_stops_at_what_is_present(tmp_path):
    index = {"a": {"1.0": ["b>=2", "numpy", "old-only; python_version < '3.12'", "win-only; sys_platform == 'win32'",
                           "test-only; extra == 'test'"]},
             "b": {"1.0": [], "2.0": ["c"], "3.0": ["c"]}, "c": {"1.0": []}}
    found, pip = resolve(tmp_path, ["a", "numpy>=1.26"], index, present=["numpy==2.4.6"])
    # b's newest release, c for b, nothing for the markers false on Python 3.12 on Linux, numpy from the base.
    assert versions(found) == {"a": "1.0", "b": "3.0", "c": "1.0"}
    assert found.relies_on == {"numpy": wh.SpecifierSet(">=1.26")}
    assert found.required_by["c"] == {"b"} and found.required_by["numpy"] == {"a", "fundax"}
    assert pip.asked == ["a", "b>=2", "c"]


def test_a_later_specifier_picks_again_and_keeps_one_version(tmp_path):
    index = {"a": {"1.0": ["b<3"]}, "b": {"2.0": ["old-dep"], "3.0": ["new-dep"]},
             "new-dep": {"1.0": []}, "old-dep": {"1.0": []}}
    found, pip = resolve(tmp_path, ["b", "a"], index)
    # b 3.0 came first, then a asked for b<3: b 2.0 replaces it, and 3.0's own requirement goes with it.
    assert versions(found) == {"a": "1.0", "b": "2.0", "old-dep": "1.0"}
    assert "b<3" in pip.asked


def test_extras_of_present_and_missing_distributions(tmp_path):
    index = {"etils": {"1.15.0": ["fsspec; extra == 'epath'", "einops; extra == 'enp'", "numpy; extra == 'enp'"]},
             "tool": {"1.0": ["etils[epath]", "lib[fast]"]},
             "lib": {"1.0": ["speedup; extra == 'fast'", "slowdown; extra == 'slow'"]},
             "fsspec": {"1.0": []}, "einops": {"1.0": []}, "speedup": {"1.0": []}}
    found, pip = resolve(tmp_path, ["tool", "etils[enp]"], index, present=["etils==1.15.0", "numpy==2.0"])
    # etils is in the base image; the extras asked of it need einops and fsspec, which are not.
    assert versions(found) == {"tool": "1.0", "lib": "1.0", "speedup": "1.0", "einops": "1.0", "fsspec": "1.0"}
    assert "etils==1.15.0" in pip.asked and "numpy" in found.relies_on


def test_equivalents_replacements_and_omissions(tmp_path):
    index = {"opencv-python-headless": {"5.0": []}, "tfds": {"1.0": ["pyarrow", "tqdm"]},
             "pyarrow": {"26.0": ["huge"]}, "tqdm": {"4.70": []}, "numpy": {"2.4": []}}
    found, pip = resolve(tmp_path, ["opencv-python-headless>=4.9", "tfds", "numpy>=2"], index,
                         present=["opencv-python==5.0", "numpy==1.26"], omit=["pyarrow"])
    assert versions(found) == {"tfds": "1.0", "tqdm": "4.70", "numpy": "2.4"}
    assert found.provided == {"opencv-python-headless": "opencv-python"}
    assert found.replaced == {"numpy": "2.4"} and "numpy" not in found.relies_on
    assert found.required_by["pyarrow"] == {"tfds"} and not any(a.startswith("pyarrow") for a in pip.asked)


def test_check_refuses_another_python_or_a_base_without_what_the_wheels_rely_on(tmp_path, capsys):
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python": here, "wheels": [], "relies_on": {"numpy": ">=1.0", "no-such-distribution": ">=1"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert wh.main(["check", f"--wheelhouse={tmp_path}"]) == 1
    assert "expects the base image to have no-such-distribution>=1 (not installed)" in capsys.readouterr().err
    manifest.update(relies_on={"numpy": ">=1.0"})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert wh.main(["check", f"--wheelhouse={tmp_path}"]) == 0
    manifest.update(python="3.99")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert wh.main(["check", f"--wheelhouse={tmp_path}"]) == 1
    assert f"is for Python 3.99, this is Python {here}" in capsys.readouterr().err


def test_the_scripts_take_flags_like_every_launch_script(tmp_path):
    def run(script, *args):
        return subprocess.run([OFFLINE / script, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)

    shown = run("wheelhouse.sh", "--help")
    assert shown.returncode == 0 and "--present=VALUE" in shown.stdout and "[PRESENT]" in shown.stdout
    refused = run("wheelhouse.sh", "--python=3.12")
    assert refused.returncode == 2 and "missing --present (or set PRESENT)" in refused.stderr
    (tmp_path / "present.txt").write_text("numpy==2.4.6\n")
    (printed,) = run("wheelhouse.sh", "--dry-run", "--python", "3.12", "--present=present.txt", "--omit=pyarrow,x",
                     "--extra=bench", "--pip-python=python3").stdout.splitlines()
    assert printed.split()[2:] == [
        "build", "--python=3.12", "--platform=manylinux_2_28_x86_64", "--present=present.txt", "--out=wheelhouse",
        f"--source={ROOT}", "--pip-python=python3", "--extra=bench", "--omit=pyarrow", "--omit=x"]
    printed = run("install.sh", "--dry-run", "--wheelhouse=wh", "--target=site").stdout.splitlines()
    assert printed[1].split()[:9] == ["python3", "-m", "pip", "install", "--no-index", "--find-links=wh", "--no-deps",
                                      "--requirement=wh/requirements.txt", "--disable-pip-version-check"]
    assert printed[1].endswith("--target=site --upgrade") and printed[2].startswith("env PYTHONPATH=site")
    refused = run("install.sh", "--wheelhouse=nowhere")
    assert refused.returncode == 2 and "nowhere holds no requirements.txt" in refused.stderr


# --- end to end -------------------------------------------------------------------------

MISSING = ("ml-collections", "tensorboardx")  # small, pure Python, and fundax cannot import without them


def offline_env(**extra: str) -> dict[str, str]:
    """No pip configuration (its find-links and indexes), no index at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"} | extra


@pytest.mark.slow
def test_a_wheelhouse_installs_fundax_into_a_fresh_venv_without_an_index(tmp_path):
    site = pathlib.Path(sysconfig.get_paths()["purelib"])
    dists = {metadata.Distribution.at(p).metadata["Name"]: metadata.Distribution.at(p)
             for p in site.glob("*.dist-info")}
    names = {wh.canonicalize_name(n): n for n in dists}
    assert set(MISSING) <= set(names), "the test needs ml_collections and tensorboardX in this environment"
    left_out = {*MISSING, "fundax"}
    present = [f"{n}=={d.version}" for n, d in dists.items() if wh.canonicalize_name(n) not in left_out]
    (tmp_path / "present.txt").write_text("\n".join(present) + "\n")

    # The base image: every top-level entry of site-packages but those of the left-out distributions.
    hidden = {pathlib.PurePath(f).parts[0] for n in left_out if n in names for f in dists[names[n]].files or ()}
    hidden |= {p.name for p in site.glob("__editable__*fundax*")}
    base = tmp_path / "base"
    base.mkdir()
    for entry in site.iterdir():
        if entry.name not in hidden and entry.name != "__pycache__":
            (base / entry.name).symlink_to(entry)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    fresh_site = pathlib.Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # addsitedir, not a bare path: the base's own .pth files are read too, as in a real site-packages.
    (fresh_site / "base.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")
    before = subprocess.run([python, "-c", "import ml_collections"], capture_output=True, text=True, cwd=tmp_path)
    assert before.returncode != 0 and "No module named 'ml_collections'" in before.stderr

    out = tmp_path / "wheelhouse"
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = f"manylinux_{platform.libc_ver()[1].replace('.', '_') or '2_17'}_{platform.machine()}"
    build = subprocess.run([OFFLINE / "wheelhouse.sh", f"--python={here}", f"--platform={tag}",
                            f"--present={tmp_path / 'present.txt'}", f"--out={out}", f"--pip-python={sys.executable}",
                            "--max-mb=5"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(w["name"] for w in manifest["wheels"]) == sorted([*MISSING, "fundax"])
    assert (out / "requirements.txt").read_text().splitlines()[-1] == "fundax==0.1.0"
    assert len(list(out.glob("*.whl"))) == 3 and manifest["relies_on"]["absl-py"]

    install = subprocess.run([OFFLINE / "install.sh", f"--wheelhouse={out}", f"--python={python}"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=offline_env())
    assert install.returncode == 0, install.stdout + install.stderr
    assert "fundax 0.1.0 installed" in install.stdout
    where = subprocess.run([python, "-c", "import fundax, ml_collections, tensorboardX, absl\n"
                            "for m in (fundax, ml_collections, tensorboardX, absl): print(m.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    # Installed into the fresh venv; what the base image had still comes from there.
    assert [pathlib.Path(p).is_relative_to(fresh_site) for p in where] == [True, True, True, False]
    helped = subprocess.run([python, "-m", "fundax.train", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env=offline_env(), timeout=120)
    # absl prints the usage and exits 1, as it does in the checkout's own environment.
    assert "--finding" in helped.stdout and "--workdir" in helped.stdout and not helped.stderr
    assert helped.returncode == subprocess.run([sys.executable, "-m", "fundax.train", "--help"],
                                               capture_output=True, cwd=tmp_path, timeout=120).returncode
