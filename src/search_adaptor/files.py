"""Files the tool writes and reads back: atomic writes, JSON read with one-line errors, the cache dir.

Everything the tool writes (reports, adapters, indexes, vector shards, downloads) is first written to
a private temporary sibling and then renamed into place, so a reader, or a run killed half-way,
sees the old file or folder or the new one, never a mix; a sibling that a killed writer left behind
is removed by the next write of the same output (:func:`remove_stale_siblings`). Everything it reads
back is input like any other: :func:`read_json` and :func:`inside` turn damaged or edited files into
one-line errors that name the file, the field and the fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ENV_CACHE = "SEARCH_ADAPTOR_CACHE"
#: what stops an output from being written, as the one line that says so: the cause and the fix
_WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on the device", "free some space there, or choose another place"),
    errno.EDQUOT: ("disk quota exceeded", "free some space there, or choose another place"),
    errno.EFBIG: ("file too large for its file system", "choose another place"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.EROFS: ("read-only file system", "choose a folder you can write to"),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter name"),
}
#: the most characters :class:`Staged` adds to a target's name for its siblings
#: (``.NAME.PID-HOST.XXXXXXXX.old``, :func:`staging_prefix`, with Linux's largest pid, and a ``.npy``'s
#: ``.json`` record's): a name is refused when these would pass the file system's limit
_STAGING_CHARS = len(".") + len(".4194304-0123abcd.XXXXXXXX") + len(".old") + len(".json")
#: byte-order marks of the encodings a JSON file saved by an editor may have instead of UTF-8
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def default_cache_dir() -> Path:
    """``$SEARCH_ADAPTOR_CACHE`` or the user's cache dir: shared by every run on this machine."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("search-adaptor"))


def file_in_the_way(folder: str | os.PathLike) -> Path | None:
    """The first of ``folder`` and the folders above it that exists as a file (so ``folder`` cannot
    be made), or None."""
    path = Path(folder).absolute()
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def check_parent_folders(target: str | os.PathLike) -> None:
    """Refuse an output path one of whose parent folders is a file, before any work is done."""
    blocked = file_in_the_way(Path(target).absolute().parent)
    if blocked is not None:
        raise FileExistsError(f"{target}: {blocked} is a file, not a folder; choose another place")


class OutputError(OSError):
    """An output could not be written: its message is one line naming the user's path (never a
    staging sibling's), the cause and a fix; ``errno`` is the cause's."""


def output_error(target: str | os.PathLike, exc: BaseException) -> BaseException:
    """``exc``, raised while ``target`` was written, as an :class:`OutputError` naming ``target`` when
    it is a write failure (no space, no permission, a name too long) of ``target`` or of its staging
    siblings; any other exception (an input that cannot be read, a network error) as it is.

    pyarrow's write errors carry no errno but name it in their text ("... [errno 28] ...").
    """
    if not isinstance(exc, OSError):
        return exc
    code = exc.errno
    if code is None:
        found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
        code = int(found[1]) if found else None
    if code not in _WRITE_FAILURES or not (isinstance(exc, OutputError) or _is_staging(target, exc.filename)):
        return exc
    cause, fix = _WRITE_FAILURES[code]
    error = OutputError(f"{target}: cannot be written ({cause}); {fix}")
    error.errno = code
    return error


def _is_staging(target: str | os.PathLike, filename: Any) -> bool:
    """Whether an error's ``filename`` is ``target``, a staging sibling of it or a path inside one
    (None: a failed ``write()``, which names no file, is the output's being written)."""
    if filename is None:
        return True
    path, goal = Path(os.fsdecode(filename)).absolute(), Path(target).absolute()
    return any(
        p == goal or (p.parent == goal.parent and p.name.startswith(f".{goal.name}."))
        for p in (path, *path.parents)
    )


def check_writable(target: str | os.PathLike) -> None:
    """Refuse, before any work, an output path that cannot be written: a name (of it or a folder to
    make above it) too long for the file system, once staged, or a nearest existing folder in which
    a file cannot be made. A probe file is made and removed there: permission bits alone do not tell
    (root passes them, but not a read-only mount)."""
    path = Path(target).absolute()
    existing = next(p for p in path.parents if p.is_dir())
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such query here: the usual limit
        limit = 255
    for part in path.relative_to(existing).parts:
        if len(os.fsencode(part)) + (_STAGING_CHARS if part == path.name else 0) > limit:
            raise output_error(path, OSError(errno.ENAMETOOLONG, "name too long"))
    try:
        fd, probe = tempfile.mkstemp(prefix=".search-adaptor-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        cause, _ = _WRITE_FAILURES.get(exc.errno or 0, (exc.strerror or str(exc), ""))
        raise OutputError(
            f"{target}: cannot be written: no file can be made in {existing} ({cause}); choose a folder "
            "you can write to"
        ) from None


def check_output_folder(
    target: str | os.PathLike, marker: str, what: str = "", parts: Sequence[str] = ()
) -> None:
    """Refuse an output folder that exists with other files in it: one a tool may fill or replace is
    absent, empty, holds ``marker`` (it is ``what``), or holds nothing but ``parts`` (what the tool
    writes there, and their staging siblings: an interrupted run's leftovers), so a mistyped path
    never mixes with or deletes unrelated files."""
    path = Path(target)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is a file; choose a new or empty folder")
    check_parent_folders(path)
    check_writable(path)
    if path.is_dir() and not (path / marker).is_file() and _others(path, parts):
        raise FileExistsError(
            f"{path}: exists and is not {what or 'written by search-adaptor'}; choose a new or empty folder"
        )


def check_replaceable(target: str | os.PathLike, parts: Sequence[str], what: str) -> None:
    """Refuse to replace the folder ``target`` as a whole (as :class:`Staged` does, deleting what it
    held) while it holds anything but ``parts``, what the tool writes there: a note or a run a user
    keeps beside them is never deleted silently. The first such entry is named."""
    path = Path(target)
    others = _others(path, parts) if path.is_dir() else []
    if others:
        raise FileExistsError(
            f"{others[0]}: not part of {what}, and saving over {path} would delete it; "
            "move it out of the folder, or choose a new or empty folder"
        )


def _others(folder: Path, parts: Sequence[str]) -> list[Path]:
    """The entries of ``folder`` that are neither one of ``parts`` nor a staging sibling of one (an
    interrupted run's leftover), sorted by name. A part may be a name pattern (``fnmatch``'s, case
    sensitive: ``part-*.parquet``), for the numbered files a writer makes as many of as it needs; a
    plain name matches only itself."""
    return sorted(p for p in folder.iterdir() if not any(_is_part(p.name, part) for part in parts))


def _is_part(name: str, part: str) -> bool:
    """Whether the entry ``name`` is ``part`` (a name or pattern) or a staging sibling of one."""
    return fnmatch.fnmatchcase(name, part) or fnmatch.fnmatchcase(name, f".{part}.*")


def staging_prefix(target: str | os.PathLike, pid: int | None = None) -> str:
    """The start of the names of the staging siblings of ``target`` that process ``pid`` (this one by
    default) makes: ``.NAME.PID-HOST.``, random characters follow (and ``.old`` for the old folder
    during a replacement in two renames).

    Why the writer's pid and host in the name: a sibling whose writer died (kill -9, a crash, a power
    cut) would stay forever, and may be as large as an index; with them a later write of ``target``
    can tell it from one a live writer is filling, and remove it (:func:`remove_stale_siblings`).
    """
    return f".{Path(target).name}.{os.getpid() if pid is None else pid}-{host_tag()}."


@functools.cache
def host_tag() -> str:
    """8 hex digits naming the space this process's pids live in: this host's name and (on Linux) its
    pid namespace, since two containers of one host, which may share a host name, each have their own
    pids. A pid is looked up only under the tag it was written with (a staging sibling's name, an
    embedding store's claim)."""
    import socket

    try:
        space = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: the host name alone
        space = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{space}".encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run on this machine: True unless the system says there is
    none (another user's process, a zombie and a system that cannot tell all count as alive, the safe
    answer); an id past the system's range never runs."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


def remove_stale_siblings(target: str | os.PathLike) -> list[Path]:
    """Remove the staging siblings of ``target`` that dead processes left (killed by SIGKILL, crashed);
    returns what was removed.

    Only names :func:`staging_prefix` makes for this very ``target`` are looked at, and only those
    with this host's tag whose pid is no longer alive are removed: a live writer's sibling, another
    host's or pid namespace's (whose pids cannot be looked up here), another output's and any other
    file stay. A stale ``.old`` stays while ``target`` is missing: a kill between the two renames of
    :meth:`Staged.publish` left it the only copy of the earlier output. Removal is best effort: a
    sibling that cannot be removed never stops the write.
    """
    path = Path(target)
    # staging_prefix's name, then tempfile's random characters (never a "." or "-": no other output's
    # sibling matches)
    name = re.compile(rf"\.{re.escape(path.name)}\.([1-9][0-9]*)-{host_tag()}\.[A-Za-z0-9_]+(\.old)?")
    found: list[tuple[Path, re.Match[str]]] = []
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        found = [(Path(e.path), m) for e in entries if (m := name.fullmatch(e.name))]
    alive = {pid: pid_alive(pid) for pid in {int(m[1]) for _, m in found}}  # looked up after the listing
    removed = []
    for sibling, m in found:
        with contextlib.suppress(OSError):
            if alive[int(m[1])] or (m[2] and not path.exists()):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling)
            else:
                sibling.unlink()
            removed.append(sibling)
    return removed


class Staged(contextlib.AbstractContextManager):
    """A temporary sibling of ``target`` that replaces it in one rename once it is complete.

    Parameters
    ----------
    target : path
        The file or folder to (re)place.
    folder : bool
        Stage a folder (filled by the caller) rather than a file.
    marker, what : str, optional
        For folders: an existing ``target`` is replaced only when it is empty or holds ``marker``
        (it is ``what``), so a mistyped path never deletes unrelated files.
    parts : sequence of str, optional
        For folders with a ``marker``: the names (or ``fnmatch`` patterns, for numbered files) the
        tool writes in ``target``. An existing one
        holding anything else is refused (:func:`check_replaceable`), as replacing it would delete that.

    Use as a context manager: :meth:`publish` on success, :meth:`discard` on an exception. The
    staged folder is private (0700) while it is written; the published one gets 0755/0644 modes.
    Siblings that dead writers of ``target`` left are removed first (:func:`remove_stale_siblings`).
    """

    def __init__(
        self,
        target: str | os.PathLike,
        *,
        folder: bool = False,
        marker: str | None = None,
        what: str = "",
        parts: Sequence[str] = (),
    ) -> None:
        self.target = Path(target).resolve()
        self.folder = folder
        if folder and marker:
            check_output_folder(self.target, marker, what)
            if parts:
                check_replaceable(self.target, parts, what)
        else:
            check_parent_folders(self.target)
        prefix = staging_prefix(self.target)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_siblings(self.target)
            if folder:
                self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target.parent))
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, dir=self.target.parent)
                os.close(fd)
                self.path = Path(name)
        except OSError as exc:  # named by the user's path, not the temporary sibling's
            error = output_error(self.target, OSError(exc.errno, exc.strerror))
            if not isinstance(error, OutputError):
                error = OSError(
                    f"{self.target}: cannot write in {self.target.parent} ({exc.strerror or exc}); "
                    "choose another place"
                )
            raise error from None

    def publish(self) -> Path:
        """Put the staged file or folder in place of the target; returns the target."""
        if not self.folder:
            self.path.chmod(0o644)
            os.replace(self.path, self.target)
            return self.target
        for item in [self.path, *self.path.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        if self.target.exists() and _exchange(self.path, self.target):
            shutil.rmtree(self.path, ignore_errors=True)  # (now the old folder)
            return self.target
        old = self.path.with_name(self.path.name + ".old")  # a kill between two renames hides both
        if self.target.exists():
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """Remove what was staged; the target is left as it was."""
        if self.folder:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self.path.unlink(missing_ok=True)

    def __exit__(self, exc_type: object, exc: BaseException | None, *rest: object) -> None:
        """Publish, or discard on an exception; a write failure is raised naming the target."""
        finish_output(self.target, exc, self.publish, self.discard)


def finish_output(
    target: Path, exc: BaseException | None, done: Callable[[], object], undo: Callable[[], None]
) -> None:
    """End writing the output ``target`` (a context manager's exit): ``done()`` when the block raised
    nothing, else ``undo()``; a write failure, from the block or from ``done()`` (which is undone
    then), is raised as :func:`output_error`'s one line naming ``target``."""
    if exc is None:
        try:
            done()
        except OSError as failed:
            undo()
            raise output_error(target, failed) from None
        return
    undo()
    error = output_error(target, exc)
    if error is not exc:
        raise error from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux's ``renameat2(RENAME_EXCHANGE)``), so that a kill never
    leaves neither in place; False where the system or file system cannot, and two renames must do."""
    renameat2 = (
        getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    )
    if renameat2 is None:
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h>, <linux/fs.h>
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half of one."""
    with Staged(path) as staged, open(staged.path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, written as :func:`write_bytes_atomic` does."""
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike, fix: str, strict: bool = True) -> Any:
    """The JSON value in ``path``; a missing, non-UTF-8 or malformed file is one ``ValueError`` line.

    ``fix`` ends each message: what the user should do (e.g. "rebuild the index"). ``strict``: NaN
    and Infinity, which Python's json reads but JSON has not, are malformed too (the tool never
    writes them: one there was put by hand, and every other reader of the file fails on it);
    ``strict=False`` for files of other tools.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: not found; {fix}") from None
    except OSError as exc:
        raise ValueError(f"{file}: cannot be read ({exc.strerror}); {fix}") from None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as exc:
        bom = next((name for mark, name in _BOMS if raw.startswith(mark)), None)
        if bom:
            raise ValueError(f"{file}: {bom} text, not UTF-8; save it as UTF-8, or {fix}") from None
        raise ValueError(f"{file}: not UTF-8 (byte {exc.start}); {fix}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant if strict else None)
    except _NotJSON as exc:
        raise ValueError(f"{file}: not valid JSON ({exc} is not a JSON number: write null); {fix}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({json_error(exc)}); {fix}") from None
    except RecursionError:
        raise ValueError(f"{file}: JSON nested too deeply to be one of this tool's files; {fix}") from None


def json_error(exc: json.JSONDecodeError, line: bool = True) -> str:
    """What ``exc`` says and where: "Expecting ',' delimiter at line 3, column 7" (``line=False``: the
    column only, for one line of a JSON Lines file, which the caller names)."""
    # json's own words end in "at" where they name a place ("Unterminated string starting at")
    place = f"line {exc.lineno}, column {exc.colno}" if line else f"column {exc.colno}"
    return f"{exc.msg.removesuffix(' at')} at {place}"


class _NotJSON(ValueError):
    """A constant Python's json reads that JSON has not (its name is the message)."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(name)


def inside(folder: str | os.PathLike, relative: Any, field: str) -> Path:
    """``folder / relative``, refusing anything that is not a relative path inside ``folder``.

    Paths recorded in the tool's own files (an index's adapter, a shard) must stay in their folder:
    an edited ``"../../x"`` or an absolute path would load something else than what was written.
    """
    base = Path(folder).resolve()
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise ValueError(
            f"{field}: {json.dumps(relative)} is not a relative path inside {base}; rebuild the folder"
        )
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{field}: {json.dumps(relative)} points outside {base}; rebuild the folder")
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, Kubernetes, systemd), raised in the main thread
    as the first Ctrl-C is. A :class:`KeyboardInterrupt`, so that everything that ends a run in order
    on Ctrl-C (staged outputs discarded, the store committing the replies in flight and sending no
    more) does so on SIGTERM too, rather than the process dying with its outputs' siblings left; only
    the exit status and the last line (:func:`one_line_error`) differ."""


def one_line_error(exc: BaseException, debug: bool = False, stopped: str = "") -> tuple[int, str]:
    """Exit status and the one line a command ends with when ``exc`` stops it (``debug``: its
    traceback is printed first).

    Bad input (``ValueError``, ``OSError``, ``RuntimeError``, whose messages name the file, field and
    fix) is status 2; an interruption 130 (Ctrl-C) or 143 (SIGTERM, :class:`Terminated`), 128 + the
    signal as a shell reports it; anything else is a bug, status 1, and the line says how to see its
    traceback. ``--debug`` changes what is printed, never the status: raised out of a command, bad
    input would end Python with status 1 (a bug's) and SIGTERM with an uncaught Ctrl-C's 130, telling
    a supervisor that a person stopped the job.

    ``stopped`` ends an interruption's line in brackets: what is true of the interrupted command
    (its caller knows which ran: embeddings kept in the store, a server stopped); nothing is added
    without it, since no one clause is true of every command.
    """
    if debug:
        traceback.print_exception(exc)
    if isinstance(exc, KeyboardInterrupt):  # SIGTERM's Terminated too
        sigterm = isinstance(exc, Terminated)
        line = f"search-adaptor: {'terminated' if sigterm else 'interrupted'}"
        return 128 + signal.SIGTERM if sigterm else 130, line + (f" ({stopped})" if stopped else "")
    text = " ".join(str(exc).split())
    if isinstance(exc, ImportError) and exc.name:  # an optional extra the command needs
        return 2, f"search-adaptor: error: this command needs {exc.name}: pip install 'search-adaptor[all]'"
    if isinstance(exc, (ValueError, OSError, RuntimeError)):
        return 2, f"search-adaptor: error: {text}"
    ask = (
        "please report it with the traceback above"
        if debug
        else "run again with --debug to see the traceback, and please report it"
    )
    return 1, f"search-adaptor: error: internal error ({type(exc).__name__}: {text}); {ask}"


_SAMPLED = 1 << 20  # bytes from each end of a file that sampled_checksum reads


def sampled_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a file's size and its first and last MiB: what tells one written file (a matrix,
    an index) from another, or from itself edited, without reading all of a large one."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(handle.read(_SAMPLED))
        handle.seek(max(size - _SAMPLED, 0))
        digest.update(handle.read(_SAMPLED))
    return digest.hexdigest()
