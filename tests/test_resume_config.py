"""A resume with another config: refused with the differing keys, or recorded when allowed."""

import json

import pytest

import fakes
from fundax import configs, loop
from fundax import workdir as workdirs
from fundax.configs import default


def _saved(**overrides):
    config = default.get_config()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return json.loads(config.to_json_best_effort())


def test_flatten_joins_sections_and_lists_sequences():
    assert configs.flatten({"a": 1, "b": {"c": (1, 2), "d": {"e": "x"}}}) == {"a": 1, "b.c": [1, 2], "b.d.e": "x"}


def test_the_same_config_has_no_changes_even_through_json():
    config = default.get_config()
    assert configs.resume_changes(_saved(), config) == {}


def test_guidance_weight_and_a_nested_key_are_listed_with_both_values():
    config = default.get_config()
    config.guidance_weight = 0.0
    config.guided_cnn.units_per_stage = (1, 1, 1)
    assert configs.resume_changes(_saved(), config) == {
        "guidance_weight": (1.0, 0.0), "guided_cnn.units_per_stage": ([2, 3, 4], [1, 1, 1])}


def test_logging_keeping_and_loader_keys_may_change():
    config = default.get_config()
    config.log_every_steps, config.checkpoints_to_keep, config.loader_threads = 7, 9, 1
    config.data_dir = "/elsewhere"
    assert configs.resume_changes(_saved(), config) == {}


def test_eval_cadence_changes_the_run():
    config = default.get_config()
    config.eval_every_steps = 100
    assert configs.resume_changes(_saved(), config) == {"eval_every_steps": (500, 100)}


@pytest.mark.parametrize("schedule, changed", [("plateau", False), ("constant", False), ("cosine", True)])
def test_more_steps_change_the_run_only_when_the_rate_decays_over_them(schedule, changed):
    config = default.get_config()
    config.lr_schedule, config.num_train_steps = schedule, 30000
    got = configs.resume_changes(_saved(lr_schedule=schedule), config)
    assert got == ({"num_train_steps": (20000, 30000)} if changed else {})


def test_a_key_only_one_side_has_shows_none():
    config = default.get_config()
    saved = _saved()
    saved["old_key"] = 3
    assert configs.resume_changes(saved, config) == {"old_key": (3, None)}


def test_refusal_names_every_key_and_the_way_out(tmp_path):
    config = default.get_config()
    config.guidance_weight, config.seed = 0.0, 4
    with pytest.raises(loop.ConfigChangeError) as e:
        loop.check_resume_config(_saved(), config, tmp_path, 10, allow=False)
    text = str(e.value)
    assert "guidance_weight: 1.0 -> 0.0" in text and "seed: 0 -> 4" in text
    assert str(tmp_path) in text and "step 10" in text and "--allow_config_change" in text
    assert loop.check_resume_config(_saved(), config, tmp_path, 10, allow=True) == {
        "guidance_weight": (1.0, 0.0), "seed": (0, 4)}
    assert loop.check_resume_config(None, config, tmp_path, 10, allow=False) == {}


def test_a_damaged_config_json_is_named(tmp_path):
    from fundax import workdir as workdirs

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(workdirs.NotAWorkdirError, match="config.json is not the JSON fundax writes"):
        workdirs.saved_config(tmp_path)
    assert workdirs.saved_config(tmp_path / "absent") is None
    # Training refuses to resume on top of it, saying so.
    with pytest.raises(loop.ConfigChangeError, match="config.json is not the JSON fundax writes.*to resume"):
        loop.train_and_evaluate(fakes.tiny_config(), tmp_path, tmp_path / "no_data", show_progress=False)


def _tiny(data_dir, steps, guidance_weight=1.0):
    return fakes.tiny_config(data_dir=str(data_dir), checkpoint_every_steps=2, num_train_steps=steps,
                             eval_every_steps=2, guidance_weight=guidance_weight)


def _run(data_dir, workdir, steps, allow=False, guidance_weight=1.0):
    return loop.train_and_evaluate(_tiny(data_dir, steps, guidance_weight), workdir, data_dir, show_progress=False,
                                   allow_config_change=allow)


def test_resume_unguided_is_refused_then_recorded_when_allowed(tiny_dataset, tmp_path):
    _, data_dir = tiny_dataset
    _run(data_dir, tmp_path, 2)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(loop.ConfigChangeError, match=r"step 2 .*guidance_weight: 1.0 -> 0.0"):
        _run(data_dir, tmp_path, 4, guidance_weight=0.0)
    assert (tmp_path / "config.json").read_text() == before  # still says what the run is
    assert not (tmp_path / "config_changes.jsonl").exists()

    assert _run(data_dir, tmp_path, 4, allow=True, guidance_weight=0.0)["step"] == 4
    record = [json.loads(line) for line in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["changes"]) for r in record] == [(2, {"guidance_weight": [1.0, 0.0]})]
    # config.json now says what the run is from here on, so the next resume compares with it.
    saved = workdirs.saved_config(tmp_path)
    assert saved["guidance_weight"] == 0.0 and configs.resume_changes(saved, _tiny(data_dir, 6, 0.0)) == {}
    notes = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(n["step"], n["split"]) for n in notes if n["split"] == "config_change"] == [(2, "config_change")]
