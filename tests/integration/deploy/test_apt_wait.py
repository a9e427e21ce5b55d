"""The install scripts wait for another apt or dpkg process instead of failing (a CI run once
failed with apt exit 100 while unattended-upgrades held the lock).

apt runs in a sandbox (``APT_CONFIG``: its own lists, dpkg status, cache and sources under a
temporary directory), so the test holds real apt and dpkg locks with the same ``fcntl`` locks
apt takes, without touching the machine's package state or the network. (``flock(1)`` would
prove nothing: apt ignores flock locks.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
APT_WAIT = ROOT / "deploy" / "apt-wait.sh"
SCRIPTS = [ROOT / "deploy" / "install-test-tools.sh", ROOT / "deploy" / "install-browser.sh",
           ROOT / "deploy" / "install-kcat.sh", ROOT / "loadtests" / "install-tools.sh"]  # fmt: skip
HOLD_S = 5.0

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX)  # what apt and dpkg take (fcntl F_SETLK), not flock()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def apt_sandbox(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment in which apt-get uses only files under ``tmp_path``."""
    for sub in ("lists/partial", "dpkg", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d",
                "etc/apt.conf.d", "log"):  # fmt: skip
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "dpkg" / "status").touch()
    (tmp_path / "etc" / "sources.list").touch()
    (tmp_path / "apt.conf").write_text(
        f'Dir::State::Lists "{tmp_path}/lists";\n'
        f'Dir::State::status "{tmp_path}/dpkg/status";\n'
        f'Dir::Cache "{tmp_path}/cache";\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
        f'Dir::Etc::sourcelist "{tmp_path}/etc/sources.list";\n'
        f'Dir::Etc::sourceparts "{tmp_path}/etc/sources.list.d";\n'
        f'Dir::Etc::preferencesparts "{tmp_path}/etc/preferences.d";\n'
        f'Dir::Etc::parts "{tmp_path}/etc/apt.conf.d";\n'
        f'Dir::Log "{tmp_path}/log";\n'
    )
    env = {**os.environ, "APT_CONFIG": str(tmp_path / "apt.conf"), "SUDO": "", "APT_LOCK_RETRY_S": "0.5"}
    yield env


def _hold(lock: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _apt_get(env: dict[str, str], *args: str, wrapped: bool = True) -> tuple[int, float, str]:
    command = f". {APT_WAIT}; apt_get {' '.join(args)}" if wrapped else f"apt-get {' '.join(args)}"
    began = time.monotonic()
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, time.monotonic() - began, done.stderr


@pytest.mark.parametrize(
    ("lock", "args"),
    [
        # apt-get update ignores DPkg::Lock::Timeout for this lock: the retry loop must wait
        ("lists/lock", ("update", "-qq")),
        # install: dpkg's frontend lock, which DPkg::Lock::Timeout waits for
        ("dpkg/lock-frontend", ("install", "-y", "-qq")),
    ],
)
def test_apt_get_waits_for_a_held_lock_and_then_succeeds(
    apt_sandbox: dict[str, str], lock: str, args: tuple[str, ...]
) -> None:
    path = Path(apt_sandbox["APT_CONFIG"]).parent / lock
    holder = _hold(path, HOLD_S)
    try:
        # what the scripts did before: apt-get fails at once with exit 100
        code, _, err = _apt_get(apt_sandbox, *args, wrapped=False)
        assert code == 100 and "Could not get lock" in err, err
        code, took, err = _apt_get(apt_sandbox, *args)
    finally:
        holder.wait(timeout=HOLD_S + 10)
    assert code == 0, err
    assert took >= HOLD_S - 1.5, f"apt_get returned after {took:.1f}s while the lock was held for {HOLD_S}s"
    if lock == "lists/lock":
        assert "waiting" in err  # the operator sees why the script pauses


def test_apt_get_gives_up_at_the_deadline(apt_sandbox: dict[str, str]) -> None:
    path = Path(apt_sandbox["APT_CONFIG"]).parent / "lists/lock"
    holder = _hold(path, 6)
    try:
        code, took, err = _apt_get({**apt_sandbox, "APT_LOCK_TIMEOUT_S": "2"}, "update", "-qq")
    finally:
        holder.wait(timeout=20)
    assert code == 100 and "Could not get lock" in err
    assert took < 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_install_scripts_call_apt_only_through_the_waiting_wrapper(script: Path) -> None:
    text = script.read_text()
    assert "apt-wait.sh" in text
    raw = [line for line in text.splitlines() if re.search(r"(?<![-_])apt-get\s+(update|install|upgrade|remove)", line)]
    assert raw == [], f"{script.name} calls apt-get without waiting for its lock: {raw}"
