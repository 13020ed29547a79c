"""A trained adapter as a drop-in embedding model for LangChain and LlamaIndex.

:func:`as_langchain` and :func:`as_llamaindex` expose an
:class:`~search_adaptor.model.AdaptedEncoder` (any encoder followed by a saved adapter) to those
frameworks; they import the framework only when called, so the core never needs either package.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from search_adaptor.encoders.base import Encoder
from search_adaptor.model import AdaptedEncoder, SearchAdaptor


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
