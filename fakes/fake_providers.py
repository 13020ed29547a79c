"""Local fake embedding APIs for tests and benchmarks: one ``ThreadingHTTPServer`` per provider.

Each fake speaks its provider's request and response format: it checks the route, the auth header,
the body fields (including the query/document mode field) and the documented per-request limits,
and answers with deterministic unit vectors derived from (mode, text), so a test can tell that the
right vector came back for the right text in the right mode, as float lists or, when asked, as
base64 float32 the way each API encodes them. It records every request (path, query, headers,
body) and every text served successfully (not counting replies due to a client that has already
hung up, e.g. after its timeout), rejects texts over the model's input limit with the provider's
own "too long" error (counting tokens with :func:`fake_tokens`), rejects a request whose texts
together hold more tokens than the provider's documented cap per request with the provider's own
message (OpenAI's 300,000, Voyage's per-model batch total counted after truncation, Vertex's 20,000
counted before ``autoTruncate``), and injects faults on a schedule
(429 with ``Retry-After``, ``retry-after-ms``, ``x-ratelimit-reset`` or a Google ``RetryInfo`` body,
``x-should-retry``, 409, 5xx, replies slower than the client's timeout, malformed bodies).

The multimodal models take images as their providers document them (Cohere ``images`` data URIs,
Voyage ``/multimodalembeddings`` inputs, Vertex ``multimodalembedding@001`` instances), with their
per-request limits; an image is served the vector of ``image:<sha256 of its bytes>`` (or
``url:<URL>``), which :func:`fake_item_id` gives for an :class:`~search_adaptor.images.ImageRef`.

Usage::

    with FakeProvider("cohere") as fake:
        enc = make_encoder("cohere", base_url=fake.url, api_key=fake.key)
        fake.schedule(Fault.rate_limited("0.05"), Fault.server_error())
        vecs = enc.encode_queries(["a", "b"])
        assert np.allclose(vecs, fake.expected(["a", "b"], "query"))
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import select
import socket
import struct
import threading
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np

from search_adaptor.encoders.base import Encoder
from search_adaptor.encoders.http import RetryPolicy
from search_adaptor.encoders.registry import make_encoder
from search_adaptor.images import ImageRef

FAKE_KEY = "sk-fake-SECRET-0123456789abcdef"
#: ``Call.status`` of a request whose client hung up before the reply (nginx's "client closed request").
CLIENT_GONE = 499
PROVIDER_NAMES = ("openai", "azure-openai", "openai-compatible", "gemini", "vertex", "cohere", "voyage")
#: Where each provider's encoder reads its credential from.
KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "azure-openai": "AZURE_OPENAI_API_KEY",
    "openai-compatible": "OPENAI_COMPATIBLE_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "vertex": "VERTEX_ACCESS_TOKEN",
    "cohere": "CO_API_KEY",
    "voyage": "VOYAGE_API_KEY",
}
#: Retries fast enough for tests (milliseconds of backoff instead of seconds).
FAST_RETRY = RetryPolicy(
    max_attempts=4, max_total_wait=5.0, base_delay=0.005, max_delay=0.02, malformed_retries=2
)


class BadRequest(Exception):
    """The request body breaks the provider's documented format (answered with a 400)."""


def fake_tokens(text: str) -> int:
    """Tokens the fakes count: a quarter per ASCII character, and each UTF-8 byte of any other one.

    Like real tokenizers, CJK text costs far more tokens per character than English.
    """
    ascii_chars = sum(c < "\x80" for c in text)
    return math.ceil(ascii_chars / 4) + len(text.encode()) - ascii_chars


def b64_vector(vector: list[float]) -> str:
    """A vector as the APIs' ``base64`` encoding sends it: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def fake_item_id(item: str | ImageRef) -> str:
    """What the fakes embed for an item: a text itself, an image file its bytes' hash, a URL itself."""
    if isinstance(item, str):
        return item
    if item.is_url:
        return f"url:{item.source}"
    return _image_id(item.read())


def png(width: int = 2, height: int = 2, seed: int = 0, *, declared: tuple[int, int] | None = None) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` pixels coloured from ``seed``; with ``declared``, a
    PNG whose header claims that size over the pixels of a small one (only its header is read)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rgb = bytes(np.random.default_rng(seed).integers(0, 256, 3, dtype=np.uint8))
    rows = b"".join(b"\x00" + rgb * width for _ in range(height))
    w, h = declared or (width, height)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _image_id(data: bytes) -> str:
    return "image:" + hashlib.sha256(data).hexdigest()


#: magic bytes -> media type, as the fakes check what an image claims to be
_MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"BM": "image/bmp"}


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC.items() if data.startswith(magic)), None)


def _image_bytes(b64: Any, media: str | None, types: set[str]) -> bytes:
    """The bytes of a base64 image that claims ``media`` (None: claims nothing), or BadRequest."""
    _require(isinstance(b64, str), "an image must be a base64 string")
    try:
        data = base64.b64decode(b64, validate=True)
    except ValueError:
        raise BadRequest("invalid base64 image data") from None
    found = _sniff(data)
    _require(found in types, f"unsupported image format {found}; supported: {sorted(types)}")
    _require(media in (None, found), f"the image is {found}, not {media}")
    return data


_DATA_URI = re.compile(r"data:(image/[a-z]+);base64,(.*)", re.DOTALL)


def _data_uri(value: Any, types: set[str]) -> bytes:
    match = _DATA_URI.fullmatch(value) if isinstance(value, str) else None
    _require(match is not None, "an image must be a data URI: data:<media type>;base64,<data>")
    assert match is not None
    return _image_bytes(match.group(2), match.group(1), types)


def _pixels(data: bytes) -> int:
    """Pixels of a PNG from its header; other formats count as one megapixel (enough for the fakes)."""
    if data.startswith(b"\x89PNG") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width * height
    return 1_000_000


WEB_IMAGES = {"image/png", "image/jpeg", "image/webp", "image/gif"}


def fake_vector(text: str, mode: str | None, dim: int) -> np.ndarray:
    """Deterministic unit vector of ``text`` embedded in ``mode`` (None: a model without modes)."""
    seed = int.from_bytes(hashlib.sha256(f"{mode}\x00{text}".encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


@dataclass(frozen=True)
class Fault:
    """What the fake does instead of (or before) answering one request.

    ``delay`` sleeps first; then a non-200 ``status`` answers with the provider's error body (with
    a Google ``RetryInfo`` detail when ``retry_delay`` is set, e.g. ``"0.05s"``) and the given
    ``Retry-After`` / ``retry-after-ms`` / other ``headers``; else a ``malformed`` kind
    (``not-json``, ``missing-field``, ``wrong-count``, ``nan``) answers 200 with a bad body; else
    the normal reply follows the delay.
    """

    status: int = 200
    message: str = "injected fault"
    retry_after: str | None = None
    retry_after_ms: str | None = None
    delay: float = 0.0
    malformed: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_delay: str | None = None

    @classmethod
    def rate_limited(cls, retry_after: str | None = "0.05", retry_after_ms: str | None = None) -> Fault:
        return cls(429, "rate limit exceeded", retry_after=retry_after, retry_after_ms=retry_after_ms)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(status, "the server had an error")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        return cls(delay=delay)

    @classmethod
    def bad_body(cls, kind: str) -> Fault:
        return cls(malformed=kind)

    @classmethod
    def rejected(cls, status: int = 400, message: str = "input is invalid", **headers: str) -> Fault:
        return cls(status, message, headers=tuple((k.replace("_", "-"), v) for k, v in headers.items()))

    @classmethod
    def rate_limited_until(cls, reset: float) -> Fault:
        """A 429 whose only hint is ``x-ratelimit-reset`` (a Unix time, as Cohere sends it)."""
        return cls(429, "rate limit exceeded", headers=(("x-ratelimit-reset", f"{reset:.3f}"),))

    @classmethod
    def google_rate_limited(cls, retry_delay: str = "0.05s") -> Fault:
        """A Google 429 ``RESOURCE_EXHAUSTED`` whose body says when to retry (``RetryInfo``)."""
        return cls(429, "Resource has been exhausted (e.g. check quota).", retry_delay=retry_delay)


@dataclass
class Call:
    """One request the fake received."""

    path: str
    status: int
    texts: list[str] = field(default_factory=list)
    mode: str | None = None
    dimensions: int | None = None
    body: Any = None
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


# -- wire formats --------------------------------------------------------------------------------


class Wire:
    """One provider's wire format, as the fake checks and answers it."""

    name = ""
    prefix = ""  # path prefix that the client's base_url includes
    has_mode = True

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        raise NotImplementedError

    def auth_ok(self, headers: Any, key: str) -> bool:
        return headers.get("authorization") == f"Bearer {key}"

    def presented_key(self, headers: Any) -> str:
        return (headers.get("authorization") or "").removeprefix("Bearer ")

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        """(texts, mode as "query"/"document"/None, dimensions) of a request, or BadRequest."""
        raise NotImplementedError

    def encoding(self, body: Any) -> str:
        """How the request asked for vectors: ``"float"`` or ``"base64"``."""
        return "float"

    def truncates(self, body: Any) -> bool:
        """Whether the request lets the server cut over-long texts instead of failing."""
        return False

    def input_limit(self, path: str) -> int | None:
        """The model's input limit in :func:`fake_tokens` (None: no limit)."""
        return None

    def too_long(self, index: int, tokens: int, limit: int) -> tuple[int, str]:
        """(status, message) of the provider's rejection of input ``index`` over ``limit`` tokens."""
        return 400, f"input {index} has {tokens} tokens, more than the maximum of {limit}; it is too long"

    def request_limit(self, path: str, body: Any) -> int | None:
        """The documented cap on the :func:`fake_tokens` of one request's texts together (None: none)."""
        return None

    def request_tokens(self, texts: list[str], body: Any) -> int:
        """What a request's texts count against :meth:`request_limit` (the provider's own way)."""
        return sum(map(fake_tokens, texts))

    def too_many_tokens(self, tokens: int, limit: int, body: Any) -> tuple[int, str]:
        """(status, message) of the provider's rejection of a request of ``tokens`` over ``limit``."""
        raise NotImplementedError(f"{self.name} documents no cap per request")

    def reply(self, vectors: list[list[float]], texts: list[str], body: Any) -> Any:
        raise NotImplementedError

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        raise NotImplementedError


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequest(message)


def _texts(value: Any, limit: int, what: str) -> list[str]:
    _require(
        isinstance(value, list) and all(isinstance(t, str) for t in value),
        f"{what} must be a list of strings",
    )
    _require(0 < len(value) <= limit, f"{what} must hold 1 to {limit} items, got {len(value)}")
    return value


class OpenAIWire(Wire):
    name = "openai"
    prefix = "/v1"
    has_mode = False
    max_inputs = 2048
    formats = ("float", "base64")

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return path == "/v1/embeddings"

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        self.check_model(body)
        texts = _texts(body.get("input"), self.max_inputs, "'input'")
        _require(all(texts), "'$.input' is invalid: an input cannot be an empty string")
        _require(
            body.get("encoding_format", "float") in self.formats,
            f"'encoding_format' must be one of {list(self.formats)}",
        )
        return texts, None, body.get("dimensions")

    def check_model(self, body: Any) -> None:
        _require(isinstance(body.get("model"), str), "you must provide a model parameter")

    def encoding(self, body: Any) -> str:
        return body.get("encoding_format") or "float"

    def input_limit(self, path: str) -> int | None:
        return 8192

    def too_long(self, index: int, tokens: int, limit: int) -> tuple[int, str]:
        return 400, f"Invalid 'input[{index}]': maximum input length is {limit} tokens."

    def request_limit(self, path: str, body: Any) -> int | None:
        return 300_000

    def too_many_tokens(self, tokens: int, limit: int, body: Any) -> tuple[int, str]:
        return 400, f"Requested {tokens} tokens, max {limit} tokens per request"

    def reply(self, vectors: list[list[float]], texts: list[str], body: Any) -> Any:
        encode = b64_vector if self.encoding(body) == "base64" else list
        data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
        n = sum(map(fake_tokens, texts))
        return {
            "object": "list",
            "data": data[::-1],
            "model": "fake",
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        kind = "max_tokens_per_request" if message.endswith("tokens per request") else "invalid_request_error"
        code = "max_tokens_per_request" if kind != "invalid_request_error" else None
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class CompatibleWire(OpenAIWire):
    """text-embeddings-inference's OpenAI route: floats only, a 512-token model, 413 when too long."""

    name = "openai-compatible"
    max_inputs = 32  # text-embeddings-inference's default client batch limit
    formats = ("float",)

    def input_limit(self, path: str) -> int | None:
        return 512

    def too_long(self, index: int, tokens: int, limit: int) -> tuple[int, str]:
        return 413, f"Input validation error: `inputs` must have less than {limit} tokens. Given: {tokens}"

    def request_limit(self, path: str, body: Any) -> int | None:
        return None  # the server's own batch limits, not OpenAI's

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        return {"error": message, "error_type": "Validation" if status in (413, 422) else "Backend"}


class AzureWire(OpenAIWire):
    """Azure OpenAI on a resource root: the classic and the v1 API.

    Classic: ``/openai/deployments/{deployment}/embeddings?api-version=YYYY-MM-DD[-preview]``. v1
    (2025+): ``/openai/v1/embeddings``, the deployment as the body's ``model``, and either no
    ``api-version`` or one of the v1 API's own (``v1``, ``preview``); a dated one, or any other
    path (such as a v1 root with the classic path appended to it), is 404 as on Azure.
    """

    name = "azure-openai"
    prefix = ""
    v1_path = "/openai/v1/embeddings"
    v1_versions = ("v1", "preview")

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        versions = query.get("api-version", [])
        if path == self.v1_path:
            return all(v in self.v1_versions for v in versions)
        return bool(re.fullmatch(r"/openai/deployments/[^/]+/embeddings", path)) and bool(versions)

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        if path == self.v1_path:  # no deployment in the URL: the body must name it
            _require(
                isinstance(body.get("model"), str) and body["model"], "you must provide a model parameter"
            )
        return super().parse(path, body)

    def auth_ok(self, headers: Any, key: str) -> bool:
        return headers.get("api-key") == key or headers.get("authorization") == f"Bearer {key}"

    def presented_key(self, headers: Any) -> str:
        return headers.get("api-key") or (headers.get("authorization") or "").removeprefix("Bearer ")

    def check_model(self, body: Any) -> None:
        """Azure takes the model from the deployment in the URL (the SDK repeats it in the body)."""

    def request_limit(self, path: str, body: Any) -> int | None:
        return None  # a deployment's own; Azure's wording for it is not documented

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        return {"error": {"code": str(status), "message": message}}


class GoogleWire(Wire):
    """Google's error bodies and models, shared by the Gemini API and Vertex AI."""

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        names = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            429: "RESOURCE_EXHAUSTED",
        }
        error: dict[str, Any] = {"code": status, "message": message, "status": names.get(status, "INTERNAL")}
        if retry_delay is not None:
            error["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
            ]
        return {"error": error}

    @staticmethod
    def gemini_2(model: str) -> bool:
        return "gemini" in model and model != "gemini-embedding-001"

    def input_limit(self, path: str) -> int | None:
        model = re.search(r"models/([^/:]+):", path)
        return 8192 if model and self.gemini_2(model.group(1)) else 2048

    def too_long(self, index: int, tokens: int, limit: int) -> tuple[int, str]:
        return (
            400,
            f"The input token count ({tokens}) exceeds the maximum number of tokens allowed ({limit}).",
        )


TASKS = {"RETRIEVAL_QUERY": "query", "RETRIEVAL_DOCUMENT": "document"}
COHERE_INPUT_TYPES = {"search_query": "query", "search_document": "document", "image": "image"}
VOYAGE_INPUT_TYPES = {"query": "query", "document": "document"}


def _one_mode(modes: list[Any], table: dict[str, str], field_name: str) -> str:
    _require(all(m in table for m in modes), f"{field_name} must be one of {sorted(table)}, got {set(modes)}")
    _require(len(set(modes)) == 1, f"mixed {field_name} values in one request")
    return table[modes[0]]


def _one_text(content: Any) -> str:
    """The text of a Google ``Content`` holding one text part (role ``user`` or none)."""
    _require(content.get("role", "user") == "user", "content role must be user")
    parts = content.get("parts")
    _require(isinstance(parts, list) and len(parts) == 1, "this fake embeds one text part per content")
    _require(isinstance(parts[0].get("text"), str), "parts[0].text must be a string")
    return parts[0]["text"]


class GeminiWire(GoogleWire):
    """The Gemini API. Gemini Embedding 2 takes no task type: its requests carry none (mode None)."""

    name = "gemini"
    prefix = "/v1beta"

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return bool(re.fullmatch(r"/v1beta/models/[^/:]+:batchEmbedContents", path))

    def auth_ok(self, headers: Any, key: str) -> bool:
        return headers.get("x-goog-api-key") == key

    def presented_key(self, headers: Any) -> str:
        return headers.get("x-goog-api-key") or ""

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        model = "models/" + path.split("/models/")[1].split(":")[0]
        requests = body.get("requests")
        _require(
            isinstance(requests, list) and 0 < len(requests) <= 100,
            "at most 100 requests can be in one batch",
        )
        _require(all(r.get("model") == model for r in requests), f"each request's model must be {model}")
        texts = [_one_text(r["content"]) for r in requests]
        if self.gemini_2(model.removeprefix("models/")):
            _require(all("taskType" not in r for r in requests), "taskType is not supported by this model")
            mode = None
        else:
            mode = _one_mode([r.get("taskType") for r in requests], TASKS, "taskType")
        dims = {r.get("outputDimensionality") for r in requests}
        _require(len(dims) == 1, "mixed outputDimensionality")
        return texts, mode, dims.pop()

    def reply(self, vectors: list[list[float]], texts: list[str], body: Any) -> Any:
        return {"embeddings": [{"values": v} for v in vectors]}


class VertexWire(GoogleWire):
    """Vertex AI: ``:predict`` for text-embedding-* and gemini-embedding-001, ``:embedContent``
    (one text, no task type) for the later Gemini embedding models, as the SDK routes them."""

    name = "vertex"
    prefix = "/v1"
    route_re = re.compile(
        r"/v1/projects/[^/]+/locations/[^/]+/publishers/google/models/([^/:]+):(predict|embedContent)"
    )

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return bool(self.route_re.fullmatch(path))

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        match = self.route_re.fullmatch(path)
        assert match is not None
        model, method = match.groups()
        if model.startswith("multimodalembedding"):
            _require(method == "predict", f"{model} is served by predict")
            return self._multimodal(body)
        if self.gemini_2(model):
            _require(method == "embedContent", f"{model} is served by embedContent, not predict")
            config = body.get("embedContentConfig", {})
            _require("taskType" not in config, "taskType is not supported by this model")
            _require(isinstance(config.get("autoTruncate", True), bool), "autoTruncate must be a bool")
            return [_one_text(body["content"])], None, config.get("outputDimensionality")
        _require(method == "predict", f"{model} is served by predict, not embedContent")
        limit = 1 if model.startswith("gemini") else 250
        instances = body.get("instances")
        _require(isinstance(instances, list) and 0 < len(instances) <= limit, f"at most {limit} instances")
        texts = [i["content"] for i in instances]
        mode = _one_mode([i.get("task_type") for i in instances], TASKS, "task_type")
        params = body.get("parameters", {})
        _require(isinstance(params.get("autoTruncate", True), bool), "autoTruncate must be a bool")
        return texts, mode, params.get("outputDimensionality")

    @staticmethod
    def _multimodal(body: Any) -> tuple[list[str], str | None, int | None]:
        """multimodalembedding@001: one instance a request, a text or an image; no task type."""
        instances = body.get("instances")
        _require(isinstance(instances, list) and len(instances) == 1, "multimodalembedding takes 1 instance")
        instance = instances[0]
        _require(set(instance) in ({"text"}, {"image"}), "this fake embeds a text or an image an instance")
        params = body.get("parameters", {})
        _require(set(params) <= {"dimension"}, f"unknown parameters {sorted(params)}")
        _require(
            params.get("dimension") in (None, 128, 256, 512, 1408), "dimension must be 128, 256, 512 or 1408"
        )
        if "text" in instance:
            _require(isinstance(instance["text"], str), "text must be a string")
            return [instance["text"]], None, params.get("dimension")
        image = instance["image"]
        _require(set(image) == {"bytesBase64Encoded"}, "image takes bytesBase64Encoded (or gcsUri)")
        data = _image_bytes(
            image["bytesBase64Encoded"], None, {"image/png", "image/jpeg", "image/gif", "image/bmp"}
        )
        _require(len(data) <= 20_000_000, "the image is larger than 20 MB")
        return [_image_id(data)], None, params.get("dimension")

    def request_limit(self, path: str, body: Any) -> int | None:
        """20,000 tokens a ``:predict`` request of texts, counted before ``autoTruncate`` cuts them
        ("Inputs exceeding this limit result in a 400 error"); Gemini Embedding 2 and the
        multimodal model document none."""
        match = self.route_re.fullmatch(path)
        text_predict = match is not None and match.group(2) == "predict" and "content" in body["instances"][0]
        return 20_000 if text_predict else None

    def too_many_tokens(self, tokens: int, limit: int, body: Any) -> tuple[int, str]:
        return 400, (
            f"Unable to submit request because the input token count is {tokens} but the model supports "
            f"up to {limit}. Reduce the input token count and try again. You can also use the CountTokens "
            "API to calculate prompt token count and billable characters. Learn more: "
            "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/models"
        )

    def truncates(self, body: Any) -> bool:
        if "instances" in body and "content" not in body["instances"][0]:
            return True  # multimodalembedding shortens texts over its 32 tokens itself
        config = body.get("embedContentConfig") or body.get("parameters") or {}
        return config.get("autoTruncate", True)

    def reply(self, vectors: list[list[float]], texts: list[str], body: Any) -> Any:
        if "instances" in body and "content" not in body["instances"][0]:
            field = "imageEmbedding" if "image" in body["instances"][0] else "textEmbedding"
            return {"predictions": [{field: v} for v in vectors], "deployedModelId": "fake"}
        if "content" in body:
            usage = {"promptTokenCount": fake_tokens(texts[0])}
            return {"embedding": {"values": vectors[0]}, "usageMetadata": usage, "truncated": False}
        preds = [
            {"embeddings": {"values": v, "statistics": {"truncated": False, "token_count": fake_tokens(t)}}}
            for v, t in zip(vectors, texts, strict=True)
        ]
        return {"predictions": preds, "metadata": {"billableCharacterCount": sum(len(t) for t in texts)}}


_FLOAT_ONLY = re.compile(r"-v[12]\.")


class CohereWire(Wire):
    name = "cohere"
    prefix = ""

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return path == "/v2/embed"

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        _require(isinstance(body.get("model"), str), "model is required")
        _require(("texts" in body) != ("images" in body), "give exactly one of texts or images")
        texts = self._images(body) if "images" in body else _texts(body.get("texts"), 96, "texts")
        mode = _one_mode([body.get("input_type")], COHERE_INPUT_TYPES, "input_type")
        _require(
            (mode == "image") == ("-v3." in body["model"] and "images" in body), "input_type image: v3 images"
        )
        _require(
            body.get("embedding_types") in (["float"], ["base64"]),
            "this fake serves embedding_types ['float'] or ['base64']",
        )
        _require(
            body.get("truncate", "END") in ("NONE", "START", "END"), "truncate must be NONE, START or END"
        )
        return texts, mode, body.get("output_dimension")

    @staticmethod
    def _images(body: Any) -> list[str]:
        """Embed v3: one image of at most 5 MB a call; v4: any number, at most 20 MB together."""
        images = body["images"]
        _require(isinstance(images, list) and len(images) > 0, "images must be a non-empty list")
        data = [_data_uri(i, WEB_IMAGES) for i in images]
        if "-v3." in body["model"]:
            _require(len(data) == 1, "embed v3 models take at most 1 image per call")
            _require(len(data[0]) <= 5_000_000, "the image is larger than 5MB")
        _require(_FLOAT_ONLY.search(body["model"]) is None, f"{body['model']} does not embed images")
        total = sum(map(len, data))
        _require(total <= 20_000_000, f"the combined size of all images ({total}) must be at most 20MB")
        return [_image_id(d) for d in data]

    def encoding(self, body: Any) -> str:
        return body["embedding_types"][0]

    def truncates(self, body: Any) -> bool:
        return body.get("truncate", "END") != "NONE"

    def input_limit(self, path: str) -> int | None:
        return 128_000

    def too_long(self, index: int, tokens: int, limit: int) -> tuple[int, str]:
        return 400, (
            f"invalid request: too many tokens: text at index {index} has {tokens} tokens, more than "
            f"the model's {limit}; use truncate START or END"
        )

    def reply(self, vectors: list[list[float]], texts: list[str], body: Any) -> Any:
        kind = self.encoding(body)
        return {
            "id": "fake",
            "embeddings": {kind: [b64_vector(v) if kind == "base64" else v for v in vectors]},
            "texts": texts,
            "meta": {"billed_units": {"input_tokens": sum(map(fake_tokens, texts))}},
            "response_type": "embeddings_by_type",
        }

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        return {"id": "fake-error", "message": message}


def voyage_batch_limit(model: str) -> int:
    """Voyage's documented cap on the tokens of one request: 1M for the ``-lite`` models, 320K for
    voyage-4, voyage-3.5, voyage-2 and the multimodal models, 120K for the others."""
    if "lite" in model:
        return 1_000_000
    if model in ("voyage-4", "voyage-3.5", "voyage-2") or model.startswith("voyage-multimodal"):
        return 320_000
    return 120_000


def voyage_batch_message(model: str, tokens: int, limit: int) -> str:
    """Voyage's own words for a request over :func:`voyage_batch_limit`."""
    return (
        f"Request to model '{model}' failed. The max allowed tokens per submitted batch is {limit}. "
        f"Your batch has {tokens} tokens after truncation. Please lower the number of tokens in the batch."
    )


class VoyageWire(Wire):
    name = "voyage"
    prefix = "/v1"

    def route(self, path: str, query: dict[str, list[str]]) -> bool:
        return path in ("/v1/embeddings", "/v1/multimodalembeddings")

    def parse(self, path: str, body: Any) -> tuple[list[str], str | None, int | None]:
        _require(isinstance(body.get("model"), str), "model is required")
        multimodal = body["model"].startswith("voyage-multimodal")
        _require(multimodal == path.endswith("/multimodalembeddings"), f"{body['model']} is not served here")
        texts = self._inputs(body) if multimodal else _texts(body.get("input"), 1000, "input")
        _require(all(texts), "input texts must be non-empty")
        mode = _one_mode([body.get("input_type")], VOYAGE_INPUT_TYPES, "input_type")
        _require(isinstance(body.get("truncation", True), bool), "truncation must be a bool")
        _require(body.get("encoding_format") in (None, "base64"), "encoding_format must be null or base64")
        return texts, mode, body.get("output_dimension")

    @staticmethod
    def _usage(texts: list[str], body: Any) -> dict[str, int]:
        tokens = sum(map(fake_tokens, texts))
        if "inputs" not in body:
            return {"total_tokens": tokens}
        return {"text_tokens": tokens, "image_pixels": 0, "video_pixels": 0, "total_tokens": tokens}

    @staticmethod
    def _inputs(body: Any) -> list[str]:
        """The items of a multimodal request: at most 1,000 inputs and 320K tokens, an image a token per
        560 pixels, and image data or image URLs in one request, never both."""
        inputs = body.get("inputs")
        _require(isinstance(inputs, list) and 0 < len(inputs) <= 1000, "inputs must hold 1 to 1000 items")
        items, kinds, total = [], set(), 0
        for i, entry in enumerate(inputs):
            content = entry.get("content") if isinstance(entry, dict) else None
            _require(
                isinstance(content, list) and len(content) == 1, "this fake embeds one content piece an input"
            )
            part = content[0]
            kind = part.get("type")
            if kind == "text":
                _require(isinstance(part.get("text"), str), "text must be a string")
                items.append(part["text"])
                tokens = fake_tokens(part["text"])
            elif kind == "image_base64":
                data = _data_uri(part.get("image_base64"), WEB_IMAGES)
                items.append(_image_id(data))
                tokens = math.ceil(_pixels(data) / 560)
            elif kind == "image_url":
                _require(str(part.get("image_url", "")).startswith("http"), "image_url must be a URL")
                items.append(f"url:{part['image_url']}")
                tokens = 2_000
            else:
                raise BadRequest(f"content type must be text, image_base64 or image_url, got {kind!r}")
            if kind != "text":
                kinds.add(kind)
            _require(
                tokens <= 32_000, f"input {i} has {tokens} tokens, more than the context length of 32000"
            )
            total += tokens
        _require(
            len(kinds) <= 1,
            "each request should use either image_base64 or image_url exclusively for images, not both",
        )
        limit = voyage_batch_limit(body["model"])
        _require(total <= limit, voyage_batch_message(body["model"], total, limit))
        return items

    def encoding(self, body: Any) -> str:
        return body.get("encoding_format") or "float"

    def truncates(self, body: Any) -> bool:
        return body.get("truncation", True)

    def input_limit(self, path: str) -> int | None:
        return 32_000

    def request_limit(self, path: str, body: Any) -> int | None:
        # multimodal requests are counted, images included, as they are parsed (_inputs)
        return None if path.endswith("/multimodalembeddings") else voyage_batch_limit(body["model"])

    def request_tokens(self, texts: list[str], body: Any) -> int:
        """Counted "after truncation": a text cut to the 32K context counts 32K at most."""
        counts = [fake_tokens(t) for t in texts]
        if self.truncates(body):
            counts = [min(c, 32_000) for c in counts]
        return sum(counts)

    def too_many_tokens(self, tokens: int, limit: int, body: Any) -> tuple[int, str]:
        return 400, voyage_batch_message(body["model"], tokens, limit)

    def too_long(self, index: int, tokens: int, limit: int) -> tuple[int, str]:
        return 400, (
            f"Request input at index {index} has {tokens} tokens, more than the context length of "
            f"{limit}. Please set truncation=True or shorten the input."
        )

    def reply(self, vectors: list[list[float]], texts: list[str], body: Any) -> Any:
        encode = b64_vector if self.encoding(body) == "base64" else list
        data = [{"object": "embedding", "embedding": encode(v), "index": i} for i, v in enumerate(vectors)]
        return {
            "object": "list",
            "data": data,
            "model": "fake",
            "usage": self._usage(texts, body),
        }

    def error(self, status: int, message: str, retry_delay: str | None = None) -> Any:
        return {"detail": message}


WIRES: dict[str, type[Wire]] = {
    w.name: w for w in (OpenAIWire, AzureWire, CompatibleWire, GeminiWire, VertexWire, CohereWire, VoyageWire)
}


# -- the server ----------------------------------------------------------------------------------


def _client_gone(handler: BaseHTTPRequestHandler) -> bool:
    """True when the client has hung up: its socket reads as closed (or reset) without blocking."""
    sock = handler.connection
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs (and httpx's pool) use
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one write, not two (no delayed-ACK stalls)
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.server.fake.handle(self, self.rfile.read(length))

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeProvider


class FakeProvider:
    """A provider's fake API on 127.0.0.1 (a context manager).

    Parameters
    ----------
    provider : str
        One of :data:`PROVIDER_NAMES`.
    key : str
        The key the fake accepts. Its 401 message echoes the key it was sent (as some real
        APIs echo part of it), so tests can check that clients scrub keys from errors.
    dim : int
        Width of the vectors served when the request does not ask for one.
    delay : float
        Seconds every successful reply waits (a slow server).
    require_key : bool
        Refuse requests without the right key (off for servers that need none).
    input_limit : int, None or "model"
        Tokens (:func:`fake_tokens`) one text may have when the request does not let the server
        truncate; ``"model"``: the model's documented limit; ``None``: no limit.
    request_limit : int, None or "model"
        Tokens the texts of one request may hold together, counted the provider's way
        (:meth:`Wire.request_tokens`), refused with its own message; ``"model"``: the documented
        cap per request, where the provider has one; an int: that cap instead, where it has one (as
        a tokenizer denser than the client's estimate would count, e.g. on random ASCII); ``None``:
        no cap.
    """

    def __init__(
        self,
        provider: str,
        *,
        key: str = FAKE_KEY,
        dim: int = 8,
        delay: float = 0.0,
        require_key: bool = True,
        input_limit: int | Literal["model"] | None = "model",
        request_limit: int | Literal["model"] | None = "model",
    ) -> None:
        self.wire = WIRES[provider]()
        self.provider = provider
        self.key = key
        self.dim = dim
        self.delay = delay
        self.require_key = require_key
        self.input_limit = input_limit
        self.request_limit = request_limit
        self.calls: list[Call] = []
        self.served: Counter[tuple[str, str | None]] = Counter()
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._server: _Server | None = None

    # lifecycle

    def __enter__(self) -> FakeProvider:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        serve = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), name=f"fake-{self.provider}", daemon=True
        )
        serve.start()  # a short poll interval makes shutdown() quick
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        """The ``base_url`` to give this provider's encoder."""
        assert self._server is not None, "use FakeProvider as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.wire.prefix}"

    # test helpers

    def schedule(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next well-formed, authorised requests, one each, in order."""
        with self._lock:
            self._faults.extend(faults)

    def mode(self, kind: str) -> str | None:
        """The mode the fake records for an encoder's ``kind`` (None for models without modes)."""
        return kind if self.wire.has_mode else None

    def expected(
        self, texts: list[str | ImageRef], kind: str, dim: int | None = None, *, mode: str | None = "<kind>"
    ) -> np.ndarray:
        """The vectors this fake serves for ``texts`` (or images, :func:`fake_item_id`) embedded as
        ``kind``, or in ``mode`` when given (None: a model without modes)."""
        mode = self.mode(kind) if mode == "<kind>" else mode
        return np.stack([fake_vector(fake_item_id(t), mode, dim or self.dim) for t in texts])

    def texts_sent(self) -> list[str]:
        """Every text of every well-formed request, in arrival order."""
        with self._lock:
            return [t for c in self.calls for t in c.texts]

    # request handling

    def handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        call = Call(
            parts.path,
            0,
            query={k: v[-1] for k, v in query.items()},
            headers={k.lower(): v for k, v in handler.headers.items()},
        )
        with self._lock:
            self.calls.append(call)
        if not self.wire.route(parts.path, query):
            self._send_error(handler, call, 404, f"no route {parts.path}")
            return
        if self.require_key and not self.wire.auth_ok(handler.headers, self.key):
            got = self.wire.presented_key(handler.headers)
            self._send_error(
                handler, call, 401, f"Incorrect API key provided: {got}. Find your key in the console."
            )
            return
        try:
            call.body = json.loads(raw)
            call.texts, call.mode, call.dimensions = self.wire.parse(parts.path, call.body)
        except BadRequest as exc:
            self._send_error(handler, call, 400, str(exc))
            return
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            self._send_error(handler, call, 400, f"invalid request body: {exc!r}")
            return
        cap = self.wire.request_limit(parts.path, call.body)
        if cap is not None and self.request_limit != "model":
            cap = self.request_limit
        if cap is not None:
            tokens = self.wire.request_tokens(call.texts, call.body)
            if tokens > cap:
                self._send_error(handler, call, *self.wire.too_many_tokens(tokens, cap, call.body))
                return
        limit = self.wire.input_limit(parts.path) if self.input_limit == "model" else self.input_limit
        if limit is not None and not self.wire.truncates(call.body):
            over = [(i, fake_tokens(t)) for i, t in enumerate(call.texts) if fake_tokens(t) > limit]
            if over:
                self._send_error(handler, call, *self.wire.too_long(*over[0], limit))
                return
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status != 200:
            headers = {
                "retry-after": fault.retry_after,
                "retry-after-ms": fault.retry_after_ms,
                **dict(fault.headers),
            }
            self._send_error(handler, call, fault.status, fault.message, headers, fault.retry_delay)
            return
        if self.delay:
            time.sleep(self.delay)
        if _client_gone(handler):  # e.g. it timed out while we stalled: nothing is served
            call.status = CLIENT_GONE
            return
        dim = call.dimensions or self.dim
        vectors = [fake_vector(t, call.mode, dim).tolist() for t in call.texts]
        if fault is not None and fault.malformed:
            call.status = 200
            self._send(handler, 200, self._malformed(fault.malformed, vectors, call.texts, call.body))
            return
        call.status = 200
        if self._send(handler, 200, json.dumps(self.wire.reply(vectors, call.texts, call.body)).encode()):
            with self._lock:
                self.served.update((t, call.mode) for t in call.texts)

    def _malformed(self, kind: str, vectors: list[list[float]], texts: list[str], body: Any) -> bytes:
        if kind == "not-json":
            return b"<html><body>502 Bad Gateway</body></html>"
        if kind == "missing-field":
            return b'{"object": "list", "unexpected": true}'
        if kind == "wrong-count":
            return json.dumps(self.wire.reply(vectors[:-1], texts[:-1], body)).encode()
        if kind == "nan":
            vectors[0][0] = float("nan")
            return json.dumps(self.wire.reply(vectors, texts, body)).encode()  # json writes a bare NaN
        raise ValueError(f"unknown malformed kind {kind!r}")

    def _send_error(
        self,
        handler: BaseHTTPRequestHandler,
        call: Call,
        status: int,
        message: str,
        headers: dict[str, str | None] | None = None,
        retry_delay: str | None = None,
    ) -> None:
        call.status = status
        self._send(
            handler, status, json.dumps(self.wire.error(status, message, retry_delay)).encode(), headers
        )

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str | None] | None = None,
    ) -> bool:
        """Write one reply; False when the client has already gone (e.g. after its timeout)."""
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(body)))
            for name, value in (headers or {}).items():
                if value is not None:
                    handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True


def required_options(provider: str) -> dict[str, Any]:
    """Options a provider needs besides the key and base URL (deployment, model, project)."""
    if provider == "azure-openai":
        return {"model": "fake-deployment"}
    if provider == "openai-compatible":
        return {"model": "fake-model"}
    if provider == "vertex":
        return {"project": "fake-project", "location": "us-central1"}
    return {}


def fake_encoder(fake: FakeProvider, *, key: str | None = None, **kw: Any) -> Encoder:
    """The real encoder of ``fake``'s provider, pointed at the fake, with fast retries."""
    options: dict[str, Any] = {
        **required_options(fake.provider),
        "base_url": fake.url,
        "api_key": key or fake.key,
        "retry": FAST_RETRY,
        "timeout": 5.0,
    }
    options.update(kw)
    return make_encoder(fake.provider, **options)
