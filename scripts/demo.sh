#!/usr/bin/env bash
# The tiny end-to-end demo: installs the dependencies, builds, writes a small LLaMA-architecture
# model with `shardquant synth` into demo/tiny-llama, prints its perplexity on the eval tokens
# synth wrote beside it, then runs the W8A8 recipe (configs/tiny-llama-w8a8.yaml) on it and prints
# how close the quantized model is to the FP one. Prints the time of every step.
#
# demo/tiny-llama is replaced only once a new one has been written completely: synth writes into
# a fresh staging directory under demo/, which is then moved into place.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build_dir=${BUILD_DIR:-build}
shardquant="$build_dir/shardquant"
model_dir=demo/tiny-llama

source "$root/scripts/lib.sh"

# Runs inside `step`'s `if`, where set -e does not apply: every command checks its own status, so
# a failed synth never removes the previous model.
synth() {
  mkdir -p demo || return
  staging=$(mktemp -d demo/.staging.XXXXXX) || return
  trap 'rm -rf "$staging"' EXIT
  "$shardquant" synth --arch llama --out "$staging/tiny-llama" --seed 1 || return
  rm -rf "$model_dir" || return
  mv "$staging/tiny-llama" "$model_dir"
}

total=$(now_ns)
step install scripts/install-deps.sh
step build scripts/build.sh
step synth synth
step eval-fp "$shardquant" eval "$model_dir" --tokens "$model_dir/eval.npy"
# The main job: the W8A8 recipe (SmoothQuant, int8 weights per channel, int8 per-token dynamic
# activations) on the tiny model, exported as compressed-tensors and compared with the FP model.
# runs/tiny-llama-w8a8 is the demo's own output: replaced on every demo run.
run_dir=runs/tiny-llama-w8a8
step quantize bash -c "rm -rf '$run_dir' && '$shardquant' run configs/tiny-llama-w8a8.yaml"
echo "== demo: done in $(seconds_since "$total") s; model in $model_dir, run in $run_dir" \
  "(export in $run_dir/export, metrics in $run_dir/metrics.json)"
