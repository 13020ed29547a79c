"""``search-adaptor`` command line. Heavy modules (torch, models) load only inside the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FAMILY_CHOICES = (
    "auto",
    "paper",
    "paper-default",
    "paper-alpha",
    "query-only",
    "query-only-ranking",
    "linear",
    "shared-infonce",
    "linear-random",
    "shared-random",
)
PROVIDER_CHOICES = (
    "sentence-transformers",
    "openai",
    "azure-openai",
    "openai-compatible",
    "gemini",
    "vertex",
    "cohere",
    "voyage",
)


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("embeddings")
    g.add_argument("--provider", default="sentence-transformers", choices=PROVIDER_CHOICES)
    g.add_argument(
        "--model",
        default=None,
        help="model id (default for sentence-transformers: sentence-transformers/all-MiniLM-L6-v2)",
    )
    g.add_argument("--base-url", default=None, help="API root for openai-compatible / self-hosted endpoints")
    g.add_argument("--dimensions", type=int, default=None, help="shorter output vectors, where supported")
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="texts per batch (default: the provider's maximum per request)",
    )
    g.add_argument(
        "--max-concurrency", type=int, default=None, help="API requests in flight at once (default 4)"
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for one API reply before retrying (default 60)",
    )
    g.add_argument(
        "--embeddings",
        default=None,
        metavar="DIR",
        help="precomputed vectors: DIR/queries.{npz,parquet} and DIR/corpus.{npz,parquet}",
    )
    g.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="embedding store (default: $SEARCH_ADAPTOR_CACHE or the user cache dir)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-candidate lines")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: stream in chunks on this machine (default); ray: Ray Data map_batches stages",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to use (e.g. ray://head:10001 or auto); default: start a local one on loopback",
    )
    g.add_argument(
        "--rows", type=int, default=65536, help="rows per chunk and per Parquet shard (default 65536)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="search-adaptor",
        description="Train Search-Adaptor embedding adapters on your labelled queries and prove they help.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = sub.add_parser("fit", help="embed, train, select and evaluate an adapter; write report + adapter")
    fit.add_argument("data", metavar="DATA_DIR", help="BEIR-layout folder, or beir:NAME to download")
    fit.add_argument("--out", required=True, metavar="OUT_DIR", help="where report.json/md and adapter/ go")
    fit.add_argument(
        "--family",
        default="auto",
        choices=FAMILY_CHOICES,
        help="which variants to train; auto keeps the best on validation (default)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--folds", type=int, default=5, help="k for datasets without a train split (default 5)")
    fit.add_argument("--max-steps", type=int, default=None, help="step budget per variant (default 2000)")
    fit.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _add_encoder_args(fit)

    ev = sub.add_parser("evaluate", help="score a saved adapter (and zero-shot) on a dataset split")
    ev.add_argument("data", metavar="DATA_DIR")
    ev.add_argument("--adapter", required=True, metavar="ADAPTER_DIR")
    ev.add_argument("--split", default="test")
    ev.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _add_encoder_args(ev)

    emb = sub.add_parser("embed", help="embed a dataset into the store (only what is not cached yet)")
    emb.add_argument("data", metavar="DATA_DIR")
    emb.add_argument(
        "--dry-run",
        action="store_true",
        help="print cached / to-send counts and estimated tokens; send nothing",
    )
    _add_encoder_args(emb)

    idx = sub.add_parser("index", help="embed a corpus, adapt it and write a searchable index folder")
    idx.add_argument(
        "data",
        metavar="DATA_DIR",
        help="BEIR-layout folder, or its corpus file (corpus.jsonl[.gz] or a Parquet file with _id, text)",
    )
    idx.add_argument("--adapter", required=True, metavar="ADAPTER_DIR")
    idx.add_argument("--out", required=True, metavar="INDEX_DIR")
    idx.add_argument(
        "--backend",
        default="flat",
        choices=("flat", "hnsw"),
        help="flat: exact inner product (default); hnsw: approximate, faster on large corpora",
    )
    _add_engine_args(idx)
    _add_encoder_args(idx)

    tf = sub.add_parser(
        "transform",
        help="adapt document vectors you already have (.npy / Parquet), streaming, into a new file",
    )
    tf.add_argument(
        "vectors",
        metavar="VECTORS",
        help="base document vectors of the adapter's encoder: .npy, .parquet, or a folder of .parquet",
    )
    tf.add_argument("--adapter", required=True, metavar="ADAPTER_DIR")
    tf.add_argument(
        "--out", required=True, metavar="OUT", help="OUT.npy, OUT.parquet, or a folder of Parquet shards"
    )
    tf.add_argument("--id-column", default="id", help="Parquet id column (default id)")
    tf.add_argument("--vector-column", default="vector", help="Parquet vector column (default vector)")
    _add_engine_args(tf)

    srch = sub.add_parser("search", help="search an index folder with one query")
    srch.add_argument("index", metavar="INDEX_DIR")
    srch.add_argument("query", help="query text")
    srch.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    srch.add_argument("-o", "--output", choices=("table", "json"), default="table")

    srv = sub.add_parser("serve", help="serve an index folder over HTTP (POST /search, /embed; GET /health)")
    srv.add_argument("index", metavar="INDEX_DIR")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="require Authorization: Bearer <key>, the key read from environment variable VAR",
    )
    srv.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the model, adapter and FAISS (default: all cores); 1 avoids stalls on shared "
        "or CPU-limited machines",
    )

    exp = sub.add_parser("export", help="export an adapter as ONNX or as a sentence-transformers model")
    exp.add_argument("adapter", metavar="ADAPTER_DIR")
    exp.add_argument("--out", required=True, metavar="DIR")
    exp.add_argument("--format", required=True, choices=("onnx", "sentence-transformers"))
    return parser


def _encoder(args: argparse.Namespace) -> Any:
    from search_adaptor.encoders.registry import LOCAL, make_encoder

    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--max-concurrency", args.max_concurrency),
        ("--timeout", args.timeout),
    ):
        if value is not None:
            _positive(flag, value)
    options = {} if args.timeout is None else {"timeout": args.timeout}
    if options and args.provider == LOCAL:
        raise ValueError("--timeout applies to API providers only")
    return make_encoder(
        args.provider,
        args.model,
        base_url=args.base_url,
        dimensions=args.dimensions,
        batch_size=args.batch_size,
        max_concurrency=args.max_concurrency,
        **options,
    )


def _embeddings(args: argparse.Namespace, dataset: Any) -> Any:
    if args.embeddings:
        from search_adaptor.embed import load_precomputed

        return load_precomputed(dataset, args.embeddings, model=args.model)
    from search_adaptor.embed import embed_dataset

    return embed_dataset(dataset, _encoder(args), args.cache, progress=not args.quiet)


def _print_metrics(report: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(report, indent=2))
        return
    from search_adaptor.report import metrics_table

    print("\n".join(metrics_table(report["metrics"], list(report["metrics"]["zero-shot"]))))


def _cmd_fit(args: argparse.Namespace) -> int:
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import run_fit
    from search_adaptor.report import write_report

    dataset = load_beir(args.data)
    emb = _embeddings(args, dataset)
    log = (lambda _m: None) if args.quiet or args.output == "json" else _eprint
    log(
        f"{dataset.name}: {len(dataset.doc_ids)} docs, {len(dataset.queries)} queries; "
        f"embedded in {emb.embed_s:.1f} s ({emb.stats.encoded} texts sent, {emb.stats.cached} cached)"
    )
    overrides = {"max_steps": args.max_steps} if args.max_steps else None
    out = os.path.abspath(args.out)
    report, selection = run_fit(
        dataset,
        emb,
        family=args.family,
        seed=args.seed,
        folds=args.folds,
        overrides=overrides,
        log=log,
        out_dir=out,
    )
    report["adapter"] = os.path.join(out, "adapter")
    test = {"protocol": report["protocol"], **report["metrics"]}
    selection.adapter.save(os.path.join(out, "adapter"), extra={"test": test, "selected": report["selected"]})
    write_report(out, report)
    if args.output == "table":
        print(
            f"{report['dataset']} ({report['protocol']}, {report['n_test_queries']} held-out queries) "
            f"selected: {report['selected']}"
        )
    _print_metrics(report, args.output)
    if args.output == "table":
        p = report["significance"]["p_value"]
        print(f"paired randomization test on ndcg@10: p = {p:.4g}; report: {os.path.join(out, 'report.md')}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import evaluate_embeddings
    from search_adaptor.metrics import paired_test
    from search_adaptor.model import SearchAdaptor

    adapter = SearchAdaptor.load(args.adapter)
    dataset = load_beir(args.data)
    qrels = dataset.split(args.split)
    emb = _embeddings(args, dataset)
    adapter.check_encoder(emb.encoder["fingerprint"], emb.dim)
    zs, zq, _ = evaluate_embeddings(emb, qrels)
    ad, aq, _ = evaluate_embeddings(emb, qrels, adapter)
    report = {
        "dataset": dataset.name,
        "model": emb.encoder["model"],
        "split": args.split,
        "n_queries": len(zq["ndcg@10"]),
        "adapter": os.path.abspath(args.adapter),
        "metrics": {"zero-shot": zs, "adapted": ad},
        "significance": {"metric": "ndcg@10", "p_value": paired_test(aq["ndcg@10"], zq["ndcg@10"])},
    }
    if args.output == "table":
        print(f"{dataset.name} / {args.split} ({report['n_queries']} queries), adapter {args.adapter}")
    _print_metrics(report, args.output)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    """Embed a dataset into the store, or with ``--dry-run`` say what that would send, sending nothing."""
    from search_adaptor.data import load_beir

    if args.embeddings:
        raise ValueError("embed: --embeddings brings vectors already made; there is nothing to embed")
    dataset = load_beir(args.data)
    encoder = _encoder(args)
    if args.dry_run:
        from search_adaptor.encoders.http import CHARS_PER_TOKEN, estimate_tokens, prepare_texts
        from search_adaptor.store import EmbeddingStore

        by_kind = {"query": list(dataset.queries.values()), "document": dataset.doc_texts}
        with EmbeddingStore(encoder, args.cache) as store:
            todo = {kind: store.missing(kind, texts) for kind, texts in by_kind.items()}
        unique = sum(len(set(texts)) for texts in by_kind.values())
        n_todo = sum(len(texts) for texts in todo.values())
        # tokens of the texts as the encoder sends them: with its prompts, cut to its max_chars
        max_chars = getattr(encoder, "max_chars", None)
        tokens = sum(
            estimate_tokens(text)
            for kind, texts in todo.items()
            for text in prepare_texts([getattr(encoder, f"{kind}_prompt", "") + t for t in texts], max_chars)
        )
        print(
            f"{dataset.name} with {encoder.fingerprint}: {unique - n_todo} texts cached, {n_todo} would be "
            f"sent (~{tokens} tokens, estimated at {CHARS_PER_TOKEN:g} characters per token)"
        )
        return 0
    from search_adaptor.embed import embed_dataset

    emb = embed_dataset(dataset, encoder, args.cache, progress=not args.quiet)
    retries = f", {encoder.retries} retries" if hasattr(encoder, "retries") else ""
    print(
        f"{dataset.name}: {emb.stats.encoded} texts embedded, {emb.stats.cached} already cached "
        f"({emb.dim}-d, {emb.embed_s:.1f} s{retries})"
    )
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    import tempfile

    from search_adaptor.index import AdaptedIndex, import_faiss
    from search_adaptor.model import SearchAdaptor
    from search_adaptor.pipeline import embed_and_adapt

    import_faiss()  # fail before embedding anything
    _positive("--rows", args.rows)
    adapter = SearchAdaptor.load(args.adapter)
    if args.embeddings:
        from search_adaptor.data import load_beir

        dataset = load_beir(args.data)
        emb = _embeddings(args, dataset)
        index = AdaptedIndex.from_vectors(adapter, emb.doc_ids, emb.corpus, emb.encoder, backend=args.backend)
        out = index.save(args.out)
        print(
            f"{index.n_docs} documents indexed ({args.backend}, {index.dim}-d, mode {adapter.mode}) in {out}"
        )
        return 0
    from search_adaptor.embed import encoder_info

    encoder = _encoder(args)
    target = Path(args.out).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as staging:
        shards = Path(staging) / "vectors"
        stats = embed_and_adapt(
            args.data,
            encoder,
            adapter,
            shards,
            engine=args.engine,
            cache_dir=args.cache,
            rows=args.rows,
            ray_address=args.ray_address,
            progress=not args.quiet,
        )
        index = AdaptedIndex.from_shards(
            adapter, shards, encoder_info(encoder), backend=args.backend, encoder=encoder
        )
        out = index.save(target, vectors=shards)
    sent = f"; {stats.texts_embedded} texts sent to the encoder" if args.engine == "local" else ""
    print(
        f"{index.n_docs} documents indexed ({args.engine} engine, {args.backend}, {index.dim}-d, adapter "
        f"mode {adapter.mode}) in {out} ({stats.seconds:.1f} s{sent})"
    )
    return 0


def _cmd_transform(args: argparse.Namespace) -> int:
    from search_adaptor.model import SearchAdaptor
    from search_adaptor.pipeline import transform_vectors

    _positive("--rows", args.rows)
    stats = transform_vectors(
        args.vectors,
        SearchAdaptor.load(args.adapter),
        args.out,
        engine=args.engine,
        rows=args.rows,
        id_column=args.id_column,
        vector_column=args.vector_column,
        ray_address=args.ray_address,
    )
    print(
        f"{stats.rows} vectors ({stats.dim}-d) adapted with the {stats.engine} engine into {args.out} "
        f"in {stats.seconds:.1f} s ({stats.rows / max(stats.seconds, 1e-9):,.0f} rows/s)"
    )
    return 0


def _positive(flag: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{flag} must be positive, got {value:g}")


def _cmd_search(args: argparse.Namespace) -> int:
    from search_adaptor.index import AdaptedIndex

    hits = AdaptedIndex.load(args.index).search([args.query], k=args.k)[0]
    if args.output == "json":
        print(json.dumps([{"id": doc, "score": score} for doc, score in hits], indent=2))
        return 0
    print("rank  score   id")
    for rank, (doc, score) in enumerate(hits, 1):
        print(f"{rank:>4}  {score:.4f}  {doc}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import ipaddress

    try:
        import uvicorn

        from search_adaptor.server import create_app
    except ImportError as exc:
        raise RuntimeError(f"serve needs {exc.name}: pip install 'search-adaptor[serve]'") from exc
    from search_adaptor.index import AdaptedIndex, import_faiss

    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "").strip()
        if not key:
            raise ValueError(
                f"--api-key-env {args.api_key_env}: that environment variable is empty; "
                "set it to the key clients will send"
            )
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not key and not loopback:
        _eprint(
            f"search-adaptor: warning: serving on {args.host} without an API key; anyone who can reach it "
            "can search (use --api-key-env)"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
        import_faiss().omp_set_num_threads(args.threads)
    index = AdaptedIndex.load(args.index)
    app = create_app(index, api_key=key)
    _eprint(
        f"search-adaptor: serving {index.n_docs} documents on http://{args.host}:{args.port} "
        f"(OpenAPI docs at /docs{'; API key required' if key else ''})"
    )
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from search_adaptor.export import export_onnx, export_sentence_transformers

        export = export_onnx if args.format == "onnx" else export_sentence_transformers
        out = export(args.adapter, args.out)
    except ImportError as exc:
        extra = "onnx" if args.format == "onnx" else "local"
        raise RuntimeError(f"export needs {exc.name}: pip install 'search-adaptor[{extra}]'") from exc
    print(f"{args.format} export of {args.adapter} written to {out} and checked against the adapter")
    return 0


COMMANDS = {
    "fit": _cmd_fit,
    "evaluate": _cmd_evaluate,
    "embed": _cmd_embed,
    "index": _cmd_index,
    "transform": _cmd_transform,
    "search": _cmd_search,
    "serve": _cmd_serve,
    "export": _cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends in one ``search-adaptor: error: ...`` line and exit status 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from search_adaptor import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _eprint("search-adaptor: interrupted (embeddings finished so far are kept in the store)")
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        _eprint(f"search-adaptor: error: {' '.join(str(exc).split())}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
