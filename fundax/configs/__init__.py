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
