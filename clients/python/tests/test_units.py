"""The parts of pas_client that need no pool: connection options, re-attach bookkeeping, money.

(Everything that talks to a pool is tested against a real one in test_plain.py / test_secured.py.)
"""

from __future__ import annotations

from decimal import Decimal

import grpc
import pytest
from pas.v1 import task_pb2

from pas_client import usd
from pas_client._common import DEFAULT_REATTACH, Connection, Follower, dispatch_request


def test_connection_options() -> None:
    plain = Connection.of("127.0.0.1:6141")
    assert plain.credentials is None and plain.metadata == () and plain.target == "127.0.0.1:6141"
    secure = Connection.of("https://pool:6141", "t0k")
    assert secure.credentials is not None and secure.target == "pool:6141"
    assert secure.metadata == (("authorization", "Bearer t0k"),)
    assert Connection.of("http://pool:6141").target == "pool:6141"
    with pytest.raises(ValueError, match="plaintext"):
        Connection.of("http://pool:6141", tls=True)
    with pytest.raises(ValueError, match="contradicts"):
        Connection.of("https://pool:6141", tls=False)
    with pytest.raises(ValueError, match="together"):
        Connection.of(certificate_chain=b"cert")


def test_the_token_defaults_to_pas_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAS_TOKEN", "from-env")
    assert Connection.of().metadata == (("authorization", "Bearer from-env"),)
    assert Connection.of(token="").metadata == (), "an empty token sends none"


def test_dispatch_request_fields() -> None:
    request = dispatch_request(
        "Add docstrings", ["a.py"], None, None, True, "sample", {"strategy": "round_robin"}
    )
    assert request.workspace == "sample" and request.prefer_free is True
    assert request.strategy == 2  # STRATEGY_ROUND_ROBIN
    unset = dispatch_request("t", ["a.py"], "r", ["fast"], None, None, {"repo_url": "file:///r"})
    assert not unset.HasField("prefer_free") and unset.workspace == ""
    assert not unset.HasField("escalate")
    never = dispatch_request("t", ["a.py"], None, None, True, "s", {"escalate": False})
    assert never.HasField("escalate") and never.escalate is False
    with pytest.raises(TypeError, match="list of paths"):
        dispatch_request("t", "a.py", None, None, True, "s", {})
    with pytest.raises(TypeError, match="unknown dispatch options"):
        dispatch_request("t", ["a.py"], None, None, True, "s", {"workspce": "x"})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(ValueError, match="unknown strategy"):
        dispatch_request("t", ["a.py"], None, None, True, "s", {"strategy": "fastest"})


class _Broken(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def _event(seq: int) -> task_pb2.TaskEvent:
    return task_pb2.TaskEvent(task_id="t1", seq=seq, output=task_pb2.Output(text=str(seq)))


def test_follower_passes_each_seq_once_and_bounds_reattaching() -> None:
    follower = Follower("", 0, 3, heartbeats=False, accepted=False)
    assert follower.retry_after(_Broken(grpc.StatusCode.UNAVAILABLE)) is None, "not accepted yet"
    assert [follower.admit(_event(s)) for s in (1, 2, 2, 1, 3)] == [True, True, False, False, True]
    assert follower.watch_request() == task_pb2.WatchTaskRequest(task_id="t1", after_seq=3)
    heartbeat = task_pb2.TaskEvent(task_id="t1", heartbeat=task_pb2.Heartbeat(latest_seq=3))
    assert follower.admit(heartbeat) is False and follower.last_seq == 3
    assert follower.retry_after(_Broken(grpc.StatusCode.PERMISSION_DENIED)) is None
    delays = [follower.retry_after(_Broken(grpc.StatusCode.UNAVAILABLE)) for _ in range(4)]
    assert delays == [0.2, 0.4, 0.8, None], "three attempts in a row, doubling"
    assert follower.admit(_event(4))
    assert follower.retry_after(_Broken(grpc.StatusCode.INTERNAL)) == 0.2, "progress resets"
    assert DEFAULT_REATTACH > 0


def test_cost_is_exact_decimal_dollars() -> None:
    assert usd(1_234_567_891) == Decimal("1.234567891")
    assert usd(0) == Decimal(0)
    # A programmer older than cost_nanousd sends only the float.
    assert usd(0, 0.0125) == Decimal("0.0125")
