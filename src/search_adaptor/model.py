"""The adapter: a small network on top of frozen embeddings, and its self-describing saved form.

``a(e) = e + f(e)`` with ``f`` a small MLP (or a single linear map) whose last layer starts at zero,
so an untrained adapter is exactly the identity, i.e. exactly zero-shot. Scores are cosine
similarities of adapted, L2-normalised vectors. The estimator follows scikit-learn's contract:
hyperparameters in ``__init__``, ``fit(...) -> self``, fitted state in attributes ending in ``_``.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from search_adaptor import __version__

FORMAT_VERSION = 1
ARCHITECTURES = ("mlp", "linear")
MODES = ("shared", "query_only", "separate")
_CHUNK = 65536  # rows per transform chunk: bounds memory on large corpora
#: BLAS libraries compute batches of one to three rows with matrix-vector kernels whose float32
#: rounding differs in the last bits from the matrix-matrix kernel; smaller batches are padded to
#: this many rows so that a row's adapted vector never depends on the batch it came in (one query,
#: a serving batch, a corpus chunk, a Ray batch: bit-identical).
_MIN_GEMM_ROWS = 4


class ResidualAdapter(nn.Module):
    """``e -> e + f(e)`` (or ``f(e)`` without the skip connection, the paper's ablation).

    ``f`` is Linear(d, h) -> ReLU -> Linear(h, d) for ``"mlp"`` and Linear(d, d) for ``"linear"``.
    With the skip connection the last layer starts at zero, making the adapter the identity.
    """

    def __init__(self, dim: int, hidden_dim: int, architecture: str = "mlp", residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        if architecture == "mlp":
            self.f = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))
        elif architecture == "linear":
            self.f = nn.Sequential(nn.Linear(dim, dim))
        else:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        last = self.f[-1]
        if residual:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        elif architecture == "linear":  # a plain linear map still starts at the identity
            with torch.no_grad():
                last.weight.copy_(torch.eye(dim))
                last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x) if self.residual else self.f(x)


class QueryPredictor(nn.Module):
    """Training-only MLP mapping an adapted relevant document to its adapted query (thrown away after)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_DENSE: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, ...], np.ndarray, np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def _dense(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weight, transposed into a C-contiguous copy, and its bias, as numpy.

    BLAS runs small batches several times faster against a contiguous (in, out) matrix than against
    the transposed view of torch's (out, in) one. The copy is cached per layer and refreshed when
    torch's version counters show an in-place change (a training step, ``load_state_dict``).
    """
    key = (layer.weight.data_ptr(), layer.weight._version, layer.bias._version)
    cached = _DENSE.get(layer)
    if cached is None or cached[0] != key:
        weight_t = np.ascontiguousarray(layer.weight.detach().numpy().T)
        cached = (key, weight_t, layer.bias.detach().numpy().copy())
        _DENSE[layer] = cached
    return cached[1], cached[2]


def numpy_forward(net: ResidualAdapter, x: np.ndarray) -> np.ndarray:
    """``net(x)`` computed with numpy (no torch call), on cached copies of the weights.

    Inference is one or two small matmuls per batch; torch's per-call dispatch and its thread pool
    (which oversubscribes the cores of a busy serving host) cost far more than the arithmetic, so a
    one-query search pays a few microseconds here instead of milliseconds. Training stays in torch.
    """
    n = len(x)
    if n < _MIN_GEMM_ROWS:  # see _MIN_GEMM_ROWS: the same kernel for every batch size
        x = np.concatenate([x, np.zeros((_MIN_GEMM_ROWS - n, x.shape[1]), dtype=x.dtype)])
    h = x
    for layer in net.f:
        if isinstance(layer, nn.Linear):
            weight_t, bias = _dense(layer)
            h = h @ weight_t  # a new array: the in-place ops below are safe
            h += bias
        elif isinstance(layer, nn.ReLU):
            np.maximum(h, 0.0, out=h)
        else:  # pragma: no cover - ResidualAdapter only builds Linear and ReLU
            raise TypeError(f"numpy_forward cannot apply {type(layer).__name__}")
    if net.residual:
        h += x
    return h[:n]


class CompatibilityError(ValueError):
    """Embeddings handed to an adapter come from another model or have another dimension."""


def l2_normalize(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise unit vectors (zero rows stay zero); ``out=x`` normalises in place."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # one pass, no squared temporary
    return np.divide(x, np.maximum(norms, 1e-12), out=out)


class SearchAdaptor:
    """Search-Adaptor (Yoon et al., ACL 2024) and its variants, as one estimator.

    Parameters
    ----------
    architecture : {"mlp", "linear"}
        Residual function ``f``: Linear-ReLU-Linear, or one linear map.
    hidden_dim : int, optional
        Width of the MLP; defaults to the embedding dimension.
    residual : bool
        Skip connection ``e + f(e)``; False is the paper's "no skip connection" ablation.
    mode : {"shared", "query_only", "separate"}
        One adapter for queries and documents (the paper), queries only (corpus vectors untouched:
        no re-index), or two separate adapters (asymmetric data).
    loss : {"ranking", "ranknet", "infonce", "softmax", "pointwise"}
        Main objective; "ranking" is the paper's relevance-weighted pairwise logistic loss.
    pair_reduction : {"sum", "mean"}
        How the pairwise losses ("ranking", "ranknet") combine one query's pairs: the paper's sum, or
        the mean over pairs (weaker by the pairs per query; kept for the ablation table).
    alpha, beta : float
        Weights of the recovery (L1 to the original embedding, ``alpha * (rec_q + rec_d)``) and
        query-prediction losses.
    negatives : {"random", "hard", "mixed"}
        Where each query's negatives come from: uniform corpus draws, the zero-shot ranking's top
        ``hard_pool`` (labelled positives excluded), or half of each.
    n_negatives : int
        Negatives per relevant document of each query (the paper draws about 10).
    in_batch : bool
        Softmax-type losses also treat every other document of the batch as a negative; in
        query-only mode on corpora up to ``full_corpus_max`` documents that is the whole corpus.
    temperature : float
        Logit scale 1/t of the softmax and point-wise losses (the paper's pairwise loss has none).
    lr, batch_size, max_steps : float, int, int
        Adam learning rate, queries per step, step budget (paper: 1e-3, 128, 2000).
    eval_every, patience : int
        Validate every ``eval_every`` steps; stop after ``patience`` steps without improvement.
    val_fraction : float
        Share of the training queries held out for validation when no validation set is given.
    hard_pool, full_corpus_max : int
        Depth of the zero-shot ranking hard negatives come from; largest corpus scored exhaustively.
    seed : int
        Seeds sampling, initialisation and the validation split.
    """

    def __init__(
        self,
        architecture: str = "mlp",
        hidden_dim: int | None = None,
        residual: bool = True,
        mode: str = "shared",
        loss: str = "ranking",
        pair_reduction: str = "sum",
        alpha: float = 0.1,
        beta: float = 0.01,
        negatives: str = "random",
        n_negatives: int = 10,
        in_batch: bool = False,
        temperature: float = 0.05,
        lr: float = 1e-3,
        batch_size: int = 128,
        max_steps: int = 2000,
        eval_every: int = 25,
        patience: int = 125,
        val_fraction: float = 0.2,
        hard_pool: int = 100,
        full_corpus_max: int = 50000,
        seed: int = 0,
    ) -> None:
        self.architecture = architecture
        self.hidden_dim = hidden_dim
        self.residual = residual
        self.mode = mode
        self.loss = loss
        self.pair_reduction = pair_reduction
        self.alpha = alpha
        self.beta = beta
        self.negatives = negatives
        self.n_negatives = n_negatives
        self.in_batch = in_batch
        self.temperature = temperature
        self.lr = lr
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.eval_every = eval_every
        self.patience = patience
        self.val_fraction = val_fraction
        self.hard_pool = hard_pool
        self.full_corpus_max = full_corpus_max
        self.seed = seed

    # -- scikit-learn style parameter handling -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> SearchAdaptor:
        """Change hyperparameters; unknown names are an error."""
        unknown = set(params) - set(self._param_names())
        if unknown:
            raise ValueError(f"unknown SearchAdaptor parameter(s): {', '.join(sorted(unknown))}")
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def clone(self, **overrides: Any) -> SearchAdaptor:
        """An unfitted copy with the same hyperparameters (and ``overrides``)."""
        return type(self)(**{**self.get_params(), **overrides})

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if defaults[k] != v}
        return f"SearchAdaptor({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _validate_params(self) -> None:
        from search_adaptor.losses import PAIR_REDUCTIONS, RANKING_LOSSES

        choices = {
            "architecture": ARCHITECTURES,
            "mode": MODES,
            "loss": RANKING_LOSSES,
            "pair_reduction": PAIR_REDUCTIONS,
            "negatives": ("random", "hard", "mixed"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("batch_size", "max_steps", "eval_every", "n_negatives", "hard_pool"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {self.val_fraction!r}")
        if self.alpha < 0 or self.beta < 0 or self.temperature <= 0 or self.lr <= 0:
            raise ValueError("alpha and beta must be >= 0, temperature and lr > 0")

    # -- fitting ---------------------------------------------------------------------------------
    def fit(
        self,
        query_embeddings: np.ndarray,
        corpus_embeddings: np.ndarray,
        qrels: Mapping[str, Mapping[str, int]],
        query_ids: Sequence[str] | None = None,
        corpus_ids: Sequence[str] | None = None,
        val_query_ids: Sequence[str] | None = None,
    ) -> SearchAdaptor:
        """Train on labelled (query, relevant document) pairs; keep the best validation checkpoint.

        Parameters
        ----------
        query_embeddings : array-like of shape (n_queries, dim)
        corpus_embeddings : array-like of shape (n_docs, dim)
            The whole corpus: validation retrieves over all of it, as at search time.
        qrels : mapping query id -> {doc id -> grade}
            Graded relevance of the training (and validation) queries.
        query_ids, corpus_ids : sequence of str, optional
            Ids of the rows; default to "0", "1", ...
        val_query_ids : sequence of str, optional
            Queries to validate on; by default ``val_fraction`` of the labelled queries, drawn
            with ``seed``. Validation picks the checkpoint; the identity (zero-shot) is a candidate
            too, so the fitted adapter is never worse than zero-shot on validation.
        """
        from search_adaptor.training import train

        self._validate_params()
        start = time.perf_counter()
        train(self, query_embeddings, corpus_embeddings, qrels, query_ids, corpus_ids, val_query_ids)
        self.fit_time_ = time.perf_counter() - start
        return self

    def _build_nets(self, dim: int) -> None:
        hidden = int(self.hidden_dim or dim)
        self.dim_ = dim
        self.query_net_ = ResidualAdapter(dim, hidden, self.architecture, self.residual)
        if self.mode == "shared":
            self.corpus_net_: ResidualAdapter | None = self.query_net_
        elif self.mode == "separate":
            self.corpus_net_ = ResidualAdapter(dim, hidden, self.architecture, self.residual)
        else:
            self.corpus_net_ = None

    def _check_fitted(self) -> None:
        if not hasattr(self, "query_net_"):
            raise RuntimeError("this SearchAdaptor is not fitted yet: call fit() or SearchAdaptor.load()")

    @property
    def is_identity_(self) -> bool:
        """True when no trained checkpoint beat zero-shot on validation: the adapter changes nothing."""
        self._check_fitted()
        return self.best_step_ == 0

    # -- inference -------------------------------------------------------------------------------
    def _apply(self, net: nn.Module | None, x: np.ndarray, what: str) -> np.ndarray:
        self._check_fitted()
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.dim_:
            got = arr.shape[1] if arr.ndim == 2 else f"shape {arr.shape}"
            raise CompatibilityError(
                f"{what}: this adapter expects {self.dim_}-d embeddings of {self._encoder_name()}, "
                f"got {got}-d; embed with the same model as at training time"
            )
        norms = np.sqrt(np.einsum("ij,ij->i", arr, arr))  # a NaN or inf anywhere makes its row's norm one
        if not np.isfinite(norms).all():
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                row = int(np.argmax(bad))
                raise ValueError(f"{what}: row {row} contains NaN or inf; fix the embeddings before adapting")
            norms = np.linalg.norm(arr.astype(np.float64), axis=1)  # finite, but squares overflow float32
        identity = net is None or self.best_step_ == 0
        if len(norms) and np.abs(norms - 1.0).max() > 1e-6:
            arr = arr / np.maximum(norms, 1e-12)[:, None].astype(np.float32)
        elif identity:  # unit rows already (most models and APIs return them): skip a pass, not the copy
            arr = arr.copy()
        if identity:
            return arr
        if len(arr) <= _CHUNK:
            out = numpy_forward(net, arr)
        else:
            out = np.empty_like(arr)
            for i in range(0, len(arr), _CHUNK):
                out[i : i + _CHUNK] = numpy_forward(net, arr[i : i + _CHUNK])
        return l2_normalize(out, out=out)

    def transform_queries(self, X: np.ndarray) -> np.ndarray:
        """Adapted, unit-norm query vectors.

        Parameters
        ----------
        X : array-like of shape (n_queries, dim)

        Returns
        -------
        ndarray of shape (n_queries, dim), float32
        """
        self._check_fitted()
        return self._apply(self.query_net_, X, "queries")

    def transform_corpus(self, X: np.ndarray) -> np.ndarray:
        """Adapted, unit-norm document vectors (only normalised in query-only mode: no re-index)."""
        self._check_fitted()
        return self._apply(self.corpus_net_, X, "corpus")

    def score(self, query_embeddings: np.ndarray, corpus_embeddings: np.ndarray) -> np.ndarray:
        """Cosine scores of adapted queries against adapted documents, shape (n_queries, n_docs)."""
        return self.transform_queries(query_embeddings) @ self.transform_corpus(corpus_embeddings).T

    # -- persistence -------------------------------------------------------------------------------
    def _encoder_name(self) -> str:
        enc = getattr(self, "encoder_", None) or {}
        return enc.get("model") or enc.get("fingerprint") or "the training model"

    def check_encoder(self, fingerprint: str, dim: int | None = None) -> None:
        """Refuse embeddings from another model (fingerprint) or of another dimension, naming both."""
        self._check_fitted()
        mine = (getattr(self, "encoder_", None) or {}).get("fingerprint")
        if mine and fingerprint != mine:
            raise CompatibilityError(
                f"adapter was trained on embeddings of {mine} but these come from {fingerprint}; "
                "use the same encoder (model, dimensions, prompts) as at training time"
            )
        if dim is not None and dim != self.dim_:
            raise CompatibilityError(
                f"adapter expects {self.dim_}-d embeddings of {self._encoder_name()}, got {dim}-d"
            )

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``adapter.safetensors`` + ``README.md`` into ``path`` (atomically).

        ``extra`` (e.g. validation and test metrics) is stored under ``config["metrics"]``.
        """
        from safetensors.torch import save_file

        from search_adaptor.report import write_text_atomic

        self._check_fitted()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"query.{k}": v.detach().contiguous() for k, v in self.query_net_.state_dict().items()}
        if self.mode == "separate" and self.corpus_net_ is not None:
            tensors.update(
                {f"corpus.{k}": v.detach().contiguous() for k, v in self.corpus_net_.state_dict().items()}
            )
        config = {
            "library": "search-adaptor",
            "version": __version__,
            "format_version": FORMAT_VERSION,
            "encoder": getattr(self, "encoder_", None) or {},
            "dim": self.dim_,
            "normalization": "l2 on input and output; scores are cosine similarities",
            "identity": self.is_identity_,
            "hyperparameters": self.get_params(),
            "training": {
                "best_step": self.best_step_,
                "n_steps": self.n_steps_,
                "val_ndcg@10": self.best_score_,
                "zero_shot_val_ndcg@10": self.zero_shot_score_,
                "n_train_queries": self.n_train_queries_,
                "n_val_queries": self.n_val_queries_,
                "fit_time_s": round(float(getattr(self, "fit_time_", 0.0)), 3),
            },
            "metrics": dict(extra or {}),
        }
        tmp = out / "adapter.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "library": "search-adaptor"})
        os.replace(tmp, out / "adapter.safetensors")
        write_text_atomic(out / "config.json", json.dumps(config, indent=2, sort_keys=False) + "\n")
        write_text_atomic(out / "README.md", _model_card(config))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchAdaptor:
        """Rebuild a fitted adapter from :meth:`save`'s folder (no pickle involved)."""
        from safetensors.torch import load_file

        folder = Path(path)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: not found; point at a folder written by SearchAdaptor.save")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{cfg_path}: not valid JSON ({exc.msg}); the adapter folder is damaged"
            ) from exc
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{cfg_path}: format_version {config['format_version']} is newer than this library "
                f"understands ({FORMAT_VERSION}); upgrade search-adaptor"
            )
        est = cls().set_params(**config["hyperparameters"])
        est._build_nets(int(config["dim"]))
        tensors = load_file(str(folder / "adapter.safetensors"))
        est.query_net_.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("query.")})
        if est.mode == "separate" and est.corpus_net_ is not None:
            est.corpus_net_.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("corpus.")})
        training = config["training"]
        est.encoder_ = config.get("encoder") or {}
        est.best_step_ = int(training["best_step"])
        est.n_steps_ = int(training["n_steps"])
        est.best_score_ = training["val_ndcg@10"]
        est.zero_shot_score_ = training["zero_shot_val_ndcg@10"]
        est.n_train_queries_ = training["n_train_queries"]
        est.n_val_queries_ = training["n_val_queries"]
        est.fit_time_ = training.get("fit_time_s", 0.0)
        est.history_ = []
        est.metrics_ = config.get("metrics", {})
        return est


def _model_card(config: Mapping[str, Any]) -> str:
    """Short README for the saved folder: what it adapts, how it was chosen, how it scored."""
    enc = config.get("encoder") or {}
    hp = config["hyperparameters"]
    tr = config["training"]
    lines = [
        "# Search-Adaptor adapter",
        "",
        f"Base encoder: `{enc.get('model', 'unknown')}` (fingerprint `{enc.get('fingerprint', 'unknown')}`), "
        f"{config['dim']}-d embeddings.",
        f"Variant: {hp['architecture']} adapter, mode `{hp['mode']}`, loss `{hp['loss']}`, "
        f"alpha={hp['alpha']}, beta={hp['beta']}, negatives `{hp['negatives']}`.",
        f"Validation nDCG@10: {tr['val_ndcg@10']:.4f} (zero-shot {tr['zero_shot_val_ndcg@10']:.4f}) "
        f"on {tr['n_val_queries']} held-out training queries; "
        f"best step {tr['best_step']} of {tr['n_steps']}.",
    ]
    if config.get("identity"):
        lines.append("No trained checkpoint beat zero-shot on validation: this adapter is the identity.")
    test = (config.get("metrics") or {}).get("test")
    if test:
        lines.append("")
        lines.append("| test metric | zero-shot | adapted |")
        lines.append("|---|---|---|")
        for name in test.get("adapted", {}):
            lines.append(f"| {name} | {test['zero-shot'][name]:.4f} | {test['adapted'][name]:.4f} |")
    lines += [
        "",
        "```python",
        "from search_adaptor import SearchAdaptor",
        "adapter = SearchAdaptor.load('PATH')",
        "q = adapter.transform_queries(query_embeddings)      # same base encoder as above",
        "d = adapter.transform_corpus(corpus_embeddings)      # re-index unless mode is query_only",
        "```",
        "",
    ]
    return "\n".join(lines)
