"""Build any encoder from a provider name: the one entry point the CLI and the API use.

Provider modules are imported only when asked for, so naming ``openai`` never imports torch and
naming ``sentence-transformers`` never imports httpx.
"""

from __future__ import annotations

import importlib
from typing import Any

from search_adaptor.encoders.base import Encoder

#: provider name -> (module, class) of its encoder
_CLASSES: dict[str, tuple[str, str]] = {
    "openai": ("search_adaptor.encoders.openai", "OpenAIEncoder"),
    "azure-openai": ("search_adaptor.encoders.openai", "AzureOpenAIEncoder"),
    "openai-compatible": ("search_adaptor.encoders.openai", "OpenAICompatibleEncoder"),
    "gemini": ("search_adaptor.encoders.gemini", "GeminiEncoder"),
    "vertex": ("search_adaptor.encoders.gemini", "VertexEncoder"),
    "cohere": ("search_adaptor.encoders.cohere", "CohereEncoder"),
    "voyage": ("search_adaptor.encoders.voyage", "VoyageEncoder"),
}
LOCAL = "sentence-transformers"
PROVIDERS: tuple[str, ...] = (LOCAL, *_CLASSES)


def make_encoder(
    provider: str,
    model: str | None = None,
    *,
    base_url: str | None = None,
    dimensions: int | None = None,
    batch_size: int | None = None,
    max_concurrency: int | None = None,
    **kw: Any,
) -> Encoder:
    """An encoder for ``provider``'s ``model`` (the provider's default model when omitted).

    Parameters
    ----------
    provider : str
        One of :data:`PROVIDERS`.
    model : str, optional
        Model id; the deployment name for ``azure-openai``; required for ``azure-openai`` and
        ``openai-compatible``.
    base_url : str, optional
        API root (proxies, regional or self-hosted endpoints, tests); required for
        ``openai-compatible`` unless ``$OPENAI_BASE_URL`` is set.
    dimensions : int, optional
        Shorter output vectors, where the model supports it.
    batch_size, max_concurrency : int, optional
        Texts per batch and batches in flight; the provider's documented limits by default.
    **kw
        Provider options: ``api_key``, ``timeout``, ``retry``, ``retry_budget_s``, ``max_chars``,
        ``max_input_tokens``, ``max_request_tokens``, ``query_prompt``, ``document_prompt``;
        ``organization``, ``project`` (OpenAI); ``api_version``, ``azure_ad_token`` (Azure);
        ``project``, ``location``, ``auto_truncate`` (Vertex); ``truncate`` (Cohere);
        ``truncation`` (Voyage); ``device`` (sentence-transformers). See
        :class:`~search_adaptor.encoders.http.ApiEncoder`.

    Raises
    ------
    ValueError
        Unknown provider (the message lists the choices) or an option the provider lacks.
    EncoderError
        No API key: the message names the environment variable to set.
    """
    if provider == LOCAL:
        if base_url is not None or dimensions is not None or max_concurrency not in (None, 1):
            raise ValueError(
                f"{LOCAL}: base_url, dimensions and max_concurrency do not apply to a local model"
            )
        from search_adaptor.encoders.local import DEFAULT_MODEL, SentenceTransformerEncoder

        if batch_size is not None:
            kw["batch_size"] = batch_size
        return SentenceTransformerEncoder(model or DEFAULT_MODEL, **kw)
    if provider not in _CLASSES:
        raise ValueError(f"unknown embedding provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    module, name = _CLASSES[provider]
    cls = getattr(importlib.import_module(module), name)
    return cls(
        model,
        base_url=base_url,
        dimensions=dimensions,
        batch_size=batch_size,
        max_concurrency=max_concurrency,
        **kw,
    )
