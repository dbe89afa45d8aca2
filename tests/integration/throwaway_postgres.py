"""A Postgres cluster of the test's own (initdb + pg_ctl), optionally serving TLS with a test CA."""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.supervisor import free_port


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


@dataclass(frozen=True)
class ClusterCertificates:
    """A CA, a server certificate it signed (for `localhost` only), and an unrelated CA."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _self_signed_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def write_certificates(folder: Path) -> ClusterCertificates:
    """A test CA and a server certificate naming `localhost` (deliberately not 127.0.0.1)."""
    ca_key, ca_cert = _self_signed_ca("genjobs test CA")
    _, other_cert = _self_signed_ca("genjobs unrelated CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = ClusterCertificates(
        ca=folder / "ca.crt",
        other_ca=folder / "other-ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.other_ca.write_bytes(other_cert.public_bytes(pem))
    paths.server_cert.write_bytes(server_cert.public_bytes(pem))
    paths.server_key.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths.server_key.chmod(0o600)  # Postgres refuses a key others can read
    return paths


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
