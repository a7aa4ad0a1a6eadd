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
KINDS = ("device", "xla_cpu", "waiting", "host")
"""How a row is counted: ops on an accelerator; XLA:CPU's own threads running ops; a thread
blocked (a queue, a lock, waiting for a result); any other host work (Python, decoding)."""
_WAITING = re.compile(r"(^\$.*\b(get|select|wait|poll|_poll|sleep|acquire|block_until_ready|_value|join)$)"
                      r"|wait for completion|Await")


def kind(where: str, operation: str) -> str:
    """Which of :data:`KINDS` a (where, operation) row is."""
    if "/device:" in where:
        return "device"
    if _WAITING.search(operation):
        return "waiting"
    if "XLA" in where:
        return "xla_cpu"
    return "host"


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
    thread = re.sub(r"/-?\d+$", "", thread or "?")
    return f"{process or '?'} {thread}"


def _self_times(spans: list[dict]) -> list[tuple[dict, float]]:
    """Each span of one thread with its self time: its duration less that of the spans nested in it.

    Spans nest (a Python frame holds the call that dispatches an XLA program, which holds its
    fusions): summing durations would count the same microseconds at every level.
    """
    ordered = sorted(spans, key=lambda e: (float(e["ts"]), -float(e["dur"])))
    selfs = [float(e["dur"]) for e in ordered]
    stack: list[int] = []  # indices of the open spans, innermost last
    for i, e in enumerate(ordered):
        start = float(e["ts"])
        while stack and float(ordered[stack[-1]]["ts"]) + float(ordered[stack[-1]]["dur"]) <= start:
            stack.pop()
        if stack:
            selfs[stack[-1]] -= float(e["dur"])
        stack.append(i)
    return [(e, max(v, 0.0)) for e, v in zip(ordered, selfs)]


def summarise(path: str | pathlib.Path, top: int = 20) -> dict[str, Any]:
    """Self time by (where, operation) over the trace, the ``top`` largest first, with shares of the total.

    Self time: a span's duration less that of the spans nested in it on its thread, so the
    total is the time the traced threads were busy, each microsecond counted once.
    """
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
    by_thread: dict[tuple, list[dict]] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e and "ts" in e:
            by_thread[e.get("pid"), e.get("tid")].append(e)
    for (pid, tid), spans in by_thread.items():
        where = _where(names.get((pid, None)), names.get((pid, tid)))
        for e, self_us in _self_times(spans):
            key = (where, e.get("name", "?"))
            totals[key] += self_us
            counts[key] += 1
    total = sum(totals.values())
    rows = [{"where": where, "operation": op, "kind": kind(where, op), "total_ms": us / 1e3,
             "calls": counts[where, op], "share": us / total if total else 0.0}
            for (where, op), us in totals.most_common(top)]
    by_kind = {k: 0.0 for k in KINDS}
    for (where, op), us in totals.items():
        by_kind[kind(where, op)] += us / 1e3
    return {"trace": str(path), "total_ms": total / 1e3, "by_kind_ms": by_kind, "rows": rows}


def table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    total = summary["total_ms"]
    kinds = ", ".join(f"{k} {v:.1f} ms ({100 * v / total:.0f} %)" for k, v in summary["by_kind_ms"].items()
                      if v and total)
    lines = [f"{summary['trace']}: {total:.1f} ms over all traced threads (self time): {kinds}", "",
             "| where | operation | kind | self ms | calls | share |", "|---|---|---|---:|---:|---:|"]
    for r in summary["rows"]:
        lines.append(f"| {r['where']} | {r['operation'][:60]} | {r['kind']} | {r['total_ms']:.2f} | {r['calls']} | "
                     f"{100 * r['share']:.1f} % |")
    return "\n".join(lines)
