"""Voyage AI embeddings.

Wire format (``POST {base_url}/embeddings``, ``Authorization: Bearer $VOYAGE_API_KEY``)::

    {"input": ["...", ...], "model": "voyage-3.5", "input_type": "query", "truncation": true,
     "output_dimension": 1024?}
    -> {"object": "list", "data": [{"embedding": [...], "index": 0}, ...], "usage": {...}}

Errors come back as ``{"detail": ...}``. Documented limits per request: 1,000 texts, and a token
total of 1M for the ``-lite`` models, 320K for voyage-4, voyage-3.5 and voyage-2, 120K for the
others (large, code, finance, law). ``input_type`` ``query`` / ``document`` makes Voyage prepend
its retrieval prompts. ``truncation`` (on by default, as in the API) cuts texts over the context
length instead of failing; it is part of the fingerprint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from search_adaptor.encoders.base import Kind
from search_adaptor.encoders.http import ApiEncoder, rows_by_index

_TOKENS_320K = frozenset({"voyage-4", "voyage-3.5", "voyage-2"})


class VoyageEncoder(ApiEncoder):
    """Voyage AI (``voyage-3.5`` by default; key from ``$VOYAGE_API_KEY``).

    Parameters
    ----------
    truncation : bool
        Let Voyage cut texts over the context length instead of failing the request.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`; ``base_url`` replaces
        ``https://api.voyageai.com/v1``.
    """

    provider = "voyage"
    default_model = "voyage-3.5"
    default_base_url = "https://api.voyageai.com/v1"
    key_env = ("VOYAGE_API_KEY",)
    max_inputs = 1000

    def __init__(self, model: str | None = None, *, truncation: bool = True, **kwargs: Any) -> None:
        self.truncation = truncation
        super().__init__(model, **kwargs)

    def _limits(self, model: str) -> tuple[int, int | None]:
        if "lite" in model:
            tokens = 1_000_000
        elif model in _TOKENS_320K:
            tokens = 320_000
        else:
            tokens = 120_000
        return self.max_inputs, tokens

    def _wire_config(self) -> dict[str, Any]:
        return {"input_types": {"query": "query", "document": "document"}, "truncation": self.truncation}

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        body: dict[str, Any] = {
            "input": texts,
            "model": self.model,
            "input_type": kind,
            "truncation": self.truncation,
        }
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return self._client.post(
            "/embeddings", body, lambda payload: self._vectors(rows_by_index(payload, len(texts)), len(texts))
        )
