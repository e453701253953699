"""deploy/kubernetes/components/fleet-controller: valid against the Kubernetes schemas as written and as kustomize
renders it over the base; its controller runs one at a time, reads the routing ConfigMap, writes where the replicas
read, and both containers' arguments parse with the gateway's own parsers. (No cluster runs here: what the
component does at run time is tests/test_fleet_live.py's, on one host.)"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy_kubernetes import KUBERNETES, VERSIONS, parts, render, the, validate

from gateway import cli
from gateway.fleet import command as fleet_command
from gateway.fleet.settings import parse_fleet_settings

COMPONENT = KUBERNETES / "components" / "fleet-controller"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_files_as_written_are_valid(version: str) -> None:
    docs = [
        doc
        for name in ("controller.yaml", "live-pvc.yaml")
        for doc in yaml.safe_load_all((COMPONENT / name).read_text())
    ]
    validate(docs, version)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("fleet-kustomize")
    relative = Path(os.path.relpath(KUBERNETES, folder))
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(relative / "base")],
                "components": [str(relative / "components" / "fleet-controller")],
            }
        )
    )
    return render(folder)


@pytest.mark.parametrize("version", VERSIONS)
def test_kustomize_renders_valid_resources_over_the_base(rendered: list[dict[str, Any]], version: str) -> None:
    validate(rendered, version)


def controller_arguments(container: dict[str, Any]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway", exit_on_error=False)
    command = parser.add_subparsers(dest="command").add_parser("rollout-controller")
    fleet_command.add_arguments(command)
    cli._allow_path_argument(command)
    args = parser.parse_args(container["args"])
    assert args.command == "rollout-controller"
    return args


def test_one_controller_writes_what_every_replica_reads(rendered: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    controller = deployments["gateway-rollout-controller"]
    assert controller["spec"]["replicas"] == 1 and controller["spec"]["strategy"] == {"type": "Recreate"}
    pod = controller["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = controller_arguments(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    fleet_map = next(
        d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("gateway-fleet")
    )
    assert str(args.config) == f"{mounts['/etc/gateway-fleet']['mountPath']}/fleet.yaml"
    assert volumes[mounts["/etc/gateway-fleet"]["name"]]["configMap"]["name"] == fleet_map["metadata"]["name"]
    settings = parse_fleet_settings(
        yaml.safe_load(fleet_map["data"]["fleet.yaml"]), base_dir=Path("/etc/gateway-fleet")
    )
    # It reads the operator's routing ConfigMap, and writes the output, its lock and state on the shared volume.
    assert volumes[mounts[str(settings.source.parent)]["name"]]["configMap"]["name"] == "gateway-routing"
    live = mounts[str(settings.output.parent)]
    assert not live.get("readOnly") and settings.lock.parent == settings.output.parent
    assert [str(p) for p in args.allow_path] == [str(settings.output.parent)]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    # Every replica serves that output, from the same claim, read-only, and waits for it before its first start.
    replica_pod, replica, serve = parts([deployments["gateway"]])
    assert serve.config == settings.output
    replica_mounts = {m["mountPath"]: m for m in replica["volumeMounts"]}
    claim = volumes[live["name"]]["persistentVolumeClaim"]["claimName"]
    shared = replica_mounts[str(settings.output.parent)]
    assert shared["readOnly"]
    replica_volumes = {v["name"]: v for v in replica_pod["spec"]["volumes"]}
    assert replica_volumes[shared["name"]]["persistentVolumeClaim"]["claimName"] == claim
    (wait,) = replica_pod["spec"]["initContainers"]
    assert str(settings.output) in wait["command"][-1]
    claims = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "PersistentVolumeClaim"}
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert the(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "gateway"
