#!/usr/bin/env bash
# Downloads, on a Debian 12 machine with network, the .deb files a GPU build machine without a
# package manager or network needs for `scripts/gpu-check.sh`: the single-rank build's libraries
# (fmt, nlohmann-json, CLI11, yaml-cpp, OpenSSL, OpenBLAS), GoogleTest, Google Benchmark and
# pkg-config. Nothing is installed here. Copy the folder (default .gpu-deps/, ignored by git) to
# the GPU machine beside the checkout; gpu-check.sh unpacks it into a private prefix there.
#
#   scripts/gpu-deps.sh [DIR]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/.gpu-deps}

packages=(
  libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libyaml-cpp0.7
  libssl-dev libssl3
  libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0
  libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian
  pkgconf pkgconf-bin libpkgconf3
)

mkdir -p "$dir"
cd "$dir"
rm -f ./*.deb
# apt-get download needs current package lists; an unreadable or stale list fails with a clear
# "Unable to locate package" naming the package.
if ! apt-get download "${packages[@]}" >/dev/null 2>download.log; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update >/dev/null && apt-get download "${packages[@]}" >/dev/null 2>download.log || {
      echo "gpu-deps: apt-get download failed: $(tail -1 download.log)" >&2
      exit 1
    }
  else
    echo "gpu-deps: apt-get download failed: $(tail -1 download.log)" >&2
    exit 1
  fi
fi
rm -f download.log
echo "gpu-deps: $(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $dir"
