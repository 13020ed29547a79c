"""The ``onnx`` provider and ``export-encoder``: a sentence-transformers model run by onnxruntime."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="needs onnxruntime (the onnx extra)")
pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (the local extra)")

from search_adaptor.cli import main
from search_adaptor.encoders.base import EncoderError, ImagesUnsupported
from search_adaptor.encoders.local import SentenceTransformerEncoder
from search_adaptor.encoders.onnx import OnnxEncoder, export_encoder
from search_adaptor.encoders.registry import from_info, make_encoder
from search_adaptor.images import ImageRef
from search_adaptor.model import CompatibilityError, SearchAdaptor
from tiny_models import tiny_bert

TEXTS = ["the cat sat on the mat", "a red square", "tokyo river at night", "the dog", "a blue circle photo"]
LONG = "the cat sat on the mat " * 20  # 120 tokens: beyond the tiny model's 32-token window


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def exports(bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    made = {name: export_encoder(root / name, str(bert), int8=name == "int8") for name in ("float32", "int8")}
    return {name: folder for name, (folder, _) in made.items()}


def test_a_float32_export_embeds_as_the_model_does(bert: Path, exports: dict[str, Path]) -> None:
    st, onnx = SentenceTransformerEncoder(str(bert)), make_encoder("onnx", str(exports["float32"]))
    for encode in ("encode_queries", "encode_corpus"):
        ours, theirs = getattr(onnx, encode)([*TEXTS, LONG]), getattr(st, encode)([*TEXTS, LONG])
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=2e-5)
    assert json.loads((exports["float32"] / "encoder.json").read_text())["quantization"] == "float32"


def test_a_model_with_more_than_pooling_and_normalisation_is_refused(bert, tmp_path, monkeypatch) -> None:
    """A Dense (or any module) after pooling was dropped without a word: the export embedded as the
    model without it (cosine 0.986 to the real one, float32 included). A float32 export whose vectors
    differ from its model's is refused too, and nothing is published."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved the modules (the old path warns there); 3-5 have only it
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:
        from sentence_transformers import models as st_models

    from search_adaptor.encoders import onnx

    word = st_models.Transformer(str(bert))
    modules = [word, st_models.Pooling(32), st_models.Dense(32, 8)]  # the tiny BERT is 32-d
    SentenceTransformer(modules=modules).save(str(tmp_path / "dense"))
    with pytest.raises(
        ValueError, match=r"modules are Transformer -> Pooling -> Dense; .* so Dense would be"
    ):
        export_encoder(tmp_path / "out", str(tmp_path / "dense"), int8=False)
    monkeypatch.setattr(onnx, "FLOAT32_AGREEMENT", 1.01)  # as if the graph computed something else
    with pytest.raises(ValueError, match=r"the float32 export's vectors differ from the model's"):
        export_encoder(tmp_path / "out", str(bert), int8=False)
    assert not (tmp_path / "out").exists()


def test_int8_is_close_to_the_model_and_has_its_own_fingerprint(bert: Path, exports: dict[str, Path]) -> None:
    st = SentenceTransformerEncoder(str(bert))
    int8, f32 = OnnxEncoder(str(exports["int8"])), OnnxEncoder(str(exports["float32"]))
    vectors = int8.encode_corpus(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * st.encode_corpus(TEXTS)).sum(axis=1)
    assert cosines.min() > 0.9 and not np.allclose(vectors, f32.encode_corpus(TEXTS), atol=1e-6)
    assert len({int8.fingerprint, f32.fingerprint, st.fingerprint}) == 3
    onnx = pytest.importorskip("onnx")
    graphs = {name: onnx.load(str(folder / "model.onnx")).graph for name, folder in exports.items()}
    ops = {name: {node.op_type for node in graph.node} for name, graph in graphs.items()}
    assert "MatMulInteger" in ops["int8"] and "MatMulInteger" not in ops["float32"]


def test_an_adapter_of_the_float_model_refuses_the_onnx_vectors(bert: Path, exports: dict[str, Path]) -> None:
    st = SentenceTransformerEncoder(str(bert))
    ids = [f"x{i}" for i in range(len(TEXTS))]
    q, d = st.encode_queries(TEXTS), st.encode_corpus(TEXTS)
    qrels = {i: {i: 1} for i in ids}
    adapter = SearchAdaptor(max_steps=2).fit(q, d, qrels, ids, ids, encoder=st)
    with pytest.raises(CompatibilityError, match="onnx:"):
        adapter.check_encoder(OnnxEncoder(str(exports["int8"])))


def test_the_fingerprint_is_the_content_and_from_info_recreates_it(exports: dict[str, Path], tmp_path):
    enc = make_encoder("onnx", str(exports["int8"]))
    moved = Path(shutil.copytree(exports["int8"], tmp_path / "int8"))
    assert OnnxEncoder(str(moved)).fingerprint == enc.fingerprint
    again = from_info(enc.info())
    np.testing.assert_array_equal(again.encode_queries(TEXTS), enc.encode_queries(TEXTS))


def test_a_text_embeds_alike_alone_and_in_any_batch(exports: dict[str, Path]) -> None:
    """int8 activations are quantised per call: each text runs alone, so no batch changes it."""
    enc = OnnxEncoder(str(exports["int8"]))
    together = enc.encode_queries([*TEXTS, LONG])
    for i, text in enumerate([*TEXTS, LONG]):
        np.testing.assert_array_equal(enc.encode_queries([text])[0], together[i])
    np.testing.assert_array_equal(enc.encode_queries(TEXTS[::-1]), together[: len(TEXTS)][::-1])


def test_an_edited_or_incomplete_folder_is_refused_in_one_line(exports: dict[str, Path], tmp_path) -> None:
    folder = Path(shutil.copytree(exports["int8"], tmp_path / "edited"))
    config = json.loads((folder / "encoder.json").read_text())
    edits = [("pooling", "max"), ("window", -1), ("window", True), ("quantization", "int4")]
    edits += [("document_prompt", 3), ("max_positions", 0), ("max_positions", "32"), ("max_positions", True)]
    for field, value in edits:
        (folder / "encoder.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(EncoderError, match=rf"onnx: .*encoder\.json: field '{field}' is .*export-enc"):
            OnnxEncoder(str(folder))
    (folder / "encoder.json").write_text("{not json")
    with pytest.raises(EncoderError, match=r"encoder\.json: not readable JSON"):
        OnnxEncoder(str(folder))
    (folder / "model.onnx").unlink()
    with pytest.raises(EncoderError, match=r"is not a onnx folder \(no model\.onnx\); make one with `"):
        OnnxEncoder(str(folder))
    with pytest.raises(ImagesUnsupported, match="embeds text only"):
        OnnxEncoder(str(exports["int8"])).encode_corpus([ImageRef("https://example.com/a.png")])
    with pytest.raises(ValueError, match=r"onnx: pass the model folder \(`search-adaptor export-encoder"):
        make_encoder("onnx")
    with pytest.raises(ValueError, match="onnx: timeout does not apply to a model in a folder"):
        make_encoder("onnx", str(exports["int8"]), timeout=3.0)


def test_the_command_exports_and_never_replaces_another_folder(bert: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "exported"
    assert main(["export-encoder", "--out", str(out), "--model", str(bert), "--float32"]) == 0
    printed = capsys.readouterr().out
    assert f"--provider onnx --model {out}" in printed and "lowest cosine to the float model" in printed
    assert OnnxEncoder(str(out)).encode_queries(["the cat"]).shape == (1, 32)
    assert main(["export-encoder", "--out", str(out), "--model", str(bert)]) == 0  # its own export: replaced
    assert json.loads((out / "encoder.json").read_text())["quantization"] == "int8"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["export-encoder", "--out", str(other), "--model", str(bert)]) == 2
    assert "is not an ONNX encoder export" in capsys.readouterr().err and (other / "mine.txt").exists()


# --- a damaged folder, and export-encoder over one holding a user's file ----------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:1000]),
            r"model\.onnx: onnxruntime cannot load it \(.*\); make the folder again",
        ),
        (
            lambda d: (d / "tokenizer.json").write_text('{"version": "1.0"}'),
            r"tokenizer\.json: not a readable tokenizer \(.*\); make the folder again",
        ),
        (
            lambda d: (d / "encoder.json").write_text(
                json.dumps({**json.loads((d / "encoder.json").read_text()), "window": 64})
            ),
            r"encoder\.json: field 'window' is 64, but the model in model\.onnx takes at most 32 tokens; "
            "set it to at most 32",
        ),
    ],
    ids=["graph-truncated", "tokenizer", "window-past-positions"],
)
def test_a_damaged_folder_is_refused_in_one_line_naming_the_file(
    exports: dict[str, Path], damage, message: str, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(exports["int8"], tmp_path / "damaged"))
    damage(folder)
    with pytest.raises(
        EncoderError, match=rf"^onnx: {re.escape(str(folder))}/{message}.*export-encoder --out"
    ):
        OnnxEncoder(str(folder)).encode_queries(["the cat"])


def test_the_window_is_checked_against_the_recorded_positions_without_opening_the_graph(
    exports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Loading parsed model.onnx a second time (onnx.load, after onnxruntime) to read one tensor's
    shape; export-encoder records the model's positions in encoder.json instead. A folder exported
    before has none: it loads, its window unchecked, which was silent and is now one warning line
    naming the file and the fix. A model whose config records no positions has null: no warning."""
    onnx = pytest.importorskip("onnx")

    def parsed_again(*_: object, **__: object) -> None:
        raise AssertionError("model.onnx parsed a second time")

    monkeypatch.setattr(onnx, "load", parsed_again)
    monkeypatch.setattr(onnx, "load_model", parsed_again)
    assert json.loads((exports["int8"] / "encoder.json").read_text())["max_positions"] == 32
    assert OnnxEncoder(str(exports["int8"])).encode_queries(["the cat"]).shape == (1, 32)
    older = Path(shutil.copytree(exports["int8"], tmp_path / "older"))
    config = json.loads((older / "encoder.json").read_text())
    del config["max_positions"]
    (older / "encoder.json").write_text(json.dumps({**config, "window": 16}))
    assert OnnxEncoder(str(older)).encode_queries(["the cat"]).shape == (1, 32)
    caplog.clear()
    (older / "encoder.json").write_text(json.dumps({**config, "window": 64}))  # not known: not refused
    assert OnnxEncoder(str(older)).window == 64
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"onnx: {older / 'encoder.json'} has no 'max_positions'" in warning
    assert "'window' 64 is not checked" in warning and "a new embedding space" in warning
    caplog.clear()
    (older / "encoder.json").write_text(json.dumps({**config, "window": 64, "max_positions": None}))
    assert OnnxEncoder(str(older)).window == 64 and not caplog.records


def test_a_roberta_style_model_takes_its_position_table_less_its_padding_offset(
    bert: Path, tmp_path: Path
) -> None:
    """A RoBERTa-style table numbers tokens from padding_idx + 1: its 34 rows take 33 tokens here
    (RoBERTa's 514 take 512). The export recorded window and max_positions 34, so a long text failed
    inside onnxruntime ('indices element out of data bounds, idx=34') and a window of 34 was not
    refused; both are now 33, and the long text embeds as the model does at 33 tokens."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    folder = Path(shutil.copytree(bert, tmp_path / "roberta"))  # its tokenizer; [PAD] is id 0
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=json.loads((bert / "config.json").read_text())["vocab_size"],
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=34,
        pad_token_id=0,
        type_vocab_size=1,
    )
    transformers.RobertaModel(config).save_pretrained(folder)
    out, _ = export_encoder(tmp_path / "onnx", str(folder), int8=False)
    recorded = json.loads((out / "encoder.json").read_text())
    assert recorded["max_positions"] == recorded["window"] == 33
    model = SentenceTransformer(str(folder), device="cpu")
    model.max_seq_length = 33
    expected = model.encode([LONG], normalize_embeddings=True)
    np.testing.assert_allclose(OnnxEncoder(str(out)).encode_corpus([LONG]), expected, atol=2e-5)
    (out / "encoder.json").write_text(json.dumps({**recorded, "window": 34}))
    with pytest.raises(EncoderError, match=r"field 'window' is 34, but .* takes at most 33 tokens"):
        OnnxEncoder(str(out))


def test_export_encoder_over_an_earlier_export_keeps_a_users_file(
    bert: Path, exports, tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before the model is loaded (it was refused only after, as index and distill are not)."""
    from search_adaptor.encoders import onnx

    def load(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before the folder was checked")

    monkeypatch.setattr(onnx, "SentenceTransformerEncoder", load)
    out = Path(shutil.copytree(exports["float32"], tmp_path / "earlier"))
    (out / "NOTES.md").write_text("benchmark notes")
    assert main(["export-encoder", "--out", str(out), "--model", str(bert)]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'NOTES.md'}: not part of an ONNX encoder export" in err and "move it out" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match=r"other: exists and is not an ONNX encoder export"):
        export_encoder(tmp_path / "other", str(bert))
    assert (out / "NOTES.md").read_text() == "benchmark notes"
    assert json.loads((out / "encoder.json").read_text())["quantization"] == "float32"  # untouched
