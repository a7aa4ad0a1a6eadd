"""Evaluating a saved checkpoint: every example of a split through the jitted eval step.

Writes, into the workdir's evaluation folder (:mod:`fundax.workdir`): ``<split>_metrics.json`` (AUROC with its bootstrap
95% interval, the operating point maximising the harmonic mean of sensitivity and
specificity, AIR on true positives and false negatives, counts),
``<split>_examples.csv`` (one row per example, excluded ones included, every number at full precision),
``<split>_outputs.npz`` (probabilities and activation maps, for pictures and
reports) and ``<split>_roc.png``.
"""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundax import findings, metrics, models, parallel, pictures, storage, trainer
from fundax import workdir as workdirs
from fundax.data import pipeline, staging


class EvaluationError(ValueError):
    """A workdir, checkpoint or split that cannot be evaluated."""


def gather_eval(eval_step, state: trainer.TrainState, batches, sharding: NamedSharding) -> dict[str, np.ndarray]:
    """Run the eval step over batches and bring every real example's outputs to the host."""
    chunks = []
    for batch in batches:
        out = eval_step(state, pipeline.to_global(batch, sharding))
        out = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), out)
        chunks.append(out)
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    keep = merged["record_index"] >= 0
    return {k: v[keep] for k, v in merged.items()}


def image_ids(config: ml_collections.ConfigDict, data_dir: str | pathlib.Path, split: str) -> list[str]:
    """Image ids of a split in record order, read without decoding the photographs."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(config.dataset, data_dir=data_dir)
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return [source[i]["image_id"].decode() for i in range(len(source))]


def evaluate(workdir: str | pathlib.Path, split: str = "test", which: str = "best",
             data_dir: str | pathlib.Path | None = None, batch_size: int | None = None,
             out_dir: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint on one split; writes the files above (into ``out_dir``, default
    the workdir's evaluation folder) and returns the metrics."""
    workdir = workdirs.Workdir(workdir)
    config = workdirs.load_config(workdir)
    data_dir = data_dir or config.get("data_dir")
    if not data_dir:
        raise EvaluationError("the run's config names no data_dir: pass --data_dir")
    data_dir = staging.local_data_dir(config.dataset, data_dir)
    mesh = parallel.make_mesh()
    global_batch = batch_size or config.batch_size
    if global_batch % mesh.size:
        raise EvaluationError(f"batch size {global_batch} is not a multiple of the {mesh.size} devices")
    source = pipeline.open_split(config.dataset, data_dir, split)
    pipeline.check_image_size(config.dataset, data_dir, config.image_size)
    state, step = workdirs.restore_state(config, workdir, which, mesh)
    example = pipeline.FindingExample(config.finding, config.min_votes)
    eval_step = trainer.make_eval_step(models.create_model(config), config, mesh)
    outputs = gather_eval(eval_step, state, pipeline.eval_batches(
        source, example, global_batch=global_batch, process_index=jax.process_index(),
        process_count=jax.process_count(), threads=config.loader_threads, prefetch_batches=config.prefetch_batches),
        NamedSharding(mesh, P(parallel.AXIS)))
    ids = np.array(image_ids(config, data_dir, split))[outputs["record_index"]]

    scored = outputs["weight"] > 0
    labels = outputs["label"][scored]
    without_cue = positives_without_cue(outputs)
    # AIR is undefined for a positive without a regional cue: nan leaves it out of AIR, counted.
    outputs["air_inside"] = np.where(without_cue, np.nan, outputs["air_inside"])
    result = {
        "finding": config.finding, "split": split, "checkpoint_step": step,
        "model_name": config.model, "guidance_weight": config.guidance_weight,
        **metrics.evaluation_metrics(labels, outputs["probability"][scored],
                                     outputs["air_inside"][scored], outputs["air_total"][scored]),
        "n_positive": int(labels.sum()), "n_negative": int((labels == 0).sum()),
        "n_excluded": int((~scored).sum()),
        "n_positive_without_cue": int((without_cue & scored).sum()),
    }
    if result["n_positive_without_cue"]:
        result["notes"].append(f"AIR leaves out {result['n_positive_without_cue']} positive(s) whose regions no "
                               "grader marked (image-level labels): they have no regional cue")
    outputs.update(lesion_localisation(config, data_dir, split, outputs))
    result.update(localisation_metrics(outputs, result))
    if jax.process_index() == 0:
        write_outputs(storage.path(out_dir) if out_dir else workdir.eval_dir, split, result, outputs, ids)
    return result


def positives_without_cue(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Bool per example: a positive whose regions no grader marked (``guided`` 0), for which AIR is undefined."""
    guided = outputs.get("guided", np.ones_like(outputs["weight"]))
    return (outputs["label"] > 0) & (guided == 0)


def lesion_localisation(config: ml_collections.ConfigDict, data_dir: str | pathlib.Path, split: str,
                        outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per example: whether its lesion pixels are known, the pointing-game hit and the share on the lesion.

    Only positives whose record carries a lesion mask of the finding (``lesion_known``)
    get numbers; the others are nan (``lesion_known`` False).
    """
    grid = models.activation_grid(config)
    centres = grid.centres()
    bit = 1 << findings.finding_index(config.finding)
    n = len(outputs["record_index"])
    known, hits, shares, chances = np.zeros(n, bool), np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    candidates = np.flatnonzero((outputs["weight"] > 0) & (outputs["label"] > 0))
    if candidates.size:
        source = pipeline.open_split(config.dataset, data_dir, split, decode_images=False)
        for k in candidates:
            record = source[int(outputs["record_index"][k])]
            if not int(record["lesion_known"]) & bit:
                continue
            cells = metrics.lesion_cells(np.asarray(record["lesion_bits"])[..., 0] & bit, centres, grid.stride_px)
            known[k] = True
            hit, shares[k], chances[k] = metrics.lesion_localisation(outputs["logit_map"][k], cells)
            hits[k] = float(hit)
    return {"lesion_known": known, "pointing_hit": hits, "lesion_share": shares, "pointing_chance": chances}


def localisation_metrics(outputs: dict[str, np.ndarray], result: dict[str, Any]) -> dict[str, Any]:
    """Pointing game and share on the lesion over the true positives and over all positives with a mask."""
    known = outputs["lesion_known"]
    groups = {"positive": known}
    if result.get("threshold") is not None:
        groups["tp"] = known & (outputs["probability"] >= result["threshold"])
    out: dict[str, Any] = {}
    for group in ("tp", "positive"):
        mask = groups.get(group, np.zeros_like(known))
        summary = metrics.localisation_summary(outputs["pointing_hit"][mask], outputs["lesion_share"][mask],
                                               outputs["pointing_chance"][mask])
        for key in ("pointing", "lesion_share", "pointing_chance"):
            out[f"{key}_{group}"] = summary[key]
        out[f"n_lesion_{group}"] = summary["count"]
        if summary["count"] == 0:
            what = "true positive" if group == "tp" else "positive"
            result["notes"].append(f"pointing game and lesion share ({group}) undefined: no {what} "
                                   "with a lesion mask of the finding")
    return out


def write_outputs(out_dir: pathlib.Path, split: str, result: dict[str, Any],
                  outputs: dict[str, np.ndarray], ids: np.ndarray) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    air = metrics.air_per_image(outputs["air_inside"], outputs["air_total"])
    # Every number at full precision (the float64 value of what was computed): near eq. 2's
    # epsilon floor, probabilities differ below the sixth decimal, and rounding would tie them
    # and change the AUROC recomputed from this file.
    probability = outputs["probability"].astype(np.float64)
    with np.errstate(divide="ignore"):
        logit = np.log(probability) - np.log1p(-probability)
    with storage.writing(workdirs.eval_file(out_dir, split, "examples")) as local, \
            open(local, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "status", "label", "probability", "logit", "air", "pointing_hit", "lesion_share"])
        for k in range(len(ids)):
            status = "excluded" if outputs["weight"][k] == 0 else ("positive" if outputs["label"][k] else "negative")
            label = "" if status == "excluded" else int(outputs["label"][k])
            known = bool(outputs["lesion_known"][k])
            writer.writerow([ids[k], status, label, repr(float(probability[k])), repr(float(logit[k])),
                             repr(float(air[k])), int(outputs["pointing_hit"][k]) if known else "",
                             repr(float(outputs["lesion_share"][k])) if known else ""])
    with storage.writing(workdirs.eval_file(out_dir, split, "outputs")) as local:
        _save_outputs(local, ids, outputs)
    scored = outputs["weight"] > 0
    if result["auroc"] is not None:
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(outputs["label"][scored], outputs["probability"][scored])
        point = (1 - result["specificity"], result["sensitivity"])
        pictures.draw_roc(fpr, tpr, workdirs.eval_file(out_dir, split, "roc"), auroc=result["auroc"], operating_point=point,
                          title=f"{result['finding']} ({split}, step {result['checkpoint_step']})")
    # The metrics file says the evaluation is complete (experiments/table1.py skips such a
    # run), so it comes last and appears whole.
    storage.write_whole(workdirs.eval_file(out_dir, split, "metrics"), json.dumps(result, indent=2) + "\n")


def _save_outputs(path: pathlib.Path, ids: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    np.savez_compressed(
        path, image_id=ids, record_index=outputs["record_index"],
        probability=outputs["probability"], label=outputs["label"], weight=outputs["weight"],
        guided=outputs.get("guided", np.ones_like(outputs["weight"])), air_inside=outputs["air_inside"], air_total=outputs["air_total"], lesion_known=outputs["lesion_known"],
        pointing_hit=outputs["pointing_hit"], lesion_share=outputs["lesion_share"],
        activation_map=outputs["activation_map"].astype(np.float16), logit_map=outputs["logit_map"])


def summary(result: dict[str, Any]) -> str:
    """The metrics as a few readable lines."""
    def num(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    ci = result.get("auroc_ci95")
    lines = [
        f"{result['finding']} on {result['split']} (checkpoint step {result['checkpoint_step']}): "
        f"{result['n_positive']} positive, {result['n_negative']} negative, {result['n_excluded']} excluded",
        f"AUROC {num(result['auroc'])}" + (f" (95% CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""),
        f"operating point: threshold {num(result['threshold'])}, sensitivity {num(result['sensitivity'])}, "
        f"specificity {num(result['specificity'])}",
        f"AIR on true positives {num(result['air_tp'])} (pooled {num(result['air_tp_pooled'])}), "
        f"on false negatives {num(result['air_fn'])} (pooled {num(result['air_fn_pooled'])})",
    ]
    if result.get("n_lesion_positive"):
        lines.append(f"on the lesion itself ({result['n_lesion_tp']} true positives with a lesion mask): pointing "
                     f"game {num(result['pointing_tp'])} (a random cell {num(result['pointing_chance_tp'])}), "
                     f"share of activation {num(result['lesion_share_tp'])}")
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return "\n".join(lines)
