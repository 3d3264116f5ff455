"""Typed exceptions for the pool's gRPC errors.

Every failed call raises a :class:`PoolError` subclass chosen by the gRPC status code, carrying the
code and the server's message (which names the offending field or limit). The pool refuses work it
cannot take now with ``RESOURCE_EXHAUSTED`` and a ``google.rpc.RetryInfo`` detail:
:class:`ResourceExhausted` exposes it as :attr:`ResourceExhausted.retry_delay`.

A task that *runs* and fails is not an exception: ``dispatch_task`` returns its result dict with
``status`` "failed" (as the original did); only calls the pool refuses or that break raise.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailing metadata key carrying a google.rpc.Status with details (gRPC's rich error model).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class PoolError(Exception):
    """A call to the pool failed with gRPC status :attr:`code` and :attr:`message`."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: tuple[Any, ...] = (),
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        #: The gRPC status code, e.g. ``grpc.StatusCode.INVALID_ARGUMENT``.
        self.code = code
        #: The server's message (it names the field or limit concerned).
        self.message = message
        #: The ``google.rpc.Status`` details sent with the error (``google.protobuf.Any``), if any.
        self.details = details


class InvalidArgument(PoolError):
    """The request is malformed; the message names the field."""


class NotFound(PoolError):
    """No such task (or not one the caller may see)."""


class AlreadyExists(PoolError):
    """The task id is already used by a different request."""


class PermissionDenied(PoolError):
    """The token's role does not allow the call (e.g. a ``read`` token dispatching)."""


class Unauthenticated(PoolError):
    """No token, or a token the pool does not know."""


class ResourceExhausted(PoolError):
    """A limit refused the call now (queue full, per-caller limits, daily budget).

    :attr:`retry_delay` is the pool's ``RetryInfo`` advice, or None when it sent none.
    """

    @property
    def retry_delay(self) -> datetime.timedelta | None:
        """How long to wait before retrying, from google.rpc.RetryInfo (None if absent)."""
        return _retry_delay(self.details)


class FailedPrecondition(PoolError):
    """No configured programmer can ever serve the request (capabilities, workspace)."""


class OutOfRange(PoolError):
    """WatchTask asked for events after the task's latest one; the message says which."""


class Unavailable(PoolError):
    """The pool could not be reached (or went away mid-call)."""


class DeadlineExceeded(PoolError):
    """The call's own deadline (``timeout=``) passed."""


class Cancelled(PoolError):
    """The call was cancelled (by this client, or the server)."""


class IncompleteStream(PoolError):
    """A task stream ended without its result event (the pool always sends one; see watch_task)."""


_BY_CODE: dict[grpc.StatusCode, type[PoolError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(err: grpc.RpcError) -> PoolError:
    """The typed exception for a grpc (sync) or grpc.aio error, with its status details."""
    code: grpc.StatusCode = err.code()
    message: str = err.details() or ""
    details = _status_details(err.trailing_metadata())
    return _BY_CODE.get(code, PoolError)(code, message, details)


def _status_details(metadata: Iterable[tuple[str, Any]] | None) -> tuple[Any, ...]:
    """The google.protobuf.Any details of the rich status in trailing metadata, if any."""
    for key, value in metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return tuple(status_pb2.Status.FromString(value).details)
            except Exception:  # a malformed detail must not hide the error itself
                return ()
    return ()


def _retry_delay(details: tuple[Any, ...]) -> datetime.timedelta | None:
    """The delay of the first google.rpc.RetryInfo among `details`."""
    for detail in details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta()
    return None
