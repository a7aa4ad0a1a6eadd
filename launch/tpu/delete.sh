#!/usr/bin/env bash
# Delete a TPU VM, or the queued resource that holds it (with its TPU VM).
set -euo pipefail
ABOUT="Delete the TPU VM --name, or with --queued the queued resource and the TPU VM it created.
Everything on the workers' disks goes with them; a shared workdir stays."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

switch queued QUEUED "delete the queued resource (and its TPU VM) created by create.sh --queued"
flag queued-resource QUEUED_RESOURCE "" "the queued resource's id (default: --name)"
switch yes YES "do not ask gcloud to confirm"
parse_flags "$@"
require_tpu
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME}
quiet=()
if ((YES)); then
  quiet=(--quiet)
fi

if ((QUEUED)); then
  # --force deletes the TPU VM first; without it an ACTIVE queued resource stays.
  run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${SCOPE[@]}" --force ${quiet[@]+"${quiet[@]}"}
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${SCOPE[@]}" ${quiet[@]+"${quiet[@]}"}
fi
