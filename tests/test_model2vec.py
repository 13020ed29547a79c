"""The model2vec provider (static token-embedding models) and ``distill`` (making one, offline)."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("model2vec", reason="needs model2vec (the model2vec extra)")

from model2vec import StaticModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from search_adaptor.cli import main
from search_adaptor.distill import MARKER, distill
from search_adaptor.encoders.base import EncoderError, ImagesUnsupported
from search_adaptor.encoders.registry import from_info, make_encoder
from search_adaptor.images import ImageRef
from search_adaptor.store import EmbeddingStore, StoreStats
from tiny_models import WORDS, tiny_bert


def static_model(folder: Path, dim: int = 16, seed: int = 0) -> Path:
    """A small model2vec folder: a word-level tokenizer over :data:`WORDS` and random vectors."""
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    vectors = np.random.default_rng(seed).standard_normal((len(vocab), dim)).astype(np.float32)
    config = {"model_type": "model2vec", "hidden_dim": dim, "tokenizer_name": str(folder)}
    StaticModel(vectors, tokenizer, config=config, normalize=True).save_pretrained(folder)
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return static_model(tmp_path / "m2v")


def test_encodes_as_the_static_model_does(model_dir: Path) -> None:
    enc = make_encoder("model2vec", model=str(model_dir))
    texts = ["the cat sat on the mat", "a red square", "Tokyo at night"]
    vecs = enc.encode_queries(texts)
    direct = StaticModel.from_pretrained(model_dir).encode(texts, normalize=True)
    assert vecs.dtype == np.float32 and vecs.shape == (3, 16)
    np.testing.assert_allclose(vecs, direct, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(enc.encode_corpus(texts), vecs)  # no query/document modes
    assert enc.batch_size == 1024 and enc.request_tokens(texts, "query") is None


def test_the_fingerprint_is_the_content_not_the_path(model_dir: Path, tmp_path: Path) -> None:
    enc = make_encoder("model2vec", model=str(model_dir))
    moved = shutil.copytree(model_dir, tmp_path / "elsewhere" / "m2v")
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "tokenizer_name": "/another/machine"}))
    assert make_encoder("model2vec", model=str(moved)).fingerprint == enc.fingerprint
    other = static_model(tmp_path / "other", seed=1)  # another distillation: other vectors
    assert make_encoder("model2vec", model=str(other)).fingerprint != enc.fingerprint
    (moved / "config.json").write_text(json.dumps({**config, "max_length": 8}))  # cuts texts: other vectors
    assert make_encoder("model2vec", model=str(moved)).fingerprint != enc.fingerprint
    assert enc.fingerprint.startswith("model2vec:m2v:") and len(enc.config()["weights_sha256"]) == 64


def test_from_info_recreates_it(model_dir: Path) -> None:
    enc = make_encoder("model2vec", model=str(model_dir), batch_size=8)
    again = from_info(json.loads(json.dumps(enc.info())), batch_size=4)
    assert again.fingerprint == enc.fingerprint and again.batch_size == 4
    np.testing.assert_array_equal(again.encode_queries(["a cat"]), enc.encode_queries(["a cat"]))


def test_the_store_embeds_each_text_once(model_dir: Path, tmp_path: Path) -> None:
    enc = make_encoder("model2vec", model=str(model_dir), batch_size=2)
    texts = ["the cat", "a dog", "the cat", "red square", "blue circle"]
    first, second = StoreStats(), StoreStats()
    with EmbeddingStore(enc, tmp_path / "cache") as store:
        a = store.embed(texts, "query", stats=first)
        b = store.embed(texts, "query", stats=second)
    assert (first.encoded, first.batches, second.encoded, second.cached) == (4, 2, 0, 4)
    np.testing.assert_array_equal(a, b)


def test_a_query_takes_well_under_a_millisecond(model_dir: Path) -> None:
    enc = make_encoder("model2vec", model=str(model_dir))
    enc.encode_batch(["warm up"], "query")
    times = []
    for i in range(200):
        start = time.perf_counter()
        enc.encode_batch([f"a photo of the city at night {i}"], "query")
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 2e-3  # microseconds in practice; a loaded CI box still passes


def test_refuses_images_and_what_does_not_apply(model_dir: Path, tmp_path: Path) -> None:
    enc = make_encoder("model2vec", model=str(model_dir))
    with pytest.raises(ImagesUnsupported, match=r"^model2vec: .*m2v embeds text only, and \S+ is an image;"):
        enc.encode_corpus([ImageRef("https://example.com/a.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        EncoderError, match=r"model2vec: .*empty is not a model2vec folder \(no model\.safetensors, "
    ):
        make_encoder("model2vec", model=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"model2vec: pass the model folder"):
        make_encoder("model2vec")
    with pytest.raises(ValueError, match=r"model2vec: dimensions does not apply to a local model"):
        make_encoder("model2vec", model=str(model_dir), dimensions=8)
    with pytest.raises(ValueError, match=r"model2vec: timeout does not apply to a model in a folder"):
        make_encoder("model2vec", model=str(model_dir), timeout=3.0)


# -- distill -----------------------------------------------------------------------------------------


def test_distill_writes_a_model2vec_folder_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tiny_bert(tmp_path / "bert")
    out = distill(tmp_path / "static", model=str(base), dim=16, device="cpu")
    assert out == (tmp_path / "static").resolve()
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= {p.name for p in out.iterdir()}
    record = json.loads((out / MARKER).read_text())
    assert record["base_model"] == str(base) and record["dim"] == 16 and record["seconds"] >= 0
    enc = make_encoder("model2vec", model=str(out))
    vecs = enc.encode_queries(["the cat sat on the mat", "tokyo river at night"])
    assert vecs.shape == (2, 16) and not np.allclose(vecs[0], vecs[1])
    again = distill(out, model=str(base), dim=8, device="cpu")  # a folder distill wrote is replaced
    assert make_encoder("model2vec", model=str(again)).fingerprint != enc.fingerprint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".static")]  # nothing staged is left
    (out / "NOTES.md").write_text("benchmark notes")  # a file of the user's: rerunning would delete it
    with pytest.raises(FileExistsError, match=r"NOTES\.md: not part of a folder written by `search-adaptor "):
        distill(out, model=str(base), dim=8, device="cpu")
    assert (out / "NOTES.md").read_text() == "benchmark notes" and (out / MARKER).is_file()


def test_distill_records_the_base_model_by_the_name_given_not_the_folder_it_was_found_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default model resolves to a folder inside site-packages: that machine path stayed in the
    distilled config.json, a folder meant to be copied to other machines."""
    base = tiny_bert(tmp_path / "bert")
    monkeypatch.setattr("search_adaptor.distill.resolve_model", lambda name: str(base))
    out = distill(tmp_path / "static", model="org/base-model", dim=8, device="cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["tokenizer_name"] == "org/base-model"
    assert str(tmp_path) not in "".join(p.read_text(errors="ignore") for p in out.iterdir())
    assert make_encoder("model2vec", model=str(out)).encode_queries(["the cat"]).shape == (1, 8)


def test_distill_quiet_hides_model2vecs_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    """Every other command's --quiet hides its bars; distill had none, and model2vec drew its
    "Encoding tokens" bar over the whole vocabulary."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tiny_bert(tmp_path / "bert")
    for quiet, shown in (([], True), (["--quiet"], False)):
        argv = ["distill", "--out", str(tmp_path / "static"), "--model", str(base), "--dim", "8", *quiet]
        assert main(argv) == 0
        out, err = capfd.readouterr()
        assert ("Encoding tokens" in err) is shown, err
        assert out.startswith("static model written to ")


def test_distill_replaces_what_its_model2vec_wrote_and_still_refuses_a_users_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """distill's list of its files was model2vec 0.10.0's: a model2vec writing one more file made
    rerunning distill into its own folder refuse that file ('tokenizer_config.json: not part of a
    folder written by `search-adaptor distill`'). distill.json now names what model2vec wrote in
    that run, and those are replaced; a file put there since, or one a hand-edited name pattern
    would pass, is still refused, and the folder is left as it was."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save = StaticModel.save_pretrained

    def save_one_more(self: StaticModel, path: Path, *args: object, **kwargs: object) -> None:
        save(self, path, *args, **kwargs)
        (Path(path) / "tokenizer_config.json").write_text("{}")  # as a later model2vec might

    monkeypatch.setattr(StaticModel, "save_pretrained", save_one_more)
    base = tiny_bert(tmp_path / "bert")
    out = distill(tmp_path / "static", model=str(base), dim=8, device="cpu")
    again = distill(out, model=str(base), dim=4, device="cpu")  # its own files: replaced
    record = json.loads((again / MARKER).read_text())
    assert record["dim"] == 4 and "tokenizer_config.json" in record["files"] and MARKER not in record["files"]
    assert set(record["files"]) | {MARKER} == {p.name for p in out.iterdir()}
    (out / "NOTES.md").write_text("benchmark notes")
    with pytest.raises(FileExistsError, match=r"NOTES\.md: not part of a folder written by `search-adaptor "):
        distill(out, model=str(base), dim=8, device="cpu")
    for edit in ("*", "NOTES.md*", "[N]OTES.md", "../NOTES.md"):  # by hand: patterns and paths
        (out / MARKER).write_text(json.dumps({**record, "files": [*record["files"], edit]}))
        with pytest.raises(FileExistsError, match=r"NOTES\.md: not part of a folder written by"):
            distill(out, model=str(base), dim=8, device="cpu")
    assert (out / "NOTES.md").read_text() == "benchmark notes" and (out / "tokenizer_config.json").is_file()


def test_distill_refuses_before_any_work(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
    for dim in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"distill: dim must be a positive integer"):
            distill(tmp_path / "out", model=str(base), dim=dim)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"distill: dim=64 is more than .*base's 32 dimensions; choose 32 or fewer"
    ):
        distill(tmp_path / "out", model=str(base), dim=64)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(
        FileExistsError, match=r"busy: exists and is not a folder written by `search-adaptor distill`"
    ):
        distill(tmp_path / "busy", model=str(base), dim=16)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_distill_from_what_is_not_a_transformers_model_says_what_it_is_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model2vec folder (what --query-model takes) or another folder with a config.json given to
    distill --model got transformers' message of several lines, advising to upgrade transformers
    (which does not help); each is named for what it is now, before model2vec is called."""
    minilm = "sentence-transformers/all-MiniLM-L6-v2"
    static = static_model(tmp_path / "static")
    (static / MARKER).write_text(json.dumps({"base_model": minilm}))
    downloaded = static_model(tmp_path / "potion")  # a model2vec model not made by distill
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"library": "x"}')
    modules_only = tmp_path / "st-old"
    modules_only.mkdir()
    (modules_only / "modules.json").write_text("[]")
    fix = f"give the folder of a sentence-transformers or transformers model, or a hub id ({minilm})"
    is_static = 'is a model2vec static model (its config.json says model_type "model2vec"), not a '
    use = "or use it as it is (--query-provider model2vec --query-model"
    expected = {
        static: f"{static} {is_static}sentence-transformers model: distill from the model it came from "
        f"({minilm}, says its distill.json), {use} {static})",
        downloaded: f"{downloaded} {is_static}sentence-transformers model: distill from the model it came "
        f"from, {use} {downloaded})",
        other: f"{other}: not a sentence-transformers or transformers model (its config.json has no "
        f"model_type); {fix}",
        modules_only: f"{modules_only}: no config.json, so no transformers model to run over its "
        f"vocabulary; {fix}",
    }
    for folder, message in expected.items():
        with pytest.raises(ValueError) as info:
            distill(tmp_path / "out", model=str(folder), dim=8)
        assert str(info.value) == f"distill: {message}"
    assert not (tmp_path / "out").exists()
    assert main(["distill", "--out", str(tmp_path / "out"), "--model", str(other), "--dim", "8"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # a hub id: its config.json as the hub gives it (here, a model2vec model's)
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(downloaded / name))
    with pytest.raises(ValueError, match=r"^distill: minishlab/potion-base-8M is a model2vec static model"):
        distill(tmp_path / "out", model="minishlab/potion-base-8M", dim=8)


def test_a_model_folder_given_relative_is_recorded_absolute(tmp_path, monkeypatch):
    """`--model models/static` recorded as typed made every adapter and index that records it fail
    from any other working folder (search and serve have no flag to point at it)."""
    from search_adaptor.encoders.local import SentenceTransformerEncoder

    (tmp_path / "work" / "models").mkdir(parents=True)
    static_model(tmp_path / "work" / "models" / "static")
    monkeypatch.chdir(tmp_path / "work")
    made = make_encoder("model2vec", model="models/static")
    assert made.model == str(tmp_path / "work" / "models" / "static")
    expected = made.encode_queries(["the cat sat"])
    monkeypatch.chdir(tmp_path)
    again = from_info(made.info())
    assert again.fingerprint == made.fingerprint
    np.testing.assert_array_equal(again.encode_queries(["the cat sat"]), expected)
    monkeypatch.chdir(tmp_path / "work")
    assert SentenceTransformerEncoder("models").model == str(
        tmp_path / "work" / "models"
    )  # a folder: as loaded
    assert (
        SentenceTransformerEncoder("sentence-transformers/all-MiniLM-L6-v2").model
        == "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_a_provider_or_model_flag_given_alone_takes_the_rest_from_the_adapter(tmp_path):
    """--query-model (the recorded folder itself) alone fell back to sentence-transformers, and
    --query-provider model2vec alone asked for a folder; --model alone, likewise, for the documents."""
    import argparse

    from search_adaptor.cli import _encoder

    queries = make_encoder("model2vec", model=str(static_model(tmp_path / "queries")))
    documents = make_encoder("model2vec", model=str(static_model(tmp_path / "documents", seed=1)))
    adapter = argparse.Namespace(encoder_=documents.info(), query_encoder_=queries.info())
    flags = dict.fromkeys(
        ("provider", "model", "base_url", "dimensions", "batch_size", "max_concurrency", "timeout"), None
    )
    flags.update({f"query_{k}": None for k in ("provider", "model", "base_url")})
    for side, given, expected in (
        ("query_", {"query_model": str(tmp_path / "queries")}, queries),
        ("query_", {"query_provider": "model2vec"}, queries),
        ("", {"model": str(tmp_path / "documents")}, documents),
        ("", {"provider": "model2vec"}, documents),
    ):
        made = _encoder(argparse.Namespace(**{**flags, **given}), side, adapter)
        assert made.fingerprint == expected.fingerprint, given
    # with no provider anywhere (no adapter, no --provider), a model2vec folder was loaded through
    # sentence-transformers: slower, under another fingerprint, everything embedded again
    for side in ("query_", ""):
        given = {f"{side}model": str(tmp_path / "queries")}
        with pytest.raises(ValueError) as refused:
            _encoder(argparse.Namespace(**{**flags, **given}), side)
        flag = side.replace("_", "-")
        assert str(refused.value) == (
            f"--{flag}model {tmp_path / 'queries'} is a model2vec static model: add "
            f"--{flag}provider model2vec"
        )


def test_a_moved_or_renamed_model_folder_says_what_happened(tmp_path):
    """A recorded folder that was moved was called 'not a model2vec folder ... make one with distill',
    and a renamed copy (the same weights) was refused as another model without saying why."""
    from search_adaptor.model import CompatibilityError
    from test_index import make_adapter

    made = make_encoder("model2vec", model=str(static_model(tmp_path / "static")))
    adapter = make_adapter(16, info=made.info())
    shutil.copytree(tmp_path / "static", tmp_path / "static-v1")
    with pytest.raises(
        CompatibilityError, match=r"a model folder's name is part of its fingerprint, so name it static"
    ):
        adapter.check_encoder(make_encoder("model2vec", model=str(tmp_path / "static-v1")))
    # an index's model given renamed (search/serve --model, --query-model): said as well, not 'pass
    # the query model it was built with' beside two fingerprints that differ by the folder's name alone
    from search_adaptor.index import AdaptedIndex

    AdaptedIndex.build(adapter, made, ["d0", "d1"], ["the cat", "a river"], cache_dir=tmp_path / "c").save(
        tmp_path / "idx"
    )
    renamed = make_encoder("model2vec", model=str(tmp_path / "static-v1"))
    with pytest.raises(CompatibilityError, match=r"folder of another name: .* so name it static again$"):
        AdaptedIndex.load(tmp_path / "idx", encoder=renamed)
    shutil.rmtree(tmp_path / "static")
    with pytest.raises(
        EncoderError, match=r"static: no such folder; a model an adapter or index records must stay"
    ):
        from_info(made.info())
    # named by a flag (fit --query-model), nothing records it yet: how to make one, not 'move it back'
    with pytest.raises(EncoderError, match=r"static: no such folder; make one with `search-adaptor distill"):
        make_encoder("model2vec", model=str(tmp_path / "static"))


def test_a_model_folder_replaced_in_place_says_its_content_changed(tmp_path):
    """Another model written over the recorded folder was called "the file was edited, or written by
    another search-adaptor version", though the index was as built: the folder's content changed."""
    made = make_encoder("model2vec", model=str(static_model(tmp_path / "static")))
    shutil.rmtree(tmp_path / "static")
    static_model(tmp_path / "static", seed=1)  # distilled again: other vectors under the same name
    with pytest.raises(ValueError) as err:
        from_info(made.info())
    assert str(err.value).endswith(
        f"the model folder {tmp_path / 'static'} no longer holds the model it was built with (its files "
        "changed since); put that model back there, or build again with the model it holds now"
    )
    # given by a flag instead (search/serve --query-model DIR; an adapter's check): said as well, not
    # 'pass the query model it was built with' as if another model had been named
    from search_adaptor.model import CompatibilityError
    from test_index import make_adapter

    changed = make_encoder("model2vec", model=str(tmp_path / "static"))
    with pytest.raises(CompatibilityError, match=r"the folder static holds other files than the model"):
        make_adapter(16, info=made.info()).check_encoder(changed)


# --- a damaged or mistaken model folder: one line naming the file and the fix ---------------------


def _set_config(folder: Path, **fields: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def _save_tensors(folder: Path, **tensors: np.ndarray) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: _set_config(d, max_length="lots"),
            r"config\.json: field 'max_length' is \"lots\"; it must be",
        ),
        (lambda d: _set_config(d, max_length=-5), r"config\.json: field 'max_length' is -5; it must be"),
        (
            lambda d: _set_config(d, model_type="bert"),
            r"config\.json: model_type is \"bert\", not \"model2vec\"",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"x" * 200),
            r"model\.safetensors: not a readable safetensors file \(.*\); make the folder again",
        ),
        (
            lambda d: _save_tensors(d, foo=np.zeros((len(WORDS) + 1, 16), np.float32)),
            r"model\.safetensors: no tensor 'embeddings' \(it holds foo\)",
        ),
        (
            lambda d: _save_tensors(d, embeddings=np.zeros((5, 16), np.float32)),
            r"model\.safetensors: its 'embeddings' tensor has shape \[5, 16\] \(no mapping\), "
            rf"but the tokenizer has {len(WORDS) + 1} tokens",
        ),
        (
            lambda d: (d / "tokenizer.json").write_text('{"version": "1.0"}'),
            r"tokenizer\.json: not a readable tokenizer \(.*\); make the folder again",
        ),
    ],
    ids=["max_length-str", "max_length-neg", "model_type", "garbage", "renamed", "rows", "tokenizer"],
)
def test_a_damaged_model_folder_is_refused_in_one_line_naming_the_file(
    model_dir: Path, damage, message: str, tmp_path: Path, capsys
) -> None:
    damage(model_dir)
    with pytest.raises(
        EncoderError, match=rf"^model2vec: {re.escape(str(model_dir))}/{message}.*distill --out DIR"
    ):
        make_encoder("model2vec", model=str(model_dir)).encode_queries(["the cat"])
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text('{"_id": "d1", "text": "the cat sat"}\n')
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "a cat"}\n')
    (data / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    args = [
        "embed",
        str(data),
        "--provider",
        "model2vec",
        "--model",
        str(model_dir),
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(model_dir) in err[0] and "internal error" not in err[0]


def test_the_tokenizer_is_parsed_once_and_a_mapping_is_checked_after_loading(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tokenizer.json was parsed twice on every load (once just for its size); model2vec's own parse
    now serves the vocabulary check, and the folder is read again only to name a file at fault."""
    import tokenizers

    class ParsedAgain:  # model2vec holds its own reference to the class; ours is looked up at use
        @staticmethod
        def from_file(path: str) -> None:
            raise AssertionError(f"{path} parsed a second time")

    with monkeypatch.context() as patch:
        patch.setattr(tokenizers, "Tokenizer", ParsedAgain)
        assert make_encoder("model2vec", model=str(model_dir)).encode_queries(["the cat"]).shape == (1, 16)
    # a mapping model2vec loads without a word, one entry short of the tokenizer: refused after loading
    mapping = np.arange(len(WORDS), dtype=np.int64) % 3
    _save_tensors(model_dir, embeddings=np.ones((3, 16), np.float32), mapping=mapping)
    with pytest.raises(
        EncoderError,
        match=r"model\.safetensors: its 'embeddings' tensor has shape \[3, 16\] \(a mapping of shape "
        rf"\[{len(WORDS)}\]\), but the tokenizer has {len(WORDS) + 1} tokens",
    ):
        make_encoder("model2vec", model=str(model_dir)).encode_queries(["the cat"])


def test_inf_weights_give_the_one_line_error_without_a_numpy_warning(model_dir: Path) -> None:
    vectors = np.ones((len(WORDS) + 1, 16), np.float32)
    vectors[WORDS.index("cat") + 1] = np.inf
    _save_tensors(model_dir, embeddings=vectors)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail here, before the EncoderError
        with pytest.raises(EncoderError, match="contain NaN or inf"):
            make_encoder("model2vec", model=str(model_dir)).encode_queries(["the cat"])
