"""The sidecar's footprint: what its start imports (issue 20 part 1), checked in a real sidecar process."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from gateway.canonical import JsonPayload
from gateway.cli.parser import build_parser
from gateway.errors import ViolationError
from gateway.journal.store import JournalReader
from gateway.journal.writer import JournalWriter
from gateway.policy.model import ActionRequest, Decision, Verdict
from gateway.redaction import Redactor
from gateway.sidecar import recorder as recorder_module
from gateway.sidecar.recorder import AuditRecorder, ByteBoundedCache
from tests.conftest import ROOT, free_port, start_gateway
from tests.journal_helpers import fixed_signer

# Packages a sidecar must not load at start when nothing configured needs them: the collector (forwarding to a
# remote one, or off), the MCP proxy and the console, OpenTelemetry (tracing off), CEL (no rule has `when`), httpx
# (no alert webhook), and the CEL package's command line (typer, rich, prompt_toolkit), which `import cel` drags in;
# prometheus_client's HTTP exposition and the standard library's HTTP and mail stack it imports (metrics.listen off),
# uuid and email (alerts without a webhook); the other commands of the CLI (offline readers, verify, bundles);
# gRPC reflection and protobuf's descriptor_pb2, loaded by the first reflection call (gateway/rpc/reflection.py);
# importlib.resources, ctypes.util and sysconfig with what they import, for the three values they were asked for;
# orjson, the collector's and verify's body check (~2.7 MiB), even where the start's self-check reads entries.
NOT_AT_START = (
    "gateway.collector",
    "gateway.mcp",
    "gateway.console",
    "gateway.slack",
    "opentelemetry",
    "cel",
    "httpx",
    "typer",
    "rich",
    "prompt_toolkit",
    "prometheus_client.exposition",
    "prometheus_client.process_collector",
    "http.server",
    "http.client",
    "wsgiref",
    "urllib.request",
    "email",
    "uuid",
    "gateway.cli.journal",
    "gateway.cli.evidence",
    "gateway.cli.operator",
    "gateway.journal.verify",
    "gateway.journal.bundle",
    "grpc_reflection.v1alpha",  # (grpc itself imports the empty top-level package)
    "google.protobuf.descriptor_pb2",
    # what importlib.resources, ctypes.util and sysconfig would drag in (the policy's files, libc, EXT_SUFFIX)
    "importlib.resources",
    "zipfile",
    "tempfile",
    "ctypes.util",
    "sysconfig",
    "orjson",
)

# Runs `agentaudit dev` in this process; once it answers SERVING, writes sys.modules to a file and stops it.
_DRIVER = """
import json, os, signal, sys, threading, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from gateway.cli import main

directory, out = sys.argv[1], sys.argv[2]
target = f"unix://{directory}/gateway.sock"

def watch():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                with open(out, "w") as f:
                    json.dump(sorted(sys.modules), f)
                break
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(main(["dev", "--dir", directory, "--listen", target]))
"""


def started_modules(tmp: Path, env: dict[str, str]) -> list[str]:
    out = tmp / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(tmp), str(out)],
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.exists(), f"the sidecar did not reach SERVING (exit {done.returncode}):\n{done.stderr[-3000:]}"
    modules: list[str] = json.loads(out.read_text())
    return modules


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTAUDIT_")}


def loaded(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


# A policy with no `when` condition (the example policy has four).
_PLAIN_POLICY = """version: 1
mode: enforce
access:
  default: deny
  roles:
    reader:
      actions: ["kb.*"]
  bindings:
    - name: anyone_reads
      agents: ["*"]
      tenants: ["*"]
      roles: [reader]
limits:
  - name: steps_per_run
    type: steps
    max: 200
"""


def test_a_sidecar_start_imports_only_what_its_configuration_needs(tmp_path: Path) -> None:
    # Forwarding to a remote collector (nothing listens there: the forwarder retries in the background), tracing
    # and metrics off, a policy without `when`, no webhook.
    tmp_path.chmod(0o700)
    (tmp_path / "policy.yaml").write_text(_PLAIN_POLICY)
    remote = f"unix://{tmp_path}/remote-collector.sock"
    # Twice: the second start's self-check reads the entries the first one journaled.
    for _ in range(2):
        modules = started_modules(tmp_path, {"AGENTAUDIT_FORWARD_TARGET": remote})
        assert "gateway.app" in modules and "gateway.sidecar.forwarder" in modules  # it really started
        found = {package: loaded(modules, package) for package in NOT_AT_START}
        assert not any(found.values()), {k: v[:5] for k, v in found.items() if v}


def test_the_example_policy_loads_the_cel_binding_and_nothing_else(tmp_path: Path) -> None:
    modules = started_modules(tmp_path, {"AGENTAUDIT_FORWARD_TARGET": ""})
    assert "cel.cel" in modules  # its rules have `when` conditions
    found = {package: loaded(modules, package) for package in NOT_AT_START if package != "cel"}
    assert not any(found.values()), {k: v[:5] for k, v in found.items() if v}
    assert loaded(modules, "cel") == ["cel.cel"]


def test_a_condition_loads_the_cel_binding_without_its_command_line() -> None:
    code = (
        "import json, sys\n"
        "from gateway.policy.cel import compile_condition, context\n"
        "c = compile_condition(\"action == 'kb.search' && labels.exists(k, k == 'team')\")\n"
        "ok = c.evaluate(context({'action': 'kb.search', 'labels': {'team': 'a'}}))\n"
        "no = c.evaluate(context({'action': 'kb.delete', 'labels': {'team': 'a'}}))\n"
        "print(json.dumps([ok, no, sorted(sys.modules)]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    ok, no, modules = json.loads(done.stdout)
    assert (ok, no) == (True, False)
    assert "cel.cel" in modules
    for package in ("typer", "rich", "prompt_toolkit", "cel.cli"):
        assert not loaded(modules, package), package


def test_the_cel_binding_is_shared_with_a_later_import_cel() -> None:
    code = (
        "from gateway.policy.cel import _cel, compile_condition\n"
        "compile_condition('action == \"x\"')\n"
        "import cel\n"
        "assert cel.compile is _cel().compile, 'two copies of the extension'\n"
        "print(cel.evaluate('1 + 1 == 2'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


# --- prometheus_client's __init__ deferred (gateway.metrics) -------------------------------------------------


def test_metrics_listen_exposes_everything_the_whole_package_registers(tmp_path: Path) -> None:
    # The sidecar loads the metric types without the package's __init__; serving /metrics must run it first, so the
    # process, platform and GC collectors it registers are there, as an ordinary `import prometheus_client` has them.
    done = subprocess.run(
        [sys.executable, "-c", "import prometheus_client as p; print(p.generate_latest().decode())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    defaults = {line.split()[2] for line in done.stdout.splitlines() if line.startswith("# TYPE ")}
    assert {"process_resident_memory_bytes", "python_info"} <= defaults  # what this test is about
    port = free_port()
    gw = start_gateway(tmp_path, extra_env={"AGENTAUDIT_METRICS_LISTEN": f"127.0.0.1:{port}"})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        gw.stop()
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert defaults <= exposed, sorted(defaults - exposed)
    assert {"agentaudit_build_info", "agentaudit_health_state", "agentaudit_decisions_total"} <= exposed


def _package(root: Path) -> None:
    """deferpkg: an __init__ that counts its runs (and fails while FAIL exists), a submodule importing a sibling."""
    pkg = root / "deferpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            import builtins, os
            builtins.INIT_RUNS = getattr(builtins, "INIT_RUNS", 0) + 1
            if os.path.exists(os.path.join(os.path.dirname(__file__), "FAIL")):
                raise RuntimeError("init failed")
            from . import sub
            from .sub import helper
            VALUE = 42
            """
        )
    )
    (pkg / "sub.py").write_text("from . import sibling\n\ndef helper():\n    return sibling.NAME\n")
    (pkg / "sibling.py").write_text("NAME = 'sibling'\n")


def _run(root: Path, code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_deferred_package_imports_its_submodules_without_its_init_and_runs_it_once_when_asked(
    tmp_path: Path,
) -> None:
    _package(tmp_path)
    out = _run(
        tmp_path,
        """
        import builtins, sys
        from gateway.metrics import _defer_init
        _defer_init("deferpkg")
        from deferpkg.sub import helper
        import deferpkg.sibling
        before = getattr(builtins, "INIT_RUNS", 0)
        print(before, helper(), hasattr(sys.modules["deferpkg"], "__wrapped__"), getattr(builtins, "INIT_RUNS", 0))
        from deferpkg import VALUE
        import deferpkg
        print(VALUE, deferpkg.helper is helper, deferpkg.sub.helper is helper, builtins.INIT_RUNS)
        print(deferpkg.VALUE, builtins.INIT_RUNS, type(deferpkg).__name__)
        """,
    )
    assert out.splitlines() == ["0 sibling False 0", "42 True True 1", "42 1 module"]


def test_a_submodule_asked_for_as_an_attribute_is_imported_without_the_init(tmp_path: Path) -> None:
    _package(tmp_path)
    out = _run(
        tmp_path,
        """
        import builtins
        from gateway.metrics import _defer_init
        _defer_init("deferpkg")
        import deferpkg
        print(deferpkg.sibling.NAME, deferpkg.sub.helper(), getattr(builtins, "INIT_RUNS", 0))
        print(deferpkg.VALUE, builtins.INIT_RUNS)
        """,
    )
    assert out.splitlines() == ["sibling sibling 0", "42 1"]


def test_a_deferred_init_that_fails_raises_and_raises_again(tmp_path: Path) -> None:
    _package(tmp_path)
    (tmp_path / "deferpkg" / "FAIL").touch()
    out = _run(
        tmp_path,
        """
        import builtins
        from gateway.metrics import _defer_init
        _defer_init("deferpkg")
        import deferpkg
        for _ in range(2):
            try:
                deferpkg.VALUE
            except RuntimeError as exc:
                print(exc, builtins.INIT_RUNS)
        """,
    )
    assert out.splitlines() == ["init failed 1", "init failed 2"]


def test_an_imported_package_is_left_alone(tmp_path: Path) -> None:
    _package(tmp_path)
    out = _run(
        tmp_path,
        """
        import builtins, deferpkg
        from gateway.metrics import _defer_init
        _defer_init("deferpkg")
        import sys
        print(sys.modules["deferpkg"] is deferpkg, builtins.INIT_RUNS, type(deferpkg).__name__)
        """,
    )
    assert out == "True 1 module"


# --- the sidecar commands' parser ----------------------------------------------------------------------------


def _subparsers(parser: object) -> dict[str, object]:
    actions = getattr(parser, "_subparsers")._group_actions
    return dict(actions[0].choices)


@pytest.mark.parametrize("command", ["dev", "serve"])
def test_a_sidecar_command_parses_and_helps_as_it_does_with_every_command_known(command: str) -> None:
    alone, full = _subparsers(build_parser([command])), _subparsers(build_parser())
    assert set(alone) == {"dev", "serve"} and len(full) > 10
    assert alone[command].format_help() == full[command].format_help()  # type: ignore[attr-defined]
    argv = [command, "--listen", "unix:///tmp/x.sock", *(["--config", "c.yaml"] if command == "serve" else [])]
    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_a_sidecar_command_named_later_still_gets_every_command() -> None:
    # Only the first argument selects the short parser: `agentaudit verify dev` is verify's, with every command.
    assert len(_subparsers(build_parser(["verify", "dev"]))) == len(_subparsers(build_parser()))


# --- the recorder's caches are bounded by bytes --------------------------------------------------------------


def test_a_byte_bounded_cache_holds_its_budget_and_forgets_the_oldest_first() -> None:
    cache: ByteBoundedCache[str, str] = ByteBoundedCache(1000, lambda key, value: len(key) + len(value))
    for i in range(200):
        cache.put(f"k{i}", "v" * (i % 37))  # entries of varying size
        assert cache.bytes <= 1000
    assert cache.bytes == sum(len(k) + len(cache.get(k) or "") for k in [f"k{i}" for i in range(200)] if k in cache)
    kept = [i for i in range(200) if f"k{i}" in cache]
    assert kept == list(range(kept[0], 200)), "only the oldest are forgotten"
    cache.put("k199", "v" * 100)  # replacing counts the new size, not both
    assert cache.get("k199") == "v" * 100 and cache.bytes <= 1000
    assert cache.pop("k199") == "v" * 100 and "k199" not in cache
    assert cache.bytes == sum(len(k) + len(cache.get(k) or "") for k in [f"k{i}" for i in range(200)] if k in cache)
    huge = ByteBoundedCache[str, str](10, lambda key, value: 100)
    huge.put("a", "b")  # larger than the whole budget: not kept
    assert len(huge) == 0 and huge.bytes == 0


def test_results_stay_exactly_once_when_the_caches_forget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Budgets of a few entries: nearly every pre-event and outcome is evicted, so reports go to the journal.
    monkeypatch.setattr(recorder_module, "PRE_EVENT_CACHE_BYTES", 2_000)
    monkeypatch.setattr(recorder_module, "RESULT_CACHE_BYTES", 1_000)
    steps = 60

    async def main() -> None:
        path = tmp_path / "journal.db"
        writer, reader = JournalWriter(path, fixed_signer()), JournalReader(path)
        recorder = AuditRecorder(writer, reader, Redactor.create(os.urandom(32), [], True))
        await writer.start()
        try:
            allow = Decision(Verdict.ALLOW, "allowed", "access", "r", "v1")
            stop = Decision(Verdict.STOP, "access_denied", "access", "r", "v1")
            pres = []
            for i in range(steps):
                request = ActionRequest(f"run_{i % 3}", i, "t_42", "user", "u_1", "agent", "kb.search", {}, "t")
                decision = stop if i % 10 == 0 else allow
                pres.append(await recorder.record_decision(request, recorder.prepare("kb.search", {}), decision, ""))
            assert recorder._pre_events.bytes <= 2_000 and len(recorder._pre_events) < steps // 4

            async def report(event_id: str) -> tuple[str, bool, bool]:
                try:
                    outcome = await recorder.record_result(event_id, "ok", "", JsonPayload({}, True), 1)
                except ViolationError:
                    return ("violation", True, True)
                return (outcome.event_id, outcome.duplicate, outcome.violation)

            # Concurrent duplicates of every report at once, then every report again after the caches forgot.
            first = await asyncio.gather(*(report(p.event_id) for p in pres for _ in range(3)))
            assert recorder._results.bytes <= 1_000 and not recorder._reporting
            again = await asyncio.gather(*(report(p.event_id) for p in pres))
            for i in range(steps):
                answers = first[3 * i : 3 * i + 3]
                if i % 10 == 0:
                    assert all(a[0] == "violation" for a in (*answers, again[i]))
                    continue
                ids = {a[0] for a in answers} | {again[i][0]}
                assert len(ids) == 1, f"step {i}: one post-event whatever the cache held"
                assert sorted(a[1] for a in answers) == [False, True, True] and again[i][1] is True
        finally:
            await writer.aclose()
            await reader.aclose()
        with sqlite3.connect(path) as conn:
            posts = conn.execute(
                "SELECT link_event_id, count(*) FROM journal WHERE kind IN ('post_exec', 'violation') GROUP BY 1"
            ).fetchall()
        assert len(posts) == steps and all(n == 1 for _, n in posts), "each pre-event has exactly one result"

    asyncio.run(main())
