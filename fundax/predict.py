"""Classify raw fundus photographs with a trained model and draw where the finding is.

    python -m fundax.predict --workdir=runs/mh [--checkpoint=best] [--out=predictions] IMAGE...
    python -m fundax.predict --model=models/mh [--out=predictions] IMAGE...

``--workdir`` restores a checkpoint of a run; ``--model`` loads a folder written by
``python -m fundax.export``, on a machine that never had the workdir. Each photograph
(JPEG, PNG or TIFF, any size) is prepared exactly as ``prepare`` does — cropped to the
fundus, padded to square, resized — then scored. The decision uses the operating point
the evaluation stored (validation split first, else test), which an export carries. One
heatmap overlay PNG per photograph goes to ``--out``.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import Any

from absl import flags
from absl import logging as absl_logging

from fundax import cli, pictures
from fundax.data import images

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir (or use --model).")
flags.DEFINE_string("model", None, "A model folder written by python -m fundax.export (or use --workdir).")
flags.DEFINE_string("checkpoint", "best", "With --workdir: best, latest, or a step number.")
flags.DEFINE_string("out", "predictions", "Where the heatmap overlays go.")
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Larger photographs are refused.")
flags.DEFINE_enum("heatmap", "absolute", ["absolute", "normalised"],
                  "absolute: the activation on its own 0-1 scale, so an absent finding shows cold; normalised: "
                  "each map stretched to its own range, as the paper's Fig. 3 shows positives.")


def main(argv: list[str]) -> int:
    paths = argv[1:]
    if not paths:
        raise cli.UsageError("give one or more photographs")
    if (FLAGS.workdir is None) == (FLAGS.model is None):
        raise cli.UsageError("give one of --workdir (a training run) or --model (an exported model folder)")
    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from fundax import inference

    try:
        model = (inference.ExportedModel(FLAGS.model) if FLAGS.model
                 else inference.WorkdirModel(FLAGS.workdir, FLAGS.checkpoint))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    threshold, origin = model.operating_point()
    finding, out_dir = model.finding, pathlib.Path(FLAGS.out)
    print(f"{finding}, checkpoint step {model.step}; threshold {threshold if threshold is not None else '–'} "
          f"({origin})")
    failures = 0
    for path in paths:
        try:
            photograph = images.load_image(path, FLAGS.max_pixels, min_side_px=images.MIN_SIDE_PX)
            prepared, scaled = inference.prepare_photograph(photograph, model.image_size)
        except (images.ImageError, ValueError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failures += 1
            continue
        out = model(scaled[None])
        probability, activation = float(out["probability"][0]), out["activation_map"][0]
        decision: Any = "–" if threshold is None else ("present" if probability >= threshold else "absent")
        verdict = (f"{decision}: p = {probability:.3f} " + (f"{'≥' if decision == 'present' else '<'} threshold "
                   f"{threshold:.3f}" if threshold is not None else "(no threshold)"))
        overlay = pictures.draw_heatmap(prepared, activation, out_dir / f"{pathlib.Path(path).stem}_{finding}.png",
                                        title=f"{finding}: p = {probability:.3f} ({decision})", decision=verdict,
                                        normalise=FLAGS.heatmap == "normalised")
        print(f"{path}: probability {probability:.4f}, {decision}; heatmap {overlay}")
    return 1 if failures else 0


if __name__ == "__main__":
    cli.run(main)
