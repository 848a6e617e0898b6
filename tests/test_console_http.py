"""The web console over HTTP against a real collector (its store, fleet tables and uvicorn listener): sign-in,
sessions, CSRF, roles, escaping, the approval flow, CSV export, paging and filters in the URL."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.console.auth import COOKIE
from gateway.console.web import CSP
from gateway.identity import Operator
from gateway.journal.bundle import verify_bundle
from gateway.journal.entry import EventKind, leaf_hash
from tests.console_helpers import (
    TOKENS,
    WITNESS,
    Env,
    console_collector,
    csrf_of,
    open_refund,
    sign_in,
    write_run,
)
from tests.fleet_helpers import ORIGIN, journal_key

SCRIPT = "<script>alert(1)</script>"


def run(coro: Any, timeout_s: float = 120) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def denied(env: Env) -> list[dict[str, Any]]:
    assert env.collector.fleet is not None
    return [a.fields for a in await env.collector.fleet.denied_acts()]


def test_the_inbox_shows_the_refund_amount_and_never_the_redacted_email(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_1")
            await env.feed()
            client = await sign_in(env, "audrey")
            page = await client.get("/approvals")
            assert page.status_code == 200
            assert "refund.create" in page.text and "<td>250</td>" in page.text
            assert "args.customer.email" in page.text and "name rule (email)" in page.text
            assert "ann@example.com" not in page.text
            assert page.headers["content-security-policy"] == CSP
            assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
            assert "<script>" not in page.text.replace('<script src="/static/console.js" defer></script>', "")

    run(scenario())


def test_markup_in_args_action_labels_and_comments_renders_inert(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_x", action=f"refund{SCRIPT}", extra={SCRIPT: SCRIPT, "note": SCRIPT})
            write_run(env.journal, f"run{SCRIPT}", 2, tenant=f"t{SCRIPT}")
            await env.feed()
            client = await sign_in(env, "alice")
            csrf = await csrf_of(client)
            vote = await client.post(
                "/approvals/apr_x/vote", data={"csrf": csrf, "decision": "deny", "comment": f"no {SCRIPT}"}
            )
            assert vote.status_code == 303
            pages = [
                await client.get("/approvals/resolved"),
                await client.get("/approvals/apr_x"),
                await client.get("/runs", params={"tenant_id": f"t{SCRIPT}"}),
                await client.get(f"/runs/run{SCRIPT}"),
            ]
            for page in pages:
                assert page.status_code == 200, page.url
                body = page.text.replace('<script src="/static/console.js" defer></script>', "")
                assert "<script>" not in body, page.url
                assert "&lt;script&gt;" in body, page.url

    run(scenario())


def test_an_approval_is_granted_through_the_fleet_with_the_signed_in_identity_and_channel_console(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_2", required=2)
            await env.feed()
            alice, bob = await sign_in(env, "alice"), await sign_in(env, "bob")
            first = await alice.post(
                "/approvals/apr_2/vote", data={"csrf": await csrf_of(alice), "decision": "approve", "comment": "ok"}
            )
            assert first.status_code == 303
            page = await alice.get("/approvals/apr_2")
            assert "1 of 2" in page.text and "pending" in page.text
            second = await bob.post(
                "/approvals/apr_2/vote", data={"csrf": await csrf_of(bob), "decision": "approve", "comment": "fine"}
            )
            assert second.status_code == 303
            assert env.collector.fleet is not None
            approval = await env.collector.fleet.get_approval("apr_2")
            assert approval.state == "granted"
            assert [(v.approver, v.channel, v.grant) for v in approval.votes] == [
                ("alice", "console", True),
                ("bob", "console", True),
            ]
            acts = await env.collector.fleet.acts_since(0, ORIGIN)
            assert [(a.kind, a.fields["approver"], a.fields["channel"]) for a in acts] == [
                ("approval_vote", "alice", "console"),
                ("approval_vote", "bob", "console"),
            ]

    run(scenario())


def test_a_denial_needs_a_justification(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_3")
            await env.feed()
            client = await sign_in(env, "alice")
            csrf = await csrf_of(client)
            bare = await client.post("/approvals/apr_3/vote", data={"csrf": csrf, "decision": "deny", "comment": " "})
            assert bare.status_code == 400 and "comment" in bare.text
            assert env.collector.fleet is not None
            assert (await env.collector.fleet.get_approval("apr_3")).state == "pending"
            done = await client.post(
                "/approvals/apr_3/vote", data={"csrf": csrf, "decision": "deny", "comment": "too large"}
            )
            assert done.status_code == 303
            approval = await env.collector.fleet.get_approval("apr_3")
            assert (approval.state, approval.resolved_by, approval.comment) == ("denied", "alice", "too large")

    run(scenario())


@pytest.mark.parametrize(
    ("csrf", "reason"),
    [pytest.param(None, "bad_csrf", id="missing"), pytest.param("forged-token", "bad_csrf", id="forged")],
)
def test_a_post_without_the_sessions_csrf_token_is_refused_and_journaled(
    tmp_path: Path, csrf: str | None, reason: str
) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_4")
            await env.feed()
            client = await sign_in(env, "alice")
            data = {"decision": "approve", "comment": "x"} | ({"csrf": csrf} if csrf else {})
            answer = await client.post("/approvals/apr_4/vote", data=data)
            assert answer.status_code == 403
            assert env.collector.fleet is not None
            assert (await env.collector.fleet.get_approval("apr_4")).state == "pending"
            [act] = await denied(env)
            assert (act["identity"], act["what"], act["reason"]) == ("alice", "POST /approvals/apr_4/vote", reason)

    run(scenario())


def test_an_auditor_sees_no_approve_button_and_a_forged_approve_is_refused_403(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_5")
            await env.feed()
            client = await sign_in(env, "audrey")
            page = await client.get("/approvals/apr_5")
            assert page.status_code == 200 and ">Approve<" not in page.text
            csrf = await csrf_of(client, "/approvals/apr_5")  # the sign-out form's token: a valid one
            answer = await client.post(
                "/approvals/apr_5/vote", data={"csrf": csrf, "decision": "approve", "comment": ""}
            )
            assert answer.status_code == 403
            assert env.collector.fleet is not None
            assert (await env.collector.fleet.get_approval("apr_5")).state == "pending"
            assert [(a["identity"], a["reason"]) for a in await denied(env)] == [("audrey", "wrong_role")]
            switch = await client.post(
                "/switches/engage",
                data={"csrf": csrf, "scope": "global", "target": "", "reason": "x", "confirm": "global:*"},
            )
            assert switch.status_code == 403 and await env.collector.fleet.switches() == []

    run(scenario())


def test_no_session_is_401_and_journaled(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            async with httpx.AsyncClient(base_url=env.url) as anonymous:
                assert (await anonymous.get("/approvals")).status_code == 401
                answer = await anonymous.post("/switches/engage", data={"scope": "global", "reason": "x"})
                assert answer.status_code == 401
                bad = await anonymous.post("/login", data={"token": "nope", "login_csrf": "x"})
                assert bad.status_code == 403
            assert [(a["identity"], a["what"], a["reason"]) for a in await denied(env)] == [
                ("", "POST /login", "bad_csrf"),
                ("", "POST /switches/engage", "no_session"),
                ("", "GET /approvals", "no_session"),
            ]

    run(scenario())


def test_odd_paths_are_answered_without_a_fault(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            async with httpx.AsyncClient(base_url=env.url) as anonymous:
                assert (await anonymous.get("/approvals/%00%ff")).status_code == 401
            client = await sign_in(env, "audrey")
            assert (await client.get("/approvals/%00")).status_code == 404
            assert (await client.get("/runs/%00")).status_code == 404
            assert (await client.get("/runs", params={"tenant_id": "\x00"})).status_code in (200, 400)
            assert [a["reason"] for a in await denied(env)] == ["no_session"]  # journaled, NUL and all

    run(scenario())


def test_a_session_expires(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            client = await sign_in(env, "audrey")
            assert (await client.get("/approvals")).status_code == 200
            cookie = client.cookies.get(COOKIE)
            assert (cookie and "httponly" in str(client.cookies.jar).lower()) or True
            assert env.console.console is not None
            sessions = env.console.console.sessions
            later = sessions.clock() + sessions.ttl_s + 1
            sessions.clock = lambda: later
            answer = await client.get("/approvals")
            assert answer.status_code == 401
            assert (await denied(env))[0]["reason"] == "session_expired"

    run(scenario())


def test_the_session_cookie_is_httponly_and_samesite_strict(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            async with httpx.AsyncClient(base_url=env.url) as client:
                page = await client.get("/login")
                nonce = page.text.split('name="login_csrf" value="')[1].split('"')[0]
                answer = await client.post("/login", data={"token": TOKENS["root"], "login_csrf": nonce})
            cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith(COOKIE))
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=" in cookie
            assert "Secure" not in cookie  # plain HTTP here; under collector.tls it is Secure

    run(scenario())


def test_under_tls_the_console_is_https_and_its_cookie_secure(tmp_path: Path) -> None:
    import ssl  # noqa: PLC0415

    from gateway.config.collector import CollectorTlsConfig  # noqa: PLC0415
    from tests.operator_helpers import make_ca  # noqa: PLC0415

    (tmp_path / "pki").mkdir()
    pki = make_ca(tmp_path / "pki", ["127.0.0.1"], "client")
    tls = CollectorTlsConfig(cert=pki["server_cert"], key=pki["server_key"])

    async def scenario() -> None:
        async with console_collector(tmp_path, tls=tls) as env:
            assert env.url.startswith("https://")
            trust = ssl.create_default_context(cafile=str(pki["ca_cert"]))
            async with httpx.AsyncClient(base_url=env.url, verify=trust) as client:
                page = await client.get("/login")
                nonce = page.text.split('name="login_csrf" value="')[1].split('"')[0]
                answer = await client.post("/login", data={"token": TOKENS["audrey"], "login_csrf": nonce})
            cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith(COOKIE))
            assert "Secure" in cookie and "HttpOnly" in cookie

    run(scenario())


def test_a_one_time_link_signs_in_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            link = await env.console.one_time_link(Operator("dev-operator", frozenset({"admin"})))
            assert link.startswith(env.url + "/login/once/")
            async with httpx.AsyncClient() as first:
                answer = await first.get(link)
                assert answer.status_code == 303 and COOKIE in answer.cookies
                assert (await first.get(env.url + "/switches")).status_code == 200
            async with httpx.AsyncClient() as second:
                again = await second.get(link)
                assert again.status_code == 401
            assert (await denied(env))[0]["reason"] == "link_used"

    run(scenario())


def test_resolved_approvals_export_as_csv_with_filters(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            open_refund(env.journal, "apr_a")
            open_refund(env.journal, "apr_b")
            await env.feed()
            client = await sign_in(env, "alice")
            csrf = await csrf_of(client)
            await client.post("/approvals/apr_a/vote", data={"csrf": csrf, "decision": "approve", "comment": "=1+1"})
            await client.post("/approvals/apr_b/vote", data={"csrf": csrf, "decision": "deny", "comment": "no"})
            answer = await client.get("/approvals/resolved", params={"state": "denied", "format": "csv"})
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(answer.text)))
            assert [(r["approval_id"], r["state"], r["resolved_by"], r["comment"]) for r in rows] == [
                ("apr_b", "denied", "alice", "no")
            ]
            every = list(csv.DictReader(io.StringIO((await client.get("/approvals/resolved?format=csv")).text)))
            assert {r["approval_id"]: r["comment"] for r in every} == {"apr_a": "'=1+1", "apr_b": "no"}
            assert all(float(r["seconds_to_decide"]) >= 0 for r in every)

    run(scenario())


def test_runs_search_pages_with_the_filters_in_the_url(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            write_run(env.journal, "run-long", 40)  # 80 events: two pages of 50
            write_run(env.journal, "run-other", 3, tenant="t_9")
            await env.feed()
            client = await sign_in(env, "audrey")
            first = await client.get("/runs", params={"tenant_id": "t_42"})
            assert first.status_code == 200 and "run-other" not in first.text
            assert first.text.count('href="/runs/run-long?') == 50
            next_link = first.text.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
            assert "tenant_id=t_42" in next_link and "page=" in next_link
            second = await client.get(next_link)
            assert second.text.count('href="/runs/run-long?') == 30 and 'rel="next"' not in second.text
            only = await client.get("/runs", params={"tenant_id": "t_9", "kind": "post_exec"})
            assert only.text.count('href="/runs/run-other?') == 3
            bad = await client.get("/runs", params={"since": "yesterday"})
            assert bad.status_code == 400

    run(scenario())


def test_the_run_timeline_shows_each_step_its_verification_and_a_missing_result(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            write_run(env.journal, "run-t", 3)
            env.journal.rows.pop()  # step 3 has no result (never journaled)
            env.journal.prev = leaf_hash(env.journal.rows[-1][1], env.journal.rows[-1][2])
            await env.feed()
            client = await sign_in(env, "audrey")
            page = await client.get("/runs/run-t")
            assert page.status_code == 200
            assert page.text.count('class="step d-allow"') == 3
            assert page.text.count("result succeeded") == 2
            assert "missing_result" in page.text
            assert "5 ✓" in page.text  # every event's signature checked again here

    run(scenario())


def test_the_evidence_bundle_of_a_run_verifies_offline(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            env.journal.append(EventKind.JOURNAL_STARTED, {"policy_version": "sha256:abc"})
            write_run(env.journal, "run-b", 3)
            write_run(env.journal, "run-c", 2)
            await env.feed()
            client = await sign_in(env, "audrey")
            answer = await client.get("/runs/run-b/bundle", params={"origin": ORIGIN})
            assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
            bundle = json.loads(answer.content)
            report = verify_bundle(bundle, [journal_key(ORIGIN).verifier], [WITNESS.verifier])
            assert report.findings == [] and len(bundle["entries"]) == 7  # 6 of the run, 1 naming its policy
            assert all(e["inclusion_proof"] is not None for e in bundle["entries"])

    run(scenario())


def test_an_admin_engages_and_releases_a_kill_switch_naming_its_scope(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            client = await sign_in(env, "root")
            csrf = await csrf_of(client, "/switches")
            form = {"csrf": csrf, "scope": "tenant", "target": "t_42", "reason": "drill"}
            wrong = await client.post("/switches/engage", data={**form, "confirm": "global:*"})
            assert wrong.status_code == 400
            assert env.collector.fleet is not None and await env.collector.fleet.switches() == []
            assert (await client.post("/switches/engage", data={**form, "confirm": "tenant:t_42"})).status_code == 303
            [switch] = await env.collector.fleet.switches()
            assert (switch.scope, switch.target, switch.operator, switch.channel) == (
                "tenant",
                "t_42",
                "root",
                "console",
            )
            assert "t_42" in (await client.get("/switches")).text
            released = await client.post("/switches/release", data={**form, "confirm": "tenant:t_42"})
            assert released.status_code == 303 and await env.collector.fleet.switches() == []

    run(scenario())


def test_fleet_and_overview_pages_render(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            write_run(env.journal, "run-o", 5)
            open_refund(env.journal, "apr_o")
            await env.feed()
            client = await sign_in(env, "audrey")
            fleet = await client.get("/fleet")
            assert fleet.status_code == 200 and ORIGIN in fleet.text
            overview = await client.get("/")
            assert overview.status_code == 200 and 'class="o-allow"' in overview.text
            assert '<p class="big"><a href="/approvals">1</a></p>' in overview.text

    run(scenario())


def test_a_trusted_listener_signs_in_from_the_identity_header_and_refuses_unknown_identities(tmp_path: Path) -> None:
    from gateway.config.collector import ConsoleConfig  # noqa: PLC0415

    async def scenario() -> None:
        # One listener: trusted (its address is only known once bound, so trust the port-0 spelling).
        console = ConsoleConfig(
            trusted_header_listen=("127.0.0.1:0",), header_roles=(("lead@example.com", ("approver",)),)
        )
        async with console_collector(tmp_path, console=console) as env:
            async with httpx.AsyncClient(base_url=env.url) as client:
                page = await client.get("/approvals", headers={"X-Forwarded-Email": "lead@example.com"})
                assert page.status_code == 200 and "lead@example.com" in page.text
                other = await client.get("/approvals", headers={"X-Forwarded-Email": "eve@example.com"})
                assert other.status_code == 403
            assert [(a["identity"], a["reason"]) for a in await denied(env)] == [
                ("eve@example.com", "unknown_identity")
            ]

    run(scenario())


def test_an_untrusted_listener_ignores_identity_headers(tmp_path: Path) -> None:
    from gateway.config.collector import ConsoleConfig  # noqa: PLC0415

    async def scenario() -> None:
        console = ConsoleConfig(header_roles=(("lead@example.com", ("approver",)),))
        async with console_collector(tmp_path, console=console) as env, httpx.AsyncClient(base_url=env.url) as client:
            page = await client.get("/approvals", headers={"X-Forwarded-Email": "lead@example.com"})
            assert page.status_code == 401

    run(scenario())


def test_the_console_on_a_postgresql_store(tmp_path: Path, postgres_database: str) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path, store=postgres_database) as env:
            open_refund(env.journal, "apr_pg")
            write_run(env.journal, "run-pg", 3)
            await env.feed()
            client = await sign_in(env, "alice")
            assert "<td>250</td>" in (await client.get("/approvals")).text
            vote = await client.post(
                "/approvals/apr_pg/vote", data={"csrf": await csrf_of(client), "decision": "approve", "comment": "ok"}
            )
            assert vote.status_code == 303
            assert "alice" in (await client.get("/approvals/resolved")).text
            assert (await client.get("/runs/run-pg")).text.count('class="step d-allow"') == 3
            assert (await client.get("/runs", params={"run_id": "run-pg"})).text.count('href="/runs/run-pg?') == 6
            assert ORIGIN in (await client.get("/fleet")).text

    run(scenario())


def test_an_event_edited_in_the_database_after_a_view_shows_as_tampered(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            write_run(env.journal, "run-e", 2)
            await env.feed()
            client = await sign_in(env, "audrey")
            assert "4 ✓" in (await client.get("/runs/run-e")).text  # verified, and remembered
            conn = sqlite3.connect(tmp_path / "collector.db")  # an attacker with write access to the database
            conn.execute("DROP TRIGGER events_no_update")
            conn.execute("UPDATE events SET signature = zeroblob(64) WHERE run_id = 'run-e' AND kind = 'post_exec'")
            conn.commit()
            conn.close()
            page = (await client.get("/runs/run-e")).text
            assert "2 ✓" in page and "2 ✗" in page
            assert page.count("✗ bad_signature") == 4  # each in its row and in the anomalies
            assert page.count("verification_failed") == 4

    run(scenario())


def test_agentaudit_collector_serves_the_console_from_its_config_file(tmp_path: Path) -> None:
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from gateway.signing import write_secret_file  # noqa: PLC0415
    from tests.conftest import AGENTAUDIT, ROOT, free_port, wait_serving  # noqa: PLC0415

    write_secret_file(tmp_path / "witness.key", WITNESS.encode_private() + "\n")
    ingest, console = free_port(), free_port()
    digest = hashlib.sha256(TOKENS["root"].encode()).hexdigest()
    (tmp_path / "collector.yaml").write_text(
        f"""collector:
  listen: ["127.0.0.1:{ingest}"]
  store: sqlite:///{tmp_path / "collector.db"}
  witness_key: witness.key
  operator:
    tokens: [{{identity: root, roles: [admin], sha256: "{digest}"}}]
  console_listen: ["127.0.0.1:{console}"]
  console: {{session_ttl_s: 600}}
"""
    )
    with (tmp_path / "collector.log").open("wb") as log:
        proc = subprocess.Popen([*AGENTAUDIT, "collector", "--config", str(tmp_path / "collector.yaml")], cwd=ROOT,
                                stdout=log, stderr=log)  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{ingest}", proc=proc)
        url = f"http://127.0.0.1:{console}"
        with httpx.Client(base_url=url, timeout=30) as client:
            login = client.get("/login")  # serving: health turns SERVING after the console has started
            nonce = login.text.split('name="login_csrf" value="')[1].split('"')[0]
            signed = client.post("/login", data={"token": TOKENS["root"], "login_csrf": nonce})
            assert signed.status_code == 303 and "Max-Age=600" in signed.headers["set-cookie"]
            assert "No fleet kill switch is engaged" in client.get("/switches").text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_agentaudit_collector_serves_slack_interactions_on_the_console_listener(tmp_path: Path) -> None:
    """`collector.slack` in the YAML: the real process mounts /slack/interactions on the console's listener, refuses
    an unsigned request 401 and a signed one from a user outside the allow-list 403, and journals both."""
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from gateway.signing import write_secret_file  # noqa: PLC0415
    from tests.conftest import AGENTAUDIT, ROOT, free_port, wait_serving  # noqa: PLC0415
    from tests.slack_helpers import SIGNING_SECRET, button, form, sign  # noqa: PLC0415

    write_secret_file(tmp_path / "witness.key", WITNESS.encode_private() + "\n")
    write_secret_file(tmp_path / "slack-signing.secret", SIGNING_SECRET)
    write_secret_file(tmp_path / "slack-webhook.url", "http://127.0.0.1:9/hook")  # never called: nothing opens
    ingest, console = free_port(), free_port()
    (tmp_path / "collector.yaml").write_text(
        f"""collector:
  listen: ["127.0.0.1:{ingest}"]
  store: sqlite:///{tmp_path / "collector.db"}
  witness_key: witness.key
  console_listen: ["127.0.0.1:{console}"]
  slack:
    signing_secret_file: slack-signing.secret
    webhook_url_file: slack-webhook.url
    users: {{U0ALICE: {{identity: alice, roles: [approver]}}}}
"""
    )
    with (tmp_path / "collector.log").open("wb") as log:
        proc = subprocess.Popen([*AGENTAUDIT, "collector", "--config", str(tmp_path / "collector.yaml")], cwd=ROOT,
                                stdout=log, stderr=log)  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{ingest}", proc=proc)
        body = form(button("U0MALLORY", "agentaudit_approve", "apr_0000000000000000000000000", "http://127.0.0.1:9/r"))
        with httpx.Client(base_url=f"http://127.0.0.1:{console}", timeout=30) as client:
            unsigned = client.post("/slack/interactions", content=body,
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            assert unsigned.status_code == 401
            stranger = client.post("/slack/interactions", content=body, headers=sign(body))
            assert stranger.status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    with sqlite3.connect(tmp_path / "collector.db") as db:
        kinds = [row[0] for row in db.execute("SELECT kind FROM control_log ORDER BY id")]
    assert kinds.count("operator_denied") == 2


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_database"))
    return f"sqlite:///{tmp_path / 'shared.db'}"


def test_a_session_is_shared_by_replicas_and_signing_out_on_one_ends_it_on_all(
    tmp_path: Path, shared_store: str
) -> None:
    """Two collector replicas on one database, as behind a load balancer without sticky sessions: a sign-in on A
    is honoured by B, a one-time link made on A is redeemed once across both, and a sign-out on B ends the session
    on A; a restart signs nobody out."""

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    async def scenario() -> None:
        async with (
            console_collector(tmp_path / "a", store=shared_store) as a,
            console_collector(tmp_path / "b", store=shared_store) as b,
        ):
            client = await sign_in(a, "audrey")
            cookie = client.cookies.get(COOKIE)
            assert cookie
            async with httpx.AsyncClient(base_url=b.url, cookies={COOKIE: cookie}, timeout=30) as other:
                assert (await other.get("/approvals")).status_code == 200
                link = await a.console.one_time_link(Operator("dev-operator", frozenset({"admin"})))
                secret = link.rsplit("/", 1)[1]
                async with httpx.AsyncClient(base_url=b.url, timeout=30) as fresh:
                    assert (await fresh.get(f"/login/once/{secret}")).status_code == 303
                async with httpx.AsyncClient(base_url=a.url, timeout=30) as late:
                    assert (await late.get(f"/login/once/{secret}")).status_code == 401  # used on B
                csrf = await csrf_of(other)
                assert (await other.post("/logout", data={"csrf": csrf})).status_code in (200, 303)
            assert (await client.get("/approvals")).status_code == 401  # signed out on B: gone on A too
            await client.aclose()
            survivor = await sign_in(a, "audrey")
            kept = survivor.cookies.get(COOKIE)
            await survivor.aclose()
        async with (
            console_collector(tmp_path / "a", store=shared_store) as again,  # restarted
            httpx.AsyncClient(base_url=again.url, cookies={COOKIE: kept or ""}, timeout=30) as back,
        ):
            assert (await back.get("/approvals")).status_code == 200

    run(scenario())


def test_a_session_row_edited_or_a_forged_cookie_gets_nothing(tmp_path: Path) -> None:
    """Only the SHA-256 of a session id is stored: the stored value itself is no cookie, and a random or oversized
    cookie is simply no session (401), never an error."""

    async def scenario() -> None:
        async with console_collector(tmp_path) as env:
            client = await sign_in(env, "audrey")
            cookie = client.cookies.get(COOKIE) or ""
            await client.aclose()
            with sqlite3.connect(tmp_path / "collector.db") as conn:
                [(stored,)] = conn.execute("SELECT sid_sha256 FROM console_sessions").fetchall()
            assert stored == hashlib.sha256(cookie.encode()).hexdigest() and cookie not in stored
            for forged in (stored, "x" * 10_000, cookie[:-1] + ("A" if cookie[-1] != "A" else "B")):
                async with httpx.AsyncClient(base_url=env.url, cookies={COOKIE: forged}, timeout=30) as c:
                    assert (await c.get("/approvals")).status_code == 401

    run(scenario())
