"""Smaller vectors (issue 17): Matryoshka adapters whose every trained prefix is a good embedding.

Trained on the synthetic task of ``conftest.synthetic`` (16-d, prefixes of 4 and 8), scored on held-out
queries against the two baselines of the same size: the base embedding truncated and its PCA
projection. Then the same sizes through save/load, ``run_fit``'s report, the unsupervised
(``loss="similarity"``) fit, and the command line's ``fit --dims``, ``index --dim``, ``transform --dim``
and ``export --dim``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from search_adaptor.cli import main
from search_adaptor.data import load_beir
from search_adaptor.embed import Embeddings, load_precomputed
from search_adaptor.experiment import SizedView, evaluate_embeddings, fit_family, run_evaluate, run_fit
from search_adaptor.model import CompatibilityError, SearchAdaptor
from search_adaptor.report import identity_lines, render_markdown, size_lines
from search_adaptor.retrieval import exact_search, l2_normalize
from search_adaptor.training import nearest_rotation, pca_rotation, score_axes
from search_adaptor.variants import FAMILIES
from test_index import make_adapter

FAST = {"max_steps": 150, "eval_every": 10, "patience": 60, "batch_size": 32}
SUPERVISED = dict(FAMILIES["matryoshka"][0][1])
UNSUPERVISED = dict(FAMILIES["matryoshka-unsupervised"][0][1])
SIZES = (4, 8)
WIDTH = 16  # the synthetic embeddings' dimension
N_TRAIN = 120  # the synthetic queries q0..q119 train; q120..q159 are held out
SYN = {"fingerprint": "precomputed:syn-16", "provider": "precomputed", "model": "syn-16", "config": {}}


def _split(data: dict) -> tuple[dict, dict]:
    qrels, qids = data["qrels"], data["qids"]
    return {q: qrels[q] for q in qids[:N_TRAIN]}, {q: qrels[q] for q in qids[N_TRAIN:]}


def _emb(data: dict) -> Embeddings:
    return Embeddings(data["qids"], data["Q"], data["dids"], data["D"], dict(SYN))


def _ndcg(emb: Embeddings, qrels: dict, view) -> float:
    return evaluate_embeddings(emb, qrels, view, ["ndcg@10"])[0]["ndcg@10"]


def _neighbour_overlap(view, X: np.ndarray, D: np.ndarray) -> float:
    """Share of each row's top-10 documents in the full base space that ``view`` still ranks top-10."""
    base = exact_search(l2_normalize(X), l2_normalize(D), 10)[0]
    top = exact_search(view.transform_queries(X), view.transform_corpus(D), 10)[0]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, base, strict=True)]))


@pytest.fixture(scope="module")
def trained(synthetic) -> SearchAdaptor:
    """The ``matryoshka`` family's variant, trained on prefixes 4 and 8 with the training queries only."""
    train, _ = _split(synthetic)
    est = SearchAdaptor(**{**SUPERVISED, **FAST, "dims": SIZES})
    return est.fit(synthetic["Q"], synthetic["D"], train, synthetic["qids"], synthetic["dids"], encoder=SYN)


# -- the estimator ------------------------------------------------------------------------------------------
def test_every_trained_prefix_beats_truncation_and_pca_on_held_out_queries(trained, synthetic):
    _, test = _split(synthetic)
    emb = _emb(synthetic)
    rotation = pca_rotation(l2_normalize(synthetic["D"]))
    assert trained.best_step_ > 0 and trained.dim_ == WIDTH
    for m in (*SIZES, WIDTH):
        q = trained.transform_queries(synthetic["Q"][:7], dim=m)
        d = trained.transform_corpus(synthetic["D"][:9], dim=m)
        assert q.shape == (7, m) and d.shape == (9, m) and q.dtype == d.dtype == np.float32
        assert np.isfinite(q).all() and np.isfinite(d).all()
        assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
        assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
        adapted = _ndcg(emb, test, SizedView(trained, m))
        truncated = _ndcg(emb, test, SizedView(None, m))
        pca = _ndcg(emb, test, SizedView(None, m, rotation))
        assert adapted > max(truncated, pca) + 0.1, (m, adapted, truncated, pca)


def test_training_the_prefixes_is_what_makes_the_small_one_good(trained, synthetic):
    """The same variant without ``dims`` trains the full width only: its 4-d prefix is clearly worse, and
    its history has no per-size scores; with ``dims`` validation is the mean over every trained size."""
    train, test = _split(synthetic)
    emb = _emb(synthetic)
    plain = SearchAdaptor(**{**SUPERVISED, **FAST}).fit(
        synthetic["Q"], synthetic["D"], train, synthetic["qids"], synthetic["dids"], encoder=SYN
    )
    assert _ndcg(emb, test, SizedView(trained, 4)) > _ndcg(emb, test, SizedView(plain, 4)) + 0.03
    for entry in trained.history_:
        per = [entry[f"ndcg@10@{m}"] for m in (*SIZES, WIDTH)]
        assert entry["ndcg@10"] == pytest.approx(np.mean(per))
    assert not any("@10@" in key for entry in plain.history_ for key in entry)


def test_a_prefix_is_the_renormalised_head_of_the_full_vector(trained, synthetic):
    """``dim=m`` keeps the first m adapted coordinates at unit length, at any size up to the width (a
    size not in ``dims`` too, by design: the docstring promises quality only at the trained sizes)."""
    for side, X in (("queries", synthetic["Q"]), ("corpus", synthetic["D"])):
        transform = getattr(trained, f"transform_{side}")
        full = transform(X)
        assert np.array_equal(transform(X, dim=WIDTH), full) and np.array_equal(transform(X, dim=None), full)
        for m in (1, *SIZES, 5, 12, np.int64(8)):
            np.testing.assert_allclose(transform(X, dim=m), l2_normalize(full[:, :m]), atol=1e-6)


def test_the_start_is_the_pca_baseline_and_exactly_zero_shot_at_full_width(trained, synthetic):
    start = trained.at_start()
    assert start.best_step_ == 0 and start.dims == trained.dims
    rotation = pca_rotation(l2_normalize(synthetic["D"]))
    for m in SIZES:
        pca = SizedView(None, m, rotation)
        np.testing.assert_allclose(
            start.transform_queries(synthetic["Q"], dim=m), pca.transform_queries(synthetic["Q"]), atol=1e-5
        )
        np.testing.assert_allclose(
            start.transform_corpus(synthetic["D"], dim=m), pca.transform_corpus(synthetic["D"]), atol=1e-5
        )
    cosines = l2_normalize(synthetic["Q"]) @ l2_normalize(synthetic["D"]).T
    np.testing.assert_allclose(start.score(synthetic["Q"], synthetic["D"]), cosines, atol=1e-5)


@pytest.mark.parametrize("dim", [0, -1, WIDTH + 1, 8.0, "8", True, None])
def test_an_output_size_outside_the_width_is_refused(trained, synthetic, dim):
    if dim is None:  # no size: the full width
        assert trained.transform_queries(synthetic["Q"][:2], dim=dim).shape == (2, WIDTH)
        return
    for transform in (trained.transform_queries, trained.transform_corpus):
        with pytest.raises(ValueError, match=rf"dim must be an output size between 1 and {WIDTH}; got"):
            transform(synthetic["Q"][:2], dim=dim)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dims": ()}, "dims must be null or a non-empty list of sizes"),
        ({"dims": "4,8"}, "dims must be null or a non-empty list of sizes"),
        ({"dims": 8}, "dims must be null or a non-empty list of sizes"),
        ({"dims": (0, 8)}, r"dims must be integers in \[1, 65536\]; got \[0, 8\]"),
        ({"dims": (4, -8)}, r"dims must be integers in \[1, 65536\]"),
        ({"dims": (4.0, 8)}, r"dims must be integers in \[1, 65536\]"),
        ({"dims": ("4",)}, r"dims must be integers in \[1, 65536\]"),
        ({"dims": (True, 8)}, r"dims must be integers in \[1, 65536\]"),
        ({"dims": (4, WIDTH + 1)}, rf"dims: {WIDTH + 1} is larger than the {WIDTH}-d embeddings"),
        ({"dims": (4,), "mode": "query_only"}, "prefixes need the documents adapted too"),
        ({"dims": (4,), "loss": "similarity", "mode": "separate"}, "loss 'similarity' .* use mode 'shared'"),
        ({"dims": (4,), "loss": "similarity", "alpha": 0.1}, "trains a rotation only.*alpha, beta and gamma"),
        # without the skip connection the function is a random MLP, not zero: the 'rotation' was not one
        ({**UNSUPERVISED, "residual": False}, "zero start.*keep residual=True"),
        ({"dims": (4,), "init": "score-axes"}, "init 'score-axes' .* use loss 'similarity', or init 'pca'"),
    ],
)
def test_invalid_dims_are_refused_at_fit_with_one_line(synthetic, params, message):
    est = SearchAdaptor(**{**FAST, **params})  # hyperparameters are stored as given; fit checks them
    with pytest.raises(ValueError, match=message) as err:
        est.fit(synthetic["Q"], synthetic["D"], synthetic["qrels"], synthetic["qids"], synthetic["dids"])
    assert "\n" not in str(err.value)
    assert not hasattr(est, "query_net_")


def test_unsorted_repeated_and_full_width_dims_train_the_same_sizes(synthetic):
    """``dims`` is a set of sizes: order, repeats and the full width (always trained) change nothing."""
    d = synthetic
    fits = [
        SearchAdaptor(**{**SUPERVISED, **FAST, "max_steps": 20, "dims": dims}).fit(
            d["Q"], d["D"], d["qrels"], d["qids"], d["dids"]
        )
        for dims in ((4, 8), (8, 4, 8), (4, 8, WIDTH))
    ]
    assert fits[1].dims == (8, 4, 8)  # kept as given
    for est in fits[1:]:
        assert est.history_ == fits[0].history_
        assert np.array_equal(est.transform_queries(d["Q"]), fits[0].transform_queries(d["Q"]))


def test_save_load_keeps_dims_and_every_size(trained, synthetic, tmp_path):
    trained.save(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["hyperparameters"]["dims"] == list(SIZES) and config["hyperparameters"]["init"] == "pca"
    assert (
        "Matryoshka: the first 4, 8 coordinates of its output" in (tmp_path / "a" / "README.md").read_text()
    )
    loaded = SearchAdaptor.load(tmp_path / "a")
    assert list(loaded.dims) == list(SIZES) and loaded.fingerprint_ == trained.fingerprint_
    for m in (None, 1, *SIZES, WIDTH):
        assert np.array_equal(
            loaded.transform_queries(synthetic["Q"], dim=m), trained.transform_queries(synthetic["Q"], dim=m)
        )
        assert np.array_equal(
            loaded.transform_corpus(synthetic["D"], dim=m), trained.transform_corpus(synthetic["D"], dim=m)
        )
    with pytest.raises(ValueError, match="dim must be an output size between 1 and 16"):
        loaded.transform_queries(synthetic["Q"], dim=WIDTH + 1)
    config["hyperparameters"]["dims"] = [0, 8]  # an edited config is refused, naming the field
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: hyperparameters: dims must be integers"):
        SearchAdaptor.load(tmp_path / "a")
    config["hyperparameters"]["dims"] = [4, WIDTH + 1]  # wider than the adapter's output
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=rf"hyperparameters: dims \[4, {WIDTH + 1}\] go beyond the {WIDTH}-d"
    ):
        SearchAdaptor.load(tmp_path / "a")


# -- without labels -----------------------------------------------------------------------------------------
def test_unsupervised_fit_needs_no_labels_and_keeps_the_base_ranking(synthetic, tmp_path):
    """``loss="similarity"`` trains on the corpus alone (``qrels=None``), validates on neighbour overlap,
    and ships nothing worse than its PCA start by that criterion; the full width keeps the base ranking."""
    d = synthetic
    est = SearchAdaptor(**{**UNSUPERVISED, **FAST, "dims": SIZES}).fit(
        d["Q"], d["D"], None, d["qids"], d["dids"], encoder=SYN
    )
    assert est.val_metric_ == "neighbours@10" and est.n_val_queries_ == 0 and est.val_query_ids_ == []
    assert est.n_train_queries_ == 0  # corpus rows only (a fifth held out): no query text trained it
    assert est.best_score_ >= est.zero_shot_score_
    rotation = pca_rotation(l2_normalize(d["D"]))
    for m in SIZES:  # the queries were never seen: neighbours kept at least as well as PCA keeps them
        adapted = _neighbour_overlap(SizedView(est, m), d["Q"], d["D"])
        assert adapted >= _neighbour_overlap(SizedView(None, m, rotation), d["Q"], d["D"]) - 0.02
    emb = _emb(d)
    assert _ndcg(emb, d["qrels"], est) == pytest.approx(_ndcg(emb, d["qrels"], None), abs=1e-6)
    est.save(tmp_path / "u")
    loaded = SearchAdaptor.load(tmp_path / "u")
    assert loaded.val_metric_ == "neighbours@10" and loaded.get_params()["loss"] == "similarity"
    assert np.array_equal(loaded.transform_queries(d["Q"], dim=4), est.transform_queries(d["Q"], dim=4))


def test_unsupervised_fit_of_one_document_is_refused_in_one_line(synthetic, tmp_path, capsys):
    """It failed deep inside with 'exact_search: k must be an integer >= 1; got 0'."""
    d = synthetic
    with pytest.raises(
        ValueError, match=r"^an unsupervised fit .* the corpus has 1 document: give at least 2$"
    ):
        SearchAdaptor(**{**UNSUPERVISED, **FAST, "dims": SIZES}).fit(
            d["Q"], d["D"][:1], None, d["qids"], ["d0"]
        )


def test_unsupervised_fit_reads_only_the_query_ids_of_qrels(synthetic, tmp_path):
    """The qrels' query texts join the training rows, their labels play no part: scrambled labels give
    the very same adapter."""
    d = synthetic
    params = {**UNSUPERVISED, **FAST, "max_steps": 40, "dims": SIZES}
    scrambled = {q: {"d0": 1} for q in d["qrels"]}
    a = SearchAdaptor(**params).fit(d["Q"], d["D"], d["qrels"], d["qids"], d["dids"])
    b = SearchAdaptor(**params).fit(d["Q"], d["D"], scrambled, d["qids"], d["dids"])
    assert a.history_ == b.history_
    assert np.array_equal(a.transform_queries(d["Q"], dim=4), b.transform_queries(d["Q"], dim=4))
    # four fifths of the query texts train (beside every document), the other fifth validates: the
    # counts report.json and the card give (they read 'on 0 validation queries', and the documents
    # counted as training queries)
    assert a.n_val_queries_ == round(0.2 * len(d["qrels"]))
    assert a.n_train_queries_ == len(d["qrels"]) - a.n_val_queries_
    a.save(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert f"on {a.n_val_queries_} query texts held out of its training (no labels)" in card


def test_unsupervised_targets_keep_a_querys_nearest_document_and_drop_a_documents_own_row(synthetic):
    """A document's first neighbour is itself (dropped from its target); a query's is its best match."""
    import torch

    from search_adaptor.networks import build_nets
    from search_adaptor.training import _Similarity

    d = synthetic
    Dn, Qn = l2_normalize(d["D"]), l2_normalize(d["D"][:40] + 0.01)  # each query next to one document
    hp = SimpleNamespace(**{**SearchAdaptor(**UNSUPERVISED).get_params(), "val_fraction": 0.25})
    net, _ = build_nets(Dn.shape[1], None, "mlp", True, "shared", torch.Generator().manual_seed(0), True)
    objective = _Similarity(hp, Qn, Dn, net, net, [4, Dn.shape[1]], np.random.default_rng(0))
    n_docs = len(Dn)
    assert len(objective.train_rows) == n_docs + 30 and len(objective.val_rows) == 10  # held out: queries
    doc_first, query_first = objective.neighbours[:n_docs, 0], objective.neighbours[n_docs:, 0]
    assert (doc_first != np.arange(n_docs)).all()
    own = [int(np.argmax(Dn @ q)) for q in objective.train_rows[n_docs:]]
    assert query_first.tolist() == own
    # half of a batch are query texts, however few they are beside the documents
    rows = objective.batch_rows()
    assert len(rows) == len(set(rows.tolist())) == min(hp.batch_size, n_docs + 30)
    assert (rows >= n_docs).sum() == min(len(rows) // 2, 30)


def _mean_product(R: np.ndarray, m: int, Q: np.ndarray, D: np.ndarray) -> float:
    """Mean over every (query, document) of the score of their first ``m`` coordinates after ``R``
    times their full score: what :func:`score_axes` orders its axes by."""
    P = R[:m].T @ R[:m]
    return float(np.mean((Q @ P @ D.T) * (Q @ D.T)))


def test_score_axes_put_first_what_queries_and_documents_share():
    """Documents vary most along coordinates 0-7, queries dwell on 8-11: PCA of the corpus keeps the
    documents' axes first and misses the queries', the score axes keep the queries' ones first. Each
    prefix holds more of the query-document scores than PCA's or truncation's of its size."""
    rng = np.random.default_rng(0)
    doc_scales = np.r_[np.full(8, 1.0), np.full(8, 0.3)]
    query_scales = np.r_[np.full(8, 0.1), np.full(4, 1.0), np.full(4, 0.1)]
    D = l2_normalize((rng.normal(size=(400, WIDTH)) * doc_scales).astype(np.float32))
    Q = l2_normalize((rng.normal(size=(60, WIDTH)) * query_scales).astype(np.float32))
    R = score_axes(Q, D)
    assert R.shape == (WIDTH, WIDTH) and R.dtype == np.float32
    assert np.allclose(R @ R.T, np.eye(WIDTH), atol=1e-5)
    assert np.array_equal(R, score_axes(Q, D))  # deterministic, signs included
    assert (R[:4, 8:12] ** 2).sum() > 0.8 * 4  # the first four axes lie mostly in the queries' four
    pca = pca_rotation(D)
    assert (pca[:4, 8:12] ** 2).sum() < 0.5
    for m in (4, 8):
        ours = _mean_product(R, m, Q, D)
        assert ours > _mean_product(pca, m, Q, D) and ours > _mean_product(np.eye(WIDTH), m, Q, D)


def test_score_axes_of_one_query_text_do_not_swing_with_rounding():
    """One query text spans few axes (its product with the documents has rank 2 at most); the floor of
    the documents' own moment orders the others by the corpus. Without it they would be any basis of
    a degenerate eigenspace: documents moved by 1e-4 turned the 4-d prefix by more than one axis."""
    rng = np.random.default_rng(0)
    scales = np.linspace(1.0, 0.2, WIDTH).astype(np.float32)
    D = l2_normalize(rng.normal(size=(200, WIDTH)).astype(np.float32) * scales)
    moved = l2_normalize(D + 1e-4 * rng.normal(size=D.shape).astype(np.float32))
    q = l2_normalize(rng.normal(size=(1, WIDTH)).astype(np.float32))
    a, b = score_axes(q, D), score_axes(q, moved)
    assert np.isfinite(a).all() and np.allclose(a @ a.T, np.eye(WIDTH), atol=1e-5)
    for m in (1, 4, 8, 12):  # the two prefixes span the same subspace: squared overlaps sum to m
        assert ((a[:m] @ b[:m].T) ** 2).sum() == pytest.approx(m, abs=1e-3)


def test_a_score_axes_start_uses_the_training_query_texts_only(synthetic):
    """``init="score-axes"`` starts the unsupervised rotation on :func:`score_axes` of the query texts
    it trains on, not of those it holds out to validate; without query texts, on the corpus's PCA."""
    from search_adaptor.networks import build_nets
    from search_adaptor.training import _Similarity

    Dn, Qn = l2_normalize(synthetic["D"]), l2_normalize(synthetic["Q"])
    hp = SimpleNamespace(**SearchAdaptor(**{**UNSUPERVISED, "init": "score-axes"}).get_params())
    for queries, expected in ((Qn, None), (Qn[:0], pca_rotation(Dn))):
        net, _ = build_nets(WIDTH, None, "mlp", True, "shared", torch.Generator().manual_seed(0), True)
        objective = _Similarity(hp, queries, Dn, net, net, [4, WIDTH], np.random.default_rng(0))
        if expected is None:
            trained_on = objective.train_rows[objective.n_docs :]
            assert len(trained_on) == len(Qn) - len(objective.val_rows)
            expected = score_axes(trained_on, Dn)
        assert np.array_equal(net.project.weight.detach().numpy(), expected)


@pytest.fixture(scope="module")
def packed() -> tuple[SearchAdaptor, np.ndarray, np.ndarray]:
    """An unsupervised fit from the identity (truncation) on a corpus whose neighbourhoods live in its
    last 4 coordinates, and 80 rows it never saw (no qrels: no query row is read)."""
    rng = np.random.default_rng(0)
    scales = np.r_[np.full(12, 0.15), np.full(4, 1.0)].astype(np.float32)  # the signal: last 4 coords
    D = (rng.normal(size=(300, WIDTH)) * scales).astype(np.float32)
    unseen = (rng.normal(size=(80, WIDTH)) * scales).astype(np.float32)
    params = {"mode": "shared", "loss": "similarity", "alpha": 0.0, "beta": 0.0}
    est = SearchAdaptor(**{**params, **FAST, "dims": (4,), "lr": 1e-2}).fit(unseen, D, None)
    return est, unseen, D


def test_similarity_loss_packs_the_neighbours_into_the_prefix(packed):
    """The unsupervised objective learns to carry the corpus's neighbourhoods in the first coordinates
    when they live in the last ones; unseen rows gain too."""
    est, unseen, D = packed
    assert est.best_step_ > 0 and est.best_score_ > est.zero_shot_score_ + 0.2
    truncated = _neighbour_overlap(SizedView(None, 4), unseen, D)
    assert truncated < 0.1
    assert _neighbour_overlap(SizedView(est, 4), unseen, D) > truncated + 0.5
    assert _neighbour_overlap(est, unseen, D) == 1.0  # and the full width keeps them all


def test_similarity_training_is_a_rotation(packed):
    """Only the projection trains and it stays orthogonal: the residual function stays zero, and the
    full width gives every cosine of the base embeddings, whatever the prefixes learnt."""
    est, unseen, D = packed
    net = est.query_net_
    W = net.project.weight.detach().numpy()
    assert np.allclose(W @ W.T, np.eye(len(W)), atol=1e-5)
    assert not np.allclose(W, np.eye(len(W)), atol=0.1)  # it did turn
    assert not net.f[-1].weight.any() and not net.f[-1].bias.any()  # f(x) = 0
    adapted = est.transform_queries(unseen) @ est.transform_corpus(D).T
    assert np.allclose(adapted, l2_normalize(unseen) @ l2_normalize(D).T, atol=1e-5)


def test_nearest_rotation_is_the_polar_factor():
    """The rotation constraint's projection is the orthogonal matrix nearest the updated weights:
    the polar factor an SVD gives (``u @ vh``, here numpy's in float64), orthogonal to float32
    rounding, and a rotation is its own nearest one."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    for drift in (0.0, 1e-3, 0.05):  # an optimiser step moves the weights a little off the rotations
        w = (q + drift * rng.normal(size=q.shape)).astype(np.float32)
        got = nearest_rotation(torch.from_numpy(w)).numpy()
        u, _, vh = np.linalg.svd(w.astype(np.float64))
        assert got.dtype == np.float32 and np.allclose(got, u @ vh, atol=1e-5)
        assert np.allclose(got @ got.T, np.eye(64), atol=1e-5)


def test_an_svd_that_does_not_converge_cannot_end_an_unsupervised_fit(synthetic, monkeypatch):
    """On SciFact, torch's SVD with two threads failed to converge on the projection mid-fit ("too
    many repeated singular values"; it succeeded on the same matrix with one thread) and the fit died
    with a traceback. The constraint needs no SVD: with every SVD failing so, the fit completes and
    its projection is a rotation."""

    def no_convergence(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (error code: 1).")

    monkeypatch.setattr(torch.linalg, "svd", no_convergence)
    d = synthetic
    est = SearchAdaptor(**{**UNSUPERVISED, **FAST, "dims": SIZES}).fit(d["Q"], d["D"], None, encoder=SYN)
    W = est.query_net_.project.weight.detach().numpy()
    assert est.n_steps_ > 1 and np.allclose(W @ W.T, np.eye(len(W)), atol=1e-5)


# -- run_fit and its report ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def beir(synthetic, tmp_path_factory) -> tuple[Path, Path]:
    """The synthetic task as a BEIR folder (train: q0..q119, test: q120..q159) and its vectors."""
    root = tmp_path_factory.mktemp("matryoshka")
    d = synthetic
    data, vec = root / "syn", root / "vec"
    (data / "qrels").mkdir(parents=True)
    vec.mkdir()
    (data / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": i}) + "\n" for i in d["dids"]))
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": q}) + "\n" for q in d["qids"]))
    for split, qrels in zip(("train", "test"), _split(d), strict=True):
        rows = [f"{q}\t{doc}\t{g}" for q, docs in qrels.items() for doc, g in docs.items()]
        (data / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    np.savez(vec / "queries.npz", ids=np.array(d["qids"]), embeddings=d["Q"])
    np.savez(vec / "corpus.npz", ids=np.array(d["dids"]), embeddings=d["D"])
    return data, vec


def test_run_fit_and_evaluate_score_every_size_against_truncation_and_pca(beir, synthetic, tmp_path):
    data, vec = beir
    dataset = load_beir(data)
    emb = load_precomputed(dataset, vec, model="syn-16")
    run = run_fit(dataset, emb, dims=(8, 4), overrides=FAST)
    report = run.report
    assert report["family"] == "matryoshka" and report["protocol"] == "test" and run.adapter.dims == (8, 4)
    systems = {"zero-shot", "adapted"} | {f"{s}@{m}" for s in ("zero-shot", "pca", "adapted") for m in SIZES}
    assert set(report["metrics"]) == systems  # the full width is "adapted" itself
    by_size = report["significance"]["by_size"]
    assert set(by_size) == {"4", "8"}
    for m in SIZES:
        tests = by_size[str(m)]
        assert set(tests) == {f"vs zero-shot@{m}", f"vs pca@{m}"}
        assert all(0.0 < p <= 1.0 for p in tests.values())
        metrics = report["metrics"]
        assert metrics[f"adapted@{m}"]["ndcg@10"] > metrics[f"pca@{m}"]["ndcg@10"]
        assert metrics[f"adapted@{m}"]["ndcg@10"] > metrics[f"zero-shot@{m}"]["ndcg@10"]
        test = dataset.split("test")
        assert metrics[f"adapted@{m}"]["ndcg@10"] == pytest.approx(
            _ndcg(emb, test, SizedView(run.adapter, m))
        )
    assert by_size["8"]["vs zero-shot@8"] < 0.01 and by_size["8"]["vs pca@8"] < 0.01  # 40 queries suffice
    # evaluate on the same split, from the saved adapter: every size, the numbers fit reported
    loaded = SearchAdaptor.load(run.adapter.save(tmp_path / "adapter"))
    evaluated = run_evaluate(dataset, emb, loaded).report
    assert set(evaluated["metrics"]) == systems
    assert set(evaluated["significance"]["by_size"]) == {"4", "8"}
    for system, values in report["metrics"].items():
        for metric, value in values.items():
            assert evaluated["metrics"][system][metric] == pytest.approx(value, abs=1e-5), (system, metric)


def test_a_fit_that_kept_its_pca_start_says_so_and_evaluate_says_the_same(beir, synthetic, tmp_path):
    """A Matryoshka adapter that kept its start is a PCA rotation, not the identity: ``evaluate`` on
    the saved adapter said "the saved adapter is the identity: retrieval is unchanged", while ``fit``
    named the rotation; both now name it from what the adapter records."""
    data, vec = beir
    dataset = load_beir(data)
    emb = load_precomputed(dataset, vec, model="syn-16")
    kept = run_fit(dataset, emb, dims=SIZES, overrides={**FAST, "max_steps": 20, "lr": 1e-12})
    assert kept.report["selected"] == "its start (a PCA rotation of the corpus)"
    assert not kept.adapter.is_identity_
    (fitted,) = identity_lines(kept.report)
    assert fitted.startswith("No variant beat its start on validation")  # what selection compared
    assert fitted.endswith(
        "so the saved adapter is its start, a PCA rotation of the corpus, not the identity: retrieval at "
        "full width is the zero-shot row's."
    )
    loaded = SearchAdaptor.load(kept.adapter.save(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "config.json").read_text())["identity"] is False
    evaluated = run_evaluate(dataset, emb, loaded).report
    assert evaluated["selected"] == kept.report["selected"]
    (line,) = identity_lines(evaluated)
    assert line.endswith(fitted.split(", so ")[1])


def test_run_fit_refuses_dims_that_are_the_full_width_alone(beir):
    """``fit --dims 384`` on 384-d embeddings trained no prefix and shipped its PCA start, saying
    nothing of why; sizes beside the full width stay accepted (it is always trained)."""
    data, vec = beir
    dataset = load_beir(data)
    emb = load_precomputed(dataset, vec, model="syn-16")
    with pytest.raises(
        ValueError, match=rf"^dims: {WIDTH} is the embeddings' full width, .* give smaller sizes"
    ):
        run_fit(dataset, emb, dims=(WIDTH,), overrides=FAST)


def test_run_fit_unsupervised_trains_without_labels_and_reports_sizes(beir):
    data, vec = beir
    dataset = load_beir(data)
    emb = load_precomputed(dataset, vec, model="syn-16")
    run = run_fit(dataset, emb, dims=SIZES, unsupervised=True, overrides=FAST)
    assert run.report["family"] == "matryoshka-unsupervised"
    assert run.adapter.get_params()["loss"] == "similarity" and run.adapter.val_metric_ == "neighbours@10"
    assert set(run.report["significance"]["by_size"]) == {"4", "8"}
    assert {"adapted@4", "pca@4", "zero-shot@4"} <= set(run.report["metrics"])
    # what validation measured is named as such: no labels, so not nDCG
    assert run.report["validation"]["metric"] == "neighbours@10"
    # the training split's query texts: a fifth held out validated, the rest trained (it said 0, and
    # counted the documents as training queries)
    assert run.report["validation"]["n_val_queries"] == run.adapter.n_val_queries_ == round(0.2 * 120)
    assert run.adapter.n_train_queries_ == 120 - run.adapter.n_val_queries_
    text = render_markdown(run.report)
    assert "validation overlap with the base top-10 neighbours" in text and "val nDCG@10" not in text
    # every size the user asked for is in report.md: its rows, and its line against both baselines
    for m in SIZES:
        assert all(f"| {system}@{m} |" in text for system in ("zero-shot", "pca", "adapted"))
        assert f"- {m} dimensions: `adapted@{m}` " in text and "over truncation (p " in text
    # the training queries' texts trained the prefixes (labels unused): evaluate says so, by their texts
    for split, n_seen in (("train", 120), ("test", 0)):
        seen = run_evaluate(dataset, emb, run.adapter, split).report["seen_in_training"]
        assert seen == {"n": n_seen, "of": len(dataset.split(split)), "by": "text"}


@pytest.mark.parametrize(
    ("family", "dims", "unsupervised", "cross", "expected"),
    [
        ("auto", (4, 8), False, False, "matryoshka"),
        ("auto", (4, 8), True, False, "matryoshka-unsupervised"),
        ("matryoshka-unsupervised", (4,), False, False, "matryoshka-unsupervised"),
        ("paper", (4, 8), False, False, "paper"),  # another family named: it trains the prefixes
        ("linear", (4,), False, False, "family linear adapts the queries only .linear-query-only-infonce."),
        ("auto", None, False, False, "auto"),
        ("auto", None, True, False, "a fit without labels trains Matryoshka prefixes .give their sizes"),
        ("auto", None, True, False, "or a map from another model's queries .give it with --query-model"),
        ("matryoshka-unsupervised", None, True, False, "family matryoshka-unsupervised trains Matryoshka"),
        ("matryoshka", None, False, False, "family matryoshka trains Matryoshka prefixes: give their sizes"),
        ("matryoshka", (), False, False, "family matryoshka trains Matryoshka prefixes"),
        ("paper", (4,), True, False, "--unsupervised trains family matryoshka-unsupervised, not paper"),
        ("auto", (4,), False, True, "cross-matryoshka"),
        ("auto", (4,), True, True, "no prefixes to train: drop --dims or --unlabelled"),
    ],
)
def test_family_follows_dims_and_unsupervised(family, dims, unsupervised, cross, expected):
    if " " not in expected:
        assert fit_family(family, dims, unsupervised, cross) == expected
        return
    with pytest.raises(ValueError, match=expected) as err:
        fit_family(family, dims, unsupervised, cross)
    assert "\n" not in str(err.value)


# -- the command line ---------------------------------------------------------------------------------------
def _vectors(vec: Path) -> list[str]:
    return ["--embeddings", str(vec), "--model", "syn-16"]


@pytest.fixture(scope="module")
def cli_fit(beir, tmp_path_factory) -> Path:
    """``search-adaptor fit --dims 4,8`` on the synthetic BEIR folder; returns its --out folder."""
    data, vec = beir
    out = tmp_path_factory.mktemp("fit") / "out"
    args = ["fit", str(data), "--out", str(out), *_vectors(vec), "--dims", "4,8", "--max-steps", "100"]
    assert main([*args, "--quiet", "-o", "json"]) == 0
    return out


def test_cli_fit_dims_writes_an_adapter_that_records_them(cli_fit, synthetic):
    report = json.loads((cli_fit / "report.json").read_text())
    assert report["family"] == "matryoshka" and set(report["significance"]["by_size"]) == {"4", "8"}
    for m in SIZES:
        assert report["metrics"][f"adapted@{m}"]["ndcg@10"] > report["metrics"][f"pca@{m}"]["ndcg@10"]
    config = json.loads((cli_fit / "adapter" / "config.json").read_text())
    assert config["hyperparameters"]["dims"] == [4, 8] and config["hyperparameters"]["init"] == "pca"
    assert config["dim"] == WIDTH and config["metrics"]["test"]["adapted@4"] == report["metrics"]["adapted@4"]
    adapter = SearchAdaptor.load(cli_fit / "adapter")
    assert adapter.transform_queries(synthetic["Q"], dim=4).shape == (len(synthetic["Q"]), 4)


def test_cli_table_output_reports_every_size_against_its_baselines(cli_fit, beir, capsys):
    """The terminal summary of a Matryoshka adapter names each size's score and its p-values against
    truncation and PCA (the full-width p alone says nothing of the sizes)."""
    data, vec = beir
    capsys.readouterr()
    assert main(["evaluate", str(data), "--adapter", str(cli_fit / "adapter"), *_vectors(vec)]) == 0
    out = capsys.readouterr().out
    report = json.loads((cli_fit / "report.json").read_text())
    for m in SIZES:
        score = report["metrics"][f"adapted@{m}"]["ndcg@10"]
        assert f"- {m} dimensions: `adapted@{m}` {score:.4f}, " in out
        assert out.count("over truncation (p ") == len(SIZES) and out.count("over PCA (p ") == len(SIZES)


def test_an_adapter_significantly_below_zero_shot_is_warned_of_loudly(cli_fit, beir, tmp_path, capsys):
    """An adapter that loses to zero-shot on the scored queries (here: one whose weights were
    scrambled) is flagged in one WARNING line on the terminal and in report.md, saying not to deploy
    it; a gain or a loss within noise stays quiet (the other CLI tests)."""
    data, vec = beir
    bad = SearchAdaptor.load(cli_fit / "adapter")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in bad.query_net_.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    bad.save(tmp_path / "bad")
    capsys.readouterr()
    out = tmp_path / "ev"
    argv = ["evaluate", str(data), "--adapter", str(tmp_path / "bad"), *_vectors(vec), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["adapted"]["ndcg@10"] < report["metrics"]["zero-shot"]["ndcg@10"]
    assert report["significance"]["p_value"] < 0.05
    warning = [line for line in printed.splitlines() if line.startswith("WARNING: the adapter is")]
    assert len(warning) == 1 and "significantly below zero-shot" in warning[0]
    assert "do not deploy it as it is" in warning[0]
    assert warning[0] in (out / "report.md").read_text()
    good = ["evaluate", str(data), "--adapter", str(cli_fit / "adapter"), *_vectors(vec)]
    assert main(good) == 0 and "WARNING" not in capsys.readouterr().out


def test_a_size_significantly_below_pca_is_warned_of_with_the_fix():
    """A prefix that loses to a PCA of its size is never shipped in silence: a family started from
    the truncated embedding (say ``--family paper --dims 64``) is told to refit as ``matryoshka``;
    a Matryoshka fit (started at that PCA) that still loses overfitted; no warning for a loss
    within noise, or a gain."""

    def report(family, adapted, p):
        scores = {"zero-shot": 0.53, "zero-shot@64": 0.44, "pca@64": 0.52, "adapted@64": adapted}
        return {
            "family": family,
            "metrics": {name: {"ndcg@10": v} for name, v in scores.items()},
            "significance": {"by_size": {"64": {"vs zero-shot@64": 1.0, "vs pca@64": p}}},
        }

    paper = size_lines(report("paper", 0.44, 0.009), "ndcg@10")
    assert paper[-1].startswith("  WARNING: at 64 dimensions this adapter is significantly below a PCA")
    assert "refit with `--family matryoshka`" in paper[-1]
    own = size_lines(report("matryoshka", 0.44, 0.009), "ndcg@10")[-1]
    assert "WARNING" in own and "overfitted" in own and "--family matryoshka" not in own
    unlabelled = size_lines(report("matryoshka-unsupervised", 0.44, 0.009), "ndcg@10")[-1]
    assert "WARNING" in unlabelled and "fit `--dims` with labels" in unlabelled
    # `evaluate` records no family: its adapter's prefixes were trained, "refit with --family
    # matryoshka" was advice for another family
    scored = size_lines({**report(None, 0.44, 0.009), "protocol": "evaluate"}, "ndcg@10")[-1]
    assert "WARNING" in scored and "--family matryoshka" not in scored
    assert "the prefix does not keep what its fit measured" in scored
    for quiet in (report("paper", 0.50, 0.2), report("paper", 0.56, 0.001), report(None, 0.52, 1.0)):
        assert not any("WARNING" in line for line in size_lines(quiet, "ndcg@10"))
    assert "refit with `--family matryoshka`" in size_lines(report(None, 0.44, 0.009), "ndcg@10")[-1]


def test_a_size_below_pca_is_warned_of_on_stderr_under_json_output(capsys):
    """`evaluate -o json` printed the JSON and nothing else: a prefix significantly below PCA (0.1731
    against 0.2932 at 48-d, XQuAD-R de queries on a ru-trained adapter) reached a script in silence."""
    from search_adaptor.cli import _print_report

    scores = {"zero-shot": 0.53, "adapted": 0.53, "zero-shot@64": 0.44, "pca@64": 0.52, "adapted@64": 0.44}
    report = {
        "protocol": "evaluate",
        "metrics": {name: {"ndcg@10": v} for name, v in scores.items()},
        "significance": {
            "metric": "ndcg@10",
            "p_value": 1.0,
            "by_size": {"64": {"vs zero-shot@64": 1.0, "vs pca@64": 0.001}},
        },
    }
    _print_report(report, "json", None)
    printed = capsys.readouterr()
    assert json.loads(printed.out) == report
    assert printed.err.startswith("WARNING: at 64 dimensions this adapter is significantly below a PCA")


def test_cli_fit_unsupervised_and_its_refusals(beir, tmp_path, capsys):
    data, vec = beir
    base = ["fit", str(data), *_vectors(vec), "--quiet", "-o", "json"]
    out = tmp_path / "u"
    assert main([*base, "--out", str(out), "--unsupervised", "--dims", "4,8", "--max-steps", "60"]) == 0
    assert json.loads((out / "report.json").read_text())["family"] == "matryoshka-unsupervised"
    hp = json.loads((out / "adapter" / "config.json").read_text())["hyperparameters"]
    assert hp["loss"] == "similarity" and hp["dims"] == [4, 8]
    # the report says the training queries gave their texts, not their labels (k-fold alike)
    assert (
        "Protocol: train on `train`'s query texts (their labels unused), select on"
        in (out / "report.md").read_text()
    )
    report = {**json.loads((out / "report.json").read_text()), "protocol": "kfold", "folds": 5}
    assert "trained on the other folds' query texts only (their labels unused)" in render_markdown(report)
    # a rotation keeps every full-width score: the same as zero-shot, said as such
    report["metrics"]["adapted"] = dict(report["metrics"]["zero-shot"])
    assert "Adapted is level with zero-shot, +0.0000 ndcg@10" in render_markdown(report)
    capsys.readouterr()
    refusals = {
        ("--dims", "4,0"): "--dims: must be a positive int, got 0",
        ("--dims", "4,x"): "--dims: must be a positive int, got x",
        ("--dims", "8,4,8"): "--dims: 8 is given twice in 8,4,8; give each size once",
        ("--dims", "4,17"): "dims: 17 is larger than the 16-d embeddings",
        ("--unsupervised",): "a fit without labels trains Matryoshka prefixes (give their sizes, e.g. --dims",
        ("--family", "matryoshka"): "family matryoshka trains Matryoshka prefixes",
        ("--unlabelled", "--family", "paper", "--dims", "4"): "--unsupervised trains family matryoshka-unsu",
        (
            "--unsupervised",
            "--dims",
            "4",
            "--selection",
            "kfold",
        ): "a fit without labels trains on none: drop",
    }
    for extra, message in refusals.items():
        assert main([*base, "--out", str(tmp_path / "x"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("search-adaptor: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "x" / "adapter").exists()


def test_cli_index_at_a_size_searches_the_prefix_and_refuses_mismatches(
    cli_fit, beir, synthetic, tmp_path, capsys
):
    pytest.importorskip("faiss", reason="needs faiss-cpu (the serve extra)")
    from search_adaptor.index import AdaptedIndex, build_index

    data, vec = beir
    idx = tmp_path / "idx"
    args = ["index", str(data), "--adapter", str(cli_fit / "adapter"), "--out", str(idx), *_vectors(vec)]
    # a size wider than the adapter is refused naming the flag (it said "size must be ...", the name
    # of neither --dim nor build_index's dim), before anything is written
    assert main([*args, "--dim", "17", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "search-adaptor: error: --dim must be an output size between 1 and 16; got 17"
    )
    assert not idx.exists()
    with pytest.raises(ValueError, match=r"^dim must be an output size between 1 and 16; got 17$"):
        build_index(data, None, cli_fit / "adapter", tmp_path / "py", dim=17)
    assert main([*args, "--dim", "8", "--quiet"]) == 0
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["dim"] == 8 and manifest["adapter"]["size"] == 8 and manifest["n_docs"] == 300
    index = AdaptedIndex.load(idx)
    adapter = SearchAdaptor.load(cli_fit / "adapter")
    Q = synthetic["Q"][N_TRAIN:]
    top, scores = exact_search(
        adapter.transform_queries(Q, dim=8), adapter.transform_corpus(synthetic["D"], dim=8), 10
    )
    hits = index.search(Q, k=10)  # base query vectors, cut to the index's size
    assert [[doc for doc, _ in row] for row in hits] == [[synthetic["dids"][i] for i in row] for row in top]
    np.testing.assert_allclose([[s for _, s in row] for row in hits], scores, atol=1e-5)
    again = index.search_adapted(adapter.transform_queries(Q[:3], dim=8), k=10)  # adapted at the size
    assert [[doc for doc, _ in row] for row in again] == [[doc for doc, _ in row] for row in hits[:3]]
    with pytest.raises(CompatibilityError, match=r"queries: expected shape \(n, 8\), got \(3, 16\)"):
        index.search_adapted(adapter.transform_queries(Q[:3]), k=10)  # full-width vectors

    # a manifest whose size does not match the index, or that lost its size, is refused
    for size, message in (
        (4, "dim 8 and adapter.size 4 do not fit"),
        (None, "dim 8 and adapter.size 16 do not"),
    ):
        edited = json.loads(json.dumps(manifest))
        edited["adapter"].pop("size")
        edited["adapter"].update({} if size is None else {"size": size})
        (idx / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=message):
            AdaptedIndex.load(idx)
    (idx / "manifest.json").write_text(json.dumps(manifest))
    AdaptedIndex.load(idx)  # restored
    other = SearchAdaptor(**{**UNSUPERVISED, **FAST, "max_steps": 20, "dims": SIZES})
    other.fit(synthetic["Q"], synthetic["D"], None, encoder=SYN).save(idx / "adapter")  # another adapter
    with pytest.raises(CompatibilityError, match="is not the one the index was built with"):
        AdaptedIndex.load(idx)

    full = tmp_path / "full"
    assert main([*args[:5], str(full), *_vectors(vec), "--dim", "16", "--quiet"]) == 0
    manifest = json.loads((full / "manifest.json").read_text())
    assert manifest["dim"] == WIDTH and "size" not in manifest["adapter"]  # the full width is no prefix
    assert main([*args[:5], str(tmp_path / "too-wide"), *_vectors(vec), "--dim", "17", "--quiet"]) == 2
    assert not (tmp_path / "too-wide").exists()


def test_index_built_from_texts_at_a_size_keeps_only_the_prefix(tmp_path):
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import AdaptedIndex
    from test_index import FAKE, FAKE_INFO, make_adapter

    adapter = make_adapter(info=FAKE_INFO, init="pca", dims=(4, 8))
    ids, texts = [f"d{i}" for i in range(20)], [f"document {i}" for i in range(20)]
    index = AdaptedIndex.build(adapter, FAKE, ids, texts, cache_dir=tmp_path / "cache", size=8)
    assert index.dim == 8 and index.manifest["adapter"]["size"] == 8
    query = FAKE.encode_queries(["document 3"])
    expected = exact_search(
        adapter.transform_queries(query, dim=8), adapter.transform_corpus(FAKE.encode_corpus(texts), dim=8), 5
    )[0][0]
    assert [d for d, _ in index.search(query, k=5)[0]] == [ids[i] for i in expected]


def test_an_index_of_a_corpus_at_a_size_keeps_shards_of_that_size(tmp_path):
    """vectors/ held the full-width vectors (and said so) under an index of 8-d ones, so a vector
    database loaded from it got 16-d documents for /embed's 8-d queries."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import build_index
    from search_adaptor.vectors import iter_vectors
    from test_index import FAKE, FAKE_INFO, make_adapter

    adapter = make_adapter(info=FAKE_INFO, init="pca", dims=(4, 8))
    texts = [f"document {i}" for i in range(20)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    index, _ = build_index(corpus, FAKE, adapter, tmp_path / "idx", cache_dir=tmp_path / "cache", dim=8)
    shards = json.loads((tmp_path / "idx" / "vectors" / "_manifest.json").read_text())
    assert index.dim == 8 and shards["dim"] == 8 and shards["size"] == 8
    ids, vectors = zip(*iter_vectors(tmp_path / "idx" / "vectors"), strict=True)
    expected = adapter.transform_corpus(FAKE.encode_corpus(texts), dim=8)
    np.testing.assert_array_equal(np.concatenate(vectors), expected)
    assert [d for part in ids for d in part] == [f"d{i}" for i in range(20)]


def test_untrained_sizes_are_named(trained):
    assert trained.untrained_size(None) is None and trained.untrained_size(trained.dim_) is None
    assert all(trained.untrained_size(m) is None for m in trained.dims)
    assert "it was trained at 4, 8" in trained.untrained_size(5)
    plain = make_adapter(16)
    assert "full width only; fit --dims trains smaller sizes" in plain.untrained_size(8)


def test_cli_transform_dim_writes_the_prefix(cli_fit, synthetic, tmp_path, capsys):
    np.save(tmp_path / "docs.npy", synthetic["D"])
    adapter = cli_fit / "adapter"
    args = ["transform", str(tmp_path / "docs.npy"), "--adapter", str(adapter), "--out"]
    assert main([*args, str(tmp_path / "d4.npy"), "--dim", "4"]) == 0
    out, err = capsys.readouterr()
    assert "300 vectors (4-d) adapted" in out and err == ""
    # a size between the trained ones works, and says it was never measured
    assert main([*args, str(tmp_path / "d6.npy"), "--dim", "6"]) == 0
    err = capsys.readouterr().err.strip()
    assert err == (
        "search-adaptor: warning: --dim 6 is not a size this adapter was trained at (it was trained at "
        "4, 8); its first 6 coordinates are kept, but how well they retrieve was never measured"
    )
    expected = SearchAdaptor.load(adapter).transform_corpus(synthetic["D"], dim=4)
    np.testing.assert_array_equal(np.load(tmp_path / "d4.npy"), expected)
    assert main([*args, str(tmp_path / "d17.npy"), "--dim", "17"]) == 2
    assert "error: --dim must be an output size between 1 and 16; got 17" in capsys.readouterr().err
    assert not (tmp_path / "d17.npy").exists()
    assert main([*args, str(tmp_path / "d0.npy"), "--dim", "0"]) == 2
    assert "--dim: must be a positive int, got 0" in capsys.readouterr().err
    # the word dim in another sense, a matrix's width, is not the flag; the refusal keeps its type
    np.save(tmp_path / "cube.npy", np.ones((3, 4, 2), dtype=np.float32))
    assert main(["transform", str(tmp_path / "cube.npy"), "--adapter", str(adapter), "--out", "c.npy"]) == 2
    err = capsys.readouterr().err
    assert "expected a C-ordered 2-D numeric matrix (n_vectors, dim), got shape (3, 4, 2)" in err, err
    assert (
        main(["transform", str(tmp_path / "cube.npy"), "--adapter", str(adapter), "--out", "c", "--debug"])
        == 2
    )
    assert "search_adaptor.data.DataError: " in capsys.readouterr().err  # the traceback's last line


def test_cli_export_onnx_dim_equals_the_prefix(cli_fit, synthetic, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (the onnx extra)")
    pytest.importorskip("onnx", reason="needs onnx (the onnx extra)")
    adapter = SearchAdaptor.load(cli_fit / "adapter")
    args = ["export", str(cli_fit / "adapter"), "--format", "onnx", "--out"]
    for m in (4, 8):
        out = tmp_path / f"onnx{m}"
        assert main([*args, str(out), "--dim", str(m)]) == 0
        info = json.loads((out / "export.json").read_text())
        assert info["dim"] == WIDTH and info["output_dim"] == m
        for name, transform, X in (
            ("query.onnx", adapter.transform_queries, synthetic["Q"] * 3.0),  # not unit-norm on purpose
            ("corpus.onnx", adapter.transform_corpus, synthetic["D"]),
        ):
            session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
            got = session.run(["adapted"], {"embeddings": X})[0]
            assert got.shape == (len(X), m)
            assert np.abs(got - transform(X, dim=m)).max() < 1e-5
    capsys.readouterr()
    assert main([*args, str(tmp_path / "bad"), "--dim", "17"]) == 2
    assert "error: --dim must be an output size between 1 and 16; got 17" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
