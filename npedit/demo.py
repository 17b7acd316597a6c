"""`npedit demo`: the main job on embedded defaults (sample images shipped in the repo, tiny models)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console

DEMO_INSTRUCTIONS = (
    "Add a red hot air balloon in the sky",
    "Turn the photo into a watercolor painting",
    "Change the background to a snowy mountain landscape",
)


def sample_image_paths() -> list[Path]:
    """The JPEGs shipped in `datasets_builder/sample_images` (real photos from scikit-image's data set)."""
    folder = resources.files("datasets_builder").joinpath("sample_images")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".jpg"))


def run_demo(out_dir: Path, *, cache_dir: Path | None = None, size: int = 64) -> Path:
    """Build tiny models, caption sample images with the VLM, edit them with the generator, write a PNG grid."""
    from model_zoo import build_tiny_models
    from model_zoo.qwen_vl import load_vlm
    from training.backbones import ZImageBackbone
    from training.sampling import edit_images
    from training.visualize import from_pil, save_edit_grid, to_pil

    console = Console()
    console.rule("npedit demo")
    models = build_tiny_models(cache_dir)
    console.print(f"tiny models: VLM {models.vlm}, generator {models.generator}")

    images = [Image.open(p).convert("RGB") for p in sample_image_paths()[: len(DEMO_INSTRUCTIONS)]]
    vlm, processor = load_vlm(models.vlm)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=[prompt] * len(images), images=images, return_tensors="pt", padding=True)
    generated = vlm.generate(**batch, max_new_tokens=8, do_sample=False)
    captions = processor.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    for path, caption in zip(sample_image_paths(), captions):
        console.print(f"{path.name}: caption by the random tiny VLM = {caption!r}", markup=False)

    backbone = ZImageBackbone.from_pretrained(models.generator)
    references = torch.stack([from_pil(img, (size, size)) for img in images])
    edited = edit_images(
        backbone, references, list(DEMO_INSTRUCTIONS), num_steps=4, generator=torch.Generator().manual_seed(0)
    )
    grid = save_edit_grid(images, list(DEMO_INSTRUCTIONS), [to_pil(e) for e in edited], out_dir / "edit_grid.png")
    console.print(f"edit grid (untrained tiny generator): {grid}")
    return grid
