#!/usr/bin/env bash
# podman for `make images` and the container tests on machines like CI's (root, no systemd, no Docker engine):
# installs podman, buildah, runc and debootstrap with apt when they are missing, and writes the containers.conf that
# the Makefile and the tests point CONTAINERS_CONF at, so the host's own configuration is left alone.
#
#   docker/podman/setup.sh OUT            e.g. .podman/containers.conf
#   PODMAN_SETUP_INSTALL=0 ... OUT        only write the file (tests/integration/test_docker.py)
#
# What it sets, and why (each measured on a 2-core CI machine, podman 4.3.1):
#   runtime = runc        crun fails there ("cgroups in hybrid mode not supported", setrlimit refused)
#   cgroup_manager        cgroupfs: no systemd to ask for cgroups
#   events_logger         file: no journald
#   netns = host          the steps reach the servers a test starts on 127.0.0.1 (moto S3, MLflow) as a pod reaches
#                         its cluster's services (on a cluster the manifests' NetworkPolicies isolate it)
#   default_ulimits       rootful podman asks for 1048576 open files and processes; a kernel or sandbox that caps
#                         them lower refuses the container ("error setting rlimit type 7"): ask for what this
#                         machine grants (its hard limits, processes at most kernel.pid_max)
set -euo pipefail
out=${1:?usage: docker/podman/setup.sh OUT (the containers.conf to write)}

missing=()
[ "${PODMAN_SETUP_INSTALL:-1}" = 0 ] || for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "podman setup: ${missing[*]} not installed; install them (Debian: apt-get install -y podman buildah runc debootstrap)" >&2
        exit 1
    fi
    echo "podman setup: installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=$(cat /proc/sys/fs/nr_open)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi

mkdir -p "$(dirname "$out")"
cat > "$out.tmp" <<CONF
# Written by docker/podman/setup.sh (see there for why each setting); CONTAINERS_CONF points here.
[containers]
netns = "host"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$out.tmp" "$out"
echo "podman setup: $out (runc, nofile=$nofile, nproc=$nproc)"
