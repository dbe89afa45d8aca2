"""Errors the emulator raises, each carrying the gRPC status the real service answers with."""

from __future__ import annotations

from typing import ClassVar


class EmulatorError(Exception):
    """Base of every error a client can see; `status` names a `grpc.StatusCode` member."""

    status: ClassVar[str] = "UNKNOWN"


class NotFound(EmulatorError):
    """The topic or subscription does not exist."""

    status = "NOT_FOUND"


class AlreadyExists(EmulatorError):
    """A resource with this name already exists."""

    status = "ALREADY_EXISTS"


class InvalidArgument(EmulatorError):
    """The request is malformed or out of range."""

    status = "INVALID_ARGUMENT"


class OutOfRange(EmulatorError):
    """A number outside its documented bounds, where Pub/Sub answers OUT_OF_RANGE."""

    status = "OUT_OF_RANGE"


class Unimplemented(EmulatorError):
    """A valid Pub/Sub feature this emulator does not reproduce."""

    status = "UNIMPLEMENTED"


class InjectedFault(EmulatorError):
    """A failure injected on purpose (`--publish-failure-rate`), with a configurable status."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.fault_status = status


class TopologyError(ValueError):
    """The topology file or the endpoint map is invalid; raised before anything starts."""
