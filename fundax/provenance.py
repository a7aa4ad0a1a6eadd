"""What a run or an exported model was made with: fundax and library versions, devices, the dataset.

Recorded in every workdir's ``config.json`` (its ``fundax_run`` section) and every export,
and printed by ``python -m fundax.report``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
from typing import Any

import fundax

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def versions() -> dict[str, str | None]:
    """fundax's version and those of the libraries a result depends on (None where one is missing)."""
    found: dict[str, str | None] = {"fundax": fundax.__version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def devices() -> dict[str, Any]:
    """The backend, device kind and counts this process sees."""
    import jax

    return {"platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count()}


def collect(dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, devices, the time, and ``dataset`` (:func:`fundax.data.pipeline.dataset_fingerprint`)."""
    return {"versions": versions(), "devices": devices(), "dataset": dataset,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def lines(info: dict[str, Any]) -> list[str]:
    """A provenance record as readable lines (what ``report`` prints); [] for a run without one."""
    if not info:
        return []
    v, d, data = info.get("versions", {}), info.get("devices", {}), info.get("dataset") or {}
    out = [f"fundax {v.get('fundax')}, jax {v.get('jax')}, flax {v.get('flax')}, optax {v.get('optax')}, "
           f"python {v.get('python')}",
           f"{d.get('device_count')} × {d.get('device_kind')} ({d.get('platform')}), "
           f"{d.get('process_count')} process(es); {info.get('created', '')}"]
    if data:
        sizes = ", ".join(f"{k} {n}" for k, n in sorted((data.get("split_sizes") or {}).items()))
        out.append(f"dataset {data.get('name')} {data.get('version')} sha256 {str(data.get('sha256'))[:16]}…"
                   + (f" ({sizes})" if sizes else ""))
    return out
