"""Labelled retrieval data in BEIR layout: loading, validation and query splits.

A BEIR folder holds ``corpus.jsonl`` (or ``corpus.jsonl.gz``), ``queries.jsonl`` and
``qrels/<split>.tsv``. Everything is validated while it is read, because an adapter trained on
silently broken labels looks like a bad model rather than bad data: every problem raises a
:class:`DataError` whose one-line message names the file, the line, the field and the fix.

``beir:NAME`` sources are downloaded once from the public BEIR mirror, checked against the md5
published in BEIR's README, extracted atomically and reused offline afterwards.

Only the standard library is imported, so importing this module is cheap.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
import re
import shutil
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_adaptor.files import Staged, default_cache_dir, json_error
from search_adaptor.images import ImageRef, Item, lone_surrogate

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BEIR_MD5",
    "BLANK_QUERY_REASON",
    "DEFAULT_BEIR_URL",
    "ENV_BEIR_URL",
    "MAX_VALIDATION_QUERIES",
    "DataError",
    "Dataset",
    "is_blank",
    "kfold",
    "labelled_queries",
    "load_beir",
    "validation_split",
]

log = logging.getLogger(__name__)

DEFAULT_BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
ENV_BEIR_URL = "SEARCH_ADAPTOR_BEIR_URL"

# md5 of each public BEIR zip, as published in the "Available Datasets" table of BEIR's README
# (github.com/beir-cellar/beir, README.md at commit 20b76b0d7715a2d91f92638b52cee28104979df0).
BEIR_MD5: dict[str, str] = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}

#: Why a query whose text is blank (:func:`is_blank`) cannot be labelled; the reason
#: ``index.BLANK_QUERY`` gives for refusing one in a search.
BLANK_QUERY_REASON = "a blank query ranks documents by nothing in particular"
#: Unicode categories of characters that say nothing alone: spaces and separators, control characters
#: (NUL, BEL), format characters (zero-width space, soft hyphen, byte-order mark), combining marks
#: with no letter to mark (a lone accent, a variation selector), private-use and unassigned code points.
_UNSEEN = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me", "Co", "Cn"})


def is_blank(text: str) -> bool:
    """Whether ``text`` has no character that says anything alone (:data:`_UNSEEN`): the one rule for
    a blank query, wherever one is refused. Whitespace alone is not enough: "\u200b", "\x00" or a
    lone "\ufe0f" passed, and a model embeds them as it embeds "" (MiniLM: cosine 1.0), ranking
    documents by nothing. A letter, digit, symbol or punctuation mark, or a spacing vowel sign, is
    enough."""
    return all(unicodedata.category(c) in _UNSEEN for c in text)


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LAYOUT_HINT = "a BEIR folder holds corpus.jsonl[.gz], queries.jsonl and qrels/<split>.tsv"
_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DataError(ValueError):
    """Bad input data; the message is always a single line naming the file, line, field and fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


def _quote(value: str) -> str:
    """An id as it should appear in a one-line message: double-quoted, control characters escaped."""
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Dataset:
    """A retrieval dataset: documents, queries and graded relevance judgements per split.

    Attributes
    ----------
    name : str
        Short name (the folder name, or ``NAME`` of ``beir:NAME``).
    path : Path
        The folder the data was read from.
    doc_ids : list of str
        Document ids in file order.
    doc_texts : list of str or ImageRef
        The text embedded for each document, aligned with ``doc_ids``:
        ``(title + " " + text).strip()``, exactly as BEIR builds it, so embedding caches keyed on
        the text are shared with BEIR-based tooling; an :class:`~search_adaptor.images.ImageRef`
        for a row with ``"image"`` (see :func:`record`).
    queries : dict of str to str
        Every query in ``queries.jsonl``, labelled or not.
    qrels : dict
        ``split -> query id -> doc id -> grade``, every judgement as given, including grade 0
        (judged non-relevant) and queries that have no relevant document.
    """

    name: str
    path: Path
    doc_ids: list[str]
    doc_texts: list[Item]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]

    @property
    def splits(self) -> list[str]:
        """Names of the qrels splits that were found (sorted), e.g. ``["test", "train"]``."""
        return sorted(self.qrels)

    def split(self, name: str) -> dict[str, dict[str, int]]:
        """Judgements of one split, restricted to queries with at least one relevant (grade > 0) doc.

        Queries whose judgements are all non-positive cannot be scored by rank metrics nor
        trained on, so they are left out; their grade-0 judgements are kept for the others.

        Raises
        ------
        DataError
            When the split file does not exist or no query in it has a relevant document.
        """
        file = self.path / "qrels" / f"{name}.tsv"
        available = ", ".join(self.splits) or "none"
        if name not in self.qrels:
            raise DataError(f"{file}: split {name!r} not found (available splits: {available})")
        judged = {qid: dict(self.qrels[name][qid]) for qid in labelled_queries(self.qrels[name])}
        if not judged:
            raise DataError(
                f"{file}: split {name!r} has no query with a relevant document (score > 0); "
                f"add positive judgements or use another split (available splits: {available})"
            )
        return judged


def load_beir(source: str | Path, cache_dir: Path | None = None, *, md5: str | None = None) -> Dataset:
    """Load a dataset in BEIR layout from a folder, or from the public BEIR mirror.

    Parameters
    ----------
    source : str or Path
        A folder containing ``corpus.jsonl`` (or ``corpus.jsonl.gz``), ``queries.jsonl`` and
        ``qrels/<split>.tsv``; or ``"beir:NAME"`` (e.g. ``"beir:scifact"``) to download
        ``{base}/NAME.zip``, where ``base`` is ``$SEARCH_ADAPTOR_BEIR_URL`` or
        :data:`DEFAULT_BEIR_URL`. The download is kept under ``cache_dir`` as ``NAME.zip`` and
        ``NAME/``; later calls use ``NAME/`` without touching the network.
    cache_dir : Path, optional
        Where ``beir:`` downloads live; defaults to ``default_cache_dir() / "datasets"`` from
        :mod:`search_adaptor.store`.
    md5 : str, optional
        Expected md5 of ``NAME.zip``; overrides :data:`BEIR_MD5` and is required for names not in
        it (a mirror, or a dataset added after this table). Only valid with ``beir:`` sources; it is
        checked when the zip is downloaded, an already extracted ``NAME/`` is used as is.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Missing or malformed files, unknown ids in qrels, checksum mismatch, no network.
    """
    if isinstance(source, str) and source.startswith("beir:"):
        folder = _fetch_beir(source[len("beir:") :], cache_dir, md5)
        return _load_folder(folder, name=folder.name)
    if md5 is not None:
        raise ValueError(f"md5= only applies to beir:NAME sources, not to the folder {source}")
    folder = Path(source).expanduser()  # "~/data", quoted or from Python, as a shell would read it
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "no such folder"
        raise DataError(f"{folder}: {what} (pass a BEIR folder or beir:NAME; {_LAYOUT_HINT})")
    return _load_folder(folder, name=folder.resolve().name)


# --------------------------------------------------------------------------- reading a folder


def _load_folder(folder: Path, name: str) -> Dataset:
    """Read and cross-check the three parts of a BEIR folder."""
    doc_ids, doc_texts = _read_corpus(_find_jsonl(folder, "corpus"))
    queries_file = _find_jsonl(folder, "queries")
    queries, blank = _read_queries(queries_file)
    known_docs = set(doc_ids)
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    qrels_dir = folder / "qrels"
    if qrels_dir.is_dir():
        for file in sorted(qrels_dir.glob("*.tsv")):
            qrels[file.stem] = _read_qrels(file, queries, known_docs)
            _refuse_blank_labelled(queries_file, blank, file, qrels[file.stem])
    return Dataset(name=name, path=folder, doc_ids=doc_ids, doc_texts=doc_texts, queries=queries, qrels=qrels)


def _find_jsonl(folder: Path, stem: str) -> Path:
    """``stem.jsonl`` or ``stem.jsonl.gz`` in ``folder``; exactly one of them must exist."""
    plain, packed = folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz"
    if plain.is_file() and packed.is_file():
        raise DataError(f"{folder}: both {plain.name} and {packed.name} exist (keep only one of them)")
    if plain.is_file():
        return plain
    if packed.is_file():
        return packed
    raise DataError(f"{plain}: file not found (nor {packed.name}; {_LAYOUT_HINT})")


def _lines(path: Path, *, keep_start: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` of every non-blank line, stripped; a UTF-8 BOM and CRLF are tolerated.

    With ``keep_start`` only the end of each line is stripped: a qrels line starts with a query id,
    which is read as written (see :func:`_read_qrels`). Lines are read as bytes and decoded one at a
    time so that a decoding error is reported at its exact line, and a gzip file is streamed rather
    than decompressed in memory.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{path}:{lineno}: not valid UTF-8 at byte {err.start} (save the file as UTF-8)"
                    ) from None
                line = text.rstrip() if keep_start else text.strip()
                if line:
                    yield lineno, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}:{lineno + 1}: not a valid gzip file ({err}); re-create it or decompress it to "
            f"{path.name.removesuffix('.gz')}"
        ) from None


def _records(path: Path, what: str) -> Iterator[tuple[int, str, Item]]:
    """Yield ``(line number, id, text)`` for each JSON line, checked by :func:`record`.

    ``what`` names the kind of record ("corpus", "query") in messages; ids must be unique.
    """
    seen: set[str] = set()
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: not valid JSON ({json_error(err, line=False)}); each line must be one JSON object"
            ) from None
        rid, text = record(obj, where, what, folder=path.parent)
        _check_unique(rid, seen, where)
        yield lineno, rid, text


def record(
    obj: Any, where: str, what: str = "corpus", folder: str | os.PathLike | None = None
) -> tuple[str, Item]:
    """``(id, text to embed)`` of one BEIR record, every field checked; the one rule for every format.

    A record is an object with ``"_id"`` (a non-empty string or integer) and ``"text"`` (a string);
    a corpus record may have ``"title"`` (a string or null), and its text to embed is then
    ``(title + " " + text).strip()``, exactly as BEIR builds it, so embedding caches keyed on the
    text are shared with BEIR-based tooling. ``where`` (file and line or row) starts every message.

    A corpus record with ``"image"`` (a path relative to ``folder``, the dataset folder, or an
    ``http(s)`` URL) is an image document: what it embeds is the image
    (:class:`~search_adaptor.images.ImageRef`), its ``"text"`` and ``"title"`` are optional and not
    embedded. A path must stay inside ``folder``; the file is read only when it is embedded (vectors
    given precomputed need no image files).
    """
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: expected a JSON object, got {type(obj).__name__} "
            f'(each {what} line is {{"_id": ..., "text": ...}})'
        )
    image = what == "corpus" and obj.get("image") is not None
    for field in ("_id", "text"):
        if field not in obj and not (image and field == "text"):
            needs = (
                '"_id" and "text", or "image" for an image document'
                if what == "corpus"
                else '"_id" and "text"'
            )
            raise DataError(f'{where}: missing field "{field}" (every {what} line needs {needs})')
    raw_id = obj["_id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
        raise DataError(f'{where}: field "_id" must be a non-empty string or integer, got {_shown(raw_id)}')
    for field in ("_id", "text", "title"):  # JSON may escape half a surrogate pair: no encoder takes it
        value = obj.get(field)
        at = lone_surrogate(value) if isinstance(value, str) else None
        if at is not None:
            raise DataError(
                f'{where}: field "{field}" is not valid Unicode (a lone surrogate {value[at]!r} at '
                f"character {at}, an escape without its pair); fix or drop it"
            )
    if image:
        return str(raw_id), _image(obj, where, folder)
    text = obj["text"]
    if not isinstance(text, str):
        raise DataError(
            f'{where}: field "text" must be a string, got {_shown(text)[:40]} (use "" for an empty text)'
        )
    if what != "corpus":
        return str(raw_id), text
    title = obj.get("title")
    if title is None:
        title = ""
    elif not isinstance(title, str):
        raise DataError(f'{where}: field "title" must be a string or null, got {_shown(title)[:40]}')
    return str(raw_id), (title + " " + text).strip()


def _image(obj: dict[str, Any], where: str, folder: str | os.PathLike | None) -> ImageRef:
    """The image of a corpus record with ``"image"``; its optional text and title must still be strings."""
    for field in ("text", "title"):
        if obj.get(field) is not None and not isinstance(obj[field], str):
            raise DataError(
                f'{where}: field "{field}" must be a string or null, got {_shown(obj[field])[:40]}'
            )
    try:
        return ImageRef.of(obj["image"], folder)
    except ValueError as err:
        raise DataError(f'{where}: field "image" {err}') from None


def _check_unique(rid: str, seen: set[str], where: str) -> None:
    if rid in seen:
        raise DataError(
            f'{where}: duplicate "_id" {_quote(rid)} (already used on an earlier line; ids must be unique)'
        )
    seen.add(rid)


def _corpus_rows(path: Path) -> Iterator[tuple[str, Item]]:
    """``(doc id, text to embed)`` per line of a JSON Lines corpus."""
    for _, did, text in _records(path, "corpus"):
        yield did, text


def _no_documents(path: Path) -> DataError:
    if path.suffix == ".parquet":
        return DataError(
            f'{path}: no documents (the file has no rows; add one per document, "_id" and "text")'
        )
    return DataError(
        f'{path}: no documents (the file is empty; add one JSON line per document with "_id", "text")'
    )


def _read_corpus(path: Path) -> tuple[list[str], list[Item]]:
    """Document ids and the texts to embed."""
    doc_ids: list[str] = []
    doc_texts: list[Item] = []
    for did, text in _corpus_rows(path):
        doc_ids.append(did)
        doc_texts.append(text)
    if not doc_ids:
        raise _no_documents(path)
    return doc_ids, doc_texts


def _shown(value: Any) -> str:
    """A field's value as a message shows it: as JSON writes it, or, for a value JSON has no form
    for (bytes from a Parquet ``binary`` column), its type."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return f"a value of type {type(value).__name__}"


def corpus_file(source: str | Path) -> Path:
    """The corpus a BEIR folder holds (``corpus.jsonl[.gz]`` or ``corpus.parquet``), or the file given.
    A folder holding both is refused: ``fit`` and ``evaluate`` read the JSON lines, and an index of the
    Parquet file would serve another corpus than they scored."""
    path = Path(source)
    if path.is_dir():
        parquet = path / "corpus.parquet"
        if not parquet.is_file():
            return _find_jsonl(path, "corpus")
        others = [p.name for p in (path / "corpus.jsonl", path / "corpus.jsonl.gz") if p.is_file()]
        if others:
            raise DataError(
                f"{path}: both {parquet.name} and {others[0]} exist, and fit reads {others[0]}: keep "
                "only one of them, or give the file to index"
            )
        return parquet
    if not path.is_file():
        raise DataError(f"{path}: not found (give a BEIR folder or its corpus.jsonl[.gz] / corpus.parquet)")
    return path


def iter_corpus(path: str | Path, rows: int) -> Iterator[tuple[list[str], list[Item]]]:
    """Stream ``(doc ids, texts)`` chunks of at most ``rows`` documents, checked as :func:`load_beir` does.

    Parquet corpora need an ``_id`` (or ``id``) and a ``text`` column (or an ``image`` column); ``title``
    is optional.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        chunks: Iterator[tuple[list[str], list[Item]]] = _parquet_corpus(path, rows)
    else:
        chunks = _batched(_corpus_rows(path), rows)
    empty = True
    for chunk in chunks:
        empty = False
        yield chunk
    if empty:
        raise _no_documents(path)


def _batched(pairs: Iterator[tuple[str, Item]], rows: int) -> Iterator[tuple[list[str], list[Item]]]:
    ids: list[str] = []
    texts: list[Item] = []
    for did, text in pairs:
        ids.append(did)
        texts.append(text)
        if len(ids) == rows:
            yield ids, texts
            ids, texts = [], []
    if ids:
        yield ids, texts


_READ_BUFFER = 1 << 20  # bytes a Parquet column is read ahead by (a stream, not a whole column chunk)


def parquet_file(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile`` of ``path``, a damaged file refused in one line naming it."""
    import pyarrow.parquet as pq

    try:
        # No read-ahead, and a column chunk read as a buffered stream: without buffer_size pyarrow
        # loads each row group's column chunk whole, and a file written with pyarrow's defaults is one
        # row group of up to 1Mi rows; so memory follows the batch, not the row group.
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _parquet_corpus(path: Path, rows: int) -> Iterator[tuple[list[str], list[Item]]]:
    """Chunks of a Parquet corpus (``_id`` or ``id``, ``text``, optional ``title`` and ``image``
    columns), every row checked by :func:`record` as a JSON line would be."""
    reader = parquet_file(path)
    names = reader.schema_arrow.names
    id_col = "_id" if "_id" in names else "id"
    for need in (id_col, *([] if "image" in names else ["text"])):
        if need not in names:
            raise DataError(f'{path}: no column "{need}" (a Parquet corpus needs "_id" and "text" columns)')
    columns = [id_col, *[c for c in ("text", "title", "image") if c in names]]
    seen: set[str] = set()
    start = 0
    for batch in reader.iter_batches(batch_size=rows, columns=columns):
        ids, texts = records_of_batch(batch, f"{path}", start, seen, folder=path.parent)
        start += batch.num_rows
        yield ids, texts


def records_of_batch(
    batch: Any, where: str, start: int, seen: set[str], folder: str | os.PathLike | None = None
) -> tuple[list[str], list[Item]]:
    """``(ids, texts)`` of an Arrow batch of corpus rows (``_id`` or ``id``, ``text``, ``title``,
    ``image``), each row checked by :func:`record` (images relative to ``folder``) and ids kept
    unique across batches through ``seen``."""
    rows = batch.to_pylist()
    ids, texts = [], []
    for i, row in enumerate(rows):
        if "_id" not in row and "id" in row:
            row["_id"] = row.pop("id")
        at = f"{where} (row {start + i})"
        did, text = record(row, at, folder=folder)
        _check_unique(did, seen, at)
        ids.append(did)
        texts.append(text)
    return ids, texts


def read_texts(source: str | os.PathLike) -> list[str]:
    """Texts to pair across two models (``fit --pairs``), each once, in file order.

    A JSON-lines file (``.jsonl`` or ``.jsonl.gz``) of query records, ``{"_id": ..., "text": ...}``
    as in ``queries.jsonl`` (a query log, say), or any other file as plain text, one text per line.
    Blank lines and blank texts are skipped.
    """
    path = Path(source)
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise DataError(
            f'{path}: {what} (give a .jsonl of {{"_id": ..., "text": ...}} lines, or a text file '
            "with one text per line)"
        )
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        texts = [str(text) for _, _, text in _records(path, "query")]
    else:
        lines = list(_lines(path))
        _refuse_records_as_lines(path, lines)
        texts = [line for _, line in lines]
    kept = list(dict.fromkeys(t for t in texts if t.strip()))
    if not kept:
        raise DataError(f'{path}: no texts (one text per line, or one JSON object per line with a "text")')
    return kept


def _refuse_records_as_lines(path: Path, lines: Sequence[tuple[int, str]]) -> None:
    """Refuse a plain-text file whose first text is a query record (``{"_id": ..., "text": ...}``):
    a query log saved under another name would be embedded as raw JSON, every text of it."""
    lineno, first = next(((n, line) for n, line in lines if line.strip()), (0, ""))
    try:
        record = json.loads(first) if first.lstrip().startswith("{") else None
    except ValueError:
        return
    if isinstance(record, dict) and "text" in record:
        raise DataError(
            f'{path}:{lineno}: a JSON object with a "text", in a file read as plain text (one text per '
            "line) for its name: rename it to .jsonl to read its records' texts"
        )


#: Where a sentence ends: after ., ! or ? and a space, or after a CJK full stop, ! or ? (no space).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])")
#: Sentences kept as pairs, in bytes of UTF-8 (about 20-400 Latin letters, 7-133 CJK characters):
#: long enough to say something (an abbreviation, "et al.", splits off short pieces), short enough to
#: read like a query (what was measured: BENCHMARKS.md, cross-model).
SENTENCE_BYTES = (20, 400)


def corpus_sentences(dataset: Dataset) -> list[str]:
    """The sentences of the corpus's text documents, each once (``fit --sentence-pairs``).

    A map between two models learnt on whole documents is applied to queries, which are short: the
    documents' sentences, embedded by both models, are texts of a query's length from the same
    domain, with no label needed. A document that is one sentence already is a pair, and is left out.
    """
    lo, hi = SENTENCE_BYTES
    whole = {text for text in dataset.doc_texts if isinstance(text, str)}
    kept = (
        sentence.strip()
        for text in dataset.doc_texts
        if isinstance(text, str)
        for sentence in _SENTENCE_END.split(text)
    )
    return list(dict.fromkeys(t for t in kept if lo <= len(t.encode()) <= hi and t not in whole))


def _read_queries(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Query id to text, for every query in the file (labelled or not), and the line of each query
    whose text is blank (:func:`is_blank`), which may stay only while it is not labelled."""
    queries: dict[str, str] = {}
    blank: dict[str, int] = {}
    for lineno, qid, text in _records(path, "query"):
        queries[qid] = str(text)
        if is_blank(queries[qid]):
            blank[qid] = lineno
    if not queries:
        raise DataError(
            f'{path}: no queries (the file is empty; add one JSON line per query with "_id", "text")'
        )
    return queries, blank


def _refuse_blank_labelled(
    queries_file: Path, blank: Mapping[str, int], qrels_file: Path, judged: Mapping[str, Mapping[str, int]]
) -> None:
    """Refuse, at its line of ``queries_file``, the first blank query that ``judged`` labels.

    A labelled query is embedded, trained on and scored, and a blank one would be so by nothing in
    particular, as ``search`` refuses it; a blank query nobody labels is harmless and stays.
    """
    labelled = labelled_queries({qid: judged[qid] for qid in blank if qid in judged})
    if labelled:
        qid = min(labelled, key=blank.__getitem__)
        raise DataError(
            f'{queries_file}:{blank[qid]}: field "text" of query {_quote(qid)} is blank, but '
            f"{qrels_file} gives it a relevant document, and {BLANK_QUERY_REASON} "
            "(give the query a text or drop its qrels lines)"
        )


def _read_qrels(path: Path, queries: dict[str, str], docs: set[str]) -> dict[str, dict[str, int]]:
    """One qrels split: ``query id -> doc id -> grade``, every line kept, ids checked.

    A line is BEIR's ``query-id<TAB>corpus-id<TAB>score`` or TREC's ``query-id iteration corpus-id
    score`` (four columns split by tabs or spaces, as pytrec_eval and ir_measures read qrels; the
    iteration, an integer or ``Q0``, is ignored). The first non-blank line is the header when its
    score column is not a number and neither of its ids is in the dataset (BEIR files start with
    ``query-id<TAB>corpus-id<TAB>score``), so a first row of data with a mistyped score is
    reported, never dropped; a repeated pair must repeat the same grade.

    Ids are matched exactly, as ``record`` reads them from the JSON lines: between tabs an id is
    read as written, spaces around it included, as BEIR's loader (a tab-delimited ``csv.reader``)
    and a TSV writer have it; a TREC line split by spaces cannot hold them. An id that is missing
    but matches a known one up to surrounding whitespace is reported with both spellings.
    """
    qrels: dict[str, dict[str, int]] = {}
    for index, (lineno, line) in enumerate(_lines(path, keep_start=True)):
        where = f"{path}:{lineno}"
        cols = line.split("\t")
        trec = line.split() if len(cols) == 1 else cols  # TREC: split by spaces, or by tabs
        if len(trec) == 4 and _is_iteration(trec[1].strip()):
            cols = [trec[0], trec[2], trec[3]]
        if len(cols) != 3:
            raise DataError(
                f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(cols)}; "
                "or TREC's 4 columns (query-id 0 corpus-id score)"
            )
        qid, did, score = cols[0], cols[1], cols[2].strip()
        try:
            grade = int(score)
        except ValueError:
            if index == 0 and not _is_number(score) and qid not in queries and did not in docs:
                continue  # the header
            raise DataError(
                f"{where}: score {_quote(score)} is not an integer "
                "(grades are integers; 0 = judged non-relevant)"
            ) from None
        if qid not in queries:
            raise _unknown_id(where, "query-id", qid, queries, "queries.jsonl", "add the query")
        if did not in docs:
            raise _unknown_id(where, "corpus-id", did, docs, "the corpus", "add the document")
        judged = qrels.setdefault(qid, {})
        if judged.setdefault(did, grade) != grade:
            raise DataError(
                f"{where}: query-id {_quote(qid)} corpus-id {_quote(did)} is graded {grade} here but "
                f"{judged[did]} on an earlier line (keep one grade per pair)"
            )
    return qrels


def _unknown_id(where: str, column: str, rid: str, known: Iterable[str], file: str, fix: str) -> DataError:
    """The error for a qrels ``column`` naming ``rid``, an id not among ``known`` (those of ``file``).

    An id written with spaces around it in one file and without in the other is the likely slip (a
    hand-edited TSV, a JSON id with a stray space): the message then gives both spellings. So is an
    id whose accents are composed in one file and decomposed in the other (NFC and NFD, as macOS
    file names and some editors write them): printed as they are, the two look identical, so the
    message gives both with their code points escaped.
    """
    bare = rid.strip()
    near = next((k for k in known if k.strip() == bare), None) if bare else None
    if near is not None:
        return DataError(
            f"{where}: {column} {_quote(rid)} is not in {file}, which has {_quote(near)}, the same id but "
            "for the whitespace around it; ids are matched exactly, spaces included (write the id the "
            "same in both files, in qrels between tabs)"
        )
    composed = unicodedata.normalize("NFC", rid)
    near = next((k for k in known if unicodedata.normalize("NFC", k) == composed), None)
    if near is not None:
        return DataError(
            f"{where}: {column} {_quote(rid)} is not in {file}, which has the same id in another Unicode "
            f"normalization: {_forms(rid)} here, {_forms(near)} there; ids are matched code point by "
            "code point (write the id the same in both files, e.g. both NFC)"
        )
    return DataError(f"{where}: {column} {_quote(rid)} is not in {file} ({fix} or drop the line)")


def _forms(rid: str) -> str:
    """``rid`` with its non-ASCII code points escaped (``"e\\u0301"``), and which normal form it is
    in: two spellings of one id that print alike, told apart."""
    form = next((f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, rid)), "neither NFC nor NFD")
    return f"{json.dumps(rid)} ({form})"


def refuse_nulls(column: Any, where: str, name: str, needs: str) -> None:
    """Refuse, naming the first, a null row of the Arrow ``column`` (``name``): every row ``needs`` a
    value (an id, a vector), and a null must not be read as the id ``'None'`` or an empty vector."""
    if column.null_count:
        row = column.is_null().to_pylist().index(True)  # the error path only: no numpy import here
        raise DataError(f"{where}: row {row} of column {name!r} is null; every row needs {needs}")


def _is_iteration(text: str) -> bool:
    """Whether ``text`` is a TREC qrels line's second column: an integer (usually 0) or ``Q0``."""
    return text == "Q0" or text.lstrip("-").isdigit()


def _is_number(text: str) -> bool:
    """Whether ``text`` parses as a float (a mistyped grade like ``1.0``, not a header word)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- query splits


def _shuffled(query_ids: Sequence[str], seed: int) -> list[str]:
    """Ids sorted then shuffled with ``seed``: the result does not depend on the input order."""
    ids = sorted(query_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("query_ids contains duplicates; each query must appear once")
    random.Random(seed).shuffle(ids)
    return ids


def kfold(query_ids: Sequence[str], k: int = 5, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Deterministic shuffled k-fold split of queries, for cross-validation on test-only datasets.

    Parameters
    ----------
    query_ids : sequence of str
        Distinct query ids; their order does not matter.
    k : int
        Number of folds, ``2 <= k <= len(query_ids)``.
    seed : int
        Shuffle seed; the same ids, ``k`` and seed always give the same folds.

    Returns
    -------
    list of (train_ids, test_ids)
        ``k`` pairs; every query is in exactly one test fold, fold sizes differ by at most one,
        and each ``train_ids`` is the complement of its ``test_ids``.
    """
    n = len(query_ids)
    if not 2 <= k <= n:
        raise ValueError(f"k must be between 2 and the number of queries ({n}), got {k}")
    ids = _shuffled(query_ids, seed)
    bounds = [n * i // k for i in range(k + 1)]
    return [(ids[: bounds[i]] + ids[bounds[i + 1] :], ids[bounds[i] : bounds[i + 1]]) for i in range(k)]


def labelled_queries(qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Queries with at least one relevant document (grade > 0), sorted: the queries that can be
    trained on and scored (a query whose judgements are all 0 has no nDCG)."""
    return sorted(q for q, docs in qrels.items() if any(g > 0 for g in docs.values()))


#: Most queries a drawn validation split holds (:func:`validation_split`). Each is searched against
#: the whole corpus at every evaluation of every candidate: 20% of 100,000 labelled queries against
#: 50,000 documents took 13-15 s an evaluation, up to 19 minutes a candidate, while 5,000 queries
#: already give a mean nDCG@10 a standard error of about 0.005 (per-query values spread about 0.35).
#: The queries beyond it train instead.
MAX_VALIDATION_QUERIES = 5000


def too_few_to_validate(n: int, where: str = "qrels", fix: str = "") -> DataError:
    """The refusal of ``n`` (fewer than 2) labelled queries to train and validate on: ``where`` they
    came from (a qrels file, where there is one), and ``fix``, what would give more."""
    return DataError(
        f"{where}: need at least 2 labelled queries (with a document of grade >= 1) to train and validate; "
        f"got {n}{fix}"
    )


def validation_split(
    labelled: Sequence[str], val_fraction: float, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """(train, validation) query ids: the one rule every model and baseline early-stops and selects by.

    ``labelled`` (sorted, at least 2 ids) is permuted with ``rng``; the first
    ``round(val_fraction * n)`` ids of the permutation validate: at least 1, at most ``n - 1`` and
    at most :data:`MAX_VALIDATION_QUERIES` (the rest of a larger share trains). Both lists come
    back sorted. ``rng`` is the caller's generator, so a training run that draws its split and then
    its batches from one seed stays reproducible.
    """
    n = len(labelled)
    if n < 2:
        raise too_few_to_validate(n)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n_val = min(max(1, round(val_fraction * n)), n - 1, MAX_VALIDATION_QUERIES)
    chosen = {labelled[i] for i in rng.permutation(n)[:n_val]}
    return [q for q in labelled if q not in chosen], sorted(chosen)


# --------------------------------------------------------------------------- beir:NAME downloads


def _fetch_beir(name: str, cache_dir: Path | None, md5: str | None) -> Path:
    """The extracted folder of ``NAME.zip``, downloading and extracting it on first use."""
    if not _NAME_RE.fullmatch(name):
        raise DataError(
            f"beir:{name}: invalid dataset name (use letters, digits, '.', '_', '-', e.g. beir:scifact)"
        )
    expected = (md5 or BEIR_MD5.get(name, "")).lower()
    if cache_dir is None:
        cache_dir = default_cache_dir() / "datasets"
    cache_dir = Path(cache_dir)
    folder = cache_dir / name
    if folder.is_dir():
        return folder
    if not expected:
        raise DataError(
            f"beir:{name}: no known md5 for {name}.zip (known: {', '.join(sorted(BEIR_MD5))}); "
            f"give a local folder of it (in Python, load_beir('beir:{name}', md5=...) downloads it too)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    zip_path = cache_dir / f"{name}.zip"
    if not (zip_path.is_file() and _md5(zip_path) == expected):
        base = os.environ.get(ENV_BEIR_URL) or DEFAULT_BEIR_URL
        _download(f"{base.rstrip('/')}/{name}.zip", zip_path, expected)
    _extract(zip_path, folder)
    return folder


def _md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, expected_md5: str) -> None:
    """Stream ``url`` into a temp file next to ``dest``, check its md5, then move it into place.

    The temp file lives in the destination folder so that :func:`os.replace` is atomic: ``dest``
    either does not exist or is the complete, verified zip. The HTTP modules are imported here,
    keeping them (and ssl) out of ``import search_adaptor.data``.
    """
    import http.client
    import urllib.error
    import urllib.request

    log.info("downloading %s -> %s", url, dest)
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        raise DataError(
            f"{url}: HTTP {err.code} {err.reason} (check the dataset name, set {ENV_BEIR_URL} to a mirror, "
            f"or pass a local BEIR folder)"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        raise _unreachable(url, err) from None
    with Staged(dest) as staged, response, open(staged.path, "wb") as out:
        digest = hashlib.md5(usedforsecurity=False)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                raise _unreachable(url, err) from None
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
        got = digest.hexdigest()
        if got != expected_md5:
            raise DataError(
                f"{dest}: md5 mismatch for {url}: expected {expected_md5}, got {got}; the partial file was "
                f"removed (retry, or pass md5= if the published zip has changed)"
            )


def _unreachable(url: str, err: Exception) -> DataError:
    """The error for a download that could not start or was cut off: most often, no network."""
    reason = getattr(err, "reason", None) or err
    return DataError(
        f"{url}: download failed ({reason}); this machine seems to be offline or the host is unreachable "
        f"- pass a local BEIR folder instead of beir:NAME"
    )


def _extract(zip_path: Path, folder: Path) -> None:
    """Extract ``zip_path`` into ``folder`` atomically (staged, then one rename).

    BEIR zips hold a single top folder (``scifact/corpus.jsonl``, ...); a zip with the files at its
    root is accepted too.
    """
    with Staged(folder, folder=True) as staged:
        tmp = staged.path / ".zip"
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(tmp)
        except zipfile.BadZipFile as err:
            zip_path.unlink(missing_ok=True)
            raise DataError(
                f"{zip_path}: not a valid zip file ({err}); it was removed, retry the download"
            ) from None
        entries = [p for p in tmp.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        if (tmp / folder.name).is_dir():
            root = tmp / folder.name
        elif len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            root = tmp
        for item in list(root.iterdir()):
            os.replace(item, staged.path / item.name)
        shutil.rmtree(tmp)  # what the zip held beside its root folder (__MACOSX, dotfiles)
