"""``search-adaptor`` command line: argparse and printing only; every command is one library call.
Heavy modules (numpy, torch, models) load only inside the commands, so ``--help`` starts instantly."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from search_adaptor.encoders import LOCAL
from search_adaptor.files import Terminated, check_output_folder, check_replaceable, one_line_error
from search_adaptor.options import build_parser

#: the exit status when the reader of stdout closed it early: 128 + SIGPIPE, what a shell reports for
#: a tool that SIGPIPE ended (``cat``, ``grep`` fed to ``head``), so pipelines read it as they do theirs
SIGPIPE_STATUS = 141
#: seconds ``search`` gives its one API call, retries included (``--retry-budget``); ``serve`` gives 10
SEARCH_RETRY_BUDGET_S = 30.0


def _eprint(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class OutputClosed(Exception):
    """The reader of the command's output went away (``search ... | head -1``): not an error."""


class _Guarded:
    """``sys.stdout`` or ``sys.stderr``, whose reader may close the pipe before the command is done.

    A write to the closed pipe points the stream's file descriptor at the null device (so neither
    later writes nor Python's flush at exit fail again, the recipe of Python's ``signal`` docs) and
    then, on stdout, raises :class:`OutputClosed` to end the command quietly; on stderr, which only
    carries progress, warnings and log lines, the job goes on (a ``fit ... 2>&1 | head -1`` must not
    lose the fit). Everything else is the stream's own.
    """

    def __init__(self, stream: Any, output: bool) -> None:
        self._stream, self._output, self._closed = stream, output, False

    def write(self, text: str) -> int:
        if self._closed:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._on_closed()
        return len(text)

    def flush(self) -> None:
        if self._closed:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._on_closed()

    def _on_closed(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor (a test's)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        if self._output:
            raise OutputClosed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _guarded_streams() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` as :class:`_Guarded` streams while a command runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Guarded(sys.stdout, output=True), _Guarded(sys.stderr, output=False)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """This library's warnings (a damaged stored vector, embedded again) as the command line's own
    ``search-adaptor: warning: ...`` lines, not Python's, which show a source file and a line of code
    the user never wrote; other packages' warnings keep Python's form."""
    package = str(Path(__file__).resolve().parent)
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, *rest: Any, **kw: Any) -> None:
        if str(Path(filename).resolve()).startswith(package):
            print(f"search-adaptor: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, *rest, **kw)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`~search_adaptor.files.Terminated` (a
    KeyboardInterrupt) in the main thread, so that ``kill``, ``timeout``, ``docker stop``, Kubernetes
    and systemd end it as the first Ctrl-C does (staged outputs discarded, the store's replies in
    flight committed) instead of at once, with nothing cleaned up.

    Only where SIGTERM's action is the default: a handler of the program calling :func:`main`, or
    SIGTERM ignored by the parent, is left as it is; and only in the main thread, the one Python runs
    signal handlers in. ``serve`` keeps uvicorn's own handling: it installs its handler while it
    serves, shuts down cleanly, then raises the signal again, which ends here.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _encoder(args: argparse.Namespace, side: str = "", adapter: Any = None) -> Any:
    """The documents' encoder from the flags, or with ``side="query_"`` the queries' when another model
    makes them: --query-provider, --query-model and --query-base-url, or else the query model a
    cross-model ``adapter`` records (None for one model), reached at --query-base-url when given, else,
    for a model of the documents' API, at --base-url.
    Without --provider or --model, the documents' model is the one ``adapter`` records (at --base-url
    when given), else the local default. A provider or model flag given alone takes the other from
    the record (the recorded provider's model; the recorded model's provider)."""
    from search_adaptor.encoders.registry import from_info, make_encoder

    recorded = getattr(adapter, "query_encoder_" if side else "encoder_", None) or {}
    known = recorded.get("provider") if recorded.get("provider") != "precomputed" else None
    given_provider, given_model = getattr(args, f"{side}provider"), getattr(args, f"{side}model")
    # a flag given alone takes the rest from the record: --model alone, the recorded provider's model
    provider = given_provider or known or (args.provider if side else None) or LOCAL
    model = given_model or (recorded.get("model") if provider == known else None)
    wanted = bool(given_provider or given_model) and (provider, model) != (known, recorded.get("model"))
    root = getattr(args, f"{side}base_url")
    if side and not (wanted or recorded or root):
        return None  # one model for queries and documents
    documents = args.provider or (getattr(adapter, "encoder_", None) or {}).get("provider") or LOCAL
    if side and root is None and provider == documents:
        # another model of the documents' API, named by flags or recorded: at the root given for it
        root = args.base_url
    if not wanted and recorded:
        recorded_dims = (recorded.get("config") or {}).get("dimensions")
        if not side and args.dimensions is not None and args.dimensions != recorded_dims:
            raise ValueError(
                f"--dimensions {args.dimensions}: the adapter was trained on {recorded.get('model')} "
                f"{f'with dimensions {recorded_dims}' if recorded_dims else 'at its full width'}; drop "
                "--dimensions, or give --provider and --model too"
            )
        given = {k: getattr(args, k) for k in ("batch_size", "max_concurrency", "timeout")}
        options = {k: v for k, v in given.items() if v is not None}  # a local model refuses the API's
        with _in_flags(_ENCODER_OPTIONS, side):
            return from_info(recorded, **options, base_url=root)
    keys = [
        *([] if side else ["dimensions"]),
        "batch_size",
        "max_concurrency",
        *(["timeout"] if args.timeout else []),
    ]
    options = {k: getattr(args, k) for k in keys if not side or getattr(args, k) is not None}
    if not given_provider and provider == LOCAL and model and _is_model2vec(model):
        raise ValueError(  # sentence-transformers would load it too: slower, under another fingerprint
            f"--{side.replace('_', '-')}model {model} is a model2vec static model: add "
            f"--{side.replace('_', '-')}provider model2vec"
        )
    plan_only = getattr(args, "dry_run", False)  # says what it would send: no key needed
    with _in_flags(_ENCODER_OPTIONS, side):
        return make_encoder(provider, model, base_url=root, plan_only=plan_only, **options)


def _is_model2vec(model: str) -> bool:
    """Whether ``model`` is a folder holding a model2vec model (its config says so)."""
    try:
        return json.loads((Path(model) / "config.json").read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError, AttributeError):  # no such folder or file, not JSON, not an object
        return False


#: the options of an encoder that flags set (``base_url`` and the model have a --query- twin; the
#: others apply to both models), of an index (``index``) and of searching one (``search``, ``serve``)
_ENCODER_OPTIONS = ("base_url", "dimensions", "batch_size", "max_concurrency", "timeout")
_INDEX_OPTIONS = ("backend", "hnsw_m", "ef_search", "dim")
_SIZE_OPTIONS = ("dim",)  # transform and export: a Matryoshka prefix
_SEARCH_OPTIONS = ("ef_search",)


@contextlib.contextmanager
def _in_flags(options: Sequence[str], side: str = "") -> Iterator[None]:
    """Raise a library's refusal in the command line's words: each of ``options`` that it names, as
    the library does (``hnsw_m``, ``backend='hnsw'``), becomes the flag that sets it (--hnsw-m,
    --backend hnsw), on the model's ``side`` (``base_url`` of the query model is --query-base-url),
    so that the fix it gives is a flag the user can type. Only the options of the command's own flags
    are named, and only where the refusal speaks of the argument (``dim must ...``, ``ef_search
    applies ...``, ``timeout does not ...``, ``backend='hnsw'``, ``pass base_url=...``), so that the
    same word in another sense (a matrix's ``(n_vectors, dim)``, a field after a dot or in quotes)
    stays. The refusal keeps its type and traceback."""
    from search_adaptor.encoders.base import EncoderError

    dashed = side.replace("_", "-")
    either = "|".join(options)
    named = re.compile(
        rf"(?<![-\w.'])({either})(?:='([^']*)'|(?= must\b| appl| do(?:es)? not|(?:,| and) (?:{either})\b|=))"
    )

    def flag(m: re.Match[str]) -> str:
        value = "" if m[2] is None else f" {m[2]}"
        return f"--{dashed if m[1] == 'base_url' else ''}{m[1].replace('_', '-')}{value}"

    try:
        yield
    except (ValueError, EncoderError) as exc:  # (an API model without a root: "pass base_url=...")
        text = named.sub(flag, str(exc)).replace("pass the model", f"pass --{dashed}model, the model")
        if text != str(exc):
            exc.args = (text, *exc.args[1:])
        raise


def _check_engine_flags(args: argparse.Namespace) -> None:
    """Refuse engine flags that would do nothing here, rather than ignore them."""
    if args.ray_address and args.engine != "ray":
        raise ValueError("--ray-address names the cluster of --engine ray; add --engine ray, or drop it")
    if getattr(args, "embeddings", None) and (args.engine != "local" or args.rows):
        raise ValueError(
            "--embeddings vectors are indexed in memory, and --engine and --rows apply to embedding a "
            "corpus; drop them, or index the corpus's texts instead"
        )


def _note_size(adapter: Any, dim: int | None) -> None:
    """Say so, on stderr, when ``--dim`` asks for a prefix size the adapter was not trained at."""
    note = adapter.untrained_size(dim)
    if note:
        print(f"search-adaptor: warning: --dim {note}", file=sys.stderr)


def _pair_texts(args: argparse.Namespace, dataset: Any) -> list[str] | None:
    """The texts ``--pairs`` and ``--sentence-pairs`` add for both models to embed (None: none)."""
    texts: list[str] = []
    if getattr(args, "pairs", None):
        from search_adaptor.data import read_texts

        texts = read_texts(args.pairs)
    if getattr(args, "sentence_pairs", False):
        from search_adaptor.data import corpus_sentences

        sentences = corpus_sentences(dataset)
        if not sentences:
            print(
                f"search-adaptor: warning: --sentence-pairs: {dataset.name}'s documents are one sentence "
                "each (or images); they are paired already, nothing is added",
                file=sys.stderr,
            )
        texts = list(dict.fromkeys([*texts, *sentences]))
    return texts or None


def _one_model_with_embeddings(args: argparse.Namespace) -> None:
    """Refuse --query-* flags beside --embeddings, whose vectors are one model's."""
    if args.query_provider or args.query_model or args.query_base_url:
        raise ValueError(
            "--embeddings brings vectors of one model for queries and documents alike; drop the "
            "--query-* flags, or embed with both models instead of --embeddings"
        )


def _base_vectors_only(folder: str, *stems: str) -> None:
    """Refuse ``--embeddings`` files that ``transform`` wrote (their Parquet records the adapter), as
    ``transform`` refuses them: adapted vectors taken for base ones are adapted twice, and rank, or
    train and score, in silence."""
    from search_adaptor.embed import precomputed_file
    from search_adaptor.pipeline import refuse_adapted

    refuse_adapted([precomputed_file(folder, stem) for stem in stems], "give --embeddings base vectors only")


def _corpus_vectors(args: argparse.Namespace, adapter: Any) -> Any:
    """``index --embeddings``: the precomputed vectors of the corpus's documents only (an index needs
    no query's), of a BEIR folder or of a corpus file, checked against ``adapter``; vectors ``transform``
    wrote are refused, as ``transform`` refuses them (adapted twice, they would rank in silence)."""
    from search_adaptor.data import corpus_file, iter_corpus
    from search_adaptor.embed import precomputed_vectors
    from search_adaptor.experiment import check_precomputed

    _one_model_with_embeddings(args)
    _base_vectors_only(args.embeddings, "corpus")
    doc_ids = [i for ids, _ in iter_corpus(corpus_file(args.data), 1 << 16) for i in ids]
    emb = precomputed_vectors(args.embeddings, doc_ids, model=args.model)
    check_precomputed(adapter, emb, args.embeddings)
    return emb


def _embeddings(args: argparse.Namespace, dataset: Any, adapter: Any = None) -> tuple[Any, int]:
    """The dataset's embeddings, once what the command will score has been checked (nothing is paid for
    a run that would stop at its qrels), and how many paired texts (``fit --pairs``) were left out,
    unembedded, as the texts of queries the fit scores or validates (its report records them)."""
    from search_adaptor.experiment import embeddings_for, fit_family, protocol, without_held_out

    if args.command == "fit":  # its qrels, and --selection kfold's needs in every fit, checked first
        proto = protocol(dataset, args.folds, args.seed, val_split=args.val_split, selection=args.selection)
        # e.g. training queries the scored split holds, left out: said here, before anything is embedded
        # (a user can stop the run before paying for it) and under --quiet, as every warning is; run_fit,
        # which would log them after embedding, is told they are said (_cmd_fit's warn)
        for warning in proto.warnings:
            print(f"search-adaptor: warning: {warning}", file=sys.stderr)
    elif args.command == "evaluate":
        dataset.split(args.split)
    options: dict[str, Any] = {"adapter": adapter, "pair_texts": _pair_texts(args, dataset)}
    left_out = 0
    if options["pair_texts"] and args.command == "fit":  # fit's options only
        options["pair_texts"], left_out = without_held_out(
            options["pair_texts"], dataset, proto, selection=args.selection
        )
        options["pair_texts"] = options["pair_texts"] or None
    if args.embeddings:
        _one_model_with_embeddings(args)
        if args.command == "fit":  # (paired texts, for a query model, are refused with these vectors)
            fit_family(args.family, args.dims, args.unsupervised, bool(options["pair_texts"]), args.selection)
        if not options["pair_texts"]:  # which embeddings_for refuses first: the flags, then the files
            _base_vectors_only(args.embeddings, "queries", "corpus")
        return embeddings_for(dataset, precomputed=args.embeddings, model=args.model, **options), left_out
    options.update(cache_dir=args.cache, progress=not args.quiet)
    encoder, query_encoder = _encoder(args, adapter=adapter), _encoder(args, "query_", adapter)
    cross = query_encoder is not None and query_encoder.fingerprint != encoder.fingerprint
    if args.command == "fit":  # a family the flags cannot train is refused before anything is embedded
        # paired texts map a query model: without one, embedding says to name it
        fit_family(
            args.family, args.dims, args.unsupervised, cross or bool(options["pair_texts"]), args.selection
        )
    if left_out and cross:  # (without a query model the paired texts are refused: no warning first)
        print(
            f"search-adaptor: warning: {left_out} paired text(s) are the texts of queries this fit "
            "scores or validates; they are left out, so that those queries stay held-out",
            file=sys.stderr,
        )
    return embeddings_for(dataset, encoder, query_encoder=query_encoder, **options), left_out


def _print_report(report: dict[str, Any], output: str, out_dir: str | None) -> None:
    from search_adaptor.report import (
        identity_lines,
        loss_lines,
        refit_lines,
        seen_lines,
        size_lines,
        size_warnings,
        unscored_lines,
    )

    if output == "json":
        print(json.dumps(report, indent=2))
        alerts = seen_lines(report) + loss_lines(report) + size_warnings(report, "ndcg@10")
        for line in alerts:  # a script's stderr gets them too
            print(line, file=sys.stderr)
        return
    from search_adaptor.metrics import metrics_table

    how = report["test_split"] if report["protocol"] == "evaluate" else report["protocol"]
    n, selected = report["n_test_queries"], report["selected"]
    queries = f"; queries of {report['query_model']}" if report.get("query_model") else ""
    # fit: held-out by id (protocol leaves the scored queries out of training); evaluate: held-out
    # only when none trained the adapter
    seen = report.get("seen_in_training")
    kind = "held-out" if report["protocol"] != "evaluate" or (seen and not seen["n"]) else "scored"
    if report["protocol"] == "kfold":  # the table's adapted row is each fold's own winner's
        print(
            f"{report['dataset']} (kfold, {n} {kind} queries, each scored by its fold's winner{queries}) "
            f"saved adapter: {selected}"
        )
    else:
        print(f"{report['dataset']} ({how}, {n} {kind} queries{queries}) selected: {selected}")
    print("\n".join(metrics_table(report["metrics"], list(report["metrics"]["zero-shot"]))))
    where = f"; report: {os.path.join(os.path.abspath(out_dir), 'report.md')}" if out_dir else ""
    print(f"paired randomization test on ndcg@10: p = {report['significance']['p_value']:.4g}{where}")
    # queries not scored, a leak, a loss, the identity, a refit on every query
    for lines in (unscored_lines, seen_lines, loss_lines, identity_lines, refit_lines):
        for line in lines(report):
            print(line)
    for line in size_lines(report, "ndcg@10")[1:]:  # a Matryoshka fit: each size against its baselines
        print(line)


def _cmd_fit(args: argparse.Namespace) -> None:
    """embed, train, select and evaluate an adapter; write report + adapter"""
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import check_selection, run_fit
    from search_adaptor.report import check_run_folder, save_run

    # contradicting flags: said first
    check_selection(args.unsupervised, args.selection, args.refit_all, args.family)
    check_run_folder(args.out, "fit")  # before any work: a folder of the user's is never written into
    dataset = load_beir(args.data)
    emb, pairs_left_out = _embeddings(args, dataset)
    log = (lambda _m: None) if args.quiet or args.output == "json" else _eprint
    log(f"{dataset.name}: {len(dataset.doc_ids)} docs, {len(dataset.queries)} queries; {emb.describe()}")
    given = {"max_steps": args.max_steps, "precision": args.precision}
    overrides = {k: v for k, v in given.items() if v} or None
    names = ("family", "seed", "folds", "dims", "unsupervised", "selection", "val_split", "refit_all")
    options = {k: getattr(args, k) for k in names}
    # protocol's warnings were printed before embedding (_embeddings): not a second time
    run = run_fit(
        dataset,
        emb,
        overrides=overrides,
        log=log,
        warn=lambda _w: None,
        pairs_left_out=pairs_left_out,
        **options,
    )
    _print_report(save_run(run, args.out), args.output, args.out)


def _refuse_a_fits_folder(report: Path) -> None:
    """``evaluate --out`` into a fit's folder would replace the fit's report (its proof) with its own."""
    try:
        protocol = json.loads(report.read_text(encoding="utf-8")).get("protocol")
    except (OSError, ValueError, AttributeError):  # none, or not one this tool reads: not a fit's either
        return
    if protocol != "evaluate":
        raise FileExistsError(
            f"{report.parent}: holds the report of a fit, which evaluate would replace; choose another "
            f"folder (e.g. {report.parent / 'evaluate'})"
        )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    """score a saved adapter (and zero-shot) on a dataset split; --out also writes its report"""
    from search_adaptor.data import load_beir
    from search_adaptor.experiment import run_evaluate
    from search_adaptor.model import SearchAdaptor
    from search_adaptor.report import REPORT, check_run_folder, save_run

    if args.out:
        check_run_folder(args.out, "evaluate")
        _refuse_a_fits_folder(Path(args.out) / REPORT)
    adapter = SearchAdaptor.load(args.adapter)
    dataset = load_beir(args.data)
    run = run_evaluate(dataset, _embeddings(args, dataset, adapter)[0], adapter, args.split)
    _print_report(save_run(run, args.out) if args.out else run.report, args.output, args.out)


def _cmd_embed(args: argparse.Namespace) -> None:
    """embed a dataset into the store (only what is not cached yet)"""
    from search_adaptor.data import load_beir
    from search_adaptor.embed import embed_dataset, plan_embedding

    dataset, encoder, query_encoder = load_beir(args.data), _encoder(args), _encoder(args, "query_")
    pairs = _pair_texts(args, dataset)  # what a cross-model fit given them would embed too
    if args.dry_run:
        print(plan_embedding(dataset, encoder, args.cache, query_encoder, pairs).describe())
    else:
        emb = embed_dataset(
            dataset, encoder, args.cache, not args.quiet, query_encoder=query_encoder, pair_texts=pairs
        )
        print(f"{dataset.name}: {emb.describe(getattr(encoder, 'retries', None))}")


def _cmd_index(args: argparse.Namespace) -> None:
    """embed a corpus, adapt it and write a searchable index folder"""
    from search_adaptor.index import INDEX_PARTS, MANIFEST, build_index, import_faiss
    from search_adaptor.model import SearchAdaptor

    import_faiss()  # fail before embedding anything
    _check_engine_flags(args)
    check_output_folder(args.out, MANIFEST, "an index")
    check_replaceable(args.out, INDEX_PARTS, "an index")  # (a file of the user's in it would go)
    adapter = SearchAdaptor.load(args.adapter)
    _note_size(adapter, args.dim)
    source = _corpus_vectors(args, adapter) if args.embeddings else args.data
    encoder = None if args.embeddings else _encoder(args, adapter=adapter)
    keys = ("engine", "backend", "rows", "ray_address", "dim", "hnsw_m", "ef_search")
    options = {k: getattr(args, k) for k in keys}
    options.update(
        cache_dir=args.cache, progress=not args.quiet, query_encoder=_encoder(args, "query_", adapter)
    )
    with _in_flags(_INDEX_OPTIONS):
        index, stats = build_index(source, encoder, adapter, args.out, **options)
    how = (
        f"{stats.engine} engine, {args.backend}, {index.dim}-d, adapter mode {adapter.fitted_params_['mode']}"
    )
    print(f"{index.n_docs} documents indexed ({how}) in {os.path.abspath(args.out)} ({stats.timing()})")


def _cmd_transform(args: argparse.Namespace) -> None:
    """adapt document (or, --queries, query) vectors you already have (.npy / Parquet), streaming"""
    from search_adaptor.model import SearchAdaptor
    from search_adaptor.pipeline import transform_vectors

    _check_engine_flags(args)
    _outside_an_index(args.out)
    keys = ("engine", "rows", "id_column", "vector_column", "ray_address", "dim")
    options = {k: getattr(args, k) for k in keys}
    adapter = SearchAdaptor.load(args.adapter)
    _note_size(adapter, args.dim)
    kind = "query" if args.queries else "document"
    with _in_flags(_SIZE_OPTIONS):
        stats = transform_vectors(
            args.vectors, adapter, args.out, progress=not args.quiet, kind=kind, **options
        )
    rate = stats.rows / max(stats.seconds, 1e-9)
    print(
        f"{stats.rows} {'query ' * args.queries}vectors ({stats.dim}-d) adapted with the {stats.engine} "
        f"engine into {args.out} in {stats.seconds:.1f} s ({rate:,.0f} rows/s)"
    )
    if args.queries:
        if adapter.is_identity_:
            print("Only normalised to unit length: this adapter is the identity (zero-shot won).")
    elif adapter.is_identity_ or adapter.fitted_params_["mode"] == "query_only":
        why = "is the identity (zero-shot won)" if adapter.is_identity_ else "adapts queries only"
        print(
            f"Only normalised to unit length: this adapter {why}, so the documents' vectors keep their "
            "direction; an index of them as they are serves it too."
        )


def _outside_an_index(out: str) -> None:
    """Refuse an output inside an index folder: its ``vectors/`` are what the index was built from
    (and what a vector database is loaded with); other vectors there would pass for them."""
    from search_adaptor.index import INDEX_FILE, MANIFEST

    target = Path(out).resolve()
    for folder in target.parents:
        if (folder / MANIFEST).is_file() and (folder / INDEX_FILE).is_file():
            raise ValueError(
                f"{out}: inside the index {folder}, whose vectors it would replace or join; write it "
                "outside the index"
            )


def _cmd_search(args: argparse.Namespace) -> None:
    """search an index folder with one query"""
    from search_adaptor.index import AdaptedIndex, moved_models

    index = AdaptedIndex.load(args.index, **moved_models(args.index, args.model, args.query_model))
    if args.ef_search is not None:  # this run's breadth; the folder keeps its own
        with _in_flags(_SEARCH_OPTIONS):
            index.ef_search = args.ef_search
    # one query at a terminal: an API out of reach ends in seconds, not after the minute of retries
    # a long embedding job is right to spend (an API model only; a local one has none)
    budget = args.retry_budget_s or SEARCH_RETRY_BUDGET_S
    index.configure_encoder(base_url=args.base_url, query_base_url=args.query_base_url, retry_budget_s=budget)
    hits = index.search([args.query], k=args.k)[0]
    if args.output == "json":
        print(json.dumps([{"id": doc, "score": score} for doc, score in hits], indent=2))
        return
    print("rank  score   id")
    for rank, (doc, score) in enumerate(hits, 1):
        # an id with a line break, a tab or a terminal escape would split its row or reach the
        # terminal as a command: such an id is shown as a Python literal, its characters escaped
        print(f"{rank:>4}  {score:.4f}  {doc if doc.isprintable() else repr(doc)}")


def _cmd_serve(args: argparse.Namespace) -> None:
    """serve an index folder over HTTP (POST /search, /embed, /v1/embeddings; GET /health)"""
    from search_adaptor.server import serve

    keys = ("host", "port", "api_key_env", "threads", "retry_budget_s", "model_name", "ef_search")
    keys += ("base_url", "query_base_url", "model", "query_model")
    with _in_flags(_SEARCH_OPTIONS):
        serve(args.index, **{k: getattr(args, k) for k in keys if getattr(args, k) is not None})


def _cmd_distill(args: argparse.Namespace) -> None:
    """distil a static query model (model2vec) from a sentence-transformers model, offline"""
    from search_adaptor.distill import distill

    options = {k: v for k, v in {"model": args.model, "dim": args.dim}.items() if v is not None}
    out = distill(args.out, **options, progress=not args.quiet)
    print(f"static model written to {out}; use it with --query-provider model2vec")


def _cmd_export_encoder(args: argparse.Namespace) -> None:
    """export a sentence-transformers model to ONNX (int8 weights unless --float32), for --provider onnx"""
    from search_adaptor.encoders.onnx import export_encoder

    options = {"model": args.model} if args.model else {}
    out, cosine = export_encoder(args.out, **options, int8=not args.float32)
    print(f"ONNX encoder written to {out} (lowest cosine to the float model on sample texts: {cosine:.4f})")
    print(f"use it with --provider onnx --model {out}: its vectors are its own, so fit an adapter on them")


def _cmd_export(args: argparse.Namespace) -> None:
    """export an adapter as ONNX or as a sentence-transformers model"""
    from search_adaptor.export import export
    from search_adaptor.model import SearchAdaptor

    adapter = SearchAdaptor.load(args.adapter)
    _note_size(adapter, args.dim)
    with _in_flags(_SIZE_OPTIONS):
        out = export(adapter, args.out, args.format, args.dim)
    print(f"{args.format} export of {args.adapter} written to {out} and checked against the adapter")


def _when_stopped(args: argparse.Namespace) -> str:
    """What is true of the command ``args`` ran once Ctrl-C or SIGTERM stops it, for the line it ends
    with (:func:`~search_adaptor.files.one_line_error`): a command that takes --cache embeds through
    the store, which keeps every batch it finished (a rerun pays only for the rest), unless
    --embeddings brought the vectors or --dry-run sends nothing; ``serve`` has stopped serving; the
    others have nothing to add."""
    if args.command == "serve":
        return "server stopped"
    brought = getattr(args, "embeddings", None) or getattr(args, "dry_run", False)  # (not all have both)
    embeds = hasattr(args, "cache") and not brought
    return "embeddings finished so far are kept in the store" if embeds else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends in one ``search-adaptor: error: ...`` line, exit 2 (--debug: after
    its traceback)."""
    commands = {name[5:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("_cmd_")}
    parser = build_parser(commands)
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
    with _guarded_streams(), _sigterm_interrupts(), _one_line_warnings():
        try:
            return commands[args.command](args) or 0
        except OutputClosed:  # as a tool killed by SIGPIPE, the shell's status for it
            return SIGPIPE_STATUS
        except (Exception, KeyboardInterrupt) as exc:  # SIGTERM's Terminated too
            status, line = one_line_error(exc, getattr(args, "debug", False), _when_stopped(args))
            _eprint(line)
            return status


if __name__ == "__main__":
    sys.exit(main())
