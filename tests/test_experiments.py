"""The experiment scripts behind docs/GUIDANCE.md: the recipe sweep, the selection study, the plot."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import ml_collections
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


recipe_sweep, selection_study, guidance_plot, label_only = (
    _load(n) for n in ("recipe_sweep", "selection_study", "guidance_plot", "label_only"))


def test_label_only_turns_the_chosen_share_of_train_positives_and_nothing_else():
    def line(k, split, findings):
        return {"image_id": str(k), "split": split, "annotations": [
            {"annotator": "a", "findings": findings}, {"annotator": "b", "findings": {}}]}

    lines = [line(k, "train", {"macular_hole": ["macula"], "drusen": ["temporal"]}) for k in range(6)]
    lines += [line(6, "train", {"drusen": ["macula"]}), line(7, "test", {"macular_hole": ["macula"]})]
    out, turned, positives = label_only.make_label_only(lines, "macular_hole", 0.5, seed=3)
    assert (turned, positives) == (3, 6)
    label_only_ids = [o["image_id"] for o in out if o["annotations"][0]["findings"].get("macular_hole", 0) is None]
    assert len(label_only_ids) == 3 and all(int(i) < 6 for i in label_only_ids)
    for before, after in zip(lines, out):  # drusen, the other grader and the test line untouched
        assert after["annotations"][0]["findings"].get("drusen") == before["annotations"][0]["findings"].get("drusen")
        assert after["annotations"][1] == before["annotations"][1]
    assert out[7] == lines[7] and lines[0]["annotations"][0]["findings"]["macular_hole"] == ["macula"]
    assert label_only.make_label_only(lines, "macular_hole", 0.5, seed=3)[0] == out  # the seed decides
    assert label_only.make_label_only(lines, "macular_hole", 1.0, seed=0)[1] == 6


def test_a_variant_is_a_name_and_overrides():
    assert recipe_sweep.parse_variant("ramp:guidance_ramp_steps=200,warmup_steps=100") == (
        "ramp", {"guidance_ramp_steps": "200", "warmup_steps": "100"})
    assert recipe_sweep.parse_variant("paper:") == ("paper", {})
    with pytest.raises(SystemExit, match="needs a name before ':'"):
        recipe_sweep.parse_variant(":warmup_steps=1")
    with pytest.raises(SystemExit, match="'warmup_steps' is not KEY=VALUE"):
        recipe_sweep.parse_variant("x:warmup_steps")


def test_only_evaluations_after_the_ramp_are_candidates(tmp_path):
    lines = [{"step": 100, "split": "validation", "val_bce": 0.1},
             {"step": 150, "split": "guidance", "message": "step 150: ..."},
             {"step": 200, "split": "validation", "val_bce": 0.3},
             {"step": 300, "split": "validation", "val_bce": 0.2},
             {"step": 300, "split": "train", "bce": 0.2},
             {"step": 400, "split": "validation", "val_bce": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    config = ml_collections.ConfigDict({"guidance_delay_steps": 300, "guidance_ramp_steps": 100})
    # The ramp began at the gate's step 150 (not the delay's 300) and ran 100 steps: 300 and 400 count.
    assert sorted(selection_study.validation_entries(tmp_path, config)) == [300, 400]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines if e["split"] != "guidance"))
    assert sorted(selection_study.validation_entries(tmp_path, config)) == [400]  # no gate: from the delay


def test_the_plotted_pulls_are_the_losses_own_gradients():
    a = np.array([1e-4, 2e-3, 0.5, 0.9])
    eq2, ablation = guidance_plot.pulls(a).values()
    np.testing.assert_allclose(eq2, [0.0, 0.998, 0.5, 0.1], atol=1e-6)  # 1 - a above eps, 0 below
    np.testing.assert_allclose(ablation, a, rtol=1e-5)
