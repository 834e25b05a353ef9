#!/usr/bin/env bash
# A real one-node Slurm cluster for tests (recipe: shared/notes/slurm.md).
#
#   tools/slurm-cluster.sh install     Debian's slurm-wlm and munge (root, apt)
#   tools/slurm-cluster.sh start DIR   daemons with state, logs and slurm.conf in
#                                      DIR; prints the SLURM_CONF to export
#   tools/slurm-cluster.sh stop DIR    stops what `start DIR` started, by pid
#
# Ports are drawn per cluster, so a stale cluster cannot block a new one. munged
# is started only when no munge daemon answers, and then stopped with the rest.
set -euo pipefail

case "${1:-}" in
install)
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then exit 0; fi
    [ "$(id -u)" = 0 ] || { echo "slurm-cluster: installing slurm-wlm and munge needs root" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    ;;
start)
    D=$(realpath "${2:?usage: slurm-cluster.sh start DIR}")
    for tool in slurmctld slurmd munged sbatch; do
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
            { echo "slurm-cluster: $tool is not installed (tools/slurm-cluster.sh install)" >&2; exit 1; }
    done
    mkdir -p "$D"/{state,spool,log}
    if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        pgrep -u munge -n munged >"$D/munged.pid"
    fi
    H=$(hostname -s)
    MEM=$(($(free -m | awk '/Mem:/{print $2}') - 1024))
    PORT=$((20000 + (RANDOM % 20000) * 2))
    cat >"$D/slurm.conf" <<CONF
ClusterName=optlab-test
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/ctld.log
SlurmdLogFile=$D/log/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=$((MEM / $(nproc)))
MpiDefault=none
ReturnToService=2
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
NodeName=$H CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=main Nodes=$H Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$D/slurm.conf
    /usr/sbin/slurmctld -f "$SLURM_CONF"
    /usr/sbin/slurmd -f "$SLURM_CONF"
    for _ in $(seq 100); do
        if sinfo -h -o %t 2>/dev/null | grep -q idle; then
            echo "$SLURM_CONF"
            exit 0
        fi
        sleep 0.2
    done
    echo "slurm-cluster: the node did not come up in 20 s; logs in $D/log" >&2
    exit 1
    ;;
stop)
    D=$(realpath "${2:?usage: slurm-cluster.sh stop DIR}")
    for pid in "$D"/slurmd.pid "$D"/slurmctld.pid "$D"/munged.pid; do
        [ -s "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: slurm-cluster.sh install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
