"""The adapter's networks: the residual map ``a(e) = p(e) + f(p(e))``, the training-only query
predictor, and their inference in numpy.

``f`` is a small MLP (or a single linear map) whose last layer starts at zero. ``p`` is the identity,
or a trained linear projection when the adapter needs one (a rotation whose leading coordinates
carry the most variance, for Matryoshka prefixes). An untrained adapter is therefore exactly
zero-shot: the identity, or a rotation, which keeps every cosine similarity.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from torch import nn

from search_adaptor.retrieval import l2_normalize, row_norms, safe_norms

ARCHITECTURES = ("mlp", "linear")
MODES = ("shared", "query_only", "separate")
_CHUNK = 65536  # rows per forward pass of a large transform: bounds its temporaries


def _linear(
    in_features: int, out_features: int, generator: torch.Generator | None, bias: bool = True
) -> nn.Linear:
    """An ``nn.Linear`` for :func:`init_linears` to fill from ``generator`` (a projection: its caller).

    With a generator the layer is made without torch's default initialisation
    (:func:`torch.nn.utils.skip_init`: its values are left unset): that draw comes from the global RNG,
    so a fit would move the stream of a caller who seeded torch, and would be thrown away anyway.
    ``None`` keeps torch's own draw, from the global RNG.
    """
    if generator is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)


def init_linears(module: nn.Module, generator: torch.Generator | None) -> None:
    """Draw every ``nn.Linear`` of ``module`` as torch initialises one (Kaiming-uniform weights,
    uniform biases), from ``generator``: fits running side by side stay reproducible, as the global
    RNG they would otherwise share is not touched (the layers are made with :func:`_linear`, which
    skips torch's own draw). ``None`` keeps torch's own draw."""
    if generator is None:
        return
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class ResidualAdapter(nn.Module):
    """``e -> e + f(e)`` (or ``f(e)`` without the skip connection, the paper's ablation).

    ``f`` is Linear(d, h) -> ReLU -> Linear(h, d) for ``"mlp"`` and Linear(d, d) for ``"linear"``.
    With the skip connection the last layer starts at zero, making the adapter the identity.
    Initial weights come from ``generator`` when given (see :func:`init_linears`).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        architecture: str = "mlp",
        residual: bool = True,
        generator: torch.Generator | None = None,
        projection: bool = False,
        in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.residual = residual
        in_dim = in_dim or dim
        if in_dim != dim and not projection:
            raise ValueError(f"a {in_dim}-d input needs a projection to the {dim}-d output")
        # p: a bias-free linear map from the input space (another model's, for a cross-model query
        # tower) to the output one; it starts at the identity where the two have one dimension, and
        # training sets a better start (a PCA rotation, a least-squares or Procrustes map)
        self.project = _linear(in_dim, dim, generator, bias=False) if projection else None
        if self.project is not None:
            with torch.no_grad():
                self.project.weight.copy_(torch.eye(dim, in_dim))
        if architecture == "mlp":
            self.f = nn.Sequential(
                _linear(dim, hidden_dim, generator), nn.ReLU(), _linear(hidden_dim, dim, generator)
            )
        elif architecture == "linear":
            self.f = nn.Sequential(_linear(dim, dim, generator))
        else:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        init_linears(self.f, generator)
        last = self.f[-1]
        if residual:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        elif architecture == "linear":  # a plain linear map still starts at the identity
            with torch.no_grad():
                last.weight.copy_(torch.eye(dim))
                last.bias.zero_()

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """``p(x)``: what the residual function adds to (the recovery loss measures from here)."""
        return x if self.project is None else self.project(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base(x)
        return x + self.f(x) if self.residual else self.f(x)


class QueryPredictor(nn.Module):
    """Training-only MLP mapping an adapted relevant document to its adapted query (thrown away after)."""

    def __init__(self, dim: int, hidden_dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _linear(dim, hidden_dim, generator), nn.ReLU(), _linear(hidden_dim, dim, generator)
        )
        init_linears(self.net, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def has_projection(init: str, loss: str) -> bool:
    """Whether the networks carry a linear projection before the residual function: for any start
    other than the identity, and for the unsupervised objective, which trains nothing else."""
    return init != "identity" or loss == "similarity"


def build_nets(
    dim: int,
    hidden_dim: int | None,
    architecture: str,
    residual: bool,
    mode: str,
    generator: torch.Generator | None = None,
    projection: bool = False,
    query_dim: int | None = None,
) -> tuple[ResidualAdapter, ResidualAdapter | None]:
    """(query network, corpus network) for ``mode``: the same network when shared, none for query-only.

    ``query_dim`` (another model's queries, cross-model) gives the query network a projection from
    that dimension; the corpus network, if any, keeps the documents' own dimension.
    """
    hidden = int(hidden_dim or dim)
    cross = query_dim is not None and query_dim != dim
    if cross and mode == "shared":
        raise ValueError(f"{query_dim}-d queries and {dim}-d documents need mode 'query_only' or 'separate'")
    query_net = ResidualAdapter(
        dim, hidden, architecture, residual, generator, projection or cross, query_dim
    )
    if mode == "shared":
        return query_net, query_net
    if mode == "separate":
        return query_net, ResidualAdapter(dim, hidden, architecture, residual, generator, projection)
    return query_net, None


def linear_layers(net: ResidualAdapter) -> list[tuple[nn.Linear, bool]]:
    """The residual function ``f`` as ``(linear layer, ReLU after it)`` pairs: the one walk over its
    layers that numpy inference and every export share."""
    layers: list[tuple[nn.Linear, bool]] = []
    for module in net.f:
        if isinstance(module, nn.Linear):
            layers.append((module, False))
        elif isinstance(module, nn.ReLU) and layers:
            layers[-1] = (layers[-1][0], True)
        else:
            raise TypeError(f"adapter layer {type(module).__name__} is not supported")
    return layers


_DENSE: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, ...], np.ndarray, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def _dense(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weight, transposed into a C-contiguous copy, and its bias, as numpy.

    BLAS runs small batches several times faster against a contiguous (in, out) matrix than against
    the transposed view of torch's (out, in) one. The copy is cached per layer and refreshed when
    torch's version counters show an in-place change (a training step, ``load_state_dict``).
    """
    bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
    key = (layer.weight.data_ptr(), layer.weight._version, bias._version)
    cached = _DENSE.get(layer)
    if cached is None or cached[0] != key:
        weight_t = np.ascontiguousarray(layer.weight.detach().numpy().T)
        cached = (key, weight_t, bias.detach().numpy().copy())
        _DENSE[layer] = cached
    return cached[1], cached[2]


def _rowwise_matmul(x: np.ndarray, weight_t: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``x @ weight_t`` into ``out``, one matrix-vector product per row.

    A matrix-matrix product rounds a row's float32 sums differently with the number of rows beside it
    (BLAS picks its kernels and splits its threads by the batch's shape, and which sizes agree varies
    with the CPU and the thread count), so a row's adapted vector would depend on the batch it came in.
    The same matrix-vector call on every row makes it bit-identical alone, in a serving batch or in a
    corpus chunk; one query also costs a quarter of what the smallest matrix product does. Across
    BLAS thread counts (a Ray worker's one thread, a driver's two) it agreed wherever tried; BLAS
    splits a matrix-vector product's outputs between threads, so an uneven split could still round
    a column differently.
    """
    np.matmul(x[:, None, :], weight_t, out=out[:, None, :])
    return out


class Workspace:
    """Arrays reused from call to call, one per name, grown when a call needs more rows.

    Give each thread its own: results computed into a workspace are views of its arrays, valid
    until the next call that uses the same workspace.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, rows: int, cols: int, dtype: type = np.float32) -> np.ndarray:
        """A C-contiguous ``(rows, cols)`` array of ``dtype`` (contents undefined)."""
        held = self._arrays.get(name)
        if held is None or held.shape[0] < rows or held.shape[1] != cols or held.dtype != dtype:
            held = np.empty((rows, cols), dtype=dtype)
            self._arrays[name] = held
        return held[:rows]


class NumpyNet:
    """A :class:`ResidualAdapter` in numpy: its layers' weights, read once, and a forward pass.

    Inference is one or two small matmuls per batch; torch's per-call dispatch and its thread pool
    (which oversubscribes the cores of a busy serving host) cost far more than the arithmetic, so a
    one-query search pays a few microseconds here instead of milliseconds. Training stays in torch.
    The weights are the cached copies of :func:`_dense`, taken when this object is made: a served
    index makes one and keeps it; :func:`numpy_forward` makes one per call and so sees training's
    in-place updates.

    With ``start=True`` it is the network's start alone, its projection (the identity without one):
    what an adapter that kept its start computes, no layers read.

    Attributes
    ----------
    project : ndarray of shape (in, out) or None
        The projection ``p``, transposed; None: no projection.
    layers : list of (weight_t (in, out), bias (out,), relu)
        The residual function ``f`` (weights transposed); empty for a start.
    residual : bool
        Whether ``f``'s input is added to its output.

    The arrays are shared (a cache): read them, copy them before changing them.
    """

    def __init__(self, net: ResidualAdapter, start: bool = False) -> None:
        self.project = None if net.project is None else _dense(net.project)[0]
        self.layers = [] if start else [(*_dense(layer), relu) for layer, relu in linear_layers(net)]
        self.residual = net.residual and not start

    def forward(self, x: np.ndarray, work: Workspace | None = None) -> np.ndarray:
        """``net(x)`` for float32 ``x`` of shape (n, dim); into ``work``'s arrays when given."""
        work = work if work is not None else Workspace()
        if self.project is not None:
            x = _rowwise_matmul(x, self.project, work.array("projected", len(x), self.project.shape[1]))
        h = x
        for i, (weight_t, bias, relu) in enumerate(self.layers):
            h = _rowwise_matmul(h, weight_t, work.array(f"layer{i % 2}", len(x), weight_t.shape[1]))
            h += bias
            if relu:
                np.maximum(h, 0.0, out=h)
        if self.residual:
            h += x
        return h


def numpy_forward(net: ResidualAdapter, x: np.ndarray) -> np.ndarray:
    """``net(x)`` computed with numpy (no torch call), on the current weights (see :class:`NumpyNet`)."""
    return NumpyNet(net).forward(x)


def adapt_rows(net: NumpyNet | None, x: np.ndarray, what: str, work: Workspace | None = None) -> np.ndarray:
    """One side of an adapter applied to embeddings: unit rows in, ``net``, unit rows out.

    A zero row (a static model gives one to a text none of whose tokens it knows) has no direction
    and stays zero, scoring 0 against everything, as it does unadapted: the network would otherwise
    map every such row to one shared vector.

    Parameters
    ----------
    net : NumpyNet or None
        The side's network; None for a side that only normalises (query-only documents, identity).
    x : ndarray of shape (n, dim), float32
        Rows that are not unit-norm (more than 1e-6 off) are normalised first.
    what : str
        Names the rows in errors (``"queries"``, ``"corpus"``).
    work : Workspace, optional
        Compute into its arrays (no allocation once they have grown; the result is one of them);
        a new array is returned otherwise.

    Raises
    ------
    ValueError
        A row with NaN or inf, naming the first.
    """
    norms = row_norms(x)
    if not np.isfinite(norms).all():
        row = int(np.argmax(~np.isfinite(norms)))
        raise ValueError(f"{what}: row {row} contains NaN or inf; fix the embeddings before adapting")
    rows = work.array("rows", *x.shape) if work is not None else None
    off = np.abs(norms - 1.0) > 1e-6
    if off.any():  # only those rows: a unit row divided by 1.0 keeps its bits, whatever its batch holds
        divisors = safe_norms(np.where(off, norms, 1.0))
        x = np.divide(x, divisors, out=rows if rows is not None else np.empty_like(x))
    elif net is None:  # unit rows already (most models and APIs return them): skip a pass, not the copy
        if rows is None:
            x = x.copy()
        else:
            np.copyto(rows, x)
            x = rows
    if net is None:
        return x
    if len(x) <= _CHUNK:
        out = net.forward(x, work)
    else:
        first = net.forward(x[:_CHUNK])  # its width is the output's (a projection changes it)
        out = np.empty((len(x), first.shape[1]), dtype=first.dtype)
        out[:_CHUNK] = first
        for i in range(_CHUNK, len(x), _CHUNK):
            out[i : i + _CHUNK] = net.forward(x[i : i + _CHUNK])
    if not norms.all():
        out[norms == 0] = 0.0
    return l2_normalize(out, out=out)
