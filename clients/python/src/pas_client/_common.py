"""What the sync and asyncio clients share: connection settings, request building, defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Union

import grpc
from pas.v1 import pool_pb2, task_pb2

from .errors import Unavailable

#: The manager's address when none is given (the original Manager-Code port).
DEFAULT_ADDRESS = "127.0.0.1:6141"
#: Environment variable read for the bearer token when `token` is not given (as `pas` does).
TOKEN_ENV = "PAS_TOKEN"
#: Diffs can be large; gRPC's default 4 MiB receive limit would cut off a big result.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: PEM data, or the path of a PEM file.
Pem = Union[bytes, str, "os.PathLike[str]"]


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Connection:
    """Where the manager is and how to talk to it.

    ``address`` is ``host:port``, optionally prefixed ``http://`` (plaintext) or ``https://`` (TLS).
    TLS is used with ``https://``, ``tls=True`` or any certificate option; ``root_certificates``
    is the pool CA (PEM bytes or a file path; None: the system roots), ``certificate_chain`` and
    ``private_key`` a client certificate. ``token`` is sent as ``authorization: Bearer TOKEN``
    with every call (None: ``$PAS_TOKEN``; empty: no token).
    """

    target: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]

    @staticmethod
    def of(
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        tls: bool | None = None,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ) -> Connection:
        """Reads the options (and the PEM files) into a Connection."""
        target = address
        scheme_tls: bool | None = None
        for scheme, secure in (("https://", True), ("http://", False)):
            if address.startswith(scheme):
                target, scheme_tls = address[len(scheme) :], secure
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together")
        has_certs = any(v is not None for v in (root_certificates, certificate_chain))
        use_tls = tls if tls is not None else (scheme_tls or has_certs)
        if not use_tls and (scheme_tls or has_certs):
            raise ValueError("tls=False contradicts an https:// address or certificate options")
        if use_tls and scheme_tls is False:
            raise ValueError("an http:// address is plaintext: use https:// for TLS")
        credentials = (
            grpc.ssl_channel_credentials(
                root_certificates=_pem(root_certificates),
                private_key=_pem(private_key),
                certificate_chain=_pem(certificate_chain),
            )
            if use_tls
            else None
        )
        if token is None:
            token = os.environ.get(TOKEN_ENV, "")
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return Connection(target=target, credentials=credentials, metadata=metadata)

    def open(self, grpc_module: Any) -> Any:
        """A channel of `grpc` or `grpc.aio` (their channel constructors have one signature)."""
        if self.credentials is None:
            return grpc_module.insecure_channel(self.target, options=self.options)
        return grpc_module.secure_channel(self.target, self.credentials, options=self.options)

    @property
    def options(self) -> list[tuple[str, int]]:
        """Channel options."""
        return [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]


class PoolBase:
    """What both pool clients hold: the connection settings and the default workspace."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        *,
        workspace: str | None = None,
        tls: bool | None = None,
        root_certificates: Pem | None = None,
        certificate_chain: Pem | None = None,
        private_key: Pem | None = None,
    ) -> None:
        self._conn = Connection.of(
            address,
            token,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
        )
        #: The default workspace of dispatched tasks (for tasks naming no workspace or repo_url).
        self.workspace = workspace

    def _dispatch_request(
        self,
        task_description: str,
        files: Sequence[str],
        run_id: str | None,
        capabilities: Sequence[str] | None,
        prefer_free: bool | None,
        options: DispatchOptions,
    ) -> pool_pb2.DispatchRequest:
        return dispatch_request(
            task_description, files, run_id, capabilities, prefer_free, self.workspace, options
        )


def strategy_value(strategy: str | int | None) -> int:
    """A Strategy enum value from its short name ("least_loaded"), full name or number."""
    if strategy is None:
        return pool_pb2.STRATEGY_UNSPECIFIED
    if isinstance(strategy, int):
        return strategy
    name = strategy.upper()
    if not name.startswith("STRATEGY_"):
        name = "STRATEGY_" + name
    try:
        return pool_pb2.Strategy.Value(name)
    except ValueError:
        known = [n.removeprefix("STRATEGY_").lower() for n in pool_pb2.Strategy.keys()]
        raise ValueError(f"unknown strategy {strategy!r}; one of {known}") from None


class DispatchOptions(TypedDict, total=False):
    """The DispatchRequest fields beyond the original five arguments (see proto/pas/v1/pool.proto).

    ``workspace`` defaults to the pool object's; ``strategy`` is a short name such as
    "least_loaded" (or a Strategy value); 0 / empty / False mean the pool's defaults.
    ``escalate``: True sends a task that fails on a free programmer for a task-level reason once
    more to a paid one (within the budget), False never; unset: the pool's ``escalation.enabled``.
    """

    workspace: str
    repo_url: str
    task_id: str
    strategy: str | int
    timeout_s: int
    dry_run: bool
    base_ref: str
    queue_timeout_s: int
    region: str
    escalate: bool


def dispatch_request(
    task_description: str,
    files: Sequence[str],
    run_id: str | None,
    capabilities: Sequence[str] | None,
    prefer_free: bool | None,
    default_workspace: str | None,
    options: DispatchOptions,
) -> pool_pb2.DispatchRequest:
    """The DispatchRequest for dispatch_task / stream_task arguments (the pool validates it).

    The pool's default workspace applies unless the call names a workspace or a repo_url.
    """
    if isinstance(files, str):
        raise TypeError("files must be a list of paths, not one string")
    unknown = set(options) - set(DispatchOptions.__annotations__)
    if unknown:
        raise TypeError(f"unknown dispatch options: {sorted(unknown)}")
    fields = {k: v for k, v in options.items() if v is not None}
    fields["strategy"] = strategy_value(options.get("strategy"))
    if not options.get("workspace") and not options.get("repo_url") and default_workspace:
        fields["workspace"] = default_workspace
    request = pool_pb2.DispatchRequest(
        task_description=task_description,
        files=list(files),
        run_id=run_id or "",
        capabilities=list(capabilities or ()),
        **fields,  # type: ignore[arg-type]
    )
    if prefer_free is not None:
        request.prefer_free = prefer_free
    return request


def list_request(
    run_id: str | None, states: Sequence[str | int] | None, page_size: int, page_token: str
) -> pool_pb2.ListTasksRequest:
    """A ListTasksRequest; states by short name ("running") or TaskState value."""
    values = []
    for state in states or ():
        if isinstance(state, str):
            name = state.upper()
            state = task_pb2.TaskState.Value(
                name if name.startswith("TASK_STATE_") else "TASK_STATE_" + name
            )
        values.append(state)
    return pool_pb2.ListTasksRequest(
        run_id=run_id or "",
        states=values,  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )


def is_heartbeat(event: task_pb2.TaskEvent) -> bool:
    """WatchTask's liveness events (seq 0) are not part of a task's stream."""
    return event.WhichOneof("kind") == "heartbeat"


#: Broken-connection codes after which a followed task is re-attached with WatchTask.
REATTACH_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
#: Re-attach attempts in a row (without an event in between) before the error is raised.
DEFAULT_REATTACH = 5
#: The first wait before re-attaching; doubled per failed attempt, at most MAX_REATTACH_DELAY_S.
FIRST_REATTACH_DELAY_S = 0.2
MAX_REATTACH_DELAY_S = 5.0
#: How long one re-attach attempt waits for the channel to connect again.
REATTACH_CONNECT_S = 30.0


class Follower:
    """One task's stream followed across broken connections (the sync and asyncio loops share it).

    An accepted task outlives its stream, so when the connection breaks (UNAVAILABLE, INTERNAL)
    the client follows the task again with WatchTask from the last seq it saw, after a short
    doubling wait; every event is passed on once, in order (a replayed seq is dropped).
    Dispatch streams are re-attached only once the pool accepted the task (an event arrived).
    """

    def __init__(
        self, task_id: str, after_seq: int, reattach: int, heartbeats: bool, accepted: bool
    ) -> None:
        self.task_id = task_id
        self.last_seq = after_seq
        self._accepted = accepted
        self._left = self._reattach = reattach
        self._heartbeats = heartbeats

    def admit(self, event: task_pb2.TaskEvent) -> bool:
        """Whether to pass `event` on: not a seq already passed, not an unwanted heartbeat."""
        if is_heartbeat(event):
            return self._heartbeats
        if event.seq <= self.last_seq:
            return False
        self.task_id = event.task_id or self.task_id
        self.last_seq = event.seq
        self._accepted = bool(self.task_id)
        self._left = self._reattach
        return True

    def retry_after(self, err: grpc.RpcError) -> float | None:
        """Seconds to wait before re-attaching after `err`, or None: raise it."""
        if not self._accepted or self._left <= 0 or err.code() not in REATTACH_CODES:
            return None
        self._left -= 1
        attempt = self._reattach - self._left
        return float(min(FIRST_REATTACH_DELAY_S * 2 ** (attempt - 1), MAX_REATTACH_DELAY_S))

    def unreachable(self) -> Unavailable:
        """The error when the manager stays unreachable for REATTACH_CONNECT_S."""
        return Unavailable(
            grpc.StatusCode.UNAVAILABLE,
            f"the manager stayed unreachable for {REATTACH_CONNECT_S:g} s; task {self.task_id} "
            f"runs on: follow it later with watch_task({self.task_id!r}, {self.last_seq})",
        )

    def watch_request(self) -> task_pb2.WatchTaskRequest:
        """The WatchTask request that continues after the last event passed on."""
        return task_pb2.WatchTaskRequest(task_id=self.task_id, after_seq=self.last_seq)
