"""Load test: ``search-adaptor serve`` on 127.0.0.1 under concurrent clients, with an API key set.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/load_test.py                        # trains an adapter first
    HF_HUB_OFFLINE=1 python benchmarks/load_test.py --adapter DIR --threads 1
    python benchmarks/load_test.py --api-latency 0.1 --results load_test_api.md   # an embeddings API

Builds the SciFact index, starts the server in a subprocess (loopback only, key from an environment
variable), checks that calls without the key or with a wrong one are refused (401) while ``/health``
stays open, then measures the same server twice: one client sending SOLO sequential requests, then
CLIENTS concurrent clients that each send REQUESTS sequential ``/search`` requests (one SciFact
query, k=10); the throughput ratio shows what micro-batching buys. Every request has a timeout and
the whole run a deadline, so the test always ends; the server is stopped at the end. Writes
``benchmarks/results/load_test.md``; exits 1 on any error or a key not enforced.

With ``--api-latency S`` the server's encoder is an embeddings API instead of the local model: the
OpenAI-format fake of ``fakes/fake_providers.py`` on 127.0.0.1, answering each request after S
seconds (a typical API round trip is 0.1-0.3 s). The adapter is fitted with ``search-adaptor fit
--provider openai --base-url`` on SciFact's texts as the fake embeds them (hash-derived 384-d vectors:
retrieval quality means nothing here, the cost of serving is the same), with a throw-away store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving import DATA, RESULTS, ROOT, build_index, scifact_adapter

sys.path.insert(0, str(ROOT / "fakes"))  # the fake providers the tests use too
from fake_providers import KEY_ENV as PROVIDER_KEY_ENV
from fake_providers import FakeProvider

HOST = "127.0.0.1"
KEY_ENV = "SEARCH_ADAPTOR_LOAD_TEST_KEY"
API_DIM = 384  # the simulated API's vectors: as wide as MiniLM's, so FAISS does the same work
REQUEST_TIMEOUT = 120.0
DEADLINE = 900.0
CHECKED = 100  # answers compared with in-process search


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {timeout:.0f} s: {log.read_text()[-2000:]}")


def api_adapter(url: str, workdir: Path, cache: Path) -> Path:
    """An adapter fitted with ``search-adaptor fit`` on SciFact embedded by the API at ``url``."""
    cli = [sys.executable, "-m", "search_adaptor.cli", "fit", str(DATA), "--provider", "openai"]
    cli += ["--base-url", url, "--cache", str(cache), "--out", str(workdir / "fit"), "--quiet"]
    cli += ["--max-steps", "200"]  # the fake's vectors hold nothing to learn: keep the fit short
    subprocess.run(cli, check=True, stdout=sys.stderr)  # keep stdout for the markdown
    return workdir / "fit" / "adapter"


def auth_checks(url: str, key: str) -> dict[str, int]:
    """Status codes of unauthenticated, wrong-key, right-key and health calls."""
    body = {"queries": ["vitamin D"], "k": 3}
    openai_body = {"input": "vitamin D", "model": "search-adaptor-query"}
    return {
        "no key": httpx.post(f"{url}/search", json=body, timeout=60).status_code,
        "no key, /v1/embeddings": httpx.post(
            f"{url}/v1/embeddings", json=openai_body, timeout=60
        ).status_code,
        "wrong key": httpx.post(
            f"{url}/search", json=body, headers={"Authorization": "Bearer wrong"}, timeout=60
        ).status_code,
        "no key, /embed": httpx.post(f"{url}/embed", json=body, timeout=60).status_code,
        "right key": httpx.post(
            f"{url}/search", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ).status_code,
        "/health, no key": httpx.get(f"{url}/health", timeout=60).status_code,
    }


async def _load(url: str, key: str, texts: list[str], clients: int, requests: int) -> dict[str, Any]:
    """Latencies (s) of the successful requests, failures by kind, wall time and the hits per text."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    answers: dict[str, list[str]] = {}
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT
    ) as http:

        async def client(c: int) -> None:
            for r in range(requests):
                text = texts[(c * requests + r) % len(texts)]
                start = time.perf_counter()
                try:
                    answer = await http.post("/search", json={"queries": [text], "k": 10})
                except httpx.HTTPError as exc:
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    continue
                if answer.status_code != 200:
                    failures[str(answer.status_code)] = failures.get(str(answer.status_code), 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)
                answers[text] = [hit["id"] for hit in answer.json()["results"][0]]

        start = time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(clients))), DEADLINE)
        except TimeoutError:
            failures["unfinished at the deadline"] = (
                clients * requests - len(latencies) - sum(failures.values())
            )
        wall = time.perf_counter() - start
    return {"latencies": np.array(latencies), "failures": failures, "wall": wall, "answers": answers}


def _row(run: dict[str, Any]) -> str:
    lat = run["latencies"] * 1e3
    errors = sum(run["failures"].values())
    failures = f" {run['failures']}" if errors else ""
    return (
        f"| {run['clients']} x {run['requests']} | {errors}{failures} | {len(lat) / run['wall']:.1f} req/s | "
        + " | ".join(f"{v:.0f} ms" for v in (*np.percentile(lat, [50, 90, 99]), lat.max()))
        + " |"
    )


def markdown(res: dict[str, Any], cmd: str) -> str:
    solo, load = res["solo"], res["load"]
    threads = res["threads"] or os.environ.get("OMP_NUM_THREADS") or "all"
    gain = (len(load["latencies"]) / load["wall"]) / (len(solo["latencies"]) / solo["wall"])
    auth = ", ".join(f"{k} -> {v}" for k, v in res["auth"].items())
    lines = [
        f"## Load test (search-adaptor serve, SciFact index, encoder {res['encoder']})",
        "",
        f"`{cmd}` on {platform.machine()}, {os.cpu_count()} cores, load average at start "
        f"{res['load_avg']:.1f} (shared machine: absolute numbers move with it); server: one uvicorn process "
        f"on {HOST}, API key required, model threads {threads}; "
        "clients: httpx clients in one process on the same machine, each sending its requests one after "
        "another (1 query, k=10).",
        "",
        "| clients x requests | errors | throughput | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|---|",
        _row(solo),
        _row(load),
        "",
        f"Throughput with {load['clients']} clients: {gain:.1f}x one client's, on the same server. "
        f"Auth (HTTP status): {auth}. Answers equal in-process `AdaptedIndex.search` for "
        f"{res['agree']}/{res['checked']} checked queries.",
        "Concurrent requests are micro-batched: the queries waiting while the model works are embedded in "
        "one call per token length (so that no text is padded to a longer one; a vector may still differ "
        "from the one it gets alone in its last float32 bits, as the model's kernels round by batch shape) "
        "and searched with one FAISS call; with closed-loop clients, mean latency = clients / throughput. "
        "Batching saves the per-call overhead and the padding, not the model's arithmetic per token, "
        "which on a model thread that is busy anyway bounds the gain. An encoder that runs each text "
        "alone (the `onnx` provider, whose int8 activation scales are per call) gains only the HTTP and "
        "FAISS share.",
    ]
    if res["api_latency"] is not None:
        lines[-1] = (
            f"The encoder is an embeddings API simulated on {HOST} (the OpenAI-format fake of "
            f"`fakes/fake_providers.py`, {API_DIM}-d hash-derived vectors, each request answered after "
            f"{res['api_latency']:g} s; the adapter was fitted on its vectors, so retrieval quality means "
            "nothing here). Concurrent requests are micro-batched: the queries waiting while an API call "
            "is in flight go out together in the next one (up to the encoder's 4 calls in flight), and are "
            "searched with one FAISS call; with closed-loop clients, mean latency = clients / throughput. "
            "An API's cost is per call, not per token, so here batching multiplies throughput; a local "
            "model's is its arithmetic per token (the sections above and below)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, metavar="DIR", help="saved adapter (default: train one)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per client")
    parser.add_argument("--solo", type=int, default=100, help="requests of the one-client run")
    parser.add_argument("--threads", type=int, default=None, help="passed to `serve --threads`")
    parser.add_argument("--results", default="load_test.md", help="file name under benchmarks/results/")
    parser.add_argument(
        "--api-latency", type=float, default=None, metavar="S",
        help="serve over a simulated embeddings API answering each request after S seconds",
    )  # fmt: skip
    args = parser.parse_args()
    from search_adaptor.data import load_beir

    load_avg = os.getloadavg()[0]
    queries = load_beir(DATA).queries
    texts = [queries[q] for q in sorted(queries)]
    key = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        env = {**os.environ, KEY_ENV: key}
        if args.api_latency is None:
            index, _, _ = build_index(scifact_adapter(args.adapter, Path(tmp)), Path(tmp) / "index")
        else:
            fake = stack.enter_context(FakeProvider("openai", dim=API_DIM))
            os.environ[PROVIDER_KEY_ENV["openai"]] = env[PROVIDER_KEY_ENV["openai"]] = fake.key
            cache = Path(tmp) / "cache"
            adapter = api_adapter(fake.url, Path(tmp), cache)
            index, _, _ = build_index(adapter, Path(tmp) / "index", cache, base_url=fake.url)
            fake.delay = args.api_latency
        port = _free_port()
        url = f"http://{HOST}:{port}"
        cmd = [sys.executable, "-m", "search_adaptor.cli", "serve", str(Path(tmp) / "index"), "--host", HOST]
        cmd += ["--port", str(port), "--api-key-env", KEY_ENV]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--base-url", fake.url] if args.api_latency is not None else []
        log = Path(tmp) / "server.log"
        with log.open("w") as log_fh:
            proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=log_fh)
            try:
                _wait_healthy(url, proc, log)
                auth = auth_checks(url, key)
                solo = asyncio.run(_load(url, key, texts[::-1], 1, args.solo))
                load = asyncio.run(_load(url, key, texts, args.clients, args.requests))
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        answers = {**solo["answers"], **load["answers"]}
        checked = sorted(answers)[:CHECKED]
        local = index.search(checked, k=10)
        agree = sum(answers[t] == [d for d, _ in hits] for t, hits in zip(checked, local, strict=True))
    solo.update(clients=1, requests=args.solo)
    load.update(clients=args.clients, requests=args.requests)
    res = {"solo": solo, "load": load, "auth": auth, "load_avg": load_avg, "threads": args.threads}
    res["api_latency"] = args.api_latency
    res.update(agree=agree, checked=len(checked))
    res["encoder"] = "{provider} {model}".format(**index.manifest["encoder"])
    if args.api_latency is not None:
        res["encoder"] += f" as simulated on loopback, {args.api_latency:g} s per call"
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cmd_text = f"{threads}HF_HUB_OFFLINE=1 python benchmarks/load_test.py"
    cmd_text += f" --adapter {args.adapter}" if args.adapter else ""
    cmd_text += f" --api-latency {args.api_latency:g}" if args.api_latency is not None else ""
    cmd_text += f" --clients {args.clients} --requests {args.requests} --solo {args.solo}"
    cmd_text += f" --threads {args.threads}" if args.threads else ""
    cmd_text += f" --results {args.results}" if args.results != "load_test.md" else ""
    text = markdown(res, cmd_text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.results).write_text(text)
    print(text)
    errors = sum(solo["failures"].values()) + sum(load["failures"].values())
    if errors or auth["no key"] != 401 or auth["wrong key"] != 401:
        sys.exit(1)


if __name__ == "__main__":
    main()
