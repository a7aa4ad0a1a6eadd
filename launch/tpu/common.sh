# shellcheck shell=bash disable=SC2034  # it sets variables for the scripts that source it
# What the Cloud TPU VM scripts share: which TPU (name, zone, project), gcloud's
# ssh to its workers, and where fundax lives on each worker. Sourced, never run.
#
# On every worker, paths are relative to the home directory unless absolute:
#
#   REMOTE_DIR/src     the fundax checkout          REMOTE_DIR/venv   its Python
#   REMOTE_DIR/logs    train.sh's log, per worker   REMOTE_DIR/bin    uv
#   DATA_DIR           the staged dataset (default REMOTE_DIR/data), on local disk

# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

flag name TPU_NAME "" "name of the TPU VM (a pod slice: all its workers)"
flag zone ZONE "" "zone of the TPU VM, e.g. us-west4-a"
flag project PROJECT "" "Google Cloud project (default: gcloud's configured one)"

remote_flags() {
  flag remote-dir REMOTE_DIR fundax "folder on each worker for the checkout, venv and logs"
  flag data-dir DATA_DIR "" "prepared dataset on each worker's local disk (default: REMOTE_DIR/data)"
}

# gcloud's arguments that pick the TPU's zone and project.
tpu_scope() {
  SCOPE=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    SCOPE+=(--project="$PROJECT")
  fi
}

# A worker path as the worker's shell should read it: relative ones under "$HOME".
remote_path() {
  if [[ $1 == /* || $1 == gs://* ]]; then
    quote "$1"
  else
    # shellcheck disable=SC2016  # $HOME is the worker's
    printf '"$HOME"/%s' "$(quote "$1")"
  fi
}

# The remote layout, as words for a worker's shell; call after parse_flags.
remote_layout() {
  DATA_DIR=${DATA_DIR:-$REMOTE_DIR/data}
  R_SRC=$(remote_path "$REMOTE_DIR/src")
  R_VENV=$(remote_path "$REMOTE_DIR/venv")
  R_LOGS=$(remote_path "$REMOTE_DIR/logs")
  R_BIN=$(remote_path "$REMOTE_DIR/bin")
  R_DATA=$(remote_path "$DATA_DIR")
  R_PYTHON="$R_VENV/bin/python"
  # A training's own process, matched from the start of its command line, so the
  # shell that launches or looks for it never matches itself.
  R_TRAIN_PATTERN="^$R_PYTHON$(quote ' -m fundax[.]train( |$)')"
}

tpu_ssh() {  # WORKER COMMAND [gcloud flags...]
  local worker=$1 command=$2
  shift 2
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${SCOPE[@]}" --worker="$worker" "$@" --command="$command"
}

require_tpu() {
  require TPU_NAME ZONE
  tpu_scope
}

# The shared workdir of a pod run, as fundax can use it today: a path on a file system.
check_workdir() {
  case $WORKDIR in
    gs://*) ;;  # fundax opens it through Cloud Storage's API (launch/README.md)
    /*) ;;
    *)
      note "warning: $WORKDIR is under each worker's home directory;" \
        "a pod needs a workdir all workers share (see launch/README.md)" >&2
      ;;
  esac
}

# What holds a worker's TPU: a training of ours, or any process with one of these files open.
tpu_check_flags() {
  flag tpu-files TPU_FILES "/dev/accel* /dev/vfio/[0-9]* /tmp/libtpu_lockfile" \
    "files (patterns) on each worker whose holders are using its TPU"
}

# Run on every worker by bash -c, with $1 the pattern of a training's command line and the
# rest TPU_FILES: one line per worker, "fundax-check HOST free" or "fundax-check HOST busy: ...",
# and status 1 when busy. Other users' processes are seen where sudo needs no password.
# shellcheck disable=SC2016  # expanded on the workers
TPU_CHECK_LINES=(
  'pattern=$1; shift; busy=()'
  'if pids=$(pgrep -d " " -f "$pattern"); then busy+=("fundax.train is already running (pid $pids)"); fi'
  'names=(); for file; do names+=(-lname "$file" -o); done'
  'as_root=(); if sudo -n true 2>/dev/null; then as_root=(sudo -n); fi'
  'holders=$("${as_root[@]}" find /proc/[0-9]*/fd -maxdepth 1 \( "${names[@]}" -false \) -printf "%h\n" 2>/dev/null | cut -d/ -f3 | sort -un)'
  'for pid in $holders; do busy+=("pid $pid ($(ps -o comm= -p "$pid" || echo gone)) holds the TPU"); done'
  'if ((${#busy[@]})); then (IFS=";"; echo "fundax-check $(hostname) busy: ${busy[*]}"); exit 1; fi'
  'echo "fundax-check $(hostname) free"'
)
TPU_CHECK=$(IFS=";"; printf "%s" "${TPU_CHECK_LINES[*]}")

# Run COMMAND on every worker, only once every worker has answered that its TPU is free: a
# worker that refused while the others started would leave them waiting for it until JAX's
# initialization times out. One ssh round asks them all; under --dry-run both are printed.
on_free_workers() {  # COMMAND
  local files check answers status=0 busy free
  read -r -a files <<<"$TPU_FILES"
  check="bash -c $(quote "$TPU_CHECK") fundax-check $R_TRAIN_PATTERN $(quote_words "${files[@]}")"
  if ((DRY_RUN)); then
    tpu_ssh all "$check"
    tpu_ssh all "$1"
    return
  fi
  answers=$(tpu_ssh all "$check") || status=$?
  busy=$(grep '^fundax-check .* busy: ' <<<"$answers" || true)
  free=$(grep -c '^fundax-check .* free$' <<<"$answers" || true)
  if [[ -n $busy ]]; then
    printf '%s: not started on any worker; these refused:\n' "$SCRIPT_NAME" >&2
    printf '%s\n' "${busy//fundax-check /  }" >&2
    exit 1
  fi
  if ((status || free == 0)); then
    printf '%s: not started: not every worker answered (gcloud exited with status %s)\n' "$SCRIPT_NAME" "$status" >&2
    exit 1
  fi
  printf '%s: the TPU is free on all %s workers\n' "$SCRIPT_NAME" "$free" >&2
  tpu_ssh all "$1"
}
