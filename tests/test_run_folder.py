"""A run's ``--out`` folder is published whole or not at all: a save interrupted or failing leaves the
earlier run there intact, two saves into one folder leave one consistent run, the paths recorded are
the published folder's, and a folder that replacing whole would lose files from is refused before
any work. Ctrl-C during a fit stops the candidates still queued instead of training them all."""

from __future__ import annotations

import errno
import json
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from search_adaptor import report
from search_adaptor.cli import main
from search_adaptor.experiment import run_fit
from search_adaptor.model import SearchAdaptor
from search_adaptor.report import check_run_folder, save_run
from test_hostile import write_beir, write_vectors
from test_interrupts import sigint_raises  # noqa: F401 (the fixture)
from test_plots import QUICK, synthetic_dataset


def _fit_argv(tmp_path: Path, synthetic: dict) -> list[str]:
    """A quick ``fit`` into ``tmp_path/out`` of the synthetic fixture, its vectors given."""
    data = write_beir(tmp_path / "syn", synthetic, splits={"test": synthetic["qids"]})
    vectors = write_vectors(tmp_path / "vec", synthetic)
    return [
        *("fit", str(data), "--embeddings", str(vectors), "--model", "syn-16"),
        *("--out", str(tmp_path / "out"), "--family", "linear", "--max-steps", "20", "--quiet"),
    ]


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "failure, status",
    [(KeyboardInterrupt(), 130), (OSError(errno.ENOSPC, "No space left on device"), 2)],
    ids=["ctrl-c", "disk-full"],
)
def test_a_save_interrupted_or_failing_leaves_the_earlier_run_whole(
    tmp_path, synthetic, capsys, monkeypatch, failure, status
):
    """The earlier report went first, then the adapter was replaced and the figures drawn: a Ctrl-C,
    a kill or a full disk in between left a new adapter with no report, the earlier run lost."""
    argv = _fit_argv(tmp_path, synthetic)
    out = tmp_path / "out"
    assert main(argv) == 0
    before = _contents(out)
    assert {"report.json", "report.md", "adapter/config.json"} <= before.keys()

    def fails(*_args):  # after the adapter and the figures were written
        raise failure

    monkeypatch.setattr(report, "write_report", fails)
    assert main([*argv, "--seed", "1"]) == status
    capsys.readouterr()
    assert _contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "syn", "vec"]  # nothing staged is left
    monkeypatch.undo()
    assert main([*argv, "--seed", "1"]) == 0
    assert _contents(out) != before


def test_two_saves_into_one_folder_leave_one_whole_run(tmp_path, synthetic):
    """A second run saving while the first draws its figures left its report beside the first's
    adapter; now the last to finish wins, whole, and the adapter path recorded is the folder's."""
    dataset, emb = synthetic_dataset(synthetic, tmp_path, {"test": slice(None)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second = (
            run_fit(dataset, emb, folds=2, family="linear", seed=seed, overrides=QUICK) for seed in (0, 1)
        )
    finally:
        torch.set_num_threads(threads)
    assert first.report["metrics"] != second.report["metrics"]
    out = tmp_path / "out"
    write_figures = report.write_figures

    def second_saves_meanwhile(folder, run):
        if run is first:
            save_run(second, out)
        return write_figures(folder, run)

    report.write_figures = second_saves_meanwhile
    try:
        written = save_run(first, out)
    finally:
        report.write_figures = write_figures
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(written))
    assert written["metrics"] == json.loads(json.dumps(first.report["metrics"]))
    config = json.loads((out / "adapter" / "config.json").read_text())
    assert config["metrics"]["test"]["adapted"] == written["metrics"]["adapted"]
    assert written["adapter"] == str(out.resolve() / "adapter")
    SearchAdaptor.load(written["adapter"])  # the path recorded is the published adapter's
    assert all((out / path).is_file() for path in written["plots"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_replacing_would_lose_files_from_is_refused_before_any_work(tmp_path, monkeypatch):
    """The folder is replaced whole, so nothing but a run's own parts may be in it: a note beside a
    report, a file in plots/, an adapter in an evaluate's folder, or the shell's current directory."""
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "report.json").write_text("{}")
    check_run_folder(out, "fit")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt: not part of a folder written by"):
        check_run_folder(out, "fit")
    (out / "notes.txt").unlink()
    (out / "plots" / "mine.png").write_text("x")
    with pytest.raises(FileExistsError, match=r"mine\.png: not part of a run's plots folder"):
        check_run_folder(out, "fit")
    (out / "plots" / "mine.png").unlink()
    (out / "report.json").unlink()
    (out / "adapter").mkdir()
    with pytest.raises(FileExistsError, match="evaluate writes no adapter"):
        check_run_folder(out, "evaluate")
    check_run_folder(out, "fit")  # an interrupted fit's leftovers: a fit may take the folder
    for cwd in (out, out / "adapter"):
        monkeypatch.chdir(cwd)
        with pytest.raises(FileExistsError, match="is the current directory or holds it"):
            check_run_folder(out, "fit")
        with pytest.raises(FileExistsError, match="is the current directory or holds it"):
            check_run_folder(".", "fit")


@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c_during_a_fit_drops_the_candidates_still_queued(tmp_path, synthetic, monkeypatch):
    """Ctrl-C waited for every queued candidate (of every fold) to train before the fit stopped; a
    second one, pressed while a candidate still ran, then left with it running and aborted the
    process ("terminate called without an active exception")."""
    dataset, emb = synthetic_dataset(synthetic, tmp_path, {"test": slice(None)})
    started: list[float] = []
    ended: list[float] = []
    fit = SearchAdaptor.fit

    def slow_fit(self, *args, **kwargs):
        started.append(time.perf_counter())
        if len(started) == 1:  # Ctrl-C reaches the main thread while the first candidate trains, twice
            for _ in range(2):
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                time.sleep(0.2)
        result = fit(self, *args, **kwargs)
        ended.append(time.perf_counter())
        return result

    monkeypatch.setattr(SearchAdaptor, "fit", slow_fit)
    with pytest.raises(KeyboardInterrupt):
        run_fit(dataset, emb, folds=3, selection="kfold", n_jobs=1, overrides=QUICK)
    assert len(started) == 1  # of 3 folds and a final fit, times 3 selection folds, times the candidates
    assert len(ended) == 1  # the one running was waited for, through the second Ctrl-C
