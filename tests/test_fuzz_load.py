"""Fuzzing ``SearchAdaptor.load``: random byte flips and JSON edits of a saved adapter.

Every outcome must be the adapter as saved (bit-identical outputs, the same encoder accepted) or one
``ValueError`` line naming the folder; never a traceback, never different numbers. A flip inside a
weight that stays finite cannot be told from a real weight by looking at it: the config's checksum
(format 2) is what turns it into an error.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_adaptor.model import CONFIG, WEIGHTS, SearchAdaptor
from test_index import make_adapter

pytestmark = pytest.mark.slow  # fuzzing: thousands of edited adapter files (CI runs it)

INFO = {
    "fingerprint": "fake:fake-model:0123456789ab",
    "provider": "fake",
    "model": "fake-model",
    "config": {},
}
VARIANTS = {
    "shared mlp": {"mode": "shared"},
    "separate linear without skip": {"mode": "separate", "architecture": "linear", "residual": False},
    "query-only, hidden 7": {"mode": "query_only", "hidden_dim": 7},
}
FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
#: values a hand edit (or a hostile tool) might put anywhere in config.json
HOSTILE = [
    None,
    True,
    False,
    0,
    1,
    -1,
    7,
    16,
    17,
    0.5,
    -0.0,
    1e308,
    math.nan,
    math.inf,
    10**9,
    10**400,
    "",
    "x",
    "16",
    "__class__",
    "shared",
    "separate",
    "query_only",
    "linear",
    "mlp",
    [],
    {},
    [1],
    {"fingerprint": "x"},
]


@pytest.fixture(scope="module", params=list(VARIANTS))
def saved(request, tmp_path_factory) -> dict[str, Any]:
    est = make_adapter(info=INFO, **VARIANTS[request.param])
    folder = tmp_path_factory.mktemp("fuzz") / "adapter"
    est.save(folder)
    X = np.random.default_rng(1).normal(size=(9, 16)).astype(np.float32)
    return {
        "folder": folder,
        "X": X,
        "queries": est.transform_queries(X),
        "corpus": est.transform_corpus(X),
        "paths": list(_paths(json.loads((folder / CONFIG).read_text()))),
    }


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path of a JSON document (containers and leaves)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node[:3]):
            yield from _paths(value, (*prefix, i))


def _outcome(saved: dict[str, Any], folder: Path) -> str:
    """'same' or 'refused'; anything else fails the test (a traceback, or other numbers)."""
    try:
        est = SearchAdaptor.load(folder)
    except (ValueError, FileNotFoundError) as exc:
        message = str(exc)
        assert "\n" not in message and str(folder) in message, message
        return "refused"
    assert np.array_equal(est.transform_queries(saved["X"]), saved["queries"])
    assert np.array_equal(est.transform_corpus(saved["X"]), saved["corpus"])
    assert est.encoder_["fingerprint"] == INFO["fingerprint"]  # it accepts the same vectors
    return "same"


def _copy(saved: dict[str, Any], tmp: str) -> Path:
    return Path(shutil.copytree(saved["folder"], Path(tmp) / "adapter"))


def _flip(path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(path.read_bytes())
    for position, mask in flips:
        data[position % len(data)] ^= mask
    path.write_bytes(bytes(data))


position = st.one_of(st.integers(0, 600), st.integers(0, 2**31))  # the safetensors header, or anywhere
flips = st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=3)


@FUZZ
@given(name=st.sampled_from([CONFIG, WEIGHTS]), flips=flips)
def test_byte_flips_give_the_same_adapter_or_one_line(saved, name, flips):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(saved, tmp)
        _flip(folder / name, flips)
        _outcome(saved, folder)


def _apply(config: Any, path: tuple, op: str, value: Any) -> None:
    """Delete, replace or add under ``path`` (skipped when an earlier edit removed it)."""
    if not path:
        return
    parent = config
    for key in path[:-1]:
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return
    key = path[-1]
    if isinstance(parent, dict):
        if op == "delete":
            parent.pop(key, None)
        elif op == "add" and isinstance(parent.get(key), dict):
            parent[key]["unexpected"] = value
        else:
            parent[key] = value
    elif isinstance(parent, list) and isinstance(key, int) and key < len(parent):
        if op == "delete":
            del parent[key]
        else:
            parent[key] = value


edit = st.tuples(
    st.integers(0, 10**6), st.sampled_from(["delete", "replace", "add"]), st.sampled_from(HOSTILE)
)


@FUZZ
@given(edits=st.lists(edit, min_size=1, max_size=3))
def test_json_edits_give_the_same_adapter_or_one_line(saved, edits):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(saved, tmp)
        config = json.loads((folder / CONFIG).read_text())
        for which, op, value in edits:
            _apply(config, saved["paths"][which % len(saved["paths"])], op, copy.deepcopy(value))
        (folder / CONFIG).write_text(json.dumps(config))
        _outcome(saved, folder)


def test_every_byte_of_the_weights_header_flipped(saved):
    """Exhaustive over the safetensors header (names, dtypes, shapes, offsets): two masks per byte."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(saved, tmp)
        original = (folder / WEIGHTS).read_bytes()
        header = 8 + struct.unpack("<Q", original[:8])[0]
        outcomes = []
        for position in range(header):
            for mask in (0x01, 0x20):
                (folder / WEIGHTS).write_bytes(original)
                _flip(folder / WEIGHTS, [(position, mask)])
                outcomes.append(_outcome(saved, folder))
    assert "refused" in outcomes


def test_every_weight_changed_by_one_ulp_is_refused(saved):
    """The flips that no format check can see: a finite weight one step away from its value."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(saved, tmp)
        original = (folder / WEIGHTS).read_bytes()
        start = 8 + struct.unpack("<Q", original[:8])[0]
        for position in range(start, len(original), 4):
            value = np.frombuffer(original[position : position + 4], dtype=np.float32)
            (folder / WEIGHTS).write_bytes(
                original[:position] + np.nextafter(value, np.inf).tobytes() + original[position + 4 :]
            )
            assert _outcome(saved, folder) == "refused", position


def test_consistent_edits_that_change_the_outputs_are_refused(saved):
    """Edits that keep the file valid and self-consistent but change what it computes or accepts."""
    edits = {
        "identity": lambda c: (c.update(identity=True), c["training"].update(best_step=0)),
        "encoder": lambda c: c["encoder"].update(fingerprint="fake:other-model:0123456789ab"),
    }
    for name, change in edits.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = _copy(saved, tmp)
            config = json.loads((folder / CONFIG).read_text())
            change(config)
            (folder / CONFIG).write_text(json.dumps(config))
            assert _outcome(saved, folder) == "refused", name
