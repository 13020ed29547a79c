"""An adapted encoder gives the library's own adapted vectors, also through LangChain and LlamaIndex,
and embeds documents through the same store as the command line: what it holds is never sent again.
Loading the model behind them prints nothing unless asked (``--verbose``)."""

from __future__ import annotations

import asyncio
import copy as copy_module
import logging
import math
import pickle
import threading
import time
import warnings
from importlib.util import find_spec

import numpy as np
import pytest

from search_adaptor.encoders.base import InputsRejected
from search_adaptor.integrations import as_langchain, as_llamaindex
from search_adaptor.model import AdaptedEncoder, CompatibilityError, SearchAdaptor
from search_adaptor.store import EmbeddingStore
from test_index import make_adapter
from test_store import CountingEncoder, StaticLikeEncoder

TEXTS = ["how do vaccines work", "Vaccines train the immune system.", "unrelated text"]
DOCS = [f"document {i} about topic {i % 5}" for i in range(20)]


@pytest.fixture(autouse=True)
def default_store(tmp_path, monkeypatch):
    """Each test's default embedding store is its own: the fake's vectors change between processes."""
    monkeypatch.setenv("SEARCH_ADAPTOR_CACHE", str(tmp_path / "default-store"))
    return tmp_path / "default-store"


@pytest.fixture(scope="module")
def adapter() -> SearchAdaptor:
    return make_adapter(info=CountingEncoder(dim=16).info(), mode="separate")


def _expected(adapter: SearchAdaptor, texts: list[str] = TEXTS) -> tuple[np.ndarray, np.ndarray]:
    base = CountingEncoder(dim=16)
    return adapter.transform_queries(base.encode_queries(texts)), adapter.transform_corpus(
        base.encode_corpus(texts)
    )


def _sent(encoder: CountingEncoder) -> int:
    return sum(len(call) for call in encoder.calls)


@pytest.mark.parametrize("cache", [True, False])
def test_a_text_the_model_gives_a_zero_vector_is_refused_by_name(adapter, cache):
    """A zero vector scores 0 against everything (LangChain's in-memory store fails such a query with
    "NaN values found"): the text is refused, as the server refuses it."""
    enc = AdaptedEncoder(StaticLikeEncoder(dim=16), adapter, cache=cache)
    for encode in (enc.encode_queries, enc.encode_corpus):
        with pytest.raises(InputsRejected, match=r"fake: 1 of 3 texts .* text 1 .*'zzz'.*zero vector") as err:
            encode(["fine", "zzz", "also fine"])
        assert np.isnan(err.value.vectors[1]).all() and np.isfinite(err.value.vectors[[0, 2]]).all()
    assert np.isfinite(enc.encode_queries(["fine"])).all()


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
    with pytest.raises(TypeError, match="list of texts"):
        enc.encode_queries("one text")
    with pytest.raises(ValueError, match="empty"):
        enc.encode_corpus([])


def test_adapted_encoder_reads_what_the_store_holds_and_sends_the_rest(adapter, default_store, tmp_path):
    _, d = _expected(adapter, DOCS)
    with EmbeddingStore(CountingEncoder(dim=16), None) as cli_store:  # as `search-adaptor embed` leaves it
        cli_store.embed(DOCS[:15], "document")
    base = CountingEncoder(dim=16)
    enc = AdaptedEncoder(base, adapter)
    assert np.array_equal(enc.encode_corpus(DOCS), d)
    assert base.calls == [tuple(DOCS[15:18]), tuple(DOCS[18:])]  # only the 5 missing, in batches of 3
    assert (enc.stats.encoded, enc.stats.cached) == (5, 15)

    again = CountingEncoder(dim=16)  # a later process
    enc2 = AdaptedEncoder(again, adapter)
    assert np.array_equal(enc2.encode_corpus(DOCS), d) and again.calls == []
    enc2.encode_queries(TEXTS)
    enc2.encode_queries(TEXTS)
    assert _sent(again) == 6 and enc2.stats.cached == 20  # queries are sent each time, never stored
    enc2.close()
    assert np.array_equal(enc2.encode_corpus(DOCS[:2]), d[:2])  # reopens after close

    elsewhere = CountingEncoder(dim=16)
    assert np.array_equal(AdaptedEncoder(elsewhere, adapter, cache=tmp_path / "mine").encode_corpus(DOCS), d)
    assert _sent(elsewhere) == 20  # another store: nothing there yet
    assert any((tmp_path / "mine").iterdir())

    uncached = CountingEncoder(dim=16)
    off = AdaptedEncoder(uncached, adapter, cache=False)
    for _ in range(2):
        assert np.array_equal(off.encode_corpus(DOCS), d)
    assert _sent(uncached) == 40 and off.stats.encoded == off.stats.cached == 0
    with EmbeddingStore(CountingEncoder(dim=16), None) as cli_store:  # no query, nothing uncached
        assert len(cli_store) == 20 and cli_store.missing("query", TEXTS) == TEXTS


def test_calls_into_a_one_batch_encoder_never_overlap(adapter):
    class Overlap(CountingEncoder):
        busy = False

        def encode_batch(self, texts, kind):
            assert not self.busy, "two batches ran at once"
            self.busy = True
            time.sleep(0.002)
            self.busy = False
            return super().encode_batch(texts, kind)

    for cache in (True, False):
        enc = AdaptedEncoder(Overlap(dim=16), adapter, cache=cache)
        threads = [
            threading.Thread(target=enc.encode_corpus, args=([f"{t} {i}" for i in range(9)],)) for t in "abcd"
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _sent(enc.base) == 36


def test_a_size_gives_the_adapted_prefix_everywhere(adapter):
    """``dim=``: smaller vectors for a vector store, the same prefix as ``index --dim``."""
    q, d = (adapter.transform_queries, adapter.transform_corpus)
    base = CountingEncoder(dim=16)
    enc = AdaptedEncoder(CountingEncoder(dim=16), adapter, dim=8)
    np.testing.assert_array_equal(enc.encode_queries(TEXTS), q(base.encode_queries(TEXTS), dim=8))
    np.testing.assert_array_equal(enc.encode_corpus(TEXTS), d(base.encode_corpus(TEXTS), dim=8))
    np.testing.assert_allclose(np.linalg.norm(enc.encode_corpus(TEXTS), axis=1), 1.0, atol=1e-6)
    assert enc.fingerprint != AdaptedEncoder(CountingEncoder(dim=16), adapter).fingerprint
    with pytest.raises(ValueError, match="dim must be an output size between 1 and 16; got 17"):
        AdaptedEncoder(CountingEncoder(dim=16), adapter, dim=17)
    if find_spec("langchain_core"):
        assert len(as_langchain(CountingEncoder(dim=16), adapter, dim=4).embed_query("x")) == 4
        kept = as_langchain(enc, cache=False).encoder  # another store keeps the size
        assert kept.size == 8 and kept.cache is False and len(kept.encode_queries(["x"])[0]) == 8
        assert as_langchain(enc, dim=4).encoder.size == 4


def test_an_untrained_size_is_warned_once(caplog):
    """``dim=`` at a size the adapter never trained at said nothing, where ``index --dim`` warns."""
    fresh = make_adapter(info=CountingEncoder(dim=16).info(), mode="separate", seed=11)
    with caplog.at_level(logging.WARNING, logger="search_adaptor.model"):
        AdaptedEncoder(CountingEncoder(dim=16), fresh)
        AdaptedEncoder(CountingEncoder(dim=16), fresh, dim=16)
        assert not caplog.records
        AdaptedEncoder(CountingEncoder(dim=16), fresh, dim=8)
        AdaptedEncoder(CountingEncoder(dim=16), fresh, dim=8)
    assert [r.getMessage() for r in caplog.records] == [
        "search-adaptor: warning: dim=8 is not a size this adapter was trained at (it was trained at "
        "full width only; fit --dims trains smaller sizes); its first 8 coordinates are kept, but how "
        "well they retrieve was never measured"
    ]


def test_pickled_copies_embed_as_the_original_through_their_own_store(adapter):
    """Multiprocessing, Ray and LlamaIndex's worker pools pickle an embedding model; the open store and
    the locks cannot be pickled (TypeError: cannot pickle '_thread.lock' object, before), so a copy
    opens the store again on first use and reads back what the original stored."""
    enc = AdaptedEncoder(CountingEncoder(dim=16), adapter)
    docs, queries = enc.encode_corpus(DOCS), enc.encode_queries(TEXTS)  # the store is open now
    copy = pickle.loads(pickle.dumps(enc))
    sent = _sent(copy.base)
    assert np.array_equal(copy.encode_corpus(DOCS), docs) and np.array_equal(
        copy.encode_queries(TEXTS), queries
    )
    assert _sent(copy.base) == sent + len(TEXTS)  # documents read back from the store, queries sent
    assert copy.stats.cached == enc.stats.cached + len(DOCS) and copy.fingerprint == enc.fingerprint


def test_the_wrappers_pickle_and_copy_with_their_settings(adapter):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    enc = AdaptedEncoder(CountingEncoder(dim=16), adapter)
    lc = as_langchain(enc, show_progress=True)
    li = as_llamaindex(enc, embed_batch_size=7, num_workers=2)
    for copy in (pickle.loads(pickle.dumps(lc)), copy_module.deepcopy(lc)):
        assert type(copy) is type(lc) and copy.show_progress
        assert np.allclose(copy.embed_query(TEXTS[0]), lc.embed_query(TEXTS[0]), atol=0)
    for copy in (pickle.loads(pickle.dumps(li)), copy_module.deepcopy(li)):
        assert type(copy) is type(li) and (copy.embed_batch_size, copy.num_workers) == (7, 2)
        assert np.allclose(copy.get_text_embedding(TEXTS[1]), li.get_text_embedding(TEXTS[1]), atol=0)


def test_wrappers_need_an_adapter(adapter):
    for wrap in (as_langchain, as_llamaindex):
        with pytest.raises(TypeError, match="give the adapter"):
            wrap(CountingEncoder(dim=16))


def test_langchain_embeddings_equal_the_library(adapter):
    Embeddings = pytest.importorskip("langchain_core.embeddings").Embeddings
    q, d = _expected(adapter)
    emb = as_langchain(CountingEncoder(dim=16), adapter)
    assert isinstance(emb, Embeddings)
    assert np.allclose(emb.embed_documents(TEXTS), d, atol=1e-7)
    assert np.allclose(emb.embed_query(TEXTS[0]), q[0], atol=1e-7)
    assert np.allclose(asyncio.run(emb.aembed_query(TEXTS[1])), q[1], atol=1e-7)
    assert np.allclose(asyncio.run(emb.aembed_documents(TEXTS)), d, atol=1e-7)
    assert emb.embed_documents([]) == []
    with pytest.raises(TypeError, match=r"embed_documents\(\) takes a list of texts"):
        emb.embed_documents("vitamin D")  # was 9 vectors, one per character
    with pytest.raises(TypeError, match=r"not a bare bytes .*decode it to str"):
        emb.embed_documents(b"vitamin D")  # was refused item by item, as numbers


def test_langchain_vector_store_second_run_makes_no_encoder_calls(adapter, capsys):
    vectorstores = pytest.importorskip("langchain_core.vectorstores")
    from langchain_core.documents import Document

    docs = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(DOCS)]
    q, d = _expected(adapter, DOCS)
    best = f"d{int(np.argmax(d @ q[4]))}"
    for run in range(2):
        base = CountingEncoder(dim=16, batch_size=4, max_concurrency=2)
        emb = as_langchain(base, adapter, show_progress=True)
        store = vectorstores.InMemoryVectorStore(emb)
        store.add_documents(docs)
        bar = capsys.readouterr().err
        assert "embedding documents" in bar and "20/20" in bar
        if run == 0:  # batched: 20 documents in chunks of 4 x 2, batches of 4
            assert len(base.calls) == 5 and all(len(c) <= 4 for c in base.calls)
        else:
            assert base.calls == [] and emb.encoder.stats.cached == 20
        base.calls.clear()
        assert store.similarity_search(DOCS[4], k=1)[0].id == best
    assert not capsys.readouterr().err  # no bar unless asked
    as_langchain(CountingEncoder(dim=16), adapter).embed_documents(DOCS)
    assert not capsys.readouterr().err


def test_wrapper_cache_argument_overrides_the_encoders(adapter, default_store):
    pytest.importorskip("langchain_core")
    enc = AdaptedEncoder(CountingEncoder(dim=16), adapter)
    assert as_langchain(enc).encoder is enc
    off = as_langchain(enc, cache=False)
    assert off.encoder.cache is False and off.encoder.adapter is adapter
    off.embed_documents(DOCS)
    assert not default_store.exists()


def test_llamaindex_embedding_equals_the_library(adapter):
    BaseEmbedding = pytest.importorskip("llama_index.core.base.embeddings.base").BaseEmbedding
    q, d = _expected(adapter)
    emb = as_llamaindex(AdaptedEncoder(CountingEncoder(dim=16), adapter), embed_batch_size=2)
    assert isinstance(emb, BaseEmbedding) and emb.model_name == "fake-model"
    assert np.allclose(emb.get_query_embedding(TEXTS[0]), q[0], atol=1e-7)
    assert np.allclose(emb.get_text_embedding(TEXTS[1]), d[1], atol=1e-7)
    assert np.allclose(emb.get_text_embedding_batch(TEXTS), d, atol=1e-7)
    assert np.allclose(asyncio.run(emb.aget_query_embedding(TEXTS[2])), q[2], atol=1e-7)
    assert np.allclose(asyncio.run(emb.aget_text_embedding_batch(TEXTS)), d, atol=1e-7)
    api_like = CountingEncoder(dim=16, batch_size=4, max_concurrency=2)
    assert as_llamaindex(api_like, adapter).embed_batch_size == 8  # every request slot busy


def test_llamaindex_vector_index_second_run_makes_no_encoder_calls(adapter, capsys):
    core = pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode

    nodes = [TextNode(id_=f"d{i}", text=t) for i, t in enumerate(DOCS)]
    q, d = _expected(adapter, DOCS)
    best = f"d{int(np.argmax(d @ q[4]))}"
    for run in range(2):
        base = CountingEncoder(dim=16, batch_size=4)
        embed_model = as_llamaindex(base, adapter)
        index = core.VectorStoreIndex(nodes, embed_model=embed_model, show_progress=True)
        assert "Generating embeddings" in capsys.readouterr().err  # LlamaIndex's own bar
        if run == 0:  # one store call per LlamaIndex batch, in encoder batches
            assert len(base.calls) == 5 and all(len(c) <= 4 for c in base.calls)
        else:
            assert base.calls == [] and embed_model.encoder.stats.cached == 20
        base.calls.clear()
        assert index.as_retriever(similarity_top_k=1).retrieve(DOCS[4])[0].node.id_ == best

    async_base = CountingEncoder(dim=16, batch_size=4)  # the async path batches too, not text by text
    embed_model = as_llamaindex(async_base, adapter, cache=False, num_workers=2)
    vectors = asyncio.run(embed_model.aget_text_embedding_batch(DOCS))
    assert np.allclose(vectors, d, atol=1e-7) and len(async_base.calls) == math.ceil(len(DOCS) / 4)


def test_quiet_loading_silences_third_party_output_and_restores_it(monkeypatch, capsys):
    hf_logging = pytest.importorskip("transformers.utils.logging")
    from huggingface_hub.utils import are_progress_bars_disabled

    from search_adaptor.encoders.local import ENV_VERBOSE, quiet_loading

    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append

    def load() -> None:  # what a model load does: a transformers bar, a log warning, a Python warning
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
        hf_logging.get_logger("transformers.modeling_utils").warning("some weights were not used")
        warnings.warn("a deprecation", FutureWarning, stacklevel=1)

    def state() -> tuple[bool, bool, int]:
        return hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled(), hf_logging.get_verbosity()

    monkeypatch.delenv(ENV_VERBOSE, raising=False)
    outside = state()
    hf_logging.enable_progress_bar()  # transformers' defaults, whatever earlier tests left
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_loading():
                load()
            assert not caught and not logged and "Loading weights" not in capsys.readouterr().err
            assert state() == (True, False, logging.WARNING)  # as it was before

            monkeypatch.setenv(ENV_VERBOSE, "1")  # --verbose
            with quiet_loading():
                load()
            assert "Loading weights" in capsys.readouterr().err and len(caught) == 1
            assert [r.getMessage() for r in logged] == ["some weights were not used"]
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(outside[2])
        (hf_logging.enable_progress_bar if outside[0] else hf_logging.disable_progress_bar)()


@pytest.mark.slow
def test_the_model_loads_quietly_unless_the_command_line_says_verbose(tmp_path, monkeypatch, capfd):
    """A script or server that loads the local model prints nothing at load; ``--verbose`` on the
    command line shows what transformers prints there (its ``Loading weights`` bar)."""
    pytest.importorskip("sentence_transformers")
    from search_adaptor.cli import main
    from search_adaptor.encoders.local import ENV_VERBOSE, SentenceTransformerEncoder

    monkeypatch.setenv(ENV_VERBOSE, "0")  # restored after the test, whatever main() sets
    capfd.readouterr()
    SentenceTransformerEncoder().encode_queries(["a query"])
    assert capfd.readouterr().err == ""
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "a document"}\n')
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert main(["embed", str(data), "--cache", str(tmp_path / "c"), "--quiet", "--verbose"]) == 0
    assert "Loading weights" in capfd.readouterr().err
