"""The Dagster instance settings the UI runs with: how many runs and model-holding steps run at once."""

from __future__ import annotations

from pathlib import Path

INSTANCE_YAML = """\
# Written by `npedit ui` when DAGSTER_HOME had no settings; edit freely, it is never overwritten.
# A backfill over many shards queues its runs; these limits decide how many run at once.
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  pools:
    # Every pool without its own limit: "vlm" (each running step holds a VLM), "images" (decode + normalise),
    # "lake_writer" (publishing; must stay 1). Raise one pool with e.g. `dagster instance concurrency set vlm 4`.
    default_limit: 1
"""


def ensure_instance_settings(home: Path, max_runs: int = 4) -> Path:
    """Write DAGSTER_HOME/dagster.yaml with the concurrency limits unless the user already has settings there."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    if not path.exists() or not path.read_text().strip():
        path.write_text(INSTANCE_YAML.format(max_runs=max_runs))
    return path
