"""TLS in the Kubernetes manifests and the Helm chart: the collector serves it, the sidecar verifies it.

Uses the renderers and helpers of tests/test_deploy_manifests.py (kustomize and Helm's Go SDK); the invariants are
read from the rendered objects and the configurations in their ConfigMaps, loaded with the project's loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config as config_mod
from gateway.config import load_collector_config
from gateway.errors import ConfigError
from tests import test_deploy_manifests
from tests.test_deploy_manifests import (
    KUBE_VERSIONS,
    collector_parts,
    configmap_file,
    container,
    helm_template,
    mount_of,
    one,
    sidecar_parts,
    validate_strictly,
    volume,
)

# The fixtures: kustomize's and Helm's renderings of the example (rendered once per module there too).
example = test_deploy_manifests.example
rendered = test_deploy_manifests.rendered
helm_rendered = test_deploy_manifests.helm_rendered


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def secret_sources(spec: dict[str, Any], name: str) -> dict[str, list[str]]:
    """Secret name → the keys a (secret or projected) volume takes from it."""
    v = volume(spec, name)
    sources = v["projected"]["sources"] if "projected" in v else [{"secret": {"name": v["secret"]["secretName"]}}]
    return {s["secret"]["name"]: [i["key"] for i in s["secret"].get("items", [])] for s in sources if "secret" in s}


def test_the_collector_serves_tls_from_a_secret_installed_as_0600_files(example: list[dict[str, Any]]) -> None:
    spec, collector, cfg, _ = collector_parts(example)
    tls = cfg["collector"]["tls"]
    assert set(tls) == {"cert", "key"}, "server TLS; client certificates are optional (docs/deployment.md)"
    # The key (and certificate) reach the collector as install-keys' 0600 copies on the memory-backed emptyDir.
    keys = mount_of(collector, tls["key"])["name"]
    assert mount_of(collector, tls["cert"])["name"] == keys
    assert volume(spec, keys)["emptyDir"]["medium"] == "Memory"
    install = container(spec, "install-keys")
    assert install["command"][:3] == ["install", "-m", "0600"]
    assert {Path(tls["key"]).name, Path(tls["cert"]).name} <= {Path(p).name for p in install["command"][3:-1]}
    assert mount_of(install, install["command"][-1].rstrip("/"))["name"] == keys
    secret_volume = mount_of(install, install["command"][3])["name"]
    assert secret_sources(spec, secret_volume)["agentaudit-collector-tls"] == ["tls.crt", "tls.key"]
    assert secret_volume not in {m["name"] for m in collector["volumeMounts"]}, "only install-keys mounts Secrets"


def test_the_collector_probes_use_the_plaintext_health_listener(example: list[dict[str, Any]]) -> None:
    _, collector, cfg, _ = collector_parts(example)
    (listen,) = cfg["collector"]["listen"]
    (health,) = cfg["collector"]["health_listen"]
    assert port_of(health) != port_of(listen) and not health.startswith("127.")
    assert {"name": "health", "containerPort": port_of(health)} in collector["ports"]
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert collector[probe_name]["grpc"]["port"] == port_of(health), probe_name
    # The NetworkPolicy opens only the TLS port to sidecars; the kubelet (the node) is always admitted.
    policy = one(example, "NetworkPolicy", "agentaudit-collector")
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert port_of(listen) in opened and port_of(health) not in opened


def test_the_sidecar_verifies_the_collector_with_the_ca_from_a_configmap(example: list[dict[str, Any]]) -> None:
    spec, sidecar, cfg = sidecar_parts(example)
    forward = cfg["forward"]
    assert "allow_insecure" not in forward, "no plaintext opt-in in the manifests"
    ca = forward["tls"]["ca"]
    mount = mount_of(sidecar, ca)
    assert mount["readOnly"] is True
    text_volume = volume(spec, mount["name"])
    relative = ca[len(mount["mountPath"]) + 1 :]
    (source,) = [
        s["configMap"]
        for s in text_volume["projected"]["sources"]
        if "configMap" in s and any(i["path"] == relative for i in s["configMap"].get("items", []))
    ]
    assert source["name"] == "agentaudit-collector-ca" and source["items"] == [{"key": "ca.crt", "path": relative}]
    assert not [v for v in spec["volumes"] if "secret" in str(v) and v["name"] == mount["name"]], "the CA is public"
    # The certificate must name the host the sidecar dials: the collector Service.
    service = one(example, "Service", "agentaudit-collector")
    assert forward["target"].rsplit(":", 1)[0] == service["metadata"]["name"]


def test_both_tls_configurations_load_with_the_project_loaders(example: list[dict[str, Any]], tmp_path: Path) -> None:
    _, _, sidecar_cfg = sidecar_parts(example)
    path = tmp_path / "agentaudit.yaml"
    path.write_text(yaml.safe_dump(sidecar_cfg))
    loaded = config_mod.load(path, env={})
    assert loaded.forward.tls is not None and loaded.forward.tls.ca == Path("/etc/agentaudit/tls/collector-ca.crt")
    assert loaded.forward.allow_insecure is False
    _, _, _, text = collector_parts(example)
    (tmp_path / "collector.yaml").write_text(text)
    collector = load_collector_config(tmp_path / "collector.yaml")
    assert collector.tls is not None and collector.tls.key == Path("/run/secrets/agentaudit/tls.key")
    assert collector.health_listen == ("0.0.0.0:7431",)


def test_without_tls_the_sidecar_refuses_plaintext_to_the_collector(
    example: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The loader's refusal is what keeps a manifest from silently dropping TLS."""
    _, _, cfg = sidecar_parts(example)
    del cfg["forward"]["tls"]
    path = tmp_path / "agentaudit.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"forward\.allow_insecure: true"):
        config_mod.load(path, env={})


def test_helm_tls_values_reach_the_objects_and_can_be_turned_off() -> None:
    docs = helm_template(
        {
            "sidecar": {
                "collectorTLS": {"caConfigMap": "fleet-ca", "caKey": "root.pem", "serverName": "collector.fleet"}
            },
            "collector": {"tls": {"secret": "collector-cert"}, "healthPort": 9431},
        }
    )
    spec, _, cfg = sidecar_parts(docs)
    assert cfg["forward"]["tls"] == {"ca": "/etc/agentaudit/tls/collector-ca.crt", "server_name": "collector.fleet"}
    ca_source = [s for s in volume(spec, "config")["projected"]["sources"] if s["configMap"]["name"] == "fleet-ca"]
    assert ca_source[0]["configMap"]["items"] == [{"key": "root.pem", "path": "tls/collector-ca.crt"}]
    cspec, collector, ccfg, _ = collector_parts(docs)
    assert ccfg["collector"]["health_listen"] == ["0.0.0.0:9431"]
    assert collector["readinessProbe"]["grpc"]["port"] == 9431
    assert "collector-cert" in secret_sources(cspec, "keys-secret")

    plain = helm_template(
        {
            "sidecar": {"collectorTLS": {"enabled": False}, "config": {"forward": {"allow_insecure": True}}},
            "collector": {"tls": {"enabled": False}},
        }
    )
    spec, _, cfg = sidecar_parts(plain)
    assert "tls" not in cfg["forward"] and cfg["forward"]["allow_insecure"] is True
    assert [s["configMap"]["name"] for s in volume(spec, "config")["projected"]["sources"]] == [
        "agentaudit-sidecar-config",
        "agentaudit-policy",
    ]
    cspec, collector, ccfg, text = collector_parts(plain)
    assert "tls" not in ccfg["collector"] and "health_listen" not in ccfg["collector"]
    assert collector["livenessProbe"]["grpc"]["port"] == 7430
    assert container(cspec, "install-keys")["command"][3:-1] == ["/run/secrets/agentaudit-secret/witness.key"]
    assert list(secret_sources(cspec, "keys-secret")) == ["agentaudit-collector-keys"]
    assert configmap_file(plain, volume(cspec, "config"), "collector.yaml") == text
    for version in KUBE_VERSIONS:
        for doc in [*docs, *plain]:
            validate_strictly(doc, version)
