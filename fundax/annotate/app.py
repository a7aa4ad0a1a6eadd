"""The annotation tool's web app (Starlette): pages, photographs, region maps and saves.

The browser never computes the geometry: for the disc and fovea it shows, it asks
for the region map of its canvas grid, computed by :func:`fundax.regions.region_map`
(cell (i, j) belongs to the region its centre is in, as REGIONS.md says), and a
click toggles the region of the cell under the pointer. So the overlay and the
regions saved are the ones training will use.

Safety: only the session's photographs are served, decoded and re-encoded, so
nothing but image pixels leaves the images folder; every request to ``/api/``, and
every one other than GET/HEAD, needs the session token, which only the tool's own
page holds (another web page cannot read it, nor send the header without the
tool's consent, so it can neither change data nor set the tool computing region
maps); the Host header must name the address served, which stops DNS-rebinding
pages.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hmac
import importlib.resources
import inspect
import json
import math
import pathlib
import string
from collections.abc import Awaitable, Callable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fundax import findings as findings_lib
from fundax import pictures
from fundax import regions as regions_lib
from fundax.annotate import catalogue, store
from fundax.data import images as images_lib

TOKEN_HEADER = "X-Fundax-Token"
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

    @functools.cached_property
    def by_rel(self) -> dict[str, catalogue.Photo]:
        return catalogue.photo_index(self.photos)

    @functools.cached_property
    def image_ids(self) -> list[str]:
        return [photo.image_id for photo in self.photos]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _photo(session: Session, request: Request) -> catalogue.Photo:
    index = request.path_params["index"]
    if not 0 <= index < len(session.photos):
        raise catalogue.NotServed(f"no photograph {index}; there are {len(session.photos)}")
    return session.photos[index]


def _image_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the header; BadRequest if it is not an image fundax reads."""
    try:
        with Image.open(path) as im:
            if im.format not in ("JPEG", "MPO", "PNG", "TIFF"):
                raise BadRequest(f"{path.name}: unsupported format {im.format}")
            return im.size
    except (OSError, Image.DecompressionBombError) as e:
        raise BadRequest(f"{path.name}: not a readable image ({e})") from None


@functools.lru_cache(maxsize=8)
def _encoded(path: str, mtime_ns: int, size: int) -> bytes:
    """The photograph as fundax decodes it (EXIF orientation not applied), as a JPEG for the browser."""
    del mtime_ns, size  # part of the cache key only
    try:
        rgb = images_lib.load_image(path)
    except images_lib.ImageError as e:
        raise BadRequest(str(e)) from None
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]  # keep colour detail
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise BadRequest(f"{pathlib.Path(path).name}: cannot be encoded for the browser")
    return jpeg.tobytes()


def _view(session: Session, photo: catalogue.Photo) -> dict[str, Any]:
    """What the page shows of one photograph: where it is, its centres, this grader's reading."""
    path = catalogue.resolve_photo(session.images_dir, session.by_rel, photo.rel)
    try:
        width, height, problem = *_image_size(path), None
    except BadRequest as e:  # the page says so and lets the grader move on
        width, height, problem = None, None, str(e)
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


def _xy(value: Any, name: str, width: float, height: float) -> tuple[float, float]:
    """A point [x, y] inside the image, as given (centres from the file keep their precision)."""
    try:
        if isinstance(value, str):  # "12" would unpack into 1 and 2
            raise TypeError
        x, y = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"{name} must be [x, y], got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
        raise BadRequest(f"{name} ({x:g}, {y:g}) lies outside the image: x in [0, {width}], y in [0, {height}]")
    return x, y


def _centres(disc: Any, fovea: Any, width: float, height: float) -> tuple[tuple[float, float], ...]:
    centres = _xy(disc, "disc", width, height), _xy(fovea, "fovea", width, height)
    if centres[0] == centres[1]:
        raise BadRequest("disc and fovea coincide: place them apart")
    return centres


def index_page(session: Session, request: Request) -> HTMLResponse:
    template = string.Template((_STATIC / "index.html").read_text(encoding="utf-8"))
    page = template.substitute(token=escape(session.token), grader=escape(session.grader))
    return HTMLResponse(page)


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
    width, height = _image_size(catalogue.resolve_photo(session.images_dir, session.by_rel, photo.rel))
    query = request.query_params
    try:
        grid_w, grid_h = int(query["width"]), int(query["height"])
        disc, fovea = (query[k].split(",") for k in ("disc", "fovea"))
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
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("request body is not JSON") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def save_reading(session: Session, photo: catalogue.Photo, body: dict[str, Any]) -> dict[str, Any]:
    """Merge this grader's findings (``{}``: normal) and the centres into the file; the new view."""
    width, height = _image_size(catalogue.resolve_photo(session.images_dir, session.by_rel, photo.rel))
    found = body.get("findings")
    if not isinstance(found, dict):
        raise BadRequest(f"findings must be an object of finding → regions, got {found!r}")
    disc, fovea = _centres(body.get("disc"), body.get("fovea"), width, height)
    seen = body.get("centres_seen")
    if seen is not None:
        try:  # the centres as the file had them, which need not lie inside the image
            (dx, dy), (fx, fy) = seen
            seen = (float(dx), float(dy)), (float(fx), float(fy))
        except (TypeError, ValueError, OverflowError):
            raise BadRequest(f"centres_seen must be [disc, fovea] or null, got {seen!r}") from None
    session.store.save(photo.image_id, file=photo.file, split=session.split, disc=disc, fovea=fovea,
                       annotator=session.grader, findings=found, centres_seen=seen)
    return _view(session, photo)


async def save(session: Session, request: Request) -> JSONResponse:
    photo = _photo(session, request)
    body = await _json_body(request)
    return JSONResponse(await run_in_threadpool(save_reading, session, photo, body))


def photo_file(session: Session, request: Request) -> Response:
    path = catalogue.resolve_photo(session.images_dir, session.by_rel, request.path_params["rel"])
    st = path.stat()
    return Response(_encoded(str(path), st.st_mtime_ns, st.st_size), media_type="image/jpeg")


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
            return _error(500, f"cannot read or write {e.filename or 'a file'}: {e.strerror or e}")

    return endpoint


async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]], token: str) -> Response:
    supplied = request.headers.get(TOKEN_HEADER, "")
    needs_token = request.method not in _SAFE_METHODS or request.url.path.startswith("/api/")
    if needs_token and not hmac.compare_digest(supplied.encode(), token.encode()):
        response: Response = _error(403, f"missing or wrong {TOKEN_HEADER}: reload the tool's page")
    else:
        response = await call_next(request)
    for key, value in _HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def allowed_hosts(host: str) -> list[str]:
    """Host header values to accept when serving on ``host``: its own name, or any for all interfaces."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({"127.0.0.1", "localhost", "::1", "[::1]", host, f"[{host}]" if ":" in host else host})


def create_app(session: Session, host: str = "127.0.0.1") -> Starlette:
    """The web app serving ``session`` on ``host``."""
    routes = [
        Route("/", _route(session, index_page)),
        Route("/api/session", _route(session, session_info)),
        Route("/api/photos/{index:int}", _route(session, photo_view)),
        Route("/api/photos/{index:int}", _route(session, save), methods=["POST"]),
        Route("/api/photos/{index:int}/regions", _route(session, region_map)),
        Route("/photos/{rel:path}", _route(session, photo_file)),
        Mount("/static", StaticFiles(directory=str(_STATIC)), name="static"),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host)),
        Middleware(BaseHTTPMiddleware, dispatch=functools.partial(_guard, token=session.token)),
    ]
    return Starlette(routes=routes, middleware=middleware)
