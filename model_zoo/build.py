"""Build every tiny model into one cache directory, once per (seed, zoo version)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from model_zoo.flux2_klein import build_tiny_flux2_klein
from model_zoo.llava_onevision import build_tiny_llava_onevision
from model_zoo.qwen_vl import build_tiny_qwen25_vl
from model_zoo.zimage import build_tiny_zimage, build_tiny_zimage_omni

ZOO_VERSION = 4
DEFAULT_SEED = 0
_BUILDERS = {"qwen2_5_vl": build_tiny_qwen25_vl, "zimage": build_tiny_zimage,
             "llava_onevision": build_tiny_llava_onevision, "flux2_klein": build_tiny_flux2_klein,
             "zimage_omni": build_tiny_zimage_omni}


def default_cache_dir() -> Path:
    """`$NPEDIT_HOME/tiny-models`, defaulting to `~/.cache/npedit/tiny-models`."""
    home = os.environ.get("NPEDIT_HOME") or Path.home() / ".cache" / "npedit"
    return Path(home) / "tiny-models"


@dataclass(frozen=True)
class TinyModels:
    """Paths of the built tiny checkpoints; each loads exactly like a real one."""

    root: Path
    vlm: Path
    generator: Path
    llava: Path
    klein: Path
    omni: Path  # Z-Image in ZImageOmniPipeline's layout (with SigLIP2)

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


def weights_digest(model_dir: Path) -> str:
    """sha256 over every safetensors file under a checkpoint directory (order-independent of the walk)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*.safetensors")):
        digest.update(path.relative_to(model_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_tiny_models(cache_dir: Path | None = None, *, seed: int = DEFAULT_SEED, force: bool = False) -> TinyModels:
    """Build (or reuse) the tiny zoo under `cache_dir/seed-<seed>`; a manifest records versions and weight digests."""
    root = (cache_dir or default_cache_dir()) / f"seed-{seed}"
    models = TinyModels(root=root, vlm=root / "qwen2_5_vl", generator=root / "zimage", llava=root / "llava_onevision",
                        klein=root / "flux2_klein", omni=root / "zimage_omni")
    manifest_path = root / "manifest.json"
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("zoo_version") == ZOO_VERSION and all(Path(p).exists() for p in manifest["paths"].values()):
            return models
    if root.exists():
        shutil.rmtree(root)
    staging = root.with_name(root.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    for name, builder in _BUILDERS.items():
        builder(staging / name, seed)
    digests = {name: weights_digest(staging / name) for name in _BUILDERS}
    staging.rename(root)  # atomic publish: a killed build never leaves a half-written zoo behind a manifest
    manifest = {"zoo_version": ZOO_VERSION, "seed": seed, "paths": models.as_dict(), "weights_sha256": digests}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return models
