"""A trained adapter as a drop-in embedding model for LangChain and LlamaIndex.

:func:`as_langchain` and :func:`as_llamaindex` expose an
:class:`~search_adaptor.model.AdaptedEncoder` (an encoder followed by a saved adapter) to those
frameworks. Both embed through the same embedding store as the command line, so documents a
``fit``, ``embed`` or ``index`` run (or an earlier script) embedded are read back, not sent to the
model again (queries are embedded each time and never stored: see ``AdaptedEncoder``); both batch
their calls and show progress when the framework's own flag asks for it.
The frameworks are imported only when a wrapper is built, so the core never needs either package.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from search_adaptor.encoders.base import Encoder, refuse_bare_text
from search_adaptor.model import AdaptedEncoder, SearchAdaptor

Cache = str | os.PathLike | bool | None


def _adapted(
    encoder: Encoder,
    adapter: SearchAdaptor | str | os.PathLike | None,
    cache: Cache,
    where: str,
    dim: int | None = None,
) -> AdaptedEncoder:
    """The :class:`AdaptedEncoder` a wrapper embeds with; ``cache=None`` keeps its default store,
    ``dim=None`` its size."""
    if adapter is not None:
        return AdaptedEncoder(encoder, adapter, **({} if cache is None else {"cache": cache}), dim=dim)
    if not isinstance(encoder, AdaptedEncoder):
        raise TypeError(
            f"{where}: give the adapter (a folder saved by `search-adaptor fit` or a SearchAdaptor), "
            "or an AdaptedEncoder"
        )
    if (cache is None or cache == encoder.cache) and dim in (None, encoder.size):
        return encoder
    return AdaptedEncoder(
        encoder.base,
        encoder.adapter,
        encoder.cache if cache is None else cache,
        query_encoder=encoder.query_base,
        dim=encoder.size if dim is None else dim,
    )


def _chunk_size(encoder: Encoder) -> int:
    """Texts per call: one batch for every request the encoder may have in flight at once."""
    return encoder.batch_size * max(1, encoder.max_concurrency)


@functools.cache
def _langchain_class() -> type:
    from langchain_core.embeddings import Embeddings

    class SearchAdaptorEmbeddings(Embeddings):
        """LangChain embeddings giving a search-adaptor adapter's vectors (built by :func:`as_langchain`).

        ``embed_documents`` sends its texts in chunks of ``batch_size x max_concurrency`` through the
        embedding store; with ``show_progress`` a bar counts the texts done.
        """

        def __init__(self, encoder: AdaptedEncoder, show_progress: bool = False) -> None:
            self.encoder = encoder
            self.show_progress = show_progress

        def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
            from tqdm.auto import tqdm

            refuse_bare_text(texts, "embed_documents()")  # list() would read it letter by letter
            texts, out = list(texts), []
            step = _chunk_size(self.encoder)
            with tqdm(
                total=len(texts), desc="embedding documents", unit="text", disable=not self.show_progress
            ) as bar:
                for start in range(0, len(texts), step):
                    chunk = texts[start : start + step]
                    out += self.encoder.encode_corpus(chunk).tolist()
                    bar.update(len(chunk))
            return out

        def embed_query(self, text: str) -> list[float]:
            return self.encoder.encode_queries([text])[0].tolist()

        def __reduce__(self) -> tuple[Any, ...]:  # pickled as the call that builds it (a local class)
            return functools.partial(as_langchain, show_progress=self.show_progress), (self.encoder,)

    return SearchAdaptorEmbeddings


def as_langchain(
    encoder: Encoder,
    adapter: SearchAdaptor | str | os.PathLike | None = None,
    *,
    cache: Cache = None,
    show_progress: bool = False,
    dim: int | None = None,
) -> Any:
    """A ``langchain_core.embeddings.Embeddings`` giving the adapted vectors.

    Parameters
    ----------
    encoder : Encoder
        The base encoder the adapter was trained on (a cross-model adapter's documents' model: its
        queries go through the query model it records), or an :class:`AdaptedEncoder` (then
        ``adapter=None``).
    adapter : SearchAdaptor or path, optional
        The adapter; required unless ``encoder`` is an :class:`AdaptedEncoder`.
    cache : path or bool, optional
        The embedding store (see :class:`AdaptedEncoder`): by default the command line's, a path for
        another, ``False`` for none.
    show_progress : bool
        A progress bar over the texts of each ``embed_documents`` call, as LangChain's own
        embeddings offer.
    dim : int, optional
        Only the first ``dim`` adapted coordinates (a Matryoshka prefix; see :class:`AdaptedEncoder`).

    Returns
    -------
    Embeddings
        ``embed_query`` adapts as a query, ``embed_documents`` as documents; the ``encoder``
        attribute is the :class:`AdaptedEncoder` (its ``stats`` count texts sent and read back).
    """
    return _langchain_class()(_adapted(encoder, adapter, cache, "as_langchain", dim), show_progress)


@functools.cache
def _llamaindex_class() -> type:
    import asyncio

    from llama_index.core.base.embeddings.base import BaseEmbedding
    from pydantic import PrivateAttr

    class SearchAdaptorEmbedding(BaseEmbedding):
        """LlamaIndex embedding giving a search-adaptor adapter's vectors (built by :func:`as_llamaindex`).

        LlamaIndex batches documents by ``embed_batch_size`` and shows its own progress bar
        (``show_progress=True`` of ``VectorStoreIndex`` or ``get_text_embedding_batch``); each batch
        goes through the embedding store in one call.
        """

        _encoder: AdaptedEncoder = PrivateAttr()

        def __init__(self, encoder: AdaptedEncoder, **kw: Any) -> None:
            kw.setdefault("embed_batch_size", min(_chunk_size(encoder), 2048))  # LlamaIndex's cap
            super().__init__(model_name=encoder.model, **kw)
            self._encoder = encoder

        @property
        def encoder(self) -> AdaptedEncoder:
            return self._encoder

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

        async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return await asyncio.to_thread(self._get_text_embeddings, texts)

        def __reduce__(self) -> tuple[Any, ...]:  # pickled as the call that builds it (a local class)
            fields = self.model_dump(include={"embed_batch_size", "num_workers"})
            return functools.partial(as_llamaindex, **fields), (self._encoder,)

    return SearchAdaptorEmbedding


def as_llamaindex(
    encoder: Encoder,
    adapter: SearchAdaptor | str | os.PathLike | None = None,
    *,
    cache: Cache = None,
    dim: int | None = None,
    **kw: Any,
) -> Any:
    """A LlamaIndex ``BaseEmbedding`` giving the adapted vectors.

    Parameters
    ----------
    encoder, adapter, cache, dim
        As for :func:`as_langchain`.
    **kw
        ``BaseEmbedding`` fields, e.g. ``embed_batch_size`` (default: ``batch_size x
        max_concurrency`` of the encoder, at most LlamaIndex's 2048) or ``num_workers``.

    Returns
    -------
    BaseEmbedding
        ``get_query_embedding`` adapts as a query, ``get_text_embedding(s)`` as documents; the
        ``encoder`` property is the :class:`AdaptedEncoder`. Pass it as ``embed_model=`` (or set
        ``Settings.embed_model``), or LlamaIndex falls back to its OpenAI default.
    """
    return _llamaindex_class()(_adapted(encoder, adapter, cache, "as_llamaindex", dim), **kw)
