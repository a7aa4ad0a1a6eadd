#!/usr/bin/env bash
# Evaluate a run's checkpoint on every worker of a TPU VM, in the foreground.
set -euo pipefail
ABOUT="Run python -m fundax.evaluate on every worker of a TPU VM and wait for it; worker 0
prints the summary, and the results go to WORKDIR/eval. It starts only when every worker has
answered that its TPU is free. Flags after -- go to fundax.evaluate."
EXTRA_USAGE="[-- fundax.evaluate flags]"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flag workdir WORKDIR "" "the training run's folder, shared by all workers"
flag split SPLIT test "train, validation or test"
flag checkpoint CHECKPOINT best "best, latest, or a step number"
remote_flags
tpu_check_flags
parse_flags "$@"
require_tpu
require WORKDIR
remote_layout
check_workdir

on_free_workers "cd $R_SRC && FUNDAX_DISTRIBUTED=1 $R_PYTHON -m fundax.evaluate \
--workdir=$(remote_path "$WORKDIR") $(quote_words --split="$SPLIT" --checkpoint="$CHECKPOINT") --data_dir=$R_DATA \
$(quote_words ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})"
