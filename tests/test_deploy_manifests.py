"""The Kubernetes manifests (deploy/kubernetes) and the Helm chart (deploy/helm/agentaudit).

Renders each kustomization with ``kubectl kustomize``, validates every document strictly (unknown fields are
errors) against the Kubernetes 1.29 schema (the first release with native sidecars on by default) and the newest
schema kubernetes-validate bundles, then checks the deployment's invariants: agentaudit is a native sidecar, its
probes are gRPC on the health listener (never 127.0.0.1), every container is locked down and has resources, keys
reach the sidecar as 0600 files, the collector takes its PostgreSQL password from a Secret and admits only
sidecar-carrying pods. The sidecar and collector configurations in the ConfigMaps are loaded with the project's
own loaders, so a manifest cannot carry a key the code does not understand.

The Helm chart is linted and rendered with Helm's own Go SDK (helm-python-sdk: libhelm_c, Helm v4, no helm
binary needed), its output goes through the same validation and invariant tests, and must describe the same
objects as the kustomize example. ``values.schema.json`` is checked against ``values.yaml`` with jsonschema.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv

from gateway import config as config_mod
from gateway.config import load_collector_config
from gateway.errors import SigningKeyError
from gateway.policy.document import parse_policy
from gateway.signing import load_signer, read_secret_file

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "agentaudit"
RELEASE, NAMESPACE = "agentaudit", "agentaudit-example"  # the release name that gives kustomize's object names
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KUSTOMIZATIONS = ("example", "sidecar-example", "collector")
# 1.29: native sidecars (initContainers[].restartPolicy: Always) are on by default from this release.
KUBE_VERSIONS = ("1.29.0", kv.latest_version())
GATEWAY_SERVICE = "agentaudit.v1.GatewayService"
COLLECTOR_SERVICE = "agentaudit.v1.CollectorService"
SIDECAR_LABEL = ("agentaudit/sidecar", "true")
LOOPBACK = ("127.", "localhost", "[::1]")


# --- rendering -------------------------------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize built in) is needed to render deploy/kubernetes"
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def helm_sdk() -> Any:
    try:
        import helm_python  # noqa: PLC0415
    except ImportError:
        message = "helm-python-sdk is not installed (dev dependency: Helm's Go SDK, to lint and render the chart)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return helm_python


def helm_template(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``helm template agentaudit deploy/helm/agentaudit -n agentaudit-example`` (values are schema-checked)."""
    helm = helm_sdk()
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(K8S / name) for name in KUSTOMIZATIONS}


@pytest.fixture(scope="module")
def helm_rendered() -> list[dict[str, Any]]:
    return helm_template()


@pytest.fixture(scope="module", params=["kustomize", "helm"])
def example(request: pytest.FixtureRequest, rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Everything, as deploy/kubernetes/example renders it, and as the Helm chart renders it."""
    if request.param == "helm":
        docs: list[dict[str, Any]] = request.getfixturevalue("helm_rendered")
        return docs
    return rendered["example"]


def one(docs: list[dict[str, Any]], kind: str, name_prefix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix}*, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in all_containers(spec) if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def configmap_file(docs: list[dict[str, Any]], volume: dict[str, Any], key: str) -> str:
    """The text of ``key`` from the ConfigMaps a (projected or configMap) volume mounts."""
    sources = volume["projected"]["sources"] if "projected" in volume else [{"configMap": volume["configMap"]}]
    for source in sources:
        if "configMap" in source:
            cm = one(docs, "ConfigMap", source["configMap"]["name"])
            if key in cm.get("data", {}):
                return str(cm["data"][key])
    raise AssertionError(f"no ConfigMap of volume {volume['name']} holds {key}")


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def mount_of(c: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount of container ``c`` that holds ``path`` (the longest matching mountPath)."""
    matches = [m for m in c.get("volumeMounts", []) if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
    assert matches, f"{path} is on no volume of container {c['name']}"
    return max(matches, key=lambda m: len(m["mountPath"]))


def sidecar_parts(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(pod spec, agentaudit container, parsed sidecar config) of the example agent."""
    spec = pod_spec(one(docs, "Deployment", "support-agent"))
    sidecar = container(spec, "agentaudit")
    config_path = sidecar["args"][sidecar["args"].index("--config") + 1]
    mount = mount_of(sidecar, config_path)
    text = configmap_file(docs, volume(spec, mount["name"]), config_path[len(mount["mountPath"]) + 1 :])
    return spec, sidecar, yaml.safe_load(text)


def collector_parts(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """(pod spec, collector container, parsed collector config, config text) of the collector."""
    spec = pod_spec(one(docs, "Deployment", "agentaudit-collector"))
    c = container(spec, "collector")
    config_path = c["args"][c["args"].index("--config") + 1]
    mount = mount_of(c, config_path)
    text = configmap_file(docs, volume(spec, mount["name"]), config_path[len(mount["mountPath"]) + 1 :])
    return spec, c, yaml.safe_load(text), text


# --- schema validation ------------------------------------------------------------------------------------------


def validate_strictly(doc: dict[str, Any], version: str) -> None:
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {path}: {exc}")
    except kv.SchemaNotFoundError:
        pytest.fail(f"no {version} schema for {doc['apiVersion']} {doc['kind']}: not a built-in kind of that release")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_rendered_documents_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    docs = rendered[name]
    assert docs, f"{name} renders nothing"
    for doc in docs:
        validate_strictly(doc, version)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_helm_chart_renders_valid_documents(helm_rendered: list[dict[str, Any]], version: str) -> None:
    assert helm_rendered
    for doc in helm_rendered:
        validate_strictly(doc, version)


def test_the_validation_is_strict_and_covers_two_releases(example: list[dict[str, Any]]) -> None:
    # Without these the test above could pass vacuously.
    newest, oldest = (tuple(int(n) for n in v.split(".")[:2]) for v in (KUBE_VERSIONS[1], KUBE_VERSIONS[0]))
    assert newest > oldest, KUBE_VERSIONS
    broken = copy.deepcopy(one(example, "Deployment", "support-agent"))
    broken["spec"]["template"]["spec"]["initContainers"][1]["restartPolicyy"] = "Always"
    for version in KUBE_VERSIONS:
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, version, strict=True)
    # The schemas differ by release: 1.27's has no container restartPolicy (native sidecars came in 1.28/1.29).
    with pytest.raises(kv.ValidationError):
        kv.validate(one(example, "Deployment", "support-agent"), "1.27.0", strict=True)


# --- the sidecar ------------------------------------------------------------------------------------------------


def test_agentaudit_is_a_native_sidecar_started_before_the_agent(example: list[dict[str, Any]]) -> None:
    spec, sidecar, _ = sidecar_parts(example)
    names = [c["name"] for c in spec["initContainers"]]
    assert sidecar.get("restartPolicy") == "Always", "native sidecar: an init container with restartPolicy Always"
    assert names.index("install-keys") < names.index("agentaudit"), "keys are in place before the sidecar starts"
    assert "restartPolicy" not in container(spec, "install-keys"), "install-keys runs to completion"
    assert "agentaudit" not in [c["name"] for c in spec["containers"]]
    assert sidecar.get("startupProbe"), "the agent starts only once the sidecar's startup probe passes"
    # The image's default command and the manifest agree (tests/test_image_smoke.py runs that command).
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd and sidecar["args"] == json.loads(cmd.group(1))
    assert "command" not in sidecar, "keep the image's tini entrypoint"
    # One journal, one writer: a single replica replaced with Recreate.
    deployment = one(example, "Deployment", "support-agent")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_probes_are_grpc_on_the_health_listener_never_loopback(example: list[dict[str, Any]]) -> None:
    _, sidecar, cfg = sidecar_parts(example)
    health = cfg["health"]["listen"]
    assert health and all(not a.startswith(LOOPBACK) for a in health), "the kubelet probes the pod IP"
    ports = {int(a.rsplit(":", 1)[1]) for a in health}
    assert len(ports) == 1
    (port,) = ports
    assert {"name": "health", "containerPort": port} in sidecar["ports"]
    expected = {
        "startupProbe": GATEWAY_SERVICE,
        "readinessProbe": GATEWAY_SERVICE,
        "livenessProbe": "liveness",
    }
    for probe_name, service in expected.items():
        probe = sidecar[probe_name]
        assert set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe_name
        assert probe["grpc"] == {"port": port, "service": service}, probe_name
    # Metrics and the other listeners: nothing the kubelet or Prometheus must reach is on loopback.
    assert not cfg["metrics"]["listen"].startswith(LOOPBACK)
    metrics_port = int(cfg["metrics"]["listen"].rsplit(":", 1)[1])
    assert {"name": "metrics", "containerPort": metrics_port} in sidecar["ports"]
    pod = one(example, "Deployment", "support-agent")["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/port"] == str(metrics_port)


def test_no_probe_anywhere_targets_loopback(example: list[dict[str, Any]]) -> None:
    for deployment in (d for d in example if d["kind"] == "Deployment"):
        for c in all_containers(pod_spec(deployment)):
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(probe_name)
                if probe is None:
                    continue
                assert "grpc" in probe, f"{c['name']} {probe_name}: gRPC probes only"
                assert "host" not in json.dumps(probe), probe


def test_every_container_is_locked_down_and_has_resources(example: list[dict[str, Any]]) -> None:
    deployments = [d for d in example if d["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        spec = pod_spec(deployment)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 10001
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in all_containers(spec):
            sc = c["securityContext"]
            where = f"{deployment['metadata']['name']}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["runAsNonRoot"] is True, where
            assert sc.get("runAsUser", 10001) != 0 and sc.get("privileged", False) is False, where
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) >= {"cpu", "memory"}, f"{where} {kind}"
    # The image's USER is the uid the pods run as (keys and the journal volume are owned by it).
    assert re.search(r"^USER 10001:10001$", DOCKERFILE.read_text(), re.MULTILINE)


def test_sidecar_config_matches_the_pod_volumes(example: list[dict[str, Any]]) -> None:
    spec, sidecar, cfg = sidecar_parts(example)
    agent = container(spec, "agent")

    # The journal lives on the PersistentVolumeClaim.
    journal_mount = mount_of(sidecar, cfg["journal"]["path"])
    journal_volume = volume(spec, journal_mount["name"])
    claim = journal_volume["persistentVolumeClaim"]["claimName"]
    one(example, "PersistentVolumeClaim", claim)
    assert not journal_mount.get("readOnly")

    # The agent reaches the sidecar over a unix socket in an emptyDir both containers mount at the same path.
    (listen,) = cfg["server"]["listen"]
    assert listen.startswith("unix:///")
    socket_path = listen[len("unix://") :]
    sidecar_sockets, agent_sockets = mount_of(sidecar, socket_path), mount_of(agent, socket_path)
    assert sidecar_sockets == agent_sockets
    assert "emptyDir" in volume(spec, sidecar_sockets["name"])
    assert {"name": "AGENTAUDIT_TARGET", "value": listen} in agent["env"]

    # The policy and the config come from ConfigMaps; the policy parses.
    policy_mount = mount_of(sidecar, cfg["policy"]["path"])
    assert policy_mount["readOnly"] is True
    policy = configmap_file(example, volume(spec, policy_mount["name"]), Path(cfg["policy"]["path"]).name)
    parse_policy(policy, "deploy/kubernetes/sidecar-example/policy.yaml")
    assert one(example, "ConfigMap", "agentaudit-policy")["metadata"]["name"] == "agentaudit-policy", (
        "a stable name (no hash suffix), so policy edits reach the running sidecar, which reloads them"
    )

    # Keys: the sidecar reads 0600 copies from a memory-backed emptyDir; only install-keys mounts the Secret.
    key_paths = [cfg["journal"]["signing_key"], cfg["audit"]["hmac_key"]]
    key_mounts = {mount_of(sidecar, p)["name"] for p in key_paths}
    assert len(key_mounts) == 1
    (keys,) = key_mounts
    assert volume(spec, keys)["emptyDir"]["medium"] == "Memory"
    secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
    assert secret_volumes == {"keys-secret"}
    for c in all_containers(spec):
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        assert (c["name"] == "install-keys") == bool(mounted & secret_volumes), c["name"]
        if c["name"] == "agent":
            assert keys not in mounted and journal_mount["name"] not in mounted
    install = container(spec, "install-keys")
    command = install["command"]
    assert command[:3] == ["install", "-m", "0600"]
    target = command[-1].rstrip("/")
    assert mount_of(install, target)["name"] == keys and mount_of(sidecar, target)["name"] == keys
    assert sorted(Path(p).name for p in command[3:-1]) == sorted(Path(p).name for p in key_paths)
    for source in command[3:-1]:
        assert mount_of(install, source)["name"] in secret_volumes

    # The sidecar forwards to the collector Service.
    service = one(example, "Service", "agentaudit-collector")
    host, port = cfg["forward"]["target"].rsplit(":", 1)
    assert host == service["metadata"]["name"] and int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_sidecar_config_loads_with_the_project_loader(example: list[dict[str, Any]], tmp_path: Path) -> None:
    _, _, cfg = sidecar_parts(example)
    path = tmp_path / "agentaudit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = config_mod.load(path, env={})
    assert loaded.server.listen == ("unix:///run/agentaudit/gateway.sock",)
    assert loaded.journal.path == Path("/var/lib/agentaudit/journal.db")
    assert loaded.health.listen == ("0.0.0.0:7420",)
    assert loaded.metrics.listen == "0.0.0.0:9464"
    assert loaded.log.format == "json"
    assert loaded.forward.target == "agentaudit-collector:7430"


# --- the collector ----------------------------------------------------------------------------------------------


def test_collector_service_networkpolicy_and_postgres_secret(example: list[dict[str, Any]]) -> None:
    _, collector, cfg, _ = collector_parts(example)
    deployment = one(example, "Deployment", "agentaudit-collector")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    listen = cfg["collector"]["listen"]
    assert listen == ["0.0.0.0:7430"]
    port = 7430
    assert {"name": "grpc", "containerPort": port} in collector["ports"]
    probe_port = int(cfg["collector"]["health_listen"][0].rsplit(":", 1)[1]) if "tls" in cfg["collector"] else port
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert collector[probe_name]["grpc"]["port"] == probe_port  # with TLS: the plaintext health listener
    assert collector["readinessProbe"]["grpc"]["service"] == COLLECTOR_SERVICE

    service = one(example, "Service", "agentaudit-collector")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] == "grpc"

    # The PostgreSQL password comes from a Secret; the DSN in the ConfigMap holds none.
    dsn = cfg["collector"]["store"]
    assert dsn.startswith("postgresql://")
    userinfo = dsn[len("postgresql://") :].split("@", 1)[0]
    assert ":" not in userinfo, "no password in the ConfigMap"
    env = {e["name"]: e for e in collector["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert not [k for k in cfg["collector"] if "password" in k.lower()]

    # Only sidecar-carrying pods reach the collector port.
    policy = one(example, "NetworkPolicy", "agentaudit-collector")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc_rules = [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": port} in r.get("ports", [])]
    assert len(grpc_rules) == 1
    (peers,) = [grpc_rules[0]["from"]]
    key, value = SIDECAR_LABEL
    assert peers and all(p["podSelector"]["matchLabels"] == {key: value} for p in peers)
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "no rule may admit every source"
        assert rule.get("ports"), "no rule may open every port"
    agent_labels = one(example, "Deployment", "support-agent")["spec"]["template"]["metadata"]["labels"]
    assert agent_labels.get(key) == value


def test_collector_config_loads_with_the_project_loader(example: list[dict[str, Any]], tmp_path: Path) -> None:
    _, _, _, text = collector_parts(example)
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    loaded = load_collector_config(path)
    assert loaded.listen == ("0.0.0.0:7430",)
    assert loaded.witness_key == Path("/run/secrets/agentaudit/witness.key")
    assert [origin for origin, _ in loaded.origins] == ["agentaudit/example/support-agent"]


def test_no_secret_material_is_committed_or_rendered(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        assert not [d for d in docs if d["kind"] == "Secret"], "Secrets are created out of band (docs/deployment.md)"
        assert "PRIVATE+KEY" not in yaml.safe_dump_all(docs)
    for path in (ROOT / "deploy").rglob("*"):  # the chart too
        if path.is_file():
            assert not path.name.endswith((".key", ".token", ".pem")), path
            assert "PRIVATE+KEY+" not in path.read_text(errors="replace"), path


# --- the install-keys step, run for real -------------------------------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="aa-keys-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_keys_turns_the_secret_volume_into_files_agentaudit_accepts(
    example: list[dict[str, Any]], scratch: Path
) -> None:
    """Replays the kubelet's Secret volume under fsGroup (files root:fsGroup 0440) and the init container's command.

    agentaudit refuses the Secret's files as they are (group-readable), and accepts install-keys' copies.
    """
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("needs root to replay file ownership (CI runs as root)")
        pytest.skip("needs root to replay file ownership")
    from gateway import devenv  # noqa: PLC0415

    spec, _, cfg = sidecar_parts(example)
    install = container(spec, "install-keys")
    fs_group = spec["securityContext"]["fsGroup"]
    uid = 65534  # nobody: any non-root uid that is not the files' owner
    mounts = {m["mountPath"]: scratch / m["name"] for m in install["volumeMounts"]}
    for directory in mounts.values():
        directory.mkdir()
    secret_dir = next(mounts[m["mountPath"]] for m in install["volumeMounts"] if m["name"] == "keys-secret")
    keys_dir = next(mounts[m["mountPath"]] for m in install["volumeMounts"] if m["name"] != "keys-secret")
    # The Secret volume: the kubelet writes root-owned files, and fsGroup makes them group fsGroup, mode 0440.
    devenv.ensure_keys(secret_dir, "agentaudit/example/support-agent")
    for name in ("signing.key", "hmac.key"):
        os.chown(secret_dir / name, 0, fs_group)
        (secret_dir / name).chmod(0o440)
    # The emptyDir under fsGroup: group fsGroup, setgid, world-writable.
    os.chown(keys_dir, 0, fs_group)
    keys_dir.chmod(0o2777)
    with pytest.raises(SigningKeyError, match="accessible by group"):
        read_secret_file(secret_dir / "signing.key")

    def mapped(arg: str) -> str:
        for mount_path, directory in sorted(mounts.items(), key=lambda kv_: -len(kv_[0])):
            if arg == mount_path or arg.startswith(mount_path + "/"):
                return str(directory) + arg[len(mount_path) :]
        return arg

    command = [mapped(a) for a in install["command"]]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={fs_group}", f"--groups={fs_group}", "--"]
    result = subprocess.run([*drop, *command], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    for key_path in (cfg["journal"]["signing_key"], cfg["audit"]["hmac_key"]):
        copied = keys_dir / Path(key_path).name
        st = copied.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == uid, copied
        read_secret_file(copied)  # accepted
    assert load_signer(keys_dir / "signing.key").name == "agentaudit/example/support-agent"


# --- the Helm chart ---------------------------------------------------------------------------------------------


def test_values_schema_accepts_the_defaults_and_refuses_bad_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not [e.message for e in validator.iter_errors(values)]
    bad = {
        "uid": 0,
        "sidecar.healthPort": "7420",
        "collector.postgres.dsn": "postgresql://agentaudit:hunter2@postgres/agentaudit",
        "sidecar.config.audit.sign_events": False,
        "sidecar.config.unknown_section": {},
        "image.pullPolicy": "Sometimes",
        "agent.resources.limits": {"cpu": "1"},
    }
    for dotted, value in bad.items():
        broken = copy.deepcopy(values)
        *parents, leaf = dotted.split(".")
        node = broken
        for key in parents:
            node = node[key]
        node[leaf] = value
        assert list(validator.iter_errors(broken)), f"{dotted}={value!r} should be refused"


def test_helm_lint_is_clean() -> None:
    helm = helm_sdk()
    for kube_version in KUBE_VERSIONS:
        report = helm.lint(str(CHART), strict=True, kube_version=f"v{kube_version}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not report["errors"] and not problems, report
    # Helm itself enforces values.schema.json when rendering.
    with pytest.raises(helm.HelmValuesError, match="uid"):
        helm_template({"uid": 0})


def _normalised(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects by (kind, name), without what legitimately differs between kustomize and Helm output.

    Dropped: the Namespace object (Helm installs into the release namespace), generated name suffixes of
    ConfigMaps, labels, annotations and imagePullPolicy; ConfigMap files are compared parsed.
    """
    suffix = re.compile(r"\b(agentaudit-(?:sidecar|collector)-config)-[a-z0-9]{10}\b")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for original in docs:
        if original["kind"] == "Namespace":
            continue
        doc = yaml.safe_load(suffix.sub(r"\1", yaml.safe_dump(original)))
        name = doc.pop("metadata")["name"]
        if doc["kind"] == "ConfigMap":
            doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
        for path in (("spec", "selector", "matchLabels"), ("spec", "selector"), ("spec", "podSelector")):
            node: Any = doc
            for key in path[:-1]:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and path[-1] in node:
                node[path[-1]] = "<selector>"
        template = doc.get("spec", {}).get("template")
        if template:
            template.pop("metadata")
            for c in all_containers(template["spec"]):
                c.pop("imagePullPolicy", None)
        out[(doc["kind"], name)] = doc
    return out


def test_helm_chart_renders_the_same_objects_as_kustomize(
    rendered: dict[str, list[dict[str, Any]]], helm_rendered: list[dict[str, Any]]
) -> None:
    kustomized, helmed = _normalised(rendered["example"]), _normalised(helm_rendered)
    assert sorted(kustomized) == sorted(helmed)
    for key, doc in kustomized.items():
        assert helmed[key] == doc, f"{key} differs between deploy/kubernetes and the Helm chart"
    assert (CHART / "files" / "policy.yaml").read_text() == (K8S / "sidecar-example" / "policy.yaml").read_text()


def test_the_deployed_policy_is_the_example_policy() -> None:
    """kustomize cannot reach files outside its directory, so the example policy is copied; keep the copy exact."""
    example = (ROOT / "gateway" / "policy" / "example_policy.yaml").read_text()
    assert (K8S / "sidecar-example" / "policy.yaml").read_text() == example


def test_helm_values_reach_the_objects() -> None:
    docs = helm_template(
        {
            "image": {"tag": "9.9.9"},
            "sidecar": {
                "healthPort": 8420,
                "forwardTarget": "collector.audit.svc:7430",
                "config": {"log": {"level": "debug"}},
            },
            "collector": {"enabled": False},
        }
    )
    assert not [d for d in docs if d["metadata"]["name"].startswith("agentaudit-collector")]
    _, sidecar, cfg = sidecar_parts(docs)
    assert sidecar["image"].endswith(":9.9.9")
    assert sidecar["livenessProbe"]["grpc"]["port"] == 8420 and cfg["health"]["listen"] == ["0.0.0.0:8420"]
    assert cfg["forward"]["target"] == "collector.audit.svc:7430"
    assert cfg["log"] == {"level": "debug", "format": "json"}, "user config is merged, not replaced"
    assert cfg["journal"]["path"] == "/var/lib/agentaudit/journal.db", "the chart owns paths and listeners"
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate_strictly(doc, version)
