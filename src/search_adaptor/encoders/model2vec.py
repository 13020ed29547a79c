"""Static token-embedding models (model2vec): a query costs a tokenizer call and a table lookup.

A model2vec folder (``config.json``, ``model.safetensors``, ``tokenizer.json``; made by
:func:`search_adaptor.distill.distill` or downloaded) holds one vector per token; a text's
embedding is the mean of its tokens' vectors, normalised. No transformer runs at query time, so a
query takes microseconds on a CPU: the cheap side of a cross-model adapter, whose documents are
embedded once by a strong model.

Its fingerprint is its content: a hash of the vectors, the tokenizer and the settings that change
the output, never its path, so two different distillations never share store entries and a folder
moved elsewhere keeps its cached vectors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.encoders.base import Encoder, EncoderError, Kind

#: The files whose bytes make the vectors (the content hash covers them, and the config).
_WEIGHT_FILES = ("model.safetensors", "tokenizer.json")
#: Config keys that name where a model was made, not what it computes.
_PROVENANCE = frozenset({"tokenizer_name"})
_CHUNK = 1 << 20


def content_hash(folder: Path) -> str:
    """sha256 of a model2vec folder's vectors, tokenizer and config (less where it came from)."""
    digest = hashlib.sha256()
    for name in _WEIGHT_FILES:
        digest.update(f"{name}\x00".encode())
        with open(folder / name, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kept = {k: v for k, v in config.items() if k not in _PROVENANCE}
    digest.update(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


class Model2VecEncoder(Encoder):
    """A model2vec static model on this machine (texts only).

    Parameters
    ----------
    model : str
        The model folder (``search-adaptor distill --out DIR`` makes one).
    batch_size : int
        Texts per :meth:`encode_batch` call (model2vec encodes about a hundred thousand a second on
        one core; a batch is one commit of the store).

    Raises
    ------
    EncoderError
        ``model`` is not a model2vec folder; the message says how to make one.
    """

    provider = "model2vec"

    def __init__(self, model: str, batch_size: int = 1024) -> None:
        folder = Path(model).expanduser()
        missing = [n for n in (*_WEIGHT_FILES, "config.json") if not (folder / n).is_file()]
        if missing:
            raise EncoderError(
                f"model2vec: {model} is not a model2vec folder (no {', '.join(missing)}); make one with "
                "`search-adaptor distill --out DIR`, or give the folder of a downloaded model2vec model"
            )
        self.model = str(model)
        self.batch_size = batch_size
        self.weights = content_hash(folder)
        self._folder = folder
        self._static: Any = None

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

    def _load(self) -> Any:
        if self._static is None:
            try:
                from model2vec import StaticModel
            except ImportError as exc:
                raise EncoderError(
                    "model2vec: the model2vec package is not installed; "
                    "pip install 'search-adaptor[model2vec]'"
                ) from exc
            self._static = StaticModel.from_pretrained(self._folder, normalize=True)
        return self._static

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        self.check_items(texts)  # a text model: an image is refused in one line
        vectors = self._load().encode(
            list(texts), normalize=True, show_progress_bar=False, use_multiprocessing=False
        )
        return np.asarray(vectors, dtype=np.float32)
