"""Figures for reports and benchmarks (matplotlib, an optional dependency imported on first use).

- :func:`plot_similarity`: cosine similarities of relevant vs irrelevant (query, document) pairs
  before and after adaptation, the paper's Figure 5. An adapter that helps pulls the two
  distributions apart.
- :func:`plot_learning_curves`: validation nDCG@10 against training step, one line per candidate,
  from ``SearchAdaptor.history_``.
- :func:`plot_data_efficiency`: test nDCG@10 against the share of training queries used.

Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from search_adaptor.data import labelled_queries
from search_adaptor.retrieval import l2_normalize

__all__ = ["plot_data_efficiency", "plot_learning_curves", "plot_similarity", "similarity_samples"]

_PAIR_BYTES = 16 << 20  # vectors gathered at a time per side by similarity_samples: bounds its memory


class _Adapter(Protocol):
    def transform_queries(self, X: np.ndarray) -> np.ndarray: ...

    def transform_corpus(self, X: np.ndarray) -> np.ndarray: ...


class _EmbeddingsLike(Protocol):
    query_ids: list[str]
    queries: np.ndarray
    doc_ids: list[str]
    corpus: np.ndarray


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def similarity_samples(
    emb: _EmbeddingsLike,
    qrels: Mapping[str, Mapping[str, int]],
    adapter: _Adapter | None = None,
    n_irrelevant: int = 20,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of every relevant pair, and of ``n_irrelevant`` random unjudged docs per query.

    ``adapter=None`` gives the zero-shot similarities. Irrelevant documents are drawn once from
    ``seed``, so calls with and without an adapter compare the same pairs.

    Returns
    -------
    (relevant, irrelevant) : 1-D float arrays
    """
    qrow = {q: i for i, q in enumerate(emb.query_ids)}
    dcol = {d: i for i, d in enumerate(emb.doc_ids)}
    qids = [q for q in labelled_queries(qrels) if q in qrow]
    Q = emb.queries[[qrow[q] for q in qids]]
    if adapter is None:
        Q, D = l2_normalize(Q), l2_normalize(emb.corpus)
    else:
        Q, D = adapter.transform_queries(Q), adapter.transform_corpus(emb.corpus)
    rel_q, rel_d, judged = [], [], []
    for i, q in enumerate(qids):
        for d, g in qrels[q].items():
            if d in dcol:
                judged.append(i * D.shape[0] + dcol[d])
                if g > 0:
                    rel_q.append(i)
                    rel_d.append(dcol[d])
    # one draw per query, in query order, as ever: a seed gives the pairs it always gave
    rng = np.random.default_rng(seed)
    drawn = np.empty((len(qids), n_irrelevant), dtype=np.int64)
    for i in range(len(qids)):
        drawn[i] = rng.integers(0, D.shape[0], size=n_irrelevant)
    irr_q = np.repeat(np.arange(len(qids), dtype=np.int64), n_irrelevant)
    irr_d = drawn.ravel()
    keep = ~np.isin(irr_q * D.shape[0] + irr_d, np.asarray(judged, dtype=np.int64))
    relevant = _row_cosines(Q, D, np.asarray(rel_q, dtype=np.int64), np.asarray(rel_d, dtype=np.int64))
    return relevant, _row_cosines(Q, D, irr_q[keep], irr_d[keep])


def _row_cosines(Q: np.ndarray, D: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``Q[rows[k]] . D[cols[k]]`` for every k, gathered ``_PAIR_BYTES`` of vectors at a time.

    Gathering every pair at once held two (pairs x dim) matrices: 3 GB each for 100k queries with
    20 pairs apiece. Each value is the same dot product either way (one row pair per output).
    """
    out = np.empty(len(rows), dtype=np.result_type(Q, D))
    step = max(1, _PAIR_BYTES // max(1, Q.shape[1] * out.itemsize))
    for start in range(0, len(rows), step):
        stop = start + step
        out[start:stop] = np.einsum("ij,ij->i", Q[rows[start:stop]], D[cols[start:stop]])
    return out


def plot_similarity(
    emb: _EmbeddingsLike,
    qrels: Mapping[str, Mapping[str, int]],
    adapter: _Adapter,
    path: str | os.PathLike,
    title: str = "",
    reference: _Adapter | None = None,
) -> Path:
    """Histograms of relevant vs irrelevant cosine similarities, zero-shot (left) and adapted (right).

    A cross-model adapter's queries have no zero-shot similarity to the documents (another model,
    often another width): pass its start as ``reference`` and the left panel shows that instead.
    Where every document of the corpus is judged (a one-document corpus), there are no irrelevant
    pairs: the relevant ones are drawn alone and the panels' titles say so.

    Parameters
    ----------
    emb : Embeddings
        Queries and corpus of the base model.
    qrels : mapping query id -> {doc id -> grade}
        The queries to draw pairs from (use held-out queries to show generalisation).
    adapter : fitted SearchAdaptor (or anything with transform_queries / transform_corpus)
    path : where the PNG goes
    title : prefix of the figure title, e.g. the dataset name
    reference : adapter, optional
        What the left panel shows instead of zero-shot (``SearchAdaptor.at_start()`` of a
        cross-model adapter).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    left = ("zero-shot", None) if reference is None else ("start", reference)
    for ax, (label, ad) in zip(axes, [left, ("adapted", adapter)], strict=True):
        rel, irr = similarity_samples(emb, qrels, ad)
        both = np.concatenate([rel, irr])
        span = (float(both.min()), float(both.max()))  # one value: numpy widens it to a unit span
        for values, kind, alpha, color in (
            (irr, "irrelevant", 0.55, "tab:gray"),
            (rel, "relevant", 0.65, "tab:blue"),
        ):
            if len(values):  # a corpus whose every document each query judges has no irrelevant pair
                ax.hist(
                    values,
                    bins=50,
                    range=span,
                    density=True,
                    alpha=alpha,
                    label=f"{kind} (n={len(values)})",
                    color=color,
                )
        gap = (
            f"mean gap {float(rel.mean() - irr.mean()):.3f}"
            if len(rel) and len(irr)
            else f"no {'irrelevant' if len(rel) else 'relevant'} pairs"
        )
        ax.set_title(f"{label}: {gap}")
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_learning_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike,
    metric: str = "ndcg@10",
    title: str = "",
) -> Path:
    """Validation ``metric`` against training step, one line per candidate (``SearchAdaptor.history_``).

    Step 0 is the zero-shot (identity) score; the marker shows each candidate's best checkpoint.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9 if len(histories) > 5 else 7, 4))
    for i, (name, history) in enumerate(histories.items()):
        steps = [h["step"] for h in history]
        values = [h[metric] for h in history]
        # the default cycle has 10 colours: dash the lines that reuse one
        (line,) = ax.plot(steps, values, label=name, linewidth=1.2, linestyle="-" if i < 10 else "--")
        best = int(np.argmax(values))
        ax.plot(steps[best], values[best], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {metric}")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(histories) > 5:  # many candidates: keep the legend off the curves
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_data_efficiency(
    curves: Mapping[str, Mapping[float, tuple[float, float]]],
    path: str | os.PathLike,
    zero_shot: float | None = None,
    metric: str = "ndcg@10",
    title: str = "",
) -> Path:
    """Test ``metric`` against the fraction of training queries: ``{row: {fraction: (mean, std)}}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        xs = sorted(points)
        means = np.array([points[x][0] for x in xs])
        stds = np.array([points[x][1] for x in xs])
        ax.errorbar([100 * x for x in xs], means, yerr=stds, marker="o", capsize=3, label=name)
    if zero_shot is not None:
        ax.axhline(zero_shot, color="black", linestyle="--", linewidth=1, label="zero-shot")
    ax.set_xlabel("training queries used (%)")
    ax.set_ylabel(f"test {metric}")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
