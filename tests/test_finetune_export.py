"""Fine-tuning from a run, the exported model, profiler traces and provenance, on one tiny source run."""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

import fakes
import fundax
from fundax import configs, finetune, inference, loop, parallel, reporting, trainer
from fundax import workdir as workdirs
from fundax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_dataset):
    """A 4-step macular_hole run of ``python -m fundax.train``, traced by the profiler at steps 1-2,
    with a stored operating point. (A command, as users trace: the profiler then runs in a process
    of its own, not in the one that has run the whole suite.)"""
    _, data_dir = tiny_dataset
    work = tmp_path_factory.mktemp("finetune") / "macular_hole"
    # The profiled run compiles into its own WORKDIR/jax_cache, not the session's shared cache: once in
    # the whole suite a profiled run of steps read from that cache crashed inside XLA (not seen alone).
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    done = subprocess.run(fakes.train_command(work, data_dir, 4, profile_steps="1,2"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The operating point an evaluation of the validation split would store.
    eval_file = workdirs.Workdir(work).eval_file("validation", "metrics")
    eval_file.parent.mkdir(parents=True, exist_ok=True)
    eval_file.write_text(json.dumps({"threshold": 0.4375, "checkpoint_step": 4}))
    return work, data_dir, done.stdout


def _leaves(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_the_profiler_traces_the_steps_asked_for(source):
    work, _, stdout = source
    from fundax.bench import trace

    traces = list(workdirs.Workdir(work).profile_dir.rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert f"profile:     {workdirs.Workdir(work).profile_dir.absolute()}" in stdout
    summary = trace.summarise(trace.latest_trace(workdirs.Workdir(work).profile_dir))
    assert summary["total_ms"] > 0 and summary["rows"]
    # The traced steps dispatched the train step (per_device) from Python's main thread.
    rows = trace.summarise(trace.latest_trace(workdirs.Workdir(work).profile_dir), top=1000)["rows"]
    assert any(r["operation"] == "PjitFunction(per_device)" and r["calls"] >= 2 for r in rows)


def test_bad_profile_steps_are_named():
    assert configs.parse_profile_steps("") is None and configs.parse_profile_steps("5,3") == (5, 3)
    for bad, why in (("5", "two integers"), ("a,b", "two integers"), ("-1,2", "START must be >= 0"),
                     ("1,0", "N >= 1")):
        with pytest.raises(ValueError, match=why):
            configs.parse_profile_steps(bad)
    with pytest.raises(configs.ConfigError, match="profile_steps '3,2' ends after num_train_steps 4"):
        configs.validate(fakes.tiny_config(profile_steps="3,2"), 1)


def test_config_json_records_provenance_and_report_prints_it(source):
    work, data_dir, _ = source
    saved = json.loads(workdirs.Workdir(work).config_file.read_text())
    made = saved[workdirs.RUN_SECTION]["provenance"]
    assert made["versions"]["fundax"] == fundax.__version__
    assert made["versions"]["jax"] == jax.__version__
    assert made["devices"] == {"platform": "cpu", "device_kind": jax.devices()[0].device_kind,
                               "device_count": jax.device_count(), "process_count": 1}
    fingerprint = pipeline.dataset_fingerprint("fundus_findings/synthetic", data_dir)
    assert made["dataset"] == json.loads(json.dumps(fingerprint)) and len(fingerprint["sha256"]) == 64
    # The run section is not config: loading the config leaves it out, and a resume does not see a change.
    assert workdirs.RUN_SECTION not in workdirs.saved_config(work)
    assert workdirs.load_config(work).finding == "macular_hole"
    lines = reporting.Run(work, workdirs.saved_config(work), {}, workdirs.run_info(work)).provenance_lines()
    assert lines[0].startswith(f"fundax {fundax.__version__}, jax {jax.__version__}")
    assert f"{jax.device_count()} × {jax.devices()[0].device_kind} (cpu)" in lines[1]
    assert fingerprint["sha256"][:16] in lines[2]


def test_init_from_loads_every_layer_but_the_head(source):
    work, data_dir, _ = source
    # Cotton wool patch is a small-lesion finding: other atrous rates, so the pyramid is new too.
    config = configs.validate(fakes.tiny_config(finding="cotton_wool_patch", init_from=str(work),
                                                data_dir=str(data_dir)), 8)
    mesh = parallel.make_mesh()
    from fundax import models, optimizer

    fresh = trainer.create_train_state(models.create_model(config), optimizer.make_optimizer(config), config, mesh)
    state, record = finetune.init_from(fresh, config, mesh)
    source_state = fakes.restored_state(work, 4)
    got, was, src = _leaves(state.params), _leaves(fresh.params), _leaves(source_state.params)
    loaded = [k for k in got if not k.startswith(("logit_conv", "aspp_rate"))]
    assert loaded and all(np.array_equal(got[k], src[k]) for k in loaded)
    head = [k for k in got if k.startswith(("logit_conv", "aspp_rate"))]
    assert head and all(np.array_equal(got[k], was[k]) for k in head)
    assert any(not np.array_equal(got[k], was[k]) for k in loaded)  # really another set of weights
    bn, src_bn = _leaves(state.batch_stats), _leaves(source_state.batch_stats)
    assert all(np.array_equal(bn[k], src_bn[k]) for k in bn if not k.startswith("aspp_rate"))
    assert record["checkpoint_step"] == 4 and record["source_finding"] == "macular_hole"
    assert "logit_conv" in record["reinitialised_modules"] and "stem" in record["loaded_modules"]
    assert any(m.startswith("aspp_rate") for m in record["reinitialised_modules"])
    assert record["loaded_arrays"] == len(loaded) + len([k for k in bn if not k.startswith("aspp_rate")])
    # The optimiser starts fresh: step 0, zero momentum.
    assert int(state.step) == 0 and all(not np.any(x) for x in jax.tree.leaves(state.opt_state[0].inner_state))


def test_init_from_keeps_the_pyramid_for_a_finding_of_the_same_size(source):
    work, _, _ = source
    assert finetune.head_modules(fakes.tiny_config(finding="macular_hole"),
                                 fakes.tiny_config(finding="macular_hole")) == ("logit_conv",)
    config = configs.validate(fakes.tiny_config(init_from=f"{work}:latest"), 8)
    mesh = parallel.make_mesh()
    from fundax import models, optimizer

    fresh = trainer.create_train_state(models.create_model(config), optimizer.make_optimizer(config), config, mesh)
    state, record = finetune.init_from(fresh, config, mesh)
    assert record["reinitialised_modules"] == ["logit_conv"] and record["checkpoint"] == "latest"
    src = _leaves(fakes.restored_state(work, 4).params)
    assert all(np.array_equal(v, src[k]) for k, v in _leaves(state.params).items() if k.startswith("aspp"))


def test_init_from_refuses_what_does_not_fit(source, tmp_path):
    work, _, _ = source
    mesh = parallel.make_mesh()
    from fundax import models, optimizer

    def attempt(stem_width=4, **overrides):
        config = fakes.tiny_config(**overrides)
        config.guided_cnn.stem_width = stem_width
        config = configs.validate(config, 8)
        fresh = trainer.create_train_state(models.create_model(config), optimizer.make_optimizer(config), config, mesh)
        return finetune.init_from(fresh, config, mesh)

    with pytest.raises(ValueError, match=r"not a run of the same model \(parameter \S+/kernel has shape"):
        attempt(init_from=str(work), stem_width=8)
    with pytest.raises(workdirs.NotAWorkdirError, match="does not exist"):
        attempt(init_from=str(tmp_path / "nowhere"))
    with pytest.raises(workdirs.NotAWorkdirError, match=r"no checkpoint '7'"):
        attempt(init_from=f"{work}:7")
    found, which = workdirs.find_checkpoint(work / "checkpoints" / "2")
    assert (found.path, which) == (work, "2")


def test_a_finetuned_run_records_its_source_and_resumes_exactly(source, tmp_path):
    work, data_dir, _ = source

    def config(steps):
        return fakes.tiny_config(finding="cotton_wool_patch", init_from=str(work), data_dir=str(data_dir),
                                 num_train_steps=steps, checkpoint_every_steps=1)

    loop.train_and_evaluate(config(4), tmp_path / "straight", data_dir, show_progress=False)
    loop.train_and_evaluate(config(2), tmp_path / "resumed", data_dir, show_progress=False)
    loop.train_and_evaluate(config(4), tmp_path / "resumed", data_dir, show_progress=False)
    info = workdirs.run_info(tmp_path / "resumed")
    assert info["init_from"]["source"] == str(work.absolute()) and info["last_resume"]["step"] == 2
    mesh = parallel.make_mesh()
    straight, resumed = (workdirs.restore_state(workdirs.load_config(tmp_path / name), tmp_path / name, "4", mesh)[0]
                         for name in ("straight", "resumed"))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def _photograph(path: pathlib.Path, seed: int) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    image = np.zeros((80, 96, 3), np.uint8)
    cv2.circle(image, (48, 40), 36, (60, 90, 200), -1)
    image = np.clip(image + rng.integers(0, 40, image.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image)
    return path


def test_the_exported_model_equals_the_workdir_for_any_batch_size(source, tmp_path):
    work, _, _ = source
    manifest = inference.export_model(work, tmp_path / "model", "latest", platforms=("cpu", "cuda", "tpu"))
    exported, restored = inference.ExportedModel(tmp_path / "model"), inference.WorkdirModel(work, "latest")
    assert exported.finding == restored.finding == "macular_hole" and exported.step == restored.step == 4
    assert exported.operating_point() == restored.operating_point() == (0.4375, "validation operating point, step 4")
    assert set(manifest["platforms"]) == {"cpu", "cuda", "tpu"}
    assert manifest["preprocessing"]["image_size"] == 32 and manifest["export"]["versions"]["fundax"] == fundax.__version__
    assert manifest["run"] == workdirs.run_info(work)["provenance"]
    images = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)
    for batch in (images[:1], images[:3], images):  # exported without a batch size: any works
        got, want = exported(batch), restored(batch)
        assert got["activation_map"].shape == (len(batch), 2, 2)
        for key in inference.OUTPUTS:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(inference.ExportError, match=r"images must be \(B, 32, 32, 3\), got \(1, 16, 16, 3\)"):
        exported(images[:1, :16, :16])
    with pytest.raises(inference.ExportError, match="exists and is not empty"):
        inference.export_model(work, tmp_path / "model")


def test_a_model_folder_that_is_not_one_is_named(tmp_path):
    with pytest.raises(inference.ExportError, match="has no model.json"):
        inference.ExportedModel(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(inference.ExportError, match="is not a fundax-model version 1 manifest"):
        inference.ExportedModel(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "fundax-model", "format_version": 1}))
    with pytest.raises(inference.ExportError, match="lacks forward.jax_exported"):
        inference.ExportedModel(tmp_path)


def test_export_and_predict_commands_agree_without_the_workdir(source, tmp_path):
    work, _, _ = source
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                                       timeout=300)
    done = run("fundax.export", f"--workdir={work}", "--checkpoint=latest", f"--out={tmp_path / 'model'}",
               "--platforms=cpu")
    assert done.returncode == 0, done.stderr
    assert "exported macular_hole (guided_cnn, checkpoint step 4) for cpu" in done.stdout
    photo = _photograph(tmp_path / "eye.png", 1)
    # The model folder moved elsewhere and the workdir gone from view: predict needs only the folder.
    moved = tmp_path / "elsewhere" / "mh"
    moved.parent.mkdir()
    (tmp_path / "model").rename(moved)
    done = run("fundax.predict", f"--model={moved}", f"--out={tmp_path / 'out'}", str(photo))
    assert done.returncode == 0, done.stderr
    model = inference.WorkdirModel(work, "latest")
    from fundax.data import images

    _, scaled = inference.prepare_photograph(images.load_image(photo), model.image_size)
    probability = float(model(scaled[None])["probability"][0])
    assert f"probability {probability:.4f}" in done.stdout and "threshold 0.4375" in done.stdout
    assert (tmp_path / "out" / "eye_macular_hole.png").exists()
    both = run("fundax.predict", f"--model={moved}", f"--workdir={work}", str(photo))
    assert both.returncode == 2 and "one of --workdir" in both.stderr
