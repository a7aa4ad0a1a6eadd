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
  if [[ $1 == /* ]]; then
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
    gs://*)
      die "fundax reads its workdir through the file system, not gs:// URLs: mount the bucket" \
        "(gcsfuse) or a Filestore share on every worker and pass its path (see launch/README.md)"
      ;;
    /*) ;;
    *)
      note "warning: $WORKDIR is under each worker's home directory;" \
        "a pod needs a workdir all workers share (see launch/README.md)" >&2
      ;;
  esac
}
