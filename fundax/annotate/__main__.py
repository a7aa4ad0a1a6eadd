"""``python -m fundax.annotate``: the annotation tool's command line (:mod:`fundax.annotate.cli`)."""

from fundax import cli as fundax_cli
from fundax.annotate import cli

if __name__ == "__main__":
    fundax_cli.run(cli.command, flag_values=cli.FLAGS, usage=cli.USAGE)
