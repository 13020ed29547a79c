"""How long ``search-adaptor fit`` trains on cached embeddings: SciFact (train/test) and Cranfield (k-fold).

Run from the repository root, alone on the machine (the load average is recorded with each run)::

    HF_HUB_OFFLINE=1 python benchmarks/fit_speed.py                 # SciFact and Cranfield, 3 runs
    HF_HUB_OFFLINE=1 python benchmarks/fit_speed.py --jobs 1        # candidates one after another
    HF_HUB_OFFLINE=1 python benchmarks/fit_speed.py --precisions float32  # the default only

Each run is ``experiment.run_fit`` with the library defaults (family ``auto``, its winner refitted on
every training query, seed 0) and each
``--precision`` asked for (``float32``: the default; ``bfloat16``: the same candidates with mixed
precision products), timed from the first candidate to the report, embeddings read from
the persistent store (they are not part of the time). Per-candidate times come from the report
(``validation.candidates[].train_s``); with candidates trained side by side they overlap, so they
add up to more than the wall time.
Writes ``results/fit_speed.md``; ``benchmarks/assemble.py`` puts it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "cranfield"])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per dataset (median reported)")
    parser.add_argument("--jobs", type=int, default=None, help="candidates trained at once (default: cores)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "bfloat16"],
        help="fit --precision values, run interleaved (default: float32, the default, and bfloat16)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "fit_speed.md")
    args = parser.parse_args()

    from search_adaptor import __version__
    from search_adaptor.data import load_beir
    from search_adaptor.embed import embed_dataset
    from search_adaptor.encoders.local import SentenceTransformerEncoder
    from search_adaptor.experiment import run_fit
    from search_adaptor.training import resolve_precision

    encoder = SentenceTransformerEncoder()
    lines = [
        "## Fit speed on cached embeddings",
        "",
        f"`HF_HUB_OFFLINE=1 python benchmarks/fit_speed.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, search-adaptor "
        f"{__version__}; candidates trained {args.jobs or 'one per core'} at a time. Median of "
        f"{args.runs} runs of `run_fit` (family auto, seed 0) per `--precision`, the precisions "
        "interleaved run by run; 1-minute load average at the start of each run in brackets "
        "(2 cores; it includes the previous run's own two threads). `auto` resolves to "
        f"{resolve_precision('auto')} on this machine.",
        "",
        "| dataset | protocol | precision | fits | train s (median, runs) | adapted nDCG@10 "
        "| per candidate, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.datasets:
        ds = load_beir(DATA / name)
        emb = embed_dataset(ds, encoder, progress=False)
        times: dict[str, list[float]] = {p: [] for p in args.precisions}
        reports: dict[str, list[dict]] = {p: [] for p in args.precisions}
        loads: dict[str, list[float]] = {p: [] for p in args.precisions}
        for _ in range(args.runs):
            for precision in args.precisions:
                loads[precision].append(os.getloadavg()[0])
                t0 = time.perf_counter()
                run = run_fit(ds, emb, n_jobs=args.jobs, overrides={"precision": precision})
                times[precision].append(time.perf_counter() - t0)
                reports[precision].append(run.report)
                print(
                    f"{name} {precision}: {times[precision][-1]:.1f} s, "
                    f"nDCG@10 {run.report['metrics']['adapted']['ndcg@10']:.4f}",
                    flush=True,
                )
        for precision in args.precisions:
            ts = times[precision]
            median = sorted(range(len(ts)), key=lambda i: ts[i])[len(ts) // 2]
            report = reports[precision][median]
            folds = report.get("fold_results", [])
            n_fits = len(report["validation"]["candidates"]) * (len(folds) + 1)
            per = ", ".join(
                f"{c['variant']} {c['train_s']}"
                + (f" + refit {c['refit_all_s']}" if "refit_all_s" in c else "")
                for c in report["validation"]["candidates"]
            )
            runs = ", ".join(f"{t:.1f} [{load:.1f}]" for t, load in zip(ts, loads[precision], strict=True))
            lines.append(
                f"| {name} | {report['protocol']} | {precision} | {n_fits} | {statistics.median(ts):.1f} "
                f"({runs}) | {report['metrics']['adapted']['ndcg@10']:.4f} | {per} |"
            )
    lines += [
        "",
        "Per-candidate times are those of the final fit (k-fold: the fit on all labelled queries, "
        "trained alongside the folds' fits); '+ refit': the winner trained again on every training "
        "query, which `fit` does for `auto` by default (`--no-refit-all` skips it), after the candidates.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
