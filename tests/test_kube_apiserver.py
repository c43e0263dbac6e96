"""The controller's kube source against a REAL kube-apiserver (v1.20.2) and etcd, as the
deploy/ ServiceAccount, with RBAC enforced (tests/kubeapi.py starts them; the binary is
built once per machine by scripts/kube-apiserver.sh).

deploy/namespace.yaml, deploy/rbac.yaml and deploy/crds/ are applied as an administrator;
the controller then runs against a real OVS bridge with the ServiceAccount's identity. What a
real server cannot produce on demand (stalled streams, 5xx bursts) stays with the fake
server (tests/test_controller_kube.py).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sdn_netpol.compiler.pipeline import Table
from sdn_netpol.model.cluster_objects import CLUSTER_API_VERSIONS
from tests.controller_fixtures import (
    NODE,
    Cluster,
    Controller,
    CutProxy,
    StaticCluster,
    Switch,
    assert_flows_converge,
    controller,
    namespace_manifest,
    node_manifest,
    pod_manifest,
    policy_manifest,
    wait_for,
)
from tests.kubeapi import (
    API_VERSIONS,
    CRD_FILES,
    DEPLOY,
    SA,
    SA_USER,
    KubeAPI,
    apply,
    delete,
    install_deploy,
    load_manifests,
    path_of,
    running_apiserver,
)

CRDS = {  # file (tests.kubeapi.CRD_FILES) → (name, version, plural)
    "adminnetworkpolicies.yaml": ("adminnetworkpolicies.policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies"),
    "baselineadminnetworkpolicies.yaml": ("baselineadminnetworkpolicies.policy.networking.k8s.io", "v1alpha1",
                                          "baselineadminnetworkpolicies"),
    "clusternetworkpolicies.yaml": ("clusternetworkpolicies.policy.networking.k8s.io", "v1alpha2",
                                    "clusternetworkpolicies"),
}
GROUP = "policy.networking.k8s.io"
KINDS_PLURAL = {"ClusterNetworkPolicy": "clusternetworkpolicies", "AdminNetworkPolicy": "adminnetworkpolicies",
                "BaselineAdminNetworkPolicy": "baselineadminnetworkpolicies"}
NP = "networking.k8s.io/v1"
LIMITED = "sdn-netpol/limited"  # a ServiceAccount bound to deploy/'s role without Nodes


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeAPI]:
    """etcd + kube-apiserver for this module, with deploy/'s Namespace, RBAC and CRDs applied."""
    with running_apiserver(tmp_path_factory.mktemp("kube-apiserver"), serviceaccounts=(SA, LIMITED)) as api:
        install_deploy(api)
        yield api


class ApiCluster(Cluster):
    """The objects behind the controller, on the real server (written as the admin).
    Pods and NetworkPolicies created here are deleted at the end of the test; Namespaces
    stay (without a controller-manager a deleted Namespace never goes away), so each test
    uses its own."""

    def __init__(self, kube: KubeAPI) -> None:
        self.kube = kube
        self.created: dict[tuple[str, str, str], None] = {}

    def apply(self, *docs: dict[str, Any]) -> None:
        for doc in docs:
            apply(self.kube.admin, doc)
            if doc["kind"] in ("Pod", "NetworkPolicy"):
                self.created[(doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])] = None
            elif doc["kind"] in CLUSTER_API_VERSIONS:  # cluster-scoped: deleted at the end of the test too
                self.created[(doc["kind"], "", doc["metadata"]["name"])] = None

    def delete(self, kind: str, namespace: str, name: str) -> None:
        delete(self.kube.admin, {**API_VERSIONS, **CLUSTER_API_VERSIONS}[kind], kind, namespace or None, name)
        self.created.pop((kind, namespace, name), None)

    def docs(self) -> list[dict[str, Any]]:
        """Everything the controller watches, as the server has it now."""
        docs = []
        for kind, api_version in {**API_VERSIONS, **CLUSTER_API_VERSIONS}.items():
            items = self.kube.admin.get(path_of(api_version, kind))["items"]
            docs += [{**item, "kind": kind, "apiVersion": api_version} for item in items]
        return docs

    def clean(self) -> None:
        for kind, namespace, name in list(self.created):
            self.delete(kind, namespace, name)


@pytest.fixture
def cluster(kube: KubeAPI) -> Iterator[ApiCluster]:
    c = ApiCluster(kube)
    yield c
    c.clean()


@pytest.fixture
def ctl(sw: Switch, kube: KubeAPI, tmp_path: Path) -> Iterator[Controller]:
    """The controller with the ServiceAccount's kubeconfig (its token: RBAC applies)."""
    c = controller(sw, tmp_path, "kube", "--kubeconfig", str(kube.serviceaccount_kubeconfig))
    yield c
    c.stop()


def seed(sw: Switch, cluster: ApiCluster, prefix: str) -> tuple[str, str]:
    """Two local pods and one remote in two new namespaces, a policy, the two nodes."""
    x, y = f"{prefix}-x", f"{prefix}-y"
    sw.add_pod(x, "a", "10.244.1.2")
    sw.add_pod(x, "b", "10.244.1.3")
    cluster.apply(
        node_manifest(NODE, "192.168.50.1", "10.244.1.0/24"), node_manifest("node-2", "192.168.50.2", "10.244.2.0/24"),
        namespace_manifest(x, team="a"), namespace_manifest(y, team="b"),
        pod_manifest(x, "a", "10.244.1.2", app="web"), pod_manifest(x, "b", "10.244.1.3", app="db"),
        pod_manifest(y, "r", "10.244.2.7", node="node-2", app="web"),
        policy_manifest(x, "db", "db", {"app": "web"}),
    )
    return x, y


def converged(sw: Switch, cluster: Cluster) -> None:
    assert_flows_converge(sw, lambda: cluster.expected(sw))


def restarts(ctl: Controller, reason: str, resource: str | None = None) -> float:
    return sum(v for k, v in ctl.metrics().items()
               if k.startswith("sdn_netpol_watch_restarts_total") and f'reason="{reason}"' in k
               and (resource is None or f'resource="{resource}"' in k))


def source_error(ctl: Controller) -> Any:
    return ctl.status()["errors"]["source"]


# ---- the CRDs ------------------------------------------------------------------------------


def cnp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
                     "ingress": [{"name": "from-b", "action": "Deny",
                                  "from": [{"namespaces": {"matchLabels": {"team": "b"}}}],
                                  "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}],
                     "egress": [{"action": "Accept", "to": [{"networks": ["192.0.2.0/24"]}]}], **spec}}


def anp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "AdminNetworkPolicy", "metadata": {"name": name},
            "spec": {"priority": 5, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {
                     "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}}},
                     "ingress": [{"action": "Allow", "from": [{"namespaces": {}}],
                                  "ports": [{"portNumber": {"protocol": "TCP", "port": 80}}]}], **spec}}


def banp(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}},
                     "egress": [{"action": "Deny", "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}]}],
                     **spec}}


def test_the_crds_are_established_and_listable_by_the_serviceaccount(kube: KubeAPI) -> None:
    assert sorted(p.name for p in (DEPLOY / "crds").glob("*.yaml")) == list(CRD_FILES) == list(CRDS)
    for file, (name, version, _) in CRDS.items():
        crd = kube.admin.get(path_of("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name))
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions == {"Established": "True", "NamesAccepted": "True",
                              "KubernetesAPIApprovalPolicyConformant": "True"}, (file, conditions)
        assert crd["spec"]["scope"] == "Cluster"
        assert [v["name"] for v in crd["spec"]["versions"]] == [version]
    created = [apply(kube.admin, doc) for doc in (cnp("deny-b"), anp("allow-web"), banp())]
    try:
        for (_, version, plural), expect in zip(CRDS.values(), ("allow-web", "default", "deny-b"), strict=True):
            listed = kube.serviceaccount.get(f"/apis/{GROUP}/{version}/{plural}")
            assert [o["metadata"]["name"] for o in listed["items"]] == [expect]
            assert kube.serviceaccount.watch_status(f"/apis/{GROUP}/{version}/{plural}",
                                                    resourceVersion=listed["metadata"]["resourceVersion"]) == 200
        # the server keeps the preserved bodies as given
        stored = kube.admin.get(f"/apis/{GROUP}/v1alpha2/clusternetworkpolicies/deny-b")
        assert stored["spec"]["ingress"][0]["protocols"] == [{"tcp": {"destinationPort": {"number": 80}}}]
    finally:
        for doc in created:
            kube.admin.ok("DELETE", f"/apis/{doc['apiVersion']}/{KINDS_PLURAL[doc['kind']]}/{doc['metadata']['name']}")


@pytest.mark.parametrize(("doc", "field"), [
    (cnp("bad-tier", tier="Middle"), "spec.tier"),
    (cnp("bad-priority", priority=1001), "spec.priority"),
    (cnp("two-subjects", subject={"namespaces": {}, "pods": {"podSelector": {}}}), "spec.subject"),
    (cnp("no-action", ingress=[{"from": [{"namespaces": {}}]}]), "spec.ingress[0].action"),
    (cnp("empty-peer", egress=[{"action": "Deny", "to": [{}]}]), "spec.egress[0].to[0]"),
    (anp("pass-less", ingress=[{"action": "Accept", "from": [{"namespaces": {}}]}]), "spec.ingress[0].action"),
    (anp("no-priority", priority=None), "spec.priority"),
    (banp(egress=[{"action": "Pass", "to": [{"namespaces": {}}]}]), "spec.egress[0].action"),
], ids=["tier", "priority", "subject", "action", "peer", "anp-action", "anp-priority", "banp-action"])
def test_the_crd_schemas_refuse_what_the_api_refuses(kube: KubeAPI, doc: dict[str, Any], field: str) -> None:
    doc = {**doc, "spec": {k: v for k, v in doc["spec"].items() if v is not None}}
    plural = KINDS_PLURAL[doc["kind"]]
    status, body = kube.admin.call("POST", f"/apis/{doc['apiVersion']}/{plural}", doc)
    assert (status, body.get("reason")) == (422, "Invalid"), body
    # 1.20 names a required field inside a list item without its index (spec.ingress.action)
    fields = {re.sub(r"\[\d+\]", "", c.get("field", "")) for c in body["details"]["causes"]}
    assert re.sub(r"\[\d+\]", "", field) in fields, body["details"]["causes"]


# ---- RBAC, for real --------------------------------------------------------------------------


WATCHED = [("v1", "Pod"), ("v1", "Namespace"), ("v1", "Node"), (NP, "NetworkPolicy"),
           *((f"{GROUP}/{version}", kind) for kind, (_, version, _) in zip(
               ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy"), CRDS.values(),
               strict=True))]


def test_the_serviceaccount_may_do_everything_the_controller_needs(kube: KubeAPI) -> None:
    sa = kube.serviceaccount
    for api_version, kind in WATCHED:
        listed = sa.get(path_of(api_version, kind), limit=1)
        assert sa.watch_status(path_of(api_version, kind), resourceVersion=listed["metadata"]["resourceVersion"],
                               allowWatchBookmarks="true") == 200, kind
    namespaced = sa.get(path_of(NP, "NetworkPolicy", "sdn-netpol"))  # list in one namespace too
    assert namespaced["items"] == []
    event = sa.ok("POST", path_of("v1", "Event", "sdn-netpol"), {
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "rbac-check.", "namespace": "sdn-netpol"},
        "involvedObject": {"kind": "NetworkPolicy", "namespace": "sdn-netpol", "name": "any", "apiVersion": NP},
        "reason": "Check", "message": "created by the ServiceAccount", "type": "Normal",
        "source": {"component": "sdn-netpol"}})
    name = event["metadata"]["name"]
    patched = sa.ok("PATCH", path_of("v1", "Event", "sdn-netpol", name), {"count": 2},
                    content_type="application/merge-patch+json")
    assert patched["count"] == 2


@pytest.mark.parametrize(("method", "api_version", "kind", "namespace", "name", "body"), [
    ("GET", "v1", "Secret", None, None, None),
    ("GET", "v1", "Secret", "sdn-netpol", None, None),
    ("GET", "v1", "ConfigMap", "kube-system", None, None),
    ("GET", "v1", "Namespace", None, "default", None),  # list and watch, never get
    ("POST", NP, "NetworkPolicy", "default", None,
     {"metadata": {"name": "sneaky"}, "spec": {"podSelector": {}}}),
    ("DELETE", "v1", "Pod", "default", "any", None),
    ("PATCH", "v1", "Node", None, NODE, {"metadata": {"labels": {"x": "y"}}}),
    ("POST", f"{GROUP}/v1alpha2", "ClusterNetworkPolicy", None, None, cnp("sneaky")),
    ("DELETE", "v1", "Event", "sdn-netpol", "any", None),
], ids=["list-secrets", "list-secrets-in-own-namespace", "list-configmaps", "get-namespace", "create-networkpolicy",
        "delete-pod", "patch-node", "create-clusternetworkpolicy", "delete-event"])
def test_requests_outside_the_role_are_refused(kube: KubeAPI, method: str, api_version: str, kind: str,
                                               namespace: str | None, name: str | None, body: Any) -> None:
    status, reply = kube.serviceaccount.call(method, path_of(api_version, kind, namespace, name), body,
                                             content_type="application/merge-patch+json" if method == "PATCH"
                                             else "application/json")
    assert (status, reply.get("reason")) == (403, "Forbidden"), reply
    assert f'User "{SA_USER}" cannot' in reply["message"]


# ---- validation: the server's, then sdn-netpol's ---------------------------------------------


def test_the_server_refuses_an_invalid_network_policy(kube: KubeAPI) -> None:
    apply(kube.admin, namespace_manifest("v-x"))
    bad = {"apiVersion": NP, "kind": "NetworkPolicy", "metadata": {"name": "bad", "namespace": "v-x"},
           "spec": {"podSelector": {"matchLabels": {"app": "-bad-"}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/33"}}],
                                 "ports": [{"protocol": "SCTPX", "port": 70000}]}]}}
    status, body = kube.admin.call("POST", path_of(NP, "NetworkPolicy", "v-x"), bad)
    assert (status, body["reason"]) == (422, "Invalid"), body
    assert {c["field"] for c in body["details"]["causes"]} == {
        "spec.podSelector.matchLabels", "spec.ingress[0].from[0].ipBlock.cidr",
        "spec.ingress[0].ports[0].protocol", "spec.ingress[0].ports[0].port"}
    assert kube.admin.call("GET", path_of(NP, "NetworkPolicy", "v-x", "bad"))[0] == 404


def test_a_1_20_server_drops_end_port_and_adds_no_namespace_name_label(kube: KubeAPI) -> None:
    """Two differences from current Kubernetes the model must not rely on."""
    ns = apply(kube.admin, namespace_manifest("v-y"))
    assert "kubernetes.io/metadata.name" not in (ns["metadata"].get("labels") or {})
    ranged = policy_manifest("v-y", "ranged", "db", {"app": "web"}, port=8000)
    ranged["spec"]["ingress"][0]["ports"][0]["endPort"] = 8080
    stored = apply(kube.admin, ranged)
    assert stored["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8000}]


# ---- the controller as the ServiceAccount ----------------------------------------------------


def test_changes_are_realized_exactly(sw: Switch, cluster: ApiCluster, ctl: Controller) -> None:
    x, y = seed(sw, cluster, "r")
    ctl.start()
    converged(sw, cluster)
    sw.add_pod(x, "d", "10.244.1.4")
    cluster.apply(pod_manifest(x, "d", "10.244.1.4", app="web"))  # created Pending, then Running with an IP
    converged(sw, cluster)
    cluster.apply(pod_manifest(x, "d", "10.244.1.4", app="db"))  # relabelled
    converged(sw, cluster)
    cluster.apply({**policy_manifest(x, "from-b", "db", None),
                   "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]}})
    converged(sw, cluster)
    cluster.apply(namespace_manifest(y, team="c"))  # the namespace leaves the selector
    converged(sw, cluster)
    # by name: 1.20 sets no kubernetes.io/metadata.name label; the model implies it
    cluster.apply({**policy_manifest(x, "by-name", "web", None),
                   "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [{"namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": y}}}]}]}})
    converged(sw, cluster)
    cluster.apply(policy_manifest(x, "db", "db", {"app": "web"}, port=8080))  # updated
    converged(sw, cluster)
    cluster.delete("NetworkPolicy", x, "db")
    converged(sw, cluster)
    cluster.delete("Pod", x, "d")
    sw.remove_pod(x, "d")
    converged(sw, cluster)
    status = ctl.status()
    assert set(status["ports"]) == {f"{x}/a", f"{x}/b"}
    assert status["errors"]["source"] is None and status["invalid_objects"] == []
    assert restarts(ctl, "http_403") == 0


def test_admin_policies_are_watched_and_realized_exactly(sw: Switch, cluster: ApiCluster, ctl: Controller) -> None:
    """The three CRDs listed and watched by the ServiceAccount: each kind's objects reach the
    tier tables, and their deletion takes the flows away again."""
    seed(sw, cluster, "adm")
    ctl.start()
    converged(sw, cluster)
    cluster.apply(cnp("adm-deny"))
    converged(sw, cluster)
    assert any(f.table == Table.INGRESS_ADMIN and f.match.value("conj_id") is not None for f in sw.flows())
    cluster.apply(anp("adm-allow"), banp())
    converged(sw, cluster)
    assert {f.table for f in sw.flows()} >= {Table.EGRESS_BASELINE, Table.INGRESS_ADMIN, Table.EGRESS_ADMIN}
    for kind, name in (("ClusterNetworkPolicy", "adm-deny"), ("AdminNetworkPolicy", "adm-allow"),
                       ("BaselineAdminNetworkPolicy", "default")):
        cluster.delete(kind, "", name)
    converged(sw, cluster)
    status = ctl.status()
    assert status["errors"]["source"] is None and status["invalid_objects"] == []


def test_a_watch_expired_by_an_etcd_compaction_relists_and_converges(sw: Switch, cluster: ApiCluster,
                                                                       kube: KubeAPI, tmp_path: Path) -> None:
    """The controller loses the server (a relay cut), changes are made and etcd's history is
    compacted past them: Pods and NetworkPolicies (watched straight from etcd) answer 410 Gone
    and are listed again; Namespaces resume from the apiserver's watch cache."""
    relay = CutProxy(("127.0.0.1", 0), ("127.0.0.1", int(kube.url.rsplit(":", 1)[1])))
    kubeconfig = kube.kubeconfig(SA, tmp_path / "relayed.kubeconfig", port=relay.port)
    ctl = controller(sw, tmp_path, "kube", "--kubeconfig", str(kubeconfig))
    try:
        x, y = seed(sw, cluster, "e")
        ctl.start()
        converged(sw, cluster)
        relay.drop()
        wait_for(lambda: restarts(ctl, "dropped") >= 4, what="every watch to lose the server")
        cluster.delete("Pod", x, "b")
        sw.remove_pod(x, "b")
        cluster.delete("NetworkPolicy", x, "db")
        cluster.apply(policy_manifest(x, "deny", "web", None), namespace_manifest(y, team="c"))
        kube.compact()
        relay.release()
        wait_for(lambda: restarts(ctl, "expired", "pods") >= 1 and restarts(ctl, "expired", "networkpolicies") >= 1,
                 what="410 Gone on the uncached watches")
        converged(sw, cluster)
        wait_for(lambda: source_error(ctl) is None, what="the source error to clear")
        assert restarts(ctl, "expired", "namespaces") == 0
    finally:
        ctl.stop()
        relay.close()


def test_a_policy_the_server_accepts_but_sdn_netpol_refuses_gets_an_event(sw: Switch, cluster: ApiCluster,
                                                                          kube: KubeAPI, ctl: Controller) -> None:
    """An IPv4-mapped IPv6 `except` inside an IPv4 cidr passes 1.20's validation (Go reads it
    as IPv4) but not sdn-netpol's: the last valid version stays enforced, and the policy gets
    an InvalidPolicy Warning Event, written as the ServiceAccount and readable by the admin."""
    x, _ = seed(sw, cluster, "i")
    ctl.start()
    converged(sw, cluster)
    last_valid = copy.deepcopy(cluster.docs())
    broken = policy_manifest(x, "db", "db", {"app": "web"})
    broken["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::ffff:10.1.0.0/112"]}})
    stored = apply(kube.admin, broken)  # accepted by the server
    assert stored["spec"]["ingress"][0]["from"][1]["ipBlock"]["except"] == ["::ffff:10.1.0.0/112"]
    entry: dict[str, Any] = wait_for(lambda: next(iter(ctl.status()["invalid_objects"]), {}),
                                     what="the invalid policy in /status")
    assert (entry["kind"], entry["namespace"], entry["name"], entry["last_valid_enforced"]) == (
        "NetworkPolicy", x, "db", True)
    path = "spec.ingress[0].from[1].ipBlock.except[0]"

    def events() -> list[dict[str, Any]]:
        return [e for e in kube.admin.get(path_of("v1", "Event", x), fieldSelector="reason=InvalidPolicy")["items"]
                if e["involvedObject"]["name"] == "db"]

    [event] = wait_for(events, what="the InvalidPolicy Event")
    assert event["type"] == "Warning"
    involved = event["involvedObject"]
    assert (involved["kind"], involved["namespace"], involved["uid"], involved["resourceVersion"]) == (
        "NetworkPolicy", x, stored["metadata"]["uid"], stored["metadata"]["resourceVersion"])
    assert path in event["message"]
    assert (event["source"]["component"], event["source"]["host"], event["reportingComponent"]) == (
        "sdn-netpol", NODE, "sdn-netpol")
    assert_flows_converge(sw, lambda: StaticCluster(last_valid).expected(sw))
    cluster.apply(pod_manifest(x, "c", "10.244.2.9", node="node-2", app="web"))  # later changes still realized
    last_valid.append(json.loads(json.dumps(pod_manifest(x, "c", "10.244.2.9", node="node-2", app="web"))))
    assert_flows_converge(sw, lambda: StaticCluster(last_valid).expected(sw))
    assert len(events()) == 1, "one Event per invalid version"


def binding(name: str, role: str, serviceaccount: str) -> dict[str, Any]:
    namespace, sa = serviceaccount.split("/")
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]}


def test_a_kubeconfig_without_permission_for_one_resource_is_a_clear_error_and_the_flows_stay(
        sw: Switch, cluster: ApiCluster, kube: KubeAPI, ctl: Controller, tmp_path: Path) -> None:
    """deploy/'s ClusterRole without Nodes: the controller says which resource it may not
    list (log, /status), keeps the switch's flows untouched, and recovers once allowed."""
    seed(sw, cluster, "p")
    ctl.start()
    converged(sw, cluster)
    installed = sw.flows()
    ctl.stop()
    [role] = [d for d in load_manifests(DEPLOY / "rbac.yaml") if d["kind"] == "ClusterRole"]
    role = copy.deepcopy(role)
    role["metadata"]["name"] = "sdn-netpol-without-nodes"
    for rule in role["rules"]:
        rule["resources"] = [r for r in rule["resources"] if r != "nodes"]
    apply(kube.admin, role)
    apply(kube.admin, binding("sdn-netpol-without-nodes", "sdn-netpol-without-nodes", LIMITED))
    (tmp_path / "limited").mkdir()
    limited = controller(sw, tmp_path / "limited", "kube", "--kubeconfig",
                         str(kube.kubeconfig(LIMITED, tmp_path / "limited.kubeconfig")))
    limited.start()
    try:
        error: str = wait_for(lambda: source_error(limited), what="the source error in /status")
        assert error == ('nodes: API error 403: Forbidden: nodes is forbidden: User '
                         '"system:serviceaccount:sdn-netpol:limited" cannot list resource "nodes" in API group "" '
                         'at the cluster scope'), error
        assert 'cannot list resource "nodes"' in limited.log.read_text()
        wait_for(lambda: restarts(limited, "http_403", "nodes") >= 2, what="the list to be retried")
        assert sw.flows() == installed
        assert limited.flow_mods_sent() == 0
        apply(kube.admin, binding("sdn-netpol-limited", "sdn-netpol", LIMITED))
        wait_for(lambda: source_error(limited) is None, timeout=30, what="the error to clear once allowed")
        converged(sw, cluster)
    finally:
        limited.stop()
