"""A Postgres of the test's own that can be stopped and started (and reached through PgBouncer)."""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from devstack.supervisor import ROOT, free_port

PGBOUNCER = ROOT / "devstack" / "pgbouncer.sh"


class RestartablePostgres:
    """The embedded server in a folder of its own, restartable with its own pg_ctl."""

    def __init__(self, data_dir: Path) -> None:
        from pgserver import get_server  # type: ignore[attr-defined]
        from pgserver._commands import pg_ctl

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = get_server(data_dir, cleanup_mode="delete")
        self._pg_ctl = pg_ctl
        self.data_dir = data_dir
        self.url: str = self._server.get_uri()
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        self.system_user: str | None = self._server.system_user

    def running(self) -> bool:
        """True while a postmaster serves this data folder."""
        try:
            self._pg_ctl(["status"], pgdata=self.data_dir, user=self.system_user)
        except subprocess.CalledProcessError:
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real restart."""
        if not self.running():
            # Seen only with other test sessions on the same machine: say so, don't hide it.
            print(f"[fault harness] the Postgres in {self.data_dir} was already down", flush=True)
            return
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user)

    def start(self) -> None:
        """Start again with the same socket and log."""
        self._pg_ctl(
            [
                *("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}"),
                *("-l", str(self.data_dir / "log"), "start"),
            ],
            pgdata=self.data_dir,
            user=self.system_user,
            timeout=30,
        )

    def cleanup(self) -> None:
        """Stop the server (pgserver only knows the first postmaster) and delete its data."""
        if self.running():
            self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user)
        self._server.cleanup()


@contextmanager
def pgbouncer_in_front(postgres: RestartablePostgres) -> Iterator[str]:
    """PgBouncer (transaction mode, 3 server connections) on the server's socket; its URL."""
    port = free_port()
    run_as = postgres.system_user or ""
    args = [str(PGBOUNCER), "start", str(port), postgres.socket_dir, "5432"]
    subprocess.run([*args, *([run_as] if run_as else [])], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(PGBOUNCER), "stop", str(port)], check=False)
