"""Figures: each plot writes a PNG; the similarity samples are the pairs they claim to be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from search_adaptor.embed import Embeddings
from search_adaptor.model import SearchAdaptor
from search_adaptor.plots import (
    plot_data_efficiency,
    plot_learning_curves,
    plot_similarity,
    similarity_samples,
)

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def fitted(synthetic: dict) -> tuple[Embeddings, SearchAdaptor]:
    emb = Embeddings(
        synthetic["qids"], synthetic["Q"], synthetic["dids"], synthetic["D"], {"fingerprint": "synthetic"}
    )
    est = SearchAdaptor(loss="infonce", in_batch=True, max_steps=30, eval_every=10, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend with other jobs
    try:
        est.fit(synthetic["Q"], synthetic["D"], synthetic["qrels"], synthetic["qids"], synthetic["dids"])
    finally:
        torch.set_num_threads(threads)
    return emb, est


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_similarity_samples_cover_every_relevant_pair(synthetic: dict, fitted: tuple) -> None:
    emb, est = fitted
    rel, irr = similarity_samples(emb, synthetic["qrels"], n_irrelevant=5)
    assert len(rel) == sum(len(d) for d in synthetic["qrels"].values())
    assert 0 < len(irr) <= 5 * len(synthetic["qrels"])
    assert rel.mean() > irr.mean()  # relevant pairs are more similar even zero-shot
    assert np.all(np.abs(rel) <= 1 + 1e-5)
    rel_a, irr_a = similarity_samples(emb, synthetic["qrels"], est, n_irrelevant=5)
    assert len(rel_a) == len(rel) and len(irr_a) == len(irr)  # the same pairs, before and after
    assert rel_a.mean() - irr_a.mean() > rel.mean() - irr.mean()  # the adapter pulls them apart


def test_plots_write_pngs(synthetic: dict, fitted: tuple, tmp_path: Path) -> None:
    emb, est = fitted
    sim = plot_similarity(emb, synthetic["qrels"], est, tmp_path / "sub" / "sim.png", title="synthetic")
    curves = plot_learning_curves({"mlp": est.history_, "again": est.history_}, tmp_path / "curves.png")
    many = plot_learning_curves({f"c{i}": est.history_ for i in range(8)}, tmp_path / "many.png")
    eff = plot_data_efficiency(
        {"auto": {0.1: (0.5, 0.02), 0.5: (0.6, 0.01), 1.0: (0.65, 0.0)}},
        tmp_path / "eff.png",
        zero_shot=0.45,
    )
    for path in (sim, curves, many, eff):
        assert path.is_file() and _is_png(path)
