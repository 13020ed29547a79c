"""search-adaptor: make a frozen embedding model better at retrieval on your own labelled data.

The public surface is small and imported lazily, so ``import search_adaptor`` (and the CLI's
``--help``) does not pull in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SearchAdaptor": "search_adaptor.model",
    "select": "search_adaptor.experiment",
    "load_beir": "search_adaptor.data",
    "evaluate": "search_adaptor.metrics",
    "EmbeddingStore": "search_adaptor.store",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'search_adaptor' has no attribute {name!r}")
