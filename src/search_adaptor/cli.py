"""``search-adaptor`` command line. Heavy modules (torch, models) load only inside the commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

FAMILY_CHOICES = (
    "auto",
    "paper",
    "paper-default",
    "query-only",
    "query-only-ranking",
    "linear",
    "shared-infonce",
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
        "--batch-size", type=int, default=None, help="texts per request (default: the provider's maximum)"
    )
    g.add_argument(
        "--max-concurrency", type=int, default=None, help="API requests in flight at once (default 4)"
    )
    g.add_argument(
        "--timeout", type=float, default=None, help="seconds to wait for one API reply before retrying"
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
    return parser


def _encoder(args: argparse.Namespace) -> Any:
    from search_adaptor.encoders.registry import LOCAL, make_encoder

    for flag, value in (
        ("--batch-size", args.batch_size),
        ("--max-concurrency", args.max_concurrency),
        ("--timeout", args.timeout),
    ):
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value:g}")
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
    report, selection = run_fit(
        dataset, emb, family=args.family, seed=args.seed, folds=args.folds, overrides=overrides, log=log
    )
    out = os.path.abspath(args.out)
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


COMMANDS = {"fit": _cmd_fit, "evaluate": _cmd_evaluate, "embed": _cmd_embed}


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
