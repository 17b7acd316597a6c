"""The VLM runner: batches requests, retries backend failures, caches answers by request hash, keeps provenance.

A rerun recomputes nothing already answered: every raw answer is stored in a SQLite cache (committed per batch)
under the hash of (model, prompt version, sampling, image, prompt fields) before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets_builder.vlm.backends import SamplingParams, VlmBackend, VlmRequest
from datasets_builder.vlm.prompts import ParseError, PromptSpec

log = logging.getLogger(__name__)


class ResponseCache:
    """request hash -> raw model text, in SQLite (safe across processes; survives a killed run)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._use_wal()
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (request_hash TEXT PRIMARY KEY, raw TEXT NOT NULL)")

    def _use_wal(self, attempts: int = 600) -> None:
        """Switch the file to WAL once (it stays so). SQLite refuses the switch at once, without waiting, while
        another connection opens the same new file (stages and shards of a build start together), so retry."""
        for attempt in range(attempts):
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def get_many(self, hashes: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT request_hash, raw FROM responses WHERE request_hash IN ({marks})", chunk)
            found.update(rows.fetchall())
        return found

    def put_many(self, items: dict[str, str]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO responses VALUES (?, ?)", list(items.items()))

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM responses").fetchone()[0]


@dataclass(frozen=True)
class PromptInput:
    """What one request is about: the image, and the fields the prompt template is filled with."""

    image_id: str
    image: bytes
    fields: dict[str, Any] = field(default_factory=dict)
    key: str | None = None  # e.g. a proposal_id, carried to the output row


@dataclass(frozen=True)
class VlmResult:
    item: PromptInput
    request_hash: str
    raw: str
    parsed: dict[str, Any] | None
    error: str | None
    cached: bool


@dataclass
class RunStats:
    requests: int = 0
    cached: int = 0
    generated: int = 0
    parse_errors: int = 0
    retries: int = 0
    seconds: float = 0.0


class VlmRunner:
    """Runs a prompt over many inputs with one backend; the same runner serves every stage."""

    def __init__(
        self,
        backend: VlmBackend,
        cache: ResponseCache,
        *,
        sampling: SamplingParams = SamplingParams(),
        batch_size: int = 8,
        max_attempts: int = 3,
        progress: Callable[[int, int], None] | None = None,
        image_view: str = "",
    ):
        self.backend, self.cache, self.sampling = backend, cache, sampling
        self.image_view = image_view  # how images were prepared for the model (e.g. "max_side=512"): part of the hash
        self.batch_size, self.max_attempts, self.progress = batch_size, max_attempts, progress
        self.stats = RunStats()

    def provenance(self, prompt: PromptSpec) -> dict[str, str]:
        """The columns every row produced by this runner carries."""
        return {
            "model_id": self.backend.model_id,
            "prompt_version": prompt.version,
            "sampling": self.sampling.to_json(),
            "backend": self.backend.name,
        }

    def request_hash(self, prompt: PromptSpec, item: PromptInput) -> str:
        blob = json.dumps(
            [self.backend.model_id, prompt.version, self.sampling.to_json(), item.image_id, item.fields]
            + ([self.image_view] if self.image_view else []),
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _generate_with_retries(self, requests: list[VlmRequest]) -> list[str]:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self.backend.generate(requests, self.sampling)
            except (OSError, RuntimeError, TimeoutError) as exc:
                if attempt == self.max_attempts:
                    raise
                self.stats.retries += 1
                log.warning("VLM batch failed (%s); retry %d/%d", exc, attempt, self.max_attempts - 1)
                time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def run(self, prompt: PromptSpec, items: Sequence[PromptInput]) -> list[VlmResult]:
        """Answer every item (cache first), parse each answer; order follows `items`."""
        started = time.perf_counter()
        hashes = [self.request_hash(prompt, item) for item in items]
        raw = self.cache.get_many(list(dict.fromkeys(hashes)))
        cached_hashes = set(raw)
        todo = [i for i, h in enumerate(hashes) if h not in raw]
        todo = list({hashes[i]: i for i in reversed(todo)}.values())[::-1]  # one request per distinct hash
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            requests = [
                VlmRequest(items[i].image, prompt.render(**items[i].fields), prompt.schema, prompt.max_new_tokens)
                for i in batch
            ]
            answers = self._generate_with_retries(requests)
            if len(answers) != len(requests):
                raise RuntimeError(f"{self.backend.name} backend returned {len(answers)} answers for {len(requests)}")
            fresh = {hashes[i]: text for i, text in zip(batch, answers)}
            self.cache.put_many(fresh)
            raw.update(fresh)
            if self.progress:
                self.progress(min(start + self.batch_size, len(todo)), len(todo))
        results = []
        for item, request_hash in zip(items, hashes):
            text = raw[request_hash]
            try:
                parsed, error = prompt.parse(text), None
            except ParseError as exc:
                parsed, error = None, str(exc)
                self.stats.parse_errors += 1
            results.append(VlmResult(item, request_hash, text, parsed, error, request_hash in cached_hashes))
        self.stats.requests += len(items)
        self.stats.cached += sum(1 for h in hashes if h in cached_hashes)
        self.stats.generated += len(todo)
        self.stats.seconds += time.perf_counter() - started
        return results
