"""Prepare the ``fundus_findings`` dataset from a manual directory or the synthetic generator.

    python -m fundax.prepare --source=manual --manual_dir=DIR --data_dir=DATA [--image_size=512]
    python -m fundax.prepare --source=synthetic --num_train=1800 --num_test=200 --data_dir=DATA

Prints a summary: lines read / accepted / rejected, and per split and finding the
present / absent / excluded counts; a split without photographs is left out and named.
Rejected lines, with their reasons, are in ``rejects.jsonl`` beside the prepared files.
``--strict`` makes any rejection fatal. A dataset already in ``--data_dir`` is reused when
it was prepared from the same annotations, photographs and parameters, and refused
otherwise unless ``--overwrite`` is given.
"""

from __future__ import annotations

import sys

from absl import flags

from fundax import cli
from fundax.data import fundus_findings, images, synthetic
from fundax.data.preparation import prepare, summary

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "synthetic", ["manual", "synthetic"], "Where the annotated photographs come from.")
flags.DEFINE_string("manual_dir", None, "With --source=manual: the folder holding annotations.jsonl.")
flags.DEFINE_string("data_dir", "data", "Where prepared datasets live (a TFDS data_dir).")
flags.DEFINE_integer("image_size", 512, "Side of the prepared square photographs, in pixels.")
flags.DEFINE_enum("image_format", "png", list(fundus_findings.IMAGE_FORMATS),
                  "png: lossless, the default; jpeg: quality 95, a fifth of png's size, ~3x cheaper to read; raw: "
                  "lossless uncompressed pixels, the cheapest to read, 3x png's size (experiments/BENCHMARKS.md).")
flags.DEFINE_integer("num_train", 1800, "Synthetic: photographs in the train split (validation included).")
flags.DEFINE_integer("num_test", 200, "Synthetic: photographs in the test split.")
flags.DEFINE_integer("seed", 0, "Synthetic: generator seed.")
flags.DEFINE_string("shortcut_finding", None, "Synthetic: a finding whose label an artifact follows in train only.")
flags.DEFINE_float("shortcut_strength", 0.9, "Synthetic: how often the artifact agrees with the label in train.")
flags.DEFINE_bool("strict", False, "Fail on the first rejected line instead of keeping it aside.")
flags.DEFINE_bool("overwrite", False, "Replace a dataset prepared from other inputs or with other parameters.")
flags.DEFINE_integer("workers", None, "Threads for decoding and resizing (default: all cores).")
flags.DEFINE_bool("locate_missing", False,
                  "Manual: a line without disc and fovea gets them from fundax.landmarks (recorded in metadata.json "
                  "under 'located'); one the locator cannot place with confidence is rejected.")
flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS, "Larger photographs are rejected (decompression bombs).")


def main(argv: list[str]) -> int:
    cli.no_arguments(argv)
    try:
        synthetic_config = None
        if FLAGS.source == "synthetic":
            synthetic_config = synthetic.SyntheticConfig(
                num_train=FLAGS.num_train, num_test=FLAGS.num_test, seed=FLAGS.seed,
                shortcut_finding=FLAGS.shortcut_finding, shortcut_strength=FLAGS.shortcut_strength)
        result = prepare(
            FLAGS.source, FLAGS.data_dir, image_size_px=FLAGS.image_size, manual_dir=FLAGS.manual_dir,
            synthetic_config=synthetic_config, image_format=FLAGS.image_format, strict=FLAGS.strict,
            overwrite=FLAGS.overwrite, workers=FLAGS.workers, max_pixels=FLAGS.max_pixels,
            locate_missing=FLAGS.locate_missing)
    except (ValueError, fundus_findings.PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}", file=sys.stderr)
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    cli.run(main)
