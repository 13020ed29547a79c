"""The main job: train and select an adapter, then prove on held-out queries whether it helps.

Two protocols, chosen by the data:

- ``test``: the dataset has a train split; train and select on it (validation carved from it),
  report on the test split.
- ``kfold``: only one labelled split; k-fold over its queries, each fold's adapter trained and selected
  on the other folds only; metrics over all held-out queries. The adapter that ships is then trained
  on every labelled query the same way.

Given an output folder, :func:`run_fit` also draws the report's figures there (matplotlib optional).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor import __version__
from search_adaptor.data import Dataset, kfold
from search_adaptor.embed import Embeddings
from search_adaptor.metrics import RelevanceIndex, evaluate_topk, max_k, paired_test
from search_adaptor.model import SearchAdaptor, l2_normalize
from search_adaptor.retrieval import exact_search
from search_adaptor.training import Selection, select

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
#: Why a report has no figures when matplotlib is not installed.
PLOTS_SKIPPED = "pip install matplotlib (or the `bench` extra)"


def evaluate_embeddings(
    emb: Embeddings,
    qrels: Mapping[str, Mapping[str, int]],
    adapter: SearchAdaptor | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    corpus: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray], list[str]]:
    """Full-corpus retrieval metrics of zero-shot (``adapter=None``) or adapted embeddings.

    ``corpus`` may pass the already transformed corpus to avoid adapting it again.

    Returns
    -------
    means : {metric: float}
    per_query : {metric: ndarray of shape (n_queries,)}
    query_ids : the evaluated queries, in the order of the per-query arrays
    """
    rows = {q: i for i, q in enumerate(emb.query_ids)}
    qids = sorted(q for q, docs in qrels.items() if any(g > 0 for g in docs.values()))
    missing = [q for q in qids if q not in rows]
    if missing:
        raise ValueError(f"qrels name query {missing[0]!r}, which has no embedding")
    Q = emb.queries[[rows[q] for q in qids]]
    if adapter is None:
        Q, D = l2_normalize(Q), (corpus if corpus is not None else l2_normalize(emb.corpus))
    else:
        Q = adapter.transform_queries(Q)
        D = corpus if corpus is not None else adapter.transform_corpus(emb.corpus)
    top, _ = exact_search(Q, D, max_k(metrics))
    rel = RelevanceIndex({q: qrels[q] for q in qids}, qids, emb.doc_ids)
    per_query = evaluate_topk(top, rel, metrics, per_query=True)
    means = {m: float(np.mean(per_query[m])) for m in metrics}
    return means, per_query, qids


def write_figures(
    out_dir: str | os.PathLike,
    emb: Embeddings,
    qrels: Mapping[str, Mapping[str, int]],
    adapter: SearchAdaptor,
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    similarity_title: str = "",
    curves_title: str = "",
) -> dict[str, Any]:
    """Draw the report's figures into ``out_dir/plots/``; never raises for a figure that fails.

    Returns
    -------
    {"plots": {name: path relative to out_dir}} for the figures written, plus ``"plots_skipped"``
    (the fix) when matplotlib is not installed. A figure that fails is reported on stderr in one
    line and left out.
    """
    from search_adaptor import plots

    figures: dict[str, Callable[[Path], Path]] = {
        "similarity": lambda path: plots.plot_similarity(emb, qrels, adapter, path, title=similarity_title),
        "learning_curves": lambda path: plots.plot_learning_curves(histories, path, title=curves_title),
    }
    rel = {name: f"plots/{name}.png" for name in figures}
    for name in figures:  # an earlier fit's figure must not pass for this one's
        (Path(out_dir) / rel[name]).unlink(missing_ok=True)
    written: dict[str, str] = {}
    for name, draw in figures.items():
        try:
            draw(Path(out_dir) / rel[name])
        except ImportError:
            return {"plots": {}, "plots_skipped": PLOTS_SKIPPED}
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            print(
                f"search-adaptor: warning: {name} plot failed ({type(exc).__name__}: {detail}); "
                "the fit goes on without it",
                file=sys.stderr,
            )
            continue
        written[name] = rel[name]
    return {"plots": written}


def run_fit(
    dataset: Dataset,
    emb: Embeddings,
    family: str = "auto",
    seed: int = 0,
    folds: int = 5,
    train_split: str = "train",
    test_split: str = "test",
    overrides: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    out_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], Selection]:
    """Train, select and evaluate; return the report (see :mod:`search_adaptor.report`) and the adapter.

    Test queries never reach training, early stopping or selection. With ``out_dir``, the figures
    of :func:`write_figures` go to ``out_dir/plots/`` and ``report["plots"]`` names them relative to
    ``out_dir``: the similarity histograms on the held-out test queries (``kfold``: on all labelled
    queries, which the saved adapter was trained on) and every candidate's learning curve (``kfold``:
    those of the final fit on all labelled queries).
    """

    def fit_on(qrels: Mapping[str, Mapping[str, int]], tag: str) -> Selection:
        def on_candidate(row: dict[str, Any]) -> None:
            log(
                f"  {tag} {row['variant']}: val nDCG@10 {row['val_ndcg@10']:.4f} "
                f"(zero-shot {row['zero_shot_val_ndcg@10']:.4f}), {row['train_s']} s"
            )

        sel = select(
            family,
            emb.queries,
            emb.corpus,
            qrels,
            emb.query_ids,
            emb.doc_ids,
            seed=seed,
            overrides=overrides,
            on_candidate=on_candidate,
        )
        sel.adapter.encoder_ = emb.encoder
        return sel

    start = time.perf_counter()
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "model": emb.encoder["model"],
        "encoder_fingerprint": emb.encoder["fingerprint"],
        "family": family,
        "seed": seed,
    }
    if dataset.has_train and test_split in dataset.splits:
        test_qrels = dataset.split(test_split)
        final = fit_on(dataset.split(train_split), "train")
        zs, zs_q, _ = evaluate_embeddings(emb, test_qrels)
        ad, ad_q, _ = evaluate_embeddings(emb, test_qrels, final.adapter)
        report.update(
            protocol="test",
            train_split=train_split,
            test_split=test_split,
            n_test_queries=len(zs_q[DEFAULT_METRICS[0]]),
        )
        folds_info: list[dict[str, Any]] = []
        figure_qrels = test_qrels
        similarity_title = f"{dataset.name}: {len(zs_q[DEFAULT_METRICS[0]])} held-out {test_split} queries"
        curves_title = f"{dataset.name}: validation nDCG@10 per candidate"
    else:
        split = test_split if test_split in dataset.splits else dataset.splits[0]
        labelled = dataset.split(split)
        zs_parts, ad_parts, folds_info = [], [], []
        for f, (train_ids, test_ids) in enumerate(kfold(sorted(labelled), k=folds, seed=seed)):
            sel = fit_on({q: labelled[q] for q in train_ids}, f"fold {f + 1}/{folds}")
            held_out = {q: labelled[q] for q in test_ids}
            zs_f, zq, _ = evaluate_embeddings(emb, held_out)
            ad_f, aq, _ = evaluate_embeddings(emb, held_out, sel.adapter)
            zs_parts.append(zq)
            ad_parts.append(aq)
            folds_info.append(
                {
                    "fold": f + 1,
                    "selected": sel.selected,
                    "n_test_queries": len(test_ids),
                    "zero-shot": zs_f,
                    "adapted": ad_f,
                    "candidates": sel.candidates,
                }
            )
            log(
                f"fold {f + 1}/{folds}: {sel.selected}: "
                f"nDCG@10 {zs_f['ndcg@10']:.4f} -> {ad_f['ndcg@10']:.4f}"
            )
        zs_q = {m: np.concatenate([p[m] for p in zs_parts]) for m in DEFAULT_METRICS}
        ad_q = {m: np.concatenate([p[m] for p in ad_parts]) for m in DEFAULT_METRICS}
        zs = {m: float(np.mean(v)) for m, v in zs_q.items()}
        ad = {m: float(np.mean(v)) for m, v in ad_q.items()}
        final = fit_on(labelled, "all")
        report.update(protocol="kfold", folds=folds, test_split=split, n_test_queries=len(zs_q["ndcg@10"]))
        figure_qrels = labelled
        similarity_title = f"{dataset.name}: all {len(zs_q['ndcg@10'])} labelled queries (seen in training)"
        curves_title = f"{dataset.name}: validation nDCG@10 per candidate, final fit on all labelled queries"
    report["metrics"] = {"zero-shot": zs, "adapted": ad}
    report["significance"] = {
        "metric": "ndcg@10",
        "test": "paired randomization (sign-flip), two-sided, 10000 resamples",
        "p_value": paired_test(ad_q["ndcg@10"], zs_q["ndcg@10"]),
    }
    report["selected"] = final.selected
    report["validation"] = {
        "metric": "ndcg@10",
        "n_val_queries": len(final.val_query_ids),
        "selected_val_ndcg@10": final.adapter.best_score_,
        "zero_shot_val_ndcg@10": final.adapter.zero_shot_score_,
        "candidates": final.candidates,
    }
    if folds_info:
        report["folds"] = folds
        report["fold_results"] = folds_info
    report["timings"] = {"embed_s": round(emb.embed_s, 2), "train_s": round(time.perf_counter() - start, 2)}
    if out_dir is not None:
        report.update(
            write_figures(
                out_dir, emb, figure_qrels, final.adapter, final.histories, similarity_title, curves_title
            )
        )
    report["encoder_calls"] = {"texts_sent": emb.stats.encoded, "texts_cached": emb.stats.cached}
    report["library_version"] = __version__
    return report, final
