"""The benchmark suite: every baseline, the paper's recipe, its ablations and ``auto``, over seeds.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/suite.py                      # everything, resumable
    HF_HUB_OFFLINE=1 python benchmarks/suite.py --datasets scifact --seeds 2 --budget-minutes 60
    python benchmarks/suite.py --report-only                        # rebuild suite.md and plots

Each process trains on one thread (``--threads``); on the 2-core machine run one process per core on
disjoint datasets or rows, which share the cache safely, e.g.::

    python benchmarks/suite.py --datasets scifact cranfield &
    python benchmarks/suite.py --seed-major --datasets xquad-r/{en,de,es,ru,zh} &

Protocols are the ones ``search-adaptor fit`` uses (``search_adaptor.experiment.run_fit``): SciFact
trains on its official train split and is scored on its test split; the datasets with one labelled
split (Cranfield, XQuAD-R) are scored by 5-fold cross-validation over their queries, each fold's
model trained and validated on the other folds only, with a different fold assignment per seed.
Every model early-stops and selects on the same validation split (20% of its training queries,
drawn from the seed).

Every (dataset, row, seed, fold) result is a *cell*, cached in ``results/suite_cells.json.gz`` as soon
as it is computed (per-query nDCG@10 stored as base64 uint16 in units of 1e-4), so an interrupted
run resumes where it stopped and a later session can extend it. A cell is recomputed when its
parameters change. ``results/suite.md`` and ``results/plots/*.png`` are regenerated from the cache
at the end of every run; ``benchmarks/assemble.py`` puts ``suite.md`` into ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import gzip
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines
from search_adaptor.data import Dataset, labelled_queries, load_beir
from search_adaptor.embed import Embeddings
from search_adaptor.experiment import Protocol, evaluate_embeddings, is_kept_start, protocol, select
from search_adaptor.files import write_bytes_atomic, write_text_atomic
from search_adaptor.metrics import paired_test
from search_adaptor.model import SearchAdaptor
from search_adaptor.variants import ALPHA_GRID as ALPHA_VALUES
from search_adaptor.variants import DEFAULT_FOLDS, DEFAULT_SELECTION, FAMILIES, family_variants

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = (
    "scifact",
    "cranfield",
    "xquad-r/en",
    "xquad-r/de",
    "xquad-r/es",
    "xquad-r/ru",
    "xquad-r/zh",
    "metatool",
)
FOLDS = DEFAULT_FOLDS
METRICS = ("ndcg@10", "recall@100", "mrr@10")
#: Full fine-tuning needs the model's weights and is slow on 2 cores: these datasets, this many seeds.
FINETUNE_DATASETS = ("scifact", "cranfield")
FINETUNE_SEEDS = 3
#: Data efficiency: shares of the training queries, on the first dataset with an official train split.
FRACTIONS = (0.1, 0.3, 0.5)
EFFICIENCY_ROWS = ("auto", "auto-refit", "paper", "llamaindex-linear")
#: Rows whose seed-0 adapter is drawn in the similarity figure (the paper's Figure 5).
SIMILARITY_ROWS = ("auto", "paper-default")
P_SIGNIFICANT = 0.05
AUTO_CANDIDATES = tuple(name for name, _ in family_variants("auto"))
AUTO_PARAMS = {name: dict(params) for name, params in family_variants("auto")}
#: Rows whose candidates' test scores are another row's cells (the same models).
CANDIDATES_OF = {"auto-kfold": "auto", "auto-refit": "auto"}
#: ``fit --refit-all`` rows and the row each refits the winner of.
REFITS = {"auto-refit": "auto", "paper-refit": "paper", "paper-default-refit": "paper-default"}
BFLOAT16 = {"precision": "bfloat16"}

PAPER_DEFAULT = dict(FAMILIES["paper-default"][0][1])
GRID = FAMILIES["paper"]
GRID_NAMES = tuple(name for name, _ in GRID)
ALPHA_GRID = FAMILIES["paper-alpha"]
ALPHA_NAMES = tuple(name for name, _ in ALPHA_GRID)
#: A residual MLP trained with InfoNCE and nothing else: the obvious contrastive baseline (auto's
#: ``shared-infonce`` adds hard negatives and the recovery loss to it).
MLP_INFONCE = dict(FAMILIES["shared-random"][0][1])


@dataclass(frozen=True)
class CellRow:
    """Something trained and scored once per (dataset, seed, fold): the unit of caching."""

    name: str
    kind: str  # zero-shot | procrustes | least-squares | adapter | family | finetune
    params: Mapping[str, Any] = field(default_factory=dict)


CELL_ROWS: dict[str, CellRow] = {
    r.name: r
    for r in [
        CellRow("zero-shot", "zero-shot"),
        CellRow("procrustes", "procrustes"),
        CellRow("least-squares", "least-squares"),
        CellRow("llamaindex-linear", "adapter", baselines.LLAMAINDEX_LINEAR),
        CellRow("mlp-infonce", "adapter", MLP_INFONCE),
        *[CellRow(name, "adapter", params) for name, params in GRID],
        *[CellRow(name, "adapter", params) for name, params in ALPHA_GRID if name not in GRID_NAMES],
        CellRow("no-skip", "adapter", {**PAPER_DEFAULT, "residual": False}),
        CellRow("pair-mean", "adapter", {**PAPER_DEFAULT, "pair_reduction": "mean"}),
        *[
            CellRow(f"loss-{loss}", "adapter", {**PAPER_DEFAULT, "loss": loss})
            for loss in ("ranknet", "infonce", "softmax", "pointwise")
        ],
        CellRow("query-only", "adapter", FAMILIES["query-only-ranking"][0][1]),
        # what auto trains (its candidates and their parameters) is part of the cell's parameters:
        # changing it recomputes the cells
        CellRow("auto", "family", {"family": "auto", "variants": AUTO_PARAMS}),
        # the same candidates with mixed-precision steps (``fit --precision bfloat16``)
        CellRow(
            "auto-bfloat16", "family", {"family": "auto", "variants": AUTO_PARAMS, "overrides": BFLOAT16}
        ),
        # the same candidates compared by k-fold over the training queries (``fit --selection kfold``)
        CellRow("auto-kfold", "family", {"family": "auto", "variants": AUTO_PARAMS, "selection": "kfold"}),
        # the winner trained again on every training query for its validated step count (``fit --refit-all``)
        CellRow("auto-refit", "family", {"family": "auto", "variants": AUTO_PARAMS, "refit_all": True}),
        CellRow("paper-refit", "family", {"family": "paper", "variants": dict(GRID), "refit_all": True}),
        CellRow("paper-default-refit", "family", {"family": "paper-default", "refit_all": True}),
        CellRow(
            "full-ft",
            "finetune",
            {"max_epochs": 6, "patience": 1, "batch_size": 32, "lr": 5e-5, "autocast": "bf16"},
        ),
    ]
}


@dataclass(frozen=True)
class TableRow:
    """A row of the result tables, made of one cell row, or picked among several on validation."""

    key: str
    label: str
    cells: tuple[str, ...]


def _grid_name(alpha: float, beta: float) -> str:
    name = f"paper(alpha={alpha:g},beta={beta:g})"
    assert name in GRID_NAMES, name
    return name


TABLE_ROWS: dict[str, TableRow] = {
    r.key: r
    for r in [
        TableRow("zero-shot", "zero-shot", ("zero-shot",)),
        TableRow("procrustes", "orthogonal Procrustes query map (closed form)", ("procrustes",)),
        TableRow("least-squares", "ridge least-squares query map (closed form)", ("least-squares",)),
        TableRow(
            "llamaindex-linear",
            "linear query-only, in-batch contrastive (LlamaIndex)",
            ("llamaindex-linear",),
        ),
        TableRow("mlp-infonce", "residual MLP + InfoNCE, no regulariser", ("mlp-infonce",)),
        TableRow("paper", "Search-Adaptor, paper recipe (alpha x beta grid on val)", GRID_NAMES),
        TableRow("paper-default", "paper recipe at alpha 0.1, beta 0.01", (_grid_name(0.1, 0.01),)),
        TableRow(
            "paper-alpha",
            f"paper recipe, alpha from {{{', '.join(f'{a:g}' for a in ALPHA_VALUES)}}} on val (beta 0.01)",
            ALPHA_NAMES,
        ),
        TableRow("no-recovery", "ablation: no recovery loss (alpha 0)", (_grid_name(0, 0.01),)),
        TableRow("no-prediction", "ablation: no prediction loss (beta 0)", (_grid_name(0.1, 0),)),
        TableRow("no-skip", "ablation: no skip connection", ("no-skip",)),
        TableRow(
            "pair-mean",
            "ablation: ranking loss averaged over each query's pairs, not summed",
            ("pair-mean",),
        ),
        TableRow("loss-ranknet", "ablation: RankNet loss", ("loss-ranknet",)),
        TableRow("loss-infonce", "ablation: InfoNCE loss", ("loss-infonce",)),
        TableRow("loss-softmax", "ablation: softmax cross-entropy loss", ("loss-softmax",)),
        TableRow("loss-pointwise", "ablation: point-wise sigmoid loss", ("loss-pointwise",)),
        TableRow("query-only", "Search-Adaptor query-only (paper recipe, no re-index)", ("query-only",)),
        TableRow(
            "auto",
            f"auto, the validated winner (best of {len(AUTO_CANDIDATES)} on validation; `--no-refit-all`)",
            ("auto",),
        ),
        TableRow("auto-bfloat16", "auto, candidates trained with bfloat16 products", ("auto-bfloat16",)),
        TableRow(
            "auto-kfold",
            f"auto, candidates compared by {FOLDS}-fold cross-validation on the training queries",
            ("auto-kfold",),
        ),
        TableRow(
            "auto-refit",
            "auto (library default): the validated winner trained again on every training query for its "
            "validated steps",
            ("auto-refit",),
        ),
        TableRow(
            "paper-refit",
            "paper recipe (alpha x beta grid on val), the winner trained again on every training query",
            ("paper-refit",),
        ),
        TableRow(
            "paper-default-refit",
            "paper recipe at alpha 0.1, beta 0.01, trained again on every training query",
            ("paper-default-refit",),
        ),
        TableRow("full-ft", "full fine-tuning, MNRL (needs the model's weights)", ("full-ft",)),
    ]
}
#: Rows that are not adapters (the `auto` claim is about every adapter row).
NON_ADAPTER = ("zero-shot", "full-ft")
#: Table rows that are one of auto's candidates (same parameters): {row: variant name}.
AUTO_ROWS = {
    key: name
    for key, row in CELL_ROWS.items()
    if row.kind == "adapter"
    for name, params in family_variants("auto")
    if dict(row.params) == dict(params)
}


# -- cache -----------------------------------------------------------------------------------------


def encode_scores(values: np.ndarray) -> str:
    """Per-query scores in [0, 1] as base64 of little-endian uint16 in units of 1e-4."""
    q = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 1e4), 0, 10000).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_scores(text: str) -> np.ndarray:
    """Inverse of :func:`encode_scores`."""
    return np.frombuffer(base64.b64decode(text), dtype="<u2").astype(np.float64) / 1e4


class Cache:
    """``suite_cells.json.gz``: {"cells": {key: cell}, "runs": [...]}, rewritten atomically after every cell.

    Several processes may run at once (one per core): every save takes a lock, re-reads the file and
    merges its own new cells and run record into what is there; a process claims a cell before
    computing it (:meth:`claim`), so processes given overlapping work split it instead of repeating it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells, self.runs = self._read()
        self._new: set[str] = set()

    def _read(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        data = json.loads(gzip.decompress(self.path.read_bytes())) if self.path.is_file() else {}
        return data.get("cells", {}), data.get("runs", [])

    def put(self, key: str, cell: dict[str, Any]) -> None:
        """Record a computed cell (written by the next :meth:`save`)."""
        self.cells[key] = cell
        self._new.add(key)

    def get(self, key: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached cell, unless it was computed with other parameters."""
        cell = self.cells.get(key)
        return cell if cell is not None and cell.get("params") == _jsonable(params) else None

    def claim(self, key: str, params: Mapping[str, Any]) -> bool:
        """Whether this process should compute ``key``: no other live process has claimed it and no
        process has stored it since this cache was read. A claim ends with the process."""
        claims_path = self.path.with_name(self.path.name.replace(".json.gz", ".claims.json"))
        with _locked(self.path.with_suffix(".lock")):
            self.cells.update(self._read()[0])
            if self.get(key, params) is not None:
                return False
            claims = json.loads(claims_path.read_text()) if claims_path.is_file() else {}
            holder = claims.get(key)
            if holder not in (None, os.getpid()) and _alive(holder):
                return False
            claims = {k: pid for k, pid in claims.items() if _alive(pid)} | {key: os.getpid()}
            write_text_atomic(claims_path, json.dumps(claims, indent=1, sort_keys=True))
            return True

    def save(self, run: dict[str, Any] | None = None) -> None:
        """Merge this process's new cells and its ``run`` record into the file, under a lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_suffix(".lock")):
            cells, runs = self._read()
            cells.update({k: self.cells[k] for k in self._new})
            if run is not None:
                runs = [r for r in runs if r.get("id") != run["id"]] + [run]
            self.cells, self.runs = cells, runs
            # one cell per line: the file diffs cleanly when a run adds cells
            body = ",\n".join(
                f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(cells.items())
            )
            text = f'{{"runs": {json.dumps(runs, indent=1)},\n"cells": {{\n{body}\n}}}}\n'
            write_bytes_atomic(self.path, gzip.compress(text.encode(), mtime=0))  # gzip: 8x smaller


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), sort_keys=True))


def cell_key(dataset: str, row: str, seed: int, fold: str, fraction: float = 1.0) -> str:
    """``dataset|row|seed|fold`` (fold ``test`` or ``k0``..), plus ``|f=0.1`` for a share of the queries."""
    key = f"{dataset}|{row}|{seed}|{fold}"
    return key if fraction == 1.0 else f"{key}|f={fraction:g}"


# -- data ------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One dataset with its embeddings and its evaluation protocol (``fit``'s, from the library)."""

    name: str
    dataset: Dataset
    emb: Embeddings
    protocol: str  # "test" or "kfold"
    labelled: dict[str, dict[str, int]]  # the split scored (test split, or the one k-folded)
    train: dict[str, dict[str, int]] = field(default_factory=dict)  # official train split, if any

    def _protocol(self, seed: int) -> Protocol:
        return protocol(self.dataset, FOLDS, seed)

    def folds(self, seed: int) -> list[tuple[str, dict[str, dict[str, int]], dict[str, dict[str, int]]]]:
        """(fold name, training qrels, held-out qrels) for this seed."""
        return self._protocol(seed).folds

    def test_ids(self) -> list[str]:
        """Every scored query, sorted: the order of per-query arrays across seeds."""
        return sorted(self.labelled)


def load_shared(name: str) -> Bench:
    """A dataset of ``../shared/data`` with MiniLM embeddings from the persistent store."""
    from search_adaptor.embed import embed_dataset
    from search_adaptor.encoders.local import SentenceTransformerEncoder

    ds = load_beir(DATA / name)
    emb = embed_dataset(ds, SentenceTransformerEncoder(), progress=False)
    return make_bench(name, ds, emb)


def make_bench(name: str, ds: Dataset, emb: Embeddings) -> Bench:
    """The protocol ``run_fit`` uses: official train/test split if there is one, else k-fold."""
    proto = protocol(ds, FOLDS, 0)
    scored = ds.split(proto.scored_split)
    return Bench(name, ds, emb, proto.name, scored, proto.final_train if proto.name == "test" else {})


def subsample(
    qrels: Mapping[str, Mapping[str, int]], fraction: float, seed: int
) -> dict[str, dict[str, int]]:
    """``fraction`` of the labelled queries, drawn with ``seed`` (nested: 10% is inside 30% for a seed)."""
    ids = labelled_queries(qrels)
    if fraction >= 1.0:
        return {q: dict(qrels[q]) for q in ids}
    n = max(5, round(fraction * len(ids)))
    keep = np.random.default_rng(seed).permutation(len(ids))[:n]
    return {ids[i]: dict(qrels[ids[i]]) for i in sorted(keep)}


# -- computing one cell ----------------------------------------------------------------------------


def cell_params(row: CellRow, max_steps: int | None) -> dict[str, Any]:
    """What a cell was computed with; a change invalidates the cached cell."""
    params = dict(row.params)
    if row.kind in ("adapter", "family") and max_steps is not None:
        params["max_steps"] = max_steps
    return {"kind": row.kind, **params}


def compute_cell(
    bench: Bench,
    row: CellRow,
    seed: int,
    train_qrels: dict[str, dict[str, int]],
    test_qrels: dict[str, dict[str, int]],
    max_steps: int | None,
    keep_history: bool,
    similarity_plot: Path | None,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Train (or fit) one row on ``train_qrels`` and score it on ``test_qrels``."""
    emb = bench.emb
    start = time.perf_counter()
    out: dict[str, Any] = {}
    adapter: Any = None
    eval_emb = emb
    steps = {} if max_steps is None else {"max_steps": max_steps}
    if row.kind == "procrustes":
        adapter = baselines.fit_procrustes(emb, train_qrels)
    elif row.kind == "least-squares":
        adapter = baselines.fit_least_squares(emb, train_qrels, seed)
        out.update(selected=adapter.info["selected"], val=adapter.info["val_ndcg@10"])
    elif row.kind == "adapter":
        adapter = SearchAdaptor(seed=seed, **{**row.params, **steps})
        adapter.fit(emb.queries, emb.corpus, train_qrels, emb.query_ids, emb.doc_ids, encoder=emb.encoder)
    elif row.kind == "family":
        refit = row.params.get("refit_all", False)
        sel = select(
            row.params["family"],
            emb.queries,
            emb.corpus,
            train_qrels,
            emb.query_ids,
            emb.doc_ids,
            seed=seed,
            overrides={**row.params.get("overrides", {}), **steps},
            encoder=emb.encoder,
            selection=row.params.get("selection", DEFAULT_SELECTION),
            refit_all=refit,
        )
        adapter = sel.adapter
        out["selected"] = sel.selected
        # every candidate on the test queries too: is the selection ever significantly below one of them?
        # (k-fold selection refits the winner alone: its candidates are the `auto` cell's, same models)
        # (a refit row's: its winner alone, before the refit, which is all _refit_check reads; the
        # other candidates are the row without refit's)
        out["candidates"] = {
            name: encode_scores(evaluate_embeddings(emb, test_qrels, est, ["ndcg@10"])[1]["ndcg@10"])
            for name, est in sel.fitted.items()
            if not refit or name == sel.selected
        }
    elif row.kind == "finetune":
        from search_adaptor.encoders.local import DEFAULT_MODEL, resolve_model

        ft = baselines.finetune(
            resolve_model(DEFAULT_MODEL),
            emb,
            bench.dataset.queries,
            bench.dataset.doc_texts,
            train_qrels,
            seed,
            log=log,
            **row.params,
        )
        out.update(
            val=ft.best_score,
            zs_val=ft.zero_shot_score,
            best_step=ft.best_epoch,
            n_steps=len(ft.history) - 1,
            history=[[h["epoch"], round(h["ndcg@10"], 4)] for h in ft.history],
            # best epoch == max_epochs flags a model that might have gained from more epochs (the
            # report shows the epochs run, n_steps; cells written earlier say "of {max_epochs}")
            selected=f"best epoch {ft.best_epoch} of at most {row.params['max_epochs']}",
        )
        out["zs_val_store"] = round(float(ft.zero_shot_store_score), 5)
        eval_emb = ft.embed_queries(emb, bench.dataset.queries, sorted(test_qrels))
    train_s = time.perf_counter() - start
    if isinstance(adapter, SearchAdaptor):
        out.update(
            val=adapter.best_score_,
            zs_val=adapter.zero_shot_score_,
            best_step=adapter.best_step_,
            n_steps=adapter.n_steps_,
        )
        if keep_history:
            out["history"] = [[h["step"], round(h["ndcg@10"], 4)] for h in adapter.history_]
    means, per_query, _ = evaluate_embeddings(
        eval_emb, test_qrels, None if row.kind == "finetune" else adapter, metrics=METRICS
    )
    if similarity_plot is not None and adapter is not None:
        from search_adaptor.plots import plot_similarity

        plot_similarity(
            emb,
            test_qrels,
            adapter,
            similarity_plot,
            title=f"{bench.name}, {row.name}, seed {seed}, held-out queries",
        )
    out.update(
        n=len(per_query["ndcg@10"]),
        ndcg=encode_scores(per_query["ndcg@10"]),
        mean={m: round(v, 5) for m, v in means.items()},
        train_s=round(train_s, 2),
        cell_s=round(time.perf_counter() - start, 2),
    )
    if "val" in out:
        out["val"] = round(float(out["val"]), 5)
    if "zs_val" in out:
        out["zs_val"] = round(float(out["zs_val"]), 5)
    return out


# -- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    dataset: str
    row: str
    seed: int
    fraction: float = 1.0


def plan(
    datasets: Sequence[str],
    seeds: int,
    table_rows: Sequence[str],
    fractions: Sequence[float],
    efficiency_dataset: str | None,
    seed_major: bool = False,
) -> list[Task]:
    """Tasks in priority order: each dataset's rows seed by seed (or, with ``seed_major``, seed 0 of
    every dataset first), data efficiency after its dataset, full fine-tuning last."""
    cell_rows = [c for c in CELL_ROWS if any(c in TABLE_ROWS[t].cells for t in table_rows) and c != "full-ft"]
    eff_rows = [
        c for c in CELL_ROWS if any(c in TABLE_ROWS[t].cells for t in EFFICIENCY_ROWS if t in table_rows)
    ]
    main = [Task(n, r, s) for n in datasets for s in range(seeds) for r in cell_rows]
    efficiency = (
        [Task(efficiency_dataset, r, s, f) for s in range(seeds) for f in fractions for r in eff_rows]
        if efficiency_dataset is not None
        else []
    )
    if seed_major:
        tasks = sorted(main, key=lambda t: t.seed) + efficiency  # stable: dataset and row order kept
    else:
        tasks = []
        for name in datasets:
            tasks += [t for t in main if t.dataset == name] + (
                efficiency if name == efficiency_dataset else []
            )
    if "full-ft" in table_rows:
        tasks += [
            Task(n, "full-ft", s)
            for s in range(min(seeds, FINETUNE_SEEDS))
            for n in datasets
            if n in FINETUNE_DATASETS
        ]
    return tasks


def run(
    datasets: Sequence[str] = DATASETS,
    seeds: int = 5,
    table_rows: Sequence[str] = tuple(TABLE_ROWS),
    fractions: Sequence[float] = FRACTIONS,
    budget_minutes: float | None = None,
    max_steps: int | None = None,
    results: Path = RESULTS,
    loader: Callable[[str], Bench] = load_shared,
    command: str = "",
    seed_major: bool = False,
    log: Callable[[str], None] = print,
) -> Cache:
    """Compute every missing cell in priority order (until the budget runs out), then write the report."""
    cache = Cache(results / "suite_cells.json.gz")
    benches: dict[str, Bench] = {}
    started = time.time()
    run_info = {
        "id": f"{os.getpid()}-{started:.0f}",
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": 0.0,
        "cells": 0,
    }

    def bench(name: str) -> Bench:
        if name not in benches:
            benches[name] = loader(name)
        return benches[name]

    eff_dataset = next((d for d in datasets if bench(d).protocol == "test"), None) if fractions else None
    tasks = plan(datasets, seeds, table_rows, fractions, eff_dataset, seed_major)
    for i, task in enumerate(tasks):
        if budget_minutes is not None and time.time() - started > 60 * budget_minutes:
            log(f"budget of {budget_minutes} min spent; {len(tasks) - i} tasks left for a later run")
            break
        b = bench(task.dataset)
        row = CELL_ROWS[task.row]
        params = cell_params(row, max_steps)
        for fold, train_q, test_q in b.folds(task.seed):
            key = cell_key(task.dataset, task.row, task.seed, fold, task.fraction)
            if cache.get(key, params) is not None:
                continue
            if not cache.claim(key, params):
                log(f"{key}: computed or being computed by another process; skipped")
                continue
            first = task.seed == 0 and fold in ("test", "k0") and task.fraction == 1.0
            plot = None
            if first and task.row in [TABLE_ROWS[t].cells[0] for t in SIMILARITY_ROWS]:
                plot = results / "plots" / f"similarity_{_slug(task.dataset)}_{_slug(task.row)}.png"
            cell = compute_cell(
                b,
                row,
                task.seed,
                subsample(train_q, task.fraction, task.seed),
                test_q,
                max_steps,
                keep_history=first,
                similarity_plot=plot,
                log=log,
            )
            cache.put(key, {"params": params, **cell})
            run_info["cells"] += 1
            run_info["wall_s"] = round(time.time() - started, 1)
            cache.save(run_info)
            log(
                f"[{i + 1}/{len(tasks)}] {key}: nDCG@10 {cell['mean']['ndcg@10']:.4f} "
                f"({cell['cell_s']:.1f} s{', ' + cell['selected'] if 'selected' in cell else ''})"
            )
    run_info["wall_s"] = round(time.time() - started, 1)
    cache.save(run_info)
    shown = [d for d in DATASETS if d in datasets or any(k.startswith(f"{d}|") for k in cache.cells)]
    write_report(cache, [bench(d) for d in shown + [d for d in datasets if d not in shown]], seeds, results)
    return cache


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


# -- aggregation -----------------------------------------------------------------------------------


def _pick_on_validation(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rule of ``training.select``: best validation score among candidates that moved off the
    identity (ties to the earlier one); the first candidate, i.e. the identity, if none did."""
    best = cells[0]
    for c in cells[1:]:
        if c["best_step"] > 0 and (best["best_step"] == 0 or c["val"] > best["val"] + 1e-9):
            best = c
    return best


@dataclass
class RowResult:
    """A table row on one dataset: per-seed means, per-query scores averaged over seeds, timings."""

    per_seed: dict[str, list[float]]  # metric -> one mean per complete seed
    per_query: np.ndarray  # nDCG@10 per query (Bench.test_ids order), averaged over seeds
    train_s: list[float]  # training time per seed (summed over folds)
    picked: list[str]  # what validation picked, per seed and fold (rows that select)
    seeds: int
    cells: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)  # (seed, fold): the cell used


def current_cell(cache: Cache, key: str) -> dict[str, Any] | None:
    """The cached cell, unless its row has been redefined since (a ``max_steps`` cap is allowed)."""
    cell = cache.cells.get(key)
    if cell is None:
        return None
    params = {k: v for k, v in cell["params"].items() if k != "max_steps"}
    return cell if params == _jsonable(cell_params(CELL_ROWS[key.split("|")[1]], None)) else None


def aggregate(
    cache: Cache, b: Bench, table_row: TableRow, seeds: Sequence[int], fraction: float = 1.0
) -> RowResult | None:
    """Combine the cells of one table row over folds and seeds; seeds with a missing cell are left out."""
    order = {q: i for i, q in enumerate(b.test_ids())}
    means: dict[str, list[float]] = {m: [] for m in METRICS}
    queries, times, picked = [], [], []
    used: dict[tuple[int, str], dict[str, Any]] = {}
    finetune = len(table_row.cells) == 1 and CELL_ROWS[table_row.cells[0]].kind == "finetune"
    for seed in seeds:
        scores = np.full(len(order), np.nan)
        sums = dict.fromkeys(METRICS, 0.0)
        total_s, complete = 0.0, True
        chosen: list[str] = []
        kept: dict[tuple[int, str], dict[str, Any]] = {}
        for fold, _, test_q in b.folds(seed):
            cells = [current_cell(cache, cell_key(b.name, c, seed, fold, fraction)) for c in table_row.cells]
            if any(c is None for c in cells):
                complete = False
                break
            cell = _pick_on_validation(cells) if len(cells) > 1 else cells[0]
            kept[(seed, fold)] = cell
            if finetune:  # its epochs run, not the cap (a cell's `selected` names max_epochs)
                chosen.append(f"best epoch {cell['best_step']} of {cell['n_steps']} run")
            elif cell.get("best_step") == 0 and "selected" not in cell:
                chosen.append("identity")  # validation kept the zero-shot model
            elif len(cells) > 1:
                chosen.append(table_row.cells[cells.index(cell)])
            elif "selected" in cell:
                chosen.append(cell["selected"])
            ids = sorted(test_q)
            scores[[order[q] for q in ids]] = decode_scores(cell["ndcg"])
            for m in METRICS:
                sums[m] += cell["mean"][m] * cell["n"]
            total_s += sum(c["train_s"] for c in cells)
        if not complete:
            continue
        n = int(np.isfinite(scores).sum())
        for m in METRICS:
            means[m].append(sums[m] / n)
        queries.append(scores)
        times.append(total_s)
        picked += chosen
        used.update(kept)
    if not queries:
        return None
    return RowResult(means, np.mean(queries, axis=0), times, picked, len(queries), used)


def _ms(values: Sequence[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def fmt_p(p: float) -> str:
    """A randomization test's p: 3 decimals, or 2 significant digits below 0.001 (its floor is 1 over
    the flips + 1, never 0)."""
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _counts(names: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _machine() -> str:
    import torch

    from search_adaptor import __version__

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    try:
        import sentence_transformers

        st = f", sentence-transformers {sentence_transformers.__version__}"
    except ImportError:
        st = ""
    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}, "
        f"torch {torch.__version__} (CPU), numpy {np.__version__}{st}, search-adaptor {__version__}"
    )


def _computed_when(cache: Cache) -> str:
    """When the cells were computed, from the cache's run log: over days and machines (the log does
    not record which), so training times and the last float32 bits compare within one run only."""
    started = sorted(run["started"] for run in cache.runs)
    if not started:
        return "the cache records no runs."
    return (
        f"the cells were computed by {len(started)} runs started between {started[0][:10]} and "
        f"{started[-1][:10]}, on more than one 2-core machine (an Intel Xeon, then an AMD EPYC): "
        "training times and the last bits of float32 training compare within one run only."
    )


# -- the report ------------------------------------------------------------------------------------


def write_report(cache: Cache, benches: Sequence[Bench], seeds: int, results: Path) -> Path:
    """Regenerate ``suite.md`` and the cached-result plots from the cache."""
    from search_adaptor.plots import plot_data_efficiency, plot_learning_curves

    caps = sorted({c["params"]["max_steps"] for c in cache.cells.values() if "max_steps" in c["params"]})
    fractions = sorted({float(k.rsplit("|f=", 1)[1]) for k in cache.cells if "|f=" in k})
    eff_dataset = next(
        (b.name for b in benches if any(k.startswith(f"{b.name}|") and "|f=" in k for k in cache.cells)), None
    )
    plots = results / "plots"
    rel = os.path.relpath(plots, ROOT) if plots.is_relative_to(ROOT) else str(plots)
    seed_list = list(range(seeds))
    lines = [
        "## Suite: baselines, the paper's recipe, ablations and `auto`, over seeds",
        "",
        "Generated by `HF_HUB_OFFLINE=1 python benchmarks/suite.py` (resumable: every cell is cached in "
        "`suite_cells.json.gz` beside this section's `suite.md`, `benchmarks/results/` unless `--results` "
        "says otherwise; `--report-only` rebuilds this section).",
        f"Machine: this report was assembled on {_machine()}; {_computed_when(cache)}",
        "Encoder: sentence-transformers/all-MiniLM-L6-v2 (384-d), frozen; adapters see its embeddings only.",
        "Training budget: max_steps "
        + ("= library default (2000)" if not caps else f"capped at {', '.join(map(str, caps))} in some cells")
        + ", early stopping on validation nDCG@10 (patience 125 steps), identity kept when nothing beats it.",
        "",
        "Protocol: SciFact trains on its official train split and is scored on its 300 test queries; "
        "Cranfield and XQuAD-R have one labelled split and are scored by 5-fold cross-validation (each "
        "fold's model trained and validated on the other four folds; a different fold assignment per "
        "seed), so every query is scored once per seed by a model that never saw it. Every model "
        "validates on the same 20% of its training queries (drawn from the seed). Cells are mean ± sample "
        "std over seeds of the test nDCG@10. p: two-sided paired randomization test (10,000 sign flips) on "
        "per-query nDCG@10 averaged over seeds, row vs zero-shot; **bold** marks p < "
        f"{P_SIGNIFICANT} and a gain, *italics* a significant loss. Train s: training + selection wall "
        "time per seed (summed over the 5 folds for k-fold), on this shared 2-core machine.",
        "",
    ]
    lines += _progress(cache, benches, seeds)
    results_by = {
        b.name: {
            k: aggregate(cache, b, r, seed_list[:FINETUNE_SEEDS] if k == "full-ft" else seed_list)
            for k, r in TABLE_ROWS.items()
        }
        for b in benches
    }
    lines += _summary(cache, benches, results_by, seed_list)
    lines += _scenarios(benches, results_by)
    lines += _claims(benches, results_by)
    lines += _precision_check(benches, results_by)
    lines += _refit_check(cache, benches, seed_list, results_by)
    lines += [
        line
        for row in ("auto-refit", "auto", "auto-bfloat16", "auto-kfold")
        for line in _auto_vs_candidates(cache, benches, seed_list, row)
    ]
    lines += _partial_finetuning(cache, benches, results_by)
    lines += _finetuning_costs(cache, benches)
    notes: list[str] = []
    for b in benches:
        lines += _dataset_section(cache, b, results_by[b.name], seed_list, plots, rel, notes)
    if eff_dataset is not None:
        lines += _efficiency(
            cache,
            next(b for b in benches if b.name == eff_dataset),
            seed_list,
            fractions,
            results_by[eff_dataset],
            plots,
            rel,
            plot_data_efficiency,
        )
    lines += ["", "### Where the adapter does not win", ""]
    lines += [f"- {n}" for n in notes] or [
        "- every adapter row beat zero-shot significantly on every dataset."
    ]
    for b in benches:
        histories = _histories(cache, b)
        if histories:
            plot_learning_curves(
                histories,
                plots / f"curves_{_slug(b.name)}.png",
                title=f"{b.name}: validation nDCG@10, seed 0, first fold",
            )
    out = results / "suite.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


#: The paper's three scenarios and the shared datasets that stand for them here.
SCENARIOS = (
    ("English retrieval", ("scifact", "cranfield")),
    ("multilingual retrieval", ("xquad-r/en", "xquad-r/de", "xquad-r/es", "xquad-r/ru", "xquad-r/zh")),
    ("tool retrieval", ("metatool",)),
)
#: What the scenario table compares: zero-shot, the paper's recipe, the best baseline kind, the default.
SCENARIO_ROWS = ("zero-shot", "paper", "paper-default", "llamaindex-linear", "auto", "auto-refit")


def _scenarios(
    benches: Sequence[Bench], results_by: Mapping[str, Mapping[str, RowResult | None]]
) -> list[str]:
    """The paper's three scenarios side by side: per dataset, zero-shot, the paper's recipe (grid and
    default), the LlamaIndex-style linear baseline and ``auto`` (validated, and refitted as ``fit``
    ships it), with the paper's recipe tested against zero-shot and ``auto-refit`` against it."""
    present = {b.name for b in benches}
    lines = [
        "### The paper's three scenarios",
        "",
        "Test nDCG@10, mean ± std over seeds ((n): seeds when fewer than 5; –: not run after the loss fix). "
        "p: paired randomization test over queries, `paper` vs zero-shot and `auto-refit` (what `fit` "
        "ships by default) vs `paper`.",
        "",
        "| scenario | dataset | "
        + " | ".join(f"`{r}`" for r in SCENARIO_ROWS)
        + " | p paper vs zero-shot | p auto-refit vs paper |",
        "|---|---|" + "---|" * (len(SCENARIO_ROWS) + 2),
    ]
    for scenario, names in SCENARIOS:
        for name in (n for n in names if n in present):
            res = results_by[name]
            cells = []
            for row in SCENARIO_ROWS:
                r = res.get(row)
                if r is None:
                    cells.append("–")
                    continue
                values = r.per_seed["ndcg@10"]
                seeds = "" if r.seeds >= 5 else f" ({r.seeds})"
                spread = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
                cells.append(f"{np.mean(values):.3f}{spread}{seeds}")
            paper, zero, default = res.get("paper"), res.get("zero-shot"), res.get("auto-refit")
            p_zero = fmt_p(paired_test(paper.per_query, zero.per_query)) if paper and zero else "–"
            p_auto = fmt_p(paired_test(default.per_query, paper.per_query)) if paper and default else "–"
            lines.append(f"| {scenario} | {name} | " + " | ".join(cells) + f" | {p_zero} | {p_auto} |")
    return [*lines, ""]


#: The paper's claims, each as (claim, the row it is about, the row it beats).
CLAIMS = (
    ("the recovery loss helps", "paper-default", "no-recovery"),
    ("the prediction loss helps", "paper-default", "no-prediction"),
    ("the skip connection matters", "paper-default", "no-skip"),
    ("the shared adapter beats query-only", "paper-default", "query-only"),
    ("summing the pairwise loss over pairs beats averaging it", "paper-default", "pair-mean"),
    ("the pairwise ranking loss beats InfoNCE", "paper-default", "loss-infonce"),
    ("the pairwise ranking loss beats softmax cross-entropy", "paper-default", "loss-softmax"),
    ("the pairwise ranking loss beats point-wise sigmoid", "paper-default", "loss-pointwise"),
    ("the alpha/beta grid on validation beats the default", "paper", "paper-default"),
    ("a finer alpha grid on validation beats the default", "paper-alpha", "paper-default"),
)


def _claims(benches: Sequence[Bench], results_by: Mapping[str, Mapping[str, RowResult | None]]) -> list[str]:
    """Each claim of the paper, per dataset: the difference in test nDCG@10 (mean over seeds) and the
    paired randomization p-value over queries; 'holds' needs a gain with p < 0.05, 'reversed' a
    significant loss, anything else is 'not shown'."""
    names = [b.name for b in benches]
    lines = [
        "### The paper's claims, measured",
        "",
        "Δ: test nDCG@10 of the first row minus the second (mean over the seeds both have), p: paired "
        "randomization test over queries (per-query scores averaged over seeds). **holds**: a gain with "
        f"p < {P_SIGNIFICANT}; *reversed*: a significant loss; otherwise not shown.",
        "",
        "| claim (row vs row) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for text, row, other in CLAIMS:
        cells = []
        for name in names:
            a, b = results_by[name].get(row), results_by[name].get(other)
            if a is None or b is None:
                cells.append("–")
                continue
            delta = float(np.mean(a.per_seed["ndcg@10"]) - np.mean(b.per_seed["ndcg@10"]))
            p = paired_test(a.per_query, b.per_query)
            verdict = (
                "**holds**"
                if p < P_SIGNIFICANT and delta > 0
                else "*reversed*"
                if p < P_SIGNIFICANT
                else "not shown"
            )
            cells.append(f"{delta:+.3f}, p {fmt_p(p)}: {verdict}")
        lines.append(f"| {text} (`{row}` vs `{other}`) | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _precision_check(
    benches: Sequence[Bench], results_by: Mapping[str, Mapping[str, RowResult | None]]
) -> list[str]:
    """``auto`` (float32, the default) against the same candidates trained with bfloat16 products
    (``fit --precision bfloat16``): what mixed precision costs in test nDCG@10, per dataset."""
    rows = []
    for b in benches:
        full, mixed = results_by[b.name].get("auto"), results_by[b.name].get("auto-bfloat16")
        if mixed is None or full is None:
            continue
        f, a = full.per_seed["ndcg@10"], mixed.per_seed["ndcg@10"]
        p = paired_test(mixed.per_query, full.per_query)
        rows.append(
            f"| {b.name} | {_ms(f)} ({full.seeds}) | {_ms(a)} ({mixed.seeds}) | "
            f"{np.mean(a) - np.mean(f):+.4f} | {fmt_p(p)} |"
        )
    if not rows:
        return []
    return [
        "### `auto` in float32 (the default) against the same candidates with bfloat16 products",
        "",
        "Test nDCG@10, mean ± sample std over seeds (seeds in brackets); Δ: bfloat16 minus float32; p: "
        "paired randomization test over queries (per-query scores averaged over seeds). Speed: the section "
        "'Fit speed on cached embeddings' (`benchmarks/fit_speed.py`).",
        "",
        "| dataset | `auto` (float32) | `auto-bfloat16` | Δ | p |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _refit_check(
    cache: Cache,
    benches: Sequence[Bench],
    seeds: Sequence[int],
    results_by: Mapping[str, Mapping[str, RowResult | None]],
) -> list[str]:
    """Each ``--refit-all`` row against the validated winner it refitted (the same cell: the same
    run, machine and candidates) and against the row without refit (its own cells)."""
    order_rows = []
    for b in benches:
        order = {q: i for i, q in enumerate(b.test_ids())}
        for row, base in REFITS.items():
            refit, winner = [], []
            for seed in seeds:
                mine, theirs = np.full(len(order), np.nan), np.full(len(order), np.nan)
                for fold, _, test_q in b.folds(seed):
                    cell = current_cell(cache, cell_key(b.name, row, seed, fold))
                    if cell is None:
                        break
                    rows = [order[q] for q in sorted(test_q)]
                    mine[rows] = decode_scores(cell["ndcg"])
                    # the identity winning trains nothing more: the validated winner is what shipped
                    theirs[rows] = decode_scores(cell["candidates"].get(cell["selected"], cell["ndcg"]))
                else:
                    refit.append(mine)
                    winner.append(theirs)
            if not refit:
                continue
            a, w = np.mean(refit, axis=0), np.mean(winner, axis=0)
            cells = [
                f"{w.mean():.4f}",
                f"{a.mean():.4f}",
                f"{a.mean() - w.mean():+.4f}",
                fmt_p(paired_test(a, w)),
            ]
            other = results_by[b.name].get(base)
            if other is None:
                cells += ["–", "–", "–"]
            else:
                o = other.per_query
                cells += [
                    f"{o.mean():.4f} ({other.seeds})",
                    f"{a.mean() - o.mean():+.4f}",
                    fmt_p(paired_test(a, o)),
                ]
            order_rows.append(f"| {b.name} | `{row}` | {len(refit)} | " + " | ".join(cells) + " |")
    if not order_rows:
        return []
    return [
        "### The winner trained again on every training query (`fit --refit-all`)",
        "",
        "Each refit row trains its family as the row without refit does, then trains the winner again on "
        "all the training queries, validation's included, for the steps its validation chose "
        "(`SearchAdaptor.refit_all`). Test nDCG@10, means over seeds (seeds in the third column); "
        "'validated winner': the same cells' winner before the refit (the same run and machine); the "
        "row without refit: its own cells, which may come from another machine or library version "
        "(float32 training does not reproduce bit for bit across those; seeds in brackets). p: paired "
        "randomization test over queries, per-query scores averaged over seeds.",
        "",
        "| dataset | row | seeds | validated winner | refit | Δ | p | row without refit | Δ | p |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *order_rows,
        "",
    ]


def _with_candidates(
    cache: Cache, b: Bench, seeds: Sequence[int], row: str = "auto"
) -> dict[str | None, list[np.ndarray]]:
    """Per-query test nDCG@10 of ``row`` (an ``auto`` row) under None, of each of its candidates by
    name (as its cells, or ``auto``'s for ``auto-kfold``, stored them) and of ``auto`` under "auto":
    one array per seed whose cells all scored their candidates (Bench.test_ids order)."""
    order = {q: i for i, q in enumerate(b.test_ids())}
    runs: dict[str | None, list[np.ndarray]] = {}
    for seed in seeds:
        per: dict[str | None, np.ndarray] = {}
        for fold, _, test_q in b.folds(seed):
            cell = current_cell(cache, cell_key(b.name, row, seed, fold))
            source = current_cell(cache, cell_key(b.name, CANDIDATES_OF.get(row, row), seed, fold))
            default = current_cell(cache, cell_key(b.name, "auto", seed, fold))
            if cell is None or source is None or "candidates" not in source or default is None:
                per = {}
                break
            rows = [order[q] for q in sorted(test_q)]
            scored = {None: cell["ndcg"], **source["candidates"], "auto": default["ndcg"]}
            for name, text in scored.items():
                per.setdefault(name, np.full(len(order), np.nan))[rows] = decode_scores(text)
        for name, scores in per.items():
            runs.setdefault(name, []).append(scores)
    return runs


def _auto_vs_candidates(
    cache: Cache, benches: Sequence[Bench], seeds: Sequence[int], row: str = "auto"
) -> list[str]:
    """``row`` (an ``auto`` row) against each of its own candidates on the test queries (cells that
    scored them all): does selection ship something worse than a candidate? ``auto-kfold`` refits its
    winner alone; its candidates (the same models: parameters, seed, training queries) are ``auto``'s.
    Another row than ``auto`` is also set against ``auto`` itself, the library's default."""
    columns = [*AUTO_CANDIDATES, *(["auto"] if row != "auto" else [])]  # what the row is set against
    lines: list[str] = []
    for b in benches:
        runs = _with_candidates(cache, b, seeds, row)
        if not runs:
            continue
        mine = np.mean(runs[None], axis=0)
        cells = []
        for name in columns:
            cand = np.mean(runs[name], axis=0)
            p = paired_test(mine, cand)
            below = p < P_SIGNIFICANT and mine.mean() < cand.mean()
            text = f"{cand.mean():.4f} ({mine.mean() - cand.mean():+.4f}, p {fmt_p(p)})"
            cells.append(f"**{text}: {row} below**" if below else text)
        lines.append(f"| {b.name} | {len(runs[None])} | {mine.mean():.4f} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [
        f"### `{row}` against each of its candidates, on the test queries",
        "",
        f"Every candidate `{row}` trained, scored on the test queries as well (selection never sees them). "
        "Per candidate: its test nDCG@10 (mean over seeds), the row minus it, and p (paired randomization "
        "test over queries, per-query scores averaged over seeds); **bold**: it is significantly below one."
        + (" Last column: `auto` itself (the validated winner), the same test." if row != "auto" else "")
        + (
            f" `{row}` ships its winner trained again on every training query, the validation ones "
            "too; the candidates are scored as `auto` validated them (the same models, before any refit), "
            "so this sets what `fit` ships against each candidate a fit without the refit could ship."
            if row in REFITS
            else ""
        ),
        "",
        f"| dataset | seeds | `{row}` | " + " | ".join(f"`{n}`" for n in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
        *lines,
        "",
    ]


def _partial_finetuning(
    cache: Cache, benches: Sequence[Bench], results_by: Mapping[str, Mapping[str, RowResult | None]]
) -> list[str]:
    """Full fine-tuning cells that no table shows (no complete seed, or an earlier row definition).

    They are too expensive to throw away silently and too incomplete to average: list them as they are.
    """
    lines = []
    for b in benches:
        if results_by[b.name].get("full-ft") is not None:
            continue
        for key in sorted(k for k in cache.cells if k.startswith(f"{b.name}|full-ft|")):
            cell = cache.cells[key]
            stale = (
                "" if current_cell(cache, key) is not None else " (earlier settings, not the current row's)"
            )
            p = cell["params"]
            lines.append(
                f"- `{key}`: test nDCG@10 {cell['mean']['ndcg@10']:.4f} on its {cell['n']} queries, "
                f"{cell['train_s']:.0f} s, lr {p['lr']}, at most {p['max_epochs']} epochs, "
                f"{p.get('autocast', 'float32')}, best epoch "
                f"{cell['best_step']}{stale}"
            )
    if not lines:
        return []
    head = (
        "Full fine-tuning cells computed so far but not in the table (a k-fold seed counts only with all "
        "its folds; a cell from earlier settings is not averaged with the current row's):"
    )
    return ["", head, "", *lines, ""]


def _finetuning_costs(cache: Cache, benches: Sequence[Bench]) -> list[str]:
    """What full fine-tuning cost on this machine and how its settings behaved, from its cells."""
    p = CELL_ROWS["full-ft"].params
    lines = []
    for b in benches:
        cells = {
            k: c
            for k in cache.cells
            if k.startswith(f"{b.name}|full-ft|") and (c := current_cell(cache, k)) is not None
        }
        if not cells:
            continue
        per_seed: dict[str, float] = {}
        for k, c in cells.items():
            per_seed[k.split("|")[2]] = per_seed.get(k.split("|")[2], 0.0) + c["cell_s"]
        complete = [
            s
            for s in per_seed
            if all(cell_key(b.name, "full-ft", int(s), f) in cells for f, _, _ in b.folds(int(s)))
        ]
        minutes = [per_seed[s] / 60 for s in complete]
        drift = [abs(c["zs_val"] - c["zs_val_store"]) for c in cells.values() if "zs_val_store" in c]
        epochs = [f"{c['best_step']}/{c['n_steps']}" for c in cells.values()]
        lines.append(
            f"- {b.name}: {len(cells)} models ({len(complete)} complete "
            + ("seed" if len(complete) == 1 else "seeds")
            + (
                f", {np.mean(minutes):.0f} min per seed, {min(minutes):.0f}-{max(minutes):.0f}"
                if minutes
                else ""
            )
            + f"); best epoch / epochs run per model: {_counts(epochs)}"
            + (
                f"; zero-shot validation nDCG@10 embedded in {p['autocast']} vs the float32 store: mean "
                f"|Δ| {np.mean(drift):.4f}, max {max(drift):.4f}"
                if drift
                else ""
            )
            + "."
        )
    if not lines:
        return []
    head = (
        "Full fine-tuning, cost and behaviour (one process on one core; MultipleNegativesRankingLoss, "
        f"AdamW at lr {p['lr']} with 10% linear warm-up, batches of {p['batch_size']} with no repeated "
        f"query or document, at most {p['max_epochs']} epochs, stop after {p['patience']} epoch without "
        "a validation gain, best epoch kept, epoch 0 = the base model competing; every validation "
        "re-embeds the whole corpus; forward passes run in "
        f"{p['autocast']} autocast (this CPU has AMX), weights and optimiser state in float32):"
    )
    return ["", head, "", *lines, ""]


def _progress(cache: Cache, benches: Sequence[Bench], seeds: int) -> list[str]:
    names = {b.name for b in benches}
    keys = [k for k in cache.cells if k.split("|")[0] in names and current_cell(cache, k) is not None]
    main = [k for k in keys if "|f=" not in k]
    compute_s = sum(cache.cells[k]["cell_s"] for k in keys)
    ft_s = sum(cache.cells[k]["cell_s"] for k in keys if k.split("|")[1] == "full-ft")
    total = 0
    for b in benches:
        total += seeds * len(b.folds(0)) * len([c for c in CELL_ROWS if c != "full-ft"])
        if b.name in FINETUNE_DATASETS:
            total += min(seeds, FINETUNE_SEEDS) * len(b.folds(0))
    runs = [r for r in cache.runs if r.get("cells")]
    starts = [time.mktime(time.strptime(r["started"], "%Y-%m-%d %H:%M:%S")) for r in runs]
    spans = [(t, t + r["wall_s"]) for t, r in zip(starts, runs, strict=True)]
    # the most runs that were going at once: a cell's wall time is only comparable at equal load
    overlap = max((sum(a <= t < b for a, b in spans) for t, _ in spans), default=0)
    commands = sorted({r["command"] for r in runs if r["command"]})
    return [
        f"Progress: {len(main)} of the {total} cells of the tables below, plus {len(keys) - len(main)} "
        f"data-efficiency cells. Compute: {compute_s / 3600:.1f} h summed over cells (full fine-tuning "
        f"{ft_s / 3600:.1f} h of it), in {len(runs)} runs taking {sum(b - a for a, b in spans) / 3600:.1f} h "
        f"of wall time together, at most {overlap} at a time on this 2-core machine, on disjoint cells. "
        "Commands: " + "; ".join(f"`{c}`" for c in commands) + "." + _uncovered(cache, benches, seeds),
        "",
    ]


#: Where cells came from that no recorded command computes under their current row (see _uncovered).
ORIGINS = {
    "auto-bfloat16": "computed under row `auto` by the run recorded as `python benchmarks/suite.py --rows "
    "auto --seeds 5`, while `auto` trained its candidates with bfloat16 products, and moved to this row "
    "by commit 928a7ef, when float32 became the default",
}


def _uncovered(cache: Cache, benches: Sequence[Bench], seeds: int) -> str:
    """The cells of the tables that none of the recorded commands would compute if run again (each
    computes what its datasets, rows and seeds lack): ' Not computed by any of these commands: ...', or ''."""
    protocols = {b.name: b.protocol for b in benches}
    covered: set[tuple[str, str, int, float]] = set()
    prefix = ["python", "benchmarks/suite.py"]
    for run in cache.runs:
        argv = shlex.split(run.get("command", ""))
        if argv[:2] != prefix:
            continue
        try:
            args, _ = _parser(exit_on_error=False).parse_known_args(argv[2:])
        except argparse.ArgumentError:  # a row or option since renamed: it computes none of today's cells
            continue
        eff = next((d for d in args.datasets if protocols.get(d) == "test"), None) if args.fractions else None
        for t in plan(args.datasets, args.seeds, args.rows, args.fractions, eff, args.seed_major):
            covered.add((t.dataset, t.row, t.seed, t.fraction))
    shown = {c for key in EFFICIENCY_ROWS for c in TABLE_ROWS[key].cells}
    missing: dict[str, dict[str, int]] = {}
    for key in cache.cells:
        name, row, seed, *rest = key.split("|")
        fraction = float(rest[1][2:]) if len(rest) > 1 else 1.0
        if name not in protocols or int(seed) >= seeds or (fraction != 1.0 and row not in shown):
            continue
        if current_cell(cache, key) is not None and (name, row, int(seed), fraction) not in covered:
            missing.setdefault(row, {})
            missing[row][name] = missing[row].get(name, 0) + 1
    if not missing:
        return ""
    return (
        " Not computed by any of these commands: "
        + "; ".join(
            f"`{row}` on {', '.join(f'{name} ({n} cells)' for name, n in by.items())}"
            + (f", {ORIGINS[row]}" if row in ORIGINS else "")
            + (
                f" (the command that covers them: `python benchmarks/suite.py --datasets {' '.join(by)} "
                f"--rows {row}`)"
                if row in TABLE_ROWS
                else ""
            )
            for row, by in missing.items()
        )
        + "."
    )


def _same_as_candidate(
    cache: Cache, benches: Sequence[Bench], key: str, variant: str, seeds: Sequence[int]
) -> tuple[int, int]:
    """(cells where row ``key`` has exactly the test scores ``auto``'s cell stored for its candidate
    ``variant``, cells where both are there), over ``benches`` and ``seeds``."""
    same = total = 0
    for b in benches:
        for seed in seeds:
            for fold, _, _ in b.folds(seed):
                mine = current_cell(cache, cell_key(b.name, key, seed, fold))
                auto = current_cell(cache, cell_key(b.name, "auto", seed, fold))
                if mine is None or auto is None or variant not in auto.get("candidates", {}):
                    continue
                total += 1
                same += mine["ndcg"] == auto["candidates"][variant]
    return same, total


def _candidate_rows_note(cache: Cache, benches: Sequence[Bench], seeds: Sequence[int]) -> str:
    """How the rows with the parameters of one of auto's candidates relate to its cells."""
    parts = []
    for key, variant in AUTO_ROWS.items():
        same, total = _same_as_candidate(cache, benches, key, variant, seeds)
        label = TABLE_ROWS[key].label
        if same == total:
            parts.append(
                f"{label} is its candidate `{variant}` (same parameters, seed and validation split"
                + (f"; identical test scores in all {total} cells)" if total else ")")
            )
        else:
            parts.append(
                f"{label} has the parameters, seed and validation split of its candidate `{variant}` but "
                "not its cells: the two were trained in separate runs, on other machines or library "
                "versions, and float32 training does not reproduce bit for bit across those (identical "
                f"test scores in {same} of {total} cells; the readings below set auto against its own "
                f"`{variant}`)"
            )
    return "; " + ", ".join(parts) if parts else ""


def _summary(
    cache: Cache,
    benches: Sequence[Bench],
    results_by: Mapping[str, Mapping[str, RowResult | None]],
    seeds: Sequence[int],
) -> list[str]:
    lines = [
        "### Test nDCG@10, every row on every dataset",
        "",
        "| row | " + " | ".join(b.name for b in benches) + " |",
        "|---|" + "---|" * len(benches),
    ]
    for key, tr in TABLE_ROWS.items():
        cells = []
        for b in benches:
            r = results_by[b.name][key]
            zs = results_by[b.name]["zero-shot"]
            if r is None:
                cells.append("–")
                continue
            text = _ms(r.per_seed["ndcg@10"], 3) + (f" ({r.seeds})" if r.seeds < 5 else "")
            if zs is not None and key != "zero-shot":
                p = paired_test(r.per_query, zs.per_query)
                gain = np.mean(r.per_seed["ndcg@10"]) - np.mean(zs.per_seed["ndcg@10"])
                text = (
                    f"**{text}**"
                    if p < P_SIGNIFICANT and gain > 0
                    else f"*{text}*"
                    if p < P_SIGNIFICANT
                    else text
                )
            cells.append(text)
        lines.append(f"| {tr.label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(n) after a cell: number of seeds when fewer than 5 are done. Reading the rows: the ablations "
        "change one thing of the paper recipe at alpha 0.1, beta 0.01. The RankNet ablation drops the "
        "grade weighting of the paper's pairwise loss, so it is the same objective on binary qrels "
        "(SciFact, XQuAD-R) and differs only on Cranfield's graded ones. `auto` trains "
        f"{', '.join(AUTO_CANDIDATES)} and keeps the best on validation"
        + _candidate_rows_note(cache, benches, seeds)
        + ". In the per-dataset tables, 'picked on validation' counts what selection chose per seed and "
        "fold, 'identity' where no trained checkpoint beat zero-shot on validation.",
        "",
    ]
    return lines


def _dataset_section(
    cache: Cache,
    b: Bench,
    res: Mapping[str, RowResult | None],
    seeds: Sequence[int],
    plots: Path,
    rel: str,
    notes: list[str],
) -> list[str]:
    zs = res["zero-shot"]
    if zs is None:
        return []
    zs_mean = float(np.mean(zs.per_seed["ndcg@10"]))
    lines = [
        f"### {b.name} ({b.protocol}: {len(b.test_ids())} scored queries, {len(b.emb.doc_ids)} documents)",
        "",
        "| row | nDCG@10 | Δ vs zero-shot | p vs zero-shot | recall@100 | MRR@10 | train s / seed | seeds | "
        "picked on validation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    adapters: dict[str, RowResult] = {}
    for key, tr in TABLE_ROWS.items():
        r = res[key]
        if r is None:
            continue
        mean = float(np.mean(r.per_seed["ndcg@10"]))
        delta = mean - zs_mean
        if key == "zero-shot":
            p_text, d_text = "–", "–"
        else:
            p = paired_test(r.per_query, zs.per_query)
            p_text = fmt_p(p)
            verdict = ""
            if p < P_SIGNIFICANT and delta < 0:
                verdict = " (significantly below zero-shot)"
            elif p >= P_SIGNIFICANT and abs(delta) < 1e-3:
                verdict = " (no measurable change)"
            elif p >= P_SIGNIFICANT:
                verdict = f" ({'gain' if delta > 0 else 'loss'} not significant)"
            d_text = f"{delta:+.4f}{verdict}"
            if verdict:
                notes.append(
                    f"{b.name}: {tr.label} {mean:.4f} vs zero-shot {zs_mean:.4f}, p = {p_text}"
                    f"{verdict.replace(' (', ' — ').rstrip(')')}."
                )
            if key not in NON_ADAPTER:
                adapters[key] = r
        lines.append(
            f"| {tr.label} | {_ms(r.per_seed['ndcg@10'])} | {d_text} | {p_text} | "
            f"{np.mean(r.per_seed['recall@100']):.4f} | {np.mean(r.per_seed['mrr@10']):.4f} | "
            f"{_ms(r.train_s, 1) if key != 'zero-shot' else '–'} | {r.seeds} | {_counts(r.picked)} |"
        )
    lines.append("")
    if "auto" in adapters and len(adapters) > 1:
        auto = adapters["auto"]
        others = {k: v for k, v in adapters.items() if k != "auto"}
        best_key = max(others, key=lambda k: np.mean(others[k].per_seed["ndcg@10"]))
        best = others[best_key]
        p = paired_test(auto.per_query, best.per_query)
        a_mean, b_mean = np.mean(auto.per_seed["ndcg@10"]), np.mean(best.per_seed["ndcg@10"])
        verdict = (
            ("significantly better than" if p < P_SIGNIFICANT else "at least as good as")
            if a_mean >= b_mean
            else ("below, but not significantly below," if p >= P_SIGNIFICANT else "significantly below")
        )
        lines.append(
            f"`auto` vs the best other adapter row ({TABLE_ROWS[best_key].label}): {a_mean:.4f} vs "
            f"{b_mean:.4f}, p = {fmt_p(p)}: auto is {verdict} it."
        )
        if a_mean < b_mean:
            why = _why_auto_below(cache, b, seeds, auto, best_key, best, p)
            notes.append(
                f"{b.name}: auto ({a_mean:.4f}) is {verdict} {TABLE_ROWS[best_key].label} "
                f"({b_mean:.4f}), p = {fmt_p(p)}. Why: {why}"
            )
        lines.append("")
    grid = [(name, aggregate(cache, b, TableRow(name, name, (name,)), seeds)) for name in GRID_NAMES]
    if all(g is not None for _, g in grid) and res["paper"] is not None:
        lines += [
            "Paper grid, each (alpha, beta) on its own (test nDCG@10; picked: how often validation "
            "chose it):",
            "",
            "| variant | nDCG@10 | picked |",
            "|---|---|---|",
        ]
        for name, g in grid:
            assert g is not None
            lines.append(f"| {name} | {_ms(g.per_seed['ndcg@10'])} | {res['paper'].picked.count(name)} |")
        lines.append("")
    figures = []
    for key in SIMILARITY_ROWS:
        png = plots / f"similarity_{_slug(b.name)}_{_slug(TABLE_ROWS[key].cells[0])}.png"
        if png.is_file():
            figures.append(f"[cosine similarities, {key}]({rel}/{png.name})")
    if (plots / f"curves_{_slug(b.name)}.png").is_file() or _histories(cache, b):
        figures.append(f"[validation learning curves]({rel}/curves_{_slug(b.name)}.png)")
    if figures:
        lines += ["Figures: " + " · ".join(figures), ""]
    return lines


def _why_auto_below(
    cache: Cache, b: Bench, seeds: Sequence[int], auto: RowResult, key: str, best: RowResult, p: float
) -> str:
    """Why ``auto`` is below the adapter row ``key`` on ``b``, from the stored cells only: what auto
    picked, how the row's validation score compares with that of auto's pick on the same split, and
    for a row with the parameters of one of auto's candidates, auto against that candidate's own cells."""
    n_val = len(baselines.validation_split(b.folds(0)[0][1], 0)[1])
    unit = "fold" if b.protocol == "kfold" else "seed"
    label = TABLE_ROWS[key].label
    noise = p >= P_SIGNIFICANT
    both = [sf for sf in auto.cells if sf in best.cells]
    valid = [sf for sf in both if "val" in auto.cells[sf] and "val" in best.cells[sf]]
    above = sum(best.cells[sf]["val"] > auto.cells[sf]["val"] + 1e-9 for sf in valid)
    gap = float(np.mean([best.cells[sf]["val"] - auto.cells[sf]["val"] for sf in valid])) if valid else 0.0
    on_val = (
        f"its validation nDCG@10 (the split auto selects on) is above that of auto's pick in {above} of "
        f"{len(valid)} {unit}s (mean {gap:+.4f})"
    )
    if key in AUTO_ROWS:
        variant = AUTO_ROWS[key]
        runs = _with_candidates(cache, b, seeds)
        if variant not in runs:
            return f"{label} has the parameters of auto's candidate `{variant}` (its test scores not stored)."
        own = np.mean(runs[variant], axis=0)
        mine = np.mean(runs[None], axis=0)
        p_own, delta = paired_test(mine, own), float(mine.mean() - own.mean())
        same, total = _same_as_candidate(cache, [b], key, variant, seeds)
        head = (
            f"{label} is auto's candidate `{variant}` (identical test scores in all {total} {unit}s)"
            if same == total
            else f"{label} has the parameters of auto's candidate `{variant}` but was trained separately "
            f"(identical test scores in {same} of {total} {unit}s: see the reading note under the main "
            "suite table); "
            f"auto's own `{variant}` scored {own.mean():.4f} on the test queries, auto {delta:+.4f}, "
            f"p = {fmt_p(p_own)}"
        )
        if delta >= 0:
            return head + f"; auto is not below its own `{variant}`: the gap is between two trainings of it."
        kept_identity = any(is_kept_start(x) for x in auto.picked)
        return (
            head + f"; selection on {n_val} validation queries per {unit} picked `{variant}` in "
            f"{auto.picked.count(variant)} of {len(auto.picked)} (picked: {_counts(auto.picked)}) and "
            "elsewhere the candidate that scored highest there"
            + (" (or kept the identity)" if kept_identity else "")
            + ", and those did worse on the test queries: the price of selecting on a small validation split"
            + (", within noise." if p_own >= P_SIGNIFICANT else ", larger than the noise here.")
        )
    row = CELL_ROWS[TABLE_ROWS[key].cells[0]]
    if row.params.get("refit_all") and REFITS.get(key) == "auto":
        same_pick = sum(best.cells[sf].get("selected") == auto.cells[sf].get("selected") for sf in both)
        return (
            f"{label} trains auto's candidates and selects as auto does (the same winner in {same_pick} of "
            f"{len(both)} {unit}s), then trains the winner again on every training query, the "
            f"{n_val} validation ones per {unit} too, for the steps its validation chose (`fit --refit-all`, "
            "the table 'The winner trained again on every training query'): the gap is what those "
            "queries' labels add" + ("; within seed noise." if noise else ".")
        )
    if row.kind == "family" and row.params.get("variants") == AUTO_PARAMS:
        same_pick = [sf for sf in both if best.cells[sf].get("selected") == auto.cells[sf].get("selected")]
        identical = sum(best.cells[sf]["ndcg"] == auto.cells[sf]["ndcg"] for sf in same_pick)
        return (
            f"{label} chooses among auto's candidates too (it picked: {_counts(best.picked)}; auto: "
            f"{_counts(auto.picked)}); it shipped what auto shipped in {len(same_pick)} of {len(both)} "
            f"{unit}s"
            + (
                f", with identical test scores there, so the gap comes from the other "
                f"{len(both) - len(same_pick)}"
                if identical == len(same_pick) < len(both)
                else f" (identical test scores in {identical} of them)"
            )
            + f", and {on_val}"
            + ("; the gap is within seed and selection noise." if noise else ".")
        )
    return (
        f"auto picks among {', '.join(AUTO_CANDIDATES)} by nDCG@10 on {n_val} validation queries per {unit} "
        f"(picked: {_counts(auto.picked)}); {label} is not one of them"
        + (f", and {on_val}" if valid else "")
        + ("; the gap is within seed and selection noise." if noise else ".")
    )


def _histories(cache: Cache, b: Bench) -> dict[str, list[dict[str, float]]]:
    """Seed-0, first-fold validation curves of the adapter rows (rows that select: the picked model)."""
    fold = "test" if b.protocol == "test" else "k0"
    out = {}
    for key, tr in TABLE_ROWS.items():
        if key in NON_ADAPTER or key == "paper":
            continue
        cell = current_cell(cache, cell_key(b.name, tr.cells[0], 0, fold))
        if cell and cell.get("history"):
            out[key] = [{"step": s, "ndcg@10": v} for s, v in cell["history"]]
    return out


def _efficiency(
    cache: Cache,
    b: Bench,
    seeds: Sequence[int],
    fractions: Sequence[float],
    full: Mapping[str, RowResult | None],
    plots: Path,
    rel: str,
    plot: Callable[..., Path],
) -> list[str]:
    zs = full["zero-shot"]
    n_train = len(b.train)
    lines = [
        f"### Data efficiency on {b.name}: share of the {n_train} training queries",
        "",
        "Each seed draws its own subset (nested: the 10% subset is inside the 30% one); validation is 20% of "
        "the subset. p: vs zero-shot, as above.",
        "",
        "| row | " + " | ".join(f"{int(100 * f)}%" for f in (*fractions, 1.0)) + " |",
        "|---|" + "---|" * (len(fractions) + 1),
    ]
    curves: dict[str, dict[float, tuple[float, float]]] = {}
    for key in EFFICIENCY_ROWS:
        texts, points = [], {}
        for f in (*fractions, 1.0):
            r = full[key] if f == 1.0 else aggregate(cache, b, TABLE_ROWS[key], seeds, f)
            if r is None:
                texts.append("–")
                continue
            vals = r.per_seed["ndcg@10"]
            points[f] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
            p = paired_test(r.per_query, zs.per_query) if zs is not None else float("nan")
            texts.append(f"{_ms(vals)} (p {fmt_p(p)})")
        curves[TABLE_ROWS[key].label] = points
        lines.append(f"| {TABLE_ROWS[key].label} | " + " | ".join(texts) + " |")
    lines.append("")
    if zs is not None and any(len(v) > 1 for v in curves.values()):
        png = plot(
            curves,
            plots / f"efficiency_{_slug(b.name)}.png",
            zero_shot=float(np.mean(zs.per_seed["ndcg@10"])),
            title=f"{b.name}: test nDCG@10 vs training queries",
        )
        lines += [f"Figure: [data-efficiency curve]({rel}/{png.name})", ""]
    return lines


# -- command line ----------------------------------------------------------------------------------


def _parser(exit_on_error: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], exit_on_error=exit_on_error)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="names under ../shared/data")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (full fine-tuning: at most 3)")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(TABLE_ROWS),
        choices=list(TABLE_ROWS),
        metavar="ROW",
        help=f"table rows to compute (default all): {', '.join(TABLE_ROWS)}",
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=list(FRACTIONS),
        help="data-efficiency shares of the training queries (none: skip)",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="start no new cell after this many minutes (the run resumes later)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="cap every adapter's max_steps (default: the library's 2000); --fast is 500",
    )
    parser.add_argument("--fast", action="store_true", help="shorthand for --max-steps 500")
    parser.add_argument(
        "--seed-major",
        action="store_true",
        help="seed 0 of every dataset first, then seed 1, ... (default: dataset by dataset)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine more threads oversubscribe "
        "the cores and run several times slower; run one process per core instead)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the cache, suite.md and plots go"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild suite.md and plots from the cache"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)  # its lock file and the cache go there
    max_steps = 500 if args.fast else args.max_steps
    import torch

    torch.set_num_threads(args.threads)
    # recorded with each run; where the results go is left out (it changes nothing computed, and a
    # machine's own paths do not belong in the committed report)
    given = list(argv or sys.argv[1:])
    kept = [
        a
        for i, a in enumerate(given)
        if not (a == "--results" or a.startswith("--results=") or (i and given[i - 1] == "--results"))
    ]
    command = "python benchmarks/suite.py " + " ".join(shlex.quote(a) for a in kept)
    if args.report_only:
        cache = Cache(args.results / "suite_cells.json.gz")
        shown = [d for d in args.datasets if any(k.startswith(f"{d}|") for k in cache.cells)]
        print(f"wrote {write_report(cache, [load_shared(d) for d in shown], args.seeds, args.results)}")
        return 0
    run(
        args.datasets,
        args.seeds,
        args.rows,
        args.fractions,
        args.budget_minutes,
        max_steps,
        args.results,
        command=command.strip(),
        seed_major=args.seed_major,
    )
    print(f"wrote {args.results / 'suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
