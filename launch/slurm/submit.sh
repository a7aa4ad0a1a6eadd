#!/usr/bin/env bash
# Submit launch/slurm/train.sbatch with its settings and SLURM resources as flags.
set -euo pipefail
ABOUT="Submit a multi-node GPU training of fundax to SLURM (one task per GPU). Flags after --
go to fundax.train (e.g. -- --config.guidance_weight=0)."
EXTRA_USAGE="[-- fundax.train flags]"
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

flag finding FINDING "" "the finding to train, e.g. macular_hole"
flag workdir WORKDIR "" "run folder on a file system every node shares"
flag data-source DATA_SOURCE "" "prepared dataset to copy to each node: a shared folder or gs://..."
flag data-dir DATA_DIR "" "node-local folder for the dataset (default: /tmp/\$USER/fundax_data)"
flag dataset DATASET fundus_findings/manual "TFDS name/config of the prepared dataset"
flag config CONFIG experiments/configs/paper.py "config file, relative to the checkout"
flag nodes NODES 2 "how many nodes"
flag gpus-per-node GPUS_PER_NODE 8 "GPUs per node, one task each"
flag cpus-per-task CPUS_PER_TASK 8 "CPU cores per task, for decoding photographs"
flag partition PARTITION "" "SLURM partition (default: the cluster's)"
flag account ACCOUNT "" "SLURM account to charge"
flag time TIME_LIMIT 24:00:00 "time limit; fundax saves two minutes before it and the job requeues itself"
flag max-requeues MAX_REQUEUES 20 "how many times the job requeues itself after a stop (0: never)"
flag job-name JOB_NAME "" "job name (default: fundax-FINDING)"
flag python FUNDAX_PYTHON "" "Python with fundax[cuda] on the nodes (default: .venv/bin/python of the checkout)"
parse_flags "$@"
require FINDING WORKDIR
[[ $MAX_REQUEUES =~ ^[0-9]+$ ]] || die "--max-requeues must be a whole number, not '$MAX_REQUEUES'"

# The job's tasks start in the checkout: relative paths given here mean the current folder.
absolute() {
  if [[ $1 == /* || $1 == gs://* || -z $1 ]]; then
    printf '%s' "$1"
  else
    printf '%s/%s' "$PWD" "$1"
  fi
}

settings=(FINDING="$FINDING" WORKDIR="$(absolute "$WORKDIR")" DATASET="$DATASET" CONFIG="$CONFIG"
  FUNDAX_DIR="$REPO_ROOT" MAX_REQUEUES="$MAX_REQUEUES")
for var in DATA_SOURCE DATA_DIR FUNDAX_PYTHON; do
  if [[ -n ${!var} ]]; then
    settings+=("$var=$(absolute "${!var}")")
  fi
done
resources=(--nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE"
  --cpus-per-task="$CPUS_PER_TASK" --time="$TIME_LIMIT" --job-name="${JOB_NAME:-fundax-$FINDING}")
if [[ -n $PARTITION ]]; then
  resources+=(--partition="$PARTITION")
fi
if [[ -n $ACCOUNT ]]; then
  resources+=(--account="$ACCOUNT")
fi
if ((MAX_REQUEUES == 0)); then
  resources+=(--no-requeue)
fi

run env "${settings[@]}" sbatch --export=ALL "${resources[@]}" --chdir="$REPO_ROOT" \
  "$REPO_ROOT/launch/slurm/train.sbatch" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
note "follow it with: squeue --me; the log is $REPO_ROOT/${JOB_NAME:-fundax-$FINDING}-JOBID.out"
