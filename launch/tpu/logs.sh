#!/usr/bin/env bash
# Show the log of one worker of a TPU VM, and keep following it; or fetch every worker's log.
set -euo pipefail
ABOUT="Tail REMOTE_DIR/logs/NAME.log on one worker (worker 0 is the one that reports validation
metrics). Ctrl-C stops following; the training goes on. With --fetch, copy every worker's log
instead, as NAME-worker-N.log, into a local folder or to a gs:// folder (through a local copy)."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flag worker LOG_WORKER 0 "which worker, 0 to workers-1"
flag lines TAIL_LINES 100 "how many lines of the end to show"
flag log LOG_NAME train "log name, as given to train.sh"
switch no-follow NO_FOLLOW "print the end of the log and return"
flag fetch FETCH "" "copy every worker's log to this folder or gs:// folder"
flag workers WORKERS "" "with --fetch: how many workers (default: asked of gcloud)"
remote_flags
parse_flags "$@"
require_tpu
remote_layout

fetch_logs() {
  local count=$WORKERS folder=$FETCH worker files=()
  if [[ -z $count ]]; then
    if ((DRY_RUN)); then
      run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SCOPE[@]}" --format='value(networkEndpoints.len())'
      note "then one scp per worker; worker 0's:"
      count=1
    else
      count=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SCOPE[@]}" --format='value(networkEndpoints.len())')
    fi
  fi
  [[ $count =~ ^[1-9][0-9]*$ ]] || die "could not tell how many workers $TPU_NAME has ('$count'): pass --workers"
  if [[ $FETCH == gs://* ]]; then
    folder="${TMPDIR:-/tmp}/fundax-logs.$$"
  fi
  run mkdir -p "$folder"
  for ((worker = 0; worker < count; worker++)); do
    files+=("$folder/$LOG_NAME-worker-$worker.log")
    # scp reads a relative remote path from the home directory.
    run gcloud compute tpus tpu-vm scp "$TPU_NAME:$REMOTE_DIR/logs/$LOG_NAME.log" "${files[worker]}" "${SCOPE[@]}" \
      --worker="$worker"
  done
  if [[ $FETCH == gs://* ]]; then
    run gcloud storage cp "${files[@]}" "${FETCH%/}/"
    run rm -rf "$folder"
  fi
}

if [[ -n $FETCH ]]; then
  fetch_logs
  exit 0
fi

log="$R_LOGS/$(quote "$LOG_NAME.log")"
if ((NO_FOLLOW)); then
  tpu_ssh "$LOG_WORKER" "tail -n $(quote "$TAIL_LINES") $log"
else
  # A terminal on the worker, so that Ctrl-C ends the remote tail as well.
  tpu_ssh "$LOG_WORKER" "tail -n $(quote "$TAIL_LINES") -F $log" --ssh-flag=-t
fi
