"""Policy administration: validate a draft, simulate it off the request path, apply it, roll back.

Validation is the loader's own (:func:`router.policy.policy_from_text`), so a draft gets the
same precise message as a file at start-up. A simulation runs as a separate process scheduled SCHED_IDLE
(``router policy simulate --job ID``) with its own Redis client; this worker only starts it
and reads its progress, so the event loop that serves decisions never runs it. Applying stores
the draft as a new policy version in Redis (:class:`~router.state.policies.PolicyVersions`);
every worker's :class:`~router.serving.live.Live` picks it up within about a second, this one
at once. Every apply and rollback is audited with the API key that did it.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from router.errors import REDIS_FAULTS, Conflict, Invalid, NotFound, Unavailable
from router.policy import Policy, PolicyError, load_policy, policy_from_text
from router.serving.live import Live
from router.serving.simulation import SimulationReport, example_hashes, simulate
from router.settings import Settings, to_env
from router.state.audit import AdminRecord, AuditReader, AuditWriter
from router.state.console import ConsoleState, SimulationJob
from router.state.keys import Keys
from router.state.policies import STORED_VERSION_PREFIX, PolicyVersion, PolicyVersions, VersionConflict
from router.state.records import Announcement
from router.state.store import StateStore, connect_redis

__all__ = ["MAX_DRAFT_BYTES", "PolicyAdmin", "diff", "run_simulation_job", "simulate_command"]

log = logging.getLogger("router.serving.policy_admin")
MAX_DRAFT_BYTES = 60_000
SIMULATION_REDIS_TIMEOUT_S = 60.0
_report_dec = msgspec.json.Decoder(SimulationReport)


def diff(old: str, new: str, old_name: str, new_name: str) -> list[str]:
    """Unified diff lines of two policy texts."""
    return list(difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name, lineterm="", n=2))


class PolicyAdmin:
    def __init__(self, live: Live, state: ConsoleState, audit: AuditWriter, settings: Settings) -> None:
        self.live = live
        self.versions: PolicyVersions = live.versions
        self.state = state
        self.audit = audit
        self.settings = settings
        self._children: set[asyncio.subprocess.Process] = set()

    # -- drafts ------------------------------------------------------------------------------------

    @staticmethod
    def validate(text: str) -> Policy:
        """The draft as a policy, or :class:`Invalid` with the loader's message."""
        if len(text.encode()) > MAX_DRAFT_BYTES:
            raise Invalid(f"draft: longer than {MAX_DRAFT_BYTES:,} bytes")
        try:
            return policy_from_text(text, "draft")
        except PolicyError as exc:
            raise Invalid(str(exc)) from None

    async def current_text(self) -> tuple[str, int | None]:
        """The text of the policy in force on this worker, and its stored version number."""
        number = self.live.policy_number
        if number is not None:
            stored = await self._stored(number)
            return stored.text, number
        return await self._file_text(), None

    async def _file_text(self) -> str:
        return await asyncio.to_thread(Path(self.live.policy_path).read_text)

    async def _stored(self, number: int) -> PolicyVersion:
        try:
            stored = await self.versions.get(number)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"policy versions unavailable ({type(exc).__name__})") from None
        if stored is None:
            raise NotFound(f"no policy version {number}")
        return stored

    # -- simulation --------------------------------------------------------------------------------

    async def start_simulation(self, text: str, author: str, options: dict[str, Any]) -> str:
        """Validate the draft and start a simulation process; its job id."""
        draft = self.validate(text)
        job_id = secrets.token_hex(8)
        options = {**options, "base": self.live.policy_number, "draft_version": draft.version}
        try:
            running = await self.state.start_job(job_id, author=author, draft=text, options=options)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"simulation jobs unavailable ({type(exc).__name__})") from None
        if running is not None:
            raise Conflict("a simulation is running already; wait for it to finish")
        env = {**os.environ, **to_env(self.settings)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "policy", "simulate", "--job", job_id,
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self._children.add(proc)
        task = asyncio.get_running_loop().create_task(proc.wait())
        task.add_done_callback(lambda _: self._children.discard(proc))
        self._audit("policy_simulated", author, f"draft {draft.version}, job {job_id}")
        return job_id

    async def job(self, job_id: str) -> SimulationJob:
        try:
            job = await self.state.job(job_id)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"simulation jobs unavailable ({type(exc).__name__})") from None
        if job is None:
            raise NotFound("no such simulation (results are kept for a day)")
        return job

    async def report(self, job: SimulationJob) -> tuple[SimulationReport, dict[str, str]]:
        """A finished job's report and the customer ids of its example customers (erased ones missing)."""
        assert job.report is not None
        report = _report_dec.decode(job.report)
        try:
            ids = await self.live.background.customer_ids(list(example_hashes(report)))
        except REDIS_FAULTS:
            ids = {}
        return report, ids

    async def close(self) -> None:
        """Stop simulations this worker started (they hold a share of a core)."""
        for proc in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in list(self._children):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    # -- versions ----------------------------------------------------------------------------------

    async def apply(self, job_id: str, author: str) -> PolicyVersion:
        """Put the draft a simulation ran on in force (everywhere), if nothing else was applied since."""
        job = await self.job(job_id)
        if job.state != "done":
            raise Conflict("the simulation has not finished: apply what you have seen")
        base = job.options.get("base")
        return await self._publish(job.draft, author, f"applied after simulation {job_id}", base)

    async def rollback(self, number: int, author: str) -> PolicyVersion:
        """Put an earlier version's text in force again, as a new version."""
        old = await self._stored(number)
        return await self._publish(old.text, author, f"rollback to version {number}", self.live.policy_number)

    async def _publish(self, text: str, author: str, note: str, base: int | None) -> PolicyVersion:
        policy = self.validate(text)
        try:
            if await self.versions.active_number() != base:
                raise Conflict("another policy was applied since this one was simulated: simulate again")
            if policy.version == self.live.policy.version:
                raise Invalid(f"version: {policy.version!r} is in force already; give the draft a new version")
            if base is None:
                # The first change: keep the file's policy as the first version, so it can be rolled back to.
                first = await self.versions.publish(
                    text=await self._file_text(), version=self.live.policy.version, author=author,
                    note="the policy file in force before the first change", expected=None,
                )  # fmt: skip
                base = first.number
            stored = await self.versions.publish(
                text=text, version=policy.version, author=author, note=note, expected=base
            )
            await self.live.follow_policy()
            # The state consumers take cost-to-serve prices from the policy: announce the stored
            # version to them as an admin file reload announces a file (router.state.follow).
            await self.live.background.announce(
                "policy",
                Announcement(
                    path=f"{STORED_VERSION_PREFIX}{stored.number}",
                    sha256=hashlib.sha256(text.encode()).hexdigest(),
                    version=policy.version,
                    at=time.time(),
                    by=author,
                ),
            )
        except VersionConflict:
            raise Conflict("another policy was applied meanwhile: simulate again") from None
        except REDIS_FAULTS as exc:
            raise Unavailable(f"policy versions unavailable ({type(exc).__name__})") from None
        self._audit("policy_applied", author, f"version {stored.number}: {policy.version} ({note})")
        return stored

    async def history(self) -> list[PolicyVersion]:
        try:
            return await self.versions.history()
        except REDIS_FAULTS as exc:
            raise Unavailable(f"policy versions unavailable ({type(exc).__name__})") from None

    async def version_diff(self, number: int) -> tuple[PolicyVersion, list[str]]:
        """A version and its diff against the one it replaced (or the policy file)."""
        new = await self._stored(number)
        if new.previous is not None:
            old_text, old_name = (await self._stored(new.previous)).text, f"version {new.previous}"
        else:
            old_text, old_name = await self._file_text(), "policy file"
        return new, diff(old_text, new.text, old_name, f"version {number}")

    def _audit(self, action: str, actor: str, detail: str) -> None:
        self.audit.record(AdminRecord(action=action, at=time.time(), actor=actor, detail=detail))


# -- the process that runs a simulation (``router policy simulate``) ---------------------------------


async def _current_policy(versions: PolicyVersions, path: str) -> Policy:
    """The policy the workers have in force: the stored version, else the file."""
    number = await versions.active_number()
    stored = await versions.get(number) if number is not None else None
    return policy_from_text(stored.text, f"policy version {number}") if stored else load_policy(path)


async def _run(
    settings: Settings, draft_text: str, options: dict[str, Any], job_id: str | None
) -> tuple[SimulationReport, dict[str, str]]:
    from router.churn.model import ChurnModel  # onnxruntime: only in the process that needs it
    from router.core.identity import IdentityHasher

    # A generous socket budget: this process yields the CPU to live traffic and may wait its turn.
    client = connect_redis(settings.redis, timeout_s=SIMULATION_REDIS_TIMEOUT_S)
    source = settings.console.simulation_redis_url
    reads = (
        connect_redis(msgspec.structs.replace(settings.redis, url=source), timeout_s=SIMULATION_REDIS_TIMEOUT_S)
        if source
        else client
    )  # customers and audited decisions: a replica keeps the scan off the Redis that serves decisions
    store = StateStore(reads, settings.redis.prefix, IdentityHasher.from_settings(settings.identity))
    state = ConsoleState(client, store.keys)
    try:
        try:
            model: ChurnModel | None = ChurnModel.load(settings.model.path, business=settings.model.business)
        except Exception as exc:  # as the API: no model, rule-based scores
            log.warning("churn model not loaded, simulating without it: %s", exc)
            model = None
        current = await _current_policy(PolicyVersions(client, store.keys), settings.policy.path)
        draft = policy_from_text(draft_text, "draft")

        async def progress(phase: str, done: int, total: int | None) -> None:
            if job_id is not None:
                await state.job_progress(job_id, phase, done, total)

        report = await simulate(
            store, AuditReader(store), model, settings.model, current, draft,
            days=int(options.get("days", 7)), sample=float(options.get("sample", 1.0)),
            capacity={str(k): float(v) for k, v in dict(options.get("capacity") or {}).items()},
            default_capacity=None if options.get("default_capacity") is None else float(options["default_capacity"]),
            cpu_share=float(options.get("cpu_share", 1.0)), progress=progress,
        )  # fmt: skip
        if job_id is not None:
            await state.finish_job(job_id, msgspec.json.encode(report))
        ids = await store.customer_ids(list(example_hashes(report)))
        return report, ids
    except BaseException as exc:
        if job_id is not None:
            message = str(exc) if isinstance(exc, PolicyError) else f"simulation failed ({type(exc).__name__})"
            with contextlib.suppress(*REDIS_FAULTS):
                await state.fail_job(job_id, message)
        raise
    finally:
        await client.aclose()
        if reads is not client:
            await reads.aclose()


async def run_simulation_job(settings: Settings, job_id: str) -> None:
    """The console's simulation process: draft and options from the job, progress and report into it."""
    _yield_cpu()
    client = connect_redis(settings.redis, timeout_s=10.0)
    try:
        job = await ConsoleState(client, Keys(settings.redis.prefix)).job(job_id)
    finally:
        await client.aclose()
    if job is None:
        raise SystemExit(f"no simulation job {job_id}")
    await _run(settings, job.draft, job.options, job_id)


def _yield_cpu() -> None:
    """Live traffic first: run only on a core nothing else wants (SCHED_IDLE), else at nice 10."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed
        os.nice(10)


async def simulate_command(
    settings: Settings, draft_text: str, options: dict[str, Any]
) -> tuple[SimulationReport, dict[str, str]]:
    """``router policy simulate DRAFT``: the same simulation, report to the caller."""
    return await _run(settings, draft_text, options, None)
