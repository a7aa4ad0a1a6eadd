#!/usr/bin/env bash
# Build, where pip reaches a package index, the folder of wheels that installs fundax on a
# machine with none: fundax and exactly what that machine's base image lacks.
set -euo pipefail
ABOUT="Build a wheelhouse for a machine without package access: fundax's wheel from this checkout
and, for the target's Python and platform, every distribution fundax needs that --present (the
target's \`pip list --format=freeze\`) does not list, resolved through their own requirements.
Carry the folder to the target and run launch/offline/install.sh there."
# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

flag python TARGET_PYTHON "" "the target's Python version, e.g. 3.12"
flag platform TARGET_PLATFORM manylinux_2_28_x86_64 "the target's wheel platform tag (manylinux_2_N: glibc 2.N or newer)"
flag present PRESENT "" "a file: \`python -m pip list --format=freeze\` on the target"
flag out WHEELHOUSE wheelhouse "the folder to write; a wheelhouse already there is replaced"
flag extra FUNDAX_EXTRAS "" "fundax extras to include, comma-separated, e.g. bench"
flag omit OMIT "" "distributions to leave out, comma-separated, e.g. pyarrow (see launch/README.md)"
flag max-mb MAX_MB "" "fail when the wheels add up to more megabytes than this"
flag pip-python PIP_PYTHON "" "the Python whose pip downloads (default: the checkout's .venv, else python3)"
parse_flags "$@"
require TARGET_PYTHON PRESENT
((${#EXTRA_ARGS[@]} == 0)) || die "unexpected arguments after --"
[[ -f $PRESENT || $DRY_RUN == 1 ]] || die "--present $PRESENT is not a file"

if [[ -z $PIP_PYTHON ]]; then
  PIP_PYTHON=python3
  [[ -x $REPO_ROOT/.venv/bin/python ]] && PIP_PYTHON=$REPO_ROOT/.venv/bin/python
fi
args=(build --python="$TARGET_PYTHON" --platform="$TARGET_PLATFORM" --present="$PRESENT" --out="$WHEELHOUSE"
  --source="$REPO_ROOT" --pip-python="$PIP_PYTHON")
IFS=, read -r -a extras <<<"$FUNDAX_EXTRAS"
IFS=, read -r -a omitted <<<"$OMIT"
for name in ${extras[@]+"${extras[@]}"}; do
  args+=(--extra="$name")
done
for name in ${omitted[@]+"${omitted[@]}"}; do
  args+=(--omit="$name")
done
[[ -z $MAX_MB ]] || args+=(--max-mb="$MAX_MB")
run "$PIP_PYTHON" "$REPO_ROOT/launch/offline/wheelhouse.py" "${args[@]}"
