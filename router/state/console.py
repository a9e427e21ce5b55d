"""What the operations console keeps in Redis: sessions and policy simulation jobs.

A session is stored under the SHA-256 of its cookie (a Redis dump holds no usable cookie),
with a Redis TTL equal to its expiry, so every API worker sees the same sessions and signing
out ends a session everywhere. A simulation job holds the draft it simulates, its progress
and its report; one runs at a time per deployment (a lock key with the running job's id).
No clear personal data: erasures a session is following are kept as keyed hashes.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec

from router.state.keys import Keys
from router.state.store import RedisClient

__all__ = ["ConsoleSession", "ConsoleState", "SimulationJob", "session_digest"]

JOB_TTL_S = 86_400
LOCK_TTL_S = 3_600
"""A simulation that has not finished within an hour (a killed process) stops blocking others."""


class ConsoleSession(msgspec.Struct, frozen=True, kw_only=True):
    key_name: str
    """Name of the API key that signed in (the actor in audit records)."""
    scopes: list[str]
    csrf: str
    """Token every form of this session must send back."""
    created: float
    expires: float


class SimulationJob(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    state: str
    """``running``, ``done`` or ``failed``."""
    author: str
    draft: str
    options: dict[str, Any]
    at: float
    phase: str = ""
    done: int = 0
    total: int | None = None
    report: bytes | None = None
    """The :class:`~router.serving.simulation.SimulationReport` as JSON."""
    error: str | None = None


def session_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# KEYS[1]: the lock. ARGV[1]: the job that may release it.
_RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

_enc = msgspec.msgpack.Encoder()
_session_dec = msgspec.msgpack.Decoder(ConsoleSession)
_json = msgspec.json.Encoder()
_options_dec = msgspec.json.Decoder(dict[str, Any])


class ConsoleState:
    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._release = client.register_script(_RELEASE_LUA)

    # -- sessions ----------------------------------------------------------------------------------

    async def create_session(self, token: str, session: ConsoleSession) -> None:
        key = self.keys.console_session(session_digest(token))
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, "r", _enc.encode(session))
        pipe.expireat(key, int(session.expires) + 1)
        await pipe.execute()

    async def session(self, token: str) -> ConsoleSession | None:
        raw: Any = await self.client.hget(self.keys.console_session(session_digest(token)), "r")
        if raw is None:
            return None
        session = _session_dec.decode(raw)
        return session if session.expires > time.time() else None

    async def end_session(self, token: str) -> None:
        await self.client.delete(self.keys.console_session(session_digest(token)))

    async def follow_erasure(self, token: str, event_id: str, customer_key: str) -> None:
        """Remember, for this session only, which customer an erasure request was about."""
        await self.client.hset(self.keys.console_session(session_digest(token)), f"e:{event_id}", customer_key)

    async def followed_erasure(self, token: str, event_id: str) -> str | None:
        raw: Any = await self.client.hget(self.keys.console_session(session_digest(token)), f"e:{event_id}")
        return raw.decode() if isinstance(raw, bytes) else raw

    # -- simulation jobs ---------------------------------------------------------------------------

    async def start_job(self, job_id: str, *, author: str, draft: str, options: dict[str, Any]) -> str | None:
        """Register a job if none is running; else the id of the one that is."""
        lock = self.keys.simulation_lock()
        if not await self.client.set(lock, job_id, nx=True, ex=LOCK_TTL_S):
            running: Any = await self.client.get(lock)
            return running.decode() if isinstance(running, bytes) else str(running or "?")
        key = self.keys.simulation(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping={
                "state": "running", "author": author, "draft": draft, "options": _json.encode(options),
                "at": str(time.time()), "phase": "starting", "done": "0",
            },
        )  # fmt: skip
        pipe.expire(key, JOB_TTL_S)
        await pipe.execute()
        return None

    async def job_progress(self, job_id: str, phase: str, done: int, total: int | None) -> None:
        fields = {"phase": phase, "done": str(done), "total": "" if total is None else str(total)}
        await self.client.hset(self.keys.simulation(job_id), mapping=fields)  # type: ignore[arg-type]

    async def finish_job(self, job_id: str, report: bytes) -> None:
        await self.client.hset(self.keys.simulation(job_id), mapping={"state": "done", "report": report})
        await self._release([self.keys.simulation_lock()], [job_id])

    async def fail_job(self, job_id: str, error: str) -> None:
        await self.client.hset(self.keys.simulation(job_id), mapping={"state": "failed", "error": error})
        await self._release([self.keys.simulation_lock()], [job_id])

    async def job(self, job_id: str) -> SimulationJob | None:
        raw: Any = await self.client.hgetall(self.keys.simulation(job_id))
        if not raw:
            return None
        f = {k.decode(): v for k, v in raw.items()}

        def text(name: str) -> str:
            value = f.get(name)
            return value.decode() if isinstance(value, bytes) else ""

        total = text("total")
        return SimulationJob(
            job_id=job_id,
            state=text("state"),
            author=text("author"),
            draft=text("draft"),
            options=_options_dec.decode(f["options"]) if f.get("options") else {},
            at=float(text("at") or 0),
            phase=text("phase"),
            done=int(text("done") or 0),
            total=int(total) if total else None,
            report=f.get("report"),
            error=text("error") or None,
        )
