"""Benchmark loaders on small copies written in the published layouts; broken copies give one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evaluation.benchmarks import load_dreambooth, load_gedit, load_imgedit
from schemas.errors import ConfigError

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
GEDIT_SCHEMA = pa.schema([
    ("task_type", pa.string()), ("key", pa.string()), ("instruction", pa.string()),
    ("instruction_language", pa.string()), ("input_image", IMAGE_STRUCT), ("input_image_raw", IMAGE_STRUCT),
    ("Intersection_exist", pa.bool_()),
])


def _image_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6), kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, kind)
    return buffer.getvalue()


def _gedit_rows() -> list[dict]:
    def row(task, key, instruction, language, intersection, colour):
        return {"task_type": task, "key": key, "instruction": instruction, "instruction_language": language,
                "input_image": {"bytes": _image_bytes(colour), "path": f"{key}.png"},
                "input_image_raw": {"bytes": _image_bytes(colour, (16, 12)), "path": None},
                "Intersection_exist": intersection}

    return [row("background_change", "a1f3", "Put the cup on a beach", "en", True, (200, 10, 10)),
            row("background_change", "a1f3", "把杯子放到海滩上", "cn", True, (200, 10, 10)),
            row("text_change", "9c07", "Make the sign say OPEN", "en", False, (10, 10, 200))]


def _write_gedit_hub_snapshot(root: Path, rows: list[dict], schema: pa.Schema = GEDIT_SCHEMA) -> Path:
    """The hub repo as `huggingface-cli download --local-dir` leaves it: a save_to_disk DatasetDict of Arrow streams."""
    split = root / "train"
    split.mkdir(parents=True)
    with pa.ipc.new_stream(str(split / "data-00000-of-00001.arrow"), schema) as writer:
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    (split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                  "_split": "train"}))
    (split / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    download_cache = root / ".cache" / "huggingface" / "download" / "train"
    download_cache.mkdir(parents=True)
    (download_cache / "data-00000-of-00001.arrow.metadata").write_text("0123\n")
    (download_cache / "stale.arrow").write_bytes(b"not arrow")  # hidden folders are not part of the copy
    return root


def _error(call, *fragments: str) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_gedit_hub_snapshot_loads_cases_per_language(tmp_path):
    root = _write_gedit_hub_snapshot(tmp_path / "GEdit-Bench", _gedit_rows())
    cases = load_gedit(root)
    assert [case.case_id for case in cases] == [
        "gedit/background_change/en/a1f3", "gedit/background_change/cn/a1f3", "gedit/text_change/en/9c07"]
    first = cases[0]
    assert (first.benchmark, first.key, first.task_type, first.language) == ("gedit", "a1f3", "background_change", "en")
    assert (first.instruction, first.intersection, first.image_name, first.raw_image) == (
        "Put the cup on a beach", True, "a1f3.png", None)
    assert first.open_image().size == (8, 6) and first.open_image().getpixel((0, 0)) == (200, 10, 10)
    assert cases[2].intersection is False

    chinese = load_gedit(root, languages=("cn",))
    assert [case.instruction for case in chinese] == ["把杯子放到海滩上"]
    with_raw = load_gedit(root, languages=("en",), include_raw_image=True)
    assert Image.open(io.BytesIO(with_raw[0].raw_image)).size == (16, 12)


def test_gedit_parquet_copy_reads_like_the_snapshot(tmp_path):
    data = tmp_path / "parquet" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_gedit_rows(), schema=GEDIT_SCHEMA), data / "train-00000-of-00001.parquet")
    snapshot = load_gedit(_write_gedit_hub_snapshot(tmp_path / "arrow", _gedit_rows()))
    assert load_gedit(tmp_path / "parquet") == snapshot


def test_gedit_missing_or_malformed_copies_give_one_line_errors(tmp_path):
    _error(lambda: load_gedit(tmp_path / "absent"), "absent: no such folder", "stepfun-ai/GEdit-Bench")
    (tmp_path / "empty").mkdir()
    _error(lambda: load_gedit(tmp_path / "empty"), "no .arrow or .parquet files")
    _error(lambda: load_gedit(tmp_path / "empty", languages=("zh",)), "not zh")

    without_flag = GEDIT_SCHEMA.remove(GEDIT_SCHEMA.get_field_index("Intersection_exist"))
    rows = [{k: v for k, v in row.items() if k != "Intersection_exist"} for row in _gedit_rows()]
    _write_gedit_hub_snapshot(tmp_path / "no-flag", rows, without_flag)
    _error(lambda: load_gedit(tmp_path / "no-flag"), "data-00000-of-00001.arrow", "no column Intersection_exist")

    renamed = [dict(row, task_type="subject_add") for row in _gedit_rows()]
    _write_gedit_hub_snapshot(tmp_path / "bad-task", renamed)
    _error(lambda: load_gedit(tmp_path / "bad-task"), "row 0", "'subject_add'")

    broken = [dict(row, input_image={"bytes": b"\x89PNG garbage", "path": None}) for row in _gedit_rows()]
    _write_gedit_hub_snapshot(tmp_path / "bad-image", broken)
    _error(lambda: load_gedit(tmp_path / "bad-image"), "row 0: input_image", "not a readable image")

    _write_gedit_hub_snapshot(tmp_path / "twice", _gedit_rows() + _gedit_rows()[:1])
    _error(lambda: load_gedit(tmp_path / "twice"), "row 3", "gedit/background_change/en/a1f3 appears twice")

    truncated = tmp_path / "truncated" / "train"
    truncated.mkdir(parents=True)
    (truncated / "data-00000-of-00001.arrow").write_bytes(b"\xff\xff\xff\xff\x10")
    _error(lambda: load_gedit(tmp_path / "truncated"), "not a readable arrow table")


def _write_imgedit_benchmark(root: Path, listing: dict | str) -> Path:
    """Benchmark.tar extracted: Benchmark/singleturn/singleturn.json beside one folder of photos per category."""
    folder = root / "Benchmark" / "singleturn"
    for photo, colour in (("animal/000342021.jpg", (90, 60, 30)), ("daily object/000276684.jpg", (0, 120, 0))):
        (folder / photo).parent.mkdir(parents=True, exist_ok=True)
        (folder / photo).write_bytes(_image_bytes(colour, (10, 10), "JPEG"))
    text = listing if isinstance(listing, str) else json.dumps(listing, indent=4)
    (folder / "singleturn.json").write_text(text, encoding="utf-8")
    return root


IMGEDIT_LISTING = {
    "1082": {"id": "animal/000342021.jpg", "prompt": "Give the tortoise a smooth shell.", "edit_type": "adjust"},
    "361": {"id": "animal/000342021.jpg", "prompt": "Extract the tortoise.", "edit_type": "extract"},
    "628": {"id": "daily object/000276684.jpg", "prompt": "Replace the boot with a mug.", "edit_type": "replace"},
}


def test_imgedit_singleturn_cases_share_their_photos(tmp_path):
    root = _write_imgedit_benchmark(tmp_path / "ImgEdit", IMGEDIT_LISTING)
    cases = load_imgedit(root)
    assert [(c.case_id, c.task_type, c.image_name) for c in cases] == [
        ("imgedit/1082", "adjust", "animal/000342021.jpg"), ("imgedit/361", "extract", "animal/000342021.jpg"),
        ("imgedit/628", "replace", "daily object/000276684.jpg")]
    assert {(c.benchmark, c.language, c.intersection) for c in cases} == {("imgedit", "en", None)}
    assert cases[0].instruction == "Give the tortoise a smooth shell."
    assert cases[0].image is cases[1].image
    assert cases[2].open_image().size == (10, 10)
    assert load_imgedit(root / "Benchmark" / "singleturn") == cases
    assert load_imgedit(root / "Benchmark") == cases


def test_imgedit_reads_the_older_alter_type_as_adjust(tmp_path):
    older = {key: dict(entry, edit_type="alter" if entry["edit_type"] == "adjust" else entry["edit_type"])
             for key, entry in IMGEDIT_LISTING.items()}
    assert load_imgedit(_write_imgedit_benchmark(tmp_path, older))[0].task_type == "adjust"


def test_imgedit_missing_or_malformed_copies_give_one_line_errors(tmp_path):
    _error(lambda: load_imgedit(tmp_path / "absent"), "no such folder", "sysuyy/ImgEdit")
    (tmp_path / "empty").mkdir()
    _error(lambda: load_imgedit(tmp_path / "empty"), "no singleturn.json", "Benchmark/singleturn/")
    _error(lambda: load_imgedit(_write_imgedit_benchmark(tmp_path / "json", '{"1082": {"id": ')),
           "singleturn.json: not valid JSON")
    _error(lambda: load_imgedit(_write_imgedit_benchmark(tmp_path / "list", "[]")), "expected a non-empty object")
    no_prompt = dict(IMGEDIT_LISTING, **{"9": {"id": "animal/000342021.jpg", "edit_type": "add"}})
    _error(lambda: load_imgedit(_write_imgedit_benchmark(tmp_path / "field", no_prompt)), "case 9: no text in prompt")
    odd_type = dict(IMGEDIT_LISTING, **{"9": {"id": "animal/000342021.jpg", "prompt": "Zoom", "edit_type": "zoom"}})
    _error(lambda: load_imgedit(_write_imgedit_benchmark(tmp_path / "type", odd_type)), "case 9", "'zoom'")
    lost = dict(IMGEDIT_LISTING, **{"9": {"id": "human/000000001.jpg", "prompt": "Wave", "edit_type": "action"}})
    _error(lambda: load_imgedit(_write_imgedit_benchmark(tmp_path / "photo", lost)),
           "case 9", "human/000000001.jpg is missing")


DREAMBOOTH_LISTING = """Classes

subject_name,class
backpack,backpack
dog,dog
bear_plushie,stuffed animal

Prompts

Object Prompts

prompt_list = [
'a {0} {1} on a kitchen table'.format(unique_token, class_token),
'a {0} {1} in the rain'.format(unique_token, class_token),
'a green {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} on a kitchen table'.format(unique_token, class_token),
'a {0} {1} wearing a bow tie'.format(unique_token, class_token)
]
"""


def _write_dreambooth(root: Path, listing: str = DREAMBOOTH_LISTING, subjects=("backpack", "dog", "bear_plushie")):
    """The google/dreambooth repo: dataset/<subject>/NN.jpg beside dataset/prompts_and_classes.txt."""
    dataset = root / "dataset"
    for subject in subjects:
        (dataset / subject).mkdir(parents=True)
        for number in range(2):
            (dataset / subject / f"{number:02d}.jpg").write_bytes(_image_bytes((number * 50, 0, 0), kind="JPEG"))
    (dataset / "prompts_and_classes.txt").write_text(listing)
    (dataset / "references_and_licenses.txt").write_text("backpack: photographed by the fixture\n")
    return root


def test_dreambooth_subjects_take_the_prompts_of_their_kind(tmp_path):
    subjects = load_dreambooth(_write_dreambooth(tmp_path / "dreambooth") / "dataset")
    by_name = {subject.name: subject for subject in subjects}
    assert [s.name for s in subjects] == ["backpack", "dog", "bear_plushie"]
    assert [(s.class_name, s.live) for s in subjects] == [("backpack", False), ("dog", True),
                                                          ("stuffed animal", False)]
    assert [p.name for p in by_name["dog"].images] == ["00.jpg", "01.jpg"]
    assert by_name["dog"].prompt_templates == ("a {0} {1} on a kitchen table", "a {0} {1} wearing a bow tie")
    assert by_name["dog"].prompts("sks") == ("a sks dog on a kitchen table", "a sks dog wearing a bow tie")
    assert by_name["bear_plushie"].prompts("sks")[2] == "a green sks stuffed animal"
    assert load_dreambooth(tmp_path / "dreambooth") == subjects  # the repo itself also works


def test_dreambooth_missing_or_malformed_copies_give_one_line_errors(tmp_path):
    _error(lambda: load_dreambooth(tmp_path / "absent"), "no such folder", "google/dreambooth")
    (tmp_path / "empty").mkdir()
    _error(lambda: load_dreambooth(tmp_path / "empty"), "no prompts_and_classes.txt")
    no_photos = _write_dreambooth(tmp_path / "photos", subjects=("backpack", "dog"))
    _error(lambda: load_dreambooth(no_photos), "bear_plushie: no photos of subject 'bear_plushie'")
    garbled = DREAMBOOTH_LISTING.replace("'a {0} {1} in the rain'.format", "'a {0} {1} in the rain'.fmt")
    _error(lambda: load_dreambooth(_write_dreambooth(tmp_path / "garbled", garbled)), "line 14: unexpected")
    objects_only = DREAMBOOTH_LISTING[:DREAMBOOTH_LISTING.index("Live Subject Prompts")]
    _error(lambda: load_dreambooth(_write_dreambooth(tmp_path / "half", objects_only)),
           "no prompts under Live Subject Prompts")
    no_token = DREAMBOOTH_LISTING.replace("'a green {0} {1}'", "'a green {1}'")
    _error(lambda: load_dreambooth(_write_dreambooth(tmp_path / "token", no_token)), "line 15", "placeholders")
