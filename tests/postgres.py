"""A throwaway PostgreSQL cluster for tests: Debian's binaries, initdb into a temporary folder.

    cluster = PostgresCluster.create()      # initdb + start, on a loopback ephemeral port
    url = cluster.new_database()            # postgresql://facade@127.0.0.1:PORT/test_1
    cluster.stop(); cluster.start()         # an outage and the recovery, same data and port
    cluster.destroy()

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` user of Debian's
package (``runuser``), in a folder that user owns. ``find_binaries`` says why the tests skip when
the binaries are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import bind_loopback

__all__ = ["PostgresCluster", "find_binaries"]

_USER = "facade"  # the cluster's superuser; trust authentication on loopback and the socket


def find_binaries() -> tuple[Path | None, str]:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, or None and why not."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    for folder in reversed(candidates):
        if os.access(os.path.join(folder, "initdb"), os.X_OK) and os.access(os.path.join(folder, "pg_ctl"), os.X_OK):
            return Path(folder), ""
    return None, ("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
                  "(apt-get install postgresql; .ci/run does it in CI)")


@dataclass
class PostgresCluster:
    bin: Path
    root: Path
    port: int
    run_as: str | None  # the user the server runs as when the tests run as root
    databases: int = field(default=0)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "sockets"

    @classmethod
    def create(cls) -> PostgresCluster:
        folder, why = find_binaries()
        if folder is None:
            raise RuntimeError(why)
        run_as = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="facade-pg-"))
        (root / "sockets").mkdir()
        if run_as is not None:
            shutil.chown(root, run_as)
            shutil.chown(root / "sockets", run_as)
        with bind_loopback() as probe:  # a free port now; the server binds it a moment later
            port = probe.getsockname()[1]
        cluster = cls(folder, root, port, run_as)
        cluster._run("initdb", "-D", str(cluster.data), "-U", _USER, "-A", "trust", "-E", "UTF8", "--no-sync")
        cluster.start()
        return cluster

    def _run(self, program: str, *args: str) -> None:
        argv = [str(self.bin / program), *args]
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr[-2000:]}\n{log[-2000:]}")

    def start(self) -> None:
        # fsync=off: the tests survive a server crash (stop -m immediate), not a machine crash. Commits
        # stay synchronous: a committed transition must survive the server's crash.
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                  "-t", "30", "start")

    def stop(self) -> None:
        """Stop at once (``immediate``: every session is cut, like a crash of the server)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self.databases += 1
        name = f"test_{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
