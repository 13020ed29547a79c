"""Training: candidate sampling, the optimisation loop and validation-gated checkpoints.

:func:`train` takes the estimator's hyperparameters and returns trained networks; the estimator
(:mod:`search_adaptor.model`) owns the fitted state, and selection among variants lives in
:mod:`search_adaptor.experiment`.

Everything per step is vectorised over the batch (no Python loop per query): positives come from a
CSR table of the training qrels, negatives from uniform draws or the zero-shot ranking, grades of
every sampled (query, document) pair from one sorted-key lookup.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from search_adaptor.data import labelled_queries, validation_split
from search_adaptor.embed import unit_rows
from search_adaptor.losses import prediction_loss, ranking_objective, recovery_loss
from search_adaptor.metrics import RelevanceIndex, check_ids, check_qrels, evaluate_topk, index_ids
from search_adaptor.networks import QueryPredictor, ResidualAdapter, build_nets, has_projection
from search_adaptor.retrieval import exact_search, l2_normalize, pool_search

MAX_POSITIVES = 32  # relevant documents used per query and step (sampled when a query has more)
MAX_NEGATIVES = 64  # negatives per query and step
VAL_METRIC = "ndcg@10"
#: Candidates per validation query on corpora above :data:`VAL_POOL_ABOVE` documents (:class:`_Pool`).
VAL_POOL = 1000
#: Corpora above this many documents validate on pools: ranking 1,000 gathered candidates per query
#: costs what searching tens of thousands of documents does, and the search that makes the pools and
#: the two whole-corpus scores at the end must be paid back too (``benchmarks/validation_pools.py``).
VAL_POOL_ABOVE = 200_000


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads and ``n`` BLAS threads, then restore the caller's settings.

    Training is thousands of small matmuls and validation a few numpy searches: more threads per fit
    add synchronisation and, with fits side by side or on a busy machine, oversubscribe the cores
    (several times slower); fits in parallel, one thread each, use the cores instead (see
    :func:`search_adaptor.experiment.select`).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def resolve_precision(precision: str) -> str:
    """The arithmetic a fit with ``precision`` trains in on this machine ("auto": bfloat16 where the
    CPU multiplies it natively, about 3x float32's throughput per product on AVX512-BF16; float32
    elsewhere, where bfloat16 would be emulated and slower)."""
    if precision != "auto":
        return precision
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return "bfloat16" if native else "float32"


def _steps_in(precision: str) -> contextlib.AbstractContextManager[Any]:
    """Where a training step runs: mixed bfloat16 products (float32 weights, optimiser and losses'
    reductions, as :func:`torch.autocast` keeps them), or plain float32.

    Without autocast's cache of weight casts: with it, fits running side by side in threads (as
    :func:`~search_adaptor.experiment.select` runs them) gave other weights than each fit alone.
    """
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


class _Grades:
    """Grade of any (query row, document column) pair, 0 when unjudged, through the qrels' index."""

    def __init__(self, rel: RelevanceIndex, n_queries: int) -> None:
        self.rel = rel
        self.position = np.full(n_queries, -1, dtype=np.int64)  # query row -> row of ``rel``
        self.position[rel.query_index] = np.arange(rel.n_queries)

    def __call__(self, q_rows: np.ndarray, d_cols: np.ndarray) -> np.ndarray:
        cols = np.broadcast_to(np.asarray(d_cols), (len(q_rows), np.shape(d_cols)[-1]))
        return self.rel.lookup_grades(cols, self.position[q_rows]).astype(np.float32)


@dataclass
class _TrainSet:
    """Training queries as rows of Q with their relevant documents in CSR form."""

    q_rows: np.ndarray  # (n,)
    ptr: np.ndarray  # (n + 1,)
    docs: np.ndarray  # positives' columns
    grades: np.ndarray  # positives' grades (> 0)

    def label_rows(self, qi: np.ndarray, n_docs: int) -> np.ndarray:
        """Grades of the training queries at positions ``qi`` against every document, float32 of
        shape (len(qi), n_docs), 0 where a document is not relevant: the labels of a step that scores
        the whole corpus. Scattered from the CSR table for the batch alone (vectorised), not sliced
        from a dense (n_queries x n_docs) table kept for the fit, which at 64,000 training queries
        and 50,000 documents was 11.9 GiB (and a MemoryError at 240,000)."""
        counts = self.ptr[qi + 1] - self.ptr[qi]
        # each batch row's entries of the table: ptr[q], ptr[q] + 1, ..., ptr[q + 1] - 1
        entries = np.repeat(self.ptr[qi] - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        out = np.zeros((len(qi), n_docs), dtype=np.float32)
        out[np.repeat(np.arange(len(qi)), counts), self.docs[entries]] = self.grades[entries]
        return out


def _as_matrix(x: Any, what: str, ids: Sequence[str] | None = None, noun: str = "") -> np.ndarray:
    """The unit rows of embeddings given to ``fit`` (:func:`~search_adaptor.embed.unit_rows`: lengths
    measured in float64, so 1e30 or 1e-30 train as 1 would); NaN/inf or all-zero rows are refused,
    named by ``noun`` and their id when ``ids`` has one per row.

    The rows are then divided by their float32 lengths (:func:`~search_adaptor.retrieval.l2_normalize`),
    in place: that moves the last bit of about a third of them, and every fit has trained on the rows
    so divided; a new array for it was one more copy of the corpus per fit (1.4 GiB at 1M x 384)."""
    if ids is None or len(ids) != len(x):
        rows = unit_rows(x, what)
    else:
        rows = unit_rows(x, what, lambda n: f"the vector of {noun} {str(ids[n])!r}")
    return l2_normalize(rows, out=rows)


def _index_qrels(
    qrels: Mapping[str, Mapping[str, int]], qid_to_row: Mapping[str, int], did_to_col: Mapping[str, int]
) -> dict[str, list[tuple[int, int]]]:
    """qrels (checked by :func:`~search_adaptor.metrics.check_qrels`) as {qid: [(doc column, grade),
    ...]}, refusing ids that have no embedding."""
    out: dict[str, list[tuple[int, int]]] = {}
    for qid, docs in qrels.items():
        if qid not in qid_to_row:
            raise ValueError(f"qrels: query id {qid!r} has no embedding; pass it in query_ids or drop it")
        pairs = []
        for did, grade in docs.items():
            if did not in did_to_col:
                raise ValueError(
                    f"qrels: query {qid!r} names document {did!r}, which is not in the corpus; pass its "
                    "embedding with its id in corpus_ids, or drop that judgement"
                )
            pairs.append((did_to_col[did], grade))
        out[qid] = pairs
    return out


def _csr(
    qids: Sequence[str], judged: Mapping[str, list[tuple[int, int]]], qid_to_row: Mapping[str, int]
) -> _TrainSet:
    rows, ptr, docs, grades = [], [0], [], []
    for qid in qids:
        pos = [(d, g) for d, g in judged[qid] if g > 0]
        rows.append(qid_to_row[qid])
        docs.extend(d for d, _ in pos)
        grades.extend(g for _, g in pos)
        ptr.append(len(docs))
    return _TrainSet(np.asarray(rows), np.asarray(ptr), np.asarray(docs, dtype=np.int64), np.asarray(grades))


class _Sampler:
    """Draws batches of (query, candidates, grades) for one training set, vectorised over the batch."""

    def __init__(
        self,
        hp: SimpleNamespace,
        ts: _TrainSet,
        grades: _Grades,
        hard: np.ndarray | None,
        n_docs: int,
        rng: np.random.Generator,
    ) -> None:
        self.hp, self.ts, self.grades, self.hard, self.n_docs, self.rng = hp, ts, grades, hard, n_docs, rng
        self.counts = np.diff(ts.ptr)
        self._order = np.empty(0, dtype=np.int64)

    def _next_queries(self, b: int) -> np.ndarray:
        if len(self._order) < b:
            self._order = np.concatenate([self._order, self.rng.permutation(len(self.ts.q_rows))])
        out, self._order = self._order[:b], self._order[b:]
        return out

    def batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Returns (train positions, candidate columns (B, C), grades (B, C), valid (B, C), P)."""
        b = min(self.hp.batch_size, len(self.ts.q_rows))
        qi = self._next_queries(b)
        counts = self.counts[qi]
        cmax = int(counts.max())
        p = min(cmax, MAX_POSITIVES)
        # random subset of each query's positives (all of them when it has <= p)
        noise = self.rng.random((b, cmax)) + (np.arange(cmax)[None, :] >= counts[:, None]) * 2.0
        pick = np.argsort(noise, axis=1)[:, :p]
        pos_valid = pick < counts[:, None]
        pos_docs = self.ts.docs[np.minimum(self.ts.ptr[qi][:, None] + pick, len(self.ts.docs) - 1)]
        pos_docs = np.where(pos_valid, pos_docs, pos_docs[:, :1])
        # about n_negatives per relevant document: padding slots repeat a positive and are masked out
        n_neg = min(self.hp.n_negatives * p, MAX_NEGATIVES)
        neg = self._negatives(qi, n_neg)
        neg_valid = np.arange(n_neg)[None, :] < self.hp.n_negatives * np.minimum(counts, p)[:, None]
        neg = np.where(neg_valid, neg, pos_docs[:, :1])
        cand = np.concatenate([pos_docs, neg], axis=1)
        valid = np.concatenate([pos_valid, neg_valid], axis=1)
        labels = self.grades(self.ts.q_rows[qi], cand) * valid
        return qi, cand, labels, valid, p

    def _negatives(self, qi: np.ndarray, n: int) -> np.ndarray:
        kind = self.hp.negatives
        n_hard = n if kind == "hard" else (n // 2 if kind == "mixed" else 0)
        parts = [self.rng.integers(0, self.n_docs, size=(len(qi), n - n_hard))]
        if n_hard:
            assert self.hard is not None
            cols = self.rng.integers(0, self.hard.shape[1], size=(len(qi), n_hard))
            parts.append(np.take_along_axis(self.hard[qi], cols, axis=1))
        return np.concatenate(parts, axis=1)


class _MinedNegatives:
    """Hard negatives already mined, by the content of what they were mined from.

    Three of ``auto``'s five candidates mine from the same training queries and corpus in each fold,
    and mining is an exact search of every training query over the whole corpus, paid three times
    (``benchmarks/exact_search.py`` measures what that cost). Keyed by a digest of
    the queries' rows, the documents, the positives and the depth (the same inputs give the same
    negatives), it runs once; a candidate started while another mines the same waits for it. The
    last :attr:`KEEP` results are kept (read-only arrays), for the candidates of one fold."""

    KEEP = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._running: dict[bytes, threading.Lock] = {}

    def get(
        self, hp: SimpleNamespace, Qn: np.ndarray, Dn: np.ndarray, ts: _TrainSet, grades: _Grades
    ) -> np.ndarray:
        """The hard negatives of :func:`_mine_hard`, mined now only if not already."""
        key = _mining_key(hp, Qn, Dn, ts)
        with self._lock:
            running = self._running.setdefault(key, threading.Lock())
        with running:
            with self._lock:
                if key in self._done:
                    self._done.move_to_end(key)
                    return self._done[key]
            try:
                ranked = _mine_hard(hp, Qn, Dn, ts, grades)
                ranked.flags.writeable = False  # shared by the candidates that read it
                with self._lock:
                    self._done[key] = ranked
                    while len(self._done) > self.KEEP:
                        self._done.popitem(last=False)
            finally:
                with self._lock:
                    self._running.pop(key, None)
        return ranked


def _mining_key(hp: SimpleNamespace, Qn: np.ndarray, Dn: np.ndarray, ts: _TrainSet) -> bytes:
    """Digest of everything :func:`_mine_hard` reads: the training queries' rows, the documents, each
    query's positives (excluded from its negatives) and the depth."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.array([*Qn.shape, *Dn.shape, hp.hard_pool, len(ts.q_rows)], dtype=np.int64).tobytes())
    for start in range(0, len(ts.q_rows), 4096):  # the rows alone, without a copy of them all
        h.update(np.ascontiguousarray(Qn[ts.q_rows[start : start + 4096]]).data)
    h.update(np.ascontiguousarray(Dn).data)
    for part in (ts.ptr, ts.docs, ts.grades):
        h.update(np.ascontiguousarray(part).data)
    return h.digest()


#: Hard negatives shared by the fits of one process (:class:`_MinedNegatives`).
MINED = _MinedNegatives()


def _mine_hard(
    hp: SimpleNamespace, Qn: np.ndarray, Dn: np.ndarray, ts: _TrainSet, grades: _Grades
) -> np.ndarray:
    """Top ``hard_pool`` zero-shot documents per training query, labelled positives replaced by others."""
    depth = min(hp.hard_pool + MAX_POSITIVES, Dn.shape[0])
    idx, _ = exact_search(Qn[ts.q_rows], Dn, depth)
    is_pos = grades(ts.q_rows, idx) > 0
    # push positives to the back, keep the first hard_pool of what remains
    order = np.argsort(is_pos, axis=1, kind="stable")
    return np.ascontiguousarray(np.take_along_axis(idx, order, axis=1)[:, : min(hp.hard_pool, depth)])


def _adapted(
    net: ResidualAdapter | None,
    X: np.ndarray,
    cache: np.ndarray | None,
    start: bool = False,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``net(X)`` in chunks, without gradients (``X`` itself when ``net`` is None; ``cache`` then); of
    ``X``'s ``rows`` alone when given (gathered a chunk at a time).

    With ``start``, the network's start instead: its base ``p(X)`` alone (``X`` without a
    projection; a PCA rotation, another model's closed-form map), the map every fit competes
    against and a fit that keeps its start ships (see ``SearchAdaptor._numpy_net``). With the skip
    connection the residual function starts at zero, so that is what ``net`` computes before
    training; without it (the paper's no-skip ablation) an MLP starts as a random draw, which is
    no baseline: scored as step 0, it let a checkpoint below zero-shot win.
    """
    if net is None:
        given = cache if cache is not None else X
        return given if rows is None else given[rows]
    forward = net.base if start else net
    count = len(X) if rows is None else len(rows)
    net.eval()
    with torch.inference_mode():
        out = np.concatenate(
            [
                forward(
                    torch.from_numpy(X[i : i + 65536] if rows is None else X[rows[i : i + 65536]])
                ).numpy()
                for i in range(0, count, 65536)
            ]
        )
    net.train()
    return out


@dataclass
class _Pool:
    """Each validation query's candidates on a corpus too large to search at every evaluation: its
    :data:`VAL_POOL` nearest documents under the start map, as positions (``local``) in the
    documents any of them names (``cols``, corpus rows), the only ones adapted."""

    cols: np.ndarray
    local: np.ndarray

    @classmethod
    def of(cls, queries: np.ndarray, docs: np.ndarray) -> _Pool:
        top = exact_search(queries, docs, min(VAL_POOL, len(docs)))[0]
        cols, local = np.unique(top, return_inverse=True)
        return cls(cols, local.reshape(top.shape))

    @property
    def top(self) -> np.ndarray:
        """Each query's candidates as corpus rows."""
        return self.cols[self.local]


def _val_score(
    query_net: ResidualAdapter,
    corpus_net: ResidualAdapter | None,
    Qv: np.ndarray,
    Dn: np.ndarray,
    rel: RelevanceIndex,
    prefixes: Sequence[int],
    start: bool = False,
    pool: _Pool | None = None,
) -> tuple[float, dict[int, float]]:
    """nDCG@10 of the current networks (their start with ``start``: :func:`_adapted`) on the validation
    queries: the mean over the trained prefix sizes (the one score early stopping and selection
    compare) and each size's. Over the whole corpus, or with ``pool`` over each query's pool."""
    qa = _adapted(query_net, Qv, None, start)
    if pool is None or corpus_net is None:
        docs = _adapted(corpus_net, Dn, Dn, start)
    else:  # only the documents of some pool are adapted
        docs = _adapted(corpus_net, Dn, None, start, rows=pool.cols)
    per: dict[int, float] = {}
    for m in prefixes:
        unit_docs = docs if corpus_net is None and m == Dn.shape[1] else l2_normalize(docs[:, :m])
        queries = l2_normalize(qa[:, :m])
        if pool is None:
            top = exact_search(queries, unit_docs, 10)[0]
        elif corpus_net is None:
            top = pool_search(queries, unit_docs, pool.top, 10)[0]
        else:
            top = pool.cols[pool_search(queries, unit_docs, pool.local, 10)[0]]
        per[m] = float(evaluate_topk(top, rel, [VAL_METRIC])[VAL_METRIC])
    return float(np.mean(list(per.values()))), per


MIN_PAIRS = 10  # paired texts a cross-model map needs: a few to fit, a few held out


def usable_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of two arrays of the same texts (one per model) that both models gave a direction: a
    text either model gives a zero vector (a static model does when it knows none of its words; a
    text-only query model, to an image document) pairs with nothing and is left out. NaN counts as
    non-zero (refused by whoever checks the values)."""
    keep = a.any(axis=1) & b.any(axis=1)
    return a[keep], b[keep]


def _paired(pairs: tuple[Any, Any], name: str, query_dim: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``name``'s two arrays, checked to hold the same texts by the query model and the documents'
    model, without the texts that pair with nothing (:func:`usable_pairs`)."""
    raw = [np.asarray(x) for x in pairs]
    if raw[0].ndim == raw[1].ndim == 2 and len(raw[0]) == len(raw[1]):
        raw = list(usable_pairs(raw[0], raw[1]))
    a, b = (_as_matrix(x, f"{name}[{i}]") for i, x in enumerate(raw))
    if len(a) != len(b) or a.shape[1] != query_dim or b.shape[1] != dim:
        raise ValueError(
            f"{name}: expected ({len(a)}, {query_dim}) and ({len(a)}, {dim}) arrays of the same texts, "
            f"got {a.shape} and {b.shape}"
        )
    return a, b


def _held_out(n: int, fraction: float) -> int:
    """How many of ``n`` rows a fit without labels holds out: ``fraction`` of them, at least one, at
    most 2,000 (its validation searches the corpus for each), never all."""
    return min(max(1, round(fraction * n)), 2000, n - 1)


def _check_pairs(
    pairs: tuple[Any, Any] | None, query_dim: int, dim: int, hp: SimpleNamespace
) -> tuple[np.ndarray, np.ndarray] | None:
    """The paired texts' unit vectors (query model, document model), checked; required when the
    hyperparameters use them (a closed-form start, the alignment term, no labels)."""
    needed = hp.init in ("lstsq", "procrustes") or hp.gamma > 0 or hp.loss == "alignment"
    if pairs is None:
        if needed:
            raise ValueError(
                f"init={hp.init!r}, gamma={hp.gamma} and loss={hp.loss!r} need pairs: the same texts "
                "embedded by the query model and by the document model (the corpus texts will do)"
            )
        return None
    a, b = _paired(pairs, "pairs", query_dim, dim)
    if len(a) < MIN_PAIRS:
        raise ValueError(
            f"pairs: {len(a)} paired texts are too few to map {query_dim}-d queries onto {dim}-d documents "
            f"(and hold some out); give at least {MIN_PAIRS}: the corpus texts embedded by both models"
        )
    if hp.mode == "shared":
        raise ValueError(
            "pairs map the queries of another model; the documents keep their own: use mode 'query_only' "
            "or 'separate', not 'shared'"
        )
    if hp.init == "procrustes" and query_dim != dim:
        raise ValueError(f"init='procrustes' is a rotation: {query_dim}-d and {dim}-d need init='lstsq'")
    return a, b


def _with_more_pairs(
    paired: tuple[np.ndarray, np.ndarray] | None, more_pairs: tuple[Any, Any] | None, query_dim: int, dim: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pairs the map trains on: ``paired`` (the corpus texts) and ``more_pairs``, unit rows, checked."""
    if more_pairs is None:
        return paired
    if paired is None:
        raise ValueError("more_pairs join the pairs (the corpus texts by both models): give pairs too")
    a, b = _paired(more_pairs, "more_pairs", query_dim, dim)
    return np.concatenate([paired[0], a]), np.concatenate([paired[1], b])


def _check_query_pairs(query_pairs: Any, n_queries: int, dim: int) -> np.ndarray | None:
    """The query texts' unit vectors by the documents' model, row for row with the queries, checked."""
    if query_pairs is None:
        return None
    x = _as_matrix(query_pairs, "query_pairs")
    if x.shape != (n_queries, dim):
        raise ValueError(
            f"query_pairs: expected the {n_queries} query texts embedded by the documents' model, "
            f"({n_queries}, {dim}); got {x.shape}"
        )
    return x


def fit_queries(qrels: Mapping[str, Mapping[str, int]], known: Container[str], labels: bool) -> list[str]:
    """The queries of ``qrels`` (those with an embedding: in ``known``) that a fit trains and
    validates on, sorted: with ``labels``, those with a relevant document
    (:func:`~search_adaptor.data.labelled_queries`: nDCG is undefined for the others); without, every
    one, as their texts are what it reads (``loss="alignment"`` pairs them, ``"similarity"`` adds
    them to the corpus texts). A fit given no ``val_query_ids`` draws its validation share from
    these (:func:`drawn_validation`)."""
    ids = labelled_queries(qrels) if labels else sorted(qrels)
    return [q for q in ids if q in known]


def drawn_validation(
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Iterable[str],
    val_fraction: float,
    seed: int,
    labels: bool,
) -> list[str]:
    """The validation queries, sorted, that :func:`train` draws from ``qrels`` when given no
    ``val_query_ids``: :func:`~search_adaptor.data.validation_split` of :func:`fit_queries` (``val_fraction``
    of them, at most :data:`~search_adaptor.data.MAX_VALIDATION_QUERIES`), the first draw of the
    fit's generator (``seed``), as a ranking loss (``labels``) and ``loss="alignment"`` with
    ``query_pairs`` make it; none from fewer than two. Known before anything is embedded, so
    that texts paired for a query model can leave out the texts of the queries a fit will validate
    on (:func:`search_adaptor.experiment.without_held_out`): such a text, paired, would train the map
    its validation score goes through."""
    pool = fit_queries(qrels, set(query_ids), labels)
    if len(pool) < 2:
        return []
    return validation_split(pool, val_fraction, np.random.default_rng(seed))[1]


def _alignment_split(
    hp: SimpleNamespace,
    paired: tuple[np.ndarray, np.ndarray],
    Qn: np.ndarray,
    query_pairs: np.ndarray | None,
    qrels: Mapping[str, Mapping[str, int]] | None,
    qid_to_row: Mapping[str, int],
    val_query_ids: Sequence[str] | None,
    rng: np.random.Generator,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str], list[str]]:
    """(training pairs, held-out pairs, held-out query ids, training query ids) of a fit without
    labels; the training queries' texts are the last rows of the training pairs, in that order.

    With the queries' texts by the documents' model (``query_pairs``), the queries named in
    ``qrels`` (their labels unused) are paired texts too: a share of them validates
    (``val_query_ids``, else :func:`~search_adaptor.data.validation_split`'s ``val_fraction``, at
    most :data:`~search_adaptor.data.MAX_VALIDATION_QUERIES`) and the rest trains beside the corpus
    texts, so the map is judged on what it will carry: queries, which are short where documents are
    long. Without them, a share of the corpus pairs validates. The closed-form start is the corpus
    pairs' map either way, the one ``evaluate`` rebuilds (:class:`~search_adaptor.experiment.PairStart`).
    """
    a, b = paired
    known = fit_queries(qrels or {}, qid_to_row, labels=False)
    train_q: list[str] = []
    val_q: list[str] = []
    if query_pairs is not None and len(known) >= 2:
        if val_query_ids is None:
            train_q, val_q = validation_split(known, hp.val_fraction, rng)
        else:  # those of the given ones that are known; none: the corpus pairs validate
            val_q = sorted(set(val_query_ids) & set(known))
            train_q = [q for q in known if q not in set(val_q)]
    if query_pairs is not None and val_q:
        tr, va = [qid_to_row[q] for q in train_q], [qid_to_row[q] for q in val_q]
        fit = (np.concatenate([a, Qn[tr]]), np.concatenate([b, query_pairs[tr]]))
        return fit, (Qn[va], query_pairs[va]), val_q, train_q
    order = rng.permutation(len(a))
    n_val = _held_out(len(a), hp.val_fraction)
    return (a[order[n_val:]], b[order[n_val:]]), (a[order[:n_val]], b[order[:n_val]]), [], []


#: Ridge strengths (per pair) that :func:`pair_map` chooses from.
RIDGES = (1e-6, 1e-5, 1e-4, 1e-3)
#: Fewer pairs than this: no held-out choice, the strongest ridge.
MIN_PAIRS_TO_CHOOSE = 100
#: Documents beside the held-out ones that the held-out texts must rank theirs above.
RIDGE_DISTRACTORS = 20_000


def pair_map(a: np.ndarray, b: np.ndarray, kind: str = "lstsq", ridge: float | None = None) -> np.ndarray:
    """The closed-form map ``W`` (query_dim x dim) taking paired vectors ``a`` onto ``b``:
    ridge least squares (``"lstsq"``), or the rotation closest to it (``"procrustes"``, equal dims).

    ``ridge=None`` chooses it: each of :data:`RIDGES` is fitted on four fifths of the pairs, and the
    strongest of those whose held-out texts, mapped, rank their own document first most often
    (:func:`_choose_ridge`) is refitted on all. Retrieval decides, not the held-out cosine,
    which prefers over-smoothed maps (on SciFact, MiniLM -> static: ridge 1e-3 gives nDCG@10 0.332
    against 0.409 at 1e-5). Deterministic: the held-out rows are drawn from a fixed seed.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if kind == "procrustes":
        u, _, vt = np.linalg.svd(a64.T @ b64)
        return (u @ vt).astype(np.float32)
    if ridge is None:
        ridge = _choose_ridge(a64, b64)
    return _ridge_map(a64, b64, ridge).astype(np.float32)


def _ridge_map(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    return np.linalg.solve(gram, a.T @ b)


def _choose_ridge(a: np.ndarray, b: np.ndarray) -> float:
    """The ridge of :func:`pair_map` by held-out self-retrieval: each held-out text, mapped, should
    find its own document first among the held-out documents and up to :data:`RIDGE_DISTRACTORS`
    others. Ties go to the stronger ridge."""
    if len(a) < MIN_PAIRS_TO_CHOOSE:
        return RIDGES[-1]
    order = np.random.default_rng(0).permutation(len(a))
    n_val = min(len(a) // 5, 1000)
    val, fit = order[:n_val], order[n_val:]
    docs = b[np.concatenate([val, fit[:RIDGE_DISTRACTORS]])]  # held-out documents first
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    best, best_hits = RIDGES[-1], -1
    for ridge in reversed(RIDGES):  # strongest first: a weaker one must find strictly more
        scores = (a[val] @ _ridge_map(a[fit], b[fit], ridge)) @ docs.T
        hits = int((scores.argmax(axis=1) == np.arange(n_val)).sum())
        if hits > best_hits:
            best, best_hits = ridge, hits
    return best


def _pair_loss(
    query_net: ResidualAdapter, corpus_net: ResidualAdapter | None, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Mean cosine distance between paired texts' mapped query-side and document-side vectors."""
    qa = torch.nn.functional.normalize(query_net(a), dim=-1)
    db = torch.nn.functional.normalize(b if corpus_net is None else corpus_net(b), dim=-1)
    return (1.0 - (qa * db).sum(-1)).mean()


def prefix_sizes(dims: Sequence[int] | None, dim: int) -> list[int]:
    """The output sizes trained together: ``dims`` and the full width, ascending (full width alone
    without ``dims``); a size above ``dim`` is an error naming both."""
    sizes = sorted({int(m) for m in dims or ()} | {dim})
    if sizes[-1] > dim:
        raise ValueError(f"dims: {sizes[-1]} is larger than the {dim}-d embeddings; give sizes up to {dim}")
    return sizes


def nearest_rotation(w: torch.Tensor) -> torch.Tensor:
    """The orthogonal matrix nearest ``w``: its polar factor ``w (wᵀw)^(-1/2)``, from the symmetric
    eigendecomposition of ``wᵀw`` in float64.

    Not from an SVD (``u @ vh``), the textbook way: on the near-orthogonal matrices a rotation
    drifts to in one optimiser step (singular values within a few percent of 1), torch's SVD with
    two threads failed to converge ("too many repeated singular values") and ended an unsupervised
    SciFact fit; the eigensolver is well-posed there.
    """
    w64 = w.detach().double()
    eigenvalues, vectors = torch.linalg.eigh(w64.T @ w64)
    inverse_sqrt = (vectors * eigenvalues.clamp_min(1e-12).rsqrt()) @ vectors.T
    return (w64 @ inverse_sqrt).to(w.dtype)


def pca_rotation(D: np.ndarray) -> np.ndarray:
    """Orthonormal rows ordered by the corpus variance they carry (principal axes of the centred
    corpus): ``x @ R.T`` keeps every cosine, and its first ``m`` coordinates are the corpus's best
    ``m``-d linear summary. Signs are fixed (largest entry positive) so the result is deterministic."""
    centred = D.astype(np.float64) - D.mean(axis=0, dtype=np.float64)
    return _axes(centred.T @ centred)


#: Weight of the documents' second moment added to the queries' in :func:`score_axes`: small enough
#: to leave the axes the queries span in place, it orders the rest (a few query texts span few axes)
#: by the corpus instead of leaving them arbitrary.
QUERY_MOMENT_FLOOR = 1e-3


def score_axes(Q: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Orthonormal rows ordered by their share of the query-document scores. With ``P`` the
    projection on rows ``r``, the mean over the query texts ``Q`` and documents ``D`` of
    ``(q.P.d) * (q.d)`` is the sum of ``r.S.r``, ``S`` the symmetrised product of the two
    second-moment matrices (the queries' with a floor of :data:`QUERY_MOMENT_FLOOR` times the
    documents'); the rows are ``S``'s eigenvectors, largest eigenvalue first, so the first ``m``
    coordinates keep the most of what a query and a document share. PCA of the corpus ranks axes by
    document variance alone; queries that dwell on other axes (short claims against long abstracts)
    are summarised worse by it. Signs as :func:`pca_rotation`'s."""
    Q64, D64 = Q.astype(np.float64), D.astype(np.float64)
    docs = D64.T @ D64 / len(D64)
    queries = Q64.T @ Q64 / len(Q64) + QUERY_MOMENT_FLOOR * docs
    product = queries @ docs
    return _axes(product + product.T)


def _axes(M: np.ndarray) -> np.ndarray:
    """Eigenvectors of the symmetric matrix ``M`` as float32 rows, largest eigenvalue first, each
    signed so that its largest entry is positive (the result is deterministic)."""
    _, vectors = np.linalg.eigh(M)
    R = vectors[:, ::-1].T
    R *= np.sign(R[np.arange(len(R)), np.abs(R).argmax(axis=1)])[:, None]
    return np.ascontiguousarray(R, dtype=np.float32)


@dataclass
class TrainResult:
    """Trained networks (best validation checkpoint, or untouched when their start stayed best) and how
    training went; :meth:`SearchAdaptor.fit` turns it into the estimator's fitted attributes."""

    query_net: ResidualAdapter
    corpus_net: ResidualAdapter | None
    dim: int
    history: list[dict[str, Any]]  # validation nDCG@10 and mean loss (None at step 0) per evaluation
    best_step: int  # 0: no checkpoint beat the start (zero-shot, or init's map), whose score best_score is
    best_score: float
    zero_shot_score: float  # the start's: the networks' base alone (see _adapted), not a no-skip MLP's draw
    n_steps: int
    n_train_queries: int  # without labels: the query texts it trained on (corpus texts are not counted)
    val_query_ids: list[str]
    val_metric: str = VAL_METRIC  # what the validation score measures ("neighbours@10" without labels)
    query_dim: int | None = None  # the query model's dimension when it is not ``dim`` (cross-model)
    start: list[dict[str, torch.Tensor]] | None = None  # the networks' states at step 0 (zero-shot)
    precision: str = "float32"  # the arithmetic of the training steps (see resolve_precision)
    # whose labels trained it; without labels, whose texts did (see _Objective.train_ids)
    train_query_ids: list[str] = field(default_factory=list)
    # queries that validated it: len(val_query_ids) when None; a similarity fit's held-out query texts
    n_val_queries: int | None = None


def train(
    params: Mapping[str, Any],
    query_embeddings: Any,
    corpus_embeddings: Any,
    qrels: Mapping[str, Mapping[str, int]] | None,
    query_ids: Sequence[str] | None,
    corpus_ids: Sequence[str] | None,
    val_query_ids: Sequence[str] | None,
    pairs: tuple[Any, Any] | None = None,
    query_pairs: Any = None,
    more_pairs: tuple[Any, Any] | None = None,
    steps: int | None = None,
) -> TrainResult:
    """Train networks with hyperparameters ``params`` (``SearchAdaptor.get_params()``); see
    :meth:`SearchAdaptor.fit` for the data contract. ``loss="similarity"`` and ``"alignment"``
    train without labels.

    ``steps`` (labelled losses) trains on every labelled query, none held out, for exactly that
    many steps and keeps the last state: :meth:`SearchAdaptor.refit_all`, whose step count
    a validated fit chose. Nothing validates it, so its scores are NaN and its history empty.

    Ids are str, in the qrels as in ``query_ids``, ``corpus_ids`` and ``val_query_ids``, and qrels
    are ``{query_id: {doc_id: grade}}``: one rule with :func:`~search_adaptor.metrics.evaluate`
    (:func:`~search_adaptor.metrics.check_qrels`, :func:`~search_adaptor.metrics.check_ids`), as
    an int id converted on one side only would never meet the other's."""
    hp = SimpleNamespace(**params)
    qrels = None if qrels is None else check_qrels(qrels)
    val_query_ids = None if val_query_ids is None else check_ids(val_query_ids, "val_query_ids")
    Qn = _as_matrix(query_embeddings, "query embeddings", query_ids, "query")
    Dn = _as_matrix(corpus_embeddings, "corpus embeddings", corpus_ids, "document")
    paired = _check_pairs(pairs, Qn.shape[1], Dn.shape[1], hp)
    trained_on = _with_more_pairs(paired, more_pairs, Qn.shape[1], Dn.shape[1])
    if Qn.shape[1] != Dn.shape[1] and hp.init not in ("lstsq", "procrustes"):
        raise ValueError(
            f"query embeddings are {Qn.shape[1]}-d but corpus embeddings are {Dn.shape[1]}-d: queries of "
            "another model need a map into the documents' space (init='lstsq' with pairs)"
        )
    qids = check_ids(query_ids, "query_ids") if query_ids is not None else [str(i) for i in range(len(Qn))]
    dids = check_ids(corpus_ids, "corpus_ids") if corpus_ids is not None else [str(i) for i in range(len(Dn))]
    for ids, rows, what in ((qids, Qn, "query"), (dids, Dn, "corpus")):
        if len(ids) != len(rows):
            raise ValueError(
                f"{what}_ids: {len(ids)} ids for {len(rows)} {what} embeddings; give one id per row, in order"
            )
    rng = np.random.default_rng(hp.seed)
    generator = torch.Generator().manual_seed(hp.seed)  # local: concurrent fits stay reproducible
    dim = Dn.shape[1]
    prefixes = prefix_sizes(hp.dims, dim)
    query_net, corpus_net = build_nets(
        dim,
        hp.hidden_dim,
        hp.architecture,
        hp.residual,
        hp.mode,
        generator,
        has_projection(hp.init, hp.loss),
        Qn.shape[1],
    )
    nets = [query_net] + ([corpus_net] if hp.mode == "separate" and corpus_net is not None else [])
    if hp.init == "pca":
        R = torch.from_numpy(pca_rotation(Dn))
        with torch.no_grad():
            for net in nets:
                assert net.project is not None
                net.project.weight.copy_(R)
    elif hp.init in ("lstsq", "procrustes"):  # the query side starts as the closed-form map of the pairs
        assert paired is not None and query_net.project is not None
        start = pair_map(*paired, hp.init).T
        if len(prefixes) > 1 and corpus_net is not None and corpus_net.project is not None:
            # Matryoshka with a document tower: both sides rotated onto the corpus's PCA (the full
            # width keeps every score of the map; the prefixes start as the PCA baseline)
            R = pca_rotation(Dn)
            start = R @ start
            with torch.no_grad():
                corpus_net.project.weight.copy_(torch.from_numpy(R))
        with torch.no_grad():
            query_net.project.weight.copy_(torch.from_numpy(np.ascontiguousarray(start)))
    qid_to_row = index_ids(qids, "query", "query_ids")
    if hp.loss == "similarity":  # the texts of the queries given in qrels (labels unused), and the corpus
        known = fit_queries(qrels or {}, qid_to_row, labels=False)
        rows = [qid_to_row[q] for q in known]
        objective: _Objective = _Similarity(
            hp, Qn[rows], Dn, query_net, corpus_net, prefixes, rng, query_ids=known
        )
    elif hp.loss == "alignment":
        assert paired is not None
        doc_side = _check_query_pairs(query_pairs, len(Qn), dim)
        fit_pairs, held_out, held_out_ids, train_q = _alignment_split(
            hp, trained_on, Qn, doc_side, qrels, qid_to_row, val_query_ids, rng
        )
        n_queries = len(train_q)
        # texts added by more_pairs must not crowd out the queries: those keep their share of the corpus's
        share = n_queries / (len(paired[0]) + n_queries) if more_pairs is not None and n_queries else None
        objective = _Alignment(
            hp, fit_pairs, held_out, held_out_ids, n_queries, share, Dn, query_net, corpus_net, rng, train_q
        )
    else:
        held_out = steps is None
        objective = _Ranking(
            hp, Qn, Dn, qrels or {}, qids, dids, qid_to_row, val_query_ids, rng, generator, held_out
        )
        objective.setup(query_net, corpus_net, prefixes, trained_on if hp.gamma > 0 else None)
    params_ = [p for net in nets for p in net.parameters() if p.requires_grad] + objective.extra_parameters()
    opt = torch.optim.Adam(params_, lr=hp.lr)

    precision = resolve_precision(hp.precision)
    start = [copy.deepcopy(n.state_dict()) for n in nets]
    if steps is not None:
        return _refitted(objective, opt, nets, steps, precision, start, query_net, corpus_net, dim, Qn)
    zero_shot, per = objective.score(start=True)  # step 0: the start, which a checkpoint must beat
    best: dict[str, Any] = {"score": zero_shot, "step": 0, "state": start}
    history: list[dict[str, Any]] = [_history(0, zero_shot, per, None)]
    last_improvement, running, step = 0, 0.0, 0
    for step in range(1, hp.max_steps + 1):
        running += _step(objective, opt, precision)
        if step % hp.eval_every == 0 or step == hp.max_steps:
            score, per = objective.score()
            history.append(_history(step, score, per, running / hp.eval_every))
            running = 0.0
            if score > best["score"] + 1e-9:
                best = {"score": score, "step": step, "state": [copy.deepcopy(n.state_dict()) for n in nets]}
                last_improvement = step
            elif step - last_improvement >= hp.patience:
                break
    if objective.pooled:  # what selection compares is scored over the whole corpus
        zero_shot = objective.exact_score(start=True)[0]
        if best["step"]:
            for net, state in zip(nets, best["state"], strict=True):
                net.load_state_dict(state)
            best["score"] = objective.exact_score()[0]
        if best["score"] <= zero_shot + 1e-9:  # the checkpoint does not beat its start: the start
            best = {"score": zero_shot, "step": 0, "state": start}
    for net, state in zip(nets, best["state"], strict=True):  # the best checkpoint, or the start
        net.load_state_dict(state)
        net.eval()
    return TrainResult(
        query_net=query_net,
        corpus_net=corpus_net,
        dim=dim,
        history=history,
        best_step=int(best["step"]),
        best_score=float(best["score"]),
        zero_shot_score=float(zero_shot),
        n_steps=step,
        n_train_queries=objective.n_train,
        val_query_ids=objective.val_ids,
        n_val_queries=objective.n_val,
        val_metric=objective.metric,
        query_dim=Qn.shape[1],
        start=start,
        precision=precision,
        train_query_ids=list(objective.train_ids),
    )


def _step(objective: _Objective, opt: torch.optim.Optimizer, precision: str) -> float:
    """One optimiser step on a fresh batch, the objective's constraint restored; its loss."""
    with _steps_in(precision):
        loss = objective.loss().float()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    objective.after_step()
    return float(loss.detach())


def _refitted(
    objective: _Objective,
    opt: torch.optim.Optimizer,
    nets: list[ResidualAdapter],
    steps: int,
    precision: str,
    start: list[dict[str, torch.Tensor]],
    query_net: ResidualAdapter,
    corpus_net: ResidualAdapter | None,
    dim: int,
    Qn: np.ndarray,
) -> TrainResult:
    """``steps`` optimiser steps on every labelled query, the last state kept (see :func:`train`)."""
    for _ in range(steps):
        _step(objective, opt, precision)
    for net in nets:
        net.eval()
    return TrainResult(
        query_net=query_net,
        corpus_net=corpus_net,
        dim=dim,
        history=[],
        best_step=steps,
        best_score=float("nan"),
        zero_shot_score=float("nan"),
        n_steps=steps,
        n_train_queries=objective.n_train,
        val_query_ids=[],
        val_metric=objective.metric,
        query_dim=Qn.shape[1],
        start=start,
        precision=precision,
        train_query_ids=list(objective.train_ids),
    )


def _history(step: int, score: float, per: Mapping[int, float], loss: float | None) -> dict[str, Any]:
    """One evaluation: the validation score, each prefix size's when there are several, the mean loss."""
    entry: dict[str, Any] = {"step": step, VAL_METRIC: score, "loss": loss}
    if len(per) > 1:
        entry.update({f"{VAL_METRIC}@{m}": v for m, v in per.items()})
    return entry


class _Objective:
    """What one training run minimises and validates on; the loop in :func:`train` is shared."""

    n_train: int
    val_ids: list[str]
    #: the queries whose labels train it; without labels, those whose texts train it, and (a
    #: similarity fit, whose ``val_ids`` stay empty) those whose texts it holds out to validate: what
    #: ``evaluate`` must not call held-out (its texts, not its labels, trained the map)
    train_ids: tuple[str, ...] = ()
    metric = VAL_METRIC

    @property
    def n_val(self) -> int:
        """The queries whose labels (or, without labels, texts) validate it."""
        return len(self.val_ids)

    def loss(self) -> torch.Tensor:
        """The loss of one freshly drawn batch (with its computation graph)."""
        raise NotImplementedError

    def score(self, start: bool = False) -> tuple[float, dict[int, float]]:
        """The validation score early stopping keeps the best of, and each prefix size's: of the
        networks as they are, or with ``start`` of the map they start from (:func:`_adapted`)."""
        raise NotImplementedError

    #: whether :meth:`score` is an estimate (over candidate pools), to be scored again exactly
    #: (:meth:`exact_score`) for the start and the checkpoint kept
    pooled = False

    def exact_score(self, start: bool = False) -> tuple[float, dict[int, float]]:
        """:meth:`score` as it is compared beyond the fit (selection, the identity's tie)."""
        return self.score(start)

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Training-only parameters optimised alongside the networks (the query predictor)."""
        return []

    def after_step(self) -> None:
        """A constraint the networks must keep, restored after each optimiser step."""


def _given_validation(
    val_query_ids: Sequence[str], qrels: Mapping[str, Mapping[str, int]], labelled: Sequence[str]
) -> list[str]:
    """The given validation queries that can be scored, sorted: those with a relevant document
    (``labelled``, by :func:`~search_adaptor.data.labelled_queries`, the rule that keeps training
    queries and a drawn split's); nDCG is undefined for the others (all judgements grade 0, common in
    TREC qrels), which are left out. An empty list is refused, not read as None: a filter that came
    out empty would otherwise turn silently into a random split."""
    if not val_query_ids:
        raise ValueError(
            "val_query_ids is empty: give the query ids to validate on, or None to hold out "
            "val_fraction of the labelled queries"
        )
    given = sorted(set(val_query_ids))
    missing = [q for q in given if q not in qrels]
    if missing:
        raise ValueError(f"val_query_ids: query {missing[0]!r} has no qrels; give labelled queries")
    kept = sorted(set(given) & set(labelled))
    if not kept:
        raise ValueError(
            f"val_query_ids: none of the {len(given)} validation queries has a relevant document "
            "(grade >= 1), so none can be scored; give labelled ones, or None to hold out val_fraction "
            "of the labelled queries"
        )
    return kept


class _Ranking(_Objective):
    """Supervised: labelled (query, relevant document) pairs; validation nDCG@10 on held-out queries."""

    def __init__(
        self,
        hp: SimpleNamespace,
        Qn: np.ndarray,
        Dn: np.ndarray,
        qrels: Mapping[str, Mapping[str, int]],
        qids: list[str],
        dids: list[str],
        qid_to_row: Mapping[str, int],
        val_query_ids: Sequence[str] | None,
        rng: np.random.Generator,
        generator: torch.Generator,
        held_out: bool = True,
    ) -> None:
        did_to_col = index_ids(dids, "document", "corpus_ids")
        judged = _index_qrels(qrels, qid_to_row, did_to_col)
        labelled = fit_queries(qrels, qid_to_row, labels=True)  # (judged: every one has an embedding)
        if not held_out:  # a refit: every labelled query trains, none validates
            train_q, val = list(labelled), []
        elif val_query_ids is None:  # the generator's first draw: drawn_validation knows it beforehand
            train_q, val = validation_split(labelled, hp.val_fraction, rng)
        else:
            val = _given_validation(val_query_ids, qrels, labelled)
            train_q = [q for q in labelled if q not in set(val)]
        if not train_q:
            raise ValueError("no labelled training queries left after carving out the validation split")
        self.hp, self.rng, self.generator = hp, rng, generator
        self.Qn_t, self.Dn_t, self.Dn = torch.from_numpy(Qn), torch.from_numpy(Dn), Dn
        self.ts = _csr(train_q, judged, qid_to_row)
        self.grades = _Grades(RelevanceIndex({q: qrels[q] for q in judged}, qids, dids), len(qids))
        self.rel = RelevanceIndex({q: qrels[q] for q in val}, val, dids)
        self.Qv = Qn[[qid_to_row[q] for q in val]]
        self.n_train, self.val_ids, self.train_ids = len(train_q), val, tuple(train_q)
        self.Qn = Qn

    def setup(
        self,
        query_net: ResidualAdapter,
        corpus_net: ResidualAdapter | None,
        prefixes: Sequence[int],
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        hp, dim = self.hp, self.Dn.shape[1]
        self.query_net, self.corpus_net, self.prefixes = query_net, corpus_net, list(prefixes)
        self.pairs = None if pairs is None else tuple(torch.from_numpy(p) for p in pairs)
        self.predictor = (
            QueryPredictor(dim, int(hp.hidden_dim or dim), self.generator) if hp.beta > 0 else None
        )
        # hard negatives, and the validation pools, come from the starting map's ranking (the queries
        # as they are, unless a projection maps them first: another model's queries, a rotation)
        mining = hp.negatives in ("hard", "mixed")
        # on large corpora a search of the whole corpus at every evaluation would be most of the fit
        # (benchmarks/validation_pools.py): evaluations rank each query's pool, and the start and the
        # checkpoint kept are scored again over the whole corpus (train's exact_score)
        self.pooled = len(self.Dn) > VAL_POOL_ABOVE and len(self.Qv) > 0  # (a refit validates nothing)
        queries, docs, val_queries = self.Qn, self.Dn, self.Qv
        if query_net.project is not None and (mining or self.pooled):
            docs = l2_normalize(_adapted(corpus_net, self.Dn, self.Dn, start=True))
            queries = l2_normalize(_adapted(query_net, self.Qn, None, start=True)) if mining else queries
            val_queries = (
                l2_normalize(_adapted(query_net, self.Qv, None, start=True)) if self.pooled else None
            )
        hard = MINED.get(hp, queries, docs, self.ts, self.grades) if mining else None
        self.pool = _Pool.of(val_queries, docs) if self.pooled else None
        self.sampler = _Sampler(hp, self.ts, self.grades, hard, len(self.Dn), self.rng)
        small = hp.in_batch and len(self.Dn) <= hp.full_corpus_max
        # every document a negative when documents need not be adapted (query-only), or when asked
        self.all_docs = small and hp.negatives == "all" and self.corpus_net is not None
        # exhaustive negatives: each step labels its queries against every document (_TrainSet.label_rows)
        self.exhaustive = small and (hp.mode == "query_only" or self.all_docs)

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return [] if self.predictor is None else list(self.predictor.parameters())

    def score(self, start: bool = False) -> tuple[float, dict[int, float]]:
        return _val_score(
            self.query_net, self.corpus_net, self.Qv, self.Dn, self.rel, self.prefixes, start, self.pool
        )

    def exact_score(self, start: bool = False) -> tuple[float, dict[int, float]]:
        return _val_score(self.query_net, self.corpus_net, self.Qv, self.Dn, self.rel, self.prefixes, start)

    def loss(self) -> torch.Tensor:
        hp, Dn_t = self.hp, self.Dn_t
        qi, cand, labels, valid, p = self.sampler.batch()
        q_in = self.Qn_t[self.ts.q_rows[qi]]
        qa_raw = self.query_net(q_in)
        rec_terms = [recovery_loss(qa_raw, self.query_net.base(q_in))] if hp.alpha > 0 else []
        if self.all_docs:  # adapt the whole corpus: every document is a candidate
            uniq, inv = np.arange(len(self.Dn)), cand
        else:
            uniq, inv = np.unique(cand, return_inverse=True)
            inv = inv.reshape(cand.shape)
        d_in = Dn_t[uniq]
        if self.corpus_net is None:
            da_raw = d_in
        else:
            da_raw = self.corpus_net(d_in)
            if hp.alpha > 0:
                rec_terms.append(recovery_loss(da_raw, self.corpus_net.base(d_in)))
        if self.exhaustive:
            lab = torch.from_numpy(self.ts.label_rows(qi, len(self.Dn)))
            valid_t = torch.ones_like(lab, dtype=torch.bool)
        elif hp.in_batch and hp.loss in ("infonce", "softmax"):
            lab = torch.from_numpy(self.grades(self.ts.q_rows[qi], uniq))
            valid_t = torch.ones_like(lab, dtype=torch.bool)
        else:
            lab, valid_t = torch.from_numpy(labels), torch.from_numpy(valid)
        loss = torch.zeros(())
        for m in self.prefixes:  # Matryoshka: the same objective on every trained prefix, summed
            full = m == len(Dn_t[0])
            qa = torch.nn.functional.normalize(qa_raw if full else qa_raw[:, :m], dim=-1)
            da = torch.nn.functional.normalize(da_raw if full else da_raw[:, :m], dim=-1)
            if self.all_docs:
                scores = qa @ da.T
            elif self.exhaustive:
                scores = qa @ (Dn_t.T if full else torch.nn.functional.normalize(Dn_t[:, :m], dim=-1).T)
            elif hp.in_batch and hp.loss in ("infonce", "softmax"):
                scores = qa @ da.T
            else:
                scores = (qa.unsqueeze(1) * da[torch.from_numpy(inv)]).sum(-1)
            loss = loss + ranking_objective(hp.loss, scores, lab, valid_t, hp.temperature, hp.pair_reduction)
            if full:
                qa_full, da_full = qa, da
        if rec_terms:  # the paper's alpha * (rec_q + rec_d); query-only adapters have rec_q alone
            loss = loss + hp.alpha * sum(rec_terms)
        if self.predictor is not None:
            pos_adapted = da_full[torch.from_numpy(inv[:, :p])]  # (B, P, dim) adapted relevant documents
            loss = loss + hp.beta * prediction_loss(
                qa_full, self.predictor(pos_adapted), torch.from_numpy(labels[:, :p])
            )
        if self.pairs is not None:  # the alignment term: paired texts of both models land together
            rows = torch.from_numpy(
                self.rng.choice(
                    len(self.pairs[0]), size=min(hp.batch_size, len(self.pairs[0])), replace=False
                )
            )
            loss = loss + hp.gamma * _pair_loss(
                self.query_net, self.corpus_net, self.pairs[0][rows], self.pairs[1][rows]
            )
        return loss


class _Similarity(_Objective):
    """Unsupervised (Matryoshka-Adaptor): no labels. Every prefix of the adapted vectors should rank
    the documents as the full base embeddings do. For each sampled text, the softmax (at
    ``temperature``) of its base cosines to its nearest documents and to random ones is the target,
    and each prefix's softmax over the same documents is pulled to it (cross-entropy, summed over
    prefixes). Only the projection trains, and it stays a rotation (each step is followed by the
    nearest orthogonal matrix): the full width then keeps every cosine exactly, and the prefixes
    start as the corpus's PCA (``init="pca"``) or on the training query texts' :func:`score_axes`
    (``"score-axes"``) and can only be reshuffled, never distorted. Rows are the corpus texts
    and the query texts given, which make half of each batch: what the prefixes will carry is
    queries (their texts move XQuAD-R at 96-d from level with PCA to above it: BENCHMARKS.md). A
    share (``val_fraction``) of the query texts, or of the corpus texts when no queries are given,
    is held out; validation is the overlap of the held-out rows' top-10 neighbours (among the
    documents) in each adapted prefix with their top-10 in the full base space."""

    NEIGHBOURS = 16
    metric = "neighbours@10"

    def __init__(
        self,
        hp: SimpleNamespace,
        Qn: np.ndarray,
        Dn: np.ndarray,
        query_net: ResidualAdapter,
        corpus_net: ResidualAdapter | None,
        prefixes: Sequence[int],
        rng: np.random.Generator,
        query_ids: Sequence[str] = (),
    ) -> None:
        """``Qn``: the query texts' rows (``query_ids``, when known, name them)."""
        if corpus_net is None:
            raise ValueError("loss='similarity' rotates queries and documents alike: use mode 'shared'")
        if len(Dn) < 2:  # a document's nearest neighbours are the others
            raise ValueError(
                f"an unsupervised fit keeps each text's nearest documents, and the corpus has {len(Dn)} "
                "document: give at least 2"
            )
        self.hp, self.rng, self.net, self.prefixes = hp, rng, corpus_net, list(prefixes)
        self.net.f.requires_grad_(False)  # the rotation alone: the residual function stays zero
        queries = Qn if hp.mode == "shared" else Qn[:0]
        # held out: a share of the query texts when there are some (what the prefixes will carry),
        # else of the documents
        held = queries if len(queries) >= 2 else Dn
        order = rng.permutation(len(held))
        n_val = _held_out(len(held), hp.val_fraction)
        val_rows = held[order[:n_val]]
        if held is queries:
            train_docs, train_queries = Dn, queries[order[n_val:]]
        else:
            train_docs, train_queries = Dn[order[n_val:]], queries
        self.train_rows = np.concatenate([train_docs, train_queries])
        self.n_docs = len(train_docs)  # rows before it are documents, from it on query texts
        if hp.init == "score-axes":  # the training query texts' axes (the held-out ones play no part)
            R = score_axes(train_queries, Dn) if len(train_queries) else pca_rotation(Dn)
            with torch.no_grad():
                self.net.project.weight.copy_(torch.from_numpy(R))  # type: ignore[union-attr]
        self.Dn, self.Dn_t = Dn, torch.from_numpy(Dn)
        k = min(self.NEIGHBOURS, len(Dn) - 1)
        # a document's own row is its first neighbour: dropped; a query's first is kept
        self.neighbours = np.concatenate(
            [exact_search(train_docs, Dn, k + 1)[0][:, 1:], exact_search(train_queries, Dn, k)[0]]
        )
        self.val_rows = val_rows
        self.val_top = exact_search(val_rows, Dn, 10)[0]
        # query texts, not rows (the documents are every fit's): what report.json and the card count
        self.n_train, self.val_ids = len(train_queries), []
        self._n_val = n_val if held is queries else 0
        # every query text it reads, trained on or held out: neighbours, not queries, validate
        self.train_ids = tuple(query_ids) if len(queries) else ()

    @property
    def n_val(self) -> int:
        """The held-out query texts (0 when, without query texts, documents were held out)."""
        return self._n_val

    def loss(self) -> torch.Tensor:
        hp = self.hp
        pick = self.batch_rows()
        extra = self.rng.integers(0, len(self.Dn), size=len(pick))  # random documents, beside the neighbours
        cols = np.unique(np.concatenate([self.neighbours[pick].ravel(), extra]))
        x = torch.from_numpy(self.train_rows[pick])
        d = self.Dn_t[cols]
        target = torch.softmax((x @ d.T) / hp.temperature, dim=-1)  # rows are unit vectors
        xa, da = self.net(x), self.net(d)
        loss = torch.zeros(())
        for m in self.prefixes:
            sim = (
                torch.nn.functional.normalize(xa[:, :m], dim=-1)
                @ torch.nn.functional.normalize(da[:, :m], dim=-1).T
            )
            loss = loss - (target * torch.log_softmax(sim / hp.temperature, dim=-1)).sum(-1).mean()
        return loss

    def batch_rows(self) -> np.ndarray:
        """Rows of one batch: with query texts, half of it are query texts (however few they are
        beside the corpus: the prefixes are there to carry queries), the rest documents."""
        b = min(self.hp.batch_size, len(self.train_rows))
        n_queries = len(self.train_rows) - self.n_docs
        if not (n_queries and self.n_docs):
            return self.rng.choice(len(self.train_rows), size=b, replace=False)
        half = min(b // 2, n_queries)
        queries = self.n_docs + self.rng.choice(n_queries, size=half, replace=False)
        return np.concatenate(
            [self.rng.choice(self.n_docs, size=min(b - half, self.n_docs), replace=False), queries]
        )

    def after_step(self) -> None:
        """Back onto the rotations: the orthogonal matrix nearest the updated projection."""
        with torch.no_grad():
            weight = self.net.project.weight  # type: ignore[union-attr]  # has_projection
            weight.copy_(nearest_rotation(weight))

    def score(self, start: bool = False) -> tuple[float, dict[int, float]]:
        va = _adapted(self.net, self.val_rows, None, start)
        docs = _adapted(self.net, self.Dn, None, start)
        per: dict[int, float] = {}
        for m in self.prefixes:
            top = exact_search(l2_normalize(va[:, :m]), l2_normalize(docs[:, :m]), 10)[0]
            hits = (top[:, :, None] == self.val_top[:, None, :]).any(axis=2)
            per[m] = float(hits.mean())
        return float(np.mean(list(per.values()))), per


class _Alignment(_Objective):
    """Without labels (the upgrade-without-re-indexing setting): a text embedded by both models
    (``pairs``) should rank the documents, through the query model and the map, as the document
    model's own vector of it ranks them. For each sampled pair, the softmax (at ``temperature``) of
    the document model's cosines to the text's nearest documents and to random ones is the target
    and the mapped vector's softmax over the same documents is pulled to it (cross-entropy). The
    rankings, not the cosine of the two vectors: a map can be close on average and still reorder
    the top of the list (SciFact, static queries onto MiniLM's index: see BENCHMARKS.md). Validation
    is the overlap of the held-out pairs' mapped top-10 documents with the document model's own
    top-10 (which pairs are held out: :func:`_alignment_split`). Pairs are drawn uniformly, except
    that query texts beside more paired texts (``fit --pairs``, ``--sentence-pairs``) keep
    ``query_share``, the share they have among the corpus texts alone: drawn in proportion to all,
    SciFact's 48,000 corpus sentences would leave about one of its 647 training query texts a
    batch, and those are what the map will carry (BENCHMARKS.md)."""

    NEIGHBOURS = 16
    metric = "neighbours@10"

    def __init__(
        self,
        hp: SimpleNamespace,
        pairs: tuple[np.ndarray, np.ndarray],
        held_out: tuple[np.ndarray, np.ndarray],
        held_out_ids: list[str],
        n_queries: int,
        query_share: float | None,
        Dn: np.ndarray,
        query_net: ResidualAdapter,
        corpus_net: ResidualAdapter | None,
        rng: np.random.Generator,
        train_ids: Sequence[str] = (),
    ) -> None:
        """``train_ids``: the queries whose texts are the last ``n_queries`` training pairs."""
        a, b = pairs
        self.hp, self.rng, self.query_net, self.corpus_net = hp, rng, query_net, corpus_net
        self.n_queries, self.query_share = n_queries, query_share
        self.a, self.b = torch.from_numpy(a), torch.from_numpy(b)
        self.va = held_out[0]
        self.Dn, self.Dn_t = Dn, torch.from_numpy(Dn)
        self.neighbours = exact_search(b, Dn, min(self.NEIGHBOURS, len(Dn)))[0]
        self.val_top = exact_search(held_out[1], Dn, 10)[0]
        # query texts, not paired rows (the corpus's texts are every fit's), as a similarity fit counts
        self.n_train, self.val_ids, self.train_ids = n_queries, held_out_ids, tuple(train_ids)

    def batch_rows(self) -> np.ndarray:
        """The training pairs of one step (the query texts, the last ``n_queries``, for their share)."""
        n = min(self.hp.batch_size, len(self.a))
        n_texts = len(self.a) - self.n_queries
        n_q = min(self.n_queries, max(1, round(n * self.query_share))) if self.query_share and n_texts else 0
        if not n_q:
            return self.rng.choice(len(self.a), size=n, replace=False)
        queries = n_texts + self.rng.choice(self.n_queries, size=n_q, replace=False)
        return np.concatenate([queries, self.rng.choice(n_texts, size=n - n_q, replace=False)])

    def loss(self) -> torch.Tensor:
        hp = self.hp
        pick = self.batch_rows()
        n = len(pick)
        extra = self.rng.integers(0, len(self.Dn), size=n)  # random documents, beside the neighbours
        cols = torch.from_numpy(np.unique(np.concatenate([self.neighbours[pick].ravel(), extra])))
        rows = torch.from_numpy(pick)
        a, b, d = self.a[rows], self.b[rows], self.Dn_t[cols]
        target = torch.softmax((b @ d.T) / hp.temperature, dim=-1)  # unit rows: cosines
        mapped = self.query_net(a)
        qa = torch.nn.functional.normalize(mapped, dim=-1)
        da = torch.nn.functional.normalize(d if self.corpus_net is None else self.corpus_net(d), dim=-1)
        loss = -(target * torch.log_softmax((qa @ da.T) / hp.temperature, dim=-1)).sum(-1).mean()
        if hp.alpha > 0:
            loss = loss + hp.alpha * recovery_loss(mapped, self.query_net.base(a))
        return loss

    def score(self, start: bool = False) -> tuple[float, dict[int, float]]:
        qa = l2_normalize(_adapted(self.query_net, self.va, None, start))
        docs = l2_normalize(_adapted(self.corpus_net, self.Dn, self.Dn, start))
        top = exact_search(qa, docs, 10)[0]
        hits = float((top[:, :, None] == self.val_top[:, None, :]).any(axis=2).mean())
        return hits, {docs.shape[1]: hits}
