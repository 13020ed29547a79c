"""The HTTP server: the same answers as the index, keys enforced, every limit a clear 4xx in the schema."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search_adaptor.cli import main
from search_adaptor.encoders.base import InputsRejected
from search_adaptor.index import AdaptedIndex
from test_index import make_adapter
from test_store import CountingEncoder, StaticLikeEncoder

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
from fastapi.testclient import TestClient

from fake_providers import KEY_ENV, FakeProvider, Fault, fake_encoder
from search_adaptor.server import create_app

KEY = "s3cret-key"
LIMITS = {"max_batch": 4, "max_k": 20, "max_chars": 50}


@pytest.fixture(scope="module")
def index(synthetic) -> AdaptedIndex:
    enc = CountingEncoder(dim=16, nan_on="make it fail")
    info = enc.info()
    adapter = make_adapter(info=info, mode="separate")
    return AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], info, encoder=enc)


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    return TestClient(create_app(index, **LIMITS, batch_window_s=0.0))


def test_search_and_embed_answer_what_the_index_answers(client, index):
    queries = ["first query", "second one"]
    body = client.post("/search", json={"queries": queries, "k": 5}).json()
    expected = index.search(queries, k=5)
    assert body["results"] == [[{"id": d, "score": s} for d, s in row] for row in expected]
    emb = client.post("/embed", json={"queries": queries}).json()
    assert emb["dim"] == 16 and np.array_equal(np.float32(emb["embeddings"]), index.embed_queries(queries))
    docs = client.post("/embed", json={"queries": queries, "kind": "document"}).json()["embeddings"]
    assert np.array_equal(np.float32(docs), index.embed(queries, "document"))
    assert not np.allclose(docs, emb["embeddings"])  # a separate adapter: the two sides differ
    assert len(client.post("/search", json={"queries": ["x"]}).json()["results"][0]) == 10  # default k
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "n_docs": 300,
        "dim": 16,
        "backend": "flat",
        "mode": "separate",
        "model": "fake-model",
        "query_model": "fake-model",
    }


def test_health_names_the_fitted_mode_not_one_set_after_the_fit(synthetic):
    """/health said the mode set_params had set after the fit (for the next fit), not the one the
    served vectors were adapted with."""
    encoder = CountingEncoder(dim=16)
    info = encoder.info()
    adapter = make_adapter(info=info, mode="separate")
    adapter.set_params(mode="shared")
    served = AdaptedIndex.from_vectors(
        adapter, synthetic["dids"][:20], synthetic["D"][:20], info, encoder=encoder
    )
    assert TestClient(create_app(served, batch_window_s=0.0)).get("/health").json()["mode"] == "separate"


def test_limits_are_4xx_with_a_message(client, caplog):
    too_many = client.post("/search", json={"queries": ["a"] * 5})
    assert too_many.status_code == 413 and "5 texts in queries; this server takes at most 4" in too_many.text
    too_long = client.post("/search", json={"queries": ["ok", "x" * 51]})
    assert too_long.status_code == 413 and "queries[1] has 51 characters" in too_long.json()["detail"]
    big_k = client.post("/search", json={"queries": ["a"], "k": 21})
    assert big_k.status_code == 422
    assert big_k.json() == {"detail": "k = 21 is above this server's limit of 20"}
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
    assert failing.status_code == 502
    assert failing.json() == {"detail": "the embedding provider fake failed; the server log has the details"}
    assert "NaN or inf" in caplog.text  # the operator sees why


# Issue 14.7: each of these was a 500 (or accepted) before.
MALFORMED = [
    (b'{"queries": ["a"], "k": NaN}', 422, "k: Input should be a valid integer"),
    (b'{"queries": ["a"], "k": Infinity}', 422, "k: Input should be a valid integer"),
    (b'{"queries": ["a"], "k": "5"}', 422, "k: Input should be a valid integer"),
    (b'{"queries": ["a"], "k": true}', 422, "k: Input should be a valid integer"),
    (b'{"queries": ["a"], "k": 5.0}', 422, "k: Input should be a valid integer"),
    (b'{"queries": ["a"], "k": 1' + b"0" * 5000 + b"}", 400, "body: a number has over 4300 digits"),
    (b'{"queries": ["ok", "\\ud800 lone"]}', 422, "queries[1]: not valid Unicode (a lone surrogate)"),
    (b'{"queries": ["\\udfff"], "k": NaN}', 422, "(and 1 more error)"),
    (b'{"query": "vitamin D", "k": 3}', 422, "queries: Field required; unknown field query sent instead"),
    (b'{"queries": [1]}', 422, "queries[0]: Input should be a valid string"),
    (b'{"queries": ["ok", "  "]}', 422, "queries[1]: the query is blank, and a blank query ranks documents"),
    (b'{"queries": ["a"], "top_k": 3}', 422, "top_k: Extra inputs are not permitted"),
    (b'["a"]', 422, "body: Input should be a valid dictionary"),
    (b"null", 422, "body: Input should be a valid dictionary"),
    (b'{"queries": ["a"', 400, "body: not valid JSON at character 16: Expecting ',' delimiter"),
    (b'{"queries": ["\xff\xfe"]}', 400, "body is not UTF-8 (byte 14 cannot be decoded)"),
    (b"[" * 100000 + b"]" * 100000, 400, "body: JSON nested too deeply to parse"),
]


@pytest.fixture(scope="module")
def roomy(index) -> TestClient:
    """A server with the default limits (room for long malformed bodies)."""
    return TestClient(create_app(index, batch_window_s=0.0))


@pytest.mark.parametrize(("body", "status", "message"), MALFORMED)
def test_malformed_bodies_are_4xx_with_a_message_never_500(roomy, body, status, message):
    answer = roomy.post("/search", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]


# Each of these was vague: "There was an error parsing the body", "[9]: JSON decode error" (422; under /v1
# with param "[9]") or "body: Input should be a valid dictionary or object to extract fields from" (422).
UNTYPED = "body was not sent as JSON; send the header Content-Type: application/json"
NOT_JSON = [
    (
        b'{"input": "caf\xe9"}',
        "application/json",
        "body is not UTF-8 (byte 14 cannot be decoded); send JSON encoded as UTF-8",
    ),
    (b'{"input":', "application/json", "body: not valid JSON at character 9: Expecting value"),
    (b"", "application/json", "body is empty; send a JSON object of the documented fields"),
    (b'{"input": "x"}', "text/plain", UNTYPED),
    (b'{"input": "x"}', None, UNTYPED),
    # json.loads reads UTF-16 and UTF-32 too: they were answered as if UTF-8
    (
        '{"input": "x"}'.encode("utf-16-le"),
        "application/json",
        "body is UTF-16-LE, not UTF-8; send JSON encoded as UTF-8",
    ),
    (
        '{"input": "x"}'.encode("utf-16"),
        "application/json",
        "body is UTF-16, not UTF-8; send JSON encoded as UTF-8",
    ),
    (
        '{"input": "x"}'.encode("utf-32-be"),
        "application/json",
        "body is UTF-32-BE, not UTF-8; send JSON encoded as UTF-8",
    ),
]


def test_a_body_within_the_text_limits_fits_the_body_limit_however_json_escapes_it(index):
    """``json.dumps`` writes an emoji as a 12-byte surrogate pair: the most texts of the most
    characters each were refused 413 for a body cap sized for 6 bytes a character; a UTF-8 BOM, which
    JSON readers may ignore, is taken."""
    client = TestClient(create_app(index, batch_window_s=0.0, max_batch=3, max_chars=200))
    body = json.dumps({"queries": ["\U0001f600" * 200] * 3, "k": 1}).encode()
    assert len(body) > 3 * (6 * 200 + 8) + 1024  # the cap before
    answer = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    bom = client.post("/search", content=b"\xef\xbb\xbf" + body, headers={"content-type": "application/json"})
    assert bom.status_code == 200 and bom.json() == answer.json()
    over = json.dumps({"queries": ["\U0001f600" * 201] * 3, "k": 1}).encode()
    too_long = client.post("/search", content=over, headers={"content-type": "application/json"})
    assert too_long.status_code == 413 and "201 characters; this server takes at most 200" in too_long.text


@pytest.mark.parametrize(("body", "content_type", "message"), NOT_JSON)
@pytest.mark.parametrize("path", ["/embed", "/v1/embeddings"])
def test_a_body_that_is_not_json_is_400_saying_why_in_the_endpoints_format(
    roomy, path, body, content_type, message
):
    answer = roomy.post(path, content=body, headers={"content-type": content_type} if content_type else {})
    assert answer.status_code == 400, answer.text
    if path.startswith("/v1/"):  # OpenAI's shape; no parameter to blame
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
        assert answer.json() == {"error": error}
    else:
        assert answer.json() == {"detail": message}


def test_a_query_the_model_gives_a_zero_vector_is_refused_by_name(synthetic):
    """A zero vector ranks by nothing; adapted, it became one vector shared by every such query."""
    enc = StaticLikeEncoder(dim=16)
    index = AdaptedIndex.from_vectors(
        make_adapter(info=enc.info(), mode="separate"),
        synthetic["dids"],
        synthetic["D"],
        enc.info(),
        encoder=enc,
    )
    client = TestClient(create_app(index, batch_window_s=0.0))
    answer = client.post("/search", json={"queries": ["fine", "zzz qqq"], "k": 3})
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "queries[1] cannot be embedded: the model gives it a zero vector (it knows none of its tokens), "
        "which ranks by nothing"
    )
    assert client.post("/search", json={"queries": ["fine"], "k": 3}).status_code == 200
    v1 = client.post("/v1/embeddings", json={"input": ["fine", "zzz qqq"], "model": "search-adaptor-query"})
    assert v1.status_code == 422 and v1.json()["error"]["param"] == "input[1]"  # named, as a 413's is
    with pytest.raises(InputsRejected, match=r"fake: 1 of 2 texts cannot be embedded.*text 0 .*zero vector"):
        index.search(["zzz", "fine"])
    zero = np.zeros((2, 16), np.float32)  # base vectors given directly: zero stays zero, as unadapted
    zero[1, 0] = 1.0
    adapted = index.adapter.transform_queries(zero)
    assert not adapted[0].any() and np.linalg.norm(adapted[1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="row 0 is all zeros: it has no direction to rank by"):
        index.search(zero, k=2)  # searched, it ranked every document at 0: by nothing, as its text


def test_a_failing_provider_costs_the_retry_budget_and_names_only_the_provider(synthetic, monkeypatch):
    """Issue 14.8: with a failing provider a request hung ~80 s, then showed the URL and env names."""
    with FakeProvider("openai") as fake:
        info = fake_encoder(fake).info()
        index = AdaptedIndex.from_vectors(make_adapter(8, info=info), ["d0", "d1"], np.eye(2, 8), info)
        monkeypatch.setenv(KEY_ENV["openai"], fake.key)
        # the manifest keeps no endpoint of the openai provider: the server finds it as fit did
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        client = TestClient(create_app(index, retry_budget_s=0.5))  # the encoder comes from the manifest
        fake.schedule(*[Fault.server_error(503)] * 100)
        start = time.monotonic()
        answer = client.post("/search", json={"queries": ["q"]})
        elapsed = time.monotonic() - start
    assert fake.calls, "the request never reached the failing provider"
    assert answer.status_code == 502 and elapsed < 3.0
    assert answer.json() == {"detail": "the embedding provider openai failed; the server log has the details"}


def test_api_key_is_required_when_set(index):
    client = TestClient(create_app(index, api_key=KEY))
    body = {"queries": ["q"], "k": 3}
    calls = [("post", "/search", body), ("post", "/embed", body), ("get", "/v1/models", None)]
    calls.append(("post", "/v1/embeddings", {"input": "q", "model": "search-adaptor-query"}))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        for method, path, json_body in calls:
            answer = client.request(method, path, json=json_body, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.headers["www-authenticate"] == "Bearer"
    ok = client.post("/search", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and len(ok.json()["results"][0]) == 3
    assert client.get("/health").status_code == 200  # probes need no key
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/search", "/embed", "/health", "/v1/embeddings", "/v1/models"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "401" in schema["paths"]["/search"]["post"]["responses"]


def test_the_schema_declares_every_limit_and_status(client):
    """Issue 18: generated clients read the limits and statuses from /openapi.json."""
    schema = client.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    for name in ("SearchRequest", "EmbedRequest"):
        queries = parts[name]["properties"]["queries"]
        assert (queries["minItems"], queries["maxItems"], queries["items"]["maxLength"]) == (1, 4, 50)
        assert parts[name]["additionalProperties"] is False
    assert parts["SearchRequest"]["properties"]["k"] | {"description": ""} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 20,
        "default": 10,
        "title": "K",
        "description": "",
    }
    text, texts = parts["EmbeddingsRequest"]["properties"]["input"]["anyOf"]
    assert text["maxLength"] == texts["items"]["maxLength"] == 50 and texts["maxItems"] == 4
    for path in ("/search", "/embed", "/v1/embeddings"):
        statuses = set(schema["paths"][path]["post"]["responses"])
        assert {"200", "400", "413", "422", "502", "503"} <= statuses and "401" not in statuses  # no key set
    assert "404" in schema["paths"]["/v1/embeddings"]["post"]["responses"]
    # ... and the server enforces exactly those numbers
    ok = {"queries": ["x" * 50] * 4, "k": 20}
    assert client.post("/search", json=ok).status_code == 200
    assert client.post("/search", json={**ok, "k": 21}).status_code == 422
    assert client.post("/search", json={**ok, "queries": ["x" * 51]}).status_code == 413
    assert client.post("/search", json={**ok, "queries": ["x"] * 5}).status_code == 413


def test_docs_load_without_a_cdn(client):
    """Issue 14.14: /docs and /redoc fetch their scripts and styles from this server."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            answer = client.get(asset)
            assert answer.status_code == 200 and len(answer.content) > 1000, asset
    assert "cdn" not in client.get("/docs").text.lower()


def test_serve_refuses_an_empty_key_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    assert main(["serve", str(tmp_path), "--api-key-env", "NO_SUCH_KEY_VAR"]) == 2
    assert "--api-key-env NO_SUCH_KEY_VAR: that environment variable is empty" in capsys.readouterr().err


def test_serve_refuses_a_port_it_cannot_listen_on_before_loading_anything(tmp_path, capsys, monkeypatch):
    """A port in use, an address this machine lacks, a port out of range: one line each, and the
    index is never loaded (no model load, no "serving on ..." that is not true)."""
    import socket

    monkeypatch.setattr(AdaptedIndex, "load", lambda *a, **k: pytest.fail("the index was loaded"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"search-adaptor: error: cannot listen on 127.0.0.1:{port} (")
        assert err.endswith("stop what holds that port, or choose another with --port") and "\n" not in err
    assert main(["serve", str(tmp_path), "--host", "203.0.113.5", "--port", str(port)]) == 2
    assert "give --host an address of this machine" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "99999"]) == 2
    assert "--port: must be a TCP port from 1 to 65535, got 99999" in capsys.readouterr().err


def test_serve_passes_its_options_to_the_app(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("search_adaptor.server.serve", lambda *args, **kw: seen.update(args=args, kw=kw))
    assert main(["serve", str(tmp_path), "--retry-budget", "2.5", "--model-name", "scifact"]) == 0
    assert seen["kw"] == {"retry_budget_s": 2.5, "model_name": "scifact"}
    assert main(["serve", str(tmp_path)]) == 0 and seen["kw"] == {}  # the server's defaults


def _free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_body_that_stops_arriving_is_answered_408_and_its_connection_closed() -> None:
    """uvicorn's own timeouts end at the headers: a client that sent part of a body and then nothing
    held its connection forever, and a SIGTERM's graceful shutdown with it. Now the body is answered
    408 once no byte came for ``idle_s``, on a connection then closed, and never reaches the app."""
    from search_adaptor.server import BODY_IDLE_S, GRACEFUL_SHUTDOWN_S, _BodyLimit

    # a stalled upload is answered before the shutdown's bound would cancel it, within docker stop's 10 s
    assert BODY_IDLE_S < GRACEFUL_SHUTDOWN_S < 10

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a part of a body reached the app")

    first = [{"type": "http.request", "body": b'{"queries": [', "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if first:
            return first.pop()
        await asyncio.Event().wait()  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/search", "headers": [(b"content-length", b"100")]}
    asyncio.run(asyncio.wait_for(_BodyLimit(app, 1000, idle_s=0.05)(scope, receive, send), 5))
    start, body = sent
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"]) == {
        "detail": "request body stopped arriving for 0.05 s; send the whole body at once"
    }


@contextlib.contextmanager
def _serving(
    tmp_path: Path, fake: FakeProvider, bound: float
) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """``search-adaptor serve`` of a 6-document index that ``fake`` embeds, in a process of its own whose
    shutdown bound (:data:`~search_adaptor.server.GRACEFUL_SHUTDOWN_S`) is ``bound`` seconds; yields the
    process once it answers, its URL and its log (stdout and stderr: uvicorn writes to both), and kills
    it if the test left it running."""
    encoder = fake_encoder(fake, model="fake-model")
    adapter = make_adapter(8, info=encoder.info())
    texts = [f"document {i}" for i in range(6)]
    index = AdaptedIndex.build(adapter, encoder, [f"d{i}" for i in range(6)], texts, cache_dir=tmp_path)
    index.save(tmp_path / "idx")
    port, log = _free_port(), tmp_path / "serve.log"
    code = f"import sys, search_adaptor.server as server; server.GRACEFUL_SHUTDOWN_S = {bound}; "
    code += "from search_adaptor.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), KEY_ENV[fake.provider]: fake.key}
    command = [sys.executable, "-c", code, "serve", str(tmp_path / "idx"), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as err:
        proc = subprocess.Popen(command, env=env, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield proc, url, log
    finally:
        proc.kill()
        proc.wait()


def _post(url: str, body: dict[str, Any], answers: dict[str, Any]) -> None:
    """POST ``body`` as JSON to ``url``; ``answers`` gets the status, the headers and the JSON body, of
    an error status too (a body that is not JSON as text)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, headers, raw = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as refusal:
        status, headers, raw = refusal.code, refusal.headers, refusal.read()
    json_body = headers.get_content_type() == "application/json"
    answers.update(status=status, headers=headers, body=json.loads(raw) if json_body else raw.decode())


def _calls_reach(fake: FakeProvider, count: int, proc: subprocess.Popen, log: Path) -> None:
    """Wait until ``fake`` has received ``count`` requests."""
    deadline = time.monotonic() + 60
    while len(fake.calls) < count:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)


def test_sigterm_ends_serve_while_a_client_stalls_halfway_through_a_body(tmp_path: Path) -> None:
    """A client that sent its headers and part of a body, then nothing, kept ``serve`` from exiting on
    SIGTERM: uvicorn waited for that request forever, so ``docker stop`` ended in a SIGKILL. Now the
    graceful shutdown has a bound (shortened here, in the server's process, to keep the test short),
    and a request answered normally at that moment still gets its answer."""
    with FakeProvider("openai-compatible", dim=8) as fake, _serving(tmp_path, fake, 2.0) as (proc, url, log):
        port = int(url.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"queries": ['
        )
        answered: dict[str, Any] = {}
        body = {"queries": ["document 1"], "k": 2}
        normal = threading.Thread(target=_post, args=(f"{url}/search", body, answered))
        sent = len(fake.calls)
        fake.schedule(Fault.slow(0.3))  # the provider is still embedding the query at SIGTERM
        normal.start()
        _calls_reach(fake, sent + 1, proc, log)
        proc.send_signal(signal.SIGTERM)
        # it waited for the stalled client as long as the client stayed (20 s and more); the bound is
        # loose because a loaded 2-core machine takes seconds to end the interpreter after shutdown
        proc.wait(timeout=30)
        normal.join(timeout=10)
        stalled.settimeout(10)
        cut = stalled.recv(65536)  # the server is gone: what it sent is all there is
        stalled.close()
    assert proc.returncode == 143, log.read_text()  # 128 + SIGTERM, as before
    assert "timeout graceful shutdown exceeded" in log.read_text()  # the stalled request, not the other
    assert cut.startswith(b"HTTP/1.1 503 "), cut  # cut while its body was read: the shutdown's 503
    assert answered["status"] == 200 and len(answered["body"]["results"][0]) == 2


SHUTTING_DOWN = (
    "the server is shutting down; send the request again (to another instance, or once it is back)"
)


def test_a_request_the_shutdown_bound_cuts_is_answered_503_and_logged_in_one_line(tmp_path: Path) -> None:
    """A request still running when the shutdown's bound ran out was cancelled by uvicorn, which
    logged a CancelledError traceback and answered 500. Now its client gets a 503 saying why, with
    ``Retry-After``, in the format of that endpoint's other errors, and the log one line naming it."""
    with FakeProvider("openai-compatible", dim=8) as fake, _serving(tmp_path, fake, 1.0) as (proc, url, log):
        fake.schedule(Fault.slow(6), Fault.slow(6))  # both on the wire at the bound: not stopped, cut
        sent = len(fake.calls)
        native: dict[str, Any] = {}
        openai: dict[str, Any] = {}
        clients = [
            threading.Thread(target=_post, args=(f"{url}/search", {"queries": ["document 1"]}, native)),
            threading.Thread(
                target=_post,
                args=(
                    f"{url}/v1/embeddings",
                    {"input": "document 2", "model": "search-adaptor-document"},
                    openai,
                ),
            ),
        ]
        for client in clients:
            client.start()
            _calls_reach(fake, sent := sent + 1, proc, log)  # in turn: two calls, not one merged
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        for client in clients:
            client.join(timeout=10)
    text = log.read_text()
    assert proc.returncode == 143, text
    assert native["status"] == 503 and native["headers"]["Retry-After"] == "1", native
    assert native["body"] == {"detail": SHUTTING_DOWN}
    assert openai["status"] == 503 and openai["headers"]["Retry-After"] == "1", openai
    assert openai["body"] == {
        "error": {"message": SHUTTING_DOWN, "type": "server_error", "param": None, "code": None}
    }
    assert "Traceback" not in text and "CancelledError" not in text and '" 500' not in text, text
    for path in ("/search", "/v1/embeddings"):
        assert f'"POST {path} HTTP/1.1" 503' in text, text
        cut = [line for line in text.splitlines() if f"POST {path} from 127.0.0.1:" in line]
        assert len(cut) == 1 and "cut off by the shutdown" in cut[0] and "answered 503" in cut[0], text


def test_sigterm_stops_an_api_model_retrying_and_answers_503_at_once(tmp_path: Path) -> None:
    """A request whose API model was waiting to retry (a retry budget of 10 s) at SIGTERM went on
    retrying until the shutdown's bound (8 s) cut it. Now the retry is not sent: the request is
    answered the 503 of a shutdown, before the bound, and the log says which request and why."""
    with FakeProvider("openai-compatible", dim=8) as fake, _serving(tmp_path, fake, 4.0) as (proc, url, log):
        fake.schedule(Fault.rate_limited(retry_after="6"), Fault.rate_limited(retry_after="6"))
        sent = len(fake.calls)
        answered: dict[str, Any] = {}
        client = threading.Thread(target=_post, args=(f"{url}/search", {"queries": ["document 1"]}, answered))
        client.start()
        _calls_reach(fake, sent + 1, proc, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        client.join(timeout=10)
    text = log.read_text()
    assert proc.returncode == 143, text
    assert len(fake.calls) == sent + 1, "a retry was sent after SIGTERM"
    assert answered["status"] == 503 and answered["headers"]["Retry-After"] == "1", answered
    assert answered["body"] == {"detail": SHUTTING_DOWN}
    assert "timeout graceful shutdown exceeded" not in text and "Traceback" not in text, text
    stopped = [line for line in text.splitlines() if "POST /search from 127.0.0.1:" in line]
    assert len(stopped) == 1 and "answered 503" in stopped[0] and "HTTP 429" in stopped[0], text


def test_once_the_shutdown_began_an_api_model_tries_each_request_once_and_retries_none(
    synthetic, monkeypatch, caplog
) -> None:
    """After the signal (``state.stopping``, set by ``serve``) a request the server accepted still goes
    to the API model once (it is answered, as a graceful shutdown should), but a failed try is not
    retried: the retry's answer would come after the process is gone. That client gets the
    shutdown's 503 at once, in OpenAI's format under ``/v1``."""
    with FakeProvider("openai-compatible", dim=8) as fake:
        encoder = fake_encoder(fake, model="fake-model")
        index = AdaptedIndex.from_vectors(
            make_adapter(8, info=encoder.info()), ["d0", "d1"], np.eye(2, 8), encoder.info(), encoder=encoder
        )
        app = create_app(index)
        client = TestClient(app)
        assert client.post("/search", json={"queries": ["q"], "k": 1}).status_code == 200
        app.state.stopping.set()
        sent = len(fake.calls)
        assert client.post("/search", json={"queries": ["q2"], "k": 1}).status_code == 200
        assert len(fake.calls) == sent + 1, "an accepted request was not sent after the signal"
        fake.schedule(Fault.rate_limited(retry_after="1"))
        answer = client.post("/v1/embeddings", json={"input": "q3", "model": "search-adaptor-query"})
    assert len(fake.calls) == sent + 2, "a retry was sent after the shutdown began"
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {
        "error": {"message": SHUTTING_DOWN, "type": "server_error", "param": None, "code": None}
    }
    named = [r.getMessage() for r in caplog.records if "POST /v1/embeddings" in r.getMessage()]
    assert len(named) == 1 and "before a retry" in named[0] and "answered 503" in named[0], named


@pytest.mark.parametrize("stopping", [False, True])
@pytest.mark.parametrize("answering", [False, True])
def test_a_request_cancelled_is_answered_503_only_when_the_shutdown_cancelled_it(
    stopping: bool, answering: bool, caplog
) -> None:
    """A cancellation before the shutdown began is not the shutdown's: it goes on as it came. One
    during the shutdown is answered 503, unless the answer had started (half of it cannot become a
    503): either way the log has one line, naming the request, and no traceback."""
    from search_adaptor.server import _CutByShutdown

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if answering:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.Event().wait()  # a request that is still running

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    event = threading.Event()
    if stopping:
        event.set()
    scope = {"type": "http", "method": "POST", "path": "/embed", "client": ("10.0.0.1", 5), "headers": []}

    async def cut() -> None:
        task = asyncio.ensure_future(_CutByShutdown(app, event)(scope, None, send))
        await asyncio.sleep(0.01)
        task.cancel()
        await task

    if not stopping:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(cut())
        assert not caplog.records
        return
    asyncio.run(cut())
    (line,) = [r.getMessage() for r in caplog.records]
    assert (
        line.startswith("POST /embed from 10.0.0.1:5 cut off by the shutdown")
        and not caplog.records[0].exc_info
    )
    if answering:
        assert len(sent) == 1 and line.endswith("halfway through its answer")
    else:
        start, body = sent
        assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
        assert json.loads(body["body"]) == {"detail": SHUTTING_DOWN} and line.endswith("answered 503")
