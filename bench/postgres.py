"""A throw-away PostgreSQL cluster for the bench's scale-out row: ``initdb``
and ``pg_ctl`` from Debian's postgresql package, on a free loopback port,
run as the ``postgres`` user when we are root (PostgreSQL refuses root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .servers import free_port

__all__ = ["Postgres"]


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(f"{name} not found: install the Debian package 'postgresql'")
    return found


class Postgres:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.datadir = base / "pgdata"
        self._dbs = 0

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--") + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> "Postgres":
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            for folder in [self.base, *list(self.base.parents)[:-1]]:
                folder.chmod(folder.stat().st_mode | 0o011)
        self._run(_tool("initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        # Durable like the SQLite rows: fsync stays on.
        self._run(_tool("pg_ctl"), "-D", str(self.datadir), "-w", "-l",
                  str(self.base / "pg.log"), "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                  "-c max_connections=200", "start")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(_tool("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass

    def new_database(self) -> str:
        import psycopg
        self._dbs += 1
        name = f"bench_{self._dbs}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def count_instances(self, url: str) -> int:
        import psycopg
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM instances").fetchone()
        return int(row[0]) if row else 0
