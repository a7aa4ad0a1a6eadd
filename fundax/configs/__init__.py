"""Training configs: ``default.py`` holds every key; experiments override a few."""

import pathlib
import sys

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
        raise SystemExit(f"error: bad --config override: {str(e).strip(chr(34))}") from None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad flag or ``--config`` override reported in one line."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError) as e:
        sys.exit(f"error: bad flag or --config override: {str(e).strip(chr(34))}")


# Keys a resumed run may change: they set what is logged and kept, where the prepared data
# lives and how fast it arrives, not what the network learns. eval_every_steps is not among
# them: validation drives the plateau schedule, early stopping and the checkpoint selected.
RESUME_SAFE_KEYS = frozenset({
    "log_every_steps", "checkpoint_every_steps", "checkpoints_to_keep", "loader_threads", "prefetch_batches",
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
