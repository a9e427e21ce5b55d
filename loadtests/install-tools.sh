#!/bin/sh
# Tools the benchmarks need that PyPI does not ship: wrk (Debian package). Idempotent.
set -eu
if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "wrk is missing and apt-get is not available: install wrk with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
# apt_get: waits for another apt/dpkg process instead of failing on its lock
. "$(dirname "$0")/../deploy/apt-wait.sh"
export DEBIAN_FRONTEND=noninteractive
apt_get update -qq
apt_get install -y -qq wrk >/dev/null
command -v wrk >/dev/null
