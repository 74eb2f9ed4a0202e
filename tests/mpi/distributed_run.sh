#!/usr/bin/env bash
# `shardquant run` under mpirun on a tiny synth model: the export must be byte-identical whatever
# the rank layout, after every kind of interruption and corruption, once resumed.
# Usage: distributed_run.sh MPIEXEC SHARDQUANT SCRATCH_DIR CASE
#   CASE: layouts | named-kills | random-kills | corruption | refusals | signals
# Runs as root under Open MPI (OMPI_ALLOW_RUN_AS_ROOT*), oversubscribed (2 cores here).
set -euo pipefail
mpiexec=$1
sq=$2
work=$3
case=$4
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
mpirun_np() { local np=$1; shift; timeout 120 "$mpiexec" -np "$np" --oversubscribe "$@"; }

# A 4-block LLaMA with GQA: 16 calibration sequences = 4 micro-batches of 4.
$sq synth --arch llama --out "$work/model" --hidden 64 --layers 4 --heads 4 --vocab 256 \
  --max-positions 64 --seq-len 32 --calib-seqs 16 --eval-seqs 0 --seed 7 >/dev/null
write_recipe() {  # file, output dir, alpha, calibration inputs
  cat >"$1" <<YAML
model: $work/model
output: $2
data: {calibration: $work/model/calib.npy, micro_batch: 4}
scheme:
  weights: {bits: 8, granularity: channel}
  activations: {bits: 8, granularity: tensor, dynamic: false}
calibration: {inputs: ${4:-fp}}
stages:
  - smoothquant: {alpha: ${3:-0.8}}
  - quantize_weights
YAML
}
# Digest of every file of an export, names included.
export_digest() { (cd "$1/export" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16; }

# The reference: one rank, uninterrupted.
write_recipe "$work/ref.yaml" "$work/ref"
mpirun_np 1 "$sq" run "$work/ref.yaml" >"$work/ref.log" 2>&1 || { cat "$work/ref.log"; fail "reference run"; }
ref=$(export_digest "$work/ref")
echo "reference export $ref"

check_same() {  # run dir, what
  local got
  got=$(export_digest "$1") || fail "$2: no export"
  [[ $got == "$ref" ]] || fail "$2: export $got differs from the reference $ref"
  echo "ok: $2 -> identical export"
}

# Runs with a fault; the run must die (or finish when the fault came too late), then a resume
# with `resume_np` ranks must finish with the reference export.
fault_then_resume() {  # name, np, resume_np, SQ_FAULT, [extra run args...]
  local name=$1 np=$2 resume_np=$3 fault=$4
  shift 4
  local d=$work/$name
  write_recipe "$d.yaml" "$d"
  set +e
  SQ_FAULT=$fault mpirun_np "$np" "$sq" run "$d.yaml" "$@" >"$d.log" 2>&1
  local rc=$?
  set -e
  [[ $rc != 124 ]] || fail "$name: the run hung"
  # A named point must actually be reached (a random delay may come after the run ended).
  [[ $rc != 0 || $fault == after-ms:* ]] || fail "$name: the fault $fault never fired"
  mpirun_np "$resume_np" "$sq" run --resume "$d" >"$d.resume.log" 2>&1 ||
    { cat "$d.resume.log"; fail "$name: resume failed"; }
  check_same "$d" "$name (killed: rc $rc, resumed on $resume_np ranks)"
}

case $case in
layouts)
  for layout in "2 0" "3 0" "4 0" "4 2" "3 3"; do
    read -r np replicas <<<"$layout"
    d=$work/np$np.r$replicas
    write_recipe "$d.yaml" "$d"
    mpirun_np "$np" "$sq" run "$d.yaml" --replicas "$replicas" >"$d.log" 2>&1 ||
      { cat "$d.log"; fail "np $np replicas $replicas"; }
    check_same "$d" "-np $np, replicas ${replicas/#0/default}"
  done
  grep -q "2 ranks = 2 stages x 1 replicas\|2 stages x 1 replicas" "$work/np2.r0.log" || fail "np 2 is not 2 pipeline stages"
  grep -q "4 ranks = 2 stages x 2 replicas" "$work/np4.r2.log" || fail "np 4 --replicas 2 is not 2 x 2"
  # Hidden states cross ranks in micro-batches: with a 1 KiB message limit, a micro-batch of
  # 4 x 32 x 64 floats (32 KiB) goes in 32 chunks.
  d=$work/chunked
  write_recipe "$d.yaml" "$d"
  mpirun_np 4 "$sq" run "$d.yaml" --replicas 2 --mpi-chunk-bytes 1024 >"$d.log" 2>&1 ||
    { cat "$d.log"; fail "chunked"; }
  check_same "$d" "-np 4 (2 x 2) with 1 KiB MPI messages"
  # Quantized calibration inputs: the next block sees this one quantized, across ranks too.
  write_recipe "$work/qref.yaml" "$work/qref" 0.8 quant
  mpirun_np 1 "$sq" run "$work/qref.yaml" >"$work/qref.log" 2>&1 || { cat "$work/qref.log"; fail "quant ref"; }
  qref=$(export_digest "$work/qref")
  [[ $qref != "$ref" ]] || fail "quantized calibration inputs changed nothing"
  for layout in "3 0" "4 2"; do
    read -r np replicas <<<"$layout"
    d=$work/q.np$np.r$replicas
    write_recipe "$d.yaml" "$d" 0.8 quant
    mpirun_np "$np" "$sq" run "$d.yaml" --replicas "$replicas" >"$d.log" 2>&1 || { cat "$d.log"; fail "$d"; }
    [[ $(export_digest "$d") == "$qref" ]] || fail "quant inputs -np $np: export differs"
    echo "ok: quantized inputs, -np $np replicas $replicas -> identical export"
  done
  ;;
named-kills)
  # kill -9 of one rank at each named point of a checkpoint or manifest write; the resume runs
  # on a different rank count, so it also starts from hidden states saved by another layout.
  fault_then_resume mid-write 2 3 "checkpoint.mid_write@1#2"
  fault_then_resume before-rename 3 2 "checkpoint.before_rename@2#1"
  fault_then_resume after-rename 4 1 "checkpoint.committed@1#2" --replicas 2
  fault_then_resume mid-manifest 2 4 "manifest.mid_write@0#3"
  fault_then_resume hidden-mid-write 4 3 "checkpoint.mid_write@2#1"
  # A resume that is itself killed, then resumed again.
  d=$work/twice
  write_recipe "$d.yaml" "$d"
  SQ_FAULT="checkpoint.before_rename@1#1" mpirun_np 2 "$sq" run "$d.yaml" >"$d.log" 2>&1 || true
  SQ_FAULT="checkpoint.mid_write@0#2" mpirun_np 3 "$sq" run --resume "$d" >"$d.2.log" 2>&1 || true
  mpirun_np 2 "$sq" run --resume "$d" >"$d.3.log" 2>&1 || { cat "$d.3.log"; fail "twice: resume"; }
  check_same "$d" "killed, resumed and killed again, resumed"
  ;;
random-kills)
  # 12 seeded trials, kill -9 of one rank at a random moment of its work: odd trials at a random
  # micro-batch of a forward pass (always inside the work), even ones after a random delay drawn
  # from the reference run's block phase (wherever the process is then: HDF5, MPI, manifests).
  ts() { grep -m1 "$1" "$work/ref.log" | sed 's/^\[ *\([0-9.]*\)s\].*/\1/'; }
  phase_ms=$(awk -v a="$(ts 'block 1/4')" -v b="$(ts 'blocks quantized')" 'BEGIN { printf "%d", (b - a) * 1000 + 50 }')
  echo "block phase of the reference run: about $phase_ms ms"
  RANDOM=20261123
  killed=0
  for trial in $(seq 1 12); do
    np=$((2 + trial % 3))
    resume_np=$((1 + RANDOM % 4))
    victim=$((RANDOM % np))
    if ((trial % 2)); then
      fault="forward.micro_batch@$victim#$((1 + RANDOM % 4))"
    else
      fault="after-ms:$((RANDOM % phase_ms))@$victim"
    fi
    fault_then_resume "random$trial" "$np" "$resume_np" "$fault"
    if ! grep -q "run: done" "$work/random$trial.log"; then killed=$((killed + 1)); fi
  done
  echo "random kills: $killed of 12 runs were killed before finishing"
  ((killed >= 8)) || fail "only $killed of 12 trials killed a run"
  ;;
corruption)
  # ~20 seeded bit flips and truncations anywhere in checkpoint files (block and hidden-state
  # files of a finished 4-rank run): detected by the manifest digest, recomputed, never a crash.
  write_recipe "$work/base.yaml" "$work/base"
  mpirun_np 4 "$sq" run "$work/base.yaml" >"$work/base.log" 2>&1 || { cat "$work/base.log"; fail "base"; }
  mapfile -t files < <(cd "$work/base" && find blocks hidden -name '*.h5' | LC_ALL=C sort)
  ((${#files[@]} >= 6)) || fail "expected block and hidden files, found ${files[*]}"
  python3 - "$work" "${files[@]}" <<'PY'
import os, random, shutil, sys
work, files = sys.argv[1], sys.argv[2:]
rng = random.Random(1123)
for trial in range(20):
    d = f"{work}/corrupt{trial}"
    shutil.copytree(f"{work}/base", d)
    shutil.rmtree(f"{d}/export")
    victim = f"{d}/{rng.choice(files)}"
    size = os.path.getsize(victim)
    if trial % 4 == 3:
        cut = rng.randrange(0, size)
        os.truncate(victim, cut)
        what = f"truncated to {cut} of {size} bytes"
    else:
        pos = rng.randrange(0, size)
        bit = rng.randrange(8)
        with open(victim, "r+b") as f:
            f.seek(pos)
            b = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([b ^ (1 << bit)]))
        what = f"bit {bit} of byte {pos} of {size} flipped"
    with open(f"{d}.what", "w") as f:
        f.write(f"{victim.removeprefix(d + '/')}: {what}\n")
PY
  for trial in $(seq 0 19); do
    d=$work/corrupt$trial
    np=$((1 + trial % 4))
    mpirun_np "$np" "$sq" run --resume "$d" >"$d.log" 2>&1 || { cat "$d.log"; fail "corrupt$trial: $(cat "$d.what")"; }
    grep -q "recomputing" "$d.log" || fail "corrupt$trial: corruption not reported ($(cat "$d.what"))"
    check_same "$d" "corrupt$trial, $(cat "$d.what"), resumed on $np ranks"
  done
  ;;
refusals)
  # An error on rank 2 while the others wait for it: non-zero within 60 s, naming rank 2.
  write_recipe "$work/err.yaml" "$work/err"
  start=$(date +%s)
  set +e
  SQ_FAULT="fail:block.start@2#1" timeout 60 "$mpiexec" -np 4 --oversubscribe "$sq" run "$work/err.yaml" >"$work/err.log" 2>&1
  rc=$?
  set -e
  ((rc != 0 && rc != 124)) || fail "injected failure: exit status $rc"
  grep -q "^error: rank 2: .*injected failure at block.start" "$work/err.log" || { cat "$work/err.log"; fail "no error line naming rank 2"; }
  echo "ok: failure on rank 2 -> exit $rc after $(($(date +%s) - start)) s: $(grep '^error: rank 2' "$work/err.log")"
  # A run directory that cannot be created (a path under a regular file) is refused before work.
  echo x >"$work/plainfile"
  write_recipe "$work/bad.yaml" "$work/plainfile/run"
  if mpirun_np 2 "$sq" run "$work/bad.yaml" >"$work/bad.log" 2>&1; then fail "run dir under a file accepted"; fi
  grep -q "^error: .*plainfile/run.*cannot create" "$work/bad.log" || { cat "$work/bad.log"; fail "bad run dir message"; }
  ! grep -q "calibrate" "$work/bad.log" || fail "work started before the run directory was refused"
  [[ $(grep -c '^error: ' "$work/bad.log") == 1 ]] || fail "expected one error line: $(cat "$work/bad.log")"
  echo "ok: $(grep '^error: ' "$work/bad.log")"
  # device: cuda where no GPU can run it (no device, or a build without CUDA): refused before any
  # work with one line, nothing created. (With a GPU, tests/gpu covers the device forward.)
  if ! nvidia-smi -L >/dev/null 2>&1; then
    write_recipe "$work/gpu.yaml" "$work/gpu"
    echo "device: cuda" >>"$work/gpu.yaml"
    if mpirun_np 2 "$sq" run "$work/gpu.yaml" >"$work/gpu.log" 2>&1; then fail "device: cuda accepted without a GPU"; fi
    grep -q "^error: .*gpu.yaml: .*device: cuda, but" "$work/gpu.log" || { cat "$work/gpu.log"; fail "device: cuda message"; }
    [[ $(grep -c '^error: ' "$work/gpu.log") == 1 ]] || fail "expected one error line: $(cat "$work/gpu.log")"
    [[ ! -e $work/gpu ]] || fail "a refused device: cuda run created its directory"
    echo "ok: $(grep '^error: ' "$work/gpu.log")"
  fi
  # A mismatched recipe is refused on resume, saying what differs; the run is left as it was.
  write_recipe "$work/other.yaml" "$work/ref" 0.5
  before=$(cd "$work/ref" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum)
  if mpirun_np 2 "$sq" run --resume "$work/ref" "$work/other.yaml" >"$work/mismatch.log" 2>&1; then
    fail "mismatched recipe accepted"
  fi
  grep -q "^error: .*recipe differs.*alpha: 0.8 in the run, 0.5 now" "$work/mismatch.log" ||
    { cat "$work/mismatch.log"; fail "mismatch message"; }
  after=$(cd "$work/ref" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum)
  [[ $before == "$after" ]] || fail "a refused resume changed the run directory"
  echo "ok: $(grep '^error: ' "$work/mismatch.log")"
  # A new run into a finished run's directory is refused, untouched.
  if mpirun_np 1 "$sq" run "$work/ref.yaml" >"$work/again.log" 2>&1; then fail "non-empty run dir accepted"; fi
  grep -q "not empty; continue it with --resume" "$work/again.log" || fail "non-empty message"
  # --output starts a new run elsewhere than the recipe's output (the recipe hash ignores it).
  mpirun_np 2 "$sq" run "$work/ref.yaml" --output "$work/elsewhere" >"$work/elsewhere.log" 2>&1 ||
    { cat "$work/elsewhere.log"; fail "--output"; }
  check_same "$work/elsewhere" "--output: the run went to the directory given"
  if "$sq" run --resume "$work/elsewhere" --output "$work/x" >"$work/both.log" 2>&1; then fail "--resume with --output accepted"; fi
  grep -q "^error: .*--output is for a new run" "$work/both.log" || fail "--resume --output message"
  # Resuming a finished run recomputes nothing and exports the same bytes.
  mpirun_np 3 "$sq" run --resume "$work/ref" >"$work/noop.log" 2>&1 || { cat "$work/noop.log"; fail "noop resume"; }
  ! grep -q "calibrate " "$work/noop.log" || fail "a finished run recomputed a stage on resume"
  check_same "$work/ref" "resume of a finished run (nothing recomputed)"
  ;;
signals)
  # Preemption: SIGUSR1 (the warning before a time limit) and SIGTERM stop every rank at a unit
  # boundary (or abandon the unit), exit 3, and the resume gives the reference export. A bigger
  # model so that the run is still going when the signal comes.
  $sq synth --arch llama --out "$work/big" --hidden 256 --layers 8 --heads 4 --vocab 256 \
    --max-positions 128 --seq-len 64 --calib-seqs 64 --eval-seqs 0 --seed 3 >/dev/null
  big_recipe() {
    cat >"$1" <<YAML
model: $work/big
output: $2
data: {calibration: $work/big/calib.npy, micro_batch: 4}
scheme:
  weights: {bits: 8, granularity: channel}
  activations: {bits: 8, granularity: tensor, dynamic: false}
stages: [smoothquant, quantize_weights]
YAML
  }
  big_recipe "$work/bigref.yaml" "$work/bigref"
  mpirun_np 1 "$sq" run "$work/bigref.yaml" >"$work/bigref.log" 2>&1 || { cat "$work/bigref.log"; fail "big reference"; }
  ref=$(export_digest "$work/bigref")
  # name, signal, target (mpirun | ranks), grace seconds
  signal_then_resume() {
    local name=$1 sig=$2 target=$3 grace=$4 d=$work/$1
    big_recipe "$d.yaml" "$d"
    SQ_STOP_GRACE=$grace mpirun_np 3 "$sq" run "$d.yaml" >"$d.log" 2>&1 &
    local pid=$!
    # Signal when rank 1 has just started the calibration pass of block 4 (16 micro-batches).
    for _ in $(seq 1 1000); do grep -q "block 4/8 calibrate\|block 3/8 quantize_weights" "$d.log" 2>/dev/null && break; sleep 0.01; done
    sleep 0.03
    local pattern="^[^ ]*shardquant run $d.yaml"  # the ranks (as srun delivers SIGTERM)
    [[ $target == ranks ]] || pattern="^[^ ]*(mpirun|mpiexec|orterun) .*$d.yaml"
    pkill -"$sig" -f "$pattern" || fail "$name: no process matched $pattern"
    local rc=0
    wait "$pid" || rc=$?
    [[ $rc == 3 ]] || { cat "$d.log"; fail "$name: exit status $rc, expected 3 (stopped)"; }
    grep -q "stopped; every unit finished so far is checkpointed" "$d.log" || fail "$name: no stop message"
    ! grep -q "run: done" "$d.log" || fail "$name: the run finished anyway"
    mpirun_np 2 "$sq" run --resume "$d" >"$d.resume.log" 2>&1 || { cat "$d.resume.log"; fail "$name: resume"; }
    grep -q "resume: [1-7] of 8 blocks complete" "$d.resume.log" || echo "note: $name: $(grep 'resume:' "$d.resume.log")"
    check_same "$d" "$name: $sig to $target, exit 3, resumed on 2 ranks"
  }
  signal_then_resume warning USR1 mpirun 120
  signal_then_resume terminate TERM ranks 120
  # On time, from inside: rank 1 gets the warning in the middle of a calibration pass (its 20th
  # micro-batch: its second block, 5/8, the 4th of 16). With the deadline far, it finishes that unit (and
  # checkpoints it) before stopping; with no time left, it abandons it at once.
  for grace in 120 0; do
    d=$work/inside$grace
    big_recipe "$d.yaml" "$d"
    rc=0
    SQ_STOP_GRACE=$grace SQ_FAULT="usr1:forward.micro_batch@1#20" mpirun_np 3 "$sq" run "$d.yaml" >"$d.log" 2>&1 || rc=$?
    [[ $rc == 3 ]] || { cat "$d.log"; fail "inside$grace: exit status $rc, expected 3"; }
    if [[ $grace == 0 ]]; then
      grep -q "\[r1\] WARN  abandoning the current unit" "$d.log" || { cat "$d.log"; fail "inside0: the unit was not abandoned"; }
      ! grep -q "\[r1\] info  block 5/8 calibrate" "$d.log" || fail "inside0: the unit finished anyway"
    else
      ! grep -q "abandoning" "$d.log" || fail "inside120: a unit was abandoned with time left"
      grep -q "\[r1\] info  block 5/8 calibrate" "$d.log" || { cat "$d.log"; fail "inside120: the unit was not finished"; }
    fi
    mpirun_np 2 "$sq" run --resume "$d" >"$d.resume.log" 2>&1 || { cat "$d.resume.log"; fail "inside$grace: resume"; }
    check_same "$d" "warning inside a unit, grace $grace s: $([[ $grace == 0 ]] && echo abandoned || echo finished), resumed"
  done
  ;;
*) fail "unknown case $case" ;;
esac
