"""Settings of the pool under test, from the environment tests/python_client.rs sets.

These tests need a running pool (llm-sim, manager, programmers, real aider): the Rust test
`cargo test --test python_client` starts one and runs them. By hand, against a pool of your own:

    PAS_TEST_ADDRESS=127.0.0.1:6141 PAS_TEST_SAMPLE=/path/to/workspaces/sample pytest -m plain

PAS_TEST_ADDRESS   the manager's host:port
PAS_TEST_SAMPLE    the `sample` repository of the pool's workspace root (checked with git)
PAS_TEST_CERTS     (secured tests) what `pas certs init` wrote: ca.pem, client.pem, client-key.pem
PAS_TEST_TOKEN_READ / PAS_TEST_TOKEN_DISPATCH   (secured tests) a read and a dispatch token
"""

from __future__ import annotations

import os
import subprocess
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
        pytest.fail(f"{name} is not set: run these tests through `cargo test --test python_client`")
    return value


@pytest.fixture(scope="session")
def pool() -> Pool:
    """The running pool's address and sample repository."""
    return Pool(address=_env("PAS_TEST_ADDRESS"), sample=Path(_env("PAS_TEST_SAMPLE")))


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token in the environment must not decide what these tests send."""
    monkeypatch.delenv("PAS_TOKEN", raising=False)
