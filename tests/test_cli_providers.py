"""The command line with embedding-API providers, against the local fakes of their wire formats."""

from __future__ import annotations

import json
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from fake_providers import FAKE_KEY, KEY_ENV, PROVIDER_NAMES, FakeProvider, Fault
from search_adaptor.cli import main
from search_adaptor.encoders.base import EncoderError
from search_adaptor.encoders.registry import from_info, make_encoder

#: What the CLI needs besides --provider and --base-url for each provider.
PROVIDER_ARGS = {
    "azure-openai": ["--model", "fake-deployment"],
    "openai-compatible": ["--model", "fake-model"],
}


def _write_beir(root: Path, n_docs: int, n_queries: int) -> Path:
    """A tiny BEIR folder: query ``i`` is relevant to documents ``i`` and ``i + n_queries``."""
    (root / "qrels").mkdir(parents=True)
    docs = [
        {"_id": f"d{i}", "title": f"title {i}", "text": f"passage number {i} about topic {i % 7}"}
        for i in range(n_docs)
    ]
    queries = [{"_id": f"q{i}", "text": f"which passage is about item {i}?"} for i in range(n_queries)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    rows = [f"q{i}\td{j}\t1" for i in range(n_queries) for j in (i, i + n_queries) if j < n_docs]
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No provider credential or endpoint leaks in from the machine running the tests."""
    for var in (*KEY_ENV.values(), "OPENAI_API_KEY", "OPENAI_BASE_URL", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _cli_args(fake: FakeProvider, data: Path, cache: Path) -> list[str]:
    return [
        str(data),
        "--provider",
        fake.provider,
        "--base-url",
        fake.url,
        "--cache",
        str(cache),
        *PROVIDER_ARGS.get(fake.provider, []),
    ]


def test_a_dry_run_counts_the_requests_of_a_cross_model_run(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each job goes in batches of its own (its last batch a request of its own): the plan merged a
    model's texts of one kind across jobs and said 23 requests where 26 were sent."""
    data = _write_beir(tmp_path / "tiny", n_docs=10, n_queries=5)
    with FakeProvider("openai") as docs, FakeProvider("cohere") as queries:
        clean_env.setenv(KEY_ENV["openai"], docs.key)
        clean_env.setenv(KEY_ENV["cohere"], queries.key)
        args = [*_cli_args(docs, data, tmp_path / "cache"), "--batch-size", "3"]
        args += ["--query-provider", "cohere", "--query-base-url", queries.url]
        assert main(["embed", *args, "--dry-run"]) == 0
        planned = re.search(r"0 texts cached, 30 would be sent in (\d+) requests \(", capsys.readouterr().out)
        assert planned and not docs.calls and not queries.calls
        assert main(["embed", *args, "--quiet"]) == 0
        assert len(docs.calls) + len(queries.calls) == int(planned[1]) == 12


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_embed_then_dry_run_sends_nothing(
    provider: str, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_beir(tmp_path / "tiny", n_docs=10, n_queries=5)
    with FakeProvider(provider) as fake:
        clean_env.setenv(KEY_ENV[provider], fake.key)
        clean_env.setenv("GOOGLE_CLOUD_PROJECT", "fake-project")
        args = [*_cli_args(fake, data, tmp_path / "cache"), "--dimensions", "4", "--batch-size", "3"]

        assert main(["embed", *args, "--dry-run"]) == 0
        before = capsys.readouterr().out
        planned = re.search(r"0 texts cached, 15 would be sent in (\d+) requests \(", before)
        assert planned, before
        assert not fake.calls

        assert main(["embed", *args, "--max-concurrency", "2", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "15 texts embedded, 0 already cached (4-d" in out and "0 retries" in out
        assert all(count == 1 for count in fake.served.values()) and len(fake.served) == 15
        assert max(len(call.texts) for call in fake.calls) <= 3
        assert len(fake.calls) == int(planned[1])  # what rate limits count, said before the run

        calls = len(fake.calls)
        assert main(["embed", *args, "--dry-run"]) == 0
        assert "15 texts cached, 0 would be sent (~0 tokens" in capsys.readouterr().out
        assert len(fake.calls) == calls


def test_dry_run_estimates_tokens_of_the_texts_as_sent(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_beir(tmp_path / "tiny", n_docs=4, n_queries=2)
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    assert main(["embed", str(data), "--provider", "openai", "--cache", str(tmp_path), "--dry-run"]) == 0
    from search_adaptor.data import load_beir

    dataset = load_beir(data)
    texts = [*dataset.queries.values(), *dataset.doc_texts]
    tokens = sum(math.ceil(len(t) / 3) for t in texts)
    printed = capsys.readouterr().out
    assert f"0 texts cached, 6 would be sent in 2 requests (~{tokens} tokens" in printed
    assert " at https://api.openai.com/v1: " in printed  # where the texts, and the key, would go
    root = "http://user:pw-SECRET-1@proxy.example:8080/v1"
    dry_run = ["embed", str(data), "--provider", "openai", "--cache", str(tmp_path), "--dry-run"]
    assert main([*dry_run, "--base-url", root]) == 0
    printed = capsys.readouterr().out
    assert " at http://proxy.example:8080/v1: " in printed and "SECRET" not in printed


def test_dry_run_needs_no_api_key(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`embed --dry-run --provider openai` was refused for want of $OPENAI_API_KEY, though it sends
    nothing: it now says what would be sent, and what the store holds, without a key; the key is
    asked for where something is sent, and an encoder made to plan refuses to send."""
    data = _write_beir(tmp_path / "tiny", n_docs=4, n_queries=2)
    with FakeProvider("openai") as fake:
        embed = ["embed", *_cli_args(fake, data, tmp_path / "cache")]
        assert main([*embed, "--dry-run"]) == 0
        assert "0 texts cached, 6 would be sent in 2 requests (~" in capsys.readouterr().out
        assert main(embed) == 2
        assert "openai: no API key found; set OPENAI_API_KEY" in capsys.readouterr().err
        clean_env.setenv("OPENAI_API_KEY", fake.key)
        assert main([*embed, "--quiet"]) == 0
        capsys.readouterr()
        clean_env.delenv("OPENAI_API_KEY")
        assert main([*embed, "--dry-run"]) == 0
        assert "6 texts cached, 0 would be sent (~0 tokens" in capsys.readouterr().out
        sent = len(fake.calls)
        planner = make_encoder("openai", base_url=fake.url, plan_only=True)
        with pytest.raises(EncoderError, match="made with plan_only=True, to say what would be sent"):
            planner.encode_batch(["a text"], "query")
        assert len(fake.calls) == sent
    # Vertex: no token and no $GOOGLE_CLOUD_PROJECT (the application-default credentials name it when
    # something is sent): the plan needs neither
    clean_env.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    vertex = ["embed", str(data), "--provider", "vertex", "--cache", str(tmp_path / "cache"), "--dry-run"]
    assert main(vertex) == 0
    assert "0 texts cached, 6 would be sent in 2 requests (~" in capsys.readouterr().out


def test_progress_bar_shows_rate_and_retries(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_beir(tmp_path / "tiny", n_docs=12, n_queries=8)
    with FakeProvider("openai", delay=0.04) as fake:
        clean_env.setenv("OPENAI_API_KEY", fake.key)
        fake.schedule(Fault.rate_limited("0.01"))
        args = [*_cli_args(fake, data, tmp_path / "cache"), "--batch-size", "4", "--max-concurrency", "1"]
        assert main(["embed", *args]) == 0
    captured = capsys.readouterr()
    assert "20 texts embedded" in captured.out and "1 retries" in captured.out
    assert "text/s" in captured.err and "retries=1" in captured.err


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_fit_with_an_api_encoder_never_records_the_key(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_beir(tmp_path / "tiny", n_docs=60, n_queries=30)
    out = tmp_path / "out"
    with FakeProvider("openai-compatible", dim=16) as fake:
        clean_env.setenv("OPENAI_COMPATIBLE_API_KEY", fake.key)
        args = [*_cli_args(fake, data, tmp_path / "cache"), "--out", str(out)]
        assert main(["fit", *args, "--max-steps", "30", "--folds", "2", "--precision", "bfloat16"]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "adapter" / "config.json").read_text())
    assert report["protocol"] == "kfold" and report["encoder_calls"]["texts_sent"] == 90
    for fold in [*report["fold_results"], report["validation"]]:  # --precision reaches every fit
        assert {c["precision"] for c in fold["candidates"]} == {"bfloat16"}
    assert config["encoder"]["fingerprint"].startswith("openai-compatible:fake-model:")
    assert config["encoder"]["config"]["base_url"] == fake.url
    assert FAKE_KEY not in captured.out + captured.err
    for path in out.rglob("*"):
        assert not path.is_file() or FAKE_KEY.encode() not in path.read_bytes(), path


def test_bad_key_is_one_line_naming_the_env_var(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_beir(tmp_path / "tiny", n_docs=4, n_queries=2)
    wrong = "sk-wrong-SECRET-0000"
    with FakeProvider("openai") as fake:
        clean_env.setenv("OPENAI_API_KEY", wrong)
        assert main(["embed", *_cli_args(fake, data, tmp_path / "cache"), "--quiet"]) == 2
        assert len(fake.calls) == 1  # a 401 is not retried
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("search-adaptor: error: openai: HTTP 401") and "\n" not in err
    assert "$OPENAI_API_KEY" in err and wrong not in captured.err + captured.out

    clean_env.delenv("OPENAI_API_KEY")  # (a dry run needs none: test_dry_run_needs_no_api_key)
    assert main(["embed", str(data), "--provider", "openai", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search-adaptor: error: openai: no API key") and "OPENAI_API_KEY" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--provider", "openai", "--batch-size", "0"], "--batch-size: must be a positive int, got 0"),
        (["--provider", "openai", "--timeout", "-1"], "--timeout: must be a positive float, got -1"),
        (["--timeout", "5"], "sentence-transformers: --timeout does not apply to a local model"),
        (
            ["--timeout", "5", "--max-concurrency", "2"],
            "sentence-transformers: --max-concurrency, --timeout do not apply to a local model",
        ),
        # the query model's refusals name its flags, not the documents' model's (or Python's names)
        (
            ["--query-base-url", "http://127.0.0.1:9/v1"],
            "sentence-transformers: --query-base-url does not apply",
        ),
        (
            ["--query-provider", "openai-compatible", "--query-base-url", "http://127.0.0.1:9/v1"],
            "openai-compatible: pass --query-model, the model (or deployment) name",
        ),
        (  # the query model's API without a root names the flag, not Python's base_url=
            ["--query-provider", "openai-compatible", "--query-model", "m"],
            "openai-compatible: no endpoint; pass --query-base-url",
        ),
        (["--provider", "model2vec"], "model2vec: pass --model, the model folder"),
        (["--embeddings", "vectors"], "unrecognized arguments: --embeddings vectors"),  # not in its --help
    ],
)
def test_bad_encoder_options_are_one_line(
    flags: list[str],
    message: str,
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = _write_beir(tmp_path / "tiny", n_docs=4, n_queries=2)
    clean_env.setenv("OPENAI_API_KEY", FAKE_KEY)
    assert main(["embed", str(data), "--cache", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("search-adaptor: error: ") and message in err and "\n" not in err


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
def test_a_query_model_of_the_documents_api_is_called_at_its_base_url(
    provider: str, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--provider P --base-url ROOT --query-model M``: the query model is P's too, so it is called
    at ROOT as the documents' model is; it went to P's public endpoint (api.openai.com) or, for an
    openai-compatible API, was refused for want of ``base_url=``."""
    data = _write_beir(tmp_path / "tiny", n_docs=6, n_queries=3)
    with FakeProvider(provider) as fake:
        clean_env.setenv(KEY_ENV[provider], fake.key)
        args = [*_cli_args(fake, data, tmp_path / "cache"), "--model", "doc-model"]
        assert main(["embed", *args, "--query-model", "query-model", "--quiet"]) == 0, capsys.readouterr().err
        models = {call.body["model"] for call in fake.calls if call.status == 200}
        assert models == {"doc-model", "query-model"}


@pytest.mark.slow  # a whole fit (CI runs it)
@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
def test_a_recorded_query_model_of_the_documents_api_is_called_at_the_base_url_given(
    provider: str, tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a cross-model fit at ``--base-url ROOT``, ``evaluate`` (``index``, ``search``, ``serve``)
    at ``--base-url ROOT`` reads the query model from the adapter: it is the documents' API's, so it is
    called at ROOT too. It went to the public endpoint (api.openai.com: retried for a minute, then
    advised --base-url, which was given), or was refused for want of a root."""
    data = _write_beir(tmp_path / "tiny", n_docs=40, n_queries=12)
    with FakeProvider(provider, dim=16) as fake:
        clean_env.setenv(KEY_ENV[provider], fake.key)
        args = [*_cli_args(fake, data, tmp_path / "cache"), "--model", "doc-model"]
        fit = ["fit", *args, "--query-model", "query-model", "--unlabelled", "--max-steps", "5", "--quiet"]
        assert main([*fit, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
        fake.calls.clear()
        again = ["--adapter", str(tmp_path / "out" / "adapter"), "--base-url", fake.url, "--quiet"]
        again += ["--cache", str(tmp_path / "other")]  # nothing cached: every text is sent again
        assert main(["evaluate", str(data), *again]) == 0, capsys.readouterr().err
        models = {call.body["model"] for call in fake.calls if call.status == 200}
        assert models == {"doc-model", "query-model"}


@pytest.mark.slow  # a whole fit or timed retries, over a second (CI runs it)
def test_credentials_in_the_base_url_are_never_written_or_printed(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--base-url http://user:pw@host/v1?api_key=...``: requests authenticate, nothing keeps the secrets."""
    data = _write_beir(tmp_path / "tiny", n_docs=60, n_queries=30)
    out, cache = tmp_path / "out", tmp_path / "cache"
    password, key = "pw-SECRET-2718", "q-SECRET-1414"
    with FakeProvider("openai-compatible", dim=16, require_key=False) as fake:
        url = fake.url.replace("http://", f"http://user:{password}@") + f"?api_key={key}"
        args = [str(data), "--provider", "openai-compatible", "--model", "fake-model", "--base-url", url]
        assert (
            main(
                ["fit", *args, "--cache", str(cache), "--out", str(out), "--max-steps", "30", "--folds", "2"]
            )
            == 0
        )
        assert fake.calls[0].headers["authorization"].startswith("Basic ") and fake.calls[0].query == {
            "api_key": key
        }
        fake.schedule(Fault.rejected(404, "no such model"))
        assert main(["embed", *args, "--cache", str(tmp_path / "other"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "HTTP 404" in captured.err
    config = json.loads((out / "adapter" / "config.json").read_text())
    assert config["encoder"]["config"]["base_url"] == fake.url
    for secret in (password, key):
        assert secret not in captured.out + captured.err
        for path in [*out.rglob("*"), *cache.rglob("*")]:
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path


@pytest.mark.slow  # two whole fits (CI runs them)
def test_matryoshka_sizes_over_an_api_encoder_through_the_store(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dims` works on API embeddings as on local ones: each size scored against truncation and PCA,
    the texts paid for once (the unsupervised fit reads them from the store), an index at a size."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    data = _write_beir(tmp_path / "tiny", n_docs=60, n_queries=30)
    with FakeProvider("openai-compatible", dim=16) as fake:
        clean_env.setenv("OPENAI_COMPATIBLE_API_KEY", fake.key)
        args = _cli_args(fake, data, tmp_path / "cache")
        fit = ["fit", *args, "--dims", "4,8", "--max-steps", "30", "--folds", "2", "--quiet", "-o", "json"]
        assert main([*fit, "--out", str(tmp_path / "sup")]) == 0
        supervised = json.loads(capsys.readouterr().out)
        assert main([*fit, "--unsupervised", "--out", str(tmp_path / "unsup")]) == 0
        unsupervised = json.loads(capsys.readouterr().out)
        for report, family in ((supervised, "matryoshka"), (unsupervised, "matryoshka-unsupervised")):
            assert report["family"] == family
            assert {f"{s}@{m}" for s in ("adapted", "zero-shot", "pca") for m in (4, 8)} <= set(
                report["metrics"]
            )
        assert supervised["encoder_calls"]["texts_sent"] == 90
        assert unsupervised["encoder_calls"] == {"texts_sent": 0, "texts_cached": 90}
        adapter, index = str(tmp_path / "sup" / "adapter"), str(tmp_path / "index")
        assert main(["index", *args, "--adapter", adapter, "--dim", "4", "--out", index, "--quiet"]) == 0
        capsys.readouterr()
        assert main(["search", index, "which passage is about item 3?", "-k", "2", "-o", "json"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 2
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["dim"] == 4


def test_search_and_serve_reach_the_recorded_api_through_another_root(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An index built through one API root is searched and served through another (a proxy, a gateway,
    a regional endpoint) with --base-url, with the same answers; the root survives the server's own
    encoder settings. A root that changes what the model records, one for a local model, and a query
    root for an index without a query model are refused in one line."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from fastapi.testclient import TestClient

    from search_adaptor.index import AdaptedIndex
    from search_adaptor.server import create_app
    from test_index import make_adapter
    from test_store import CountingEncoder

    query, index_dir = "which passage is about item 3?", tmp_path / "index"
    with FakeProvider("cohere", dim=8) as built, FakeProvider("cohere", dim=8) as proxy:
        clean_env.setenv(KEY_ENV["cohere"], built.key)
        encoder = make_encoder("cohere", base_url=built.url)
        docs = [f"passage number {i}" for i in range(12)]
        ids = [f"d{i}" for i in range(12)]
        adapter = make_adapter(8, info=encoder.info())
        AdaptedIndex.from_vectors(adapter, ids, encoder.encode_corpus(docs), encoder.info()).save(index_dir)
        expected = AdaptedIndex.load(index_dir, encoder=encoder).search([query], k=3)[0]
        built_calls = len(built.calls)

        assert main(["search", str(index_dir), query, "-k", "3", "-o", "json", "--base-url", proxy.url]) == 0
        got = [(hit["id"], hit["score"]) for hit in json.loads(capsys.readouterr().out)]
        assert got == [(d, pytest.approx(s, abs=1e-6)) for d, s in expected]
        assert [call.texts for call in proxy.calls] == [[query]] and len(built.calls) == built_calls

        served = AdaptedIndex.load(index_dir)
        served.configure_encoder(base_url=proxy.url)  # what `serve --base-url` does, then create_app
        reply = TestClient(create_app(served)).post("/search", json={"queries": [query], "k": 3})
        assert [hit["id"] for hit in reply.json()["results"][0]] == [d for d, _ in expected]
        assert len(proxy.calls) == 2 and len(built.calls) == built_calls

        assert main(["search", str(index_dir), query, "--query-base-url", proxy.url]) == 2
        err = capsys.readouterr().err
        assert "queries are embedded by its documents' model" in err and "\n" not in err.strip()

        # an API out of reach: search gives its one call a retry budget (30 s by default), as serve
        # does (10 s); it retried for about a minute, as a long embedding job does
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))  # a port nothing listens on: every connection refused
        closed = f"http://127.0.0.1:{dead.getsockname()[1]}/v1"
        assert main(["search", str(index_dir), query, "--base-url", closed, "--retry-budget", "0.5"]) == 2
        err = capsys.readouterr().err.strip()
        assert "the retry budget of 0.5s is spent" in err and "\n" not in err, err
        dead.close()

    compatible = make_encoder("openai-compatible", "m", base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(ValueError, match="API root is part of what it records"):
        from_info(compatible.info(), base_url="http://127.0.0.1:8/v1")
    local = CountingEncoder(dim=8).info()
    vectors = np.eye(12, 8, dtype=np.float32)
    index = AdaptedIndex.from_vectors(make_adapter(8, info=local), ids, vectors, local)
    with pytest.raises(ValueError, match="is a local model, not an API"):
        index.configure_encoder(base_url=proxy.url)


def test_a_cross_model_index_with_api_documents_and_local_queries_serves(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Cheap queries, strong index: documents embedded by an API, queries by a local static model. The
    server's API settings (a retry budget, a root) go to the API model only; the local one loads."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from fastapi.testclient import TestClient

    from search_adaptor.index import AdaptedIndex, build_index
    from search_adaptor.server import create_app
    from test_crossmodel import _write_beir as write_word_beir
    from test_crossmodel import unlabelled_cross_adapter
    from test_model2vec import static_model
    from tiny_models import WORDS

    data = write_word_beir(tmp_path / "tiny", WORDS, n_docs=20, n_train=5, n_test=5)  # words it knows
    with FakeProvider("cohere", dim=8) as api, FakeProvider("cohere", dim=8) as proxy:
        clean_env.setenv(KEY_ENV["cohere"], api.key)
        docs = make_encoder("cohere", base_url=api.url)
        queries = make_encoder("model2vec", model=str(static_model(tmp_path / "m2v")))
        _, adapter = unlabelled_cross_adapter(data, docs, queries, tmp_path / "cache")
        index_dir = tmp_path / "index"
        build_index(data, docs, adapter, index_dir, cache_dir=tmp_path / "cache", query_encoder=queries)
        expected = AdaptedIndex.load(index_dir, encoder=docs).search(["the cat sat"], k=3)
        assert "query_encoder" in json.loads((index_dir / "manifest.json").read_text())

        served = AdaptedIndex.load(index_dir)
        served.configure_encoder(base_url=proxy.url)
        client = TestClient(create_app(served))  # gives the API model a retry budget
        reply = client.post("/search", json={"queries": ["the cat sat"], "k": 3})
        assert reply.status_code == 200, reply.text
        assert [hit["id"] for hit in reply.json()["results"][0]] == [d for d, _ in expected[0]]
        documents = client.post("/embed", json={"queries": ["a red square"], "kind": "document"})
        assert documents.status_code == 200 and [c.texts for c in proxy.calls] == [["a red square"]]


def test_evaluate_reaches_the_recorded_api_query_model_through_another_root(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cross-model adapter records its query model (here an API); `evaluate` recreates it from the
    record, at --query-base-url when given (a proxy), with no --query-provider or --query-model."""
    from test_crossmodel import unlabelled_cross_adapter

    data = _write_beir(tmp_path / "tiny", n_docs=20, n_queries=10)
    with (
        FakeProvider("cohere", dim=8) as documents_api,
        FakeProvider("openai", dim=12) as queries_api,
        FakeProvider("openai", dim=12) as proxy,
    ):
        clean_env.setenv(KEY_ENV["cohere"], documents_api.key)
        clean_env.setenv(KEY_ENV["openai"], queries_api.key)
        docs = make_encoder("cohere", base_url=documents_api.url)
        queries = make_encoder("openai", base_url=queries_api.url)
        _, adapter = unlabelled_cross_adapter(data, docs, queries, tmp_path / "cache")
        adapter.save(tmp_path / "adapter")
        before = len(queries_api.calls)
        args = [
            "evaluate", str(data), "--adapter", str(tmp_path / "adapter"), "--provider", "cohere",
            "--base-url", documents_api.url, "--cache", str(tmp_path / "fresh"), "--quiet", "-o", "json",
        ]  # fmt: skip
        assert main([*args, "--query-base-url", proxy.url]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["query_model"] == "text-embedding-3-small" and "adapted" in report["metrics"]
        texts = {text for call in proxy.calls for text in call.texts}
        assert {f"which passage is about item {i}?" for i in range(10)} <= texts
        assert len(queries_api.calls) == before  # the recorded model, reached through the proxy only


def test_evaluate_and_index_default_to_the_model_the_adapter_records(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --provider or --model, `evaluate` and `index` embed with the model the adapter was
    trained on (reached at --base-url when given), not the local default."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from test_index import make_adapter

    data = _write_beir(tmp_path / "tiny", n_docs=20, n_queries=10)
    with FakeProvider("cohere", dim=8) as fake:
        clean_env.setenv(KEY_ENV["cohere"], fake.key)
        make_adapter(8, info=make_encoder("cohere", base_url=fake.url).info()).save(tmp_path / "adapter")
        common = ["--adapter", str(tmp_path / "adapter"), "--base-url", fake.url]
        common += ["--cache", str(tmp_path / "cache")]
        assert main(["evaluate", str(data), *common, "--quiet", "-o", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["encoder_fingerprint"].startswith("cohere:embed-v4.0:")
        assert main(["index", str(data), *common, "--out", str(tmp_path / "index"), "--quiet"]) == 0
        assert "20 documents indexed" in capsys.readouterr().out
        assert len(fake.served) == 30  # each text sent once: the index found the documents in the store
        assert main(["evaluate", str(data), *common, "--dimensions", "4"]) == 2
        assert "--dimensions 4: the adapter was trained on embed-v4.0 at its full width" in (
            capsys.readouterr().err
        )


def test_hnsw_settings_are_flags_and_refused_on_an_exact_index(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every HNSW index built by the command line was M 32 and ef_search 128, and nothing widened a
    search for recall: `index --hnsw-m --ef-search` set the graph (recorded in the manifest), and
    `search`/`serve --ef-search` widen one run without changing the folder. On a flat index, where
    they would do nothing, each is refused in one line, naming the flags on the command line and the
    arguments in Python."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.server import serve

    data = _write_beir(tmp_path / "tiny", n_docs=40, n_queries=20)
    with FakeProvider("openai-compatible", dim=16) as fake:
        clean_env.setenv("OPENAI_COMPATIBLE_API_KEY", fake.key)
        args = _cli_args(fake, data, tmp_path / "cache")
        fit = ["fit", *args, "--family", "linear", "--max-steps", "5", "--quiet"]
        assert main([*fit, "--out", str(tmp_path / "f")]) == 0
        adapter, hnsw, flat = str(tmp_path / "f" / "adapter"), tmp_path / "hnsw", tmp_path / "flat"
        index = ["index", *args, "--adapter", adapter, "--quiet", "--out"]
        assert main([*index, str(hnsw), "--backend", "hnsw", "--hnsw-m", "8", "--ef-search", "40"]) == 0
        manifest = json.loads((hnsw / "manifest.json").read_text())
        assert (manifest["hnsw"]["m"], manifest["hnsw"]["ef_search"]) == (8, 40)
        capsys.readouterr()
        query = "which passage is about item 3?"
        assert main(["search", str(hnsw), query, "-k", "3", "-o", "json", "--ef-search", "300"]) == 0
        assert len(json.loads(capsys.readouterr().out)) == 3
        assert json.loads((hnsw / "manifest.json").read_text()) == manifest  # one run's, not the folder's

        assert main([*index, str(flat), "--hnsw-m", "8"]) == 2
        assert capsys.readouterr().err.strip() == (
            "search-adaptor: error: --hnsw-m applies to --backend hnsw; this index is flat (exact), which "
            "has no graph"
        )
        assert not flat.exists()
        assert main([*index, str(flat), "--backend", "hnsw", "--hnsw-m", "1"]) == 2  # FAISS segfaulted
        assert capsys.readouterr().err.strip() == (
            "search-adaptor: error: --hnsw-m must be an integer from 2 to 1024; got 1"
        )
        assert not flat.exists()
        assert main([*index, str(flat)]) == 0
        capsys.readouterr()
        assert main(["search", str(flat), query, "--ef-search", "5"]) == 2
        refusal = f"applies to an HNSW index; {flat} is flat: exact search, nothing to widen"
        assert capsys.readouterr().err.strip() == f"search-adaptor: error: --ef-search {refusal}"
        with socket.socket() as probe:  # a free port: serve listens before it loads the index
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        assert main(["serve", str(flat), "--port", str(port), "--ef-search", "5"]) == 2
        assert capsys.readouterr().err.strip() == f"search-adaptor: error: --ef-search {refusal}"
        with pytest.raises(ValueError, match=f"^ef_search {re.escape(refusal)}$"):
            serve(flat, port=0, ef_search=5, retry_budget_s=None)


def test_search_table_escapes_ids_that_would_split_a_row_or_command_the_terminal(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id with a line break printed as two rows, and one with an ANSI escape recoloured the
    terminal: the table shows such ids as literals; plain ids (spaces, accents, CJK) as they are, and
    ``-o json`` gives every id exactly."""
    pytest.importorskip("faiss", reason="needs faiss (the index extra)")
    from search_adaptor.index import AdaptedIndex
    from test_index import make_adapter

    ids = ["evil\x1b[31mRED\x1b[0m\r", "two\nlines", "tab\there", "plain id é 文", "d4"]
    with FakeProvider("cohere", dim=8) as fake:
        clean_env.setenv(KEY_ENV["cohere"], fake.key)
        encoder = make_encoder("cohere", base_url=fake.url)
        vectors = encoder.encode_corpus([f"passage number {i}" for i in range(len(ids))])
        AdaptedIndex.from_vectors(make_adapter(8, info=encoder.info()), ids, vectors, encoder.info()).save(
            tmp_path / "index"
        )
        search = ["search", str(tmp_path / "index"), "a query", "-k", "5", "--base-url", fake.url]
        assert main(search) == 0
        table = capsys.readouterr().out
        assert main([*search, "-o", "json"]) == 0
        exact = [hit["id"] for hit in json.loads(capsys.readouterr().out)]
    rows = table.splitlines()[1:]
    assert sorted(exact) == sorted(ids) and len(rows) == 5 and "\x1b" not in table and "\r" not in table
    shown = {re.fullmatch(r" *\d+  -?\d\.\d{4}  (.*)", row).group(1) for row in rows}
    assert shown == {"'evil\\x1b[31mRED\\x1b[0m\\r'", "'two\\nlines'", "'tab\\there'", "plain id é 文", "d4"}
