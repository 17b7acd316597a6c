"""VLM inference shared by every builder stage: prompts + parsers, backends, and the caching runner."""

from datasets_builder.vlm.backends import SamplingParams, VlmBackend, VlmRequest, make_backend
from datasets_builder.vlm.prompts import PROMPTS, ParseError, PromptSpec
from datasets_builder.vlm.runner import PromptInput, ResponseCache, VlmResult, VlmRunner

__all__ = [
    "PROMPTS",
    "ParseError",
    "PromptInput",
    "PromptSpec",
    "ResponseCache",
    "SamplingParams",
    "VlmBackend",
    "VlmRequest",
    "VlmResult",
    "VlmRunner",
    "make_backend",
]
