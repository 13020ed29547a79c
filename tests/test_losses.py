"""Each loss against values computed by hand on tiny inputs."""

import math

import pytest
import torch

from search_adaptor.losses import (
    infonce_loss,
    pairwise_ranking_loss,
    pointwise_loss,
    prediction_loss,
    ranking_objective,
    recovery_loss,
    softmax_loss,
)


def sp(x: float) -> float:
    """softplus = log(1 + exp(x))"""
    return math.log1p(math.exp(x))


# one query, three candidates: grades 2, 1, 0 with scores 0.5, 0.2, 0.4
S = torch.tensor([[0.5, 0.2, 0.4]])
Y = torch.tensor([[2.0, 1.0, 0.0]])
V = torch.tensor([[True, True, True]])


def test_ranking_loss_is_relevance_weighted_pairwise_logistic_summed_over_pairs():
    # ordered pairs with y_j > y_k: (0,1) w=1, (0,2) w=2, (1,2) w=1; the paper sums over them
    expected = 1 * sp(0.2 - 0.5) + 2 * sp(0.4 - 0.5) + 1 * sp(0.4 - 0.2)
    assert pairwise_ranking_loss(S, Y, V).item() == pytest.approx(expected, rel=1e-6)
    assert ranking_objective("ranking", S, Y, V, 0.05).item() == pytest.approx(expected, rel=1e-6)


def test_ranking_loss_mean_reduction_divides_by_the_pair_count():
    expected = (1 * sp(0.2 - 0.5) + 2 * sp(0.4 - 0.5) + 1 * sp(0.4 - 0.2)) / 3
    assert pairwise_ranking_loss(S, Y, V, reduction="mean").item() == pytest.approx(expected, rel=1e-6)
    got = ranking_objective("ranking", S, Y, V, 0.05, pair_reduction="mean").item()
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of sum, mean"):
        pairwise_ranking_loss(S, Y, V, reduction="max")


def test_ranking_loss_is_a_mean_over_queries_of_per_query_sums():
    # query 1 has 3 pairs (the case above), query 2 has 2 pairs (grade 1 over two negatives):
    # the batch value is the plain mean of the two per-query sums, whatever the batch size
    scores = torch.tensor([[0.5, 0.2, 0.4], [0.3, 0.1, 0.6]])
    labels = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    valid = torch.ones_like(labels, dtype=torch.bool)
    q1 = 1 * sp(0.2 - 0.5) + 2 * sp(0.4 - 0.5) + 1 * sp(0.4 - 0.2)
    q2 = sp(0.1 - 0.3) + sp(0.6 - 0.3)
    assert pairwise_ranking_loss(scores, labels, valid).item() == pytest.approx((q1 + q2) / 2, rel=1e-6)
    doubled = pairwise_ranking_loss(scores.repeat(2, 1), labels.repeat(2, 1), valid.repeat(2, 1))
    assert doubled.item() == pytest.approx((q1 + q2) / 2, rel=1e-6)


def test_ranknet_weighs_every_pair_one():
    expected = sp(0.2 - 0.5) + sp(0.4 - 0.5) + sp(0.4 - 0.2)
    assert pairwise_ranking_loss(S, Y, V, weighted=False).item() == pytest.approx(expected, rel=1e-6)


def test_ranking_loss_ignores_padding_and_queries_without_pairs():
    scores = torch.tensor([[0.5, 0.2, 9.0], [0.1, 0.3, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # second query: nothing to learn
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert pairwise_ranking_loss(scores, labels, valid).item() == pytest.approx(sp(0.2 - 0.5), rel=1e-6)


def test_infonce_treats_other_positives_as_non_negatives():
    t = 0.5
    # positives j=0 (s .5) and j=1 (s .2); the only negative is k=2 (s .4)
    l0 = -math.log(math.exp(0.5 / t) / (math.exp(0.5 / t) + math.exp(0.4 / t)))
    l1 = -math.log(math.exp(0.2 / t) / (math.exp(0.2 / t) + math.exp(0.4 / t)))
    assert infonce_loss(S, Y, V, temperature=t).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_softmax_loss_targets_grade_proportional_distribution():
    t = 0.5
    z = [math.exp(s / t) for s in (0.5, 0.2, 0.4)]
    logp = [math.log(x / sum(z)) for x in z]
    expected = -(2 * logp[0] + 1 * logp[1]) / 3
    assert softmax_loss(S, Y, V, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_pointwise_loss_is_binary_cross_entropy():
    t = 0.5
    sig = [1 / (1 + math.exp(-s / t)) for s in (0.5, 0.2, 0.4)]
    expected = -(math.log(sig[0]) + math.log(sig[1]) + math.log(1 - sig[2])) / 3
    assert pointwise_loss(S, Y, V, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_recovery_is_l1_sum_over_dims_mean_over_vectors():
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    e = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert recovery_loss(a, e).item() == pytest.approx((3 + 2) / 2)


def test_prediction_loss_weights_by_grade():
    q = torch.tensor([[1.0, 0.0]])
    pred = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])  # L1 distances 1, 1, 9
    labels = torch.tensor([[2.0, 1.0, 0.0]])
    assert prediction_loss(q, pred, labels).item() == pytest.approx((2 * 1 + 1 * 1) / 3)


def test_losses_have_gradients_and_unknown_name_fails():
    s = S.clone().requires_grad_(True)
    for name in ("ranking", "ranknet", "infonce", "softmax", "pointwise"):
        loss = ranking_objective(name, s, Y, V, 0.05)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
    with pytest.raises(ValueError, match="unknown loss"):
        ranking_objective("hinge", S, Y, V, 0.05)
