"""Secret values that never show themselves, from env or Secret Manager."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Secret:
    """A secret string; `repr`/`str` are masked, `reveal()` gives the value."""

    __slots__ = ("_loader", "_lock", "_source", "_value")

    def __init__(
        self, value: str | None = None, *, loader: Callable[[], str] | None = None, source: str = ""
    ) -> None:
        if (value is None) == (loader is None):
            raise ValueError("give exactly one of value or loader")
        self._value = value
        self._loader = loader
        self._source = source
        self._lock = threading.Lock()

    def reveal(self) -> str:
        """The secret value, loaded on first use when it comes from Secret Manager."""
        if self._value is None:
            with self._lock:
                if self._value is None:
                    assert self._loader is not None
                    self._value = self._loader()
        return self._value

    def __repr__(self) -> str:
        where = f", from={self._source!r}" if self._source else ""
        return f"Secret('**********'{where})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self.reveal()

    def __hash__(self) -> int:
        return hash(self.reveal())


def secret_manager_loader(resource_name: str) -> Callable[[], str]:
    """A loader reading `projects/P/secrets/S[/versions/V]` with google-cloud-secret-manager."""
    name = resource_name if "/versions/" in resource_name else f"{resource_name}/versions/latest"

    def load() -> str:
        # Imported here: only instances that lack a mounted secret pay for the client.
        from google.cloud import secretmanager

        client = secretmanager.SecretManagerServiceClient()
        response = client.access_secret_version(request={"name": name})
        return str(response.payload.data.decode("utf-8")).strip()

    return load
