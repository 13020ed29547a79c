"""OpenAI embeddings, on api.openai.com, Azure OpenAI, or any OpenAI-compatible server.

Wire format (``POST {base_url}/embeddings``), as the official ``openai`` SDK sends it::

    {"model": "...", "input": ["...", ...], "encoding_format": "base64", "dimensions": 256?}
    -> {"data": [{"index": 0, "embedding": "<base64 of little-endian float32>"}, ...], "usage": {...}}

``base64`` replies are about a quarter of the size of ``float`` ones and decode to the same
float32 values; OpenAI-compatible servers may lack it, so they get ``float`` (lists of numbers).
Errors come back as ``{"error": {"message": ...}}``. Documented limits: 2048 inputs per request,
8192 tokens per input and 300,000 tokens summed over one request. There is no truncation flag: an
input over 8192 tokens is a 400, so texts are cut client-side to 8192 tokens by
:func:`~search_adaptor.encoders.http.token_bound`, an estimate that holds for every script (CJK
text or code as well as English); a text the API still rejects is named and the rest of its batch
embedded (:class:`~search_adaptor.encoders.base.InputsRejected`). Versions before that cut (30 Nov
2026) cut every text to :data:`EARLIER_MAX_CHARS` characters instead, under another fingerprint; the
store still takes their vectors of the texts both rules send alike
(:meth:`~search_adaptor.encoders.http.ApiEncoder.earlier_versions`).

OpenAI's models embed queries and documents the same way (no mode field); ``query_prompt`` and
``document_prompt`` exist for models that expect prefixes, e.g. E5 behind vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np

from search_adaptor.encoders.base import EncoderError, Kind
from search_adaptor.encoders.http import (
    ApiEncoder,
    AuthHeaders,
    env_value,
    header_secret,
    rows_by_index,
    secret_from_env,
)

OPENAI_MAX_TOKENS_PER_INPUT = 8192
#: what versions before the cut by tokens (30 Nov 2026) cut every text to, in characters, by default
EARLIER_MAX_CHARS = 3 * OPENAI_MAX_TOKENS_PER_INPUT
#: the path of Azure OpenAI's v1 API root (``https://<resource>.openai.azure.com/openai/v1``)
AZURE_V1_PATH = "/openai/v1"


def azure_v1_root(url: str) -> str | None:
    """The resource endpoint in front of an Azure OpenAI v1 API root, or None if ``url`` is not one.

    ``https://r.openai.azure.com/openai/v1/`` gives ``https://r.openai.azure.com``: the v1 API
    serves the same deployments as the classic ``/openai/deployments/...`` path of that resource,
    so the two roots name one embedding space. The trailing slash and the path's case do not
    matter; the query string (a gateway's parameters) is kept.
    """
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if not path.lower().endswith(AZURE_V1_PATH):
        return None
    return urlunsplit(parts._replace(path=path[: -len(AZURE_V1_PATH)], fragment=""))


class OpenAIEncoder(ApiEncoder):
    """OpenAI's embeddings endpoint (``text-embedding-3-small`` by default).

    The key comes from ``api_key`` or ``$OPENAI_API_KEY``; the API root from ``base_url``,
    ``$OPENAI_BASE_URL`` or ``https://api.openai.com/v1``; the organization and project headers
    (``OpenAI-Organization``, ``OpenAI-Project``) from ``organization`` / ``project`` or
    ``$OPENAI_ORG_ID`` / ``$OPENAI_PROJECT_ID``, as in the official SDK.

    Parameters
    ----------
    organization, project : str, optional
        Billing organization and project; neither changes the vectors.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`.
    """

    provider = "openai"
    default_model = "text-embedding-3-small"
    default_base_url = "https://api.openai.com/v1"
    base_url_env: str | None = "OPENAI_BASE_URL"
    key_env = ("OPENAI_API_KEY",)
    max_inputs = 2048
    max_request_tokens = 300_000
    context_tokens = OPENAI_MAX_TOKENS_PER_INPUT
    earlier_max_chars = EARLIER_MAX_CHARS
    encoding_format = "base64"
    #: how to give the endpoint, for the subclasses that have no default one
    endpoint_hint = "pass base_url=..."

    def __init__(
        self,
        model: str | None = None,
        *,
        organization: str | None = None,
        project: str | None = None,
        **kw: Any,
    ) -> None:
        self.organization = organization or env_value("OPENAI_ORG_ID")
        self.project = project or env_value("OPENAI_PROJECT_ID")
        super().__init__(model, **kw)

    def _extra_headers(self) -> dict[str, str]:
        headers = {"OpenAI-Organization": self.organization, "OpenAI-Project": self.project}
        return {k: v for k, v in headers.items() if v}

    def _resolve_base_url(self, base_url: str | None) -> str:
        url = base_url or env_value(self.base_url_env or "") or self.default_base_url
        if not url:
            raise EncoderError(f"{self.provider}: no endpoint; {self.endpoint_hint}")
        return url

    def _path(self) -> str:
        return "/embeddings"

    def _params(self) -> dict[str, str] | None:
        return None

    def _body(self, texts: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        return self._post(
            self._path(),
            self._body(texts),
            texts,
            lambda payload: rows_by_index(payload, len(texts)),
            params=self._params(),
        )


class AzureOpenAIEncoder(OpenAIEncoder):
    """An Azure OpenAI deployment, through the classic or the v1 API.

    The endpoint is ``base_url`` or ``$AZURE_OPENAI_ENDPOINT``; ``model`` is the deployment name.

    * A resource endpoint (``https://<resource>.openai.azure.com``): the classic API,
      ``POST {endpoint}/openai/deployments/{deployment}/embeddings?api-version=...``, the
      deployment also sent in the body as the SDK does.
    * A v1 API root, as the Azure portal shows it (``https://<resource>.openai.azure.com/openai/v1``,
      trailing slash or not): ``POST {endpoint}/embeddings`` with the deployment as ``model`` and no
      ``api-version``, as Microsoft's v1 examples send it with the plain ``openai`` client. The v1 API
      takes no dated version, so an explicit ``api_version`` with such an endpoint is refused rather
      than silently dropped, while ``$OPENAI_API_VERSION`` (the classic API's setting, often set
      for every tool at once; the ``openai`` client that calls the v1 API never reads it) is ignored.

    Both APIs serve the same deployments, so they make the same vectors: the fingerprint records the
    resource endpoint without ``/openai/v1``, and an index made through one path is served through
    the other. Deployment names are arbitrary, so the endpoint is part of the fingerprint.

    Credentials, in the official SDK's order and the same for both APIs: ``api_key`` (``api-key``
    header), else a Microsoft Entra ID token from ``azure_ad_token_provider``, ``azure_ad_token`` or
    ``$AZURE_OPENAI_AD_TOKEN`` (``Authorization: Bearer``), else ``$AZURE_OPENAI_API_KEY``. Azure's
    embeddings guide caps the tokens summed over one request at 8192, lower than OpenAI's, so that
    is the default ``max_request_tokens``; raise it if your deployment allows.

    Parameters
    ----------
    model : str
        Deployment name (required).
    api_version : str, optional
        The classic API's ``api-version`` query parameter; else ``$OPENAI_API_VERSION``, else
        ``2024-10-21``. Refused with a v1 endpoint, which takes none.
    azure_ad_token_provider : callable, optional
        Returns a current Entra ID access token; called for every request, as the SDK does (e.g.
        ``azure.identity.get_bearer_token_provider``), so long runs outlive a token's hour. Its
        answer is checked as a key is (:func:`~search_adaptor.encoders.http.header_secret`):
        surrounding whitespace is stripped, and a token no header can carry fails the request in
        one line that does not show it.
    azure_ad_token : str, optional
        Entra ID access token (they expire after about an hour).
    **kwargs
        See :class:`OpenAIEncoder`.

    Raises
    ------
    ValueError
        ``api_version`` given with a v1 endpoint.
    """

    provider = "azure-openai"
    default_model = None
    default_base_url = ""
    base_url_env = "AZURE_OPENAI_ENDPOINT"
    endpoint_hint = "set AZURE_OPENAI_ENDPOINT (https://<resource>.openai.azure.com) or pass base_url=..."
    key_env = ("AZURE_OPENAI_API_KEY",)
    auth_header = "api-key"
    auth_scheme = ""
    max_request_tokens = OPENAI_MAX_TOKENS_PER_INPUT

    def __init__(
        self,
        model: str | None = None,
        *,
        api_version: str | None = None,
        azure_ad_token_provider: Callable[[], str] | None = None,
        azure_ad_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        #: the ``api-version`` sent; None on the v1 API, which takes none
        self.api_version: str | None = api_version or env_value("OPENAI_API_VERSION") or "2024-10-21"
        self._explicit_api_version = api_version
        #: whether requests go to the v1 API (the endpoint ends with ``/openai/v1``)
        self.v1 = False
        self._azure_ad_token = azure_ad_token
        self._azure_ad_token_provider = azure_ad_token_provider
        super().__init__(model, **kwargs)

    def _credentials(self, api_key: str | None) -> tuple[AuthHeaders, str]:
        if not api_key and self._azure_ad_token_provider is not None:
            fresh, provider = self._azure_ad_token_provider, self.provider

            def headers() -> dict[str, str]:
                # checked as keys are: a token printed by a command (`az account get-access-token -o
                # tsv`) ends with a newline, which is stripped; one no header can carry is refused
                # before anything is sent, never echoed by httpx's error nor retried
                token = header_secret(
                    provider, fresh(), "the token azure_ad_token_provider returned", "fix the provider"
                )
                return {"authorization": f"Bearer {token.reveal()}"}

            return headers, "the azure_ad_token_provider"
        if not api_key:
            token = secret_from_env(
                self.provider, self._azure_ad_token, ("AZURE_OPENAI_AD_TOKEN",), required=False
            )
            if token is not None:
                header = {"authorization": f"Bearer {token.reveal()}"}
                return header.copy, "$AZURE_OPENAI_AD_TOKEN (Entra ID tokens expire after about an hour)"
        return super()._credentials(api_key)

    def _resolve_base_url(self, base_url: str | None) -> str:
        """The endpoint, and which API it is: checked before any client is made."""
        url = super()._resolve_base_url(base_url)
        if azure_v1_root(url) is not None:
            if self._explicit_api_version:
                raise ValueError(
                    f"{self.provider}: api_version={self._explicit_api_version!r} does not apply to a v1 "
                    f"endpoint (ending {AZURE_V1_PATH}), which takes no api-version; drop it, or give the "
                    "resource endpoint (https://<resource>.openai.azure.com) to use the dated API"
                )
            self.v1 = True
            self.api_version = None  # $OPENAI_API_VERSION belongs to the classic API
        return url

    def _path(self) -> str:
        if self.v1:
            return "/embeddings"  # the deployment goes in the body's "model"
        return f"/openai/deployments/{quote(self.model, safe='')}/embeddings"

    def _params(self) -> dict[str, str] | None:
        return None if self.api_version is None else {"api-version": self.api_version}

    def _wire_config(self) -> dict[str, Any]:
        # the resource endpoint for both APIs: the same deployment, the same vectors, one fingerprint
        return {"endpoint": azure_v1_root(self.base_url) or self.base_url}


class OpenAICompatibleEncoder(OpenAIEncoder):
    """Any server speaking OpenAI's ``/embeddings``: Ollama, vLLM, text-embeddings-inference...

    ``base_url`` (or ``$OPENAI_BASE_URL``) is required, e.g. ``http://localhost:11434/v1`` for
    Ollama; ``model`` is the name the server knows. The key is optional:
    ``$OPENAI_COMPATIBLE_API_KEY``, else ``$OPENAI_API_KEY``, else none is sent. A model name only
    means something on its server, so ``base_url`` (without any credentials in it) is part of the
    fingerprint. Vectors are asked as ``float``: not every such server speaks ``base64``. The input
    limit is the server's own and unknown here, so texts are not cut unless ``max_input_tokens`` is
    given (versions before 30 Nov 2026 cut them to :data:`EARLIER_MAX_CHARS` characters; the store
    still takes their vectors of shorter texts); a text the server rejects as too long is named and
    the rest embedded. The default
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
    context_tokens = None
    encoding_format = "float"
    endpoint_hint = "pass base_url=... (e.g. http://localhost:11434/v1 for Ollama) or set OPENAI_BASE_URL"

    def _extra_headers(self) -> dict[str, str]:
        return {}  # OpenAI's organization and project mean nothing to another server

    def _wire_config(self) -> dict[str, Any]:
        return {"base_url": self.base_url}
