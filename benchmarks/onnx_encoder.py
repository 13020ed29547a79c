"""The ``onnx`` provider against the float model it was exported from: speed here, SciFact quality.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/onnx_encoder.py

MiniLM is exported twice (``search-adaptor export-encoder``: int8 weights per channel, and
float32) into the cache's ``models/`` folder, reused by later runs. Then, in one process, one thread:

- speed: median time to encode one query (300 SciFact test queries, one at a time, the three
  encoders interleaved query by query) and documents per second (the first 512 SciFact documents,
  batches of 64, three rounds, median);
- agreement: cosine between each export's vectors and the float model's on those documents;
- quality: SciFact test nDCG@10, zero-shot and ``auto`` (seed 0, :func:`run_fit`, the protocol of
  ``search-adaptor fit``), for the float model and the int8 export, each from the embedding store.

Writes ``benchmarks/results/onnx_encoder.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from suite import DATA  # noqa: E402  (the shared datasets, one place for every benchmark)

OUT = ROOT / "benchmarks" / "results" / "onnx_encoder.md"
N_QUERIES = 300
N_DOCS = 512
ROUNDS = 3


def exports() -> dict[str, Path]:
    """The int8 and float32 exports of MiniLM, made once in the cache."""
    from search_adaptor.encoders.onnx import CONFIG, export_encoder
    from search_adaptor.files import default_cache_dir

    folders = {}
    for name in ("int8", "float32"):
        folder = default_cache_dir() / "models" / f"minilm-onnx-{name}"
        if not (folder / CONFIG).is_file():
            export_encoder(folder, int8=name == "int8")
        folders[name] = folder
    return folders


def main() -> None:
    import numpy as np
    import torch

    from search_adaptor.data import load_beir
    from search_adaptor.embed import embed_dataset
    from search_adaptor.encoders.local import SentenceTransformerEncoder
    from search_adaptor.encoders.onnx import OnnxEncoder
    from search_adaptor.experiment import run_fit

    torch.set_num_threads(1)
    dataset = load_beir(DATA / "scifact")
    folders = exports()
    encoders = {
        "sentence-transformers (float32, torch)": SentenceTransformerEncoder(),
        "onnx float32": OnnxEncoder(str(folders["float32"])),
        "onnx int8": OnnxEncoder(str(folders["int8"])),
    }
    test_ids = sorted(dataset.qrels["test"])[:N_QUERIES]
    queries = [dataset.queries[q] for q in test_ids]
    docs = list(dataset.doc_texts[:N_DOCS])
    for enc in encoders.values():
        enc.encode_queries(queries[:2])  # load, and warm up
    per_query: dict[str, list[float]] = {name: [] for name in encoders}
    for text in queries:
        for name, enc in encoders.items():
            start = time.perf_counter()
            enc.encode_queries([text])
            per_query[name].append(time.perf_counter() - start)
    docs_per_s: dict[str, list[float]] = {name: [] for name in encoders}
    vectors = {}
    for _ in range(ROUNDS):
        for name, enc in encoders.items():
            start = time.perf_counter()
            vectors[name] = np.concatenate(
                [enc.encode_corpus(docs[i : i + 64]) for i in range(0, N_DOCS, 64)]
            )
            docs_per_s[name].append(N_DOCS / (time.perf_counter() - start))
    reference = vectors["sentence-transformers (float32, torch)"]
    speed = {
        name: {
            "query_ms": statistics.median(per_query[name]) * 1e3,
            "docs_per_s": statistics.median(docs_per_s[name]),
            "cos_min": float((vectors[name] * reference).sum(axis=1).min()),
            "cos_mean": float((vectors[name] * reference).sum(axis=1).mean()),
        }
        for name in encoders
    }
    quality = {}
    for name in ("sentence-transformers (float32, torch)", "onnx int8"):
        start = time.perf_counter()
        emb = embed_dataset(dataset, encoders[name], progress=False)
        embed_s = time.perf_counter() - start
        report = run_fit(dataset, emb, seed=0).report
        quality[name] = {
            "zero-shot": report["metrics"]["zero-shot"]["ndcg@10"],
            "adapted": report["metrics"]["adapted"]["ndcg@10"],
            "selected": report["selected"],
            "p": report["significance"]["p_value"],
            "embed_s": embed_s,
        }
        print(name, quality[name], flush=True)
    OUT.write_text(markdown(speed, quality, folders))
    print(OUT.read_text())


def markdown(speed: dict, quality: dict, folders: dict[str, Path]) -> str:
    import onnxruntime

    base = speed["sentence-transformers (float32, torch)"]
    sizes = {name: (folder / "model.onnx").stat().st_size / 2**20 for name, folder in folders.items()}
    lines = [
        "## A faster local encoder: MiniLM on ONNX Runtime, int8 (issue 15)",
        "",
        "`HF_HUB_OFFLINE=1 python benchmarks/onnx_encoder.py` on "
        f"{platform.machine()}, {os.cpu_count()} cores, onnxruntime {onnxruntime.__version__}, one thread "
        f"(load average at the end {os.getloadavg()[0]:.1f}). Exports: "
        f"`search-adaptor export-encoder --out DIR` (int8 weights per output channel, "
        f"{sizes['int8']:.0f} MiB) and `--float32` ({sizes['float32']:.0f} MiB). Queries: {N_QUERIES} "
        "SciFact test queries one at a time, encoders interleaved; documents: the first "
        f"{N_DOCS} SciFact documents in batches of 64, median of {ROUNDS} rounds.",
        "",
        "| encoder | one query, median | speed-up | documents/s | speed-up | cosine to torch (min / mean) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in speed.items():
        lines.append(
            f"| {name} | {row['query_ms']:.2f} ms | {base['query_ms'] / row['query_ms']:.2f}x "
            f"| {row['docs_per_s']:.1f} | {row['docs_per_s'] / base['docs_per_s']:.2f}x "
            f"| {row['cos_min']:.4f} / {row['cos_mean']:.4f} |"
        )
    lines += [
        "",
        "SciFact test (300 queries), nDCG@10, seed 0, family `auto`; each encoder's own vectors for queries "
        "and documents (the int8 export has its own fingerprint, so its vectors are embedded and stored "
        "apart and an adapter is trained on them):",
        "",
        "| encoder | zero-shot | adapted (`auto`) | selected | p vs zero-shot | embedding 6,288 texts |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in quality.items():
        lines.append(
            f"| {name} | {row['zero-shot']:.4f} | {row['adapted']:.4f} | {row['selected']} | {row['p']:.1e} "
            f"| {row['embed_s']:.0f} s{' (from the store)' if row['embed_s'] < 5 else ''} |"
        )
    f32, i8 = quality["sentence-transformers (float32, torch)"], quality["onnx int8"]
    lines += [
        "",
        f"int8 against float: zero-shot {i8['zero-shot'] - f32['zero-shot']:+.4f}, adapted "
        f"{i8['adapted'] - f32['adapted']:+.4f} nDCG@10 (the issue's bar: a loss under 0.005).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help: no run
    main()
