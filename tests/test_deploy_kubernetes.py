"""deploy/kubernetes: valid against the Kubernetes API schemas, rendered by kustomize, and consistent with the gateway.

- Schemas: every resource, as written and as `kubectl kustomize` renders the base and the example overlay, is
  validated offline and strictly (unknown fields are errors) against the schemas kubernetes-validate bundles, for the
  oldest Kubernetes we support and the newest it knows. The Prometheus Operator's ServiceMonitor and PrometheusRule
  are custom resources that it has no schema for, and no package our CI installs ships theirs: they are checked here
  against the fields and patterns of the operator's published CRD that we use, and the PrometheusRule's rules by
  promtool (tests/test_deploy_rules.py).
- Rendering: with kubectl (kustomize built in); skipped, saying so, where kubectl is absent. Nothing renders
  kustomize in Python: without kubectl the checks below run on the base's files as written.
- Consistency: the Deployment's arguments parse with the gateway's own command line; termination covers the drain;
  ports, probes, selectors and volumes agree; the pod runs as the Dockerfile's user; the routing configs are valid
  gateway configs whose models load.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway import cli

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
COMPONENT = KUBERNETES / "components" / "prometheus-operator"
# The oldest minor release still under a major provider's extended support when this was written, and the newest the
# schemas know: a field added or removed in between fails one of them.
VERSIONS = ("1.29", kubernetes_validate.latest_version())
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# The operator's pattern for a duration (monitoring.coreos.com_servicemonitors.yaml, spec.endpoints[].interval).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
SERVICE_MONITOR_ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings"}


def resource_files(folder: Path) -> list[Path]:
    """The files a kustomization lists as resources (its folders are rendered separately)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [folder / name for name in kustomization.get("resources", []) if (folder / name).is_file()]


def written() -> list[dict[str, Any]]:
    files = resource_files(BASE) + resource_files(COMPONENT) + resource_files(OVERLAY)
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text())]


def render(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize rendering not checked (the files as written still are)")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def the(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = (d for d in docs if d["kind"] == kind)
    return doc


def validate(docs: list[dict[str, Any]], version: str) -> None:
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM:
            check_custom(doc)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc}") from exc


def check_custom(doc: dict[str, Any]) -> None:
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    if doc["kind"] == "PrometheusRule":
        assert set(doc["spec"]) == {"groups"} and all({"name", "rules"} <= set(g) for g in doc["spec"]["groups"])
        return
    spec = doc["spec"]
    assert set(spec) == {"selector", "endpoints"} and set(spec["selector"]) == {"matchLabels"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT, set(endpoint) - SERVICE_MONITOR_ENDPOINT
        for key in ("interval", "scrapeTimeout"):
            assert DURATION.match(endpoint[key]), endpoint[key]
        assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])


def seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([sm])", duration)
    assert match, f"{duration}: this test reads seconds or minutes"
    return int(match[1]) * (60 if match[2] == "m" else 1)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_files_as_written_are_valid(version: str) -> None:
    docs = written()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    validate(docs, version)


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
@pytest.mark.parametrize("version", VERSIONS)
def test_kustomize_renders_valid_resources(folder: Path, version: str) -> None:
    docs = render(folder)
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    validate(docs, version)


def serve_arguments(container: dict[str, Any]) -> argparse.Namespace:
    """The container's arguments as `gateway serve` parses them: an unknown or malformed flag fails here."""
    parser = argparse.ArgumentParser(prog="gateway", exit_on_error=False)
    cli._serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(container["args"])
    assert args.command == "serve"
    return args


def parts(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], argparse.Namespace]:
    pod = the(docs, "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return pod, container, serve_arguments(container)


def test_termination_covers_the_drain() -> None:
    """preStop, then SIGTERM: --drain-delay of Connection: close, --drain-timeout for requests in flight, then the
    log flush and state write; the grace period must cover all of it with room to spare."""
    pod, container, args = parts(written())
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    budget = float(sleep[1]) + args.drain_delay + args.drain_timeout
    assert args.drain_delay > 0 and args.drain_timeout > 0
    assert budget + 5 <= pod["spec"]["terminationGracePeriodSeconds"] <= budget + 30


def test_ports_probes_and_selectors_agree() -> None:
    docs = written()
    pod, container, args = parts(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.port, "admin": args.admin_port} and args.host == "0.0.0.0"
    paths = {probe: container[probe]["httpGet"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths["readinessProbe"]["path"] == "/v2/health/ready"
    assert paths["livenessProbe"]["path"] == paths["startupProbe"]["path"] == "/v2/health/live"
    assert all(p["port"] in ports for p in paths.values())
    labels = pod["metadata"]["labels"]
    deployment = the(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    service = the(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert the(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = the(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    monitor = the(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_pod_is_locked_down_and_writes_only_to_its_volumes() -> None:
    pod, container, args = parts(written())
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in dockerfile
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    assert all("emptyDir" in volumes[mounts[path]["name"]] for path in writable)
    assert {str(p) for p in args.allow_path} <= writable, "rollout state and the prediction log need a writable folder"
    assert "/tmp" in writable
    # The routing config: the whole ConfigMap folder (a subPath mount never sees an update), read-only.
    config = mounts[str(args.config.parent)]
    assert "subPath" not in config and config["readOnly"] is True
    assert volumes[config["name"]]["configMap"]["name"] == "gateway-routing"
    models = mounts["/models"]
    assert models["readOnly"] is True and volumes[models["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert "limits" in container["resources"] and "cpu" not in container["resources"]["limits"]


def test_the_configmap_keeps_its_name_so_edits_hot_reload() -> None:
    """A hashed ConfigMap name would roll the Deployment on every edit instead of the symlink swap the gateway reloads
    on."""
    for folder in (BASE, OVERLAY):
        (configmap,) = (d for d in render(folder) if d["kind"] == "ConfigMap")
        assert configmap["metadata"]["name"] == "gateway-routing"
        assert set(configmap["data"]) == {"gateway.yaml"}


def test_the_overlay_renders_the_worked_example() -> None:
    docs = render(OVERLAY)
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"model-serving"}
    assert "PersistentVolumeClaim" not in {d["kind"] for d in docs}
    pod = the(docs, "Deployment")["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert images == {"registry.example.com/ml/gateway:0.1.0"}
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert set(models) == {"name", "emptyDir"}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert the(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert the(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("folder", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_routing_config_is_valid_and_its_models_load(folder: Path, tmp_path: Path) -> None:
    """`gateway validate` on the ConfigMap's config, with /models standing for the demo repository."""
    config = yaml.safe_load((folder / "gateway.yaml").read_text())
    assert config["model_repository"] == "/models"
    config["model_repository"] = str(ROOT / "config" / "models")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["validate", str(path)]) == 0
