"""What an earlier version of search-adaptor left in the store still serves after an upgrade.

The API encoders' fingerprint (the name of their store's file) changed when texts began to be cut by
tokens (4d01bca, 30 Nov 2026): a store filled before it was not read, and every text was paid for
again. A text the old and the new rule send alike has the same vector, so it is taken from the old
store; a text either rule cuts otherwise is embedded anew. And claims an earlier version left in a
store name this machine by its host name: a killed run's are taken over at once, not after the lease.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fake_providers import FakeProvider, fake_encoder
from search_adaptor.data import Dataset
from search_adaptor.embed import embed_dataset, plan_embedding
from search_adaptor.encoders.registry import make_encoder
from search_adaptor.store import EmbeddingStore, StoreError, StoreStats
from test_store import CountingEncoder

# Fingerprints and configs as search-adaptor 4d01bca^ recorded them (its encoders' config() and
# fingerprint, run with these arguments): the files their stores were written to.
EARLIER = [
    ("openai", None, {}, "openai:text-embedding-3-small:3219e4fe434a"),
    ("openai", "text-embedding-3-large", {"dimensions": 256}, "openai:text-embedding-3-large:01a66d294a78"),
    (
        "openai",
        None,
        {"query_prompt": "q: ", "max_chars": 1000},
        "openai:text-embedding-3-small:acf1aa5027fe",
    ),
    ("openai", None, {"max_chars": None}, "openai:text-embedding-3-small:d93d67ec5f23"),
    ("azure-openai", "dep", {"base_url": "https://r.openai.azure.com"}, "azure-openai:dep:a84b9c1041b5"),
    (
        "openai-compatible",
        "nomic-embed-text",
        {"base_url": "http://localhost:11434/v1"},
        "openai-compatible:nomic-embed-text:0473a6fabfbd",
    ),
    ("gemini", None, {}, "gemini:gemini-embedding-001:adec563be64b"),
    ("gemini", None, {"dimensions": 768}, "gemini:gemini-embedding-001:db574f7304ef"),
    ("gemini", None, {"max_chars": 5000}, "gemini:gemini-embedding-001:9c2a5d84d64d"),
    ("vertex", None, {"auto_truncate": False, "project": "p"}, "vertex:text-embedding-005:9ebb8a167f00"),
]
#: what those versions recorded for the providers tested against a fake (no URL in their config)
OLD_CONFIG: dict[str, dict[str, Any]] = {
    "openai": {
        "provider": "openai",
        "model": "text-embedding-3-small",
        "dimensions": None,
        "max_chars": 24576,
        "query_prompt": "",
        "document_prompt": "",
    },
    "gemini": {
        "provider": "gemini",
        "model": "gemini-embedding-001",
        "dimensions": None,
        "max_chars": None,
        "query_prompt": "",
        "document_prompt": "",
        "task_types": {"document": "RETRIEVAL_DOCUMENT", "query": "RETRIEVAL_QUERY"},
    },
}
OLD_FINGERPRINT = {p: fp for p, model, kw, fp in EARLIER if model is None and not kw}

SHORT = ["vitamin D and bone fractures", "a short passage", ""]
#: 16,500 characters, 10,500 tokens by the estimate: sent whole by the old rule (24,576 characters),
#: cut by the new one (8192 tokens for OpenAI, 2048 for Gemini)
DIGITS = "0123456789 " * 1500
#: 28,000 characters of letters: the old OpenAI rule and the new one both cut it to 24,576 characters
#: (8192 tokens of a third each); Gemini's old rule sent it whole, its new one cuts it
LETTERS = "abc " * 7000
#: per provider: the texts both rules send alike (reused) and those they send otherwise (embedded anew)
ALIKE = {"openai": [*SHORT, LETTERS], "gemini": SHORT}
OTHERWISE = {"openai": [DIGITS], "gemini": [DIGITS, LETTERS]}


def _old_rule(provider: str, text: str) -> str:
    """What versions before 4d01bca sent: the text cut to ``max_chars`` characters, never empty."""
    max_chars = OLD_CONFIG[provider]["max_chars"]
    return (text if max_chars is None else text[:max_chars]) or " "


def _write_old_store(root: Path, provider: str, fake: FakeProvider, texts: dict[str, list[str]]) -> Path:
    """A store as versions before 4d01bca wrote it: its file named by their fingerprint, only the meta
    and vectors tables, each vector keyed by the text as given, the vector of what their rule sent."""
    fingerprint = OLD_FINGERPRINT[provider]
    path = root / hashlib.sha256(fingerprint.encode()).hexdigest()[:20] / "embeddings.sqlite"
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    db.execute("CREATE TABLE vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")
    meta = {"fingerprint": fingerprint, "config": OLD_CONFIG[provider]}
    db.execute("INSERT INTO meta VALUES ('encoder', ?)", (json.dumps(meta, sort_keys=True),))
    db.execute("INSERT INTO meta VALUES ('dim', ?)", (str(fake.dim),))
    for kind, items in texts.items():
        vectors = fake.expected([_old_rule(provider, t) for t in items], kind).astype(np.float32)
        keys = [hashlib.sha256(f"{kind}\x00{t}".encode()).digest()[:16] for t in items]
        rows = [(k, v.tobytes()) for k, v in zip(keys, vectors, strict=True)]
        db.executemany("INSERT INTO vectors VALUES (?, ?)", rows)
    db.close()
    return path


def _old_vectors(path: Path, kind: str, texts: list[str]) -> np.ndarray:
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT key, vec FROM vectors").fetchall())
    db.close()
    keys = [hashlib.sha256(f"{kind}\x00{t}".encode()).digest()[:16] for t in texts]
    return np.stack([np.frombuffer(rows[k], dtype=np.float32) for k in keys])


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    return names


@pytest.mark.parametrize(("provider", "model", "options", "fingerprint"), EARLIER)
def test_the_earlier_versions_an_encoder_names_are_those_earlier_versions_recorded(
    provider: str, model: str | None, options: dict[str, Any], fingerprint: str
) -> None:
    encoder = make_encoder(provider, model, plan_only=True, **options)
    assert encoder.fingerprint != fingerprint
    assert fingerprint in [v.encoder.fingerprint for v in encoder.earlier_versions()]


def test_an_encoder_whose_record_never_changed_names_no_earlier_version() -> None:
    """Providers that cut texts themselves kept their fingerprint: nothing to look for."""
    for provider, options in (("vertex", {"project": "p"}), ("voyage", {}), ("cohere", {})):
        assert make_encoder(provider, plan_only=True, **options).earlier_versions() == []


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_a_store_filled_before_the_cut_by_tokens_is_reused_for_texts_sent_alike(
    tmp_path: Path, provider: str
) -> None:
    """The upgrade sweep's case: `embed` after the upgrade sent (and paid for) every text again."""
    alike, otherwise = ALIKE[provider], OTHERWISE[provider]
    texts = [*alike, *otherwise]
    with FakeProvider(provider) as fake:
        old_path = _write_old_store(tmp_path, provider, fake, {"document": texts})
        encoder = fake_encoder(fake)
        with EmbeddingStore(encoder, tmp_path) as store:
            assert store.path != old_path
            assert store.missing("document", texts) == otherwise  # what a dry run counts as to send
            stats = StoreStats()
            vectors = store.embed(texts, "document", stats=stats)
        sent = encoder.prepare(otherwise, "document")
        assert fake.texts_sent() == sent  # the texts cut otherwise, and only they
        assert sent != [_old_rule(provider, t) for t in otherwise]
        assert (stats.encoded, stats.cached, stats.adopted) == (len(otherwise), len(alike), len(alike))
        np.testing.assert_array_equal(vectors[: len(alike)], _old_vectors(old_path, "document", alike))
        np.testing.assert_allclose(vectors, fake.expected(encoder.prepare(texts, "document"), "document"))

        again = StoreStats()  # the reused vectors were copied: the next run reads this store alone
        with EmbeddingStore(fake_encoder(fake), tmp_path) as store:
            np.testing.assert_array_equal(store.embed(texts, "document", stats=again), vectors)
        assert (again.encoded, again.cached, again.adopted) == (0, len(texts), 0)
        assert len(fake.texts_sent()) == len(sent)
    assert _tables(old_path) == {"meta", "vectors"}  # the earlier store was only read


def test_a_dry_run_counts_what_an_earlier_versions_store_holds_as_cached(tmp_path: Path) -> None:
    """`embed --dry-run` said "0 texts cached, 418 would be sent" over a full store of 0.x."""
    docs = [*ALIKE["openai"], *OTHERWISE["openai"]]
    queries = {"q1": "what about vitamin D", "q2": "0123456789 " * 1300}  # 9,100 tokens: cut now
    data = Dataset("tiny", tmp_path, [f"d{i}" for i in range(len(docs))], docs, queries, {"test": {}})
    with FakeProvider("openai") as fake:
        _write_old_store(tmp_path / "cache", "openai", fake, {"document": docs, "query": [*queries.values()]})
        plan = plan_embedding(
            data, make_encoder("openai", base_url=fake.url, plan_only=True), tmp_path / "cache"
        )
        assert (plan.cached, plan.to_send) == (len(ALIKE["openai"]) + 1, 2)
        embeddings = embed_dataset(data, fake_encoder(fake), tmp_path / "cache", progress=False)
        assert (embeddings.stats.encoded, embeddings.stats.adopted) == (2, plan.cached)
        assert len(fake.texts_sent()) == 2


def test_a_damaged_earlier_versions_store_is_refused_as_any_store_is_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    with FakeProvider("openai") as fake:
        old_path = _write_old_store(tmp_path, "openai", fake, {"document": SHORT})
        old_path.write_bytes(b"not a database" * 100)
        with EmbeddingStore(fake_encoder(fake), tmp_path) as store:
            for _ in range(2):  # and again: never passed over
                with pytest.raises(StoreError, match=r"damaged embedding store.*delete the folder") as caught:
                    store.embed(SHORT, "document")
                assert str(old_path) in str(caught.value)
        assert fake.texts_sent() == []


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
