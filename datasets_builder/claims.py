"""Cross-shard duplicate detection: the first shard to claim an image's bytes (its sha256) owns it.

Claims persist across runs and sources, so a killed build, a second source or another machine sees the same owners.
One machine keeps them in SQLite in the build's work dir; a team whose catalog is PostgreSQL keeps them in that
database (table `npedit_image_claims`), where concurrent claims from several machines are settled by its primary key.
Claims are never dropped: an image whose owning shard is later left out of a snapshot (`publish --replace` from a build
without that source) stays a duplicate; build successive sources from one configuration to keep them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from schemas.errors import UserError

Owners = dict[str, tuple[str, str]]  # image_id -> (owning shard, its source)


class ClaimsUnavailable(UserError, ConnectionError):
    """The PostgreSQL database holding the claims cannot be reached."""


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
    """Claims in the team's PostgreSQL database (psycopg): one statement inserts, the primary key settles races."""

    TABLE = "public.npedit_image_claims"
    CREATE_LOCK_KEY = 0x6E70656469740001  # an advisory-lock key of npedit's own ("npedit" + 1)

    def __init__(self, dsn: str):
        self.dsn = dsn

    def claim(self, shard: str, image_ids: list[str], sources: list[str]) -> Owners:
        if not image_ids:
            return {}
        import psycopg

        try:
            return self._claim(psycopg, shard, image_ids, sources)
        except psycopg.OperationalError as error:
            raise ClaimsUnavailable(f"cannot reach the claims database ({self.dsn}): {error}") from error

    def _claim(self, psycopg, shard: str, image_ids: list[str], sources: list[str]) -> Owners:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            with conn.transaction():  # IF NOT EXISTS alone races: creators take turns under a transaction lock
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.CREATE_LOCK_KEY])
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} "
                             "(image_id TEXT PRIMARY KEY, shard TEXT NOT NULL, source TEXT NOT NULL)")
            # Rows go in in image_id order: two shards holding the same images then lock them in the same order
            # (in any other order two simultaneous claims can deadlock).
            conn.execute(f"INSERT INTO {self.TABLE} (image_id, shard, source) "
                         "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(image_id, shard, source) "
                         "ORDER BY image_id ON CONFLICT (image_id) DO NOTHING",
                         [image_ids, [shard] * len(image_ids), sources])
            rows = conn.execute(f"SELECT image_id, shard, source FROM {self.TABLE} "
                                "WHERE image_id = ANY(%s) AND shard <> %s", [image_ids, shard]).fetchall()
        return {image_id: (owner, source) for image_id, owner, source in rows}
