"""VLM inference: parsers over malformed outputs, grammar-constrained generation, the caching runner."""

from __future__ import annotations

import json

import pytest

from datasets_builder.vlm import PROMPTS, ParseError, PromptInput, ResponseCache, SamplingParams, VlmRunner
from datasets_builder.vlm.backends import TransformersBackend, VlmRequest
from datasets_builder.vlm.prompts import PROPOSE, VALIDATE, text_pattern
from odd_images import SAMPLES
from schemas import VlmStage

GOOD_EDIT = {"edit_type": "insertion", "instruction": "Add a red kite in the sky"}

MALFORMED = [
    ("", "not JSON"),
    ("{\"edits\": [", "not JSON"),
    ("Sure! Here are the edits: ...", "not JSON"),
    ("[]", "$ is not an object"),
    ("{}", "$ lacks 'edits'"),
    (json.dumps({"edits": [GOOD_EDIT] * 3}), "has 3 items"),
    (json.dumps({"edits": [GOOD_EDIT] * 4, "note": "x"}), "unexpected key 'note'"),
    (json.dumps({"edits": [{**GOOD_EDIT, "edit_type": "recolor"}] * 4}), "'recolor' is not one of"),
    (json.dumps({"edits": [{**GOOD_EDIT, "instruction": "Add\\u0000 a cat"}] * 4}), "does not match"),
    (json.dumps({"edits": [{**GOOD_EDIT, "instruction": "x" * 101}] * 4}), "does not match"),
    (json.dumps({"edits": [{"edit_type": "insertion"}] * 4}), "lacks 'instruction'"),
    (json.dumps({"edits": [{**GOOD_EDIT, "instruction": 7}] * 4}), "is not a string"),
    (json.dumps({"edits": "none"}), "is not an array"),
]


@pytest.mark.parametrize(("text", "error"), MALFORMED)
def test_propose_parser_rejects_malformed_output(text, error):
    with pytest.raises(ParseError, match=error.replace("$", r"\$").replace("[", r"\[")):
        PROPOSE.parse(text)


def test_parsers_accept_well_formed_output():
    assert PROPOSE.parse(json.dumps({"edits": [GOOD_EDIT] * 4}))["edits"][0] == GOOD_EDIT
    answer = {"is_valid": "yes", "reasoning": "", "edited_caption": ""}
    with pytest.raises(ParseError, match=r"\$.is_valid is not a boolean"):
        VALIDATE.parse(json.dumps(answer))


def test_prompt_versions_are_stable_and_distinct():
    versions = [p.version for p in PROMPTS.values()]
    assert len(set(versions)) == len(versions)
    assert PROPOSE.version.startswith("propose-")
    with pytest.raises(ValueError, match="capped at 128"):
        text_pattern(0, 200)


@pytest.fixture(scope="module")
def backend(tiny_models):
    return TransformersBackend(tiny_models.vlm)


@pytest.mark.parametrize("stage", list(VlmStage))
def test_constrained_generation_always_parses_even_from_a_random_model(backend, stage):
    prompt = PROMPTS[stage]
    image = (SAMPLES / "coffee.jpg").read_bytes()
    text = prompt.render(count=4, edit_type="remove", instruction="Remove the cup", object_name="cup")
    requests = [VlmRequest(image, text, prompt.schema, prompt.max_new_tokens)] * 3
    for sampling in (SamplingParams(temperature=1.0, seed=1), SamplingParams()):
        for output in backend.generate(requests, sampling):
            prompt.parse(output)


class CountingBackend:
    """Wraps a real backend and counts the requests that reach it."""

    def __init__(self, inner):
        self.inner, self.name, self.model_id, self.calls = inner, inner.name, inner.model_id, 0

    def generate(self, requests, sampling):
        self.calls += len(requests)
        return self.inner.generate(requests, sampling)


def test_runner_caches_by_request_hash_and_keeps_provenance(backend, tmp_path):
    counting = CountingBackend(backend)
    items = [PromptInput(p.stem, p.read_bytes()) for p in sorted(SAMPLES.glob("*.jpg"))[:5]]
    items.append(items[0])  # the same request twice is generated once
    runner = VlmRunner(counting, ResponseCache(tmp_path / "cache.sqlite"), batch_size=2)
    first = runner.run(PROMPTS[VlmStage.CAPTION], items)
    assert counting.calls == 5 and [r.parsed is not None for r in first] == [True] * 6
    rerun = VlmRunner(counting, ResponseCache(tmp_path / "cache.sqlite"), batch_size=2)
    second = rerun.run(PROMPTS[VlmStage.CAPTION], items)
    assert counting.calls == 5 and all(r.cached for r in second)
    assert [r.raw for r in first] == [r.raw for r in second]
    provenance = runner.provenance(PROMPTS[VlmStage.CAPTION])
    assert provenance["model_id"] == str(backend.model_id) and provenance["backend"] == "transformers"
    other_sampling = VlmRunner(counting, ResponseCache(tmp_path / "cache.sqlite"), sampling=SamplingParams(seed=3))
    assert other_sampling.request_hash(PROMPTS[VlmStage.CAPTION], items[0]) != first[0].request_hash


def test_runner_keeps_malformed_output_as_an_error_with_raw_text(tmp_path):
    class Garbage:
        name, model_id = "transformers", "garbage"

        def generate(self, requests, sampling):
            return ["{\"caption\": \"ok caption\"}", "nonsense"][: len(requests)]

    runner = VlmRunner(Garbage(), ResponseCache(tmp_path / "c.sqlite"), batch_size=2)
    results = runner.run(PROMPTS[VlmStage.CAPTION], [PromptInput("a", b"x"), PromptInput("b", b"y")])
    assert results[0].parsed == {"caption": "ok caption"}
    assert results[1].parsed is None and results[1].raw == "nonsense" and "not JSON" in results[1].error


def test_runner_retries_transient_backend_failures(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)

    class Flaky:
        name, model_id, failures = "openai", "flaky", 2

        def generate(self, requests, sampling):
            if self.failures:
                self.failures -= 1
                raise ConnectionError("connection reset")
            return ["{\"caption\": \"a fine caption\"}"] * len(requests)

    runner = VlmRunner(Flaky(), ResponseCache(tmp_path / "c.sqlite"), max_attempts=3)
    assert runner.run(PROMPTS[VlmStage.CAPTION], [PromptInput("a", b"x")])[0].parsed
    assert runner.stats.retries == 2


def test_dropped_parts_of_an_answer_become_rejects_of_their_own(tmp_path):
    import pyarrow as pa

    from datasets_builder.stages import propose_edits

    edits = [{"edit_type": "style", "instruction": "Make it a watercolor"},
             {"edit_type": "style", "instruction": "Make it an oil painting"},
             {"edit_type": "remove", "instruction": " Nope"},
             {"edit_type": "insertion", "instruction": "Add a kite in the sky"}]

    class Fixed:
        name, model_id = "transformers", "fixed"

        def generate(self, requests, sampling):
            return [json.dumps({"edits": edits})] * len(requests)

    images = pa.table({"image_id": ["a" * 64], "image": [b"x"]})
    runner = VlmRunner(Fixed(), ResponseCache(tmp_path / "c.sqlite"))
    proposals, rejects = propose_edits(images, runner)
    assert proposals.column("edit_type").to_pylist() == ["style", "insertion"]
    assert sorted(rejects.column("error").to_pylist()) == [
        "instruction shorter than 5 characters", "repeats edit type 'style' (the first is kept)"]
    assert proposals.num_rows + rejects.num_rows == len(edits)
    assert len(set(rejects.column("request_hash").to_pylist())) == 2
