"""Which validation number picks the best checkpoint? Every kept checkpoint of each run, tested.

    python experiments/selection_study.py WORKDIR [WORKDIR ...] [--split=test] [--out=FILE.md]

For runs trained with ``checkpoints_to_keep`` at least their number of evaluations (so every
evaluated checkpoint is kept), each checkpoint is evaluated on the split once (cached in
``WORKDIR/selection/<split>_<step>_metrics.json``). Then each rule — the lowest total
validation loss (the paper's, §3.1), the lowest validation BCE, the highest validation AUROC,
and the latest checkpoint — picks one checkpoint per run among the evaluations after the
guidance warm-up, and the table gives the test AUROC and AIR (TP) of its picks, their means,
and how often each rule's pick was the best of the run's checkpoints by test AUROC.
docs/GUIDANCE.md gives the default chosen from it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from fundax import evaluation
from fundax import workdir as workdirs

RULES = {"val_loss": min, "val_bce": min, "val_auroc": max}


def validation_entries(workdir: pathlib.Path, config) -> dict[int, dict]:
    """The run's validation entries after its guidance ramp (it started where metrics.jsonl says)."""
    entries = [json.loads(line) for line in workdirs.Workdir(workdir).metrics_log.read_text().splitlines() if line.strip()]
    starts = [e["step"] for e in entries if e["split"] == "guidance"]
    start = starts[0] if starts else config.guidance_delay_steps  # no note: no gate, the ramp began there
    ramp_steps = config.guidance_ramp_steps
    return {e["step"]: e for e in entries if e["split"] == "validation" and e["step"] >= start + ramp_steps}


def tested(workdir: pathlib.Path, step: int, split: str) -> dict:
    out = workdir / "selection"
    path = out / f"{split}_{step}_metrics.json"
    if not path.exists():
        result = evaluation.evaluate(workdir, split, str(step), out_dir=out / f"{split}_{step}")
        out.mkdir(exist_ok=True)
        path.write_text(json.dumps(result) + "\n")
    return json.loads(path.read_text())


def study(workdirs: list[pathlib.Path], split: str) -> tuple[list[dict], str]:
    rows = []
    for workdir in workdirs:
        config = workdirs.load_config(workdir)
        entries = validation_entries(workdir, config)
        if not entries:
            continue
        results = {step: tested(workdir, step, split) for step in entries}
        picks = {}
        for rule, choose in RULES.items():
            if all(rule in e for e in entries.values()):  # AUROC is undefined on a one-class split
                picks[rule] = choose(entries, key=lambda step, rule=rule: entries[step][rule])
        picks["latest"] = max(entries)
        best_auroc = max(r["auroc"] for r in results.values() if r["auroc"] is not None)
        row = {"workdir": str(workdir), "finding": config.finding, "model": config.model,
               "guidance_weight": config.guidance_weight, "seed": config.seed}
        for rule, step in picks.items():
            r = results[step]
            row[rule] = {"step": step, "auroc": r["auroc"], "air_tp": r["air_tp"],
                         "best": r["auroc"] is not None and r["auroc"] >= best_auroc}
        rows.append(row)
    rules = [*RULES, "latest"]
    lines = ["| rule | runs | mean test AUROC | mean AIR (TP) | picks the run's best test AUROC |",
             "|---|---|---|---|---|"]
    for rule in rules:
        picked = [row[rule] for row in rows if rule in row]
        aurocs = [p["auroc"] for p in picked if p["auroc"] is not None]
        airs = [p["air_tp"] for p in picked if p["air_tp"] is not None]
        lines.append(f"| {rule} | {len(picked)} | {statistics.fmean(aurocs):.4f} | "
                     f"{statistics.fmean(airs):.3f} | {sum(p['best'] for p in picked)} of {len(picked)} |"
                     if picked else f"| {rule} | 0 | – | – | – |")
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the table and the picks here")
    args = parser.parse_args()
    rows, table = study(args.workdirs, args.split)
    for row in rows:
        picks = ", ".join(f"{rule} step {p['step']} AUROC {p['auroc']:.4f}" for rule, p in row.items()
                          if isinstance(p, dict))
        print(f"{row['workdir']}: {picks}")
    print(table)
    if args.out:
        args.out.write_text(table + "\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
