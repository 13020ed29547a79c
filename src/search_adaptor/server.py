"""HTTP search over an :class:`~search_adaptor.index.AdaptedIndex` (FastAPI; ``search-adaptor serve``).

Endpoints: ``POST /search`` (top-k documents per query text), ``POST /embed`` (adapted query
vectors, e.g. for another vector database), ``GET /health`` (unauthenticated, for probes), and the
OpenAPI schema and docs FastAPI serves at ``/openapi.json`` and ``/docs``. With an API key every
``POST`` needs ``Authorization: Bearer <key>``. Batch size, ``k``, query length and body size are
bounded, so one request cannot exhaust the server; refusals are 413 (too much) or 422 (invalid),
with a message saying what the limit is.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import sys
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_adaptor import __version__
from search_adaptor.encoders import LOCAL
from search_adaptor.encoders.base import EncoderError
from search_adaptor.index import AdaptedIndex, import_faiss

MAX_BATCH = 64
MAX_K = 100
MAX_CHARS = 8192


class SearchRequest(BaseModel):
    """Body of ``POST /search``."""

    queries: list[str] = Field(min_length=1, description="query texts, embedded as queries")
    k: int = Field(10, ge=1, description="results per query")


class Hit(BaseModel):
    """One retrieved document."""

    id: str = Field(description="document id")
    score: float = Field(description="cosine similarity of the adapted query and document vectors")


class SearchResponse(BaseModel):
    """Answer of ``POST /search``."""

    results: list[list[Hit]] = Field(description="one list per query, best first")


class EmbedRequest(BaseModel):
    """Body of ``POST /embed``."""

    queries: list[str] = Field(min_length=1, description="query texts")


class EmbedResponse(BaseModel):
    """Answer of ``POST /embed``."""

    embeddings: list[list[float]] = Field(description="adapted, unit-norm query vectors")
    dim: int


class Health(BaseModel):
    """Answer of ``GET /health``: what is being served."""

    status: str
    n_docs: int
    dim: int
    backend: str
    mode: str
    model: str


class _BodyLimit:
    """Answer 413 to request bodies over ``max_bytes`` before anything parses them (chunked ones too)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        detail = f"request body over {self.max_bytes} bytes; send fewer or shorter queries per request"
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def create_app(
    index: AdaptedIndex,
    api_key: str | None = None,
    *,
    max_batch: int = MAX_BATCH,
    max_k: int = MAX_K,
    max_chars: int = MAX_CHARS,
) -> FastAPI:
    """A FastAPI app searching ``index``.

    Parameters
    ----------
    index : AdaptedIndex
        Its encoder is created (and a local model loaded) here, so a missing API key or model fails
        at start-up rather than on the first request.
    api_key : str, optional
        When set, ``POST`` requests need ``Authorization: Bearer <api_key>`` (compared in constant
        time); others get 401. ``/health`` stays open for load-balancer probes.
    max_batch, max_k, max_chars : int
        Most queries per request, results per query, and characters per query (413/422 beyond).
    """
    encoder = index.encoder
    if encoder.provider == LOCAL:  # load the model now: free, and the first request does not pay for it
        index.embed_queries(["warm-up"])
    app = FastAPI(
        title="search-adaptor",
        version=__version__,
        description=f"Search {index.n_docs} documents with an adapted {encoder.model} embedding model.",
    )
    app.add_middleware(_BodyLimit, max_bytes=max_batch * (6 * max_chars + 8) + 1024)  # 6: JSON \uXXXX
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

    def check(queries: list[str]) -> None:
        if len(queries) > max_batch:
            raise HTTPException(
                413, f"{len(queries)} queries in one request; this server takes at most {max_batch}"
            )
        for i, text in enumerate(queries):
            if len(text) > max_chars:
                raise HTTPException(
                    413, f"queries[{i}] has {len(text)} characters; this server takes at most {max_chars}"
                )

    def embed(queries: list[str]) -> Any:
        check(queries)
        try:
            return index.embed_queries(queries)
        except EncoderError as exc:
            raise HTTPException(502, f"embedding model failed: {exc}") from exc

    @app.post("/search", response_model=SearchResponse, dependencies=guarded)
    def search(request: SearchRequest) -> dict[str, Any]:
        """Top-``k`` documents for each query text, best first."""
        if request.k > max_k:
            raise HTTPException(422, f"k = {request.k} is above this server's limit of {max_k}")
        hits = index.search_adapted(embed(request.queries), request.k)
        return {"results": [[{"id": d, "score": s} for d, s in row] for row in hits]}

    @app.post("/embed", response_model=EmbedResponse, dependencies=guarded)
    def embed_endpoint(request: EmbedRequest) -> dict[str, Any]:
        """Adapted, unit-norm query vectors (cosine against the indexed documents)."""
        vectors = embed(request.queries)
        return {"embeddings": vectors.tolist(), "dim": int(vectors.shape[1])}

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        """Liveness and what is served; needs no key."""
        return {
            "status": "ok",
            "n_docs": index.n_docs,
            "dim": index.dim,
            "backend": index.manifest["backend"],
            "mode": index.adapter.mode,
            "model": encoder.model,
        }

    return app


def serve(
    index_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_env: str | None = None,
    threads: int | None = None,
) -> None:
    """``search-adaptor serve``: load the index folder and serve it with uvicorn until interrupted.

    ``api_key_env`` names the environment variable holding the key clients must send (never the key
    itself, which would show in process lists and shell history); serving a non-loopback address
    without one prints a warning. ``threads`` caps CPU threads of the model, adapter and FAISS.
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
    index = AdaptedIndex.load(index_dir)
    app = create_app(index, api_key=key)
    print(
        f"search-adaptor: serving {index.n_docs} documents on http://{host}:{port} "
        f"(OpenAPI docs at /docs{'; API key required' if key else ''})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port)
