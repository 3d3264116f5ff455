"""Python client of Programmer Pool, with the original call shape.

    from pas_client import get_programmer_pool

    pool = get_programmer_pool("127.0.0.1:6141", workspace="sample")
    result = await pool.dispatch_task(
        task_description="Add docstrings to all functions",
        files=["src/module.py"],
        run_id="run-123",
        capabilities=["fast"],
        prefer_free=True,
    )
    print(f"Task completed by {result['programmer_id']}")

:func:`get_programmer_pool` gives the asyncio client (grpc.aio), :func:`get_programmer_pool_sync`
the blocking one; both have ``dispatch_task`` (→ :class:`TaskResultDict`), ``stream_task`` and
``watch_task`` (→ ``pas.v1.TaskEvent`` messages), ``get_pool_status``, ``cancel_task``,
``get_task`` and ``list_tasks`` (→ ``pas.v1`` messages). Errors raise :class:`PoolError`
subclasses. The ``pas.v1`` modules (``pas.v1.pool_pb2`` …) are generated from the pool's .proto
files when this package is built.
"""

from pas.v1.pool_pb2 import (
    CancelTaskResponse,
    DispatchRequest,
    ListTasksResponse,
    PoolStatus,
    ProgrammerSummary,
    TaskRecord,
)
from pas.v1.task_pb2 import ErrorClass, TaskEvent, TaskResult, TaskState

from ._common import DEFAULT_ADDRESS, DispatchOptions
from .aio import AsyncProgrammerPool, get_programmer_pool
from .errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    IncompleteStream,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PoolError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .results import AttemptDict, TaskResultDict, error_class_name, state_name, to_dict, usd
from .sync import ProgrammerPool, get_programmer_pool_sync

__all__ = [
    "DEFAULT_ADDRESS",
    "AlreadyExists",
    "AsyncProgrammerPool",
    "AttemptDict",
    "CancelTaskResponse",
    "Cancelled",
    "DeadlineExceeded",
    "DispatchOptions",
    "DispatchRequest",
    "ErrorClass",
    "FailedPrecondition",
    "IncompleteStream",
    "InvalidArgument",
    "ListTasksResponse",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PoolError",
    "PoolStatus",
    "ProgrammerPool",
    "ProgrammerSummary",
    "ResourceExhausted",
    "TaskEvent",
    "TaskRecord",
    "TaskResult",
    "TaskResultDict",
    "TaskState",
    "Unauthenticated",
    "Unavailable",
    "error_class_name",
    "get_programmer_pool",
    "get_programmer_pool_sync",
    "state_name",
    "to_dict",
    "usd",
]
