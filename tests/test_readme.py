"""The README's walkthrough, run as written against a real `agentaudit dev`, so the README cannot drift.

Every ``.venv/bin/...`` command in the walkthrough's shell blocks runs in order from a directory where
``agentaudit dev`` runs (placeholders ``run_…`` and ``apr_…`` filled from the example's own output), must succeed,
and the example's output must have the shape the README shows.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import AGENTAUDIT, ROOT, free_port, wait_serving

README = ROOT / "README.md"
SAMPLE_LINE = re.compile(r"^(crm\.search #\d+ \(t_flood\)|refund\.create \(t_42\)|crm\.lookup \(t_42\)) +→ \w+")


def walkthrough_commands() -> list[str]:
    """The shell commands of the README's walkthrough (from its heading to the next ``##``), in order."""
    text = README.read_text()
    section = text[text.index("## Five-minute walkthrough") :]
    section = section[: section.index("\n## ", 1)]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.strip()
            if line.startswith(".venv/bin/"):
                commands.append(re.sub(r"\s+#.*$", "", line))
    return commands


def test_the_walkthrough_lists_the_commands_it_explains() -> None:
    commands = walkthrough_commands()
    assert any("kill-switch release" in c for c in commands), "the drill must release its kill switch"
    assert any(c.endswith("examples/support_agent.py") for c in commands)


def test_the_readme_walkthrough_runs_as_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    cwd = Path(tmp_path_factory.mktemp("readme"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = free_port()
    log = (cwd / "dev.log").open("wb")
    dev = subprocess.Popen(
        [*AGENTAUDIT, "dev", "--listen", "unix://./.agentaudit/gateway.sock", "--listen", f"127.0.0.1:{port}"],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_serving(f"127.0.0.1:{port}", proc=dev)
        run_id = approval_id = ""
        for command in walkthrough_commands():
            words = shlex.split(command)
            program = words[0].removeprefix(".venv/bin/")
            argv = (
                [sys.executable, str(ROOT / words[1]), *words[2:]] if program == "python" else [*AGENTAUDIT, *words[1:]]
            )
            argv = [a.replace("run_…", run_id).replace("apr_…", approval_id) for a in argv]
            done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr, command
            if program == "python":
                samples = [line for line in done.stdout.splitlines() if SAMPLE_LINE.match(line)]
                assert len(samples) == 3, done.stdout
                run_id = re.search(r"^run (run_\w+) \(tenant t_42\)", done.stdout, flags=re.M)[1]  # type: ignore[index]
                approval_id = re.search(r"approval=(apr_\w+)", done.stdout)[1]  # type: ignore[index]
            if words[1:2] == ["verify"]:
                assert done.stdout.splitlines()[-1].startswith("journal OK: "), done.stdout
            if words[1:3] == ["forwarder", "status"]:
                assert re.match(r"forwarded \d+ of \d+ entries; backlog \d+", done.stdout), done.stdout
        assert run_id and approval_id, "the walkthrough never ran the example"
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(30)
        log.close()
    assert "allow" in (cwd / "dev.log").read_text(), "agentaudit dev printed no decision lines"
