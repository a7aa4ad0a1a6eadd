#!/usr/bin/env bash
# Install fundax from a wheelhouse (launch/offline/wheelhouse.sh) with no package index.
set -euo pipefail
ABOUT="Install fundax on a machine without package access, from a wheelhouse that
launch/offline/wheelhouse.sh built for it: checks that this Python is the wheelhouse's and that
the base image has what the wheels rely on, installs every wheel with pip --no-index, then
imports fundax's training path to prove it. With --target the wheels go to a folder (the base
image stays as it is; a Python whose site-packages is read-only or externally managed needs it):
put that folder on PYTHONPATH to use them."
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

flag wheelhouse WHEELHOUSE "" "the folder wheelhouse.sh wrote"
flag python PY python3 "the Python to install into"
flag target TARGET_DIR "" "install into this folder instead of the Python's site-packages"
parse_flags "$@"
require WHEELHOUSE
((${#EXTRA_ARGS[@]} == 0)) || die "unexpected arguments after --"
[[ -f $WHEELHOUSE/requirements.txt || $DRY_RUN == 1 ]] || die "$WHEELHOUSE holds no requirements.txt: build it with launch/offline/wheelhouse.sh"

check=(check --wheelhouse="$WHEELHOUSE")
pip=(install --no-index --find-links="$WHEELHOUSE" --no-deps --requirement="$WHEELHOUSE/requirements.txt"
  --disable-pip-version-check --no-warn-script-location)
path=${PYTHONPATH:-}
if [[ -n $TARGET_DIR ]]; then
  check+=(--path="$TARGET_DIR")
  pip+=(--target="$TARGET_DIR" --upgrade)
  path=$TARGET_DIR${path:+:$path}
fi
run "$PY" "$REPO_ROOT/launch/offline/wheelhouse.py" "${check[@]}"
# The wheelhouse is the whole closure already, resolved for this image: pip only unpacks.
run "$PY" -m pip "${pip[@]}"
# -P: the installed fundax, not a checkout in the current folder.
run env PYTHONPATH="$path" "$PY" -P -c 'import fundax.loop, fundax.evaluation, tensorboardX; print("fundax", fundax.__version__, "installed")'
if [[ -n $TARGET_DIR ]]; then
  note "use it with: export PYTHONPATH=$(quote "$path")"
fi
