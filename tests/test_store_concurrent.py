"""Processes and threads sharing one store pay for each text once, and a dead claimant blocks nobody."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fake_providers import fake_vector
from search_adaptor.encoders.base import Encoder
from search_adaptor.store import EmbeddingStore

pytestmark = pytest.mark.slow  # processes racing on one store, with lease timers (CI runs it)

N_TEXTS = 300
BATCH = 10
TEXTS = [f"passage number {i}" for i in range(N_TEXTS)]
SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as separate runs would be


class SlowEncoder(Encoder):
    """Deterministic fake (the same vector in every process) that sleeps per batch and logs its texts.

    With ``hang_at``, the batch of that index signals ``hanging`` and never returns: a claimant that
    holds a claim and can then be killed or frozen.
    """

    provider = "fake"
    model = "slow-model"

    def __init__(
        self,
        delay: float = 0.02,
        batch_size: int = BATCH,
        max_concurrency: int = 1,
        hang_at: int | None = None,
        hanging: threading.Event | None = None,
    ) -> None:
        self.delay, self.batch_size, self.max_concurrency = delay, batch_size, max_concurrency
        self.hang_at, self.hanging = hang_at, hanging
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def config(self) -> dict:
        return {"provider": self.provider, "model": self.model, "dim": 8}

    def encode_batch(self, texts, kind):
        with self._lock:
            index = len(self.sent) // self.batch_size
            self.sent += texts
        if index == self.hang_at:
            self.hanging.set()
            time.sleep(600)
        time.sleep(self.delay)
        return np.stack([fake_vector(t, kind, 8) for t in texts])


def _embed(root: str, start: threading.Barrier, results, concurrency: int) -> None:
    try:
        encoder = SlowEncoder(max_concurrency=concurrency)
        with EmbeddingStore(encoder, root) as store:
            start.wait(timeout=60)  # a sibling that failed to open never arrives: report, not hang
            vectors = store.embed(TEXTS, "document")
        results.put((encoder.sent, vectors))
    except BaseException as exc:  # hand it over: the test reports it instead of waiting for a result
        results.put(exc)
        raise


def _hang(root: str, hanging: threading.Event, lease_s: float) -> None:
    encoder = SlowEncoder(hang_at=3, hanging=hanging)
    with EmbeddingStore(encoder, root, lease_s=lease_s) as store:
        store.embed(TEXTS, "document")


def _expected() -> np.ndarray:
    return np.stack([fake_vector(t, "document", 8) for t in TEXTS])


def test_a_store_opens_while_another_run_is_still_creating_it(tmp_path: Path) -> None:
    """Two runs creating the same store at once: the second one's switch to WAL mode met the first
    one's write in the still rollback-journal file, and SQLite said "database is locked" at once
    (seen in CI as a flaky failure of the test below). The second run must wait, as for any lock."""
    with EmbeddingStore(SlowEncoder(), tmp_path) as store:
        path = store.path
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("PRAGMA journal_mode=DELETE")
    first.execute("BEGIN IMMEDIATE")  # the first run, mid-way through its first write
    first.execute("CREATE TABLE early (a)")
    releaser = threading.Timer(0.5, lambda: (first.execute("COMMIT"), first.close()))
    releaser.start()
    try:
        with EmbeddingStore(SlowEncoder(), tmp_path) as store:
            assert store.embed(TEXTS[:3], "document").shape == (3, 8)
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        releaser.join()


def test_two_processes_embed_each_text_once(tmp_path: Path) -> None:
    start, results = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_embed, args=(str(tmp_path), start, results, concurrency))
        for concurrency in (1, 3)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    sent = Counter(t for texts, _ in outcomes for t in texts)
    assert sum(sent.values()) == N_TEXTS  # 600 without claims: both paid for every text
    assert set(sent) == set(TEXTS) and max(sent.values()) == 1
    for _, vectors in outcomes:  # each got every vector, its own and the other's, in order
        np.testing.assert_array_equal(vectors, _expected())


def _start_claimant(root: Path, lease_s: float) -> tuple[multiprocessing.Process, set[str]]:
    """A process that commits three batches, then holds its claim on the fourth without finishing."""
    hanging = SPAWN.Event()
    proc = SPAWN.Process(target=_hang, args=(str(root), hanging, lease_s))
    proc.start()
    assert hanging.wait(timeout=60), "the claimant never reached its fourth batch"
    with EmbeddingStore(SlowEncoder(), root) as store:
        committed = set(TEXTS) - set(store.missing("document", TEXTS))
    assert len(committed) == 3 * BATCH
    return proc, committed


def _pending_rows(root: Path) -> int:
    (path,) = root.glob("*/embeddings.sqlite")
    with sqlite3.connect(path) as db:
        n = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
    db.close()
    return n


def test_a_killed_claimants_claims_lapse_at_once(tmp_path: Path) -> None:
    proc, committed = _start_claimant(tmp_path, lease_s=60.0)
    assert _pending_rows(tmp_path) == BATCH
    proc.kill()  # SIGKILL: its claims stay in the table
    proc.join()  # reaped: a zombie would still answer to its process id
    survivor = SlowEncoder()
    started = time.monotonic()
    with EmbeddingStore(survivor, tmp_path, lease_s=60.0) as store:
        vectors = store.embed(TEXTS, "document")
    assert time.monotonic() - started < 30  # the dead owner was seen at once, not after the lease
    assert sorted(survivor.sent) == sorted(set(TEXTS) - committed)  # the hung batch included
    np.testing.assert_array_equal(vectors, _expected())
    assert _pending_rows(tmp_path) == 0


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_frozen_claimants_claims_lapse_after_the_lease(tmp_path: Path) -> None:
    lease = 1.0
    proc, committed = _start_claimant(tmp_path, lease_s=lease)
    os.kill(proc.pid, signal.SIGSTOP)  # alive, but neither working nor refreshing its claims
    try:
        survivor = SlowEncoder()
        started = time.monotonic()
        with EmbeddingStore(survivor, tmp_path, lease_s=lease) as store:
            vectors = store.embed(TEXTS, "document")
        waited = time.monotonic() - started
    finally:
        proc.kill()
        proc.join()
    assert waited >= lease * 0.5  # it waited for the lease (the last refresh was < lease/4 before)
    assert sorted(survivor.sent) == sorted(set(TEXTS) - committed)
    np.testing.assert_array_equal(vectors, _expected())


def test_a_batch_slower_than_the_lease_is_not_taken_over(tmp_path: Path) -> None:
    """Claims are refreshed while their batch runs; threads sharing one store object coordinate too."""
    encoder = SlowEncoder(delay=1.5)  # each batch takes three times the 0.5 s lease
    texts = TEXTS[: 3 * BATCH]
    with EmbeddingStore(encoder, tmp_path, lease_s=0.5) as store:
        out: list[np.ndarray] = []
        threads = [
            threading.Thread(target=lambda: out.append(store.embed(texts, "document"))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(encoder.sent) == sorted(texts)  # each text once, though both threads asked for all
    for vectors in out:
        np.testing.assert_array_equal(vectors, _expected()[: 3 * BATCH])
