"""Settings of the pool under test, from the environment tests/python_client.rs sets.

These tests need a running pool (llm-sim, manager, programmers, real aider): the Rust test
`cargo test --test integration python_client::` starts one and runs them. By hand, against a pool of your own:

    PAS_TEST_ADDRESS=127.0.0.1:6141 PAS_TEST_SAMPLE=/path/to/workspaces/sample pytest -m plain

PAS_TEST_ADDRESS   the manager's host:port
PAS_TEST_SAMPLE    the `sample` repository of the pool's workspace root (checked with git)
PAS_TEST_CERTS     (secured tests) what `pas certs init` wrote: ca.pem, client.pem, client-key.pem
PAS_TEST_TOKEN_READ / PAS_TEST_TOKEN_DISPATCH   (secured tests) a read and a dispatch token
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The task every test runs: llm-sim answers it with an edit adding docstrings.
DOCSTRINGS = "Add docstrings to all functions"
#: What the task edits in the sample repository.
MODULE = "src/module.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "plain: needs the plaintext pool (PAS_TEST_ADDRESS)")
    config.addinivalue_line("markers", "secured: needs the TLS + token pool (PAS_TEST_CERTS)")


@dataclass(frozen=True)
class Pool:
    """The pool under test."""

    address: str
    sample: Path

    def git(self, *args: str) -> str:
        """Runs git in the sample repository and returns its stdout."""
        return subprocess.run(
            ["git", "-C", str(self.sample), *args], check=True, capture_output=True, text=True
        ).stdout


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests through `cargo test --test integration python_client::`")
    return value


@pytest.fixture(scope="session")
def pool() -> Pool:
    """The running pool's address and sample repository."""
    return Pool(address=_env("PAS_TEST_ADDRESS"), sample=Path(_env("PAS_TEST_SAMPLE")))


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token in the environment must not decide what these tests send."""
    monkeypatch.delenv("PAS_TOKEN", raising=False)


class SeverableProxy:
    """A TCP proxy in front of the manager whose connections the test can break at will (a real
    broken connection: both sockets shut down mid-stream). New connections are still accepted."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        #: The proxy's host:port, for the client.
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        #: Connections accepted so far.
        self.connections = 0
        #: Times sever() ran.
        self.severed = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> SeverableProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.sever()

    def sever(self) -> None:
        """Breaks every open connection."""
        with self._lock:
            sockets, self._open = self._open, []
            self.severed += 1
        for s in sockets:
            _shutdown(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self.connections += 1
                self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _shutdown(src)
        _shutdown(dst)


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
