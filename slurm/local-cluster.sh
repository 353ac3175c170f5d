#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying the sbatch scripts and for the tests.
#
#   slurm/local-cluster.sh up       install slurm-wlm + munge if missing (root), write the config,
#                                   start munged, slurmctld, slurmd; wait until the node is idle
#   slurm/local-cluster.sh down     stop the daemons that `up` started (by their pid files)
#   slurm/local-cluster.sh status   what answers, and which daemons this script started
#
# `up` does nothing when a cluster already answers. The node takes its name from `hostname -s`,
# its CPUs from `nproc` and 90% of the memory `free` reports; one partition, `debug`.
# State, logs and pid files live in $LOCAL_SLURM_STATE (default /var/lib/gptpipe-slurm).
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/var/lib/gptpipe-slurm}
CONF=/etc/slurm/slurm.conf
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-90}
MARKER="# written by gptpipe slurm/local-cluster.sh"

log() { echo "local-cluster: $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

cluster_answers() { [ -n "$(node_state)" ]; }

ensure_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        die "needs ${missing[*]}: run as root, or install them first: sudo apt-get install -y ${missing[*]}"
    fi
    log "installing ${missing[*]} with apt ..."
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$STATE/apt.log" 2>&1; then
        apt-get update -qq >>"$STATE/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$STATE/apt.log" 2>&1 \
            || { tail -n 5 "$STATE/apt.log" >&2; die "apt-get install ${missing[*]} failed (log: $STATE/apt.log)"; }
    fi
}

write_munge_key() {
    local key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
        mkdir -p /etc/munge
        head -c 1024 /dev/urandom >"$key"
    fi
    chown munge:munge "$key" /etc/munge
    chmod 400 "$key"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        cp "$CONF" "$CONF.before-gptpipe"
        log "kept the previous $CONF as $CONF.before-gptpipe"
    fi
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd
    cat >"$CONF" <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
# A requeued job waits out the job credential lifetime before it starts again (default 120 s).
AuthInfo=cred_expire=30
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
# Requeued jobs (preemption tests) may start again at once.
JobRequeue=1
MinJobAge=300
KillWait=30
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

# A pid file names a live daemon only if that pid still runs the daemon (pids are reused after a reboot).
pid_alive() {  # pidfile [name]
    [ -s "$1" ] || return 1
    local pid
    pid=$(cat "$1")
    kill -0 "$pid" 2>/dev/null || return 1
    [ -z "${2:-}" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

pidfile_of() { [ "$1" = munged ] && echo "$STATE/munge/munged.pid" || echo "$STATE/$1.pid"; }

start_daemon() {  # name pidfile command...
    local name=$1 pidfile=$2
    shift 2
    if pid_alive "$pidfile" "$name"; then
        return 0
    fi
    "$@" || die "$name did not start; log: $STATE/$name.log"
    echo "$name" >>"$STATE/started"
}

up() {
    if cluster_answers; then
        log "a cluster already answers (node $(node_state)); nothing to do"
        return 0
    fi
    mkdir -p "$STATE"
    ensure_packages
    [ "$(id -u)" = 0 ] || die "starting slurmctld/slurmd needs root (SlurmUser=root); run: sudo $0 up"
    write_munge_key
    write_config
    if ! munge -n >/dev/null 2>&1; then
        # munged runs as the munge user, so its pid and log files live in a folder it owns
        mkdir -p "$STATE/munge"
        chown munge:munge "$STATE/munge"
        start_daemon munged "$STATE/munge/munged.pid" \
            runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log"
    fi
    munge -n >/dev/null || die "munged is not answering; log: $STATE/munge/munged.log"
    start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld
    start_daemon slurmd "$STATE/slurmd.pid" slurmd
    local waited=0 state=""
    while [ "$waited" -lt "$TIMEOUT" ]; do
        state=$(node_state)
        case "$state" in
            idle | mix | alloc) log "node $(hostname -s) is $state after ${waited}s"; sinfo; return 0 ;;
            down* | drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 1
        waited=$((waited + 1))
    done
    echo "local-cluster: the node is not idle after ${TIMEOUT}s (state: '${state:-no answer}'); daemon logs:" >&2
    for log_file in "$STATE/slurmctld.log" "$STATE/slurmd.log" "$STATE/munge/munged.log"; do
        [ -f "$log_file" ] && { echo "--- $log_file" >&2; tail -n 15 "$log_file" >&2; }
    done
    exit 1
}

down() {
    if [ ! -f "$STATE/started" ]; then
        log "no daemons started by this script; nothing to stop"
        return 0
    fi
    for name in slurmd slurmctld munged; do
        grep -qx "$name" "$STATE/started" || continue
        local pidfile
        pidfile=$(pidfile_of "$name")
        if pid_alive "$pidfile" "$name"; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            log "stopped $name (pid $pid)"
        fi
        rm -f "$pidfile"
    done
    rm -f "$STATE/started"
}

status() {
    if cluster_answers; then
        sinfo
    else
        log "no cluster answers"
    fi
    for name in munged slurmctld slurmd; do
        if pid_alive "$(pidfile_of "$name")" "$name"; then
            log "$name running (pid $(cat "$(pidfile_of "$name")"))$(grep -qx "$name" "$STATE/started" 2>/dev/null && echo ', started by this script')"
        fi
    done
    cluster_answers
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
