"""The main job: train and select an adapter, then prove on held-out queries whether it helps.

Two protocols, chosen by the data:

- ``test``: the dataset has a train split; train and select on it (validation carved from it),
  report on the test split.
- ``kfold``: only one labelled split; k-fold over its queries, each fold's adapter trained and selected
  on the other folds only; metrics over all held-out queries. The adapter that ships is then trained
  on every labelled query the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
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
) -> tuple[dict[str, Any], Selection]:
    """Train, select and evaluate; return the report (see :mod:`search_adaptor.report`) and the adapter.

    Test queries never reach training, early stopping or selection.
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
    report["encoder_calls"] = {"texts_sent": emb.stats.encoded, "texts_cached": emb.stats.cached}
    report["library_version"] = __version__
    return report, final
