"""``search-adaptor`` command line: argparse and printing only; every command is one library call.
Heavy modules (numpy, torch, models) load only inside the commands, so ``--help`` starts instantly."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from search_adaptor import __version__
from search_adaptor.encoders import LOCAL, PROVIDERS
from search_adaptor.files import one_line_error
from search_adaptor.variants import DEFAULT_FAMILY, DEFAULT_FOLDS, FAMILY_CHOICES, MAX_STEPS


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        with contextlib.suppress(ValueError):
            if 0 < (value := kind(text)) < float("inf"):
                return value
        raise argparse.ArgumentTypeError(f"must be a positive {kind.__name__}, got {text}")

    return parse


_positive_int, _positive_float = _positive(int), _positive(float)


Arg = tuple[tuple[str, ...], dict[str, Any]]


def A(*flags: str, **options: Any) -> Arg:
    """One ``add_argument`` call, as data."""
    return flags, options


_OUTPUT = A("-o", "--output", choices=("table", "json"), default="table")
_ADAPTER = A("--adapter", required=True, metavar="ADAPTER_DIR")
_DIM = A("--dim", type=_positive_int, help="keep the first DIM adapted coordinates (Matryoshka)")
_DATA = A("data", metavar="DATA_DIR", help="BEIR-layout folder, or beir:NAME to download")
_ENCODER = [
    A("--provider", default=LOCAL, choices=PROVIDERS),
    A("--model", help=f"model id (default for {LOCAL}: sentence-transformers/all-MiniLM-L6-v2)"),
    A("--base-url", help="API root for openai-compatible / self-hosted endpoints"),
    A("--dimensions", type=_positive_int, help="shorter output vectors, where supported"),
    A("--batch-size", type=_positive_int, help="texts per batch (default: the provider's max)"),
    A("--max-concurrency", type=_positive_int, help="API requests in flight (default 4)"),
    A("--timeout", type=_positive_float, help="seconds to wait for one API reply (default 60)"),
    A("--embeddings", metavar="DIR", help="precomputed DIR/{queries,corpus}.{npz,parquet}"),
    A("--cache", metavar="DIR", help="embedding store ($SEARCH_ADAPTOR_CACHE or user cache)"),
    A("--quiet", action="store_true", help="no progress bars or per-candidate lines"),
]
_ENGINE = [
    A("--engine", default="local", choices=("local", "ray"), help="local (default) or Ray Data"),
    A("--ray-address", metavar="ADDR", help="Ray cluster (ray://head:10001, auto); default: local"),
    A("--rows", type=_positive_int, help="rows per chunk and shard"),
]
#: command -> its arguments; "embeddings" and "engine" add those shared groups. Help: the docstrings.
_COMMANDS: dict[str, list[Arg | str]] = {
    "fit": [
        _DATA,
        A("--out", required=True, metavar="OUT_DIR", help="for report.json/md and adapter/"),
        A("--family", default=DEFAULT_FAMILY, choices=FAMILY_CHOICES, help="variants to train"),
        A("--seed", type=int, default=0),
        A("--folds", type=int, default=DEFAULT_FOLDS, help="k without a train split"),
        A("--max-steps", type=_positive_int, help=f"steps per variant (default {MAX_STEPS})"),
        A("--dims", type=lambda t: tuple(map(_positive_int, t.split(","))), help="Matryoshka sizes: 64,128"),
        A("--unsupervised", action="store_true", help="Matryoshka without labels (they only score)"),
        _OUTPUT,
        "embeddings",
    ],
    "evaluate": [_DATA, _ADAPTER, A("--split", default="test"), A("--out"), _OUTPUT, "embeddings"],
    "embed": [_DATA, A("--dry-run", action="store_true", help="say what would be sent"), "embeddings"],
    "index": [
        A("data", metavar="DATA_DIR", help="BEIR folder, or corpus.jsonl[.gz] / .parquet"),
        _ADAPTER,
        A("--out", required=True, metavar="INDEX_DIR"),
        A("--backend", default="flat", choices=("flat", "hnsw"), help="hnsw: approximate"),
        _DIM,
        "engine",
        "embeddings",
    ],
    "transform": [
        A("vectors", metavar="VECTORS", help="base vectors: .npy, .parquet or a folder of them"),
        _ADAPTER,
        A("--out", required=True, metavar="OUT", help="OUT.npy, OUT.parquet or a folder"),
        A("--id-column", default="id", help="Parquet id column (default id)"),
        A("--vector-column", default="vector", help="Parquet vector column (default vector)"),
        _DIM,
        "engine",
    ],
    "search": [A("index", metavar="INDEX_DIR"), A("query"), A("-k", type=_positive_int, default=10), _OUTPUT],
    "serve": [
        A("index", metavar="INDEX_DIR"),
        A("--host", help="address to bind (default: loopback only)"),
        A("--port", type=int, help="default 8000"),
        A("--api-key-env", metavar="VAR", help="require Bearer <key>, the key read from VAR"),
        A("--threads", type=_positive_int, metavar="N", help="CPU threads (1 when shared)"),
        A("--retry-budget", type=_positive_float, dest="retry_budget_s", metavar="S", help="s per API call"),
        A("--model-name", metavar="NAME", help="/v1 model names NAME-query, NAME-document"),
    ],
    "export": [
        A("adapter", metavar="ADAPTER_DIR"),
        A("--out", required=True, metavar="DIR"),
        A("--format", required=True, choices=("onnx", "sentence-transformers")),
        _DIM,
    ],
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"search-adaptor: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)  # before or after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    debug.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show model loading")
    parser = _Parser(
        prog="search-adaptor",
        description="Train Search-Adaptor embedding adapters on your labelled queries and prove they help.",
        parents=[debug],
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups = {"embeddings": _ENCODER, "engine": _ENGINE}
    for name, arguments in _COMMANDS.items():
        cmd = sub.add_parser(name, help=globals()[f"_cmd_{name}"].__doc__, parents=[debug])
        for arg in arguments:
            target = cmd.add_argument_group(arg) if isinstance(arg, str) else cmd
            for flags, options in groups[arg] if isinstance(arg, str) else [arg]:
                target.add_argument(*flags, **options)
    return parser


def _encoder(args: argparse.Namespace) -> Any:
    from search_adaptor.encoders.registry import make_encoder

    if args.timeout is not None and args.provider == LOCAL:
        raise ValueError("--timeout applies to API providers only")
    keys = ["base_url", "dimensions", "batch_size", "max_concurrency", *(["timeout"] if args.timeout else [])]
    return make_encoder(args.provider, args.model, **{k: getattr(args, k) for k in keys})


def _embeddings(args: argparse.Namespace, dataset: Any, adapter: Any = None) -> Any:
    """The dataset's embeddings, once what the command will score has been checked (nothing is paid for
    a run that would stop at its qrels)."""
    from search_adaptor.experiment import embeddings_for, protocol

    if args.command == "fit":
        protocol(dataset, args.folds, args.seed)
    elif args.command == "evaluate":
        dataset.split(args.split)
    if args.embeddings:
        return embeddings_for(dataset, precomputed=args.embeddings, model=args.model, adapter=adapter)
    options = {"cache_dir": args.cache, "progress": not args.quiet, "adapter": adapter}
    return embeddings_for(dataset, _encoder(args), **options)


def _print_report(report: dict[str, Any], output: str, out_dir: str | None) -> None:
    if output == "json":
        print(json.dumps(report, indent=2))
        return
    from search_adaptor.report import metrics_table

    how = report["test_split"] if report["protocol"] == "evaluate" else report["protocol"]
    n, selected = report["n_test_queries"], report["selected"]
    print(f"{report['dataset']} ({how}, {n} held-out queries) selected: {selected}")
    print("\n".join(metrics_table(report["metrics"], list(report["metrics"]["zero-shot"]))))
    where = f"; report: {os.path.join(os.path.abspath(out_dir), 'report.md')}" if out_dir else ""
    print(f"paired randomization test on ndcg@10: p = {report['significance']['p_value']:.4g}{where}")


def _cmd_fit(args: argparse.Namespace) -> None:
    """embed, train, select and evaluate an adapter; write report + adapter"""
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import run_fit
    from search_adaptor.report import save_run

    dataset = load_beir(args.data)
    emb = _embeddings(args, dataset)
    log = (lambda _m: None) if args.quiet or args.output == "json" else _eprint
    log(f"{dataset.name}: {len(dataset.doc_ids)} docs, {len(dataset.queries)} queries; {emb.describe()}")
    overrides = {"max_steps": args.max_steps} if args.max_steps else None
    options = {k: getattr(args, k) for k in ("family", "seed", "folds", "dims", "unsupervised")}
    run = run_fit(dataset, emb, overrides=overrides, log=log, **options)
    _print_report(save_run(run, args.out), args.output, args.out)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """score a saved adapter (and zero-shot) on a dataset split; --out also writes its report"""
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import run_evaluate
    from search_adaptor.model import SearchAdaptor
    from search_adaptor.report import save_run

    adapter = SearchAdaptor.load(args.adapter)
    dataset = load_beir(args.data)
    run = run_evaluate(dataset, _embeddings(args, dataset, adapter), adapter, args.split)
    _print_report(save_run(run, args.out) if args.out else run.report, args.output, args.out)


def _cmd_embed(args: argparse.Namespace) -> None:
    """embed a dataset into the store (only what is not cached yet)"""
    from search_adaptor.data import load_beir
    from search_adaptor.embed import embed_dataset, plan_embedding

    if args.embeddings:
        raise ValueError("embed: --embeddings brings vectors already made; there is nothing to embed")
    dataset, encoder = load_beir(args.data), _encoder(args)
    if args.dry_run:
        print(plan_embedding(dataset, encoder, args.cache).describe())
    else:
        emb = embed_dataset(dataset, encoder, args.cache, not args.quiet)
        print(f"{dataset.name}: {emb.describe(getattr(encoder, 'retries', None))}")


def _cmd_index(args: argparse.Namespace) -> None:
    """embed a corpus, adapt it and write a searchable index folder"""
    from search_adaptor.data import load_beir
    from search_adaptor.index import build_index, import_faiss
    from search_adaptor.model import SearchAdaptor

    import_faiss()  # fail before embedding anything
    adapter = SearchAdaptor.load(args.adapter)
    source = _embeddings(args, load_beir(args.data), adapter) if args.embeddings else args.data
    encoder = None if args.embeddings else _encoder(args)
    options = {k: getattr(args, k) for k in ("engine", "backend", "rows", "ray_address", "dim")}
    index, stats = build_index(
        source, encoder, adapter, args.out, cache_dir=args.cache, progress=not args.quiet, **options
    )
    how = f"{stats.engine} engine, {args.backend}, {index.dim}-d, adapter mode {adapter.mode}"
    print(f"{index.n_docs} documents indexed ({how}) in {os.path.abspath(args.out)} ({stats.timing()})")


def _cmd_transform(args: argparse.Namespace) -> None:
    """adapt document vectors you already have (.npy / Parquet), streaming"""
    from search_adaptor.model import SearchAdaptor
    from search_adaptor.pipeline import transform_vectors

    keys = ("engine", "rows", "id_column", "vector_column", "ray_address", "dim")
    options = {k: getattr(args, k) for k in keys}
    stats = transform_vectors(args.vectors, SearchAdaptor.load(args.adapter), args.out, **options)
    rate = stats.rows / max(stats.seconds, 1e-9)
    print(
        f"{stats.rows} vectors ({stats.dim}-d) adapted with the {stats.engine} engine into {args.out} "
        f"in {stats.seconds:.1f} s ({rate:,.0f} rows/s)"
    )


def _cmd_search(args: argparse.Namespace) -> None:
    """search an index folder with one query"""
    from search_adaptor.index import AdaptedIndex

    hits = AdaptedIndex.load(args.index).search([args.query], k=args.k)[0]
    if args.output == "json":
        print(json.dumps([{"id": doc, "score": score} for doc, score in hits], indent=2))
        return
    print("rank  score   id")
    for rank, (doc, score) in enumerate(hits, 1):
        print(f"{rank:>4}  {score:.4f}  {doc}")


def _cmd_serve(args: argparse.Namespace) -> None:
    """serve an index folder over HTTP (POST /search, /embed, /v1/embeddings; GET /health)"""
    from search_adaptor.server import serve

    keys = ("host", "port", "api_key_env", "threads", "retry_budget_s", "model_name")
    serve(args.index, **{k: getattr(args, k) for k in keys if getattr(args, k) is not None})


def _cmd_export(args: argparse.Namespace) -> None:
    """export an adapter as ONNX or as a sentence-transformers model"""
    from search_adaptor.export import export

    out = export(args.adapter, args.out, args.format, args.dim)
    print(f"{args.format} export of {args.adapter} written to {out} and checked against the adapter")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends in one ``search-adaptor: error: ...`` line, exit 2 (or --debug)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return 2
    os.environ.update(
        {"SEARCH_ADAPTOR_VERBOSE": "1"} if getattr(args, "verbose", False) else {}
    )  # encoders.local.ENV_VERBOSE
    try:
        return globals()[f"_cmd_{args.command}"](args) or 0
    except (Exception, KeyboardInterrupt) as exc:  # --debug: raised again, with its traceback
        status, line = one_line_error(exc, debug=getattr(args, "debug", False))
        _eprint(line)
        return status


if __name__ == "__main__":
    sys.exit(main())
