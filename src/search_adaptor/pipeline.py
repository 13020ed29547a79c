"""Corpus-scale jobs that stream: texts -> embeddings (store) -> adapter -> Parquet shards -> index.

Applying an adapter means transforming every document vector, which for real corpora is millions
of rows. Both engines run the same two batch steps, :class:`EmbedBatch` and :func:`adapt_batch`:

- ``local`` (default) reads the input in chunks of ``rows`` rows and writes each chunk out before
  reading the next, so memory stays bounded by the chunk, whatever the corpus size;
- ``ray`` runs them as Ray Data ``map_batches`` stages (on a cluster given by ``ray_address``, or a
  local one started on loopback), with order preserved, so both engines write the same rows in the
  same order and build the same index.

Vector files are ``.npy`` (read and written sequentially, never memory-mapped whole) or Parquet with
an id column and a vector column (list or fixed-size list of floats); a folder of ``*.parquet`` files
reads as one table in file-name order. Outputs are written to a temporary sibling and renamed into
place, so a killed job leaves the previous output, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.data import DataError, corpus_file, iter_corpus
from search_adaptor.encoders.base import Encoder
from search_adaptor.model import SearchAdaptor
from search_adaptor.report import publish_folder

ENGINES = ("local", "ray")
ROWS = 65536  # rows per chunk (local) and per Parquet shard: ~100 MB of 384-d float32
SHARDS_MANIFEST = "_manifest.json"
_ROW_GROUP = 8192  # Parquet row group: what a reader decodes at once (12 MB at 384-d), whatever the shard
ID, VECTOR = "id", "vector"


@dataclass
class JobStats:
    """What a streaming job did: rows out, their dimension, shards written, wall time, texts embedded."""

    engine: str
    rows: int
    dim: int
    shards: int
    seconds: float
    texts_embedded: int = 0


# -- Arrow <-> numpy -----------------------------------------------------------------------------------
def to_table(ids: Sequence[str], vectors: np.ndarray) -> Any:
    """An Arrow table ``(id: string, vector: fixed_size_list<float32>[dim])`` any Parquet reader opens."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table(
        {
            ID: pa.array(list(ids), type=pa.string()),
            VECTOR: pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def from_table(
    table: Any, where: str, id_column: str = ID, vector_column: str = VECTOR
) -> tuple[list[str], np.ndarray]:
    """``(ids, float32 matrix)`` from an Arrow table; ``where`` names the source in errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name in (id_column, vector_column):
        if name not in table.column_names:
            raise DataError(
                f"{where}: no column {name!r} (columns: {', '.join(table.column_names)}); "
                f"name the {'id' if name == id_column else 'vector'} column with "
                f"--{'id' if name == id_column else 'vector'}-column"
            )
    col = table.column(vector_column).combine_chunks()
    if not (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):
        raise DataError(f"{where}: column {vector_column!r} is {col.type}, not a list of floats")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: row {row} of column {vector_column!r} is null; every row needs a vector")
    n = len(col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if n else np.zeros(0)
    if n and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(
            f"{where}: row {row} of column {vector_column!r} has {lengths[row]} values, row 0 has "
            f"{lengths[0]}; all vectors must have one dimension"
        )
    dim = int(lengths[0]) if n else 0
    vectors = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
    ids = [str(v) for v in table.column(id_column).to_pylist()]
    return ids, vectors


# -- reading vectors ---------------------------------------------------------------------------------
def _npy_header(handle: Any, path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(handle)
    except ValueError as exc:
        raise DataError(f"{path}: not a .npy file ({exc}); save vectors with numpy.save") from None
    return shape, dtype, fortran


def vector_files(path: str | os.PathLike) -> list[Path]:
    """The files a vector source stands for: one ``.npy``/``.parquet`` file, or a folder's ``*.parquet``."""
    src = Path(path)
    if src.is_dir():
        files = sorted(p for p in src.glob("*.parquet") if not p.name.startswith((".", "_")))
        if not files:
            raise DataError(f"{src}: no *.parquet files in this folder; point at a .npy or .parquet file")
        return files
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    if src.suffix not in (".npy", ".parquet"):
        raise DataError(f"{src}: unsupported vector file (use .npy, .parquet or a folder of .parquet shards)")
    return [src]


def iter_vectors(
    path: str | os.PathLike, rows: int = ROWS, id_column: str = ID, vector_column: str = VECTOR
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(ids, vectors)`` chunks of at most ``rows`` rows, holding one chunk in memory at a time.

    A ``.npy`` matrix has no ids: its rows are named ``"0"``, ``"1"``, ... in order.
    """
    for file in vector_files(path):
        if file.suffix == ".npy":
            yield from _iter_npy(file, rows)
            continue
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            reader = pq.ParquetFile(file, pre_buffer=False)  # no read-ahead: memory follows the batch
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
        wanted = [id_column, vector_column]
        columns = (
            wanted if set(wanted) <= set(reader.schema_arrow.names) else None
        )  # else: the error names them
        # Decoding a list column costs several times its size in Arrow buffers (levels, offsets), so
        # decode at most a row group's worth at a time and assemble the chunk in numpy.
        start, ids, parts = 0, [], []
        for batch in reader.iter_batches(
            batch_size=min(rows, _ROW_GROUP), columns=columns, use_threads=False
        ):
            where = f"{file} (rows {start}-{start + batch.num_rows - 1})"
            batch_ids, vectors = from_table(pa.Table.from_batches([batch]), where, id_column, vector_column)
            ids += batch_ids
            parts.append(vectors)
            start += batch.num_rows
            if len(ids) >= rows:
                yield ids, np.concatenate(parts)
                ids, parts = [], []
        if ids:
            yield ids, np.concatenate(parts)


def _iter_npy(path: Path, rows: int) -> Iterator[tuple[list[str], np.ndarray]]:
    with open(path, "rb") as handle:
        shape, dtype, fortran = _npy_header(handle, path)
        if len(shape) != 2 or fortran or dtype.kind != "f":
            raise DataError(
                f"{path}: expected a C-ordered 2-D float matrix (n_vectors, dim), got shape {shape}, "
                f"dtype {dtype}{', Fortran order' if fortran else ''}"
            )
        n, dim = shape
        for start in range(0, n, rows):
            count = min(rows, n - start)
            buf = np.empty((count, dim), dtype=dtype)
            if handle.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                raise DataError(f"{path}: file ends before row {start + count} of {n}; it is truncated")
            yield [str(i) for i in range(start, start + count)], buf.astype(np.float32, copy=False)


# -- writing vectors ---------------------------------------------------------------------------------
class VectorWriter:
    """Streams ``(ids, vectors)`` chunks to ``.npy``, one ``.parquet`` file, or a folder of Parquet shards.

    Everything goes to a temporary sibling first; :meth:`close` (or leaving the ``with`` block
    without an error) renames it into place, so readers never see half an output.
    """

    def __init__(self, out: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        self.out = Path(out).resolve()
        self.kind = {".npy": "npy", ".parquet": "parquet"}.get(self.out.suffix, "shards")
        self.meta = dict(meta or {})
        self.rows, self.dim, self.shards = 0, 0, 0
        self._tmp = _staging_folder(self.out, shards=self.kind == "shards")
        self._handle: Any = None

    def write(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim and vectors.shape[1] != self.dim:
            raise ValueError(f"{self.out}: got {vectors.shape[1]}-d vectors after {self.dim}-d ones")
        self.dim = int(vectors.shape[1])
        if self.kind == "npy":
            if self._handle is None:
                self._handle = open(self._tmp / "data", "wb+")  # noqa: SIM115 - open across write() calls
                self._handle.write(b"\0" * 128)  # header space, filled in by close() once n is known
            self._handle.write(vectors.tobytes())
        elif self.kind == "parquet":
            import pyarrow.parquet as pq

            table = to_table(ids, vectors)
            if self._handle is None:
                self._handle = pq.ParquetWriter(self._tmp / "data", table.schema)
            self._handle.write_table(table, row_group_size=_ROW_GROUP)
        else:
            import pyarrow.parquet as pq

            path = self._tmp / f"part-{self.shards:05d}.parquet"
            pq.write_table(to_table(ids, vectors), path, row_group_size=_ROW_GROUP)
        self.rows += len(vectors)
        self.shards += 1

    def close(self) -> Path:
        if self.kind != "shards" and self._handle is None:
            raise ValueError(f"{self.out}: no vectors to write (the input is empty)")
        if self.kind == "npy":
            self._handle.seek(0)
            self._handle.write(_npy_header_bytes(self.rows, self.dim))
            self._handle.close()
            os.replace(self._tmp / "data", self.out)
        elif self.kind == "parquet":
            self._handle.close()
            os.replace(self._tmp / "data", self.out)
        else:
            finish_shard_folder(self._tmp, {"rows": self.rows, "dim": self.dim, **self.meta})
            publish_folder(self._tmp, self.out)
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _staging_folder(out: Path, shards: bool) -> Path:
    """A temporary sibling of ``out`` to write into; refuses to later replace an unrelated folder."""
    if shards and out.exists() and not (out / SHARDS_MANIFEST).is_file() and any(out.iterdir()):
        raise FileExistsError(
            f"{out}: exists and is not a shard folder of search-adaptor; choose a new folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def _npy_header_bytes(rows: int, dim: int) -> bytes:
    """A version 1.0 ``.npy`` header of exactly 128 bytes for a C-ordered float32 (rows, dim) matrix.

    Its size does not depend on ``rows``, so the header can be reserved first and filled in once
    the streamed row count is known.
    """
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    body = text.ljust(128 - 10 - 1).encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def finish_shard_folder(folder: Path, meta: dict[str, Any]) -> None:
    """Record what a shard folder holds; its presence also marks the folder as complete."""
    (folder / SHARDS_MANIFEST).write_text(json.dumps({"library": "search-adaptor", **meta}, indent=2) + "\n")


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
        from search_adaptor.index import encoder_from_info
        from search_adaptor.store import EmbeddingStore, StoreStats

        if isinstance(encoder, dict):
            encoder = encoder_from_info(encoder, **(options or {}))
        self.encoder = encoder
        self.store = EmbeddingStore(self.encoder, cache_dir)
        self.stats = StoreStats()

    def __call__(self, batch: Any) -> Any:
        ids = [str(v) for v in batch.column(ID).to_pylist()]
        texts = batch.column("text").to_pylist()
        return to_table(ids, self.store.embed(texts, "document", stats=self.stats))


def adapt_batch(
    batch: Any,
    adapter: SearchAdaptor,
    where: str = "vectors",
    id_column: str = ID,
    vector_column: str = VECTOR,
) -> Any:
    """``{"id", "vector"}`` batch of base vectors -> the same rows through ``adapter.transform_corpus``.

    A plain function (Ray runs it as stateless tasks): the adapter is a few hundred kilobytes and its
    transform a couple of matmuls, so there is nothing worth keeping an actor for.
    """
    ids, vectors = from_table(batch, where, id_column, vector_column)
    return to_table(ids, adapt_rows(adapter, ids, vectors, where))


def adapt_rows(adapter: SearchAdaptor, ids: Sequence[str], vectors: np.ndarray, where: str) -> np.ndarray:
    """``adapter.transform_corpus(vectors)``, with a bad row named by its id rather than its chunk offset."""
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        doc = ids[int(np.argmin(finite))]
        raise DataError(f"{where}: the vector of id {doc!r} contains NaN or inf; fix the embeddings first")
    return adapter.transform_corpus(vectors)


def _beir_rows(batch: Any) -> Any:
    """A Ray batch of BEIR corpus records -> ``{"id", "text"}`` with text = title + " " + text, as BEIR."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = batch.column_names
    id_col = "_id" if "_id" in names else ID
    for need in (id_col, "text"):
        if need not in names:
            raise DataError(f'corpus: missing field "{need}" (every document needs "_id" and "text")')
    text = pc.fill_null(batch.column("text").cast(pa.string()), "")
    if "title" in names:
        title = pc.fill_null(batch.column("title").cast(pa.string()), "")
        text = pc.utf8_trim_whitespace(pc.binary_join_element_wise(title, text, " "))
    return pa.table({ID: batch.column(id_col).cast(pa.string()), "text": text})


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


def _read_ray(ray: Any, path: Path) -> Any:
    files = [str(f) for f in vector_files(path)] if path.suffix != ".npy" else None
    if files is None:
        raise DataError(f"{path}: the ray engine reads Parquet; convert .npy input with --engine local first")
    return ray.data.read_parquet(files)


# -- jobs -----------------------------------------------------------------------------------------------
def transform_vectors(
    source: str | os.PathLike,
    adapter: SearchAdaptor,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    rows: int = ROWS,
    id_column: str = ID,
    vector_column: str = VECTOR,
    ray_address: str | None = None,
) -> JobStats:
    """Apply ``adapter.transform_corpus`` to vectors the user already has, streaming, into ``out``.

    ``out`` ending in ``.npy`` or ``.parquet`` is one file; anything else is a folder of Parquet
    shards (the only output of the ``ray`` engine).
    """
    from search_adaptor.integrations import adapter_fingerprint

    _check_engine(engine)
    start = time.perf_counter()
    src = Path(source)
    done = src / SHARDS_MANIFEST
    if done.is_file() and json.loads(done.read_text()).get("adapter"):
        raise ValueError(
            f"{src}: these vectors are already adapted (see {SHARDS_MANIFEST}); transform base vectors only"
        )
    meta = {"adapter": adapter_fingerprint(adapter), "adapter_mode": adapter.mode, "source": str(src)}
    if engine == "local":
        with VectorWriter(out, meta) as writer:
            for ids, vectors in iter_vectors(src, rows, id_column, vector_column):
                writer.write(ids, adapt_rows(adapter, ids, vectors, str(src)))
        return JobStats(engine, writer.rows, writer.dim, writer.shards, time.perf_counter() - start)
    if Path(out).suffix in (".npy", ".parquet"):
        raise ValueError(f"{out}: the ray engine writes a folder of Parquet shards; give a folder name")
    ray = ray_session(ray_address)
    ds = _read_ray(ray, src).select_columns([id_column, vector_column])
    ds = ds.map_batches(
        adapt_batch,
        fn_kwargs={
            "adapter": adapter,
            "where": str(src),
            "id_column": id_column,
            "vector_column": vector_column,
        },
        batch_format="pyarrow",
        batch_size=rows,
    )
    n, dim, shards = _ray_write(ds, Path(out), rows, meta)
    return JobStats(engine, n, dim, shards, time.perf_counter() - start)


def embed_and_adapt(
    corpus: str | os.PathLike,
    encoder: Encoder,
    adapter: SearchAdaptor,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    cache_dir: str | os.PathLike | None = None,
    rows: int = ROWS,
    ray_address: str | None = None,
    progress: bool = False,
) -> JobStats:
    """Corpus texts -> base embeddings (through the store) -> adapted vectors, as a shard folder ``out``.

    ``corpus`` is a BEIR folder or its ``corpus.jsonl[.gz]`` / ``corpus.parquet``. Texts already in
    the store are not embedded again, by either engine.
    """
    from search_adaptor.embed import encoder_info
    from search_adaptor.integrations import adapter_fingerprint

    _check_engine(engine)
    adapter.check_encoder(encoder.fingerprint)
    start = time.perf_counter()
    path = corpus_file(corpus)
    cache = str(cache_dir) if cache_dir is not None else None
    meta = {
        "adapter": adapter_fingerprint(adapter),
        "adapter_mode": adapter.mode,
        "source": str(path),
        "encoder": encoder.fingerprint,
    }
    if engine == "local":
        import pyarrow as pa
        from tqdm.auto import tqdm

        embed = EmbedBatch(encoder, cache)
        with (
            VectorWriter(out, meta) as writer,
            tqdm(desc="embedding + adapting", unit="doc", disable=not progress, leave=False) as bar,
        ):
            for ids, texts in iter_corpus(path, rows):
                base = embed(pa.table({ID: ids, "text": texts}))
                ids_out, vectors = from_table(adapt_batch(base, adapter, str(path)), str(path))
                writer.write(ids_out, vectors)
                bar.update(len(ids))
        embed.store.close()
        return JobStats(
            engine, writer.rows, writer.dim, writer.shards, time.perf_counter() - start, embed.stats.encoded
        )
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
        fn_constructor_kwargs={"encoder": encoder_info(encoder), "cache_dir": cache, "options": options},
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
