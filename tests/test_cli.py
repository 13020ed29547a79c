"""The command line: fast help, one-line errors, and a small real end-to-end ``fit`` on SciFact."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dataset

from search_adaptor.cli import main
from search_adaptor.files import Terminated
from search_adaptor.model import SearchAdaptor
from search_adaptor.store import text_key
from test_hostile import write_beir, write_vectors


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from search_adaptor.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "fit" in out.stdout and "evaluate" in out.stdout


@pytest.mark.parametrize(
    ("argv", "help_of"),
    [
        (["serve", "idx", "--quiet"], "search-adaptor serve"),
        (["fit", "data", "--out", "o", "--nope", "1"], "search-adaptor fit"),
        (["--nope"], "search-adaptor"),
    ],
)
def test_an_unknown_flag_points_at_its_commands_help(capsys, argv, help_of):
    """argparse reports a flag a command does not take from the top parser, so the line pointed at
    the list of commands ("see search-adaptor --help") rather than at the command's flags."""
    assert main(argv) == 2
    extras = " ".join(argv[argv.index(next(a for a in argv if a in ("--quiet", "--nope"))) :])
    assert capsys.readouterr().err == (
        f"search-adaptor: error: unrecognized arguments: {extras} (see {help_of} --help)\n"
    )


def test_bad_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"text": "no id"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search-adaptor: error: ") and "\n" not in err
    assert "corpus.jsonl:2" in err and "_id" in err


@pytest.mark.parametrize("folds", ["1", "0", "2.5", "x"])
def test_folds_below_two_are_refused_by_the_flag(tmp_path, capsys, folds):
    """One fold holds out nothing; the refusal names the flag (it was 'k must be between 2 and the
    number of queries', after the dataset was read)."""
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "out"), "--folds", folds]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        f"argument --folds: must be an integer of at least 2 (k-fold holds out one part in k), got {folds}"
        in err
    )
    assert "\n" not in err


def _subset(src: Path, dst: Path, n_train: int = 60, n_test: int = 30, n_docs: int = 250) -> Path:
    """A small BEIR folder cut from a real dataset: sampled queries, their documents and distractors."""
    rng = random.Random(0)
    qrels = {}
    for split in ("train", "test"):
        rows = (src / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        by_q: dict[str, list[str]] = {}
        for row in rows:
            q, d, s = row.split("\t")
            by_q.setdefault(q, []).append(f"{q}\t{d}\t{s}")
        keep = rng.sample(sorted(by_q), n_train if split == "train" else n_test)
        qrels[split] = [r for q in keep for r in by_q[q]]
    needed = {r.split("\t")[1] for rows in qrels.values() for r in rows}
    with gzip.open(src / "corpus.jsonl.gz", "rt") as fh:
        docs = [json.loads(line) for line in fh]
    extra = rng.sample([d for d in docs if d["_id"] not in needed], n_docs)
    corpus = [d for d in docs if d["_id"] in needed] + extra
    queries_needed = {r.split("\t")[0] for rows in qrels.values() for r in rows}
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text().splitlines()]
    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (dst / "queries.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in queries if q["_id"] in queries_needed)
    )
    for split, rows in qrels.items():
        (dst / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return dst


@pytest.mark.slow
def test_fit_end_to_end_on_a_scifact_subset(tmp_path, capsys):
    data = _subset(shared_dataset("scifact"), tmp_path / "scifact-small")
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["fit", str(data), "--out", str(out), "--cache", str(cache), "--max-steps", "60", "--quiet"]
    assert main([*args, "-o", "json"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "test" and report["dataset"] == "scifact-small"
    assert report["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert set(report["metrics"]) == {"zero-shot", "adapted"}
    assert set(report["metrics"]["adapted"]) == {"ndcg@10", "recall@100", "mrr@10", "map@100"}
    assert report["validation"]["selected_val_ndcg@10"] >= report["validation"]["zero_shot_val_ndcg@10"]
    assert set(report["timings"]) == {"embed_s", "train_s"}
    assert {c["precision"] for c in report["validation"]["candidates"]} == {"float32"}  # the default
    assert report["encoder_calls"]["texts_sent"] > 0
    assert (out / "report.md").read_text().startswith("# search-adaptor report")
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == report["metrics"]

    # the saved adapter scores the same test queries to the same numbers
    assert (
        main(
            [
                "evaluate",
                str(data),
                "--adapter",
                str(out / "adapter"),
                "--cache",
                str(cache),
                "--quiet",
                "-o",
                "json",
            ]
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    for name, value in report["metrics"]["adapted"].items():
        assert evaluated["metrics"]["adapted"][name] == pytest.approx(value, abs=1e-9)

    # a second fit on the same data makes zero encoder calls
    assert main([*args, "-o", "json"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["encoder_calls"]["texts_sent"] == 0

    # the adapter refuses embeddings of another model, naming both
    other = tmp_path / "vectors"
    other.mkdir()
    from search_adaptor.data import load_beir

    ds = load_beir(data)
    rng = np.random.default_rng(0)
    np.savez(
        other / "queries.npz",
        ids=np.array(list(ds.queries)),
        embeddings=rng.normal(size=(len(ds.queries), 8)),
    )
    np.savez(other / "corpus.npz", ids=np.array(ds.doc_ids), embeddings=rng.normal(size=(len(ds.doc_ids), 8)))
    assert (
        main(
            [
                "evaluate",
                str(data),
                "--adapter",
                str(out / "adapter"),
                "--embeddings",
                str(other),
                "--model",
                "my-8d-model",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "all-MiniLM-L6-v2" in err and "my-8d-model" in err


def _synthetic_folder(tmp_path: Path, d: dict, splits: dict[str, list[str]]) -> list[str]:
    """The synthetic fixture as a BEIR folder (qrels ``splits``: name -> query ids) with its vectors
    given by ``--embeddings``: the start of a ``fit`` command line."""
    data = write_beir(tmp_path / "syn", d, splits=splits)
    return ["fit", str(data), "--embeddings", str(write_vectors(tmp_path / "vec", d)), "--model", "syn-16"]


def test_evaluate_tells_held_out_queries_from_those_that_trained_the_adapter(tmp_path, synthetic, capsys):
    """An adapter scored on queries whose labels trained it looks far better than it is: the adapter
    records their texts' digests, and `evaluate` warns, loudly, when it scores such queries."""
    qids = synthetic["qids"]
    train, test = qids[:100], qids[100:]
    argv = _synthetic_folder(tmp_path, synthetic, {"train": train, "test": test})
    out = tmp_path / "out"
    fit = [*argv, "--out", str(out), "--family", "shared-infonce", "--max-steps", "60", "--quiet"]
    assert main(fit) == 0
    capsys.readouterr()
    training = json.loads((out / "adapter" / "config.json").read_text())["training"]
    assert len(training["query_text_digests"]) == len(train)  # its training and validation queries
    evaluate = ["evaluate", argv[1], "--adapter", str(out / "adapter"), *argv[2:]]
    for split, n_seen in (("train", len(train)), ("test", 0)):
        assert main([*evaluate, "--split", split, "--out", str(tmp_path / split), "--quiet"]) == 0
        printed = capsys.readouterr().out
        report = json.loads((tmp_path / split / "report.json").read_text())
        assert report["seen_in_training"] == {"n": n_seen, "of": report["n_test_queries"], "by": "text"}
        warning = (
            f"WARNING: {n_seen} of the {n_seen} scored queries have the text of a query whose labels "
            "trained or chose this adapter; these scores are not held-out"
        )
        markdown = (tmp_path / split / "report.md").read_text()
        assert (warning in printed) == (warning in markdown) == bool(n_seen), printed
        assert ("held-out queries)" in printed) == (not n_seen)
    assert "none of them has the text of a query whose labels trained or chose it" in markdown
    # `-o json` (a script): stdout stays one JSON document, and the warning still reaches stderr
    assert main([*evaluate, "--split", "train", "-o", "json", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["seen_in_training"]["n"] == len(train)
    assert f"WARNING: {len(train)} of the {len(train)} scored queries have the text" in printed.err
    est = SearchAdaptor.load(out / "adapter")
    est.query_text_digests_ = None  # as a Python fit saves it: the fit never saw the texts, only ids
    est.save(tmp_path / "api-adapter")
    evaluate[3] = str(tmp_path / "api-adapter")
    assert main([*evaluate, "--split", "train", "--out", str(tmp_path / "api"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "(train, 100 scored queries)" in printed
    report = json.loads((tmp_path / "api" / "report.json").read_text())
    assert report["seen_in_training"] == {"n": 100, "of": 100, "by": "id"}
    assert "WARNING: 100 of the 100 scored queries share an id with a query whose labels" in printed
    assert "so the check is by id" in (tmp_path / "api" / "report.md").read_text()

    # a dataset that repeats a training query's text under a test id: held-out by id, not by text
    queries = Path(argv[1]) / "queries.jsonl"
    # (up to case and spacing: an uncased model gives "  Q1 " the vector of "q1"; it went unflagged)
    text = queries.read_text().replace('"text": "q100"', '"text": "q0"')
    queries.write_text(text.replace('"text": "q101"', '"text": "  Q1 "'))
    assert main([*fit, "--out", str(tmp_path / "again")]) == 0
    assert "held-out queries" in capsys.readouterr().out  # fit's protocol holds out by id
    protocol = (tmp_path / "again" / "report.md").read_text()
    assert "never saw by id; 2 of them repeat the text of a query whose labels trained or chose" in protocol
    evaluate[3] = str(tmp_path / "again" / "adapter")
    assert main([*evaluate, "--out", str(tmp_path / "again-test"), "--quiet"]) == 0
    assert (
        "WARNING: 2 of the 60 scored queries have the text of a query whose labels trained or chose this "
        "adapter; their scores are not held-out: drop them from the split for a held-out score."
    ) in capsys.readouterr().out
    # an adapter written before digests were taken up to case and spacing: its exact ones still match
    queries.write_text(queries.read_text().replace('"text": "q102"', '"text": "Mixed  Case"'))
    older = SearchAdaptor.load(tmp_path / "again" / "adapter")
    texts = [*(f"q{i}" for i in range(100)), "Mixed  Case"]  # as written, as they were digested then
    older.query_text_digests_ = sorted(text_key("query", t).hex()[:16] for t in texts)
    older.save(tmp_path / "older")
    evaluate[3] = str(tmp_path / "older")
    assert main([*evaluate, "--out", str(tmp_path / "older-test"), "--quiet"]) == 0
    assert json.loads((tmp_path / "older-test" / "report.json").read_text())["seen_in_training"]["n"] == 3


def test_a_kfold_fit_says_when_scored_queries_repeat_the_text_of_their_folds_training_queries(
    tmp_path, synthetic, capsys
):
    """Folds split ids: a question asked under two ids is scored in one fold by an adapter that may
    have trained on its twin in another, and the k-fold report said nothing of it."""
    argv = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"]})
    queries = Path(argv[1]) / "queries.jsonl"
    text = queries.read_text()
    for i in range(10):  # q150..q159 ask what q0..q9 ask
        text = text.replace(f'"text": "q{150 + i}"', f'"text": "Q{i}"')
    queries.write_text(text)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "40", "--folds", "3"]) == 0
    printed = capsys.readouterr()
    seen = json.loads((out / "report.json").read_text())["seen_in_training"]
    assert seen["by"] == "text" and 0 < seen["n"] <= 20 and seen["of"] == len(synthetic["qids"])
    warning = f"WARNING: {seen['n']} of the {seen['of']} scored queries repeat the text of a query"
    assert warning in printed.out + printed.err and warning in (out / "report.md").read_text()


def test_fit_and_evaluate_refuse_an_out_folder_holding_other_files(tmp_path, synthetic, capsys):
    """A mistyped --out (the dataset's own folder, say) is refused before anything is embedded or
    trained, and nothing is written into it; a previous run's folder is fine to write again."""
    argv = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"]})
    data = Path(argv[1])
    before = sorted(p.name for p in data.iterdir())
    assert main([*argv, "--out", str(data), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"search-adaptor: error: {data}: exists and is not a folder written by `search-adaptor fit`; "
        "choose a new or empty folder"
    )
    assert sorted(p.name for p in data.iterdir()) == before
    (tmp_path / "a-file").write_text("x")
    assert main([*argv, "--out", str(tmp_path / "a-file"), "--quiet"]) == 2
    assert "a-file: exists and is a file; choose a new or empty folder" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "a-file" / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"run: {tmp_path / 'a-file'} is a file, not a folder; choose another place" in err
    evaluate = ["evaluate", str(data), "--adapter", str(tmp_path / "none"), "--out", str(data)]
    assert main(evaluate) == 2
    assert "is not a folder written by `search-adaptor evaluate`" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == before
    # a fit's folder holds its proof, which evaluate's report would replace
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run), "--family", "linear", "--max-steps", "10", "--quiet"]) == 0
    fits = (run / "report.json").read_bytes()
    evaluate = ["evaluate", str(data), "--adapter", str(run / "adapter"), *argv[2:], "--quiet"]
    assert main([*evaluate, "--out", str(run)]) == 2
    assert f"{run}: holds the report of a fit, which evaluate would replace" in capsys.readouterr().err
    assert (run / "report.json").read_bytes() == fits
    assert main([*evaluate, "--out", str(run / "evaluate")]) == 0
    assert main([*evaluate, "--out", str(run / "evaluate")]) == 0  # its own folder: written again


def test_a_fit_interrupted_while_saving_leaves_a_folder_the_next_fit_takes(
    tmp_path, synthetic, capsys, monkeypatch
):
    """Ctrl-C between the adapter and the report left adapter/ without report.json: the next fit
    refused the folder as not its own, and an earlier run's report stayed beside the new adapter.
    A run is now published whole or not at all: the earlier run stays as it was."""
    from search_adaptor import report

    argv = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"]})
    out = tmp_path / "out"
    fit = [*argv, "--out", str(out), "--family", "linear", "--max-steps", "20", "--quiet"]
    assert main(fit) == 0
    before = {p.name: p.read_bytes() for p in (out / "report.json", out / "adapter" / "config.json")}

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_figures", interrupted)
    assert main([*fit, "--seed", "1"]) == 130
    assert "search-adaptor: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "plots", "report.json", "report.md"]
    assert {p.name: p.read_bytes() for p in (out / "report.json", out / "adapter" / "config.json")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # nothing staged is left
    monkeypatch.undo()
    assert main(fit) == 0
    assert json.loads((out / "report.json").read_text())["selected"]
    (out / "notes.txt").write_text("mine")  # with a file of the user's and no report: not a run's
    (out / "report.json").unlink()
    assert main(fit) == 2
    assert "is not a folder written by `search-adaptor fit`" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "stopped_in", "raised", "status", "line"),
    [
        ("fit", "search_adaptor.experiment.embeddings_for", KeyboardInterrupt, 130, "interrupted"),
        (
            "embed",
            "search_adaptor.embed.embed_dataset",
            Terminated,
            143,
            "terminated (embeddings finished so far are kept in the store)",
        ),
        ("dry-run", "search_adaptor.embed.plan_embedding", KeyboardInterrupt, 130, "interrupted"),
        ("search", "search_adaptor.index.AdaptedIndex.load", KeyboardInterrupt, 130, "interrupted"),
        ("serve", "search_adaptor.server.serve", Terminated, 143, "terminated (server stopped)"),
    ],
)
def test_an_interrupted_command_ends_with_what_is_true_of_it(
    tmp_path, synthetic, capsys, monkeypatch, command, stopped_in, raised, status, line
):
    """Every interrupted command ended "(embeddings finished so far are kept in the store)", though
    serve, search, a fit of --embeddings vectors or a dry run embed nothing: only a command that
    embeds through the store says so, serve says the server stopped, the others say nothing more.
    The statuses are Ctrl-C's 130 and SIGTERM's 143, as ever."""

    def stopped(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(stopped_in, stopped)
    fit = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"]})
    # an API model needs no download to be made; nothing reaches the root
    embed = [
        "embed",
        fit[1],
        "--provider",
        "openai-compatible",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9",
        "--cache",
        str(tmp_path / "cache"),
    ]
    argv = {
        "fit": [*fit, "--out", str(tmp_path / "out")],
        "embed": embed,
        "dry-run": [*embed, "--dry-run"],
        "search": ["search", str(tmp_path / "index"), "a query"],
        "serve": ["serve", str(tmp_path / "index")],
    }[command]
    assert main(argv) == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"search-adaptor: {line}"


def test_five_labelled_queries_ship_the_identity_and_say_why(tmp_path, synthetic, capsys):
    """5-fold over 5 queries: every fit validates on one query, which proves nothing, so nothing
    ships (the rule itself: test_model's test_selection_rules...), and report.md says what to do."""
    argv = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"][:5]})
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--max-steps", "30", "--quiet", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["selected"] == "identity (zero-shot)" and report["validation"]["n_val_queries"] == 1
    assert all(f["selected"] == "identity (zero-shot)" for f in report["fold_results"])
    assert report["metrics"]["adapted"] == report["metrics"]["zero-shot"]
    # every metric is tested, not nDCG@10 alone: the identity equals zero-shot in each (p exactly 1)
    assert report["significance"]["p_value"] == 1.0
    assert report["significance"]["p_values"] == {
        m: 1.0 for m in report["metrics"]["adapted"] if m != "ndcg@10"
    }
    assert (
        "Validation held a single query, which cannot tell a gain from noise"
        in (out / "report.md").read_text()
    )
    # the terminal summary says why too, not only report.md
    assert main([*argv, "--out", str(tmp_path / "again"), "--max-steps", "30", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "saved adapter: identity (zero-shot)" in printed  # (k-fold: each fold scored by its own)
    assert "No variant beat zero-shot on validation by more than the noise" in printed
    assert "Validation held a single query" in printed


@pytest.mark.slow
def test_fit_with_precomputed_embeddings_and_kfold(tmp_path, synthetic, capsys):
    """Bring-your-own vectors + a dataset without a train split -> k-fold protocol."""
    d = synthetic
    argv = _synthetic_folder(tmp_path, d, {"test": d["qids"]})
    out = tmp_path / "out"
    assert (
        main(
            [
                *argv,
                "--out",
                str(out),
                "--folds",
                "3",
                "--max-steps",
                "80",
                "--quiet",
                "-o",
                "json",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "kfold" and report["folds"] == 3 and len(report["fold_results"]) == 3
    assert report["n_test_queries"] == len(d["qrels"])
    assert report["metrics"]["adapted"]["ndcg@10"] > report["metrics"]["zero-shot"]["ndcg@10"]
    assert "3-fold cross-validation" in (out / "report.md").read_text()
    cfg = json.loads((out / "adapter" / "config.json").read_text())
    assert cfg["encoder"]["fingerprint"] == "precomputed:syn-16"


@pytest.mark.slow
def test_fit_selection_kfold_is_recorded_in_the_report(tmp_path, synthetic, capsys):
    """``fit --selection kfold``: candidates compared by k-fold over the training queries, and the
    report says so, with every training query scored once."""
    d = synthetic
    argv = _synthetic_folder(tmp_path, d, {"train": d["qids"][:100], "test": d["qids"][100:]})
    out = tmp_path / "out"
    argv += ["--out", str(out)]
    assert (
        main([*argv, "--selection", "kfold", "--folds", "2", "--max-steps", "40", "--quiet", "-o", "json"])
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "test" and report["validation"]["selection"] == "kfold"
    assert report["validation"]["n_val_queries"] == 100  # every training query, held out once
    assert "refit_s" in next(
        c for c in report["validation"]["candidates"] if c["variant"] == report["selected"]
    ) or (report["selected"].startswith("identity"))


def test_fit_refit_all_ships_the_winner_trained_on_every_training_query(tmp_path, synthetic, capsys):
    """``fit --refit-all``: the adapter saved trained on every training query, the dev split's that
    validated too, the report and its summary say so, and the test queries still trained nothing."""
    d = synthetic
    splits = {"train": d["qids"][:80], "dev": d["qids"][80:100], "test": d["qids"][100:]}
    argv = _synthetic_folder(tmp_path, d, splits)
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "60", "--refit-all"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["split"] == "dev"
    assert report["validation"]["refit_all"] == {
        "n_train_queries": 100,
        "steps": report["validation"]["candidates"][0]["best_step"],
    }
    adapter = SearchAdaptor.load(out / "adapter")
    assert adapter.refit_all_ and sorted(adapter.train_query_ids_) == sorted(d["qids"][:100])
    line = "trained again on all 100 training queries, the validation ones too"
    assert line in printed and line in (out / "report.md").read_text()
    assert report["seen_in_training"]["n"] == 0


def test_fit_refits_auto_by_default_and_no_refit_all_ships_the_validated_winner(tmp_path, synthetic):
    """``auto`` (the default family) ships its winner trained again on every training query unless
    ``--no-refit-all`` says not to; other families ship the validated winner unless ``--refit-all``."""
    d = synthetic
    argv = _synthetic_folder(tmp_path, d, {"train": d["qids"][:100], "test": d["qids"][100:]})
    shipped = {}
    for name, flags in (("auto", []), ("auto-no", ["--no-refit-all"]), ("linear", ["--family", "linear"])):
        out = tmp_path / name
        assert main([*argv, "--out", str(out), "--max-steps", "40", "--quiet", *flags]) == 0
        report = json.loads((out / "report.json").read_text())
        assert not report["selected"].startswith("identity")  # a winner that trained: a refit to ship
        adapter = SearchAdaptor.load(out / "adapter")
        shipped[name] = (report["validation"].get("refit_all"), adapter.refit_all_)
    assert shipped["auto"][0]["n_train_queries"] == 100 and shipped["auto"][1] is True
    assert shipped["auto-no"] == (None, False) and shipped["linear"] == (None, False)


def test_refit_all_without_labels_is_refused_before_anything_is_embedded(tmp_path, synthetic, capsys):
    data = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"]})[1]
    assert main(["fit", data, "--out", str(tmp_path / "out"), "--unsupervised", "--refit-all"]) == 2
    assert capsys.readouterr().err.strip() == (
        "search-adaptor: error: --refit-all trains the winner again on every labelled query, and a fit "
        "without labels has none: drop --refit-all"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fit_selection_kfold_pools_the_dev_split_and_says_so(tmp_path, synthetic, capsys):
    """With a dev split, ``--selection kfold`` cross-validates over the training and dev queries
    together; the log said the dev split validated, which it did not."""
    d = synthetic
    splits = {"train": d["qids"][:80], "dev": d["qids"][80:110], "test": d["qids"][110:]}
    argv = [*_synthetic_folder(tmp_path, d, splits), "--out", str(tmp_path / "out")]
    assert main([*argv, "--selection", "kfold", "--folds", "2", "--max-steps", "30"]) == 0
    err = capsys.readouterr().err
    assert "the dev split's 30 queries join the training queries" in err
    assert "validation: the dev split" not in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["validation"]["split"] is None and report["validation"]["n_val_queries"] == 110


def test_fit_validates_on_the_dev_split_when_the_data_has_one(tmp_path, synthetic, capsys):
    """A dataset's ``dev`` qrels validate every fit (early stopping and selection) and train none;
    a dev query that the test split also holds is left out, so no scored query validates, and said
    (it was dropped without a word), once (before embedding; the fit's log, which says it to a
    Python caller of run_fit, does not repeat it), and counted in report.json and report.md as the
    training split's are; ``--val-split none`` goes back to a share of the training queries."""
    from search_adaptor.data import load_beir
    from search_adaptor.embed import Embeddings
    from search_adaptor.experiment import run_fit

    d = synthetic
    qids = d["qids"]
    splits = {"train": qids[:80], "dev": [*qids[80:110], qids[150]], "test": qids[110:]}
    argv = [*_synthetic_folder(tmp_path, d, splits), "--max-steps", "30", "--family", "linear"]
    qrels = Path(argv[1]) / "qrels"
    warning = (
        f"1 of the 31 labelled queries of {qrels / 'dev.tsv'} is also in {qrels / 'test.tsv'}, the "
        "scored split: it is left out of early stopping and selection, so that every scored query "
        "stays held-out"
    )
    assert main([*argv, "--out", str(tmp_path / "dev")]) == 0  # not --quiet: the log is on
    assert capsys.readouterr().err.count(warning) == 1
    report = json.loads((tmp_path / "dev" / "report.json").read_text())
    assert report["validation"]["split"] == "dev" and report["validation"]["n_val_queries"] == 30
    assert report["val_left_out"] == {"split": "dev", "n": 1, "of": 31}
    config = json.loads((tmp_path / "dev" / "adapter" / "config.json").read_text())
    assert config["training"]["val_query_ids"] == sorted(qids[80:110])
    assert (
        "select on the `dev` split without the 1 of its 31 queries that `test` also holds, report on"
        in (tmp_path / "dev" / "report.md").read_text()
    )
    said: list[str] = []  # a fit in Python logs it, a line of its log
    encoder = {"fingerprint": "syn", "model": "syn-16", "provider": "test", "config": {}}
    emb = Embeddings(qids, d["Q"], d["dids"], d["D"], encoder)
    run = run_fit(
        load_beir(Path(argv[1])), emb, family="linear", overrides={"max_steps": 30}, log=said.append
    )
    assert said.count(f"warning: {warning}") == 1
    assert run.report["val_left_out"] == {"split": "dev", "n": 1, "of": 31}
    argv += ["--quiet", "-o", "json"]

    assert main([*argv, "--out", str(tmp_path / "share"), "--val-split", "none"]) == 0
    assert "dev.tsv" not in capsys.readouterr().err  # no dev split, nothing left out of it
    report = json.loads((tmp_path / "share" / "report.json").read_text())
    assert report["validation"]["split"] is None and report["validation"]["n_val_queries"] == 16
    assert "val_left_out" not in report
    config = json.loads((tmp_path / "share" / "adapter" / "config.json").read_text())
    assert set(config["training"]["val_query_ids"]) < set(qids[:80])

    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--val-split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search-adaptor: error: --val-split test:") and "\n" not in err
    assert not (tmp_path / "bad").exists()


def test_training_queries_the_dev_split_holds_validate_only_and_are_said(tmp_path, synthetic, capsys):
    """A query in both qrels/train.tsv and qrels/dev.tsv was in the training qrels and the validation
    ones, without a word (report.json: train_left_out n 0): it is now left out of training (it
    validates only), said before anything is embedded, naming both files, and counted in report.json
    and report.md as the test split's are; a train split holding only dev queries is refused."""
    from search_adaptor.data import DataError, load_beir
    from search_adaptor.experiment import protocol

    qids = synthetic["qids"]
    splits = {"train": qids[:80], "dev": qids[75:110], "test": qids[110:]}  # 5 in train and dev
    argv = [*_synthetic_folder(tmp_path, synthetic, splits), "--max-steps", "20", "--family", "linear"]
    qrels = Path(argv[1]) / "qrels"
    warning = (
        f"5 of the 80 labelled queries of {qrels / 'train.tsv'} are also in {qrels / 'dev.tsv'}, the "
        "validation split: they are left out of training (they validate only), so that no candidate is "
        "chosen on queries it trained on"
    )
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--no-refit-all"]) == 0
    err = capsys.readouterr().err
    assert err.count(warning) == 1 and err.index(warning) < err.index(" docs, ")  # before the embeddings
    report = json.loads((out / "report.json").read_text())
    assert report["train_left_out"] == {"n": 0, "of": 80}
    assert report["train_in_val"] == {"split": "dev", "n": 5, "of": 80}
    assert "Protocol: train on `train` without the 5 of its 80 queries that `dev` also holds (they " in (
        (out / "report.md").read_text()
    )
    adapter = SearchAdaptor.load(out / "adapter")
    assert set(adapter.train_query_ids_) == set(qids[:75])
    assert set(adapter.val_query_ids_) == set(qids[75:110])
    proto = protocol(load_beir(Path(argv[1])), selection="kfold")  # pooled: nothing to leave out
    assert proto.train_in_val == [] and len(proto.final_train) == 80
    (qrels / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td0\t1\n" for q in qids[80:90])
    )
    with pytest.raises(DataError, match=r"train\.tsv: all 10 of its labelled queries that test\.tsv does "):
        protocol(load_beir(Path(argv[1])))


def test_qrels_files_fit_does_not_read_are_named_and_eval_is_refused(tmp_path, synthetic, capsys):
    """qrels/training.tsv beside qrels/testing.tsv: fit cross-validated over `testing` and dropped the
    `training` queries without a word; train.tsv beside eval.tsv ran k-fold over train, eval unsaid.
    An unused file is now named before anything is embedded, with how to make it count, and recorded
    in report.json; eval.tsv (scored, or validating?) is refused unless --val-split names it."""
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import protocol

    qids = synthetic["qids"]
    argv = _synthetic_folder(tmp_path, synthetic, {"training": qids[:60], "testing": qids[60:100]})
    qrels = Path(argv[1]) / "qrels"
    warning = (
        f"{qrels / 'training.tsv'} is not used: this fit cross-validates over testing.tsv; fit reads qrels "
        "files by name (train.tsv trains, test.tsv is scored, dev.tsv, validation.tsv or val.tsv "
        "validates): rename it to one of these, or pass --val-split training to validate on it"
    )
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "20", "--folds", "2"]) == 0
    err = capsys.readouterr().err
    assert err.count(warning) == 1 and err.index(warning) < err.index(" docs, ")  # before the embeddings
    assert json.loads((out / "report.json").read_text())["unused_splits"] == ["training"]

    (qrels / "training.tsv").rename(qrels / "train.tsv")
    (qrels / "testing.tsv").rename(qrels / "eval.tsv")
    assert main([*argv, "--out", str(tmp_path / "eval"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"search-adaptor: error: {qrels / 'eval.tsv'}: a split named 'eval' could be scored or validate, "
        "so fit reads neither from it; rename it test.tsv (scored; held-out) or dev.tsv (validates early "
        "stopping and selection), or pass --val-split eval"
    )
    assert not (tmp_path / "eval").exists()
    proto = protocol(load_beir(Path(argv[1])), val_split="eval")
    assert (proto.scored_split, proto.val_split, proto.unused_splits) == ("train", "eval", [])

    (qrels / "eval.tsv").rename(qrels / "test.tsv")
    write_beir(tmp_path / "more", synthetic, splits={"dev": qids[100:130], "val": qids[130:150]})
    for name in ("train", "test"):
        (tmp_path / "more" / "qrels" / f"{name}.tsv").write_text((qrels / f"{name}.tsv").read_text())
    proto = protocol(load_beir(tmp_path / "more"))
    assert proto.unused_splits == ["val"] and proto.warnings == [
        f"{tmp_path / 'more' / 'qrels' / 'val.tsv'} is not used: this fit trains on train.tsv and scores "
        "test.tsv, validating on dev.tsv; pass --val-split val to validate on it instead"
    ]
    assert protocol(load_beir(tmp_path / "more"), val_split="none").unused_splits == []


def test_a_train_split_of_one_labelled_query_is_refused_naming_its_file(tmp_path, synthetic, capsys):
    """qrels/train.tsv with one labelled query beside qrels/test.tsv: fit embedded everything, then
    failed with 'qrels: need at least 2 labelled queries ...; got 1', naming no file. Now refused
    before anything is embedded, naming train.tsv; a dev split (which validates) lets it train."""
    qids = synthetic["qids"]
    argv = _synthetic_folder(tmp_path, synthetic, {"train": qids[:3], "test": qids[1:40]})
    qrels = Path(argv[1]) / "qrels"
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "20"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"search-adaptor: error: {qrels / 'train.tsv'}: need at least 2 labelled queries (with a document of "
        "grade >= 1) to train and validate; got 1 (the other 2 are also in test.tsv): label more queries, "
        "or add a qrels/dev.tsv to validate on"
    )
    assert not out.exists()
    write_beir(
        tmp_path / "dev", synthetic, splits={"train": qids[:1], "dev": qids[50:60], "test": qids[1:40]}
    )
    argv[1] = str(tmp_path / "dev")
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "20", "--quiet"]) == 0


def test_kfold_protocol_validates_on_the_dev_split_without_its_scored_queries(tmp_path, synthetic):
    """Without a train split, the dev queries validate every fold; one the scored split holds does not."""
    from search_adaptor.data import DataError, load_beir
    from search_adaptor.experiment import protocol

    qids = synthetic["qids"]
    _synthetic_folder(tmp_path, synthetic, {"test": qids[:100], "validation": [*qids[100:130], qids[0]]})
    dataset = load_beir(tmp_path / "syn")
    proto = protocol(dataset, folds=3)
    assert (
        proto.name == "kfold"
        and proto.val_split == "validation"
        and sorted(proto.val) == sorted(qids[100:130])
    )
    qrels = tmp_path / "syn" / "qrels"
    assert proto.warnings == [
        f"1 of the 31 labelled queries of {qrels / 'validation.tsv'} is also in {qrels / 'test.tsv'}, "
        "the scored split: it is left out of early stopping and selection, so that every scored query "
        "stays held-out"
    ]
    (pooled,) = protocol(dataset, folds=3, selection="kfold").warnings  # the split trains there too
    assert "the scored split: it is left out of training, early stopping and selection" in pooled
    assert protocol(dataset, folds=3, val_split="none").val == {}
    assert protocol(dataset, folds=3, val_split="none").warnings == []
    (tmp_path / "syn" / "qrels" / "validation.tsv").write_text(
        f"query-id\tcorpus-id\tscore\n{qids[0]}\td0\t1\n"
    )
    with pytest.raises(
        DataError, match=r"validation\.tsv: every query of the validation split is also a scored"
    ):
        protocol(load_beir(tmp_path / "syn"), folds=3)
    (tmp_path / "syn" / "qrels" / "validation.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match=r"no query with a relevant .*; --val-split none validates"):
        protocol(load_beir(tmp_path / "syn"), folds=3)


def test_test_queries_with_no_relevant_document_are_said_not_scored(tmp_path, synthetic, capsys):
    """TREC-style qrels: 20 of the 80 test queries judged, every grade 0. They were left out of the
    mean without a word, though BEIR's mean counts each as 0 (its figure here: 0.75 of ours)."""
    qids = synthetic["qids"]
    argv = _synthetic_folder(tmp_path, synthetic, {"train": qids[:80], "test": qids[80:140]})
    with open(Path(argv[1]) / "qrels" / "test.tsv", "a") as qrels:
        qrels.writelines(f"{q}\td0\t0\n" for q in qids[140:160])
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "40", "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["n_test_queries"] == 60 and report["unscored"] == {"n": 20, "of": 80}
    beir = report["metrics"]["adapted"]["ndcg@10"] * 60 / 80
    note = "Note: 20 of the 80 queries of `test` have no relevant document (every judgement grade 0)"
    for text in (printed, (out / "report.md").read_text()):
        assert note in text and f"adapted {beir:.4f}." in text
    evaluate = ["evaluate", argv[1], "--adapter", str(out / "adapter"), *argv[2:]]
    assert main([*evaluate, "--quiet"]) == 0
    assert note in capsys.readouterr().out


def test_a_train_split_with_no_relevant_document_is_refused_not_passed_over(tmp_path, synthetic):
    """qrels/train.tsv with every grade 0 (a wrong column, an inverted scale): fit trained by k-fold
    on the test queries instead, its report saying the dataset had no train split."""
    from search_adaptor.data import DataError, load_beir
    from search_adaptor.experiment import protocol

    qids = synthetic["qids"]
    write_beir(tmp_path / "syn", synthetic, splits={"train": qids[:100], "test": qids[100:]})
    train = tmp_path / "syn" / "qrels" / "train.tsv"
    lines = train.read_text().splitlines()
    train.write_text("\n".join([lines[0], *(row.rsplit("\t", 1)[0] + "\t0" for row in lines[1:])]) + "\n")
    with pytest.raises(DataError, match=r"train\.tsv: split 'train' has no query with a relevant"):
        protocol(load_beir(tmp_path / "syn"), folds=3)


def test_train_and_dev_without_test_k_folds_the_training_queries(tmp_path, synthetic):
    """qrels/train.tsv + qrels/dev.tsv: "dev" sorted first, so fit k-folded the dev queries and left
    every training query unused (with validation.tsv instead, it k-folded train)."""
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import protocol

    qids = synthetic["qids"]
    for dev in ("dev", "validation"):
        folder = tmp_path / dev
        folder.mkdir()
        _synthetic_folder(folder, synthetic, {"train": qids[:100], dev: qids[100:130]})
        proto = protocol(load_beir(folder / "syn"), folds=3)
        assert (proto.name, proto.scored_split, proto.val_split) == ("kfold", "train", dev)
        assert sorted(proto.final_train) == sorted(qids[:100]) and sorted(proto.val) == sorted(qids[100:130])


def test_too_few_queries_for_the_folds_name_the_folds_that_work(tmp_path, synthetic):
    """2 labelled queries were told to pass --folds 2, which then failed with 'need at least 2 labelled
    queries ...; got 1' naming nothing: each fold trains on the others, so 2 queries make no folds."""
    from search_adaptor.data import DataError, load_beir
    from search_adaptor.experiment import protocol

    qids = synthetic["qids"]
    for n, folds, message in (
        (2, 2, "2 labelled queries cannot make 2 folds that each train on 2 or more; label at least 3"),
        (3, 5, "3 labelled queries cannot make 5 folds .*; pass --folds 3, or label"),
        (3, 2, "pass --folds 3, or label more queries"),
        (9, 10, "pass --folds between 2 and 9"),
    ):
        folder = tmp_path / f"{n}-{folds}"
        folder.mkdir()
        _synthetic_folder(folder, synthetic, {"test": qids[:n]})
        with pytest.raises(DataError, match=rf"qrels/test\.tsv: .*{message}"):
            protocol(load_beir(folder / "syn"), folds=folds)
    assert protocol(load_beir(tmp_path / "3-5" / "syn"), folds=3).name == "kfold"


@pytest.mark.parametrize("seed", ["-1", "18446744073709551616", "x"])
def test_a_seed_out_of_range_is_refused_by_the_flag(tmp_path, capsys, seed):
    """--seed -1 was refused after the data was read and embedded, and 2**64 failed in training with
    'Overflow when unpacking long long', naming neither the flag nor the range."""
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "out"), "--seed", seed]) == 2
    err = capsys.readouterr().err.strip()
    assert f"argument --seed: must be an integer from 0 to 18446744073709551615, got {seed}" in err


def test_training_queries_the_test_split_holds_are_left_out_and_said(tmp_path, synthetic, capsys):
    """qrels/train.tsv holding queries of qrels/test.tsv trained the adapter on them, yet fit printed
    "held-out" and report.md said training "never saw" them: they are now left out of training
    (as a dev split's are of validation), with a warning naming both files, and a train split
    holding nothing else is refused in one line. The warning is printed once, before embedding:
    the fit's log (on here, no --quiet) does not say it again."""
    qids = synthetic["qids"]
    train, test = qids[:100], qids[60:]  # 40 shared
    argv = _synthetic_folder(tmp_path, synthetic, {"train": train, "test": test})
    qrels = Path(argv[1]) / "qrels"
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--family", "linear", "--max-steps", "20"]) == 0
    captured = capsys.readouterr()
    warning = (
        f"40 of the 100 labelled queries of {qrels / 'train.tsv'} are also in {qrels / 'test.tsv'}, the "
        "scored split: they are left out of training, early stopping and selection, so that every "
        "scored query stays held-out"
    )
    assert f"search-adaptor: warning: {warning}" in captured.err and captured.err.count(warning) == 1
    assert captured.err.index(warning) < captured.err.index(" docs, ")  # before the embeddings
    assert "(test, 100 held-out queries)" in captured.out
    adapter = SearchAdaptor.load(out / "adapter")
    assert {*adapter.train_query_ids_, *adapter.val_query_ids_} == set(qids[:60])
    report = json.loads((out / "report.json").read_text())
    assert report["train_left_out"] == {"n": 40, "of": 100} and "val_left_out" not in report
    assert report["seen_in_training"]["n"] == 0 and report["n_test_queries"] == 100
    markdown = (out / "report.md").read_text()
    assert (
        "Protocol: train on `train` without the 40 of its 100 queries that `test` also holds, select on "
        "a validation split carved from it, report on the 100 `test` queries, which training, early "
        "stopping and selection never saw."
    ) in markdown

    (qrels / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{g}\n" for q in test[:30] for d, g in synthetic["qrels"][q].items())
    )
    assert main([*argv, "--out", str(tmp_path / "refused"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"search-adaptor: error: {qrels / 'train.tsv'}: all 30 of its labelled queries are also in "
        f"{qrels / 'test.tsv'}, whose queries are scored and never train; give train.tsv queries of its "
        "own, or move it aside to cross-validate over the test.tsv queries"
    )
    assert not (tmp_path / "refused").exists()


def test_unsupervised_kfold_selection_is_refused_before_anything_is_embedded(
    tmp_path, synthetic, capsys, monkeypatch
):
    """fit --unsupervised --selection kfold embedded every text (paid for, with an API model) and only
    then said that a fit without labels has nothing to cross-validate: it is refused first now, before
    the data is read or a key looked up (whose errors' fixes would only lead to this one)."""
    from search_adaptor import experiment

    def no_embedding(*_args, **_kwargs):
        raise AssertionError("embedded before the refusal")

    monkeypatch.setattr(experiment, "embeddings_for", no_embedding)
    data = _synthetic_folder(tmp_path, synthetic, {"test": synthetic["qids"]})[1]
    api = ["--provider", "openai-compatible", "--model", "m", "--base-url", "http://127.0.0.1:9"]
    fit = ["fit", data, *api, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main([*fit, "--unsupervised", "--dims", "8", "--selection", "kfold", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "search-adaptor: error: --selection kfold cross-validates labelled queries, and a fit without "
        "labels trains on none: drop --selection kfold"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    kfold = ["--unsupervised", "--selection", "kfold", "--provider", "openai", "--out", str(tmp_path / "o")]
    for folder in (str(tmp_path / "no-such-data"), data):  # a missing folder; the openai model's missing key
        assert main(["fit", folder, *kfold]) == 2
        assert "error: --selection kfold cross-validates labelled queries" in capsys.readouterr().err
    # the family that trains without labels, named instead of --unsupervised: both flags were dropped
    # in silence (report.json: selection validation, no refit)
    named = [*fit, "--family", "matryoshka-unsupervised", "--dims", "8", "--quiet"]
    for flags, refusal in (
        (["--selection", "kfold"], "drop --selection kfold"),
        (["--refit-all"], "drop --refit-all"),
    ):
        assert main([*named, *flags]) == 2
        assert capsys.readouterr().err.strip().endswith(refusal)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_kfold_selection_short_of_queries_is_refused_before_anything_is_embedded(
    tmp_path, synthetic, capsys, monkeypatch
):
    """--selection kfold on a small dataset was refused only after every text was embedded (paid
    for), counting one outer fold's training queries as what was "given" and advising "fewer
    folds" at --folds 2: it is now refused first, naming the qrels file, what each fit has and the
    --folds values that work, or that none does."""
    from search_adaptor import experiment

    embedded = []
    real = experiment.embeddings_for

    def counted(*args, **kwargs):
        embedded.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "embeddings_for", counted)
    qids = synthetic["qids"]
    for splits, folds, message in (
        (
            {"test": qids[:12]},
            2,
            "test.tsv: --selection kfold with --folds 2 needs at least 10 labelled queries in each "
            "training fold (5 a selection fold), and of its 12 labelled queries each training fold has 6; "
            "no --folds value leaves enough: pass --selection validation, or label more queries",
        ),
        ({"test": qids[:11]}, 2, "each training fold has 5 or 6; no --folds value leaves enough"),
        (
            {"test": qids[:30]},
            5,
            "needs at least 25 labelled queries in each training fold (5 a selection fold), and of its 30 "
            "labelled queries each training fold has 24; pass --folds between 2 and 4, or --selection "
            "validation",
        ),
        (
            {"train": qids[:12], "test": qids[100:]},
            3,
            "train.tsv: --selection kfold with --folds 3 needs at least 15 labelled queries to train on "
            "(5 a selection fold), and there are 12; pass --folds 2, or --selection validation",
        ),
    ):
        folder = tmp_path / f"{len(splits)}-{len(next(iter(splits.values())))}-{folds}"
        folder.mkdir()
        argv = [*_synthetic_folder(folder, synthetic, splits), "--selection", "kfold", "--folds", str(folds)]
        assert main([*argv, "--out", str(folder / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("search-adaptor: error: ") and "\n" not in err
        assert message in err, err
        assert embedded == []  # refused before anything is embedded
        assert not (folder / "out").exists()

    # the --folds values named work
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import protocol, select

    assert protocol(load_beir(tmp_path / "2-12-3" / "syn"), folds=2, selection="kfold").name == "test"
    assert protocol(load_beir(tmp_path / "1-30-5" / "syn"), folds=4, selection="kfold").name == "kfold"

    # select() itself (the Python API) applies the same rule, and names a fix that works

    d = synthetic
    for n, folds, message in (
        (9, 2, r"9 given, too few for any number of folds: use selection 'validation'"),
        (12, 3, r"needs at least 15 labelled queries \(5 a fold\); 12 given: use 2 folds or selection"),
    ):
        qrels = {q: d["qrels"][q] for q in qids[:n]}
        with pytest.raises(ValueError, match=message):
            select("linear", d["Q"], d["D"], qrels, qids, d["dids"], selection="kfold", selection_folds=folds)
