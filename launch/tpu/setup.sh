#!/usr/bin/env bash
# Make every worker of a TPU VM ready to train: fundax and its Python, the shared
# workdir mounted, the prepared dataset on local disk. Safe to run again.
set -euo pipefail
ABOUT="Install fundax on every worker of a TPU VM, from a copy of this checkout (its tracked and
untracked, not ignored, files) or from --git-url, into a venv with fundax[tpu]; optionally mount
a Filestore/NFS share or a Cloud Storage bucket (gcsfuse) for the workdir; copy the prepared
dataset from --bucket to local disk.
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
flag gcsfuse GCSFUSE "" "Cloud Storage bucket to mount for the workdir with gcsfuse, BUCKET or BUCKET/DIR"
flag gcsfuse-options GCSFUSE_OPTIONS "" "further gcsfuse flags, e.g. --billing-project=P (split at spaces)"
flag mount-point MOUNT_POINT /mnt/fundax "where to mount --nfs or --gcsfuse on every worker"
parse_flags "$@"
require_tpu
remote_layout
[[ -z $NFS_SHARE || -z $GCSFUSE ]] || die "--nfs and --gcsfuse both mount at --mount-point: pass one"

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

if [[ -n $GCSFUSE ]]; then
  mnt=$(quote "$MOUNT_POINT")
  gcs_bucket=${GCSFUSE#gs://}
  gcs_bucket=${gcs_bucket%/}
  # Orbax finishes every checkpoint by renaming its folder: gcsfuse refuses folder renames
  # (in a bucket without hierarchical namespace) unless --rename-dir-limit allows them. Several
  # workers write the same folders, so none may trust a cached listing or stat
  # (--metadata-cache-ttl-secs=0, which TPU machine types would otherwise raise to unlimited);
  # no file cache: the workdir is written far more than read, and the dataset is on local disk.
  gcsfuse_flags=(--implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0)
  if [[ $gcs_bucket == */* ]]; then
    gcsfuse_flags+=(--only-dir="${gcs_bucket#*/}")
    gcs_bucket=${gcs_bucket%%/*}
  fi
  read -r -a more_options <<<"$GCSFUSE_OPTIONS"
  gcsfuse_flags+=(${more_options[@]+"${more_options[@]}"})
  # Cloud Storage FUSE's apt repository, as its installation guide gives it.
  # shellcheck disable=SC2016  # $(...) runs on the workers
  repo='deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main'
  all_workers "{ command -v gcsfuse >/dev/null || { echo \"$repo\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null \
&& curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null \
&& sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse; }; } \
&& { ! mountpoint -q $mnt || sudo umount $mnt; } \
&& sudo mkdir -p $mnt && sudo chown \"\$(id -u):\$(id -g)\" $mnt \
&& gcsfuse $(quote_words "${gcsfuse_flags[@]}" "$gcs_bucket") $mnt"
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
