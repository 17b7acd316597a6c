"""What `npedit corpus build` runs: fetch and benchmark hashes (a Dagster run), every shard on the build's engine
(recorded in Dagster), the snapshot and its checks (a Dagster run)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import dagster as dg

from dagster_project.assets import shards
from dagster_project.definitions import ALL_ASSETS
from dagster_project.checks import SNAPSHOT_CHECKS
from dagster_project.engine_job import shard_done, shard_materializations
from dagster_project.resources import resources_from
from datasets_builder.config import CorpusConfig
from datasets_builder.engines import make_engine
from schemas.errors import UserError


def build_corpus(
    config: CorpusConfig,
    *,
    message: str = "corpus build",
    tag: str | None = None,
    replace: bool = False,
    instance: dg.DagsterInstance | None = None,
    on_event: Callable[[str], None] = print,
    log_level: str = "WARNING",
) -> dict:
    """Run fetch (a Dagster run), then every shard on the configured engine (`build.engine`: threads here or a Ray
    cluster; each shard recorded as materializations of its assets), then the snapshot with its checks (a Dagster
    run); returns the snapshot metadata."""
    instance = instance or dg.DagsterInstance.ephemeral()
    resources = resources_from(config)
    logs = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    first = dg.materialize(ALL_ASSETS, selection=["fetched_shards", "benchmark_hashes"], instance=instance,
                           resources=resources, run_config=logs, raise_on_error=False)
    _raise_failure(first, "fetching the source and hashing the benchmarks")
    keys = instance.get_dynamic_partitions(shards.name)
    for i, (key, counts) in enumerate(make_engine(config).run(config, keys), 1):
        for materialization in shard_materializations(key, counts):  # as if Dagster had run the shard's steps
            instance.report_runless_asset_event(materialization)
        on_event(shard_done(key, i, len(keys), counts))
    # The console stays quiet during the publish run and its log is replayed after it: a refusal (a taken tag,
    # another configuration's files) is one line, not Dagster's step-failure traceback; a bug keeps its traceback.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    result = dg.materialize(
        [*ALL_ASSETS, *SNAPSHOT_CHECKS],
        selection=dg.AssetSelection.assets("snapshot"),
        instance=instance,
        resources=resources,
        run_config={**quiet, "ops": {"snapshot": {"config": {"message": message, "tag": tag, "replace": replace}}}},
        raise_on_error=False,
    )
    _replay_log(instance, result.run_id, log_level, on_event, failed=not result.success)
    _raise_failure(result, "publishing the snapshot")
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("snapshot")[0].metadata.items()}
    for evaluation in result.get_asset_check_evaluations():
        metadata[f"check_{evaluation.check_name}"] = "passed" if evaluation.passed else "FAILED"
    return metadata


class BuildRefused(UserError, RuntimeError):
    """The build stopped on something the user can fix (the lake refused, a snapshot or lake was not found)."""


USER_ERRORS = {"ConfigError", "NotFound", "Refused", "LakeUnavailable", "UserError", "FileNotFoundError"}


def _raise_failure(result: dg.ExecuteInProcessResult, what: str) -> None:
    """A failed run as one `BuildRefused` line when every step failed on something the user can fix, else a
    RuntimeError with the tracebacks."""
    if result.success:
        return
    errors = [e.step_failure_data.error for e in result.get_step_failure_events() if e.step_failure_data.error]
    causes = [_cause(error) for error in errors]
    message = f"{what} failed: " + ("; ".join(m for _, m in causes) or "see the Dagster log above")
    if causes and all(name in USER_ERRORS for name, _ in causes):
        raise BuildRefused(message)
    raise RuntimeError("\n\n".join([message, *(error.to_string() for error in errors)]))


def _replay_log(instance: dg.DagsterInstance, run_id: str, log_level: str, on_event: Callable[[str], None], *,
                failed: bool) -> None:
    """The run's log lines at `log_level` or above; after a step failed only the warnings of the assets (the events
    and errors then tell of that failure and of the steps skipped because of it: the caller reports it once)."""
    threshold = logging.getLevelName(log_level.upper())
    for entry in instance.all_logs(run_id):
        level = entry.level if isinstance(entry.level, int) else logging.getLevelName(str(entry.level).upper())
        if not isinstance(level, int) or level < threshold or (
                failed and (entry.dagster_event is not None or level >= logging.ERROR)):
            continue
        on_event(f"{logging.getLevelName(level).lower()}: {entry.user_message}")


def _cause(error) -> tuple[str, str]:
    """(class name, message) of the exception a Dagster step failed on, under Dagster's own wrappers; the message
    without the `module.Class: ` that Dagster puts before it."""
    while error.cls_name and error.cls_name.startswith("Dagster") and error.cause is not None:
        error = error.cause
    name = error.cls_name or ""
    message = error.message.strip()
    if name:
        message = re.sub(rf"^[\w.]*\b{re.escape(name)}: ", "", message)
    return name, message
