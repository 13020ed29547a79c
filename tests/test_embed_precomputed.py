"""Vectors brought with ``--embeddings`` (:func:`load_precomputed`): rows come back in the dataset's
order as unit vectors, the fingerprint is the sha256 of the corpus file as adapters recorded it,
and loading holds no whole copy beyond the file's matrix and the result (sweep E: a 1M x 384
corpus peaked at 3.4 times its size)."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from search_adaptor import embed
from search_adaptor.data import Dataset
from search_adaptor.embed import load_precomputed, unit_rows


def _dataset(tmp_path: Path, qids: list[str], dids: list[str]) -> Dataset:
    return Dataset(
        name="vectors",
        path=tmp_path,
        doc_ids=dids,
        doc_texts=list(dids),
        queries={q: q for q in qids},
        qrels={"test": {q: {dids[0]: 1} for q in qids}},
    )


def _save(folder: Path, stem: str, ids: list[str], mat: np.ndarray) -> Path:
    folder.mkdir(exist_ok=True)
    np.savez(folder / f"{stem}.npz", ids=np.array(ids), embeddings=mat)
    return folder / f"{stem}.npz"


def test_rows_follow_the_dataset_and_the_fingerprint_is_the_files_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in another order, with rows the dataset lacks, read a few rows at a time: each id gets
    its own row, with the very bits the whole-copy gather gave, and the hash of the whole file."""
    monkeypatch.setattr(embed, "_CHUNK", 7)  # several chunks, the last one partial
    rng = np.random.default_rng(0)
    qids, dids = [f"q{i}" for i in range(5)], [f"d{i}" for i in range(40)]
    file_dids = [f"d{i}" for i in rng.permutation(50)]  # d40..d49 are not in the dataset
    Q, D = rng.standard_normal((5, 8)) * 1e3, rng.standard_normal((50, 8)).astype(np.float32)
    vec = tmp_path / "vec"
    _save(vec, "queries", qids, Q)
    corpus = _save(vec, "corpus", file_dids, D)
    emb = load_precomputed(_dataset(tmp_path, qids, dids), vec)

    order = [file_dids.index(d) for d in dids]
    assert emb.doc_ids == dids
    np.testing.assert_array_equal(emb.corpus, unit_rows(D[order], "D"))
    np.testing.assert_allclose(
        emb.corpus, D[order] / np.linalg.norm(D[order], axis=1, keepdims=True), rtol=1e-6
    )
    np.testing.assert_allclose(emb.queries, Q / np.linalg.norm(Q, axis=1, keepdims=True), rtol=1e-6)
    digest = hashlib.sha256(corpus.read_bytes()).hexdigest()[:12]
    assert emb.encoder["fingerprint"] == f"precomputed:precomputed:{digest}"


def test_a_bad_row_is_named_by_its_id_whichever_chunk_it_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are checked a chunk at a time: the message still names the first bad row in the dataset's
    order and counts them all, NaN before zeros, as when the whole matrix was checked at once."""
    monkeypatch.setattr(embed, "_CHUNK", 4)
    qids, dids = ["q0"], [f"d{i}" for i in range(20)]
    D = np.ones((20, 3), dtype=np.float32)
    D[[17, 6]] = 0.0
    D[13, 1] = np.nan
    vec = tmp_path / "vec"
    _save(vec, "queries", qids, np.ones((1, 3)))
    _save(vec, "corpus", dids[::-1], D)  # file row 17 is d2, row 13 is d6, row 6 is d13
    with pytest.raises(ValueError, match=r"vector of id 'd6' contains NaN or inf \(1 such rows\)"):
        load_precomputed(_dataset(tmp_path, qids, dids), vec)
    D[13, 1] = 1.0
    _save(vec, "corpus", dids[::-1], D)
    with pytest.raises(ValueError, match=r"vector of id 'd2' is all zeros \(2 such rows\)"):
        load_precomputed(_dataset(tmp_path, qids, dids), vec)


def test_loading_holds_only_the_files_matrix_and_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peak was the file's matrix, its copy in the dataset's order, the unit vectors and the whole
    file's bytes for the hash: over 3 times the matrix. Gathered and hashed in chunks, it stays
    near 2 (the matrix and the result) plus the ids."""
    monkeypatch.setattr(embed, "_CHUNK", 1024)  # chunks small next to the matrix, as at scale
    rng = np.random.default_rng(1)
    n, dim = 20_000, 512
    dids = [f"d{i}" for i in range(n)]
    D = rng.standard_normal((n, dim), dtype=np.float32)
    vec = tmp_path / "vec"
    _save(vec, "queries", ["q0"], np.ones((1, dim), dtype=np.float32))
    _save(vec, "corpus", dids[::-1], D)
    dataset = _dataset(tmp_path, ["q0"], dids)
    del D
    tracemalloc.start()
    try:
        emb = load_precomputed(dataset, vec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = emb.corpus.nbytes
    assert emb.corpus.shape == (n, dim)
    assert peak < 2.5 * size, f"peak {peak / size:.2f} times the {size / 2**20:.0f} MiB matrix"
