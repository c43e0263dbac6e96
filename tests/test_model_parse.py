"""Manifests → frozen values: formats, ordering, skipped kinds, and every field NetworkPolicy reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netaddr import IPAddress, IPNetwork

from sdn_netpol.inputs.manifests import ManifestError, decode_documents, load_paths
from sdn_netpol.model.labels import Labels, LabelSelector, Requirement
from sdn_netpol.model.objects import NAMESPACE_NAME_LABEL, ContainerPort, IPBlock, Peer, PodKey, PolicyPort
from sdn_netpol.model.parse import parse_documents
from sdn_netpol.policy.state import ClusterState
from tests.builders import namespace, parse, pod

TWO_DOCS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {phase: Running, podIP: 10.0.0.1}
"""


def names(result: object) -> list[str]:
    found = []
    for kind in ("namespaces", "pods", "policies"):
        for obj in getattr(result, kind):
            found.append(f"{kind}:{getattr(obj, 'namespace', '')}/{obj.name}".replace(":/", ":"))
    return found


# --- formats -------------------------------------------------------------------------------


def test_yaml_multi_document_file_yields_every_object() -> None:
    result = parse(TWO_DOCS)
    assert names(result) == ["namespaces:shop", "pods:shop/web"]
    assert not result.errors and not result.skipped


def test_empty_yaml_documents_are_ignored() -> None:
    result = parse("---\n---\n" + TWO_DOCS + "---\n")
    assert names(result) == ["namespaces:shop", "pods:shop/web"]
    assert not result.errors


def test_json_manifest_is_parsed_like_yaml() -> None:
    text = json.dumps(pod("shop/web", "10.0.0.1", {"app": "web"}))
    result = parse_documents(decode_documents("pod.json", text))
    assert names(result) == ["pods:shop/web"]
    assert result.pods[0].ips == (IPAddress("10.0.0.1"),)


def test_json_stream_of_several_objects_is_parsed() -> None:
    text = json.dumps(namespace("a")) + "\n" + json.dumps(namespace("b"))
    result = parse_documents(decode_documents("objects.json", text))
    assert names(result) == ["namespaces:a", "namespaces:b"]


def test_kind_list_items_are_each_an_object() -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": [namespace("a"), pod("a/p", "10.0.0.1")]}
    result = parse(body)
    assert names(result) == ["namespaces:a", "pods:a/p"]


def test_typed_list_items_take_the_kind_of_the_list() -> None:
    item = pod("a/p", "10.0.0.1")
    del item["kind"]
    result = parse({"apiVersion": "v1", "kind": "PodList", "items": [item]})
    assert names(result) == ["pods:a/p"]


def test_folder_is_read_recursively_yaml_yml_and_json(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(TWO_DOCS)
    (tmp_path / "sub" / "b.yml").write_text("kind: Namespace\napiVersion: v1\nmetadata: {name: other}\n")
    (tmp_path / "sub" / "c.json").write_text(json.dumps(namespace("third")))
    (tmp_path / "notes.txt").write_text("kind: Namespace\nmetadata: {name: ignored}\n")
    result = load_paths([tmp_path])
    assert sorted(names(result)) == ["namespaces:other", "namespaces:shop", "namespaces:third", "pods:shop/web"]


def test_several_paths_are_read_in_the_order_given(tmp_path: Path) -> None:
    first, second = tmp_path / "1.yaml", tmp_path / "2.yaml"
    first.write_text("kind: Namespace\napiVersion: v1\nmetadata: {name: x, labels: {v: one}}\n")
    second.write_text("kind: Namespace\napiVersion: v1\nmetadata: {name: x, labels: {v: two}}\n")
    assert load_paths([first, second]).namespaces[0].labels["v"] == "two"
    assert load_paths([second, first]).namespaces[0].labels["v"] == "one"


def test_files_with_a_utf8_byte_order_mark_are_read(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(namespace("a")).encode())
    (tmp_path / "b.yaml").write_bytes(b"\xef\xbb\xbf" + TWO_DOCS.encode())
    assert sorted(names(load_paths([tmp_path]))) == ["namespaces:a", "namespaces:shop", "pods:shop/web"]


def test_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(b"\xff\xfe\x00kind")
    with pytest.raises(ManifestError, match=r"x\.yaml: not UTF-8 text"):
        load_paths([tmp_path])


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.yaml: no such file or directory"):
        load_paths([tmp_path / "nope.yaml"])


def test_undecodable_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bad\.yaml: invalid YAML"):
        load_paths([bad])


def test_undecodable_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": ')
    with pytest.raises(ManifestError, match=r"bad\.json: invalid JSON"):
        load_paths([bad])


# --- ordering and kinds ---------------------------------------------------------------------


def test_later_object_with_same_kind_namespace_and_name_replaces_the_earlier() -> None:
    result = parse(pod("a/p", "10.0.0.1", {"v": "1"}), pod("a/p", "10.0.0.2", {"v": "2"}))
    assert len(result.pods) == 1
    assert result.pods[0].labels == {"v": "2"}
    assert result.pods[0].ips == (IPAddress("10.0.0.2"),)


def test_same_name_in_another_namespace_or_kind_does_not_replace() -> None:
    result = parse(pod("a/x", "10.0.0.1"), pod("b/x", "10.0.0.2"), namespace("x"))
    assert names(result) == ["namespaces:x", "pods:a/x", "pods:b/x"]


def test_invalid_later_version_is_reported_and_the_earlier_one_stays() -> None:
    result = parse(pod("a/p", "10.0.0.1"), pod("a/p", "not-an-ip"))
    assert [p.ips for p in result.pods] == [(IPAddress("10.0.0.1"),)]
    assert [str(e) for e in result.errors] == ["pod a/p: status.podIP: 'not-an-ip': must be a valid IP address"]


def test_other_kinds_are_skipped_and_said_so() -> None:
    result = parse({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, TWO_DOCS)
    assert names(result) == ["namespaces:shop", "pods:shop/web"]
    assert result.skipped == ("part0: kind 'Service' is not used by NetworkPolicy; skipped",)
    assert not result.errors


def test_network_policy_of_another_api_group_is_skipped_and_said_so() -> None:
    calico = {"apiVersion": "crd.projectcalico.org/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "p", "namespace": "a"}, "spec": {"selector": "all()"}}
    result = parse(calico)
    assert result.policies == ()
    assert result.skipped == (
        "part0: crd.projectcalico.org/v1 NetworkPolicy is not networking.k8s.io/v1 NetworkPolicy; skipped",
    )


def test_manifest_without_kind_is_an_error() -> None:
    result = parse({"metadata": {"name": "x"}})
    assert [str(e) for e in result.errors] == ["part0: kind: Required value"]


def test_manifest_that_is_not_an_object_is_an_error() -> None:
    result = parse("- just\n- a list\n")
    assert [str(e) for e in result.errors] == ["part0.yaml: a manifest must be an object"]


# --- namespaces -----------------------------------------------------------------------------


def test_namespace_label_metadata_name_is_implied() -> None:
    result = parse(namespace("shop", team="a"))
    assert result.namespaces[0].labels == {"team": "a", NAMESPACE_NAME_LABEL: "shop"}


def test_namespace_metadata_name_label_cannot_be_overridden() -> None:
    result = parse(namespace("shop", **{NAMESPACE_NAME_LABEL: "other"}))
    assert result.namespaces[0].labels[NAMESPACE_NAME_LABEL] == "shop"


def test_namespace_used_but_never_declared_exists_with_its_name_label() -> None:
    state = ClusterState.from_parse(parse(pod("ghost/p", "10.0.0.1")))
    assert [ns.name for ns in state.namespaces] == ["ghost"]
    assert state.namespace("ghost").labels == {NAMESPACE_NAME_LABEL: "ghost"}


# --- pods -----------------------------------------------------------------------------------


def test_pod_fields_namespace_labels_ip_node_phase_and_ports() -> None:
    body = pod("shop/web", "10.0.0.7", {"app": "web", "tier": "front"},
               ports=[("http", 8080), (None, 9090, "UDP"), ("sctp-port", 7777, "SCTP")], node="node-1")
    [p] = parse(body).pods
    assert (p.namespace, p.name, p.key) == ("shop", "web", PodKey("shop", "web"))
    assert p.labels == {"app": "web", "tier": "front"}
    assert p.ips == (IPAddress("10.0.0.7"),)
    assert p.node_name == "node-1"
    assert (p.phase, p.host_network, p.in_policy_scope) == ("Running", False, True)
    assert p.ports == (ContainerPort("http", 8080, "TCP"), ContainerPort(None, 9090, "UDP"),
                       ContainerPort("sctp-port", 7777, "SCTP"))


def test_pod_ports_of_every_container_are_collected() -> None:
    body = pod("a/p", "10.0.0.1", ports=[("http", 80)])
    body["spec"]["containers"].append({"name": "side", "ports": [{"containerPort": 9000, "name": "metrics"}]})
    [p] = parse(body).pods
    assert p.resolve_named_port("http", "TCP") == (80,)
    assert p.resolve_named_port("metrics", "TCP") == (9000,)
    assert p.resolve_named_port("metrics", "UDP") == ()


def test_pod_without_namespace_is_in_default() -> None:
    body = pod("x/p", "10.0.0.1")
    del body["metadata"]["namespace"]
    assert parse(body).pods[0].namespace == "default"


def test_pod_ipv6_single_stack() -> None:
    [p] = parse(pod("a/p", "fd00::10")).pods
    assert p.ips == (IPAddress("fd00::10"),)
    assert p.ip_of_family(6) == IPAddress("fd00::10") and p.ip_of_family(4) is None


def test_pod_dual_stack_from_pod_ips_without_duplicates() -> None:
    [p] = parse(pod("a/p", ["10.0.0.1", "fd00::1"])).pods
    assert p.ips == (IPAddress("10.0.0.1"), IPAddress("fd00::1"))
    assert p.ip_of_family(4) == IPAddress("10.0.0.1") and p.ip_of_family(6) == IPAddress("fd00::1")


def test_pod_host_network_is_outside_network_policy() -> None:
    [p] = parse(pod("a/p", "192.168.0.10", host_network=True)).pods
    assert p.host_network and not p.in_policy_scope


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed", "Unknown"])
def test_pod_not_running_is_outside_network_policy(phase: str) -> None:
    [p] = parse(pod("a/p", "10.0.0.1", phase=phase)).pods
    assert p.phase == phase and not p.in_policy_scope


def test_pod_whose_status_has_no_ip_is_outside_network_policy() -> None:
    [p] = parse(pod("a/p", None)).pods
    assert p.ips == () and p.ips_known and not p.in_policy_scope


def test_pod_status_with_ip_but_no_phase_is_running() -> None:
    body = pod("a/p", "10.0.0.1")
    del body["status"]["phase"]
    [p] = parse(body).pods
    assert p.phase == "Running" and p.in_policy_scope


def test_pod_manifest_without_status_is_a_running_pod_whose_ip_is_not_yet_known() -> None:
    [p] = parse(pod("a/p", phase=None)).pods
    assert p.ips == () and not p.ips_known and p.in_policy_scope


def test_container_port_protocol_defaults_to_tcp() -> None:
    [p] = parse(pod("a/p", "10.0.0.1", ports=[("web", 80)])).pods
    assert p.ports == (ContainerPort("web", 80, "TCP"),)


def test_null_label_value_is_the_empty_string_as_the_api_server_decodes_it() -> None:
    [p] = parse("kind: Pod\napiVersion: v1\nmetadata: {name: p, namespace: a, labels: {flag: }}\n").pods
    assert p.labels == {"flag": ""}


# --- network policies -----------------------------------------------------------------------

FULL_POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: full, namespace: shop}
spec:
  podSelector:
    matchLabels: {app: db}
    matchExpressions:
    - {key: tier, operator: In, values: [back, data]}
    - {key: legacy, operator: DoesNotExist}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {role: client}}
    - podSelector: {}
    ports:
    - {protocol: TCP, port: 6379}
    - {port: 32000, endPort: 32768}
    - {protocol: UDP, port: dns}
    - {protocol: SCTP}
  egress:
  - to: [{namespaceSelector: {}}]
"""


def test_network_policy_fields() -> None:
    [p] = parse(FULL_POLICY).policies
    assert (p.namespace, p.name, p.ref) == ("shop", "full", "shop/full")
    assert p.pod_selector == LabelSelector(
        Labels({"app": "db"}),
        (Requirement("tier", "In", frozenset({"back", "data"})), Requirement("legacy", "DoesNotExist")),
    )
    assert p.policy_types == {"Ingress", "Egress"}
    [rule] = p.ingress
    assert rule.peers == (
        Peer(ip_block=IPBlock(IPNetwork("172.17.0.0/16"), (IPNetwork("172.17.1.0/24"),))),
        Peer(pod_selector=LabelSelector(Labels({"role": "client"})),
             namespace_selector=LabelSelector(Labels({"team": "a"}))),
        Peer(pod_selector=LabelSelector()),
    )
    assert rule.ports == (PolicyPort("TCP", 6379), PolicyPort("TCP", 32000, 32768), PolicyPort("UDP", "dns"),
                          PolicyPort("SCTP", None))
    [out] = p.egress
    assert out.peers == (Peer(namespace_selector=LabelSelector()),) and out.ports == ()


def policy_with(spec: str) -> str:
    head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n"
    return head + "".join(f"  {line}\n" for line in spec.splitlines())


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ("podSelector: {}", {"Ingress"}),
        ("podSelector: {}\ningress: [{}]", {"Ingress"}),
        ("podSelector: {}\negress: [{}]", {"Ingress", "Egress"}),
        ("podSelector: {}\negress: []", {"Ingress"}),
        ("podSelector: {}\npolicyTypes: []\negress: [{}]", {"Ingress", "Egress"}),
        ("podSelector: {}\npolicyTypes: [Egress]\ningress: [{}]", {"Egress"}),
        ("podSelector: {}\npolicyTypes: [Ingress]\negress: [{}]", {"Ingress"}),
    ],
    ids=["nothing", "ingress-rules", "egress-rules", "empty-egress", "empty-types", "egress-only", "ingress-only"],
)
def test_policy_types_default_to_ingress_plus_egress_iff_egress_rules(spec: str, types: set[str]) -> None:
    [p] = parse(policy_with(spec)).policies
    assert p.policy_types == types


def test_missing_pod_selector_selects_every_pod_of_the_namespace() -> None:
    [p] = parse(policy_with("policyTypes: [Ingress]")).policies
    assert p.pod_selector.is_empty


@pytest.mark.parametrize("rule", ["{}", "null", "{from: []}", "{from: null, ports: []}"])
def test_empty_or_missing_from_and_ports_mean_all(rule: str) -> None:
    [p] = parse(policy_with(f"podSelector: {{}}\ningress: [{rule}]")).policies
    [parsed] = p.ingress
    assert parsed.peers == () and parsed.ports == ()


def test_policy_without_namespace_is_in_default() -> None:
    [p] = parse("kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: p}\nspec: {}\n").policies
    assert p.namespace == "default"


def test_ip_block_with_host_bits_means_its_network() -> None:
    [p] = parse(policy_with("ingress:\n- from: [{ipBlock: {cidr: 10.1.2.3/16, except: [10.1.2.3/24]}}]")).policies
    block = p.ingress[0].peers[0].ip_block
    assert block == IPBlock(IPNetwork("10.1.0.0/16"), (IPNetwork("10.1.2.0/24"),))
