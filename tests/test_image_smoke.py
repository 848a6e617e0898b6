"""The container image (deploy/Dockerfile), tested without a container engine.

CI has no Docker engine, so these tests check what the image is and runs:

* the Dockerfile, read with BuildKit's own parser (the ``dockerfile`` package), and its invariants (two stages
  from ``ARG BASE_IMAGE``, non-root numeric USER, tini as PID 1, journal VOLUME, no key or secret copied in,
  exec-form ENTRYPOINT/CMD), and that ``/.dockerignore`` keeps secrets out of the build context while letting in
  everything the Dockerfile copies;
* a smoke run that does what the image does: builds both wheels, installs them into a fresh venv, lays out the
  Kubernetes pod's mounts (deploy/kubernetes' sidecar config and policy, keys from ``agentaudit keygen``, 0600
  and owned by the unprivileged user, journal and socket directories), then runs the Dockerfile's own
  ENTRYPOINT + CMD (parsed from the file, so the two cannot drift) as an unprivileged user; checks what the
  kubelet probes on the health listener, a Decide over the unix socket, /metrics; sends SIGTERM and checks a
  clean exit, JSON logs and a journal that verifies and holds the decisions;
* the collector pod the same way (the manifest's args and config, PostgreSQL from ``AGENTAUDIT_TEST_POSTGRES_DSN``
  in a fresh database), with the sidecar forwarding to it: the journal verifies as witnessed by its key.

tini comes from Debian (``apt-get install -y tini``); without it the smoke run drops ``tini --`` locally, and
fails in CI (``CI`` set), where it must be installed.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentaudit_client import GatewayClient, GatewayError
from gateway.redaction import native
from tests.operator_helpers import install_collector_tls

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S = ROOT / "deploy" / "kubernetes"
K8S_SIDECAR_CONFIG = K8S / "sidecar-example" / "agentaudit.yaml"
K8S_POLICY = K8S / "sidecar-example" / "policy.yaml"
HEALTH_PORT, METRICS_PORT = 7420, 9464  # as exposed by the image and probed/scraped in Kubernetes

IMAGE_CONFIG = "/etc/agentaudit/agentaudit.yaml"  # where the config is mounted in the image
IMAGE_STATE = "/var/lib/agentaudit"  # the journal VOLUME
IMAGE_UID = 10001
GATEWAY_SERVICE = "agentaudit.v1.GatewayService"
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
SECRET_SUFFIXES = (".key", ".token", ".pem", ".p12", ".pfx")


# --- Dockerfile parsing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    values: tuple[str, ...]  # operands: the JSON array's items, or the shell form's words (RUN: one string)
    flags: tuple[str, ...]  # --from=..., --mount=...
    json: bool  # exec (JSON array) form
    stage: int  # index of the FROM it belongs to; -1 before the first FROM


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile as BuildKit's own parser reads it (the ``dockerfile`` package binds the Go parser)."""
    try:
        import dockerfile  # noqa: PLC0415
    except ImportError:
        pytest.fail("the dockerfile package (BuildKit's parser, a dev dependency) is not installed")
    out, stage = [], -1
    for command in dockerfile.parse_file(str(path)):
        keyword = command.cmd.upper()
        stage += keyword == "FROM"
        out.append(Instruction(keyword, tuple(command.value), tuple(command.flags), bool(command.json), stage))
    return out


def final_stage(instructions: list[Instruction]) -> int:
    return max(i.stage for i in instructions)


def exec_form(instructions: list[Instruction], keyword: str) -> list[str]:
    """The last ENTRYPOINT/CMD of the final stage, which must be in JSON (exec) form."""
    found = [i for i in instructions if i.keyword == keyword and i.stage == final_stage(instructions)]
    assert found, f"the final stage has no {keyword}"
    assert found[-1].json, f"{keyword} must be in exec (JSON array) form, so tini is PID 1 and gets SIGTERM"
    return list(found[-1].values)


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the image, as the container runtime will exec them."""
    instructions = parse_dockerfile()
    return exec_form(instructions, "ENTRYPOINT") + exec_form(instructions, "CMD")


def test_dockerfile_invariants() -> None:
    instructions = parse_dockerfile()
    final = final_stage(instructions)

    # Overridable base image, used by every stage; a build stage and a separate runtime stage.
    args_before_from = [v for i in instructions if i.keyword == "ARG" and i.stage == -1 for v in i.values]
    assert "BASE_IMAGE=python:3.11-slim-bookworm" in args_before_from
    froms = [list(i.values) for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert all(f[0] == "${BASE_IMAGE}" for f in froms), froms
    assert [w.lower() for w in froms[0][1:]] == ["as", "build"], froms[0]

    # The build stage builds both wheels (client distribution and sidecar) without their dependencies.
    wheel_runs = [
        i.values[0] for i in instructions if i.keyword == "RUN" and i.stage == 0 and "pip wheel" in i.values[0]
    ]
    assert len(wheel_runs) == 1, wheel_runs
    wheel_args = shlex.split(wheel_runs[0])
    assert "--no-deps" in wheel_args
    assert "./clients/python" in wheel_args and "." in wheel_args

    # The runtime stage: tini from Debian, a non-root numeric user, the journal volume, ports.
    runs = [i for i in instructions if i.keyword == "RUN" and i.stage == final]
    assert any("apt-get install" in i.values[0] and " tini" in i.values[0] for i in runs)
    installs = [i for i in runs if "pip install" in i.values[0]]
    assert len(installs) == 1 and "--mount=type=bind,from=build,source=/wheels,target=/wheels" in installs[0].flags
    users = [i.values[0] for i in instructions if i.keyword == "USER" and i.stage == final]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) == IMAGE_UID, "numeric uid, so runAsNonRoot can check it"
    assert gid.isdigit() and int(gid) != 0
    user_index = max(n for n, i in enumerate(instructions) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in instructions[user_index + 1 :]), "nothing runs as root after USER"
    volumes = [v for i in instructions if i.keyword == "VOLUME" and i.stage == final for v in i.values]
    assert IMAGE_STATE in volumes
    ports = {p for i in instructions if i.keyword == "EXPOSE" and i.stage == final for p in i.values}
    assert {"7419", "7420", "9464"} <= ports

    # No secret in the image: nothing key-like copied, no ADD, the runtime stage copies nothing from the context,
    # no secret-looking ENV/ARG.
    assert not any(i.keyword == "ADD" for i in instructions), "use COPY (ADD fetches URLs and unpacks archives)"
    for i in instructions:
        if i.keyword == "COPY":
            for source in i.values[:-1]:
                name = source.rstrip("/").lower()
                assert not name.endswith(SECRET_SUFFIXES) and ".agentaudit" not in name, i
                assert source not in (".", "./"), "never copy the whole build context"
        if i.keyword == "ENV":
            names = list(i.values[0::2])
        elif i.keyword == "ARG":
            names = [v.split("=", 1)[0] for v in i.values]
        else:
            continue
        assert not any(word in n.upper() for n in names for word in SECRET_WORDS), i
    assert not any(i.keyword == "COPY" and i.stage == final for i in instructions), (
        "the runtime stage takes only the wheels, bind-mounted from the build stage"
    )

    # tini is PID 1 and execs agentaudit; the default command serves the mounted config.
    assert exec_form(instructions, "ENTRYPOINT") == ["tini", "--", "agentaudit"]
    assert exec_form(instructions, "CMD") == ["serve", "--config", IMAGE_CONFIG]


def test_dockerignore_keeps_secrets_out_and_lets_the_build_in() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: ignore everything, then re-include what the build needs"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for required in ("**/*.key", "**/*.token", "**/.agentaudit", "**/*.db"):
        assert required in patterns, f"{required} must be excluded even inside allowed directories"
    # Every path the Dockerfile copies from the context must be let in (or the build fails), and exist.
    for i in parse_dockerfile():
        if i.keyword == "COPY" and not any(f.startswith("--from=") for f in i.flags):
            for source in i.values[:-1]:
                path = source.rstrip("/")
                assert path in included, f"{source} is copied but excluded by .dockerignore"
                assert (ROOT / path).exists(), source
    # ...and nothing that is re-included holds a key-like file (the exclusions above would hide it anyway).
    for top in included:
        for path in (ROOT / top).rglob("*") if (ROOT / top).is_dir() else [ROOT / top]:
            assert not path.name.endswith(SECRET_SUFFIXES), path


def test_image_command_is_derived_from_the_dockerfile() -> None:
    # The smoke run below executes exactly this (with the config path mapped into its temporary root).
    assert image_command() == ["tini", "--", "agentaudit", "serve", "--config", IMAGE_CONFIG]


# --- the smoke run -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """The unprivileged user the image's process runs as, and how to switch to it."""

    uid: int
    gid: int
    prefix: list[str]  # command prefix that drops to the user (empty when the tests are not root)


def unprivileged() -> RunAs:
    if os.geteuid() != 0:
        return RunAs(os.getuid(), os.getgid(), [])
    user = pwd.getpwnam("nobody")
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop privileges"
    prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
    return RunAs(user.pw_uid, user.pw_gid, prefix)


def base_python(run_as: RunAs, scratch: Path) -> str:
    """A Python 3.11+ with venv whose console scripts the unprivileged user can run (pyenv under /root is not)."""
    candidates = ["/usr/local/bin/python3", "/usr/bin/python3", getattr(sys, "_base_executable", ""), sys.executable]
    candidates += [shutil.which(n) or "" for n in ("python3.13", "python3.12", "python3.11", "python3")]
    for n, candidate in enumerate(dict.fromkeys(os.path.realpath(c) for c in candidates if c and os.path.exists(c))):
        # Probed through a shebang, as the venv's console scripts will run it.
        probe = scratch / f"probe-{n}"
        probe.write_text(f"#!{candidate}\nimport sys, venv, ensurepip\nsys.exit(sys.version_info < (3, 11))\n")
        probe.chmod(0o755)
        if subprocess.run([*run_as.prefix, probe], check=False, capture_output=True, timeout=30).returncode == 0:
            return candidate
    pytest.fail(f"no Python >= 3.11 with venv is executable by uid {run_as.uid}; tried {candidates}")


@dataclass(frozen=True)
class Image:
    """A stand-in for the image's file system, under one temporary root readable by the unprivileged user."""

    root: Path
    venv: Path  # /opt/agentaudit
    run_as: RunAs

    @property
    def agentaudit(self) -> Path:
        return self.venv / "bin" / "agentaudit"


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    run_as = unprivileged()
    root = Path(tempfile.mkdtemp(prefix="aa-image-"))
    root.chmod(0o755)  # mkdtemp makes it 0700: the unprivileged user must reach the venv
    try:
        wheels = root / "wheels"
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT / "clients/python", ROOT],
            timeout=300,
        )
        built = sorted(p.name for p in wheels.glob("*.whl"))
        assert [n.split("-")[0] for n in built] == ["agentaudit", "agentaudit_client"], built
        venv = root / "opt" / "agentaudit"
        run([base_python(run_as, root), "-m", "venv", venv], timeout=120)
        # Dependencies come from the package index, as in the image's pip install.
        run([venv / "bin" / "python", "-m", "pip", "install", "-q", *sorted(wheels.glob("*.whl"))], timeout=600)
        yield Image(root, venv, run_as)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(command: list[object], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Runs a command to completion; a failure shows its output."""
    result = subprocess.run([str(c) for c in command], check=False, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health_status(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


def map_config(cfg: Any, mounts: dict[str, Path], ports: dict[int, int]) -> Any:
    """A Kubernetes config with the pod's mount paths and ports mapped into this test's root.

    Every absolute path in it must be on one of ``mounts`` (so the test and the manifests cannot disagree).
    """
    if isinstance(cfg, dict):
        return {k: map_config(v, mounts, ports) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [map_config(v, mounts, ports) for v in cfg]
    if not isinstance(cfg, str):
        return cfg
    scheme, path = ("unix://", cfg[len("unix://") :]) if cfg.startswith("unix://") else ("", cfg)
    if path.startswith("/"):
        for mount, directory in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if path.startswith(mount + "/"):
                return f"{scheme}{directory}{path[len(mount) :]}"
        raise AssertionError(f"{cfg} is on none of the pod's mounts {sorted(mounts)}")
    host, _, port = cfg.rpartition(":")
    if host and port.isdigit() and int(port) in ports:
        return f"{host}:{ports[int(port)]}"
    return cfg


def pod_mounts(root: Path, run_as: RunAs, mounts: dict[str, str], owned: set[str]) -> dict[str, Path]:
    """Directories standing in for a pod's volume mounts; those in ``owned`` belong to the unprivileged user."""
    out = {}
    for mount_path, name in mounts.items():
        directory = root / name
        directory.mkdir(parents=True)
        directory.parent.chmod(0o755)
        if mount_path in owned:
            os.chown(directory, run_as.uid, run_as.gid)
            directory.chmod(0o750)
        out[mount_path] = directory
    return out


def keygen(image: Image, directory: Path, origin: str) -> None:
    """``agentaudit keygen`` as the unprivileged user: the key files are its own, mode 0600."""
    run([*image.run_as.prefix, image.agentaudit, "keygen", "--dir", directory, "--origin", origin], timeout=60)
    for name in ("signing.key", "hmac.key"):
        st = (directory / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == image.run_as.uid, name


@dataclass
class Process:
    """A process started from the image's ENTRYPOINT, as the unprivileged user."""

    proc: subprocess.Popen[bytes]
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def wait_serving(self, target: str, service: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"exited with {self.proc.returncode} before serving:\n{self.log()}")
            try:
                if health_status(target, service) == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet (or UNKNOWN while starting)
            assert time.monotonic() < deadline, f"{service or 'health'} not SERVING within {timeout} s:\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM (what the kubelet and `docker stop` send); returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def json_log(self) -> list[dict[str, Any]]:
        """stderr with log.format json: one JSON object a line, no traceback."""
        log = self.log()
        assert "Traceback" not in log, log
        return [json.loads(line) for line in log.splitlines() if line.strip()]


def launch(
    image: Image, base: Path, args: list[str], cwd: Path, name: str, env: dict[str, str] | None = None
) -> Process:
    """Runs the image's ENTRYPOINT (tini -- agentaudit) with ``args`` as the image's user would."""
    command = [*exec_form(parse_dockerfile(), "ENTRYPOINT"), *args]
    if shutil.which("tini") is None:
        if os.environ.get("CI"):
            pytest.fail("tini is not installed: CI must run `apt-get install -y tini` (it is PID 1 in the image)")
        command = command[command.index("agentaudit") :]
    environment = {
        "PATH": f"{image.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",  # the image's ENV PATH
        "LANG": "C.UTF-8",
        "HOME": str(cwd),
        "PYTHONDONTWRITEBYTECODE": "1",
        # In the container tini is PID 1; here it is not, so it registers as a subreaper instead of warning.
        "TINI_SUBREAPER": "1",
        **(env or {}),
    }
    stderr = base / f"{name}.stderr"
    with (base / f"{name}.stdout").open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen([*image.run_as.prefix, *command], cwd=cwd, env=environment, stdout=out, stderr=err)
    return Process(proc, stderr)


SIDECAR_MOUNTS = {  # the agent pod's mounts (deploy/kubernetes/sidecar-example/deployment.yaml)
    "/etc/agentaudit": "sidecar/etc/agentaudit",  # config + policy ConfigMaps, read-only
    "/run/secrets/agentaudit": "sidecar/run/secrets/agentaudit",  # keys: install-keys' 0600 copies
    "/var/lib/agentaudit": "sidecar/var/lib/agentaudit",  # the journal PVC
    "/run/agentaudit": "sidecar/run/agentaudit",  # the socket emptyDir shared with the agent
}


def sidecar_pod(
    image: Image, base: Path, ports: dict[int, int], forward_to: str | None
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Lays out the sidecar's mounts with keys, deploy/kubernetes' config and policy; returns (mounts, config)."""
    mounts = pod_mounts(base, image.run_as, SIDECAR_MOUNTS, set(SIDECAR_MOUNTS) - {"/etc/agentaudit"})
    keys = mounts["/run/secrets/agentaudit"]
    keygen(image, keys, "agentaudit/example/support-agent")
    keys.chmod(0o550)  # mounted read-only
    cfg = map_config(yaml.safe_load(K8S_SIDECAR_CONFIG.read_text()), mounts, ports)
    assert cfg["forward"]["target"] == "agentaudit-collector:7430", "the manifests forward to the collector Service"
    if forward_to is None:
        del cfg["forward"]
    else:
        cfg["forward"]["target"] = forward_to
    conf = mounts["/etc/agentaudit"]
    (conf / "agentaudit.yaml").write_text(yaml.safe_dump(cfg))
    (conf / "policy.yaml").write_text(K8S_POLICY.read_text())
    return mounts, cfg


def sidecar_args(conf: Path) -> list[str]:
    """The image's CMD, with the mounted config path mapped into this test's root."""
    args = exec_form(parse_dockerfile(), "CMD")
    args[args.index(IMAGE_CONFIG)] = str(conf / "agentaudit.yaml")
    return args


def decide_two(socket_address: str) -> tuple[Any, Any]:
    with GatewayClient(socket_address, timeout=10) as gateway:
        common: dict[str, Any] = {"run_id": "run_smoke", "tenant_id": "t_42", "agent_id": "support-agent"}
        allowed = gateway.decide(
            **common,
            step_id=1,
            actor=("user", "u_1"),
            action="crm.lookup",
            args={"customer_id": "c_7", "email": "jane@example.com"},
        )
        stopped = gateway.decide(**common, step_id=2, actor=("user", "u_1"), action="db.drop_table", args={})
    assert (allowed.decision, allowed.reason) == ("allow", "allowed")
    assert (stopped.decision, stopped.reason) == ("stop", "access_denied")
    return allowed, stopped


def verify_journal(image: Image, journal: Path, public_key: Path, *extra: object) -> dict[str, Any]:
    result = subprocess.run(
        [str(a) for a in (image.agentaudit, "verify", journal, "--public-key", public_key, *extra, "--json")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["ok"] is True and report["origin"] == "agentaudit/example/support-agent"
    return report


@pytest.fixture
def base(image: Image) -> Path:
    """This test's own directory in the image root, reachable by the unprivileged user."""
    directory = Path(tempfile.mkdtemp(dir=image.root))
    directory.chmod(0o755)
    return directory


def test_the_wheel_carries_the_compiled_redaction_when_the_checkout_has_one(image: Image) -> None:
    """hatch_build.py: a build that fits the sources goes into the wheel, tagged for this Python and platform, and
    the installed package loads it; without one the wheel is pure Python (ADR 0027)."""
    built = native.usable()
    (wheel,) = (image.root / "wheels").glob("agentaudit-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl") != built, wheel.name
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", native.ENV_SWITCH)}
    code = "import gateway.redaction.native as n, gateway.redaction.detectors as d; print(n.active(), d.__file__)"
    active, where = run([image.venv / "bin" / "python", "-c", code], cwd=image.root, env=environment).stdout.split()
    assert active == str(built)
    assert where.startswith(str(image.venv)), where  # the installed package, not this checkout
    assert ("/_native/" in where) == built


def test_image_entrypoint_serves_decides_and_stops_cleanly(image: Image, base: Path) -> None:
    """The image's command, running deploy/kubernetes' sidecar config in the pod's layout, as uid != 0."""
    health_port, metrics_port = free_port(), free_port()
    mounts, cfg = sidecar_pod(image, base, {HEALTH_PORT: health_port, METRICS_PORT: metrics_port}, forward_to=None)
    state, sockets = mounts["/var/lib/agentaudit"], mounts["/run/agentaudit"]
    (socket_address,) = cfg["server"]["listen"]
    assert socket_address.startswith(f"unix://{sockets}/")
    sidecar = launch(image, base, sidecar_args(mounts["/etc/agentaudit"]), state, "sidecar")
    health = f"127.0.0.1:{health_port}"
    try:
        sidecar.wait_serving(health, GATEWAY_SERVICE)
        # What the kubelet's gRPC probes ask (startup/readiness: GatewayService, liveness: liveness), on the
        # health listener, which serves nothing but grpc.health.v1: the agent API is not exposed on 0.0.0.0.
        for service in ("", GATEWAY_SERVICE, "liveness"):
            assert health_status(health, service) == health_pb2.HealthCheckResponse.SERVING, service
        with GatewayClient(health, timeout=5) as wrong_port, pytest.raises(GatewayError) as refused:
            wrong_port.decide(run_id="run_smoke", tenant_id="t_42", action="crm.lookup")
        assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED

        allowed, stopped = decide_two(socket_address)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            exposition = response.read().decode()
        decisions = {line for line in exposition.splitlines() if line.startswith("agentaudit_decisions_total{")}
        assert decisions == {
            'agentaudit_decisions_total{decision="allow",layer="access",reason="allowed"} 1.0',
            'agentaudit_decisions_total{decision="stop",layer="access",reason="access_denied"} 1.0',
        }
        code = sidecar.stop()
    finally:
        sidecar.kill()
    assert code == 0, f"exit code {code} after SIGTERM:\n{sidecar.log()}"
    assert "shutting down" in [line["msg"] for line in sidecar.json_log()], sidecar.log()
    assert not (sockets / "gateway.sock").exists(), "the unix socket is removed on a clean stop"

    # What the process wrote is the unprivileged user's, in the journal volume only.
    journal = state / "journal.db"
    assert journal.stat().st_uid == image.run_as.uid
    report = verify_journal(image, journal, mounts["/run/secrets/agentaudit"] / "signing.pub")
    events = run([image.agentaudit, "events", journal], timeout=60).stdout
    assert "jane@example.com" not in events, "redacted before it was journaled"
    bodies = [json.loads(line) for line in events.splitlines()]
    assert report["entries"] == len(bodies)
    assert bodies[0]["kind"] == "journal_started"
    decided = {b["event_id"]: b for b in bodies if b["kind"] == "pre_exec"}
    assert decided[allowed.event_id]["decision"] == "allow"
    assert decided[stopped.event_id]["decision"] == "stop"


# --- the collector topology ------------------------------------------------------------------------------------

COLLECTOR_MOUNTS = {  # the collector pod's mounts (deploy/kubernetes/collector/deployment.yaml)
    "/etc/agentaudit": "collector/etc/agentaudit",  # collector.yaml + origins/*.pub, read-only
    "/run/secrets/agentaudit": "collector/run/secrets/agentaudit",  # witness.key: install-keys' 0600 copy
}


def test_image_runs_the_collector_and_the_sidecar_forwards_to_it(
    image: Image, base: Path, postgres_database: str
) -> None:
    """The collector pod and the agent pod of deploy/kubernetes, from the image's entrypoint, as uid != 0.

    The collector runs the manifest's args with its ConfigMap config (PostgreSQL, witness key, the origin's
    public key); the sidecar forwards to it, and its journal comes back cosigned: verified with the witness key.
    """
    manifest = yaml.safe_load((K8S / "collector" / "deployment.yaml").read_text())
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert env == {"PGPASSWORD"}, "the database password comes from the Secret, nothing else from the environment"

    collector_port, collector_health, collector_metrics, health_port, metrics_port = (free_port() for _ in range(5))
    # The agent pod first: its public key goes into the collector's origin keys (ConfigMap agentaudit-origin-keys).
    sidecar_mounts, _ = sidecar_pod(
        image, base, {HEALTH_PORT: health_port, METRICS_PORT: metrics_port}, forward_to=f"127.0.0.1:{collector_port}"
    )
    signing_pub = sidecar_mounts["/run/secrets/agentaudit"] / "signing.pub"

    mounts = pod_mounts(base, image.run_as, COLLECTOR_MOUNTS, {"/run/secrets/agentaudit"})
    conf, keys = mounts["/etc/agentaudit"], mounts["/run/secrets/agentaudit"]
    keygen(image, keys, "agentaudit-collector/example")
    (keys / "signing.key").rename(keys / "witness.key")  # the Secret's key name (docs/deployment.md)
    (keys / "hmac.key").unlink()
    # Secret agentaudit-collector-tls as install-keys copies it; the sidecar CA (ConfigMap agentaudit-collector-ca).
    install_collector_tls(base, keys, sidecar_mounts["/etc/agentaudit"] / "tls", image.run_as.uid, image.run_as.gid)
    keys.chmod(0o550)
    cfg = map_config(
        yaml.safe_load((K8S / "collector" / "collector.yaml").read_text()),
        mounts,
        {7430: collector_port, 7431: collector_health, 9464: collector_metrics},
    )
    assert cfg["collector"]["tls"]["key"] == str(keys / "tls.key"), "the manifests serve TLS"
    assert cfg["collector"]["store"].startswith("postgresql://") and "@postgres:" in cfg["collector"]["store"]
    cfg["collector"]["store"] = postgres_database  # the cluster's database, here the test server
    (origin,) = cfg["collector"]["origins"]
    assert origin["origin"] == "agentaudit/example/support-agent"
    (origin_key,) = origin["keys"]
    Path(origin_key).parent.mkdir()
    shutil.copy(signing_pub, origin_key)
    (conf / "collector.yaml").write_text(yaml.safe_dump(cfg))

    args = list(container["args"])
    args[args.index("--config") + 1] = str(conf / "collector.yaml")
    collector = launch(image, base, args, conf, "collector", env={"PGPASSWORD": "from-the-secret"})
    sidecar = None
    try:
        collector.wait_serving(f"127.0.0.1:{collector_health}", "agentaudit.v1.CollectorService")  # the probes'
        sidecar = launch(
            image,
            base,
            sidecar_args(sidecar_mounts["/etc/agentaudit"]),
            sidecar_mounts["/var/lib/agentaudit"],
            "sidecar",
        )
        sidecar.wait_serving(f"127.0.0.1:{health_port}", GATEWAY_SERVICE)
        (socket_address,) = yaml.safe_load((sidecar_mounts["/etc/agentaudit"] / "agentaudit.yaml").read_text())[
            "server"
        ]["listen"]
        decide_two(socket_address)
        sidecar_code = sidecar.stop()  # the forwarder flushes on the way out
        with urllib.request.urlopen(f"http://127.0.0.1:{collector_metrics}/metrics", timeout=5) as response:
            exposition = response.read().decode()
        collector_code = collector.stop()
    finally:
        if sidecar is not None:
            sidecar.kill()
        collector.kill()
    assert sidecar_code == 0, sidecar.log()
    assert collector_code == 0, collector.log()
    collector.json_log()
    sidecar.json_log()
    ingested = [x for x in exposition.splitlines() if x.startswith("agentaudit_collector_ingested_entries_total ")]
    assert ingested and float(ingested[0].split()[1]) >= 3, ingested  # journal_started and the two decisions

    report = verify_journal(
        image,
        sidecar_mounts["/var/lib/agentaudit"] / "journal.db",
        signing_pub,
        "--witness-key",
        keys / "signing.pub",
    )
    assert report["witnessed_size"] >= 3, report
