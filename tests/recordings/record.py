"""Record what the official SDKs send for the calls our encoders make (not run by CI).

Each case points an official SDK at a local fake of its API (``fakes/fake_providers.py``, which
records every request), makes one embedding call, and writes what arrived to
``tests/recordings/<case>.json``: method, path, query, the headers that matter (auth, content type,
OpenAI organization/project) with the key replaced by ``<KEY>``, the JSON body, the SDK's name and
version, and the call's parameters. ``tests/test_sdk_parity.py`` replays the same call through our
encoder and compares. Re-record after an SDK upgrade::

    pip install openai cohere voyageai google-genai
    PYTHONPATH=src:fakes python tests/recordings/record.py

Google's Vertex calls are recorded with ``google-genai`` (Google's current SDK for both the Gemini
API and Vertex AI) with ``api_version="v1"``, the version we call; ``google-cloud-aiplatform``'s
``TextEmbeddingModel`` speaks gRPC by default and looks the model up in Model Garden before
embedding, which a local recording server cannot answer.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fake_providers import FAKE_KEY, FakeProvider

HERE = Path(__file__).resolve().parent
TEXTS = ["the cat sat on the mat", "東京は日本の首都です"]
#: Request headers compared by the parity tests (others are SDK telemetry: user agent, retries...).
HEADERS = (
    "authorization",
    "api-key",
    "x-goog-api-key",
    "x-goog-user-project",
    "content-type",
    "openai-organization",
    "openai-project",
)


def _openai(fake: FakeProvider, case: dict[str, Any]) -> None:
    import openai

    client = openai.OpenAI(
        api_key=FAKE_KEY, base_url=fake.url, max_retries=0, organization="org-1", project="proj-1"
    )
    client.embeddings.create(model=case["model"], input=case["texts"], dimensions=case["dimensions"])


def _compatible(fake: FakeProvider, case: dict[str, Any]) -> None:
    import openai

    client = openai.OpenAI(api_key=FAKE_KEY, base_url=fake.url, max_retries=0)
    client.embeddings.create(model=case["model"], input=case["texts"], encoding_format="float")


def _azure(fake: FakeProvider, case: dict[str, Any]) -> None:
    import openai

    auth = {"azure_ad_token": FAKE_KEY} if case["options"].get("azure_ad_token") else {"api_key": FAKE_KEY}
    client = openai.AzureOpenAI(
        azure_endpoint=fake.url, api_version=case["options"]["api_version"], max_retries=0, **auth
    )
    client.embeddings.create(model=case["model"], input=case["texts"], dimensions=case["dimensions"])


def _genai(fake: FakeProvider, case: dict[str, Any]) -> None:
    from google import genai
    from google.genai import types

    root = fake.url.rsplit("/", 1)[0] + "/"
    if case["provider"] == "vertex":
        from google.oauth2.credentials import Credentials

        client = genai.Client(
            vertexai=True,
            project=case["options"]["project"],
            location=case["options"]["location"],
            credentials=Credentials(token=FAKE_KEY),
            http_options=types.HttpOptions(base_url=root, api_version="v1"),
        )
    else:
        client = genai.Client(
            api_key=FAKE_KEY, http_options=types.HttpOptions(base_url=root, api_version="v1beta")
        )
    config: dict[str, Any] = {"output_dimensionality": case["dimensions"]}
    if case.get("task_type"):
        config["task_type"] = case["task_type"]
    if case["provider"] == "vertex":
        config["auto_truncate"] = True
    prompt = case.get("prompt", "")
    texts = [prompt + t for t in case["texts"]]
    # one Content per text: a list of strings would be one multimodal Content for gemini-embedding-2
    contents = [types.Content(parts=[types.Part(text=t)], role="user") for t in texts]
    client.models.embed_content(model=case["model"], contents=contents, config=config)


def _cohere(fake: FakeProvider, case: dict[str, Any]) -> None:
    import cohere

    client = cohere.ClientV2(api_key=FAKE_KEY, base_url=fake.url)
    client.embed(
        model=case["model"],
        texts=case["texts"],
        input_type="search_query",
        embedding_types=["base64"],
        truncate="END",
        output_dimension=case["dimensions"],
    )


def _voyage(fake: FakeProvider, case: dict[str, Any]) -> None:
    import voyageai

    client = voyageai.Client(api_key=FAKE_KEY, base_url=fake.url, max_retries=0)
    client.embed(
        case["texts"],
        model=case["model"],
        input_type="query",
        truncation=True,
        output_dimension=case["dimensions"],
    )


VERTEX = {"project": "fake-project", "location": "us-central1"}
#: case name -> (SDK distribution, recorder, the call's parameters)
CASES: dict[str, tuple[str, Callable[[FakeProvider, dict[str, Any]], None], dict[str, Any]]] = {
    "openai": (
        "openai",
        _openai,
        {"provider": "openai", "model": "text-embedding-3-small", "dimensions": 256},
    ),
    "openai-compatible": (
        "openai",
        _compatible,
        {"provider": "openai-compatible", "model": "nomic-embed-text"},
    ),
    "azure-openai": (
        "openai",
        _azure,
        {
            "provider": "azure-openai",
            "model": "my-deployment",
            "dimensions": 256,
            "options": {"api_version": "2024-10-21"},
        },
    ),
    "azure-openai-entra-id": (
        "openai",
        _azure,
        {
            "provider": "azure-openai",
            "model": "my-deployment",
            "dimensions": 256,
            "options": {"api_version": "2024-10-21", "azure_ad_token": True},
        },
    ),
    "gemini-embedding-001": (
        "google-genai",
        _genai,
        {
            "provider": "gemini",
            "model": "gemini-embedding-001",
            "dimensions": 256,
            "task_type": "RETRIEVAL_QUERY",
        },
    ),
    "gemini-embedding-2": (
        "google-genai",
        _genai,
        {
            "provider": "gemini",
            "model": "gemini-embedding-2",
            "dimensions": 256,
            "prompt": "task: search result | query: ",
        },
    ),
    "vertex-text-embedding-005": (
        "google-genai",
        _genai,
        {
            "provider": "vertex",
            "model": "text-embedding-005",
            "dimensions": 256,
            "task_type": "RETRIEVAL_QUERY",
            "options": VERTEX,
        },
    ),
    "vertex-gemini-embedding-001": (
        "google-genai",
        _genai,
        {
            "provider": "vertex",
            "model": "gemini-embedding-001",
            "dimensions": 256,
            "task_type": "RETRIEVAL_QUERY",
            "options": VERTEX,
            "texts": TEXTS[:1],
        },
    ),
    "vertex-gemini-embedding-2": (
        "google-genai",
        _genai,
        {
            "provider": "vertex",
            "model": "gemini-embedding-2-preview",
            "dimensions": 256,
            "prompt": "task: search result | query: ",
            "options": VERTEX,
            "texts": TEXTS[:1],
        },
    ),
    "cohere": ("cohere", _cohere, {"provider": "cohere", "model": "embed-v4.0", "dimensions": 256}),
    "voyage": ("voyageai", _voyage, {"provider": "voyage", "model": "voyage-3.5", "dimensions": 256}),
}


def record(name: str) -> dict[str, Any]:
    """Make case ``name``'s call with its SDK against a fake and return what the SDK sent."""
    sdk, call, params = CASES[name]
    case = {"texts": TEXTS, "dimensions": None, "options": {}, **params}
    with FakeProvider(case["provider"], dim=case["dimensions"] or 8) as fake:
        call(fake, case)
        first = fake.calls[0]
        assert first.status == 200, f"{name}: the fake refused what {sdk} sent: {first.status} {first.body}"
    headers = {k: v.replace(FAKE_KEY, "<KEY>") for k, v in first.headers.items() if k in HEADERS}
    return {
        "sdk": sdk,
        "sdk_version": importlib.metadata.version(sdk),
        "call": case,
        "request": {
            "method": "POST",
            "path": first.path,
            "query": first.query,
            "headers": headers,
            "json": first.body,
        },
    }


def main() -> None:
    for name in CASES:
        out = HERE / f"{name}.json"
        out.write_text(json.dumps(record(name), indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        print(f"wrote {out.relative_to(HERE.parent.parent)}")
    import voyageai.util

    atlas = {
        "sdk": "voyageai",
        "sdk_version": importlib.metadata.version("voyageai"),
        "default_base_url": {
            key: voyageai.util.get_default_base_url(key) for key in ("al-<KEY>", "pa-<KEY>")
        },
    }
    (HERE / "voyage-endpoints.json").write_text(json.dumps(atlas, indent=2, sort_keys=True) + "\n")
    print("wrote tests/recordings/voyage-endpoints.json")


if __name__ == "__main__":
    main()
