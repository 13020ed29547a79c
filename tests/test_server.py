"""The HTTP server: the same answers as the index, keys enforced, every limit a clear 4xx."""

from __future__ import annotations

import numpy as np
import pytest

from search_adaptor.cli import main
from search_adaptor.index import AdaptedIndex
from test_index import make_adapter
from test_store import CountingEncoder

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
from fastapi.testclient import TestClient

from search_adaptor.server import create_app

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def index(synthetic) -> AdaptedIndex:
    enc = CountingEncoder(dim=16, nan_on="make it fail")
    info = enc.info()
    adapter = make_adapter(info=info, mode="separate")
    return AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], info, encoder=enc)


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    return TestClient(create_app(index, max_batch=4, max_k=20, max_chars=50))


def test_search_and_embed_answer_what_the_index_answers(client, index):
    queries = ["first query", "second one"]
    body = client.post("/search", json={"queries": queries, "k": 5}).json()
    expected = index.search(queries, k=5)
    assert [[h["id"] for h in row] for row in body["results"]] == [[d for d, _ in row] for row in expected]
    assert np.allclose(
        [[h["score"] for h in row] for row in body["results"]], [[s for _, s in row] for row in expected]
    )
    emb = client.post("/embed", json={"queries": queries}).json()
    assert emb["dim"] == 16 and np.allclose(emb["embeddings"], index.embed_queries(queries), atol=1e-6)
    assert len(client.post("/search", json={"queries": ["x"]}).json()["results"][0]) == 10  # default k
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "n_docs": 300,
        "dim": 16,
        "backend": "flat",
        "mode": "separate",
        "model": "fake-model",
    }


def test_limits_are_4xx_with_a_message(client):
    too_many = client.post("/search", json={"queries": ["a"] * 5})
    assert too_many.status_code == 413 and "at most 4" in too_many.json()["detail"]
    too_long = client.post("/search", json={"queries": ["ok", "x" * 51]})
    assert too_long.status_code == 413 and "queries[1] has 51 characters" in too_long.json()["detail"]
    big_k = client.post("/search", json={"queries": ["a"], "k": 21})
    assert big_k.status_code == 422 and "limit of 20" in big_k.json()["detail"]
    assert client.post("/search", json={"queries": ["a"], "k": 0}).status_code == 422
    assert client.post("/search", json={"queries": []}).status_code == 422
    assert client.post("/embed", json={"queries": "not a list"}).status_code == 422
    huge = b'{"queries": ["' + b"y" * 5000 + b'"]}'
    declared = client.post("/search", content=huge, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "request body over" in declared.json()["detail"]
    chunked = client.post(
        "/search", content=iter([huge[:100], huge[100:]]), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    failing = client.post("/embed", json={"queries": ["make it fail"]})
    assert failing.status_code == 502 and "NaN or inf" in failing.json()["detail"]


def test_api_key_is_required_when_set(index):
    client = TestClient(create_app(index, api_key=KEY))
    body = {"queries": ["q"], "k": 3}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for path in ("/search", "/embed"):
            answer = client.post(path, json=body, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
    ok = client.post("/search", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and len(ok.json()["results"][0]) == 3
    assert client.get("/health").status_code == 200  # probes need no key
    schema = client.get("/openapi.json").json()
    assert {"/search", "/embed", "/health"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_serve_refuses_an_empty_key_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert main(["serve", str(tmp_path), "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert "--api-key-env NO_SUCH_KEY_VAR: that environment variable is empty" in capsys.readouterr().err
