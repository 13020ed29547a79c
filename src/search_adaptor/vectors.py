"""Vector files: ``.npy`` matrices and Parquet tables of (id, vector), read and written in chunks.

A ``.npy`` is read and written sequentially, never memory-mapped whole; Parquet has an id column
and a vector column (list or fixed-size list of floats), decoded one row group at a time; a folder
of ``*.parquet`` shards, or of ``*.npy`` matrices, reads as one table in file-name order. Outputs are
staged and renamed into place (:class:`~search_adaptor.files.Staged`), so a killed job leaves the
previous output, never half of one.

Every output records what wrote it (:func:`written_by`): a shard folder in ``_manifest.json``, a
Parquet file in its schema metadata (so each shard carries it too), a ``.npy``, whose format has no
room for it, in ``OUT.npy.json`` beside it. That is how adapted vectors are told from base ones, and
how an existing output is told from a file of the user's that must not be overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.data import DataError, parquet_file, refuse_nulls
from search_adaptor.files import Staged, finish_output, read_json, sampled_checksum, write_text_atomic

ROWS = 65536  # rows per chunk (local) and per Parquet shard: ~100 MB of 384-d float32
SHARDS_MANIFEST = "_manifest.json"
SHARD = "part-{:05d}.parquet"  # a shard folder's numbered files
#: what a shard folder holds: its shards (as a pattern) and manifest; anything else is the user's
SHARDS_PARTS = ("part-*.parquet", SHARDS_MANIFEST)
_ROW_GROUP = 8192  # Parquet row group: what a reader decodes at once (12 MB at 384-d), whatever the shard
ID, VECTOR = "id", "vector"
#: Parquet schema metadata key under which :class:`VectorWriter` records what it wrote (JSON)
MARKER = b"search-adaptor"
_REWRITE = "make it again with the search-adaptor command that wrote it"


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
    """``(ids, float matrix)`` from an Arrow table; ``where`` names the source in errors.

    Floats are kept as stored: a float64 value beyond float32's range must reach the adapter, whose
    one rule (:func:`~search_adaptor.model.float32_rows`) casts rows, not be made inf here."""
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
    refuse_nulls(col, where, vector_column, "a vector")
    n = len(col)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if n else np.zeros(0)
    if n and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(
            f"{where}: row {row} of column {vector_column!r} has {lengths[row]} values, row 0 has "
            f"{lengths[0]}; all vectors must have one dimension"
        )
    dim = int(lengths[0]) if n else 0
    values = col.flatten().to_numpy(zero_copy_only=False)
    if values.dtype.kind != "f":  # integers (or booleans): float64 holds them exactly
        values = values.astype(np.float64)
    vectors = values.reshape(n, dim)  # as stored: the adapter casts (model.float32_rows), not here
    id_col = table.column(id_column)
    if not (pa.types.is_string(id_col.type) or pa.types.is_large_string(id_col.type)) and not (
        pa.types.is_integer(id_col.type) or pa.types.is_dictionary(id_col.type)
    ):  # a list, a float or a struct written as text would be an id no one can look up
        raise DataError(
            f"{where}: column {id_column!r} is {id_col.type}, not strings or integers; name the id column "
            "with --id-column"
        )
    refuse_nulls(id_col, where, id_column, "an id")
    ids = [str(v) for v in id_col.to_pylist()]
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
    """The files a vector source stands for: one ``.npy``/``.parquet`` file, or a folder's ``*.parquet``
    or ``*.npy`` files (one kind: ``.npy`` rows have no ids to go beside Parquet's)."""
    src = Path(path)
    if src.is_dir():
        files = sorted(
            p
            for p in src.iterdir()
            if p.suffix.lower() in (".npy", ".parquet") and not p.name.startswith((".", "_"))
        )
        if not files:
            raise DataError(f"{src}: no *.parquet or *.npy files in this folder; point at a vector file")
        if len({p.suffix.lower() for p in files}) > 1:
            raise DataError(
                f"{src}: holds both .npy and .parquet files; give a folder of one kind (.npy rows have no "
                "ids), or transform each kind on its own"
            )
        return files
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    if src.suffix.lower() not in (".npy", ".parquet"):
        raise DataError(f"{src}: unsupported vector file (use .npy, .parquet or a folder of them)")
    return [src]


def iter_vectors(
    path: str | os.PathLike, rows: int = ROWS, id_column: str = ID, vector_column: str = VECTOR
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield ``(ids, vectors)`` chunks of at most ``rows`` rows, holding one chunk in memory at a time.

    A ``.npy`` matrix has no ids: its rows are named ``"0"``, ``"1"``, ... in order, counted on
    across the files of a folder (the row number in the table they read as). Every part read is
    checked against the width of the first, naming both (the adapter's refusal names only the
    folder, and numpy's concatenate of a file's batches named nothing).
    """
    first: tuple[str, int] | None = None

    def same_width(where: str, vectors: np.ndarray) -> None:
        nonlocal first
        if first is None:
            first = (where, vectors.shape[1])
        elif vectors.shape[1] != first[1]:
            raise DataError(
                f"{where}: {vectors.shape[1]}-d vectors, but {first[0]} holds {first[1]}-d ones; the "
                "vectors of a file, and the files of a folder, must be of one model and width"
            )

    numbered = 0
    for file in vector_files(path):
        if file.suffix.lower() == ".npy":
            start = 0
            for ids, vectors in _iter_npy(file, rows, numbered):
                same_width(f"{file} (rows {start}-{start + len(ids) - 1})", vectors)
                yield ids, vectors
                start += len(ids)
            numbered += start
            continue
        import pyarrow as pa

        reader = parquet_file(file)
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
            same_width(where, vectors)
            ids += batch_ids
            parts.append(vectors)
            start += batch.num_rows
            if len(ids) >= rows:
                yield ids, np.concatenate(parts)
                ids, parts = [], []
        if ids:
            yield ids, np.concatenate(parts)


def _iter_npy(path: Path, rows: int, first: int = 0) -> Iterator[tuple[list[str], np.ndarray]]:
    """Chunks of a ``.npy`` matrix in its own float dtype (integers, quantised embeddings among them,
    as float64, which holds them exactly: the Parquet and ``--embeddings`` readers' rule), its rows
    named by number from ``first``."""
    with open(path, "rb") as handle:
        shape, dtype, fortran = _npy_header(handle, path)
        if len(shape) != 2 or fortran or dtype.kind not in "fiu":
            raise DataError(
                f"{path}: expected a C-ordered 2-D numeric matrix (n_vectors, dim), got shape {shape}, "
                f"dtype {dtype}{', Fortran order' if fortran else ''}; save it with "
                "numpy.save(path, numpy.ascontiguousarray(vectors, dtype=numpy.float32))"
            )
        n, dim = shape
        for start in range(0, n, rows):
            count = min(rows, n - start)
            buf = np.empty((count, dim), dtype=dtype)
            # (an (n, 0) matrix has no bytes to read; the adapter refuses its width)
            if buf.nbytes and handle.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                raise DataError(f"{path}: file ends before row {start + count} of {n}; it is truncated")
            ids = [str(first + i) for i in range(start, start + count)]
            yield ids, buf if dtype.kind == "f" else buf.astype(np.float64)  # as from_table's


# -- writing vectors ---------------------------------------------------------------------------------
class VectorWriter(contextlib.AbstractContextManager):
    """Streams ``(ids, vectors)`` chunks to ``.npy``, one ``.parquet`` file, or a folder of Parquet shards.

    Everything goes to a temporary sibling first; :meth:`close` (or leaving the ``with`` block
    without an error) renames it into place, so readers never see half an output. ``meta`` is
    recorded with the output (:func:`written_by`). An existing ``out`` is replaced only when this
    class wrote it: another file or folder there is the user's, and is refused.
    """

    def __init__(self, out: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        self.out = Path(out).resolve()
        self.kind = {".npy": "npy", ".parquet": "parquet"}.get(self.out.suffix.lower(), "shards")
        self.meta = {"library": "search-adaptor", **(meta or {})}
        self.rows, self.dim, self.shards = 0, 0, 0
        folder = self.kind == "shards"
        self._replaces = None if folder else _replaceable(out, self.out, self.kind)
        self._staged = Staged(  # parts: replacing a shard folder must not delete a file of the user's
            self.out,
            folder=folder,
            marker=SHARDS_MANIFEST,
            what="a shard folder of search-adaptor",
            parts=SHARDS_PARTS,
        )
        self._handle: Any = None
        self._ids_dropped = False

    def write(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim and vectors.shape[1] != self.dim:
            raise ValueError(f"{self.out}: got {vectors.shape[1]}-d vectors after {self.dim}-d ones")
        self.dim = int(vectors.shape[1])
        if self.kind == "npy":
            if not self._ids_dropped and list(ids) != [str(self.rows + i) for i in range(len(ids))]:
                self._ids_dropped = True  # said once: a .npy's rows are known by their number only
                warnings.warn(
                    f"{self.out}: a .npy keeps no ids, so the input's (the first is {str(ids[0])!r}) are "
                    "dropped and only the rows' order remains; write a .parquet to keep them",
                    stacklevel=2,
                )
            if self._handle is None:
                self._handle = open(self._staged.path, "wb+")  # noqa: SIM115 - open across write() calls
                self._handle.write(b"\0" * 128)  # header space, filled in by close() once n is known
            self._handle.write(vectors.tobytes())
        elif self.kind == "parquet":
            import pyarrow.parquet as pq

            table = self._marked(ids, vectors)
            if self._handle is None:
                self._handle = pq.ParquetWriter(self._staged.path, table.schema)
            self._handle.write_table(table, row_group_size=_ROW_GROUP)
        else:
            import pyarrow.parquet as pq

            path = self._staged.path / SHARD.format(self.shards)
            pq.write_table(self._marked(ids, vectors), path, row_group_size=_ROW_GROUP)
        self.rows += len(vectors)
        self.shards += 1

    def _marked(self, ids: Sequence[str], vectors: np.ndarray) -> Any:
        """:func:`to_table`, with ``meta`` in the schema metadata: a shard taken out of its folder, or
        a single Parquet output, still says what made it."""
        return to_table(ids, vectors).replace_schema_metadata({MARKER: json.dumps(self.meta)})

    def close(self) -> Path:
        if self.kind != "shards" and self._handle is None:
            self._staged.discard()
            raise ValueError(f"{self.out}: no vectors to write (the input is empty)")
        record = {**self.meta, "rows": self.rows, "dim": self.dim}
        if self.kind == "npy":
            self._handle.seek(0)
            self._handle.write(_npy_header_bytes(self.rows, self.dim))
            self._handle.close()
        elif self.kind == "parquet":
            self._handle.close()
        else:
            (self._staged.path / SHARDS_MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
        if self.kind == "npy":  # before the matrix, which is never there without its record; the
            # checksum tells a matrix that is not the record's (a job killed between the two renames,
            # which left the matrix the record says it replaces)
            record["checksum"] = sampled_checksum(self._staged.path)
            if self._replaces:
                record["replaces"] = self._replaces
            write_text_atomic(npy_record(self.out), json.dumps(record, indent=2) + "\n")
        return self._staged.publish()

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._staged.discard()

    def __exit__(self, exc_type: object, exc: BaseException | None, *rest: object) -> None:
        """Close, or abort on an exception; a write failure is raised naming ``out`` (not its
        staging sibling), with its cause and a fix."""
        finish_output(self.out, exc, self.close, self.abort)


def _replaceable(given: str | os.PathLike, out: Path, kind: str) -> str | None:
    """Refuse to replace a file of the user's at ``out`` (a ``.npy`` or Parquet output) and return
    the checksum of the ``.npy`` matrix it replaces (None: no matrix there), which the new record
    keeps. A ``.npy`` written over since this tool wrote it (``np.save`` to the same name) no longer
    matches its record, and a ``.npy.json`` beside a new name may be a file of the user's: both are
    refused, unless the matrix is the one the record says it replaced (a job killed between writing
    the record and the matrix)."""
    foreign = (
        f"{given}: exists and was not written by search-adaptor (or by a version that did not mark its "
        "outputs); choose a new file name, or remove it first"
    )
    if out.is_dir():
        raise FileExistsError(foreign)
    if kind != "npy":
        if out.exists() and _recorded(out) is None:
            raise FileExistsError(foreign)
        return None
    record = npy_record(out)
    if not out.exists():
        if record.exists() and not _ours(record):
            raise FileExistsError(
                f"{record}: exists and was not written by search-adaptor, and {Path(given).name}'s record "
                "would replace it; choose a new file name, or remove it first"
            )
        return None
    found = _recorded(out) if _ours(record) else None
    if found is None:
        raise FileExistsError(foreign)
    checksum = sampled_checksum(out)
    if found.get("checksum") not in (None, checksum) and found.get("replaces") != checksum:
        raise FileExistsError(
            f"{given}: is not the matrix search-adaptor wrote there (its record {record.name} describes "
            "another: written over since?); choose a new file name, or remove both files first"
        )
    return checksum


def _ours(record: Path) -> bool:
    """Whether the JSON file ``record`` is a record this tool wrote (a file of the user's is not)."""
    try:
        found = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found.get("library") == "search-adaptor"


def _npy_header_bytes(rows: int, dim: int) -> bytes:
    """A version 1.0 ``.npy`` header of exactly 128 bytes for a C-ordered float32 (rows, dim) matrix.

    Its size does not depend on ``rows``, so the header can be reserved first and filled in once
    the streamed row count is known.
    """
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    body = text.ljust(128 - 10 - 1).encode("latin1") + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def npy_record(path: Path) -> Path:
    """Where :class:`VectorWriter` records what it wrote to the ``.npy`` ``path``: ``path.json``
    beside it (numpy refuses extra keys in a ``.npy`` header, and other readers any trailing bytes)."""
    return path.with_name(path.name + ".json")


def written_by(path: str | os.PathLike) -> dict[str, Any] | None:
    """What :class:`VectorWriter` recorded when it wrote ``path`` (a shard folder, a shard or Parquet
    file, a ``.npy``), or None when it did not write it. ``"adapter"`` in it means adapted vectors.

    A damaged record, or a ``.npy``'s record of another matrix (a job was killed between writing the
    two), is refused in one line naming it: whether the vectors are adapted is unknown.
    """
    found = _recorded(path)
    src = Path(path)
    checksum = (found or {}).get("checksum")  # (records of earlier versions have none)
    if checksum and src.suffix.lower() == ".npy" and src.is_file() and checksum != sampled_checksum(src):
        raise ValueError(
            f"{src}: is not the matrix its record {npy_record(src)} describes (a job was stopped "
            f"between writing them); {_REWRITE}"
        )
    return found


def _recorded(path: str | os.PathLike) -> dict[str, Any] | None:
    """:func:`written_by`'s record, not checked against a ``.npy``: enough to tell an output of this
    tool, which a new job may replace, from a file of the user's."""
    src = Path(path)
    if src.is_dir() or src.suffix.lower() == ".npy":
        record = src / SHARDS_MANIFEST if src.is_dir() else npy_record(src)
        if not record.is_file():
            return None
        found = read_json(record, _REWRITE)
        if not isinstance(found, dict):
            raise ValueError(f"{record}: expected a JSON object, got {type(found).__name__}; {_REWRITE}")
        return found
    try:
        metadata = parquet_file(src).schema_arrow.metadata or {}
    except DataError:
        return None  # not Parquet at all: not ours (reading it as input names the damage)
    if MARKER not in metadata:
        return None
    try:
        found = json.loads(metadata[MARKER])
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise ValueError(f"{src}: its {MARKER.decode()} schema metadata is not a JSON object; {_REWRITE}")
    return found
