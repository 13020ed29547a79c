"""Training: candidate sampling, the optimisation loop, validation-gated checkpoints, and selection.

Everything per step is vectorised over the batch (no Python loop per query): positives come from a
CSR table of the training qrels, negatives from uniform draws or the zero-shot ranking, grades of
every sampled (query, document) pair from one sorted-key lookup.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from search_adaptor.losses import prediction_loss, ranking_objective, recovery_loss
from search_adaptor.metrics import RelevanceIndex, evaluate_topk
from search_adaptor.model import QueryPredictor, SearchAdaptor, l2_normalize
from search_adaptor.retrieval import exact_search

MAX_POSITIVES = 32  # relevant documents used per query and step (sampled when a query has more)
MAX_NEGATIVES = 64  # negatives per query and step
VAL_METRIC = "ndcg@10"


class _Grades:
    """Grade of any (query row, document column) pair; 0 when unjudged."""

    def __init__(self, q_rows: np.ndarray, d_cols: np.ndarray, grades: np.ndarray, n_docs: int) -> None:
        keys = q_rows.astype(np.int64) * n_docs + d_cols.astype(np.int64)
        order = np.argsort(keys)
        self.keys, self.grades, self.n_docs = keys[order], grades[order].astype(np.float32), n_docs

    def __call__(self, q_rows: np.ndarray, d_cols: np.ndarray) -> np.ndarray:
        keys = q_rows.astype(np.int64)[:, None] * self.n_docs + d_cols.astype(np.int64)
        if len(self.keys) == 0:
            return np.zeros(keys.shape, dtype=np.float32)
        pos = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, self.grades[pos], 0.0).astype(np.float32)


@dataclass
class _TrainSet:
    """Training queries as rows of Q with their relevant documents in CSR form."""

    q_rows: np.ndarray  # (n,)
    ptr: np.ndarray  # (n + 1,)
    docs: np.ndarray  # positives' columns
    grades: np.ndarray  # positives' grades (> 0)


def _as_matrix(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array of embeddings, got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{what}: row {int(np.argmax(bad))} contains NaN or inf ({int(bad.sum())} rows in all); "
            "re-embed those texts or drop them"
        )
    return arr


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
        est: SearchAdaptor,
        ts: _TrainSet,
        grades: _Grades,
        hard: np.ndarray | None,
        n_docs: int,
        rng: np.random.Generator,
    ) -> None:
        self.est, self.ts, self.grades, self.hard, self.n_docs, self.rng = est, ts, grades, hard, n_docs, rng
        self.counts = np.diff(ts.ptr)
        self._order = np.empty(0, dtype=np.int64)

    def _next_queries(self, b: int) -> np.ndarray:
        if len(self._order) < b:
            self._order = np.concatenate([self._order, self.rng.permutation(len(self.ts.q_rows))])
        out, self._order = self._order[:b], self._order[b:]
        return out

    def batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Returns (train positions, candidate columns (B, C), grades (B, C), valid (B, C), P)."""
        b = min(self.est.batch_size, len(self.ts.q_rows))
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
        n_neg = min(self.est.n_negatives * p, MAX_NEGATIVES)
        neg = self._negatives(qi, n_neg)
        neg_valid = np.arange(n_neg)[None, :] < self.est.n_negatives * np.minimum(counts, p)[:, None]
        neg = np.where(neg_valid, neg, pos_docs[:, :1])
        cand = np.concatenate([pos_docs, neg], axis=1)
        valid = np.concatenate([pos_valid, neg_valid], axis=1)
        labels = self.grades(self.ts.q_rows[qi], cand) * valid
        return qi, cand, labels, valid, p

    def _negatives(self, qi: np.ndarray, n: int) -> np.ndarray:
        kind = self.est.negatives
        n_hard = n if kind == "hard" else (n // 2 if kind == "mixed" else 0)
        parts = [self.rng.integers(0, self.n_docs, size=(len(qi), n - n_hard))]
        if n_hard:
            assert self.hard is not None
            cols = self.rng.integers(0, self.hard.shape[1], size=(len(qi), n_hard))
            parts.append(np.take_along_axis(self.hard[qi], cols, axis=1))
        return np.concatenate(parts, axis=1)


def _mine_hard(
    est: SearchAdaptor, Qn: np.ndarray, Dn: np.ndarray, ts: _TrainSet, grades: _Grades
) -> np.ndarray:
    """Top ``hard_pool`` zero-shot documents per training query, labelled positives replaced by others."""
    depth = min(est.hard_pool + MAX_POSITIVES, Dn.shape[0])
    idx, _ = exact_search(Qn[ts.q_rows], Dn, depth)
    is_pos = grades(ts.q_rows, idx) > 0
    # push positives to the back, keep the first hard_pool of what remains
    order = np.argsort(is_pos, axis=1, kind="stable")
    ranked = np.take_along_axis(idx, order, axis=1)[:, : min(est.hard_pool, depth)]
    return ranked


def _val_score(
    est: SearchAdaptor, Qv: np.ndarray, Dn: np.ndarray, doc_cache: np.ndarray | None, rel: RelevanceIndex
) -> tuple[float, np.ndarray | None]:
    """Full-corpus nDCG@10 of the current adapter on the validation queries."""
    with torch.inference_mode():
        est.query_net_.eval()
        qa = est.query_net_(torch.from_numpy(Qv)).numpy()
        if est.corpus_net_ is None:
            docs = doc_cache if doc_cache is not None else Dn
        else:
            est.corpus_net_.eval()
            docs = np.concatenate(
                [
                    est.corpus_net_(torch.from_numpy(Dn[i : i + 65536])).numpy()
                    for i in range(0, len(Dn), 65536)
                ]
            )
            docs = l2_normalize(docs)
    est.query_net_.train()
    if est.corpus_net_ is not None:
        est.corpus_net_.train()
    top, _ = exact_search(l2_normalize(qa), docs, 10)
    return float(evaluate_topk(top, rel, [VAL_METRIC])[VAL_METRIC]), (
        docs if est.corpus_net_ is None else None
    )


def train(
    est: SearchAdaptor,
    query_embeddings: Any,
    corpus_embeddings: Any,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str] | None,
    corpus_ids: Sequence[str] | None,
    val_query_ids: Sequence[str] | None,
) -> None:
    """Fit ``est`` in place (see :meth:`SearchAdaptor.fit` for the contract)."""
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
    rng = np.random.default_rng(est.seed)
    if val_query_ids is None:
        if len(labelled) < 2:
            raise ValueError(f"need at least 2 labelled queries to train and validate; got {len(labelled)}")
        n_val = min(max(1, round(est.val_fraction * len(labelled))), len(labelled) - 1)
        perm = rng.permutation(len(labelled))
        val = sorted(labelled[i] for i in perm[:n_val])
    else:
        val = sorted({str(q) for q in val_query_ids})
        missing = [q for q in val if q not in judged]
        if missing:
            raise ValueError(
                f"validation query {missing[0]!r} has no qrels; give labelled validation queries"
            )
    val_set = set(val)
    train_q = [q for q in labelled if q not in val_set]
    if not train_q:
        raise ValueError("no labelled training queries left after carving out the validation split")

    torch.manual_seed(est.seed)
    Qn, Dn = l2_normalize(Q), l2_normalize(D)
    n_docs, dim = Dn.shape
    ts = _csr(train_q, judged, qid_to_row)
    all_rows = np.asarray([qid_to_row[q] for q, pairs in judged.items() for _ in pairs], dtype=np.int64)
    all_cols = np.asarray([d for pairs in judged.values() for d, _ in pairs], dtype=np.int64)
    all_grades = np.asarray([g for pairs in judged.values() for _, g in pairs], dtype=np.float32)
    grades = _Grades(all_rows, all_cols, all_grades, n_docs)
    rel = RelevanceIndex({q: qrels[q] for q in val}, val, dids)
    Qv = Qn[[qid_to_row[q] for q in val]]

    est._build_nets(dim)
    nets = [est.query_net_] + ([est.corpus_net_] if est.mode == "separate" else [])
    params = [p for net in nets for p in net.parameters()]
    predictor = QueryPredictor(dim, int(est.hidden_dim or dim)) if est.beta > 0 else None
    if predictor is not None:
        params += list(predictor.parameters())
    opt = torch.optim.Adam(params, lr=est.lr)

    hard = _mine_hard(est, Qn, Dn, ts, grades) if est.negatives in ("hard", "mixed") else None
    sampler = _Sampler(est, ts, grades, hard, n_docs, rng)
    full_corpus = est.mode == "query_only" and est.in_batch and n_docs <= est.full_corpus_max
    Dn_t = torch.from_numpy(Dn)
    Qn_t = torch.from_numpy(Qn)
    grades_dense = None
    if full_corpus:  # exhaustive negatives: grades of every training query against every document
        grades_dense = np.zeros((len(ts.q_rows), n_docs), dtype=np.float32)
        owner = np.repeat(np.arange(len(ts.q_rows)), np.diff(ts.ptr))
        grades_dense[owner, ts.docs] = ts.grades

    zero_shot, doc_cache = _val_score(est, Qv, Dn, None, rel)
    best = {"score": zero_shot, "step": 0, "state": None}
    history: list[dict[str, float]] = [{"step": 0, VAL_METRIC: zero_shot, "loss": float("nan")}]
    last_improvement, running, step = 0, 0.0, 0
    for step in range(1, est.max_steps + 1):
        qi, cand, labels, valid, p = sampler.batch()
        q_in = Qn_t[ts.q_rows[qi]]
        qa_raw = est.query_net_(q_in)
        qa = torch.nn.functional.normalize(qa_raw, dim=-1)
        rec_terms = [recovery_loss(qa_raw, q_in)] if est.alpha > 0 else []
        uniq, inv = np.unique(cand, return_inverse=True)
        inv = inv.reshape(cand.shape)
        d_in = Dn_t[uniq]
        if est.corpus_net_ is None:
            da_raw = d_in
        else:
            da_raw = est.corpus_net_(d_in)
            if est.alpha > 0:
                rec_terms.append(recovery_loss(da_raw, d_in))
        da = torch.nn.functional.normalize(da_raw, dim=-1)
        if grades_dense is not None:
            scores = qa @ Dn_t.T
            lab = torch.from_numpy(grades_dense[qi])
            main = ranking_objective(
                est.loss,
                scores,
                lab,
                torch.ones_like(lab, dtype=torch.bool),
                est.temperature,
                est.pair_reduction,
            )
        elif est.in_batch and est.loss in ("infonce", "softmax"):
            scores = qa @ da.T
            lab = torch.from_numpy(grades(ts.q_rows[qi], uniq))
            main = ranking_objective(
                est.loss,
                scores,
                lab,
                torch.ones_like(lab, dtype=torch.bool),
                est.temperature,
                est.pair_reduction,
            )
        else:
            inv_t = torch.from_numpy(inv)
            scores = (qa.unsqueeze(1) * da[inv_t]).sum(-1)
            main = ranking_objective(
                est.loss,
                scores,
                torch.from_numpy(labels),
                torch.from_numpy(valid),
                est.temperature,
                est.pair_reduction,
            )
        loss = main
        if rec_terms:  # the paper's alpha * (rec_q + rec_d); query-only adapters have rec_q alone
            loss = loss + est.alpha * sum(rec_terms)
        if predictor is not None:
            pos_adapted = da[torch.from_numpy(inv[:, :p])]  # (B, P, dim) adapted relevant documents
            loss = loss + est.beta * prediction_loss(
                qa, predictor(pos_adapted), torch.from_numpy(labels[:, :p])
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        if step % est.eval_every == 0 or step == est.max_steps:
            score, doc_cache = _val_score(est, Qv, Dn, doc_cache, rel)
            history.append({"step": step, VAL_METRIC: score, "loss": running / est.eval_every})
            running = 0.0
            if score > best["score"] + 1e-9:
                best = {"score": score, "step": step, "state": [copy.deepcopy(n.state_dict()) for n in nets]}
                last_improvement = step
            elif step - last_improvement >= est.patience:
                break
    if best["state"] is not None:
        for net, state in zip(nets, best["state"], strict=False):
            net.load_state_dict(state)
    for net in nets:
        net.eval()
    est.history_ = history
    est.best_step_ = int(best["step"])
    est.best_score_ = float(best["score"])
    est.zero_shot_score_ = float(zero_shot)
    est.n_steps_ = step
    est.n_train_queries_ = len(train_q)
    est.n_val_queries_ = len(val)
    est.val_query_ids_ = val
    if not hasattr(est, "encoder_"):
        est.encoder_ = {}


# -- families and selection ------------------------------------------------------------------------

PAPER_GRID = [(a, b) for a in (0.0, 0.1, 1.0) for b in (0.0, 0.01, 0.1)]
#: A finer log grid of alpha at the paper's default beta. The alpha that works depends on the pairs
#: per query (the ranking loss sums over them): about 0.1 at SciFact's ~15 pairs per query.
ALPHA_GRID = (0.02, 0.05, 0.1, 0.2, 0.5)


def _paper(alpha: float, beta: float) -> dict[str, Any]:
    return {
        "mode": "shared",
        "loss": "ranking",
        "pair_reduction": "sum",
        "negatives": "random",
        "alpha": alpha,
        "beta": beta,
    }


def _infonce(mode: str, architecture: str = "mlp") -> dict[str, Any]:
    # The recovery term is alpha * (rec_q + rec_d): a shared adapter has both terms, a query-only
    # one only rec_q, so alpha 0.05 (shared) and 0.1 (query-only) put the same weight on each vector.
    return {
        "architecture": architecture,
        "mode": mode,
        "loss": "infonce",
        "in_batch": True,
        "negatives": "hard",
        "alpha": 0.05 if mode == "shared" else 0.1,
        "beta": 0.0,
    }


#: Named variants: {family: [(variant name, SearchAdaptor parameters), ...]}.
FAMILIES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "paper": [(f"paper(alpha={a:g},beta={b:g})", _paper(a, b)) for a, b in PAPER_GRID],
    "paper-default": [("paper(alpha=0.1,beta=0.01)", _paper(0.1, 0.01))],
    "paper-alpha": [(f"paper(alpha={a:g},beta=0.01)", _paper(a, 0.01)) for a in ALPHA_GRID],
    "query-only": [("query-only-infonce", _infonce("query_only"))],
    "query-only-ranking": [("query-only-ranking", {**_paper(0.1, 0.01), "mode": "query_only"})],
    "linear": [("linear-query-only-infonce", _infonce("query_only", "linear"))],
    "shared-infonce": [("shared-infonce", _infonce("shared"))],
    # Plain contrastive variants: random negatives, no recovery term. The linear one is what
    # LlamaIndex ships (in-batch InfoNCE at temperature 0.05, one random document per positive).
    # They win where hard negatives mislead (incomplete qrels) or the recovery term holds a weak
    # base space too close to where it started (XQuAD-R de, es, ru in BENCHMARKS.md).
    "linear-random": [
        (
            "linear-query-only-random",
            {
                "architecture": "linear",
                "mode": "query_only",
                "loss": "infonce",
                "in_batch": True,
                "full_corpus_max": 0,
                "negatives": "random",
                "n_negatives": 1,
                "alpha": 0.0,
                "beta": 0.0,
            },
        )
    ],
    "shared-random": [
        (
            "shared-infonce-random",
            {
                "mode": "shared",
                "loss": "infonce",
                "in_batch": True,
                "negatives": "random",
                "alpha": 0.0,
                "beta": 0.0,
            },
        )
    ],
}
#: What ``family="auto"`` trains, simplest first (ties go to the earlier one). The paper's own
#: recipe is not in it: on SciFact it scored lower on validation at 3-10x the cost (BENCHMARKS.md);
#: ``family="paper"`` runs it with the paper's alpha/beta grid.
AUTO = ("linear-random", "query-only", "linear", "shared-random", "shared-infonce")


def family_variants(family: str) -> list[tuple[str, dict[str, Any]]]:
    """Variants a family trains; ``"auto"`` is the union of :data:`AUTO`."""
    if family == "auto":
        return [v for fam in AUTO for v in FAMILIES[fam]]
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose auto or one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


@dataclass
class Selection:
    """Outcome of training several variants on one validation split and keeping the best.

    ``histories`` maps each candidate's variant name to its ``SearchAdaptor.history_`` (validation
    nDCG@10 per evaluation step), in training order, for learning curves.
    """

    adapter: SearchAdaptor
    selected: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    val_query_ids: list[str] = field(default_factory=list)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def select(
    family: str,
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    corpus_ids: Sequence[str],
    seed: int = 0,
    val_fraction: float = 0.2,
    overrides: Mapping[str, Any] | None = None,
    on_candidate: Callable[[dict[str, Any]], None] | None = None,
) -> Selection:
    """Train every variant of ``family`` on the same split; keep the best by validation nDCG@10.

    The identity (zero-shot) takes part: if no variant beats it, the identity is selected and
    ``selected`` says so. Ties go to the earlier (simpler) candidate.
    """
    best: SearchAdaptor | None = None
    best_name = "identity (zero-shot)"
    rows: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, float]]] = {}
    for name, params in family_variants(family):
        est = SearchAdaptor(seed=seed, val_fraction=val_fraction, **params, **dict(overrides or {}))
        t0 = time.perf_counter()
        # every candidate draws the same split from the same seed, and is then exactly the model a
        # standalone fit with its parameters and seed gives, random stream included
        est.fit(query_embeddings, corpus_embeddings, qrels, query_ids, corpus_ids)
        row = {
            "variant": name,
            "val_ndcg@10": est.best_score_,
            "zero_shot_val_ndcg@10": est.zero_shot_score_,
            "best_step": est.best_step_,
            "n_steps": est.n_steps_,
            "train_s": round(time.perf_counter() - t0, 2),
        }
        rows.append(row)
        histories[name] = est.history_
        if on_candidate is not None:
            on_candidate(row)
        # the first candidate doubles as the identity fallback: at best_step 0 it changes nothing
        if best is None or (
            est.best_step_ > 0 and (best.best_step_ == 0 or est.best_score_ > best.best_score_ + 1e-9)
        ):
            best, best_name = est, name
    assert best is not None
    if best.best_step_ == 0:
        best_name = "identity (zero-shot)"
    return Selection(
        adapter=best,
        selected=best_name,
        candidates=rows,
        val_query_ids=best.val_query_ids_,
        histories=histories,
    )
