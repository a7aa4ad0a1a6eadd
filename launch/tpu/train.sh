#!/usr/bin/env bash
# Start fundax.train on every worker of a TPU VM, in the background; each worker
# appends to its own log. The same command again resumes from the last checkpoint.
set -euo pipefail
ABOUT="Start python -m fundax.train on every worker of a TPU VM under nohup and return. Every
worker runs the same command; JAX finds the others. It starts only when every worker has answered
that its TPU is free (no fundax.train, no other process holding it). Flags after -- go to
fundax.train as they are (e.g. -- --config.guidance_weight=0). With --spot the run also saves a
checkpoint every 10 minutes unless -- --config.checkpoint_every_minutes=N says otherwise. Each
worker's log ends with the training's exit status. Follow a worker with launch/tpu/logs.sh; stop
every worker (a checkpoint is saved) with launch/tpu/stop.sh; restart after preemptions with
launch/tpu/watch.sh."
EXTRA_USAGE="[-- fundax.train flags]"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SPOT_CHECKPOINT_MINUTES=10

flag finding FINDING "" "the finding to train, e.g. macular_hole"
flag workdir WORKDIR "" "run folder all workers share (a Filestore or gcsfuse mount)"
flag dataset DATASET fundus_findings/manual "TFDS name/config of the prepared dataset"
flag config CONFIG experiments/configs/paper.py "config file, relative to the checkout"
flag log LOG_NAME train "log name: REMOTE_DIR/logs/NAME.log on each worker"
switch spot SPOT "a Spot slice: save a checkpoint every $SPOT_CHECKPOINT_MINUTES minutes as well (a preemption loses less)"
remote_flags
tpu_check_flags
parse_flags "$@"
require_tpu
require FINDING WORKDIR
remote_layout
check_workdir

log="$R_LOGS/$(quote "$LOG_NAME.log")"
train_args=(--dataset="$DATASET" --config="$CONFIG")
if ((SPOT)); then
  given=0
  for arg in ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}; do
    if [[ $arg == --config.checkpoint_every_minutes || $arg == --config.checkpoint_every_minutes=* ]]; then
      given=1
    fi
  done
  if ((!given)); then
    train_args+=(--config.checkpoint_every_minutes="$SPOT_CHECKPOINT_MINUTES")
  fi
fi
train="$R_PYTHON -m fundax.train $(quote --finding="$FINDING") --workdir=$(remote_path "$WORKDIR") --data_dir=$R_DATA \
$(quote_words "${train_args[@]}" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
# The log's last line tells how the training ended (watch.sh reads it).
# shellcheck disable=SC2016  # expanded on the workers
ended='status=0; "$@" || status=$?; echo "--- $(date -u) fundax.train exited with status $status"; exit "$status"'
# FUNDAX_DISTRIBUTED=1: join the other workers even where the environment does not list
# them (on TPU VMs JAX reads them from the metadata server).
on_free_workers "mkdir -p $R_LOGS; cd $R_SRC; echo \"--- \$(date -u) launch/tpu/train.sh\" >>$log; \
FUNDAX_DISTRIBUTED=1 nohup bash -c $(quote "$ended") fundax.train $train >>$log 2>&1 </dev/null \
& echo \"\$(hostname): started, log in $LOG_NAME.log\""
note "started on every worker; follow worker 0 with:" \
  "  $(quote_words launch/tpu/logs.sh --name="$TPU_NAME" --zone="$ZONE")"
