#!/usr/bin/env bash
# Every benchmark of experiments/BENCHMARKS.md in one run, JSON into OUT (default bench_out/).
#   CPU:          bash experiments/benchmarks.sh cpu
#   accelerator:  bash experiments/benchmarks.sh accelerator   (the paper config, float32 and bfloat16)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-cpu}"
OUT="${OUT:-bench_out}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"
bench() { "$PY" -m fundax.bench "$@"; }

case "$MODE" in
  cpu)
    DEMO=(--config=experiments/configs/cpu_demo.py)
    [ -d "$OUT/data128" ] || "$PY" -m fundax.prepare --source=synthetic --num_train=300 --num_test=20 \
      --image_size=128 --data_dir="$OUT/data128"
    bench train "${DEMO[@]}" --steps=10 --repeats=5 --first_step --data_dir="$OUT/data128" --json_out="$OUT/train_cpu.json"
    bench torch "${DEMO[@]}" --steps=10 --repeats=5 --json_out="$OUT/torch_cpu.json"
    bench eval "${DEMO[@]}" --steps=10 --repeats=5 --json_out="$OUT/eval_cpu.json"
    for format in png jpeg; do
      [ -d "$OUT/data512$format" ] || "$PY" -m fundax.prepare --source=synthetic --num_train=400 --num_test=40 \
        --image_size=512 --image_format="$format" --data_dir="$OUT/data512$format"
      bench input --data_dir="$OUT/data512$format" --threads=1,2 --batches=10 --repeats=5 \
        --json_out="$OUT/input_512_$format.json"
    done
    "$PY" experiments/profile_cpu.py --repeats=5 | tee "$OUT/profile_cpu.txt"
    ;;
  accelerator)
    # The paper's batch, 32, on every device: the global batch grows with the device count.
    # The PyTorch comparison runs on one device (as PyTorch does) with a batch of 32.
    DEVICES=$("$PY" -c 'import jax; print(jax.local_device_count())')
    PAPER=(--config=experiments/configs/paper.py)
    for dtype in bfloat16 float32; do
      bench train "${PAPER[@]}" --config.batch_size=$((32 * DEVICES)) --config.dtype="$dtype" --steps=20 \
        --repeats=5 --first_step --json_out="$OUT/train_paper_$dtype.json"
      bench torch "${PAPER[@]}" --config.batch_size=32 --config.dtype="$dtype" --steps=20 --repeats=5 \
        --json_out="$OUT/torch_paper_$dtype.json"
    done
    bench eval "${PAPER[@]}" --config.batch_size=$((32 * DEVICES)) --config.dtype=bfloat16 --steps=20 --repeats=5 \
      --json_out="$OUT/eval_paper.json"
    ;;
  *) echo "usage: $0 cpu|accelerator" >&2; exit 2 ;;
esac
