"""Shared fixtures: a small synthetic retrieval problem that an adapter can learn, and data paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a shared BEIR dataset, skipping the test when this machine does not have it."""
    path = DATA_DIR / name
    if not (path / "queries.jsonl").is_file():
        pytest.skip(f"shared dataset {name} not present at {path}")
    return path


@pytest.fixture(scope="session")
def synthetic() -> dict:
    """Queries that are a fixed linear distortion of their relevant documents plus noise.

    Zero-shot cosine is mediocre; a learned map undoes the distortion, so training must help.
    """
    rng = np.random.default_rng(0)
    dim, n_docs, n_queries = 16, 300, 160
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    distortion = np.eye(dim) + 1.6 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    rel = rng.integers(0, n_docs, size=n_queries)
    queries = (docs[rel] @ distortion.T + 0.4 * rng.normal(size=(n_queries, dim))).astype(np.float32)
    qids = [f"q{i}" for i in range(n_queries)]
    dids = [f"d{i}" for i in range(n_docs)]
    qrels = {qids[i]: {dids[rel[i]]: 1 + int(i % 2)} for i in range(n_queries)}
    return {"Q": queries, "D": docs, "qrels": qrels, "qids": qids, "dids": dids}
