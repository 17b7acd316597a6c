"""Cross-shard duplicate detection: the first shard to claim an image's bytes (its sha256) owns it.

Claims persist across runs and sources, so a killed build, a second source or another machine sees the same owners.
One machine keeps them in SQLite in the build's work dir; a team whose catalog is PostgreSQL keeps them in that
database (table `npedit_image_claims`), where concurrent claims from several machines are settled by its primary key.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Protocol

import duckdb

Owners = dict[str, tuple[str, str]]  # image_id -> (owning shard, its source)
_SAFE = re.compile(r"^[0-9A-Za-z_.-]+$")  # image ids are hex digests; shard names are <fingerprint>-<number>


class ImageClaims(Protocol):
    def claim(self, shard: str, image_ids: list[str], sources: list[str]) -> Owners:
        """Claim `image_ids` for `shard`; returns the ones another shard owns, with that shard and its source."""
        ...


class SqliteClaims:
    """Claims in a SQLite file (one machine; concurrent processes serialise on its write lock)."""

    def __init__(self, path: Path):
        self.path = path

    def claim(self, shard: str, image_ids: list[str], sources: list[str]) -> Owners:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS image_claims (image_id TEXT PRIMARY KEY, shard TEXT, source TEXT)")
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO image_claims VALUES (?, ?, ?)",
                           zip(image_ids, [shard] * len(image_ids), sources))
            db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (image_id TEXT PRIMARY KEY)")
            db.execute("DELETE FROM wanted")
            db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", ((i,) for i in image_ids))
            rows = db.execute("SELECT c.image_id, c.shard, c.source FROM image_claims c JOIN wanted USING (image_id) "
                              "WHERE c.shard != ?", [shard]).fetchall()
            db.execute("COMMIT")
        finally:
            db.close()
        return {image_id: (owner, source) for image_id, owner, source in rows}


class PostgresClaims:
    """Claims in the team's PostgreSQL database, through DuckDB's postgres extension."""

    TABLE = "npedit_image_claims"

    def __init__(self, dsn: str, extension_dir: str):
        self.dsn, self.extension_dir = dsn, extension_dir

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        con.execute(f"SET extension_directory = '{self.extension_dir}'")
        con.execute("SET autoinstall_known_extensions = false")
        dsn = self.dsn.replace("'", "''")
        con.execute(f"ATTACH '{dsn}' AS claims_db (TYPE postgres)")
        create = (f"CREATE TABLE IF NOT EXISTS {self.TABLE} "
                  "(image_id TEXT PRIMARY KEY, shard TEXT NOT NULL, source TEXT NOT NULL)")
        try:
            con.execute("CALL postgres_execute('claims_db', ?)", [create])
        except duckdb.Error:  # two machines creating it at once: one wins, the other finds it made
            con.execute("CALL postgres_execute('claims_db', ?)", [create])
        return con

    def claim(self, shard: str, image_ids: list[str], sources: list[str]) -> Owners:
        unsafe = [v for v in [shard, *image_ids] if not _SAFE.match(v)]
        if unsafe:
            raise ValueError(f"claims: unexpected characters in {unsafe[0]!r}")
        if not image_ids:
            return {}
        import pyarrow as pa

        con = self._connect()
        try:
            con.register("new_claims", pa.table({"image_id": image_ids, "shard": [shard] * len(image_ids),
                                                 "source": sources}))
            con.execute(f"INSERT INTO claims_db.{self.TABLE} SELECT image_id, shard, source FROM new_claims "
                        "ON CONFLICT DO NOTHING")
            ids = ",".join(f"'{i}'" for i in image_ids)
            query = (f"SELECT image_id, shard, source FROM {self.TABLE} "
                     f"WHERE image_id IN ({ids}) AND shard <> '{shard}'")
            rows = con.execute("SELECT * FROM postgres_query('claims_db', ?)", [query]).fetchall()
        finally:
            con.close()
        return {image_id: (owner, source) for image_id, owner, source in rows}
