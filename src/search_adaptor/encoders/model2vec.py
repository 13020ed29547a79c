"""Static token-embedding models (model2vec): a query costs a tokenizer call and a table lookup.

A model2vec folder (``config.json``, ``model.safetensors``, ``tokenizer.json``; made by
:func:`search_adaptor.distill.distill` or downloaded) holds one vector per token; a text's
embedding is the mean of its tokens' vectors, normalised. No transformer runs at query time, so a
query takes microseconds on a CPU: the cheap side of a cross-model adapter, whose documents are
embedded once by a strong model.

Its fingerprint is its content (:class:`~search_adaptor.encoders.base.FolderEncoder`): a hash of
the vectors, the tokenizer and the settings that change the output, never its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from search_adaptor.encoders.base import EncoderError, FolderEncoder, Kind


class Model2VecEncoder(FolderEncoder):
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
    weight_files = ("model.safetensors", "tokenizer.json")
    config_file = "config.json"
    provenance = frozenset({"tokenizer_name"})
    how_to_make = (
        "make one with `search-adaptor distill --out DIR`, or give the folder of a downloaded model2vec model"
    )

    def __init__(self, model: str, batch_size: int = 1024) -> None:
        super().__init__(model, batch_size)
        self._static: Any = None

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
