"""A searchable, self-describing index of adapted document vectors (FAISS), ready to serve.

An index folder holds everything search needs, so a server only needs the folder (and an API key in
the environment for a hosted embedding model)::

    INDEX_DIR/
      manifest.json   library version, backend, dim, n_docs, base encoder (fingerprint + config),
                      adapter fingerprint and mode; never a key
      index.faiss     the FAISS index of adapted, unit-norm document vectors (inner product = cosine)
      doc_ids.json    document id of every row of the index
      adapter/        a copy of the adapter (config.json + adapter.safetensors)
      vectors/        (indexes built by ``search-adaptor index``) the adapted vectors as Parquet shards
                      of (id, vector), in index order: rebuild with another backend or load them
                      into another vector database without embedding again

In ``query_only`` mode the document vectors are the base ones, normalised: the same index serves the
zero-shot model and every query-only adapter of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor import __version__
from search_adaptor.encoders.base import Encoder
from search_adaptor.integrations import AdaptedEncoder, _as_adapter, adapter_fingerprint
from search_adaptor.model import CompatibilityError, SearchAdaptor
from search_adaptor.report import publish_folder

FORMAT_VERSION = 1
BACKENDS = ("flat", "hnsw")
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
ADAPTER_DIR = "adapter"
VECTORS_DIR = "vectors"
_BUILD_CHUNK = 8192  # documents embedded and adapted at a time: bounds memory on large corpora
_EF_CONSTRUCTION = 200
#: encoder config keys that are also ``make_encoder`` options of the same name
_ENCODER_OPTIONS = ("max_chars", "query_prompt", "document_prompt", "truncate", "truncation", "auto_truncate")

Hits = list[list[tuple[str, float]]]


def encoder_from_info(info: Mapping[str, Any], **overrides: Any) -> Encoder:
    """Recreate the encoder an index or adapter records (``{"fingerprint", "provider", "config"}``).

    API keys come from the environment, as for any encoder. The result must reproduce the recorded
    fingerprint; otherwise the vectors would differ from the indexed ones. ``overrides`` are
    ``make_encoder`` options that do not change the vectors (``batch_size``, ``max_concurrency``,
    ``timeout``).

    Raises
    ------
    ValueError
        Precomputed vectors (no model to call) or a config this library version cannot reproduce.
    """
    from search_adaptor.encoders.registry import make_encoder

    provider, cfg = info.get("provider"), info.get("config") or {}
    if provider == "precomputed":
        raise ValueError(
            f"the vectors came from precomputed embeddings ({info.get('model')}): there is no model to embed "
            "text with; pass query vectors instead, or give an encoder explicitly"
        )
    base_url = cfg.get("base_url") or cfg.get("endpoint")
    extra: dict[str, Any] = {"base_url": base_url} if base_url else {}
    if cfg.get("dimensions") is not None:
        extra["dimensions"] = cfg["dimensions"]
    options = {k: cfg[k] for k in _ENCODER_OPTIONS if k in cfg}
    encoder = make_encoder(str(provider), cfg.get("model"), **extra, **options, **overrides)
    if encoder.fingerprint != info.get("fingerprint"):
        raise ValueError(
            f"recreated encoder {encoder.fingerprint} differs from the recorded {info.get('fingerprint')}; "
            "pass the original encoder explicitly"
        )
    return encoder


def replace_folder(path: str | os.PathLike, fill: Callable[[Path], None], marker: str, what: str) -> Path:
    """Write a folder atomically: ``fill`` writes a sibling temporary folder that then replaces ``path``.

    Readers see the old folder or the new one, never a mix; a failure leaves the old one untouched.
    An existing ``path`` is replaced only when empty or when it holds ``marker`` (it is ``what``),
    so a mistyped path never deletes unrelated files.
    """
    target = Path(path).resolve()
    if target.exists() and not (target / marker).is_file() and any(target.iterdir()):
        raise FileExistsError(f"{target}: exists and is not {what}; choose a new or empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        publish_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def import_faiss() -> Any:
    """The ``faiss`` module, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise RuntimeError("FAISS is not installed: pip install 'search-adaptor[serve]'") from exc
    return faiss


def _new_faiss_index(dim: int, backend: str, hnsw_m: int, ef_search: int) -> Any:
    faiss = import_faiss()
    if backend == "flat":
        return faiss.IndexFlatIP(dim)
    if backend == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = _EF_CONSTRUCTION
        index.hnsw.efSearch = ef_search
        return index
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


class AdaptedIndex:
    """Adapted document vectors in a FAISS index, with the adapter and encoder that search needs.

    Build one with :meth:`build` (texts, embedded through the store) or :meth:`from_vectors`, write
    it with :meth:`save`, and open it anywhere with :meth:`load`. Searches are thread-safe.

    Attributes
    ----------
    adapter : SearchAdaptor
    doc_ids : list of str
        Id of every indexed document, in index order.
    manifest : dict
        What ``manifest.json`` records (see the module docstring).
    """

    def __init__(
        self,
        adapter: SearchAdaptor,
        faiss_index: Any,
        doc_ids: Sequence[str],
        manifest: Mapping[str, Any],
        encoder: Encoder | None = None,
    ) -> None:
        self.adapter = adapter
        self.faiss_index = faiss_index
        self.doc_ids = list(doc_ids)
        self.manifest = dict(manifest)
        self._encoder = encoder
        self._query_encoder: AdaptedEncoder | None = None
        self._lock = threading.Lock()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def _empty(
        cls,
        adapter: SearchAdaptor,
        encoder_info: Mapping[str, Any],
        dim: int,
        backend: str,
        hnsw_m: int,
        ef_search: int,
        encoder: Encoder | None,
    ) -> AdaptedIndex:
        adapter.check_encoder(str(encoder_info.get("fingerprint", "")), dim)
        manifest: dict[str, Any] = {
            "library": "search-adaptor",
            "version": __version__,
            "format_version": FORMAT_VERSION,
            "backend": backend,
            "metric": "inner product of unit vectors (cosine)",
            "dim": dim,
            "n_docs": 0,
            "encoder": dict(encoder_info),
            "adapter": {
                "path": ADAPTER_DIR,
                "fingerprint": adapter_fingerprint(adapter),
                "mode": adapter.mode,
                "identity": adapter.is_identity_,
            },
        }
        if backend == "hnsw":
            manifest["hnsw"] = {"m": hnsw_m, "ef_construction": _EF_CONSTRUCTION, "ef_search": ef_search}
        return cls(adapter, _new_faiss_index(dim, backend, hnsw_m, ef_search), [], manifest, encoder)

    def _add(self, doc_ids: Sequence[str], base_vectors: np.ndarray) -> None:
        self.faiss_index.add(self.adapter.transform_corpus(base_vectors))
        self.doc_ids.extend(doc_ids)
        self.manifest["n_docs"] = len(self.doc_ids)

    @classmethod
    def build(
        cls,
        adapter: SearchAdaptor | str | os.PathLike,
        encoder: Encoder,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        *,
        backend: str = "flat",
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> AdaptedIndex:
        """Embed ``texts`` through the embedding store, adapt them and index them, chunk by chunk.

        Parameters
        ----------
        adapter : SearchAdaptor or path
            Must have been trained on ``encoder``'s embeddings (checked).
        encoder : Encoder
            Base encoder; texts already in the store are not embedded again.
        doc_ids, texts : sequence of str
            One id per document text.
        backend : {"flat", "hnsw"}
            Exact inner-product search, or an HNSW graph (approximate, faster on large corpora).
        cache_dir : path, optional
            Embedding store; the default store otherwise.
        progress : bool
            Show a progress bar over the documents.
        hnsw_m, ef_search : int
            HNSW graph degree and search breadth (``ef_search`` can be raised later for recall).
        """
        from tqdm.auto import tqdm

        from search_adaptor.embed import encoder_info
        from search_adaptor.store import EmbeddingStore

        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} document ids for {len(texts)} texts; give one id per text")
        adapter = _as_adapter(adapter)
        index: AdaptedIndex | None = None
        with (
            EmbeddingStore(encoder, cache_dir) as store,
            tqdm(total=len(texts), desc="indexing", unit="doc", disable=not progress, leave=False) as bar,
        ):
            for start in range(0, len(texts), _BUILD_CHUNK):
                vectors = store.embed(texts[start : start + _BUILD_CHUNK], "document")
                if index is None:
                    info = encoder_info(encoder)
                    index = cls._empty(adapter, info, vectors.shape[1], backend, hnsw_m, ef_search, encoder)
                index._add(doc_ids[start : start + _BUILD_CHUNK], vectors)
                bar.update(len(vectors))
        if index is None:
            raise ValueError("no documents to index: the list of texts is empty")
        return index

    @classmethod
    def from_vectors(
        cls,
        adapter: SearchAdaptor | str | os.PathLike,
        doc_ids: Sequence[str],
        vectors: np.ndarray,
        encoder_info: Mapping[str, Any],
        *,
        backend: str = "flat",
        encoder: Encoder | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> AdaptedIndex:
        """Index base document vectors you already have (adapted here, chunk by chunk).

        Parameters
        ----------
        vectors : ndarray of shape (n_docs, dim)
            Base (not adapted) embeddings, rows aligned with ``doc_ids``.
        encoder_info : dict
            ``{"fingerprint", "provider", "model", "config"}`` of the model that made them, e.g.
            ``Embeddings.encoder``; the adapter must match it.
        encoder : Encoder, optional
            To search with texts; recreated from ``encoder_info`` on first use otherwise.
        """
        if vectors.ndim != 2 or len(doc_ids) != len(vectors) or not len(doc_ids):
            raise ValueError(
                f"{len(doc_ids)} document ids for vectors of shape {vectors.shape}; give one 2-D row per id"
            )
        adapter = _as_adapter(adapter)
        index = cls._empty(adapter, encoder_info, vectors.shape[1], backend, hnsw_m, ef_search, encoder)
        for start in range(0, len(doc_ids), _BUILD_CHUNK):
            index._add(doc_ids[start : start + _BUILD_CHUNK], vectors[start : start + _BUILD_CHUNK])
        return index

    @classmethod
    def from_shards(
        cls,
        adapter: SearchAdaptor | str | os.PathLike,
        folder: str | os.PathLike,
        encoder_info: Mapping[str, Any],
        *,
        backend: str = "flat",
        encoder: Encoder | None = None,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> AdaptedIndex:
        """Index the already adapted vectors of a shard folder (see :mod:`search_adaptor.pipeline`).

        Shards are read one at a time, in file-name order, which both engines keep equal to the
        corpus order; only the FAISS index itself grows with the corpus.
        """
        from search_adaptor.pipeline import iter_vectors

        adapter = _as_adapter(adapter)
        index: AdaptedIndex | None = None
        seen: set[str] = set()
        for ids, vectors in iter_vectors(folder):
            if index is None:
                index = cls._empty(
                    adapter, encoder_info, vectors.shape[1], backend, hnsw_m, ef_search, encoder
                )
            for doc_id in ids:
                if doc_id in seen:
                    raise ValueError(f"{folder}: document id {doc_id!r} appears twice; ids must be unique")
                seen.add(doc_id)
            index.faiss_index.add(vectors)
            index.doc_ids.extend(ids)
        if index is None:
            raise ValueError(f"{folder}: no vectors to index")
        index.manifest["n_docs"] = len(index.doc_ids)
        return index

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, vectors: str | os.PathLike | None = None) -> Path:
        """Write the index folder atomically: readers see the previous index or the new one.

        An existing folder is replaced only if it is an index itself (has ``manifest.json``) or empty.
        ``vectors``, a shard folder of the indexed vectors, is moved in as ``vectors/``.
        """
        from search_adaptor.report import write_text_atomic

        faiss = import_faiss()
        if vectors is not None:
            self.manifest["vectors"] = VECTORS_DIR

        def fill(tmp: Path) -> None:
            if vectors is not None:
                shutil.move(str(vectors), tmp / VECTORS_DIR)
            self.adapter.save(tmp / ADAPTER_DIR, extra=getattr(self.adapter, "metrics_", None))
            faiss.write_index(self.faiss_index, str(tmp / INDEX_FILE))
            write_text_atomic(tmp / IDS_FILE, json.dumps(self.doc_ids, ensure_ascii=False) + "\n")
            write_text_atomic(tmp / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")

        return replace_folder(path, fill, MANIFEST, "an index")

    @classmethod
    def load(cls, path: str | os.PathLike, encoder: Encoder | None = None) -> AdaptedIndex:
        """Open an index folder written by :meth:`save`, checking that its parts belong together.

        Parameters
        ----------
        path : path
            The index folder.
        encoder : Encoder, optional
            Base encoder for text queries (its fingerprint must match the manifest's); by default it
            is recreated from the manifest on first use, with API keys from the environment.

        Raises
        ------
        FileNotFoundError, ValueError
            A missing or damaged file, or an adapter or encoder other than the index was built with;
            the message names the file and the fix.
        """
        faiss = import_faiss()
        folder = Path(path)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: not found; build an index with `search-adaptor index` first"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest_path}: not valid JSON ({exc.msg}); rebuild the index") from exc
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{manifest_path}: format_version {manifest['format_version']} is newer than this library "
                f"understands ({FORMAT_VERSION}); upgrade search-adaptor"
            )
        adapter_path = folder / manifest["adapter"]["path"]
        adapter = SearchAdaptor.load(adapter_path)
        if adapter_fingerprint(adapter) != manifest["adapter"]["fingerprint"]:
            raise CompatibilityError(
                f"{adapter_path}: this adapter ({adapter_fingerprint(adapter)}) is not the one the index "
                f"was built with ({manifest['adapter']['fingerprint']}); rebuild the index with "
                "`search-adaptor index`"
            )
        fingerprint = manifest["encoder"]["fingerprint"]
        try:
            adapter.check_encoder(fingerprint, int(manifest["dim"]))
        except CompatibilityError as exc:
            raise CompatibilityError(f"{adapter_path}: {exc}; rebuild the index") from exc
        if encoder is not None and encoder.fingerprint != fingerprint:
            raise CompatibilityError(
                f"{manifest_path}: the index holds vectors of {fingerprint} but the encoder given is "
                f"{encoder.fingerprint}; pass the encoder the index was built with"
            )
        faiss_index = faiss.read_index(str(folder / INDEX_FILE))
        doc_ids = json.loads((folder / IDS_FILE).read_text())
        if not (faiss_index.ntotal == len(doc_ids) == manifest["n_docs"]) or faiss_index.d != manifest["dim"]:
            raise ValueError(
                f"{folder / INDEX_FILE}: {faiss_index.ntotal} {faiss_index.d}-d vectors, {len(doc_ids)} ids "
                f"in {IDS_FILE}, manifest says {manifest['n_docs']} {manifest['dim']}-d; rebuild the index"
            )
        return cls(adapter, faiss_index, doc_ids, manifest, encoder)

    # -- search ------------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def encoder(self) -> Encoder:
        """The base encoder for text queries; recreated from the manifest on first use."""
        with self._lock:
            if self._encoder is None:
                self._encoder = encoder_from_info(self.manifest["encoder"])
            return self._encoder

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Adapted, unit-norm query vectors of ``texts`` (embedded without the store: nothing is cached).

        Returns
        -------
        ndarray of shape (len(texts), dim), float32
        """
        if isinstance(texts, str):
            raise TypeError("embed_queries() takes a list of texts; wrap a single query in a list")
        encoder = self.encoder
        if self._query_encoder is None:
            self._query_encoder = AdaptedEncoder(encoder, self.adapter)
        if encoder.max_concurrency > 1:
            return self._query_encoder.encode_queries(list(texts))
        with self._lock:  # a local model runs one batch at a time (its tokenizer is not thread-safe)
            return self._query_encoder.encode_queries(list(texts))

    def search(self, queries: Sequence[str] | np.ndarray, k: int = 10) -> Hits:
        """Top-``k`` documents for each query, best first.

        Parameters
        ----------
        queries : list of str, or ndarray of shape (n_queries, dim)
            Query texts, or base (not adapted) query embeddings of the index's encoder.
        k : int
            Results per query (at most the number of documents).

        Returns
        -------
        list (one per query) of lists of (doc_id, cosine score)
        """
        if isinstance(queries, np.ndarray):
            vectors = self.adapter.transform_queries(queries)
        else:
            vectors = self.embed_queries(queries)
        return self.search_adapted(vectors, k)

    def search_adapted(self, vectors: np.ndarray, k: int = 10) -> Hits:
        """Top-``k`` documents for already adapted, unit-norm query vectors (see :meth:`search`)."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise CompatibilityError(f"queries: expected shape (n, {self.dim}), got {vectors.shape}")
        scores, rows = self.faiss_index.search(vectors, min(int(k), self.n_docs))
        return [
            [(self.doc_ids[r], float(s)) for r, s in zip(row, score, strict=True) if r >= 0]
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
        ]
