"""Record what the official SDKs send to embed images (not run by CI); ``tests/test_images.py`` replays.

Like ``tests/recordings/record.py``: each case points an SDK at a local fake of its API
(``fakes/fake_providers.py``), makes one image (or multimodal text) embedding call, and writes what
arrived to ``tests/recordings/images/<case>.json``, with the call's images (base64 of the PNG bytes
made by ``fake_providers.png``) so that the test can send the same images through our encoder.
Vertex AI's ``MultiModalEmbeddingModel`` looks the model up in Model Garden and speaks gRPC, which a
local recording server cannot answer; its format is cited from the SDK's source in
``search_adaptor/encoders/gemini.py`` instead. Re-record after an SDK upgrade::

    pip install cohere voyageai
    PYTHONPATH=src:fakes python tests/recordings/images/record.py
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fake_providers import FAKE_KEY, FakeProvider, png

HERE = Path(__file__).resolve().parent
HEADERS = ("authorization", "content-type")
IMAGES = [png(3, 2, seed=1), png(2, 5, seed=2)]


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _cohere(fake: FakeProvider, case: dict[str, Any]) -> None:
    import cohere

    client = cohere.ClientV2(api_key=FAKE_KEY, base_url=fake.url)
    client.embed(
        model=case["model"],
        images=[_uri(d) for d in IMAGES],
        input_type="search_document",
        embedding_types=["base64"],
        output_dimension=case["dimensions"],
    )


def _voyage_images(fake: FakeProvider, case: dict[str, Any]) -> None:
    import voyageai

    client = voyageai.Client(api_key=FAKE_KEY, base_url=fake.url, max_retries=0)
    inputs = [{"content": [{"type": "image_base64", "image_base64": _uri(d)}]} for d in IMAGES]
    client.multimodal_embed(inputs, model=case["model"], input_type="document", truncation=True)


def _voyage_urls(fake: FakeProvider, case: dict[str, Any]) -> None:
    import voyageai

    client = voyageai.Client(api_key=FAKE_KEY, base_url=fake.url, max_retries=0)
    inputs = [{"content": [{"type": "image_url", "image_url": u}]} for u in case["urls"]]
    client.multimodal_embed(inputs, model=case["model"], input_type="document", truncation=True)


def _voyage_text(fake: FakeProvider, case: dict[str, Any]) -> None:
    import voyageai

    client = voyageai.Client(api_key=FAKE_KEY, base_url=fake.url, max_retries=0)
    client.multimodal_embed(
        [[t] for t in case["texts"]], model=case["model"], input_type="query", truncation=True
    )


#: case name -> (SDK distribution, recorder, the call: provider, model, dimensions, what it embeds)
CASES: dict[str, tuple[str, Callable[[FakeProvider, dict[str, Any]], None], dict[str, Any]]] = {
    "cohere-images": ("cohere", _cohere, {"provider": "cohere", "model": "embed-v4.0", "dimensions": 256}),
    "voyage-multimodal-images": (
        "voyageai",
        _voyage_images,
        {"provider": "voyage", "model": "voyage-multimodal-3"},
    ),
    "voyage-multimodal-urls": (
        "voyageai",
        _voyage_urls,
        {"provider": "voyage", "model": "voyage-multimodal-3", "urls": ["https://example.com/cat.png"]},
    ),
    "voyage-multimodal-queries": (
        "voyageai",
        _voyage_text,
        {"provider": "voyage", "model": "voyage-multimodal-3", "texts": ["a red square", "東京の写真"]},
    ),
}


def record(name: str) -> dict[str, Any]:
    """Make case ``name``'s call with its SDK against a fake and return what the SDK sent."""
    sdk, call, params = CASES[name]
    case = {"dimensions": None, **params}
    if "texts" not in case and "urls" not in case:
        case["images"] = [base64.b64encode(d).decode() for d in IMAGES]
    with FakeProvider(case["provider"], dim=case["dimensions"] or 8) as fake:
        call(fake, case)
        first = fake.calls[0]
        assert first.status == 200, f"{name}: the fake refused what {sdk} sent: {first.status} {first.body}"
    headers = {k: v.replace(FAKE_KEY, "<KEY>") for k, v in first.headers.items() if k in HEADERS}
    request = {
        "method": "POST",
        "path": first.path,
        "query": first.query,
        "headers": headers,
        "json": first.body,
    }
    return {"sdk": sdk, "sdk_version": importlib.metadata.version(sdk), "call": case, "request": request}


def main() -> None:
    for name in CASES:
        out = HERE / f"{name}.json"
        out.write_text(json.dumps(record(name), indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        print(f"wrote {out.relative_to(HERE.parents[2])}")


if __name__ == "__main__":
    main()
