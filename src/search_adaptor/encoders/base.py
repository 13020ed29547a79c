"""The one small interface every embedding provider implements.

An encoder turns a batch of texts into a float32 matrix. Everything else (caching, batching across a
whole corpus, progress, resumption) lives in :mod:`search_adaptor.store`, so a provider only has to
speak its own wire format. An item of a batch may also be an image
(:class:`~search_adaptor.images.ImageRef`, a corpus row with ``"image"``): encoders whose model embeds
images say so with :attr:`Encoder.accepts_images`; every other one refuses it in one line
(:meth:`Encoder.check_items`). An encoder whose recorded config changed between versions of this
library (a new rule for cutting texts) names its earlier forms (:meth:`Encoder.earlier_versions`), so
that the store still serves the vectors paid for under them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from search_adaptor.encoders import IMAGE_MODELS, IMAGE_URL_PROVIDERS
from search_adaptor.images import Item, check_item_types

Kind = Literal["query", "document"]
KINDS: tuple[Kind, ...] = ("query", "document")


def refuse_bare_text(texts: object, call: str) -> None:
    """Refuse a bare ``str`` or ``bytes`` given where a sequence of texts belongs, naming ``call``
    (e.g. ``"EmbeddingStore.embed()"``).

    Why: a string is itself a sequence, so it would be read letter by letter: one vector per
    character, each sent to the encoder (paid for, with an API) and kept in the store. The one rule
    for every public entry point that takes texts, so that they refuse it alike.

    Raises
    ------
    TypeError
        ``texts`` is a ``str``, ``bytes`` or ``bytearray``; the message shows it wrapped in a list.
    """
    if isinstance(texts, (str, bytes, bytearray)):
        fix = (
            "wrap a single text in a list"
            if isinstance(texts, str)
            else "decode it to str and wrap it in a list"
        )
        raise TypeError(
            f"{call} takes a list of texts, not a bare {type(texts).__name__} (it would be read letter by "
            f"letter); {fix}: {[texts]!r:.80}"
        )


def check_kind(kind: object) -> Kind:
    """``kind`` when it is one of :data:`KINDS`, refused in one line otherwise (a typo, ``"qeury"``).

    Why: queries and documents are embedded and stored apart, so an unknown kind would be sent to the
    encoder (embedded as whatever its provider makes of it) and kept under a key nothing reads again.

    Raises
    ------
    ValueError
        Naming the allowed kinds.
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r:.60}")
    return kind


#: Why a text whose embedding is all zeros is refused (a static model gives one to a text none of whose
#: tokens it knows): a zero vector has no direction, so it ranks documents by nothing.
NO_DIRECTION = "the model gives it a zero vector (it knows none of its tokens), which ranks by nothing"


def without_direction(vectors: np.ndarray) -> dict[int, str]:
    """``{row: NO_DIRECTION}`` for each all-zero row of ``vectors`` (a NaN row is not one), the form
    :class:`InputsRejected` takes."""
    return dict.fromkeys(np.flatnonzero(~np.asarray(vectors).any(axis=1)).tolist(), NO_DIRECTION)


def describe_item(item: Item) -> str:
    """How an error names one text (its length and start) or image, so that it can be found."""
    if isinstance(item, str):
        return f"{len(item):,} characters, starting {' '.join(item[:40].split())!r}"
    return f"the image {item}"


def image_models(urls: bool = False) -> str:
    """The providers whose models embed images, each with that model (``urls``: those that fetch image
    URLs), for the messages that send a user to them."""
    return ", ".join(f"{p} ({IMAGE_MODELS[p]})" for p in (IMAGE_URL_PROVIDERS if urls else IMAGE_MODELS))


#: The event that stops the requests of the current thread's block of :func:`cancelled_by`, if any,
#: and whether it stops retries only (a request's first try still goes out).
_CANCEL: ContextVar[tuple[threading.Event, bool] | None] = ContextVar("search_adaptor_cancel", default=None)


@contextmanager
def cancelled_by(event: threading.Event, retries_only: bool = False) -> Iterator[None]:
    """Within this block (in this thread), stop sending requests and retrying once ``event`` is set;
    with ``retries_only``, stop retrying only: a request not tried yet still goes out once (a server
    shutting down answers what it accepted, but does not wait out a provider's back-off for it).

    Why a context variable: the store runs any :class:`~search_adaptor.encoders.base.Encoder`, so
    it cannot pass an event through ``encode_batch``; each of its worker threads opens this block
    around its batch instead, and every request of that batch (several when it is split) sees it.
    """
    token = _CANCEL.set((event, retries_only))
    try:
        yield
    finally:
        _CANCEL.reset(token)


def cancel_event() -> tuple[threading.Event, bool] | None:
    """The event of the :func:`cancelled_by` block this code runs in, and whether it stops retries
    only (None outside one): an encoder that sends requests checks it before each one and each retry."""
    return _CANCEL.get()


class EncoderError(RuntimeError):
    """A provider refused or failed a request in a way retrying will not fix (bad key, bad model...)."""


class ImagesUnsupported(EncoderError):
    """An image was given to an encoder whose model embeds text only (or an image URL to a provider
    that takes image data only); the message names the item and the encoders that can, ``item`` is
    it (so that a caller that knows where it came from, a corpus row, can say so)."""

    def __init__(self, message: str, item: object = None) -> None:
        super().__init__(message)
        self.item = item


class InputsRejected(EncoderError):
    """Some texts of a batch cannot be embedded (e.g. too long for every limit); the others were.

    The message names the first rejected text (its position, length and start) and the reason the
    provider gave. A caller that keeps what was done (a store) saves the rows of ``vectors`` that
    are not in ``rejected`` and reports the rest.

    Attributes
    ----------
    vectors : ndarray of shape (n_texts, dim), float32
        The batch's embeddings, NaN in the rows of rejected texts.
    rejected : dict of int to str
        Row of each rejected text -> the provider's reason.
    """

    def __init__(self, message: str, vectors: np.ndarray, rejected: dict[int, str]) -> None:
        super().__init__(message)
        self.vectors = vectors
        self.rejected = rejected

    @classmethod
    def of(
        cls, source: str, texts: Sequence[Item], vectors: np.ndarray, rejected: dict[int, str]
    ) -> InputsRejected:
        """The one-line error for ``rejected`` rows of a batch of ``texts`` (texts or images)."""
        first = min(rejected)
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        noun = "text" if all(isinstance(t, str) for t in texts) else "input"  # images among them
        return cls(
            f"{source}: {len(rejected)} of {len(texts)} {noun}s cannot be embedded, the other "
            f"{len(texts) - len(rejected)} were; {noun} {first}{more} ({describe_item(texts[first])}): "
            f"{rejected[first]}",
            vectors,
            rejected,
        )


class BatchCutShort(EncoderError):
    """A batch sent in several requests (texts and images apart, or a long batch split) failed in one
    of them after others were answered: those replies are paid for, and a store keeps them before
    ``cause`` (the failure, or a cancellation on Ctrl-C) is raised.

    Attributes
    ----------
    vectors : ndarray of shape (n_texts, dim), float32
        The rows that were embedded; NaN in the others.
    cause : BaseException
        What stopped the batch.
    """

    def __init__(self, vectors: np.ndarray, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.vectors = vectors
        self.cause = cause


class Encoder(ABC):
    """Frozen embedding model seen only through its outputs.

    Subclasses set ``model`` and implement :meth:`encode_batch` and :meth:`config`. ``batch_size``
    is how many texts go into one call; ``max_concurrency`` how many calls may be in flight at once
    (API providers use more than one; a local model uses one).
    """

    provider: str = "base"
    model: str = ""
    batch_size: int = 64
    max_concurrency: int = 1
    #: whether :meth:`encode_batch` takes images (:class:`~search_adaptor.images.ImageRef`) as well
    accepts_images: bool = False
    #: whether it takes image URLs too (the provider fetches them)
    accepts_image_urls: bool = False

    @abstractmethod
    def encode_batch(self, texts: Sequence[Item], kind: Kind) -> np.ndarray:
        """Embed one batch of texts (or images, where :attr:`accepts_images`) as queries or documents.

        Returns
        -------
        ndarray of shape (len(texts), dim), float32
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the vectors (provider, model, dimensions, prompts, ...).

        Secrets (API keys) never belong here: this dict is hashed into the cache key and written
        into saved adapters and reports.
        """

    @property
    def fingerprint(self) -> str:
        """Stable id of the embedding space: same fingerprint, same vectors for the same text."""
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return f"{self.provider}:{self.model}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def info(self) -> dict[str, Any]:
        """What adapters, indexes and reports record about this embedding space (never a key).

        ``{"fingerprint", "provider", "model", "config"}``;
        :func:`~search_adaptor.encoders.registry.from_info` recreates the encoder from it.
        """
        return {
            "fingerprint": self.fingerprint,
            "provider": self.provider,
            "model": self.model,
            "config": self.config(),
        }

    def worker_options(self) -> dict[str, Any]:
        """What :func:`~search_adaptor.encoders.registry.from_info` needs besides :meth:`info` to make
        this encoder again in another process (``index --engine ray``'s workers)."""
        return {"batch_size": self.batch_size, "max_concurrency": self.max_concurrency}

    def batch_keys(self, texts: Sequence[str], kind: Kind) -> list[Hashable]:
        """One key per text: texts with equal keys may share a batch, each embedding as it does alone
        up to the model's rounding.

        A caller that merges texts of independent requests into one call (the server's micro-batches)
        groups them by key, so that an answer depends on what else was in its batch at most in its
        last float32 bits (a local model's kernels round by batch shape). By default a text's vector
        does not depend on its batch: every text gets the same key.
        """
        return [None] * len(texts)

    def request_tokens(self, texts: Sequence[Item], kind: Kind) -> int | None:
        """Estimated tokens a paid API would bill for ``texts``; None for encoders that run locally."""
        return None

    def request_count(self, texts: Sequence[Item], kind: Kind) -> int | None:
        """HTTP requests embedding ``texts`` would take (what rate limits count); None for encoders
        that run locally."""
        return None

    def refusals(self, items: Sequence[Item]) -> dict[int, str]:
        """The items, by position, that a run would not send, refusing them after embedding the others
        (an image file whose format or size the provider does not take, or that cannot be read), each
        with the reason: what a dry run counts apart. None by default."""
        return {}

    def earlier_versions(self) -> list[EarlierVersion]:
        """This encoder as earlier versions of this library recorded it, under other fingerprints,
        whose stored vectors it may take (:class:`EarlierVersion`); none by default.

        Why: a fingerprint names its store's file, so a version that records another config (a new
        rule for cutting texts) would otherwise find none of the vectors paid for before it.
        """
        return []

    def check_items(self, items: Iterable[Item]) -> None:
        """Refuse, in one line, the first item this encoder cannot embed: an image for a model that
        embeds text only, or an image URL for a provider that takes image data only.

        Raises
        ------
        TypeError
            An item that is neither a text nor an image (None, a number), naming it.
        ValueError
            A text that is not valid Unicode (a lone surrogate), naming it.
        ImagesUnsupported
            Naming the item, the providers that can embed it, and the precomputed-vectors way out.
        """
        items = list(items)
        check_item_types(items)
        for item in items:
            if self.takes(item):
                continue
            if not self.accepts_images:
                raise ImagesUnsupported(
                    f"{self.provider}: {self.model} embeds text only, and {item} is an image; "
                    f"embed image corpora with {image_models()}, or give one model's precomputed vectors of "
                    "queries and documents (--embeddings)",
                    item,
                )
            raise ImagesUnsupported(
                f"{self.provider}: {self.model} takes images as data, not URLs, and {item} is a URL; "
                "save the images in the dataset folder and name them by relative path, "
                f"or use {image_models(urls=True)}, which fetches URLs",
                item,
            )

    def takes(self, item: Item) -> bool:
        """Whether this encoder embeds ``item`` (a text, or an image its model and provider take):
        what :meth:`check_items` refuses, asked without raising (a cross-model run pairs only the
        documents its query model takes)."""
        if isinstance(item, str):
            return True
        return self.accepts_images and (not item.is_url or self.accepts_image_urls)

    def encode_queries(self, texts: Sequence[Item]) -> np.ndarray:
        """Embed queries without any cache (use :class:`~search_adaptor.store.EmbeddingStore` for that).

        A bare string is a TypeError (:func:`refuse_bare_text`), before anything is sent.
        """
        refuse_bare_text(texts, "encode_queries()")
        return self._encode_all(texts, "query")

    def encode_corpus(self, texts: Sequence[Item]) -> np.ndarray:
        """Embed documents without any cache; a bare string is a TypeError, as for :meth:`encode_queries`."""
        refuse_bare_text(texts, "encode_corpus()")
        return self._encode_all(texts, "document")

    def _encode_all(self, texts: Sequence[Item], kind: Kind) -> np.ndarray:
        """Every batch in turn; texts rejected by the provider fail at the end, after all the others.

        Raises
        ------
        InputsRejected
            Naming the first rejected text, with the vectors of all the others.
        """
        if not texts:
            raise ValueError("nothing to embed: the list of texts is empty")
        parts, rejected = [], {}
        for start in range(0, len(texts), self.batch_size):
            try:
                parts.append(
                    check_vectors(self.encode_batch(texts[start : start + self.batch_size], kind), self.model)
                )
            except InputsRejected as exc:
                parts.append(exc.vectors)
                rejected.update({start + i: reason for i, reason in exc.rejected.items()})
        width = max(p.shape[1] for p in parts)
        out = np.concatenate(
            [p if p.shape[1] == width else np.full((len(p), width), np.nan, np.float32) for p in parts]
        )
        if rejected:
            raise InputsRejected.of(self.provider, texts, out, rejected)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


@dataclass(frozen=True)
class EarlierVersion:
    """An encoder as an earlier version of this library recorded it: the same model and settings, but
    another rule for what it sends (texts cut otherwise), hence another fingerprint and store file.

    A text that version sent exactly as the current encoder sends it has the same vector, so a store
    takes that version's stored vector instead of paying for the text again
    (:meth:`~search_adaptor.store.EmbeddingStore.embed`); any other text is embedded anew.

    Attributes
    ----------
    encoder : Encoder
        The encoder as that version made it: its fingerprint and config are that version's (they name
        and validate its store). Only its store is read; nothing is sent through it.
    sends_alike : callable (texts, kind) -> list of bool
        Per text, whether that version sent it for ``kind`` exactly as the current encoder does.
    """

    encoder: Encoder
    sends_alike: Callable[[Sequence[str], Kind], list[bool]]


class FolderEncoder(Encoder):
    """A model held in a folder on this machine (a model2vec model, an ONNX export).

    Its fingerprint is the folder's name (a label people read) and its content, a hash of the files
    that make the vectors and of the settings in its config file less those that only say where it
    came from, never the path to it: two different models never share store entries, and a folder
    moved elsewhere keeps its cached vectors (a renamed copy is another label, so embeds again). The
    path recorded is absolute, so adapters and indexes find the model from any working folder.
    Subclasses name the files; ``__init__`` checks that they are there, naming the fix.
    """

    weight_files: ClassVar[tuple[str, ...]]
    config_file: ClassVar[str]
    #: config keys that name where a model was made, not what it computes
    provenance: ClassVar[frozenset[str]] = frozenset()
    #: how to make such a folder, for the error when one is not
    how_to_make: ClassVar[str]

    def __init__(self, model: str | Path, batch_size: int) -> None:
        folder = Path(model).expanduser()
        if not folder.exists():  # (a recorded model, moved or deleted since: from_info says so)
            raise EncoderError(f"{self.provider}: {model}: no such folder; {self.how_to_make}")
        missing = [n for n in (*self.weight_files, self.config_file) if not (folder / n).is_file()]
        if missing:
            raise EncoderError(
                f"{self.provider}: {model} is not a {self.provider} folder (no {', '.join(missing)}); "
                f"{self.how_to_make}"
            )
        self.model = str(folder.absolute())  # recorded: adapters and indexes load it from any folder
        self.batch_size = batch_size
        self._folder = folder
        self.weights = self._content_hash()

    def _content_hash(self) -> str:
        """sha256 of the weight files and of the config (less :attr:`provenance`)."""
        digest = hashlib.sha256()
        for name in self.weight_files:
            digest.update(f"{name}\x00".encode())
            with open(self._folder / name, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        digest.update(json.dumps(self.settings(), sort_keys=True, separators=(",", ":")).encode())
        return digest.hexdigest()

    def settings(self) -> dict[str, Any]:
        """The folder's config file, less where the model came from."""
        path = self._folder / self.config_file
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EncoderError(f"{self.provider}: {path}: not readable JSON ({exc}); make it again") from exc
        if not isinstance(config, dict):
            raise EncoderError(f"{self.provider}: {path}: expected a JSON object; make the folder again")
        return {k: v for k, v in config.items() if k not in self.provenance}

    @property
    def remake(self) -> str:
        """The fix a damaged folder's refusal ends with."""
        return f"make the folder again ({self.how_to_make})"

    def read_tokenizer(self, name: str = "tokenizer.json") -> Any:
        """The folder's tokenizer (a ``tokenizers.Tokenizer``), or one line naming the file and the fix
        when it cannot be read: the tokenizers library raises a bare ``Exception`` naming no file.

        Raises
        ------
        EncoderError
            ``name`` is not a tokenizer the library reads (damaged, or another format).
        """
        from tokenizers import Tokenizer

        path = self._folder / name
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception
            raise EncoderError(
                f"{self.provider}: {path}: not a readable tokenizer ({exc}); {self.remake}"
            ) from exc

    def config(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "weights_sha256": self.weights,
            "normalize": True,
        }

    @property
    def fingerprint(self) -> str:
        """Same vectors, same fingerprint: the content hash and settings, not the folder's path."""
        blob = json.dumps({k: v for k, v in self.config().items() if k != "model"}, sort_keys=True)
        return f"{self.provider}:{self._folder.name}:{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def check_vectors(vectors: Any, source: str, expected_rows: int | None = None) -> np.ndarray:
    """Return ``vectors`` as a 2-D float32 array, refusing NaN/inf and wrong row counts in one line."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2:
        raise EncoderError(f"{source}: expected a 2-D array of embeddings, got shape {arr.shape}")
    if expected_rows is not None and arr.shape[0] != expected_rows:
        raise EncoderError(f"{source}: asked for {expected_rows} embeddings, got {arr.shape[0]}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise EncoderError(
            f"{source}: {int(bad.sum())} embedding(s) contain NaN or inf "
            f"(first at row {int(np.argmax(bad))}); check the model or the input texts"
        )
    return arr
