"""Persistent embedding store: each (embedding space, kind, text) is embedded once, ever (an image
once per content, :func:`item_key`).

Why SQLite: every finished batch is committed in its own transaction (WAL journal), so a process
killed at any moment loses at most the batches still in flight, and the next run sends only what is
missing. One database file per encoder fingerprint keeps spaces apart and makes them easy to delete.

Ctrl-C stops a run within seconds and keeps what was paid for: no new batch, request or retry
starts (the worker threads' event, :func:`~search_adaptor.encoders.base.cancelled_by`), the replies
that arrive within :data:`_GRACE_S` are committed, and the :class:`KeyboardInterrupt` goes on. The
workers are daemon threads, so a request a stuck server never answers does not keep the process
alive; a second Ctrl-C skips the grace.

Several processes (Ray actors, two runs started by hand) may embed into one store at once without
paying twice: before sending a batch, a process claims its texts in the ``pending`` table; the
others skip claimed texts, embed the rest, then wait for the claimed ones and read them back. A
claim lapses when its owner dies (its process id is gone on this machine, or names a process that
started later: ids are reused, :func:`_started`) or stops refreshing it for ``lease_s`` seconds
(frozen, or on another machine), so a killed claimant never blocks anyone. Claims left by versions
before the machine was named by its pid space (:func:`~search_adaptor.files.host_tag`) name it by its
host name, and are judged by process id all the same.

A new version may record an encoder otherwise (a new rule for cutting texts), so that its store is
another file: the encoder names its earlier forms
(:meth:`~search_adaptor.encoders.base.Encoder.earlier_versions`), and a text missing here that such a
version sent exactly as this one sends it takes that version's stored vector (its file is opened
read-only and checked as any store is; the vector is copied here and counted, ``StoreStats.adopted``),
instead of being paid for again. A text either rule cut otherwise is embedded anew.

Nothing hostile gets through: a damaged file, a foreign schema or a recorded dimension most of its
vectors contradict raises one :class:`StoreError` that says which folder to delete (and deletes no
row); a store that cannot be written (read-only media) still serves what it holds; a stored vector
of the wrong length, with NaN/inf or all zeros is never returned (it is embedded again). An all-zero
vector is never stored either: it has no direction to rank by, so one bad reply would spoil its text
for good (a static model's, for a text none of whose tokens it knows, is still handed back each time).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search_adaptor.encoders import FOLDER_CLASSES, LOCAL
from search_adaptor.encoders.base import (
    BatchCutShort,
    EarlierVersion,
    Encoder,
    EncoderError,
    InputsRejected,
    Kind,
    cancelled_by,
    check_kind,
    check_vectors,
    refuse_bare_text,
)
from search_adaptor.files import ENV_CACHE, default_cache_dir, file_in_the_way, host_tag, pid_alive
from search_adaptor.images import Item, check_item_types

_SQL_VARS = 900  # stay under SQLite's host-parameter limit on old builds
_BUSY_TIMEOUT_S = 60  # several processes (Ray actors) may write: wait this long for their locks
#: Seconds a Ctrl-C'd run still waits for the replies already on the wire (paid for) to save them.
_GRACE_S = 2.0
_POLL_S = 0.1  # how often a process waiting for another one's claimed texts looks again
#: this machine's pid space (:func:`~search_adaptor.files.host_tag`): a claim's pid is looked up only here
_HOST = host_tag()
#: how versions before :data:`_HOST` named this machine in a claim (its host name alone)
_HOSTNAME = socket.gethostname()
#: Columns (name, type) of each table; the store refuses a file whose tables differ.
_TABLES = {
    "meta": (("name", "TEXT"), ("value", "TEXT")),
    "vectors": (("key", "BLOB"), ("vec", "BLOB")),
    "pending": (("key", "BLOB"), ("owner", "TEXT"), ("host", "TEXT"), ("pid", "INTEGER"), ("seen", "REAL")),
    "owners": (("owner", "TEXT"), ("started", "TEXT")),
}
#: Tables a store written by an earlier version may lack: made on opening (absent when read-only).
_ADDED = ("pending", "owners")
_CREATE = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL)",
    # one row per text being embedded right now: who embeds it, and when they last said so
    "CREATE TABLE IF NOT EXISTS pending (key BLOB PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, "
    "pid INTEGER NOT NULL, seen REAL NOT NULL)",
    # one row per owner of claims: when its process started (_started; NULL where unknown). A table of
    # its own, not a column of pending: earlier versions, which refuse a pending table of other columns,
    # still open the store, and their claims (without a row here) are judged as they always were
    "CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, started TEXT)",
)


class StoreError(ValueError):
    """The store's file cannot serve this call (damaged, foreign, read-only); the message says the fix."""


def text_key(kind: Kind, text: str) -> bytes:
    """Cache key of one text: queries and documents are kept apart (providers embed them differently)."""
    return hashlib.sha256(f"{kind}\x00{text}".encode()).digest()[:16]


def item_key(kind: Kind, item: Item) -> bytes:
    """Cache key of a text (:func:`text_key`) or of an image: the image's content, never its path.

    An image's key hashes ``image``, the kind and its :attr:`~search_adaptor.images.ImageRef.content_id`
    (the sha256 of its bytes, or of its URL): the same picture in two places is embedded once, two
    different pictures never share a key, and no text key can equal an image key (a text's hashed
    bytes start with its kind, an image's with ``image``).
    """
    if isinstance(item, str):
        return text_key(kind, item)
    return hashlib.sha256(f"image\x00{kind}\x00{item.content_id}".encode()).digest()[:16]


def _store_file(root: Path, fingerprint: str) -> Path:
    """The database file of the store of ``fingerprint`` under the cache directory ``root``."""
    return root / hashlib.sha256(fingerprint.encode()).hexdigest()[:20] / "embeddings.sqlite"


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so), waiting for other processes as every write does.

    Switching needs the file to itself, and while another process writes to a store that is still
    in its first, rollback-journal mode (two runs creating the same store at once) SQLite answers
    "database is locked" at once instead of calling the busy handler: retry until the busy timeout.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _can_write(path: Path) -> bool:
    """Whether this process may change ``path``, or create it (judged on its nearest existing folder).

    ``os.access`` also answers no on read-only mounts, where even root cannot write.
    """
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def _started(pid: int) -> str | None:
    """When process ``pid`` of this machine started, as ``"<boot id> <start time>"``; None where unknown.

    A process id is reused once its process is gone (pid 1 in every restart of a container), so a
    claim names its process by id and start: the start time (field 22 of ``/proc/<pid>/stat``, in
    clock ticks since boot) tells this process from an earlier one of the same id, the boot id tells
    this boot from an earlier one. None without Linux's ``/proc`` (macOS, Windows), or when the
    process is gone or hidden from this user.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # after the command name, which is in parentheses and may hold spaces and parentheses itself
    return f"{boot} {stat[stat.rindex(')') + 2 :].split()[19]}"


def _claimant_alive(host: object, pid: int, started: object) -> bool:
    """Whether the process that made a claim may still be embedding its texts.

    On another machine only the claim's lease tells. Here, its process id must run and, when both
    the claim and this machine know when that process started, have started then: otherwise the id
    is a later process's. A claim without a known start (written by an earlier version, or where
    ``/proc`` is missing; ``started`` of another type, edited by hand) is judged by its id alone.
    "Here" is :data:`_HOST`, or this machine's host name in a claim of a version before it: such a
    claim of a killed run is taken over at once instead of after its lease (were it another pid
    space's of the same host name, one batch would at worst be embedded twice).
    """
    if host not in (_HOST, _HOSTNAME):
        return True
    if not pid_alive(pid):
        return False
    now = _started(pid) if isinstance(started, str) else None
    return now is None or now == started


def _check_call(texts: object, kind: object, method: str) -> None:
    """Refuse, before anything is looked up, sent or written, what a public method of
    :class:`EmbeddingStore` must not take: a bare string for ``texts`` (one row per character would be
    embedded and stored) and a ``kind`` other than "query" or "document" (its vectors would be kept
    under a key nothing reads)."""
    refuse_bare_text(texts, f"EmbeddingStore.{method}()")
    check_kind(kind)


@dataclass
class StoreStats:
    """What one :meth:`EmbeddingStore.embed` call did: the proof that nothing was paid for twice.

    ``encoded`` counts the texts this call sent to the encoder; ``cached`` the unique texts it read
    from the store instead (including those another process embedded while this call waited), and
    ``adopted`` those of them it found only in an earlier version's store (copied into this one).
    """

    requested: int = 0
    unique: int = 0
    cached: int = 0
    encoded: int = 0
    batches: int = 0
    adopted: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, other: StoreStats) -> None:
        for name in ("requested", "unique", "cached", "encoded", "batches", "adopted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.by_kind.items():
            self.by_kind[k] = self.by_kind.get(k, 0) + v


class EmbeddingStore:
    """Embeddings of one encoder, persisted under ``root/<fingerprint>/``.

    Parameters
    ----------
    encoder : Encoder
        The embedding space; its fingerprint names the database.
    root : path, optional
        Cache directory; defaults to :func:`default_cache_dir`.
    lease_s : float
        How long another process's claim on a text stays valid without being refreshed (claimants
        refresh theirs every ``lease_s / 4`` seconds while they embed).
    read_only : bool
        Never change the file, even where it could be written (an earlier version's store is read so).

    Attributes
    ----------
    read_only : bool
        True when asked, or when the file (or its folder) cannot be written: the store serves what it
        holds and raises :class:`StoreError` only when a text is missing from it.
    """

    def __init__(
        self,
        encoder: Encoder,
        root: str | os.PathLike | None = None,
        lease_s: float = 60.0,
        *,
        read_only: bool = False,
    ) -> None:
        if not isinstance(getattr(encoder, "fingerprint", None), str):
            raise TypeError(
                f"EmbeddingStore(encoder, root=None): encoder must be an Encoder "
                f"(search_adaptor.encoders.registry.make_encoder), got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.root = Path(root) if root is not None else default_cache_dir()
        self.lease_s = lease_s
        self.path = _store_file(self.root, encoder.fingerprint)
        file = file_in_the_way(self.path.parent)
        if file is not None:
            raise StoreError(
                f"{self.root}: the embedding store needs a folder, but {file} is a file; give --cache "
                "(or $SEARCH_ADAPTOR_CACHE) a folder"
            )
        self.read_only = read_only or not (_can_write(self.path.parent) and _can_write(self.path))
        self._lock = threading.Lock()
        #: the stores of the encoder's earlier versions that exist, opened when first needed
        self._earlier: list[tuple[EarlierVersion, EmbeddingStore]] | None = None
        with self._guard():
            self._db = self._connect()
            try:
                self._check_tables()
                self._check_owner()
                self._dim = self._meta_dim()
                if not self.read_only:
                    meta = {"fingerprint": encoder.fingerprint, "config": encoder.config()}
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('encoder', ?)",
                        (json.dumps(meta, sort_keys=True),),
                    )
            except BaseException:
                self._db.close()
                raise

    def _connect(self) -> sqlite3.Connection:
        """Open the file for writing, read-only when it cannot be written, or an empty stand-in.

        A read-only WAL database normally needs its ``-shm`` file; in a read-only folder that file
        cannot be made, so when no ``-wal`` file holds uncheckpointed commits the file is opened
        ``immutable`` (nothing can change it there). A store that does not exist and cannot be
        created is an empty in-memory one: it serves nothing and refuses to embed, in one line.
        """
        options = {"check_same_thread": False, "isolation_level": None, "timeout": _BUSY_TIMEOUT_S}
        if self.read_only and self.path.exists():
            wal = self.path.with_name(self.path.name + "-wal")
            immutable = not _can_write(self.path.parent) and not wal.exists()
            uri = f"{self.path.absolute().as_uri()}?mode=ro{'&immutable=1' if immutable else ''}"
            return sqlite3.connect(uri, uri=True, **options)
        if self.read_only:
            db = sqlite3.connect(":memory:", **options)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a place that looked writable (root on /proc, a full disk)
                raise StoreError(
                    f"{self.root}: the embedding store's folder cannot be made there ({exc.strerror}); "
                    "give --cache (or $SEARCH_ADAPTOR_CACHE) a folder you can write"
                ) from None
            db = sqlite3.connect(self.path, **options)
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
        for sql in _CREATE:
            db.execute(sql)
        return db

    def _check_tables(self) -> None:
        """Refuse a file whose tables are not this store's (one in :data:`_ADDED` may be absent when
        read-only)."""
        for table, expected in _TABLES.items():
            have = tuple((row[1], row[2]) for row in self._db.execute(f"PRAGMA table_info({table})"))
            if have == expected or (not have and table in _ADDED and self.read_only):
                continue
            cols = ", ".join(f"{name} {kind}" for name, kind in have)
            raise self._damaged(f"table {table} has columns ({cols})" if have else f"no {table} table")

    def _check_owner(self) -> None:
        """Refuse a store that records another model (a folder copied or renamed from another's): its
        vectors would be served as this model's."""
        row = self._db.execute("SELECT value FROM meta WHERE name='encoder'").fetchone()
        if row is None:
            return
        try:
            theirs = json.loads(row[0])["fingerprint"]
        except (TypeError, ValueError, KeyError):
            raise self._damaged("its record of the model is not readable") from None
        if theirs != self.encoder.fingerprint:
            raise StoreError(
                f"{self.path}: holds embeddings of {theirs}, not of {self.encoder.fingerprint} (the folder "
                f"was copied or renamed from another model's); delete the folder {self.path.parent}, and "
                "this model's texts are embedded again"
            )

    def _meta_dim(self) -> int | None:
        """The recorded vector dimension (None before the first write), checked against the stored
        vectors (:meth:`_check_dim`) when the first of them disagrees; caller holds the lock."""
        row = self._db.execute("SELECT value FROM meta WHERE name='dim'").fetchone()
        if row is None:
            return None
        if not str(row[0]).isdecimal() or int(row[0]) == 0:
            raise self._damaged(f"recorded dimension {row[0]!r} is not a positive integer")
        dim = int(row[0])
        first = self._db.execute(
            "SELECT length(vec) FROM vectors WHERE typeof(vec) = 'blob' LIMIT 1"
        ).fetchone()
        if first is not None and first[0] != 4 * dim:
            self._check_dim(dim)
        return dim

    def _check_dim(self, dim: int) -> None:
        """Refuse a recorded dimension that more stored vectors contradict than agree with (the record
        was edited): dropped as damaged, they would all be deleted. Reads every row's length, so it runs
        only once a row of another length turned up; caller holds the lock."""
        lengths = self._db.execute(
            "SELECT length(vec), COUNT(*) FROM vectors WHERE typeof(vec) = 'blob' GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        size, most = lengths[0] if lengths else (0, 0)
        if most > dict(lengths).get(4 * dim, 0):
            raise self._damaged(
                f"recorded dimension {dim}, but {most} of its vectors are {size} bytes long, not {4 * dim}"
            )

    def unwritable(self, count: int) -> StoreError:
        """The one-line error for a read-only store that lacks ``count`` distinct texts, with the fix:
        the folder to make writable is the nearest that exists (the store's own may not yet)."""
        folder = next(p for p in self.path.parents if p.exists())
        return StoreError(
            f"{self.path}: cannot write the embedding store here (read-only), and {count} text(s) "
            f"have no vector in it yet; make {folder} writable, or point {ENV_CACHE} "
            "(--cache) at a writable folder (a copy of this one keeps its vectors)"
        )

    def _damaged(self, reason: str) -> StoreError:
        """The one-line error for a file this store cannot trust, with the fix: rebuild it."""
        return StoreError(
            f"{self.path}: damaged embedding store ({reason}); delete the folder {self.path.parent} to "
            "rebuild it (every text it held is embedded, and paid for, again on the next run)"
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite's errors into one-line :class:`StoreError`s that name this store's file."""
        try:
            yield
        except sqlite3.Error as exc:
            if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT or SQLITE_NOTADB: the file itself
                raise self._damaged(str(exc)) from exc
            raise StoreError(f"{self.path}: {exc}{self._fix(str(exc))}") from exc

    def _fix(self, error: str) -> str:
        """What to do about SQLite's ``error`` where its words do not say (empty where they do)."""
        if "database is locked" in error:
            return (
                f" (another process held its write lock for over {_BUSY_TIMEOUT_S:g} s: a job that "
                "is stuck or stopped, or a program reading it); let that process finish or stop it, "
                "or embed into another folder with --cache"
            )
        if "unable to open database file" in error:
            return (
                " (it is a folder, or its folder cannot be written or entered); remove what is in its "
                "place or fix the permissions, or embed into another folder with --cache"
            )
        if "disk I/O error" in error:
            return (
                " (the disk failed, or its -wal/-shm file was removed while another process had it "
                "open); let other jobs on this store finish and run again; if it persists, check the "
                "disk, or embed into another folder with --cache"
            )
        return ""

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the connection lock.

        ``BEGIN IMMEDIATE`` takes the write lock at once, so waiting for another process (up to the
        busy timeout) happens here and never between a read and the write that depends on it.
        """
        with self._lock, self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """All rows of one read, under the connection lock."""
        with self._lock, self._guard():
            return self._db.execute(sql, params).fetchall()

    def __len__(self) -> int:
        return self._fetch("SELECT COUNT(*) FROM vectors")[0][0]

    def close(self) -> None:
        for _, earlier in self._earlier or []:
            earlier.close()
        self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, kind: Kind, texts: Sequence[Item]) -> dict[bytes, np.ndarray]:
        """Cached vectors for the texts (or images) that have a usable one, keyed by :func:`item_key`;
        an item that is neither (None, a number) is a TypeError naming it, as is a bare string
        (:func:`_check_call`), and an unknown kind a ValueError."""
        _check_call(texts, kind, "lookup")
        check_item_types(texts)
        return self._read({item_key(kind, t) for t in texts})

    def _read(self, keys: Iterable[bytes]) -> dict[bytes, np.ndarray]:
        """Stored vectors of ``keys``, leaving out (and, when writable, deleting) damaged rows: the
        rows of :meth:`_read_rows`, keyed."""
        unique = list(dict.fromkeys(keys))
        mat, usable = self._read_rows(unique)
        return {k: mat[i] for i, k in enumerate(unique) if usable[i]}

    def _read_rows(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, usable)``: row ``i`` of the matrix is the stored vector of ``keys[i]`` where
        ``usable[i]``, filled a chunk of rows at a time, so that a read holds its vectors once and not
        also all their blobs and a joined copy of them (a warm read of 100,000 vectors peaked at 2.4x
        their size). ``keys`` must be unique.

        A row whose blob is not ``dim`` float32 values, or holds NaN/inf or only zeros, cannot be the
        text's vector; treating it as missing is safe (the text is embedded again and the row
        replaced), and deleting it tells other processes to do the same.
        """
        usable = np.zeros(len(keys), dtype=bool)
        mat = np.zeros((0, 0), dtype=np.float32)
        where: dict[bytes, int] = {}
        bad: list[tuple[bytes, object]] = []
        for i in range(0, len(keys), _SQL_VARS):
            chunk = keys[i : i + _SQL_VARS]
            marks = ",".join("?" * len(chunk))
            rows = self._fetch(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk)
            if not rows:
                continue
            if not where:  # the first stored row: only now is the width needed
                dim = self._known_dim()
                mat = np.empty((len(keys), dim), dtype=np.float32)  # pages of rows never read stay unused
                where = {k: j for j, k in enumerate(keys)}
            sized = [(k, v) for k, v in rows if isinstance(v, bytes) and len(v) == 4 * dim]
            if len(sized) < len(rows):  # before dropping rows of another length: is the record wrong instead?
                with self._lock, self._guard():
                    self._check_dim(dim)
            block = np.frombuffer(b"".join(v for _, v in sized), dtype=np.float32).reshape(len(sized), dim)
            ok = np.isfinite(block).all(axis=1) & block.any(axis=1)
            at = np.fromiter((where[k] for k, _ in sized), dtype=np.intp, count=len(sized))[ok]
            mat[at] = block[ok]
            usable[at] = True
            bad += [(k, v) for k, v in rows if not usable[where[k]]]
        if bad and not self.read_only:
            with self._tx() as db:
                db.executemany("DELETE FROM vectors WHERE key = ? AND vec = ?", bad)
            warnings.warn(
                f"{self.path}: {len(bad)} stored vector(s) had the wrong length, NaN/inf or only zeros; "
                "they were deleted and are embedded again",
                RuntimeWarning,
                stacklevel=3,
            )
        return mat, usable

    def _known_dim(self) -> int:
        """The store's dimension, re-read when another process recorded it after this one opened."""
        if self._dim is None:
            with self._lock, self._guard():
                self._dim = self._meta_dim()
        if self._dim is None:
            raise self._damaged("vectors stored without a recorded dimension")
        return self._dim

    def missing(self, kind: Kind, texts: Sequence[Item]) -> list[Item]:
        """Unique texts that would be sent to the encoder (in first-seen order): neither here nor
        reusable from an earlier version's store (:meth:`embed`); refuses what :meth:`lookup` does."""
        _check_call(texts, kind, "missing")
        check_item_types(texts)
        keys = [item_key(kind, t) for t in texts]
        todo = self._missing(keys, texts, self._read(keys))
        for key in self._from_earlier(kind, todo):
            del todo[key]
        return list(todo.values())

    def _from_earlier(self, kind: Kind, todo: dict[bytes, Item]) -> dict[bytes, np.ndarray]:
        """Vectors of ``todo``'s texts that a store of an earlier version of the encoder holds, where
        that version sent the text exactly as this encoder does (its vector is then this one's), keyed
        as ``todo``; only vectors of this store's width, once it has one."""
        texts = {k: t for k, t in todo.items() if isinstance(t, str)}  # images: no earlier version
        out: dict[bytes, np.ndarray] = {}
        for version, earlier in self._earlier_stores() if texts else []:
            if self._dim not in (None, earlier._dim):  # vectors of another width: not this space's
                continue
            keys = list(texts)
            alike = version.sends_alike([texts[k] for k in keys], kind)
            found = earlier._read(k for k, same in zip(keys, alike, strict=True) if same)
            out.update(found)
            for key in found:
                del texts[key]
        return out

    def _earlier_stores(self) -> list[tuple[EarlierVersion, EmbeddingStore]]:
        """The stores of the encoder's earlier versions that exist here, opened read-only the first time.

        Each is checked as any store is: a damaged or foreign one raises its :class:`StoreError`, which
        names the folder to delete, before anything is sent.
        """
        with self._lock:
            if self._earlier is None:
                opened: list[tuple[EarlierVersion, EmbeddingStore]] = []
                try:
                    for version in self.encoder.earlier_versions():
                        if _store_file(self.root, version.encoder.fingerprint).is_file():
                            opened.append(
                                (version, EmbeddingStore(version.encoder, self.root, read_only=True))
                            )
                except BaseException:  # refused again by the next call, not skipped
                    for _, earlier in opened:
                        earlier.close()
                    raise
                self._earlier = opened
            return self._earlier

    @staticmethod
    def _missing(
        keys: Sequence[bytes], texts: Sequence[Item], have: dict[bytes, np.ndarray]
    ) -> dict[bytes, Item]:
        """Key -> text of the unique texts (``keys``: their :func:`item_key`) without a vector in
        ``have``, in first-seen order."""
        out: dict[bytes, Item] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in have and k not in out:
                out[k] = t
        return out

    def embed(
        self,
        texts: Sequence[Item],
        kind: Kind,
        progress: Callable[[int], None] | None = None,
        stats: StoreStats | None = None,
    ) -> np.ndarray:
        """Vectors for ``texts`` (in order), encoding and committing only what is not stored yet.

        A text stored only by an earlier version of the encoder that sent it as this one sends it
        (:meth:`~search_adaptor.encoders.base.Encoder.earlier_versions`) takes that vector, copied here.
        Texts another process is embedding right now are not sent again: this call embeds the rest,
        then waits for those and reads them back. ``progress`` is told how many texts became
        available each time (embedded here or elsewhere).

        Returns
        -------
        ndarray of shape (len(texts), dim), float32

        Raises
        ------
        StoreError
            The store is damaged, or read-only and some text has no vector in it (nothing is sent).
        InputsRejected
            The encoder refused some texts (too long for the provider): every other text was embedded
            and saved first; the message names the first refused text, ``vectors`` holds the others.
        TypeError
            A bare string (it would be read letter by letter), or an item that is not a text (None, a
            number), before anything is looked up, sent or stored.
        ValueError
            ``kind`` is not ``"query"`` or ``"document"`` (a typo would be embedded and stored under it).
        """
        _check_call(texts, kind, "embed")
        check_item_types(texts)
        keys = [item_key(kind, t) for t in texts]
        unique = list(dict.fromkeys(keys))
        stored, usable = self._read_rows(unique)
        found = {k: stored[i] for i, k in enumerate(unique) if usable[i]}
        todo = self._missing(keys, texts, found)
        adopted = self._from_earlier(kind, todo)
        if adopted and not self.read_only:  # the next run finds them here
            self._write(list(adopted), np.stack(list(adopted.values())))
        for key in adopted:
            del todo[key]
        found.update(adopted)
        self.encoder.check_items(todo.values())  # an image a text-only model cannot take: fail now
        if todo and self.read_only:
            raise self.unwritable(len(todo))
        local = StoreStats(requested=len(texts), unique=len(found) + len(todo), adopted=len(adopted))
        refused: dict[bytes, str] = {}
        if todo:
            refused = self._embed_missing(kind, todo, found, local, progress)
        local.cached = local.unique - local.encoded - len(refused)
        local.by_kind[kind] = local.encoded
        if stats is not None:
            stats.add(local)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        if refused:
            raise self._refused(kind, texts, found, refused)
        if usable.all():  # all read at once, in order: the read's own matrix, not a copy of it
            if len(unique) == len(keys):
                return stored
            row = {k: i for i, k in enumerate(unique)}
            return stored[[row[k] for k in keys]]
        return np.stack([found[k] for k in keys])

    def _refused(
        self, kind: Kind, texts: Sequence[Item], found: dict[bytes, np.ndarray], refused: dict[bytes, str]
    ) -> InputsRejected:
        """The one-line error for texts the encoder refused, with the vectors of all the others."""
        keys = [item_key(kind, t) for t in texts]
        rows = {i: refused[k] for i, k in enumerate(keys) if k in refused}
        nan = np.full(self._dim or 0, np.nan, dtype=np.float32)
        vectors = np.stack([found.get(k, nan) for k in keys]) if self._dim else np.zeros((len(texts), 0))
        exc = InputsRejected.of(self.encoder.provider, texts, vectors.astype(np.float32), rows)
        images = not all(isinstance(texts[i], str) for i in rows)
        return InputsRejected(
            f"{exc}; the others are saved in {self.path.parent}: "
            f"{'replace (an image) or ' if images else ''}shorten or drop the refused ones and run "
            "again (only they are sent)",
            exc.vectors,
            exc.rejected,
        )

    def _embed_missing(
        self,
        kind: Kind,
        todo: dict[bytes, Item],
        found: dict[bytes, np.ndarray],
        stats: StoreStats,
        progress: Callable[[int], None] | None,
    ) -> dict[bytes, str]:
        """Embed ``todo`` into ``found``: claim and encode what nobody else is embedding, then wait.

        Rounds: encode every batch this call can claim; read back what others finished meanwhile;
        if texts are still claimed by a live process, sleep briefly and try again (their claims
        may lapse). Claims are released on any exit, so a failed call never blocks another. Texts
        the encoder refuses are left out and returned (key -> reason); the other batches go on.
        """
        refused: dict[bytes, str] = {}
        owner = uuid.uuid4().hex  # one per call: threads sharing this store object coordinate too

        def commit(batch: list[Item], vectors: np.ndarray, reasons: list[str | None]) -> None:
            """Save one encoded batch and take its texts off ``todo`` (a repeat of a batch is harmless)."""
            keys = [item_key(kind, t) for t in batch]
            pairs = list(zip(keys, reasons, strict=True))
            kept = [key for key, reason in pairs if reason is None]
            refused.update((key, reason) for key, reason in pairs if reason is not None)
            if kept:
                self._write(kept, vectors)
            for key, vec in zip(kept, vectors, strict=True):
                found[key] = vec
            for key in keys:
                todo.pop(key, None)
            stats.encoded += len(kept)
            stats.batches += 1
            if progress is not None:
                progress(len(batch))

        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(owner, stop), daemon=True)
        beat.start()
        try:
            while todo:
                self._run_batches(self._claimed_batches(owner, todo), kind, commit)
                if not todo:
                    break
                elsewhere = self._read(todo)
                for key in elsewhere:
                    del todo[key]
                found.update(elsewhere)
                if progress is not None and elsewhere:
                    progress(len(elsewhere))
                if todo:
                    time.sleep(_POLL_S)
        finally:
            stop.set()
            beat.join()
            with self._tx() as db:
                db.execute("DELETE FROM pending WHERE owner = ?", (owner,))
                # this call's row, and those of killed owners whose claims were all taken over
                db.execute("DELETE FROM owners WHERE owner NOT IN (SELECT owner FROM pending)")
        return refused

    def _claimed_batches(self, owner: str, todo: dict[bytes, Item]) -> Iterator[list[Item]]:
        """Batches of ``todo`` (in order) that this call has just claimed; ends when none is left.

        Claims are taken lazily, one batch as each is sent, so that parallel processes split the
        work batch by batch instead of one of them claiming everything up front.
        """
        keys = list(todo)
        pos = 0
        while pos < len(keys):
            claimed, pos = self._claim(owner, keys, pos)
            if claimed:
                yield [todo[k] for k in claimed]

    def _claim(self, owner: str, keys: list[bytes], pos: int) -> tuple[list[bytes], int]:
        """Claim up to one batch of ``keys[pos:]`` that is neither stored nor claimed by a live owner.

        A claim row whose process id or time is not a number (edited by hand) is nobody's: it is
        claimed over. The owner's row in ``owners`` (when its process started) is written in the same
        transaction as its claims, so the clean-up of rows without claims (:meth:`_embed_missing`)
        never leaves a live owner's claims without it.

        Returns the claimed keys and the position to continue from.
        """
        size = self.encoder.batch_size
        claimed: list[bytes] = []
        alive: dict[tuple[object, int, object], bool] = {}
        with self._tx() as db:
            now = time.time()
            while pos < len(keys) and len(claimed) < size:
                chunk = keys[pos : pos + size - len(claimed)]
                pos += len(chunk)
                marks = ",".join("?" * len(chunk))
                stored = {k for (k,) in db.execute(f"SELECT key FROM vectors WHERE key IN ({marks})", chunk)}
                busy = set()
                for key, host, pid, seen, started in db.execute(
                    "SELECT key, host, pid, seen, started FROM pending LEFT JOIN owners USING (owner) WHERE "
                    f"key IN ({marks}) AND typeof(pid) = 'integer' AND typeof(seen) IN ('integer', 'real')",
                    chunk,
                ):
                    if (host, pid, started) not in alive:
                        alive[host, pid, started] = _claimant_alive(host, pid, started)
                    if alive[host, pid, started] and now - seen <= self.lease_s:
                        busy.add(key)
                claimed += [k for k in chunk if k not in stored and k not in busy]
            if claimed:
                db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (owner, _started(os.getpid())))
            db.executemany(
                "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
                [(k, owner, _HOST, os.getpid(), now) for k in claimed],
            )
        return claimed, pos

    def _heartbeat(self, owner: str, stop: threading.Event) -> None:
        """Refresh this call's claims every ``lease_s / 4`` seconds until ``stop`` is set.

        Runs beside the encoder, so a batch that takes longer than the lease is not taken over.
        """
        while not stop.wait(self.lease_s / 4):
            try:
                with self._tx() as db:
                    db.execute("UPDATE pending SET seen = ? WHERE owner = ?", (time.time(), owner))
            except StoreError:
                return  # the embedding thread meets the same error and reports it

    def _write(self, keys: list[bytes], vectors: np.ndarray) -> None:
        """Commit one batch and drop its claims, in one transaction (all of it or nothing survives).

        All-zero vectors are left out: they rank nothing, so their texts count as missing (:meth:`_read`).
        """
        with self._tx() as db:
            if self._dim is None:
                self._dim = self._meta_dim()  # another process may have recorded it meanwhile
            if self._dim is None:
                db.execute("INSERT INTO meta VALUES ('dim', ?)", (str(vectors.shape[1]),))
                self._dim = vectors.shape[1]
            elif vectors.shape[1] != self._dim:
                self._check_dim(self._dim)  # the record may be what is wrong, not the encoder
                raise StoreError(
                    f"{self.encoder.model}: returned {vectors.shape[1]}-d vectors but the store at "
                    f"{self.path} holds {self._dim}-d ones for the same fingerprint; "
                    "delete that folder or fix the encoder"
                )
            db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                [(k, v.tobytes()) for k, v in zip(keys, vectors, strict=True) if v.any()],
            )
            db.executemany("DELETE FROM pending WHERE key = ?", [(k,) for k in keys])

    def _run_batches(
        self,
        batches: Iterator[list[Item]],
        kind: Kind,
        commit: Callable[[list[Item], np.ndarray, list[str | None]], None],
    ) -> None:
        """Encode batches, at most ``encoder.max_concurrency`` in flight, committing each as it finishes.

        ``commit`` gets each batch with the vectors of its accepted texts and, per text, the
        encoder's reason for refusing it (None when embedded): a refused text never stops its batch
        or the others. The next batch is drawn from ``batches`` (and so claimed) only when a slot is
        free. On a failure, the batches already in flight are committed before it is raised.

        On Ctrl-C (:class:`KeyboardInterrupt`) no batch is drawn and no request or retry starts any
        more (the workers' event, :func:`~search_adaptor.encoders.base.cancelled_by`); the replies
        that arrive within :data:`_GRACE_S` are committed (they are paid for), and the interrupt is
        raised again. The workers are daemon threads, so a request still on the wire then (a stuck
        server) does not hold the process; a second Ctrl-C during the grace stops at once.
        """
        model = self.encoder.model

        def one(batch: list[Item]) -> tuple[np.ndarray, list[str | None]]:
            accepted: list[str | None] = [None] * len(batch)
            try:
                return check_vectors(self.encoder.encode_batch(batch, kind), model, len(batch)), accepted
            except InputsRejected as exc:
                reasons = [exc.rejected.get(i) for i in range(len(batch))]
                kept = [i for i, reason in enumerate(reasons) if reason is None]
                rows = np.asarray(exc.vectors, dtype=np.float32)
                if rows.shape[:1] != (len(batch),):
                    raise EncoderError(
                        f"{model}: asked for {len(batch)} embeddings, got shape {rows.shape}"
                    ) from exc
                return check_vectors(rows[kept], model, len(kept)), reasons

        workers = max(1, int(self.encoder.max_concurrency))
        if workers == 1 and self.encoder.provider in (LOCAL, *FOLDER_CLASSES):
            # a model on this machine, in this thread: Ctrl-C stops it at once (nothing is paid for);
            # an API's one request at a time goes through the workers, so its reply gets the grace
            for batch in batches:
                commit(batch, *one(batch))
            return
        cancel = threading.Event()
        pending: dict[Future, list[Item]] = {}

        def keep_answered(batch: list[Item], exc: BaseException | None) -> BaseException | None:
            """Commit the rows of a batch its failure left answered (:class:`BatchCutShort`: a
            request failed or was cancelled after others were answered, and paid for); the failure."""
            if not isinstance(exc, BatchCutShort):
                return exc
            vectors = np.asarray(exc.vectors, dtype=np.float32)
            kept = np.flatnonzero(np.isfinite(vectors).all(axis=1)).tolist()
            if kept:
                answered = check_vectors(vectors[kept], model, len(kept))
                commit([batch[i] for i in kept], answered, [None] * len(kept))
            return exc.cause

        def start(batch: list[Item]) -> None:
            fut: Future = Future()

            def run() -> None:
                with cancelled_by(cancel):
                    try:
                        fut.set_result(one(batch))
                    except BaseException as exc:  # handed to the main thread, which decides
                        fut.set_exception(exc)

            threading.Thread(target=run, name="search-adaptor-encode", daemon=True).start()
            pending[fut] = batch

        try:
            for batch in batches:
                start(batch)
                if len(pending) >= workers:
                    break
            failure: BaseException | None = None
            while pending:
                # a timeout, so that a Ctrl-C that reached another thread is still seen here promptly
                done, _ = wait(pending, timeout=_POLL_S, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is not None:
                        failure = failure or keep_answered(pending[fut], fut.exception())
                    else:
                        commit(pending[fut], *fut.result())
                    del pending[fut]  # only now: a commit cut short by Ctrl-C is done again below
                    nxt = None if failure else next(batches, None)
                    if nxt is not None:
                        start(nxt)
            if failure is not None:  # batches already in flight were kept; now report the failure
                raise failure
        except KeyboardInterrupt:
            cancel.set()
            deadline = time.monotonic() + _GRACE_S
            while pending:
                done, _ = wait(pending, timeout=deadline - time.monotonic(), return_when=FIRST_COMPLETED)
                if not done:
                    break
                for fut in done:
                    if fut.exception() is None:
                        commit(pending[fut], *fut.result())
                    else:
                        keep_answered(pending[fut], fut.exception())
                    del pending[fut]
            raise
