"""The evaluation numbers of the paper's Table 1 (§3): AUROC, operating point, AIR.

Every function takes 1-D arrays over the *scored* examples: the caller has
already dropped the ones excluded from evaluation (an uncertain grade). Labels
are 0/1 (the finding absent/present), scores the predicted probabilities.

The paper reports specificity and sensitivity at the operating point "that
yields the best harmonic mean", and AIR, the activation inside the regional
cues over all activation, for the true positives and false negatives at that
point. It also speaks of "significant" AUROC differences; the paired DeLong
test and a bootstrap interval put a number on that.

A number that the data cannot define (AUROC with one class, AIR over no true
positives) is None, never nan, so results stay JSON-serialisable;
:func:`undefined_reason` says why for the class-balance cases and
:func:`evaluation_metrics` writes a human reason for every None into ``notes``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as sk_metrics

_BOOTSTRAP_CHUNK = 64
"""Resamples drawn at once: memory stays a few times 8 * chunk * n bytes, however many."""


def _checked(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as bool and scores as float64, after checking shapes and values."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be 1-D of one length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels.astype(bool), scores


def undefined_reason(labels: ArrayLike) -> str | None:
    """Why AUROC and the operating point are undefined for ``labels``; None if they are defined."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return "no examples"
    if not (labels == 1).any():
        return "no positive examples"
    if not (labels == 0).any():
        return "no negative examples"
    return None


def auroc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve (tied scores earn half); None with a single class."""
    labels, scores = _checked(labels, scores)
    if undefined_reason(labels) is not None:
        return None
    return float(sk_metrics.roc_auc_score(labels, scores))


def _auroc_from_counts(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """AUROC per row from counts of positives and negatives at each distinct score.

    ``positives`` and ``negatives`` are ``(R, L)`` over the L distinct scores in
    ascending order. By Mann-Whitney, a positive earns one for every negative
    at a lower score and a half for every negative at its own score. Rows with
    a single class give nan.
    """
    negatives_below = np.cumsum(negatives, axis=1) - negatives
    wins = np.sum(positives * (negatives_below + 0.5 * negatives), axis=1, dtype=np.float64)
    pairs = positives.sum(axis=1, dtype=np.float64) * negatives.sum(axis=1, dtype=np.float64)
    return np.divide(wins, pairs, out=np.full(wins.shape, np.nan), where=pairs > 0)


def auroc_ci95(
    labels: ArrayLike, scores: ArrayLike, *, num_resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap 95% interval (2.5th, 97.5th percentile) of the AUROC.

    Each resample draws the examples with replacement. A resample that holds a
    single class has no AUROC and is dropped, not redrawn, so the percentiles
    come from the remaining ones (nearly all of them unless a class is tiny).
    The same seed gives the same interval. None with a single class, or when
    every resample was dropped.

    A resample is only a count of draws per example, so the AUROC of each comes
    from counts per distinct score (one ``bincount``) without sorting again.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be positive, got {num_resamples}")
    labels, scores = _checked(labels, scores)
    if undefined_reason(labels) is not None:
        return None
    distinct, level = np.unique(scores, return_inverse=True)
    # One key per (score level, class) lets a single bincount count both classes.
    key = level * 2 + labels
    num_keys = 2 * distinct.size
    rng = np.random.default_rng(seed)
    resampled = []
    for start in range(0, num_resamples, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, num_resamples - start)
        draws = rng.integers(0, labels.size, size=(size, labels.size))
        keys = key[draws] + num_keys * np.arange(size)[:, None]
        counts = np.bincount(keys.ravel(), minlength=size * num_keys).reshape(size, distinct.size, 2)
        resampled.append(_auroc_from_counts(counts[..., 1], counts[..., 0]))
    aurocs = np.concatenate(resampled)
    aurocs = aurocs[~np.isnan(aurocs)]
    if aurocs.size == 0:
        return None
    low, high = np.percentile(aurocs, [2.5, 97.5])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A threshold (score >= threshold is called positive) and what it achieves."""

    threshold: float
    sensitivity: float
    specificity: float


def operating_point(labels: ArrayLike, scores: ArrayLike) -> OperatingPoint | None:
    """The ROC threshold with the best harmonic mean 2·se·sp/(se + sp) (0 when both are 0).

    Candidates are every distinct score (``roc_curve`` without dropping
    collinear points: the harmonic mean is concave, so its best can lie inside a
    straight stretch of the curve). The curve's first point, threshold +inf,
    calls nothing positive and is no score a model can give, so it is left
    out; it would only win with harmonic mean 0, where the highest real score
    ties it anyway. Ties, to within rounding, go to the higher threshold: the
    more specific of equally balanced points. None with a single class.
    """
    labels, scores = _checked(labels, scores)
    if undefined_reason(labels) is not None:
        return None
    fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    sensitivity, specificity, thresholds = tpr[1:], 1.0 - fpr[1:], thresholds[1:]
    total = sensitivity + specificity
    harmonic = np.divide(2 * sensitivity * specificity, total, out=np.zeros_like(total), where=total > 0)
    # Thresholds descend, so the first of the best is the highest.
    best = np.flatnonzero(harmonic >= harmonic.max() - 1e-12)[0]
    return OperatingPoint(float(thresholds[best]), float(sensitivity[best]), float(specificity[best]))


def confusion_groups(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, np.ndarray]:
    """Boolean masks ``tp``, ``fn``, ``fp``, ``tn``; a score equal to the threshold is positive."""
    labels, scores = _checked(labels, scores)
    called = scores >= threshold
    return {"tp": labels & called, "fn": labels & ~called, "fp": ~labels & called, "tn": ~labels & ~called}


def air_per_image(inside: ArrayLike, total: ArrayLike) -> np.ndarray:
    """Activation inside the regional cue over all activation, per image.

    nan where it is undefined: no activation at all (total 0) or no regional
    cue (the caller passes nan).
    """
    inside, total = np.asarray(inside, dtype=np.float64), np.asarray(total, dtype=np.float64)
    if inside.shape != total.shape:
        raise ValueError(f"inside {inside.shape} and total {total.shape} differ")
    return np.divide(inside, total, out=np.full(inside.shape, np.nan), where=total > 0)


@dataclasses.dataclass(frozen=True)
class AirSummary:
    """AIR over a group of images: mean of per-image ratios and pooled sum ratio."""

    mean: float | None
    pooled: float | None
    count: int
    """Images with a defined AIR; the others are left out of both numbers."""


def air_summary(inside: ArrayLike, total: ArrayLike) -> AirSummary:
    """Mean per-image AIR and pooled sum(inside)/sum(total); None for both when no image counts.

    The mean weighs every image alike; the pooled ratio weighs each by its total
    activation, so strongly activated images dominate it.
    """
    per_image = air_per_image(inside, total)
    defined = ~np.isnan(per_image)
    count = int(defined.sum())
    if count == 0:
        return AirSummary(mean=None, pooled=None, count=0)
    inside, total = np.asarray(inside, dtype=np.float64), np.asarray(total, dtype=np.float64)
    pooled = inside[defined].sum() / total[defined].sum()
    return AirSummary(mean=float(per_image[defined].mean()), pooled=float(pooled), count=count)


def lesion_cells(lesion: ArrayLike, centres_px: ArrayLike, stride_px: float) -> np.ndarray:
    """Bool (m, m): the activation cells whose footprint holds a lesion pixel.

    ``lesion`` is a bool (S, S) mask of the input; cell j's footprint (along either
    axis) is the pixels whose centres lie in [c_j − stride/2, c_j + stride/2) for
    its centre c_j (``centres_px``, from :class:`fundax.regions.CellGrid`).
    """
    lesion = np.asarray(lesion, bool)
    side = lesion.shape[0]
    if lesion.ndim != 2 or lesion.shape[1] != side:
        raise ValueError(f"lesion must be a square (S, S) mask, got {lesion.shape}")
    centres = np.asarray(centres_px, np.float64)
    first = np.clip(np.ceil(centres - stride_px / 2 - 0.5), 0, side).astype(int)
    stop = np.clip(np.ceil(centres + stride_px / 2 - 0.5), 0, side).astype(int)
    # Row and column sums of a 2-D prefix sum give each cell's lesion pixels at once.
    total = np.zeros((side + 1, side + 1), np.int64)
    total[1:, 1:] = lesion.cumsum(0).cumsum(1)
    count = (total[stop][:, stop] - total[first][:, stop] - total[stop][:, first] + total[first][:, first])
    return count > 0


def lesion_localisation(logit_map: ArrayLike, on_lesion: ArrayLike) -> tuple[bool, float, float]:
    """Pointing-game hit, share of activation on the lesion, and the hit rate of a random cell.

    ``on_lesion`` is :func:`lesion_cells` of the example. The hit: the map's peak cell
    is on the lesion; the peak is taken on the logit map, since a confident map
    saturates many activations at exactly 1. The share: activation (sigmoid of the
    logits) on lesion cells over all activation (AIR with the lesion for the cue).
    The chance: lesion cells over all cells, what pointing at a random cell would score.
    """
    z = np.asarray(logit_map, np.float64)
    on = np.asarray(on_lesion, bool)
    if z.shape != on.shape:
        raise ValueError(f"logit map {z.shape} and lesion cells {on.shape} differ")
    hit = bool(on.flat[int(np.argmax(z))])
    a = 1.0 / (1.0 + np.exp(-z))
    total = a.sum()
    share = float(a[on].sum() / total) if total > 0 else float("nan")
    return hit, share, float(on.mean())


def localisation_summary(hits: ArrayLike, shares: ArrayLike, chances: ArrayLike) -> dict[str, float | int | None]:
    """Pointing-game hit rate, mean share on the lesion and mean chance over a group of examples."""
    hits, shares, chances = (np.asarray(v, np.float64) for v in (hits, shares, chances))
    if hits.size == 0:
        return {"pointing": None, "lesion_share": None, "pointing_chance": None, "count": 0}
    defined = ~np.isnan(shares)
    return {"pointing": float(hits.mean()),
            "lesion_share": float(shares[defined].mean()) if defined.any() else None,
            "pointing_chance": float(chances.mean()), "count": int(hits.size)}


@dataclasses.dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of AUROC(a) = AUROC(b); ``difference`` is a − b."""

    auroc_a: float
    auroc_b: float
    difference: float
    z: float
    p_value: float
    variance: float
    """Estimated variance of the difference."""


def _delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``(K,)`` and their DeLong covariance ``(K, K)`` for scores ``(K, N)``.

    Midrank algorithm of Sun & Xu (2014): a positive's midrank among all
    examples minus its midrank among the positives is the number of negatives
    below it, ties counting half; that gives the structural components V10
    (per positive) and V01 (per negative) of DeLong et al. (1988) in
    O(N log N) instead of comparing every pair.
    """
    from scipy import stats  # a second a process: only comparisons of AUROCs need it

    positives, negatives = scores[:, labels], scores[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    ranks = stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (ranks[:, :m] - stats.rankdata(positives, axis=1)) / n
    v01 = 1.0 - (ranks[:, m:] - stats.rankdata(negatives, axis=1)) / m
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return v10.mean(axis=1), covariance


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> DeLongResult | None:
    """Two-sided paired DeLong test of two AUROCs on the same examples.

    None unless each class has at least two examples: the components'
    variances need two of each. When the variance of the difference is 0
    (identical scores, or scores that rank the examples alike) and the AUROCs
    are equal, z = 0 and p = 1; if they differ nonetheless, z = ±inf and p = 0.
    """
    labels, a = _checked(labels, scores_a)
    labels, b = _checked(labels, scores_b)
    if min(labels.sum(), (~labels).sum()) < 2:
        return None
    (auroc_a, auroc_b), cov = _delong_covariance(labels, np.stack([a, b]))
    difference = auroc_a - auroc_b
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    # Rounding leaves a few ulps where exact arithmetic gives 0.
    if variance <= 1e-12 * (cov[0, 0] + cov[1, 1]):
        z = 0.0 if difference == 0 else float(np.copysign(np.inf, difference))
        variance = 0.0
    else:
        z = difference / np.sqrt(variance)
    p_value = math.erfc(abs(z) / math.sqrt(2))  # 2 · (1 - Φ(|z|)), the standard normal's two tails
    return DeLongResult(float(auroc_a), float(auroc_b), float(difference), float(z), float(p_value), float(variance))


_GROUP_NAMES = {"tp": ("TP", "true positives"), "fn": ("FN", "false negatives")}
_EVALUATION_KEYS = ("auroc", "auroc_ci95", "threshold", "sensitivity", "specificity", "n_tp", "n_fn", "n_fp", "n_tn",
                    "air_tp", "air_tp_pooled", "n_air_tp", "air_fn", "air_fn_pooled", "n_air_fn")


def evaluation_metrics(
    labels: ArrayLike, scores: ArrayLike, air_inside: ArrayLike, air_total: ArrayLike
) -> dict[str, Any]:
    """Everything the evaluation job writes for one finding, JSON-serialisable.

    ``air_inside`` and ``air_total`` are per-example activation sums inside the
    regional cue and over the whole map; nan where an example has no cue (the
    negatives, say). AIR is averaged over the true positives and false
    negatives at the operating point; ``n_air_tp``/``n_air_fn`` count the
    images it covers. Every None comes with a reason in ``notes``.
    """
    labels, scores = _checked(labels, scores)
    inside, total = np.asarray(air_inside, dtype=np.float64), np.asarray(air_total, dtype=np.float64)
    if inside.shape != labels.shape or total.shape != labels.shape:
        raise ValueError("air_inside and air_total need one entry per scored example")
    result: dict[str, Any] = dict.fromkeys(_EVALUATION_KEYS)
    result.update(n_positive=int(labels.sum()), n_negative=int((~labels).sum()))
    notes: list[str] = []
    result["notes"] = notes
    reason = undefined_reason(labels)
    if reason is not None:
        notes += [f"AUROC undefined: {reason}", f"AUROC 95% CI undefined: {reason}"]
        notes.append(f"operating point (threshold, sensitivity, specificity, TP/FN/FP/TN) undefined: {reason}")
        notes += [f"AIR ({short}) undefined: no operating point" for short, _ in _GROUP_NAMES.values()]
        return result
    result["auroc"] = auroc(labels, scores)
    interval = auroc_ci95(labels, scores)
    if interval is None:
        notes.append("AUROC 95% CI undefined: every bootstrap resample held a single class")
    else:
        result["auroc_ci95"] = list(interval)
    point = operating_point(labels, scores)
    assert point is not None  # both classes are present
    result.update(dataclasses.asdict(point))
    groups = confusion_groups(labels, scores, point.threshold)
    result.update({f"n_{g}": int(mask.sum()) for g, mask in groups.items()})
    for group, (short, long) in _GROUP_NAMES.items():
        mask = groups[group]
        summary = air_summary(inside[mask], total[mask])
        result[f"air_{group}"], result[f"air_{group}_pooled"] = summary.mean, summary.pooled
        result[f"n_air_{group}"] = summary.count
        if summary.count == 0:
            where = "at the operating point" if not mask.any() else "with a regional cue and activation"
            notes.append(f"AIR ({short}) undefined: no {long} {where}")
    return result


def validation_metrics(outputs: dict[str, np.ndarray], guidance_weight: float, epsilon: float) -> dict[str, float]:
    """Weighted validation losses (eq. 1–3), AUROC over the scored examples, and the floor numbers.

    ``val_loss`` is eq. 3 with the full ``guidance_weight`` (the paper's lambda), whatever the
    guidance warm-up has reached. ``val_floor_bce`` and ``val_positives_at_floor`` are the stall
    detector's (:mod:`fundax.stall`).
    """
    from fundax import stall

    w = outputs["weight"]
    total = float(w.sum())
    bce = float((w * outputs["bce"]).sum() / total) if total else 0.0
    # The guidance term over the examples with a regional cue, as in training (eq. 3).
    wg = w * outputs["guided"] if "guided" in outputs else w
    total_guided = float(wg.sum())
    guidance = float((wg * outputs["guidance"]).sum() / total_guided) if total_guided else 0.0
    scored = w > 0
    labels = outputs["label"][scored]
    metrics = {"val_loss": bce + guidance_weight * guidance, "val_bce": bce, "val_guidance": guidance,
               "val_examples": int(scored.sum())}
    value = auroc(labels, outputs["probability"][scored])
    if value is not None:
        metrics["val_auroc"] = value
    return metrics | stall.floor_metrics(outputs, epsilon)
