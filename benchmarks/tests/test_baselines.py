"""The benchmark suite's baselines (closed-form maps, split, fine-tuning batches) and an end-to-end run."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from search_adaptor.data import Dataset
from search_adaptor.embed import Embeddings
from search_adaptor.experiment import evaluate_embeddings, select
from search_adaptor.retrieval import l2_normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import baselines  # benchmarks/ is not a package: its modules are imported from the path
import suite


def _random_rotation(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_rotation() -> None:
    rng = np.random.default_rng(1)
    R = _random_rotation(12, 2)
    Q = rng.normal(size=(200, 12))
    W = baselines.procrustes(Q, Q @ R)
    assert np.allclose(W, R, atol=1e-8)
    assert np.allclose(W @ W.T, np.eye(12), atol=1e-8)


def test_ridge_map_recovers_a_linear_map_and_shrinks_to_identity() -> None:
    rng = np.random.default_rng(3)
    A = rng.normal(size=(10, 10))
    Q = rng.normal(size=(300, 10))
    assert np.allclose(baselines.ridge_map(Q, Q @ A, 0.0), A, atol=1e-8)
    assert np.allclose(baselines.ridge_map(Q, Q @ A, 1e-6), A, atol=1e-5)
    assert np.allclose(baselines.ridge_map(Q, Q @ A, 1e9), np.eye(10), atol=1e-4)


def _embeddings(s: dict) -> Embeddings:
    return Embeddings(
        s["qids"], s["Q"], s["dids"], s["D"], {"fingerprint": "synthetic", "model": "synthetic"}
    )


def test_validation_split_is_the_one_select_draws(synthetic: dict) -> None:
    for seed in (0, 3):
        sel = select(
            "linear",
            synthetic["Q"],
            synthetic["D"],
            synthetic["qrels"],
            synthetic["qids"],
            synthetic["dids"],
            seed=seed,
            overrides={"max_steps": 1},
        )
        train, val = baselines.validation_split(synthetic["qrels"], seed)
        assert val == sel.val_query_ids
        assert sorted(train + val) == sorted(synthetic["qrels"])


def test_closed_form_maps_beat_zero_shot_on_a_linear_distortion(synthetic: dict) -> None:
    emb = _embeddings(synthetic)
    qids = sorted(synthetic["qrels"])
    train = {q: synthetic["qrels"][q] for q in qids[:120]}
    test = {q: synthetic["qrels"][q] for q in qids[120:]}
    zero = evaluate_embeddings(emb, test)[0]["ndcg@10"]
    lsq = baselines.fit_least_squares(emb, train, seed=0)
    assert lsq.info["selected"] != "identity"
    assert evaluate_embeddings(emb, test, lsq)[0]["ndcg@10"] > zero + 0.1
    proc = baselines.fit_procrustes(emb, train)
    assert np.allclose(proc.transform_corpus(synthetic["D"]), l2_normalize(synthetic["D"]))
    assert np.allclose(np.linalg.norm(proc.transform_queries(synthetic["Q"]), axis=1), 1.0, atol=1e-5)


def test_unique_batches_never_repeat_a_query_or_document() -> None:
    rng = np.random.default_rng(0)
    pairs = [(f"q{i % 40}", int(d)) for i, d in enumerate(rng.integers(0, 60, size=150))]
    batches = baselines._unique_batches(pairs, 8, rng)
    assert len(batches) >= 10
    for batch in batches:
        assert len(batch) == 8
        assert len({q for q, _ in batch}) == 8
        assert len({d for _, d in batch}) == 8


def test_scores_round_trip_in_units_of_1e4() -> None:
    values = np.array([0.0, 1.0, 0.12345, 0.5, 0.99996])
    assert np.allclose(suite.decode_scores(suite.encode_scores(values)), values, atol=5e-5)


def _bench(name: str, s: dict, with_train: bool) -> suite.Bench:
    """A synthetic dataset: official train/test split, or one labelled split (k-fold)."""
    qids = sorted(s["qrels"])
    if with_train:
        qrels = {
            "train": {q: s["qrels"][q] for q in qids[:110]},
            "test": {q: s["qrels"][q] for q in qids[110:]},
        }
    else:
        qrels = {"test": dict(s["qrels"])}
    ds = Dataset(name, Path("/nonexistent"), s["dids"], list(s["dids"]), {q: q for q in qids}, qrels)
    return suite.make_bench(name, ds, _embeddings(s))


@pytest.mark.slow
def test_suite_runs_end_to_end_and_resumes(
    synthetic: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    torch = pytest.importorskip("torch")
    # keep it fast: 2 folds, a 2-point paper grid (one point doubles as the no-recovery ablation)
    monkeypatch.setattr(suite, "FOLDS", 2)
    grid = (suite.TABLE_ROWS["no-recovery"].cells[0], suite.TABLE_ROWS["paper-default"].cells[0])
    monkeypatch.setitem(suite.TABLE_ROWS, "paper", suite.TableRow("paper", "paper grid", grid))
    monkeypatch.setattr(suite, "GRID_NAMES", grid)
    benches = {
        "syn-split": _bench("syn-split", synthetic, True),
        "syn-kfold": _bench("syn-kfold", synthetic, False),
    }
    rows = ("zero-shot", "procrustes", "least-squares", "llamaindex-linear", "paper", "no-recovery", "auto")
    kwargs = dict(
        datasets=list(benches),
        seeds=2,
        table_rows=rows,
        fractions=(0.5,),
        max_steps=10,
        results=tmp_path,
        loader=benches.__getitem__,
        log=lambda _msg: None,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only cost time on a busy machine
    try:
        cache = suite.run(**kwargs)
        again = suite.run(**kwargs)  # everything cached: nothing is recomputed
    finally:
        torch.set_num_threads(threads)
    n_rows = len({c for r in rows for c in suite.TABLE_ROWS[r].cells})
    n_eff = len({c for r in suite.EFFICIENCY_ROWS if r in rows for c in suite.TABLE_ROWS[r].cells})
    assert len(cache.cells) == 2 * n_rows * (1 + suite.FOLDS) + 2 * n_eff
    on_disk = json.loads(gzip.decompress((tmp_path / "suite_cells.json.gz").read_bytes()))
    assert set(on_disk["cells"]) == set(cache.cells)
    assert on_disk["runs"][0]["cells"] == len(cache.cells)
    assert again.runs[-1]["cells"] == 0
    assert again.cells == cache.cells

    md = (tmp_path / "suite.md").read_text()
    assert "### syn-split (test" in md and "### syn-kfold (kfold" in md
    assert "`auto` vs the best other adapter row" in md
    assert "### Data efficiency on syn-split" in md
    assert "Where the adapter does not win" in md
    for png in ("efficiency_syn-split.png", "curves_syn-kfold.png", "similarity_syn-split_auto.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    # per-query scores line up with the sorted test queries for every seed and fold
    res = suite.aggregate(cache, benches["syn-kfold"], suite.TABLE_ROWS["zero-shot"], [0, 1])
    assert res is not None and res.seeds == 2
    zs = evaluate_embeddings(benches["syn-kfold"].emb, benches["syn-kfold"].labelled)[1]["ndcg@10"]
    assert np.allclose(res.per_query, zs, atol=1e-4)
    paper = suite.aggregate(cache, benches["syn-split"], suite.TABLE_ROWS["paper"], [0, 1])
    assert paper is not None and set(paper.picked) <= set(grid)


@pytest.mark.slow
def test_finetune_runs_on_the_local_model(tmp_path: Path) -> None:
    from search_adaptor.encoders.local import DEFAULT_MODEL, resolve_model

    try:
        path = resolve_model(DEFAULT_MODEL)
    except Exception as exc:  # no cached weights on this machine
        pytest.skip(f"local model unavailable: {exc}")
    docs = [f"document about topic {i} and subject {i * 7 % 13}" for i in range(40)]
    queries = {f"q{i}": f"what about topic {i}" for i in range(40)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    emb = Embeddings(
        list(queries), np.zeros((40, 384)), [f"d{i}" for i in range(40)], np.zeros((40, 384)), {"model": "x"}
    )
    res = baselines.finetune(
        path, emb, queries, docs, qrels, seed=0, max_epochs=1, batch_size=8, autocast="bf16"
    )
    assert len(res.history) == 2 and res.train_s > 0
    assert res.best_score >= res.zero_shot_score
    # the held-out evaluation reuses the kept model's corpus vectors and embeds only the queries
    test = res.embed_queries(emb, queries, ["q1", "q2"])
    assert test.query_ids == ["q1", "q2"] and test.corpus.shape == (40, 384)
    assert np.allclose(np.linalg.norm(test.queries, axis=1), 1, atol=1e-3)
    assert np.allclose(np.linalg.norm(test.corpus, axis=1), 1, atol=1e-3)
    with pytest.raises(ValueError, match="autocast"):
        baselines.finetune(path, emb, queries, docs, qrels, seed=0, max_epochs=1, autocast="fp8")


def test_cache_claims_split_work_between_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    params = {"kind": "zero-shot"}
    cache = suite.Cache(tmp_path / "suite_cells.json.gz")
    claims = tmp_path / "suite_cells.claims.json"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims.write_text(json.dumps({"a|zero-shot|0|k0": other.pid}))
        assert not cache.claim("a|zero-shot|0|k0", params)  # a live process holds it
        assert cache.claim("a|zero-shot|0|k1", params)
    finally:
        other.kill()
        other.wait()
    assert cache.claim("a|zero-shot|0|k0", params)  # its holder died: the claim lapsed
    # a cell another process stored since this cache was read is not computed again
    writer = suite.Cache(tmp_path / "suite_cells.json.gz")
    writer.put("a|zero-shot|1|k0", {"params": params, "mean": {}})
    writer.save()
    assert not cache.claim("a|zero-shot|1|k0", params)
    assert cache.get("a|zero-shot|1|k0", params) is not None
