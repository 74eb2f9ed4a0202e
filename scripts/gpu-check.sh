#!/usr/bin/env bash
# The whole GPU check in one command, for a GPU machine that has the CUDA toolkit, CMake, ninja and
# a C++ compiler but no package manager and no network: unpacks the .deb files gathered by
# scripts/gpu-deps.sh into a private prefix (nothing outside it is touched), builds the single-rank
# CUDA configuration (SQ_DISTRIBUTED=OFF: no MPI or HDF5), runs every gpu test and the GPU
# benchmarks, and writes each log to OUT_DIR.
#
#   scripts/gpu-check.sh [--deps DIR] [--out OUT_DIR] [--arch 90a] [--tests-only] [--sanitize]
#
#   --deps DIR     the .deb folder (default .gpu-deps/ in the checkout)
#   --out DIR      where logs and the gtest XML go (default $OUT when set, else gpu-check-out/)
#   --tests-only   skip the benchmarks
#   --sanitize     also run test_gpu under compute-sanitizer memcheck (slow: minutes)
# A hung kernel must not eat the machine's time: the tests stop after SQ_GPU_TEST_TIMEOUT seconds
# (default 300), each benchmark after SQ_GPU_BENCH_TIMEOUT (default 180), memcheck after 600.
# Exits non-zero when the build or a test fails; benchmark failures are reported, not fatal.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
source scripts/lib.sh

deps=$root/.gpu-deps
out=${OUT:-$root/gpu-check-out}
arch=90a
benches=1
sanitize=0
while (($#)); do
  case $1 in
    --deps) deps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --tests-only) benches=0; shift ;;
    --sanitize) sanitize=1; shift ;;
    *) echo "gpu-check: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
build=${BUILD_DIR:-$root/build-gpu}
prefix=${SQ_GPU_PREFIX:-/tmp/sq-gpu-deps}
jobs=$(nproc)

unpack() {
  local debs=("$deps"/*.deb)
  [[ -e ${debs[0]} ]] || { echo "gpu-check: no .deb files in $deps (run scripts/gpu-deps.sh where apt works)" >&2; return 1; }
  mkdir -p "$prefix"
  for f in "${debs[@]}"; do dpkg-deb -x "$f" "$prefix" 2>/dev/null || dpkg -x "$f" "$prefix" || return 1; done
  echo "gpu-check: ${#debs[@]} packages unpacked into $prefix"
}

# Debian's CMake package files locate themselves, so a prefix works; pkg-config files name /usr,
# so the sysroot variable re-roots them; Debian's OpenBLAS alternatives are links dpkg -x does
# not create, hence the pthread variant's own folder.
environment() {
  local lib=$prefix/usr/lib/x86_64-linux-gnu
  export PATH=$prefix/usr/bin:$PATH
  export PKG_CONFIG=$prefix/usr/bin/pkgconf
  export PKG_CONFIG_LIBDIR=$lib/openblas-pthread/pkgconfig:$lib/pkgconfig:$prefix/usr/share/pkgconfig
  export PKG_CONFIG_SYSROOT_DIR=$prefix
  export LD_LIBRARY_PATH=$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export CMAKE_PREFIX_PATH=$prefix/usr
  export OPENSSL_ROOT_DIR=$prefix/usr
}

configure() {
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQ_DISTRIBUTED=OFF \
    -DSQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG" \
    -DOPENSSL_ROOT_DIR="$OPENSSL_ROOT_DIR" >"$out/configure.log" 2>&1 ||
    { tail -30 "$out/configure.log"; return 1; }
  grep -E 'Found (OpenSSL|PkgConfig|CUDAToolkit)|OPENBLAS' "$out/configure.log" || true
}

build_targets() {
  cmake --build "$build" -j "$jobs" --target test_gpu bench_cuda_gemm bench_cuda_kernels \
    bench_calibration_forward >"$out/build.log" 2>&1 || { grep -E 'error|Error' "$out/build.log" | head -40; return 1; }
}

run_tests() {
  nvidia-smi -L || true
  timeout "${SQ_GPU_TEST_TIMEOUT:-300}" "$build/tests/test_gpu" --gtest_output="xml:$out/test_gpu.xml" \
    >"$out/test_gpu.log" 2>&1
  local rc=$?
  ((rc == 124)) && echo "gpu-check: test_gpu timed out; last lines:" && tail -5 "$out/test_gpu.log"
  grep -E '^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]' "$out/test_gpu.log" | tail -8
  grep -E '^\[  FAILED  \]' "$out/test_gpu.log" | head -40
  return $rc
}

sanitize_tests() {
  timeout 600 compute-sanitizer --tool memcheck --error-exitcode 9 "$build/tests/test_gpu" \
    --gtest_brief=1 >"$out/memcheck.log" 2>&1
  local rc=$?
  grep -E 'ERROR SUMMARY|^\[  FAILED' "$out/memcheck.log" | head -20
  return $rc
}

bench() {
  local name=$1
  shift
  timeout "${SQ_GPU_BENCH_TIMEOUT:-180}" "$build/bench/$name" "$@" 2>&1 | tee "$out/$name.log"
}

rc=0
step unpack unpack || exit 1
environment
step configure configure || exit 1
step build build_targets || exit 1
step test run_tests || rc=1
if ((sanitize)); then step memcheck sanitize_tests || rc=1; fi
if ((benches)); then
  step bench-gemm bench bench_cuda_gemm
  step bench-kernels bench bench_cuda_kernels
  step bench-calibration bench bench_calibration_forward --dir "$build/bench_model"
fi
exit "$rc"
