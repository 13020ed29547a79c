"""Every benchmark script answers ``--help`` with what it does, and neither runs nor writes anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text(encoding="utf-8"))


@pytest.mark.slow  # one interpreter per script, each importing what its script imports
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_usage_and_writes_nothing(script: Path) -> None:
    """`assemble.py --help` rewrote BENCHMARKS.md, `provider_faults.py --help` ran the benchmark."""
    results = BENCHMARKS / "results"
    before = {p: p.stat().st_mtime_ns for p in [*results.iterdir(), BENCHMARKS.parent / "BENCHMARKS.md"]}
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("usage:"), done.stderr[-500:]
    assert {p: p.stat().st_mtime_ns for p in before} == before
