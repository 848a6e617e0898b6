"""A fleet of real processes: collector replicas (`agentaudit collector --config`) and sidecars
(`agentaudit serve --config`) whose control channel and forwarding go to one of them. Used by
tests/test_fleet_control_e2e.py and bench/fleet.py.

Each sidecar has its own origin (its journal key's name) registered with every replica; every replica signs with
one control key (:data:`CONTROL`) that every sidecar pins; each replica serves the fleet operator API with the
tokens in :data:`TOKENS`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentaudit.v1 import operator_pb2, operator_pb2_grpc
from gateway import devenv
from gateway.signing import Ed25519Signer, write_secret_file

ROOT = Path(__file__).resolve().parent.parent
AGENTAUDIT = [sys.executable, "-m", "gateway.cli"]
CONTROL = Ed25519Signer("fleet.e2e/control", bytes([11]) * 32)
WITNESS = Ed25519Signer("fleet.e2e/witness", bytes([12]) * 32)
TOKENS = {"alice": ("approver",), "ops": ("admin",)}
START_S = 60.0  # generous: the machine is shared


def token_of(identity: str) -> str:
    return f"fleet-e2e-{identity}-token-0123456789"


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_serving(target: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = START_S) -> None:
    """Polls grpc.health.v1 (service "") until SERVING; raises with the log's tail if the process dies first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{target}: exited {proc.returncode} before serving:\n{log.read_text()[-3000:]}")
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{target} not serving after {deadline_s} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class SidecarProcess:
    """One sidecar: a dev directory (keys, example policy) run with `agentaudit serve` against a collector."""

    directory: Path
    origin: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(cls, directory: Path, origin: str) -> SidecarProcess:
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519Signer.generate(origin)
        write_secret_file(directory / "signing.key", key.encode_private() + "\n")  # before prepare: kept
        (directory / "signing.pub").write_text(key.verifier.encode() + "\n")
        devenv.prepare(directory, None, {})
        return cls(directory, origin)

    @property
    def public_key(self) -> Path:
        return self.directory / "signing.pub"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def operator_target(self) -> str:
        return f"unix://{self.directory / 'op.sock'}"

    @property
    def log_path(self) -> Path:
        return self.directory / "sidecar.log"

    def start(self, collector: str, *, wait: bool = True, forward_age_s: float = 0.2, **env: str) -> None:
        """Serves with forwarding (batches at most ``forward_age_s`` old) and the control channel to
        ``collector``; ``wait``: until health SERVING."""
        config_path = self.directory / devenv.CONFIG_FILE
        config: dict[str, Any] = yaml.safe_load(config_path.read_text())
        config["forward"] = {"target": collector, "batch_max_age_s": forward_age_s, "backoff_initial_s": 0.05,
                             "backoff_max_s": 1.0}  # fmt: skip
        config["control"] = {"collector": collector, "control_key": CONTROL.verifier.encode(),
                             "connect_wait_s": 10, "backoff_initial_s": 0.05, "backoff_max_s": 1.0}  # fmt: skip
        config["log"] = {"level": "info", "format": "text"}
        config_path.write_text(yaml.safe_dump(config))
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            [*AGENTAUDIT, "serve", "--config", str(config_path), "--listen", self.target,
             "--operator-listen", self.operator_target],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env},
        )  # fmt: skip
        log.close()
        if wait:
            wait_serving(self.target, self.proc, self.log_path)

    def stop(self) -> None:
        _stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class CollectorProcess:
    """One collector replica on ``store``, with the fleet operator API on its own port."""

    directory: Path
    store: str
    origins: list[tuple[str, Path]]
    port: int = field(default_factory=free_port)
    operator_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def operator_target(self) -> str:
        return f"127.0.0.1:{self.operator_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "collector.log"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_secret_file(self.directory / "witness.key", WITNESS.encode_private() + "\n")
        write_secret_file(self.directory / "control.key", CONTROL.encode_private() + "\n")
        config = {
            "collector": {
                "listen": [self.target],
                "store": self.store,
                "witness_key": "witness.key",
                "control_key": "control.key",
                "origins": [{"origin": o, "keys": [str(k)]} for o, k in self.origins],
                "operator": {
                    "listen": [self.operator_target],
                    "tokens": [
                        {
                            "identity": who,
                            "roles": list(roles),
                            "sha256": hashlib.sha256(token_of(who).encode()).hexdigest(),
                        }
                        for who, roles in TOKENS.items()
                    ],
                },
            }
        }
        (self.directory / "collector.yaml").write_text(yaml.safe_dump(config))
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess
        self.proc = subprocess.Popen(
            [*AGENTAUDIT, "collector", "--config", str(self.directory / "collector.yaml"), "--log-format", "text"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        log.close()
        wait_serving(self.target, self.proc, self.log_path)

    def stop(self) -> None:
        _stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class FleetOperator:
    """One identity's stub on one replica's fleet operator API."""

    def __init__(self, replica: CollectorProcess, identity: str) -> None:
        self.channel = grpc.insecure_channel(replica.operator_target)
        self.stub = operator_pb2_grpc.OperatorServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token_of(identity)}")]

    def __call__(self, method: str, **fields: Any) -> Any:
        request = getattr(operator_pb2, f"{method}Request")(**fields)
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)

    def close(self) -> None:
        self.channel.close()
