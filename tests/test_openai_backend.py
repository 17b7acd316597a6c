"""The OpenAI-compatible backend against a loopback server speaking the chat-completions wire format.

The server answers with the real tiny VLM (transformers + xgrammar), honouring `response_format`'s JSON schema as a
`vllm serve` endpoint does; the client under test is exactly what `backend = "openai"` uses.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import pytest

from datasets_builder.vlm import PROMPTS, PromptInput, ResponseCache, SamplingParams, VlmRunner
from datasets_builder.vlm.backends import OpenAICompatibleBackend, TransformersBackend, VlmRequest
from odd_images import SAMPLES
from schemas import VlmStage
from schemas.errors import UserError


@pytest.fixture(scope="module")
def endpoint(tiny_models):
    model = TransformersBackend(tiny_models.vlm)
    seen: list[dict] = []

    class ChatCompletions(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != "Bearer EMPTY":
                self.send_error(404)
                return
            content = body["messages"][0]["content"]
            image = base64.b64decode(content[0]["image_url"]["url"].split(",", 1)[1])
            request = VlmRequest(image, content[1]["text"], body["response_format"]["json_schema"]["schema"],
                                 body["max_tokens"])
            sampling = SamplingParams(body["temperature"], body["top_p"], body["seed"])
            text = model.generate([request], sampling)[0]
            payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload.encode())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen, str(tiny_models.vlm)
    server.shutdown()


def test_openai_backend_runs_every_stage_prompt_through_the_endpoint(endpoint, tmp_path):
    base_url, seen, model = endpoint
    backend = OpenAICompatibleBackend(model, base_url)
    items = [PromptInput(p.stem, p.read_bytes(), {"count": 4}) for p in sorted(SAMPLES.glob("*.jpg"))[:3]]
    runner = VlmRunner(backend, ResponseCache(tmp_path / "c.sqlite"), batch_size=3)
    results = runner.run(PROMPTS[VlmStage.PROPOSE], items)
    assert all(r.parsed is not None and len(r.parsed["edits"]) == 4 for r in results)
    assert len(seen) == 3 and seen[-1]["model"] == model
    assert seen[-1]["response_format"]["json_schema"]["schema"] == PROMPTS[VlmStage.PROPOSE].schema
    assert runner.provenance(PROMPTS[VlmStage.PROPOSE])["backend"] == "openai"


def test_unreachable_endpoint_fails_after_retries(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    backend = OpenAICompatibleBackend("m", "http://127.0.0.1:9/v1", timeout_s=2, backoff_s=0.01)
    runner = VlmRunner(backend, ResponseCache(tmp_path / "c.sqlite"), max_attempts=2)
    with pytest.raises(OSError):
        runner.run(PROMPTS[VlmStage.CAPTION], [PromptInput("a", (SAMPLES / "coffee.jpg").read_bytes())])
    assert runner.stats.retries == 1


def _requests(n: int) -> list[VlmRequest]:
    return [VlmRequest(bytes([i % 256]) * 64, f"request {i}", {"type": "object"}, 8) for i in range(n)]


def test_openai_backend_keeps_its_window_of_requests_in_flight():
    from benchmarks.bench_vlm_server import LoadTestServer
    from datasets_builder.loopback import serving

    server = LoadTestServer(latency_s=1.0, capacity=1000, answer='{"caption": "x"}')
    with serving(server.handler()) as url:
        backend = OpenAICompatibleBackend("m", f"{url}/v1", max_in_flight=40)
        started = time.perf_counter()
        answers = backend.generate(_requests(80), SamplingParams())
        seconds = time.perf_counter() - started
    assert answers == ['{"caption": "x"}'] * 80 and server.served == 80
    assert server.peak == 40, server.peak  # never more than the window, and the window is filled
    assert seconds < 10, seconds  # two waves of 40 (2 s), not 80 one by one (80 s) or 8 at a time (10 s)


def test_openai_backend_retries_overload_and_reports_what_is_not_retryable():
    from benchmarks.bench_vlm_server import LoadTestServer
    from datasets_builder.loopback import serving

    server = LoadTestServer(latency_s=0.0, capacity=10, answer="{}", fail_first=6, status=503)
    with serving(server.handler()) as url:
        backend = OpenAICompatibleBackend("m", f"{url}/v1", max_in_flight=4, backoff_s=0.01)
        assert backend.generate(_requests(5), SamplingParams()) == ["{}"] * 5
    assert server.failed == 6 and server.served == 5
    refusing = LoadTestServer(latency_s=0.0, capacity=10, answer="{}", fail_first=10**6, status=400)
    with serving(refusing.handler()) as url:
        with pytest.raises(RuntimeError, match="HTTP 400"):
            OpenAICompatibleBackend("m", f"{url}/v1", backoff_s=0.01).generate(_requests(1), SamplingParams())
    with pytest.raises(OSError, match="127.0.0.1:9") as unreachable:  # nothing listens on the discard port
        OpenAICompatibleBackend("m", "http://127.0.0.1:9/v1", max_attempts=2, backoff_s=0.01).generate(
            _requests(1), SamplingParams())
    assert isinstance(unreachable.value, UserError)  # `npedit corpus build` prints it as one line
