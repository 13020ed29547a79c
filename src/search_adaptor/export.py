"""Ship a trained adapter without this library: ONNX graphs, or a sentence-transformers model folder.

``export_onnx`` writes ``query.onnx`` and ``corpus.onnx`` (input ``embeddings``: base vectors of
shape (n, dim); output ``adapted``: unit-norm vectors), each including the input and output L2
normalisation, so any ONNX runtime reproduces ``transform_queries`` / ``transform_corpus``. Both
files exist for every mode: in ``shared`` mode they are the same network, in ``query_only`` mode
``corpus.onnx`` only normalises. ``export.json`` records the mode and base encoder. The mode is the
fitted adapter's (``fitted_params_``): ``set_params`` after ``fit`` edits the attributes for the next
fit, not the networks an export writes.

``export_sentence_transformers`` (local sentence-transformers base models only) writes a model
folder that plain ``SentenceTransformer(folder)`` loads (no ``trust_remote_code``, no search-adaptor
needed): the base modules, then the adapter as built-in ``Dense`` and ``Normalize`` modules (a text
the base model embeds to zero, a static model's of unknown words, stays zero, as in ``transform_*``). For
``query_only`` and ``separate`` adapters a built-in ``Router`` sends queries and documents through
their own side: ``encode_query`` and ``encode_document`` give the adapted vectors in every mode, and
plain ``encode`` is the query encoder.

Both emit exactly what ``transform_queries`` / ``transform_corpus`` compute
(``SearchAdaptor.numpy_side``): an adapter that kept its start (best step 0) exports its start, the
projection alone (a PCA rotation, another model's map), or only the normalisation where it starts at
the identity, never the residual function that it does not apply.

Every export is checked against the torch adapter before it is written (1e-5), and written
atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search_adaptor.encoders import LOCAL
from search_adaptor.files import Staged
from search_adaptor.model import SearchAdaptor, as_adapter
from search_adaptor.networks import NumpyNet

OPSET = 17  # ReduceL2 still takes axes as an attribute; onnxruntime >= 1.13 runs it
TOLERANCE = 1e-5
_EPS = 1e-12  # as l2_normalize
_CHECK_TEXTS = ["what causes fever", "Aspirin lowers the risk of heart attacks.", "", "ß ünïcode 漢字 ✓"]


def _nets(adapter: SearchAdaptor) -> tuple[NumpyNet | None, NumpyNet | None]:
    """(query, corpus) sides exactly as ``transform_*`` applies them (:meth:`SearchAdaptor.numpy_side`,
    the very objects they run, not the torch networks: a kept start (best step 0) computes ``p`` alone,
    so a no-skip network's random ``f``, never trained nor scored, must not reach an export); None
    means "normalise only" (no network, or a kept identity start). Their weights are (in, out) and
    shared: transposed copies go into the (out, in) layouts ONNX's Gemm and torch's Linear take."""
    return adapter.numpy_side("query"), adapter.numpy_side("document")


def _out_in(weight_t: np.ndarray) -> np.ndarray:
    """A NumpyNet's (in, out) weight as the C-contiguous (out, in) copy ONNX and torch layers take."""
    return np.ascontiguousarray(weight_t.T)


# -- ONNX --------------------------------------------------------------------------------------------
def _onnx_graph(
    net: NumpyNet | None, dim: int, name: str, size: int | None = None, in_dim: int | None = None
) -> Any:
    """ONNX model: normalise -> [projection -> residual function (+ its input)] -> [first ``size``
    coordinates] -> normalise; ``in_dim`` is the input width when a projection changes it (queries of
    another model). A kept start has no residual function: the projection alone."""
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits = [numpy_helper.from_array(np.array(_EPS, dtype=np.float32), "eps")]

    def normalize(x: str, out: str) -> None:
        nodes.append(helper.make_node("ReduceL2", [x], [f"{out}_norm"], axes=[1], keepdims=1))
        nodes.append(helper.make_node("Max", [f"{out}_norm", "eps"], [f"{out}_safe"]))
        nodes.append(helper.make_node("Div", [x, f"{out}_safe"], [out]))

    # scaled by its largest value first, as the library reads a row: a float32 sum of squares of a
    # vector of length 1e-20 underflows (and of 1e20 overflows), which left it unnormalised
    inits.append(numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, dtype=np.float32), "tiny"))
    nodes.append(helper.make_node("Abs", ["embeddings"], ["abs"]))
    nodes.append(helper.make_node("ReduceMax", ["abs"], ["largest"], axes=[1], keepdims=1))
    nodes.append(helper.make_node("Max", ["largest", "tiny"], ["largest_safe"]))
    nodes.append(helper.make_node("Div", ["embeddings", "largest_safe"], ["scaled"]))
    normalize("scaled", "x")
    h = base = "x"
    if net is not None:
        if net.project is not None:  # (in, out) already: x @ p
            inits.append(numpy_helper.from_array(net.project, "projection"))
            nodes.append(helper.make_node("MatMul", ["x", "projection"], ["projected"]))
            h = base = "projected"
        for i, (weight_t, bias, relu) in enumerate(net.layers):
            inits += [
                numpy_helper.from_array(_out_in(weight_t), f"w{i}"),
                numpy_helper.from_array(bias, f"b{i}"),
            ]
            nodes.append(helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"h{i}"], transB=1))
            h = f"h{i}"
            if relu:
                nodes.append(helper.make_node("Relu", [h], [f"{h}_relu"]))
                h = f"{h}_relu"
        if net.residual:
            nodes.append(helper.make_node("Add", [base, h], ["residual"]))
            h = "residual"
        inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
        nodes += [  # a zero input stays zero, as in adapt_rows: the network would give it a shared vector
            helper.make_node("Greater", ["x_norm", "zero"], ["has_direction"]),
            helper.make_node("Cast", ["has_direction"], ["keep"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [h, "keep"], ["kept"]),
        ]
        h = "kept"
    if size is not None and size < dim:
        for key, value in (("starts", 0), ("ends", size), ("axes", 1)):
            inits.append(numpy_helper.from_array(np.array([value], dtype=np.int64), key))
        nodes.append(helper.make_node("Slice", [h, "starts", "ends", "axes"], ["prefix"]))
        h = "prefix"
    normalize(h, "adapted")
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["n", in_dim or dim])],
        [helper.make_tensor_value_info("adapted", TensorProto.FLOAT, ["n", size or dim])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="search-adaptor"
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.13
    return model


def export_onnx(
    adapter: SearchAdaptor | str | os.PathLike, out: str | os.PathLike, dim: int | None = None
) -> Path:
    """Write ``query.onnx``, ``corpus.onnx`` and ``export.json`` into ``out``, verified with onnxruntime.

    Parameters
    ----------
    adapter : SearchAdaptor or path
    out : path
        Replaced atomically if it is an earlier ONNX export (has ``export.json``) or empty.
    dim : int, optional
        Output only the first ``dim`` adapted coordinates, unit length again (a Matryoshka prefix).

    Raises
    ------
    RuntimeError
        onnxruntime's output differs from the torch adapter's by more than 1e-5.
    """
    import onnx
    import onnxruntime as ort

    adapter = as_adapter(adapter)
    rng = np.random.default_rng(0)
    query_net, corpus_net = _nets(adapter)
    models = {}
    for side, net, width, transform in (
        ("query", query_net, adapter.query_dim_, adapter.transform_queries),
        ("corpus", corpus_net, adapter.dim_, adapter.transform_corpus),
    ):
        sample = rng.normal(size=(16, width)).astype(np.float32)
        sample[3] = 0.0  # a zero row stays zero in both
        expected = transform(sample, dim=dim)
        model = _onnx_graph(net, adapter.dim_, f"search_adaptor_{side}", dim, width)
        onnx.checker.check_model(model, full_check=True)
        blob = model.SerializeToString()
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        got = session.run(["adapted"], {"embeddings": sample})[0]
        err = float(np.abs(got - expected).max())
        if err > TOLERANCE:
            raise RuntimeError(f"{side}.onnx differs from the torch adapter by {err:.2e}; please report this")
        models[f"{side}.onnx"] = blob
    info = {
        "format": "onnx",
        "mode": adapter.fitted_params_["mode"],  # the fitted one: set_params may have edited .mode since
        "dim": adapter.dim_,
        "output_dim": dim or adapter.dim_,
        "encoder": adapter.encoder_,
        **(
            {"query_dim": adapter.query_dim_, "query_encoder": adapter.query_encoder_}
            if adapter.query_encoder_
            else {}
        ),
        "input": "embeddings: base embeddings, float32 (n, dim); queries (n, query_dim) if given",
        "output": "adapted: unit-norm adapted embeddings, float32 (n, output_dim)",
        "queries": "query.onnx",
        "documents": "corpus.onnx",
    }

    parts = (*models, "export.json")
    with Staged(out, folder=True, marker="export.json", what="an ONNX export", parts=parts) as staged:
        for name, blob in models.items():
            (staged.path / name).write_bytes(blob)
        (staged.path / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return staged.target


# -- sentence-transformers ---------------------------------------------------------------------------
Layer = tuple[np.ndarray, np.ndarray, bool]  # (weight (out, in), bias, ReLU after it)


def _affine_layers(net: NumpyNet | None, dim: int, size: int | None = None) -> list[Layer]:
    """Dense layers computing ``net(x)[:size]`` (before the output normalisation) for unit-norm ``x``.

    With ``x' = P x`` (the projection; the identity without one), a residual MLP
    ``x' + W2 relu(W1 x' + b1) + b2`` becomes two layers through the identity
    ``x' = relu(x') - relu(-x')``: the first outputs ``[relu(W1 P x + b1), relu(P x), relu(-P x)]``,
    the second ``[W2, I, -I]`` times that plus ``b2``. A residual linear map is ``(I + W) P x + b``.
    A kept start (no residual function) is ``P x``, one layer with a zero bias; a side that only
    normalises has none, or the first ``size`` rows of the identity.
    A Matryoshka ``size`` keeps the first rows of the last layer.
    """
    keep = slice(0, size or dim)
    if net is None:
        if size is None or size == dim:
            return []
        return [(np.eye(dim, dtype=np.float32)[keep], np.zeros(size, np.float32), False)]
    # torch's (out, in) layout; the identity for a side without a projection
    P = np.eye(len(net.layers[0][0]), dtype=np.float32) if net.project is None else _out_in(net.project)
    layers = [(_out_in(weight_t), bias, relu) for weight_t, bias, relu in net.layers]
    if not layers:  # a kept start: the projection alone (NumpyNet(start=True); a kept identity is None)
        return [(P[keep], np.zeros(len(P), np.float32)[keep], False)]
    if not net.residual:
        (w0, b0, r0), *rest = layers
        layers = [(w0 @ P, b0, r0), *rest]
        (wl, bl, rl) = layers[-1]
        layers[-1] = (wl[keep], bl[keep], rl)
        return layers
    if len(layers) == 1:
        (weight, bias, _) = layers[0]
        return [(((weight + np.eye(len(weight), dtype=np.float32)) @ P)[keep], bias[keep], False)]
    (w1, b1, _), (w2, b2, _) = layers
    eye = np.eye(w1.shape[1], dtype=np.float32)
    first = (np.vstack([w1 @ P, P, -P]), np.concatenate([b1, np.zeros(2 * len(eye), np.float32)]), True)
    return [first, (np.hstack([w2, eye, -eye])[keep], b2[keep], False)]


def _zero_gated(layers: list[Layer]) -> list[Layer]:
    """``layers`` with every bias multiplied by ``s = min(1, |x|_1)``: the same output for a unit
    ``x`` (``|x|_1 >= |x|_2 = 1``), and exactly zero for a zero ``x``, as ``adapt_rows`` keeps it
    (a static model's text of unknown tokens), where the biases alone would give it a shared vector.

    Built from ReLU layers only (plain ``SentenceTransformer`` loads them): two layers first output
    ``u = relu(x)``, ``v = relu(-x)``, then ``[u, v, t = relu(1 - sum(u + v))]`` (ReLU keeps
    ``u, v >= 0``), so ``x = u - v`` and ``s = 1 - t``; each layer then takes ``s`` as one more input,
    its bias as that input's weight, and passes ``s`` on (``s >= 0``: a ReLU keeps it) to the next.
    At a zero ``x``, ``t = 1`` and the first gated layer's ``b - b * t`` is exactly 0.
    """
    width = layers[0][0].shape[1]
    eye, one = np.eye(width, dtype=np.float32), np.ones((1, 2 * width), np.float32)
    zeros = np.zeros(2 * width, np.float32)
    gate = [
        (np.vstack([eye, -eye]), zeros, True),
        (np.vstack([np.eye(2 * width, dtype=np.float32), -one]), np.append(zeros, 1.0), True),
    ]
    # [x; s] from the gate's [u; v; t]: x = u - v, s = 1 - t (the 1 is a bias: first layer only)
    unpack = np.zeros((width + 1, 2 * width + 1), np.float32)
    unpack[:width, :width], unpack[:width, width : 2 * width], unpack[width, -1] = eye, -eye, -1.0
    gated = []
    for i, (weight, bias, relu) in enumerate(layers):
        last = i == len(layers) - 1
        # [W h + b s; s] from [h; s]
        full = np.zeros((len(weight) + 1, weight.shape[1] + 1), np.float32)
        full[: len(weight), :-1], full[: len(weight), -1], full[-1, -1] = weight, bias, 1.0
        rows = slice(0, len(weight) if last else len(full))
        if i == 0:  # s = 1 - t: the constant 1 enters as the biases, b and (for s's row) 1
            constant = np.append(bias, np.float32(1.0))[rows]
            gated.append(((full @ unpack)[rows], constant, relu))
        else:
            gated.append((full[rows], np.zeros(len(full), np.float32)[rows], relu))
    return [*gate, *gated]


def _dense_modules(net: NumpyNet | None, dim: int, size: int | None = None) -> list[Any]:
    """Built-in sentence-transformers modules computing what ``adapt_rows`` does for unit-norm or
    zero ``x``: ``normalize(net(x)[:size])`` (:func:`_affine_layers`), a zero row kept zero
    (:func:`_zero_gated`, where a layer has a bias that would move it)."""
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    layers = _affine_layers(net, dim, size)
    if any(bias.any() for _, bias, _ in layers):
        layers = _zero_gated(layers)
    return [
        *(
            Dense(
                weight.shape[1],
                weight.shape[0],
                activation_function=nn.ReLU() if relu else nn.Identity(),
                # copies: the module's parameters must not share the side's cached arrays
                init_weight=torch.from_numpy(np.array(weight, dtype=np.float32, order="C")),
                init_bias=torch.from_numpy(np.array(bias, dtype=np.float32, order="C")),
            )
            for weight, bias, relu in layers
        ),
        Normalize(),
    ]


def export_sentence_transformers(
    adapter: SearchAdaptor | str | os.PathLike, out: str | os.PathLike, dim: int | None = None
) -> Path:
    """Write a sentence-transformers model folder whose vectors are the adapted ones.

    ``SentenceTransformer(out).encode_query(texts)`` equals the base model's query embeddings through
    ``transform_queries``, and ``encode_document`` the documents' through ``transform_corpus``;
    plain ``encode`` is the query encoder (the same as both in ``shared`` mode).

    Parameters
    ----------
    adapter : SearchAdaptor or path
        Trained on a local sentence-transformers model.
    out : path
        Replaced atomically if it is a sentence-transformers folder (has ``modules.json``) or empty.
    dim : int, optional
        Output only the first ``dim`` adapted coordinates, unit length again (a Matryoshka prefix).

    Raises
    ------
    ValueError
        The adapter's base model is not a local sentence-transformers model.
    RuntimeError
        The reloaded folder's vectors differ from the adapter's by more than 1e-5.
    """
    adapter = as_adapter(adapter)
    info = adapter.encoder_ or {}
    if adapter.query_encoder_:
        raise ValueError(
            f"this adapter maps queries of {adapter.query_encoder_.get('model') or 'another model'} onto "
            f"documents of {info.get('model') or 'another model'}: one sentence-transformers folder holds "
            "one base model; use --format onnx"
        )
    if info.get("provider") != LOCAL:
        raise ValueError(
            f"this adapter was trained on {info.get('provider') or 'unknown'} embeddings "
            f"({info.get('model') or 'unknown model'}); only a local sentence-transformers base model can "
            "be exported as a sentence-transformers folder; use --format onnx"
        )
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Router

    from search_adaptor.encoders.local import SentenceTransformerEncoder, quiet_loading

    cfg = info.get("config") or {}
    base = SentenceTransformerEncoder(
        cfg.get("model", info.get("model")),
        query_prompt=cfg.get("query_prompt", ""),
        document_prompt=cfg.get("document_prompt", ""),
        device="cpu",
    )
    adapter.check_encoder(base)
    expected_q = adapter.transform_queries(base.encode_queries(_CHECK_TEXTS), dim=dim)
    expected_d = adapter.transform_corpus(base.encode_corpus(_CHECK_TEXTS), dim=dim)
    modules = list(base._load().children())  # the very model the encoder runs
    if not isinstance(modules[-1], Normalize):  # the encoder normalises; so must the folder
        modules.append(Normalize())
    query_net, corpus_net = _nets(adapter)
    if adapter.fitted_params_["mode"] == "shared":  # one network, whatever set_params made .mode since
        modules += _dense_modules(query_net, adapter.dim_, dim)
    else:
        modules.append(
            Router.for_query_document(
                query_modules=_dense_modules(query_net, adapter.dim_, dim),
                document_modules=_dense_modules(corpus_net, adapter.dim_, dim),
                default_route="query",
            )
        )
    with quiet_loading():
        model = SentenceTransformer(
            modules=modules,
            device="cpu",
            prompts={"query": base.query_prompt, "document": base.document_prompt},
            default_prompt_name="query" if base.query_prompt else None,
        )
    with Staged(out, folder=True, marker="modules.json", what="a sentence-transformers model") as staged:
        with quiet_loading():  # transformers draws a "Writing model shards" bar while it saves
            model.save(str(staged.path))
            again = SentenceTransformer(str(staged.path), device="cpu")
        for name, got, expected in (
            ("encode_query", again.encode_query(_CHECK_TEXTS), expected_q),
            ("encode_document", again.encode_document(_CHECK_TEXTS), expected_d),
        ):
            err = float(np.abs(got - expected).max())
            if err > TOLERANCE:
                raise RuntimeError(f"exported {name} differs from the adapter by {err:.2e}; report this")
    return staged.target


def export(
    adapter: SearchAdaptor | str | os.PathLike, out: str | os.PathLike, format: str, dim: int | None = None
) -> Path:
    """``search-adaptor export``: :func:`export_onnx` (``"onnx"``) or :func:`export_sentence_transformers`
    (``"sentence-transformers"``); a missing optional package is one line naming the extra to install."""
    exporters = {
        "onnx": (export_onnx, "onnx"),
        "sentence-transformers": (export_sentence_transformers, "local"),
    }
    if format not in exporters:
        raise ValueError(f"format must be one of {', '.join(exporters)}; got {format!r}")
    run, extra = exporters[format]
    try:
        return run(adapter, out, dim)
    except ImportError as exc:
        raise RuntimeError(f"export needs {exc.name}: pip install 'search-adaptor[{extra}]'") from exc
