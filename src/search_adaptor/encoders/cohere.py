"""Cohere embeddings through the v2 Embed API.

Wire format (``POST {base_url}/v2/embed``, ``Authorization: Bearer $CO_API_KEY``)::

    {"model": "embed-v4.0", "texts": ["...", ...], "input_type": "search_query",
     "embedding_types": ["float"], "truncate": "END", "output_dimension": 1024?}
    -> {"id": "...", "embeddings": {"float": [[...], ...]}, "texts": [...], "meta": {...}}

Errors come back as ``{"message": ...}``. At most 96 texts per call. ``input_type`` is
``search_query`` for queries and ``search_document`` for documents. Over-long texts: ``truncate``
``"END"`` (the default here, as in the API) drops the end, ``"START"`` the start, ``"NONE"`` fails
the request; it is part of the fingerprint. ``output_dimension`` (256, 512, 1024, 1536) exists only
for embed-v4 and newer.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from search_adaptor.encoders.base import Kind
from search_adaptor.encoders.http import ApiEncoder

INPUT_TYPES: dict[str, str] = {"query": "search_query", "document": "search_document"}


class CohereEncoder(ApiEncoder):
    """Cohere Embed v2 (``embed-v4.0`` by default; key from ``$CO_API_KEY``).

    Parameters
    ----------
    truncate : {"END", "START", "NONE"}
        How Cohere handles texts over the model's input limit.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`; ``base_url`` replaces
        ``https://api.cohere.com``.
    """

    provider = "cohere"
    default_model = "embed-v4.0"
    default_base_url = "https://api.cohere.com"
    key_env = ("CO_API_KEY",)
    max_inputs = 96

    def __init__(
        self, model: str | None = None, *, truncate: Literal["END", "START", "NONE"] = "END", **kwargs: Any
    ) -> None:
        if truncate not in ("END", "START", "NONE"):
            raise ValueError(f"cohere: truncate must be END, START or NONE, got {truncate!r}")
        self.truncate = truncate
        super().__init__(model, **kwargs)

    def _wire_config(self) -> dict[str, Any]:
        return {"input_types": INPUT_TYPES, "truncate": self.truncate}

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        body: dict[str, Any] = {
            "model": self.model,
            "texts": texts,
            "input_type": INPUT_TYPES[kind],
            "embedding_types": ["float"],
            "truncate": self.truncate,
        }
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return self._client.post(
            "/v2/embed", body, lambda payload: self._vectors(payload["embeddings"]["float"], len(texts))
        )
