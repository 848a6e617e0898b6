"""`agentaudit hook AGENT` and `agentaudit hook install`: each agent's documented payloads, through the real
command, against a real sidecar (and with none)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentaudit_client.hooks.dialects import DIALECTS
from tests.conftest import AGENTAUDIT, ROOT, RunningGateway, start_gateway
from tests.framework_helpers import bodies, grant_when_pending
from tests.operator_helpers import prepare_dir

FIXTURES = Path(__file__).parent / "fixtures" / "hooks"
AGENTS = ["claude-code", "codex", "cursor", "gemini"]
PREFIX = {"claude-code": "claude_code", "codex": "codex", "cursor": "cursor", "gemini": "gemini"}
TOOL = {"claude-code": "Bash", "codex": "Bash", "cursor": "shell", "gemini": "run_shell_command"}

POLICY = """
version: 1
mode: enforce
access:
  default: deny
  roles:
    coder: {actions: ["claude_code.*", "codex.*", "cursor.*", "gemini.*"]}
  bindings:
    - {name: coding_agents, agents: ["*"], tenants: ["*"], roles: [coder]}
rules:
  - name: no_force_push
    when: "has(args.command) && args.command.startsWith('git push --force')"
    decision: stop
    reason: force_push_blocked
  - name: deploys_need_approval
    when: "has(args.command) && args.command.startsWith('make deploy')"
    decision: approval_required
    approvers: ["role:approver"]
    expires_in: 1h
"""


@pytest.fixture
def hook_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A sidecar whose policy lets coding agents run commands, stops force pushes and asks before deploys."""
    directory = Path(tmp_path_factory.mktemp("hk"))
    prepare_dir(directory, policy=POLICY)
    gw = start_gateway(directory)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The agent's project directory, with a .agentaudit/ directory for the hook's pairing files."""
    (tmp_path / ".agentaudit").mkdir()
    return tmp_path


def payload(name: str, project: Path, command: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text().replace("CWD", str(project)))
    if command is not None:
        if "tool_input" in data:
            data["tool_input"]["command"] = command
        else:
            data["command"] = command
    return data


def hook(agent: str, data: dict[str, Any], sidecar: str, **env: str) -> dict[str, Any]:
    """Runs `agentaudit hook AGENT` as the agent does (JSON on stdin); returns the JSON it printed."""
    done = subprocess.run(
        [*AGENTAUDIT, "hook", agent],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
        env={**os.environ, "AGENTAUDIT_SIDECAR": sidecar, "AGENTAUDIT_TENANT_ID": "t_dev", **env},
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def verdict(agent: str, answer: dict[str, Any]) -> tuple[str, str]:
    """(allow|deny|ask, reason) from an agent's answer; no opinion reads as allow."""
    if agent in ("claude-code", "codex"):
        out = answer.get("hookSpecificOutput", {})
        return out.get("permissionDecision", "allow"), out.get("permissionDecisionReason", "")
    if agent == "cursor":
        return answer["permission"], answer.get("agent_message", "")
    return answer["decision"], answer.get("reason", "")


@pytest.mark.parametrize("agent", AGENTS)
def test_an_allowed_call_is_recorded_before_and_its_result_after(
    agent: str, hook_sidecar: RunningGateway, project: Path
) -> None:
    assert verdict(agent, hook(agent, payload(f"{agent}-pre", project), hook_sidecar.unix_target))[0] == "allow"
    (pre,) = bodies(hook_sidecar.journal_path, "pre_exec")
    assert (pre["action"], pre["decision"], pre["agent_id"]) == (f"{PREFIX[agent]}.{TOOL[agent]}", "allow", agent)
    assert list((project / ".agentaudit" / "hooks").glob("pre-*.json"))  # waiting for the PostToolUse
    assert hook(agent, payload(f"{agent}-post", project), hook_sidecar.unix_target) == {}
    (post,) = bodies(hook_sidecar.journal_path, "post_exec")
    assert (post["pre_event_id"], post["status"]) == (pre["event_id"], "succeeded")
    assert not list((project / ".agentaudit" / "hooks").glob("pre-*.json"))  # cleaned


@pytest.mark.parametrize("agent", AGENTS)
def test_a_stopped_call_is_denied_with_the_reason(agent: str, hook_sidecar: RunningGateway, project: Path) -> None:
    answer = hook(agent, payload(f"{agent}-pre", project, "git push --force"), hook_sidecar.unix_target)
    decision, reason = verdict(agent, answer)
    assert decision == "deny" and "force_push_blocked" in reason
    assert hook(agent, payload(f"{agent}-post", project, "git push --force"), hook_sidecar.unix_target) == {}
    assert bodies(hook_sidecar.journal_path, "post_exec") == []  # nothing to report: it never ran


@pytest.mark.parametrize("agent", AGENTS)
def test_with_the_sidecar_down_the_hook_fails_closed(agent: str, project: Path) -> None:
    down = f"unix://{project}/.agentaudit/missing.sock"
    decision, reason = verdict(agent, hook(agent, payload(f"{agent}-pre", project), down))
    assert decision == "deny" and "audit_unavailable" in reason and "cannot be reached" in reason


def test_a_stale_socket_file_fails_closed_too(project: Path) -> None:
    stale = project / ".agentaudit" / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # bound, never listening, then closed: the file stays and refuses connects
    decision, reason = verdict(
        "claude-code", hook("claude-code", payload("claude-code-pre", project), f"unix://{stale}")
    )
    assert decision == "deny" and "audit_unavailable" in reason and "(UnavailableError)" in reason


# Runs one hook call in-process and prints whether gRPC was imported to answer it.
_IMPORTS_GRPC = """
import io, json, sys
from agentaudit_client.hooks.runtime import HookConfig, main
out = io.StringIO()
main("claude-code", HookConfig(sidecar=sys.argv[1]), io.StringIO(sys.argv[2]), out)
loaded = {"grpc": "grpc" in sys.modules, "protobuf": "google.protobuf" in sys.modules}
print(json.dumps({**loaded, "answer": out.getvalue()}))
"""


@pytest.mark.parametrize("event", ["claude-code-pre", "other"])
def test_the_unreachable_answer_and_foreign_events_import_no_grpc(project: Path, event: str) -> None:
    data = payload("claude-code-pre", project) if event != "other" else {"hook_event_name": "Notification"}
    down = f"unix://{project}/.agentaudit/missing.sock"
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_GRPC, down, json.dumps(data)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["grpc"] is False and report["protobuf"] is False
    assert ("audit_unavailable" in report["answer"]) is (event != "other")


def test_a_tool_class_can_be_set_to_fail_open(project: Path) -> None:
    down = f"unix://{project}/.agentaudit/missing.sock"
    answer = hook("claude-code", payload("claude-code-pre", project), down, AGENTAUDIT_HOOK_FAIL_OPEN="read,shell")
    assert verdict("claude-code", answer)[0] == "allow"


def test_an_approval_denies_until_a_human_grants_it_then_the_retry_runs(
    hook_sidecar: RunningGateway, project: Path
) -> None:
    target = hook_sidecar.unix_target
    first = hook("claude-code", payload("claude-code-pre", project, "make deploy"), target)
    decision, reason = verdict("claude-code", first)
    assert decision == "deny" and "approval_required" in reason and "agentaudit approve" in reason
    grant_when_pending(hook_sidecar).join(20)
    retried = hook("claude-code", payload("claude-code-pre", project, "make deploy"), target)
    assert verdict("claude-code", retried)[0] == "allow"
    hook("claude-code", payload("claude-code-post", project, "make deploy"), target)
    kinds = [(b["kind"], b.get("decision", "")) for b in bodies(hook_sidecar.journal_path, "pre_exec")]
    assert kinds == [("pre_exec", "approval_required"), ("pre_exec", "allow")]
    assert len(bodies(hook_sidecar.journal_path, "post_exec")) == 1


def test_on_approval_ask_hands_the_call_to_the_agents_prompt(hook_sidecar: RunningGateway, project: Path) -> None:
    answer = hook(
        "claude-code",
        payload("claude-code-pre", project, "make deploy"),
        hook_sidecar.unix_target,
        AGENTAUDIT_HOOK_ON_APPROVAL="ask",
    )
    assert verdict("claude-code", answer)[0] == "ask"
    # The person said yes at Claude Code's prompt: the call ran without an agentaudit approval.
    hook("claude-code", payload("claude-code-post", project, "make deploy"), hook_sidecar.unix_target)
    (violation,) = bodies(hook_sidecar.journal_path, "violation")
    assert violation["action"] == "claude_code.Bash"


def test_pairing_files_are_readable_by_the_user_only(hook_sidecar: RunningGateway, project: Path) -> None:
    hook("codex", payload("codex-pre", project), hook_sidecar.unix_target)
    (state,) = (project / ".agentaudit" / "hooks").glob("pre-*.json")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


EXISTING = {
    "claude-code": {
        "model": "opus",
        "permissions": {"allow": ["Bash(npm test)"]},
        "hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "lint.sh"}]}]},
    },
    "codex": {"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "notify.sh"}]}]}},
    "cursor": {"version": 1, "hooks": {"afterFileEdit": [{"command": "fmt.sh"}]}},
    "gemini": {
        "theme": "Dracula",
        "hooks": {"BeforeTool": [{"matcher": "write_file", "hooks": [{"type": "command", "command": "check.sh"}]}]},
    },
}


def install(agent: str, project: Path, *more: str) -> Path:
    done = subprocess.run(
        [*AGENTAUDIT, "hook", "install", agent, "--dir", str(project), *more],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().rsplit(" ", 1)[-1])


@pytest.mark.parametrize("agent", AGENTS)
def test_install_keeps_the_users_settings_and_is_idempotent(agent: str, tmp_path: Path) -> None:
    settings = tmp_path / DIALECTS[agent].project_settings
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(EXISTING[agent]))
    assert install(agent, tmp_path) == settings
    first = settings.read_text()
    install(agent, tmp_path)
    assert settings.read_text() == first  # twice is once
    written = json.loads(first)
    for key, value in EXISTING[agent].items():
        if key != "hooks":
            assert written[key] == value
    for event, entries in EXISTING[agent]["hooks"].items():  # type: ignore[attr-defined]
        assert written["hooks"][event][: len(entries)] == entries
    events = [*DIALECTS[agent].events["pre"], *DIALECTS[agent].events["post"]]
    for event in events:
        assert f"agentaudit hook {agent}" in json.dumps(written["hooks"][event])


def test_install_refuses_a_settings_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude" / "settings.json").write_text("{not json")
    done = subprocess.run(
        [*AGENTAUDIT, "hook", "install", "claude-code", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    assert (tmp_path / ".claude" / "settings.json").read_text() == "{not json"


def test_install_writes_the_bytecode_every_hook_process_needs(tmp_path: Path) -> None:
    # A copy of the sources with no bytecode, run with PYTHONDONTWRITEBYTECODE as an editable install in a
    # container would be: only install itself can leave the bytecode behind for later hook processes.
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "gateway", tmp_path / "code" / "gateway", ignore=skip)
    shutil.copytree(ROOT / "clients" / "python" / "src", tmp_path / "code" / "src", ignore=skip)
    code = tmp_path / "code"
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{code / 'src'}", "PYTHONDONTWRITEBYTECODE": "1"}
    hook_modules = [
        code / "gateway" / "cli" / "hook.py",
        code / "src" / "agentaudit_client" / "hooks" / "runtime.py",
        code / "src" / "agentaudit_client" / "hooks" / "unary.py",
        code / "src" / "agentaudit_client" / "hooks" / "wire.py",
        code / "src" / "agentaudit_client" / "client.py",
        code / "src" / "agentaudit" / "v1" / "gateway_pb2.py",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "hook", "install", "claude-code", "--dir", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "p" / ".claude" / "settings.json").exists()
    for module in hook_modules:
        assert Path(importlib.util.cache_from_source(str(module))).exists(), module
