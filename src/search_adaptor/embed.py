"""Texts -> embeddings: through the persistent store, or from vectors the user already has."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.data import Dataset, refuse_nulls
from search_adaptor.encoders.base import (
    Encoder,
    ImagesUnsupported,
    InputsRejected,
    Kind,
    describe_item,
    image_models,
)
from search_adaptor.images import ImageRef, ImageUnreadable
from search_adaptor.store import EmbeddingStore, StoreStats, item_key

_CHUNK = 65536  # rows measured at a time in float64 by unit_rows: bounds its extra memory


def numeric_array(x: object, what: str, shape: str = "an array") -> np.ndarray:
    """``x`` as a numpy array of integers or floats; anything else (strings, objects, ragged lists) is
    a one-line error starting with ``what`` and saying the ``shape`` expected."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):  # ragged lists
        raise ValueError(f"{what}: expected {shape} of numbers, got rows of unequal lengths") from None
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{what}: expected {shape} of numbers, got {arr.dtype} of shape {arr.shape}")
    return arr


def unit_rows(
    x: object, what: str, row: Callable[[int], str] = "row {}".format, take: np.ndarray | None = None
) -> np.ndarray:
    """Float32 unit vectors of the rows of ``x``, lengths measured in float64 after scaling each row by
    its largest value, so that no finite vector overflows or underflows (1e30 or 1e-30 is as good as 1).

    Cosine scores depend on directions only, so this is what every adapter and index sees of a
    vector. Messages start with ``what`` (the file or argument) and name a row by ``row(i)``.
    ``take`` (row numbers of ``x``) gives the unit vectors of ``x[take]``, gathered ``_CHUNK`` rows
    at a time: a corpus read from a file is never copied whole to put its rows in the dataset's order.
    Rows are checked and measured ``_CHUNK`` at a time too, so the extra memory stays bounded.

    Raises
    ------
    ValueError
        Not a non-empty 2-D array of numbers; a row with NaN or inf, or all zeros (no direction).
    """
    arr = numeric_array(x, what, "a non-empty 2-D array")
    shape = arr.shape if take is None or arr.ndim != 2 else (len(take), arr.shape[1])
    if arr.ndim != 2 or 0 in shape:
        raise ValueError(
            f"{what}: expected a non-empty 2-D array of numbers, got {arr.dtype} of shape {shape}"
        )
    out = np.empty(shape, dtype=np.float32)
    nonfinite, zero = np.zeros(len(out), dtype=bool), np.zeros(len(out), dtype=bool)
    refused = False
    for start in range(0, len(out), _CHUNK):
        stop = min(start + _CHUNK, len(out))
        part = arr[start:stop] if take is None else arr[take[start:stop]]
        nonfinite[start:stop] = ~np.isfinite(part).all(axis=1)
        zero[start:stop] = ~part.any(axis=1)
        refused = refused or bool(nonfinite[start:stop].any() or zero[start:stop].any())
        if refused:  # refused below once every row is checked; measuring it would divide by zero
            continue
        part = part.astype(np.float64)
        part /= np.abs(part).max(axis=1, keepdims=True)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        out[start:stop] = part
    for bad, problem, fix in (
        (nonfinite, "contains NaN or inf", "re-embed those texts or drop them"),
        (
            zero,
            "is all zeros",
            "a zero vector has no direction to rank by: re-embed it, or drop it "
            "(a static model gives one to a text none of whose words it knows)",
        ),
    ):
        if bad.any():
            raise ValueError(
                f"{what}: {row(int(np.argmax(bad)))} {problem} ({int(bad.sum())} such rows); {fix}"
            )
    return out


@dataclass
class Embeddings:
    """A dataset's queries and corpus, rows aligned with the ids: in one embedding space, or, when
    ``query_encoder`` is set, queries of that model and documents of ``encoder`` (cross-model), with
    ``pairs``: the corpus texts embedded by the query model too, row for row with ``corpus`` (a zero
    row for a document the query model cannot embed, an image: unpaired, see :func:`embed_dataset`), and
    ``query_pairs``: the query texts embedded by the documents' model, row for row with ``queries``
    (a fit pairs the training queries' texts, never their labels); ``more_pairs``: further texts
    (``fit --pairs``), by the query model and by the documents' model."""

    query_ids: list[str]
    queries: np.ndarray  # (n_queries, query dim)
    doc_ids: list[str]
    corpus: np.ndarray  # (n_docs, dim)
    encoder: dict[str, Any]  # {"fingerprint", "model", "provider", "config"}
    embed_s: float = 0.0
    stats: StoreStats = field(default_factory=StoreStats)
    query_encoder: dict[str, Any] | None = None  # another model's queries (cross-model)
    pairs: np.ndarray | None = None  # (n_docs, query dim): the corpus texts by the query model (0: an image)
    query_pairs: np.ndarray | None = None  # (n_queries, dim): the query texts by the documents' model
    more_pairs: tuple[np.ndarray, np.ndarray] | None = None  # further texts by both models (fit --pairs)

    @property
    def dim(self) -> int:
        return int(self.corpus.shape[1])

    def describe(self, retries: int | None = None) -> str:
        """One line: what the store sent and held (and the API retries made), for the command line."""
        tried = "" if retries is None else f", {retries} retries"
        width, whose = f"{self.dim}-d", ""
        if self.query_encoder:  # two models: say whose queries, how wide each side is, and that
            # the counts are both models' (a text embedded by each counts twice)
            width = (
                f"queries {self.queries.shape[1]}-d of {self.query_encoder.get('model')}, documents {width}"
            )
            whose = "both models together: "
        return (
            f"{whose}{self.stats.encoded} texts embedded, {self.stats.cached} already cached "
            f"({width}, {self.embed_s:.1f} s{tried})"
        )


def embed_dataset(
    dataset: Dataset,
    encoder: Encoder,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    query_encoder: Encoder | None = None,
    pair_texts: Sequence[str] | None = None,
) -> Embeddings:
    """Embed every query and document of ``dataset``, paying only for texts not in the store yet.

    With ``query_encoder`` (another model than ``encoder``), the queries are that model's, and so
    are the ``pairs``: the corpus texts embedded as queries by it, the paired texts a cross-model
    adapter aligns with the documents. A document the query model cannot embed (an image, for a
    model of text) goes unpaired, its row of ``pairs`` zero, which a fit leaves out as it does a text
    a static model knows no word of: the map learns from the text documents (and the query texts),
    and the image documents are searched as ever, by ``encoder``'s vectors. A corpus with no
    document to pair is refused before anything is sent. The query texts are embedded by ``encoder`` too
    (``query_pairs``): short, query-like paired texts that teach the map far more than documents
    (queries are few and short, so this adds little to the bill). ``pair_texts`` (a query log, say)
    are embedded as queries by both models (``more_pairs``); they need a query model.

    The progress bar shows texts per second and, for encoders that count them (the API
    providers), the retries made so far: a climbing count is the sign of rate limits or an
    unhealthy endpoint while the run still makes progress.
    """
    from tqdm.auto import tqdm

    qids = list(dataset.queries)
    if query_encoder is not None and query_encoder.fingerprint == encoder.fingerprint:
        query_encoder = None
    with naming_the_document(dataset):
        jobs, paired = _jobs(dataset, encoder, query_encoder, pair_texts)
    stats = StoreStats()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stores = {id(enc): stack.enter_context(EmbeddingStore(enc, cache_dir)) for enc, _, _ in jobs}
        unsent: dict[int, set[bytes]] = {key: set() for key in stores}  # per store: a text counts once
        with naming_the_document(dataset):
            for enc, kind, texts in jobs:  # before any call is paid for
                items = stores[id(enc)].missing(kind, texts)
                enc.check_items(items)  # an image a text-only model cannot take: one line, nothing sent
                unsent[id(enc)].update(item_key(kind, t) for t in items)
        for key, keys in unsent.items():  # all a read-only store lacks, not the first job's share
            if keys and stores[key].read_only:
                raise stores[key].unwritable(len(keys))
        todo = sum(map(len, unsent.values()))
        bar = stack.enter_context(
            tqdm(
                total=todo,
                desc=f"embedding {dataset.name}",
                unit="text",
                disable=not progress or todo == 0,
                leave=False,
            )
        )
        out: list[np.ndarray] = []
        refused = None  # texts the provider refused: reported once the documents are embedded too
        for enc, kind, texts in jobs:

            def advance(n: int, enc: Encoder = enc) -> None:
                if hasattr(enc, "retries"):
                    bar.set_postfix(retries=enc.retries, refresh=False)
                bar.update(n)

            try:
                out.append(stores[id(enc)].embed(texts, kind, progress=advance, stats=stats))
            except InputsRejected as exc:
                if kind == "document" and enc is encoder:
                    raise
                refused = refused or exc
                out.append(exc.vectors)
    if refused is not None:
        raise refused
    return Embeddings(
        qids,
        out[0],
        list(dataset.doc_ids),
        out[1],
        encoder.info(),
        embed_s=time.perf_counter() - start,
        stats=stats,
        query_encoder=None if query_encoder is None else query_encoder.info(),
        pairs=None if paired is None else _unpaired_as_zeros(out[2], paired, len(dataset.doc_ids)),
        query_pairs=out[3] if query_encoder is not None else None,
        more_pairs=(out[4], out[5]) if len(out) > 4 else None,
    )


@contextlib.contextmanager
def naming_the_document(dataset: Dataset) -> Iterator[None]:
    """An error about one image of the corpus (it cannot be read, or the model cannot take it) names
    the document that holds it, by id, instead of its position in a batch."""
    try:
        yield
    except (ImagesUnsupported, ImageUnreadable) as exc:
        item = exc.item
        if not isinstance(item, ImageRef):
            raise
        doc = next((d for d, i in zip(dataset.doc_ids, dataset.doc_texts, strict=True) if i == item), None)
        if doc is None:
            raise
        raise type(exc)(f"{dataset.path}: document {doc!r}: {exc}", item) from None


def _jobs(
    dataset: Dataset,
    encoder: Encoder,
    query_encoder: Encoder | None = None,
    pair_texts: Sequence[str] | None = None,
) -> tuple[list[tuple[Encoder, Kind, list[Any]]], list[int] | None]:
    """What embedding ``dataset`` takes, in order, as (encoder, kind, texts), and the corpus rows that
    the third job embeds (None without a query model). The first job gives the queries, the second
    the documents, then come a cross-model run's pairs (see :func:`embed_dataset`): the corpus rows
    the query model takes, the query texts by the documents' model, and ``pair_texts`` by both."""
    if pair_texts and query_encoder is None:
        raise ValueError(
            "paired texts map another model's queries into the documents' space: name the query model "
            "(--query-provider / --query-model), or drop --pairs / --sentence-pairs"
        )
    qtexts = list(dataset.queries.values())
    jobs: list[tuple[Encoder, Kind, list[Any]]] = [(query_encoder or encoder, "query", qtexts)]
    jobs.append((encoder, "document", list(dataset.doc_texts)))
    if query_encoder is None:
        return jobs, None
    paired = _paired_rows(dataset, encoder, query_encoder)
    jobs.append((query_encoder, "query", [dataset.doc_texts[i] for i in paired]))
    jobs.append((encoder, "query", qtexts))
    if pair_texts:
        jobs += [(query_encoder, "query", list(pair_texts)), (encoder, "query", list(pair_texts))]
    return jobs, paired


def _paired_rows(dataset: Dataset, encoder: Encoder, query_encoder: Encoder) -> list[int]:
    """The corpus rows a cross-model run pairs: the documents ``query_encoder`` embeds.

    Raises
    ------
    ImagesUnsupported
        It embeds none of them (all images, and a model of text): no pair to learn the map from. The
        documents' own model refuses them first where it cannot embed them either.
    """
    rows = [i for i, item in enumerate(dataset.doc_texts) if query_encoder.takes(item)]
    if rows:
        return rows
    encoder.check_items(dataset.doc_texts)  # the documents' model first: what is wrong first
    urls = query_encoder.accepts_images  # then what it cannot take is image URLs
    raise ImagesUnsupported(
        f"{query_encoder.provider}: {query_encoder.model} embeds none of the {len(dataset.doc_texts)} "
        f"documents of {dataset.name} (images{' by URL' if urls else ''}), and a cross-model run learns "
        f"its map from documents both models embed; drop the --query-* flags to embed the queries with "
        f"{encoder.provider} ({encoder.model}) too, or name a query model that takes them: "
        f"{image_models(urls=urls)}"
    )


def _unpaired_as_zeros(vectors: np.ndarray, rows: list[int], n_docs: int) -> np.ndarray:
    """The query model's ``vectors`` of the corpus ``rows``, row for row with the whole corpus: the
    rows it did not embed (images) are zero, which a fit leaves out of its pairs."""
    if len(rows) == n_docs:
        return vectors
    out = np.zeros((n_docs, vectors.shape[1]), dtype=vectors.dtype)
    out[rows] = vectors
    return out


@dataclass
class EmbeddingPlan:
    """What embedding a dataset would do, before anything is sent (``embed --dry-run``)."""

    dataset: str
    fingerprint: str
    unique: int  # distinct (kind, text) pairs
    cached: int  # already in the store
    to_send: int
    tokens: int | None  # estimated tokens billed for what would be sent; None for a local model
    requests: int | None = None  # HTTP requests that would send them; None for a local model
    #: what the run would refuse after sending the rest (an image the provider cannot take): the first,
    #: described with its reason, and how many
    refused: tuple[str, int] | None = None

    def describe(self) -> str:
        """One line for people."""
        cost = "" if self.tokens is None else f" (~{self.tokens} tokens, estimated)"
        calls = "" if not self.requests else f" in {self.requests} request{'s' * (self.requests != 1)}"
        refused = ""
        if self.refused:
            first, n = self.refused
            refused = f"; {n} would be refused ({first}{f', and {n - 1} more' if n > 1 else ''})"
        return (
            f"{self.dataset} with {self.fingerprint}: {self.cached} texts cached, "
            f"{self.to_send} would be sent{calls}{cost}{refused}"
        )


def _reached(fingerprint: str, encoder: Encoder) -> str:
    """An encoder as a plan names it: its fingerprint, and an API model's root, as it may be shown (a
    proxy or gateway given is where the texts go, and where a key is sent)."""
    root = getattr(encoder, "base_url", None)
    return f"{fingerprint} at {root}" if root else fingerprint


def plan_embedding(
    dataset: Dataset,
    encoder: Encoder,
    cache_dir: str | os.PathLike | None = None,
    query_encoder: Encoder | None = None,
    pair_texts: Sequence[str] | None = None,
) -> EmbeddingPlan:
    """How many of ``dataset``'s texts the store holds and what embedding the rest would cost: the
    texts :func:`embed_dataset` would embed (with ``query_encoder``, a cross-model run's too, and
    ``pair_texts`` by both models).

    Sends nothing. What the run would refuse before sending anything (an image for a model that
    embeds text only, :meth:`~search_adaptor.encoders.base.Encoder.check_items`) is refused here
    the same way, so that a dry run never counts (or prices) what no run can send.
    """
    if query_encoder is not None and query_encoder.fingerprint == encoder.fingerprint:
        query_encoder = None
    with naming_the_document(dataset):
        jobs = _jobs(dataset, encoder, query_encoder, pair_texts)[0]
    encoders = {enc.fingerprint: enc for enc, _, _ in jobs}
    # per store and kind, the distinct texts of the jobs planned so far: a job is sent in batches of its
    # own (so a job's last batch is a request of its own) and finds its predecessors' texts cached
    texts: dict[tuple[str, Kind], dict[Any, None]] = {}
    n_todo, counts, calls, refused = 0, [], [], []
    with contextlib.ExitStack() as stack:
        stores = {f: stack.enter_context(EmbeddingStore(e, cache_dir)) for f, e in encoders.items()}
        for encoder, kind, items in jobs:
            planned = texts.setdefault((encoder.fingerprint, kind), {})
            fresh = [item for item in dict.fromkeys(items) if item not in planned]
            planned.update(dict.fromkeys(fresh))
            with naming_the_document(dataset):
                todo = stores[encoder.fingerprint].missing(kind, fresh)
                encoder.check_items(todo)  # what the run would refuse first: refused here too
            later = encoder.refusals(todo)  # what it would refuse after sending the rest: counted apart
            refused += [f"{describe_item(todo[i])}: {reason}" for i, reason in later.items()]
            todo = [item for i, item in enumerate(todo) if i not in later]
            n_todo += len(todo)
            counts.append(encoder.request_tokens(todo, kind))
            calls.append(encoder.request_count(todo, kind))
    unique = sum(len(t) for t in texts.values())
    tokens = None if all(c is None for c in counts) else sum(c or 0 for c in counts)
    requests = None if all(c is None for c in calls) else sum(c or 0 for c in calls)
    return EmbeddingPlan(
        dataset.name,
        " and ".join(_reached(fingerprint, encoder) for fingerprint, encoder in encoders.items()),
        unique,
        unique - n_todo - len(refused),
        n_todo,
        tokens,
        requests,
        (refused[0], len(refused)) if refused else None,
    )


def _read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, matrix) from ``.npz`` (arrays ids, embeddings) or ``.parquet`` (columns id, embedding)."""
    if path.suffix == ".npz":
        return _read_npz(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise ValueError(
                f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:80]}); write it again"
            ) from None
        missing = {"id", "embedding"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; need id and embedding")
        refuse_nulls(table.column("id"), str(path), "id", "an id")
        ids = [str(i) for i in table.column("id").to_pylist()]
        try:
            return ids, np.asarray(table.column("embedding").to_pylist(), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: column 'embedding' must hold one list of numbers of one length per row"
            ) from None
    raise ValueError(f"{path}: unsupported format; use .npz (ids, embeddings) or .parquet (id, embedding)")


def _read_npz(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, matrix) of a ``numpy.savez`` archive; pickles (object arrays) are never loaded."""
    fix = "save ids= (strings) and embeddings= (a float matrix) with numpy.savez"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:  # ValueError: not numpy's at all
        raise ValueError(
            f"{path}: not a readable .npz file ({' '.join(str(exc).split())[:80]}); {fix}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive; {fix}")
    arrays = {}
    with archive as z:
        missing = {"ids", "embeddings"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(sorted(missing))}; {fix}")
        for name in ("ids", "embeddings"):
            try:
                arrays[name] = z[name]
            except ValueError:  # numpy refuses object arrays without allow_pickle
                raise ValueError(
                    f"{path}: array {name!r} holds Python objects (dtype object); {fix}"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                detail = " ".join(str(exc).split())[:80]
                raise ValueError(f"{path}: array {name!r} is damaged ({detail}); {fix}") from None
    ids, mat = arrays["ids"], arrays["embeddings"]
    if ids.ndim != 1 or ids.dtype.kind not in "UiuS":
        raise ValueError(f"{path}: array 'ids' must be a 1-D array of strings or integers; {fix}")
    if mat.dtype.kind not in "fiu":
        raise ValueError(f"{path}: array 'embeddings' has dtype {mat.dtype}, not numbers; {fix}")
    if ids.dtype.kind == "S":
        try:
            return [i.decode("utf-8") for i in ids.tolist()], mat
        except UnicodeDecodeError:
            raise ValueError(f"{path}: array 'ids' holds bytes that are not UTF-8; {fix}") from None
    return [str(i) for i in ids.tolist()], mat


def precomputed_file(folder: str | os.PathLike, stem: str) -> Path:
    """The file of ``--embeddings`` vectors, ``folder/{stem}.npz`` or ``.parquet``, that
    :func:`precomputed_vectors` reads, or a one-line error saying to put one there."""
    root = Path(folder)
    for ext in (".npz", ".parquet"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    raise FileNotFoundError(
        f"{root}: no {stem}.npz or {stem}.parquet; put your precomputed {stem} vectors there"
    )


def _read_rows(path: Path, noun: str, ids: list[str]) -> np.ndarray:
    """The unit vectors (:func:`unit_rows`) of ``ids`` in the file ``path``, in the order of ``ids``.

    Only the file's matrix and the result are ever whole in memory: the rows are gathered into the
    order of ``ids`` a chunk at a time, and the matrix is let go on return.
    """
    have_ids, mat = _read_vectors(path)
    if mat.ndim != 2 or len(have_ids) != len(mat):
        raise ValueError(
            f"{path}: {len(have_ids)} ids for an array of shape {mat.shape}; save one id per row"
        )
    pos: dict[str, int] = {}
    for n, i in enumerate(have_ids):
        if pos.setdefault(i, n) != n:
            raise ValueError(f"{path}: id {i!r} is on rows {pos[i]} and {n}; keep one vector per id")
    missing = [i for i in ids if i not in pos]
    if missing:
        raise ValueError(
            f"{path}: no vector for {noun} id "
            f"{missing[0]!r} ({len(missing)} missing); embed every id of the dataset"
        )
    if mat.shape[1] == 0:
        raise ValueError(f"{path}: the vectors have dimension 0; save one embedding per row")
    take = np.fromiter((pos[i] for i in ids), dtype=np.intp, count=len(ids))
    return unit_rows(mat, str(path), lambda n: f"vector of id {ids[n]!r}", take=take)


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read 1 MiB at a time: a corpus file may be as large as the memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def load_precomputed(dataset: Dataset, folder: str | os.PathLike, model: str | None = None) -> Embeddings:
    """Vectors the user brings: ``folder/queries.{npz,parquet}`` and ``folder/corpus.{npz,parquet}``.

    Every query and document of ``dataset`` must have a finite, non-zero vector of one common
    dimension; they come back as unit vectors (:func:`unit_rows`: a vector's length, however large or
    small, never changes a cosine score).
    The fingerprint is ``model`` when given (name the model that made the vectors, so a saved adapter
    can refuse others), otherwise a hash of the corpus file.
    """
    return precomputed_vectors(folder, list(dataset.doc_ids), list(dataset.queries), model)


def precomputed_vectors(
    folder: str | os.PathLike,
    doc_ids: list[str],
    query_ids: list[str] | None = None,
    model: str | None = None,
) -> Embeddings:
    """:func:`load_precomputed` of these ids; without ``query_ids`` (an index needs none) only
    ``folder/corpus.{npz,parquet}`` is read, and the queries are none."""
    start = time.perf_counter()
    root = Path(folder)
    out = {}
    for stem, noun, ids in (("queries", "query", query_ids), ("corpus", "document", doc_ids)):
        if ids is not None:
            path = precomputed_file(root, stem)
            out[stem] = (ids, _read_rows(path, noun, ids), path)
    dim = out["corpus"][1].shape[1]
    if "queries" not in out:
        out["queries"] = ([], np.zeros((0, dim), np.float32), None)
    elif out["queries"][1].shape[1] != dim:
        raise ValueError(
            f"{out['queries'][2]} holds {out['queries'][1].shape[1]}-d vectors but "
            f"{out['corpus'][2]} holds {dim}-d ones; use one model for both"
        )
    digest = _sha256(out["corpus"][2])[:12]
    name = model or f"precomputed:{digest}"
    info = {"fingerprint": f"precomputed:{name}", "provider": "precomputed", "model": name, "config": {}}
    return Embeddings(
        out["queries"][0],
        out["queries"][1],
        out["corpus"][0],
        out["corpus"][1],
        info,
        embed_s=time.perf_counter() - start,
    )
