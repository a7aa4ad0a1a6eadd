"""The benchmarks in smoke form: tiny sizes, figures checked for being finite and consistent."""

import json
import os
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fakes
from fakes import tiny_config

from fundax.bench import timing
from fundax.data import pipeline
from fundax import models

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def test_timed_repeats_times_every_iteration_and_syncs_once_a_repeat():
    calls, synced = [], []
    seconds = timing.timed_repeats(lambda: calls.append(1) or len(calls), synced.append, iterations=3, repeats=4,
                                   warmup=2)
    assert len(calls) == 2 + 3 * 4
    assert synced == [2, 5, 8, 11, 14]  # after the warm-up, then at the end of each repeat
    assert len(seconds) == 4 and all(s >= 0 for s in seconds)
    with pytest.raises(ValueError, match="iterations and repeats"):
        timing.timed_repeats(lambda: None, lambda _: None, iterations=0, repeats=1)


def test_summary_is_the_median_in_ms_and_items_per_second():
    result = timing.summary([0.1, 0.3, 0.2], items_per_iteration=10)
    assert result["ms_per_step"] == pytest.approx(200.0)
    assert result["images_per_s"] == pytest.approx(50.0)
    assert result["runs_ms"] == pytest.approx([100.0, 300.0, 200.0])


def test_flops_come_from_xla_cost_analysis():
    # An (m x k) @ (k x n) product is m*n*k multiply-adds: 2*m*n*k FLOPs.
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((16, 32)), jnp.ones((32, 8))).compile()
    assert timing.flops_per_step(compiled) == 2 * 16 * 32 * 8


def test_matmul_peak_is_positive_and_the_median():
    peak = timing.matmul_peak_tflops("float32", size=64, repeats=3)
    assert peak["tflops"] > 0 and peak["tflops"] == pytest.approx(statistics.median(peak["runs_tflops"]))


def _valid_taps(n, stride=1, dilation=1, k=3):
    """(output, tap) pairs of a 1-D SAME conv that land inside the input (XLA counts no padding)."""
    out = -(-n // stride)
    pad_lo = max((out - 1) * stride + (k - 1) * dilation + 1 - n, 0) // 2
    return sum(0 <= o * stride - pad_lo + t * dilation < n for o in range(out) for t in range(k))


def _conv_flops(n, cin, cout, stride=1, dilation=1):
    return 2 * _valid_taps(n, stride, dilation) ** 2 * cin * cout


def test_forward_gflops_match_the_architecture_by_hand():
    from fundax.bench import train as tb

    # 32 px, stem 4, one unit a stage, ASPP 4, macular hole (rates 1, 2, 4): the convs'
    # multiply-adds by hand; BatchNorm, ReLU, pooling and the sigmoid add a few percent.
    setup = tb.Setup(tiny_config(finding="macular_hole"))
    convs = _conv_flops(32, 3, 4, stride=2)
    side, width = 16, 4
    for _ in range(3):
        convs += 2 * _conv_flops(side, width, width) + _conv_flops(side, width, 2 * width, stride=2)
        side, width = side // 2, 2 * width
    convs += sum(_conv_flops(2, 4 + 8 + 16 + 32, 4, dilation=r) for r in (1, 2, 4)) + 2 * 2 * 2 * 12
    assert tb.forward_gflops_per_image(setup) * 1e9 == pytest.approx(convs, rel=0.1)


def test_eval_step_figures_are_consistent():
    from fundax.bench import train as tb

    setup = tb.Setup(tiny_config(finding="macular_hole"))
    evaluation = tb.time_eval_step(setup, steps=2, repeats=2)
    assert evaluation["images_per_s"] == pytest.approx(8 / (evaluation["ms_per_step"] / 1e3))
    assert evaluation["ms_per_step"] == pytest.approx(statistics.median(evaluation["runs_ms"]))


def test_input_benchmark_reports_medians_per_core(tiny_dataset):
    from fundax import bench

    _, data_dir = tiny_dataset
    source = pipeline.open_split("fundus_findings/synthetic", data_dir, "train")
    result = bench.input_throughput(source, "macular_hole", threads=2, batch_size=4, batches=3, warmup=1,
                                    repeats=3)
    assert len(result["runs"]) == 3 and result["images_per_s"] == sorted(result["runs"])[1]
    cores = min(2, os.cpu_count())
    assert result["images_per_s_per_core"] == pytest.approx(result["images_per_s"] / cores)


def _bench(tmp_path, *args):
    config = tmp_path / "tiny.py"
    config.write_text("from fakes import tiny_config\n\n\ndef get_config():\n"
                      "    return tiny_config(finding='macular_hole')\n")
    # One CPU device: the figures' consistency does not depend on the count, and it compiles faster.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]), XLA_FLAGS=fakes.xla_flags())
    # --config comes first: an override such as --config.model in args must follow it.
    return subprocess.run([sys.executable, "-m", "fundax.bench", f"--config={config}", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


@pytest.fixture
def bench_cli():
    """``python -m fundax.bench``'s module in this process, its flags parsed at their defaults."""
    from absl import flags

    from fundax.bench import __main__ as cli

    was_parsed = flags.FLAGS.is_parsed()
    if not was_parsed:
        flags.FLAGS(["bench"])
    yield cli
    if not was_parsed:
        flags.FLAGS.unparse_flags()


def test_train_benchmark_peak_memory_is_the_steps_not_the_matmul_peaks(bench_cli, monkeypatch):
    from fundax.bench import train as tb

    high_water = {"bytes": 0}

    def step(setup, *, steps, repeats, augment=True):
        high_water["bytes"] = max(high_water["bytes"], 100)
        return {"ms_per_step": 2.0 if augment else 1.0, "images_per_s": 4.0, "gflops_per_image": None}

    def matmul_peak(dtype):
        high_water["bytes"] = max(high_water["bytes"], 1000)  # its two square operands and the product
        return {"tflops": 1.0}

    monkeypatch.setattr(tb, "time_train_step", step)
    monkeypatch.setattr(tb, "forward_gflops_per_image", lambda setup: None)
    monkeypatch.setattr(timing, "matmul_peak_tflops", matmul_peak)
    monkeypatch.setattr(timing, "peak_memory_bytes", lambda: (high_water["bytes"], "fake allocator"))
    result = bench_cli.run_train(tiny_config(finding="macular_hole"))
    assert result["peak_memory_bytes"] == 100 and result["augmentation_share"] == pytest.approx(0.5)


def test_torch_comparison_runs_fundax_on_one_device_like_torch(bench_cli, monkeypatch):
    from fundax.bench import train as tb

    assert len(jax.local_devices()) > 1  # conftest's simulated devices
    meshes = []

    def fundax_step(setup, *, steps, repeats):
        meshes.append(setup.mesh.size)
        return {"ms_per_step": 1.0, "images_per_s": 8.0}

    def torch_step(setup, *, steps, repeats, compiled):
        meshes.append(setup.mesh.size)
        return {"variant": "torch.compile" if compiled else "eager", "ms_per_step": 2.0, "images_per_s": 4.0}

    monkeypatch.setattr(tb, "time_train_step", fundax_step)
    monkeypatch.setattr(tb, "time_torch", torch_step)
    result = bench_cli.run_torch(tiny_config(finding="macular_hole"))
    # PyTorch runs the global batch on one device; fundax on all of them would inflate the ratio.
    assert meshes == [1, 1, 1] and result["devices"] == 1
    assert [v["fundax_ratio"] for v in result["torch"]] == [2.0, 2.0]


@pytest.mark.slow
def test_train_command_writes_consistent_json(tmp_path, tiny_dataset):
    _, data_dir = tiny_dataset
    out = tmp_path / "train.json"
    done = _bench(tmp_path, "train", "--steps=1", "--repeats=2", "--first_step", f"--data_dir={data_dir}",
                  f"--json_out={out}")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    step, plain = result["step"], result["step_without_augmentation"]
    assert step["finite_loss"] and plain["finite_loss"]
    assert step["images_per_s"] == pytest.approx(8 / (step["ms_per_step"] / 1e3))
    assert step["ms_per_step"] == pytest.approx(statistics.median(step["runs_ms"]))
    # A train step is a forward, a backward of about twice its cost, and the update.
    forward = result["forward_gflops_per_image"]
    assert 2 * forward < step["gflops_per_image"] < 6 * forward
    devices = result["devices"]
    assert step["tflops_per_device"] == pytest.approx(step["gflops_per_image"] * step["images_per_s"] / devices / 1e3)
    assert result["augmentation_share"] == pytest.approx(max(0.0, 1 - plain["ms_per_step"] / step["ms_per_step"]))
    assert result["peak_share"] == pytest.approx(step["tflops_per_device"] / result["matmul_peak"]["tflops"])
    assert result["peak_memory_bytes"] > 0 and result["machine"]["backend"] == "cpu"
    for run in ("cold", "warm"):
        assert 0 < result["first_step"][run]["first_step_s"] <= result["first_step"][run]["state_and_first_step_s"]
    assert result["loader"]["images_per_s"] > 0
    assert result["input_bound"] == (result["loader"]["images_per_s"] < 0.95 * step["images_per_s"])
    assert "ms/step" in done.stdout and "first step in a new process" in done.stdout


MODES = "python -m fundax.bench {train,torch,eval,input,trace} [flags]"


def test_no_benchmark_named_is_a_usage_error_naming_the_modes():
    done = subprocess.run([sys.executable, "-m", "fundax.bench"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: give the benchmark to run: {MODES}",
                                        "(see python -m fundax.bench --help)"]


@pytest.mark.parametrize("args, flag_values, message", [
    (["fly"], {}, f"unknown benchmark 'fly': {MODES}"),
    (["train", "eval"], {}, f"give one benchmark, got train eval: {MODES}"),
    (["input"], {}, "input needs --data_dir, a prepared dataset"),
    (["train"], {"repeats": 0}, "--steps and --repeats must be >= 1, got 10 and 0"),
])
def test_bad_benchmarks_and_counts_are_usage_errors(bench_cli, args, flag_values, message):
    from absl.testing import flagsaver

    from fundax import cli

    # flagsaver, not monkeypatch: undoing a monkeypatched flag would delete it from absl's FLAGS.
    with flagsaver.flagsaver(**flag_values), pytest.raises(cli.UsageError) as e:
        bench_cli.main(["bench", *args])
    assert str(e.value) == message and e.value.exitcode == cli.USAGE_EXIT


@pytest.mark.parametrize("flag, message", [
    ("--stepz=3", "unknown flag --stepz"),
    ("--steps=many", "bad flag --steps=many: invalid literal for int() with base 10: 'many'"),
    ("--stream=test", "bad flag --stream=test: value should be one of <train|eval>"),
])
def test_bad_flags_are_one_line_usage_errors_naming_the_flag(bench_cli, capsys, flag, message):
    from fundax import cli

    with pytest.raises(SystemExit) as e:
        cli.parse_flags(["bench", flag])
    assert e.value.code == cli.USAGE_EXIT
    assert capsys.readouterr().err.splitlines()[0] == f"error: {message}"


def test_help_lists_the_flags_and_exits_0(bench_cli, monkeypatch, capsys):
    from fundax import cli

    # As python -m fundax.bench --help sees it: absl lists the flags of the module sys.argv[0] names.
    monkeypatch.setitem(sys.modules, "__main__", bench_cli)
    monkeypatch.setattr(sys, "argv", [bench_cli.__name__, "--help"])
    with pytest.raises(SystemExit) as e:
        cli.parse_flags(sys.argv)
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("Benchmarks: medians of repeated timed runs")
    for flag in ("--config", "--steps", "--repeats", "--data_dir", "--json_out", "--stream"):
        assert f"\n  {flag}:" in out, flag


def test_the_torch_twin_of_another_model_is_refused_in_one_line(bench_cli, capsys):
    from absl.testing import flagsaver

    with flagsaver.flagsaver(config=tiny_config(model="inception_v3", guidance_weight=0.0, image_size=80)):
        assert bench_cli.main(["bench", "torch"]) == 1
    assert capsys.readouterr().err == ("error: the PyTorch twin is the guided CNN; --config.model=inception_v3 "
                                       "has none\n")


def test_torch_twin_matches_fundax_architecture_and_loss():
    torch = pytest.importorskip("torch", reason="the PyTorch comparison needs the bench extra (pip install torch)")
    from fundax import losses
    from fundax.bench import torch_guided_cnn as tg

    for finding in ("macular_hole", "hemorrhage", "membrane"):
        config = tiny_config(finding=finding)
        model = models.create_model(config).clone(axis_name=None)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        twin = tg.TorchGuidedCNN(model)
        flax_count = sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
        assert sum(p.numel() for p in twin.parameters()) == flax_count
        logit, activation = twin(torch.rand(2, 3, 32, 32))
        out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 32, 32, 3)))
        assert tuple(logit.shape) == out["logit"].shape and tuple(activation.shape) == out["activation_map"].shape

    rng = np.random.default_rng(0)
    logit, label = rng.normal(size=4).astype(np.float32), np.array([1, 0, 1, 0], np.float32)
    amap, mask = rng.uniform(0, 1, (4, 2, 2)).astype(np.float32), (rng.uniform(size=(4, 2, 2)) > 0.5).astype(np.float32)
    weight = np.array([1, 1, 0, 1], np.float32)
    expected, _ = losses.total_loss(logit, amap, label, mask, weight, guidance_weight=0.5, epsilon=1e-3)
    got = tg.combined_loss(*(torch.from_numpy(a) for a in (logit, amap, label, mask, weight)), 0.5, 1e-3)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_torch_affine_without_randomness_is_a_mirror_or_identity():
    torch = pytest.importorskip("torch", reason="the PyTorch comparison needs the bench extra (pip install torch)")
    from fundax.bench import torch_guided_cnn as tg

    theta = tg.random_affine(64, torch.Generator().manual_seed(0), scale=(1.0, 1.0), rotation_deg=0.0,
                             translation=0.0, shear_deg=0.0)
    mirror = theta[:, 0, 0]
    assert set(mirror.tolist()) == {-1.0, 1.0}
    expected = torch.zeros(64, 2, 3)
    expected[:, 0, 0], expected[:, 1, 1] = mirror, 1.0
    assert torch.equal(theta, expected)


@pytest.mark.slow
def test_torch_command_reports_ratios(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch comparison needs the bench extra (pip install torch)")
    out = tmp_path / "torch.json"
    done = _bench(tmp_path, "torch", "--steps=1", "--repeats=2", "--nocompile", f"--json_out={out}")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    eager = result["torch"][0]
    assert eager["variant"] == "eager" and eager["finite_loss"]
    assert eager["fundax_ratio"] == pytest.approx(result["fundax"]["images_per_s"] / eager["images_per_s"])


def test_trace_summary_adds_up_events_by_where_and_operation(tmp_path):
    import gzip

    from fundax.bench import trace

    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream/123"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "thread_name", "pid": 2, "tid": 3, "args": {"name": "python"}},
        {"ph": "X", "pid": 1, "tid": 7, "name": "convolution.1", "ts": 0, "dur": 600.0},
        {"ph": "X", "pid": 1, "tid": 7, "name": "convolution.1", "ts": 700, "dur": 300.0},
        {"ph": "X", "pid": 1, "tid": 7, "name": "fusion.2", "ts": 1000, "dur": 500.0},
        {"ph": "X", "pid": 2, "tid": 3, "name": "PjitFunction(step)", "ts": 0, "dur": 100.0},
        # Nested in the call above: counted once, as its own 40 µs, the call keeping 60.
        {"ph": "X", "pid": 2, "tid": 3, "name": "$queues.py:98 get", "ts": 10, "dur": 40.0},
        {"ph": "i", "pid": 2, "tid": 3, "name": "an instant, no duration", "ts": 5},
    ]
    folder = tmp_path / "plugins" / "profile" / "2026_12_01_00_00_00"
    folder.mkdir(parents=True)
    with gzip.open(folder / trace.TRACE_FILE, "wt") as f:
        json.dump({"traceEvents": events}, f)
    summary = trace.summarise(trace.latest_trace(tmp_path), top=2)
    assert summary["total_ms"] == 1.5  # 600 + 300 + 500 + 60 + 40 µs of self time
    assert summary["by_kind_ms"] == {"device": 1.4, "xla_cpu": 0.0, "waiting": 0.04, "host": 0.06}
    assert [(r["where"], r["operation"], r["total_ms"], r["calls"]) for r in summary["rows"]] == [
        ("/device:GPU:0 Stream", "convolution.1", 0.9, 2), ("/device:GPU:0 Stream", "fusion.2", 0.5, 1)]
    assert summary["rows"][0]["share"] == 0.6
    assert "| /device:GPU:0 Stream | convolution.1 | device | 0.90 | 2 | 60.0 % |" in trace.table(summary)
    rows = trace.summarise(trace.latest_trace(tmp_path), top=10)["rows"]
    assert {(r["operation"], round(r["total_ms"], 3)) for r in rows if r["where"] == "/host:CPU python"} == {
        ("PjitFunction(step)", 0.06), ("$queues.py:98 get", 0.04)}
    with pytest.raises(trace.TraceError, match="no perfetto_trace.json.gz under"):
        trace.latest_trace(tmp_path / "plugins" / "nothing")
    (folder / trace.TRACE_FILE).write_bytes(b"not gzip")
    with pytest.raises(trace.TraceError, match="not a readable Perfetto JSON trace"):
        trace.summarise(folder / trace.TRACE_FILE)


def test_a_bad_config_is_a_usage_error_before_any_benchmark(bench_cli, capsys):
    from absl.testing import flagsaver

    with flagsaver.flagsaver(config=tiny_config(model="inception_v3")), pytest.raises(SystemExit) as e:
        bench_cli.main(["bench", "train"])
    assert e.value.code == 2
    assert "guidance_weight 1.0 with model inception_v3" in capsys.readouterr().err
