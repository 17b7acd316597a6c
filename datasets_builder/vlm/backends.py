"""VLM backends behind one protocol: transformers (default, CPU/GPU), vLLM offline engine, OpenAI-compatible HTTP.

Every backend constrains its output to the request's JSON schema where it can: xgrammar for transformers (the engine
vLLM itself uses), structured outputs for vLLM and for a `vllm serve` endpoint.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


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


class OpenAICompatibleBackend:
    """A `vllm serve` (or any OpenAI-compatible) chat endpoint, with the JSON schema as response_format."""

    name = "openai"

    def __init__(self, model: str, base_url: str, *, api_key: str = "EMPTY", timeout_s: float = 120.0):
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _one(self, request: VlmRequest, sampling: SamplingParams) -> str:
        body = {
            "model": self.model_id,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _data_url(request.image)}},
                {"type": "text", "text": request.text}]}],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "max_tokens": request.max_new_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": request.json_schema}},
        }
        http = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
        )
        with urllib.request.urlopen(http, timeout=self.timeout_s) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    def generate(self, requests: list[VlmRequest], sampling: SamplingParams) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(16, len(requests) or 1)) as pool:
            return list(pool.map(lambda r: self._one(r, sampling), requests))


def make_backend(kind: str, model: str | Path, **options: Any) -> VlmBackend:
    """Build a backend by name: transformers | vllm | openai."""
    if kind == "transformers":
        return TransformersBackend(model, **options)
    if kind == "vllm":
        return VllmBackend(model, **options)
    if kind == "openai":
        return OpenAICompatibleBackend(str(model), **options)
    raise ValueError(f"unknown VLM backend {kind!r}: choose transformers, vllm or openai")
