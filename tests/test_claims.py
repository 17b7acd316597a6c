"""Duplicate claims across shards: the first shard to claim an image owns it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datasets_builder.claims import PostgresClaims, SqliteClaims

RACE = """
import hashlib, json, sys, time
from pathlib import Path
from datasets_builder.claims import PostgresClaims, SqliteClaims
kind, where, shard, start_at, rounds = sys.argv[1:]
claims = SqliteClaims(Path(where)) if kind == "sqlite" else PostgresClaims(where)
lost, N = [], 3000
for r in range(int(rounds)):
    ids = [hashlib.sha256(f"{r}-{i}".encode()).hexdigest() for i in range(N)]
    if shard.endswith("1"):
        ids.reverse()  # the same images listed in another order (a deadlock if rows were locked in list order)
    while time.time() < float(start_at) + r * 1.0:  # both processes claim the same ids at the same moment
        time.sleep(0.001)
    lost.append(sorted(claims.claim(shard, ids, [f"{shard}/{i}" for i in range(N)])))
print(json.dumps(lost))
"""


def _ids(start: int, stop: int) -> list[str]:
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, stop)]


@pytest.fixture(params=["sqlite", "postgres"])
def claims_spec(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "state.sqlite")
    return "postgres", request.getfixturevalue("postgres_dsn")


def _claims(spec):
    kind, where = spec
    return SqliteClaims(Path(where)) if kind == "sqlite" else PostgresClaims(where)


def test_first_claim_owns_and_a_rerun_keeps_its_images(claims_spec):
    claims = _claims(claims_spec)
    a, b, c = _ids(0, 3)
    assert claims.claim("src-00000", [a, b], ["u/a", "u/it's b"]) == {}
    assert claims.claim("src-00001", [b, c], ["v/b", "v/c"]) == {b: ("src-00000", "u/it's b")}
    assert claims.claim("src-00000", [a, b], ["u/a", "u/it's b"]) == {}  # a resumed shard still owns its images
    assert claims.claim("src-00001", [b, c], ["v/b", "v/c"]) == {b: ("src-00000", "u/it's b")}
    assert claims.claim("src-00002", [], []) == {}


def test_simultaneous_claims_of_the_same_images_give_each_one_owner(claims_spec):
    start_at, rounds = time.time() + 4, 4
    runs = [subprocess.Popen([sys.executable, "-c", RACE, *claims_spec, shard, str(start_at), str(rounds)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for shard in ("src-00000", "src-00001")]
    lost = []
    for process in runs:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        lost.append(json.loads(out))
    for r in range(rounds):
        ids = {hashlib.sha256(f"{r}-{i}".encode()).hexdigest() for i in range(3000)}
        first, second = set(lost[0][r]), set(lost[1][r])
        assert first | second == ids and not first & second, f"round {r}: an image with no owner or two"
