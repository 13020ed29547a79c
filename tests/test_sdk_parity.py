"""Our encoders send what the official SDKs send, for the same call.

``tests/recordings/*.json`` hold requests recorded from the SDKs themselves (openai, cohere,
voyageai, google-genai; versions in each file; made by ``tests/recordings/record.py``, not run
here). Each test replays the recorded call through our encoder against the same local fake and
compares method, path, query, the headers that matter and the JSON body field by field. So the
expected requests come from the SDKs, not from our reading of the docs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fake_providers import FAKE_KEY, FakeProvider, fake_encoder
from search_adaptor.encoders.registry import make_encoder

RECORDINGS = Path(__file__).resolve().parent / "recordings"
CASES = sorted(p.stem for p in RECORDINGS.glob("*.json") if p.stem != "voyage-endpoints")


def _without_nulls(value: Any) -> Any:
    """JSON with null fields dropped: a null is the API's default, as an absent field is (the
    voyageai SDK sends ``"output_dtype": null``; we leave it out)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _our_encoder(fake: FakeProvider, call: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Our encoder configured as the SDK was for the recorded call."""
    options: dict[str, Any] = {"model": call["model"], "dimensions": call["dimensions"]}
    options.update({k: v for k, v in call["options"].items() if k != "azure_ad_token"})
    if call["options"].get("azure_ad_token"):
        monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
        options.update(api_key=None, azure_ad_token=FAKE_KEY)
    if call["provider"] == "openai":
        options.update(organization="org-1", project="proj-1")
    return fake_encoder(fake, **options)


@pytest.mark.parametrize("case", CASES)
def test_request_matches_the_official_sdk(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = json.loads((RECORDINGS / f"{case}.json").read_text())
    call, expected = recorded["call"], recorded["request"]
    with FakeProvider(call["provider"], dim=call["dimensions"] or 8) as fake:
        _our_encoder(fake, call, monkeypatch).encode_batch(call["texts"], "query")
        ours = fake.calls[0]
    sdk = f"{recorded['sdk']} {recorded['sdk_version']}"
    assert ours.path == expected["path"], sdk
    assert ours.query == expected["query"], sdk
    headers = {k: ours.headers.get(k, "").replace(FAKE_KEY, "<KEY>") for k in expected["headers"]}
    assert headers == expected["headers"], sdk
    assert _without_nulls(ours.body) == _without_nulls(expected["json"]), sdk


def test_voyage_picks_the_endpoint_the_sdk_picks_for_each_kind_of_key() -> None:
    recorded = json.loads((RECORDINGS / "voyage-endpoints.json").read_text())
    for key, url in recorded["default_base_url"].items():
        assert make_encoder("voyage", api_key=key.replace("<KEY>", "x")).base_url == url
