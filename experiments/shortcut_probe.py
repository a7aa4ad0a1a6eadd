"""Does a trained run read the shortcut stamp? Its outputs on a split, by label and stamp.

    python experiments/shortcut_probe.py WORKDIR [WORKDIR ...] [--split=test] [--checkpoint=best]

For runs trained on the synthetic set with a shortcut (``synthetic.shortcut_finding``),
whose annotation lines say whether each photograph carries the stamp: per group
(finding present or absent × stamp or none) the mean prediction logit, the mean of the
logit map outside the finding's regional cue, and the share of those outside cells below
logit(epsilon), where eq. 2 is flat (log(max(a, epsilon)) no longer changes). Then the AUROC
of the prediction for the stamp among photographs without the finding: 0.5 when the run
ignores the stamp, near 1 when it reads it.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import numpy as np
import tensorflow_datasets as tfds
from sklearn.metrics import roc_auc_score

from fundax.data import pipeline
from fundax.regions import region_mask
from fundax import models
from fundax import parallel
from fundax import workdir as workdirs


def stamps(config, split: str) -> np.ndarray:
    """Whether each record of the split carries the stamp, from its annotation line."""
    builder = tfds.builder(config.dataset, data_dir=config.data_dir)
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return np.array([bool(json.loads(source[i]["line"]).get("shortcut", False)) for i in range(len(source))])


def probe(workdir: str, split: str, which: str) -> dict:
    config = workdirs.load_config(workdir)
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    state, step = workdirs.restore_state(config, workdir, which, mesh)
    model = models.create_model(config).clone(axis_name=None)
    apply = jax.jit(lambda x: model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False))
    source = pipeline.open_split(config.dataset, config.data_dir, split)
    example = pipeline.FindingExample(config.finding, config.min_votes)
    stamped = stamps(config, split)
    floor = math.log(config.epsilon / (1 - config.epsilon))
    rows = []
    for batch in pipeline.eval_batches(source, example, global_batch=config.batch_size):
        out = jax.device_get(apply(batch["image"].astype(np.float32) / 255.0))
        side = out["logit_map"].shape[1]
        for k, index in enumerate(batch["record_index"]):
            if index < 0 or batch["weight"][k] == 0:
                continue
            cue = region_mask(side, side, batch["disc"][k], batch["fovea"][k], int(batch["region_bits"][k]),
                              image_size=(config.image_size, config.image_size))
            outside = out["logit_map"][k][cue == 0]
            rows.append((batch["label"][k], stamped[index], out["logit"][k],
                         outside.mean() if outside.size else np.nan,
                         (outside < floor).mean() if outside.size else np.nan))
    rows = np.array(rows, np.float64)
    groups = {}
    for label in (1, 0):
        for stamp in (1, 0):
            g = rows[(rows[:, 0] == label) & (rows[:, 1] == stamp)]
            groups[f"{'present' if label else 'absent'}, {'stamp' if stamp else 'no stamp'}"] = {
                "n": len(g), "logit": float(g[:, 2].mean()), "outside_logit": float(np.nanmean(g[:, 3])),
                "outside_below_floor": float(np.nanmean(g[:, 4]))}
    absent = rows[rows[:, 0] == 0]
    return {"workdir": workdir, "checkpoint_step": step, "guidance_weight": config.guidance_weight,
            "groups": groups, "stamp_auroc_among_absent": float(roc_auc_score(absent[:, 1], absent[:, 2]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default="best")
    args = parser.parse_args()
    for workdir in args.workdirs:
        result = probe(workdir, args.split, args.checkpoint)
        print(f"{workdir} (step {result['checkpoint_step']}, lambda {result['guidance_weight']}): "
              f"stamp AUROC among absent {result['stamp_auroc_among_absent']:.3f}")
        print(f"  {'group':<22}{'n':>5}{'logit':>9}{'logit map outside cue':>23}{'below floor':>13}")
        for name, g in result["groups"].items():
            print(f"  {name:<22}{g['n']:>5}{g['logit']:>9.2f}{g['outside_logit']:>23.2f}"
                  f"{g['outside_below_floor']:>13.2f}")


if __name__ == "__main__":
    main()
