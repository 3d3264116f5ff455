"""pas_client against a real pool with TLS and bearer tokens (tests/python_client.rs starts it):
one free programmer 001; the manager requires a token for every call but health and reflection.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import DOCSTRINGS, MODULE, Pool

from pas_client import (
    AsyncProgrammerPool,
    PermissionDenied,
    Unauthenticated,
    get_programmer_pool,
    get_programmer_pool_sync,
)

pytestmark = pytest.mark.secured


def certs() -> Path:
    return Path(os.environ["PAS_TEST_CERTS"])


def tls(client_cert: bool) -> dict[str, Any]:
    """TLS options trusting the pool CA (PEM paths), with the pool's client certificate if asked."""
    options: dict[str, Any] = {"root_certificates": certs() / "ca.pem"}
    if client_cert:
        options["certificate_chain"] = certs() / "client.pem"
        options["private_key"] = (certs() / "client-key.pem").read_bytes()
    return options


def test_a_wrong_token_or_none_is_unauthenticated(pool: Pool) -> None:
    for token in ("not-a-token-of-this-pool", None):
        with get_programmer_pool_sync(pool.address, token, **tls(False)) as programmer_pool:
            with pytest.raises(Unauthenticated) as refused:
                programmer_pool.get_pool_status()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED, token

    async def main() -> None:
        async with get_programmer_pool(pool.address, "wrong", **tls(True)) as programmer_pool:
            await programmer_pool.dispatch_task(DOCSTRINGS, [MODULE], workspace="sample")

    with pytest.raises(Unauthenticated):
        asyncio.run(main())


def test_a_read_token_reads_the_status_but_may_not_dispatch(pool: Pool) -> None:
    read = os.environ["PAS_TEST_TOKEN_READ"]
    with get_programmer_pool_sync(pool.address, read, **tls(False)) as programmer_pool:
        status = programmer_pool.get_pool_status()
        with pytest.raises(PermissionDenied) as refused:
            programmer_pool.dispatch_task(DOCSTRINGS, [MODULE], workspace="sample")
    assert status.pool_size == 1 and status.available == 1
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_the_dispatch_token_runs_a_real_task_over_tls(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token from $PAS_TOKEN (as `pas` reads it), an https:// address, a client certificate."""
    monkeypatch.setenv("PAS_TOKEN", os.environ["PAS_TEST_TOKEN_DISPATCH"])

    async def main() -> dict:
        programmer_pool = AsyncProgrammerPool(
            f"https://{pool.address}", workspace="sample", **tls(True)
        )
        try:
            return dict(
                await programmer_pool.dispatch_task(
                    DOCSTRINGS, [MODULE], "py-tls", ["fast"], task_id="py-tls-1"
                )
            )
        finally:
            await programmer_pool.close()

    result = asyncio.run(main())
    assert result["status"] == "succeeded", result
    assert result["programmer_id"] == "001"
    assert result["branch"] == "pas/py-tls-1"
    assert pool.git("rev-parse", "refs/heads/pas/py-tls-1").strip() == result["commit"]
