"""VLM inference: parsers over malformed outputs, grammar-constrained generation, the caching runner."""

from __future__ import annotations

import json
import re

import pytest

from datasets_builder.vlm import PROMPTS, ParseError, PromptInput, ResponseCache, SamplingParams, VlmRunner
from datasets_builder.vlm.backends import TransformersBackend, VlmRequest
from datasets_builder.vlm.prompts import CAPTION, PROPOSE, VALIDATE, text_pattern
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
    (json.dumps({"edits": [{**GOOD_EDIT, "instruction": "x" * 101}] * 4}), "has 101 characters, outside 5..100"),
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
    answer = {"is_valid": "yes", "reasoning": "", "target_object": "", "edited_caption": ""}
    with pytest.raises(ParseError, match=r"\$.is_valid is not a boolean"):
        VALIDATE.parse(json.dumps(answer))


def test_validity_answer_names_the_target_object():
    answer = {"is_valid": True, "reasoning": "the cup is on the table", "target_object": "the white cup",
              "edited_caption": "an empty saucer on a wooden table"}
    assert VALIDATE.parse(json.dumps(answer))["target_object"] == "the white cup"
    assert VALIDATE.parse(json.dumps({**answer, "target_object": ""}))["target_object"] == ""
    with pytest.raises(ParseError, match=r"\$ lacks 'target_object'"):
        VALIDATE.parse(json.dumps({k: v for k, v in answer.items() if k != "target_object"}))


LONG_MIXED = ("一只橘猫坐在阳光下的木桌上, an orange cat sits on a sunlit wooden table; 窗外是雪山和蓝天。" * 12)[:500]


@pytest.mark.parametrize(
    ("caption", "error"),
    [
        (LONG_MIXED, None),
        ("Café au lait, crème brûlée — «déjà vu» on a Zürich terrace, naïve 🐱 emoji", None),
        ("x" * 600, None),
        ("x" * 601, "has 601 characters, outside 5..600"),
        ("short", None),
        ("shrt", "has 4 characters"),
        ("a cat\non a mat", "character '\\n' is not printable text"),
        ("a cat\x01 on a mat", "character '\\x01'"),
        ("a cat\x85 on a mat", "character '\\x85'"),  # C1 control
        ('a "quoted" cat', "character '\"'"),
        ("a back\\slash cat", "character '\\\\'"),
        ("a lone \ud800 surrogate", "character '\\ud800'"),
        ("line\u2028separator", "character '\\u2028'"),
    ],
)
def test_captions_are_long_printable_unicode(caption, error):
    text = json.dumps({"caption": caption})
    if error is None:
        assert CAPTION.parse(text)["caption"] == caption
    else:
        with pytest.raises(ParseError, match=re.escape(error)):
            CAPTION.parse(text)


def test_text_patterns_are_exact_bounded_repetitions():
    for low, high in ((0, 40), (5, 100), (0, 129), (5, 600), (10, 600), (0, 599), (7, 301)):
        pattern = text_pattern(low, high)["pattern"]
        counts = [int(n) for n in re.findall(r"\{(\d+)(?:,(\d+))?\}", pattern) for n in n if n]
        assert max(counts) <= 128, pattern  # what xgrammar 0.2.8 compiles
        lengths = [n for n in range(high + 3) if re.fullmatch(pattern.strip("^$"), "猫" * n)]
        assert lengths == list(range(low, high + 1)), (low, high)
    with pytest.raises(ValueError, match="minimum length is at most 128"):
        text_pattern(200, 400)


def test_max_new_tokens_bounds_the_longest_answer_in_bytes():
    widest = "\U0010fffd"  # 4 UTF-8 bytes, the most a character of the text class takes
    answer = {"is_valid": False, "reasoning": widest * 600, "target_object": widest * 60,
              "edited_caption": widest * 600}
    text = json.dumps(answer, ensure_ascii=False)
    assert VALIDATE.parse(text) == answer
    assert len(text.encode()) < VALIDATE.max_new_tokens  # byte-level tokens are at least one byte each
    assert CAPTION.max_new_tokens == len('{"caption": ""}') + 4 * 600 + 1


def test_prompt_versions_are_stable_and_distinct():
    versions = [p.version for p in PROMPTS.values()]
    assert len(set(versions)) == len(versions)
    assert PROPOSE.version.startswith("propose-")


@pytest.fixture(scope="module")
def backend(tiny_models):
    return TransformersBackend(tiny_models.vlm)


@pytest.mark.parametrize("stage", list(VlmStage))
def test_constrained_generation_always_parses_even_from_a_random_model(backend, stage):
    prompt = PROMPTS[stage]
    image = (SAMPLES / "coffee.jpg").read_bytes()
    text = prompt.render(count=4, edit_type="remove", instruction="Remove the cup", object_name="cup")
    requests = [VlmRequest(image, text, prompt.schema, prompt.max_new_tokens)] * 3
    outputs = [o for sampling in (SamplingParams(temperature=1.0, seed=1), SamplingParams())
               for o in backend.generate(requests, sampling)]
    for output in outputs:
        prompt.parse(output)  # never truncated by max_new_tokens, never outside the pattern
        assert list(json.loads(output)) == list(prompt.schema["properties"])  # keys in the schema's order, as vLLM
    assert any(ord(c) > 127 for output in outputs for c in output)  # a random model writes non-ASCII text too


def _byte_tokens(tokenizer) -> dict[int, int]:
    """Byte -> id of the byte-level token that is exactly that byte (GPT-2's printable stand-ins for raw bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_in = {b: chr(b) for b in printable}
    stand_in.update({b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)})
    return {b: tokenizer.convert_tokens_to_ids(c) for b, c in stand_in.items()}


def test_xgrammar_admits_exactly_the_utf8_of_the_text_class(backend):
    """Every 1- and 2-byte sequence and every 3-byte one (4-byte ones by lead and second byte) inside a JSON string:
    xgrammar's mask agrees with Python's UTF-8 decoder + `re` (ranges running on across U+07FF/U+0800 let overlong
    E0 80..9F through, the negated class [^...] let surrogates ED A0..BF through)."""
    import xgrammar as xgr

    pattern = text_pattern(0, 3)["pattern"]
    compiled = backend._grammar({"type": "object", "additionalProperties": False, "required": ["s"],
                                 "properties": {"s": text_pattern(0, 3)}})
    byte_token = _byte_tokens(backend.processor.tokenizer)
    matcher = xgr.GrammarMatcher(compiled)
    assert all(matcher.accept_token(byte_token[b]) for b in b'{"s": "')

    def grammar_accepts(sequence: bytes) -> bool:
        accepted = 0
        for b in sequence + b'"':
            if not matcher.accept_token(byte_token[b]):
                break
            accepted += 1
        matcher.rollback(accepted)
        return accepted == len(sequence) + 1

    def python_accepts(sequence: bytes) -> bool:
        try:
            return bool(re.fullmatch(pattern.strip("^$"), sequence.decode("utf-8")))
        except UnicodeDecodeError:
            return False

    sequences = [bytes([a]) for a in range(256)]
    sequences += [bytes([a, b]) for a in range(0xC0, 0x100) for b in range(256)]
    sequences += [bytes([a, b, c]) for a in range(0xE0, 0xF0) for b in range(0x80, 0xC0) for c in range(256)]
    sequences += [bytes([a, b, 0x80, 0x80]) for a in range(0xF0, 0xF8) for b in range(0x80, 0xC0)]
    disagree = [s.hex() for s in sequences if grammar_accepts(s) != python_accepts(s)]
    assert not disagree, disagree[:10]


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
    smaller_images = VlmRunner(counting, ResponseCache(tmp_path / "cache.sqlite"), image_view="max_side=96")
    assert smaller_images.request_hash(PROMPTS[VlmStage.CAPTION], items[0]) != first[0].request_hash


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


def test_validity_stage_writes_the_target_object_or_null(tmp_path):
    import pyarrow as pa

    from datasets_builder.stages import validate_edits
    from schemas import EDIT_INSTRUCTIONS

    image_id = "b" * 64
    answers = {  # instruction -> (edit type, the model's target_object)
        "Remove the white cup": ("remove", " the white cup "),
        "Make the saucer bright blue": ("local_color_change", ""),  # none named: NULL
        "Turn the photo into a watercolor": ("style", "the photo"),  # a style edit has no target object: NULL
        "Add a red kite in the sky": ("insertion", "a red kite"),
    }

    class ByInstruction:
        name, model_id = "transformers", "fixed"

        def generate(self, requests, sampling):
            out = []
            for request in requests:
                instruction = next(i for i in answers if f'"{i}"' in request.text)
                out.append(json.dumps({"is_valid": True, "reasoning": "it fits",
                                       "target_object": answers[instruction][1],
                                       "edited_caption": "一张木桌上的水彩画, a watercolor of a table"}))
            return out

    proposals = pa.table({"proposal_id": [str(i) * 64 for i in range(len(answers))], "image_id": [image_id] * 4,
                          "edit_type": [t for t, _ in answers.values()], "instruction": list(answers)})
    images = pa.table({"image_id": [image_id], "image": [b"x"]})
    captions = pa.table({"image_id": [image_id], "caption": ["a cup on a saucer"]})
    runner = VlmRunner(ByInstruction(), ResponseCache(tmp_path / "c.sqlite"))
    rows, rejects = validate_edits(proposals, images, captions, runner)
    assert rejects.num_rows == 0 and rows.schema.equals(EDIT_INSTRUCTIONS.schema)
    targets = dict(zip(rows.column("instruction").to_pylist(), rows.column("target_object").to_pylist()))
    assert targets == {"Remove the white cup": "the white cup", "Make the saucer bright blue": None,
                       "Turn the photo into a watercolor": None, "Add a red kite in the sky": None}
    assert set(rows.column("edited_caption").to_pylist()) == {"一张木桌上的水彩画, a watercolor of a table"}


def test_each_backend_gets_the_batch_that_keeps_it_busy():
    from datasets_builder.config import CorpusConfig, SourceConfig, VlmConfig
    from datasets_builder.corpus import runner_batch_size
    from datasets_builder.fetch import FetchConfig

    def config(**vlm) -> CorpusConfig:
        return CorpusConfig(source=SourceConfig(folder="x"), fetch=FetchConfig(shard_size=500), vlm=VlmConfig(**vlm))

    assert runner_batch_size(config(backend="transformers", batch_size=8)) == 8
    assert runner_batch_size(config(backend="openai", batch_size=8, max_in_flight=256)) == 256
    assert runner_batch_size(config(backend="vllm", batch_size=8)) == 500 * 4  # a whole shard's validation stage


def test_answer_caches_opened_together_on_a_new_file_all_open(tmp_path):
    """Stages and shards of a build open the same new cache at once; SQLite refuses the WAL switch to all but one
    without waiting, which once failed a build with 'database is locked'."""
    import threading

    errors = []
    for trial in range(100):
        def open_and_write(i: int, path=tmp_path / f"cache{trial}.sqlite") -> None:
            try:
                ResponseCache(path).put_many({f"request{i}": "answer"})
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                errors.append(error)

        threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(ResponseCache(tmp_path / f"cache{trial}.sqlite")) == 12
    assert not errors, errors[:3]
