"""Classify raw fundus photographs with a trained run and draw where the finding is.

    python -m fundax.predict --workdir=runs/mh [--checkpoint=best] [--out=predictions] IMAGE...

Each photograph (JPEG, PNG or TIFF, any size) is prepared exactly as ``prepare``
does — cropped to the fundus, padded to square, resized — then scored. The
decision uses the operating point the evaluation stored (validation split first,
else test). One heatmap overlay PNG per photograph goes to ``--out``.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from fundax import evaluation, pictures, trainer
from fundax.data import images

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's workdir.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
flags.DEFINE_string("out", "predictions", "Where the heatmap overlays go.")
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Larger photographs are refused.")
flags.DEFINE_enum("heatmap", "absolute", ["absolute", "normalised"],
                  "absolute: the activation on its own 0-1 scale, so an absent finding shows cold; normalised: "
                  "each map stretched to its own range, as the paper's Fig. 3 shows positives.")
flags.mark_flag_as_required("workdir")


def stored_operating_point(workdir: pathlib.Path) -> tuple[float | None, str]:
    """The decision threshold of the run's evaluation, and where it came from."""
    for split in ("validation", "test"):
        path = workdir / "eval" / f"{split}_metrics.json"
        if path.exists():
            result = json.loads(path.read_text())
            if result.get("threshold") is not None:
                return float(result["threshold"]), f"{split} operating point, step {result['checkpoint_step']}"
    return None, "no operating point: run python -m fundax.evaluate --split=validation for one"


class Predictor:
    """A restored model that scores one prepared photograph at a time."""

    def __init__(self, workdir: pathlib.Path, which: str):
        self.config = evaluation.load_config(workdir)
        mesh = trainer.make_mesh(jax.devices()[:1])
        state, self.step = evaluation.restore_state(self.config, workdir, which, mesh)
        # Inference uses BatchNorm's running statistics: no device axis to average over.
        model = trainer.create_model(self.config).clone(axis_name=None)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        self._apply = jax.jit(lambda x: model.apply(variables, x, train=False))

    def __call__(self, photograph: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """The prepared image, the probability and the activation map of one photograph."""
        # The geometry is not needed to classify: any disc/fovea pair rides along unused.
        prepared, _, _ = images.preprocess(photograph, (0.0, 0.0), (1.0, 0.0), self.config.image_size)
        out = self._apply(jnp.asarray(prepared[None], jnp.float32) / 255.0)
        return prepared, float(jax.nn.sigmoid(out["logit"][0])), np.asarray(out["activation_map"][0])


def main(argv: list[str]) -> int:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more photographs")
    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    workdir, out_dir = pathlib.Path(FLAGS.workdir), pathlib.Path(FLAGS.out)
    try:
        predictor = Predictor(workdir, FLAGS.checkpoint)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    threshold, origin = stored_operating_point(workdir)
    finding = predictor.config.finding
    print(f"{finding}, checkpoint step {predictor.step}; threshold {threshold if threshold is not None else '–'} "
          f"({origin})")
    failures = 0
    for path in paths:
        try:
            prepared, probability, activation = predictor(images.load_image(path, FLAGS.max_pixels, min_side_px=images.MIN_SIDE_PX))
        except (images.ImageError, ValueError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failures += 1
            continue
        decision: Any = "–" if threshold is None else ("present" if probability >= threshold else "absent")
        verdict = (f"{decision}: p = {probability:.3f} " + (f"{'≥' if decision == 'present' else '<'} threshold "
                   f"{threshold:.3f}" if threshold is not None else "(no threshold)"))
        overlay = pictures.draw_heatmap(prepared, activation, out_dir / f"{pathlib.Path(path).stem}_{finding}.png",
                                        title=f"{finding}: p = {probability:.3f} ({decision})", decision=verdict,
                                        normalise=FLAGS.heatmap == "normalised")
        print(f"{path}: probability {probability:.4f}, {decision}; heatmap {overlay}")
    return 1 if failures else 0


if __name__ == "__main__":
    app.run(main)
