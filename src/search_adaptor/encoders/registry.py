"""Build any encoder from a provider name: the one entry point the CLI and the API use.

Provider modules are imported only when asked for, so naming ``openai`` never imports torch and
naming ``sentence-transformers`` or ``model2vec`` never imports httpx.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search_adaptor.encoders import API_CLASSES, FOLDER_CLASSES, LOCAL, MODEL2VEC, PROVIDERS
from search_adaptor.encoders.base import Encoder, EncoderError

__all__ = ["LOCAL", "MODEL2VEC", "PROVIDERS", "from_info", "make_encoder"]
#: encoder config keys that are also ``make_encoder`` options of the same name
_OPTIONS = ("max_chars", "query_prompt", "document_prompt", "truncate", "truncation", "auto_truncate")
#: every encoder config field :func:`from_info` passes to a constructor, and the type the encoders
#: record it as (null stands for absent, as ``dimensions`` and ``max_chars`` are recorded when unset): a
#: value of another type, from an edited file, must be refused by name, not reach ``Path(model)`` or
#: ``dimensions <= 0`` as a float or a list and fail there as an internal error
_RECORDED_TYPES: dict[str, type] = {
    "model": str,
    "base_url": str,
    "endpoint": str,
    "query_prompt": str,
    "document_prompt": str,
    "truncate": str,
    "dimensions": int,
    "max_chars": int,
    "max_input_tokens": int,
    "truncation": bool,
    "auto_truncate": bool,
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def make_encoder(provider: str, model: str | None = None, *, plan_only: bool = False, **kw: Any) -> Encoder:
    """An encoder for ``provider``'s ``model`` (the provider's default model when omitted).

    Parameters
    ----------
    provider : str
        One of :data:`PROVIDERS`.
    model : str, optional
        Model id; the deployment name for ``azure-openai``; the folder for ``model2vec`` and
        ``onnx``; required for ``azure-openai``, ``openai-compatible``, ``model2vec`` and ``onnx``.
    **kw
        The provider's options, as its class takes them: ``base_url`` (API root: proxies, regional
        or self-hosted endpoints, tests; required for ``openai-compatible`` unless
        ``$OPENAI_BASE_URL`` is set), ``dimensions`` (shorter vectors, where the model supports
        it), ``batch_size`` and ``max_concurrency`` (texts per batch and batches in flight; the
        provider's documented limits by default), ``api_key``, ``timeout``, ``retry``,
        ``retry_budget_s``, ``max_chars``, ``max_input_tokens``, ``max_request_tokens``,
        ``query_prompt``, ``document_prompt``; ``organization``, ``project`` (OpenAI);
        ``api_version``, ``azure_ad_token`` (Azure); ``project``, ``location``, ``auto_truncate``
        (Vertex); ``truncate`` (Cohere); ``truncation`` (Voyage); ``device`` (sentence-transformers).
        See :class:`~search_adaptor.encoders.http.ApiEncoder`.
    plan_only : bool
        Make an API encoder that only says what it would send (``embed --dry-run``): it needs no key
        and refuses to send (:class:`~search_adaptor.encoders.http.ApiEncoder`); a model on this
        machine is made as ever, since it sends nothing.

    Raises
    ------
    ValueError
        Unknown provider (the message lists the choices) or an option the provider lacks.
    EncoderError
        No API key (unless ``plan_only``): the message names the environment variable to set.
    """
    if provider == LOCAL or provider in FOLDER_CLASSES:
        remote = [k for k in ("base_url", "dimensions") if kw.pop(k, None) is not None]
        if kw.pop("max_concurrency", None) not in (None, 1):
            remote.append("max_concurrency")
        if provider == LOCAL:  # a model in a folder names whatever it does not take, below
            api_only = ("api_key", "retry", "retry_budget_s", "timeout")
            remote += [k for k in api_only if kw.pop(k, None) is not None]
        if remote:
            raise ValueError(f"{provider}: {_do_not_apply(remote)} to a local model")
        if kw.get("batch_size") is None:
            kw.pop("batch_size", None)
        if provider in FOLDER_CLASSES:
            module, name, command = FOLDER_CLASSES[provider]
            if not model:
                raise ValueError(f"{provider}: pass the model folder (`{command}`)")
            extra = sorted(set(kw) - {"batch_size"})
            if extra:
                raise ValueError(f"{provider}: {_do_not_apply(extra)} to a model in a folder")
            return getattr(importlib.import_module(module), name)(model, **kw)
        from search_adaptor.encoders.local import DEFAULT_MODEL, SentenceTransformerEncoder

        return SentenceTransformerEncoder(model or DEFAULT_MODEL, **kw)
    if provider not in API_CLASSES:
        raise ValueError(f"unknown embedding provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    module, name = API_CLASSES[provider]
    cls = getattr(importlib.import_module(module), name)
    return cls(model, plan_only=plan_only, **kw)


def _do_not_apply(options: list[str]) -> str:
    """The options named as the subject of "do(es) not apply", agreeing in number."""
    return f"{', '.join(options)} {'does' if len(options) == 1 else 'do'} not apply"


def info_problem(info: Any) -> str | None:
    """What is wrong with a recorded encoder (an :meth:`Encoder.info` dict read back from a file), in
    words naming the field, or None: the loaders of adapters and indexes refuse such files with it, so
    that a config field :func:`from_info` would pass on is of the type the encoders record, or a
    float or a list as a model name reaches a constructor and fails there as an internal error."""
    if not isinstance(info, Mapping):
        return f"must be an object, got {type(info).__name__}"
    if not isinstance(info.get("fingerprint"), str):
        return "field 'fingerprint' must be a string"
    for key, kind in (("provider", str), ("model", str), ("config", Mapping)):
        if info.get(key) is not None and not isinstance(info[key], kind):
            return f"field {key!r} must be {'an object' if kind is Mapping else 'a string'}"
    config = info.get("config") or {}
    for key, kind in _RECORDED_TYPES.items():
        value = config.get(key)
        typed = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))  # True: an int
        if value is not None and not typed:  # refused even when empty: [] or 0 read as the default model
            shown = json.dumps(value, default=repr)[:40]
            return f"field 'config.{key}' must be {_TYPE_NAMES[kind]}, got {shown}"
    return None


def from_info(info: Mapping[str, Any], **overrides: Any) -> Encoder:
    """Recreate the encoder an index or adapter records (:meth:`Encoder.info`).

    API keys come from the environment, as for any encoder. The result must reproduce the recorded
    fingerprint; otherwise the vectors would differ from the indexed ones. ``overrides`` are
    ``make_encoder`` options that do not change the vectors (``batch_size``, ``max_concurrency``,
    ``timeout``), and ``base_url``: the recorded API reached through another root (a proxy, a
    gateway, a regional endpoint; None keeps the recorded one), refused where the root is part of
    the fingerprint (an OpenAI-compatible server, whose model names mean something only on it).

    Raises
    ------
    ValueError
        Precomputed vectors (no model to call), a record of the wrong shape or with a field of the
        wrong type (:func:`info_problem`: a loader names the file it came from), or a config this
        library version cannot reproduce.
    """
    problem = info_problem(info)  # a loader refused its file already; a dict from Python is checked here
    if problem:
        raise ValueError(problem)
    provider, cfg = info.get("provider"), info.get("config") or {}
    if provider == "precomputed":
        raise ValueError(
            f"the vectors came from precomputed embeddings ({info.get('model')}): there is no model to embed "
            "text with; give such vectors instead (query vectors; --embeddings DIR), or the model that made "
            "them (an encoder; --provider and --model)"
        )
    root = overrides.pop("base_url", None)
    base_url = root or cfg.get("base_url") or cfg.get("endpoint")
    extra: dict[str, Any] = {"base_url": base_url} if base_url else {}
    if cfg.get("dimensions") is not None:
        extra["dimensions"] = cfg["dimensions"]
    options = {k: cfg[k] for k in _OPTIONS if k in cfg}
    if (
        provider in API_CLASSES
    ):  # recorded before texts were cut by tokens: absent, so no cut, same fingerprint
        options["max_input_tokens"] = cfg.get("max_input_tokens")
    if provider in FOLDER_CLASSES and not Path(str(cfg.get("model"))).expanduser().exists():
        raise EncoderError(
            f"{provider}: {cfg.get('model')}: no such folder; a model an adapter or index records must stay "
            "where it was (move it back, or give its new place with --model or --query-model where the "
            "command takes them, keeping its folder name)"
        )
    encoder = make_encoder(str(provider), cfg.get("model"), **extra, **options, **overrides)
    if encoder.fingerprint != info.get("fingerprint"):
        if root:
            from search_adaptor.encoders.http import Endpoint

            root = Endpoint.parse(root).public  # never a credential inside the URL in a message
        if root:
            fix = (
                f"its API root is part of what it records, and {root} may serve other vectors under that "
                "model name; use the recorded root, or embed again through this one"
            )
        elif provider in FOLDER_CLASSES:  # the folder's content is in the fingerprint
            fix = (
                f"the model folder {cfg.get('model')} no longer holds the model it was built with (its "
                "files changed since); put that model back there, or build again with the model it holds now"
            )
        else:
            fix = (
                "its recorded settings no longer make that model (the file was edited, or written by "
                "another search-adaptor version): make the file again, or pass the encoder explicitly "
                "(Python)"
            )
        recorded, made = info.get("fingerprint"), encoder.fingerprint
        raise ValueError(f"recreated encoder {made} differs from the recorded {recorded}; {fix}")
    return encoder
