"""The one small interface every embedding provider implements.

An encoder turns a batch of texts into a float32 matrix. Everything else (caching, batching across a
whole corpus, progress, resumption) lives in :mod:`search_adaptor.store`, so a provider only has to
speak its own wire format.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Kind = Literal["query", "document"]
KINDS: tuple[Kind, ...] = ("query", "document")


class EncoderError(RuntimeError):
    """A provider refused or failed a request in a way retrying will not fix (bad key, bad model...)."""


class Encoder(ABC):
    """Frozen embedding model seen only through its outputs.

    Subclasses set ``model`` and implement :meth:`encode_batch` and :meth:`config`. ``batch_size``
    is how many texts go into one call; ``max_concurrency`` how many calls may be in flight at once
    (API providers use more than one; a local model uses one).
    """

    provider: str = "base"
    model: str = ""
    batch_size: int = 64
    max_concurrency: int = 1

    @abstractmethod
    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        """Embed one batch of texts as queries or documents.

        Returns
        -------
        ndarray of shape (len(texts), dim), float32
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the vectors (provider, model, dimensions, prompts, ...).

        Secrets (API keys) never belong here: this dict is hashed into the cache key and written
        into saved adapters and reports.
        """

    @property
    def fingerprint(self) -> str:
        """Stable id of the embedding space: same fingerprint, same vectors for the same text."""
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return f"{self.provider}:{self.model}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def info(self) -> dict[str, Any]:
        """What adapters, indexes and reports record about this embedding space (never a key).

        ``{"fingerprint", "provider", "model", "config"}``;
        :func:`~search_adaptor.encoders.registry.from_info` recreates the encoder from it.
        """
        return {
            "fingerprint": self.fingerprint,
            "provider": self.provider,
            "model": self.model,
            "config": self.config(),
        }

    def request_tokens(self, texts: Sequence[str], kind: Kind) -> int | None:
        """Estimated tokens a paid API would bill for ``texts``; None for encoders that run locally."""
        return None

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries without any cache (use :class:`~search_adaptor.store.EmbeddingStore` for that)."""
        return self._encode_all(texts, "query")

    def encode_corpus(self, texts: Sequence[str]) -> np.ndarray:
        """Embed documents without any cache."""
        return self._encode_all(texts, "document")

    def _encode_all(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        parts = [
            check_vectors(self.encode_batch(texts[i : i + self.batch_size], kind), self.model)
            for i in range(0, len(texts), self.batch_size)
        ]
        if not parts:
            raise ValueError("nothing to embed: the list of texts is empty")
        return np.concatenate(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def check_vectors(vectors: Any, source: str, expected_rows: int | None = None) -> np.ndarray:
    """Return ``vectors`` as a 2-D float32 array, refusing NaN/inf and wrong row counts in one line."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise EncoderError(f"{source}: expected a 2-D array of embeddings, got shape {arr.shape}")
    if expected_rows is not None and arr.shape[0] != expected_rows:
        raise EncoderError(f"{source}: asked for {expected_rows} embeddings, got {arr.shape[0]}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EncoderError(
            f"{source}: {int(bad.sum())} embedding(s) contain NaN or inf "
            f"(first at row {int(np.argmax(bad))}); check the model or the input texts"
        )
    return arr
