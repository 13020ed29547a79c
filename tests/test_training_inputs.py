"""What ``SearchAdaptor.fit`` takes as qrels and ids: the rule :func:`~search_adaptor.metrics.evaluate`
reads them by (``metrics.check_qrels``, ``metrics.check_ids``), refused in one line naming the argument."""

from __future__ import annotations

import re

import pytest

from search_adaptor.metrics import evaluate
from search_adaptor.model import SearchAdaptor

QUICK = {"max_steps": 2, "eval_every": 1, "patience": 5, "batch_size": 16}


def _fit(synthetic: dict, qrels: object = None, **ids: object) -> SearchAdaptor:
    """A two-step fit of the ``synthetic`` fixture, with ``qrels`` and the ids overridden."""
    args = {"query_ids": synthetic["qids"], "corpus_ids": synthetic["dids"], **ids}
    qrels = synthetic["qrels"] if qrels is None else qrels
    return SearchAdaptor(**QUICK).fit(synthetic["Q"], synthetic["D"], qrels, **args)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (set, r"qrels\['q0'\] is a set, not a dict: qrels must be \{query_id: \{doc_id: grade\}\}"),
        (list, r"qrels\['q0'\] is a list, not a dict: .*\{doc_id: 1 for doc_id in relevant\}$"),
    ],
)
def test_qrels_of_sets_or_lists_are_refused_as_evaluate_refuses_them(synthetic, shape, message) -> None:
    """They gave "AttributeError: 'set' object has no attribute 'items'" in fit as in evaluate."""
    qrels = {q: shape(docs) for q, docs in synthetic["qrels"].items()}
    with pytest.raises(TypeError, match=message) as fit_error:
        _fit(synthetic, qrels)
    with pytest.raises(TypeError) as evaluate_error:
        evaluate(qrels, {"q0": {"d0": 1.0}}, "ndcg@10")
    assert str(fit_error.value) == str(evaluate_error.value)  # one rule, one message


def test_qrels_that_are_not_a_dict_are_refused(synthetic) -> None:
    rows = [(q, d, g) for q, docs in synthetic["qrels"].items() for d, g in docs.items()]
    with pytest.raises(
        TypeError, match=r"^qrels must be a dict \{query_id: \{doc_id: grade\}\}, not a list$"
    ):
        _fit(synthetic, rows)


def test_int_qrels_keys_are_refused_as_ints_not_as_missing_embeddings(synthetic) -> None:
    """query_ids were converted with str() and the qrels keys not, so a key 0 "had no embedding;
    pass it in query_ids" though it was passed: both sides are ids, str on both (as in evaluate)."""
    qrels = {i: dict(docs) for i, docs in enumerate(synthetic["qrels"].values())}
    with pytest.raises(TypeError, match=r"^qrels query id is int 0: ids must be str .* e\.g\. '0'$"):
        _fit(synthetic, qrels, query_ids=[str(i) for i in range(len(qrels))])
    by_doc = {q: {int(d[1:]): g for d, g in docs.items()} for q, docs in synthetic["qrels"].items()}
    with pytest.raises(TypeError, match=r"^qrels doc id \(query 'q0'\) is int \d+: ids must be str"):
        _fit(synthetic, by_doc)


@pytest.mark.parametrize("argument", ["query_ids", "corpus_ids"])
def test_ids_that_are_not_str_are_refused_naming_the_argument(synthetic, argument) -> None:
    """Converted silently before, so they matched str qrels keys "0", "1"... but never int ones."""
    n = len(synthetic["qids"] if argument == "query_ids" else synthetic["dids"])
    with pytest.raises(TypeError, match=rf"^{argument}\[0\] is int 0: ids must be str .* e\.g\. '0'$"):
        _fit(synthetic, **{argument: range(n)})


def test_a_grade_out_of_range_is_refused_naming_the_pair(synthetic) -> None:
    """2**70 ended the fit with numpy's OverflowError."""
    qrels = {**synthetic["qrels"], "q0": {"d1": 2**70}}
    message = r"^qrels grade 1180591620717411303424 for query 'q0', doc 'd1' is out of range: .* to 32767"
    with pytest.raises(ValueError, match=message):
        _fit(synthetic, qrels)


@pytest.mark.parametrize(
    ("val_query_ids", "message"),
    [
        ("q2", re.escape("val_query_ids is the str 'q2': give a list of ids, e.g. ['q2']")),
        ([2], re.escape("val_query_ids[0] is int 2: ids must be str")),
    ],
)
def test_validation_ids_that_are_not_a_list_of_str_are_refused(synthetic, val_query_ids, message) -> None:
    """A bare str was read letter by letter ("validation query '2' has no qrels")."""
    with pytest.raises(TypeError, match=f"^{message}"):
        _fit(synthetic, val_query_ids=val_query_ids)


def test_validation_queries_without_a_relevant_document_are_left_out(synthetic) -> None:
    """Judged all grade 0 (common in TREC qrels), such a query crashed the fit inside the metrics
    ("topk must have shape (n_queries=1, k >= 1), got (2, 10)"); it has no nDCG, so it is left out of
    validation as it is of training."""
    qrels = {**synthetic["qrels"], "q0": {"d0": 0, "d1": 0}}
    est = _fit(synthetic, qrels, val_query_ids=["q0", "q2"])
    assert est.val_query_ids_ == ["q2"] and "q0" not in est.train_query_ids_
    with pytest.raises(ValueError, match=r"^val_query_ids: none of the 1 validation queries has a relevant"):
        _fit(synthetic, qrels, val_query_ids=["q0"])


def test_an_empty_list_of_validation_queries_is_refused_not_read_as_none(synthetic) -> None:
    """It failed in numpy ("need at least one array to concatenate"); read as None it would turn a
    filter that came out empty into a random split without a word."""
    with pytest.raises(ValueError, match=r"^val_query_ids is empty: .* or None to hold out val_fraction"):
        _fit(synthetic, val_query_ids=[])
