#!/usr/bin/env bash
# Makes a Debian 12 (bookworm) root file system with Python 3 (and venv) as a tarball, for
# `docker import`: the client image's base where no registry can be reached (CI, air-gapped
# hosts). With a registry, build.sh's default base (debian:bookworm-slim) needs none of this.
#   deploy/docker/debian-rootfs.sh OUT.tar [MIRROR]
#   docker import OUT.tar acb-base:bookworm
# Needs root and debootstrap; downloads about 60 MB and takes about a minute. The mirror
# defaults to the first Debian one in /etc/apt/sources.list*, else http://deb.debian.org/debian.
set -euo pipefail
out=$(realpath -m "${1:?usage: debian-rootfs.sh OUT.tar [MIRROR]}")
mirror=${2:-}
if [[ -z $mirror ]]; then
  mirror=$(grep -h -o -E '(URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -o -E 'https?://[^[:space:]]+' | head -1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
command -v debootstrap >/dev/null || { echo "debian-rootfs.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/acb-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/root" "$mirror" >"$work/log" 2>&1 ||
  { tail -20 "$work/log" >&2; echo "debian-rootfs.sh: debootstrap from $mirror failed" >&2; exit 1; }
# What an image does not need: downloaded packages, package lists, documentation.
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* "$work"/root/usr/share/doc/* \
  "$work"/root/usr/share/man/* "$work"/root/usr/share/locale/*
mkdir -p "$(dirname "$out")"
tar -C "$work/root" --numeric-owner -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "debian-rootfs.sh: $out ($(du -h "$out" | cut -f1)) from $mirror"
