"""Training configs: ``default.py`` holds every key; experiments override a few."""

import pathlib

DEFAULT_CONFIG_FILE = str(pathlib.Path(__file__).with_name("default.py"))
