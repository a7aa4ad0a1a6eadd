"""The stall detector: guided training stuck at eq. 2's epsilon floor (docs/GUIDANCE.md).

Eq. 2 rewards every cell outside the regional cue for sinking to logit(epsilon), and
stops pulling once it is there. Early in guided training that can take the whole
map: every 1x1 weight turns negative, every cell sits at or below the floor, the
prediction sigmoid(GAP(logit map)) is about epsilon for every photograph, and the
classification loss settles at the prevalence times -log(epsilon) — the cost of
calling every positive absent with probability epsilon. Nothing in the loss moves
the network out of it quickly, so the run learns nothing for hundreds of steps.

At each evaluation the detector compares the validation BCE with that floor and
counts the positives whose prediction sits at the floor (logit within 1 of
logit(epsilon)); ``stall_patience`` such evaluations in a row make a stall.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FLOOR_MARGIN_LOGIT = 1.0
"""A prediction logit within this of logit(epsilon) is at the floor."""

BCE_SHARE = 0.5
"""An evaluation is at the floor when the BCE is at least this share of the floor BCE..."""

POSITIVE_SHARE = 0.5
"""...and at least this share of the positives are predicted at the floor."""

ADVICE = ("what to try: a longer guidance warm-up (--config.guidance_delay_steps, --config.guidance_ramp_steps), "
          "a longer learning-rate warm-up (--config.warmup_steps) or a lower --config.learning_rate; "
          "see docs/GUIDANCE.md")


def floor_bce(prevalence: float, epsilon: float) -> float:
    """Validation BCE when every photograph is predicted epsilon: the stuck state's classification loss."""
    return prevalence * -math.log(epsilon) + (1.0 - prevalence) * -math.log1p(-epsilon)


def prior_bce(prevalence: float) -> float:
    """The BCE of predicting the prevalence for every photograph: what a classifier that has learnt nothing scores."""
    if not 0 < prevalence < 1:
        return 0.0
    return -(prevalence * math.log(prevalence) + (1 - prevalence) * math.log1p(-prevalence))


def floor_metrics(outputs: dict[str, np.ndarray], epsilon: float) -> dict[str, float]:
    """The floor BCE of the scored validation examples and the share of positives predicted at the floor.

    ``outputs``: the eval step's per-example ``probability``, ``label`` and ``weight``.
    """
    scored = outputs["weight"] > 0
    labels = outputs["label"][scored]
    prevalence = float(labels.mean()) if labels.size else 0.0
    probability = np.clip(outputs["probability"][scored][labels > 0].astype(np.float64), 1e-12, 1 - 1e-12)
    logit = np.log(probability) - np.log1p(-probability)
    threshold = math.log(epsilon) - math.log1p(-epsilon) + FLOOR_MARGIN_LOGIT
    return {"val_floor_bce": floor_bce(prevalence, epsilon),
            "val_positives_at_floor": float(np.mean(logit <= threshold)) if logit.size else 0.0}


def at_floor(validation: dict[str, float]) -> bool:
    """Whether one evaluation shows the stuck state (see the module docstring)."""
    floor = validation["val_floor_bce"]
    return (floor > 0 and validation["val_bce"] >= BCE_SHARE * floor
            and validation["val_positives_at_floor"] >= POSITIVE_SHARE)


@dataclasses.dataclass
class StallDetector:
    """Counts evaluations at the floor in a row; a stall after ``patience`` of them."""

    patience: int
    in_a_row: int = 0

    def observe(self, validation: dict[str, float]) -> bool:
        """Record one evaluation; True while the run is stalled."""
        self.in_a_row = self.in_a_row + 1 if at_floor(validation) else 0
        return self.in_a_row >= self.patience


def message(step: int, validation: dict[str, float], in_a_row: int) -> str:
    """What the console and metrics.jsonl say of a stall."""
    return (f"step {step}: guided training is stuck at eq. 2's epsilon floor for {in_a_row} evaluations: "
            f"validation BCE {validation['val_bce']:.3f} against {validation['val_floor_bce']:.3f} when every "
            f"photograph is predicted epsilon, and {validation['val_positives_at_floor']:.0%} of the positives "
            f"are predicted at the floor; {ADVICE}")
