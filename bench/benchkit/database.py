"""The database a benchmark run creates for itself and drops at the end."""

from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from benchkit.shell import BenchError, run_cmd

DATABASES = ("postgresql", "mysql", "sqlite")


@dataclass
class BenchDatabase:
    kind: str
    name: str
    url: str
    server_url: str

    @classmethod
    def create(cls, kind: str, server_url: str, work_dir: Path) -> BenchDatabase:
        """Create `bench_<random>` on the server (SQLite: a file in `work_dir`)."""
        name = f"bench_{secrets.token_hex(4)}"
        if kind == "sqlite":
            return cls(kind, name, f"sqlite:///{work_dir / (name + '.db')}", server_url="")
        parts = urllib.parse.urlsplit(server_url)
        url = urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
        database = cls(kind, name, url, server_url)
        if kind == "postgresql":
            database.execute(f'CREATE DATABASE "{name}"')
        else:
            database.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        return database

    def drop(self) -> None:
        if self.kind == "postgresql":
            self.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        elif self.kind == "mysql":
            self.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        # The SQLite file goes with the temporary folder.

    def execute(self, statement: str) -> str:
        """Run one statement on the server's maintenance database with its command-line client."""
        parts = urllib.parse.urlsplit(self.server_url)
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        env = dict(os.environ)
        if self.kind == "postgresql":
            if password:
                env["PGPASSWORD"] = password
            cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", statement]
            cmd += ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432)]
            cmd += ["-U", user or "postgres"]
        elif self.kind == "mysql":
            if password:
                env["MYSQL_PWD"] = password
            cmd = ["mysql", "--protocol=TCP", "-e", statement]
            cmd += ["-h", parts.hostname or "127.0.0.1", "-P", str(parts.port or 3306)]
            cmd += ["-u", user or "root"]
        else:
            raise BenchError(f"no server to run SQL on for {self.kind}")
        return run_cmd(cmd, env=env, what=f"{cmd[0]}: {statement}", timeout=120)

    def owns_process(self, comm: str, cmdline: str) -> bool | None:
        """Whether a database server process works for this benchmark.

        True for this database's PostgreSQL backends and the server's shared background
        processes (and for MariaDB, whose one process cannot be split by client); False for
        another client's backend; None for a process that is not this database server's.
        """
        if self.kind == "postgresql" and comm == "postgres":
            if f" {self.name} " in cmdline:
                return True
            # Other clients' backends name their address ("127.0.0.1(port)" or "[local]").
            return not ("(" in cmdline or "[local]" in cmdline)
        if self.kind == "mysql" and comm in ("mariadbd", "mysqld"):
            return True
        return None
