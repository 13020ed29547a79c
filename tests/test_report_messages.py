"""What report.md and the terminal say about a run: each sentence true of the run it describes (how
the candidates were selected, what the scored queries have to do with training, why the identity
shipped, what to do about a loss), and an adapter path that misses names the one meant."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from search_adaptor.cli import main
from search_adaptor.experiment import IDENTITY, fit_family
from search_adaptor.report import identity_lines, loss_lines, render_markdown, seen_lines
from test_hostile import write_beir, write_vectors


def _report(**changes: Any) -> dict[str, Any]:
    """A fit's report.json (protocol test, validation on a share of `train`), with ``changes``; a
    ``validation`` dict in them updates the validation block."""
    scores = {"ndcg@10": 0.8, "recall@100": 0.9, "mrr@10": 0.7, "map@100": 0.7}
    report: dict[str, Any] = {
        "dataset": "data",
        "model": "m",
        "family": "auto",
        "protocol": "test",
        "test_split": "test",
        "n_test_queries": 60,
        "train_split": "train",
        "metrics": {"zero-shot": scores, "adapted": dict(scores)},
        "significance": {"metric": "ndcg@10", "p_value": 1.0},
        "selected": "shared-infonce",
        "selection_rule": "max-se",
        "seen_in_training": {"n": 0, "of": 60},
    }
    validation = {
        "metric": "ndcg@10",
        "selection": "validation",
        "split": None,
        "n_val_queries": 50,
        "selected_val_ndcg@10": 0.9,
        "zero_shot_val_ndcg@10": 0.85,
        "candidates": [
            {
                "variant": "shared-infonce",
                "val_ndcg@10": 0.9,
                "zero_shot_val_ndcg@10": 0.85,
                "best_step": 50,
                "n_steps": 60,
                "train_s": 1.0,
            }
        ],
    }
    validation.update(changes.pop("validation", {}))
    return {**report, "validation": validation, **changes}


def _worse(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with the adapter significantly below zero-shot on the scored queries."""
    metrics = {**report["metrics"], "adapted": {**report["metrics"]["adapted"], "ndcg@10": 0.7}}
    return {**report, "metrics": metrics, "significance": {"metric": "ndcg@10", "p_value": 0.001}}


def _evaluate(seen: dict[str, Any] | None) -> dict[str, Any]:
    """An evaluate report whose scored queries relate to the adapter's training as ``seen`` says."""
    return _report(protocol="evaluate", test_split="train", seen_in_training=seen, family=None)


def test_a_map_trained_on_query_texts_without_labels_says_texts_not_labels():
    """An unlabelled cross-model map (or unsupervised Matryoshka fit) trains on the query texts, its
    labels unused: evaluate's warning said those queries' "labels trained or chose" it."""
    report = {**_evaluate({"n": 80, "of": 80}), "validation": {"metric": "neighbours@10"}}
    (warning,) = seen_lines(report)
    assert warning.startswith(
        "WARNING: 80 of the 80 scored queries have the text of a query whose text (its labels unused) "
        "trained or validated this adapter;"
    )
    assert "whose labels" not in render_markdown(report)


def test_an_adapter_that_records_query_ids_only_is_checked_by_id():
    """An adapter fit in Python records its queries' ids, not their texts: evaluate's report said
    their relation was unknown, and no WARNING, though the ids were there to check. An id is all it
    knows: the scored queries "have the id of" a training query read as if they were that query, and
    on another dataset the ids merely coincide, so it says they share an id, and what follows if
    they are the same queries."""
    seen = {"n": 60, "of": 60, "by": "id"}
    markdown = render_markdown(_evaluate(seen))
    assert (
        "Protocol: a saved adapter scored on the 60 `train` queries; 60 of them share an id with a query "
        "whose labels trained or chose it (the adapter records those queries' ids, not their texts, so "
        "the check is by id: if they are the same queries, their scores are not held-out)."
    ) in markdown
    warning = (
        "WARNING: 60 of the 60 scored queries share an id with a query whose labels trained or chose "
        "this adapter (it records ids, not texts); if they are the same queries, these scores are not "
        "held-out and flatter it"
    )
    assert seen_lines(_evaluate(seen))[0].startswith(warning) and warning in markdown
    assert seen_lines(_evaluate({"n": 3, "of": 30, "by": "id"})) == [
        "WARNING: 3 of the 30 scored queries share an id with a query whose labels trained or chose this "
        "adapter (it records ids, not texts); if they are the same queries, their scores are not "
        "held-out: drop them from the split for a held-out score."
    ]
    held_out = render_markdown(_evaluate({"n": 0, "of": 60, "by": "id"}))
    assert (
        "none of them shares an id with a query whose labels trained or chose it: the scores are held-out"
        in held_out
    )
    assert "WARNING" not in held_out
    # by text (a `fit`'s digests) reads as before; without texts or ids, the relation is unknown
    assert "have the text of a query" in seen_lines(_evaluate({"n": 60, "of": 60}))[0]
    unknown = render_markdown(_evaluate(None))
    assert "records neither the texts nor the ids of the queries it was trained on" in unknown


def test_the_advice_for_seen_queries_holds_for_an_adapter_of_a_kfold_fit():
    """A k-fold fit has no split it held out: "score the split `fit` held out" sent its users nowhere."""
    (line,) = seen_lines(_evaluate({"n": 60, "of": 60}))
    assert "the split `fit` held out" not in line
    assert "a k-fold fit trained it on every labelled query" in line


def test_the_protocol_sentence_counts_the_dev_queries_left_out():
    """A dev split's queries that the scored split also holds are left out of validation (or of the
    pool --selection kfold makes of it and the training queries): report.json counted only the
    training split's, and report.md said neither."""
    left = {"val_left_out": {"split": "dev", "n": 1, "of": 31}}
    dev = render_markdown(_report(**left, validation={"split": "dev", "n_val_queries": 30}))
    assert "select on the `dev` split without the 1 of its 31 queries that `test` also holds, report" in dev
    pooled = render_markdown(_report(**left, validation={"selection": "kfold", "n_val_queries": 90}))
    assert (
        "the winner then trained on all of them), the `dev` split's queries pooled in without the 1 of "
        "its 31 queries that `test` also holds, report on"
    ) in pooled
    folds = render_markdown(
        _report(**left, protocol="kfold", folds=3, validation={"split": "dev", "n_val_queries": 30})
    )
    assert "selected on the `dev` split without the 1 of its 31 queries that `test` also holds, and" in folds
    for none in ({"split": "dev", "n": 0, "of": 30}, None):  # nothing left out, or no dev split
        quiet = render_markdown(_report(val_left_out=none, validation={"split": "dev", "n_val_queries": 30}))
        assert "select on the `dev` split, report on" in quiet


def test_kfold_selection_is_described_as_kfold():
    """`fit --selection kfold` compared the candidates by k-fold over the training queries: report.md
    said they were selected on "a validation split carved from it", and its WARNING advised the very
    `--selection kfold` the fit had used."""
    report = _report(validation={"selection": "kfold", "n_val_queries": 250})
    markdown = render_markdown(report)
    assert "carved" not in markdown
    assert "Protocol: train on `train`, select by k-fold cross-validation over its queries" in markdown
    (warning,) = loss_lines(_worse(report))
    assert "--selection kfold" not in warning
    assert "selection by k-fold over the training queries did not carry over" in warning
    # without a train split each fold's selection cross-validates within the other folds
    folds = render_markdown({**report, "protocol": "kfold", "folds": 3})
    assert "selected on the other folds, by k-fold cross-validation within them" in folds
    # the identity kept by k-fold selection
    (line,) = identity_lines({**report, "selected": "identity (zero-shot)"})
    assert line.startswith("No variant beat zero-shot in k-fold cross-validation over the training queries")


def test_the_loss_warning_advises_what_the_run_did_not_do():
    """A fit validated on a dev split was told to add a `qrels/dev.tsv`; an unsupervised one to refit
    with `--selection kfold`, which refuses a fit without labels."""
    (dev,) = loss_lines(_worse(_report(validation={"split": "dev", "n_val_queries": 30})))
    assert "qrels/dev.tsv" not in dev and "selection on the `dev` split did not carry over" in dev
    unlabelled = _report(family="matryoshka-unsupervised", validation={"metric": "neighbours@10"})
    (line,) = loss_lines(_worse(unlabelled))
    assert "--selection kfold" not in line and "without --unsupervised" in line
    (share,) = loss_lines(_worse(_report()))
    assert "add a `qrels/dev.tsv`, or refit with `--selection kfold`" in share


def test_a_significant_loss_in_another_metric_is_warned_too():
    """An unlabelled cross-model map rose in nDCG@10 (+0.021, p 0.14) while recall@100 fell from 0.577
    to 0.524, and nothing said so: every reported metric is tested now (``p_values``) and a
    significant loss in any of them is a warning, whatever nDCG@10 did."""
    base = _report()
    metrics = {**base["metrics"], "adapted": {**base["metrics"]["adapted"], "recall@100": 0.85}}
    deep = {"metric": "ndcg@10", "p_value": 1.0, "p_values": {"recall@100": 0.002, "mrr@10": 1.0}}
    (line,) = loss_lines({**base, "metrics": metrics, "significance": deep})
    assert line.startswith(
        "WARNING: the adapter is significantly below zero-shot on the 60 scored queries in -0.0500 "
        "recall@100, p = 0.002 (not in ndcg@10): where those matter"
    )
    assert (
        loss_lines({**base, "metrics": metrics, "significance": {**deep, "p_values": {"recall@100": 0.3}}})
        == []
    )
    worse = _worse(base)  # both: one warning naming both losses
    worse["metrics"]["adapted"]["recall@100"] = 0.85
    worse["significance"]["p_values"] = {"recall@100": 0.002}
    (both,) = loss_lines(worse)
    assert "(-0.1000 ndcg@10, p = 0.001, -0.0500 recall@100, p = 0.002): do not deploy it as it is" in both


def test_an_unsupervised_fit_that_kept_its_start_says_why():
    """`fit --unsupervised --dims 32` keeps its start when no training step beats it: there is no
    labelled validation split, so the "one standard error ... on validation" explanation was false."""
    report = _report(
        family="matryoshka-unsupervised",
        selected="its start (a PCA rotation of the corpus)",
        start="a PCA rotation of the corpus",
        validation={"metric": "neighbours@10", "n_val_queries": 0},
    )
    (line,) = identity_lines(report)
    assert "standard error" not in line
    assert line.startswith("No training step beat the start on validation overlap with the base top-10")
    assert "a PCA rotation of the corpus" in line
    # with labels, the noise rule is what kept the identity
    (labelled,) = identity_lines({**_report(), "selected": "identity (zero-shot)"})
    assert labelled == (
        "No variant beat zero-shot on validation by more than the noise of the validation split (one "
        "standard error of the per-query differences), so the saved adapter is the identity: retrieval "
        "is unchanged."
    )
    assert "noise" not in identity_lines({**_report(), "selected": IDENTITY, "selection_rule": "max"})[0]


def test_a_kfold_winner_that_kept_its_start_is_named_with_why_the_identity_shipped():
    """`select` marks the k-fold winner whose final fit kept its start (``kept_start``): the sentence
    names it and why, instead of "No variant beat zero-shot", which the k-fold scores contradict."""
    row = {**_report()["validation"]["candidates"][0], "best_step": 0, "kept_start": True}
    kfold = {"selection": "kfold", "n_val_queries": 100, "candidates": [row]}
    (line,) = identity_lines(_report(selected=IDENTITY, validation=kfold))
    assert line == (
        "shared-infonce won in k-fold cross-validation over the training queries by more than the noise "
        "of the k-fold scores (one standard error of the per-query differences), but trained on all the "
        "training queries it did not beat zero-shot on its own validation split (best step 0), so the "
        "saved adapter is the identity: retrieval is unchanged."
    )


def test_a_kept_start_is_named_from_the_report_not_guessed_from_the_family():
    """`evaluate` has no family: a kept Matryoshka rotation was "the identity: retrieval is unchanged".
    The report's ``start`` (the adapter's own words) decides; without one the adapter is the identity."""
    start = "a least-squares map 256 -> 384 of the paired texts"
    evaluated = _evaluate({"n": 0, "of": 60, "by": "id"})
    (line,) = identity_lines({**evaluated, "selected": f"its start ({start})", "start": start})
    assert line.endswith(
        f"so the saved adapter is its start, {start}, not the identity: retrieval is the zero-shot row's."
    )
    for family in ("matryoshka", "cross"):
        (identity,) = identity_lines(
            {**_report(family=family), "selected": "identity (zero-shot)", "start": None}
        )
        assert identity.endswith("so the saved adapter is the identity: retrieval is unchanged.")


def test_what_an_audit_of_the_reports_wording_found():
    """An independent audit recomputed every number and found them right, but three sentences not:
    a k-fold fit named the saved adapter "Selected variant" above a table of each fold's own winner;
    a fit whose test queries repeat training texts (SciFact: 2 of 300) warned only in report.md,
    where evaluate warns on the terminal; and p = 0.072 read "better than zero-shot"."""
    kfold = render_markdown(_report(protocol="kfold", folds=5))
    assert "Saved adapter: **shared-infonce** (each fold's own winner scored its held-out queries)." in kfold
    assert "Selected variant" not in kfold
    (line,) = seen_lines(_report(seen_in_training={"n": 2, "of": 300, "by": "text"}))
    assert line == (
        "WARNING: 2 of the 300 scored queries repeat the text of a query whose labels trained or chose this "
        "adapter (held-out by id, not by text); their scores flatter it: drop them from the split for a "
        "held-out score."
    )
    up = {**_report()["metrics"]["zero-shot"], "ndcg@10": 0.8217}
    noisy = _report(metrics={"zero-shot": _report()["metrics"]["zero-shot"], "adapted": up})
    noisy["significance"] = {"metric": "ndcg@10", "p_value": 0.07219}
    assert (
        "Adapted is above zero-shot by 0.0217 ndcg@10, not significantly (paired randomization test over "
        "queries: p = 0.07219)." in render_markdown(noisy)
    )
    noisy["significance"]["p_value"] = 0.001
    assert "Adapted is better than zero-shot by 0.0217 ndcg@10 (paired" in render_markdown(noisy)


def test_kfold_protocol_candidates_are_the_final_fits():
    """Without a train split every labelled query is scored: "the test queries play no part" was false."""
    markdown = render_markdown(_report(protocol="kfold", folds=3))
    assert "the test queries play no part" not in markdown
    assert "## Candidates (validation nDCG@10; from the final fit on all labelled queries" in markdown
    assert "the test queries play no part" in render_markdown(_report())


@pytest.mark.parametrize("run_folder", [True, False])
def test_an_adapter_path_that_is_a_fits_folder_names_its_adapter(tmp_path, capsys, run_folder):
    """`evaluate --adapter runs/X` (the fit's folder, not runs/X/adapter) was told to "point at a
    folder written by SearchAdaptor.save"."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    if run_folder:
        (run / "adapter" / "config.json").write_text(json.dumps({}))
    assert main(["evaluate", str(tmp_path / "data"), "--adapter", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    fix = (
        f"did you mean {Path(run) / 'adapter'}?"
        if run_folder
        else "point at an adapter folder: `search-adaptor fit`'s OUT_DIR/adapter, or one written by "
        "SearchAdaptor.save"
    )
    assert err == f"search-adaptor: error: {run / 'config.json'}: not found; {fix}"


def test_an_adapter_path_that_is_its_config_file_names_the_folder(tmp_path, capsys):
    """`--adapter runs/X/adapter/config.json` was 'config.json/config.json: not found'."""
    config = tmp_path / "adapter" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({}))
    assert main(["evaluate", str(tmp_path / "data"), "--adapter", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"search-adaptor: error: {config}: a file; give the adapter's folder ({config.parent})"


def _fit_argv(tmp_path: Path, d: dict) -> list[str]:
    """``fit`` of the synthetic fixture (100 train, 60 test queries) on its own vectors."""
    qids = d["qids"]
    data = write_beir(tmp_path / "syn", d, splits={"train": qids[:100], "test": qids[100:]})
    vectors = write_vectors(tmp_path / "vec", d)
    return ["fit", str(data), "--embeddings", str(vectors), "--model", "syn-16", "--quiet"]


def test_kfold_selection_reports_its_kfold_scores_and_the_refit_apart(tmp_path, synthetic):
    """report.json paired the k-fold count of queries (100) with the scores of the refit's own
    early-stopping split (20 queries), which disagreed with the candidate table."""
    out = tmp_path / "out"
    argv = [*_fit_argv(tmp_path, synthetic), "--out", str(out), "--family", "linear"]
    assert main([*argv, "--selection", "kfold", "--folds", "2", "--max-steps", "30"]) == 0
    report = json.loads((out / "report.json").read_text())
    validation = report["validation"]
    assert validation["selection"] == "kfold" and validation["n_val_queries"] == 100
    (row,) = validation["candidates"]
    assert validation["zero_shot_val_ndcg@10"] == row["zero_shot_val_ndcg@10"]
    if not report["selected"].startswith("identity"):
        assert validation["selected_val_ndcg@10"] == row["val_ndcg@10"]
    training = json.loads((out / "adapter" / "config.json").read_text())["training"]
    assert validation["refit"] == {
        "n_val_queries": training["n_val_queries"],
        "val_ndcg@10": training["val_ndcg@10"],
        "zero_shot_val_ndcg@10": training["zero_shot_val_ndcg@10"],
    }
    assert training["n_val_queries"] < 100
    assert "select by k-fold cross-validation over its queries" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("family", "dims", "unsupervised", "fix"),
    [
        ("cross-unlabelled", None, False, "not cross-unlabelled: add --unlabelled, or drop --family"),
        ("cross-unlabelled", (8,), False, "add --unlabelled and drop --dims, or drop --family"),
        ("cross-matryoshka", None, False, "add --dims SIZES (e.g. --dims 64,128), or drop --family"),
        ("cross", None, True, "not cross: drop --unlabelled, or drop --family"),
        ("paper", None, False, "not paper: drop --family, or the --query-* flags"),
    ],
)
def test_a_family_the_query_model_flags_do_not_train_names_the_flags(family, dims, unsupervised, fix):
    """`--family cross-unlabelled --query-model M` said "queries of another model train family cross,
    not cross-unlabelled", and not that --unlabelled trains it."""
    with pytest.raises(ValueError, match=re.escape(fix)):
        fit_family(family, dims, unsupervised, cross=True)


@pytest.mark.parametrize("family", ["cross", "cross-unlabelled"])
def test_a_cross_family_without_a_query_model_says_to_give_one(tmp_path, synthetic, capsys, family):
    """`fit --family cross` without --query-model failed in training with "init='lstsq', gamma=0.0
    and loss='infonce' need pairs", Python parameters the command line never takes."""
    argv = [*_fit_argv(tmp_path, synthetic), "--out", str(tmp_path / "out"), "--family", family]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"search-adaptor: error: --family {family} maps the queries of another model into the documents' "
        "space: give that model with --query-model (and --query-provider), or drop --family"
    )


def test_a_start_that_is_not_the_identity_is_not_called_zero_shot():
    """A Matryoshka or cross-model fit that kept its start was "Selected variant: identity (zero-shot)",
    its candidates' step-0 score (the start's, a mean over the sizes) was the "zero-shot val" column,
    and "No variant beat zero-shot" named what selection never compared against: each now says start."""
    start = "a PCA rotation of the corpus"
    candidate = {"variant": "matryoshka", "val_ndcg@10": 0.5, "zero_shot_val_ndcg@10": 0.5, "best_step": 0}
    report = _report(
        family="matryoshka",
        selected=f"its start ({start})",
        start=start,
        validation={"n_val_queries": 30, "candidates": [{**candidate, "n_steps": 100, "train_s": 1.0}]},
    )
    for m in ("4", "8"):
        report["significance"].setdefault("by_size", {})[m] = {f"vs zero-shot@{m}": 0.5, f"vs pca@{m}": 0.5}
        for system in ("adapted", "zero-shot", "pca"):
            report["metrics"][f"{system}@{m}"] = report["metrics"]["zero-shot"]
    (line,) = identity_lines(report)
    assert line.startswith("No variant beat its start on validation")
    markdown = render_markdown(report)
    assert f"Selected variant: **its start ({start})**" in markdown
    assert "| variant | val nDCG@10 | start val |" in markdown and "zero-shot val" not in markdown
    assert (
        f"Start val: the score of the candidate's start ({start}) before any step, not zero-shot's"
        in markdown
    )
    assert "Each validation score is the mean over the sizes 4, 8 and full width." in markdown
    assert "step 0 = zero-shot" not in markdown
    plain = render_markdown({**report, "selected": IDENTITY, "start": None, "significance": {}})
    assert "| start val |" not in plain and "| zero-shot val |" in plain and "Start val:" not in plain
    # a cross-model fit's zero-shot row is its start (the map): "the base model's" was false there
    mapped = "a least-squares map 256 -> 384 of the paired texts"
    cross = render_markdown({**report, "start": mapped, "query_model": "static", "significance": {}})
    assert (
        f"Start val: the score of the candidate's start ({mapped}) before any step, the zero-shot row "
        "above is that start on the scored queries." in cross
    )


def test_an_adapter_recording_validation_ids_but_no_training_ids_is_unknown_not_held_out(tmp_path):
    """Adapters saved before the training ids were recorded, but after the validation ids were,
    counted only their validation queries as seen: scored on their own training split, 64 of 80
    queries that trained them passed as held-out. Without training ids the relation is unknown."""
    from search_adaptor.experiment import _seen
    from search_adaptor.model import SearchAdaptor
    from test_index import make_adapter

    adapter = make_adapter(16)
    qrels = {q: {"d0": 1} for q in [*adapter.train_query_ids_, *adapter.val_query_ids_]}
    assert adapter.train_query_ids_ and adapter.val_query_ids_
    assert _seen(None, adapter, qrels) == {"n": len(qrels), "of": len(qrels), "by": "id"}
    adapter.save(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    del config["training"]["train_query_ids"]  # as an adapter of that time wrote it
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    old = SearchAdaptor.load(tmp_path / "a")
    assert old.val_query_ids_ and not old.train_query_ids_
    assert _seen(None, old, qrels) is None
