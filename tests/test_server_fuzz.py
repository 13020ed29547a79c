"""Every malformed body a client can send gets a 4xx that the endpoint's OpenAPI schema lists, never a 500.

Hypothesis sends valid bodies with one field replaced, dropped or added, arbitrary JSON documents
(NaN, huge numbers, lone surrogates, deep nesting), bytes that are not UTF-8, and wrong content types
to every POST endpoint.
"""

from __future__ import annotations

import json

import pytest

from search_adaptor.index import AdaptedIndex
from test_index import make_adapter
from test_store import CountingEncoder

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("hypothesis")
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from search_adaptor.server import create_app

pytestmark = pytest.mark.slow  # fuzzing: hypothesis-generated request bodies (CI runs it)

VALID = {
    "/search": {"queries": ["a query", "another"], "k": 3},
    "/embed": {"queries": ["a text"], "kind": "document"},
    "/v1/embeddings": {"input": ["a text"], "model": "search-adaptor-query", "encoding_format": "base64"},
}
TEXTS = {"/search": "queries", "/embed": "queries", "/v1/embeddings": "input"}  # each body's texts
FIELDS = sorted({name for body in VALID.values() for name in body} | {"dimensions", "user"})

characters = st.characters() | st.integers(0xD800, 0xDFFF).map(chr)  # lone surrogates too
texts = st.text(characters, max_size=60)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
    | st.sampled_from(["query", "document", "float", "base64", "search-adaptor-document", ""])
)
keys = st.sampled_from(FIELDS) | texts
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn, path: str) -> bytes:
    """A request body for ``path``: a valid one broken in one place, any JSON, or not JSON at all."""
    shape = draw(st.sampled_from(["replace", "drop", "add", "document", "bytes", "nested"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "nested":
        depth = draw(st.integers(1, 5000))
        return b"[" * depth + b"]" * draw(st.integers(0, depth))
    body = dict(VALID[path])
    if shape == "replace":
        body[draw(st.sampled_from(sorted(body)))] = draw(values)
    elif shape == "drop":
        del body[draw(st.sampled_from(sorted(body)))]
    elif shape == "add":
        body[draw(keys)] = draw(values)
    else:
        body = draw(values)
    text = json.dumps(body, allow_nan=True, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate sent raw is not UTF-8


@pytest.fixture(scope="module")
def app(synthetic):
    encoder = CountingEncoder(dim=16, batch_size=64)
    info = encoder.info()
    adapter = make_adapter(info=info)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], info, encoder=encoder)
    return create_app(index, max_batch=8, max_k=20, max_chars=40, batch_window_s=0.0)


@pytest.mark.parametrize("path", sorted(VALID))
def test_malformed_bodies_get_a_declared_4xx_never_500(app, path):
    client = TestClient(app)
    declared = set(client.get("/openapi.json").json()["paths"][path]["post"]["responses"])
    assert client.post(path, json=VALID[path]).status_code == 200

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies(path), content_type=st.sampled_from(["application/json", "text/plain", None]))
    # an extra field whose name is a line break: the error names it, escaped (hypothesis found it)
    @example(body=json.dumps({**VALID[path], "\n": None}).encode(), content_type="application/json")
    # an empty text: the fake encoder once answered it with NaN, a 502 that hypothesis found now and then
    @example(body=json.dumps({**VALID[path], TEXTS[path]: [""]}).encode(), content_type="application/json")
    def check(body: bytes, content_type: str | None) -> None:
        headers = {"content-type": content_type} if content_type else {}
        answer = client.post(path, content=body, headers=headers)
        assert answer.status_code < 500, (answer.status_code, answer.text)
        assert str(answer.status_code) in declared, (answer.status_code, answer.text)
        error = answer.json()
        if answer.status_code >= 400:  # one line, in the endpoint's error format
            message = error["error"]["message"] if path.startswith("/v1/") else error["detail"]
            assert isinstance(message, str) and "\n" not in message

    check()
