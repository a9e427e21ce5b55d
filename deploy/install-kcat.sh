#!/usr/bin/env bash
# Installs Debian's kcat (librdkafka's command-line client) for the client-family test
# (tests/integration/devstack/test_client_families.py): it records that Debian bookworm's kcat,
# linked to librdkafka 2.0.2, cannot talk to the embedded broker, and that the same binary works
# with librdkafka >= 2.2. Idempotent; needs root (or sudo) and Debian's apt.
set -euo pipefail

if command -v kcat >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# apt_get: waits for another apt/dpkg process instead of failing on its lock
. "$(dirname "${BASH_SOURCE[0]}")/apt-wait.sh"

export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show kcat >/dev/null 2>&1; then
    apt_get update -qq
fi
apt_get install -y -qq --no-install-recommends kcat >/dev/null

command -v kcat >/dev/null
kcat -V 2>&1 | grep -m1 Version
