"""The asyncio client: :class:`AsyncProgrammerPool` over a ``grpc.aio`` channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import grpc
import grpc.aio
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

#: What ``on_event`` may be: a function, or a coroutine function (awaited).
EventHook = Callable[[task_pb2.TaskEvent], None | Awaitable[None]]


class AsyncProgrammerPool(PoolBase):
    """A connection to the pool's manager (``pas.v1.ProgrammerPool``) for asyncio code.

    What :func:`pas_client.get_programmer_pool` returns, so that ``await pool.dispatch_task(...)``
    reads as it did in the original Manager-Code. The ``grpc.aio`` channel is opened on first
    use inside the running event loop (so the pool object may be made at import time), and
    again if a later call runs in another loop. Every failed call raises a
    :class:`pas_client.PoolError` subclass. Use ``async with``, or ``await pool.close()``.
    """

    _channel: grpc.aio.Channel | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stub_cache: pool_pb2_grpc.ProgrammerPoolStub | None = None

    async def __aenter__(self) -> AsyncProgrammerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel (calls in progress are cancelled); a later call opens a new one."""
        if self._channel is not None and self._loop is asyncio.get_running_loop():
            await self._channel.close()
        self._channel = self._stub_cache = self._loop = None

    def _stub(self) -> pool_pb2_grpc.ProgrammerPoolStub:
        loop = asyncio.get_running_loop()
        if self._stub_cache is None or self._loop is not loop:
            self._channel, self._loop = self._conn.open(grpc.aio), loop
            self._stub_cache = pool_pb2_grpc.ProgrammerPoolStub(self._channel)
        return self._stub_cache

    async def dispatch_task(
        self,
        task_description: str,
        files: Sequence[str],
        run_id: str | None = None,
        capabilities: Sequence[str] | None = None,
        prefer_free: bool | None = True,
        *,
        on_event: EventHook | None = None,
        timeout: float | None = None,
        reattach: int = DEFAULT_REATTACH,
        **options: Unpack[DispatchOptions],
    ) -> TaskResultDict:
        """Runs a task to its end and returns the result dict (see :class:`TaskResultDict`).

        The original's arguments first; ``prefer_free=None`` leaves the choice to the pool's
        configuration. ``options`` are the other DispatchRequest fields (:class:`DispatchOptions`).
        ``on_event`` sees every event as it arrives (awaited if it is a coroutine function).
        ``timeout`` is the call's deadline in seconds (the task itself keeps running if it
        passes: follow it with watch_task). A task that ran and failed is returned
        (``status`` "failed"), not raised.
        """
        collector = ResultCollector()
        async for event in self.stream_task(
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
                outcome = on_event(event)
                if outcome is not None:
                    await outcome
        return collector.finished()

    async def stream_task(
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
    ) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Dispatches a task and yields its ``pas.v1.TaskEvent`` messages as they arrive.

        Events carry ``seq`` 1, 2, … and exactly one ``kind`` (queued, assigned, output,
        failover, rerouted, escalated, result); the last one carries ``result``. To leave early, wrap it in
        ``contextlib.aclosing(...)``: the stream closes, the task runs on, and
        ``watch_task(task_id, last_seq)`` picks it up again (choose a ``task_id`` to be able to).
        """
        request = self._dispatch_request(
            task_description, files, run_id, capabilities, prefer_free, options
        )
        call = self._stub().Dispatch(request, timeout=timeout, metadata=self._conn.metadata)
        follower = Follower(
            options.get("task_id", ""), 0, reattach, heartbeats=False, accepted=False
        )
        async with aclosing(self._follow(call, follower, timeout)) as events:
            async for event in events:
                yield event

    async def watch_task(
        self,
        task_id: str,
        after_seq: int = 0,
        *,
        heartbeats: bool = False,
        timeout: float | None = None,
        reattach: int = DEFAULT_REATTACH,
    ) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Follows a task: its events with seq > ``after_seq``, then live until its result.

        This re-attaches after a broken or abandoned stream (``after_seq`` = the last seq seen),
        and works for finished tasks too (replay). WatchTask's heartbeats (seq 0) are skipped
        unless ``heartbeats``. A broken connection is re-attached as in stream_task.
        """
        follower = Follower(task_id, after_seq, reattach, heartbeats=heartbeats, accepted=True)
        call = self._stub().WatchTask(
            follower.watch_request(), timeout=timeout, metadata=self._conn.metadata
        )
        async with aclosing(self._follow(call, follower, timeout)) as events:
            async for event in events:
                yield event

    async def get_pool_status(self, *, timeout: float | None = None) -> pool_pb2.PoolStatus:
        """Every programmer's state, the budget and the active alerts (``pas.v1.PoolStatus``)."""
        return await self._unary("GetPoolStatus", pool_pb2.GetPoolStatusRequest(), timeout)

    async def cancel_task(
        self, task_id: str, *, timeout: float | None = None
    ) -> pool_pb2.CancelTaskResponse:
        """Cancels a queued or running task; ``cancelled`` is False when it had already finished."""
        return await self._unary("CancelTask", pool_pb2.CancelTaskRequest(task_id=task_id), timeout)

    async def get_task(self, task_id: str, *, timeout: float | None = None) -> pool_pb2.TaskRecord:
        """A task's record: state, request, programmer, result once finished, last seq."""
        return await self._unary("GetTask", pool_pb2.GetTaskRequest(task_id=task_id), timeout)

    async def list_tasks(
        self,
        run_id: str | None = None,
        states: Sequence[str | int] | None = None,
        *,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncGenerator[pool_pb2.TaskRecord, None]:
        """The tasks the caller may see, newest first, fetching further pages as it goes.

        ``states`` by short name ("running", "succeeded", …) or TaskState value.
        """
        token = ""
        while True:
            page = await self._unary(
                "ListTasks", list_request(run_id, states, page_size, token), timeout
            )
            for record in page.tasks:
                yield record
            token = page.next_page_token
            if not token:
                return

    async def _follow(
        self, call: Any, follower: Follower, timeout: float | None
    ) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """A task stream's events, re-attached with WatchTask after a broken connection (see
        Follower); errors typed; the call cancelled if the reader leaves early."""
        try:
            while True:
                try:
                    async for event in call:
                        if follower.admit(event):
                            yield event
                    return
                except grpc.RpcError as err:
                    delay = follower.retry_after(err)
                    if delay is None:
                        raise from_rpc_error(err) from err
                await asyncio.sleep(delay)
                stub = self._stub()
                assert self._channel is not None  # _stub() opened it
                try:
                    await asyncio.wait_for(self._channel.channel_ready(), REATTACH_CONNECT_S)
                except asyncio.TimeoutError:
                    raise follower.unreachable() from None
                call = stub.WatchTask(
                    follower.watch_request(), timeout=timeout, metadata=self._conn.metadata
                )
        finally:
            call.cancel()

    async def _unary(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return await getattr(self._stub(), method)(
                request, timeout=timeout, metadata=self._conn.metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err


def get_programmer_pool(
    address: str = DEFAULT_ADDRESS,
    token: str | None = None,
    **kwargs: Any,
) -> AsyncProgrammerPool:
    """The pool, as the original ``get_programmer_pool()`` returned it: ``await`` its methods.

    ``address`` is the manager's ``host:port`` (``https://`` for TLS); ``token`` a bearer token
    (None: ``$PAS_TOKEN``). Keyword options: ``workspace`` (the default repository of tasks),
    ``tls``, ``root_certificates``, ``certificate_chain``, ``private_key`` (PEM bytes or paths).
    For blocking code use :func:`pas_client.get_programmer_pool_sync`.
    """
    return AsyncProgrammerPool(address, token, **kwargs)
