"""``agentaudit mcp http`` with bearer-JWT identity: a real SDK client carrying a token signed here → the proxy
(a subprocess) → the test server, against a real sidecar. The identity journaled is the token's claims; a request
without a valid token is refused 401 before anything is decided.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import OKPAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, free_port, start_gateway
from tests.test_mcp_proxy import POLICY, SERVER, events, wait_port

pytestmark = pytest.mark.anyio

ISSUER = "https://idp.example.test"
AUDIENCE = "agentaudit-mcp"
CLAIMS = ["--claim", "tenant=org_id", "--claim", "actor=sub", "--claim", "agent=azp"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    directory = Path(tmp_path_factory.mktemp("mcpjwt"))
    (directory / "policy.yaml").write_text(POLICY)
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


class Issuer:
    """A token issuer for the tests: one Ed25519 key published as a JWKS, one P-256 key as a PEM."""

    def __init__(self, directory: Path) -> None:
        self.ed_key = ed25519.Ed25519PrivateKey.generate()
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(OKPAlgorithm.to_jwk(self.ed_key.public_key()))
        self.jwks = directory / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "EdDSA", "use": "sig"}]}))
        self.pem = directory / "issuer.pem"
        self.pem.write_bytes(
            self.ec_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, *, key: str = "jwks", lifetime_s: float = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime_s, **claims}
        if key == "jwks":
            return jwt.encode(body, self.ed_key, algorithm="EdDSA", headers={"kid": "k1"})
        return jwt.encode(body, self.ec_key, algorithm="ES256")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(Path(tmp_path_factory.mktemp("issuer")))


@contextmanager
def proxy(gw: RunningGateway, tmp: Path, key_flags: list[str]) -> Iterator[tuple[str, Path]]:
    """The test server over HTTP and ``agentaudit mcp http`` with JWT flags in front of it: (proxy URL, calls)."""
    calls = tmp / "calls.txt"
    env = {**os.environ, "MCP_TEST_CALLS_FILE": str(calls)}
    upstream_port, proxy_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(tmp / "http.log", "ab") as log:
            procs.append(subprocess.Popen([*SERVER, "http", str(upstream_port)], env=env, cwd=ROOT, stderr=log))
            wait_port(upstream_port, procs[0])
            command = [
                *AGENTAUDIT,
                "mcp",
                "http",
                "--sidecar",
                gw.unix_target,
                "--server-name",
                "tools",
                "--state-dir",
                str(tmp / "proxy-state"),
                "--listen",
                f"127.0.0.1:{proxy_port}",
                "--upstream",
                f"http://127.0.0.1:{upstream_port}/mcp",
                "--jwt-issuer",
                ISSUER,
                "--jwt-audience",
                AUDIENCE,
                *key_flags,
                *CLAIMS,
            ]
            procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stderr=log))
            wait_port(proxy_port, procs[1])
        yield f"http://127.0.0.1:{proxy_port}/mcp", calls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)


@pytest.fixture(scope="module")
def proxies(
    sidecar: RunningGateway, issuer: Issuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[str, Path]]]:
    """Two proxies, one verifying with the JWKS file and one with the PEM key: key → (URL, calls file)."""
    with (
        proxy(sidecar, Path(tmp_path_factory.mktemp("jwks")), ["--jwt-jwks", str(issuer.jwks)]) as by_jwks,
        proxy(sidecar, Path(tmp_path_factory.mktemp("pem")), ["--jwt-key", str(issuer.pem)]) as by_pem,
    ):
        yield {"jwks": by_jwks, "pem": by_pem}


def calls_of(calls: Path, run_marker: str) -> list[str]:
    return [line for line in (calls.read_text().splitlines() if calls.exists() else []) if run_marker in line]


@pytest.mark.parametrize("key", ["jwks", "pem"])
@pytest.mark.parametrize("revision", ["2025-11-25", "2026-07-28"])
async def test_identity_comes_from_the_verified_token_claims(
    sidecar: RunningGateway, issuer: Issuer, proxies: dict[str, tuple[str, Path]], key: str, revision: str
) -> None:
    tenant, run_id, record = f"org_{key}_{revision}", f"run_jwt_{key}_{revision}", f"j_{key}_{revision}"
    token = issuer.token(key=key, org_id=tenant, sub="alice@example.test", azp="mcp-agent")
    url, calls = proxies[key]
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}", "Agentaudit-Run-Id": run_id})
    async with http, Client(streamable_http_client(url, http_client=http), mode=_mode(revision)) as client:
        result = await client.call_tool("read_record", {"id": record})
    assert not result.is_error
    pre = next(e for e in events(sidecar, run_id) if e["kind"] == "pre_exec")
    assert (pre["tenant_id"], pre["agent_id"], pre["actor"]["id"]) == (tenant, "mcp-agent", "alice@example.test")
    assert pre["decision"] == "allow"
    assert calls_of(calls, record) == [f"read_record {record}"]


def _mode(revision: str) -> str:
    return "legacy" if revision == "2025-11-25" else revision


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "read_record", "arguments": {"id": "refused"}},
}


@pytest.mark.parametrize(
    ("authorization", "refusal"),
    [
        pytest.param(lambda i: None, "bearer token is required", id="no-token"),
        pytest.param(lambda i: "Basic dXNlcjpwdw==", "bearer token is required", id="not-bearer"),
        pytest.param(lambda i: "Bearer not.a.jwt", "malformed", id="garbage"),
        pytest.param(lambda i: "Bearer " + i.token(lifetime_s=-120, org_id="o", azp="a"), "expired", id="expired"),
        pytest.param(
            lambda i: (
                "Bearer " + jwt.encode({"iss": ISSUER, "aud": "other", "exp": time.time() + 60}, i.ed_key, "EdDSA")
            ),
            "another audience",
            id="wrong-audience",
        ),
        pytest.param(
            lambda i: (
                "Bearer "
                + jwt.encode({"iss": "https://evil.test", "aud": AUDIENCE, "exp": time.time() + 60}, i.ed_key, "EdDSA")
            ),
            "another issuer",
            id="wrong-issuer",
        ),
        pytest.param(
            lambda i: (
                "Bearer "
                + jwt.encode(
                    {"iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60, "org_id": "o", "azp": "mcp-agent"},
                    ed25519.Ed25519PrivateKey.generate(),
                    "EdDSA",
                    headers={"kid": "k1"},
                )
            ),
            "invalid token",
            id="signed-by-another-key",
        ),
        pytest.param(
            lambda i: (
                "Bearer "
                + jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60, "org_id": "o"}, None, "none")
            ),
            "invalid token",
            id="alg-none",
        ),
        pytest.param(
            lambda i: "Bearer " + i.token(azp="mcp-agent", sub="s"), "lacks the claim 'org_id'", id="no-tenant"
        ),
    ],
)
async def test_request_without_a_valid_token_is_refused_401_before_anything_is_decided(
    sidecar: RunningGateway,
    issuer: Issuer,
    proxies: dict[str, tuple[str, Path]],
    request: pytest.FixtureRequest,
    authorization: Any,
    refusal: str,
) -> None:
    run_id = f"run_refused_{request.node.callspec.id}"
    header = authorization(issuer)
    headers = {"Accept": "application/json, text/event-stream", "Agentaudit-Run-Id": run_id}
    if header is not None:
        headers["Authorization"] = header
    url, calls = proxies["jwks"]
    async with httpx.AsyncClient() as http:
        replies = [await http.post(url, json=body, headers=headers) for body in (INITIALIZE, CALL)]
    assert [r.status_code for r in replies] == [401, 401]
    assert replies[0].headers["www-authenticate"].startswith('Bearer realm="agentaudit", error="invalid_token"')
    assert refusal in replies[0].json()["error_description"]
    assert events(sidecar, run_id) == [] and calls_of(calls, "refused") == []
