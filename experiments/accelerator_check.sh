#!/usr/bin/env bash
# The accelerator check: what fundax needs to know of a GPU host, in one command of at most
# 8 minutes that never reaches the network. Results: OUT_DIR/accelerator_check.json and .md.
#
#   bash experiments/accelerator_check.sh OUT_DIR            # on the GPU host
#   bash experiments/accelerator_check.sh --tiny OUT_DIR     # every part at tiny sizes, on a CPU
#
# 1. Installs what the host's Python lacks from the wheelhouse (launch/offline/wheelhouse.sh's
#    output, WHEELHOUSE, default wheelhouse/) into OUT_DIR/site with pip --no-index; skipped
#    when there is no wheelhouse.
# 2. Runs the parts of experiments/accelerator_check.py, in this order:
#    train_bfloat16, train_float32  the train step at the paper config (512 px, batch 32 a device):
#                                   ms/step, img/s, TFLOP/s against the matmul peak measured in the same run
#    torch                          the PyTorch twin, eager and torch.compile, on the same GPU (bfloat16)
#    eval                           evaluation img/s (bfloat16)
#    agreement                      one sharded train step on the GPU against the same step on CPU devices
#    input                          the host input pipeline at 512 px with every core (JPEG and PNG records)
#    training                       python -m fundax.train on synthetic 256-px data: steps/s, and the loss falls
# 3. Writes the report. A part that cannot run (no PyTorch, no GPU) says why in the JSON; one
#    that fails, outlasts its cap or crashes is recorded so, and the check goes on with the next.
#
# Budget on one H200 with 16 host cores, in seconds; each is a cap, at which a part is stopped
# with its figures so far kept (compiling included; 10 timed steps x 3 repeats a figure):
#   install 40 | train_bfloat16 70 | train_float32 60 | torch 90 | eval 25 | agreement 40 |
#   input 40 | training 70  = 435; the rest of the 480 s covers restarts after a stopped part and
#   the report. The whole run stops at 480 s whatever happens; parts not reached say so.
#   The caps are estimates: the seconds each part took, in the JSON, are what to set them by.
#
# Environment: PY (default: the checkout's .venv/bin/python, else python3), WHEELHOUSE, CAP_S
# (stop every part after this many seconds instead of at its own cap).
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET_S=480
RESERVE_S=15  # for the report
INSTALL_CAP_S=40

usage() {
  echo "usage: $0 [--tiny] OUT_DIR" >&2
  exit 2
}
tiny=()
if [[ ${1:-} == --tiny ]]; then
  tiny=(--tiny)
  shift
fi
[[ $# -eq 1 && -n $1 && $1 != -* ]] || usage
started=$(date +%s)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
if [[ -z ${PY:-} ]]; then
  PY=python3
  [[ -x .venv/bin/python ]] && PY=.venv/bin/python
fi
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
check() { "$PY" experiments/accelerator_check.py "$@"; }

# jax takes GPU memory as it needs it: PyTorch and a training process share the GPU with it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false TFDS_DISABLE_PROGRESS_BAR=1 NO_GCE_CHECK=true
# Compiled once, used by every part and process that runs the same program (and by a second run).
export JAX_COMPILATION_CACHE_DIR="$OUT/jax_cache"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

rm -rf "$OUT/parts"
if [[ -f $WHEELHOUSE/requirements.txt ]]; then
  WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
  t0=$(date +%s)
  rc=0
  timeout --kill-after=5 "$INSTALL_CAP_S" launch/offline/install.sh --wheelhouse="$WHEELHOUSE" --python="$PY" \
    --target="$OUT/site" >"$OUT/install.log" 2>&1 || rc=$?
  if ((rc == 0)); then
    export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  check install "$OUT" --wheelhouse="$WHEELHOUSE" --target="$OUT/site" --rc="$rc" \
    --seconds="$(($(date +%s) - t0))" --log="$OUT/install.log"
else
  check install "$OUT" --reason="no wheelhouse at $WHEELHOUSE: using what $PY has"
fi

log="$OUT/accelerator_check.log"
: >"$log"
for _ in 1 2 3 4 5 6 7 8; do
  left=$((started + BUDGET_S - RESERVE_S - $(date +%s)))
  ((left > 5)) || break
  rc=0
  timeout --kill-after=5 "$left" "$PY" experiments/accelerator_check.py run "$OUT" ${tiny[@]+"${tiny[@]}"} \
    ${CAP_S:+--cap-s="$CAP_S"} 2>&1 |
    tee -a "$log" || rc=$?
  ((rc != 0)) || break
  check crashed "$OUT" --rc="$rc" --log="$log" || break
done
check report "$OUT" --started="$started" ${tiny[@]+"${tiny[@]}"}
