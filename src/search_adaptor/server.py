"""HTTP search over an :class:`~search_adaptor.index.AdaptedIndex` (FastAPI; ``search-adaptor serve``).

Endpoints
---------
``POST /search``
    Top-k documents per query text.
``POST /embed``
    Adapted vectors of texts, as queries (default) or as documents, e.g. for another vector database.
``POST /v1/embeddings``, ``GET /v1/models``
    The same vectors in the OpenAI wire format, so that any OpenAI client (the ``openai`` SDK,
    LangChain's ``OpenAIEmbeddings``) uses the adapted model by changing its base URL. The side is
    the model name: ``<name>-query`` or ``<name>-document`` (``model_name``, default
    ``search-adaptor``), as ``GET /v1/models`` lists.
``GET /health``
    Unauthenticated, for probes.

With an API key every other endpoint needs ``Authorization: Bearer <key>``. Texts per request,
characters per text, ``k`` and body size are bounded; the OpenAPI schema (``/openapi.json``, with
Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served from this package, no CDN) declares each limit
and every status an endpoint can return. Refusals are one line: 413 (too much), 422 (invalid, naming
the field), 400 (not JSON: not UTF-8, malformed, empty or not sent as ``application/json``, saying
which), 401 (key), 404 (no such ``/v1`` model, or no such URL), 408 (a body that stopped arriving for
:data:`BODY_IDLE_S`; the connection is closed), 502 (the embedding provider failed: named, never its URL
or credentials) and 503 (too many texts waiting, or the server shutting down: retry after ``Retry-After``).
``/v1`` answers errors as OpenAI does (``{"error": {"message", "type", "param", "code"}}``: ``param``
the field at fault, ``code`` ``model_not_found`` or ``invalid_api_key`` where OpenAI sends them, an
unknown URL ``Invalid URL (POST /v1/...)`` with no code), the others as ``{"detail": "..."}``.

A cross-model index embeds queries with one model and documents with another: each request is
embedded, counted (``usage``), blamed (502) and batched by the model of the side it asks for.

Concurrent requests are micro-batched: waiting requests are merged into one encoder call and one
FAISS search (per ``k``). The adapter and the search compute each text alone, so merging changes
nothing of theirs, but the encoder's vector of a text may differ from the one it gets alone in the
last float32 bits (a local transformer's matrix kernels round by batch shape: at most 2e-7 per
component measured with all-MiniLM-L6-v2), and so may a score, near its 7th decimal.
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, WithJsonSchema
from pydantic import create_model as pydantic_model
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_adaptor import __version__
from search_adaptor.data import is_blank
from search_adaptor.encoders import API_CLASSES
from search_adaptor.encoders.base import (
    KINDS,
    BatchCutShort,
    Encoder,
    EncoderError,
    InputsRejected,
    Kind,
    cancelled_by,
)
from search_adaptor.encoders.http import Cancelled
from search_adaptor.index import BLANK_QUERY, AdaptedIndex, Hits, import_faiss, moved_models
from search_adaptor.retrieval import l2_normalize

log = logging.getLogger(__name__)

MAX_BATCH = 64
MAX_K = 100
MAX_CHARS = 8192
#: seconds one call of an API embedding model may take, retries included, while serving
RETRY_BUDGET_S = 10.0
MODEL_NAME = "search-adaptor"
#: how long a worker waits for more requests after the first one of a batch
BATCH_WINDOW_S = 0.002
#: texts per merged encoder call
MAX_BATCH_TEXTS = 256
#: texts waiting, in batches of ``max_batch``, beyond which requests get 503 (a text longer than
#: :data:`TEXT_UNIT_CHARS` counts once per that many characters: see :func:`text_units`)
MAX_PENDING_BATCHES = 32
#: characters of text that count as one text of work when the queue is measured
TEXT_UNIT_CHARS = 128
#: the most one text counts (2,048 characters: beyond, a local model cuts it, MiniLM at 256 tokens), so
#: that two requests of the most and the longest texts fit in the queue together
MAX_TEXT_UNITS = 16
#: how often a request waiting for its answer checks whether its client has gone
DISCONNECT_POLL_S = 0.25
_IDLE_S = 5.0  # a worker with nothing to do for this long stops (the next request starts one)
#: seconds a request body may go without new bytes before the server answers 408 and closes the
#: connection: uvicorn's own timeouts stop at the headers, so a client that sent part of a body and
#: stalled held its connection forever, and with it a SIGTERM's graceful shutdown. 5: the idle time
#: uvicorn grants a client between requests (its ``timeout_keep_alive``); a JSON body is sent at once
BODY_IDLE_S = 5.0
#: seconds a SIGTERM (``docker stop``, Kubernetes, systemd) waits for requests in flight before they
#: are cut off (answered :data:`SHUTTING_DOWN`) and the server exits: 8, under ``docker stop``'s 10 s
#: before its SIGKILL (Kubernetes waits 30 s), and over :data:`BODY_IDLE_S`, so that a stalled upload
#: is answered 408 and closed rather than cut; a request answered normally (a local model:
#: milliseconds) finishes within it. An API model retries nothing from the SIGTERM on (:class:`Batcher`):
#: a retry's wait (its budget is :data:`RETRY_BUDGET_S`) would outlast the bound.
GRACEFUL_SHUTDOWN_S = 8.0
#: the 503 of a request the server's shutdown ends: its client should send it again, to another
#: instance behind the same address or to this one once restarted
SHUTTING_DOWN = (
    "the server is shutting down; send the request again (to another instance, or once it is back)"
)
_SHUTDOWN_HEADERS = {"Retry-After": "1", "Connection": "close"}  # the connection takes no next request
_V1 = "/v1/"
_OPENAI_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    502: "server_error",
    503: "server_error",
}
_STATUSES = {
    400: "the body is not JSON: not UTF-8, malformed, empty, or not sent as Content-Type: application/json",
    401: "missing or wrong API key",
    404: "no such model: GET /v1/models lists them",
    408: "the body stopped arriving halfway (the message says for how long); the connection is closed",
    413: "too many texts, a text too long, or a body too large (the message names the limit)",
    422: "invalid body (the message names the field)",
    502: "the embedding provider failed (named; details in the server log)",
    503: "too many texts waiting, or the server shutting down: retry after the Retry-After header's seconds",
}


class Health(BaseModel):
    """Answer of ``GET /health``: what is being served."""

    status: str
    n_docs: int
    dim: int
    backend: str
    mode: str
    model: str = Field(description="the model the documents were embedded with")
    query_model: str = Field(description="the model queries are embedded with (another one: cross-model)")


class Error(BaseModel):
    """Every refusal outside ``/v1``: one line saying what is wrong and, for a limit, what it is."""

    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every refusal under ``/v1``, as OpenAI's API writes it."""

    error: OpenAIErrorDetail


class Hit(BaseModel):
    """One retrieved document."""

    id: str = Field(description="document id")
    score: float = Field(description="cosine similarity of the adapted query and document vectors")


class SearchResponse(BaseModel):
    """Answer of ``POST /search``."""

    results: list[list[Hit]] = Field(description="one list per query, best first")


class EmbedResponse(BaseModel):
    """Answer of ``POST /embed``."""

    embeddings: list[list[float]] = Field(description="adapted, unit-norm vectors, one per text")
    dim: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens the base model's API bills (estimated); 0 for a local one")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """Answer of ``POST /v1/embeddings`` (OpenAI's format)."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """Answer of ``GET /v1/models``: the query side and the document side of the adapted model."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


@dataclass(frozen=True)
class Limits:
    """What one request may ask; the request schemas and their enforcement are both made from it."""

    max_batch: int = MAX_BATCH
    max_k: int = MAX_K
    max_chars: int = MAX_CHARS

    @property
    def max_body_bytes(self) -> int:
        """Largest body that can hold ``max_batch`` texts of ``max_chars`` (12 bytes a character: one
        beyond the BMP, an emoji, as JSON's escaped surrogate pair ``\\uXXXX\\uXXXX``, as
        ``json.dumps`` writes it by default)."""
        return self.max_batch * (12 * self.max_chars + 8) + 1024


def _token_ids(value: Any) -> bool:
    """Whether ``value`` is a non-empty list of integers (one text as token ids)."""
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _one_or_many(value: Any) -> Any:
    """OpenAI's ``input``: one text or a list of texts; token ids are refused, saying what to send."""
    if isinstance(value, str):
        return [value]
    if _token_ids(value) or (isinstance(value, list) and value and all(_token_ids(v) for v in value)):
        raise PydanticCustomError(
            "token_ids",
            "token ids are not accepted: send text (LangChain: OpenAIEmbeddings(..., "
            "check_embedding_ctx_length=False))",
        )
    return value


def _not_blank(value: str) -> str:
    """A search query must say something: a blank one ranks documents by nothing in particular."""
    if is_blank(value):
        raise PydanticCustomError("blank", BLANK_QUERY)
    return value


def _request_models(limits: Limits) -> dict[str, type[BaseModel]]:
    """The request bodies, with every limit in their JSON schema and enforced by the same fields."""
    text = Annotated[StrictStr, Field(max_length=limits.max_chars)]  # lone surrogates fail here too
    texts = Annotated[list[text], Field(min_length=1, max_length=limits.max_batch)]
    query = Annotated[text, AfterValidator(_not_blank)]
    strict = ConfigDict(strict=True, extra="forbid")
    search = pydantic_model(
        "SearchRequest",
        __config__=strict,
        __doc__="Body of ``POST /search``.",
        queries=(
            Annotated[list[query], Field(min_length=1, max_length=limits.max_batch)],
            Field(description="query texts, none blank"),
        ),
        k=(int, Field(10, ge=1, le=limits.max_k, description="results per query")),
    )
    embed = pydantic_model(
        "EmbedRequest",
        __config__=strict,
        __doc__="Body of ``POST /embed``.",
        queries=(texts, Field(description="texts to embed")),
        kind=(Literal["query", "document"], Field("query", description="embed them as queries or documents")),
    )
    string = {"type": "string", "maxLength": limits.max_chars}
    one_or_many = {
        "anyOf": [string, {"type": "array", "items": string, "minItems": 1, "maxItems": limits.max_batch}]
    }
    embeddings = pydantic_model(
        "EmbeddingsRequest",
        __config__=strict,
        __doc__="Body of ``POST /v1/embeddings`` (OpenAI's format).",
        input=(
            Annotated[texts, BeforeValidator(_one_or_many), WithJsonSchema(one_or_many)],
            Field(description="one text or a list of texts"),
        ),
        model=(StrictStr, Field(description="<name>-query or <name>-document (GET /v1/models)")),
        encoding_format=(
            Literal["float", "base64"],
            Field("float", description="base64: little-endian float32"),
        ),
        dimensions=(
            int | None,
            Field(
                None,
                ge=1,
                description="the served width, or a smaller size the adapter was trained at (fit --dims): "
                "the vectors' first coordinates, unit length again",
            ),
        ),
        user=(StrictStr | None, Field(None, description="accepted and ignored")),
    )
    return {"search": search, "embed": embed, "embeddings": embeddings}


def _error_body(
    path: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON of a refusal: OpenAI's shape under ``/v1`` (``code`` ``invalid_api_key`` for every 401,
    as OpenAI's), ``{"detail": ...}`` elsewhere."""
    if not path.startswith(_V1):
        return {"detail": message}
    code = "invalid_api_key" if status == 401 else code
    kind = _OPENAI_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(
    request: Request,
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    **headers: str,
) -> JSONResponse:
    return JSONResponse(
        _error_body(request.url.path, status, message, param, code), status, headers=headers or None
    )


class Refusal(HTTPException):
    """A refusal that names the field at fault (``param``) or an OpenAI error ``code``, which a ``/v1``
    answer carries (``{"detail": ...}`` elsewhere has room for neither): a client of OpenAI's API
    branches on them (``code == "model_not_found"``) where a plain 404 or 422 would leave it guessing."""

    def __init__(
        self, status: int, detail: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(status, detail)
        self.param = param
        self.code = code


def _where(loc: Sequence[Any]) -> str:
    """``("body", "queries", 1)`` -> ``queries[1]``. A field name the client made up (an extra key)
    that is not a short identifier is shown JSON-escaped and cut: the message stays one line."""

    def name(part: Any) -> str:
        if isinstance(part, int):
            return f"[{part}]"
        text = str(part)
        return f".{text}" if text.isidentifier() and len(text) <= 40 else f".{json.dumps(text[:40])}"

    return "".join(name(p) for p in loc if p != "body").lstrip(".") or "body"


def _validation_refusal(errors: Sequence[Mapping[str, Any]]) -> tuple[int, str, str | None]:
    """(status, one line, field) for FastAPI's and pydantic's errors: 400 for a body that is not JSON,
    413 for a size limit, 422 for the rest.

    The client's input is never echoed (it may hold NaN, lone surrogates or 8,000 characters).
    """
    body = errors[0]  # a body that is not JSON is the one error FastAPI reports
    if body["type"] == "json_invalid":  # FastAPI's own: loc ("body", character), ctx the decoder's reason
        return 400, f"body: not valid JSON at character {body['loc'][-1]}: {body['ctx']['error']}", None
    if body["loc"] == ("body",) and body["type"] == "missing":
        return 400, "body is empty; send a JSON object of the documented fields", None
    if body["loc"] == ("body",) and isinstance(body["input"], bytes):  # FastAPI parses only declared JSON
        return 400, "body was not sent as JSON; send the header Content-Type: application/json", None
    sized = [e for e in errors if e["type"] in ("too_long", "string_too_long")]
    first = (sized or errors)[0]
    where, ctx = _where(first["loc"]), first.get("ctx") or {}
    if first["type"] == "too_long":
        message = f"{ctx['actual_length']} texts in {where}; this server takes at most {ctx['max_length']}"
    elif first["type"] == "string_too_long":
        message = (
            f"{where} has {len(first['input'])} characters; this server takes at most {ctx['max_length']}"
        )
    elif first["type"] == "string_unicode":  # a lone surrogate ("\ud800"): no tokenizer takes it
        message = f"{where}: not valid Unicode (a lone surrogate); send UTF-8 text"
    elif first["type"] == "less_than_equal":
        message = f"{where} = {first['input']} is above this server's limit of {ctx['le']}"
    else:
        message = f"{where}: {first['msg']}"
    named = []
    if first["type"] == "missing":  # a misspelt field ("query" for "queries") is the usual cause: name it
        named = [e for e in errors if e["type"] == "extra_forbidden"][:3]
        if named:
            message += f"; unknown field {', '.join(_where(e['loc']) for e in named)} sent instead"
    more = len(errors) - 1 - len(named)
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return (413 if sized else 422), message, where


def _unparsed(cause: BaseException | None) -> str | None:
    """One line for a body the JSON decoder refused other than for its syntax (FastAPI answers those
    400 "There was an error parsing the body", the decoder's error its cause); None for other causes."""
    if isinstance(cause, UnicodeDecodeError):
        return f"body is not UTF-8 (byte {cause.start} cannot be decoded); send JSON encoded as UTF-8"
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply to parse; send a JSON object of the documented fields"
    if isinstance(cause, ValueError):  # Python converts integers of at most so many digits
        return f"body: a number has over {sys.get_int_max_str_digits()} digits; no field takes one that long"
    return None


class _BodyLimit:
    """Answer 413 to request bodies over ``max_bytes`` before anything parses them (chunked ones too),
    and 408 to one that goes ``idle_s`` seconds without new bytes: a stalled upload would otherwise
    hold its connection forever, and a graceful shutdown that waits for it."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_s = idle_s

    async def _refuse(self, scope: Scope, send: Send, status: int = 413, detail: str = "") -> None:
        """Answer 413 (too large), 408 (stalled) or 400 with ``detail``; a 408 closes the connection
        too: the rest of its body, were it to come, could not be told from a next request."""
        stalled = status == 408
        detail = detail or (
            f"request body stopped arriving for {self.idle_s:g} s; send the whole body at once"
            if stalled
            else f"request body over {self.max_bytes} bytes; send fewer or shorter texts per request"
        )
        body = json.dumps(_error_body(scope["path"], status, detail)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(b"connection", b"close")] if stalled else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except asyncio.TimeoutError:
                await self._refuse(scope, send, 408)
                return
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        encoding = json.detect_encoding(body) if body else "utf-8"
        if encoding not in ("utf-8", "utf-8-sig"):  # json.loads would read UTF-16 and UTF-32 too
            detail = f"body is {encoding.upper()}, not UTF-8; send JSON encoded as UTF-8"
            await self._refuse(scope, send, 400, detail)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _named(scope: Scope) -> str:
    """A request as the server log names it: ``POST /search from 127.0.0.1:51234``."""
    client = scope.get("client")
    return f"{scope['method']} {scope['path']}" + (f" from {client[0]}:{client[1]}" if client else "")


class _CutByShutdown:
    """Answer a request that the server's shutdown cancels (uvicorn cancels what still runs
    :data:`GRACEFUL_SHUTDOWN_S` after a SIGTERM) with the 503 :data:`SHUTTING_DOWN`, and log one line
    naming it: uvicorn logged the ``CancelledError`` with its traceback and answered 500, as it does
    a bug. ``stopping`` is set once the shutdown has begun; a cancellation before it goes on as it came."""

    def __init__(self, app: ASGIApp, stopping: threading.Event) -> None:
        self.app = app
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, answering = time.monotonic(), False

        async def watched(message: Message) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            elapsed = time.monotonic() - started
            cut = f"{_named(scope)} cut off by the shutdown, unfinished after {elapsed:.1f} s"
            if answering:  # half an answer cannot become a 503: uvicorn closes the connection
                log.warning("%s, halfway through its answer", cut)
                return
            log.warning("%s; answered 503", cut)  # unless uvicorn closed the connection already
            await _error(Request(scope), 503, SHUTTING_DOWN, **_SHUTDOWN_HEADERS)(scope, receive, send)


class Busy(Exception):
    """More texts are waiting than the server takes: the client should retry shortly (503)."""


def text_units(texts: Sequence[str]) -> int:
    """The work ``texts`` queue, in short texts: one for a text of up to :data:`TEXT_UNIT_CHARS`
    characters, one more per that many beyond, at most :data:`MAX_TEXT_UNITS`. Counting texts alone
    let 35 requests of 64 long texts in (each took a model 6 s), so the last waited over three
    minutes behind a limit meant for queries."""
    return sum(min(max(1, -(-len(text) // TEXT_UNIT_CHARS)), MAX_TEXT_UNITS) for text in texts)


class Rejected(Exception):
    """The embedding model cannot take one of the request's texts (422); ``where`` names it."""

    def __init__(self, where: int, reason: str) -> None:
        super().__init__(reason)
        self.where = where


@dataclass
class _Job:
    texts: list[str]
    kind: Kind
    k: int | None  # None: vectors only
    units: int  # text_units(texts)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass
class _Lane:
    """The requests of one model (both sides, unless the adapter is cross-model) and its workers."""

    workers: int
    waiting: queue.SimpleQueue[_Job] = field(default_factory=queue.SimpleQueue)
    running: int = 0


class Batcher:
    """Merges the texts of concurrent requests into one embedding call and one FAISS search.

    A worker thread takes the first waiting request, then every request that arrives within
    ``window_s`` or is already waiting, up to ``max_texts`` texts, embeds them in one
    :meth:`AdaptedIndex.embed <search_adaptor.index.AdaptedIndex.embed>` call per side (which adapts
    each row alone, and pads no text to a longer one), and searches the query vectors once per
    distinct ``k`` (FAISS scores each row alone).
    Once ``stopping`` is set (the server is shutting down) an API model tries each accepted request
    once and retries none (:func:`~search_adaptor.encoders.base.cancelled_by`): a failed try fails
    at once with :class:`~search_adaptor.encoders.http.Cancelled` rather than wait for a retry the
    shutdown would cut off; a local model goes on as before.
    Each model has its own queue and one worker per call it may have in flight (its
    ``max_concurrency``: one for a local model); workers stop when idle and start again on demand.
    A cross-model index's two models are two such lanes: a side never runs more calls at once than
    its model takes (an API's connection pool, a local model's lock) nor fewer (one count for both
    held an API query model to a local documents' model's one call, or sent the local model's batches
    to several workers, so each merged fewer requests), and a slow call of one model never holds up
    the other's requests.

    Parameters
    ----------
    index : AdaptedIndex
    max_texts : int
        Texts per merged call (a single larger request is taken alone).
    window_s : float
        Seconds a worker waits for more requests after the first one.
    max_pending : int
        Texts allowed to wait, counted by :func:`text_units`; a request beyond it raises :class:`Busy`
        at once. A request cancelled while it waits (its client went away) is dropped unanswered.
    stopping : threading.Event, optional
        Set when the server begins to shut down (a new, unset one by default).
    """

    def __init__(
        self,
        index: AdaptedIndex,
        max_texts: int,
        window_s: float,
        max_pending: int,
        stopping: threading.Event | None = None,
    ) -> None:
        self.index = index
        self.stopping = stopping or threading.Event()
        self.max_texts = max_texts
        self.window_s = window_s
        self.max_pending = max_pending
        self._lanes: dict[Kind, _Lane] = {}
        for kind in KINDS:
            encoder = index.encoder_for(kind)
            shared = [k for k in self._lanes if index.encoder_for(k) is encoder]
            self._lanes[kind] = (
                self._lanes[shared[0]] if shared else _Lane(max(1, int(encoder.max_concurrency)))
            )
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def workers(self) -> dict[Kind, int]:
        """Most workers (calls in flight) per side; the two sides share them when one model embeds both."""
        return {kind: lane.workers for kind, lane in self._lanes.items()}

    def submit(self, texts: list[str], kind: Kind, k: int | None = None) -> concurrent.futures.Future:
        """Queue a request; its future holds the vectors (``k`` None) or the hits.

        Raises
        ------
        Busy
            ``max_pending`` texts are already waiting.
        """
        job, lane = _Job(texts, kind, k, text_units(texts)), self._lanes[kind]
        with self._lock:
            if self._pending and self._pending + job.units > self.max_pending:
                per = f"a text counts once per {TEXT_UNIT_CHARS} characters, {MAX_TEXT_UNITS} times at most"
                raise Busy(f"{self._pending} texts' worth of work waits ({per}); retry in a second")
            self._pending += job.units
            lane.waiting.put(job)
            if lane.running < lane.workers:
                lane.running += 1
                worker = threading.Thread(
                    target=self._work, args=(lane,), name="search-adaptor-batcher", daemon=True
                )
                worker.start()
        return job.future

    def _work(self, lane: _Lane) -> None:
        carried: _Job | None = None
        while True:
            try:
                first = carried or lane.waiting.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:  # submit() queues under this lock: nothing is left behind
                    if lane.waiting.empty():
                        lane.running -= 1
                        return
                continue
            if self._dropped(first):
                carried = None
                continue
            jobs, carried = self._gather(lane, first)
            with self._lock:
                self._pending -= sum(job.units for job in jobs)
            self._answer([job for job in jobs if job.future.set_running_or_notify_cancel()])

    def _dropped(self, job: _Job) -> bool:
        """Whether ``job`` was cancelled while it waited (its client went away); its texts then leave
        the queue's count unembedded."""
        if not job.future.cancelled():
            return False
        with self._lock:
            self._pending -= job.units
        return True

    def _gather(self, lane: _Lane, first: _Job) -> tuple[list[_Job], _Job | None]:
        """``first`` and the requests of its lane that fit after it (cancelled ones dropped); the one
        that did not fit is carried over."""
        jobs, size = [first], len(first.texts)
        deadline = time.monotonic() + self.window_s
        while size < self.max_texts:
            try:
                job = lane.waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if self._dropped(job):
                continue
            if size + len(job.texts) > self.max_texts:
                return jobs, job
            jobs.append(job)
            size += len(job.texts)
        return jobs, None

    def _answer(self, jobs: list[_Job]) -> None:
        for kind in {job.kind for job in jobs}:
            side = [job for job in jobs if job.kind == kind]
            try:
                self._answer_side(side, kind)
            except Exception as exc:  # the encoder failed (or a bug): every request of the call hears it
                for job in side:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _answer_side(self, jobs: list[_Job], kind: Kind) -> None:
        texts = [text for job in jobs for text in job.texts]
        rejected: dict[int, str] = {}
        try:
            with cancelled_by(self.stopping, retries_only=True):
                vectors = self.index.embed(texts, kind)
        except InputsRejected as exc:  # only the requests holding a rejected text fail
            vectors, rejected = exc.vectors, exc.rejected
        starts = np.cumsum([0] + [len(job.texts) for job in jobs])
        searches: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            bad = [row - starts[i] for row in sorted(rejected) if starts[i] <= row < starts[i + 1]]
            if bad:
                job.future.set_exception(Rejected(int(bad[0]), rejected[starts[i] + bad[0]]))
            elif job.k is None:
                job.future.set_result(vectors[starts[i] : starts[i + 1]])
            else:
                searches.setdefault(job.k, []).append(i)
        for k, members in searches.items():
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
            hits = self.index.search_adapted(vectors[rows], k)
            at = 0
            for i in members:
                jobs[i].future.set_result(hits[at : at + len(jobs[i].texts)])
                at += len(jobs[i].texts)


def create_app(
    index: AdaptedIndex,
    api_key: str | None = None,
    *,
    max_batch: int = MAX_BATCH,
    max_k: int = MAX_K,
    max_chars: int = MAX_CHARS,
    retry_budget_s: float | None = RETRY_BUDGET_S,
    model_name: str = MODEL_NAME,
    batch_window_s: float = BATCH_WINDOW_S,
    max_batch_texts: int = MAX_BATCH_TEXTS,
) -> FastAPI:
    """A FastAPI app searching ``index``.

    Concurrent requests are gathered into one encoder call and one index search per batch, so
    throughput grows with the number of clients; an answer differs from the unbatched one only by
    the encoder's rounding (a local model's last float32 bits; see the module's docstring).

    Parameters
    ----------
    index : AdaptedIndex
        Its encoders (the query model and the documents', two models for a cross-model adapter) are
        created and each local one loaded here, so a missing API key or model fails at start-up and
        the first request of either side is not the one that waits for a model to load.
    api_key : str, optional
        When set, every endpoint but ``/health`` and the docs needs ``Authorization: Bearer
        <api_key>`` (compared in constant time); others get 401.
    max_batch, max_k, max_chars : int
        Most texts per request, results per query, and characters per text (413/422 beyond).
    retry_budget_s : float, optional
        Seconds one call of an API embedding model may take, retries included, when the index
        recreates that model from the manifest (a model of either side given to the index, or to
        ``build_index``, is used as made, key and root included); a failing provider then costs a
        request this long, not minutes. None: the provider's own.
    model_name : str
        ``/v1`` serves ``<model_name>-query`` and ``<model_name>-document``.
    batch_window_s, max_batch_texts : float, int
        How long a batch waits for more requests after its first, and its most texts.

    Returns
    -------
    FastAPI
        Its ``state.stopping`` (a :class:`threading.Event`) is for the server running it to set when
        it begins to shut down (:func:`serve` sets it on SIGTERM and Ctrl-C; another host sets it from
        its own shutdown hook): from then on an API model tries each request once and retries none;
        a failed try, and any request the server then cancels, is answered 503 :data:`SHUTTING_DOWN`
        with a one-line log naming them (not a ``CancelledError`` traceback and a 500).
    """
    if retry_budget_s is not None:  # the index gives it to its API models only (of one or both sides)
        index.configure_encoder(retry_budget_s=retry_budget_s)
    warmed: list[Encoder] = []
    for kind in KINDS:  # each local model loads now, not on the first request of its side; an API bills
        encoder = index.encoder_for(kind)
        if encoder.provider in API_CLASSES or any(encoder is done for done in warmed):
            continue
        warmed.append(encoder)
        with contextlib.suppress(InputsRejected):  # loaded is what counts, not what it makes of the text
            index.embed(["warm-up"], kind)
    documents_model, query_model = index.encoder.model, index.query_encoder.model
    served = (  # a cross-model index names both: a client choosing a side needs to know whose it is
        f"documents with an adapted {documents_model} embedding model"
        if index.query_encoder is index.encoder
        else f"documents embedded by {documents_model}, queries by {query_model} adapted to them"
    )
    limits = Limits(max_batch, max_k, max_chars)
    models = _request_models(limits)
    SearchRequest, EmbedRequest, EmbeddingsRequest = models["search"], models["embed"], models["embeddings"]
    stopping = threading.Event()
    batcher = Batcher(
        index, max(max_batch_texts, max_batch), batch_window_s, MAX_PENDING_BATCHES * max_batch, stopping
    )
    sides: dict[str, Kind] = {f"{model_name}-query": "query", f"{model_name}-document": "document"}
    created = int(time.time())
    app = FastAPIOffline(
        title="search-adaptor",
        version=__version__,
        description=(
            f"Search {index.n_docs} {served}. Limits per request: {max_batch} texts, "
            f"{max_chars} characters per text, k <= {max_k}."
        ),
    )
    app.state.stopping = stopping
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes, idle_s=BODY_IDLE_S)
    app.add_middleware(_CutByShutdown, stopping=stopping)  # outside: a body being read is cut too
    bearer = HTTPBearer(auto_error=False, description="the key given to `search-adaptor serve`")
    expected = api_key.encode() if api_key else b""

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = credentials.credentials.encode() if credentials else b""
        if not (credentials and hmac.compare_digest(given, expected)):
            raise HTTPException(
                401,
                "missing or wrong API key; send the header Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded: list[Any] = [Depends(authorize)] if api_key else []

    def responses(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
        shown = [s for s in statuses if s != 401 or api_key]
        return {s: {"model": model, "description": _STATUSES[s]} for s in shown}

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message, where = _validation_refusal(exc.errors())
        return _error(request, status, message, where)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = _unparsed(exc.__cause__) if exc.status_code == 400 else None
        if isinstance(exc, Refusal):
            return _error(request, exc.status_code, str(exc.detail), exc.param, exc.code)
        if exc.status_code == 404 and request.url.path.startswith(_V1):  # no route: as OpenAI answers it
            message = f"Invalid URL ({request.method} {request.url.path})"
        return _error(request, exc.status_code, message or str(exc.detail), **(exc.headers or {}))

    async def answer(request: Request, job: concurrent.futures.Future) -> Any:
        """``job``'s result; a job whose client closes the connection while it waits is cancelled, so
        the model never embeds texts nobody will read (abandoned long requests held a small one
        behind them for minutes)."""
        waiting = asyncio.wrap_future(job)
        while True:
            try:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            except asyncio.CancelledError:  # the shutdown cut it: the job goes too, as awaiting it did
                waiting.cancel()
                raise
            if done:
                return waiting.result()
            if await request.is_disconnected() and job.cancel():  # (False once a worker took it)
                log.warning(
                    "%s: the client closed the connection; its request was dropped", _named(request.scope)
                )
                raise HTTPException(499, "the client closed the connection")

    async def run(request: Request, texts: list[str], kind: Kind, k: int | None = None) -> Any:
        """The batcher's answer for one request, its failures turned into refusals."""
        try:
            try:
                return await answer(request, batcher.submit(texts, kind, k))
            except BatchCutShort as exc:  # (part answered, kept nowhere here): its failure
                raise exc.cause from None
        except Busy as exc:
            raise HTTPException(503, f"the server is busy: {exc}", headers={"Retry-After": "1"}) from None
        except Rejected as exc:
            where = f"{'input' if request.url.path.startswith(_V1) else 'queries'}[{exc.where}]"
            raise Refusal(422, f"{where} cannot be embedded: {exc}", param=where) from None
        except Cancelled as exc:  # the shutdown stopped its API model (Batcher): no retry was sent
            log.warning("%s stopped by the shutdown (%s); answered 503", _named(request.scope), exc)
            raise HTTPException(503, SHUTTING_DOWN, headers=_SHUTDOWN_HEADERS) from None
        except EncoderError as exc:
            log.error("embedding failed: %s", exc)
            provider = index.encoder_for(kind).provider
            raise HTTPException(
                502, f"the embedding provider {provider} failed; the server log has the details"
            ) from None

    native = {"dependencies": guarded, "responses": responses(Error, 400, 401, 408, 413, 422, 502, 503)}

    @app.post("/search", response_model=SearchResponse, **native)
    async def search(request: Request, body: SearchRequest) -> dict[str, Any]:
        """Top-``k`` documents for each query text, best first."""
        hits: Hits = await run(request, body.queries, "query", body.k)
        return {"results": [[{"id": d, "score": s} for d, s in row] for row in hits]}

    def refuse_blank_queries(texts: list[str], kind: Kind, field: str) -> None:
        """A blank text embedded as a query is refused as ``/search`` refuses it: its vector is the
        empty text's, which ranks documents by nothing (a blank document may be embedded: corpora have
        empty ones)."""
        blank = next((i for i, text in enumerate(texts) if is_blank(text)), None) if kind == "query" else None
        if blank is not None:
            raise Refusal(422, f"{field}[{blank}]: {BLANK_QUERY}", param=f"{field}[{blank}]")

    @app.post("/embed", response_model=EmbedResponse, **native)
    async def embed(request: Request, body: EmbedRequest) -> dict[str, Any]:
        """Adapted, unit-norm vectors of the texts as queries or documents (cosine = inner product)."""
        refuse_blank_queries(body.queries, body.kind, "queries")
        vectors = await run(request, body.queries, body.kind)
        return {"embeddings": vectors.tolist(), "dim": int(vectors.shape[1])}

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        dependencies=guarded,
        responses=responses(OpenAIError, 400, 401, 404, 408, 413, 422, 502, 503),
    )
    async def embeddings(request: Request, body: EmbeddingsRequest) -> dict[str, Any]:
        """OpenAI's embeddings API: ``model`` ``<name>-query`` or ``<name>-document`` picks the side."""
        kind = sides.get(body.model)
        if kind is None:
            raise no_such_model(body.model)
        size = served_size(body.dimensions)
        refuse_blank_queries(body.input, kind, "input")
        vectors = await run(request, body.input, kind)
        if size is not None:  # a trained Matryoshka prefix, as OpenAI's `dimensions` shortens its vectors
            vectors = l2_normalize(np.ascontiguousarray(vectors[:, :size]))
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        tokens = index.encoder_for(kind).request_tokens(body.input, kind) or 0  # that side's model bills
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def served_size(dimensions: int | None) -> int | None:
        """The prefix ``dimensions`` asks for (None: the served width), refused where the adapter was
        never trained to give it, so a shorter vector never ranks worse in silence."""
        if dimensions is None or dimensions == index.dim:
            return None
        trained = sorted(m for m in index.adapter.fitted_params_["dims"] or () if m < index.dim)
        if dimensions < index.dim and dimensions in trained:
            return dimensions
        sizes = ", ".join(str(m) for m in [*trained, index.dim])
        full, trained_sizes = index.adapter.dim_, index.adapter.fitted_params_["dims"] or ()
        if index.dim < dimensions and (dimensions in trained_sizes or dimensions == full):
            build = "without --dim" if dimensions == full else f"with index --dim {dimensions}"
            why = (
                f" (the index was built with index --dim {index.dim}; an index built {build} from the "
                f"same adapter serves {dimensions})"
            )
        else:
            why = "" if trained else " (fit --dims trains smaller sizes)"
        raise Refusal(
            422,
            f"dimensions = {dimensions}: this model serves {sizes}{why}",
            param="dimensions",
        )

    def no_such_model(model: str) -> Refusal:
        """404 for a model this server does not serve, with OpenAI's code for it."""
        return Refusal(
            404, f"model {model!r} does not exist; this server has {', '.join(sides)}", code="model_not_found"
        )

    def card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "search-adaptor"}

    @app.get(
        "/v1/models", response_model=ModelList, dependencies=guarded, responses=responses(OpenAIError, 401)
    )
    async def list_models() -> dict[str, Any]:
        """The two sides of the adapted model, as OpenAI lists models."""
        return {"object": "list", "data": [card(name) for name in sides]}

    @app.get(
        "/v1/models/{model:path}",  # a name may hold a slash (serve --model-name org/model)
        response_model=ModelCard,
        dependencies=guarded,
        responses=responses(OpenAIError, 401, 404),
    )
    async def get_model(model: str) -> dict[str, Any]:
        """One side of the adapted model."""
        if model not in sides:
            raise no_such_model(model)
        return card(model)

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness and what is served; needs no key."""
        return {
            "status": "ok",
            "n_docs": index.n_docs,
            "dim": index.dim,
            "backend": index.manifest["backend"],
            "mode": index.adapter.fitted_params_["mode"],
            "model": str(index.manifest["encoder"].get("model") or index.manifest["encoder"]["fingerprint"]),
            "query_model": query_model,
        }

    return app


def serve(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    threads: int | None = None,
    retry_budget_s: float | None = RETRY_BUDGET_S,
    model_name: str = MODEL_NAME,
    base_url: str | None = None,
    query_base_url: str | None = None,
    ef_search: int | None = None,
    model: str | None = None,
    query_model: str | None = None,
) -> None:
    """``search-adaptor serve``: load the index folder and serve it with uvicorn until interrupted.

    ``api_key_env`` names the environment variable holding the key clients must send (never the key
    itself, which would show in process lists and shell history); serving a non-loopback address
    without one prints a warning. ``threads`` caps CPU threads of the model, adapter and FAISS;
    ``retry_budget_s`` and ``model_name`` are :func:`create_app`'s; ``base_url`` and ``query_base_url``
    reach the index's API models through other roots (:meth:`AdaptedIndex.configure_encoder`);
    ``ef_search`` widens an HNSW index's search for this server (:attr:`AdaptedIndex.ef_search`);
    ``model`` and ``query_model`` are the new places of its model folders (:func:`moved_models`).

    On SIGTERM or Ctrl-C the server stops accepting connections, lets requests in flight finish for
    up to :data:`GRACEFUL_SHUTDOWN_S` seconds, cuts off what is left and exits, so that no client, not
    even one that stalled halfway through a body, keeps a ``docker stop`` from ending it. An API
    model tries each request once after the signal and retries none; a request whose try fails, or
    one cut off, is answered 503 :data:`SHUTTING_DOWN` and named in one line of
    the log (``create_app``'s ``state.stopping``).
    """
    import uvicorn

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise ValueError(
                f"--api-key-env {api_key_env}: that environment variable is empty; "
                "set it to the key clients will send"
            )
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not key and not loopback:
        print(
            f"search-adaptor: warning: serving on {host} without an API key; anyone who can reach it "
            "can search (use --api-key-env)",
            file=sys.stderr,
        )
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
        import_faiss().omp_set_num_threads(threads)
    sock = _listen(host, port)  # before the model loads: a port in use is one line, not a false start
    try:
        index = AdaptedIndex.load(index_dir, **moved_models(index_dir, model, query_model))
        if ef_search is not None:  # this server's breadth; the folder keeps its own
            index.ef_search = ef_search
        if base_url or query_base_url:
            index.configure_encoder(base_url=base_url, query_base_url=query_base_url)
        app = create_app(index, api_key=key, retry_budget_s=retry_budget_s, model_name=model_name)
        print(
            f"search-adaptor: serving {index.n_docs} documents on http://{host}:{port} (OpenAPI docs at "
            f"/docs, OpenAI-compatible embeddings at /v1{'; API key required' if key else ''})",
            file=sys.stderr,
            flush=True,
        )
        config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                """Tell the app at the signal, not when uvicorn's shutdown cancels what is left."""
                app.state.stopping.set()
                super().handle_exit(sig, frame)

        Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for uvicorn to listen on, or a one-line error naming the fix."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: restarts work
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        fix = (
            "stop what holds that port, or choose another with --port"
            if exc.errno == errno.EADDRINUSE
            else "give --host an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)"
        )
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}") from None
    sock.set_inheritable(True)
    return sock
