"""The collector's fleet operator API, end to end: two real collector replicas on one PostgreSQL database, real gRPC
listeners with bearer tokens, approvals forwarded through Ingest, and the CLI's ``--collector``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentaudit.v1 import collector_pb2, collector_pb2_grpc, gateway_pb2, operator_pb2, operator_pb2_grpc
from gateway.collector.app import Collector
from gateway.config import CollectorConfig, OperatorConfig, OperatorTlsConfig, OperatorTokenConfig
from gateway.signing import Ed25519Signer, write_secret_file
from tests.conftest import run_cli
from tests.fleet_helpers import CONTROL, ORIGIN, SidecarJournal, journal_key
from tests.operator_helpers import make_ca
from tests.test_collector_store import checkpoint

TOKENS = {"alice": ("approver",), "bob": ("approver",), "carol": ("admin",), "dave": ("auditor",)}
TOKENS.update({f"approver-{i}": ("approver",) for i in range(20)})
TOKENS["Agent-Runner"] = ("approver",)  # the run's own actor (agent-runner), spelled another way
WITNESS = Ed25519Signer("fleet.test/witness", bytes([5]) * 32)


def token_of(identity: str) -> str:
    return f"tok-{identity}-0123456789"


@dataclass
class Replica:
    collector: Collector
    loop: asyncio.AbstractEventLoop
    ingest: str
    operator: str


@contextmanager
def replica(directory: Path, store: str, name: str, tls: OperatorTlsConfig | None = None) -> Iterator[Replica]:
    """A real :class:`Collector` with its fleet operator API, serving from its own event loop thread."""
    directory.mkdir(exist_ok=True)
    write_secret_file(directory / "witness.key", WITNESS.encode_private() + "\n")
    write_secret_file(directory / "control.key", CONTROL.encode_private() + "\n")
    (directory / "sidecar.pub").write_text(journal_key(ORIGIN).verifier.encode() + "\n")
    tokens = tuple(
        OperatorTokenConfig(identity, roles, hashlib.sha256(token_of(identity).encode()).hexdigest())
        for identity, roles in TOKENS.items()
    )
    config = CollectorConfig(
        listen=("127.0.0.1:0",),
        store=store,
        witness_key=directory / "witness.key",
        control_key=directory / "control.key",
        origins=((ORIGIN, (directory / "sidecar.pub",)),),
        operator=OperatorConfig(listen=("127.0.0.1:0",), tokens=tokens, tls=tls),
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name=f"collector-{name}")
    thread.start()
    collector = Collector(config)
    try:
        asyncio.run_coroutine_threadsafe(collector.start(), loop).result(30)
        yield Replica(collector, loop, collector.bound[0], collector.operator_bound[0])
    finally:
        asyncio.run_coroutine_threadsafe(collector.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def replicas(tmp_path: Path, postgres_database: str) -> Iterator[tuple[Replica, Replica]]:
    with ExitStack() as stack:
        a = stack.enter_context(replica(tmp_path / "a", postgres_database, "a"))
        b = stack.enter_context(replica(tmp_path / "b", postgres_database, "b"))
        yield a, b


class Operator:
    """An operator's stub on one replica's operator listener."""

    def __init__(self, address: str, identity: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = operator_pb2_grpc.OperatorServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token_of(identity)}")]

    def __call__(self, method: str, **fields: object) -> object:
        request = getattr(operator_pb2, f"{method}Request")(**fields)
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)


def forward(address: str, journal: SidecarJournal) -> None:
    """What the sidecar's forwarder does: the whole journal so far as one batch, with its checkpoint."""
    with grpc.insecure_channel(address) as channel:
        collector_pb2_grpc.CollectorServiceStub(channel).Ingest(
            collector_pb2.IngestRequest(
                origin=ORIGIN,
                entries=[collector_pb2.JournalEntry(seq=q, entry=e, signature=s) for q, e, s in journal.rows],
                checkpoint=checkpoint(journal.rows, journal.key),
            ),
            timeout=30,
        )


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    raise AssertionError("the call succeeded")


def test_an_approval_forwarded_to_replica_a_is_listed_and_resolved_through_replica_b(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    journal = SidecarJournal(journal_key())
    journal.open_approval("apr_fwd", required=2, approvers=("role:approver",))
    forward(a.ingest, journal)

    dave = Operator(b.operator, "dave")
    [listed] = dave("ListApprovals", agent_id="billing-bot", action="payments.refund").approvals  # type: ignore[attr-defined]
    assert (listed.approval_id, listed.origin, listed.approvals_required) == ("apr_fwd", ORIGIN, 2)
    assert listed.args["amount"] == 1200 and list(listed.redacted_paths) == ["args.card"]
    assert listed.state == gateway_pb2.APPROVAL_STATE_PENDING and listed.policy_version == "sha256:abc"
    assert dave("ListApprovals", origin="elsewhere").approvals == []  # type: ignore[attr-defined]

    first = Operator(b.operator, "alice")("GrantApproval", approval_id="apr_fwd", comment="ok")
    assert first.approval.state == gateway_pb2.APPROVAL_STATE_PENDING  # type: ignore[attr-defined]
    second = Operator(a.operator, "bob")("GrantApproval", approval_id="apr_fwd")
    approval = second.approval  # type: ignore[attr-defined]
    assert approval.state == gateway_pb2.APPROVAL_STATE_GRANTED and approval.resolved_by == "bob"
    assert [(v.approver, v.grant, v.channel) for v in approval.votes] == [("alice", True, "cli"), ("bob", True, "cli")]
    late = Operator(a.operator, "carol")
    code, _ = code_of(lambda: late("DenyApproval", approval_id="apr_fwd", comment="too late"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_deny_without_a_comment_is_invalid_argument_naming_the_field(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    journal = SidecarJournal(journal_key())
    journal.open_approval("apr_deny")
    forward(a.ingest, journal)
    alice = Operator(a.operator, "alice")
    try:
        alice("DenyApproval", approval_id="apr_deny", comment="")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        assert status is not None
        bad = error_details_pb2.BadRequest()
        status.details[0].Unpack(bad)
        assert [v.field for v in bad.field_violations] == ["comment"]
    else:
        raise AssertionError("a deny without a comment was accepted")


def test_roles_and_credentials_are_enforced_and_refusals_logged_without_the_token(
    replicas: tuple[Replica, Replica], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = replicas
    journal = SidecarJournal(journal_key())
    journal.open_approval("apr_roles")
    forward(a.ingest, journal)
    caplog.set_level(logging.WARNING, logger="gateway.collector.operator_api")
    dave, alice = Operator(a.operator, "dave"), Operator(a.operator, "alice")
    assert code_of(lambda: dave("GrantApproval", approval_id="apr_roles"))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: alice("EngageKillSwitch", scope=1, reason="x"))[0] == grpc.StatusCode.PERMISSION_DENIED
    forged = Operator(a.operator, "mallory")
    assert code_of(lambda: forged("ListApprovals"))[0] == grpc.StatusCode.UNAUTHENTICATED
    anonymous = operator_pb2_grpc.OperatorServiceStub(grpc.insecure_channel(a.operator))
    code, _ = code_of(lambda: anonymous.ListApprovals(operator_pb2.ListApprovalsRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    text = caplog.text
    assert "GrantApproval refused (permission_denied) for dave" in text
    assert "ListApprovals refused (unauthenticated)" in text
    assert token_of("mallory") not in text and token_of("dave") not in text
    assert code_of(lambda: dave("GetPolicy"))[0] == grpc.StatusCode.UNIMPLEMENTED


def test_twenty_concurrent_answers_across_both_replicas_resolve_once(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    journal = SidecarJournal(journal_key())
    journal.open_approval("apr_race", required=2)
    forward(b.ingest, journal)
    operators = [Operator((a, b)[i % 2].operator, f"approver-{i}") for i in range(20)]

    def answer(i: int) -> str:
        method = "DenyApproval" if i % 4 == 0 else "GrantApproval"
        try:
            operators[i](method, approval_id="apr_race", comment=f"answer {i}")
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(answer, range(20)))
    accepted = outcomes.count("OK")
    assert accepted in (1, 2) and outcomes.count("FAILED_PRECONDITION") == 20 - accepted
    pending = Operator(a.operator, "dave")("ListApprovals").approvals  # type: ignore[attr-defined]
    assert "apr_race" not in [x.approval_id for x in pending]
    fleet = a.collector.fleet
    assert fleet is not None
    final = asyncio.run_coroutine_threadsafe(fleet.get_approval("apr_race"), a.loop).result(10)
    assert final.state in ("granted", "denied") and len(final.votes) == accepted
    acts = asyncio.run_coroutine_threadsafe(fleet.acts_since(0, ORIGIN), a.loop).result(10)
    assert len([x for x in acts if x.fields.get("approval_id") == "apr_race"]) == accepted


def test_fleet_kill_switches_through_both_replicas(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    carol = Operator(a.operator, "carol")
    engaged = carol("EngageKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT, target="t_42", reason="fraud")
    assert engaged.kill_switch.via == CONTROL.name and engaged.kill_switch.engaged_by == "carol"  # type: ignore[attr-defined]
    listed = Operator(b.operator, "dave")("ListKillSwitches").kill_switches  # type: ignore[attr-defined]
    assert [(s.scope, s.target, s.reason) for s in listed] == [(operator_pb2.KILL_SWITCH_SCOPE_TENANT, "t_42", "fraud")]
    code, detail = code_of(
        lambda: carol("EngageKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_GLOBAL, target="x", reason="r")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "target" in detail
    Operator(b.operator, "carol")("ReleaseKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_TENANT, target="t_42")
    assert Operator(a.operator, "dave")("ListKillSwitches").kill_switches == []  # type: ignore[attr-defined]


def test_the_cli_talks_to_the_fleet_with_collector(replicas: tuple[Replica, Replica], tmp_path: Path) -> None:
    a, b = replicas
    journal = SidecarJournal(journal_key())
    journal.open_approval("apr_cli", tenant="t_cli", required=2)
    journal.open_approval("apr_cli_deny", tenant="t_cli")
    forward(a.ingest, journal)
    tokens = {}
    for who in ("alice", "bob", "carol"):
        tokens[who] = tmp_path / f"{who}.token"
        write_secret_file(tokens[who], token_of(who) + "\n")

    def cli(who: str, *args: str, via: Replica = b) -> tuple[int, str, str]:
        done = run_cli(*args, "--collector", via.operator, "--token-file", str(tokens[who]))
        return done.returncode, done.stdout, done.stderr

    code, out, _ = cli("alice", "approvals", "--tenant", "t_cli", "--json")
    records = {r["approval_id"]: r for r in map(json.loads, out.splitlines())}
    assert code == 0 and set(records) == {"apr_cli", "apr_cli_deny"}
    assert records["apr_cli"]["origin"] == ORIGIN and records["apr_cli"]["approvals_required"] == 2
    code, out, _ = cli("alice", "approvals", "--rule", "big-refunds", "--agent", "billing-bot", "--min-age", "0")
    assert code == 0 and "apr_cli" in out and f"origin {ORIGIN}; 0 of 2 approval(s)" in out

    code, out, _ = cli("alice", "approve", "apr_cli", "--comment", "first look")
    assert code == 0 and "now pending (1 of 2 approvals" in out
    code, _, err = cli("alice", "approve", "apr_cli", via=a)
    assert code == 1 and "FAILED_PRECONDITION" in err and "already approved" in err
    code, out, _ = cli("bob", "approve", "apr_cli", via=a)
    assert code == 0 and "now granted (2 of 2 approvals" in out
    code, _, err = cli("bob", "deny", "apr_cli_deny")
    assert code == 2 and "INVALID_ARGUMENT" in err and "justification" in err
    code, out, _ = cli("bob", "deny", "apr_cli_deny", "--comment", "wrong customer")
    assert code == 0 and "now denied" in out

    code, out, _ = cli("carol", "kill-switch", "engage", "--scope", "tenant", "--target", "t_42", "--reason", "fraud")
    assert code == 0 and "engaged at tenant:t_42 (recorded for the fleet by the collector" in out
    code, out, _ = cli("alice", "kill-switch", "list", "--json", via=a)
    assert code == 0 and [json.loads(line)["target"] for line in out.splitlines()] == ["t_42"]
    code, out, _ = cli("carol", "kill-switch", "release", "--scope", "tenant", "--target", "t_42", "--reason", "over")
    assert code == 0 and "released at tenant:t_42" in out
    code, out, _ = cli("alice", "kill-switch", "status")
    assert code == 0 and "no kill switch engaged" in out


def test_control_key_defaults_to_the_witness_key_and_the_ttl_to_60_s(tmp_path: Path) -> None:
    from gateway.config.collector import parse_collector_config  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415

    base = {"store": "sqlite:///c.db", "witness_key": "w.key"}
    default = parse_collector_config(dict(base), tmp_path, {})
    assert (default.control_key, default.control_ttl_s) == (None, 60.0)
    custom = parse_collector_config({**base, "control_key": "control.key", "control_ttl_s": 5}, tmp_path, {})
    assert (custom.control_key, custom.control_ttl_s) == (tmp_path / "control.key", 5.0)
    for bad in ({"control_key": ""}, {"control_ttl_s": 0}, {"control_ttl_s": "soon"}):
        with pytest.raises(ConfigError, match=r"collector\.control_"):
            parse_collector_config({**base, **bad}, tmp_path, {})


def test_self_approval_and_undecodable_text_are_refused_at_the_edge(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    journal = SidecarJournal(journal_key())
    journal.open_approval("apr_self", actor="agent-runner")
    forward(a.ingest, journal)
    code, detail = code_of(lambda: Operator(b.operator, "Agent-Runner")("GrantApproval", approval_id="apr_self"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "cannot approve it" in detail
    alice, carol = Operator(a.operator, "alice"), Operator(a.operator, "carol")
    for call in (
        lambda: alice("DenyApproval", approval_id="apr_self", comment="no\x00pe"),
        lambda: alice("ListApprovals", tenant_id="t\x00"),
        lambda: carol("EngageKillSwitch", scope=operator_pb2.KILL_SWITCH_SCOPE_GLOBAL, reason="r\x00"),
        lambda: carol("EngageKillSwitch", scope=0, reason="why"),
    ):
        assert code_of(call)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: alice("GrantApproval", approval_id="apr_\x00"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: alice("GrantApproval", approval_id="apr_nope"))[0] == grpc.StatusCode.NOT_FOUND


def test_mutual_tls_identifies_the_fleet_operator_by_certificate(tmp_path: Path) -> None:
    certs = make_ca(tmp_path, ["127.0.0.1", "localhost"], client_cn="erin")
    tls = OperatorTlsConfig(
        certs["server_cert"], certs["server_key"], certs["ca_cert"], identities=(("erin", ("approver",)),)
    )
    with replica(tmp_path / "c", f"sqlite:///{tmp_path / 'c.db'}", "tls", tls) as r:
        journal = SidecarJournal(journal_key())
        journal.open_approval("apr_tls")
        forward(r.ingest, journal)
        port = r.operator.rsplit(":", 1)[1]
        tls_flags = ["--tls-ca", str(certs["ca_cert"]), "--tls-cert", str(certs["client_cert"])]
        tls_flags += ["--tls-key", str(certs["client_key"]), "--token-file", "/dev/null"]
        done = run_cli("approve", "apr_tls", "--collector", f"localhost:{port}", *tls_flags)
        assert done.returncode == 0, done.stderr
        assert "granted by erin at the collector" in done.stdout
        no_cert = run_cli(
            "approvals", "--collector", f"localhost:{port}", "--tls-ca", str(certs["ca_cert"]), "--timeout", "3"
        )
        assert no_cert.returncode != 0, "the fleet API's TLS listener requires a client certificate"


def test_agentaudit_collector_serves_the_fleet_api_from_its_config_file(tmp_path: Path) -> None:
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from tests.conftest import AGENTAUDIT, ROOT, free_port, wait_serving  # noqa: PLC0415

    write_secret_file(tmp_path / "witness.key", WITNESS.encode_private() + "\n")
    write_secret_file(tmp_path / "control.key", CONTROL.encode_private() + "\n")
    write_secret_file(tmp_path / "carol.token", token_of("carol") + "\n")
    ingest, operator = free_port(), free_port()
    digest = hashlib.sha256(token_of("carol").encode()).hexdigest()
    (tmp_path / "collector.yaml").write_text(
        f"""collector:
  listen: ["127.0.0.1:{ingest}"]
  store: sqlite:///{tmp_path / "collector.db"}
  witness_key: witness.key
  control_key: control.key
  control_ttl_s: 30
  operator:
    listen: ["127.0.0.1:{operator}"]
    tokens: [{{identity: carol, roles: [admin], sha256: "{digest}"}}]
"""
    )
    log = (tmp_path / "collector.log").open("wb")
    proc = subprocess.Popen(
        [*AGENTAUDIT, "collector", "--config", str(tmp_path / "collector.yaml")], cwd=ROOT, stdout=log, stderr=log
    )
    try:
        wait_serving(f"127.0.0.1:{ingest}", proc=proc)
        wait_serving(f"127.0.0.1:{operator}", proc=proc)  # health is served beside the fleet API
        flags = ["--collector", f"127.0.0.1:{operator}", "--token-file", str(tmp_path / "carol.token")]
        done = run_cli("kill-switch", "engage", "--scope", "global", "--reason", "drill", *flags)
        assert done.returncode == 0, done.stderr
        listed = run_cli("kill-switch", "list", "--json", *flags)
        [switch] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (switch["scope"], switch["engaged_by"], switch["via"]) == ("global", "carol", CONTROL.name)
        assert run_cli("approvals", *flags).stdout.strip() == "no pending approvals"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()
