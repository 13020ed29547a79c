"""Assemble BENCHMARKS.md from the sections each benchmark script writes to ``benchmarks/results/``.

Each script owns one markdown file; this page only concatenates them in a fixed order, so re-running
one benchmark never erases another's results. Run it directly to rebuild the page::

    python benchmarks/assemble.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ORDER = [
    "core.md",
    "suite.md",
    "selection.md",
    "fit_speed.md",
    "exact_search.md",
    "validation_pools.md",
    "matryoshka.md",
    "crossmodel.md",
    "provider_faults.md",
    "serving.md",
    "load_test.md",
    "load_test_onnx.md",
    "load_test_api.md",
    "onnx_encoder.md",
    "scale.md",
    "frameworks.md",
]


def assemble() -> Path:
    """Write BENCHMARKS.md from the result sections that exist, in :data:`ORDER`, then any others."""
    present = [RESULTS / n for n in ORDER if (RESULTS / n).is_file()]
    present += sorted(p for p in RESULTS.glob("*.md") if p.name not in ORDER)
    parts = [
        "# Benchmarks",
        "",
        "Every section below is written by the script it names, on this project's 2-core CPU machine;",
        "rebuild this page with `python benchmarks/assemble.py`. Figures without a command are not results.",
    ]
    for path in present:
        parts += ["", path.read_text().strip()]
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(parts) + "\n")
    return out


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help: no rewrite
    print(f"wrote {assemble()}")
