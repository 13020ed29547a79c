"""What serving an adapter costs, on the SciFact index (5,183 documents, MiniLM, 384-d).

Run from the repository root (embeddings come from the persistent store)::

    HF_HUB_OFFLINE=1 python benchmarks/serving.py                     # trains an adapter first (~25 s)
    HF_HUB_OFFLINE=1 python benchmarks/serving.py --adapter DIR       # or serve a saved one

Measures, on the same flat index: single-query search latency with the adapter (query vector ->
adapt -> FAISS -> ids) against raw FAISS search of already adapted vectors (ratio of medians over
interleaved runs); text-to-results latency against the base model's encoding alone; the HNSW backend's
recall@10 and latency; and the adapter's corpus throughput against numpy matmuls of the same shapes.
Writes ``benchmarks/results/serving.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "scifact"
RESULTS = ROOT / "benchmarks" / "results"
N_QUERIES = 300
ROUNDS = 3


def scifact_adapter(adapter: str | None, workdir: Path) -> Path:
    """The adapter to benchmark: the one given, else one trained now with ``search-adaptor fit``."""
    if adapter:
        return Path(adapter)
    cli = [sys.executable, "-m", "search_adaptor.cli"]
    fit = [*cli, "fit", str(DATA), "--out", str(workdir / "fit"), "--quiet"]
    subprocess.run(fit, check=True, stdout=sys.stderr)  # keep stdout for the markdown
    return workdir / "fit" / "adapter"


def build_index(adapter_dir: Path, out: Path) -> tuple[Any, Any, Any]:
    """(index saved to ``out``, SciFact embeddings, base encoder), all from the embedding store."""
    from search_adaptor.data import load_beir
    from search_adaptor.embed import embed_dataset
    from search_adaptor.encoders.local import SentenceTransformerEncoder
    from search_adaptor.index import AdaptedIndex

    dataset = load_beir(DATA)
    encoder = SentenceTransformerEncoder()
    emb = embed_dataset(dataset, encoder, progress=False)
    index = AdaptedIndex.build(adapter_dir, encoder, dataset.doc_ids, dataset.doc_texts)
    index.save(out)
    return index, emb, encoder


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved(fns: dict[str, Callable[[int], Any]], n: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, run alternately so that machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        for i in range(min(n, 20)):
            fn(i)
    for _ in range(rounds):
        for i in range(n):
            for name, fn in fns.items():
                times[name].append(_timed(lambda fn=fn, i=i: fn(i)))
    return {name: float(np.median(t)) for name, t in times.items()}


def measure(index: Any, emb: Any, encoder: Any) -> dict[str, Any]:
    """Median latencies (s), throughputs (rows/s) and HNSW recall for :func:`markdown`."""
    from search_adaptor.data import load_beir
    from search_adaptor.export import dense_layers
    from search_adaptor.index import AdaptedIndex
    from search_adaptor.retrieval import exact_search

    adapter = index.adapter
    Qb = emb.queries[:N_QUERIES]
    Qa = adapter.transform_queries(Qb)
    raw = lambda i: index.faiss_index.search(Qa[i : i + 1], 10)  # noqa: E731
    adapted = lambda i: index.search(Qb[i : i + 1], 10)  # noqa: E731
    out: dict[str, Any] = {"search": _interleaved({"raw": raw, "adapted": adapted}, N_QUERIES, ROUNDS)}

    queries = load_beir(DATA).queries
    texts = [queries[q] for q in emb.query_ids[:100]]
    out["text"] = _interleaved(
        {
            "encode": lambda i: encoder.encode_queries([texts[i]]),
            "search": lambda i: index.search([texts[i]], 10),
        },
        100,
        1,
    )

    hnsw = AdaptedIndex.from_vectors(adapter, emb.doc_ids, emb.corpus, emb.encoder, backend="hnsw")
    Q_all = adapter.transform_queries(emb.queries)
    truth, _ = exact_search(Q_all, adapter.transform_corpus(emb.corpus), 10)
    row = {d: i for i, d in enumerate(emb.doc_ids)}
    got = hnsw.search_adapted(Q_all, 10)
    recall = np.mean(
        [len({row[d] for d, _ in g} & set(t.tolist())) / 10 for g, t in zip(got, truth, strict=True)]
    )
    hnsw_t = _interleaved({"hnsw": lambda i: hnsw.faiss_index.search(Qa[i : i + 1], 10)}, N_QUERIES, ROUNDS)
    out["hnsw"] = {"recall@10": float(recall), "latency": hnsw_t["hnsw"]}

    X = np.ascontiguousarray(emb.corpus)
    square = np.random.default_rng(0).normal(size=(X.shape[1], X.shape[1])).astype(np.float32)
    weights = [w.T.copy() for w, _, _ in dense_layers(adapter.query_net_)]

    def same_matmuls(_: int) -> None:
        h = X
        for w in weights:
            h = h @ w

    passes = {
        "adapter": lambda _: adapter.transform_queries(X),
        "one_matmul": lambda _: X @ square,
        "same_matmuls": same_matmuls,
    }
    through = _interleaved(passes, 20, 3)
    out["throughput"] = {k: X.shape[0] / v for k, v in through.items()}
    out["shapes"] = {"n": X.shape[0], "dim": X.shape[1], "layers": [list(w.shape) for w in weights]}
    return out


def markdown(res: dict[str, Any], adapter: Any, cmd: str) -> str:
    s, t, h, th = res["search"], res["text"], res["hnsw"], res["throughput"]
    n, dim = res["shapes"]["n"], res["shapes"]["dim"]
    layers = " + ".join(f"({n}x{a})·({a}x{b})" for a, b in res["shapes"]["layers"])
    us = lambda sec: f"{sec * 1e6:.0f} µs"  # noqa: E731
    per_s = lambda key: f"{th[key]:,.0f}"  # noqa: E731
    identity = " (identity: nothing beat zero-shot)" if adapter.is_identity_ else ""
    lines = [
        "## Serving cost (SciFact index)",
        "",
        f"`{cmd}` on {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"load average at start {res['load']:.1f}: absolute times move with machine load; each ratio "
        "compares runs interleaved call by call. The adapter runs in numpy at inference "
        "(`search_adaptor.networks.numpy_forward`); torch is used for training only.",
        f"Index: {n} documents, {dim}-d MiniLM vectors, flat inner product; adapter: "
        f"{adapter.architecture}, mode {adapter.mode}{identity}.",
        "",
        "| single query, k=10 | median | vs raw FAISS |",
        "|---|---|---|",
        f"| raw FAISS search of an adapted query vector | {us(s['raw'])} | 1.00 |",
        f"| `AdaptedIndex.search(base vector)`: checks + adapter + FAISS + ids | {us(s['adapted'])} | "
        f"{s['adapted'] / s['raw']:.2f} |",
        f"| HNSW (M=32, efSearch=128; recall@10 vs exact {h['recall@10']:.4f}) | {us(h['latency'])} | "
        f"{h['latency'] / s['raw']:.2f} |",
        f"| base model encoding of the query text | {t['encode'] * 1e3:.1f} ms | - |",
        f"| `AdaptedIndex.search(text)`: encode + adapter + FAISS | {t['search'] * 1e3:.1f} ms | "
        f"{t['search'] / t['encode']:.2f} x encoding alone |",
        "",
        "| corpus throughput | rows/s | adapter / reference |",
        "|---|---|---|",
        f"| `transform_queries` of the corpus matrix (checks, normalisation, adapter) | "
        f"{per_s('adapter')} | - |",
        f"| reference: numpy, the adapter's own matmuls {layers} | {per_s('same_matmuls')} | "
        f"{th['adapter'] / th['same_matmuls']:.2f} |",
        f"| reference: numpy, one matmul ({n}x{dim})·({dim}x{dim}) | {per_s('one_matmul')} | "
        f"{th['adapter'] / th['one_matmul']:.2f} |",
        "",
        f"Latency: {N_QUERIES} SciFact queries x {ROUNDS} rounds (100 x 1 for text); throughput: median "
        "of 60 full-corpus passes. An MLP adapter does two matmuls per row, so against a single matmul "
        "its ceiling is about 0.5; the like-for-like reference is its own matmuls.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, metavar="DIR", help="saved adapter (default: train one)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = scifact_adapter(args.adapter, Path(tmp))
        index, emb, encoder = build_index(adapter_dir, Path(tmp) / "index")
        res = measure(index, emb, encoder)
    res["load"] = load
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd = f"{threads}HF_HUB_OFFLINE=1 python benchmarks/serving.py"
    cmd += f" --adapter {args.adapter}" if args.adapter else ""
    text = markdown(res, index.adapter, cmd)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
