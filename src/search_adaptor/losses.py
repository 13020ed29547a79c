"""Training objectives of Search-Adaptor and the alternatives it is compared with.

Every ranking loss takes the same three tensors, so they are interchangeable in the training loop:

- ``scores`` of shape (B, C): cosine similarity of each query to each of its C candidates;
- ``labels`` of shape (B, C): relevance grade of each candidate (0 = not relevant);
- ``valid`` of shape (B, C): False where the candidate slot is padding.

Normalisation (alpha and beta mean something only once it is fixed). Every loss is a mean over the
queries of the batch that have something to learn from, so no weight depends on the batch size.
Within a query:

- the paper's pairwise ranking loss is the SUM over that query's ordered pairs, as the paper writes
  its objective. Its scale against the recovery and prediction terms therefore grows with the pairs
  per query (about 15 on SciFact), which is what the paper's alpha grid {0, 0.1, 1} was chosen for;
  dividing by the pair count instead weakens it about 7x and moves the working alpha outside that
  grid (SciFact: 0.678 instead of 0.762 nDCG@10). ``reduction="mean"`` keeps that variant for the
  ablation table;
- the softmax-type and point-wise losses are a per-query mean over their terms (positives or
  candidates): they have no pairs, and the paper does not use them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RANKING_LOSSES = ("ranking", "ranknet", "infonce", "softmax", "pointwise")
#: Every training objective: the ranking losses on labelled pairs, and two that need no labels:
#: ``"similarity"`` (each prefix ranks documents as the base embedding does; ``training._Similarity``) and
#: ``"alignment"`` (texts embedded by two models land together; ``training._Alignment``).
UNLABELLED_LOSSES = ("similarity", "alignment")
LOSSES = (*RANKING_LOSSES, *UNLABELLED_LOSSES)


def _masked_mean_per_query(terms: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over queries (with weight > 0) of sum(terms*weight)/sum(weight) along all but dim 0."""
    dims = tuple(range(1, terms.dim()))
    w_sum = weight.sum(dim=dims)
    per_query = (terms * weight).sum(dim=dims) / w_sum.clamp_min(1e-12)
    has = w_sum > 0
    if not bool(has.any()):
        return terms.sum() * 0.0
    return per_query[has].mean()


PAIR_REDUCTIONS = ("sum", "mean")


def pairwise_ranking_loss(
    scores: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    weighted: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """Search-Adaptor's ranking loss: ``(y_ij - y_ik) * log(1 + exp(s_ik - s_ij))`` for y_ij > y_ik.

    Graded relevance matters: a grade-2 document must outrank a grade-1 one, not only the negatives.
    With ``weighted=False`` every ordered pair weighs 1, which is RankNet (the paper's ablation).
    Per query, ``reduction="sum"`` (the paper) sums over its ordered pairs; ``"mean"`` divides that
    sum by the query's pair count (each pair counted once, whatever its weight). Then the mean over
    the queries that have at least one pair.
    """
    if reduction not in PAIR_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(PAIR_REDUCTIONS)}; got {reduction!r}")
    diff_y = labels.unsqueeze(2) - labels.unsqueeze(1)  # (B, C, C): y_ij - y_ik
    pair = (diff_y > 0) & valid.unsqueeze(2) & valid.unsqueeze(1)
    terms = F.softplus(scores.unsqueeze(1) - scores.unsqueeze(2))  # log(1 + exp(s_ik - s_ij))
    w = diff_y.clamp_min(0) if weighted else torch.ones_like(diff_y)
    w = w * pair
    n_pairs = pair.sum(dim=(1, 2)).to(scores.dtype)
    has = n_pairs > 0
    if not bool(has.any()):
        return scores.sum() * 0.0
    per_query = (terms * w).sum(dim=(1, 2))
    if reduction == "mean":
        per_query = per_query / n_pairs.clamp_min(1)
    return per_query[has].mean()


def infonce_loss(
    scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """Contrastive loss: each relevant candidate against all the query's non-relevant ones.

    ``-log(exp(s_ij/t) / (exp(s_ij/t) + sum_k exp(s_ik/t)))`` for every j with y_ij > 0 and k over
    candidates with y_ik == 0; other relevant documents are not negatives. Mean over positives.
    Use :func:`softmax_loss` for a single listwise target per query instead.
    """
    logits = scores / temperature
    neg = valid & (labels <= 0)
    pos = valid & (labels > 0)
    neg_lse = torch.logsumexp(logits.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
    terms = torch.logaddexp(logits, neg_lse) - logits  # -log softmax of j among {j} + negatives
    return _masked_mean_per_query(terms, pos.to(scores.dtype))


def softmax_loss(
    scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """Listwise softmax cross-entropy against the grade-proportional target distribution."""
    logits = (scores / temperature).masked_fill(~valid, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1).masked_fill(~valid, 0.0)
    target = (labels.clamp_min(0) * valid).to(scores.dtype)
    return _masked_mean_per_query(-log_p, target)


def pointwise_loss(
    scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """Point-wise sigmoid cross-entropy on relevant-or-not, with a learned-free logit scale 1/t."""
    target = (labels > 0).to(scores.dtype)
    terms = F.binary_cross_entropy_with_logits(scores / temperature, target, reduction="none")
    return _masked_mean_per_query(terms, valid.to(scores.dtype))


def ranking_objective(
    name: str,
    scores: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    pair_reduction: str = "sum",
) -> torch.Tensor:
    """Dispatch on the loss name (one of :data:`RANKING_LOSSES`); ``pair_reduction`` applies to the
    pairwise losses ("ranking", "ranknet") only."""
    if name == "ranking":
        return pairwise_ranking_loss(scores, labels, valid, weighted=True, reduction=pair_reduction)
    if name == "ranknet":
        return pairwise_ranking_loss(scores, labels, valid, weighted=False, reduction=pair_reduction)
    if name == "infonce":
        return infonce_loss(scores, labels, valid, temperature)
    if name == "softmax":
        return softmax_loss(scores, labels, valid, temperature)
    if name == "pointwise":
        return pointwise_loss(scores, labels, valid, temperature)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(RANKING_LOSSES)}")


def recovery_loss(adapted: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """L1 distance to the pre-trained embedding (sum over dimensions, mean over vectors).

    With the skip connection this is an L1 penalty on the residual ``f(e)``: it keeps the adapter
    close to what the base model knew, which matters most with few labels.
    """
    if adapted.numel() == 0:
        return adapted.sum() * 0.0
    return (adapted - original).abs().sum(dim=-1).mean()


def prediction_loss(
    adapted_queries: torch.Tensor, predicted_queries: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Query-predictor loss: ``sum_j y_ij |a(q_i) - p(a(c_j))|_1 / sum_j y_ij``, mean over queries.

    Parameters
    ----------
    adapted_queries : tensor of shape (B, dim)
    predicted_queries : tensor of shape (B, C, dim)
        The training-only predictor applied to each adapted candidate.
    labels : tensor of shape (B, C)
        Grades (non-positive ones, padding included, weigh nothing).
    """
    dist = (adapted_queries.unsqueeze(1) - predicted_queries).abs().sum(dim=-1)  # (B, C)
    return _masked_mean_per_query(dist, labels.clamp_min(0).to(dist.dtype))
