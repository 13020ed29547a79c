"""A trained adapter as a drop-in embedding model: for this library, LangChain and LlamaIndex.

:class:`AdaptedEncoder` wraps any :class:`~search_adaptor.encoders.base.Encoder` with a saved
adapter and is an encoder itself, so everything that takes an encoder (the embedding store, an
index) takes an adapted one too. :func:`as_langchain` and :func:`as_llamaindex` expose it to those
frameworks; they import the framework only when called, so the core never needs either package.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from search_adaptor.encoders.base import Encoder, Kind, check_vectors

if TYPE_CHECKING:
    from search_adaptor.model import SearchAdaptor


def adapter_fingerprint(adapter: SearchAdaptor) -> str:
    """Stable id of what an adapter computes: its mode, architecture, identity flag and weights.

    Saving and loading the same adapter gives the same fingerprint; any change of a weight does not.
    """
    identity = adapter.is_identity_  # raises on an unfitted adapter
    params = adapter.get_params()
    head = {k: params[k] for k in ("architecture", "hidden_dim", "residual", "mode")}
    described = json.dumps({**head, "dim": adapter.dim_, "identity": identity}, sort_keys=True)
    h = hashlib.sha256(described.encode())
    nets = {"query": adapter.query_net_}
    if adapter.mode == "separate":
        nets["corpus"] = adapter.corpus_net_
    for side, net in nets.items():
        for name, tensor in sorted(net.state_dict().items()):
            h.update(f"{side}.{name}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"adapter:{h.hexdigest()[:16]}"


def _as_adapter(adapter: SearchAdaptor | str | os.PathLike) -> SearchAdaptor:
    from search_adaptor.model import SearchAdaptor

    return adapter if isinstance(adapter, SearchAdaptor) else SearchAdaptor.load(adapter)


class AdaptedEncoder(Encoder):
    """``encoder`` followed by a trained adapter: queries and documents come out adapted, unit-norm.

    Parameters
    ----------
    encoder : Encoder
        The base model the adapter was trained on (its fingerprint is checked).
    adapter : SearchAdaptor or path
        A fitted adapter or the folder :meth:`SearchAdaptor.save` wrote.

    Notes
    -----
    Queries go through ``adapter.transform_queries`` and documents through
    ``adapter.transform_corpus`` (only normalised in ``query_only`` mode). The fingerprint combines
    the base encoder's with :func:`adapter_fingerprint`, so an embedding store keeps adapted vectors
    apart from base ones.
    """

    provider = "adapted"

    def __init__(self, encoder: Encoder, adapter: SearchAdaptor | str | os.PathLike) -> None:
        self.base = encoder
        self.adapter = _as_adapter(adapter)
        self.adapter.check_encoder(encoder.fingerprint)
        self.model = encoder.model
        self.batch_size = encoder.batch_size
        self.max_concurrency = encoder.max_concurrency

    def config(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "base": self.base.config(),
            "adapter": adapter_fingerprint(self.adapter),
        }

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        vectors = check_vectors(self.base.encode_batch(texts, kind), self.base.model, len(texts))
        if kind == "query":
            return self.adapter.transform_queries(vectors)
        return self.adapter.transform_corpus(vectors)


def _adapted(encoder: Encoder, adapter: SearchAdaptor | str | os.PathLike | None) -> Encoder:
    return encoder if adapter is None else AdaptedEncoder(encoder, adapter)


@functools.cache
def _langchain_class() -> type:
    from langchain_core.embeddings import Embeddings

    class SearchAdaptorEmbeddings(Embeddings):
        """LangChain embeddings backed by a search-adaptor encoder (adapted when built by as_langchain)."""

        def __init__(self, encoder: Encoder) -> None:
            self.encoder = encoder

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            if not texts:
                return []
            return self.encoder.encode_corpus(list(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.encoder.encode_queries([text])[0].tolist()

    return SearchAdaptorEmbeddings


def as_langchain(encoder: Encoder, adapter: SearchAdaptor | str | os.PathLike | None = None) -> Any:
    """A ``langchain_core.embeddings.Embeddings`` giving the adapted vectors.

    Parameters
    ----------
    encoder : Encoder
        Base encoder (or an :class:`AdaptedEncoder` already, with ``adapter=None``).
    adapter : SearchAdaptor or path, optional
        Wraps ``encoder`` in an :class:`AdaptedEncoder` when given.

    Returns
    -------
    Embeddings
        ``embed_query`` adapts as a query, ``embed_documents`` as documents.
    """
    return _langchain_class()(_adapted(encoder, adapter))


@functools.cache
def _llamaindex_class() -> type:
    import asyncio

    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr

    class SearchAdaptorEmbedding(BaseEmbedding):
        """LlamaIndex embedding backed by a search-adaptor encoder (adapted when built by as_llamaindex)."""

        _encoder: Encoder = PrivateAttr()

        def __init__(self, encoder: Encoder, **kw: Any) -> None:
            kw.setdefault("embed_batch_size", encoder.batch_size)
            super().__init__(model_name=encoder.model, **kw)
            self._encoder = encoder

        @classmethod
        def class_name(cls) -> str:
            return "SearchAdaptorEmbedding"

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._encoder.encode_queries([query])[0].tolist()

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._encoder.encode_corpus([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._encoder.encode_corpus(texts).tolist() if texts else []

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return await asyncio.to_thread(self._get_query_embedding, query)

        async def _aget_text_embedding(self, text: str) -> list[float]:
            return await asyncio.to_thread(self._get_text_embedding, text)

    return SearchAdaptorEmbedding


def as_llamaindex(
    encoder: Encoder, adapter: SearchAdaptor | str | os.PathLike | None = None, **kw: Any
) -> Any:
    """A LlamaIndex ``BaseEmbedding`` giving the adapted vectors.

    Parameters
    ----------
    encoder : Encoder
        Base encoder (or an :class:`AdaptedEncoder` already, with ``adapter=None``).
    adapter : SearchAdaptor or path, optional
        Wraps ``encoder`` in an :class:`AdaptedEncoder` when given.
    **kw
        ``BaseEmbedding`` fields, e.g. ``embed_batch_size``.

    Returns
    -------
    BaseEmbedding
        ``get_query_embedding`` adapts as a query, ``get_text_embedding(s)`` as documents.
    """
    return _llamaindex_class()(_adapted(encoder, adapter), **kw)
