# Sourced by the project's install scripts (bash): `apt_get` is apt-get that waits for another
# apt or dpkg process (unattended-upgrades, a second install script, a CI step) to finish instead
# of failing with exit 100 ("Could not get lock ...").
#
#   . "$(dirname "$0")/apt-wait.sh"
#   apt_get update -qq
#   apt_get install -y -qq --no-install-recommends prometheus
#
# Two mechanisms, because apt has two kinds of lock:
# * `-o DPkg::Lock::Timeout` makes apt-get wait for dpkg's locks (/var/lib/dpkg/lock-frontend,
#   /var/lib/dpkg/lock): install, remove, upgrade.
# * `apt-get update` ignores that option for the lists lock (/var/lib/apt/lists/lock): apt 2.6
#   (Debian bookworm) fails at once. So a lock error is also retried here until the deadline.
# Waits at most APT_LOCK_TIMEOUT_S seconds (default 600) in total; runs apt-get through $SUDO.

APT_LOCK_TIMEOUT_S="${APT_LOCK_TIMEOUT_S:-600}"
APT_LOCK_RETRY_S="${APT_LOCK_RETRY_S:-2}"

_apt_lock_error() {
    grep -qE 'Could not get lock|Unable to lock directory|Unable to acquire the dpkg frontend lock' "$1"
}

apt_get() {
    local deadline errors status waited=0
    deadline=$(( $(date +%s) + APT_LOCK_TIMEOUT_S ))
    errors=$(mktemp)
    while true; do
        status=0
        ${SUDO:-} apt-get -o DPkg::Lock::Timeout="$APT_LOCK_TIMEOUT_S" "$@" 2>"$errors" || status=$?
        if [ "$status" -ne 0 ] && _apt_lock_error "$errors" && [ "$(date +%s)" -lt "$deadline" ]; then
            if [ "$waited" -eq 0 ]; then
                echo "apt-get $*: another apt or dpkg process holds the lock; waiting (at most ${APT_LOCK_TIMEOUT_S}s)" >&2
            fi
            waited=1
            sleep "$APT_LOCK_RETRY_S"
            continue
        fi
        cat "$errors" >&2
        rm -f "$errors"
        return "$status"
    done
}
