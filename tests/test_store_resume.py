"""A run killed with SIGKILL mid-embedding resumes by sending only what was never committed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from fake_providers import FakeProvider, fake_encoder
from search_adaptor.store import EmbeddingStore

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
