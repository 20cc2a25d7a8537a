#!/usr/bin/env bash
# Stop the local Slurm started by slurm/local/up.sh: cancel its jobs, stop the daemons, remove its config.
set -uo pipefail
state="${FACELAB_SLURM_STATE:-/var/tmp/facelab-slurm}"
conf=/etc/slurm/slurm.conf
if [[ -f $conf ]] && ! head -1 "$conf" | grep -q "^# facelab local one-node Slurm"; then
    echo "slurm/local/down.sh: $conf was not written by facelab; leaving this cluster alone." >&2
    exit 2
fi
scancel --user="$(id -un)" 2>/dev/null
pkill -x slurmd 2>/dev/null
pkill -x slurmctld 2>/dev/null
for _ in $(seq 20); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.5; done
rm -f "$conf"
rm -rf "$state"
echo "local Slurm stopped"
