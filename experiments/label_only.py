"""A synthetic manual directory in which a share of one finding's training positives is label-only.

    python experiments/label_only.py --out=DIR --share=0.5 [--finding=macular_hole] [--seed=0] \\
        [--num_train=1800] [--num_test=200] [--height_px=192]

Writes the embedded synthetic set (the ``cpu_demo.py`` sizes by default) as a manual
directory, then, for ``--share`` of the ``train`` lines on which a grader lists ``--finding``
(chosen by ``--seed``), turns every grader's regions of that finding into ``null``: an
image-level label, as an import of RFMiD writes it. The test lines keep their regions, so
AIR is measured on every test positive. Prepare and train it as any manual directory::

    python -m fundax.prepare --source=manual --manual_dir=DIR --data_dir=DATA --image_size=128
    python experiments/recipe_sweep.py --root=ROOT --data_dir=DATA --dataset=fundus_findings/manual \\
        --seeds=0,1,2 --test --variant 'recipe:'

Comparing ``--share=0`` with ``--share=0.5`` (or more) over several seeds measures whether
guided training still learns, and still localises, when many positives carry no regional cue.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from fundax.data import synthetic


def make_label_only(lines: list[dict], finding: str, share: float, seed: int) -> tuple[list[dict], int, int]:
    """``lines`` with ``share`` of the train positives of ``finding`` label-only; (lines, turned, positives)."""
    positives = [k for k, line in enumerate(lines) if line["split"] == "train"
                 and any(finding in entry["findings"] for entry in line["annotations"])]
    chosen = set(np.random.default_rng(seed).permutation(positives)[:round(share * len(positives))].tolist())
    out = []
    for k, line in enumerate(lines):
        if k in chosen:
            line = json.loads(json.dumps(line))
            for entry in line["annotations"]:
                if finding in entry["findings"]:
                    entry["findings"][finding] = None
        out.append(line)
    return out, len(chosen), len(positives)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--share", required=True, type=float)
    parser.add_argument("--finding", default="macular_hole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=1800)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument("--height_px", type=int, default=None)
    args = parser.parse_args()
    if not 0 <= args.share <= 1:
        parser.error(f"--share must lie in [0, 1], got {args.share}")
    sizes = {"num_train": args.num_train, "num_test": args.num_test}
    if args.height_px:
        sizes["height_px"] = args.height_px
    path = synthetic.write_manual_dir(args.out, synthetic.SyntheticConfig(**sizes))
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    lines, turned, positives = make_label_only(lines, args.finding, args.share, args.seed)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"{path}: {turned} of {positives} train positives of {args.finding} made label-only")


if __name__ == "__main__":
    main()
