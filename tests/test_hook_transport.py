"""The hook's own gRPC transport (agentaudit_client.hooks.unary, h2 without grpc): its answers and its failures,
through the real `agentaudit hook` command against a real sidecar, a real gRPC server answering errors, and a
proxy that cuts the real sidecar's answer short. Each failure must deny the call (fail closed) naming the same
error class the gRPC client would."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentaudit_client.hooks import unary
from gateway import devenv
from tests.conftest import ROOT, RunningGateway, free_port, start_gateway
from tests.framework_helpers import bodies, grant_when_pending
from tests.operator_helpers import prepare_dir
from tests.test_hooks import AGENTS, POLICY, hook, hook_sidecar, payload, project, verdict

__all__ = ["hook_sidecar", "project"]  # fixtures shared with test_hooks


def _decided(agent: str, data: dict[str, Any], target: str, **env: str) -> tuple[str, str]:
    return verdict(agent, hook(agent, data, target, **env))


@pytest.mark.parametrize("agent", AGENTS)
def test_both_transports_give_every_agent_the_same_answers(
    agent: str, hook_sidecar: RunningGateway, project: Path
) -> None:
    target = hook_sidecar.unix_target
    answers = {}
    for transport in ("h2", "grpc"):
        env = {"AGENTAUDIT_HOOK_TRANSPORT": transport}
        answers[transport] = [
            hook(agent, payload(f"{agent}-pre", project, command), target, **env)
            for command in ("ls", "git push --force", "make deploy")
        ]
    for h2_answer, grpc_answer in zip(answers["h2"], answers["grpc"], strict=True):
        h2_verdict, grpc_verdict = verdict(agent, h2_answer), verdict(agent, grpc_answer)
        assert h2_verdict[0] == grpc_verdict[0]
        # Event and approval ids differ between the two calls; the words around them do not.
        assert h2_verdict[1].split("(")[0] == grpc_verdict[1].split("(")[0]
    assert [verdict(agent, a)[0] for a in answers["h2"]] == ["allow", "deny", "deny"]
    decisions = [b["decision"] for b in bodies(hook_sidecar.journal_path, "pre_exec")]
    assert decisions == ["allow", "stop", "approval_required"] * 2


def test_a_tcp_sidecar_is_reached_too(hook_sidecar: RunningGateway, project: Path) -> None:
    assert _decided("claude-code", payload("claude-code-pre", project), hook_sidecar.tcp_target)[0] == "allow"
    assert hook("claude-code", payload("claude-code-post", project), hook_sidecar.tcp_target) == {}
    (post,) = bodies(hook_sidecar.journal_path, "post_exec")
    assert post["status"] == "succeeded"


@pytest.fixture
def roomy_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The hook sidecar, taking arguments up to 4 MiB (server.max_args_bytes; 64 KiB by default)."""
    directory = Path(tmp_path_factory.mktemp("hkbig"))
    prepare_dir(directory, policy=POLICY)
    config_path = directory / devenv.CONFIG_FILE
    config = yaml.safe_load(config_path.read_text())
    config.setdefault("server", {})["max_args_bytes"] = 4 * 1024 * 1024
    config_path.write_text(yaml.safe_dump(config))
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


def test_arguments_larger_than_the_flow_control_window_are_sent_whole(
    roomy_sidecar: RunningGateway, project: Path
) -> None:
    # A Write of a 1 MB file: the request goes in window-sized pieces as the server opens its window.
    data = payload("claude-code-pre", project, "cat > big.txt")
    data["tool_input"]["content"] = "x" * 1_000_000
    assert _decided("claude-code", data, roomy_sidecar.unix_target)[0] == "allow"
    (pre,) = bodies(roomy_sidecar.journal_path, "pre_exec")
    assert pre["decision"] == "allow"


def test_an_approval_granted_while_the_hook_waits_is_decided_again_on_the_same_connection(
    hook_sidecar: RunningGateway, project: Path
) -> None:
    granter = grant_when_pending(hook_sidecar)
    decision, _ = _decided(
        "claude-code",
        payload("claude-code-pre", project, "make deploy"),
        hook_sidecar.unix_target,
        AGENTAUDIT_HOOK_APPROVAL_WAIT="30",
    )
    granter.join(20)
    assert decision == "allow"
    kinds = [b.get("decision", "") for b in bodies(hook_sidecar.journal_path, "pre_exec")]
    assert kinds == ["approval_required", "allow"]


def test_an_approval_still_pending_when_the_wait_ends_is_denied(hook_sidecar: RunningGateway, project: Path) -> None:
    # WaitApproval past its deadline is "pending" (DEADLINE_EXCEEDED read as pending, as the gRPC client does).
    decision, reason = _decided(
        "claude-code",
        payload("claude-code-pre", project, "make deploy"),
        hook_sidecar.unix_target,
        AGENTAUDIT_HOOK_APPROVAL_WAIT="0.5",
    )
    assert decision == "deny" and "approval_required" in reason and "agentaudit approve" in reason


# One hook call in-process; prints whether gRPC or protobuf was imported to answer it.
_IMPORTS = """
import io, json, sys
from agentaudit_client.hooks.runtime import HookConfig, main
out = io.StringIO()
main("claude-code", HookConfig(sidecar=sys.argv[1], tenant_id="t_dev"), io.StringIO(sys.argv[2]), out)
print(json.dumps({"grpc": "grpc" in sys.modules, "protobuf": "google.protobuf" in sys.modules,
                  "answer": out.getvalue()}))
"""


def test_a_call_to_a_running_sidecar_imports_neither_grpc_nor_protobuf(
    hook_sidecar: RunningGateway, project: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, hook_sidecar.unix_target, json.dumps(payload("claude-code-pre", project))],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert (report["grpc"], report["protobuf"]) == (False, False)
    assert json.loads(report["answer"]) == {}  # Claude Code's "no objection": allowed
    assert len(bodies(hook_sidecar.journal_path, "pre_exec")) == 1


def test_a_request_the_sidecar_rejects_is_denied_with_its_status(hook_sidecar: RunningGateway, project: Path) -> None:
    # An empty tenant id is INVALID_ARGUMENT at the real sidecar, with a BadRequest naming the field.
    decision, reason = _decided(
        "claude-code", payload("claude-code-pre", project), hook_sidecar.unix_target, AGENTAUDIT_TENANT_ID=""
    )
    assert decision == "deny" and "audit_unavailable" in reason and "(InvalidRequestError)" in reason
    where = unary.endpoint(hook_sidecar.unix_target)
    assert where is not None
    with unary.GatewayCalls(where, 5.0) as calls, pytest.raises(unary.CallError) as caught:
        calls.decide(run_id="r", tenant_id="", action="claude_code.Bash", actor=("user", "u"))
    assert caught.value.code_name == "INVALID_ARGUMENT" and caught.value.kind == "InvalidRequestError"
    assert "tenant_id" in [field for field, _ in caught.value.violations()]  # from grpc-status-details-bin


def test_a_report_the_sidecar_rejects_is_a_call_error(hook_sidecar: RunningGateway) -> None:
    where = unary.endpoint(hook_sidecar.unix_target)
    assert where is not None
    with unary.GatewayCalls(where, 5.0) as calls, pytest.raises(unary.CallError) as caught:
        calls.report_result("ev_nobody_decided", output={"x": 1}, duration=0.1)
    assert caught.value.kind in ("NotFoundError", "InvalidRequestError")


@pytest.fixture
def erring_server(tmp_path: Path) -> Iterator[tuple[str, list[grpc.StatusCode]]]:
    """A real gRPC server whose Decide answers the status code put in the list (with a BadRequest detail)."""
    answer: list[grpc.StatusCode] = [grpc.StatusCode.UNAVAILABLE]

    def decide(request: bytes, context: grpc.ServicerContext) -> bytes:
        code = answer[0]
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[{"field": "f", "description": "d"}]))
        status = status_pb2.Status(code=getattr(code_pb2, code.name), message="zürich 100% down", details=[detail])
        context.abort_with_status(rpc_status.to_status(status))
        return b""  # never reached

    handler = grpc.method_handlers_generic_handler(
        "agentaudit.v1.GatewayService",
        {"Decide": grpc.unary_unary_rpc_method_handler(decide)},  # bytes in, bytes out: no (de)serializer
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    sock = tmp_path / "erring.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield f"unix://{sock}", answer
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, "UnavailableError"),
        (grpc.StatusCode.INVALID_ARGUMENT, "InvalidRequestError"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceExhaustedError"),
        (grpc.StatusCode.INTERNAL, "GatewayError"),
    ],
)
def test_a_servers_error_status_denies_naming_the_same_error_as_grpc(
    erring_server: tuple[str, list[grpc.StatusCode]], project: Path, code: grpc.StatusCode, kind: str
) -> None:
    target, answer = erring_server
    answer[0] = code
    reasons = {}
    for transport in ("h2", "grpc"):
        decision, reasons[transport] = _decided(
            "claude-code", payload("claude-code-pre", project), target, AGENTAUDIT_HOOK_TRANSPORT=transport
        )
        assert decision == "deny" and f"({kind})" in reasons[transport]
    assert reasons["h2"] == reasons["grpc"]
    where = unary.endpoint(target)
    assert where is not None
    with unary.GatewayCalls(where, 5.0) as calls, pytest.raises(unary.CallError) as caught:
        calls.decide(run_id="r", tenant_id="t", action="a")
    # grpc-message is percent-encoded on the wire; the details are the google.rpc.Status the server sent.
    assert str(caught.value) == f"{code.name}: zürich 100% down"
    assert caught.value.violations() == [("f", "d")]


def test_connection_refused_on_tcp_fails_closed(project: Path) -> None:
    decision, reason = _decided("claude-code", payload("claude-code-pre", project), f"127.0.0.1:{free_port()}")
    assert decision == "deny" and "audit_unavailable" in reason and "(UnavailableError)" in reason


def test_a_server_that_speaks_no_http2_fails_closed_as_with_grpc(project: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        for transport in ("h2", "grpc"):
            decision, reason = _decided(
                "claude-code", payload("claude-code-pre", project), target, AGENTAUDIT_HOOK_TRANSPORT=transport
            )
            assert decision == "deny" and "(UnavailableError)" in reason, transport
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        pass


class _CuttingProxy:
    """Forwards a unix socket to the real sidecar, but closes once the sidecar has sent its first DATA frame's
    header: the hook gets the answer's HEADERS and a half-written message, never the trailers."""

    def __init__(self, listen: Path, upstream: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(listen))
        self.listener.listen()
        self.upstream = upstream
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._cut, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def _cut(self, server: socket.socket, client: socket.socket) -> None:
        buffered = b""
        try:
            while data := server.recv(65536):
                buffered += data
                at = 0
                while at + 9 <= len(buffered):  # HTTP/2 frame header: length(3) type(1) flags(1) stream(4)
                    length, kind = int.from_bytes(buffered[at : at + 3], "big"), buffered[at + 3]
                    if kind == 0:  # DATA: send its header and half its payload, then hang up
                        client.sendall(buffered[: at + 9 + length // 2])
                        self.cuts += 1
                        return
                    at += 9 + length
                client.sendall(buffered[:at])
                buffered = buffered[at:]
        except OSError:
            pass
        finally:
            for end in (client, server):  # shutdown first: the other thread's recv holds the descriptor open
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_half_written_answer_fails_closed(hook_sidecar: RunningGateway, project: Path) -> None:
    upstream = hook_sidecar.unix_target.removeprefix("unix://")
    proxy = _CuttingProxy(project / ".agentaudit" / "cut.sock", upstream)
    try:
        target = f"unix://{project}/.agentaudit/cut.sock"
        decision, reason = _decided("claude-code", payload("claude-code-pre", project), target)
    finally:
        proxy.close()
    assert proxy.cuts == 1  # the sidecar did answer, and the answer was cut
    assert decision == "deny" and "audit_unavailable" in reason and "(UnavailableError)" in reason
    # The sidecar journaled its decision; the hook, never seeing the status, still denied.
    assert [b["decision"] for b in bodies(hook_sidecar.journal_path, "pre_exec")] == ["allow"]
    assert not list((project / ".agentaudit" / "hooks").glob("pre-*.json"))  # nothing to report later


def test_a_sidecar_that_does_not_answer_in_time_fails_closed(hook_sidecar: RunningGateway, project: Path) -> None:
    # The real sidecar, stopped: the kernel still accepts the connection, nobody answers it.
    os.kill(hook_sidecar.proc.pid, signal.SIGSTOP)
    try:
        decision, reason = _decided(
            "claude-code", payload("claude-code-pre", project), hook_sidecar.unix_target, AGENTAUDIT_HOOK_TIMEOUT="0.5"
        )
    finally:
        os.kill(hook_sidecar.proc.pid, signal.SIGCONT)
    assert decision == "deny" and "audit_unavailable" in reason and "(DeadlineExceededError)" in reason


def test_the_deadline_goes_to_the_server_as_grpc_timeout() -> None:
    assert unary._grpc_timeout(3.0) == "3000m"
    assert unary._grpc_timeout(0.0001) == "1m"
    assert unary._grpc_timeout(1e9) == "99999999S"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("unix:///abs/gw.sock", (socket.AF_UNIX, "/abs/gw.sock", "localhost")),
        ("unix-abstract:gw", (socket.AF_UNIX, "\0gw", "localhost")),
        ("127.0.0.1:7419", (-1, ("127.0.0.1", 7419), "127.0.0.1:7419")),
        ("[::1]:7419", (socket.AF_INET6, ("::1", 7419), "[::1]:7419")),
        ("dns:///gw.local:7419", (-1, ("gw.local", 7419), "gw.local:7419")),
        ("vsock:3:7419", None),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", None),
        ("dns://8.8.8.8/gw:7419", None),
    ],
)
def test_targets_the_transport_cannot_reach_are_left_to_grpc(target: str, expected: Any) -> None:
    assert unary.endpoint(target) == expected
