"""Tests of BEIR-layout loading, its one-line errors, query splits and ``beir:NAME`` downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dataset

from search_adaptor.data import (
    BEIR_MD5,
    ENV_BEIR_URL,
    MAX_VALIDATION_QUERIES,
    DataError,
    Dataset,
    corpus_file,
    corpus_sentences,
    iter_corpus,
    kfold,
    load_beir,
    read_texts,
    validation_split,
)
from search_adaptor.images import ImageRef

HEADER = "query-id\tcorpus-id\tscore\n"
CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first doc"},
    {"_id": "d2", "title": None, "text": "second doc"},
    {"_id": "d3", "text": "  third doc  "},
    {"_id": 7, "title": "Seven", "text": ""},
]
QUERIES = [
    {"_id": "q1", "text": "find alpha"},
    {"_id": "q2", "text": "find second"},
    {"_id": "q3", "text": "only non-relevant judgements"},
    {"_id": "q4", "text": "never judged"},
]
QRELS = {
    "train": HEADER + "q1\td1\t2\nq1\td2\t0\nq2\td2\t1\nq3\td3\t0\n",
    "test": HEADER + "q2\t7\t1\n",
}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_beir(
    folder: Path,
    corpus: str | None = None,
    queries: str | None = None,
    qrels: dict[str, str] | None = None,
    gz: bool = False,
) -> Path:
    """A BEIR folder with the default tiny dataset, any part replaced by raw file text."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus_text = jsonl(CORPUS) if corpus is None else corpus
    if gz:
        (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(corpus_text.encode()))
    else:
        (folder / "corpus.jsonl").write_text(corpus_text, encoding="utf-8")
    (folder / "queries.jsonl").write_text(jsonl(QUERIES) if queries is None else queries, encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    for split, text in (QRELS if qrels is None else qrels).items():
        (folder / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return folder


def one_line_error(excinfo: pytest.ExceptionInfo[DataError], *parts: str) -> str:
    """The message, checked to be one line containing every part."""
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("gz", [False, True])
def test_load_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    ds = load_beir(write_beir(tmp_path / "tiny", gz=gz))
    assert isinstance(ds, Dataset)
    assert ds.name == "tiny"
    assert ds.path == tmp_path / "tiny"
    assert ds.doc_ids == ["d1", "d2", "d3", "7"]
    assert ds.doc_texts == ["Alpha first doc", "second doc", "third doc", "Seven"]
    assert ds.queries["q4"] == "never judged"  # unlabeled queries are kept
    assert len(ds.queries) == 4
    assert ds.splits == ["test", "train"]
    assert ds.qrels["train"] == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}, "q3": {"d3": 0}}
    assert ds.qrels["test"] == {"q2": {"7": 1}}


def test_doc_text_is_the_beir_formula(tmp_path: Path) -> None:
    rows = [
        {"_id": "a", "title": " T ", "text": " x "},
        {"_id": "b", "title": "", "text": "x"},
        {"_id": "c", "title": "T", "text": ""},
        {"_id": "d", "text": "x"},
    ]
    ds = load_beir(write_beir(tmp_path / "f", corpus=jsonl(rows), qrels={}))
    assert ds.doc_texts == [(r.get("title", "") + " " + r["text"]).strip() for r in rows]


def test_split_keeps_grades_and_drops_queries_without_relevant(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "f"))
    train = ds.split("train")
    assert train == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}  # q3 has only grade 0
    train["q1"]["d1"] = 99
    assert ds.qrels["train"]["q1"]["d1"] == 2  # split returns a copy
    assert "train" in ds.splits


def test_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    corpus = "\ufeff" + jsonl(CORPUS[:2]).replace("\n", "\r\n\r\n") + "\n   \n"
    queries = "\ufeff\n" + jsonl(QUERIES) + "\n"
    qrels = {"test": "\ufeff" + HEADER.replace("\n", "\r\n") + "\nq1\td1\t1\r\n\n"}
    ds = load_beir(write_beir(tmp_path / "f", corpus=corpus, queries=queries, qrels=qrels))
    assert ds.doc_ids == ["d1", "d2"]
    assert len(ds.queries) == 4
    assert ds.split("test") == {"q1": {"d1": 1}}


def test_bom_in_gz_corpus(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "f", corpus="\ufeff" + jsonl(CORPUS), gz=True))
    assert ds.doc_ids[0] == "d1"


def test_qrels_header_is_optional_and_negative_grades_kept(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "f", qrels={"dev": "q1\td1\t1\nq1\td2\t-1\n"}))
    assert ds.qrels["dev"] == {"q1": {"d1": 1, "d2": -1}}
    ds = load_beir(write_beir(tmp_path / "g", qrels={"dev": "\n\n" + HEADER + "q1\td1\t1\n"}))
    assert ds.qrels["dev"] == {"q1": {"d1": 1}}


def test_trec_qrels_are_read_as_pytrec_eval_reads_them(tmp_path: Path) -> None:
    """TREC's ``query-id iteration corpus-id score``, by spaces or tabs, the iteration ignored."""
    trec = "q1 0 d1 2\nq1 0 d2 0\nq2\tQ0\td2\t1\nq3 1 d3 0\n"
    ds = load_beir(write_beir(tmp_path / "f", qrels={"train": trec, "test": "q2  0  7  1\n"}))
    beir = load_beir(write_beir(tmp_path / "g"))
    assert ds.qrels == beir.qrels


def test_qrels_ids_between_tabs_are_read_as_written_spaces_included(tmp_path: Path) -> None:
    """A JSON id with a space around it, written the same between the tabs of the qrels (as a TSV
    writer does and BEIR's loader reads), was refused as 'not in queries.jsonl': qrels columns were
    stripped, JSON ids not. Spaces inside an id, and after the score, are kept and ignored as before."""
    corpus = jsonl([*CORPUS, {"_id": "d2 ", "text": "padded"}])
    queries = jsonl([*QUERIES, {"_id": " q1", "text": "padded"}, {"_id": "q 5", "text": "inner"}])
    qrels = {"test": HEADER + " q1\td1\t1\nq2\td2 \t1\nq 5\td1\t1 \t\r\n"}
    ds = load_beir(write_beir(tmp_path / "f", corpus=corpus, queries=queries, qrels=qrels))
    assert ds.qrels["test"] == {" q1": {"d1": 1}, "q2": {"d2 ": 1}, "q 5": {"d1": 1}}


@pytest.mark.parametrize(
    ("queries", "qrels", "expected"),
    [
        # a TREC line split by spaces cannot hold a space around an id
        ([{"_id": " q1", "text": "x"}], "q1 0 d1 1\n", ['query-id "q1"', 'which has " q1"']),
        (QUERIES, HEADER + "q1 \td1\t1\n", ['query-id "q1 "', 'which has "q1"']),
        (QUERIES, HEADER + "q1\t d1\t1\n", ['corpus-id " d1"', 'the corpus, which has "d1"']),
    ],
)
def test_an_id_that_differs_only_by_surrounding_spaces_names_both_spellings(
    tmp_path: Path, queries: list[dict], qrels: str, expected: list[str]
) -> None:
    folder = write_beir(tmp_path / "f", queries=jsonl(queries), qrels={"test": qrels})
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    line = 1 if qrels.startswith("q1 0") else 2
    one_line_error(excinfo, f"qrels/test.tsv:{line}:", *expected, "whitespace", "the same in both files")


def test_an_id_that_differs_only_by_unicode_normalization_names_both_spellings(tmp_path: Path) -> None:
    """A qrels corpus-id with a decomposed accent (NFD) for a corpus id with a composed one (NFC) was
    refused as 'corpus-id "doc 13770184 é" is not in the corpus', which printed the id the corpus
    has: both spellings are now given with their code points escaped, and their forms named."""
    corpus = jsonl([*CORPUS, {"_id": "doc 13770184 \u00e9", "text": "accented"}])
    folder = write_beir(
        tmp_path / "f", corpus=corpus, qrels={"test": HEADER + "q1\tdoc 13770184 e\u0301\t1\n"}
    )
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    one_line_error(
        excinfo,
        'qrels/test.tsv:2: corpus-id "doc 13770184 e\u0301" is not in the corpus, which has the same id in '
        'another Unicode normalization: "doc 13770184 e\\u0301" (NFD) here, "doc 13770184 \\u00e9" (NFC) '
        "there; ids are matched code point by code point (write the id the same in both files, e.g. both "
        "NFC)",
    )


@pytest.mark.parametrize("text", [" \t ", "\u200b", "\x00\u00ad"])
def test_a_labelled_query_with_a_blank_text_is_refused_at_its_line(tmp_path: Path, text: str) -> None:
    """A query of nothing but whitespace (or of characters nothing is seen in: a zero-width space, NUL)
    was embedded, trained on and scored without a word, while ``search`` refuses it; unlabelled (or only
    grade-0) blank queries and empty documents stay."""
    queries = [*QUERIES[:1], {"_id": "q2", "text": text}, *QUERIES[2:]]
    with pytest.raises(DataError) as excinfo:
        load_beir(write_beir(tmp_path / "f", queries=jsonl(queries)))
    one_line_error(
        excinfo,
        f"{tmp_path / 'f' / 'queries.jsonl'}:2:",
        'field "text" of query "q2" is blank',
        "qrels/test.tsv",
        "ranks documents by nothing in particular",
        "give the query a text or drop its qrels lines",
    )
    blank = [*QUERIES[:2], {"_id": "q3", "text": ""}, {"_id": "q4", "text": "  "}]  # q3: grade 0 only
    ds = load_beir(write_beir(tmp_path / "g", queries=jsonl(blank)))
    assert ds.queries["q3"] == "" and ds.queries["q4"] == "  " and ds.doc_texts[3] == "Seven"


def test_a_folder_under_home_may_be_named_with_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_beir(tmp_path / "data" / "f")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_beir("~/data/f").name == "f"


def test_repeated_identical_judgement_is_accepted(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "f", qrels={"test": HEADER + "q1\td1\t1\nq1\td1\t1\n"}))
    assert ds.qrels["test"] == {"q1": {"d1": 1}}


def test_no_qrels_folder_gives_no_splits(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "f", qrels={})
    (folder / "qrels").rmdir()
    ds = load_beir(str(folder))
    assert ds.splits == []
    assert "train" not in ds.splits
    with pytest.raises(DataError) as excinfo:
        ds.split("test")
    one_line_error(excinfo, "qrels/test.tsv", "available splits: none")


def test_missing_split_names_file_and_available(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "f"))
    with pytest.raises(DataError) as excinfo:
        ds.split("dev")
    one_line_error(excinfo, str(tmp_path / "f" / "qrels" / "dev.tsv"), "test, train")


def test_split_with_no_relevant_is_an_error(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "f", qrels={"train": HEADER + "q1\td1\t0\n", "test": HEADER}))
    assert ds.splits == ["test", "train"]
    for split in ("train", "test"):
        with pytest.raises(DataError) as excinfo:
            ds.split(split)
        one_line_error(excinfo, f"qrels/{split}.tsv", "score > 0", "available splits: test, train")


# --------------------------------------------------------------------------- one-line errors

BAD_JSON = '{"_id": "d1" "text": "x"}\n'
INT_AND_STR_ID = '{"_id": 1, "text": ""}\n{"_id": "1", "text": ""}\n'


@pytest.mark.parametrize(
    ("part", "text", "expected"),
    [
        ("corpus", jsonl(CORPUS) + '{"text": "x"}\n', ["corpus.jsonl:5:", 'missing field "_id"', '"text"']),
        ("corpus", '\n{"_id": "d1"}\n', ["corpus.jsonl:2:", 'missing field "text"']),
        ("corpus", '{"_id": "d1", "text": null}\n', ["corpus.jsonl:1:", 'field "text"', "must be a string"]),
        ("corpus", '{"_id": "d1", "title": 3, "text": "x"}\n', ["corpus.jsonl:1:", 'field "title"']),
        ("corpus", '{"_id": 1.5, "text": "x"}\n', ["corpus.jsonl:1:", 'field "_id"', "1.5"]),
        ("corpus", '{"_id": "", "text": "x"}\n', ["corpus.jsonl:1:", 'field "_id"', "non-empty"]),
        ("corpus", '{"_id": true, "text": "x"}\n', ["corpus.jsonl:1:", 'field "_id"', "true"]),
        ("corpus", jsonl(CORPUS) + jsonl(CORPUS[:1]), ["corpus.jsonl:5:", 'duplicate "_id" "d1"']),
        ("corpus", INT_AND_STR_ID, ["corpus.jsonl:2:", 'duplicate "_id" "1"']),
        ("corpus", BAD_JSON, ["corpus.jsonl:1:", "not valid JSON (Expecting ',' delimiter"]),
        ("corpus", '["d1", "x"]\n', ["corpus.jsonl:1:", "expected a JSON object, got list"]),
        (  # json's words end in "at": it read "starting at at column 23"
            "corpus",
            '{"_id": "d1", "text": "cut\n',
            ["corpus.jsonl:1:", "not valid JSON (Unterminated string starting at column 23);"],
        ),
        (
            "corpus",
            '{"_id": "d1", "text": "caf\\ud800"}\n',
            ["corpus.jsonl:1:", 'field "text"', "lone surrogate"],
        ),
        (
            "queries",
            '{"_id": "q\\udc00", "text": "x"}\n',
            ["queries.jsonl:1:", 'field "_id"', "not valid Unicode"],
        ),
        ("corpus", "\n\n", ["corpus.jsonl:", "no documents"]),
        ("corpus", "", ["corpus.jsonl:", "no documents"]),
        ("queries", jsonl(QUERIES) + BAD_JSON, ["queries.jsonl:5:", "not valid JSON (Expecting ','"]),
        ("queries", jsonl(QUERIES[:2]) + '{"_id": "q9"}\n', ["queries.jsonl:3:", 'field "text"', "query"]),
        ("queries", jsonl(QUERIES + QUERIES[:1]), ["queries.jsonl:5:", 'duplicate "_id" "q1"']),
        ("queries", "", ["queries.jsonl:", "no queries"]),
        ("qrels", HEADER + "q1\td1\tx\n", ["qrels/test.tsv:2:", 'score "x" is not an integer']),
        ("qrels", HEADER + "q1\td1\t1.0\n", ["qrels/test.tsv:2:", 'score "1.0"']),
        ("qrels", HEADER + "q1\td1\n", ["qrels/test.tsv:2:", "3 tab-separated columns", "got 2"]),
        ("qrels", HEADER + "q1 d1 1\n", ["qrels/test.tsv:2:", "got 1", "or TREC's 4 columns"]),
        ("qrels", "q1 0 d1 x\n", ["qrels/test.tsv:1:", 'score "x" is not an integer']),
        ("qrels", "q1 0 nope 1\n", ["qrels/test.tsv:1:", 'corpus-id "nope"']),
        ("qrels", HEADER + "q1\td1\t1\textra\n", ["qrels/test.tsv:2:", "got 4"]),
        ("qrels", HEADER + "q1\td1\t1\nq9\td1\t1\n", ["qrels/test.tsv:3:", 'query-id "q9"', "queries.jsonl"]),
        ("qrels", HEADER + "\nq1\tnope\t1\n", ["qrels/test.tsv:3:", 'corpus-id "nope"', "corpus"]),
        ("qrels", HEADER + "q1\td1\t1\nq1\td1\t2\n", ["qrels/test.tsv:3:", "graded 2 here but 1"]),
        ("qrels", "q1\td1\t1\nq-id\tc-id\tscore\n", ["qrels/test.tsv:2:", 'score "score"']),
        ("qrels", "\nq1\td1\t1.0\n", ["qrels/test.tsv:2:", 'score "1.0" is not an integer']),
    ],
)
def test_errors_are_one_line_with_file_line_and_field(
    tmp_path: Path, part: str, text: str, expected: list[str]
) -> None:
    folder = tmp_path / "f"
    if part == "qrels":
        write_beir(folder, qrels={"test": text})
    else:
        write_beir(folder, **{part: text})
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    message = one_line_error(excinfo, *expected)
    assert str(folder) in message  # the full path of the file


def test_gz_corpus_error_names_gz_file_and_line(tmp_path: Path) -> None:
    corpus = jsonl(CORPUS) + "".join(json.dumps({"_id": f"x{i}", "text": "t"}) + "\n" for i in range(12))
    corpus += '{"title": "no id", "text": "t"}\n'
    write_beir(tmp_path / "f", corpus=corpus, gz=True)
    with pytest.raises(DataError) as excinfo:
        load_beir(tmp_path / "f")
    one_line_error(
        excinfo,
        'corpus.jsonl.gz:17: missing field "_id" (every corpus line needs "_id" and "text", or "image" '
        "for an image document)",
    )


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "f")
    (folder / "queries.jsonl").write_bytes(jsonl(QUERIES).encode() + b'{"_id": "q9", "text": "\xff"}\n')
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    one_line_error(excinfo, "queries.jsonl:5:", "UTF-8")


def test_corrupt_gzip(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "f", gz=True)
    (folder / "corpus.jsonl.gz").write_bytes(b"not gzip at all\n")
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    one_line_error(excinfo, "corpus.jsonl.gz", "gzip")


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_beir(tmp_path / "absent")
    one_line_error(excinfo, "absent", "no such folder")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError) as excinfo:
        load_beir(tmp_path / "a-file")
    one_line_error(excinfo, "a-file", "is a file, not a folder")
    folder = write_beir(tmp_path / "f")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    one_line_error(excinfo, "corpus.jsonl", "not found", "corpus.jsonl.gz")
    write_beir(folder)
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    one_line_error(excinfo, "queries.jsonl", "not found")


def test_plain_and_gz_corpus_together_is_ambiguous(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "f")
    write_beir(folder, gz=True)
    with pytest.raises(DataError) as excinfo:
        load_beir(folder)
    one_line_error(excinfo, "corpus.jsonl", "corpus.jsonl.gz", "keep only one")


def test_md5_only_for_beir_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="md5"):
        load_beir(write_beir(tmp_path / "f"), md5="0" * 32)


# --------------------------------------------------------------------------- query splits

IDS = [f"q{i}" for i in range(23)]


@pytest.mark.parametrize("k", [2, 5, 23])
def test_kfold_partitions(k: int) -> None:
    folds = kfold(IDS, k=k, seed=3)
    assert len(folds) == k
    tests = [t for _, t in folds]
    assert sorted(q for t in tests for q in t) == sorted(IDS)  # each query in exactly one test fold
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1
    for train, test in folds:
        assert set(train).isdisjoint(test)
        assert sorted(train + test) == sorted(IDS)


def test_kfold_deterministic_and_order_independent() -> None:
    assert kfold(IDS, 5, 0) == kfold(IDS, 5, 0)
    assert kfold(IDS, 5, 0) == kfold(list(reversed(IDS)), 5, 0)
    assert kfold(IDS, 5, 0) != kfold(IDS, 5, 1)
    assert [t for _, t in kfold(IDS, 5, 0)] != [sorted(IDS)[i::5] for i in range(5)]  # shuffled


@pytest.mark.parametrize("k", [1, 0, 24])
def test_kfold_rejects_bad_k(k: int) -> None:
    with pytest.raises(ValueError, match="k must be"):
        kfold(IDS, k=k)


def test_kfold_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        kfold(["a", "b", "a"], k=2)


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"), [(2, 0.2, 1), (10, 0.2, 2), (10, 0.01, 1), (10, 0.99, 9)]
)
def test_validation_split(n: int, fraction: float, n_val: int) -> None:
    ids = sorted(IDS[:n])
    train, val = validation_split(ids, fraction, np.random.default_rng(1))
    assert len(val) == n_val
    assert sorted(train + val) == ids and train == sorted(train) and val == sorted(val)
    assert set(train).isdisjoint(val)
    assert (train, val) == validation_split(ids, fraction, np.random.default_rng(1))
    # the rule every model follows: the first n_val of one permutation drawn from the generator
    first = np.random.default_rng(1).permutation(n)[:n_val]
    assert val == sorted(ids[i] for i in first)


def test_validation_split_validates_at_most_max_validation_queries_and_trains_the_rest() -> None:
    """20% of 30,000 would be 6,000 validation queries, each searched against the whole corpus at
    every evaluation: the first 5,000 of the permutation validate, the other 25,000 train."""
    ids = [f"q{i:05d}" for i in range(30_000)]
    train, val = validation_split(ids, 0.2, np.random.default_rng(1))
    assert len(val) == MAX_VALIDATION_QUERIES == 5000 and len(train) == 25_000
    assert val == sorted(ids[i] for i in np.random.default_rng(1).permutation(30_000)[:5000])
    assert sorted(train + val) == ids
    # below the cap, the share as before
    assert len(validation_split(ids[:20_000], 0.2, np.random.default_rng(1))[1]) == 4000


def test_validation_split_rejects() -> None:
    with pytest.raises(DataError, match="at least 2"):
        validation_split(["only"], 0.2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="val_fraction"):
        validation_split(IDS, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="val_fraction"):
        validation_split(IDS, 0.0, np.random.default_rng(0))


# --------------------------------------------------------------------------- shared real datasets


def test_scifact() -> None:
    ds = load_beir(shared_dataset("scifact"))
    assert len(ds.doc_ids) == 5183 == len(ds.doc_texts) == len(set(ds.doc_ids))
    assert len(ds.queries) == 1109
    assert ds.splits == ["test", "train"]
    assert len(ds.split("train")) == 809
    assert len(ds.split("test")) == 300
    assert sum(len(d) for d in ds.qrels["test"].values()) == 339
    assert "train" in ds.splits
    assert all(ds.doc_texts)


def test_cranfield() -> None:
    ds = load_beir(shared_dataset("cranfield"))
    assert len(ds.doc_ids) == 1400
    assert ds.splits == ["test"]
    test = ds.split("test")
    assert len(test) == 225
    assert {g for docs in test.values() for g in docs.values()} == {1, 2, 3, 4}
    assert "train" not in ds.splits


def test_xquad_r_en() -> None:
    ds = load_beir(shared_dataset("xquad-r/en"))
    assert len(ds.doc_ids) == 1180
    assert len(ds.queries) == 1190
    test = ds.split("test")
    assert len(test) == 1190
    assert all(len(docs) == 1 for docs in test.values())


# --------------------------------------------------------------------------- beir:NAME downloads


class _Server:
    """A local HTTP server serving in-memory files and counting requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/beir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    srv = _Server()
    monkeypatch.setenv(ENV_BEIR_URL, srv.url)
    yield srv
    srv.stop()


def beir_zip(tmp_path: Path, name: str, top: str | None = None) -> bytes:
    """A zip like BEIR's: ``name/corpus.jsonl`` etc. (files at the root when ``top`` is "")."""
    src = write_beir(tmp_path / "src" / name)
    prefix = name if top is None else top
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for file in sorted(src.rglob("*")):
            if file.is_file():
                rel = file.relative_to(src).as_posix()
                archive.write(file, f"{prefix}/{rel}" if prefix else rel)
    return buf.getvalue()


def test_beir_download_extract_and_offline_reuse(tmp_path: Path, server: _Server) -> None:
    body = beir_zip(tmp_path, "tinybeir")
    server.files["/beir/tinybeir.zip"] = body
    cache = tmp_path / "cache"
    md5 = hashlib.md5(body).hexdigest()
    ds = load_beir("beir:tinybeir", cache_dir=cache, md5=md5)
    assert ds.name == "tinybeir"
    assert ds.path == cache / "tinybeir"
    assert ds.doc_ids == ["d1", "d2", "d3", "7"]
    assert ds.split("train") == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}
    assert server.hits == ["/beir/tinybeir.zip"]
    assert sorted(p.name for p in cache.iterdir()) == ["tinybeir", "tinybeir.zip"]  # no temp leftovers
    server.stop()  # the second load must not need the network
    again = load_beir("beir:tinybeir", cache_dir=cache)
    assert again == ds
    assert server.hits == ["/beir/tinybeir.zip"]


def test_beir_zip_with_files_at_root(tmp_path: Path, server: _Server) -> None:
    body = beir_zip(tmp_path, "flat", top="")
    server.files["/beir/flat.zip"] = body
    ds = load_beir("beir:flat", cache_dir=tmp_path / "c", md5=hashlib.md5(body).hexdigest())
    assert ds.path == tmp_path / "c" / "flat"
    assert (ds.path / "corpus.jsonl").is_file()


def test_beir_checksum_mismatch_uses_table_and_removes_file(tmp_path: Path, server: _Server) -> None:
    server.files["/beir/scifact.zip"] = beir_zip(tmp_path, "scifact")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as excinfo:
        load_beir("beir:scifact", cache_dir=cache)
    got = hashlib.md5(server.files["/beir/scifact.zip"]).hexdigest()
    one_line_error(excinfo, "scifact.zip", "md5 mismatch", BEIR_MD5["scifact"], got, "removed")
    assert list(cache.iterdir()) == []


def test_beir_unknown_name_needs_md5(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(DataError) as excinfo:
        load_beir("beir:not-in-table", cache_dir=tmp_path)
    one_line_error(excinfo, "not-in-table", "md5=")
    assert server.hits == []


def test_beir_http_404(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(DataError) as excinfo:
        load_beir("beir:missing", cache_dir=tmp_path / "c", md5="0" * 32)
    one_line_error(excinfo, "missing.zip", "HTTP 404")
    assert list((tmp_path / "c").iterdir()) == []


def test_beir_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(ENV_BEIR_URL, f"http://127.0.0.1:{port}")
    with pytest.raises(DataError) as excinfo:
        load_beir("beir:scifact", cache_dir=tmp_path / "c")
    one_line_error(excinfo, "scifact.zip", "offline", "local BEIR folder")
    assert list((tmp_path / "c").iterdir()) == []


def test_beir_not_a_zip(tmp_path: Path, server: _Server) -> None:
    body = b"this is not a zip"
    server.files["/beir/broken.zip"] = body
    with pytest.raises(DataError) as excinfo:
        load_beir("beir:broken", cache_dir=tmp_path / "c", md5=hashlib.md5(body).hexdigest())
    one_line_error(excinfo, "broken.zip", "not a valid zip")
    assert list((tmp_path / "c").iterdir()) == []


def test_beir_invalid_name(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_beir("beir:../etc", cache_dir=tmp_path)
    one_line_error(excinfo, "beir:../etc", "invalid dataset name")


def test_beir_default_cache_dir(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEARCH_ADAPTOR_CACHE", str(tmp_path / "home-cache"))
    body = beir_zip(tmp_path, "tinybeir")
    server.files["/beir/tinybeir.zip"] = body
    ds = load_beir("beir:tinybeir", md5=hashlib.md5(body).hexdigest())
    assert ds.path == tmp_path / "home-cache" / "datasets" / "tinybeir"


def test_parquet_corpora_refuse_bytes_in_one_line_and_sit_alone_in_a_folder(tmp_path: Path) -> None:
    """A Parquet ``binary`` text column (Spark and pandas write them) ended in 'internal error (TypeError:
    Object of type bytes is not JSON serializable)'; a folder holding corpus.parquet beside
    corpus.jsonl was indexed from the Parquet file while fit and evaluate read the JSON lines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"_id": ["d1", "d2"], "text": [b"a cat", b"a dog"]}), folder / "corpus.parquet")
    with pytest.raises(DataError, match=r"\(row 0\): field .text. must be a string, got a value of type"):
        list(iter_corpus(corpus_file(folder), rows=10))
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a cat"}\n')
    with pytest.raises(DataError, match=r"both corpus\.parquet and corpus\.jsonl exist, and fit reads"):
        corpus_file(folder)
    assert corpus_file(folder / "corpus.parquet") == folder / "corpus.parquet"  # the file given: taken
    # damaged or empty: named, and told in Parquet's terms (pyarrow's "magic bytes not found" named no
    # file; an empty one was told to add JSON lines)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        list(iter_corpus(tmp_path / "bad.parquet", rows=10))
    pq.write_table(
        pa.table({"_id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
        tmp_path / "e.parquet",
    )
    with pytest.raises(DataError, match=r"e\.parquet: no documents \(the file has no rows"):
        list(iter_corpus(tmp_path / "e.parquet", rows=10))


# -- texts to pair across two models (fit --pairs) -----------------------------------------------------
@pytest.mark.parametrize("name", ["log.txt", "log.jsonl", "log.jsonl.gz"])
def test_read_texts_takes_lines_or_query_records_each_text_once(tmp_path: Path, name: str) -> None:
    texts = ["what is a cat", "", "  ", "how do dogs sleep", "what is a cat", "naïve café"]
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("\ufeff" + "\r\n".join(texts) + "\n", encoding="utf-8")
    else:
        lines = "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in enumerate(texts))
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(lines.encode()))
        else:
            path.write_text(lines, encoding="utf-8")
    assert read_texts(path) == ["what is a cat", "how do dogs sleep", "naïve café"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("none.txt", None, r"none\.txt: no such file \(give a \.jsonl"),
        ("log", "folder", r"log: a folder, not a file \(give a \.jsonl"),
        ("empty.txt", "\n  \n", r"empty\.txt: no texts"),
        ("bad.jsonl", '{"_id": 1, "text": "a"}\n{"_id": 2, "text": ', r"bad\.jsonl:2: not valid JSON"),
        ("field.jsonl", '{"_id": 1, "body": "a"}\n', r'field\.jsonl:1: missing field "text"'),
        ("type.jsonl", '{"_id": 1, "text": 3}\n', r'type\.jsonl:1: field "text" must be a string'),
        (  # a query log under another name was embedded as raw JSON, every line of it
            "log.txt",
            '\n{"_id": "q1", "text": "what is a cat"}\n',
            r'log\.txt:2: a JSON object with a "text", in a file read as plain text .* rename it to \.jsonl',
        ),
    ],
)
def test_read_texts_errors_name_the_file_and_line(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_texts(path)
    assert "\n" not in str(err.value)


def test_corpus_sentences_are_the_query_length_sentences_of_text_documents_each_once() -> None:
    run_on = "and then " * 50  # 450 bytes with no sentence end: longer than a query
    docs = [
        "Smoking raises the risk of cancer. Smith et al. found this in 2004! Does it hold in mice?",
        "Vitamin D has no effect on bone density.",  # one sentence: already a pair, left out
        "维生素D对骨密度没有影响。吸烟会增加患癌症的风险！",
        ImageRef("https://example.com/cat.png"),
        f"Smoking raises the risk of cancer.  Too short.\nEvery cohort showed it. {run_on}",
    ]
    ds = Dataset("t", Path("."), [f"d{i}" for i in range(len(docs))], docs, {}, {})
    assert corpus_sentences(ds) == [
        "Smoking raises the risk of cancer.",
        "Does it hold in mice?",  # "Smith et al." and "found this in 2004!" are pieces under 20 bytes
        "维生素D对骨密度没有影响。",  # 13 characters, 37 bytes: CJK sentences count by their bytes
        "吸烟会增加患癌症的风险！",
        "Every cohort showed it.",
    ]
