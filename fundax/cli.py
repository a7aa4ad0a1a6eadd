"""The convention every ``python -m fundax.*`` command follows.

* Flags are absl flags (``--name=value``); the training and benchmark commands add
  ``--config=FILE`` with ``--config.KEY=VALUE`` overrides (ml_collections).
* ``main(argv) -> int`` is run by :func:`run`; ``argv[1:]`` are the positional arguments.
* Exit status: 0 done; 1 the work failed (a bad input file, a refused run: one line
  ``error: ...`` on stderr); 2 a usage error (an unknown or bad flag, a missing
  required flag, wrong positional arguments: one line, then where ``--help`` is);
  128 + N stopped by signal N (130 for Ctrl-C, 143 for SIGTERM).
* A command whose flags must not meet other modules' in absl's global ``FLAGS`` (it is
  imported beside modules that define flags of the same names) defines them on its own
  ``flags.FlagValues()`` and hands that to :func:`run` (``flag_values=``); ``--help``
  then prints the command's usage and those flags.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

USAGE_EXIT = 2
"""The exit status of a usage error, as argparse and most Unix tools have it."""

INTERRUPTED_EXIT = 130
"""The exit status after Ctrl-C (128 + SIGINT), as a shell reports a command stopped by it."""

_HELP = ("--help", "-help", "-h", "--helpshort", "-helpshort", "--helpfull", "-helpfull", "-?")
_REQUIRED = re.compile(r"flag --(\S+)=None: Flag --\1 must have a value other than None\.")


class UsageError(app.UsageError):
    """Wrong flags or arguments: the command prints the message and exits with :data:`USAGE_EXIT`."""

    def __init__(self, message: str):
        super().__init__(message, exitcode=USAGE_EXIT)


def _program() -> str:
    """How the command was started, for the help hint: ``python -m fundax.bench``, ``python experiments/x.py``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    if not sys.argv or not sys.argv[0]:
        return "fundax"
    return f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else sys.argv[0].rsplit("/", 1)[-1]


def one_line(text: str) -> str:
    """``text`` with line breaks and other unprintable characters escaped, so that it stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def usage_exit(message: str, program: str | None = None) -> None:
    """Print a usage error in one line (and where the help is), then exit with :data:`USAGE_EXIT`.

    ``program``: how the hint names the command (default: as this process was started).
    """
    message = one_line(message)
    hint = "" if "--help" in message else f"\n(see {program or _program()} --help)"
    print(f"error: {message}{hint}", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def _flag_error(error: Exception, flag_values: flags.FlagValues) -> str:
    """absl's message for a flag it refused, said as a usage error that names the flag."""
    text = str(error).strip('"')
    required = [_REQUIRED.fullmatch(line) for line in text.splitlines()]
    if required and all(required):  # absl says each missing flag on a line of its own
        names = ", ".join(f"--{match[1]}" for match in required)
        return f"missing required flag{'s' * (len(required) > 1)} {names}"
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"unknown flag --{error.flagname}"
    if text.startswith("flag --"):  # absl's "flag --NAME=VALUE: what is wrong"
        return f"bad {text}"
    return f"bad flag or --config override: {text}" if "config" in flag_values else f"bad flag: {text}"


def help_text(flag_values: flags.FlagValues, usage: str | None = None) -> str:
    """``usage`` (default: the main module's docstring, as absl has it), then the flags and their help."""
    if usage is None:
        usage = getattr(sys.modules.get("__main__"), "__doc__", None) or ""
    listing = flag_values.get_help(prefix="", include_special_flags=False).splitlines()
    # get_help heads each defining module's flags with its name: one command, one list.
    listing = [line for line in listing if line.startswith(" ")]
    return "\n".join([*([usage.strip(), ""] if usage.strip() else []), "flags:", *listing])


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues | None = None,
                usage: str | None = None, program: str | None = None) -> list[str]:
    """absl's parser, with a bad flag or ``--config`` override reported in one line and exit status 2.

    ``flag_values`` (default: absl's global ``FLAGS``) is the set parsed. ``--help`` (or
    ``-h``, ``--helpfull``) prints the usage and the flags (absl's help for the global set,
    the command's own flags with :func:`help_text` for another) and exits 0.
    ``program`` names the command in the hint of a usage error (:func:`usage_exit`).
    """
    flag_values = flags.FLAGS if flag_values is None else flag_values
    arguments = list(argv[1:])
    asked = [arg for arg in arguments[:arguments.index("--") if "--" in arguments else None] if arg in _HELP]
    if asked:  # absl's own help flags exit with status 1: asking for help is no error
        if flag_values is flags.FLAGS:
            app.usage(shorthelp=not any("full" in arg for arg in asked), writeto_stdout=True, exitcode=0)
        print(help_text(flag_values, usage))
        sys.exit(0)
    try:
        return flag_values(list(argv))
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        usage_exit(_flag_error(e, flag_values), program)
        raise  # unreachable: usage_exit exits


def run(main: Callable[[list[str]], int | None], flag_values: flags.FlagValues | None = None,
        usage: str | None = None) -> None:
    """Run ``main`` as a command: parse the flags (:func:`parse_flags`), call it, exit with its status.

    A usage error ``main`` raises is one line and :data:`USAGE_EXIT`; Ctrl-C that ``main``
    does not handle itself is one line and :data:`INTERRUPTED_EXIT`, with no traceback.
    """
    def parse(argv: list[str]) -> list[str]:
        arguments = parse_flags(argv, flag_values, usage)
        if not flags.FLAGS.is_parsed():  # app.run insists; the command's own flags are parsed
            flags.FLAGS.mark_as_parsed()
        return arguments

    def guarded(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except app.UsageError as e:  # absl would print the whole short help; keep it to one line
            usage_exit(str(e))
            return None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT

    app.run(guarded, flags_parser=parse)


def run_in_process(command: Callable[[list[str]], int], flag_values: flags.FlagValues, usage: str, program: str,
                   args: Sequence[str] | None = None) -> int:
    """A command with its own ``flag_values`` as its ``python -m`` form runs it, in this process.

    The flags are reset to their defaults first, so that one call does not see another's.
    A usage error prints its line and raises ``SystemExit(2)``; ``--help`` prints the
    help and raises ``SystemExit(0)``; otherwise ``command``'s exit status is returned.
    """
    flag_values.unparse_flags()
    argv = parse_flags([program, *(sys.argv[1:] if args is None else args)], flag_values, usage, program)
    try:
        return command(argv)
    except UsageError as e:
        usage_exit(str(e), program)
        raise  # unreachable: usage_exit exits


def no_arguments(argv: list[str]) -> None:
    """A command that takes flags only: positional arguments are a usage error."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
