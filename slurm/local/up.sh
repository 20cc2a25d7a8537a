#!/usr/bin/env bash
# Start a one-node Slurm (munged, slurmctld, slurmd) on this machine with all its CPUs, for tests and
# for trying the sbatch templates. Needs root; installs slurm-wlm and munge with apt when they are missing.
# Idempotent: a running cluster is left alone. Stop it with slurm/local/down.sh (or make slurm-down).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${FACELAB_SLURM_STATE:-/var/tmp/facelab-slurm}"
conf=/etc/slurm/slurm.conf
marker="# facelab local one-node Slurm"

if [[ $(id -u) -ne 0 ]]; then
    echo "slurm/local/up.sh: needs root (it writes $conf and starts the daemons as root)." >&2
    exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || { echo "slurm/local/up.sh: no slurmctld/munged and no apt-get to install them." >&2; exit 2; }
    echo "installing slurm-wlm and munge with apt ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
if [[ -f $conf ]] && ! head -1 "$conf" | grep -q "^$marker"; then
    echo "slurm/local/up.sh: $conf exists and was not written by facelab; refusing to replace a real cluster's config." >&2
    exit 2
fi

if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
    echo "local Slurm already up: $(sinfo -h -o '%P %D %C %T')"
    exit 0
fi

mkdir -p "$state/ctld" "$state/d" /run/munge /var/log/munge
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
    -e "s|@CTLD_PORT@|${FACELAB_SLURMCTLD_PORT:-6817}|g" -e "s|@D_PORT@|${FACELAB_SLURMD_PORT:-6818}|g" \
    "$here/slurm.conf.in" > "$conf.tmp"
mv "$conf.tmp" "$conf"

if ! munge -n </dev/null >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    chown -R munge:munge /etc/munge /run/munge /var/log/munge 2>/dev/null || true
    chmod 600 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged --force 2>/dev/null || /usr/sbin/munged --force
fi
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
slurmctld -i
slurmd

for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
        echo "local Slurm up: $(sinfo -h -o '%P %D %C %T') (logs in $state)"
        exit 0
    fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm/local/up.sh: the node did not become idle within 60 s; see $state/slurmctld.log and $state/slurmd.log" >&2
sinfo >&2 || true
exit 1
