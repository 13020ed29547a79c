"""Shared HTTP machinery of the embedding-API providers: one place for retries, backoff and errors.

Why we speak each provider's wire format instead of using the official SDKs
---------------------------------------------------------------------------
The OpenAI, Google, Cohere and Voyage SDKs each bring their own retry loop (their own attempt
counts, backoff and list of retryable statuses), their own timeouts and their own exception types.
Under our bounded-concurrency :class:`~search_adaptor.store.EmbeddingStore` they would fight our
policy: attempts multiply (SDK retries times ours), the server's ``Retry-After`` is consumed out of
our sight, retry counts cannot be shown in a progress bar, and a failure surfaces as one of a dozen
exception types. Each provider's embedding call is a single JSON ``POST``, small and stable, so we
send it ourselves with httpx and keep one retry policy, one error format, one place that keeps keys
out of messages, and no heavy SDK dependencies.

What is retried
---------------
- 408, 429 and 5xx responses, timeouts and connection errors, with exponential backoff and full
  jitter (``uniform(0, min(max_delay, base_delay * 2**n))``), or, when the server sends
  ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), at least that long;
- malformed 2xx bodies (not JSON, fields missing, wrong number of vectors, NaN/inf, wrong width):
  treated as a server fault, retried at most :attr:`RetryPolicy.malformed_retries` times.

Other 4xx statuses (bad request, bad key, unknown model) fail at once: retrying cannot fix them.
Every failure is one line of :class:`~search_adaptor.encoders.base.EncoderError` naming the
provider, the status and the server's own message, with any key or token scrubbed out.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx
import numpy as np

from search_adaptor.encoders.base import KINDS, Encoder, EncoderError, Kind, check_vectors

log = logging.getLogger(__name__)

T = TypeVar("T")
AuthHeaders = Callable[[], dict[str, str]]
Auto = Literal["auto"]

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_CONCURRENCY = 4
#: Characters per token assumed when estimating request sizes. English averages about 4 with the
#: providers' tokenizers; 3 over-estimates tokens, so requests stay under the documented caps.
CHARS_PER_TOKEN = 3.0
_RETRY_STATUSES = frozenset({408, 429})
_MAX_MESSAGE_CHARS = 400


class Secret:
    """An API key or access token that never shows in ``repr``, ``str``, logs or exceptions."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The raw value, for building a request header and nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def secret_from_env(
    provider: str, explicit: str | None, env_vars: Sequence[str], *, required: bool = True
) -> Secret | None:
    """The key passed in, else the first of ``env_vars`` that is set.

    Raises
    ------
    EncoderError
        When ``required`` and no key is found; the message names the variables to set.
    """
    value = explicit or next((os.environ[v] for v in env_vars if os.environ.get(v, "").strip()), None)
    if value and value.strip():
        return Secret(value.strip())
    if required:
        raise EncoderError(f"{provider}: no API key found; set {' or '.join(env_vars)} (or pass api_key=...)")
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up on one request.

    Parameters
    ----------
    max_attempts : int
        Attempts per request, the first one included.
    max_total_wait : float
        Seconds of sleeping between attempts allowed per request; a wait that would exceed it
        (including a long ``Retry-After``) ends the request with an error instead.
    base_delay, max_delay : float
        Full-jitter backoff: before retry ``n`` (from 0) sleep ``uniform(0, min(max_delay,
        base_delay * 2**n))`` seconds, unless the server said how long to wait.
    malformed_retries : int
        Retries allowed after a 2xx reply whose body cannot be used.
    """

    max_attempts: int = 8
    max_total_wait: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 60.0
    malformed_retries: int = 2

    def backoff(self, retry_index: int) -> float:
        """Full-jitter delay before retry number ``retry_index`` (0-based)."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**retry_index))


class MalformedResponse(ValueError):
    """A 2xx reply whose body is not the documented shape (retried as a server fault)."""


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be delta-seconds or an HTTP date (RFC 9110); ``retry-after-ms`` is the
    millisecond variant Azure OpenAI and OpenAI send. Returns ``None`` when neither is usable.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if lower.get("retry-after-ms"):
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
    except ValueError:
        pass
    value = lower.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _find_message(payload: Any) -> str | None:
    """The human-readable message in a provider's error body, whatever its nesting.

    Covers OpenAI/Azure ``{"error": {"message"}}``, Google ``{"error": {"code", "message",
    "status"}}``, Cohere ``{"message"}``, Voyage ``{"detail"}`` (a string, or FastAPI's list of
    ``{"msg"}``), text-embeddings-inference and Ollama ``{"error": "..."}``.
    """
    if isinstance(payload, str):
        return payload or None
    if isinstance(payload, list):
        return next((m for m in map(_find_message, payload) if m), None)
    if isinstance(payload, dict):
        for key in ("error", "message", "detail", "msg"):
            found = _find_message(payload.get(key))
            if found:
                return found
    return None


def server_message(response: httpx.Response) -> str:
    """The provider's error message from a response, or the start of its raw body."""
    text = response.text
    try:
        found = _find_message(json.loads(text))
    except ValueError:
        found = None
    return found or text.strip() or "(empty body)"


def _one_line(text: str, secrets: Sequence[str]) -> str:
    """Collapse whitespace, scrub every secret, and cap the length: fit for one log/exception line."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The credential values inside auth headers (with and without a ``Bearer`` prefix)."""
    out = []
    for value in headers.values():
        out.append(value)
        if value.lower().startswith("bearer "):
            out.append(value[7:])
    return out


class HttpClient:
    """Pooled, retrying JSON-over-HTTP client of one provider (thread-safe).

    Parameters
    ----------
    provider : str
        Name used at the start of every error and log line.
    base_url : str
        Prefix of every request path.
    auth : callable
        Returns the auth headers for the next request (called per attempt, so tokens can refresh).
    credential_hint : str
        Where the credential comes from (e.g. ``"$OPENAI_API_KEY"``), quoted on 401/403.
    timeout : float
        Seconds to wait for a reply (and at most 10 s to connect).
    retry : RetryPolicy, optional
        Retry limits; defaults to :class:`RetryPolicy()`.
    max_connections : int
        Size of the connection pool; match the encoder's ``max_concurrency``.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        auth: AuthHeaders,
        credential_hint: str,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.credential_hint = credential_hint
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._auth = auth
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": "search-adaptor"},
        )
        self._lock = threading.Lock()
        self._retries = 0

    @property
    def retries(self) -> int:
        """Retries made so far by every thread using this client (for progress bars)."""
        with self._lock:
            return self._retries

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def post(
        self,
        path: str,
        body: Any,
        parse: Callable[[Any], T],
        params: Mapping[str, str] | None = None,
    ) -> T:
        """POST ``body`` as JSON to ``base_url + path`` and return ``parse(reply_json)``.

        ``parse`` raises (``ValueError``, ``KeyError``, ``TypeError``, ``IndexError``,
        ``AttributeError`` or :class:`EncoderError`) on a body of the wrong shape; that is retried
        as a server fault, a limited number of times.

        Raises
        ------
        EncoderError
            One line, at once for a non-retryable status, else once the retry budget is spent.
        """
        url = f"{self.base_url}{path}"
        policy = self.retry
        waited = 0.0
        malformed = 0
        fault = ""
        secrets: list[str] = []
        for attempt in range(1, policy.max_attempts + 1):
            headers = self._auth()
            secrets = _header_secrets(headers)
            retry_after = None
            try:
                response = self._http.post(url, json=body, params=params, headers=headers)
            except httpx.TimeoutException:
                fault = f"no reply within {self.timeout:g}s (timeout)"
            except httpx.TransportError as exc:
                fault = f"connection error: {type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return parse(response.json())
                    except (ValueError, KeyError, TypeError, IndexError, AttributeError, EncoderError) as exc:
                        malformed += 1
                        fault = f"malformed reply to HTTP {status}: {type(exc).__name__}: {exc}"
                        if malformed > policy.malformed_retries:
                            raise EncoderError(
                                self._line(f"{fault} ({malformed} unusable replies from {url})", secrets)
                            ) from None
                elif status in _RETRY_STATUSES or status >= 500:
                    retry_after = parse_retry_after(response.headers)
                    fault = f"HTTP {status} from {url}: {server_message(response)}"
                else:
                    raise EncoderError(self._fatal(status, url, server_message(response), secrets)) from None
            if attempt == policy.max_attempts:
                break
            delay = policy.backoff(attempt - 1)
            if retry_after is not None:
                delay = retry_after * random.uniform(1.0, 1.1)  # never earlier than asked; spread threads
            if waited + delay > policy.max_total_wait:
                raise EncoderError(
                    self._line(
                        f"giving up: waiting {delay:.1f}s more would exceed max_total_wait="
                        f"{policy.max_total_wait:g}s after {attempt} attempt(s); last error: {fault}",
                        secrets,
                    )
                )
            with self._lock:
                self._retries += 1
            log.info(
                "%s",
                self._line(f"retry {attempt}/{policy.max_attempts - 1} in {delay:.2f}s: {fault}", secrets),
            )
            time.sleep(delay)
            waited += delay
        raise EncoderError(
            self._line(
                f"giving up after {policy.max_attempts} attempts ({waited:.1f}s waiting); "
                f"last error: {fault}",
                secrets,
            )
        )

    def _line(self, text: str, secrets: Sequence[str]) -> str:
        return _one_line(f"{self.provider}: {text}", secrets)

    def _fatal(self, status: int, url: str, message: str, secrets: Sequence[str]) -> str:
        """The one-line error for a status that retrying cannot fix."""
        if status in (401, 403):
            hint = f"authentication failed; check the credential in {self.credential_hint}"
        elif status == 404:
            hint = "not found; check the model name and the base URL"
        else:
            hint = "the request was rejected; not retried"
        return self._line(f"HTTP {status} from {url}: {message} ({hint})", secrets)


def prepare_texts(texts: Sequence[str], max_chars: int | None) -> list[str]:
    """Texts as sent: cut to ``max_chars`` characters, and empty strings replaced by one space.

    OpenAI and Voyage reject an empty input with a 400 that would fail the whole batch; a single
    space embeds as "nothing" without failing anything.
    """
    cut = [t if max_chars is None else t[:max_chars] for t in texts]
    return [t if t else " " for t in cut]


def estimate_tokens(text: str) -> int:
    """Conservative token count of ``text`` (see :data:`CHARS_PER_TOKEN`)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def plan_requests(texts: Sequence[str], max_inputs: int, max_tokens: int | None) -> list[slice]:
    """Split ``texts`` into consecutive requests of at most ``max_inputs`` texts and ``max_tokens``
    estimated tokens (a single text over the token cap goes alone; the provider truncates it or
    rejects it).
    """
    out: list[slice] = []
    start, tokens = 0, 0
    for i, text in enumerate(texts):
        cost = estimate_tokens(text) if max_tokens is not None else 0
        full = i - start >= max_inputs or (
            max_tokens is not None and i > start and tokens + cost > max_tokens
        )
        if full:
            out.append(slice(start, i))
            start, tokens = i, 0
        tokens += cost
    if start < len(texts):
        out.append(slice(start, len(texts)))
    return out


def rows_by_index(payload: Any, count: int) -> list[Any]:
    """Embeddings of an OpenAI-style ``{"data": [{"index", "embedding"}]}`` reply, in input order.

    Raises
    ------
    MalformedResponse
        When the indices are not exactly ``0..count-1``.
    """
    data = sorted(payload["data"], key=lambda item: item["index"])
    if [item["index"] for item in data] != list(range(count)):
        raise MalformedResponse(f"expected indices 0..{count - 1}, got {len(data)} item(s)")
    return [item["embedding"] for item in data]


class ApiEncoder(Encoder):
    """Base of the encoders that call an embedding API over HTTP.

    Subclasses set the class attributes below and implement :meth:`_request` (one HTTP request
    for at most ``max_inputs`` texts). This class resolves the key, owns the retrying client,
    splits each batch into requests within the provider's documented limits, and builds
    :meth:`config`. Each provider sets ``provider``, ``default_model``, ``default_base_url``,
    ``key_env`` (the environment variables holding the key, in order of preference),
    ``key_required``, ``auth_header`` and ``auth_scheme`` (how the key is sent), ``max_inputs``
    and ``max_request_tokens`` (documented limits per request) and ``default_max_chars``.
    ``retries`` counts the retries made so far, across threads.

    Parameters
    ----------
    model : str, optional
        Model id; ``default_model`` when omitted.
    api_key : str, optional
        The key; else read from the environment (``key_env``). Never stored in plain view.
    base_url : str, optional
        API root, for proxies, regional endpoints and tests; ``default_base_url`` when omitted.
    dimensions : int, optional
        Output width for models that can shorten their vectors; part of the fingerprint.
    batch_size : int, optional
        Texts per :meth:`encode_batch` call; defaults to the documented maximum per request.
        Smaller batches mean finer progress and less work lost when a run is killed.
    max_concurrency : int, optional
        Requests in flight at once (default 4).
    max_chars : int, None or "auto"
        Cut every text to this many characters before sending; ``None`` sends texts whole;
        ``"auto"`` uses the provider's default. Part of the fingerprint.
    max_request_tokens : int, None or "auto"
        Cap on estimated tokens per request; ``"auto"`` uses the documented cap.
    query_prompt, document_prompt : str
        Prefixes prepended to queries / documents (e.g. ``"query: "`` for E5 models behind an
        OpenAI-compatible server); part of the fingerprint.
    timeout : float
        Seconds to wait for one reply.
    retry : RetryPolicy, optional
        Retry limits.
    """

    provider = "api"
    default_model: str | None = None
    default_base_url = ""
    key_env: tuple[str, ...] = ()
    key_required = True
    auth_header = "authorization"
    auth_scheme = "Bearer "
    max_inputs = 96
    max_request_tokens: int | None = None
    default_max_chars: int | None = None

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        batch_size: int | None = None,
        max_concurrency: int | None = None,
        max_chars: int | Auto | None = "auto",
        max_request_tokens: int | Auto | None = "auto",
        query_prompt: str = "",
        document_prompt: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        model = model or self.default_model
        if not model:
            raise ValueError(f"{self.provider}: pass the model (or deployment) name")
        if dimensions is not None and dimensions <= 0:
            raise ValueError(f"{self.provider}: dimensions must be positive, got {dimensions}")
        self.model = model
        self.dimensions = dimensions
        self.max_inputs, documented_tokens = self._limits(model)
        self.max_request_tokens = documented_tokens if max_request_tokens == "auto" else max_request_tokens
        self.max_chars = self.default_max_chars if max_chars == "auto" else max_chars
        self.batch_size = batch_size or self.max_inputs
        self.max_concurrency = max_concurrency or DEFAULT_MAX_CONCURRENCY
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.timeout = timeout
        auth, hint = self._credentials(api_key)
        self._client = HttpClient(
            self.provider,
            self._resolve_base_url(base_url),
            auth=auth,
            credential_hint=hint,
            timeout=timeout,
            retry=retry,
            max_connections=self.max_concurrency,
        )

    # -- hooks for subclasses -------------------------------------------------------------------

    def _limits(self, model: str) -> tuple[int, int | None]:
        """Documented (max inputs, max tokens) per request for ``model``."""
        return self.max_inputs, self.max_request_tokens

    def _credentials(self, api_key: str | None) -> tuple[AuthHeaders, str]:
        """(auth header factory, where the credential comes from) from the key or the environment."""
        secret = secret_from_env(self.provider, api_key, self.key_env, required=self.key_required)
        hint = " or ".join(f"${v}" for v in self.key_env) or "api_key"
        if secret is None:
            return dict, hint
        header = {self.auth_header: f"{self.auth_scheme}{secret.reveal()}"}
        return header.copy, hint

    def _resolve_base_url(self, base_url: str | None) -> str:
        """The API root: the one passed in, else the provider's public endpoint."""
        return base_url or self.default_base_url

    def _wire_config(self) -> dict[str, Any]:
        """Provider-specific settings that change the vectors (mode fields, truncation...)."""
        return {}

    @abstractmethod
    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Embed one request's worth of texts (already prefixed, cut and within the limits)."""

    # -- shared behaviour -------------------------------------------------------------------------

    @property
    def retries(self) -> int:
        """Retries made so far across all threads (show it in a progress bar)."""
        return self._client.retries

    @property
    def base_url(self) -> str:
        return self._client.base_url

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def config(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "dimensions": self.dimensions,
            "max_chars": self.max_chars,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            **self._wire_config(),
        }

    def _prepared(self, texts: Sequence[str], kind: Kind) -> list[str]:
        """The texts as this encoder sends them: with the kind's prompt, cut to ``max_chars``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        return prepare_texts([prompt + t for t in texts], self.max_chars)

    def request_tokens(self, texts: Sequence[str], kind: Kind) -> int:
        """Estimated tokens the provider would bill for embedding ``texts`` (see :data:`CHARS_PER_TOKEN`)."""
        return sum(estimate_tokens(t) for t in self._prepared(texts, kind))

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        prepared = self._prepared(texts, kind)
        parts = [
            self._request(prepared[s], kind)
            for s in plan_requests(prepared, self.max_inputs, self.max_request_tokens)
        ]
        if not parts:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        return np.concatenate(parts)

    def _vectors(self, rows: Any, count: int) -> np.ndarray:
        """Check one reply's embeddings: a list of ``count`` finite, non-empty rows of the asked width.

        Raises
        ------
        MalformedResponse or EncoderError
            Either is retried as a server fault by :meth:`HttpClient.post`.
        """
        if not isinstance(rows, list):
            raise MalformedResponse(f"expected a list of embeddings, got {type(rows).__name__}")
        arr = check_vectors(rows, f"{self.provider}:{self.model}", count)
        if arr.shape[1] == 0:
            raise MalformedResponse("the embeddings are empty")
        if self.dimensions is not None and arr.shape[1] != self.dimensions:
            raise MalformedResponse(f"asked for {self.dimensions}-d embeddings, got {arr.shape[1]}-d")
        return arr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"
