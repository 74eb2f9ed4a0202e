#!/usr/bin/env bash
# ctest entry of the interop tests: sets up the pinned Python environment (scripts/python-env.sh)
# and runs one test script with it.
#
#   bash tests/interop/run.sh SCRIPT.py ARGS...
#
# When the environment cannot be set up (no network to PyPI, no Python >= 3.11) the test exits
# 77, which ctest reports as skipped rather than passed; SQ_INTEROP_REQUIRED=1 makes that a
# failure (for CI machines that must run it).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
script=$1
shift
if ! python=$(bash "$root/scripts/python-env.sh"); then
  if [[ "${SQ_INTEROP_REQUIRED:-0}" == 1 ]]; then
    echo "interop: FAILED $(basename "$script"): the Python environment could not be set up" \
         "(see the messages above) and SQ_INTEROP_REQUIRED=1" >&2
    exit 1
  fi
  echo "interop: SKIPPED $(basename "$script"): the Python environment could not be set up" \
       "(see the messages above)" >&2
  exit 77
fi
exec "$python" "$script" "$@"
