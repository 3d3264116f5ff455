"""The blocking client: :class:`ProgrammerPool` over a ``grpc`` channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from pas.v1 import pool_pb2, pool_pb2_grpc, task_pb2
from typing_extensions import Unpack

from ._common import (
    DEFAULT_ADDRESS,
    DEFAULT_REATTACH,
    REATTACH_CONNECT_S,
    DispatchOptions,
    Follower,
    PoolBase,
    list_request,
)
from .errors import from_rpc_error
from .results import ResultCollector, TaskResultDict


class ProgrammerPool(PoolBase):
    """A connection to the pool's manager (``pas.v1.ProgrammerPool``), blocking calls.

    Same methods as :class:`pas_client.AsyncProgrammerPool` without ``await``. Every failed call
    raises a :class:`pas_client.PoolError` subclass. Use as a context manager, or :meth:`close`.
    See :class:`pas_client._common.Connection` for the address, token and TLS options;
    ``workspace`` is the default repository (relative to the pool's workspace root) for tasks
    that name neither a workspace nor a repo_url.
    """

    _channel: grpc.Channel | None = None
    _stub_cache: pool_pb2_grpc.ProgrammerPoolStub | None = None

    @property
    def _stub(self) -> pool_pb2_grpc.ProgrammerPoolStub:
        """The stub, its channel opened on first use."""
        if self._stub_cache is None:
            self._channel = self._conn.open(grpc)
            self._stub_cache = pool_pb2_grpc.ProgrammerPoolStub(self._channel)
        return self._stub_cache

    def __enter__(self) -> ProgrammerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (calls in progress are cancelled); a later call opens a new one."""
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub_cache = None

    def dispatch_task(
        self,
        task_description: str,
        files: Sequence[str],
        run_id: str | None = None,
        capabilities: Sequence[str] | None = None,
        prefer_free: bool | None = True,
        *,
        on_event: Callable[[task_pb2.TaskEvent], None] | None = None,
        timeout: float | None = None,
        reattach: int = DEFAULT_REATTACH,
        **options: Unpack[DispatchOptions],
    ) -> TaskResultDict:
        """Runs a task to its end and returns the result dict (see :class:`TaskResultDict`).

        The original's arguments first; ``prefer_free=None`` leaves the choice to the pool's
        configuration. ``options`` are the other DispatchRequest fields (:class:`DispatchOptions`).
        ``on_event`` sees every event as it arrives. ``timeout`` is the call's deadline in
        seconds (the task itself keeps running if it passes: follow it with watch_task).
        A task that ran and failed is returned (``status`` "failed"), not raised.
        """
        collector = ResultCollector()
        for event in self.stream_task(
            task_description,
            files,
            run_id,
            capabilities,
            prefer_free,
            timeout=timeout,
            reattach=reattach,
            **options,
        ):
            collector.feed(event)
            if on_event is not None:
                on_event(event)
        return collector.finished()

    def stream_task(
        self,
        task_description: str,
        files: Sequence[str],
        run_id: str | None = None,
        capabilities: Sequence[str] | None = None,
        prefer_free: bool | None = True,
        *,
        timeout: float | None = None,
        reattach: int = DEFAULT_REATTACH,
        **options: Unpack[DispatchOptions],
    ) -> Iterator[task_pb2.TaskEvent]:
        """Dispatches a task and yields its ``pas.v1.TaskEvent`` messages as they arrive.

        Events carry ``seq`` 1, 2, … and exactly one ``kind`` (queued, assigned, output,
        failover, rerouted, escalated, result); the last one carries ``result``. Leaving the loop early
        closes the stream but not the task: it runs on, and ``watch_task(task_id, last_seq)``
        picks it up again (choose a ``task_id`` to be able to). If the connection breaks once
        the task was accepted, the stream re-attaches itself with WatchTask (up to ``reattach``
        attempts in a row, waits doubling from 0.2 s; 0: raise at once) and goes on without a
        gap or a repeated event.
        """
        request = self._dispatch_request(
            task_description, files, run_id, capabilities, prefer_free, options
        )
        call = self._stub.Dispatch(request, timeout=timeout, metadata=self._conn.metadata)
        return self._follow(
            call,
            Follower(options.get("task_id", ""), 0, reattach, heartbeats=False, accepted=False),
            timeout,
        )

    def watch_task(
        self,
        task_id: str,
        after_seq: int = 0,
        *,
        heartbeats: bool = False,
        timeout: float | None = None,
        reattach: int = DEFAULT_REATTACH,
    ) -> Iterator[task_pb2.TaskEvent]:
        """Follows a task: its events with seq > ``after_seq``, then live until its result.

        This re-attaches after a broken or abandoned stream (``after_seq`` = the last seq seen),
        and works for finished tasks too (replay). WatchTask's heartbeats (seq 0) are skipped
        unless ``heartbeats``. A broken connection is re-attached as in stream_task.
        """
        follower = Follower(task_id, after_seq, reattach, heartbeats=heartbeats, accepted=True)
        call = self._stub.WatchTask(
            follower.watch_request(), timeout=timeout, metadata=self._conn.metadata
        )
        return self._follow(call, follower, timeout)

    def get_pool_status(self, *, timeout: float | None = None) -> pool_pb2.PoolStatus:
        """Every programmer's state, the budget and the active alerts (``pas.v1.PoolStatus``)."""
        return self._unary("GetPoolStatus", pool_pb2.GetPoolStatusRequest(), timeout)

    def cancel_task(
        self, task_id: str, *, timeout: float | None = None
    ) -> pool_pb2.CancelTaskResponse:
        """Cancels a queued or running task; ``cancelled`` is False when it had already finished."""
        return self._unary("CancelTask", pool_pb2.CancelTaskRequest(task_id=task_id), timeout)

    def get_task(self, task_id: str, *, timeout: float | None = None) -> pool_pb2.TaskRecord:
        """A task's record: state, request, programmer, result once finished, last seq."""
        return self._unary("GetTask", pool_pb2.GetTaskRequest(task_id=task_id), timeout)

    def list_tasks(
        self,
        run_id: str | None = None,
        states: Sequence[str | int] | None = None,
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pool_pb2.TaskRecord]:
        """The tasks the caller may see, newest first, fetching further pages as it goes.

        ``states`` by short name ("running", "succeeded", …) or TaskState value.
        """
        token = ""
        while True:
            page = self._unary("ListTasks", list_request(run_id, states, page_size, token), timeout)
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    def _unary(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout, metadata=self._conn.metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _follow(
        self, call: Any, follower: Follower, timeout: float | None
    ) -> Iterator[task_pb2.TaskEvent]:
        """A task stream's events, re-attached with WatchTask after a broken connection (see
        Follower); errors typed; the call cancelled if the reader leaves early."""
        try:
            while True:
                try:
                    for event in call:
                        if follower.admit(event):
                            yield event
                    return
                except grpc.RpcError as err:
                    delay = follower.retry_after(err)
                    if delay is None:
                        raise from_rpc_error(err) from err
                time.sleep(delay)
                stub = self._stub
                try:
                    grpc.channel_ready_future(self._channel).result(timeout=REATTACH_CONNECT_S)
                except grpc.FutureTimeoutError:
                    raise follower.unreachable() from None
                call = stub.WatchTask(
                    follower.watch_request(), timeout=timeout, metadata=self._conn.metadata
                )
        finally:
            call.cancel()  # a no-op once the stream ended; ends it when the reader left early


def get_programmer_pool_sync(
    address: str = DEFAULT_ADDRESS,
    token: str | None = None,
    **kwargs: Any,
) -> ProgrammerPool:
    """The blocking twin of :func:`pas_client.get_programmer_pool` (same arguments)."""
    return ProgrammerPool(address, token, **kwargs)
