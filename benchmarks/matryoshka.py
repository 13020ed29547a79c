"""Smaller vectors: Matryoshka adapters against truncation and PCA of the same size (issue 17).

Run from the repository root (resumable: every (mode, dataset, seed) result is cached)::

    HF_HUB_OFFLINE=1 python benchmarks/matryoshka.py                  # supervised SciFact, unsupervised
    HF_HUB_OFFLINE=1 python benchmarks/matryoshka.py --report-only

- Supervised (SciFact): ``search-adaptor fit --dims 48,96,192`` (``experiment.run_fit`` with
  ``dims``): trained on the train split, scored on the 300 test queries at 48, 96, 192 and 384
  dimensions, against the base embedding truncated (``zero-shot@m``) and a PCA fitted on the corpus
  (``pca@m``), each of the same size.
- Unsupervised (SciFact, XQuAD-R en and de): the same adapter trained without labels (``loss
  "similarity"``) on the corpus texts (and SciFact's training query texts); its labels, and every
  query of XQuAD-R, are used only to score. One fit per seed; no folds are needed as no label
  reaches training.
- Unsupervised with query texts (XQuAD-R en and de, which have no train split): what
  ``search-adaptor fit --unsupervised --dims 48,96,192`` does there. Five folds per seed (``fit``'s
  own); each fold's adapter trains on the corpus and the other folds' query texts (their labels
  unused) and is scored on its held-out queries, so no scored query's text reaches training.
- Where the rotation starts (``--modes unsupervised-score-axes unsupervised-kfold-score-axes``): the
  SciFact and the 5-fold XQuAD-R fits above with ``init="score-axes"`` (``training.score_axes``: the
  axes carrying the most of the training query texts' scores against the documents) instead of the
  family's PCA start; the corpus-only fits are left out, as they start at PCA either way.
- Cost at each size: index bytes and median search latency of a flat FAISS index of the adapted
  corpus (``k=10``, one query at a time), as ratios to full width.

Results: ``results/matryoshka.md`` (cells in ``results/matryoshka_cells.json.gz``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import Cells, mean_sd
from search_adaptor.data import validation_split
from search_adaptor.experiment import SizedView, evaluate_embeddings, protocol, run_fit
from search_adaptor.files import write_text_atomic
from search_adaptor.metrics import paired_test
from search_adaptor.model import SearchAdaptor
from search_adaptor.retrieval import l2_normalize
from search_adaptor.training import pca_rotation
from search_adaptor.variants import FAMILIES
from suite import load_shared

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = Cells(RESULTS / "matryoshka_cells.json.gz")
SIZES = (48, 96, 192)
SEEDS = 5
UNSUPERVISED = ("scifact", "xquad-r/en", "xquad-r/de")
KFOLD = ("xquad-r/en", "xquad-r/de")  # unsupervised-kfold: the training folds' query texts
UNSUPERVISED_PARAMS = dict(FAMILIES["matryoshka-unsupervised"][0][1])
SCORE_AXES_PARAMS = {**UNSUPERVISED_PARAMS, "init": "score-axes"}
DEV_TEMPERATURES = (0.02, 0.05)  # unsupervised-dev: on SciFact's training queries only
DEV_INITS = ("pca", "score-axes")  # ... and the rotation's start
#: The fits with query texts again, started on the score axes: (mode, datasets, 5-fold)
STARTS = (("unsupervised-score-axes", ("scifact",), False), ("unsupervised-kfold-score-axes", KFOLD, True))
DEV_SEEDS = 3


def supervised(seed: int) -> dict[str, Any]:
    """One ``fit --dims`` on SciFact: per-query nDCG@10 of every system, kept for the paired tests."""
    bench = load_shared("scifact")
    t0 = time.perf_counter()
    run = run_fit(bench.dataset, bench.emb, seed=seed, dims=SIZES)
    test = bench.dataset.split("test")
    per = {}
    systems = {"zero-shot": None, "adapted": run.adapter}
    rotation = pca_rotation(l2_normalize(bench.emb.corpus))
    for m in SIZES:
        systems |= {
            f"zero-shot@{m}": SizedView(None, m),
            f"pca@{m}": SizedView(None, m, rotation),
            f"adapted@{m}": SizedView(run.adapter, m),
        }
    for name, view in systems.items():
        per[name] = evaluate_embeddings(bench.emb, test, view, ["ndcg@10"])[1]["ndcg@10"].round(5).tolist()
    return {
        "per_query": per,
        "train_s": round(time.perf_counter() - t0, 1),
        "selected": run.report["selected"],
    }


def unsupervised(
    name: str, seed: int, kfold: bool = False, family: dict[str, Any] = UNSUPERVISED_PARAMS
) -> dict[str, Any]:
    """A Matryoshka adapter trained without labels (``family``'s parameters), scored on every labelled
    query of ``name``: one fit, or with ``kfold`` one per fold of ``fit``'s protocol with that fold's
    training query texts."""
    bench = load_shared(name)
    emb = bench.emb
    params = {**family, "dims": SIZES, "seed": seed}
    if kfold:
        folds = [(train, test) for _, train, test in protocol(bench.dataset, seed=seed).folds]
    else:  # SciFact's training query texts, no labels; XQuAD-R: the corpus alone
        folds = [(bench.train if bench.protocol == "test" else None, bench.labelled)]
    rotation = pca_rotation(l2_normalize(emb.corpus))
    per: dict[str, dict[str, float]] = {}  # system -> query id -> nDCG@10
    train_s, steps = 0.0, []
    for texts, scored in folds:
        t0 = time.perf_counter()
        adapter = SearchAdaptor(**params).fit(
            emb.queries, emb.corpus, texts, emb.query_ids, emb.doc_ids, encoder=emb.encoder
        )
        train_s += time.perf_counter() - t0
        steps.append(adapter.best_step_)
        systems = {"zero-shot": None, "adapted": adapter}
        for m in SIZES:
            systems |= {
                f"zero-shot@{m}": SizedView(None, m),
                f"pca@{m}": SizedView(None, m, rotation),
                f"adapted@{m}": SizedView(adapter, m),
            }
        for n, v in systems.items():
            scores = evaluate_embeddings(emb, scored, v, ["ndcg@10"])[1]["ndcg@10"]
            per.setdefault(n, []).extend(scores.round(5).tolist())
    return {
        "per_query": per,
        "train_s": round(train_s, 1),
        "best_step": steps[0] if len(steps) == 1 else steps,
        "params": family,
    }


def unsupervised_dev(init: str, temperature: float, seed: int) -> dict[str, Any]:
    """How the unsupervised family's start and temperature were chosen, without a test query: SciFact's
    training queries only. The adapter trains on the corpus and 80% of them (texts; labels unused),
    and is scored on the other 20% (labelled) at each size, against PCA."""
    bench = load_shared("scifact")
    emb, train = bench.emb, bench.train
    fit_q, dev_q = validation_split(sorted(train), 0.2, np.random.default_rng(100 + seed))
    params = {**UNSUPERVISED_PARAMS, "dims": SIZES, "seed": seed, "temperature": temperature, "init": init}
    adapter = SearchAdaptor(**params).fit(
        emb.queries, emb.corpus, {q: train[q] for q in fit_q}, emb.query_ids, emb.doc_ids, encoder=emb.encoder
    )
    dev = {q: train[q] for q in dev_q}
    rotation = pca_rotation(l2_normalize(emb.corpus))
    scores = {}
    for m in SIZES:
        for name, view in (
            (f"adapted@{m}", SizedView(adapter, m)),
            (f"pca@{m}", SizedView(None, m, rotation)),
        ):
            scores[name] = float(evaluate_embeddings(emb, dev, view, ["ndcg@10"])[0]["ndcg@10"])
    return {"ndcg@10": scores, "n_dev": len(dev), "best_step": adapter.best_step_}


def costs() -> dict[str, Any]:
    """Index bytes and median one-query search latency of a flat index of SciFact's 5,183 documents at
    each size (the cost depends on the size only, not on which vectors of that size are indexed)."""
    import faiss

    faiss.omp_set_num_threads(1)
    bench = load_shared("scifact")
    out = {}
    queries = l2_normalize(bench.emb.queries[:300])
    for m in (*SIZES, bench.emb.dim):
        docs = np.ascontiguousarray(l2_normalize(bench.emb.corpus)[:, :m])
        index = faiss.IndexFlatIP(m)
        index.add(docs)
        q = np.ascontiguousarray(l2_normalize(queries[:, :m]))
        times = []
        for _ in range(3):
            for i in range(len(q)):
                t = time.perf_counter_ns()
                index.search(q[i : i + 1], 10)
                times.append(time.perf_counter_ns() - t)
        out[str(m)] = {
            "bytes": int(faiss.serialize_index(index).nbytes),
            "search_us": statistics.median(times) / 1000,
        }
    return out


def report(cells: dict[str, Any]) -> str:
    lines = [
        "## Smaller vectors: Matryoshka adapters (issue 17)",
        "",
        "Generated by `HF_HUB_OFFLINE=1 python benchmarks/matryoshka.py` (protocol in its docstring). "
        "Test nDCG@10, mean ± sample std over seeds; p: paired randomization test over queries (scores "
        "averaged over seeds) of `adapted@m` against `zero-shot@m` (the base embedding truncated) and "
        "`pca@m` (a PCA of the corpus), at the same size m.",
        "",
        "Machines: the supervised cells and the index costs were computed on 2026-11-30 on an earlier "
        "2-core machine; the unsupervised cells (every mode) were recomputed on 2026-12-01 on a 2-core "
        "x86_64 machine with AVX-512 and no AMX, after the rotation constraint moved from an SVD to an "
        "eigendecomposition (`training.nearest_rotation`: the SVD failed to converge mid-fit with two "
        "threads). Training times compare within one machine only.",
        "",
    ]
    titles = {"unsupervised-kfold": "unsupervised, with the training folds' query texts (5-fold)"}
    for mode, names in (
        ("supervised", ("scifact",)),
        ("unsupervised", UNSUPERVISED),
        ("unsupervised-kfold", KFOLD),
    ):
        for name in names:
            keys = sorted(k for k in cells if k.startswith(f"{mode}|{name}|"))
            if not keys:
                continue
            runs = [cells[k]["per_query"] for k in keys]
            mean = {s: [float(np.mean(r[s])) for r in runs] for s in runs[0]}
            avg = {s: np.mean([r[s] for r in runs], axis=0) for s in runs[0]}
            full_zs = float(np.mean(mean["zero-shot"]))
            lines += [
                f"### {name}, {titles.get(mode, mode)} ({len(keys)} seeds; full width: zero-shot "
                f"{full_zs:.4f}, adapted {mean_sd(mean['adapted'])})",
                "",
                "| size | truncation | PCA | adapted | p vs truncation | p vs PCA | of full zero-shot |",
                "|---|---|---|---|---|---|---|",
            ]
            for m in SIZES:
                a, z, p = avg[f"adapted@{m}"], avg[f"zero-shot@{m}"], avg[f"pca@{m}"]
                lines.append(
                    f"| {m} | {mean_sd(mean[f'zero-shot@{m}'])} | {mean_sd(mean[f'pca@{m}'])} | "
                    f"{mean_sd(mean[f'adapted@{m}'])} | {paired_test(a, z):.1e} | {paired_test(a, p):.1e} | "
                    f"{np.mean(mean[f'adapted@{m}']) / full_zs:.1%} |"
                )
            secs = [cells[k]["train_s"] for k in keys]
            each = " (all folds)" if mode == "unsupervised-kfold" else ""
            lines += ["", f"Training: {np.median(secs):.0f} s per seed{each} (median).", ""]
    lines += starts(cells)
    dev = sorted(k for k in cells if k.startswith("unsupervised-dev|"))
    if dev:
        by_setting: dict[tuple[str, str], list[dict[str, float]]] = {}
        for k in dev:
            _, init, t, _ = k.split("|")
            by_setting.setdefault((init, t), []).append(cells[k]["ndcg@10"])
        n_dev = cells[dev[0]]["n_dev"]
        family = SearchAdaptor(**UNSUPERVISED_PARAMS)
        lines += [
            "### How the unsupervised start and temperature were chosen (SciFact training queries only)",
            "",
            f"`--modes unsupervised-dev`: trained on the corpus and 80% of SciFact's training query texts, "
            f"scored on the other {n_dev} training queries (labelled; the test queries play no part), per "
            "start of the rotation (`pca`: the corpus's principal axes; `score-axes`: the axes carrying the "
            "most of the training query texts' scores against the documents, `training.score_axes`) and "
            "temperature of the target and prefix softmaxes; mean nDCG@10 over seeds, PCA of the same size "
            f"in brackets. The family trains from `{family.init}` at {family.temperature:g}.",
            "",
            "| start | temperature | seeds | " + " | ".join(f"@{m}" for m in SIZES) + " |",
            "|---|---|---|" + "---|" * len(SIZES),
        ]
        for (init, t), runs in sorted(by_setting.items(), key=lambda kv: (kv[0][0], float(kv[0][1]))):
            mean = {key: np.mean([r[key] for r in runs]) for key in runs[0]}
            row = " | ".join(f"{mean[f'adapted@{m}']:.4f} ({mean[f'pca@{m}']:.4f})" for m in SIZES)
            lines.append(f"| {init} | {t} | {len(runs)} | {row} |")
        lines.append("")
    cost = cells.get("costs")
    if cost:
        full = cost[max(cost, key=int)]
        lines += [
            "### Index size and search latency by size (SciFact, flat FAISS, one query, k=10, 1 thread)",
            "",
            "| size | index bytes | ratio | median search µs | ratio |",
            "|---|---|---|---|---|",
        ]
        for m, c in sorted(cost.items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| {m} | {c['bytes']:,} | {c['bytes'] / full['bytes']:.2f} | {c['search_us']:.1f} | "
                f"{c['search_us'] / full['search_us']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def starts(cells: dict[str, Any]) -> list[str]:
    """The fits with query texts from either start, side by side: test nDCG@10 per size (mean over
    seeds) and paired tests against PCA of the size and between the two starts."""
    rows = []
    for mode, names, _ in STARTS:
        base = mode.removesuffix("-score-axes")
        for name in names:
            pair = []
            for m in (base, mode):
                keys = sorted(k for k in cells if k.startswith(f"{m}|{name}|"))
                pair.append([cells[k]["per_query"] for k in keys])
            if not all(pair):
                continue
            n = min(len(pair[0]), len(pair[1]))
            avg = [{s: np.mean([r[s] for r in runs[:n]], axis=0) for s in runs[0]} for runs in pair]
            for m in SIZES:
                a, b, pca = avg[0][f"adapted@{m}"], avg[1][f"adapted@{m}"], avg[0][f"pca@{m}"]
                rows.append(
                    f"| {name} | {m} | {np.mean(pca):.4f} | {np.mean(a):.4f} ({paired_test(a, pca):.1e}) | "
                    f"{np.mean(b):.4f} ({paired_test(b, pca):.1e}) | {np.mean(b) - np.mean(a):+.4f} "
                    f"({paired_test(b, a):.1e}) | {n} |"
                )
    if not rows:
        return []
    return [
        "### Where the rotation starts: the corpus's PCA (the family's) or the query texts' score axes",
        "",
        "The fits above that have query texts (SciFact's training queries; XQuAD-R's training folds), "
        'started on `training.score_axes` of those texts (`init="score-axes"`) instead of PCA. Test '
        "nDCG@10, mean over seeds; p in brackets (paired randomization test over queries, per-query "
        "scores averaged over seeds) against the PCA of the size, and in the last but one column "
        "between the two starts.",
        "",
        "| dataset | size | PCA | from PCA (p vs PCA) | from score axes (p vs PCA) "
        "| score axes - PCA start (p) | seeds |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    modes = ["supervised", "unsupervised", "unsupervised-kfold", *(m for m, _, _ in STARTS)]
    modes += ["unsupervised-dev", "costs"]
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        import torch

        torch.set_num_threads(1)
        for seed in range(args.seeds):
            if "supervised" in args.modes and f"supervised|scifact|{seed}" not in CELLS.read():
                CELLS.save(f"supervised|scifact|{seed}", supervised(seed))
                print(f"supervised scifact seed {seed} done", flush=True)
            # an unsupervised cell is recomputed when the family's parameters change
            for name in UNSUPERVISED if "unsupervised" in args.modes else ():
                if CELLS.read().get(f"unsupervised|{name}|{seed}", {}).get("params") != UNSUPERVISED_PARAMS:
                    CELLS.save(f"unsupervised|{name}|{seed}", unsupervised(name, seed))
                    print(f"unsupervised {name} seed {seed} done", flush=True)
            for name in KFOLD if "unsupervised-kfold" in args.modes else ():
                key = f"unsupervised-kfold|{name}|{seed}"
                if CELLS.read().get(key, {}).get("params") != UNSUPERVISED_PARAMS:
                    CELLS.save(key, unsupervised(name, seed, kfold=True))
                    print(f"unsupervised-kfold {name} seed {seed} done", flush=True)
            for mode, names, kfold in STARTS:
                for name in names if mode in args.modes else ():
                    key = f"{mode}|{name}|{seed}"
                    if CELLS.read().get(key, {}).get("params") != SCORE_AXES_PARAMS:
                        CELLS.save(key, unsupervised(name, seed, kfold=kfold, family=SCORE_AXES_PARAMS))
                        print(f"{mode} {name} seed {seed} done", flush=True)
        for seed in range(min(args.seeds, DEV_SEEDS)) if "unsupervised-dev" in args.modes else ():
            for init in DEV_INITS:
                for t in DEV_TEMPERATURES:
                    key = f"unsupervised-dev|{init}|{t:g}|{seed}"
                    if key not in CELLS.read():
                        CELLS.save(key, unsupervised_dev(init, t, seed))
                        print(f"unsupervised-dev start {init} temperature {t:g} seed {seed} done", flush=True)
        if "costs" in args.modes:
            CELLS.save("costs", costs())
    write_text_atomic(RESULTS / "matryoshka.md", report(CELLS.read()))
    print(f"wrote {RESULTS / 'matryoshka.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
