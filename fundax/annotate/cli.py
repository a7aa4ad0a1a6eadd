"""The command line of the annotation tool: check the flags and folders, open the session, serve it.

Its flags are absl flags on a set of their own (:data:`FLAGS`), not absl's global one,
where other fundax commands define ``--out``, ``--split`` and ``--images`` with other
meanings. Exit status as :mod:`fundax.cli` has it: a missing, unknown or malformed flag
is a usage error (status 2, one line naming the flag, the value and what is wrong);
folders, files or an address that cannot be used stop the tool with status 1 and one
line naming the flag, the path and what is wrong; lines of an existing annotations file
that the dataset reader rejects are reported and left as they are. Ctrl-C before the
tool serves stops it with one line and status 130; once it serves, Ctrl-C is how it is
closed: it finishes the requests under way, says what the grader has read, and exits 0.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import re
import secrets
import socket
import sys
from collections.abc import Sequence

from absl import flags

from fundax import cli as fundax_cli
from fundax.annotate import app as app_lib
from fundax.annotate import catalogue, store
from fundax.data import annotations as annotations_lib

GRADER_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")
GRADER_WANT = "want 1 to 64 characters without spaces or control characters"
HOST_PATTERN = re.compile(r"[a-z0-9._:-]{1,253}")
_SHOWN_PROBLEMS = 3

PROGRAM = "python -m fundax.annotate"
USAGE = f"""Mark findings and the regions where they show on fundus photographs, in the browser.

usage: {PROGRAM} --images=DIR --out=FILE --grader=ID [--split=train] [--host=127.0.0.1]
    [--port=8765] [--allowed_host=NAME ...]"""
"""What ``--help`` prints above the flags."""


class SetupError(ValueError):
    """Folders, files or an address named by the flags that cannot be used (one line: flag, value, what is wrong)."""


def grader_ok(grader: str) -> bool:
    """Whether ``grader`` will do as a grader id: shown on the page and written to the file as it is."""
    return bool(GRADER_PATTERN.fullmatch(grader)) and grader.isprintable()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_session(images_dir: str, out: str, grader: str, split: str = "train",
                 token: str | None = None) -> tuple[app_lib.Session, list[str]]:
    """The session for these flags, and warnings to show; SetupError for input it cannot use."""
    if not grader_ok(grader):
        raise SetupError(f"--grader {grader!r}: {GRADER_WANT}")
    try:
        images, manual = catalogue.check_folders(images_dir, out)
    except catalogue.CatalogueError as e:
        raise SetupError(str(e)) from None
    notes = []
    out_path = manual / pathlib.Path(out).name
    annotation_store = store.AnnotationStore(out_path)
    if annotation_store.path.exists():
        try:
            result = annotations_lib.read_annotations(out_path)
            snapshot = annotation_store.snapshot()
        except OSError as e:
            raise SetupError(f"--out {out}: cannot be read ({e.strerror or e})") from None
        for rejection in result.rejections[:_SHOWN_PROBLEMS]:
            notes.append(f"{out} line {rejection.line_number}: {rejection.reason} (left as it is)")
        if len(result.rejections) > _SHOWN_PROBLEMS:
            notes.append(f"{out}: {len(result.rejections) - _SHOWN_PROBLEMS} more lines the dataset reader rejects")
    else:
        snapshot = annotation_store.snapshot()
    found, skipped = catalogue.walk(images)
    notes += [f"--images {images_dir}: skipped {entry}" for entry in skipped[:_SHOWN_PROBLEMS]]
    if len(skipped) > _SHOWN_PROBLEMS:
        notes.append(f"--images {images_dir}: skipped {len(skipped) - _SHOWN_PROBLEMS} more files")
    if not found:
        raise SetupError(f"--images {images_dir}: holds no photographs ({', '.join(annotations_lib.IMAGE_EXTENSIONS)})")
    photos = catalogue.list_photos(images, manual, found, snapshot.ids_by_file)
    session = app_lib.Session(grader=grader, images_dir=images, photos=photos, store=annotation_store,
                              token=token or secrets.token_urlsafe(32), split=split)
    return session, notes


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``; SetupError naming both if it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host.strip("[]"), port), family=family)
    except (OSError, OverflowError) as e:
        errno = getattr(e, "errno", None)
        reason = os.strerror(errno) if errno else str(e)
        raise SetupError(f"--host {host} --port {port}: cannot listen there ({reason})") from None


class _PortParser(flags.ArgumentParser):
    """A TCP port, 0 (any free one) to 65535."""

    syntactic_help = "a port number, 0..65535"

    def parse(self, argument: str | int) -> int:
        try:
            port = int(argument)
        except (TypeError, ValueError):
            raise ValueError(f"want a port number, got {argument!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"want a port in 0..65535, got {port}")
        return port

    def flag_type(self) -> str:
        return "int"


class _HostParser(flags.ArgumentParser):
    """A host name or address, as a Host header names it (lower case, no port, brackets or final dot)."""

    syntactic_help = "a host name or address"

    def parse(self, argument: str) -> str:
        name = app_lib.host_name(argument)
        if not HOST_PATTERN.fullmatch(name):
            raise ValueError(f"want a host name or address, got {argument!r}")
        return name


class _GraderParser(flags.ArgumentParser):
    """A grader id, as written in the annotations file."""

    syntactic_help = GRADER_WANT.removeprefix("want ")

    def parse(self, argument: str) -> str:
        if not grader_ok(argument):
            raise ValueError(f"{GRADER_WANT}, got {argument!r}")
        return argument


FLAGS = flags.FlagValues()
"""The tool's flags, apart from absl's global set: see the module's docstring."""

flags.DEFINE_string("images", None, "Folder of the photographs (searched recursively); must lie inside the"
                    " folder of --out.", required=True, flag_values=FLAGS)
flags.DEFINE_string("out", None, "annotations.jsonl to merge the readings into (created if missing); other"
                    " graders' entries are kept.", required=True, flag_values=FLAGS)
flags.DEFINE(_GraderParser(), "grader", None, "Your grader id, as written in the file.", required=True,
             flag_values=FLAGS)
flags.DEFINE_enum("split", "train", list(annotations_lib.SPLITS), "Split of the lines the tool creates.",
                  flag_values=FLAGS)
flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (127.0.0.1: this machine only).", flag_values=FLAGS)
flags.DEFINE(_PortParser(), "port", 8765, "Port to serve on (0: any free one).", flag_values=FLAGS)
flags.DEFINE_multi(_HostParser(), flags.ArgumentSerializer(), "allowed_host", [],
                   "Another name the tool may be opened by (repeatable); it answers only to this machine's own"
                   " names otherwise.", flag_values=FLAGS)


def serve(images_dir: str, out: str, grader: str, split: str = "train", host: str = "127.0.0.1", port: int = 8765,
          allowed_host: Sequence[str] = ()) -> int:
    """Open the session, serve it until Ctrl-C, then say what the grader has read; SetupError for bad input."""
    import uvicorn

    session, notes = open_session(images_dir, out, grader, split)
    sock = listen(host, port)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    hosts = app_lib.allowed_hosts(host, allowed_host)
    if not is_loopback(host):
        print(f"warning: --host {host} lets other machines see the photographs and change the annotations;"
              f" it answers only to the names {', '.join(hosts)} (--allowed_host adds more)", file=sys.stderr)
    bound, bound_port = sock.getsockname()[:2]
    shown = f"[{bound}]" if ":" in bound else bound
    snapshot = session.store.snapshot()
    read = store.count_read(snapshot, session.image_ids, session.grader)
    print(f"fundax annotate: http://{shown}:{bound_port}/  grader {session.grader}, {len(session.photos)} photographs,"
          f" {read} read; writing {os.fspath(session.store.path)}; Ctrl-C stops", flush=True)
    app = app_lib.create_app(session, hosts)
    # log_config=None: uvicorn's own logging.config would close every handler set up before it.
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn finishes the requests under way, then may raise the Ctrl-C again (depending on
        # when the signal lands); either way the server has stopped.
        pass
    read = store.count_read(session.store.snapshot(), session.image_ids, session.grader)
    print(f"fundax annotate: stopped; {session.grader} has read {read} of {len(session.photos)} photographs",
          flush=True)
    return 0


def command(argv: list[str]) -> int:
    """The tool once :data:`FLAGS` are parsed (``python -m fundax.annotate`` runs it): it takes no arguments."""
    fundax_cli.no_arguments(argv)
    try:
        return serve(FLAGS.images, FLAGS.out, FLAGS.grader, FLAGS.split, FLAGS.host, FLAGS.port, FLAGS.allowed_host)
    except SetupError as e:
        print(f"error: {fundax_cli.one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before it serves: nothing was written
        print("fundax annotate: stopped", file=sys.stderr)
        return fundax_cli.INTERRUPTED_EXIT


def main(args: Sequence[str] | None = None) -> int:
    """The tool as its ``python -m`` form runs it, in this process (:func:`fundax.cli.run_in_process`)."""
    return fundax_cli.run_in_process(command, FLAGS, USAGE, PROGRAM, args)
