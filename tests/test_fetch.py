"""img2dataset for real, against a loopback HTTP server serving good, odd and broken images."""

from __future__ import annotations

import time

import polars as pl
import pytest

from datasets_builder.fetch import FetchConfig, fetch_images, folder_url_list, read_fetched_shard, read_url_list
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
