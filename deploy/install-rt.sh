#!/usr/bin/env bash
# Installs Debian's Request Tracker 5 (request-tracker5 + rt5-db-sqlite + rt5-standalone)
# for the RT connector's live tests, non-interactively and without leaving any service
# running. The tests never use the packaged instance: each test session starts its own
# rt-server on a free port with its own SQLite database (tests/support/rt_server.py).
# dbconfig-common still creates the packaged SQLite database (root password "password"),
# which nothing here uses.
#
# Idempotent: exits 0 at once when the packages are already installed. Needs root (or
# sudo) and Debian's apt. Waits for the dpkg/apt locks (another apt-get may be running)
# instead of failing.
set -euo pipefail

PKGS=(request-tracker5 rt5-db-sqlite rt5-standalone)
LOCK_WAIT=${RT_INSTALL_LOCK_WAIT:-900}   # seconds to wait for a busy dpkg/apt

installed() {
    local p st
    for p in "${PKGS[@]}"; do
        st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [ "$st" = "install ok installed" ] || return 1
    done
    [ -x /usr/share/request-tracker5/libexec/rt-server ]
}

if installed; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Wait until no process holds the dpkg / apt locks (fuser exits 0 while one does).
wait_for_locks() {
    local waited=0
    while $SUDO fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock \
              /var/lib/apt/lists/lock /var/cache/apt/archives/lock >/dev/null 2>&1; do
        if [ "$waited" -ge "$LOCK_WAIT" ]; then
            echo "install-rt.sh: dpkg/apt still locked after ${LOCK_WAIT}s" >&2
            return 1
        fi
        if [ $((waited % 30)) -eq 0 ]; then
            echo "install-rt.sh: waiting for the dpkg/apt lock (${waited}s)" >&2
        fi
        sleep 2
        waited=$((waited + 2))
    done
}
# apt itself also waits (DPkg::Lock::Timeout) in case someone grabs the lock between
# our check and apt-get's start.
APT_OPTS=(-o "DPkg::Lock::Timeout=$LOCK_WAIT" -o Dpkg::Options::=--force-confdef
          -o Dpkg::Options::=--force-confold)

# No service may start during the install (exim4 comes in through default-mta).
POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
OWN_POLICY=0
if [ ! -e "$POLICY" ] || ! grep -qx 'exit 101' "$POLICY"; then
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP=$(mktemp /usr/sbin/policy-rc.d.router-backup.XXXXXX)
        $SUDO cp -p "$POLICY" "$POLICY_BACKUP"
    fi
    printf '#!/bin/sh\n# installed by install-rt.sh: no services during install\nexit 101\n' \
        | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    OWN_POLICY=1
fi
cleanup() {
    if [ "$OWN_POLICY" = 1 ]; then
        if [ -n "$POLICY_BACKUP" ]; then
            $SUDO mv -f "$POLICY_BACKUP" "$POLICY"
        else
            $SUDO rm -f "$POLICY"
        fi
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
export DEBCONF_NONINTERACTIVE_SEEN=true

# Preseed the questions of request-tracker5 (and its dbconfig-common part) and exim4.
$SUDO debconf-set-selections <<'EOF'
request-tracker5 request-tracker5/rtname string router-test
request-tracker5 request-tracker5/organization string router.test
request-tracker5 request-tracker5/correspondaddress string rt@router.test
request-tracker5 request-tracker5/commentaddress string rt-comment@router.test
request-tracker5 request-tracker5/webbaseurl string http://localhost
request-tracker5 request-tracker5/webpath string /rt
request-tracker5 request-tracker5/handle-siteconfig-permissions boolean true
request-tracker5 request-tracker5/install-cronjobs boolean false
request-tracker5 request-tracker5/dbconfig-install boolean true
request-tracker5 request-tracker5/database-type select sqlite3
request-tracker5 request-tracker5/initial-root-password password password
rt5-db-sqlite rt5-db-sqlite/available boolean true
exim4-config exim4/dc_eximconfig_configtype select local delivery only; not on a network
exim4-config exim4/dc_local_interfaces string 127.0.0.1
exim4-config exim4/mailname string localhost
EOF

wait_for_locks
# Lists may be missing on a fresh machine; refresh them once if the package is unknown.
if ! apt-cache show request-tracker5 >/dev/null 2>&1; then
    $SUDO apt-get "${APT_OPTS[@]}" update -qq
    wait_for_locks
fi
if ! $SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null; then
    # stale lists (a 404 on an old version) -> refresh once and retry
    wait_for_locks
    $SUDO apt-get "${APT_OPTS[@]}" update -qq
    wait_for_locks
    $SUDO apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi

# Nothing of the packaged stack may keep running (policy-rc.d should have prevented it).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now exim4.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/exim4 ]; then
    $SUDO /etc/init.d/exim4 stop >/dev/null 2>&1 || true
fi
if pids=$(pgrep -x exim4 2>/dev/null); then
    # shellcheck disable=SC2086
    $SUDO kill $pids 2>/dev/null || true
fi

installed
dpkg-query -W -f='${Package} ${Version}\n' request-tracker5
