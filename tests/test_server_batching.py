"""Micro-batching: concurrent requests share encoder calls and FAISS searches. The server, the adapter
and FAISS treat each text alone (bit for bit); a local model's vectors may differ from their lone ones
only in the last float32 bits, as its matrix kernels round by batch shape."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from search_adaptor.encoders.base import InputsRejected
from search_adaptor.index import AdaptedIndex
from test_index import make_adapter
from test_store import CountingEncoder

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
import httpx
import uvicorn
from fastapi.testclient import TestClient

from search_adaptor.server import MAX_PENDING_BATCHES, Batcher, Busy, create_app, text_units


class PickyEncoder(CountingEncoder):
    """Rejects texts starting with ``REJECT`` the way an API rejects a text too long for every limit."""

    def encode_batch(self, texts, kind):
        vectors = super().encode_batch(texts, kind)
        rejected = {i: "HTTP 400: too long" for i, t in enumerate(texts) if t.startswith("REJECT")}
        if rejected:
            vectors[list(rejected)] = np.nan
            raise InputsRejected.of(self.provider, texts, vectors, rejected)
        return vectors


def fake_index(synthetic, encoder: CountingEncoder) -> AdaptedIndex:
    info = encoder.info()
    adapter = make_adapter(info=info, mode="separate")
    return AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], info, encoder=encoder)


def requests(n: int) -> list[tuple[str, dict]]:
    """A mix of searches (two values of k, duplicate texts) and embeddings of both sides."""
    out = []
    for i in range(n):
        texts = [f"query {i}", f"text {i % 5}"][: 1 + i % 2]
        if i % 3 == 0:
            out.append(("/embed", {"queries": texts, "kind": "document" if i % 2 else "query"}))
        else:
            out.append(("/search", {"queries": texts, "k": 3 if i % 2 else 7}))
    return out


async def send_together(app, calls: list[tuple[str, dict]]) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in calls))


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_concurrent_requests_share_calls_and_get_their_lone_answers(synthetic):
    encoder = CountingEncoder(dim=16, batch_size=64)
    app = create_app(fake_index(synthetic, encoder), batch_window_s=0.05)
    calls = requests(40)
    alone = [TestClient(app).post(path, json=body).json() for path, body in calls]
    encoder.calls.clear()
    together = asyncio.run(send_together(app, calls))
    assert [r.status_code for r in together] == [200] * len(calls)
    assert [r.json() for r in together] == alone  # exactly: the fake's vectors do not depend on the batch
    assert len(encoder.calls) < len(calls) / 4, len(encoder.calls)  # merged: a few calls per side


def test_a_rejected_text_fails_only_its_own_request(synthetic):
    app = create_app(fake_index(synthetic, PickyEncoder(dim=16, batch_size=64)), batch_window_s=0.05)
    calls = [("/search", {"queries": ["fine", "REJECT me"], "k": 2}), *requests(6)]
    alone = [TestClient(app).post(path, json=body).json() for path, body in calls[1:]]
    together = asyncio.run(send_together(app, calls))
    assert together[0].status_code == 422
    assert together[0].json()["detail"] == "queries[1] cannot be embedded: HTTP 400: too long"
    assert [r.json() for r in together[1:]] == alone


def test_a_full_queue_answers_busy(synthetic):
    started, release = threading.Event(), threading.Event()

    class SlowEncoder(CountingEncoder):
        def encode_batch(self, texts, kind):
            started.set()
            release.wait(10)
            return super().encode_batch(texts, kind)

    batcher = Batcher(fake_index(synthetic, SlowEncoder(dim=16)), max_texts=8, window_s=0.0, max_pending=3)
    first = batcher.submit(["a"], "query")
    assert started.wait(10)  # the worker holds "a"; what comes next waits
    waiting = [batcher.submit(["b", "c"], "query"), batcher.submit(["d"], "query", k=2)]
    with pytest.raises(
        Busy,
        match=r"3 texts' worth of work waits \(a text counts once per 128 characters, 16 times at most\)",
    ):
        batcher.submit(["e"], "query")
    release.set()
    assert first.result(10).shape == (1, 16) and waiting[0].result(10).shape == (2, 16)
    assert len(waiting[1].result(10)[0]) == 2


class HeldEncoder(CountingEncoder):
    """Holds every call but the server's warm-up until ``release`` is set (``started`` says one began):
    a busy model."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.started, self.release = threading.Event(), threading.Event()

    def encode_batch(self, texts, kind):
        if list(texts) != ["warm-up"]:
            self.started.set()
            self.release.wait(10)
        return super().encode_batch(texts, kind)


def test_long_texts_count_by_their_length_in_the_queue(synthetic):
    """The queue's limit counted texts: 35 requests of 64 long texts (6 s of a model each) got in, and
    the last waited minutes. A text counts once per 128 characters."""
    assert text_units(["a", "b" * 128, "c" * 129, "d" * 2048, "e" * 8192, ""]) == 1 + 1 + 2 + 16 + 16 + 1
    assert text_units(["x" * 8192] * 64) <= MAX_PENDING_BATCHES * 64 // 2  # two of the largest fit together
    encoder = HeldEncoder(dim=16)
    batcher = Batcher(fake_index(synthetic, encoder), max_texts=8, window_s=0.0, max_pending=4)
    first = batcher.submit(["a"], "query")
    assert encoder.started.wait(10)
    long = batcher.submit(["x" * 300], "query")  # 3 short texts' worth
    with pytest.raises(
        Busy,
        match=r"3 texts' worth of work waits \(a text counts once per 128 characters, 16 times at most\)",
    ):
        batcher.submit(["y"] * 2, "query")
    short = batcher.submit(["z"], "query")  # 4: still within
    encoder.release.set()
    assert [f.result(10).shape for f in (first, long, short)] == [(1, 16)] * 3


def test_a_cancelled_request_is_dropped_unembedded_and_leaves_the_count(synthetic):
    encoder = HeldEncoder(dim=16)
    batcher = Batcher(fake_index(synthetic, encoder), max_texts=8, window_s=0.0, max_pending=4)
    first = batcher.submit(["a"], "query")
    assert encoder.started.wait(10)
    gone = batcher.submit(["gone"] * 4, "query")
    assert gone.cancel()
    encoder.release.set()
    first.result(10)
    later = batcher.submit(["later"] * 4, "query")  # the cancelled texts no longer count: not Busy
    assert later.result(10).shape == (4, 16)
    assert not any("gone" in call for call in encoder.calls)


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """``app`` on a free loopback port, served by uvicorn in a thread (so that a client can really close
    its connection); yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_request_whose_client_hangs_up_while_it_waits_is_never_embedded(synthetic, caplog):
    """Clients that timed out and closed their connections still had their texts embedded, one after
    another: a small request sent after 32 abandoned long ones waited 173 s."""
    encoder = HeldEncoder(dim=16)
    app = create_app(fake_index(synthetic, encoder), batch_window_s=0.0)
    with served(app) as url:
        held = threading.Thread(
            target=httpx.post, args=(f"{url}/search",), kwargs={"json": {"queries": ["held"]}, "timeout": 30}
        )
        held.start()
        assert encoder.started.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/search", json={"queries": ["abandoned"]}, timeout=0.5)
        deadline = time.monotonic() + 10
        while "closed the connection" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        encoder.release.set()
        held.join(10)
        assert httpx.post(f"{url}/search", json={"queries": ["after"]}, timeout=10).status_code == 200
    assert "POST /search from 127.0.0.1" in caplog.text and "its request was dropped" in caplog.text
    assert encoder.calls == [("warm-up",), ("held",), ("after",)]


def test_a_request_cancelled_while_it_waits_takes_its_job_along(synthetic):
    """The shutdown cuts a waiting request by cancelling its task: its texts must leave the queue with
    it, not be embedded after the server has answered 503."""
    encoder = HeldEncoder(dim=16)
    app = create_app(fake_index(synthetic, encoder), batch_window_s=0.0)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            held = asyncio.create_task(client.post("/search", json={"queries": ["held"]}))
            while not encoder.started.is_set():
                await asyncio.sleep(0.01)
            cut = asyncio.create_task(client.post("/search", json={"queries": ["cut"]}))
            await asyncio.sleep(0.1)
            cut.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cut
            encoder.release.set()
            assert (await held).status_code == 200
            assert (await client.post("/search", json={"queries": ["after"]})).status_code == 200

    asyncio.run(scenario())
    assert encoder.calls == [("warm-up",), ("held",), ("after",)]


def test_503_tells_when_to_retry(synthetic, monkeypatch):
    app = create_app(fake_index(synthetic, CountingEncoder(dim=16)), batch_window_s=0.0)

    def busy(*args, **kwargs):
        raise Busy("64 texts are waiting; retry in a second")

    monkeypatch.setattr(Batcher, "submit", busy)
    answer = TestClient(app).post("/search", json={"queries": ["q"]})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"detail": "the server is busy: 64 texts are waiting; retry in a second"}


@pytest.mark.slow
def test_local_model_vectors_differ_from_their_lone_ones_by_rounding_only(monkeypatch):
    """What a batch changes of a local model's vectors: no text is padded to a longer one (texts of one
    token count go together) and the adapter adapts each row alone, but the transformer's matrix
    kernels round by batch shape: "a" sent 8 times differed from "a" alone by 1.5e-7, not 0."""
    pytest.importorskip("sentence_transformers")
    from search_adaptor.encoders.local import SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder()
    info = encoder.info()
    docs = np.random.default_rng(0).normal(size=(50, 384)).astype(np.float32)
    ids = [f"d{i}" for i in range(50)]
    adapter = make_adapter(384, info=info, mode="separate")
    index = AdaptedIndex.from_vectors(adapter, ids, docs, info, encoder=encoder)
    texts = [
        "vitamin D",
        "vitamin D deficiency and bone fractures in older adults",
        *["a"] * 8,
        "the same length text here",
        "another same length text",
        "Ein deutscher Satz über Knochenbrüche und Vitamin D bei älteren Menschen.",
        "vitamin D",
    ]
    calls: list[tuple[list[str], np.ndarray]] = []

    def recording(encode):
        def encode_and_record(batch):
            calls.append((list(batch), encode(batch)))
            return calls[-1][1]

        return encode_and_record

    for kind, transform in (("query", adapter.transform_queries), ("document", adapter.transform_corpus)):
        calls.clear()
        name = "encode_queries" if kind == "query" else "encode_corpus"
        monkeypatch.setattr(encoder, name, recording(getattr(encoder, name)))
        together = index.embed(texts, kind)
        assert all(len(set(encoder.batch_keys(batch, kind))) == 1 for batch, _ in calls), kind  # unpadded
        base: dict[str, list[np.ndarray]] = {}
        for batch, vectors in calls:
            for text, vector in zip(batch, vectors, strict=True):
                base.setdefault(text, []).append(vector)
        rows = [base[t].pop(0)[None] for t in texts]  # each text's vector in its batch
        adapted_alone = np.concatenate([transform(row) for row in rows])  # the adapter: row by row
        assert np.array_equal(together, adapted_alone), kind
        alone = np.concatenate([index.embed([t], kind) for t in texts])
        np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6, err_msg=kind)  # the encoder's rounding
    hits = index.search(texts, k=5)
    lone = [index.search([t], k=5)[0] for t in texts]
    assert [[d for d, _ in row] for row in hits] == [[d for d, _ in row] for row in lone]
    np.testing.assert_allclose(
        [[s for _, s in row] for row in hits], [[s for _, s in row] for row in lone], atol=1e-6
    )


@pytest.mark.parametrize(("mode", "identity"), [("shared", False), ("query_only", False), ("separate", True)])
def test_vector_search_adapts_as_transform_queries_in_reused_arrays(synthetic, mode, identity):
    """The served path (numpy weights read once, arrays reused per thread) computes what the adapter does."""
    encoder = CountingEncoder(dim=16)
    adapter = make_adapter(info=encoder.info(), mode=mode)
    if identity:  # nothing beat zero-shot: the adapter only normalises
        adapter.best_step_ = 0
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], encoder.info())
    Q = synthetic["Q"]  # not unit-norm: normalised first
    for rows in (1, 2, 5, 70, 1):  # grow, then shrink, the reused arrays
        expected = index.search_adapted(adapter.transform_queries(Q[:rows]), 5)
        assert index.search(Q[:rows], 5) == expected
        assert index.search(Q[:rows].astype(np.float64), 5) == expected
    first = index.search(Q[:1], 5)
    index.search(Q[1:4], 5)  # answers are lists: later calls never change them
    assert first == index.search(Q[:1], 5)
    with pytest.raises(ValueError, match="queries: row 0 contains NaN"):
        index.search(np.full((1, 16), np.nan, dtype=np.float32), 5)
