"""Reloads without restart: policy and churn model, by admin endpoint or SIGHUP.

A new policy or model is loaded completely (validated, compiled, probed) before the
reference is swapped; if loading fails the old one stays in force and the caller gets the
loader's precise message (422). Each worker process reloads itself: with several uvicorn
workers, send SIGHUP to each worker (or restart them), or call the endpoint once per worker.
"""

from __future__ import annotations

import asyncio
import logging
import time

from router.churn.model import ModelError
from router.errors import Invalid
from router.policy import PolicyError
from router.serving.live import Live
from router.state.audit import AdminRecord, AuditWriter
from schemas.api import ReloadResult

__all__ = ["ReloadService"]

log = logging.getLogger("router.serving.reloads")


class ReloadService:
    def __init__(self, live: Live, audit: AuditWriter) -> None:
        self.live = live
        self.audit = audit
        self._tasks: set[asyncio.Task[None]] = set()

    def reload_policy(self, path: str | None, actor: str) -> ReloadResult:
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

    async def reload_model(self, path: str | None, actor: str) -> ReloadResult:
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
            result = self.reload_policy(None, "SIGHUP")
            log.info("SIGHUP: policy %s loaded", result.version)
        except Invalid as exc:
            log.error("SIGHUP: %s", exc.message)
        try:
            result = await self.reload_model(None, "SIGHUP")
            log.info("SIGHUP: model %s loaded", result.version)
        except Invalid as exc:
            log.error("SIGHUP: %s", exc.message)

    def _audit(self, action: str, actor: str, detail: str) -> None:
        self.audit.record(AdminRecord(action=action, at=time.time(), actor=actor, detail=detail))
