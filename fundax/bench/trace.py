"""Where the time of traced train steps went: a table from a ``jax.profiler`` trace.

``--config.profile_steps=START,N`` traces N train steps into ``WORKDIR/profile``
(:class:`fundax.loop.Profile`), as an XPlane file for TensorBoard's profile plugin and
Perfetto (ui.perfetto.dev) and as a Perfetto JSON trace, which this module reads:
``python -m fundax.bench trace --trace_dir=WORKDIR/profile`` lists the operations that
took the most time, by where they ran (a device stream, the XLA:CPU client, Python).
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
from typing import Any

TRACE_FILE = "perfetto_trace.json.gz"


class TraceError(ValueError):
    """A folder without a readable trace."""


def latest_trace(trace_dir: str | pathlib.Path) -> pathlib.Path:
    """The newest Perfetto JSON trace under ``trace_dir`` (each traced window writes a timestamped folder)."""
    found = sorted(pathlib.Path(trace_dir).rglob(TRACE_FILE), key=lambda p: p.parent.name)
    if not found:
        raise TraceError(f"no {TRACE_FILE} under {trace_dir}: trace a run with --config.profile_steps=START,N")
    return found[-1]


def _where(process: str | None, thread: str | None) -> str:
    """A thread's name without the numeric id each run gives it: ``tf_XLAEigen/738…`` -> ``tf_XLAEigen``."""
    thread = re.sub(r"/\d+$", "", thread or "?")
    return f"{process or '?'} {thread}"


def summarise(path: str | pathlib.Path, top: int = 20) -> dict[str, Any]:
    """Total time by (where, operation) over the trace, the ``top`` largest first, with shares of the total."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise TraceError(f"{path} is not a readable Perfetto JSON trace: {e}") from None
    events = data["traceEvents"] if isinstance(data, dict) else data
    names: dict[tuple, str] = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
            key = (e.get("pid"), e.get("tid") if e["name"] == "thread_name" else None)
            names[key] = e.get("args", {}).get("name")
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            key = (_where(names.get((e.get("pid"), None)), names.get((e.get("pid"), e.get("tid")))), e.get("name", "?"))
            totals[key] += float(e["dur"])
            counts[key] += 1
    total = sum(totals.values())
    rows = [{"where": where, "operation": op, "total_ms": us / 1e3, "calls": counts[where, op],
             "share": us / total if total else 0.0} for (where, op), us in totals.most_common(top)]
    return {"trace": str(path), "total_ms": total / 1e3, "rows": rows}


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    lines = [f"{summary['trace']}: {summary['total_ms']:.1f} ms of traced events", "",
             "| where | operation | total ms | calls | share |", "|---|---|---:|---:|---:|"]
    for r in summary["rows"]:
        lines.append(f"| {r['where']} | {r['operation'][:60]} | {r['total_ms']:.2f} | {r['calls']} | "
                     f"{100 * r['share']:.1f} % |")
    return "\n".join(lines)
