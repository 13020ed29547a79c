"""``fit`` at the scale of 100,000s of labelled queries: what a fit keeps in memory and how many
queries it validates on grow with the batch and a fixed cap, not with the labelled queries, while a
fit trains exactly as it did before (sweep E: a dense (training queries x documents) table of grades,
11.9 GiB at 64,000 x 50,000; 20,000 validation queries searched every 25 steps; two unit copies of
the corpus per fit)."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from search_adaptor import training
from search_adaptor.model import SearchAdaptor
from search_adaptor.training import compute_threads, drawn_validation

#: Whole-corpus fits: every document a candidate of every step (in_batch, at most full_corpus_max
#: documents), query-only (documents as they are) and with negatives "all" (documents adapted too).
WHOLE_CORPUS = {
    "query_only": {
        "mode": "query_only",
        "loss": "infonce",
        "in_batch": True,
        "negatives": "hard",
        "alpha": 0.1,
        "beta": 0.0,
    },
    "all": {
        "mode": "shared",
        "loss": "infonce",
        "in_batch": True,
        "negatives": "all",
        "alpha": 0.05,
        "beta": 0.0,
        "dims": [8],
    },
}
FIT = {"max_steps": 60, "eval_every": 10, "patience": 60, "batch_size": 32, "seed": 0, "precision": "float32"}


def graded_problem() -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, int]], list[str], list[str]]:
    """(Q, D, qrels, query ids, doc ids): 240 queries, a distortion of their first relevant document
    plus noise, with 1 to 3 relevant documents of grades 1 and 2 and one judged irrelevant (grade 0),
    among 400 16-d documents."""
    rng = np.random.default_rng(7)
    dim, n_docs, n_queries = 16, 400, 240
    docs = rng.normal(size=(n_docs, dim)).astype(np.float32)
    distortion = np.eye(dim) + 1.6 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    qids = [f"q{i}" for i in range(n_queries)]
    dids = [f"d{i}" for i in range(n_docs)]
    qrels, queries = {}, []
    for i in range(n_queries):
        rel = rng.choice(n_docs, size=1 + i % 3, replace=False)
        queries.append(docs[rel[0]] @ distortion.T + 0.4 * rng.normal(size=dim))
        judged = {dids[d]: 1 + int((i + j) % 2) for j, d in enumerate(rel)}
        judged[dids[(rel[0] + 1) % n_docs]] = 0
        qrels[qids[i]] = judged
    return np.asarray(queries, dtype=np.float32), docs, qrels, qids, dids


def _weights_sha256(est: SearchAdaptor) -> str:
    h = hashlib.sha256()
    for net in (est.query_net_, est.corpus_net_):
        if net is not None:
            for name, value in sorted(net.state_dict().items()):
                h.update(name.encode())
                h.update(value.detach().numpy().tobytes())
    return h.hexdigest()


def _dense_label_rows(ts: training._TrainSet, qi: np.ndarray, n_docs: int) -> np.ndarray:
    """The labels as each step took them before: rows of a dense (training queries x documents) table
    of grades, built once for the fit (here per call; its rows are the same)."""
    dense = np.zeros((len(ts.q_rows), n_docs), dtype=np.float32)
    dense[np.repeat(np.arange(len(ts.q_rows)), np.diff(ts.ptr)), ts.docs] = ts.grades
    return dense[qi]


@pytest.mark.parametrize("case", sorted(WHOLE_CORPUS))
def test_whole_corpus_fits_train_as_they_did_with_the_dense_table(monkeypatch, case: str) -> None:
    """Bit for bit: the labels of a step, now scattered from the training qrels for the batch alone,
    are the rows the dense table gave, so a fit labelled the old way (in the same process, so on the
    same CPU's float arithmetic) has the same weights, best step and validation scores."""
    Q, D, qrels, qids, dids = graded_problem()
    fits = []
    for label_rows in (training._TrainSet.label_rows, _dense_label_rows):
        monkeypatch.setattr(training._TrainSet, "label_rows", label_rows)
        with compute_threads(1):
            fits.append(SearchAdaptor(**FIT, **WHOLE_CORPUS[case]).fit(Q, D, qrels, qids, dids))
    new, old = fits
    assert len(new.history_) == 7 and new.best_step_ > 0  # it trained, and validated each 10 steps
    assert (new.best_step_, new.best_score_, new.history_) == (old.best_step_, old.best_score_, old.history_)
    assert _weights_sha256(new) == _weights_sha256(old)


def _spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, seen: Callable[..., None]) -> None:
    """Call ``seen(result, *args)`` after each call of ``owner.name`` (for the rest of the test)."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen(result, *args)
        return result

    monkeypatch.setattr(owner, name, wrapped)


@pytest.mark.parametrize("case", sorted(WHOLE_CORPUS))
def test_each_step_labels_its_queries_against_every_document_by_their_qrels(monkeypatch, case) -> None:
    """The labels a whole-corpus step gives the loss are, row for row, each batch query's grades of
    every document by the qrels (0 for grade 0 and unjudged): the dense table's rows, built here."""
    Q, D, qrels, qids, dids = graded_problem()
    col = {d: i for i, d in enumerate(dids)}
    batches: list[np.ndarray] = []  # query rows of Q, per step
    labels: list[np.ndarray] = []
    sampler_batch = lambda out, sampler: batches.append(sampler.ts.q_rows[out[0]])  # noqa: E731
    objective = lambda out, loss, scores, lab, *_: labels.append(lab.numpy().copy())  # noqa: E731
    _spy(monkeypatch, training._Sampler, "batch", sampler_batch)
    _spy(monkeypatch, training, "ranking_objective", objective)
    SearchAdaptor(**{**FIT, "max_steps": 5}, **WHOLE_CORPUS[case]).fit(Q, D, qrels, qids, dids)
    prefixes = 1 + len(WHOLE_CORPUS[case].get("dims", []))  # the loss is called once per prefix
    assert len(batches) == 5 and len(labels) == 5 * prefixes
    for step, rows in enumerate(batches):
        expected = np.zeros((len(rows), len(dids)), dtype=np.float32)
        for b, row in enumerate(rows):
            for doc, grade in qrels[qids[row]].items():
                expected[b, col[doc]] = max(grade, 0)
        for lab in labels[step * prefixes : (step + 1) * prefixes]:
            assert lab.dtype == np.float32 and np.array_equal(lab, expected)


def _measured(method: Callable[..., Any], peaks: list[int]) -> Callable[..., Any]:
    """``method``, appending to ``peaks`` the most memory (numpy's and Python's) each call allocated
    above what was held when it started."""

    def wrapped(*args: Any) -> Any:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            result = method(*args)
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
            return result
        finally:
            tracemalloc.stop()

    return wrapped


def test_a_whole_corpus_fit_keeps_no_table_of_every_training_query_against_every_document(monkeypatch):
    """Setting up a query-only whole-corpus fit of 2,000 training queries on 10,000 documents
    allocates far less than the 80 MB (training queries x documents, float32) table it built, and a
    step what its batch's rows take (batch x documents)."""
    rng = np.random.default_rng(0)
    n_queries, n_docs, batch = 2500, 10_000, 32
    D = rng.normal(size=(n_docs, 8)).astype(np.float32)
    Q = rng.normal(size=(n_queries, 8)).astype(np.float32)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n_queries)}
    params = {**WHOLE_CORPUS["query_only"], "negatives": "random", "max_steps": 3, "batch_size": batch}
    setups: list[int] = []
    steps: list[int] = []
    monkeypatch.setattr(training._Ranking, "setup", _measured(training._Ranking.setup, setups))
    monkeypatch.setattr(training._Ranking, "loss", _measured(training._Ranking.loss, steps))
    est = SearchAdaptor(**params).fit(
        Q, D, qrels, [f"q{i}" for i in range(n_queries)], [f"d{i}" for i in range(n_docs)]
    )
    table = est.n_train_queries_ * n_docs * 4
    assert est.n_train_queries_ == 2000 and len(setups) == 1 and len(steps) == 3
    assert setups[0] < table / 20, f"setup allocated {setups[0]} bytes; the table is {table}"
    assert max(steps) < 4 * batch * n_docs * 4, f"a step allocated {max(steps)} bytes"


def test_a_fit_holds_one_unit_copy_of_the_corpus(monkeypatch) -> None:
    """What a fit holds once its training set is built (at setup): one unit copy of the queries and
    of the corpus, not the unit rows and a second normalisation of them (at 1M x 384, 1.5 GB more
    per fit)."""
    rng = np.random.default_rng(0)
    D = rng.normal(size=(20_000, 384)).astype(np.float32)
    Q = rng.normal(size=(200, 384)).astype(np.float32)
    qids, dids = [f"q{i}" for i in range(len(Q))], [f"d{i}" for i in range(len(D))]
    qrels = {q: {f"d{i}": 1} for i, q in enumerate(qids)}
    held: list[int] = []
    setup = training._Ranking.setup

    def measured(*args: Any) -> None:
        held.append(tracemalloc.get_traced_memory()[0])
        setup(*args)

    monkeypatch.setattr(training._Ranking, "setup", measured)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        SearchAdaptor(**{**WHOLE_CORPUS["query_only"], "negatives": "random", "max_steps": 1}).fit(
            Q, D, qrels, qids, dids
        )
    finally:
        tracemalloc.stop()
    one_copy = Q.nbytes + D.nbytes
    assert held[0] - before < 1.5 * one_copy, f"held {held[0] - before} bytes; one unit copy is {one_copy}"


def test_a_fit_validates_on_at_most_max_validation_queries_and_trains_on_the_rest() -> None:
    """Of 30,000 labelled queries, 20% would be 6,000 validation queries, each searched against the
    corpus at every evaluation: the first 5,000 (data.MAX_VALIDATION_QUERIES) of the seeded
    permutation validate, the other 25,000 train, as drawn_validation predicts before anything is
    embedded."""
    rng = np.random.default_rng(0)
    n = 30_000
    qids, dids = [f"q{i:05d}" for i in range(n)], [f"d{i}" for i in range(50)]
    qrels = {q: {dids[i % 50]: 1} for i, q in enumerate(qids)}
    Q = rng.normal(size=(n, 4)).astype(np.float32)
    D = rng.normal(size=(50, 4)).astype(np.float32)
    est = SearchAdaptor(max_steps=1, seed=3).fit(Q, D, qrels, qids, dids)
    assert est.n_val_queries_ == 5000  # data.MAX_VALIDATION_QUERIES
    assert est.n_train_queries_ == n - 5000
    assert est.val_query_ids_ == drawn_validation(qrels, qids, 0.2, 3, labels=True)


def test_hard_negatives_are_mined_once_for_the_fits_that_share_them(monkeypatch) -> None:
    """Fits that mine from the same queries, corpus and positives (three of ``auto``'s five candidates
    in each fold) mine once, also when they start together, and train exactly as a fit that mined
    its own; other positives, or another corpus, are mined again."""
    Q, D, qrels, qids, dids = graded_problem()
    mined: list[int] = []
    _spy(monkeypatch, training, "_mine_hard", lambda out, *_: mined.append(len(out)))
    monkeypatch.setattr(training, "MINED", training._MinedNegatives())
    hard = {**FIT, **WHOLE_CORPUS["query_only"], "max_steps": 20}

    def fit(params: dict[str, Any] = hard, rels: dict = qrels, docs: np.ndarray = D) -> SearchAdaptor:
        with compute_threads(1):
            return SearchAdaptor(**params).fit(Q, docs, rels, qids, dids)

    first = fit()
    assert mined == [192]  # the 240 queries less the 20% validation split
    again, shared = fit(), fit({**hard, "mode": "shared", "alpha": 0.05})
    assert mined == [192] and _weights_sha256(again) == _weights_sha256(first)
    monkeypatch.setattr(training, "MINED", training._MinedNegatives())  # nothing mined yet: its own
    assert _weights_sha256(fit({**hard, "mode": "shared", "alpha": 0.05})) == _weights_sha256(shared)
    assert mined == [192, 192]

    monkeypatch.setattr(training, "MINED", training._MinedNegatives())
    with ThreadPoolExecutor(2) as pool:  # two candidates at once: the second waits for the first's
        together = list(pool.map(lambda _: fit(), range(2)))
    assert mined == [192] * 3 and {_weights_sha256(est) for est in together} == {_weights_sha256(first)}

    positives = [[d for d, g in rel.items() if g > 0] for rel in qrels.values()]
    fewer = {
        q: {**rel, **({pos[-1]: 0} if len(pos) > 1 else {})}
        for (q, rel), pos in zip(qrels.items(), positives, strict=True)
    }
    fit(rels=fewer)  # the same queries, some with a positive fewer
    fit(docs=D[::-1].copy())  # another corpus order
    assert len(mined) == 5


def _exact_validation(est: SearchAdaptor, Q, D, qrels, qids, dids, start: bool = False) -> float:
    """The estimator's nDCG@10 on its validation queries over the whole corpus (its start with ``start``)."""
    from search_adaptor.metrics import RelevanceIndex

    val = est.val_query_ids_
    row = {q: i for i, q in enumerate(qids)}
    rel = RelevanceIndex({q: qrels[q] for q in val}, val, dids)
    nets = (est.query_net_, est.corpus_net_)
    return training._val_score(
        *nets,
        training._as_matrix(Q[[row[q] for q in val]], "q"),
        training._as_matrix(D, "d"),
        rel,
        training.prefix_sizes(est.dims, Q.shape[1]),
        start,
    )[0]


@pytest.mark.parametrize("case", sorted(WHOLE_CORPUS))
def test_large_corpora_validate_on_pools_and_keep_what_beats_the_start_over_the_whole_corpus(
    monkeypatch, case: str
) -> None:
    """Above VAL_POOL_ABOVE documents each evaluation ranks every validation query's pool of its
    nearest documents under the start (searching the whole corpus every 25 steps was most of a large
    fit); a pool of every document trains exactly as the whole corpus does, and with small pools the
    scores the fit reports, its start's and its kept checkpoint's, are over the whole corpus."""
    Q, D, qrels, qids, dids = graded_problem()
    params = {**FIT, **WHOLE_CORPUS[case]}
    monkeypatch.setattr(training, "VAL_POOL_ABOVE", 100)  # 400 documents: pools
    pools: list[tuple[int, int]] = []
    _spy(monkeypatch, training._Pool, "of", lambda out, *_: pools.append(out.top.shape))

    def fit() -> SearchAdaptor:
        with compute_threads(1):
            return SearchAdaptor(**params).fit(Q, D, qrels, qids, dids)

    monkeypatch.setattr(training, "VAL_POOL", len(D))  # every document in every pool
    whole_pools = fit()
    assert pools == [(48, 400)]
    monkeypatch.setattr(training._Pool, "of", classmethod(lambda cls, *_: None))  # the whole corpus
    whole = fit()
    assert whole_pools.history_ == whole.history_ and whole_pools.best_step_ == whole.best_step_
    assert _weights_sha256(whole_pools) == _weights_sha256(whole)
    monkeypatch.undo()

    monkeypatch.setattr(training, "VAL_POOL_ABOVE", 100)
    monkeypatch.setattr(training, "VAL_POOL", 12)
    pooled = fit()
    assert pooled.best_step_ > 0 and pooled.history_ != whole.history_
    exact = _exact_validation(pooled, Q, D, qrels, qids, dids)
    assert pooled.best_score_ == exact > pooled.zero_shot_score_
    assert pooled.zero_shot_score_ == _exact_validation(pooled, Q, D, qrels, qids, dids, start=True)
