"""Import a public dataset of fundus photographs as a manual directory.

    python -m fundax.ingest FORMAT SRC --out MANUAL_DIR [--min_lesion_share=0.05] [--annotator=NAME]

FORMAT is one of :data:`fundax.ingest.IMPORTERS` (``adam``, ``aptos``, ``eyepacs``, ``idrid``,
``messidor``, ``messidor2``, ``odir``, ``refuge``, ``rfmid``); SRC the dataset as downloaded
and unpacked (``docs/DATASETS.md``). Prints what was written, skipped and left out. Exit
status as :mod:`fundax.cli` has it: 0 done; 1 a source that cannot be imported (one line
naming the file and row); 2 a usage error.
"""

from __future__ import annotations

import sys

from absl import flags

from fundax import cli, ingest
from fundax.data import images
from fundax.ingest import manual

USAGE = """Import a public dataset of fundus photographs as a manual directory (docs/DATASETS.md).
usage: python -m fundax.ingest FORMAT SRC --out MANUAL_DIR [--min_lesion_share=0.05] [--annotator=NAME]
FORMAT: """ + ", ".join(sorted(ingest.IMPORTERS))

FLAGS = flags.FlagValues()
flags.DEFINE_string("out", None, "The manual directory to create (new, or an empty folder).", required=True,
                    flag_values=FLAGS)
flags.DEFINE_float("min_lesion_share", ingest.DEFAULT_MIN_SHARE,
                   "A region is in a lesion's cue when it holds at least this share of the lesion's pixels.",
                   lower_bound=0.0, upper_bound=1.0, flag_values=FLAGS)
flags.DEFINE_string("annotator", None, "The grader id written on every line (default: FORMAT).", flag_values=FLAGS)


def command(argv: list[str]) -> int:
    if len(argv) != 3:
        raise cli.UsageError(f"want FORMAT and SRC, got {len(argv) - 1} argument(s)")
    format_name, src = argv[1:]
    if format_name not in ingest.IMPORTERS:
        raise cli.UsageError(f"unknown FORMAT {format_name!r}; known: {', '.join(sorted(ingest.IMPORTERS))}")
    if FLAGS.min_lesion_share <= 0:
        raise cli.UsageError(f"--min_lesion_share must be above 0, got {FLAGS.min_lesion_share}")
    annotator = format_name if FLAGS.annotator is None else FLAGS.annotator
    if not annotator.strip():
        raise cli.UsageError("--annotator must not be empty")
    try:
        summary = ingest.ingest(format_name, src, FLAGS.out, FLAGS.min_lesion_share, annotator)
    except (manual.IngestError, images.ImageError) as e:
        print(f"error: {cli.one_line(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {cli.one_line(f'{e.filename}: {e.strerror}' if e.filename else str(e))}", file=sys.stderr)
        return 1
    print(summary.text(FLAGS.out))
    return 0


if __name__ == "__main__":
    cli.run(command, flag_values=FLAGS, usage=USAGE)
