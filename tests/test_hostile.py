"""Nothing hostile gets through (issue 14): every damaged, edited or degenerate input a command reads
ends in exit status 2 and one stderr line naming the file (and line or field) and the fix, never in a
traceback, a silent success or different numbers.

Fast and offline: a tiny adapter with random weights, precomputed vectors instead of a model, and a
counting fake encoder where a command would embed texts.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import search_adaptor.encoders.registry as registry
import search_adaptor.store as store_mod
from search_adaptor.cli import main
from search_adaptor.encoders.base import InputsRejected
from search_adaptor.model import SearchAdaptor
from search_adaptor.store import EmbeddingStore, text_key
from test_index import make_adapter
from test_store import CountingEncoder

MODEL = "syn-16"  # the --model name of the precomputed vectors; the adapter records it
ENCODER_INFO = {
    "fingerprint": f"precomputed:{MODEL}",
    "provider": "precomputed",
    "model": MODEL,
    "config": {},
}
needs_faiss = pytest.mark.skipif(find_spec("faiss") is None, reason="needs faiss-cpu (the serve extra)")
needs_onnx = pytest.mark.skipif(find_spec("onnxruntime") is None, reason="needs onnxruntime (the onnx extra)")


# -- fixtures: a BEIR folder, its precomputed vectors and an adapter trained on them -------------------
def write_beir(
    folder: Path,
    d: dict,
    qrels: dict | None = None,
    header: bool = True,
    splits: dict[str, list[str]] | None = None,
) -> Path:
    """The synthetic fixture ``d`` as a BEIR folder: its judgements (or ``qrels``) in ``test.tsv``, or
    the queries named per split in ``splits`` (split name -> query ids)."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": i}) + "\n" for i in d["dids"]))
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": q}) + "\n" for q in d["qids"])
    )
    qrels = qrels or d["qrels"]
    head = "query-id\tcorpus-id\tscore\n" if header else ""
    for split, ids in (splits or {"test": list(qrels)}).items():
        rows = [f"{q}\t{doc}\t{g}" for q in ids for doc, g in qrels[q].items()]
        (folder / "qrels" / f"{split}.tsv").write_text(head + "\n".join(rows) + "\n")
    return folder


def write_vectors(
    folder: Path, d: dict, scale: float = 1.0, dtype: type = np.float32, **edits: np.ndarray
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, ids, mat in (("queries", d["qids"], d["Q"]), ("corpus", d["dids"], d["D"])):
        mat = edits.get(stem, (mat.astype(np.float64) * scale).astype(dtype))
        np.savez(folder / f"{stem}.npz", ids=np.array(ids), embeddings=mat)
    return folder


@pytest.fixture(scope="module")
def world(synthetic, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("world")
    adapter = make_adapter(info=ENCODER_INFO)
    adapter.save(root / "adapter")
    return {
        "d": synthetic,
        "data": write_beir(root / "syn", synthetic),
        "vec": write_vectors(root / "vec", synthetic),
        "adapter": root / "adapter",
        "est": adapter,
    }


@pytest.fixture
def adapter_copy(world, tmp_path) -> Path:
    return Path(shutil.copytree(world["adapter"], tmp_path / "adapter"))


def run(capsys, *argv: Any) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def fit(capsys, data: Path, vectors: Path, out: Path, *extra: Any) -> tuple[int, str, str]:
    """``fit`` on precomputed vectors, a few steps per candidate (were bad input accepted, the test
    would still end soon)."""
    return run(
        capsys, "fit", data, "--out", out, "--embeddings", vectors, "--max-steps", "5", "--quiet", *extra
    )


def assert_refused(result: tuple[int, str, str], *parts: str) -> str:
    """Exit 2 and one stderr line that names each of ``parts`` (file, field, fix); no traceback."""
    rc, _, err = result
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("search-adaptor: error: "), err
    assert "Traceback" not in err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# -- editing the files of an adapter -------------------------------------------------------------------
def edit_json(name: str, change: Callable[[Any], Any], whole: bool = False) -> Callable[[Path], None]:
    """Apply ``change`` to the parsed JSON file ``name``; with ``whole`` its result replaces the file."""

    def apply(folder: Path) -> None:
        value = json.loads((folder / name).read_text())
        new = change(value)
        (folder / name).write_text(json.dumps(new if whole else value))

    return apply


def edit_config(change: Callable[[dict], Any], whole: bool = False) -> Callable[[Path], None]:
    return edit_json("config.json", change, whole)


def tensor_offsets(blob: bytes) -> tuple[int, dict[str, Any]]:
    """(start of the data, header) of a safetensors file."""
    n = struct.unpack("<Q", blob[:8])[0]
    return 8 + n, json.loads(blob[8 : 8 + n])


def set_weight(value: float, name: str = "query.f.0.weight", index: int = 3) -> Callable[[Path], None]:
    """Overwrite one float32 of one tensor in adapter.safetensors."""

    def apply(folder: Path) -> None:
        path = folder / "adapter.safetensors"
        blob = path.read_bytes()
        start, header = tensor_offsets(blob)
        at = start + header[name]["data_offsets"][0] + 4 * index
        path.write_bytes(blob[:at] + np.float32(value).tobytes() + blob[at + 4 :])

    return apply


def rewrite_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "adapter.safetensors")
        change(tensors)
        save_file(tensors, folder / "adapter.safetensors")

    return apply


def edit_weights_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "adapter.safetensors"
        path.write_bytes(change(path.read_bytes()))

    return apply


# -- 1. a NaN in adapter.safetensors -----------------------------------------------------------------
def _commands(world: dict, adapter: Path, out: Path) -> dict[str, list[Any]]:
    emb = ["--embeddings", world["vec"], "--model", MODEL]
    npy = out.parent / "base.npy"
    np.save(npy, world["d"]["D"][:5])
    return {
        "transform": ["transform", npy, "--adapter", adapter, "--out", out / "t.npy"],
        "export": ["export", adapter, "--out", out, "--format", "onnx"],
        "index": ["index", world["data"], "--adapter", adapter, "--out", out, *emb, "--quiet"],
        "evaluate": ["evaluate", world["data"], "--adapter", adapter, "--out", out, *emb, "--quiet"],
    }


@pytest.mark.parametrize("command", ["transform", "export", "index", "evaluate"])
def test_a_nan_weight_is_refused_by_every_command(world, adapter_copy, tmp_path, capsys, command):
    if command == "export" and find_spec("onnxruntime") is None:
        pytest.skip("needs onnxruntime")
    if command == "index" and find_spec("faiss") is None:
        pytest.skip("needs faiss")
    set_weight(float("nan"))(adapter_copy)
    out = tmp_path / "out"
    result = run(capsys, *_commands(world, adapter_copy, out)[command])
    assert_refused(
        result, f"{adapter_copy / 'adapter.safetensors'}:", "'query.f.0.weight'", "NaN", "train it"
    )
    assert not out.exists()


@needs_faiss
def test_search_names_the_index_adapter_with_a_nan_not_the_base_model(world, tmp_path, capsys):
    index = tmp_path / "idx"
    emb = ["--embeddings", world["vec"], "--model", MODEL, "--quiet"]
    assert run(capsys, "index", world["data"], "--adapter", world["adapter"], "--out", index, *emb)[0] == 0
    set_weight(float("inf"), "query.f.2.bias", 0)(index / "adapter")
    result = run(capsys, "search", index, "a query")
    assert_refused(result, f"{index / 'adapter' / 'adapter.safetensors'}:", "'query.f.2.bias'", "NaN or inf")


# -- 2, 5, 6. config.json: types, choices, bounds, sections, versions, encodings -----------------------
CONFIG_EDITS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "mode __class__": (
        edit_config(lambda c: c["hyperparameters"].update(mode="__class__")),
        ["hyperparameters", "mode must be one of", "__class__"],
    ),
    "unknown architecture": (
        edit_config(lambda c: c["hyperparameters"].update(architecture="transformer")),
        ["architecture must be one of"],
    ),
    "hidden size 10^9": (
        edit_config(lambda c: c["hyperparameters"].update(hidden_dim=10**9)),
        ["hidden_dim", "65536"],
    ),
    "residual a string": (edit_config(lambda c: c["hyperparameters"].update(residual="yes")), ["residual"]),
    "encoder config a string": (
        edit_config(lambda c: c["encoder"].update(config="x")),
        ["encoder: field 'config' must be an object"],
    ),
    "encoder model a list": (
        edit_config(lambda c: c["encoder"].update(model=[1])),
        ["encoder: field 'model' must be a string"],
    ),
    "alpha NaN": (
        edit_config(lambda c: c["hyperparameters"].update(alpha=float("nan"))),
        ["NaN is not a JSON"],
    ),
    "unknown hyperparameter": (
        edit_config(lambda c: c["hyperparameters"].update(zeta=1)),
        ["unknown SearchAdaptor parameter", "zeta"],
    ),
    "mode removed": (edit_config(lambda c: c["hyperparameters"].pop("mode")), ["hyperparameters", "'mode'"]),
    "dim abc": (edit_config(lambda c: c.update(dim="abc")), ["'dim'", '"abc"']),
    "dim 10^9": (edit_config(lambda c: c.update(dim=10**9)), ["'dim'", "65536"]),
    "dim other than the weights": (
        edit_config(lambda c: c.update(dim=8)),
        ["tensor 'query.f.0.", "the config needs F32 (8"],
    ),
    "separate without corpus weights": (
        edit_config(lambda c: c["hyperparameters"].update(mode="separate")),
        ["missing tensor", "corpus."],
    ),
    "a list": (edit_config(lambda c: [c], whole=True), ["expected a JSON object, got list"]),
    "no training section": (edit_config(lambda c: c.pop("training")), ["missing field 'training'"]),
    "training precision unknown": (
        edit_config(lambda c: c["training"].update(precision="fp8")),
        ["training: precision must be one of float32, bfloat16", '"fp8"'],
    ),
    "query text digests not hex": (
        edit_config(lambda c: c["training"].update(query_text_digests=["../../etc/passwd"])),
        ["training: query_text_digests must be a list of 16-character hex digests"],
    ),
    "query text digests not a list": (
        edit_config(lambda c: c["training"].update(query_text_digests="abc")),
        ["training: field 'query_text_digests' must be list"],
    ),
    "precision hyperparameter unknown": (
        edit_config(lambda c: c["hyperparameters"].update(precision="half")),
        ["precision must be one of float32, bfloat16, auto", "'half'"],
    ),
    "no hyperparameters section": (
        edit_config(lambda c: c.pop("hyperparameters")),
        ["missing field 'hyperparameters'"],
    ),
    "unknown field": (edit_config(lambda c: c.update(extra=1)), ["unknown field 'extra'"]),
    "format_version a string": (
        edit_config(lambda c: c.update(format_version="2")),
        ["format_version", '"2"'],
    ),
    "format_version from the future": (
        edit_config(lambda c: c.update(format_version=99)),
        ["format_version 99 is newer", "upgrade search-adaptor"],
    ),
    "UTF-16": (
        lambda f: (f / "config.json").write_bytes((f / "config.json").read_text().encode("utf-16")),
        ["UTF-16 text, not UTF-8", "save it as UTF-8"],
    ),
    "not JSON": (lambda f: (f / "config.json").write_text('{"dim": 16,'), ["not valid JSON", "line 1"]),
    "nested 10^5 deep": (
        lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000),
        ["nested too deeply"],
    ),
    "test metrics not numbers": (
        edit_config(lambda c: c["metrics"].update(test={"adapted": {"ndcg@10": "high"}, "zero-shot": {}})),
        ["metrics.test"],
    ),
    "test metric out of range": (
        edit_config(
            lambda c: c["metrics"].update(test={"adapted": {"ndcg@10": 5.0}, "zero-shot": {"ndcg@10": 0.5}})
        ),
        ["metrics.test.adapted.ndcg@10 must be in [0, 1], got 5.0"],
    ),
    "a training-only hyperparameter removed": (  # clone/refit_all would train with the default
        edit_config(lambda c: c["hyperparameters"].pop("lr")),
        ["hyperparameters: missing field 'lr'"],
    ),
    "negative fit time": (
        edit_config(lambda c: c["training"].update(fit_time_s=-1)),
        ["training: fit_time_s must be >= 0, got -1"],
    ),
    "unknown validation metric": (
        edit_config(lambda c: c["training"].update(val_metric="bogus@10")),
        ["training: val_metric must be one of ndcg@10, neighbours@10", '"bogus@10"'],
    ),
    "another library": (edit_config(lambda c: c.update(library="x")), ["field 'library' must be"]),
    "a validation query said to have trained it": (
        edit_config(lambda c: c["training"]["val_query_ids"].append(c["training"]["train_query_ids"][0])),
        ["is in both train_query_ids and val_query_ids"],
    ),
    "no config.json": (lambda f: (f / "config.json").unlink(), ["not found"]),
}


@pytest.mark.parametrize("case", CONFIG_EDITS)
def test_an_edited_or_damaged_config_is_one_line_naming_file_and_field(
    world, adapter_copy, tmp_path, capsys, case
):
    edit, parts = CONFIG_EDITS[case]
    edit(adapter_copy)
    npy = tmp_path / "base.npy"
    np.save(npy, world["d"]["D"][:5])
    out = tmp_path / "adapted.npy"
    result = run(capsys, "transform", npy, "--adapter", adapter_copy, "--out", out)
    assert_refused(result, str(adapter_copy), "config.json", *parts)
    assert not out.exists()


# -- 2, 5. adapter.safetensors: names, dtypes, shapes, damage, integrity -------------------------------
WEIGHT_EDITS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "an unknown tensor": (
        rewrite_weights(lambda t: t.update({"query.extra": torch.zeros(2)})),
        ["unknown tensor 'query.extra'"],
    ),
    "a missing tensor": (
        rewrite_weights(lambda t: t.pop("query.f.2.bias")),
        ["missing tensor 'query.f.2.bias'"],
    ),
    "float16 weights": (
        rewrite_weights(lambda t: t.update({k: v.half() for k, v in t.items()})),
        ["F16", "needs F32"],
    ),
    "a transposed weight": (
        rewrite_weights(lambda t: t.update({"query.f.0.weight": torch.zeros(16, 17)})),
        ["(16, 17)", "(16, 16)"],
    ),
    "truncated": (edit_weights_bytes(lambda b: b[: len(b) // 2]), ["not a readable safetensors file"]),
    "empty": (edit_weights_bytes(lambda b: b""), ["not a readable safetensors file"]),
    "garbage": (edit_weights_bytes(lambda b: bytes(range(256)) * 8), ["not a readable safetensors file"]),
    "a finite weight changed": (set_weight(0.123), ["checksum", "changed or damaged"]),
    "missing": (lambda f: (f / "adapter.safetensors").unlink(), ["not found"]),
}


@pytest.mark.parametrize("case", WEIGHT_EDITS)
def test_damaged_or_foreign_weights_are_one_line_naming_the_file(world, adapter_copy, tmp_path, capsys, case):
    edit, parts = WEIGHT_EDITS[case]
    edit(adapter_copy)
    npy = tmp_path / "base.npy"
    np.save(npy, world["d"]["D"][:5])
    result = run(capsys, "transform", npy, "--adapter", adapter_copy, "--out", tmp_path / "adapted.npy")
    assert_refused(result, str(adapter_copy), *parts)


def test_a_valid_edit_that_would_change_the_outputs_is_refused(world, adapter_copy):
    """Shared -> query_only keeps every weight name and shape but stops adapting documents: only the
    checksum can tell, so the load refuses instead of returning different numbers."""
    edit_config(lambda c: c["hyperparameters"].update(mode="query_only"))(adapter_copy)
    with pytest.raises(ValueError, match=r"config\.json: checksum .* changed or damaged") as exc:
        SearchAdaptor.load(adapter_copy)
    assert "\n" not in str(exc.value)
    edit_config(lambda c: c["hyperparameters"].update(mode="shared", alpha=0.5, seed=7))(adapter_copy)
    again = SearchAdaptor.load(adapter_copy)  # training-only settings change no output
    X = world["d"]["Q"]
    assert np.array_equal(again.transform_queries(X), world["est"].transform_queries(X))


def test_an_edit_of_the_trained_sizes_is_refused_and_a_format_2_adapter_still_loads(world, adapter_copy):
    """``hyperparameters.dims`` edited from null to [8] loaded: evaluate then scored an ``adapted@8``
    as a trained size and ``transform --dim 8`` no longer warned; the checksum covers the sizes now
    (format_version 3), and an adapter saved before (format 2, its checksum without them) loads."""
    from search_adaptor.model import _checksum

    edit_config(lambda c: c["hyperparameters"].update(dims=[8]))(adapter_copy)
    with pytest.raises(
        ValueError, match=r"config\.json: checksum .* \(weights, settings, sizes or encoder\)"
    ):
        SearchAdaptor.load(adapter_copy)
    edit_config(lambda c: c["hyperparameters"].update(dims=None))(adapter_copy)
    older = _checksum(SearchAdaptor.load(adapter_copy), 2)
    edit_config(lambda c: c.update(format_version=2, checksum=older))(adapter_copy)
    X = world["d"]["Q"]
    assert np.array_equal(
        SearchAdaptor.load(adapter_copy).transform_queries(X), world["est"].transform_queries(X)
    )


def test_an_adapter_saved_before_checksums_loads_and_says_so_once(world, adapter_copy, caplog):
    def older(c: dict) -> None:
        c["format_version"] = 1
        del c["checksum"]

    edit_config(older)(adapter_copy)
    X = world["d"]["Q"]
    with caplog.at_level("WARNING"):
        first = SearchAdaptor.load(adapter_copy)
        SearchAdaptor.load(adapter_copy)
    said = [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()]
    assert len(said) == 1 and str(adapter_copy) in said[0] and "re-save" in said[0]
    assert np.array_equal(first.transform_queries(X), world["est"].transform_queries(X))
    edit_config(lambda c: c.update(format_version=2))(adapter_copy)  # format 2 cannot drop its checksum
    with pytest.raises(ValueError, match=r"config\.json: missing field 'checksum'"):
        SearchAdaptor.load(adapter_copy)


# -- 4. degenerate precomputed vectors ------------------------------------------------------------------
def _zero_row(d: dict, stem: str) -> np.ndarray:
    mat = (d["Q"] if stem == "queries" else d["D"]).copy()
    mat[7] = 0.0
    return mat


DEGENERATE = {
    "an all-zero query": ("queries", lambda d: _zero_row(d, "queries"), ["queries.npz", "'q7'", "all zeros"]),
    "an all-zero document": ("corpus", lambda d: _zero_row(d, "corpus"), ["corpus.npz", "'d7'", "all zeros"]),
    "dimension 0": (
        "corpus",
        lambda d: np.zeros((len(d["dids"]), 0), np.float32),
        ["corpus.npz", "dimension 0"],
    ),
    "NaN": ("queries", lambda d: np.where(np.arange(16) == 3, np.nan, d["Q"]), ["queries.npz", "NaN"]),
}


@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_precomputed_vectors_are_refused_before_training(world, tmp_path, capsys, case):
    stem, make, parts = DEGENERATE[case]
    vec = write_vectors(tmp_path / "vec", world["d"], **{stem: make(world["d"])})
    out = tmp_path / "out"
    assert_refused(fit(capsys, world["data"], vec, out, "--folds", "2"), str(vec), *parts)
    assert not out.exists()


@pytest.mark.parametrize(
    ("stem", "noun", "first"), [("queries", "query", "q0"), ("corpus", "document", "d0")]
)
def test_a_missing_precomputed_vector_is_named_by_its_kind_and_id(world, tmp_path, capsys, stem, noun, first):
    """Was "no vector for querie id ..." (the file's stem cut by one letter)."""
    d = world["d"]
    vec = write_vectors(tmp_path / "vec", d)
    ids, mat = (d["qids"], d["Q"]) if stem == "queries" else (d["dids"], d["D"])
    np.savez(vec / f"{stem}.npz", ids=np.array(ids[1:]), embeddings=mat[1:])
    parts = [f"{stem}.npz", f"no vector for {noun} id '{first}' (1 missing)", "embed every id"]
    assert_refused(fit(capsys, world["data"], vec, tmp_path / "out", "--folds", "2"), str(vec), *parts)


def test_a_precomputed_id_twice_or_null_is_refused_naming_the_rows(world, tmp_path, capsys):
    """Which of two vectors an id means is the user's to say: neither is picked silently."""
    d = world["d"]
    vec = write_vectors(tmp_path / "vec", d)
    ids, mat = [*d["dids"], d["dids"][3]], np.vstack([d["D"], -d["D"][3:4]])
    np.savez(vec / "corpus.npz", ids=np.array(ids), embeddings=mat)
    out = tmp_path / "out"
    last = len(ids) - 1
    parts = ["corpus.npz", f"id 'd3' is on rows 3 and {last}", "one vector per id"]
    assert_refused(fit(capsys, world["data"], vec, out, "--folds", "2"), str(vec), *parts)
    assert not out.exists()
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (vec / "corpus.npz").unlink()  # Parquet: a null id is refused, not read as the id 'None'
    ids = [*d["dids"][:-1], None]
    pq.write_table(pa.table({"id": ids, "embedding": d["D"].tolist()}), vec / "corpus.parquet")
    parts = ["corpus.parquet", f"row {len(ids) - 1} of column 'id' is null"]
    assert_refused(fit(capsys, world["data"], vec, out, "--folds", "2"), str(vec), *parts)


@pytest.mark.parametrize(
    "scale, dtype", [(1e30, np.float32), (1e-30, np.float32), (3e37, np.float32), (1e300, np.float64)]
)
def test_huge_or_tiny_vectors_score_as_their_directions(world, tmp_path, capsys, scale, dtype):
    """Cosine ignores length: vectors scaled by 1e30 or 1e-30 give the report of the unscaled ones
    (float32 squares overflow or underflow there, so lengths are measured in float64)."""
    reports = []
    for name, s, t in (("unit", 1.0, np.float32), ("scaled", scale, dtype)):
        vec = write_vectors(tmp_path / name, world["d"], scale=s, dtype=t)
        out = tmp_path / f"out-{name}"
        argv = ["evaluate", world["data"], "--adapter", world["adapter"], "--embeddings", vec]
        assert run(capsys, *argv, "--model", MODEL, "--out", out, "-o", "json", "--quiet")[0] == 0
        reports.append(json.loads((out / "report.json").read_text()))
    for system in ("zero-shot", "adapted"):
        for metric, value in reports[0]["metrics"][system].items():
            assert reports[1]["metrics"][system][metric] == pytest.approx(value, abs=1e-9), (system, metric)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_fit_on_huge_or_tiny_vectors_learns_what_it_learns_at_unit_scale(world, scale):
    d = world["d"]
    params = {"max_steps": 30, "eval_every": 10, "batch_size": 32}
    unit = SearchAdaptor(**params).fit(d["Q"], d["D"], d["qrels"], d["qids"], d["dids"])
    scaled = SearchAdaptor(**params).fit(d["Q"] * scale, d["D"] * scale, d["qrels"], d["qids"], d["dids"])
    assert scaled.zero_shot_score_ == pytest.approx(unit.zero_shot_score_, abs=1e-6)
    assert scaled.best_score_ == pytest.approx(unit.best_score_, abs=0.02)


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_the_fit_command_on_huge_or_tiny_vectors_reports_what_unit_vectors_give(
    world, tmp_path, capsys, scale
):
    """Issue 14.4 as reported: ``fit --embeddings`` on 1e30 vectors said "selected: identity" with
    adapted != zero-shot. Scaled vectors must give the unit vectors' report, selection included."""
    reports = []
    for name, s in (("unit", 1.0), ("scaled", scale)):
        vec = write_vectors(tmp_path / name, world["d"], scale=s)
        out = tmp_path / f"out-{name}"
        assert fit(capsys, world["data"], vec, out, "--folds", "2", "-o", "json")[0] == 0
        reports.append(json.loads((out / "report.json").read_text()))
    unit, scaled = reports
    assert scaled["selected"] == unit["selected"]
    for system in ("zero-shot", "adapted"):
        for metric, value in unit["metrics"][system].items():
            assert scaled["metrics"][system][metric] == pytest.approx(value, abs=0.02), (system, metric)
    if scaled["selected"].startswith("identity"):
        assert scaled["metrics"]["adapted"] == scaled["metrics"]["zero-shot"]


def test_fit_refuses_all_zero_rows_naming_the_id(world):
    d = world["d"]
    D = d["D"].copy()
    D[4] = 0.0
    with pytest.raises(ValueError, match=r"corpus embeddings: the vector of document 'd4' is all zeros"):
        SearchAdaptor(max_steps=5).fit(d["Q"], D, d["qrels"], d["qids"], d["dids"])
    Q = d["Q"].copy()
    Q[7] = 0.0  # a static model's vector for a query none of whose words it knows: drop or reword it
    with pytest.raises(ValueError, match=r"query embeddings: the vector of query 'q7' is all zeros.*drop it"):
        SearchAdaptor(max_steps=5).fit(Q, d["D"], d["qrels"], d["qids"], d["dids"])


# -- 5, 6. datasets and vector files ---------------------------------------------------------------------
def test_fit_on_a_folder_without_qrels(world, tmp_path, capsys):
    data = Path(shutil.copytree(world["data"], tmp_path / "syn"))
    shutil.rmtree(data / "qrels")
    result = fit(capsys, data, world["vec"], tmp_path / "out")
    assert_refused(result, str(data / "qrels"), "no qrels files", "qrels/test.tsv")


def test_too_few_labelled_queries_for_the_default_folds_names_the_flag(world, tmp_path, capsys):
    d = world["d"]
    data = write_beir(tmp_path / "syn", d, qrels={q: d["qrels"][q] for q in d["qids"][:3]})
    result = fit(capsys, data, world["vec"], tmp_path / "out")
    assert_refused(result, "qrels/test.tsv", "3 labelled queries", "5 folds", "--folds 3,")


def _object_npz(path: Path, d: dict) -> None:
    np.savez(path, ids=np.array(d["qids"], dtype=object), embeddings=d["Q"])


VECTOR_FILES: dict[str, tuple[Callable[[Path, dict], None], list[str]]] = {
    "truncated": (
        lambda p, d: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        ["not a readable .npz file"],
    ),
    "not a zip": (lambda p, d: p.write_text("q0 0.1 0.2\n"), ["not a readable .npz file"]),
    "object ids": (_object_npz, ["'ids'", "object"]),
    "no embeddings array": (
        lambda p, d: np.savez(p, ids=np.array(d["qids"])),
        ["missing array(s) embeddings"],
    ),
    "strings as vectors": (
        lambda p, d: np.savez(p, ids=np.array(d["qids"]), embeddings=np.array(d["qids"])),
        ["'embeddings'", "not numbers"],
    ),
    "ids and rows disagree": (
        lambda p, d: np.savez(p, ids=np.array(d["qids"][:-1]), embeddings=d["Q"]),
        ["159 ids", "(160, 16)"],
    ),
}


@pytest.mark.parametrize("case", VECTOR_FILES)
def test_a_bad_vector_file_is_one_line_naming_it(world, tmp_path, capsys, case):
    damage, parts = VECTOR_FILES[case]
    vec = write_vectors(tmp_path / "vec", world["d"])
    damage(vec / "queries.npz", world["d"])
    assert_refused(fit(capsys, world["data"], vec, tmp_path / "out"), str(vec / "queries.npz"), *parts)


@pytest.mark.parametrize(
    "rows, parts",
    [
        (["q1\td1\tx", "q2\td2\t1"], [":1:", 'score "x" is not an integer']),
        (["q1\td1\t1.5", "q2\td2\t1"], [":1:", 'score "1.5" is not an integer']),
        (["q1\tnope\tscore", "q2\td2\t1"], [":1:", 'score "score" is not an integer']),
    ],
)
def test_a_first_qrels_row_that_is_data_is_never_taken_for_a_header(tmp_path, rows, parts):
    from search_adaptor.data import DataError, load_beir

    d = {"dids": ["d1", "d2"], "qids": ["q1", "q2"], "qrels": {}}
    data = write_beir(tmp_path / "syn", d, header=False)
    (data / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as exc:
        load_beir(data)
    message = str(exc.value)
    assert "\n" not in message and "test.tsv" in message
    for part in parts:
        assert part in message, message
    (data / "qrels" / "test.tsv").write_text("qid\tdocid\trelevance\n" + "\n".join(rows[1:]) + "\n")
    assert load_beir(data).qrels["test"] == {"q2": {"d2": 1}}  # a real header is still skipped


# -- 10. evaluate refuses another model's adapter before embedding anything -----------------------------
def test_evaluate_with_another_models_adapter_embeds_nothing(world, tmp_path, capsys, monkeypatch):
    fake = CountingEncoder(dim=16, batch_size=50)
    monkeypatch.setattr(registry, "make_encoder", lambda *a, **k: fake)
    argv = [
        "evaluate",
        world["data"],
        "--adapter",
        world["adapter"],
        "--cache",
        tmp_path / "cache",
        "--quiet",
    ]
    # no --provider: the adapter's own record, precomputed vectors, which no model can embed again
    assert_refused(run(capsys, *argv), f"precomputed embeddings ({MODEL})", "--embeddings DIR")
    assert_refused(  # (it said to give --model, which names vectors brought with --embeddings only)
        run(capsys, *argv, "--provider", "sentence-transformers"),
        f"precomputed:{MODEL}",
        fake.fingerprint,
        f"it was fit on vectors brought with --embeddings ({MODEL}), which no encoder here makes: give "
        f"such vectors (--embeddings DIR --model {MODEL})",
    )
    assert fake.calls == []
    vec = ["--embeddings", world["vec"], "--model", "other-model"]
    assert_refused(
        run(capsys, *argv, *vec), f"{world['vec']}: adapter was trained", "precomputed:other-model"
    )  # (the folder is named: it was not)
    narrow = tmp_path / "narrow"
    write_vectors(narrow, {**world["d"], "Q": world["d"]["Q"][:, :8], "D": world["d"]["D"][:, :8]})
    assert_refused(
        run(capsys, *argv, "--embeddings", narrow, "--model", MODEL),
        f"{narrow}: adapter expects 16-d embeddings of {MODEL}, got 8-d",
    )
    unnamed = run(capsys, *argv, "--embeddings", world["vec"])  # vectors are known by --model's name
    line = assert_refused(unnamed, f"precomputed:{MODEL}", f"are named by --model: give --model {MODEL}")
    # (their fingerprint is precomputed:precomputed:DIGEST, which the line printed as it is)
    digest = line.split("these come from precomputed:")[1][:12]
    assert f"these come from precomputed:{digest} (vectors given no --model, named by their digest);" in line
    assert "precomputed:precomputed:" not in line


# -- 11, 5, 6. index folders -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_dir(world, tmp_path_factory) -> Path:
    if find_spec("faiss") is None:
        pytest.skip("needs faiss")
    from search_adaptor.index import AdaptedIndex

    d = world["d"]
    folder = tmp_path_factory.mktemp("index") / "idx"
    AdaptedIndex.from_vectors(world["est"], d["dids"], d["D"], ENCODER_INFO).save(folder)
    return folder


def edit_manifest(change: Callable[[dict], Any], whole: bool = False) -> Callable[[Path], None]:
    return edit_json("manifest.json", change, whole)


INDEX_EDITS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "adapter outside the folder": (
        edit_manifest(lambda m: m["adapter"].update(path="../outside")),
        ["manifest.json: adapter.path", '"../outside"', "points outside"],
    ),
    "absolute adapter path": (
        edit_manifest(lambda m: m["adapter"].update(path="/tmp")),
        ["manifest.json: adapter.path", '"/tmp"', "not a relative path"],
    ),
    "adapter a link to elsewhere": (
        lambda f: (shutil.rmtree(f / "adapter"), (f / "adapter").symlink_to(f.parent / "outside")),
        ["manifest.json: adapter.path", "points outside"],
    ),
    "manifest a list": (
        edit_manifest(lambda m: [m], whole=True),
        ["manifest.json", "expected a JSON object"],
    ),
    "manifest without adapter": (edit_manifest(lambda m: m.pop("adapter")), ["manifest.json", "'adapter'"]),
    "encoder config a list": (
        edit_manifest(lambda m: m["encoder"].update(config=[1])),
        ["manifest.json: encoder: field 'config' must be an object"],
    ),
    "manifest without adapter.path": (
        edit_manifest(lambda m: m["adapter"].pop("path")),
        ["manifest.json", "adapter.path"],
    ),
    # said to point at an adapter folder (fit's OUT_DIR/adapter), which search does not take
    "adapter folder deleted": (
        lambda f: shutil.rmtree(f / "adapter"),
        ["adapter/config.json: not found; rebuild the index with `search-adaptor index`"],
    ),
    "adapter a file": (
        lambda f: (shutil.rmtree(f / "adapter"), (f / "adapter").write_text("")),
        ["adapter/config.json: not found; rebuild the index with `search-adaptor index`"],
    ),
    "doc_ids.json not JSON": (lambda f: (f / "doc_ids.json").write_text('["d0", '), ["doc_ids.json", "JSON"]),
    "doc_ids.json numbers": (
        lambda f: (f / "doc_ids.json").write_text(json.dumps(list(range(300)))),
        ["doc_ids.json", "list of document id strings"],
    ),
    "doc_ids.json repeats": (
        lambda f: (f / "doc_ids.json").write_text(json.dumps(["d0"] * 300)),
        ["doc_ids.json", "repeat"],
    ),
    "doc_ids.json short": (
        lambda f: (f / "doc_ids.json").write_text(json.dumps([f"d{i}" for i in range(299)])),
        ["index.faiss", "299 ids"],
    ),
    "index.faiss damaged": (lambda f: (f / "index.faiss").write_bytes(b"\0" * 100), ["index.faiss"]),
    # answered in silence before the manifest recorded checksums: wrong documents for right scores
    "doc_ids.json two ids swapped": (
        edit_json("doc_ids.json", lambda ids: [ids[1], ids[0], *ids[2:]], whole=True),
        ["doc_ids.json: changed since the index was written"],
    ),
    "index.faiss of another corpus of the same shape": (
        lambda f: _swap_faiss(f, lambda index: _faiss().IndexFlatIP(index.d), shuffle=True),
        ["index.faiss: changed since the index was written"],
    ),
    "checksums not an object": (
        edit_manifest(lambda m: m.update(checksums=[1])),
        ["manifest.json: field 'checksums' must map index.faiss, doc_ids.json and adapter"],
    ),
    # the check was off, with every part unchecked: format 1 indexes written before checksums lack it
    "checksums deleted": (
        edit_manifest(lambda m: m.pop("checksums")),
        ["manifest.json: missing field 'checksums' (format_version 2 always records it)"],
    ),
    "adapter's checksum deleted": (
        edit_manifest(lambda m: m["checksums"].pop("adapter")),
        ["manifest.json: field 'checksums' must map index.faiss, doc_ids.json and adapter"],
    ),
    # answered in silence: the manifest's checksums covered index.faiss and doc_ids.json only
    "adapter of the same model swapped, its fingerprint copied": (
        lambda f: _swap_adapter(f),
        ["adapter: changed since the index was written", "another adapter than its documents were"],
    ),
    "index.faiss of another format": (  # FAISS's reason, not its C++ function and source file
        lambda f: (f / "index.faiss").write_bytes(b"garbage"),
        ['not a readable FAISS index (Index type 0x62726167 ("garb") not recognized)'],
    ),
    "index.faiss of distances": (
        lambda f: _swap_faiss(f, lambda index: _faiss().IndexFlatL2(index.d)),
        ["index.faiss", "IndexFlatL2 (metric 1)", "flat inner-product index"],
    ),
    "index.faiss approximate": (
        lambda f: _swap_faiss(
            f, lambda index: _faiss().IndexHNSWFlat(index.d, 8, _faiss().METRIC_INNER_PRODUCT)
        ),
        ["index.faiss", "IndexHNSWFlat", "flat inner-product index"],
    ),
}


def _faiss() -> Any:
    return pytest.importorskip("faiss")


def _swap_adapter(folder: Path) -> None:
    """Replace the index's adapter by another one of the same model, and copy its fingerprint into the
    manifest: every check but the checksums finds the parts agree."""
    other = make_adapter(info=ENCODER_INFO, seed=1)
    shutil.rmtree(folder / "adapter")
    other.save(folder / "adapter")
    edit_manifest(lambda m: m["adapter"].update(fingerprint=other.fingerprint_))(folder)


@pytest.mark.parametrize("without", ["the adapter's checksum", "checksums"])
def test_an_index_written_before_the_adapters_checksum_loads(index_dir, tmp_path, without):
    """Format 1 indexes were written without checksums, then without the adapter's: both load."""
    from search_adaptor.index import AdaptedIndex

    def older(manifest: dict) -> None:
        manifest["format_version"] = 1
        if without == "checksums":
            del manifest["checksums"]
        manifest.get("checksums", {}).pop("adapter", None)

    folder = Path(shutil.copytree(index_dir, tmp_path / "idx"))
    edit_manifest(older)(folder)
    assert AdaptedIndex.load(folder).doc_ids == AdaptedIndex.load(index_dir).doc_ids


def _swap_faiss(folder: Path, make: Callable[[Any], Any], shuffle: bool = False) -> None:
    """Replace index.faiss by another kind of index holding the same vectors (a stranger's edit), or
    by one holding them in another order (``shuffle``: another corpus's index, to the checks)."""
    faiss = _faiss()
    old = faiss.read_index(str(folder / "index.faiss"))
    new = make(old)
    vectors = old.reconstruct_n(0, old.ntotal)
    new.add(vectors[::-1].copy() if shuffle else vectors)
    faiss.write_index(new, str(folder / "index.faiss"))


def test_a_text_query_on_an_index_of_precomputed_vectors_says_how_to_search_it(index_dir, capsys):
    """The fix it gave named --embeddings DIR and --provider/--model, which search does not have."""
    assert_refused(
        run(capsys, "search", index_dir, "a query"),
        f"this index was built from precomputed vectors ({MODEL})",
        "AdaptedIndex.search(vectors)",
        "search-adaptor index --provider",
    )


@pytest.mark.parametrize("case", INDEX_EDITS)
def test_a_damaged_or_edited_index_is_one_line_naming_the_file(world, index_dir, tmp_path, capsys, case):
    edit, parts = INDEX_EDITS[case]
    folder = Path(shutil.copytree(index_dir, tmp_path / "idx"))
    shutil.copytree(world["adapter"], tmp_path / "outside")  # a valid adapter that must not be served
    edit(folder)
    assert_refused(run(capsys, "search", folder, "a query"), *parts, "rebuild")


# -- 5, 6. the embedding store through the command line ---------------------------------------------------
@pytest.fixture
def store_world(world, tmp_path, monkeypatch) -> dict[str, Any]:
    """``embed`` with a counting fake encoder, its store under ``cache`` filled once."""
    fake = CountingEncoder(dim=16, batch_size=64)
    monkeypatch.setattr(registry, "make_encoder", lambda *a, **k: fake)
    cache = tmp_path / "cache"
    assert main(["embed", str(world["data"]), "--cache", str(cache), "--quiet"]) == 0
    with EmbeddingStore(fake, cache) as store:
        path = store.path
    fake.calls.clear()
    return {"fake": fake, "cache": cache, "path": path, "argv": ["embed", world["data"], "--cache", cache]}


def test_a_corrupted_store_names_the_file_and_how_to_rebuild(store_world, capsys):
    path = store_world["path"]
    path.write_bytes(path.read_bytes()[:50] + b"\x13" * 5000)
    result = run(capsys, *store_world["argv"], "--quiet")
    assert_refused(result, str(path), "damaged embedding store", f"delete the folder {path.parent}")
    assert store_world["fake"].calls == []


def test_a_store_on_read_only_media_names_the_folder_and_the_flag(store_world, capsys, monkeypatch):
    monkeypatch.setattr(store_mod, "_can_write", lambda p: False)
    assert run(capsys, *store_world["argv"], "--quiet")[0] == 0  # everything is there: served read-only
    assert store_world["fake"].calls == []
    result = run(
        capsys, "embed", store_world["argv"][1], "--cache", store_world["cache"] / "elsewhere", "--quiet"
    )
    from search_adaptor.data import load_beir

    dataset = load_beir(store_world["argv"][1])
    lacking = len(set(dataset.queries.values())) + len(set(dataset.doc_texts))  # all, not the queries'
    assert_refused(result, "read-only", f"and {lacking} text(s) have no vector", "--cache")


def test_a_short_blob_in_the_store_is_embedded_again_and_named(store_world, capsys):
    import sqlite3

    with sqlite3.connect(store_world["path"]) as db:
        db.execute("UPDATE vectors SET vec = ? WHERE key = ?", (b"\0" * 12, text_key("document", "d3")))
    db.close()
    rc, _, err = run(capsys, *store_world["argv"], "--quiet")
    assert rc == 0 and store_world["fake"].calls == [("d3",)]
    # one line of the command's own, not Python's warning with a source file and a line of code
    assert re.fullmatch(
        r"search-adaptor: warning: \S+embeddings\.sqlite: 1 stored vector\(s\) had the wrong length, "
        r"NaN/inf or only zeros; they were deleted and are embedded again",
        err.strip(),
    )


# -- the store keeps what a provider did embed when it rejects one text -----------------------------------
class RejectingEncoder(CountingEncoder):
    """Like a provider: rejects texts longer than ``limit`` and embeds the rest of their batch."""

    def __init__(self, limit: int = 40, **kw: Any) -> None:
        super().__init__(**kw)
        self.limit = limit

    def encode_batch(self, texts, kind):
        out = super().encode_batch(texts, kind)
        rejected = {
            i: f"HTTP 400: longer than {self.limit} characters"
            for i, t in enumerate(texts)
            if len(t) > self.limit
        }
        if rejected:
            out[list(rejected)] = np.nan
            raise InputsRejected.of(self.provider, texts, out, rejected)
        return out


@pytest.mark.parametrize("workers", [1, 3])
def test_a_rejected_text_fails_at_the_end_and_the_others_are_kept(tmp_path, workers):
    texts = [f"text {i}" for i in range(20)]
    texts[5] = "an over-long text " * 5
    enc = RejectingEncoder(dim=8, batch_size=4, max_concurrency=workers)
    with EmbeddingStore(enc, tmp_path) as store:
        with pytest.raises(InputsRejected) as exc:
            store.embed(texts, "document")
        message = str(exc.value)
        assert "\n" not in message and "1 of 20 texts cannot be embedded" in message
        assert "text 5 (90 characters, starting 'an over-long text an over-long text" in message
        assert "longer than 40 characters" in message and str(store.path.parent) in message
        assert sum(len(c) for c in enc.calls) == 20  # every batch was sent, the one after it too
        assert store.missing("document", texts) == [texts[5]]
        ok = [i for i in range(20) if i != 5]
        assert np.isnan(exc.value.vectors[5]).all() and list(exc.value.rejected) == [5]
        assert np.array_equal(exc.value.vectors[ok], store.embed([texts[i] for i in ok], "document"))
    assert sum(len(c) for c in enc.calls) == 20  # read back from the store, not embedded again


def test_a_rejected_query_still_lets_the_documents_be_embedded(world, tmp_path, capsys, monkeypatch):
    d = world["d"]
    data = write_beir(tmp_path / "syn", d)
    lines = (data / "queries.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"_id": "q2", "text": "too long " * 10})
    (data / "queries.jsonl").write_text("\n".join(lines) + "\n")
    fake = RejectingEncoder(dim=16, batch_size=64)
    monkeypatch.setattr(registry, "make_encoder", lambda *a, **k: fake)
    result = run(capsys, "embed", data, "--cache", tmp_path / "cache", "--quiet")
    assert_refused(result, "1 of 160 texts cannot be embedded", "text 2", "starting 'too long")
    sent = {t for call in fake.calls for t in call}
    assert set(d["dids"]) <= sent  # the corpus was embedded although a query was refused


# -- --debug and unexpected errors ----------------------------------------------------------------------
def test_debug_shows_the_traceback_and_unexpected_errors_stay_one_line(
    world, adapter_copy, tmp_path, capsys, monkeypatch
):
    edit_config(lambda c: c["hyperparameters"].update(mode="__class__"))(adapter_copy)
    npy = tmp_path / "base.npy"
    np.save(npy, world["d"]["D"][:5])
    argv = ["transform", npy, "--adapter", adapter_copy, "--out", tmp_path / "o.npy"]
    for where in ([*argv, "--debug"], ["--debug", *argv]):  # --debug before or after the command
        rc, _, err = run(capsys, *where)
        # the traceback, then the same line and status as without --debug (it raised: status 1, a bug's)
        assert rc == 2 and err.startswith("Traceback") and "ValueError" in err
        assert err.strip().splitlines()[-1].startswith("search-adaptor: error: ")
        assert "mode must be one of" in err.strip().splitlines()[-1]
    import search_adaptor.pipeline as pipeline

    def broken(*a: Any, **k: Any) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(pipeline, "transform_vectors", broken)
    rc, _, err = run(capsys, "transform", npy, "--adapter", world["adapter"], "--out", tmp_path / "o.npy")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "KeyError" in err and "surprise" in err and "--debug" in err
    rc, _, err = run(
        capsys, "transform", npy, "--adapter", world["adapter"], "--out", tmp_path / "o.npy", "--debug"
    )
    last = err.strip().splitlines()[-1]
    assert rc == 1 and err.startswith("Traceback") and "internal error (KeyError" in last
    assert last.endswith("please report it with the traceback above")  # not "run again with --debug"


@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_sigterm_ends_with_its_own_status_with_or_without_debug(world, tmp_path, capsys, monkeypatch, debug):
    """Under --debug, SIGTERM's Terminated was raised out of main as a Ctrl-C is: Python then ended
    with Ctrl-C's status 130, telling a supervisor that a person stopped the job."""
    import search_adaptor.pipeline as pipeline
    from search_adaptor.files import Terminated

    def terminated(*a: Any, **k: Any) -> None:
        raise Terminated

    monkeypatch.setattr(pipeline, "transform_vectors", terminated)
    npy = tmp_path / "base.npy"
    np.save(npy, world["d"]["D"][:5])
    rc, _, err = run(
        capsys, "transform", npy, "--adapter", world["adapter"], "--out", tmp_path / "o.npy", *debug
    )
    assert rc == 143
    assert err.strip().splitlines()[-1] == "search-adaptor: terminated"  # transform embeds nothing
    assert ("Traceback" in err) == bool(debug)


@needs_faiss
def test_engine_flags_that_would_do_nothing_are_refused(world, tmp_path, capsys):
    """--ray-address without --engine ray ran locally, and index --embeddings took --engine ray and
    --rows without a word, though it embeds nothing."""
    npy = tmp_path / "base.npy"
    np.save(npy, world["d"]["D"][:5])
    transform = ["transform", npy, "--adapter", world["adapter"], "--out", tmp_path / "o.npy"]
    assert_refused(run(capsys, *transform, "--ray-address", "nowhere:1"), "--ray-address", "--engine ray")
    index = ["index", world["data"], "--adapter", world["adapter"], "--out", tmp_path / "idx"]
    for extra in (["--engine", "ray"], ["--rows", "3"]):
        result = run(capsys, *index, "--embeddings", world["vec"], "--model", MODEL, *extra)
        assert_refused(result, "--embeddings vectors are indexed in memory")
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "idx").exists()


@needs_faiss
def test_index_embeddings_needs_the_corpus_vectors_only(world, tmp_path, capsys):
    """index --embeddings read the queries' vectors too (refused without them; refused for any query
    id they lacked) and its DATA had to be a BEIR folder, though index takes a corpus file and uses
    no query."""
    from search_adaptor.index import AdaptedIndex

    corpus_only = tmp_path / "vec"
    corpus_only.mkdir()
    shutil.copy(next(Path(world["vec"]).glob("corpus.*")), corpus_only)
    flags = ["--adapter", world["adapter"], "--embeddings", corpus_only, "--model", MODEL, "--quiet"]
    for data, out in (
        (world["data"], tmp_path / "a"),
        (Path(world["data"]) / "corpus.jsonl", tmp_path / "b"),
    ):
        rc, stdout, err = run(capsys, "index", data, *flags, "--out", out)
        assert rc == 0 and "indexed" in stdout, err
    a, b = AdaptedIndex.load(tmp_path / "a"), AdaptedIndex.load(tmp_path / "b")
    assert a.doc_ids == b.doc_ids and len(a.doc_ids) == len(world["d"]["dids"])
    assert a.search(world["d"]["Q"][:3], 5) == b.search(world["d"]["Q"][:3], 5)
    (tmp_path / "empty").mkdir()
    assert_refused(
        run(capsys, "index", world["data"], *flags[:2], "--embeddings", tmp_path / "empty", "--out", out),
        "no corpus.npz or corpus.parquet",
    )


def test_index_embeddings_refuses_vectors_transform_adapted(world, tmp_path, capsys):
    """transform refuses vectors it wrote (adapted twice, they rank worse in silence); index
    --embeddings indexed them, the Parquet's record of the adapter that made them unread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    npy, adapted = tmp_path / "base.npy", tmp_path / "adapted.parquet"
    np.save(npy, world["d"]["D"])
    assert run(capsys, "transform", npy, "--adapter", world["adapter"], "--out", adapted, "--quiet")[0] == 0
    # as --embeddings takes them: the corpus's ids, the vectors as 'embedding', the record kept
    table = pa.table({"id": world["d"]["dids"], "embedding": pq.read_table(adapted).column("vector")})
    (tmp_path / "vec").mkdir()
    corpus = tmp_path / "vec" / "corpus.parquet"
    pq.write_table(table.replace_schema_metadata(pq.read_schema(adapted).metadata), corpus)
    flags = ["--adapter", world["adapter"], "--embeddings", tmp_path / "vec", "--model", MODEL, "--quiet"]
    assert_refused(
        run(capsys, "index", world["data"], *flags, "--out", tmp_path / "idx"),
        f"{corpus}: these vectors are already adapted (by adapter:",
        "give --embeddings base vectors only, e.g. those these were made from",
    )
    assert not (tmp_path / "idx").exists()
    # fit and evaluate read --embeddings as index does: trained or scored on them, in silence too
    queries = next(Path(world["vec"]).glob("queries.*"))
    shutil.copy(queries, tmp_path / "vec" / queries.name)
    for command in (
        ["evaluate", world["data"], *flags],
        ["fit", world["data"], *flags[2:], "--out", tmp_path / "f"],
    ):
        assert_refused(
            run(capsys, *command),
            f"{corpus}: these vectors are already adapted (by adapter:",
            "give --embeddings base vectors only",
        )


def test_index_warns_once_of_an_adapter_without_its_encoder_naming_its_folder(
    world, tmp_path, capsys, caplog
):
    """It said so three times: on loading the adapter, on checking the vectors against it (naming no
    folder), and on saving the index's copy (naming the index's hidden staging folder)."""
    make_adapter().save(tmp_path / "saved")
    adapter = Path(shutil.copytree(tmp_path / "saved", tmp_path / "adapter"))  # a folder not warned of yet
    caplog.clear()
    flags = ["--adapter", adapter, "--embeddings", world["vec"], "--model", MODEL, "--quiet"]
    with caplog.at_level("WARNING"):
        rc, _, err = run(capsys, "index", world["data"], *flags, "--out", tmp_path / "idx")
    assert rc == 0, err
    assert [r.getMessage() for r in caplog.records] == [
        f"search-adaptor: warning: {adapter}: this adapter does not record the encoder it was trained on, so "
        "it cannot refuse vectors of another model; refit with encoder= to record it"
    ]


def test_a_family_the_flags_cannot_train_is_refused_before_anything_is_embedded(
    world, tmp_path, capsys, monkeypatch
):
    """The refusal came from run_fit, after the corpus was embedded (and, through an API, paid for)."""
    fake = CountingEncoder(dim=16, batch_size=50)
    monkeypatch.setattr(registry, "make_encoder", lambda *a, **k: fake)
    fit = ["fit", world["data"], "--out", tmp_path / "out", "--cache", tmp_path / "cache", "--quiet"]
    assert_refused(run(capsys, *fit, "--family", "cross"), "--family cross maps the queries of another model")
    assert_refused(run(capsys, *fit, "--unsupervised", "--family", "linear"), "--unsupervised trains family")
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_writing_over_an_earlier_output_never_deletes_a_file_of_the_users(world, index_dir, tmp_path, capsys):
    """``fit``'s adapter/, an index and an ONNX export are replaced whole when written again: a note
    a user kept inside one was deleted; now the command refuses before any work, naming it."""
    from search_adaptor.index import AdaptedIndex

    out = tmp_path / "run"
    (out / "adapter").mkdir(parents=True)
    (out / "report.json").write_text("{}")
    (out / "adapter" / "NOTES.md").write_text("mine")
    result = fit(capsys, world["data"], world["vec"], out)
    assert_refused(result, "NOTES.md: not part of an adapter folder", "move it out of the folder")
    assert (out / "adapter" / "NOTES.md").read_text() == "mine" and (out / "report.json").exists()

    index = Path(shutil.copytree(index_dir, tmp_path / "idx"))
    (index / "NOTES.md").write_text("mine")
    refused = run(capsys, "index", world["data"], "--adapter", world["adapter"], "--out", index)
    assert_refused(refused, "NOTES.md: not part of an index", f"saving over {index} would delete it")
    with pytest.raises(FileExistsError, match=r"NOTES\.md: not part of an index"):
        AdaptedIndex.load(index).save(index)
    assert (index / "NOTES.md").read_text() == "mine"

    if find_spec("onnx") is not None:
        export = tmp_path / "export"
        args = ["export", world["adapter"], "--out", export, "--format", "onnx"]
        assert run(capsys, *args)[0] == 0
        (export / "NOTES.md").write_text("mine")
        assert_refused(run(capsys, *args), "NOTES.md: not part of an ONNX export")
        assert (export / "NOTES.md").read_text() == "mine"
