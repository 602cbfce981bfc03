"""PgBouncer in transaction mode on a free loopback port, in front of a PostgreSQL server.

Used by the benchmark (`bench/run.py --pooler pgbouncer`) and by the template's tests
(`tests/test_scale.py`), which run the rendered service through it with DB_POOLER=pgbouncer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from benchkit.shell import BenchError, free_port


@contextmanager
def pgbouncer(server_url: str, pool_size: int = 40) -> Iterator[str]:
    """Start PgBouncer in front of the PostgreSQL server at `server_url`; yield the URL of
    the same server through it (no database name: append one). Stopped on exit."""
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if binary is None:
        raise BenchError(
            "pgbouncer is not installed; install it with: apt-get install -y pgbouncer"
        )
    server = urllib.parse.urlsplit(server_url)
    user = urllib.parse.unquote(server.username or "postgres")
    password = urllib.parse.unquote(server.password or "")
    port = free_port()
    # A folder of its own, readable by the unprivileged user PgBouncer runs as.
    work = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    work.chmod(0o755)
    (work / "userlist.txt").write_text(f'"{user}" ""\n')
    login = f" password={password}" if password else ""
    (work / "pgbouncer.ini").write_text(
        f"""\
[databases]
* = host={server.hostname or "127.0.0.1"} port={server.port or 5432} user={user}{login}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {work / "userlist.txt"}
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool_size}
"""
    )
    for path in work.iterdir():
        path.chmod(0o644)
    command = [binary, str(work / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: as nobody instead
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    log_path = work / "pgbouncer.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"PgBouncer did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        credentials = urllib.parse.quote(user, safe="")
        yield f"postgresql://{credentials}@127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
