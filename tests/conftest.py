"""Shared fixtures: a real sidecar (`agentaudit dev`) in a subprocess, on a unix socket and loopback TCP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
AGENTAUDIT = [sys.executable, "-m", "gateway.cli"]


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before in this process.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is closed, so two
    calls before either port is listened on could collide (seen: a health listener on the API listener's port).
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_serving(target: str, deadline_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Polls the gRPC health check until SERVING, the process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode} before serving")
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"sidecar at {target} not serving after {deadline_s}s: {last}")


@dataclass
class RunningGateway:
    """A sidecar subprocess and where to reach it."""

    dir: Path
    unix_target: str
    tcp_target: str
    journal_path: Path
    public_key_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    operator_target: str = ""

    @property
    def operator_token(self) -> str:
        """The dev operator's bearer token (roles admin, approver, auditor)."""
        return (self.dir / "operator.token").read_text().strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stops the process (SIGTERM by default) and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gateway(
    directory: Path,
    extra_env: dict[str, str] | None = None,
    operator_listen: str | None = None,
    *,
    forward: bool = False,
) -> RunningGateway:
    """Starts `agentaudit dev --dir DIR` listening on DIR/gateway.sock and a free loopback port."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "gateway.sock"
    port = free_port()
    log_path = directory / "sidecar.log"
    # Forwarding appends receipts asynchronously; tests that count journal entries keep it off unless they ask.
    env = {**os.environ, **({} if forward else {"AGENTAUDIT_FORWARD_TARGET": ""}), **(extra_env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                *AGENTAUDIT,
                "dev",
                "--dir",
                str(directory),
                "--listen",
                f"unix://{sock}",
                "--listen",
                f"127.0.0.1:{port}",
                "--operator-listen",
                operator_listen or f"unix://{directory / 'operator.sock'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    gw = RunningGateway(
        dir=directory,
        unix_target=f"unix://{sock}",
        tcp_target=f"127.0.0.1:{port}",
        journal_path=directory / "journal.db",
        public_key_path=directory / "signing.pub",
        proc=proc,
        log_path=log_path,
        operator_target=operator_listen or f"unix://{directory / 'operator.sock'}",
    )
    try:
        wait_serving(gw.unix_target, proc=proc)
    except Exception:
        gw.stop(signal.SIGKILL)
        raise RuntimeError(f"sidecar failed to start:\n{gw.log()}") from None
    return gw


@pytest.fixture
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A fresh sidecar with the example policy; stopped (SIGTERM) after the test."""
    # Short path: unix socket paths are limited to 107 bytes.
    gw = start_gateway(Path(tmp_path_factory.mktemp("gw")))
    try:
        yield gw
    finally:
        gw.stop()


POSTGRES_DSN = os.environ.get("AGENTAUDIT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the test server, dropped afterwards; skipped (or, with
    AGENTAUDIT_REQUIRE_POSTGRES=1, failed) when the server is unreachable."""
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    name = f"aa_test_{uuid.uuid4().hex[:12]}"

    async def execute(statement: str) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(execute(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL at {POSTGRES_DSN.rsplit('@', 1)[-1]} unavailable: {exc}"
        if os.environ.get("AGENTAUDIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AGENTAUDIT_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    try:
        yield f"{POSTGRES_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs the agentaudit CLI in a subprocess."""
    return subprocess.run([*AGENTAUDIT, *args], capture_output=True, text=True, cwd=ROOT, check=check, timeout=120)
