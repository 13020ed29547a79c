"""The estimator: Search-Adaptor and its variants behind one scikit-learn style class, and its
self-describing saved form.

Hyperparameters go to ``__init__``; ``fit(...) -> self`` trains (through
:func:`search_adaptor.training.train`); fitted state lives in attributes ending in ``_``, the same
after ``fit`` as after :meth:`SearchAdaptor.load`. Scores are cosine similarities of adapted,
L2-normalised vectors. A saved adapter is a folder (``config.json`` + ``adapter.safetensors`` +
``README.md``) that records the encoder whose embeddings it was trained on, and loading it checks
every field and every weight as if a stranger had edited the files.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import math
import numbers
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_adaptor import __version__
from search_adaptor.embed import numeric_array, unit_rows
from search_adaptor.encoders import FOLDER_CLASSES
from search_adaptor.encoders.base import (
    Encoder,
    InputsRejected,
    Kind,
    check_vectors,
    refuse_bare_text,
    without_direction,
)
from search_adaptor.encoders.registry import from_info, info_problem
from search_adaptor.files import Staged, read_json
from search_adaptor.losses import LOSSES, PAIR_REDUCTIONS, UNLABELLED_LOSSES
from search_adaptor.metrics import VAL_METRICS, is_metric, metrics_table, val_metric_name
from search_adaptor.networks import (
    ARCHITECTURES,
    MODES,
    NumpyNet,
    ResidualAdapter,
    adapt_rows,
    build_nets,
    has_projection,
)
from search_adaptor.retrieval import l2_normalize
from search_adaptor.store import EmbeddingStore, StoreStats
from search_adaptor.training import TrainResult, train
from search_adaptor.variants import MAX_SEED, MAX_STEPS, PRECISIONS, TRAINED_PRECISIONS, VAL_FRACTION

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: config.json records a checksum of the adapter (see _checksum); 3: of its sizes too
CONFIG, WEIGHTS, CARD = "config.json", "adapter.safetensors", "README.md"
FILES = (CONFIG, WEIGHTS, CARD)  # all that an adapter folder holds
NEGATIVES = ("random", "hard", "mixed", "all")
INITS = ("identity", "pca", "score-axes", "lstsq", "procrustes")
MAX_DIM = 65536  # largest embedding or hidden width a saved config may declare
_FLOAT32 = np.finfo(np.float32)  # the range float32_rows casts rows within
#: the fix that ends a refusal of an adapter folder (a loader that keeps the adapter inside its own
#: folder, as an index does, names its own fix instead)
LOAD_FIX = "re-save it with SearchAdaptor.save or train it again with `search-adaptor fit`"
_warned_no_encoder: set[str] = set()
_warned_no_checksum: set[str] = set()
_warned_size: set[tuple[str, int | None]] = set()

EncoderLike = Encoder | Mapping[str, Any] | str


class CompatibilityError(ValueError):
    """Embeddings handed to an adapter come from another model or have another dimension."""


class NotFittedError(ValueError, AttributeError):
    """A fitted attribute or method of an adapter used before ``fit()`` or ``SearchAdaptor.load()``.

    An AttributeError, so that ``hasattr()`` and ``inspect.getmembers()`` see a fitted attribute as
    absent rather than fail, and a ValueError, as scikit-learn's ``NotFittedError`` is both.
    """


def _described(
    encoder: EncoderLike | None, query_encoder: EncoderLike | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a fit records of its encoders (:func:`describe_encoder`); ``{}`` for one not given, and
    for a query encoder that is the documents' own (one model for both sides)."""
    info = describe_encoder(encoder) if encoder is not None else {}
    query_info = describe_encoder(query_encoder) if query_encoder is not None else {}
    return info, ({} if query_info.get("fingerprint") == info.get("fingerprint") else query_info)


def describe_encoder(encoder: EncoderLike) -> dict[str, Any]:
    """``{"fingerprint", "provider", "model", "config"}`` of an encoder, a recorded description of one,
    or a model name / fingerprint given for precomputed vectors."""
    if isinstance(encoder, Encoder):
        return encoder.info()
    if isinstance(encoder, str):
        if not encoder:
            raise ValueError("encoder: give the model name or fingerprint of the embeddings, not ''")
        return {"fingerprint": encoder, "provider": "precomputed", "model": encoder, "config": {}}
    if isinstance(encoder, Mapping) and isinstance(encoder.get("fingerprint"), str):
        return dict(encoder)
    raise TypeError(
        f"encoder: expected an Encoder, its info dict or a model name, got {type(encoder).__name__}"
    )


def _mismatch_fix(mine: str, theirs: str, recorded: Mapping[str, Any], given: EncoderLike) -> str:
    """How to mend embeddings of ``theirs`` (the fingerprint of ``given``, what the caller passed) where
    ``mine`` (of the ``recorded`` encoder) made an adapter's vectors: the end of the message that
    refuses them."""
    name = recorded.get("model")
    if isinstance(given, str) and ":" not in given:  # a name, not a fingerprint (provider:model:hash)
        return (
            "a name given as encoder= is compared with the recorded fingerprint as it is: pass the "
            f"Encoder that made these vectors, its info() dict, or {mine!r}"
        )
    if recorded.get("provider") == "precomputed" and not mine.startswith("precomputed:"):
        return (
            f"it was fit with encoder={mine!r}, a name for vectors made elsewhere, which no encoder's "
            f"fingerprint equals: pass encoder={mine!r} with vectors of that model, or refit with "
            "encoder= the Encoder (its fingerprint is then checked)"
        )
    if (
        mine.startswith("precomputed:")
        and theirs.startswith("precomputed:")
        and not str(name).startswith("precomputed:")
    ):  # vectors brought with --embeddings are known by the name --model gives them
        return (
            f"vectors brought with --embeddings are named by --model: give --model {name} for vectors "
            "of that model"
        )
    if mine.startswith("precomputed:"):
        return (
            f"it was fit on vectors brought with --embeddings ({name}), which no encoder here makes: give "
            f"such vectors (--embeddings DIR --model {name}), or fit an adapter on this encoder's vectors"
        )
    if theirs.startswith("precomputed:"):
        return (
            "vectors brought with --embeddings cannot prove which model made them, so an adapter fit "
            f"through {name}'s encoder takes only vectors that encoder makes: drop --embeddings (the store "
            "embeds the texts, once), or fit the adapter on these vectors"
        )
    return folder_fix(mine, theirs) or "use the same encoder (model, dimensions, prompts) as at training time"


def _shown_fingerprint(fingerprint: str) -> str:
    """A fingerprint as a message names it. Vectors brought with ``--embeddings`` and no ``--model``
    are named ``precomputed:DIGEST`` (their corpus file's), so their fingerprint, the provider before
    the name, reads ``precomputed:precomputed:DIGEST``: shown as the name, with what it is."""
    doubled = "precomputed:precomputed:"
    if fingerprint.startswith(doubled):
        return f"precomputed:{fingerprint[len(doubled) :]} (vectors given no --model, named by their digest)"
    return fingerprint


def folder_fix(mine: str, theirs: str) -> str | None:
    """The fix when fingerprints ``mine`` and ``theirs`` are of one model folder's kind and differ by
    the folder's name alone (the same content, renamed) or by its content alone (its files changed
    since, or another model under that name), else None."""
    ours, others = mine.split(":"), theirs.split(":")
    if len(ours) != 3 or len(others) != 3 or ours[0] != others[0]:
        return None
    if ours[2] == others[2]:
        return (
            "the same model in a folder of another name: a model folder's name is part of its "
            f"fingerprint, so name it {ours[1]} again"
        )
    if ours[1] == others[1] and ours[0] in FOLDER_CLASSES:
        return (
            f"the folder {ours[1]} holds other files than the model it was built with (changed since, or "
            "another model under that name): give the folder of that model, or build again with this one"
        )
    return None


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
    loss : {"ranking", "ranknet", "infonce", "softmax", "pointwise", "similarity", "alignment"}
        Main objective; "ranking" is the paper's relevance-weighted pairwise logistic loss. Without
        labels: "similarity" turns the projection (a rotation) so that each ``dims`` prefix ranks
        documents as the full embedding does; "alignment" maps another model's vectors of the
        ``pairs`` onto the documents' model's.
    pair_reduction : {"sum", "mean"}
        How the pairwise losses ("ranking", "ranknet") combine one query's pairs: the paper's sum, or
        the mean over pairs (weaker by the pairs per query; kept for the ablation table).
    dims : list of int, optional
        Matryoshka sizes: each prefix of the adapted vector of these lengths is trained to be an
        embedding of its own (a loss term per prefix).
    init : {"identity", "pca", "score-axes", "lstsq", "procrustes"}
        Where the networks start: the identity; a rotation onto the corpus's principal axes; with
        loss "similarity", a rotation onto the axes that carry the most of the query texts' scores
        against the documents (:func:`~search_adaptor.training.score_axes`; the corpus's PCA
        without query texts); another model's query map (closed-form least squares or Procrustes
        on the ``pairs``).
    gamma : float
        Weight of the alignment term of a cross-model map: the ``pairs`` mapped onto the documents'
        model's vectors of the same texts.
    alpha, beta : float
        Weights of the recovery (L1 to the original embedding, ``alpha * (rec_q + rec_d)``) and
        query-prediction losses.
    negatives : {"random", "hard", "mixed", "all"}
        Where each query's negatives come from: uniform corpus draws, the zero-shot ranking's top
        ``hard_pool`` (labelled positives excluded), half of each, or every document (softmax-type
        losses with ``in_batch`` on corpora up to ``full_corpus_max``: the whole corpus is adapted
        at every step; on larger corpora, as "random").
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
        Share of the training queries held out for validation when no validation set is given, at
        most :data:`~search_adaptor.data.MAX_VALIDATION_QUERIES` (5,000) queries: each is searched
        against the whole corpus at every evaluation (above
        :data:`~search_adaptor.training.VAL_POOL_ABOVE` documents, against its pool of the
        :data:`~search_adaptor.training.VAL_POOL` documents nearest it under the start map, with the
        start and the checkpoint kept scored again over the whole corpus); the rest of a larger
        share trains (:func:`~search_adaptor.data.validation_split`).
    hard_pool, full_corpus_max : int
        Depth of the zero-shot ranking hard negatives come from; largest corpus scored exhaustively.
    seed : int
        Seeds sampling, initialisation and the validation split.
    precision : {"float32", "bfloat16", "auto"}
        Arithmetic of the training steps' matrix products (weights, optimiser and validation stay
        float32, and so does the saved adapter). "bfloat16" is mixed precision: on CPUs that multiply
        bfloat16 natively (AVX512-BF16, AMX) a step is 1.2-1.5x faster, at a small cost in nDCG@10
        (BENCHMARKS.md); "auto" uses it where the CPU does and float32 elsewhere. float32, the
        default, runs the same arithmetic on every machine and the same adapter on one; another
        CPU's kernels round float32 sums differently, which can move scores in the third decimal.
    """

    def __init__(
        self,
        architecture: str = "mlp",
        hidden_dim: int | None = None,
        residual: bool = True,
        mode: str = "shared",
        loss: str = "ranking",
        pair_reduction: str = "sum",
        dims: Sequence[int] | None = None,
        init: str = "identity",
        gamma: float = 0.0,
        alpha: float = 0.1,
        beta: float = 0.01,
        negatives: str = "random",
        n_negatives: int = 10,
        in_batch: bool = False,
        temperature: float = 0.05,
        lr: float = 1e-3,
        batch_size: int = 128,
        max_steps: int = MAX_STEPS,
        eval_every: int = 25,
        patience: int = 125,
        val_fraction: float = VAL_FRACTION,
        hard_pool: int = 100,
        full_corpus_max: int = 50000,
        seed: int = 0,
        precision: str = "float32",
    ) -> None:
        self.architecture = architecture
        self.hidden_dim = hidden_dim
        self.residual = residual
        self.mode = mode
        self.loss = loss
        self.pair_reduction = pair_reduction
        self.dims = dims
        self.init = init
        self.gamma = gamma
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
        self.precision = precision

    # -- scikit-learn style parameter handling -------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyperparameters as given to ``__init__``. ``deep`` is scikit-learn's flag for nested
        estimators (there are none here), accepted so that ``sklearn.base.clone`` takes an adapter."""
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
        """An unfitted copy with the same hyperparameters (and ``overrides``, named as
        :meth:`set_params` names them: an unknown one is refused in one line)."""
        return type(self)(**self.get_params()).set_params(**overrides)

    def __repr__(self) -> str:
        defaults = type(self)().get_params()  # compared by repr, as scikit-learn does: dims may be an array
        changed = {k: v for k, v in self.get_params().items() if repr(defaults[k]) != repr(v)}
        return f"SearchAdaptor({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def _validate_params(self) -> dict[str, Any]:
        """Every hyperparameter's type, choices and bounds (fit and load both run this), returned as
        plain Python values, which training, the fitted adapter and its saved config use: a parameter
        grid's numpy scalars (``np.linspace``, ``ParameterGrid``) as the int, float or bool they are,
        ``dims`` (a list, tuple or array) as a list of ints. The attributes stay as given: scikit-learn's
        ``clone`` needs ``get_params`` to return what ``__init__`` got, and ``fit`` to change none of it."""
        p = {k: v.item() if isinstance(v, np.generic) else v for k, v in self.get_params().items()}
        choices = {
            "architecture": ARCHITECTURES,
            "mode": MODES,
            "loss": LOSSES,
            "init": INITS,
            "pair_reduction": PAIR_REDUCTIONS,
            "negatives": NEGATIVES,
            "precision": PRECISIONS,
        }
        for name, allowed in choices.items():
            if p[name] not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {p[name]!r}")
        for name in ("residual", "in_batch"):
            if not isinstance(p[name], bool):
                raise ValueError(f"{name} must be true or false; got {p[name]!r}")
        ints = {"batch_size": 1, "max_steps": 1, "eval_every": 1, "n_negatives": 1, "hard_pool": 1}
        ints.update(patience=0, full_corpus_max=0, seed=0)
        highest = {"seed": MAX_SEED}  # what torch's generator takes: refused here, not after embedding
        for name, low in ints.items():
            high = highest.get(name)
            if not _integer(p[name]) or p[name] < low or (high is not None and p[name] > high):
                bound = f">= {low}" if high is None else f"from {low} to {high}"
                raise ValueError(f"{name} must be an integer {bound}; got {p[name]!r}")
            p[name] = int(p[name])
        hidden = p["hidden_dim"]
        if hidden is not None and not (_integer(hidden) and 1 <= hidden <= MAX_DIM):
            raise ValueError(f"hidden_dim must be null or an integer in [1, {MAX_DIM}]; got {hidden!r}")
        p["hidden_dim"] = None if hidden is None else int(hidden)
        reals = ("alpha", "beta", "gamma", "temperature", "lr", "val_fraction")
        for name in reals:
            value = p[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        for name in ("alpha", "beta", "gamma", "temperature", "lr"):
            value, positive = p[name], name in ("temperature", "lr")
            if value < 0 or (positive and value == 0):
                raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}; got {value!r}")
        if not 0.0 < p["val_fraction"] < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {p['val_fraction']!r}")
        p.update({name: float(p[name]) for name in reals})
        dims = p["dims"].tolist() if isinstance(p["dims"], np.ndarray) else p["dims"]
        if dims is not None:
            if isinstance(dims, (str, bytes)) or not hasattr(dims, "__len__") or not len(dims):
                raise ValueError(f"dims must be null or a non-empty list of sizes; got {dims!r}")
            if not all(_integer(m) and 1 <= m <= MAX_DIM for m in dims):
                raise ValueError(f"dims must be integers in [1, {MAX_DIM}]; got {list(dims)!r}")
            if p["mode"] == "query_only":
                raise ValueError(
                    "dims: prefixes need the documents adapted too; use mode 'shared' or 'separate'"
                )
            dims = [int(m) for m in dims]
        p["dims"] = dims
        if p["loss"] == "similarity" and p["mode"] != "shared":
            raise ValueError(
                "loss 'similarity' (no labels) adapts queries and documents alike: use mode 'shared'"
            )
        if p["init"] == "score-axes" and p["loss"] != "similarity":
            raise ValueError(
                "init 'score-axes' orders the axes by the query texts' scores against the documents, "
                "which the unsupervised objective alone knows: use loss 'similarity', or init 'pca'"
            )
        if p["loss"] == "similarity" and (p["alpha"] or p["beta"] or p["gamma"]):
            raise ValueError(
                "loss 'similarity' trains a rotation only, which no regulariser acts on: "
                "set alpha, beta and gamma to 0"
            )
        if p["loss"] == "similarity" and not p["residual"]:
            raise ValueError(
                "loss 'similarity' trains a rotation only, the residual function held at its zero start, "
                "which only the skip connection gives: keep residual=True"
            )
        return p

    # -- fitting ---------------------------------------------------------------------------------
    def fit(
        self,
        query_embeddings: np.ndarray,
        corpus_embeddings: np.ndarray,
        qrels: Mapping[str, Mapping[str, int]] | None,
        query_ids: Sequence[str] | None = None,
        corpus_ids: Sequence[str] | None = None,
        val_query_ids: Sequence[str] | None = None,
        encoder: EncoderLike | None = None,
        query_encoder: EncoderLike | None = None,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
        query_pairs: np.ndarray | None = None,
        more_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> SearchAdaptor:
        """Train on labelled (query, relevant document) pairs; keep the best validation checkpoint.

        Parameters
        ----------
        query_embeddings : array-like of shape (n_queries, dim)
        corpus_embeddings : array-like of shape (n_docs, dim)
            The whole corpus: validation retrieves over all of it, as at search time.
        qrels : mapping query id -> {doc id -> grade}, or None
            Graded relevance of the training (and validation) queries: str ids, int grades in
            ``metrics.GRADE_RANGE`` (as pytrec_eval takes them). With ``loss="similarity"``
            (no labels) only its query ids are read, to add those query texts to the corpus texts;
            None trains on the corpus alone.
        query_ids, corpus_ids : sequence of str, optional
            Ids of the rows; default to "0", "1", ... Other types (int) are refused, not converted:
            they would not match the qrels' str ids.
        val_query_ids : sequence of str, optional
            Queries to validate on (not empty); those without a relevant document are left out,
            so ``val_query_ids_`` may be shorter. By default ``val_fraction`` of the labelled
            queries, drawn with ``seed``. Validation picks the checkpoint; the start (the identity,
            zero-shot, or the map ``init`` names: :attr:`start_`) is a candidate too, so the fitted
            adapter is never worse than its start on validation.
        encoder : Encoder, its ``info()`` dict, or a model name, optional
            What made the embeddings. It is saved with the adapter, and every later use refuses
            vectors of another model; without it the adapter cannot tell (a warning says so on save).
            A name (for vectors made elsewhere) is recorded as it is: later uses must give that
            name, as an Encoder's fingerprint cannot be matched to it.
        query_encoder : Encoder, info dict or model name, optional
            What made the query embeddings when another model than ``encoder`` did (a cross-model
            adapter: queries of one model mapped into the documents' space, of any dimension).
        pairs : (ndarray of shape (n, query_dim), ndarray of shape (n, dim)), optional
            The same texts embedded by the query model and by the document model: the start of a
            cross-model query map (``init="lstsq"`` or ``"procrustes"``), the alignment term
            (``gamma``), and all there is to train on with ``loss="alignment"`` (no labels).
        query_pairs : ndarray of shape (n_queries, dim), optional
            The query texts embedded by the documents' model, row for row with
            ``query_embeddings``. With ``loss="alignment"`` the queries named in ``qrels`` (labels
            unused) become paired texts too, and a share of them validates; other losses ignore it.
        more_pairs : (ndarray of shape (m, query_dim), ndarray of shape (m, dim)), optional
            Further texts embedded by both models (a query log, say): they train the map beside
            ``pairs`` (the alignment term, ``loss="alignment"``); the closed-form start stays the map
            of ``pairs``.
        """
        params = self._validate_params()
        data = (query_embeddings, corpus_embeddings, qrels, query_ids, corpus_ids, val_query_ids, pairs)
        return self._train(params, _described(encoder, query_encoder), data, query_pairs, more_pairs)

    def _train(
        self,
        params: dict[str, Any],
        encoders: tuple[dict[str, Any], dict[str, Any]],
        data: tuple[Any, ...],
        query_pairs: np.ndarray | None,
        more_pairs: tuple[np.ndarray, np.ndarray] | None,
        steps: int | None = None,
        record: SearchAdaptor | None = None,
    ) -> SearchAdaptor:
        """:func:`~search_adaptor.training.train` on ``data`` (:meth:`fit`'s first seven inputs),
        timed, into this estimator; with ``record`` (:meth:`refit_all`) the validation record is
        ``record``'s, the fit that chose ``steps``."""
        start = time.perf_counter()
        result = train(params, *data, query_pairs, more_pairs, steps=steps)
        if record is not None:  # the new weights have no validation of their own
            result.history, result.n_steps = record.history_, record.n_steps_
            result.best_score, result.zero_shot_score = record.best_score_, record.zero_shot_score_
            result.val_query_ids, result.val_metric = list(record.val_query_ids_), record.val_metric_
        self._set_fitted(result, params, *encoders)
        self.refit_all_ = record is not None
        self.fit_time_ = time.perf_counter() - start
        return self

    def _set_fitted(
        self,
        result: TrainResult,
        params: dict[str, Any],
        encoder: dict[str, Any],
        query_encoder: dict[str, Any] | None = None,
    ) -> None:
        #: the hyperparameters it was fitted with, as :meth:`_validate_params` returned them: what the
        #: fitted adapter reads and :meth:`save` records (the attributes stay as the user gave them)
        self._params = params
        self.dim_ = result.dim
        self.query_dim_ = result.query_dim or result.dim
        self.query_encoder_ = dict(query_encoder or {})
        self._start = result.start  # the networks as training began: see at_start()
        self.query_net_ = result.query_net
        self.corpus_net_ = result.corpus_net
        self.history_ = result.history
        self.best_step_ = result.best_step
        self.best_score_ = result.best_score
        self.zero_shot_score_ = result.zero_shot_score
        self.n_steps_ = result.n_steps
        self.train_precision_ = result.precision
        self.n_train_queries_ = result.n_train_queries
        self.val_query_ids_ = result.val_query_ids
        n_val = result.n_val_queries
        self.n_val_queries_ = len(result.val_query_ids) if n_val is None else n_val
        self.train_query_ids_ = list(result.train_query_ids)
        #: 64-bit digests of the texts of the queries that trained, validated or chose it (without
        #: labels, whose texts trained it), when its fit knew them (``search-adaptor fit``):
        #: ``evaluate`` tells held-out queries by them
        self.query_text_digests_: list[str] | None = None
        self.val_metric_ = result.val_metric
        self.encoder_ = encoder
        self.metrics_: dict[str, Any] = {}
        #: whether these weights trained on every labelled query after a validated fit chose their
        #: step count (:meth:`refit_all`): the validation record is that fit's
        self.refit_all_ = False

    def refit_all(
        self,
        query_embeddings: np.ndarray,
        corpus_embeddings: np.ndarray,
        qrels: Mapping[str, Mapping[str, int]],
        query_ids: Sequence[str] | None = None,
        corpus_ids: Sequence[str] | None = None,
        encoder: EncoderLike | None = None,
        query_encoder: EncoderLike | None = None,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
        more_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> SearchAdaptor:
        """A new adapter of this one's hyperparameters, trained on every labelled query of ``qrels``
        (none held out) for the :attr:`best_step_` steps this fit's validation chose; this one is
        unchanged.

        A validated fit trains on the queries validation leaves it, typically 80%; this trains on all
        of them, as scikit-learn's ``GridSearchCV`` refits its winner on the whole training set: on
        SciFact ``auto``'s test nDCG@10 rose by 0.029 (BENCHMARKS.md). Nothing validates the new weights:
        its validation record (scores, history, the queries that validated) stays this fit's, the one
        that chose the number of steps, and ``refit_all_`` says so. A fit whose start won (best step
        0) has nothing to train: its copy at the start comes back. ``qrels`` and the inputs are those
        of :meth:`fit` (the validation queries now train too).
        """
        self._check_fitted()
        if self._params["loss"] in UNLABELLED_LOSSES:
            raise ValueError(
                f"loss={self._params['loss']!r} trains without labels, so there is no labelled query to "
                "train on again: refit_all is for labelled fits"
            )
        if self.best_step_ == 0:
            return self.at_start()
        info, query_info = _described(encoder, query_encoder)
        data = (query_embeddings, corpus_embeddings, qrels, query_ids, corpus_ids, None, pairs)
        encoders = (info or self.encoder_, query_info or self.query_encoder_)
        return self.clone()._train(
            dict(self._params), encoders, data, None, more_pairs, self.best_step_, self
        )

    def at_start(self) -> SearchAdaptor:
        """This adapter as its training began (best step 0): the identity, or its starting map (a PCA
        rotation, another model's closed-form query map), keeping what training saw. It is what
        selection ships when no trained candidate earns its place."""
        self._check_fitted()
        if self._start is None:
            raise RuntimeError("at_start() needs the adapter fit() returned, not one loaded from a folder")
        # every weight is set below, from the start's states: nothing is drawn from torch's global RNG
        query_net, corpus_net = _unset_nets(self._params, self.dim_, self.query_dim_)
        separate = self._params["mode"] == "separate"
        own = [query_net] + ([corpus_net] if separate and corpus_net is not None else [])
        for net, state in zip(own, self._start, strict=True):
            net.load_state_dict(state)
            net.eval()
        start = self.clone()
        result = TrainResult(
            query_net,
            corpus_net,
            self.dim_,
            self.history_,
            0,
            self.zero_shot_score_,
            self.zero_shot_score_,
            self.n_steps_,
            self.n_train_queries_,
            self.val_query_ids_,
            self.val_metric_,
            self.query_dim_,
            self._start,
            train_query_ids=self.train_query_ids_,
            n_val_queries=self.n_val_queries_,
        )
        start._set_fitted(result, self._params, self.encoder_, self.query_encoder_)
        start.fit_time_ = self.fit_time_
        start.query_text_digests_ = self.query_text_digests_
        return start

    def __sklearn_is_fitted__(self) -> bool:
        """Whether ``fit()`` or ``SearchAdaptor.load()`` made this adapter (scikit-learn's
        ``check_is_fitted`` asks this)."""
        return hasattr(self, "query_net_")

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags, which its ``check_is_fitted`` reads (1.6 and later): an
        estimator that needs fitting, on labels given as qrels rather than a target ``y``."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False))

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError("this SearchAdaptor is not fitted yet: call fit() or SearchAdaptor.load()")

    @property
    def fitted_params_(self) -> dict[str, Any]:
        """The hyperparameters the fitted adapter computes with, as ``fit`` validated them or
        ``load`` read them (plain Python values, ``dims`` a list of ints): a copy, so editing it
        changes nothing.

        Describe a fitted adapter (its mode, sizes, start, loss) by these, not by its attributes:
        those are the editable hyperparameters, which ``set_params`` may have changed since the fit
        (as scikit-learn allows, for the next ``fit``) while the fitted networks stay as they were.
        """
        self._check_fitted()
        return copy.deepcopy(self._params)

    @property
    def kept_start_(self) -> bool:
        """True when no trained checkpoint beat the start on validation (best step 0): the adapter
        computes what it computed before training, :attr:`start_`, which need not be the identity."""
        self._check_fitted()
        return self.best_step_ == 0

    @property
    def start_(self) -> str | None:
        """What the adapter started from, in words, from the hyperparameters the adapter records (so a
        loaded adapter says what its fit said); None for the identity. The start is the networks'
        projection alone (none: the identity), which training scores as step 0 and a kept start
        computes (:meth:`_numpy_net`): the residual function adds nothing to it, being zero at the
        start with the skip connection, and without it (``residual=False``) a random draw that no
        checkpoint is compared with."""
        self._check_fitted()
        init = self._params["init"]
        if init == "identity":
            return None
        if init == "pca":
            return "a PCA rotation of the corpus"
        if init == "score-axes":
            return "a rotation onto the query texts' score axes"
        kind = "least-squares map" if init == "lstsq" else "Procrustes rotation"
        start = f"a {kind} {self.query_dim_} -> {self.dim_} of the paired texts"
        if any(m < self.dim_ for m in self._params["dims"] or ()):  # Matryoshka: both sides on PCA axes
            start += ", turned onto the corpus's principal axes"
        return start

    @property
    def is_identity_(self) -> bool:
        """True when the adapter changes nothing but the norm: it kept its start, and that start is
        the identity (a kept PCA rotation or another model's map is not)."""
        return self.kept_start_ and self.start_ is None

    def check_size(self, dim: int | None) -> None:
        """Refuse an output size (a Matryoshka prefix) the adapter cannot give: 1 to its width."""
        self._check_fitted()
        if dim is not None and (
            isinstance(dim, bool) or not (isinstance(dim, numbers.Integral) and 1 <= dim <= self.dim_)
        ):
            raise ValueError(f"dim must be an output size between 1 and {self.dim_}; got {dim!r}")

    def untrained_size(self, dim: int | None) -> str | None:
        """Why a prefix of ``dim`` output coordinates was never measured, in one line (None when it
        was: the full width, or a size trained with ``dims``): any prefix works, not every one is good."""
        self._check_fitted()
        dims = self._params["dims"]
        if dim is None or dim >= self.dim_ or dim in (dims or ()):
            return None
        trained = (
            f"it was trained at {', '.join(str(m) for m in sorted(dims))}"
            if dims
            else "it was trained at full width only; fit --dims trains smaller sizes"
        )
        return (
            f"{dim} is not a size this adapter was trained at ({trained}); its first {dim} coordinates "
            "are kept, but how well they retrieve was never measured"
        )

    @property
    def fingerprint_(self) -> str:
        """Stable id of what the adapter computes: mode, architecture, whether it kept its start
        (then a network without a projection is skipped) and weights.

        Saving and loading the same adapter gives the same fingerprint; any change of a weight does not.
        """
        self._check_fitted()
        head = {k: self._params[k] for k in ("architecture", "hidden_dim", "residual", "mode")}
        # the key keeps its first name, so that saved checksums and index manifests still match
        described = json.dumps({**head, "dim": self.dim_, "identity": self.kept_start_}, sort_keys=True)
        h = hashlib.sha256(described.encode())
        for name, tensor in sorted(self._tensors().items()):
            h.update(name.encode())
            h.update(tensor.cpu().numpy().tobytes())
        return f"adapter:{h.hexdigest()[:16]}"

    # -- inference -------------------------------------------------------------------------------
    def _apply(
        self,
        net: ResidualAdapter | None,
        x: np.ndarray,
        what: str,
        encoder: EncoderLike | None,
        dim: int | None,
        kind: Kind,
    ) -> np.ndarray:
        self.check_size(dim)
        if encoder is not None:
            self.check_encoder(encoder, kind=kind)
        arr = self.check_width(x, kind, what)
        out = adapt_rows(self._numpy_net(net), float32_rows(arr, what), what)
        if dim is not None and dim < self.dim_:  # a Matryoshka prefix: the first dim coordinates
            return l2_normalize(np.ascontiguousarray(out[:, :dim]))
        return out

    def check_width(self, x: object, kind: Kind, what: str) -> np.ndarray:
        """``x`` as a 2-D numpy array of numbers one row per text, each as wide as the ``kind`` side
        (``"query"`` or ``"document"``) takes: what ``transform_*`` check before adapting.

        Raises
        ------
        ValueError
            Not a 2-D array of numbers.
        CompatibilityError
            Rows of another width (another model's embeddings), naming the adapter's model.
        """
        self._check_fitted()
        arr = _rows_array(x, what)
        width = self.query_dim_ if kind == "query" else self.dim_
        if arr.shape[1] != width:
            fix = "embed with the same model as at training time"
            if kind == "document" and arr.shape[1] == self.query_dim_:  # a cross-model adapter's queries
                fix = (
                    f"{arr.shape[1]}-d is its query model's ({self._encoder_name('query')}): adapt query "
                    f"vectors as queries (transform_queries; `transform --queries`), or {fix}"
                )
            raise CompatibilityError(
                f"{what}: this adapter expects {width}-d embeddings of {self._encoder_name(kind)}, "
                f"got {arr.shape[1]}-d; {fix}"
            )
        return arr

    def _numpy_net(self, net: ResidualAdapter | None) -> NumpyNet | None:
        """``net`` in numpy, as it is now; None where the side only normalises (no network, or the
        identity: best step 0, unless it starts with a projection, which it then keeps).

        A kept start (best step 0) is the projection alone, :attr:`start_`, the map training scored
        as step 0: with the skip connection the residual function adds exactly zero there (so the
        result is the same, bit for bit), and without it that function is a random draw."""
        if net is None or (self.kept_start_ and net.project is None):
            return None
        return NumpyNet(net, start=self.kept_start_)

    def numpy_side(self, kind: Kind) -> NumpyNet | None:
        """What :meth:`transform_queries` (``"query"``) or :meth:`transform_corpus` (``"document"``) runs,
        with the weights as they are now: for callers that adapt many small batches and keep it (a
        served index), through :func:`~search_adaptor.networks.adapt_rows`."""
        self._check_fitted()
        return self._numpy_net(self.query_net_ if kind == "query" else self.corpus_net_)

    def transform_queries(
        self, X: np.ndarray, encoder: EncoderLike | None = None, dim: int | None = None, what: str = "queries"
    ) -> np.ndarray:
        """Adapted, unit-norm query vectors.

        Parameters
        ----------
        X : array-like of shape (n_queries, dim)
        encoder : Encoder, info dict or fingerprint, optional
            What made ``X``; refused (naming both models) when it is not the adapter's encoder. A
            model's name is compared with the recorded fingerprint as it is (:meth:`check_encoder`).
        dim : int, optional
            Keep the first ``dim`` coordinates (renormalised): a Matryoshka prefix. An adapter
            trained with ``dims`` keeps its ranking quality at those sizes.
        what : str
            Names ``X`` in errors (a file, say).

        Returns
        -------
        ndarray of shape (n_queries, dim), float32
            Unit rows; a row of zeros (a static model's vector for a text none of whose words it knows)
            stays zeros, scoring 0 against every document, as it does unadapted.
        """
        self._check_fitted()
        return self._apply(self.query_net_, X, what, encoder, dim, "query")

    def transform_corpus(
        self, X: np.ndarray, encoder: EncoderLike | None = None, dim: int | None = None, what: str = "corpus"
    ) -> np.ndarray:
        """Adapted, unit-norm document vectors (only normalised in query-only mode: no re-index);
        ``encoder``, ``dim`` and ``what`` as in :meth:`transform_queries`, and zero rows kept as there."""
        self._check_fitted()
        return self._apply(self.corpus_net_, X, what, encoder, dim, "document")

    def score(self, query_embeddings: np.ndarray, corpus_embeddings: np.ndarray) -> np.ndarray:
        """Cosine scores of adapted queries against adapted documents, shape (n_queries, n_docs)."""
        return self.transform_queries(query_embeddings) @ self.transform_corpus(corpus_embeddings).T

    # -- the encoder it belongs to -----------------------------------------------------------------
    def _encoder_info(self, kind: Kind = "document") -> dict[str, Any]:
        """What made this side's embeddings: the query model for queries of a cross-model adapter."""
        if kind == "query" and getattr(self, "query_encoder_", None):
            return self.query_encoder_
        return getattr(self, "encoder_", None) or {}

    def _encoder_name(self, kind: Kind = "document") -> str:
        enc = self._encoder_info(kind)
        return enc.get("model") or enc.get("fingerprint") or "the training model"

    def check_encoder(self, encoder: EncoderLike, dim: int | None = None, kind: Kind = "document") -> None:
        """Refuse embeddings from another model (fingerprint) or of another dimension, naming both.

        ``encoder`` is an Encoder, its info dict, or a fingerprint (a model's name matches only an
        adapter fit with that name as ``encoder=``), of the documents (``kind``
        "document") or of the queries ("query": the query model of a cross-model adapter). An
        adapter saved without its encoder (older files, or ``fit`` without ``encoder=``) cannot
        check: it accepts and warns once.
        """
        self._check_fitted()
        theirs = describe_encoder(encoder)["fingerprint"]
        mine = self._encoder_info(kind).get("fingerprint")
        if mine and theirs != mine:
            fix = _mismatch_fix(mine, theirs, self._encoder_info(kind), encoder)
            raise CompatibilityError(
                f"adapter was trained on embeddings of {_shown_fingerprint(mine)} but these come from "
                f"{_shown_fingerprint(theirs)}; {fix}"
            )
        if not mine:
            self._warn_no_encoder()
        width = self.query_dim_ if kind == "query" else self.dim_
        if dim is not None and dim != width:
            raise CompatibilityError(
                f"adapter expects {width}-d embeddings of {self._encoder_name(kind)}, got {dim}-d"
            )

    def _warn_no_encoder(self, where: str = "") -> None:
        """Say that this adapter records no encoder, once for it and once for the folder ``where`` it was
        loaded from or saved to: ``index`` loads, checks and saves one adapter, and said it three times,
        the last naming the index's hidden staging folder instead of a path the user gave."""
        said = getattr(self, "_said_no_encoder", False) or where in _warned_no_encoder
        self._said_no_encoder = True
        if where:
            _warned_no_encoder.add(where)
        if not said:
            log.warning(
                "search-adaptor: warning: %sthis adapter does not record the encoder it was trained on, so "
                "it cannot refuse vectors of another model; refit with encoder= to record it",
                f"{where}: " if where else "",
            )

    # -- persistence -------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        """Weights as saved: ``query.*`` always, ``corpus.*`` for a separate corpus network."""
        self._check_fitted()
        nets = {"query": self.query_net_}
        if self._params["mode"] == "separate" and self.corpus_net_ is not None:
            nets["corpus"] = self.corpus_net_
        return {
            f"{side}.{k}": v.detach().contiguous()
            for side, net in nets.items()
            for k, v in net.state_dict().items()
        }

    def save(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``adapter.safetensors`` + ``README.md`` into the folder ``path``.

        The folder is replaced as a whole (readers see the old adapter or the new one); an existing
        folder is replaced only when it is empty or an adapter folder that holds nothing else, so a
        file of the user's beside the adapter (notes, runs) is never deleted. ``extra`` (e.g. validation and
        test metrics; by default the ``metrics_`` it was loaded with) is stored under
        ``config["metrics"]``, numpy scalars as the numbers they are. Its ``"test"`` entry is the
        model card's table: ``{system: {metric: number}}`` with ``"adapted"`` and ``"zero-shot"``
        among the systems (what ``search-adaptor fit`` saves), entries that are no system (the
        protocol) kept but not tabulated; keep results of other shapes under other keys.

        Raises
        ------
        TypeError, ValueError
            One line naming the field, before anything is written: an ``extra`` that JSON cannot hold
            or whose ``"test"`` entry :meth:`load` would refuse.
        FileExistsError
            One line naming the first file in the way: ``path`` holds something other than an adapter,
            or an adapter and a file that is none of its own.
        """
        from safetensors.torch import save as to_safetensors

        self._check_fitted()
        metrics = _saved_metrics(extra if extra is not None else self.metrics_)
        config = {
            "library": "search-adaptor",
            "version": __version__,
            "format_version": FORMAT_VERSION,
            "encoder": self.encoder_ or {},
            **({"query_encoder": self.query_encoder_} if self.query_encoder_ else {}),
            "dim": self.dim_,
            **({"query_dim": self.query_dim_} if self.query_dim_ != self.dim_ else {}),
            "normalization": "l2 on input and output; scores are cosine similarities",
            "identity": self.is_identity_,
            "checksum": _checksum(self),
            "hyperparameters": self._params,
            "training": {
                "best_step": self.best_step_,
                "n_steps": self.n_steps_,
                "val_ndcg@10": self.best_score_,
                "zero_shot_val_ndcg@10": self.zero_shot_score_,
                "n_train_queries": self.n_train_queries_,
                "n_val_queries": self.n_val_queries_,
                "fit_time_s": round(float(getattr(self, "fit_time_", 0.0)), 3),
                "train_query_ids": list(self.train_query_ids_),
                "val_query_ids": list(self.val_query_ids_),
                "val_metric": self.val_metric_,
                "precision": self.train_precision_,
                **({"refit_all": True} if self.refit_all_ else {}),
                "history": self.history_,
                **(
                    {"query_text_digests": list(self.query_text_digests_)}
                    if self.query_text_digests_ is not None
                    else {}
                ),
            },
            "metrics": metrics,
        }
        # one metadata key: safetensors writes them from a Rust HashMap, in an order that changes from
        # call to call, so two keys made two saves of the same weights differ byte for byte
        blob = to_safetensors(self._tensors(), metadata={"format": "pt"})
        with Staged(path, folder=True, marker=CONFIG, what="an adapter folder", parts=FILES) as staged:
            (staged.path / WEIGHTS).write_bytes(blob)
            (staged.path / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            (staged.path / CARD).write_text(_model_card(config, self), encoding="utf-8")
        if not (self.encoder_ or {}).get("fingerprint"):  # once written: a refused save warns of nothing
            self._warn_no_encoder(str(path))
        return staged.target

    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchAdaptor:
        """Rebuild a fitted adapter from :meth:`save`'s folder (no pickle involved), checking it whole.

        The config's ``checksum`` (format 2) covers everything that decides the outputs and the
        vectors accepted, so an edit or a damaged byte that would change them is refused rather than
        served; an adapter saved before checksums (format 1) loads, with one warning.

        Raises
        ------
        FileNotFoundError, ValueError
            One line naming the file, the field and the fix: a missing, damaged or edited config
            (wrong type, unknown key or choice, out-of-range number, newer format), weights that do
            not match the config (names, shapes, dtype) or are not finite, a checksum that does not
            match.
        """
        folder = Path(path)
        cfg_path = folder / CONFIG
        if folder.is_file():
            parent = f" ({folder.parent})" if folder.name == CONFIG else ""
            raise FileNotFoundError(f"{folder}: a file; give the adapter's folder{parent}")
        if not cfg_path.is_file():
            if (folder / "adapter" / CONFIG).is_file():  # a fit's --out folder, which holds the adapter
                raise FileNotFoundError(f"{cfg_path}: not found; did you mean {folder / 'adapter'}?")
            raise FileNotFoundError(
                f"{cfg_path}: not found; point at an adapter folder: `search-adaptor fit`'s OUT_DIR/adapter, "
                "or one written by SearchAdaptor.save"
            )
        raw = read_json(cfg_path, LOAD_FIX)
        try:
            return cls._from_config(raw, folder, cfg_path)
        except ValueError as exc:  # a field it does not know: "re-save it" cannot work where it is newer
            newer = _newer_writer(raw)
            fix = f"it was written by search-adaptor {newer}, newer than this one ({__version__}): upgrade"
            if newer is None or LOAD_FIX not in str(exc):
                raise
            raise with_fix(exc, fix) from None

    @classmethod
    def _from_config(cls, raw: Any, folder: Path, cfg_path: Path) -> SearchAdaptor:
        """The adapter of the folder whose parsed ``config.json`` is ``raw``: :meth:`load`'s checks."""
        config = _check_config(raw, cfg_path)
        est = cls()
        try:
            est.set_params(**config["hyperparameters"])
            params = est._validate_params()
        except ValueError as exc:
            raise ValueError(f"{cfg_path}: hyperparameters: {exc}; {LOAD_FIX}") from None
        dim, query_dim = config["dim"], config.get("query_dim", config["dim"])
        if not 1 <= query_dim <= MAX_DIM:
            raise ValueError(f"{cfg_path}: field 'query_dim' must be in [1, {MAX_DIM}]; {LOAD_FIX}")
        if params["dims"] is not None and max(params["dims"]) > dim:  # a prefix wider than the output
            raise ValueError(
                f"{cfg_path}: hyperparameters: dims {params['dims']} go beyond the {dim}-d output; {LOAD_FIX}"
            )
        query_net, corpus_net = _load_weights(folder / WEIGHTS, params, dim, query_dim)
        training = config["training"]
        est._set_fitted(
            TrainResult(
                query_net=query_net,
                corpus_net=corpus_net,
                dim=dim,
                history=training.get("history", []),
                best_step=training["best_step"],
                best_score=training["val_ndcg@10"],
                zero_shot_score=training["zero_shot_val_ndcg@10"],
                n_steps=training["n_steps"],
                n_train_queries=training["n_train_queries"],
                val_query_ids=training.get("val_query_ids", []),
                val_metric=training.get("val_metric", "ndcg@10"),
                query_dim=query_dim,
                precision=training.get("precision", "float32"),
                train_query_ids=training.get("train_query_ids", []),
                n_val_queries=training["n_val_queries"],
            ),
            params,
            config["encoder"],
            config.get("query_encoder"),
        )
        est.fit_time_ = training["fit_time_s"]
        est.query_text_digests_ = training.get("query_text_digests")
        est.refit_all_ = training.get("refit_all", False)
        est.metrics_ = config["metrics"]
        # files written before start_ said true for any kept start, the identity or not
        if config["identity"] not in (est.is_identity_, est.kept_start_):
            raise ValueError(
                f"{cfg_path}: identity is {config['identity']} but training.best_step is "
                f"{training['best_step']} and hyperparameters.init is {est.init!r}; {LOAD_FIX}"
            )
        _verify_checksum(est, config.get("checksum"), cfg_path, config["format_version"])
        if not config["encoder"].get("fingerprint"):
            est._warn_no_encoder(str(folder))
        return est


_TOP_KEYS = {
    "library": str,
    "version": str,
    "format_version": int,
    "encoder": dict,
    "query_encoder": dict,
    "dim": int,
    "query_dim": int,
    "normalization": str,
    "identity": bool,
    "checksum": str,
    "hyperparameters": dict,
    "training": dict,
    "metrics": dict,
}
_TRAINING_KEYS = {
    "best_step": int,
    "n_steps": int,
    "val_ndcg@10": float,
    "zero_shot_val_ndcg@10": float,
    "n_train_queries": int,
    "n_val_queries": int,
    "fit_time_s": float,
    "train_query_ids": list,
    "val_query_ids": list,
    "val_metric": str,
    "history": list,
    "precision": str,
    "query_text_digests": list,
    "refit_all": bool,
}
_DIGEST = re.compile("[0-9a-f]{16}")  # a query text's digest (hex)
_OPTIONAL = {
    *("val_query_ids", "val_metric", "history", "normalization", "library", "version", "checksum"),
    "precision",  # files written before mixed precision trained in float32
    "query_text_digests",  # fits that knew their queries' texts (``search-adaptor fit``) only
    "train_query_ids",  # files written before it was recorded
    "refit_all",  # written only by refit_all's adapters
    *("query_encoder", "query_dim"),  # cross-model adapters only
}
#: hyperparameters that decide what the networks compute: a config must state them (the others,
#: training-only, take their defaults when absent, as in files written before they existed; a
#: missing ``init`` is the identity start those files had)
_SHAPE_KEYS = ("architecture", "hidden_dim", "residual", "mode")
#: From this format on, a config states every hyperparameter (what ``clone`` and ``refit_all`` train
#: with), so a missing one is an edit, not an older file. A hyperparameter added later must come
#: with a new format version, or files of this one would be refused for lacking it.
_ALL_PARAMS_FROM = 3


def _finite(value: numbers.Real) -> bool:
    """Whether ``value`` is a finite float or an integer a float can hold (JSON allows 10**400)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _fraction(value: float) -> bool:
    """Whether ``value`` is a metric's value: in [0, 1], up to the rounding of the sums that compute it
    (a perfect graded ranking's nDCG is 1.0000000000000002, as pytrec_eval's is)."""
    return -1e-9 <= value <= 1 + 1e-9


def _integer(value: Any) -> bool:
    """Whether ``value`` is an integer (a bool is not one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _typed(value: Any, kind: type) -> bool:
    if kind is int:
        return _integer(value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    return isinstance(value, kind)


def with_fix(exc: Exception, fix: str) -> Exception:
    """``exc``, a refusal of an adapter folder, ending with ``fix`` instead of :data:`LOAD_FIX` (an
    index mends its own copy by rebuilding; a newer library's file, by upgrading)."""
    return type(exc)(str(exc).replace(LOAD_FIX, fix))


def _newer_writer(config: Any) -> str | None:
    """The ``version`` of search-adaptor that wrote ``config`` when it is newer than this one (its
    fields and choices may be unknown here), else None."""
    if not isinstance(config, dict) or config.get("library") != "search-adaptor":
        return None
    version = config.get("version")
    release = re.match(r"\d+(\.\d+)*", version) if isinstance(version, str) else None
    if release is None:
        return None
    ours = re.match(r"\d+(\.\d+)*", __version__)
    newer = tuple(map(int, release[0].split("."))) > tuple(map(int, ours[0].split(".")))
    return version if newer else None


def _check_section(section: Mapping[str, Any], schema: Mapping[str, type], where: str) -> None:
    """Every key of ``schema`` present (unless optional) with its type, and no other key."""
    for key, kind in schema.items():
        if key not in section:
            if key in _OPTIONAL:
                continue
            raise ValueError(f"{where}: missing field {key!r}; {LOAD_FIX}")
        if not _typed(section[key], kind):
            raise ValueError(
                f"{where}: field {key!r} must be {'a finite number' if kind is float else kind.__name__}, "
                f"got {json.dumps(section[key])[:40]}; {LOAD_FIX}"
            )
    unknown = sorted(set(section) - set(schema))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; {LOAD_FIX}")


def _check_config(config: Any, path: Path) -> dict[str, Any]:
    """The config of an adapter folder, every field's type and bound checked (see :meth:`load`)."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}; {LOAD_FIX}")
    if "format_version" not in config:  # a model's config.json (Hugging Face, sentence-transformers)
        raise ValueError(
            f"{path.parent}: not a search-adaptor adapter folder (its {CONFIG} has no format_version); "
            "give the folder `search-adaptor fit` wrote (OUT/adapter) or one SearchAdaptor.save wrote"
        )
    version = config["format_version"]
    if not _typed(version, int) or version < 1:
        raise ValueError(
            f"{path}: field 'format_version' must be an integer >= 1, got {json.dumps(version)}; {LOAD_FIX}"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this library understands ({FORMAT_VERSION}); "
            "upgrade search-adaptor"
        )
    _check_section(config, _TOP_KEYS, str(path))
    if config.get("library", "search-adaptor") != "search-adaptor":
        raise ValueError(
            f"{path}: field 'library' must be \"search-adaptor\", got {json.dumps(config['library'])[:40]}; "
            f"{LOAD_FIX}"
        )
    if version >= 2 and "checksum" not in config:
        raise ValueError(f"{path}: missing field 'checksum'; {LOAD_FIX}")
    required = SearchAdaptor._param_names() if version >= _ALL_PARAMS_FROM else _SHAPE_KEYS
    missing = [k for k in required if k not in config["hyperparameters"]]
    if missing:
        raise ValueError(f"{path}: hyperparameters: missing field {missing[0]!r}; {LOAD_FIX}")
    if not 1 <= config["dim"] <= MAX_DIM:
        raise ValueError(f"{path}: field 'dim' must be in [1, {MAX_DIM}], got {config['dim']}; {LOAD_FIX}")
    training = config["training"]
    _check_section(training, _TRAINING_KEYS, f"{path}: training")
    counts = ("best_step", "n_steps", "n_train_queries", "n_val_queries")
    if any(training[k] < 0 for k in counts) or training["best_step"] > training["n_steps"]:
        raise ValueError(f"{path}: training: step or query counts out of range; {LOAD_FIX}")
    for key in ("val_ndcg@10", "zero_shot_val_ndcg@10"):
        if not _fraction(training[key]):
            raise ValueError(f"{path}: training: {key} must be in [0, 1], got {training[key]}; {LOAD_FIX}")
    if training["fit_time_s"] < 0:
        raise ValueError(
            f"{path}: training: fit_time_s must be >= 0, got {training['fit_time_s']}; {LOAD_FIX}"
        )
    if training.get("val_metric", VAL_METRICS[0]) not in VAL_METRICS:
        raise ValueError(
            f"{path}: training: val_metric must be one of {', '.join(VAL_METRICS)}, "
            f"got {json.dumps(training['val_metric'])[:40]}; {LOAD_FIX}"
        )
    for key in ("train_query_ids", "val_query_ids"):
        if not all(isinstance(q, str) for q in training.get(key, [])):
            raise ValueError(f"{path}: training: {key} must be a list of strings; {LOAD_FIX}")
    both = set(training.get("train_query_ids", [])) & set(training.get("val_query_ids", []))
    if both and not training.get("refit_all"):  # (a refit trains on its validation queries too)
        raise ValueError(
            f"{path}: training: query id {min(both)!r} is in both train_query_ids and val_query_ids; "
            f"{LOAD_FIX}"
        )
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in training.get("query_text_digests", [])):
        raise ValueError(
            f"{path}: training: query_text_digests must be a list of 16-character hex digests; {LOAD_FIX}"
        )
    if training.get("precision", "float32") not in TRAINED_PRECISIONS:
        raise ValueError(
            f"{path}: training: precision must be one of {', '.join(TRAINED_PRECISIONS)}, "
            f"got {json.dumps(training['precision'])[:40]}; {LOAD_FIX}"
        )
    history = training.get("history", [])
    if not all(isinstance(h, dict) and _typed(h.get("step"), int) for h in history):
        raise ValueError(f"{path}: training: history must be a list of {{step, ...}} objects; {LOAD_FIX}")
    for key in ("encoder", "query_encoder"):  # an empty encoder: saved from Python without one
        problem = info_problem(config[key]) if config.get(key) else None
        if problem:
            raise ValueError(f"{path}: {key}: {problem}; {LOAD_FIX}")
    problem = _test_problem(config["metrics"].get("test"))
    if problem:  # the metrics are not part of the checksum: an edit there breaks nothing else
        raise ValueError(f"{path}: metrics.{problem}; correct or delete metrics.test in it")
    return config


def _test_problem(test: Any) -> str | None:
    """What keeps ``metrics.test`` from being the table the model card prints, in words that name the
    field; None when nothing does, or when it is absent (None). The table is an object whose
    ``adapted`` and ``zero-shot`` entries, and any other object in it (another system), hold a finite
    number for each metric ``adapted`` has; its other entries (the protocol) are kept, not tabulated.
    :meth:`SearchAdaptor.save` and :meth:`SearchAdaptor.load` both ask this, so what one writes the
    other reads."""
    if test is None:
        return None
    if not isinstance(test, dict):
        return f"test must be an object {{system: {{metric: number}}}}, got {json.dumps(test)[:40]}"
    for system in ("adapted", "zero-shot"):
        if not isinstance(test.get(system), dict):
            return f"test.{system} must be an object {{metric: number}}, got {_shown(test, system)}"
    for system, scores in test.items():
        for metric in test["adapted"] if isinstance(scores, dict) else ():
            if not _typed(scores.get(metric), float):
                return f"test.{system}.{metric} must be a finite number, got {_shown(scores, metric)}"
            if is_metric(metric) and not _fraction(scores[metric]):  # (other names: the user's results)
                return f"test.{system}.{metric} must be in [0, 1], got {_shown(scores, metric)}"
    return None


def _shown(section: Mapping[str, Any], key: str) -> str:
    """``section[key]`` as JSON cut to 40 characters, or "nothing" when absent: for messages."""
    return json.dumps(section[key])[:40] if key in section else "nothing"


def _saved_metrics(extra: Any) -> dict[str, Any]:
    """``extra`` as ``config.json`` will hold it (numpy scalars as the numbers they are), refused in
    one line when JSON cannot hold it or :meth:`SearchAdaptor.load` would refuse it."""
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra: expected a dict of results, got {type(extra).__name__}")
    try:
        metrics = json.loads(json.dumps(dict(extra), default=_json_number))
    except (TypeError, ValueError) as exc:  # a value or key JSON has no form for, a loop
        raise TypeError(f"extra: {exc}; give dicts with string keys, lists, strings and numbers") from None
    problem = _test_problem(metrics.get("test"))
    if problem:
        raise ValueError(
            f"extra: {problem}; 'test' is the model card's table, with 'adapted' and 'zero-shot' among "
            "its systems: keep results of other shapes under another key"
        )
    problem = _not_json(extra, "extra")  # (no loop: dumps refused it)
    if problem:
        raise ValueError(problem)
    return metrics


def _not_json(value: Any, where: str) -> str | None:
    """What in ``value`` JSON would not hold as given, named by its path from ``where``: a NaN or
    infinity (``json.dumps`` writes ``NaN``, which no JSON reader takes) or a key that is not a
    string (written as one, it would come back another key)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {key!r} is {type(key).__name__}, not a string; JSON keys are strings"
            problem = _not_json(item, f"{where}.{key}")
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        return next((p for i, item in enumerate(value) if (p := _not_json(item, f"{where}[{i}]"))), None)
    elif isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return f"{where} is {float(value)}, which JSON cannot hold; store None for a missing number"
    return None


def _json_number(value: Any) -> Any:
    """A numpy scalar as the Python number (or bool, or string) it is, for ``json.dumps``."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a {type(value).__name__} has no JSON form")


def _checksum(est: SearchAdaptor, version: int = FORMAT_VERSION) -> str:
    """sha256 of what the adapter computes and what it accepts, as ``config.json`` records it.

    It covers the adapter's fingerprint (dimension, architecture, widths, skip connection, mode,
    identity flag and every weight), the fingerprint of the encoder it was trained on and, from
    ``format_version`` 3, the Matryoshka sizes it was trained at (an edit there made sizes it never
    trained look measured). It detects damage and edits that would change outputs or claims
    silently; it is not a signature (whoever can edit the files can recompute it).
    """
    encoder = (getattr(est, "encoder_", None) or {}).get("fingerprint")
    recorded = {"adapter": est.fingerprint_, "encoder": encoder}
    if version >= 3:
        recorded["dims"] = est._params["dims"]
    if getattr(est, "query_encoder_", None):  # a cross-model adapter's query model, too
        recorded["query_encoder"] = est.query_encoder_.get("fingerprint")
    blob = json.dumps(recorded, sort_keys=True)
    return f"sha256:{hashlib.sha256(blob.encode()).hexdigest()}"


def _verify_checksum(est: SearchAdaptor, recorded: str | None, path: Path, version: int) -> None:
    """Refuse an adapter whose recorded checksum differs; say once that an older one has none."""
    if recorded is None:
        if str(path.parent) not in _warned_no_checksum:
            _warned_no_checksum.add(str(path.parent))
            log.warning(
                "search-adaptor: warning: %s: saved without a checksum (format_version 1), so damage to "
                "its weights cannot be detected; re-save it (SearchAdaptor.load(path).save(path)) to add one",
                path.parent,
            )
        return
    if recorded != _checksum(est, version):
        raise ValueError(
            f"{path}: checksum does not match the adapter: {WEIGHTS} or {CONFIG} was changed or damaged "
            f"after saving (weights, settings, sizes or encoder); {LOAD_FIX}"
        )


def _load_weights(
    path: Path, params: Mapping[str, Any], dim: int, query_dim: int
) -> tuple[ResidualAdapter, ResidualAdapter | None]:
    """The networks the config's hyperparameters ``params`` describe, filled from ``path`` after
    checking names, shapes, dtypes and finiteness against the config (shapes are compared before
    anything is allocated)."""
    from safetensors import safe_open

    fix = f"the weights file is damaged; {LOAD_FIX}"
    both = f"{CONFIG} and {WEIGHTS} do not belong together; {LOAD_FIX}"
    mode = params["mode"]
    own = ("query", "corpus") if mode == "separate" else ("query",)  # networks with their own weights
    try:
        with torch.device("meta"):  # the expected names and shapes, without allocating the weights
            nets = _nets_for(params, dim, query_dim)
    except ValueError as exc:  # widths the networks cannot take (networks.build_nets): an edited query_dim
        raise ValueError(
            f"{path.with_name(CONFIG)}: field 'query_dim': {exc}; remove the field (queries as wide as the "
            "documents), or train the adapter again with `search-adaptor fit`"
        ) from None
    shapes = {
        f"{side}.{k}": tuple(v.shape)
        for side, net in zip(own, nets, strict=False)
        for k, v in net.state_dict().items()
    }
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = set(handle.keys())
            if names != set(shapes):
                odd = sorted(names - set(shapes)) or sorted(set(shapes) - names)
                what = "unknown tensor" if names - set(shapes) else "missing tensor"
                raise ValueError(
                    f"{path}: {what} {odd[0]!r} for {CONFIG}'s {mode} {params['architecture']}; {both}"
                )
            tensors = {}
            for name in sorted(names):
                piece = handle.get_slice(name)
                if tuple(piece.get_shape()) != shapes[name] or piece.get_dtype() != "F32":
                    raise ValueError(
                        f"{path}: tensor {name!r} is {piece.get_dtype()} {tuple(piece.get_shape())}, "
                        f"the config needs F32 {shapes[name]}; {both}"
                    )
                tensors[name] = handle.get_tensor(name)
    except ValueError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; {LOAD_FIX}") from None
    except Exception as exc:  # safetensors raises its own error types for truncated or garbage files
        detail = " ".join(str(exc).split())[:120]
        raise ValueError(f"{path}: not a readable safetensors file ({detail}); {fix}") from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: tensor {name!r} contains NaN or inf; {fix}")
    query_net, corpus_net = _allocated(*nets)  # every weight is set from the file below
    query_net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("query.")})
    if mode == "separate" and corpus_net is not None:
        corpus_net.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("corpus.")})
    for net in (query_net, corpus_net):
        if net is not None:
            net.eval()
    return query_net, corpus_net


def _nets_for(
    params: Mapping[str, Any], dim: int, query_dim: int | None = None
) -> tuple[ResidualAdapter, ResidualAdapter | None]:
    """Networks shaped as the hyperparameters ``params`` say: (query, corpus), the corpus one shared
    or absent."""
    projection = has_projection(params["init"], params["loss"])
    hidden, architecture, residual, mode = (
        params[k] for k in ("hidden_dim", "architecture", "residual", "mode")
    )
    return build_nets(dim, hidden, architecture, residual, mode, None, projection, query_dim)


def _unset_nets(
    params: Mapping[str, Any], dim: int, query_dim: int | None = None
) -> tuple[ResidualAdapter, ResidualAdapter | None]:
    """:func:`_nets_for`'s networks with their weights allocated but not set, for a caller that sets
    every one (``load_state_dict``): torch's default initialisation would draw them from its global RNG,
    so loading an adapter (or taking its start) moved the stream of a caller who had seeded torch, for
    weights overwritten at once."""
    with torch.device("meta"):
        nets = _nets_for(params, dim, query_dim)
    return _allocated(*nets)


def _allocated(
    query_net: ResidualAdapter, corpus_net: ResidualAdapter | None
) -> tuple[ResidualAdapter, ResidualAdapter | None]:
    """Networks built on the meta device given CPU memory, uninitialised (``to_empty``): nothing is
    drawn from an RNG; the caller sets every weight. A shared network is one module, allocated once."""
    query_net.to_empty(device="cpu")
    if corpus_net is not None and corpus_net is not query_net:
        corpus_net.to_empty(device="cpu")
    return query_net, corpus_net


def _rows_array(x: object, what: str) -> np.ndarray:
    """``x`` as a 2-D numpy array of numbers (one row per text), or the one-line error saying so."""
    arr = numeric_array(x, what, "a 2-D array")
    if arr.ndim != 2:
        fix = {0: "give an array of shape (n_texts, dim)", 1: "pass one vector as x.reshape(1, -1)"}
        raise ValueError(
            f"{what}: expected a 2-D array (one row per text), got shape {arr.shape}; "
            + fix.get(arr.ndim, "for rows of the last axis, pass x.reshape(-1, x.shape[-1])")
        )
    return arr


def float32_rows(arr: object, what: str) -> np.ndarray:
    """The rows of the 2-D array of numbers ``arr`` as the C-contiguous float32 array that
    :func:`~search_adaptor.networks.adapt_rows` takes: what ``transform_*`` adapt, and whoever adapts
    rows through :meth:`SearchAdaptor.numpy_side` should. Anything else (a list of lists is read as
    an array) is refused as ``transform_*`` refuse it, starting with ``what``; the width is the
    caller's to check (:meth:`SearchAdaptor.check_width`).

    Laid out row by row: a Fortran-ordered array (a pandas DataFrame's, a column slice's) rounded
    each row's sums in another order, so a row's adapted vector depended on the array it came in.
    Values are cast, except in a row whose largest value is no normal float32 number (float64's
    1e-50 or 1e300): the cast would make it zeros (adapted to zeros without a word), blur it by more
    than a rounding, or make it inf (refused), so it becomes its unit vector by
    :func:`~search_adaptor.embed.unit_rows`, the rule ``fit`` reads every row by (each row scaled by
    its largest value first). The cast keeps any other row's direction to within a float32
    rounding, and a row of float32 numbers given as float64 (a list of them reads so) adapts bit for
    bit as those do. Rows without a direction (all zeros) or with NaN or inf are left to
    ``adapt_rows``, which keeps the first at zero and refuses the second, naming it.
    """
    arr = _rows_array(arr, what)
    if arr.dtype == np.float32:
        return np.ascontiguousarray(arr)
    largest = np.abs(arr).max(axis=1, initial=0)  # 0 for a row of no values: cast, not reduced
    normal = (largest >= _FLOAT32.tiny) & (largest <= _FLOAT32.max)
    lost = np.isfinite(arr).all(axis=1) & (largest > 0) & ~normal
    with np.errstate(over="ignore"):  # overflows only in `lost` rows, replaced, or in rows adapt_rows refuses
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if lost.any():
        out[lost] = unit_rows(np.ascontiguousarray(arr[lost]), what)
    return out


def as_adapter(adapter: SearchAdaptor | str | os.PathLike) -> SearchAdaptor:
    """A fitted adapter, or the one saved in the folder ``adapter``."""
    return adapter if isinstance(adapter, SearchAdaptor) else SearchAdaptor.load(adapter)


class AdaptedEncoder(Encoder):
    """``encoder`` followed by a trained adapter: queries and documents come out adapted, unit-norm.

    Parameters
    ----------
    encoder : Encoder
        The base model the adapter was trained on (its fingerprint is checked).
    adapter : SearchAdaptor or path
        A fitted adapter or the folder :meth:`SearchAdaptor.save` wrote.
    cache : path or bool
        Where :meth:`encode_corpus` keeps the *base* document embeddings: ``True`` (default) is the
        store every command uses (``$SEARCH_ADAPTOR_CACHE`` or the user cache dir), a path another
        store, ``False`` none. A document the store holds, embedded by this object, the command line
        or an index build, is never sent to ``encoder`` again.
    query_encoder : Encoder, optional
        For a cross-model adapter, the model its queries come from (checked like ``encoder``);
        by default the one the adapter records, recreated from its record.
    dim : int, optional
        Give only the first ``dim`` adapted coordinates, unit length again (a Matryoshka prefix,
        as ``index --dim``): smaller vectors for a vector store. A size the adapter was not
        trained at (see ``fit --dims``) is logged as a warning, once per adapter and size.

    Attributes
    ----------
    stats : StoreStats
        What the store did over this object's :meth:`encode_corpus` calls: ``encoded`` documents
        were sent to ``encoder``, ``cached`` ones read back instead (all zeros with ``cache=False``).
    size : int or None
        ``dim``: the Matryoshka prefix given out, or None for the full width.

    Notes
    -----
    Queries go through ``adapter.transform_queries`` and documents through
    ``adapter.transform_corpus`` (only normalised in ``query_only`` mode). Queries are sent to
    ``encoder`` every time and never written to the store: at search time they are unbounded,
    often private, each is usually asked once, and a server's disk may be read-only (labelled
    queries of a dataset are stored by ``fit`` and ``embed``). The store holds base vectors, so one
    store serves every adapter of a model; the fingerprint combines the base encoder's with the
    adapter's, so a store of this encoder's own outputs keeps adapted vectors apart from base
    ones. Calls from several threads are safe; an encoder that runs one batch at a time (a local
    model, whose tokenizer is not thread-safe) gets them one after another.
    """

    provider = "adapted"

    def __init__(
        self,
        encoder: Encoder,
        adapter: SearchAdaptor | str | os.PathLike,
        cache: str | os.PathLike | bool = True,
        query_encoder: Encoder | None = None,
        dim: int | None = None,
    ) -> None:
        self.base = encoder
        self.adapter = as_adapter(adapter)
        self.adapter.check_encoder(encoder)
        self.adapter.check_size(dim)
        self._note_size(dim)
        self.size = dim
        if query_encoder is None and self.adapter.query_encoder_:  # a cross-model adapter's query model
            query_encoder = from_info(self.adapter.query_encoder_)
        self.query_base = query_encoder or encoder
        self.adapter.check_encoder(self.query_base, kind="query")
        self.cache = cache
        self.model = encoder.model
        self.batch_size = encoder.batch_size
        self.max_concurrency = encoder.max_concurrency
        self.stats = StoreStats()
        self._store: EmbeddingStore | None = None
        self._new_locks()

    def _note_size(self, dim: int | None) -> None:
        """Warn, once per adapter and size, that a prefix of this size was never measured (a user
        shipping ``dim=64`` of a full-width adapter is otherwise told nothing, as ``index --dim`` is)."""
        note = self.adapter.untrained_size(dim)
        key = (self.adapter.fingerprint_, dim)
        if note and key not in _warned_size:
            _warned_size.add(key)
            log.warning("search-adaptor: warning: dim=%s", note)

    def _new_locks(self) -> None:
        self._lock = threading.Lock()  # opening the store, adding to stats
        self._serial = threading.Lock() if self.base.max_concurrency == 1 else contextlib.nullcontext()

    def __getstate__(self) -> dict[str, Any]:
        """What a pickled copy keeps (multiprocessing, Ray and the frameworks' worker pools copy an
        encoder so): all but the open store and the locks, which the copy makes anew; its store
        reopens on first use."""
        return {**self.__dict__, "_store": None, "_lock": None, "_serial": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_locks()

    def config(self) -> dict[str, Any]:
        config = {"provider": self.provider, "base": self.base.config(), "adapter": self.adapter.fingerprint_}
        if self.query_base is not self.base:
            config["query_base"] = self.query_base.config()
        if self.size is not None:
            config["dim"] = self.size
        return config

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        """One batch, never through the store (a store wrapping this encoder caches adapted vectors)."""
        base = self.query_base if kind == "query" else self.base
        return self._adapt(check_vectors(base.encode_batch(texts, kind), base.model, len(texts)), texts, kind)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Adapted query vectors, shape (len(texts), dim), from the query encoder (never stored)."""
        self._check(texts, "AdaptedEncoder.encode_queries()")
        with self._serial:
            return self._adapt(self.query_base.encode_queries(texts), texts, "query")

    def encode_corpus(self, texts: Sequence[str]) -> np.ndarray:
        """Adapted document vectors, shape (len(texts), dim); only documents the store lacks are sent."""
        self._check(texts, "AdaptedEncoder.encode_corpus()")
        if self.cache is False:
            with self._serial:
                return self._adapt(self.base.encode_corpus(texts), texts, "document")
        store, done = self._open_store(), StoreStats()
        with self._serial:
            vectors = store.embed(list(texts), "document", stats=done)
        with self._lock:
            self.stats.add(done)
        return self._adapt(vectors, texts, "document")

    def _adapt(self, vectors: np.ndarray, texts: Sequence[str], kind: Kind) -> np.ndarray:
        """The adapter's side of ``kind`` applied to the base vectors of ``texts``.

        Raises
        ------
        InputsRejected
            A text the model gives a zero vector (a static model, none of its words known), with the
            others' vectors: it would score 0 against everything (LangChain's in-memory store
            fails such a query with "NaN values found").
        """
        transform = self.adapter.transform_queries if kind == "query" else self.adapter.transform_corpus
        out = transform(vectors, dim=self.size)
        zero = without_direction(vectors)
        if zero:
            out[list(zero)] = np.nan
            provider = (self.query_base if kind == "query" else self.base).provider
            raise InputsRejected.of(provider, texts, out, zero)
        return out

    @staticmethod
    def _check(texts: Sequence[str], call: str) -> None:
        """Refuse a bare string (it would be read letter by letter: :func:`refuse_bare_text`, which
        names ``call``) and an empty list, before anything is sent."""
        refuse_bare_text(texts, call)
        if not texts:
            raise ValueError("nothing to embed: the list of texts is empty")

    def _open_store(self) -> EmbeddingStore:
        """The base encoder's store, opened on first use and kept open (one SQLite connection)."""
        with self._lock:
            if self._store is None:
                self._store = EmbeddingStore(self.base, None if self.cache is True else self.cache)
            return self._store

    def close(self) -> None:
        """Close the store's connection (it reopens on the next call)."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _validated_on(training: Mapping[str, Any]) -> str:
    """What the card's validation score was measured on: labelled queries, or without labels the
    texts held out of training, whose top-10 documents under the base embedding it is to keep."""
    n = training["n_val_queries"]
    if training.get("val_metric", "ndcg@10") == "ndcg@10":
        return f"{n} validation queries (held out of its training)"
    if n:
        return f"{n} query texts held out of its training (no labels)"
    return "corpus texts held out of its training (no query texts were given; no labels)"


def _model_card(config: Mapping[str, Any], adapter: SearchAdaptor) -> str:
    """Short README for the saved folder: what it adapts, how it was chosen, how it scored (and, when
    it kept its start, what that start is: ``adapter`` says)."""
    enc = config.get("encoder") or {}
    hp = config["hyperparameters"]
    tr = config["training"]
    metric = val_metric_name(tr.get("val_metric", "ndcg@10"))
    lines = [
        "# Search-Adaptor adapter",
        "",
        f"Base encoder: `{enc.get('model', 'unknown')}` (fingerprint `{enc.get('fingerprint', 'unknown')}`), "
        f"{config['dim']}-d embeddings.",
    ]
    if config.get("query_encoder"):
        qenc = config["query_encoder"]
        lines.append(
            f"Query encoder: `{qenc.get('model', 'unknown')}` "
            f"(fingerprint `{qenc.get('fingerprint', 'unknown')}`), {config.get('query_dim')}-d: "
            "queries of that model, documents of the base encoder."
        )
    lines += [
        f"Variant: {hp['architecture']} adapter, mode `{hp['mode']}`, loss `{hp['loss']}`, "
        f"alpha={hp['alpha']}, beta={hp['beta']}, negatives `{hp['negatives']}`.",
        f"Validation {metric}: {tr['val_ndcg@10']:.4f} "
        f"({'zero-shot' if adapter.start_ is None else 'its start'} {tr['zero_shot_val_ndcg@10']:.4f}) "
        f"on {_validated_on(tr)}; best step {tr['best_step']} of {tr['n_steps']}.",
    ]
    if adapter.refit_all_:
        lines.append(
            f"These weights were then trained again on all {tr['n_train_queries']} training queries, the "
            f"validation ones too (never the test queries), for {tr['best_step']} steps (`refit_all`): "
            "the scores above are the validated fit's, not theirs."
        )
    if hp.get("dims"):
        sizes = ", ".join(str(m) for m in hp["dims"])
        lines.append(
            f"Matryoshka: the first {sizes} coordinates of its output are trained as embeddings too "
            "(`index --dim`, `transform --dim`, `export --dim`)."
        )
    if adapter.is_identity_:
        lines.append("No trained checkpoint beat zero-shot on validation: this adapter is the identity.")
    elif adapter.kept_start_:
        lines.append(
            f"No trained checkpoint beat its start on validation: this adapter is its start, "
            f"{adapter.start_}, not the identity."
        )
    test = config["metrics"].get("test")  # a table, as _test_problem checks; its non-systems untabulated
    if test is not None:
        systems = {k: v for k, v in test.items() if isinstance(v, dict)}
        lines += ["", "Test metrics:", "", *metrics_table(systems, list(test["adapted"]))]
    lines += [
        "",
        "```python",
        "from search_adaptor import SearchAdaptor",
        "adapter = SearchAdaptor.load('PATH')",
        "q = adapter.transform_queries(query_embeddings)      # "
        + ("of the query encoder above" if config.get("query_encoder") else "same base encoder as above"),
        "d = adapter.transform_corpus(corpus_embeddings)      # re-index unless mode is query_only",
        "```",
        "",
    ]
    return "\n".join(lines)
