#!/usr/bin/env bash
# W8A8 SmoothQuant of Llama-2-70B (configs/llama2-70b-w8a8.yaml) as a Slurm batch job that
# survives preemption and time limits: it requeues itself and resumes from its checkpoints.
# Submit from the repository root (docs/CLUSTER.md):
#
#   sbatch slurm/quantize_70b.sh [EXTRA shardquant run ARGS...]     e.g. --replicas 2
#
# Allocation: the #SBATCH lines below are literal defaults (no variables); override them on the
# sbatch command line, e.g. `sbatch --nodes=4 --time=2-00:00:00 slurm/quantize_70b.sh`, and on
# CPU-only nodes drop the GPU request with `sbatch --gres=none ...`. Size a run first with
# `build/shardquant plan configs/llama2-70b-w8a8.yaml --ranks N --gpus-per-node G`.
#
# Run settings (environment variables; relative paths start from the submit directory):
#   SQ_RECIPE        recipe (default: configs/llama2-70b-w8a8.yaml of this repository)
#   SQ_RUN_DIR       run directory (default: the recipe's `output:` line); a new run is started
#                    there with --output. The job resumes when SQ_RUN_DIR/run.json exists.
#   SQ_BIN           shardquant binary (default: build/shardquant of this repository)
#   SQ_LAUNCHER      auto (default: srun --mpi=pmix when `srun --mpi=list` offers pmix, else
#                    srun --mpi=pmi2, else mpirun; the job log says which and why) | srun | mpirun
#   SQ_LAUNCHER_ARGS extra launcher options, split on spaces (e.g. "--cpu-bind=cores")
#   SQ_STOP_GRACE    seconds (default 120): on the warning signal each rank finishes its current
#                    unit of work only if it ends within this; keep it well below the
#                    --signal lead time (600 s) minus Slurm's up-to-60-s jitter
#   SQ_HOME          repository root (default: the parent of this script's folder)
#
# Exit status: 0 when the run finished; the launcher's status on a genuine failure (no requeue).
# After a stop (SIGUSR1 / time limit) the job requeues itself and resumes (SLURM_RESTART_COUNT).
#
#SBATCH --job-name=sq-llama2-70b
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

# Slurm runs a copy of this script from its spool directory: find the repository from the path
# the job was submitted with (Command=, relative to the submit directory).
sq_script=${BASH_SOURCE[0]}
if [[ -n ${SLURM_JOB_ID:-} ]]; then
  sq_cmd=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o ' Command=[^ ]*' | cut -d= -f2- || true)
  if [[ -n $sq_cmd && $sq_cmd != "(null)" ]]; then
    [[ $sq_cmd == /* ]] || sq_cmd=${SLURM_SUBMIT_DIR:-.}/$sq_cmd
    sq_script=$sq_cmd
  fi
fi
sq_home=${SQ_HOME:-$(cd "$(dirname "$sq_script")/.." && pwd)}
[[ -f $sq_home/slurm/common.sh ]] ||
  { echo "sq-slurm: error: $sq_home/slurm/common.sh not found; set SQ_HOME to the repository" >&2; exit 2; }
source "$sq_home/slurm/common.sh"

sq_default_recipe=configs/llama2-70b-w8a8.yaml
sq_main "$@"
