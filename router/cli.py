"""The ``router`` console script: one subcommand per process the service runs as."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from router.settings import Settings

__all__ = ["main"]


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from router.api.app import serve

    serve(settings)
    return 0


def _consume(args: argparse.Namespace, settings: Settings) -> int:
    from router.ingest.consumer import run_consumer

    asyncio.run(run_consumer(settings))
    return 0


def _connect(args: argparse.Namespace, settings: Settings) -> int:
    from router.connectors.worker import requeue_dead, run_connect

    if args.requeue_dead:
        for name, n in asyncio.run(requeue_dead(settings)).items():
            print(f"{name}: {n} dead letters back in the outbox")
        return 0
    asyncio.run(run_connect(settings))
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from router.devstack.dev import run_dev

    return run_dev(settings, customers=args.customers, rate=args.rate, duration_s=args.duration)


def _produce_demo(args: argparse.Namespace, settings: Settings) -> int:
    from router.devstack.demo import produce_demo

    try:
        asyncio.run(
            produce_demo(
                settings,
                customers=args.customers,
                history_days=args.history_days,
                rate=args.rate,
                duration_s=args.duration,
                seed=args.seed,
            )
        )
    except KeyboardInterrupt:  # the producer was flushed and closed on the way out
        return 130
    return 0


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    import hashlib
    import json
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    from router.devstack.demo import generate_history, history_window, write_jsonl

    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC) if args.end else None
    start, stop = history_window(args.months, end)
    began = time.monotonic()
    events = generate_history(args.customers, start, stop, args.seed)
    if not args.quiet:
        from router.devstack.demo import with_progress

        events = with_progress(events, start, stop)
    n = write_jsonl(events, args.out)
    # Beside the history, what regenerates it: `router train` copies it into the model card, so a test can
    # recompute the card's holdout figures from the generator instead of trusting them.
    with open(args.out, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    meta = {"customers": args.customers, "months": args.months, "seed": args.seed, "end": f"{stop:%Y-%m-%d}",
            "events_sha256": digest}  # fmt: skip
    Path(f"{args.out}.generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"wrote {n:,} events of {args.customers:,} customers ({start:%Y-%m-%d} .. {stop:%Y-%m-%d}) "
        f"to {args.out} in {time.monotonic() - began:.1f}s",
        file=sys.stderr,
    )
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from router.churn.training.cli import run_train

    return run_train(args, settings)


def _backtest(args: argparse.Namespace, settings: Settings) -> int:
    import shlex
    from pathlib import Path

    from router.churn.backtest import BacktestConfig, cdnow_events, parse_date, render, run_backtest
    from router.churn.training.dataset import read_events

    try:
        events = cdnow_events() if args.cdnow else list(read_events(args.events))
        cfg = BacktestConfig(
            at=parse_date(args.at),
            until=parse_date(args.until),
            horizon_days=args.horizon,
            stack=args.stack,
            step_days=args.step,
            leaves=args.leaves,
            min_leaf=args.min_leaf,
            trees=args.trees,
            monotone=not args.no_monotone,
            seed=args.seed,
            bootstrap=args.bootstrap,
            lateness_s=settings.stream.lateness_s,
            command="router " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["backtest"] else "router backtest",
        )
        text = render(run_backtest(events, cfg))
    except (ValueError, FileNotFoundError) as exc:
        print(f"router backtest: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from router.churn.lifecycle.cli import run_retrain

    return run_retrain(args, settings)


def _nba_report(args: argparse.Namespace, settings: Settings) -> int:
    from router.churn.lifecycle.cli import run_nba_report

    return run_nba_report(args, settings)


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from router.ops.kafka import ensure_topics

    asyncio.run(ensure_topics(settings.kafka))
    return 0


def _shadow_report(args: argparse.Namespace, settings: Settings) -> int:
    from router.churn.shadow import print_shadow_report

    return asyncio.run(print_shadow_report(settings))


def _export_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.export import write_schemas

    changed = write_schemas(check=args.check)
    if args.check and changed:
        print("JSON Schemas are out of date: " + ", ".join(changed), file=sys.stderr)
        print("run `router export-schemas` and commit the result", file=sys.stderr)
        return 1
    return 0


def _policy_validate(args: argparse.Namespace, settings: Settings) -> int:
    from router.policy import PolicyError, policy_from_text

    try:
        policy = policy_from_text(_read_draft(args.draft), args.draft)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.draft}: policy {policy.version} is valid")
    return 0


def _policy_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import msgspec

    from router.policy import PolicyError
    from router.serving.policy_admin import run_simulation_job, simulate_command
    from router.serving.simulation import format_report

    if args.job:  # the console's simulation process
        asyncio.run(run_simulation_job(settings, args.job))
        return 0
    if not args.draft:
        print("router policy simulate: give a DRAFT file (or - for standard input)", file=sys.stderr)
        return 2
    capacity: dict[str, float] = {}
    for item in args.queue_capacity:
        queue, sep, value = item.partition("=")
        try:
            capacity[queue] = float(value)
        except ValueError:
            sep = ""
        if not (sep and queue):
            print(f"--queue-capacity: expected QUEUE=CONTACTS_PER_HOUR, got {item!r}", file=sys.stderr)
            return 2
    options = {
        "days": args.days, "sample": args.sample, "capacity": capacity,
        "default_capacity": args.capacity, "cpu_share": args.cpu_share,
    }  # fmt: skip
    try:
        report, ids = asyncio.run(simulate_command(settings, _read_draft(args.draft), options))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.json:
        out = msgspec.to_builtins(report)
        for tr in out["base"]["transitions"]:
            tr["examples"] = [ids.get(h, "(erased)") for h in tr["examples"]]
        print(msgspec.json.encode(out).decode())
    else:
        print(format_report(report, ids))
    return 0


def _read_draft(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read the draft ({type(exc).__name__})") from None


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``router`` command."""
    parser = argparse.ArgumentParser(prog="router", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the decision API (uvicorn)").set_defaults(func=_serve)
    sub.add_parser("consume", help="run a state consumer (Kafka -> Redis)").set_defaults(func=_consume)
    sub.add_parser("topics", help="create the Kafka topics if missing").set_defaults(func=_topics)
    connect = sub.add_parser("connect", help="follow helpdesks and write decisions back (connector file)")
    connect.add_argument(
        "--requeue-dead", action="store_true", help="put dead-lettered write-backs back into the outbox and exit"
    )
    connect.set_defaults(func=_connect)

    dev = sub.add_parser("dev", help="whole stack locally: broker, Redis, consumer, API, demo traffic")
    dev.add_argument("--customers", type=int, default=3000, help="demo population size")
    dev.add_argument("--rate", type=float, default=50.0, help="live demo events per second")
    dev.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    dev.set_defaults(func=_dev)

    demo = sub.add_parser("produce-demo", help="produce realistic synthetic events to the events topic")
    demo.add_argument("--customers", type=int, default=3000)
    demo.add_argument("--history-days", type=int, default=180, help="days of backfilled history")
    demo.add_argument("--rate", type=float, default=50.0, help="live events per second after the backfill")
    demo.add_argument("--duration", type=float, default=None, help="stop live traffic after N seconds")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_produce_demo)

    gen = sub.add_parser("generate", help="write a synthetic event history as JSON Lines")
    gen.add_argument("--customers", type=int, default=5000)
    gen.add_argument("--months", type=int, default=18, help="months of history")
    gen.add_argument("--end", default=None, help="end date (YYYY-MM-DD, UTC; default 2026-11-01)")
    gen.add_argument("--out", required=True, help="output file (.jsonl)")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--quiet", action="store_true", help="no progress bar (off anyway when stderr is not a TTY)")
    gen.set_defaults(func=_generate)

    train = sub.add_parser("train", help="train the churn model from an event log (JSON Lines)")
    from router.churn.training.cli import add_train_arguments

    add_train_arguments(train)
    train.set_defaults(func=_train)

    bt = sub.add_parser(
        "backtest", help="score everyone as of --at with the served code path, grade on (--at, --until], beside BG/NBD"
    )
    source = bt.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="event log, JSON Lines (orders are what is graded)")
    source.add_argument("--cdnow", action="store_true", help="the CDNOW sample shipped by the lifetimes wheel")
    bt.add_argument("--at", required=True, help="score as of the end of this day (YYYY-MM-DD, UTC)")
    bt.add_argument("--until", required=True, help="grade orders up to the end of this day")
    bt.add_argument("--horizon", type=int, default=91, help="days of the router model's label 'no order within'")
    bt.add_argument("--stack", type=int, default=14, help="training cutoffs, the last a horizon before --at")
    bt.add_argument("--step", type=int, default=7, help="days between training cutoffs")
    bt.add_argument("--leaves", type=int, default=4, help="LightGBM leaves per tree")
    bt.add_argument("--min-leaf", type=int, default=100, help="LightGBM minimum rows per leaf")
    bt.add_argument("--trees", type=int, default=200, help="LightGBM trees")
    bt.add_argument(
        "--no-monotone", action="store_true", help="no monotone constraints (more orders, less silence: less risk)"
    )
    bt.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap draws")
    bt.add_argument("--seed", type=int, default=7)
    bt.add_argument("--out", default=None, help="also write the Markdown report here")
    bt.set_defaults(func=_backtest)
    from router.churn.lifecycle.cli import add_nba_report_arguments, add_retrain_arguments

    retrain = sub.add_parser(
        "retrain",
        help="build a candidate from the event history, judge it against the live model, promote it if better "
        "(exit 0 promoted, 1 kept, 2 bad input, 3 no usable candidate, 4 not announced)",
    )
    add_retrain_arguments(retrain)
    retrain.set_defaults(func=_retrain)

    nba = sub.add_parser("nba-report", help="retention with and without the next-best-action (control group), with CIs")
    add_nba_report_arguments(nba)
    nba.set_defaults(func=_nba_report)

    sub.add_parser("shadow-report", help="how the shadow (candidate) model compares with the live one").set_defaults(
        func=_shadow_report
    )

    policy = sub.add_parser("policy", help="check or simulate a draft routing policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    validate = policy_sub.add_parser("validate", help="validate a policy file with the loader's messages")
    validate.add_argument("draft", help="policy file (TOML), - for standard input")
    validate.set_defaults(func=_policy_validate)
    simulate = policy_sub.add_parser(
        "simulate", help="what a draft policy would change: the customer base and recent decisions"
    )
    simulate.add_argument("draft", nargs="?", help="draft policy file (TOML), - for standard input")
    simulate.add_argument("--days", type=int, default=7, help="days of audited decisions to replay")
    simulate.add_argument("--sample", type=float, default=1.0, help="share of the customer base (0-1]")
    simulate.add_argument("--capacity", type=float, default=None, help="contacts per hour each queue can answer")
    simulate.add_argument(
        "--queue-capacity", action="append", default=[], metavar="QUEUE=N", help="capacity of one queue"
    )
    simulate.add_argument(
        "--cpu-share", type=float, default=1.0, help="share of one core to use at most (sleeps between chunks)"
    )
    simulate.add_argument("--json", action="store_true", help="print the report as JSON")
    simulate.add_argument("--job", default=None, help=argparse.SUPPRESS)  # the console's simulation process
    simulate.set_defaults(func=_policy_simulate)

    schemas = sub.add_parser("export-schemas", help="write JSON Schemas of the contracts to schemas/json")
    schemas.add_argument("--check", action="store_true", help="fail if the committed files differ")
    schemas.set_defaults(func=_export_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``router`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    result: int = args.func(args, settings)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
