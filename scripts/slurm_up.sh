#!/usr/bin/env bash
# slurm_up.sh - a single-node SLURM cluster with accounting on this Debian machine (root, no
# systemd): munged, MariaDB (unix socket only) + slurmdbd, slurmctld, slurmd. For users trying
# launcher=slurm locally and for CI (`make slurm-up`, then `pytest -m slurm`).
#
# Idempotent: installs what is missing, (re)writes the configs, starts only daemons that are not
# running, waits for the node to be idle. Each daemon it starts is recorded in $OURS/<name> as
# "pid starttime"; scripts/slurm_down.sh stops only those.
#
# The node offers one GPU as a generic resource (GresTypes=gpu, Gres=gpu:1), so launcher=slurm's
# default of one GPU per job is accepted and at most one GPU job runs at a time. Slurm 22.05
# drops a file-less GPU ("Removing file-less GPU ... from final GRES list", then marks the node
# INVAL: "gres/gpu count reported lower than configured"), so gres.conf names /dev/null as its
# device file: nothing is bound to jobs, the count is what the scheduler enforces.
#
# Accounting is on by default: without sacct, submitit cannot tell that a job died without a
# result (scancel, time limit, OOM kill) and waits for it forever.
#
# Environment:
#   PTYCHOSTAB_SLURM_BASE  state, spool, logs, pid files      (default $TMPDIR/ptychostab-slurm, TMPDIR=/tmp if unset)
#   SLURM_CONF             slurm.conf path read by clients     (default /etc/slurm/slurm.conf)
#   SLURM_PARTITION        partition name                      (default debug)
#   SLURM_ACCOUNTING       1: MariaDB + slurmdbd (default), 0: none
#   SLURM_WAIT_IDLE_S      seconds to wait for the node         (default 60)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

BASE=${PTYCHOSTAB_SLURM_BASE:-${TMPDIR:-/tmp}/ptychostab-slurm}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
PARTITION=${SLURM_PARTITION:-debug}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
WAIT_IDLE_S=${SLURM_WAIT_IDLE_S:-60}
DB_PASS=${SLURM_DB_PASS:-ptychostab-local}  # MariaDB runs with --skip-networking: socket only
OURS=$BASE/run/ours
TAG="# written by ptychostab scripts/slurm_up.sh"
T0=$(date +%s)

say() { echo "[slurm-up] $*"; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (sudo make slurm-up): it installs packages and starts daemons"

# --- helpers ---------------------------------------------------------------------------------
start_time() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }
live() {  # live PID NAME: a running (not zombie) process named NAME
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
    [ "$(awk '{print $3}' "/proc/$1/stat")" != Z ]
}
pid_in() { [ -s "$1" ] && tr -dc '0-9' < "$1"; }
remember() {  # remember NAME PIDFILE: note that we started it
  local pid; pid=$(pid_in "$2"); echo "$pid $(start_time "$pid")" > "$OURS/$1"
}
whose() {  # whose NAME: tell whether a running NAME is ours
  local pid st
  if [ -s "$OURS/$1" ] && read -r pid st < "$OURS/$1" && [ "$(start_time "$pid")" = "$st" ]; then
    echo "started earlier by slurm_up.sh (pid $pid)"
  else
    rm -f "$OURS/$1"; echo "not started by slurm_up.sh: slurm_down.sh will leave it running"
  fi
}
until_ok() {  # until_ok SECONDS CMD...: poll CMD every 0.2 s
  local end=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.2; done
}

# --- 1. packages (apt does not start services here: no systemd, policy-rc.d) -----------------
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ "$ACCOUNTING" = 1 ]; then
  command -v slurmdbd >/dev/null || missing+=(slurmdbd)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # without --no-install-recommends slurm pulls ~40 packages (hdf5, rrd, ipmi, rocm plugins)
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$OURS" "$BASE"/{state,spool,log,run}

# --- 2. munge (authentication for every daemon and client) -----------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge   # systemd would create it
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged running ($(whose munged))"
else
  rm -f "$OURS/munged"
  runuser -u munge -- /usr/sbin/munged   # refuses to run as root
  until_ok 10 sh -c 'munge -n | unmunge' || die "munged did not start (/var/log/munge/munged.log)"
  remember munged /run/munge/munged.pid
  say "munged started"
fi

# --- 3. slurm.conf (the node line from slurmd -C: a RealMemory above the real one drains it) --
HOST=$(hostname -s)
HW=$(slurmd -C | sed -n '1s/^NodeName=[^ ]* //p')
if [ "$ACCOUNTING" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
WANT="$TAG
ClusterName=ptychostab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
# no cgroups: works in containers whatever the cgroup layout
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
$ACCT
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=60
KillWait=5
MinJobAge=600
# one GPU as a generic resource (gres.conf: Name=gpu File=/dev/null, see the header): the
# launcher's default cluster.gpus_per_node=1 (sbatch --gpus-per-node=1) is then satisfiable,
# and the scheduler runs at most one GPU job (one pack) at a time, as on a one-GPU node
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 $HW Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
mkdir -p "$(dirname "$CONF")"
CHANGED=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$WANT" ]; then
  if [ -f "$CONF" ] && ! grep -qF "$TAG" "$CONF"; then
    cp -a "$CONF" "$CONF.bak.$(date +%s)" && say "kept the previous $CONF as $CONF.bak.*"
  fi
  printf '%s\n' "$WANT" > "$CONF"; CHANGED=1; say "wrote $CONF"
fi
export SLURM_CONF=$CONF
GRES=$(dirname "$CONF")/gres.conf
WANT_GRES="$TAG
# one GPU counted by the scheduler; /dev/null because Slurm drops a GPU without a device file
NodeName=$HOST Name=gpu File=/dev/null"
if [ ! -f "$GRES" ] || [ "$(cat "$GRES")" != "$WANT_GRES" ]; then
  if [ -f "$GRES" ] && ! grep -qF "$TAG" "$GRES"; then
    cp -a "$GRES" "$GRES.bak.$(date +%s)" && say "kept the previous $GRES as $GRES.bak.*"
  fi
  printf '%s\n' "$WANT_GRES" > "$GRES"; CHANGED=1; say "wrote $GRES"
fi

# --- 4. accounting: MariaDB on a unix socket, slurmdbd ----------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
  install -d -o mysql -g mysql /run/mysqld "$BASE/mysql"   # writable pid/log dirs for mysql
  if mariadb -e 'select 1' >/dev/null 2>&1; then
    say "mariadbd running ($(whose mariadbd))"
  else
    rm -f "$OURS/mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
      --pid-file="$BASE/mysql/mariadb.pid" --log-error="$BASE/mysql/mariadb.log" \
      </dev/null >/dev/null 2>&1 &
    until_ok 60 mariadb -e 'select 1' || die "mariadbd did not start ($BASE/mysql/mariadb.log)"
    until_ok 10 test -s "$BASE/mysql/mariadb.pid"
    remember mariadbd "$BASE/mysql/mariadb.pid"
    say "mariadbd started"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  DBD=$(dirname "$CONF")/slurmdbd.conf
  printf '%s\n' "$TAG" AuthType=auth/munge DbdHost=localhost SlurmUser=root \
    "PidFile=$BASE/run/slurmdbd.pid" "LogFile=$BASE/log/slurmdbd.log" \
    StorageType=accounting_storage/mysql StorageHost=localhost StorageUser=slurm \
    "StoragePass=$DB_PASS" StorageLoc=slurm_acct_db > "$DBD"
  chmod 600 "$DBD"   # slurmdbd refuses a config others can read
  if live "$(pid_in "$BASE/run/slurmdbd.pid")" slurmdbd; then
    say "slurmdbd running ($(whose slurmdbd))"
  else
    rm -f "$OURS/slurmdbd"
    slurmdbd
    until_ok 30 sacctmgr -n show cluster || die "slurmdbd does not answer ($BASE/log/slurmdbd.log)"
    remember slurmdbd "$BASE/run/slurmdbd.pid"
    say "slurmdbd started"
  fi
fi

# --- 5. controller and compute daemon ---------------------------------------------------------
if live "$(pid_in "$BASE/run/slurmctld.pid")" slurmctld; then
  say "slurmctld running ($(whose slurmctld))"
  [ "$CHANGED" = 0 ] || { scontrol reconfigure && say "reconfigured (node/accounting changes need slurm-down + slurm-up)"; }
else
  rm -f "$OURS/slurmctld"
  slurmctld -f "$CONF"
  until_ok 30 scontrol ping || die "slurmctld does not answer ($BASE/log/slurmctld.log)"
  remember slurmctld "$BASE/run/slurmctld.pid"
  say "slurmctld started"
fi
if live "$(pid_in "$BASE/run/slurmd.pid")" slurmd; then
  say "slurmd running ($(whose slurmd))"
else
  rm -f "$OURS/slurmd"
  slurmd -f "$CONF" -N "$HOST"
  until_ok 10 sh -c "[ -s '$BASE/run/slurmd.pid' ]" || die "slurmd did not start ($BASE/log/slurmd.log)"
  remember slurmd "$BASE/run/slurmd.pid"
  say "slurmd started"
fi

# --- 6. the node must be usable ---------------------------------------------------------------
node_ok() { case "$(sinfo -h -n "$HOST" -o %T 2>/dev/null)" in idle|mixed|allocated|completing) return 0;; esac; return 1; }
if ! until_ok "$WAIT_IDLE_S" node_ok; then
  scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true   # left down by a past run
  until_ok 20 node_ok || { sinfo -R; die "node $HOST is not usable after ${WAIT_IDLE_S}s"; }
fi
sinfo
say "ready in $(( $(date +%s) - T0 )) s: partition $PARTITION, $(sinfo -h -o '%c CPUs, %m MB' | head -1)"
say "try: srun hostname | stop: make slurm-down | logs: $BASE/log/"
[ "$CONF" = /etc/slurm/slurm.conf ] || say "clients need: export SLURM_CONF=$CONF"
