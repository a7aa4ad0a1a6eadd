"""Reports over evaluated runs: the paper's Table 1, paired DeLong tests, ROC curves and Fig. 3.

The library of ``python -m fundax.report`` (:mod:`fundax.report`) and ``experiments/table1.py``.
Each run is a training workdir evaluated with ``python -m fundax.evaluate``. The command
writes ``table1.md`` and ``table1.csv`` (findings × models: AUROC, AIR on true
positives and on false negatives, the best of each row in bold, mean ± sd where a
model has several runs of a finding, e.g. seeds), ``delong.csv``
(for every two runs of one finding, the paired DeLong test of their AUROCs on the
examples both scored), ``roc.png``, and with ``--figure3`` one Fig. 3 panel per finding.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import pathlib
import statistics
from typing import Any

import ml_collections
import numpy as np

from fundax import findings, metrics, models, pictures, provenance, storage
from fundax import workdir as workdirs

MODEL_ORDER = ("Inception-v3", "With", "Without")
COLUMNS = (("auroc", "AUROC"), ("air_tp", "AIR (TP)"), ("air_fn", "AIR (FN)"))
LOCALISATION_COLUMNS = (("pointing_tp", "Pointing game (TP)"), ("lesion_share_tp", "Activation on the lesion (TP)"))
"""Where lesion pixels are known: whether the map's peak is on the lesion, and its share of the activation."""


class ReportError(ValueError):
    """A run that cannot be reported (not evaluated, or not a workdir)."""


@dataclasses.dataclass
class Run:
    """One evaluated run: its workdir, config and metrics on a split."""

    workdir: pathlib.Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The run section of its config.json: provenance, init_from."""

    @property
    def finding(self) -> str:
        return self.config["finding"]

    @property
    def model(self) -> str:
        """The paper's column: Inception-v3, or the guided CNN with or without guidance."""
        if self.config.get("model") == "inception_v3":
            return "Inception-v3"
        return "With" if self.config.get("guidance_weight", 1.0) > 0 else "Without"

    def outputs(self, split: str) -> dict[str, np.ndarray]:
        return workdirs.read_eval_outputs(self.workdir, split)

    def provenance_lines(self) -> list[str]:
        """Where the run came from: versions, devices, dataset fingerprint, and what it was initialised from."""
        lines = provenance.lines(self.info.get("provenance") or {})
        init = self.info.get("init_from")
        if init:
            lines.append(f"initialised from {init['source']} (step {init['checkpoint_step']}, "
                         f"{init['source_finding']}); re-initialised {', '.join(init['reinitialised_modules'])}")
        return lines


def load_run(workdir: str | pathlib.Path, split: str) -> Run:
    workdir = storage.path(workdir)
    try:
        workdirs.Workdir(workdir).check_exists()
        config = workdirs.saved_config(workdir)
    except workdirs.NotAWorkdirError as e:
        raise ReportError(str(e)) from None
    result = workdirs.read_eval_metrics(workdir, split)
    if result is None:
        raise ReportError(f"{workdir} has no {split} evaluation: run "
                          f"python -m fundax.evaluate --workdir={workdir} --split={split}")
    return Run(workdir, config, result, workdirs.run_info(workdir))


def table1(runs: list[Run], columns: tuple[tuple[str, str], ...] = COLUMNS + LOCALISATION_COLUMNS
           ) -> list[dict[str, Any]]:
    """One row per finding (the paper's order first): per model and column, the mean over runs.

    Keys ``KEY/MODEL`` (the mean, None without values), ``KEY/MODEL/sd`` (the sample standard
    deviation over runs, e.g. seeds; None for fewer than two) and ``KEY/MODEL/n``.
    """
    order = list(findings.PAPER_FINDINGS) + [f for f in findings.FINDINGS if f not in findings.PAPER_FINDINGS]
    models = [m for m in MODEL_ORDER if any(r.model == m for r in runs)]
    rows = []
    for finding in order:
        row: dict[str, Any] = {"finding": finding}
        mine = [r for r in runs if r.finding == finding]
        if not mine:
            continue
        for key, _ in columns:
            for model in models:
                values = [r.metrics[key] for r in mine if r.model == model and r.metrics.get(key) is not None]
                row[f"{key}/{model}"] = statistics.fmean(values) if values else None
                row[f"{key}/{model}/sd"] = statistics.stdev(values) if len(values) > 1 else None
                row[f"{key}/{model}/n"] = len(values)
        rows.append(row)
    return rows


def _models(rows: list[dict[str, Any]]) -> list[str]:
    return [m for m in MODEL_ORDER if any(f"auroc/{m}" in row for row in rows)]


def table1_markdown(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...] = COLUMNS) -> str:
    """The paper's Table 1 layout; the best value of each row and column group in bold.

    A value over several runs reads ``mean ± sd (n=runs)``. Inception-v3 gets AIR columns
    too (from its class activation map), which the paper's table does not have. With
    ``LOCALISATION_COLUMNS``, the same layout for the pointing game and the share of
    activation on the lesion, over the findings with lesion masks.
    """
    models = _models(rows)
    if columns is not COLUMNS:
        rows = [r for r in rows if any(r.get(f"{key}/{m}") is not None for key, _ in columns for m in models)]
        if not rows:
            return ""
    head = ["Findings"] + [f"{title} {m}" for _, title in columns for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [findings.get_finding(row["finding"]).display_name]
        for key, _ in columns:
            values = {m: row[f"{key}/{m}"] for m in models}
            best = max((v for v in values.values() if v is not None), default=None)
            for m in models:
                v, sd, n = values[m], row[f"{key}/{m}/sd"], row[f"{key}/{m}/n"]
                text = "–" if v is None else f"{v:.4f}" + (f" ± {sd:.4f} (n={n})" if n > 1 else "")
                cells.append(f"**{text}**" if v is not None and v == best and len(models) > 1 else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def delong_pairs(runs: list[Run], split: str) -> list[dict[str, Any]]:
    """For every two runs of one finding: the paired DeLong test on the examples both scored."""
    results = []
    for a, b in itertools.combinations(runs, 2):
        if a.finding != b.finding:
            continue
        out_a, out_b = a.outputs(split), b.outputs(split)
        scored_b = {i: k for k, i in enumerate(out_b["image_id"]) if out_b["weight"][k] > 0}
        rows_a = [k for k, i in enumerate(out_a["image_id"]) if out_a["weight"][k] > 0 and i in scored_b]
        rows_b = [scored_b[out_a["image_id"][k]] for k in rows_a]
        labels = out_a["label"][rows_a]
        if not np.array_equal(labels, out_b["label"][rows_b]):
            raise ReportError(f"{a.workdir} and {b.workdir} disagree on the labels of the same images")
        test = metrics.delong_test(labels, out_a["probability"][rows_a], out_b["probability"][rows_b])
        results.append({
            "finding": a.finding, "run_a": str(a.workdir), "model_a": a.model, "run_b": str(b.workdir),
            "model_b": b.model, "n_examples": len(rows_a),
            "auroc_a": None if test is None else test.auroc_a, "auroc_b": None if test is None else test.auroc_b,
            "z": None if test is None else test.z, "p_value": None if test is None else test.p_value,
        })
    return results


def write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as CSV, the columns in order of first appearance; empty rows give an empty file."""
    if not rows:
        path.write_text("")
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with storage.writing(path) as local, open(local, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def figure3(runs: list[Run], split: str, out_dir: pathlib.Path, image_ids: list[str] | None,
            num_images: int) -> list[pathlib.Path]:
    """Per finding, a Fig. 3 panel: photograph, regional cue, map with guidance, map without."""
    from fundax import regions
    from fundax.data import pipeline, staging

    written = []
    for finding in dict.fromkeys(r.finding for r in runs):
        guided = next((r for r in runs if r.finding == finding and r.model == "With"), None)
        if guided is None:
            continue
        unguided = next((r for r in runs if r.finding == finding and r.model == "Without"), None)
        out_g = guided.outputs(split)
        out_u = unguided.outputs(split) if unguided else None
        row_of_u = {i: k for k, i in enumerate(out_u["image_id"])} if out_u else {}
        threshold = guided.metrics.get("threshold")
        if image_ids:
            picks = [k for i in image_ids for k in np.flatnonzero(out_g["image_id"] == i)]
        else:  # the most confident true positives of the guided model
            positive = (out_g["weight"] > 0) & (out_g["label"] > 0)
            if threshold is not None:
                positive &= out_g["probability"] >= threshold
            picks = [k for k in np.argsort(-out_g["probability"]) if positive[k]][:num_images]
        if not picks:
            continue
        data_dir = staging.local_data_dir(guided.config["dataset"], guided.config["data_dir"])
        source = pipeline.open_split(guided.config["dataset"], data_dir, split)
        grid = models.activation_grid(ml_collections.ConfigDict(guided.config))
        rows = []
        for k in picks:
            record = source[int(out_g["record_index"][k])]
            image = np.asarray(record["image"])
            bits = int(record["region_bits"][findings.finding_index(finding)])
            maps = [out_g["activation_map"][k].astype(np.float32)]
            titles = [f"with guidance (p={out_g['probability'][k]:.2f})"]
            image_id = str(out_g["image_id"][k])
            if out_u is not None and image_id in row_of_u:
                j = row_of_u[image_id]
                maps.append(out_u["activation_map"][j].astype(np.float32))
                titles.append(f"without guidance (p={out_u['probability'][j]:.2f})")
            rows.append({
                "image": image, "maps": maps, "map_titles": titles,
                "mask": regions.grid_mask(grid, record["disc"], record["fovea"], bits),
                "label": f"{image_id} ({findings.get_finding(finding).display_name})",
            })
        path = pictures.draw_figure3(rows, out_dir / f"figure3_{finding}.png",
                                     title=f"{findings.get_finding(finding).display_name}, {split} split")
        written.append(path)
    return written
