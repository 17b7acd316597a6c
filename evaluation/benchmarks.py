"""Benchmark copies on the user's disk, read in their published layouts; nothing is downloaded.

GEdit-Bench: the `stepfun-ai/GEdit-Bench` dataset as `huggingface-cli download --repo-type dataset --local-dir DIR`
leaves it (Arrow files written by `datasets`; a `save_to_disk` folder or a Parquet copy of the same table reads the
same way). ImgEdit-Bench Basic: `Benchmark.tar` of the `sysuyy/ImgEdit` dataset extracted, `singleturn.json` beside
the image folders in `Benchmark/singleturn/`. DreamBooth: the `dataset/` folder of google/dreambooth. A missing or
malformed copy is a one-line `ConfigError` naming the file and what is wrong.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from schemas.errors import ConfigError

GEDIT_TASK_TYPES = (
    "background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
    "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer",
)
GEDIT_LANGUAGES = ("en", "cn")
GEDIT_COLUMNS = ("task_type", "key", "instruction", "instruction_language", "input_image", "Intersection_exist")
IMGEDIT_EDIT_TYPES = ("add", "adjust", "extract", "replace", "remove", "background", "style", "compose", "action")
IMGEDIT_RENAMED_TYPES = {"alter": "adjust"}  # basic_edit.json's name for `adjust` before June 2025
DREAMBOOTH_LIVE_CLASSES = ("cat", "dog")  # the repo's 9 live subjects; they take the live-subject prompt list
DREAMBOOTH_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GEDIT_HINT = "expected `huggingface-cli download --repo-type dataset stepfun-ai/GEdit-Bench --local-dir DIR`"
IMGEDIT_HINT = "expected Benchmark.tar of the sysuyy/ImgEdit dataset, extracted"
DREAMBOOTH_HINT = "expected the dataset/ folder of github.com/google/dreambooth"


@dataclass(frozen=True)
class BenchmarkCase:
    """One editing case: the input image (the encoded file's bytes) and the instruction, in the benchmark's terms."""

    benchmark: str  # "gedit" or "imgedit"
    key: str  # the benchmark's case key: GEdit `key`, an ImgEdit singleturn.json key
    task_type: str  # GEdit `task_type`, ImgEdit `edit_type`
    instruction: str
    language: str  # "en" or "cn"
    image: bytes = field(repr=False)  # GEdit `input_image` (the judge's source image), ImgEdit's source photo
    image_name: str | None = None  # ImgEdit `id` (the photo's path in the copy); the path stored with a GEdit image
    intersection: bool | None = None  # GEdit `Intersection_exist`: the case belongs to the Intersection subset
    raw_image: bytes | None = field(default=None, repr=False)  # GEdit `input_image_raw`, loaded on request

    @property
    def case_id(self) -> str:
        """Unique within a benchmark; a GEdit key repeats across languages, so its id follows the official layout."""
        if self.benchmark == "gedit":
            return f"gedit/{self.task_type}/{self.language}/{self.key}"
        return f"{self.benchmark}/{self.key}"

    def open_image(self) -> Image.Image:
        """The input image, decoded as RGB."""
        with Image.open(io.BytesIO(self.image)) as image:
            return image.convert("RGB")


@dataclass(frozen=True)
class DreamBoothSubject:
    """A DreamBooth subject: its photos, its class noun and the prompt templates of its kind (live or object)."""

    name: str
    class_name: str
    live: bool
    images: tuple[Path, ...]
    prompt_templates: tuple[str, ...]  # `{0}` is the unique token and `{1}` the class noun, as in the repo's list

    def prompts(self, unique_token: str) -> tuple[str, ...]:
        """The subject's prompts, formatted as the repo's list does: `template.format(unique_token, class_token)`."""
        return tuple(template.format(unique_token, self.class_name) for template in self.prompt_templates)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _existing_folder(path: str | Path, hint: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder; {hint}")
    return root


def _checked_image(data: bytes, where: str) -> bytes:
    """The bytes of an image file whose header decodes (the pixels are decoded only when used)."""
    try:
        with Image.open(io.BytesIO(data)):
            return data
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"{where}: not a readable image ({_one_line(error)})") from None


# --- GEdit-Bench ---------------------------------------------------------------------------------------------------


def _gedit_data_files(root: Path) -> list[Path]:
    """The table's files: Arrow (the hub snapshot, a save_to_disk folder), else Parquet; hidden folders skipped."""
    visible = [path for path in sorted(root.rglob("*"))
               if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)]
    return [path for path in visible if path.suffix == ".arrow"] or [p for p in visible if p.suffix == ".parquet"]


def _read_gedit_table(path: Path, columns: Sequence[str]) -> pa.Table:
    try:
        if path.suffix == ".parquet":
            names = pq.ParquetFile(path).schema_arrow.names
            table = pq.read_table(path, columns=[name for name in columns if name in names])
        else:
            try:  # `datasets` writes Arrow IPC streams; an IPC file is read as well
                table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            names = table.column_names
    except (pa.ArrowException, OSError) as error:
        kind = path.suffix[1:]
        raise ConfigError(f"{path}: not a readable {kind} table ({_one_line(error)}); {GEDIT_HINT}") from None
    missing = [name for name in columns if name not in names]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(names)}); {GEDIT_HINT}")
    return table.select(list(columns))


def _embedded_image(cell: object, column: str, where: str) -> tuple[bytes, str | None]:
    """An Image-feature cell as the hub stores it: a {bytes, path} struct with the file's bytes embedded."""
    if not isinstance(cell, dict) or not isinstance(cell.get("bytes"), bytes) or not cell["bytes"]:
        raise ConfigError(f"{where}: {column} holds no embedded image bytes")
    return _checked_image(cell["bytes"], f"{where}: {column}"), cell.get("path")


def _gedit_case(row: dict, where: str, include_raw_image: bool) -> BenchmarkCase:
    task_type, language, key = row["task_type"], row["instruction_language"], row["key"]
    if task_type not in GEDIT_TASK_TYPES:
        raise ConfigError(f"{where}: task_type {task_type!r} is not one of GEdit-Bench's 11 task types")
    if language not in GEDIT_LANGUAGES:
        raise ConfigError(f"{where}: instruction_language {language!r} is not one of {', '.join(GEDIT_LANGUAGES)}")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: key {key!r} is not a non-empty string")
    if not isinstance(row["instruction"], str) or not row["instruction"].strip():
        raise ConfigError(f"{where}: instruction {row['instruction']!r} is empty")
    if not isinstance(row["Intersection_exist"], bool):
        raise ConfigError(f"{where}: Intersection_exist {row['Intersection_exist']!r} is not a boolean")
    image, image_name = _embedded_image(row["input_image"], "input_image", where)
    raw_image = _embedded_image(row["input_image_raw"], "input_image_raw", where)[0] if include_raw_image else None
    return BenchmarkCase("gedit", key, task_type, row["instruction"], language, image, image_name,
                         row["Intersection_exist"], raw_image)


def load_gedit(path: str | Path, languages: Sequence[str] = GEDIT_LANGUAGES,
               include_raw_image: bool = False) -> list[BenchmarkCase]:
    """GEdit-Bench's cases in `languages` (606 per language, 11 task types), in the copy's order.

    `image` is the dataset's `input_image`, the source image the official judge script compares the edit with;
    `include_raw_image` also loads `input_image_raw` (the unprocessed original) into `raw_image`, which is otherwise
    left unread to save memory.
    """
    languages = (languages,) if isinstance(languages, str) else tuple(languages)
    unknown = [language for language in languages if language not in GEDIT_LANGUAGES]
    if unknown:
        raise ConfigError(f"GEdit-Bench languages are {', '.join(GEDIT_LANGUAGES)}, not {', '.join(unknown)}")
    root = _existing_folder(path, GEDIT_HINT)
    files = _gedit_data_files(root)
    if not files:
        raise ConfigError(f"{root}: no .arrow or .parquet files; {GEDIT_HINT}")
    columns = GEDIT_COLUMNS + (("input_image_raw",) if include_raw_image else ())
    cases: list[BenchmarkCase] = []
    seen: set[str] = set()
    for data_file in files:
        for row_number, row in enumerate(_read_gedit_table(data_file, columns).to_pylist()):
            where = f"{data_file}: row {row_number}"
            case = _gedit_case(row, where, include_raw_image)
            if case.case_id in seen:
                raise ConfigError(f"{where}: case {case.case_id} appears twice")
            seen.add(case.case_id)
            if case.language in languages:
                cases.append(case)
    if not cases:
        raise ConfigError(f"{root}: no GEdit-Bench cases in language {', '.join(languages)}")
    return cases


# --- ImgEdit-Bench Basic -------------------------------------------------------------------------------------------


def _imgedit_folder(root: Path) -> Path:
    for folder in (root, root / "singleturn", root / "Benchmark" / "singleturn"):
        if (folder / "singleturn.json").is_file():
            return folder
    raise ConfigError(f"{root}: no singleturn.json here, in singleturn/ or in Benchmark/singleturn/; {IMGEDIT_HINT}")


def load_imgedit(path: str | Path) -> list[BenchmarkCase]:
    """ImgEdit-Bench Basic's single-turn cases (737, 9 edit types) from the extracted `Benchmark.tar`.

    `singleturn.json` maps each case key to `{"id": photo path under its folder, "prompt", "edit_type"}`; several
    cases share a photo, read once. The older name `alter` of the `adjust` type is read as `adjust`.
    """
    folder = _imgedit_folder(_existing_folder(path, IMGEDIT_HINT))
    listing = folder / "singleturn.json"
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{listing}: not valid JSON ({_one_line(error)})") from None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{listing}: expected a non-empty object of case key -> {{id, prompt, edit_type}}")
    photos: dict[str, bytes] = {}
    cases = []
    for key, entry in entries.items():
        where = f"{listing}: case {key}"
        fields = ("id", "prompt", "edit_type")
        missing = [name for name in fields if not isinstance(entry, dict) or not isinstance(entry.get(name), str)
                   or not entry[name].strip()]
        if missing:
            raise ConfigError(f"{where}: no text in {', '.join(missing)}")
        edit_type = IMGEDIT_RENAMED_TYPES.get(entry["edit_type"], entry["edit_type"])
        if edit_type not in IMGEDIT_EDIT_TYPES:
            raise ConfigError(f"{where}: edit_type {edit_type!r} is not one of {', '.join(IMGEDIT_EDIT_TYPES)}")
        photo = entry["id"]
        if photo not in photos:
            if not (folder / photo).is_file():
                raise ConfigError(f"{where}: its photo {photo} is missing from {folder}")
            photos[photo] = _checked_image((folder / photo).read_bytes(), f"{where}: {photo}")
        cases.append(BenchmarkCase("imgedit", key, edit_type, entry["prompt"], "en", photos[photo], photo))
    return cases


# --- DreamBooth ----------------------------------------------------------------------------------------------------

_TEMPLATE_LINE = re.compile(r"^'(?P<template>.+)'\.format\(unique_token, class_token\),?$")
_PROMPT_SECTIONS = {"Object Prompts": False, "Live Subject Prompts": True}  # header -> the list is for live subjects
_LAYOUT_LINES = {"Prompts", "subject_name,class", "prompt_list = [", "]"}


def _read_prompts_and_classes(listing: Path) -> tuple[dict[str, str], dict[bool, list[str]]]:
    """prompts_and_classes.txt: `Classes` (`subject_name,class` rows), then the object and live prompt lists."""
    classes: dict[str, str] = {}
    templates: dict[bool, list[str]] = {False: [], True: []}
    section = None
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if line == "Classes" or line in _PROMPT_SECTIONS:
            section = line
        elif not line or line in _LAYOUT_LINES:
            continue
        elif section == "Classes" and re.fullmatch(r"[\w-]+,[^,]+", line):
            name, class_name = line.split(",")
            if name in classes:
                raise ConfigError(f"{listing}: line {number}: subject {name!r} is listed twice")
            classes[name] = class_name.strip()
        elif section in _PROMPT_SECTIONS and (match := _TEMPLATE_LINE.match(line)):
            if "{0}" not in match["template"] or "{1}" not in match["template"]:
                raise ConfigError(f"{listing}: line {number}: a prompt without the {{0}} and {{1}} placeholders")
            templates[_PROMPT_SECTIONS[section]].append(match["template"])
        else:
            raise ConfigError(f"{listing}: line {number}: unexpected {line!r}")
    return classes, templates


def load_dreambooth(path: str | Path) -> list[DreamBoothSubject]:
    """DreamBooth's subjects (30: 9 live, 21 objects), each with its photos, class noun and 25 prompt templates.

    `path` is the repo's `dataset/` folder (or the repo, which holds it): a folder of photos per subject beside
    `prompts_and_classes.txt`. Cats and dogs take the live-subject prompts, the other subjects the object prompts.
    """
    root = _existing_folder(path, DREAMBOOTH_HINT)
    folder = root if (root / "prompts_and_classes.txt").is_file() else root / "dataset"
    listing = folder / "prompts_and_classes.txt"
    if not listing.is_file():
        raise ConfigError(f"{root}: no prompts_and_classes.txt here or in dataset/; {DREAMBOOTH_HINT}")
    classes, templates = _read_prompts_and_classes(listing)
    if not classes:
        raise ConfigError(f"{listing}: no `subject_name,class` rows under Classes")
    for header, live in _PROMPT_SECTIONS.items():
        if not templates[live]:
            raise ConfigError(f"{listing}: no prompts under {header}")
    subjects = []
    for name, class_name in classes.items():
        photos = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in DREAMBOOTH_IMAGE_SUFFIXES)
        if not photos:
            suffixes = ", ".join(DREAMBOOTH_IMAGE_SUFFIXES)
            raise ConfigError(f"{folder / name}: no photos of subject {name!r} ({suffixes})")
        live = class_name in DREAMBOOTH_LIVE_CLASSES
        subjects.append(DreamBoothSubject(name, class_name, live, tuple(photos), tuple(templates[live])))
    return subjects


# --- every image of a copy (decontamination) ----------------------------------------------------------------------


def benchmark_images(name: str, path: str | Path) -> list[tuple[str, str, bytes]]:
    """(benchmark, case, encoded image) for every distinct image of a copy, for the builder to keep out of the corpus:
    GEdit's input images and their unprocessed originals, ImgEdit's photos, DreamBooth's subject photos."""
    found: dict[bytes, tuple[str, str, bytes]] = {}
    if name == "gedit":
        for case in load_gedit(path, include_raw_image=True):
            found.setdefault(case.image, (name, case.case_id, case.image))
            found.setdefault(case.raw_image, (name, f"{case.case_id} (raw)", case.raw_image))
    elif name == "imgedit":
        for case in load_imgedit(path):
            found.setdefault(case.image, (name, case.image_name, case.image))
    elif name == "dreambooth":
        for subject in load_dreambooth(path):
            for photo in subject.images:
                data = photo.read_bytes()
                found.setdefault(data, (name, f"{subject.name}/{photo.name}", data))
    else:
        raise ConfigError(f"unknown benchmark {name!r} (known: gedit, imgedit, dreambooth)")
    return list(found.values())
