"""Evaluate a saved checkpoint: AUROC, operating point and AIR, as in the paper's Table 1.

    python -m fundax.evaluate --workdir=runs/mh [--split=test] [--checkpoint=best|latest|STEP]

Results go to the workdir's evaluation folder (``eval/``, :mod:`fundax.workdir`):
``<split>_metrics.json``, ``<split>_examples.csv``, ``<split>_outputs.npz`` and ``<split>_roc.png``.
"""

from __future__ import annotations

import logging
import os
import sys

import jax
from absl import flags
from absl import logging as absl_logging

from fundax import cli, parallel
from fundax import workdir as workdirs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("split", "test", "train, validation or test.")
flags.DEFINE_string("checkpoint", "best", "best (by the run's selection_metric), latest, or a step number.")
flags.DEFINE_string("data_dir", None, "Where the prepared dataset is (default: the run's).")
flags.DEFINE_integer("batch_size", None, "Global evaluation batch (default: the run's).")
parallel.define_flags()
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> int:
    cli.no_arguments(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from fundax import evaluation

    try:
        parallel.initialize_from_flags()
        result = evaluation.evaluate(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint, FLAGS.data_dir,
                                     FLAGS.batch_size)
    except (ValueError, OSError) as e:
        if os.environ.get("FUNDAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() != 0:
        return 0
    print(evaluation.summary(result))
    print(f"wrote {workdirs.Workdir(FLAGS.workdir).eval_file(FLAGS.split, 'metrics')} and the examples, "
          "outputs and ROC curve beside it")
    return 0


if __name__ == "__main__":
    cli.run(main)
