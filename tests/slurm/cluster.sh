#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, entirely inside one scratch directory: its own munged
# (own key and socket), slurmctld and slurmd on free ports, no systemd, nothing under /etc or /run.
# Several can run side by side. Debian 12 packages: munge slurmctld slurmd slurm-client
# (scripts/install-deps.sh). Runs as root (slurmd must).
#
# Usage: cluster.sh start DIR   DIR must not exist or be empty; prints "cluster: up ..." when the
#                               node is idle. Then `source DIR/env.sh` (exports SLURM_CONF) before
#                               sbatch/squeue/scontrol; jobs inherit it.
#        cluster.sh stop DIR    stops the daemons and waits for them to exit (idempotent)
#        cluster.sh logs DIR    prints the tail of every daemon log
#
# Settings that matter here (see docs/CLUSTER.md): cgroup plugins do not work without a mounted
# cgroup hierarchy, hence proctrack/linuxproc and task/none; AuthInfo cred_expire=10 and
# sched_interval=1 so that a requeued job restarts after ~11 s instead of 2 minutes; no accounting.
set -euo pipefail

usage() { echo "usage: $0 start|stop|logs DIR" >&2; exit 2; }
(($# == 2)) || usage
action=$1
dir=$2

log() { echo "cluster: $*"; }
die() { echo "cluster: error: $*" >&2; exit 1; }

# Two distinct free TCP ports (bound then released: a tiny race, acceptable for a test cluster).
free_ports() {
  python3 - <<'PY'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
}

pid_alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# Stops the daemon whose pid is in file $1 (SIGTERM, then SIGKILL after 20 s) and waits for it.
stop_daemon() {
  local pidfile=$1 name=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(<"$pidfile")
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    if pid_alive "$pid"; then
      log "$name (pid $pid) did not stop within 20 s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

start() {
  for cmd in munged mungekey slurmctld slurmd sinfo python3 runuser; do
    command -v "$cmd" >/dev/null || die "$cmd not found (bash scripts/install-deps.sh installs it)"
  done
  [[ $(id -u) == 0 ]] || die "must run as root (slurmd needs it)"
  if [[ -d $dir ]] && [[ -n $(ls -A "$dir") ]]; then die "$dir is not empty"; fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  chmod 0755 "$dir"
  # Unix socket paths are limited to 107 bytes; slurmd's step sockets are the longest.
  ((${#dir} <= 60)) || die "$dir is too long for Unix socket paths (at most 60 characters)"
  mkdir -p "$dir"/{state,spool,log,run}
  install -d -o munge -g munge -m 0755 "$dir/munge"

  # munged, as the munge user, with its own key and socket.
  local sock=$dir/munge/munge.socket
  runuser -u munge -- mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null
  runuser -u munge -- munged --socket="$sock" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed" ||
    die "munged failed to start: $(tail -n 5 "$dir/munge/munged.log" 2>/dev/null)"
  munge -n -S "$sock" | unmunge -S "$sock" >/dev/null || die "munge round trip failed"

  local ctld_port slurmd_port node
  read -r ctld_port slurmd_port < <(free_ports)
  # The node line as slurmd detects it (CPUs, sockets, cores, memory) without its NodeName.
  node=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
  cat >"$dir/slurm.conf" <<CONF
# Written by cluster.sh: a one-node test cluster on localhost.
ClusterName=sqtest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=10
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
# A requeued job may start again after cred_expire + 1 s; the main scheduling loop runs every
# 60 s by default, so without this a requeued job waits up to a minute more.
SchedulerParameters=sched_interval=1
KillWait=10
NodeName=localhost $node
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  printf 'export SLURM_CONF=%q\n' "$dir/slurm.conf" >"$dir/env.sh"
  export SLURM_CONF=$dir/slurm.conf

  slurmctld -c || die "slurmctld failed to start: $(tail -n 20 "$dir/log/slurmctld.log")"
  slurmd -N localhost || die "slurmd failed to start: $(tail -n 20 "$dir/log/slurmd.log")"
  local state=''
  for _ in $(seq 1 300); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.1
  done
  [[ $state == idle ]] || { logs; die "node not idle after 30 s (state '$state')"; }
  log "up in $dir (slurmctld port $ctld_port, slurmd port $slurmd_port, node: $node)"
}

stop() {
  [[ -d $dir ]] || return 0
  # slurmd first (it ends job steps), then slurmctld (saves state), then munged.
  stop_daemon "$dir/run/slurmd.pid" slurmd
  stop_daemon "$dir/run/slurmctld.pid" slurmctld
  stop_daemon "$dir/munge/munged.pid" munged
  log "stopped ($dir)"
}

logs() {
  local f
  for f in "$dir/log/slurmctld.log" "$dir/log/slurmd.log" "$dir/munge/munged.log"; do
    [[ -f $f ]] || continue
    echo "----- $(basename "$f") (last 60 lines)"
    tail -n 60 "$f"
  done
}

case $action in
start) start ;;
stop) stop ;;
logs) logs ;;
*) usage ;;
esac
