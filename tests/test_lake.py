"""DuckLake snapshots: one commit per publish, idempotent, immutable, addressable by id or tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets_builder import lake
from schemas import IMAGES_REJECTED, SchemaError


def _rejects(tag: str, n: int):
    return IMAGES_REJECTED.to_arrow(
        [dict(source=f"http://x/{tag}{i}.jpg", shard=tag, reason="http_error", detail="404") for i in range(n)]
    )


@pytest.fixture
def store(tmp_path):
    return lake.LakeConfig.local(tmp_path / "lake")


def test_publish_time_travel_and_immutability(store):
    first = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 3), "a")
    v1 = lake.publish(store, {"images_rejected": [first]}, message="first", tag="v1")
    before = lake.read_table(store, "images_rejected", "v1").to_pylist()
    second = lake.write_staged(store, IMAGES_REJECTED, _rejects("b", 2), "b")
    v2 = lake.publish(store, {"images_rejected": [first, second]}, message="second", tag="v2")
    assert v2.parent == v1.snapshot_id and v2.snapshot_id > v1.snapshot_id
    assert v1.row_counts["images_rejected"] == 3 and v2.row_counts["images_rejected"] == 5
    assert lake.read_table(store, "images_rejected", "v1").to_pylist() == before
    assert lake.read_table(store, "images_rejected", v1.snapshot_id).num_rows == 3
    assert lake.read_table(store, "images_rejected").num_rows == 5  # latest
    assert v1.content_hash != v2.content_hash
    assert lake.verify_content_hash(store, "v1") and lake.verify_content_hash(store, "v2")
    published = lake.published_snapshots(store)
    assert published.column("tag").to_pylist() == ["v1", "v2"]
    assert published.column("message").to_pylist() == ["first", "second"]


def test_a_local_lake_moved_as_a_folder_opens_and_publishes_where_it_now_is(tmp_path):
    before = lake.LakeConfig.of(tmp_path / "here")
    first = lake.write_staged(before, IMAGES_REJECTED, _rejects("a", 3), "a")
    v1 = lake.publish(before, {"images_rejected": [first]}, message="first", tag="v1")
    (tmp_path / "here").rename(tmp_path / "there")
    moved = lake.LakeConfig.of(tmp_path / "there")
    assert lake.read_table(moved, "images_rejected", "v1").num_rows == 3
    first = str(first).replace(str(tmp_path / "here"), str(tmp_path / "there"))
    second = lake.write_staged(moved, IMAGES_REJECTED, _rejects("b", 2), "b")
    assert lake.publish(moved, {"images_rejected": [first, second]}, message="second").parent == v1.snapshot_id
    assert lake.read_table(moved, "images_rejected").num_rows == 5 and lake.verify_content_hash(moved, "v1")
    assert not (tmp_path / "here").exists()


def test_republishing_registers_nothing_twice(store):
    path = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 3), "a")
    v1 = lake.publish(store, {"images_rejected": [path]}, message="first")
    again = lake.publish(store, {"images_rejected": [path]}, message="again")
    assert again.snapshot_id == v1.snapshot_id
    assert lake.read_table(store, "images_rejected").num_rows == 3


def test_outputs_of_another_configuration_are_refused_not_mixed(store):
    old = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 3), "a-model1")
    lake.publish(store, {"images_rejected": [old]}, message="model 1", tag="v1")
    replacement = lake.write_staged(store, IMAGES_REJECTED, _rejects("b", 3), "a-model2")
    with pytest.raises(ValueError, match="already holds 1 file.*a-model1.parquet.*--replace"):
        lake.publish(store, {"images_rejected": [replacement]}, message="model 2")
    assert lake.read_table(store, "images_rejected").num_rows == 3


def test_replace_retires_another_configurations_files_and_earlier_snapshots_keep_them(store):
    shared = lake.write_staged(store, IMAGES_REJECTED, _rejects("s", 2), "s-limits1")
    old = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 3), "a-model1")
    v1 = lake.publish(store, {"images_rejected": [shared, old]}, message="model 1", tag="v1")
    before = lake.read_table(store, "images_rejected", "v1").to_pylist()
    new = lake.write_staged(store, IMAGES_REJECTED, _rejects("b", 4), "a-model2")
    v2 = lake.publish(store, {"images_rejected": [shared, new]}, message="model 2", tag="v2", replace=True)
    assert (v1.row_counts["images_rejected"], v2.row_counts["images_rejected"]) == (5, 6)
    assert sorted(lake.read_table(store, "images_rejected", "v2").column("shard").to_pylist()) == ["b"] * 4 + ["s"] * 2
    assert lake.read_table(store, "images_rejected", "v1").to_pylist() == before
    assert lake.table_files(store, "images_rejected", "v2") == sorted([str(shared), str(new)])
    assert lake.table_files(store, "images_rejected", "v1") == sorted([str(shared), str(old)])
    assert Path(old).exists() and lake.verify_content_hash(store, "v1") and lake.verify_content_hash(store, "v2")
    again = lake.publish(store, {"images_rejected": [shared, new]}, message="again", replace=True)
    assert again.snapshot_id == v2.snapshot_id
    back = lake.publish(store, {"images_rejected": [shared, old]}, message="model 1 again", tag="v3", replace=True)
    assert sorted(lake.read_table(store, "images_rejected", "v3").column("source").to_pylist()) == sorted(
        row["source"] for row in before)
    assert back.content_hash == v1.content_hash and lake.verify_content_hash(store, "v2")


def test_empty_files_and_tags_without_new_content(store):
    empty = lake.write_staged(store, IMAGES_REJECTED, _rejects("e", 0), "empty")
    with pytest.raises(ValueError, match="nothing new to publish \\(no rows\\)"):
        lake.publish(store, {"images_rejected": [empty]}, message="m", tag="v0")
    full = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 2), "a")
    v1 = lake.publish(store, {"images_rejected": [empty, full]}, message="m", tag="v1")
    assert lake.verify_content_hash(store, "v1")
    assert lake.publish(store, {"images_rejected": [empty, full]}, message="again").snapshot_id == v1.snapshot_id
    with pytest.raises(ValueError, match="already holds every file.*'v2' was not set"):
        lake.publish(store, {"images_rejected": [empty, full]}, message="again", tag="v2")


def test_a_tag_republished_over_the_same_content_is_idempotent(store):
    path = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 2), "a")
    first = lake.publish_outcome(store, {"images_rejected": [path]}, message="m", tag="v1")
    assert first.created
    again = lake.publish_outcome(store, {"images_rejected": [path]}, message="rerun", tag="v1")
    assert not again.created and again.snapshot == first.snapshot
    other = lake.write_staged(store, IMAGES_REJECTED, _rejects("b", 1), "b")
    with pytest.raises(ValueError, match=f"tag 'v1' already names snapshot {first.snapshot.snapshot_id}, which "
                                         "holds other content .*publish under a new tag"):
        lake.publish(store, {"images_rejected": [path, other]}, message="m", tag="v1")
    v2 = lake.publish(store, {"images_rejected": [other]}, message="another model", tag="v2", replace=True)
    # v1's files, retired by v2, are still exactly v1: nothing to publish, and the latest stays v2
    for replace in (True, False):
        back = lake.publish_outcome(store, {"images_rejected": [path]}, message="rerun v1", tag="v1", replace=replace)
        assert not back.created and back.snapshot.snapshot_id == first.snapshot.snapshot_id
    assert lake.published_snapshots(store).column("tag").to_pylist() == ["v1", "v2"]
    assert lake.resolve(store).snapshot_id == v2.snapshot_id


def test_staged_files_are_never_rewritten(store):
    path = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 3), "a")
    stamp = Path(path).stat().st_mtime_ns
    assert lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 9), "a") == path
    assert Path(path).stat().st_mtime_ns == stamp


def test_bad_input_gives_clear_errors(store):
    path = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 1), "a")
    lake.publish(store, {"images_rejected": [path]}, message="m", tag="v1")
    other = lake.write_staged(store, IMAGES_REJECTED, _rejects("b", 1), "b")
    with pytest.raises(ValueError, match="tag 'v1' already names snapshot"):
        lake.publish(store, {"images_rejected": [other]}, message="m", tag="v1")
    with pytest.raises(LookupError, match="no published snapshot 'v9'; known: .*v1"):
        lake.resolve(store, "v9")
    with pytest.raises(ValueError, match="unknown table 'pairs'"):
        lake.read_table(store, "pairs")
    with pytest.raises(SchemaError, match="outside the corpus"):
        lake.publish(store, {"pairs": [other]}, message="m")
    bad = _rejects("c", 1).set_column(2, "reason", __import__("pyarrow").array(["gremlins"]))
    with pytest.raises(SchemaError, match="images_rejected.reason row 0: 'gremlins'"):
        lake.write_staged(store, IMAGES_REJECTED, bad, "c")


def test_empty_lake_says_so(store):
    with pytest.raises(LookupError, match="no corpus lake at .*corpus.ducklake"):
        lake.resolve(store)
    lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 1), "a")
    with lake.session(store):  # the catalog exists, but nothing was published into it
        pass
    with pytest.raises(LookupError, match="no snapshot has been published"):
        lake.resolve(store)


def test_sqlite_catalog_serves_readers_in_other_processes_while_held(tmp_path):
    import subprocess
    import sys

    store = lake.LakeConfig(catalog=f"sqlite:{tmp_path / 'catalog.sqlite'}", data_path=f"{tmp_path / 'data'}/")
    path = lake.write_staged(store, IMAGES_REJECTED, _rejects("a", 3), "a")
    lake.publish(store, {"images_rejected": [path]}, message="first", tag="v1")
    code = (
        "import sys; from datasets_builder import lake; "
        f"store = lake.LakeConfig(catalog={store.catalog!r}, data_path={store.data_path!r}); "
        "print(lake.read_table(store, 'images_rejected', 'v1').num_rows)"
    )
    with lake.session(store):  # this process holds the catalog open
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "3"
