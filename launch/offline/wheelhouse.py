"""A wheelhouse for a machine without package access: fundax and exactly what its base image lacks.

    python launch/offline/wheelhouse.py build --python=3.12 --platform=manylinux_2_28_x86_64 \\
        --present=present.txt --out=wheelhouse [--extra=bench] [--max-mb=60]
    python launch/offline/wheelhouse.py check --wheelhouse=wheelhouse [--path=DIR]

``build`` runs where pip reaches a package index. It builds fundax's wheel from this
checkout, then walks fundax's requirements (with the extras asked for) through the
``Requires-Dist`` of every wheel it downloads, evaluating environment markers for the
target Python and platform. A requirement that the base image meets (``--present``: the
output of ``pip list --format=freeze`` there) ends the walk along that branch; anything
else is downloaded as a wheel for the target (``pip download --no-deps --only-binary``),
one version of each, or built from its sdist when it is pure Python. The folder gets the
wheels, ``requirements.txt`` (what ``install.sh`` installs, pinned) and ``manifest.json``
(the target, and which distributions of the base image the wheels rely on).

``check`` runs on the target, before installing: the right Python, and every
distribution the wheelhouse relies on installed in a version that satisfies it.

Only the standard library, pip, and ``packaging`` (pip's own copy when it is not installed).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import email.parser
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # a bare base image: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"
REQUIREMENTS = "requirements.txt"

# Distributions that install the same module under another name: OpenCV's four wheels all
# provide cv2, so a base image with opencv-python meets fundax's opencv-python-headless
# (installing both would leave two copies of cv2 fighting over one folder).
PROVIDED_BY = {
    "opencv-python-headless": ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"),
}


class WheelhouseError(Exception):
    """A wheelhouse that cannot be built or used as asked; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Target:
    """The Python and platform the wheels are for, e.g. 3.12 on manylinux_2_28_x86_64."""

    python: str
    platform: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d+", self.python):
            raise WheelhouseError(f"--python takes a version like 3.12, not {self.python!r}")
        _ = self.arch  # an unknown platform is refused here, not halfway through the downloads

    @property
    def arch(self) -> str:
        for prefix in ("manylinux_", "manylinux", "musllinux_", "macosx_", "linux_", "win_"):
            if self.platform.startswith(prefix):
                return self.platform.split("_", 3 if prefix in ("manylinux_", "musllinux_", "macosx_") else 1)[-1]
        if self.platform == "win32":
            return "x86"
        raise WheelhouseError(f"unknown --platform {self.platform!r}: give a wheel platform tag such as "
                              "manylinux_2_28_x86_64, macosx_14_0_arm64 or win_amd64")

    def pip_platforms(self) -> list[str]:
        """Every platform tag the target accepts: pip matches a manylinux_2_N tag exactly."""
        legacy = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}
        match = re.fullmatch(r"manylinux_2_(\d+)_(.+)", self.platform)
        prefix = self.platform.split("_", 1)[0]
        if match:
            glibc, arch = int(match[1]), match[2]
        elif prefix in legacy:
            glibc, arch = legacy[prefix], self.arch
        else:
            return [self.platform]
        tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 4, -1)]
        return tags + [f"{name}_{arch}" for name, n in legacy.items() if n <= glibc]

    def marker_environment(self) -> dict[str, str]:
        """PEP 508's variables as the target's Python reports them."""
        system = ("Darwin", "darwin", "posix") if self.platform.startswith("macosx") else \
            ("Windows", "win32", "nt") if self.platform.startswith("win") else ("Linux", "linux", "posix")
        machine = {"amd64": "AMD64", "x86": "x86"}.get(self.arch, self.arch)
        return {"python_version": self.python, "python_full_version": f"{self.python}.0",
                "implementation_name": "cpython", "implementation_version": f"{self.python}.0",
                "platform_python_implementation": "CPython", "platform_system": system[0],
                "sys_platform": system[1], "os_name": system[2], "platform_machine": machine,
                "platform_release": "", "platform_version": "", "extra": ""}


@dataclasses.dataclass
class Wheel:
    path: pathlib.Path
    name: str  # canonical
    version: Version
    requires: list[Requirement]


def read_wheel(path: pathlib.Path) -> Wheel:
    """Name, version and ``Requires-Dist`` from a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        (metadata,) = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        message = email.parser.Parser().parsestr(z.read(metadata).decode("utf-8"))
    return Wheel(path, canonicalize_name(message["Name"]), Version(message["Version"]),
                 [Requirement(r) for r in message.get_all("Requires-Dist") or []])


def read_present(lines: list[str]) -> dict[str, Version | None]:
    """``pip list --format=freeze`` (or ``pip freeze``) as {canonical name: version, None if unknown}."""
    present: dict[str, Version | None] = {}
    for raw in lines:
        editable = re.match(r"-e\s.*#egg=([\w.-]+)", raw.strip())
        if editable:  # an editable install: there, at a version pip does not tell
            present[canonicalize_name(editable[1])] = None
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except Exception as e:
            raise WheelhouseError(f"not a line of pip freeze: {raw.strip()!r} ({e})") from None
        pins = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
        present[canonicalize_name(requirement.name)] = Version(pins[0]) if pins and "*" not in pins[0] else None
    return present


def installed(name: str, present: dict[str, Version | None]) -> tuple[str, Version | None] | None:
    """The present distribution that provides ``name`` (itself or an equivalent), with its version."""
    for candidate in (name, *PROVIDED_BY.get(name, ())):
        if candidate in present:
            return candidate, present[candidate]
    return None


def wanted(requirement: Requirement, environment: dict[str, str], extras: set[str]) -> bool:
    """Whether a ``Requires-Dist`` applies on the target, given the extras asked of its distribution."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate(dict(environment, extra=e)) for e in ("", *sorted(extras)))


def extra_only(requirement: Requirement, environment: dict[str, str], extras: set[str]) -> bool:
    """Applies for one of ``extras`` but not without them: what an extra adds to a distribution."""
    return wanted(requirement, environment, extras) and not wanted(requirement, environment, set())


class Pip:
    """pip downloads for the target, one distribution at a time, into a scratch folder."""

    def __init__(self, target: Target, scratch: pathlib.Path, python: str = sys.executable):
        self.target, self.scratch, self.python = target, scratch, python
        self.downloads = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-m", "pip", *args], capture_output=True, text=True, check=False)

    def download(self, name: str, specifier: SpecifierSet) -> pathlib.Path:
        """The newest wheel of ``name`` within ``specifier`` for the target; built here from a pure-Python sdist."""
        folder = pathlib.Path(tempfile.mkdtemp(prefix="dl-", dir=self.scratch))
        restrict = ["--no-deps", "--python-version", self.target.python, "--implementation", "cp"]
        for platform in self.target.pip_platforms():
            restrict += ["--platform", platform]
        wanted_spec = f"{name}{specifier}"
        self.downloads += 1
        done = self._run("download", "--quiet", "--only-binary=:all:", *restrict, "-d", str(folder), wanted_spec)
        if done.returncode == 0:
            return _only_file(folder, ".whl")
        binary_error = done.stderr.strip()
        done = self._run("download", "--quiet", "--no-binary=:all:", *restrict, "-d", str(folder), wanted_spec)
        if done.returncode:
            raise WheelhouseError(f"no wheel or sdist of {wanted_spec} for Python {self.target.python} on "
                                  f"{self.target.platform}: {binary_error[-800:]}")
        sdist = _only_file(folder, "")
        built = folder / "built"
        done = self._run("wheel", "--quiet", "--no-deps", "-w", str(built), str(sdist))
        if done.returncode:
            raise WheelhouseError(f"building a wheel of {sdist.name} failed: {done.stderr.strip()[-800:]}")
        wheel = _only_file(built, ".whl")
        _, _, _, tags = parse_wheel_filename(wheel.name)
        if any(t.abi != "none" or t.platform != "any" for t in tags):
            raise WheelhouseError(f"{name} has no wheel for Python {self.target.python} on {self.target.platform}, "
                                  f"and its sdist builds a platform-specific one ({wheel.name}): build it on a "
                                  "machine like the target and put it in the wheelhouse")
        return wheel

    def build_fundax(self, source: pathlib.Path) -> pathlib.Path:
        """fundax's wheel from a copy of the checkout's files (tracked, or untracked and not ignored)."""
        copy = pathlib.Path(tempfile.mkdtemp(prefix="src-", dir=self.scratch))
        listed = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=False)
        if listed.returncode == 0:
            for name in filter(None, listed.stdout.decode().split("\0")):
                if (source / name).is_file():
                    (copy / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source / name, copy / name)
        else:
            shutil.copytree(source, copy, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"))
        # The build backend of this Python, when it has one: no index needed for it.
        has_backend = subprocess.run([self.python, "-c", "import setuptools"], capture_output=True).returncode == 0
        out = copy / "dist"
        done = self._run("wheel", "--quiet", "--no-deps", *(["--no-build-isolation"] if has_backend else []),
                         "-w", str(out), str(copy))
        if done.returncode:
            raise WheelhouseError(f"building fundax's wheel failed: {done.stderr.strip()[-800:]}")
        return _only_file(out, ".whl")


def _only_file(folder: pathlib.Path, suffix: str) -> pathlib.Path:
    files = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix)]
    if len(files) != 1:
        raise WheelhouseError(f"expected one file in {folder}, found {[p.name for p in files]}")
    return files[0]


@dataclasses.dataclass
class Resolution:
    wheels: dict[str, Wheel]
    required_by: dict[str, set[str]]  # also of the omitted distributions
    relies_on: dict[str, SpecifierSet]  # present distributions the wheels need, with every specifier asked
    replaced: dict[str, str]  # present distributions too old or too new, by the version the wheelhouse brings
    provided: dict[str, str]  # requirements met by an equivalent distribution (PROVIDED_BY)


def resolve(root: Wheel, extras: set[str], present: dict[str, Version | None], target: Target, pip: Pip,
            omit: frozenset[str] = frozenset(), max_rounds: int = 50) -> Resolution:
    """The wheels that ``root`` (with ``extras``) needs beyond ``present``, one version of each.

    A distribution in ``omit`` is left out with everything only it would bring: for a
    requirement declared but never imported on fundax's paths.

    Walks the requirements breadth-first; a distribution whose wheel so far does not satisfy
    every specifier met since is downloaded again within all of them, and the walk restarts,
    until a walk completes with the wheels it has.
    """
    environment = target.marker_environment()
    picked: dict[str, Wheel] = {root.name: root}
    present_metadata: dict[str, Wheel] = {}
    for _ in range(max_rounds):
        specifiers: dict[str, SpecifierSet] = collections.defaultdict(SpecifierSet)
        required_by: dict[str, set[str]] = collections.defaultdict(set)
        asked: dict[str, set[str]] = collections.defaultdict(set)  # extras asked of each distribution
        expanded: set[tuple[str, str]] = set()  # (distribution, extra or "") whose requirements are queued
        relies_on: dict[str, SpecifierSet] = {}
        replaced: dict[str, str] = {}
        provided: dict[str, str] = {}
        queue = collections.deque([(root.name, SpecifierSet(), set(extras), "")])
        restart = False
        while queue and not restart:
            name, specifier, extra_names, parent = queue.popleft()
            specifiers[name] &= specifier
            asked[name] |= extra_names
            if parent:
                required_by[name].add(parent)
            if name in omit:
                continue
            have = None if name == root.name else installed(name, present)
            if have is not None and (have[1] is None or specifiers[name].contains(have[1], prereleases=True)):
                relies_on[have[0]] = relies_on.get(have[0], SpecifierSet()) & specifier
                if have[0] != name:
                    provided[name] = have[0]
                new_extras = {e for e in asked[name] if (name, e) not in expanded}
                if not new_extras:
                    continue
                # An extra of a present distribution may need what the base image lacks.
                if name not in present_metadata:
                    pinned = SpecifierSet(f"=={have[1]}") if have[1] is not None else SpecifierSet()
                    present_metadata[name] = read_wheel(pip.download(name, pinned))
                requires = [r for r in present_metadata[name].requires if extra_only(r, environment, new_extras)]
                expanded |= {(name, e) for e in new_extras}
            else:
                if have is not None:
                    replaced[have[0]] = name
                wheel = picked.get(name)
                if wheel is None or not specifiers[name].contains(wheel.version, prereleases=True):
                    picked[name] = read_wheel(pip.download(name, specifiers[name]))
                    restart = wheel is not None  # its requirements may differ from the old version's
                    if restart:
                        break
                    wheel = picked[name]
                new = [e for e in ("", *sorted(asked[name])) if (name, e) not in expanded]
                if not new:
                    continue
                requires = [r for r in wheel.requires
                            if wanted(r, environment, set(new) - {""}) and
                            ("" in new or extra_only(r, environment, set(new) - {""}))]
                expanded |= {(name, e) for e in new}
            for requirement in requires:
                queue.append((canonicalize_name(requirement.name), requirement.specifier,
                              set(requirement.extras), name))
        if restart:
            continue
        wheels = {n: w for n, w in picked.items()
                  if n in specifiers and n not in relies_on and n not in provided and n not in omit}
        for old, name in replaced.items():
            wheels.setdefault(name, picked[name])
            relies_on.pop(old, None)
        versions = {old: str(picked[name].version) for old, name in replaced.items()}
        return Resolution(wheels, dict(required_by), relies_on, versions, provided)
    raise WheelhouseError(f"the requirements did not settle on one version of each after {max_rounds} rounds")


def build(args: argparse.Namespace) -> int:
    target = Target(args.python, args.platform)
    present_file = pathlib.Path(args.present)
    present = read_present(present_file.read_text(encoding="utf-8").splitlines())
    present.pop("fundax", None)
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise WheelhouseError(f"{out} holds files but no {MANIFEST}: give an empty or new folder to --out")
    with tempfile.TemporaryDirectory(prefix="fundax-wheelhouse-") as scratch:
        pip = Pip(target, pathlib.Path(scratch), args.pip_python)
        root = read_wheel(pip.build_fundax(pathlib.Path(args.source)))
        omit = frozenset(canonicalize_name(n) for n in args.omit)
        resolution = resolve(root, set(args.extra), present, target, pip, omit)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        entries = []
        for name in sorted(resolution.wheels, key=lambda n: (n == root.name, n)):
            wheel = resolution.wheels[name]
            shutil.copy2(wheel.path, out / wheel.path.name)
            entries.append({"name": name, "version": str(wheel.version), "file": wheel.path.name,
                            "bytes": wheel.path.stat().st_size,
                            "required_by": sorted(resolution.required_by.get(name, ()))})
    total = sum(e["bytes"] for e in entries)
    manifest = {
        "python": target.python, "platform": target.platform, "extras": sorted(args.extra),
        "present": {"file": present_file.name, "distributions": len(present)},
        "wheels": entries, "total_bytes": total,
        "relies_on": {n: str(s) for n, s in sorted(resolution.relies_on.items())},
        "provided_by": resolution.provided, "replaces": resolution.replaced,
        "omitted": {n: sorted(resolution.required_by.get(n, ())) for n in sorted(omit)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / REQUIREMENTS).write_text("".join(f"{e['name']}=={e['version']}\n" for e in entries), encoding="utf-8")
    width = max(len(e["file"]) for e in entries)
    for e in entries:
        print(f"{e['file']:<{width}}  {e['bytes'] / 1e6:7.2f} MB  for {', '.join(e['required_by']) or 'itself'}")
    print(f"{len(entries)} wheels, {total / 1e6:.1f} MB, for Python {target.python} on {target.platform}, in {out} "
          f"({pip.downloads} downloads)")
    for old, version in resolution.replaced.items():
        print(f"note: the base image's {old} does not satisfy what fundax needs; the wheelhouse brings {version}")
    for name, by in resolution.provided.items():
        print(f"note: {name} is provided by the base image's {by}")
    for name, by in manifest["omitted"].items():
        print(f"note: {name} left out (--omit){', wanted by ' + ', '.join(by) if by else ', wanted by nothing'}")
    if args.max_mb is not None and total > args.max_mb * 1e6:
        print(f"error: {total / 1e6:.1f} MB is over --max-mb={args.max_mb:g}", file=sys.stderr)
        return 1
    return 0


def check(args: argparse.Namespace) -> int:
    """Before installing: this Python is the wheelhouse's, and the base image holds what the wheels rely on."""
    from importlib import metadata

    folder = pathlib.Path(args.wheelhouse)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WheelhouseError(f"{folder} has no {MANIFEST}: build it with launch/offline/wheelhouse.sh") from None
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != manifest["python"]:
        raise WheelhouseError(f"{folder} is for Python {manifest['python']}, this is Python {here}: build one "
                              f"with --python={here}")
    paths = [*([args.path] if args.path else []), *sys.path]
    have = {canonicalize_name(d.metadata["Name"]): Version(d.version)
            for d in metadata.distributions(path=paths) if d.metadata["Name"]}
    missing = []
    for name, specifier in manifest["relies_on"].items():
        version = have.get(name)
        if version is None or not SpecifierSet(specifier).contains(version, prereleases=True):
            found = f"{version} installed" if version is not None else "not installed"
            missing.append(f"{name}{specifier} ({found})")
    if missing:
        raise WheelhouseError(f"the wheelhouse expects the base image to have {', '.join(missing)}. Run "
                              "`python -m pip list --format=freeze` here and build the wheelhouse again with "
                              "that list as --present")
    print(f"{folder}: {len(manifest['wheels'])} wheels for Python {here}; the base image has the "
          f"{len(manifest['relies_on'])} distributions they rely on")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="download and build the wheels (needs a package index)")
    b.add_argument("--python", required=True, help="the target's Python, e.g. 3.12")
    b.add_argument("--platform", required=True, help="the target's wheel platform tag, e.g. manylinux_2_28_x86_64")
    b.add_argument("--present", required=True, help="`pip list --format=freeze` of the target's base image")
    b.add_argument("--out", required=True, help="the wheelhouse folder (replaced)")
    b.add_argument("--extra", action="append", default=[], help="an extra of fundax to include, e.g. bench")
    b.add_argument("--omit", action="append", default=[],
                   help="leave out a distribution (and what only it brings) that fundax never imports")
    b.add_argument("--source", default=str(ROOT), help="the fundax checkout")
    b.add_argument("--pip-python", default=sys.executable, help="the Python whose pip downloads")
    b.add_argument("--max-mb", type=float, default=None, help="fail when the wheels add up to more")
    c = commands.add_parser("check", help="on the target: the right Python and the base image's distributions")
    c.add_argument("--wheelhouse", required=True)
    c.add_argument("--path", help="a folder the wheels go to (pip --target), searched before sys.path")
    args = parser.parse_args(argv)
    try:
        return {"build": build, "check": check}[args.command](args)
    except WheelhouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
