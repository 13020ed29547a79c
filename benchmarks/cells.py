"""The results cache of the smaller benchmark scripts (``crossmodel.py``, ``matryoshka.py``): one JSON
object of cells, rewritten atomically after each cell, so an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from search_adaptor.files import write_text_atomic


class Cells:
    """Cells by key in the JSON file ``path`` (absent: none yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self, key: str, cell: dict[str, Any]) -> None:
        """Add (or replace) one cell, keeping what another run wrote meanwhile."""
        cells = self.read()
        cells[key] = cell
        write_text_atomic(self.path, json.dumps(cells, indent=1, sort_keys=True) + "\n")
