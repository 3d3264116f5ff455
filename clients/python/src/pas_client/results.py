"""The result dict ``dispatch_task`` returns, built from a task's events.

The original ``dispatch_task`` returned a dict with ``programmer_id``, ``status`` and Aider's
``output``; this one has those keys plus what the pool reports about the change and its cost.
Money: ``cost`` is a :class:`decimal.Decimal` of US dollars, exact, from the result's
``cost_nanousd`` (integer nano-dollars, what the pool's budget counts in); ``cost_usd`` is the
pool's float for display.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypedDict

import grpc
from pas.v1 import task_pb2

from .errors import IncompleteStream

#: One US dollar in the pool's money unit (nano-dollars).
NANOUSD_PER_USD = 10**9


class AttemptDict(TypedDict):
    """One LLM attempt of a task."""

    number: int
    llm: str
    backup: bool
    programmer_id: str
    error_class: str
    error_message: str
    duration_ms: int
    tokens_sent: int
    tokens_received: int
    cost: Decimal
    cost_nanousd: int


class TaskResultDict(TypedDict):
    """What ``dispatch_task`` returns: the original keys first, then the pool's.

    ``status`` is the final state in lower case: "succeeded", "failed", "cancelled" or
    "timed_out"; ``success`` is ``status == "succeeded"``. ``output`` is the text of every
    ``output`` event (Aider's stdout and stderr as relayed, in order). ``error_class`` is the
    ErrorClass name in lower case without its prefix ("none", "api_error", "cancelled", …).
    ``tier`` is "free" or "paid", the tier of the programmer that did the work; ``escalation``
    says whether the task escalated from the free tier (see ``DispatchOptions.escalate``).
    ``change_truncated`` is true when ``diff`` or ``files_changed`` was cut to keep the result
    under gRPC's 4 MiB message limit (the diff at 1 MiB); ``commit`` holds the whole change.
    """

    programmer_id: str
    status: str
    output: str
    success: bool
    task_id: str
    branch: str
    commit: str
    base_commit: str
    diff: str
    files_changed: list[str]
    llm_used: str
    used_backup: bool
    tokens_sent: int
    tokens_received: int
    cost: Decimal
    cost_nanousd: int
    cost_usd: float
    duration_ms: int
    error_class: str
    error_message: str
    dry_run: bool
    pushed_ref: str
    pushed_commit: str
    tier: str
    escalation: str
    change_truncated: bool
    attempts: list[AttemptDict]


def state_name(state: int) -> str:
    """TaskState → "succeeded", "running", … (the enum name without TASK_STATE_, lower case)."""
    return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()


def error_class_name(error_class: int) -> str:
    """ErrorClass → "none", "api_error", … (the enum name without ERROR_CLASS_, lower case)."""
    return task_pb2.ErrorClass.Name(error_class).removeprefix("ERROR_CLASS_").lower()


def usd(cost_nanousd: int, cost_usd: float = 0.0) -> Decimal:
    """Exact dollars from nano-dollars; a programmer older than cost_nanousd sent only the float."""
    if cost_nanousd == 0 and cost_usd > 0:
        return Decimal(repr(cost_usd))
    return Decimal(cost_nanousd).scaleb(-9)


def result_dict(result: task_pb2.TaskResult, task_id: str, output: str) -> TaskResultDict:
    """The dict for a task's final `result`, with the `output` its events carried."""
    return TaskResultDict(
        programmer_id=result.programmer_id,
        status=state_name(result.status),
        output=output,
        success=result.status == task_pb2.TASK_STATE_SUCCEEDED,
        task_id=task_id,
        branch=result.branch,
        commit=result.commit,
        base_commit=result.base_commit,
        diff=result.diff,
        files_changed=list(result.files_changed),
        llm_used=result.llm_used,
        used_backup=result.used_backup,
        tokens_sent=result.tokens_sent,
        tokens_received=result.tokens_received,
        cost=usd(result.cost_nanousd, result.cost_usd),
        cost_nanousd=result.cost_nanousd,
        cost_usd=result.cost_usd,
        duration_ms=result.duration_ms,
        error_class=error_class_name(result.error_class),
        error_message=result.error_message,
        dry_run=result.dry_run,
        pushed_ref=result.pushed_ref,
        pushed_commit=result.pushed_commit,
        tier=result.tier,
        escalation=result.escalation,
        change_truncated=result.change_truncated,
        attempts=[
            AttemptDict(
                number=a.number,
                llm=a.llm,
                backup=a.backup,
                programmer_id=a.programmer_id,
                error_class=error_class_name(a.error_class),
                error_message=a.error_message,
                duration_ms=a.duration_ms,
                tokens_sent=a.tokens_sent,
                tokens_received=a.tokens_received,
                cost=usd(a.cost_nanousd, a.cost_usd),
                cost_nanousd=a.cost_nanousd,
            )
            for a in result.attempts
        ],
    )


class ResultCollector:
    """Follows one task's events: checks their order, gathers output, builds the dict at the end."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        #: The task id the events carry (known after the first event).
        self.task_id = ""
        #: The seq of the last event seen (0 before any): pass to watch_task to re-attach.
        self.last_seq = 0
        #: The dict, once the result event arrived.
        self.result: TaskResultDict | None = None

    def feed(self, event: task_pb2.TaskEvent) -> None:
        """Takes the next event of the stream."""
        self.task_id = event.task_id or self.task_id
        self.last_seq = max(self.last_seq, event.seq)
        kind = event.WhichOneof("kind")
        if kind == "output":
            self._texts.append(event.output.text)
        elif kind == "result":
            self.result = result_dict(event.result, self.task_id, "".join(self._texts))

    def finished(self) -> TaskResultDict:
        """The result dict; IncompleteStream when the stream ended without a result."""
        if self.result is None:
            raise IncompleteStream(
                grpc.StatusCode.UNKNOWN,
                f"the stream of task {self.task_id or '?'} ended after seq {self.last_seq} "
                "without a result; follow it with watch_task(task_id, after_seq)",
            )
        return self.result


def to_dict(message: Any) -> dict[str, Any]:
    """Any pas.v1 message as a plain dict with the .proto field names (as grpcurl prints them,
    but snake_case), enums as names, 64-bit integers as strings (the protobuf JSON mapping)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
