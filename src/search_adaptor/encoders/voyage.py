"""Voyage AI embeddings, on Voyage's API or MongoDB Atlas.

Wire format (``POST {base_url}/embeddings``, ``Authorization: Bearer $VOYAGE_API_KEY``), as the
official ``voyageai`` SDK sends it (``tests/recordings/``)::

    {"input": ["...", ...], "model": "voyage-3.5", "input_type": "query", "truncation": true,
     "output_dimension": 1024?, "encoding_format": "base64"}
    -> {"object": "list", "data": [{"embedding": "<little-endian float32>", "index": 0}, ...], ...}

Keys issued by MongoDB Atlas (``al-...``) go to ``https://ai.mongodb.com/v1``, others to
``https://api.voyageai.com/v1``, as the SDK picks (``voyageai.util.get_default_base_url``); both
serve the same models. Errors come back as ``{"detail": ...}``. Documented limits per request:
1,000 texts, and a token total of 1M for the ``-lite`` models, 320K for voyage-4, voyage-3.5 and
voyage-2, 120K for the others (large, code, finance, law). ``input_type`` ``query`` / ``document``
makes Voyage prepend its retrieval prompts. ``truncation`` (on by default, as in the API) cuts
texts over the context length instead of failing; it is part of the fingerprint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from search_adaptor.encoders.base import Kind
from search_adaptor.encoders.http import ApiEncoder, AuthHeaders, rows_by_index, secret_from_env

_TOKENS_320K = frozenset({"voyage-4", "voyage-3.5", "voyage-2"})
ATLAS_BASE_URL = "https://ai.mongodb.com/v1"


class VoyageEncoder(ApiEncoder):
    """Voyage AI (``voyage-3.5`` by default; key from ``$VOYAGE_API_KEY``).

    Parameters
    ----------
    truncation : bool
        Let Voyage cut texts over the context length instead of failing the request.
    **kwargs
        See :class:`~search_adaptor.encoders.http.ApiEncoder`; ``base_url`` replaces
        ``https://api.voyageai.com/v1`` (or the Atlas endpoint for ``al-`` keys).
    """

    provider = "voyage"
    default_model = "voyage-3.5"
    default_base_url = "https://api.voyageai.com/v1"
    key_env = ("VOYAGE_API_KEY",)
    max_inputs = 1000
    #: The longest context of the current models (32K tokens); bounds what any of them keeps.
    context_tokens = 32_000

    def __init__(self, model: str | None = None, *, truncation: bool = True, **kwargs: Any) -> None:
        self.truncation = truncation
        self._atlas = False
        super().__init__(model, **kwargs)

    def _credentials(self, api_key: str | None) -> tuple[AuthHeaders, str]:
        key = secret_from_env(self.provider, api_key, self.key_env)
        assert key is not None  # required: a missing key raised
        self._atlas = key.reveal().startswith("al-")
        return super()._credentials(key.reveal())

    def _resolve_base_url(self, base_url: str | None) -> str:
        return base_url or (ATLAS_BASE_URL if self._atlas else self.default_base_url)

    def _limits(self, model: str) -> tuple[int, int | None]:
        if "lite" in model:
            tokens = 1_000_000
        elif model in _TOKENS_320K:
            tokens = 320_000
        else:
            tokens = 120_000
        return self.max_inputs, tokens

    def _server_truncates(self) -> bool:
        return self.truncation

    def _wire_config(self) -> dict[str, Any]:
        return {"input_types": {"query": "query", "document": "document"}, "truncation": self.truncation}

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        body: dict[str, Any] = {
            "input": texts,
            "model": self.model,
            "input_type": kind,
            "truncation": self.truncation,
            "encoding_format": "base64",
        }
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return self._post("/embeddings", body, texts, lambda payload: rows_by_index(payload, len(texts)))
