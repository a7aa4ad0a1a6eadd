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


recipe_sweep, selection_study, guidance_plot = (_load(n) for n in ("recipe_sweep", "selection_study",
                                                                     "guidance_plot"))


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
