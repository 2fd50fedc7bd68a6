"""A real PostgreSQL server for a test: Debian's `postgresql` package, `initdb` + `pg_ctl` in a temporary folder on a
free localhost port, run as a non-root user (postgres refuses root; CI runs as root). Password authentication
(scram-sha-256), one database. `.ci/run` installs the package; without it (or without psycopg) the test skips."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

USER, PASSWORD, DATABASE = "leuk", "s3cret-Pa55word", "studies"


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def why_not() -> str | None:
    """Why no server can be started here (None when it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]', in the test extra)"
    if _binaries() is None:
        return "PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does it)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: postgres refuses to run as root"
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields its URL with the password (postgresql://leuk:PASSWORD@127.0.0.1:PORT/studies)."""
    bin_dir = _binaries()
    folder = Path(tempfile.mkdtemp(prefix="leuk-pg-"))  # not pytest's tmp: its parents are closed to other users
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    (folder / "pw").write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(folder / "pw", "postgres")
    port, data, log = _free_port(), folder / "data", folder / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run(as_user + list(command), capture_output=True, text=True, timeout=120, cwd=folder)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={folder / 'pw'}",
            "--auth=scram-sha-256", "-E", "UTF8")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
        import psycopg

        admin = psycopg.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
        admin.close()
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)
