"""Corpus-scale jobs that stream: texts -> embeddings (store) -> adapter -> Parquet shards -> index.

Applying an adapter means transforming every document vector, which for real corpora is millions
of rows. Both engines run the same two batch steps, :class:`EmbedBatch` and :func:`adapt_batch`:

- ``local`` (default) reads the input in chunks of ``rows`` rows and writes each chunk out before
  reading the next, so memory stays bounded by the chunk, whatever the corpus size;
- ``ray`` runs them as Ray Data ``map_batches`` stages (on a cluster given by ``ray_address``, or a
  local one started on loopback), with order preserved, so both engines write the same rows in the
  same order and build the same index. The corpus is read by the local engine's own reader
  (:func:`~search_adaptor.data.iter_corpus`) inside a Ray task, and an error a task raises reaches
  the caller as that error, not wrapped in Ray's: both engines accept the same inputs and refuse
  bad ones with the same line.

Vector files are read and written by :mod:`search_adaptor.vectors`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from search_adaptor.data import DataError, corpus_file, iter_corpus
from search_adaptor.encoders.base import Encoder, Kind
from search_adaptor.encoders.registry import from_info
from search_adaptor.model import SearchAdaptor
from search_adaptor.store import EmbeddingStore, StoreStats
from search_adaptor.vectors import (
    ID,
    ROWS,
    VECTOR,
    VectorWriter,
    from_table,
    iter_vectors,
    parquet_file,
    to_table,
    vector_files,
    written_by,
)

ENGINES = ("local", "ray")
#: seconds to wait for the cluster at --ray-address to answer before saying that nothing does
CONNECT_TIMEOUT_S = 5.0
#: what Ray Data appends to the message of an error a task raised (on a new line, which DataError
#: joins into its one line): "Failed to apply UDF transform after 1/1 attempts (total backoff ...)..."
#: Ray Data's driver-side loggers that print a failed task's error with its traceback, twice
_RAY_ERROR_LOGS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")
_RAY_RETRY_NOTE = re.compile(r"\s+Failed to [^\n]*? after \d+/\d+ attempts \(total backoff .*\Z", re.S)


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
    dim: int | None = None,
) -> Iterator[tuple[list[str], np.ndarray, StoreStats]]:
    """``(ids, adapted vectors, store stats so far)`` for each ``(ids, texts)`` chunk: the local engine's
    two steps (:class:`EmbedBatch`, :func:`adapt_vectors`), shared by every in-process index build;
    with ``dim``, the vectors' first ``dim`` coordinates (a Matryoshka prefix)."""
    from tqdm.auto import tqdm

    embed = EmbedBatch(encoder, str(cache_dir) if cache_dir is not None else None)
    try:
        with tqdm(
            total=total, desc="embedding + adapting", unit="doc", disable=not progress, leave=False
        ) as bar:
            for ids, texts in chunks:
                yield ids, adapt_vectors(adapter, ids, embed.embed(texts), where, dim), embed.stats
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
    kind: Kind = "document",
) -> Any:
    """``{"id", "vector"}`` batch of base vectors -> the same rows through ``adapter.transform_corpus``
    (``transform_queries`` for ``kind="query"``; its first ``dim`` coordinates with ``dim``).

    A plain function (Ray runs it as stateless tasks): the adapter is a few hundred kilobytes and its
    transform a couple of matmuls, so there is nothing worth keeping an actor for.
    """
    ids, vectors = from_table(batch, where, id_column, vector_column)
    return to_table(ids, adapt_vectors(adapter, ids, vectors, where, dim, kind))


def adapt_vectors(
    adapter: SearchAdaptor,
    ids: Sequence[str],
    vectors: np.ndarray,
    where: str,
    dim: int | None = None,
    kind: Kind = "document",
) -> np.ndarray:
    """``adapter.transform_corpus(vectors, dim=dim)`` (``transform_queries`` for ``kind="query"``:
    query vectors, of the query model for a cross-model adapter), with a bad row named by its id
    rather than its chunk offset.

    ``vectors`` come as stored (float64 too): the adapter casts them by its one rule
    (:func:`~search_adaptor.model.float32_rows`). Their width is checked first, by the adapter
    (:meth:`~search_adaptor.model.SearchAdaptor.check_width`), so that 0-d or mis-sized vectors are
    refused as such, not as zeros or NaN."""
    if vectors.shape[1] != (adapter.query_dim_ if kind == "query" else adapter.dim_):
        adapter.check_size(dim)  # transform_corpus's first check, still first
    adapter.check_width(vectors, kind, where)
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
    transform = adapter.transform_queries if kind == "query" else adapter.transform_corpus
    return transform(vectors, dim=dim, what=where)


def _corpus_batches(batch: Any, rows: int) -> Iterator[Any]:
    """A Ray batch of corpus file paths -> ``{"id", "text"}`` batches of ``rows`` documents, read by
    the local engine's reader (:func:`~search_adaptor.data.iter_corpus`), so that both engines take
    the same files (an ``_id`` that is a number on one line, a ``metadata`` field of any shape) and
    name a bad or repeated record by its file and line."""
    import pyarrow as pa

    for path in batch["path"].to_pylist():
        for ids, texts in iter_corpus(path, rows):
            if not all(isinstance(text, str) for text in texts):
                raise DataError(
                    f"{path}: image documents are embedded by the local engine only; use --engine local"
                )
            yield pa.table({ID: pa.array(ids, type=pa.string()), "text": pa.array(texts, type=pa.string())})


# -- Ray -------------------------------------------------------------------------------------------------
def ray_session(address: str | None = None, quiet: bool = False) -> Any:
    """Connect to the Ray cluster at ``address``, or start a local one bound to loopback; order kept.

    An address where nothing answers is refused within :data:`CONNECT_TIMEOUT_S` (Ray itself retries
    for minutes), ``auto``'s included (:func:`_cluster_address`), and every refusal names
    ``--ray-address``. ``quiet`` (``--quiet``) keeps Ray's lines below errors off the terminal: its
    start ("Started a local Ray instance"), Ray Data's execution plans and warnings (Ray's C++ core
    prints its error lines at any level asked for, and a driver prints what the raylet pushes to it,
    such as a busy machine's "N PYTHON worker processes have been started", on stdout).
    """
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RuntimeError("the ray engine needs Ray Data: pip install 'search-adaptor[ray]'") from exc
    if quiet:  # Ray Data's logger, set as Ray documents for its libraries; ray.init's logging_level, Ray's
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if quiet:
            options["logging_level"] = logging.ERROR
        with _sigterm_kept():
            if address:
                try:
                    ray.init(address=_cluster_address(address), **options)
                except ConnectionError:  # Ray's own line names its `--address` flag
                    raise RuntimeError(
                        f"--ray-address {address}: found no running Ray cluster; start one (`ray start "
                        "--head`), give its address, or leave --ray-address out to run a local Ray"
                    ) from None
            else:
                ray.init(address=_cluster_address(None), _node_ip_address="127.0.0.1", **options)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same rows in the same order as the local engine
    ctx.enable_progress_bars = False
    ctx.raise_original_map_exception = True  # a task's DataError, not Ray's UserCodeException, reaches us
    return ray


@contextlib.contextmanager
def _sigterm_kept() -> Iterator[None]:
    """SIGTERM's handler as it was before, once ``ray.init`` has run (in the main thread, where
    handlers live).

    ``ray.init`` replaces it twice: with a Python handler that calls ``sys.exit(15)``, then, in the
    C++ core its driver starts, with a failure-signal handler that prints a stack dump and aborts
    (SIGABRT, status 134). The CLI's handler (SIGTERM raises
    :class:`~search_adaptor.files.Terminated`, as Ctrl-C does) is put back, so that ``kill``,
    ``timeout`` and ``docker stop`` end a ray job as they end a local one: staged outputs discarded,
    status 143 and one line, Ray shut down at exit. A caller's own handler, or SIGTERM ignored, is
    kept the same way.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None:  # None: a handler not set from Python, which it cannot put back
            signal.signal(signal.SIGTERM, handler)


def _cluster_address(address: str | None) -> str | None:
    """The address to give ``ray.init`` for ``address``, once something answers at what it stands for.

    For ``auto`` and no address, Ray takes ``RAY_ADDRESS``, else the address the last ``ray start``
    recorded (``ray_current_cluster`` in Ray's temp folder, ``$RAY_TMPDIR`` or ``/tmp``), which a
    cluster that crashed leaves behind: Ray then retries its dead GCS for minutes. Such a record is
    refused in seconds for ``auto``, and passed over for the local Ray that no address asks for.
    """
    from ray._private.services import canonicalize_bootstrap_address
    from ray._private.utils import get_ray_address_file

    if address not in (None, "auto"):
        _check_reachable(address)
        return address
    if os.environ.get("RAY_ADDRESS"):
        _check_reachable(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        return address
    found = canonicalize_bootstrap_address(address)  # "auto" and no cluster: ConnectionError
    nothing = _unanswered(found) if found else None
    if nothing is None:
        return address
    if address is None:
        return "local"
    raise RuntimeError(
        f"--ray-address auto: no Ray cluster answers at {nothing}, the last one Ray recorded "
        f"({get_ray_address_file(None)}: `ray stop` forgets a dead one); start one (`ray start --head`), "
        "or leave --ray-address out to run a local Ray"
    )


def _check_reachable(address: str, flag: str = "--ray-address") -> None:
    """Refuse, in seconds, a ``host:port`` or ``ray://host:port`` address that nothing listens at, and
    a ``ray://`` one without Ray Client installed (the ``[ray]`` extra installs ``ray[data]`` only);
    ``flag`` is where the address was given."""
    from importlib.util import find_spec

    if address.startswith("ray://") and find_spec("grpc") is None:
        raise RuntimeError(
            f'{flag} {address}: a ray:// address needs Ray Client: pip install "ray[client]" (or '
            "give the head's GCS address, host:6379, from a machine of the cluster)"
        )
    nothing = _unanswered(address)
    if nothing is not None:
        raise RuntimeError(
            f"{flag} {address}: nothing answers at {nothing}; start the cluster, correct the address, or "
            f"leave {flag} out to run a local Ray"
        )


def _unanswered(address: str) -> str | None:
    """``host:port (why)`` when nothing answers at ``address`` (``host:port`` or ``ray://host:port``)
    within :data:`CONNECT_TIMEOUT_S`; None when something does, or for another form (Ray decides)."""
    try:
        parts = urlsplit(address if address.startswith("ray://") else f"//{address}")
        host, port = parts.hostname, parts.port
    except ValueError:  # not host:port (a malformed one)
        return None
    if not host or port is None:
        return None
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host}:{port} ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def _task_errors() -> Iterator[None]:
    """Raise the error a Ray task raised, as it raised it, instead of Ray's wrapper around it.

    Ray wraps it in a ``RayTaskError`` whose message carries the worker's traceback (and colour codes),
    appends its retry advice to the error's own message (:data:`_RAY_RETRY_NOTE`), and logs it with
    two tracebacks: all dropped, so a bad row gives the line the local engine gives (``--debug``
    shows Ray's traceback, chained). Errors of Ray's own stay as they are.
    """
    from ray.exceptions import RayError, RayTaskError

    loggers = [logging.getLogger(name) for name in _RAY_ERROR_LOGS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    except RayTaskError as exc:
        cause = exc.cause
        while isinstance(cause, RayTaskError):
            cause = cause.cause
        if not isinstance(cause, Exception) or isinstance(cause, RayError):
            raise
        if cause.args and isinstance(cause.args[0], str):
            cause.args = (_RAY_RETRY_NOTE.sub("", cause.args[0]), *cause.args[1:])
        raise cause from exc
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _ray_chunks(ds: Any, rows: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The ``(ids, vectors)`` of a Ray dataset, in dataset order, ``rows`` at a time.

    Ray's own ``write_parquet`` names files by write task, and one task may get the first and the
    last block, so file order is not row order. Writing this ordered stream instead gives the same
    shards, in the same order, as the local engine; memory stays at a few batches.
    """
    with _task_errors():
        for batch in ds.iter_batches(batch_size=rows, batch_format="pyarrow", prefetch_batches=2):
            yield from_table(batch, "the ray engine's output")


def _write(
    out: str | os.PathLike, meta: dict[str, Any], chunks: Iterable[tuple[list[str], np.ndarray]], source: Path
) -> tuple[int, int, int]:
    """Stream ``(ids, adapted vectors)`` chunks into ``out``; (rows, dim, shards). An empty ``source``
    is refused naming it, and nothing is written."""
    with VectorWriter(out, meta) as writer:
        for ids, vectors in chunks:
            writer.write(ids, vectors)
        if not writer.rows:
            raise DataError(f"{source}: no vectors in it; give at least one row")
    return writer.rows, writer.dim, writer.shards


def _parquet_files(files: list[Path], id_column: str, vector_column: str) -> tuple[list[str], Any]:
    """The Parquet files the ray engine reads, each checked on the driver before a cluster starts:
    that it is Parquet, and that its columns are there and hold vectors (the local engine's rule,
    :func:`~search_adaptor.vectors.from_table`, on no rows); and the schema to read them with.

    The schema is None when the files agree. Files that type their ids or vectors differently (one
    written with integer ids, the next with strings) would fail Ray's merge of their schemas; the
    local engine takes them, so they are read as string ids and float64 vectors, which hold every
    accepted value exactly (the adapter casts rows to float32 as it does for the local engine).
    """
    import pyarrow as pa

    types = set()
    for file in files:
        if file.suffix.lower() == ".npy":
            raise DataError(
                f"{file}: the ray engine reads Parquet; convert .npy input with --engine local first"
            )
        schema = parquet_file(file).schema_arrow
        from_table(schema.empty_table(), str(file), id_column, vector_column)
        types.add((schema.field(id_column).type, schema.field(vector_column).type))
    paths = [str(f.resolve()) for f in files]  # absolute: workers on other nodes run in other folders
    if len(types) == 1:
        return paths, None
    return paths, pa.schema([(id_column, pa.string()), (vector_column, pa.list_(pa.float64()))])


def refuse_adapted(parts: Iterable[Path], fix: str = "transform base vectors only") -> None:
    """Refuse input that search-adaptor already adapted: a shard folder, a shard or Parquet file it
    wrote, a ``.npy`` with its record beside it. A second pass would silently hurt search; ``fix``
    says what to give instead (``transform``'s by default; ``index --embeddings`` names its flag)."""
    for part in dict.fromkeys(parts):
        record = written_by(part)
        if record and record.get("adapter"):
            raise ValueError(
                f"{part}: these vectors are already adapted (by {record['adapter']}); {fix}, e.g. those "
                "these were made from"
            )


def _check_apart(src: Path, out: str | os.PathLike) -> None:
    """Refuse an ``out`` that is the input, inside it or around it: writing it would replace the base
    vectors being read."""
    a, b = src.resolve(), Path(out).resolve()
    inside = a.is_relative_to(b) or (a.is_dir() and b.is_relative_to(a))
    if a == b or inside or (b.exists() and os.path.samefile(a, b)):
        raise ValueError(
            f"--out {out}: overlaps the input {src}; write the adapted vectors to a new path (in place, "
            "the base vectors would be lost)"
        )


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
    progress: bool = False,
    kind: Kind = "document",
) -> JobStats:
    """Apply ``adapter.transform_corpus`` to vectors the user already has, streaming, into ``out``;
    with ``kind="query"``, ``adapter.transform_queries`` (a query log's vectors: the side a query-only
    adapter trains, and a cross-model adapter's map from its query model).

    ``out`` ending in ``.npy`` or ``.parquet`` is one file; anything else is a folder of Parquet
    shards (the only output of the ``ray`` engine). ``dim`` keeps the first ``dim`` adapted
    coordinates (a Matryoshka prefix, unit length again). Refused before any work: vectors
    search-adaptor already adapted, and an ``out`` that is the input, inside it or around it.
    Without ``progress`` (``--quiet``) the ray engine prints its errors only, as in
    :func:`embed_and_adapt`.
    """
    _check_engine(engine)
    adapter.check_size(dim)
    rows = rows or ROWS
    start = time.perf_counter()
    src = Path(source)
    files = vector_files(src)
    _check_apart(src, out)
    refuse_adapted([src, *files])
    meta = {
        "adapter": adapter.fingerprint_,
        "adapter_mode": adapter.fitted_params_["mode"],
        "source": str(src),
    }
    if dim is not None:
        meta["size"] = dim
    if kind == "query":  # (documents: no field, as before it could be anything else)
        meta["side"] = "queries"
    if engine == "local":
        chunks = (
            (ids, adapt_vectors(adapter, ids, vectors, str(src), dim, kind))
            for ids, vectors in iter_vectors(src, rows, id_column, vector_column)
        )
        return JobStats(engine, *_write(out, meta, chunks, src), time.perf_counter() - start)
    if Path(out).suffix.lower() in (".npy", ".parquet"):
        raise ValueError(f"{out}: the ray engine writes a folder of Parquet shards; give a folder name")
    paths, schema = _parquet_files(files, id_column, vector_column)
    ray = ray_session(ray_address, quiet=not progress)
    read = {"schema": schema} if schema is not None else {}
    ds = ray.data.read_parquet(paths, **read).select_columns([id_column, vector_column])
    ds = ds.map_batches(
        adapt_batch,
        fn_kwargs={
            "adapter": adapter,
            "where": str(src),
            "id_column": id_column,
            "vector_column": vector_column,
            "dim": dim,
            "kind": kind,
        },
        batch_format="pyarrow",
        batch_size=rows,
    )
    return JobStats(engine, *_write(out, meta, _ray_chunks(ds, rows), src), time.perf_counter() - start)


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
    dim: int | None = None,
) -> JobStats:
    """Corpus texts -> base embeddings (through the store) -> adapted vectors, as a shard folder ``out``.

    ``corpus`` is a BEIR folder or its ``corpus.jsonl[.gz]`` / ``corpus.parquet``. Texts already in
    the store are not embedded again, by either engine. ``dim`` keeps the first ``dim`` adapted
    coordinates (a Matryoshka prefix, unit length again), as ``transform`` does. Without ``progress``
    the ray engine is quiet too: Ray prints its errors only.
    """
    _check_engine(engine)
    adapter.check_size(dim)
    rows = rows or ROWS
    adapter.check_encoder(encoder)
    start = time.perf_counter()
    path = corpus_file(corpus)
    cache = str(cache_dir) if cache_dir is not None else None
    meta = {
        "adapter": adapter.fingerprint_,
        "adapter_mode": adapter.fitted_params_["mode"],
        "source": str(path),
        "encoder": encoder.fingerprint,
        **({"size": dim} if dim is not None else {}),
    }
    if engine == "local":
        embedded = 0
        with VectorWriter(out, meta) as writer:
            for ids, vectors, stats in adapted_chunks(
                iter_corpus(path, rows), encoder, adapter, cache_dir, str(path), progress, dim=dim
            ):
                writer.write(ids, vectors)
                embedded = stats.encoded
        return JobStats(engine, writer.rows, writer.dim, writer.shards, time.perf_counter() - start, embedded)
    ray = ray_session(ray_address, quiet=not progress)
    # one read task, which streams the file in order; an absolute path, as workers on other nodes
    # run in other folders
    ds = ray.data.from_items([{"path": str(path.resolve())}])
    options = encoder.worker_options()  # an API's root as given (a proxy, credentials in its URL) too
    ds = ds.map_batches(_corpus_batches, fn_kwargs={"rows": rows}, batch_format="pyarrow", batch_size=1)
    ds = ds.map_batches(
        EmbedBatch,
        fn_constructor_kwargs={"encoder": encoder.info(), "cache_dir": cache, "options": options},
        batch_format="pyarrow",
        batch_size=min(rows, 4096),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=_embed_actors(ray)),
    )
    ds = ds.map_batches(
        adapt_batch,
        fn_kwargs={"adapter": adapter, "where": str(path), "dim": dim},
        batch_format="pyarrow",
        batch_size=rows,
    )
    return JobStats(engine, *_write(out, meta, _ray_chunks(ds, rows), path), time.perf_counter() - start)


def _embed_actors(ray: Any) -> int:
    """Embedding actors (each holds a model): one per CPU of the cluster but one, which the read,
    adapt and write tasks need to make progress (an actor per CPU starves them)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)) - 1)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
