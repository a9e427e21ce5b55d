"""Model files for reload tests: a copy of the committed model, and a candidate that scores differently."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from router.settings import ModelSettings

__all__ = ["COMMITTED", "candidate_model", "copy_committed"]

COMMITTED = Path(ModelSettings().path)


def copy_committed(dst: Path) -> Path:
    """The committed model and its card under ``dst`` (returns the .onnx path)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMMITTED, dst / COMMITTED.name)
    shutil.copy(COMMITTED.with_suffix(".json"), dst / COMMITTED.with_suffix(".json").name)
    return dst / COMMITTED.name


def candidate_model(dst: Path, version: str = "churn-v2", shift: float = 1.5) -> Path:
    """A model that ranks like the committed one but is more alarmed (Platt intercept + ``shift``), with a
    card naming its own SHA-256: a real, loadable file whose scores differ from the committed model's."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(COMMITTED))
    for init in graph.graph.initializer:
        if init.name == "platt_b":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(shift), "platt_b"))
    dst.mkdir(parents=True, exist_ok=True)
    path = dst / f"{version}.onnx"
    onnx.save(graph, str(path))
    card = json.loads(COMMITTED.with_suffix(".json").read_text())
    card["version"] = version
    card["onnx"] = {**card["onnx"], "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path
