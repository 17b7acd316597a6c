"""img2dataset for real, against a loopback HTTP server serving good, odd and broken images."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from datasets_builder.fetch import (FetchConfig, fetch_images, folder_url_list, read_fetched_shard, read_url_list,
                                    run_until_shards_finish)
from datasets_builder.images import normalise_fetched
from datasets_builder.loopback import QuietHandler, serve_directory
from odd_images import odd_files

SLOW_SECONDS = 4


class SlowHandler(QuietHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(SLOW_SECONDS)
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("www")
    for name, (data, _) in odd_files().items():
        (folder / name).write_bytes(data)
    (folder / "slow.jpg").write_bytes(odd_files()["cmyk.jpg"][0])
    with serve_directory(folder, SlowHandler) as base:
        yield folder, base


def test_every_url_ends_as_an_image_or_a_reject_with_its_reason(served, tmp_path):
    folder, base = served
    expected = {f"{base}/{n}": outcome for n, (_, outcome) in odd_files().items()}
    expected[f"{base}/missing.jpg"] = "http_error"
    expected[f"{base}/slow.jpg"] = "http_error"
    urls = pl.DataFrame({"url": sorted(expected), "caption": [f"c{i}" for i in range(len(expected))]})
    shards = fetch_images(urls, tmp_path / "out", FetchConfig(shard_size=5, timeout_s=1, threads=4))
    assert len(shards) == 3
    outcomes, image_count = {}, 0
    for path in shards:
        images, rejected = normalise_fetched(read_fetched_shard(path), path.stem)
        image_count += images.num_rows
        outcomes.update({s: "ok" for s in images.column("source").to_pylist()})
        outcomes.update(dict(zip(rejected.column("source").to_pylist(), rejected.column("reason").to_pylist())))
        details = dict(zip(rejected.column("source").to_pylist(), rejected.column("detail").to_pylist()))
        if f"{base}/missing.jpg" in details:
            assert "404" in details[f"{base}/missing.jpg"]
        if f"{base}/slow.jpg" in details:
            assert "timed out" in details[f"{base}/slow.jpg"].lower()
    assert set(outcomes) == set(expected)
    # Within a shard the duplicate is rejected; across shards the corpus claim table does it (tests/test_corpus.py).
    for url, outcome in expected.items():
        want = {"ok", "duplicate"} if outcome == "duplicate" or url.endswith("/good.jpg") else {outcome}
        assert outcomes[url] in want, url
    assert image_count == sum(1 for o in outcomes.values() if o == "ok")


def finish_shards_then_hang(settings):
    """A download whose shutdown never ends, as img2dataset's did under load: shards done, a worker stuck."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(settings["pid_file"]).write_text(str(worker.pid))
    for shard in range(2):
        Path(settings["out"], f"{shard:05d}_stats.json").write_text("{}")
    time.sleep(600)


def fail_before_any_shard(settings):
    raise SystemExit(3)


def test_a_fetch_whose_shutdown_hangs_returns_once_its_shards_are_finished(tmp_path):
    settings = {"out": str(tmp_path), "pid_file": str(tmp_path / "worker.pid")}
    start = time.monotonic()
    run_until_shards_finish(finish_shards_then_hang, settings, tmp_path, range(2), grace_s=1.0)
    assert time.monotonic() - start < 30
    worker = int((tmp_path / "worker.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker), "the hung worker outlived the fetch"


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie awaiting its parent does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_fetch_that_fails_before_finishing_raises(tmp_path):
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_until_shards_finish(fail_before_any_shard, {}, tmp_path, range(1), grace_s=1.0)


def test_url_lists_in_three_formats_and_clear_errors(tmp_path):
    frame = pl.DataFrame({"link": ["http://a/1.jpg", "http://a/2.jpg", "http://a/1.jpg", ""], "text": ["x", "y", "x", "z"]})
    frame.write_parquet(tmp_path / "u.parquet")
    frame.write_csv(tmp_path / "u.csv")
    frame.write_ndjson(tmp_path / "u.jsonl")
    for name in ("u.parquet", "u.csv", "u.jsonl"):
        urls = read_url_list(tmp_path / name, url_col="link", caption_col="text")
        assert urls.to_dicts() == [{"url": "http://a/1.jpg", "caption": "x"}, {"url": "http://a/2.jpg", "caption": "y"}]
    with pytest.raises(ValueError, match="no column 'url'"):
        read_url_list(tmp_path / "u.csv")
    (tmp_path / "u.txt").write_text("http://a/1.jpg")
    with pytest.raises(ValueError, match="must be .parquet, .csv or .jsonl"):
        read_url_list(tmp_path / "u.txt")
    with pytest.raises(ValueError, match="no image files"):
        folder_url_list(tmp_path)


def test_every_entry_of_a_folder_is_an_image_or_an_unsupported_reject(tmp_path):
    from datasets_builder.fetch import list_folder, write_listed_shard

    folder = tmp_path.resolve() / "photos"  # the listing names entries under the folder's resolved path
    (folder / "sub").mkdir(parents=True)
    (folder / ".thumbnails").mkdir()
    good = odd_files()["good.jpg"][0]
    (folder / "a.jpg").write_bytes(good)
    (folder / "sub" / "b.PNG").write_bytes(odd_files()["transparent.png"][0])
    (folder / "link.jpg").symlink_to(folder / "a.jpg")  # a link to a file is read: its own source
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder / "notes.txt").write_text("shot on a phone")
    (folder / "README").write_text("no extension")
    (folder / ".DS_Store").write_bytes(b"\0Bud1")
    (folder / "._a.jpg").write_bytes(b"\0\5\26\7")  # a macOS resource fork: hidden, never read though named .jpg
    (folder / ".thumbnails" / "t.jpg").write_bytes(good)
    (folder / "broken").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "elsewhere").mkdir()
    (folder / "linked").symlink_to(tmp_path / "elsewhere")  # a link to a folder: one entry, not followed
    entries = [p for p in folder.rglob("*") if not (p.is_dir() and not p.is_symlink())]

    listing = list_folder(folder)
    images = listing.images["url"].to_list()
    reasons = dict(zip(listing.unsupported["url"].to_list(), listing.unsupported["error_message"].to_list()))
    assert len(images) + len(reasons) == len(entries) == 11
    assert sorted(images + list(reasons)) == sorted(p.as_uri() for p in entries)
    assert images == [(folder / n).as_uri() for n in ("a.jpg", "link.jpg", "sub/b.PNG")]
    assert "extension '.svg'" in reasons[(folder / "logo.svg").as_uri()]
    assert "extension '.txt'" in reasons[(folder / "notes.txt").as_uri()]
    assert "no file extension" in reasons[(folder / "README").as_uri()]
    assert "hidden file" in reasons[(folder / ".DS_Store").as_uri()]
    assert "hidden file" in reasons[(folder / "._a.jpg").as_uri()]
    assert "hidden folder '.thumbnails'" in reasons[(folder / ".thumbnails" / "t.jpg").as_uri()]
    assert "not a regular file" in reasons[(folder / "broken").as_uri()]
    assert "not followed" in reasons[(folder / "linked").as_uri()]

    shard = write_listed_shard(listing.unsupported, str(tmp_path / "fetched" / "src-unsupported"))
    images_table, rejected = normalise_fetched(read_fetched_shard(shard), "src-unsupported-00000")
    assert images_table.num_rows == 0 and rejected.num_rows == len(reasons)
    assert set(rejected.column("reason").to_pylist()) == {"unsupported"}
    assert dict(zip(rejected.column("source").to_pylist(), rejected.column("detail").to_pylist())) == reasons
    with pytest.raises(ValueError, match="no image files .*; 2 other entries"):
        list_folder(tmp_path / "fetched")
