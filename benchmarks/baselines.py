"""Baselines the benchmark suite compares Search-Adaptor with, beyond the library's own variants.

- Closed-form linear maps fitted on (query -> relevant document) pairs of the training queries:
  orthogonal Procrustes (a rotation) and a ridge least-squares map shrunk towards the identity.
  Both map queries only, so the corpus index stays as it is.
- The linear query-only adapter LlamaIndex ships (``EmbeddingAdapterFinetuneEngine``): one linear
  map on queries, trained with an in-batch contrastive loss, expressed as SearchAdaptor parameters.
- Full fine-tuning of the base sentence-transformers model with MultipleNegativesRankingLoss: what
  a team with the model's weights would try instead (the issue expected it to be an upper bound).

Every baseline validates on the same split the adapters use (:func:`validation_split`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from search_adaptor.data import labelled_queries
from search_adaptor.data import validation_split as split_queries
from search_adaptor.embed import Embeddings
from search_adaptor.experiment import evaluate_embeddings
from search_adaptor.retrieval import l2_normalize
from search_adaptor.variants import FAMILIES, VAL_FRACTION

#: LlamaIndex's linear adapter: a query-only linear map (identity at start), in-batch contrastive
#: loss with scale 20 (temperature 0.05), no regulariser, no full-corpus softmax. SearchAdaptor
#: always adds at least one random document per positive to the batch's pool of candidates.
LLAMAINDEX_LINEAR: dict[str, Any] = dict(FAMILIES["linear-random"][0][1])
#: Ridge strengths tried for the least-squares map; infinity is the identity (zero-shot).
RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
VAL_METRIC = "ndcg@10"


def validation_split(
    qrels: Mapping[str, Mapping[str, int]], seed: int, val_fraction: float = VAL_FRACTION
) -> tuple[list[str], list[str]]:
    """(train, validation) query ids as ``SearchAdaptor.fit`` draws them from ``seed``: the library's
    one rule (:func:`search_adaptor.data.validation_split`), so baselines that are not SearchAdaptor
    variants early-stop on the same queries as the adapters."""
    return split_queries(labelled_queries(qrels), val_fraction, np.random.default_rng(seed))


@dataclass
class QueryMap:
    """A fixed linear map of unit query vectors, ``q -> normalize(normalize(q) @ W)``; documents unchanged.

    Duck-types the two methods :func:`search_adaptor.experiment.evaluate_embeddings` calls.
    """

    W: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)  # how it was chosen, for the report

    def transform_queries(self, X: np.ndarray) -> np.ndarray:
        """Mapped, unit-norm query vectors."""
        return l2_normalize(l2_normalize(np.asarray(X, dtype=np.float32)) @ self.W.astype(np.float32))

    def transform_corpus(self, X: np.ndarray) -> np.ndarray:
        """Unit-norm document vectors (not mapped: no re-index)."""
        return l2_normalize(np.asarray(X, dtype=np.float32))


def procrustes(Q: np.ndarray, D: np.ndarray) -> np.ndarray:
    """The rotation ``W`` minimising ``||Q W - D||_F`` over orthogonal matrices (Schönemann, 1966).

    With ``Q^T D = U S V^T``, ``W = U V^T``. Rows of ``Q`` and ``D`` are paired vectors.
    """
    U, _, Vt = np.linalg.svd(Q.T.astype(np.float64) @ D.astype(np.float64))
    return U @ Vt


def ridge_map(Q: np.ndarray, D: np.ndarray, ridge: float) -> np.ndarray:
    """``argmin_W ||Q W - D||_F^2 + ridge ||W - I||_F^2``; ``ridge = 0`` is plain least squares.

    Closed form ``W = (Q^T Q + ridge I)^-1 (Q^T D + ridge I)``; shrinking towards the identity
    (rather than zero) keeps a weakly regularised map close to zero-shot.
    """
    Q64, D64 = Q.astype(np.float64), D.astype(np.float64)
    if ridge == 0:
        return np.linalg.lstsq(Q64, D64, rcond=None)[0]
    eye = np.eye(Q.shape[1])
    return np.linalg.solve(Q64.T @ Q64 + ridge * eye, Q64.T @ D64 + ridge * eye)


def positive_pairs(
    emb: Embeddings, qrels: Mapping[str, Mapping[str, int]], query_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of every (query, relevant document) pair of ``query_ids``, as two aligned matrices."""
    qrow = {q: i for i, q in enumerate(emb.query_ids)}
    drow = {d: i for i, d in enumerate(emb.doc_ids)}
    pairs = [(qrow[q], drow[d]) for q in query_ids for d, g in qrels[q].items() if g > 0]
    qi, di = np.asarray(pairs, dtype=np.int64).T
    return l2_normalize(emb.queries[qi]), l2_normalize(emb.corpus[di])


def fit_procrustes(emb: Embeddings, qrels: Mapping[str, Mapping[str, int]]) -> QueryMap:
    """Orthogonal Procrustes on every labelled training query (no hyperparameter, so no validation)."""
    return QueryMap(procrustes(*positive_pairs(emb, qrels, labelled_queries(qrels))))


def fit_least_squares(emb: Embeddings, qrels: Mapping[str, Mapping[str, int]], seed: int) -> QueryMap:
    """Ridge least-squares map; the ridge (or the identity) is chosen on the adapters' validation split.

    The chosen ridge is refitted on all training queries, as a closed form has no early stopping
    that would need the held-out queries.
    """
    train, val = validation_split(qrels, seed)
    val_qrels = {q: qrels[q] for q in val}
    Qt, Dt = positive_pairs(emb, qrels, train)
    scores = {"identity": evaluate_embeddings(emb, val_qrels, metrics=[VAL_METRIC])[0][VAL_METRIC]}
    for ridge in RIDGE_GRID:
        candidate = QueryMap(ridge_map(Qt, Dt, ridge))
        scores[f"ridge={ridge:g}"] = evaluate_embeddings(emb, val_qrels, candidate, metrics=[VAL_METRIC])[0][
            VAL_METRIC
        ]
    best = max(scores, key=lambda k: scores[k] + (1e-9 if k == "identity" else 0.0))
    info = {"selected": best, "val_ndcg@10": scores[best], "zero_shot_val_ndcg@10": scores["identity"]}
    if best == "identity":
        return QueryMap(np.eye(emb.dim), info)
    ridge = float(best.split("=")[1])
    W = ridge_map(*positive_pairs(emb, qrels, labelled_queries(qrels)), ridge)
    return QueryMap(W, info)


# -- full fine-tuning ---------------------------------------------------------------------------------


@dataclass
class FineTuneResult:
    """A fine-tuned (or, when no epoch beat zero-shot on validation, the original) model.

    ``doc_vectors`` is the corpus as the kept model embedded it for its last validation, so the
    held-out evaluation only has to embed the test queries (:meth:`embed_queries`).
    """

    model: Any  # sentence_transformers.SentenceTransformer
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    zero_shot_score: float
    #: zero-shot validation score on the stored float32 embeddings: how much ``autocast`` moves it
    zero_shot_store_score: float
    train_s: float
    doc_vectors: np.ndarray
    autocast: str | None

    def embed_queries(
        self, emb: Embeddings, query_texts: Mapping[str, str], query_ids: Sequence[str]
    ) -> Embeddings:
        """``query_ids`` embedded by the kept model, against the kept model's corpus vectors."""
        return _query_embeddings(self.model, self.autocast, emb, query_texts, query_ids, self.doc_vectors)


def _query_embeddings(
    model: Any,
    autocast: str | None,
    emb: Embeddings,
    query_texts: Mapping[str, str],
    query_ids: Sequence[str],
    doc_vectors: np.ndarray,
) -> Embeddings:
    """``query_ids`` embedded by ``model`` now, against ``doc_vectors`` from the same model."""
    qids = list(query_ids)
    with _precision(autocast):
        Q = _embed_with(model, [query_texts[q] for q in qids])
    return Embeddings(qids, Q, list(emb.doc_ids), doc_vectors, emb.encoder)


def _precision(autocast: str | None) -> Any:
    """A context that runs the model in ``autocast`` precision on CPU (None: float32)."""
    import contextlib

    import torch

    if autocast is None:
        return contextlib.nullcontext()
    if autocast != "bf16":
        raise ValueError(f"autocast={autocast!r}: use None (float32) or 'bf16'")
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _embed_with(model: Any, texts: Sequence[str]) -> np.ndarray:
    return model.encode(
        list(texts),
        batch_size=64,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    ).astype(np.float32)


def finetune(
    model_path: str,
    emb: Embeddings,
    query_texts: Mapping[str, str],
    doc_texts: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    seed: int,
    max_epochs: int = 6,
    patience: int = 1,
    batch_size: int = 32,
    lr: float = 5e-5,
    autocast: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> FineTuneResult:
    """Fine-tune the base model with MultipleNegativesRankingLoss on (query, relevant doc) pairs.

    Same training queries and validation split as the adapters (:func:`validation_split` with
    ``seed``); after every epoch the whole corpus is re-embedded and validation nDCG@10 computed;
    training stops after ``patience`` epochs without improvement and the best epoch's weights are
    kept. Epoch 0 (the base model) is a candidate too, as for the adapters. Batches never repeat a
    query or a document, so no in-batch negative is a labelled positive of its own query's pair.
    A plain torch loop (AdamW, linear warm-up over the first 10% of steps) keeps the dependencies
    to sentence-transformers itself. ``autocast="bf16"`` runs forward passes (training and
    embedding) in bfloat16 mixed precision, weights and optimiser state staying float32: on a CPU
    with AMX that makes embedding about 4x and a training step about 1.6x faster.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    loss_fn = MultipleNegativesRankingLoss(model)
    train, val = validation_split(qrels, seed)
    val_qrels = {q: qrels[q] for q in val}
    doc_pos = {d: i for i, d in enumerate(emb.doc_ids)}
    pairs = [(q, doc_pos[d]) for q in train for d, g in qrels[q].items() if g > 0]

    def validate() -> tuple[float, np.ndarray]:
        model.eval()
        with torch.no_grad():
            with _precision(autocast):
                D = _embed_with(model, doc_texts)
            val_emb = _query_embeddings(model, autocast, emb, query_texts, val, D)
        score = evaluate_embeddings(val_emb, val_qrels, metrics=[VAL_METRIC])[0][VAL_METRIC]
        model.train()
        return score, D

    store_score = evaluate_embeddings(emb, val_qrels, metrics=[VAL_METRIC])[0][VAL_METRIC]
    zero_shot, best_docs = validate()
    history = [{"epoch": 0, VAL_METRIC: zero_shot}]
    best_score, best_epoch, best_state = zero_shot, 0, None
    steps_per_epoch = max(1, len(pairs) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    warmup = max(1, int(0.1 * steps_per_epoch * max_epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    for epoch in range(1, max_epochs + 1):
        for batch in _unique_batches(pairs, batch_size, rng):
            q_feat = model.preprocess([query_texts[q] for q, _ in batch])
            d_feat = model.preprocess([doc_texts[d] for _, d in batch])
            with _precision(autocast):
                loss = loss_fn([q_feat, d_feat], None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score, docs = validate()
        history.append({"epoch": epoch, VAL_METRIC: score})
        log(
            f"  full fine-tuning epoch {epoch}: val nDCG@10 {score:.4f} ({time.perf_counter() - start:.0f} s)"
        )
        if score > best_score + 1e-9:
            best_score, best_epoch, best_docs = score, epoch, docs
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if best_state is None:
        model = SentenceTransformer(model_path, device="cpu")
    else:
        model.load_state_dict(best_state)
    model.eval()
    return FineTuneResult(
        model,
        history,
        best_epoch,
        best_score,
        zero_shot,
        store_score,
        time.perf_counter() - start,
        best_docs,
        autocast,
    )


def _unique_batches(
    pairs: Sequence[tuple[str, int]], batch_size: int, rng: np.random.Generator
) -> list[list[tuple[str, int]]]:
    """Shuffled full batches in which no query and no document appears twice (leftovers are dropped)."""
    batches: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    seen_q: set[str] = set()
    seen_d: set[int] = set()
    pending = [pairs[i] for i in rng.permutation(len(pairs))]
    while pending:
        deferred = []
        for q, d in pending:
            if q in seen_q or d in seen_d:
                deferred.append((q, d))
                continue
            current.append((q, d))
            seen_q.add(q)
            seen_d.add(d)
            if len(current) == batch_size:
                batches.append(current)
                current, seen_q, seen_d = [], set(), set()
        if len(deferred) == len(pending):  # only conflicting pairs left: they cannot fill a batch
            break
        pending = deferred
    return batches
