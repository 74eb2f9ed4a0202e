#!/usr/bin/env bash
# Installs the Debian 12 packages ShardQuant builds, tests and runs with. Idempotent: when every
# package is already installed it changes nothing and touches no network (no apt-get update).
# Runs as root in CI; otherwise it goes through sudo when sudo exists.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenmpi-dev openmpi-bin libhdf5-dev
  libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libopenblas-dev libssl-dev
  python3 python3-venv
  # the one-node Slurm cluster of the slurm tests (tests/slurm/cluster.sh starts the daemons)
  munge slurmctld slurmd slurm-client
)

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start=$(now_ns)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps: dpkg-query not found; this script installs Debian 12 packages only" >&2
  exit 1
fi

missing=()
for package in "${packages[@]}"; do
  # db:Status-Status is "installed" only for a fully installed package (not config-files etc.).
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages already installed ($(seconds_since "$start") s)"
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: not root and no sudo; install them as root, then re-run" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
for package in "${missing[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  if [[ "$status" != installed ]]; then
    echo "install-deps: $package is still not installed after apt-get install" >&2
    exit 1
  fi
done
echo "install-deps: installed ${#missing[@]} package(s): ${missing[*]} ($(seconds_since "$start") s)"
