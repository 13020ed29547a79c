"""The results cache of the smaller benchmark scripts (``crossmodel.py``, ``matryoshka.py``): one JSON
object of cells, rewritten atomically after each cell, so an interrupted run resumes where it stopped.
A ``.gz`` name stores it gzipped (per-query scores make a cache large). Also the one way their
reports write a mean over seeds."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.files import write_bytes_atomic


class Cells:
    """Cells by key in the JSON file ``path`` (absent: none yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        return json.loads(gzip.decompress(data) if self.path.suffix == ".gz" else data)

    def save(self, key: str, cell: dict[str, Any]) -> None:
        """Add (or replace) one cell, keeping what another run wrote meanwhile."""
        cells = self.read()
        cells[key] = cell
        data = (json.dumps(cells, indent=1, sort_keys=True) + "\n").encode()
        write_bytes_atomic(self.path, gzip.compress(data, mtime=0) if self.path.suffix == ".gz" else data)


def mean_sd(values: list[float]) -> str:
    """``mean ± sample std`` over seeds to 4 places (the value alone for one seed)."""
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"
