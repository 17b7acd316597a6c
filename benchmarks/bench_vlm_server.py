"""Builder throughput against an OpenAI-compatible server: requests/s achieved against the server's capacity.

A LOAD TEST, not a quality test: the loopback server stands in for `vllm serve`. It answers every chat request
with a fixed valid JSON after `--latency` seconds, at most `--capacity` at once (more wait in its queue, as
sequences wait for a slot in a vLLM batch). Images are realistic ~300 KB, 1024 px photos, sent as stored and at the builder's VLM size. The builder side is the real
one: `VlmRunner` + `OpenAICompatibleBackend`, with the answer cache.

    .venv/bin/python -m benchmarks.bench_vlm_server --requests 2000 --latency 1 --capacity 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import io
import json
import multiprocessing
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from datasets_builder.images import vlm_view
from datasets_builder.loopback import serving
from datasets_builder.vlm import PROMPTS, PromptInput, ResponseCache, VlmRunner
from datasets_builder.vlm.backends import OpenAICompatibleBackend
from schemas import VlmStage

REQUESTS_PER_IMAGE = 7.5  # measured on the builder's stages (caption, propose, 4 validations, object, background)


def schema_answer(schema: dict[str, Any], index: int = 0) -> Any:
    """A valid value of one of the builder's answer schemas: booleans true, enums taken by position (four proposals
    get four edit types), texts naming their position (three background captions differ)."""
    kind = schema.get("type")
    if kind == "object":
        return {key: schema_answer(value, index) for key, value in schema["properties"].items()}
    if kind == "array":
        return [schema_answer(schema["items"], i) for i in range(schema.get("minItems", 1))]
    if kind == "boolean":
        return True
    if "enum" in schema:
        return schema["enum"][index % len(schema["enum"])]
    return f"a red cup on a wooden table, scene {index}"[: schema.get("maxLength", 60)]


def stage_answer(body: dict[str, Any]) -> str:
    """What the load-test server answers to any stage's request: a valid instance of its response_format schema."""
    return json.dumps(schema_answer(body["response_format"]["json_schema"]["schema"]))


class LoadTestServer:
    """Chat completions after a fixed latency with bounded concurrency; counts what it saw. `answer` is a fixed text
    or a function of the request's JSON body."""

    def __init__(self, latency_s: float, capacity: int, answer: str | Callable[[dict], str], fail_first: int = 0,
                 status: int = 503):
        self.latency_s, self.answer = latency_s, answer
        self.slots = threading.Semaphore(capacity)
        self.lock = threading.Lock()
        self.open = self.peak = self.served = 0
        self.fail_first, self.status, self.failed = fail_first, status, 0

    def handler(self):
        server = self

        class ChatCompletions(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

            def log_message(self, *args):
                pass

            def do_GET(self):  # the counters, for a client in another process
                stats = {"peak": server.peak, "served": server.served, "refused": server.failed,
                         "cpu_s": time.process_time()}
                self._send(200, json.dumps(stats).encode(), {"Content-Type": "application/json"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = server.answer if isinstance(server.answer, str) else server.answer(json.loads(body))
                with server.lock:
                    server.open += 1
                    server.peak = max(server.peak, server.open)
                    refuse = server.failed < server.fail_first
                    server.failed += refuse
                try:
                    if refuse:
                        self._send(server.status, b"overloaded", {"Retry-After": "0"})
                        return
                    with server.slots:
                        time.sleep(server.latency_s)
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
                    self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
                    with server.lock:
                        server.served += 1
                finally:
                    with server.lock:
                        server.open -= 1

            def _send(self, status: int, body: bytes, headers: dict[str, str]):
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        return ChatCompletions


def photo(seed: int, target_kb: int = 300) -> bytes:
    """A JPEG of about `target_kb` KB: smooth gradients plus grain, like a phone photo after upload."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:768, 0:1024] / 1024
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(3 * (x + y))], axis=2) * 80 + 128
    pixels = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=85)
    return out.getvalue()


def _serve(latency_s: float, capacity: int, answer: str, ports) -> None:
    """The load-test server in its own process (so the builder's CPU time is the builder's alone)."""
    server = LoadTestServer(latency_s, capacity, answer)
    with serving(server.handler()) as url:
        ports.put(url)
        threading.Event().wait()


def run(requests: int, latency_s: float, capacity: int, max_in_flight: int, max_image_side: int = 512,
        photos: int = 16) -> dict:
    """Push `requests` distinct requests through the runner, as the builder does: each image (stored at 1024 px) is
    prepared for the VLM once (`vlm_view` at `max_image_side`, 0 = as stored) and asked ~7.5 questions. Returns
    throughput, peak in flight and the builder's CPU per request (image preparation included)."""
    answer = json.dumps({"caption": "a photo used for a load test"})
    ports = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(latency_s, capacity, answer, ports), daemon=True)
    process.start()
    url = ports.get(timeout=60)
    originals = [photo(i) for i in range(photos)]
    n_images = -(-requests // round(REQUESTS_PER_IMAGE))
    # distinct images (bytes after a JPEG's end marker are ignored), each asked several questions like a shard's
    stored = pa.table({"image_id": [f"image{i}" for i in range(n_images)],
                       "image": [originals[i % photos] + i.to_bytes(4, "big") for i in range(n_images)]})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backend = OpenAICompatibleBackend("load-test", f"{url}/v1", max_in_flight=max_in_flight)
            runner = VlmRunner(backend, ResponseCache(Path(tmp) / "cache.sqlite"), batch_size=max(requests, 1))
            cpu, wall = time.process_time(), time.perf_counter()
            shown = vlm_view(stored, max_image_side) if max_image_side else stored
            sent = shown.column("image").to_pylist()
            items = [PromptInput(f"item{i}", sent[i % n_images], {}) for i in range(requests)]
            results = runner.run(PROMPTS[VlmStage.CAPTION], items)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        with urllib.request.urlopen(url) as response:
            seen = json.loads(response.read())
    finally:
        process.terminate()
    assert all(r.error is None for r in results) and seen["served"] == requests, seen
    rate = requests / wall
    return {"requests": requests, "seconds": wall, "requests_per_s": rate, "capacity_per_s": capacity / latency_s,
            "share_of_capacity": rate / (capacity / latency_s), "peak_in_flight": seen["peak"],
            "builder_cpu_ms_per_request": 1000 * cpu / requests,
            "server_cpu_ms_per_request": 1000 * seen["cpu_s"] / requests,
            "hours_for_3M_images": 3e6 * REQUESTS_PER_IMAGE / rate / 3600,
            "stored_kb": len(originals[0]) / 1024, "sent_kb": len(sent[0]) / 1024, "max_image_side": max_image_side}


@contextlib.contextmanager
def load_test_server(latency_s: float, capacity: int, answer: str | Callable[[dict], str]):
    """The load-test server in another process; yields (its URL, a function returning its counters)."""
    ports = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(latency_s, capacity, answer, ports), daemon=True)
    process.start()
    url = ports.get(timeout=60)

    def counters() -> dict:
        with urllib.request.urlopen(url) as response:
            return json.loads(response.read())

    try:
        yield url, counters
    finally:
        process.terminate()


def bare_client(requests: int, latency_s: float, capacity: int, max_in_flight: int) -> float:
    """Requests/s of a bare aiohttp client (the builder's transport, nothing else: no runner, cache or image
    preparation) against the same server: the ceiling this machine and the stand-in server leave the builder."""
    import aiohttp

    body = json.dumps({"messages": [{"role": "user", "content": "x" * 80_000}]})  # a 59 KB image in base64

    async def send_all() -> None:
        gate = asyncio.Semaphore(max_in_flight)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight)) as session:
            async def one() -> None:
                async with gate, session.post(f"{url}/v1/chat/completions", data=body) as response:
                    await response.read()
            await asyncio.gather(*(one() for _ in range(requests)))

    with load_test_server(latency_s, capacity, json.dumps({"caption": "x"})) as (url, _):
        started = time.perf_counter()
        asyncio.run(send_all())
        return requests / (time.perf_counter() - started)


def build(images: int, shard_size: int, latency_s: float, capacity: int, max_in_flight: int) -> dict:
    """The VLM stages of a whole build (every stage's prompt, answered validly) over `images` photos in shards of
    `shard_size`: stage after stage and shard after shard as the builder ran them before (`sequential`), then on the
    local engine as `npedit corpus build` runs them (`pipelined`: independent stages at once, shards in flight). Fetch and images are built first
    and not timed; each run has its own answer cache, so every request reaches the server."""
    from datasets_builder.config import CorpusConfig, SourceConfig, VlmConfig
    from datasets_builder.corpus import STAGE_OUTPUT, Corpus
    from datasets_builder.engines import LocalEngine
    from datasets_builder.fetch import FetchConfig

    results = {}
    with load_test_server(latency_s, capacity, stage_answer) as (url, counters), \
            tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        originals = [photo(i) for i in range(16)]
        for i in range(images):
            (folder / f"{i:06d}.jpg").write_bytes(originals[i % 16] + i.to_bytes(4, "big"))
        for mode in ("sequential", "pipelined"):
            config = CorpusConfig(
                source=SourceConfig(folder=str(folder)), work_dir=f"{tmp}/{mode}/work", lake_dir=f"{tmp}/{mode}/lake",
                fetched_dir=f"{tmp}/fetched", fetch=FetchConfig(shard_size=shard_size),
                vlm=VlmConfig(backend="openai", model="load-test", base_url=f"{url}/v1", max_in_flight=max_in_flight))
            corpus = Corpus(config)
            shards = corpus.fetch()
            for shard in shards:
                corpus.build_images(shard)
            served, cpu, wall = counters()["served"], time.process_time(), time.perf_counter()
            if mode == "sequential":
                for shard in shards:
                    for stage in STAGE_OUTPUT:
                        corpus.run_stage(stage, shard)
            else:
                list(LocalEngine().run(config, shards))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            requests = counters()["served"] - served
            results[mode] = {"requests": requests, "seconds": wall, "requests_per_s": requests / wall,
                             "share_of_capacity": requests / wall / (capacity / latency_s),
                             "builder_cpu_ms_per_request": 1000 * cpu / requests, "shards": len(shards),
                             "hours_for_3M_images": 3e6 * requests / images / (requests / wall) / 3600}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--capacity", type=int, default=256)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--max-image-side", type=int, default=512, help="the builder's vlm.max_image_side")
    parser.add_argument("--build-images", type=int, default=1200,
                        help="photos for the whole-build comparison (0 skips it)")
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args()
    if args.build_images:
        runs = build(args.build_images, args.shard_size, args.latency, args.capacity, args.in_flight)
        for mode, r in runs.items():
            print(f"whole build, {mode}: {r['requests']} requests over {r['shards']} shards in {r['seconds']:.1f} s: "
                  f"{r['requests_per_s']:.0f} requests/s ({r['share_of_capacity']:.0%} of the server); builder CPU "
                  f"{r['builder_cpu_ms_per_request']:.2f} ms/request; 3M images would take "
                  f"{r['hours_for_3M_images']:.1f} h")
        ceiling = bare_client(runs["pipelined"]["requests"], args.latency, args.capacity, args.in_flight)
        print(f"ceiling: a bare aiohttp client sends {ceiling:.0f} requests/s to the same server "
              f"({ceiling / (args.capacity / args.latency):.0%}); the pipelined build reaches "
              f"{runs['pipelined']['requests_per_s'] / ceiling:.0%} of it")
        print(f"ratio: the pipelined build runs {runs['pipelined']['requests_per_s'] / runs['sequential']['requests_per_s']:.2f}x "
              "the requests/s of stage-after-stage")
    results = [run(args.requests, args.latency, args.capacity, args.in_flight, side)
               for side in (0, args.max_image_side)]
    for result in results:
        side = f"at most {result['max_image_side']} px" if result["max_image_side"] else "as stored"
        print(f"images {side} ({result['sent_kb']:.0f} KB of {result['stored_kb']:.0f} KB): {result['requests']} "
              f"requests in {result['seconds']:.1f} s: {result['requests_per_s']:.0f} requests/s of the server's "
              f"{result['capacity_per_s']:.0f} ({result['share_of_capacity']:.0%}); peak {result['peak_in_flight']} "
              f"in flight; builder CPU {result['builder_cpu_ms_per_request']:.2f} ms/request; 3M images would take "
              f"{result['hours_for_3M_images']:.1f} h at {REQUESTS_PER_IMAGE} requests per image")
    as_stored, viewed = results
    print(f"ratio: {viewed['requests_per_s'] / as_stored['requests_per_s']:.2f}x the requests/s, "
          f"{as_stored['builder_cpu_ms_per_request'] / viewed['builder_cpu_ms_per_request']:.2f}x less builder CPU "
          f"per request with vlm.max_image_side = {args.max_image_side}")


if __name__ == "__main__":
    main()
