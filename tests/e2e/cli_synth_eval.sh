#!/usr/bin/env bash
# End to end through the real binary: synth -> inspect -> eval for LLaMA and OPT, the JSON
# metrics, --help of every command, and the one-line errors (non-zero exit, nothing lost) for
# bad input.
# Usage: cli_synth_eval.sh SHARDQUANT_BINARY SCRATCH_DIR
set -euo pipefail
sq=$1
work=$2
rm -rf "$work" && mkdir -p "$work"

fail() { echo "FAIL: $*" >&2; exit 1; }

# Runs a command that must fail; checks the exit code and that stderr names $2.
expect_error() {
  local what=$1 needle=$2
  shift 2
  if "$@" >"$work/out.txt" 2>"$work/err.txt"; then fail "$what: succeeded"; fi
  grep -q -- "$needle" "$work/err.txt" || fail "$what: error does not mention '$needle': $(cat "$work/err.txt")"
  [[ $(grep -c '^error: ' "$work/err.txt") == 1 ]] || fail "$what: not a one-line error: $(cat "$work/err.txt")"
  echo "ok: $what -> $(cat "$work/err.txt")"
}

for cmd in "" synth eval inspect; do
  $sq $cmd --help >/dev/null || fail "--help of '$cmd'"
done

for arch in llama opt; do
  m=$work/$arch
  $sq synth --arch $arch --out "$m" --hidden 64 --layers 2 --heads 4 --vocab 256 \
    --max-positions 128 --seq-len 64 --calib-seqs 2 --eval-seqs 8 --seed 3 --shard-mb 0.05
  [[ -f $m/model.safetensors.index.json ]] || fail "$arch: no index (not sharded)"
  $sq inspect "$m" | grep -q "shard(s)" || fail "$arch: inspect"
  $sq inspect "$m/eval.npy" | grep -q "512 tokens (8 x 64)" || fail "$arch: inspect tokens"
  $sq eval "$m" --tokens "$m/eval.npy" --json "$work/$arch.json" | tee "$work/$arch.txt"
  grep -q "perplexity" "$work/$arch.txt" || fail "$arch: no perplexity printed"
  # Perplexity of the model on its own samples: between 1.5% and 30% of the vocabulary.
  python3 - "$work/$arch.json" <<'PY' || fail "$arch: perplexity out of range"
import json, sys
m = json.load(open(sys.argv[1]))
frac = m["perplexity"] / m["vocab_size"]
print(f"perplexity {m['perplexity']:.2f} = {frac:.3f} of the vocabulary")
sys.exit(0 if 0.015 < frac < 0.30 else 1)
PY
done

m=$work/llama
expect_error "missing model dir" "$work/nope" $sq eval "$work/nope" --tokens "$m/eval.npy"
expect_error "missing token file" "$work/none.u32" $sq eval "$m" --tokens "$work/none.u32"
printf 'abc' >"$work/odd.u16"
expect_error "truncated raw tokens" "odd.u16" $sq eval "$m" --tokens "$work/odd.u16"
expect_error "unknown token extension" "tokens.txt" $sq eval "$m" --tokens "$work/tokens.txt"

# Out-of-vocabulary ids name the file and the index.
python3 -c "import sys; open(sys.argv[1],'wb').write(bytes([1,0,0,0])*70 + bytes([0,1,0,0]))" "$work/oov.u32"
expect_error "token outside the vocabulary" "index 70" $sq eval "$m" --tokens "$work/oov.u32" --seq-len 71

# A truncated shard is refused naming the shard; the other files are untouched.
cp -r "$m" "$work/broken"
shard=$(ls "$work/broken"/model-00001-of-*.safetensors)
truncate -s -10 "$shard"
expect_error "truncated shard" "$(basename "$shard")" $sq eval "$work/broken" --tokens "$m/eval.npy"

# synth refuses a non-empty directory and leaves what is there alone.
before=$(sha256sum "$m/config.json")
expect_error "synth into a non-empty dir" "$m" $sq synth --arch llama --out "$m"
[[ $(sha256sum "$m/config.json") == "$before" ]] || fail "synth changed an existing model"

# A post-LN OPT config is refused naming do_layer_norm_before.
cp -r "$work/opt" "$work/postln"
python3 - "$work/postln/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["do_layer_norm_before"] = False
json.dump(c, open(sys.argv[1], "w"))
PY
expect_error "post-LN OPT" "do_layer_norm_before" $sq eval "$work/postln" --tokens "$work/opt/eval.npy"
echo "all CLI checks passed"
