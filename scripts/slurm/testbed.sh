#!/usr/bin/env bash
# A real Slurm on this one machine, for tests: munged, slurmctld and two slurmd (nodes n1, n2).
#
#   scripts/slurm/testbed.sh up       install slurm-wlm + munge if missing, start the daemons,
#                                     wait until both nodes are idle (exit 1 if not within 90 s)
#   scripts/slurm/testbed.sh status   what runs, and sinfo
#   scripts/slurm/testbed.sh down     cancel every job, stop every daemon `up` started (by PID),
#                                     kill what is left of them, restore /etc/hosts
#
# Needs root (packages, /etc/hosts, daemons as root) and Debian 12's archive (Slurm 22.05).
# Everything it writes lives in $VLA_SLURM_TESTBED_DIR (default /tmp/vla-slurm-testbed), except
# one marked line in /etc/hosts that `down` removes. Client commands need
#   export SLURM_CONF=$VLA_SLURM_TESTBED_DIR/slurm.conf
# (tests/slurm.rs uses that path by default). Facts: ../shared/reference/slurm-testbed.md.
set -euo pipefail

STATE=${VLA_SLURM_TESTBED_DIR:-/tmp/vla-slurm-testbed}
CONF=$STATE/slurm.conf
HOSTS_MARK='# vla-launch slurm testbed'
NODES=(n1 n2)
# Every daemon we start carries this in its environment; `down` finds their leftovers
# (slurmstepd daemonizes away from slurmd) by it, and only by it.
MARKER_VAR=VLA_SLURM_TESTBED_MARKER
export SLURM_CONF=$CONF

log() { printf 'testbed: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages, edits /etc/hosts and runs the daemons as root)"

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null &&
    command -v munged >/dev/null; then
    return
  fi
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$STATE/apt.log" 2>&1 ||
    die "apt-get install slurm-wlm munge failed; see $STATE/apt.log"
  command -v slurmctld >/dev/null || die "slurmctld is still missing after apt-get install slurm-wlm"
}

# pid_alive NAME: the PID recorded for NAME still runs the program we started.
pid_alive() {
  local f=$STATE/pids/$1 pid
  [[ -s $f ]] || return 1
  read -r pid _ <"$f"
  [[ -r /proc/$pid/environ ]] || return 1
  { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qx "$MARKER_VAR=$(marker)"
}

marker() { cat "$STATE/marker" 2>/dev/null || true; }

write_conf() {
  local host
  host=$(hostname)
  cat >"$CONF" <<EOF
# Written by scripts/slurm/testbed.sh: two nodes (n1, n2) on this one host.
ClusterName=vlatest
SlurmctldHost=$host
SlurmctldPort=16817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Several 2-node test jobs at once: announce more CPUs than the machine has.
SlurmdParameters=config_overrides
ReturnToService=2
# Slurm's default: SIGKILL 30 s after SIGTERM. The launcher's grace must fit inside it.
KillWait=30
# Keep finished jobs in 'scontrol show job' (no accounting database here).
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
JobRequeue=1
MpiDefault=none
SchedulerType=sched/backfill
InactiveLimit=0
SlurmdTimeout=300
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=16 RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=16 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}

hosts_add() {
  grep -qF "$HOSTS_MARK" /etc/hosts && return
  # /etc/hosts may be a bind mount: rewrite it in place, never rename over it.
  printf '127.0.0.1 n1 n2 %s\n' "$HOSTS_MARK" >>/etc/hosts
}

hosts_remove() {
  grep -qF "$HOSTS_MARK" /etc/hosts || return 0
  local kept
  kept=$(grep -vF "$HOSTS_MARK" /etc/hosts || true)
  printf '%s\n' "$kept" >/etc/hosts
}

# start NAME COMMAND...: run a daemon in the foreground mode in the background, record its PID.
start() {
  local name=$1
  shift
  env "$MARKER_VAR=$(marker)" setsid "$@" </dev/null >"$STATE/log/$name.out" 2>&1 &
  echo "$! $*" >"$STATE/pids/$name"
  # Until the fork has exec'd, /proc/PID/environ lacks the marker: wait for it (bounded).
  local i
  for ((i = 0; i < 50; i++)); do
    pid_alive "$name" && return
    sleep 0.02
  done
}

nodes_idle() {
  local out
  out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
  [[ $(grep -cE '^n[12] idle$' <<<"$out") -eq 2 ]]
}

up() {
  local t0=$SECONDS
  mkdir -p "$STATE"
  install_packages
  if pid_alive slurmctld && pid_alive slurmd-n1 && pid_alive slurmd-n2 && pid_alive munged && nodes_idle; then
    log "already up (SLURM_CONF=$CONF)"
    return
  fi
  if [[ -d $STATE/pids ]] && compgen -G "$STATE/pids/*" >/dev/null; then
    log "a previous testbed is partly running: stopping it first"
    down
  fi
  mkdir -p "$STATE"/{ctld,spool,run,log,pids}
  od -An -tx8 -N8 /dev/urandom | tr -d ' \n' >"$STATE/marker"
  write_conf
  hosts_add

  # munged, as the munge user, on the package's key and default socket.
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall munge: apt-get install --reinstall munge)"
  mkdir -p /run/munge && chown munge:munge /run/munge
  if [[ -S /run/munge/munge.socket.2 ]] && ! pid_alive munged && munge -n </dev/null >/dev/null 2>&1; then
    die "a munged not started by this script already serves /run/munge/munge.socket.2; stop it first"
  fi
  start munged runuser -u munge -- /usr/sbin/munged -F --force
  local i
  for ((i = 0; i < 100; i++)); do
    munge -n </dev/null >/dev/null 2>&1 && break
    pid_alive munged || die "munged exited at start: $(tail -n 3 "$STATE/log/munged.out")"
    sleep 0.1
  done
  munge -n </dev/null >/dev/null 2>&1 || die "munged does not answer after 10 s; see $STATE/log/munged.out"

  start slurmctld slurmctld -D -i -f "$CONF"
  for n in "${NODES[@]}"; do
    start "slurmd-$n" slurmd -D -N "$n" -f "$CONF"
  done
  for ((i = 0; i < 900; i++)); do
    nodes_idle && break
    for d in munged slurmctld slurmd-n1 slurmd-n2; do
      pid_alive "$d" || die "$d exited at start: $(tail -n 5 "$STATE/log/$d.out" | tr '\n' ' ') (logs in $STATE/log)"
    done
    sleep 0.1
  done
  if ! nodes_idle; then
    sinfo -N >&2 || true
    die "nodes n1, n2 not idle after 90 s; logs in $STATE/log"
  fi
  log "up in $((SECONDS - t0)) s: nodes n1 n2 idle (SLURM_CONF=$CONF)"
}

# stop_pid NAME: TERM the recorded daemon, KILL it after 10 s.
stop_pid() {
  local name=$1 pid i
  pid_alive "$name" || return 0
  read -r pid _ <"$STATE/pids/$name"
  # munged runs under runuser: stop munged itself so that runuser reaps it and exits (no zombie).
  [[ $name == munged ]] && pkill -TERM -P "$pid" -x munged 2>/dev/null
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    pid_alive "$name" || return 0
    sleep 0.1
  done
  log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Processes left of our daemons (slurmstepd daemonizes away from slurmd): found by the marker,
# with everything below them (a job's processes, should slurmctld have died before scancel).
leftovers() {
  local m p found=()
  m=$(marker)
  [[ -n $m ]] || return 0
  for p in /proc/[0-9]*; do
    [[ ${p#/proc/} -ne $$ ]] || continue
    { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qx "$MARKER_VAR=$m" && found+=("${p#/proc/}")
  done
  [[ ${#found[@]} -gt 0 ]] || return 0
  ps -e -o pid=,ppid= | awk -v roots="${found[*]}" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } } while (grew)
      for (p in keep) print p
    }'
}

down() {
  local i jobs left
  if pid_alive slurmctld; then
    # Cancel every job of this private cluster; wait (bounded) until none runs.
    scancel --full --quiet --partition=debug 2>/dev/null || true
    for ((i = 0; i < 450; i++)); do
      jobs=$(squeue -h -t RUNNING,COMPLETING,PENDING,CONFIGURING,SUSPENDED,REQUEUED -o %i 2>/dev/null || true)
      [[ -z $jobs ]] && break
      ((i % 50 == 49)) && scancel --full --signal=KILL --quiet --partition=debug 2>/dev/null || true
      sleep 0.2
    done
  fi
  for d in slurmd-n2 slurmd-n1 slurmctld munged; do
    stop_pid "$d"
  done
  left=$(leftovers)
  if [[ -n $left ]]; then
    log "killing what is left of the daemons: $(tr '\n' ' ' <<<"$left")"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  hosts_remove
  rm -rf "$STATE/pids"
  log "down"
}

status() {
  local d rc=0
  for d in munged slurmctld slurmd-n1 slurmd-n2; do
    if pid_alive "$d"; then
      echo "$d: running (pid $(cut -d' ' -f1 "$STATE/pids/$d"))"
    else
      echo "$d: not running"
      rc=3
    fi
  done
  if [[ $rc -eq 0 ]]; then
    sinfo -N || rc=3
  fi
  return $rc
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
