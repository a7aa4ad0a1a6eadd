#!/usr/bin/env bash
# Ask fundax.train on every worker of a TPU VM to stop, as a preemption would.
set -euo pipefail
ABOUT="Send SIGTERM to fundax.train on every worker: the run finishes its step, saves a checkpoint
and exits with status 143. launch/tpu/train.sh with the same flags resumes it."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

remote_flags
parse_flags "$@"
require_tpu
remote_layout

tpu_ssh all "pkill -TERM -f $R_TRAIN_PATTERN || echo \"\$(hostname): no fundax.train running\""
