"""Duplicate claims across shards: the first shard to claim an image owns it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from datasets_builder import lake
from datasets_builder.claims import PostgresClaims, SqliteClaims


def _ids(start: int, stop: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, stop)]


@pytest.fixture(params=["sqlite", "postgres"])
def claims_spec(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "state.sqlite")
    return "postgres", request.getfixturevalue("postgres_dsn")


def _claims(spec):
    kind, where = spec
    from pathlib import Path

    return SqliteClaims(Path(where)) if kind == "sqlite" else PostgresClaims(where, lake.extension_dir())


def test_first_claim_owns_and_a_rerun_keeps_its_images(claims_spec):
    claims = _claims(claims_spec)
    a, b, c = _ids(0, 3)
    assert claims.claim("src-00000", [a, b], ["u/a", "u/b"]) == {}
    assert claims.claim("src-00001", [b, c], ["v/b", "v/c"]) == {b: ("src-00000", "u/b")}
    assert claims.claim("src-00000", [a, b], ["u/a", "u/b"]) == {}  # a resumed shard still owns its images
    assert claims.claim("src-00001", [b, c], ["v/b", "v/c"]) == {b: ("src-00000", "u/b")}
    assert claims.claim("src-00002", [], []) == {}


def test_concurrent_claims_from_two_processes_give_every_image_one_owner(claims_spec):
    code = (
        "import hashlib, json, sys\n"
        "from pathlib import Path\n"
        "from datasets_builder import lake\n"
        "from datasets_builder.claims import PostgresClaims, SqliteClaims\n"
        "kind, where, shard, start, stop = sys.argv[1:]\n"
        "claims = SqliteClaims(Path(where)) if kind == 'sqlite' else PostgresClaims(where, lake.extension_dir())\n"
        "ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(int(start), int(stop))]\n"
        "owners = {}\n"
        "for chunk in range(0, len(ids), 100):\n"
        "    part = ids[chunk:chunk + 100]\n"
        "    owners.update(claims.claim(shard, part, ['u'] * len(part)))\n"
        "print(json.dumps(sorted(owners)))\n"
    )
    runs = {shard: subprocess.Popen([sys.executable, "-c", code, *claims_spec, shard, str(start), str(start + 1000)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for shard, start in (("src-00000", 0), ("src-00001", 500))}
    lost = {}
    for shard, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        lost[shard] = set(json.loads(out))
    overlap = set(_ids(500, 1000))
    assert lost["src-00000"] | lost["src-00001"] == overlap  # each shared image is lost by exactly one shard
    assert not lost["src-00000"] & lost["src-00001"]


def test_postgres_claims_refuse_unexpected_names(postgres_dsn):
    with pytest.raises(ValueError, match="unexpected characters"):
        PostgresClaims(postgres_dsn, lake.extension_dir()).claim("x'; DROP TABLE t; --", _ids(0, 1), ["u"])
