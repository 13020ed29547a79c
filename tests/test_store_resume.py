"""A run killed with SIGKILL mid-embedding resumes by sending only what was never committed, and
the claims it left behind never hold the resume up (its process id reused, an earlier version's
store, a claim row edited by hand)."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import search_adaptor.store as store_mod
from fake_providers import FakeProvider, fake_encoder
from search_adaptor.store import EmbeddingStore, text_key
from test_store import CountingEncoder

pytestmark = pytest.mark.slow  # a process killed mid-run and resumed (CI runs it)

N_TEXTS = 300
BATCH = 10
CONCURRENCY = 2
KILL_AFTER_SERVED = 8 * BATCH

# The run under test: a separate process, so that it can be killed without warning.
RUN = """
import sys
from search_adaptor.encoders.registry import make_encoder
from search_adaptor.store import EmbeddingStore

url, root = sys.argv[1], sys.argv[2]
n, batch, workers = (int(a) for a in sys.argv[3:6])
options = {"base_url": url, "batch_size": batch, "max_concurrency": workers}
encoder = make_encoder("openai-compatible", "fake-model", **options)
with EmbeddingStore(encoder, root) as store:
    store.embed([f"passage number {i}" for i in range(n)], "document")
"""


def _run_args(fake: FakeProvider, root: str) -> list[str]:
    return [sys.executable, "-c", RUN, fake.url, root, str(N_TEXTS), str(BATCH), str(CONCURRENCY)]


def test_killed_run_resumes_without_resending_committed_texts(tmp_path) -> None:
    texts = [f"passage number {i}" for i in range(N_TEXTS)]
    with FakeProvider("openai-compatible", delay=0.05) as fake:
        env = {**os.environ, "OPENAI_COMPATIBLE_API_KEY": fake.key}
        env.pop("OPENAI_API_KEY", None)

        proc = subprocess.Popen(_run_args(fake, str(tmp_path)), env=env)
        deadline = time.monotonic() + 20
        while sum(fake.served.values()) < KILL_AFTER_SERVED:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.002)
        proc.kill()  # SIGKILL: no cleanup, no flush, no finally blocks
        proc.wait()
        served_first = Counter(t for (t, _mode), count in fake.served.items() for _ in range(count))
        calls_first = len(fake.calls)

        encoder = fake_encoder(fake, model="fake-model", batch_size=BATCH, max_concurrency=CONCURRENCY)
        with EmbeddingStore(encoder, tmp_path) as store:
            missing = store.missing("document", texts)
        committed = set(texts) - set(missing)
        assert len(committed) >= KILL_AFTER_SERVED - CONCURRENCY * BATCH
        assert missing, "the run finished before the kill"
        assert set(served_first) >= committed  # nothing is committed that was not served
        # Served but lost: at most the batches that were in flight when the process died.
        assert len(set(served_first) - committed) <= CONCURRENCY * BATCH

        subprocess.run(_run_args(fake, str(tmp_path)), env=env, check=True, timeout=60)
        resent = [t for call in fake.calls[calls_first:] for t in call.texts]
        assert sorted(resent) == sorted(missing)  # only the uncommitted texts, each once

        served_twice = [t for (t, _mode), count in fake.served.items() if count > 1]
        assert len(served_twice) <= CONCURRENCY * BATCH
        assert {t for t, _mode in fake.served} == set(texts)

        calls_before_read = len(fake.calls)
        with EmbeddingStore(encoder, tmp_path) as store:
            vectors = store.embed(texts, "document")
        assert len(fake.calls) == calls_before_read
        np.testing.assert_allclose(vectors, fake.expected(texts, "document"), atol=1e-6)


TEXTS = [f"passage number {i}" for i in range(20)]
KEYS = [text_key("document", t) for t in TEXTS]
HAS_PROC = Path("/proc/self/stat").exists() and Path("/proc/sys/kernel/random/boot_id").exists()


def _sql(path: Path, *statements: tuple[str, tuple]) -> None:
    with sqlite3.connect(path) as db:
        for sql, params in statements:
            db.execute(sql, params)
    db.close()


def _rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        n = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    db.close()
    return n


def _this_process() -> tuple[str, int]:
    """This machine's boot id and this process's start time (field 22 of its stat, clock ticks)."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return boot, int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])


def _resume(root: Path, wait_s: float) -> tuple[bool, CountingEncoder]:
    """Embed ``TEXTS`` under an hour's lease; whether that was still waiting after ``wait_s`` seconds.

    A resume still waiting then is released (its texts' claims deleted), so that it ends either way.
    """
    encoder = CountingEncoder(batch_size=5)
    with EmbeddingStore(encoder, root, lease_s=3600) as store:
        out: list[np.ndarray] = []
        resume = threading.Thread(target=lambda: out.append(store.embed(TEXTS, "document")), daemon=True)
        resume.start()
        resume.join(timeout=wait_s)
        waited = resume.is_alive()
        if waited:
            _sql(store.path, ("DELETE FROM pending", ()))
            resume.join(timeout=30)
    assert len(out) == 1 and out[0].shape == (len(TEXTS), encoder.dim)
    return waited, encoder


@pytest.mark.skipif(not HAS_PROC, reason="a process's start is read from Linux's /proc")
@pytest.mark.parametrize("earlier", ["process", "boot"])
def test_claims_of_a_killed_run_whose_process_id_is_reused_lapse_at_once(
    tmp_path, monkeypatch, earlier
) -> None:
    """A killed run's claims name its process id; once another process has that id (pid 1 in a restarted
    container, any recycled id), the resume waited the whole lease (60 s by default) for texts nobody
    was embedding. Here this test's own process has the killed run's id, but not its start."""
    boot, start = _this_process()
    theirs = f"{boot} {start - 1}" if earlier == "process" else f"{uuid.uuid4()} {start}"
    with EmbeddingStore(CountingEncoder(batch_size=5), tmp_path, lease_s=3600) as killed:
        with monkeypatch.context() as patch:  # the killed run: claims a batch, then dies without a word
            patch.setattr(store_mod, "_started", lambda pid: theirs, raising=False)
            claimed, _ = killed._claim("the killed run", KEYS, 0)
        path = killed.path
    assert claimed == KEYS[:5] and _rows(path, "pending") == 5
    waited, encoder = _resume(tmp_path, wait_s=20)
    assert not waited, "the resume waited for claims whose process id now names another process"
    assert sorted(t for call in encoder.calls for t in call) == sorted(TEXTS)
    assert encoder.calls[0] == tuple(TEXTS[:5])  # at once: the first batch, not after the lease
    assert _rows(path, "pending") == 0 and _rows(path, "owners") == 0  # the killed run's row too


@pytest.mark.skipif(not HAS_PROC, reason="a process's start is read from Linux's /proc")
def test_claims_of_a_live_process_are_waited_for(tmp_path) -> None:
    """The start a claim records is the one the resume reads: a live claimant's texts are not taken."""
    with EmbeddingStore(CountingEncoder(batch_size=5), tmp_path, lease_s=3600) as other:
        assert other._claim("a run of this process", KEYS, 0)[0] == KEYS[:5]
        path = other.path
    boot, start = _this_process()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT started FROM owners").fetchall() == [(f"{boot} {start}",)]
    db.close()
    waited, encoder = _resume(tmp_path, wait_s=1.0)
    assert waited
    assert sorted(t for call in encoder.calls[:3] for t in call) == sorted(TEXTS[5:])
    assert encoder.calls[3:] == [tuple(TEXTS[:5])]  # only once their claims were gone


def test_an_earlier_versions_store_opens_and_resumes(tmp_path, monkeypatch) -> None:
    """A store written before the owners table existed: it opens (read-only too), gains the table, and
    its claims, which record no start and name this machine by its host name, as those versions did,
    are judged as before: by process id, then by lease."""
    with EmbeddingStore(CountingEncoder(batch_size=5), tmp_path) as store:
        first = store.embed(TEXTS[:5], "document")
        path = store.path
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # reaped: its id names no process
    now = time.time()
    _sql(
        path,
        ("DROP TABLE IF EXISTS owners", ()),
        (
            "INSERT INTO pending VALUES (?, 'an old run', ?, ?, ?)",
            (KEYS[5], socket.gethostname(), dead.pid, now),
        ),
        (
            "INSERT INTO pending VALUES (?, 'an old run', ?, ?, ?)",
            (KEYS[6], socket.gethostname(), os.getpid(), now),
        ),
    )
    with monkeypatch.context() as patch:
        patch.setattr(store_mod, "_can_write", lambda p: False)
        with EmbeddingStore(CountingEncoder(batch_size=5), tmp_path) as store:
            assert store.read_only and store.missing("document", TEXTS) == TEXTS[5:]
    encoder = CountingEncoder(batch_size=5)
    with EmbeddingStore(encoder, tmp_path, lease_s=1.0) as store:
        vectors = store.embed(TEXTS, "document")
    assert TEXTS[5] in encoder.calls[0]  # its process is gone: taken at once
    assert encoder.calls[-1] == (TEXTS[6],)  # its process runs: waited for, until its lease ran out
    assert sorted(t for call in encoder.calls for t in call) == sorted(TEXTS[5:])
    np.testing.assert_array_equal(vectors[:5], first)  # served from the store
    assert _rows(path, "pending") == 0 and _rows(path, "owners") == 0


def test_a_claim_row_edited_by_hand_is_no_error(tmp_path) -> None:
    """Values of another type in a claim row: a process id or time that is not a number, an id past
    any process's, or a start that is not text (judged as a claim without one: by id and lease)."""
    with EmbeddingStore(CountingEncoder(batch_size=5), tmp_path) as store:
        assert store._claim("an edited run", KEYS[:1], 0)[0] == KEYS[:1]
        path = store.path
    host, now = store_mod._HOST, time.time()
    _sql(
        path,
        ("UPDATE owners SET started = x'00ff'", ()),  # a blob: TEXT affinity keeps it one
        ("INSERT INTO pending VALUES (?, 'x', ?, 'pid one', ?)", (KEYS[1], host, now)),
        ("INSERT INTO pending VALUES (?, 'x', ?, ?, 'today')", (KEYS[2], host, os.getpid())),
        ("INSERT INTO pending VALUES (?, 'x', ?, ?, ?)", (KEYS[3], host, 2**62, now)),
        ("INSERT INTO pending VALUES (?, 'x', ?, ?, x'00')", (KEYS[4], host, os.getpid())),
    )
    encoder = CountingEncoder(batch_size=5)
    with EmbeddingStore(encoder, tmp_path, lease_s=1.0) as store:
        store.embed(TEXTS, "document")
    assert encoder.calls[0] == tuple(TEXTS[1:6])  # the unreadable claims are nobody's
    assert encoder.calls[-1] == (TEXTS[0],)  # this process runs: waited for, until its lease ran out
    assert sorted(t for call in encoder.calls for t in call) == sorted(TEXTS)
