"""Embedding through a faulty API: every text paid for once, killed runs resumed, adapters trained as usual.

Starts the fault-injecting OpenAI-format fake of ``fakes/fake_providers.py`` on 127.0.0.1 and drives
the real ``search-adaptor`` command against it, as a user would: one subprocess per run, a fake key
in ``$OPENAI_API_KEY``, a fresh ``--cache`` folder. On Cranfield (1,625 texts):

a. ``embed`` with a fault on one request in three (429 with ``Retry-After``, 500/503, a reply
   stalled past the client's timeout, malformed 200 bodies) completes; the server served each text
   exactly once; the client's retry count equals the faults it met;
b. a second ``embed`` sends nothing;
c. on a fresh cache, a run killed with SIGKILL half-way and then resumed re-sends only the texts
   never committed, and at most ``batch_size x max_concurrency`` texts are served twice;
d. ``fit`` trains an adapter on those API embeddings; the adapter records the openai fingerprint
   and no file or output holds the key.

Every check raises on failure. Run from the repository root (about a minute on 2 cores)::

    python benchmarks/provider_faults.py

Writes ``benchmarks/results/provider_faults.md`` and reassembles ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fakes"))  # the fake providers the tests use too

from fake_providers import CLIENT_GONE, FAKE_KEY, FakeProvider, Fault  # noqa: E402
from search_adaptor.data import Dataset, load_beir  # noqa: E402
from search_adaptor.encoders.openai import OpenAIEncoder  # noqa: E402
from search_adaptor.encoders.registry import make_encoder  # noqa: E402
from search_adaptor.store import EmbeddingStore  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cranfield"
OUT = ROOT / "benchmarks" / "results" / "provider_faults.md"
CLI = Path(sys.executable).with_name("search-adaptor")
DIM = 64  # width of the fake's vectors
BATCH, CONCURRENCY = 25, 4
TIMEOUT, STALL = 1.0, 2.0  # client timeout; how long a stalled reply hangs (longer)
RETRY_AFTER = "0.2"
#: One fault, then two clean replies, over and over, in the order requests arrive.
FAULTS = [
    Fault.rate_limited(RETRY_AFTER),
    Fault.server_error(500),
    Fault.slow(STALL),
    Fault.bad_body("not-json"),
    Fault.rate_limited(RETRY_AFTER),
    Fault.server_error(503),
    Fault.slow(STALL),
    Fault.bad_body("wrong-count"),
]
SCHEDULE = [f for fault in FAULTS for f in (fault, Fault(), Fault())] * 8
KILL_DELAY = 0.1  # seconds each reply takes in run c, so that it can be killed half-way
#: torch threads of run d's fit: on a shared 2-core machine, torch's default (one per core) next to
#: another busy process made the same fit about 20x slower (495 s vs 22 s); its speed is not what
#: this script measures.
FIT_THREADS = "1"


def check(ok: bool, what: str) -> None:
    """Stop the benchmark with ``what`` when a property it measures does not hold."""
    if not ok:
        raise RuntimeError(f"check failed: {what}")


def settle(fake: FakeProvider) -> None:
    """Wait until the fake has finished every request (stalled ones outlive the client's timeout)."""
    deadline = time.monotonic() + STALL + 5
    while any(call.status == 0 for call in fake.calls):
        check(time.monotonic() < deadline, "the fake never finished its requests")
        time.sleep(0.01)


def fault_kind(fault: Fault) -> str:
    """Name of what a scheduled :class:`Fault` does ("ok" for a clean reply)."""
    if fault.status != 200:
        return f"HTTP {fault.status}"
    if fault.delay:
        return "timeout"
    return "malformed" if fault.malformed else "ok"


def encoder_args(fake: FakeProvider, cache: Path) -> list[str]:
    """The encoder options every run uses (the base URL's port changes from run to run)."""
    return [
        "--provider", "openai", "--base-url", fake.url, "--cache", str(cache),
        "--batch-size", str(BATCH), "--max-concurrency", str(CONCURRENCY), "--timeout", f"{TIMEOUT:g}",
    ]  # fmt: skip


def shown(args: list[str]) -> str:
    """``args`` as the command a user types, with the run-specific port and folders generalised."""
    text = " ".join(["search-adaptor", *args])
    text = re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", text)
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/provider-faults-[^/\s]+", "$TMP", text)
    return text.replace(str(DATA), "../shared/data/cranfield")


def run_cli(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``search-adaptor args``; return the finished process and its wall time (key never shown)."""
    start = time.perf_counter()
    proc = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    check(proc.returncode == 0, f"{shown(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    check(FAKE_KEY not in proc.stdout + proc.stderr, f"{shown(args)} printed the key")
    return proc, wall


def count(pattern: str, text: str) -> int:
    """The integer captured by ``pattern`` in ``text`` (a CLI summary line)."""
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"check failed: no {pattern!r} in {text!r}")
    return int(match.group(1))


def key_free(folder: Path) -> bool:
    """No file under ``folder`` holds the key."""
    return all(FAKE_KEY.encode() not in p.read_bytes() for p in folder.rglob("*") if p.is_file())


def on_the_wire(texts: list[str]) -> list[str]:
    """``texts`` as the OpenAI encoder sends them (an empty text goes as one space)."""
    encoder = OpenAIEncoder(api_key=FAKE_KEY, base_url="http://127.0.0.1:9/v1")  # never called
    return encoder.prepare(texts, "document")


def unique_texts(ds: Dataset) -> set[str]:
    """What the store sends once each, as sent (OpenAI embeds queries and documents alike: one set)."""
    texts = set(on_the_wire([*ds.queries.values(), *ds.doc_texts]))
    check(len(texts) == len(set(ds.queries.values())) + len(set(ds.doc_texts)), "a query is also a doc")
    return texts


def faulty_embed(ds: Dataset, tmp: Path, env: dict[str, str]) -> dict:
    """Runs a and b, plus a fault-free run of the same command for comparison; then d's fit."""
    texts = unique_texts(ds)
    with FakeProvider("openai", dim=DIM) as clean:
        args = ["embed", str(DATA), *encoder_args(clean, tmp / "clean"), "--quiet"]
        _, baseline_wall = run_cli(args, env)

    with FakeProvider("openai", dim=DIM) as fake:
        args = ["embed", str(DATA), *encoder_args(fake, tmp / "cache")]
        dry, _ = run_cli([*args, "--dry-run"], env)
        check(" 0 texts cached, 1624 would be sent" in dry.stdout, dry.stdout)
        fake.schedule(*SCHEDULE)
        first, wall = run_cli(args, env)
        retries = count(r"(\d+) retries", first.stdout)
        settle(fake)
        requests = len(fake.calls)
        met = Counter(fault_kind(f) for f in SCHEDULE[:requests])
        check(requests < len(SCHEDULE), "the fault schedule ran out")
        batches = -(-len(set(ds.queries.values())) // BATCH) - (-len(set(ds.doc_texts)) // BATCH)
        check(met.pop("ok") == batches, f"{batches} batches but {met}")
        check(retries == sum(met.values()), f"{retries} retries for {sum(met.values())} faults")
        check(sum(c.status == CLIENT_GONE for c in fake.calls) == met["timeout"], "a stalled reply arrived")
        check(set(fake.served) == {(t, None) for t in texts}, "some text was never served")
        check(set(fake.served.values()) == {1}, "some text was served twice")
        frames = [f for f in re.split(r"[\r\n]", first.stderr) if "retries=" in f]
        check(bool(frames), "the progress bar never showed the retries")

        calls = len(fake.calls)
        again, again_wall = run_cli(args, env)
        check(len(fake.calls) == calls, "the second run sent requests")
        check(count(r"(\d+) texts embedded", again.stdout) == 0, again.stdout)
        dry_again, _ = run_cli([*args, "--dry-run"], env)
        check("1624 texts cached, 0 would be sent" in dry_again.stdout, dry_again.stdout)

        out = tmp / "adapter-run"
        fit_args = [
            "fit", str(DATA), "--provider", "openai", "--base-url", fake.url, "--out", str(out),
            "--max-steps", "200", "--cache", str(tmp / "cache"), "--quiet",
        ]  # fmt: skip
        fit, fit_wall = run_cli(fit_args, {**env, "OMP_NUM_THREADS": FIT_THREADS})
        check(len(fake.calls) == calls, "fit re-sent texts that were in the store")
        check(key_free(tmp / "cache"), "the key is in the embedding store")
    return {
        "texts": sum(map(len, (ds.queries, ds.doc_texts))),
        "unique": len(texts),
        "requests": requests,
        "faults": dict(met),
        "retries": retries,
        "wall_s": wall,
        "embed_s": float(re.findall(r"-d, ([\d.]+) s", first.stdout)[0]),
        "baseline_wall_s": baseline_wall,
        "progress_frame": frames[-1].strip(),
        "again_wall_s": again_wall,
        "dry_run": dry.stdout.strip(),
        "dry_run_again": dry_again.stdout.strip(),
        "embed_cmd": shown(args),
        "fit": adapter_facts(out, fit, fit_wall),
        "fit_cmd": shown(fit_args),
    }


def adapter_facts(out: Path, fit: subprocess.CompletedProcess[str], wall: float) -> dict:
    """What run d produced: the report, the adapter, its fingerprint, and no key anywhere."""
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "adapter" / "config.json").read_text())
    fingerprint = config["encoder"]["fingerprint"]
    check((out / "report.md").is_file() and (out / "adapter" / "adapter.safetensors").is_file(), "files")
    check(fingerprint.startswith("openai:text-embedding-3-small:"), fingerprint)
    check(config["dim"] == DIM and report["encoder_calls"]["texts_sent"] == 0, "dim / texts sent")
    check(key_free(out), "the key is in the report or the adapter")
    check("selected:" in fit.stdout, fit.stdout)
    return {
        "fingerprint": fingerprint,
        "selected": report["selected"],
        "protocol": f"{report['protocol']} ({report['folds']} folds)",
        "ndcg": (report["metrics"]["zero-shot"]["ndcg@10"], report["metrics"]["adapted"]["ndcg@10"]),
        "train_s": report["timings"]["train_s"],
        "wall_s": wall,
    }


def kill_and_resume(ds: Dataset, tmp: Path, env: dict[str, str]) -> dict:
    """Run c: SIGKILL an ``embed`` half-way on a fresh cache, look at the store, resume."""
    texts = unique_texts(ds)
    cache = tmp / "killed"
    with FakeProvider("openai", dim=DIM, delay=KILL_DELAY) as fake:
        args = ["embed", str(DATA), *encoder_args(fake, cache), "--quiet"]
        proc = subprocess.Popen([str(CLI), *args], env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while sum(fake.served.values()) < len(texts) // 2:
            check(proc.poll() is None, "the run ended before it could be killed")
            check(time.monotonic() < deadline, "the run never got half-way")
            time.sleep(0.002)
        proc.kill()  # SIGKILL: no cleanup, no finally blocks
        proc.wait()
        settle(fake)
        served_at_kill = sum(fake.served.values())
        calls_at_kill = len(fake.calls)

        probe = make_encoder("openai", base_url=fake.url, api_key=FAKE_KEY)  # same fingerprint
        with EmbeddingStore(probe, cache) as store:
            missing = store.missing("query", list(ds.queries.values()))
            missing += store.missing("document", ds.doc_texts)
        probe.close()
        missing = on_the_wire(missing)
        committed = len(texts) - len(missing)
        lost = len({t for t, _ in fake.served} - (texts - set(missing)))
        check(lost <= BATCH * CONCURRENCY, f"{lost} served texts were lost")

        _, wall = run_cli(args, env)
        resent = [t for call in fake.calls[calls_at_kill:] for t in call.texts]
        check(sorted(resent) == sorted(missing), "the resumed run sent other texts than the missing ones")
        twice = sum(c > 1 for c in fake.served.values())
        check(twice == lost and twice <= BATCH * CONCURRENCY, f"{twice} texts served twice")
        check(set(fake.served) == {(t, None) for t in texts}, "some text was never served")
        check(key_free(cache), "the key is in the embedding store")
    return {
        "served_at_kill": served_at_kill,
        "committed_at_kill": committed,
        "resent": len(resent),
        "twice": twice,
        "resume_wall_s": wall,
    }


def markdown(a: dict, c: dict) -> str:
    """The result section, with the exact commands."""
    import numpy

    from search_adaptor import __version__

    faults = ", ".join(f"{n} x {kind}" for kind, n in sorted(a["faults"].items()))
    fit = a["fit"]
    bound = BATCH * CONCURRENCY
    return "\n".join(
        [
            "## Embedding APIs under faults",
            "",
            "Generated by `python benchmarks/provider_faults.py`: the real `search-adaptor` command (one "
            "subprocess per run) against the fault-injecting OpenAI-format fake of `fakes/fake_providers.py` "
            f"on 127.0.0.1, with `$OPENAI_API_KEY` set to a fake key. Machine: {platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, numpy {numpy.__version__}, "
            f"search-adaptor {__version__}. The fake serves hash-derived {DIM}-d unit vectors, so "
            "retrieval quality here means nothing; what is measured is what gets sent, paid for and kept.",
            "",
            f"Dataset: Cranfield, {a['texts']:,} texts ({a['unique']:,} unique: two documents are empty "
            "and are sent once, as one space). Runs a and b: "
            f"`{a['embed_cmd']}`",
            "",
            "| run | result |",
            "|---|---|",
            f"| a. embed, faults on one request in three: {faults} "
            f"(429s carry `Retry-After: {RETRY_AFTER}`; a timeout is the fake stalling {STALL:g} s against "
            f"`--timeout {TIMEOUT:g}`; malformed = non-JSON or one vector short) | completed: "
            f"{a['requests']} requests, **{a['retries']} retries** (one per fault met), every unique text "
            f"served exactly once; {a['wall_s']:.1f} s wall ({a['embed_s']:.1f} s embedding, "
            f"{a['unique'] / a['embed_s']:.0f} texts/s) vs {a['baseline_wall_s']:.1f} s for the same "
            "command without faults |",
            f"| b. the same command again | 0 requests, 0 texts sent ({a['again_wall_s']:.1f} s wall) |",
            f"| c. fresh cache, SIGKILL half-way ({KILL_DELAY:g} s per reply), then the same command "
            f"(`--quiet`) | killed with {c['served_at_kill']} texts served and {c['committed_at_kill']} "
            f"committed; the resumed run sent exactly the {c['resent']} missing texts; **{c['twice']} "
            f"texts served twice** (bound: batch_size {BATCH} x max_concurrency {CONCURRENCY} = {bound}, "
            f"the batches in flight at the kill); resumed in {c['resume_wall_s']:.1f} s |",
            f"| d. `OMP_NUM_THREADS={FIT_THREADS} {a['fit_cmd']}` | report and adapter written in "
            f"{fit['wall_s']:.1f} s "
            f"({fit['train_s']:.1f} s training, {fit['protocol']}, selected `{fit['selected']}`, "
            f"nDCG@10 {fit['ndcg'][0]:.3f} -> {fit['ndcg'][1]:.3f} on meaningless vectors); 0 texts "
            f"sent (all from run a's store); adapter fingerprint `{fit['fingerprint']}`; the key is in "
            "no output, report, adapter or store file |",
            "",
            "Dry runs of that command before and after run a:",
            "",
            "```",
            a["dry_run"],
            a["dry_run_again"],
            "```",
            "",
            f"Last frame of run a's progress bar (stderr): `{a['progress_frame']}`",
        ]
    )


def main() -> None:
    check(CLI.is_file(), f"{CLI} missing: install the project (pip install -e .) in this interpreter")
    ds = load_beir(DATA)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SEARCH_ADAPTOR_"))}
    env["OPENAI_API_KEY"] = FAKE_KEY
    with tempfile.TemporaryDirectory(prefix="provider-faults-") as folder:
        a = faulty_embed(ds, Path(folder), env)
        c = kill_and_resume(ds, Path(folder), env)
    text = markdown(a, c)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from assemble import assemble

    print(f"wrote {OUT} and {assemble()}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help: no run
    main()
