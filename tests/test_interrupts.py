"""Ctrl-C during embedding: replies already paid for are kept, and the run stops within seconds.

The interrupt is a real SIGINT sent to this process (Linux hands it to the main thread, as a
terminal's Ctrl-C would) by a timer thread once the fake server has received the requests wanted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fake_providers import FakeProvider, Fault, fake_encoder
from search_adaptor.encoders.base import Encoder, cancelled_by
from search_adaptor.encoders.http import Cancelled, HttpClient, RetryPolicy
from search_adaptor.store import _GRACE_S, EmbeddingStore

BATCH = 4
WORKERS = 4
TEXTS = [f"passage number {i}" for i in range(10 * BATCH)]
pytestmark = pytest.mark.usefixtures("sigint_raises")


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, as at a terminal: a process started in the background
    by a shell without job control (as CI may run the tests) inherits SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_when(ready: Callable[[], bool], *, after: float = 0.0, times: int = 1) -> threading.Thread:
    """Send SIGINT to this process ``times`` times (``after`` seconds apart) once ``ready()`` holds."""

    def run() -> None:
        deadline = time.monotonic() + 10
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.005)
        for _ in range(times):
            time.sleep(after)
            os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=run, daemon=True)
    timer.start()
    return timer


def _encoder(fake: FakeProvider, workers: int = WORKERS) -> Encoder:
    """The fake's encoder, sending ``workers`` requests of ``BATCH`` texts at once."""
    return fake_encoder(fake, model="fake-model", batch_size=BATCH, max_concurrency=workers)


def _served(fake: FakeProvider) -> set[str]:
    """The texts the fake has answered."""
    return {text for text, _mode in fake.served}


@pytest.mark.parametrize("workers", [WORKERS, 1])
def test_ctrl_c_keeps_the_replies_in_flight_and_the_rerun_sends_only_the_rest(tmp_path, workers) -> None:
    """The replies on the wire at Ctrl-C are paid for: they are kept, whether several requests are in
    flight or one (``max_concurrency=1`` cut its request), and the re-run sends only the rest."""
    with FakeProvider("openai-compatible", delay=0.5) as fake:
        encoder = _encoder(fake, workers=workers)
        with EmbeddingStore(encoder, tmp_path) as store:
            timer = _sigint_when(lambda: len(fake.calls) >= workers, after=0.1)
            start = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                store.embed(TEXTS, "document")
            took = time.monotonic() - start
            timer.join()
            assert took < 0.5 + _GRACE_S  # the replies came within the grace, not after all batches
            assert len(fake.calls) == workers  # no request started after Ctrl-C
            first = _served(fake)
            assert len(first) == workers * BATCH  # the requests in flight were answered (paid)...
            assert set(store.missing("document", TEXTS)) == set(TEXTS) - first  # ...and their vectors kept

            calls = len(fake.calls)
            store.embed(TEXTS, "document")
        resent = {text for call in fake.calls[calls:] for text in call.texts}
        assert resent == set(TEXTS) - first  # the re-run pays only for what was never answered
        assert all(count == 1 for count in fake.served.values())


def test_ctrl_c_keeps_the_texts_answered_before_a_batchs_image_request_is_cancelled(tmp_path) -> None:
    """A batch of texts and an image goes in two requests: with Ctrl-C pressed while the texts' was
    on the wire, its reply came within the grace, the image's request was cancelled, and the whole
    batch was dropped with it (the texts paid for, and again by the re-run)."""
    from search_adaptor.images import ImageRef
    from test_images import png

    (tmp_path / "red.png").write_bytes(png(seed=8))
    items = ["first text", ImageRef.of("red.png", tmp_path), "second text"]
    with FakeProvider("cohere", delay=0.5) as fake:
        encoder = fake_encoder(fake, model="embed-v4.0", max_concurrency=1)
        with EmbeddingStore(encoder, tmp_path / "cache") as store:
            timer = _sigint_when(lambda: len(fake.calls) >= 1, after=0.1)
            with pytest.raises(KeyboardInterrupt):
                store.embed(items, "document")
            timer.join()
            assert len(fake.calls) == 1  # the texts' request, answered; the image's never sent
            assert store.missing("document", items) == [items[1]]


# A run in its own process: only there does a thread still waiting for its reply show (it kept the
# process alive past the KeyboardInterrupt until the reply came).
RUN = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, whatever the parent ignores
from search_adaptor.encoders.registry import make_encoder
from search_adaptor.store import EmbeddingStore

url, key, root, workers = sys.argv[1:5]
encoder = make_encoder(
    "openai-compatible", "fake-model", base_url=url, api_key=key, batch_size=4, max_concurrency=int(workers),
    timeout=60,
)
with EmbeddingStore(encoder, root) as store:
    store.embed([f"passage number {i}" for i in range(40)], "document")
"""


@pytest.mark.parametrize("workers", [1, WORKERS])
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_with_a_stuck_server_ends_the_process_within_the_grace(
    tmp_path, presses: int, workers: int
) -> None:
    with FakeProvider("openai-compatible", delay=15) as fake:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN, fake.url, fake.key, str(tmp_path), str(workers)], env=env
        )
        deadline = time.monotonic() + 30
        while len(fake.calls) < workers:
            assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
            time.sleep(0.01)
        start = time.monotonic()
        for _ in range(presses):
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            proc.kill()
        took = time.monotonic() - start
        assert proc.returncode == -signal.SIGINT  # an uncaught KeyboardInterrupt
        assert took < (_GRACE_S + 1.5 if presses == 1 else 1.5)  # a second press does not wait the grace out
        assert len(fake.calls) == workers  # nothing was sent after Ctrl-C


def test_cancelling_ends_a_retry_wait_and_sends_nothing_more() -> None:
    with FakeProvider("openai-compatible") as fake:
        client = HttpClient(
            "fake",
            fake.url,
            auth=lambda: {"authorization": f"Bearer {fake.key}"},
            credential_hint="$KEY",
            retry=RetryPolicy(max_attempts=8, max_total_wait=600),
        )
        fake.schedule(Fault.rate_limited(retry_after="60"))  # the server asks for a minute's wait
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        start = time.monotonic()
        with cancelled_by(cancel), pytest.raises(Cancelled, match="interrupted before a retry"):
            client.post("/embeddings", {"model": "fake-model", "input": ["a"]}, parse=lambda body: body)
        assert time.monotonic() - start < 2
        assert len(fake.calls) == 1
        with cancelled_by(cancel), pytest.raises(Cancelled, match="not sent"):
            client.post("/embeddings", {"model": "fake-model", "input": ["a"]}, parse=lambda body: body)
        assert len(fake.calls) == 1
        client.close()
