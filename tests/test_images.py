"""Image documents: corpus rows with "image", keyed by content in the store, embedded by the providers
whose models take images (loopback fakes of Cohere, Voyage and Vertex), refused by every other one."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fake_providers import (
    FakeProvider,
    Fault,
    fake_encoder,
    fake_item_id,
    fake_vector,
    png,
)
from search_adaptor.cli import main
from search_adaptor.data import DataError, iter_corpus, load_beir
from search_adaptor.embed import embed_dataset, plan_embedding
from search_adaptor.encoders.base import Encoder, EncoderError, ImagesUnsupported, InputsRejected
from search_adaptor.encoders.registry import make_encoder
from search_adaptor.images import ImageRef, image_size, image_type
from search_adaptor.store import EmbeddingStore, item_key, text_key

RECORDINGS = Path(__file__).resolve().parent / "recordings" / "images"
#: provider -> (the model that embeds images, the mode its fake serves documents in)
IMAGE_MODELS = {
    "cohere": ("embed-v4.0", "document"),
    "voyage": ("voyage-multimodal-3", "document"),
    "vertex": ("multimodalembedding@001", None),
}
QUERY_MODE = {"cohere": "query", "voyage": "query", "vertex": None}


def write_images(folder: Path, *data: bytes, prefix: str = "img") -> list[ImageRef]:
    """Write ``data`` as ``prefix<i>.png`` files in ``folder``; their ImageRefs."""
    refs = []
    for i, blob in enumerate(data):
        (folder / f"{prefix}{i}.png").write_bytes(blob)
        refs.append(ImageRef.of(f"{prefix}{i}.png", folder))
    return refs


def image_encoder(fake: FakeProvider, **kw: Any) -> Encoder:
    return fake_encoder(fake, model=IMAGE_MODELS[fake.provider][0], **kw)


@pytest.fixture(params=list(IMAGE_MODELS))
def fake(request: pytest.FixtureRequest):
    with FakeProvider(request.param) as server:
        yield server


# -- corpus rows with "image" ------------------------------------------------------------------------


def _beir(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a red square"}\n')
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


def test_corpus_rows_with_an_image_are_image_documents(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "red.png").write_bytes(png(seed=1))
    rows = [
        {"_id": "d0", "title": "T", "text": "a text document"},
        {"_id": "d1", "image": "pics/red.png"},
        {"_id": "d2", "image": "pics/red.png", "text": "a caption, kept but not embedded", "title": None},
        {"_id": "d3", "image": "https://example.com/cat.png"},
        {"_id": "d4", "text": "no image", "image": None},
    ]
    ds = load_beir(_beir(tmp_path, rows))
    assert ds.doc_texts[0] == "T a text document" and ds.doc_texts[4] == "no image"
    assert ds.doc_texts[1] == ds.doc_texts[2] == ImageRef(str((tmp_path / "pics" / "red.png").resolve()))
    assert ds.doc_texts[3] == ImageRef("https://example.com/cat.png") and ds.doc_texts[3].is_url
    assert list(iter_corpus(tmp_path / "corpus.jsonl", 10)) == [(ds.doc_ids, ds.doc_texts)]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (
            "../outside.png",
            r'field "image" "\.\./outside\.png" is not a relative path inside the dataset folder',
        ),
        (
            "/etc/hostname",
            r'field "image" "/etc/hostname" is not a relative path inside the dataset folder .*; keep the',
        ),
        (42, r'field "image" must be a path relative to the dataset folder or an http\(s\) URL, got 42'),
        ("", r'field "image" must be a path relative'),
    ],
)
def test_image_paths_must_name_a_file_inside_the_dataset_folder(
    tmp_path: Path, image: Any, message: str
) -> None:
    (tmp_path / "outside.png").write_bytes(png())
    folder = _beir(tmp_path / "ds", [{"_id": "d1", "image": image}])
    with pytest.raises(DataError, match=rf"corpus\.jsonl:1: {message}") as info:
        load_beir(folder)
    assert "\n" not in str(info.value)


def test_an_image_folder_linked_from_another_disk_is_named_as_what_leads_out(tmp_path: Path) -> None:
    """Images kept elsewhere through a linked folder (``DATA/images -> /mnt/...``) are refused, as
    any path out of the dataset folder is; the message said the relative path written in the row was
    not a relative path inside the folder, and to keep the images there: it names the link now."""
    elsewhere = tmp_path / "bigdisk"
    elsewhere.mkdir()
    (elsewhere / "p0.png").write_bytes(png())
    folder = _beir(tmp_path / "ds", [{"_id": "d1", "image": "images/p0.png"}])
    (folder / "images").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DataError) as info:
        load_beir(folder)
    link, base = folder / "images", folder.resolve()
    assert str(info.value).endswith(
        f'corpus.jsonl:1: field "image" "images/p0.png" leads out of the dataset folder {base}: '
        f"{link} is a symbolic link to {elsewhere.resolve()}, and images must be inside the dataset "
        f"folder itself; move {elsewhere.resolve()} to {link} in place of the link, or keep the whole "
        "dataset folder where the images are"
    )
    # following the advice works; a link that stays inside the folder is no reason to refuse
    (folder / "images").unlink()
    shutil.move(elsewhere, folder / "pics")
    (folder / "images").symlink_to(folder / "pics", target_is_directory=True)
    [image] = load_beir(folder).doc_texts
    assert image == ImageRef(str(folder.resolve() / "pics" / "p0.png"))
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "image": "../ds/images/../../bigdisk/p0.png"}\n')
    with pytest.raises(DataError, match=r'"image" "\.\./ds/.*" is not a relative path inside the dataset'):
        load_beir(folder)  # out by "..": no link to blame


@pytest.mark.parametrize("url", ["HTTP://example.com/Cat.PNG", "Https://example.com/Cat.PNG"])
def test_an_image_url_is_one_whatever_the_case_of_its_scheme(tmp_path: Path, url: str) -> None:
    """Schemes are case-insensitive (RFC 3986): ``HTTP://...`` was taken for a relative file path in
    the dataset folder (then refused as a missing file). It is a URL, kept with its scheme in lower
    case, so that one URL is one store key however a row spells it; the rest stays as written."""
    scheme, rest = url.split(":", 1)
    [image] = load_beir(_beir(tmp_path, [{"_id": "d1", "image": url}])).doc_texts
    assert image == ImageRef(f"{scheme.lower()}:{rest}") and image.is_url and ImageRef(url).is_url
    assert image.content_id == ImageRef.of(f"{scheme.lower()}:{rest}", None).content_id
    assert image.size_bytes() == 0


def test_messages_name_an_image_url_without_its_query(tmp_path: Path) -> None:
    """A presigned URL's signature is a credential: messages printed it whole."""
    ref = ImageRef("https://user:pw@bucket.example.com:8443/a.png?X-Amz-Signature=SECRET#frag")
    assert str(ref) == "https://bucket.example.com:8443/a.png?..."
    assert str(ImageRef("https://example.com/a.png")) == "https://example.com/a.png"
    with FakeProvider("cohere") as fake, pytest.raises(ImagesUnsupported) as info:
        image_encoder(fake).check_items([ref])
    assert "SECRET" not in str(info.value) and "bucket.example.com:8443/a.png" in str(info.value)


def test_a_row_without_text_needs_an_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r'corpus\.jsonl:1: missing field "text" .*or "image" for an image'):
        load_beir(_beir(tmp_path, [{"_id": "d1", "title": "only a title"}]))
    with pytest.raises(DataError, match=r'corpus\.jsonl:1: field "text" must be a string or null, got 3'):
        (tmp_path / "a.png").write_bytes(png())
        load_beir(_beir(tmp_path, [{"_id": "d1", "image": "a.png", "text": 3}]))


def test_parquet_corpora_carry_images_too(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "a.png").write_bytes(png())
    table = pa.table({"_id": ["d0", "d1"], "text": ["words", None], "image": [None, "a.png"]})
    pq.write_table(table, tmp_path / "corpus.parquet")
    [(ids, items)] = list(iter_corpus(tmp_path / "corpus.parquet", 10))
    assert ids == ["d0", "d1"] and items == ["words", ImageRef(str((tmp_path / "a.png").resolve()))]
    pq.write_table(pa.table({"_id": ["d0"], "image": ["../x.png"]}), tmp_path / "bad.parquet")
    with pytest.raises(
        DataError, match=r'bad\.parquet \(row 0\): field "image" .* not a relative path inside'
    ):
        list(iter_corpus(tmp_path / "bad.parquet", 10))


def test_image_format_and_size_come_from_the_header() -> None:
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 8
    jpeg = (
        b"\xff\xd8\xff\xe0"
        + struct.pack(">H", 6)
        + b"JFIF"  # APP0 segment, skipped
        + b"\xff\xc0"
        + struct.pack(">HBHH", 11, 8, 300, 400)
        + b"\x03"  # SOF0: 400 wide, 300 high
    )
    vp8x = (
        b"RIFF\x00\x00\x00\x00WEBPVP8X"
        + b"\x00" * 8
        + (1023).to_bytes(3, "little")
        + (767).to_bytes(3, "little")
    )
    bits = (99 & 0x3FFF) | ((49 & 0x3FFF) << 14)
    vp8l = b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x00" * 4 + b"\x2f" + bits.to_bytes(4, "little")
    assert image_size(png(7, 3)) == (7, 3) and image_type(png()) == "image/png"
    assert image_size(gif) == (640, 480) and image_type(gif) == "image/gif"
    assert image_size(jpeg) == (400, 300) and image_type(jpeg) == "image/jpeg"
    assert (
        image_size(vp8x) == (1024, 768) and image_size(vp8l) == (100, 50) and image_type(vp8l) == "image/webp"
    )
    assert image_type(b"BM" + b"\x00" * 30) == "image/bmp"
    assert image_type(b"hello") is None and image_size(b"hello") is None and image_size(png()[:20]) is None


# -- the store: images by content ------------------------------------------------------------------


def test_text_keys_and_fingerprints_are_what_they_were() -> None:
    """The text path keeps its store keys and fingerprints: caches made before images stay valid."""
    assert item_key("document", "the cat sat on the mat") == text_key("document", "the cat sat on the mat")
    assert text_key("document", "the cat sat on the mat").hex() == "e95ad17177ccba7b2a1b01852e832322"
    assert text_key("query", "東京").hex() == "1813322edd06d15f31ead1bad69919ec"
    assert make_encoder("cohere", api_key="k").fingerprint == "cohere:embed-v4.0:22646f462bb3"
    assert make_encoder("voyage", api_key="k").fingerprint == "voyage:voyage-3.5:569aa86cb55b"
    assert (
        make_encoder("vertex", api_key="k", project="p").fingerprint
        == "vertex:text-embedding-005:fd01e08b794a"
    )
    assert make_encoder("sentence-transformers").fingerprint.endswith(":6164d1f5f80c")


def test_images_are_keyed_by_their_content_not_their_path(tmp_path: Path) -> None:
    a, b, a_again = write_images(tmp_path, png(seed=1), png(seed=2), png(seed=1))
    url = ImageRef("https://example.com/a.png")
    assert a != a_again and item_key("document", a) == item_key("document", a_again)
    assert a.content_id == "sha256:" + __import__("hashlib").sha256(png(seed=1)).hexdigest()
    keys = {item_key(k, x) for k in ("query", "document") for x in (a, b, url, a.content_id, url.source)}
    assert len(keys) == 10  # kinds apart, images apart, and no image key equals a text key


def test_the_store_embeds_an_image_once_and_never_mixes_two(fake: FakeProvider, tmp_path: Path) -> None:
    a, b = write_images(tmp_path, png(seed=1), png(seed=2))
    (tmp_path / "sub").mkdir()
    [a_copy] = write_images(tmp_path / "sub", png(seed=1))
    items = [a, "a text document", b, a_copy]
    enc = image_encoder(fake, batch_size=2)
    with EmbeddingStore(enc, tmp_path / "cache") as store:
        first = store.embed(items, "document")
        sent = fake.texts_sent()
    assert sorted(sent) == sorted(fake_item_id(x) for x in items[:3])  # the copy was not sent
    np.testing.assert_allclose(
        first, fake.expected(items, "document", mode=IMAGE_MODELS[fake.provider][1]), atol=1e-6
    )
    np.testing.assert_array_equal(first[0], first[3])
    assert not np.allclose(first[0], first[2])
    calls = len(fake.calls)
    with EmbeddingStore(image_encoder(fake), tmp_path / "cache") as store:  # a second run: nothing is sent
        again = store.embed(items, "document")
    assert len(fake.calls) == calls
    np.testing.assert_array_equal(first, again)


# -- encoders that embed text only refuse images ---------------------------------------------------


TEXT_ONLY = {
    "openai": {},
    "azure-openai": {},
    "openai-compatible": {},
    "gemini": {},
    "vertex": {},  # text-embedding-005
    "cohere": {"model": "embed-english-v2.0"},
    "voyage": {},  # voyage-3.5
}


@pytest.mark.parametrize("provider", list(TEXT_ONLY))
def test_text_only_api_models_refuse_images_in_one_line(provider: str, tmp_path: Path) -> None:
    [image] = write_images(tmp_path, png())
    with FakeProvider(provider) as fake:
        enc = fake_encoder(fake, **TEXT_ONLY[provider])
        with pytest.raises(ImagesUnsupported) as info:
            enc.encode_batch(["a text", image], "document")
        with EmbeddingStore(enc, tmp_path / "cache") as store, pytest.raises(ImagesUnsupported):
            store.embed(["a text", image], "document")  # refused before the text is sent either
        assert fake.calls == []
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{provider}: {enc.model} embeds text only")
    assert f"embeds text only, and {image} is an image;" in message
    assert "cohere (embed-v4.0), voyage (voyage-multimodal-3), vertex (multimodalembedding@001)" in message
    assert "one model's precomputed vectors of queries and documents (--embeddings)" in message


@pytest.mark.parametrize("provider", ["openai", "cohere"])  # text only, and one that takes images
@pytest.mark.parametrize("item", [None, 3, {"text": "a dict"}, b"bytes"])
def test_items_that_are_neither_texts_nor_images_are_refused_as_such(provider, item, tmp_path: Path) -> None:
    """A None or a number among the texts (a document whose text is missing) was called "an image" by
    a text-only model and failed deep inside the store ('NoneType' object has no attribute
    'content_id'); now the encoder and the store name it, before anything is sent."""
    with FakeProvider(provider) as fake:
        enc = fake_encoder(fake, **TEXT_ONLY.get(provider, {}))
        with EmbeddingStore(enc, tmp_path / "cache") as store:
            for call in (
                lambda: enc.encode_batch(["a text", item], "document"),
                lambda: store.embed(["a text", item], "document"),
                lambda: store.embed(["a text", item], "query"),
            ):
                with pytest.raises(TypeError) as info:
                    call()
                message = str(info.value)
                assert message.startswith(f"item 1 is {type(item).__name__} ") and "not a text" in message
                assert "\n" not in message
        assert fake.calls == []


def test_a_text_that_is_not_valid_unicode_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """A lone surrogate (a Latin-1 byte on a UTF-8 command line, a ``\\ud800`` JSON escape) failed in
    the store's hashing or the tokenizer ('TextEncodeInput must be Union[...]')."""
    bad = "caf\udce9 au lait"
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake, **TEXT_ONLY["openai"])
        with EmbeddingStore(enc, tmp_path / "cache") as store:
            for call in (
                lambda: enc.encode_batch(["a text", bad], "query"),
                lambda: store.embed(["ok", bad], "query"),
            ):
                with pytest.raises(
                    ValueError, match=r"^text 1 is not valid Unicode: character 3 is a lone surrogate"
                ):
                    call()
        assert fake.calls == []


def test_a_dataset_with_images_is_refused_before_its_text_queries_are_sent(tmp_path: Path) -> None:
    """Queries are embedded first: a text-only API model must not be billed (or retried against a
    dead endpoint) for them when the image documents will be refused anyway."""
    data = _beir(tmp_path / "data", [{"_id": "d1", "image": "d1.png"}, {"_id": "d2", "text": "a cat"}])
    (data / "d1.png").write_bytes(png())
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake, **TEXT_ONLY["openai"])
        with pytest.raises(ImagesUnsupported) as refused:
            embed_dataset(load_beir(data), enc, tmp_path / "cache", progress=False)
        assert fake.calls == []
    # named by the document that holds it (the batch position, "item 0", told nothing)
    assert re.fullmatch(
        rf"{re.escape(str(data))}: document 'd1': openai: \S+ embeds text only, and \S+d1\.png is an "
        r"image; .*",
        str(refused.value),
    )


def test_a_dry_run_refuses_images_a_text_only_model_cannot_take_as_the_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``embed --dry-run`` said the images "would be sent" to a text-only model (an API model priced
    them as texts); the run then refused them. The plan refuses them alike, sending nothing, and still
    counts the images of a model that embeds them."""
    data = _beir(tmp_path / "data", [{"_id": "d1", "image": "d1.png"}, {"_id": "d2", "text": "a cat"}])
    (data / "d1.png").write_bytes(png())
    with FakeProvider("openai") as fake:
        enc = fake_encoder(fake, **TEXT_ONLY["openai"])
        with pytest.raises(ImagesUnsupported) as planned:
            plan_embedding(load_beir(data), enc, tmp_path / "cache")
        with pytest.raises(ImagesUnsupported) as run:
            embed_dataset(load_beir(data), enc, tmp_path / "cache", progress=False)
        assert fake.calls == []
    assert str(planned.value) == str(run.value)
    assert main(["embed", str(data), "--cache", str(tmp_path / "cache"), "--dry-run"]) == 2
    assert re.fullmatch(
        rf"search-adaptor: error: {re.escape(str(data))}: document 'd1': sentence-transformers: \S+ embeds "
        r"text only, and \S+d1\.png is an image; .*",
        capsys.readouterr().err.strip(),
    )
    with FakeProvider("cohere") as fake:
        plan = plan_embedding(load_beir(data), image_encoder(fake), tmp_path / "cache")
        assert (plan.to_send, fake.calls) == (3, [])  # the query, the image and the text


def test_a_dry_run_counts_apart_the_images_the_run_would_refuse(tmp_path: Path) -> None:
    """A 0-byte image, or a text file named .png, was counted 'would be sent' by the dry run, and the
    run refused it after sending everything else."""
    rows = [{"_id": "d1", "image": "d1.png"}, {"_id": "d2", "image": "empty.png"}, {"_id": "d3", "text": "x"}]
    data = _beir(tmp_path / "data", rows)
    (data / "d1.png").write_bytes(png())
    (data / "empty.png").write_bytes(b"")
    with FakeProvider("cohere") as fake:
        plan = plan_embedding(load_beir(data), image_encoder(fake), tmp_path / "cache")
        assert fake.calls == []
    assert (plan.unique, plan.cached, plan.to_send) == (4, 0, 3)  # the query, d1 and d3
    assert plan.refused is not None and plan.refused[1] == 1
    assert re.search(
        r"3 would be sent in 3 requests.*; 1 would be refused \(the image \S+empty\.png: the file cannot "
        r"be read, or is empty\)$",
        plan.describe(),
    )


def test_local_models_refuse_images_without_loading_anything(tmp_path: Path) -> None:
    [image] = write_images(tmp_path, png())
    enc = make_encoder("sentence-transformers")
    with pytest.raises(
        ImagesUnsupported, match=r"sentence-transformers: .*all-MiniLM-L6-v2 embeds text only"
    ):
        enc.encode_corpus([image])
    assert enc._st is None  # refused before the model was loaded


@pytest.mark.parametrize("provider", ["cohere", "vertex"])
def test_providers_that_take_image_data_refuse_image_urls(provider: str) -> None:
    with FakeProvider(provider) as fake:
        enc = fake_encoder(fake, model=IMAGE_MODELS[provider][0])
        with pytest.raises(ImagesUnsupported) as info:
            enc.encode_corpus([ImageRef("https://example.com/cat.png")])
        assert fake.calls == []
    assert re.fullmatch(
        rf"{provider}: \S+ takes images as data, not URLs, and https://example\.com/cat\.png is a URL; "
        r"save the images in the dataset folder .* "
        r"or use voyage \(voyage-multimodal-3\), which fetches URLs",
        str(info.value),
    )


# -- a cross-model run over images: a query model of text --------------------------------------------


def _mixed(folder: Path, n_images: int, n_texts: int) -> Path:
    """A BEIR folder of ``n_images`` image documents (d1...) then ``n_texts`` text documents."""
    rows = [{"_id": f"d{i + 1}", "image": f"p{i}.png"} for i in range(n_images)]
    rows += [{"_id": f"t{i}", "text": f"a text document {i} about topic {i % 3}"} for i in range(n_texts)]
    _beir(folder, rows)
    for i in range(n_images):
        (folder / f"p{i}.png").write_bytes(png(seed=i))
    return folder


def test_a_text_query_model_pairs_the_text_documents_of_an_image_corpus(tmp_path: Path) -> None:
    """Documents by a model that embeds images, queries by one of text (fit --query-provider model2vec):
    the query model was sent the image documents to pair, and refused them with advice that did not
    work (embed them with cohere: done; --embeddings: refused with --query-*). The images go unpaired
    (zero rows of ``pairs``, which a fit leaves out) and the map learns from the text documents."""
    from search_adaptor.model import SearchAdaptor
    from test_store import CountingEncoder

    ds = load_beir(_mixed(tmp_path / "data", n_images=3, n_texts=12))
    queries = CountingEncoder(dim=8, batch_size=64)
    with FakeProvider("cohere") as fake:
        docs = image_encoder(fake)
        plan = plan_embedding(ds, docs, tmp_path / "cache", queries)
        emb = embed_dataset(ds, docs, tmp_path / "cache", progress=False, query_encoder=queries)
    assert plan.to_send == emb.stats.encoded == 1 + 15 + 12 + 1  # the query, the corpus, the pairs
    assert all(isinstance(t, str) for call in queries.calls for t in call)
    assert emb.pairs.shape == (15, 8) and not emb.pairs[:3].any()
    np.testing.assert_allclose(emb.pairs[3:], queries.encode_queries(ds.doc_texts[3:]), rtol=1e-6)
    cross = {"mode": "query_only", "init": "lstsq", "loss": "alignment", "max_steps": 5, "seed": 0}
    with_images, texts_only = (
        SearchAdaptor(**cross).fit(emb.queries, emb.corpus, None, emb.query_ids, emb.doc_ids, pairs=p)
        for p in ((emb.pairs, emb.corpus), (emb.pairs[3:], emb.corpus[3:]))
    )
    adapted = [fit.transform_queries(emb.queries) for fit in (with_images, texts_only)]
    assert np.array_equal(*adapted)


def test_a_cross_model_run_with_no_document_its_query_model_takes_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    from test_store import CountingEncoder

    ds = load_beir(_mixed(tmp_path / "data", n_images=2, n_texts=0))
    queries = CountingEncoder(dim=8)
    with FakeProvider("cohere") as fake:
        docs = image_encoder(fake)
        for call in (
            lambda: plan_embedding(ds, docs, tmp_path / "cache", queries),
            lambda: embed_dataset(ds, docs, tmp_path / "cache", progress=False, query_encoder=queries),
        ):
            with pytest.raises(ImagesUnsupported) as info:
                call()
            assert str(info.value) == (
                "fake: fake-model embeds none of the 2 documents of data (images), and a cross-model run "
                "learns its map from documents both models embed; drop the --query-* flags to embed the "
                "queries with cohere (embed-v4.0) too, or name a query model that takes them: cohere "
                "(embed-v4.0), voyage (voyage-multimodal-3), vertex (multimodalembedding@001)"
            )
        assert fake.calls == [] and queries.calls == []
        # a documents' model of text is the first thing to fix: its own refusal comes first
        text_docs = fake_encoder(fake, **TEXT_ONLY["cohere"])
        with pytest.raises(ImagesUnsupported, match=r": document 'd1': cohere: \S+ embeds text only, and "):
            plan_embedding(ds, text_docs, tmp_path / "cache", queries)


# -- the providers that embed images ---------------------------------------------------------------


def test_images_and_queries_round_trip(fake: FakeProvider, tmp_path: Path) -> None:
    images = write_images(tmp_path, png(3, 2, seed=1), png(2, 5, seed=2))
    enc = image_encoder(fake)
    assert enc.accepts_images
    docs = enc.encode_corpus(images)
    queries = enc.encode_queries(["a red square"])
    mode = IMAGE_MODELS[fake.provider][1]
    np.testing.assert_allclose(docs, fake.expected(images, "document", mode=mode), atol=1e-6)
    np.testing.assert_allclose(
        queries, fake.expected(["a red square"], "query", mode=QUERY_MODE[fake.provider])
    )
    image_call, query_call = fake.calls[0], fake.calls[-1]
    uri = "data:image/png;base64," + base64.b64encode(png(3, 2, seed=1)).decode()
    if fake.provider == "cohere":
        assert image_call.body["images"][0] == uri and "texts" not in image_call.body
        assert image_call.body["input_type"] == "search_document" and "truncate" not in image_call.body
        assert query_call.body["texts"] == ["a red square"]
    elif fake.provider == "voyage":
        assert image_call.path == query_call.path == "/v1/multimodalembeddings"
        assert image_call.body["inputs"][0] == {"content": [{"type": "image_base64", "image_base64": uri}]}
        assert query_call.body["inputs"] == [{"content": [{"type": "text", "text": "a red square"}]}]
    else:
        assert image_call.path.endswith("/publishers/google/models/multimodalembedding@001:predict")
        assert image_call.body == {"instances": [{"image": {"bytesBase64Encoded": uri.split(",")[1]}}]}
        assert query_call.body == {"instances": [{"text": "a red square"}]}
    assert enc.retries == 0


def test_a_mixed_batch_sends_its_texts_as_a_text_batch(tmp_path: Path) -> None:
    [image] = write_images(tmp_path, png())
    with FakeProvider("cohere") as fake:
        enc = image_encoder(fake)
        # what a dry run counts: a request of texts and one of images, then one of texts
        assert enc.request_count(["first text", image, "second text", "third text"], "document") == 2
        assert enc.request_count(["first text", "second text"], "document") == 1
        vecs = enc.encode_batch(["first text", image, "second text"], "document")
        enc.encode_batch(["first text", "second text"], "document")
        text_call, image_call, text_only = fake.calls
    assert text_call.body == text_only.body  # the texts went exactly as a text-only batch sends them
    assert image_call.texts == [fake_item_id(image)]
    expected = fake.expected(["first text", image, "second text"], "document")
    np.testing.assert_allclose(vecs, expected, atol=1e-6)


def test_dimensions_are_asked_for_images(fake: FakeProvider, tmp_path: Path) -> None:
    images = write_images(tmp_path, png(seed=3))
    vecs = image_encoder(fake, dimensions=256).encode_corpus(images)
    assert vecs.shape == (1, 256)
    body = fake.calls[0].body
    asked = {"cohere": body.get("output_dimension"), "voyage": body.get("output_dimension")}
    assert asked.get(fake.provider, body.get("parameters", {}).get("dimension")) == 256


def test_a_rejected_image_request_is_reported_not_retried(fake: FakeProvider, tmp_path: Path) -> None:
    images = write_images(tmp_path, png())
    enc = image_encoder(fake)
    fake.schedule(Fault.rejected(400, "invalid image: could not decode"))
    with pytest.raises(EncoderError) as info:
        enc.encode_corpus(images)
    message = str(info.value)
    assert (
        message.startswith(f"{fake.provider}: HTTP 400 from ")
        and "invalid image: could not decode" in message
    )
    assert "not retried" in message and "\n" not in message
    assert len(fake.calls) == 1 and enc.retries == 0


def test_the_texts_of_a_batch_whose_image_request_fails_are_kept(tmp_path: Path) -> None:
    """A batch's texts and images go in requests of their own: a failure of the images' request (here
    a key without image access) threw the texts' reply away (paid for), and the next run paid for
    those texts again."""
    [image] = write_images(tmp_path, png(seed=7))
    items = ["first text", image, "second text"]
    with FakeProvider("cohere") as fake:
        fake.schedule(Fault(), Fault.rejected(403, "this key may not embed images"))
        with EmbeddingStore(image_encoder(fake), tmp_path / "cache") as store:
            with pytest.raises(EncoderError, match=r"HTTP 403 .*this key may not embed images") as info:
                store.embed(items, "document")
            assert type(info.value) is EncoderError  # the failure itself, not a wrapper of it
            assert store.missing("document", items) == [image]
        sent = len(fake.calls)
        with EmbeddingStore(image_encoder(fake), tmp_path / "cache") as store:
            vecs = store.embed(items, "document")
        assert [call.texts for call in fake.calls[sent:]] == [[fake_item_id(image)]]  # the image alone
    np.testing.assert_allclose(vecs, fake.expected(items, "document"), atol=1e-6)


def test_an_image_request_refused_as_a_whole_is_halved_to_name_the_image(tmp_path: Path) -> None:
    """One corrupt image among many (a valid header, so it passes the checks here) got its request a
    400 and stopped the run without saying which image: the request is sent again in halves until
    the image it is about is found; the others are embedded."""
    images = write_images(tmp_path, png(seed=11), png(seed=12), png(seed=13))
    bad = Fault.rejected(400, "invalid image: could not decode")
    with FakeProvider("cohere") as fake:
        fake.schedule(bad, Fault(), bad, bad, Fault())  # [a b c], [a], [b c], [b], [c]
        with pytest.raises(InputsRejected) as info:
            image_encoder(fake).encode_batch(images, "document")
        assert [len(call.texts) for call in fake.calls] == [3, 1, 2, 1, 1]
    assert info.value.rejected == {1: "HTTP 400: invalid image: could not decode"}
    assert "input 1 (the image " in str(info.value) and "img1.png" in str(info.value)
    np.testing.assert_allclose(
        info.value.vectors[[0, 2]], fake.expected([images[0], images[2]], "document"), atol=1e-6
    )


def test_a_rate_limited_image_request_is_retried(fake: FakeProvider, tmp_path: Path) -> None:
    images = write_images(tmp_path, png(seed=4), png(seed=5))
    enc = image_encoder(fake)
    fake.schedule(Fault.rate_limited("0.01"))
    vecs = enc.encode_corpus(images)
    np.testing.assert_allclose(vecs, fake.expected(images, "document", mode=IMAGE_MODELS[fake.provider][1]))
    assert [c.status for c in fake.calls][:2] == [429, 200] and enc.retries == 1


def test_cohere_image_requests_keep_to_96_images_and_20_mb(tmp_path: Path) -> None:
    small = write_images(tmp_path, *[png(seed=i) for i in range(97)])
    big = write_images(tmp_path, *[png(seed=i) + bytes(7_000_000) for i in range(3)], prefix="big")
    with FakeProvider("cohere") as fake:
        enc = image_encoder(fake, batch_size=1000)
        enc.encode_batch(small, "document")
        enc.encode_batch(big, "document")
        assert [len(c.texts) for c in fake.calls] == [96, 1, 2, 1]  # 2 x 7 MB fit in 20 MB, 3 do not
        assert all(c.status == 200 for c in fake.calls)


def test_cohere_embed_v3_sends_one_image_per_request_as_input_type_image(tmp_path: Path) -> None:
    images = write_images(tmp_path, png(seed=1), png(seed=2), png(seed=3))
    with FakeProvider("cohere") as fake:
        vecs = fake_encoder(fake, model="embed-english-v3.0").encode_corpus(images)
        np.testing.assert_allclose(vecs, fake.expected(images, "document", mode="image"), atol=1e-6)
        assert [(len(c.texts), c.body["input_type"]) for c in fake.calls] == [(1, "image")] * 3


def test_voyage_keeps_to_320k_tokens_and_never_mixes_urls_with_data(tmp_path: Path) -> None:
    huge = write_images(
        tmp_path, *[png(seed=i, declared=(4000, 4000)) for i in range(12)]
    )  # 28,572 tokens each
    urls = [ImageRef(f"https://example.com/{i}.png") for i in range(3)]
    with FakeProvider("voyage") as fake:
        enc = image_encoder(fake)
        assert enc.request_tokens(huge[:1], "document") == 28_572
        vecs = enc.encode_batch([urls[0], *huge, *urls[1:]], "document")
        sizes = [(len(c.texts), c.texts[0].split(":")[0]) for c in fake.calls]
        assert sizes == [(11, "image"), (1, "image"), (3, "url")] and all(c.status == 200 for c in fake.calls)
        np.testing.assert_allclose(vecs, fake.expected([urls[0], *huge, *urls[1:]], "document"), atol=1e-6)
        part = fake.calls[-1].body["inputs"][0]["content"][0]
        assert part == {"type": "image_url", "image_url": "https://example.com/0.png"}


def test_voyage_refuses_an_image_over_16_million_pixels_before_sending_it(tmp_path: Path) -> None:
    """Voyage documents at most 16 million pixels an image: a 20000x20000 PNG was sent, and its request
    refused for 714,286 tokens; it is now named (and counted apart by a dry run), the rest embedded."""
    small, huge = write_images(tmp_path, png(seed=1), png(seed=2, declared=(20000, 20000)))
    reason = "20000x20000 pixels, more than the 16,000,000 voyage takes in one image; scale it down"
    with FakeProvider("voyage") as fake:
        enc = image_encoder(fake)
        assert enc.refusals([small, huge]) == {1: reason}  # what embed --dry-run counts apart
        with pytest.raises(InputsRejected) as info:
            enc.encode_batch([small, huge], "document")
        assert [len(call.texts) for call in fake.calls] == [1]
    assert info.value.rejected == {1: reason}


def test_vertex_multimodal_sends_one_instance_per_request(tmp_path: Path) -> None:
    images = write_images(tmp_path, png(seed=1), png(seed=2), png(seed=3))
    with FakeProvider("vertex") as fake:
        enc = image_encoder(fake)
        enc.encode_batch([*images, "a query-like text"], "document")
        assert [len(c.texts) for c in fake.calls] == [1, 1, 1, 1]
        assert "task_types" not in enc.config()


def test_an_image_the_provider_cannot_take_is_named_and_the_others_embedded(tmp_path: Path) -> None:
    good = write_images(tmp_path, png(seed=1), png(seed=2))
    (tmp_path / "bitmap.bmp").write_bytes(b"BM" + bytes(60))
    (tmp_path / "notes.png").write_text("not an image at all")
    items = [good[0], ImageRef.of("bitmap.bmp", tmp_path), ImageRef.of("notes.png", tmp_path), good[1]]
    with FakeProvider("cohere") as fake:
        with pytest.raises(InputsRejected) as info:
            image_encoder(fake).encode_batch(items, "document")
        assert [c.texts for c in fake.calls] == [[fake_item_id(good[0]), fake_item_id(good[1])]]
    err = info.value
    assert sorted(err.rejected) == [1, 2] and "\n" not in str(err)
    assert re.search(
        r"2 of 4 inputs cannot be embedded.*input 1 \(and 1 more\) \(the image .*bitmap\.bmp\): "
        r"a BMP image; cohere embed-v4\.0 takes GIF, JPEG, PNG, WEBP",
        str(err),
    )
    assert "not an image this library knows" in err.rejected[2]
    np.testing.assert_allclose(err.vectors[[0, 3]], fake.expected([good[0], good[1]], "document"), atol=1e-6)
    assert np.isnan(err.vectors[[1, 2]]).all()
    with (  # the fix for an image: not 'shorten' alone
        FakeProvider("cohere") as fake,
        EmbeddingStore(image_encoder(fake), tmp_path / "cache") as store,
        pytest.raises(InputsRejected) as info,
    ):
        store.embed(items, "document")
    assert "input 1 (and 1 more)" in str(info.value)
    assert "replace (an image) or shorten or drop the refused ones" in str(info.value)


def test_billed_tokens_of_images() -> None:
    with FakeProvider("voyage") as fake:
        assert image_encoder(fake).request_tokens([ImageRef("https://example.com/x.png")], "query") == 28_572
    with FakeProvider("cohere") as fake:  # Cohere bills images per image, not in tokens
        assert (
            image_encoder(fake).request_tokens(["abcdef", ImageRef("https://example.com/x.png")], "query")
            == 2
        )


def test_a_missing_image_file_loads_but_fails_before_anything_is_sent(tmp_path: Path) -> None:
    """Precomputed vectors need no image files; embedding does, and names the missing one (and, from a
    dataset, the document that names it: "its corpus row" said not which)."""
    (tmp_path / "here.png").write_bytes(png())
    ds = load_beir(_beir(tmp_path, [{"_id": "d1", "image": "here.png"}, {"_id": "d2", "image": "gone.png"}]))
    with FakeProvider("cohere") as fake, EmbeddingStore(image_encoder(fake), tmp_path / "cache") as store:
        with pytest.raises(ValueError) as info:
            store.embed(ds.doc_texts, "document")
        with pytest.raises(ValueError) as named:
            embed_dataset(ds, image_encoder(fake), tmp_path / "cache", progress=False)
        assert fake.calls == []
    unreadable = (
        r'\S*gone\.png: cannot read the image \(No such file or directory\); fix the "image" field of '
        "its corpus row"
    )
    assert re.fullmatch(unreadable, str(info.value))
    assert re.fullmatch(rf"{re.escape(str(ds.path))}: document 'd2': {unreadable}", str(named.value))


# -- what the official SDKs send -------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(p.stem for p in RECORDINGS.glob("*.json")))
def test_image_requests_match_the_official_sdk(case: str, tmp_path: Path) -> None:
    recorded = json.loads((RECORDINGS / f"{case}.json").read_text())
    call, expected = recorded["call"], recorded["request"]
    if "images" in call:
        items: list[Any] = write_images(tmp_path, *[base64.b64decode(i) for i in call["images"]])
        kind = "document"
    elif "urls" in call:
        items, kind = [ImageRef(u) for u in call["urls"]], "document"
    else:
        items, kind = call["texts"], "query"
    with FakeProvider(call["provider"], dim=call["dimensions"] or 8) as fake:
        fake_encoder(fake, model=call["model"], dimensions=call["dimensions"]).encode_batch(items, kind)
        ours = fake.calls[0]
    sdk = f"{recorded['sdk']} {recorded['sdk_version']}"
    without_nulls = {k: v for k, v in expected["json"].items() if v is not None}
    assert (ours.path, ours.body) == (expected["path"], without_nulls), sdk
    assert ours.headers["authorization"] == expected["headers"]["authorization"].replace("<KEY>", fake.key)


def test_fake_vectors_of_images_are_those_of_their_bytes(tmp_path: Path) -> None:
    """The fakes' own rule, which the tests above rely on: an image's vector is its bytes' hash's."""
    [image] = write_images(tmp_path, png(seed=9))
    copy = tmp_path / "copy.png"
    shutil.copy(image.source, copy)
    assert (
        fake_item_id(image) == fake_item_id(ImageRef(str(copy))) != fake_item_id(ImageRef("https://x.org/a"))
    )
    assert np.allclose(fake_vector(fake_item_id(image), None, 4), fake_vector(fake_item_id(image), None, 4))
