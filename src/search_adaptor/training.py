"""Training: candidate sampling, the optimisation loop and validation-gated checkpoints.

:func:`train` takes the estimator's hyperparameters and returns trained networks; the estimator
(:mod:`search_adaptor.model`) owns the fitted state, and selection among variants lives in
:mod:`search_adaptor.experiment`.

Everything per step is vectorised over the batch (no Python loop per query): positives come from a
CSR table of the training qrels, negatives from uniform draws or the zero-shot ranking, grades of
every sampled (query, document) pair from one sorted-key lookup.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from search_adaptor.data import validation_split
from search_adaptor.embed import unit_rows
from search_adaptor.losses import prediction_loss, ranking_objective, recovery_loss
from search_adaptor.metrics import RelevanceIndex, evaluate_topk
from search_adaptor.networks import QueryPredictor, ResidualAdapter, build_nets
from search_adaptor.retrieval import exact_search, l2_normalize

MAX_POSITIVES = 32  # relevant documents used per query and step (sampled when a query has more)
MAX_NEGATIVES = 64  # negatives per query and step
VAL_METRIC = "ndcg@10"


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


def _as_matrix(x: Any, what: str) -> np.ndarray:
    """The unit rows of embeddings given to ``fit`` (:func:`~search_adaptor.embed.unit_rows`: lengths
    measured in float64, so 1e30 or 1e-30 train as 1 would); NaN/inf or all-zero rows are refused."""
    return unit_rows(x, what)


def _index_qrels(
    qrels: Mapping[str, Mapping[str, int]], qid_to_row: Mapping[str, int], did_to_col: Mapping[str, int]
) -> dict[str, list[tuple[int, int]]]:
    """qrels as {qid: [(doc column, grade), ...]}, refusing ids that have no embedding."""
    out: dict[str, list[tuple[int, int]]] = {}
    for qid, docs in qrels.items():
        if qid not in qid_to_row:
            raise ValueError(f"qrels: query id {qid!r} has no embedding; pass it in query_ids or drop it")
        pairs = []
        for did, grade in docs.items():
            if did not in did_to_col:
                raise ValueError(f"qrels: query {qid!r} names document {did!r}, which is not in the corpus")
            pairs.append((did_to_col[did], int(grade)))
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


def _mine_hard(
    hp: SimpleNamespace, Qn: np.ndarray, Dn: np.ndarray, ts: _TrainSet, grades: _Grades
) -> np.ndarray:
    """Top ``hard_pool`` zero-shot documents per training query, labelled positives replaced by others."""
    depth = min(hp.hard_pool + MAX_POSITIVES, Dn.shape[0])
    idx, _ = exact_search(Qn[ts.q_rows], Dn, depth)
    is_pos = grades(ts.q_rows, idx) > 0
    # push positives to the back, keep the first hard_pool of what remains
    order = np.argsort(is_pos, axis=1, kind="stable")
    ranked = np.take_along_axis(idx, order, axis=1)[:, : min(hp.hard_pool, depth)]
    return ranked


def _val_score(
    query_net: ResidualAdapter,
    corpus_net: ResidualAdapter | None,
    Qv: np.ndarray,
    Dn: np.ndarray,
    doc_cache: np.ndarray | None,
    rel: RelevanceIndex,
) -> tuple[float, np.ndarray | None]:
    """Full-corpus nDCG@10 of the current networks on the validation queries."""
    with torch.inference_mode():
        query_net.eval()
        qa = query_net(torch.from_numpy(Qv)).numpy()
        if corpus_net is None:
            docs = doc_cache if doc_cache is not None else Dn
        else:
            corpus_net.eval()
            docs = np.concatenate(
                [corpus_net(torch.from_numpy(Dn[i : i + 65536])).numpy() for i in range(0, len(Dn), 65536)]
            )
            docs = l2_normalize(docs)
    query_net.train()
    if corpus_net is not None:
        corpus_net.train()
    top, _ = exact_search(l2_normalize(qa), docs, 10)
    return float(evaluate_topk(top, rel, [VAL_METRIC])[VAL_METRIC]), (docs if corpus_net is None else None)


@dataclass
class TrainResult:
    """Trained networks (best validation checkpoint, or untouched when zero-shot stayed best) and how
    training went; :meth:`SearchAdaptor.fit` turns it into the estimator's fitted attributes."""

    query_net: ResidualAdapter
    corpus_net: ResidualAdapter | None
    dim: int
    history: list[dict[str, Any]]  # validation nDCG@10 and mean loss (None at step 0) per evaluation
    best_step: int  # 0: no checkpoint beat zero-shot
    best_score: float
    zero_shot_score: float
    n_steps: int
    n_train_queries: int
    val_query_ids: list[str]


def train(
    params: Mapping[str, Any],
    query_embeddings: Any,
    corpus_embeddings: Any,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str] | None,
    corpus_ids: Sequence[str] | None,
    val_query_ids: Sequence[str] | None,
) -> TrainResult:
    """Train networks with hyperparameters ``params`` (``SearchAdaptor.get_params()``); see
    :meth:`SearchAdaptor.fit` for the data contract."""
    hp = SimpleNamespace(**params)
    Q = _as_matrix(query_embeddings, "query embeddings")
    D = _as_matrix(corpus_embeddings, "corpus embeddings")
    if Q.shape[1] != D.shape[1]:
        raise ValueError(f"query embeddings are {Q.shape[1]}-d but corpus embeddings are {D.shape[1]}-d")
    qids = [str(q) for q in query_ids] if query_ids is not None else [str(i) for i in range(len(Q))]
    dids = [str(d) for d in corpus_ids] if corpus_ids is not None else [str(i) for i in range(len(D))]
    if len(qids) != len(Q) or len(dids) != len(D):
        raise ValueError(
            f"{len(qids)} query ids for {len(Q)} query embeddings / "
            f"{len(dids)} corpus ids for {len(D)} documents"
        )
    qid_to_row = {q: i for i, q in enumerate(qids)}
    did_to_col = {d: i for i, d in enumerate(dids)}
    judged = _index_qrels(qrels, qid_to_row, did_to_col)
    labelled = sorted(q for q, pairs in judged.items() if any(g > 0 for _, g in pairs))
    rng = np.random.default_rng(hp.seed)
    if val_query_ids is None:
        train_q, val = validation_split(labelled, hp.val_fraction, rng)
    else:
        val = sorted({str(q) for q in val_query_ids})
        missing = [q for q in val if q not in judged]
        if missing:
            raise ValueError(
                f"validation query {missing[0]!r} has no qrels; give labelled validation queries"
            )
        train_q = [q for q in labelled if q not in set(val)]
    if not train_q:
        raise ValueError("no labelled training queries left after carving out the validation split")

    torch.manual_seed(hp.seed)
    Qn, Dn = l2_normalize(Q), l2_normalize(D)
    n_docs, dim = Dn.shape
    ts = _csr(train_q, judged, qid_to_row)
    grades = _Grades(RelevanceIndex({q: qrels[q] for q in judged}, qids, dids), len(qids))
    rel = RelevanceIndex({q: qrels[q] for q in val}, val, dids)
    Qv = Qn[[qid_to_row[q] for q in val]]

    query_net, corpus_net = build_nets(dim, hp.hidden_dim, hp.architecture, hp.residual, hp.mode)
    nets = [query_net] + ([corpus_net] if hp.mode == "separate" and corpus_net is not None else [])
    params_ = [p for net in nets for p in net.parameters()]
    predictor = QueryPredictor(dim, int(hp.hidden_dim or dim)) if hp.beta > 0 else None
    if predictor is not None:
        params_ += list(predictor.parameters())
    opt = torch.optim.Adam(params_, lr=hp.lr)

    hard = _mine_hard(hp, Qn, Dn, ts, grades) if hp.negatives in ("hard", "mixed") else None
    sampler = _Sampler(hp, ts, grades, hard, n_docs, rng)
    full_corpus = hp.mode == "query_only" and hp.in_batch and n_docs <= hp.full_corpus_max
    Dn_t = torch.from_numpy(Dn)
    Qn_t = torch.from_numpy(Qn)
    grades_dense = None
    if full_corpus:  # exhaustive negatives: grades of every training query against every document
        grades_dense = np.zeros((len(ts.q_rows), n_docs), dtype=np.float32)
        owner = np.repeat(np.arange(len(ts.q_rows)), np.diff(ts.ptr))
        grades_dense[owner, ts.docs] = ts.grades

    zero_shot, doc_cache = _val_score(query_net, corpus_net, Qv, Dn, None, rel)
    best: dict[str, Any] = {"score": zero_shot, "step": 0, "state": None}
    history: list[dict[str, Any]] = [{"step": 0, VAL_METRIC: zero_shot, "loss": None}]
    last_improvement, running, step = 0, 0.0, 0
    for step in range(1, hp.max_steps + 1):
        qi, cand, labels, valid, p = sampler.batch()
        q_in = Qn_t[ts.q_rows[qi]]
        qa_raw = query_net(q_in)
        qa = torch.nn.functional.normalize(qa_raw, dim=-1)
        rec_terms = [recovery_loss(qa_raw, q_in)] if hp.alpha > 0 else []
        uniq, inv = np.unique(cand, return_inverse=True)
        inv = inv.reshape(cand.shape)
        d_in = Dn_t[uniq]
        if corpus_net is None:
            da_raw = d_in
        else:
            da_raw = corpus_net(d_in)
            if hp.alpha > 0:
                rec_terms.append(recovery_loss(da_raw, d_in))
        da = torch.nn.functional.normalize(da_raw, dim=-1)
        if grades_dense is not None:
            scores = qa @ Dn_t.T
            lab = torch.from_numpy(grades_dense[qi])
            valid_t = torch.ones_like(lab, dtype=torch.bool)
        elif hp.in_batch and hp.loss in ("infonce", "softmax"):
            scores = qa @ da.T
            lab = torch.from_numpy(grades(ts.q_rows[qi], uniq))
            valid_t = torch.ones_like(lab, dtype=torch.bool)
        else:
            scores = (qa.unsqueeze(1) * da[torch.from_numpy(inv)]).sum(-1)
            lab, valid_t = torch.from_numpy(labels), torch.from_numpy(valid)
        loss = ranking_objective(hp.loss, scores, lab, valid_t, hp.temperature, hp.pair_reduction)
        if rec_terms:  # the paper's alpha * (rec_q + rec_d); query-only adapters have rec_q alone
            loss = loss + hp.alpha * sum(rec_terms)
        if predictor is not None:
            pos_adapted = da[torch.from_numpy(inv[:, :p])]  # (B, P, dim) adapted relevant documents
            loss = loss + hp.beta * prediction_loss(
                qa, predictor(pos_adapted), torch.from_numpy(labels[:, :p])
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if step % hp.eval_every == 0 or step == hp.max_steps:
            score, doc_cache = _val_score(query_net, corpus_net, Qv, Dn, doc_cache, rel)
            history.append({"step": step, VAL_METRIC: score, "loss": running / hp.eval_every})
            running = 0.0
            if score > best["score"] + 1e-9:
                best = {"score": score, "step": step, "state": [copy.deepcopy(n.state_dict()) for n in nets]}
                last_improvement = step
            elif step - last_improvement >= hp.patience:
                break
    if best["state"] is not None:
        for net, state in zip(nets, best["state"], strict=True):
            net.load_state_dict(state)
    for net in nets:
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
        n_train_queries=len(train_q),
        val_query_ids=val,
    )
