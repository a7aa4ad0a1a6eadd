"""The accelerator check: its dry run on the CPU at tiny sizes, and its report from parts' JSON."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

import fakes

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "accelerator_check.sh"

_spec = importlib.util.spec_from_file_location("accelerator_check", ROOT / "experiments" / "accelerator_check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules["accelerator_check"] = check
_spec.loader.exec_module(check)


def probe_wheelhouse(folder: pathlib.Path) -> pathlib.Path:
    """A wheelhouse of one small made-up wheel, as launch/offline/wheelhouse.sh lays one out."""
    folder.mkdir()
    files = {"fundax_probe/__init__.py": b"PROBE = 1\n",
             "fundax_probe-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fundax-probe\nVersion: 0.0.1\n",
             "fundax_probe-0.0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items())
    wheel = folder / "fundax_probe-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("fundax_probe-0.0.1.dist-info/RECORD", record + "fundax_probe-0.0.1.dist-info/RECORD,,\n")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = {"python": here, "platform": "any", "wheels": [{"name": "fundax-probe", "version": "0.0.1",
                                                                "file": wheel.name, "bytes": wheel.stat().st_size}],
                "total_bytes": wheel.stat().st_size, "relies_on": {"numpy": ">=1.26"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "requirements.txt").write_text("fundax-probe==0.0.1\n")
    return folder


@pytest.mark.slow
def test_the_dry_run_fills_every_part_with_sane_figures(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PY": sys.executable, "WHEELHOUSE": str(probe_wheelhouse(tmp_path / "wheelhouse")),
            "PIP_CONFIG_FILE": os.devnull, "XLA_FLAGS": fakes.xla_flags()}
    done = subprocess.run(["bash", SCRIPT, "--tiny", out], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "accelerator_check.json").read_text())
    parts = result["parts"]
    assert result["tiny"] and result["elapsed_s"] < result["budget_s"]
    assert list(parts) == ["install", *check.PARTS]
    failed = {name: part for name, part in parts.items() if part["status"] != "ok"}
    if "torch" in failed and failed["torch"]["status"] == "skipped":  # PyTorch is the bench extra's
        del failed["torch"]
    assert not failed, json.dumps(failed, indent=1)[-3000:]

    # Installed from the wheelhouse into OUT/site, with no index, and on the parts' path.
    assert parts["install"]["wheels"] == 1 and (out / "site" / "fundax_probe" / "__init__.py").exists()
    for dtype in ("bfloat16", "float32"):
        train = parts[f"train_{dtype}"]
        step, peak = train["step"], train["matmul_peak"]
        assert train["dtype"] == dtype and step["finite_loss"] and peak["dtype"] == dtype
        assert step["tflops_per_device"] > 0 and peak["tflops"] > 0
        assert train["peak_share"] == pytest.approx(step["tflops_per_device"] / peak["tflops"])
        # Global batch: the tiny batch on each of the simulated CPU devices.
        assert train["batch_size"] == 8 * train["devices"] == 8 * check.CPU_DEVICES
    assert 0 <= parts["train_bfloat16"]["augmentation_share"] < 1
    assert "augmentation_share" not in parts["train_float32"]
    if parts["torch"]["status"] == "ok":
        eager, compiled = parts["torch"]["torch"]
        assert eager["variant"] == "eager" and eager["images_per_s"] > 0 and "skipped" in compiled
        assert eager["fundax_ratio"] == pytest.approx(parts["torch"]["fundax"]["images_per_s"] / eager["images_per_s"])
        assert parts["torch"]["devices"] == 1
    assert parts["eval"]["images_per_s"] > 0

    agreement = parts["agreement"]
    assert agreement["devices"] == {"accelerator": check.CPU_DEVICES, "cpu": 1} and agreement["agree"]
    assert agreement["largest_update"] > 0 and agreement["params_max_abs_diff"] < 1e-3 * agreement["largest_update"]
    assert agreement["loss"]["rel_diff"] < 1e-5

    for image_format in ("jpeg", "png"):
        runs = parts["input"]["formats"][image_format]["by_threads"]
        assert [r["threads"] for r in runs] == sorted({1, os.cpu_count()})
        assert all(r["images_per_s"] > 0 for r in runs)

    training = parts["training"]
    assert training["steps"] == 6 and training["timed_steps"] == [2, 6] and training["steps_per_s"] > 0
    assert training["guidance_weight"] == 1.0  # guided from the first step
    assert training["loss_fell"] == (training["loss"]["last"] < training["loss"]["first"])
    assert (out / "training" / "metrics.jsonl").exists()

    table = (out / "accelerator_check.md").read_text()
    for name in parts:
        assert f"| {name} | ok |" in table or name == "torch"
    assert "target" not in table  # no verdicts on tiny sizes


def write_parts(out: pathlib.Path, parts: dict) -> None:
    (out / "parts").mkdir(parents=True)
    for name, data in parts.items():
        (out / "parts" / f"{name}.json").write_text(json.dumps(data))


TRAIN = {"status": "ok", "dtype": "bfloat16", "image_size_px": 512, "batch_size": 32, "devices": 1, "seconds": 40.0,
         "step": {"ms_per_step": 20.0, "images_per_s": 1600.0, "tflops_per_device": 300.0},
         "matmul_peak": {"tflops": 600.0}, "peak_share": 0.5, "augmentation_share": 0.02}


def test_the_report_judges_targets_on_an_accelerator_and_says_what_did_not_run(tmp_path):
    write_parts(tmp_path, {
        "machine": {"backend": "gpu", "devices": ["NVIDIA H200"], "cores": 16, "python": "3.12", "jax": "0.11.2"},
        "install": {"status": "ok", "wheels": 42, "wheelhouse_bytes": 37.5e6, "target": "/out/site", "seconds": 9},
        "train_bfloat16": TRAIN,
        "train_float32": {"status": "timed_out", "error": "still running after 60 s", "seconds": 60,
                          "partial": TRAIN | {"dtype": "float32", "peak_share": 0.1}},
        "torch": {"status": "skipped", "reason": "PyTorch does not import here"},
        "eval": {"status": "crashed", "error": "the run exited with status -11 during this part"},
    })
    check.report(tmp_path, started=None, tiny=False)
    result = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert [p["status"] for p in result["parts"].values()] == [
        "ok", "ok", "timed_out", "skipped", "crashed", "not_run", "not_run", "not_run"]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in
            (tmp_path / "accelerator_check.md").read_text().splitlines() if line.startswith("| ")}
    assert "42 wheels (37.5 MB) into /out/site" in rows["install"]
    assert "300 TFLOP/s a device = 50.0% of the measured 600 TFLOP/s bfloat16 matmul peak (target ≥ 40%: met)" \
        in rows["train_bfloat16"]
    assert "augmentation 2.0% of the step" in rows["train_bfloat16"]
    # A part stopped at its cap keeps the figures it had; only bfloat16 is judged against the peak.
    assert rows["train_float32"].startswith("| train_float32 | timed_out | still running after 60 s; so far: 20.00 ms")
    assert "10.0% of the measured" in rows["train_float32"] and "target" not in rows["train_float32"]
    assert "PyTorch does not import here" in rows["torch"] and "status -11" in rows["eval"]
    assert "not reached before the check ended" in rows["training"]


def test_a_missed_target_and_a_dead_run_are_reported(tmp_path):
    write_parts(tmp_path, {"machine": {"backend": "gpu"}, "train_bfloat16": TRAIN | {"peak_share": 0.2}})
    (tmp_path / "parts" / "current").write_text("train_float32")
    (tmp_path / "log").write_text("Fatal Python error: Segmentation fault\n")
    assert check.crashed(tmp_path, 139, tmp_path / "log") == 0
    crashed = json.loads((tmp_path / "parts" / "train_float32.json").read_text())
    assert crashed["status"] == "crashed" and "status 139" in crashed["error"] and "Segmentation" in crashed["log_tail"]
    assert not (tmp_path / "parts" / "current").exists()
    assert check.crashed(tmp_path, 1, None) == 1  # died outside every part: nothing to record, no second try
    check.report(tmp_path, started=None, tiny=False)
    table = (tmp_path / "accelerator_check.md").read_text()
    assert "(target ≥ 40%: **missed**)" in table


def test_a_part_past_its_cap_is_stopped_and_the_next_run_goes_on_after_it(tmp_path):
    env = dict(os.environ, XLA_FLAGS=fakes.xla_flags())
    done = subprocess.run([sys.executable, ROOT / "experiments" / "accelerator_check.py", "run", tmp_path, "--tiny",
                           "--cap-s=0.5"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 124, done.stderr[-2000:]
    first = next(iter(check.PARTS))
    stopped = json.loads((tmp_path / "parts" / f"{first}.json").read_text())
    assert stopped["status"] == "timed_out" and stopped["error"] == "still running after 0.5 s"
    assert "partial" in stopped and (tmp_path / "parts" / "machine.json").exists()
    assert len(list((tmp_path / "parts").glob("*.json"))) == 2  # the machine and the part stopped
    assert check.crashed(tmp_path, 124, None) == 0 and not (tmp_path / "parts" / "current").exists()
