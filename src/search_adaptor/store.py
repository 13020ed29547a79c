"""Persistent embedding store: each (embedding space, kind, text) is embedded once, ever.

Why SQLite: every finished batch is committed in its own transaction (WAL journal), so a process
killed at any moment loses at most the batches still in flight, and the next run sends only what is
missing. One database file per encoder fingerprint keeps spaces apart and makes them easy to delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from search_adaptor.encoders.base import Encoder, Kind, check_vectors
from search_adaptor.files import default_cache_dir

_SQL_VARS = 900  # stay under SQLite's host-parameter limit on old builds


def text_key(kind: Kind, text: str) -> bytes:
    """Cache key of one text: queries and documents are kept apart (providers embed them differently)."""
    return hashlib.sha256(f"{kind}\x00{text}".encode()).digest()[:16]


@dataclass
class StoreStats:
    """What one :meth:`EmbeddingStore.embed` call did: the proof that nothing was paid for twice."""

    requested: int = 0
    unique: int = 0
    cached: int = 0
    encoded: int = 0
    batches: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, other: StoreStats) -> None:
        for name in ("requested", "unique", "cached", "encoded", "batches"):
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
    """

    def __init__(self, encoder: Encoder, root: str | os.PathLike | None = None) -> None:
        self.encoder = encoder
        self.root = Path(root) if root is not None else default_cache_dir()
        safe = hashlib.sha256(encoder.fingerprint.encode()).hexdigest()[:20]
        self.path = self.root / safe / "embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(  # several processes (Ray actors) may write: wait for their locks
            self.path, check_same_thread=False, isolation_level=None, timeout=60
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")
        self._dim = self._meta_dim()
        meta = json.dumps({"fingerprint": encoder.fingerprint, "config": encoder.config()}, sort_keys=True)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('encoder', ?)", (meta,))

    def _meta_dim(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE name='dim'").fetchone()
        return int(row[0]) if row else None

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, kind: Kind, texts: Sequence[str]) -> dict[bytes, np.ndarray]:
        """Cached vectors for the texts that have one, keyed by :func:`text_key`."""
        keys = list({text_key(kind, t) for t in texts})
        found: dict[bytes, np.ndarray] = {}
        for i in range(0, len(keys), _SQL_VARS):
            chunk = keys[i : i + _SQL_VARS]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk
                ).fetchall()
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def missing(self, kind: Kind, texts: Sequence[str]) -> list[str]:
        """Unique texts that would be sent to the encoder (in first-seen order)."""
        have = self.lookup(kind, texts)
        out, seen = [], set()
        for t in texts:
            k = text_key(kind, t)
            if k not in have and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def _write(self, kind: Kind, texts: Sequence[str], vectors: np.ndarray) -> None:
        rows = [(text_key(kind, t), v.tobytes()) for t, v in zip(texts, vectors, strict=False)]
        with self._lock:
            if self._dim is None:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('dim', ?)", (str(vectors.shape[1]),))
                self._dim = vectors.shape[1]
            elif vectors.shape[1] != self._dim:
                raise ValueError(
                    f"{self.encoder.model}: returned {vectors.shape[1]}-d vectors but the store at "
                    f"{self.path} holds {self._dim}-d ones for the same fingerprint; "
                    "delete that folder or fix the encoder"
                )
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            self._db.execute("COMMIT")

    def embed(
        self,
        texts: Sequence[str],
        kind: Kind,
        progress: Callable[[int], None] | None = None,
        stats: StoreStats | None = None,
    ) -> np.ndarray:
        """Vectors for ``texts`` (in order), encoding and committing only what is not cached yet.

        Returns
        -------
        ndarray of shape (len(texts), dim), float32
        """
        todo = self.missing(kind, texts)
        local = StoreStats(requested=len(texts), unique=len({text_key(kind, t) for t in texts}))
        local.cached = local.unique - len(todo)
        batches = [
            todo[i : i + self.encoder.batch_size] for i in range(0, len(todo), self.encoder.batch_size)
        ]
        for batch, vectors in self._run_batches(batches, kind):
            self._write(kind, batch, vectors)
            local.encoded += len(batch)
            local.batches += 1
            if progress is not None:
                progress(len(batch))
        local.by_kind[kind] = local.encoded
        if stats is not None:
            stats.add(local)
        have = self.lookup(kind, texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        return np.stack([have[text_key(kind, t)] for t in texts])

    def _run_batches(self, batches: list[list[str]], kind: Kind) -> Iterator[tuple[list[str], np.ndarray]]:
        """Encode batches, at most ``encoder.max_concurrency`` in flight, yielding each as it finishes."""

        def one(batch: list[str]) -> np.ndarray:
            return check_vectors(self.encoder.encode_batch(batch, kind), self.encoder.model, len(batch))

        workers = max(1, int(self.encoder.max_concurrency))
        if workers == 1:
            for batch in batches:
                yield batch, one(batch)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: dict[Future, list[str]] = {}
            queue = iter(batches)
            try:
                for batch in queue:
                    pending[pool.submit(one, batch)] = batch
                    if len(pending) >= workers:
                        break
                failure: BaseException | None = None
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        batch = pending.pop(fut)
                        if fut.exception() is not None:
                            failure = failure or fut.exception()
                            continue
                        yield batch, fut.result()  # committed by the caller before the next one
                        nxt = None if failure else next(queue, None)
                        if nxt is not None:
                            pending[pool.submit(one, nxt)] = nxt
                if failure is not None:  # batches already in flight were kept; now report the failure
                    raise failure
            finally:
                for fut in pending:
                    fut.cancel()
