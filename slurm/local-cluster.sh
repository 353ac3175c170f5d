#!/usr/bin/env bash
# A Slurm cluster of one or more nodes on this machine, for trying the sbatch scripts and for the tests.
#
#   slurm/local-cluster.sh up [--nodes N]   install slurm-wlm + munge if missing (root), write the config,
#                                           start munged, slurmctld and N slurmd; wait until every node is idle
#   slurm/local-cluster.sh down             stop the daemons `up` started (by their pid files); remove the
#                                           namespaces, bridge and /etc/hosts lines it made
#   slurm/local-cluster.sh status           what answers, and which daemons this script started
#
# One node (the default) is this machine as it is, named by `hostname -s`. With N > 1 each node is a
# network namespace `gpnode<i>` with its own hostname (UTS namespace), its own /dev/shm (mount
# namespace) and its own address $LOCAL_SLURM_NET.1<i> on a bridge only this machine reaches; the
# nodes are node1..nodeN, named in /etc/hosts so that ranks find each other by name, as between
# machines. `up` does nothing when the cluster it made answers with the nodes asked for, and
# reconfigures (down, then up) when the count differs. Each node gets every CPU of `nproc` and its
# share of 90% of the memory; one partition, `debug`. State, logs and pid files live in
# $LOCAL_SLURM_STATE (default /var/lib/gptpipe-slurm).
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/var/lib/gptpipe-slurm}
CONF=/etc/slurm/slurm.conf
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-90}
MARKER="# written by gptpipe slurm/local-cluster.sh"
NET=${LOCAL_SLURM_NET:-10.77.0}
BRIDGE=gpslurm0
NODES=1

log() { echo "local-cluster: $*"; }
die() { echo "local-cluster: $*" >&2; exit 1; }

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1; }

cluster_answers() { [ -n "$(node_state)" ]; }

# The node count of the cluster this script configured (0: none; one it started before it counted: 1).
configured_nodes() {
    if [ -s "$STATE/nodes" ]; then cat "$STATE/nodes"; elif [ -s "$STATE/started" ]; then echo 1; else echo 0; fi
}

every_node_idle() {
    [ "$(sinfo -h -N -o '%N' 2>/dev/null | sort -u | wc -l)" -eq "$NODES" ] || return 1
    ! sinfo -h -N -o '%t' 2>/dev/null | grep -qvE '^(idle|mix|alloc)$'
}

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
    local host cpus mem_mb nodes_line partition_nodes slurmd_files
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(free -m | awk -v n="$NODES" '/^Mem:/ {print int($2 * 0.9 / n)}')
    if [ "$NODES" -eq 1 ]; then
        nodes_line="NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        partition_nodes=$host
        slurmd_files="SlurmdSpoolDir=/var/spool/slurmd
SlurmdPidFile=$STATE/slurmd.pid
SlurmdLogFile=$STATE/slurmd.log"
    else
        nodes_line="NodeName=node[1-$NODES] NodeAddr=$(seq -s, -f "$NET.1%g" 1 "$NODES") CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        partition_nodes="node[1-$NODES]"
        slurmd_files="SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdLogFile=$STATE/slurmd-%n.log"
        host="$host($NET.1)"
    fi
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
$slurmd_files
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/slurmctld.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
# Requeued jobs (preemption tests) may start again at once.
JobRequeue=1
MinJobAge=300
KillWait=30
$nodes_line
PartitionName=debug Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP
EOF
}

# Node i of a multi-node cluster: network namespace gpnode<i> on the bridge, its name in /etc/hosts.
make_node_network() {  # i
    local i=$1 ns=gpnode$1
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add "$NET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    ip netns add "$ns"
    ip link add "gpveth$i" type veth peer name eth0 netns "$ns"
    ip link set "gpveth$i" master "$BRIDGE" up
    ip -n "$ns" addr add "$NET.1$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    grep -qF "$NET.1$i node$i $MARKER" /etc/hosts || echo "$NET.1$i node$i $MARKER" >>/etc/hosts
}

remove_node_networks() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '/^gpnode[0-9]+/ {print $1}'); do
        ip netns del "$ns"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE"
    fi
    if grep -qF "$MARKER" /etc/hosts; then
        grep -vF "$MARKER" /etc/hosts >"$STATE/hosts" || true
        cat "$STATE/hosts" >/etc/hosts  # in place: /etc/hosts may be a bind mount
    fi
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

daemon_comm() { echo "${1%%-node*}"; }  # slurmd-node2 runs as slurmd

start_daemon() {  # name pidfile command...
    local name=$1 pidfile=$2
    shift 2
    if pid_alive "$pidfile" "$(daemon_comm "$name")"; then
        return 0
    fi
    "$@" || die "$name did not start; log: $STATE/$name.log"
    echo "$name" >>"$STATE/started"
}

start_nodes() {
    if [ "$NODES" -eq 1 ]; then
        start_daemon slurmd "$STATE/slurmd.pid" slurmd
        return
    fi
    local i
    for i in $(seq 1 "$NODES"); do
        ip netns list | grep -qw "gpnode$i" || make_node_network "$i"
        # its own network, hostname and /dev/shm (nsenter, not `ip netns exec`, which hides /sys/fs/cgroup
        # that slurmd reads); slurmd forks into the background inside them
        start_daemon "slurmd-node$i" "$STATE/slurmd-node$i.pid" nsenter --net="/run/netns/gpnode$i" unshare --uts --mount \
            --propagation private -- sh -c "hostname node$i && mount -t tmpfs -o mode=1777 shm /dev/shm && exec slurmd -N node$i"
    done
}

up() {
    if cluster_answers; then
        if [ "$(configured_nodes)" -eq 0 ]; then
            [ "$NODES" -eq 1 ] || die "a cluster this script did not start answers; stop it before asking for $NODES nodes"
            log "a cluster already answers (node $(node_state)); nothing to do"
            return 0
        fi
        if [ "$(configured_nodes)" -eq "$NODES" ] && every_node_idle; then
            log "a cluster already answers ($NODES node(s), $(node_state)); nothing to do"
            return 0
        fi
        if [ "$(configured_nodes)" -ne "$NODES" ]; then
            log "reconfiguring from $(configured_nodes) to $NODES node(s)"
            down
        fi
    fi
    mkdir -p "$STATE"
    ensure_packages
    [ "$(id -u)" = 0 ] || die "starting slurmctld/slurmd needs root (SlurmUser=root); run: sudo $0 up"
    write_munge_key
    if [ "$(configured_nodes)" -ne "$NODES" ]; then
        rm -rf /var/spool/slurmctld/*  # the saved state names the previous nodes
    fi
    write_config
    echo "$NODES" >"$STATE/nodes"
    if ! munge -n >/dev/null 2>&1; then
        # munged runs as the munge user, so its pid and log files live in a folder it owns
        mkdir -p "$STATE/munge"
        chown munge:munge "$STATE/munge"
        start_daemon munged "$STATE/munge/munged.pid" \
            runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log"
    fi
    munge -n >/dev/null || die "munged is not answering; log: $STATE/munge/munged.log"
    start_daemon slurmctld "$STATE/slurmctld.pid" slurmctld
    start_nodes
    local waited=0 node
    while [ "$waited" -lt "$TIMEOUT" ]; do
        if every_node_idle; then
            log "$NODES node(s) idle after ${waited}s"
            sinfo
            return 0
        fi
        for node in $(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(down|drain)/ {print $1}'); do
            scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
        done
        sleep 1
        waited=$((waited + 1))
    done
    echo "local-cluster: the nodes are not idle after ${TIMEOUT}s ($(sinfo -h -N -o '%N:%t' 2>/dev/null | tr '\n' ' ')); daemon logs:" >&2
    for log_file in "$STATE/slurmctld.log" "$STATE"/slurmd*.log "$STATE/munge/munged.log"; do
        [ -f "$log_file" ] && { echo "--- $log_file" >&2; tail -n 15 "$log_file" >&2; }
    done
    exit 1
}

down() {
    if [ ! -f "$STATE/started" ]; then
        log "no daemons started by this script; nothing to stop"
        remove_node_networks
        return 0
    fi
    local name
    for name in $(grep -x 'slurmd.*' "$STATE/started" || true) slurmctld munged; do
        grep -qx "$name" "$STATE/started" || continue
        local pidfile
        pidfile=$(pidfile_of "$name")
        if pid_alive "$pidfile" "$(daemon_comm "$name")"; then
            local pid
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            log "stopped $name (pid $pid)"
        fi
        rm -f "$pidfile"
    done
    rm -f "$STATE/started" "$STATE/nodes"
    remove_node_networks
}

status() {
    if cluster_answers; then
        sinfo -N
    else
        log "no cluster answers"
    fi
    local name
    for name in munged slurmctld slurmd $(grep -x 'slurmd-.*' "$STATE/started" 2>/dev/null || true); do
        if pid_alive "$(pidfile_of "$name")" "$(daemon_comm "$name")"; then
            log "$name running (pid $(cat "$(pidfile_of "$name")"))$(grep -qx "$name" "$STATE/started" 2>/dev/null && echo ', started by this script')"
        fi
    done
    cluster_answers
}

command=${1:-}
shift || true
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes) NODES=${2:?--nodes needs a count}; shift 2 ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        *) echo "usage: $0 up [--nodes N]|down|status" >&2; exit 2 ;;
    esac
done
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "--nodes $NODES: give a count from 1 to 99"
case "$command" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up [--nodes N]|down|status" >&2; exit 2 ;;
esac
