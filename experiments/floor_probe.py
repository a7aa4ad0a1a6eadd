"""How the stuck state begins: the 1x1 conv's weights and the logit map over the first steps.

    python experiments/floor_probe.py --data_dir=DATA [--config=experiments/configs/cpu_demo.py] \\
        [--steps=40] [--every=5] [--paper]

Trains the config's guided CNN in this process on the config's dataset and prints, every
``--every`` steps, the share of the depth-1 1x1 conv's weights below 0, its bias, the mean
logit of the training batch's maps and the share of their cells at or below logit(epsilon).
``--paper`` sets lambda = 1 from the first step (the paper's setting) instead of the config's
warm-up. docs/GUIDANCE.md quotes it.
"""

from __future__ import annotations

import argparse
import math

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags  # noqa: F401  (the config files import ml_collections)

from fundax import trainer
from fundax.data import pipeline
from fundax import models
from fundax import optimizer
from fundax import parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--config", default="experiments/configs/cpu_demo.py")
    parser.add_argument("--finding", default="macular_hole")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--paper", action="store_true")
    args = parser.parse_args()
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.finding = args.finding
    if args.paper:
        config.warmup_steps = config.guidance_delay_steps = config.guidance_ramp_steps = 0
        config.guidance_start_bce = 0.0
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    model, tx = models.create_model(config), optimizer.make_optimizer(config)
    state = trainer.create_train_state(model, tx, config, mesh)
    step_fn = trainer.make_train_step(model, tx, config, mesh)
    example = pipeline.FindingExample(config.finding, config.min_votes)
    source = pipeline.open_split(config.dataset, args.data_dir, "train")
    scored, _ = pipeline.scored_indices(pipeline.open_split(config.dataset, args.data_dir, "train",
                                                            decode_images=False), example)
    data = iter(pipeline.train_dataset(source, example, global_batch=config.batch_size, seed=config.seed,
                                       threads=2, indices=scored))
    sharding = NamedSharding(mesh, P(parallel.AXIS))
    apply = jax.jit(lambda s, x: model.clone(axis_name=None).apply(
        {"params": s.params, "batch_stats": s.batch_stats}, x, train=False)["logit_map"])
    floor = math.log(config.epsilon / (1 - config.epsilon))
    print(f"{'step':>5} {'w<0':>6} {'bias':>7} {'mean logit':>11} {'cells <= floor':>15} {'lambda':>7} {'bce':>6}")
    for step in range(args.steps + 1):
        batch = next(data)
        if step % args.every == 0:
            kernel = np.asarray(state.params["logit_conv"]["kernel"]).ravel()
            bias = float(np.asarray(state.params["logit_conv"]["bias"])[0])
            z = np.asarray(apply(state, batch["image"].astype(np.float32) / 255.0))
            lam = float(trainer.guidance_weight_at(step, int(state.guidance_start), config))
            print(f"{step:>5} {np.mean(kernel < 0):>6.2f} {bias:>7.2f} {z.mean():>11.2f} {np.mean(z <= floor):>15.2f} "
                  f"{lam:>7.2f}", end="")
        state, metrics = step_fn(state, pipeline.to_global(batch, sharding))
        if step % args.every == 0:
            print(f" {float(metrics['bce']):>6.3f}")


if __name__ == "__main__":
    main()
