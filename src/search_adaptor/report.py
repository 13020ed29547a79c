"""Reports: the proof a user asked for, as ``report.json`` (for tools) and ``report.md`` (for people).

``report.json`` keeps one shape that other tools read, for ``fit`` and ``evaluate`` alike::

    {"dataset", "model", "protocol": "test" | "kfold" | "evaluate", "test_split", "n_test_queries",
     "metrics": {"zero-shot": {...}, "adapted": {...}}, "significance", "selected", "validation",
     "timings", ...}

Matryoshka fits add ``"adapted@m"``, ``"zero-shot@m"`` and ``"pca@m"`` systems per size; a
cross-model fit (queries of another model) adds ``"query_model"``, ``"paired_texts"``
(``{"corpus": n, "more": m, "left_out": k}``: the texts embedded by both models, and the paired
texts left out as the texts of queries the fit scores or validates; ``fit`` only) and the system
``"zero-shot (documents' model)"``: the documents' model on both sides, what its map aims at.

:func:`save_run` writes a finished :class:`~search_adaptor.experiment.Run` into a folder: the
reports, the figures (``"plots": {"similarity": "plots/similarity.png", ...}``, paths relative to
the folder; empty with ``"plots_skipped": reason`` when matplotlib is missing) and, for ``fit``,
the adapter. The folder is replaced whole, in one rename: a reader, a run killed while it saves,
or two runs saving into one folder at once see one run's complete output, never a mix.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from search_adaptor.experiment import DOCUMENTS_MODEL, Run, is_kept_start
from search_adaptor.files import Staged, check_output_folder, check_replaceable, write_text_atomic
from search_adaptor.metrics import metrics_table, val_metric_name
from search_adaptor.model import FILES as ADAPTER_FILES
from search_adaptor.variants import MATRYOSHKA, REFIT_BY_DEFAULT

#: p of a paired test below which a difference is called significant (and a loss is warned of).
SIGNIFICANT = 0.05

#: The machine-readable report, which marks a folder as a run's (``fit --out``, ``evaluate --out``).
REPORT = "report.json"
#: Everything a run writes into its ``--out`` folder: a folder holding only these (an interrupted
#: run's) may be written again.
RUN_PARTS = ("adapter", "plots", REPORT, "report.md")
#: The figures a run draws, each into ``plots/NAME.png``.
FIGURES = ("similarity", "learning_curves")
#: Why a report has no figures when matplotlib is not installed.
PLOTS_SKIPPED = "pip install matplotlib (or the `bench` extra)"


def render_markdown(report: Mapping[str, Any]) -> str:
    """Human summary of a ``fit`` or ``evaluate`` report."""
    zs, ad = report["metrics"]["zero-shot"], report["metrics"]["adapted"]
    names = list(zs)
    protocol = report["protocol"]
    models = (
        f"Queries: `{report['query_model']}`; documents: `{report['model']}`"
        if report.get("query_model")
        else f"Model: `{report['model']}`"
    )
    chosen = (  # k-fold: the table's adapted row is each fold's own winner's, not the saved one's
        f"Saved adapter: **{report['selected']}** (each fold's own winner scored its held-out queries)."
        if protocol == "kfold"
        else f"Selected variant: **{report['selected']}**."
    )
    lines = [f"# search-adaptor report: {report['dataset']}", "", f"{models}. {chosen}"]
    val_split = _val_split(report)
    unlabelled = _unlabelled(report)
    if protocol == "evaluate":
        lines.append(
            f"Protocol: a saved adapter scored on the {report.get('n_test_queries', '?')} "
            f"`{report.get('test_split', 'test')}` queries; {_relation(report)}."
        )
    elif protocol == "kfold":
        selected_on = (
            f"the `{val_split}` split"
            if val_split
            else "the other folds, by k-fold cross-validation within them"
            if _by_kfold(report)
            else "the other folds"
        )
        trained_on = (
            "the other folds' query texts only (their labels unused)"
            if unlabelled
            else "the other folds only"
        )
        lines.append(
            f"Protocol: {report['folds']}-fold cross-validation over the labelled queries of "
            f"`{report.get('test_split', 'test')}` (the dataset has no train and test split pair): each "
            f"fold's adapter is trained on {trained_on} and selected "
            f"on {selected_on}{_val_left_out(report)}, and the metrics are the mean over all held-out "
            "queries. The saved adapter is trained on all of them."
        )
    else:
        n_test, test_split = report.get("n_test_queries", "?"), report.get("test_split", "test")
        select = (
            f"on the `{val_split}` split"
            if val_split
            else "by k-fold cross-validation over its queries (each variant scored on the fold it did not "
            "train on; the winner then trained on all of them)"
            if _by_kfold(report)
            else "on a validation split carved from it"
        )
        texts_only = "'s query texts (their labels unused)" if unlabelled else ""
        lines.append(
            f"Protocol: train on `{report.get('train_split', 'train')}`{texts_only}{_left_out(report)}, "
            f"select {select}{_val_left_out(report)}, report on the "
            f"{n_test} `{test_split}` queries, which training, early stopping and selection never saw"
            f"{_repeated(report)}."
        )
    lines += ["", *metrics_table(report["metrics"], names), ""]
    sig = report.get("significance") or {}
    lines.append(f"Adapted is {_against(ad, zs, 'zero-shot', sig.get('p_value'), names[0])}.")
    lines += unscored_lines(report) + seen_lines(report) + loss_lines(report)
    lines += _cross_model(report, names[0]) + size_lines(report, names[0])
    lines += identity_lines(report) + refit_lines(report)
    cands = (report.get("validation") or {}).get("candidates") or []
    if cands:
        metric = _val_metric(report)
        how = f"validation {metric}"
        if _by_kfold(report):
            how = (
                f"{metric} by k-fold over the training queries, each held out once; steps: median over folds"
            )
        whose = (
            "; from the final fit on all labelled queries, which made the saved adapter; each fold's "
            "own candidates are in report.json's `fold_results`"
            if protocol == "kfold"
            else "; the test queries play no part"
        )
        start = "zero-shot" if report.get("start") is None else "start"
        lines += [
            "",
            f"## Candidates ({how}{whose})",
            "",
            f"| variant | val {metric} | {start} val | best step | steps | train s |",
            "|---|---|---|---|---|---|",
        ]
        for c in cands:
            lines.append(
                f"| {c['variant']} | {c['val_ndcg@10']:.4f} | {c['zero_shot_val_ndcg@10']:.4f} | "
                f"{c['best_step']} | {c['n_steps']} | {c['train_s']} |"
            )
        lines += _scored_as(report)
    lines += _figures(report)
    t = report.get("timings") or {}
    if t:
        lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def _against(ours: Mapping[str, float], other: Mapping[str, float], name: str, p: Any, metric: str) -> str:
    """ "better than NAME by 0.0123 ndcg@10 (paired ...: p = ...)": one system against another
    ("level with NAME" when they score the same, as an unsupervised adapter does at full width;
    "above NAME by ..., not significantly" when the test cannot tell them apart at p < 0.05)."""
    delta = ours[metric] - other[metric]
    p_text = f" (paired randomization test over queries: p = {p:.4g})" if p is not None else ""
    if delta == 0:
        return f"level with {name}, {delta:+.4f} {metric}{p_text}"
    if p is not None and p >= SIGNIFICANT:  # a difference within noise is no "better"
        side = "above" if delta > 0 else "below"
        return f"{side} {name} by {abs(delta):.4f} {metric}, not significantly{p_text}"
    return f"{'better' if delta > 0 else 'worse'} than {name} by {abs(delta):.4f} {metric}{p_text}"


def _cross_model(report: Mapping[str, Any], metric: str) -> list[str]:
    """What zero-shot means when queries and documents come from two models, and how the adapter
    compares with the documents' model on its own queries (the reference the map aims at)."""
    if not report.get("query_model"):
        return []
    lines = [
        "",
        f"Queries of `{report['query_model']}` and documents of `{report['model']}` live in two spaces, "
        "so zero-shot here is the map's start: the closed-form least-squares map of the corpus texts "
        "embedded by both models carries the queries into the documents' space.",
    ]
    paired = report.get("paired_texts")
    if paired and paired["more"]:
        lines.append(
            f"Paired texts (embedded by both models) beside the corpus's {paired['corpus']}: "
            f"{paired['more']} more (`--pairs`, `--sentence-pairs`)."
        )
    if paired and paired.get("left_out"):
        lines.append(
            f"{paired['left_out']} paired text(s) given (`--pairs`, `--sentence-pairs`) were left out: they "
            "are the texts of queries this fit scores or validates, which stay held-out."
        )
    reference = report["metrics"].get(DOCUMENTS_MODEL)
    if reference:
        p = (report.get("significance") or {}).get("p_value_vs_documents_model")
        ratio = (
            report["metrics"]["adapted"][metric] / reference[metric] if reference[metric] else float("nan")
        )
        lines.append(
            f"`{DOCUMENTS_MODEL}` is `{report['model']}` on both sides, what the map aims at: adapted is "
            f"{_against(report['metrics']['adapted'], reference, 'it', p, metric)}, {ratio:.1%} of it."
        )
    return lines


def _relation(report: Mapping[str, Any]) -> str:
    """``evaluate``'s protocol line: how the scored queries relate to those that trained or chose the
    adapter (:func:`_whose`), by text (the digests ``fit`` records) or, for an adapter fit in Python,
    by id."""
    seen = report.get("seen_in_training")
    if seen is None:
        return (
            "the adapter records neither the texts nor the ids of the queries it was trained on, so "
            "whether these were among them is unknown"
        )
    whose = f"a query {_whose(report)} it"
    if _shared(seen) == "text":
        if seen["n"]:
            return f"{seen['n']} of them have the text of {whose}"
        return f"none of them has the text of {whose}: the scores are held-out"
    # an id is all the adapter records: a query of another dataset may bear it and be another query
    ids_only = "the adapter records those queries' ids, not their texts, so the check is by id"
    if seen["n"]:
        return (
            f"{seen['n']} of them share an id with {whose} ({ids_only}: if they are the same queries, "
            "their scores are not held-out)"
        )
    return f"none of them shares an id with {whose}: the scores are held-out ({ids_only})"


def _whose(report: Mapping[str, Any]) -> str:
    """Which queries a held-out one must not be: those whose labels trained or chose the adapter or,
    for a fit without labels (:func:`_unlabelled`), those whose texts trained or validated it."""
    if _unlabelled(report):
        return "whose text (its labels unused) trained or validated"
    return "whose labels trained or chose"


def _shared(seen: Mapping[str, Any]) -> str:
    """What ``seen_in_training`` matched a scored query by: "text" (digests of the texts a ``fit``
    records) or "id" (a fit in Python records no texts, only the query ids)."""
    return seen.get("by", "text")


def _left_out(report: Mapping[str, Any]) -> str:
    """What a fit's protocol line adds when the training split also held scored queries: those were
    left out of training (``train_left_out``, :func:`~search_adaptor.experiment.protocol`), so the
    scored split is held-out by id all the same; and when the dev split also held training queries,
    which were left out of training too and validate only (``train_in_val``)."""
    without = _without(report, report.get("train_left_out"))
    in_val = report.get("train_in_val")
    if not in_val or not in_val["n"]:
        return without
    if without:
        return f"{without} and the {in_val['n']} that `{in_val['split']}` also holds (those validate only)"
    return (
        f" without the {in_val['n']} of its {in_val['of']} queries that `{in_val['split']}` also holds "
        f"({'it validates' if in_val['n'] == 1 else 'they validate'} only)"
    )


def _val_left_out(report: Mapping[str, Any]) -> str:
    """What a fit's protocol line adds, after how it selected, when the dev split also held scored
    queries: those were left out of validation (``val_left_out``, as :func:`_left_out`'s of
    training), or of the pool ``--selection kfold`` made of the training and dev queries."""
    left = report.get("val_left_out")
    without = _without(report, left)
    if not without or _val_split(report) == left["split"]:
        return without
    return f", the `{left['split']}` split's queries pooled in{without}" if _by_kfold(report) else ""


def _without(report: Mapping[str, Any], left: Mapping[str, Any] | None) -> str:
    """ " without the N of its M queries that `test` also holds", or "" where none was left out."""
    if not left or not left["n"]:
        return ""
    test_split = report.get("test_split", "test")
    return f" without the {left['n']} of its {left['of']} queries that `{test_split}` also holds"


def _repeated(report: Mapping[str, Any]) -> str:
    """What a fit's protocol line adds when the dataset repeats a training query's text in the scored
    split (no scored id trains, :func:`_left_out`, so the split is held-out by id, not by text)."""
    seen = report.get("seen_in_training")
    if not seen or not seen["n"]:
        return ""
    return (
        f" by id; {seen['n']} of them repeat the text of a query {_whose(report)} the adapter, so "
        "their scores are not held-out"
    )


def unscored_lines(report: Mapping[str, Any]) -> list[str]:
    """A note when the scored split holds queries with no relevant document (all grade 0): they are
    not scored, and BEIR's mean, which counts each as 0, is lower by their share (its figures given)."""
    unscored = report.get("unscored")
    if not unscored:
        return []
    n, of = unscored["n"], unscored["of"]
    share = (of - n) / of
    metrics = report["metrics"]
    beir = ", ".join(f"{name} {metrics[name]['ndcg@10'] * share:.4f}" for name in ("zero-shot", "adapted"))
    return [
        f"Note: {n} of the {of} queries of `{report['test_split']}` have no relevant document (every "
        f"judgement grade 0) and are not scored; BEIR's mean counts each as 0, so its nDCG@10 here is "
        f"{beir}."
    ]


def seen_lines(report: Mapping[str, Any]) -> list[str]:
    """A loud warning when scored queries trained or chose the adapter (:func:`_whose`): in
    ``evaluate``, by text or id; in ``fit``, whose scored ids never train, by a training query's text
    the dataset repeats. Such scores flatter it, and are no proof on held-out queries."""
    seen = report.get("seen_in_training")
    if not seen or not seen["n"] or is_kept_start(str(report["selected"])):
        return []
    if report["protocol"] != "evaluate":  # a fit: held-out by id, but the dataset repeats texts
        return [
            f"WARNING: {seen['n']} of the {seen['of']} scored queries repeat the text of a query "
            f"{_whose(report)} this adapter (held-out by id, not by text); their scores flatter it: "
            "drop them from the split for a held-out score."
        ]
    if seen["n"] < seen["of"]:
        fix = "their scores are not held-out: drop them from the split for a held-out score"
    else:
        fix = (
            "these scores are not held-out and flatter it; score queries it never saw (the test split "
            "of a fit with a train split; a k-fold fit trained it on every labelled query, and its "
            "report's cross-validated metrics are the held-out score)"
        )
    if _shared(seen) == "id":  # the same id, which another dataset's query may bear: said as known
        what, known = "share an id with", " (it records ids, not texts); if they are the same queries,"
    else:
        what, known = "have the text of", ";"
    return [
        f"WARNING: {seen['n']} of the {seen['of']} scored queries {what} a query {_whose(report)} this "
        f"adapter{known} {fix}."
    ]


def loss_lines(report: Mapping[str, Any]) -> list[str]:
    """A loud warning when the adapter is significantly below zero-shot on the scored queries, in
    nDCG@10 or in any other metric of the report (recall@100 can fall while nDCG@10 rises):
    selection guards validation, not every query set, and a loss must never pass in silence (also
    printed by ``fit`` and ``evaluate``)."""
    test = report.get("significance") or {}
    metric = test.get("metric", "ndcg@10")
    ours, base = report["metrics"]["adapted"], report["metrics"]["zero-shot"]
    below = {  # the tested metric, then every other (fits since 2 Dec 2026 test each: ``p_values``)
        m: p
        for m, p in [(metric, test.get("p_value")), *test.get("p_values", {}).items()]
        if p is not None and p < SIGNIFICANT and ours[m] < base[m]
    }
    if not below:
        return []
    n = report.get("n_test_queries", "?")
    val_split = _val_split(report)
    if report["protocol"] == "evaluate":
        fix = "keep zero-shot for queries like these, or refit with labelled queries like them"
    elif _unlabelled(report):
        fix = (
            f"what validation measured without labels ({_val_metric(report)}) did not carry over; refit "
            "with labelled queries like these, without --unsupervised (--unlabelled)"
        )
    elif _by_kfold(report):
        fix = (
            "selection by k-fold over the training queries did not carry over; label more queries like these"
        )
    elif val_split:
        fix = (
            f"selection on the `{val_split}` split did not carry over; label more queries like these, or "
            "refit with `--selection kfold`"
        )
    else:
        fix = (
            "selection on validation did not carry over; label more queries, add a `qrels/dev.tsv`, "
            "or refit with `--selection kfold`"
        )
    losses = ", ".join(f"{ours[m] - base[m]:+.4f} {m}, p = {p:.2g}" for m, p in below.items())
    if metric in below:
        return [
            f"WARNING: the adapter is significantly below zero-shot on the {n} scored queries "
            f"({losses}): do not deploy it as it is; {fix}."
        ]
    return [  # better (or level) at the top, worse deeper down: a re-ranker reading the top 100 loses
        f"WARNING: the adapter is significantly below zero-shot on the {n} scored queries in {losses} "
        f"(not in {metric}): where those matter (a re-ranker reading its top 100, say), do not deploy "
        f"it as it is; {fix}."
    ]


def identity_lines(report: Mapping[str, Any]) -> list[str]:
    """Why the saved adapter is the identity, when it is: a user who sees a candidate's validation score
    above zero-shot's deserves to know why it was not kept (also printed by ``fit``)."""
    if not is_kept_start(str(report["selected"])):
        return []
    if _unlabelled(report):  # no labels, no noise rule: the fit's own criterion kept its start
        return [
            f"No training step beat the start on validation {_val_metric(report)} (what stands in for "
            f"nDCG@10 without labels), so the saved adapter is {_kept(report)}."
        ]
    where, scores = (
        ("in k-fold cross-validation over the training queries", "k-fold scores")
        if _by_kfold(report)
        else ("on validation", "validation split")
    )
    noise = (
        ""
        if report.get("selection_rule") == "max"
        else f" by more than the noise of the {scores} (one standard error of the per-query differences)"
    )
    beaten = "zero-shot" if report.get("start") is None else "its start"  # what selection compared
    won = [c for c in (report.get("validation") or {}).get("candidates", []) if c.get("kept_start")]
    if won:  # the k-fold winner's final fit, on every training query, kept its start
        lines = [
            f"{won[0]['variant']} won {where}{noise}, but trained on all the training queries it did "
            f"not beat {beaten} on its own validation split (best step 0), so the saved adapter is "
            f"{_kept(report)}."
        ]
    else:
        lines = [f"No variant beat {beaten} {where}{noise}, so the saved adapter is {_kept(report)}."]
    if (report.get("validation") or {}).get("n_val_queries") == 1:
        lines.append(
            "Validation held a single query, which cannot tell a gain from noise: label more queries "
            "(or add a `qrels/dev.tsv`) for an adapter to be chosen."
        )
    return lines


def refit_lines(report: Mapping[str, Any]) -> list[str]:
    """What ``--refit-all`` (the default for the families of ``REFIT_BY_DEFAULT``) shipped: the winner
    trained again on every training query, which no held-out query then checked."""
    refit = (report.get("validation") or {}).get("refit_all")
    if not refit:
        return []
    return [
        f"The saved adapter is {report['selected']} trained again on all {refit['n_train_queries']} "
        f"training queries, the validation ones too, for the {refit['steps']} steps its validation "
        f"chose (--refit-all, the default for family {', '.join(REFIT_BY_DEFAULT)}; --no-refit-all ships "
        "the validated winner); no held-out query checked those weights before the test queries did."
    ]


def _scored_as(report: Mapping[str, Any]) -> list[str]:
    """What the candidates' validation columns hold when it is not plain zero-shot nDCG@10: the score
    of a start that is not the identity (step 0, what early stopping and selection compared against),
    and with Matryoshka sizes the mean over the trained sizes and the full width."""
    notes = []
    if report.get("start") is not None:
        row = (  # a cross-model fit's zero-shot is its start: two spaces have no other
            "the zero-shot row above is that start on the scored queries"
            if report.get("query_model")
            else "not zero-shot's; the zero-shot row above is the base model's"
        )
        notes.append(
            f"Start val: the score of the candidate's start ({report['start']}) before any step, {row}."
        )
    sizes = (report.get("significance") or {}).get("by_size")
    if sizes:
        notes.append(f"Each validation score is the mean over the sizes {', '.join(sizes)} and full width.")
    return ["", " ".join(notes)] if notes else []


def _kept(report: Mapping[str, Any]) -> str:
    """What an adapter that kept its start is: the identity, or a start that is not one (a
    cross-model fit's closed-form map, a Matryoshka fit's PCA rotation), as the adapter's own
    ``start_`` names it in the report (``fit`` and ``evaluate`` alike)."""
    start = report.get("start")
    if start is None:
        return "the identity: retrieval is unchanged"
    width = " at full width" if (report.get("significance") or {}).get("by_size") else ""
    return f"its start, {start}, not the identity: retrieval{width} is the zero-shot row's"


def size_lines(report: Mapping[str, Any], metric: str) -> list[str]:
    """One line per Matryoshka size: the adapter's prefix against truncation and PCA at that size,
    and the share of full-width zero-shot it keeps (markdown; the command line prints them too, as
    a full-width p says nothing of the sizes, and of an unsupervised adapter is 1 by design)."""
    by_size = (report.get("significance") or {}).get("by_size") or {}
    metrics = report["metrics"]
    full = metrics["zero-shot"][metric]
    lines = []
    for m, tests in by_size.items():
        ours = metrics[f"adapted@{m}"][metric]
        versus = ", ".join(
            f"{ours - metrics[f'{base}@{m}'][metric]:+.4f} over {label} (p {tests.get(f'vs {base}@{m}'):.2g})"
            for base, label in (("zero-shot", "truncation"), ("pca", "PCA"))
        )
        kept = f"; {ours / full:.1%} of full-width zero-shot" if full else ""
        lines.append(f"- {m} dimensions: `adapted@{m}` {ours:.4f}, {versus}{kept}.")
        lines += [f"  {line}" for line in _size_warning(report, m, metric)]
    if not lines:
        return []
    return [
        "",
        f"Smaller vectors (prefixes of the adapted vector; {metric}, paired tests over queries):",
        *lines,
    ]


def size_warnings(report: Mapping[str, Any], metric: str) -> list[str]:
    """The WARNING of each Matryoshka size significantly below a PCA of its size (:func:`size_lines`
    shows them among the sizes; ``-o json`` prints them alone, on stderr)."""
    sizes = (report.get("significance") or {}).get("by_size") or {}
    return [line for m in sizes for line in _size_warning(report, m, metric)]


def _size_warning(report: Mapping[str, Any], m: str, metric: str) -> list[str]:
    """:func:`_below_pca`'s warning when the prefix of size ``m`` is significantly below PCA, else none."""
    metrics, tests = report["metrics"], report["significance"]["by_size"][m]
    below = metrics[f"adapted@{m}"][metric] < metrics[f"pca@{m}"][metric]
    return [_below_pca(report, m)] if below and tests.get(f"vs pca@{m}", 1.0) < SIGNIFICANT else []


def _below_pca(report: Mapping[str, Any], m: int) -> str:
    """What to do when a prefix is significantly below a PCA of its size: never worse in silence."""
    family = report.get("family")
    if report.get("protocol") == "evaluate":  # no family recorded: the adapter's prefixes were trained
        fix = (
            "on these queries the prefix does not keep what its fit measured: index at a size where it "
            "is not below, or refit `--dims` with labelled queries like these"
        )
    elif family == "matryoshka-unsupervised":
        fix = (
            "that PCA was its start, and what validation measured without labels did not carry over "
            "to these queries: index at a size where it is not below, or fit `--dims` with labels"
        )
    elif family in MATRYOSHKA:
        fix = (
            "that PCA was its start, so it overfitted its validation split: label more queries, or "
            "index at a size where it is not below"
        )
    else:
        fix = (
            "refit with `--family matryoshka` (the default with --dims), whose prefixes start as that "
            "PCA and keep it unless validation shows a gain"
        )
    return (
        f"WARNING: at {m} dimensions this adapter is significantly below a PCA of the corpus of the "
        f"same size: {fix}."
    )


def _unlabelled(report: Mapping[str, Any]) -> bool:
    """Whether the fit trained without labels (Matryoshka's unsupervised family, an unlabelled
    cross-model map): its validation measured something other than nDCG@10."""
    return (report.get("validation") or {}).get("metric", "ndcg@10") != "ndcg@10"


def _by_kfold(report: Mapping[str, Any]) -> bool:
    """Whether the candidates were compared by k-fold cross-validation (``fit --selection kfold``)
    rather than on one validation split."""
    return (report.get("validation") or {}).get("selection") == "kfold"


def _val_split(report: Mapping[str, Any]) -> str | None:
    """The qrels split that validated every fit (a dev split), or None for a share of the training queries."""
    return (report.get("validation") or {}).get("split")


def _val_metric(report: Mapping[str, Any]) -> str:
    """What validation measured, for a reader: nDCG@10 with labels; without them, what stood in."""
    return val_metric_name((report.get("validation") or {}).get("metric", "ndcg@10"))


def _figures(report: Mapping[str, Any]) -> list[str]:
    """The "Figures" section: one line per figure saying what to look for."""
    if report.get("plots_skipped"):
        return ["", f"plots skipped: {report['plots_skipped']}"]
    plots = report.get("plots") or {}
    if not plots:
        return []
    n = report.get("n_test_queries", "?")
    if report["protocol"] == "evaluate":
        queries = f"the {n} `{report.get('test_split', 'test')}` queries"
        curves = "of the saved adapter"
    elif report["protocol"] == "kfold":
        queries = (
            f"all {n} labelled queries, which the saved adapter was trained on (so it overstates the "
            "gain on new queries; the cross-validated metrics above do not)"
        )
        curves = "of the final fit on all labelled queries"
    else:
        queries = f"the {n} held-out `{report.get('test_split', 'test')}` queries"
        curves = "of every candidate"
    captions = {
        "similarity": (
            f"cosine similarity of relevant vs random irrelevant pairs on {queries}; the adapter helps "
            "when the two histograms sit further apart in the right panel (adapted) than in the left "
            "(zero-shot)."
        ),
        "learning_curves": (
            f"validation {_val_metric(report)} per training step {curves}, step 0 = "
            f"{'zero-shot' if report.get('start') is None else 'the start'}, dot = "
            "checkpoint kept; "
            "a curve still rising at its last step wants more steps, one that peaks early and falls overfits."
        ),
    }
    lines = ["", "## Figures", ""]
    for name, path in plots.items():
        lines.append(f"- [{path}]({path}): {captions.get(name, name)}")
    return lines


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    write_text_atomic(out / REPORT, json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "report.md", render_markdown(report))
    return out / REPORT, out / "report.md"


def write_figures(out_dir: str | os.PathLike, run: Run) -> dict[str, Any]:
    """Draw a run's figures into ``out_dir/plots/``; never raises for a figure that fails.

    Returns
    -------
    {"plots": {name: path relative to out_dir}} for the figures written, plus ``"plots_skipped"``
    (the fix) when matplotlib is not installed. A figure that fails is reported on stderr in one
    line and left out.
    """
    from search_adaptor import plots

    figures: dict[str, Callable[[Path], Path]] = {
        "similarity": lambda path: plots.plot_similarity(
            run.emb,
            run.figure_qrels,
            run.adapter,
            path,
            title=run.titles.get("similarity", ""),
            reference=run.reference,
        ),
    }
    if run.histories:
        figures["learning_curves"] = lambda path: plots.plot_learning_curves(
            run.histories, path, title=run.titles.get("learning_curves", "")
        )
    rel = {name: f"plots/{name}.png" for name in FIGURES}
    written: dict[str, str] = {}
    for name, draw in figures.items():
        try:
            draw(Path(out_dir) / rel[name])
        except ImportError:
            return {"plots": {}, "plots_skipped": PLOTS_SKIPPED}
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [""])[0]
            print(
                f"search-adaptor: warning: {name} plot failed ({type(exc).__name__}: {detail}); "
                "the run goes on without it",
                file=sys.stderr,
            )
            continue
        written[name] = rel[name]
    return {"plots": written}


def _check_no_adapter(out: Path) -> None:
    """Refuse to save an ``evaluate`` run over a folder holding an ``adapter/``: it writes none, and
    saving replaces the folder whole, so that adapter would be deleted."""
    if (out / "adapter").exists():
        raise FileExistsError(
            f"{out / 'adapter'}: evaluate writes no adapter, and saving over {out} would delete it; "
            f"choose another folder (e.g. {out / 'evaluate'})"
        )


def check_run_folder(out_dir: str | os.PathLike, command: str) -> None:
    """Refuse, before any work, an ``out_dir`` that ``command`` (``fit`` or ``evaluate``) cannot
    replace whole (as :func:`save_run` does) without deleting files of the user's: a folder it did
    not write, one holding anything but what a run writes (``adapter/`` more than an adapter,
    ``plots/`` more than the figures, an adapter at all for ``evaluate``), or the current directory
    or one above it (replaced, the shell would be left in a deleted folder)."""
    what = f"a folder written by `search-adaptor {command}`"
    check_output_folder(out_dir, REPORT, what, RUN_PARTS)
    out = Path(out_dir).resolve()
    if Path.cwd().resolve().is_relative_to(out):
        raise FileExistsError(
            f"{out_dir}: is the current directory or holds it, and saving replaces the folder whole; "
            "choose a folder beside it (e.g. --out run) or run from another directory"
        )
    check_replaceable(out, RUN_PARTS, what)
    check_replaceable(out / "plots", [f"{name}.png" for name in FIGURES], "a run's plots folder")
    if command == "fit":
        check_replaceable(out / "adapter", ADAPTER_FILES, "an adapter folder")
    elif not (out / REPORT).is_file():  # with a report, a fit's folder: the CLI refuses it in its own words
        _check_no_adapter(out)


def save_run(run: Run, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write a finished run into ``out_dir``: figures, ``report.json``, ``report.md`` and, for a
    ``fit``, ``adapter/`` (with its test metrics in its config). Returns the report as written.

    Everything is written into a staging sibling of ``out_dir`` that then replaces it in one
    rename: until then the earlier run there stays whole, and a run killed while it saves, a full
    disk or a second run saving into the same folder at once leave one run's complete output (the
    last one's), never one run's report beside another's adapter. The paths recorded (the
    adapter's; the figures' are relative) are those of the published folder.
    """
    out = Path(out_dir).resolve()
    fit = run.report["protocol"] != "evaluate"
    check_run_folder(out, "fit" if fit else "evaluate")  # refused before anything is written
    if not fit:
        _check_no_adapter(out)
    report = dict(run.report)
    with Staged(out, folder=True) as staged:
        if fit:
            test = {"protocol": report["protocol"], **report["metrics"]}
            run.adapter.save(staged.path / "adapter", extra={"test": test, "selected": report["selected"]})
            report["adapter"] = str(out / "adapter")
        report.update(write_figures(staged.path, run))
        write_report(staged.path, report)
    return report
