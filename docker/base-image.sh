#!/usr/bin/env bash
# Make the images' Python base from Debian packages, for machines that cannot pull python:3.11.7-slim-bookworm (no
# route to a container registry: air-gapped clusters' build hosts, CI here). Needs root, debootstrap and a Debian
# mirror (apt's own, read from /etc/apt, unless DEBIAN_MIRROR is set); the local CA certificates of this machine
# (/usr/local/share/ca-certificates, e.g. a proxy's or the cluster's internal CA) are trusted inside the image, so
# pip in `make images` reaches the package index the way this machine does.
#
#   docker/base-image.sh [NAME]        default NAME: localhost/clipcite-base:bookworm
#   make images CONTAINER_ENGINE=podman BASE_IMAGE=localhost/clipcite-base:bookworm
#
# The result: Debian bookworm (minbase), Debian's Python 3.11 (3.11.2, where the slim image has 3.11.7) with a venv
# at /opt/venv first on PATH, so `pip install` in the Dockerfiles installs there as it would in the slim image.
set -euo pipefail

name=${1:-localhost/clipcite-base:bookworm}
engine=${CONTAINER_ENGINE:-podman}
suite=bookworm
ca_dir=${CA_CERTIFICATES:-/usr/local/share/ca-certificates}

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then  # the first URI apt uses, deb822 (.sources) or one-line (.list) format
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
: "${mirror:?no Debian mirror found in /etc/apt: set DEBIAN_MIRROR=http://deb.debian.org/debian (or your mirror)}"
for tool in debootstrap "$engine" tar; do
    command -v "$tool" >/dev/null || { echo "base-image.sh: $tool is not installed (apt-get install -y debootstrap podman)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "base-image.sh: debootstrap and chroot need root" >&2; exit 1; }

rootfs=$(mktemp -d /var/tmp/clipcite-base.XXXXXX)
cleanup() {
    umount "$rootfs/proc" 2>/dev/null || true
    rm -rf "$rootfs"
}
trap cleanup EXIT

start=$(date +%s)
echo "debootstrap $suite from $mirror into $rootfs"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/dev/null
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount -t proc proc "$rootfs/proc"
if compgen -G "$ca_dir/*.crt" >/dev/null; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates"
    cp "$ca_dir"/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
# python3.11-venv through apt inside the root (debootstrap --include leaves it half-configured).
chroot "$rootfs" /bin/sh -ec '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3.11-venv ca-certificates >/dev/null
    update-ca-certificates >/dev/null
    python3.11 -m venv /opt/venv
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /etc/resolv.conf
'
umount "$rootfs/proc"

path=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
tar -C "$rootfs" -c . | "$engine" import --change "ENV PATH=$path" --change 'CMD ["python3"]' - "$name" >/dev/null
echo "$name: $("$engine" image inspect --format '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1 / 1e6}'), $(($(date +%s) - start)) s"
