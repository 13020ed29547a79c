"""Figures: each plot writes a PNG; the similarity samples are the pairs they claim to be; ``fit``
writes its report's figures, and a fit without matplotlib (or with a failing plot) still succeeds."""

from __future__ import annotations

import importlib.util
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from search_adaptor import plots
from search_adaptor.data import Dataset
from search_adaptor.embed import Embeddings
from search_adaptor.experiment import Run, run_fit
from search_adaptor.model import SearchAdaptor
from search_adaptor.plots import (
    plot_data_efficiency,
    plot_learning_curves,
    plot_similarity,
    similarity_samples,
)
from search_adaptor.report import save_run

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed"
)


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


@needs_matplotlib
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


@needs_matplotlib
def test_a_one_document_corpus_draws_the_relevant_pairs_alone(
    synthetic: dict, fitted: tuple, tmp_path: Path
) -> None:
    """Every query judges the only document, so no pair is irrelevant: the figure failed with numpy's
    "zero-size array to reduction operation minimum", printed as a warning by ``fit``."""
    _, est = fitted
    qids = synthetic["qids"][:6]
    one = Embeddings(qids, synthetic["Q"][:6], ["d0"], synthetic["D"][:1], {"fingerprint": "synthetic"})
    qrels = {q: {"d0": 1} for q in qids}
    rel, irr = similarity_samples(one, qrels, est)
    assert len(rel) == 6 and len(irr) == 0
    path = plot_similarity(one, qrels, est, tmp_path / "sim.png")
    assert _is_png(path) and path.stat().st_size > 10_000


class _Linear:
    """A fixed linear map of queries and documents: an adapter whose vectors are not unit length."""

    def __init__(self, W: np.ndarray) -> None:
        self.W = W

    def transform_queries(self, X: np.ndarray) -> np.ndarray:
        return X @ self.W

    def transform_corpus(self, X: np.ndarray) -> np.ndarray:
        return X @ self.W


def _pairs(n_queries: int, n_docs: int, dim: int, seed: int = 0) -> tuple[Embeddings, dict]:
    """Random vectors (not unit length), two judged documents per query (both relevant, or one judged
    0), a query judged 0 only (not labelled), and ids the corpus or the queries lack."""
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((n_queries, dim), dtype=np.float32) * 3
    D = rng.standard_normal((n_docs, dim), dtype=np.float32) * 2
    qids, dids = [f"q{i}" for i in range(n_queries)], [f"d{i}" for i in range(n_docs)]
    qrels = {q: {f"d{(7 * i) % n_docs}": 1, f"d{(3 * i + 1) % n_docs}": i % 2} for i, q in enumerate(qids)}
    qrels["q1"] = {"d2": 0}
    qrels["q2"]["gone"] = 2
    qrels["absent"] = {"d0": 1}
    return Embeddings(qids, Q, dids, D, {"fingerprint": "synthetic"}), qrels


@pytest.mark.parametrize("adapted", [False, True])
def test_similarity_samples_are_the_cosines_the_figure_always_plotted(adapted: bool) -> None:
    """The pairs and their values, computed here as the figure always computed them (every pair
    gathered at once): chunking the gather changes no value, so no committed figure changes."""
    emb, qrels = _pairs(60, 15, 8)  # a small corpus: many draws hit a judged document
    rng = np.random.default_rng(5)
    adapter = _Linear(rng.standard_normal((8, 8)).astype(np.float32)) if adapted else None
    rel, irr = similarity_samples(emb, qrels, adapter, n_irrelevant=6, seed=3)

    qids = sorted(q for q in qrels if q in emb.query_ids and max(qrels[q].values()) > 0)
    Q = emb.queries[[emb.query_ids.index(q) for q in qids]]
    if adapter is None:  # lengths as l2_normalize takes them (an einsum, in float32)
        Q = Q / np.sqrt(np.einsum("ij,ij->i", Q, Q))[:, None]
        D = emb.corpus / np.sqrt(np.einsum("ij,ij->i", emb.corpus, emb.corpus))[:, None]
    else:
        Q, D = Q @ adapter.W, emb.corpus @ adapter.W
    draws = np.random.default_rng(3)
    rel_pairs, irr_pairs = [], []
    for i, q in enumerate(qids):
        judged = {emb.doc_ids.index(d) for d in qrels[q] if d in emb.doc_ids}
        rel_pairs += [(i, emb.doc_ids.index(d)) for d, g in qrels[q].items() if g > 0 and d in emb.doc_ids]
        irr_pairs += [(i, int(d)) for d in draws.integers(0, len(D), size=6) if int(d) not in judged]
    for got, pairs in ((rel, rel_pairs), (irr, irr_pairs)):
        rows, cols = np.array(pairs).T
        np.testing.assert_array_equal(got, np.einsum("ij,ij->i", Q[rows], D[cols]))
    assert 0 < len(irr) < 6 * len(qids)  # some draws were judged documents, and were dropped


def test_similarity_samples_never_gather_every_pair_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pair's two vectors were gathered at once: two (pairs x dim) matrices, 3 GB each for the
    100k queries of a large test split (sweep E). Now they are gathered ``_PAIR_BYTES`` at a time:
    the peak is the copies of the queries and corpus, one chunk per side and a few numbers per pair."""
    monkeypatch.setattr(plots, "_PAIR_BYTES", 1 << 20)  # small chunks next to the pairs, as at scale
    emb, qrels = _pairs(5000, 2000, 96)
    tracemalloc.start()
    try:
        _, irr = similarity_samples(emb, qrels, n_irrelevant=40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_side = len(irr) * emb.corpus.shape[1] * emb.corpus.itemsize  # all irrelevant pairs' queries
    assert len(irr) > 190_000
    assert peak < one_side / 2, (
        f"peak {peak / 2**20:.1f} MiB; all pairs' queries take {one_side / 2**20:.0f} MiB"
    )


# -- the figures of ``fit``'s report -----------------------------------------------------------------

QUICK = {"max_steps": 30, "eval_every": 10}  # a few validation points per candidate, seconds in all


def synthetic_dataset(
    synthetic: dict, tmp_path: Path, splits: dict[str, slice]
) -> tuple[Dataset, Embeddings]:
    """The ``synthetic`` fixture as a dataset with qrels ``splits`` (name -> slice of its queries)."""
    qrels = {
        split: {q: synthetic["qrels"][q] for q in synthetic["qids"][rows]} for split, rows in splits.items()
    }
    dataset = Dataset(
        name="synthetic",
        path=tmp_path,
        doc_ids=synthetic["dids"],
        doc_texts=list(synthetic["dids"]),
        queries={q: q for q in synthetic["qids"]},
        qrels=qrels,
    )
    encoder = {"fingerprint": "synthetic", "model": "synthetic", "provider": "test", "config": {}}
    emb = Embeddings(synthetic["qids"], synthetic["Q"], synthetic["dids"], synthetic["D"], encoder)
    return dataset, emb


def _fit(synthetic: dict, tmp_path: Path, kfold: bool = False) -> tuple[dict, Run, Path]:
    splits = {"test": slice(None)} if kfold else {"train": slice(0, 120), "test": slice(120, None)}
    dataset, emb = synthetic_dataset(synthetic, tmp_path, splits)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = run_fit(dataset, emb, folds=2, overrides=QUICK)
    finally:
        torch.set_num_threads(threads)
    return save_run(run, out), run, out


def _markdown(out: Path) -> str:
    return (out / "report.md").read_text()


@needs_matplotlib
def test_fit_writes_and_links_its_figures(synthetic: dict, tmp_path: Path) -> None:
    report, run, out = _fit(synthetic, tmp_path)
    assert report["protocol"] == "test"
    assert set(run.histories) == {c["variant"] for c in report["validation"]["candidates"]}
    assert report["plots"] == {
        "similarity": "plots/similarity.png",
        "learning_curves": "plots/learning_curves.png",
    }
    assert "plots_skipped" not in report
    for rel in report["plots"].values():
        path = out / rel
        assert _is_png(path) and path.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    assert json.loads((out / "report.json").read_text())["plots"] == report["plots"]
    md = _markdown(out)
    assert "## Figures" in md and "plots skipped" not in md
    assert "(plots/similarity.png)" in md and "(plots/learning_curves.png)" in md
    assert "40 held-out `test` queries" in md


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
@needs_matplotlib
def test_kfold_fit_says_its_similarity_queries_were_seen_in_training(synthetic: dict, tmp_path: Path) -> None:
    report, run, out = _fit(synthetic, tmp_path, kfold=True)
    assert report["protocol"] == "kfold"
    assert set(report["plots"]) == {"similarity", "learning_curves"}
    assert all(_is_png(out / rel) for rel in report["plots"].values())
    assert set(run.histories) == {c["variant"] for c in report["validation"]["candidates"]}
    assert "which the saved adapter was trained on" in _markdown(out)


def test_fit_without_matplotlib_skips_the_figures(
    synthetic: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    stale = tmp_path / "out" / "plots" / "similarity.png"  # left by an earlier fit into the same folder
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    report, _, out = _fit(synthetic, tmp_path)
    assert report["plots"] == {} and not stale.exists()
    md = _markdown(out)
    assert "plots skipped: pip install matplotlib (or the `bench` extra)" in md
    assert "## Figures" not in md


@needs_matplotlib
def test_a_failing_plot_warns_and_the_fit_goes_on(
    synthetic: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken(*_args: object, **_kwargs: object) -> Path:
        raise RuntimeError("no room on the canvas\nsecond line")

    monkeypatch.setattr(plots, "plot_learning_curves", broken)
    report, _, out = _fit(synthetic, tmp_path)
    assert report["plots"] == {"similarity": "plots/similarity.png"}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "search-adaptor: warning: learning_curves plot failed (RuntimeError: no room on the canvas); "
        "the run goes on without it"
    ]
    assert "(plots/similarity.png)" in _markdown(out) and "learning_curves" not in _markdown(out)
