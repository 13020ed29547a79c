"""What adding SciFact documents to a LangChain or LlamaIndex vector store costs through the wrappers.

Run from the repository root; the embedding store should hold SciFact's MiniLM embeddings (any
``search-adaptor fit`` or ``embed`` on it leaves them there; otherwise they are embedded first, untimed)::

    HF_HUB_OFFLINE=1 python benchmarks/frameworks.py --adapter DIR             # a SciFact MiniLM adapter
    HF_HUB_OFFLINE=1 python benchmarks/frameworks.py --adapter DIR --uncached  # also cache=False (minutes)

Times, for the first ``--docs`` SciFact documents (default 1,000), each in a fresh wrapper over a
fresh encoder (as a new script would): ``InMemoryVectorStore.add_documents`` through
``as_langchain``, and ``VectorStoreIndex(nodes)`` through ``as_llamaindex``; then one retrieval,
whose time includes loading the model (queries are never cached). It counts the texts sent to the
encoder. The frameworks are imported before any timing, as a script would have them. ``--uncached``
repeats the adds with ``cache=False``: what every add cost before the wrappers used the store.
Writes ``benchmarks/results/frameworks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode

from search_adaptor.data import load_beir
from search_adaptor.encoders.local import SentenceTransformerEncoder
from search_adaptor.integrations import as_langchain, as_llamaindex
from search_adaptor.store import EmbeddingStore
from serving import DATA, RESULTS, scifact_adapter

QUERY = "vitamin D deficiency and bone fractures"


def _langchain(adapter: Path, ids: list[str], texts: list[str], cache: bool) -> tuple[Any, Callable[[], str]]:
    embeddings = as_langchain(SentenceTransformerEncoder(), adapter, cache=cache)
    store = InMemoryVectorStore(embeddings)
    store.add_documents([Document(page_content=t, id=i) for i, t in zip(ids, texts, strict=True)])
    return embeddings.encoder, lambda: store.similarity_search(QUERY, k=1)[0].id


def _llamaindex(
    adapter: Path, ids: list[str], texts: list[str], cache: bool
) -> tuple[Any, Callable[[], str]]:
    embed_model = as_llamaindex(SentenceTransformerEncoder(), adapter, cache=cache)
    nodes = [TextNode(id_=i, text=t) for i, t in zip(ids, texts, strict=True)]
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    return embed_model.encoder, lambda: index.as_retriever(similarity_top_k=1).retrieve(QUERY)[0].node.id_


FRAMEWORKS = {
    "LangChain `InMemoryVectorStore.add_documents` via `as_langchain`": _langchain,
    "LlamaIndex `VectorStoreIndex(nodes)` via `as_llamaindex`": _llamaindex,
}


def warm_store(ids: list[str], texts: list[str]) -> int:
    """Embed into the default store whatever of ``texts`` it lacks; returns how many that was."""
    with EmbeddingStore(SentenceTransformerEncoder()) as store:
        missing = store.missing("document", texts)
        if missing:
            store.embed(missing, "document")
    return len(missing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a SciFact MiniLM adapter folder (default: train one now)")
    parser.add_argument("--docs", type=int, default=1000, help="documents to add (default 1000)")
    parser.add_argument("--uncached", action="store_true", help="also time cache=False (slow)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = scifact_adapter(args.adapter, Path(tmp))
        dataset = load_beir(DATA)
        ids, texts = dataset.doc_ids[: args.docs], dataset.doc_texts[: args.docs]
        warmed = warm_store(ids, texts)
        rows = []
        for name, add in FRAMEWORKS.items():
            for cache in (True, False) if args.uncached else (True,):
                start = time.perf_counter()
                encoder, search = add(adapter, ids, texts, cache)
                added = time.perf_counter() - start
                start = time.perf_counter()
                top = search()
                query = time.perf_counter() - start
                sent = encoder.stats.encoded if cache else len(set(texts))
                how = "through the store (default)" if cache else "`cache=False`"
                rows.append(f"| {name}, {how} | {added:.2f} s | {sent} | {query:.1f} s | {top} |")
                print(rows[-1], file=sys.stderr)
    command = "HF_HUB_OFFLINE=1 python benchmarks/frameworks.py --adapter DIR" + (
        " --uncached" if args.uncached else ""
    )
    held = "held every document" if not warmed else f"lacked {warmed} documents, embedded before timing"
    lines = [
        "## Framework wrappers (SciFact documents, MiniLM)",
        "",
        f"`{command}` on {platform.machine()}, {os.cpu_count()} cores, load average at start {load:.1f} "
        "(absolute times move with machine load). Each add uses a fresh wrapper over a fresh encoder, "
        f"as a new script would; the store {held}.",
        "",
        f"| adding the first {len(ids):,} SciFact documents | time to add | texts sent to the encoder | "
        "first query (loads the model) | top hit |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "The wrappers read base document vectors from the embedding store the command line fills, so "
        "documents a `fit`, `embed` or `index` run already embedded cost a SQLite read and the adapter's "
        f"matmuls; queries are embedded each time (never stored). Query: {QUERY!r}.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "frameworks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
