"""The judge is never the training critic: a generator trained against a VLM learns what that VLM rewards, so the
same VLM's scores measure reward hacking rather than editing. Refused unless explicitly allowed.

The critic is read from the training config a run writes (`config.json` in the run dir and in every checkpoint,
`model.critic`); an empty value means the tiny zoo's VLM, as `training.run.resolve_model_paths` resolves it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from schemas.errors import ConfigError, Refused

_HUB_CACHE_FOLDER = re.compile(r"^models--(?P<owner>[^/]+?)--(?P<name>[^/]+)$")


def training_config_path(checkpoint: str | Path) -> Path | None:
    """The run's config.json for a run dir, a checkpoint dir or a generator dir; None for an untrained model.

    A checkpoint's own copy is preferred to the run dir's (which the latest `npedit train` call rewrites)."""
    from training.checkpoint import latest_checkpoint

    path = Path(checkpoint).expanduser()
    folders = [path]
    if (path / "checkpoints").is_dir():
        folders.insert(0, latest_checkpoint(path) or path)
    if path.name == "generator":
        folders.append(path.parent)
    if folders[-1].parent.name == "checkpoints":
        folders.append(folders[-1].parent.parent)
    for folder in folders:
        candidate = folder / "config.json"
        if candidate.is_file():
            try:
                config = json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ConfigError(f"{candidate}: not valid JSON ({' '.join(str(error).split())})") from None
            if isinstance(config, dict) and isinstance(config.get("model"), dict) and "critic" in config["model"]:
                return candidate
    return None


def training_critic(checkpoint: str | Path) -> str | None:
    """The critic a checkpoint was trained with (path or hub id as configured), or None when no run config is found."""
    config_path = training_config_path(checkpoint)
    if config_path is None:
        return None
    critic = json.loads(config_path.read_text(encoding="utf-8"))["model"]["critic"]
    if critic:
        return str(critic)
    from model_zoo.build import DEFAULT_SEED, default_cache_dir

    return str(default_cache_dir() / f"seed-{DEFAULT_SEED}" / "qwen2_5_vl")


def model_identities(model: str | Path) -> set[str]:
    """Names one model goes by: the text as given, its resolved local path, and the hub id of a hub cache folder."""
    text = str(model).strip().rstrip("/")
    names = {text.lower()}
    path = Path(text).expanduser()
    if path.exists():
        resolved = path.resolve()
        names.add(str(resolved))
        for part in resolved.parts:  # ~/.cache/huggingface/hub/models--Owner--Name/snapshots/<rev>
            if match := _HUB_CACHE_FOLDER.match(part):
                names.add(f"{match['owner']}/{match['name']}".lower())
    return names


def refuse_critic_as_judge(checkpoint: str | Path, judge_model: str | Path, allow: bool = False) -> str | None:
    """Refuse judging `checkpoint`'s outputs with its own training critic unless `allow`; returns that critic.

    Paths are compared after resolving links, hub ids case-insensitively, and a hub cache snapshot folder counts as
    its hub id. A checkpoint without a run config (a base model) has no critic and is never refused.
    """
    critic = training_critic(checkpoint)
    if critic is None or allow:
        return critic
    if model_identities(critic) & model_identities(judge_model):
        raise Refused(f"the judge {judge_model} is the critic {checkpoint} was trained with (model.critic in "
                      f"{training_config_path(checkpoint)}): its scores would reward hacking, not editing; use another "
                      "judge, or pass --allow-critic-judge to score with it anyway")
    return critic
