#!/usr/bin/env bash
# Create a Cloud TPU VM (one host or a pod slice): on demand, as Spot VMs, or
# through a queued resource that waits for capacity.
set -euo pipefail
ABOUT="Create a Cloud TPU VM for fundax. Without --queued the request fails when the zone has no
capacity; with --queued it waits in Cloud TPU's queue. --autocheckpoint (a preview feature, through
gcloud alpha) has a maintenance event wait until the training has saved. Flags after -- go to
gcloud's create command (e.g. -- --service-account=SA --scopes=cloud-platform)."
EXTRA_USAGE="[-- gcloud flags]"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flag accelerator-type ACCELERATOR_TYPE "" "slice type, e.g. v5litepod-16 or v4-32"
flag runtime-version RUNTIME_VERSION "" "TPU software version (default: the base image for the accelerator)"
switch spot SPOT "Spot VMs: far cheaper, preempted at any time"
switch queued QUEUED "request through a queued resource"
flag queued-resource QUEUED_RESOURCE "" "the queued resource's id (default: --name)"
switch autocheckpoint AUTOCHECKPOINT "before maintenance, SIGTERM the training and wait for its checkpoint (preview: gcloud alpha)"
parse_flags "$@"
require_tpu
require ACCELERATOR_TYPE

# The base images JAX installs onto, per TPU generation.
default_runtime() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default runtime version for $1: pass --runtime-version" ;;
  esac
}
RUNTIME_VERSION=${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME}
create_flags=()
if ((SPOT)); then
  create_flags=(--spot)
fi
# Autocheckpoint is a preview: only gcloud's alpha track has --autocheckpoint-enabled.
gcloud_tpus=(gcloud compute tpus)
if ((AUTOCHECKPOINT)); then
  gcloud_tpus=(gcloud alpha compute tpus)
  create_flags+=(--autocheckpoint-enabled)
fi

if ((QUEUED)); then
  run "${gcloud_tpus[@]}" queued-resources create "$QUEUED_RESOURCE" --node-id="$TPU_NAME" "${SCOPE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    ${create_flags[@]+"${create_flags[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
  note "requested; the TPU VM exists once the state is ACTIVE (WAITING_FOR_RESOURCES until then):" \
    "  $(quote_words gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${SCOPE[@]}" --format='value(state.state)')"
else
  run "${gcloud_tpus[@]}" tpu-vm create "$TPU_NAME" "${SCOPE[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    ${create_flags[@]+"${create_flags[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
  note "the TPU VM is usable once its state is READY:" \
    "  $(quote_words gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SCOPE[@]}" --format='value(state)')"
fi
note "then install fundax and stage the data on every worker: launch/tpu/setup.sh"
