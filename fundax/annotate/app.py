"""The annotation tool's web app (Starlette): pages, photographs, region maps and saves.

The browser never computes the geometry: for the disc and fovea it shows, it asks
for the region map of its canvas grid, computed by :func:`fundax.regions.region_map`
(cell (i, j) belongs to the region its centre is in, as REGIONS.md says), and a
click toggles the region of the cell under the pointer. So the overlay and the
regions saved are the ones training will use.

A photograph whose line has no disc and fovea gets them suggested: on the page's
request the server runs :func:`fundax.landmarks.locate` on it (once per photograph,
cached; the page shows the photograph meanwhile). They are the line's only once the
grader confirms or moves them; a save sends no centres until then, and the line
keeps none (``prepare --locate_missing`` places them).

Safety: only the session's photographs are served, decoded and re-encoded, so
nothing but image pixels leaves the images folder, and what the browser is told
names them relative to it. Every request to ``/api/``, and every one other than
GET/HEAD, needs the session token, which only the tool's own page holds (another
web page cannot read it, nor send the header without the tool's consent, so it
can neither change data nor set the tool computing region maps). A photograph
needs the token or the session cookie the page gets with it (``SameSite=Strict``,
``HttpOnly``), so another site can neither make the tool decode photographs nor
learn which names exist. The Host header must be one of the tool's names
(:func:`allowed_hosts`), also when it listens on every interface, which keeps
out pages of another site whose name was pointed at this machine (DNS rebinding):
they could otherwise read the token from the page.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
import importlib.resources
import inspect
import json
import os
import pathlib
import socket
import string
from collections.abc import Awaitable, Callable, Collection, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fundax import findings as findings_lib
from fundax import pictures
from fundax import regions as regions_lib
from fundax.annotate import catalogue, photos, store
from fundax.data import annotations as annotations_lib
from fundax.data import images as images_lib

TOKEN_HEADER = "X-Fundax-Token"
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
ALL_INTERFACES = ("0.0.0.0", "::", "")
MAX_BODY_BYTES = 64 * 1024  # one grader's reading of one image is well under 1 kB
MAX_GRID_CELLS = 4096 * 4096
_SAFE_METHODS = ("GET", "HEAD")
_STATIC = importlib.resources.files("fundax.annotate") / "static"
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadRequest(ValueError):
    """A request the tool cannot act on (message = why, shown to the grader)."""


@dataclasses.dataclass(frozen=True)
class Session:
    """What one running tool serves: a grader, the photographs and the annotations file."""

    grader: str
    images_dir: pathlib.Path
    photos: Sequence[catalogue.Photo]
    store: store.AnnotationStore
    token: str
    split: str = "train"  # of lines the tool creates
    jpegs: photos.PhotoCache = dataclasses.field(default_factory=photos.PhotoCache)
    suggestions: photos.PhotoCache = dataclasses.field(default_factory=lambda: photos.PhotoCache(
        photos.SUGGESTION_ENTRIES, encode=photos.suggestion_json))

    @functools.cached_property
    def by_rel(self) -> dict[str, catalogue.Photo]:
        return catalogue.photo_index(self.photos)

    @functools.cached_property
    def image_ids(self) -> list[str]:
        return [photo.image_id for photo in self.photos]

    @functools.cached_property
    def cookie_name(self) -> str:
        # Cookies do not tell ports apart: two tools on one machine need two names.
        return "fundax-" + hashlib.sha256(self.token.encode()).hexdigest()[:16]

    def shown(self, message: str) -> str:
        """``message`` with the absolute paths under the images folder made relative to it, for the browser."""
        return message.replace(f"{self.images_dir}{os.sep}", "")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _photo(session: Session, request: Request) -> catalogue.Photo:
    index = request.path_params["index"]
    if not 0 <= index < len(session.photos):
        raise catalogue.NotServed(f"no photograph {index}; there are {len(session.photos)}")
    return session.photos[index]


def _image_size(session: Session, photo: catalogue.Photo) -> tuple[int, int]:
    """(width, height) of ``photo``; BadRequest if ``fundax.prepare`` would refuse it."""
    try:
        return photos.size(catalogue.resolve_photo(session.images_dir, session.by_rel, photo.rel))
    except images_lib.ImageError as e:
        raise BadRequest(session.shown(str(e))) from None


def _view(session: Session, photo: catalogue.Photo) -> dict[str, Any]:
    """What the page shows of one photograph: where it is, its centres, this grader's reading."""
    try:
        width, height, problem = *_image_size(session, photo), None
    except BadRequest as e:  # the page says so and lets the grader move on
        width, height = None, None
        problem = f"{e}; fundax.prepare would reject it, so it cannot be annotated"
    snapshot = session.store.snapshot()
    line = snapshot.lines.get(photo.image_id) or {}
    centres = snapshot.centres(photo.image_id)
    mine = snapshot.entry(photo.image_id, session.grader)
    others = [e for e in store.entries(line) if e.get("annotator") != session.grader]
    return {
        "index": photo.index, "count": len(session.photos), "image_id": photo.image_id, "file": photo.file,
        "url": "/photos/" + quote(photo.rel, safe="/"), "width": width, "height": height,
        "split": line.get("split", session.split),
        "disc": list(centres[0]) if centres else None, "fovea": list(centres[1]) if centres else None,
        "findings": mine.get("findings") if mine else None, "other_graders": len(others),
        "read": store.count_read(snapshot, session.image_ids, session.grader), "problem": problem,
    }


def _centres(disc: Any, fovea: Any, width: int, height: int) -> tuple[tuple[float, float], ...]:
    """(disc, fovea), each [x, y] as the file reader takes it and inside the image as preparing wants it."""
    try:
        # The reader's own check of a point: numbers only, no strings, booleans or objects made into them.
        centres = tuple(annotations_lib.read_point({name: value}, name) for name, value in
                        (("disc", disc), ("fovea", fovea)))
        images_lib.check_inside(*centres, width, height)
    except (annotations_lib.AnnotationError, images_lib.ImageError) as e:
        raise BadRequest(str(e)) from None
    if centres[0] == centres[1]:
        raise BadRequest("disc and fovea coincide: place them apart")
    return centres


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _centres_seen(value: Any) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The centres as the file had them ([disc, fovea] or null), which need not lie inside the image."""
    if value is None:
        return None
    bad = BadRequest(f"centres_seen must be [disc, fovea] or null, each [x, y] of numbers, got {value!r}")
    if not (isinstance(value, list) and len(value) == 2 and all(
            isinstance(p, list) and len(p) == 2 and all(map(_is_number, p)) for p in value)):
        raise bad
    try:
        (dx, dy), (fx, fy) = ((float(x), float(y)) for x, y in value)
    except OverflowError:
        raise bad from None
    return (dx, dy), (fx, fy)


def index_page(session: Session, request: Request) -> HTMLResponse:
    template = string.Template((_STATIC / "index.html").read_text(encoding="utf-8"))
    page = template.substitute(token=escape(session.token), grader=escape(session.grader))
    response = HTMLResponse(page)
    response.set_cookie(session.cookie_name, session.token, httponly=True, samesite="strict")
    return response


def session_info(session: Session, request: Request) -> JSONResponse:
    snapshot = session.store.snapshot()
    return JSONResponse({
        "grader": session.grader, "count": len(session.photos),
        "resume": store.first_unread(snapshot, session.image_ids, session.grader),
        "findings": [{"name": name, "display_name": findings_lib.get_finding(name).display_name}
                     for name in findings_lib.FINDINGS],
        "regions": list(regions_lib.REGIONS),
        "colours": pictures.REGION_COLOURS.astype(int).tolist(),
    })


def photo_view(session: Session, request: Request) -> JSONResponse:
    return JSONResponse(_view(session, _photo(session, request)))


def region_map(session: Session, request: Request) -> JSONResponse:
    """The region id of every cell of the page's canvas grid, and where to write each name."""
    photo = _photo(session, request)
    width, height = _image_size(session, photo)
    query = request.query_params
    try:
        grid_w, grid_h = int(query["width"]), int(query["height"])
        disc, fovea = ([float(v) for v in query[k].split(",")] for k in ("disc", "fovea"))
    except (KeyError, ValueError):
        raise BadRequest("want ?disc=x,y&fovea=x,y&width=W&height=H") from None
    if not (0 < grid_w and 0 < grid_h and grid_w * grid_h <= MAX_GRID_CELLS):
        raise BadRequest(f"grid {grid_w}×{grid_h} must be positive and at most {MAX_GRID_CELLS} cells")
    disc_xy, fovea_xy = _centres(disc, fovea, width, height)
    ids = regions_lib.region_map(grid_h, grid_w, disc_xy, fovea_xy, image_size=(height, width)).astype(np.uint8)
    # Where to write the names needs no full resolution; every step-th cell makes it 10x cheaper while dragging.
    step = max(1, round(max(grid_w, grid_h) / 256))
    labels = pictures.label_points(ids[::step, ::step])
    return JSONResponse({
        "width": grid_w, "height": grid_h, "disc": disc_xy, "fovea": fovea_xy,
        "ids": base64.b64encode(ids.tobytes()).decode("ascii"),
        "labels": {name: [(x - 0.5) * step + 0.5, (y - 0.5) * step + 0.5] for name, (x, y) in labels.items()},
    })


async def _json_body(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes")
    try:
        # As the file reader parses a line: a key given twice is refused rather than the last one kept.
        obj = json.loads(body, object_pairs_hook=annotations_lib.no_duplicate_keys)
    except annotations_lib.AnnotationError as e:
        raise BadRequest(f"request body: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"request body is not JSON: {e}") from None
    except RecursionError:
        raise BadRequest("request body is not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def suggestion(session: Session, request: Request) -> Response:
    """The disc and fovea :mod:`fundax.landmarks` suggests for the photograph (:func:`photos.suggestion_json`)."""
    photo = _photo(session, request)
    _image_size(session, photo)
    path = catalogue.resolve_photo(session.images_dir, session.by_rel, photo.rel)
    try:
        return Response(session.suggestions.get(path), media_type="application/json")
    except images_lib.ImageError as e:
        raise BadRequest(session.shown(str(e))) from None


def save_reading(session: Session, photo: catalogue.Photo, body: dict[str, Any]) -> dict[str, Any]:
    """Merge this grader's findings ({}: normal) and the centres (null: the line's stay) into the file; the new view."""
    width, height = _image_size(session, photo)
    found = body.get("findings")
    if not isinstance(found, dict):
        raise BadRequest(f"findings must be an object of finding → regions, got {found!r}")
    if body.get("disc") is None and body.get("fovea") is None:
        disc, fovea = None, None  # the grader has not placed them (a suggestion not confirmed)
    else:
        disc, fovea = _centres(body.get("disc"), body.get("fovea"), width, height)
    seen = _centres_seen(body.get("centres_seen"))
    session.store.save(photo.image_id, file=photo.file, split=session.split, disc=disc, fovea=fovea,
                       annotator=session.grader, findings=found, centres_seen=seen)
    return _view(session, photo)


async def save(session: Session, request: Request) -> JSONResponse:
    photo = _photo(session, request)
    body = await _json_body(request)
    return JSONResponse(await run_in_threadpool(save_reading, session, photo, body))


def photo_file(session: Session, request: Request) -> Response:
    path = catalogue.resolve_photo(session.images_dir, session.by_rel, request.path_params["rel"])
    try:
        jpeg = session.jpegs.get(path)
    except images_lib.ImageError as e:
        raise BadRequest(session.shown(str(e))) from None
    return Response(jpeg, media_type="image/jpeg")


Handler = Callable[[Session, Request], Any]


def _route(session: Session, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` bound to the session, run off the event loop, its errors as JSON with a status."""

    async def endpoint(request: Request) -> Response:
        try:
            if inspect.iscoroutinefunction(handler):
                return await handler(session, request)
            return await run_in_threadpool(handler, session, request)
        except catalogue.NotServed as e:
            return _error(404, str(e))
        except store.CentresChanged as e:
            return _error(409, str(e))
        except (BadRequest, store.StoreError) as e:
            return _error(400, str(e))
        except OSError as e:  # a full disk or a lost permission: the grader must know the save failed
            where = os.path.relpath(e.filename, session.images_dir) if isinstance(e.filename, str) else "a file"
            return _error(500, f"cannot read or write {where}: {e.strerror or e}")

    return endpoint


def _matches(supplied: str, token: str) -> bool:
    return hmac.compare_digest(supplied.encode(), token.encode())


def _has_session(request: Request, session: Session) -> bool:
    """The page's token in the header, or, for a photograph, the cookie the page came with."""
    if _matches(request.headers.get(TOKEN_HEADER, ""), session.token):
        return True
    photo = request.method in _SAFE_METHODS and request.url.path.startswith("/photos/")
    return photo and _matches(request.cookies.get(session.cookie_name, ""), session.token)


async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]], session: Session,
                 hosts: frozenset[str]) -> Response:
    path = request.url.path
    needs_session = request.method not in _SAFE_METHODS or path.startswith(("/api/", "/photos/"))
    if host_name(request.headers.get("host", "")) not in hosts:
        response: Response = _error(400, "the Host header is not a name of this tool: open it by one of the names"
                                         " it printed, or start it with --allowed_host NAME")
    elif needs_session and not _has_session(request, session):
        response = _error(403, f"missing or wrong {TOKEN_HEADER} or session cookie: reload the tool's page")
    else:
        response = await call_next(request)
    for key, value in _HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def host_name(value: str) -> str:
    """The host of a Host header or address: no port, no brackets, no final dot, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _machine_names() -> set[str]:
    """This machine's names and their addresses, as far as it knows them (DNS may be slow or down)."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names |= {str(info[4][0]).partition("%")[0] for info in socket.getaddrinfo(name, None)}
        except (OSError, UnicodeError):
            continue
    return names


def allowed_hosts(host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names to answer to when listening on ``host``, sorted.

    This machine's loopback names, ``host`` itself and ``extra``; on every
    interface (0.0.0.0, ::) also the machine's names and addresses. Never any
    name: a page of another site whose name was pointed at this machine sends it.
    """
    names = {*LOCAL_NAMES, host, *extra}
    if host_name(host) in ALL_INTERFACES:
        names |= _machine_names()
    return sorted(filter(None, map(host_name, names)))


def create_app(session: Session, hosts: Collection[str] | None = None) -> Starlette:
    """The web app serving ``session``, answering to the Host names ``hosts`` (default: this machine's loopback)."""
    routes = [
        Route("/", _route(session, index_page)),
        Route("/api/session", _route(session, session_info)),
        Route("/api/photos/{index:int}", _route(session, photo_view)),
        Route("/api/photos/{index:int}", _route(session, save), methods=["POST"]),
        Route("/api/photos/{index:int}/regions", _route(session, region_map)),
        Route("/api/photos/{index:int}/suggestion", _route(session, suggestion)),
        Route("/photos/{rel:path}", _route(session, photo_file)),
        Mount("/static", StaticFiles(directory=str(_STATIC)), name="static"),
    ]
    hosts = frozenset(map(host_name, allowed_hosts("127.0.0.1") if hosts is None else hosts))
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=functools.partial(_guard, session=session, hosts=hosts))]
    return Starlette(routes=routes, middleware=middleware)
