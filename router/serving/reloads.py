"""Reloads without restart: policy and churn model, by admin endpoint or SIGHUP.

A new policy or model is loaded completely (validated, compiled, probed) before the
reference is swapped; if loading fails the old one stays in force and the caller gets the
loader's precise message (422). The admin endpoint then announces the file in Redis (path,
SHA-256, version; :mod:`router.state.follow`): every other API worker and every state consumer
loads the same file within ``model.follow_s`` seconds (the consumers take a new policy's
cost-to-serve prices). SIGHUP reloads the configured files in the process that receives it only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from router.churn.model import ModelError
from router.errors import REDIS_FAULTS, Invalid
from router.policy import PolicyError
from router.policy.spec import read_policy_file
from router.serving.live import Live
from router.state.audit import AdminRecord, AuditWriter
from router.state.records import Announcement
from schemas.api import ReloadResult

__all__ = ["ReloadService"]

log = logging.getLogger("router.serving.reloads")


class ReloadService:
    def __init__(self, live: Live, audit: AuditWriter) -> None:
        self.live = live
        self.audit = audit
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload_policy(self, path: str | None, actor: str, *, announce: bool = True) -> ReloadResult:
        result = self._reload_policy(path, actor)
        if announce:
            try:  # the consumers' cost-to-serve prices come from the same file
                _, digest = read_policy_file(result.path)
            except (PolicyError, UnicodeDecodeError, ValueError, OSError):
                digest = ""  # replaced again since: nothing consistent to announce
            if digest:
                await self._announce("policy", result, digest, actor)
        return result

    def _reload_policy(self, path: str | None, actor: str) -> ReloadResult:
        target = path or self.live.policy_path
        try:
            old, new = self.live.reload_policy(target)
        except (PolicyError, UnicodeDecodeError, ValueError, OSError) as exc:
            # ValueError/OSError: a path the OS refuses (a NUL byte, too long) is the caller's, not a 500
            self._audit("policy_reload_failed", actor, "rejected")
            problem = (
                f"{target}: not UTF-8 text ({exc.reason})"
                if isinstance(exc, UnicodeDecodeError)
                else str(exc)
                if isinstance(exc, PolicyError)
                else f"cannot read policy file {target} ({type(exc).__name__})"
            )
            raise Invalid(f"policy not loaded, {self.live.policy.version} stays in force: {problem}") from None
        self._audit("policy_reload", actor, f"{old.version} -> {new.version}")
        return ReloadResult(kind="policy", version=new.version, previous_version=old.version, path=str(target))

    async def reload_model(self, path: str | None, actor: str, *, announce: bool = True) -> ReloadResult:
        result = await self._reload_model(path, actor)
        model = self.live.model
        if announce and model is not None:
            await self._announce("model", result, model.sha256, actor)
        return result

    async def _announce(self, kind: str, result: ReloadResult, sha256: str, actor: str) -> None:
        """Tell every other process to load the file too; the reload here stands even if Redis is down."""
        announcement = Announcement(
            path=_absolute(result.path), sha256=sha256, version=result.version, at=time.time(), by=actor
        )
        try:
            await self.live.background.announce(kind, announcement)
        except REDIS_FAULTS as exc:
            log.error("%s %s loaded here but not announced to other processes: %s", kind, result.version,
                      type(exc).__name__)  # fmt: skip

    async def _reload_model(self, path: str | None, actor: str) -> ReloadResult:
        target = path or self.live.model_path
        current = self.live.model
        try:
            old, new = await self.live.reload_model(target)
        except Exception as exc:  # ModelError, and whatever a malformed card makes the loader trip over
            self._audit("model_reload_failed", actor, "rejected")
            kept = current.version if current is not None else "no model"
            problem = str(exc) if isinstance(exc, ModelError) else f"{target} is unusable ({type(exc).__name__}: {exc})"
            raise Invalid(f"model not loaded, {kept} stays in force: {problem}") from None
        previous = old.version if old is not None else "none"
        self._audit("model_reload", actor, f"{previous} -> {new.version}")
        return ReloadResult(kind="model", version=new.version, previous_version=previous, path=str(target))

    def on_sighup(self) -> None:
        """Signal handler: reload policy and model from their configured paths; log, never raise."""
        task = asyncio.get_running_loop().create_task(self._reload_all(), name="sighup-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_all(self) -> None:
        try:
            result = await self.reload_policy(None, "SIGHUP", announce=False)
            log.info("SIGHUP: policy %s loaded", result.version)
        except Invalid as exc:
            log.error("SIGHUP: %s", exc.message)
        try:
            result = await self.reload_model(None, "SIGHUP", announce=False)
            log.info("SIGHUP: model %s loaded", result.version)
        except Invalid as exc:
            log.error("SIGHUP: %s", exc.message)

    def _audit(self, action: str, actor: str, detail: str) -> None:
        self.audit.record(AdminRecord(action=action, at=time.time(), actor=actor, detail=detail))


def _absolute(path: str) -> str:
    """The path other processes can open whatever their working directory (no file system access)."""
    return os.path.abspath(path)
