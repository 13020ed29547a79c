"""What an earlier version of search-adaptor left in the store still serves after an upgrade.

Claims an earlier version left in a store name this machine by its host name: a killed run's are
taken over at once, not after the lease.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from search_adaptor.store import EmbeddingStore
from test_store import CountingEncoder

# -- claims written by earlier versions -------------------------------------------------------------

TEXTS = [f"passage number {i}" for i in range(20)]
HAS_PROC = Path("/proc/self/stat").exists() and Path("/proc/sys/kernel/random/boot_id").exists()


def _claim_as_before(path: Path, text: str, pid: int, started: str | None = None) -> None:
    """A claim as versions before the pid-space tag wrote it: this machine named by its host name."""
    key = hashlib.sha256(f"document\x00{text}".encode()).digest()[:16]
    owner = uuid.uuid4().hex
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO pending VALUES (?, ?, ?, ?, ?)", (key, owner, socket.gethostname(), pid, time.time())
        )
        if started is not None:
            db.execute("INSERT INTO owners VALUES (?, ?)", (owner, started))
    db.close()


def _resume(root: Path, lease_s: float, wait_s: float) -> tuple[bool, CountingEncoder]:
    """Embed ``TEXTS``; whether that was still waiting after ``wait_s`` seconds (then released)."""
    encoder = CountingEncoder(batch_size=5)
    with EmbeddingStore(encoder, root, lease_s=lease_s) as store:
        resume = threading.Thread(target=store.embed, args=(TEXTS, "document"), daemon=True)
        resume.start()
        resume.join(timeout=wait_s)
        waited = resume.is_alive()
        if waited:
            with sqlite3.connect(store.path) as db:
                db.execute("DELETE FROM pending")
            db.close()
            resume.join(timeout=30)
    return waited, encoder


def test_a_killed_earlier_runs_claim_naming_this_host_lapses_at_once(tmp_path: Path) -> None:
    """Measured before the fix: 59.9 s (the whole lease) instead of 2.8 s."""
    with EmbeddingStore(CountingEncoder(), tmp_path) as store:
        path = store.path
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # reaped: its id names no process
    _claim_as_before(path, TEXTS[0], dead.pid)
    waited, encoder = _resume(tmp_path, lease_s=3600, wait_s=15)
    assert not waited, "the resume waited out the lease of a dead process's claim"
    assert TEXTS[0] in encoder.calls[0]


@pytest.mark.skipif(not HAS_PROC, reason="a process's start is read from Linux's /proc")
def test_an_earlier_runs_claim_naming_this_host_is_judged_by_its_process_and_start(tmp_path: Path) -> None:
    """A live process's claim is waited for; one whose id a later process took lapses at once."""
    with EmbeddingStore(CountingEncoder(), tmp_path) as store:
        path = store.path
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    _claim_as_before(path, TEXTS[0], os.getpid(), f"{boot} {start - 1}")  # an earlier process of this id
    _claim_as_before(path, TEXTS[1], os.getpid())  # this process: alive
    waited, encoder = _resume(tmp_path, lease_s=1.0, wait_s=15)
    assert not waited
    assert TEXTS[0] in encoder.calls[0]
    assert encoder.calls[-1] == (TEXTS[1],)  # waited for, until its lease ran out
