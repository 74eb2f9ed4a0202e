#!/usr/bin/env bash
# The sbatch scripts (slurm/quantize_*.sh) on a real one-node Slurm cluster (tests/slurm/cluster.sh):
# a run interrupted by the warning signal or requeued from outside comes back by itself, resumes
# from its checkpoints and exports the same bytes as an uninterrupted one-rank run.
# Usage: test_slurm.sh MPIEXEC SHARDQUANT SCRATCH_DIR
# Needs root (slurmd) and the Debian packages of scripts/install-deps.sh; exits 77 (skipped)
# when not root.
#
# Cases (each job: 2 ranks on the 2-core node, --overcommit, --gres=none: the node has no GPUs):
#   A  quantize_70b.sh, srun: `scancel --signal=USR1 --batch` mid-run (what --signal=B:USR1@N
#      delivers before the time limit) -> the script forwards it, requeues the job, the next
#      attempt resumes -> identical export
#   B  quantize_70b.sh, srun: `scontrol requeue` mid-run -> Slurm requeues, the script does not
#      requeue twice, the next attempt resumes -> identical export
#   C  quantize_175b.sh, mpirun, uninterrupted -> identical export
#   D  the stop contract with stand-in ranks (a shell script as SQ_BIN) that exit 3 on SIGUSR1,
#      under srun and under mpirun: every rank gets the signal and SQ_STOP_GRACE, the job requeues
#      and resumes with --resume RUN_DIR RECIPE
#   E  scancel of a running job: it stays cancelled (the script must not requeue it)
#   F  the real warning: --time=1 --signal=B:USR1@55 with stand-in ranks that never finish by
#      themselves: Slurm sends USR1 before the limit, the job requeues itself and resumes
set -euo pipefail
mpiexec=$1
sq=$(realpath "$2")
work=$3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
start_s=$SECONDS

if [[ $(id -u) != 0 ]]; then
  echo "skipped: the test cluster's slurmd must run as root"
  exit 77
fi
# mpirun (the reference run, SQ_LAUNCHER=mpirun jobs) refuses root unless told twice.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rm -rf "$work" && mkdir -p "$work"
work=$(cd "$work" && pwd)

# The cluster lives in a short path (Unix socket paths are limited); logs are copied to $work.
cluster=$(mktemp -d "${TMPDIR:-/tmp}/sq-slurm.XXXXXX")
rmdir "$cluster"
failed=1
cleanup() {
  set +e
  if ((failed)); then
    bash "$here/cluster.sh" logs "$cluster"
  fi
  if [[ -f $cluster/env.sh ]]; then
    # End the test's jobs first: stopping slurmd leaves running job steps behind.
    squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null
    for _ in $(seq 1 30); do
      [[ -z $(squeue -h -t R,CG 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  bash "$here/cluster.sh" stop "$cluster"
  mkdir -p "$work/cluster-logs"
  cp -r "$cluster/log/." "$work/cluster-logs/" 2>/dev/null
  rm -rf "$cluster"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP  # so that the EXIT trap stops the cluster
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
elapsed() { echo "$((SECONDS - start_s)) s"; }

bash "$here/cluster.sh" start "$cluster"
# shellcheck source=/dev/null
source "$cluster/env.sh"

# A 12-block LLaMA with 384 x 64 calibration tokens: ~10 s on 2 ranks here, long enough to be
# interrupted after a few blocks, short enough for the test. synth samples its calibration
# sequences from the model (slow); 16 sampled sequences repeated 24 times do as well here.
blocks=12
$sq synth --arch llama --out "$work/model" --hidden 256 --layers $blocks --heads 4 --vocab 256 \
  --max-positions 128 --seq-len 64 --calib-seqs 16 --eval-seqs 0 --seed 7 >/dev/null
python3 - "$work/model/calib.npy" 24 <<'PY'
import ast, struct, sys
path, times = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
assert data[:6] == b"\x93NUMPY" and data[6] == 1, "expected a version 1 .npy file"
(hlen,) = struct.unpack("<H", data[8:10])
header = ast.literal_eval(data[10:10 + hlen].decode("latin1"))
rows, cols = header["shape"]
header["shape"] = (rows * times, cols)
text = repr(header)
text += " " * ((-(10 + len(text) + 1)) % 64) + "\n"
with open(path, "wb") as f:
    f.write(data[:8] + struct.pack("<H", len(text)) + text.encode("latin1") + data[10 + hlen:] * times)
PY
write_recipe() {  # file, output dir
  cat >"$1" <<YAML
model: $work/model
output: $2
data: {calibration: $work/model/calib.npy, micro_batch: 4}
scheme:
  weights: {bits: 8, granularity: channel}
  activations: {bits: 8, granularity: tensor, dynamic: false}
calibration: {inputs: fp}
stages:
  - smoothquant: {alpha: 0.8}
  - quantize_weights
YAML
}
# Digest of every file of an export, names included.
export_digest() { (cd "$1/export" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16; }

# The stop contract of `shardquant run` played by stand-in ranks (cases D, E, F): they exit 3 on
# SIGUSR1 or SIGTERM and never finish by themselves; --resume succeeds at once.
cat >"$work/fake-shardquant" <<'SH'
#!/usr/bin/env bash
# Stand-in for shardquant run: args run [--resume DIR] RECIPE.
rank=${OMPI_COMM_WORLD_RANK:-${SLURM_PROCID:-?}}
if [[ $2 == --resume ]]; then
  echo "fake rank $rank: resume $3 $4"
  exit 0
fi
mkdir -p "$SQ_RUN_DIR" && touch "$SQ_RUN_DIR/run.json"
size=${OMPI_COMM_WORLD_SIZE:-${SLURM_NTASKS:-1}}
# Like the real ranks, which meet in a stop barrier before exiting: a rank that left at once
# would make mpirun kill the others before they saw the signal.
stop() {
  echo "fake rank $rank: $1"
  touch "$SQ_RUN_DIR/stopped.$rank"
  for _ in $(seq 100); do
    (($(find "$SQ_RUN_DIR" -name 'stopped.*' | wc -l) >= size)) && break
    sleep 0.1
  done
  exit 3
}
trap 'stop "SIGUSR1 (SQ_STOP_GRACE=$SQ_STOP_GRACE)"' USR1
trap 'stop SIGTERM' TERM
echo "fake rank $rank: running"
while :; do sleep 0.1; done
SH
chmod +x "$work/fake-shardquant"

# Allocation overrides for this node: 2 tasks on 2 cores, no GPUs, 1 CPU per task, 30 minutes
# (the --signal warning, 600 s before the limit, never fires by itself here).
overrides=(--nodes=1 --ntasks-per-node=2 --overcommit --gres=none --cpus-per-task=1 --time=30)

# Job info from slurmctld: "STATE RESTARTS EXITCODE" (state COMPLETED, RUNNING, PENDING, ...).
job_info() {
  local info
  info=$(scontrol show job -o "$1" 2>/dev/null) || return 0
  echo "$(grep -o 'JobState=[^ ]*' <<<"$info" | cut -d= -f2)" \
    "$(grep -o ' Restarts=[^ ]*' <<<"$info" | cut -d= -f2)" \
    "$(grep -o ' ExitCode=[^ ]*' <<<"$info" | cut -d= -f2)"
}
job_failed() {  # id, out file, message
  echo "--- job $1: $(job_info "$1")"
  echo "--- job output $2:"
  cat "$2" 2>/dev/null || echo "(none)"
  fail "job $1: $3"
}
# Polls every 0.5 s until `cond` (a command) succeeds; fails after `secs`.
wait_for() {  # id, out, secs, what, cond...
  local id=$1 out=$2 secs=$3 what=$4 i
  shift 4
  for ((i = 0; i < secs * 2; i++)); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  job_failed "$id" "$out" "timed out after $secs s waiting for: $what"
}
is_final() {  # id: the job ended for good (not requeued)
  local state
  read -r state _ <<<"$(job_info "$1")"
  [[ $state =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$ ]]
}
restarts_at_least() {  # id, n
  local restarts
  read -r _ restarts _ <<<"$(job_info "$1")"
  [[ ${restarts:-0} -ge $2 ]]
}
fake_ranks_running() { [[ $(grep -c "fake rank .: running" "$1" 2>/dev/null) == 2 ]]; }
has_line() { grep -q -- "$2" "$1" 2>/dev/null; }
checkpoint_exists() { [[ -f $1 ]]; }
expect_line() {  # id, out, pattern, what
  grep -q -- "$3" "$2" || job_failed "$1" "$2" "no line matching '$3' ($4)"
}

submit() {  # out, script, VAR=value... --sbatch-option...  -> prints the job id
  local out=$1 script=$2 arg
  local -a vars=() options=()
  shift 2
  for arg in "$@"; do
    if [[ $arg == --* ]]; then options+=("$arg"); else vars+=("$arg"); fi
  done
  env "${vars[@]}" sbatch --parsable --chdir="$work" --output="$out" "${overrides[@]}" \
    "${options[@]}" "$script" | cut -d';' -f1
}

# F is submitted first, so that its wait for Slurm overlaps the reference run (the jobs here run
# one at a time): the warning signal from Slurm itself, which checks time limits every ~30 s, so
# the warning comes 5-35 s after the start.
write_recipe "$work/F.yaml" "$work/F"
f_id=$(submit "$work/F.out" "$repo/slurm/quantize_70b.sh" SQ_RECIPE="$work/F.yaml" SQ_RUN_DIR="$work/F" \
  SQ_BIN="$work/fake-shardquant" --time=1 --signal=B:USR1@55)

write_recipe "$work/ref.yaml" "$work/ref"
t0=$SECONDS
timeout 300 "$mpiexec" -np 1 "$sq" run "$work/ref.yaml" >"$work/ref.log" 2>&1 ||
  { cat "$work/ref.log"; fail "reference run"; }
ref=$(export_digest "$work/ref")
echo "reference export $ref (mpirun -np 1: $((SECONDS - t0)) s) [$(elapsed)]"

# A (USR1) or B (scontrol requeue): interrupt a real run after 3 of 12 blocks are checkpointed.
interrupt_case() {  # name, how
  local name=$1 how=$2 run=$work/$1 out=$work/$1.out id t0 state restarts code
  write_recipe "$work/$name.yaml" "$run"
  t0=$SECONDS
  id=$(submit "$out" "$repo/slurm/quantize_70b.sh" SQ_RECIPE="$work/$name.yaml" SQ_RUN_DIR="$run" \
    SQ_BIN="$sq")
  echo "$name: job $id submitted (slurm/quantize_70b.sh, $how)"
  wait_for "$id" "$out" 120 "3 blocks checkpointed" checkpoint_exists "$run/blocks/block-00002.h5"
  ! has_line "$out" "run finished" || job_failed "$id" "$out" "finished before it was interrupted"
  case $how in
  usr1) scancel --signal=USR1 --batch "$id" ;;
  requeue) scontrol requeue "$id" ;;
  esac
  echo "$name: $how after $((SECONDS - t0)) s ($(find "$run/blocks" -name '*.h5' | wc -l) block files)"
  wait_for "$id" "$out" 60 "a requeue (Restarts >= 1)" restarts_at_least "$id" 1
  echo "$name: requeued after $((SECONDS - t0)) s"
  wait_for "$id" "$out" 300 "the end of the job" is_final "$id"
  read -r state restarts code <<<"$(job_info "$id")"
  [[ $state == COMPLETED && $code == 0:0 && $restarts == 1 ]] ||
    job_failed "$id" "$out" "ended $state, exit code $code, $restarts restarts (want COMPLETED 0:0, 1)"
  expect_line "$id" "$out" "SLURM_RESTART_COUNT=1 (attempt 2)" "the second attempt logs its restart count"
  expect_line "$id" "$out" "launcher: srun --mpi=pmix" "the launcher and why"
  expect_line "$id" "$out" "resume: $run/run.json exists" "the second attempt resumes"
  expect_line "$id" "$out" "info  resume: " "shardquant resumed from its checkpoints"
  expect_line "$id" "$out" "run finished: $run" "the job says it finished"
  if [[ $how == usr1 ]]; then
    expect_line "$id" "$out" "SIGUSR1 received" "the trap saw the warning signal"
    expect_line "$id" "$out" "launcher exited with status 3" "the ranks stopped cleanly (status 3)"
    expect_line "$id" "$out" "requeue: yes (stop requested by SIGUSR1)" "the job requeued itself"
  else
    expect_line "$id" "$out" "SIGTERM received" "the trap saw Slurm's SIGTERM"
    expect_line "$id" "$out" "requeue: none needed: Slurm requeued the job itself" "no second requeue"
  fi
  local got
  got=$(export_digest "$run") || job_failed "$id" "$out" "no export"
  [[ $got == "$ref" ]] || job_failed "$id" "$out" "export $got differs from the reference $ref"
  # Work before the interruption was kept: the second attempt calibrated fewer than 12 blocks.
  local recalibrated
  recalibrated=$(sed -n '/SLURM_RESTART_COUNT=1/,$p' "$out" | grep -c "/$blocks calibrate" || true)
  ((recalibrated < blocks)) ||
    job_failed "$id" "$out" "the resumed attempt calibrated all $recalibrated blocks again"
  echo "ok: $name: $how mid-run -> requeued (SLURM_RESTART_COUNT=1), resumed" \
    "($recalibrated of $blocks blocks calibrated again), identical export, $((SECONDS - t0)) s [$(elapsed)]"
}

interrupt_case A usr1
interrupt_case B requeue

# C: the 175B script with mpirun, uninterrupted.
run=$work/C
out=$work/C.out
write_recipe "$work/C.yaml" "$run"
t0=$SECONDS
id=$(submit "$out" "$repo/slurm/quantize_175b.sh" SQ_RECIPE="$work/C.yaml" SQ_BIN="$sq" \
  SQ_LAUNCHER=mpirun)
wait_for "$id" "$out" 300 "the end of the job" is_final "$id"
read -r state restarts code <<<"$(job_info "$id")"
[[ $state == COMPLETED && $code == 0:0 ]] || job_failed "$id" "$out" "ended $state, exit code $code"
expect_line "$id" "$out" "launcher: mpirun (SQ_LAUNCHER=mpirun)" "the launcher"
expect_line "$id" "$out" "new run: no $run/run.json" "a new run (SQ_RUN_DIR from the recipe)"
expect_line "$id" "$out" "run finished: $run" "finished"
[[ $(export_digest "$run") == "$ref" ]] || job_failed "$id" "$out" "export differs from the reference"
echo "ok: C: slurm/quantize_175b.sh under mpirun -> identical export, $((SECONDS - t0)) s [$(elapsed)]"

for launcher in srun mpirun; do
  name=D-$launcher
  run=$work/$name
  out=$work/$name.out
  write_recipe "$work/$name.yaml" "$run"
  t0=$SECONDS
  id=$(submit "$out" "$repo/slurm/quantize_70b.sh" SQ_RECIPE="$work/$name.yaml" \
    SQ_RUN_DIR="$run" SQ_BIN="$work/fake-shardquant" SQ_LAUNCHER=$launcher SQ_STOP_GRACE=7)
  wait_for "$id" "$out" 60 "2 fake ranks running" fake_ranks_running "$out"
  scancel --signal=USR1 --batch "$id"
  wait_for "$id" "$out" 120 "the end of the job" is_final "$id"
  read -r state restarts code <<<"$(job_info "$id")"
  [[ $state == COMPLETED && $code == 0:0 && $restarts == 1 ]] ||
    job_failed "$id" "$out" "ended $state, exit code $code, $restarts restarts"
  [[ $(grep -c "fake rank .: SIGUSR1 (SQ_STOP_GRACE=7)" "$out") == 2 ]] ||
    job_failed "$id" "$out" "SIGUSR1 with SQ_STOP_GRACE did not reach both ranks"
  expect_line "$id" "$out" "launcher exited with status 3" "the launcher passes on status 3"
  expect_line "$id" "$out" "requeue: yes (stop requested by SIGUSR1)" "requeue"
  [[ $(grep -c "fake rank .: resume $run $work/$name.yaml" "$out") == 2 ]] ||
    job_failed "$id" "$out" "the second attempt did not run --resume RUN_DIR RECIPE on both ranks"
  ! grep -q "launcher status 3, not" "$out" || job_failed "$id" "$out" "status 3 not recognised"
  echo "ok: D: $launcher forwards SIGUSR1 to both ranks, exit 3 -> requeue -> --resume," \
    "$((SECONDS - t0)) s [$(elapsed)]"
done

# E: scancel ends a job for good (the TERM trap must not requeue it).
run=$work/E
out=$work/E.out
write_recipe "$work/E.yaml" "$run"
id=$(submit "$out" "$repo/slurm/quantize_70b.sh" SQ_RECIPE="$work/E.yaml" SQ_RUN_DIR="$run" \
  SQ_BIN="$work/fake-shardquant")
wait_for "$id" "$out" 60 "2 fake ranks running" fake_ranks_running "$out"
scancel "$id"
wait_for "$id" "$out" 60 "the end of the job" is_final "$id"
sleep 2  # a wrong requeue would show up here
read -r state restarts code <<<"$(job_info "$id")"
[[ $state == CANCELLED && $restarts == 0 ]] || job_failed "$id" "$out" "after scancel: $state, $restarts restarts"
expect_line "$id" "$out" "requeue: no: SIGTERM without a time limit or requeue" "no requeue"
echo "ok: E: scancel -> stays cancelled, not requeued [$(elapsed)]"

# F (submitted at the start).
run=$work/F
out=$work/F.out
id=$f_id
wait_for "$id" "$out" 150 "the end of the job" is_final "$id"
read -r state restarts code <<<"$(job_info "$id")"
[[ $state == COMPLETED && $code == 0:0 && $restarts == 1 ]] ||
  job_failed "$id" "$out" "ended $state, exit code $code, $restarts restarts"
expect_line "$id" "$out" "SIGUSR1 received" "Slurm's warning reached the batch script"
expect_line "$id" "$out" "requeue: yes (stop requested by SIGUSR1)" "requeue"
expect_line "$id" "$out" "fake rank 0: resume $run" "the second attempt resumed"
echo "ok: F: --signal=B:USR1@55 with --time=1 -> warning after" \
  "$(grep -m1 -o 'launcher exited with status 3 after [0-9]* s' "$out" | grep -o '[0-9]* s$')," \
  "requeued, resumed [$(elapsed)]"


failed=0
echo "all slurm cases passed in $(elapsed)"
