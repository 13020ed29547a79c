"""An adapted encoder gives the library's own adapted vectors, also through LangChain and LlamaIndex."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from search_adaptor.integrations import as_langchain, as_llamaindex
from search_adaptor.model import AdaptedEncoder, CompatibilityError, SearchAdaptor
from search_adaptor.store import EmbeddingStore
from test_index import make_adapter
from test_store import CountingEncoder

TEXTS = ["how do vaccines work", "Vaccines train the immune system.", "unrelated text"]


@pytest.fixture(scope="module")
def adapter() -> SearchAdaptor:
    return make_adapter(info=CountingEncoder(dim=16).info(), mode="separate")


def _expected(adapter: SearchAdaptor) -> tuple[np.ndarray, np.ndarray]:
    base = CountingEncoder(dim=16)
    return adapter.transform_queries(base.encode_queries(TEXTS)), adapter.transform_corpus(
        base.encode_corpus(TEXTS)
    )


def test_adapted_encoder_is_an_encoder_with_its_own_fingerprint(adapter, tmp_path):
    q, d = _expected(adapter)
    enc = AdaptedEncoder(CountingEncoder(dim=16), adapter)
    assert np.array_equal(enc.encode_queries(TEXTS), q) and np.array_equal(enc.encode_corpus(TEXTS), d)
    assert not np.allclose(q, d)  # separate mode: the two sides differ
    assert enc.fingerprint != CountingEncoder(dim=16).fingerprint
    adapter.save(tmp_path / "a")
    from_folder = AdaptedEncoder(CountingEncoder(dim=16), tmp_path / "a")
    assert from_folder.fingerprint == enc.fingerprint  # same weights, same fingerprint
    other = make_adapter(info=CountingEncoder(dim=16).info(), mode="separate", seed=3)
    assert other.fingerprint_ != adapter.fingerprint_
    assert AdaptedEncoder(CountingEncoder(dim=16), other).fingerprint != enc.fingerprint
    with EmbeddingStore(enc, tmp_path / "cache") as store:  # the store keeps adapted vectors apart
        assert np.array_equal(store.embed(TEXTS, "query"), q)
        assert store.path != EmbeddingStore(CountingEncoder(dim=16), tmp_path / "cache").path
    with pytest.raises(CompatibilityError, match="trained on embeddings of fake:"):
        AdaptedEncoder(CountingEncoder(dim=8), adapter)


def test_langchain_embeddings_equal_the_library(adapter):
    Embeddings = pytest.importorskip("langchain_core.embeddings").Embeddings
    q, d = _expected(adapter)
    emb = as_langchain(CountingEncoder(dim=16), adapter)
    assert isinstance(emb, Embeddings)
    assert np.allclose(emb.embed_documents(TEXTS), d, atol=1e-7)
    assert np.allclose(emb.embed_query(TEXTS[0]), q[0], atol=1e-7)
    assert np.allclose(asyncio.run(emb.aembed_query(TEXTS[1])), q[1], atol=1e-7)
    assert emb.embed_documents([]) == []


def test_llamaindex_embedding_equals_the_library(adapter):
    BaseEmbedding = pytest.importorskip("llama_index.core.base.embeddings.base").BaseEmbedding
    q, d = _expected(adapter)
    emb = as_llamaindex(AdaptedEncoder(CountingEncoder(dim=16), adapter), embed_batch_size=2)
    assert isinstance(emb, BaseEmbedding) and emb.model_name == "fake-model"
    assert np.allclose(emb.get_query_embedding(TEXTS[0]), q[0], atol=1e-7)
    assert np.allclose(emb.get_text_embedding(TEXTS[1]), d[1], atol=1e-7)
    assert np.allclose(emb.get_text_embedding_batch(TEXTS), d, atol=1e-7)
    assert np.allclose(asyncio.run(emb.aget_query_embedding(TEXTS[2])), q[2], atol=1e-7)
