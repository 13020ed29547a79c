"""Shared HTTP machinery of the embedding-API providers: one place for retries, backoff, limits and errors.

Why we speak each provider's wire format instead of using the official SDKs
---------------------------------------------------------------------------
The OpenAI, Google, Cohere and Voyage SDKs each bring their own retry loop (their own attempt
counts, backoff and list of retryable statuses), their own timeouts and their own exception types.
Under our bounded-concurrency :class:`~search_adaptor.store.EmbeddingStore` they would fight our
policy: attempts multiply (SDK retries times ours), the server's ``Retry-After`` is consumed out of
our sight, retry counts cannot be shown in a progress bar, and a failure surfaces as one of a dozen
exception types. Each provider's embedding call is a single JSON ``POST``, small and stable, so we
send it ourselves with httpx and keep one retry policy, one error format, one place that keeps keys
out of messages, and no heavy SDK dependencies. ``tests/test_sdk_parity.py`` replays requests
recorded from the official SDKs and checks that ours match them field by field.

What is retried
---------------
The statuses the official SDKs retry: 408, 409, 429 and 5xx, unless the server says otherwise with
``x-should-retry: false`` (``x-should-retry: true`` makes any status retryable), plus timeouts and
connection errors. The wait is exponential backoff with full jitter (``uniform(0, min(max_delay,
base_delay * 2**n))``), or, when the server says how long to wait, at least that long: from
``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date), ``x-ratelimit-reset`` (Cohere: a Unix
time) or a Google ``RetryInfo.retryDelay`` in the error body (a wait of 0, or a date already past,
is no hint: the backoff applies). Malformed 2xx bodies (not JSON, fields missing, wrong number of
vectors or of numbers in one, wrong width, no usable vector at all) are treated as a server fault
and retried at most :attr:`RetryPolicy.malformed_retries` times. A reply that is usable but for
some vectors (NaN/inf, or all zeros) keeps the others, and only those texts are sent again (then
retried as above: a text that keeps coming back so ends the run with a line naming it, the rest
kept), so one bad text does not cost its whole batch again.
:attr:`RetryPolicy.budget_s` bounds the seconds one request may take, attempts and waits together
(a server answering its own clients wants a short one).

Other 4xx statuses (bad request, bad key, unknown model) fail at once: retrying cannot fix them.
A rejection that says one input is too long (413, or a 400/422 whose message says so) is raised
as :class:`InputTooLong`, so that :class:`ApiEncoder` can split the batch, embed the rest and name
the text that cannot go (:class:`~search_adaptor.encoders.base.InputsRejected`). One that says the
request's inputs together are over the provider's cap per request (OpenAI's 300,000 tokens,
Voyage's per-model batch total, Vertex's 20,000) is raised as :class:`RequestTooLarge`, and split
the same way: halves fit, and a text over the cap alone is named as a text too long is.

Interruption
------------
A run that is stopped (Ctrl-C) should neither pay for more requests nor wait minutes for a retry
loop. :func:`~search_adaptor.encoders.base.cancelled_by` marks the requests made in a block with a
:class:`threading.Event`
(the :class:`~search_adaptor.store.EmbeddingStore` gives each worker thread its run's event and
sets it on Ctrl-C): once it is set, no new request or retry of that block starts, and a backoff
wait ends at once, with :class:`Cancelled`. A request already on the wire is not cut: its reply
is paid for, so the store waits a moment for it and keeps its vectors.

Every failure is one line of :class:`~search_adaptor.encoders.base.EncoderError` naming the
provider, the status and the server's own message, with any key, token or credential from the URL
scrubbed out.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import email.utils
import functools
import json
import logging
import math
import os
import random
import re
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import httpx
import numpy as np

from search_adaptor.encoders.base import (
    BatchCutShort,
    EarlierVersion,
    Encoder,
    EncoderError,
    InputsRejected,
    Kind,
    cancel_event,
    check_kind,
    describe_item,
    without_direction,
)
from search_adaptor.images import ImageRef, Item, image_type

log = logging.getLogger(__name__)

T = TypeVar("T")
AuthHeaders = Callable[[], dict[str, str]]
Auto = Literal["auto"]

#: Seconds to wait for the reply to a small request; bigger requests get more (:func:`request_timeout`).
DEFAULT_TIMEOUT = 60.0
#: The most any automatic request timeout grows to (the OpenAI SDK's default timeout).
MAX_AUTO_TIMEOUT = 600.0
DEFAULT_MAX_CONCURRENCY = 4
#: Characters per token of English with the providers' tokenizers is about 4; 3 over-estimates
#: tokens. Used for cost estimates (``embed --dry-run``); limits use :func:`token_bound`.
CHARS_PER_TOKEN = 3.0
#: The most characters one token covers in the byte-level BPE vocabularies of OpenAI
#: (cl100k_base, o200k_base) and Voyage (voyage3_base): their longest entries are 128 bytes.
#: A text cut at ``context_tokens * LONGEST_TOKEN_CHARS`` still holds everything a provider that
#: truncates on its side can keep.
LONGEST_TOKEN_CHARS = 128
_RETRY_STATUSES = frozenset({408, 409, 429})
_MAX_MESSAGE_CHARS = 400
#: Messages of a 400/413/422 that reject one over-long input: OpenAI and Azure ("maximum context
#: length is 8192 tokens", "maximum input length"), vLLM, text-embeddings-inference ("must have
#: less than 512 tokens"), Google ("exceeds the maximum number of tokens"), Cohere and Voyage
#: ("too long", "too many tokens").
_TOO_LONG = re.compile(
    r"context length|input length|too long|too many tokens|less than \d+ tokens"
    r"|exceeds? (the )?(max\w*|limit)|maximum (number of )?tokens|token limit",
    re.IGNORECASE,
)
#: Messages of a 400 that reject a request for the tokens of all its inputs together, over the
#: provider's cap per request: OpenAI ("Requested 453357 tokens, max 300000 tokens per request"),
#: Voyage ("The max allowed tokens per submitted batch is 120000. Your batch has 124302 tokens
#: after truncation"), Vertex ("Unable to submit request because the input token count is 25123
#: but the model supports up to 20000", counted before ``autoTruncate`` cuts each text).
_REQUEST_TOO_LARGE = re.compile(
    r"tokens per (submitted )?(request|batch)"
    r"|input token count is \d+ but (the )?model (only )?supports up to",
    re.IGNORECASE,
)
#: Query parameter names that carry credentials (``key=``, ``api_key=``, ``sig=``, ``token=``...).
_FRAGMENT = 8  # characters of a secret that a message may not show in a row (_without_fragments)
_SECRET_PARAM = re.compile(r"key|token|secret|sig|passw|pwd|auth|credential|session", re.IGNORECASE)

# Token weights of one character, in thirds of a token (see :func:`token_bound`).
_ASCII_WEIGHT = np.full(128, 3, dtype=np.int64)
for _c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ":
    _ASCII_WEIGHT[ord(_c)] = 1
for _c in "0123456789":
    _ASCII_WEIGHT[ord(_c)] = 2


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


def env_value(*names: str) -> str | None:
    """The first of the environment variables ``names`` that is set and not blank, stripped."""
    return next((os.environ[v].strip() for v in names if os.environ.get(v, "").strip()), None)


def header_secret(provider: str, value: object, what: str, fix: str) -> Secret:
    """``value`` stripped of surrounding whitespace, as a :class:`Secret`, if an HTTP header can carry
    it: the one rule for every key and token, whether given, read from the environment or returned by
    a token provider.

    A line break or a non-ASCII character (a key read from a file, a token printed by a command with
    its newline) makes httpx fail with an error that prints the whole header value, escaped so that
    it is no longer scrubbed, and retrying cannot fix it; so it is refused here, in one line that says
    where (``what``, e.g. "the API key ($OPENAI_API_KEY)") and how to fix it, and never shows it.

    Raises
    ------
    EncoderError
        ``value`` is not a string, is blank, or holds a character no header can carry.
    """
    if not isinstance(value, str) or not value.strip():
        got = "nothing" if not isinstance(value, str) else "a blank string"
        raise EncoderError(f"{provider}: {what} is {got}, not a key or token; {fix}")
    value = value.strip()
    bad = next((i for i, c in enumerate(value) if not c.isascii() or not c.isprintable()), None)
    if bad is not None:
        raise EncoderError(
            f"{provider}: {what} has a character no HTTP header can carry at position {bad} (a line "
            f"break or a non-ASCII character, often from a copied file); {fix}"
        )
    return Secret(value)


def secret_from_env(
    provider: str, explicit: str | None, env_vars: Sequence[str], *, required: bool = True
) -> Secret | None:
    """The key passed in, else the first of ``env_vars`` that is set, checked by :func:`header_secret`.

    Raises
    ------
    EncoderError
        When ``required`` and no key is found (the message names the variables to set), or when the
        key found cannot go in a header.
    """
    value = (explicit or "").strip() or env_value(*env_vars)
    if value:
        where = "the api_key= given" if (explicit or "").strip() else f"${' or $'.join(env_vars)}"
        return header_secret(provider, value, f"the API key ({where})", "set it again")
    if required:
        raise EncoderError(
            f"{provider}: no API key found; set {' or '.join(env_vars)} (in Python, api_key= works too)"
        )
    return None


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Endpoint:
    """An API root split into what may be shown and what authenticates.

    ``public`` is the URL without user name, password or credential-bearing query parameters: the
    one written to configs, fingerprints, logs and errors. ``root`` (scheme, host, path) and
    ``params`` (all query parameters) make the requests; ``auth`` is the basic auth from the URL's
    user info; ``secrets`` are the values to scrub from any message, in all their forms
    (:func:`scrub_list`).
    """

    public: str
    root: str
    params: tuple[tuple[str, str], ...] = ()
    auth: tuple[str, str] | None = None
    secrets: tuple[str, ...] = ()

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url.strip())
        params = tuple(parse_qsl(parts.query, keep_blank_values=True))
        kept = [(k, v) for k, v in params if not _SECRET_PARAM.search(k)]
        secrets = [v for k, v in params if _SECRET_PARAM.search(k) and v]
        auth = None
        if parts.username is not None or parts.password is not None:
            auth = (unquote(parts.username or ""), unquote(parts.password or ""))
            token = (parts.username, auth[0]) if not auth[1] else ()  # https://TOKEN@host/
            basic = base64.b64encode(":".join(auth).encode()).decode()  # as httpx sends it; servers echo it
            secrets += [s for s in (parts.password, auth[1], *token, basic) if s]
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = None if _DEFAULT_PORTS.get(parts.scheme.lower()) == parts.port else parts.port
        netloc = f"{host}:{port}" if port else host  # one root, one fingerprint, with its port or without
        root = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        public = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), urlencode(kept), ""))
        return cls(public, root, params, auth, scrub_list(secrets))

    def with_credentials(self) -> str:
        """The root with the user info and every query parameter it was given: what makes the same
        endpoint in another process (a Ray worker). Never shown or written (``public`` is)."""
        parts = urlsplit(self.root)
        netloc = parts.netloc
        if self.auth is not None:
            user, password = (quote(part, safe="") for part in self.auth)
            netloc = f"{user}{':' + password if password else ''}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(self.params), ""))


def _carries_credentials(url: str | None) -> bool:
    """Whether the API root ``url`` authenticates its requests itself (user info, a key parameter)."""
    try:
        return bool(url) and bool(Endpoint.parse(str(url)).secrets)
    except ValueError:  # a root no request can reach: the client names what is wrong with it
        return False


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
    budget_s : float, optional
        Wall-clock seconds one request may take, attempts and waits together: each attempt's
        timeout is cut to what is left, and no wait runs past it. ``None``: only the limits above.
    """

    max_attempts: int = 8
    max_total_wait: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 60.0
    malformed_retries: int = 2
    budget_s: float | None = None

    def backoff(self, retry_index: int) -> float:
        """Full-jitter delay before retry number ``retry_index`` (0-based)."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**retry_index))


class Cancelled(EncoderError):
    """A request was not sent, or not retried, because its run was interrupted
    (:func:`~search_adaptor.encoders.base.cancelled_by`)."""


class MalformedResponse(ValueError):
    """A 2xx reply whose body is not the documented shape (retried as a server fault)."""


class InputTooLong(EncoderError):
    """The provider rejected a request because an input in it is too long.

    ``reason`` is ``"HTTP <status>: <server message>"`` (scrubbed), for naming the text later.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BadRequest(EncoderError):
    """A 400 or 422 that names no cause this client knows (an input too long, a request over the
    cap): an image request that gets one is sent again in halves, to find the image it is about.

    ``reason`` is ``"HTTP <status>: <server message>"`` (scrubbed), for naming the image later.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class RequestTooLarge(InputTooLong):
    """The provider rejected a request because its inputs together hold more tokens than it takes in
    one request (:data:`_REQUEST_TOO_LARGE`), although none need be too long on its own.

    The requests are planned under each provider's documented cap by :func:`token_bound`, so this
    means the estimate ran low (random ASCII such as hashes or base64, or a tokenizer denser than
    the estimate). Halving the request fixes it; a single text that is still refused is over the
    cap by itself and is named as a text too long is. Hence a subclass: :meth:`ApiEncoder._send`
    splits on both.
    """


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, from its headers; ``None`` when none is usable.

    In order: ``retry-after-ms`` (OpenAI, Azure), ``Retry-After`` (delta-seconds or an HTTP date,
    RFC 9110), ``x-ratelimit-reset`` (Cohere's SDK reads it as a Unix time in seconds; a value
    below 10^9 is taken as seconds to wait, as other servers send).
    """
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    now = time.time() if now is None else now
    try:
        if lower.get("retry-after-ms"):
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
    except ValueError:
        pass
    value = lower.get("retry-after", "")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always UTC
                when = when.replace(tzinfo=datetime.timezone.utc)
            return max(0.0, when.timestamp() - now)
    try:
        reset = float(lower.get("x-ratelimit-reset", ""))
    except ValueError:
        return None
    return max(0.0, reset - now if reset > 1e9 else reset)


def retry_delay_in_body(payload: Any) -> float | None:
    """Seconds from a Google ``RetryInfo`` detail (``{"retryDelay": "37s"}``) in an error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


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


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.text)
    except ValueError:
        return None


def server_message(response: httpx.Response) -> str:
    """The provider's error message from a response, or the start of its raw body."""
    return _find_message(_json_or_none(response)) or response.text.strip() or "(empty body)"


#: Characters that escaping (``repr`` of a str or of bytes, once or again) writes otherwise.
_ESCAPABLE = re.compile(r"[^\x20-\x7e]|[\\'\"]")
#: The shortest run of a secret between escapable characters that is scrubbed on its own.
_MIN_SECRET_RUN = 8


def secret_forms(secret: str) -> set[str]:
    """Every way ``secret`` can be written into a message: as it is, percent-encoded (in a URL),
    escaped as Python's ``repr`` of a ``str`` or of ``bytes`` writes it, and, where it holds
    characters that escaping changes, each run of at least :data:`_MIN_SECRET_RUN` characters
    between them.

    The escaped forms matter: a value with a line break or a non-ASCII character shows up escaped
    (h11's ``Illegal header value b'Bearer eyJ...\\n'``), where the raw value no longer matches it;
    escaped again (httpcore's trace logs the ``repr`` of that exception) only the runs still match.
    """
    forms = {
        secret,
        urlencode({"": secret})[1:],
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
    }
    if _ESCAPABLE.search(secret):
        forms.update(run for run in _ESCAPABLE.split(secret) if len(run) >= _MIN_SECRET_RUN)
    return {f for f in forms if f}


def scrub_list(secrets: Sequence[str]) -> tuple[str, ...]:
    """The forms (:func:`secret_forms`) of ``secrets`` to replace in a message, longest first, so that
    no secret is left half-replaced by a shorter one inside it."""
    forms = {f for secret in secrets if secret for f in secret_forms(secret)}
    return tuple(sorted(forms, key=len, reverse=True))


def _one_line(text: str, secrets: Sequence[str]) -> str:
    """Collapse whitespace, scrub every secret, and cap the length: fit for one log/exception line.

    ``secrets`` are replaced in the order given: pass :func:`scrub_list`'s, which holds their escaped
    and percent-encoded forms too.
    """
    for secret in secrets:
        if secret:
            text = _without_fragments(text.replace(secret, "***"), secret)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _without_fragments(text: str, secret: str) -> str:
    """``text`` with every run of :data:`_FRAGMENT` or more characters of ``secret`` masked: a server
    that echoes part of a key (``raw=SECRET-zzzz``, past its own mask) shows no more of it here."""
    if len(secret) <= _FRAGMENT or len(text) < _FRAGMENT:
        return text
    out, i = [], 0
    while i < len(text):
        end = i + _FRAGMENT
        if end <= len(text) and text[i:end] in secret:
            while end < len(text) and text[i : end + 1] in secret:
                end += 1
            out.append("***")
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class _ScrubSecrets(logging.Filter):
    """Scrubs our credentials from httpx's and httpcore's own log lines.

    httpx logs every request URL at INFO, query string included, so a ``?key=...`` in a base URL
    would reach the logs; httpcore's DEBUG trace quotes the exception of a request that could not be
    written, auth header value included (escaped). This filter, on their loggers, replaces the
    credentials of our base URLs and the values of our auth headers, in all their forms, with
    ``***``. Auth header values change as tokens refresh, so only the latest
    :attr:`RECENT_HEADERS` of them are kept.
    """

    RECENT_HEADERS = 64

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()  # replaced whole, never mutated: safe to read from any thread
        self._lasting: set[str] = set()
        self._recent: deque[str] = deque(maxlen=self.RECENT_HEADERS)
        self._lock = threading.Lock()

    def add(self, secrets: Sequence[str], *, lasting: bool = True) -> None:
        """Scrub ``secrets`` (and their forms, :func:`scrub_list`) from now on; ``lasting=False`` for
        values that are replaced over time (auth headers), of which only the latest are kept."""
        with self._lock:
            new = [s for s in secrets if s and s not in self._lasting and s not in self._recent]
            if not new:
                return
            if lasting:
                self._lasting.update(new)
            else:
                self._recent.extend(new)
            self.secrets = scrub_list([*self._lasting, *self._recent])

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets
        if secrets:
            message = scrubbed = record.getMessage()
            for secret in secrets:
                scrubbed = scrubbed.replace(secret, "***")
            if scrubbed != message:
                record.msg, record.args = scrubbed, ()
        return True


_HTTPX_LOG_FILTER = _ScrubSecrets()
# a filter acts on its own logger's records only, not on those of the loggers below it
for _name in ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_HTTPX_LOG_FILTER)


def _header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The credential values inside auth headers (with and without a ``Bearer`` prefix)."""
    out = []
    for value in headers.values():
        out.append(value)
        if value.lower().startswith("bearer "):
            out.append(value[7:])
    return out


#: What httpx raises when a request cannot even be written (a header value with a line break or a
#: non-ASCII character): nothing was sent, and the same request would fail the same way again, so it
#: is not retried as a connection error is.
_NOT_SENT = (httpx.LocalProtocolError, UnicodeEncodeError)


def _should_retry(response: httpx.Response) -> bool:
    """Whether a non-2xx reply is worth another attempt, as the official SDKs decide it."""
    verdict = response.headers.get("x-should-retry", "").strip().lower()
    if verdict in ("true", "false"):
        return verdict == "true"
    return response.status_code in _RETRY_STATUSES or response.status_code >= 500


def request_timeout(tokens: int) -> float:
    """Seconds to wait for a reply to a request of ``tokens`` estimated tokens.

    :data:`DEFAULT_TIMEOUT` plus one second per 1,000 tokens, at most :data:`MAX_AUTO_TIMEOUT`:
    a full OpenAI request (300,000 tokens) gets 360 s instead of timing out at 60 s and being
    sent again.
    """
    return min(MAX_AUTO_TIMEOUT, DEFAULT_TIMEOUT + tokens / 1000.0)


class HttpClient:
    """Pooled, retrying JSON-over-HTTP client of one provider (thread-safe).

    Parameters
    ----------
    provider : str
        Name used at the start of every error and log line.
    base_url : str
        Prefix of every request path. User info in it becomes basic auth and its query
        parameters go with every request; neither shows in :attr:`base_url` or in any message.
    auth : callable
        Returns the auth headers for the next request (called per attempt, so tokens can refresh).
    credential_hint : str
        Where the credential comes from (e.g. ``"$OPENAI_API_KEY"``), quoted on 401/403.
    timeout : float, optional
        Seconds to wait for a reply (and at most 10 s to connect); ``None`` sizes it to each
        request with :func:`request_timeout`.
    retry : RetryPolicy, optional
        Retry limits; defaults to :class:`RetryPolicy()`.
    max_connections : int
        Size of the connection pool; match the encoder's ``max_concurrency``.
    headers : mapping, optional
        Extra headers sent with every request (e.g. ``OpenAI-Organization``).
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        auth: AuthHeaders,
        credential_hint: str,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONCURRENCY,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.provider = provider
        fix = "correct --base-url (e.g. http://localhost:11434/v1)"
        try:
            self._endpoint = Endpoint.parse(base_url)
        except ValueError as exc:  # urllib's own line ("Port out of range 0-65535"), never the URL itself
            raise EncoderError(f"{provider}: API root: {exc}; {fix}") from None
        _HTTPX_LOG_FILTER.add(self._endpoint.secrets)
        parts = urlsplit(self._endpoint.root)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
            raise EncoderError(  # no request could reach it: retrying for a minute would only hide that
                f"{provider}: API root {self._endpoint.public!r} is not an http(s)://host[:port]/path "
                f"URL; {fix}"
            )
        self.credential_hint = credential_hint
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._auth = auth
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout or DEFAULT_TIMEOUT, connect=min(timeout or 10.0, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"user-agent": "search-adaptor", **(headers or {})},
            auth=self._endpoint.auth,
        )
        self._lock = threading.Lock()
        self._retries = 0

    @property
    def base_url(self) -> str:
        """The API root as it may be shown: without credentials."""
        return self._endpoint.public

    @property
    def retries(self) -> int:
        """Retries made so far by every thread using this client (for progress bars)."""
        with self._lock:
            return self._retries

    def note_retry(self, line: str) -> None:
        """Count one retry (of a request, or of some of its texts) and log ``line`` saying why."""
        with self._lock:
            self._retries += 1
        log.info("%s", line)

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def post(
        self,
        path: str,
        body: Any,
        parse: Callable[[Any], T],
        params: Mapping[str, str] | None = None,
        tokens: int = 0,
    ) -> T:
        """POST ``body`` as JSON to ``base_url + path`` and return ``parse(reply_json)``.

        ``parse`` raises (``ValueError``, ``KeyError``, ``TypeError``, ``IndexError``,
        ``AttributeError`` or :class:`EncoderError`) on a body of the wrong shape; that is retried
        as a server fault, a limited number of times. ``tokens`` (estimated tokens sent) sizes the
        timeout when none was given.

        Raises
        ------
        InputTooLong
            The provider rejected an input as too long, or (:class:`RequestTooLarge`) the request
            as holding too many tokens together (not retried).
        EncoderError
            One line, at once for a non-retryable status, else once the retry budget is spent.
        """
        url = f"{self._endpoint.root}{path}"
        shown = f"{self.base_url.split('?')[0]}{path}"
        query = [*self._endpoint.params, *(params or {}).items()]
        policy = self.retry
        timeout = self.timeout or request_timeout(tokens)
        start = time.monotonic()
        waited = 0.0
        malformed = 0
        fault = ""
        secrets: Sequence[str] = self._endpoint.secrets
        # outside cancelled_by: an event that is never set
        cancel, retries_only = cancel_event() or (threading.Event(), False)
        for attempt in range(1, policy.max_attempts + 1):
            if cancel.is_set() and not (retries_only and attempt == 1):
                raise Cancelled(self._line(f"interrupted; request to {shown} not sent", secrets))
            left = None if policy.budget_s is None else policy.budget_s - (time.monotonic() - start)
            if left is not None and left <= 0:
                raise EncoderError(self._line(self._budget_spent(attempt - 1, fault), secrets))
            attempt_timeout = timeout if left is None else min(timeout, left)
            headers = self._auth()
            in_headers = _header_secrets(headers)
            _HTTPX_LOG_FILTER.add(in_headers, lasting=False)
            secrets = scrub_list([*self._endpoint.secrets, *in_headers])
            wait_hint = None
            try:
                response = self._http.post(
                    url,
                    json=body,
                    params=query,
                    headers=headers,
                    timeout=httpx.Timeout(attempt_timeout, connect=min(attempt_timeout, 10.0)),
                )
            except _NOT_SENT as exc:
                raise EncoderError(
                    self._line(
                        f"the request to {shown} could not be sent: {type(exc).__name__}: {exc} (a header "
                        "value with a line break or a non-ASCII character; not retried)",
                        secrets,
                    )
                ) from None
            except httpx.TimeoutException:
                fault = f"no reply within {attempt_timeout:.3g}s (timeout)"
            except httpx.TransportError as exc:
                fault = f"connection error reaching {shown}: {type(exc).__name__}: {exc}"
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
                                self._line(f"{fault} ({malformed} unusable replies from {shown})", secrets)
                            ) from None
                elif _should_retry(response):
                    wait_hint = parse_retry_after(response.headers)
                    if wait_hint is None:
                        wait_hint = retry_delay_in_body(_json_or_none(response))
                    if wait_hint is not None and wait_hint <= 0:  # 0, or a date past, paces nothing:
                        wait_hint = None  # back off as without one (the OpenAI SDK does), not hammer
                    fault = f"HTTP {status} from {shown}: {server_message(response)}"
                else:
                    raise self._fatal(status, shown, server_message(response), secrets) from None
            if attempt == policy.max_attempts:
                break
            delay = policy.backoff(attempt - 1)
            if wait_hint is not None:
                delay = wait_hint * random.uniform(1.0, 1.1)  # never earlier than asked; spread threads
            if waited + delay > policy.max_total_wait:
                raise EncoderError(
                    self._line(
                        f"giving up: waiting {delay:.1f}s more would exceed max_total_wait="
                        f"{policy.max_total_wait:g}s after {attempt} attempt(s); last error: {fault}",
                        secrets,
                    )
                )
            if policy.budget_s is not None and time.monotonic() - start + delay > policy.budget_s:
                raise EncoderError(self._line(self._budget_spent(attempt, fault), secrets))
            self.note_retry(
                self._line(f"retry {attempt}/{policy.max_attempts - 1} in {delay:.2f}s: {fault}", secrets)
            )
            if cancel.wait(delay):  # a sleep that Ctrl-C (the store setting the event) cuts short
                raise Cancelled(self._line(f"interrupted before a retry; last error: {fault}", secrets))
            waited += delay
        unreachable = fault.startswith("connection error")  # no reply at all, every time: say what to check
        raise EncoderError(
            self._line(
                f"giving up after {policy.max_attempts} attempts ({waited:.1f}s waiting); "
                f"last error: {fault}"
                + (
                    "; check that this machine reaches it, or reach the API through another root "
                    "(--base-url: a proxy, a gateway)"
                    if unreachable
                    else ""
                ),
                secrets,
            )
        )

    def _budget_spent(self, attempts: int, fault: str) -> str:
        return (
            f"giving up: the retry budget of {self.retry.budget_s:g}s is spent after {attempts} "
            f"attempt(s); last error: {fault or 'none'}"
        )

    def _line(self, text: str, secrets: Sequence[str]) -> str:
        return _one_line(f"{self.provider}: {text}", secrets)

    def _fatal(self, status: int, url: str, message: str, secrets: Sequence[str]) -> EncoderError:
        """The one-line error for a status that retrying cannot fix."""
        reason = _one_line(f"HTTP {status}: {message}", secrets)
        if status in (400, 413, 422) and _REQUEST_TOO_LARGE.search(message):
            line = f"HTTP {status} from {url}: {message} (the request's texts together are over the cap)"
            return RequestTooLarge(self._line(line, secrets), reason)
        if status == 413 or (status in (400, 422) and _TOO_LONG.search(message)):
            return InputTooLong(
                self._line(f"HTTP {status} from {url}: {message} (input too long)", secrets), reason
            )
        if status in (401, 403):
            where = (  # a URL's user info is sent as HTTP Basic auth, in the API key's header
                "the base URL's user info (sent as HTTP Basic auth, in place of an API key)"
                if self._endpoint.auth is not None
                else self.credential_hint
            )
            hint = f"authentication failed; check the credential in {where}"
        elif status == 404:
            hint = "not found; check the model name and the base URL"
        else:
            hint = "the request was rejected; not retried"
        line = self._line(f"HTTP {status} from {url}: {message} ({hint})", secrets)
        return BadRequest(line, reason) if status in (400, 422) else EncoderError(line)


def token_bound(text: str) -> int:
    """Tokens ``text`` can take, estimated high enough for every script.

    Per character: a third of a token for an ASCII letter or space (English and code run at 3 to
    4.5 characters per token), two thirds for a digit (OpenAI's tokenizers take numbers in groups
    of up to three digits: a third each at best), one for ASCII punctuation or a control character,
    and for any other character its length in UTF-8 bytes, which no byte-level BPE (OpenAI, Voyage)
    or byte-fallback SentencePiece (Google) tokenizer can exceed, since every token covers at least
    one byte. Measured with OpenAI's cl100k_base on random sequences of each script, the worst case
    per character is 0.66 tokens for ASCII letters, 1.5 for Greek, 2.6 for Hangul and 2.35 for CJK
    ideographs: only random ASCII (hashes, base64 blobs) and long runs of digits for a tokenizer
    that takes each digit as a token (as Gemma's SentencePiece, a subset of Gemini's, does) beat
    the estimate. A provider's rejection of such a text is handled by splitting the batch
    (:class:`InputTooLong`), and of such a request, over the provider's cap per request, likewise
    (:class:`RequestTooLarge`). Texts are cut by these weights, so changing one changes what a long
    text sends, hence its vector, under an unchanged fingerprint.
    """
    return int(_cumulative_thirds(text)[-1] + 2) // 3 if text else 0


def _cumulative_thirds(text: str) -> np.ndarray:
    """Running total of :func:`token_bound`'s per-character weights, in thirds of a token."""
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    weight = np.where(cp < 0x800, 6, np.where(cp < 0x10000, 9, 12))
    ascii_ = cp < 128
    weight[ascii_] = _ASCII_WEIGHT[cp[ascii_]]
    return np.cumsum(weight)


def cut_to_tokens(text: str, max_tokens: int) -> str:
    """The longest start of ``text`` whose :func:`token_bound` is at most ``max_tokens``."""
    if len(text) * 4 <= max_tokens:  # no character weighs more than 4 tokens
        return text
    head = text[: 3 * max_tokens + 1]  # no character weighs less than a third of a token
    return head[: int(np.searchsorted(_cumulative_thirds(head), 3 * max_tokens, side="right"))]


def prepare_texts(
    texts: Sequence[str], max_chars: int | None, max_tokens: int | None = None, keep_end: bool = False
) -> list[str]:
    """Texts as sent: cut to ``max_chars`` characters and ``max_tokens`` estimated tokens
    (:func:`cut_to_tokens`), and empty strings replaced by one space.

    ``keep_end`` cuts from the start instead (for a provider told to drop the start of long texts).
    OpenAI and Voyage reject an empty input with a 400 that would fail the whole batch; a single
    space embeds as "nothing" without failing anything.
    """
    out = []
    for text in texts:
        if keep_end:
            text = text[::-1]
        if max_chars is not None:
            text = text[:max_chars]
        if max_tokens is not None:
            text = cut_to_tokens(text, max_tokens)
        out.append((text[::-1] if keep_end else text) or " ")
    return out


def estimate_tokens(text: str) -> int:
    """Typical token count of ``text`` for cost estimates (see :data:`CHARS_PER_TOKEN`)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def plan_requests(texts: Sequence[str], max_inputs: int, max_tokens: int | None) -> list[slice]:
    """Split ``texts`` into consecutive requests of at most ``max_inputs`` texts and ``max_tokens``
    tokens by :func:`token_bound` (a single text over the token cap goes alone; the provider
    truncates it or rejects it).
    """
    costs = [0] * len(texts) if max_tokens is None else [token_bound(t) for t in texts]
    return plan_by_cost(costs, max_inputs, max_tokens)


def plan_by_cost(costs: Sequence[int], max_items: int, max_cost: int | None) -> list[slice]:
    """Split items of ``costs`` into consecutive requests of at most ``max_items`` items whose costs add
    up to at most ``max_cost`` (an item over the cap goes alone)."""
    out: list[slice] = []
    start, total = 0, 0
    for i, cost in enumerate(costs):
        full = i - start >= max_items or (max_cost is not None and i > start and total + cost > max_cost)
        if full:
            out.append(slice(start, i))
            start, total = i, 0
        total += cost
    if start < len(costs):
        out.append(slice(start, len(costs)))
    return out


def decode_vector(value: Any) -> Any:
    """One embedding as sent: a list of floats, or a base64 string of little-endian float32."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").tolist()
    return value


def _row_faults(vectors: np.ndarray) -> dict[int, str]:
    """``{row: what is wrong}`` for each embedding of a reply that cannot be stored: NaN or inf, or all
    zeros (no direction, so it ranks nothing, and stored it would stay so)."""
    faults = dict.fromkeys(np.flatnonzero(~np.isfinite(vectors).all(axis=1)).tolist(), "with NaN or inf")
    faults.update((i, "all zeros (no direction: it ranks nothing)") for i in without_direction(vectors))
    return dict(sorted(faults.items()))


def rows_by_index(payload: Any, count: int) -> list[Any]:
    """Embeddings of an OpenAI-style ``{"data": [{"index", "embedding"}]}`` reply, in input order
    (each a list of floats or, with ``encoding_format: "base64"``, a base64 string).

    Raises
    ------
    MalformedResponse
        When the indices are not exactly ``0..count-1``.
    """
    data = sorted(payload["data"], key=lambda item: item["index"])
    if [item["index"] for item in data] != list(range(count)):
        raise MalformedResponse(f"expected indices 0..{count - 1}, got {len(data)} item(s)")
    return [decode_vector(item["embedding"]) for item in data]


class ApiEncoder(Encoder):
    """Base of the encoders that call an embedding API over HTTP.

    Subclasses set the class attributes below and implement :meth:`_request` (one HTTP request
    for at most ``max_inputs`` texts). This class resolves the key, owns the retrying client,
    cuts texts to what the model can use, splits each batch into requests within the provider's
    documented limits (and splits again around a text the provider rejects as too long), and
    builds :meth:`config`. Each provider sets ``provider``, ``default_model``,
    ``default_base_url``, ``key_env`` (the environment variables holding the key, in order of
    preference), ``key_required``, ``auth_header`` and ``auth_scheme`` (how the key is sent),
    ``max_inputs`` and ``max_request_tokens`` (documented limits per request) and
    ``context_tokens`` (the documented input limit per text, ``None`` when unknown).
    ``retries`` counts the retries made so far, across threads.

    Texts are cut in one of two ways. When the provider cuts over-long texts itself (Vertex with
    ``auto_truncate``, Cohere, Voyage), a text is cut at ``context_tokens *``
    :data:`LONGEST_TOKEN_CHARS` characters, which keeps every token the provider can use, so the
    vectors do not change and megabytes are not uploaded for nothing. When it does not (OpenAI,
    Azure, the Gemini API), a text is cut to ``max_input_tokens`` by :func:`token_bound`, so that
    it is not rejected; that changes the vectors of long texts and is part of the fingerprint.
    A provider that cuts texts itself but counts a request's tokens before cutting (Vertex) also
    gets each text cut to that cap by :func:`token_bound` (:meth:`_whole_text_cap`), so that no text
    fills a request it would be refused for; see :class:`~search_adaptor.encoders.gemini.VertexEncoder`
    for why that cut is not part of the fingerprint. The first cut of any kind is logged once.

    Versions before the cut by tokens (30 Nov 2026) cut texts to ``max_chars`` characters only, by
    default :attr:`earlier_max_chars`, and recorded no ``max_input_tokens``: their stores bear other
    fingerprints. :meth:`earlier_versions` names that form, so that a store reuses its vector of any
    text both rules send alike (the same prompt; cut by neither, or to the same text) instead of
    paying for it again.

    Images (:class:`~search_adaptor.images.ImageRef` items, for models that embed them:
    :attr:`~search_adaptor.encoders.base.Encoder.accepts_images`) go in requests of their own,
    :meth:`_request_images`, within :meth:`_image_limits`; an image whose format the provider does not
    take (``image_types``) or that is larger than ``max_image_bytes`` is rejected before anything is
    sent, as a text the provider refuses is. Texts of the same batch go as texts, so their vectors
    (and the requests that carry them) are those of a text-only batch.

    Parameters
    ----------
    model : str, optional
        Model id; ``default_model`` when omitted.
    api_key : str, optional
        The key; else read from the environment (``key_env``). Never stored in plain view.
    base_url : str, optional
        API root, for proxies, regional endpoints and tests; ``default_base_url`` when omitted.
        Credentials in it (``https://user:pw@host``, ``?key=...``) authenticate the requests but
        never appear in :meth:`config`, the fingerprint, ``repr`` or any message.
    dimensions : int, optional
        Output width for models that can shorten their vectors; part of the fingerprint.
    batch_size : int, optional
        Texts per :meth:`encode_batch` call; defaults to the documented maximum per request.
        Smaller batches mean finer progress and less work lost when a run is killed.
    max_concurrency : int, optional
        Requests in flight at once (default 4).
    max_chars : int, optional
        Also cut every text to this many characters. Part of the fingerprint.
    max_input_tokens : int, None or "auto"
        Cut every text to this many tokens by :func:`token_bound`; ``"auto"``: the documented
        input limit for providers that reject longer inputs, none for those that cut them
        themselves; ``None``: no such cut. Part of the fingerprint.
    max_request_tokens : int, None or "auto"
        Cap on :func:`token_bound` tokens per request; ``"auto"`` uses the documented cap.
    query_prompt, document_prompt : str, optional
        Prefixes prepended to queries / documents (e.g. ``"query: "`` for E5 models behind an
        OpenAI-compatible server); the model's documented ones when omitted (empty for most);
        part of the fingerprint.
    timeout : float, optional
        Seconds to wait for one reply; ``None`` sizes it to each request (:func:`request_timeout`).
    retry : RetryPolicy, optional
        Retry limits.
    retry_budget_s : float, optional
        Seconds one request may take, retries and waits included (sets ``retry.budget_s``); a
        server that answers its own clients wants a short one.
    plan_only : bool
        An encoder that only says what it would send (:attr:`fingerprint`, :meth:`request_tokens`,
        :meth:`check_items`: ``embed --dry-run``): no key is looked up, so none is needed, and
        sending raises :class:`EncoderError` before anything leaves.
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
    context_tokens: int | None = None
    #: media types of the images the provider takes (read from the bytes by
    #: :func:`~search_adaptor.images.image_type`)
    image_types: frozenset[str] = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
    #: the largest image file the provider takes
    max_image_bytes = 20_000_000
    #: ``max_chars`` that versions before the cut by tokens applied by default, and recorded
    earlier_max_chars: int | None = None

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        batch_size: int | None = None,
        max_concurrency: int | None = None,
        max_chars: int | None = None,
        max_input_tokens: int | Auto | None = "auto",
        max_request_tokens: int | Auto | None = "auto",
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        retry_budget_s: float | None = None,
        plan_only: bool = False,
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
        self.context_tokens = self._context_tokens(model)
        if max_input_tokens == "auto":
            max_input_tokens = None if self._server_truncates() else self.context_tokens
        self.max_input_tokens = max_input_tokens
        self.max_chars = max_chars
        self.batch_size = batch_size or self.max_inputs
        self.max_concurrency = max_concurrency or DEFAULT_MAX_CONCURRENCY
        default_query, default_document = self._default_prompts(model)
        self.query_prompt = default_query if query_prompt is None else query_prompt
        self.document_prompt = default_document if document_prompt is None else document_prompt
        self.timeout = timeout
        if retry_budget_s is not None:
            retry = dataclasses.replace(retry or RetryPolicy(), budget_s=retry_budget_s)
        self._cut_logged = False
        self._url_authenticates = _carries_credentials(base_url)  # user:password@ or ?key=: no key needed
        auth, hint = (self._sends_nothing, "") if plan_only else self._credentials(api_key)
        self._client = HttpClient(
            self.provider,
            self._resolve_base_url(base_url),
            auth=auth,
            credential_hint=hint,
            timeout=timeout,
            retry=retry,
            max_connections=self.max_concurrency,
            headers=self._extra_headers(),
        )

    # -- hooks for subclasses -------------------------------------------------------------------

    def _limits(self, model: str) -> tuple[int, int | None]:
        """Documented (max inputs, max tokens) per request for ``model``."""
        return self.max_inputs, self.max_request_tokens

    def _context_tokens(self, model: str) -> int | None:
        """Documented input limit of one text for ``model`` (``None``: unknown)."""
        return self.context_tokens

    def _server_truncates(self) -> bool:
        """Whether the provider cuts over-long texts itself instead of rejecting them."""
        return False

    def _whole_text_cap(self) -> int | None:
        """Estimated tokens (:func:`token_bound`) a text may be sent with where the provider cuts long
        texts itself but caps a request's tokens counted before it cuts them (Vertex); None: no
        such cap.

        Without it a long text goes whole, its request is refused for its total, and no split can
        help: the text is cut to this many tokens instead.
        """
        return None

    def _keeps_end(self) -> bool:
        """Whether the provider's own truncation drops the start of a text (keeping its end)."""
        return False

    def _default_prompts(self, model: str) -> tuple[str, str]:
        """(query prefix, document prefix) the model documents; none for most models."""
        return "", ""

    def _extra_headers(self) -> dict[str, str]:
        """Headers sent with every request besides auth (e.g. OpenAI's organization)."""
        return {}

    def _credentials(self, api_key: str | None) -> tuple[AuthHeaders, str]:
        """(auth header factory, where the credential comes from) from the key or the environment."""
        required = self.key_required and not self._url_authenticates
        secret = secret_from_env(self.provider, api_key, self.key_env, required=required)
        hint = " or ".join(f"${v}" for v in self.key_env) or "api_key"
        if secret is None:
            return dict, hint
        header = {self.auth_header: f"{self.auth_scheme}{secret.reveal()}"}
        return header.copy, hint

    def _sends_nothing(self) -> dict[str, str]:
        """The auth headers of a ``plan_only`` encoder: a refusal, raised before a request leaves."""
        raise EncoderError(
            f"{self.provider}: this encoder was made with plan_only=True, to say what would be sent; "
            "make it without plan_only to send"
        )

    def _resolve_base_url(self, base_url: str | None) -> str:
        """The API root: the one passed in, else the provider's public endpoint."""
        return base_url or self.default_base_url

    def _wire_config(self) -> dict[str, Any]:
        """Provider-specific settings that change the vectors (mode fields, truncation...)."""
        return {}

    @abstractmethod
    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        """Embed one request's worth of texts (already prefixed, cut and within the limits)."""

    def _image_limits(self) -> tuple[int, int | None]:
        """Documented (max images, max total :meth:`_image_cost`) per image request."""
        return 1, None

    def _image_cost(self, image: ImageRef, header: bytes) -> int:
        """What one image counts against the cap of :meth:`_image_limits` (bytes, tokens...);
        ``header`` is the start of its file (empty for a URL)."""
        return 0

    def _image_tokens(self, image: ImageRef, header: bytes) -> int:
        """Tokens the provider bills for one image (0 where images are billed per image)."""
        return 0

    def _request_images(self, images: list[ImageRef], kind: Kind) -> np.ndarray:
        """Embed one request's worth of images (checked, within :meth:`_image_limits`)."""
        raise NotImplementedError(f"{self.provider}: {self.model} embeds no images")

    # -- shared behaviour -------------------------------------------------------------------------

    @property
    def retries(self) -> int:
        """Retries made so far across all threads (show it in a progress bar)."""
        return self._client.retries

    @property
    def base_url(self) -> str:
        """The API root without credentials."""
        return self._client.base_url

    def worker_options(self) -> dict[str, Any]:
        """Besides the batch and concurrency, the API root as given (a proxy's, say: :meth:`info`
        records only a root given for a self-hosted model), credentials in its URL included (never
        shown or written), and the timeout. Keys come from the worker's environment, as they come
        from this one's."""
        options = super().worker_options()
        options["base_url"] = self._client._endpoint.with_credentials()
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return options

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "provider": self.provider,
            "model": self.model,
            "dimensions": self.dimensions,
            "max_chars": self.max_chars,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
        }
        if self.max_input_tokens is not None:  # absent, the fingerprints of earlier versions still hold
            config["max_input_tokens"] = self.max_input_tokens
        return {**config, **self._wire_config()}

    def prepare(self, texts: Sequence[str], kind: Kind) -> list[str]:
        """``texts`` as they are sent for ``kind``: prefixed with its prompt, cut, never empty."""
        full = self._prompted(texts, kind)
        prepared = self._cut(full)
        if not self._cut_logged:
            cut = next(
                (i for i, (a, b) in enumerate(zip(full, prepared, strict=True)) if len(b) < len(a)), None
            )
            if cut is not None:
                self._cut_logged = True
                log.warning(
                    "%s: texts longer than %s are cut before sending (first: %d of %d characters kept); "
                    "this is said once",
                    self.provider,
                    self._cut_rule(*self._server_cuts()),
                    len(prepared[cut]),
                    len(full[cut]),
                )
        return prepared

    def _prompted(self, texts: Sequence[str], kind: Kind) -> list[str]:
        """``texts`` prefixed with the prompt of ``kind``."""
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        return [prompt + t for t in texts]

    def _server_cuts(self) -> tuple[int | None, int | None]:
        """(characters, estimated tokens) texts are cut to because the provider cuts them itself: every
        character it can use, and the :meth:`_whole_text_cap`; (None, None) where it does not."""
        if not self._server_truncates():
            return None, None
        lossless = None if self.context_tokens is None else self.context_tokens * LONGEST_TOKEN_CHARS
        return lossless, self._whole_text_cap()

    def _cut(self, full: list[str]) -> list[str]:
        """Prompted texts cut by every rule that applies (:meth:`prepare`), without a word."""
        lossless, whole = self._server_cuts()
        limits = [c for c in (self.max_chars, lossless) if c is not None]
        tokens = [c for c in (self.max_input_tokens, whole) if c is not None]
        return prepare_texts(full, min(limits, default=None), min(tokens, default=None), self._keeps_end())

    def earlier_versions(self) -> list[EarlierVersion]:
        """This encoder as versions before the cut by tokens (30 Nov 2026) recorded it, where that differs.

        Those versions sent a text prefixed with its prompt and cut to ``max_chars`` characters,
        nothing else, and recorded that ``max_chars`` and no ``max_input_tokens``; the model, the API
        and every other setting were as now. Without ``max_chars`` now, either of theirs may have been
        used: their default (:attr:`earlier_max_chars`) or none. A text that such a rule sends exactly
        as :meth:`prepare` does has the vector they stored.
        """
        choices = [self.max_chars] if self.max_chars is not None else [self.earlier_max_chars, None]
        versions = []
        for max_chars in dict.fromkeys(choices):
            earlier = copy.copy(self)  # shares the client, but only its fingerprint and config are read
            earlier.max_input_tokens, earlier.max_chars = None, max_chars
            if earlier.fingerprint != self.fingerprint:
                versions.append(EarlierVersion(earlier, functools.partial(self._sent_alike, max_chars)))
        return versions

    def _sent_alike(self, max_chars: int | None, texts: Sequence[str], kind: Kind) -> list[bool]:
        """Per text, whether the rule of versions before the cut by tokens, with ``max_chars``, sent it
        for ``kind`` as :meth:`prepare` sends it now."""
        full = self._prompted(texts, kind)
        return [a == b for a, b in zip(prepare_texts(full, max_chars), self._cut(full), strict=True)]

    def _cut_rule(self, lossless: int | None, whole: int | None = None) -> str:
        rules = []
        if self.max_input_tokens is not None:
            rules.append(f"{self.max_input_tokens} estimated tokens")
        if whole is not None:
            rules.append(
                f"{whole} estimated tokens (the most {self.provider} takes in one request, counted before "
                f"it cuts each text to {self.context_tokens} tokens)"
            )
        if self.max_chars is not None:
            rules.append(f"max_chars={self.max_chars}")
        if lossless is not None:
            rules.append(
                f"{lossless} characters (the model's {self.context_tokens} tokens; it cuts them anyway)"
            )
        return " or ".join(rules)

    def refusals(self, items: Sequence[Item]) -> dict[int, str]:
        found = {
            i: self._refusal(item, _header(item))
            for i, item in enumerate(items)
            if isinstance(item, ImageRef) and not item.is_url
        }
        return {i: reason for i, reason in found.items() if reason is not None}

    def request_tokens(self, texts: Sequence[Item], kind: Kind) -> int:
        """Estimated tokens the provider would bill for ``texts`` as sent (see :data:`CHARS_PER_TOKEN`);
        images count what :meth:`_image_tokens` says."""
        words = [t for t in texts if isinstance(t, str)]
        images = sum(self._image_tokens(t, _header(t)) for t in texts if isinstance(t, ImageRef))
        return sum(estimate_tokens(t) for t in self.prepare(words, kind)) + images

    def request_count(self, texts: Sequence[Item], kind: Kind) -> int:
        """Requests embedding ``texts`` would take, as the store sends them: batches of ``batch_size``,
        each split within the provider's limits as :meth:`encode_batch` splits it (images it cannot
        take are not sent). A text the provider then rejects as too long costs its request again."""
        return sum(
            len(self._plan(texts[start : start + self.batch_size], kind, {})[1])
            for start in range(0, len(texts), self.batch_size)
        )

    def encode_batch(self, texts: Sequence[Item], kind: Kind) -> np.ndarray:
        """Embed ``texts`` (and images, where the model takes them); an input the provider rejects
        (a text too long, an image it cannot take) does not fail the others.

        Raises
        ------
        InputsRejected
            After embedding every other text: it names the rejected texts and carries the
            vectors of the rest (``vectors``, NaN rows where rejected).
        BatchCutShort
            A request failed (or was cancelled) after others of the batch were answered: it carries
            their vectors, which are paid for, and the failure.
        ImagesUnsupported
            An image for a model that embeds text only (nothing is sent).
        """
        check_kind(kind)
        rows: dict[int, np.ndarray] = {}
        rejected: dict[int, str] = {}
        sent, requests = self._plan(texts, kind, rejected)
        try:
            for index, request in requests:
                self._send(sent, index, kind, rows, rejected, request)
        except Exception as exc:
            if not rows:
                raise
            raise BatchCutShort(self._rows(len(sent), rows), exc) from exc
        out = self._rows(len(sent), rows)
        if rejected:
            raise InputsRejected.of(self.provider, texts, out, rejected)
        return out

    def _rows(self, n: int, rows: Mapping[int, np.ndarray]) -> np.ndarray:
        """``n`` rows, those of ``rows`` filled in, NaN elsewhere."""
        width = next((len(v) for v in rows.values()), self.dimensions or 0)
        out = np.full((n, width), np.nan, dtype=np.float32)
        for i, row in rows.items():
            out[i] = row
        return out

    def _plan(
        self, items: Sequence[Item], kind: Kind, rejected: dict[int, str]
    ) -> tuple[list[Any], list[tuple[list[int], Callable[[list[Any], Kind], np.ndarray]]]]:
        """The items as sent (texts prepared) and the requests that embed them: ``(positions, request)``.

        Texts go in requests of texts (:meth:`_request`, :func:`plan_requests`), images in requests of
        images (:meth:`_request_images`, image URLs apart from image data); an image the provider
        cannot take goes into ``rejected`` instead.
        """
        self.check_items(items)
        words = [i for i, t in enumerate(items) if isinstance(t, str)]
        if len(words) == len(items):  # texts only: as every text batch always went
            prepared = self.prepare(items, kind)  # type: ignore[arg-type]
            slices = plan_requests(prepared, self.max_inputs, self.max_request_tokens)
            return prepared, [(list(range(s.start, s.stop)), self._request) for s in slices]
        sent: list[Any] = list(items)
        for i, text in zip(words, self.prepare([items[i] for i in words], kind), strict=True):
            sent[i] = text
        requests: list[tuple[list[int], Callable[[list[Any], Kind], np.ndarray]]] = [
            ([words[j] for j in range(s.start, s.stop)], self._request)
            for s in plan_requests([sent[i] for i in words], self.max_inputs, self.max_request_tokens)
        ]
        max_images, max_cost = self._image_limits()
        for urls in (False, True):  # a request carries image data or image URLs, never both (Voyage)
            group, costs = [], []
            for i, item in enumerate(items):
                if isinstance(item, ImageRef) and item.is_url == urls:
                    header = _header(item)
                    reason = None if urls else self._refusal(item, header)
                    if reason is not None:
                        rejected[i] = reason
                        continue
                    group.append(i)
                    costs.append(self._image_cost(item, header))
            requests += [
                (group[s.start : s.stop], self._request_images)
                for s in plan_by_cost(costs, max_images, max_cost)
            ]
        return sent, requests

    def _refusal(self, image: ImageRef, header: bytes) -> str | None:
        """Why the provider cannot take this image file (format, size, unreadable), or None."""
        if not header:
            return "the file cannot be read, or is empty"
        media = image_type(header)
        if media not in self.image_types:
            takes = ", ".join(sorted(t.removeprefix("image/").upper() for t in self.image_types))
            what = (
                f"a {media.removeprefix('image/').upper()} image"
                if media
                else "not an image this library knows"
            )
            return f"{what}; {self.provider} {self.model} takes {takes}"
        size = image.size_bytes()
        if size > self.max_image_bytes:
            return (
                f"{size:,} bytes, more than the {self.max_image_bytes:,} {self.provider} takes in one image"
            )
        return None

    def _send(
        self,
        texts: list[Any],
        index: list[int],
        kind: Kind,
        rows: dict[int, np.ndarray],
        rejected: dict[int, str],
        request: Callable[[list[Any], Kind], np.ndarray] | None = None,
    ) -> None:
        """Embed ``texts[i] for i in index`` into ``rows`` with ``request`` (:meth:`_request` by default),
        halving the request around rejected texts, or until it fits the provider's cap per request
        (:class:`RequestTooLarge`); a text refused alone goes into ``rejected``. The texts whose
        vectors come back unusable beside usable ones are sent again without the others."""
        request = request or self._request
        try:
            vectors = request([texts[i] for i in index], kind)
        except (InputTooLong, BadRequest) as exc:
            images = request == self._request_images
            if isinstance(exc, BadRequest) and not images:  # about texts: nothing says which, if any
                raise
            if len(index) == 1:
                if isinstance(exc, BadRequest) and len(texts) == 1:  # the whole call: its own error
                    raise
                rejected[index[0]] = exc.reason
                return
            if isinstance(exc, RequestTooLarge):
                log.info(
                    "%s: a request of %d texts holds more tokens than %s takes in one (more than "
                    "estimated); sending it in halves",
                    self.provider,
                    len(index),
                    self.provider,
                )
            half = len(index) // 2
            self._send(texts, index[:half], kind, rows, rejected, request)
            self._send(texts, index[half:], kind, rows, rejected, request)
            return
        faults = _row_faults(vectors)  # some, not all (:meth:`_vectors`): the rest is kept, they go again
        rows.update((i, v) for at, (i, v) in enumerate(zip(index, vectors, strict=True)) if at not in faults)
        if faults:
            again = [index[at] for at in faults]
            self._client.note_retry(
                f"{self.provider}: sending {len(again)} of {len(index)} texts again, alone: their vectors "
                f"came back unusable ({next(iter(faults.values()))}); the others are kept"
            )
            self._send(texts, again, kind, rows, rejected, request)

    def _post(
        self, path: str, body: Any, texts: list[Any], rows: Callable[[Any], Any], **kw: Any
    ) -> np.ndarray:
        """POST one request for ``texts`` (or images); return its checked vectors (``rows`` finds them in
        the reply)."""
        return self._client.post(
            path,
            body,
            lambda payload: self._vectors(rows(payload), texts),
            tokens=sum(map(_timeout_tokens, texts)),
            **kw,
        )

    def _vectors(self, rows: Any, texts: list[Any]) -> np.ndarray:
        """Check one reply's embeddings: a non-empty row of numbers of the asked width per text sent,
        one at least usable (:func:`_row_faults`; :meth:`_send` sends the others' texts again).

        Raises
        ------
        MalformedResponse
            Retried as a server fault by :meth:`HttpClient.post`.
        """
        if not isinstance(rows, list):
            raise MalformedResponse(f"expected a list of embeddings, got {type(rows).__name__}")
        if len(rows) != len(texts):
            raise MalformedResponse(f"asked for {len(texts)} embeddings, got {len(rows)}")
        widths = sorted({len(row) if isinstance(row, list) else -1 for row in rows})
        if -1 in widths:
            raise MalformedResponse("an embedding is not a list of numbers")
        if len(widths) > 1:
            raise MalformedResponse(
                f"embeddings of different lengths ({widths[0]} and {widths[-1]}) in one reply"
            )
        arr = np.asarray(rows, dtype=np.float32).reshape(len(rows), widths[0] if rows else 0)
        if arr.shape[1] == 0:
            raise MalformedResponse("the embeddings are empty")
        if self.dimensions is not None and arr.shape[1] != self.dimensions:
            raise MalformedResponse(f"asked for {self.dimensions}-d embeddings, got {arr.shape[1]}-d")
        faults = _row_faults(arr)
        if len(faults) == len(texts):  # nothing usable: a fault of the reply, not of its texts
            first = min(faults)
            raise MalformedResponse(
                f"no usable embedding: text {first} of the {len(texts)} sent ({describe_item(texts[first])}) "
                f"came back {faults[first]}; if {self.provider} keeps answering so, drop or reword that "
                "text, or check the model"
            )
        return arr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"


def encoded_image(image: ImageRef) -> tuple[str, str]:
    """``(media type, base64 of the bytes)`` of an image file, as the requests carry it."""
    data = image.read()
    return image_type(data) or "application/octet-stream", base64.b64encode(data).decode()


def image_data_uri(image: ImageRef) -> str:
    """``data:<media type>;base64,<bytes>``: an image file as Cohere and Voyage take it."""
    media, data = encoded_image(image)
    return f"data:{media};base64,{data}"


def _header(image: ImageRef, size: int = 1 << 16) -> bytes:
    """The first ``size`` bytes of an image file (enough for its format and, nearly always, its
    pixel size); empty for a URL or a file that cannot be read."""
    if image.is_url:
        return b""
    try:
        with open(image.source, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def _timeout_tokens(item: Any) -> int:
    """What an item weighs when the timeout of its request is sized (:func:`request_timeout`): a
    text its :func:`token_bound`, an image a token per 100 bytes uploaded (20 MB: 200 s more)."""
    return token_bound(item) if isinstance(item, str) else item.size_bytes() // 100
