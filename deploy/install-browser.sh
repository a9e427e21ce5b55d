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

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

/usr/bin/chromium --version
