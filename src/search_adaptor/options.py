"""The command line's options, as data: every command's arguments and the parser built from them.

:mod:`search_adaptor.cli` holds what each command does; this module only says what it accepts.
Nothing heavy is imported here, so ``--help`` starts instantly.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from search_adaptor import __version__
from search_adaptor.encoders import LOCAL, PROVIDERS
from search_adaptor.variants import (
    DEFAULT_FAMILY,
    DEFAULT_FOLDS,
    DEFAULT_SELECTION,
    FAMILY_CHOICES,
    MAX_SEED,
    MAX_STEPS,
    PRECISIONS,
    REFIT_BY_DEFAULT,
    SELECTIONS,
)


def _positive(
    kind: type, what: str = "", most: float = float("inf"), above: float = 0
) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` above ``above`` (0) and at most ``most``, else "must be
    ``what``"."""

    def parse(text: str) -> Any:
        with contextlib.suppress(ValueError):
            if above < (value := kind(text)) < float("inf") and value <= most:
                return value
        raise argparse.ArgumentTypeError(f"must be {what or f'a positive {kind.__name__}'}, got {text}")

    return parse


_positive_int, _positive_float = _positive(int), _positive(float)


def _sizes(text: str) -> tuple[int, ...]:
    """``--dims``: distinct positive sizes, comma-separated (a size given twice is a typo, refused)."""
    sizes = tuple(map(_positive_int, text.split(",")))
    twice = next((m for i, m in enumerate(sizes) if m in sizes[:i]), None)
    if twice is not None:
        raise argparse.ArgumentTypeError(f"{twice} is given twice in {text}; give each size once")
    return sizes


_port = _positive(int, "a TCP port from 1 to 65535", 65535)
_folds = _positive(int, "an integer of at least 2 (k-fold holds out one part in k)", above=1)
_seed = _positive(int, f"an integer from 0 to {MAX_SEED}", MAX_SEED, above=-1)


Arg = tuple[tuple[str, ...], dict[str, Any]]


def A(*flags: str, **options: Any) -> Arg:
    """One ``add_argument`` call, as data."""
    return flags, options


_OUTPUT = A("-o", "--output", choices=("table", "json"), default="table")
_ADAPTER = A(
    "--adapter", required=True, metavar="ADAPTER_DIR", help="the adapter folder fit wrote (OUT_DIR/adapter)"
)
#: where an index's model folders are now, when they moved since it was built (same folder name)
_MOVED_MODELS = (
    A("--model", metavar="DIR", help="the index's model folder (model2vec, onnx), if moved since"),
    A("--query-model", metavar="DIR", help="the same for a cross-model index's query model"),
)
_DIM = A("--dim", type=_positive_int, help="keep the first DIM adapted coordinates (Matryoshka)")
_EF_SEARCH = A(
    "--ef-search", type=_positive_int, metavar="N", help="HNSW search breadth (default: the index's)"
)
_DATA = A("data", metavar="DATA_DIR", help="BEIR-layout folder, or beir:NAME to download")
_PAIRS = [
    A("--pairs", metavar="FILE", help="more texts to map --query-model with: a query log (.jsonl/lines)"),
    A(
        "--sentence-pairs",
        action="store_true",
        help="map --query-model with the corpus's sentences too: query-length texts, no labels needed "
        "(about the corpus's tokens again, embedded by both models)",
    ),
]
_PRECOMPUTED = A("--embeddings", metavar="DIR", help="precomputed DIR/{queries,corpus}.{npz,parquet}")
#: ``--retry-budget`` of the commands that call an API for their answers (search, serve)
_RETRY_BUDGET: dict[str, Any] = {"type": _positive_float, "dest": "retry_budget_s", "metavar": "S"}
_QUIET = A("--quiet", action="store_true", help="no progress bars, per-candidate or Ray lines")
_ENCODER = [
    A(
        "--provider",
        choices=PROVIDERS,
        help=f"default: the model --adapter records (commands that take one), else {LOCAL}",
    ),
    A("--model", help=f"model id (default for {LOCAL}: sentence-transformers/all-MiniLM-L6-v2)"),
    A("--base-url", help="API root for openai-compatible / self-hosted endpoints"),
    A("--dimensions", type=_positive_int, help="shorter output vectors, where supported"),
    A("--batch-size", type=_positive_int, help="texts per batch (default: the provider's max)"),
    A("--max-concurrency", type=_positive_int, help="API requests in flight (default 4)"),
    A(
        "--timeout",
        type=_positive_float,
        help="seconds to wait for one API reply (default 60 plus 1 per 1,000 tokens sent, at most 600)",
    ),
    _PRECOMPUTED,
    A("--cache", metavar="DIR", help="embedding store ($SEARCH_ADAPTOR_CACHE or user cache)"),
    _QUIET,
    A(
        "--query-provider",
        choices=PROVIDERS,
        help="queries by another model (default: the one --adapter records, else --provider's)",
    ),
    A("--query-model", help="that model's id (a folder for model2vec); see `search-adaptor distill`"),
    A(
        "--query-base-url",
        help="that model's API root (default: --base-url for a model of the documents' provider, named "
        "or recorded; alone: of the query model an adapter records)",
    ),
]
#: where ``search`` and ``serve`` reach the API models an index records (their keys: the environment)
_API_ROOTS = [
    A("--base-url", help="reach the index's API model through this root (a proxy, a regional endpoint)"),
    A(
        "--query-base-url",
        help="the same for a cross-model index's query model (default: --base-url for a model of "
        "the documents' provider)",
    ),
]
_ENGINE = [
    A("--engine", default="local", choices=("local", "ray"), help="local (default) or Ray Data"),
    A("--ray-address", metavar="ADDR", help="Ray cluster (ray://head:10001, auto); default: local"),
    A("--rows", type=_positive_int, help="rows per chunk and shard"),
]
#: command -> its arguments; "embeddings", "encoder" (the same without --embeddings: embed makes the
#: vectors it would bring) and "engine" add those shared groups. Help: the docstrings.
_COMMANDS: dict[str, list[Arg | str]] = {
    "fit": [
        _DATA,
        A("--out", required=True, metavar="OUT_DIR", help="for report.json/md and adapter/"),
        A("--family", default=DEFAULT_FAMILY, choices=FAMILY_CHOICES, help="variants to train"),
        A(
            "--seed",
            type=_seed,
            default=0,
            help="seeds sampling, starts and the validation split (default 0)",
        ),
        A(
            "--folds",
            type=_folds,
            default=DEFAULT_FOLDS,
            help="k without a train split (and of --selection kfold)",
        ),
        A(
            "--selection",
            default=DEFAULT_SELECTION,
            choices=SELECTIONS,
            help="compare candidates on a validation split (default), or by k-fold over every training "
            "query, then train the winner on all: fewer wrong picks, about k times the training time",
        ),
        A(
            "--refit-all",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="train the winner again on every training query, the validation ones too, for the "
            "steps its validation chose, and ship that: more labels, no held-out check of its own "
            f"(default: on for family {', '.join(REFIT_BY_DEFAULT)} with labels; --no-refit-all ships "
            "the validated winner)",
        ),
        A(
            "--val-split",
            default="auto",
            metavar="SPLIT",
            help="qrels split that validates every fit (default auto: dev, validation or val when the "
            "data has one); none: a share of the training queries",
        ),
        A("--max-steps", type=_positive_int, help=f"steps per variant (default {MAX_STEPS})"),
        A(
            "--precision",
            choices=PRECISIONS,
            help="training steps' products (default float32: the same arithmetic on any machine; bfloat16, "
            "or auto where the CPU has it natively: faster steps, slightly lower nDCG@10, BENCHMARKS.md)",
        ),
        A("--dims", type=_sizes, help="Matryoshka sizes: 64,128"),
        A(
            "--unsupervised",
            "--unlabelled",
            action="store_true",
            help="train without labels (they only score)",
        ),
        *_PAIRS,
        _OUTPUT,
        "embeddings",
    ],
    "evaluate": [
        _DATA,
        _ADAPTER,
        A("--split", default="test", help="qrels split to score (default test)"),
        A(
            "--out",
            metavar="OUT_DIR",
            help="also write report.json/md (and figures) there: a new or empty folder, or an earlier "
            "evaluate's",
        ),
        _OUTPUT,
        "embeddings",
    ],
    "embed": [
        _DATA,
        A("--dry-run", action="store_true", help="say what would be sent"),
        *_PAIRS,
        "encoder",
    ],
    "index": [
        A("data", metavar="DATA_DIR", help="BEIR folder, or corpus.jsonl[.gz] / .parquet"),
        _ADAPTER,
        A(
            "--out",
            required=True,
            metavar="INDEX_DIR",
            help="a new or empty folder for the index, or an earlier index (replaced)",
        ),
        A("--backend", default="flat", choices=("flat", "hnsw"), help="hnsw: approximate"),
        A("--hnsw-m", type=_positive_int, metavar="M", help="HNSW graph degree (default 32)"),
        A("--ef-search", type=_positive_int, metavar="N", help="HNSW search breadth (default 128)"),
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
        A(
            "--queries",
            action="store_true",
            help="adapt them as queries: the adapter's query side (a query-only adapter's network; "
            "a cross-model adapter's map from its query model); default: as documents",
        ),
        _DIM,
        _QUIET,
        "engine",
    ],
    "search": [
        A("index", metavar="INDEX_DIR"),
        A("query"),
        A("-k", type=_positive_int, default=10),
        _EF_SEARCH,
        A(
            "--retry-budget",
            **_RETRY_BUDGET,
            help="seconds the API call may take, retries included (default 30)",
        ),
        _OUTPUT,
        *_API_ROOTS,
        *_MOVED_MODELS,
    ],
    "serve": [
        A("index", metavar="INDEX_DIR"),
        A("--host", help="address to bind (default: loopback only)"),
        A("--port", type=_port, help="default 8000"),
        A("--api-key-env", metavar="VAR", help="require Bearer <key>, the key read from VAR"),
        A("--threads", type=_positive_int, metavar="N", help="CPU threads (1 when shared)"),
        A(
            "--retry-budget",
            **_RETRY_BUDGET,
            help="seconds each API call may take, retries included (default 10)",
        ),
        A("--model-name", metavar="NAME", help="/v1 model names NAME-query, NAME-document"),
        _EF_SEARCH,
        *_API_ROOTS,
        *_MOVED_MODELS,
    ],
    "distill": [
        A(
            "--out",
            required=True,
            metavar="DIR",
            help="a new or empty folder, or an earlier static model (replaced)",
        ),
        A("--model", help="sentence-transformers model to distil (default: the local MiniLM)"),
        A("--dim", type=_positive_int, help="static model dimension (default 256)"),
        _QUIET,
    ],
    "export-encoder": [
        A(
            "--out",
            required=True,
            metavar="DIR",
            help="a new or empty folder, or an earlier ONNX encoder export (replaced)",
        ),
        A("--model", help="sentence-transformers model to export (default: the local MiniLM)"),
        A("--float32", action="store_true", help="keep float32 weights (default: int8 per channel)"),
    ],
    "export": [
        A("adapter", metavar="ADAPTER_DIR", help="the adapter folder fit wrote (OUT_DIR/adapter)"),
        A(
            "--out",
            required=True,
            metavar="DIR",
            help="a new or empty folder, or an earlier export of that format (replaced)",
        ),
        A(
            "--format",
            required=True,
            choices=("onnx", "sentence-transformers"),
            help="onnx (any base model) or a sentence-transformers folder (local base models)",
        ),
        _DIM,
    ],
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error (``--help`` shows the usage)."""

    #: the command parsers by name (the top parser's): an unknown flag is the command's error
    commands: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"search-adaptor: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        """As argparse, but a flag the command does not take points at the command's --help, not at
        the list of commands (argparse reports it from the top parser)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            where = getattr(self, "commands", {}).get(getattr(parsed, "command", None), self)
            where.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def build_parser(commands: Mapping[str, Callable[..., Any]]) -> argparse.ArgumentParser:
    """The ``search-adaptor`` parser; each command's help is the docstring of its function in ``commands``."""
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
    parser.commands = {}
    groups = {
        "embeddings": _ENCODER,
        "encoder": [arg for arg in _ENCODER if arg is not _PRECOMPUTED],
        "engine": _ENGINE,
    }
    for name, arguments in _COMMANDS.items():
        cmd = parser.commands[name] = sub.add_parser(name, help=commands[name].__doc__, parents=[debug])
        for arg in arguments:
            target = cmd.add_argument_group(arg) if isinstance(arg, str) else cmd
            for flags, options in groups[arg] if isinstance(arg, str) else [arg]:
                target.add_argument(*flags, **options)
    return parser
