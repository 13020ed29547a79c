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

Images (from Embed v3 on; corpus rows with ``"image"``) go in ``images``, as data URIs, instead of
``texts``, one embedding each, as the API reference documents ``images`` (and the SDK's
``cohere.v2.client.embed`` docstring: "An array of image data URIs for the model to embed ... in
either image/jpeg, image/png, image/webp, or image/gif format ... For Embed v3.x models, the maximum
number of images per call is 1, and each image has a maximum size of 5MB. For Embed v4.0 and newer
models, there is no limit on the number of images per call. The combined size of all images in the
request must be at most 20MB")::

    {"model": "embed-v4.0", "images": ["data:image/png;base64,...", ...],
     "input_type": "search_document", "embedding_types": ["base64"], "output_dimension": 1024?}
    -> {"id": "...", "embeddings": {"base64": [...]}, "images": [{"width", "height", ...}], ...}

Embed v4 takes the retrieval input types for images too; Embed v3 takes ``input_type: "image"``
("When using the images parameter ... input_type must be image", Cohere's embeddings guide). Cohere
takes image data only, not URLs; it bills images per image (``meta.billed_units.images``), not in
tokens.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np

from search_adaptor.encoders.base import Kind
from search_adaptor.encoders.http import ApiEncoder, decode_vector, image_data_uri
from search_adaptor.images import ImageRef

INPUT_TYPES: dict[str, str] = {"query": "search_query", "document": "search_document"}
#: Models before Embed v3, which return ``float`` vectors only (and embed no images).
_FLOAT_ONLY = re.compile(r"-v[12]\.")
#: Embed v3 models: one image of at most 5 MB per request, ``input_type: "image"``.
_V3 = re.compile(r"-v3\.")
#: The combined size of the images of one request, Embed v4 and newer.
MAX_REQUEST_IMAGE_BYTES = 20_000_000


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

    @property
    def accepts_images(self) -> bool:  # type: ignore[override]
        return not _FLOAT_ONLY.search(self.model)

    @property
    def max_image_bytes(self) -> int:  # type: ignore[override]
        return 5_000_000 if _V3.search(self.model) else MAX_REQUEST_IMAGE_BYTES

    def _image_limits(self) -> tuple[int, int | None]:
        return (1, None) if _V3.search(self.model) else (self.max_inputs, MAX_REQUEST_IMAGE_BYTES)

    def _image_cost(self, image: ImageRef, header: bytes) -> int:
        return image.size_bytes()

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
        return self._embed(body, texts, vector_type)

    def _request_images(self, images: list[ImageRef], kind: Kind) -> np.ndarray:
        body: dict[str, Any] = {
            "model": self.model,
            "images": [image_data_uri(image) for image in images],
            "input_type": "image" if _V3.search(self.model) else INPUT_TYPES[kind],
            "embedding_types": ["base64"],
        }
        return self._embed(body, images, "base64")

    def _embed(self, body: dict[str, Any], items: list[Any], vector_type: str) -> np.ndarray:
        if self.dimensions is not None:
            body["output_dimension"] = self.dimensions
        return self._post(
            "/v2/embed",
            body,
            items,
            lambda payload: [decode_vector(v) for v in payload["embeddings"][vector_type]],
        )
