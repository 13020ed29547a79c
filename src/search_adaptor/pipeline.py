"""Corpus-scale jobs that stream: texts -> embeddings (store) -> adapter -> Parquet shards -> index.

Applying an adapter means transforming every document vector, which for real corpora is millions
of rows. Both engines run the same two batch steps, :class:`EmbedBatch` and :func:`adapt_batch`:

- ``local`` (default) reads the input in chunks of ``rows`` rows and writes each chunk out before
  reading the next, so memory stays bounded by the chunk, whatever the corpus size;
- ``ray`` runs them as Ray Data ``map_batches`` stages (on a cluster given by ``ray_address``, or a
  local one started on loopback), with order preserved, so both engines write the same rows in the
  same order and build the same index.

Vector files are read and written by :mod:`search_adaptor.vectors`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.data import DataError, corpus_file, iter_corpus, records_of_batch
from search_adaptor.encoders.base import Encoder
from search_adaptor.encoders.registry import from_info
from search_adaptor.model import SearchAdaptor
from search_adaptor.store import EmbeddingStore, StoreStats
from search_adaptor.vectors import (
    ID,
    ROWS,
    SHARDS_MANIFEST,
    VECTOR,
    VectorWriter,
    from_table,
    iter_vectors,
    to_table,
    vector_files,
)

ENGINES = ("local", "ray")


@dataclass
class JobStats:
    """What a streaming job did: rows out, their dimension, shards written, wall time, texts embedded."""

    engine: str
    rows: int
    dim: int
    shards: int
    seconds: float
    texts_embedded: int = 0

    def timing(self) -> str:
        """Wall time and, for the local engine, the texts sent to the encoder, for the command line."""
        sent = f"; {self.texts_embedded} texts sent to the encoder" if self.engine == "local" else ""
        return f"{self.seconds:.1f} s{sent}"


# -- the two batch steps -----------------------------------------------------------------------------
class EmbedBatch:
    """``{"id", "text"}`` batch -> ``{"id", "vector"}`` of base embeddings, through the embedding store.

    Holds the encoder and an open store for its lifetime (one per Ray actor). ``encoder`` may be an
    encoder object or the ``encoder_info`` dict of one, recreated in the worker (API keys from its
    environment).
    """

    def __init__(
        self,
        encoder: Encoder | dict[str, Any],
        cache_dir: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(encoder, dict):
            encoder = from_info(encoder, **(options or {}))
        self.encoder = encoder
        self.store = EmbeddingStore(self.encoder, cache_dir)
        self.stats = StoreStats()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Base document vectors of ``texts``, embedding only what the store lacks."""
        return self.store.embed(texts, "document", stats=self.stats)

    def __call__(self, batch: Any) -> Any:
        ids = [str(v) for v in batch.column(ID).to_pylist()]
        return to_table(ids, self.embed(batch.column("text").to_pylist()))

    def close(self) -> None:
        self.store.close()


def adapted_chunks(
    chunks: Iterable[tuple[list[str], list[str]]],
    encoder: Encoder,
    adapter: SearchAdaptor,
    cache_dir: str | os.PathLike | None,
    where: str,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[tuple[list[str], np.ndarray, StoreStats]]:
    """``(ids, adapted vectors, store stats so far)`` for each ``(ids, texts)`` chunk: the local engine's
    two steps (:class:`EmbedBatch`, :func:`adapt_documents`), shared by every in-process index build."""
    from tqdm.auto import tqdm

    embed = EmbedBatch(encoder, str(cache_dir) if cache_dir is not None else None)
    try:
        with tqdm(
            total=total, desc="embedding + adapting", unit="doc", disable=not progress, leave=False
        ) as bar:
            for ids, texts in chunks:
                yield ids, adapt_documents(adapter, ids, embed.embed(texts), where), embed.stats
                bar.update(len(ids))
    finally:
        embed.close()


def adapt_batch(
    batch: Any,
    adapter: SearchAdaptor,
    where: str = "vectors",
    id_column: str = ID,
    vector_column: str = VECTOR,
    dim: int | None = None,
) -> Any:
    """``{"id", "vector"}`` batch of base vectors -> the same rows through ``adapter.transform_corpus``
    (its first ``dim`` coordinates with ``dim``).

    A plain function (Ray runs it as stateless tasks): the adapter is a few hundred kilobytes and its
    transform a couple of matmuls, so there is nothing worth keeping an actor for.
    """
    ids, vectors = from_table(batch, where, id_column, vector_column)
    return to_table(ids, adapt_documents(adapter, ids, vectors, where, dim))


def adapt_documents(
    adapter: SearchAdaptor, ids: Sequence[str], vectors: np.ndarray, where: str, dim: int | None = None
) -> np.ndarray:
    """``adapter.transform_corpus(vectors, dim=dim)``, with a bad row named by its id rather than its
    chunk offset."""
    for bad, problem in (
        (~np.isfinite(vectors).all(axis=1), "contains NaN, inf or a null; fix the embeddings first"),
        (
            ~vectors.any(axis=1),
            "is all zeros, with no direction to rank by (a static model gives one to a text none of "
            "whose words it knows); fix or drop it",
        ),
    ):
        if bad.any():
            doc = ids[int(np.argmax(bad))]
            raise DataError(f"{where}: the vector of id {doc!r} {problem}")
    return adapter.transform_corpus(vectors, dim=dim)


def _beir_rows(batch: Any) -> Any:
    """A Ray batch of BEIR corpus records -> ``{"id", "text"}``, every row checked by the rule the local
    reader applies (:func:`search_adaptor.data.record`); duplicate ids across batches are refused
    when the index is built from the shards."""
    import pyarrow as pa

    ids, texts = records_of_batch(batch, "corpus", 0, set())
    return pa.table({ID: pa.array(ids, type=pa.string()), "text": pa.array(texts, type=pa.string())})


# -- Ray -------------------------------------------------------------------------------------------------
def ray_session(address: str | None = None) -> Any:
    """Connect to the Ray cluster at ``address``, or start a local one bound to loopback; order kept."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError("the ray engine needs Ray Data: pip install 'search-adaptor[ray]'") from exc
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same rows in the same order as the local engine
    ctx.enable_progress_bars = False
    return ray


def _ray_write(ds: Any, out: Path, rows: int, meta: dict[str, Any]) -> tuple[int, int, int]:
    """Stream a Ray dataset of ``(id, vector)`` into the shard folder ``out``, in dataset order.

    Ray's own ``write_parquet`` names files by write task, and one task may get the first and the
    last block, so file order is not row order. Writing the ordered batch stream here instead gives
    the same shards, in the same order, as the local engine; memory stays at a few batches.
    Returns (rows, dim, shards).
    """
    with VectorWriter(out, meta) as writer:
        for batch in ds.iter_batches(batch_size=rows, batch_format="pyarrow", prefetch_batches=2):
            writer.write(*from_table(batch, str(out)))
    return writer.rows, writer.dim, writer.shards


def _parquet_files(path: Path) -> list[str]:
    """The Parquet files the ray engine reads from ``path``: checked before a cluster is started."""
    if path.suffix == ".npy":
        raise DataError(f"{path}: the ray engine reads Parquet; convert .npy input with --engine local first")
    return [str(f) for f in vector_files(path)]


# -- jobs -----------------------------------------------------------------------------------------------
def transform_vectors(
    source: str | os.PathLike,
    adapter: SearchAdaptor,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    rows: int | None = None,
    id_column: str = ID,
    vector_column: str = VECTOR,
    ray_address: str | None = None,
    dim: int | None = None,
) -> JobStats:
    """Apply ``adapter.transform_corpus`` to vectors the user already has, streaming, into ``out``.

    ``out`` ending in ``.npy`` or ``.parquet`` is one file; anything else is a folder of Parquet
    shards (the only output of the ``ray`` engine). ``dim`` keeps the first ``dim`` adapted
    coordinates (a Matryoshka prefix, unit length again).
    """
    _check_engine(engine)
    rows = rows or ROWS
    start = time.perf_counter()
    src = Path(source)
    done = src / SHARDS_MANIFEST
    if done.is_file() and json.loads(done.read_text()).get("adapter"):
        raise ValueError(
            f"{src}: these vectors are already adapted (see {SHARDS_MANIFEST}); transform base vectors only"
        )
    meta = {"adapter": adapter.fingerprint_, "adapter_mode": adapter.mode, "source": str(src)}
    if dim is not None:
        meta["size"] = dim
    if engine == "local":
        with VectorWriter(out, meta) as writer:
            for ids, vectors in iter_vectors(src, rows, id_column, vector_column):
                writer.write(ids, adapt_documents(adapter, ids, vectors, str(src), dim))
        return JobStats(engine, writer.rows, writer.dim, writer.shards, time.perf_counter() - start)
    if Path(out).suffix in (".npy", ".parquet"):
        raise ValueError(f"{out}: the ray engine writes a folder of Parquet shards; give a folder name")
    files = _parquet_files(src)
    ray = ray_session(ray_address)
    ds = ray.data.read_parquet(files).select_columns([id_column, vector_column])
    ds = ds.map_batches(
        adapt_batch,
        fn_kwargs={
            "adapter": adapter,
            "where": str(src),
            "id_column": id_column,
            "vector_column": vector_column,
            "dim": dim,
        },
        batch_format="pyarrow",
        batch_size=rows,
    )
    n, width, shards = _ray_write(ds, Path(out), rows, meta)
    return JobStats(engine, n, width, shards, time.perf_counter() - start)


def embed_and_adapt(
    corpus: str | os.PathLike,
    encoder: Encoder,
    adapter: SearchAdaptor,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    cache_dir: str | os.PathLike | None = None,
    rows: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
) -> JobStats:
    """Corpus texts -> base embeddings (through the store) -> adapted vectors, as a shard folder ``out``.

    ``corpus`` is a BEIR folder or its ``corpus.jsonl[.gz]`` / ``corpus.parquet``. Texts already in
    the store are not embedded again, by either engine.
    """
    _check_engine(engine)
    rows = rows or ROWS
    adapter.check_encoder(encoder)
    start = time.perf_counter()
    path = corpus_file(corpus)
    cache = str(cache_dir) if cache_dir is not None else None
    meta = {
        "adapter": adapter.fingerprint_,
        "adapter_mode": adapter.mode,
        "source": str(path),
        "encoder": encoder.fingerprint,
    }
    if engine == "local":
        embedded = 0
        with VectorWriter(out, meta) as writer:
            for ids, vectors, stats in adapted_chunks(
                iter_corpus(path, rows), encoder, adapter, cache_dir, str(path), progress
            ):
                writer.write(ids, vectors)
                embedded = stats.encoded
        return JobStats(engine, writer.rows, writer.dim, writer.shards, time.perf_counter() - start, embedded)
    ray = ray_session(ray_address)
    # for JSON, Arrow's reader (lines=False) reads JSON Lines, detects .gz and keeps string ids as
    # written; lines=True goes through pandas, which would turn an id like "007" into 7
    read = ray.data.read_parquet if path.suffix == ".parquet" else ray.data.read_json
    ds = read(str(path))
    options = {"batch_size": encoder.batch_size, "max_concurrency": encoder.max_concurrency}
    if getattr(encoder, "timeout", None) is not None:  # API encoders: the --timeout given
        options["timeout"] = encoder.timeout
    ds = ds.map_batches(_beir_rows, batch_format="pyarrow", batch_size=rows)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"encoder": encoder.info(), "cache_dir": cache, "options": options},
        batch_format="pyarrow",
        batch_size=min(rows, 4096),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=_embed_actors(ray)),
    )
    ds = ds.map_batches(
        adapt_batch,
        fn_kwargs={"adapter": adapter, "where": str(path)},
        batch_format="pyarrow",
        batch_size=rows,
    )
    n, dim, shards = _ray_write(ds, Path(out), rows, meta)
    return JobStats(engine, n, dim, shards, time.perf_counter() - start)


def _embed_actors(ray: Any) -> int:
    """Embedding actors (each holds a model): one per CPU of the cluster but one, which the read,
    adapt and write tasks need to make progress (an actor per CPU starves them)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
