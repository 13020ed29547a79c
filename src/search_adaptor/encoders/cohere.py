"""Cohere embeddings through the v2 Embed API.

Wire format (``POST {base_url}/v2/embed``, ``Authorization: Bearer $CO_API_KEY``), as the official
``cohere`` SDK sends it (``tests/recordings/``)::

    {"model": "embed-v4.0", "texts": ["...", ...], "input_type": "search_query",
     "embedding_types": ["base64"], "truncate": "END", "output_dimension": 1024?}
    -> {"id": "...", "embeddings": {"base64": ["<little-endian float32>", ...]}, "texts": [...], ...}

Errors come back as ``{"message": ...}``; a 429 may say when to come back in ``x-ratelimit-reset``
(a Unix time), as the SDK reads it. At most 96 texts per call. ``input_type`` is ``search_query``
for queries and ``search_document`` for documents. Vectors are asked as ``base64`` (the float32
bytes, about a quarter of the JSON numbers) from the v3 models on, which the API documents for
that type, and as ``float`` from older models. Over-long texts: ``truncate`` ``"END"`` (the
default here, as in the API) drops the end, ``"START"`` the start, ``"NONE"`` fails the request
(then the text is named and the rest of the batch embedded); it is part of the fingerprint.
``output_dimension`` (256, 512, 1024, 1536) exists only for embed-v4 and newer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np

from search_adaptor.encoders.base import Kind
from search_adaptor.encoders.http import ApiEncoder, decode_vector

INPUT_TYPES: dict[str, str] = {"query": "search_query", "document": "search_document"}
#: Models before Embed v3, which return ``float`` vectors only.
_FLOAT_ONLY = re.compile(r"-v[12]\.")


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
    #: embed-v4.0's context; older models take 512 tokens, so it bounds what any of them keeps.
    context_tokens = 128_000

    def __init__(
        self, model: str | None = None, *, truncate: Literal["END", "START", "NONE"] = "END", **kwargs: Any
    ) -> None:
        if truncate not in ("END", "START", "NONE"):
            raise ValueError(f"cohere: truncate must be END, START or NONE, got {truncate!r}")
        self.truncate = truncate
        super().__init__(model, **kwargs)

    def _server_truncates(self) -> bool:
        return self.truncate != "NONE"

    def _keeps_end(self) -> bool:
        return self.truncate == "START"

    def _wire_config(self) -> dict[str, Any]:
        return {"input_types": INPUT_TYPES, "truncate": self.truncate}

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        vector_type = "float" if _FLOAT_ONLY.search(self.model) else "base64"
        body: dict[str, Any] = {
            "model": self.model,
            "texts": texts,
            "input_type": INPUT_TYPES[kind],
            "embedding_types": [vector_type],
            "truncate": self.truncate,
        }
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return self._post(
            "/v2/embed",
            body,
            texts,
            lambda payload: [decode_vector(v) for v in payload["embeddings"][vector_type]],
        )
