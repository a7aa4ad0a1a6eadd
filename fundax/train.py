"""Train a regionally guided CNN (or the Inception-v3 baseline) for one finding.

    python -m fundax.train --finding=macular_hole --workdir=runs/mh \\
        [--data_dir=DIR] [--dataset=fundus_findings/manual] \\
        [--config=experiments/configs/paper.py] [--config.guidance_weight=0] \\
        [--config.model=inception_v3 --config.guidance_weight=0]

With the default dataset (``fundus_findings/synthetic``) the synthetic set is
prepared into ``--data_dir`` on first use. Running the same command on the same
workdir resumes where it stopped. A resume with a config that changes what is learnt
(anything but more steps, logging, checkpoint keeping and the loader) is refused with the
differing keys listed, unless ``--allow_config_change`` records the change in the workdir.
"""

from __future__ import annotations

import logging
import os
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from fundax import checkpoints, configs, findings, parallel, reliability

FLAGS = flags.FLAGS
flags.DEFINE_string("finding", None, f"One of: {', '.join(findings.FINDINGS)}.")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and TensorBoard files go.")
flags.DEFINE_string("data_dir", os.environ.get("FUNDAX_DATA_DIR", os.path.expanduser("~/fundax_data")),
                    "Where prepared datasets live (default $FUNDAX_DATA_DIR or ~/fundax_data).")
flags.DEFINE_string("dataset", None, "TFDS name/config, e.g. fundus_findings/manual (default: the config's).")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a run with a config that changes what it learns (refused otherwise); the change is "
                  "recorded in the workdir's config_changes.jsonl.")
configs.define_config_flag("A config file; override keys with --config.KEY=VALUE.")
flags.mark_flags_as_required(["finding", "workdir"])

log = logging.getLogger("fundax")


def prepare_embedded(config, data_dir: str) -> None:
    """The synthetic set is fundax's embedded default: prepare it once, and say so.

    A set already prepared in ``data_dir`` is used when it agrees with the config's
    ``image_size`` and ``synthetic.*`` keys; the generator's other settings are its own.
    """
    from fundax.data import preparation as prepare
    from fundax.data import synthetic

    if jax.process_index() != 0:
        return
    s = config.synthetic
    wanted = {"num_train": s.num_train, "num_test": s.num_test, "seed": s.seed,
              "shortcut_finding": s.shortcut_finding or None, "shortcut_strength": s.shortcut_strength}
    existing = prepare.load_metadata(prepare.dataset_dir(data_dir, "synthetic")).get("prepare")
    if existing is not None:
        have = {k: existing["synthetic"].get(k) for k in wanted} | {"image_size": existing["image_size_px"]}
        if have != wanted | {"image_size": config.image_size}:
            raise ValueError(f"the synthetic set in {data_dir} was prepared with {have}, but the config asks for "
                             f"{wanted | {'image_size': config.image_size}}: use another --data_dir")
        return
    result = prepare.prepare("synthetic", data_dir, image_size_px=config.image_size,
                             synthetic_config=synthetic.SyntheticConfig(**wanted))
    print(f"prepared the synthetic set ({sum(result.split_sizes.values())} photographs at "
          f"{config.image_size} px) into {result.dataset_dir}", flush=True)


def main(argv: list[str]) -> int:
    # Libraries log every backend they probe and every checkpoint file at INFO; show fundax's own lines.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from fundax import loop

    config = FLAGS.config
    try:
        parallel.initialize_from_flags()
        findings.get_finding(FLAGS.finding)
        config.finding = FLAGS.finding
        if FLAGS.dataset:
            config.dataset = FLAGS.dataset
        config.data_dir = os.path.abspath(FLAGS.data_dir)
        # The whole config is checked before anything is prepared, which can take minutes.
        loop.check_config(config, jax.device_count())
        if jax.default_backend() == "cpu":
            hint = "; for a run sized for a CPU use --config=experiments/configs/cpu_demo.py" \
                if config.image_size > 128 else ""
            log.warning("no accelerator found: training on %d CPU device(s)%s", jax.device_count(), hint)
        if config.dataset == "fundus_findings/synthetic":
            prepare_embedded(config, FLAGS.data_dir)
            if jax.process_count() > 1:  # the others wait until process 0 has prepared it
                multihost_utils.sync_global_devices("fundax: synthetic set prepared")
        if config.compilation_cache_dir != "off":
            parallel.enable_compilation_cache(
                config.compilation_cache_dir or os.path.join(os.path.abspath(FLAGS.workdir), "jax_cache"))
        result = loop.train_and_evaluate(config, FLAGS.workdir, config.data_dir,
                                          allow_config_change=FLAGS.allow_config_change)
    except reliability.Preempted as e:
        print(f"{e}; the checkpoint is saved: run the same command again to resume", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to resume from the last checkpoint in "
              f"{FLAGS.workdir}/checkpoints, if there is one", file=sys.stderr)
        return 130
    except (ValueError, OSError, reliability.WorkdirError, reliability.NonFiniteError,
            checkpoints.CheckpointWriteError, checkpoints.NoIntactCheckpointError) as e:
        if os.environ.get("FUNDAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    best, metric = result["best_score"], result["selection_metric"]
    if best is not None and checkpoints.SELECTION_METRICS[metric] == "max":
        best = -best
    print(f"finished at step {result['step']}"
          + (" (early stop)" if result["stopped_early"] else "")
          + (f"; best {metric} {best:.4f} at step {result['best_step']}" if best is not None else ""))
    stuck = result["evals_at_floor"]
    print(f"stall detector: stuck at eq. 2's epsilon floor for the last {stuck} evaluation(s)" if stuck
          else "stall detector: not at eq. 2's epsilon floor at the last evaluation")
    if "val_auroc" in result:
        print(f"last validation AUROC {result['val_auroc']:.4f}")
    print(f"checkpoints: {result['checkpoints']}\nmetrics:     {result['metrics']}\n"
          f"tensorboard: {result['tensorboard']}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=configs.parse_flags)
