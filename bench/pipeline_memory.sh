#!/usr/bin/env bash
# Measured peak memory of `shardquant run` per rank next to what `shardquant plan` predicted.
#
#   bench/pipeline_memory.sh BUILD_DIR [--shape 70b|13b|small|tiny] [--np N] [--work DIR] [--keep]
#                            [--fixed-mmap-threshold]
#
# Builds nothing: BUILD_DIR must hold a built `shardquant`. Synthesizes a model with the block
# shape of the chosen model (few layers, so it fits one machine), writes a SmoothQuant W8A8
# recipe (16 x 128 calibration tokens, no evaluation), asks `shardquant plan` for its prediction
# (--json), runs the recipe under `mpirun -np N --oversubscribe` and prints, per rank, the VmHWM
# the runner reports ("rank K peak RSS (VmHWM) N bytes") beside the predicted peak and their
# ratio. Shapes:
#   70b   LLaMA-2-70B blocks: hidden 8192, ffn 28672, 64 heads, 8 KV heads; 4 layers, 2 ranks
#         (about 8 GB of bf16 weights on disk; the plan predicts 8.2 GiB on rank 0, 5.9 GiB on
#         rank 1)
#   13b   LLaMA-2-13B blocks: hidden 5120, ffn 13824, 40 heads, 40 KV heads; 6 layers, 3 ranks
#   small hidden 1024, ffn 2816, 16 heads, 4 KV heads; 4 layers, 2 ranks (a quick multi-rank run)
#   tiny  hidden 256, ffn 704, 4 heads, 2 KV heads; 2 layers, 1 rank (checks the script)
# --fixed-mmap-threshold runs the ranks with MALLOC_MMAP_THRESHOLD_=131072: glibc then maps every
# allocation above 128 KiB on its own and returns it when freed, instead of raising the threshold
# up to 32 MiB and keeping freed heap memory resident. The plan does not model that retention:
# it is large for small shapes (tensors under 32 MiB) and vanishes at 70B shapes.
# Environment: MPIRUN (default mpirun), OMPI_* as usual; as root, Open MPI's run-as-root
# variables are set. Exits non-zero when the plan refuses the run on this machine, when the run
# fails, or when the run reports no peak memory.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  exit 2
}

[ $# -ge 1 ] || usage
build=$1
shift
shape=tiny
np=""
work=""
keep=0
fixed_mmap=0
while [ $# -gt 0 ]; do
  case $1 in
    --shape) shape=$2; shift 2 ;;
    --np) np=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --fixed-mmap-threshold) fixed_mmap=1; shift ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done

sq="$build/shardquant"
[ -x "$sq" ] || { echo "error: $sq is not an executable (build it first)" >&2; exit 2; }

case $shape in
  70b) synth_args=(--hidden 8192 --intermediate 28672 --heads 64 --kv-heads 8 --layers 4)
       default_np=2 ;;
  13b) synth_args=(--hidden 5120 --intermediate 13824 --heads 40 --kv-heads 40 --layers 6)
       default_np=3 ;;
  small) synth_args=(--hidden 1024 --intermediate 2816 --heads 16 --kv-heads 4 --layers 4)
         default_np=2 ;;
  tiny) synth_args=(--hidden 256 --intermediate 704 --heads 4 --kv-heads 2 --layers 2)
        default_np=1 ;;
  *) echo "error: unknown shape '$shape' (70b, 13b, small or tiny)" >&2; exit 2 ;;
esac
np=${np:-$default_np}

if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/pipeline_memory.XXXXXX")
  [ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
else
  mkdir -p "$work"
fi
model="$work/model"
recipe="$work/recipe.yaml"
plan_json="$work/plan.json"
log="$work/run.log"

if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# Reads one number per rank from the plan's JSON: rank, stage, blocks, predicted peak, phase.
plan_rows() {
  if command -v jq > /dev/null; then
    jq -r '.rank_plans[] | "\(.rank) \(.stage) \(.blocks[0])-\(.blocks[1]) \(.peak_host) \(.peak_phase)"' \
      "$plan_json"
  elif command -v python3 > /dev/null; then
    python3 -c 'import json, sys
for r in json.load(open(sys.argv[1]))["rank_plans"]:
    print(r["rank"], r["stage"], "%d-%d" % tuple(r["blocks"]), r["peak_host"], r["peak_phase"])' \
      "$plan_json"
  else
    echo "error: reading the plan needs jq or python3" >&2
    exit 2
  fi
}

echo "== shape $shape on $np rank(s); work directory $work"
if [ ! -f "$model/config.json" ]; then
  rm -rf "$model"
  "$sq" synth --arch llama "${synth_args[@]}" --vocab 32000 --calib-seqs 16 --seq-len 128 \
    --eval-seqs 0 --out "$model" > "$work/synth.log" 2>&1 ||
    { cat "$work/synth.log" >&2; echo "error: synth failed" >&2; exit 1; }
fi

rm -rf "$work/run"
cat > "$recipe" <<EOF
# SmoothQuant W8A8 (SmoothQuant's O1) on a synthetic model with the $shape block shape.
model: $model
output: $work/run
data:
  calibration: $model/calib.npy
  seq_len: 128
  calibration_sequences: 16
  micro_batch: 4
scheme:
  weights: {bits: 8, symmetric: true, granularity: channel, clip: minmax}
  activations: {bits: 8, symmetric: true, granularity: token, dynamic: true, scale_rule: half_range}
calibration: {inputs: fp}
stages:
  - smoothquant: {alpha: 0.85}
  - quantize_weights
export: {format: compressed-tensors, dtype: model}
EOF

echo "== plan"
if ! "$sq" plan "$recipe" --ranks "$np" --gpus-per-node "$np" --json "$plan_json"; then
  echo "error: the plan refuses this run on this machine (see above); nothing was run" >&2
  exit 1
fi

read -r -a launcher <<< "${MPIRUN:-mpirun}"
launcher+=(-np "$np" --oversubscribe)
if [ "$fixed_mmap" = 1 ]; then
  export MALLOC_MMAP_THRESHOLD_=131072
  [ -n "${MPIRUN:-}" ] || launcher+=(-x MALLOC_MMAP_THRESHOLD_)
fi
echo "== run: ${launcher[*]} $sq run $recipe"
start=$(date +%s)
if ! "${launcher[@]}" "$sq" run "$recipe" > "$log" 2>&1; then
  tail -20 "$log" >&2
  echo "error: the run failed; its log is $log" >&2
  [ "$keep" = 1 ] || trap - EXIT
  exit 1
fi
echo "   done in $(( $(date +%s) - start )) s"

measured=$(sed -n 's/.*rank \([0-9][0-9]*\) peak RSS (VmHWM) \([0-9][0-9]*\) bytes.*/\1 \2/p' "$log")
if [ -z "$measured" ]; then
  echo "error: the run printed no 'rank K peak RSS (VmHWM) N bytes' line: this runner does not" \
       "report its peak memory, so there is nothing to compare (log: $log)" >&2
  [ "$keep" = 1 ] || trap - EXIT
  exit 1
fi

echo "== peak memory per rank: measured VmHWM / predicted by plan"
printf '%5s %6s %8s %14s %14s %8s  %s\n' rank stage blocks measured predicted ratio phase
status=0
while read -r rank stage blocks predicted phase; do
  got=$(awk -v r="$rank" '$1 == r { print $2 }' <<< "$measured")
  if [ -z "$got" ]; then
    printf '%5s %6s %8s %14s %14s %8s  %s\n' "$rank" "$stage" "$blocks" "-" "$predicted" "-" \
      "$phase"
    echo "error: no peak memory reported for rank $rank" >&2
    status=1
    continue
  fi
  ratio=$(awk -v a="$got" -v b="$predicted" 'BEGIN { printf "%.3f", a / b }')
  printf '%5s %6s %8s %14s %14s %8s  %s\n' "$rank" "$stage" "$blocks" "$got" "$predicted" \
    "$ratio" "$phase"
done < <(plan_rows)
exit $status
