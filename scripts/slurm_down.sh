#!/usr/bin/env bash
# slurm_down.sh - stop the daemons scripts/slurm_up.sh started, and nothing else.
#
# A daemon is signalled only if $OURS/<name> records it ("pid starttime") and that pid is still
# the same process (same start time, same name): a recycled pid or a daemon someone else
# started is never touched. Jobs still on the cluster are cancelled first (KEEP_JOBS=1 skips).
# Packages, configs and the accounting database stay (slurm-up is fast the second time).
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
BASE=${PTYCHOSTAB_SLURM_BASE:-${TMPDIR:-/tmp}/ptychostab-slurm}
export SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
OURS=$BASE/run/ours
say() { echo "[slurm-down] $*"; }

ours() {  # ours NAME -> prints the pid if the process we recorded still runs
  local pid st
  [ -s "$OURS/$1" ] && read -r pid st < "$OURS/$1" || return 1
  [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $22}' "/proc/$pid/stat")" = "$st" ] &&
    [ "$(cat "/proc/$pid/comm")" = "$1" ] && echo "$pid"
}
gone() { [ ! -r "/proc/$1/stat" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }

stop() {  # stop NAME...: SIGTERM ours together, wait up to 10 s each, then SIGKILL
  local name pid sent=()
  for name in "$@"; do
    if pid=$(ours "$name"); then
      kill -TERM "$pid" && sent+=("$name:$pid")
    elif [ -e "$OURS/$name" ]; then
      say "$name: the process we started is already gone"
    elif pgrep -x "$name" >/dev/null; then
      say "$name: running, but not started by slurm_up.sh: left alone"
    fi
    rm -f "$OURS/$name"
  done
  for entry in "${sent[@]}"; do
    name=${entry%%:*}; pid=${entry#*:}
    for _ in $(seq 50); do gone "$pid" && break; sleep 0.2; done
    gone "$pid" || { say "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"; kill -KILL "$pid"; }
    say "$name ($pid) stopped"
  done
}

if [ "${KEEP_JOBS:-0}" != 1 ] && ours slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    say "cancelling jobs: $jobs"; scancel $jobs
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop slurmd slurmctld                # compute daemon and controller first
stop slurmdbd mariadbd munged        # then what they talk to while exiting
exit 0
