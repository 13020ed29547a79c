"""A searchable, self-describing index of adapted document vectors (FAISS), ready to serve.

An index folder holds everything search needs, so a server only needs the folder (and an API key in
the environment for a hosted embedding model)::

    INDEX_DIR/
      manifest.json   library version, backend, dim, n_docs, base encoder (fingerprint + config),
                      adapter fingerprint and mode, checksums of index.faiss, doc_ids.json and
                      adapter/ (checked on load); never a key
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

import contextlib
import hashlib
import json
import numbers
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np

from search_adaptor import __version__
from search_adaptor.data import BLANK_QUERY_REASON, is_blank
from search_adaptor.embed import Embeddings, numeric_array
from search_adaptor.encoders import API_CLASSES, FOLDER_CLASSES
from search_adaptor.encoders.base import (
    KINDS,
    Encoder,
    InputsRejected,
    Kind,
    check_kind,
    refuse_bare_text,
    without_direction,
)
from search_adaptor.encoders.registry import from_info, info_problem, make_encoder
from search_adaptor.files import (
    Staged,
    inside,
    output_error,
    read_json,
    remove_stale_siblings,
    sampled_checksum,
    staging_prefix,
)
from search_adaptor.images import Item, check_item_types
from search_adaptor.model import (
    CONFIG,
    LOAD_FIX,
    WEIGHTS,
    CompatibilityError,
    SearchAdaptor,
    as_adapter,
    float32_rows,
    folder_fix,
    with_fix,
)
from search_adaptor.networks import NumpyNet, Workspace, adapt_rows
from search_adaptor.pipeline import JobStats, adapted_chunks, embed_and_adapt
from search_adaptor.retrieval import l2_normalize
from search_adaptor.vectors import iter_vectors, written_by

#: 2: ``checksums`` always recorded, the adapter's among them (a format 1 manifest may lack either:
#: they came later in it), so that deleting them from a manifest cannot turn the check off
FORMAT_VERSION = 2
BACKENDS = ("flat", "hnsw")
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "doc_ids.json"
ADAPTER_DIR = "adapter"
VECTORS_DIR = "vectors"
#: all that an index folder holds: saving over one that holds anything else is refused, not a deletion
INDEX_PARTS = (MANIFEST, INDEX_FILE, IDS_FILE, ADAPTER_DIR, VECTORS_DIR)
_BUILD_CHUNK = 8192  # documents embedded and adapted at a time: bounds memory on large corpora
_EF_CONSTRUCTION = 200
#: Bounds of each HNSW setting: below them FAISS aborts the process (degree 0 or 1) or finds nothing
#: (breadth 0); above them it overflows its C ints, or, past a degree of 1024, each document's graph
#: links outweigh its vector. (A search walks at least ``k`` and at most every document whatever the
#: breadth: :meth:`AdaptedIndex.search_adapted`.)
_HNSW_BOUNDS = {"m": (2, 1024), "ef_construction": (1, 2**31 - 1), "ef_search": (1, 2**31 - 1)}
Hits = list[list[tuple[str, float]]]
_REBUILD = "rebuild the index with `search-adaptor index`"
#: What a part of an index that changed since it was written would do, by its name in ``checksums``
_CHANGED_MEANS = {
    INDEX_FILE: "its documents may not be the ones it answers",
    IDS_FILE: "its documents may not be the ones it answers",
    ADAPTER_DIR: "queries would be adapted by another adapter than its documents were",
}
#: Why a blank query text is refused: it would rank the documents by nothing in particular (the reason
#: written once, in :data:`~search_adaptor.data.BLANK_QUERY_REASON`, which a labelled blank query gives).
BLANK_QUERY = f"the query is blank, and {BLANK_QUERY_REASON}; send its text"
#: Why a query model is refused for an index that records none (its queries are the documents' model's).
_ONE_MODEL = (
    "query_encoder given, but this index's queries are embedded by its documents' model ({model}); "
    "pass that model as encoder"
)
#: query vectors adapted into a thread's reused arrays by :meth:`AdaptedIndex.search`; more go through
#: ``transform_queries`` (chunked, so a million rows do not keep a million-row workspace alive)
_SMALL_BATCH = 1024


def import_faiss() -> Any:
    """The ``faiss`` module, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise RuntimeError("FAISS is not installed: pip install 'search-adaptor[serve]'") from exc
    return faiss


def _count(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int from ``low`` to ``high`` (a Python or numpy integer), else a one-line
    ValueError naming ``name``: FAISS takes C ints, and a float, a string or a bool taken for one would
    be cut or coerced without a word; a numpy integer would fail in ``json.dumps`` of the manifest."""
    bad = isinstance(value, bool) or not isinstance(value, numbers.Integral)
    if bad or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{name} must be an integer {span}; got {value!r}")
    return int(value)


def _as_ids(doc_ids: Iterable[Any]) -> list[str]:
    """``doc_ids`` as strings, as the corpus readers and ``fit`` take them: a Python or numpy integer
    becomes its decimal text, since ``doc_ids.json`` holds strings (:meth:`AdaptedIndex.load` takes
    nothing else) and search answers the ids a corpus file would give; any other id (None, a float, a
    bool) is refused in one line naming the first."""
    ids = []
    for i, doc_id in enumerate(doc_ids):
        if isinstance(doc_id, numbers.Integral) and not isinstance(doc_id, bool):
            doc_id = int(doc_id)
        elif not isinstance(doc_id, str):
            raise ValueError(
                f"doc_ids: id {i} is {type(doc_id).__name__} {doc_id!r:.40}, not a string; give each "
                "document a string id, e.g. [str(i) for i in ids]"
            )
        ids.append(str(doc_id))
    return ids


def _given(options: Mapping[str, Any], key: str, default: int) -> Any:
    """``options[key]``, or ``default`` when it is absent or None (a flag not given)."""
    value = options.get(key)
    return default if value is None else value


def _new_faiss_index(dim: int, backend: str, hnsw_m: int, ef_search: int) -> Any:
    """An empty FAISS index of ``backend`` (checked by :meth:`AdaptedIndex._layout`)."""
    faiss = import_faiss()
    if backend == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = _EF_CONSTRUCTION
    index.hnsw.efSearch = ef_search
    return index


class IndexOptions(TypedDict, total=False):
    """How an index is laid out; :meth:`AdaptedIndex.build`, ``from_vectors`` and ``from_shards``
    take these as keywords.

    backend : {"flat", "hnsw"}
        Exact inner-product search (default), or an HNSW graph (approximate, faster on large corpora).
    hnsw_m, ef_search : int
        HNSW graph degree (32; 2 to 1024; fixed once the graph is built) and search breadth (128; at
        least 1; raise it later for recall with :attr:`AdaptedIndex.ef_search`, which ``save`` records).
    size : int
        Keep the first ``size`` adapted coordinates (a Matryoshka prefix, unit length again): every
        document and query is cut to it.

    Each is checked before anything is embedded (see :meth:`AdaptedIndex._layout`).
    """

    backend: str
    hnsw_m: int
    ef_search: int
    size: int | None


class AdaptedIndex:
    """Adapted document vectors in a FAISS index, with the adapter and encoder that search needs.

    Build one with :meth:`build` (texts, embedded through the store) or :meth:`from_vectors`, write
    it with :meth:`save`, and open it anywhere with :meth:`load`. Searches are thread-safe.

    ``encoder`` and ``query_encoder``, when given, embed the documents' and the queries' texts as they
    were made (a key, a root, a retry policy of your own): :meth:`configure_encoder` recreates only
    the models it was not given. ``query_encoder`` is for a cross-model index, whose manifest records
    the query model; by default each model is recreated from the manifest on first use.

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
        query_encoder: Encoder | None = None,
    ) -> None:
        if query_encoder is not None and "query_encoder" not in manifest:
            raise ValueError(_ONE_MODEL.format(model=(manifest.get("encoder") or {}).get("model")))
        self.adapter = adapter
        self.faiss_index = faiss_index
        self.doc_ids = list(doc_ids)
        self.manifest = dict(manifest)
        self._encoder = encoder
        self._query_encoder = query_encoder  # a cross-model adapter's; from the manifest when None
        # the manifest keys ("encoder", "query_encoder") of the models given: kept as they were made
        given = {"encoder": encoder, "query_encoder": query_encoder}
        self._given = {key for key, model in given.items() if model is not None}
        self._options: dict[str, Any] = {}  # configure_encoder()'s overrides
        self._roots: dict[str, str] = {}  # configure_encoder()'s API roots, by manifest key
        self._checked: dict[Kind, Encoder] = {}  # the encoders last checked against the adapter
        self._sides: dict[Kind, NumpyNet | None] | None = None
        self._lock = threading.Lock()
        self._serial = threading.Lock()  # encoders that run one batch at a time (a local model)
        self._local = threading.local()  # each thread's Workspace
        self.folder: Path | None = None  # where it was loaded from (named in messages)

    def __reduce__(self) -> Any:
        """Refused in one line: pickle (and copy.deepcopy) met a lock inside and said only "cannot
        pickle '_thread.lock' object"; a folder is how an index travels (its checks run on load)."""
        raise TypeError(
            "an AdaptedIndex cannot be pickled or copied (it holds a FAISS index, locks and its encoders); "
            "save it with index.save(folder) and open it in each process with AdaptedIndex.load(folder)"
        )

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def _filled(
        cls,
        adapter: SearchAdaptor,
        encoder_info: Mapping[str, Any],
        encoder: Encoder | None,
        batches: Iterable[tuple[Sequence[str], np.ndarray]],
        options: IndexOptions,
        source: str,
    ) -> AdaptedIndex:
        """An index of ``batches`` of (ids, adapted vectors), laid out as ``options`` say; the one way
        every constructor fills an index, so each refuses an empty source and a repeated id alike."""
        problem = info_problem(encoder_info)  # load() would refuse the manifest that records it
        if problem:
            raise ValueError(
                f"encoder_info {problem}; give the info dict of the model that made the vectors "
                "(Encoder.info(), Embeddings.encoder)"
            )
        layout = cls._layout(adapter, options)  # before the first batch is embedded or adapted
        index: AdaptedIndex | None = None
        seen: set[str] = set()
        for ids, vectors in batches:
            if index is None:
                index = cls._empty(adapter, encoder_info, vectors.shape[1], encoder, **layout)
            for doc_id in ids:
                if doc_id in seen:
                    raise ValueError(f"{source}: document id {doc_id!r} appears twice; ids must be unique")
                seen.add(doc_id)
            index.faiss_index.add(np.ascontiguousarray(index._sized(vectors), dtype=np.float32))
            index.doc_ids.extend(ids)
        if index is None:
            raise ValueError(f"{source}: no documents to index")
        index.manifest["n_docs"] = len(index.doc_ids)
        return index

    @staticmethod
    def _layout(adapter: SearchAdaptor, options: Mapping[str, Any]) -> IndexOptions:
        """``options`` checked, numpy integers made ints: an unknown option, an unknown backend, or a
        setting FAISS would abort the process on (``hnsw_m`` 0) or answer fewer hits with
        (``ef_search`` 0) is refused in one line naming it, before anything is embedded."""
        known = list(IndexOptions.__annotations__)
        unknown = next((key for key in options if key not in known), None)
        if unknown is not None:
            raise TypeError(f"{unknown!r} is not an index option; the options are {', '.join(known)}")
        backend, size = options.get("backend", "flat"), options.get("size")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        graph = [key for key in ("hnsw_m", "ef_search") if options.get(key) is not None]
        if graph and backend != "hnsw":  # exact search has no graph: they would do nothing
            verb = "applies" if len(graph) == 1 else "apply"
            raise ValueError(
                f"{' and '.join(graph)} {verb} to backend='hnsw'; this index is {backend} "
                "(exact), which has no graph"
            )
        layout: IndexOptions = {
            "backend": backend,
            "hnsw_m": _count(_given(options, "hnsw_m", 32), "hnsw_m", *_HNSW_BOUNDS["m"]),
            "ef_search": _count(_given(options, "ef_search", 128), "ef_search", *_HNSW_BOUNDS["ef_search"]),
            "size": None if size is None else _count(size, "size", 1, adapter.dim_),
        }
        return layout

    @classmethod
    def _empty(
        cls,
        adapter: SearchAdaptor,
        encoder_info: Mapping[str, Any],
        dim: int,
        encoder: Encoder | None,
        *,
        backend: str,
        hnsw_m: int,
        ef_search: int,
        size: int | None,
    ) -> AdaptedIndex:
        """An index with no documents yet, laid out as :meth:`_layout` checked."""
        # vectors of the adapter's full width, or already cut to ``size`` (shards written at a size)
        adapter.check_encoder(encoder_info, None if dim == size else dim)
        full = adapter.dim_
        if size == full:
            size = None
        dim = size or dim
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
                "fingerprint": adapter.fingerprint_,
                "mode": adapter.fitted_params_["mode"],
                "identity": adapter.is_identity_,
                **({"size": size} if size else {}),  # a Matryoshka prefix: the first `size` coordinates
            },
        }
        if backend == "hnsw":
            manifest["hnsw"] = {"m": hnsw_m, "ef_construction": _EF_CONSTRUCTION, "ef_search": ef_search}
        return cls(adapter, _new_faiss_index(dim, backend, hnsw_m, ef_search), [], manifest, encoder)

    def _sized(self, vectors: np.ndarray) -> np.ndarray:
        """Adapted vectors as this index holds them: the first ``dim`` coordinates, unit length again,
        when it keeps a Matryoshka prefix; as they are otherwise."""
        if vectors.shape[1] == self.dim:
            return vectors
        return l2_normalize(np.ascontiguousarray(vectors[:, : self.dim], dtype=np.float32))

    @classmethod
    def build(
        cls,
        adapter: SearchAdaptor | str | os.PathLike,
        encoder: Encoder,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        *,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
        **options: Unpack[IndexOptions],
    ) -> AdaptedIndex:
        """Embed ``texts`` through the embedding store, adapt them and index them, chunk by chunk.

        Parameters
        ----------
        adapter : SearchAdaptor or path
            Must have been trained on ``encoder``'s embeddings (checked).
        encoder : Encoder
            Base encoder; texts already in the store are not embedded again.
        doc_ids, texts : sequence of str
            One id per document text; ids must be unique (integers are taken as their text).
        cache_dir : path, optional
            Embedding store; the default store otherwise.
        progress : bool
            Show a progress bar over the documents.
        **options
            The index's layout (:class:`IndexOptions`): ``backend``, ``hnsw_m``, ``ef_search``, ``size``.
        """
        doc_ids = _as_ids(doc_ids)
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} document ids for {len(texts)} texts; give one id per text")
        adapter = as_adapter(adapter)
        adapter.check_encoder(encoder)
        chunks = (
            (list(doc_ids[i : i + _BUILD_CHUNK]), list(texts[i : i + _BUILD_CHUNK]))
            for i in range(0, len(texts), _BUILD_CHUNK)
        )
        batches = (
            (ids, vectors)
            for ids, vectors, _ in adapted_chunks(
                chunks, encoder, adapter, cache_dir, "documents", progress, len(texts)
            )
        )
        return cls._filled(adapter, encoder.info(), encoder, batches, options, "the list of texts")

    @classmethod
    def from_vectors(
        cls,
        adapter: SearchAdaptor | str | os.PathLike,
        doc_ids: Sequence[str],
        vectors: np.ndarray | Sequence[Sequence[float]],
        encoder_info: Mapping[str, Any],
        *,
        encoder: Encoder | None = None,
        **options: Unpack[IndexOptions],
    ) -> AdaptedIndex:
        """Index base document vectors you already have (adapted here, chunk by chunk).

        Parameters
        ----------
        doc_ids : sequence of str
            Unique ids, one per row of ``vectors`` (integers are taken as their text).
        vectors : array-like of shape (n_docs, dim)
            Base (not adapted) embeddings of numbers, rows aligned with ``doc_ids``.
        encoder_info : dict
            ``{"fingerprint", "provider", "model", "config"}`` of the model that made them, e.g.
            ``Embeddings.encoder``; the adapter must match it.
        encoder : Encoder, optional
            To search with texts; recreated from ``encoder_info`` on first use otherwise.
        **options
            The index's layout (:class:`IndexOptions`).
        """
        doc_ids = _as_ids(doc_ids)
        vectors = numeric_array(vectors, "vectors", "a 2-D array")
        if not doc_ids and vectors.ndim and not len(vectors):
            raise ValueError("no documents to index: doc_ids and vectors are empty; give at least one")
        if vectors.ndim != 2 or len(doc_ids) != len(vectors) or not len(doc_ids):
            raise ValueError(
                f"{len(doc_ids)} document ids for vectors of shape {vectors.shape}; give one 2-D row per id"
            )
        adapter = as_adapter(adapter)
        batches = (
            (doc_ids[i : i + _BUILD_CHUNK], adapter.transform_corpus(vectors[i : i + _BUILD_CHUNK]))
            for i in range(0, len(doc_ids), _BUILD_CHUNK)
        )
        return cls._filled(adapter, encoder_info, encoder, batches, options, "the document vectors")

    @classmethod
    def from_shards(
        cls,
        adapter: SearchAdaptor | str | os.PathLike,
        folder: str | os.PathLike,
        encoder_info: Mapping[str, Any],
        *,
        encoder: Encoder | None = None,
        **options: Unpack[IndexOptions],
    ) -> AdaptedIndex:
        """Index the already adapted vectors of a shard folder (see :mod:`search_adaptor.pipeline`).

        Shards are read one at a time, in file-name order, which both engines keep equal to the
        corpus order; only the FAISS index itself grows with the corpus. Query vectors
        (``transform --queries``) are refused: an index holds documents.
        """
        if (written_by(folder) or {}).get("side") == "queries":
            raise ValueError(
                f"{folder}: query vectors (transform --queries); an index holds documents: transform "
                "the documents' vectors without --queries"
            )
        adapter = as_adapter(adapter)
        return cls._filled(adapter, encoder_info, encoder, iter_vectors(folder), options, str(folder))

    # -- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, vectors: str | os.PathLike | None = None) -> Path:
        """Write the index folder atomically: readers see the previous index or the new one.

        An existing folder is replaced only if it is an index itself (has ``manifest.json``) or empty.
        ``vectors``, a shard folder of the indexed vectors, is moved in as ``vectors/``. The manifest
        records the HNSW search breadth in effect (:attr:`ef_search`), so that :meth:`load` searches
        as this index does.
        """
        faiss = import_faiss()
        hnsw = self._hnsw()
        if hnsw is not None and "hnsw" in self.manifest:  # the breadth search uses, however it was set
            ef_search = _count(hnsw.efSearch, "faiss_index.hnsw.efSearch", *_HNSW_BOUNDS["ef_search"])
            self.manifest["hnsw"] = {**self.manifest["hnsw"], "ef_search": ef_search}  # not the caller's
        if vectors is not None:
            self.manifest["vectors"] = VECTORS_DIR
        with Staged(path, folder=True, marker=MANIFEST, what="an index", parts=INDEX_PARTS) as staged:
            if vectors is not None:
                shutil.move(str(vectors), staged.path / VECTORS_DIR)
            self.adapter.save(staged.path / ADAPTER_DIR, extra=getattr(self.adapter, "metrics_", None))
            faiss.write_index(self.faiss_index, str(staged.path / INDEX_FILE))
            (staged.path / IDS_FILE).write_text(json.dumps(self.doc_ids, ensure_ascii=False) + "\n", "utf-8")
            # what load checks the files against: an edit to either (ids swapped, another corpus's index
            # of the same shape) would answer the wrong documents in silence, and another adapter of
            # the same model (its fingerprint copied into the manifest) would rank by other vectors
            sums = _checksums(staged.path, staged.path / ADAPTER_DIR)
            self.manifest = {**self.manifest, "checksums": sums}
            (staged.path / MANIFEST).write_text(json.dumps(self.manifest, indent=2) + "\n", "utf-8")
        return staged.target

    @classmethod
    def load(
        cls, path: str | os.PathLike, encoder: Encoder | None = None, query_encoder: Encoder | None = None
    ) -> AdaptedIndex:
        """Open an index folder written by :meth:`save`, checking that its parts belong together.

        Parameters
        ----------
        path : path
            The index folder.
        encoder : Encoder, optional
            Base encoder for text queries (its fingerprint must match the manifest's); by default it
            is recreated from the manifest on first use, with API keys from the environment.
        query_encoder : Encoder, optional
            The same for a cross-model index's query model (its fingerprint must match the manifest's
            ``query_encoder``); an index without one embeds queries with ``encoder``.

        An HNSW index searches with the manifest's ``hnsw.ef_search`` (an edit there takes effect);
        the graph's ``m`` and ``ef_construction`` must be the FAISS file's.

        Raises
        ------
        FileNotFoundError, ValueError
            A missing, damaged or edited file, an adapter path outside the folder, or an adapter or
            encoder other than the index was built with; the message names the file and the fix.
        """
        faiss = import_faiss()
        folder = Path(path)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{manifest_path}: not found; build an index with `search-adaptor index` first"
            )
        manifest = _check_manifest(read_json(manifest_path, _REBUILD), manifest_path)
        adapter_path = inside(folder, manifest["adapter"]["path"], f"{manifest_path}: adapter.path")
        if not (adapter_path / CONFIG).is_file():  # load's fix, to point at another folder, is not this one
            raise FileNotFoundError(f"{adapter_path / CONFIG}: not found; {_REBUILD}")
        try:
            adapter = SearchAdaptor.load(adapter_path)
        except (FileNotFoundError, ValueError) as exc:  # the index's own copy: rebuilding mends it
            if LOAD_FIX not in str(exc):
                raise
            raise with_fix(exc, _REBUILD) from None
        if adapter.fingerprint_ != manifest["adapter"]["fingerprint"]:
            raise CompatibilityError(
                f"{adapter_path}: this adapter ({adapter.fingerprint_}) is not the one the index "
                f"was built with ({manifest['adapter']['fingerprint']}); {_REBUILD}"
            )
        recorded_mode = manifest["adapter"].get("mode")
        if recorded_mode is not None and recorded_mode != adapter.fitted_params_["mode"]:
            raise ValueError(
                f"{manifest_path}: adapter.mode {json.dumps(recorded_mode)[:40]} is not its adapter's "
                f"({adapter.fitted_params_['mode']}); {_REBUILD}"
            )
        fingerprint = manifest["encoder"]["fingerprint"]
        try:
            adapter.check_encoder(manifest["encoder"])
            adapter.check_encoder(manifest.get("query_encoder") or manifest["encoder"], kind="query")
        except CompatibilityError as exc:
            raise CompatibilityError(f"{adapter_path}: {exc}; {_REBUILD}") from None
        size = manifest["adapter"].get("size", adapter.dim_)
        if manifest["dim"] != size or not 1 <= size <= adapter.dim_:
            raise ValueError(
                f"{manifest_path}: dim {manifest['dim']} and adapter.size {size} do not fit the adapter's "
                f"{adapter.dim_}-d output; {_REBUILD}"
            )
        if encoder is not None and encoder.fingerprint != fingerprint:
            fix = folder_fix(fingerprint, encoder.fingerprint) or "pass the encoder the index was built with"
            raise CompatibilityError(
                f"{manifest_path}: the index holds vectors of {fingerprint} but the encoder given is "
                f"{encoder.fingerprint}; {fix}"
            )
        if query_encoder is not None:
            recorded = manifest.get("query_encoder")
            if recorded is None:
                raise ValueError(
                    f"{manifest_path}: {_ONE_MODEL.format(model=manifest['encoder'].get('model'))}"
                )
            if query_encoder.fingerprint != recorded["fingerprint"]:
                fix = folder_fix(recorded["fingerprint"], query_encoder.fingerprint) or (
                    "pass the query model it was built with"
                )
                raise CompatibilityError(
                    f"{manifest_path}: the index embeds queries with {recorded['fingerprint']} but the query "
                    f"encoder given is {query_encoder.fingerprint}; {fix}"
                )
        index_path = folder / INDEX_FILE
        try:
            faiss_index = faiss.read_index(str(index_path))
        except Exception as exc:  # faiss raises RuntimeError with a C++ trace for damaged files
            raise ValueError(
                f"{index_path}: not a readable FAISS index ({_faiss_reason(exc)}); {_REBUILD}"
            ) from None
        kind = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat}[manifest["backend"]]
        if not isinstance(faiss_index, kind) or faiss_index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(  # another type or metric would answer distances or approximate hits as cosines
                f"{index_path}: a {type(faiss_index).__name__} (metric {faiss_index.metric_type}), but the "
                f"manifest says a {manifest['backend']} inner-product index; {_REBUILD}"
            )
        ids_path = folder / IDS_FILE
        doc_ids = read_json(ids_path, _REBUILD)
        if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise ValueError(f"{ids_path}: expected a JSON list of document id strings; {_REBUILD}")
        if len(set(doc_ids)) != len(doc_ids):
            raise ValueError(f"{ids_path}: document ids repeat; {_REBUILD}")
        if not (faiss_index.ntotal == len(doc_ids) == manifest["n_docs"]) or faiss_index.d != manifest["dim"]:
            raise ValueError(
                f"{index_path}: {faiss_index.ntotal} {faiss_index.d}-d vectors, {len(doc_ids)} ids "
                f"in {IDS_FILE}, manifest says {manifest['n_docs']} {manifest['dim']}-d; {_REBUILD}"
            )
        if manifest["backend"] == "hnsw":
            for key, built in _graph_settings(faiss_index).items():
                if manifest["hnsw"][key] != built:  # the manifest would describe another graph
                    raise ValueError(
                        f"{manifest_path}: field hnsw.{key} is {manifest['hnsw'][key]} but {index_path} was "
                        f"built with {built}; set it back to {built} (it is fixed when the graph is built)"
                    )
            faiss_index.hnsw.efSearch = manifest["hnsw"]["ef_search"]  # the manifest's: one source of truth
        # last: an edit the checks above let through (ids swapped, another corpus's index of the same
        # shape, another adapter with its fingerprint copied into the manifest); format 1 indexes
        # written before checksums were recorded have none, and before the adapter's was, none of it
        recorded_sums = manifest.get("checksums")
        if recorded_sums is not None:
            found = _checksums(folder, adapter_path)
            parts = {INDEX_FILE: index_path, IDS_FILE: ids_path, ADAPTER_DIR: adapter_path}
            changed = [name for name in parts if name in recorded_sums and recorded_sums[name] != found[name]]
            if changed:
                why = _CHANGED_MEANS[changed[0]]
                raise ValueError(
                    f"{parts[changed[0]]}: changed since the index was written (its checksum in "
                    f"{MANIFEST} differs), so {why}; {_REBUILD}"
                )
        index = cls(adapter, faiss_index, doc_ids, manifest, encoder, query_encoder)
        index.folder = folder
        return index

    # -- search ------------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def ef_search(self) -> int | None:
        """The HNSW search breadth in effect (FAISS ``efSearch``); None for a flat (exact) index.

        A larger breadth finds more of the exact neighbours, more slowly. Set it on a built or loaded
        index to trade latency for recall without rebuilding: it is checked as the ``ef_search`` build
        option is (an integer from 1), applies from the next search, and :meth:`save` records it, so
        the manifest always says what search uses.

        Raises
        ------
        ValueError
            Set on a flat index (nothing to widen), or to a value that is not an integer >= 1.
        """
        hnsw = self._hnsw()
        return None if hnsw is None else int(hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        hnsw = self._hnsw()
        if hnsw is None:
            where = self.folder or "this index"
            raise ValueError(
                f"ef_search applies to an HNSW index; {where} is "
                f"{self.manifest.get('backend')}: exact search, nothing to widen"
            )
        value = _count(value, "ef_search", *_HNSW_BOUNDS["ef_search"])
        hnsw.efSearch = value
        if "hnsw" in self.manifest:  # a new dict: the one given to the constructor is the caller's
            self.manifest["hnsw"] = {**self.manifest["hnsw"], "ef_search": value}

    def _hnsw(self) -> Any:
        """The FAISS HNSW graph searched, or None for a flat index."""
        return getattr(self.faiss_index, "hnsw", None)

    @property
    def encoder(self) -> Encoder:
        """The base encoder for text queries; recreated from the manifest on first use."""
        with self._lock:
            if self._encoder is None:
                self._encoder = self._recreate("encoder")
            return self._encoder

    @property
    def query_encoder(self) -> Encoder:
        """The encoder of text queries: another model's when the adapter is cross-model (recorded in
        the manifest as ``query_encoder``), the base encoder otherwise."""
        if "query_encoder" not in self.manifest:
            return self.encoder
        with self._lock:
            if self._query_encoder is None:
                self._query_encoder = self._recreate("query_encoder")
            return self._query_encoder

    def configure_encoder(
        self, *, base_url: str | None = None, query_base_url: str | None = None, **options: Any
    ) -> bool:
        """Recreate the base (and query) encoder from the manifest with these settings, added to any
        set before, where they apply (an API model) and unless an encoder was given.

        ``options`` are :func:`~search_adaptor.encoders.registry.from_info` overrides that do not
        change the vectors (``retry_budget_s``, ``timeout``, ``max_concurrency``): a server gives its
        API encoder a short retry budget this way. ``base_url`` and ``query_base_url`` reach the
        recorded API models (the documents', and a cross-model adapter's query model) through
        another root: a proxy, a gateway, a regional endpoint. An encoder of either side given to the
        constructor, to :meth:`load` or to :func:`build_index`, and a local model, are kept as they were
        made (recreating one from the manifest would lose its key and root). Returns whether the base
        encoder was recreated.

        Raises
        ------
        ValueError
            A root for a local model, for an encoder that was given, or for a query model the index
            does not have; a root that changes what the model records (see ``from_info``).
        """
        roots = {"encoder": base_url, "query_encoder": query_base_url}
        for key, root in roots.items():
            if root is None:
                continue
            model = key if key in self.manifest else "encoder"  # queries by the documents' model
            info = self.manifest[model]
            if not self._is_api(model):
                raise ValueError(
                    f"API root {root}: {info.get('provider')} {info.get('model')} is a local model, not an "
                    "API; there is no root to set"
                )
            if model != key:
                raise ValueError(
                    f"query API root {root}: this index's queries are embedded by its documents' model "
                    f"({info.get('model')}); give the documents' API root instead"
                )
            if key in self._given:
                side = "a query encoder" if key == "query_encoder" else "an encoder"
                raise ValueError(f"API root {root}: {side} was given to this index; set its root there")
        with self._lock:
            self._options.update(options)
            self._roots.update({key: root for key, root in roots.items() if root is not None})
            if self._is_api("query_encoder") and "query_encoder" not in self._given:
                self._query_encoder = self._recreate("query_encoder")
            if "encoder" in self._given or not self._is_api("encoder"):
                return False
            self._encoder = self._recreate("encoder")
            return True

    def _is_api(self, key: str) -> bool:
        """Whether the manifest's ``encoder`` or ``query_encoder`` is an API model (settings apply)."""
        return (self.manifest.get(key) or {}).get("provider") in API_CLASSES

    def _recreate(self, key: str) -> Encoder:
        """The manifest's ``encoder`` or ``query_encoder``, made with :meth:`configure_encoder`'s settings
        where they apply: an API model's (a cross-model index may pair one with a local model)."""
        info = self.manifest[key]
        if info.get("provider") == "precomputed":
            raise ValueError(
                f"this index was built from precomputed vectors ({info.get('model')}): it has no model to "
                "embed query texts with; search it with query vectors of that model (Python: "
                "AdaptedIndex.search(vectors)), or build it with `search-adaptor index --provider P "
                "--model M`"
            )
        try:
            if not self._is_api(key):
                return from_info(info)
            return from_info(info, **self._options, base_url=self._roots.get(key))
        except ValueError as exc:  # named by the file it was recorded in
            where = f"{self.folder / MANIFEST}: {key}: " if self.folder is not None else ""
            raise ValueError(f"{where}{exc}") from None

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Adapted, unit-norm query vectors of ``texts`` (see :meth:`embed`)."""
        return self.embed(texts, "query")

    def embed(self, texts: Sequence[str], kind: Kind = "query") -> np.ndarray:
        """Adapted, unit-norm vectors of ``texts`` as queries or as documents.

        Each text's vector is the one it gets alone, whatever else is in ``texts``, up to the encoder's
        rounding: the texts go to the encoder in groups of equal
        :meth:`~search_adaptor.encoders.base.Encoder.batch_keys` (a local model: equal token counts, so
        no text is padded to a longer one) and the adapter treats each row alone, so a server may merge
        concurrent requests into one call; a local model's matrix kernels still round the last float32
        bits by batch shape (at most 2e-7 per component measured with all-MiniLM-L6-v2). Embedded
        without the store: nothing is cached.

        Returns
        -------
        ndarray of shape (len(texts), dim), float32

        Raises
        ------
        InputsRejected
            Texts the provider cannot embed (named), with the adapted vectors of the others; a text
            the model gives a zero vector (none of its tokens known) is one: nothing ranks by it.
        EncoderError
            The encoder failed.
        TypeError
            A bare string (it would be read letter by letter: :func:`refuse_bare_text`), or an item
            that is not a text (None, a number), named by its position before anything is embedded.
        ValueError
            An empty list, or a ``kind`` other than "query" and "document" (a misspelt one embedded
            the texts as documents, then failed), before anything is embedded.
        """
        refuse_bare_text(texts, "AdaptedIndex.embed()")
        check_kind(kind)
        texts = list(texts)
        if not texts:
            raise ValueError("nothing to embed: the list of texts is empty")
        check_item_types(texts)
        encoder = self.encoder_for(kind)
        serial = self._serial if encoder.max_concurrency == 1 else contextlib.nullcontext()
        encode = encoder.encode_queries if kind == "query" else encoder.encode_corpus
        groups: dict[Any, list[int]] = {}
        parts, rejected = [], {}
        with serial:  # a local model's tokenizer is not thread-safe
            for row, key in enumerate(encoder.batch_keys(texts, kind)):
                groups.setdefault(key, []).append(row)
            for rows in groups.values():
                try:
                    parts.append(encode([texts[r] for r in rows]))
                except InputsRejected as exc:
                    parts.append(exc.vectors)
                    rejected.update({rows[i]: reason for i, reason in exc.rejected.items()})
        order = np.fromiter((r for rows in groups.values() for r in rows), dtype=np.int64, count=len(texts))
        base = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        base[order] = np.concatenate(parts)
        rejected.update(without_direction(base))  # NaN rows (rejected already) are not zero
        side = self._side(kind)
        what = "queries" if kind == "query" else "corpus"
        if not rejected:
            return self._sized(adapt_rows(side, base, what))
        kept = np.setdiff1d(np.arange(len(texts)), list(rejected))
        out = np.full((len(texts), self.dim), np.nan, dtype=np.float32)
        if len(kept):
            out[kept] = self._sized(adapt_rows(side, base[kept], what))
        raise InputsRejected.of(encoder.provider, texts, out, rejected)

    def search(self, queries: Iterable[Item] | np.ndarray, k: int = 10) -> Hits:
        """Top-``k`` documents for each query, best first.

        Parameters
        ----------
        queries : list of str, or array of shape (n_queries, dim)
            Query texts (any iterable of them), or base (not adapted) query embeddings of the index's
            encoder, as a numpy array of numbers.
        k : int
            Results per query (at most the number of documents).

        Returns
        -------
        list (one per query) of lists of (doc_id, cosine score)

        Raises
        ------
        TypeError
            A bare string (it would be read letter by letter), or a query that is not a text: None, a
            number, a row of numbers (give vectors as an array).
        ValueError
            ``k`` not an integer >= 1, a blank query, or an array that is not of numbers; all refused
            before anything is embedded.
        """
        k = _count(k, "k")
        refuse_bare_text(queries, "AdaptedIndex.search()")
        if not isinstance(queries, np.ndarray):
            queries = list(queries)  # once: a generator would be spent by the checks
            row = next((i for i, q in enumerate(queries) if isinstance(q, (list, tuple, np.ndarray))), None)
            if row is not None:
                raise TypeError(
                    f"query {row} ({type(queries[row]).__name__}) is not a text; give query vectors as "
                    "one array of shape (n_queries, dim): np.asarray(queries, dtype=np.float32)"
                )
            check_item_types(queries)
            blank = next((i for i, q in enumerate(queries) if isinstance(q, str) and is_blank(q)), None)
            if blank is not None:
                raise ValueError(f"query {blank}: {BLANK_QUERY}")
            return self._search(self.embed_queries(queries), k)
        queries = numeric_array(queries, "queries", "a 2-D array")  # as transform_queries refuses them
        zero = np.flatnonzero(~queries.any(axis=1)) if queries.ndim == 2 else ()
        if len(zero):  # adapted, it stays zero: every document would score 0, ranked by nothing
            raise ValueError(f"queries: row {zero[0]} is all zeros: it has no direction to rank by")
        if queries.ndim != 2 or queries.shape[1] != self.adapter.query_dim_ or len(queries) > _SMALL_BATCH:
            return self._search(
                self._sized(self.adapter.transform_queries(queries)), k
            )  # names what is wrong
        # laid out and cast as transform_queries does, so a row's hits are the same in any layout
        # (a Fortran-ordered array rounded each row's sums in another order) and at any batch size
        vectors = float32_rows(queries, "queries")
        adapted = adapt_rows(self._side("query"), vectors, "queries", self._work())
        return self._search(self._sized(adapted), k)

    def search_adapted(self, vectors: np.ndarray, k: int = 10) -> Hits:
        """Top-``k`` documents for already adapted, unit-norm query vectors (see :meth:`search`).

        One FAISS search for all rows, into arrays this thread reuses. A row's hits do not depend on
        the other rows (FAISS scores each query alone); ties between equal scores are ordered as
        FAISS orders them for this ``k``.

        Raises
        ------
        CompatibilityError
            Vectors of another width than the index's.
        ValueError
            A row with NaN or inf, all zeros, or not of unit length (to 1e-3): scores are cosines
            only for unit vectors, and NaN ranked nothing in silence.
        """
        vectors = self._checked_shape(vectors)
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        bad = np.flatnonzero(~(np.abs(norms - 1) <= 1e-3))
        if bad.size:
            i, norm = int(bad[0]), float(norms[bad[0]])
            why = (
                "contains NaN or inf"
                if not np.isfinite(norm)
                else "is all zeros"
                if norm == 0
                else f"has length {norm:.6g}"
            )
            raise ValueError(
                f"queries: row {i} {why}; give adapted, unit-length vectors (transform_queries gives "
                "them), or search the base vectors with search()"
            )
        return self._search(vectors, k)

    def _checked_shape(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise CompatibilityError(f"queries: expected shape (n, {self.dim}), got {vectors.shape}")
        return vectors

    def _search(self, vectors: np.ndarray, k: int) -> Hits:
        """:meth:`search_adapted` of vectors this index adapted (or a server batched): unit rows."""
        k = min(_count(k, "k"), self.n_docs)
        vectors = self._checked_shape(vectors)
        work = self._work()
        scores = work.array("hit_scores", len(vectors), k)
        rows = work.array("hit_rows", len(vectors), k, np.int64)
        hnsw = self._hnsw()
        if hnsw is None:
            self.faiss_index.search(vectors, k, D=scores, I=rows)
        else:
            self._search_graph(vectors, k, hnsw.efSearch, scores, rows)
        ids = self.doc_ids
        return [
            [(ids[r], s) for r, s in zip(row, score, strict=True) if r >= 0]
            for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    def _search_graph(
        self, vectors: np.ndarray, k: int, ef_search: int, scores: np.ndarray, rows: np.ndarray
    ) -> None:
        """Search the HNSW graph into ``scores``/``rows``, with k hits for every row: a breadth below
        ``k`` walks too few documents to find k (it answered fewer, in silence), one above the corpus
        only allocates more, and a row whose walk still found fewer than k (a graph whose last links
        leave a document unreached) is searched exactly."""
        faiss = import_faiss()
        params = faiss.SearchParametersHNSW()
        params.efSearch = min(max(ef_search, k), self.n_docs)
        self.faiss_index.search(vectors, k, params=params, D=scores, I=rows)
        short = np.flatnonzero((rows < 0).any(axis=1))
        if short.size:
            exact = faiss.downcast_index(self.faiss_index.storage)
            scores[short], rows[short] = exact.search(vectors[short], k)

    def encoder_for(self, kind: Kind) -> Encoder:
        """The model that embeds ``kind`` texts: :attr:`query_encoder` for queries, :attr:`encoder` for
        documents (one model unless the adapter is cross-model), checked once against the adapter (one
        given by hand may be another model).

        :meth:`embed` embeds with it, so what a text of that side costs, fails by and may run at once
        is this model's: a server bills, names and batches each side by it.
        """
        encoder = self.query_encoder if kind == "query" else self.encoder
        if self._checked.get(kind) is not encoder:
            self.adapter.check_encoder(encoder, kind=kind)
            self._checked[kind] = encoder
        return encoder

    def _record_query_encoder(self, info: Mapping[str, Any] | None, encoder: Encoder | None = None) -> None:
        """Note in the manifest the model text queries are embedded by, when it is not the documents';
        ``encoder``, that model as the caller made it, is kept as a query model given to the constructor
        is (:meth:`configure_encoder` does not recreate it)."""
        if info:
            self.adapter.check_encoder(info, kind="query")
            self.manifest["query_encoder"] = dict(info)
            if encoder is not None:
                self._query_encoder = encoder
                self._given.add("query_encoder")

    def _side(self, kind: Kind) -> NumpyNet | None:
        """The adapter's query or document network in numpy, read once (an index serves a fixed adapter)."""
        if self._sides is None:
            self._sides = {side: self.adapter.numpy_side(side) for side in KINDS}
        return self._sides[kind]

    def _work(self) -> Workspace:
        """This thread's arrays for adapting and searching small batches without allocating."""
        work = getattr(self._local, "work", None)
        if work is None:
            work = self._local.work = Workspace()
        return work


def _graph_settings(faiss_index: Any) -> dict[str, int]:
    """The HNSW settings a FAISS index file fixed when its graph was built, by manifest field: ``m``
    (FAISS's M: links per node above the base layer, twice as many in it) and ``ef_construction``."""
    hnsw = faiss_index.hnsw
    m = hnsw.nb_neighbors(1) if hnsw.cum_nneighbor_per_level.size() > 2 else 0  # 0: no graph of ours
    return {"m": int(m), "ef_construction": int(hnsw.efConstruction)}


def moved_models(
    path: str | os.PathLike,
    model: str | os.PathLike | None = None,
    query_model: str | os.PathLike | None = None,
) -> dict[str, Encoder]:
    """The ``encoder`` and ``query_encoder`` to give :meth:`AdaptedIndex.load` for an index whose
    model folders moved since it was built (an index shipped to a server, say): ``model`` is the new
    place of the documents' model, ``query_model`` of a cross-model index's query model (a static
    model from ``search-adaptor distill``). Only a model held in a folder (:data:`FOLDER_CLASSES`)
    moves; its folder keeps its name, part of the fingerprint that ``load`` then checks with its
    content.

    Raises
    ------
    ValueError
        A flag for a side the index has no folder model on, naming the model it records there.
    """
    manifest_path = Path(path) / MANIFEST
    if not (model or query_model) or not manifest_path.is_file():  # load names a missing manifest
        return {}
    manifest = _check_manifest(read_json(manifest_path, _REBUILD), manifest_path)
    encoders: dict[str, Encoder] = {}
    for key, flag, folder in (("encoder", "--model", model), ("query_encoder", "--query-model", query_model)):
        if folder is None:
            continue
        info = manifest.get(key)
        if info is None:
            raise ValueError(
                f"{flag} {folder}: {manifest_path} embeds queries with its documents' model; drop {flag}"
            )
        if info.get("provider") not in FOLDER_CLASSES:
            raise ValueError(
                f"{flag} {folder}: the model {manifest_path} records there, {info.get('model')} "
                f"({info.get('provider')}), is not held in a folder, so it cannot have moved; drop {flag}"
            )
        encoders[key] = make_encoder(str(info["provider"]), str(folder))
    return encoders


def _faiss_reason(exc: Exception) -> str:
    """What FAISS says went wrong, without the C++ function and source file it names first ("Error in
    ... faiss::read_index_up(IOReader*, int) at /project/faiss/impl/index_read.cpp:3251: ..."),
    which cut to a line's length left no reason at all."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    reason = re.sub(r"^Error in .*? at \S+:\d+: (?:Error: )?", "", text)
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _checksums(folder: Path, adapter: Path) -> dict[str, str]:
    """The checksums a manifest records of the FAISS file (sampled: it may be gigabytes), of the
    document ids (whole: a swap of two ids changes no size) and of the ``adapter`` folder: its
    ``config.json`` whole (whose own checksum, which :meth:`SearchAdaptor.load` verifies, covers every
    weight and the encoder) and its weights sampled."""
    ids = hashlib.sha256((folder / IDS_FILE).read_bytes()).hexdigest()
    digest = hashlib.sha256((adapter / CONFIG).read_bytes())
    digest.update(sampled_checksum(adapter / WEIGHTS).encode())
    return {INDEX_FILE: sampled_checksum(folder / INDEX_FILE), IDS_FILE: ids, ADAPTER_DIR: digest.hexdigest()}


def _check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest, with every field the index needs, of the right type (see :meth:`AdaptedIndex.load`)."""
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}; {_REBUILD}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(
            f"{path}: format_version must be an integer >= 1, got {json.dumps(version)}; {_REBUILD}"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this library understands ({FORMAT_VERSION}); "
            "upgrade search-adaptor"
        )
    fields: dict[str, type] = {"backend": str, "dim": int, "n_docs": int, "encoder": dict, "adapter": dict}
    for key, kind in fields.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"{path}: field {key!r} must be {kind.__name__}, got {json.dumps(value)[:40]}; {_REBUILD}"
            )
    if manifest["backend"] not in BACKENDS:
        raise ValueError(f"{path}: backend must be one of {', '.join(BACKENDS)}; {_REBUILD}")
    if manifest["dim"] < 1 or manifest["n_docs"] < 0:
        raise ValueError(f"{path}: dim and n_docs out of range; {_REBUILD}")
    if manifest["backend"] == "hnsw":  # settings an edit or an older version let through
        hnsw = manifest.get("hnsw")
        if not isinstance(hnsw, dict):
            raise ValueError(
                f"{path}: backend 'hnsw' needs the field 'hnsw' (the graph's settings) as an object, got "
                f"{json.dumps(hnsw)[:40]}; {_REBUILD}"
            )
        try:
            for key, (low, high) in _HNSW_BOUNDS.items():
                _count(hnsw.get(key), f"field hnsw.{key}", low, high)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}; {_REBUILD}") from None
    for key in ("encoder", "query_encoder"):
        problem = info_problem(manifest[key]) if key in manifest else None
        if problem:
            raise ValueError(f"{path}: {key}: {problem}; {_REBUILD}")
    size = manifest["adapter"].get("size", 1)
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"{path}: field adapter.size must be an integer; {_REBUILD}")
    for section, key in (("adapter", "path"), ("adapter", "fingerprint")):
        if not isinstance(manifest[section].get(key), str):
            raise ValueError(f"{path}: field {section}.{key} must be a string; {_REBUILD}")
    sums = manifest.get("checksums")
    if sums is None and version >= 2:
        raise ValueError(
            f"{path}: missing field 'checksums' (format_version {version} always records it), so its "
            f"parts cannot be checked; {_REBUILD}"
        )
    needed = (INDEX_FILE, IDS_FILE, ADAPTER_DIR) if version >= 2 else (INDEX_FILE, IDS_FILE)
    if sums is not None and not (
        isinstance(sums, dict)
        and all(isinstance(sums.get(name), str) for name in needed)
        and isinstance(sums.get(ADAPTER_DIR, ""), str)  # (format 1 indexes written before it lack it)
    ):
        raise ValueError(
            f"{path}: field 'checksums' must map {INDEX_FILE}, {IDS_FILE} and {ADAPTER_DIR} to their "
            f"checksums, got {json.dumps(sums)[:40]}; {_REBUILD}"
        )
    if manifest.get("vectors", VECTORS_DIR) != VECTORS_DIR:  # the one name save writes: inside the folder
        raise ValueError(
            f"{path}: field 'vectors' must be {VECTORS_DIR!r}, the folder inside the index that holds its "
            f"vectors, got {json.dumps(manifest['vectors'])[:40]}; {_REBUILD}"
        )
    return manifest


def build_index(
    corpus: str | os.PathLike | Embeddings,
    encoder: Encoder | None,
    adapter: SearchAdaptor | str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    backend: str = "flat",
    cache_dir: str | os.PathLike | None = None,
    rows: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
    dim: int | None = None,
    query_encoder: Encoder | None = None,
    hnsw_m: int | None = None,
    ef_search: int | None = None,
) -> tuple[AdaptedIndex, JobStats]:
    """Embed a corpus file (BEIR folder, ``corpus.jsonl[.gz]`` or Parquet) through the store, adapt it,
    and write the index folder ``out`` with its vector shards; ``search-adaptor index`` is this call.

    The shards are staged beside ``out`` and the folder appears atomically; nothing is embedded
    before the adapter has been checked against ``encoder``. ``corpus`` may instead be
    :class:`~search_adaptor.embed.Embeddings` already made (precomputed vectors; ``encoder`` None):
    their documents are adapted and indexed as they are. ``dim`` keeps the first ``dim`` adapted
    coordinates (a Matryoshka prefix): a smaller, faster index, searched with queries of that size.
    ``query_encoder`` (a cross-model adapter's query model) is recorded, and text queries use it.
    ``hnsw_m`` and ``ef_search`` are an HNSW index's graph degree and search breadth
    (:class:`IndexOptions`), refused with another backend.
    """
    import_faiss()  # fail before embedding anything
    adapter = as_adapter(adapter)
    adapter.check_size(dim)  # named as this function's argument (the layout's is ``size``)
    options = {"backend": backend, "size": dim, "hnsw_m": hnsw_m, "ef_search": ef_search}
    layout: dict[str, Any] = {k: v for k, v in options.items() if v is not None}  # the flags given
    AdaptedIndex._layout(adapter, layout)  # refused before anything is embedded
    start = time.perf_counter()
    if isinstance(corpus, Embeddings):
        index = AdaptedIndex.from_vectors(adapter, corpus.doc_ids, corpus.corpus, corpus.encoder, **layout)
        index._record_query_encoder(corpus.query_encoder)
        index.save(out)
        return index, JobStats("precomputed", index.n_docs, index.dim, 0, time.perf_counter() - start)
    if encoder is None:
        raise ValueError("build_index: give the encoder of the corpus texts")
    adapter.check_encoder(encoder)
    adapter.check_encoder(query_encoder or encoder, kind="query")
    target = Path(out).resolve()
    try:  # scratch and staging are named by the user's out in a write failure, not by their own
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(target)  # a killed build's scratch, as large as the index
        # scratch space on the target's filesystem, so that save() moves the shards instead of copying
        # them; named as a staging sibling, so that the next build removes it if this one is killed
        with tempfile.TemporaryDirectory(prefix=staging_prefix(target), dir=target.parent) as scratch:
            shards = Path(scratch) / "vectors"
            stats = embed_and_adapt(
                corpus,
                encoder,
                adapter,
                shards,
                engine=engine,
                cache_dir=cache_dir,
                ray_address=ray_address,
                rows=rows,
                progress=progress,
                dim=dim,
            )
            index = AdaptedIndex.from_shards(adapter, shards, encoder.info(), encoder=encoder, **layout)
            if query_encoder is not None and query_encoder.fingerprint != encoder.fingerprint:
                index._record_query_encoder(query_encoder.info(), query_encoder)  # kept as given
            index.save(target, vectors=shards)
    except OSError as exc:
        raise output_error(target, exc) from None
    return index, stats
