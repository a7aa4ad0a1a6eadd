"""The photographs as the browser gets them: checked from the header, decoded one at a time, cached.

A photograph that ``fundax.prepare`` would refuse from its header alone (format,
frames, sample depth, more than :data:`fundax.data.images.DEFAULT_MAX_PIXELS`)
is never decoded: :func:`size` says why, and the page shows it when the
photograph is opened. The others are decoded as fundax decodes them (EXIF
orientation not applied) and re-encoded as JPEG (:func:`browser_jpeg`), or given
to :mod:`fundax.landmarks` for the disc and fovea it suggests
(:func:`suggestion_json`). A photograph near the limit takes some 150 MB per copy
while it is decoded, and a small file can claim that many pixels, so the whole
process decodes :data:`MAX_DECODES` at a time, whoever asks; a :class:`PhotoCache`
keeps the last few results, keyed by path, modification time and size, so moving
back and forth decodes nothing again.
"""

from __future__ import annotations

import collections
import os
import pathlib
import threading
import json
from collections.abc import Callable

import cv2

from fundax import landmarks
from fundax.data import images as images_lib

MAX_DECODES = 1
CACHE_ENTRIES = 8
CACHE_BYTES = 128 * 1024 * 1024
SUGGESTION_ENTRIES = 4096  # some 300 bytes each: a whole session's
_decoding = threading.BoundedSemaphore(MAX_DECODES)


def size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the header; ImageError naming ``path`` if ``fundax.prepare`` would refuse it."""
    # The preparation's own checks, so the tool refuses what preparing would.
    return images_lib.image_size(path, images_lib.DEFAULT_MAX_PIXELS, min_side_px=images_lib.MIN_SIDE_PX)


def browser_jpeg(path: pathlib.Path) -> bytes:
    """The photograph as fundax decodes it, as a JPEG; ImageError naming ``path`` if it cannot be."""
    size(path)  # refused from the header, before any decoder is reached
    rgb = images_lib.load_image(path, images_lib.DEFAULT_MAX_PIXELS, min_side_px=images_lib.MIN_SIDE_PX)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]  # keep colour detail
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise images_lib.ImageError(f"{path}: cannot be encoded for the browser")
    return jpeg.tobytes()


def suggestion_json(path: pathlib.Path) -> bytes:
    """The disc and fovea :func:`fundax.landmarks.locate` finds in the photograph at ``path``, as JSON.

    ``disc``, ``fovea`` ([x, y] in its pixels), the two confidences, ``flags`` (what is
    not to be trusted), ``confident`` (no flag: what ``prepare --locate_missing`` would
    use) and ``locator`` (:data:`fundax.landmarks.LOCATOR_VERSION`). ImageError naming
    ``path`` if it cannot be decoded.
    """
    size(path)
    rgb = images_lib.load_image(path, images_lib.DEFAULT_MAX_PIXELS, min_side_px=images_lib.MIN_SIDE_PX)
    found = landmarks.locate(rgb)
    return json.dumps({
        "disc": list(found.disc), "fovea": list(found.fovea), "disc_confidence": found.disc_confidence,
        "fovea_confidence": found.fovea_confidence, "flags": list(found.flags), "confident": found.confident,
        "locator": landmarks.LOCATOR_VERSION,
    }).encode()


class PhotoCache:
    """The last ``entries`` results of ``encode`` (at most ``max_bytes`` in all), made one at a time in the process."""

    def __init__(self, entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_BYTES,
                 encode: Callable[[pathlib.Path], bytes] = browser_jpeg):
        self.entries, self.max_bytes, self._encode = entries, max_bytes, encode
        self._made: collections.OrderedDict[tuple[str, int, int], bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._made)

    def _cached(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            made = self._made.get(key)
            if made is not None:
                self._made.move_to_end(key)
            return made

    def get(self, path: pathlib.Path) -> bytes:
        """``encode`` of the photograph at ``path`` as it is now (by default its JPEG)."""
        st = os.stat(path)
        key = (os.fspath(path), st.st_mtime_ns, st.st_size)
        made = self._cached(key)
        if made is not None:
            return made
        with _decoding:
            # Whoever waited here for the same photograph finds it made.
            made = self._cached(key)
            if made is not None:
                return made
            made = self._encode(path)
        with self._lock:
            self._made[key] = made
            while len(self._made) > 1 and (len(self._made) > self.entries
                                           or sum(map(len, self._made.values())) > self.max_bytes):
                self._made.popitem(last=False)
        return made
