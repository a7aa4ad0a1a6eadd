"""The command line of the annotation tool: check the folders, open the session, serve it.

Every bad input stops the tool with one line that names the flag, the path and
what is wrong; lines of an existing annotations file that the dataset reader
rejects are reported and left as they are. Ctrl-C stops it with one line.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pathlib
import re
import secrets
import socket
import sys
from collections.abc import Sequence

from fundax.annotate import app as app_lib
from fundax.annotate import catalogue, store
from fundax.data import annotations as annotations_lib

GRADER_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}")
HOST_PATTERN = re.compile(r"[a-z0-9._:-]{1,253}")
_SHOWN_PROBLEMS = 3


class UsageError(ValueError):
    """Bad command-line input (message: flag, value and what is wrong, on one line)."""


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
    """The session for these flags, and warnings to show; UsageError for bad input."""
    if not GRADER_PATTERN.fullmatch(grader) or not grader.isprintable():
        raise UsageError(f"--grader {grader!r}: want 1 to 64 characters without spaces or control characters")
    try:
        images, manual = catalogue.check_folders(images_dir, out)
    except catalogue.CatalogueError as e:
        raise UsageError(str(e)) from None
    notes = []
    out_path = manual / pathlib.Path(out).name
    annotation_store = store.AnnotationStore(out_path)
    if annotation_store.path.exists():
        try:
            result = annotations_lib.read_annotations(out_path)
            snapshot = annotation_store.snapshot()
        except OSError as e:
            raise UsageError(f"--out {out}: cannot be read ({e.strerror or e})") from None
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
        raise UsageError(f"--images {images_dir}: holds no photographs ({', '.join(annotations_lib.IMAGE_EXTENSIONS)})")
    photos = catalogue.list_photos(images, manual, found, snapshot.ids_by_file)
    session = app_lib.Session(grader=grader, images_dir=images, photos=photos, store=annotation_store,
                              token=token or secrets.token_urlsafe(32), split=split)
    return session, notes


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``; UsageError naming both if it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host.strip("[]"), port), family=family)
    except (OSError, OverflowError) as e:
        errno = getattr(e, "errno", None)
        reason = os.strerror(errno) if errno else str(e)
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({reason})") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"want a port in 0..65535, got {port}")
    return port


def _host(text: str) -> str:
    name = app_lib.host_name(text)
    if not HOST_PATTERN.fullmatch(name):
        raise argparse.ArgumentTypeError(f"want a host name or address, got {text!r}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fundax.annotate",
        description="Mark findings and the regions where they show on fundus photographs, in the browser.")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of the photographs (searched"
                        " recursively); must lie inside the folder of --out")
    parser.add_argument("--out", required=True, metavar="FILE", help="annotations.jsonl to merge the readings into"
                        " (created if missing); other graders' entries are kept")
    parser.add_argument("--grader", required=True, metavar="ID", help="your grader id, as written in the file")
    parser.add_argument("--split", default="train", choices=annotations_lib.SPLITS,
                        help="split of the lines the tool creates (default: train)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8765, help="port (default: 8765; 0: any free one)")
    parser.add_argument("--allowed_host", type=_host, action="append", default=[], metavar="NAME",
                        help="another name the tool may be opened by (repeatable); it answers only to this"
                        " machine's own names otherwise")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Check the flags, open the session and serve it until stopped."""
    import uvicorn

    try:
        session, notes = open_session(args.images, args.out, args.grader, args.split)
        sock = listen(args.host, args.port)
    except UsageError as e:
        raise SystemExit(f"error: {e}") from None
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    hosts = app_lib.allowed_hosts(args.host, args.allowed_host)
    if not is_loopback(args.host):
        print(f"warning: --host {args.host} lets other machines see the photographs and change the annotations;"
              f" it answers only to the names {', '.join(hosts)} (--allowed_host adds more)", file=sys.stderr)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    snapshot = session.store.snapshot()
    read = store.count_read(snapshot, session.image_ids, session.grader)
    print(f"fundax annotate: http://{shown}:{port}/  grader {session.grader}, {len(session.photos)} photographs,"
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except KeyboardInterrupt:  # before it serves: nothing was written
        print("fundax annotate: stopped", file=sys.stderr)
        return 130
