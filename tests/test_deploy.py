"""deploy/: what `kubectl apply -k deploy/` creates, checked without a cluster.

Every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
unknown field is an error), the kustomization complete, the ClusterRole exactly what the
controller's kube source uses (least privilege), and every command line of the DaemonSet
accepted by the real `sdn-netpol` commands, so a renamed flag cannot ship.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from sdn_netpol.cli import main as cli_main
from sdn_netpol.controller.sources.kube import RESOURCES

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# The oldest and the newest release the schemas cover: the manifests use nothing newer.
SCHEMA_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
API_GROUP = {"namespaces": "", "pods": "", "nodes": "", "networkpolicies": "networking.k8s.io"}


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


def daemonset_containers() -> list[dict[str, Any]]:
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    return [*spec["initContainers"], *spec["containers"]]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    checked = []
    for doc in documents():
        kubernetes_validate.validate(doc, version, strict=True)
        checked.append(doc["kind"])
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet",
            "CustomResourceDefinition"} <= set(checked)


def test_a_manifest_with_an_unknown_field_is_refused() -> None:
    daemonset = one("DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, SCHEMA_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest_once() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(DEPLOY / r for r in listed) == manifest_files()
    assert [i["name"] for i in kustomization["images"]] == ["localhost/sdn-netpol"]


def test_the_cluster_role_grants_exactly_what_the_controller_uses() -> None:
    granted = {(group, resource, verb) for rule in one("ClusterRole")["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    crds = [d for d in documents() if d["kind"] == "CustomResourceDefinition"]
    watched = [(API_GROUP[r.plural], r.plural) for r in RESOURCES if not r.optional]
    watched += [(d["spec"]["group"], d["spec"]["names"]["plural"]) for d in crds]
    wanted = {(group, plural, verb) for group, plural in watched for verb in ("list", "watch")}
    wanted |= {("", "events", "create"), ("", "events", "patch")}
    assert granted == wanted
    assert len(crds) == 3


def test_the_binding_names_the_service_account_the_daemonset_runs_as() -> None:
    account, binding, daemonset = one("ServiceAccount"), one("ClusterRoleBinding"), one("DaemonSet")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one("ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    namespace = one("Namespace")["metadata"]["name"]
    assert daemonset["metadata"]["namespace"] == account["metadata"]["namespace"] == namespace


def test_the_daemonset_runs_on_the_host_network_with_the_node_name_from_the_downward_api() -> None:
    spec = one("DaemonSet")["spec"]
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    for container in daemonset_containers():
        if container["name"] in ("install-cni", "controller"):
            [env] = [e for e in container["env"] if e["name"] == "NODE_NAME"]
            assert env["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"


def test_the_controller_is_probed_on_healthz_and_serves_metrics_on_its_port() -> None:
    [controller] = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    [port] = controller["ports"]
    assert port["name"] == "metrics"
    assert f"--status-listen=0.0.0.0:{port['containerPort']}" in controller["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert controller[probe]["httpGet"]["path"] == "/healthz"
        assert controller[probe]["httpGet"]["port"] == "metrics"


def test_the_cni_is_installed_into_the_hosts_cni_directories() -> None:
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    [install] = [c for c in pod["initContainers"] if c["name"] == "install-cni"]
    mounts = {m["mountPath"]: m["name"] for m in install["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host[mounts["/host/opt/cni/bin"]] == "/opt/cni/bin"
    assert host[mounts["/host/etc/cni/net.d"]] == "/etc/cni/net.d"
    assert "--cni-bin-dir=/host/opt/cni/bin" in install["args"]
    assert "--cni-conf-dir=/host/etc/cni/net.d" in install["args"]


@pytest.mark.parametrize("name", ["setup-bridge", "install-cni", "controller"])
def test_every_command_line_is_accepted_by_the_real_command(name: str) -> None:
    [container] = [c for c in daemonset_containers() if c["name"] == name]
    program, *words = container["command"]
    assert program == "sdn-netpol"
    command: click.Command = cli_main
    context = None
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        context = click.Context(command, parent=context, info_name=words[0])
        found = command.get_command(context, words[0])
        assert found is not None, f"{name}: no command {shlex.join(container['command'])}"
        command, words = found, words[1:]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in [*words, *container["args"]]]
    parsed = command.make_context(name, args, parent=context)
    assert parsed.params
