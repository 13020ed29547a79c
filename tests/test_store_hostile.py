"""A damaged, foreign or read-only store file never ends in a traceback or a wrong vector.

Each case ends in one :class:`StoreError` line that names the file and the fix, or is served safely:
a read-only store serves what it holds, and a damaged row is embedded again.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import shutil
import sqlite3
import stat
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import search_adaptor.store as store_mod
from search_adaptor.store import EmbeddingStore, StoreError, text_key
from test_store import CountingEncoder

TEXTS = [f"passage {i} " * 20 for i in range(1500)]  # enough for a file of many pages


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A store holding ``TEXTS`` (closed, so everything is in the main file), and their vectors."""
    with EmbeddingStore(CountingEncoder(dim=16, batch_size=100), tmp_path) as store:
        vectors = store.embed(TEXTS, "document")
    return store.path, vectors


def _sql(path: Path, *statements: str) -> None:
    with sqlite3.connect(path) as db:
        for sql in statements:
            db.execute(sql)
    db.close()


def _assert_one_line(exc: pytest.ExceptionInfo, path: Path, *fix: str) -> None:
    message = str(exc.value)
    assert isinstance(exc.value, ValueError) and "\n" not in message
    assert str(path) in message
    for part in fix:
        assert part in message, message


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(50_000)),
    "truncated to half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "truncated to its header": lambda p: p.write_bytes(p.read_bytes()[:50]),
    "not a database": lambda p: p.write_text("a note someone saved under the wrong name\n" * 100),
    "pages overwritten": lambda p: p.write_bytes(
        p.read_bytes()[:8192] + bytes(16384) + p.read_bytes()[8192 + 16384 :]
    ),
    "foreign vectors table": lambda p: _sql(
        p, "DROP TABLE vectors", "CREATE TABLE vectors (id INTEGER, embedding TEXT)"
    ),
    "dimension not a number": lambda p: _sql(p, "UPDATE meta SET value='sixteen' WHERE name='dim'"),
    "vectors without a dimension": lambda p: _sql(p, "DELETE FROM meta WHERE name='dim'"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_is_one_line_naming_the_folder_to_delete(built, damage: str) -> None:
    path, _ = built
    DAMAGE[damage](path)
    enc = CountingEncoder(dim=16, batch_size=100)
    with pytest.raises(StoreError) as exc, EmbeddingStore(enc, path.parents[1]) as store:
        store.embed(TEXTS, "document")  # raises at opening, or at the first read of a damaged page
    _assert_one_line(exc, path, "damaged embedding store", f"delete the folder {path.parent}", "embedded")


@pytest.mark.parametrize("first", ["contradicts", "agrees"])  # its first row: checked at opening
@pytest.mark.parametrize("asked", ["cached texts", "new texts only"])
def test_a_recorded_dimension_its_vectors_contradict_deletes_nothing(built, first, asked) -> None:
    """An edited dimension record made every stored vector 'the wrong length': all were deleted, embedded
    again, then refused as the store 'holding 8-d ones' (it held none)."""
    path, vectors = built
    _sql(path, "UPDATE meta SET value='8' WHERE name='dim'")
    if first == "agrees":  # a damaged first row of the recorded length: opening sees nothing wrong
        _sql(path, "UPDATE vectors SET vec = zeroblob(32) WHERE rowid = (SELECT MIN(rowid) FROM vectors)")
    texts = TEXTS[:5] if asked == "cached texts" else ["a text it does not hold"]
    enc = CountingEncoder(dim=16, batch_size=100)
    with pytest.raises(StoreError) as exc, EmbeddingStore(enc, path.parents[1]) as store:
        store.embed(texts, "document")
    _assert_one_line(
        exc,
        path,
        "damaged embedding store (recorded dimension 8, but ",
        " of its vectors are 64 bytes long, not 32)",
        f"delete the folder {path.parent}",
    )
    paid = first == "agrees" and asked == "new texts only"  # only its vector's width told
    assert enc.calls == ([tuple(texts)] if paid else [])
    _sql(path, "UPDATE meta SET value='16' WHERE name='dim'")  # the record mended: every vector is there
    enc = CountingEncoder(dim=16, batch_size=100)
    with EmbeddingStore(enc, path.parents[1]) as store, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the damaged first row, embedded again
        assert np.array_equal(store.embed(TEXTS, "document"), vectors)
    assert enc.calls == ([(TEXTS[0],)] if first == "agrees" else [])


def test_rebuilding_after_deleting_the_folder_works(built) -> None:
    path, vectors = built
    DAMAGE["garbage bytes"](path)
    shutil.rmtree(path.parent)
    enc = CountingEncoder(dim=16, batch_size=100)
    with EmbeddingStore(enc, path.parents[1]) as store:
        assert np.array_equal(store.embed(TEXTS, "document"), vectors)
    assert sum(len(c) for c in enc.calls) == len(TEXTS)


def _read_only(monkeypatch: pytest.MonkeyPatch, writable: Callable[[Path], bool]) -> None:
    """Make the store see ``writable`` as its permissions: tests run as root, where chmod binds nothing."""
    monkeypatch.setattr(store_mod, "_can_write", writable)


@pytest.mark.parametrize(
    "what, writable",
    [
        ("folder", lambda p: False),  # no -shm can be made: opened immutable
        ("file", lambda p: p.name != "embeddings.sqlite"),  # opened mode=ro, -shm beside it
    ],
)
def test_a_read_only_store_serves_what_it_holds(built, monkeypatch, what, writable) -> None:
    path, vectors = built
    before = _digest(path)
    _read_only(monkeypatch, writable)
    enc = CountingEncoder(dim=16, batch_size=100)
    with EmbeddingStore(enc, path.parents[1]) as store:
        assert store.read_only
        assert np.array_equal(store.embed(TEXTS[::-1], "document"), vectors[::-1])
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # SQLite itself refuses writes
            store._db.execute("DELETE FROM vectors")
        new = ["a text it does not hold", "another"]
        with pytest.raises(StoreError) as exc:  # counted once each, the held ones not at all
            store.embed([*TEXTS[:5], new[0], TEXTS[0], new[0], new[1], TEXTS[1]], "document")
    assert enc.calls == []  # nothing was paid for that could not be kept
    _assert_one_line(
        exc, path, "read-only", "and 2 text(s) have no vector", f"make {path.parent} writable", "--cache"
    )
    assert _digest(path) == before


def test_a_read_only_place_without_a_store_serves_nothing(tmp_path, monkeypatch) -> None:
    _read_only(monkeypatch, lambda p: False)
    enc = CountingEncoder()
    with EmbeddingStore(enc, tmp_path / "cache") as store:
        assert store.read_only and len(store) == 0
        assert store.missing("query", ["a", "b", "a"]) == ["a", "b"]
        assert store.embed([], "query").shape == (0, 0)
        with pytest.raises(StoreError, match="read-only") as exc:
            store.embed(["a"], "query")
    assert enc.calls == [] and not (tmp_path / "cache").exists()
    # the folder to make writable is one that exists (it named the model's folder, never made)
    assert f"make {tmp_path} writable, or point" in str(exc.value)


@pytest.mark.parametrize("where", ["root", "below", "folder"])
def test_a_file_where_the_store_needs_a_folder_is_one_line(tmp_path, where) -> None:
    enc = CountingEncoder()
    root = tmp_path / "cache"
    if where == "folder":  # the model's own folder inside the store is a file
        root.mkdir()
        blocked = root / hashlib.sha256(enc.fingerprint.encode()).hexdigest()[:20]
    else:
        blocked = root
        root = root / "sub" if where == "below" else root
    blocked.write_text("not a folder")
    with pytest.raises(StoreError) as exc:
        EmbeddingStore(enc, root)
    _assert_one_line(exc, root, f"but {blocked} is a file", "give --cache", "a folder")
    assert blocked.read_text() == "not a folder"


def test_a_folder_where_the_store_file_goes_and_a_held_lock_say_what_to_do(built, monkeypatch) -> None:
    """SQLite's own words ("unable to open database file", "database is locked") named neither the
    cause nor the fix."""
    path, _ = built
    enc = CountingEncoder(dim=16, batch_size=100)
    folder_root = path.parent.parent / "other"
    (folder_root / path.parent.name / path.name).mkdir(parents=True)
    with pytest.raises(StoreError) as exc:
        EmbeddingStore(enc, folder_root)
    _assert_one_line(exc, folder_root, "unable to open database file (it is a folder", "--cache")

    monkeypatch.setattr(store_mod, "_BUSY_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError) as exc, EmbeddingStore(enc, path.parent.parent) as store:
            store.embed(["a text not stored yet"], "document")
        _assert_one_line(exc, path, "database is locked (another process held its write lock", "--cache")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_store_folder_that_cannot_be_made_names_cache(tmp_path, monkeypatch) -> None:
    """A place that looked writable but took no folder (root on /proc: "[Errno 2] No such file or
    directory: '/proc/nope'", a full disk) named neither the store nor the flag."""
    real = Path.mkdir

    def full(self: Path, *args: object, **kwargs: object) -> None:
        if tmp_path / "full" in (self, *self.parents):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(StoreError) as exc:
        EmbeddingStore(CountingEncoder(dim=16, batch_size=100), tmp_path / "full")
    assert str(exc.value) == (
        f"{tmp_path / 'full'}: the embedding store's folder cannot be made there (No space left on device); "
        "give --cache (or $SEARCH_ADAPTOR_CACHE) a folder you can write"
    )


def test_a_disk_io_error_says_what_may_cause_it_and_what_to_do(built) -> None:
    """SQLite's "disk I/O error" (a -wal file deleted under a running job, a failing disk) came alone."""
    path, _ = built
    store = EmbeddingStore(CountingEncoder(dim=16, batch_size=100), path.parents[1])
    with store, pytest.raises(StoreError) as exc, store._guard():
        raise sqlite3.OperationalError("disk I/O error")
    _assert_one_line(
        exc, path, "disk I/O error (the disk failed, or its -wal/-shm file was removed", "--cache"
    )


def _serve_without_rights(root: str) -> tuple[bool, np.ndarray, str, int]:
    """Open the store where permissions bind; serve ``TEXTS``, then ask for one text it lacks."""
    enc = CountingEncoder(dim=16, batch_size=100)
    with EmbeddingStore(enc, root) as store:
        vectors = store.embed(TEXTS, "document")
        try:
            store.embed(["a text it does not hold"], "document")
        except StoreError as exc:
            return store.read_only, vectors, str(exc), len(enc.calls)
    raise AssertionError("a read-only store embedded a new text")


def _as_nobody(queue: multiprocessing.Queue, root: str) -> None:
    try:
        os.setgid(65534)
        os.setuid(65534)
    except PermissionError:
        queue.put(None)
        return
    try:
        queue.put(_serve_without_rights(root))
    except BaseException as exc:  # hand it over: the test reports it instead of waiting for a result
        queue.put(exc)


def test_a_really_read_only_folder_is_opened_read_only() -> None:
    """Real permissions: folder and file without write rights, for a user they bind (root drops to nobody)."""
    root = Path(tempfile.mkdtemp())
    try:
        with EmbeddingStore(CountingEncoder(dim=16, batch_size=100), root) as store:
            expected = store.embed(TEXTS, "document")
        root.chmod(0o755)
        store.path.chmod(0o444)
        store.path.parent.chmod(0o555)
        before = _digest(store.path)
        if os.geteuid() == 0:
            ctx = multiprocessing.get_context("fork")  # the child keeps this process's imports
            queue = ctx.Queue()
            child = ctx.Process(target=_as_nobody, args=(queue, str(root)))
            child.start()
            result = queue.get(timeout=60)
            child.join()
            if result is None:
                pytest.skip("cannot drop root privileges here")
            if isinstance(result, BaseException):
                raise result
        else:
            result = _serve_without_rights(str(root))
        read_only, vectors, message, calls = result
        assert read_only and calls == 0 and np.array_equal(vectors, expected)
        assert "read-only" in message and str(store.path) in message
        assert _digest(store.path) == before
        assert sorted(os.listdir(store.path.parent)) == ["embeddings.sqlite"]
    finally:
        store.path.parent.chmod(stat.S_IRWXU)
        shutil.rmtree(root)


BAD_ROWS = {
    "short blob": np.zeros(15, dtype=np.float32).tobytes(),
    "long blob": np.zeros(17, dtype=np.float32).tobytes(),
    "NaN": np.full(16, np.nan, dtype=np.float32).tobytes(),
    "inf": np.r_[np.ones(15), np.inf].astype(np.float32).tobytes(),
    "text instead of bytes": "0.1 0.2 0.3",
    "zeros": np.zeros(16, dtype=np.float32).tobytes(),
}


def _spoil(path: Path, rows: dict[str, object]) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(
            "UPDATE vectors SET vec = ? WHERE key = ?",
            [(vec, text_key("document", text)) for text, vec in rows.items()],
        )
    db.close()


def test_damaged_vectors_are_embedded_again(built) -> None:
    path, vectors = built
    spoiled = dict(zip(TEXTS[3 : 3 + len(BAD_ROWS)], BAD_ROWS.values(), strict=True))
    _spoil(path, spoiled)
    enc = CountingEncoder(dim=16, batch_size=100)
    warned = pytest.warns(RuntimeWarning, match=f"{len(BAD_ROWS)} stored vector")
    with EmbeddingStore(enc, path.parents[1]) as store, warned:
        again = store.embed(TEXTS, "document")
    assert np.array_equal(again, vectors)
    assert enc.calls == [tuple(spoiled)]  # exactly the damaged rows, once
    enc = CountingEncoder(dim=16, batch_size=100)
    with EmbeddingStore(enc, path.parents[1]) as store:  # the rows were replaced: nothing to repair
        assert np.array_equal(store.embed(TEXTS, "document"), vectors)
    assert enc.calls == []


def test_a_damaged_vector_in_a_read_only_store_is_one_line(built, monkeypatch) -> None:
    path, vectors = built
    _spoil(path, {TEXTS[3]: BAD_ROWS["NaN"]})
    _read_only(monkeypatch, lambda p: False)
    with EmbeddingStore(CountingEncoder(dim=16, batch_size=100), path.parents[1]) as store:
        assert np.array_equal(store.embed(TEXTS[4:], "document"), vectors[4:])
        assert store.missing("document", TEXTS[:5]) == [TEXTS[3]]
        with pytest.raises(StoreError) as exc:
            store.embed(TEXTS, "document")
    _assert_one_line(exc, path, "read-only", "1 text(s) have no vector")
