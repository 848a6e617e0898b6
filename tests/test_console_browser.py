"""The web console in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download)
against a real ``agentaudit dev`` process and the seed's approval agent: sign in with the printed one-time link,
review and answer approvals, look at the run timeline, the auditor's read-only view, a kill switch. Screenshots
of each page go to tests/artifacts/console/ (not committed)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import devenv
from tests.conftest import AGENTAUDIT, ROOT, free_port, wait_serving
from tests.helpers import eventually

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
AUDITOR_TOKEN = "auditor-token-for-the-browser-test"
LINK_RE = re.compile(r"sign in once \(works one time, 10 minutes\): (\S+)")
URL_RE = re.compile(r"^console:\s+(\S+)", re.MULTILINE)

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")


def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (scripts/system_deps.sh does the same for CI)."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=600, check=False)  # fmt: skip
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed and cannot be (apt-get install chromium needs root)")
    return CHROMIUM


@dataclass
class Dev:
    """A running ``agentaudit dev``: its sidecar address, console URL, one-time link and log."""

    proc: subprocess.Popen[bytes]
    directory: Path
    target: str
    url: str
    link: str
    log: Path

    def agent(self, wait_s: float = 240) -> subprocess.Popen[bytes]:
        """The seed's approval agent (examples/approval_agent.py): asks to refund 250 and waits for a human."""
        out = self.directory / f"agent-{len(list(self.directory.glob('agent-*.log')))}.log"
        with open(out, "wb") as log:
            return subprocess.Popen(
                [sys.executable, str(ROOT / "examples" / "approval_agent.py"), "--target", self.target,
                 "--wait", str(wait_s)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
            )  # fmt: skip


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    directory = tmp_path / "dev"
    devenv.prepare(directory, None, {})  # the files, so an auditor token can be added before it starts
    config = directory / devenv.CONFIG_FILE
    digest = hashlib.sha256(AUDITOR_TOKEN.encode()).hexdigest()
    text = config.read_text().replace(
        "  tokens:\n", f'  tokens:\n    - identity: audrey\n      roles: [auditor]\n      sha256: "{digest}"\n', 1
    )
    # The fleet control channel to the embedded collector: the console's answers and switches reach the sidecar.
    config.write_text(text + "control:\n  enabled: true\n")
    target = f"127.0.0.1:{free_port()}"
    console = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "dev.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*AGENTAUDIT, "dev", "--quiet", "--dir", str(directory), "--listen", target, "--console-listen", console],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_serving(target, proc=proc)
        link = eventually(lambda: LINK_RE.search(log_path.read_text()), timeout=60, message="the one-time link")
        url = URL_RE.search(log_path.read_text())
        assert url is not None
        assert "reach this sidecar with `control" not in log_path.read_text()  # control is on here
        yield Dev(proc, directory, target, url.group(1), link.group(1), log_path)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser() -> Iterator[Any]:
    path = chromium()
    with playwright_sync.sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=str(path),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield instance
        finally:
            instance.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pending_card(page: Any, dev: Dev) -> Any:
    """Reloads the inbox until the agent's refund is listed (it arrives with the forwarder's next batch)."""

    def listed() -> Any:
        page.goto(f"{dev.url}/approvals")
        cards = page.locator("article.approval")
        return cards.first if cards.count() else None

    return eventually(listed, timeout=60, interval=0.5, message="the refund in the inbox")


def _resumed_chain(page: Any) -> str:
    """The run's first step once its result has arrived (the forwarder brings it within a batch)."""
    page.reload()
    chain = str(page.inner_text("ol.timeline li.step"))
    return chain if "result" in chain else ""


def agent_log(dev: Dev, agent: subprocess.Popen[bytes]) -> str:
    """What the agent printed (its log file is named by its start order)."""
    logs = sorted(dev.directory.glob("agent-*.log"))
    return "\n".join(p.read_text() for p in logs)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def test_an_approver_reviews_and_answers_the_seed_refund_in_the_browser(dev: Dev, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    agent = dev.agent()
    try:
        page.goto(dev.link)
        assert page.url.endswith("/approvals")
        card = pending_card(page, dev)
        text = card.inner_text()
        assert "refund.create" in text and "250" in text
        assert "args.customer.email" in text  # which path was redacted, and by what
        assert "ann@example.com" not in page.content()
        shot(page, "inbox")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, nothing cut off
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "inbox-phone")
        page.set_viewport_size({"width": 1280, "height": 900})

        card.get_by_role("link", name="Review").click()
        page.wait_for_selector("form#vote-form")
        assert "0 of 1" in page.inner_text("p.sub")
        shot(page, "approval")
        page.fill("#comment", "refund checked against order o_1")
        page.get_by_role("button", name="Approve").click()
        page.wait_for_selector(".pill.granted, .pill.used")
        votes = page.inner_text("ol.votes")
        assert "dev-operator granted via console" in votes and "refund checked against order o_1" in votes
        # The agent blocked in WaitApproval resumes: the grant reached the sidecar over the control channel.
        assert agent.wait(90) == 0
        assert "refund made" in agent_log(dev, agent)

        page.goto(f"{dev.url}/approvals/resolved")
        assert "dev-operator" in page.inner_text("table.list")
        shot(page, "resolved")
        page.locator("table.list a").first.click()  # the action link: back to the approval
        run_link = page.get_by_role("link", name=re.compile(r"^run_")).first
        # The run page is 404 ("no events of this run") until the forwarder has delivered the run's first batch
        # (the approval reached the console earlier, over the control channel): wait for it outside the page, so
        # the browser logs no failed load, then open it.
        run_url = f"{dev.url}{run_link.get_attribute('href')}"
        eventually(lambda: page.request.get(run_url).status == 200, timeout=60, interval=0.5, message="the run page")
        run_link.click()
        page.wait_for_selector("ol.timeline")
        chain = eventually(lambda: _resumed_chain(page), timeout=60, interval=0.5, message="the resumed chain")
        assert re.search(r"approval_required.*→.*approval_granted by.*→.*allow.*→.*result succeeded", chain, re.S), (
            chain
        )
        shot(page, "run")
        with page.expect_download() as download:
            page.get_by_role("link", name="Download evidence bundle").click()
        assert download.value.suggested_filename.endswith(".aab")

        page.goto(f"{dev.url}/runs?decision=approval_required")
        assert "refund.create" in page.inner_text("table.list")
        shot(page, "runs")
        page.goto(f"{dev.url}/fleet")
        assert "agentaudit-dev/" in page.inner_text("table.list")
        shot(page, "fleet")
        page.goto(f"{dev.url}/")
        page.wait_for_selector("svg.chart rect")
        shot(page, "overview")
        assert errors == []  # no CSP violation or script error on any page
    finally:
        stop(agent)
        context.close()


def test_a_denial_needs_a_justification_in_the_browser(dev: Dev, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    agent = dev.agent()
    try:
        page.goto(dev.link)
        pending_card(page, dev).get_by_role("link", name="Review").click()
        page.get_by_role("button", name="Deny").click()  # no justification: the page says so, nothing is sent
        assert page.evaluate("document.getElementById('comment').validationMessage") != ""
        assert page.locator(".pill.pending").count() == 1
        # Without the page's script the server refuses it too (400, the field named).
        answer = page.request.post(
            page.url + "/vote", form={"csrf": page.input_value("#vote-form input[name=csrf]"), "decision": "deny"}
        )
        assert answer.status == 400 and "comment" in answer.text()
        page.fill("#comment", "not for this customer")
        page.get_by_role("button", name="Deny").click()
        page.wait_for_selector(".pill.denied")
        assert "not for this customer" in page.inner_text("ol.votes")
        assert agent.wait(90) == 0  # the denial reached the sidecar: the refund is never made
        assert "refund not made" in agent_log(dev, agent)
    finally:
        stop(agent)
        page.close()


def test_an_auditor_sees_no_approve_button_and_a_forged_post_is_refused(dev: Dev, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    agent = dev.agent()
    try:
        page.goto(f"{dev.url}/login")
        page.fill("#token", AUDITOR_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        card = pending_card(page, dev)
        card.get_by_role("link", name="Review").click()
        page.wait_for_selector("h1")
        assert page.get_by_role("button", name="Approve").count() == 0
        shot(page, "approval-auditor")
        csrf = page.input_value("input[name=csrf]")  # the sign-out form's: a valid token of this session
        forged = page.request.post(page.url + "/vote", form={"csrf": csrf, "decision": "approve", "comment": "x"})
        assert forged.status == 403
        missing = page.request.post(page.url + "/vote", form={"decision": "approve"})
        assert missing.status == 403
        page.goto(f"{dev.url}/fleet")
        refused = page.inner_text("table.list >> nth=1")
        assert "audrey" in refused and "wrong_role" in refused
    finally:
        stop(agent)
        page.close()


def test_an_admin_engages_a_kill_switch_naming_its_scope(dev: Dev, browser: Any) -> None:
    from agentaudit_client import GatewayClient  # noqa: PLC0415

    with GatewayClient(dev.target, timeout=30) as client:
        before = client.decide(run_id="run_before_switch", tenant_id="t_42", action="kb.search",
                               agent_id="support-agent", actor=("user", "u_1"), args={"q": "x"})  # fmt: skip
    assert before.decision == "allow", before
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(dev.link)
    page.goto(f"{dev.url}/switches")
    page.select_option("#scope", "tenant")
    page.fill("#target", "t_42")
    assert page.inner_text("#expected") == "tenant:t_42"
    page.fill("#reason", "drill <b>bold</b>")
    page.fill("#confirm", "tenant:t_42")
    page.get_by_role("button", name="Engage").click()
    page.wait_for_selector("tr.engaged")
    row = page.inner_text("tr.engaged")
    assert "t_42" in row and "drill <b>bold</b>" in row  # shown as text, not markup
    shot(page, "switches")
    page.close()
    with GatewayClient(dev.target, timeout=30) as client:

        def stopped() -> Any:
            result = client.decide(run_id="run_after_switch", tenant_id="t_42", action="kb.search",
                                   agent_id="support-agent", actor=("user", "u_1"), args={"q": "x"})  # fmt: skip
            return result if result.decision == "stop" else None

        result = eventually(stopped, timeout=30, interval=0.2, message="the next Decide stopped by the switch")
        assert (result.reason, result.policy_rule) == ("kill_switch_engaged", "operator:tenant"), result


def test_markup_in_args_and_names_renders_inert_in_the_browser(dev: Dev, browser: Any) -> None:
    from agentaudit_client import GatewayClient  # noqa: PLC0415

    script = "<script>alert(1)</script>"
    with GatewayClient(dev.target, timeout=30) as client:
        args = {"order_id": script, "amount": 250, "note": '<img src=x onerror="alert(2)">'}
        result = client.decide(
            run_id=f"run_markup{script}", tenant_id="t_42", action="refund.create", agent_id="support-agent",
            actor=("user", "u_1"), args=args,
        )  # fmt: skip
    assert result.decision == "approval_required", result
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(dev.link)
    card = pending_card(page, dev)
    assert script in card.inner_text()  # shown as text
    card.get_by_role("link", name="Review").click()
    page.wait_for_selector("table.args")
    assert script in page.inner_text("table.args")

    def searched() -> bool:
        # The approval reaches the console over the control channel at once; the run's events with the
        # forwarder's next batch.
        page.goto(f"{dev.url}/runs?tenant_id=t_42")
        return f"run_markup{script}" in page.inner_text("table.list")

    eventually(searched, timeout=60, interval=0.5, message="the run in the search page")
    page.get_by_role("link", name=f"run_markup{script}").first.click()
    page.wait_for_selector("ol.timeline")
    assert f"run_markup{script}" in page.inner_text("h1")
    assert page.locator("main script, main img").count() == 0
    assert dialogs == []
    page.close()


def test_a_postgresql_collector_with_two_sidecars_in_the_browser(
    tmp_path: Path, postgres_database: str, browser: Any
) -> None:
    # postgres_database first: it runs asyncio before Playwright's loop starts in this thread.
    from gateway.signing import Ed25519Signer, parse_verifier, write_secret_file  # noqa: PLC0415

    witness = Ed25519Signer("console.browser/witness", bytes([6]) * 32)
    write_secret_file(tmp_path / "witness.key", witness.encode_private() + "\n")
    ingest, console = free_port(), free_port()
    sidecars = []
    for name in ("one", "two"):
        directory = tmp_path / name
        devenv.prepare(directory, None, {})
        config = directory / devenv.CONFIG_FILE
        config.write_text(config.read_text().replace("  target: embedded", f"  target: 127.0.0.1:{ingest}"))
        origin = parse_verifier((directory / "signing.pub").read_text().strip()).name
        sidecars.append((directory, origin, f"127.0.0.1:{free_port()}"))
    origins = "".join(f"    - {{origin: {o}, keys: [{d / 'signing.pub'}]}}\n" for d, o, _ in sidecars)
    digest = hashlib.sha256(AUDITOR_TOKEN.encode()).hexdigest()
    (tmp_path / "collector.yaml").write_text(
        f"""collector:
  listen: ["127.0.0.1:{ingest}"]
  store: {postgres_database}
  witness_key: witness.key
  origins:
{origins}  operator:
    tokens: [{{identity: lead, roles: [approver], sha256: "{digest}"}}]
  console_listen: ["127.0.0.1:{console}"]
"""
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (tmp_path / "collector.log").open("wb") as log:
            procs.append(subprocess.Popen([*AGENTAUDIT, "collector", "--config", str(tmp_path / "collector.yaml")],
                                          cwd=ROOT, stdout=log, stderr=log))  # fmt: skip
        wait_serving(f"127.0.0.1:{ingest}", proc=procs[0])
        agents = []
        for directory, _, target in sidecars:
            with (directory / "sidecar.log").open("wb") as log:
                procs.append(subprocess.Popen(
                    [*AGENTAUDIT, "serve", "--config", str(directory / devenv.CONFIG_FILE), "--listen", target],
                    cwd=directory, stdout=log, stderr=log,
                ))  # fmt: skip
            wait_serving(target, proc=procs[-1])
            with (directory / "agent.log").open("wb") as log:
                agents.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "examples" / "approval_agent.py"), "--target", target, "--wait", "120"],
                    cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
        procs += agents
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        url = f"http://127.0.0.1:{console}"
        page.goto(f"{url}/login")
        page.fill("#token", AUDITOR_TOKEN)
        page.get_by_role("button", name="Sign in").click()

        def both() -> bool:
            page.goto(f"{url}/approvals")
            return page.locator("article.approval").count() == 2

        eventually(both, timeout=90, interval=1.0, message="a refund from each sidecar in the inbox")
        text = page.inner_text("main")
        assert all(origin in text for _, origin, _ in sidecars) and "ann@example.com" not in page.content()
        shot(page, "inbox-postgres-two-sidecars")
        page.locator("article.approval").first.get_by_role("link", name="Review").click()
        page.fill("#comment", "checked")
        page.get_by_role("button", name="Approve").click()
        page.wait_for_selector(".pill.granted, .pill.used")
        page.goto(f"{url}/fleet")
        fleet = page.inner_text("table.list")
        assert all(origin in fleet for _, origin, _ in sidecars)
        shot(page, "fleet-postgres-two-sidecars")
        page.close()
    finally:
        for proc in reversed(procs):
            stop(proc)
