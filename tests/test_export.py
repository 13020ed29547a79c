"""Exports reproduce the adapter: ONNX graphs to 1e-5, a sentence-transformers folder plain ST can load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from search_adaptor.cli import main
from search_adaptor.retrieval import l2_normalize
from test_index import make_adapter

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from search_adaptor.export import export_onnx, export_sentence_transformers  # noqa: E402

VARIANTS = {
    "shared_mlp": {"mode": "shared"},
    "separate_mlp": {"mode": "separate"},
    "query_only_mlp": {"mode": "query_only"},
    "linear": {"architecture": "linear"},
    "no_skip_mlp": {"residual": False, "hidden_dim": 24},
    "no_skip_linear": {"architecture": "linear", "residual": False, "mode": "separate"},
}


def _run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["adapted"], {"embeddings": x})[0]


@pytest.mark.parametrize("params", VARIANTS.values(), ids=VARIANTS.keys())
def test_onnx_equals_torch(synthetic, tmp_path, params):
    adapter = make_adapter(**params)
    out = export_onnx(adapter, tmp_path / "onnx")
    x = synthetic["Q"] * 3.0  # not unit-norm: the graph normalises its input like transform_* does
    assert np.abs(_run(out / "query.onnx", x) - adapter.transform_queries(x)).max() < 1e-5
    assert np.abs(_run(out / "corpus.onnx", x) - adapter.transform_corpus(x)).max() < 1e-5
    info = json.loads((out / "export.json").read_text())
    assert info["mode"] == adapter.mode and info["dim"] == 16 and info["queries"] == "query.onnx"


def test_onnx_of_an_identity_adapter_only_normalises(synthetic, tmp_path):
    adapter = make_adapter()
    adapter.best_step_ = 0  # nothing beat zero-shot: the saved adapter is the identity
    out = export_onnx(adapter, tmp_path / "onnx")
    assert np.abs(_run(out / "query.onnx", synthetic["D"]) - l2_normalize(synthetic["D"])).max() < 1e-6


def test_cli_export_onnx_and_refusals(tmp_path, capsys):
    make_adapter(info={"fingerprint": "openai:x:1", "provider": "openai", "model": "x"}).save(tmp_path / "a")
    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--format", "onnx"]) == 0
    assert "checked against the adapter" in capsys.readouterr().out
    assert (tmp_path / "o" / "query.onnx").is_file()
    args = ["export", str(tmp_path / "a"), "--out", str(tmp_path / "st"), "--format", "sentence-transformers"]
    assert main(args) == 2
    assert "trained on openai embeddings (x); only a local" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "a"), "--format", "onnx"]) == 2
    assert "exists and is not an ONNX export" in capsys.readouterr().err


@pytest.mark.slow
def test_sentence_transformers_folder_gives_the_adapted_vectors(tmp_path, capfd, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from search_adaptor.encoders.local import ENV_VERBOSE, SentenceTransformerEncoder

    monkeypatch.setenv(ENV_VERBOSE, "0")
    base = SentenceTransformerEncoder()
    adapter = make_adapter(384, info=base.info(), mode="separate")  # a Router: two sides
    capfd.readouterr()
    out = export_sentence_transformers(adapter, tmp_path / "st")
    assert capfd.readouterr().err == ""  # no bar of transformers' while it saves or loads
    modules = json.loads((out / "modules.json").read_text())
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)  # no trust_remote_code
    model = SentenceTransformer(str(out), device="cpu")
    texts = ["does vitamin D prevent fractures", "Vitamin D supplements and bone density in adults."]
    q = adapter.transform_queries(base.encode_queries(texts))
    d = adapter.transform_corpus(base.encode_corpus(texts))
    assert np.abs(model.encode_query(texts) - q).max() < 1e-5
    assert np.abs(model.encode_document(texts) - d).max() < 1e-5
    assert np.abs(model.encode(texts) - q).max() < 1e-5  # plain encode is the query encoder
    assert not np.allclose(q, d, atol=1e-3)
