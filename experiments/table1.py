"""The paper's Table 1 on any prepared dataset: guided, unguided and Inception-v3, per finding and seed.

    python experiments/table1.py --root=runs/table1 [--data_dir=DATA] [--config=CONFIG_FILE] \\
        [--findings=macular_hole,rnfl_defect] [--seeds=0,1,2] [--variants=guided,unguided,inception_v3] \\
        [--set KEY=VALUE ...] [--set-guided KEY=VALUE ...] [--set-unguided ...] [--set-inception_v3 ...] \\
        [--split=test] [--dry-run]

Every run is ``python -m fundax.train`` then ``python -m fundax.evaluate`` in its own
workdir, ``ROOT/<finding>/<variant>/seed<k>``, each in a fresh process with its output
in ``WORKDIR/table1.log``. The variants are the paper's three columns: ``guided``
(the guided CNN, lambda = 1), ``unguided`` (lambda = 0) and ``inception_v3`` (BCE alone).
A run whose evaluation exists is skipped, and an interrupted one resumes from its
checkpoint, so the same command continues a grid; ``--dry-run`` prints the plan and
which runs are done. At the end the Table 1 report (``fundax.reporting``) over every
evaluated run goes to ``ROOT/table1.md``, ``table1.csv`` and ``delong.csv``: mean ± sd
over seeds, and per seed the paired DeLong test of guided against unguided and
against Inception-v3 on the same test photographs.

Config overrides apply in this order, the later winning: the config file, ``--set``,
the variant's model and lambda, ``--set-<variant>``, the seed. ``{finding}`` in
``--data_dir`` and in override values becomes the run's finding, e.g. one synthetic set
per finding with its own shortcut: ``--data_dir='DATA/{finding}'
--set='synthetic.shortcut_finding={finding}'``.

Exit status as :mod:`fundax.cli` has it: 2 for flags that do not describe a grid (one
line naming the flag and what is wrong), 1 for a run or the report that failed, 130 or
143 when a run was stopped by Ctrl-C or SIGTERM (it saved a checkpoint first).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import flags

from fundax import cli, findings, reporting
from fundax.configs import DEFAULT_CONFIG_FILE
from fundax import workdir as workdirs

REPO = pathlib.Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, str]] = {
    "guided": {"model": "guided_cnn", "guidance_weight": "1.0"},
    "unguided": {"model": "guided_cnn", "guidance_weight": "0.0"},
    "inception_v3": {"model": "inception_v3", "guidance_weight": "0.0"},
}
"""The paper's columns (With, Without, Inception-v3) as config overrides."""

COMPARISONS = (("guided", "unguided"), ("guided", "inception_v3"))
"""The pairs of variants given a DeLong test, per finding and seed."""

# The grid sets these itself; an override of them would silently mislabel runs.
_RESERVED = {"model": "the variant sets it", "seed": "use --seeds", "finding": "use --findings"}


class PlanError(ValueError):
    """Arguments that do not describe a grid."""


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid: a finding, a variant and a seed, and the commands that make it."""

    finding: str
    variant: str
    seed: int
    workdir: pathlib.Path
    data_dir: str
    config_file: str
    overrides: dict[str, str]
    split: str

    @property
    def name(self) -> str:
        return f"{self.finding}/{self.variant}/seed{self.seed}"

    @property
    def log(self) -> pathlib.Path:
        return self.workdir / "table1.log"

    def train_command(self) -> list[str]:
        return [sys.executable, "-m", "fundax.train", f"--finding={self.finding}", f"--workdir={self.workdir}",
                f"--data_dir={self.data_dir}", f"--config={self.config_file}",
                *(f"--config.{key}={value}" for key, value in self.overrides.items())]

    def evaluate_command(self) -> list[str]:
        return [sys.executable, "-m", "fundax.evaluate", f"--workdir={self.workdir}", f"--split={self.split}"]

    def status(self) -> str:
        """``done`` (evaluated), ``resume`` (checkpoints, no evaluation) or ``train``."""
        if workdirs.Workdir(self.workdir).eval_file(self.split, "metrics").exists():
            return "done"
        checkpoints = self.workdir / "checkpoints"
        return "resume" if checkpoints.is_dir() and any(checkpoints.iterdir()) else "train"


def _names(text: str, what: str, valid: tuple[str, ...] | None = None) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise PlanError(f"--{what} is empty")
    for name in names:
        if names.count(name) > 1:
            raise PlanError(f"--{what} lists {name!r} twice")
        if valid is not None and name not in valid:
            raise PlanError(f"unknown {what[:-1]} {name!r}; valid {what} are: {', '.join(valid)}")
    return names


def _seeds(text: str) -> list[int]:
    seeds = _names(text, "seeds")
    if not all(s.isdigit() for s in seeds):
        raise PlanError(f"--seeds takes comma-separated non-negative integers, got {text!r}")
    return [int(s) for s in seeds]


def _overrides(pairs: list[str], flag: str, reserved: dict[str, str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().removeprefix("config.")
        if not sep or not key:
            raise PlanError(f"{flag} takes KEY=VALUE, got {pair!r}")
        if key in reserved:
            raise PlanError(f"{flag} {key}: {reserved[key]}")
        out[key] = value
    return out


PROGRAM = "python experiments/table1.py"

FLAGS = flags.FlagValues()
"""The grid's flags, a set of their own: absl's global one holds other commands' ``--config`` and ``--split``."""

flags.DEFINE_string("root", None, "Where the runs and the report go.", required=True, flag_values=FLAGS)
flags.DEFINE_string("data_dir", os.environ.get("FUNDAX_DATA_DIR", os.path.expanduser("~/fundax_data")),
                    "Prepared datasets, as for fundax.train; {finding} is replaced by the run's finding.",
                    flag_values=FLAGS)
flags.DEFINE_string("config", DEFAULT_CONFIG_FILE, "The config file of every run.", flag_values=FLAGS)
flags.DEFINE_string("findings", ",".join(findings.PAPER_FINDINGS), "Comma-separated findings.", flag_values=FLAGS)
flags.DEFINE_string("variants", ",".join(VARIANTS), "Comma-separated, of: " + ", ".join(VARIANTS) + ".",
                    flag_values=FLAGS)
flags.DEFINE_string("seeds", "0", "Comma-separated config seeds (initialisation, data order).", flag_values=FLAGS)
flags.DEFINE_string("split", "test", "The split evaluated and reported.", flag_values=FLAGS)
flags.DEFINE_multi_string("set", [], "A config override KEY=VALUE, all runs.", flag_values=FLAGS)
for _variant in VARIANTS:
    flags.DEFINE_multi_string(f"set-{_variant}", [], f"A config override KEY=VALUE for the {_variant} runs.",
                              flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "Print the plan and which runs are done; train nothing.", flag_values=FLAGS)
flags.DEFINE_alias("dry-run", "dry_run", flag_values=FLAGS)


def parse_args(args: Sequence[str]) -> flags.FlagValues:
    """:data:`FLAGS` parsed from ``args`` (no program name), from their defaults; a usage error exits 2.

    Positional arguments are a usage error too: the grid takes flags only.
    """
    FLAGS.unparse_flags()
    rest = cli.parse_flags([PROGRAM, *args], FLAGS, __doc__, PROGRAM)
    if len(rest) > 1:
        cli.usage_exit(f"unexpected arguments: {' '.join(rest[1:])}", PROGRAM)
    return FLAGS


def plan(args: flags.FlagValues) -> list[PlannedRun]:
    """Every run of the grid in the order they are trained: per finding, per seed, the variants.

    A grid cut short thus leaves whole comparisons (every variant of a seed) rather than
    one variant's seeds.
    """
    config_file = pathlib.Path(args.config).expanduser().resolve()
    if not config_file.is_file():
        raise PlanError(f"--config {args.config}: no such file")
    names = _names(args.findings, "findings")
    for name in names:
        findings.get_finding(name)
    variants = _names(args.variants, "variants", tuple(VARIANTS))
    seeds = _seeds(args.seeds)
    common = _overrides(args.set, "--set", _RESERVED | {"guidance_weight": "it is the variant's; use --set-VARIANT"})
    per_variant = {v: _overrides(args[f"set-{v}"].value, f"--set-{v}", _RESERVED) for v in VARIANTS}
    root = pathlib.Path(args.root).expanduser().resolve()
    runs = []
    for finding in names:
        data_dir = os.path.abspath(os.path.expanduser(args.data_dir.replace("{finding}", finding)))
        for seed in seeds:
            for variant in variants:
                merged = {**common, **VARIANTS[variant], **per_variant[variant], "seed": str(seed)}
                runs.append(PlannedRun(
                    finding, variant, seed, root / finding / variant / f"seed{seed}", data_dir, str(config_file),
                    {k: v.replace("{finding}", finding) for k, v in merged.items()}, args.split))
    return runs


def describe(runs: list[PlannedRun], root: pathlib.Path) -> str:
    """The plan: a count line, then per run its status and, unless done, its two commands."""
    count = {s: sum(r.status() == s for r in runs) for s in ("done", "resume", "train")}
    axes = [f"{n} {axis}" + "s" * (n != 1) for axis in ("finding", "variant", "seed")
            for n in [len(dict.fromkeys(getattr(r, axis) for r in runs))]]
    lines = [f"Table 1 grid: {' x '.join(axes)} = {len(runs)} runs "
             f"under {root} ({count['done']} done, {count['resume']} to resume, {count['train']} to train)"]
    for run in runs:
        status = run.status()
        lines.append(f"{status:<7} {run.name}")
        if status != "done":
            lines += [f"          {shlex.join(run.train_command())}", f"          {shlex.join(run.evaluate_command())}"]
    return "\n".join(lines)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait(process: subprocess.Popen) -> int:
    """The exit status; Ctrl-C reaches the child too, which saves a checkpoint before it exits.

    ``subprocess.run`` would kill the child a quarter second after a Ctrl-C, before it saved.
    """
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def execute(run: PlannedRun) -> dict[str, float]:
    """Train (or resume) and evaluate one run, each in a fresh process; wall and CPU seconds.

    CPU seconds (user + system, the processes' children included) say what a run costs
    on a machine shared with other work, where wall time says little.
    """
    run.workdir.mkdir(parents=True, exist_ok=True)
    timing = {}
    for part, command in (("train", run.train_command()), ("evaluate", run.evaluate_command())):
        start, cpu = time.perf_counter(), _children_cpu_s()
        with open(run.log, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            returncode = _wait(subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        timing[f"{part}_s"] = round(time.perf_counter() - start, 1)
        timing[f"{part}_cpu_s"] = round(_children_cpu_s() - cpu, 1)
        if returncode:
            raise RunFailed(run, part, returncode)
    (run.workdir / "table1_timing.json").write_text(json.dumps(timing) + "\n")
    return timing


class RunFailed(RuntimeError):
    """A training or evaluation process that exited with an error or a stop signal."""

    def __init__(self, run: PlannedRun, part: str, returncode: int):
        self.run, self.returncode = run, returncode
        lines = run.log.read_text(encoding="utf-8", errors="replace").splitlines()
        tail = next((ln for ln in reversed(lines) if ln.strip()), "")
        super().__init__(f"{run.name}: {part} exited with status {returncode} ({tail.strip()}); "
                         f"the whole output is in {run.log}")


def write_report(runs: list[PlannedRun], root: pathlib.Path, split: str) -> str:
    """Table 1 over the evaluated runs and the DeLong tests per finding and seed, into ``root``."""
    done = {(r.finding, r.variant, r.seed): reporting.load_run(r.workdir, split) for r in runs if r.status() == "done"}
    rows = reporting.table1(list(done.values()))
    pairs = []
    for finding, variant, seed in done:
        for a, b in COMPARISONS:
            if variant == a and (finding, b, seed) in done:
                for pair in reporting.delong_pairs([done[finding, a, seed], done[finding, b, seed]], split):
                    pairs.append({"seed": seed, **pair})
    root.mkdir(parents=True, exist_ok=True)
    reporting.write_csv(root / "table1.csv", rows)
    reporting.write_csv(root / "delong.csv", pairs)

    def num(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = [f"# Table 1 on the {split} split: {len(done)} of {len(runs)} runs evaluated", "",
             "Mean ± sd over seeds where there are several; the best of each row and column group in bold.", "",
             reporting.table1_markdown(rows) if rows else "(no evaluated runs yet)\n",
             "## Paired DeLong tests, per seed, on the photographs both runs scored", "",
             "| Finding | Seed | A | B | Photographs | AUROC A | AUROC B | z | p |", "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {findings.get_finding(p['finding']).display_name} | {p['seed']} | {p['model_a']} | "
                     f"{p['model_b']} | {p['n_examples']} | {num(p['auroc_a'], '.4f')} | {num(p['auroc_b'], '.4f')} | "
                     f"{num(p['z'], '.2f')} | {num(p['p_value'], '.3g')} |")
    localisation = reporting.table1_markdown(rows, reporting.LOCALISATION_COLUMNS) if rows else ""
    if localisation:
        lines += ["", "## On the lesion itself (photographs with lesion masks)", "",
                  "Pointing game: the share of true positives whose activation map peaks on a cell holding lesion "
                  "pixels; activation on the lesion: the share of the map's activation on such cells.", "",
                  localisation.rstrip("\n")]
    lines += ["", "## Per run", "", "The stall detector (fundax.stall) looks at every validation evaluation of "
              "the run: the steps where it found the run stuck at eq. 2's epsilon floor.", "",
              "| Finding | Variant | Seed | AUROC | AIR (TP) | Pointing (TP) | Checkpoint step | Stall detector |",
              "|---|---|---|---|---|---|---|---|"]
    for (finding, variant, seed), run in done.items():
        m = run.metrics
        stalled = stall_steps(run.workdir)
        lines.append(f"| {findings.get_finding(finding).display_name} | {variant} | {seed} | "
                     f"{num(m['auroc'], '.4f')} | {num(m['air_tp'], '.3f')} | {num(m.get('pointing_tp'), '.3f')} | "
                     f"{m['checkpoint_step']} | "
                     + ("never stuck" if not stalled else "stuck at step " + ", ".join(map(str, stalled))) + " |")
    markdown = "\n".join(lines) + "\n"
    (root / "table1.md").write_text(markdown)
    return markdown


def stall_steps(workdir: pathlib.Path) -> list[int]:
    """The validation steps at which the run's stall detector found it stuck, from its metrics.jsonl."""
    path = workdirs.Workdir(workdir).metrics_log
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [e["step"] for e in entries if e.get("split") == "validation" and e.get("stalled")]


def command(argv: list[str]) -> int:
    """The grid once :data:`FLAGS` are parsed: plan it, train and evaluate what is not done, report."""
    cli.no_arguments(argv)
    try:
        runs = plan(FLAGS)
    except (PlanError, findings.UnknownFindingError) as e:
        raise cli.UsageError(str(e)) from None
    root = pathlib.Path(FLAGS.root).expanduser().resolve()
    print(describe(runs, root), flush=True)
    if FLAGS.dry_run:
        return 0
    started = time.perf_counter()
    todo = [r for r in runs if r.status() != "done"]
    for k, run in enumerate(todo, start=1):
        print(f"[{k}/{len(todo)}] {run.name} ({run.status()}) ...", end=" ", flush=True)
        try:
            timing = execute(run)
        except RunFailed as e:
            print(f"\nerror: {e}", file=sys.stderr)
            if e.returncode in (130, 143):  # a stop signal: the run saved a checkpoint
                print("stopped; run the same command again to continue the grid", file=sys.stderr)
                return e.returncode
            return 1
        print(f"trained in {timing['train_s']:.0f} s, evaluated in {timing['evaluate_s']:.0f} s "
              f"({timing['train_cpu_s'] + timing['evaluate_cpu_s']:.0f} CPU s)", flush=True)
    if todo:
        print(f"{len(todo)} runs in {time.perf_counter() - started:.0f} s")
    try:
        print(write_report(runs, root, FLAGS.split))
    except (ValueError, OSError) as e:  # e.g. two runs that disagree on the labels of one photograph
        print(f"error: {cli.one_line(str(e))}", file=sys.stderr)
        return 1
    print(f"wrote {root}/table1.md, table1.csv, delong.csv")
    return 0


def main(args: Sequence[str] | None = None) -> int:
    """The grid as ``python experiments/table1.py ARGS`` runs it, in this process (default: ``sys.argv[1:]``).

    The flags start from their defaults at each call. A usage error prints its line and
    raises ``SystemExit(2)``; ``--help`` prints the help and raises ``SystemExit(0)``;
    otherwise the exit status is returned.
    """
    parse_args(sys.argv[1:] if args is None else args)
    try:
        return command([PROGRAM])
    except cli.UsageError as e:
        cli.usage_exit(str(e), PROGRAM)
        raise  # unreachable: usage_exit exits


if __name__ == "__main__":
    cli.run(command, flag_values=FLAGS, usage=__doc__)
