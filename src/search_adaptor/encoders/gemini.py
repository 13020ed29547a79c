"""Google embeddings: the Gemini API (API key) and Vertex AI (OAuth access token).

Gemini API, ``POST {base_url}/models/{model}:batchEmbedContents`` with header ``x-goog-api-key``::

    {"requests": [{"model": "models/{model}", "content": {"parts": [{"text": "..."}]},
                   "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 768?}, ...]}
    -> {"embeddings": [{"values": [...]}, ...]}

At most 100 requests per batch. The API has no truncation flag; the models document an input
limit (2048 tokens for ``gemini-embedding-001``) and pass ``max_chars`` to cut texts client-side.

Vertex AI, ``POST https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/
{location}/publishers/google/models/{model}:predict`` with ``Authorization: Bearer <token>``::

    {"instances": [{"content": "...", "task_type": "RETRIEVAL_DOCUMENT"}, ...],
     "parameters": {"autoTruncate": true, "outputDimensionality": 768?}}
    -> {"predictions": [{"embeddings": {"values": [...], "statistics": {...}}}, ...]}

At most 250 texts and 20,000 tokens per request, and a single text per request for the Gemini
embedding models; each text is limited to 2048 tokens and ``autoTruncate`` (on by default) cuts
longer ones instead of failing. Both APIs report errors as ``{"error": {"code", "message",
"status"}}``.

Queries and documents are told apart with the task types ``RETRIEVAL_QUERY`` and
``RETRIEVAL_DOCUMENT``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from search_adaptor.encoders.base import EncoderError, Kind
from search_adaptor.encoders.http import ApiEncoder, AuthHeaders, secret_from_env

TASK_TYPES: dict[str, str] = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"}
_CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class GeminiEncoder(ApiEncoder):
    """The Gemini API (``gemini-embedding-001`` by default; key from ``$GEMINI_API_KEY`` or
    ``$GOOGLE_API_KEY``). See :class:`~search_adaptor.encoders.http.ApiEncoder` for the parameters.
    """

    provider = "gemini"
    default_model = "gemini-embedding-001"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    auth_header = "x-goog-api-key"
    auth_scheme = ""
    max_inputs = 100

    def _wire_config(self) -> dict[str, Any]:
        return {"task_types": TASK_TYPES}

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        name = self.model if self.model.startswith("models/") else f"models/{self.model}"
        common: dict[str, Any] = {"model": name, "taskType": TASK_TYPES[kind]}
        if self.dimensions is not None:
            common["outputDimensionality"] = self.dimensions
        body = {"requests": [{**common, "content": {"parts": [{"text": t}]}} for t in texts]}
        return self._client.post(
            f"/{name}:batchEmbedContents",
            body,
            lambda payload: self._vectors([e["values"] for e in payload["embeddings"]], len(texts)),
        )


class VertexEncoder(ApiEncoder):
    """Text embeddings on Vertex AI (``text-embedding-005`` by default).

    Credentials: ``api_key`` is taken as an OAuth access token; else ``$VERTEX_ACCESS_TOKEN``
    (e.g. from ``gcloud auth print-access-token``; such tokens expire after about an hour); else
    Google application-default credentials through ``google-auth`` when it is installed, refreshed
    as they expire.

    Parameters
    ----------
    model : str, optional
        Publisher model id. The Gemini embedding models take one text per request, so their
        default ``batch_size`` is 1.
    project : str, optional
        Google Cloud project; else ``$GOOGLE_CLOUD_PROJECT``, else the credentials' project.
    location : str, optional
        Region; else ``$GOOGLE_CLOUD_LOCATION``, else ``us-central1``.
    auto_truncate : bool
        Let Vertex cut texts over the model's input limit instead of failing the request; part
        of the fingerprint.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`; ``base_url`` replaces
        ``https://{location}-aiplatform.googleapis.com/v1``.
    """

    provider = "vertex"
    default_model = "text-embedding-005"
    key_env = ("VERTEX_ACCESS_TOKEN",)
    max_inputs = 250
    max_request_tokens = 20_000

    def __init__(
        self,
        model: str | None = None,
        *,
        project: str | None = None,
        location: str | None = None,
        auto_truncate: bool = True,
        **kwargs: Any,
    ) -> None:
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT", "").strip() or None
        self.location = location or os.environ.get("GOOGLE_CLOUD_LOCATION", "").strip() or "us-central1"
        self.auto_truncate = auto_truncate
        super().__init__(model, **kwargs)
        if not self.project:
            raise EncoderError(
                "vertex: no Google Cloud project; set GOOGLE_CLOUD_PROJECT or pass project=..."
            )

    def _limits(self, model: str) -> tuple[int, int | None]:
        return (1 if model.startswith("gemini") else self.max_inputs), self.max_request_tokens

    def _credentials(self, api_key: str | None) -> tuple[AuthHeaders, str]:
        token = secret_from_env(self.provider, api_key, self.key_env, required=False)
        if token is not None:
            header = {"authorization": f"Bearer {token.reveal()}"}
            return header.copy, "$VERTEX_ACCESS_TOKEN (access tokens expire after about an hour)"
        return (
            self._default_credentials(),
            "the application-default credentials (gcloud auth application-default login)",
        )

    def _default_credentials(self) -> AuthHeaders:
        """Auth headers from google-auth's application-default credentials, refreshed when stale."""
        try:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.requests
        except ImportError:
            raise EncoderError(
                "vertex: no access token; set VERTEX_ACCESS_TOKEN (e.g. `gcloud auth print-access-token`) "
                "or install google-auth to use application-default credentials"
            ) from None
        try:
            credentials, default_project = google.auth.default(scopes=[_CLOUD_PLATFORM_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise EncoderError(
                f"vertex: no application-default credentials ({exc}); set VERTEX_ACCESS_TOKEN"
            ) from None
        self.project = self.project or default_project
        lock = threading.Lock()

        def headers() -> dict[str, str]:
            with lock:
                if not credentials.valid:
                    try:
                        credentials.refresh(google.auth.transport.requests.Request())
                    except google.auth.exceptions.GoogleAuthError as exc:
                        raise EncoderError(f"vertex: could not refresh the access token: {exc}") from None
                return {"authorization": f"Bearer {credentials.token}"}

        return headers

    def _resolve_base_url(self, base_url: str | None) -> str:
        if base_url:
            return base_url
        host = (
            "aiplatform.googleapis.com"
            if self.location == "global"
            else f"{self.location}-aiplatform.googleapis.com"
        )
        return f"https://{host}/v1"

    def _wire_config(self) -> dict[str, Any]:
        return {"task_types": TASK_TYPES, "auto_truncate": self.auto_truncate}

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        parameters: dict[str, Any] = {"autoTruncate": self.auto_truncate}
        if self.dimensions is not None:
            parameters["outputDimensionality"] = self.dimensions
        body = {
            "instances": [{"content": t, "task_type": TASK_TYPES[kind]} for t in texts],
            "parameters": parameters,
        }
        where = f"/projects/{self.project}/locations/{self.location}"
        path = f"{where}/publishers/google/models/{self.model}:predict"
        return self._client.post(
            path,
            body,
            lambda payload: self._vectors(
                [p["embeddings"]["values"] for p in payload["predictions"]], len(texts)
            ),
        )
