"""experiments/table1.py: the plan, its bad inputs, and the report over a finished grid."""

from __future__ import annotations

import csv
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

import fakes
from fundax import evaluation, loop
from fundax.configs import DEFAULT_CONFIG_FILE

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_table1():
    spec = importlib.util.spec_from_file_location("table1", ROOT / "experiments" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["table1"] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


table1 = _load_table1()


def _statuses(out: str) -> list[str]:
    return [line for line in out.splitlines()[1:] if not line.startswith(" ")]


def test_dry_run_prints_the_plan_and_marks_finished_runs(tmp_path, capsys):
    root = tmp_path / "grid"
    done = root / "macular_hole" / "unguided" / "seed1" / "eval"
    done.mkdir(parents=True)
    (done / "test_metrics.json").write_text("{}")
    (root / "rnfl_defect" / "inception_v3" / "seed0" / "checkpoints" / "40").mkdir(parents=True)
    before = sorted(root.rglob("*"))

    code = table1.main([f"--root={root}", f"--data_dir={tmp_path}/data/{{finding}}",
                        "--findings=macular_hole,rnfl_defect", "--seeds=0,1",
                        "--set=synthetic.shortcut_finding={finding}", "--set", "learning_rate=0.1",
                        "--set-inception_v3=inception_v3.width_multiplier=0.25",
                        "--set-guided", "guidance_weight=0.5", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == (f"Table 1 grid: 2 findings x 3 variants x 2 seeds = 12 runs under {root} "
                                   "(1 done, 1 to resume, 10 to train)")
    assert _statuses(out) == [
        "train   macular_hole/guided/seed0", "train   macular_hole/unguided/seed0",
        "train   macular_hole/inception_v3/seed0", "train   macular_hole/guided/seed1",
        "done    macular_hole/unguided/seed1", "train   macular_hole/inception_v3/seed1",
        "train   rnfl_defect/guided/seed0", "train   rnfl_defect/unguided/seed0",
        "resume  rnfl_defect/inception_v3/seed0", "train   rnfl_defect/guided/seed1",
        "train   rnfl_defect/unguided/seed1", "train   rnfl_defect/inception_v3/seed1",
    ]
    lines = out.splitlines()
    after_done = lines[lines.index("done    macular_hole/unguided/seed1") + 1]
    assert after_done == "train   macular_hole/inception_v3/seed1"  # a finished run has no commands
    work = root / "rnfl_defect" / "inception_v3" / "seed0"
    train = lines[lines.index("resume  rnfl_defect/inception_v3/seed0") + 1].split()
    assert train == [sys.executable, "-m", "fundax.train", "--finding=rnfl_defect", f"--workdir={work}",
                     f"--data_dir={tmp_path}/data/rnfl_defect", f"--config={DEFAULT_CONFIG_FILE}",
                     "--config.synthetic.shortcut_finding=rnfl_defect", "--config.learning_rate=0.1",
                     "--config.model=inception_v3", "--config.guidance_weight=0.0",
                     "--config.inception_v3.width_multiplier=0.25", "--config.seed=0"]
    evaluate = lines[lines.index("resume  rnfl_defect/inception_v3/seed0") + 2].split()
    assert evaluate == [sys.executable, "-m", "fundax.evaluate", f"--workdir={work}", "--split=test"]
    guided = lines[lines.index("train   macular_hole/guided/seed1") + 1]
    assert "--config.model=guided_cnn --config.guidance_weight=0.5 --config.seed=1" in guided
    assert sorted(root.rglob("*")) == before  # a dry run trains nothing


@pytest.mark.parametrize("args, message", [
    (["--findings=macular_hole,glaucoma"], "unknown finding 'glaucoma'; valid findings are: hemorrhage,"),
    (["--findings=,"], "--findings is empty"),
    (["--variants=guided,resnet"], "unknown variant 'resnet'; valid variants are: guided, unguided, inception_v3"),
    (["--seeds=0,a"], "--seeds takes comma-separated non-negative integers, got '0,a'"),
    (["--seeds=1,1"], "--seeds lists '1' twice"),
    (["--set=learning_rate"], "--set takes KEY=VALUE, got 'learning_rate'"),
    (["--set=seed=3"], "--set seed: use --seeds"),
    (["--set=guidance_weight=0"], "--set guidance_weight: it is the variant's; use --set-VARIANT"),
    (["--set-unguided=model=inception_v3"], "--set-unguided model: the variant sets it"),
    (["--config=no/such/config.py"], "--config no/such/config.py: no such file"),
])
def test_bad_inputs_are_one_line_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        table1.main([f"--root={tmp_path}", "--dry-run", *args])
    lines = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(lines) == 2 and lines[0].startswith(f"error: {message}"), lines
    assert lines[1] == "(see python experiments/table1.py --help)"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--dry-run"], "missing required flag --root"),
    (["--root=grid", "--seed=1"], "unknown flag --seed"),
    (["--root=grid", "--dry_run=maybe"], "bad flag --dry_run=maybe"),
    (["--root=grid", "--set-resnet=depth=50"], "unknown flag --set-resnet"),
    (["--root=grid", "macular_hole"], "unexpected arguments: macular_hole"),
])
def test_bad_flags_are_one_line_usage_errors_naming_the_flag(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        table1.main(args)
    lines = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and lines[0].startswith(f"error: {message}") and len(lines) == 2, lines


def test_calls_start_from_the_defaults(tmp_path):
    flags = table1.parse_args([f"--root={tmp_path}", "--seeds=3", "--set=a=1", "--set-guided", "b=2", "--dry_run"])
    assert (flags.seeds, flags["set"].value, flags["set-guided"].value, flags.dry_run) == ("3", ["a=1"], ["b=2"], True)
    flags = table1.parse_args([f"--root={tmp_path}"])
    assert (flags.seeds, flags["set"].value, flags["set-guided"].value, flags.dry_run) == ("0", [], [], False)


def test_help_lists_the_flags_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        table1.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("The paper's Table 1 on any prepared dataset")
    for flag in ("--root", "--data_dir", "--config", "--findings", "--variants", "--seeds", "--split", "--set",
                 "--set-guided", "--set-unguided", "--set-inception_v3", "--[no]dry_run"):
        assert f"\n  {flag}: " in out, flag


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One finding, one seed, the three variants, trained and evaluated in the grid's layout."""
    from fundax.data import preparation, synthetic

    base = tmp_path_factory.mktemp("table1")
    data = base / "data"
    # Inception-v3 reads 75 px at least; 128 px gives its CAM 2x2 cells.
    preparation.prepare("synthetic", data, image_size_px=128, show_progress=False, synthetic_config=synthetic.SyntheticConfig(
        num_train=24, num_test=16, height_px=160, prevalence={"macular_hole": 0.5}))
    root = base / "grid"
    for variant, overrides in table1.VARIANTS.items():
        config = fakes.tiny_config(image_size=128, num_train_steps=2, data_dir=str(data),
                                   model=overrides["model"], guidance_weight=float(overrides["guidance_weight"]))
        config.inception_v3.width_multiplier = 0.0625
        workdir = root / "macular_hole" / variant / "seed0"
        loop.train_and_evaluate(config, workdir, data, show_progress=False)
        evaluation.evaluate(workdir, "test", "latest")
    return root, data


@pytest.mark.slow
def test_inception_v3_trains_and_its_cam_gives_air(grid):
    root, _ = grid
    work = root / "macular_hole" / "inception_v3" / "seed0"
    entries = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in entries if e["split"] == "train"]
    assert [e["step"] for e in train] == [1, 2] and all(np.isfinite(e["loss"]) for e in train)
    assert all(e["loss"] == pytest.approx(e["bce"]) for e in train)  # BCE alone
    outputs = np.load(work / "eval" / "test_outputs.npz")
    assert outputs["activation_map"].shape[1:] == (2, 2)
    air = outputs["air_inside"] / outputs["air_total"]
    assert np.all((air >= 0) & (air <= 1 + 1e-6))
    result = json.loads((work / "eval" / "test_metrics.json").read_text())
    assert result["model_name"] == "inception_v3" and result["guidance_weight"] == 0.0
    assert result["air_tp"] is not None  # the operating point always keeps some true positives


@pytest.mark.slow
def test_a_finished_grid_is_skipped_and_reported(grid, capsys):
    root, data = grid
    assert table1.main([f"--root={root}", f"--data_dir={data}", "--findings=macular_hole"]) == 0
    out = capsys.readouterr().out
    assert "(3 done, 0 to resume, 0 to train)" in out and "[1/" not in out  # nothing retrained
    markdown = (root / "table1.md").read_text()
    assert markdown.startswith("# Table 1 on the test split: 3 of 3 runs evaluated")
    head = next(line for line in markdown.splitlines() if line.startswith("| Findings"))
    assert "| AUROC Inception-v3 | AUROC With | AUROC Without | AIR (TP) Inception-v3 |" in head
    row = next(line for line in markdown.splitlines() if line.startswith("| Macular Hole |"))
    inception_air_tp = row.split(" | ")[4].strip("* ")
    metrics = json.loads((root / "macular_hole" / "inception_v3" / "seed0" / "eval" / "test_metrics.json").read_text())
    assert inception_air_tp == f"{metrics['air_tp']:.4f}"
    with open(root / "delong.csv") as f:
        pairs = list(csv.DictReader(f))
    assert [(p["seed"], p["model_a"], p["model_b"]) for p in pairs] == [("0", "With", "Without"),
                                                                       ("0", "With", "Inception-v3")]
    scored = metrics["n_positive"] + metrics["n_negative"]
    assert all(int(p["n_examples"]) == scored for p in pairs)
    assert f"| Macular Hole | 0 | With | Without | {scored} |" in markdown


@pytest.mark.slow
def test_the_report_gives_localisation_on_the_lesion_and_the_stall_verdict_per_run(grid):
    root, data = grid
    markdown = table1.write_report(table1.plan(table1.parse_args(
        [f"--root={root}", f"--data_dir={data}", "--findings=macular_hole"])), root, "test")
    lines = markdown.splitlines()
    section = lines.index("## On the lesion itself (photographs with lesion masks)")
    head = next(line for line in lines[section:] if line.startswith("| Findings"))
    assert head == ("| Findings | Pointing game (TP) Inception-v3 | Pointing game (TP) With | Pointing game (TP) Without "
                    "| Activation on the lesion (TP) Inception-v3 | Activation on the lesion (TP) With "
                    "| Activation on the lesion (TP) Without |")
    guided = json.loads((root / "macular_hole" / "guided" / "seed0" / "eval" / "test_metrics.json").read_text())
    row = next(line for line in lines[section:] if line.startswith("| Macular Hole |"))
    assert row.split(" | ")[2].strip("* ") == f"{guided['pointing_tp']:.4f}"
    # Two steps of a tiny network: the detector needs stall_patience (2) evaluations at the floor.
    per_run = [line for line in lines if line.startswith("| Macular Hole | guided | 0 |")]
    assert len(per_run) == 1 and per_run[0].endswith(f"| {guided['checkpoint_step']} | never stuck |")
    assert table1.stall_steps(root / "macular_hole" / "guided" / "seed0") == []
