"""Tests for the evaluation numbers of Table 1 against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from fundax import metrics
from fundax.metrics import (
    AirSummary,
    OperatingPoint,
    air_per_image,
    air_summary,
    auroc,
    auroc_ci95,
    confusion_groups,
    delong_test,
    evaluation_metrics,
    operating_point,
    undefined_reason,
)


def _separable(rng: np.random.Generator, n: int, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels with 30% positives and scores whose positives sit ``shift`` higher."""
    labels = (rng.random(n) < 0.3).astype(int)
    return labels, 1 / (1 + np.exp(-(rng.normal(size=n) + shift * labels)))


# --- AUROC -------------------------------------------------------------------


def test_auroc_counts_the_pairs_a_positive_wins():
    # Positive 0.35 beats negative 0.1 and loses to 0.4; positive 0.8 beats both: 3 of 4 pairs.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75


def test_auroc_gives_half_credit_for_a_tie():
    # Positive 0.4 beats 0.1 and ties 0.4 (half); positive 0.8 beats both: 3.5 of 4 pairs.
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == 0.875


@pytest.mark.parametrize(
    "labels, reason",
    [([], "no examples"), ([1, 1], "no negative examples"), ([0, 0, 0], "no positive examples")],
)
def test_auroc_is_none_with_a_single_class(labels, reason):
    assert auroc(labels, np.linspace(0, 1, len(labels))) is None
    assert undefined_reason(labels) == reason
    assert operating_point(labels, np.linspace(0, 1, len(labels))) is None
    assert auroc_ci95(labels, np.linspace(0, 1, len(labels))) is None


@pytest.mark.parametrize(
    "labels, scores",
    [([0, 2], [0.1, 0.2]), ([0, 1], [0.1]), ([[0, 1]], [[0.1, 0.2]]), ([0, 1], [0.1, np.nan])],
)
def test_bad_inputs_are_refused(labels, scores):
    with pytest.raises(ValueError):
        auroc(labels, scores)


# --- bootstrap ---------------------------------------------------------------


def test_auroc_from_counts_matches_sklearn_on_resamples():
    rng = np.random.default_rng(3)
    labels, scores = _separable(rng, 60)
    scores = np.round(scores, 1)  # plenty of ties
    distinct, level = np.unique(scores, return_inverse=True)
    for _ in range(20):
        draw = rng.integers(0, 60, size=60)
        positives = np.bincount(level[draw][labels[draw] == 1], minlength=distinct.size)
        negatives = np.bincount(level[draw][labels[draw] == 0], minlength=distinct.size)
        got = metrics._auroc_from_counts(positives[None], negatives[None])[0]
        assert got == pytest.approx(roc_auc_score(labels[draw], scores[draw]), abs=1e-12)


@pytest.mark.parametrize(
    "labels, scores",
    [
        _separable(np.random.default_rng(4), 40),
        # Five examples: 5 of these 50 resamples hold a single class and are dropped.
        ([1, 0, 0, 1, 0], [0.8, 0.3, 0.6, 0.4, 0.1]),
    ],
)
def test_bootstrap_is_the_percentile_interval_of_resampled_aurocs(labels, scores):
    # Redraw the same resamples the function draws (one chunk) and score each with sklearn.
    labels, scores = np.asarray(labels), np.asarray(scores)
    n, num_resamples = labels.size, 50
    assert num_resamples <= metrics._BOOTSTRAP_CHUNK
    draws = np.random.default_rng(7).integers(0, n, size=(num_resamples, n))
    aurocs = [roc_auc_score(labels[d], scores[d]) for d in draws if 0 < labels[d].sum() < n]
    expected = np.percentile(aurocs, [2.5, 97.5])
    got = auroc_ci95(labels, scores, num_resamples=num_resamples, seed=7)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_bootstrap_interval_holds_the_point_and_is_deterministic():
    labels, scores = _separable(np.random.default_rng(5), 300)
    low, high = auroc_ci95(labels, scores, seed=1)
    assert low < auroc(labels, scores) < high
    assert auroc_ci95(labels, scores, seed=1) == (low, high)
    assert auroc_ci95(labels, scores, seed=2) != (low, high)


def test_bootstrap_interval_narrows_with_more_data():
    rng = np.random.default_rng(6)
    small = auroc_ci95(*_separable(rng, 100))
    large = auroc_ci95(*_separable(rng, 4000))
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_bootstrap_needs_a_resample():
    with pytest.raises(ValueError):
        auroc_ci95([0, 1], [0.1, 0.9], num_resamples=0)


# --- operating point ---------------------------------------------------------


def test_operating_point_maximises_the_harmonic_mean():
    # Scores descending: P P N P N P N N (4 positives, 4 negatives).
    #   t    se    sp    2·se·sp/(se+sp)
    #   0.9  1/4   1     0.4
    #   0.8  1/2   1     0.667
    #   0.7  1/2   3/4   0.6
    #   0.6  3/4   3/4   0.75   <- best
    #   0.5  3/4   1/2   0.6
    #   0.4  1     1/2   0.667
    #   0.3  1     1/4   0.4
    #   0.2  1     0     0
    # Youden's se + sp - 1 ties 0.8, 0.6 and 0.4 at 0.5; the harmonic mean prefers the balanced one.
    labels = [1, 1, 0, 1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    assert operating_point(labels, scores) == OperatingPoint(0.6, 0.75, 0.75)


def test_operating_point_tie_goes_to_the_higher_threshold():
    # Scores 0.1 N, 0.3 N, 0.4 P, 0.5 N, 0.6 P, 0.9 P:
    #   t=0.9: se 1/3 sp 1 -> 0.5;   t=0.6: se 2/3 sp 1   -> 0.8
    #   t=0.5: se 2/3 sp 2/3 -> 2/3; t=0.4: se 1   sp 2/3 -> 0.8
    #   t=0.3: se 1 sp 1/3 -> 0.5;   t=0.1: se 1   sp 0   -> 0
    # 0.6 and 0.4 tie at 0.8; the higher, 0.6, wins.
    point = operating_point([0, 0, 1, 0, 1, 1], [0.1, 0.3, 0.4, 0.5, 0.6, 0.9])
    assert point.threshold == 0.6
    assert (point.sensitivity, point.specificity) == pytest.approx((2 / 3, 1.0))


def test_operating_point_considers_points_inside_a_straight_stretch():
    # Each score holds one positive and one negative, so the ROC is the diagonal through
    # (1/4,1/4) (1/2,1/2) (3/4,3/4). The harmonic mean is concave: along it
    #   t=0.9: se 1/4 sp 3/4 -> 3/8;  t=0.7: se 1/2 sp 1/2 -> 1/2;  t=0.5: 3/8;  t=0.3: 0,
    # so the best is the middle of the stretch, a point roc_curve drops by default.
    point = operating_point([1, 0] * 4, [0.9, 0.9, 0.7, 0.7, 0.5, 0.5, 0.3, 0.3])
    assert point == OperatingPoint(0.7, 0.5, 0.5)


def test_operating_point_never_returns_infinity():
    # Reversed scores: t=0.9 gives se 0 sp 0, t=0.1 gives se 1 sp 0, both harmonic 0,
    # as is the +inf point left out; the tie goes to the highest real score.
    assert operating_point([1, 0], [0.1, 0.9]) == OperatingPoint(0.9, 0.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=20))
def test_operating_point_beats_every_score_as_threshold(pairs):
    labels = np.array([p[0] for p in pairs], dtype=int)
    scores = np.array([p[1] for p in pairs], dtype=float) / 6
    if undefined_reason(labels) is not None:
        return

    def harmonic(threshold: float) -> float:
        groups = confusion_groups(labels, scores, threshold)
        se = groups["tp"].sum() / labels.sum()
        sp = groups["tn"].sum() / (1 - labels).sum()
        return 0.0 if se + sp == 0 else 2 * se * sp / (se + sp)

    point = operating_point(labels, scores)
    best = max(harmonic(t) for t in scores)
    assert harmonic(point.threshold) == pytest.approx(best, abs=1e-12)
    assert point.threshold == max(t for t in scores if harmonic(t) >= best - 1e-12)
    groups = confusion_groups(labels, scores, point.threshold)
    assert point.sensitivity == pytest.approx(groups["tp"].sum() / labels.sum())


def test_confusion_groups_count_a_score_at_the_threshold_as_positive():
    groups = confusion_groups([1, 1, 0, 0, 1], [0.2, 0.5, 0.5, 0.7, 0.9], 0.5)
    assert groups["tp"].tolist() == [False, True, False, False, True]
    assert groups["fn"].tolist() == [True, False, False, False, False]
    assert groups["fp"].tolist() == [False, False, True, True, False]
    assert not groups["tn"].any()
    assert all(mask.size == 0 for mask in confusion_groups([], [], 0.5).values())


# --- AIR ---------------------------------------------------------------------


def test_air_mean_and_pooled_ratio_differ():
    # Per image 1/2 and 9/10: mean 0.7; pooled (1 + 9) / (2 + 10) = 10/12.
    np.testing.assert_allclose(air_per_image([1, 9], [2, 10]), [0.5, 0.9])
    summary = air_summary([1, 9], [2, 10])
    assert summary.mean == pytest.approx(0.7)
    assert summary.pooled == pytest.approx(10 / 12)
    assert summary.count == 2


def test_air_leaves_out_images_without_activation_or_cue():
    # Image 1 has no activation, image 2 no regional cue (nan): only image 0 counts.
    assert np.isnan(air_per_image([0.0, np.nan], [0.0, 4.0])).all()
    assert air_summary([3.0, 0.0, np.nan], [4.0, 0.0, 5.0]) == AirSummary(mean=0.75, pooled=0.75, count=1)
    assert air_summary([], []) == AirSummary(mean=None, pooled=None, count=0)
    with pytest.raises(ValueError):
        air_per_image([1.0], [1.0, 2.0])


# --- DeLong ------------------------------------------------------------------


def _delong_direct(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) straight from the definition, comparing every pair."""
    positives, negatives = scores[:, labels == 1], scores[:, labels == 0]
    k, m = positives.shape
    n = negatives.shape[1]
    psi = np.zeros((k, m, n))
    for r in range(k):
        for i in range(m):
            for j in range(n):
                x, y = positives[r, i], negatives[r, j]
                psi[r, i, j] = 1.0 if x > y else 0.5 if x == y else 0.0
    aurocs = psi.mean(axis=(1, 2))
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)  # per positive, per negative
    s10, s01 = np.zeros((k, k)), np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = np.sum((v10[r] - aurocs[r]) * (v10[s] - aurocs[s])) / (m - 1)
            s01[r, s] = np.sum((v01[r] - aurocs[r]) * (v01[s] - aurocs[s])) / (n - 1)
    return aurocs, s10 / m + s01 / n


def test_fast_delong_matches_the_pairwise_definition():
    rng = np.random.default_rng(8)
    labels = (rng.random(70) < 0.4).astype(int)
    scores = np.stack([labels + rng.normal(size=70), np.round(labels + 2 * rng.normal(size=70), 1), rng.random(70)])
    fast_aurocs, fast_cov = metrics._delong_covariance(labels.astype(bool), scores)
    aurocs, cov = _delong_direct(labels, scores)
    np.testing.assert_allclose(fast_aurocs, aurocs, rtol=0, atol=1e-10)
    np.testing.assert_allclose(fast_cov, cov, rtol=0, atol=1e-10)


def test_delong_by_hand():
    # Positives (a, b): (0.9, 0.9), (0.4, 0.5); negatives: (0.5, 0.5), (0.1, 0.1).
    # V10 (share of negatives each positive beats, ties half): a [1, 1/2], b [1, 3/4].
    # V01 (share of positives above each negative):           a [1/2, 1], b [3/4, 1].
    # AUROC a = 3/4, b = 7/8.
    # S10 (sample covariance over positives): var a 1/8, var b 1/32, cov 1/16; S01 the same.
    # S = S10/2 + S01/2 = [[1/8, 1/16], [1/16, 1/32]].
    # Var(a - b) = 1/8 + 1/32 - 2/16 = 1/32;  z = (-1/8) / sqrt(1/32) = -1/sqrt(2).
    # p = 2 (1 - Phi(1/sqrt 2)) = erfc(1/2).
    labels = [1, 1, 0, 0]
    a, b = [0.9, 0.4, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1]
    _, cov = metrics._delong_covariance(np.array(labels, dtype=bool), np.array([a, b]))
    np.testing.assert_allclose(cov, [[1 / 8, 1 / 16], [1 / 16, 1 / 32]], atol=1e-15)
    result = delong_test(labels, a, b)
    assert (result.auroc_a, result.auroc_b, result.difference) == (0.75, 0.875, -0.125)
    assert result.variance == pytest.approx(1 / 32, abs=1e-15)
    assert result.z == pytest.approx(-1 / math.sqrt(2), abs=1e-12)
    assert result.p_value == pytest.approx(math.erfc(0.5), abs=1e-12)
    swapped = delong_test(labels, b, a)
    assert (swapped.z, swapped.p_value) == pytest.approx((-result.z, result.p_value))


def test_delong_identical_rankings_give_p_one():
    labels, scores = _separable(np.random.default_rng(9), 200)
    for other in (scores, scores**3):  # the same scores, and the same ranking
        result = delong_test(labels, scores, other)
        assert (result.difference, result.z, result.p_value, result.variance) == (0.0, 0.0, 1.0, 0.0)


def test_delong_zero_variance_with_a_difference_gives_p_zero():
    # A perfect ranking against a constant: every component differs by the same 1/2.
    result = delong_test([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5])
    assert (result.difference, result.z, result.p_value) == (0.5, math.inf, 0.0)
    # Positives a (1, 0, 3) vs negatives (3, 3, 3): V10 a = [0, 0, 1/2], V01 a = [1/6] * 3.
    # Positives b (0, 0, 2) vs negatives (0, 0, 0): V10 b = [1/2, 1/2, 1], V01 b = [2/3] * 3.
    # Both differences are constant, so Var(a - b) = 0 exactly; float rounding leaves -7e-18,
    # whose square root would be nan.
    result = delong_test([1, 1, 1, 0, 0, 0], [1, 0, 3, 3, 3, 3], [0, 0, 2, 0, 0, 0])
    assert result.difference == pytest.approx(1 / 6 - 2 / 3)
    assert (result.z, result.p_value, result.variance) == (-math.inf, 0.0, 0.0)
    # Positives a (3, 0, 1) vs negatives (2, 0, 0): V10 a = [1, 1/3, 2/3], V01 a = [1/3, 5/6, 5/6].
    # Positives b (2, 0, 1) vs negatives (3, 1, 1): V10 b = [2/3, 0, 1/3], V01 b = [0, 1/2, 1/2].
    # Again constant differences (1/3); here rounding leaves +3e-17, which would give a finite z.
    result = delong_test([1, 1, 1, 0, 0, 0], [3, 0, 1, 2, 0, 0], [2, 0, 1, 3, 1, 1])
    assert result.difference == pytest.approx(1 / 3)
    assert (result.z, result.p_value, result.variance) == (math.inf, 0.0, 0.0)


def test_delong_finds_a_strong_difference():
    rng = np.random.default_rng(10)
    labels = (rng.random(200) < 0.5).astype(int)
    informative, noise = labels + 0.5 * rng.normal(size=200), rng.normal(size=200)
    result = delong_test(labels, informative, noise)
    assert result.difference > 0.3
    assert result.p_value < 0.01


def test_delong_needs_two_of_each_class():
    assert delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) is None
    assert delong_test([1, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]) is None


# --- the evaluation record ---------------------------------------------------


def test_evaluation_metrics_by_hand():
    # The harmonic-mean example: threshold 0.6, TP at 0.9, 0.8, 0.6; FN at 0.4.
    labels = [1, 1, 0, 1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    inside = [1.0, 9.0, np.nan, 0.0, np.nan, 1.0, np.nan, np.nan]
    total = [2.0, 10.0, np.nan, 0.0, np.nan, 4.0, np.nan, np.nan]
    result = evaluation_metrics(labels, scores, inside, total)
    # AUROC: the positives beat 4, 4, 3, 2 of the 4 negatives: 13/16.
    assert result["auroc"] == 13 / 16
    assert result["auroc_ci95"][0] <= 13 / 16 <= result["auroc_ci95"][1]
    assert (result["threshold"], result["sensitivity"], result["specificity"]) == (0.6, 0.75, 0.75)
    assert (result["n_tp"], result["n_fn"], result["n_fp"], result["n_tn"]) == (3, 1, 1, 3)
    # TP AIR over 1/2 and 9/10 (the third TP has no activation): as in the AIR example.
    assert (result["air_tp"], result["air_tp_pooled"], result["n_air_tp"]) == pytest.approx((0.7, 10 / 12, 2))
    assert (result["air_fn"], result["air_fn_pooled"], result["n_air_fn"]) == (0.25, 0.25, 1)
    assert (result["n_positive"], result["n_negative"], result["notes"]) == (4, 4, [])
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("labels, reason", [([1, 1, 1], "no negative examples"), ([], "no examples")])
def test_evaluation_metrics_single_class_gives_none_with_reasons(labels, reason):
    n = len(labels)
    result = evaluation_metrics(labels, np.linspace(0.2, 0.8, n), np.ones(n), np.ones(n) * 2)
    assert result["auroc"] is None and result["auroc_ci95"] is None and result["threshold"] is None
    assert result["air_tp"] is None and result["n_tp"] is None
    assert f"AUROC undefined: {reason}" in result["notes"]
    assert "AIR (FN) undefined: no operating point" in result["notes"]
    json.dumps(result, allow_nan=False)


def test_evaluation_metrics_without_false_negatives_or_true_positives():
    # Perfect separation: every positive is a TP, so AIR (FN) has nothing to average.
    perfect = evaluation_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 3], [1, 1, 2, 4])
    assert (perfect["air_tp"], perfect["air_fn"], perfect["air_fn_pooled"]) == (0.625, None, None)
    assert perfect["notes"] == ["AIR (FN) undefined: no false negatives at the operating point"]
    # Reversed scores: the operating point 0.9 calls the positive negative, so no TP.
    reversed_ = evaluation_metrics([1, 0], [0.1, 0.9], [1.0, np.nan], [2.0, np.nan])
    assert reversed_["air_tp"] is None and reversed_["air_fn"] == 0.5
    assert "AIR (TP) undefined: no true positives at the operating point" in reversed_["notes"]


def test_evaluation_metrics_notes_true_positives_without_cues():
    result = evaluation_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], [0, 0, np.nan, np.nan], [1, 1, np.nan, np.nan])
    assert result["n_tp"] == 2 and result["air_tp"] is None and result["n_air_tp"] == 0
    assert "AIR (TP) undefined: no true positives with a regional cue and activation" in result["notes"]


def test_evaluation_metrics_refuses_misaligned_air():
    with pytest.raises(ValueError):
        evaluation_metrics([0, 1], [0.1, 0.9], [1.0], [1.0])


# --- localisation on the lesion --------------------------------------------------------------


def test_lesion_cells_use_the_cells_footprints_around_their_centres():
    # A 32 px input, 2 cells of 16 px centred at 15.5 and 31.5 (the guided CNN's grid): cell 0's
    # footprint is pixels 7..22, cell 1's 23..31 (clipped at the border); pixels 0..6 are in none.
    centres = [15.5, 31.5]
    lesion = np.zeros((32, 32), bool)
    lesion[7, 22] = True  # row 7 -> cell row 0; column 22 -> cell column 0
    np.testing.assert_array_equal(metrics.lesion_cells(lesion, centres, 16.0), [[True, False], [False, False]])
    lesion[:] = False
    lesion[23, 6] = True  # row 23 -> cell row 1; column 6 lies in no footprint
    assert not metrics.lesion_cells(lesion, centres, 16.0).any()
    lesion[31, 31] = True
    np.testing.assert_array_equal(metrics.lesion_cells(lesion, centres, 16.0), [[False, False], [False, True]])
    # The uniform grid of 4 cells on 8 px: footprints 0-1, 2-3, 4-5, 6-7.
    lesion = np.zeros((8, 8), bool)
    lesion[2:4, 5] = True
    want = np.zeros((4, 4), bool)
    want[1, 2] = True
    np.testing.assert_array_equal(metrics.lesion_cells(lesion, [1.0, 3.0, 5.0, 7.0], 2.0), want)
    with pytest.raises(ValueError, match="square"):
        metrics.lesion_cells(np.zeros((4, 5), bool), [1.0, 3.0], 2.0)


def test_pointing_game_share_and_chance_by_hand():
    # Logits 0, ln 3, -ln 3, 0: activations 1/2, 3/4, 1/4, 1/2; the peak is the ln 3 cell.
    logits = np.array([[0.0, np.log(3.0)], [-np.log(3.0), 0.0]])
    on = np.array([[False, True], [True, False]])
    hit, share, chance = metrics.lesion_localisation(logits, on)
    assert hit and share == pytest.approx((0.75 + 0.25) / 2.0) and chance == 0.5
    hit, share, chance = metrics.lesion_localisation(logits, ~on)
    assert not hit and share == pytest.approx(1.0 / 2.0) and chance == 0.5
    # Saturated activations tie at 1 in float32; the logits still say which cell peaks.
    saturated = np.array([[40.0, 41.0], [-50.0, 39.0]], np.float32)
    assert (1 / (1 + np.exp(-saturated[0]))).tolist() == [1.0, 1.0]
    assert metrics.lesion_localisation(saturated, np.array([[False, True], [False, False]]))[0]
    with pytest.raises(ValueError, match="differ"):
        metrics.lesion_localisation(logits, on[:1])
    summary = metrics.localisation_summary([1.0, 0.0, 1.0], [0.5, np.nan, 0.7], [0.25, 0.25, 0.5])
    assert summary == {"pointing": pytest.approx(2 / 3), "lesion_share": pytest.approx(0.6),
                       "pointing_chance": pytest.approx(1 / 3), "count": 3}
    assert metrics.localisation_summary([], [], [])["pointing"] is None
