#!/usr/bin/env bash
# Start fundax.train on every worker of a TPU VM, in the background; each worker
# appends to its own log. The same command again resumes from the last checkpoint.
set -euo pipefail
ABOUT="Start python -m fundax.train on every worker of a TPU VM under nohup and return. Every
worker runs the same command; JAX finds the others. Flags after -- go to fundax.train as they
are (e.g. -- --config.guidance_weight=0). Follow a worker with launch/tpu/logs.sh; stop every
worker (a checkpoint is saved) with launch/tpu/stop.sh."
EXTRA_USAGE="[-- fundax.train flags]"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flag finding FINDING "" "the finding to train, e.g. macular_hole"
flag workdir WORKDIR "" "run folder all workers share (a Filestore or gcsfuse mount)"
flag dataset DATASET fundus_findings/manual "TFDS name/config of the prepared dataset"
flag config CONFIG experiments/configs/paper.py "config file, relative to the checkout"
flag log LOG_NAME train "log name: REMOTE_DIR/logs/NAME.log on each worker"
remote_flags
parse_flags "$@"
require_tpu
require FINDING WORKDIR
remote_layout
check_workdir

log="$R_LOGS/$(quote "$LOG_NAME.log")"
train="$R_PYTHON -m fundax.train $(quote --finding="$FINDING") --workdir=$(remote_path "$WORKDIR") --data_dir=$R_DATA \
$(quote_words --dataset="$DATASET" --config="$CONFIG" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
# FUNDAX_DISTRIBUTED=1: join the other workers even where the environment does not list
# them (on TPU VMs JAX reads them from the metadata server).
tpu_ssh all "set -e; if pgrep -f $R_TRAIN_PATTERN >/dev/null; then \
echo \"\$(hostname): fundax.train is already running\" >&2; exit 1; fi; \
mkdir -p $R_LOGS; cd $R_SRC; echo \"--- \$(date -u) launch/tpu/train.sh\" >>$log; \
FUNDAX_DISTRIBUTED=1 nohup $train >>$log 2>&1 </dev/null & echo \"\$(hostname): started, log in $LOG_NAME.log\""
note "started on every worker; follow worker 0 with:" \
  "  $(quote_words launch/tpu/logs.sh --name="$TPU_NAME" --zone="$ZONE")"
