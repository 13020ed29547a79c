"""The official ``openai`` client, given the server's base URL, gets the adapted vectors of /embed."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from search_adaptor.index import AdaptedIndex
from test_index import make_adapter
from test_store import CountingEncoder

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("openai")
import httpx
import openai
import uvicorn

from search_adaptor.server import create_app

KEY = "s3cret-key"
TEXTS = ["vitamin D and bone fractures", "a second, longer text about something else entirely", ""]


@pytest.fixture(scope="module")
def server(synthetic) -> Iterator[str]:
    """The app on a free loopback port (a real HTTP server, as an OpenAI client meets it)."""
    enc = CountingEncoder(dim=16, nan_on="\x00 never sent")
    adapter = make_adapter(info=enc.info(), mode="separate")
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], enc.info(), encoder=enc)
    app = create_app(index, api_key=KEY, max_batch=4, model_name="scifact")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the test server did not start"
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


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
    answer = client.embeddings.create(model=f"scifact-{kind}", input=TEXTS, **options)
    if encoding_format == "base64":  # asked for explicitly, the SDK hands the strings over as they came
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in answer.data])
    else:  # the SDK's default: it asks for base64 and decodes it
        got = np.asarray([d.embedding for d in answer.data], dtype=np.float32)
    assert np.array_equal(got, own_embed(server, TEXTS, kind))  # bit for bit
    assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == f"scifact-{kind}"
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 0  # a local-style model bills nothing
    one = client.embeddings.create(model=f"scifact-{kind}", input=TEXTS[0], **options)
    assert one.data[0].embedding == answer.data[0].embedding


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
    with pytest.raises(openai.UnprocessableEntityError, match="this model's vectors have 16"):
        client.embeddings.create(model="scifact-query", input="x", dimensions=8)
