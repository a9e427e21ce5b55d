#!/usr/bin/env bash
# Installs Debian's chromium for the screen-pop browser test (tests/test_browser.py): the test
# renders the agent's HTML card in a real headless browser. Idempotent; needs root (or sudo)
# and Debian's apt. Nothing is started: the test runs chromium itself, headless, per test.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# apt_get: waits for another apt/dpkg process instead of failing on its lock
. "$(dirname "${BASH_SOURCE[0]}")/apt-wait.sh"

export DEBIAN_FRONTEND=noninteractive
apt_get update -qq
apt_get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

/usr/bin/chromium --version
