"""Exports reproduce the adapter: ONNX graphs to 1e-5, a sentence-transformers folder plain ST can load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from search_adaptor.cli import main
from search_adaptor.model import SearchAdaptor
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


def _kept_no_skip_start(
    dim: int, init: str, info: Mapping[str, Any] | None = None, **params: Any
) -> SearchAdaptor:
    """A no-skip MLP (``residual=False``) fitted for one step, which cannot beat its start: it keeps
    it (best step 0) and computes the start alone, the map ``init`` names (a PCA rotation), or the
    identity, never its random MLP."""
    rng = np.random.default_rng(0)
    D = rng.normal(size=(40, dim)).astype(np.float32)
    Q = (D[:20] + 0.3 * rng.normal(size=(20, dim))).astype(np.float32)
    qids, dids = [f"q{i}" for i in range(20)], [f"d{i}" for i in range(40)]
    qrels = {q: {dids[i]: 1} for i, q in enumerate(qids)}
    est = SearchAdaptor(
        residual=False, init=init, max_steps=1, eval_every=1, patience=1, batch_size=8, **params
    )
    est.fit(Q, D, qrels, qids, dids, encoder=info)
    assert est.kept_start_ and est.is_identity_ == (init == "identity")
    return est


@pytest.mark.parametrize("mode", ["shared", "separate"])
def test_onnx_of_a_kept_no_skip_start_is_that_start_alone(synthetic, tmp_path, mode):
    """A no-skip PCA start that no checkpoint beat computes the rotation alone, but the export wrote
    its random MLP over it and refused itself ('query.onnx differs from the torch adapter by
    9.78e-01'); it is now the rotation (MatMul, no Gemm), and a kept identity start only normalises."""
    import onnx

    x = synthetic["Q"] * 3.0
    adapter = _kept_no_skip_start(16, "pca", mode=mode)
    for dim in (None, 8):
        out = export_onnx(adapter, tmp_path / f"pca{dim}", dim)
        for side, transform in (("query", adapter.transform_queries), ("corpus", adapter.transform_corpus)):
            got = _run(out / f"{side}.onnx", x)
            assert np.abs(got - transform(x, dim=dim)).max() < 1e-5
            ops = {node.op_type for node in onnx.load(out / f"{side}.onnx").graph.node}
            assert "MatMul" in ops and "Gemm" not in ops
    rotated, unit = _run(tmp_path / "pcaNone" / "query.onnx", x), l2_normalize(x)
    assert np.abs(rotated - unit).max() > 0.1  # not the identity, but a rotation: cosines kept
    assert np.abs(rotated @ rotated.T - unit @ unit.T).max() < 1e-5
    identity = _kept_no_skip_start(16, "identity", mode=mode)
    out = export_onnx(identity, tmp_path / "identity")
    for side in ("query", "corpus"):
        assert {node.op_type for node in onnx.load(out / f"{side}.onnx").graph.node} == {
            "Abs",
            "ReduceMax",
            "ReduceL2",
            "Max",
            "Div",
        }
        assert np.abs(_run(out / f"{side}.onnx", x) - l2_normalize(x)).max() < 1e-6


@pytest.mark.parametrize("params", VARIANTS.values(), ids=VARIANTS.keys())
def test_onnx_equals_torch(synthetic, tmp_path, params):
    adapter = make_adapter(**params)
    out = export_onnx(adapter, tmp_path / "onnx")
    # not unit-norm: the graph normalises its input like transform_* does, at any length (a float32
    # sum of squares at 1e-20 underflowed and at 1e20 overflowed: 0.22 off)
    for scale in (3.0, 1e-20, 1e20):
        x = (synthetic["Q"] * scale).astype(np.float32)
        assert np.abs(_run(out / "query.onnx", x) - adapter.transform_queries(x)).max() < 1e-5, scale
        assert np.abs(_run(out / "corpus.onnx", x) - adapter.transform_corpus(x)).max() < 1e-5, scale
    info = json.loads((out / "export.json").read_text())
    assert info["mode"] == adapter.mode and info["dim"] == 16 and info["queries"] == "query.onnx"


@pytest.mark.parametrize("params", VARIANTS.values(), ids=VARIANTS.keys())
def test_sentence_transformers_modules_keep_a_zero_row_zero(synthetic, params):
    """A text the base model embeds to an exactly-zero vector (a static model, none of its tokens
    known) came out of the exported folder as the last Dense layer's bias, normalised, while
    transform_* (adapt_rows) and the ONNX graphs keep it zero; the modules now gate every bias by
    min(1, |x|_1), 1 on a unit row and 0 on a zero row, so the folder keeps it zero too."""
    import torch

    from search_adaptor.export import _dense_modules, _nets

    adapter = make_adapter(**params)
    x = l2_normalize(synthetic["Q"][:6].copy())
    x[2] = 0.0
    for net, transform in zip(
        _nets(adapter), (adapter.transform_queries, adapter.transform_corpus), strict=True
    ):
        for dim in (None, 8):
            features = {"sentence_embedding": torch.from_numpy(x)}
            for module in _dense_modules(net, adapter.dim_, dim):
                features = module(features)
            got = features["sentence_embedding"].detach().numpy()
            assert not got[2].any()
            assert np.abs(got - transform(x, dim=dim)).max() < 1e-5


def test_onnx_of_an_identity_adapter_only_normalises(synthetic, tmp_path):
    adapter = make_adapter()
    adapter.best_step_ = 0  # nothing beat zero-shot: the saved adapter is the identity
    out = export_onnx(adapter, tmp_path / "onnx")
    assert np.abs(_run(out / "query.onnx", synthetic["D"]) - l2_normalize(synthetic["D"])).max() < 1e-6


def test_onnx_export_json_gives_the_fitted_mode_after_set_params(synthetic, tmp_path):
    """set_params after fit edits the attributes (for the next fit), not the fitted networks: a
    shared adapter set to query_only was exported with 'mode': 'query_only' in export.json, telling a
    reader the documents need no re-index while corpus.onnx adapts them; it now says shared."""
    adapter = make_adapter(mode="shared").set_params(mode="query_only")
    out = export_onnx(adapter, tmp_path / "onnx")
    assert json.loads((out / "export.json").read_text())["mode"] == "shared"
    x = synthetic["D"]
    corpus = _run(out / "corpus.onnx", x)
    assert np.abs(corpus - adapter.transform_corpus(x)).max() < 1e-5
    assert np.abs(corpus - l2_normalize(x)).max() > 0.1  # the shared network, not query_only's identity


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


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shared", "separate"])
def test_sentence_transformers_folder_of_a_kept_no_skip_start_is_that_start_alone(
    tmp_path, monkeypatch, mode
):
    """The folder of a kept no-skip PCA start held its random MLP and refused itself ('exported
    encode_query differs from the adapter'); it is now the rotation, one bias-free Dense, and a kept
    identity start adds no Dense at all."""
    from sentence_transformers import SentenceTransformer

    from search_adaptor.encoders.local import ENV_VERBOSE, SentenceTransformerEncoder

    monkeypatch.setenv(ENV_VERBOSE, "0")
    base = SentenceTransformerEncoder()
    texts = ["does vitamin D prevent fractures", "Vitamin D supplements and bone density in adults."]
    for init in ("pca", "identity"):
        adapter = _kept_no_skip_start(384, init, base.info(), mode=mode)
        out = export_sentence_transformers(adapter, tmp_path / init)
        model = SentenceTransformer(str(out), device="cpu")
        q = adapter.transform_queries(base.encode_queries(texts))
        d = adapter.transform_corpus(base.encode_corpus(texts))
        assert np.abs(model.encode_query(texts) - q).max() < 1e-5
        assert np.abs(model.encode_document(texts) - d).max() < 1e-5
        dense = [folder.name for folder in out.rglob("*_Dense") if folder.is_dir()]  # a Router's too
        assert len(dense) == (0 if init == "identity" else 1 if mode == "shared" else 2)


@pytest.mark.slow
def test_sentence_transformers_layout_is_the_fitted_modes_after_set_params(tmp_path, monkeypatch):
    """A shared adapter set to query_only after fit was written as a query/document Router (the
    layout for two sides) from the edited attribute; it is now the shared layout the fitted adapter
    has: its Dense modules straight after the base model, no Router."""
    from sentence_transformers import SentenceTransformer

    from search_adaptor.encoders.local import ENV_VERBOSE, SentenceTransformerEncoder

    monkeypatch.setenv(ENV_VERBOSE, "0")
    base = SentenceTransformerEncoder()
    adapter = make_adapter(384, info=base.info(), mode="shared").set_params(mode="query_only")
    out = export_sentence_transformers(adapter, tmp_path / "st")
    types = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert "Router" not in types and types[-3:] == ["Dense", "Dense", "Normalize"]
    texts = ["does vitamin D prevent fractures", "Vitamin D supplements and bone density in adults."]
    model = SentenceTransformer(str(out), device="cpu")
    d = adapter.transform_corpus(base.encode_corpus(texts))
    assert np.abs(model.encode_document(texts) - d).max() < 1e-5


def test_sentence_transformers_folder_of_a_static_model_keeps_a_zero_row_zero(tmp_path, monkeypatch):
    """A static base model embeds a text of unknown words (and "") to zero: the folder gave it the
    Dense bias, normalised, so the export's own check refused it ('exported encode_query differs
    from the adapter by 6.90e-01'); it now writes the folder, and such a text stays zero in it."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    from search_adaptor.encoders.local import ENV_VERBOSE, SentenceTransformerEncoder
    from tiny_models import WORDS

    monkeypatch.setenv(ENV_VERBOSE, "0")
    vocab = ["[UNK]", *WORDS]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    weights = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    weights[0] = 0.0  # an unknown word adds nothing
    static = StaticEmbedding(tokenizer, embedding_weights=weights)
    SentenceTransformer(modules=[static], device="cpu").save(str(tmp_path / "static"))
    base = SentenceTransformerEncoder(str(tmp_path / "static"), device="cpu")
    texts = ["the cat sat on the mat", "zebra", ""]
    assert not base.encode_queries(texts)[1:].any()
    for mode in ("shared", "separate"):
        adapter = make_adapter(16, info=base.info(), mode=mode)
        model = SentenceTransformer(str(export_sentence_transformers(adapter, tmp_path / mode)), device="cpu")
        q = adapter.transform_queries(base.encode_queries(texts))
        d = adapter.transform_corpus(base.encode_corpus(texts))
        assert np.abs(model.encode_query(texts) - q).max() < 1e-5
        assert np.abs(model.encode_document(texts) - d).max() < 1e-5
        assert not model.encode_query(texts)[1:].any() and model.encode_query(texts)[0].any()
