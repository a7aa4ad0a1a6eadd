"""Export a trained run as an inference-only model folder that serves without its workdir.

    python -m fundax.export --workdir=runs/mh [--checkpoint=best] --out=models/mh [--platforms=cpu,cuda,tpu]

What the folder holds: :mod:`fundax.inference`. Use it with
``python -m fundax.predict --model=models/mh photo.jpg``.
"""

from __future__ import annotations

import sys

from absl import flags
from absl import logging as absl_logging

from fundax import cli, inference

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
flags.DEFINE_string("out", None, "The model folder to write (new, or empty).")
flags.DEFINE_list("platforms", list(inference.DEFAULT_PLATFORMS),
                  "Platforms to lower the forward pass for (cpu, cuda, rocm, tpu).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv: list[str]) -> int:
    cli.no_arguments(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        manifest = inference.export_model(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint,
                                          tuple(p.strip() for p in FLAGS.platforms))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    threshold = manifest["operating_point"]["threshold"]
    print(f"exported {manifest['finding']} ({manifest['model']}, checkpoint step {manifest['checkpoint']['step']}) "
          f"for {', '.join(manifest['platforms'])} into {FLAGS.out}; threshold "
          f"{'–' if threshold is None else f'{threshold:.4f}'} ({manifest['operating_point']['origin']})")
    return 0


if __name__ == "__main__":
    cli.run(main)
