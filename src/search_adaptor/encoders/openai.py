"""OpenAI embeddings, on api.openai.com, Azure OpenAI, or any OpenAI-compatible server.

Wire format (``POST {base_url}/embeddings``)::

    {"model": "...", "input": ["...", ...], "encoding_format": "float", "dimensions": 256?}
    -> {"data": [{"index": 0, "embedding": [...]}, ...], "usage": {...}}

Errors come back as ``{"error": {"message": ...}}``. Documented limits: 2048 inputs per request,
8192 tokens per input and 300,000 tokens summed over one request. There is no truncation flag: an
input over 8192 tokens is a 400 that would fail its whole batch, so texts are cut client-side to
``max_chars`` characters (default ``8192 * 3``: at the 3-4 characters per token of English and
code that stays under the limit; text in scripts that tokenize denser, such as CJK, may need a
lower ``max_chars``). ``max_chars`` is part of the fingerprint, so changing it never mixes cut and
uncut vectors.

OpenAI's models embed queries and documents the same way (no mode field); ``query_prompt`` and
``document_prompt`` exist for models that expect prefixes, e.g. E5 behind vLLM.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import numpy as np

from search_adaptor.encoders.base import EncoderError, Kind
from search_adaptor.encoders.http import ApiEncoder, rows_by_index

OPENAI_MAX_TOKENS_PER_INPUT = 8192


class OpenAIEncoder(ApiEncoder):
    """OpenAI's embeddings endpoint (``text-embedding-3-small`` by default, key from ``$OPENAI_API_KEY``).

    See :class:`~search_adaptor.encoders.http.ApiEncoder` for the parameters.
    """

    provider = "openai"
    default_model = "text-embedding-3-small"
    default_base_url = "https://api.openai.com/v1"
    key_env = ("OPENAI_API_KEY",)
    max_inputs = 2048
    max_request_tokens = 300_000
    default_max_chars = OPENAI_MAX_TOKENS_PER_INPUT * 3

    def _path(self) -> str:
        return "/embeddings"

    def _params(self) -> dict[str, str] | None:
        return None

    def _body(self, texts: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        return self._client.post(
            self._path(),
            self._body(texts),
            lambda payload: self._vectors(rows_by_index(payload, len(texts)), len(texts)),
            params=self._params(),
        )


class AzureOpenAIEncoder(OpenAIEncoder):
    """An Azure OpenAI deployment: ``POST {endpoint}/openai/deployments/{deployment}/embeddings``.

    The key goes in the ``api-key`` header (``$AZURE_OPENAI_API_KEY``); the endpoint is
    ``base_url`` or ``$AZURE_OPENAI_ENDPOINT`` (``https://<resource>.openai.azure.com``); ``model``
    is the deployment name. Deployment names are arbitrary, so the endpoint is part of the
    fingerprint. Azure's embeddings guide caps the tokens summed over one request at 8192, lower
    than OpenAI's, so that is the default ``max_request_tokens``; raise it if your deployment allows.

    Parameters
    ----------
    model : str
        Deployment name (required).
    api_version : str
        The ``api-version`` query parameter.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`.
    """

    provider = "azure-openai"
    default_model = None
    default_base_url = ""
    key_env = ("AZURE_OPENAI_API_KEY",)
    auth_header = "api-key"
    auth_scheme = ""
    max_request_tokens = OPENAI_MAX_TOKENS_PER_INPUT

    def __init__(self, model: str | None = None, *, api_version: str = "2024-10-21", **kwargs: Any) -> None:
        self.api_version = api_version
        super().__init__(model, **kwargs)

    def _resolve_base_url(self, base_url: str | None) -> str:
        endpoint = base_url or os.environ.get("AZURE_OPENAI_ENDPOINT", "").strip()
        if not endpoint:
            raise EncoderError(
                "azure-openai: no endpoint; set AZURE_OPENAI_ENDPOINT (https://<resource>.openai.azure.com) "
                "or pass base_url=..."
            )
        return endpoint

    def _path(self) -> str:
        return f"/openai/deployments/{quote(self.model, safe='')}/embeddings"

    def _params(self) -> dict[str, str] | None:
        return {"api-version": self.api_version}

    def _body(self, texts: list[str]) -> dict[str, Any]:
        body = super()._body(texts)
        del body["model"]  # the deployment in the URL picks the model
        return body

    def _wire_config(self) -> dict[str, Any]:
        return {"endpoint": self.base_url}


class OpenAICompatibleEncoder(OpenAIEncoder):
    """Any server speaking OpenAI's ``/embeddings``: Ollama, vLLM, text-embeddings-inference...

    ``base_url`` (or ``$OPENAI_BASE_URL``) is required, e.g. ``http://localhost:11434/v1`` for
    Ollama; ``model`` is the name the server knows. The key is optional:
    ``$OPENAI_COMPATIBLE_API_KEY``, else ``$OPENAI_API_KEY``, else none is sent. A model name only
    means something on its server, so ``base_url`` is part of the fingerprint. The default
    ``batch_size`` of 32 matches text-embeddings-inference's default client batch limit; vLLM and
    Ollama accept more.
    """

    provider = "openai-compatible"
    default_model = None
    default_base_url = ""
    key_env = ("OPENAI_COMPATIBLE_API_KEY", "OPENAI_API_KEY")
    key_required = False
    max_inputs = 32
    max_request_tokens = None

    def _resolve_base_url(self, base_url: str | None) -> str:
        url = base_url or os.environ.get("OPENAI_BASE_URL", "").strip()
        if not url:
            raise ValueError(
                "openai-compatible: pass base_url=... (e.g. http://localhost:11434/v1 for Ollama) "
                "or set OPENAI_BASE_URL"
            )
        return url

    def _wire_config(self) -> dict[str, Any]:
        return {"base_url": self.base_url}
