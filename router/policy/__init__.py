"""Routing policy: the versioned policy file and the code that interprets it.

The policy is data (``default.toml``, path in ``PolicySettings.path``): tier cut-offs, SLA
targets and clocks, business-hours calendars, escalation targets, routing rules and
next-best-action rules. This package reads it and answers one question per contact:

    policy = load_policy(settings.policy.path)      # slow: once at start-up / on reload
    result = decide(policy, inp, received_at)       # fast: on every request

Hot reload: :func:`load_policy` is pure. It reads the file, validates it completely and
returns a new immutable :class:`Policy`, touching no module state. A reloader therefore
builds the new policy first and only then replaces its single reference (one attribute
assignment, atomic for concurrent readers); a request that already holds the old object
finishes with it. If the new file is invalid, :class:`PolicyError` is raised and the old
policy simply stays in force. Every decision carries ``policy.version`` for the audit log.
"""

from router.policy.engine import (
    DecisionInput,
    Policy,
    PolicyDecision,
    compile_policy,
    decide,
    load_policy,
    policy_from_text,
)
from router.policy.sla import Calendar, Clock, deadline
from router.policy.spec import PolicyError, PolicySpec, parse_policy, parse_policy_text, read_policy

__all__ = [
    "Calendar",
    "Clock",
    "DecisionInput",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "PolicySpec",
    "compile_policy",
    "deadline",
    "decide",
    "load_policy",
    "parse_policy",
    "parse_policy_text",
    "policy_from_text",
    "read_policy",
]
