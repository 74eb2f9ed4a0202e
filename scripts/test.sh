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

source "$root/scripts/lib.sh"

step install scripts/install-deps.sh
step build scripts/build.sh "$@"
# The one-rank configuration (SQ_DISTRIBUTED=OFF: no MPI or HDF5; no CUDA) must keep building.
step build-single-rank bash -c "cmake -S . -B '$build_dir-single-rank' -G Ninja \
  -DSQ_DISTRIBUTED=OFF -DSQ_CUDA=OFF >/dev/null && cmake --build '$build_dir-single-rank' -j $(nproc)"
step test ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 1500
