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

import json
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
        self._check_config()
        self._static: Any = None

    def _check_config(self) -> None:
        """Refuse a ``config.json`` that model2vec would fail on later, with a library error naming
        no file: another kind of model (a transformers folder has the same three files, with its own
        ``model_type``), or a ``max_length`` that is not a whole number of tokens."""
        settings, path = self.settings(), self._folder / self.config_file
        model_type = settings.get("model_type", "model2vec")  # older model2vec folders lack it
        if model_type != "model2vec":
            raise EncoderError(
                f'model2vec: {path}: model_type is {json.dumps(model_type)}, not "model2vec": '
                "another kind of model (a transformers model embeds with --provider sentence-transformers); "
                f"{self.how_to_make}"
            )
        max_length = settings.get("max_length")
        if max_length is not None and (
            not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1
        ):
            raise EncoderError(
                f"model2vec: {path}: field 'max_length' is {json.dumps(max_length)}; it must be a "
                "number of tokens of at least 1, or null for no limit: set it so, or make the folder again "
                f"({self.how_to_make})"
            )

    def _tensor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """The shapes of ``model.safetensors``' ``embeddings`` and ``mapping`` (None without one),
        from its header only; a file model2vec cannot read, or one without ``embeddings``, is refused
        naming it."""
        from safetensors import SafetensorError, safe_open

        path = self._folder / "model.safetensors"
        try:
            with safe_open(str(path), framework="numpy") as tensors:
                names = set(tensors.keys())
                if "embeddings" not in names:
                    raise EncoderError(
                        f"model2vec: {path}: no tensor 'embeddings' (it holds "
                        f"{', '.join(sorted(names)) or 'none'}); {self.remake}"
                    )
                shape = tuple(tensors.get_slice("embeddings").get_shape())
                mapping = tuple(tensors.get_slice("mapping").get_shape()) if "mapping" in names else None
        except SafetensorError as exc:
            raise EncoderError(
                f"model2vec: {path}: not a readable safetensors file ({exc}); {self.remake}"
            ) from exc
        return shape, mapping

    def _check_rows(self, shape: tuple[int, ...], mapping: tuple[int, ...] | None, vocabulary: int) -> None:
        """Refuse vectors that do not match the tokenizer: one row per token, unless a ``mapping``
        tensor maps tokens to rows (then one entry per token), naming ``model.safetensors``."""
        rows = mapping[0] if mapping is not None and len(mapping) == 1 else shape[0] if shape else 0
        if len(shape) != 2 or (mapping is not None and len(mapping) != 1) or rows != vocabulary:
            what = f"a mapping of shape {list(mapping)}" if mapping is not None else "no mapping"
            raise EncoderError(
                f"model2vec: {self._folder / 'model.safetensors'}: its 'embeddings' tensor has shape "
                f"{list(shape)} ({what}), but the tokenizer has {vocabulary:,} tokens: it needs one row "
                f"per token; {self.remake}"
            )

    def _load(self) -> Any:
        """The model, loaded once. ``tokenizer.json`` is parsed once, by model2vec; the tensors'
        headers are read first (a file without ``embeddings`` would fail inside the library naming no
        file), and the vectors are checked against the tokenizer once it is loaded. When model2vec
        fails, the files are read again, on that path only, to name the one at fault."""
        if self._static is None:
            try:
                from model2vec import StaticModel
            except ImportError as exc:
                raise EncoderError(
                    "model2vec: the model2vec package is not installed; "
                    "pip install 'search-adaptor[model2vec]'"
                ) from exc
            shape, mapping = self._tensor_shapes()
            try:
                static = StaticModel.from_pretrained(self._folder, normalize=True)
            except Exception as exc:  # the tokenizers library raises a bare Exception, model2vec ValueError
                self._check_rows(shape, mapping, self.read_tokenizer().get_vocab_size())
                raise EncoderError(
                    f"model2vec: {self._folder}: model2vec cannot load it ({exc}); {self.remake}"
                ) from exc
            self._check_rows(
                tuple(np.shape(static.embedding)),
                None if static.token_mapping is None else tuple(np.shape(static.token_mapping)),
                static.tokenizer.get_vocab_size(),
            )
            self._static = static
        return self._static

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        self.check_items(texts)  # a text model: an image is refused in one line
        static = self._load()
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            # inf or NaN weights: numpy's warning would come before check_vectors' one-line error
            vectors = static.encode(
                list(texts), normalize=True, show_progress_bar=False, use_multiprocessing=False
            )
        return np.asarray(vectors, dtype=np.float32)
