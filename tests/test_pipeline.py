"""Streaming corpus jobs: vector files in and out, both engines, and the index built from their shards."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from search_adaptor.cli import main
from search_adaptor.data import DataError, iter_corpus
from search_adaptor.index import AdaptedIndex
from search_adaptor.model import CompatibilityError, SearchAdaptor
from search_adaptor.pipeline import embed_and_adapt, transform_vectors
from search_adaptor.vectors import SHARDS_MANIFEST, VectorWriter, iter_vectors, npy_record
from test_index import FAKE, FAKE_INFO, make_adapter

pytestmark = pytest.mark.skipif(find_spec("pyarrow") is None, reason="needs pyarrow (the parquet extra)")


def read_all(path: Path, **kw) -> tuple[list[str], np.ndarray]:
    ids: list[str] = []
    chunks = []
    for i, v in iter_vectors(path, **kw):
        ids += i
        chunks.append(v)
    return ids, np.concatenate(chunks)


@pytest.fixture
def base(tmp_path):
    X = np.random.default_rng(1).normal(size=(1000, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    return X, tmp_path / "x.npy"


@pytest.mark.parametrize("rows", [1, 77, 1000, 5000])
def test_npy_streams_in_and_out_in_any_chunk_size(base, tmp_path, rows):
    X, src = base
    with VectorWriter(tmp_path / "copy.npy") as w:
        for ids, v in iter_vectors(src, rows=rows):
            assert len(v) <= rows
            w.write(ids, v)
    assert np.array_equal(np.load(tmp_path / "copy.npy"), X)  # a valid .npy numpy itself reads
    ids, Y = read_all(tmp_path / "copy.npy", rows=rows)
    assert ids == [str(i) for i in range(1000)] and np.array_equal(Y, X)


@pytest.mark.parametrize("out", ["y.npy", "y.parquet", "shards"])
def test_local_transform_equals_the_adapter_on_every_row(base, tmp_path, out):
    X, src = base
    adapter = make_adapter(16)
    stats = transform_vectors(src, adapter, tmp_path / out, rows=300)
    assert (stats.rows, stats.dim, stats.engine) == (1000, 16, "local")
    ids, Y = read_all(tmp_path / out)
    assert ids == [str(i) for i in range(1000)]
    np.testing.assert_array_equal(Y, adapter.transform_corpus(X))
    if out == "shards":
        manifest = json.loads((tmp_path / out / SHARDS_MANIFEST).read_text())
        assert manifest["rows"] == 1000 and manifest["dim"] == 16 and manifest["adapter"]
        assert len(list((tmp_path / out).glob("part-*.parquet"))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_parquet_input_keeps_its_ids_and_named_columns(base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, _ = base
    ids = [f"doc-{i}" for i in range(len(X))]
    table = pa.table({"doc": ids, "emb": pa.array(list(X.astype(np.float64)))})  # list<double> works too
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=128)
    adapter = make_adapter(16)
    transform_vectors(
        tmp_path / "in.parquet", adapter, tmp_path / "out.parquet", id_column="doc", vector_column="emb"
    )
    got_ids, Y = read_all(tmp_path / "out.parquet")
    assert got_ids == ids
    np.testing.assert_allclose(Y, adapter.transform_corpus(X), rtol=1e-6, atol=1e-7)
    with pytest.raises(
        DataError, match=r"in.parquet.*no column 'vector' \(columns: doc, emb\).*--vector-column"
    ):
        transform_vectors(tmp_path / "in.parquet", adapter, tmp_path / "o2.parquet", id_column="doc")


def test_integer_vectors_are_read_alike_from_npy_and_parquet(tmp_path):
    """int8-quantised embeddings: Parquet and ``--embeddings`` read integers as numbers, a ``.npy``
    of them was refused, asking for the float32 cast that changes nothing about their directions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Q = np.random.default_rng(2).integers(-128, 128, size=(50, 16)).astype(np.int8)
    np.save(tmp_path / "q.npy", Q)
    pq.write_table(pa.table({"id": [str(i) for i in range(50)], "vector": list(Q)}), tmp_path / "q.parquet")
    adapter = make_adapter(16)
    expected = adapter.transform_corpus(Q.astype(np.float32))
    for src in ("q.npy", "q.parquet"):
        transform_vectors(tmp_path / src, adapter, tmp_path / f"out-{src}.npy")
        np.testing.assert_array_equal(np.load(tmp_path / f"out-{src}.npy"), expected)


def test_a_parquet_file_of_one_large_row_group_is_read_in_bounded_memory(tmp_path):
    """pyarrow's defaults write one row group of up to 1Mi rows: it was read whole (34 MB of Arrow
    memory for 26 MB of vectors here), so memory grew with the file, not the chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, dim = 100_000, 64
    X = np.random.default_rng(4).normal(size=(n, dim)).astype(np.float32)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), dim)
    table = pa.table({"id": pa.array([str(i) for i in range(n)]), "vector": flat})
    pq.write_table(table, tmp_path / "one.parquet")  # pyarrow's default row group: the whole file
    assert pq.ParquetFile(tmp_path / "one.parquet").metadata.num_row_groups == 1
    script = (  # a fresh process: the Arrow pool's peak is that of the read alone
        "import sys, pyarrow as pa\n"
        "from search_adaptor.vectors import iter_vectors\n"
        "rows = sum(len(ids) for ids, _ in iter_vectors(sys.argv[1], rows=1024))\n"
        "print(rows, pa.default_memory_pool().max_memory())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "one.parquet")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert int(out[0]) == n and int(out[1]) < X.nbytes / 2, out  # ~9 MB: a read buffer and a batch


def test_bad_inputs_fail_with_one_line_and_leave_nothing_behind(base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, src = base
    adapter = make_adapter(16)
    with pytest.raises(CompatibilityError, match="expects 8-d embeddings"):
        transform_vectors(src, make_adapter(8), tmp_path / "a.npy")
    bad = X.copy()
    bad[700, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"nan.npy: the vector of id '700' contains NaN"):
        transform_vectors(tmp_path / "nan.npy", adapter, tmp_path / "b.npy", rows=256)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut.npy: file ends before row"):
        transform_vectors(tmp_path / "cut.npy", adapter, tmp_path / "c.npy")
    np.save(tmp_path / "complex.npy", np.ones((3, 16), dtype=np.complex64))
    with pytest.raises(DataError, match="expected a C-ordered 2-D numeric matrix"):
        transform_vectors(tmp_path / "complex.npy", adapter, tmp_path / "d.npy")
    ragged = pa.table({"id": ["a", "b"], "vector": [[0.1] * 16, [0.1] * 15]})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match="row 1 of column 'vector' has 15 values, row 0 has 16"):
        transform_vectors(tmp_path / "ragged.parquet", adapter, tmp_path / "e.parquet")
    holey = pa.table({"id": ["a", "b"], "vector": [[0.1] * 16, [0.1] * 15 + [None]]})
    pq.write_table(holey, tmp_path / "holey.parquet")
    with pytest.raises(DataError, match=r"holey.parquet: the vector of id 'b' contains NaN, inf or a null"):
        transform_vectors(tmp_path / "holey.parquet", adapter, tmp_path / "e2.parquet")
    (tmp_path / "v.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported vector file"):
        transform_vectors(tmp_path / "v.csv", adapter, tmp_path / "f.npy")
    bad = X.copy()
    bad[300] = 0.0  # no direction: the adapter would give it (and every other zero row) one vector
    np.save(tmp_path / "zero.npy", bad)
    with pytest.raises(DataError, match=r"zero.npy: the vector of id '300' is all zeros"):
        transform_vectors(tmp_path / "zero.npy", adapter, tmp_path / "g.npy")
    no_id = pa.table({"id": ["a", None], "vector": [[0.1] * 16, [0.2] * 16]})
    pq.write_table(no_id, tmp_path / "no_id.parquet")
    with pytest.raises(DataError, match="row 1 of column 'id' is null; every row needs an id"):
        transform_vectors(tmp_path / "no_id.parquet", adapter, tmp_path / "h.parquet")
    for out in ("x.npy/a.npy", "x.npy/shards"):  # a file where a folder of the output must be
        with pytest.raises(FileExistsError, match=r"x\.npy is a file, not a folder; choose another place"):
            transform_vectors(src, adapter, tmp_path / out)
    for name in ("a.npy", "b.npy", "c.npy", "d.npy", "e.parquet", "g.npy", "h.parquet"):
        assert not (tmp_path / name).exists()  # a failed job publishes nothing
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_is_atomic_and_never_replaces_unrelated_folders(base, tmp_path):
    X, src = base
    adapter = make_adapter(16)
    transform_vectors(src, adapter, tmp_path / "out", rows=400)
    transform_vectors(src, make_adapter(16, seed=5), tmp_path / "out", rows=400)  # a rerun replaces it
    _, Y = read_all(tmp_path / "out")
    np.testing.assert_array_equal(Y, make_adapter(16, seed=5).transform_corpus(X))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a shard folder"):
        transform_vectors(src, adapter, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="already adapted"):  # adapting twice would silently hurt search
        transform_vectors(tmp_path / "out", adapter, tmp_path / "twice")


def write_corpus(folder: Path, n: int, varied: bool = False) -> list[str]:
    """A BEIR corpus of ``n`` documents; ``varied``: as real exports are, a ``metadata`` field of
    another shape on each line and integer ids on some (every engine must read it as written)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["fever", "aspirin", "bones", "vitamin", "paris", "france", "river", "capital", "heart", "sleep"]
    lines, ids = [], []
    for i in range(n):
        text = " ".join(words[(i * k) % len(words)] for k in range(1, 6)) + f" item {i}"
        record = {"_id": i if varied and i % 3 == 0 else f"d{i}", "title": f"title {i % 7}", "text": text}
        if varied:
            record["metadata"] = [{}, {"url": f"http://x/{i}"}, {"url": i}, "none"][i % 4]
        lines.append(json.dumps(record))
        ids.append(str(record["_id"]))
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return ids


def test_local_index_from_shards_equals_the_in_memory_index(tmp_path, synthetic):
    ids = write_corpus(tmp_path / "data", 50)
    adapter = make_adapter(16, info=FAKE_INFO)
    stats = embed_and_adapt(
        tmp_path / "data", FAKE, adapter, tmp_path / "v", rows=16, cache_dir=tmp_path / "c"
    )
    assert (stats.rows, stats.shards, stats.texts_embedded) == (50, 4, 50)
    again = embed_and_adapt(
        tmp_path / "data", FAKE, adapter, tmp_path / "v2", rows=16, cache_dir=tmp_path / "c"
    )
    assert again.texts_embedded == 0  # the store already has every text
    index = AdaptedIndex.from_shards(adapter, tmp_path / "v", FAKE_INFO)
    assert index.doc_ids == ids
    texts = [t for _, chunk in iter_corpus(tmp_path / "data" / "corpus.jsonl", 1000) for t in chunk]
    reference = AdaptedIndex.build(adapter, FAKE, ids, texts, cache_dir=tmp_path / "c")
    queries = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    assert index.search(queries, k=5) == reference.search(queries, k=5)
    saved = AdaptedIndex.load(index.save(tmp_path / "idx", vectors=tmp_path / "v"))
    assert saved.search(queries, k=5) == reference.search(queries, k=5)
    assert read_all(tmp_path / "idx" / "vectors")[0] == ids and not (tmp_path / "v").exists()


def test_cli_transform_refuses_an_output_inside_an_index(base, tmp_path, capsys):
    """`transform --out INDEX/vectors` replaced an index's shards (what a vector database is loaded
    with) by other vectors, and nothing noticed."""
    _, src = base
    adapter = make_adapter(16, info=FAKE_INFO)
    adapter.save(tmp_path / "a")
    transform_vectors(src, adapter, tmp_path / "v")
    AdaptedIndex.from_shards(adapter, tmp_path / "v", FAKE_INFO).save(
        tmp_path / "idx", vectors=tmp_path / "v"
    )
    before = read_all(tmp_path / "idx" / "vectors")
    for out in ("idx/vectors", "idx/vectors/more", "idx/other.npy"):
        cli = ["transform", str(src), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / out)]
        assert main(cli) == 2
        assert f"inside the index {tmp_path / 'idx'}, whose vectors it would" in capsys.readouterr().err
    after = read_all(tmp_path / "idx" / "vectors")
    assert after[0] == before[0] and np.array_equal(after[1], before[1])


def test_shards_record_the_fitted_mode_not_one_set_after_the_fit(base, tmp_path):
    """Both jobs' metadata name the mode the vectors were adapted with: set_params after fit (for
    the next fit) changed what they said, not what computed the vectors."""
    _, src = base
    adapter = make_adapter(16, info=FAKE_INFO, mode="shared")
    adapter.set_params(mode="query_only")
    transform_vectors(src, adapter, tmp_path / "t", rows=500)
    write_corpus(tmp_path / "data", 5)
    embed_and_adapt(tmp_path / "data", FAKE, adapter, tmp_path / "e", cache_dir=tmp_path / "c")
    for out in ("t", "e"):
        assert json.loads((tmp_path / out / SHARDS_MANIFEST).read_text())["adapter_mode"] == "shared", out


def test_cli_transform_prints_what_it_did(base, tmp_path, capsys):
    _, src = base
    make_adapter(16).save(tmp_path / "a")
    assert (
        main(["transform", str(src), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "o.npy")]) == 0
    )
    out = capsys.readouterr().out
    assert "1000 vectors (16-d) adapted with the local engine" in out and "Only normalised" not in out
    assert np.load(tmp_path / "o.npy").shape == (1000, 16)
    assert (
        main(["transform", str(tmp_path / "none.npy"), "--adapter", str(tmp_path / "a"), "--out", "x"]) == 2
    )
    assert "none.npy: file not found" in capsys.readouterr().err
    assert main(["transform", str(src), "--adapter", str(tmp_path / "a"), "--out", "x", "--rows", "0"]) == 2
    assert "--rows: must be a positive int, got 0" in capsys.readouterr().err


def test_transform_queries_applies_the_query_side(base, tmp_path, capsys):
    """A query log's vectors: ``transform`` applied the document side only, which a query-only
    adapter leaves as it is (normalised), so its query side had no command-line path."""
    X, src = base
    adapter = make_adapter(16, mode="query_only")
    assert not np.allclose(adapter.transform_queries(X), adapter.transform_corpus(X))
    transform_vectors(src, adapter, tmp_path / "q.npy", kind="query")
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), adapter.transform_queries(X))
    assert json.loads(npy_record(tmp_path / "q.npy").read_text())["side"] == "queries"
    adapter.save(tmp_path / "a")
    cli = ["transform", str(src), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "c.npy")]
    assert main([*cli, "--queries"]) == 0
    assert "1000 query vectors (16-d) adapted with the local engine" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), adapter.transform_queries(X))
    transform_vectors(src, adapter, tmp_path / "shards", kind="query")  # not an index's documents
    with pytest.raises(ValueError, match=r"shards: query vectors \(transform --queries\); an index holds"):
        AdaptedIndex.from_shards(adapter, tmp_path / "shards", FAKE_INFO)


def test_transform_queries_of_a_cross_model_adapter_takes_the_query_models_width(tmp_path):
    """A cross-model adapter's query vectors (another model's, another width) were refused by
    ``transform`` with 'embed with the same model as at training time', which they were."""
    rng = np.random.default_rng(3)
    D, P = rng.normal(size=(60, 16)).astype(np.float32), rng.normal(size=(60, 8)).astype(np.float32)
    Qx = (P[:20] + 0.1 * rng.normal(size=(20, 8))).astype(np.float32)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(20)}
    params = {"mode": "query_only", "init": "lstsq", "loss": "infonce", "in_batch": True}
    cross = SearchAdaptor(**params, max_steps=2, eval_every=1, patience=1, batch_size=8).fit(
        Qx, D, qrels, list(qrels), [f"d{i}" for i in range(60)], pairs=(P, D)
    )
    np.save(tmp_path / "qx.npy", Qx)
    transform_vectors(tmp_path / "qx.npy", cross, tmp_path / "q.npy", kind="query")
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), cross.transform_queries(Qx))
    with pytest.raises(
        CompatibilityError, match=r"got 8-d; 8-d is its query model's .*`transform --queries`"
    ):
        transform_vectors(tmp_path / "qx.npy", cross, tmp_path / "d.npy")


@pytest.mark.parametrize("mode", ["query_only", "identity"])
def test_cli_transform_says_when_the_documents_are_only_normalised(base, tmp_path, capsys, mode):
    """A query-only adapter (or one that kept the identity) leaves documents where they were: the
    user who re-indexes its output is told the index they have serves it already."""
    _, src = base
    adapter = make_adapter(16, mode="shared" if mode == "identity" else mode)
    if mode == "identity":
        adapter.best_step_ = 0  # no trained checkpoint beat zero-shot
    adapter.save(tmp_path / "a")
    assert (
        main(["transform", str(src), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "o.npy")]) == 0
    )
    why = "is the identity (zero-shot won)" if mode == "identity" else "adapts queries only"
    assert f"Only normalised to unit length: this adapter {why}" in capsys.readouterr().out
    vectors = np.load(src)
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, atol=1e-6)


# -- Ray: a local cluster on loopback, started once for this module ---------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    if find_spec("ray") is None:
        pytest.skip("needs ray[data] (the ray extra)")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def test_ray_refuses_npy_input_before_starting_a_cluster(tmp_path, monkeypatch):
    """Starting Ray takes seconds (minutes on a cluster): input it cannot read is refused first."""
    import search_adaptor.pipeline as pipeline

    npy = tmp_path / "base.npy"
    np.save(npy, np.zeros((3, 16), dtype=np.float32))
    monkeypatch.setattr(pipeline, "ray_session", lambda *a: pytest.fail("a cluster was started"))
    with pytest.raises(DataError, match=r"base.npy: the ray engine reads Parquet; convert .npy input"):
        transform_vectors(npy, make_adapter(16), tmp_path / "out", engine="ray")


@pytest.mark.slow
def test_ray_transform_writes_the_same_rows_as_local(base, tmp_path, ray_cluster):
    _, src = base
    adapter = make_adapter(16)
    with VectorWriter(tmp_path / "in") as w:  # base vectors as Parquet shards: Ray reads Parquet
        for ids, v in iter_vectors(src, rows=250):
            w.write(ids, v)
    local = transform_vectors(tmp_path / "in", adapter, tmp_path / "local", rows=250)
    ray_stats = transform_vectors(tmp_path / "in", adapter, tmp_path / "ray", rows=250, engine="ray")
    assert (ray_stats.engine, ray_stats.rows, ray_stats.dim) == ("ray", local.rows, local.dim)
    ids_l, Y_l = read_all(tmp_path / "local")
    ids_r, Y_r = read_all(tmp_path / "ray")
    assert ids_r == ids_l and np.array_equal(Y_r, Y_l)
    assert json.loads((tmp_path / "ray" / SHARDS_MANIFEST).read_text())["rows"] == 1000
    queries = make_adapter(16, mode="query_only")  # --queries: the query side, by Ray's tasks too
    transform_vectors(tmp_path / "in", queries, tmp_path / "rq", rows=250, engine="ray", kind="query")
    X = read_all(tmp_path / "in")[1]
    assert np.array_equal(read_all(tmp_path / "rq")[1], queries.transform_queries(X))
    with pytest.raises(ValueError, match="ray engine writes a folder"):
        transform_vectors(tmp_path / "in", adapter, tmp_path / "r.npy", engine="ray")


@pytest.mark.slow
def test_ray_takes_files_that_type_their_ids_and_vectors_differently_as_local_does(tmp_path, ray_cluster):
    """Parquet files written by different jobs (integer ids here, string or dictionary ids there, float16
    fixed-size vectors) failed Ray's schema merge with Arrow's 'Unable to merge'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = np.random.default_rng(2).normal(size=(9, 16))
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table({"id": pa.array([1, 2, 3]), "vector": list(X[:3].astype(np.float32))}),
        tmp_path / "in/a.parquet",
    )
    pq.write_table(pa.table({"id": ["4", "5", "6"], "vector": list(X[3:6])}), tmp_path / "in/b.parquet")
    half = pa.FixedSizeListArray.from_arrays(pa.array(X[6:].astype(np.float16).ravel()), 16)
    pq.write_table(
        pa.table({"id": pa.array(["7", "8", "9"]).dictionary_encode(), "vector": half}),
        tmp_path / "in/c.parquet",
    )
    adapter = make_adapter(16)
    transform_vectors(tmp_path / "in", adapter, tmp_path / "local")
    transform_vectors(tmp_path / "in", adapter, tmp_path / "ray", engine="ray")
    ids_l, Y_l = read_all(tmp_path / "local")
    ids_r, Y_r = read_all(tmp_path / "ray")
    assert ids_r == ids_l == [str(i) for i in range(1, 10)] and np.array_equal(Y_r, Y_l)


@pytest.mark.slow
def test_ray_and_local_indexes_of_a_corpus_are_identical(tmp_path, ray_cluster, capsys):
    """End to end with the local model: the CLI's two engines give the same index and the same results."""
    from search_adaptor.encoders.local import SentenceTransformerEncoder

    ids = write_corpus(tmp_path / "data", 120, varied=True)  # Arrow's JSON reader refused it
    make_adapter(384, info=SentenceTransformerEncoder().info()).save(tmp_path / "a")
    common = ["--adapter", str(tmp_path / "a"), "--cache", str(tmp_path / "cache"), "--rows", "50", "--quiet"]
    assert main(["index", str(tmp_path / "data"), *common, "--out", str(tmp_path / "local")]) == 0
    assert "120 texts sent" in capsys.readouterr().out
    assert (
        main(["index", str(tmp_path / "data"), *common, "--out", str(tmp_path / "ray"), "--engine", "ray"])
        == 0
    )
    assert "(ray engine, flat, 384-d" in capsys.readouterr().out
    local, ray_index = AdaptedIndex.load(tmp_path / "local"), AdaptedIndex.load(tmp_path / "ray")
    assert local.doc_ids == ray_index.doc_ids == ids
    assert np.array_equal(
        read_all(tmp_path / "local" / "vectors")[1], read_all(tmp_path / "ray" / "vectors")[1]
    )
    queries = ["aspirin and fever", "the capital of france", "vitamin for bones"]
    assert local.search(queries, k=10) == ray_index.search(queries, k=10)


@pytest.mark.slow
def test_ray_workers_call_the_api_root_given_with_its_credentials(tmp_path, ray_cluster, capsys):
    """``--base-url`` (here with ``user:password@`` in it) reached only the driver: the workers
    made their encoder from what the adapter records, so a proxy or gateway was skipped (an
    openai root's vectors went to api.openai.com) and credentials in the URL were not sent."""
    import base64

    from fake_providers import FakeProvider
    from search_adaptor.encoders.registry import make_encoder

    ids = write_corpus(tmp_path / "data", 40, varied=True)
    with FakeProvider("openai-compatible", require_key=False) as fake:
        root = fake.url.replace("http://", "http://bob:pa%3Ass@")
        enc = make_encoder("openai-compatible", "m", base_url=root)
        make_adapter(fake.dim, info=enc.info()).save(tmp_path / "a")
        flags = ["--provider", "openai-compatible", "--model", "m", "--base-url", root, "--quiet"]
        common = ["index", str(tmp_path / "data"), "--adapter", str(tmp_path / "a"), *flags]
        rc = main(
            [*common, "--cache", str(tmp_path / "c1"), "--out", str(tmp_path / "ray"), "--engine", "ray"]
        )
        assert rc == 0, capsys.readouterr().err
        basic = "Basic " + base64.b64encode(b"bob:pa:ss").decode()
        sent = [c for c in fake.calls if c.status == 200]
        assert sent and all(c.headers.get("authorization") == basic for c in sent)
        assert sorted(t for c in sent for t in c.texts) == sorted(set(t for c in sent for t in c.texts))
        assert main([*common, "--cache", str(tmp_path / "c2"), "--out", str(tmp_path / "local")]) == 0
    assert AdaptedIndex.load(tmp_path / "ray").doc_ids == AdaptedIndex.load(tmp_path / "local").doc_ids == ids
    assert np.array_equal(
        read_all(tmp_path / "ray" / "vectors")[1], read_all(tmp_path / "local" / "vectors")[1]
    )
    for path in (tmp_path / "ray").rglob("*"):
        assert path.is_dir() or (b"pa%3Ass" not in path.read_bytes() and b"bob:" not in path.read_bytes())


@pytest.mark.slow
def test_ray_refuses_bad_input_with_the_local_engines_line(tmp_path, ray_cluster, capsys):
    """A task's error is the one the local engine raises, not Ray's wrapper (a traceback on one line,
    'internal error', exit 1); a repeated document id names its line, not a temporary folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from search_adaptor.encoders.local import SentenceTransformerEncoder

    X = np.random.default_rng(4).normal(size=(30, 16)).astype(np.float32)
    X[17, 2] = np.nan
    rows = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 16)
    pq.write_table(pa.table({"id": [f"v{i}" for i in range(30)], "vector": rows}), tmp_path / "nan.parquet")
    make_adapter(16).save(tmp_path / "a")
    lines = {}
    for engine in ("local", "ray"):
        argv = ["transform", tmp_path / "nan.parquet", "--adapter", tmp_path / "a", "--engine", engine]
        assert main([str(a) for a in [*argv, "--out", tmp_path / engine]]) == 2
        lines[engine] = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        lines["ray"]
        == lines["local"]
        == (
            f"search-adaptor: error: {tmp_path / 'nan.parquet'}: the vector of id 'v17' contains NaN, inf or "
            "a null; fix the embeddings first"
        )
    )
    write_corpus(tmp_path / "data", 10)
    with open(tmp_path / "data" / "corpus.jsonl", "a") as corpus:
        corpus.write(json.dumps({"_id": "d4", "text": "again"}) + "\n")
    encoder = SentenceTransformerEncoder()
    adapter = make_adapter(384, info=encoder.info())
    with pytest.raises(DataError, match=r'corpus.jsonl:11: duplicate "_id" "d4" \(already used') as caught:
        embed_and_adapt(tmp_path / "data", encoder, adapter, tmp_path / "v", engine="ray", rows=4)
    assert "Failed to apply" not in str(caught.value) and not (tmp_path / "v").exists()


@pytest.mark.slow
@pytest.mark.skipif(find_spec("ray") is None, reason="needs ray[data] (the ray extra)")
def test_ray_index_and_transform_with_quiet_print_no_ray_lines(tmp_path):
    """--quiet is errors only: Ray's start, Ray Data's plans and its warnings stay off the terminal. In
    a process of its own, as the CLI runs: transform starts its Ray itself, then index uses it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from search_adaptor.encoders.local import SentenceTransformerEncoder

    write_corpus(tmp_path / "data", 20)
    make_adapter(384, info=SentenceTransformerEncoder().info()).save(tmp_path / "a")
    vectors = np.random.default_rng(0).normal(size=(8, 384)).astype(np.float32)
    pq.write_table(
        pa.table({"id": [str(i) for i in range(8)], "vector": list(vectors)}), tmp_path / "v.parquet"
    )
    ray = ["--engine", "ray", "--quiet"]
    transform = [
        "transform",
        tmp_path / "v.parquet",
        "--adapter",
        tmp_path / "a",
        "--out",
        tmp_path / "t",
        *ray,
    ]
    index = ["index", tmp_path / "data", "--adapter", tmp_path / "a", "--out", tmp_path / "idx", *ray]
    index += ["--cache", tmp_path / "c"]
    runs = json.dumps([list(map(str, transform)), list(map(str, index))])
    code = f"import sys\nfrom search_adaptor.cli import main\nsys.exit(any(main(a) for a in {runs}))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # what the raylet pushes to a driver (a busy machine's "N PYTHON worker processes have been
    # started", each line prefixed "(raylet)") Ray prints to stdout whatever the level asked for
    raylet = re.compile(r"(\x1b\[\d+m)?\(raylet\)")
    lines = [line for line in done.stdout.splitlines() if not raylet.match(line)]
    assert len(lines) == 2 and lines[0].startswith("8 vectors (384-d) adapted with the ray engine")
    assert lines[1].startswith("20 documents indexed (ray engine")
    # Ray's Python lines ("<time>\tINFO worker.py:2038 -- Started a local Ray instance.") and its
    # core's ("[<time> W <pid> <tid>] file.cc:1: ..."); its core's error lines go to stderr whatever
    # the level asked for
    below_errors = re.compile(r"\t(DEBUG|INFO|WARNING) |^\[[^]]* [DIW] \d+ \d+\] ", re.M)
    assert not below_errors.search(done.stderr), done.stderr


def test_ray_refuses_a_missing_column_naming_the_file_before_starting(tmp_path, monkeypatch):
    """Checked on the driver, from each file's schema: Ray's own select_columns named a stub column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import search_adaptor.pipeline as pipeline

    (tmp_path / "in").mkdir()
    for name, column in (("a.parquet", "id"), ("b.parquet", "doc")):
        pq.write_table(pa.table({column: ["x"], "vector": [[0.5] * 16]}), tmp_path / "in" / name)
    monkeypatch.setattr(pipeline, "ray_session", lambda *a: pytest.fail("a cluster was started"))
    with pytest.raises(DataError, match=r"b.parquet: no column 'id' \(columns: doc, vector\); name the id"):
        transform_vectors(tmp_path / "in", make_adapter(16), tmp_path / "out", engine="ray")
