# shellcheck shell=bash
# Shared body of the sbatch scripts (slurm/quantize_*.sh): sourced, not run. The calling script
# sets sq_default_recipe (relative to the repository) and sq_home (the repository root), then
# calls `sq_main "$@"`. Settings come from environment variables (documented in the scripts and
# docs/CLUSTER.md); allocation settings from sbatch options.
#
# What a job does:
#   1. checks its settings and picks the launcher (srun --mpi=pmix|pmi2, or mpirun), saying why;
#   2. `shardquant run --resume RUN_DIR RECIPE` when RUN_DIR/run.json exists (a requeued or
#      resubmitted job), else `shardquant run RECIPE` (a new run writes to the recipe's output:,
#      which must be RUN_DIR);
#   3. runs the launcher in the background and waits, so the signal traps can run:
#      USR1 (sbatch --signal=B:USR1@N, the time-limit warning, or scancel --signal=USR1 --batch)
#        is forwarded to the launcher, which forwards it to every rank: each rank finishes its
#        current unit of work if it ends within SQ_STOP_GRACE seconds, the ranks agree and exit
#        with status 3; the job then requeues itself (scontrol requeue) and resumes when it
#        starts again.
#      TERM (scancel, time limit, scontrol requeue, preemption) is forwarded too; the job
#        requeues itself only at its time limit; after scancel it stays cancelled; after
#        scontrol requeue or preemption in REQUEUE mode Slurm has already requeued it.
#   4. exits 0 when the run is finished, non-zero on a genuine failure (never requeued).

sq_log() { echo "sq-slurm: $*"; }
sq_die() { echo "sq-slurm: error: $*" >&2; exit 2; }

# Status with which shardquant run reports "stopped on request; resume with --resume".
readonly sq_status_stopped=3

# An absolute path: relative ones start from the job's working directory (the submit directory
# unless sbatch --chdir says otherwise).
sq_abs() { realpath -m -- "$1"; }

# The recipe's top-level `output:` when written as a plain scalar (`output: ../runs/x`, optionally
# quoted, optionally followed by a comment), resolved relative to the recipe's directory as
# shardquant does; empty when the line is missing or in another form.
sq_recipe_output() {
  local recipe=$1 value
  value=$(sed -n 's/^output:[[:space:]]*//p' "$recipe" | head -n 1)
  value=${value%%[[:space:]]#*}
  value=${value%"${value##*[![:space:]]}"}
  if [[ $value =~ ^\"([^\"]*)\"$ ]] || [[ $value =~ ^\'([^\']*)\'$ ]]; then
    value=${BASH_REMATCH[1]}
  fi
  [[ -n $value && $value != [\[\{\|\>\&\*\!]* ]] || return 0
  if [[ $value == /* ]]; then
    sq_abs "$value"
  else
    sq_abs "$(dirname -- "$recipe")/$value"
  fi
}

# Sets sq_launcher (an array: the launcher and its options) and logs which one and why.
sq_choose_launcher() {
  local want=${SQ_LAUNCHER:-auto} mpi_list='' mpi=''
  case $want in
  auto | srun)
    command -v srun >/dev/null || {
      [[ $want == auto ]] || sq_die "SQ_LAUNCHER=srun but srun is not on PATH"
    }
    if command -v srun >/dev/null; then
      mpi_list=$(srun --mpi=list 2>&1 || true)
      if grep -qw pmix <<<"$mpi_list"; then
        mpi=pmix
      elif grep -qw pmi2 <<<"$mpi_list"; then
        mpi=pmi2
      fi
    fi
    if [[ -n $mpi ]]; then
      sq_launcher=(srun "--mpi=$mpi")
      if [[ $mpi == pmix ]]; then
        sq_log "launcher: srun --mpi=pmix (SQ_LAUNCHER=$want; srun --mpi=list offers pmix)"
      else
        sq_log "launcher: srun --mpi=pmi2 (SQ_LAUNCHER=$want; srun --mpi=list offers no pmix," \
          "but pmi2: the MPI library must support PMI2, or set SQ_LAUNCHER=mpirun)"
      fi
    elif [[ $want == srun ]]; then
      sq_die "SQ_LAUNCHER=srun but srun --mpi=list offers neither pmix nor pmi2:" \
        "$(tr '\n' ' ' <<<"$mpi_list"); set SQ_LAUNCHER=mpirun"
    else
      sq_log "launcher: mpirun (SQ_LAUNCHER=auto; srun --mpi=list offers neither pmix nor pmi2:" \
        "$(tr '\n' ' ' <<<"${mpi_list:-srun not found}" | cut -c1-200))"
      want=mpirun
    fi
    ;;
  mpirun) sq_log "launcher: mpirun (SQ_LAUNCHER=mpirun)" ;;
  *) sq_die "SQ_LAUNCHER must be auto, srun or mpirun, not '$want'" ;;
  esac
  if [[ $want == mpirun ]]; then
    command -v mpirun >/dev/null || sq_die "mpirun is not on PATH (load your MPI module)"
    # mpirun takes the hosts and slots per node from the allocation.
    sq_launcher=(mpirun -np "$SLURM_NTASKS" -x SQ_STOP_GRACE)
    # sbatch --overcommit: more tasks than CPUs, which mpirun refuses unless told.
    [[ ${SLURM_OVERCOMMIT:-0} != 1 ]] || sq_launcher+=(--oversubscribe)
    if [[ $(id -u) == 0 ]]; then
      # Open MPI's mpirun refuses to run as root unless told twice (containers, test clusters).
      export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      sq_log "running as root: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    fi
  fi
  if [[ -n ${SQ_LAUNCHER_ARGS:-} ]]; then
    local -a extra
    read -r -a extra <<<"$SQ_LAUNCHER_ARGS"
    sq_launcher+=("${extra[@]}")
  fi
}

# Signal handling. The traps only record and forward: bash runs a trap only between commands or
# while it waits, so the launcher runs in the background and sq_main waits for it.
sq_usr1=0            # a USR1 arrived (stop and come back)
sq_term=0            # a TERM arrived (Slurm ends the job: cancel, time limit, requeue, preemption)
sq_term_reason=      # Slurm's job reason when TERM arrived (TimeLimit at the time limit)
sq_term_restarts=    # Slurm's restart count when TERM arrived (rises when Slurm requeued it)
sq_requeued=0        # this script asked Slurm to requeue the job
sq_signals=0         # signals received so far
sq_launcher_pid=

sq_forward() {  # signal
  local sig=$1
  sq_signals=$((sq_signals + 1))
  if ((sq_requeued)); then
    # The job is being requeued by this script: Slurm ends it now; nothing left to do.
    exit 0
  fi
  if [[ $sig == USR1 ]]; then
    sq_usr1=1
  else
    sq_term=1
    local info
    info=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null || true)
    sq_term_reason=$(grep -o ' Reason=[^ ]*' <<<"$info" | cut -d= -f2 || true)
    sq_term_restarts=$(grep -o ' Restarts=[0-9]*' <<<"$info" | cut -d= -f2 || true)
  fi
  sq_log "$(date '+%F %T') SIG$sig received${sq_term_reason:+ (job reason: $sq_term_reason)}:" \
    "forwarding it to the launcher (pid ${sq_launcher_pid:-none yet})"
  [[ -z $sq_launcher_pid ]] || kill -s "$sig" "$sq_launcher_pid" 2>/dev/null || true
}

sq_main() {
  [[ -n ${SLURM_JOB_ID:-} ]] || sq_die "not inside a Slurm job: submit with sbatch (see docs/CLUSTER.md)"
  trap 'sq_forward USR1' USR1
  trap 'sq_forward TERM' TERM

  local restarts=${SLURM_RESTART_COUNT:-0}
  local recipe=${SQ_RECIPE:-$sq_home/$sq_default_recipe}
  local bin=${SQ_BIN:-$sq_home/build/shardquant}
  recipe=$(sq_abs "$recipe")
  bin=$(sq_abs "$bin")
  [[ -f $recipe ]] || sq_die "recipe $recipe not found (SQ_RECIPE)"
  [[ -x $bin ]] || sq_die "$bin is not an executable (SQ_BIN; build with scripts/build.sh)"

  # The run directory: SQ_RUN_DIR, else the recipe's output. A new run is started there with
  # --output; a requeued job finds run.json there and resumes.
  local run_dir
  if [[ -n ${SQ_RUN_DIR:-} ]]; then
    run_dir=$(sq_abs "$SQ_RUN_DIR")
  else
    run_dir=$(sq_recipe_output "$recipe")
    [[ -n $run_dir ]] || sq_die "cannot read a plain 'output: DIR' line in $recipe; set SQ_RUN_DIR"
  fi

  local grace=${SQ_STOP_GRACE:-120}
  [[ $grace =~ ^[0-9]+$ ]] || sq_die "SQ_STOP_GRACE must be a number of seconds, not '$grace'"
  export SQ_STOP_GRACE=$grace

  sq_log "$(date '+%F %T') job $SLURM_JOB_ID (${SLURM_JOB_NAME:-?}) start: SLURM_RESTART_COUNT=$restarts" \
    "(attempt $((restarts + 1)))"
  sq_log "nodes: ${SLURM_JOB_NUM_NODES:-?} (${SLURM_JOB_NODELIST:-?}); ranks: ${SLURM_NTASKS:-?}" \
    "(${SLURM_TASKS_PER_NODE:-?} per node); GPUs: ${SLURM_GPUS_ON_NODE:-none} per node"
  [[ -n ${SLURM_NTASKS:-} ]] || sq_die "SLURM_NTASKS is not set: give sbatch --ntasks or --ntasks-per-node"
  local -a sq_launcher
  sq_choose_launcher

  local -a run=("$bin" run)
  if [[ -f $run_dir/run.json ]]; then
    sq_log "resume: $run_dir/run.json exists"
    run+=(--resume "$run_dir" "$recipe")
  else
    sq_log "new run: no $run_dir/run.json"
    run+=("$recipe" --output "$run_dir")
  fi
  run+=("$@")
  sq_log "SQ_STOP_GRACE=$grace s (a stop request finishes only work that ends within it)"
  sq_log "command: ${sq_launcher[*]} ${run[*]}"

  local start=$SECONDS status
  if ((sq_signals > 0)); then
    # A stop request arrived while the job was starting: nothing to run now.
    sq_log "a stop was requested before the launch: not launching"
    status=$sq_status_stopped
  else
    "${sq_launcher[@]}" "${run[@]}" &
    sq_launcher_pid=$!
  fi
  # A trapped signal interrupts wait (status > 128) while the launcher may still run: wait again
  # after every signal (bash keeps the status of a launcher that has exited meanwhile).
  while [[ -n $sq_launcher_pid ]]; do
    local signals=$sq_signals
    if wait "$sq_launcher_pid"; then status=0; else status=$?; fi
    ((sq_signals != signals)) || break
  done
  if [[ -n $sq_launcher_pid ]]; then
    sq_launcher_pid=
    sq_log "$(date '+%F %T') launcher exited with status $status after $((SECONDS - start)) s"
  fi

  if ((status == 0)); then
    sq_log "run finished: $run_dir (exit 0, no requeue)"
    return 0
  fi

  # Why did it stop, and should the job come back?
  local why=
  if ((sq_term)); then
    if [[ $sq_term_reason == TimeLimit ]]; then
      why="time limit reached (SIGTERM)"
    elif [[ -n $sq_term_restarts && $sq_term_restarts -gt $restarts ]]; then
      sq_log "requeue: none needed: Slurm requeued the job itself (scontrol requeue or" \
        "preemption; restart count $restarts -> $sq_term_restarts); it resumes when it starts again"
      exit "$status"
    else
      sq_log "requeue: no: SIGTERM without a time limit or requeue (scancel?; job reason:" \
        "${sq_term_reason:-unknown}); the job stays ended; resubmit the same way to resume"
      exit "$status"
    fi
  elif ((sq_usr1)); then
    why="stop requested by SIGUSR1"
  elif ((status == sq_status_stopped)); then
    why="the ranks reported a stop (status $sq_status_stopped) without a signal to this script"
  else
    sq_log "failed: status $status and no stop was requested: no requeue (see the errors above;" \
      "after fixing the cause, resubmit: it resumes from $run_dir)"
    exit "$status"
  fi
  if ((status != sq_status_stopped)); then
    sq_log "launcher status $status, not $sq_status_stopped: the ranks were killed, not stopped" \
      "cleanly (a shardquant without stop handling, or the grace ran out); checkpoints are crash-safe"
  fi
  sq_log "requeue: yes ($why): scontrol requeue $SLURM_JOB_ID; the next attempt resumes from $run_dir"
  sq_requeued=1
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    sq_log "requeue failed (a job submitted with --no-requeue cannot be requeued):" \
      "resubmit the same way; it resumes from $run_dir"
    exit "$status"
  fi
  # Slurm now ends this attempt (SIGTERM to this script).
  exit 0
}
