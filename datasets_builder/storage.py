"""Files of a lake's data path, on a local disk or in S3-compatible object storage, through pyarrow filesystems.

A file is named by a string: an absolute local path, or an `s3://bucket/key` URL. Object storage is configured the way
AWS tools are, from the environment: credentials by the SDK's default chain (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, profiles, instance roles), `AWS_REGION`, and `AWS_ENDPOINT_URL` for S3-compatible stores
(MinIO, Ceph, R2, GCS interoperability). DuckDB reads the same settings (`duckdb_s3_secret_sql`).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.errors import ConfigError

REMOTE_SCHEMES = ("s3",)


def is_remote(uri: str | Path) -> bool:
    return "://" in str(uri)


def _check_scheme(uri: str) -> str:
    scheme = urlparse(uri).scheme
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(f"{uri}: object storage must be one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}")
    return scheme


def s3_settings() -> tuple[str | None, str | None, str]:
    """(region, endpoint host, scheme) from the environment; no endpoint means AWS itself."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return region, None, "https"
    parsed = urlparse(endpoint)
    return region, parsed.netloc or parsed.path, parsed.scheme or "https"


@lru_cache(maxsize=4)
def _s3(region: str | None, host: str | None, scheme: str) -> pafs.S3FileSystem:
    options: dict = {"region": region} if region else {}
    if host:
        options.update(endpoint_override=host, scheme=scheme)
    return pafs.S3FileSystem(**options)


def filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `uri` and the path within it."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), normalise(uri)
    _check_scheme(str(uri))
    parsed = urlparse(str(uri))
    return _s3(*s3_settings()), f"{parsed.netloc}{parsed.path}"


def normalise(uri: str | Path) -> str:
    """One spelling per file: absolute local paths, URLs as given (the catalog compares names)."""
    uri = str(uri)
    return uri if is_remote(uri) else str(Path(uri).resolve())


def join(base: str, *parts: str) -> str:
    """`base` (a folder path or URL) with path parts appended."""
    if is_remote(base):
        return base.rstrip("/") + "/" + "/".join(parts)
    return str(Path(base).joinpath(*parts))


def name(uri: str) -> str:
    return PurePosixPath(urlparse(uri).path if is_remote(uri) else uri).name


def parent(uri: str) -> str:
    """The folder (or URL prefix) holding `uri`."""
    return uri.rstrip("/").rsplit("/", 1)[0]


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_files(folder: str, *, recursive: bool = False) -> list[str]:
    """Files under a folder or URL prefix (sorted; none if it does not exist)."""
    fs, path = filesystem(folder)
    selector = pafs.FileSelector(path.rstrip("/"), recursive=recursive, allow_not_found=True)
    found = [info.path for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]
    if is_remote(folder):
        scheme = urlparse(folder).scheme
        return sorted(f"{scheme}://{p}" for p in found)
    return sorted(found)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def make_dirs(uri: str) -> None:
    """Create a local folder (object stores have no folders to create)."""
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def sha256(uri: str) -> str:
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file at once: an object appears complete or not at all; a local file via rename."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    Path(tmp).write_bytes(data)
    os.replace(tmp, path)


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """`table` as the bytes of one zstd Parquet file."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_size)
    return buffer.getvalue().to_pybytes()


def parquet_file(uri: str) -> pq.ParquetFile:
    """An open Parquet file (row groups are read on demand: one ranged GET each in object storage)."""
    fs, path = filesystem(uri)
    return pq.ParquetFile(path, filesystem=fs)  # close() closes the file it opened


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, columns=columns, filesystem=fs)


def num_rows(uri: str) -> int:
    return parquet_file(uri).metadata.num_rows


def duckdb_s3_secret_sql() -> str:
    """The DuckDB secret that reads S3 with the same settings as `filesystem` (credentials stay in the environment)."""
    options = ["TYPE s3", "PROVIDER credential_chain", "VALIDATION 'none'"]  # missing credentials fail on access
    region, host, scheme = s3_settings()
    if region:
        options.append(f"REGION '{region}'")
    if host:
        options += [f"ENDPOINT '{host}'", "URL_STYLE 'path'", f"USE_SSL {'false' if scheme == 'http' else 'true'}"]
    return f"CREATE OR REPLACE SECRET npedit_s3 ({', '.join(options)})"
