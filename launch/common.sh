# shellcheck shell=bash disable=SC2034  # it sets variables for the scripts that source it
# What every launch script shares: flags with environment defaults, --help, and
# --dry-run, under which `run` prints each command, quoted for a shell, instead of
# running it. Sourced, never run.
#
# A script declares its flags, then parses:
#
#   flag zone ZONE "" "zone of the TPU VM"   # --zone=VALUE or --zone VALUE; default $ZONE
#   switch spot SPOT "Spot VMs"             # --spot sets SPOT=1
#   parse_flags "$@"                        # arguments after -- land in EXTRA_ARGS
#   require ZONE
#
# The variable a flag sets is its environment variable, so either configures it.
# Kept to what bash 3.2 (macOS) has: no associative arrays, no ${x^^}, every
# expansion of a possibly empty array guarded against `set -u`, and no quoting
# inside ${x//pattern/replacement}, which bash versions read differently.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT_NAME=${0##*/}
ABOUT=${ABOUT:-}
EXTRA_USAGE=${EXTRA_USAGE:-}
EXTRA_ARGS=()
FLAG_NAMES=()
FLAG_VARS=()
FLAG_DEFAULTS=()
FLAG_HELPS=()
FLAG_IS_SWITCH=()

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  printf "run '%s --help' for the flags\n" "$SCRIPT_NAME" >&2
  exit 2
}

# A line for the reader, not a command: a comment, so dry-run output stays a valid script.
note() {
  printf '# %s\n' "$@"
}

flag() {  # NAME VARIABLE DEFAULT HELP
  FLAG_NAMES+=("$1")
  FLAG_VARS+=("$2")
  FLAG_DEFAULTS+=("$3")
  FLAG_HELPS+=("$4")
  FLAG_IS_SWITCH+=(0)
  if [[ -z ${!2:-} ]]; then
    printf -v "$2" '%s' "$3"
  fi
}

switch() {  # NAME VARIABLE HELP; the variable is 1 when given, else its environment value or 0
  flag "$1" "$2" 0 "$3"
  FLAG_IS_SWITCH[${#FLAG_IS_SWITCH[@]} - 1]=1
}

flag_index() {  # NAME -> index into FLAG_*, or failure
  local i
  for i in "${!FLAG_NAMES[@]}"; do
    if [[ ${FLAG_NAMES[i]} == "$1" ]]; then
      printf '%s' "$i"
      return 0
    fi
  done
  return 1
}

usage() {
  local i left default
  printf 'Usage: %s [flags]%s\n\n' "$SCRIPT_NAME" "${EXTRA_USAGE:+ $EXTRA_USAGE}"
  if [[ -n $ABOUT ]]; then
    printf '%s\n\n' "$ABOUT"
  fi
  printf 'Flags (each also read from the environment variable in brackets):\n'
  for i in "${!FLAG_NAMES[@]}"; do
    if ((FLAG_IS_SWITCH[i])); then
      left="--${FLAG_NAMES[i]}"
      default=""
    else
      left="--${FLAG_NAMES[i]}=VALUE"
      default=${FLAG_DEFAULTS[i]:+ (default: ${FLAG_DEFAULTS[i]})}
    fi
    printf '  %-26s %s%s [%s]\n' "$left" "${FLAG_HELPS[i]}" "$default" "${FLAG_VARS[i]}"
  done
  printf '  %-26s %s\n' "-h, --help" "show this help"
}

parse_flags() {
  local arg name value i
  switch dry-run DRY_RUN "print every command instead of running it"
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --)
        EXTRA_ARGS=("$@")
        return 0
        ;;
      --*)
        name=${arg#--}
        name=${name%%=*}
        i=$(flag_index "$name") || die "unknown flag --$name"
        if ((FLAG_IS_SWITCH[i])); then
          [[ $arg != *=* ]] || die "--$name takes no value"
          value=1
        elif [[ $arg == *=* ]]; then
          value=${arg#*=}
        else
          (($#)) && [[ $1 != --* ]] || die "--$name needs a value"
          value=$1
          shift
        fi
        printf -v "${FLAG_VARS[i]}" '%s' "$value"
        ;;
      *)
        die "unexpected argument '$arg'${EXTRA_USAGE:+ (arguments to pass on go after --)}"
        ;;
    esac
  done
  for i in "${!FLAG_NAMES[@]}"; do
    if ((FLAG_IS_SWITCH[i])) && [[ ${!FLAG_VARS[i]} != [01] ]]; then
      die "${FLAG_VARS[i]} must be 0 or 1, not '${!FLAG_VARS[i]}'"
    fi
  done
}

require() {  # VARIABLE...: each must be set, by its flag or its environment variable
  local var i
  for var; do
    if [[ -z ${!var:-} ]]; then
      for i in "${!FLAG_VARS[@]}"; do
        if [[ ${FLAG_VARS[i]} == "$var" ]]; then
          die "missing --${FLAG_NAMES[i]} (or set $var)"
        fi
      done
      die "missing $var"
    fi
  done
}

# One word as a shell reads it back: bare when safe, else in single quotes (after
# the = of a --flag=value, which reads better).
quote() {
  local safe='^[[:alnum:]_./:=@%+,-]+$' flag_value='^(--?[[:alnum:]_.-]+=)(.*)$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ $flag_value ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    local rest=$1 quoted="'"
    while [[ $rest == *\'* ]]; do
      quoted+="${rest%%\'*}'\\''"
      rest=${rest#*\'}
    done
    printf '%s' "$quoted$rest'"
  fi
}

quote_words() {
  local word out=()
  for word; do
    out+=("$(quote "$word")")
  done
  printf '%s' "${out[*]}"
}

# Under --dry-run print the command; otherwise show it on stderr and run it.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    "$@"
  fi
}
