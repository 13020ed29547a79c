"""Retrieval metrics that reproduce pytrec_eval / trec_eval per-query numbers (and hence BEIR's) exactly.

Metrics are named by ranx-style strings, parsed case-insensitively:

======================  =====================  ==========================================
name                    pytrec_eval measure    definition
======================  =====================  ==========================================
``ndcg@k``              ``ndcg_cut_k``         DCG of the top ``k`` (gain = grade, discount
                                               ``1/log2(rank+1)``) over the ideal DCG of all
                                               the query's judged grades, sorted, cut at ``k``
``recall@k``            ``recall_k``           relevant in the top ``k`` / relevant in qrels
``precision@k``         ``P_k``                relevant in the top ``k`` / ``k``
``map@k``               ``map_cut_k``          sum of precision@r over relevant ranks ``r <= k``
                                               / relevant in qrels
``mrr@k``               ``recip_rank`` on the  ``1/rank`` of the first relevant doc in the top
                        run cut at ``k``       ``k``, else 0 (as BEIR computes MRR@k)
``ndcg``, ``map``,      ``ndcg``, ``map``,     the same over the whole ranking; the ideal DCG
``mrr``                 ``recip_rank``         of ``ndcg`` uses all judged grades
======================  =====================  ==========================================

ir_measures' names work too: ``P@k``, ``R@k``, ``RR@k`` (and ``RR``), ``AP@k`` (and ``AP``)
for precision, recall, MRR and MAP.

Qrels are ``{query_id: {doc_id: grade}}`` and runs ``{query_id: {doc_id: score}}``, ids ``str`` (as
pytrec_eval requires: an int id never equals its str, so a mismatch would silently score 0).
Relevance grades are ints from ``-32768`` to ``32767`` (:data:`GRADE_RANGE`); a grade ``<= 0`` is
not relevant and has zero gain, a grade ``>= 1`` is relevant (trec_eval's default
``relevance_level`` of 1). Documents the qrels do not judge are not relevant. A mean is taken over
the qrels queries that have at least one relevant document; such a query missing from the run
scores 0, but a run that holds none of them is refused (its ids are another set's). Run queries
absent from the qrels are ignored. BEIR averages pytrec_eval's output instead, the run's queries
that the qrels name: the same mean on a full retrieval run, except that a query judged with no
relevant document (0 in every metric there, its ideal DCG being 0) counts in BEIR's mean and not in
this one, which only measures queries that can be answered.

Two entry points share one vectorised kernel:

* :func:`evaluate` takes ``{qid: {doc_id: score}}`` runs, ranks them the way trec_eval does (see
  below) and is the reference path.
* :class:`RelevanceIndex` + :func:`evaluate_topk` take a ``(n_queries, k)`` array of ranked document
  positions, as produced by a dense top-k search over the whole corpus, and never loop in Python
  over queries or documents -- fast enough to run every few training steps.

Ranking a dict run follows trec_eval's ``comp_sim_docno``: scores descending, ties broken by doc id
in *descending* string order. trec_eval stores scores as C ``float``, so scores are first rounded to
float32 and scores that differ only beyond float32 precision tie.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["RelevanceIndex", "evaluate", "evaluate_topk", "max_k", "paired_test"]

_SUPPORTED = (
    "ndcg@k, map@k, mrr@k, recall@k, precision@k (ir_measures' AP@k, RR@k, R@k, P@k too), with k >= 1; "
    "ndcg, map, mrr uncut"
)
_ALIASES = {"p": "precision", "r": "recall", "rr": "mrr", "ap": "map"}  # ir_measures' names
_NAME_RE = re.compile(r"(ndcg|map|mrr|recall|precision|p|r|rr|ap)(?:@(\d+))?")
_UNCUT_KINDS = frozenset({"ndcg", "map", "mrr"})


class _Metric(NamedTuple):
    """A parsed metric: canonical ``name``, ``kind`` and cut ``k`` (None: whole ranking)."""

    name: str
    kind: str
    k: int | None


def _parse_metrics(metrics: str | Sequence[str]) -> list[_Metric]:
    """Parse metric names into :class:`_Metric` s, dropping duplicates and keeping order."""
    if not isinstance(metrics, str | Iterable):
        raise TypeError(
            f"metrics: give a metric name or a list of them, e.g. ['ndcg@10', 'recall@100'], not {metrics!r}"
        )
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError(f"no metrics given; supported: {_SUPPORTED}")
    parsed: dict[str, _Metric] = {}
    for raw in names:
        match = _NAME_RE.fullmatch(str(raw).strip().lower())
        if match is None:
            raise ValueError(f"unknown metric {raw!r}; supported: {_SUPPORTED}")
        kind = _ALIASES.get(match[1], match[1])
        k = None if match[2] is None else int(match[2])
        if (k is None and kind not in _UNCUT_KINDS) or k == 0:
            raise ValueError(f"unknown metric {raw!r}; supported: {_SUPPORTED}")
        name = kind if k is None else f"{kind}@{k}"
        parsed.setdefault(name, _Metric(name, kind, k))
    return list(parsed.values())


def max_k(metrics: str | Sequence[str], n_docs: int | None = None) -> int:
    """Deepest ranking depth the metrics need, so the caller retrieves that many documents.

    Parameters
    ----------
    metrics : str or sequence of str
        Metric names, e.g. ``["ndcg@10", "recall@100"]``.
    n_docs : int, optional
        Corpus size. Cuts deeper than the corpus are capped to it; an uncut metric (``"map"``,
        ``"mrr"``, ``"ndcg"``) needs the whole ranking, i.e. ``n_docs``.

    Returns
    -------
    int
        The largest cut, capped at ``n_docs`` when given.

    Raises
    ------
    ValueError
        On an unknown metric name, or an uncut metric without ``n_docs``.
    """
    parsed = _parse_metrics(metrics)
    if any(m.k is None for m in parsed):
        if n_docs is None:
            raise ValueError("an uncut metric (map, mrr, ndcg) needs the whole ranking: pass n_docs")
        return n_docs
    deepest = max(m.k for m in parsed if m.k is not None)
    return deepest if n_docs is None else min(deepest, n_docs)


def tie_order(doc_ids: Sequence[str]) -> np.ndarray:
    """Each document's key in trec_eval's order of equal scores, doc id descending (the lower key
    ranks first): give it to :func:`~search_adaptor.retrieval.exact_search` so that a ranking of
    duplicate documents is scored as pytrec_eval scores it (:func:`evaluate`)."""
    keys = np.empty(len(doc_ids), dtype=np.int64)
    keys[np.argsort(np.asarray(doc_ids, dtype=str), kind="stable")[::-1]] = np.arange(len(doc_ids))
    return keys


def index_ids(ids: Sequence[str], what: str, argument: str) -> dict[str, int]:
    """Map each id to its position, refusing duplicates (they would make positions ambiguous), named
    as a ``what`` id of the caller's ``argument``."""
    positions: dict[str, int] = {}
    for i, item in enumerate(ids):
        first = positions.setdefault(item, i)
        if first != i:
            raise ValueError(
                f"{argument}: duplicate {what} id {item!r} (rows {first} and {i}): each row needs its own"
            )
    return positions


def check_id(value: object, where: str) -> str:
    """``value`` as an id, refusing in one line anything but a ``str`` (an int ``1`` never matches the
    ``"1"`` of another mapping, which scored 0 silently); ``where`` names the slot, e.g. ``"qrels
    query id"``."""
    if isinstance(value, str):
        return value
    raise TypeError(
        f"{where} is {type(value).__name__} {value!r}: ids must be str (as pytrec_eval requires); "
        f"convert them with str(), e.g. {str(value)!r}"
    )


def check_ids(ids: Iterable[object], what: str) -> list[str]:
    """The ids of the sequence argument ``what`` (e.g. ``"query_ids"``) as a list, each checked by
    :func:`check_id`; a bare ``str`` is refused, as it would be read letter by letter."""
    if isinstance(ids, str):
        raise TypeError(f"{what} is the str {ids!r}: give a list of ids, e.g. [{ids!r}]")
    return [check_id(item, f"{what}[{i}]") for i, item in enumerate(ids)]


#: Smallest and largest qrels grade, those of a 16-bit int: far beyond any graded scale in use (0-4,
#: TREC's -2..4), and within what pytrec_eval scores (its uncut nDCG crashed the process on a grade
#: of 2**20).
GRADE_RANGE = (-(2**15), 2**15 - 1)


def as_grade(value: object, qid: str, doc_id: str) -> int:
    """Return a qrels grade as an int, refusing in one line what is not an integer (trec_eval grades
    are ints): 1.5, "1", True, NaN or None, or one outside :data:`GRADE_RANGE`, naming the query and
    the document."""
    if not isinstance(value, bool) and isinstance(value, numbers.Real) and float(value).is_integer():
        grade = int(value)
        if GRADE_RANGE[0] <= grade <= GRADE_RANGE[1]:
            return grade
        raise ValueError(
            f"qrels grade {value!r} for query {qid!r}, doc {doc_id!r} is out of range: grades are "
            f"integers from {GRADE_RANGE[0]} to {GRADE_RANGE[1]} (<= 0: not relevant)"
        )
    raise ValueError(f"qrels grade {value!r} for query {qid!r}, doc {doc_id!r} is not an integer")


def _nested(
    mapping: object, what: str, value: str, example: str, check: Callable[[object, str, str], Any]
) -> dict[str, dict[str, Any]]:
    """``mapping`` (the argument ``what``) checked to be ``{query_id: {doc_id: value}}`` with str ids,
    each value passed through ``check(value, query_id, doc_id)``; a one-line TypeError names the
    first part of another shape, ``example`` saying how to build the expected one."""
    shape = f"{{query_id: {{doc_id: {value}}}}}"
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what} must be a dict {shape}, not a {type(mapping).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for qid, inner in mapping.items():
        check_id(qid, f"{what} query id")
        if not isinstance(inner, Mapping):
            raise TypeError(
                f"{what}[{qid!r}] is a {type(inner).__name__}, not a dict: {what} must be {shape}; {example}"
            )
        out[qid] = {
            check_id(doc_id, f"{what} doc id (query {qid!r})"): check(v, qid, doc_id)
            for doc_id, v in inner.items()
        }
    return out


def check_qrels(qrels: object) -> dict[str, dict[str, int]]:
    """``qrels`` checked to be ``{query_id: {doc_id: grade}}``, str ids and :func:`as_grade` grades:
    the one rule :func:`evaluate`, :class:`RelevanceIndex` and training read qrels by."""
    return _nested(
        qrels,
        "qrels",
        "grade",
        "a set or list of relevant doc ids becomes {doc_id: 1 for doc_id in relevant}",
        as_grade,
    )


class RelevanceIndex:
    """Qrels mapped once onto integer query and document positions, for :func:`evaluate_topk`.

    Judgements are kept CSR-style: the judged documents of query ``i`` are
    ``doc_positions[indptr[i]:indptr[i + 1]]`` (ascending) with grades at the same slice of
    ``grades``. Each judgement is also encoded as the int64 key ``i * n_docs + doc_position``; those
    keys come out sorted, so the grades of a whole ``(n_queries, k)`` ranking are looked up with one
    ``np.searchsorted``.

    Only queries with at least one relevant document (grade >= 1) are kept, as no metric is defined
    for the others; ``query_ids`` lists the kept ones, in the order of the ``query_ids`` given, and
    ``query_index`` their positions in it, so that ``query_embeddings[rel.query_index]`` lines the
    queries up with the rows :func:`evaluate_topk` expects.

    Parameters
    ----------
    qrels : Mapping[str, Mapping[str, int]]
        ``{query_id: {doc_id: grade}}``; grades ``<= 0`` are judged non-relevant.
    query_ids : Sequence[str]
        The queries that can be ranked, e.g. those with text.
    doc_ids : Sequence[str]
        The corpus; document positions are indices into it.

    Raises
    ------
    ValueError
        If the qrels name a query not in ``query_ids`` or a document not in ``doc_ids`` (the
        message names the id; the caller knows which file and line it came from), if ids repeat,
        or if a grade is not an integer in :data:`GRADE_RANGE`.
    TypeError
        If the qrels are not ``{query_id: {doc_id: grade}}`` with str ids (:func:`check_qrels`).

    Attributes
    ----------
    query_ids : tuple of str, length n_queries
        Kept queries, i.e. those with at least one relevant document.
    query_index : np.ndarray of int64, shape (n_queries,)
        Position of each kept query in the ``query_ids`` given.
    n_docs : int
        Corpus size.
    indptr : np.ndarray of int64, shape (n_queries + 1,)
        Offsets of each query's judgements in ``doc_positions`` and ``grades``.
    doc_positions : np.ndarray of int64, shape (n_judged,)
        Judged document positions, ascending within each query.
    grades : np.ndarray of int64, shape (n_judged,)
        Grades of those judgements.
    num_rel : np.ndarray of int64, shape (n_queries,)
        Relevant (grade >= 1) documents per query; the recall and MAP denominator.
    """

    def __init__(
        self,
        qrels: Mapping[str, Mapping[str, int]],
        query_ids: Sequence[str],
        doc_ids: Sequence[str],
    ) -> None:
        query_pos = index_ids(query_ids, "query", "query_ids")
        doc_pos = index_ids(doc_ids, "document", "doc_ids")
        per_query: dict[int, tuple[list[int], list[int]]] = {}
        for qid, judged in check_qrels(qrels).items():
            if qid not in query_pos:
                raise ValueError(f"qrels name query id {qid!r}, which is not among the query ids")
            positions: list[int] = []
            grades: list[int] = []
            for doc_id, grade in judged.items():
                if doc_id not in doc_pos:
                    raise ValueError(
                        f"qrels for query {qid!r} name doc id {doc_id!r}, which is not in the corpus"
                    )
                positions.append(doc_pos[doc_id])
                grades.append(grade)
            if any(g >= 1 for g in grades):
                per_query[query_pos[qid]] = (positions, grades)

        kept = sorted(per_query)
        self.query_ids: tuple[str, ...] = tuple(query_ids[i] for i in kept)
        self.query_index = _frozen(np.asarray(kept, dtype=np.int64))
        self.n_docs = len(doc_ids)
        counts = np.array([len(per_query[i][0]) for i in kept], dtype=np.int64)
        self.indptr = _frozen(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        positions_flat = np.array([p for i in kept for p in per_query[i][0]], dtype=np.int64)
        grades_flat = np.array([g for i in kept for g in per_query[i][1]], dtype=np.int64)
        segment = np.repeat(np.arange(len(kept), dtype=np.int64), counts)
        order = np.lexsort((positions_flat, segment))
        self.doc_positions = _frozen(positions_flat[order])
        self.grades = _frozen(grades_flat[order])
        self.num_rel = _frozen(
            np.bincount(segment, weights=self.grades >= 1, minlength=len(kept)).astype(np.int64)
        )
        self._segment = segment
        self._keys = segment * self.n_docs + self.doc_positions
        # Ideal ranking: within each query, gains sorted descending, each times its rank's discount.
        ideal_order = np.lexsort((-self.grades, segment))
        ideal_gain = np.maximum(self.grades[ideal_order], 0)
        self._ideal_rank = np.arange(len(segment), dtype=np.int64) - self.indptr[segment]
        self._ideal_contrib = ideal_gain * _discount(len(segment))[self._ideal_rank]
        self._ideal_dcg_cache: dict[int | None, np.ndarray] = {}
        self._dense: np.ndarray | None = None  # grade table, built on first lookup when small

    @property
    def n_queries(self) -> int:
        """Number of kept queries (rows :func:`evaluate_topk` expects)."""
        return len(self.query_ids)

    def ideal_dcg(self, k: int | None) -> np.ndarray:
        """Ideal DCG of each query cut at ``k`` (None: all judged documents), cached per ``k``.

        Returns
        -------
        np.ndarray of float64, shape (n_queries,)
        """
        if k not in self._ideal_dcg_cache:
            weights = (
                self._ideal_contrib if k is None else np.where(self._ideal_rank < k, self._ideal_contrib, 0.0)
            )
            self._ideal_dcg_cache[k] = _frozen(
                np.bincount(self._segment, weights=weights, minlength=self.n_queries)
            )
        return self._ideal_dcg_cache[k]

    def lookup_grades(self, topk: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Grades of ranked (or any) documents; 0 for documents the qrels do not judge.

        Parameters
        ----------
        topk : np.ndarray of int, shape (n, k)
            Document positions.
        rows : np.ndarray of int, shape (n,), optional
            Which kept query (index into ``query_ids``) each row of ``topk`` is for; by default row
            ``i`` is query ``query_ids[i]``. Training looks up sampled (query, document) pairs this way.

        Returns
        -------
        np.ndarray of int64, shape (n, k)
        """
        if rows is None:
            rows = np.arange(len(topk), dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        if self.n_queries * self.n_docs <= _DENSE_MAX_CELLS:  # small qrels: one gather, no search
            if self._dense is None:
                self._dense = np.zeros((self.n_queries, self.n_docs), dtype=np.int32)
                self._dense[self._segment, self.doc_positions] = self.grades
            return self._dense[rows[:, None], topk].astype(np.int64)
        keys = rows[:, None] * self.n_docs + topk.astype(np.int64)
        if len(self._keys) == 0:
            return np.zeros(keys.shape, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(self._keys[at] == keys, self.grades[at], 0)


#: Largest (queries x documents) grade table :meth:`RelevanceIndex.lookup_grades` keeps dense (64 MB).
_DENSE_MAX_CELLS = 16_000_000


def _frozen(array: np.ndarray) -> np.ndarray:
    """Mark an array read-only, so cached index arrays cannot be altered by a caller."""
    array.flags.writeable = False
    return array


def _discount(depth: int) -> np.ndarray:
    """DCG discounts ``1 / log2(rank + 1)`` for ranks ``1..depth``, shape (depth,)."""
    return 1.0 / np.log2(np.arange(2, depth + 2, dtype=np.float64))


def _metric_values(
    grades: np.ndarray,
    num_rel: np.ndarray,
    ideal_dcg: Callable[[int | None], np.ndarray],
    metrics: Sequence[_Metric],
) -> dict[str, np.ndarray]:
    """Per-query metric values from the grades of ranked documents.

    Parameters
    ----------
    grades : np.ndarray of int, shape (n_queries, depth), depth >= 1
        Grade of the document at each rank; 0 for unjudged documents and for padding.
    num_rel : np.ndarray of int, shape (n_queries,)
        Relevant documents per query, all >= 1.
    ideal_dcg : callable
        ``ideal_dcg(k)`` gives the ideal DCG per query cut at ``k`` (None: uncut), shape (n_queries,).
    metrics : sequence of _Metric

    Returns
    -------
    dict of str to np.ndarray of float64, shape (n_queries,)
    """
    width = grades.shape[1]
    relevant = grades >= 1
    gain = np.maximum(grades, 0)
    values: dict[str, np.ndarray] = {}
    for metric in metrics:
        depth = width if metric.k is None else min(metric.k, width)
        top = relevant[:, :depth]
        if metric.kind == "ndcg":
            value = (gain[:, :depth] * _discount(depth)).sum(axis=1) / ideal_dcg(metric.k)
        elif metric.kind == "recall":
            value = top.sum(axis=1) / num_rel
        elif metric.kind == "precision":
            value = top.sum(axis=1) / metric.k
        elif metric.kind == "map":
            precision_at_rank = np.cumsum(top, axis=1) / np.arange(1, depth + 1)
            value = np.where(top, precision_at_rank, 0.0).sum(axis=1) / num_rel
        else:  # mrr
            value = np.where(top.any(axis=1), 1.0 / (top.argmax(axis=1) + 1), 0.0)
        values[metric.name] = value.astype(np.float64)
    return values


def is_metric(name: str) -> bool:
    """Whether ``name`` is a metric :func:`evaluate` computes (all of them are fractions in [0, 1])."""
    try:
        _parse_metrics(name)
    except ValueError:
        return False
    return True


def _means(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each metric over queries; refuses an empty query set, whose mean is undefined."""
    if any(len(v) == 0 for v in values.values()):
        raise ValueError("no query has a relevant document (grade >= 1): the mean is undefined")
    return {name: float(v.mean()) for name, v in values.items()}


def _score(score: object, qid: str, doc: str) -> float:
    """A run's score as trec_eval keeps it (float32); anything but a finite number is refused, as a
    NaN would rank where the sort happens to put it."""
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
        raise ValueError(
            f"run: query {qid!r}, document {doc!r} has score {score!r}; scores must be finite numbers"
        )
    with np.errstate(over="ignore"):
        kept = np.float32(score)
    if not np.isfinite(kept):  # 1e300: inf once kept as float32, tied with every other such score
        raise ValueError(
            f"run: query {qid!r}, document {doc!r} has score {score!r}, beyond float32's range (±3.4e38) "
            "that scores are ranked in, as trec_eval keeps them; rescale the run's scores"
        )
    return float(kept)


def _check_run(run: object) -> dict[str, dict[str, float]]:
    """``run`` checked to be ``{query_id: {doc_id: score}}``, str ids and :func:`_score` scores."""
    ranked = "a ranked list becomes {doc_id: -rank for rank, doc_id in enumerate(ranked)}"
    return _nested(run, "run", "score", ranked, _score)


def _some(ids: Iterable[str], n: int = 3) -> str:
    """The first ``n`` of ``ids``, quoted, for a message ("none" when there are none)."""
    shown = [repr(i) for i in list(ids)[: n + 1]]
    return "none" if not shown else ", ".join(shown[:n]) + (", ..." if len(shown) > n else "")


def evaluate(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: str | Sequence[str],
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Evaluate a scored run against qrels, exactly as pytrec_eval does.

    Each query's documents are ranked by score descending (scores rounded to float32, as
    trec_eval stores them), ties broken by doc id in descending string order.

    Parameters
    ----------
    qrels : Mapping[str, Mapping[str, int]]
        ``{query_id: {doc_id: grade}}``.
    run : Mapping[str, Mapping[str, float]]
        ``{query_id: {doc_id: score}}``.
    metrics : str or sequence of str
        Metric names, e.g. ``["ndcg@10", "recall@100"]``; see the module docstring.
    per_query : bool
        Return per-query values instead of means.

    Returns
    -------
    dict
        ``{metric: mean}``, or with ``per_query`` ``{metric: {query_id: value}}``, keyed by the
        canonical lower-case metric name (``"nDCG@10"`` gives ``"ndcg@10"``, ``"p@5"``
        ``"precision@5"``). Queries are those of ``qrels`` with a relevant document, in qrels order.

    Raises
    ------
    TypeError
        When ``qrels`` or ``run`` is not a dict of dicts, an id is not a str (an int id never
        matches a str one), or ``metrics`` is neither a name nor a list of names.
    ValueError
        On an unknown metric name, a grade that is not an integer in :data:`GRADE_RANGE`, a score
        that is not a finite number, a run that holds none of the queries with a relevant
        document (its ids are another set's: each would score 0), or (for means) when no query has
        a relevant document.
    """
    parsed = _parse_metrics(metrics)
    qrels, run = check_qrels(qrels), _check_run(run)
    cut = None if any(m.k is None for m in parsed) else max(m.k for m in parsed if m.k is not None)
    judged_docs = list(dict.fromkeys(doc for judged in qrels.values() for doc in judged))
    rel = RelevanceIndex(qrels, list(qrels), judged_docs)
    if rel.n_queries and not any(qid in run for qid in rel.query_ids):
        raise ValueError(
            f"run holds none of the qrels' queries with a relevant document (qrels: {_some(rel.query_ids)}; "
            f"run: {_some(run)}): key both by the same query ids"
        )
    ranked_grades: list[list[int]] = []
    for qid in rel.query_ids:
        judged = qrels[qid]
        scored = list(run.get(qid, {}).items())
        scored.sort(key=lambda item: item[0], reverse=True)
        scored.sort(key=lambda item: item[1], reverse=True)  # stable: ties keep doc id descending
        ranked_grades.append([judged.get(doc, 0) for doc, _ in scored[:cut]])
    depth = max([1, *map(len, ranked_grades)])
    grades = np.zeros((rel.n_queries, depth), dtype=np.int64)
    for row, ranked in enumerate(ranked_grades):
        grades[row, : len(ranked)] = ranked
    values = _metric_values(grades, rel.num_rel, rel.ideal_dcg, parsed)
    if per_query:
        return {name: dict(zip(rel.query_ids, v.tolist(), strict=True)) for name, v in values.items()}
    return _means(values)


def evaluate_topk(
    topk: np.ndarray,
    rel: RelevanceIndex,
    metrics: str | Sequence[str],
    per_query: bool = False,
) -> dict[str, float] | dict[str, np.ndarray]:
    """Evaluate rankings given as document positions, vectorised over queries and ranks.

    The order of each row is taken as the ranking; ties in the scores that produced it are the
    caller's to break (trec_eval breaks them by doc id, descending). Uncut metrics are computed
    over all ``k`` columns, as trec_eval computes them over the whole run.

    Parameters
    ----------
    topk : np.ndarray of int, shape (n_queries, k)
        Row ``i`` ranks document positions (into ``rel``'s ``doc_ids``) for ``rel.query_ids[i]``,
        best first, without repeats. ``k`` must reach every cut, up to the corpus size
        (see :func:`max_k`).
    rel : RelevanceIndex
        The qrels, on the same query order and document positions.
    metrics : str or sequence of str
        Metric names; see the module docstring.
    per_query : bool
        Return per-query arrays instead of means.

    Returns
    -------
    dict
        ``{metric: mean}``, or with ``per_query`` ``{metric: np.ndarray of shape (n_queries,)}``
        aligned with ``rel.query_ids``; keys are canonical metric names as in :func:`evaluate`.

    Raises
    ------
    ValueError
        On an unknown metric name, a ``topk`` of the wrong shape or dtype, out-of-range or repeated
        positions, too few columns for a cut, or (for means) no queries.
    """
    parsed = _parse_metrics(metrics)
    topk = np.asarray(topk)
    if topk.ndim != 2 or topk.shape[0] != rel.n_queries or topk.shape[1] == 0:
        raise ValueError(f"topk must have shape (n_queries={rel.n_queries}, k >= 1), got {topk.shape}")
    if not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must hold integer document positions, got dtype {topk.dtype}")
    if topk.size and (topk.min() < 0 or topk.max() >= rel.n_docs):
        raise ValueError(f"topk positions must lie in [0, {rel.n_docs})")
    if topk.shape[1] > 1 and (np.diff(np.sort(topk, axis=1), axis=1) == 0).any():
        raise ValueError("a topk row ranks the same document twice")
    for metric in parsed:
        if metric.k is not None and topk.shape[1] < min(metric.k, rel.n_docs):
            raise ValueError(
                f"{metric.name} needs {min(metric.k, rel.n_docs)} ranked documents, topk has "
                f"{topk.shape[1]}; retrieve max_k(metrics, n_docs) of them"
            )
    values = _metric_values(rel.lookup_grades(topk), rel.num_rel, rel.ideal_dcg, parsed)
    return values if per_query else _means(values)


def paired_test(a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided paired randomization (sign-flip permutation) test of equal means.

    Under the null hypothesis that systems A and B are exchangeable, each query's difference
    ``a[i] - b[i]`` is as likely to have either sign. The test draws ``n_resamples`` random sign
    vectors and counts how often ``|mean(signs * (a - b))|`` reaches the observed ``|mean(a - b)|``;
    this is Fisher's randomization test as used in IR evaluation (Smucker et al., 2007; ranx). The
    p-value is ``(count + 1) / (n_resamples + 1)``, which counts the observed assignment as one
    resample, so it is never 0 and stays valid for a finite number of resamples; identical inputs
    give exactly 1.0.

    Parameters
    ----------
    a, b : np.ndarray of float, shape (n_queries,)
        Per-query scores of two systems on the same queries, in the same order.
    n_resamples : int
        Random sign vectors to draw; the p-value resolution is ``1 / (n_resamples + 1)``.
    seed : int
        Seed of the random generator, so the p-value is reproducible.

    Returns
    -------
    float
        Two-sided p-value in ``(0, 1]``.

    Raises
    ------
    ValueError
        If the arrays are not 1-D, differ in length, are empty or hold non-finite values, or
        ``n_resamples < 1``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"a and b must be non-empty 1-D arrays of equal length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    diff = a - b
    # Compare sums rather than means; the relative slack absorbs summation-order rounding, so a
    # resample equal to the observed statistic (e.g. all signs +1) is always counted.
    threshold = abs(diff.sum()) * (1.0 - 1e-9)
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 22) // len(diff))  # bounds the sign matrix to ~4M entries
    count = 0
    for start in range(0, n_resamples, chunk):
        signs = rng.integers(0, 2, size=(min(chunk, n_resamples - start), len(diff)), dtype=np.int8)
        count += int((np.abs((2.0 * signs - 1.0) @ diff) >= threshold).sum())
    return (count + 1) / (n_resamples + 1)


def metrics_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> list[str]:
    """Markdown table: one row per system, one column per metric."""
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[m]:.4f}" for m in metrics) + " |")
    return lines


#: What validation measured, named for a reader: nDCG@10 with labels; without them, what stood in
#: (how much of each text's top 10 under the base embedding the adapted one keeps).
_VAL_METRIC_NAMES = {"ndcg@10": "nDCG@10", "neighbours@10": "overlap with the base top-10 neighbours"}
#: The validation scores a fit records (``training.val_metric`` of an adapter's config).
VAL_METRICS = tuple(_VAL_METRIC_NAMES)


def val_metric_name(metric: str) -> str:
    """``metric`` (a validation score's name, e.g. ``"neighbours@10"``) as reports and logs print it."""
    return _VAL_METRIC_NAMES.get(metric, metric)
