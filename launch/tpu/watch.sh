#!/usr/bin/env bash
# See a Spot run through its preemptions: wait while it trains; when the slice is preempted,
# delete it, create it again, set it up and resume the training on the same workdir; stop
# once the training has ended.
set -euo pipefail
ABOUT="Watch a training started by train.sh, from the machine that started it. Every --poll-seconds
it reads the slice's state and how worker 0's log ends. When the slice is preempted (a queued
resource SUSPENDED or FAILED, a TPU VM PREEMPTED or TERMINATED) it runs delete.sh, create.sh,
setup.sh and train.sh again, at most --max-restarts times; the run resumes from its last
checkpoint. A training that stopped on SIGTERM (status 143) while its slice stays up is resumed
on the same slice. It returns 0 once the training has exited with status 0, and 1 when it exited
otherwise (1: failed, 2: usage) or the restarts ran out. The scripts it reruns read their other
settings from the environment, as always (e.g. RUNTIME_VERSION, BUCKET, NFS_SHARE or GCSFUSE,
DATASET, CONFIG): export them. Flags after -- go to fundax.train through train.sh. --dry-run
prints one round: the two reads, then what a preemption runs."
EXTRA_USAGE="[-- fundax.train flags]"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

flag accelerator-type ACCELERATOR_TYPE "" "slice type, to create it again, e.g. v5litepod-16"
switch spot SPOT "Spot VMs (create.sh --spot, train.sh --spot)"
switch queued QUEUED "the slice is a queued resource (create.sh --queued)"
flag queued-resource QUEUED_RESOURCE "" "the queued resource's id (default: --name)"
switch autocheckpoint AUTOCHECKPOINT "create.sh --autocheckpoint"
flag finding FINDING "" "the finding being trained, as given to train.sh"
flag workdir WORKDIR "" "the run folder all workers share, as given to train.sh"
flag log LOG_NAME train "log name, as given to train.sh"
flag poll-seconds POLL_SECONDS 60 "seconds between two looks at the slice"
flag max-restarts MAX_RESTARTS 5 "how many times at most to create the slice again"
remote_flags
parse_flags "$@"
require_tpu
require ACCELERATOR_TYPE FINDING WORKDIR
[[ $POLL_SECONDS =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--poll-seconds must be a number of seconds, not '$POLL_SECONDS'"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts must be a whole number, not '$MAX_RESTARTS'"
remote_layout
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME}
# Consecutive rounds that could not read the slice or rerun a script before watch.sh gives up.
MAX_TROUBLE=10
# The scripts it reruns read the same settings from their environment variables.
for var in "${FLAG_VARS[@]}"; do
  export "${var?}"
done

say() {
  printf '%s %s: %s\n' "$(date -u '+%F %T')" "$SCRIPT_NAME" "$*" >&2
}

# Reads run quietly, round after round; under --dry-run they are printed like the rest.
read_quietly() {
  if ((DRY_RUN)); then
    run "$@"
  else
    "$@"
  fi
}

# The slice's state, or GONE when gcloud does not know it.
slice_state() {
  local errors status=0 state
  errors=$(mktemp)
  if ((QUEUED)); then
    state=$(read_quietly gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${SCOPE[@]}" \
      --format='value(state.state)' 2>"$errors") || status=$?
  else
    state=$(read_quietly gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SCOPE[@]}" \
      --format='value(state)' 2>"$errors") || status=$?
  fi
  if ((status)) && grep -q NOT_FOUND "$errors"; then
    state=GONE
    status=0
  fi
  cat "$errors" >&2
  rm -f "$errors"
  printf '%s\n' "$state"
  return "$status"
}

# How worker 0's log ends: "running", the training's exit status, or "none" without a log.
log_ending() {
  local log
  log="$R_LOGS/$(quote "$LOG_NAME.log")"
  # shellcheck disable=SC2016  # awk's $NF
  read_quietly gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${SCOPE[@]}" --worker=0 --command="if test -f $log; \
then awk $(quote '/ launch\/tpu\/train\.sh$/ {s = "running"} / fundax\.train exited with status / {s = $NF} END {print s}') $log; \
else echo none; fi"
}

train_again() {
  "$HERE/train.sh" -- ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
}

recreate() {
  "$HERE/delete.sh" --yes && "$HERE/create.sh"
}

if ((DRY_RUN)); then
  slice_state
  log_ending
  note "when the slice is preempted:"
  recreate
  note "once it is up again:"
  "$HERE/setup.sh"
  train_again
  exit 0
fi

restarts=0 trouble=0 fresh=0 stopped=0
trouble() {
  trouble=$((trouble + 1))
  say "$* ($trouble of $MAX_TROUBLE tries)"
  if ((trouble >= MAX_TROUBLE)); then
    say "giving up"
    exit 1
  fi
}

# Count one more restart, or stop once --max-restarts are spent; $1 says what happened.
spend_restart() {
  if ((restarts >= MAX_RESTARTS)); then
    say "$1 and $restarts restart(s) are spent: giving up"
    exit 1
  fi
  restarts=$((restarts + 1))
}

while :; do
  sleep "$POLL_SECONDS"
  if ! state=$(slice_state); then
    trouble "could not read the slice's state"
    continue
  fi
  case $state in
    ACTIVE | READY)
      if ((fresh)); then
        say "the slice is $state: setting it up and resuming the training"
        if ! "$HERE/setup.sh" || ! train_again; then
          trouble "setup.sh or train.sh failed; trying again"
          continue
        fi
        fresh=0
        stopped=0
      fi
      if ! ending=$(log_ending); then
        trouble "could not read worker 0's log"
        continue
      fi
      case $ending in
        running) ;;
        0)
          say "the training has finished (status 0) after $restarts restart(s)"
          exit 0
          ;;
        143)
          # Stopped on SIGTERM: a preemption takes the slice next, or maintenance leaves it up.
          if ((stopped)); then
            spend_restart "the training stopped again (status 143)"
            say "the training stopped (status 143) and the slice stays up: resuming it there ($restarts of $MAX_RESTARTS)"
            if ! train_again; then
              trouble "train.sh failed; trying again"
              continue
            fi
            stopped=0
          else
            stopped=1
          fi
          ;;
        none)
          say "worker 0 has no $LOG_NAME.log: start the training with train.sh first"
          exit 1
          ;;
        *)
          say "fundax.train exited with status $ending: not restarting; see launch/tpu/logs.sh --lines=200 --no-follow"
          exit 1
          ;;
      esac
      ;;
    SUSPENDED | FAILED | PREEMPTED | TERMINATED)
      spend_restart "the slice is $state"
      say "the slice is $state: creating it again ($restarts of $MAX_RESTARTS)"
      if ! recreate; then
        trouble "could not create the slice again"
        fresh=1
        continue
      fi
      fresh=1
      ;;
    GONE)
      if ! ((fresh)); then
        say "the slice no longer exists (deleted by someone?): stopping"
        exit 1
      fi
      if ! "$HERE/create.sh"; then
        trouble "could not create the slice"
        continue
      fi
      ;;
    *) ;; # on its way: WAITING_FOR_RESOURCES, PROVISIONING, CREATING, SUSPENDING, ...
  esac
  trouble=0
done
