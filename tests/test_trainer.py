"""The data-parallel train step, the eval step, resume and the loop's schedule."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fakes
from fundax.loop import LoopState
from fundax import checkpoints, stall, trainer
from fundax.data import pipeline
from fundax import configs
from fundax import evaluation
from fundax import metrics
from fundax import models
from fundax import optimizer
from fundax import parallel
from fundax import workdir as workdirs


def _setup(config, num_devices):
    mesh = parallel.make_mesh(jax.devices()[:num_devices])
    model = models.create_model(config)
    tx = optimizer.make_optimizer(config)
    return mesh, model, tx, NamedSharding(mesh, P(parallel.AXIS))


def _train(config, num_devices, source, steps):
    mesh, model, tx, sharding = _setup(config, num_devices)
    state = trainer.create_train_state(model, tx, config, mesh)
    data = iter(pipeline.train_dataset(source, pipeline.FindingExample(config.finding, 2),
                                       global_batch=config.batch_size, seed=config.seed, threads=1))
    step = trainer.make_train_step(model, tx, config, mesh)
    history = []
    for _ in range(steps):
        state, metrics = step(state, pipeline.to_global(next(data), sharding))
        history.append({k: float(v) for k, v in metrics.items()})
    return state, history


def test_one_and_eight_devices_agree():
    assert jax.device_count() >= 8, "tests/conftest.py simulates 8 CPU devices"
    config = fakes.tiny_config()
    source = fakes.records(24)
    state1, history1 = _train(config, 1, source, 3)
    state8, history8 = _train(config, 8, source, 3)
    for h1, h8 in zip(history1, history8):
        for key in ("loss", "bce", "guidance", "grad_norm", "weight"):
            np.testing.assert_allclose(h1[key], h8[key], rtol=2e-5, atol=1e-6)
    flat1, flat8 = jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)
    for a, b in zip(flat1, flat8):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.batch_stats), jax.tree.leaves(state8.batch_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert int(state8.step) == 3


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    config = fakes.tiny_config(learning_rate=0.05)
    config.augment.enabled = False
    mesh, model, tx, sharding = _setup(config, 2)
    state = trainer.create_train_state(model, tx, config, mesh)
    batch = next(iter(pipeline.train_dataset(fakes.records(8), pipeline.FindingExample("macular_hole", 2),
                                             global_batch=8, seed=0, threads=1)))
    step = trainer.make_train_step(model, tx, config, mesh)
    losses = []
    for _ in range(15):
        state, metrics = step(state, pipeline.to_global(batch, sharding))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.1


def test_eval_step_air_terms_and_padding():
    config = fakes.tiny_config()
    mesh, model, tx, sharding = _setup(config, 4)
    state = trainer.create_train_state(model, tx, config, mesh)
    source = fakes.records(13)
    example = pipeline.FindingExample("macular_hole", 2)
    out = evaluation.gather_eval(trainer.make_eval_step(model, config, mesh), state,
                              pipeline.eval_batches(source, example, global_batch=8), sharding)
    # 13 records in 2 padded batches of 8: every record once, the 3 pads dropped.
    np.testing.assert_array_equal(out["record_index"], np.arange(13))
    a = out["activation_map"]
    np.testing.assert_allclose(out["air_total"], a.sum(axis=(1, 2)), rtol=1e-5)
    assert np.all(out["air_inside"] <= out["air_total"] + 1e-5)
    expected = [example(r) for r in source]
    np.testing.assert_array_equal(out["label"], [e["label"] for e in expected])
    np.testing.assert_array_equal(out["weight"], [e["weight"] for e in expected])
    # An absent finding has an empty cue: nothing of its activation is inside.
    absent = (out["label"] == 0) & (out["weight"] > 0)
    assert absent.any() and np.all(out["air_inside"][absent] == 0)


def test_validation_metrics_by_hand():
    outputs = {
        "weight": np.array([1.0, 1.0, 0.0, 1.0]),
        "label": np.array([1.0, 0.0, 1.0, 0.0]),
        "probability": np.array([0.9, 0.2, 0.1, 0.4]),
        "bce": np.array([0.1, 0.2, 5.0, 0.3]),
        "guidance": np.array([-1.0, -2.0, -9.0, -3.0]),
    }
    m = metrics.validation_metrics(outputs, guidance_weight=0.5, epsilon=1e-3)
    assert m["val_bce"] == pytest.approx(0.2)  # (0.1 + 0.2 + 0.3) / 3, the weight-0 row left out
    # One scored positive in three, predicted 0.9: not at the floor.
    assert m["val_floor_bce"] == pytest.approx(stall.floor_bce(1 / 3, 1e-3)) and m["val_positives_at_floor"] == 0
    assert m["val_guidance"] == pytest.approx(-2.0)
    assert m["val_loss"] == pytest.approx(0.2 + 0.5 * -2.0)
    assert m["val_auroc"] == pytest.approx(1.0)  # 0.9 above both negatives
    assert m["val_examples"] == 3


def test_plateau_schedule_and_early_stopping():
    config = fakes.tiny_config(learning_rate=0.1, lr_plateau_patience=2, lr_plateau_factor=0.5,
                               early_stopping_patience=3, min_learning_rate=0.03)
    loop = LoopState("macular_hole", "guided_cnn", 0.1)
    assert loop.observe(10, 1.0, config) and loop.best_step == 10
    assert not loop.observe(20, 1.5, config) and loop.learning_rate == 0.1
    assert not loop.observe(30, 1.2, config) and loop.learning_rate == 0.05  # 2 evals without gain
    assert not loop.stopped_early
    assert not loop.observe(40, 1.1, config) and loop.stopped_early  # 3 evals without gain
    assert loop.observe(50, 0.5, config) and loop.evals_since_best == 0 and loop.best_step == 50
    loop.observe(60, 0.6, config)
    loop.observe(70, 0.6, config)
    assert loop.learning_rate == 0.03  # 0.025 floored at min_learning_rate
    assert LoopState.from_json(loop.as_json(config)) == loop


def test_set_learning_rate_changes_the_update():
    config = fakes.tiny_config()
    mesh, model, tx, _ = _setup(config, 1)
    state = trainer.create_train_state(model, tx, config, mesh)
    assert optimizer.learning_rate(state, config) == pytest.approx(config.learning_rate)
    state = optimizer.set_learning_rate(state, 0.001)
    assert optimizer.learning_rate(state, config) == pytest.approx(0.001)


def test_resume_continues_with_saved_optimizer_and_iterator_state(tmp_path):
    config = fakes.tiny_config()
    source = fakes.records(20)
    example = pipeline.FindingExample("macular_hole", 2)
    mesh, model, tx, sharding = _setup(config, 2)
    step = trainer.make_train_step(model, tx, config, mesh)

    def stream():
        return iter(pipeline.train_dataset(source, example, global_batch=8, seed=3, threads=2))

    state, data = trainer.create_train_state(model, tx, config, mesh), stream()
    for _ in range(5):
        state, _ = step(state, pipeline.to_global(next(data), sharding))
    straight = jax.tree.map(np.asarray, state)

    state, data = trainer.create_train_state(model, tx, config, mesh), stream()
    for _ in range(3):
        state, _ = step(state, pipeline.to_global(next(data), sharding))
    ckpts = workdirs.Workdir(tmp_path).checkpoints(keep=2)
    loop = LoopState("macular_hole", "guided_cnn", 0.01)
    ckpts.save(3, state, loop.as_json(config), data)
    ckpts.close()

    ckpts = workdirs.Workdir(tmp_path).checkpoints(keep=2)
    assert ckpts.latest_step() == 3
    fresh = stream()
    restored, loop_json = ckpts.restore(3, trainer.abstract_train_state(model, tx, config, mesh), fresh)
    ckpts.close()
    assert int(restored.step) == 3 and loop_json["finding"] == "macular_hole"
    momentum = jax.tree.leaves(restored.opt_state)
    assert any(np.abs(np.asarray(m)).sum() > 0 for m in momentum)  # the optimiser state came back
    for _ in range(2):
        restored, _ = step(restored, pipeline.to_global(next(fresh), sharding))
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(jax.tree.map(np.asarray, restored))):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_finding_is_refused(tmp_path):
    loop = {"finding": "drusen", "model_name": "guided_cnn"}
    with pytest.raises(checkpoints.CheckpointMismatchError, match="finding 'drusen', not 'macular_hole'"):
        checkpoints.check_compatible(loop, "macular_hole", "guided_cnn", tmp_path)
    checkpoints.check_compatible(loop, "drusen", "guided_cnn", tmp_path)


def test_best_checkpoint_kept_beside_the_latest(tmp_path):
    config = fakes.tiny_config()
    mesh, model, tx, _ = _setup(config, 1)
    state = trainer.create_train_state(model, tx, config, mesh)
    ckpts = workdirs.Workdir(tmp_path).checkpoints(keep=2)
    loop = LoopState("macular_hole", "guided_cnn", 0.01).as_json(config)
    for step, val_loss in ((1, 0.9), (2, 0.3), (3, 0.5), (4, 0.7), (5, 0.8)):
        ckpts.save(step, state, loop, metrics={"val_loss": val_loss})
    ckpts.manager.wait_until_finished()
    assert sorted(ckpts.all_steps()) == [2, 4, 5]
    assert ckpts.best_step() == 2
    ckpts.close()


def test_bad_schedule_settings_are_named():

    config = fakes.tiny_config(lr_plateau_patience=0, lr_plateau_factor=1.5, min_learning_rate=1.0)
    with pytest.raises(ValueError) as error:
        configs.validate(config, 1)
    message = str(error.value)
    assert "lr_plateau_patience must be at least 1, got 0" in message
    assert "lr_plateau_factor must lie in (0, 1], got 1.5" in message
    assert "min_learning_rate must lie in [0, learning_rate], got 1.0" in message
    configs.validate(fakes.tiny_config(), 8)


def test_guidance_warm_up_schedule_by_hand():
    config = fakes.tiny_config(guidance_weight=1.0, guidance_ramp_steps=4)
    # The ramp starts at step 2: steps 0-1 0; then (step - 2 + 1) / 4 = 1/4, 2/4, 3/4, 1; then 1 to the end.
    got = [float(trainer.guidance_weight_at(s, 2, config)) for s in range(9)]
    assert got == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert [float(trainer.guidance_weight_at(s, -1, config)) for s in range(9)] == [0.0] * 9  # not started
    config = fakes.tiny_config(guidance_weight=0.5, guidance_ramp_steps=0)
    assert [float(trainer.guidance_weight_at(s, 3, config)) for s in range(5)] == [0, 0, 0, 0.5, 0.5]
    paper = fakes.tiny_config(guidance_weight=1.0)  # no delay, no ramp, no gate: lambda = 1 from the first step
    assert trainer.initial_guidance_start(paper) == 0 and float(trainer.guidance_weight_at(0, 0, paper)) == 1.0
    gated = fakes.tiny_config(guidance_start_bce=0.5, guidance_delay_steps=300)
    assert trainer.initial_guidance_start(gated) == -1  # the loop starts it: the gate, or step 300
    assert trainer.initial_guidance_start(fakes.tiny_config(guidance_delay_steps=7)) == 7


def test_learning_rate_warm_up_scales_the_first_updates():
    assert [float(optimizer.warmup_factor(c, 4)) for c in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert float(optimizer.warmup_factor(0, 0)) == 1.0
    # One SGD step (no momentum history yet) moves every parameter by lr * factor * gradient.
    config = fakes.tiny_config(learning_rate=0.1, warmup_steps=4, momentum=0.0)
    tx = optimizer.make_optimizer(config)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    grads = {"w": jnp.array([1.0, 2.0, -1.0])}
    for factor in (0.25, 0.5):
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["w"], -0.1 * factor * grads["w"], rtol=1e-6)


def test_train_step_logs_the_guidance_weight_it_used():
    config = fakes.tiny_config(guidance_weight=1.0, guidance_delay_steps=1, guidance_ramp_steps=2)
    _, history = _train(config, 1, fakes.records(16), 4)
    assert [h["guidance_weight"] for h in history] == [0.0, 0.5, 1.0, 1.0]
    # With lambda 0 the loss is the BCE alone; then BCE + lambda * guidance.
    assert history[0]["loss"] == pytest.approx(history[0]["bce"], abs=1e-6)
    assert history[1]["loss"] == pytest.approx(history[1]["bce"] + 0.5 * history[1]["guidance"], abs=1e-5)


@pytest.mark.parametrize("metric, best", [("val_loss", 2), ("val_bce", 3), ("val_auroc", 4)])
def test_the_selection_metric_picks_the_kept_best_checkpoint(tmp_path, metric, best):
    config = fakes.tiny_config()
    mesh, model, tx, _ = _setup(config, 1)
    state = trainer.create_train_state(model, tx, config, mesh)
    ckpts = workdirs.Workdir(tmp_path).checkpoints(keep=1, selection_metric=metric)
    loop = LoopState("macular_hole", "guided_cnn", 0.01).as_json(config)
    # Lowest total at 2, lowest BCE at 3, highest AUROC at 4; step 5 is the latest.
    for step, (total, bce, auroc) in enumerate([(-4.0, 1.7, 0.5), (-4.6, 0.9, 0.7), (-4.2, 0.2, 0.8),
                                                (-4.1, 0.3, 0.95), (-3.0, 0.9, 0.6)], start=1):
        ckpts.save(step, state, loop, metrics={"val_loss": total, "val_bce": bce, "val_auroc": auroc})
    ckpts.manager.wait_until_finished()
    assert ckpts.best_step() == best and sorted(ckpts.all_steps()) == sorted({best, 5})
    ckpts.close()


def test_selection_score_is_lower_for_better_and_names_an_undefined_metric():
    validation = {"val_loss": -4.2, "val_bce": 0.3, "val_auroc": 0.9}
    assert checkpoints.selection_score(validation, "val_loss") == -4.2
    assert checkpoints.selection_score(validation, "val_auroc") == -0.9
    with pytest.raises(ValueError, match="selection_metric val_auroc is undefined on this validation split"):
        checkpoints.selection_score({"val_loss": 1.0, "val_bce": 1.0}, "val_auroc")
    with pytest.raises(ValueError, match="selection_metric must be one of 'val_loss', 'val_bce', 'val_auroc'"):
        checkpoints.Checkpoints(pathlib.Path("unused"), selection_metric="auroc")


def test_bad_guidance_settings_are_named():

    config = fakes.tiny_config(guidance_start_bce=1.5, guidance_delay_steps=-1, guidance_ramp_steps=9,
                               warmup_steps=-2, guidance_form="l1", selection_metric="auroc", stall_patience=0)
    with pytest.raises(ValueError) as error:
        configs.validate(config, 1)
    message = str(error.value)
    for part in ("guidance_delay_steps must be >= 0, got -1", "warmup_steps must be >= 0, got -2",
                 "guidance_start_bce must lie in [0, 1) (0: no gate), got 1.5",
                 "guidance_form must be one of 'eq2', 'log_complement', got 'l1'",
                 "selection_metric must be one of 'val_loss', 'val_bce', 'val_auroc', got 'auroc'",
                 "stall_patience must be at least 1, got 0",
                 "the guidance warm-up (guidance_delay_steps + guidance_ramp_steps = 8) must end by "
                 "num_train_steps 4"):
        assert part in message, part


# --- label-only positives: BCE as usual, no guidance term -----------------------------------------------------

def _label_only_batch():
    """8 examples of macular_hole: 3 positives with regions, 1 positive with none (an image-level
    label), 4 negatives, one per device of the 8-device mesh."""
    source = fakes.records(8, seed=3)
    index = pipeline.FindingExample("macular_hole", 2).index
    for k, record in enumerate(source):
        positive = k in (0, 2, 5, 6)
        record["votes"] = record["votes"].copy()
        record["region_bits"] = record["region_bits"].copy()
        record["votes"][index] = 3 if positive else 0
        record["region_bits"][index] = 0 if k == 5 or not positive else 0b101
    example = pipeline.FindingExample("macular_hole", 2)
    return {key: np.stack([example(r)[key] for r in source]) for key in example(source[0])}


def test_a_positive_without_regions_is_unguided_and_the_others_keep_their_guidance():
    batch = _label_only_batch()
    assert batch["guided"].tolist() == [1, 1, 1, 1, 1, 0, 1, 1]  # negatives keep theirs: an empty cue
    assert batch["label"].tolist() == [1, 0, 1, 0, 0, 1, 1, 0]


@pytest.mark.parametrize("num_devices", [1, 8])
def test_the_guidance_term_ignores_exactly_the_positives_without_regions(num_devices):
    config = fakes.tiny_config()
    config.augment.enabled = False
    mesh, model, tx, sharding = _setup(config, num_devices)
    state = trainer.create_train_state(model, tx, config, mesh)
    step = trainer.make_train_step(model, tx, config, mesh)
    batch = _label_only_batch()

    def run(changed):
        new_state, out = step(jax.tree.map(jnp.copy, state), pipeline.to_global(changed, sharding))
        return out, jax.tree.leaves(new_state.params)

    base, params = run(batch)
    # Another cue for the unguided positive: nothing changes, not the loss, not one parameter.
    other = dict(batch, region_bits=batch["region_bits"].copy())
    other["region_bits"][5] = 0b11110000
    same, same_params = run(other)
    for key in ("loss", "bce", "guidance"):
        assert float(same[key]) == float(base[key])
    for a, b in zip(params, same_params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Another cue for a guided positive changes the guidance term.
    moved = dict(batch, region_bits=batch["region_bits"].copy())
    moved["region_bits"][2] = 0b11110000
    assert float(run(moved)[0]["guidance"]) != float(base["guidance"])
    # The guidance term is the mean over the 7 guided examples: with every example guided and the
    # unguided one's cue set to the whole map (where eq. 2 is 0), the mean is over 8 with the same sum.
    everywhere = dict(batch, guided=np.ones(8, np.float32), region_bits=batch["region_bits"].copy())
    everywhere["region_bits"][5] = 0xFF
    over_eight, _ = run(everywhere)
    np.testing.assert_allclose(float(over_eight["guidance"]) * 8 / 7, float(base["guidance"]), rtol=1e-5)
    np.testing.assert_allclose(float(over_eight["bce"]), float(base["bce"]), rtol=1e-6)
    # Without the guided key (an older batch), every example is guided.
    del everywhere["guided"]
    np.testing.assert_allclose(float(run(everywhere)[0]["guidance"]), float(over_eight["guidance"]), rtol=1e-6)


def test_validation_guidance_and_air_leave_out_positives_without_regions():
    outputs = {"weight": np.array([1, 1, 1, 1, 0], np.float32), "label": np.array([1, 1, 0, 0, 1], np.float32),
               "guided": np.array([1, 0, 1, 1, 0], np.float32), "bce": np.array([0.5, 0.7, 0.1, 0.3, 9.0]),
               "guidance": np.array([-1.0, -50.0, -2.0, -3.0, -70.0]), "probability": np.array([.9, .8, .2, .1, .5])}
    v = metrics.validation_metrics(outputs, 1.0, 1e-3)
    np.testing.assert_allclose(v["val_bce"], (0.5 + 0.7 + 0.1 + 0.3) / 4)
    np.testing.assert_allclose(v["val_guidance"], (-1.0 - 2.0 - 3.0) / 3)
    assert evaluation.positives_without_cue(outputs).tolist() == [False, True, False, False, True]
