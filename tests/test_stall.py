"""The stall detector (fundax.stall): eq. 2's stuck state named, and a healthy run left alone."""

import json
import math
import subprocess

import numpy as np
import pytest

import fakes
from fundax.loop import LoopState
from fundax import stall
from fundax import workdir as workdirs


def _outputs(probability, label, weight=None):
    probability, label = np.asarray(probability, np.float32), np.asarray(label, np.float32)
    return {"probability": probability, "label": label,
            "weight": np.ones_like(label) if weight is None else np.asarray(weight, np.float32)}


def test_floor_bce_is_the_cost_of_predicting_epsilon_everywhere():
    # A quarter positive: 0.25 * -ln(1e-3) + 0.75 * -ln(1 - 1e-3).
    assert stall.floor_bce(0.25, 1e-3) == pytest.approx(0.25 * math.log(1000) - 0.75 * math.log(0.999))
    assert stall.floor_bce(0.25, 1e-3) == pytest.approx(1.7277, abs=1e-4)


def test_floor_metrics_by_hand():
    # Positives predicted 1e-3 (at the floor), 2.5e-3 (logit -5.99, within 1 of -6.91) and 0.9 (not);
    # one negative; an excluded positive at the floor does not count.
    outputs = _outputs([1e-3, 2.5e-3, 0.9, 1e-3, 1e-3], [1, 1, 1, 0, 1], [1, 1, 1, 1, 0])
    got = stall.floor_metrics(outputs, 1e-3)
    assert got["val_positives_at_floor"] == pytest.approx(2 / 3)
    assert got["val_floor_bce"] == pytest.approx(stall.floor_bce(0.75, 1e-3))


def test_at_floor_needs_both_the_bce_and_the_positives():
    stuck = {"val_bce": 1.70, "val_floor_bce": 1.73, "val_positives_at_floor": 0.95}
    assert stall.at_floor(stuck)
    assert not stall.at_floor(stuck | {"val_bce": 0.2})  # the classifier works
    assert not stall.at_floor(stuck | {"val_positives_at_floor": 0.1})  # a poor classifier, not the floor
    assert not stall.at_floor(stuck | {"val_floor_bce": 0.0})  # no positives: nothing to say


def test_loop_state_counts_evaluations_at_the_floor_in_a_row():
    config = fakes.tiny_config(stall_patience=2)
    loop = LoopState("macular_hole", "guided_cnn", 0.1)
    assert [loop.observe_floor(f, config) for f in (True, False, True, True, True)] == [
        False, False, False, True, True]
    assert loop.evals_at_floor == 3
    assert LoopState.from_json(loop.as_json(config)).evals_at_floor == 3  # survives a resume


def _run(tmp_path, tiny_dataset, name, **overrides):
    _, data_dir = tiny_dataset
    workdir = tmp_path / name
    result = subprocess.run(fakes.train_command(workdir, data_dir, 8, **overrides), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return result, entries


@pytest.mark.slow
def test_a_constructed_stuck_state_is_named_on_the_console_and_in_metrics(tmp_path, tiny_dataset):
    # Every cell starts far below logit(eps) and a tiny learning rate keeps it there: the stuck state.
    result, entries = _run(tmp_path, tiny_dataset, "stuck", **{"guided_cnn.logit_bias_init": -20.0,
                                                               "learning_rate": 1e-6, "min_learning_rate": 0.0,
                                                               "eval_every_steps": 2,
                                                               "log_every_steps": 2})
    validation = [e for e in entries if e["split"] == "validation"]
    assert [e["stalled"] for e in validation] == [0, 1, 1, 1]  # stall_patience 2
    assert all(e["val_positives_at_floor"] == 1.0 for e in validation)
    # Below the floor every positive costs more than -log(eps): the BCE is above the floor's.
    assert all(e["val_bce"] > e["val_floor_bce"] > 0 for e in validation)
    notes = [e for e in entries if e["split"] == "stall"]
    assert [n["step"] for n in notes] == [4, 6, 8]
    assert "stuck at eq. 2's epsilon floor" in notes[0]["message"] and "guidance_ramp_steps" in notes[0]["message"]
    assert "stuck at eq. 2's epsilon floor for 2 evaluations" in result.stderr
    assert "stall detector: stuck at eq. 2's epsilon floor for the last 4 evaluation(s)" in result.stdout


@pytest.mark.slow
def test_a_guided_run_with_the_recipe_raises_no_alarm(tmp_path, tiny_dataset):
    # The recipe's warm-up (fakes.train_command): lambda = 1 from step 3 on, four evaluations.
    result, entries = _run(tmp_path, tiny_dataset, "healthy", learning_rate=0.05, eval_every_steps=2,
                           log_every_steps=2)
    assert [e["guidance_weight"] for e in entries if e["split"] == "train"][-1] == 1.0
    validation = [e for e in entries if e["split"] == "validation"]
    assert len(validation) == 4 and not any(e["stalled"] for e in validation)
    assert all(e["val_positives_at_floor"] < stall.POSITIVE_SHARE for e in validation)
    assert not [e for e in entries if e["split"] == "stall"]
    assert "stall detector: not at eq. 2's epsilon floor at the last evaluation" in result.stdout


def test_prior_bce_is_the_entropy_of_the_prevalence():
    assert stall.prior_bce(0.5) == pytest.approx(math.log(2))
    assert stall.prior_bce(0.25) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert stall.prior_bce(0.0) == stall.prior_bce(1.0) == 0.0


@pytest.mark.slow
def test_the_guidance_ramp_starts_at_the_delay_when_the_gate_stays_shut(tmp_path, tiny_dataset):
    # Two steps of a tiny network do not halve the BCE of the prevalence: the ramp starts at step 3.
    _, entries = _run(tmp_path, tiny_dataset, "gated", guidance_start_bce=0.01, guidance_delay_steps=3,
                      guidance_ramp_steps=2, eval_every_steps=2, log_every_steps=1)
    notes = [e for e in entries if e["split"] == "guidance"]
    assert [n["step"] for n in notes] == [3] and "guidance_delay_steps 3 reached" in notes[0]["message"]
    train = [e for e in entries if e["split"] == "train"]
    assert [e["guidance_weight"] for e in train] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    # Only evaluations after the ramp (step 5 on) may be the best: 6 and 8 of 2, 4, 6, 8.
    validation = {e["step"] for e in entries if e["split"] == "validation"}
    assert validation == {2, 4, 6, 8}

    ckpts = workdirs.Workdir(tmp_path / "gated").checkpoints(read_only=True)
    assert ckpts.best_step() in (6, 8)
    ckpts.close()
