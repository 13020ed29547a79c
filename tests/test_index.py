"""The adapted index: same results as exact search, a folder that round-trips, refusals that name the fix."""

from __future__ import annotations

import copy
import json
import math
import pickle
import shutil
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from search_adaptor.cli import main
from search_adaptor.index import AdaptedIndex, build_index
from search_adaptor.model import CompatibilityError, SearchAdaptor
from search_adaptor.retrieval import exact_search
from test_store import CountingEncoder

pytestmark = pytest.mark.skipif(find_spec("faiss") is None, reason="needs faiss-cpu (the faiss extra)")


def make_adapter(
    dim: int = 16, *, info: Mapping[str, Any] | None = None, seed: int = 0, **params: Any
) -> SearchAdaptor:
    """A fitted, non-identity adapter with random weights (fast: one training step, then randomised).

    ``info`` is the base encoder it claims (``encoder_info(...)``); ``params`` are hyperparameters
    (``mode``, ``architecture``, ``residual``...).
    """
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(40, dim)).astype(np.float32)
    Q = (D[:20] + 0.3 * rng.normal(size=(20, dim))).astype(np.float32)
    qids, dids = [f"q{i}" for i in range(20)], [f"d{i}" for i in range(40)]
    qrels = {q: {dids[i]: 1} for i, q in enumerate(qids)}
    est = SearchAdaptor(max_steps=1, eval_every=1, patience=1, batch_size=8, seed=seed, **params)
    est.fit(Q, D, qrels, qids, dids, encoder=info)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in {id(n): n for n in (est.query_net_, est.corpus_net_) if n is not None}.values():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / p.shape[-1] ** 0.5))
    est.best_step_ = 1  # as if a trained checkpoint beat zero-shot
    return est


FAKE = CountingEncoder(dim=16)
FAKE_INFO = FAKE.info()


@pytest.mark.parametrize("mode", ["shared", "query_only", "separate"])
def test_flat_index_equals_exact_search_and_round_trips(synthetic, tmp_path, mode):
    adapter = make_adapter(info=FAKE_INFO, mode=mode)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    Q = synthetic["Q"][:25]
    top, scores = exact_search(adapter.transform_queries(Q), adapter.transform_corpus(synthetic["D"]), 10)
    hits = index.search(Q, k=10)
    assert [[d for d, _ in row] for row in hits] == [[synthetic["dids"][i] for i in row] for row in top]
    assert np.allclose([[s for _, s in row] for row in hits], scores, atol=1e-5)

    index.save(tmp_path / "idx")
    assert {p.name for p in (tmp_path / "idx").iterdir()} == {
        "manifest.json",
        "index.faiss",
        "doc_ids.json",
        "adapter",
    }
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["n_docs"] == 300 and manifest["dim"] == 16 and manifest["backend"] == "flat"
    assert manifest["encoder"]["fingerprint"] == FAKE.fingerprint and manifest["adapter"]["mode"] == mode
    again = AdaptedIndex.load(tmp_path / "idx")
    assert again.search(Q, k=10) == hits


def test_the_manifest_names_the_fitted_mode_not_one_set_after_the_fit(synthetic, tmp_path):
    """set_params after fit (for the next fit) leaves the fitted adapter as it was: the manifest said
    mode query_only (documents only normalised) for documents the shared adapter had adapted, while
    the index's own adapter/config.json said shared."""
    adapter = make_adapter(info=FAKE_INFO, mode="shared")
    adapter.set_params(mode="query_only")
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    assert index.manifest["adapter"]["mode"] == "shared"
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    config = json.loads((tmp_path / "idx" / "adapter" / "config.json").read_text())
    assert manifest["adapter"]["mode"] == config["hyperparameters"]["mode"] == "shared"
    # an edit of what the manifest records, found on load: a mode not its adapter's (it said nothing),
    # a vectors folder outside the index (accepted, though the index writes only its own)
    saved = (tmp_path / "idx" / "manifest.json").read_text()
    for field, value, says in (
        ("adapter", {**manifest["adapter"], "mode": "query_only"}, 'adapter.mode "query_only" is not its'),
        ("vectors", "../../../etc", "field 'vectors' must be 'vectors', the folder inside the index"),
    ):
        (tmp_path / "idx" / "manifest.json").write_text(json.dumps({**manifest, field: value}))
        with pytest.raises(ValueError, match=rf"idx/manifest\.json: {says}.*; rebuild the index"):
            AdaptedIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_text(saved)
    AdaptedIndex.load(tmp_path / "idx")


def test_searching_vectors_gives_the_same_hits_in_any_layout_and_dtype(synthetic):
    """A few query vectors are adapted row by row, as transform_queries adapts them: given
    Fortran-ordered (a DataFrame's, a column slice's) their scores differed in the last bits (1.2e-7),
    and float64 rows float32 cannot hold (1e-50) were cast to zeros."""
    adapter = make_adapter(info=FAKE_INFO)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    Q = synthetic["Q"][:5]
    hits = index.search(Q, k=10)
    assert index.search(np.asfortranarray(Q), k=10) == hits
    assert index.search(Q.astype(np.float64), k=10) == hits
    tiny = Q.astype(np.float64) * 1e-50
    assert index.search(tiny, k=10) == index.search_adapted(adapter.transform_queries(tiny), k=10)
    assert [[d for d, _ in row] for row in index.search(tiny, k=10)] == [[d for d, _ in row] for row in hits]


def test_build_embeds_through_the_store_and_searches_text(tmp_path):
    texts = [f"document number {i}" for i in range(30)]
    ids = [f"d{i}" for i in range(30)]
    adapter = make_adapter(info=FAKE_INFO, mode="separate")
    enc = CountingEncoder(dim=16, batch_size=7)
    index = AdaptedIndex.build(adapter, enc, ids, texts, cache_dir=tmp_path)
    assert sum(len(c) for c in enc.calls) == 30
    enc2 = CountingEncoder(dim=16)
    AdaptedIndex.build(adapter, enc2, ids, texts, cache_dir=tmp_path)
    assert enc2.calls == []  # every document came from the store
    # a text query equals a search with its base vector; the document ranks itself first
    base = enc.encode_queries(["document number 3"])
    assert index.search(["document number 3"], k=5) == index.search(base, k=5)
    D = adapter.transform_corpus(enc.encode_corpus(texts))
    assert np.allclose(index.embed_queries(["q"]), adapter.transform_queries(enc.encode_queries(["q"])))
    top, _ = exact_search(index.embed_queries(["q"]), D, 5)
    assert [d for d, _ in index.search(["q"], k=5)[0]] == [ids[i] for i in top[0]]
    assert len(index.search(["q"], k=1000)[0]) == 30  # k is clipped to the corpus
    with pytest.raises(ValueError, match="k must be an integer >= 1; got 0"):
        index.search(["q"], k=0)
    calls = len(enc.calls)
    with pytest.raises(ValueError, match=r"^query 1: the query is blank, and a blank query ranks"):
        index.search(["q", " \n"])
    assert len(enc.calls) == calls  # refused before anything is embedded
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        index.search("q")
    with pytest.raises(ValueError, match="one id per text"):
        AdaptedIndex.build(adapter, enc, ids[:3], texts, cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("queries", "k", "error", "message"),
    [
        (
            "vitamin d",
            3,
            TypeError,
            r"AdaptedIndex\.search\(\) takes a list of texts, not a bare str \(it would be read letter by "
            r"letter\); wrap a single text in a list: \['vitamin d'\]",
        ),
        (b"vitamin d", 3, TypeError, r"AdaptedIndex\.search\(\) .* bare bytes .*decode it to str"),
        ([[0.5] * 16], 3, TypeError, r"query 0 \(list\) is not a text; give query vectors as one array"),
        (
            [np.ones(16)],
            3,
            TypeError,
            r"query 0 \(ndarray\) is not a text; give query vectors as one array",
        ),
        (["q", None], 3, TypeError, r"item 1 is NoneType None, not a text"),
        (["q"], 2.7, ValueError, r"k must be an integer >= 1; got 2\.7"),
        (["q"], "3", ValueError, r"k must be an integer >= 1; got '3'"),
        (["q"], None, ValueError, r"k must be an integer >= 1; got None"),
        (["q"], True, ValueError, r"k must be an integer >= 1; got True"),
        (np.ones((1, 16), dtype=bool), 3, ValueError, r"queries: expected a 2-D array of numbers, got bool"),
        (
            np.ones((1, 16), dtype=object),
            3,
            ValueError,
            r"queries: expected a 2-D array of numbers, got object",
        ),
    ],
)
def test_search_refuses_queries_it_would_misread(tmp_path, queries, k, error, message):
    """A bare string was searched letter by letter, rows of numbers were sent to the encoder as texts,
    None reached the encoder, k=2.7 or "3" was coerced, and bool or object arrays were taken where
    transform_queries refuses them: each is refused in one line before anything is embedded."""
    adapter = make_adapter(info=FAKE_INFO)
    enc = CountingEncoder(dim=16)
    index = AdaptedIndex.build(adapter, enc, ["a", "b"], ["a text", "b text"], cache_dir=tmp_path)
    calls = len(enc.calls)
    with pytest.raises(error, match=f"^{message}"):
        index.search(queries, k=k)
    assert len(enc.calls) == calls
    if isinstance(queries, np.ndarray):  # the same refusal as transform_queries'
        with pytest.raises(error, match=f"^{message}"):
            adapter.transform_queries(queries)


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize(("item", "shown"), [(None, "NoneType None"), (3, "int 3")])
def test_embed_refuses_an_item_that_is_not_a_text(tmp_path, kind, item, shown):
    """embed() passed None or a number on to the encoder (search() already refused them): it is now
    named by its position before anything is embedded, on both sides."""
    adapter = make_adapter(info=FAKE_INFO)
    enc = CountingEncoder(dim=16)
    index = AdaptedIndex.build(adapter, enc, ["a", "b"], ["a text", "b text"], cache_dir=tmp_path)
    calls = len(enc.calls)
    with pytest.raises(TypeError, match=f"^item 1 is {shown}, not a text"):
        index.embed(["q", item], kind)
    assert len(enc.calls) == calls


@pytest.mark.parametrize(
    ("texts", "kind", "error", "message"),
    [
        (
            "q",
            "query",
            TypeError,
            r"^AdaptedIndex\.embed\(\) takes a list of texts, not a bare str \(it would be read",
        ),
        (b"q", "document", TypeError, r"^AdaptedIndex\.embed\(\) .* bare bytes .*decode it to str"),
        (["q"], "qeury", ValueError, r"^kind must be one of 'query', 'document'; got 'qeury'$"),
    ],
)
def test_embed_refuses_a_bare_text_and_an_unknown_kind_before_embedding(
    tmp_path, texts, kind, error, message
):
    """A misspelt kind embedded the texts as documents (paid for), then failed with KeyError: 'qeury';
    bare bytes were named item by item as numbers. Each is refused as the store refuses it."""
    adapter = make_adapter(info=FAKE_INFO)
    enc = CountingEncoder(dim=16)
    index = AdaptedIndex.build(adapter, enc, ["a", "b"], ["a text", "b text"], cache_dir=tmp_path)
    calls = len(enc.calls)
    with pytest.raises(error, match=message):
        index.embed(texts, kind)
    assert len(enc.calls) == calls


def test_search_takes_any_iterable_of_texts_once(tmp_path):
    """A generator was spent by the blank check, leaving 'nothing to embed'; numpy integers are a k."""
    adapter = make_adapter(info=FAKE_INFO)
    index = AdaptedIndex.build(adapter, FAKE, ["a", "b", "c"], ["a", "b", "c"], cache_dir=tmp_path)
    hits = index.search(["b", "c"], k=2)
    assert index.search((q for q in ["b", "c"]), k=np.int64(2)) == hits
    assert index.search(("b", "c"), k=2) == hits


@pytest.mark.parametrize(
    ("queries", "k", "message"),
    [
        (np.ones((2, 8)), 0, r"k must be an integer >= 1; got 0"),
        (np.ones((2, 8)), 2.5, r"k must be an integer >= 1; got 2.5"),
        (np.ones((2, 4)), 3, r"queries \(2, 4\) and docs \(5, 8\) must be 2-D arrays of one width"),
        (np.ones(8), 3, r"queries \(8,\) and docs \(5, 8\)"),
        (np.array([[1.0] * 8, [np.nan] * 8]), 3, r"query row 1 has a NaN or inf score"),
    ],
)
def test_exact_search_refuses_what_it_cannot_rank(queries, k, message):
    """A NaN score ranked arbitrarily, a bad k or width failed deep in numpy."""
    docs = np.random.default_rng(0).standard_normal((5, 8))
    with pytest.raises(ValueError, match="^exact_search: " + message):
        exact_search(queries, docs, k)


def test_an_edited_encoder_record_is_named_by_its_manifest(tmp_path):
    """The encoder recreated from an edited manifest no longer has the recorded fingerprint: the
    message named no file and asked to 'pass the original encoder', which search cannot."""
    from search_adaptor.encoders.registry import make_encoder

    info = make_encoder("sentence-transformers").info()  # its record only: the model is not loaded
    adapter = make_adapter(8, info=info)
    vectors = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    AdaptedIndex.from_vectors(adapter, [f"d{i}" for i in range(12)], vectors, info).save(tmp_path / "idx")
    manifest = tmp_path / "idx" / "manifest.json"
    edited = json.loads(manifest.read_text())
    edited["encoder"]["config"]["query_prompt"] = "query: "
    manifest.write_text(json.dumps(edited))
    with pytest.raises(
        ValueError, match=r"idx/manifest.json: encoder: recreated encoder .*the file was edited"
    ):
        AdaptedIndex.load(tmp_path / "idx").search(["a query"], k=2)


#: a recorded model name of the wrong type, empty ones too: ``[]``, ``{}`` and ``0`` were read as the
#: default model (the fingerprint then agreeing), the others failed in ``Path(model)`` as an internal error
WRONG_MODELS = [1.5, -1, True, float("nan"), 1e999, 10**30, ["a"], [], {}, 0]


def _wrong_model_refusal(value: object) -> str:
    """What names a wrong ``config.model``: NaN and inf (json.dumps writes them) are no JSON at all."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"not valid JSON ({'NaN' if value != value else 'Infinity'} is not a JSON number: write null)"
    return "encoder: field 'config.model' must be a string, got "


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index (``idx``) and an adapter (``adapter``) recording the local model, and a corpus (``data``)."""
    from search_adaptor.encoders.registry import make_encoder

    folder = tmp_path_factory.mktemp("recorded")
    info = make_encoder("sentence-transformers").info()  # its record only: the model is not loaded
    adapter = make_adapter(8, info=info)
    adapter.save(folder / "adapter")
    vectors = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    AdaptedIndex.from_vectors(adapter, [f"d{i}" for i in range(12)], vectors, info).save(folder / "idx")
    (folder / "data").mkdir()
    (folder / "data" / "corpus.jsonl").write_text(json.dumps({"_id": "d0", "text": "a document"}) + "\n")
    return folder


def _record_model(json_file: Path, value: Any) -> None:
    """Set ``encoder.config.model`` in ``json_file``, as an edit by hand would."""
    edited = json.loads(json_file.read_text())
    edited["encoder"]["config"]["model"] = value
    json_file.write_text(json.dumps(edited))


def _refused(capsys: pytest.CaptureFixture[str], rc: int, *parts: str) -> None:
    """Status 2 and one line naming each of ``parts`` (the file, the field)."""
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "internal error" not in err, err
    for part in parts:
        assert part in err, (part, err)


@pytest.mark.parametrize("value", WRONG_MODELS, ids=repr)
def test_a_recorded_model_of_the_wrong_type_in_a_manifest_is_refused_naming_it(
    recorded, tmp_path, capsys, value
):
    """``search`` on an index whose manifest records ``encoder.config.model`` 1.5 said "internal error
    (TypeError: expected str, bytes or os.PathLike object, not float)", status 1."""
    shutil.copytree(recorded / "idx", tmp_path / "idx")
    _record_model(tmp_path / "idx" / "manifest.json", value)
    rc = main(["search", str(tmp_path / "idx"), "wing lift"])
    manifest = str(tmp_path / "idx" / "manifest.json")
    _refused(capsys, rc, manifest, _wrong_model_refusal(value))


@pytest.mark.parametrize("value", WRONG_MODELS, ids=repr)
def test_a_recorded_model_of_the_wrong_type_in_an_adapter_is_refused_naming_it(
    recorded, tmp_path, capsys, value
):
    """``index --adapter`` with an adapter whose config.json records ``encoder.config.model`` ["a"]
    said "internal error (TypeError ...)", status 1; nothing is written."""
    shutil.copytree(recorded / "adapter", tmp_path / "adapter")
    _record_model(tmp_path / "adapter" / "config.json", value)
    args = ["index", str(recorded / "data"), "--adapter", str(tmp_path / "adapter")]
    rc = main([*args, "--out", str(tmp_path / "out"), "--quiet", "--cache", str(tmp_path / "cache")])
    config = str(tmp_path / "adapter" / "config.json")
    _refused(capsys, rc, config, _wrong_model_refusal(value))
    assert not (tmp_path / "out").exists()


def test_an_index_of_no_documents_says_so(synthetic):
    """It said "0 document ids for vectors of shape (0, 16); give one 2-D row per id", a mismatch."""
    with pytest.raises(ValueError, match=r"^no documents to index: doc_ids and vectors are empty; give at"):
        AdaptedIndex.from_vectors(make_adapter(info=FAKE_INFO), [], np.zeros((0, 16), np.float32), FAKE_INFO)


def test_an_index_refuses_pickle_and_deepcopy_in_one_line_naming_save_and_load(synthetic, tmp_path):
    """A worker pool pickling an index met "cannot pickle '_thread.lock' object", naming no way out."""
    index = AdaptedIndex.from_vectors(
        make_adapter(info=FAKE_INFO), synthetic["dids"], synthetic["D"], FAKE_INFO
    )
    for copy_it in (pickle.dumps, copy.deepcopy, copy.copy):
        with pytest.raises(TypeError) as err:
            copy_it(index)
        assert str(err.value) == (
            "an AdaptedIndex cannot be pickled or copied (it holds a FAISS index, locks and its encoders); "
            "save it with index.save(folder) and open it in each process with AdaptedIndex.load(folder)"
        )
    index.save(tmp_path / "i")  # the way it travels
    assert AdaptedIndex.load(tmp_path / "i").search(synthetic["Q"][:2], 3) == index.search(
        synthetic["Q"][:2], 3
    )


def test_a_damaged_adapter_inside_an_index_says_to_rebuild_the_index(recorded, tmp_path, capsys):
    """The index's own copy of its adapter, damaged, said "re-save it with SearchAdaptor.save or
    train it again": the fix is the index's, to build it again."""
    shutil.copytree(recorded / "idx", tmp_path / "idx")
    weights = next((tmp_path / "idx").glob("*/adapter.safetensors"))
    weights.unlink()
    rc = main(["search", str(tmp_path / "idx"), "wing lift"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(weights) in err, err
    assert err.endswith("rebuild the index with `search-adaptor index`") and "SearchAdaptor.save" not in err


def test_hnsw_backend_finds_the_exact_neighbours(synthetic, tmp_path):
    adapter = make_adapter(info=FAKE_INFO)
    exact = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    hnsw = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO, backend="hnsw")
    hnsw.save(tmp_path / "h")
    hnsw = AdaptedIndex.load(tmp_path / "h")
    assert hnsw.manifest["hnsw"]["m"] == 32
    truth, approx = exact.search(synthetic["Q"], 10), hnsw.search(synthetic["Q"], 10)
    recall = np.mean(
        [len({d for d, _ in a} & {d for d, _ in t}) / 10 for a, t in zip(approx, truth, strict=True)]
    )
    assert recall > 0.95
    with pytest.raises(ValueError, match="backend must be one of flat, hnsw"):
        AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO, backend="ivf")


def test_vectors_that_rank_by_nothing_are_refused_by_row(synthetic):
    """search_adapted answered [[]] for a NaN row and scores of 10.4 as "cosines" for a row of
    length 5, and search() ranked documents by a zero query vector (all scored 0)."""
    adapter = make_adapter(info=FAKE_INFO)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    good = adapter.transform_queries(synthetic["Q"][:3])
    assert index.search_adapted(good, 5) == index.search(synthetic["Q"][:3], 5)
    for value, why in ((np.nan, "contains NaN or inf"), (0.0, "is all zeros"), (5.0, "has length")):
        bad = good.copy()
        bad[1] = value if value != 5.0 else good[1] * 5
        with pytest.raises(ValueError, match=rf"^queries: row 1 {why}.*unit-length vectors"):
            index.search_adapted(bad, 5)
    base = synthetic["Q"][:3].copy()
    base[2] = 0
    with pytest.raises(ValueError, match=r"^queries: row 2 is all zeros: it has no direction to rank by$"):
        index.search(base, 5)


def test_hnsw_answers_k_hits_whatever_its_breadth(synthetic):
    """A breadth below k (``--ef-search 1``) answered 21 hits for k=100, and even the default one
    fewer than the corpus for k = n_docs, in silence; a breadth of 2**31-1 failed every search (a
    2**31-candidate allocation). Now the walk is at least k and at most the corpus wide, rows it
    still leaves short are searched exactly, and a wide-enough breadth keeps its hits."""
    adapter = make_adapter(info=FAKE_INFO)
    exact = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    hnsw = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO, backend="hnsw")
    Q, n = synthetic["Q"][:20], len(synthetic["dids"])
    wide = hnsw.search(Q, 10)
    for ef, k in ((1, 100), (128, n), (2**31 - 1, 5)):
        hnsw.ef_search = ef
        hits = hnsw.search(Q, k)
        assert all(len(row) == k and len({d for d, _ in row}) == k for row in hits), (ef, k)
        if k == n:
            assert [sorted(d for d, _ in row) for row in hits] == [sorted(synthetic["dids"])] * len(Q)
    hnsw.ef_search = 128
    assert hnsw.search(Q, 10) == wide  # an ordinary breadth searches as before
    assert (
        sum(
            len({d for d, _ in a} & {d for d, _ in t}) for a, t in zip(wide, exact.search(Q, 10), strict=True)
        )
        > 190
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"hnsw_m": 0},
            r"hnsw_m must be an integer from 2 to 1024; got 0",
        ),  # FAISS aborted the process
        ({"hnsw_m": 1}, r"hnsw_m must be an integer from 2 to 1024; got 1"),  # FAISS segfaulted
        ({"hnsw_m": 16.0}, r"hnsw_m must be an integer from 2 to 1024; got 16\.0"),
        ({"hnsw_m": True}, r"hnsw_m must be an integer from 2 to 1024; got True"),
        (
            {"ef_search": 0},
            r"ef_search must be an integer from 1 to 2147483647; got 0",
        ),  # 1 hit, not k
        ({"ef_search": "64"}, r"ef_search must be an integer from 1 to 2147483647; got '64'"),
        (
            {"ef_search": 2**31},
            r"ef_search must be an integer from 1 to 2147483647; got 2147483648",
        ),
        ({"size": 2.5}, r"size must be an integer from 1 to 16; got 2\.5"),
        ({"size": 17}, r"size must be an integer from 1 to 16; got 17"),
    ],
)
def test_index_options_are_refused_before_faiss_sees_them(tmp_path, options, message):
    """hnsw_m 0 killed the Python process (a FAISS assertion), ef_search 0 answered 1 hit for k=5, and
    a float or string setting was coerced; each is refused in one line before anything is embedded."""
    adapter = make_adapter(info=FAKE_INFO)
    enc = CountingEncoder(dim=16)
    with pytest.raises(ValueError, match=f"^{message}$"):
        AdaptedIndex.from_vectors(adapter, ["a", "b"], np.ones((2, 16)), FAKE_INFO, backend="hnsw", **options)
    with pytest.raises(ValueError, match=f"^{message}$"):
        AdaptedIndex.build(adapter, enc, ["a"], ["a text"], cache_dir=tmp_path, backend="hnsw", **options)
    assert enc.calls == []  # nothing embedded
    with pytest.raises(TypeError, match=r"^'hnsw_M' is not an index option; the options are backend, hnsw_m"):
        AdaptedIndex.from_vectors(adapter, ["a"], np.ones((1, 16)), FAKE_INFO, hnsw_M=8)


def test_hnsw_settings_are_ints_in_the_manifest_and_checked_on_load(synthetic, tmp_path):
    """numpy integers are taken (and written as JSON numbers); a manifest whose HNSW settings FAISS
    cannot use (written by an older version, or edited) is refused naming the file and the field."""
    adapter = make_adapter(info=FAKE_INFO)
    dids, D = synthetic["dids"], synthetic["D"]
    index = AdaptedIndex.from_vectors(
        adapter, dids, D, FAKE_INFO, backend="hnsw", hnsw_m=np.int64(8), ef_search=np.int32(1)
    )
    assert [len(row) for row in index.search(synthetic["Q"][:3], k=5)] == [5, 5, 5]
    index.save(tmp_path / "h")
    manifest = tmp_path / "h" / "manifest.json"
    saved = json.loads(manifest.read_text())
    assert saved["hnsw"] == {"m": 8, "ef_construction": 200, "ef_search": 1}
    assert AdaptedIndex.load(tmp_path / "h").n_docs == len(dids)
    for field, value, message in [
        ("m", 0, "field hnsw.m must be an integer from 2 to 1024; got 0"),
        ("ef_search", 0, "field hnsw.ef_search must be an integer from 1 to 2147483647; got 0"),
        (
            "ef_construction",
            2.5,
            "field hnsw.ef_construction must be an integer from 1 to 2147483647; got 2.5",
        ),
    ]:
        manifest.write_text(json.dumps({**saved, "hnsw": {**saved["hnsw"], field: value}}))
        with pytest.raises(ValueError, match=rf"h/manifest\.json: {message}; rebuild the index"):
            AdaptedIndex.load(tmp_path / "h")
    manifest.write_text(json.dumps({key: value for key, value in saved.items() if key != "hnsw"}))
    with pytest.raises(
        ValueError, match=r"h/manifest\.json: backend 'hnsw' needs the field 'hnsw' .* got null"
    ):
        AdaptedIndex.load(tmp_path / "h")


def test_hnsw_ef_search_is_the_manifests_on_load_and_the_one_in_effect_on_save(synthetic, tmp_path):
    """load() checked the manifest's ef_search but searched with the FAISS file's, and save() wrote the
    build option whatever search used: the manifest and the search disagreed both ways."""
    adapter = make_adapter(info=FAKE_INFO)
    index = AdaptedIndex.from_vectors(
        adapter, synthetic["dids"], synthetic["D"], FAKE_INFO, backend="hnsw", hnsw_m=8, ef_search=16
    )
    index.save(tmp_path / "h")
    manifest = tmp_path / "h" / "manifest.json"
    saved = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**saved, "hnsw": {**saved["hnsw"], "ef_search": 64}}))  # raised by hand
    loaded = AdaptedIndex.load(tmp_path / "h")
    assert loaded.faiss_index.hnsw.efSearch == 64 and loaded.ef_search == 64
    loaded.ef_search = np.int64(200)  # the supported way: checked, recorded by save
    assert loaded.faiss_index.hnsw.efSearch == 200
    loaded.save(tmp_path / "h2")
    assert json.loads((tmp_path / "h2" / "manifest.json").read_text())["hnsw"]["ef_search"] == 200
    assert AdaptedIndex.load(tmp_path / "h2").faiss_index.hnsw.efSearch == 200
    loaded.faiss_index.hnsw.efSearch = 99  # set on FAISS itself: save still writes what search uses
    loaded.save(tmp_path / "h2")
    assert json.loads((tmp_path / "h2" / "manifest.json").read_text())["hnsw"]["ef_search"] == 99
    for bad in (0, 2.5, "64"):
        with pytest.raises(
            ValueError,
            match=rf"^ef_search must be an integer from 1 to 2147483647; got {bad!r}$",
        ):
            loaded.ef_search = bad
    assert loaded.ef_search == 99  # unchanged by a refusal
    loaded.faiss_index.hnsw.efSearch = 0  # a breadth load() would refuse is not written
    with pytest.raises(ValueError, match=r"^faiss_index\.hnsw\.efSearch must be an integer from 1"):
        loaded.save(tmp_path / "h2")
    assert AdaptedIndex.load(tmp_path / "h2").ef_search == 99
    flat = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO)
    assert flat.ef_search is None
    with pytest.raises(ValueError, match=r"^ef_search applies to an HNSW index; this index is flat"):
        flat.ef_search = 64


@pytest.mark.parametrize(("field", "value"), [("m", 16), ("ef_construction", 100)])
def test_load_refuses_an_hnsw_manifest_that_describes_another_graph(synthetic, tmp_path, field, value):
    """The graph's degree and construction breadth are fixed in index.faiss when it is built; a manifest
    that says otherwise (an edit) was loaded and trusted."""
    adapter = make_adapter(info=FAKE_INFO)
    AdaptedIndex.from_vectors(
        adapter, synthetic["dids"], synthetic["D"], FAKE_INFO, backend="hnsw", hnsw_m=8
    ).save(tmp_path / "h")
    manifest = tmp_path / "h" / "manifest.json"
    saved = json.loads(manifest.read_text())
    built = saved["hnsw"][field]
    manifest.write_text(json.dumps({**saved, "hnsw": {**saved["hnsw"], field: value}}))
    with pytest.raises(ValueError) as refused:
        AdaptedIndex.load(tmp_path / "h")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        f"{manifest}: field hnsw.{field} is {value} but {tmp_path / 'h' / 'index.faiss'}"
    )
    assert message.endswith(
        f"was built with {built}; set it back to {built} (it is fixed when the graph is built)"
    )


def test_a_query_model_is_refused_for_an_index_whose_queries_are_the_documents_models(synthetic, tmp_path):
    """``query_encoder`` is a cross-model index's query model; one index model embeds both sides here."""
    adapter = make_adapter(info=FAKE_INFO)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO, encoder=FAKE)
    index.save(tmp_path / "idx")
    message = r"query_encoder given, but this index's queries are embedded by its documents' model"
    with pytest.raises(
        ValueError, match=rf"idx/manifest\.json: {message} \(fake-model\); pass that model as encoder"
    ):
        AdaptedIndex.load(tmp_path / "idx", query_encoder=CountingEncoder(dim=16))
    with pytest.raises(ValueError, match=rf"^{message}"):
        AdaptedIndex(adapter, index.faiss_index, index.doc_ids, index.manifest, query_encoder=FAKE)
    assert index.encoder_for("query") is index.encoder_for("document") is index.encoder


def test_integer_ids_and_array_likes_are_taken_as_the_corpus_readers_take_them(synthetic, tmp_path):
    """Integer ids (Python or numpy) became an index that searched and saved but could not be loaded
    (or, numpy's, could not be saved): they are taken as their text, as a corpus file's integer _id
    and fit's ids are. A list of vectors failed on ``.ndim``; a model name for encoder_info, in dict()."""
    adapter = make_adapter(info=FAKE_INFO)
    D, Q = synthetic["D"][:50], synthetic["Q"][:3]
    named = AdaptedIndex.from_vectors(adapter, [str(i) for i in range(50)], D, FAKE_INFO)
    for ids in (list(range(50)), np.arange(50), np.arange(50).astype(str)):
        index = AdaptedIndex.from_vectors(adapter, ids, D, FAKE_INFO)
        assert index.doc_ids == named.doc_ids and index.search(Q, k=3) == named.search(Q, k=3)
        index.save(tmp_path / "ints")
        assert AdaptedIndex.load(tmp_path / "ints").search(Q, k=3) == named.search(Q, k=3)
    assert AdaptedIndex.from_vectors(adapter, named.doc_ids, D.tolist(), FAKE_INFO).search(Q, k=3) == (
        named.search(Q, k=3)
    )
    index = AdaptedIndex.build(adapter, FAKE, range(3), ["a", "b", "c"], cache_dir=tmp_path / "cache")
    assert index.doc_ids == ["0", "1", "2"]
    for ids, message in [
        (
            [*range(49), None],
            r"doc_ids: id 49 is NoneType None, not a string; give each document a string id",
        ),
        ([*range(49), 1.5], r"doc_ids: id 49 is float 1\.5, not a string; .* \[str\(i\) for i in ids\]"),
        ([True, *range(49)], r"doc_ids: id 0 is bool True, not a string"),
        ([1, "1", *range(2, 50)], r"the document vectors: document id '1' appears twice"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}"):
            AdaptedIndex.from_vectors(adapter, ids, D, FAKE_INFO)
    for vectors, message in [
        (D > 0, r"vectors: expected a 2-D array of numbers, got bool of shape \(50, 16\)"),
        ([[1.0] * 16, [1.0]] * 25, r"vectors: expected a 2-D array of numbers, got rows of unequal lengths"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            AdaptedIndex.from_vectors(adapter, named.doc_ids, vectors, FAKE_INFO)
    with pytest.raises(ValueError, match=r"^encoder_info must be an object, got str; give the info dict"):
        AdaptedIndex.from_vectors(adapter, named.doc_ids, D, "my-model")
    with pytest.raises(ValueError, match=r"^encoder_info field 'fingerprint' must be a string; give"):
        AdaptedIndex.from_vectors(adapter, named.doc_ids, D, {"model": "my-model"})


def test_load_refuses_parts_that_do_not_belong_together(synthetic, tmp_path):
    adapter = make_adapter(info=FAKE_INFO)
    AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO).save(tmp_path / "idx")
    with pytest.raises(CompatibilityError, match="encoder given is fake:"):
        AdaptedIndex.load(tmp_path / "idx", encoder=CountingEncoder(dim=8))
    make_adapter(info=FAKE_INFO, seed=1).save(tmp_path / "idx" / "adapter")  # swapped behind its back
    with pytest.raises(CompatibilityError, match=r"idx/adapter: this adapter .* rebuild the index"):
        AdaptedIndex.load(tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match=r"manifest\.json: not found; build an index"):
        AdaptedIndex.load(tmp_path)
    with pytest.raises(CompatibilityError, match="trained on embeddings of fake:"):
        other = CountingEncoder(dim=17).info()
        AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], other)


def test_save_replaces_an_index_but_never_other_files(synthetic, tmp_path):
    adapter = make_adapter(info=FAKE_INFO)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"][:50], synthetic["D"][:50], FAKE_INFO)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes: exists and is not an index"):
        index.save(tmp_path / "notes")
    with pytest.raises(FileExistsError, match=r"idx: .*todo\.txt is a file, not a folder; choose another"):
        index.save(tmp_path / "notes" / "todo.txt" / "idx")
    index.save(tmp_path / "idx")
    AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], FAKE_INFO).save(tmp_path / "idx")
    assert AdaptedIndex.load(tmp_path / "idx").n_docs == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "notes"]  # no temporary leftovers


def test_encoder_is_recreated_from_the_manifest(synthetic):
    from search_adaptor.encoders.local import SentenceTransformerEncoder

    st_info = SentenceTransformerEncoder().info()
    adapter = make_adapter(info=st_info)
    index = AdaptedIndex.from_vectors(adapter, synthetic["dids"], synthetic["D"], st_info)
    assert index.encoder.fingerprint == st_info["fingerprint"]  # no model is loaded until a text comes
    pre = {
        "fingerprint": "precomputed:my-model",
        "provider": "precomputed",
        "model": "my-model",
        "config": {},
    }
    index = AdaptedIndex.from_vectors(make_adapter(info=pre), synthetic["dids"], synthetic["D"], pre)
    assert index.search(synthetic["Q"][:2], k=3)  # vectors work
    with pytest.raises(
        ValueError, match=r"built from precomputed vectors \(my-model\): it has no model to embed"
    ):
        index.search(["a text"])


@pytest.mark.slow
def test_cli_index_and_search_with_the_local_model(tmp_path, capsys):
    from search_adaptor.encoders.local import SentenceTransformerEncoder

    data = tmp_path / "data"
    data.mkdir()
    docs = ["Aspirin reduces fever.", "Paris is the capital of France.", "Vitamin D helps bones."]
    (data / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs))
    )
    (data / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "capital of France"}) + "\n")
    make_adapter(384, info=SentenceTransformerEncoder().info(), mode="query_only").save(tmp_path / "a")
    args = ["index", str(data), "--adapter", str(tmp_path / "a"), "--out", str(tmp_path / "idx")]
    assert main([*args, "--quiet", "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "3 documents indexed (local engine, flat, 384-d" in out and "3 texts sent" in out
    assert sorted(p.name for p in (tmp_path / "idx" / "vectors").iterdir())[0] == "_manifest.json"
    assert main(["search", str(tmp_path / "idx"), "capital of France", "-k", "2", "-o", "json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == "d1" and len(hits) == 2
    assert main(["search", str(tmp_path / "nothing"), "x"]) == 2
    assert "manifest.json: not found" in capsys.readouterr().err


def test_hnsw_options_are_refused_on_a_flat_index(tmp_path):
    """hnsw_m and ef_search with backend="flat" (the default) were dropped without a word: the index
    was exact, not the graph asked for. The refusal names the arguments a Python caller passed, not
    the command line's flags (which `search-adaptor index` puts in their place)."""
    adapter = make_adapter(info=FAKE_INFO)
    with pytest.raises(
        ValueError,
        match=r"^ef_search applies to backend='hnsw'; this index is flat \(exact\)",
    ):
        AdaptedIndex.from_vectors(adapter, ["a"], np.ones((1, 16)), FAKE_INFO, ef_search=64)
    with pytest.raises(
        ValueError,
        match=r"^hnsw_m and ef_search apply to backend='hnsw'",
    ):
        build_index(Path("unused"), FAKE, adapter, tmp_path / "index", hnsw_m=8, ef_search=64)
    assert not (tmp_path / "index").exists()
