"""VLM backends behind one protocol: transformers (default, CPU/GPU), vLLM offline engine, OpenAI-compatible HTTP.

Every backend constrains its output to the request's JSON schema where it can: xgrammar for transformers (the engine
vLLM itself uses), structured outputs for vLLM and for a `vllm serve` endpoint.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import io
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from schemas.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class VlmRequest:
    """One image + user text, with the JSON schema the answer must follow and a hard token bound."""

    image: bytes
    text: str
    json_schema: dict[str, Any]
    max_new_tokens: int

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.text}]}]


class VlmBackend(Protocol):
    name: str
    model_id: str

    def generate(self, requests: list[VlmRequest], sampling: SamplingParams) -> list[str]: ...


class TransformersBackend:
    """Batched `generate` with a grammar-constrained logits processor (xgrammar)."""

    name = "transformers"

    def __init__(self, model: str | Path, *, device: str = "cpu", dtype: str = "float32"):
        import torch

        from model_zoo.qwen_vl import load_vlm

        self.model_id = str(model)
        self.model, self.processor = load_vlm(model, dtype=getattr(torch, dtype), device=device)
        self.device = device
        self._tokenizer_info = None
        self._grammars: dict[str, Any] = {}

    def _grammar(self, schema: dict[str, Any]):
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._tokenizer_info is None:
                self._tokenizer_info = _xgrammar_tokenizer_info(self.processor.tokenizer, self.model)
            compiler = xgr.GrammarCompiler(self._tokenizer_info, max_threads=2)
            # the schema's own key order, as vLLM keeps it: the sorted text is only the cache key
            self._grammars[key] = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                               strict_mode=True)
        return self._grammars[key]

    def generate(self, requests: list[VlmRequest], sampling: SamplingParams) -> list[str]:
        import torch
        import xgrammar.contrib.hf  # noqa: F401 - registers xgrammar's HF logits processor
        from transformers import LogitsProcessorList

        images = [Image.open(io.BytesIO(r.image)).convert("RGB") for r in requests]
        texts = [self.processor.apply_chat_template(r.messages(), add_generation_prompt=True) for r in requests]
        self.processor.tokenizer.padding_side = "left"
        batch = self.processor(text=texts, images=images, return_tensors="pt", padding=True).to(self.device)
        grammars = [self._grammar(r.json_schema) for r in requests]
        processor = xgrammar.contrib.hf.LogitsProcessor(grammars)  # single use: a new one per generate()
        torch.manual_seed(sampling.seed)
        sample = sampling.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                logits_processor=LogitsProcessorList([processor]),
                max_new_tokens=max(r.max_new_tokens for r in requests),
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                top_k=0 if sample else None,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


def _xgrammar_tokenizer_info(tokenizer, model):
    """xgrammar's view of the vocabulary with special tokens blanked (never allowed inside a JSON string)."""
    import xgrammar as xgr

    vocab_size = model.get_output_embeddings().weight.shape[0]
    eos = model.generation_config.eos_token_id
    stop = [eos] if isinstance(eos, int) else list(eos)
    base = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    encoded = [""] * vocab_size
    for token, index in tokenizer.get_vocab().items():
        if index < vocab_size:
            encoded[index] = "" if index in special else token
    return xgr.TokenizerInfo(
        encoded,
        vocab_type=base.vocab_type,
        vocab_size=vocab_size,
        stop_token_ids=base.stop_token_ids,
        add_prefix_space=base.add_prefix_space,
    )


def _data_url(image: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image).decode()


class VllmBackend:
    """vLLM's offline engine with structured outputs; vLLM is imported only when this backend is built (GPU env)."""

    name = "vllm"

    def __init__(self, model: str | Path, **engine_kwargs: Any):
        from vllm import LLM

        self.model_id = str(model)
        self.llm = LLM(model=str(model), **engine_kwargs)

    def generate(self, requests: list[VlmRequest], sampling: SamplingParams) -> list[str]:
        from vllm import SamplingParams as VllmSampling
        from vllm.sampling_params import StructuredOutputsParams

        params = [
            VllmSampling(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                max_tokens=r.max_new_tokens,
                structured_outputs=StructuredOutputsParams(json=r.json_schema),
            )
            for r in requests
        ]
        conversations = [
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(r.image)}},
                                          {"type": "text", "text": r.text}]}]
            for r in requests
        ]
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)


class VlmUnavailable(UserError, ConnectionError):
    """The VLM server could not be reached (refused, reset, timed out) after every retry."""


class VlmRefused(UserError, RuntimeError):
    """The VLM server answered with an error that retrying does not fix (a wrong model name, a bad request)."""


class OpenAICompatibleBackend:
    """A `vllm serve` (or any OpenAI-compatible) chat endpoint, with the JSON schema as response_format.

    Requests stream through one pooled aiohttp session on an event loop of the backend's own (a thread), with up to
    `max_in_flight` of them open at any moment across every caller: stages and shards that call `generate` from
    several threads at once share the window and the connections (a server batches what it is given: 8 at a time
    left a 256-wide server idle). aiohttp spends ~0.6 ms of CPU per request where httpx spent ~2 ms, which is what
    lets two cores keep a 256-wide server busy (`benchmarks/bench_vlm_server.py`). Overload answers (429, 503, ...)
    and dropped connections are retried with exponential backoff, honouring `Retry-After`; a request that still
    fails raises, and the runner retries its batch."""

    name = "openai"

    def __init__(self, model: str, base_url: str, *, api_key: str = "EMPTY", timeout_s: float = 120.0,
                 max_in_flight: int = 256, max_attempts: int = 5, backoff_s: float = 0.5):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner_pid = 0
        self._session = None
        self._gate: asyncio.Semaphore | None = None

    def _body(self, request: VlmRequest, sampling: SamplingParams, image_url: str) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": request.text}]}],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "max_tokens": request.max_new_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": request.json_schema}},
        }

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        try:
            return float(retry_after) if retry_after is not None else self.backoff_s * 2 ** (attempt - 1)
        except ValueError:  # an HTTP date: back off as usual
            return self.backoff_s * 2 ** (attempt - 1)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The backend's loop, started on first use (and again in a forked child, which has no copy of the thread)."""
        with self._lock:
            if self._loop is None or self._owner_pid != os.getpid():
                self._loop = asyncio.new_event_loop()
                self._owner_pid, self._session, self._gate = os.getpid(), None, None
                threading.Thread(target=self._loop.run_forever, name="openai-backend", daemon=True).start()
                atexit.register(self.close)
            return self._loop

    def close(self) -> None:
        """Close the connections and stop the loop (at exit at the latest); a later `generate` opens them again."""
        with self._lock:
            loop, session, self._loop = self._loop, self._session, None
        if loop is None or self._owner_pid != os.getpid():
            return
        if session is not None:
            asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)

    async def _open(self):
        import aiohttp

        if self._session is None:
            self._gate = asyncio.Semaphore(self.max_in_flight)
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.api_key}"},
                connector=aiohttp.TCPConnector(limit=self.max_in_flight),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def _one(self, request: VlmRequest, sampling: SamplingParams, image_urls: dict[bytes, str]) -> str:
        import aiohttp

        session = await self._open()
        async with self._gate:
            if request.image not in image_urls:  # an image asked several questions is encoded once per call
                image_urls[request.image] = _data_url(request.image)
            body = self._body(request, sampling, image_urls[request.image])
            for attempt in range(1, self.max_attempts + 1):
                last = attempt == self.max_attempts
                try:
                    async with session.post(f"{self.base_url}/chat/completions", json=body) as response:
                        if response.status in RETRYABLE_STATUS and not last:
                            retry_after = response.headers.get("Retry-After")
                        elif response.status != 200:
                            text = await response.text()
                            raise VlmRefused(f"{self.base_url}: HTTP {response.status}: {text[:200]}")
                        else:
                            return (await response.json(content_type=None))["choices"][0]["message"]["content"]
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
                    if last:  # refused, reset, timed out
                        raise VlmUnavailable(f"cannot reach the VLM server at {self.base_url}: "
                                             f"{type(exc).__name__}: {exc}") from None
                    retry_after = None
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    async def _all(self, requests: list[VlmRequest], sampling: SamplingParams) -> list[str]:
        image_urls: dict[bytes, str] = {}
        tasks = [asyncio.ensure_future(self._one(r, sampling, image_urls)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # one request failed for good: the others give their slots back
            for task in tasks:
                task.cancel()
            raise

    def generate(self, requests: list[VlmRequest], sampling: SamplingParams) -> list[str]:
        """Answers in request order; safe to call from several threads at once (they share the window)."""
        if not requests:
            return []
        return asyncio.run_coroutine_threadsafe(self._all(requests, sampling), self._event_loop()).result()


def make_backend(kind: str, model: str | Path, **options: Any) -> VlmBackend:
    """Build a backend by name: transformers | vllm | openai."""
    if kind == "transformers":
        return TransformersBackend(model, **options)
    if kind == "vllm":
        return VllmBackend(model, **options)
    if kind == "openai":
        return OpenAICompatibleBackend(str(model), **options)
    raise ValueError(f"unknown VLM backend {kind!r}: choose transformers, vllm or openai")
