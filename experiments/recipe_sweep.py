"""Compare training recipes over several seeds: each variant a set of config overrides.

    python experiments/recipe_sweep.py --root=ROOT --data_dir=DATA --config=experiments/configs/cpu_demo.py \\
        --variant='paper:guidance_ramp_steps=0,warmup_steps=0' \\
        --variant='recipe:' --seeds=0,1,2 [--finding=macular_hole] [--dataset=fundus_findings/manual] \\
        [--set KEY=VALUE] [--test]

Every run is a fresh ``python -m fundax.train`` in ``ROOT/<variant>/seed<k>`` (a finished
run is skipped, an interrupted one resumes). The table gives, per variant and seed, the
validation AUROC and BCE at every evaluation, whether the stall detector fired, and with
``--test`` the test AUROC of the selected checkpoint (``fundax.evaluate``). The recipe in
docs/GUIDANCE.md was chosen with this script; experiments/RESULTS.md has the commands.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

from fundax import workdir as workdirs


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"error: --variant {text!r} needs a name before ':'")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --variant {text!r}: {item!r} is not KEY=VALUE")
        overrides[key] = value
    return name, overrides


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    path = workdirs.Workdir(workdir).metrics_log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(workdir: pathlib.Path, steps: int) -> bool:
    return any(e["split"] == "validation" and e["step"] >= steps for e in read_metrics(workdir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", default="experiments/configs/cpu_demo.py")
    parser.add_argument("--finding", default="macular_hole")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--variant", action="append", required=True, help="NAME:KEY=VALUE,KEY=VALUE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--test", action="store_true", help="evaluate the selected checkpoint on the test split")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()

    common = dict(item.partition("=")[::2] for item in args.set)
    variants = [parse_variant(v) for v in args.variant]
    seeds = [int(s) for s in args.seeds.split(",")]
    root = pathlib.Path(args.root)
    rows = []
    for name, overrides in variants:
        for seed in seeds:
            workdir = root / name / f"seed{seed}"
            config = {**common, **overrides, "seed": str(seed)}
            command = [sys.executable, "-m", "fundax.train", f"--finding={args.finding}", f"--workdir={workdir}",
                       f"--data_dir={args.data_dir}", f"--config={args.config}",
                       *([f"--dataset={args.dataset}"] if args.dataset else []),
                       *(f"--config.{k}={v}" for k, v in config.items())]
            steps = int(config.get("num_train_steps", 0)) or None
            if args.dry_run:
                print(" ".join(command))
                continue
            if steps is None or not finished(workdir, steps):
                print(f"== {name} seed {seed}", flush=True)
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            test = None
            if args.test:
                out = workdirs.Workdir(workdir).eval_file("test", "metrics")
                if not out.exists():
                    subprocess.run([sys.executable, "-m", "fundax.evaluate", f"--workdir={workdir}", "--split=test"],
                                   check=True, stdout=subprocess.DEVNULL)
                test = json.loads(out.read_text())
            rows.append((name, seed, read_metrics(workdir), test))
    if args.dry_run:
        return 0
    for name, seed, entries, test in rows:
        val = [e for e in entries if e["split"] == "validation"]
        trail = " ".join(f"{e['step']}:{e.get('val_auroc', float('nan')):.2f}/{e['val_bce']:.2f}"
                         + ("!" if e.get("stalled") else "") for e in val)
        tail = ""
        if test is not None:
            auroc = test["auroc"]
            tail = (f"  test AUROC {auroc:.4f}" if auroc is not None else "  test AUROC n/a") \
                + f" AIR(TP) {test['air_tp'] if test['air_tp'] is None else round(test['air_tp'], 3)}" \
                + f" step {test['checkpoint_step']}"
        print(f"{name:<24} seed {seed}  {trail}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
