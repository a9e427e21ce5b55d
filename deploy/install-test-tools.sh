#!/usr/bin/env bash
# Installs Debian's Prometheus (prometheus + promtool) for the operations tests, without
# leaving a service running: the package's maintainer scripts would start one, so a
# policy-rc.d forbids it for the duration of the install, and anything that started
# anyway is stopped. Idempotent; needs root (or sudo) and Debian's apt.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# apt_get: waits for another apt/dpkg process instead of failing on its lock
. "$(dirname "${BASH_SOURCE[0]}")/apt-wait.sh"

POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# installed by router deploy/install-test-tools.sh: no services during install\nexit 101\n' \
        | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    OWN_POLICY=1
fi
cleanup() {
    if [ "$OWN_POLICY" = 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Lists may be missing on a fresh machine; refresh them once if the package is unknown.
if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt_get update -qq
fi
apt_get install -y -qq --no-install-recommends prometheus >/dev/null || {
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends prometheus >/dev/null
}

# The tests run their own Prometheus on a free port: stop and disable the packaged one
# should anything have started it regardless of the policy above.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
if pids=$(pgrep -x -u prometheus prometheus 2>/dev/null); then
    # shellcheck disable=SC2086
    $SUDO kill $pids 2>/dev/null || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null
prometheus --version 2>&1 | head -1
