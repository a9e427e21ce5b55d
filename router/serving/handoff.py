"""Chatbot handoff: hand the conversation to a person now, or let the bot continue.

The policy decides where the contact belongs (a decision with channel ``chat``); the bot
may keep it only while that target is the bot itself. On top, conversation rules with
thresholds from :class:`~router.settings.HandoffSettings`, checked in this order:

1. the customer asked for a person -> hand over (a VIP always; other tiers unless listed in
   ``bot_retry_tiers``, which can never include VIP),
2. the policy routes the contact to a person (e.g. a VIP's technical issue, a valuable
   customer at risk) -> hand over,
3. too many failed intents, too negative a conversation, too many bot turns -> hand over,
4. otherwise the bot continues.

A handover whose policy target is the bot goes to ``fallback_queue``/``fallback_role``.
"""

from __future__ import annotations

from router.serving.decisions import DecisionService
from router.settings import HandoffSettings
from schemas.api import ClassifyRequest, Decision, HandoffDecision, HandoffRequest

__all__ = ["HandoffService"]

_BOT_ROLE = "bot"


class HandoffService:
    def __init__(self, decisions: DecisionService, settings: HandoffSettings) -> None:
        self.decisions = decisions
        self.settings = settings
        # VIP customers are never kept in the bot against their will, whatever is configured.
        self.retry_tiers = frozenset(t.strip() for t in settings.bot_retry_tiers.split(",") if t.strip()) - {"VIP"}

    async def decide(self, req: HandoffRequest) -> HandoffDecision:
        conv = req.conversation
        classify = ClassifyRequest(
            customer=req.customer, channel="chat", category=conv.category, text_sentiment=conv.sentiment
        )
        d = self.decisions.decide(classify, await self.decisions.resolve(req.customer))
        handover, reason = self._rule(req, d)
        if handover and d.escalation.role == _BOT_ROLE:
            queue, role = self.settings.fallback_queue, self.settings.fallback_role
        else:
            queue, role = d.escalation.queue, d.escalation.role
        return HandoffDecision(
            handover=handover,
            queue=queue,
            role=role,
            reason=reason,
            tier=d.tier,
            sla=d.sla,
            decision_id=d.decision_id,
            degraded=d.degraded,
            degraded_cause=d.degraded_cause,
        )

    def _rule(self, req: HandoffRequest, d: Decision) -> tuple[bool, str]:
        conv, s = req.conversation, self.settings
        if conv.asked_for_human:
            if d.tier == "VIP":
                return True, "VIP customer asked for a person: hand over now"
            if d.tier not in self.retry_tiers:
                return True, "Customer asked for a person"
        if d.escalation.role != _BOT_ROLE:
            return True, f"Policy routes this contact to a person ({d.escalation.role.replace('_', ' ')})"
        if conv.failed_intents >= s.max_failed_intents:
            return True, f"Bot failed to understand {conv.failed_intents} times"
        if conv.sentiment is not None and conv.sentiment <= s.negative_sentiment:
            return True, "Conversation turned negative"
        if conv.bot_turns >= s.max_bot_turns:
            return True, f"Bot has answered {conv.bot_turns} times without solving it"
        if conv.asked_for_human:
            return False, "Asked for a person: the bot tries once more, then hands over"
        return False, "Bot continues: policy routes this contact to the bot first"
