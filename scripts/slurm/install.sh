#!/usr/bin/env bash
# Install the SLURM daemons and clients plus MUNGE (Debian/Ubuntu, as root) so that
# scripts/slurm/cluster.py can run a one-node test cluster on this machine.
# Idempotent: returns at once when every binary is already there. Starts no service.
set -euo pipefail

needed=(slurmctld slurmd sbatch squeue sinfo scontrol scancel munged munge unmunge)
missing=()
for binary in "${needed[@]}"; do
    command -v "$binary" > /dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing+=("$binary")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "SLURM $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || echo ?) and MUNGE already installed"
    exit 0
fi
echo "missing: ${missing[*]}; installing slurm-wlm and munge"

if [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Keep apt from starting munge/slurmd/slurmctld services: scripts/slurm/cluster.py starts its own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge > /dev/null
echo "installed SLURM $(dpkg-query -W -f='${Version}' slurmctld)"
