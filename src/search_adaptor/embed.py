"""Texts -> embeddings: through the persistent store, or from vectors the user already has."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search_adaptor.data import Dataset
from search_adaptor.encoders.base import Encoder
from search_adaptor.store import EmbeddingStore, StoreStats


@dataclass
class Embeddings:
    """A dataset's queries and corpus in one embedding space, rows aligned with the ids."""

    query_ids: list[str]
    queries: np.ndarray  # (n_queries, dim)
    doc_ids: list[str]
    corpus: np.ndarray  # (n_docs, dim)
    encoder: dict[str, Any]  # {"fingerprint", "model", "provider", "config"}
    embed_s: float = 0.0
    stats: StoreStats = field(default_factory=StoreStats)

    @property
    def dim(self) -> int:
        return int(self.corpus.shape[1])


def encoder_info(encoder: Encoder) -> dict[str, Any]:
    """What a saved adapter and a report record about the embedding space (never a key)."""
    return {
        "fingerprint": encoder.fingerprint,
        "provider": encoder.provider,
        "model": encoder.model,
        "config": encoder.config(),
    }


def embed_dataset(
    dataset: Dataset,
    encoder: Encoder,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Embeddings:
    """Embed every query and document of ``dataset``, paying only for texts not in the store yet.

    The progress bar shows texts per second and, for encoders that count them (the API
    providers), the retries made so far: a climbing count is the sign of rate limits or an
    unhealthy endpoint while the run still makes progress.
    """
    from tqdm.auto import tqdm

    qids = list(dataset.queries)
    qtexts = [dataset.queries[q] for q in qids]
    stats = StoreStats()
    start = time.perf_counter()
    with EmbeddingStore(encoder, cache_dir) as store:
        todo = len(store.missing("query", qtexts)) + len(store.missing("document", dataset.doc_texts))
        with tqdm(
            total=todo,
            desc=f"embedding {dataset.name}",
            unit="text",
            disable=not progress or todo == 0,
            leave=False,
        ) as bar:

            def advance(n: int) -> None:
                if hasattr(encoder, "retries"):
                    bar.set_postfix(retries=encoder.retries, refresh=False)
                bar.update(n)

            Q = store.embed(qtexts, "query", progress=advance, stats=stats)
            D = store.embed(dataset.doc_texts, "document", progress=advance, stats=stats)
    return Embeddings(
        qids,
        Q,
        list(dataset.doc_ids),
        D,
        encoder_info(encoder),
        embed_s=time.perf_counter() - start,
        stats=stats,
    )


def _read_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, matrix) from ``.npz`` (arrays ids, embeddings) or ``.parquet`` (columns id, embedding)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = {"ids", "embeddings"} - set(z.files)
            if missing:
                raise ValueError(
                    f"{path}: missing array(s) {', '.join(sorted(missing))}; save ids= and embeddings="
                )
            return [str(i) for i in z["ids"].tolist()], np.asarray(z["embeddings"], dtype=np.float32)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = {"id", "embedding"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}; need id and embedding")
        ids = [str(i) for i in table.column("id").to_pylist()]
        return ids, np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    raise ValueError(f"{path}: unsupported format; use .npz (ids, embeddings) or .parquet (id, embedding)")


def _find(folder: Path, stem: str) -> Path:
    for ext in (".npz", ".parquet"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    raise FileNotFoundError(
        f"{folder}: no {stem}.npz or {stem}.parquet; put your precomputed {stem} vectors there"
    )


def load_precomputed(dataset: Dataset, folder: str | os.PathLike, model: str | None = None) -> Embeddings:
    """Vectors the user brings: ``folder/queries.{npz,parquet}`` and ``folder/corpus.{npz,parquet}``.

    Every query and document of ``dataset`` must have a finite vector of one common dimension.
    The fingerprint is ``model`` when given (name the model that made the vectors, so a saved adapter
    can refuse others), otherwise a hash of the corpus file.
    """
    start = time.perf_counter()
    root = Path(folder)
    out = {}
    for stem, ids in (("queries", list(dataset.queries)), ("corpus", list(dataset.doc_ids))):
        path = _find(root, stem)
        have_ids, mat = _read_vectors(path)
        if mat.ndim != 2 or len(have_ids) != len(mat):
            raise ValueError(f"{path}: {len(have_ids)} ids for an array of shape {mat.shape}")
        pos = {i: n for n, i in enumerate(have_ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise ValueError(
                f"{path}: no vector for {stem[:-1] if stem == 'queries' else 'document'} id "
                f"{missing[0]!r} ({len(missing)} missing); embed every id of the dataset"
            )
        sub = mat[[pos[i] for i in ids]]
        bad = ~np.isfinite(sub).all(axis=1)
        if bad.any():
            raise ValueError(f"{path}: vector of id {ids[int(np.argmax(bad))]!r} contains NaN or inf")
        out[stem] = (ids, sub, path)
    if out["queries"][1].shape[1] != out["corpus"][1].shape[1]:
        raise ValueError(
            f"{out['queries'][2]} holds {out['queries'][1].shape[1]}-d vectors but "
            f"{out['corpus'][2]} holds {out['corpus'][1].shape[1]}-d ones; use one model for both"
        )
    digest = hashlib.sha256(out["corpus"][2].read_bytes()).hexdigest()[:12]
    name = model or f"precomputed:{digest}"
    info = {"fingerprint": f"precomputed:{name}", "provider": "precomputed", "model": name, "config": {}}
    return Embeddings(
        out["queries"][0],
        out["queries"][1],
        out["corpus"][0],
        out["corpus"][1],
        info,
        embed_s=time.perf_counter() - start,
    )
