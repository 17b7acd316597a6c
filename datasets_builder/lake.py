"""The snapshot store: DuckLake (a DuckDB/SQLite/PostgreSQL catalog over Parquet files) with immutable snapshots.

Partition runs write their own Parquet files (`write_staged`); `publish` is the single writer of the catalog and
registers every new file of every table in ONE transaction, i.e. one DuckLake snapshot carrying the message, the tag
and the npedit metadata (row counts, content hash, config). A published snapshot never changes: files are never
rewritten or compacted, so `AT (VERSION => n)` returns the same rows forever. This module is also the trainer's only
reader of the corpus (`read_table`, `resolve`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from datasets_builder import storage
from schemas import ALL_TABLES, SCHEMA_VERSION, SNAPSHOTS, SchemaError, SnapshotRow, TableSpec
from schemas.errors import ConfigError, NotFound, Refused, UserError

LAKE = "lake"
CORPUS_TABLES = tuple(name for name in ALL_TABLES if name != "snapshots")
# Small row groups where readers fetch single rows (the trainer reads one image at a time): a row group is the unit
# of a Parquet read, so 64 rows of ~200 KB images keep a random read near 13 MB.
ROW_GROUP_ROWS = {"images": 64}
PUBLISH_LOCK_KEY = int(hashlib.sha256(b"npedit publish").hexdigest()[:15], 16)  # a PostgreSQL advisory-lock key


class LakeUnavailable(UserError, ConnectionError):
    """The catalog or the data path cannot be reached (server down, bad credentials, missing extension)."""


@dataclass(frozen=True)
class LakeConfig:
    """Where the catalog and the data files live.

    `catalog` is a DuckLake metadata location: a file path (`corpus.ducklake`, one writing process), `sqlite:path`, or
    `postgres:dbname=... host=...` for a team. `data_path` is a folder (absolute) or an object-store URL
    (`s3://bucket/prefix/`, configured from the environment: see `storage`).
    """

    catalog: str
    data_path: str

    def __post_init__(self):
        # One spelling of the data path: the catalog compares file names with what it stored at creation.
        object.__setattr__(self, "data_path", storage.normalise(self.data_path).rstrip("/") + "/")
        if not self.is_shared_catalog:
            object.__setattr__(self, "catalog", storage.normalise(self.catalog))
        elif self.catalog.startswith("sqlite:"):
            object.__setattr__(self, "catalog", "sqlite:" + storage.normalise(self.catalog.removeprefix("sqlite:")))

    @classmethod
    def local(cls, root: Path) -> LakeConfig:
        root = Path(root).resolve()
        return cls(catalog=str(root / "corpus.ducklake"), data_path=str(root / "data") + "/")

    @classmethod
    def of(cls, lake_dir: str | Path, catalog: str | None = None, data_path: str | None = None) -> LakeConfig:
        """The lake every entry point addresses the same way: `catalog` and `data_path` default to `lake_dir`."""
        local = cls.local(Path(lake_dir))
        return cls(catalog=catalog or local.catalog, data_path=data_path or local.data_path)

    @property
    def is_shared_catalog(self) -> bool:
        """A SQLite or PostgreSQL catalog admits several processes; a DuckDB-file catalog only one."""
        return self.catalog.startswith(("postgres:", "sqlite:"))

    @property
    def relocatable(self) -> bool:
        """A catalog file with its data in `data/` beside it: the folder may be moved or copied, and is opened at the
        data path where it now is, not the one the catalog recorded at creation."""
        return not self.is_shared_catalog and self.data_path == str(Path(self.catalog).parent / "data") + "/"

    @property
    def postgres_dsn(self) -> str | None:
        """The libpq connection string of a PostgreSQL catalog (None for a file or SQLite catalog)."""
        return self.catalog.removeprefix("postgres:") if self.catalog.startswith("postgres:") else None

    def attach_sql(self, read_only: bool) -> str:
        options = ([f"DATA_PATH {_literal(self.data_path)}"] + (["READ_ONLY"] if read_only else [])
                   + (["OVERRIDE_DATA_PATH TRUE"] if self.relocatable else []))
        return f"ATTACH {_literal('ducklake:' + self.catalog)} AS {LAKE} ({', '.join(options)})"

    @contextmanager
    def publish_lock(self) -> Iterator[None]:
        """Held by one publisher at a time across processes and machines (a publish reads, then registers files)."""
        if self.postgres_dsn is not None:
            import psycopg

            # A session lock: closing the connection releases it (so a session pooler in transaction mode, such as
            # PgBouncer's, must not sit between npedit and the catalog).
            try:
                conn = psycopg.connect(self.postgres_dsn, autocommit=True)
            except psycopg.OperationalError as error:
                raise LakeUnavailable(f"cannot open the lake (catalog {self.catalog}): {error}") from error
            with conn:
                conn.execute("SELECT pg_advisory_lock(%s)", [PUBLISH_LOCK_KEY])
                yield
            return
        lock_path = Path(f"{self.catalog.removeprefix('sqlite:')}.publish-lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class PublishedFile:
    table: str
    path: str


def extension_dir() -> str:
    import duckdb_ext

    return str(Path(duckdb_ext.__file__).parent / "extensions")


def setup_statements(config: LakeConfig, *, read_only: bool) -> list[str]:
    """The SQL that opens the lake from any DuckDB client: offline extension wheels, the catalog attached as `lake`."""
    remote = ["LOAD httpfs", "LOAD aws", storage.duckdb_s3_secret_sql()] if storage.is_remote(config.data_path) else []
    return [
        f"SET extension_directory = '{extension_dir()}'",
        "SET autoinstall_known_extensions = false",
        "LOAD ducklake",
        *remote,
        config.attach_sql(read_only),
    ]


def _corpus_table(table: str) -> str:
    if table not in CORPUS_TABLES:
        raise ConfigError(f"unknown table {table!r}; corpus tables: {', '.join(CORPUS_TABLES)}")
    return table


def connect(config: LakeConfig, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake attached as `lake`, extensions loaded from the offline wheels."""
    if not config.is_shared_catalog:
        if read_only and not Path(config.catalog).exists():
            raise NotFound(f"no corpus lake at {config.catalog}: build one with `npedit corpus build`")
        Path(config.catalog).parent.mkdir(parents=True, exist_ok=True)
    if not read_only:
        storage.make_dirs(config.data_path)
    con = duckdb.connect()
    try:
        for statement in setup_statements(config, read_only=read_only):
            con.execute(statement)
    except duckdb.Error as error:
        con.close()
        raise LakeUnavailable(f"cannot open the lake (catalog {config.catalog}, data {config.data_path}): "
                              f"{str(error).strip()}") from error
    return con


@contextmanager
def session(config: LakeConfig, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Hold the catalog only for the block (a DuckDB-file catalog admits one process at a time)."""
    con = connect(config, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def staged_path(config: LakeConfig, table: str, name: str) -> str:
    """Where a partition run writes its file for `table`: inside DATA_PATH, so the catalog stores it relative."""
    return storage.join(config.data_path, "main", table, "staged", f"{name}.parquet")


def write_staged(config: LakeConfig, spec: TableSpec, table: pa.Table, name: str) -> str:
    """Validate and write one immutable Parquet file (atomically); an existing file is kept, never rewritten.

    Its sha256 goes in a `.sha256` sidecar written first, so a data file never exists without its digest.
    """
    path = staged_path(config, spec.name, name)
    if storage.exists(path):
        return path
    table = spec.validate(table)
    data = storage.parquet_bytes(table, ROW_GROUP_ROWS.get(spec.name))
    storage.write_bytes(f"{path}.sha256", hashlib.sha256(data).hexdigest().encode())
    storage.write_bytes(path, data)
    return path


def _file_digest(path: str) -> str:
    try:
        return storage.read_text(f"{path}.sha256").strip()
    except FileNotFoundError:
        return storage.sha256(path)


def _ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables; add the nullable columns a later schema version brought to an existing table (files
    registered before read them as NULL; snapshots published before keep their own columns)."""
    for name in CORPUS_TABLES:
        schema = ALL_TABLES[name].schema
        con.register("_empty", schema.empty_table())
        con.execute(f"CREATE TABLE IF NOT EXISTS {LAKE}.{name} AS SELECT * FROM _empty LIMIT 0")
        have = {row[0] for row in con.execute(f"DESCRIBE {LAKE}.{name}").fetchall()}
        for column_name, column_type, *_ in con.execute("DESCRIBE _empty").fetchall():
            if column_name not in have:
                if not schema.field(column_name).nullable:
                    raise Refused(f"{name} lacks the required column {column_name} of schema {SCHEMA_VERSION}: "
                                  "publish into a new lake_dir")
                con.execute(f"ALTER TABLE {LAKE}.{name} ADD COLUMN {column_name} {column_type}")
        con.unregister("_empty")


def registered_files(con: duckdb.DuckDBPyConnection, table: str, version: int | None = None) -> list[str]:
    """Data files of `table` at `version` (latest if None)."""
    args = f"'{LAKE}', '{table}'" + (f", snapshot_version => {int(version)}" if version is not None else "")
    return sorted(r[0] for r in con.execute(f"SELECT data_file FROM ducklake_list_files({args})").fetchall())


def _published(con: duckdb.DuckDBPyConnection) -> list[SnapshotRow]:
    rows = con.execute(
        f"SELECT snapshot_id, snapshot_time, commit_message, commit_extra_info FROM {LAKE}.snapshots() "
        "ORDER BY snapshot_id"
    ).fetchall()
    out = []
    for snapshot_id, created_at, message, extra in rows:
        info = json.loads(extra) if extra else {}
        if "npedit" not in info:
            continue
        meta = info["npedit"]
        out.append(
            SnapshotRow(
                snapshot_id=snapshot_id, created_at=created_at.astimezone(dt.UTC), parent=meta["parent"],
                row_counts=meta["row_counts"], content_hash=meta["content_hash"], config=meta["config"],
                schema_version=meta["schema_version"], tag=meta.get("tag"), message=message,
            )
        )
    return out


def published_snapshots(config: LakeConfig) -> pa.Table:
    """Every published snapshot as a `snapshots` table (the contract in `schemas`)."""
    with session(config, read_only=True) as con:
        return SNAPSHOTS.to_arrow(_published(con))


def _content_hash(files_by_table: Mapping[str, list[str]]) -> str:
    """sha256 over (table, file name, file sha256) of every data file, in a fixed order."""
    ordered = [(table, path) for table in CORPUS_TABLES for path in sorted(files_by_table.get(table, []))]
    with ThreadPoolExecutor(max_workers=16) as pool:  # object storage answers many small reads at once
        digests = list(pool.map(_file_digest, [path for _, path in ordered]))
    digest = hashlib.sha256()
    for (table, path), file_digest in zip(ordered, digests):
        digest.update(f"{table}\t{storage.name(path)}\t{file_digest}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PublishOutcome:
    """What a publish did: `snapshot` is the new snapshot, or (`created` False) the one already holding the content."""

    snapshot: SnapshotRow
    created: bool


def publish(
    config: LakeConfig,
    files: Mapping[str, list[str | Path]] | Callable[[], Mapping[str, list[str | Path]]],
    *,
    message: str,
    tag: str | None = None,
    builder_config: Mapping | None = None,
    replace: bool = False,
) -> SnapshotRow:
    """`publish_outcome`'s snapshot: the new one, or the one that already holds exactly this content."""
    return publish_outcome(config, files, message=message, tag=tag, builder_config=builder_config,
                           replace=replace).snapshot


def publish_outcome(
    config: LakeConfig,
    files: Mapping[str, list[str | Path]] | Callable[[], Mapping[str, list[str | Path]]],
    *,
    message: str,
    tag: str | None = None,
    builder_config: Mapping | None = None,
    replace: bool = False,
) -> PublishOutcome:
    """Register every not-yet-registered file in one commit = one snapshot.

    Files hold rows or are skipped (DuckLake registers no empty file). A table given here must be exactly the union
    of its registered files and the new ones: a registered file that this publish would not include means the lake
    holds outputs of another configuration, which is an error rather than a silent mix, unless `replace` is set:
    then the same commit retires those files, so the new snapshot holds exactly the given files while every earlier
    snapshot keeps its own (retired files stay on disk, untouched, for time travel). Nothing new returns the latest
    snapshot, unless a new tag was asked for (an error: a tag names new content). A tag that already names a snapshot
    is idempotent: when that snapshot holds exactly what this publish would (same content hash), it is returned and
    nothing is committed (a rerun of a finished build); other content under a taken tag is refused. `files` may be a
    function, called once the publish lock is held, so that what it lists includes what another machine published
    just before.
    """
    with config.publish_lock(), session(config) as con:
        files = files() if callable(files) else files
        unknown = set(files) - set(CORPUS_TABLES)
        if unknown:
            raise SchemaError("snapshots", "row_counts", "names tables outside the corpus", value=sorted(unknown))
        _ensure_tables(con)
        published = _published(con)
        final: dict[str, list[str]] = {}  # what the new snapshot would hold
        own: dict[str, list[str]] = {}  # what this publish holds, without files of other configurations
        new: list[tuple[str, str]] = []
        stale: dict[str, list[str]] = {}
        for table in CORPUS_TABLES:
            have = set(registered_files(con, table))
            if table not in files:
                final[table] = own[table] = sorted(have)
                continue
            given = {storage.normalise(p) for p in files[table]}
            wanted = (given & have) | {p for p in given - have if storage.num_rows(p) > 0}  # no empty files
            if have - wanted:
                stale[table] = sorted(have - wanted)
            own[table] = sorted(wanted)
            final[table] = sorted(wanted if replace else have | wanted)
            new += [(table, path) for path in sorted(wanted - have)]
        tagged = next((s for s in published if tag is not None and s.tag == tag), None)
        if tagged is not None:
            content_hash = _content_hash(own)
            if content_hash == tagged.content_hash:
                return PublishOutcome(tagged, created=False)
            raise Refused(
                f"tag {tag!r} already names snapshot {tagged.snapshot_id}, which holds other content (content hash "
                f"{tagged.content_hash[:12]}, this build's {content_hash[:12]}); publish under a new tag"
            )
        if stale and not replace:
            table, paths = next(iter(stale.items()))
            raise Refused(
                f"{config.catalog}: {table} already holds {len(paths)} file(s) this build would not publish "
                f"(e.g. {storage.name(paths[0])}): outputs of another model, prompt, sampling or image limits. "
                "Publish with replace (`npedit corpus build --replace`) to make this configuration's outputs "
                "the new snapshot's rows, or publish into a new lake_dir."
            )
        retired = stale if replace else {}
        if not new and not retired:
            if published and tag is None:
                return PublishOutcome(published[-1], created=False)
            latest = f"snapshot {published[-1].snapshot_id} already holds every file" if published else "no rows"
            raise Refused(f"nothing new to publish ({latest}); a tag names new content, so {tag!r} was not set")
        con.execute("BEGIN")
        try:
            for table, paths in retired.items():
                # Deleting every row of a file by its name ends the file in the catalog (no delete file is written).
                con.execute(f"DELETE FROM {LAKE}.{table} WHERE filename IN (SELECT unnest(?::VARCHAR[]))", [paths])
            for table, path in new:
                # a file staged under an earlier schema version lacks the (nullable) columns added since: NULL there
                con.execute(f"CALL ducklake_add_data_files('{LAKE}', '{table}', ?, allow_missing => true)", [path])
            counts = {t: con.execute(f"SELECT count(*) FROM {LAKE}.{t}").fetchone()[0] for t in CORPUS_TABLES}
            meta = {
                "parent": published[-1].snapshot_id if published else None,
                "row_counts": counts,
                "content_hash": _content_hash(final),
                "config": json.dumps(dict(builder_config or {}), sort_keys=True, default=str),
                "schema_version": SCHEMA_VERSION,
                "tag": tag,
                "retired_files": {t: len(paths) for t, paths in retired.items()},
            }
            con.execute(
                f"CALL {LAKE}.set_commit_message('npedit', ?, extra_info => ?)",
                [message, json.dumps({"npedit": meta})],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return PublishOutcome(_published(con)[-1], created=True)


def verify_content_hash(config: LakeConfig, snapshot: int | str | None = None) -> bool:
    """Recompute a snapshot's content hash from its files (proves its bytes are unchanged)."""
    row = resolve(config, snapshot)
    files = {table: table_files(config, table, row.snapshot_id) for table in CORPUS_TABLES}
    return _content_hash(files) == row.content_hash


def resolve(config: LakeConfig, snapshot: int | str | None = None) -> SnapshotRow:
    """A published snapshot by id, by tag, or the latest when None."""
    with session(config, read_only=True) as con:
        published = _published(con)
    if not published:
        raise NotFound(f"no snapshot has been published in {config.catalog}")
    if snapshot is None:
        return published[-1]
    for row in published:
        if row.tag == snapshot or str(row.snapshot_id) == str(snapshot):
            return row
    known = ", ".join(f"{s.snapshot_id}" + (f" ({s.tag})" if s.tag else "") for s in published)
    raise NotFound(f"no published snapshot {snapshot!r}; known: {known}")


def table_files(config: LakeConfig, table: str, snapshot: int | str | None = None) -> list[str]:
    """The Parquet files holding `table` at a published snapshot (for readers that stream or seek)."""
    _corpus_table(table)
    version = resolve(config, snapshot).snapshot_id
    with session(config, read_only=True) as con:
        deletes = con.execute(
            f"SELECT count(*) FROM ducklake_list_files('{LAKE}', '{table}', snapshot_version => {version}) "
            "WHERE delete_file IS NOT NULL"
        ).fetchone()[0]
        if deletes:
            raise Refused(f"{table} at snapshot {version} has delete files; read it with read_table instead")
        return registered_files(con, table, version)


def read_data_file(path: str, columns: list[str] | None = None) -> pa.Table:
    """One file that `table_files` named, local or in object storage."""
    return storage.read_parquet(path, columns)


def open_data_file(path: str) -> pq.ParquetFile:
    """One file that `table_files` named, opened for reads of single row groups."""
    return storage.parquet_file(path)


def table_columns(config: LakeConfig, table: str, snapshot: int | str | None = None) -> list[str]:
    """The column names `table` had at a published snapshot (an earlier schema version may lack later columns)."""
    _corpus_table(table)
    version = resolve(config, snapshot).snapshot_id
    with session(config, read_only=True) as con:
        query = f"DESCRIBE SELECT * FROM {LAKE}.{table} AT (VERSION => {version})"
        return [row[0] for row in con.execute(query).fetchall()]


def read_table(config: LakeConfig, table: str, snapshot: int | str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Rows of `table` exactly as they were at a published snapshot."""
    _corpus_table(table)
    version = resolve(config, snapshot).snapshot_id
    select = ", ".join(columns) if columns else "*"
    with session(config, read_only=True) as con:
        return con.execute(f"SELECT {select} FROM {LAKE}.{table} AT (VERSION => {version})").fetch_arrow_table()
