#!/usr/bin/env bash
# Installs the dependencies, builds, and runs every test under ctest, printing how long each step
# took. Arguments go to the cmake configure step (see scripts/build.sh); BUILD_DIR selects the
# build directory. Exits non-zero when any step fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}

# Open MPI refuses to start as root without these; CI containers run as root, and the MPI tests
# launch mpirun from ctest.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

now_ns() { date +%s%N; }
seconds_since() {
  local ms=$((($(now_ns) - $1) / 1000000))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# step NAME COMMAND...: runs the command, prints its time (also when it fails), keeps its status.
step() {
  local name=$1 start rc
  shift
  echo "== step $name: $*"
  start=$(now_ns)
  if "$@"; then rc=0; else rc=$?; fi
  if ((rc == 0)); then
    echo "== step $name: $(seconds_since "$start") s"
  else
    echo "== step $name: FAILED (exit $rc) after $(seconds_since "$start") s" >&2
  fi
  return "$rc"
}

step install scripts/install-deps.sh
step build scripts/build.sh "$@"
step test ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 1500
