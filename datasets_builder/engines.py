"""Where a build's shard work runs: threads of this process (`LocalEngine`) or tasks on a Ray cluster (`RayEngine`).

A shard's work is two plain functions over a `CorpusConfig`: `shard_images` (normalise, decontaminate, claim) and
`shard_stages` (the VLM stages). Both are idempotent (every output is an immutable file written atomically and
skipped when present), so an engine may run a piece of work again after a crash and nothing is lost or duplicated.

Images are claimed one shard after another in shard order on every engine: the first shard to claim an image's bytes
owns it, so this order makes the duplicates, and so the snapshot's content hash, the same however many machines run
the build. VLM stages of several shards overlap, and inside a shard the stages that do not read each other (caption,
propose, object) run at once when the VLM is a server: they share the backend's window of requests in flight.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import Protocol

from datasets_builder.config import CorpusConfig
from datasets_builder.corpus import STAGE_INPUTS, STAGE_OUTPUT, Corpus
from schemas import VlmStage
from schemas.errors import UserError

Counts = dict[str, dict[str, int]]  # asset name ("images", "captions", ...) -> its row and reject counts


class RayUnavailable(UserError, ConnectionError):
    """build.engine = "ray" but Ray is not installed or its cluster cannot be reached."""


def shard_images(config: CorpusConfig, shard: str, *after: object) -> dict[str, int]:
    """Step 1 of a shard (`after`: earlier shards' image results, which an engine makes this step wait for)."""
    return Corpus(config).build_images(shard)


def shard_stages(config: CorpusConfig, shard: str, images: dict[str, int]) -> Counts:
    """Every VLM stage of a shard whose images are built; independent stages at once for a server backend."""
    corpus = Corpus(config)
    if config.vlm.backend != "openai":  # one model in this process answers one stage at a time
        return {"images": images, **{STAGE_OUTPUT[s]: corpus.run_stage(s, shard) for s in STAGE_OUTPUT}}
    corpus.vlm_images(shard)  # prepared once here, then read by every stage (not made by three threads at once)
    counts: dict[VlmStage, Future] = {}
    with ThreadPoolExecutor(len(STAGE_OUTPUT), thread_name_prefix=f"stages-{shard}") as pool:
        for stage in STAGE_OUTPUT:  # dependencies come first in this order
            inputs = [counts[s] for s in STAGE_INPUTS[stage]]
            counts[stage] = pool.submit(_after, inputs, corpus.run_stage, stage, shard)  # a runner per thread
    return {"images": images, **{STAGE_OUTPUT[s]: f.result() for s, f in counts.items()}}


def _after(inputs: list[Future], function, *args):
    for future in inputs:
        future.result()  # an input stage failed: so does this one
    return function(*args)


class ShardEngine(Protocol):
    def run(self, config: CorpusConfig, shards: Sequence[str]) -> Iterator[tuple[str, Counts]]:
        """Build every shard; yields (shard, counts) as each finishes; raises the first failure."""
        ...


def shards_in_flight(config: CorpusConfig) -> int:
    """`build.shards_in_flight`, or 3 for a VLM server (measured in `benchmarks/bench_vlm_server.py`: 3 kept a
    256-wide server 87 % busy where 2 kept it 81 %) and 1 for a model in this process."""
    return config.build.shards_in_flight or (3 if config.vlm.backend == "openai" else 1)


class LocalEngine:
    """Shards in threads of this process, `shards_in_flight` at a time, images claimed in shard order."""

    def run(self, config: CorpusConfig, shards: Sequence[str]) -> Iterator[tuple[str, Counts]]:
        width = shards_in_flight(config)
        queue = iter(shards)
        pending: dict[Future, str] = {}
        previous = _done(None)

        def submit(shard: str) -> None:
            nonlocal previous
            images_done: Future = Future()
            pending[pool.submit(self._shard, config, shard, previous, images_done)] = shard
            previous = images_done

        with ThreadPoolExecutor(width, thread_name_prefix="shard") as pool:
            for shard in list(islice(queue, width)):
                submit(shard)
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    shard = pending.pop(future)
                    yield shard, future.result()  # a failure stops new shards; running ones finish
                    following = next(queue, None)
                    if following is not None:
                        submit(following)

    @staticmethod
    def _shard(config: CorpusConfig, shard: str, previous: Future, images_done: Future) -> Counts:
        wait([previous])  # the previous shard has claimed its images (or failed: this shard claims regardless)
        try:
            images = shard_images(config, shard)
        except BaseException as error:
            images_done.set_exception(error)
            raise
        images_done.set_result(images)
        return shard_stages(config, shard, images)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class RayEngine:
    """Shards as Ray tasks on a running cluster (`ray start --head` on one machine, `ray start --address` on the
    others). Every machine needs npedit installed and must reach the same fetched shards, lake and claims (a team
    lake: PostgreSQL catalog and claims, object-storage data; `fetched_dir` a shared URL). A task whose worker or
    machine dies, or that fails to reach a service (OSError), runs again on another worker, `build.max_retries`
    times at most; one image task per shard, each waiting for the previous shard's, keeps claims in shard order."""

    def run(self, config: CorpusConfig, shards: Sequence[str]) -> Iterator[tuple[str, Counts]]:
        ray = _connect(config.build.ray_address)
        try:
            options = {"max_retries": config.build.max_retries, "retry_exceptions": [OSError]}
            images_task = ray.remote(shard_images).options(**options, num_cpus=1)
            stages_task = ray.remote(shard_stages).options(**options, num_cpus=1)
            pending, previous = {}, []
            for shard in shards:
                images = images_task.remote(config, shard, *previous)  # Ray starts it once `previous` is done
                pending[stages_task.remote(config, shard, images)] = shard
                previous = [images]
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(finished[0])
                yield shard, ray.get(finished[0])
        finally:
            ray.shutdown()


def _connect(address: str):
    try:
        import ray
    except ImportError:
        raise RayUnavailable("build.engine = \"ray\" needs Ray: pip install 'ray==2.60.0'") from None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        if host and port.isdigit():  # ray.init itself waits minutes for an address where nothing listens
            socket.create_connection((host, int(port)), timeout=5).close()
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
    except OSError as error:  # ConnectionError from ray.init is one too
        raise RayUnavailable(f"no Ray cluster at {address!r} (start one with `ray start --head`): {error}") from None
    return ray


def make_engine(config: CorpusConfig) -> ShardEngine:
    """The engine `build.engine` names."""
    return RayEngine() if config.build.engine == "ray" else LocalEngine()
