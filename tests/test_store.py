"""The embedding store never embeds a text twice and survives being reopened."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from search_adaptor.encoders.base import Encoder, EncoderError
from search_adaptor.files import default_cache_dir
from search_adaptor.store import EmbeddingStore, StoreStats


class CountingEncoder(Encoder):
    """Deterministic fake: a vector from the text's hash; counts every text it is asked for."""

    provider = "fake"

    def __init__(
        self, dim: int = 4, batch_size: int = 3, max_concurrency: int = 1, nan_on: str | None = None
    ) -> None:
        self.model, self.dim, self.batch_size, self.max_concurrency = (
            "fake-model",
            dim,
            batch_size,
            max_concurrency,
        )
        self.nan_on = nan_on
        self.calls: list[tuple[str, ...]] = []

    def config(self) -> dict:
        return {"provider": self.provider, "model": self.model, "dim": self.dim}

    def encode_batch(self, texts, kind):
        self.calls.append(tuple(texts))
        out = np.stack(
            [np.random.default_rng(abs(hash((t, kind))) % 2**32).normal(size=self.dim) for t in texts]
        )
        if self.nan_on is not None and self.nan_on in texts:  # (None: never; "" was, for an empty text)
            out[list(texts).index(self.nan_on)] = np.nan
        return out.astype(np.float32)


class StaticLikeEncoder(CountingEncoder):
    """A zero vector for a text of unknown words only, as a static (model2vec) model gives one."""

    def encode_batch(self, texts, kind):
        out = super().encode_batch(texts, kind)
        out[[i for i, t in enumerate(texts) if t.startswith("zzz")]] = 0.0
        return out


def test_second_run_makes_zero_encoder_calls(tmp_path):
    texts = [f"text {i}" for i in range(10)] + ["text 0"]  # a duplicate is embedded once
    enc = CountingEncoder()
    stats = StoreStats()
    with EmbeddingStore(enc, tmp_path) as store:
        first = store.embed(texts, "document", stats=stats)
    assert stats.encoded == 10 and stats.cached == 0 and sum(len(c) for c in enc.calls) == 10
    enc2 = CountingEncoder()
    stats2 = StoreStats()
    with EmbeddingStore(enc2, tmp_path) as store:
        again = store.embed(texts, "document", stats=stats2)
        assert len(store) == 10
    assert enc2.calls == [] and stats2.encoded == 0 and stats2.cached == 10
    assert np.array_equal(first, again) and np.array_equal(first[0], first[10])


def test_a_warm_read_holds_its_vectors_about_once(tmp_path):
    """Reading every vector back from the store costs their size, not also their blobs and a joined
    copy (the read built both, then stacked a third copy: 2.4x); the rows come back in the texts'
    order, repeats included, as the encoder made them."""

    class Wide(CountingEncoder):
        def encode_batch(self, texts, kind):  # as fast as the store can take them, one row per text
            return np.stack([np.full(self.dim, 1.0 + int(t[1:]), np.float32) for t in texts])

    texts = [f"t{i}" for i in range(20_000)]
    with EmbeddingStore(Wide(dim=384, batch_size=5_000), tmp_path) as store:
        store.embed(texts, "document")
    with EmbeddingStore(Wide(dim=384, batch_size=5_000), tmp_path) as store:
        tracemalloc.start()
        try:
            vectors = store.embed(texts, "document")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert vectors.shape == (20_000, 384) and np.array_equal(vectors[:, 0], np.arange(1.0, 20_001.0))
        assert peak < 1.5 * vectors.nbytes, f"peak {peak / vectors.nbytes:.2f}x the vectors read"
        mixed = store.embed(["t5", "t1", "t5", "t99999", "t1"], "document")  # repeats, and one not stored
    assert np.array_equal(mixed[:, 0], [6.0, 2.0, 6.0, 100_000.0, 2.0])


def test_queries_and_documents_are_cached_apart(tmp_path):
    enc = CountingEncoder()
    with EmbeddingStore(enc, tmp_path) as store:
        q = store.embed(["same"], "query")
        d = store.embed(["same"], "document")
    assert len(enc.calls) == 2 and not np.array_equal(q, d)


def test_concurrent_batches_keep_order(tmp_path):
    texts = [f"t{i}" for i in range(40)]
    ref = CountingEncoder(batch_size=40).encode_batch(texts, "document")
    with EmbeddingStore(CountingEncoder(batch_size=3, max_concurrency=4), tmp_path) as store:
        assert np.array_equal(store.embed(texts, "document"), ref)


def test_a_failing_batch_keeps_the_finished_ones(tmp_path):
    texts = [f"t{i}" for i in range(9)]
    with EmbeddingStore(CountingEncoder(batch_size=3, nan_on="t7"), tmp_path) as store:
        with pytest.raises(EncoderError, match="NaN or inf"):
            store.embed(texts, "document")
        assert len(store) == 6  # the first two batches were committed
        assert store.missing("document", texts) == ["t6", "t7", "t8"]


def test_a_zero_vector_is_handed_back_but_never_kept(tmp_path):
    """A zero vector ranks nothing; kept, one bad reply spoiled its text for good. A static model's (its
    words unknown) still comes back each time: the callers refuse that text by name."""
    enc = StaticLikeEncoder()
    with EmbeddingStore(enc, tmp_path) as store:
        vectors = store.embed(["fine", "zzz", "zzz"], "document")
        assert not vectors[1:].any() and vectors[0].any()
        assert len(store) == 1 and store.missing("document", ["fine", "zzz"]) == ["zzz"]
        assert np.array_equal(store.embed(["zzz", "fine"], "document"), vectors[[1, 0]])
    assert enc.calls == [("fine", "zzz"), ("zzz",)]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SEARCH_ADAPTOR_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_a_path_given_for_the_encoder_is_refused_in_one_line(tmp_path):
    with pytest.raises(
        TypeError, match=r"^EmbeddingStore\(encoder, root=None\): encoder must be an Encoder .* got str$"
    ):
        EmbeddingStore(str(tmp_path))


def test_an_output_that_cannot_be_staged_is_named_by_its_own_path(tmp_path, monkeypatch):
    """The message named the hidden temporary sibling (/proc/.x.86q9kn24), not the --out given."""
    import tempfile

    from search_adaptor.files import Staged

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(
        OSError, match=rf"^{tmp_path / 'out'}: cannot be written \(permission denied\); choose a folder"
    ):
        Staged(tmp_path / "out", folder=True)


def test_a_store_folder_of_another_model_is_refused(tmp_path):
    """A store folder copied or renamed from another model's served that model's vectors as this one's:
    its recorded fingerprint was written but never read back."""
    import shutil

    from search_adaptor.store import StoreError

    one, other = CountingEncoder(dim=4), CountingEncoder(dim=4)
    other.model = "other-model"
    with EmbeddingStore(one, tmp_path) as store:
        store.embed(["a text"], "document")
        mine = store.path.parent
    with EmbeddingStore(other, tmp_path) as store:
        theirs = store.path.parent
    shutil.rmtree(theirs)
    shutil.copytree(mine, theirs)
    with pytest.raises(
        StoreError, match=rf"holds embeddings of {one.fingerprint}, not of {other.fingerprint}"
    ):
        EmbeddingStore(other, tmp_path)


@pytest.mark.parametrize("texts", ["hello", b"hello"], ids=["str", "bytes"])
def test_a_bare_string_is_refused_before_anything_is_embedded_or_stored(tmp_path, texts):
    """embed("hello", ...) embedded and stored one row per letter; the store's entry points and the
    encoder's now refuse it, as AdaptedEncoder and AdaptedIndex do."""
    enc = CountingEncoder()
    with EmbeddingStore(enc, tmp_path) as store:
        for call in (
            lambda: store.embed(texts, "document"),
            lambda: store.lookup("document", texts),
            lambda: store.missing("document", texts),
            lambda: enc.encode_queries(texts),
            lambda: enc.encode_corpus(texts),
        ):
            with pytest.raises(TypeError, match=r"takes a list of texts, not a bare .*letter by letter"):
                call()
        assert enc.calls == [] and len(store) == 0


def test_an_unknown_kind_is_refused_before_anything_is_embedded_or_stored(tmp_path):
    """A misspelt kind ("qeury") was sent to the encoder and its vectors stored under it."""
    enc = CountingEncoder()
    with EmbeddingStore(enc, tmp_path) as store:
        for call in (
            lambda: store.embed(["hello"], "qeury"),
            lambda: store.lookup("qeury", ["hello"]),
            lambda: store.missing(None, ["hello"]),
        ):
            with pytest.raises(ValueError, match=r"^kind must be one of 'query', 'document'; got "):
                call()
        assert enc.calls == [] and len(store) == 0
        assert store.embed(["hello"], "query").shape == (1, enc.dim)
