"""Split thresholds of a tree-ensemble ONNX model, read from its protobuf without the ``onnx`` package.

A tree ensemble's output is a step function of each input: it changes only where an input
crosses one of the thresholds its trees compare that input with. Knowing them lets the
service tell when a score computed earlier is still exactly what the model would return now
(:meth:`router.churn.model.ChurnModel.stable_until`).

Only the wire format is parsed (ONNX ``ModelProto`` -> ``graph`` -> ``node`` -> ``attribute``),
and only a graph whose input feeds nothing but ``TreeEnsembleRegressor``/``TreeEnsembleClassifier``
nodes of ``ai.onnx.ml`` is accepted: for anything else :func:`split_thresholds` raises
:class:`UnsupportedGraph` and the caller simply never reuses a score.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = ["UnsupportedGraph", "split_thresholds"]

_TREES = frozenset({"TreeEnsembleRegressor", "TreeEnsembleClassifier"})
# ModelProto.graph, GraphProto.node / .input, NodeProto.input / .op_type / .attribute / .domain,
# ValueInfoProto.name, AttributeProto.name / .floats / .ints / .strings (onnx.proto3 field numbers).
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INPUT = 1, 11
_NODE_INPUT, _NODE_OP, _NODE_ATTR, _NODE_DOMAIN = 1, 4, 5, 7
_VALUE_NAME = 1
_ATTR_NAME, _ATTR_FLOATS, _ATTR_INTS, _ATTR_STRINGS = 1, 7, 8, 9


class UnsupportedGraph(ValueError):
    """The model is not a plain tree ensemble over its input (its thresholds do not tell where it changes)."""


def split_thresholds(blob: bytes, n_features: int) -> list[npt.NDArray[np.float64]]:
    """Per input feature, the sorted distinct thresholds (float32 values, as float64) the trees split it at."""
    graph = _one(blob, _MODEL_GRAPH)
    inputs = [_string(_one(v, _VALUE_NAME)) for v in _all(graph, _GRAPH_INPUT)]
    if len(inputs) != 1:
        raise UnsupportedGraph(f"expected one graph input, found {len(inputs)}")
    per_feature: list[list[float]] = [[] for _ in range(n_features)]
    ensembles = 0
    for node in _all(graph, _GRAPH_NODE):
        if inputs[0] not in [_string(b) for b in _all(node, _NODE_INPUT)]:
            continue
        op = _string(_one(node, _NODE_OP))
        domain = _string(_one(node, _NODE_DOMAIN, b""))
        if op not in _TREES or domain != "ai.onnx.ml":
            raise UnsupportedGraph(f"the input feeds {domain or 'ai.onnx'}.{op}, not only tree ensembles")
        attrs = {_string(_one(a, _ATTR_NAME)): a for a in _all(node, _NODE_ATTR)}
        if "nodes_values" not in attrs:  # e.g. nodes_values_as_tensor (double thresholds): not handled
            raise UnsupportedGraph(f"{op} without float nodes_values")
        features = _ints(attrs["nodes_featureids"])
        values = _floats(attrs["nodes_values"])
        modes = [_string(s) for s in _all(attrs["nodes_modes"], _ATTR_STRINGS)]
        if not len(features) == len(values) == len(modes):
            raise UnsupportedGraph(f"{op}: node attributes of different lengths")
        for f, v, mode in zip(features, values, modes, strict=True):
            if mode == "LEAF":
                continue
            if not 0 <= f < n_features:
                raise UnsupportedGraph(f"{op}: a split on feature {f} of {n_features}")
            per_feature[f].append(v)
        ensembles += 1
    if not ensembles:
        raise UnsupportedGraph("no tree ensemble reads the input")
    return [np.unique(np.asarray(v, dtype=np.float32)).astype(np.float64) for v in per_feature]


# --- protobuf wire format ----------------------------------------------------------------


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one message: an int for varint/fixed, bytes for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > n:
                raise UnsupportedGraph("truncated protobuf")
            yield field, wire, buf[i : i + size]
            i += size
        elif wire == 5:
            yield field, wire, int.from_bytes(buf[i : i + 4], "little")
            i += 4
        elif wire == 1:
            yield field, wire, int.from_bytes(buf[i : i + 8], "little")
            i += 8
        else:
            raise UnsupportedGraph(f"protobuf wire type {wire} is not parsed")


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise UnsupportedGraph("truncated protobuf varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _all(buf: bytes, field: int) -> list[bytes]:
    return [v for f, w, v in _fields(buf) if f == field and w == 2 and isinstance(v, bytes)]


def _one(buf: bytes, field: int, default: bytes | None = None) -> bytes:
    found = _all(buf, field)
    if found:
        return found[-1]
    if default is None:
        raise UnsupportedGraph(f"protobuf field {field} missing")
    return default


def _string(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _ints(attr: bytes) -> list[int]:
    out: list[int] = []
    for f, w, v in _fields(attr):
        if f != _ATTR_INTS:
            continue
        if isinstance(v, bytes):  # packed
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(x - (1 << 64) if x >= 1 << 63 else x)
        elif w == 0:
            out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def _floats(attr: bytes) -> list[float]:
    out: list[float] = []
    for f, _w, v in _fields(attr):
        if f != _ATTR_FLOATS:
            continue
        if isinstance(v, bytes):  # packed
            out.extend(x for (x,) in struct.iter_unpack("<f", v))
        else:
            out.append(struct.unpack("<f", v.to_bytes(4, "little"))[0])
    return out
