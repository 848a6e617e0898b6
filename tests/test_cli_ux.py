"""What a new user, an approver and an auditor meet at the command line (issue 15), against a real `agentaudit dev`.

One sidecar runs in its own working directory, started exactly as the README says (``agentaudit dev`` from the
directory that then holds ``.agentaudit/``), with the socket addresses written in the form the docs print.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentaudit_client import ApprovalRequired, GatewayClient
from tests.conftest import AGENTAUDIT, ROOT, free_port, wait_serving

DOCS_GATEWAY = "unix://./.agentaudit/gateway.sock"
DOCS_OPERATOR = "unix://./.agentaudit/operator.sock"


@dataclass
class DevHere:
    """An `agentaudit dev` running in ``cwd`` (so ``./.agentaudit`` is its directory)."""

    cwd: Path
    tcp: str
    proc: subprocess.Popen[bytes]

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Runs the CLI from the sidecar's working directory, as a user in the README would."""
        return subprocess.run(
            [*AGENTAUDIT, *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def dev_here(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevHere]:
    cwd = Path(tmp_path_factory.mktemp("ux"))
    port = free_port()
    log = (cwd / "dev.log").open("wb")
    proc = subprocess.Popen(
        # The server's listeners parse the docs' form too (relative to the working directory).
        [*AGENTAUDIT, "dev", "--listen", DOCS_GATEWAY, "--listen", f"127.0.0.1:{port}"],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "AGENTAUDIT_FORWARD_TARGET": ""},
    )
    try:
        wait_serving(f"127.0.0.1:{port}", proc=proc)
        yield DevHere(cwd, f"127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_the_documented_socket_address_works_for_health(dev_here: DevHere) -> None:
    done = dev_here.cli("health", "--target", DOCS_GATEWAY)
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


def test_the_documented_socket_address_works_for_the_operator_flag_and_environment(dev_here: DevHere) -> None:
    by_flag = dev_here.cli("approvals", "--operator", DOCS_OPERATOR)
    by_env = dev_here.cli("approvals", env={"AGENTAUDIT_OPERATOR_ADDRESS": DOCS_OPERATOR})
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_env.returncode == 0, by_env.stderr


def test_the_documented_socket_address_works_for_the_python_client(dev_here: DevHere) -> None:
    here = Path.cwd()
    os.chdir(dev_here.cwd)
    try:
        with GatewayClient(DOCS_GATEWAY) as client:
            result = client.run("run_addr", tenant_id="t_42", agent_id="a", actor=("user", "u_1")).decide(
                "crm.lookup", {"customer_id": "c_1"}
            )
    finally:
        os.chdir(here)
    assert result.decision == "allow"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["health", "--target", "unix://./nowhere/gateway.sock"], id="health"),
        pytest.param(["approvals", "--operator", "unix://./nowhere/operator.sock"], id="operator"),
    ],
)
def test_a_missing_socket_is_one_line_asking_whether_dev_runs(dev_here: DevHere, args: list[str]) -> None:
    done = dev_here.cli(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is `agentaudit dev` running?" in lines[0], done.stderr
    assert "nowhere/" in lines[0]


def test_a_bad_address_is_a_usage_error_naming_the_flag(dev_here: DevHere) -> None:
    done = dev_here.cli("health", "--target", "not an address")
    assert done.returncode == 2
    assert done.stderr.startswith("agentaudit: --target: ") and len(done.stderr.strip().splitlines()) == 1


def test_health_json_is_one_object(dev_here: DevHere) -> None:
    done = dev_here.cli("health", "--target", dev_here.tcp, "--json")
    assert json.loads(done.stdout) == {"target": dev_here.tcp, "service": "", "status": "SERVING"}


def test_kill_switch_status_json_uses_lower_case_names(dev_here: DevHere) -> None:
    engaged = dev_here.cli("kill-switch", "engage", "--scope", "tenant", "--target", "t_ks", "--reason", "drill")
    assert engaged.returncode == 0, engaged.stderr
    try:
        done = dev_here.cli("kill-switch", "status", "--json")
        switches = [json.loads(line) for line in done.stdout.splitlines()]
        ours = [s for s in switches if s["target"] == "t_ks"]
        assert ours and ours[0]["scope"] == "tenant" and ours[0]["engaged_at"].endswith("Z")
    finally:
        dev_here.cli("kill-switch", "release", "--scope", "tenant", "--target", "t_ks")


def _ask_for_refund(dev_here: DevHere, run_id: str) -> str:
    with GatewayClient(dev_here.tcp) as client:
        run = client.run(run_id, tenant_id="t_42", agent_id="support-agent", actor=("user", "u_1"))
        run.decide("crm.lookup", {"customer_id": "c_7"})
        run.decide("crm.lookup", {"customer_id": "c_8"})
        try:
            with run.guard("refund.create", {"order_id": "o_1", "amount": 250, "customer": {"email": "a@b.c"}}):
                raise AssertionError("a refund ran without approval")
        except ApprovalRequired as pending:
            return pending.approval_id
    raise AssertionError("unreachable")


def test_approvers_see_the_redacted_args_reason_earlier_steps_and_requester(dev_here: DevHere) -> None:
    approval_id = _ask_for_refund(dev_here, "run_see_args")
    done = dev_here.cli("approvals", "--json")
    records = {r["approval_id"]: r for r in map(json.loads, done.stdout.splitlines())}
    record = records[approval_id]
    assert record["state"] == "pending"
    assert record["args"]["order_id"] == "o_1" and record["args"]["amount"] == 250
    assert "a@b.c" not in done.stdout
    assert record["redacted_paths"] == ["args.customer.email"]
    assert record["reason"] == "approval_required"
    assert record["previous_steps"] == 2
    assert record["actor"] == {"type": "user", "id": "u_1"} and record["agent_id"] == "support-agent"
    assert record["resolved_by"] is None

    table = dev_here.cli("approvals").stdout
    assert '"order_id":"o_1"' in table and "args.customer.email" in table and "2 earlier step(s)" in table
    assert "user:u_1" in table


def test_resolved_approvals_show_who_when_and_the_comment(dev_here: DevHere) -> None:
    approval_id = _ask_for_refund(dev_here, "run_resolved")
    assert dev_here.cli("approve", approval_id, "--comment", "checked the order").returncode == 0
    done = dev_here.cli("approvals", "--state", "granted", "--json")
    record = next(r for r in map(json.loads, done.stdout.splitlines()) if r["approval_id"] == approval_id)
    assert record["resolved_by"] == "dev-operator" and record["comment"] == "checked the order"
    assert record["resolved_at"].endswith("Z")
    table = dev_here.cli("approvals", "--state", "granted").stdout
    assert "resolved by dev-operator at " in table and '"checked the order"' in table


def test_policy_check_and_test_have_json(dev_here: DevHere) -> None:
    policy, cases = ".agentaudit/policy.yaml", ".agentaudit/policy_tests.yaml"
    check = json.loads(dev_here.cli("policy", "check", policy, "--json").stdout)
    assert check["valid"] is True and check["version"].startswith("sha256:") and check["rules"] >= 1
    lines = [json.loads(line) for line in dev_here.cli("policy", "test", policy, cases, "--json").stdout.splitlines()]
    assert lines[-1]["failed"] == 0 and lines[-1]["passed"] == len(lines) - 1
    assert all(line["passed"] for line in lines[:-1])


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["events"], id="events"),
        pytest.param(["search", "--limit", "1"], id="search"),
        pytest.param(["export", "--limit", "1"], id="export"),
        pytest.param(["tail", "-n", "1"], id="tail"),
        pytest.param(["verify"], id="verify"),
        pytest.param(["forwarder", "status"], id="forwarder-status"),
        pytest.param(["trace", "run_default"], id="trace"),
    ],
)
def test_journal_readers_default_to_the_dev_journal_and_say_which_file(dev_here: DevHere, command: list[str]) -> None:
    with GatewayClient(dev_here.tcp) as client:
        run = client.run("run_default", tenant_id="t_default", agent_id="a", actor=("user", "u_1"))
        with run.guard("crm.lookup", {"customer_id": "c_1"}) as step:
            step.output = {"ok": True}
    done = dev_here.cli(*command)
    assert done.returncode == 0, done.stderr
    assert "agentaudit: reading ./.agentaudit/journal.db" in done.stderr.splitlines()


def test_verify_with_the_dev_keys_by_default(dev_here: DevHere) -> None:
    done = dev_here.cli("verify")
    assert "agentaudit: using .agentaudit/signing.pub" in done.stderr
    assert done.stdout.splitlines()[-1].startswith("journal OK: ")


def test_verify_says_precisely_when_a_copy_lacks_its_wal(dev_here: DevHere) -> None:
    shutil.copyfile(dev_here.cwd / ".agentaudit/journal.db", dev_here.cwd / "copied.db")
    done = dev_here.cli("verify", "copied.db", "--public-key", ".agentaudit/signing.pub")
    assert done.returncode == 2
    assert "without its -wal file" in done.stderr and "agentaudit journal backup OUT" in done.stderr


def test_backup_copies_a_running_journal_into_one_file_that_verifies(dev_here: DevHere) -> None:
    done = dev_here.cli("journal", "backup", "backup.db")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("copied ") and done.stdout.splitlines()[-1].startswith("journal OK: ")
    assert not (dev_here.cwd / "backup.db-wal").exists()
    again = dev_here.cli("verify", "backup.db", "--public-key", ".agentaudit/signing.pub")
    assert again.returncode == 0, again.stdout + again.stderr
    assert dev_here.cli("journal", "backup", "backup.db").returncode == 2  # never overwrites


def test_tamper_demo_shows_the_recipe_and_what_verify_says_leaving_the_journal_intact(dev_here: DevHere) -> None:
    done = dev_here.cli("journal", "tamper-demo", "--output", "tampered.db")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DROP TRIGGER journal_no_update;" in done.stdout and "AS BLOB" in done.stdout
    assert "TAMPER EVIDENCE: " in done.stdout
    assert dev_here.cli("verify").returncode == 0


def test_a_run_bundle_is_written_and_verifies_offline(dev_here: DevHere) -> None:
    made = dev_here.cli("bundle", "run_see_args", "-o", "run.aab")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("wrote run.aab: run run_see_args, ")
    checked = dev_here.cli("verify", "run.aab", "--public-key", ".agentaudit/signing.pub")
    assert checked.returncode == 0, checked.stdout
    assert checked.stdout.splitlines()[-1].startswith("bundle OK: run run_see_args")
    as_json = json.loads(dev_here.cli("verify", "run.aab", "--public-key", ".agentaudit/signing.pub", "--json").stdout)
    assert as_json["ok"] is True and as_json["run_id"] == "run_see_args"


def test_a_chain_break_message_shows_where_the_two_hashes_differ() -> None:
    from gateway.journal.check import _apart  # noqa: PLC0415

    first, second = bytes(32), bytes(10) + b"\x01" + bytes(21)
    shown = _apart(first, second)
    assert shown[0] != shown[1] and all("(byte 10)" in text for text in shown)


def test_piping_into_head_ends_without_a_traceback(dev_here: DevHere) -> None:
    with GatewayClient(dev_here.tcp) as client:
        run = client.run("run_pipe", tenant_id="t_pipe", agent_id="a", actor=("user", "u_1"))
        for _ in range(150):  # more than a pipe buffer holds, so the writer meets the closed pipe
            run.decide("crm.lookup", {"customer_id": "c_1"})
    shell = f"{sys.executable} -m gateway.cli events .agentaudit/journal.db | head -1"
    done = subprocess.run(
        ["sh", "-c", shell],
        capture_output=True,
        text=True,
        cwd=dev_here.cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_a_port_in_use_is_one_clear_line_without_grpc_core_logging(tmp_path_factory: pytest.TempPathFactory) -> None:
    cwd = Path(tmp_path_factory.mktemp("busy"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [*AGENTAUDIT, "dev", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), "AGENTAUDIT_FORWARD_TARGET": ""},
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"agentaudit: cannot listen on 127.0.0.1:{port}: another process holds it "
        "(stop it, or choose another address with --listen)"
    )
    assert "GRPC_VERBOSITY" not in done.stderr and "add_port.cc" not in done.stderr
