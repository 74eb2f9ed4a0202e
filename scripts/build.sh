#!/usr/bin/env bash
# Configures (CMake + Ninja) and builds ShardQuant. Re-running reuses the build directory, so an
# unchanged tree rebuilds nothing.
#
#   scripts/build.sh                          # build/ with the cached (or default) options
#   scripts/build.sh -DSQ_CUDA=OFF            # extra arguments go to the cmake configure step
#   BUILD_DIR=build-release scripts/build.sh  # another build directory (relative to the repo root)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}

# A directory configured with another generator cannot be switched to Ninja in place.
cache="$build_dir/CMakeCache.txt"
if [[ -f "$cache" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
  echo "build: $build_dir was configured with another CMake generator;" \
       "remove it or set BUILD_DIR to a fresh directory" >&2
  exit 1
fi

cmake -S . -B "$build_dir" -G Ninja "$@"
cmake --build "$build_dir" -j "$(nproc)"
