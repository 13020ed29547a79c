"""A local sentence-transformers model run by ONNX Runtime, with int8 weights by default.

``search-adaptor export-encoder --out DIR`` (:func:`export_encoder`) exports the model's
transformer to ONNX, quantises its weights to int8, one scale per output channel (dynamic
quantisation: activations are quantised as each call runs; see :func:`_quantize` for what stays
float), and writes the tokenizer and ``encoder.json`` (pooling, window, the most tokens the model
takes, quantisation, source model) beside it. The ``onnx`` provider runs such a folder with
onnxruntime and the ``tokenizers`` library only: no torch at query time; on a CPU core MiniLM int8
encodes a query about 3x faster than the float model, and long documents about 1.5x
(``benchmarks/onnx_encoder.py``).

Its vectors are close to the float model's but not the same, so its fingerprint is its own
(:class:`~search_adaptor.encoders.base.FolderEncoder`: a hash of the graph, the tokenizer and the
settings): an adapter trained on the float model refuses them, and the store keeps them apart.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.encoders.base import EncoderError, FolderEncoder, Kind
from search_adaptor.encoders.local import DEFAULT_MODEL, SentenceTransformerEncoder, cut_to_window

log = logging.getLogger(__name__)

GRAPH = "model.onnx"
TOKENIZER = "tokenizer.json"
CONFIG = "encoder.json"
POOLINGS = ("mean", "cls")
QUANTIZATIONS = ("int8", "float32")
#: the lowest cosine a float32 export may have to its model on the sample texts: rounding only
FLOAT32_AGREEMENT = 0.9999
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: what :func:`export_encoder` writes in its folder, and calls it
PARTS, WHAT = (GRAPH, TOKENIZER, CONFIG), "an ONNX encoder export"
#: the most positions ``encoder.json`` may record (a bound on a hand edit, far above any model's)
MAX_POSITIONS = 1 << 24


class OnnxEncoder(FolderEncoder):
    """A folder written by :func:`export_encoder`, run by onnxruntime (texts only).

    Parameters
    ----------
    model : str
        The folder.
    batch_size : int
        Texts per :meth:`encode_batch` call (one commit of the store); each text runs alone.
    threads : int
        onnxruntime's intra-op threads (1: a serving host runs other work too).

    Raises
    ------
    EncoderError
        Not such a folder, or an ``encoder.json`` out of bounds (a ``window`` longer than the model's
        ``max_positions``, the most tokens it takes, included: a text that long would fail inside
        onnxruntime, mid-corpus, naming no file); the message says how to remake it.
        ``max_positions`` is null for a model whose config records no positions: nothing to check.
        An ``encoder.json`` written before ``max_positions`` was recorded has no such field, and
        nothing else in the folder says it (the graph is not opened to find it: a second parse of
        hundreds of MB at every load); its ``window`` is not checked, and a warning says so.
    """

    provider = "onnx"
    weight_files = (GRAPH, TOKENIZER)
    config_file = CONFIG
    provenance = frozenset({"source_model", "library_version"})
    how_to_make = "make one with `search-adaptor export-encoder --out DIR`"

    def __init__(self, model: str, batch_size: int = 64, threads: int = 1) -> None:
        super().__init__(model, batch_size)
        settings = self.settings()
        pooling, window = settings.get("pooling"), settings.get("window")
        positions = settings.get("max_positions")
        prompts = settings.get("query_prompt", ""), settings.get("document_prompt", "")

        def count(value: Any, top: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= top

        checks = {
            "pooling": pooling in POOLINGS,
            "window": count(window, 65536),
            "quantization": settings.get("quantization") in QUANTIZATIONS,
            "query_prompt": isinstance(prompts[0], str),
            "document_prompt": isinstance(prompts[1], str),
            "max_positions": positions is None or count(positions, MAX_POSITIONS),  # older: none
        }
        bad = next((field for field, ok in checks.items() if not ok), None)
        if bad:
            raise EncoderError(
                f"onnx: {self._folder / CONFIG}: field {bad!r} is {json.dumps(settings.get(bad))}, "
                f"out of bounds; {self.how_to_make}"
            )
        if positions is not None and window > positions:  # encoder.json edited by hand
            raise EncoderError(
                f"onnx: {self._folder / CONFIG}: field 'window' is {window}, but the model in {GRAPH} "
                f"takes at most {positions} tokens; set it to at most {positions}, or {self.remake}"
            )
        if "max_positions" not in settings:
            log.warning(
                "onnx: %s has no 'max_positions' (exported before it was recorded): its 'window' %d is "
                "not checked against the model, and a text longer than the model takes would fail inside "
                "onnxruntime (a window up to the model's max_seq_length, the default, is safe); a new "
                "export records it, but is a new embedding space: adapters fitted on this folder's "
                "vectors would have to be fitted again",
                self._folder / CONFIG,
                window,
            )
        self.pooling, self.window = str(pooling), int(window)
        self.query_prompt, self.document_prompt = prompts
        self.threads = threads
        self._session: Any = None
        self._tokenizer: Any = None

    def config(self) -> dict[str, Any]:
        # how the graph is run is part of the vectors: one text per call (see encode_batch)
        return {**super().config(), "texts_per_call": 1}

    def _load(self) -> tuple[Any, Any]:
        if self._session is None:
            try:
                import onnxruntime as ort
                import tokenizers  # noqa: F401  (read_tokenizer's)
            except ImportError as exc:
                raise EncoderError(
                    "onnx: onnxruntime is not installed; pip install 'search-adaptor[onnx]'"
                ) from exc
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            tokenizer = self.read_tokenizer(TOKENIZER)
            tokenizer.enable_truncation(max_length=self.window)
            tokenizer.no_padding()
            try:
                session = ort.InferenceSession(
                    str(self._folder / GRAPH), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime's errors have no common public base class
                raise EncoderError(
                    f"onnx: {self._folder / GRAPH}: onnxruntime cannot load it ({exc}); {self.remake}"
                ) from exc
            self._tokenizer, self._session = tokenizer, session
        return self._session, self._tokenizer

    def _encodings(self, texts: Sequence[str], kind: Kind) -> list[Any]:
        _, tokenizer = self._load()
        prompt = self.query_prompt if kind == "query" else self.document_prompt

        def count_tokens(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False).ids)

        cut = [cut_to_window(prompt + t, self.window, count_tokens) for t in texts]
        return tokenizer.encode_batch(cut)

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        """Each text runs alone. int8 activations are quantised with one scale per call, so in a
        batch a text's vector would depend on its neighbours (cosine about 0.995 between the two on
        SciFact documents); alone, it is the same in every call, and without padding it is faster
        too (MiniLM int8: 21 documents/s alone, 16 in batches of 64)."""
        self.check_items(texts)  # a text model: an image is refused in one line
        session, _ = self._load()
        wanted = [i.name for i in session.get_inputs()]
        rows = []
        for encoding in self._encodings(texts, kind):
            columns = {
                "input_ids": encoding.ids,
                "attention_mask": encoding.attention_mask,
                "token_type_ids": encoding.type_ids,
            }
            hidden = session.run(None, {k: np.asarray([columns[k]], dtype=np.int64) for k in wanted})[0][0]
            pooled = hidden.mean(axis=0) if self.pooling == "mean" else hidden[0]
            rows.append(pooled / max(float(np.linalg.norm(pooled)), 1e-12))
        return np.asarray(rows, dtype=np.float32)


def export_encoder(
    out_dir: str | os.PathLike, model: str = DEFAULT_MODEL, *, int8: bool = True
) -> tuple[Path, float]:
    """Export ``model`` (sentence-transformers) to an ONNX folder the ``onnx`` provider runs.

    Parameters
    ----------
    out_dir : path
        Written atomically; an existing folder is replaced only if it is such an export or empty,
        and holds nothing else: checked first, before the model is loaded.
    model : str
        Hub id or folder of a sentence-transformers model whose pooling is mean or CLS.
    int8 : bool
        Quantise the weights to int8, per output channel (the default); False keeps float32.

    Returns
    -------
    (Path, float)
        The folder, and the lowest cosine between its vectors and the float model's over a fixed
        set of sample texts (1.0 up to rounding for float32; about 0.99 for int8 MiniLM).

    Raises
    ------
    FileExistsError
        ``out_dir`` is another folder, or holds a file that is not part of an export (a user's note),
        naming it.
    """
    from search_adaptor.files import Staged, check_output_folder, check_replaceable

    check_output_folder(out_dir, CONFIG, WHAT)  # as Staged checks it below, but before any work
    check_replaceable(out_dir, PARTS, WHAT)

    import torch

    from search_adaptor import __version__

    base = SentenceTransformerEncoder(model)
    st = base._load()
    transformer = st[0]
    pooler = next((m for m in st if type(m).__name__ == "Pooling"), None)
    pooling = getattr(pooler, "pooling_mode", None)  # sentence-transformers >= 6
    if pooler is not None and not isinstance(pooling, str):
        pooling = pooler.get_pooling_mode_str()
    if pooling not in POOLINGS:
        raise ValueError(f"{model}: pooling {pooling!r} is not supported by the onnx provider (mean or cls)")
    kinds = [type(m).__name__ for m in st]
    extra = [k for k in kinds[1:] if k not in ("Pooling", "Normalize")]
    if extra:  # the graph is the transformer, then pooling and normalisation: a Dense would be dropped
        raise ValueError(
            f"{model}: its modules are {' -> '.join(kinds)}; the onnx provider runs a transformer, mean or "
            f"CLS pooling and normalisation only, so {extra[0]} would be left out: export a model without "
            "it, or embed with --provider sentence-transformers"
        )

    net = transformer.auto_model.eval()
    positions = _usable_positions(net)  # the window's bound, if the model has one
    window = min((n for n in (transformer.max_seq_length, positions) if n), default=None)
    if window is None:
        raise ValueError(
            f"{model}: neither its max_seq_length nor its config's max_position_embeddings says how many "
            "tokens it takes; set max_seq_length in its sentence_bert_config.json"
        )
    names = [n for n in _INPUTS if n in inspect.signature(net.forward).parameters]  # RoBERTa: no types

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *inputs: Any) -> Any:
            return self.net(**dict(zip(names, inputs, strict=True))).last_hidden_state

    sample = transformer.tokenizer(["a query", "a longer document text"], padding=True, return_tensors="pt")
    ids = sample["input_ids"]
    example = tuple(sample[n] if n in sample else torch.zeros_like(ids) for n in names)
    with Staged(out_dir, folder=True, marker=CONFIG, what=WHAT, parts=PARTS) as staged:
        graph = staged.path / GRAPH
        float_graph = staged.path / "float.onnx" if int8 else graph
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on branches fixed at export (masks are always given here) and on
            # its own deprecation; the graph is checked against the model below, on sample texts
            # of several lengths
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHidden(),
                example,
                str(float_graph),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "batch", 1: "tokens"} for k in (*names, "last_hidden_state")},
                opset_version=17,
                dynamo=False,
            )
        if int8:
            _quantize(float_graph, graph)
            float_graph.unlink()
        transformer.tokenizer.backend_tokenizer.save(str(staged.path / TOKENIZER))
        config = {
            "format": "search-adaptor onnx encoder",
            "pooling": pooling,
            "window": int(window),
            "max_positions": positions,  # null: the model records none (absent: an older export)
            "quantization": "int8" if int8 else "float32",
            "query_prompt": base.query_prompt,
            "document_prompt": base.document_prompt,
            "source_model": model,
            "library_version": __version__,
        }
        (staged.path / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        texts = [
            f"sample text {i}: how does {w} affect health outcomes?" for i, w in enumerate(_SAMPLE_WORDS)
        ]
        cosines = (OnnxEncoder(str(staged.path)).encode_corpus(texts) * base.encode_corpus(texts)).sum(axis=1)
        if not int8 and cosines.min() < FLOAT32_AGREEMENT:  # nothing is published
            raise ValueError(
                f"{model}: the float32 export's vectors differ from the model's (lowest cosine "
                f"{cosines.min():.4f} on sample texts, below {FLOAT32_AGREEMENT}); this model cannot be "
                "exported faithfully: embed with --provider sentence-transformers"
            )
    return staged.target, float(cosines.min())


def _usable_positions(net: Any) -> int | None:
    """The most tokens ``net`` (a transformers model) takes: its config's ``max_position_embeddings``,
    less the rows a RoBERTa-style position table never gives a token. Such a table (RoBERTa,
    XLM-R, MPNet, CamemBERT...) numbers a text's tokens from ``padding_idx + 1``, so its first
    ``padding_idx + 1`` rows are never a token's (RoBERTa: 514 rows, 512 tokens); it is told by its
    own ``padding_idx`` (a BERT table has none), read from the module the model runs rather than
    from a list of model types or the config's ``pad_token_id`` (MPNet fixes its own). None where
    the config records no positions (nothing to check a window against)."""
    positions = getattr(net.config, "max_position_embeddings", None)
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    table = getattr(getattr(net, "embeddings", None), "position_embeddings", None)
    padding = getattr(table, "padding_idx", None)
    offset = padding + 1 if isinstance(padding, int) and 0 <= padding < positions else 0
    return positions - offset


def _quantize(float_graph: Path, graph: Path) -> None:
    """int8 weights, one scale per output channel, for the matrix products with a weight matrix,
    except those that narrow their input (a feed-forward block's output projection): their inputs,
    after the activation, have outliers that one dynamic activation scale per tensor clips, and
    keeping them float halves the distance to the float model's vectors (MiniLM on SciFact: mean
    cosine 0.9942 -> 0.9976). Products of two activations (attention scores) stay float too."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(float_graph))
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    narrowing = [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul"
        and len(shape := shapes.get(node.input[1], ())) == 2
        and shape[0] > shape[1]
    ]
    logging.disable(logging.WARNING)  # onnxruntime advises pre-processing, on the root logger
    try:
        quantize_dynamic(
            float_graph,
            graph,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=narrowing,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.disable(logging.NOTSET)


_SAMPLE_WORDS = ("coffee", "sleep", "vitamin D", "exercise", "air pollution", "statins", "sugar", "alcohol")
