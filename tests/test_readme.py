"""The README runs as written: every ``python``, ``bash`` and ``sh`` block, in order, in one workspace.

pytest-codeblocks reads the blocks (and the ``<!--pytest.mark.skip(reason="...")-->`` comment that
may precede one); this module runs them the way a reader would, one after another from the root of
a checkout, each Python block in a fresh interpreter and each shell block in ``bash -e``. One test
per block; selecting a later block runs the earlier ones first, since the README builds on itself
(the quickstart's ``fit`` trains the adapter the later sections use).

The workspace stands in for a checkout next to ``shared/``, so the README's paths resolve as they
do on a developer's machine, on data made here:

- ``../shared/data/scifact`` is a tiny BEIR dataset (:func:`write_tiny_beir`), not SciFact;
- ``DATA_DIR``, ``OUT_DIR`` and ``VECTORS_DIR``, the README's placeholders, are folders of those
  names: ``DATA_DIR`` the same tiny dataset, ``VECTORS_DIR`` precomputed vectors for it;
- ``search-adaptor``, ``python`` and ``python3`` on ``PATH`` run the interpreter running the tests,
  with this checkout's package first on its path; the embedding store is the workspace's own;
  ``HF_HUB_OFFLINE=1`` as on a machine without the Hugging Face hub;
- the OpenAI API (``OPENAI_BASE_URL``) and the openai-compatible server are local fakes of their
  wire formats (``fake_providers.py``); a Cohere key is set for the dry run, which sends nothing;
- a line starting ``search-adaptor serve`` runs in the background until the README is done, and
  the rest of its block starts once the server answers ``/health``: blocks after it (``curl``, or a
  Python client) find the server as a reader's second terminal would.

Text the runner changes is listed in :func:`substitutions`; each entry must match the README, so a
stale one fails. No block prints the ``Loading weights`` bar of transformers (model loading is
quiet unless ``--verbose``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import search_adaptor
from fake_providers import KEY_ENV, FakeProvider
from tiny_models import tiny_bert

codeblocks = pytest.importorskip("pytest_codeblocks")

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = {"python", "bash", "sh"}
BLOCKS = [b for b in codeblocks.extract_from_file(README) if b.syntax in RUNNABLE]
BLOCK_TIMEOUT_S = 600
SERVER_START_S = 180
_SKIP = re.compile(r"""pytest\.mark\.skip\(reason=(["'])(.+)\1\)""")
#: Blocks (by a command they run) whose model loading still prints, and where the fix belongs.
LOUD_LOADS: dict[str, str] = {}  # command -> why it may print model loading (none today)


class LoadNoise(AssertionError):
    """A block printed what transformers prints while a model loads (quiet unless --verbose)."""


TOPICS = [
    ("vitamin D", "bone fractures"),
    ("vaccines", "the immune system"),
    ("sleep", "memory"),
    ("coffee", "heart disease"),
    ("exercise", "depression"),
    ("smoking", "lung cancer"),
    ("sugar", "diabetes"),
    ("antibiotics", "gut bacteria"),
    ("air pollution", "asthma"),
    ("statins", "cholesterol"),
    ("alcohol", "liver disease"),
    ("obesity", "blood pressure"),
]


def write_tiny_beir(root: Path) -> Path:
    """A BEIR folder small enough to embed and train on in seconds: 36 documents, 36 queries.

    Three documents and three queries per topic (``TOPICS``); each query is relevant to one
    document of its topic; two queries per topic are in ``train``, one in ``test``.
    """
    (root / "qrels").mkdir(parents=True)
    docs, queries, qrels = [], [], {"train": [], "test": []}
    for t, (cause, effect) in enumerate(TOPICS):
        for j in range(3):
            docs.append(
                {
                    "_id": f"{t}{j:02d}",
                    "title": f"{cause.capitalize()} and {effect}",
                    "text": f"Trial {j + 1} of {cause} and {effect}: finding {j + 1} on how {cause} acts.",
                }
            )
            queries.append({"_id": f"q{t}-{j}", "text": f"study {j + 1}: does {cause} affect {effect}?"})
            qrels["train" if j < 2 else "test"].append(f"q{t}-{j}\t{t}{j:02d}\t1")
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


def write_vectors(data: Path, out: Path, dim: int = 16) -> None:
    """``queries.npz`` and ``corpus.npz`` with one random vector per id of ``data``."""
    rng = np.random.default_rng(0)
    out.mkdir()
    for stem, source in (("queries", "queries.jsonl"), ("corpus", "corpus.jsonl")):
        ids = [json.loads(line)["_id"] for line in (data / source).read_text().splitlines()]
        np.savez(out / f"{stem}.npz", ids=np.array(ids), embeddings=rng.normal(size=(len(ids), dim)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitutions(port: int, compatible_url: str, small_model: Path) -> list[tuple[str, str, str]]:
    """(README text, what runs instead, why): every change the runner makes to a block."""
    return [
        (
            'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[all]" && ',
            "",
            "the tests run in an environment where the package is installed",
        ),
        (
            "search-adaptor fit ",
            "search-adaptor fit --max-steps 30 ",
            "30 training steps per variant: CI time",
        ),
        ("--host 0.0.0.0", "--host 127.0.0.1", "a test server listens on loopback only"),
        ("--port 8000", f"--port {port}", "a free port"),
        ("localhost:8000", f"localhost:{port}", "the same free port"),
        (
            "http://localhost:11434/v1",
            compatible_url,
            "the fake openai-compatible server stands in for Ollama",
        ),
        (
            "search-adaptor distill --out models/minilm-static --dim 256",
            f"search-adaptor distill --out models/minilm-static --dim 16 --model {small_model}",
            "distilling MiniLM's 30k-token vocabulary takes minutes; a tiny local BERT stands in",
        ),
    ]


class Workspace:
    """The checkout stand-in the README's blocks run in, and the blocks run so far."""

    def __init__(self, root: Path, env: dict[str, str], subs: list[tuple[str, str, str]]) -> None:
        self.cwd = root / "repo"
        self.env = env
        self.subs = subs
        self.server_pid = Path(env["README_SERVER_PID"])
        self.done = 0  # BLOCKS[:done] have run

    def script(self, code: str) -> str:
        """The block's code as it runs here (:func:`substitutions`, background servers)."""
        for old, new, _ in self.subs:
            code = code.replace(old, new)
        lines = []
        for line in code.splitlines():
            if line.startswith("search-adaptor serve "):
                line += (
                    ' > "$README_SERVER_LOG" 2>&1 & echo $! > "$README_SERVER_PID"; readme_wait_for_server'
                )
            lines.append(line)
        return "\n".join(lines) + "\n"

    def run_through(self, index: int) -> subprocess.CompletedProcess[str]:
        """Run ``BLOCKS[done:index + 1]`` in order; the result of the last one."""
        result = None
        while self.done <= index:
            block = BLOCKS[self.done]
            self.done += 1
            if _skip_reason(block) is None:
                result = self._run(block, needed_by=BLOCKS[index].lineno)
        assert result is not None, f"README line {BLOCKS[index].lineno} is skipped"
        return result

    def _run(self, block: Any, needed_by: int) -> subprocess.CompletedProcess[str]:
        code = self.script(block.code)
        if block.syntax == "python":
            command = [sys.executable, "-c", code]
        else:
            command = ["bash", "-e", "-o", "pipefail", "-c", _BASH_PRELUDE + code]
        done = subprocess.run(
            command, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
        )
        where = f"README.md line {block.lineno}" + (
            f" (run before line {needed_by})" if needed_by != block.lineno else ""
        )
        if done.returncode != 0:
            pytest.fail(
                f"{where} exited with {done.returncode}.\n--- as run ---\n{code}\n--- stdout ---\n"
                f"{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}",
                pytrace=False,
            )
        if needed_by == block.lineno and "Loading weights" in done.stderr:
            raise LoadNoise(f"{where}: model loading printed third-party output:\n{done.stderr[-2000:]}")
        return done

    def stop_server(self) -> None:
        """Stop the server a block started in the background, waiting up to 10 s for it to exit."""
        if not self.server_pid.is_file():
            return
        pid = int(self.server_pid.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                time.sleep(0.1)
                os.kill(pid, 0)
        except ProcessLookupError:
            return


_BASH_PRELUDE = """readme_wait_for_server() {
  for _ in $(seq $((README_SERVER_START_S * 10))); do
    curl -fsS "http://127.0.0.1:$README_PORT/health" > /dev/null 2>&1 && return 0
    kill -0 "$(cat "$README_SERVER_PID")" 2> /dev/null || break
    sleep 0.1
  done
  echo "the server did not answer /health; its log:" >&2
  cat "$README_SERVER_LOG" >&2
  return 1
}
"""


def _skip_reason(block: Any) -> str | None:
    """The reason of the block's ``pytest.mark.skip``, None when it runs; other marks are refused."""
    for mark in block.marks:
        match = _SKIP.fullmatch(mark)
        if match is None:
            raise ValueError(f"README line {block.lineno}: only pytest.mark.skip(reason=...) is supported")
        return match.group(2)
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("readme")
    tiny = write_tiny_beir(root / "shared" / "data" / "scifact")
    (root / "repo").mkdir()
    shutil.copytree(tiny, root / "repo" / "DATA_DIR")
    write_vectors(tiny, root / "repo" / "VECTORS_DIR")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "search-adaptor").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -m search_adaptor.cli "$@"\n'
    )
    (bin_dir / "search-adaptor").chmod(0o755)
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    port = free_port()
    with FakeProvider("openai") as openai, FakeProvider("openai-compatible") as compatible:
        env = {
            k: v for k, v in os.environ.items() if k not in KEY_ENV.values() and not k.startswith("OPENAI_")
        }
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join(
                [str(Path(search_adaptor.__file__).parents[1]), env.get("PYTHONPATH", "")]
            ),
            HF_HUB_OFFLINE="1",
            SEARCH_ADAPTOR_CACHE=str(root / "cache"),
            OPENAI_BASE_URL=openai.url,
            OPENAI_API_KEY=openai.key,
            OPENAI_COMPATIBLE_API_KEY=compatible.key,
            CO_API_KEY="unused-by-a-dry-run",
            README_PORT=str(port),
            README_SERVER_START_S=str(SERVER_START_S),
            README_SERVER_LOG=str(root / "server.log"),
            README_SERVER_PID=str(root / "server.pid"),
        )
        env.pop("SEARCH_ADAPTOR_VERBOSE", None)
        topic_words = {w for pair in TOPICS for w in " ".join(pair).lower().split()}
        readme_words = sorted(topic_words | {"study", "does", "affect"})  # the dataset's words
        subs = substitutions(port, compatible.url, tiny_bert(root / "tiny-bert", words=readme_words))
        text = README.read_text()
        stale = [old for old, _, _ in subs if old not in text]
        assert not stale, f"substitutions that no longer match the README: {stale}"
        ws = Workspace(root, env, subs)
        try:
            yield ws
        finally:
            ws.stop_server()


def _marks(block: Any) -> list[pytest.MarkDecorator]:
    loud = [why for command, why in LOUD_LOADS.items() if command in block.code]
    return [pytest.mark.xfail(raises=LoadNoise, strict=True, reason=loud[0])] if loud else []


@pytest.mark.slow  # the README's commands load MiniLM and train: CI runs them, the inner loop does not
@pytest.mark.parametrize(
    "index",
    [
        pytest.param(i, id=f"line-{b.lineno}", marks=_marks(b))
        for i, b in enumerate(BLOCKS)
        if _skip_reason(b) is None  # not collected at all: CI=true fails every skip
    ],
)
def test_readme_block_runs(workspace: Workspace, index: int) -> None:
    workspace.run_through(index)


def test_the_readme_has_runnable_blocks_of_every_kind() -> None:
    """The runner finds what it should: a broken fence would silently drop blocks from the test."""
    kinds = {b.syntax for b in BLOCKS}
    assert {"python", "bash"} <= kinds and len(BLOCKS) >= 10
    assert sum(_skip_reason(b) is not None for b in BLOCKS) <= 1  # skipping is the exception
