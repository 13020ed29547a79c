"""What ``transform`` refuses, and how it says so: vectors it already adapted (in any of its outputs,
or one file of them), an ``--out`` that would destroy the input or a file of the user's, damaged
records, and inputs or flags named wrongly; a folder of ``.npy`` files; ``--ray-address`` checks that
need no cluster, and the unwrapping of a Ray task's error.

Fast and offline: random base vectors and an adapter with random weights.
"""

from __future__ import annotations

import json
import socket
import time
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from search_adaptor.cli import main
from search_adaptor.data import DataError
from search_adaptor.model import CompatibilityError
from search_adaptor.pipeline import CONNECT_TIMEOUT_S, embed_and_adapt, ray_session, transform_vectors
from search_adaptor.vectors import MARKER, SHARDS_MANIFEST, iter_vectors, written_by
from test_index import FAKE, FAKE_INFO, make_adapter
from test_pipeline import read_all, write_corpus

pytestmark = pytest.mark.skipif(find_spec("pyarrow") is None, reason="needs pyarrow (the parquet extra)")


@pytest.fixture
def base(tmp_path: Path) -> tuple[np.ndarray, Path]:
    X = np.random.default_rng(2).normal(size=(40, 16)).astype(np.float32)
    np.save(tmp_path / "base.npy", X)
    return X, tmp_path / "base.npy"


def cli(capsys, *argv: object) -> tuple[int, str]:
    """``search-adaptor`` with ``argv``: its status and its stderr, which must be one line on failure."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    if rc:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("search-adaptor: error: "), err
    return rc, err


# -- adapted vectors are refused, whichever output of transform or index they come from ---------------
@pytest.mark.parametrize("out", ["once.npy", "once.parquet", "shards"])
def test_every_output_is_marked_and_refused_as_input(base, tmp_path, out):
    _, src = base
    adapter = make_adapter(16)
    transform_vectors(src, adapter, tmp_path / out)
    record = written_by(tmp_path / out)
    assert record["adapter"] == adapter.fingerprint_ and record["library"] == "search-adaptor"
    inputs = [tmp_path / out, *sorted((tmp_path / out).glob("part-*.parquet"))]  # a shard alone too
    for adapted in inputs:
        with pytest.raises(
            ValueError, match=rf"{adapted.name}: these vectors are already adapted \(by adapter:"
        ):
            transform_vectors(adapted, adapter, tmp_path / "twice.parquet")
    assert not (tmp_path / "twice.parquet").exists()


def test_parquet_outputs_carry_the_record_in_their_schema(base, tmp_path):
    import pyarrow.parquet as pq

    _, src = base
    adapter = make_adapter(16)
    transform_vectors(src, adapter, tmp_path / "one.parquet")
    transform_vectors(src, adapter, tmp_path / "shards", rows=16)
    for file in [tmp_path / "one.parquet", *sorted((tmp_path / "shards").glob("*.parquet"))]:
        recorded = json.loads(pq.read_schema(file).metadata[MARKER])
        assert recorded["adapter"] == adapter.fingerprint_ and recorded["source"] == str(src)


def test_a_shard_of_an_index_is_refused(tmp_path):
    write_corpus(tmp_path / "data", 20)
    adapter = make_adapter(16, info=FAKE_INFO)
    embed_and_adapt(tmp_path / "data", FAKE, adapter, tmp_path / "vectors", rows=8, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"part-00001.parquet: these vectors are already adapted"):
        transform_vectors(tmp_path / "vectors" / "part-00001.parquet", adapter, tmp_path / "t.npy")


def test_out_may_not_be_or_overlap_the_input(base, tmp_path):
    X, src = base
    adapter = make_adapter(16)
    same = [src, tmp_path / "." / "base.npy"]
    (tmp_path / "link.npy").symlink_to(src)
    (tmp_path / "hard.npy").hardlink_to(src)
    for out in [*same, tmp_path / "link.npy", tmp_path / "hard.npy"]:
        with pytest.raises(ValueError, match=r"--out .*: overlaps the input .*base.npy; write the adapted"):
            transform_vectors(src, adapter, out)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", X)
    for out in ("in", "in/adapted.npy", "in/shards"):  # the folder read, or a file or folder inside it
        with pytest.raises(ValueError, match="overlaps the input"):
            transform_vectors(tmp_path / "in", adapter, tmp_path / out)
    assert np.array_equal(np.load(src), X) and sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "a.npy"
    ]


def test_an_existing_file_is_replaced_only_when_transform_wrote_it(base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, src = base
    adapter = make_adapter(16)
    (tmp_path / "notes.npy").write_text("my notes")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "mine.parquet")
    for name in ("notes.npy", "mine.parquet"):
        with pytest.raises(FileExistsError, match=rf"{name}: exists and was not written by search-adaptor"):
            transform_vectors(src, adapter, tmp_path / name)
    assert (tmp_path / "notes.npy").read_text() == "my notes"
    assert pq.read_table(tmp_path / "mine.parquet").column_names == ["x"]
    for name in ("out.npy", "out.parquet"):  # a rerun replaces its own output
        transform_vectors(src, adapter, tmp_path / name)
        transform_vectors(src, make_adapter(16, seed=3), tmp_path / name)
        np.testing.assert_allclose(
            read_all(tmp_path / name)[1], make_adapter(16, seed=3).transform_corpus(X), rtol=1e-6, atol=1e-7
        )


def test_a_npy_written_over_by_the_user_or_a_record_of_theirs_is_not_replaced(base, tmp_path):
    """An earlier output the user wrote over with ``np.save`` (its record left beside it), and a
    ``.npy.json`` of the user's beside a new name, were replaced in silence; a matrix left by a job
    killed between writing the record and the matrix is still the tool's to replace."""
    from search_adaptor.vectors import npy_record

    X, src = base
    adapter = make_adapter(16)
    out = tmp_path / "r.npy"
    transform_vectors(src, adapter, out)
    mine = np.arange(14, dtype=np.float32).reshape(7, 2)
    np.save(out, mine)
    with pytest.raises(FileExistsError, match=r"r\.npy: is not the matrix search-adaptor wrote there"):
        transform_vectors(src, adapter, out)
    assert np.array_equal(np.load(out), mine)

    sidecar = npy_record(tmp_path / "y.npy")
    sidecar.write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match=r"y\.npy\.json: exists and was not written by search-adaptor"):
        transform_vectors(src, adapter, tmp_path / "y.npy")
    assert sidecar.read_text() == '{"mine": 1}' and not (tmp_path / "y.npy").exists()

    killed = tmp_path / "k.npy"  # the record of the second run written, its matrix not yet
    transform_vectors(src, adapter, killed)
    first = killed.read_bytes()
    transform_vectors(src, make_adapter(16, seed=3), killed)
    killed.write_bytes(first)
    transform_vectors(src, make_adapter(16, seed=4), killed)
    np.testing.assert_allclose(
        np.load(killed), make_adapter(16, seed=4).transform_corpus(X), rtol=1e-6, atol=1e-7
    )


def test_npy_output_says_it_drops_ids_and_suffixes_are_read_in_any_case(base, tmp_path, capsys):
    """Parquet ids written to a .npy were lost in silence; ``--out UP.NPY`` wrote a shard folder and
    an input ``C.NPY`` was "unsupported"; a Fortran-ordered or integer .npy was refused without a fix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, src = base
    make_adapter(16).save(tmp_path / "a")
    args = ("transform", "--adapter", tmp_path / "a", "--quiet", "--out")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(X[:5].ravel()), 16)
    pq.write_table(pa.table({"id": [f"doc{i}" for i in range(5)], "vector": vectors}), tmp_path / "v.parquet")
    rc, err = cli(capsys, *args, tmp_path / "v.npy", tmp_path / "v.parquet")
    assert rc == 0 and err.count("warning:") == 1
    assert "v.npy: a .npy keeps no ids, so the input's (the first is 'doc0') are dropped" in err
    assert cli(capsys, *args, tmp_path / "plain.npy", src) == (0, "")  # row numbers in, row numbers out
    assert cli(capsys, *args, tmp_path / "UP.NPY", src)[0] == 0
    assert (tmp_path / "UP.NPY").is_file() and np.load(tmp_path / "UP.NPY").shape == X.shape
    (tmp_path / "C.NPY").write_bytes(src.read_bytes())
    assert cli(capsys, *args, tmp_path / "c.parquet", tmp_path / "C.NPY")[0] == 0
    np.save(tmp_path / "f.npy", np.asfortranarray(X))
    rc, err = cli(capsys, *args, tmp_path / "o.npy", tmp_path / "f.npy")
    assert rc == 2 and "Fortran order; save it with numpy.save(path, numpy.ascontiguousarray(" in err


def test_a_file_of_another_width_in_a_folder_is_named(base, tmp_path, capsys):
    """The refusal named the folder ("vin: this adapter expects 16-d embeddings, got 8-d"), not
    the one file of another width among its files."""
    X, _ = base
    make_adapter(16).save(tmp_path / "a")
    (tmp_path / "vin").mkdir()
    np.save(tmp_path / "vin" / "a.npy", X[:10])
    np.save(tmp_path / "vin" / "c.npy", X[:5, :8])
    rc, err = cli(capsys, "transform", tmp_path / "vin", "--adapter", tmp_path / "a", "--out", tmp_path / "o")
    vin = tmp_path / "vin"
    assert rc == 2
    assert f"{vin / 'c.npy'} (rows 0-4): 8-d vectors, but {vin / 'a.npy'} (rows 0-9) holds 16-d" in err
    assert not (tmp_path / "o").exists()


def test_a_parquet_file_whose_row_groups_differ_in_width_is_named(tmp_path):
    """A file whose vectors change width past the first 8,192 rows (a reader's batch) met numpy's
    concatenate error ("all the input array dimensions except for the concatenation axis must match
    exactly ...") naming no file; within one batch the rows' widths are compared (named) already."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "v.parquet"
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32()))])) as out:
        for n, dim, first in ((8192, 16, 0), (2, 8, 8192)):
            out.write_table(
                pa.table(
                    {
                        "id": [str(first + i) for i in range(n)],
                        "vector": pa.array(list(rng.random((n, dim))), pa.list_(pa.float32())),
                    }
                )
            )
    with pytest.raises(DataError) as err:
        list(iter_vectors(path))
    assert str(err.value) == (
        f"{path} (rows 8192-8193): 8-d vectors, but {path} (rows 0-8191) holds 16-d ones; the vectors of a "
        "file, and the files of a folder, must be of one model and width"
    )


def test_an_id_column_that_holds_no_ids_is_refused(tmp_path, capsys):
    """``--id-column vector`` was taken: every id came out as the text of 16 floats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_adapter(16).save(tmp_path / "a")
    X = np.random.default_rng(2).normal(size=(4, 16)).astype(np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 16)
    ids = {"s": pa.array(["a", "b", "c", "d"]), "n": pa.array([1, 2, 3, 4]), "f": pa.array([0.5] * 4)}
    pq.write_table(pa.table({**ids, "vector": vectors}), tmp_path / "v.parquet")
    args = ("transform", tmp_path / "v.parquet", "--adapter", tmp_path / "a", "--quiet", "--id-column")
    for column, message in (("vector", "fixed_size_list<element: float>[16]"), ("f", "double")):
        rc, err = cli(capsys, *args, column, "--out", tmp_path / f"{column}.parquet")
        assert rc == 2 and f"column {column!r} is {message}, not strings or integers" in err
    for column in ("s", "n"):
        assert cli(capsys, *args, column, "--out", tmp_path / f"{column}.parquet")[0] == 0
    assert read_all(tmp_path / "n.parquet")[0] == ["1", "2", "3", "4"]


def test_a_shard_folder_holding_a_file_of_the_users_is_refused_naming_it(base, tmp_path, capsys):
    """Re-running over an earlier shard folder, or over a folder that merely holds a ``_manifest.json``,
    must not delete what else is there (it did: the folder was replaced whole)."""
    _, src = base
    make_adapter(16).save(tmp_path / "a")
    args = ("transform", src, "--adapter", tmp_path / "a", "--quiet", "--out")
    assert cli(capsys, *args, tmp_path / "shards", "--rows", 16)[0] == 0
    (tmp_path / "shards" / "NOTES.txt").write_text("important notes")
    rc, err = cli(capsys, *args, tmp_path / "shards")
    assert rc == 2 and f"{tmp_path / 'shards' / 'NOTES.txt'}: not part of a shard folder" in err
    assert "move it out of the folder" in err
    assert (tmp_path / "shards" / "NOTES.txt").read_text() == "important notes"
    (tmp_path / "shards" / "NOTES.txt").unlink()  # its own shards and manifest alone: replaced
    assert cli(capsys, *args, tmp_path / "shards")[0] == 0
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [SHARDS_MANIFEST, "part-00000.parquet"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / SHARDS_MANIFEST).write_text('{"mine": 1}')
    (tmp_path / "mine" / "precious.csv").write_text("data")
    rc, err = cli(capsys, *args, tmp_path / "mine")
    assert rc == 2 and f"{tmp_path / 'mine' / 'precious.csv'}: not part of a shard folder" in err
    assert (tmp_path / "mine" / "precious.csv").read_text() == "data"


def test_inputs_are_cast_by_the_adapters_rule_after_their_width_is_checked(tmp_path, capsys):
    """transform cast to float32 before checking: a finite float64 row beyond float32's range was
    refused as NaN or inf (the Python API adapts it), an (n, 0) matrix was an internal error and
    empty Parquet vectors were 'all zeros'; now as ``transform_corpus``, and 0-d named as such."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    adapter = make_adapter(16)
    adapter.save(tmp_path / "a")
    X = np.random.default_rng(5).normal(size=(5, 16))
    X[2] *= 1e300  # finite float64, beyond float32's range
    np.save(tmp_path / "big.npy", X)
    pq.write_table(pa.table({"id": list("abcde"), "vector": list(X)}), tmp_path / "big.parquet")
    for name in ("big.npy", "big.parquet"):
        out = tmp_path / f"out-{name}"  # (ids kept: a .npy of Parquet input warns that it drops them)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's overflow warning leaked
            transform_vectors(tmp_path / name, adapter, out)
        np.testing.assert_array_equal(read_all(out)[1], adapter.transform_corpus(X))
    np.save(tmp_path / "dim0.npy", np.zeros((5, 0), np.float32))
    no_values = pa.table({"id": ["a", "b"], "vector": pa.array([[], []], type=pa.list_(pa.float32()))})
    pq.write_table(no_values, tmp_path / "dim0.parquet")
    for name in ("dim0.npy", "dim0.parquet"):
        args = ("transform", tmp_path / name, "--adapter", tmp_path / "a", "--out", tmp_path / "o.npy")
        rc, err = cli(capsys, *args)
        assert rc == 2 and f"{tmp_path / name}: this adapter expects 16-d embeddings" in err
        assert "got 0-d" in err


def test_cli_refuses_to_adapt_in_place(base, tmp_path, capsys):
    X, src = base
    make_adapter(16).save(tmp_path / "a")
    rc, err = cli(capsys, "transform", src, "--adapter", tmp_path / "a", "--out", src)
    assert rc == 2 and "overlaps the input" in err
    assert np.array_equal(np.load(src), X)


# -- a folder of .npy files ----------------------------------------------------------------------------
def test_a_folder_of_npy_files_reads_as_one_matrix(tmp_path):
    X = np.random.default_rng(3).normal(size=(30, 16)).astype(np.float32)
    (tmp_path / "in").mkdir()
    for name, part in (("b.npy", X[12:]), ("a.npy", X[:12])):  # read in file-name order
        np.save(tmp_path / "in" / name, part)
    ids, Y = read_all(tmp_path / "in", rows=5)
    assert ids == [str(i) for i in range(30)] and np.array_equal(Y, X)  # rows numbered on across files
    adapter = make_adapter(16)
    transform_vectors(tmp_path / "in", adapter, tmp_path / "o.parquet", rows=7)
    ids, Y = read_all(tmp_path / "o.parquet")
    assert ids == [str(i) for i in range(30)]
    np.testing.assert_allclose(Y, adapter.transform_corpus(X), rtol=1e-6, atol=1e-7)


def test_a_folder_of_both_kinds_is_refused(base, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X, _ = base
    (tmp_path / "mix").mkdir()
    np.save(tmp_path / "mix" / "a.npy", X)
    pq.write_table(pa.table({"id": ["x"], "vector": [X[0].tolist()]}), tmp_path / "mix" / "b.parquet")
    with pytest.raises(
        DataError, match=r"mix: holds both .npy and .parquet files; give a folder of one kind"
    ):
        next(iter_vectors(tmp_path / "mix"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \*.parquet or \*.npy files in this folder"):
        transform_vectors(tmp_path / "empty", make_adapter(16), tmp_path / "o.npy")


# -- messages name the input and the flag -------------------------------------------------------------
def test_messages_name_the_input_file_and_the_flag(tmp_path):
    adapter = make_adapter(16)
    np.save(tmp_path / "wide.npy", np.ones((3, 24), dtype=np.float32))
    with pytest.raises(CompatibilityError, match=r"wide.npy: this adapter expects 16-d .*, got 24-d"):
        transform_vectors(tmp_path / "wide.npy", adapter, tmp_path / "o1.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), dtype=np.float32))
    with pytest.raises(DataError, match=r"empty.npy: no vectors in it; give at least one row"):
        transform_vectors(tmp_path / "empty.npy", adapter, tmp_path / "o2.npy")
    with pytest.raises(ValueError, match=r"^dim must be an output size between 1 and 16; got 500$"):
        transform_vectors(tmp_path / "wide.npy", adapter, tmp_path / "o3.npy", dim=500)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("o", "."))]


# -- a damaged record of a shard folder ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[\n", "not valid JSON (Expecting value at line 2, column 1)"),
        (
            b'{"adapter": "a',
            "not valid JSON (Unterminated string starting at line 1, column 13)",
        ),  # not "at at"
        (b'"text"\n', "expected a JSON object, got str"),
        ('{"adapter": 1}'.encode("utf-16"), "UTF-16 text, not UTF-8"),
    ],
)
def test_a_damaged_manifest_is_one_line_naming_it(base, tmp_path, capsys, content, says):
    _, src = base
    adapter = make_adapter(16)
    adapter.save(tmp_path / "a")
    transform_vectors(src, adapter, tmp_path / "shards")
    (tmp_path / "shards" / SHARDS_MANIFEST).write_bytes(content)
    rc, err = cli(
        capsys, "transform", tmp_path / "shards", "--adapter", tmp_path / "a", "--out", tmp_path / "o.npy"
    )
    assert rc == 2 and f"{tmp_path / 'shards' / SHARDS_MANIFEST}: {says}" in err
    assert "search-adaptor command that wrote it" in err


# -- --ray-address, before any cluster --------------------------------------------------------------
needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="needs ray[data] (the ray extra)")


@pytest.fixture
def no_session(monkeypatch):
    """Ray as if no cluster were connected yet, and a cluster start that fails the test if reached."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was reached"))
    return ray


def closed_port() -> int:
    """A port nothing listens at once its socket is closed."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


@pytest.fixture
def ray_record(tmp_path, monkeypatch):
    """Ray's record of the last cluster started, in a temp folder of this test's (not /tmp/ray), and
    no RAY_ADDRESS: write an address to it to make a crashed cluster's record."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


@needs_ray
def test_an_address_where_nothing_listens_is_refused_at_once(no_session):
    port = closed_port()
    for address in (f"127.0.0.1:{port}", f"localhost:{port}"):
        with pytest.raises(RuntimeError, match=rf"^--ray-address {address}: nothing answers at .*:{port} \("):
            ray_session(address)


@needs_ray
@pytest.mark.skipif(find_spec("grpc") is not None, reason="Ray Client (ray[client]) is installed")
def test_a_ray_client_address_without_ray_client_says_what_to_install(no_session):
    with pytest.raises(RuntimeError, match=r'^--ray-address ray://head:10001: .*pip install "ray\[client\]"'):
        ray_session("ray://head:10001")


@needs_ray
def test_auto_with_the_record_of_a_crashed_cluster_is_refused_at_once(no_session, ray_record):
    """Ray waited minutes on the dead GCS that the record of the last `ray start` names."""
    port = closed_port()
    ray_record.write_text(f"127.0.0.1:{port}\n")
    start = time.monotonic()
    with pytest.raises(
        RuntimeError, match=rf"^--ray-address auto: no Ray cluster answers at .*:{port} \("
    ) as caught:
        ray_session("auto")
    assert time.monotonic() - start < CONNECT_TIMEOUT_S + 5
    said = str(caught.value)
    assert f"({ray_record}: `ray stop` forgets a dead one); start one (`ray start --head`)" in said
    assert said.endswith("or leave --ray-address out to run a local Ray") and "\n" not in said


@needs_ray
def test_no_address_with_the_record_of_a_crashed_cluster_starts_a_local_ray(monkeypatch, ray_record):
    import ray

    addresses = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address, **_: addresses.append(address))
    ray_session()  # nothing recorded: Ray decides (a local Ray)
    ray_record.write_text(f"127.0.0.1:{closed_port()}\n")
    ray_session()
    assert addresses == [None, "local"]


@needs_ray
def test_a_dead_ray_address_variable_is_refused_naming_it(no_session, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    for address in ("auto", None):  # Ray takes RAY_ADDRESS for both
        with pytest.raises(
            RuntimeError, match=rf"^RAY_ADDRESS 127.0.0.1:{port}: nothing answers .*leave RAY_ADDRESS out"
        ):
            ray_session(address)


@needs_ray
def test_auto_without_a_cluster_names_our_flag(monkeypatch, ray_record):
    import ray

    def no_cluster(*a, **k):
        raise ConnectionError("Could not find any running Ray instance. ... setting `--address` flag")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(RuntimeError, match=r"^--ray-address auto: found no running Ray cluster") as caught:
        ray_session("auto")
    assert "`--address`" not in str(caught.value)


# -- a Ray task's error reaches the caller as the task raised it --------------------------------------
@needs_ray
def test_a_task_error_is_unwrapped_to_the_error_raised(capsys):
    from ray.exceptions import RayTaskError

    from search_adaptor.pipeline import _task_errors

    raised = DataError("x.parquet: the vector of id '3' contains NaN")
    raised.args = (  # what Ray Data does to the message of an error a task raises
        f"{raised.args[0]}\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).\n"
        "To change retry attempts, configure `ray.data.DataContext.get_current()` if transient.",
    )
    wrapped = RayTaskError(
        "MapBatches(adapt_batch)", "\x1b[36mTraceback ...\x1b[39m", raised
    ).as_instanceof_cause()
    with pytest.raises(DataError) as caught, _task_errors():
        raise wrapped
    assert str(caught.value) == "x.parquet: the vector of id '3' contains NaN"
    assert caught.value.__cause__ is wrapped  # --debug still shows Ray's traceback
