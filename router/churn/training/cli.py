"""Arguments of ``router train`` (kept free of heavy imports: the parser is built at start-up)."""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from router.settings import Settings

__all__ = ["add_train_arguments", "run_train"]


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _types(text: str) -> frozenset[str]:
    from router.churn.training.dataset import ACTIVITY_TYPES

    types = frozenset(t.strip() for t in text.split(",") if t.strip())
    if not types or not types <= ACTIVITY_TYPES:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(sorted(ACTIVITY_TYPES))}")
    return types


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``router train`` options on ``parser``."""
    parser.add_argument("--events", required=True, help="event log, JSON Lines (see `router generate`)")
    parser.add_argument(
        "--cutoff",
        required=True,
        action="append",
        type=_date,
        help="training cutoff (YYYY-MM-DD, UTC); repeat for several, or give one and use --stack",
    )
    parser.add_argument("--stack", type=int, default=1, help="stack N cutoffs --step apart, ending at --cutoff")
    parser.add_argument("--step", default="60d", help="distance between stacked cutoffs")
    parser.add_argument(
        "--holdout",
        type=_date,
        default=None,
        help="time-based holdout cutoff (default: last training cutoff + horizon)",
    )
    parser.add_argument("--horizon", default="90d", help="label horizon, e.g. 90d")
    parser.add_argument(
        "--label",
        choices=("cancel", "inactivity"),
        default="cancel",
        help="cancel: subscription cancelled in the horizon; inactivity: no activity in it "
        "(the label for a log of orders only)",
    )
    parser.add_argument(
        "--activity",
        type=_types,
        default=None,
        metavar="TYPE[,TYPE..]",
        help="event types that count as activity for --label inactivity (default: all but profile, "
        "outcome and invoice-due payments), e.g. order_placed for 'no order within the horizon'",
    )
    parser.add_argument("--folds", type=int, default=5, help="k of the grouped k-fold CV")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="models/churn-v1.onnx", help="ONNX output; card (.json) and report beside")
    parser.add_argument("--no-report", action="store_true", help="skip the markdown report and plots")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or summary (bars are off anyway when stderr is not a TTY)",
    )


def run_train(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``router train``."""
    from router.churn.training.pipeline import TrainConfig, parse_days, run, stacked_cutoffs

    horizon = parse_days(args.horizon)
    cutoffs: list[datetime] = sorted(args.cutoff)
    if args.stack > 1:
        if len(cutoffs) != 1:
            raise SystemExit("--stack needs exactly one --cutoff")
        cutoffs = stacked_cutoffs(cutoffs[0], args.stack, parse_days(args.step))
    holdout = args.holdout or cutoffs[-1] + timedelta(days=horizon)
    cfg = TrainConfig(
        events=Path(args.events),
        out=Path(args.out),
        cutoffs=cutoffs,
        holdout=holdout,
        horizon_days=horizon,
        label=args.label,
        activity=args.activity,
        folds=args.folds,
        seed=args.seed,
        lateness_s=settings.stream.lateness_s,
        command="router " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else "router train",
        report=not args.no_report,
        progress=not args.quiet,
    )
    try:
        run(cfg)
    except ValueError as exc:
        print(f"router train: {exc}", file=sys.stderr)
        return 2
    return 0
