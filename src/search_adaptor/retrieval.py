"""Unit vectors and exact top-k search over a dense matrix: the reference every index is measured against."""

from __future__ import annotations

import numbers

import numpy as np

_QUERY_CHUNK = 1024
_DOC_CHUNK = 262144
_POOL_GATHER = 4_194_304  # values of candidate vectors gathered at once by pool_search (16 MiB)
_EXACT_VALUES = 4_194_304  # document values scored at once in float64 by exact_search with ``order`` (32 MiB)


def row_norms(x: np.ndarray) -> np.ndarray:
    """L2 norm of every row: in the input's precision (one pass, no squared temporary), and, for rows
    whose squares overflow or underflow it (float32 values beyond about 1e19 or below 1e-19), in
    float64 after scaling the row by its largest value, so that every finite vector gets its true
    length (then float64). A row with NaN or inf gets a non-finite norm; a zero row, 0."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.isfinite(norms).all() and norms.all():
        return norms
    norms = norms.astype(np.float64)
    odd = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    rows = x[odd].astype(np.float64)
    scale = np.abs(rows).max(axis=1)
    ok = np.isfinite(scale) & (scale > 0)
    norms[odd[ok]] = scale[ok] * np.linalg.norm(rows[ok] / scale[ok, None], axis=1)
    return norms


def safe_norms(norms: np.ndarray) -> np.ndarray:
    """Divisors for :func:`row_norms`' output: a zero row divides by 1 and stays zero."""
    return np.where(norms > 0, norms, 1.0)[:, None]


def l2_normalize(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise unit vectors in ``x``'s dtype (zero rows stay zero); ``out=x`` normalises in place."""
    return np.divide(x, safe_norms(row_norms(x)), out=out if out is not None else np.empty_like(x))


def exact_search(
    queries: np.ndarray, docs: np.ndarray, k: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents by inner product for every query, best first.

    Memory stays bounded on large corpora: queries and documents are processed in chunks and only
    the running top-k is kept.

    Parameters
    ----------
    queries : ndarray of shape (n_queries, dim)
    docs : ndarray of shape (n_docs, dim)
    k : int
        Clipped to ``n_docs``.
    order : ndarray of shape (n_docs,), optional
        Breaks ties of equal (float32) scores, the lower key first, at the cut too (a metric must
        not depend on which of two duplicate documents a partition happened to keep; see
        :func:`search_adaptor.metrics.tie_order`). Without it ties fall as they may. With it, scores
        are computed in float64 and then rounded to float32, so that equal documents score equal:
        float32 matrix products round a dot product differently by a document's row (its place in
        the kernel's blocks), which parted 12% of the score pairs of duplicate documents by one unit
        in the last place, ranked them by that, and moved nDCG@10 by 0.01 between two identical runs.

    Returns
    -------
    indices : ndarray of shape (n_queries, k), int64
    scores : ndarray of shape (n_queries, k), float32

    Raises
    ------
    ValueError
        Arrays that are not 2-D of one width, ``k`` not an integer >= 1, or a NaN or inf score (a
        vector holding NaN or inf would otherwise rank arbitrarily).
    """
    queries, docs = np.asarray(queries), np.asarray(docs)
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise ValueError(
            f"exact_search: queries {queries.shape} and docs {docs.shape} must be 2-D arrays of one width"
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"exact_search: k must be an integer >= 1; got {k!r}")
    n_docs = docs.shape[0]
    if order is not None and np.shape(order) != (n_docs,):
        raise ValueError(
            f"exact_search: order must hold one key per document ({n_docs}); got {np.shape(order)}"
        )
    k = min(int(k), n_docs)
    exact = order is not None
    doc_chunk = max(1, _EXACT_VALUES // max(1, docs.shape[1])) if exact else _DOC_CHUNK
    out_idx = np.empty((queries.shape[0], k), dtype=np.int64)
    out_score = np.empty((queries.shape[0], k), dtype=np.float32)
    for qs in range(0, queries.shape[0], _QUERY_CHUNK):
        q = queries[qs : qs + _QUERY_CHUNK]
        q = q.astype(np.float64) if exact else q
        best_idx = np.empty((q.shape[0], 0), dtype=np.int64)
        best_score = np.empty((q.shape[0], 0), dtype=np.float32)
        for ds in range(0, n_docs, doc_chunk):
            d = docs[ds : ds + doc_chunk]
            s = (q @ (d.astype(np.float64) if exact else d).T).astype(np.float32, copy=False)  # as kept
            if not np.isfinite(s).all():
                row = qs + int(np.flatnonzero(~np.isfinite(s).all(axis=1))[0])
                raise ValueError(
                    f"exact_search: query row {row} has a NaN or inf score: a query or document vector "
                    "holds NaN or inf; fix or drop it"
                )
            kk = min(k, s.shape[1])
            part = (
                _best_columns(s, kk) if kk < s.shape[1] else np.tile(np.arange(s.shape[1]), (s.shape[0], 1))
            )
            if order is not None and kk < s.shape[1]:
                _settle_ties_at_the_cut(s, part, order[ds : ds + s.shape[1]])
            cand_score = np.concatenate([best_score, np.take_along_axis(s, part, axis=1)], axis=1)
            cand_idx = np.concatenate([best_idx, part + ds], axis=1)
            if order is None:
                keep = np.argsort(-cand_score, axis=1, kind="stable")[:, :k]
            else:  # by score, then key: np.lexsort sorts by its last key first
                keep = np.lexsort((order[cand_idx], -cand_score), axis=1)[:, :k]
            best_score = np.take_along_axis(cand_score, keep, axis=1)
            best_idx = np.take_along_axis(cand_idx, keep, axis=1)
        out_idx[qs : qs + q.shape[0]] = best_idx
        out_score[qs : qs + q.shape[0]] = best_score
    return out_idx, out_score


def pool_search(
    queries: np.ndarray, docs: np.ndarray, pool: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents by inner product for every query among its own candidates only, best first:
    row ``i`` of ``pool`` holds query ``i``'s candidates (rows of ``docs``). Exact search restricted
    to a pool: what a fit validates on when the corpus is too large to search at every evaluation.
    Candidates are gathered a few queries at a time, so memory stays bounded.

    Returns
    -------
    (indices, scores) : the rows of ``docs`` and their scores, each of shape (n_queries, min(k, pool
    width))
    """
    import torch

    k = min(k, pool.shape[1])
    idx = np.empty((len(queries), k), dtype=np.int64)
    out = np.empty((len(queries), k), dtype=np.float32)
    step = max(1, _POOL_GATHER // max(1, pool.shape[1] * docs.shape[1]))
    for s in range(0, len(queries), step):
        cand = pool[s : s + step]
        scores = np.einsum("qd,qpd->qp", queries[s : s + step], docs[cand])
        top = torch.topk(torch.from_numpy(scores), k, dim=1, sorted=True)
        out[s : s + step] = top.values.numpy()
        idx[s : s + step] = np.take_along_axis(cand, top.indices.numpy(), axis=1)
    return idx, out


def _best_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's ``k`` highest ``scores``, in no order (of columns tied at the cut, any).

    torch's top-k, not ``np.argpartition``: numpy's row-by-row introselect took three to four times
    the products that made the scores, so that exact search (a fit's validation and hard negatives,
    ``evaluate``) was mostly selection; with torch's it is 2.7-3.1x faster at 50,000 documents
    (``benchmarks/exact_search.py``). torch is loaded wherever exact search runs.
    """
    import torch

    return torch.topk(torch.from_numpy(scores), k, dim=1, sorted=False).indices.numpy()


def _settle_ties_at_the_cut(scores: np.ndarray, part: np.ndarray, keys: np.ndarray) -> None:
    """Where the ``k``-th best score of a row (``part`` holds its ``k`` best columns, in any order) is
    shared by columns left out, keep the tied columns with the lowest ``keys``, in place."""
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    at_least = (scores >= kth[:, None]).sum(axis=1)
    for row in np.flatnonzero(at_least > part.shape[1]):  # rare: only exact ties at the cut
        cand = np.flatnonzero(scores[row] >= kth[row])
        part[row] = cand[np.lexsort((keys[cand], -scores[row, cand]))][: part.shape[1]]
