"""`sslmode` as libpq means it, against a real Postgres with TLS (test CA) and one without."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text

from genjobs.db import create_database, pg8000_url
from genjobs.errors import ConfigurationError, DatabaseUnavailable
from genjobs.settings import load_settings
from tests.conftest import server_url
from tests.integration.throwaway_postgres import ThrowawayPostgres, postgres_bin_dir

_TLS_IN_USE = text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


def _cluster(tls: bool) -> ThrowawayPostgres:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = "no Postgres binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or pgserver"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the sslmode tests: {message}")
        pytest.skip(f"sslmode tests NOT run: {message}")
    return ThrowawayPostgres(bin_dir, tls=tls).start()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[ThrowawayPostgres]:
    """A cluster of this module's own serving TLS with a certificate for `localhost` only."""
    cluster = _cluster(tls=True)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def plain_server_url() -> Iterator[str]:
    """A TCP Postgres without TLS: the test server if it is one, else a cluster of our own."""
    url = server_url()
    if urlsplit(url).hostname and _server_setting(url, "ssl") == "off":
        yield url
        return
    cluster = _cluster(tls=False)
    try:
        yield cluster.url()
    finally:
        cluster.stop()


def _server_setting(url: str, name: str) -> str:
    database = create_database(load_settings("cli", {"DATABASE_URL": url, "DB_POOL_SIZE": "1"}))
    try:
        with database.transaction() as conn:
            setting = conn.execute(text("SELECT current_setting(:name)"), {"name": name})
            value: str = setting.scalar_one()
            return value
    finally:
        database.dispose()


def _with_sslmode(url: str, **query: str) -> str:
    parts = urlsplit(url)
    extra = "&".join(f"{key}={value}" for key, value in query.items())
    return url + ("&" if parts.query else "?") + extra


def tls_in_use(url: str) -> bool:
    """Whether the project's Database reaches `url` over TLS (asked of the server itself)."""
    database = create_database(load_settings("cli", {"DATABASE_URL": url, "DB_POOL_SIZE": "1"}))
    try:
        with database.transaction() as conn:
            in_use: bool = conn.execute(_TLS_IN_USE).scalar_one()
            return in_use
    finally:
        database.dispose()


def refusal(url: str) -> str:
    """Why the project's Database cannot connect to `url`: the whole cause chain."""
    with pytest.raises(DatabaseUnavailable) as caught:
        tls_in_use(url)
    reasons = []
    error: BaseException | None = caught.value
    while error is not None:
        reasons.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(reasons)


def test_disable_never_negotiates_tls(tls_server: ThrowawayPostgres, plain_server_url: str) -> None:
    assert tls_in_use(tls_server.url(sslmode="disable")) is False
    assert tls_in_use(_with_sslmode(plain_server_url, sslmode="disable")) is False


def test_prefer_uses_tls_when_offered_and_plain_when_refused(
    tls_server: ThrowawayPostgres, plain_server_url: str
) -> None:
    assert tls_in_use(tls_server.url(sslmode="prefer")) is True
    assert tls_in_use(_with_sslmode(plain_server_url, sslmode="prefer")) is False


def test_require_encrypts_without_verifying(tls_server: ThrowawayPostgres) -> None:
    # Self-signed CA unknown to the client, host 127.0.0.1 not in the certificate: still TLS.
    assert tls_in_use(tls_server.url(sslmode="require")) is True


def test_require_never_falls_back_to_plain_even_on_loopback(plain_server_url: str) -> None:
    assert "Server refuses SSL" in refusal(_with_sslmode(plain_server_url, sslmode="require"))


def test_verify_ca_checks_the_chain_but_not_the_host_name(tls_server: ThrowawayPostgres) -> None:
    certificates = tls_server.certificates
    assert certificates is not None
    # 127.0.0.1 is not a name in the certificate: verify-ca does not care.
    assert tls_in_use(tls_server.url(sslmode="verify-ca", sslrootcert=str(certificates.ca)))
    unrelated = tls_server.url(sslmode="verify-ca", sslrootcert=str(certificates.other_ca))
    assert "certificate verify failed" in refusal(unrelated)
    # Without sslrootcert the system's CAs apply, and they do not know the test CA.
    assert "certificate verify failed" in refusal(tls_server.url(sslmode="verify-ca"))


def test_verify_full_also_checks_the_host_name(tls_server: ThrowawayPostgres) -> None:
    certificates = tls_server.certificates
    assert certificates is not None
    root = str(certificates.ca)
    assert tls_in_use(tls_server.url("localhost", sslmode="verify-full", sslrootcert=root))
    wrong_name = refusal(tls_server.url("127.0.0.1", sslmode="verify-full", sslrootcert=root))
    assert "IP address mismatch" in wrong_name, wrong_name


def test_require_with_a_root_certificate_verifies_as_libpq_does(
    tls_server: ThrowawayPostgres,
) -> None:
    certificates = tls_server.certificates
    assert certificates is not None
    unrelated = tls_server.url(sslmode="require", sslrootcert=str(certificates.other_ca))
    assert "certificate verify failed" in refusal(unrelated)


def test_a_unix_socket_never_carries_tls(tls_server: ThrowawayPostgres) -> None:
    assert tls_in_use(tls_server.socket_url(sslmode="require")) is False


def test_unset_sslmode_is_plain_on_loopback_and_prefer_elsewhere(
    tls_server: ThrowawayPostgres,
) -> None:
    assert tls_in_use(tls_server.url()) is False
    _, remote = pg8000_url("postgresql://u@db.example.com/postgres")
    assert remote == {"ssl_context": None}  # pg8000's prefer: TLS if offered, else plain


def test_an_unknown_sslmode_or_unreadable_root_certificate_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="sslmode must be one of"):
        pg8000_url("postgresql://u@db.example.com/postgres?sslmode=allow")
    with pytest.raises(ConfigurationError, match="sslrootcert"):
        pg8000_url("postgresql://u@h/postgres?sslmode=verify-ca&sslrootcert=/nonexistent.crt")
