"""The jobs: select an adapter among variants, fit and prove it on held-out queries, evaluate a saved one.

Two protocols, chosen by the data (:func:`protocol`):

- ``test``: the dataset has a train split; train and select on it (validation carved from it),
  report on the test split.
- ``kfold``: only one labelled split; k-fold over its queries, each fold's adapter trained and selected
  on the other folds only; metrics over all held-out queries. The adapter that ships is then trained
  on every labelled query the same way.

The command line and the benchmark suite both run these functions. They compute; writing the
results (report files, figures, the adapter folder) is :func:`search_adaptor.report.save_run`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor import __version__
from search_adaptor.data import DataError, Dataset, kfold, labelled_queries, too_few_to_validate
from search_adaptor.embed import Embeddings, embed_dataset, load_precomputed
from search_adaptor.encoders.base import Encoder
from search_adaptor.losses import UNLABELLED_LOSSES
from search_adaptor.metrics import (
    RelevanceIndex,
    evaluate_topk,
    max_k,
    paired_test,
    tie_order,
    val_metric_name,
)
from search_adaptor.model import CompatibilityError, SearchAdaptor
from search_adaptor.retrieval import exact_search, l2_normalize
from search_adaptor.store import text_key
from search_adaptor.training import compute_threads, drawn_validation, pair_map, pca_rotation, usable_pairs
from search_adaptor.variants import (
    DEFAULT_FAMILY,
    DEFAULT_FOLDS,
    DEFAULT_SELECTION,
    MATRYOSHKA,
    REFIT_BY_DEFAULT,
    SELECTIONS,
    VAL_FRACTION,
    family_variants,
)

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
SIGNIFICANCE = "paired randomization (sign-flip), two-sided, 10000 resamples"

Qrels = dict[str, dict[str, int]]


# -- embeddings ----------------------------------------------------------------------------------------
def embeddings_for(
    dataset: Dataset,
    encoder: Encoder | None = None,
    *,
    precomputed: str | os.PathLike | None = None,
    model: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
    adapter: SearchAdaptor | None = None,
    query_encoder: Encoder | None = None,
    pair_texts: Sequence[str] | None = None,
) -> Embeddings:
    """The dataset's embeddings, from ``encoder`` through the store or from ``precomputed`` vectors;
    queries (and the corpus, as pairs) from ``query_encoder`` too when it is another model, and
    ``pair_texts`` by both models (see :func:`~search_adaptor.embed.embed_dataset`).

    With ``adapter``, its encoders are checked first, so a mismatch is refused before anything is
    embedded (and paid for).
    """
    if precomputed is not None:
        if pair_texts:
            raise ValueError(
                "--pairs / --sentence-pairs embed texts by two models; they cannot go with --embeddings"
            )
        emb = load_precomputed(dataset, precomputed, model=model)
        if adapter is not None:
            check_precomputed(adapter, emb, precomputed)
        return emb
    if encoder is None:
        raise ValueError("give an encoder or a folder of precomputed vectors")
    if adapter is not None:
        adapter.check_encoder(encoder)
        adapter.check_encoder(query_encoder or encoder, kind="query")
    return embed_dataset(
        dataset, encoder, cache_dir, progress=progress, query_encoder=query_encoder, pair_texts=pair_texts
    )


def check_precomputed(adapter: SearchAdaptor, emb: Embeddings, folder: str | os.PathLike) -> None:
    """Refuse vectors brought with ``--embeddings`` that ``adapter`` cannot take (another model or
    width), naming their folder: the adapter's message alone named neither."""
    try:
        adapter.check_encoder(emb.encoder, emb.dim)
    except CompatibilityError as exc:
        raise CompatibilityError(f"{folder}: {exc}") from None


# -- selection -----------------------------------------------------------------------------------------
#: How ``select`` chooses among trained candidates (see :func:`choose`); the default is judged on
#: training queries only in ``benchmarks/selection.py``.
RULES = ("max", "max-se", "one-se")
DEFAULT_RULE = "max-se"


#: ``selected`` when no candidate beat zero-shot and the adapter kept its start, the identity
IDENTITY = "identity (zero-shot)"


def kept_start(adapter: SearchAdaptor) -> str:
    """``selected`` when no trained checkpoint beat the start: :data:`IDENTITY`, or the start the
    adapter names (a Matryoshka fit's PCA rotation, a cross-model map), which is not zero-shot."""
    return IDENTITY if adapter.start_ is None else f"its start ({adapter.start_})"


def is_kept_start(selected: str) -> bool:
    """Whether a report's ``selected`` (:func:`kept_start`) says the adapter kept its start."""
    return selected == IDENTITY or selected.startswith("its start (")


@dataclass
class Selection:
    """Outcome of training several variants and choosing one (``method``: :data:`SELECTIONS`).

    ``histories`` maps each candidate's variant name to its ``SearchAdaptor.history_`` (validation
    nDCG@10 per evaluation step), in training order, for learning curves. ``val_scores`` holds each
    candidate's per-query nDCG@10 on the queries it was compared on (``val_query_ids`` order: the
    validation split, or with ``"kfold"`` every labelled query, held out fold by fold),
    ``"identity"`` zero-shot's; ``fitted`` every candidate trained on all the queries (with
    ``"kfold"``, the winner alone).
    """

    adapter: SearchAdaptor
    selected: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    val_query_ids: list[str] = field(default_factory=list)
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    val_scores: dict[str, np.ndarray] = field(default_factory=dict)
    fitted: dict[str, SearchAdaptor] = field(default_factory=dict)
    method: str = DEFAULT_SELECTION


def choose(names: Sequence[str], scores: Mapping[str, np.ndarray], rule: str = DEFAULT_RULE) -> str:
    """Which candidate to ship, from per-query validation nDCG@10 (``scores["identity"]`` is zero-shot).

    ``names`` are the trained candidates, simplest first.

    - ``"max"``: the best mean; ties go to the earlier candidate; the identity when none beats it.
    - ``"max-se"``: the same pick, but the identity unless its gain over zero-shot exceeds one
      standard error of their paired per-query differences: on a small validation split, a gain
      within the noise ships nothing (the identity wins ties).
    - ``"one-se"``: the simplest candidate within one standard error of the best (SE of the paired
      per-query differences), and the identity unless that candidate's gain over zero-shot exceeds
      one standard error of its own paired differences: small validation splits are noisy, and a
      richer model, or any adapter at all, has to earn its place by more than the noise.

    With a single validation query the noise is unknown, so both SE rules ship the identity.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")

    def se(a: np.ndarray, b: np.ndarray) -> float:  # one query shows no noise, so it proves nothing
        return float(np.std(a - b, ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("inf")

    means = {n: float(np.mean(scores[n])) for n in names}
    best = max(names, key=lambda n: (means[n], -names.index(n)))
    if rule == "one-se":
        best = next(n for n in names if means[best] - means[n] <= se(scores[best], scores[n]))
    gain = means[best] - float(np.mean(scores["identity"]))
    noise = 0.0 if rule == "max" else se(scores[best], scores["identity"])
    return best if gain > max(noise, 1e-9) else "identity"


def select(
    family: str,
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
    seed: int = 0,
    val_fraction: float = VAL_FRACTION,
    overrides: Mapping[str, Any] | None = None,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
    encoder: Encoder | Mapping[str, Any] | str | None = None,
    rule: str = DEFAULT_RULE,
    n_jobs: int | None = None,
    query_encoder: Encoder | Mapping[str, Any] | str | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    query_pairs: np.ndarray | None = None,
    more_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    pool: Executor | None = None,
    selection: str = DEFAULT_SELECTION,
    selection_folds: int = DEFAULT_FOLDS,
    val_query_ids: Sequence[str] | None = None,
    refit_all: bool = False,
) -> Selection:
    """Train every variant of ``family`` and choose one (:func:`choose`, by ``rule``).

    ``selection`` says on which queries the candidates are compared:

    - ``"validation"``: each candidate's own validation split, the one early stopping uses and the
      same for all of them: the queries ``val_query_ids`` of ``qrels`` (a dataset's dev split), else
      ``val_fraction`` of ``qrels``.
    - ``"kfold"``: ``selection_folds``-fold cross-validation over every labelled query: each
      candidate is trained once per fold on the other folds and scored on that fold's queries,
      which its training and early stopping never saw; the winner is then trained on all of them.
      Every labelled query votes, not a fifth of them, so a small or noisy split picks the wrong
      candidate far less often (``benchmarks/selection.py``), at about ``selection_folds`` times
      the training time. ``val_query_ids`` are then labelled queries like the others.

    With ``refit_all`` (labelled families), the winner is trained again on every labelled query of
    ``qrels``, none held out, for the steps its validation chose (:meth:`SearchAdaptor.refit_all`):
    that is the adapter shipped; ``fitted`` keeps the validated one.

    The identity (zero-shot) takes part: when it wins, ``selected`` says so and the adapter shipped
    changes nothing. ``encoder`` (what made the embeddings) is recorded in every candidate. Families
    trained without labels choose by their own criterion, and ``selection`` plays no part.

    Candidates train side by side, ``n_jobs`` at once (None or -1: one per CPU core), each on one
    thread: a few thousand small matmuls each, which scale across candidates, not within one. The
    costliest start first, so that no long one is left running alone at the end. ``pool`` (a
    thread pool whose work runs under ``compute_threads(1)``) lets several selections share the
    cores (:func:`run_fit`'s folds). Every candidate is exactly the model a standalone fit with its
    parameters and seed gives.
    """
    variants = family_variants(family)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
    try:  # an unknown name, before anything trains (it was SearchAdaptor.__init__'s TypeError)
        SearchAdaptor().set_params(**dict(overrides or {}))
    except ValueError as exc:
        raise ValueError(f"overrides: {exc}") from None
    labelled = not any({**p, **dict(overrides or {})}.get("loss") in UNLABELLED_LOSSES for _, p in variants)
    folds = (
        _selection_folds(qrels, query_ids, selection_folds, seed) if selection == "kfold" and labelled else []
    )

    val_ids = None if folds else val_query_ids  # k-fold: every fit carves its own from its queries

    def fit(params: Mapping[str, Any], train: Mapping[str, Mapping[str, int]]) -> tuple[SearchAdaptor, float]:
        est = SearchAdaptor(**{"seed": seed, "val_fraction": val_fraction, **params, **dict(overrides or {})})
        t0 = time.perf_counter()
        est.fit(
            query_embeddings,
            corpus_embeddings,
            train,
            query_ids,
            corpus_ids,
            val_ids,
            encoder=encoder,
            query_encoder=query_encoder,
            pairs=pairs,
            query_pairs=query_pairs,
            more_pairs=more_pairs,
        )
        return est, time.perf_counter() - t0

    def shipped(est: SearchAdaptor, row: dict[str, Any], where: Executor | None = None) -> SearchAdaptor:
        """``est``, or with ``refit_all`` its refit on every labelled query (timed in ``row``), run
        in ``where`` (the candidates' pool, while it is open) or here."""
        if not (refit_all and labelled):  # (refit_all itself keeps a start that won: one rule)
            return est
        t0 = time.perf_counter()
        job = functools.partial(
            est.refit_all,
            query_embeddings,
            corpus_embeddings,
            qrels,
            query_ids,
            corpus_ids,
            encoder=encoder,
            query_encoder=query_encoder,
            pairs=pairs,
            more_pairs=more_pairs,
        )
        refit = where.submit(job).result() if where is not None else job()
        row["refit_all_s"] = round(time.perf_counter() - t0, 2)
        return refit

    names = [name for name, _ in variants]
    # what trains: (candidate, training queries) per fold, or each candidate once on all of qrels
    jobs = [(i, train) for train, _ in folds for i in range(len(variants))] or [
        (i, qrels) for i in range(len(variants))
    ]
    with contextlib.ExitStack() as stack:
        if pool is None:
            stack.enter_context(compute_threads(1))
            own = stack.enter_context(_Pool(_workers(n_jobs, len(jobs))))
            stack.enter_context(_cancelled_on_error(own))
            pool = own
        order = sorted(range(len(jobs)), key=lambda j: -_cost_rank(variants[jobs[j][0]][1]))
        submitted = {j: pool.submit(fit, variants[jobs[j][0]][1], jobs[j][1]) for j in order}
        results = [submitted[j].result() for j in range(len(jobs))]
        if folds:
            rows, scores = _cross_validated(
                names, results, folds, query_ids, query_embeddings, corpus_ids, corpus_embeddings
            )
            picked = choose(names, scores, rule)
            # the winner trains on every labelled query; with the identity winning, the simplest
            # candidate does, for an identity that records what training saw, as a validation fit's
            refit = names.index(picked) if picked != "identity" else 0
            est, seconds = pool.submit(fit, variants[refit][1], qrels).result()
            rows[refit]["refit_s"] = round(seconds, 2)
            adapter = shipped(est, rows[refit], pool) if picked != "identity" else est.at_start()
            if picked != "identity" and est.best_step_ == 0:
                # the k-fold winner, trained on all the queries, kept its start on its own validation
                # split: the start ships, and is named as such, not as the winner
                rows[refit]["kept_start"] = True
                picked = "identity"
            if on_candidate is not None:
                for row in rows:
                    on_candidate(row)
            return Selection(
                adapter,
                kept_start(adapter) if picked == "identity" else picked,
                rows,
                [q for _, held in folds for q in sorted(held)],
                {names[refit]: est.history_},
                scores,
                {names[refit]: est},
                "kfold",
            )
    fitted: dict[str, SearchAdaptor] = {}
    rows: list[dict[str, Any]] = []
    for name, (est, seconds) in zip(names, results, strict=True):
        fitted[name] = est
        rows.append(_candidate_row(name, est, seconds))
    first = fitted[names[0]]
    val = first.val_query_ids_
    scores: dict[str, np.ndarray] = {}
    if labelled:
        val_qrels = {q: qrels[q] for q in val}
        for name, est in [*fitted.items(), ("identity", first.at_start())]:
            scores[name] = _scores(val_qrels, est, query_ids, query_embeddings, corpus_ids, corpus_embeddings)
        picked = choose(names, scores, rule)
    else:  # trained without labels: the candidate's own criterion chose its checkpoint, labels play no part
        picked = max(names, key=lambda n: (fitted[n].best_score_, -names.index(n)))
        picked = picked if fitted[picked].best_step_ > 0 else "identity"
    adapter = shipped(fitted[picked], rows[names.index(picked)]) if picked != "identity" else first.at_start()
    if on_candidate is not None:
        for row in rows:
            on_candidate(row)
    return Selection(
        adapter,
        kept_start(adapter) if picked == "identity" else picked,
        rows,
        val,
        {name: est.history_ for name, est in fitted.items()},
        scores,
        fitted,
    )


def _candidate_row(name: str, est: SearchAdaptor, seconds: float) -> dict[str, Any]:
    return {
        "variant": name,
        "val_ndcg@10": est.best_score_,
        "zero_shot_val_ndcg@10": est.zero_shot_score_,
        "best_step": est.best_step_,
        "n_steps": est.n_steps_,
        "precision": est.train_precision_,
        "train_s": round(seconds, 2),
    }


#: Labelled queries each fold of ``selection="kfold"`` needs at least: each of its fits holds out a
#: share of its training queries for early stopping, which needs a few.
SELECTION_PER_FOLD = 5


def _selection_needs(k: int) -> int:
    """The fewest labelled queries ``k``-fold selection cross-validates: :data:`SELECTION_PER_FOLD` a fold."""
    return SELECTION_PER_FOLD * k


def _selection_folds_that_work(training: Callable[[int], int], most: int) -> list[int]:
    """The numbers of folds ``k`` with which ``selection="kfold"`` has the queries it needs
    (:func:`_selection_needs`) when each fit it runs in trains on ``training(k)`` labelled queries,
    never more than ``most``: the one rule both the protocol's check, before anything is embedded,
    and :func:`select`'s own apply."""
    return [k for k in range(2, most // SELECTION_PER_FOLD + 1) if training(k) >= _selection_needs(k)]


def _folds_text(works: Sequence[int]) -> str:
    """``works`` (numbers of folds, ascending) for a message: "3", "between 2 and 4", "2, 3 or 5"."""
    if len(works) == 1:
        return str(works[0])
    if list(works) == list(range(works[0], works[-1] + 1)):
        return f"between {works[0]} and {works[-1]}"
    return f"{', '.join(map(str, works[:-1]))} or {works[-1]}"


def _selection_folds(
    qrels: Mapping[str, Mapping[str, int]], query_ids: Sequence[str], k: int, seed: int
) -> list[tuple[Qrels, Qrels]]:
    """(training, held-out) qrels of ``selection="kfold"``: every labelled query held out once.
    (``fit`` checks the same needs per fit in :func:`protocol`, before anything is embedded.)"""
    known = set(map(str, query_ids))
    ids = sorted(q for q in qrels if q in known)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"selection 'kfold' needs an integer number of folds >= 2; got {k!r}")
    works = _selection_folds_that_work(lambda _k: len(ids), len(ids))
    if k not in works:
        fix = f": use {_folds_text(works)} folds or" if works else ", too few for any number of folds: use"
        raise ValueError(
            f"selection 'kfold' with {k} folds needs at least {_selection_needs(k)} labelled queries "
            f"({SELECTION_PER_FOLD} a fold); {len(ids)} given{fix} selection 'validation'"
        )
    return [
        ({q: dict(qrels[q]) for q in train}, {q: dict(qrels[q]) for q in held})
        for train, held in kfold(ids, k, seed=seed)
    ]


def _scores(
    qrels: Mapping[str, Mapping[str, int]],
    est: SearchAdaptor,
    query_ids: Sequence[str],
    query_embeddings: np.ndarray,
    corpus_ids: Sequence[str],
    corpus_embeddings: np.ndarray,
) -> np.ndarray:
    """Per-query nDCG@10 of ``est`` on ``qrels`` (sorted query ids), full-corpus retrieval."""
    emb = Embeddings(
        list(query_ids),
        np.asarray(query_embeddings),
        list(corpus_ids),
        np.asarray(corpus_embeddings),
        est.encoder_,
        query_encoder=est.query_encoder_ or None,
    )
    return evaluate_embeddings(emb, qrels, est, ["ndcg@10"])[1]["ndcg@10"]


def _cross_validated(
    names: Sequence[str],
    results: Sequence[tuple[SearchAdaptor, float]],
    folds: Sequence[tuple[Qrels, Qrels]],
    query_ids: Sequence[str],
    query_embeddings: np.ndarray,
    corpus_ids: Sequence[str],
    corpus_embeddings: np.ndarray,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Candidate rows and per-query held-out nDCG@10 (folds in order, ``"identity"`` zero-shot's) of
    ``selection="kfold"``; ``results`` are the fits, fold by fold, candidates in ``names`` order."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in [*names, "identity"]}
    for f, (_, held) in enumerate(folds):
        fold_fits = results[f * len(names) : (f + 1) * len(names)]
        args = (query_ids, query_embeddings, corpus_ids, corpus_embeddings)
        for name, (est, _) in zip(names, fold_fits, strict=True):
            parts[name].append(_scores(held, est, *args))
        parts["identity"].append(_scores(held, fold_fits[0][0].at_start(), *args))
    scores = {n: np.concatenate(p) for n, p in parts.items()}
    rows = []
    for i, name in enumerate(names):
        fits = results[i :: len(names)]
        rows.append(
            {
                "variant": name,
                "val_ndcg@10": float(scores[name].mean()),
                "zero_shot_val_ndcg@10": float(scores["identity"].mean()),
                "best_step": int(np.median([est.best_step_ for est, _ in fits])),
                "n_steps": int(np.median([est.n_steps_ for est, _ in fits])),
                "precision": fits[0][0].train_precision_,
                "train_s": round(sum(seconds for _, seconds in fits), 2),
            }
        )
    return rows, scores


class _Pool(ThreadPoolExecutor):
    """A thread pool that keeps the futures it hands out, so that an interrupted run can wait for the
    fits already running (:func:`_cancelled_on_error`) without ``Thread.join``, which a second
    Ctrl-C breaks: interrupted, it marks a running thread as ended (CPython's bpo-45274 handling)."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self.futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future


@contextlib.contextmanager
def _cancelled_on_error(*pools: _Pool) -> Iterator[None]:
    """On an exception (Ctrl-C above all), drop the work still queued in ``pools`` and wait only for
    the fits already running, not for every queued candidate to train first; a selection waiting
    on a dropped fit gets ``CancelledError`` and ends too.

    A further Ctrl-C does not cut that wait short: a fit cannot be stopped inside its thread, and
    leaving :func:`compute_threads` while one runs (resetting torch's threads under it) aborted the
    process ("terminate called without an active exception") instead of ending in the one
    "interrupted" line.
    """
    try:
        yield
    except BaseException:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for future in (future for pool in pools for future in pool.futures):
            while True:  # future.exception(), not wait(): the latter never sees a dropped fit end
                try:
                    with contextlib.suppress(CancelledError):
                        future.exception()
                    break
                except KeyboardInterrupt:
                    continue
        raise


def _workers(n_jobs: int | None, n_tasks: int) -> int:
    """Threads to train ``n_tasks`` fits with: ``n_jobs``, or one per CPU core for None or -1
    (scikit-learn's convention)."""
    if n_jobs is not None and (
        isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1
    ):
        raise ValueError(
            f"n_jobs must be an integer >= 1, or None or -1 for one per CPU core; got {n_jobs!r}"
        )
    cores = os.cpu_count() or 1
    return max(1, min(cores if n_jobs in (None, -1) else n_jobs, n_tasks))


def _cost_rank(params: Mapping[str, Any]) -> int:
    """Rough cost of a variant's step, to start the costliest first: documents adapted at each step
    (shared, separate) > queries scored against the whole corpus (in-batch softmax losses) > the rest."""
    adapts_documents = params.get("mode", "shared") != "query_only"
    whole_corpus = bool(params.get("in_batch")) and params.get("full_corpus_max", 1) > 0
    return 2 * adapts_documents + whole_corpus


# -- scoring -------------------------------------------------------------------------------------------
def evaluate_embeddings(
    emb: Embeddings,
    qrels: Mapping[str, Mapping[str, int]],
    adapter: Any = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    corpus: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray], list[str]]:
    """Full-corpus retrieval metrics of zero-shot (``adapter=None``) or adapted embeddings.

    ``adapter`` is anything with ``transform_queries`` / ``transform_corpus`` (a
    :class:`SearchAdaptor` is checked against ``emb``'s encoder); ``corpus`` may pass the already
    transformed corpus to avoid adapting it again.

    Returns
    -------
    means : {metric: float}
    per_query : {metric: ndarray of shape (n_queries,)}
    query_ids : the evaluated queries, in the order of the per-query arrays
    """
    rows = {q: i for i, q in enumerate(emb.query_ids)}
    qids = labelled_queries(qrels)
    missing = [q for q in qids if q not in rows]
    if missing:
        raise ValueError(f"qrels name query {missing[0]!r}, which has no embedding")
    Q = emb.queries[[rows[q] for q in qids]]
    if adapter is None:
        if emb.query_encoder:
            raise ValueError(
                f"queries of {emb.query_encoder.get('model')} and documents of {emb.encoder.get('model')} "
                "are in two spaces: score them through an adapter (its start: the pairs' closed-form map)"
            )
        Q, D = l2_normalize(Q), (corpus if corpus is not None else l2_normalize(emb.corpus))
    else:
        if isinstance(adapter, SearchAdaptor) and emb.encoder:
            adapter.check_encoder(emb.encoder, emb.dim)
            adapter.check_encoder(emb.query_encoder or emb.encoder, Q.shape[1], kind="query")
        Q = adapter.transform_queries(Q)
        D = corpus if corpus is not None else adapter.transform_corpus(emb.corpus)
    top, _ = exact_search(Q, D, max_k(metrics), order=tie_order(emb.doc_ids))  # pytrec_eval's ties
    rel = RelevanceIndex({q: qrels[q] for q in qids}, qids, emb.doc_ids)
    per_query = evaluate_topk(top, rel, metrics, per_query=True)
    means = {m: float(np.mean(per_query[m])) for m in metrics}
    return means, per_query, qids


# -- protocols -----------------------------------------------------------------------------------------
#: Qrels files that, when present, validate every fit instead of a share of its training queries
#: (BEIR's ``dev.tsv``; the first found wins).
VALIDATION_SPLITS = ("dev", "validation", "val")
#: Qrels file names that say a split evaluates but not whether it is scored (a test split) or
#: validates (a dev split, as Hugging Face's "eval" does): refused unless ``--val-split`` names one,
#: rather than guessed or passed over while ``fit`` cross-validates over the training queries.
AMBIGUOUS_SPLITS = ("eval", "evaluation")


@dataclass
class Protocol:
    """How a dataset is scored: ``folds`` of (name, training qrels, held-out qrels), and the qrels the
    adapter that ships is trained on. ``test`` has one fold named "test"; ``kfold`` has "k0", "k1", ...
    ``val`` (from the split ``val_split``) validates every fit; without one each fit carves its own
    validation share from its training queries, drawn with ``seed``. ``train_left_out``: the
    training split's queries that the scored split also holds, which train nothing; ``val_left_out``:
    the ``val_split`` split's, which validate nothing; ``train_in_val``: the training split's queries
    that the validation split also holds, which validate and train nothing; ``unused_splits``: the
    qrels splits the protocol reads nothing from; ``warnings``: what the run must say about how it
    read the qrels, a line each (:func:`run_fit` logs them; ``fit`` prints them before anything is
    embedded)."""

    name: str  # "test" or "kfold"
    scored_split: str
    folds: list[tuple[str, Qrels, Qrels]]
    final_train: Qrels
    train_split: str | None = None
    val_split: str | None = None
    val: Qrels = field(default_factory=dict)
    seed: int = 0  # the fits' seed: the k-fold folds and each fit's own validation share
    train_left_out: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    val_left_out: list[str] = field(default_factory=list)
    train_in_val: list[str] = field(default_factory=list)
    unused_splits: list[str] = field(default_factory=list)


def _left_out_warning(
    left_out: int,
    of: int,
    path: Path,
    scored_file: Path,
    kept_out_of: str,
    role: str = "the scored split",
    so_that: str = "every scored query stays held-out",
) -> list[str]:
    """The warning (a line, or none where ``left_out`` is 0) that ``left_out`` of the ``of`` labelled
    queries of ``path`` are also in ``scored_file`` (``role``: the scored split, or the validation
    split) and so are left out of ``kept_out_of`` (what they would have done: "training, early
    stopping and selection" for the training split), ``so_that`` what this keeps true."""
    if not left_out:
        return []
    return [
        f"{left_out} of the {of} labelled queries of {path} {'is' if left_out == 1 else 'are'} also in "
        f"{scored_file}, {role}: {'it is' if left_out == 1 else 'they are'} left out of "
        f"{kept_out_of}, so that {so_that}"
    ]


def protocol(
    dataset: Dataset,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    train_split: str = "train",
    test_split: str = "test",
    val_split: str = "auto",
    selection: str = DEFAULT_SELECTION,
) -> Protocol:
    """The protocol ``fit`` uses on ``dataset``: official train/test split if there is one, else k-fold
    over the labelled queries (a different fold assignment per seed) of the test split, else of the
    train split, else of the first split that is not a validation one.

    ``val_split``: the qrels split that validates (early stopping and selection); ``"auto"`` takes
    the first of :data:`VALIDATION_SPLITS` the dataset has, ``"none"`` a share of the training
    queries. Its queries that the scored split also holds are left out: no scored query validates.
    Training queries that the scored split also holds are left out the same way, so that no scored
    query trains either (said in ``warnings``); a training split holding no other is refused. So are
    training queries that the validation split holds (they validate only: a candidate is not chosen
    on queries it trained on), unless ``selection`` "kfold" pools the two splits anyway.

    ``selection``: :func:`select`'s, with ``folds`` folds inside every fit's training queries
    (``fit --selection kfold``); checked here, so that a fit with too few queries for it is refused
    before anything is embedded (and paid for).

    A qrels file the protocol reads nothing from (``training.tsv``, a second validation split) is
    named in ``warnings`` with how to make it count, and one of :data:`AMBIGUOUS_SPLITS` is refused.
    """
    qrels_dir = dataset.path / "qrels"
    # a train split is one, labelled or not: one with no relevant document is refused (Dataset.split),
    # not passed over for k-fold on the test split, as if there were none
    if train_split in dataset.splits and test_split in dataset.splits:
        train_file, test_file = qrels_dir / f"{train_split}.tsv", qrels_dir / f"{test_split}.tsv"
        test = dataset.split(test_split)
        judged = dataset.split(train_split)
        train = {q: labels for q, labels in judged.items() if q not in test}
        left_out = sorted(set(judged) - set(train))
        if not train:
            raise DataError(
                f"{train_file}: all {len(judged)} of its labelled queries are also in {test_file}, whose "
                f"queries are scored and never train; give {train_file.name} queries of its own, or move "
                f"it aside to cross-validate over the {test_file.name} queries"
            )
        val_name, val, val_left_out, val_warnings = _validation(
            dataset, val_split, {train_split, test_split}, test, test_file, selection
        )
        unused, unused_warnings = _unused_splits(
            dataset,
            {train_split, test_split},
            val_name,
            val_split,
            f"trains on {train_file.name} and scores {test_file.name}",
        )
        # training queries the validation split holds validate only (--selection kfold pools the two)
        in_val = sorted(set(train) & set(val)) if selection != "kfold" else []
        val_file = qrels_dir / f"{val_name}.tsv"
        if in_val and len(in_val) == len(train):
            raise DataError(
                f"{train_file}: all {len(train)} of its labelled queries that {test_file.name} does not hold "
                f"are also in {val_file}, whose queries validate and never train; give {train_file.name} "
                f"queries of its own, or pass --val-split none to validate on a share of them"
            )
        validating_only = set(in_val)
        train = {q: labels for q, labels in train.items() if q not in validating_only}
        if not val and len(train) < 2 and selection != "kfold":  # (kfold's own check says what it needs)
            # one query cannot both train and validate: said here, naming the file, not after embedding
            held = f" (the other {len(left_out)} are also in {test_file.name})" if left_out else ""
            raise too_few_to_validate(
                len(train),
                str(train_file),
                f"{held}: label more queries, or add a qrels/dev.tsv to validate on",
            )
        warnings = (
            _left_out_warning(
                len(left_out), len(judged), train_file, test_file, "training, early stopping and selection"
            )
            + val_warnings
            + _left_out_warning(
                len(in_val),
                len(judged),
                train_file,
                val_file,
                "training (they validate only)" if len(in_val) > 1 else "training (it validates only)",
                "the validation split",
                "no candidate is chosen on queries it trained on",
            )
            + unused_warnings
        )
        proto = Protocol(
            "test",
            test_split,
            [("test", train, test)],
            train,
            train_split,
            val_name,
            val,
            seed,
            left_out,
            warnings,
            val_left_out,
            in_val,
            unused,
        )
        if selection == "kfold":
            n = len({**train, **val})
            _check_selection(
                train_file,
                folds,
                lambda _k: n,
                n,
                "to train on",
                f"there are {n}" + (f", the {val_name} split's included" if val else ""),
            )
        return proto
    if not dataset.splits:
        raise DataError(f"{qrels_dir}: no qrels files (add qrels/test.tsv with query-id, corpus-id, score)")
    # k-fold over the test split, else the train split, else any split but a validation one: never
    # a dev split that happens to sort first while the training queries go unused
    scorable = [s for s in (test_split, train_split) if s in dataset.splits]
    scorable += [s for s in dataset.splits if s not in VALIDATION_SPLITS] + list(dataset.splits)
    split = scorable[0]
    labelled = dataset.split(split)
    path = qrels_dir / f"{split}.tsv"
    val_name, val, val_left_out, warnings = _validation(
        dataset, val_split, {split}, labelled, path, selection
    )
    unused, unused_warnings = _unused_splits(
        dataset, {split}, val_name, val_split, f"cross-validates over {path.name}"
    )
    warnings += unused_warnings
    need = 1 if val else 2
    _check_folds(path, labelled, folds, need)
    parts = kfold(sorted(labelled), k=folds, seed=seed)
    if selection == "kfold":  # each fold's fits (and the final one on all) select among the fold's queries
        n, v = len(labelled), len(val)
        sizes = sorted({len(tr) + v for tr, _ in parts})
        _check_selection(
            path,
            folds,
            lambda k: _fold_training(n, k) + v,
            n + v,
            "in each training fold",
            f"of its {n} labelled queries each training fold has {' or '.join(map(str, sizes))}"
            + (f", the {val_name} split's {v} included" if val else ""),
            _folds_that_work(n, need),
        )
    return Protocol(
        "kfold",
        split,
        [
            (f"k{i}", {q: labelled[q] for q in tr}, {q: labelled[q] for q in te})
            for i, (tr, te) in enumerate(parts)
        ],
        labelled,
        val_split=val_name,
        val=val,
        seed=seed,
        warnings=warnings,
        val_left_out=val_left_out,
        unused_splits=unused,
    )


def _unused_splits(
    dataset: Dataset, used: set[str], val_name: str | None, val_split: str, uses: str
) -> tuple[list[str], list[str]]:
    """(names, warnings): the dataset's qrels splits that a protocol reading ``used`` and validating
    on ``val_name`` (``val_split`` as given) reads nothing from, and a line each saying so and how to
    make it count (``uses``: what this fit does with the splits in ``used``). A qrels file that is
    neither trained on, scored nor validated on was passed over without a word, even
    ``training.tsv`` beside ``testing.tsv`` (k-fold ran over the latter). A validation split passed
    over for ``--val-split none`` is no surprise: it is not named. One of :data:`AMBIGUOUS_SPLITS`
    is refused: ``eval.tsv`` beside ``train.tsv`` is more likely meant to be scored, or to
    validate, than to lie unused while the training queries are cross-validated."""
    qrels_dir = dataset.path / "qrels"
    if val_name:
        uses += f", validating on {val_name}.tsv"
    names: list[str] = []
    warnings: list[str] = []
    for name in dataset.splits:
        if name in used or name == val_name or (val_split == "none" and name in VALIDATION_SPLITS):
            continue
        path = qrels_dir / f"{name}.tsv"
        if name in AMBIGUOUS_SPLITS:
            raise DataError(
                f"{path}: a split named {name!r} could be scored or validate, so fit reads neither from it; "
                f"rename it test.tsv (scored; held-out) or dev.tsv (validates early stopping and "
                f"selection), or pass --val-split {name}"
            )
        names.append(name)
        if name in VALIDATION_SPLITS:  # another one validates: the first found, or --val-split's
            fix = f"pass --val-split {name} to validate on it instead"
        else:
            fix = (
                "fit reads qrels files by name (train.tsv trains, test.tsv is scored, dev.tsv, "
                f"validation.tsv or val.tsv validates): rename it to one of these, or pass --val-split "
                f"{name} to validate on it"
            )
        warnings.append(f"{path} is not used: this fit {uses}; {fix}")
    return names, warnings


def _fold_training(n: int, k: int) -> int:
    """The fewest queries a fold of ``k``-fold over ``n`` trains on: n - ceil(n/k) (the folds of
    :func:`~search_adaptor.data.kfold` differ by at most one)."""
    return n - -(-n // k)


def _folds_that_work(n: int, need: int) -> list[int]:
    """The numbers of folds over ``n`` queries with which every fold trains on ``need`` or more."""
    return [k for k in range(2, n + 1) if _fold_training(n, k) >= need]


def _check_selection(
    path: Path,
    folds: int,
    training: Callable[[int], int],
    most: int,
    where: str,
    has: str,
    allowed: Sequence[int] | None = None,
) -> None:
    """Refuse ``selection="kfold"`` over ``folds`` folds when a fit would train on too few labelled
    queries for it (:func:`_selection_folds_that_work`, the rule :func:`select` applies): ``training(k)``
    is what a fit has with ``--folds k`` (which sets the protocol's folds too; ``allowed``: those it
    accepts), ``where`` and ``has`` say it, and the message names ``path`` and the ``--folds``
    values that work, or that none does."""
    works = [k for k in _selection_folds_that_work(training, most) if allowed is None or k in allowed]
    if folds in works:
        return
    fix = (
        f"pass --folds {_folds_text(works)}, or --selection validation"
        if works
        else "no --folds value leaves enough: pass --selection validation, or label more queries"
    )
    raise DataError(
        f"{path}: --selection kfold with --folds {folds} needs at least {_selection_needs(folds)} labelled "
        f"queries {where} ({SELECTION_PER_FOLD} a selection fold), and {has}; {fix}"
    )


def _check_folds(path: Path, labelled: Qrels, folds: int, need: int) -> None:
    """Refuse ``folds`` that leave a fold fewer than ``need`` training queries with a relevant
    document (two: one trains, one validates; one when a validation split is given), naming the
    ``--folds`` values that work."""
    n = sum(any(g >= 1 for g in judged.values()) for judged in labelled.values())
    works = _folds_that_work(n, need)
    if folds in works:
        return
    fix = (
        f"pass --folds {works[0] if len(works) == 1 else f'between {works[0]} and {works[-1]}'}, or label "
        "more queries"
        if works
        else f"label at least {need + 1} queries (each fold trains on the others)"
    )
    raise DataError(
        f"{path}: {n} labelled queries cannot make {folds} folds that each train on {need} or more; {fix}"
    )


def _validation(
    dataset: Dataset,
    name: str,
    taken: set[str],
    scored: Mapping[str, Any],
    scored_file: Path,
    selection: str = DEFAULT_SELECTION,
) -> tuple[str | None, Qrels, list[str], list[str]]:
    """(split name, qrels, the ids left out, warnings) that validate, per :func:`protocol`'s
    ``val_split``; (None, {}, [], []) for none. The split's queries that ``scored`` (read from
    ``scored_file``) also holds are left out, so that no scored query stops training early or chooses
    the adapter (nor trains it, where ``selection`` "kfold" pools the split with the training
    queries); the warning (a line, or none) counts them, naming both files, as the training split's
    are counted: left out without a word, they made the validation set smaller than the file said."""
    if name == "none":
        return None, {}, [], []
    if name == "auto":
        found = [s for s in VALIDATION_SPLITS if s in dataset.splits and s not in taken]
        if not found:
            return None, {}, [], []
        name = found[0]
    elif name in taken:
        raise DataError(
            f"--val-split {name}: that split already trains or is scored; name another split, or none "
            "to validate on a share of the training queries"
        )
    try:
        judged_split = dataset.split(name)
    except DataError as error:
        raise DataError(f"{error}; --val-split none validates on a share of the training queries") from None
    val = {q: judged for q, judged in judged_split.items() if q not in scored}
    val_file = dataset.path / "qrels" / f"{name}.tsv"
    if not val:
        raise DataError(
            f"{val_file}: every query of the validation split is also a scored one; remove them from "
            "it, or pass --val-split none"
        )
    left_out = sorted(set(judged_split) - set(val))
    warnings = _left_out_warning(
        len(left_out),
        len(judged_split),
        val_file,
        scored_file,
        f"{'training, ' if selection == 'kfold' else ''}early stopping and selection",
    )
    return name, val, left_out, warnings


@dataclass
class Run:
    """A finished job: the report (see :mod:`search_adaptor.report`), the adapter, and what its
    figures are drawn from."""

    report: dict[str, Any]
    adapter: SearchAdaptor
    emb: Embeddings
    figure_qrels: Qrels  # the queries of the similarity figure
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)  # figure name -> title
    reference: Any = None  # the figure's left panel: None for zero-shot, a cross-model adapter's start


def run_fit(
    dataset: Dataset,
    emb: Embeddings,
    family: str = DEFAULT_FAMILY,
    seed: int = 0,
    folds: int = DEFAULT_FOLDS,
    train_split: str = "train",
    test_split: str = "test",
    overrides: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    rule: str = DEFAULT_RULE,
    n_jobs: int | None = None,
    dims: Sequence[int] | None = None,
    unsupervised: bool = False,
    selection: str = DEFAULT_SELECTION,
    val_split: str = "auto",
    warn: Callable[[str], None] | None = None,
    refit_all: bool | None = None,
    pairs_left_out: int = 0,
) -> Run:
    """Train, select and evaluate under :func:`protocol`; the test queries never reach training,
    early stopping or selection. A validation split (``val_split``, :func:`protocol`'s: a dataset's
    dev split by default) validates every fit; its queries train none of the candidates.

    ``rule``, ``n_jobs``, ``selection`` and ``refit_all`` are :func:`select`'s (with
    ``selection="kfold"``, each k-fold fold's selection cross-validates inside that fold's
    training queries, ``folds`` folds). ``refit_all=None`` is the family's default: on for the
    families of :data:`~search_adaptor.variants.REFIT_BY_DEFAULT` (``auto``: its winner is then
    trained again on every labelled query, the validation split's too), off for the others and for
    fits without labels.

    ``dims`` trains Matryoshka prefixes of those sizes (family ``matryoshka`` unless another is
    named) and scores each size against truncation and PCA of the same size; ``unsupervised``
    trains without labels (family ``matryoshka-unsupervised``), which are then used only to score.

    :func:`protocol`'s warnings (labelled queries left out because the scored split holds them) go
    to ``log``, a line each starting "warning: "; ``warn``, where given, takes them instead (``fit``
    prints them before embedding, so that a user can stop a run before paying for it, and passes a
    no-op here so that they are not said twice).

    ``pairs_left_out``: how many paired texts the caller left out of ``emb.more_pairs`` before
    embedding, as the texts of queries this fit scores or validates (:func:`without_held_out`);
    recorded beside the paired texts' counts.
    """
    family = fit_family(family, dims, unsupervised, cross=bool(emb.query_encoder), selection=selection)
    if refit_all is None:  # the family's default, once ``fit_family`` has said which family trains
        refit_all = family in REFIT_BY_DEFAULT
    if dims and {int(m) for m in dims} == {emb.dim}:  # a Matryoshka fit with no smaller size to train
        raise ValueError(
            f"dims: {emb.dim} is the embeddings' full width, which every adapter keeps; give smaller "
            "sizes to train its prefixes at (e.g. 48,96,192), or no --dims"
        )
    if dims:
        overrides = {**dict(overrides or {}), "dims": tuple(int(m) for m in dims)}
    proto = protocol(dataset, folds, seed, train_split, test_split, val_split, selection)
    for warning in proto.warnings:
        (warn or log)(f"warning: {warning}")
    if proto.val_split and family != "matryoshka-unsupervised":  # that one validates on the corpus
        if selection == "kfold":
            log(
                f"the {proto.val_split} split's {len(proto.val)} queries join the training queries: "
                "--selection kfold cross-validates over all of them"
            )
        else:
            log(
                f"validation: the {proto.val_split} split, {len(proto.val)} queries "
                "(--val-split none: a share)"
            )
    metric = "val " + val_metric_name("neighbours@10" if unsupervised else "ndcg@10")

    def fit_on(qrels: Mapping[str, Mapping[str, int]], tag: str, pool: Executor) -> Selection:
        def on_candidate(row: dict[str, Any]) -> None:
            log(
                f"  {tag} {row['variant']}: {metric} {row['val_ndcg@10']:.4f} "
                f"(zero-shot {row['zero_shot_val_ndcg@10']:.4f}), {row['train_s']} s"
            )

        return select(
            family,
            emb.queries,
            emb.corpus,
            {**qrels, **proto.val},
            emb.query_ids,
            emb.doc_ids,
            seed=seed,
            overrides=overrides,
            on_candidate=on_candidate,
            encoder=emb.encoder,
            rule=rule,
            n_jobs=n_jobs,
            query_encoder=emb.query_encoder,
            pairs=None if emb.pairs is None else (emb.pairs, emb.corpus),
            query_pairs=emb.query_pairs,
            more_pairs=emb.more_pairs,
            pool=pool,
            selection=selection,
            selection_folds=folds,
            val_query_ids=sorted(proto.val) if proto.val else None,
            refit_all=refit_all,
        )

    start = time.perf_counter()
    # every fold's selection (and k-fold's final fit on all labelled queries) at once, their
    # candidates sharing one pool: no fold waits for the slowest candidate of the one before
    jobs = [
        (train_q, "train" if proto.name == "test" else f"fold {f + 1}/{folds}")
        for f, (_, train_q, _) in enumerate(proto.folds)
    ]
    if proto.name != "test":
        jobs.append((proto.final_train, "all"))
    n_candidates = len(family_variants(family))
    with (
        compute_threads(1),
        _Pool(_workers(n_jobs, n_candidates * len(jobs))) as pool,
        _Pool(len(jobs)) as folds_pool,
        _cancelled_on_error(folds_pool, pool),
    ):
        selections = list(folds_pool.map(lambda job: fit_on(*job, pool), jobs))
    sizes, rotation = _scored_sizes(emb, (overrides or {}).get("dims"))
    base: PairStart | None = None  # a cross-model fit's size baselines start here: once for every fold
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    folds_info: list[dict[str, Any]] = []
    final: Selection | None = None
    for f, (name, _, test_q) in enumerate(proto.folds):
        sel = selections[f]
        means: dict[str, dict[str, float]] = {}
        if sizes and sel.adapter.query_encoder_ and base is None:
            base = PairStart.of(sel.adapter, emb)
        for system, (data, view) in _systems(sel.adapter, sizes, rotation, base, emb).items():
            means[system], per_query, _ = evaluate_embeddings(data, test_q, view)
            parts.setdefault(system, []).append(per_query)
        if proto.name == "test":
            final = sel
            continue
        folds_info.append(
            {
                "fold": f + 1,
                "name": name,
                "selected": sel.selected,
                "n_test_queries": len(test_q),
                **means,
                "candidates": sel.candidates,
            }
        )
        zs_f, ad_f = means["zero-shot"]["ndcg@10"], means["adapted"]["ndcg@10"]
        log(f"fold {f + 1}/{folds}: {sel.selected}: nDCG@10 {zs_f:.4f} -> {ad_f:.4f}")
    scores = {s: {m: np.concatenate([p[m] for p in ps]) for m in DEFAULT_METRICS} for s, ps in parts.items()}
    if final is None:  # kfold: the adapter that ships is trained on every labelled query
        final = selections[-1]
    n_test = len(scores["zero-shot"][DEFAULT_METRICS[0]])
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "model": emb.encoder["model"],
        "encoder_fingerprint": emb.encoder["fingerprint"],
        "family": family,
        "seed": seed,
        "protocol": proto.name,
        "test_split": proto.scored_split,
        "n_test_queries": n_test,
        **_unscored(dataset, proto.scored_split),
        **_query_model(emb),
    }
    if proto.unused_splits:  # qrels files this fit read nothing from (said before embedding)
        report["unused_splits"] = proto.unused_splits
    if emb.pairs is not None:  # what the map trained on beside the labels: the texts embedded by both
        more = 0 if emb.more_pairs is None else len(usable_pairs(*emb.more_pairs)[0])
        report["paired_texts"] = {
            "corpus": len(usable_pairs(emb.pairs, emb.corpus)[0]),
            "more": more,
            "left_out": pairs_left_out,  # held-out queries' texts, never embedded (without_held_out)
        }
    if proto.name == "test":
        report["train_split"] = proto.train_split
        # training queries the scored split also holds: left out, so none of them trained
        report["train_left_out"] = {
            "n": len(proto.train_left_out),
            "of": len(proto.final_train) + len(proto.train_left_out) + len(proto.train_in_val),
        }
        if proto.val_split:  # training queries the dev split also holds: left out, they validate only
            report["train_in_val"] = {
                "split": proto.val_split,
                "n": len(proto.train_in_val),
                "of": report["train_left_out"]["of"],
            }
    else:
        report.update(folds=folds, fold_results=folds_info)
    if proto.val_split:  # the dev split's queries the scored split also holds: left out, none validated
        report["val_left_out"] = {
            "split": proto.val_split,
            "n": len(proto.val_left_out),
            "of": len(proto.val) + len(proto.val_left_out),
        }
    report.update(_comparison(scores, sizes))
    report["selected"] = final.selected
    report["start"] = final.adapter.start_  # what each candidate started from, and a kept start is
    report["selection_rule"] = rule
    report["validation"] = {
        "metric": final.adapter.val_metric_,
        "selection": final.method,
        # the dev split, where it validated (k-fold selection pools it; no labels: the fits' own criterion)
        "split": proto.val_split if final.method == "validation" and final.val_query_ids else None,
        # without labels, the fit's own held-out query texts (its validation ids are labelled ones)
        "n_val_queries": len(final.val_query_ids) or final.adapter.n_val_queries_,
        **_selection_scores(final),
        "candidates": final.candidates,
    }
    if final.adapter.refit_all_:  # the weights shipped trained on every query, validation's included
        report["validation"]["refit_all"] = {
            "n_train_queries": final.adapter.n_train_queries_,
            "steps": final.adapter.best_step_,
        }
    report["timings"] = {"embed_s": round(emb.embed_s, 2), "train_s": round(time.perf_counter() - start, 2)}
    report["encoder_calls"] = {"texts_sent": emb.stats.encoded, "texts_cached": emb.stats.cached}
    report["library_version"] = __version__
    if proto.name == "test":
        titles = {
            "similarity": f"{dataset.name}: {n_test} held-out {proto.scored_split} queries",
            "learning_curves": f"{dataset.name}: validation nDCG@10 per candidate",
        }
        figure_qrels = proto.folds[0][2]
    else:
        titles = {
            "similarity": f"{dataset.name}: all {n_test} labelled queries (seen in training)",
            "learning_curves": (
                f"{dataset.name}: validation nDCG@10 per candidate, final fit on all labelled queries"
            ),
        }
        figure_qrels = proto.final_train
    final.adapter.query_text_digests_ = _trained_texts(dataset, final.adapter, final.val_query_ids)
    if proto.name == "test":  # no scored id trained (protocol), yet a text may repeat (SciFact: 2 of 300)
        report["seen_in_training"] = _seen(dataset, final.adapter, proto.folds[0][2])
    else:  # each fold's scored queries, against what trained or chose that fold's own adapter
        report["seen_in_training"] = _seen_in_folds(dataset, selections, proto)
    reference = final.adapter.at_start() if final.adapter.query_encoder_ else None
    return Run(report, final.adapter, emb, figure_qrels, final.histories, titles, reference)


def _unscored(dataset: Dataset, split: str) -> dict[str, Any]:
    """``{"unscored": {"n", "of"}}``: the queries of the scored split whose judgements are all grade 0,
    which no rank metric can score (left out, as :meth:`~search_adaptor.data.Dataset.split` leaves
    them), when there are any; BEIR's mean counts each as 0, so a report says how many."""
    judged = dataset.qrels.get(split, {})
    n = len(judged) - len(labelled_queries(judged))
    return {"unscored": {"n": n, "of": len(judged)}} if n else {}


def _seen_in_folds(dataset: Dataset, selections: Sequence[Selection], proto: Protocol) -> dict[str, Any]:
    """:func:`_seen` of a k-fold fit, by text: how many scored queries repeat, up to case and spacing,
    the text of a query that trained or chose their own fold's adapter (no id does: folds split ids,
    and a dataset may hold one question under two ids). A fold that kept its start flatters none."""
    n = of = 0
    for sel, (_, _, scored_qrels) in zip(selections, proto.folds, strict=False):  # (then "all")
        scored = labelled_queries(scored_qrels)
        of += len(scored)
        if sel.adapter.is_identity_:
            continue
        n += _repeating(dataset, scored, set(_trained_texts(dataset, sel.adapter, sel.val_query_ids)))
    return {"n": n, "of": of, "by": "text"}


def _repeating(dataset: Dataset, scored: Sequence[str], known: set[str]) -> int:
    """How many ``scored`` queries have a text among the digests ``known``: as :func:`_digest` takes it
    now, or as written (the digests adapters recorded before)."""
    return sum(
        _digest(dataset.queries[q]) in known or _digest(dataset.queries[q], exact=True) in known
        for q in scored
    )


def _selection_scores(final: Selection) -> dict[str, Any]:
    """The validation block's scores of what selection chose and of zero-shot, on the queries it
    compared them on: a validation split's (the shipped fit's own), or with k-fold selection every
    query held out once, the winner's refit on all of them then stopping early on a split of its
    own (``refit``, apart: it is not what chose it)."""
    adapter = final.adapter
    if final.method != "kfold":
        return {
            "selected_val_ndcg@10": adapter.best_score_,
            "zero_shot_val_ndcg@10": adapter.zero_shot_score_,
        }
    winner = "identity" if is_kept_start(final.selected) else final.selected
    return {
        "selected_val_ndcg@10": float(np.mean(final.val_scores[winner])),
        "zero_shot_val_ndcg@10": float(np.mean(final.val_scores["identity"])),
        "refit": {
            "n_val_queries": adapter.n_val_queries_,
            "val_ndcg@10": adapter.best_score_,
            "zero_shot_val_ndcg@10": adapter.zero_shot_score_,
        },
    }


def _trained_texts(dataset: Dataset, adapter: SearchAdaptor, selected_on: Sequence[str]) -> list[str]:
    """Digests (:func:`_digest`) of the texts of the queries whose labels trained ``adapter``, stopped
    it early or chose it (``selected_on``), or, for a fit without labels, whose texts did (a
    cross-model map trained on the query texts, Matryoshka prefixes on their neighbours): what
    ``evaluate`` must not count as held-out."""
    ids = {*adapter.train_query_ids_, *adapter.val_query_ids_, *selected_on}
    return sorted({_digest(dataset.queries[q]) for q in ids if q in dataset.queries})


def _seen(
    dataset: Dataset, adapter: SearchAdaptor, qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, Any] | None:
    """How many of the queries ``qrels`` scores are one whose labels (without labels, whose texts)
    trained or chose ``adapter`` (``{"n", "of", "by"}``): by text (``"by": "text"``, the digests
    ``search-adaptor fit`` records), else by id (``"by": "id"``: a Python fit records its training and
    validation query ids, not their texts); None when a labelled adapter records no training ids
    (a file written before they were recorded: some also record their validation ids, which alone
    would count the training queries as held-out). A fit without labels written before it recorded
    its texts' ids records none: no query counts, as then."""
    scored = labelled_queries(qrels)
    if adapter.query_text_digests_ is not None:
        known = set(adapter.query_text_digests_)
        return {"n": _repeating(dataset, scored, known), "of": len(scored), "by": "text"}
    labelled = adapter.fitted_params_["loss"] not in UNLABELLED_LOSSES
    ids = (
        {*adapter.train_query_ids_, *adapter.val_query_ids_}
        if labelled or adapter.train_query_ids_
        else set()
    )
    if labelled and not adapter.train_query_ids_:  # a labelled fit always trains on some
        return None
    return {"n": sum(q in ids for q in scored), "of": len(scored), "by": "id"}


def without_held_out(
    texts: Sequence[str],
    dataset: Dataset,
    proto: Protocol,
    val_fraction: float = VAL_FRACTION,
    selection: str = DEFAULT_SELECTION,
) -> tuple[list[str], int]:
    """``texts`` (paired texts for a query model: a query log, the corpus's sentences) without those
    that are, up to case and spacing, the text of a query ``proto`` scores or validates, and how many
    were left out: a scored query's own text, paired, would train the map its score goes through, and
    that score would no longer be a held-out one; a validation query's would inflate the score that
    stops training early and chooses the candidate. Validation is ``proto``'s split, or, without
    one, the share of the training queries each fit draws itself (``val_fraction``, :func:`_drawn`);
    with ``selection="kfold"``, every training query, as each is held out once to choose."""

    held = (
        {q for _, _, scored in proto.folds for q in scored}
        | set(proto.val)
        | _drawn(dataset, proto, val_fraction)
        | (set(proto.folds[0][1]) if selection == "kfold" and proto.name == "test" else set())
    )
    held_texts = {_same(dataset.queries[q]) for q in held if q in dataset.queries}
    kept = [t for t in texts if _same(t) not in held_texts]
    return kept, len(texts) - len(kept)


def _drawn(dataset: Dataset, proto: Protocol, val_fraction: float) -> set[str]:
    """The queries a fit under ``proto`` draws from its training queries to validate on, known before
    it trains (:func:`~search_adaptor.training.drawn_validation`: the same draw, seed and share): with
    a train and test split and no validation split, the share of the training queries that every
    candidate holds out (they share the seed). The family is not known yet, so both draws: by
    labels (queries with a relevant document) and by texts (every query, without labels); they are
    one draw when every training query has a relevant document. None otherwise: a validation split
    validates, and a k-fold fit draws its share from queries another fold scores."""
    if proto.name != "test" or proto.val:
        return set()
    train = proto.folds[0][1]
    return {
        q
        for labels in (True, False)
        for q in drawn_validation(train, dataset.queries, val_fraction, proto.seed, labels)
    }


def _same(text: str) -> str:
    """A query text up to case and spacing: two queries that differ only there are one query (an
    uncased model, MiniLM among them, gives them one vector)."""
    return " ".join(text.casefold().split())


def _digest(query: str, exact: bool = False) -> str:
    """A query text's 64-bit digest, hex (the first half of its store key), up to case and spacing
    (:func:`_same`), or with ``exact`` as written: what adapters recorded before (both are looked for).
    Two texts never meet in practice."""
    return text_key("query", query if exact else _same(query)).hex()[:16]


def fit_family(
    family: str, dims: Sequence[int] | None, unsupervised: bool, cross: bool, selection: str = "validation"
) -> str:
    """The family a fit trains, given ``--dims``, ``--unsupervised``, queries of another model
    (``cross``) and ``--selection``, or a one-line error (the CLI asks before embedding anything)."""
    check_selection(unsupervised, selection, family=family)
    if cross:
        if dims and unsupervised:
            raise ValueError(
                "without labels a cross-model map keeps the documents as they are, so it has no prefixes "
                "to train: drop --dims or --unlabelled"
            )
        wanted = "cross-matryoshka" if dims else "cross-unlabelled" if unsupervised else "cross"
        if family not in (DEFAULT_FAMILY, wanted):
            raise ValueError(
                f"queries of another model train family {wanted}, not {family}: {_cross_fix(family, wanted)}"
            )
        return wanted
    if family in CROSS_FAMILIES:
        raise ValueError(
            f"--family {family} maps the queries of another model into the documents' space: give that "
            "model with --query-model (and --query-provider), or drop --family"
        )
    named = family != DEFAULT_FAMILY
    if unsupervised:
        if family not in (DEFAULT_FAMILY, "matryoshka-unsupervised"):
            raise ValueError(f"--unsupervised trains family matryoshka-unsupervised, not {family}")
        family = "matryoshka-unsupervised"
    elif dims and family == DEFAULT_FAMILY:
        family = "matryoshka"
    query_only = [n for n, p in family_variants(family) if p.get("mode") == "query_only"]
    if dims and query_only:  # refused by SearchAdaptor too, but in terms (mode) the CLI has no flag for
        raise ValueError(
            f"--dims trains prefixes of the documents' vectors too, and family {family} adapts the queries "
            f"only ({', '.join(query_only)}): drop --family (with --dims the default trains family "
            "matryoshka), or name one that adapts the documents too (shared-infonce, paper)"
        )
    if family in MATRYOSHKA and not dims:
        if unsupervised and not named:  # without labels either trains, and --unlabelled names neither
            raise ValueError(
                "a fit without labels trains Matryoshka prefixes (give their sizes, e.g. --dims 64,128,256) "
                "or a map from another model's queries (give it with --query-model and --query-provider)"
            )
        raise ValueError(
            f"family {family} trains Matryoshka prefixes: give their sizes, e.g. --dims 64,128,256"
        )
    return family


def check_selection(
    unsupervised: bool, selection: str, refit_all: bool | None = None, family: str = DEFAULT_FAMILY
) -> None:
    """Refuse ``--selection kfold`` or ``--refit-all`` (asked for: ``refit_all`` True, not the
    family's default None) for a fit without labels (they need labelled queries), asked for with
    ``--unsupervised`` or by naming the family that trains so: flags alone decide it, so the CLI asks
    before it reads the data (:func:`fit_family` asks too)."""
    unsupervised = unsupervised or family == "matryoshka-unsupervised"
    if unsupervised and refit_all:
        raise ValueError(
            "--refit-all trains the winner again on every labelled query, and a fit without labels "
            "has none: drop --refit-all"
        )
    if unsupervised and selection == "kfold":
        raise ValueError(
            "--selection kfold cross-validates labelled queries, and a fit without labels trains on "
            "none: drop --selection kfold"
        )


#: The families that map the queries of another model (``fit --query-model``) into the documents'
#: space, each with the flag that trains it beside the query model's (``cross``: none).
CROSS_FAMILIES = {"cross": None, "cross-unlabelled": "--unlabelled", "cross-matryoshka": "--dims"}


def _cross_fix(family: str, wanted: str) -> str:
    """What to do when ``--family family`` is asked for while the flags given with a query model
    train family ``wanted``: the flags to add and to drop, or drop --family."""
    if family not in CROSS_FAMILIES:
        return "drop --family, or the --query-* flags"
    add, drop = CROSS_FAMILIES[family], CROSS_FAMILIES[wanted]
    steps = [f"add {add}{' SIZES (e.g. --dims 64,128)' if add == '--dims' else ''}"] if add else []
    steps += [f"drop {drop}"] if drop else []
    return f"{' and '.join(steps)}, or drop --family"


def _comparison(scores: Mapping[str, Mapping[str, np.ndarray]], sizes: Sequence[int] = ()) -> dict[str, Any]:
    """The report's ``metrics`` (every system) and ``significance`` from per-query scores.

    ``significance`` tests adapted against zero-shot on nDCG@10 (``p_value``) and on every other
    metric (``p_values``); against the documents' model
    (``p_value_vs_documents_model``) for a cross-model run; with Matryoshka ``sizes``, per size,
    ``adapted@m`` against ``zero-shot@m`` (truncation) and against ``pca@m``.
    """
    adapted, zero_shot = scores["adapted"], scores["zero-shot"]
    test = {
        "metric": "ndcg@10",
        "test": SIGNIFICANCE,
        "p_value": paired_test(adapted["ndcg@10"], zero_shot["ndcg@10"]),
        # the other metrics too: nDCG@10 can rise while recall@100 falls (loss_lines warns)
        "p_values": {m: paired_test(adapted[m], zero_shot[m]) for m in adapted if m != "ndcg@10"},
    }
    if DOCUMENTS_MODEL in scores:
        test["p_value_vs_documents_model"] = paired_test(
            scores["adapted"]["ndcg@10"], scores[DOCUMENTS_MODEL]["ndcg@10"]
        )
    if sizes:
        test["by_size"] = {
            str(m): {
                f"vs {base}@{m}": paired_test(
                    scores[f"adapted@{m}"]["ndcg@10"], scores[f"{base}@{m}"]["ndcg@10"]
                )
                for base in ("zero-shot", "pca")
            }
            for m in sizes
        }
    return {
        "metrics": {s: {m: float(np.mean(v)) for m, v in per.items()} for s, per in scores.items()},
        "significance": test,
    }


@dataclass
class SizedView:
    """A system scored at ``dim`` output dimensions: an adapter's Matryoshka prefix, or, without an
    adapter, the base embedding truncated, or (``rotation``) its PCA projection fitted on the corpus;
    ``base`` (a cross-model start) first takes another model's queries into the documents' space."""

    adapter: SearchAdaptor | None
    dim: int
    rotation: np.ndarray | None = None
    base: Any = None

    def _view(self, X: np.ndarray, side: str) -> np.ndarray:
        if self.adapter is not None:
            return getattr(self.adapter, f"transform_{side}")(X, dim=self.dim)
        if self.base is not None:
            X = getattr(self.base, f"transform_{side}")(X)
        X = l2_normalize(np.asarray(X, dtype=np.float32))
        if self.rotation is not None:
            X = X @ self.rotation[: self.dim].T
        return l2_normalize(np.ascontiguousarray(X[:, : self.dim]))

    def transform_queries(self, X: np.ndarray) -> np.ndarray:
        return self._view(X, "queries")

    def transform_corpus(self, X: np.ndarray) -> np.ndarray:
        return self._view(X, "corpus")


@dataclass(frozen=True)
class PairStart:
    """A cross-model adapter's start rebuilt from the pairs (the corpus texts embedded by both
    models): queries through the closed-form map, documents unchanged. ``evaluate`` scores a saved
    cross-model adapter against it, as ``fit`` does against :meth:`SearchAdaptor.at_start`."""

    map: np.ndarray

    @classmethod
    def of(cls, adapter: SearchAdaptor, emb: Embeddings) -> PairStart:
        if emb.pairs is None:
            raise ValueError("a cross-model adapter is scored against its start, which needs the pairs")
        a, b = usable_pairs(emb.pairs, emb.corpus)  # the rows the fit's start was computed from
        return cls(pair_map(l2_normalize(a), l2_normalize(b), adapter.fitted_params_["init"]))

    def transform_queries(self, X: np.ndarray) -> np.ndarray:
        return l2_normalize(l2_normalize(np.asarray(X, dtype=np.float32)) @ self.map)

    def transform_corpus(self, X: np.ndarray) -> np.ndarray:
        return l2_normalize(np.asarray(X, dtype=np.float32))


#: The report's row for a cross-model fit's reference: the documents' model on both sides.
DOCUMENTS_MODEL = "zero-shot (documents' model)"


def _systems(
    adapter: SearchAdaptor,
    sizes: Sequence[int],
    rotation: np.ndarray | None,
    base: PairStart | None,
    emb: Embeddings,
    start: SearchAdaptor | PairStart | None = None,
) -> dict[str, tuple[Embeddings, Any]]:
    """What a fit is scored as, each system's (embeddings, view): zero-shot and adapted, and per
    Matryoshka size the adapter's prefix, the base embedding truncated and its PCA projection
    (baselines of the same size). For a cross-model adapter, zero-shot is its start, the baselines
    of a size truncate or project ``base``, the closed-form map of the pairs (queries in the
    documents' space), and :data:`DOCUMENTS_MODEL` is what the map aims at: the query texts
    embedded by the documents' model itself (when the store has them). ``start`` replaces the
    adapter's own start as zero-shot (``evaluate`` rebuilds it from the pairs)."""
    if start is None and adapter.query_encoder_:
        start = adapter.at_start()
    systems: dict[str, tuple[Embeddings, Any]] = {
        "zero-shot": (emb, start),
        "adapted": (emb, adapter),
    }
    for m in sizes:
        systems[f"zero-shot@{m}"] = (emb, SizedView(None, m, base=base))
        systems[f"pca@{m}"] = (emb, SizedView(None, m, rotation, base=base))
        systems[f"adapted@{m}"] = (emb, SizedView(adapter, m))
    systems.update(_documents_model(emb))
    return systems


def _scored_sizes(emb: Embeddings, dims: Sequence[int] | None) -> tuple[list[int], np.ndarray | None]:
    """The Matryoshka sizes a run scores (below the full width, which is "adapted" itself) and the
    corpus's PCA rotation their ``pca@m`` baselines project on (None without sizes). ``dims`` may be
    a numpy array (a parameter grid's), whose truth value numpy refuses: only None means none."""
    sizes = sorted({int(m) for m in (() if dims is None else dims)} - {emb.dim})
    return sizes, pca_rotation(l2_normalize(emb.corpus)) if sizes else None


def _documents_model(emb: Embeddings) -> dict[str, tuple[Embeddings, None]]:
    """A cross-model run's reference system: the documents' model's own queries (``query_pairs``)
    against its documents, unadapted; nothing for one model, or when those vectors are absent."""
    if not emb.query_encoder or emb.query_pairs is None:
        return {}
    return {DOCUMENTS_MODEL: (replace(emb, queries=emb.query_pairs, query_encoder=None), None)}


def _query_model(emb: Embeddings) -> dict[str, Any]:
    """The report's fields naming a cross-model run's query encoder (none for one model)."""
    if not emb.query_encoder:
        return {}
    return {
        "query_model": emb.query_encoder["model"],
        "query_encoder_fingerprint": emb.query_encoder["fingerprint"],
    }


def run_evaluate(dataset: Dataset, emb: Embeddings, adapter: SearchAdaptor, split: str = "test") -> Run:
    """Score a saved adapter (and zero-shot) on one split; the report has ``fit``'s shape, with
    protocol ``"evaluate"``: a Matryoshka adapter at each of its sizes too, against the same
    baselines as ``fit``."""
    start = time.perf_counter()
    qrels = dataset.split(split)
    _, aq, _ = evaluate_embeddings(emb, qrels, adapter)  # checks both encoders first
    reference = PairStart.of(adapter, emb) if adapter.query_encoder_ else None
    sizes, rotation = _scored_sizes(emb, adapter.fitted_params_["dims"])
    systems = _systems(adapter, sizes, rotation, reference, emb, start=reference)
    scores = {
        name: aq if name == "adapted" else evaluate_embeddings(data, qrels, view)[1]
        for name, (data, view) in systems.items()
    }
    zq = scores["zero-shot"]
    variant = adapter.fitted_params_
    seen = _seen(dataset, adapter, qrels)
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "model": emb.encoder["model"],
        "encoder_fingerprint": emb.encoder["fingerprint"],
        "protocol": "evaluate",
        "test_split": split,
        "n_test_queries": len(zq["ndcg@10"]),
        **_unscored(dataset, split),
        # scored queries with the text (or id) of one whose labels trained or chose it (None: unknown)
        "seen_in_training": seen,
        **_query_model(emb),
        "adapter_fingerprint": adapter.fingerprint_,
        **_comparison(scores, sizes),
        "selected": kept_start(adapter)
        if adapter.kept_start_
        else f"saved adapter ({variant['architecture']}, {variant['mode']}, {variant['loss']})",
        "start": adapter.start_,
        "validation": {
            "metric": adapter.val_metric_,
            "n_val_queries": adapter.n_val_queries_,
            "selected_val_ndcg@10": adapter.best_score_,
            "zero_shot_val_ndcg@10": adapter.zero_shot_score_,
            "candidates": [],
        },
        "timings": {"embed_s": round(emb.embed_s, 2), "score_s": round(time.perf_counter() - start, 2)},
        "encoder_calls": {"texts_sent": emb.stats.encoded, "texts_cached": emb.stats.cached},
        "library_version": __version__,
    }
    titles = {"similarity": f"{dataset.name}: {len(zq['ndcg@10'])} {split} queries"}
    return Run(report, adapter, emb, qrels, {}, titles, reference)
