"""``router dev``: the whole stack on one machine, with nothing installed system-wide.

Starts an embedded broker (unless ``ROUTER_KAFKA_BOOTSTRAP`` is set), uses Redis at
``ROUTER_REDIS_URL`` if it answers or else a private redis-server, creates the topics,
then runs the state consumer, the API and the demo producer (and ``router connect`` when a
connector file is configured) as child processes and
supervises them. Every child runs in its own process group with its output in
``.run/<name>.log``; on Ctrl-C, SIGTERM, the end of ``--duration`` or a crashed child,
all of them are stopped (SIGTERM, then SIGKILL), so nothing outlives the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import redis

from router.api.auth import DEV_KEY
from router.devstack.infra import (
    Broker,
    InfraError,
    ManagedProcess,
    RedisServer,
    ensure_redis,
    free_port,
    start_broker,
)
from router.ops.kafka import ensure_topics
from router.settings import RedisSettings, Secret, Settings, placeholder_reason, to_env, unsafe_reasons

__all__ = ["DEMO_CUSTOMER_ID", "example_request", "run_dev"]

DEMO_CUSTOMER_ID = "C000001"
"""A customer the demo producer always creates (ids are ``C`` + six digits from 1)."""

_STOP_TIMEOUT_S = 8.0
_POLL_S = 0.2


class _Stopped(BaseException):
    """Raised by the signal handler; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _ChildDied(Exception):
    def __init__(self, child: ManagedProcess, code: int) -> None:
        super().__init__(f"{child.name} exited unexpectedly with code {code}")
        self.child = child
        self.code = code


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def example_request(settings: Settings, customer_id: str = DEMO_CUSTOMER_ID) -> str:
    """A ready-to-paste curl command classifying a ticket of a demo customer."""
    body = {"customer": {"customer_id": customer_id}, "channel": "phone", "category": "technical"}
    url = f"http://{_display_host(settings.api.host)}:{settings.api.port}/v1/classify"
    key = DEV_KEY if not settings.auth.keys else "<your API key>"
    return shlex.join(
        ["curl", "-sS", "-X", "POST", url, "-H", "content-type: application/json", "-H", f"X-API-Key: {key}",
         "-d", json.dumps(body)]
    )  # fmt: skip


def _with_dev_auth(settings: Settings) -> Settings:
    """Local stacks without configured API keys run the API in dev mode (the printed dev key works)."""
    if settings.auth.keys or settings.auth.dev_mode:
        return settings
    return msgspec.structs.replace(settings, auth=msgspec.structs.replace(settings.auth, dev_mode=True))


def _child_settings(settings: Settings, stack: _Stack) -> Settings:
    """What the children run with: dev mode unless keys are set, and a real identity key.

    A placeholder identity key (the built-in default) is replaced by a random one when this run's
    state is its own (a private Redis, or a per-run prefix that is removed at exit); with state
    that outlives the run it stays, which only dev mode accepts. Raises :class:`InfraError` with
    what the API and the consumer would refuse (``router.settings.unsafe_reasons``).
    """
    settings = _with_dev_auth(settings)
    own_state = stack.redis is not None or stack.scratch_redis is not None
    if own_state and placeholder_reason(settings.identity.hash_key):
        identity = msgspec.structs.replace(settings.identity, hash_key=secrets.token_urlsafe(32))
        settings = msgspec.structs.replace(settings, identity=identity)
    problems = unsafe_reasons(settings, binds_api=True)
    if problems:
        raise InfraError("; ".join(problems))
    return settings


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do, so a port in TIME_WAIT from the previous run counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class _SignalGate:
    """Turns SIGINT/SIGTERM into :class:`_Stopped`, except inside :meth:`hold`.

    Holding covers "start a process and record it": a signal in between would leave a
    process that nobody stops. Inside a hold the signal is remembered and raised when
    the hold ends.
    """

    def __init__(self) -> None:
        self._holds = 0
        self._pending: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._holds:
            self._pending = signum
            return
        raise _Stopped(signum)

    def install(self) -> None:
        """Install the handlers (only possible from the main thread; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def ignore(self) -> None:
        """Ignore further signals: cleanup must not be cut short by an impatient second
        Ctrl-C (that is how orphans happen), and it is bounded by the SIGKILL timeout."""
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        """Put the handlers back as they were before :meth:`install`."""
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous = {}

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Defer SIGINT/SIGTERM until the block ends."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
        if not self._holds and self._pending is not None:
            raise _Stopped(self._pending)


@dataclass
class _Stack:
    """Everything ``run_dev`` started, in start order, so it can stop it in reverse."""

    run_dir: Path
    gate: _SignalGate = field(default_factory=_SignalGate)
    broker: Broker | None = None
    redis: RedisServer | None = None
    scratch_redis: RedisSettings | None = None
    """An external Redis whose per-run keys (under its prefix) are removed at exit."""
    children: list[ManagedProcess] = field(default_factory=list)

    def stop(self) -> None:
        # Applications first, all at once (their shutdowns overlap), while the broker
        # and Redis they flush to are still up; then the infrastructure.
        for child in self.children:
            child.terminate()
        for child in reversed(self.children):
            child.stop(_STOP_TIMEOUT_S)
        if self.scratch_redis is not None:
            _delete_prefix(self.scratch_redis)
        if self.redis is not None:
            self.redis.close()
        if self.broker is not None:
            self.broker.stop()


def _delete_prefix(redis_settings: RedisSettings) -> None:
    """Delete every key under the prefix of ``redis_settings`` (a run's keys in an external Redis)."""
    prefix = redis_settings.prefix
    client: redis.Redis | redis.RedisCluster
    if redis_settings.cluster:
        client = redis.RedisCluster.from_url(redis_settings.url)
    else:
        client = redis.Redis.from_url(redis_settings.url)
    removed = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += _unlink(client, batch)
                batch = []
        removed += _unlink(client, batch)
    except redis.RedisError as exc:
        _complain(f"could not remove the keys under {prefix!r} from {_shown(redis_settings.url)}: {exc}")
    finally:
        client.close()
    _say(f"removed {removed} keys under {prefix!r}")


def _unlink(client: redis.Redis | redis.RedisCluster, keys: list[bytes]) -> int:
    if not keys:
        return 0
    if isinstance(client, redis.RedisCluster):
        # Keys of several hash slots cannot go into one command on a cluster.
        return sum(int(client.unlink(key)) for key in keys)
    return int(client.unlink(*keys))


def _shown(url: str) -> str:
    """A Redis URL as it may be printed: its password masked."""
    return Secret(url).masked()


def _say(message: str) -> None:
    print(f"router dev: {message}", flush=True)


def _complain(message: str) -> None:
    print(f"router dev: {message}", file=sys.stderr, flush=True)


def _log_path(run_dir: Path, name: str) -> Path:
    path = run_dir / f"{name}.log"
    # Fresh logs per run, so a tail shown after a crash belongs to this run.
    path.unlink(missing_ok=True)
    return path


def _check_children(watched: list[ManagedProcess]) -> None:
    for child in list(watched):
        code = child.poll()
        if code is None:
            continue
        if child.name == "demo" and code == 0:
            # The demo producer may be told to stop after a while; the stack stays up.
            _say("demo producer finished")
            watched.remove(child)
            continue
        raise _ChildDied(child, code)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_dev(
    settings: Settings,
    *,
    customers: int,
    rate: float,
    duration_s: float | None,
    run_dir: Path | None = None,
    ready_timeout_s: float = 180.0,
) -> int:
    """Run the local stack until Ctrl-C, SIGTERM or ``duration_s``; 0 on a clean stop.

    Returns 1 if something could not start or a child died unexpectedly (its log tail
    is printed). Logs go to ``run_dir`` (default ``./.run``).
    """
    run_dir = run_dir or Path.cwd() / ".run"
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = _Stack(run_dir)
    started = time.monotonic()
    stack.gate.install()
    try:
        try:
            settings = _start_infrastructure(settings, stack)
            watched = _start_children(settings, stack, customers=customers, rate=rate)
            ready_url = f"http://{_display_host(settings.api.host)}:{settings.api.port}/health/ready"
            deadline = started + ready_timeout_s
            while not _ready(ready_url):
                _check_children(watched)
                if time.monotonic() > deadline:
                    _complain(f"the API was not ready after {ready_timeout_s:.0f}s ({ready_url})")
                    _show_tails(stack.children)
                    return 1
                time.sleep(_POLL_S)
            _banner(settings, stack, time.monotonic() - started)
            end = None if duration_s is None else time.monotonic() + duration_s
            while end is None or time.monotonic() < end:
                _check_children(watched)
                time.sleep(_POLL_S)
            _say(f"{duration_s:g}s elapsed, stopping")
            return 0
        except _Stopped as stopped:
            _say(f"{stopped}, stopping")
            return 0
        except _ChildDied as died:
            _complain(f"{died}; last lines of {died.child.log_path}:")
            print(_indent(died.child.tail() or "(no output)"), file=sys.stderr, flush=True)
            return 1
        except InfraError as exc:
            _complain(str(exc))
            return 1
        finally:
            stack.gate.ignore()
            stack.stop()
            _say("stopped")
    finally:
        stack.gate.restore()


def _start_infrastructure(settings: Settings, stack: _Stack) -> Settings:
    """Broker, Redis and topics; returns the settings the children must use."""
    kafka = settings.kafka
    if not kafka.bootstrap:
        t0 = time.monotonic()
        with stack.gate.hold():
            stack.broker = start_broker(log_path=_log_path(stack.run_dir, "broker"))
        kafka = msgspec.structs.replace(kafka, bootstrap=stack.broker.bootstrap)
        _say(f"embedded broker at {stack.broker.bootstrap} ({time.monotonic() - t0:.2f}s, in memory)")
    with stack.gate.hold():
        redis_url, stack.redis = ensure_redis(settings.redis.url, log_path=_log_path(stack.run_dir, "redis"))
    redis_settings = msgspec.structs.replace(settings.redis, url=redis_url)
    if stack.redis is not None:
        _say(f"{_shown(settings.redis.url)} does not answer; private redis-server at {redis_url}")
    elif stack.broker is not None:
        # Redis holds the consumer's offsets next to the state they cover. A fresh
        # in-memory log with the state of an earlier run would make the consumer seek
        # to offsets of another log, so this run gets keys of its own, removed at exit.
        prefix = f"{settings.redis.prefix}-dev-{uuid.uuid4().hex[:8]}"
        redis_settings = msgspec.structs.replace(redis_settings, prefix=prefix)
        stack.scratch_redis = redis_settings
        _say(f"using {_shown(redis_url)} with key prefix {prefix!r} for this run (removed on exit)")
    settings = msgspec.structs.replace(settings, kafka=kafka, redis=redis_settings)
    # Topics before any client: Tansu auto-creates a topic a metadata request names,
    # with its own partition count.
    asyncio.run(ensure_topics(settings.kafka))

    api = settings.api
    if not _port_free(api.host, api.port):
        raise InfraError(f"API port {api.host}:{api.port} is in use; set ROUTER_API_PORT")
    stream = settings.stream
    if stream.health_port and not _port_free(stream.health_host, stream.health_port):
        port = free_port()
        _say(f"consumer health port {stream.health_port} is in use; using {port}")
        settings = msgspec.structs.replace(settings, stream=msgspec.structs.replace(stream, health_port=port))
    connectors = settings.connectors
    if connectors.config_path and connectors.health_port and not _port_free(stream.health_host, connectors.health_port):
        port = free_port()
        _say(f"connector health port {connectors.health_port} is in use; using {port}")
        settings = msgspec.structs.replace(settings, connectors=msgspec.structs.replace(connectors, health_port=port))
    return settings


def _start_children(settings: Settings, stack: _Stack, *, customers: int, rate: float) -> list[ManagedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "REDIS_URL"}
    env.update(to_env(_child_settings(settings, stack)))
    env["PYTHONUNBUFFERED"] = "1"  # so a crash's last words reach the log
    commands = {
        "consumer": ["consume"],
        "api": ["serve"],
        "demo": ["produce-demo", "--customers", str(customers), "--rate", f"{rate:g}"],
    }
    if settings.connectors.config_path:  # helpdesks are connected: follow them and write decisions back
        commands["connect"] = ["connect"]
    for name, args in commands.items():
        with stack.gate.hold():
            child = ManagedProcess(
                name,
                [sys.executable, "-m", "router", *args],
                log_path=_log_path(stack.run_dir, name),
                env=env,
                # If `router dev` itself is SIGKILLed, the kernel asks the children to stop.
                parent_death_signal=signal.SIGTERM,
            )
            stack.children.append(child)
        _say(f"started {name} (pid {child.pid}, log {child.log_path})")
    return list(stack.children)


def _banner(settings: Settings, stack: _Stack, elapsed: float) -> None:
    host = _display_host(settings.api.host)
    stream = settings.stream
    lines = [
        f"ready in {elapsed:.1f}s",
        f"  API docs        http://{host}:{settings.api.port}/schema/swagger",
        f"  console         http://{host}:{settings.api.port}/console/ (sign in with "
        + (f"the dev key {DEV_KEY})" if not settings.auth.keys else "an ops or admin API key)"),
        f"  broker          {settings.kafka.bootstrap}" + (" (embedded)" if stack.broker else ""),
        f"  redis           {_shown(settings.redis.url)}"
        + (" (private)" if stack.redis else f" (key prefix {settings.redis.prefix!r})"),
    ]
    if stream.health_port:
        lines.append(f"  consumer health http://{_display_host(stream.health_host)}:{stream.health_port}/health/ready")
    lines.append(f"  logs            {stack.run_dir}/")
    # The API is ready before the consumer has folded the backfill; say so, or the first
    # answer ("customer not known yet") looks like a bug.
    lines.append("the demo backfills history first: scores fill in as the consumer catches up")
    lines.append("classify a ticket of a demo customer:")
    for line in lines:
        _say(line)
    print(example_request(settings), flush=True)
    _say("Ctrl-C stops everything")


def _show_tails(children: list[ManagedProcess]) -> None:
    for child in children:
        tail = child.tail(10)
        if tail:
            print(f"--- {child.name} ({child.log_path})", file=sys.stderr)
            print(_indent(tail), file=sys.stderr, flush=True)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
