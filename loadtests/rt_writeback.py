"""Request Tracker write-back latency: a ticket created in RT until router's decision is on it.

Run: ``python -m loadtests.rt_writeback [--tickets 50] [--rate 2]``

Starts a private broker and Redis, loads the API tests' population (one VIP among 40 small
customers) through the real consumer, starts a private RT 5 (``tests/support/rt_server.py``;
Debian's packages come from ``deploy/install-rt.sh``) and ``router connect`` following it, then
creates ``--tickets`` tickets through REST2 at ``--rate`` per second, alternately from the VIP
and from unknown requesters. Per ticket: from RT's 201 on the create until the write-back landed
(the internal comment, the last of the three REST2 calls, was accepted; the outbox's ``landed``
stream records the time), split into *detect* (creation until the decision: polling) and
*write* (decision until landed). Prints p50/p90/p99/max and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec

from router.devstack.infra import start_broker, start_redis
from router.ops.kafka import ensure_topics
from router.settings import Settings
from tests.support.api_support import VIP_EMAIL, populate, population
from tests.support.connectors import ConnectProcess, landed, outbox_status, wait_for
from tests.support.rt_server import RTServer, rt_installed

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[rt]
url = "{url}"
poll_interval_s = {poll}
default_queue = "Support"

[rt.queues]
vip = "VIP"
tech_senior = "VIP"
retention = "VIP"
priority = "Premium"
support = "Support"
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(statistics.median(values), 3),
        "p90_s": round(_percentile(values, 0.90), 3),
        "p99_s": round(_percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def run(tickets: int, rate: float, poll: float, work: Path) -> dict[str, Any]:
    if not rt_installed():
        import subprocess

        subprocess.run(["bash", str(ROOT / "deploy" / "install-rt.sh")], check=True, timeout=900)
    broker = start_broker(log_path=work / "broker.log")
    redis = start_redis(dir=work / "redis")
    rt = RTServer.start(initialdata=[ROOT / "deploy" / "integrations" / "rt-initialdata.pl"])
    proc: ConnectProcess | None = None
    try:
        token = rt.create_token()
        config = work / "connectors.toml"
        config.write_text(CONFIG.format(url=rt.base_url, poll=poll))
        run_id = uuid.uuid4().hex[:8]
        base = Settings()
        s = msgspec.structs.replace(
            base,
            kafka=msgspec.structs.replace(
                base.kafka, bootstrap=broker.bootstrap, events_topic=f"rtlat-{run_id}.events",
                dead_letter_topic=f"rtlat-{run_id}.dlq", alerts_topic=f"rtlat-{run_id}.alerts",
                group_id=f"rtlat-{run_id}", session_timeout_ms=3000,
            ),
            redis=msgspec.structs.replace(base.redis, url=redis.url, prefix=f"rtlat:{run_id}"),
            stream=msgspec.structs.replace(base.stream, health_port=0),
            connectors=msgspec.structs.replace(
                base.connectors, config_path=str(config), rt_token=token, health_port=0
            ),
        )  # fmt: skip
        asyncio.run(ensure_topics(s.kafka))
        asyncio.run(populate(s, population()))
        proc = ConnectProcess(s, work / "connect.log").start()
        wait_for("router connect to follow RT", lambda: outbox_status(s, "rt").mark is not None, 60)
        created: dict[str, float] = {}
        with httpx.Client(base_url=rt.rest2_url, headers={"Authorization": f"token {token}"}, timeout=30) as client:
            began = time.monotonic()
            for i in range(tickets):
                time.sleep(max(0.0, began + i / rate - time.monotonic()))
                requestor = VIP_EMAIL.lower() if i % 2 == 0 else f"unknown{i}@nowhere.example"
                r = client.post(
                    "/ticket",
                    json={"Queue": "Support", "Subject": f"latency {i}", "Requestor": requestor,
                          "Content": "Please help.", "ContentType": "text/plain"},
                )  # fmt: skip
                r.raise_for_status()
                created[str(r.json()["id"])] = time.time()

        def all_landed() -> dict[str, Any] | None:
            found = {x.ticket: x for x in landed(s, "rt") if x.ticket in created}
            return found if len(found) == len(created) else None

        done = wait_for("every write-back", all_landed, 120, every=0.2)
        total = [done[t].landed_at - created[t] for t in created]
        detect = [done[t].decided_at - created[t] for t in created]
        write = [done[t].landed_at - done[t].decided_at for t in created]
        return {
            "tickets": tickets,
            "rate_per_s": rate,
            "poll_interval_s": poll,
            "created_to_landed": _summary(total),
            "created_to_decided": _summary(detect),
            "decided_to_landed": _summary(write),
            "within_2s": sum(x < 2.0 for x in total),
            "written_once": all(x.written and x.attempts == 1 for x in done.values()),
        }
    finally:
        if proc is not None:
            proc.stop()
        rt.close()
        redis.close()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="tickets created per second")
    parser.add_argument("--poll", type=float, default=0.5, help="rt.poll_interval_s of the connector file")
    parser.add_argument("--out", default="artifacts/rt_writeback.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rt-writeback-") as tmp:
        result = run(args.tickets, args.rate, args.poll, Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
