#!/usr/bin/env bash
# Show the log of one worker of a TPU VM, and keep following it.
set -euo pipefail
ABOUT="Tail REMOTE_DIR/logs/NAME.log on one worker (worker 0 is the one that reports validation
metrics). Ctrl-C stops following; the training goes on."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flag worker LOG_WORKER 0 "which worker, 0 to workers-1"
flag lines TAIL_LINES 100 "how many lines of the end to show"
flag log LOG_NAME train "log name, as given to train.sh"
switch no-follow NO_FOLLOW "print the end of the log and return"
remote_flags
parse_flags "$@"
require_tpu
remote_layout

log="$R_LOGS/$(quote "$LOG_NAME.log")"
if ((NO_FOLLOW)); then
  tpu_ssh "$LOG_WORKER" "tail -n $(quote "$TAIL_LINES") $log"
else
  # A terminal on the worker, so that Ctrl-C ends the remote tail as well.
  tpu_ssh "$LOG_WORKER" "tail -n $(quote "$TAIL_LINES") -F $log" --ssh-flag=-t
fi
