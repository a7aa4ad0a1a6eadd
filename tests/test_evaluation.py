"""Checkpoint evaluation, the Table 1 report, Fig. 3 panels and prediction on two tiny runs."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

import fakes
from fundax import evaluation, loop, reporting
from fundax.data import synthetic
from fundax import models
from fundax import workdir as run_folders

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {"finding", "split", "checkpoint_step", "auroc", "auroc_ci95", "threshold", "sensitivity",
                 "specificity", "air_tp", "air_fn", "air_tp_pooled", "air_fn_pooled", "n_positive",
                 "n_negative", "n_excluded", "n_positive_without_cue"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dataset):
    """Two 4-step runs of macular_hole on the tiny synthetic set, with and without guidance."""
    prepared, data_dir = tiny_dataset
    base = tmp_path_factory.mktemp("eval")
    workdirs = {}
    for name, weight in (("with", 1.0), ("without", 0.0)):
        cfg = fakes.tiny_config(guidance_weight=weight, data_dir=str(data_dir))
        loop.train_and_evaluate(cfg, base / name, data_dir, show_progress=False)
        (base / name / "config.json").write_text(cfg.to_json_best_effort())
        workdirs[name] = base / name
    results = {name: evaluation.evaluate(w, "test", "latest") for name, w in workdirs.items()}
    return prepared, workdirs, results


def test_metrics_file_has_every_key_and_counts_every_example(runs):
    prepared, workdirs, results = runs
    stored = json.loads((workdirs["with"] / "eval" / "test_metrics.json").read_text())
    assert REQUIRED_KEYS <= set(stored)
    assert stored == json.loads(json.dumps(results["with"]))
    assert stored["checkpoint_step"] == 4 and stored["split"] == "test" and stored["finding"] == "macular_hole"
    n_test = prepared.split_sizes["test"]
    assert stored["n_positive"] + stored["n_negative"] + stored["n_excluded"] == n_test
    counts = prepared.metadata["label_counts"]["test"]["macular_hole"]
    assert (stored["n_positive"], stored["n_negative"], stored["n_excluded"]) == (
        counts["present"], counts["absent"], counts["excluded"])


def test_per_example_csv_and_outputs_agree(runs):
    prepared, workdirs, _ = runs
    eval_dir = workdirs["with"] / "eval"
    with open(eval_dir / "test_examples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == prepared.split_sizes["test"]
    assert len({r["image_id"] for r in rows}) == len(rows)  # every example once, none lost to batching
    outputs = np.load(eval_dir / "test_outputs.npz")
    np.testing.assert_array_equal(outputs["image_id"], [r["image_id"] for r in rows])
    air = outputs["air_inside"] / outputs["air_total"]
    np.testing.assert_allclose([float(r["air"]) for r in rows], air, atol=1e-5)
    for r, weight, label in zip(rows, outputs["weight"], outputs["label"]):
        assert r["status"] == ("excluded" if weight == 0 else ("positive" if label else "negative"))
    assert outputs["activation_map"].shape[1:] == (2, 2)  # 32 px / 16
    assert (eval_dir / "test_roc.png").exists()


def test_checkpoint_choice_and_errors(runs, tmp_path):
    _, workdirs, _ = runs
    work = workdirs["with"]

    ckpts = run_folders.Workdir(work).checkpoints(read_only=True)
    assert run_folders.resolve_step(ckpts, "latest") == 4
    assert run_folders.resolve_step(ckpts, "best") in (2, 4)
    with pytest.raises(run_folders.NotAWorkdirError, match=r"no checkpoint '999'.*steps \[2, 4\]"):
        run_folders.resolve_step(ckpts, "999")
    ckpts.close()
    with pytest.raises(run_folders.NotAWorkdirError, match="does not exist"):
        evaluation.evaluate(tmp_path / "nothing")
    with pytest.raises(run_folders.NotAWorkdirError, match="not a fundax workdir"):
        evaluation.evaluate(tmp_path)
    (tmp_path / "config.json").write_text((work / "config.json").read_text())
    with pytest.raises(run_folders.NotAWorkdirError, match="no checkpoints in"):
        evaluation.evaluate(tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_pointing_game_and_lesion_share_from_the_prepared_lesion_masks(runs):
    from fundax import metrics
    from fundax.data import pipeline

    prepared, workdirs, results = runs
    eval_dir = workdirs["with"] / "eval"
    outputs = dict(np.load(eval_dir / "test_outputs.npz"))
    result = results["with"]
    config = run_folders.load_config(workdirs["with"])
    source = pipeline.open_split(config.dataset, config.data_dir, "test", decode_images=False)
    grid = models.activation_grid(config)
    assert (grid.size, grid.stride_px, grid.offset_px) == (2, 16.0, 8.0)  # docs/REGIONS.md: (j + 0.5) * 32 / 2
    bit = 1 << 5  # macular_hole
    hits, shares, tp_hits = [], [], []
    for k in range(len(outputs["record_index"])):
        record = source[int(outputs["record_index"][k])]
        positive = outputs["weight"][k] > 0 and outputs["label"][k] > 0
        known = positive and bool(record["lesion_known"] & bit)  # every synthetic positive has its mask
        assert bool(outputs["lesion_known"][k]) == known and (not positive or known)
        if not known:
            assert np.isnan(outputs["pointing_hit"][k])
            continue
        on = metrics.lesion_cells(record["lesion_bits"][..., 0] & bit, grid.centres(), grid.stride_px)
        z = outputs["logit_map"][k].astype(np.float64)
        a = outputs["activation_map"][k].astype(np.float64)
        hits.append(float(on.flat[np.argmax(z)]))  # the peak of the logits: activations may tie at 1
        shares.append(a[on].sum() / a.sum())
        if outputs["probability"][k] >= result["threshold"]:
            tp_hits.append(hits[-1])
    assert result["n_lesion_positive"] == len(hits) == result["n_positive"] > 0
    assert result["pointing_positive"] == pytest.approx(np.mean(hits))
    # The maps were stored as float16: allow its rounding in the share.
    assert result["lesion_share_positive"] == pytest.approx(np.mean(shares), abs=2e-3)
    assert result["n_lesion_tp"] == len(tp_hits) == result["n_tp"]
    assert result["pointing_tp"] == pytest.approx(np.mean(tp_hits))
    with open(eval_dir / "test_examples.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pointing_hit"] != "" for r in rows] == list(outputs["lesion_known"])


def test_report_table_delong_and_figure3(runs, tmp_path):
    _, workdirs, results = runs
    loaded = [reporting.load_run(w, "test") for w in workdirs.values()]
    assert [r.model for r in loaded] == ["With", "Without"]
    rows = reporting.table1(loaded)
    assert [r["finding"] for r in rows] == ["macular_hole"]
    assert rows[0]["auroc/With"] == pytest.approx(results["with"]["auroc"])
    markdown = reporting.table1_markdown(rows)
    assert markdown.splitlines()[0] == ("| Findings | AUROC With | AUROC Without | AIR (TP) With | AIR (TP) Without "
                                        "| AIR (FN) With | AIR (FN) Without |")
    assert "| Macular Hole |" in markdown and "**" in markdown
    pairs = reporting.delong_pairs(loaded, "test")
    assert len(pairs) == 1 and pairs[0]["n_examples"] == results["with"]["n_positive"] + results["with"]["n_negative"]
    assert pairs[0]["p_value"] is None or 0 <= pairs[0]["p_value"] <= 1
    panels = reporting.figure3(loaded, "test", tmp_path, None, 2)
    positives_found = results["with"]["threshold"] is not None
    assert len(panels) <= 1 and (not panels or panels[0].exists())
    assert positives_found or not panels
    with pytest.raises(reporting.ReportError, match="no validation evaluation: run python -m fundax.evaluate"):
        reporting.load_run(workdirs["with"], "validation")


def test_predict_cli_scores_a_raw_photograph(runs, tmp_path):
    _, workdirs, _ = runs
    eye = synthetic.synthesize_eye(synthetic.SyntheticConfig(height_px=64), "test", 3)
    photo = tmp_path / "eye.jpg"
    cv2.imwrite(str(photo), eye.image[:, :, ::-1])
    (tmp_path / "bad.png").write_text("not a photograph")
    cv2.imwrite(str(tmp_path / "tiny.png"), eye.image[:16, :16])  # under the 32 px prepare accepts
    env = dict(os.environ, XLA_FLAGS=fakes.xla_flags(1))
    done = subprocess.run(
        [sys.executable, "-m", "fundax.predict", f"--workdir={workdirs['with']}", "--checkpoint=latest",
         f"--out={tmp_path / 'out'}", str(photo), str(tmp_path / "bad.png"), str(tmp_path / "tiny.png")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]  # two photographs failed
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith(str(photo)))
    probability = float(line.split("probability ")[1].split(",")[0])
    assert 0 < probability < 1
    assert "bad.png: error:" in done.stderr
    assert "tiny.png: error:" in done.stderr and "32 px" in done.stderr
    assert (tmp_path / "out" / "eye_macular_hole.png").exists()
    assert not (tmp_path / "out" / "tiny_macular_hole.png").exists()


def test_table1_gives_mean_and_sd_over_seeds_and_inception_air():
    def run(model, guidance_weight, auroc, air_tp):
        config = {"finding": "rnfl_defect", "model": model, "guidance_weight": guidance_weight}
        return reporting.Run(pathlib.Path("unused"), config, {"auroc": auroc, "air_tp": air_tp, "air_fn": None})

    runs = [run("guided_cnn", 1.0, 0.9, 0.7), run("guided_cnn", 1.0, 0.8, 0.5), run("guided_cnn", 0.0, 0.85, 0.4),
            run("inception_v3", 0.0, 0.95, 0.3)]
    assert [r.model for r in runs] == ["With", "With", "Without", "Inception-v3"]
    (row,) = reporting.table1(runs)
    assert row["auroc/With"] == pytest.approx(0.85) and row["auroc/With/n"] == 2
    assert row["auroc/With/sd"] == pytest.approx(0.05 * 2**0.5)  # sample sd of 0.9 and 0.8
    assert row["auroc/Without/sd"] is None and row["air_fn/With"] is None
    markdown = reporting.table1_markdown([row])
    assert markdown.splitlines()[2] == (
        "| RNFL Defect | **0.9500** | 0.8500 ± 0.0707 (n=2) | 0.8500 | 0.3000 | **0.6000 ± 0.1414 (n=2)** | 0.4000 "
        "| – | – | – |")


def test_metrics_file_is_written_last_so_a_crash_leaves_no_finished_evaluation(tmp_path, monkeypatch):
    import numpy as np

    from fundax import evaluation

    outputs = {"air_inside": np.ones(2, np.float32), "air_total": np.full(2, 2.0, np.float32),
               "weight": np.ones(2, np.float32), "label": np.array([1.0, 0.0], np.float32),
               "probability": np.array([0.9, 0.1], np.float32), "record_index": np.arange(2),
               "activation_map": np.zeros((2, 2, 2), np.float32), "logit_map": np.zeros((2, 2, 2), np.float32),
               "lesion_known": np.array([True, False]),
               "pointing_hit": np.array([1.0, np.nan]), "lesion_share": np.array([0.5, np.nan])}
    result = {"auroc": 1.0, "specificity": 1.0, "sensitivity": 1.0, "finding": "drusen", "checkpoint_step": 1}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(evaluation.np, "savez_compressed", crash)
    with pytest.raises(OSError, match="disk full"):
        evaluation.write_outputs(tmp_path, "test", result, outputs, np.array(["a", "b"]))
    assert not (tmp_path / "test_metrics.json").exists()
    monkeypatch.undo()
    evaluation.write_outputs(tmp_path, "test", result, outputs, np.array(["a", "b"]))
    assert json.loads((tmp_path / "test_metrics.json").read_text())["auroc"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test_examples.csv", "test_metrics.json", "test_outputs.npz", "test_roc.png"]


def test_examples_csv_keeps_every_digit_so_the_auroc_recomputes_exactly(tmp_path):
    import numpy as np

    from fundax import evaluation, metrics

    # A run near eq. 2's epsilon floor: the probabilities differ only below the sixth decimal.
    probability = np.float32(0.001) + np.array([3e-8, 9e-8, 1e-8, 7e-8, 2e-8, 5e-8], np.float32)
    label = np.array([1, 1, 0, 1, 0, 0], np.float32)
    n = len(label)
    outputs = {"air_inside": np.full(n, 1 / 3, np.float32), "air_total": np.ones(n, np.float32),
               "weight": np.ones(n, np.float32), "label": label, "probability": probability,
               "record_index": np.arange(n), "activation_map": np.zeros((n, 2, 2), np.float32),
               "logit_map": np.zeros((n, 2, 2), np.float32), "lesion_known": np.zeros(n, bool),
               "pointing_hit": np.full(n, np.nan), "lesion_share": np.full(n, np.nan)}
    auroc = metrics.auroc(label, probability)
    assert len(set(np.round(probability, 6))) == 1  # six decimals would tie them all: AUROC 0.5
    result = {"auroc": None, "finding": "macular_hole", "checkpoint_step": 1}
    evaluation.write_outputs(tmp_path, "test", result, outputs, np.array([f"p{k}" for k in range(n)]))
    with open(tmp_path / "test_examples.csv") as f:
        rows = list(csv.DictReader(f))
    read = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_array_equal(read, probability.astype(np.float64))
    assert metrics.auroc(np.array([float(r["label"]) for r in rows]), read) == auroc == pytest.approx(8 / 9)
    logit = np.array([float(r["logit"]) for r in rows])
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), read, rtol=1e-12)
    assert float(rows[0]["air"]) == float(np.float32(1 / 3))
