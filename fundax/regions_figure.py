"""Draw the 8 anatomical regions (:mod:`fundax.regions`) over a fundus photograph.

    python -m fundax.regions_figure --demo=OUT.png [--image=PHOTO --disc=X,Y --fovea=X,Y]

Without ``--image`` it draws them over a synthetic right eye (``--disc`` and ``--fovea``
then move its centres). A command of its own, apart from :mod:`fundax.regions`, because
drawing needs :mod:`fundax.pictures` and the synthetic eye (:mod:`fundax.data.synthetic`),
which are built on the regions. Its flags are a set of their own (:data:`FLAGS`), not
absl's global one, so that it can be run in a process that imports other commands.
Exit status as :mod:`fundax.cli` has it: a missing, unknown or malformed flag is a usage
error (2); a photograph that cannot be read or a picture that cannot be written is 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from fundax import cli
from fundax.regions import RegionError

PROGRAM = "python -m fundax.regions_figure"
USAGE = f"""Draw the 8 anatomical regions over a fundus photograph.

usage: {PROGRAM} --demo=OUT.png [--image=PHOTO --disc=X,Y --fovea=X,Y]"""
"""What ``--help`` prints above the flags."""


class _PointParser(flags.ArgumentParser):
    """A point ``x,y`` in pixels of the photograph."""

    syntactic_help = "x,y in pixels"

    def parse(self, argument: str | tuple[float, float]) -> tuple[float, float]:
        if isinstance(argument, tuple):
            return argument
        try:
            x, y = (float(v) for v in argument.split(","))
        except ValueError:
            raise ValueError(f"want x,y in pixels, got {argument!r}") from None
        return x, y


FLAGS = flags.FlagValues()
"""The command's flags, apart from absl's global set: see the module's docstring."""

flags.DEFINE_string("demo", None, "Where to write the picture (PNG).", required=True, flag_values=FLAGS)
flags.DEFINE_string("image", None, "A fundus photograph (default: a synthetic right eye).", flag_values=FLAGS)
flags.DEFINE(_PointParser(), "disc", None, "Optic disc centre x,y in pixels of --image.", flag_values=FLAGS)
flags.DEFINE(_PointParser(), "fovea", None, "Fovea centre x,y in pixels of --image.", flag_values=FLAGS)


def command(argv: list[str]) -> int:
    """The command once :data:`FLAGS` are parsed (``python -m fundax.regions_figure`` runs it): no arguments."""
    cli.no_arguments(argv)
    from fundax import pictures

    if FLAGS.image:
        if not (FLAGS.disc and FLAGS.fovea):
            raise cli.UsageError("--image needs --disc and --fovea")
        from fundax.data import images

        try:
            image = images.load_image(FLAGS.image)
        except (images.ImageError, OSError) as e:
            print(f"error: {cli.one_line(str(e))}", file=sys.stderr)
            return 1
        disc, fovea, title = FLAGS.disc, FLAGS.fovea, FLAGS.image
    else:
        from fundax.data import synthetic

        eye = synthetic.demo_eye()
        image, title = eye.image, "synthetic right eye"
        disc, fovea = FLAGS.disc or eye.disc_xy, FLAGS.fovea or eye.fovea_xy
    try:
        out = pictures.draw_regions(image, disc, fovea, FLAGS.demo, title=title)
    except RegionError as e:  # the centres --disc and --fovea give
        raise cli.UsageError(f"--disc {','.join(map(str, disc))} --fovea {','.join(map(str, fovea))}: {e}") from None
    except OSError as e:
        print(f"error: --demo {FLAGS.demo}: cannot be written ({e.strerror or e})", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """The command as its ``python -m`` form runs it, in this process (:func:`fundax.cli.run_in_process`)."""
    return cli.run_in_process(command, FLAGS, USAGE, PROGRAM, args)


if __name__ == "__main__":
    cli.run(command, flag_values=FLAGS, usage=USAGE)
