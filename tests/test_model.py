"""The estimator contract every adapter variant must honour, save/load, and refusals."""

from __future__ import annotations

import copy
import inspect
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from search_adaptor import __version__, evaluate, experiment
from search_adaptor.data import Dataset, kfold
from search_adaptor.embed import Embeddings
from search_adaptor.experiment import (
    DEFAULT_RULE,
    IDENTITY,
    PairStart,
    _scored_sizes,
    choose,
    evaluate_embeddings,
    run_evaluate,
    run_fit,
    select,
)
from search_adaptor.model import (
    AdaptedEncoder,
    CompatibilityError,
    NotFittedError,
    SearchAdaptor,
    _checksum,
    describe_encoder,
    float32_rows,
)
from search_adaptor.networks import NumpyNet, ResidualAdapter, adapt_rows, numpy_forward
from search_adaptor.retrieval import l2_normalize
from search_adaptor.training import compute_threads, pair_map, resolve_precision, usable_pairs
from search_adaptor.variants import family_variants
from test_plots import synthetic_dataset
from test_store import CountingEncoder

FAST = {"max_steps": 150, "eval_every": 10, "patience": 60, "batch_size": 32}

VARIANTS = {
    "paper": {"mode": "shared", "loss": "ranking", "alpha": 0.1, "beta": 0.01},
    "query_only_infonce": {"mode": "query_only", "loss": "infonce", "in_batch": True, "negatives": "hard"},
    "separate_softmax": {"mode": "separate", "loss": "softmax", "negatives": "mixed"},
    "linear_ranknet": {"architecture": "linear", "loss": "ranknet"},
    # the paper's no-skip ablation, wide enough to beat zero-shot (its random start no longer counts)
    "no_skip_ranking": {"residual": False, "hidden_dim": 64, "lr": 3e-3},
    "shared_infonce_in_batch": {"mode": "shared", "loss": "infonce", "in_batch": True},
}


def _fit(data: dict, encoder: dict | None = None, **params) -> SearchAdaptor:
    est = SearchAdaptor(**{**FAST, **params})
    return est.fit(data["Q"], data["D"], data["qrels"], data["qids"], data["dids"], encoder=encoder)


def test_untrained_residual_adapter_is_exactly_the_identity():
    x = torch.randn(5, 8)
    for arch in ("mlp", "linear"):
        assert torch.equal(ResidualAdapter(8, 8, arch)(x), x)
    assert torch.allclose(ResidualAdapter(8, 8, "linear", residual=False)(x), x)


@pytest.mark.parametrize("architecture", ["mlp", "linear"])
@pytest.mark.parametrize("residual", [True, False])
def test_numpy_inference_matches_the_torch_network(architecture, residual):
    torch.manual_seed(0)
    net = ResidualAdapter(16, 24, architecture, residual)
    with torch.no_grad():  # move away from the identity start so every layer matters
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    got = numpy_forward(net, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # in-place weight updates are seen: the weights are shared, not cached
        net.f[-1].bias.add_(1.0)
    np.testing.assert_allclose(numpy_forward(net, x), got + 1.0, rtol=1e-5, atol=1e-5)


def test_init_stores_hyperparameters_verbatim_and_params_round_trip():
    est = SearchAdaptor(alpha=0.5, mode="query_only", hidden_dim=7)
    params = est.get_params()
    assert params["alpha"] == 0.5 and params["mode"] == "query_only" and params["hidden_dim"] == 7
    assert est.clone().get_params() == params
    assert est.set_params(beta=0.2) is est and est.beta == 0.2
    assert "alpha=0.5" in repr(est)
    with pytest.raises(ValueError, match="unknown SearchAdaptor parameter"):
        est.set_params(not_a_parameter=1)
    assert not hasattr(est, "query_net_")  # nothing learned before fit
    # clone's overrides are set_params' names (it was __init__'s TypeError, "unexpected keyword")
    with pytest.raises(ValueError, match=r"^unknown SearchAdaptor parameter\(s\): bogus$"):
        est.clone(bogus=1)
    assert est.clone(alpha=0.25).alpha == 0.25 and est.alpha == 0.5


def test_ids_that_do_not_match_the_embeddings_are_named(synthetic):
    """A query id short said "59 query ids for 60 query embeddings / 200 corpus ids for 200 documents",
    naming the corpus too; a judged document missing from the corpus gave no fix."""
    data = synthetic
    with pytest.raises(ValueError) as err:
        _fit({**data, "qids": data["qids"][:-1]})
    assert str(err.value) == (
        f"query_ids: {len(data['qids']) - 1} ids for {len(data['Q'])} query embeddings; give one id per row, "
        "in order"
    )
    with pytest.raises(
        ValueError, match=r"^corpus_ids: 1 ids for \d+ corpus embeddings; give one id per row"
    ):
        _fit({**data, "dids": data["dids"][:1]})
    qid = next(iter(data["qrels"]))
    qrels = {**data["qrels"], qid: {**data["qrels"][qid], "nodoc": 1}}
    with pytest.raises(ValueError) as err:
        _fit({**data, "qrels": qrels})
    assert str(err.value) == (
        f"qrels: query {qid!r} names document 'nodoc', which is not in the corpus; pass its embedding with "
        "its id in corpus_ids, or drop that judgement"
    )


def test_select_refuses_an_unknown_override_before_training(synthetic):
    with pytest.raises(ValueError, match=r"^overrides: unknown SearchAdaptor parameter\(s\): bogus$"):
        select("linear", *(synthetic[k] for k in ("Q", "D", "qrels", "qids", "dids")), overrides={"bogus": 1})


def test_scikit_learns_clone_gives_an_unfitted_copy_with_the_same_hyperparameters(synthetic):
    """``sklearn.base.clone`` calls ``get_params(deep=False)`` and checks that the copy holds the very
    parameters it was built with (it raises otherwise); before ``deep`` was accepted it raised
    TypeError."""
    base = pytest.importorskip("sklearn.base")
    est = _fit(synthetic, dims=(4, 8), alpha=0.2, max_steps=30)
    copy = base.clone(est)
    assert type(copy) is SearchAdaptor and copy.get_params() == est.get_params()
    assert not hasattr(copy, "query_net_")
    assert est.get_params(deep=True) == est.get_params(deep=False)


def test_numpy_hyperparameters_of_a_parameter_grid_train_save_and_clone_as_given(synthetic, tmp_path):
    """``np.linspace`` and scikit-learn's ``ParameterGrid`` give numpy scalars and arrays: they train
    the adapter the Python numbers train, save as JSON numbers (the save of a finished fit raised
    "float32 is not JSON serializable"; a numpy seed failed in torch, an array of dims in fit and
    repr), and stay as given in ``get_params``, as ``sklearn.base.clone`` requires."""
    grid = {
        "lr": np.float64(2e-3),
        "batch_size": np.int64(16),
        "temperature": np.float32(0.05),
        "seed": np.int64(3),
        "dims": np.array([4, 8]),
        "residual": np.bool_(True),
    }
    est = _fit(synthetic, max_steps=30, **grid)
    plain = _fit(synthetic, max_steps=30, lr=2e-3, batch_size=16, temperature=0.05, seed=3, dims=[4, 8])
    assert est.fingerprint_ == plain.fingerprint_
    assert all(est.get_params()[k] is v for k, v in grid.items())
    assert "dims=array([4, 8])" in repr(est) and "seed=np.int64(3)" in repr(est)
    est.save(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["hyperparameters"]
    assert saved["batch_size"] == 16 and saved["seed"] == 3 and saved["dims"] == [4, 8]
    assert type(saved["temperature"]) is float and saved["residual"] is True
    assert SearchAdaptor.load(tmp_path / "a").fingerprint_ == est.fingerprint_
    base = pytest.importorskip("sklearn.base")
    assert base.clone(est).get_params()["dims"].tolist() == [4, 8]  # clone checks its params are kept


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_contract_every_variant(name, synthetic, tmp_path):
    est = _fit(synthetic, **VARIANTS[name])
    # every variant learns the synthetic distortion: a variant that stopped learning fails here
    assert est.best_step_ > 0 and est.best_score_ > est.zero_shot_score_ + 0.04
    assert est.history_[0]["step"] == 0 and len(est.history_) >= 2
    assert est.n_train_queries_ + est.n_val_queries_ == len(synthetic["qrels"])
    q = est.transform_queries(synthetic["Q"][:7])
    d = est.transform_corpus(synthetic["D"][:9])
    assert q.shape == (7, 16) and d.shape == (9, 16) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    if est.mode == "query_only":
        assert np.allclose(d, l2_normalize(synthetic["D"][:9]))
    # save -> load -> identical outputs, no pickle
    est.save(tmp_path / "a")
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"config.json", "adapter.safetensors", "README.md"}
    again = SearchAdaptor.load(tmp_path / "a")
    assert np.array_equal(again.transform_queries(synthetic["Q"]), est.transform_queries(synthetic["Q"]))
    assert np.array_equal(again.transform_corpus(synthetic["D"]), est.transform_corpus(synthetic["D"]))
    assert again.get_params() == est.get_params()


def test_training_beats_zero_shot_on_a_learnable_problem(synthetic):
    est = _fit(synthetic, mode="query_only", loss="infonce", in_batch=True, max_steps=300, patience=300)
    assert est.best_step_ > 0
    assert est.best_score_ > est.zero_shot_score_ + 0.05


def test_identity_ships_when_nothing_beats_zero_shot(synthetic):
    est = _fit(synthetic, lr=1e-12, max_steps=40)
    assert est.is_identity_ and est.kept_start_ and est.start_ is None and est.best_step_ == 0
    assert np.array_equal(est.transform_queries(synthetic["Q"]), l2_normalize(synthetic["Q"]))


def test_a_kept_start_that_is_not_the_identity_is_not_called_one(synthetic, tmp_path):
    """An adapter that kept a PCA start (best step 0) was saved with ``identity: true`` and a README
    saying "this adapter is the identity": a tool trusting either would skip a map that turns every
    vector. A file written so before still loads, and no longer claims it."""
    est = _fit(synthetic, init="pca", dims=[8], lr=1e-12, max_steps=40)
    assert est.best_step_ == 0
    assert not np.allclose(est.transform_queries(synthetic["Q"]), l2_normalize(synthetic["Q"]), atol=1e-3)
    folder = est.save(tmp_path / "pca")
    config = json.loads((folder / "config.json").read_text())
    card = (folder / "README.md").read_text()
    assert config["identity"] is False and "is the identity" not in card
    assert "this adapter is its start, a PCA rotation of the corpus, not the identity." in card
    assert est.kept_start_ and not est.is_identity_ and est.start_ == "a PCA rotation of the corpus"
    config["identity"] = True  # as written before: any kept start was "the identity"
    (folder / "config.json").write_text(json.dumps(config))
    older = SearchAdaptor.load(folder)
    assert not older.is_identity_ and older.fingerprint_ == est.fingerprint_
    # the identity start is still the identity, and a file denying it, or claiming it for a trained
    # adapter, is refused
    for adapter, claim in ((_fit(synthetic, lr=1e-12, max_steps=40), False), (_fit(synthetic), True)):
        folder = adapter.save(tmp_path / str(claim))
        config = json.loads((folder / "config.json").read_text())
        assert config["identity"] is not claim
        config["identity"] = claim
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=f"identity is {claim} but training.best_step is"):
            SearchAdaptor.load(folder)


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_select_keeps_the_best_candidate_on_one_split(synthetic):
    sel = select(
        "auto",
        synthetic["Q"],
        synthetic["D"],
        synthetic["qrels"],
        synthetic["qids"],
        synthetic["dids"],
        overrides=FAST,
    )
    names = [name for name, _ in family_variants("auto")]
    assert [c["variant"] for c in sel.candidates] == names
    best = max(sel.candidates, key=lambda c: c["val_ndcg@10"])
    assert sel.selected == best["variant"]
    assert sel.adapter.best_score_ == pytest.approx(best["val_ndcg@10"])
    assert len({c["zero_shot_val_ndcg@10"] for c in sel.candidates}) == 1  # same validation split for all


def test_selection_rules_and_the_identity_winning_ties():
    """Per-query validation scores where 'rich' is best by a hair and 'simple' by less; the default
    rule ships the best only when its gain over zero-shot exceeds one paired standard error."""
    rng = np.random.default_rng(0)
    identity = rng.uniform(0.2, 0.8, 200)
    noisy = identity + rng.normal(0.0, 0.2, 200)  # mean gain well inside one standard error
    noisy += 0.002 - (noisy - identity).mean()
    clear = identity + 0.05 + rng.normal(0.0, 0.02, 200)
    simple = clear + rng.normal(0.0, 0.03, 200)  # a hair below 'rich', well within one SE of it
    simple += -0.001 - (simple - clear).mean()
    scores = {"identity": identity, "simple": simple, "rich": clear, "noisy": noisy}
    assert choose(["simple", "rich"], scores, "max") == "rich"
    assert choose(["simple", "rich"], scores) == "rich"  # default max-se: a clear gain ships
    assert choose(["simple", "rich"], scores, "one-se") == "simple"  # within one SE of the best
    assert choose(["noisy"], scores, "max") == "noisy"
    assert choose(["noisy"], scores) == "identity"  # a gain within the noise ships nothing
    with pytest.raises(ValueError, match="rule must be one of max, max-se, one-se"):
        choose(["rich"], scores, "best")
    # one validation query: 0 -> 1 there shows nothing about noise, so nothing ships (a k-fold fit of
    # 5 labelled queries shipped such an adapter)
    one = {"identity": np.array([0.0]), "simple": np.array([0.5]), "rich": np.array([1.0])}
    assert choose(["simple", "rich"], one) == choose(["simple", "rich"], one, "one-se") == "identity"
    assert choose(["simple", "rich"], one, "max") == "rich"


def test_auto_candidates_train_as_they_would_alone(synthetic):
    """A candidate inside ``select`` is the same model as a standalone fit with its parameters and
    seed, so the benchmark rows of the same parameters are auto's candidates, not look-alikes."""
    sel = select(
        "linear-random",
        synthetic["Q"],
        synthetic["D"],
        synthetic["qrels"],
        synthetic["qids"],
        synthetic["dids"],
        seed=3,
        overrides=FAST,
    )
    (name, params), *_ = family_variants("linear-random")
    alone = _fit(synthetic, seed=3, **params)
    assert sel.candidates[0]["variant"] == name
    assert alone.val_query_ids_ == sel.val_query_ids
    assert alone.best_score_ == pytest.approx(sel.candidates[0]["val_ndcg@10"], abs=1e-9)
    assert np.allclose(alone.transform_queries(synthetic["Q"]), sel.adapter.transform_queries(synthetic["Q"]))
    auto = {n: v for n, v in family_variants("auto")}
    # both kinds compete: plain random-negative contrastive and regularised hard-negative variants
    assert any(v["negatives"] == "random" and v["alpha"] == 0 for v in auto.values())
    assert any(v["negatives"] == "hard" and v["alpha"] > 0 for v in auto.values())


@pytest.mark.slow  # three folds of five candidates and a refit
def test_kfold_selection_holds_out_every_query_once_and_refits_the_winner(synthetic):
    """``selection="kfold"``: each candidate is scored on every labelled query by the fit that did not
    train on it, the rule picks from those scores, and what ships is the winner trained on all."""
    qrels = {q: synthetic["qrels"][q] for q in synthetic["qids"][:60]}
    args = (synthetic["Q"], synthetic["D"], qrels, synthetic["qids"], synthetic["dids"])
    sel = select("auto", *args, seed=2, overrides=FAST, selection="kfold", selection_folds=3)
    names = [name for name, _ in family_variants("auto")]
    assert sel.method == "kfold" and sorted(sel.val_query_ids) == sorted(qrels)
    assert sel.selected == choose(names, sel.val_scores)
    for row in sel.candidates:
        assert row["val_ndcg@10"] == pytest.approx(sel.val_scores[row["variant"]].mean())
    picked = sel.selected if sel.selected in names else names[0]
    params = dict(family_variants("auto"))[picked]
    emb = Embeddings(synthetic["qids"], synthetic["Q"], synthetic["dids"], synthetic["D"], None)
    held_out = []
    for train, held in kfold(sorted(qrels), 3, seed=2):  # the folds, rebuilt by hand
        alone = _fit(synthetic | {"qrels": {q: qrels[q] for q in train}}, seed=2, **params)
        held_out.append(
            evaluate_embeddings(emb, {q: qrels[q] for q in held}, alone, ["ndcg@10"])[1]["ndcg@10"]
        )
    assert np.allclose(np.concatenate(held_out), sel.val_scores[picked])
    on_all = _fit(synthetic | {"qrels": qrels}, seed=2, **params)
    assert sel.fitted[picked].history_ == on_all.history_
    shipped = on_all if sel.selected == picked else on_all.at_start()
    assert np.allclose(
        sel.adapter.transform_queries(synthetic["Q"]), shipped.transform_queries(synthetic["Q"])
    )


@pytest.mark.parametrize("refit_all", [True, False])
def test_a_kfold_winner_whose_final_fit_keeps_its_start_is_named_as_the_start(
    synthetic, monkeypatch, refit_all
):
    """The k-fold winner, trained on all the queries, can keep its start on its own validation split
    (Cranfield, 157 training queries: `query-only-infonce` won the folds by more than their noise,
    and its final fit's best step was 0): the identity shipped and was named `query-only-infonce`,
    with nDCG@10 unchanged and no word why."""
    monkeypatch.setattr(experiment, "choose", lambda names, scores, rule=DEFAULT_RULE: names[0])
    qrels = {q: synthetic["qrels"][q] for q in synthetic["qids"][:60]}
    args = (synthetic["Q"], synthetic["D"], qrels, synthetic["qids"], synthetic["dids"])
    still = {**FAST, "max_steps": 20, "lr": 1e-12}  # no step can move a ranking: every fit keeps its start
    sel = select(
        "linear-random",
        *args,
        seed=2,
        overrides=still,
        selection="kfold",
        selection_folds=2,
        refit_all=refit_all,
    )
    (row,) = sel.candidates
    assert sel.selected == IDENTITY and row["kept_start"] is True
    assert np.array_equal(sel.adapter.transform_queries(synthetic["Q"]), l2_normalize(synthetic["Q"]))


def test_refit_all_trains_again_on_every_labelled_query_for_the_validated_steps(
    synthetic, tmp_path, monkeypatch
):
    """``refit_all``: the validated fit's hyperparameters trained on every labelled query, the
    validation ones too, for exactly the best step count validation chose; the validation record
    stays the fit's that chose it, the fit itself is unchanged, and the file says what it is."""
    train = {q: synthetic["qrels"][q] for q in synthetic["qids"][:120]}
    data = synthetic | {"qrels": train}
    est = _fit(data, seed=1, **VARIANTS["paper"])
    before = est.transform_queries(synthetic["Q"])
    assert est.best_step_ > 0 and est.n_train_queries_ < len(train)
    steps = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda opt, *a, **k: steps.append(1) or adam_step(opt, *a, **k)
    )
    args = (synthetic["Q"], synthetic["D"], train, synthetic["qids"], synthetic["dids"])
    refit = est.refit_all(*args)
    assert len(steps) == est.best_step_  # no validation, no early stop: the validated step count
    assert refit.refit_all_ and not est.refit_all_
    assert sorted(refit.train_query_ids_) == sorted(train) and refit.n_train_queries_ == len(train)
    assert set(est.val_query_ids_) <= set(refit.train_query_ids_)
    for name in ("best_step_", "n_steps_", "best_score_", "zero_shot_score_", "val_query_ids_", "history_"):
        assert getattr(refit, name) == getattr(est, name), name
    assert np.array_equal(est.transform_queries(synthetic["Q"]), before)
    after = refit.transform_queries(synthetic["Q"])
    assert not np.allclose(after, before)
    assert np.array_equal(est.refit_all(*args).transform_queries(synthetic["Q"]), after)  # seeded
    emb = Embeddings(synthetic["qids"], synthetic["Q"], synthetic["dids"], synthetic["D"], None)
    held = {q: synthetic["qrels"][q] for q in synthetic["qids"][120:]}
    zero = evaluate_embeddings(emb, held, None, ["ndcg@10"])[0]["ndcg@10"]
    assert evaluate_embeddings(emb, held, refit, ["ndcg@10"])[0]["ndcg@10"] > zero + 0.05

    refit.save(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    est.save(tmp_path / "validated")
    assert config["training"]["refit_all"] is True
    assert "refit_all" not in json.loads((tmp_path / "validated" / "config.json").read_text())["training"]
    card = (tmp_path / "a" / "README.md").read_text()
    assert "trained again on all 120 training queries, the validation ones too (never the test" in card
    loaded = SearchAdaptor.load(tmp_path / "a")
    assert loaded.refit_all_ and np.array_equal(loaded.transform_queries(synthetic["Q"]), after)
    config["training"]["refit_all"] = "yes"
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"training: field 'refit_all' must be bool, got \"yes\""):
        SearchAdaptor.load(tmp_path / "a")


def test_refit_all_of_a_kept_start_trains_nothing_and_of_an_unlabelled_fit_is_refused(synthetic):
    args = (synthetic["Q"], synthetic["D"], synthetic["qrels"], synthetic["qids"], synthetic["dids"])
    still = _fit(synthetic, lr=1e-12, max_steps=10, eval_every=10)  # no step beats the start
    assert still.best_step_ == 0
    kept = still.refit_all(*args)
    assert kept.best_step_ == 0 and not kept.refit_all_ and kept.is_identity_
    (_, params), *_ = family_variants("matryoshka-unsupervised")
    unlabelled = SearchAdaptor(**{**params, "dims": (8,), "max_steps": 2, "eval_every": 1})
    unlabelled.fit(synthetic["Q"], synthetic["D"], None)
    with pytest.raises(
        ValueError, match=r"loss='similarity' trains without labels.*refit_all is for labelled"
    ):
        unlabelled.refit_all(*args)


@pytest.mark.parametrize("selection", ["validation", "kfold"])
def test_select_with_refit_all_ships_the_winner_trained_on_every_query(synthetic, selection):
    """``select(refit_all=True)`` ships the winner's :meth:`refit_all` on the queries it was given
    (``fitted`` keeps the validated one); the identity winning trains nothing more."""
    qrels = {q: synthetic["qrels"][q] for q in synthetic["qids"][:60]}
    args = (synthetic["Q"], synthetic["D"], qrels, synthetic["qids"], synthetic["dids"])
    folds = {"selection": selection, "selection_folds": 3}
    sel = select("linear", *args, seed=2, overrides=FAST, refit_all=True, **folds)
    plain = select("linear", *args, seed=2, overrides=FAST, **folds)
    (name,) = sel.fitted
    assert sel.selected == plain.selected == name  # training on the distortion helps: a candidate wins
    winner = sel.fitted[name]
    assert np.array_equal(
        winner.transform_queries(synthetic["Q"]), plain.adapter.transform_queries(synthetic["Q"])
    )
    assert sel.adapter.refit_all_ and sorted(sel.adapter.train_query_ids_) == sorted(qrels)
    assert np.array_equal(
        sel.adapter.transform_queries(synthetic["Q"]),
        winner.refit_all(*args).transform_queries(synthetic["Q"]),
    )
    assert sel.candidates[0]["refit_all_s"] >= 0
    identity = select("linear", *args, seed=2, overrides={**FAST, "lr": 1e-12}, refit_all=True, **folds)
    assert identity.adapter.is_identity_ and not identity.adapter.refit_all_


def test_kfold_selection_refuses_too_few_queries_and_unknown_methods(synthetic):
    args = (synthetic["Q"], synthetic["D"], synthetic["qrels"], synthetic["qids"], synthetic["dids"])
    few = (*args[:2], {q: synthetic["qrels"][q] for q in synthetic["qids"][:9]}, *args[3:])
    with pytest.raises(ValueError, match="selection 'kfold' with 5 folds needs at least 25 labelled queries"):
        select("auto", *few, selection="kfold")
    with pytest.raises(ValueError, match="selection must be one of validation, kfold; got 'cv'"):
        select("auto", *args, selection="cv")
    with pytest.raises(ValueError, match=r"^selection 'kfold' needs an integer number of folds >= 2; got 1$"):
        select("auto", *args, selection="kfold", selection_folds=1)
    for n_jobs in (0, -2, 1.5, True):
        with pytest.raises(
            ValueError, match=r"^n_jobs must be an integer >= 1, or None or -1 for one per CPU"
        ):
            select("auto", *args, n_jobs=n_jobs)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_fits_side_by_side_in_threads_equal_each_fit_alone(synthetic, precision):
    """``select`` trains candidates in threads; in mixed precision too, a fit's weights must not depend
    on what trains next to it (autocast's cache of weight casts broke this: it is off)."""
    params = {
        "mode": "shared",
        "loss": "infonce",
        "in_batch": True,
        "negatives": "hard",
        "precision": precision,
    }
    alone = _fit(synthetic, seed=1, **params)
    with compute_threads(1), ThreadPoolExecutor(2) as pool:
        side_by_side = [
            f.result() for f in [pool.submit(_fit, synthetic, seed=1, **params) for _ in range(2)]
        ]
    assert alone.train_precision_ == precision
    for est in side_by_side:
        assert est.history_ == alone.history_
        for name, weight in alone.query_net_.state_dict().items():
            assert torch.equal(est.query_net_.state_dict()[name], weight)


@pytest.mark.slow  # three k-fold fits of five candidates
def test_kfold_fit_gives_the_same_report_however_many_fits_run_at_once(synthetic, tmp_path):
    """``run_fit`` trains every fold's candidates in one pool: how many run at once changes when each
    finishes, never what it is."""
    dataset, emb = synthetic_dataset(synthetic, tmp_path, {"test": slice(None)})
    fast = {**FAST, "max_steps": 40}
    reports = [run_fit(dataset, emb, folds=3, overrides=fast, n_jobs=n).report for n in (1, 2, 7)]
    for report in reports[1:]:
        assert report["metrics"] == reports[0]["metrics"] and report["selected"] == reports[0]["selected"]
        assert [f["selected"] for f in report["fold_results"]] == [
            f["selected"] for f in reports[0]["fold_results"]
        ]


def test_a_seed_is_an_integer_torch_takes_or_refused_before_training(synthetic):
    """A seed of 2**64 failed in training with torch's 'Overflow when unpacking long long', naming no
    parameter; a negative one was refused only as 'an integer >= 0'."""
    for seed in (-1, 2**64, 1.5):
        with pytest.raises(ValueError, match=rf"^seed must be an integer from 0 to {2**64 - 1}; got "):
            _fit(synthetic, seed=seed)
    assert _fit(synthetic, max_steps=5, seed=2**64 - 1).seed == 2**64 - 1


def test_precision_is_checked_resolved_and_recorded(synthetic, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, auto; got 'fp16'"):
        _fit(synthetic, precision="fp16")
    est = _fit(synthetic, max_steps=20, precision="auto")
    assert est.train_precision_ == resolve_precision("auto") in ("float32", "bfloat16")
    est.save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["hyperparameters"]["precision"] == "auto"
    assert cfg["training"]["precision"] == est.train_precision_
    assert SearchAdaptor.load(tmp_path / "a").train_precision_ == est.train_precision_
    # a file from before precision: format 2, with that format's checksum (format 3 states every setting)
    del cfg["training"]["precision"], cfg["hyperparameters"]["precision"]
    cfg.update(format_version=2, checksum=_checksum(est, 2))
    (tmp_path / "a" / "config.json").write_text(json.dumps(cfg))
    older = SearchAdaptor.load(tmp_path / "a")
    assert older.train_precision_ == "float32" and older.precision == "float32"


def test_saved_config_describes_the_adapter(synthetic, tmp_path):
    est = _fit(synthetic, max_steps=30, encoder={"fingerprint": "sentence-transformers:m:abc", "model": "m"})
    est.save(tmp_path / "a", extra={"test": {"adapted": {"ndcg@10": 0.6}, "zero-shot": {"ndcg@10": 0.5}}})
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["dim"] == 16 and cfg["encoder"]["model"] == "m"
    assert cfg["hyperparameters"]["alpha"] == est.alpha
    assert cfg["training"]["val_ndcg@10"] == pytest.approx(est.best_score_)
    assert cfg["metrics"]["test"]["zero-shot"]["ndcg@10"] == 0.5 and "version" in cfg
    assert "Search-Adaptor adapter" in (tmp_path / "a" / "README.md").read_text()


def test_save_takes_numpy_numbers_in_extra_and_tabulates_its_test_table(synthetic, tmp_path):
    """Metrics computed with numpy are saved as the numbers they are (save raised "float32 is not
    JSON serializable"); what fit saves as ``test`` (a protocol beside the systems) is the card's table."""
    est = _fit(synthetic, max_steps=20)
    test = {
        "protocol": "test",
        "zero-shot": {"ndcg@10": np.float32(0.5), "recall@100": 0.75},
        "adapted": {"ndcg@10": np.float64(0.625), "recall@100": np.float32(0.875)},
    }
    est.save(tmp_path / "a", extra={"test": test, "n": np.int64(3), "ok": np.bool_(True)})
    loaded = SearchAdaptor.load(tmp_path / "a")
    assert loaded.metrics_["test"]["adapted"] == {"ndcg@10": 0.625, "recall@100": 0.875}
    assert loaded.metrics_["n"] == 3 and loaded.metrics_["ok"] is True
    assert "| adapted | 0.6250 | 0.8750 |" in (tmp_path / "a" / "README.md").read_text()
    loaded.save(tmp_path / "b")  # what load read, save writes again
    assert SearchAdaptor.load(tmp_path / "b").metrics_ == loaded.metrics_
    with pytest.raises(TypeError, match=r"^extra: a ndarray has no JSON form; give dicts") as err:
        est.save(tmp_path / "c", extra={"scores": np.zeros(3)})
    assert "\n" not in str(err.value) and not (tmp_path / "c").exists()
    # config.json held NaN, which no JSON reader but Python's takes; a number key came back a string
    for extra, message in (
        ({"val": {"ndcg@10": float("nan")}}, "extra.val.ndcg@10 is nan, which JSON cannot hold; store None"),
        ({"runs": [0.5, np.float32("inf")]}, "extra.runs[1] is inf, which JSON cannot hold; store None"),
        ({"by_k": {10: 0.5}}, "extra.by_k: key 10 is int, not a string; JSON keys are strings"),
    ):
        with pytest.raises(ValueError) as err:
            est.save(tmp_path / "c", extra=extra)
        assert str(err.value).startswith(message) and not (tmp_path / "c").exists()
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(TypeError, match=r"^extra: Circular reference detected; give dicts"):
        est.save(tmp_path / "c", extra=loop)


def test_saving_over_an_adapter_folder_never_deletes_a_file_it_did_not_write(synthetic, tmp_path):
    """Saving replaces the folder as a whole, which deleted a user's notes and runs kept beside the
    adapter: a folder holding anything but an adapter's own files is refused, naming the first."""
    est = _fit(synthetic, max_steps=20)
    folder = est.save(tmp_path / "a")
    assert est.save(folder) == folder  # only an adapter's files: re-saved in place
    (folder / "NOTES.md").write_text("mine")
    (folder / "runs").mkdir()
    (folder / "runs" / "test.trec").write_text("q0 Q0 d0 1 0.5 run")
    config = (folder / "config.json").read_bytes()
    for first in ("NOTES.md", "runs"):
        with pytest.raises(FileExistsError) as err:
            est.save(folder)
        assert str(err.value) == (
            f"{folder / first}: not part of an adapter folder, and saving over {folder} would delete it; "
            "move it out of the folder, or choose a new or empty folder"
        )
        assert (folder / "config.json").read_bytes() == config and (folder / "runs" / "test.trec").is_file()
        (folder / "NOTES.md").unlink(missing_ok=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # nothing staged was left behind


def test_save_without_an_encoder_warns_only_when_it_writes(synthetic, tmp_path, caplog):
    """An adapter that records no encoder warns once, naming the folder it is saved to; a save refused
    because the folder holds a file of the user's warned first, then refused, so the user read a
    warning about a file that was never written."""
    est = _fit(synthetic, max_steps=5)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "NOTES.md").write_text("mine")
    with caplog.at_level("WARNING", logger="search_adaptor.model"), pytest.raises(FileExistsError):
        est.save(busy)
    assert caplog.records == []
    with caplog.at_level("WARNING", logger="search_adaptor.model"):
        folder = est.save(tmp_path / "a")
    assert [r.getMessage() for r in caplog.records] == [
        f"search-adaptor: warning: {tmp_path / 'a'}: this adapter does not record the encoder it was trained "
        "on, so it cannot refuse vectors of another model; refit with encoder= to record it"
    ]
    assert (folder / "config.json").is_file()


def test_a_config_of_a_newer_version_or_with_nan_says_what_to_do(synthetic, tmp_path):
    """A field or hyperparameter a newer search-adaptor writes was refused with "re-save it with
    SearchAdaptor.save", which this older library cannot do: it cannot load the file. A NaN put in
    by hand was read (Python's json takes it), and the next save refused it as the caller's."""
    folder = _fit(synthetic, max_steps=5).save(tmp_path / "a")
    saved = json.loads((folder / "config.json").read_text())
    edits = {
        "new field": lambda c: c.update(new_field={"x": 1}),
        "new hyperparameter": lambda c: c["hyperparameters"].update(warmup_steps=10),
    }
    for version, fix in (
        ("99.0", f"it was written by search-adaptor 99.0, newer than this one ({__version__}): upgrade"),
        (__version__, "re-save it with SearchAdaptor.save or train it again with `search-adaptor fit`"),
        ("garbled", "re-save it with SearchAdaptor.save or train it again with `search-adaptor fit`"),
    ):
        for what, edit in edits.items():
            config = copy.deepcopy(saved)
            config["version"] = version
            edit(config)
            (folder / "config.json").write_text(json.dumps(config))
            with pytest.raises(ValueError) as err:
                SearchAdaptor.load(folder)
            assert str(err.value).endswith(fix), (version, what, str(err.value))
    config = copy.deepcopy(saved)  # NaN, which Python's json reads and no other reader does
    config["metrics"] = {"val": float("nan")}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        SearchAdaptor.load(folder)
    assert str(err.value) == (
        f"{folder / 'config.json'}: not valid JSON (NaN is not a JSON number: write null); re-save it with "
        "SearchAdaptor.save or train it again with `search-adaptor fit`"
    )
    saved["version"] = "99.0"  # a newer writer that added nothing: its format_version says it loads
    (folder / "config.json").write_text(json.dumps(saved))
    assert SearchAdaptor.load(folder).__sklearn_is_fitted__()


def test_load_names_a_model_folder_and_an_edited_query_dim(synthetic, tmp_path):
    """A Hugging Face / sentence-transformers model folder (a config.json of another kind) was "field
    'format_version' must be an integer >= 1, got null; re-save it"; a query_dim a shared adapter
    cannot take failed inside networks.py without naming the file."""
    model = tmp_path / "all-MiniLM-L6-v2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    with pytest.raises(ValueError) as err:
        SearchAdaptor.load(model)
    assert str(err.value) == (
        f"{model}: not a search-adaptor adapter folder (its config.json has no format_version); give the "
        "folder `search-adaptor fit` wrote (OUT/adapter) or one SearchAdaptor.save wrote"
    )
    folder = _fit(synthetic, max_steps=20).save(tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "query_dim": 32}))
    with pytest.raises(ValueError) as err:
        SearchAdaptor.load(folder)
    assert str(err.value).startswith(
        f"{folder / 'config.json'}: field 'query_dim': 32-d queries and 16-d documents need mode "
        "'query_only' or 'separate'; remove the field"
    )


UNTABULATED = {
    "adapted only": ({"adapted": {"ndcg@10": 0.61}}, "test.zero-shot must be an object {metric: number}"),
    "a NaN metric": (
        {"adapted": {"ndcg@10": float("nan")}, "zero-shot": {"ndcg@10": 0.5}},
        "test.adapted.ndcg@10 must be a finite number, got NaN",
    ),
    "a string": ("held-out", 'test must be an object {system: {metric: number}}, got "held-out"'),
    "per-query scores": (
        {"adapted": {"ndcg@10": 0.6, "per_query": {"q1": 0.3}}, "zero-shot": {"ndcg@10": 0.5}},
        'test.adapted.per_query must be a finite number, got {"q1": 0.3}',
    ),
    "a system short of a metric": (
        {"adapted": {"ndcg@10": 0.6}, "zero-shot": {"ndcg@10": 0.5}, "bm25": {"mrr": 0.4}},
        "test.bm25.ndcg@10 must be a finite number, got nothing",
    ),
}


@pytest.mark.parametrize("case", UNTABULATED)
def test_save_refuses_a_test_table_that_load_would_refuse_before_writing(synthetic, tmp_path, case):
    """``save(extra={"test": ...})`` wrote a folder ``load`` then refused (a table without zero-shot,
    a NaN) or crashed with a raw AttributeError or TypeError (a string, per-query scores): both ask
    the same question, and save asks it before writing, in one line naming the field."""
    test, problem = UNTABULATED[case]
    est = _fit(synthetic, max_steps=20)
    with pytest.raises(ValueError) as err:
        est.save(tmp_path / "a", extra={"test": test})
    assert str(err.value).startswith(f"extra: {problem}") and "keep results of other shapes" in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "a").exists()
    est.save(tmp_path / "a")
    config = tmp_path / "a" / "config.json"
    config.write_text(config.read_text().replace('"metrics": {}', f'"metrics": {json.dumps({"test": test})}'))
    edited = "not valid JSON (NaN is not a JSON number" if case == "a NaN metric" else f"metrics.{problem}"
    with pytest.raises(ValueError, match=re.escape(f"{config}: {edited}")):
        SearchAdaptor.load(tmp_path / "a")


def test_refuses_other_dimension_and_other_model(synthetic, tmp_path):
    est = _fit(
        synthetic,
        max_steps=20,
        encoder={"fingerprint": "sentence-transformers:model-a:111", "model": "model-a"},
    )
    est.save(tmp_path / "a")
    loaded = SearchAdaptor.load(tmp_path / "a")
    with pytest.raises(CompatibilityError, match=r"expects 16-d embeddings of model-a, got 8-d") as err:
        loaded.transform_queries(np.ones((2, 8), dtype=np.float32))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"expected a 2-D array .* got shape \(16,\); pass one vector as"):
        loaded.transform_queries(np.ones(16, dtype=np.float32))  # the right width, one row unwrapped
    with pytest.raises(CompatibilityError, match=r"model-a.*openai:text-embedding-3-small"):
        loaded.check_encoder("openai:text-embedding-3-small:222")
    loaded.check_encoder("sentence-transformers:model-a:111", 16)
    # the same model's vectors brought with --embeddings: "use the same encoder" was all it said
    with pytest.raises(CompatibilityError) as err:
        loaded.check_encoder("precomputed:model-a")
    assert str(err.value).endswith(
        "vectors brought with --embeddings cannot prove which model made them, so an adapter fit through "
        "model-a's encoder takes only vectors that encoder makes: drop --embeddings (the store embeds the "
        "texts, once), or fit the adapter on these vectors"
    )


@pytest.mark.parametrize(
    ("bad", "got"),
    [
        (np.full((2, 16), "0.1"), "got <U3 of shape (2, 16)"),  # numbers read from a file as text
        (np.ones((2, 16), dtype=bool), "got bool of shape (2, 16)"),
        ([[0.1] * 16, [0.1] * 15], "got rows of unequal lengths"),
        ([[None] * 16], "got object of shape (1, 16)"),
    ],
)
def test_vectors_that_are_not_numbers_are_refused_naming_the_side(synthetic, bad, got):
    """Strings, booleans, ragged rows and objects are refused by fit and by transform, in one line that
    names the side (numpy's "could not convert string to float" named neither)."""
    est = _fit(synthetic, max_steps=20)
    for call, what in (
        (lambda: est.transform_queries(bad), "queries"),
        (lambda: est.transform_corpus(bad), "corpus"),
        (lambda: SearchAdaptor(**FAST).fit(bad, synthetic["D"], {"q0": {"d0": 1}}), "query embeddings"),
    ):
        with pytest.raises(ValueError, match="of numbers, " + re.escape(got)) as err:
            call()
        assert str(err.value).startswith(f"{what}: expected ") and "\n" not in str(err.value)


def test_fit_save_load_refuses_vectors_of_another_model(synthetic, tmp_path):
    """The estimator records its encoder: vectors labelled with another model are refused after a
    Python fit, save and load, by every consumer, naming both models."""
    model_a = CountingEncoder(dim=16)
    model_b = CountingEncoder(dim=16)
    model_b.model = "fake-model-b"
    est = _fit(synthetic, max_steps=20, encoder=model_a)
    est.save(tmp_path / "a")
    loaded = SearchAdaptor.load(tmp_path / "a")
    assert loaded.encoder_ == model_a.info()
    for consumer in (
        lambda: loaded.transform_queries(synthetic["Q"], encoder=model_b),
        lambda: loaded.transform_corpus(synthetic["D"], encoder=model_b.info()),
        lambda: loaded.check_encoder(model_b.fingerprint),
        lambda: AdaptedEncoder(model_b, tmp_path / "a"),
        lambda: evaluate_embeddings(
            Embeddings(synthetic["qids"], synthetic["Q"], synthetic["dids"], synthetic["D"], model_b.info()),
            synthetic["qrels"],
            loaded,
        ),
    ):
        with pytest.raises(CompatibilityError) as err:
            consumer()
        assert model_a.fingerprint in str(err.value) and model_b.fingerprint in str(err.value)
    same = loaded.transform_queries(synthetic["Q"], encoder=model_a)
    assert np.array_equal(same, est.transform_queries(synthetic["Q"]))


def test_a_model_name_as_encoder_is_told_to_be_a_fingerprint_both_ways(synthetic):
    """encoder="the model's name" against an adapter fit with the Encoder (and the Encoder against one fit
    with a name) ended with "use the same encoder ... as at training time", though it was the same model."""
    model = CountingEncoder(dim=16)
    by_encoder = _fit(synthetic, max_steps=5, encoder=model)
    with pytest.raises(CompatibilityError) as err:
        by_encoder.transform_queries(synthetic["Q"], encoder=model.model)
    assert str(err.value).endswith(
        "a name given as encoder= is compared with the recorded fingerprint as it is: pass the Encoder that "
        f"made these vectors, its info() dict, or {model.fingerprint!r}"
    )
    by_name = _fit(synthetic, max_steps=5, encoder="my-model")
    with pytest.raises(
        CompatibilityError, match=r"fit with encoder='my-model', a name for vectors made elsewhere"
    ):
        by_name.transform_queries(synthetic["Q"], encoder=model)
    assert np.array_equal(
        by_name.transform_queries(synthetic["Q"], encoder="my-model"),
        by_name.transform_queries(synthetic["Q"]),
    )


def test_saving_the_same_adapter_again_writes_the_same_weights_file(synthetic, tmp_path):
    """Two metadata keys came out of safetensors in a random order, so the same command gave an
    adapter.safetensors of another hash now and then: users compare shipped files by hash."""
    est = _fit(synthetic, max_steps=5)
    blobs = set()
    for i in range(12):
        est.save(tmp_path / f"a{i}")
        blobs.add((tmp_path / f"a{i}" / "adapter.safetensors").read_bytes())
    assert len(blobs) == 1


def test_a_perfect_graded_ranking_saves_and_loads(synthetic, tmp_path):
    """A perfect graded ranking's nDCG@10 is 1.0000000000000002 (pytrec_eval's too): fit ended, after
    training, with 'must be in [0, 1]' and saved nothing."""
    perfect = evaluate(
        {"q": {f"d{i}": g for i, g in enumerate([2, 1, 1, 2, 1, 1, 1, 1, 2])}},
        {"q": {f"d{i}": s for i, s in enumerate([9, 5, 4, 8, 3, 2, 1.5, 1, 7])}},
        "ndcg@10",
    )["ndcg@10"]
    assert perfect > 1.0
    est = _fit(synthetic, max_steps=5)
    est.save(
        tmp_path / "a", extra={"test": {"adapted": {"ndcg@10": perfect}, "zero-shot": {"ndcg@10": perfect}}}
    )
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config["training"]["val_ndcg@10"] = perfect
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    assert SearchAdaptor.load(tmp_path / "a").metrics_["test"]["adapted"]["ndcg@10"] == perfect


def test_fitted_state_is_the_same_after_fit_and_load(synthetic, tmp_path):
    est = _fit(synthetic, max_steps=40, encoder={"fingerprint": "fake:m:1", "model": "m"})
    est.save(tmp_path / "a")
    loaded = SearchAdaptor.load(tmp_path / "a")
    fitted = {k for k in vars(est) if k.endswith("_")}
    assert fitted == {k for k in vars(loaded) if k.endswith("_")}
    for name in fitted - {"query_net_", "corpus_net_", "fit_time_"}:
        assert getattr(loaded, name) == getattr(est, name), name
    assert loaded.fit_time_ == pytest.approx(est.fit_time_, abs=1e-3)
    for side in ("query_net_", "corpus_net_"):
        a, b = getattr(est, side).state_dict(), getattr(loaded, side).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), side
    assert (loaded.corpus_net_ is loaded.query_net_) == (est.corpus_net_ is est.query_net_)


def test_nan_embeddings_are_refused_naming_the_query(synthetic):
    bad = synthetic["Q"].copy()
    bad[5, 3] = np.nan
    with pytest.raises(ValueError, match=r"query embeddings: the vector of query 'q5' contains NaN"):
        SearchAdaptor(**FAST).fit(
            bad, synthetic["D"], synthetic["qrels"], synthetic["qids"], synthetic["dids"]
        )
    est = _fit(synthetic, max_steps=20)
    with pytest.raises(ValueError, match="row 5 contains NaN or inf"):
        est.transform_queries(bad)


def test_bad_fit_inputs_fail_with_one_clear_line(synthetic):
    d = synthetic
    with pytest.raises(ValueError, match="16-d but corpus embeddings are 8-d"):
        SearchAdaptor().fit(d["Q"], d["D"][:, :8], d["qrels"], d["qids"], d["dids"])
    with pytest.raises(ValueError, match="names document 'nope'"):
        SearchAdaptor().fit(d["Q"], d["D"], {"q0": {"nope": 1}, "q1": {"d1": 1}}, d["qids"], d["dids"])
    with pytest.raises(ValueError, match=r"^qrels: need at least 2 labelled queries"):
        SearchAdaptor().fit(d["Q"], d["D"], {"q0": {"d0": 1}}, d["qids"], d["dids"])
    with pytest.raises(ValueError, match="mode must be one of"):
        SearchAdaptor(mode="both").fit(d["Q"], d["D"], d["qrels"], d["qids"], d["dids"])
    twice = [d["qids"][0], *d["qids"][:-1]]
    with pytest.raises(
        ValueError, match=r"^query_ids: duplicate query id 'q0' \(rows 0 and 1\): each row needs its own"
    ):
        SearchAdaptor().fit(d["Q"], d["D"], {"q0": {"d0": 1}, "q1": {"d1": 1}}, twice, d["dids"])
    with pytest.raises(ValueError, match=r"^corpus_ids: duplicate document id 'd0' \(rows 0 and 1\)"):
        SearchAdaptor().fit(d["Q"], d["D"], d["qrels"], d["qids"], [d["dids"][0], *d["dids"][:-1]])
    with pytest.raises(ValueError, match=r"^temperature must be > 0; got 0$"):
        SearchAdaptor(temperature=0).fit(d["Q"], d["D"], d["qrels"], d["qids"], d["dids"])
    with pytest.raises(ValueError, match=r"^alpha must be >= 0; got -0.5$"):
        SearchAdaptor(alpha=-0.5).fit(d["Q"], d["D"], d["qrels"], d["qids"], d["dids"])
    with pytest.raises(NotFittedError, match="not fitted"):
        SearchAdaptor().transform_queries(d["Q"])


def test_an_unfitted_adapter_lacks_its_fitted_attributes_as_scikit_learn_says(synthetic):
    """Before fit, a fitted attribute is absent (hasattr() is False, inspect.getmembers() lists the
    rest) and a fitted method raises NotFittedError, a ValueError and an AttributeError as
    scikit-learn's is; its check_is_fitted tells the two states apart."""
    est = SearchAdaptor()
    assert not hasattr(est, "is_identity_") and not hasattr(est, "fingerprint_")
    assert "fit" in dict(inspect.getmembers(est))
    with pytest.raises(NotFittedError, match=r"^this SearchAdaptor is not fitted yet: call fit\(\)") as err:
        est.transform_queries(synthetic["Q"])
    assert isinstance(err.value, ValueError) and isinstance(err.value, AttributeError)
    validation = pytest.importorskip("sklearn.utils.validation")
    with pytest.raises(validation.NotFittedError):
        validation.check_is_fitted(est)
    validation.check_is_fitted(_fit(synthetic, max_steps=20))


def test_fitted_params_are_what_the_fitted_adapter_computes_with_not_later_set_params(synthetic, tmp_path):
    """set_params after fit changes the attributes (for the next fit), not the fitted adapter:
    fitted_params_ stays what fit validated (dims a list of ints), is a copy, and load gives the same."""
    with pytest.raises(NotFittedError, match="not fitted"):
        SearchAdaptor().fitted_params_  # noqa: B018
    est = _fit(synthetic, max_steps=20, mode="shared", dims=np.array([8, 16]))
    est.set_params(mode="query_only", dims=None, init="pca")
    fitted = est.fitted_params_
    assert (fitted["mode"], fitted["dims"], fitted["init"]) == ("shared", [8, 16], "identity")
    fitted["mode"] = "separate"
    fitted["dims"].append(4)
    assert est.fitted_params_["mode"] == "shared" and est.fitted_params_["dims"] == [8, 16]
    est.save(tmp_path / "a")
    assert SearchAdaptor.load(tmp_path / "a").fitted_params_ == est.fitted_params_


def test_evaluate_describes_the_fitted_adapter_not_hyperparameters_set_after_the_fit(synthetic):
    """run_evaluate read the sizes it scores (and the variant it names, the loss that tells seen
    queries) from the attributes, which set_params may change after the fit; a dims array there
    failed ("truth value of an array is ambiguous"). The fitted adapter's sizes and variant count."""
    d = synthetic
    qids = d["qids"]
    dataset = Dataset(
        "syn",
        Path("syn"),
        list(d["dids"]),
        list(d["dids"]),
        {q: q for q in qids},
        {"train": {q: d["qrels"][q] for q in qids[:120]}, "test": {q: d["qrels"][q] for q in qids[120:]}},
    )
    emb = Embeddings(qids, d["Q"], d["dids"], d["D"], describe_encoder("syn-16"))
    train = {q: d["qrels"][q] for q in qids[:120]}
    est = SearchAdaptor(**FAST, dims=[4, 8]).fit(d["Q"], d["D"], train, qids, d["dids"], encoder="syn-16")
    assert not est.kept_start_
    est.set_params(dims=np.array([2, 12]), mode="separate", loss="similarity", architecture="linear")
    report = run_evaluate(dataset, emb, est).report
    assert {m for m in report["metrics"] if "@" in m} == {
        f"{s}@{m}" for s in ("zero-shot", "pca", "adapted") for m in (4, 8)
    }
    assert report["selected"] == "saved adapter (mlp, shared, ranking)"
    assert report["seen_in_training"] == {"n": 0, "of": 40, "by": "id"}
    assert _scored_sizes(emb, np.array([8, 4, 16]))[0] == [4, 8]  # an array, as a parameter grid gives


def test_a_cross_model_adapters_start_is_rebuilt_with_its_fitted_init(synthetic):
    """evaluate's reference for a cross-model adapter is the closed-form map its fit started from:
    the fitted init (lstsq), not one set_params gave it afterwards (procrustes)."""
    d = synthetic
    M = np.random.default_rng(1).normal(size=(16, 12))
    Qx, P = (d["Q"] @ M).astype(np.float32), (d["D"] @ M).astype(np.float32)
    cross = {"mode": "query_only", "init": "lstsq", "loss": "infonce", "in_batch": True, "beta": 0.0}
    est = SearchAdaptor(**{**FAST, **cross, "max_steps": 20}).fit(
        Qx, d["D"], d["qrels"], d["qids"], d["dids"], encoder="doc", query_encoder="query", pairs=(P, d["D"])
    )
    est.set_params(init="procrustes")
    emb = Embeddings(
        d["qids"],
        Qx,
        d["dids"],
        d["D"],
        describe_encoder("doc"),
        query_encoder=describe_encoder("query"),
        pairs=P,
    )
    a, b = usable_pairs(P, d["D"])
    expected = pair_map(l2_normalize(a), l2_normalize(b), "lstsq")
    np.testing.assert_array_equal(PairStart.of(est, emb).map, expected)


@pytest.mark.parametrize("method", ["encode_queries", "encode_corpus"])
@pytest.mark.parametrize(
    ("texts", "shown"), [("q", r"bare str .*wrap a single text"), (b"q", r"bare bytes .*decode")]
)
def test_an_adapted_encoder_refuses_a_bare_text_naming_itself(synthetic, method, texts, shown):
    """A bare str or bytes is refused as every encoder refuses it (it would be read letter by
    letter), naming AdaptedEncoder's method, before anything is sent to the base encoder."""
    base = CountingEncoder(dim=16)
    adapted = AdaptedEncoder(base, _fit(synthetic, max_steps=5, encoder=base.info()), cache=False)
    with pytest.raises(
        TypeError, match=rf"^AdaptedEncoder\.{method}\(\) takes a list of texts, not a {shown}"
    ):
        getattr(adapted, method)(texts)
    assert base.calls == []
    with pytest.raises(ValueError, match="nothing to embed: the list of texts is empty"):
        getattr(adapted, method)([])


def test_a_rows_adapted_vector_does_not_depend_on_its_batch():
    """Bit for bit, whatever the batch size and the BLAS thread count: BLAS's matrix-matrix kernels
    round a row differently by batch shape (which sizes agree varies with the CPU and threads)."""
    torch.manual_seed(0)
    net = ResidualAdapter(384, 384)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    X = np.random.default_rng(0).standard_normal((300, 384)).astype(np.float32)
    full = numpy_forward(net, X)
    for size in (1, 2, 3, 4, 5, 7, 8, 12, 16, 17, 32, 33, 64):
        parts = np.concatenate([numpy_forward(net, X[i : i + size]) for i in range(0, len(X), size)])
        assert np.array_equal(parts, full), size
    with threadpool_limits(limits=1, user_api="blas"):
        assert np.array_equal(numpy_forward(net, X), full)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)  # unit to within float32 rounding
    mixed = np.vstack([unit[:1], 3.0 * unit[1:2]])  # next to a row that is far from unit norm
    alone = adapt_rows(NumpyNet(net), unit[:1], "queries")
    assert np.array_equal(adapt_rows(NumpyNet(net), mixed, "queries")[:1], alone)


def test_a_fit_leaves_torch_global_rng_alone(synthetic):
    """A fit draws its initial weights from its own generator only: a caller's torch.manual_seed()
    stream went on differently after a fit (nn.Linear's default init drew from the global RNG)."""
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    _fit(synthetic, max_steps=5, mode="separate", init="pca")  # projection, two networks, predictor
    assert torch.equal(torch.rand(3), want)


@pytest.mark.parametrize(
    "params", [{"mode": "separate", "init": "pca"}, {"mode": "shared"}, {"mode": "query_only"}]
)
def test_load_and_at_start_leave_torch_global_rng_alone_and_the_weights_as_saved(synthetic, tmp_path, params):
    """load built its networks with torch's default init, drawn from the global RNG, then overwrote
    them from the file (at_start from the start's states): a caller's torch.manual_seed() stream went
    on differently after a load. The weights, and what the adapter computes, are the saved ones."""
    est = _fit(synthetic, max_steps=20, **params)
    est.save(tmp_path / "a")
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    loaded = SearchAdaptor.load(tmp_path / "a")
    assert torch.equal(torch.rand(3), want)
    torch.manual_seed(0)
    start = est.at_start()
    assert torch.equal(torch.rand(3), want)
    for side in ("query_net_", "corpus_net_"):
        saved, read = getattr(est, side), getattr(loaded, side)
        assert (saved is None) == (read is None) and (read is loaded.query_net_) == (saved is est.query_net_)
        if saved is not None:
            a, b = saved.state_dict(), read.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), side
    assert np.array_equal(loaded.transform_queries(synthetic["Q"]), est.transform_queries(synthetic["Q"]))
    assert np.array_equal(loaded.transform_corpus(synthetic["D"]), est.transform_corpus(synthetic["D"]))
    own = [start.query_net_] + ([start.corpus_net_] if params["mode"] == "separate" else [])
    for net, state in zip(own, est._start, strict=True):  # the networks as the fit began
        assert net.state_dict().keys() == state.keys()
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert est.fingerprint_ == loaded.fingerprint_


def test_a_no_skip_fit_competes_with_its_true_start_and_keeps_it_when_nothing_beats_it(synthetic):
    """Without the skip connection an MLP starts as a random draw, which was scored as step 0 and
    recorded as zero-shot (0.19 here, the identity 0.45), so a checkpoint far below zero-shot shipped;
    a kept PCA start computed that random MLP over the rotation. The start is the projection alone:
    the identity, or a rotation, which keeps every cosine."""
    zero_shot = _fit(synthetic, max_steps=1, eval_every=1).zero_shot_score_  # with the skip connection
    cosines = l2_normalize(synthetic["Q"]) @ l2_normalize(synthetic["D"]).T
    for init in ("identity", "pca"):
        est = _fit(synthetic, residual=False, init=init, max_steps=20, eval_every=20)
        assert est.zero_shot_score_ == pytest.approx(zero_shot, abs=1e-3) == est.history_[0]["ndcg@10"]
        assert est.best_step_ == 0 and est.best_score_ == est.zero_shot_score_  # 20 steps: about 0.2
        assert est.is_identity_ == (init == "identity")
        np.testing.assert_allclose(est.score(synthetic["Q"], synthetic["D"]), cosines, atol=1e-5)


def test_float64_rows_that_float32_cannot_hold_are_adapted_as_fit_reads_them(synthetic):
    """fit scales each row by its largest value before casting (embed.unit_rows: 1e-50 and 1e300
    train as 1 would); transform_* cast first, so 1e-50 came out as zero rows and 1e300 was refused
    as NaN or inf. Such rows now give the direction the float32 rows give (the same bits whatever
    power of two scales them); zero and NaN rows are kept and refused as float32 ones are."""
    est = _fit(synthetic, max_steps=30)
    want = est.transform_queries(synthetic["Q"])
    assert np.array_equal(est.transform_queries(synthetic["Q"].tolist()), want)  # float32 numbers as float64
    Q = synthetic["Q"].astype(np.float64)
    tiny = est.transform_queries(Q * 2.0**-200)
    assert np.array_equal(est.transform_queries(Q * 2.0**1000), tiny)
    np.testing.assert_allclose(tiny, want, atol=1e-6)
    for scale in (1e-50, 1e300):
        np.testing.assert_allclose(est.transform_corpus(Q * scale), est.transform_corpus(Q), atol=1e-6)
    odd = Q * 1e-50
    odd[1] = 0.0
    out = est.transform_queries(odd)
    assert not out[1].any() and np.array_equal(out[2:], tiny[2:])
    odd[2, 0] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN or inf"):
        est.transform_queries(odd)


def test_float32_rows_refuses_what_transform_refuses_and_casts_rows_of_no_values():
    """float32_rows is for any caller adapting rows through numpy_side: a list was an AttributeError,
    a 1-D array a numpy axis error and an (n, 0) array a reduction error with no initial value."""
    assert np.array_equal(float32_rows([[1.0, 2.0]], "q"), np.array([[1.0, 2.0]], np.float32))
    for shape in ((3, 0), (0, 3), (0, 0)):
        out = float32_rows(np.zeros(shape), "q")
        assert out.shape == shape and out.dtype == np.float32
    with pytest.raises(ValueError) as err:
        float32_rows([1.0, 2.0], "q")
    assert str(err.value) == (
        "q: expected a 2-D array (one row per text), got shape (2,); pass one vector as x.reshape(1, -1)"
    )
    with pytest.raises(ValueError) as err:  # the hint for one vector made (2, 3, 4) one row of 24
        float32_rows(np.zeros((2, 3, 4)), "q")
    assert str(err.value) == (
        "q: expected a 2-D array (one row per text), got shape (2, 3, 4); "
        "for rows of the last axis, pass x.reshape(-1, x.shape[-1])"
    )
    with pytest.raises(ValueError, match=r"^q: expected a 2-D array \(one row per text\), got shape \(\); "):
        float32_rows(np.float32(1.0), "q")
    with pytest.raises(ValueError, match=r"^q: expected a 2-D array of numbers"):
        float32_rows([["a"]], "q")


def test_a_rows_adapted_vector_does_not_depend_on_the_arrays_memory_order(synthetic):
    """Fortran-ordered rows (np.asfortranarray, a pandas DataFrame) were adapted up to 1.2e-7 away
    from the same rows in C order: their sums were rounded in another order."""
    pd = pytest.importorskip("pandas")
    est = _fit(synthetic, max_steps=40, lr=3e-3)
    assert est.best_step_ > 0  # the network is applied
    for X in (synthetic["Q"], synthetic["Q"].astype(np.float64)):
        want = est.transform_queries(X)
        for other in (np.asfortranarray(X), pd.DataFrame(X), np.asfortranarray(np.hstack([X, X]))[:, :16]):
            assert np.array_equal(est.transform_queries(other), want)
            assert np.array_equal(est.transform_corpus(other), est.transform_corpus(X))
