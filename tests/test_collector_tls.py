"""TLS between the sidecar and the collector: forward.tls and collector.tls, with certificates made in the test.

Every test uses real certificates (tests/operator_helpers.make_ca, through `cryptography`), real gRPC servers on
loopback and the one function the sidecar dials a collector with (`gateway.rpc.net.collector_channel`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from agentaudit.v1 import collector_pb2, collector_pb2_grpc
from gateway import config, devenv
from gateway.config import CollectorConfig, load_collector_config
from gateway.config.collector import CollectorTlsConfig
from gateway.config.sidecar import CollectorTlsClientConfig
from gateway.errors import ConfigError
from gateway.rpc.net import collector_channel
from gateway.signing import Ed25519Signer, write_secret_file
from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, free_port, start_gateway, wait_serving
from tests.helpers import eventually
from tests.operator_helpers import make_ca
from tests.test_forwarding import DEADLINE_S, collector_rows, journal_rows, load, sidecar_dir

SEARCH_TOKEN = "tls-search-token"


def load_forward(tmp_path: Path, forward_yaml: str) -> config.Config:
    path = tmp_path / "agentaudit.yaml"
    path.write_text("forward:\n" + forward_yaml)
    return config.load(path)


# --- configuration -------------------------------------------------------------------------------------------


def test_forward_tls_paths_resolve_against_the_file(tmp_path: Path) -> None:
    cfg = load_forward(
        tmp_path,
        "  target: collector.audit.svc:7430\n"
        "  tls: {ca: tls/ca.crt, cert: tls/client.crt, key: tls/client.key, server_name: collector.internal}\n",
    )
    assert cfg.forward.tls == CollectorTlsClientConfig(
        ca=tmp_path / "tls/ca.crt",
        cert=tmp_path / "tls/client.crt",
        key=tmp_path / "tls/client.key",
        server_name="collector.internal",
    )


def test_an_empty_forward_tls_mapping_verifies_against_public_roots(tmp_path: Path) -> None:
    cfg = load_forward(tmp_path, "  target: collector.example.com:443\n  tls: {}\n")
    assert cfg.forward.tls == CollectorTlsClientConfig()


@pytest.mark.parametrize(
    ("forward_yaml", "message"),
    [
        pytest.param("  target: 10.0.0.5:7430\n", "forward.allow_insecure: true", id="plaintext-off-loopback"),
        pytest.param("  target: collector:7430\n", "collector:7430 is not a loopback", id="plaintext-host-name"),
        pytest.param(
            "  target: 10.0.0.5:7430\n  allow_insecure: false\n", "forward.tls is not set", id="explicit-false"
        ),
        pytest.param(
            "  target: 10.0.0.5:7430\n  tls: {ca: ca.crt, cert: c.crt}\n", "cert and key go together", id="cert-only"
        ),
        pytest.param("  target: 10.0.0.5:7430\n  tls: {ca: ca.crt, pin: x}\n", "unknown key(s) pin", id="unknown"),
        pytest.param("  target: 10.0.0.5:7430\n  tls: ca.crt\n", "forward.tls: expected a mapping", id="not-mapping"),
        pytest.param(
            "  target: 10.0.0.5:7430\n  tls: {server_name: 'a b'}\n", "forward.tls.server_name", id="bad-server-name"
        ),
        pytest.param("  target: embedded\n  tls: {ca: ca.crt}\n", "does not apply", id="tls-with-embedded"),
        pytest.param("  target: unix:///tmp/c.sock\n  tls: {ca: ca.crt}\n", "does not apply", id="tls-with-unix"),
    ],
)
def test_forward_transport_mistakes_are_refused_at_load(tmp_path: Path, forward_yaml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_forward(tmp_path, forward_yaml)


@pytest.mark.parametrize(
    "forward_yaml",
    [
        pytest.param("  target: 127.0.0.1:7430\n", id="loopback-v4"),
        pytest.param("  target: '[::1]:7430'\n", id="loopback-v6"),
        pytest.param("  target: localhost:7430\n", id="localhost"),
        pytest.param("  target: unix:///tmp/c.sock\n", id="unix"),
        pytest.param("  target: 10.0.0.5:7430\n  allow_insecure: true\n", id="allowed-explicitly"),
        pytest.param("  target: 10.0.0.5:7430\n  tls: {ca: ca.crt}\n", id="tls"),
    ],
)
def test_forward_transport_that_is_accepted(tmp_path: Path, forward_yaml: str) -> None:
    load_forward(tmp_path, forward_yaml)


def test_forward_tls_cannot_come_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="AGENTAUDIT_FORWARD_TLS: expected a mapping"):
        config.load(None, env={"AGENTAUDIT_FORWARD_TLS": "ca.crt"}, base_dir=tmp_path)


def collector_section(tmp_path: Path, extra: str) -> CollectorConfig:
    path = tmp_path / "collector.yaml"
    path.write_text(f"collector:\n  store: sqlite:///{tmp_path}/c.db\n  witness_key: w.key\n{extra}")
    return load_collector_config(path)


def test_collector_tls_paths_resolve_against_the_file(tmp_path: Path) -> None:
    cfg = collector_section(
        tmp_path, "  tls: {cert: tls/c.crt, key: tls/c.key, client_ca: ca.crt}\n  health_listen: ['0.0.0.0:7431']\n"
    )
    assert cfg.tls == CollectorTlsConfig(tmp_path / "tls/c.crt", tmp_path / "tls/c.key", tmp_path / "ca.crt")
    assert cfg.health_listen == ("0.0.0.0:7431",)
    assert collector_section(tmp_path, "  tls: {cert: c.crt, key: c.key}\n").tls == CollectorTlsConfig(
        tmp_path / "c.crt", tmp_path / "c.key"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param("  tls: {cert: c.crt}\n", "collector.tls.key: expected a path", id="no-key"),
        pytest.param("  tls: {key: c.key}\n", "collector.tls.cert: expected a path", id="no-cert"),
        pytest.param("  tls: c.crt\n", "collector.tls: expected a mapping", id="not-mapping"),
        pytest.param("  tls: {cert: a, key: b, ca: c}\n", "unknown key(s) ca", id="unknown-key"),
        pytest.param("  health_listen: [nowhere]\n", "collector.health_listen", id="bad-health"),
        pytest.param(
            "  listen: ['127.0.0.1:7430']\n  health_listen: ['127.0.0.1:7430']\n",
            "is also in collector.listen",
            id="health-overlaps",
        ),
    ],
)
def test_collector_tls_mistakes_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        collector_section(tmp_path, extra)


# --- the channel ---------------------------------------------------------------------------------------------


def server_credentials(certs: dict[str, Path], client_ca: Path | None) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(certs["server_key"].read_bytes(), certs["server_cert"].read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


@asynccontextmanager
async def tls_health_server(certs: dict[str, Path], *, client_ca: Path | None = None) -> AsyncIterator[str]:
    """A real gRPC server on loopback serving only grpc.health.v1 over TLS; yields its address."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    credentials = server_credentials(certs, client_ca)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def health_check(address: str, tls: CollectorTlsClientConfig | None) -> health_pb2.HealthCheckResponse:
    channel = collector_channel(address, tls)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=False)
    finally:
        await channel.close()


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "pki").mkdir()
    return make_ca(tmp_path / "pki", ["localhost", "127.0.0.1"], "sidecar-1")


@pytest.fixture
def other_ca(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "other").mkdir()
    return make_ca(tmp_path / "other", ["localhost", "127.0.0.1"], "sidecar-1")


def test_channel_verifies_the_collector_against_the_configured_ca(certs: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with tls_health_server(certs) as address:
            reply = await health_check(address, CollectorTlsClientConfig(ca=certs["ca_cert"]))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_channel_refuses_a_collector_signed_by_another_ca(certs: dict[str, Path], other_ca: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with tls_health_server(certs) as address:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_check(address, CollectorTlsClientConfig(ca=other_ca["ca_cert"]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_channel_refuses_a_certificate_for_another_name(certs: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with tls_health_server(certs) as address:
            tls = CollectorTlsClientConfig(ca=certs["ca_cert"], server_name="collector.elsewhere")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_check(address, tls)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_server_name_overrides_the_host_checked_in_the_certificate(tmp_path: Path) -> None:
    (tmp_path / "named").mkdir()
    named = make_ca(tmp_path / "named", ["collector.audit.svc"], "sidecar-1")  # no SAN for 127.0.0.1

    async def scenario() -> None:
        async with tls_health_server(named) as address:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_check(address, CollectorTlsClientConfig(ca=named["ca_cert"]))
            tls = CollectorTlsClientConfig(ca=named["ca_cert"], server_name="collector.audit.svc")
            assert (await health_check(address, tls)).status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_a_plaintext_channel_cannot_talk_to_a_tls_collector(certs: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with tls_health_server(certs) as address:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_check(address, None)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_client_certificate_is_presented_when_the_collector_requires_one(certs: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with tls_health_server(certs, client_ca=certs["ca_cert"]) as address:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_check(address, CollectorTlsClientConfig(ca=certs["ca_cert"]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            tls = CollectorTlsClientConfig(ca=certs["ca_cert"], cert=certs["client_cert"], key=certs["client_key"])
            assert (await health_check(address, tls)).status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_a_client_certificate_from_another_ca_is_refused(certs: dict[str, Path], other_ca: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with tls_health_server(certs, client_ca=certs["ca_cert"]) as address:
            tls = CollectorTlsClientConfig(
                ca=certs["ca_cert"], cert=other_ca["client_cert"], key=other_ca["client_key"]
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_check(address, tls)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_client_key_readable_by_others_is_refused(certs: dict[str, Path], mode: int) -> None:
    certs["client_key"].chmod(mode)
    tls = CollectorTlsClientConfig(ca=certs["ca_cert"], cert=certs["client_cert"], key=certs["client_key"])
    with pytest.raises(ConfigError, match=r"forward\.tls\.key: .* is accessible by group or others"):
        collector_channel("127.0.0.1:1", tls)


def test_missing_ca_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"forward\.tls\.ca: cannot read .*missing\.crt"):
        collector_channel("127.0.0.1:1", CollectorTlsClientConfig(ca=tmp_path / "missing.crt"))


# --- end to end: a collector process serving TLS, a sidecar process forwarding to it ----------------------------


class TlsCollector:
    """`agentaudit collector` in a subprocess with collector.tls, probed on its plaintext health-only listener."""

    def __init__(self, directory: Path, origin: tuple[str, Path], tls: dict[str, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.target = f"127.0.0.1:{free_port()}"
        self.health = f"127.0.0.1:{free_port()}"
        witness = Ed25519Signer.generate("collector.test")
        write_secret_file(directory / "witness.key", witness.encode_private() + "\n")
        self.config = {
            "collector": {
                "listen": [self.target],
                "health_listen": [self.health],
                "store": f"sqlite:///{directory / 'collector.db'}",
                "witness_key": "witness.key",
                "origins": [{"origin": origin[0], "keys": [str(origin[1])]}],
                "tls": tls,
                "search_tokens": [hashlib.sha256(SEARCH_TOKEN.encode()).hexdigest()],
            }
        }
        (directory / "collector.yaml").write_text(yaml.safe_dump(self.config))
        self.log_path = directory / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*AGENTAUDIT, "collector", "--config", str(self.directory / "collector.yaml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def size(self, origin: str, certs: dict[str, Path]) -> int:
        credentials = grpc.ssl_channel_credentials(
            certs["ca_cert"].read_bytes(), certs["client_key"].read_bytes(), certs["client_cert"].read_bytes()
        )
        with grpc.secure_channel(self.target, credentials) as channel:
            reply = collector_pb2_grpc.CollectorServiceStub(channel).GetCheckpoint(
                collector_pb2.GetCheckpointRequest(origin=origin), timeout=10
            )
        return int(reply.size)


def tls_sidecar_dir(directory: Path, forward_tls: dict[str, str] | None) -> tuple[Path, str]:
    """A dev directory forwarding to a collector (target set later) with ``forward.tls``."""
    d, origin = sidecar_dir(directory, "127.0.0.1:1")
    path = d / devenv.CONFIG_FILE
    cfg = yaml.safe_load(path.read_text())
    if forward_tls is not None:
        cfg["forward"]["tls"] = forward_tls
    path.write_text(yaml.safe_dump(cfg))
    return d, origin


def point_at(directory: Path, target: str) -> None:
    path = directory / devenv.CONFIG_FILE
    cfg = yaml.safe_load(path.read_text())
    cfg["forward"]["target"] = target
    path.write_text(yaml.safe_dump(cfg))


@contextmanager
def fleet(
    tmp_path: Path, certs: dict[str, Path], *, forward_tls: dict[str, str] | None, client_ca: bool
) -> Iterator[tuple[TlsCollector, RunningGateway, str]]:
    """A TLS collector and one sidecar forwarding to it; both stopped afterwards."""
    d, origin = tls_sidecar_dir(tmp_path / "s", forward_tls)
    tls = {"cert": str(certs["server_cert"]), "key": str(certs["server_key"])}
    if client_ca:
        tls["client_ca"] = str(certs["ca_cert"])
    collector = TlsCollector(tmp_path / "c", (origin, d / "signing.pub"), tls)
    wait_serving(collector.health, proc=collector.start())
    point_at(d, collector.target)
    try:
        gw = start_gateway(d, forward=True)
    except BaseException:
        collector.stop()
        raise
    try:
        yield collector, gw, origin
    finally:
        gw.stop()
        collector.stop()


def client_tls(certs: dict[str, Path], *, with_cert: bool = True) -> dict[str, str]:
    spec = {"ca": str(certs["ca_cert"])}
    if with_cert:
        spec |= {"cert": str(certs["client_cert"]), "key": str(certs["client_key"])}
    return spec


def test_forwarding_over_mutual_tls_delivers_the_journal_byte_for_byte(tmp_path: Path, certs: dict[str, Path]) -> None:
    with fleet(tmp_path, certs, forward_tls=client_tls(certs), client_ca=True) as (collector, gw, origin):
        load(gw, 25, "run_tls")
        eventually(lambda: collector.size(origin, certs) >= 25, timeout=DEADLINE_S, message="25 entries forwarded")
        assert "over TLS with client certificates" in collector.log()
    local = journal_rows(gw.journal_path)
    remote = collector_rows(collector.directory / "collector.db", origin)
    assert len(remote) >= 25 and remote == local[: len(remote)]


def test_cli_search_reaches_a_mutual_tls_collector_with_the_tls_flags(tmp_path: Path, certs: dict[str, Path]) -> None:
    def search(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AGENTAUDIT, "search", "--collector", collector.target, "--run-id", "run_cli_tls", "--json", *flags],
            check=False, capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "AGENTAUDIT_COLLECTOR_TOKEN": SEARCH_TOKEN},
        )  # fmt: skip

    with fleet(tmp_path, certs, forward_tls=client_tls(certs), client_ca=True) as (collector, gw, origin):
        load(gw, 6, "run_cli_tls")
        eventually(lambda: collector.size(origin, certs) >= 6, timeout=DEADLINE_S, message="6 entries forwarded")
        tls = ["--tls-ca", str(certs["ca_cert"]), "--tls-cert", str(certs["client_cert"])]
        found = search(*tls, "--tls-key", str(certs["client_key"]))
        assert found.returncode == 0, found.stderr
        assert len(found.stdout.splitlines()) >= 6 and all("run_cli_tls" in line for line in found.stdout.splitlines())
        plaintext = search()  # the collector serves TLS only: a plaintext search cannot reach it
        assert plaintext.returncode == 1 and collector.target in plaintext.stderr
        half = search(*tls)  # a certificate without its key is a usage error, before any connection
        assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr


def test_a_sidecar_trusting_another_ca_forwards_nothing(
    tmp_path: Path, certs: dict[str, Path], other_ca: dict[str, Path]
) -> None:
    with fleet(tmp_path, certs, forward_tls=client_tls(other_ca), client_ca=False) as (collector, gw, origin):
        load(gw, 5, "run_wrong_ca")  # deciding goes on; only forwarding is refused
        eventually(lambda: "forwarding failed (2 in a row)" in gw.log(), timeout=DEADLINE_S, message="2 failures")
        assert "certificate signature failure" in gw.log()  # refused by the sidecar's verification, not a network
        assert collector.size(origin, certs) == 0
    assert collector_rows(collector.directory / "collector.db", origin) == []


def test_a_sidecar_without_a_client_certificate_is_refused_when_client_ca_is_set(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    with fleet(tmp_path, certs, forward_tls=client_tls(certs, with_cert=False), client_ca=True) as (
        collector,
        gw,
        origin,
    ):
        load(gw, 5, "run_no_cert")
        eventually(lambda: "forwarding failed (2 in a row)" in gw.log(), timeout=DEADLINE_S, message="2 failures")
        assert collector.size(origin, certs) == 0


def test_a_plaintext_sidecar_is_refused_by_a_tls_collector(tmp_path: Path, certs: dict[str, Path]) -> None:
    with fleet(tmp_path, certs, forward_tls=None, client_ca=False) as (collector, gw, origin):
        load(gw, 5, "run_plaintext")
        eventually(lambda: "forwarding failed (2 in a row)" in gw.log(), timeout=DEADLINE_S, message="2 failures")
        assert collector.size(origin, certs) == 0


def test_collector_refuses_to_start_with_a_group_readable_tls_key(tmp_path: Path, certs: dict[str, Path]) -> None:
    certs["server_key"].chmod(0o640)
    collector = TlsCollector(tmp_path / "c", ("o", tmp_path / "none.pub"), {"cert": "x", "key": "y"})
    collector.config["collector"].pop("origins")
    collector.config["collector"]["tls"] = {"cert": str(certs["server_cert"]), "key": str(certs["server_key"])}
    (collector.directory / "collector.yaml").write_text(yaml.safe_dump(collector.config))
    proc = collector.start()
    assert proc.wait(30) != 0
    assert "collector.tls.key" in collector.log() and "accessible by group or others" in collector.log()
    assert "BEGIN PRIVATE KEY" not in collector.log()


def test_sidecar_refuses_to_start_with_a_group_readable_client_key(tmp_path: Path, certs: dict[str, Path]) -> None:
    certs["client_key"].chmod(0o640)
    d, _ = tls_sidecar_dir(tmp_path / "s", client_tls(certs))
    point_at(d, "127.0.0.1:1")
    with pytest.raises(RuntimeError) as caught:
        start_gateway(d, forward=True)
    assert "forward.tls.key" in str(caught.value) and "accessible by group or others" in str(caught.value)
