"""Helpers of the connector tests: ``router connect`` as a real process, and reading the outbox back."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from router.connectors.worker import Landed, decode_landed
from router.settings import Settings, to_env
from router.state.keys import Keys
from router.state.outbox import Outbox, OutboxStatus
from router.state.store import connect_redis
from tests.conftest import run_sync


class ConnectProcess:
    """``router connect`` in its own process group; :meth:`kill` is a crash, :meth:`stop` a shutdown."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectProcess:
        env = {**os.environ, **to_env(self.settings)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "connect"],
            env=env,
            stdout=open(self.log, "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def connect_process(settings: Settings, log: Path) -> Iterator[ConnectProcess]:
    proc = ConnectProcess(settings, log).start()
    try:
        yield proc
    finally:
        proc.stop()


async def _with_outbox(settings: Settings, use: Callable[[Outbox], Any]) -> Any:
    client = connect_redis(settings.redis, timeout_s=5.0)
    try:
        return await use(Outbox(client, Keys(settings.redis.prefix)))
    finally:
        await client.aclose()


def outbox_status(settings: Settings, connector: str) -> OutboxStatus:
    result: OutboxStatus = run_sync(_with_outbox(settings, lambda o: o.status(connector)))
    return result


def landed(settings: Settings, connector: str) -> list[Landed]:
    """Every landed write-back the outbox remembers, oldest first."""
    raw: list[bytes] = run_sync(_with_outbox(settings, lambda o: o.recent_landed(connector, 1000)))
    return [decode_landed(r) for r in reversed(raw)]


def enqueue(settings: Settings, connector: str, ticket: str, job: bytes) -> bool:
    """Queue a write-back as the inbound side does (no dedupe window)."""
    result: bool = run_sync(_with_outbox(settings, lambda o: o.enqueue(connector, ticket, job, 0)))
    return result


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


__all__ = [
    "ConnectProcess",
    "connect_process",
    "enqueue",
    "landed",
    "outbox_status",
    "wait_for",
]
