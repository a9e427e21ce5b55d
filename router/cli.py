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
    n = write_jsonl(generate_history(args.customers, start, stop, args.seed), args.out)
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
    gen.set_defaults(func=_generate)

    train = sub.add_parser("train", help="train the churn model from an event log (JSON Lines)")
    from router.churn.training.cli import add_train_arguments

    add_train_arguments(train)
    train.set_defaults(func=_train)

    sub.add_parser(
        "shadow-report", help="how the shadow (candidate) model compares with the live one"
    ).set_defaults(func=_shadow_report)

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
