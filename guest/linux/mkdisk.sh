#!/usr/bin/env bash
# Create a sparse raw disk image for Keel guests: guest/linux/mkdisk.sh <path> <size>
# <size> is bytes or a number with a K/M/G/T suffix (powers of 1024), e.g. 64M.
# An existing file is left alone unless it is a regular file of a different size, which is
# an error (so a disk is never silently truncated).
set -euo pipefail

die() {
    printf 'mkdisk.sh: error: %s\n' "$*" >&2
    exit 2
}

[[ $# -eq 2 ]] || die "usage: mkdisk.sh <path> <size, e.g. 64M>"
path=$1
size=$2
[[ $size =~ ^([0-9]+)([KMGT]?)$ ]] || die "size '$size' is not a number with an optional K/M/G/T suffix"
n=${BASH_REMATCH[1]}
case "${BASH_REMATCH[2]}" in
    K) mult=$((1 << 10)) ;;
    M) mult=$((1 << 20)) ;;
    G) mult=$((1 << 30)) ;;
    T) mult=$((1 << 40)) ;;
    *) mult=1 ;;
esac
bytes=$((10#$n * mult))
((bytes > 0 && bytes % 512 == 0)) || die "size '$size' must be a positive multiple of 512 bytes"

if [[ -e $path ]]; then
    [[ -f $path ]] || die "'$path' exists and is not a regular file"
    have=$(stat -c %s "$path")
    [[ $have -eq $bytes ]] || die "'$path' exists with $have bytes, not $bytes"
else
    truncate -s "$bytes" "$path"
fi
printf '%s\n' "$path"
