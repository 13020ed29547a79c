"""The official ``openai`` client, given the server's base URL, gets the adapted vectors of /embed."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fake_providers import KEY_ENV, FakeProvider, Fault, fake_encoder
from search_adaptor.data import is_blank
from search_adaptor.index import AdaptedIndex, build_index
from search_adaptor.model import CompatibilityError
from test_crossmodel import WORDS, unlabelled_cross_adapter
from test_crossmodel import _write_beir as write_word_beir
from test_index import make_adapter
from test_server_batching import served
from test_store import CountingEncoder

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("openai")
import httpx
import openai
from fastapi.testclient import TestClient

from search_adaptor.server import Batcher, create_app

KEY = "s3cret-key"
TEXTS = ["vitamin D and bone fractures", "a second, longer text about something else entirely", ""]


@pytest.fixture(scope="module")
def server(synthetic) -> Iterator[str]:
    """The app on a free loopback port (a real HTTP server, as an OpenAI client meets it)."""
    enc = CountingEncoder(dim=16, nan_on="\x00 never sent")
    adapter = make_adapter(info=enc.info(), mode="separate")
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], enc.info(), encoder=enc)
    app = create_app(index, api_key=KEY, max_batch=4, model_name="scifact")
    with served(app) as url:
        yield url


def own_embed(url: str, texts: list[str], kind: str) -> np.ndarray:
    answer = httpx.post(
        f"{url}/embed", json={"queries": texts, "kind": kind}, headers={"Authorization": f"Bearer {KEY}"}
    )
    return np.asarray(answer.json()["embeddings"], dtype=np.float32)


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("encoding_format", ["base64", "float", None])
def test_openai_client_gets_the_vectors_of_embed(server, kind, encoding_format):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    options = {"encoding_format": encoding_format} if encoding_format else {}
    texts = TEXTS if kind == "document" else [*TEXTS[:2], "x"]  # an empty document, never a blank query
    answer = client.embeddings.create(model=f"scifact-{kind}", input=texts, **options)
    if encoding_format == "base64":  # asked for explicitly, the SDK hands the strings over as they came
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in answer.data])
    else:  # the SDK's default: it asks for base64 and decodes it
        got = np.asarray([d.embedding for d in answer.data], dtype=np.float32)
    assert np.array_equal(got, own_embed(server, texts, kind))  # bit for bit
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == f"scifact-{kind}"
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 0  # a local-style model bills nothing
    one = client.embeddings.create(model=f"scifact-{kind}", input=TEXTS[0], **options)
    assert one.data[0].embedding == answer.data[0].embedding


@pytest.mark.parametrize("mode", ["shared", "separate"])
@pytest.mark.parametrize("kind", ["query", "document"])
def test_dimensions_gives_a_trained_matryoshka_size_and_refuses_an_untrained_one(synthetic, kind, mode):
    """OpenAI's ``dimensions`` shortens the vectors; here to a size the adapter was trained at (the
    adapter's own prefix, as ``transform`` gives it), never to one whose quality was not measured."""
    enc = CountingEncoder(dim=16)
    adapter = make_adapter(info=enc.info(), mode=mode, dims=[4, 8])
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], enc.info(), encoder=enc)
    client = TestClient(create_app(index, api_key=KEY, model_name="m", batch_window_s=0.0))
    auth = {"Authorization": f"Bearer {KEY}"}

    def embeddings(**extra: Any) -> Any:
        body = {"model": f"m-{kind}", "input": TEXTS[:2], **extra}
        return client.post("/v1/embeddings", json=body, headers=auth)

    full = np.asarray([d["embedding"] for d in embeddings().json()["data"]], dtype=np.float32)
    base = enc.encode_queries(TEXTS[:2]) if kind == "query" else enc.encode_corpus(TEXTS[:2])
    transform = adapter.transform_queries if kind == "query" else adapter.transform_corpus
    for size in (4, 8, 16):
        got = np.asarray([d["embedding"] for d in embeddings(dimensions=size).json()["data"]], np.float32)
        assert got.shape == (2, size)
        np.testing.assert_allclose(got, transform(base, dim=size), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(got, full)
    for size, sizes in ((6, "4, 8, 16"), (17, "4, 8, 16")):
        refused = embeddings(dimensions=size)
        assert refused.status_code == 422
        assert refused.json()["error"]["param"] == "dimensions"
        assert refused.json()["error"]["message"] == f"dimensions = {size}: this model serves {sizes}"


@pytest.mark.parametrize(("size", "build"), [(8, "with index --dim 8"), (16, "without --dim")])
def test_dimensions_of_an_index_built_smaller_names_the_index_not_the_fit(synthetic, size, build):
    """An index built with --dim 4 from an adapter trained at 4 and 8 was asked for 8: the refusal said
    'fit --dims trains smaller sizes', though the adapter has it and only the index lacks it."""
    enc = CountingEncoder(dim=16)
    adapter = make_adapter(info=enc.info(), dims=[4, 8])
    index = AdaptedIndex.from_vectors(
        adapter, synthetic["dids"], synthetic["D"], enc.info(), encoder=enc, size=4
    )
    client = TestClient(create_app(index, api_key=KEY, model_name="m", batch_window_s=0.0))
    body = {"model": "m-query", "input": "x", "dimensions": size}
    refused = client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == (
        f"dimensions = {size}: this model serves 4 (the index was built with index --dim 4; an index built "
        f"{build} from the same adapter serves {size})"
    )


@pytest.mark.parametrize("text", ["❤️", "e\u0301", "\u0915\u093e", "?!", "42", "\u200fשלום\u200f", "東京"])
def test_a_short_query_of_any_script_is_not_blank(text):
    """Emoji with a variation selector, a letter with a combining accent, a Devanagari consonant with
    its vowel sign, punctuation, digits, RTL text in its marks: each says something."""
    assert not is_blank(text)


@pytest.mark.parametrize(
    "text", ["", "  ", "\u200b", "\x00", "\u00ad\ufeff", "\ufe0f", "\u0301\u034f", "\ue000"]
)
def test_a_blank_query_is_refused_by_every_endpoint_a_document_is_not(synthetic, text):
    """/search refused "" and "  " but took "\u200b" or "\x00" (embedded as "" is: ranked by nothing), and
    /embed and /v1/embeddings gave a blank query a vector."""
    enc = CountingEncoder(dim=16)
    index = AdaptedIndex.from_vectors(
        make_adapter(info=enc.info()), synthetic["dids"], synthetic["D"], enc.info(), encoder=enc
    )
    client = TestClient(create_app(index, api_key=KEY, model_name="m", batch_window_s=0.0))
    auth = {"Authorization": f"Bearer {KEY}"}
    for path, body, field in (
        ("/search", {"queries": ["ok", text]}, "queries[1]"),
        ("/embed", {"queries": ["ok", text]}, "queries[1]"),
        ("/v1/embeddings", {"model": "m-query", "input": ["ok", text]}, "input[1]"),
    ):
        refused = client.post(path, json=body, headers=auth)
        assert refused.status_code == 422, path
        assert f"{field}: the query is blank, and a blank query ranks documents" in refused.text, path
    assert (
        client.post("/embed", json={"queries": [text], "kind": "document"}, headers=auth).status_code == 200
    )
    document = {"model": "m-document", "input": [text]}
    assert client.post("/v1/embeddings", json=document, headers=auth).status_code == 200
    with pytest.raises(ValueError, match="query 0: the query is blank"):
        index.search([text])


def test_a_model_name_with_a_slash_is_served_under_v1_models(synthetic):
    """``serve --model-name org/model``: /v1/models listed org/model-query, and GET
    /v1/models/org/model-query (the OpenAI SDK's ``models.retrieve``) answered 404."""
    enc = CountingEncoder(dim=16)
    adapter = make_adapter(info=enc.info())
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], enc.info(), encoder=enc)
    client = TestClient(create_app(index, api_key=KEY, model_name="org/model", batch_window_s=0.0))
    auth = {"Authorization": f"Bearer {KEY}"}
    listed = [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert listed == ["org/model-query", "org/model-document"]
    for name in listed:
        card = client.get(f"/v1/models/{name}", headers=auth)
        assert card.status_code == 200 and card.json()["id"] == name
    assert client.get("/v1/models/org/other", headers=auth).json()["error"]["code"] == "model_not_found"


def test_models_list_the_two_sides(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["scifact-query", "scifact-document"]
    assert client.models.retrieve("scifact-query").owned_by == "search-adaptor"
    with pytest.raises(openai.NotFoundError, match="this server has scifact-query, scifact-document"):
        client.models.retrieve("gpt-4")


def test_openai_errors_are_what_the_sdk_expects(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError) as denied:
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="scifact-query", input="x"
        )
    assert denied.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.APIStatusError, match="5 texts in input; this server takes at most 4") as many:
        client.embeddings.create(model="scifact-query", input=["x"] * 5)
    assert many.value.status_code == 413 and many.value.body["param"] == "input"
    with pytest.raises(openai.UnprocessableEntityError, match="token ids are not accepted"):
        client.embeddings.create(model="scifact-query", input=[[101, 2023, 102]])
    with pytest.raises(
        openai.UnprocessableEntityError, match=r"this model serves 16 \(fit --dims trains smaller sizes\)"
    ) as narrower:
        client.embeddings.create(model="scifact-query", input="x", dimensions=8)
    assert narrower.value.body["param"] == "dimensions"  # was null: the field at fault is named, as OpenAI's


def test_an_unknown_v1_url_is_answered_as_openai_answers_it(server):
    """Only a model the server lacks is ``model_not_found``; an endpoint it lacks (chat, say, from a
    client pointed at it by mistake) was one too, sending its user looking for a model."""
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /v1/chat/completions\)") as chat:
        client.chat.completions.create(model="scifact-query", messages=[{"role": "user", "content": "hi"}])
    assert chat.value.body == {
        "message": "Invalid URL (POST /v1/chat/completions)",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    reply = httpx.get(f"{server}/v1/files", headers={"Authorization": f"Bearer {KEY}"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] is None
    assert reply.json()["error"]["message"] == "Invalid URL (GET /v1/files)"
    assert httpx.get(f"{server}/nowhere").json() == {"detail": "Not Found"}  # outside /v1: as before
    with pytest.raises(openai.NotFoundError) as card:
        client.models.retrieve("gpt-4")
    assert card.value.body["code"] == "model_not_found"


@pytest.fixture(params=["api documents", "api queries"])
def cross_model(request, tmp_path) -> Iterator[dict[str, Any]]:
    """A cross-model index whose one side is embedded by an API (a fake Cohere, billed per token, 3
    calls at once) and the other by a local model (nothing billed, one call at once; NaN for "boom")."""
    data = write_word_beir(tmp_path / "tiny", WORDS, n_docs=20, n_train=5, n_test=5)
    with FakeProvider("cohere", dim=8) as fake:
        api = fake_encoder(fake, max_concurrency=3)
        local = CountingEncoder(dim=16, batch_size=64, nan_on="boom")
        docs, queries = (api, local) if request.param == "api documents" else (local, api)
        _, adapter = unlabelled_cross_adapter(data, docs, queries, tmp_path / "cache")
        index, _ = build_index(
            data, docs, adapter, tmp_path / "index", cache_dir=tmp_path / "cache", query_encoder=queries
        )
        local.calls.clear()
        fake.calls.clear()
        api_side = "document" if request.param == "api documents" else "query"
        local_side = "query" if api_side == "document" else "document"
        yield {
            "index": index,
            "fake": fake,
            "api": api,
            "local": local,
            "api_side": api_side,
            "local_side": local_side,
            "folder": tmp_path / "index",
        }


def test_a_cross_model_index_reports_the_tokens_the_model_of_the_side_bills(cross_model):
    """``usage`` is what the model that embedded the request bills: the query model's estimate was
    reported for documents a local model embedded (and 0 for documents an API embedded)."""
    w = cross_model
    client = TestClient(create_app(w["index"], retry_budget_s=None, batch_window_s=0.0))
    text = "w1 w2 w3 " * 40
    billed = w["api"].request_tokens([text], w["api_side"])
    assert billed > 0
    for side, tokens in ((w["api_side"], billed), (w["local_side"], 0)):
        reply = client.post("/v1/embeddings", json={"input": [text], "model": f"search-adaptor-{side}"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}, side


def test_a_cross_model_index_names_the_provider_of_the_side_that_failed(cross_model):
    """A 502 names the provider that failed, not the query model's whichever side failed."""
    w = cross_model
    client = TestClient(create_app(w["index"], retry_budget_s=None, batch_window_s=0.0))
    failing = client.post("/embed", json={"queries": ["boom"], "kind": w["local_side"]})
    assert failing.status_code == 502
    assert failing.json() == {"detail": "the embedding provider fake failed; the server log has the details"}
    w["fake"].schedule(*[Fault.server_error(500)] * 10)  # more than the fast retries' attempts
    failing = client.post("/embed", json={"queries": ["w1"], "kind": w["api_side"]})
    assert failing.status_code == 502
    assert failing.json() == {
        "detail": "the embedding provider cohere failed; the server log has the details"
    }


def test_a_cross_model_index_loads_its_local_model_at_start_and_names_both(cross_model):
    """The local model loads at start-up whichever side it embeds (a local documents' model loaded on
    the first document request); the API is never called to warm up (it bills); the app's description
    names both models, not the query model alone."""
    w = cross_model
    app = create_app(w["index"], retry_budget_s=None, batch_window_s=0.0)  # None: keeps the fake's root
    assert w["local"].calls == [("warm-up",)] and w["fake"].calls == []
    assert f"embedded by {w['index'].encoder.model}, queries by {w['index'].query_encoder.model}" in (
        app.description
    )


def test_a_cross_model_index_batches_each_model_with_its_own_workers(cross_model):
    """Each model runs as many calls at once as it takes: one count for both held an API query model
    to a local documents' model's one call (or let a local model's batches split across an API's)."""
    w = cross_model
    batcher = Batcher(w["index"], max_texts=8, window_s=0.0, max_pending=8)
    assert batcher.workers == {w["api_side"]: 3, w["local_side"]: 1}


def test_one_model_for_both_sides_shares_its_workers(synthetic):
    """Without a query model both sides share one model's calls: two lanes would run twice its
    ``max_concurrency`` against an API's connection pool."""
    enc = CountingEncoder(dim=16, max_concurrency=3)
    index = AdaptedIndex.from_vectors(
        make_adapter(info=enc.info()), synthetic["dids"], synthetic["D"], enc.info(), encoder=enc
    )
    batcher = Batcher(index, max_texts=8, window_s=0.0, max_pending=8)
    assert batcher.workers == {"query": 3, "document": 3}
    assert batcher._lanes["query"] is batcher._lanes["document"]  # one count of calls in flight


def test_a_cross_model_index_embeds_each_side_by_its_own_model(cross_model):
    """One public rule for the model of a side (the server had a copy of the index's private one)."""
    w = cross_model
    assert w["index"].encoder_for(w["api_side"]) is w["api"]
    assert w["index"].encoder_for(w["local_side"]) is w["local"]


def test_an_api_model_given_to_the_index_keeps_its_key_and_root(cross_model, monkeypatch):
    """The server's retry budget recreated an API query model given to ``build_index`` from the
    manifest, without its key and root ("cohere: no API key found"); a documents' model given was kept.
    Both are now kept as made, and a root for one given is refused as for the documents' model."""
    w = cross_model
    monkeypatch.delenv(KEY_ENV["cohere"], raising=False)  # the key is the given model's alone
    client = TestClient(create_app(w["index"], batch_window_s=0.0))  # the default retry budget
    reply = client.post("/embed", json={"queries": ["w1 w2"], "kind": w["api_side"]})
    assert reply.status_code == 200, reply.text
    assert [call.texts for call in w["fake"].calls] == [["w1 w2"]]
    assert w["index"].encoder_for(w["api_side"]) is w["api"]
    root = {"base_url" if w["api_side"] == "document" else "query_base_url": "http://127.0.0.1:9"}
    side = "an encoder" if w["api_side"] == "document" else "a query encoder"
    with pytest.raises(ValueError, match=rf"^API root http://127\.0\.0\.1:9: {side} was given to this index"):
        w["index"].configure_encoder(**root)


def test_models_given_to_load_are_kept_for_their_sides(cross_model, monkeypatch):
    """``load`` takes a cross-model index's query model as it takes the documents' (fingerprint checked),
    and the server keeps both as made."""
    w = cross_model
    monkeypatch.delenv(KEY_ENV["cohere"], raising=False)
    docs, queries = (w["api"], w["local"]) if w["api_side"] == "document" else (w["local"], w["api"])
    index = AdaptedIndex.load(w["folder"], encoder=docs, query_encoder=queries)
    client = TestClient(create_app(index, batch_window_s=0.0))
    reply = client.post("/search", json={"queries": ["w1 w2"], "k": 2})
    assert reply.status_code == 200, reply.text
    assert index.encoder_for("query") is queries and index.encoder_for("document") is docs
    with pytest.raises(
        CompatibilityError,
        match=r"index/manifest\.json: the index embeds queries with .* but the query encoder given is",
    ):
        AdaptedIndex.load(w["folder"], encoder=docs, query_encoder=docs)
