#!/usr/bin/env bash
# End to end through the real binary: `shardquant run` on a tiny synth model (export + metrics),
# `eval` of the export against the FP model, and the refusals a cluster user relies on: a scheme
# with no compressed-tensors form, an unknown recipe key (file:line), a non-empty run directory
# (left untouched).
# Usage: cli_run_recipe.sh SHARDQUANT_BINARY SCRATCH_DIR
set -euo pipefail
sq=$1
work=$2
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_error() {
  local what=$1 needle=$2
  shift 2
  if "$@" >"$work/out.txt" 2>"$work/err.txt"; then fail "$what: succeeded"; fi
  grep -q -- "$needle" "$work/err.txt" || fail "$what: error does not mention '$needle': $(cat "$work/err.txt")"
  [[ $(grep -c '^error: ' "$work/err.txt") == 1 ]] || fail "$what: not a one-line error"
  echo "ok: $what -> $(grep '^error: ' "$work/err.txt")"
}

m=$work/model
$sq synth --arch opt --out "$m" --hidden 64 --layers 2 --heads 4 --vocab 256 --max-positions 128 \
  --seq-len 64 --calib-seqs 8 --eval-seqs 4 --seed 5 >/dev/null
recipe() {  # name, activations line, stages
  cat >"$work/$1.yaml" <<YAML
model: model
output: runs/$1
data: {calibration: model/calib.npy, evaluation: model/eval.npy}
scheme:
  weights: {bits: ${4:-8}}
  activations: $2
stages: $3
YAML
}
recipe w8a8 "{bits: 8, granularity: tensor, dynamic: false}" "[smoothquant, quantize_weights]"
$sq run "$work/w8a8.yaml" | tee "$work/run.txt"
[[ -f $work/runs/w8a8/export/config.json ]] || fail "no export"
[[ -f $work/runs/w8a8/metrics.json ]] || fail "no metrics.json"
grep -q '"quant_method": "compressed-tensors"' "$work/runs/w8a8/export/config.json" || fail "no quantization_config"
grep -q "KL mean" "$work/run.txt" || fail "run printed no KL"

# eval of the export against the FP model reproduces the run's own numbers.
$sq eval "$work/runs/w8a8/export" --tokens "$m/eval.npy" --reference "$m" --json "$work/eval.json" >/dev/null
python3 - "$work/runs/w8a8/metrics.json" "$work/eval.json" <<'PY' || fail "eval --reference disagrees with run"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for k in ("perplexity", "reference_perplexity", "kl_mean", "top1_agreement"):
    assert a[k] == b[k], (k, a[k], b[k])
print(f"eval --reference matches the run: ppl {a['perplexity']:.4f} vs FP {a['reference_perplexity']:.4f}, KL {a['kl_mean']:.3g}")
PY

# W6A6 has no compressed-tensors form: refused before any work, no run directory made.
recipe w6a6 "{bits: 6, granularity: tensor, dynamic: false}" "[smoothquant, quantize_weights]" 6
expect_error "W6A6 export" "w6a6.yaml" $sq run "$work/w6a6.yaml"
[[ ! -e $work/runs/w6a6 ]] || fail "a refused run left a directory behind"

# An unknown key names the file and line.
printf 'model: model\noutput: runs/x\nbogus: 1\n' >"$work/bad.yaml"
expect_error "unknown recipe key" "bad.yaml:3" $sq run "$work/bad.yaml"

# A second run into the same directory is refused; the first run's files are untouched.
before=$(cd "$work/runs/w8a8" && find . -type f -exec sha256sum {} + | sort | sha256sum)
expect_error "run into a non-empty directory" "runs/w8a8" $sq run "$work/w8a8.yaml"
after=$(cd "$work/runs/w8a8" && find . -type f -exec sha256sum {} + | sort | sha256sum)
[[ $before == "$after" ]] || fail "the refused run changed the existing run directory"
$sq inspect "$work/runs/w8a8/export" | grep -q "quantized checkpoint" || fail "inspect of an export"
echo "all run checks passed"
