"""Faults around a command's outputs: a reader that closes the pipe early, a full disk, a folder that
cannot be written, a name too long, and a ``.npy`` whose record a killed job left out of step.

Fast and offline: fake commands, random vectors and an adapter with random weights.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from search_adaptor import cli
from search_adaptor.files import OutputError, Staged, check_output_folder, output_error
from search_adaptor.pipeline import transform_vectors
from search_adaptor.vectors import npy_record, written_by
from test_index import make_adapter


@pytest.fixture
def closed_pipe():
    """A text stream whose reader has gone (``| head -1``), as a command's stdout or stderr meets it."""
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", buffering=1) as stream:
        yield stream


def _fake_search(monkeypatch, body) -> None:
    monkeypatch.setattr(cli, "_cmd_search", body)  # main() finds its commands when it is called


def test_a_closed_stdout_ends_the_command_quietly_with_the_sigpipe_status(monkeypatch, closed_pipe, capsys):
    """``search IDX q | true`` ended "search-adaptor: error: [Errno 32] Broken pipe", exit 2."""

    def search(_args):
        for rank in range(10_000):
            print(rank)

    _fake_search(monkeypatch, search)
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    assert cli.main(["search", "idx", "q"]) == cli.SIGPIPE_STATUS
    assert capsys.readouterr().err == ""


def test_a_closed_stderr_does_not_stop_the_job(monkeypatch, closed_pipe, capsys):
    """``fit ... 2>&1 | head -1`` aborted the fit at its first progress line."""
    done = []

    def search(_args):
        for step in range(1000):
            cli._eprint(f"progress {step}")
        done.append(True)
        print("results")

    _fake_search(monkeypatch, search)
    monkeypatch.setattr(sys, "stderr", closed_pipe)
    assert cli.main(["search", "idx", "q"]) == 0
    assert done and capsys.readouterr().out == "results\n"


def test_a_full_disk_is_one_line_naming_the_output_not_its_staging_sibling(tmp_path):
    target = tmp_path / "out.bin"
    full = r"out\.bin: cannot be written \(no space left on the device\); free"
    with pytest.raises(OutputError, match=full), Staged(target) as staged:
        raise OSError(errno.ENOSPC, "No space left on device", str(staged.path))
    assert list(tmp_path.iterdir()) == []  # the staged file is gone too


def test_pyarrows_write_error_names_the_output():
    arrow = OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert "no space left" in str(output_error("out.parquet", arrow))


def test_an_unreadable_input_is_not_called_an_output_failure(tmp_path):
    """A permission error on another file (an input read while the output is written) stays as it is."""
    error = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "corpus.jsonl"))
    assert output_error(tmp_path / "out", error) is error


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """``fit --out ro/run`` embedded and trained everything, then failed naming ``ro/run``."""
    import tempfile

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=rf"no file can be made in {tmp_path} \(read-only file system\)"):
        check_output_folder(tmp_path / "new" / "run", "report.json")


def test_a_name_too_long_once_staged_is_refused_before_any_work(tmp_path):
    with pytest.raises(OutputError, match=r"\(name too long\); choose a shorter name"):
        check_output_folder(tmp_path / ("x" * 250), "manifest.json")


@pytest.mark.skipif(find_spec("pyarrow") is None, reason="needs pyarrow (the parquet extra)")
def test_a_npy_whose_record_is_not_its_own_is_refused_naming_both(tmp_path):
    """``transform --out X.npy`` killed between the record and the matrix: the new record beside the
    old matrix. The record comes first (a matrix never goes without one) and holds a checksum."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(30, 16)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.normal(size=(20, 16)).astype(np.float32))
    adapter = make_adapter()
    out = tmp_path / "out.npy"
    transform_vectors(tmp_path / "a.npy", adapter, out)
    assert written_by(out)["rows"] == 30
    old = out.read_bytes()
    transform_vectors(tmp_path / "b.npy", adapter, out)
    out.write_bytes(old)  # as if killed before the matrix's rename
    stale = r"out\.npy: is not the matrix its record .*out\.npy\.json describes"
    with pytest.raises(ValueError, match=stale):
        written_by(out)
    record = json.loads(npy_record(out).read_text())
    assert record["rows"] == 20
    transform_vectors(tmp_path / "a.npy", adapter, out)  # the command run again mends it
    assert written_by(out)["rows"] == 30


def test_a_npy_record_is_written_before_the_matrix(tmp_path, monkeypatch):
    """Killed between the two renames, the first write left an adapted matrix without a record: read
    as base vectors, it was adapted again."""
    np.save(tmp_path / "a.npy", np.ones((4, 16), np.float32))
    out = tmp_path / "out.npy"

    renames, replace = [], os.replace

    def killed_at_the_second(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        transform_vectors(tmp_path / "a.npy", make_adapter(), out)
    assert npy_record(out).is_file() and not out.exists()


def test_records_of_earlier_versions_without_a_checksum_are_still_read(tmp_path):
    out = tmp_path / "old.npy"
    np.save(out, np.ones((2, 3), np.float32))
    npy_record(out).write_text(json.dumps({"library": "search-adaptor", "rows": 2, "dim": 3}))
    assert written_by(out)["rows"] == 2


def test_the_probe_leaves_nothing_behind(tmp_path):
    check_output_folder(tmp_path / "run", "report.json")
    assert list(Path(tmp_path).iterdir()) == []


def _publish_over_an_old_folder(tmp_path: Path) -> Path:
    target = tmp_path / "index"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    with Staged(target, folder=True, marker="manifest.json") as staged:
        (staged.path / "manifest.json").write_text("new")
    return target


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_folder_is_replaced_in_one_exchange(tmp_path, monkeypatch):
    """Two renames (old aside, new in) left no index at all when killed between them."""

    def no_second_rename(*_args):
        raise AssertionError("replaced in two renames")

    monkeypatch.setattr(os, "replace", no_second_rename)
    target = _publish_over_an_old_folder(tmp_path)
    assert (target / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]  # the old one is gone


def test_where_no_exchange_is_possible_two_renames_replace_the_folder(tmp_path, monkeypatch):
    from search_adaptor import files

    monkeypatch.setattr(files, "_exchange", lambda *_paths: False)
    target = _publish_over_an_old_folder(tmp_path)
    assert (target / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]
