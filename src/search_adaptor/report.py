"""Reports: the proof a user asked for, as ``report.json`` (for tools) and ``report.md`` (for people).

``report.json`` keeps one shape that other tools read::

    {"dataset", "model", "protocol": "test" | "kfold", "metrics": {"zero-shot": {...}, "adapted": {...}},
     "selected", "validation", "timings": {"embed_s", "train_s"}, ...}

``fit`` adds ``"plots": {"similarity": "plots/similarity.png", "learning_curves": ...}`` (paths
relative to the report's folder; empty with ``"plots_skipped": reason`` when matplotlib is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never half of one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``target`` (a sibling): readers see one or the other.

    Temporary folders are private (0700); the published one gets the usual 0755/0644 modes.
    """
    for item in [tmp, *tmp.rglob("*")]:
        item.chmod(0o755 if item.is_dir() else 0o644)
    old = tmp.with_name(tmp.name + ".old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def metrics_table(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> list[str]:
    """Markdown table: one row per system, one column per metric."""
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[m]:.4f}" for m in metrics) + " |")
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """Human summary of a ``fit`` or ``evaluate`` report."""
    zs, ad = report["metrics"]["zero-shot"], report["metrics"]["adapted"]
    names = list(zs)
    protocol = report["protocol"]
    lines = [
        f"# search-adaptor report: {report['dataset']}",
        "",
        f"Model: `{report['model']}`. Selected variant: **{report['selected']}**.",
    ]
    if protocol == "kfold":
        lines.append(
            f"Protocol: {report['folds']}-fold cross-validation over the labelled queries (the dataset "
            "has no train split): each fold's adapter is trained and selected on the other folds only, "
            "and the metrics are the mean over all held-out queries. The saved adapter is trained on "
            "all of them."
        )
    else:
        n_test, test_split = report.get("n_test_queries", "?"), report.get("test_split", "test")
        lines.append(
            f"Protocol: train on `{report.get('train_split', 'train')}`, select on a validation split "
            f"carved from it, report on the {n_test} `{test_split}` queries, which training, early "
            "stopping and selection never saw."
        )
    lines += ["", *metrics_table({"zero-shot": zs, "adapted": ad}, names), ""]
    delta = ad[names[0]] - zs[names[0]]
    sig = report.get("significance") or {}
    p = sig.get("p_value")
    verdict = "better" if delta > 0 else ("worse" if delta < 0 else "no different")
    p_text = f" (paired randomization test over queries: p = {p:.4g})" if p is not None else ""
    lines.append(f"Adapted is {verdict} than zero-shot by {delta:+.4f} {names[0]}{p_text}.")
    if str(report["selected"]).startswith("identity"):
        lines.append(
            "No variant beat zero-shot on validation, so the saved adapter is the identity: retrieval is "
            "unchanged."
        )
    cands = (report.get("validation") or {}).get("candidates") or []
    if cands:
        lines += [
            "",
            "## Candidates (validation nDCG@10; the test queries play no part)",
            "",
            "| variant | val nDCG@10 | zero-shot val | best step | steps | train s |",
            "|---|---|---|---|---|---|",
        ]
        for c in cands:
            lines.append(
                f"| {c['variant']} | {c['val_ndcg@10']:.4f} | {c['zero_shot_val_ndcg@10']:.4f} | "
                f"{c['best_step']} | {c['n_steps']} | {c['train_s']} |"
            )
    lines += _figures(report)
    t = report.get("timings") or {}
    if t:
        lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def _figures(report: Mapping[str, Any]) -> list[str]:
    """The "Figures" section: one line per figure saying what to look for."""
    if report.get("plots_skipped"):
        return ["", f"plots skipped: {report['plots_skipped']}"]
    plots = report.get("plots") or {}
    if not plots:
        return []
    n = report.get("n_test_queries", "?")
    if report["protocol"] == "kfold":
        queries = (
            f"all {n} labelled queries, which the saved adapter was trained on (so it overstates the "
            "gain on new queries; the cross-validated metrics above do not)"
        )
        curves = "of the final fit on all labelled queries"
    else:
        queries = f"the {n} held-out `{report.get('test_split', 'test')}` queries"
        curves = "of every candidate"
    captions = {
        "similarity": (
            f"cosine similarity of relevant vs random irrelevant pairs on {queries}; the adapter helps "
            "when the two histograms sit further apart in the right panel (adapted) than in the left "
            "(zero-shot)."
        ),
        "learning_curves": (
            f"validation nDCG@10 per training step {curves}, step 0 = zero-shot, dot = checkpoint kept; "
            "a curve still rising at its last step wants more steps, one that peaks early and falls overfits."
        ),
    }
    lines = ["", "## Figures", ""]
    for name, path in plots.items():
        lines.append(f"- [{path}]({path}): {captions.get(name, name)}")
    return lines


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "report.md", render_markdown(report))
    return out / "report.json", out / "report.md"
