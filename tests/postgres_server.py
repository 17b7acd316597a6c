"""A private PostgreSQL server on loopback for the tests of a team's catalog (Debian's postgresql binaries).

`.ci/run` installs the binaries and sets NPEDIT_REQUIRE_POSTGRES=1, so in CI a missing server is a failure; on a
machine without PostgreSQL the tests that need one are skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _bindir() -> Path | None:
    found = shutil.which("pg_config")
    if found:
        bindir = Path(subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running cluster: `new_database()` gives each test a database (a catalog) of its own."""

    createdb: list[str]
    port: int
    created: int = 0

    def new_database(self) -> str:
        """Create an empty database; returns its libpq connection string."""
        self.created += 1
        name = f"npedit{self.created}"
        subprocess.run([*self.createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True, timeout=60)
        return f"dbname={name} host=127.0.0.1 port={self.port} user=postgres"


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a throwaway cluster on a free loopback port; stopped and deleted on exit."""
    bindir = _bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="npedit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the `postgres` system user
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "cluster"

    def run(*command: str) -> None:
        out = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {out.stdout[-1000:]}{out.stderr[-1000:]}")

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start")
    try:
        yield PostgresServer(createdb=[*as_user, str(bindir / "createdb")], port=port)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
