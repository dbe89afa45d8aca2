"""A Postgres cluster of the test's own (initdb + pg_ctl), optionally serving TLS with a test CA."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from devstack.supervisor import free_port
from tests.integration.certificates import ClusterCertificates, write_certificates


def postgres_bin_dir() -> Path | None:
    """The newest system Postgres binaries, else pgserver's bundled ones, else None."""
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    candidates = [*reversed(system)]
    try:
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    for path in candidates:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    return None


class ThrowawayPostgres:
    """initdb, start on a free loopback port, stop and delete: a cluster for one test module."""

    def __init__(self, bin_dir: Path, *, tls: bool) -> None:
        self.bin_dir = bin_dir
        self.tls = tls
        self.root = Path(tempfile.mkdtemp(prefix="genjobs-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.certificates: ClusterCertificates | None = None
        # initdb refuses root: run the server as the system's postgres user when we are root.
        self._user = _server_user()

    def url(self, host: str = "127.0.0.1", **query: str) -> str:
        """A libpq URL to this cluster's postgres database."""
        params = "&".join(f"{key}={value}" for key, value in query.items())
        base = f"postgresql://postgres@{host}:{self.port}/postgres"
        return f"{base}?{params}" if params else base

    def socket_url(self, **query: str) -> str:
        """The same, over the cluster's Unix socket."""
        params = "".join(f"&{key}={value}" for key, value in query.items())
        return f"postgresql://postgres@:{self.port}/postgres?host={self.root}{params}"

    def start(self) -> ThrowawayPostgres:
        """Create the cluster and start it; raises with the server log if it cannot start."""
        options = [
            f"-p {self.port}",
            f"-k {self.root}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c shared_buffers=16MB",
            "-c max_connections=20",
        ]
        if self.tls:
            self.certificates = write_certificates(self.root)
            options += [
                "-c ssl=on",
                f"-c ssl_cert_file={self.certificates.server_cert}",
                f"-c ssl_key_file={self.certificates.server_key}",
            ]
        if self._user is not None:
            shutil.chown(self.root, self._user, self._user)
            for path in self.root.iterdir():
                shutil.chown(path, self._user, self._user)
        log = self.root / "server.log"
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "30",
                "-o", " ".join(options), "start",
            )  # fmt: skip
        except subprocess.CalledProcessError as error:
            detail = (error.stderr or b"").decode(errors="replace")
            detail += log.read_text(errors="replace") if log.exists() else ""
            self.stop()
            raise RuntimeError(f"throwaway Postgres did not start:\n{detail}") from error
        return self

    def stop(self) -> None:
        """Stop at once (nothing here is worth a checkpoint) and delete everything."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / program), *args],
            check=True,
            capture_output=True,
            timeout=60,
            user=self._user,
            env={**os.environ, "LC_ALL": "C"},
        )


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root, and no 'postgres' or 'pgserver' user to run Postgres as")
