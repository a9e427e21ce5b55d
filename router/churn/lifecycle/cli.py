"""Arguments of ``router retrain`` and ``router nba-report`` (no heavy imports: the parser is built at start-up)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from router.settings import Settings

__all__ = ["add_nba_report_arguments", "add_retrain_arguments", "run_nba_report", "run_retrain"]


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="event history, JSON Lines (an archive, or `router generate` output)")
    source.add_argument(
        "--from-topic", action="store_true", help="read the events topic from its beginning (archived to --work-dir)"
    )
    parser.add_argument("--work-dir", default="retrain", help="candidate, its training report and the promotion report")
    parser.add_argument(
        "--models-dir", default=None, help="where a promoted model is installed (default: beside ROUTER_MODEL_PATH)"
    )
    parser.add_argument(
        "--margin", type=float, default=None, help="ROC-AUC gain required (default ROUTER_MODEL_PROMOTE_MARGIN)"
    )
    parser.add_argument("--label", choices=("cancel", "inactivity"), default=None, help="default: the live model's")
    parser.add_argument("--horizon", default=None, help="label horizon, e.g. 90d (default: the live model's)")
    parser.add_argument(
        "--holdout", type=_date, default=None, help="holdout cutoff (default: the most recent complete)"
    )
    parser.add_argument("--stack", type=int, default=4, help="training cutoffs stacked --step apart")
    parser.add_argument("--step", default="60d")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dry-run", action="store_true", help="evaluate and report; never install or announce")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")


def run_retrain(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``router retrain``; the exit code says promoted (0), kept (1), bad input (2), no candidate (3),
    or promoted but not announced (4)."""
    from router.churn.lifecycle.report import write_report
    from router.churn.lifecycle.retrain import EXIT_BAD_INPUT, RetrainConfig, retrain, to_json
    from router.churn.training.pipeline import parse_days

    progress = not args.quiet  # bars only on a terminal (tqdm disable=None); stage lines always
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.from_topic:
        from router.churn.lifecycle.topic import archive_topic

        events = work / f"events-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.jsonl"
        try:
            written, skipped = asyncio.run(archive_topic(settings.kafka, str(events), progress=progress))
        except Exception as exc:  # the broker is unreachable or the topic is missing
            print(f"router retrain: cannot read {settings.kafka.events_topic}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if not args.quiet:
            print(f"archived {written:,} events of {settings.kafka.events_topic} to {events} "
                  f"({skipped:,} undecodable records left out)", file=sys.stderr)  # fmt: skip
    else:
        events = Path(args.events)
        if not events.is_file():
            print(f"router retrain: {events}: no such file", file=sys.stderr)
            return EXIT_BAD_INPUT
    margin = settings.model.promote_margin if args.margin is None else args.margin
    cfg = RetrainConfig(
        events=events,
        work_dir=work,
        models_dir=Path(args.models_dir) if args.models_dir else Path(settings.model.path).resolve().parent,
        margin=margin,
        horizon_days=parse_days(args.horizon) if args.horizon else None,
        label=args.label,
        stack=args.stack,
        step_days=parse_days(args.step),
        folds=args.folds,
        seed=args.seed,
        holdout=args.holdout,
        progress=progress,
        command="router " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["retrain"] else "router retrain",
        dry_run=args.dry_run,
    )
    try:
        announced = asyncio.run(_announced(settings))
    except Exception as exc:  # Redis down: the configured model is the live one
        announced = None
        print(f"router retrain: cannot read the announced model ({type(exc).__name__}); "
              "judging against ROUTER_MODEL_PATH", file=sys.stderr)  # fmt: skip
    try:
        result = retrain(cfg, settings, announced)
    except (ValueError, OSError) as exc:
        print(f"router retrain: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if result.installed:
        try:
            asyncio.run(_announce(settings, result.installed, result.candidate_version, _sha256(result.installed)))
        except Exception as exc:
            result.status = "announce_failed"
            result.reason += f"; announcing failed: {type(exc).__name__}: {exc}"
    report = write_report(result, work / f"promotion-{result.candidate_version or 'none'}.md", margin=margin,
                          command=cfg.command)  # fmt: skip
    result.report = str(report)
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    if not args.quiet:
        print(_summary(result), file=sys.stderr)
    return result.exit_code


def _summary(result: object) -> str:
    from router.churn.lifecycle.retrain import RetrainResult

    assert isinstance(result, RetrainResult)
    lines = [f"{result.status.upper()}: {result.reason}"]
    for name, f in (("live", result.live), ("candidate", result.candidate)):
        if f is not None:
            lines.append(f"  {name:<9} ROC-AUC {f.roc_auc:.4f}  PR-AUC {f.pr_auc:.4f}  Brier {f.brier:.5f}  "
                         f"({f.rows:,} holdout rows, {f.positives:,} positive)")  # fmt: skip
    if result.shadow is not None:
        lines.append(f"  shadow: alerts agree {result.shadow.alert_agreement * 100:.2f} % "
                     f"({result.shadow.alerts_live} live, {result.shadow.alerts_candidate} candidate), "
                     f"tiers agree {(result.tier_agreement or 0) * 100:.2f} %")  # fmt: skip
    if result.installed:
        lines.append(f"  installed {result.installed}")
    lines.append(f"  report {result.report} (+ .png); {result.seconds} s")
    return "\n".join(lines)


async def _announced(settings: Settings) -> object:
    from router.core.identity import IdentityHasher
    from router.state.store import StateStore, connect_redis

    client = connect_redis(settings.redis, timeout_s=5.0)
    try:
        store = StateStore(client, settings.redis.prefix, IdentityHasher.from_settings(settings.identity))
        return await store.announced("model")
    finally:
        await client.aclose()


async def _announce(settings: Settings, path: str, version: str, digest: str) -> None:
    """Announce the installed model as an admin reload does: every API worker and consumer follows it."""
    import msgspec

    from router.core.identity import IdentityHasher
    from router.state.audit import AdminRecord
    from router.state.records import Announcement
    from router.state.store import StateStore, connect_redis

    client = connect_redis(settings.redis, timeout_s=5.0)
    try:
        store = StateStore(client, settings.redis.prefix, IdentityHasher.from_settings(settings.identity))
        now = time.time()
        await store.announce(
            "model", Announcement(path=path, sha256=digest, version=version, at=now, by="router retrain")
        )
        record = AdminRecord(action="model_promoted", at=now, actor="router retrain", detail=version)
        await store.append_audit([(msgspec.json.encode(record).decode(), None)], maxlen=1_000_000, per_customer=100,
                                 ttl_s=settings.redis.audit_retention_days * 86_400)  # fmt: skip
    finally:
        await client.aclose()


def _sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def add_nba_report_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--events",
        help="event history, JSON Lines: every ticket is a decision, arms assigned as the API assigns them",
    )
    source.add_argument(
        "--audit", action="store_true", help="audited decisions in Redis, with outcomes from --outcomes"
    )
    parser.add_argument("--outcomes", default=None, help="with --audit: events (JSON Lines) holding the outcomes")
    parser.add_argument("--days", type=int, default=365, help="with --audit: decisions of the last N days")
    parser.add_argument("--horizon", default="90d", help="retained = not churned within this long after the decision")
    parser.add_argument(
        "--share", type=float, default=None, help="control share (default ROUTER_MODEL_NBA_CONTROL_SHARE)"
    )
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_nba_report(args: argparse.Namespace, settings: Settings) -> int:
    from router.churn.lifecycle.nba import format_report, report_from_audit, report_from_history
    from router.churn.training.pipeline import parse_days

    progress = not args.quiet  # bars only on a terminal (tqdm disable=None); stage lines always
    share = settings.model.nba_control_share if args.share is None else args.share
    horizon = parse_days(args.horizon)
    try:
        if args.events:
            report = report_from_history(Path(args.events), settings, share=share, horizon_days=horizon,
                                         confidence=args.confidence, progress=progress)  # fmt: skip
        else:
            if not args.outcomes:
                print("router nba-report: --audit needs --outcomes EVENTS.jsonl", file=sys.stderr)
                return 2
            report = asyncio.run(report_from_audit(settings, Path(args.outcomes), days=args.days,
                                                   horizon_days=horizon, confidence=args.confidence))  # fmt: skip
    except (ValueError, OSError) as exc:
        print(f"router nba-report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import msgspec

        print(msgspec.json.encode(report).decode())
    else:
        print(format_report(report))
    return 0
