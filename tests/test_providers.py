"""The embedding-API providers against local fakes of their wire formats (no network, no keys)."""

from __future__ import annotations

import email.utils
import json
import logging
import re
import subprocess
import sys
import time
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fake_providers import (
    FAKE_KEY,
    FAST_RETRY,
    KEY_ENV,
    PROVIDER_NAMES,
    FakeProvider,
    Fault,
    fake_encoder,
    fake_vector,
    required_options,
)
from search_adaptor.encoders.base import EncoderError, InputsRejected
from search_adaptor.encoders.http import (
    LONGEST_TOKEN_CHARS,
    Endpoint,
    RetryPolicy,
    Secret,
    cut_to_tokens,
    parse_retry_after,
    plan_requests,
    prepare_texts,
    request_timeout,
    retry_delay_in_body,
    token_bound,
)
from search_adaptor.encoders.local import cut_to_window
from search_adaptor.encoders.registry import PROVIDERS, from_info, make_encoder
from search_adaptor.store import EmbeddingStore

TEXTS = ["the cat sat on the mat", "embeddings map text to vectors", "a third, rather different text"]


@pytest.fixture(params=PROVIDER_NAMES)
def fake(request: pytest.FixtureRequest):
    with FakeProvider(request.param) as server:
        yield server


# -- the happy path --------------------------------------------------------------------------------


def test_right_vector_for_each_text_and_mode(fake: FakeProvider) -> None:
    enc = fake_encoder(fake)
    queries = enc.encode_queries(TEXTS)
    docs = enc.encode_corpus(TEXTS)
    np.testing.assert_allclose(queries, fake.expected(TEXTS, "query"), atol=1e-6)
    np.testing.assert_allclose(docs, fake.expected(TEXTS, "document"), atol=1e-6)
    assert [c.mode for c in fake.calls] == [fake.mode("query"), fake.mode("document")]
    assert fake.texts_sent() == TEXTS + TEXTS
    assert enc.retries == 0


def test_an_unknown_kind_is_refused_as_the_store_refuses_it_before_anything_is_sent(
    fake: FakeProvider,
) -> None:
    enc = fake_encoder(fake)
    with pytest.raises(ValueError, match=r"^kind must be one of 'query', 'document'; got 'qeury'$"):
        enc.encode_batch(TEXTS, "qeury")  # type: ignore[arg-type]
    assert fake.calls == []


def test_output_dimensions_are_requested(fake: FakeProvider) -> None:
    enc = fake_encoder(fake, dimensions=4)
    vecs = enc.encode_corpus(TEXTS)
    assert vecs.shape == (3, 4)
    np.testing.assert_allclose(vecs, fake.expected(TEXTS, "document", dim=4), atol=1e-6)
    assert fake.calls[0].dimensions == 4
    assert enc.config()["dimensions"] == 4


def test_batches_are_split_to_the_documented_limit(fake: FakeProvider) -> None:
    enc = fake_encoder(fake, batch_size=10_000)
    texts = [f"t{i}" for i in range(enc.max_inputs + 3)]
    vecs = enc.encode_batch(texts, "document")
    np.testing.assert_allclose(vecs, fake.expected(texts, "document"), atol=1e-6)
    assert [len(c.texts) for c in fake.calls] == [enc.max_inputs, 3]


def test_vertex_gemini_models_send_one_text_per_request() -> None:
    with FakeProvider("vertex") as fake:
        enc = fake_encoder(fake, model="gemini-embedding-001")
        assert enc.batch_size == 1
        vecs = enc.encode_batch(TEXTS, "query")
        np.testing.assert_allclose(vecs, fake.expected(TEXTS, "query"), atol=1e-6)
        assert [len(c.texts) for c in fake.calls] == [1, 1, 1]


def test_token_budget_splits_requests() -> None:
    with FakeProvider("azure-openai") as fake:  # Azure's documented 8192 tokens per request
        enc = fake_encoder(fake)
        texts = ["x" * 9000] * 3  # ~3000 estimated tokens each: two fit in one request
        enc.encode_batch(texts, "document")
        assert [len(c.texts) for c in fake.calls] == [2, 1]


def test_openai_cuts_by_a_token_estimate_safe_for_every_script(caplog: pytest.LogCaptureFixture) -> None:
    """CJK text used to be cut at 24,576 characters, ~74,000 tokens: a 400 that failed its batch."""
    with FakeProvider("openai") as fake:  # rejects texts over 8192 tokens, CJK at 3 per character
        enc = fake_encoder(fake)
        english, cjk, code = "y" * 30_000, "東京都" * 10_000, "f(x); " * 5_000
        vecs = enc.encode_batch([english, cjk, code, ""], "document")
        sent = fake.calls[-1].texts
        # letters a third of a token, CJK its 3 UTF-8 bytes, "f(x); " 4 tokens (punctuation 1 each)
        assert [len(t) for t in sent] == [8192 * 3, 8192 // 3, 8192 // 4 * 6, 1]
        np.testing.assert_allclose(vecs, fake.expected(sent, "document"), atol=1e-6)
        assert enc.config()["max_input_tokens"] == 8192 and enc.config()["max_chars"] is None
        assert fake_encoder(fake, max_input_tokens=None).fingerprint != enc.fingerprint
        enc.encode_batch([english], "query")
    cuts = [r for r in caplog.records if "cut before sending" in r.message]
    assert len(cuts) == 1  # said once, not per text


@pytest.mark.parametrize("model, limit", [("gemini-embedding-001", 2048), ("gemini-embedding-2", 8192)])
def test_gemini_cuts_by_its_models_token_limit(model: str, limit: int) -> None:
    """The Gemini API has no character cap of its own: texts are cut to the model's token limit."""
    with FakeProvider("gemini") as fake:
        enc = fake_encoder(fake, model=model)
        assert enc.config()["max_input_tokens"] == limit
        texts = ["東京都" * 10_000, "y" * 30_000, "short"]
        enc.encode_batch(texts, "document")
        sent = fake.calls[-1].texts
        assert all(c.status == 200 for c in fake.calls)
        assert [token_bound(t) <= limit for t in sent] == [True, True, True]
        assert len(sent[0]) < len(texts[0]) and len(sent[1]) < len(texts[1])
        assert sent[2].endswith("short")  # short texts go as they are (a task prompt may lead)


def test_token_bound_is_an_upper_estimate_for_every_script() -> None:
    assert token_bound("") == 0 and token_bound("abc") == 1 and token_bound("2024") == 3
    assert token_bound("東京") == 6 and token_bound("Привет") == 12 and token_bound("😀") == 4
    for text in ("東京都" * 5000, "Привет, мир! " * 3000, "x = f(y)\n" * 4000, "a" * 50_000):
        cut = cut_to_tokens(text, 8192)
        assert token_bound(cut) <= 8192 < token_bound(cut + text[len(cut)])


@pytest.mark.parametrize(
    "provider", ["openai-compatible", "openai", "azure-openai", "gemini", "vertex", "cohere", "voyage"]
)
def test_a_text_no_limit_can_take_is_named_and_the_others_embedded(provider: str) -> None:
    """The provider rejects one text as too long: the batch is split around it, never failed whole."""
    strict = {
        "vertex": {"auto_truncate": False},
        "cohere": {"truncate": "NONE"},
        "voyage": {"truncation": False},
    }
    with FakeProvider(provider, input_limit=40) as fake:  # stricter than any documented limit
        enc = fake_encoder(fake, **strict.get(provider, {}))
        texts = [f"short text {i}" for i in range(12)]
        texts[7] = "an over-long text " * 20
        with pytest.raises(InputsRejected) as info:
            enc.encode_batch(texts, "document")
        err = info.value
        assert list(err.rejected) == [7] and "\n" not in str(err)
        assert str(err).startswith(f"{provider}: 1 of 12 texts cannot be embedded, the other 11 were; text 7")
        assert "360 characters, starting 'an over-long text an over-long text" in str(err)
        assert re.search(r"\): HTTP 4\d\d: .*\b40\b", str(err))  # the provider's own message, with its limit
        ok = [i for i in range(12) if i != 7]
        np.testing.assert_allclose(
            err.vectors[ok], fake.expected([texts[i] for i in ok], "document"), atol=1e-6
        )
        assert np.isnan(err.vectors[7]).all()
        assert len(fake.calls) <= 2 * 12  # halving: a few requests, not one per text
        assert enc.retries == 0


def test_rejected_texts_do_not_stop_the_other_batches() -> None:
    with FakeProvider("openai-compatible", input_limit=40) as fake:
        enc = fake_encoder(fake, batch_size=3)
        texts = [f"text {i}" for i in range(9)]
        texts[1] = texts[7] = "long " * 100
        with pytest.raises(InputsRejected, match=r"2 of 9 texts cannot be embedded.*text 1 \(and 1 more\)"):
            enc.encode_corpus(texts)
        served = [t for call in fake.calls if call.status == 200 for t in call.texts]
        assert sorted(served) == sorted(t for i, t in enumerate(texts) if i not in (1, 7))


# -- caps on the tokens of one request -------------------------------------------------------------


#: What each provider says of a request over its cap per request (the fakes send its own words).
REQUEST_CAP_WORDS = {
    "openai": r"Requested \d+ tokens, max 60 tokens per request",
    "voyage": r"The max allowed tokens per submitted batch is 60\. Your batch has \d+ tokens after",
    "vertex": r"the input token count is \d+ but the model supports up to 60\.",
}


@pytest.mark.parametrize("provider", sorted(REQUEST_CAP_WORDS))
def test_a_request_over_the_providers_token_cap_is_split_and_a_text_over_it_alone_named(
    provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client plans requests under each provider's cap by its estimate; when that runs low (a
    tokenizer denser than it, as random ASCII meets), the provider refuses the request for its total.
    That 400 failed the whole batch; now the request is halved until it fits, and a text over the cap
    by itself is named with the provider's message while the others are embedded."""
    caplog.set_level(logging.INFO)
    with FakeProvider(provider, request_limit=60) as fake:  # as a denser tokenizer would count
        enc = fake_encoder(fake)
        texts = [f"document number {i}, of a batch " for i in range(8)]  # ~8 fake tokens each
        texts[5] = "a text that is over the cap all by itself " * 6  # ~64
        with pytest.raises(InputsRejected) as info:
            enc.encode_batch(texts, "document")
        err = info.value
        assert list(err.rejected) == [5] and "\n" not in str(err)
        assert str(err).startswith(f"{provider}: 1 of 8 texts cannot be embedded, the other 7 were; text 5")
        assert re.search(REQUEST_CAP_WORDS[provider], str(err))
        ok = [i for i in range(8) if i != 5]
        np.testing.assert_allclose(
            err.vectors[ok], fake.expected([texts[i] for i in ok], "document"), atol=1e-6
        )
        assert fake.calls[0].status == 400 and len(fake.calls[0].texts) == 8  # planned as one, refused
        assert enc.retries == 0 and len(fake.calls) < 2 * 8  # halving: a few requests, not one a text
    assert "sending it in halves" in caplog.text


@pytest.mark.parametrize(
    "provider, options, texts",
    [  # the documented caps, with the client told none (as if its estimate ran that low)
        ("openai", {}, ["y" * 24_500] * 60),  # 60 x 6,125 fake tokens: over 300,000
        ("voyage", {"model": "voyage-3-large"}, ["y" * 60_000] * 10),  # 10 x 15,000: over 120,000
    ],
)
def test_the_fakes_enforce_the_documented_caps_per_request(
    provider: str, options: dict[str, Any], texts: list[str]
) -> None:
    with FakeProvider(provider) as fake:
        enc = fake_encoder(fake, max_request_tokens=None, **options)
        texts = [f"{i} {t}" for i, t in enumerate(texts)]
        vecs = enc.encode_batch(texts, "document")
        np.testing.assert_allclose(vecs, fake.expected(texts, "document"), atol=1e-6)
        assert [(c.status, len(c.texts)) for c in fake.calls] == [
            (400, len(texts)),
            (200, len(texts) // 2),
            (200, len(texts) // 2),
        ]


VERTEX_LONG_DOC = "The quick brown fox jumps over the lazy dog. " * 2300  # 103,500 characters


@pytest.mark.parametrize(
    "model, fingerprint",
    [
        ("text-embedding-005", "vertex:text-embedding-005:fd01e08b794a"),
        ("gemini-embedding-001", "vertex:gemini-embedding-001:42619b008045"),
    ],
)
def test_vertex_cuts_a_long_text_to_its_request_cap_keeping_the_fingerprint(
    model: str, fingerprint: str, tmp_path
) -> None:
    """Vertex refuses a request of more than 20,000 tokens counted before autoTruncate cuts each text
    to 2048: a 100 kB document went whole (its only cut was at 262,144 characters) and its 400 ended
    the run, and every resume, at that document. Texts are now cut to 20,000 estimated tokens, which
    still hold the 2048 tokens Vertex keeps: the fingerprint, and so every store, stays as it was."""
    with FakeProvider("vertex") as fake:  # refuses over 20,000 with Vertex's own message
        enc = fake_encoder(fake, model=model)
        texts = ["short a", VERTEX_LONG_DOC, "short b"]
        with EmbeddingStore(enc, tmp_path) as store:
            vecs = store.embed(texts, "document")
        sent = enc.prepare(texts, "document")
        assert all(c.status == 200 for c in fake.calls) and sorted(fake.texts_sent()) == sorted(sent)
        assert VERTEX_LONG_DOC.startswith(sent[1])
        assert token_bound(sent[1]) <= 20_000 < token_bound(VERTEX_LONG_DOC)
        assert len(sent[1]) > 2048 * 4  # far more than the 2048 tokens Vertex keeps of it
        np.testing.assert_allclose(vecs, fake.expected(sent, "document"), atol=1e-6)
        assert enc.fingerprint == fingerprint  # as before: stores, indexes and adapters stay valid
        assert "max_input_tokens" not in enc.config()
        strict = fake_encoder(fake, model=model, auto_truncate=False)  # 2048 tokens, cut as before
        assert strict.prepare([VERTEX_LONG_DOC], "document") == prepare_texts([VERTEX_LONG_DOC], None, 2048)


def test_prompts_are_prefixed_and_fingerprinted() -> None:
    with FakeProvider("openai-compatible") as fake:
        enc = fake_encoder(fake, query_prompt="query: ", document_prompt="passage: ")
        q = enc.encode_queries(["a"])
        enc.encode_corpus(["a"])
        assert fake.texts_sent() == ["query: a", "passage: a"]
        np.testing.assert_allclose(q, fake.expected(["query: a"], "query"), atol=1e-6)
        assert enc.fingerprint != fake_encoder(fake).fingerprint


# -- errors that must not be retried --------------------------------------------------------------


def test_bad_key_fails_at_once_naming_the_env_var(fake: FakeProvider) -> None:
    wrong = "sk-wrong-SECRET-4242424242"
    enc = fake_encoder(fake, key=wrong)
    with pytest.raises(EncoderError) as info:
        enc.encode_queries(["a"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{fake.provider}:")
    assert "401" in message and KEY_ENV[fake.provider] in message
    assert wrong not in message and "Incorrect API key" in message  # server text kept, key scrubbed
    assert len(fake.calls) == 1 and enc.retries == 0


def test_bad_request_is_not_retried(fake: FakeProvider) -> None:
    enc = fake_encoder(fake)
    fake.schedule(Fault.rejected(400, "Invalid value for dimensions: it must be at most 3072"))
    with pytest.raises(EncoderError) as info:
        enc.encode_corpus(TEXTS)
    message = str(info.value)
    assert "400" in message and "must be at most 3072" in message
    assert "\n" not in message
    assert len(fake.calls) == 1 and enc.retries == 0


@pytest.mark.parametrize("status", [403, 404, 422])
def test_other_client_errors_are_not_retried(status: int) -> None:
    with FakeProvider("voyage") as fake:
        enc = fake_encoder(fake)
        fake.schedule(Fault.rejected(status, "nope"))
        with pytest.raises(EncoderError, match=f"HTTP {status}"):
            enc.encode_corpus(TEXTS)
        assert len(fake.calls) == 1


# -- transient faults are retried -----------------------------------------------------------------

TRANSIENT = {
    "429": Fault.rate_limited("0.01"),
    "500": Fault.server_error(500),
    "503": Fault.server_error(503),
    "not-json": Fault.bad_body("not-json"),
    "missing-field": Fault.bad_body("missing-field"),
    "wrong-count": Fault.bad_body("wrong-count"),
    "nan": Fault.bad_body("nan"),
}


@pytest.mark.parametrize("fault", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_faults_are_retried(fake: FakeProvider, fault: Fault) -> None:
    enc = fake_encoder(fake)
    fake.schedule(fault, fault)
    vecs = enc.encode_corpus(TEXTS)
    np.testing.assert_allclose(vecs, fake.expected(TEXTS, "document"), atol=1e-6)
    assert len(fake.calls) == 3
    assert enc.retries == 2


def _faulty_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two malformed kinds the fakes lack: ``zero`` answers 200 with an all-zero vector for TEXTS[1]
    wherever it is in the request; ``ragged`` with one vector a number short."""
    malformed = FakeProvider._malformed

    def faulty(
        self: FakeProvider, kind: str, vectors: list[list[float]], texts: list[str], body: Any
    ) -> bytes:
        if kind == "zero":
            vectors = [[0.0] * len(v) if TEXTS[1] in t else v for v, t in zip(vectors, texts, strict=True)]
        elif kind == "ragged":
            vectors[-1] = vectors[-1][:-1]
        else:
            return malformed(self, kind, vectors, texts, body)
        return json.dumps(self.wire.reply(vectors, texts, body)).encode()

    monkeypatch.setattr(FakeProvider, "_malformed", faulty)


def test_a_zero_vector_in_a_reply_is_retried_alone(fake: FakeProvider, monkeypatch) -> None:
    """An all-zero vector was taken as the text's (and stored for good): it ranks nothing. The other
    vectors of the reply are kept: only that text is sent again (once its whole batch was)."""
    _faulty_vectors(monkeypatch)
    enc = fake_encoder(fake)
    fake.schedule(Fault.bad_body("zero"), Fault.bad_body("zero"))
    np.testing.assert_allclose(enc.encode_corpus(TEXTS), fake.expected(TEXTS, "document"), atol=1e-6)
    assert [len(call.texts) for call in fake.calls] == [3, 1, 1] and enc.retries == 2
    assert all(TEXTS[1] in call.texts[0] for call in fake.calls[1:])


def test_a_nan_vector_costs_its_text_not_its_batch(fake: FakeProvider) -> None:
    """One vector with NaN in a reply of 12 sent the 12 texts three times and kept none of them."""
    enc = fake_encoder(fake, batch_size=12)
    texts = [f"text number {i}" for i in range(12)]
    fake.schedule(Fault.bad_body("nan"))  # the first vector of the reply
    np.testing.assert_allclose(enc.encode_corpus(texts), fake.expected(texts, "document"), atol=1e-6)
    assert [len(call.texts) for call in fake.calls] == [12, 1] and enc.retries == 1


def test_a_zero_vector_sent_every_time_is_one_line_and_never_stored(
    fake: FakeProvider, monkeypatch, tmp_path
) -> None:
    _faulty_vectors(monkeypatch)
    enc = fake_encoder(fake)
    fake.schedule(*[Fault.bad_body("zero")] * 4)
    with EmbeddingStore(enc, tmp_path) as store:
        with pytest.raises(EncoderError) as err:
            store.embed(TEXTS, "document")
        assert len(store) == 2 and store.missing("document", TEXTS) == [TEXTS[1]]  # the others are kept
    message = str(err.value)
    assert message.startswith(f"{fake.provider}: malformed reply to HTTP 200") and "\n" not in message
    assert (
        f"no usable embedding: text 0 of the 1 sent ({len(TEXTS[1])} characters, starting {TEXTS[1]!r}) "
        f"came back all zeros (no direction: it ranks nothing); if {fake.provider} keeps answering so, "
        "drop or reword that text, or check the model (3 unusable replies from "
    ) in message
    assert [len(call.texts) for call in fake.calls] == [3, 1, 1, 1]


def test_vectors_of_different_lengths_in_a_reply_are_named(fake: FakeProvider, monkeypatch) -> None:
    """numpy's "inhomogeneous shape after 1 dimensions" was the message."""
    _faulty_vectors(monkeypatch)
    enc = fake_encoder(fake)
    fake.schedule(*[Fault.bad_body("ragged")] * 3)
    with pytest.raises(EncoderError) as err:
        enc.encode_corpus(TEXTS)
    assert f"embeddings of different lengths ({fake.dim - 1} and {fake.dim}) in one reply" in str(err.value)
    assert "inhomogeneous" not in str(err.value) and len(fake.calls) == 3


def test_timeouts_are_retried(fake: FakeProvider) -> None:
    enc = fake_encoder(fake, timeout=0.2)
    fake.schedule(Fault.slow(0.6))
    vecs = enc.encode_queries(TEXTS)
    np.testing.assert_allclose(vecs, fake.expected(TEXTS, "query"), atol=1e-6)
    assert enc.retries == 1


def test_connection_errors_are_retried_then_reported() -> None:
    with FakeProvider("cohere") as fake:
        url = fake.url
    enc = make_encoder(
        "cohere", base_url=url, api_key=FAKE_KEY, retry=RetryPolicy(max_attempts=2, base_delay=0.001)
    )
    with pytest.raises(EncoderError, match=r"cohere: giving up after 2 attempts.*connection error") as err:
        enc.encode_queries(["a"])
    assert enc.retries == 1
    # where it tried, and what to check (an offline machine searching an API model's index said neither)
    assert f"connection error reaching {url}/" in str(err.value)
    assert str(err.value).endswith(
        "; check that this machine reaches it, or reach the API through another root (--base-url: a "
        "proxy, a gateway)"
    )


def test_retry_after_is_honoured(fake: FakeProvider) -> None:
    enc = fake_encoder(fake)  # its own backoff is at most 0.02 s
    fake.schedule(Fault.rate_limited("0.06"))
    start = time.monotonic()
    enc.encode_queries(["a"])
    assert time.monotonic() - start >= 0.06
    assert enc.retries == 1


def test_retry_after_ms_is_honoured() -> None:
    with FakeProvider("azure-openai") as fake:
        enc = fake_encoder(fake)
        fake.schedule(Fault.rate_limited(retry_after="30", retry_after_ms="120"))
        start = time.monotonic()
        enc.encode_queries(["a"])
        assert 0.12 <= time.monotonic() - start < 5


def test_gives_up_after_max_attempts_in_one_line(fake: FakeProvider) -> None:
    enc = fake_encoder(fake)
    fake.schedule(*[Fault.server_error(503)] * 4)
    with pytest.raises(EncoderError) as info:
        enc.encode_corpus(TEXTS)
    message = str(info.value)
    assert message.startswith(f"{fake.provider}: giving up after 4 attempts")
    assert "HTTP 503" in message and "the server had an error" in message and "\n" not in message
    assert len(fake.calls) == 4 and enc.retries == 3


def test_malformed_bodies_are_retried_a_limited_number_of_times() -> None:
    with FakeProvider("gemini") as fake:
        enc = fake_encoder(fake)
        fake.schedule(*[Fault.bad_body("wrong-count")] * 4)
        with pytest.raises(EncoderError, match=r"gemini: malformed reply.*3 unusable replies"):
            enc.encode_corpus(TEXTS)
        assert len(fake.calls) == 3


def test_a_retry_after_beyond_the_wait_budget_fails_fast() -> None:
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake)
        fake.schedule(Fault.rate_limited("3600"))
        start = time.monotonic()
        with pytest.raises(EncoderError, match=r"openai: giving up: waiting .* max_total_wait.*HTTP 429"):
            enc.encode_queries(["a"])
        assert time.monotonic() - start < 1


def test_retry_counter_is_shared_across_threads(tmp_path) -> None:
    with FakeProvider("voyage") as fake:
        enc = fake_encoder(fake, batch_size=2, max_concurrency=4)
        fake.schedule(*[Fault.server_error(500)] * 5)
        texts = [f"doc {i}" for i in range(20)]
        with EmbeddingStore(enc, tmp_path) as store:
            vecs = store.embed(texts, "document")
        np.testing.assert_allclose(vecs, fake.expected(texts, "document"), atol=1e-6)
        assert enc.retries == 5


# -- secrets ------------------------------------------------------------------------------------------


def test_keys_never_leak(fake: FakeProvider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    enc = fake_encoder(fake)
    fake.schedule(Fault.server_error(500))
    enc.encode_queries(["a"])  # one retry, logged
    wrong = "sk-other-SECRET-987654321"
    with pytest.raises(EncoderError) as info:
        fake_encoder(fake, key=wrong).encode_queries(["a"])
    assert caplog.records, "the retry should have been logged"
    places = [repr(enc), str(enc), enc.fingerprint, json.dumps(enc.config()), str(info.value), caplog.text]
    for place in places:
        assert FAKE_KEY not in place and wrong not in place


def test_credentials_in_the_url_are_scrubbed_as_sent_and_from_a_refusal(monkeypatch) -> None:
    """``user:pw@`` goes out as Basic auth, which a server may echo: the Basic value is scrubbed too,
    as is a lone ``TOKEN@``; a recorded model reached through another root is refused naming that
    root without its credentials."""
    from search_adaptor.encoders.registry import from_info

    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeProvider("openai-compatible") as fake:
        url = fake.url.replace("http://", "http://usr:PW-SECRET-1@")
        with pytest.raises(EncoderError) as info:
            make_encoder("openai-compatible", "m", base_url=url).encode_queries(["a"])
        assert "HTTP 401" in str(info.value) and "Basic ***" in str(info.value)
        assert "PW-SECRET" not in str(info.value) and "dXNyOlBXLVNFQ1JFVC0x" not in str(info.value)
        # the credential sent is the URL's, not the environment's the hint used to name
        assert str(info.value).endswith(
            "(authentication failed; check the credential in the base URL's user info (sent as HTTP "
            "Basic auth, in place of an API key))"
        )
    assert "TOKEN-SECRET-2" in Endpoint.parse("https://TOKEN-SECRET-2@example.com/v1").secrets
    recorded = make_encoder("openai-compatible", "m", base_url="http://127.0.0.1:9/v1", api_key="k").info()
    with pytest.raises(ValueError, match="API root is part of what it records") as refused:
        from_info(recorded, base_url="http://usr:PW-SECRET-3@127.0.0.1:8/v1?api_key=Q-SECRET-4")
    assert "SECRET" not in str(refused.value) and "http://127.0.0.1:8/v1 may serve" in str(refused.value)


@pytest.mark.parametrize("key", ["sk-live-SECRET\r\nextra", "sk-live-SECRET\u201d"])
def test_a_key_no_header_can_carry_is_refused_without_showing_it(key: str, monkeypatch) -> None:
    """A key with a line break went into httpx's 'Illegal header value b'Bearer sk-...'' (unscrubbed:
    escaped, it no longer matched the key) after 8 retries; a non-ASCII one gave a bare
    UnicodeEncodeError."""
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(
        EncoderError, match=r"^openai: the API key \(\$OPENAI_API_KEY\) has a character"
    ) as info:
        make_encoder("openai", base_url="http://127.0.0.1:9/v1")
    assert "SECRET" not in str(info.value)


ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.SECRETPAYLOAD.sig"


def test_a_token_providers_newline_is_stripped_as_a_keys_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """`az account get-access-token -o tsv` prints the token with a newline: h11 refused the header
    ('Illegal header value b'Bearer eyJ...\\n''), the escaped token went unscrubbed into 8 retry log
    lines and the error. It is stripped, as a key from a file is."""
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with FakeProvider("azure-openai", key=ENTRA_TOKEN) as fake:
        make_encoder(
            "azure-openai", "dep", base_url=fake.url, azure_ad_token_provider=lambda: f" {ENTRA_TOKEN}\r\n"
        ).encode_queries(["a"])
        assert (
            fake.calls[0].headers["authorization"] == f"Bearer {ENTRA_TOKEN}" and fake.calls[0].status == 200
        )


@pytest.mark.parametrize(
    "token, says",
    [
        (
            ENTRA_TOKEN[:20] + "\n" + ENTRA_TOKEN[20:],
            "has a character no HTTP header can carry at position 20",
        ),
        (ENTRA_TOKEN + "\u00e9", "has a character no HTTP header can carry at position 54"),
        ("  ", "is a blank string, not a key or token"),
        (None, "is nothing, not a key or token"),
    ],
)
def test_a_token_provider_answer_no_header_can_carry_is_refused_in_one_line(
    token: Any, says: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused before anything is sent, in one line that does not show it, and not retried (a
    non-ASCII one was a bare UnicodeEncodeError)."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with FakeProvider("azure-openai") as fake:
        enc = make_encoder(
            "azure-openai", "dep", base_url=fake.url, retry=FAST_RETRY, azure_ad_token_provider=lambda: token
        )
        with pytest.raises(EncoderError) as info:
            enc.encode_queries(["a"])
        assert fake.calls == [] and enc.retries == 0
    assert str(info.value) == (
        f"azure-openai: the token azure_ad_token_provider returned {says}"
        + (" (a line break or a non-ASCII character, often from a copied file)" if "position" in says else "")
        + "; fix the provider"
    )
    assert "SECRETPAYLOAD" not in caplog.text


def test_a_request_that_cannot_be_written_is_not_retried_and_no_form_of_its_secret_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever the source of a header no request can carry, httpx's LocalProtocolError (which quotes
    the value escaped: b'Bearer SECRET...\\n') is one line at once, not a 'connection error' retried
    8 times, and the secret is scrubbed in its escaped forms too."""
    from search_adaptor.encoders.http import HttpClient

    caplog.set_level(logging.DEBUG)
    with FakeProvider("openai") as fake:
        for value in ("Bearer SECRET-TOKEN-1\nX", "Bearer SECRET-TOKEN-2\x00", "Bearer SECRET-TOKEN-3\u00e9"):
            client = HttpClient(
                "openai",
                fake.url,
                auth=lambda v=value: {"authorization": v},
                credential_hint="$K",
                retry=FAST_RETRY,
            )
            with pytest.raises(EncoderError, match=r"^openai: the request to .* could not be sent: ") as info:
                client.post("/embeddings", {"input": ["a"]}, lambda payload: payload)
            assert "not retried" in str(info.value) and client.retries == 0
            assert "SECRET-TOKEN" not in str(info.value)
        assert fake.calls == []
    assert "SECRET-TOKEN" not in caplog.text


@pytest.mark.parametrize(
    "url", ["localhost:11434/v1", "ftp://host/v1", "http:///v1", "http://u:pw@h:99999/v1"]
)
def test_an_api_root_no_request_can_reach_is_refused_at_once(url: str) -> None:
    """A root without http(s):// was retried for a minute ('UnsupportedProtocol'); a bad port said
    only 'Port out of range 0-65535'."""
    with pytest.raises(EncoderError, match=r"^openai-compatible: API root.*; correct --base-url") as info:
        make_encoder("openai-compatible", "m", base_url=url, api_key="k")
    assert "pw" not in str(info.value)


def test_secret_hides_its_value() -> None:
    secret = Secret("sk-abc")
    assert "sk-abc" not in repr(secret) and "sk-abc" not in str(secret)
    assert secret.reveal() == "sk-abc"


# -- with the store -----------------------------------------------------------------------------------


def test_store_sends_each_text_once(fake: FakeProvider, tmp_path) -> None:
    enc = fake_encoder(fake, batch_size=2, max_concurrency=3)
    texts = [f"passage {i}" for i in range(9)]
    with EmbeddingStore(enc, tmp_path) as store:
        first = store.embed(texts, "document")
        calls = len(fake.calls)
        again = store.embed(texts, "document")
        assert len(fake.calls) == calls  # the second embed sent nothing
        queries = store.embed(texts[:2], "query")
    np.testing.assert_allclose(first, fake.expected(texts, "document"), atol=1e-6)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(queries, fake.expected(texts[:2], "query"), atol=1e-6)
    assert sorted(fake.texts_sent()) == sorted(texts + texts[:2])


# -- registry -----------------------------------------------------------------------------------------


def test_provider_names() -> None:
    assert set(PROVIDERS) == {"sentence-transformers", "model2vec", "onnx", *PROVIDER_NAMES}


def test_unknown_provider_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown embedding provider 'acme'.*openai.*voyage"):
        make_encoder("acme")


@pytest.mark.parametrize("provider", [p for p in PROVIDER_NAMES if p != "openai-compatible"])
def test_missing_key_names_the_env_var(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*KEY_ENV.values(), "OPENAI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "google.auth", None)  # no application-default credentials either
    with pytest.raises(EncoderError, match=KEY_ENV[provider]):
        make_encoder(provider, base_url="http://127.0.0.1:9", **required_options(provider))


def test_keys_are_read_from_the_environment(fake: FakeProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV[fake.provider], fake.key)
    enc = make_encoder(fake.provider, base_url=fake.url, **required_options(fake.provider))
    np.testing.assert_allclose(enc.encode_queries(["a"]), fake.expected(["a"], "query"), atol=1e-6)


def test_gemini_accepts_google_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", FAKE_KEY)
    with FakeProvider("gemini") as fake:
        make_encoder("gemini", base_url=fake.url).encode_queries(["a"])


def test_openai_compatible_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    with FakeProvider("openai-compatible", require_key=False) as fake:
        enc = make_encoder("openai-compatible", "nomic-embed-text", base_url=fake.url)
        enc.encode_queries(["a"])
        assert "base_url" in enc.config()


def test_vertex_falls_back_to_application_default_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $VERTEX_ACCESS_TOKEN, google-auth's default credentials supply (and refresh) the token."""
    monkeypatch.delenv("VERTEX_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)

    credentials = _install_fake_google_auth(monkeypatch)
    with FakeProvider("vertex") as fake:
        enc = make_encoder("vertex", base_url=fake.url, retry=FAST_RETRY)
        assert enc.project == "adc-project"
        enc.encode_queries(["a"])
        enc.encode_corpus(["b"])
    assert credentials.refreshes == 1


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(EncoderError, match="AZURE_OPENAI_ENDPOINT"):
        make_encoder("azure-openai", "dep", api_key="k")
    with pytest.raises(EncoderError, match="no endpoint; pass base_url"):
        make_encoder("openai-compatible", "m")
    with pytest.raises(ValueError, match="model"):
        make_encoder("openai-compatible", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EncoderError, match="GOOGLE_CLOUD_PROJECT"):
        make_encoder("vertex", api_key="token")
    with pytest.raises(ValueError, match="dimensions does not apply"):
        make_encoder("sentence-transformers", dimensions=64)
    with pytest.raises(ValueError, match="base_url, dimensions do not apply"):
        make_encoder("sentence-transformers", base_url="http://127.0.0.1:9/v1", dimensions=64)


def test_local_provider_builds_lazily() -> None:
    from search_adaptor.encoders.local import DEFAULT_MODEL

    enc = make_encoder("sentence-transformers", batch_size=8)
    assert enc.model == DEFAULT_MODEL and enc.batch_size == 8


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/no/such/folder", r"^/no/such/folder: no such model folder; give the folder of a sentence-"),
        ("./missing-model", r"^\./missing-model: no such model folder"),
        ("DATA", r": not a model folder \(no config.json or modules.json\); give the folder of a"),
        ("nobody/no-such-model", r"^nobody/no-such-model: not in the local Hugging Face cache, and HF_HUB"),
    ],
)
def test_a_local_model_that_cannot_be_found_is_named_with_the_fix(
    name: str, message: str, tmp_path, monkeypatch
) -> None:
    """Not transformers' "couldn't connect to huggingface.co" or "Unrecognized model": what is
    missing, and what to give instead; nothing is loaded."""
    from search_adaptor.encoders.local import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "corpus.jsonl").write_text("{}\n")  # a folder, but a dataset's
    with pytest.raises(EncoderError, match=message):
        resolve_model(str(tmp_path) if name == "DATA" else name)


def test_registry_import_is_light() -> None:
    code = (
        "import sys; from search_adaptor.encoders.registry import make_encoder; "
        "heavy = {'httpx', 'torch', 'sentence_transformers'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fingerprint_depends_on_what_changes_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_encoder("cohere", api_key="k1")
    assert (
        base.fingerprint == make_encoder("cohere", api_key="k2", max_concurrency=9, batch_size=5).fingerprint
    )
    assert base.fingerprint != make_encoder("cohere", api_key="k1", truncate="NONE").fingerprint
    assert base.fingerprint != make_encoder("cohere", api_key="k1", dimensions=256).fingerprint
    assert base.fingerprint != make_encoder("cohere", "embed-english-v3.0", api_key="k1").fingerprint


#: recorded config fields of the wrong type (``model`` [] or 0 was read as the default model)
WRONG_RECORDS = [
    ("model", 1.5),
    ("model", []),
    ("model", 0),
    ("base_url", ["http://127.0.0.1:9/v1"]),
    ("endpoint", 1),
    ("query_prompt", 0),
    ("document_prompt", False),
    ("truncate", {}),
    ("dimensions", "256"),
    ("dimensions", True),
    ("max_chars", 1.5),
    ("max_input_tokens", [512]),
    ("truncation", "yes"),
    ("auto_truncate", 1),
]


@pytest.mark.parametrize(("field", "value"), WRONG_RECORDS)
def test_a_recorded_option_of_the_wrong_type_is_refused_by_name(field: str, value: Any) -> None:
    """A record of an edited file reached the encoder's constructor as it was: a float model failed in
    ``Path(model)``, a string ``dimensions`` in ``dimensions <= 0``, as internal errors (TypeError);
    a loader puts the file's name before this line."""
    from search_adaptor.encoders.registry import info_problem

    info = make_encoder("cohere", api_key="k").info()
    info["config"][field] = value
    message = f"field 'config.{field}' must be "
    assert info_problem(info).startswith(message)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        from_info(info)


@pytest.mark.parametrize("provider", ["sentence-transformers", *PROVIDER_NAMES])
def test_every_provider_records_options_of_the_types_it_is_recreated_from(provider: str) -> None:
    """What each encoder writes passes the check its loaders make (null stands for an unset option)."""
    from search_adaptor.encoders.registry import info_problem

    remote = {} if provider == "sentence-transformers" else {"api_key": "k", "base_url": "http://127.0.0.1:9"}
    info = json.loads(json.dumps(make_encoder(provider, **remote, **required_options(provider)).info()))
    assert info_problem(info) is None
    unrecorded = {k: v for k, v in {**remote, **required_options(provider)}.items() if k != "model"}
    assert from_info(info, **unrecorded).fingerprint == info["fingerprint"]


# -- helpers ------------------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5", "retry-after-ms": "150"}) == pytest.approx(0.15)
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"Retry-After": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_plan_requests() -> None:
    assert plan_requests(["a"] * 5, 2, None) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    texts = ["x" * 30, "x" * 30, "x" * 300, "x"]  # 10, 10, 100, 1 estimated tokens
    assert plan_requests(texts, 10, 25) == [slice(0, 2), slice(2, 3), slice(3, 4)]
    assert plan_requests([], 10, 25) == []


def test_prepare_texts() -> None:
    assert prepare_texts(["", "abcdef"], 3) == [" ", "abc"]
    assert prepare_texts(["abcdef"], None) == ["abcdef"]


def test_retry_policy_backoff_is_full_jitter() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    delays = [policy.backoff(10) for _ in range(200)]
    assert all(0.0 <= d <= 5.0 for d in delays) and max(delays) > 2.5


# -- retry signals of the official SDKs -----------------------------------------------------------


@pytest.mark.parametrize(
    "hint",
    [{"retry_after": "0"}, {"retry_after": None, "retry_after_ms": "0"}, {"retry_after": "past"}],
    ids=["retry-after-0", "retry-after-ms-0", "a-date-past"],
)
def test_a_wait_of_zero_is_no_hint(
    hint: dict[str, str | None], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway's ``Retry-After: 0`` (or a date past, a clock skewed) replaced the backoff by no wait:
    a sustained 429 spent all 8 attempts within a second."""
    if hint.get("retry_after") == "past":
        hint = {"retry_after": email.utils.formatdate(time.time() - 30, usegmt=True)}
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, n: 0.01 * 2**n)
    caplog.set_level(logging.INFO)
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake)
        fake.schedule(Fault.rate_limited(**hint), Fault.rate_limited(**hint))
        np.testing.assert_allclose(enc.encode_queries(["a"]), fake.expected(["a"], "query"), atol=1e-6)
    waits = re.findall(r"retry \d/\d in ([\d.]+)s", caplog.text)
    assert waits == ["0.01", "0.02"], caplog.text


def test_409_and_x_should_retry_true_are_retried() -> None:
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake)
        fake.schedule(
            Fault.rejected(409, "lock timeout"), Fault.rejected(400, "try again", x_should_retry="true")
        )
        np.testing.assert_allclose(enc.encode_queries(["a"]), fake.expected(["a"], "query"), atol=1e-6)
        assert enc.retries == 2


def test_x_should_retry_false_is_obeyed() -> None:
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake)
        fake.schedule(Fault.rejected(503, "overloaded for this key", x_should_retry="false"))
        with pytest.raises(EncoderError, match=r"openai: HTTP 503 .*overloaded for this key.*not retried"):
            enc.encode_queries(["a"])
        assert len(fake.calls) == 1


@pytest.mark.parametrize("provider", ["cohere", "gemini"])
def test_server_wait_hints_in_headers_and_bodies_are_honoured(provider: str) -> None:
    """Cohere's x-ratelimit-reset (a Unix time) and Google's RetryInfo.retryDelay in a 429 body."""
    with FakeProvider(provider) as fake:
        enc = fake_encoder(fake)  # its own backoff is at most 0.02 s
        hint = (
            Fault.rate_limited_until(time.time() + 0.3)
            if provider == "cohere"
            else Fault.google_rate_limited("0.3s")
        )
        fake.schedule(hint)
        start = time.monotonic()
        enc.encode_queries(["a"])
        assert 0.25 <= time.monotonic() - start < 3 and enc.retries == 1


def test_wait_hint_parsers() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"x-ratelimit-reset": str(int(now) + 7)}, now=now) == pytest.approx(7.0)
    assert parse_retry_after({"x-ratelimit-reset": "2.5"}, now=now) == 2.5  # seconds, as some servers send
    assert parse_retry_after({"Retry-After": "1", "x-ratelimit-reset": "9"}) == 1.0
    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    assert retry_delay_in_body({"error": {"code": 429, "details": [{"@type": "x.Help"}, detail]}}) == 37.0
    assert retry_delay_in_body({"error": {"message": "no details"}}) is None
    assert retry_delay_in_body(None) is None


def test_timeouts_are_sized_to_the_request() -> None:
    assert (
        request_timeout(0) == 60.0 and request_timeout(300_000) == 360.0 and request_timeout(10**7) == 600.0
    )
    with FakeProvider("openai") as fake:
        assert fake_encoder(fake, timeout=None).timeout is None  # sized per request, unless one is given


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_retry_budget_bounds_a_failing_request() -> None:
    """A server using the encoder gives it a short budget: a failing provider costs seconds, not minutes."""
    with FakeProvider("voyage") as fake:
        enc = fake_encoder(
            fake, retry=RetryPolicy(max_attempts=50, base_delay=0.05, max_delay=0.1), retry_budget_s=0.5
        )
        assert enc._client.retry.budget_s == 0.5
        fake.schedule(*[Fault.server_error(503)] * 50)
        start = time.monotonic()
        with pytest.raises(
            EncoderError, match=r"voyage: giving up: the retry budget of 0.5s is spent.*HTTP 503"
        ):
            enc.encode_queries(["a"])
        assert time.monotonic() - start < 1.0
    with FakeProvider("voyage") as fake:
        enc = fake_encoder(fake, timeout=30.0, retry_budget_s=0.5)
        fake.schedule(Fault.slow(3.0))  # a hung reply is cut at what is left of the budget
        start = time.monotonic()
        with pytest.raises(
            EncoderError, match=r"voyage: giving up: the retry budget.*no reply within 0.5s \(timeout\)"
        ):
            enc.encode_queries(["b"])
        assert time.monotonic() - start < 1.0


# -- credentials and endpoints --------------------------------------------------------------------


def test_credentials_in_the_base_url_are_used_but_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password, key = "pw-SECRET-31337", "url-SECRET-key"
    with FakeProvider("openai-compatible", require_key=False) as fake:
        host = fake.url.removeprefix("http://")
        enc = fake_encoder(fake, base_url=f"http://proxy:{password}@{host}?key={key}&region=eu", api_key=None)
        enc.encode_queries(["a"])
        call = fake.calls[0]
        assert call.headers["authorization"].startswith("Basic ") and call.query == {
            "key": key,
            "region": "eu",
        }
        assert enc.config()["base_url"] == f"http://{host}?region=eu" == enc.base_url
        fake.schedule(Fault.rejected(404, "no such model"), Fault.server_error(500))
        with pytest.raises(EncoderError) as info:
            enc.encode_queries(["b"])
        enc.encode_queries(["c"])  # one retry, logged
    places = [repr(enc), enc.fingerprint, json.dumps(enc.config()), str(info.value), caplog.text]
    assert all(password not in p and key not in p for p in places)
    assert f"http://{host}/embeddings" in str(info.value)


def test_part_of_a_key_echoed_by_a_server_is_masked_too() -> None:
    """A proxy that answers 401 with part of the key (past the API's own ``sk-*****zzzz`` mask) had
    that part shown in the error line and the --debug trace."""
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake)
        fragment = fake.key[3:-4]  # "fake-SECRET-0123456789ab"
        fake.schedule(
            Fault.rejected(401, f"Incorrect API key provided: sk-*****{fake.key[-4:]} / raw={fragment}")
        )
        with pytest.raises(EncoderError) as info:
            enc.encode_queries(["a"])
    message = str(info.value)
    assert "Incorrect API key provided: sk-*****cdef / raw=***" in message
    assert not any(fake.key[i : i + 8] in message for i in range(len(fake.key) - 7))


@pytest.mark.parametrize(
    ("provider", "credential"), [("openai", "proxy:pw-SECRET-1@"), ("gemini", "?key=url-SECRET-2")]
)
def test_credentials_in_the_base_url_need_no_key_variable(
    provider: str, credential: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README says credentials in the API root authenticate the requests; a provider whose key
    is required still refused for want of $OPENAI_API_KEY / $GEMINI_API_KEY, which it then never
    sent. Without them in the URL the key is still required."""
    for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with FakeProvider(provider, require_key=False) as fake:
        if credential.startswith("?"):
            root = fake.url + credential
        else:
            root = fake.url.replace("http://", f"http://{credential}")
        enc = make_encoder(provider, base_url=root, retry=FAST_RETRY)
        assert enc.encode_queries(["a"]).shape[0] == 1
        sent = fake.calls[-1]
        if credential.startswith("?"):
            assert sent.query.get("key") == "url-SECRET-2"
        else:
            assert sent.headers["authorization"].startswith("Basic ")
        with pytest.raises(EncoderError, match="no API key found"):
            make_encoder(provider, base_url=fake.url)


def test_openai_reads_base_url_organization_and_project_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeProvider("openai") as fake:
        for var, value in [
            ("OPENAI_BASE_URL", fake.url),
            ("OPENAI_ORG_ID", "org-1"),
            ("OPENAI_PROJECT_ID", "proj-1"),
        ]:
            monkeypatch.setenv(var, value)
        make_encoder("openai", api_key=fake.key).encode_queries(["a"])
        headers = fake.calls[0].headers
        assert headers["openai-organization"] == "org-1" and headers["openai-project"] == "proj-1"
        assert fake.calls[0].body["encoding_format"] == "base64"


def test_azure_takes_an_entra_id_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", FAKE_KEY)
    monkeypatch.setenv("OPENAI_API_VERSION", "2025-01-01")
    with FakeProvider("azure-openai") as fake:
        make_encoder("azure-openai", "dep", base_url=fake.url).encode_queries(["a"])
        call = fake.calls[0]
        assert call.headers["authorization"] == f"Bearer {FAKE_KEY}" and "api-key" not in call.headers
        assert call.query == {"api-version": "2025-01-01"}


@pytest.mark.parametrize("slash", ["", "/"])
@pytest.mark.parametrize("via_env", [False, True])
def test_azure_v1_endpoint_posts_to_its_embeddings_with_the_deployment_as_model(
    monkeypatch: pytest.MonkeyPatch, slash: str, via_env: bool
) -> None:
    """The v1 root as the portal shows it: ``{endpoint}/embeddings``, no api-version (even with
    ``$OPENAI_API_VERSION`` set for the classic API), the deployment in the body; a key or an Entra
    ID token, as on the classic path."""
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    with FakeProvider("azure-openai") as fake:
        endpoint = f"{fake.url}/openai/v1{slash}"
        if via_env:
            monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", endpoint)
        options: dict[str, Any] = {} if via_env else {"base_url": endpoint}
        enc = make_encoder("azure-openai", "dep", api_key=fake.key, retry=FAST_RETRY, **options)
        got = enc.encode_queries(TEXTS)
        monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
        entra = make_encoder("azure-openai", "dep", azure_ad_token=fake.key, retry=FAST_RETRY, **options)
        entra.encode_queries(["a"])
    np.testing.assert_allclose(got, fake.expected(TEXTS, "query"), atol=1e-6)
    key_call, token_call = fake.calls
    assert [c.status for c in fake.calls] == [200, 200]
    assert key_call.path == token_call.path == "/openai/v1/embeddings"
    assert key_call.query == token_call.query == {}
    assert key_call.body["model"] == "dep" and key_call.headers["api-key"] == fake.key
    assert token_call.headers["authorization"] == f"Bearer {fake.key}" and "api-key" not in token_call.headers


def test_azure_fake_refuses_a_v1_root_with_the_classic_path_appended() -> None:
    """What the encoder sent for a v1 endpoint before it knew one: Azure answers 404."""
    with FakeProvider("azure-openai") as fake:
        enc = make_encoder("azure-openai", "dep", base_url=fake.url, api_key=fake.key, retry=FAST_RETRY)
        enc._client._endpoint = Endpoint.parse(f"{fake.url}/openai/v1")  # the old concatenation
        with pytest.raises(EncoderError, match="404"):
            enc.encode_queries(["a"])
    assert fake.calls[0].path == "/openai/v1/openai/deployments/dep/embeddings"


def test_azure_v1_endpoint_refuses_an_explicit_api_version() -> None:
    """The v1 API has no dated versions: an api_version asked for is refused, not dropped silently."""
    with pytest.raises(ValueError, match=r"api_version='2024-10-21' does not apply to a v1 endpoint") as info:
        make_encoder(
            "azure-openai",
            "dep",
            api_key="k",
            base_url="https://r.openai.azure.com/openai/v1/",
            api_version="2024-10-21",
        )
    assert "\n" not in str(info.value)


def test_azure_v1_and_classic_endpoints_share_one_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    """One deployment, the same vectors through either API: one fingerprint, so stores and indexes
    made through one path are used through the other; another resource is another space."""
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")  # from_info takes keys from the environment
    classic = make_encoder("azure-openai", "dep", api_key="k", base_url="https://r.openai.azure.com/")
    v1 = make_encoder("azure-openai", "dep", api_key="k", base_url="https://r.openai.azure.com/openai/v1/")
    other = make_encoder("azure-openai", "dep", api_key="k", base_url="https://s.openai.azure.com/openai/v1")
    assert v1.v1 and not classic.v1
    assert v1.config() == classic.config() and v1.fingerprint == classic.fingerprint
    assert other.fingerprint != classic.fingerprint
    served = from_info(classic.info(), base_url="https://r.openai.azure.com/openai/v1")
    assert served.fingerprint == classic.fingerprint and served.v1


def test_a_root_written_with_its_schemes_default_port_is_the_same_root() -> None:
    """``https://host:443/v1`` is ``https://host/v1``: one fingerprint, so the vectors stored under one
    spelling are not paid for again under the other; another port is another server."""
    prints = {
        url: make_encoder("openai-compatible", "m", api_key="k", base_url=url).fingerprint
        for url in (
            "https://x.example.com/v1",
            "https://x.example.com:443/v1/",
            "HTTPS://X.example.com:443/v1",
            "http://x.example.com/v1",
            "http://x.example.com:80/v1",
            "https://x.example.com:8443/v1",
            "http://x.example.com:443/v1",
        )
    }
    assert len(set(list(prints.values())[:3])) == 1 and len(set(list(prints.values())[3:5])) == 1
    assert len(set(prints.values())) == 4
    assert Endpoint.parse("https://x.example.com:443/v1?a=1").public == "https://x.example.com/v1?a=1"
    assert Endpoint.parse("http://127.0.0.1:8000/v1").public == "http://127.0.0.1:8000/v1"


def test_azure_asks_its_token_provider_for_a_token_on_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    asked: list[int] = []

    def token() -> str:
        asked.append(1)
        return FAKE_KEY

    with FakeProvider("azure-openai") as fake:
        enc = make_encoder("azure-openai", "dep", base_url=fake.url, azure_ad_token_provider=token)
        enc.encode_queries(["a"])
        enc.encode_queries(["b"])
        fake.schedule(Fault.rejected(401, "token expired"))
        with pytest.raises(EncoderError) as info:
            enc.encode_queries(["c"])
    assert len(asked) == 3 and all(c.headers["authorization"] == f"Bearer {FAKE_KEY}" for c in fake.calls)
    assert FAKE_KEY not in str(info.value) and "azure_ad_token_provider" in str(info.value)
    assert "api-key" not in fake.calls[0].headers


def test_openai_compatible_asks_for_floats() -> None:
    with FakeProvider("openai-compatible") as fake:
        fake_encoder(fake).encode_queries(["a"])
        assert fake.calls[0].body["encoding_format"] == "float"


def test_voyage_contextualized_models_are_refused_before_any_request() -> None:
    """voyage-context-3 went to /embeddings, which refuses it on every request, run after run: it
    embeds a document's chunks together, so it is refused in one line naming the models that fit."""
    with pytest.raises(ValueError, match=r"^voyage: voyage-context-3 embeds a document's chunks together"):
        make_encoder("voyage", "voyage-context-3", api_key="pa-abc")


def test_a_dry_run_names_the_atlas_root_an_atlas_key_would_use(monkeypatch) -> None:
    """`embed --dry-run` reads no key, and named api.voyageai.com for an Atlas key the run sends to
    ai.mongodb.com."""
    monkeypatch.setenv("VOYAGE_API_KEY", "al-abc")
    assert make_encoder("voyage", plan_only=True).base_url == "https://ai.mongodb.com/v1"
    monkeypatch.setenv("VOYAGE_API_KEY", "pa-abc")
    assert make_encoder("voyage", plan_only=True).base_url == "https://api.voyageai.com/v1"
    monkeypatch.delenv("VOYAGE_API_KEY")
    assert make_encoder("voyage", plan_only=True).base_url == "https://api.voyageai.com/v1"


def test_voyage_atlas_keys_go_to_the_atlas_endpoint() -> None:
    assert make_encoder("voyage", api_key="al-abc").base_url == "https://ai.mongodb.com/v1"
    assert make_encoder("voyage", api_key="pa-abc").base_url == "https://api.voyageai.com/v1"
    assert (
        make_encoder("voyage", api_key="al-abc").fingerprint
        == make_encoder("voyage", api_key="pa-x").fingerprint
    )


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("us-central1", "us-central1-aiplatform.googleapis.com"),
        ("global", "aiplatform.googleapis.com"),
        ("us", "aiplatform.us.rep.googleapis.com"),
        ("eu", "aiplatform.eu.rep.googleapis.com"),
    ],
)
def test_vertex_hosts(location: str, host: str) -> None:
    enc = make_encoder("vertex", api_key="token", project="p", location=location)
    assert enc.base_url == f"https://{host}/v1"


def test_gemini_embedding_2_on_vertex_uses_embed_content_and_task_prompts() -> None:
    with FakeProvider("vertex") as fake:
        enc = fake_encoder(fake, model="gemini-embedding-2-preview", dimensions=4)
        assert enc.batch_size == 1
        queries, docs = enc.encode_queries(["a", "b"]), enc.encode_corpus(["a"])
        sent = ["task: search result | query: a", "task: search result | query: b", "title: none | text: a"]
        assert fake.texts_sent() == sent
        expected = np.stack(
            [fake_vector(t, None, 4) for t in sent]
        )  # no task type: the prompt tells them apart
        np.testing.assert_allclose(np.vstack([queries, docs]), expected, atol=1e-6)
        call = fake.calls[0]
        assert call.path.endswith("/publishers/google/models/gemini-embedding-2-preview:embedContent")
        assert call.body == {
            "content": {"parts": [{"text": sent[0]}], "role": "user"},
            "embedContentConfig": {"autoTruncate": True, "outputDimensionality": 4},
        }
        assert (
            "task_types" not in enc.config()
            and enc.config()["query_prompt"] == "task: search result | query: "
        )


def test_gemini_embedding_2_on_the_gemini_api_sends_no_task_type() -> None:
    with FakeProvider("gemini") as fake:
        enc = fake_encoder(fake, model="gemini-embedding-2", query_prompt="")
        enc.encode_queries(["a"])
        assert fake.calls[0].body["requests"] == [
            {"content": {"parts": [{"text": "a"}], "role": "user"}, "model": "models/gemini-embedding-2"}
        ]
        assert enc.config()["max_input_tokens"] == 8192


def test_vertex_sends_the_quota_project_of_default_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VERTEX_ACCESS_TOKEN", raising=False)
    credentials = _install_fake_google_auth(monkeypatch, quota_project_id="billing-project")
    with FakeProvider("vertex") as fake:
        make_encoder("vertex", base_url=fake.url, retry=FAST_RETRY).encode_queries(["a"])
        assert fake.calls[0].headers["x-goog-user-project"] == "billing-project"
    assert credentials.refreshes == 1


def _install_fake_google_auth(monkeypatch: pytest.MonkeyPatch, quota_project_id: str | None = None) -> Any:
    """Stand-in google-auth modules whose default credentials hand out FAKE_KEY (and count refreshes)."""

    class Credentials:
        valid, token, refreshes = False, None, 0

        def refresh(self, request: object) -> None:
            self.refreshes += 1
            self.valid, self.token = True, FAKE_KEY

    credentials = Credentials()
    credentials.quota_project_id = quota_project_id  # type: ignore[attr-defined]
    modules = {name: ModuleType(name) for name in ("google", "google.auth", "google.auth.exceptions")}
    modules["google.auth.transport"] = ModuleType("google.auth.transport")
    modules["google.auth.transport.requests"] = ModuleType("google.auth.transport.requests")
    errors = modules["google.auth.exceptions"]
    errors.GoogleAuthError = type("GoogleAuthError", (Exception,), {})
    errors.DefaultCredentialsError = type("DefaultCredentialsError", (errors.GoogleAuthError,), {})
    modules["google.auth.transport.requests"].Request = object
    modules["google.auth.transport"].requests = modules["google.auth.transport.requests"]
    auth = modules["google.auth"]
    auth.default = lambda scopes: (credentials, "adc-project")
    auth.exceptions, auth.transport = errors, modules["google.auth.transport"]
    modules["google"].auth = auth
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return credentials


# -- cutting what no model can use ------------------------------------------------------------------


def test_cut_to_window_is_proven_by_the_tokenizer() -> None:
    def words(text: str) -> int:  # a whitespace tokenizer: one token per word
        return len(text.split())

    text = " ".join(f"w{i}" for i in range(10_000))
    cut = cut_to_window(text, 50, words)
    assert words(cut) >= 50 and len(cut) < 8 * 50 and text.startswith(cut)
    sparse = "a" + " " * 100_000 + "b c"  # 3 tokens: nothing may be cut
    assert cut_to_window(sparse, 50, words) == sparse
    assert cut_to_window("short", 50, words) == "short"


@pytest.mark.slow
def test_local_encoder_cuts_huge_texts_without_changing_their_embedding(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 4.6 MB one-line text took 10 s and 1.4 GB to embed, for a model that reads 256 tokens of it."""
    enc = make_encoder("sentence-transformers")
    st = enc._load()
    huge = " ".join(f"word{i % 977} lorem ipsum" for i in range(30_000))
    whitespace = "alpha" + " " * 100_000 + "beta gamma"  # three tokens: must be sent whole
    texts = [huge, whitespace, "a short text", huge[::-1]]
    start = time.monotonic()
    ours = enc.encode_corpus(texts)
    ours_s = time.monotonic() - start
    direct = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(ours, direct, atol=1e-6)
    assert ours_s < 5
    assert len([r for r in caplog.records if "cut before tokenizing" in r.message]) == 1


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_providers_that_truncate_get_texts_cut_only_where_nothing_is_lost() -> None:
    """Voyage keeps at most 32K tokens, and no token is longer than 128 characters: 50 MB need not go."""
    with FakeProvider("voyage") as fake:
        enc = fake_encoder(fake)
        enc.encode_batch(["x" * 5_000_000, "short"], "document")
        assert [len(t) for t in fake.texts_sent()] == [32_000 * LONGEST_TOKEN_CHARS, 5]
        assert "max_input_tokens" not in enc.config()  # the vectors do not change: same fingerprint as before
    with FakeProvider("cohere") as fake:
        fake_encoder(fake, truncate="START").encode_batch(["ab" * 9_000_000], "document")
        assert fake.calls[0].texts[0] == ("ab" * 9_000_000)[-128_000 * LONGEST_TOKEN_CHARS :]  # keeps the end
