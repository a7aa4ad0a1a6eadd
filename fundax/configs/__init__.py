"""Training configs: ``default.py`` holds every key; experiments override a few.

A config is checked once, whole, by :func:`validate` before any work, and is locked
(a ``FrozenConfigDict``) from then on: nothing changes it after the check.
"""

import pathlib

DEFAULT_CONFIG_FILE = str(pathlib.Path(__file__).with_name("default.py"))


def define_config_flag(help_text: str) -> None:
    """``--config=FILE`` with ``--config.KEY=VALUE`` overrides; a bad override exits in one line."""
    from absl import flags
    from ml_collections import config_flags

    try:
        # config_flags applies the overrides as the flag is defined, so a bad key or value
        # surfaces here, before absl's own error handling exists.
        config_flags.DEFINE_config_file("config", DEFAULT_CONFIG_FILE, help_text)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        from fundax import cli

        cli.usage_exit(f"bad --config override: {str(e).strip(chr(34))}")


# Keys a resumed run may change: they set what is logged and kept, where the prepared data
# lives and how fast it arrives, not what the network learns. eval_every_steps is not among
# them: validation drives the plateau schedule, early stopping and the checkpoint selected.
RESUME_SAFE_KEYS = frozenset({
    "log_every_steps", "checkpoint_every_steps", "checkpoint_every_minutes", "checkpoints_to_keep", "loader_threads", "prefetch_batches",
    "compilation_cache_dir", "data_dir", "stall_patience",
})


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; sequences become lists, as in config.json."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def resume_changes(saved: dict, config) -> dict[str, tuple]:
    """The keys of ``config`` that differ from the ``saved`` config.json in a way that changes the run.

    Returns ``{key: (saved value, new value)}``; a key missing on one side shows as ``None``.
    ``num_train_steps`` may change unless the learning rate decays over it (``lr_schedule='cosine'``).
    """
    import json

    old, new = flatten(saved), flatten(json.loads(config.to_json_best_effort()))
    safe = set(RESUME_SAFE_KEYS)
    if new.get("lr_schedule") != "cosine" and old.get("lr_schedule") != "cosine":
        safe.add("num_train_steps")
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if key not in safe and old.get(key) != new.get(key)}


class ConfigError(ValueError):
    """A config with values fundax cannot train with; the message names every one."""


def parse_profile_steps(value: str) -> tuple[int, int] | None:
    """``config.profile_steps``: ``"START,N"`` -> (START, N); ``""`` -> None. ValueError names a bad one."""
    if not value:
        return None
    parts = str(value).split(",")
    try:
        start, count = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"profile_steps must be 'START,N' (two integers), got {value!r}") from None
    if start < 0 or count < 1:
        raise ValueError(f"profile_steps {value!r}: START must be >= 0 and N >= 1")
    return start, count


def validate(config, num_devices: int, **values):
    """The config with ``values`` set (``finding=``, ``dataset=``, ``data_dir=``), checked whole and locked.

    Every problem a user can fix by changing one config value is named in one
    :class:`ConfigError`. Returns a ``FrozenConfigDict``; the ``config`` given is left as it was.
    """
    import ml_collections

    from fundax import checkpoints, findings, losses, models, optimizer

    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in values.items():
        if key not in config:
            raise ConfigError(f"bad config: no key {key!r}")
        config[key] = value
    problems = []
    try:
        findings.get_finding(config.finding)
    except (KeyError, ValueError) as e:
        problems.append(str(e).strip('"'))
    if config.batch_size <= 0 or config.batch_size % num_devices:
        problems.append(f"batch_size {config.batch_size} must be a positive multiple of the {num_devices} devices")
    for key in ("num_train_steps", "eval_every_steps", "log_every_steps", "checkpoints_to_keep", "image_size"):
        if config[key] <= 0:
            problems.append(f"{key} must be positive, got {config[key]}")
    if config.eval_every_steps > 0 and config.log_every_steps > 0 and config.eval_every_steps % config.log_every_steps:
        problems.append(f"eval_every_steps {config.eval_every_steps} must be a multiple of "
                        f"log_every_steps {config.log_every_steps}")
    problems += models.check_model(config)
    if config.checkpoint_every_minutes < 0:
        problems.append(f"checkpoint_every_minutes must be >= 0 (0: off), got {config.checkpoint_every_minutes}")
    if config.guidance_weight < 0:
        problems.append(f"guidance_weight must be >= 0, got {config.guidance_weight}")
    for key in ("guidance_delay_steps", "guidance_ramp_steps", "warmup_steps"):
        if config[key] < 0:
            problems.append(f"{key} must be >= 0, got {config[key]}")
    if not 0 <= config.guidance_start_bce < 1:
        problems.append(f"guidance_start_bce must lie in [0, 1) (0: no gate), got {config.guidance_start_bce}")
    if config.guidance_form not in losses.GUIDANCE_FORMS:
        problems.append(f"guidance_form must be one of {', '.join(map(repr, losses.GUIDANCE_FORMS))}, "
                        f"got {config.guidance_form!r}")
    if config.selection_metric not in checkpoints.SELECTION_METRICS:
        problems.append(f"selection_metric must be one of {', '.join(map(repr, checkpoints.SELECTION_METRICS))}, "
                        f"got {config.selection_metric!r}")
    if config.guidance_delay_steps + config.guidance_ramp_steps > config.num_train_steps:
        problems.append(f"the guidance warm-up (guidance_delay_steps + guidance_ramp_steps = "
                        f"{config.guidance_delay_steps + config.guidance_ramp_steps}) must end by num_train_steps "
                        f"{config.num_train_steps}, since only checkpoints after it are selected: shorten it, or set "
                        "both and guidance_start_bce to 0 for lambda = 1 from the first step (the paper's setting)")
    if config.stall_patience < 1:
        problems.append(f"stall_patience must be at least 1, got {config.stall_patience}")
    if config.lr_schedule not in optimizer.LR_SCHEDULES:
        problems.append(f"lr_schedule must be one of {', '.join(map(repr, optimizer.LR_SCHEDULES))}, "
                        f"got {config.lr_schedule!r}")
    if config.learning_rate <= 0:
        problems.append(f"learning_rate must be positive, got {config.learning_rate}")
    if config.lr_plateau_patience < 1:
        problems.append(f"lr_plateau_patience must be at least 1, got {config.lr_plateau_patience}")
    if not 0 < config.lr_plateau_factor <= 1:
        problems.append(f"lr_plateau_factor must lie in (0, 1], got {config.lr_plateau_factor}")
    if not 0 <= config.min_learning_rate <= config.learning_rate:
        problems.append(f"min_learning_rate must lie in [0, learning_rate], got {config.min_learning_rate}")
    try:
        profile = parse_profile_steps(config.profile_steps)
        if profile is not None and profile[0] + profile[1] > config.num_train_steps:
            problems.append(f"profile_steps {config.profile_steps!r} ends after num_train_steps {config.num_train_steps}")
    except ValueError as e:
        problems.append(str(e))
    if config.dataset.endswith("/synthetic"):
        from fundax.data import synthetic

        try:
            synthetic.from_config(config.synthetic)
        except ValueError as e:
            problems.append(f"synthetic: {str(e).strip(chr(34))}")
    if not isinstance(config.init_from, str):
        problems.append(f"init_from must be a workdir or checkpoint path (a string), got {config.init_from!r}")
    if problems:
        raise ConfigError("bad config: " + "; ".join(problems))
    return ml_collections.FrozenConfigDict(config)
