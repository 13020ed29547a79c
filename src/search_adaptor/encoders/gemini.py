"""Google embeddings: the Gemini API (API key) and Vertex AI (OAuth access token).

Formats as the official ``google-genai`` SDK (``google/genai/models.py``, ``_api_client.py``) and
``google-cloud-aiplatform`` send them; ``tests/recordings/`` holds what each sent.

Gemini API, ``POST {base_url}/models/{model}:batchEmbedContents`` with header ``x-goog-api-key``::

    {"requests": [{"model": "models/{model}", "content": {"parts": [{"text": "..."}], "role": "user"},
                   "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 768?}, ...]}
    -> {"embeddings": [{"values": [...]}, ...]}

At most 100 requests per batch, each embedded on its own. The API has no truncation flag; the
models' input limit (2048 tokens for ``gemini-embedding-001``, 8192 for ``gemini-embedding-2``)
is enforced client-side by cutting texts to that many tokens by
:func:`~search_adaptor.encoders.http.token_bound`. Versions before that cut (30 Nov 2026) sent texts
whole, under another fingerprint; the store still takes their vectors of the texts both rules send
alike (:meth:`~search_adaptor.encoders.http.ApiEncoder.earlier_versions`).

Vertex AI, ``POST https://{host}/v1/projects/{project}/locations/{location}/publishers/google/
models/{model}:predict`` with ``Authorization: Bearer <token>``::

    {"instances": [{"content": "...", "task_type": "RETRIEVAL_DOCUMENT"}, ...],
     "parameters": {"autoTruncate": true, "outputDimensionality": 768?}}
    -> {"predictions": [{"embeddings": {"values": [...], "statistics": {...}}}, ...]}

At most 250 texts and 20,000 tokens per request, one text for ``gemini-embedding-001``; each
text is limited to 2048 tokens and ``autoTruncate`` (on by default) cuts longer ones instead of
failing. The 20,000 are counted before that cut ("Inputs exceeding this limit result in a 400
error"; Vertex says "Unable to submit request because the input token count is 25123 but the model
supports up to 20000"), so with ``autoTruncate`` texts are also cut client-side to 20,000 tokens by
:func:`~search_adaptor.encoders.http.token_bound` (:data:`VERTEX_REQUEST_TOKENS`); a request
refused all the same (the estimate ran low) is split, and a text refused alone is named.

The Gemini embedding models after 001 (``gemini-embedding-2*``; the SDK's
``t_is_vertex_embed_content_model``: "gemini" in the name and not ``gemini-embedding-001``) are
served by ``:embedContent`` instead, one text per request::

    {"content": {"parts": [{"text": "..."}], "role": "user"},
     "embedContentConfig": {"autoTruncate": true, "outputDimensionality": 768?}}
    -> {"embedding": {"values": [...]}, "usageMetadata": {...}, "truncated": false}

The multimodal model (``multimodalembedding@001``) embeds texts and images into one space; it is
served by ``:predict``, one instance per request, as Vertex AI's "Get multimodal embeddings" guide
and ``vertexai.vision_models.MultiModalEmbeddingModel.get_embeddings`` (google-cloud-aiplatform)
send it::

    {"instances": [{"image": {"bytesBase64Encoded": "..."}}], "parameters": {"dimension": 512}?}
    -> {"predictions": [{"imageEmbedding": [...]}]}
    {"instances": [{"text": "..."}]}  -> {"predictions": [{"textEmbedding": [...]}]}

It takes no task type; ``dimension`` is 128, 256, 512 or 1408 (the default). Texts beyond its 32
tokens are shortened by the model; images are BMP, GIF, JPEG or PNG, at most 20 MB, sent as bytes
(Vertex reads ``gcsUri`` too, but no http URL).

The host is ``{location}-aiplatform.googleapis.com``, ``aiplatform.googleapis.com`` for
``global``, and ``aiplatform.{location}.rep.googleapis.com`` for the multi-regions ``us`` and
``eu`` (as the SDK picks it). Both APIs report errors as ``{"error": {"code", "message",
"status", "details"?}}``; a 429's details may carry a ``RetryInfo.retryDelay``, which is honoured.

Queries and documents: ``gemini-embedding-001`` and the ``text-embedding-*`` models take the task
types ``RETRIEVAL_QUERY`` / ``RETRIEVAL_DOCUMENT``. ``gemini-embedding-2*`` takes no task type:
Google's guide for it (Vertex AI model page "Gemini Embedding 2", "custom task instructions"; the
Gemini API embeddings guide) puts the task in the text, ``"task: search result | query: {text}"``
for queries and ``"title: none | text: {text}"`` for documents, so these are its default
``query_prompt`` / ``document_prompt``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from search_adaptor.encoders.base import EncoderError, Kind
from search_adaptor.encoders.http import (
    ApiEncoder,
    AuthHeaders,
    encoded_image,
    env_value,
    header_secret,
    secret_from_env,
)
from search_adaptor.images import ImageRef

TASK_TYPES: dict[str, str] = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"}
#: (query prefix, document prefix) of the Gemini Embedding 2 models, which take no task type.
GEMINI_2_PROMPTS = ("task: search result | query: ", "title: none | text: ")
_MULTI_REGIONS = frozenset({"us", "eu"})
_CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_ADC_LOGIN = "log in again (gcloud auth application-default login)"
#: Vertex's cap on the tokens of one ``:predict`` request, counted before ``autoTruncate`` cuts texts.
VERTEX_REQUEST_TOKENS = 20_000


def is_multimodal(model: str) -> bool:
    """Whether ``model`` is Vertex AI's multimodal embedding model (texts and images, ``:predict``)."""
    return model.startswith("multimodalembedding")


def is_gemini_2(model: str) -> bool:
    """Whether ``model`` is a Gemini embedding model after 001 (no task types, 8192-token inputs)."""
    return "gemini" in model and model.removeprefix("models/") != "gemini-embedding-001"


def _content(text: str) -> dict[str, Any]:
    return {"parts": [{"text": text}], "role": "user"}


class _GoogleModels(ApiEncoder):
    """What both Google APIs share: the models' input limits, task types and prompts."""

    def _context_tokens(self, model: str) -> int | None:
        if is_multimodal(model):
            return 32
        return 8192 if is_gemini_2(model) else 2048

    def _default_prompts(self, model: str) -> tuple[str, str]:
        return GEMINI_2_PROMPTS if is_gemini_2(model) else ("", "")

    def _task_types(self) -> dict[str, Any]:
        """The task types sent, as recorded in the config (none for Gemini Embedding 2 and the
        multimodal model)."""
        return {} if is_gemini_2(self.model) or is_multimodal(self.model) else {"task_types": TASK_TYPES}


class GeminiEncoder(_GoogleModels):
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
        return self._task_types()

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        name = self.model if self.model.startswith("models/") else f"models/{self.model}"
        common: dict[str, Any] = {"model": name}
        if not is_gemini_2(self.model):
            common["taskType"] = TASK_TYPES[kind]
        if self.dimensions is not None:
            common["outputDimensionality"] = self.dimensions
        body = {"requests": [{"content": _content(t), **common} for t in texts]}
        return self._post(
            f"/{name}:batchEmbedContents",
            body,
            texts,
            lambda payload: [e["values"] for e in payload["embeddings"]],
        )


class VertexEncoder(_GoogleModels):
    """Text embeddings on Vertex AI (``text-embedding-005`` by default).

    Credentials: ``api_key`` is taken as an OAuth access token; else ``$VERTEX_ACCESS_TOKEN``
    (e.g. from ``gcloud auth print-access-token``; such tokens expire after about an hour); else
    Google application-default credentials through ``google-auth`` when it is installed, refreshed
    as they expire, with their quota project sent as ``x-goog-user-project`` (as the SDK does).

    Parameters
    ----------
    model : str, optional
        Publisher model id. The Gemini embedding models take one text per request, so their
        default ``batch_size`` is 1.
    project : str, optional
        Google Cloud project; else ``$GOOGLE_CLOUD_PROJECT``, else the credentials' project.
    location : str, optional
        Region (or ``global``, ``us``, ``eu``); else ``$GOOGLE_CLOUD_LOCATION``, else ``us-central1``.
    auto_truncate : bool
        Let Vertex cut texts over the model's input limit instead of failing the request; part
        of the fingerprint. Vertex counts a request's tokens before it cuts them, and refuses more
        than :data:`VERTEX_REQUEST_TOKENS`, so with it texts are also cut to that many tokens by
        :func:`~search_adaptor.encoders.http.token_bound` before sending (the ``:predict`` models;
        Gemini Embedding 2's ``:embedContent`` documents no such cap). That cut is not part of
        the fingerprint, as it does not change the vectors: Vertex keeps a text's first 2048
        tokens, which its first 20,000 estimated tokens hold unless the estimate runs about ten
        times high (a text made of long runs of one punctuation character); and a text over
        20,000 real tokens, the only kind the cut could newly let through, never had a vector
        (its request was refused). Stores, indexes and adapters made before it stay valid.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`; ``base_url`` replaces
        ``https://{host}/v1``.
    """

    provider = "vertex"
    default_model = "text-embedding-005"
    key_env = ("VERTEX_ACCESS_TOKEN",)
    max_inputs = 250
    max_request_tokens = VERTEX_REQUEST_TOKENS
    image_types = frozenset({"image/bmp", "image/gif", "image/jpeg", "image/png"})

    def __init__(
        self,
        model: str | None = None,
        *,
        project: str | None = None,
        location: str | None = None,
        auto_truncate: bool = True,
        **kwargs: Any,
    ) -> None:
        self.project = project or env_value("GOOGLE_CLOUD_PROJECT")
        self.location = location or env_value("GOOGLE_CLOUD_LOCATION") or "us-central1"
        self.auto_truncate = auto_truncate
        super().__init__(model, **kwargs)
        # the application-default credentials can name the project, and are looked up only to send
        # (a plan, embed --dry-run, needs neither; the project is not part of the fingerprint)
        if not self.project and not kwargs.get("plan_only"):
            raise EncoderError(
                "vertex: no Google Cloud project; set GOOGLE_CLOUD_PROJECT or pass project=..."
            )

    @property
    def accepts_images(self) -> bool:  # type: ignore[override]
        return is_multimodal(self.model)

    def _limits(self, model: str) -> tuple[int, int | None]:
        one = model.startswith("gemini") or is_multimodal(model)
        return (1 if one else self.max_inputs), self.max_request_tokens

    def _server_truncates(self) -> bool:
        return self.auto_truncate or is_multimodal(self.model)

    def _whole_text_cap(self) -> int | None:
        # documented for the :predict text models; the multimodal model's texts (32 tokens kept,
        # 4096 characters sent) stay far below it
        if is_gemini_2(self.model) or is_multimodal(self.model):
            return None
        return VERTEX_REQUEST_TOKENS

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
                token = header_secret(  # the same rule as keys: google-auth's token, checked
                    "vertex", credentials.token, "the application-default access token", _ADC_LOGIN
                )
                out = {"authorization": f"Bearer {token.reveal()}"}
                quota_project = getattr(credentials, "quota_project_id", None)
                if quota_project:  # user credentials bill the API to this project
                    out["x-goog-user-project"] = quota_project
                return out

        return headers

    def _resolve_base_url(self, base_url: str | None) -> str:
        if base_url:
            return base_url
        if self.location == "global":
            host = "aiplatform.googleapis.com"
        elif self.location in _MULTI_REGIONS:
            host = f"aiplatform.{self.location}.rep.googleapis.com"
        else:
            host = f"{self.location}-aiplatform.googleapis.com"
        return f"https://{host}/v1"

    def _wire_config(self) -> dict[str, Any]:
        return {**self._task_types(), "auto_truncate": self.auto_truncate}

    def _model_path(self) -> str:
        return f"/projects/{self.project}/locations/{self.location}/publishers/google/models/{self.model}"

    def _request_images(self, images: list[ImageRef], kind: Kind) -> np.ndarray:
        return self._multimodal(
            [{"image": {"bytesBase64Encoded": encoded_image(i)[1]}} for i in images], images
        )

    def _multimodal(self, instances: list[dict[str, Any]], items: list[Any]) -> np.ndarray:
        body: dict[str, Any] = {"instances": instances}
        if self.dimensions is not None:
            body["parameters"] = {"dimension": self.dimensions}
        field = "textEmbedding" if "text" in instances[0] else "imageEmbedding"
        return self._post(
            f"{self._model_path()}:predict", body, items, lambda p: [x[field] for x in p["predictions"]]
        )

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        model_path = self._model_path()
        if is_multimodal(self.model):
            return self._multimodal([{"text": t} for t in texts], texts)
        if is_gemini_2(self.model):
            config: dict[str, Any] = {"autoTruncate": self.auto_truncate}
            if self.dimensions is not None:
                config["outputDimensionality"] = self.dimensions
            body = {"content": _content(texts[0]), "embedContentConfig": config}
            return self._post(f"{model_path}:embedContent", body, texts, lambda p: [p["embedding"]["values"]])
        parameters: dict[str, Any] = {"autoTruncate": self.auto_truncate}
        if self.dimensions is not None:
            parameters["outputDimensionality"] = self.dimensions
        body = {
            "instances": [{"content": t, "task_type": TASK_TYPES[kind]} for t in texts],
            "parameters": parameters,
        }
        return self._post(
            f"{model_path}:predict",
            body,
            texts,
            lambda p: [x["embeddings"]["values"] for x in p["predictions"]],
        )
