"""``router retrain`` end to end on the real broker and Redis: the promotion gate, and what a promotion reaches.

Real processes: ``router retrain`` itself (its exit codes), a ``router consume`` and a ``router serve``
following the announcement. The history is a small seeded demo history (300 customers, one year).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.churn.model import ChurnModel
from router.devstack.demo import generate_history, write_jsonl
from router.settings import Settings, to_env
from router.state.records import Announcement
from schemas.events import CustomerEvent
from tests.conftest import SettingsFactory, run_sync
from tests.integration.ingest.test_model_reload import _api, _applied, _feed, _process, _record, _until, _usage
from tests.support.api_support import api_settings, population
from tests.support.helpers import produce, state_store
from tests.support.models import COMMITTED

START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 1, tzinfo=UTC)
FAST = ["--stack", "2", "--step", "45d", "--folds", "3", "--quiet"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CustomerEvent]]:
    events = list(generate_history(300, START, END, seed=21))
    path = tmp_path_factory.mktemp("retrain") / "history.jsonl"
    write_jsonl(events, path)
    return path, events


def _backwards_model(dst: Path) -> Path:
    """The committed model with its Platt slope negated: loadable, but ranks customers backwards (version churn-v1)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(COMMITTED))
    for init in graph.graph.initializer:
        if init.name == "platt_a":
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), "platt_a"))
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / COMMITTED.name
    onnx.save(graph, str(path))
    card = json.loads(COMMITTED.with_suffix(".json").read_text())
    card["onnx"] = {**card["onnx"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def _retrain(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", "retrain", *args, *FAST],
        env={**os.environ, **to_env(s)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _announced(s: Settings) -> Announcement | None:
    async def read() -> Announcement | None:
        async with state_store(s) as store:
            return await store.announced("model")

    return run_sync(read())


def test_a_better_candidate_is_promoted_and_followed_and_an_equal_one_is_not(
    settings: SettingsFactory, tmp_path: Path, history: tuple[Path, list[CustomerEvent]]
) -> None:
    path, _ = history
    live = _backwards_model(tmp_path / "live")
    s = api_settings(settings, model={"path": str(live), "follow_s": 0.2})
    models, work = tmp_path / "models", tmp_path / "work"
    events = population(10)
    run_sync(produce(s, events))
    with (
        _process("consume", ["consume"], s, tmp_path / "consumer.log") as consumer,
        _api(s, tmp_path / "api.log") as api,
    ):
        _until(lambda: _applied(s) >= len(events), f"consumer did not catch up:\n{consumer.tail(20)}")
        assert api.get("/health/ready").json()["checks"]["model"] == "loaded churn-v1"

        done = _retrain(s, "--events", str(path), "--work-dir", str(work), "--models-dir", str(models))
        assert done.returncode == 0, done.stderr
        installed = models / "churn-v2.onnx"
        candidate = ChurnModel.load(installed)
        report = (work / "promotion-churn-v2.md").read_text()
        assert "PROMOTED" in report and "| ROC-AUC |" in report and (work / "promotion-churn-v2.png").stat().st_size
        live_roc, cand_roc = (float(v) for v in report.split("| ROC-AUC | ")[1].split(" |")[0:2])
        assert cand_roc > 0.7 > 0.5 > live_roc  # the backwards model ranks worse than chance
        announced = _announced(s)
        assert announced is not None and announced.version == "churn-v2" and announced.by == "router retrain"
        assert announced.path == str(installed.resolve()) and announced.sha256 == candidate.sha256

        # Every process follows: the API worker, and the consumer scores its next write with churn-v2.
        _until(lambda: api.get("/health/ready").json()["checks"]["model"] == "loaded churn-v2", "API kept churn-v1", 10)
        _feed(s, [_usage("S001", 1)], len(events) + 1)
        rec = _record(s, "S001")
        assert rec.scores is not None and rec.scores.model_id == candidate.model_id

        # The same history again: a candidate no better than the live churn-v2 is not promoted.
        again = _retrain(s, "--events", str(path), "--work-dir", str(work), "--models-dir", str(models))
        assert again.returncode == 1, again.stderr
        assert "NOT PROMOTED" in (work / "promotion-churn-v3.md").read_text()
        assert not (models / "churn-v3.onnx").exists()
        assert _announced(s) == announced
        assert api.get("/health/ready").json()["checks"]["model"] == "loaded churn-v2"
        assert consumer.running


def test_an_unusable_live_model_is_replaced_from_the_topic_and_a_log_too_short_gives_no_candidate(
    settings: SettingsFactory, tmp_path: Path, history: tuple[Path, list[CustomerEvent]]
) -> None:
    _, events = history
    s = settings(model={"path": str(tmp_path / "gone" / "churn-v1.onnx")})
    run_sync(produce(s, events))
    models, work = tmp_path / "models", tmp_path / "work"

    done = _retrain(s, "--from-topic", "--work-dir", str(work), "--models-dir", str(models))
    assert done.returncode == 0, done.stderr
    archives = list(work.glob("events-*.jsonl"))
    assert len(archives) == 1 and sum(1 for _ in archives[0].open()) == len(events)
    report = (work / "promotion-churn-v1.md").read_text()
    assert "cannot be loaded" in report and "PROMOTED" in report
    announced = _announced(s)
    assert announced is not None and announced.version == "churn-v1"
    assert announced.path == str((models / "churn-v1.onnx").resolve())

    short = tmp_path / "short.jsonl"
    write_jsonl([e for e in events if e.occurred_at < datetime(2025, 7, 1, tzinfo=UTC)], short)
    none = _retrain(s, "--events", str(short), "--work-dir", str(work), "--models-dir", str(models))
    assert none.returncode == 3, none.stderr
    assert "NO USABLE CANDIDATE" in (work / "promotion-churn-v2.md").read_text()
    assert _announced(s) == announced  # the replacement stays in force

    bad = _retrain(s, "--events", str(tmp_path / "missing.jsonl"), "--work-dir", str(work))
    assert bad.returncode == 2 and "no such file" in bad.stderr
