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
from absl import flags
from absl import logging as absl_logging

from fundax import checkpoints, cli, configs, findings, parallel, reliability, storage
from fundax import workdir as workdirs

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
parallel.define_flags()
flags.mark_flags_as_required(["finding", "workdir"])

log = logging.getLogger("fundax")


def prepare_embedded(config) -> None:
    """The synthetic set is fundax's embedded default: prepare it once into ``config.data_dir``, and say so.

    :func:`fundax.data.preparation.prepare` reuses a set prepared with the same settings and
    refuses one prepared with others, naming what differs.
    """
    import filelock

    from fundax.data import preparation, synthetic

    # Every host prepares its own copy (data_dir is local disk); processes sharing a host take
    # turns, so that one prepares and the others reuse. The generator is seeded: the copies are
    # the same, which the training checks by their fingerprints.
    wanted = synthetic.from_config(config.synthetic)
    os.makedirs(config.data_dir, exist_ok=True)
    with filelock.FileLock(os.path.join(config.data_dir, ".fundax_prepare.lock")):
        result = preparation.prepare("synthetic", config.data_dir, image_size_px=config.image_size,
                                     synthetic_config=wanted, show_progress=False)
    if not result.reused:
        print(f"prepared the synthetic set ({sum(result.split_sizes.values())} photographs at "
              f"{config.image_size} px) into {result.dataset_dir}", flush=True)


def main(argv: list[str]) -> int:
    # Libraries log every backend they probe and every checkpoint file at INFO; show fundax's own lines.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    cli.no_arguments(argv)
    from fundax import loop

    try:
        parallel.initialize_from_flags()
        # The whole config is checked, and locked, before anything is prepared, which can take minutes.
        data_dir = FLAGS.data_dir if storage.is_remote(FLAGS.data_dir) else os.path.abspath(FLAGS.data_dir)
        values = {"finding": FLAGS.finding, "data_dir": data_dir}
        if FLAGS.dataset:
            values["dataset"] = FLAGS.dataset
        config = configs.validate(FLAGS.config, jax.device_count(), **values)
        if jax.default_backend() == "cpu":
            hint = "; for a run sized for a CPU use --config=experiments/configs/cpu_demo.py" \
                if config.image_size > 128 else ""
            log.warning("no accelerator found: training on %d CPU device(s)%s", jax.device_count(), hint)
        # A gs:// data_dir holds a set prepared elsewhere; the loop stages it (fundax.data.staging).
        if config.dataset == "fundus_findings/synthetic" and not storage.is_remote(config.data_dir):
            problem = None
            try:
                prepare_embedded(config)
            except (ValueError, OSError) as e:
                problem = e
            parallel.raise_together(problem, ValueError)
        if config.compilation_cache_dir != "off":
            # A cache the environment names (JAX_COMPILATION_CACHE_DIR) serves every run on the machine.
            parallel.enable_compilation_cache(
                config.compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
                or str(workdirs.Workdir(FLAGS.workdir).compilation_cache))
        result = loop.train_and_evaluate(config, FLAGS.workdir, config.data_dir,
                                          allow_config_change=FLAGS.allow_config_change)
    except configs.ConfigError as e:
        cli.usage_exit(str(e))
    except reliability.Preempted as e:
        print(f"{e}; the checkpoint is saved: run the same command again to resume", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to resume from the last checkpoint in "
              f"{workdirs.Workdir(FLAGS.workdir).checkpoint_dir}, if there is one", file=sys.stderr)
        return 130
    except (ValueError, OSError, reliability.WorkdirError, reliability.NonFiniteError,
            checkpoints.CheckpointWriteError, checkpoints.NoIntactCheckpointError) as e:
        if os.environ.get("FUNDAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    if jax.process_index() != 0:  # one summary for the run, from the process that writes its logs
        return 0
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
          f"tensorboard: {result['tensorboard']}" + (f"\nprofile:     {result['profile']}" if "profile" in result else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)
