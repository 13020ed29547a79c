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

The multimodal models (``voyage-multimodal-3``, ``voyage-multimodal-3.5``) are served by
``POST {base_url}/multimodalembeddings`` only, texts and images alike, one input per item, as the
API reference ("Multimodal embedding models") and the SDK (``voyageai.Client.multimodal_embed``,
``voyageai/object/multimodal_embeddings.py``) send it::

    {"inputs": [{"content": [{"type": "text", "text": "..."}]},
                {"content": [{"type": "image_base64", "image_base64": "data:image/png;base64,..."}]},
                {"content": [{"type": "image_url", "image_url": "https://..."}]}, ...],
     "model": "voyage-multimodal-3", "input_type": "document", "truncation": true,
     "output_dimension": 1024?, "encoding_format": "base64"}
    -> {"object": "list", "data": [{"embedding": "...", "index": 0}, ...],
        "usage": {"text_tokens", "image_pixels", "total_tokens"}}

Documented limits per request: 1,000 inputs and 320,000 tokens, an image counting a token per 560
pixels (at most 16 million pixels and 20 MB an image; PNG, JPEG, WebP, GIF); "each request should use
either image_base64 or image_url exclusively for images, not both", so image files and image URLs go
in requests of their own. The pixels of a file are read from its header
(:func:`~search_adaptor.images.image_size`); a URL, or a file whose size cannot be read, counts as the
largest image (16 million pixels).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from search_adaptor.encoders.base import Kind
from search_adaptor.encoders.http import (
    ApiEncoder,
    AuthHeaders,
    image_data_uri,
    rows_by_index,
    secret_from_env,
)
from search_adaptor.images import ImageRef, image_size

_TOKENS_320K = frozenset({"voyage-4", "voyage-3.5", "voyage-2"})
ATLAS_BASE_URL = "https://ai.mongodb.com/v1"
#: Multimodal models: every 560 pixels of an image count as a token; an image has at most 16M pixels.
PIXELS_PER_TOKEN = 560
MAX_IMAGE_PIXELS = 16_000_000
MULTIMODAL_REQUEST_TOKENS = 320_000


def is_multimodal(model: str) -> bool:
    """Whether ``model`` is a Voyage multimodal model (served by ``/multimodalembeddings``)."""
    return model.startswith("voyage-multimodal")


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
        self._atlas: bool | None = None  # known once the key is read (a dry run reads none)
        super().__init__(model, **kwargs)
        if self.model.startswith("voyage-context"):  # /embeddings would refuse it on every request
            raise ValueError(
                f"voyage: {self.model} embeds a document's chunks together (/contextualizedembeddings), "
                "not one text at a time; choose a text model such as voyage-3.5 or voyage-4, or embed "
                "the corpus yourself and pass the vectors (--embeddings)"
            )

    def _credentials(self, api_key: str | None) -> tuple[AuthHeaders, str]:
        key = secret_from_env(self.provider, api_key, self.key_env)
        assert key is not None  # required: a missing key raised
        self._atlas = key.reveal().startswith("al-")
        return super()._credentials(key.reveal())

    def _resolve_base_url(self, base_url: str | None) -> str:
        if base_url:
            return base_url
        atlas = self._atlas
        if atlas is None:  # a dry run: the root its run would use, from the key's prefix alone
            key = next((os.environ[name] for name in self.key_env if os.environ.get(name)), "")
            atlas = key.startswith("al-")
        return ATLAS_BASE_URL if atlas else self.default_base_url

    @property
    def accepts_images(self) -> bool:  # type: ignore[override]
        return is_multimodal(self.model)

    accepts_image_urls = accepts_images

    def _limits(self, model: str) -> tuple[int, int | None]:
        if is_multimodal(model):
            return self.max_inputs, MULTIMODAL_REQUEST_TOKENS
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

    def _image_limits(self) -> tuple[int, int | None]:
        return self.max_inputs, MULTIMODAL_REQUEST_TOKENS

    def _image_tokens(self, image: ImageRef, header: bytes) -> int:
        size = image_size(header)
        pixels = MAX_IMAGE_PIXELS if size is None else min(size[0] * size[1], MAX_IMAGE_PIXELS)
        return math.ceil(pixels / PIXELS_PER_TOKEN)

    _image_cost = _image_tokens

    def _refusal(self, image: ImageRef, header: bytes) -> str | None:
        size = image_size(header)
        if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:  # documented per image
            return (
                f"{size[0]}x{size[1]} pixels, more than the {MAX_IMAGE_PIXELS:,} {self.provider} takes in "
                "one image; scale it down"
            )
        return super()._refusal(image, header)

    def _request_images(self, images: list[ImageRef], kind: Kind) -> np.ndarray:
        parts = [
            {"type": "image_url", "image_url": image.source}
            if image.is_url
            else {"type": "image_base64", "image_base64": image_data_uri(image)}
            for image in images
        ]
        return self._embed(
            "/multimodalembeddings", {"inputs": [{"content": [p]} for p in parts]}, images, kind
        )

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        if is_multimodal(self.model):
            inputs = [{"content": [{"type": "text", "text": t}]} for t in texts]
            return self._embed("/multimodalembeddings", {"inputs": inputs}, texts, kind)
        return self._embed("/embeddings", {"input": texts}, texts, kind)

    def _embed(self, path: str, inputs: dict[str, Any], items: list[Any], kind: Kind) -> np.ndarray:
        body: dict[str, Any] = {
            **inputs,
            "model": self.model,
            "input_type": kind,
            "truncation": self.truncation,
            "encoding_format": "base64",
        }
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return self._post(path, body, items, lambda payload: rows_by_index(payload, len(items)))
