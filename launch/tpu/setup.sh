#!/usr/bin/env bash
# Make every worker of a TPU VM ready to train: fundax and its Python, the shared
# workdir mounted, the prepared dataset on local disk. Safe to run again.
set -euo pipefail
ABOUT="Install fundax on every worker of a TPU VM, from a copy of this checkout (its tracked and
untracked, not ignored, files) or from --git-url, into a venv with fundax[tpu]; optionally mount
a Filestore/NFS share for the workdir; copy the prepared dataset from --bucket to local disk.
Each run replaces the code on the workers and keeps their venv."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

remote_flags
flag git-url FUNDAX_GIT_URL "" "install from this git repository instead of copying the checkout"
flag git-ref FUNDAX_GIT_REF "" "with --git-url: branch, tag or commit (default: the default branch)"
flag python-version PYTHON_VERSION 3.12 "Python of the workers' venv (uv fetches it if the image lacks it)"
flag bucket BUCKET "" "Cloud Storage bucket holding the prepared dataset, gs://BUCKET or BUCKET"
flag bucket-path BUCKET_PATH data "folder of the prepared dataset (a TFDS data_dir) in the bucket"
flag nfs NFS_SHARE "" "Filestore/NFS share to mount for the workdir, SERVER:/SHARE"
flag mount-point MOUNT_POINT /mnt/fundax "where to mount --nfs on every worker"
parse_flags "$@"
require_tpu
remote_layout

all_workers() {
  tpu_ssh all "$1"
}

if [[ -n $FUNDAX_GIT_URL ]]; then
  checkout="git clone --quiet $(quote "$FUNDAX_GIT_URL") $R_SRC"
  if [[ -n $FUNDAX_GIT_REF ]]; then
    checkout+=" && git -C $R_SRC checkout --quiet $(quote "$FUNDAX_GIT_REF")"
  fi
  all_workers "rm -rf $R_SRC && $checkout"
else
  [[ -e $REPO_ROOT/.git ]] || die "$REPO_ROOT is not a git checkout: pass --git-url"
  tarball="${TMPDIR:-/tmp}/fundax-src.$$.tar.gz"
  trap 'rm -f "$tarball"' EXIT
  # Deleted but still tracked files are skipped (tar warns about them).
  run bash -c "set -o pipefail; $(quote_words git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard) \
| $(quote_words tar -C "$REPO_ROOT" --null --files-from=- --ignore-failed-read -czf "$tarball")"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:fundax-src.tar.gz" "${SCOPE[@]}" --worker=all
  all_workers "rm -rf $R_SRC && mkdir -p $R_SRC && tar -xzf fundax-src.tar.gz -C $R_SRC && rm fundax-src.tar.gz"
fi

# uv brings a Python that fundax supports whatever the image's own is.
all_workers "{ test -x $R_BIN/uv || curl -LsSf https://astral.sh/uv/install.sh | env UV_UNMANAGED_INSTALL=$R_BIN sh; } \
&& $R_BIN/uv venv --quiet --allow-existing --seed --python $(quote "$PYTHON_VERSION") $R_VENV \
&& $R_BIN/uv pip install --quiet --python $R_PYTHON --editable $R_SRC$(quote '[tpu]') \
&& $R_PYTHON -c $(quote 'import fundax, jax; print("fundax ready on jax", jax.__version__)')"

if [[ -n $NFS_SHARE ]]; then
  mnt=$(quote "$MOUNT_POINT")
  all_workers "{ command -v mount.nfs >/dev/null || { sudo apt-get -qq update && sudo apt-get -qq install -y nfs-common; }; } \
&& sudo mkdir -p $mnt && { mountpoint -q $mnt || sudo mount -t nfs -o hard $(quote "$NFS_SHARE") $mnt; } \
&& { test -w $mnt || sudo chmod a+rwx $mnt; }"
fi

if [[ -n $BUCKET ]]; then
  source_url="gs://${BUCKET#gs://}"
  source_url="${source_url%/}/${BUCKET_PATH#/}"
  all_workers "{ mkdir -p $R_DATA 2>/dev/null || { sudo mkdir -p $R_DATA && sudo chown \"\$(id -u):\$(id -g)\" $R_DATA; }; } \
&& gcloud storage rsync --recursive $(quote "${source_url%/}") $R_DATA"
else
  note "no --bucket: no dataset copied; fundax.train looks for it in $DATA_DIR (under the home directory unless absolute) on every worker"
fi
note "train with launch/tpu/train.sh --name=$TPU_NAME --zone=$ZONE --finding=... --workdir=..."
