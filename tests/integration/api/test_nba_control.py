"""The next-best-action control group in the decision path, on the real Redis: arm per customer, standard
action for the control arm, both in the answer and in the audit trail."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.churn.lifecycle.nba import format_report, report_from_audit
from router.devstack.demo import write_jsonl
from router.policy import load_policy
from router.policy.control import arm_of
from router.state.audit import AuditReader, AuditRecord
from schemas.events import CustomerEvent, Outcome, Usage
from tests.conftest import SettingsFactory
from tests.support.api_support import NOW, api_settings, auth, populate, population
from tests.support.helpers import hasher_of, state_store

IDS = [f"S{i:03d}" for i in range(40)]
Client = AsyncTestClient  # type: ignore[type-arg]


async def _classify(client: Client, req: dict[str, Any]) -> dict[str, Any]:
    """The decision; asked again if it came out degraded (a Redis read slower than its bound on a busy machine)."""
    for _ in range(5):
        d: dict[str, Any] = (await client.post("/v1/classify", json=req, headers=auth("helpdesk"))).json()
        if not d["degraded"]:
            break
    return d


async def test_control_customers_get_the_standard_action_and_the_arm_is_recorded(
    settings: SettingsFactory, tmp_path: Path
) -> None:
    s = api_settings(settings, model={"nba_control_share": 0.5})
    plain = api_settings(settings, model={"nba_control_share": 0.0})
    events = population()
    await populate(s, events)
    await populate(plain, events)
    hasher = hasher_of(s)
    standard = load_policy(s.policy.path).standard_action.code
    # An upset customer: the policy answers with an apology, not the standard action.
    body = {"channel": "email", "category": "billing", "priority": "normal", "text_sentiment": -0.9}
    async with AsyncTestClient(app=create_app(s)) as client, AsyncTestClient(app=create_app(plain)) as baseline:
        arms: dict[str, str] = {}
        for cid in IDS:
            req = {"customer": {"customer_id": cid}, **body}
            d = await _classify(client, req)
            ref = await _classify(baseline, req)
            arms[cid] = d["nba_arm"]
            assert d["nba_arm"] == arm_of(hasher.customer_key(cid), 0.5)
            assert ref["nba_arm"] is None  # no control group: no arm
            if d["nba_arm"] == "control":
                assert [a["code"] for a in d["next_best_actions"]] == [standard]
            else:
                assert d["next_best_actions"] == ref["next_best_actions"]
            assert (d["tier"], d["escalation"]) == (ref["tier"], ref["escalation"])  # only the action changes
            # A customer stays in their arm.
            again = await _classify(client, req)
            assert again["nba_arm"] == d["nba_arm"]
        assert 8 <= list(arms.values()).count("control") <= 32
        withheld_any = False
        await client.app.state.services.audit.flush()
        async with state_store(s) as store:
            trail = {cid: await AuditReader(store).for_customer(hasher.customer_key(cid)) for cid in IDS}
        for cid in IDS:
            recs = trail[cid]
            decisions = [r for r in recs if isinstance(r, AuditRecord)]
            assert decisions and all(r.arm == arms[cid] for r in decisions)
            for r in decisions:
                if r.arm == "control":
                    assert r.actions == [standard] and r.withheld
                    withheld_any = withheld_any or r.withheld != [standard]
                else:
                    assert r.withheld == []
        assert withheld_any  # some control customers would have had another action

        # The report joins the audited arms with outcomes by keyed hash (the audit has no clear id).
        control = [cid for cid in IDS if arms[cid] == "control"]
        action = [cid for cid in IDS if arms[cid] == "action"]
        soon, end = NOW + timedelta(days=10), NOW + timedelta(days=91)  # the data must cover the horizon
        outcomes: list[CustomerEvent] = [
            *(Outcome(event_id=f"{c}-gone", customer_id=c, occurred_at=soon, outcome="churned") for c in control[:3]),
            Outcome(event_id=f"{action[0]}-gone", customer_id=action[0], occurred_at=soon, outcome="churned"),
            Usage(event_id="end", customer_id=action[1], occurred_at=end, logins=1),
        ]
        path = tmp_path / "outcomes.jsonl"
        write_jsonl(outcomes, path)
        report = await report_from_audit(s, path, days=1, horizon_days=90)
        assert (report.control.customers, report.control.retained) == (len(control), len(control) - 3)
        assert (report.action.customers, report.action.retained) == (len(action), len(action) - 1)
        assert report.difference_low < report.difference < report.difference_high
        assert "Newcombe" in format_report(report)
        # Every one of them was upset: the policy chose an apology for all, given or withheld.
        assert report.targeted is not None
        assert (report.targeted.control.customers, report.targeted.action.customers) == (len(control), len(action))

        unknown = (await client.post("/v1/classify", json={"customer": {"customer_id": "nobody"}, **body},
                                     headers=auth("helpdesk"))).json()  # fmt: skip
        assert unknown["customer_known"] is False and unknown["nba_arm"] is None
