"""The Dagster instance settings the UI runs with: how many runs and model-holding steps run at once."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from dagster_project.assets import VLM_SERVER_POOL

INSTANCE_YAML = """\
# Written by `npedit ui` when DAGSTER_HOME had no settings; edit freely, it is never overwritten.
# A backfill over many shards queues its runs; these limits decide how many run at once.
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  pools:
    # Every pool without its own limit: "vlm" (each running step holds a VLM), "images" (decode + normalise),
    # "lake_writer" (publishing; must stay 1). Raise one pool with e.g. `dagster instance concurrency set vlm 4`.
    # "vlm_server" (steps that only send requests to a vLLM server) gets its own limit, {server_slots} at first.
    default_limit: 1
"""


def ensure_instance_settings(home: Path, max_runs: int = 4, server_slots: int = 4) -> Path:
    """Write DAGSTER_HOME/dagster.yaml with the concurrency limits unless the user already has settings there, and
    give the "vlm_server" pool `server_slots` unless it has a limit of its own: each of its steps keeps
    `vlm.max_in_flight` requests open, so a few at once keep a server full across stage boundaries."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    if not path.exists() or not path.read_text().strip():
        path.write_text(INSTANCE_YAML.format(max_runs=max_runs, server_slots=server_slots))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        if VLM_SERVER_POOL not in {p.name for p in storage.get_pool_limits() if not p.from_default}:
            storage.set_concurrency_slots(VLM_SERVER_POOL, server_slots)
    return path
