"""pas_client against a real plaintext pool (tests/python_client.rs starts it):

programmers 001 and 002 (free, "fast"), 003 (free, "slow": llm-sim never answers its models, so its
tasks run until cancelled) and 004 (paid OpenAI models, "premium");
`limits.per_caller_max_tasks: 2`.
The tests run in file order; the one that fills the caller's two task slots is last.
"""

from __future__ import annotations

import asyncio
import datetime
from contextlib import aclosing
from decimal import Decimal

import grpc
import pytest
from conftest import DOCSTRINGS, MODULE, Pool, SeverableProxy

import pas_client
from pas_client import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TaskEvent,
    TaskState,
    get_programmer_pool,
    get_programmer_pool_sync,
)

pytestmark = pytest.mark.plain

RUN_ID = "py-client"


def check_stream(events: list[TaskEvent], task_id: str) -> None:
    """seq 1..n in order, one task id, exactly one result and it is last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), events
    assert {e.task_id for e in events} == {task_id}
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds.count("result") == 1 and kinds[-1] == "result", kinds


def check_real_edit(pool: Pool, result: pas_client.TaskResultDict, task_id: str) -> None:
    """A real aider edit via llm-sim: docstrings added to src/module.py, on the task's branch."""
    assert result["status"] == "succeeded", result
    assert result["success"] is True
    assert result["error_class"] == "none" and result["error_message"] == ""
    assert result["task_id"] == task_id
    assert result["files_changed"] == [MODULE]
    assert MODULE in result["diff"]
    assert any(line.startswith("+") and '"""' in line for line in result["diff"].splitlines())
    assert result["branch"] == f"pas/{task_id}"
    assert pool.git("rev-parse", f"refs/heads/{result['branch']}").strip() == result["commit"]
    assert '"""' in pool.git("show", f"{result['commit']}:{MODULE}")
    # Fails (git exits 1) unless the change was made on top of the reported base commit.
    pool.git("merge-base", "--is-ancestor", result["base_commit"], result["commit"])
    assert result["output"], "aider's output is relayed"
    assert result["dry_run"] is False
    assert result["attempts"] and result["attempts"][-1]["error_class"] == "none"


def test_async_dispatch_task_returns_the_original_result_dict(pool: Pool) -> None:
    """The original five-line call, awaited: a free fast programmer edits for real, cost 0."""

    async def main() -> pas_client.TaskResultDict:
        async with get_programmer_pool(pool.address, workspace="sample") as programmer_pool:
            return await programmer_pool.dispatch_task(
                task_description=DOCSTRINGS,
                files=[MODULE],
                run_id=RUN_ID,
                capabilities=["fast"],
                prefer_free=True,
                task_id="py-async-1",
            )

    result = asyncio.run(main())
    check_real_edit(pool, result, "py-async-1")
    assert result["programmer_id"] in ("001", "002"), result
    assert result["llm_used"] == f"ollama/primary-{result['programmer_id']}"
    assert result["cost"] == Decimal(0) and isinstance(result["cost"], Decimal)
    assert result["cost_nanousd"] == 0


def test_sync_dispatch_task_on_a_paid_programmer_reports_exact_cost(pool: Pool) -> None:
    """The blocking variant; a paid model's cost as exact Decimal dollars from cost_nanousd."""
    seen: list[TaskEvent] = []
    with get_programmer_pool_sync(pool.address, workspace="sample") as programmer_pool:
        result = programmer_pool.dispatch_task(
            DOCSTRINGS,
            [MODULE],
            RUN_ID,
            ["premium"],
            prefer_free=False,
            task_id="py-sync-paid-1",
            on_event=seen.append,
        )
    check_real_edit(pool, result, "py-sync-paid-1")
    check_stream(seen, "py-sync-paid-1")
    assert result["programmer_id"] == "004"
    assert result["tokens_sent"] > 0 and result["tokens_received"] > 0
    assert result["cost_nanousd"] > 0, result
    assert result["cost"] == Decimal(result["cost_nanousd"]) / Decimal(10**9)
    assert result["cost"] == sum(a["cost"] for a in result["attempts"])
    assert abs(float(result["cost"]) - result["cost_usd"]) < 1e-9
    # The same result as the pool keeps it.
    assert seen[-1].result.cost_nanousd == result["cost_nanousd"]


def test_stream_task_yields_events_in_order_ending_with_one_result(pool: Pool) -> None:
    with get_programmer_pool_sync(pool.address) as programmer_pool:
        events = list(
            programmer_pool.stream_task(
                DOCSTRINGS,
                [MODULE],
                RUN_ID,
                ["fast"],
                workspace="sample",
                task_id="py-stream-1",
                strategy="round_robin",
            )
        )
    check_stream(events, "py-stream-1")
    kinds = [e.WhichOneof("kind") for e in events]
    assert "assigned" in kinds and "output" in kinds, kinds
    assigned = next(e.assigned for e in events if e.WhichOneof("kind") == "assigned")
    assert assigned.strategy == "round_robin"
    assert events[-1].result.status == TaskState.Value("TASK_STATE_SUCCEEDED")
    assert events[-1].result.programmer_id == assigned.programmer_id


def test_watch_task_reattaches_after_the_stream_is_dropped(pool: Pool) -> None:
    """Leave the Dispatch stream after the assignment, then follow the task with WatchTask from
    the last seq seen: every event exactly once, in order, to the result."""

    async def main() -> tuple[list[TaskEvent], list[TaskEvent], pas_client.TaskRecord, list]:
        async with get_programmer_pool(pool.address, workspace="sample") as programmer_pool:
            first: list[TaskEvent] = []
            stream = programmer_pool.stream_task(
                DOCSTRINGS, [MODULE], RUN_ID, ["fast"], task_id="py-watch-1"
            )
            async with aclosing(stream) as events:
                async for event in events:
                    first.append(event)
                    if event.WhichOneof("kind") == "assigned":
                        break
            rest = [
                e async for e in programmer_pool.watch_task("py-watch-1", after_seq=first[-1].seq)
            ]
            record = await programmer_pool.get_task("py-watch-1")
            listed = [r async for r in programmer_pool.list_tasks(run_id=RUN_ID, page_size=1)]
            return first, rest, record, listed

    first, rest, record, listed = asyncio.run(main())
    assert first[-1].WhichOneof("kind") == "assigned"
    assert rest and rest[0].seq == first[-1].seq + 1
    check_stream(first + rest, "py-watch-1")
    assert rest[-1].result.status == TaskState.Value("TASK_STATE_SUCCEEDED")
    assert record.state == TaskState.Value("TASK_STATE_SUCCEEDED")
    assert record.last_seq == rest[-1].seq
    assert record.result.commit == rest[-1].result.commit
    # Paged one by one, newest first: every task of the run so far.
    ids = [r.task_id for r in listed]
    assert ids[0] == "py-watch-1", ids
    assert set(ids) == {"py-async-1", "py-sync-paid-1", "py-stream-1", "py-watch-1"}, ids


def test_a_broken_connection_is_reattached_without_gap_or_repeat(pool: Pool) -> None:
    """The connection to the manager breaks right after the assignment (a proxy shuts both
    sockets); dispatch_task (sync) and stream_task (asyncio) follow the task again with
    WatchTask on a new connection and deliver every event once, in order, to the result."""
    seen: list[TaskEvent] = []
    with SeverableProxy(pool.address) as proxy:

        def break_after_assignment(event: TaskEvent) -> None:
            seen.append(event)
            if event.WhichOneof("kind") == "assigned":
                proxy.sever()

        with get_programmer_pool_sync(proxy.address, workspace="sample") as programmer_pool:
            result = programmer_pool.dispatch_task(
                DOCSTRINGS,
                [MODULE],
                RUN_ID,
                ["fast"],
                task_id="py-reattach-1",
                on_event=break_after_assignment,
            )
        sync_connections = proxy.connections

    check_real_edit(pool, result, "py-reattach-1")
    check_stream(seen, "py-reattach-1")
    assert sync_connections >= 2, "the stream was re-attached on a new connection"

    async def main() -> tuple[list[TaskEvent], int]:
        events: list[TaskEvent] = []
        with SeverableProxy(pool.address) as proxy:
            async with get_programmer_pool(proxy.address, workspace="sample") as programmer_pool:
                stream = programmer_pool.stream_task(
                    DOCSTRINGS, [MODULE], RUN_ID, ["fast"], task_id="py-reattach-2"
                )
                async with aclosing(stream) as task_events:
                    async for event in task_events:
                        events.append(event)
                        if event.WhichOneof("kind") == "assigned":
                            proxy.sever()
            return events, proxy.connections

    events, async_connections = asyncio.run(main())
    check_stream(events, "py-reattach-2")
    assert events[-1].result.status == TaskState.Value("TASK_STATE_SUCCEEDED")
    assert async_connections >= 2, "the stream was re-attached on a new connection"


def test_cancel_task_stops_a_running_task(pool: Pool) -> None:
    """A task on the hanging programmer, cancelled once aider produces output."""
    with get_programmer_pool_sync(pool.address, workspace="sample") as programmer_pool:
        events: list[TaskEvent] = []
        reply = None
        for event in programmer_pool.stream_task(
            DOCSTRINGS, [MODULE], RUN_ID, ["slow"], task_id="py-cancel-1"
        ):
            events.append(event)
            if reply is None and event.WhichOneof("kind") == "output":
                reply = programmer_pool.cancel_task("py-cancel-1")
        again = programmer_pool.cancel_task("py-cancel-1")
    assert reply is not None, [e.WhichOneof("kind") for e in events]
    assert reply.cancelled is True and reply.task_id == "py-cancel-1"
    assert reply.previous_state == TaskState.Value("TASK_STATE_RUNNING")
    check_stream(events, "py-cancel-1")
    result = events[-1].result
    assert pas_client.state_name(result.status) == "cancelled"
    assert pas_client.error_class_name(result.error_class) == "cancelled"
    assert result.programmer_id == "003" and result.commit == ""
    assert again.cancelled is False, "a finished task is not cancelled again"
    assert "py-cancel-1" not in pool.git("for-each-ref", "--format=%(refname)")


def test_pool_status_sync_and_async(pool: Pool) -> None:
    with get_programmer_pool_sync(pool.address) as programmer_pool:
        status = programmer_pool.get_pool_status()

    async def main() -> pas_client.PoolStatus:
        return await get_programmer_pool(pool.address).get_pool_status()

    again = asyncio.run(main())
    for s in (status, again):
        assert s.pool_size == 4 and s.available == 4 and s.unavailable == 0
        assert [p.id for p in s.programmers] == ["001", "002", "003", "004"]
        assert s.strategy == "least_loaded"
        assert s.budget.limit_nanousd == 50 * 10**9
    assert status.programmers[3].paid and status.programmers[3].primary_llm == "openai/gpt-4o"
    assert pas_client.to_dict(status)["programmers"][0]["state"] == "PROGRAMMER_STATE_AVAILABLE"


def test_bad_requests_raise_typed_errors_with_code_and_message(pool: Pool) -> None:
    with get_programmer_pool_sync(pool.address, workspace="sample") as programmer_pool:
        with pytest.raises(InvalidArgument) as bad:
            programmer_pool.dispatch_task(DOCSTRINGS, ["../outside.py"], RUN_ID)
        with pytest.raises(NotFound) as unknown:
            list(programmer_pool.watch_task("py-no-such-task"))

    async def main() -> None:
        async with get_programmer_pool(pool.address) as programmer_pool:
            await programmer_pool.get_task("py-no-such-task")

    with pytest.raises(NotFound) as unknown_async:
        asyncio.run(main())
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "files" in bad.value.message, bad.value.message
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND
    assert unknown_async.value.code == grpc.StatusCode.NOT_FOUND
    assert "py-no-such-task" in unknown_async.value.message


def test_a_full_task_slot_raises_resource_exhausted_with_the_retry_delay(pool: Pool) -> None:
    """Two hanging tasks fill this caller's `per_caller_max_tasks: 2`; a third dispatch is refused
    with RESOURCE_EXHAUSTED naming the limit and RetryInfo's delay. Then both are cancelled."""

    async def main() -> ResourceExhausted:
        async with get_programmer_pool(pool.address, workspace="sample") as programmer_pool:
            for task_id in ("py-slot-1", "py-slot-2"):
                stream = programmer_pool.stream_task(
                    DOCSTRINGS, [MODULE], RUN_ID, ["slow"], task_id=task_id
                )
                async with aclosing(stream) as events:
                    await anext(events)  # accepted: the slot is taken
            try:
                with pytest.raises(ResourceExhausted) as refused:
                    await programmer_pool.dispatch_task(DOCSTRINGS, [MODULE], RUN_ID, ["fast"])
            finally:
                for task_id in ("py-slot-1", "py-slot-2"):
                    await programmer_pool.cancel_task(task_id)
                    ends = [e async for e in programmer_pool.watch_task(task_id)]
                    assert ends[-1].result.status == TaskState.Value("TASK_STATE_CANCELLED")
            return refused.value

    refused = asyncio.run(main())
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.per_caller_max_tasks" in refused.message, refused.message
    assert refused.retry_delay == datetime.timedelta(seconds=1)
