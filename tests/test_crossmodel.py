"""Cross-model adapters (issue 16): queries embedded by one model, documents by another.

The synthetic problem is the shared ``synthetic`` fixture (16-d documents, queries a distortion of
their relevant documents) seen through a second, "query" model: a fixed linear map of the document
space into another dimension. Its pairs are the corpus texts embedded by both models, so the closed
form start (least squares, Procrustes) can be checked against what it should recover exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from search_adaptor.cli import main
from search_adaptor.data import Dataset
from search_adaptor.embed import Embeddings, embed_dataset
from search_adaptor.encoders.base import Encoder
from search_adaptor.experiment import (
    DOCUMENTS_MODEL,
    PairStart,
    SizedView,
    evaluate_embeddings,
    fit_family,
    protocol,
    run_evaluate,
    run_fit,
    without_held_out,
)
from search_adaptor.model import CompatibilityError, SearchAdaptor, describe_encoder
from search_adaptor.report import render_markdown, save_run
from search_adaptor.retrieval import l2_normalize
from search_adaptor.training import MIN_PAIRS_TO_CHOOSE, RIDGES, _choose_ridge, pair_map, pca_rotation
from search_adaptor.variants import family_variants
from test_store import CountingEncoder

FAST = {"max_steps": 150, "eval_every": 10, "patience": 60, "batch_size": 32}
CROSS = {"mode": "query_only", "init": "lstsq", "loss": "infonce", "in_batch": True, "beta": 0.0}
DOC_MODEL, QUERY_MODEL = "doc-model-16", "query-model"  # fingerprints of precomputed vectors


# -- the synthetic query models ------------------------------------------------------------------------
def _seen_by(synthetic: dict, kind: str, query_dim: int = 12) -> dict:
    """``synthetic`` with its queries (and the corpus, as pairs) embedded by another model: ``x @ M``.

    ``narrow``: a random 16 -> ``query_dim`` map (lossy below 16); ``rotation``: an orthogonal 16 x 16
    map (Procrustes undoes it exactly); ``skew``: a rotation times a non-orthogonal distortion
    (Procrustes only undoes the rotation).
    """
    rng = np.random.default_rng({"narrow": 1, "rotation": 2, "skew": 3}[kind])
    dim = synthetic["D"].shape[1]
    if kind == "narrow":
        M = rng.normal(size=(dim, query_dim))
    else:
        M = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
        if kind == "skew":
            M = (np.eye(dim) + 1.2 * rng.normal(size=(dim, dim)) / np.sqrt(dim)) @ M
    M = M.astype(np.float32)
    return {**synthetic, "Qx": synthetic["Q"] @ M, "P": synthetic["D"] @ M, "M": M}


@pytest.fixture(scope="module")
def narrow(synthetic: dict) -> dict:
    return _seen_by(synthetic, "narrow")


def _emb(data: dict) -> Embeddings:
    """The cross-model Embeddings of ``data``: 12-d (say) queries, 16-d documents, the pairs."""
    return Embeddings(
        data["qids"],
        data["Qx"],
        data["dids"],
        data["D"],
        describe_encoder(DOC_MODEL),
        query_encoder=describe_encoder(QUERY_MODEL),
        pairs=data["P"],
    )


def _fit(data: dict, qrels: object = "labels", **params) -> SearchAdaptor:
    est = SearchAdaptor(**{**FAST, **CROSS, **params})
    return est.fit(
        data["Qx"],
        data["D"],
        data["qrels"] if qrels == "labels" else qrels,
        data["qids"],
        data["dids"],
        encoder=DOC_MODEL,
        query_encoder=QUERY_MODEL,
        pairs=(data["P"], data["D"]),
    )


def _ndcg(data: dict, adapter: object, qrels: dict | None = None) -> float:
    return evaluate_embeddings(_emb(data), qrels or data["qrels"], adapter, ["ndcg@10"])[0]["ndcg@10"]


def _in_space_ndcg(data: dict) -> float:
    """Zero-shot nDCG@10 of the queries embedded by the documents' own model."""
    emb = Embeddings(data["qids"], data["Q"], data["dids"], data["D"], describe_encoder(DOC_MODEL))
    return evaluate_embeddings(emb, data["qrels"], None, ["ndcg@10"])[0]["ndcg@10"]


def closed_form(data: dict, kind: str = "lstsq") -> PairStart:
    """What a cross-model adapter's start computes: unit queries times the pairs' closed-form map."""
    return PairStart(pair_map(l2_normalize(data["P"]), l2_normalize(data["D"]), kind))


# -- 1. what the start and training achieve -----------------------------------------------------------
def test_lstsq_start_is_the_pairs_closed_form_map_and_retrieves_far_better_than_chance(narrow):
    est = _fit(narrow, architecture="linear", alpha=0.0, max_steps=10)  # only the start matters here
    start = est.at_start()
    expected = closed_form(narrow)
    np.testing.assert_allclose(
        start.transform_queries(narrow["Qx"]), expected.transform_queries(narrow["Qx"]), atol=1e-5
    )
    np.testing.assert_allclose(start.transform_corpus(narrow["D"]), l2_normalize(narrow["D"]), atol=1e-6)
    assert start.kept_start_ and not start.is_identity_ and start.query_dim_ == 12
    assert start.start_ == "a least-squares map 12 -> 16 of the paired texts"
    # chance: the same 12 -> 16 shape, but a map that knows nothing of the pairs
    rng = np.random.default_rng(7)
    blind = PairStart(rng.normal(size=(12, 16)).astype(np.float32))
    chance = _ndcg(narrow, blind)
    at_start = _ndcg(narrow, start)
    assert chance < 0.1 and at_start > 0.25 and at_start > 4 * chance
    # what the validation split measured as "zero-shot" is the start, exactly
    val = {q: narrow["qrels"][q] for q in est.val_query_ids_}
    assert _ndcg(narrow, start, val) == pytest.approx(est.zero_shot_score_, abs=1e-6)


def test_lstsq_start_of_a_lossless_wider_query_model_matches_the_documents_own_model(synthetic):
    wide = _seen_by(synthetic, "narrow", query_dim=24)  # 16 -> 24: nothing lost, lstsq inverts it
    start = _fit(wide, architecture="linear", alpha=0.0, max_steps=10).at_start()
    assert start.query_dim_ == 24 and start.dim_ == 16
    assert _ndcg(wide, start) == pytest.approx(_in_space_ndcg(wide), abs=0.02)


_SHARED = np.random.default_rng(99)
_MAP, _MEAN = _SHARED.normal(size=(64, 48)).astype(np.float32), _SHARED.normal(size=64).astype(np.float32)


def _anisotropic_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Texts seen by two models related by a (noisy) linear map, all close to one mean direction as
    real embeddings are: what tells two texts apart is a small share of their variance."""
    rng = np.random.default_rng(seed)
    a = l2_normalize((_MEAN + 0.03 * rng.normal(size=(n, 64))).astype(np.float32))
    return a, l2_normalize(a @ _MAP + 0.01 * rng.normal(size=(n, 48)).astype(np.float32))


def test_the_ridge_is_chosen_by_held_out_self_retrieval():
    """A strong ridge flattens the low-variance directions that tell texts apart: the choice on
    held-out pairs goes weaker, and the map it gives retrieves each text's own document better
    than the strongest ridge's; it is deterministic, and a few pairs get the strongest ridge."""
    a, b = _anisotropic_pairs(2000)
    chosen = _choose_ridge(a.astype(np.float64), b.astype(np.float64))
    assert chosen < RIDGES[-1]
    assert np.array_equal(pair_map(a, b), pair_map(a, b, ridge=chosen))
    assert np.array_equal(pair_map(a, b), pair_map(a, b))
    test_a, test_b = _anisotropic_pairs(500, seed=1)

    def self_top1(W: np.ndarray) -> float:
        return float(((l2_normalize(test_a @ W) @ test_b.T).argmax(1) == np.arange(500)).mean())

    assert self_top1(pair_map(a, b)) > 0.9 > 0.1 > self_top1(pair_map(a, b, ridge=RIDGES[-1]))
    few_a, few_b = a[: MIN_PAIRS_TO_CHOOSE - 1], b[: MIN_PAIRS_TO_CHOOSE - 1]
    assert np.array_equal(pair_map(few_a, few_b), pair_map(few_a, few_b, ridge=RIDGES[-1]))


def test_procrustes_start_undoes_a_rotation_exactly(synthetic):
    rotated = _seen_by(synthetic, "rotation")
    start = _fit(rotated, init="procrustes", max_steps=10).at_start()
    np.testing.assert_allclose(start.transform_queries(rotated["Qx"]), l2_normalize(rotated["Q"]), atol=1e-4)
    assert _ndcg(rotated, start) == pytest.approx(_in_space_ndcg(rotated), abs=1e-6)


@pytest.mark.parametrize("variant", [name for name, _ in family_variants("cross")])
def test_every_cross_variant_learns_from_labels_beyond_its_start(narrow, variant):
    params = dict(family_variants("cross"))[variant]
    est = _fit(narrow, **params)
    assert est.best_step_ > 0 and est.best_score_ > est.zero_shot_score_ + 0.1
    assert est.val_metric_ == "ndcg@10"
    start = est.at_start()
    assert _ndcg(narrow, est) > _ndcg(narrow, start) + 0.1
    # the start kept no reference to the weights training moved on
    assert not np.allclose(est.transform_queries(narrow["Qx"]), start.transform_queries(narrow["Qx"]))


def test_alignment_trains_on_pairs_alone_and_recovers_what_procrustes_misses(synthetic):
    skew = _seen_by(synthetic, "skew")
    params = {"architecture": "linear", "init": "procrustes", "loss": "alignment", "alpha": 0.0, "lr": 1e-2}
    params.update(max_steps=400, patience=400)
    est = _fit(skew, qrels=None, **params)
    assert est.val_metric_ == "neighbours@10" and est.val_query_ids_ == []
    assert est.n_train_queries_ == est.n_val_queries_ == 0  # corpus pairs alone train and validate
    assert est.best_step_ > 0 and est.best_score_ > est.zero_shot_score_ + 0.03
    start, trained = _ndcg(skew, est.at_start()), _ndcg(skew, est)
    assert trained > start + 0.07 and trained > 0.8 * _in_space_ndcg(skew)
    # labels play no part: given or not, the same adapter comes out
    with_labels = _fit(skew, **params)
    np.testing.assert_array_equal(
        with_labels.transform_queries(skew["Qx"]), est.transform_queries(skew["Qx"])
    )


def test_alignment_with_the_training_queries_texts_validates_on_held_out_queries_labels_unused(synthetic):
    """The queries named in qrels become paired texts (the documents' model's vector of each query
    is ``Q``, the query model's ``Qx``): a share validates, the rest trains; grades and the queries
    outside qrels (the test queries) play no part; the start stays the corpus pairs' map."""
    skew = _seen_by(synthetic, "skew")
    qids, train = skew["qids"], {q: skew["qrels"][q] for q in skew["qids"][:100]}
    params = {**FAST, **CROSS, "architecture": "linear", "init": "procrustes", "loss": "alignment"}
    params.update(alpha=0.0, lr=1e-2, max_steps=400, patience=400)

    def fit(qrels: dict, query_pairs: np.ndarray) -> SearchAdaptor:
        est = SearchAdaptor(**params)
        return est.fit(
            skew["Qx"],
            skew["D"],
            qrels,
            qids,
            skew["dids"],
            encoder=DOC_MODEL,
            query_encoder=QUERY_MODEL,
            pairs=(skew["P"], skew["D"]),
            query_pairs=query_pairs,
        )

    est = fit(train, skew["Q"])
    assert est.val_metric_ == "neighbours@10"
    assert len(est.val_query_ids_) == 20 and set(est.val_query_ids_) <= set(train)
    assert est.n_train_queries_ == 80  # the other 80 queries' texts (beside every corpus pair)
    np.testing.assert_allclose(  # the start is the corpus pairs' closed form, as evaluate rebuilds it
        est.at_start().transform_queries(skew["Qx"]),
        closed_form(skew, "procrustes").transform_queries(skew["Qx"]),
        atol=1e-6,
    )
    assert est.best_step_ > 0 and _ndcg(skew, est) > _ndcg(skew, est.at_start()) + 0.05
    # labels unused: other grades, and anything in the rows of queries outside qrels, change nothing
    regraded = {q: {d: 7 for d in rel} for q, rel in train.items()}
    scrambled = skew["Q"].copy()
    scrambled[100:] = np.random.default_rng(0).normal(size=scrambled[100:].shape)
    again = fit(regraded, scrambled)
    np.testing.assert_array_equal(again.transform_queries(skew["Qx"]), est.transform_queries(skew["Qx"]))
    wrong = r"query_pairs: expected the 160 query texts .*\(160, 16\); got \(50, 16\)"
    with pytest.raises(ValueError, match=wrong):
        fit(train, skew["Q"][:50])


def test_more_pairs_train_the_map_beside_the_corpus_pairs_and_leave_the_start_alone(synthetic):
    skew = _seen_by(synthetic, "skew")
    more = (skew["Qx"][:100], skew["Q"][:100])  # further texts (queries, here) by both models
    params = {
        "architecture": "linear",
        "init": "procrustes",
        "loss": "alignment",
        "alpha": 0.0,
        "max_steps": 30,
    }
    alone = _fit(skew, qrels=None, **params)
    est = SearchAdaptor(**{**FAST, **CROSS, **params}).fit(
        skew["Qx"], skew["D"], None, skew["qids"], skew["dids"], pairs=(skew["P"], skew["D"]), more_pairs=more
    )
    assert est.n_train_queries_ == alone.n_train_queries_ == 0  # paired texts, no query of the qrels
    assert not np.allclose(  # the further pairs trained it: not the map the corpus pairs alone give
        est.transform_queries(skew["Qx"]), alone.transform_queries(skew["Qx"]), atol=1e-4
    )
    np.testing.assert_array_equal(
        est.at_start().transform_queries(skew["Qx"]), alone.at_start().transform_queries(skew["Qx"])
    )
    with pytest.raises(
        ValueError,
        match=r"more_pairs: expected \(100, 16\) and \(100, 16\) arrays .* got \(100, 16\) and \(100, 12\)",
    ):
        SearchAdaptor(**{**FAST, **CROSS, **params}).fit(
            skew["Qx"], skew["D"], None, pairs=(skew["P"], skew["D"]), more_pairs=(more[0], more[1][:, :12])
        )
    with pytest.raises(ValueError, match="more_pairs join the pairs"):
        SearchAdaptor(**{**FAST, **CROSS, "loss": "infonce", "init": "identity"}).fit(
            skew["Qx"], skew["D"], skew["qrels"], skew["qids"], skew["dids"], more_pairs=more
        )


# -- 2. fitted attributes, widths and per-side encoder checks -------------------------------------------
def test_fitted_attributes_and_output_widths(narrow):
    est = _fit(narrow, max_steps=20)
    assert (est.query_dim_, est.dim_) == (12, 16)
    assert est.query_encoder_ == describe_encoder(QUERY_MODEL)
    assert est.encoder_ == describe_encoder(DOC_MODEL)
    assert est.query_net_.project is not None and tuple(est.query_net_.project.weight.shape) == (16, 12)
    q = est.transform_queries(narrow["Qx"][:5])
    assert q.shape == (5, 16) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        est.transform_corpus(narrow["D"][:5]), l2_normalize(narrow["D"][:5]), atol=1e-6
    )
    assert est.score(narrow["Qx"][:5], narrow["D"]).shape == (5, len(narrow["D"]))


def test_each_side_refuses_the_other_models_vectors_and_dimension(narrow):
    est = _fit(narrow, max_steps=20)
    with pytest.raises(
        CompatibilityError, match=r"queries: .*expects 12-d embeddings of query-model, got 16-d"
    ):
        est.transform_queries(narrow["Q"][:3])  # queries of the documents' model
    with pytest.raises(
        CompatibilityError, match=r"corpus: .*expects 16-d embeddings of doc-model-16, got 12-d"
    ):
        est.transform_corpus(narrow["P"][:3])
    est.transform_queries(narrow["Qx"][:3], encoder=QUERY_MODEL)
    est.transform_corpus(narrow["D"][:3], encoder=DOC_MODEL)
    with pytest.raises(
        CompatibilityError, match=r"trained on embeddings of query-model but these come from doc-model-16"
    ):
        est.transform_queries(narrow["Qx"][:3], encoder=DOC_MODEL)
    with pytest.raises(
        CompatibilityError, match=r"trained on embeddings of doc-model-16 but these come from query-model"
    ):
        est.transform_corpus(narrow["D"][:3], encoder=QUERY_MODEL)
    est.check_encoder(QUERY_MODEL, dim=12, kind="query")
    with pytest.raises(CompatibilityError, match=r"expects 12-d embeddings of query-model, got 16-d"):
        est.check_encoder(QUERY_MODEL, dim=16, kind="query")


def test_one_model_for_both_sides_is_not_a_cross_model_adapter(synthetic, tmp_path):
    est = SearchAdaptor(**{**FAST, "max_steps": 20}, mode="query_only", loss="infonce").fit(
        synthetic["Q"],
        synthetic["D"],
        synthetic["qrels"],
        synthetic["qids"],
        synthetic["dids"],
        encoder=DOC_MODEL,
        query_encoder=DOC_MODEL,
    )
    assert est.query_encoder_ == {} and est.query_dim_ == est.dim_ == 16
    config = json.loads((est.save(tmp_path / "a") / "config.json").read_text())
    assert "query_encoder" not in config and "query_dim" not in config


def test_queries_of_another_dimension_need_a_map_into_the_documents_space(narrow):
    with pytest.raises(ValueError, match=r"12-d but corpus embeddings are 16-d.*init='lstsq' with pairs"):
        _fit(narrow, init="identity")
    with pytest.raises(ValueError, match=r"pairs map the queries of another model.*not 'shared'"):
        _fit(narrow, mode="shared")
    with pytest.raises(ValueError, match=r"init='procrustes' is a rotation: 12-d and 16-d need init='lstsq'"):
        _fit(narrow, init="procrustes")


# -- 3. saved form ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(narrow, tmp_path_factory) -> tuple[SearchAdaptor, Path]:
    """A trained cross-separate adapter (query and corpus networks) and its folder."""
    est = _fit(narrow, **dict(family_variants("cross"))["cross-separate"], max_steps=60)
    assert est.best_step_ > 0
    return est, est.save(tmp_path_factory.mktemp("cross") / "adapter")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _edit(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_save_load_round_trip_gives_identical_outputs_and_records_the_query_model(narrow, saved):
    est, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["query_dim"] == 12 and config["dim"] == 16
    assert config["query_encoder"] == describe_encoder(QUERY_MODEL)
    assert config["encoder"]["fingerprint"] == DOC_MODEL
    assert config["hyperparameters"]["init"] == "lstsq" and config["hyperparameters"]["mode"] == "separate"
    again = SearchAdaptor.load(folder)
    assert (again.query_dim_, again.dim_, again.query_encoder_) == (12, 16, est.query_encoder_)
    assert again.fingerprint_ == est.fingerprint_
    np.testing.assert_array_equal(again.transform_queries(narrow["Qx"]), est.transform_queries(narrow["Qx"]))
    np.testing.assert_array_equal(again.transform_corpus(narrow["D"]), est.transform_corpus(narrow["D"]))
    with pytest.raises(RuntimeError, match=r"at_start\(\) needs the adapter fit\(\) returned"):
        again.at_start()


def test_a_loaded_adapter_refuses_the_document_models_queries_and_another_query_model(narrow, saved):
    again = SearchAdaptor.load(saved[1])
    with pytest.raises(CompatibilityError, match=r"expects 12-d embeddings of query-model, got 16-d"):
        again.transform_queries(narrow["Q"])
    with pytest.raises(
        CompatibilityError, match=r"trained on embeddings of query-model but these come from other"
    ):
        again.transform_queries(narrow["Qx"], encoder="other")
    with pytest.raises(
        CompatibilityError, match=r"trained on embeddings of query-model but these come from doc-model"
    ):
        again.transform_queries(narrow["Qx"], encoder=DOC_MODEL)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["query_encoder"].update(fingerprint="another-query-model"),
        lambda c: c.pop("query_encoder"),  # queries would then be checked against the documents' model
    ],
    ids=["query encoder edited", "query encoder removed"],
)
def test_the_checksum_covers_the_query_encoder(saved, tmp_path, change):
    folder = _copy(saved[1], tmp_path)
    _edit(folder, change)
    with pytest.raises(
        ValueError, match=r"config\.json: checksum does not match .*changed or damaged"
    ) as exc:
        SearchAdaptor.load(folder)
    assert "\n" not in str(exc.value)


def test_a_query_dim_that_does_not_fit_the_weights_is_refused(saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    _edit(folder, lambda c: c.update(query_dim=16))
    with pytest.raises(
        ValueError, match=r"query\.project\.weight.*\(16, 12\).*\(16, 16\).*do not belong together"
    ):
        SearchAdaptor.load(folder)
    _edit(folder, lambda c: c.update(query_dim=0))
    with pytest.raises(ValueError, match=r"field 'query_dim' must be in \[1, 65536\]"):
        SearchAdaptor.load(folder)


# -- 4. pairs ---------------------------------------------------------------------------------------
def _nan_row(P: np.ndarray) -> np.ndarray:
    bad = P.copy()
    bad[3, 2] = np.nan
    return bad


BAD_PAIRS = {
    "fewer query-side rows": (
        lambda d: (d["P"][:-1], d["D"]),
        r"pairs: expected \(299, 12\) and \(299, 16\)",
    ),
    "query side of the documents' width": (lambda d: (d["D"], d["D"]), r"pairs: expected .*got \(300, 16\)"),
    "document side of the queries' width": (lambda d: (d["P"], d["P"]), r"got \(300, 12\) and \(300, 12\)"),
    "NaN": (lambda d: (_nan_row(d["P"]), d["D"]), r"pairs\[0\]: row 3 contains NaN or inf"),
    "1-D": (lambda d: (d["P"][0], d["D"][0]), r"pairs\[0\]: expected a non-empty 2-D array"),
    "empty": (lambda d: (d["P"][:0], d["D"][:0]), r"pairs\[0\]: expected a non-empty 2-D array"),
    "too few": (lambda d: (d["P"][:9], d["D"][:9]), r"pairs: 9 paired texts are too few .* at least 10"),
}


@pytest.mark.parametrize("case", BAD_PAIRS)
def test_bad_pairs_are_refused_before_training(narrow, case):
    make, message = BAD_PAIRS[case]
    est = SearchAdaptor(**{**FAST, **CROSS})
    with pytest.raises(ValueError, match=message):
        est.fit(
            narrow["Qx"], narrow["D"], narrow["qrels"], narrow["qids"], narrow["dids"], pairs=make(narrow)
        )
    assert not hasattr(est, "query_net_")


def test_a_text_either_model_gives_a_zero_vector_is_left_out_of_the_pairs(narrow):
    """A static model gives a zero vector to a text none of whose words it knows: that pair maps
    nothing to anything, so the fit is the one without it (it used to refuse the whole fit)."""
    n = narrow
    P, D = n["P"].copy(), n["D"].copy()
    P[5], D[9] = 0.0, 0.0
    keep = np.setdiff1d(np.arange(len(P)), [5, 9])
    fits = [
        SearchAdaptor(**{**FAST, **CROSS}).fit(n["Qx"], n["D"], n["qrels"], n["qids"], n["dids"], pairs=p)
        for p in ((P, D), (n["P"][keep], n["D"][keep]))
    ]
    assert np.array_equal(fits[0].transform_queries(n["Qx"]), fits[1].transform_queries(n["Qx"]))


def test_evaluate_rebuilds_the_start_from_the_pairs_the_fit_used(narrow):
    """A pair either model gives a zero vector (an image document, for a text-only query model) is
    left out of the fit's start; evaluate's rebuilt start kept it, and scored another zero-shot."""
    n = narrow
    P = n["P"].copy()
    P[:7] = 0.0
    est = SearchAdaptor(**{**FAST, **CROSS, "max_steps": 10}).fit(
        n["Qx"], n["D"], n["qrels"], n["qids"], n["dids"], pairs=(P, n["D"])
    )
    rebuilt = PairStart.of(est, dataclasses.replace(_emb(n), pairs=P))
    np.testing.assert_allclose(
        rebuilt.transform_queries(n["Qx"]), est.at_start().transform_queries(n["Qx"]), atol=1e-5
    )


@pytest.mark.parametrize(
    "params",
    [
        {"init": "lstsq"},
        {"init": "procrustes"},
        {"gamma": 0.1, "init": "pca", "mode": "separate"},
        {"loss": "alignment"},
    ],
    ids=["lstsq", "procrustes", "gamma", "alignment"],
)
def test_what_needs_pairs_says_so_without_them(synthetic, params):
    est = SearchAdaptor(**{**FAST, **CROSS, **params})
    with pytest.raises(
        ValueError, match=r"need pairs: the same texts embedded by the query model and by the"
    ):
        est.fit(synthetic["Q"], synthetic["D"], synthetic["qrels"], synthetic["qids"], synthetic["dids"])


# -- 5. experiment: families and run_fit ------------------------------------------------------------------
def _dataset(data: dict, n_train: int = 100) -> Dataset:
    qids = data["qids"]
    return Dataset(
        "synthetic-cross",
        Path("synthetic-cross"),
        list(data["dids"]),
        [f"doc {d}" for d in data["dids"]],
        {q: f"query {q}" for q in qids},
        {
            "train": {q: data["qrels"][q] for q in qids[:n_train]},
            "test": {q: data["qrels"][q] for q in qids[n_train:]},
        },
    )


@pytest.fixture(scope="module")
def cross_run(narrow):
    return run_fit(_dataset(narrow), _emb(narrow), overrides=FAST, n_jobs=2)


def test_run_fit_on_another_models_queries_trains_family_cross(cross_run):
    report = cross_run.report
    assert report["family"] == "cross" and report["protocol"] == "test"
    names = [name for name, _ in family_variants("cross")]
    assert [c["variant"] for c in report["validation"]["candidates"]] == names
    assert report["selected"] in names
    adapter = cross_run.adapter
    assert adapter.query_encoder_ == describe_encoder(QUERY_MODEL) and adapter.query_dim_ == 12
    zero, adapted = report["metrics"]["zero-shot"]["ndcg@10"], report["metrics"]["adapted"]["ndcg@10"]
    assert adapted > zero + 0.1 and report["significance"]["p_value"] < 0.05


def test_run_fit_reports_the_start_as_zero_shot(narrow, cross_run):
    test = _dataset(narrow).split("test")
    expected = evaluate_embeddings(_emb(narrow), test, closed_form(narrow))[0]
    for metric, value in cross_run.report["metrics"]["zero-shot"].items():
        assert value == pytest.approx(expected[metric], abs=1e-4), metric


def test_reports_name_both_models_and_score_the_documents_model_on_its_own_queries(narrow, tmp_path):
    """What the map aims at, scored beside it: the query texts embedded by the documents' model
    (``query_pairs``, which the store always has for a cross-model run) against its documents."""
    emb = dataclasses.replace(_emb(narrow), query_pairs=narrow["Q"])
    test = _dataset(narrow).split("test")
    reference = _in_space_ndcg({**narrow, "qrels": test})
    run = run_fit(_dataset(narrow), emb, overrides=FAST, unsupervised=True, n_jobs=1)
    evaluated = run_evaluate(_dataset(narrow), emb, run.adapter)
    for report in (run.report, evaluated.report):
        assert report["query_model"] == QUERY_MODEL and report["model"] == DOC_MODEL
        assert report["query_encoder_fingerprint"] == describe_encoder(QUERY_MODEL)["fingerprint"]
        assert report["metrics"][DOCUMENTS_MODEL]["ndcg@10"] == pytest.approx(reference, abs=1e-4)
        assert 0 < report["significance"]["p_value_vs_documents_model"] <= 1
        text = render_markdown(report)
        assert f"Queries: `{QUERY_MODEL}`; documents: `{DOC_MODEL}`" in text
        assert "zero-shot here is the map's start" in text and f"| {DOCUMENTS_MODEL} |" in text
        assert "what the map aims at: adapted is" in text
    # one model, or no query_pairs: no such row, and nothing claims a query model
    assert DOCUMENTS_MODEL not in run_evaluate(_dataset(narrow), _emb(narrow), run.adapter).report["metrics"]
    save_run(run, tmp_path / "run")
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert f"Query encoder: `{QUERY_MODEL}`" in card and f"| {DOCUMENTS_MODEL} |" in card


def test_evaluate_scores_a_saved_cross_model_adapter_against_the_start_rebuilt_from_the_pairs(
    narrow, cross_run, tmp_path
):
    loaded = SearchAdaptor.load(cross_run.adapter.save(tmp_path / "adapter"))
    report = run_evaluate(_dataset(narrow), _emb(narrow), loaded).report
    for system in ("zero-shot", "adapted"):  # the same numbers fit reported on the same test split
        for metric, value in cross_run.report["metrics"][system].items():
            assert report["metrics"][system][metric] == pytest.approx(value, abs=1e-4), (system, metric)
    with pytest.raises(ValueError, match="needs the pairs"):
        run_evaluate(_dataset(narrow), dataclasses.replace(_emb(narrow), pairs=None), loaded)


def test_the_report_of_a_cross_model_fit_and_evaluate_draws_its_figures(narrow, cross_run, tmp_path, capsys):
    """The similarity figure's left panel is the start (the queries have no zero-shot similarity)."""
    pytest.importorskip("matplotlib")
    loaded = SearchAdaptor.load(cross_run.adapter.save(tmp_path / "adapter"))
    evaluated = run_evaluate(_dataset(narrow), _emb(narrow), loaded)
    for name, run in (("fit", cross_run), ("evaluate", evaluated)):
        assert run.reference is not None
        save_run(run, tmp_path / name)
        assert (tmp_path / name / "plots" / "similarity.png").stat().st_size > 0, name
    assert "plot failed" not in capsys.readouterr().err


def test_a_same_width_query_model_never_maps_the_documents(synthetic):
    """mode 'shared' would send the documents through the query model's map: refused at any width."""
    rotated = _seen_by(synthetic, "rotation")
    with pytest.raises(ValueError, match=r"pairs map the queries of another model.*not 'shared'"):
        _fit(rotated, mode="shared", init="procrustes")


def test_transform_of_more_rows_than_one_chunk_keeps_the_documents_width(narrow):
    est = _fit(narrow, architecture="linear", max_steps=10)
    rows = np.random.default_rng(0).normal(size=(65_537, 12)).astype(np.float32)
    out = est.transform_queries(rows)
    assert out.shape == (65_537, 16)
    np.testing.assert_allclose(out[-5:], est.transform_queries(rows[-5:]), atol=1e-6)


def test_run_fit_unlabelled_trains_on_the_pairs_and_uses_labels_only_to_score(narrow):
    run = run_fit(_dataset(narrow), _emb(narrow), overrides=FAST, unsupervised=True, n_jobs=1)
    report = run.report
    assert report["family"] == "cross-unlabelled"
    assert [c["variant"] for c in report["validation"]["candidates"]] == ["cross-unlabelled"]
    # a kept start is the closed-form map, never "identity (zero-shot)"
    kept = f"its start ({run.adapter.start_})"
    assert report["selected"] == ("cross-unlabelled" if run.adapter.best_step_ else kept)
    assert run.adapter.val_metric_ == "neighbours@10" and run.adapter.query_dim_ == 12
    test = _dataset(narrow).split("test")
    expected = evaluate_embeddings(_emb(narrow), test, closed_form(narrow), ["ndcg@10"])[0]["ndcg@10"]
    assert report["metrics"]["zero-shot"]["ndcg@10"] == pytest.approx(expected, abs=1e-4)
    assert report["metrics"]["adapted"]["ndcg@10"] >= expected - 0.02  # the start is a candidate


@pytest.fixture(scope="module")
def unlabelled_run(narrow):
    """A ``cross-unlabelled`` fit (seed 3) that pairs the training queries' texts (``query_pairs``)."""
    emb = dataclasses.replace(_emb(narrow), query_pairs=narrow["Q"])
    return run_fit(_dataset(narrow), emb, seed=3, overrides=FAST, unsupervised=True, n_jobs=1)


def test_paired_texts_leave_out_the_queries_each_fit_draws_to_validate_on(narrow, cross_run, unlabelled_run):
    """A query log (``fit --pairs``) holds the training queries' texts: with no validation split, the
    share of them a fit draws to validate on must not train its map (the validation score, which
    stops it early and chooses it, jumped from 0.50 to 0.91 on SciFact). Their texts are left out,
    up to case and spacing, and counted, by the fit's own draw (its seed, its share), labels or not;
    the other training texts stay."""
    dataset = _dataset(narrow)
    train = sorted(dataset.split("train"))
    log = [f"  {dataset.queries[q].upper()} " for q in train]
    for seed, adapter in ((0, cross_run.adapter), (3, unlabelled_run.adapter)):
        kept, left_out = without_held_out([*log, "a text of its own"], dataset, protocol(dataset, seed=seed))
        validated = set(adapter.val_query_ids_)
        assert len(validated) == round(0.2 * len(train)) == left_out, seed
        assert kept == [text for q, text in zip(train, log, strict=True) if q not in validated] + [
            "a text of its own"
        ]
    assert set(cross_run.adapter.val_query_ids_) != set(unlabelled_run.adapter.val_query_ids_)
    # k-fold selection holds every training query out once to choose: none of their texts may pair
    kept, left_out = without_held_out(log, dataset, protocol(dataset), selection="kfold")
    assert (kept, left_out) == ([], len(train))


def test_evaluate_counts_the_queries_whose_texts_trained_an_unlabelled_map(narrow, unlabelled_run, tmp_path):
    """Without labels the training queries' texts train the map (labels unused): ``evaluate`` on them
    must not call its scores held-out. The adapter records their texts (``fit``) and ids (Python);
    one saved before it did records neither, and is judged as it was."""
    dataset, adapter = _dataset(narrow), unlabelled_run.adapter
    emb = dataclasses.replace(_emb(narrow), query_pairs=narrow["Q"])
    assert set(adapter.train_query_ids_) | set(adapter.val_query_ids_) == set(dataset.split("train"))
    for split, n_seen in (("train", 100), ("test", 0)):
        report = run_evaluate(dataset, emb, adapter, split).report
        assert report["seen_in_training"] == {"n": n_seen, "of": report["n_test_queries"], "by": "text"}
    python_fit = copy.copy(adapter)
    python_fit.query_text_digests_ = None  # a fit in Python records the ids alone
    assert run_evaluate(dataset, emb, python_fit, "train").report["seen_in_training"]["n"] == 100
    folder = adapter.save(tmp_path / "adapter")
    _edit(folder, lambda config: config["training"].update(train_query_ids=[], query_text_digests=[]))
    older_fit = SearchAdaptor.load(folder)  # an older `fit`'s file: no ids, no digests
    _edit(folder, lambda config: config["training"].pop("query_text_digests"))
    older_python_fit = SearchAdaptor.load(folder)
    for older, by in ((older_fit, "text"), (older_python_fit, "id")):
        seen = run_evaluate(dataset, emb, older, "train").report["seen_in_training"]
        assert seen == {"n": 0, "of": 100, "by": by}


@pytest.mark.parametrize(
    ("n_texts", "n_queries", "share", "from_queries"),
    [(1000, 20, 0.1, 2), (1000, 20, 0.01, 1), (1000, 5, 0.9, 5), (30, 0, None, 0), (1000, 20, None, None)],
)
def test_unlabelled_batches_keep_the_query_texts_share_however_many_texts_are_added(
    n_texts, n_queries, share, from_queries
):
    """Without labels, query texts beside more paired texts keep the share of each batch they have
    among the corpus texts alone (at least one; all of them when fewer): 48,000 corpus sentences beside
    647 query texts would otherwise leave about one a batch. With nothing added, pairs are drawn
    uniformly (``share`` None)."""
    from types import SimpleNamespace

    from search_adaptor.networks import build_nets
    from search_adaptor.training import _Alignment

    rng = np.random.default_rng(0)
    n = n_texts + n_queries
    a, b = (l2_normalize(rng.normal(size=(n, 8)).astype(np.float32)) for _ in range(2))
    docs = l2_normalize(rng.normal(size=(50, 8)).astype(np.float32))
    query_net, _ = build_nets(8, None, "linear", True, "query_only", projection=True)
    hp = SimpleNamespace(batch_size=16, temperature=0.05, alpha=0.0)
    objective = _Alignment(hp, (a, b), (a[:4], b[:4]), [], n_queries, share, docs, query_net, None, rng)
    drawn = [objective.batch_rows() for _ in range(50)]
    for rows in drawn:
        assert len(rows) == len(set(rows.tolist())) == 16
        if from_queries is not None:
            assert (rows >= n_texts).sum() == from_queries
    if from_queries is None:  # uniform: the 20 query rows of 1,020 turn up about 2% of the time
        assert 0 < sum((rows >= n_texts).sum() for rows in drawn) < 0.1 * 16 * 50
    assert torch.isfinite(objective.loss())


@pytest.mark.parametrize(
    ("family", "dims", "unsupervised", "expected"),
    [
        ("auto", None, False, "cross"),
        ("cross", None, False, "cross"),
        ("auto", None, True, "cross-unlabelled"),
        ("auto", (8,), False, "cross-matryoshka"),
        ("cross-matryoshka", (4, 8), False, "cross-matryoshka"),
    ],
)
def test_family_of_a_cross_model_fit(family, dims, unsupervised, expected):
    assert fit_family(family, dims, unsupervised, cross=True) == expected


@pytest.mark.parametrize(
    ("family", "dims", "unsupervised", "message"),
    [
        ("paper", None, False, r"queries of another model train family cross, not paper"),
        ("cross", (8,), False, r"train family cross-matryoshka, not cross"),
        ("cross", None, True, r"train family cross-unlabelled, not cross"),
        ("cross-unlabelled", None, False, r"train family cross, not cross-unlabelled"),
        ("auto", (8,), True, r"no prefixes to train: drop --dims or --unlabelled"),
        ("cross-matryoshka", None, False, r"train family cross, not cross-matryoshka"),
    ],
)
def test_family_errors_for_a_cross_model_fit(family, dims, unsupervised, message):
    with pytest.raises(ValueError, match=message):
        fit_family(family, dims, unsupervised, cross=True)


def test_run_fit_with_dims_trains_a_cross_model_adapters_prefixes_against_baselines_of_its_start(narrow):
    """Both sides rotated onto the corpus's PCA at the start (the full width keeps the map's scores);
    each size scored against the start truncated and projected on the same PCA."""
    run = run_fit(_dataset(narrow), _emb(narrow), overrides=FAST, dims=(4, 8), n_jobs=1)
    report, adapter = run.report, run.adapter
    assert report["family"] == "cross-matryoshka" and adapter.dims == (4, 8)
    metrics = report["metrics"]
    test = _dataset(narrow).split("test")
    start = closed_form(narrow)
    expected = evaluate_embeddings(_emb(narrow), test, start, ["ndcg@10"])[0]["ndcg@10"]
    assert metrics["zero-shot"]["ndcg@10"] == pytest.approx(expected, abs=1e-4)
    for m in (4, 8):
        assert {f"zero-shot@{m}", f"pca@{m}", f"adapted@{m}"} <= set(metrics)
        truncated = evaluate_embeddings(_emb(narrow), test, SizedView(None, m, base=start), ["ndcg@10"])[0]
        assert metrics[f"zero-shot@{m}"]["ndcg@10"] == pytest.approx(truncated["ndcg@10"], abs=1e-4)
        assert metrics[f"adapted@{m}"]["ndcg@10"] > metrics[f"zero-shot@{m}"]["ndcg@10"]
        assert adapter.transform_queries(narrow["Qx"][:3], dim=m).shape == (3, m)
        assert adapter.transform_corpus(narrow["D"][:3], dim=m).shape == (3, m)
    # the start: the prefixes are the PCA baseline, the full width the pairs' map
    begin = adapter.at_start()
    rotation = pca_rotation(l2_normalize(narrow["D"]))
    pca4 = SizedView(None, 4, rotation, base=start)
    np.testing.assert_allclose(
        begin.transform_queries(narrow["Qx"], dim=4), pca4.transform_queries(narrow["Qx"]), atol=1e-4
    )
    full = begin.transform_queries(narrow["Qx"]) @ begin.transform_corpus(narrow["D"]).T
    mapped = start.transform_queries(narrow["Qx"]) @ start.transform_corpus(narrow["D"]).T
    np.testing.assert_allclose(full, mapped, atol=1e-4)
    # evaluate on the same split scores every size as fit did, its start rebuilt from the pairs
    evaluated = run_evaluate(_dataset(narrow), _emb(narrow), adapter).report["metrics"]
    assert set(evaluated) == set(metrics)
    for system, values in metrics.items():
        assert evaluated[system]["ndcg@10"] == pytest.approx(values["ndcg@10"], abs=1e-4), system
    # an index at a size: documents cut to it, another model's queries (12-d) searched at it
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import AdaptedIndex

    index = AdaptedIndex.from_vectors(
        adapter, narrow["dids"], narrow["D"], describe_encoder(DOC_MODEL), size=4
    )
    hits = index.search(narrow["Qx"][:2], k=3)
    expected = index.search_adapted(adapter.transform_queries(narrow["Qx"][:2], dim=4), k=3)
    assert [[d for d, _ in h] for h in hits] == [[d for d, _ in h] for h in expected]


def test_run_fit_refuses_another_family_before_training(narrow):
    with pytest.raises(ValueError, match=r"queries of another model train family cross"):
        run_fit(_dataset(narrow), _emb(narrow), family="query-only")


def test_zero_shot_across_two_embedding_spaces_is_refused(narrow):
    with pytest.raises(
        ValueError, match=r"queries of query-model and documents of doc-model-16 are in two spaces"
    ):
        evaluate_embeddings(_emb(narrow), narrow["qrels"])


# -- 6. embedding a dataset with two models, and the index ----------------------------------------------
def _write_beir(root: Path, words: list[str], n_docs: int = 40, n_train: int = 16, n_test: int = 16) -> Path:
    """A small BEIR folder of word-bag texts: query ``i`` is three words of document ``i``."""
    rng = random.Random(0)
    docs = [rng.sample(words, 5) for _ in range(n_docs)]
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(w)}) + "\n" for i, w in enumerate(docs)
        )
    )
    queries = [" ".join(rng.sample(docs[i], 3)) for i in range(n_train + n_test)]
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries))
    )
    for split, ids in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        rows = "".join(f"q{i}\td{i}\t1\n" for i in ids)
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return root


WORDS = [f"w{i}" for i in range(30)]


def test_precomputed_vectors_with_a_query_model_are_refused_in_one_line(tmp_path, capsys):
    data = _write_beir(tmp_path / "tiny", WORDS)
    args = ["fit", str(data), "--embeddings", str(tmp_path / "vec"), "--query-model", "static", "--out"]
    assert main([*args, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "--embeddings brings vectors of one model for queries and documents alike; drop "
        "the --query-* flags, or embed with both models instead of --embeddings"
    )


def test_a_plan_counts_what_a_cross_model_embedding_sends(tmp_path):
    """``embed --dry-run`` with a query model: the pairs of both models count, and the plan says
    exactly what the run then sends, then that nothing is left."""
    from search_adaptor.data import load_beir
    from search_adaptor.embed import plan_embedding

    ds = load_beir(_write_beir(tmp_path / "tiny", WORDS))
    docs, queries = CountingEncoder(dim=16, batch_size=64), CountingEncoder(dim=8, batch_size=64)
    queries.model = "fake-query-model"
    plan = plan_embedding(ds, docs, tmp_path / "cache", queries)
    assert (plan.unique, plan.cached, plan.to_send) == (2 * (32 + 40), 0, 2 * (32 + 40))
    assert plan.fingerprint == f"{queries.fingerprint} and {docs.fingerprint}"
    one_model = plan_embedding(ds, docs, tmp_path / "cache")
    assert (one_model.to_send, one_model.fingerprint) == (32 + 40, docs.fingerprint)
    emb = embed_dataset(ds, docs, tmp_path / "cache", progress=False, query_encoder=queries)
    assert emb.stats.encoded == plan.to_send
    after = plan_embedding(ds, docs, tmp_path / "cache", queries)
    assert (after.cached, after.to_send) == (plan.unique, 0)


def test_embed_dataset_with_a_query_model_embeds_queries_and_pairs_with_it(tmp_path):
    from search_adaptor.data import load_beir

    ds = load_beir(_write_beir(tmp_path / "tiny", WORDS))
    docs, queries = CountingEncoder(dim=16, batch_size=64), CountingEncoder(dim=8, batch_size=64)
    emb = embed_dataset(ds, docs, tmp_path / "cache", progress=False, query_encoder=queries)
    assert emb.queries.shape == (32, 8) and emb.corpus.shape == (40, 16) and emb.pairs.shape == (40, 8)
    assert emb.query_encoder == queries.info() and emb.encoder == docs.info()
    assert "(queries 8-d of fake-model, documents 16-d, " in emb.describe()
    # pairs: the corpus texts embedded as queries by the query model, row for row with the corpus
    np.testing.assert_allclose(emb.pairs, queries.encode_queries(ds.doc_texts), rtol=1e-6)
    np.testing.assert_allclose(emb.queries, queries.encode_queries(list(ds.queries.values())), rtol=1e-6)
    np.testing.assert_allclose(emb.corpus, docs.encode_corpus(ds.doc_texts), rtol=1e-6)
    # query_pairs: the query texts embedded by the documents' model, row for row with the queries
    assert emb.query_pairs.shape == (32, 16)
    np.testing.assert_allclose(emb.query_pairs, docs.encode_queries(list(ds.queries.values())), rtol=1e-6)
    # the documents' model saw the documents and the query texts, nothing else
    assert {t for call in docs.calls for t in call} == set(ds.doc_texts) | set(ds.queries.values())
    # everything is in the store now: a second run sends nothing to either model
    again_docs, again_queries = CountingEncoder(dim=16), CountingEncoder(dim=8)
    again = embed_dataset(ds, again_docs, tmp_path / "cache", progress=False, query_encoder=again_queries)
    assert again_docs.calls == [] and again_queries.calls == [] and again.stats.encoded == 0
    np.testing.assert_array_equal(again.pairs, emb.pairs)
    np.testing.assert_array_equal(again.query_pairs, emb.query_pairs)
    # the same model on both sides is one space: no query encoder, no pairs
    same = embed_dataset(ds, docs, tmp_path / "cache", progress=False, query_encoder=CountingEncoder(dim=16))
    assert same.query_encoder is None and same.pairs is None and same.query_pairs is None
    assert same.queries.shape == (32, 16)


def unlabelled_cross_adapter(
    data: Path, docs: Encoder, queries: Encoder, cache: Path
) -> tuple[Embeddings, SearchAdaptor]:
    """``data`` embedded by both models (through the store at ``cache``), and a cross adapter from
    ``queries``' space into ``docs``' trained on the paired corpus texts alone (a few steps)."""
    from search_adaptor.data import load_beir

    emb = embed_dataset(load_beir(data), docs, cache, progress=False, query_encoder=queries)
    est = SearchAdaptor(**{**FAST, **CROSS, "loss": "alignment", "max_steps": 20}).fit(
        emb.queries,
        emb.corpus,
        None,
        emb.query_ids,
        emb.doc_ids,
        encoder=docs,
        query_encoder=queries,
        pairs=(emb.pairs, emb.corpus),
    )
    return emb, est


@pytest.fixture
def fake_world(tmp_path):
    """A BEIR folder, two fake encoders of different widths, and a cross adapter trained on them."""
    data = _write_beir(tmp_path / "tiny", WORDS)
    docs, queries = CountingEncoder(dim=16, batch_size=64), CountingEncoder(dim=8, batch_size=64)
    queries.model = "fake-query-model"
    emb, est = unlabelled_cross_adapter(data, docs, queries, tmp_path / "cache")
    return {
        "data": data,
        "docs": docs,
        "queries": queries,
        "emb": emb,
        "adapter": est,
        "cache": tmp_path / "cache",
    }


def test_build_index_records_the_query_model_and_searches_with_it(fake_world, tmp_path):
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import AdaptedIndex, build_index

    w = fake_world
    out = tmp_path / "index"
    index, _ = build_index(
        w["data"], w["docs"], w["adapter"], out, cache_dir=w["cache"], query_encoder=w["queries"]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["query_encoder"] == w["queries"].info()
    assert manifest["encoder"]["fingerprint"] == w["docs"].fingerprint and manifest["dim"] == 16
    assert index.query_encoder is w["queries"]
    text = "w1 w2 w3"
    w["queries"].calls.clear()
    hits = index.search([text], k=3)[0]
    assert w["queries"].calls == [(text,)]  # the query went to the query model
    adapted = w["adapter"].transform_queries(w["queries"].encode_queries([text]))
    expected = index.search_adapted(adapted, k=3)[0]
    assert [d for d, _ in hits] == [d for d, _ in expected]
    assert [s for _, s in hits] == pytest.approx([s for _, s in expected], abs=1e-6)
    # a loaded index searches with vectors of the query model too
    loaded = AdaptedIndex.load(out, encoder=w["docs"])
    assert loaded.manifest["query_encoder"]["fingerprint"] == w["queries"].fingerprint
    vec = w["queries"].encode_queries([text])
    assert loaded.search(vec, k=3) == index.search(vec, k=3)
    with pytest.raises(CompatibilityError, match=r"8-d embeddings .*got 16-d"):  # the documents' model
        loaded.search(w["docs"].encode_queries([text]), k=3)
    # served, /health names both: the model the index holds and the one queries go through
    pytest.importorskip("fastapi", reason="needs fastapi (the serve extra)")
    from fastapi.testclient import TestClient

    from search_adaptor.server import create_app

    health = TestClient(create_app(index, batch_window_s=0.0)).get("/health").json()
    assert (health["model"], health["query_model"]) == ("fake-model", "fake-query-model")


def test_export_onnx_of_a_cross_model_adapter_takes_the_query_models_width(saved, narrow, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from search_adaptor.export import export

    est, folder = saved
    out = export(folder, tmp_path / "onnx", "onnx")
    info = json.loads((out / "export.json").read_text())
    assert info["query_dim"] == 12 and info["dim"] == 16 and info["query_encoder"] == est.query_encoder_
    for name, X, transform in (
        ("query.onnx", narrow["Qx"][:20], est.transform_queries),
        ("corpus.onnx", narrow["D"][:20], est.transform_corpus),
    ):
        session = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        got = session.run(["adapted"], {"embeddings": X.astype(np.float32)})[0]
        np.testing.assert_allclose(got, transform(X), atol=1e-5)
    with pytest.raises(ValueError, match=r"one sentence-transformers folder holds one base model"):
        export(folder, tmp_path / "st", "sentence-transformers")


def test_an_index_without_the_query_model_is_refused_before_embedding(fake_world, tmp_path):
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import build_index

    w = fake_world
    fresh = CountingEncoder(dim=16, batch_size=64)  # the documents' model: only the query side is wrong
    with pytest.raises(
        CompatibilityError, match=r"trained on embeddings of fake:.* but these come from fake:"
    ):
        build_index(w["data"], fresh, w["adapter"], tmp_path / "index", cache_dir=tmp_path / "other")
    assert fresh.calls == [] and not (tmp_path / "index").exists()


@pytest.mark.parametrize(
    "change",
    [lambda m: m.pop("query_encoder"), lambda m: m["query_encoder"].update(fingerprint="fake:another")],
    ids=["removed", "another model"],
)
def test_an_index_manifest_with_another_query_model_is_refused(fake_world, tmp_path, change):
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import AdaptedIndex, build_index

    w = fake_world
    out = tmp_path / "index"
    build_index(w["data"], w["docs"], w["adapter"], out, cache_dir=w["cache"], query_encoder=w["queries"])
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompatibilityError, match=r"adapter: adapter was trained on embeddings of fake:"):
        AdaptedIndex.load(out, encoder=w["docs"])


# -- 7. the command line --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def m2v(tmp_path_factory):
    """model2vec pieces from tests/test_model2vec.py: the word list, a static model, a tiny BERT."""
    pytest.importorskip("model2vec", reason="needs model2vec (the model2vec extra)")
    import test_model2vec
    import tiny_models

    root = tmp_path_factory.mktemp("m2v")
    return {
        "words": tiny_models.WORDS,
        "docs": test_model2vec.static_model(root / "docs-16", dim=16, seed=0),
        "tiny_bert": tiny_models.tiny_bert,
    }


def _json_out(capsys) -> object:
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_cli_distill_fit_index_search_with_a_static_query_model(m2v, tmp_path, capsys, monkeypatch):
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.encoders.registry import make_encoder
    from search_adaptor.index import AdaptedIndex

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bert = m2v["tiny_bert"](tmp_path / "bert")
    static = tmp_path / "static-8"
    assert main(["distill", "--out", str(static), "--model", str(bert), "--dim", "8"]) == 0
    assert "use it with --query-provider model2vec" in capsys.readouterr().out
    query_model = make_encoder("model2vec", model=str(static))
    assert query_model.encode_queries(["the cat"]).shape == (1, 8)

    data = _write_beir(tmp_path / "words", m2v["words"], n_docs=30, n_train=12, n_test=12)
    docs = ["--provider", "model2vec", "--model", str(m2v["docs"]), "--cache", str(tmp_path / "cache")]
    query = ["--query-provider", "model2vec", "--query-model", str(static)]
    out, adapter = tmp_path / "fit", str(tmp_path / "fit" / "adapter")
    fit = ["fit", str(data), *docs, *query, "--max-steps", "30", "--quiet"]
    assert main([*fit, "--out", str(out), "-o", "json"]) == 0
    report = _json_out(capsys)
    assert report["family"] == "cross" and report["protocol"] == "test"
    # queries, documents, documents as pairs (query model), queries as pairs (documents' model)
    assert report["encoder_calls"]["texts_sent"] == 24 + 30 + 30 + 24
    config = json.loads((out / "adapter" / "config.json").read_text())
    assert config["query_encoder"]["fingerprint"] == query_model.fingerprint and config["query_dim"] == 8
    # embed --dry-run with the query model: every text of both models is in the store already
    assert main(["embed", str(data), *docs, *query, "--dry-run"]) == 0
    assert f"{query_model.fingerprint} and " in (planned := capsys.readouterr().out)
    assert "108 texts cached, 0 would be sent" in planned
    # --pairs: the plan counts what a fit given them would embed (each text by both models), and
    # embed embeds it ahead of the fit; without a query model there is nothing to pair
    log = tmp_path / "log.txt"
    log.write_text(f"{m2v['words'][0]} {m2v['words'][1]}\n{m2v['words'][2]} {m2v['words'][3]}\n")
    pairs = ["--pairs", str(log)]
    assert main(["embed", str(data), *docs, *query, *pairs, "--dry-run"]) == 0
    assert "108 texts cached, 4 would be sent" in capsys.readouterr().out
    assert main(["embed", str(data), *docs, *query, *pairs, "--quiet"]) == 0
    said = capsys.readouterr().out  # the counts are the two stores' (it did not say so)
    assert "both models together: 4 texts embedded, 108 already cached (queries 8-d of" in said
    assert main(["embed", str(data), *docs, *query, *pairs, "--dry-run"]) == 0
    assert "112 texts cached, 0 would be sent" in capsys.readouterr().out
    assert main(["embed", str(data), *docs, *pairs, "--dry-run"]) == 2
    assert "name the query model (--query-provider / --query-model)" in capsys.readouterr().err
    assert config["encoder"]["fingerprint"] == make_encoder("model2vec", model=str(m2v["docs"])).fingerprint

    # the index refuses another query model, and records the adapter's own: named by the flags, or,
    # without them, recreated from what the adapter records
    index_dir = tmp_path / "index"
    index = ["index", str(data), "--adapter", adapter, "--out", str(index_dir), *docs, "--quiet"]
    assert main([*index, "--query-provider", "model2vec", "--query-model", str(m2v["docs"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search-adaptor: error: ") and "\n" not in err and "static-8" in err
    assert not index_dir.exists()
    for flags in (query, []):
        shutil.rmtree(index_dir, ignore_errors=True)
        assert main([*index, *flags]) == 0
        assert "30 documents indexed" in capsys.readouterr().out
        manifest = json.loads((index_dir / "manifest.json").read_text())
        assert manifest["query_encoder"]["fingerprint"] == query_model.fingerprint
    # evaluate, too, embeds the queries with the adapter's query model when no flag names one
    assert main(["evaluate", str(data), "--adapter", adapter, *docs, "-o", "json"]) == 0
    assert _json_out(capsys)["metrics"]["adapted"] == report["metrics"]["adapted"]

    # search embeds the query with the static model (recreated from the manifest)
    text = "the cat sat on the mat"
    assert main(["search", str(index_dir), text, "-k", "3", "-o", "json"]) == 0
    hits = _json_out(capsys)
    loaded = AdaptedIndex.load(index_dir)
    assert loaded.query_encoder.fingerprint == query_model.fingerprint != loaded.encoder.fingerprint
    adapted = SearchAdaptor.load(adapter).transform_queries(query_model.encode_queries([text]))
    expected = loaded.search_adapted(adapted, k=3)[0]
    assert [h["id"] for h in hits] == [d for d, _ in expected]
    assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)
    # an index shipped elsewhere, its model folders too (same names): --model / --query-model say
    # where (search and serve took no such flag: the static model's old path was all they knew)
    moved = tmp_path / "moved"
    moved.mkdir()
    static.rename(moved / static.name)
    shutil.copytree(m2v["docs"], moved / Path(m2v["docs"]).name)
    try:
        assert main(["search", str(index_dir), text, "-k", "3", "-o", "json"]) == 2
        assert "static-8: no such folder" in capsys.readouterr().err
        flags = ["--query-model", str(moved / static.name), "--model", str(moved / Path(m2v["docs"]).name)]
        assert main(["search", str(index_dir), text, "-k", "3", "-o", "json", *flags]) == 0
        assert _json_out(capsys) == hits
        for flag, side in (("--model", "documents"), ("--query-model", "queries")):  # the other folder
            wrong = moved / (Path(m2v["docs"]).name if side == "queries" else static.name)
            assert main(["search", str(index_dir), text, flag, str(wrong)]) == 2
            assert "pass the" in capsys.readouterr().err
    finally:
        (moved / static.name).rename(static)

    # the wrappers (AdaptedEncoder, LangChain, LlamaIndex) embed queries with the query model the
    # adapter records, or one given (checked), and documents with the documents' model
    from search_adaptor.model import AdaptedEncoder

    doc_model = make_encoder("model2vec", model=str(m2v["docs"]))
    wrapped = AdaptedEncoder(doc_model, adapter, cache=False)
    assert wrapped.query_base.fingerprint == query_model.fingerprint
    np.testing.assert_allclose(wrapped.encode_queries([text]), adapted, atol=1e-6)
    np.testing.assert_allclose(wrapped.encode_batch([text], "query"), adapted, atol=1e-6)
    assert wrapped.encode_corpus([text]).shape == (1, config["dim"])
    assert "query_base" in wrapped.config()
    with pytest.raises(CompatibilityError, match="static-8"):
        AdaptedEncoder(doc_model, adapter, query_encoder=doc_model)

    # without labels: the unlabelled family, trained on the pairs
    out_u = tmp_path / "fit-unlabelled"
    assert main([*fit, "--out", str(out_u), "--unlabelled", "-o", "json"]) == 0
    assert _json_out(capsys)["family"] == "cross-unlabelled"
    config_u = json.loads((out_u / "adapter" / "config.json").read_text())
    assert config_u["hyperparameters"]["loss"] == "alignment" and config_u["query_dim"] == 8

    # a family that cannot take another model's queries is one line
    assert main([*fit, "--out", str(tmp_path / "paper"), "--family", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "queries of another model train family cross, not paper: drop --family, or the --query-* flags"
    )


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_cli_query_model_over_an_openai_compatible_api(m2v, tmp_path, capsys, monkeypatch):
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from fake_providers import FakeProvider

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    data = _write_beir(tmp_path / "words", m2v["words"], n_docs=20, n_train=8, n_test=8)
    docs = ["--provider", "model2vec", "--model", str(m2v["docs"]), "--cache", str(tmp_path / "cache")]
    out, index_dir = tmp_path / "fit", tmp_path / "index"
    with FakeProvider("openai-compatible", dim=12) as fake:
        monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", fake.key)
        query = ["--query-provider", "openai-compatible", "--query-model", "fake-model"]
        query += ["--query-base-url", fake.url]
        fit = ["fit", str(data), "--out", str(out), *docs, *query, "--max-steps", "20", "--quiet"]
        assert main([*fit, "-o", "json"]) == 0
        assert _json_out(capsys)["family"] == "cross"
        corpus = [json.loads(line)["text"] for line in (data / "corpus.jsonl").read_text().splitlines()]
        # fake.calls: every request, recorded before its reply (fake.served is updated after it)
        sent = [text for call in fake.calls if call.status == 200 for text in call.texts]
        assert set(corpus) <= set(sent) and len(sent) == len(set(sent)) == 20 + 16  # pairs and queries
        saved = (out / "adapter" / "config.json").read_text()
        config = json.loads(saved)
        assert config["query_dim"] == 12 and config["query_encoder"]["provider"] == "openai-compatible"
        assert config["query_encoder"]["config"]["base_url"] == fake.url and fake.key not in saved

        adapter, n_calls = str(out / "adapter"), len(fake.calls)
        assert main(["index", str(data), "--adapter", adapter, "--out", str(index_dir), *docs, *query]) == 0
        capsys.readouterr()
        assert len(fake.calls) == n_calls  # indexing embeds documents with the documents' model only
        assert main(["search", str(index_dir), "a new question", "-k", "2", "-o", "json"]) == 0
        assert len(_json_out(capsys)) == 2
        assert [call.texts for call in fake.calls[n_calls:]] == [["a new question"]]


def _two_static_models(m2v, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A word-bag BEIR folder, and the flags of its two models: static documents (16-d), static
    queries of another model (8-d)."""
    import test_model2vec

    data = _write_beir(tmp_path / "words", m2v["words"], n_docs=20, n_train=8, n_test=8)
    query_model = test_model2vec.static_model(tmp_path / "queries-8", dim=8, seed=1)
    docs = ["--provider", "model2vec", "--model", str(m2v["docs"]), "--cache", str(tmp_path / "cache")]
    return data, docs, ["--query-provider", "model2vec", "--query-model", str(query_model)]


@pytest.mark.slow  # a whole fit (CI runs it)
def test_cli_fit_unlabelled_with_more_pairs_from_a_query_log(m2v, tmp_path, capsys):
    data, docs, query = _two_static_models(m2v, tmp_path)
    log = tmp_path / "log.txt"
    log.write_text("".join(" ".join(m2v["words"][i : i + 3]) + "\n" for i in range(0, 15, 3)))  # 5 texts
    fit = ["fit", str(data), *docs, "--unlabelled", "--pairs", str(log), "--max-steps", "20", "--quiet"]
    assert main([*fit, *query, "--out", str(tmp_path / "fit"), "-o", "json"]) == 0
    report = _json_out(capsys)
    assert report["family"] == "cross-unlabelled" and report["validation"]["metric"] == "neighbours@10"
    # queries and corpus by the query model, corpus and queries by the documents' model, the log by both
    assert report["encoder_calls"]["texts_sent"] == 16 + 20 + 20 + 16 + 2 * 5
    # a log holding the scored queries' texts (up to case and spacing): those are left out, said once
    from search_adaptor.data import load_beir

    dataset = load_beir(data)
    test = [f"  {dataset.queries[q].upper()} " for q in dataset.qrels["test"]]
    train = dataset.queries[next(iter(dataset.qrels["train"]))]
    held = tmp_path / "held.txt"
    held.write_text("".join(f"{text}\n" for text in [*test, train, "a text of its own"]))
    again = [*fit, *query, "--pairs", str(held), "--cache", str(tmp_path / "cache2"), "-o", "json"]
    assert main([*again, "--out", str(tmp_path / "fit2")]) == 0
    captured = capsys.readouterr()
    assert f"warning: {len(test)} paired text(s) are the texts of queries this fit scores" in captured.err
    assert json.loads(captured.out)["encoder_calls"]["texts_sent"] == 16 + 20 + 20 + 16 + 2 * 1
    # and recorded (it was said on stderr only): report.json beside the paired texts' counts, report.md
    left_out = len(test)  # the training query's text is kept (cached already: 1 text sent, 2 kept)
    assert json.loads(captured.out)["paired_texts"] == {"corpus": 20, "more": 2, "left_out": left_out}
    assert (
        f"{left_out} paired text(s) given (`--pairs`, `--sentence-pairs`) were left out: they are the texts "
        "of queries this fit scores or validates, which stay held-out."
    ) in (tmp_path / "fit2" / "report.md").read_text()
    # refused before anything is embedded, in one line: no query model, a missing file, precomputed vectors
    for extra, message in (
        ([], "name the query model"),
        (["--pairs", str(held)], "name the query model"),  # no warning of left-out texts first
        ([*query, "--pairs", str(tmp_path / "none.txt")], "none.txt: no such file"),
        ([*query, "--embeddings", str(tmp_path)], "--embeddings brings vectors of one model"),
        (["--embeddings", str(tmp_path)], "cannot go with --embeddings"),
    ):
        assert main([*fit, *extra, "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
        assert not (tmp_path / "refused").exists()


@pytest.mark.slow  # two whole fits (CI runs it)
def test_cli_fit_unlabelled_with_the_corpus_sentences_as_pairs(m2v, tmp_path, capsys):
    from search_adaptor.data import corpus_sentences, load_beir

    data, docs, query = _two_static_models(m2v, tmp_path)
    fit = [
        "fit",
        str(data),
        *docs,
        *query,
        "--unlabelled",
        "--sentence-pairs",
        "--max-steps",
        "20",
        "--quiet",
    ]
    # word bags are one sentence each: paired already, said once, and the fit goes on without more
    assert main([*fit, "--out", str(tmp_path / "bags"), "-o", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["encoder_calls"]["texts_sent"] == 16 + 20 + 20 + 16
    assert "--sentence-pairs: words's documents are one sentence each" in captured.err

    rows = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()]
    for row in rows:  # two sentences a document, each its words in another order
        words = row["text"].split()
        row["text"] = f"{' '.join(words)} and more. More and {' '.join(reversed(words))}."
    (data / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    sentences = corpus_sentences(load_beir(data))
    assert len(sentences) == 2 * len(rows)
    assert (
        main([*fit, "--out", str(tmp_path / "sentences"), "--cache", str(tmp_path / "cache2"), "-o", "json"])
        == 0
    )
    report = _json_out(capsys)
    assert report["family"] == "cross-unlabelled"
    # queries and corpus by the query model, corpus and queries by the documents' model, sentences by both
    assert report["encoder_calls"]["texts_sent"] == 16 + 20 + 20 + 16 + 2 * len(sentences)
    assert report["paired_texts"] == {"corpus": 20, "more": len(sentences), "left_out": 0}
    md = (tmp_path / "sentences" / "report.md").read_text()
    assert f"beside the corpus's 20: {len(sentences)} more (`--pairs`, `--sentence-pairs`)" in md
    assert main(["fit", str(data), *docs, "--sentence-pairs", "--out", str(tmp_path / "refused")]) == 2
    assert "drop --pairs / --sentence-pairs" in capsys.readouterr().err
