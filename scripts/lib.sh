# Shared by the scripts: timing helpers. Source it; it defines functions only.

now_ns() { date +%s%N; }
# "12.3" seconds since a now_ns start.
seconds_since() {
  local ms=$((($(now_ns) - $1) / 1000000))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}

# step NAME COMMAND...: runs the command, prints its time (also when it fails), keeps its status.
step() {
  local name=$1 start rc
  shift
  echo "== step $name: $*"
  start=$(now_ns)
  if "$@"; then rc=0; else rc=$?; fi
  if ((rc == 0)); then
    echo "== step $name: $(seconds_since "$start") s"
  else
    echo "== step $name: FAILED (exit $rc) after $(seconds_since "$start") s" >&2
  fi
  return "$rc"
}
