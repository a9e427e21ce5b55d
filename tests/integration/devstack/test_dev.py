"""`router dev` brings the whole stack up, answers the example it prints, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest
import redis

from router.devstack.dev import _child_settings, _Stack
from router.devstack.infra import InfraError, free_port
from router.settings import AuthSettings, Settings, placeholder_reason

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def _lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    # Zombies count as gone: they are dead, and init here reaps orphans lazily.
    running = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE:
                running.append(p)
    return running


def _logs(run_dir: Path) -> str:
    parts = []
    for log in sorted(run_dir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {log.name}\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.fixture(params=["private-redis", "external-redis"])
def dev_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`router dev` in its own session, its .run/ in tmp_path, with free ports everywhere.

    private-redis: ROUTER_REDIS_URL points at a port where nothing listens, so dev must
    start its own redis-server. external-redis: it points at the session's private
    server (never the machine's shared Redis), which dev must leave as it found it.
    """
    if request.param == "external-redis":
        redis_url = request.getfixturevalue("redis_server").url
    else:
        redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "REDIS_URL"}
    env.update(
        ROUTER_REDIS_URL=redis_url,
        ROUTER_API_PORT=str(free_port()),
        ROUTER_STREAM_HEALTH_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "dev", "--customers", "200", "--rate", "20", "--duration", "240"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[psutil.Process] = []
    try:
        yield proc, tmp_path
    finally:
        # Whatever the test's outcome, leave nothing running: dev, then anything it started.
        with contextlib.suppress(psutil.NoSuchProcess):
            seen = psutil.Process(proc.pid).children(recursive=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for p in _running(seen):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        if proc.stdout is not None:
            proc.stdout.close()


def test_dev_serves_the_printed_example_and_leaves_no_orphans(
    dev_process: tuple[subprocess.Popen[str], Path], request: pytest.FixtureRequest
) -> None:
    proc, run_dir = dev_process
    external = request.node.callspec.params["dev_process"] == "external-redis"
    if external:
        shared = redis.Redis.from_url(request.getfixturevalue("redis_server").url)
        shared.set("someone-else:key", "kept")
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()

    output: list[str] = []
    curl: str | None = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while curl is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("no example printed in time:\n" + "".join(output) + _logs(run_dir / ".run"))
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(
                f"router dev exited ({proc.wait()}) before it was ready:\n" + "".join(output) + _logs(run_dir / ".run")
            )
        output.append(line)
        if line.startswith("curl "):
            curl = line

    assert "/schema/swagger" in "".join(output), "the API docs URL is printed"
    assert "/console/ (sign in with the dev key router-dev-key)" in "".join(output), "the console URL is printed"

    # Run the printed command as a user would paste it: same URL, headers and body.
    argv = shlex.split(curl)
    url = next(a for a in argv if a.startswith("http://"))
    body = argv[argv.index("-d") + 1]
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    assert "X-API-Key" in headers, "the example carries the dev API key"
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        decision = json.loads(response.read())
    assert "tier" in decision, decision

    family = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in family)
    expected = ["broker", "router consume", "router serve", "router produce-demo"]
    if not external:
        expected.append("redis-server")
    for part in expected:
        assert part in names, f"{part!r} not among the children of router dev: {names}"

    started = time.monotonic()
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends: only dev's own process group
    assert proc.wait(STOP_TIMEOUT_S) == 0, "a clean stop exits 0:\n" + _logs(run_dir / ".run")
    stop_s = time.monotonic() - started
    gone_by = time.monotonic() + 5.0
    while _running(family) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert _running(family) == [], f"orphans after router dev stopped: {_running(family)}"
    assert stop_s < 15.0, f"stopping took {stop_s:.1f}s"

    if external:
        # The run's keys (under its own prefix) are gone; nobody else's were touched.
        assert [k for k in shared.scan_iter(match="rt*")] == []
        assert shared.get("someone-else:key") == b"kept"
        shared.delete("someone-else:key")
        shared.close()


def test_dev_mode_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    """`router dev` without keys is dev mode (the public dev key): on 0.0.0.0 it stops before the API starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "REDIS_URL"}
    env.update(
        ROUTER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        ROUTER_API_HOST="0.0.0.0",
        ROUTER_API_PORT=str(free_port()),
        ROUTER_STREAM_HEALTH_PORT="0",
    )
    done = subprocess.run(
        [sys.executable, "-m", "router", "dev", "--customers", "10", "--duration", "30"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ROUTER_AUTH_DEV_MODE=true serves the public dev key" in done.stderr
    assert "started api" not in done.stdout


def test_dev_with_api_keys_runs_on_a_random_identity_key_of_its_own(tmp_path: Path) -> None:
    """With keys there is no dev mode, so the built-in identity key would be refused: a run whose
    state is its own (private Redis) gets a random one instead."""
    key = "crm:helpdesk:" + "k3y-" + os.urandom(12).hex()
    stack = _Stack(tmp_path)
    stack.redis = object()  # type: ignore[assignment]  # a private redis-server: the state is this run's
    chosen = _child_settings(Settings(auth=AuthSettings(keys=key)), stack)
    assert placeholder_reason(chosen.identity.hash_key) is None and not chosen.auth.dev_mode
    assert chosen.identity.hash_key != _child_settings(Settings(auth=AuthSettings(keys=key)), stack).identity.hash_key

    stack.redis = None  # state that outlives the run: no silent new key, a clear refusal instead
    with pytest.raises(InfraError, match="ROUTER_IDENTITY_HASH_KEY"):
        _child_settings(Settings(auth=AuthSettings(keys=key)), stack)
