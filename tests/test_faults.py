"""Faults around a command's outputs: a reader that closes the pipe early, a full disk, a folder that
cannot be written, a name too long, a ``.npy`` whose record a killed job left out of step, a job ended
by SIGTERM, and the staging siblings a job killed with SIGKILL left behind.

Fast and offline: fake commands, random vectors, an adapter with random weights and a fake embedding API.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from fake_providers import FakeProvider, fake_encoder
from search_adaptor import cli
from search_adaptor.files import (
    OutputError,
    Staged,
    check_output_folder,
    output_error,
    remove_stale_siblings,
    staging_prefix,
    write_text_atomic,
)
from search_adaptor.pipeline import transform_vectors
from search_adaptor.vectors import npy_record, written_by
from test_cli_providers import _write_beir
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


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by its path relative to it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(target: Path) -> list[str]:
    """The staging siblings of ``target`` (and anything else named as one) beside it."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


@pytest.mark.skipif(find_spec("faiss") is None, reason="needs faiss (the index extra)")
def test_sigterm_ends_a_job_as_ctrl_c_does_with_its_own_status(tmp_path, monkeypatch):
    """``kill``, ``timeout``, ``docker stop``: SIGTERM killed the job at once, leaving the index's
    staging sibling (as large as an index) behind and skipping what Ctrl-C does in order."""
    data = _write_beir(tmp_path / "tiny", n_docs=40, n_queries=10)
    out = tmp_path / "index"
    with FakeProvider("openai-compatible", dim=8) as fake:
        make_adapter(8, info=fake_encoder(fake, model="fake-model").info()).save(tmp_path / "adapter")
        monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", fake.key)
        args = ["index", str(data), "--provider", "openai-compatible", "--model", "fake-model"]
        args += ["--base-url", fake.url, "--adapter", str(tmp_path / "adapter"), "--out", str(out)]
        args += ["--batch-size", "4", "--max-concurrency", "2", "--quiet"]
        assert cli.main([*args, "--cache", str(tmp_path / "cache")]) == 0  # the earlier index
        earlier, sent = _contents(out), len(fake.calls)

        fake.delay = 30  # the next run embeds again (a new cache), slowly
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "search_adaptor.cli", *args, "--cache", str(tmp_path / "new")]
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(fake.calls) < sent + 2:
                assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
                time.sleep(0.01)
            assert _siblings(out)  # the job is writing its output when SIGTERM comes
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports a job SIGTERM ended
    assert err.strip().splitlines()[-1] == (
        "search-adaptor: terminated (embeddings finished so far are kept in the store)"
    )
    assert _siblings(out) == []  # the staged output was discarded...
    assert _contents(out) == earlier  # ...and the earlier index is as it was
    assert len(fake.calls) == sent + 2  # nothing was sent after SIGTERM


@pytest.mark.slow
@pytest.mark.skipif(find_spec("ray") is None, reason="needs ray[data] (the ray extra)")
@pytest.mark.skipif(find_spec("faiss") is None, reason="needs faiss (the index extra)")
@pytest.mark.skipif(sys.platform != "linux", reason="Ray's processes are looked up in /proc")
def test_sigterm_ends_a_ray_job_as_it_ends_a_local_one(tmp_path, monkeypatch):
    """``ray.init`` replaced the CLI's SIGTERM handler: an ``--engine ray`` job SIGTERM stopped ended
    in SIGABRT (status 134) and a stack dump from Ray's C++ core, never the one line and 143."""
    data = _write_beir(tmp_path / "tiny", n_docs=40, n_queries=10)
    out = tmp_path / "index"
    with FakeProvider("openai-compatible", dim=8) as fake:
        make_adapter(8, info=fake_encoder(fake, model="fake-model").info()).save(tmp_path / "adapter")
        monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", fake.key)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        fake.delay = 30  # a Ray actor is embedding, slowly, when SIGTERM comes
        args = ["index", str(data), "--provider", "openai-compatible", "--model", "fake-model"]
        args += ["--base-url", fake.url, "--adapter", str(tmp_path / "adapter"), "--out", str(out)]
        args += ["--cache", str(tmp_path / "cache"), "--engine", "ray", "--quiet"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable, "-m", "search_adaptor.cli", *args]
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while not (fake.calls and _siblings(out)):
                assert proc.poll() is None and time.monotonic() < deadline, "the run never got going"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        deadline = time.monotonic() + 30
        while left := _running_in_session(proc.pid):  # Ray's processes, started in the job's session
            assert time.monotonic() < deadline, f"Ray's processes {left} outlived the job"
            time.sleep(0.2)
    assert proc.returncode == 143, err  # not -6 (SIGABRT)
    assert err.strip().splitlines()[-1] == (
        "search-adaptor: terminated (embeddings finished so far are kept in the store)"
    )
    assert "SIGTERM received" not in err
    assert _siblings(out) == [] and not out.exists()  # the staged output was discarded


def _running_in_session(session: int) -> list[int]:
    """The processes of session ``session`` still running (zombies aside), from ``/proc``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _group, sid = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except OSError:  # it ended while the others were read
            continue
        if int(sid) == session and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name != "posix", reason="a pid is looked up with os.kill(pid, 0)")
def test_the_next_write_removes_the_staging_siblings_of_dead_writers_only(tmp_path):
    """A job killed with SIGKILL (or crashed) left its staging siblings forever: no later run removed
    them. The next write of the same output removes those whose writer is dead, and nothing else."""
    target = tmp_path / "out.npy"
    target.write_text("earlier")
    dead, live = _dead_pid(), os.getppid()  # (a live writer: the process that started this one)
    stale = [staging_prefix(target, dead) + "a1b2c3d4", staging_prefix(target, dead) + "e5f6_7h8.old"]
    (tmp_path / stale[0]).write_bytes(b"\0" * 1024)  # a file being written...
    (tmp_path / stale[1]).mkdir()  # ...and a folder, set aside while its replacement went in
    (tmp_path / stale[1] / "index.faiss").write_bytes(b"\0" * 1024)
    kept = [
        staging_prefix(target, live) + "a1b2c3d4",  # a live writer's
        staging_prefix(tmp_path / "out.npy.json", dead) + "a1b2c3d4",  # another output's
        f".out.npy.{dead}-00000000.a1b2c3d4",  # another host's (its pids cannot be looked up here)
        ".out.npy.a1b2c3d4",  # an earlier version's: no writer named
        ".out.npy.notes",  # not a staging name at all
    ]
    for name in kept:
        (tmp_path / name).write_text("keep")

    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert _siblings(target) == sorted(kept)

    target.unlink()  # a kill between two renames: the earlier output aside is its only copy
    (tmp_path / stale[1]).mkdir()
    assert remove_stale_siblings(target) == []
    assert (tmp_path / stale[1]).is_dir()


def test_a_staging_sibling_names_its_writer(tmp_path):
    """What lets a later write tell a dead writer's sibling from a live one's."""
    target = tmp_path / "out.bin"
    with Staged(target) as staged:
        assert staged.path.name.startswith(staging_prefix(target))
        assert f".{os.getpid()}-" in staged.path.name
        remove_stale_siblings(target)  # this writer is alive: its sibling stays
        assert staged.path.exists()
    assert _siblings(target) == []


def test_an_index_build_removes_the_scratch_a_killed_build_left(tmp_path, monkeypatch):
    """A build killed while embedding left its scratch folder (the corpus's vectors, as large as the
    index) beside the output for good: it is named as a staging sibling, and the next build of that
    output removes it before embedding. A name with a pid past the system's range is a dead writer's,
    not a crash."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor import index as index_module
    from search_adaptor.index import AdaptedIndex, build_index
    from test_index import FAKE, FAKE_INFO

    while_embedding: list[list[str]] = []

    def embed_and_adapt(*args, **kwargs):
        while_embedding.append(_siblings(out))
        return real(*args, **kwargs)

    real = index_module.embed_and_adapt
    monkeypatch.setattr(index_module, "embed_and_adapt", embed_and_adapt)

    data = _write_beir(tmp_path / "tiny", n_docs=6, n_queries=2)
    out = tmp_path / "index"
    left = [staging_prefix(out, _dead_pid()) + "a1b2c3d4", staging_prefix(out, 2**70) + "e5f6g7h8"]
    for name in left:
        (tmp_path / name / "vectors").mkdir(parents=True)
        (tmp_path / name / "vectors" / "part-0.npy").write_bytes(b"\0" * 1024)
    build_index(data, FAKE, make_adapter(info=FAKE_INFO), out, cache_dir=tmp_path / "cache")
    [scratch] = while_embedding[0]  # only this build's own, named so that a later build can remove it
    assert scratch.startswith(staging_prefix(out))
    assert _siblings(out) == []
    assert AdaptedIndex.load(out, encoder=FAKE).n_docs == 6
