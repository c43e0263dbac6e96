"""The lab's address families without namespaces or switches (issue 15): the addressing plan
of `--ip-family 4|6|dual`, the rule that writes the IPv4 ipBlocks of a case in IPv6 terms,
placement by IPv6 status.podIPs, the CNI config and manifests of a dual-stack node and pod,
state files of older labs, and the errors (`probe --family` the lab lacks, `--external` on
an IPv6 lab) raised before anything is touched. Real packets: test_lab_conformance_v6/_dual.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from netaddr import IPAddress

from sdn_netpol.lab.families import families, policy_in_ipv6, to_ipv6
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.pods import cni_config, place
from sdn_netpol.lab.state import LabState, new_state
from sdn_netpol.lab.store import LabError, node_manifest, with_pod_status
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Pod


def pod(name: str, *ips: str, node: str | None = None) -> Pod:
    return Pod("x", name, Labels(), tuple(IPAddress(ip) for ip in ips), node)


@pytest.mark.parametrize(("v4", "v6"), [
    ("0.0.0.0/0", "::/0"),
    ("10.0.0.0/8", "fd00:10::/32"),
    ("10.244.0.0/16", "fd00:10:244::/48"),
    ("10.244.2.0/24", "fd00:10:244:2::/64"),
    ("10.244.12.0/24", "fd00:10:244:12::/64"),
    ("10.244.3.5/32", "fd00:10:244:3::5/128"),
    ("10.244.1.16/28", "fd00:10:244:1::10/124"),
])
def test_the_ipv4_plan_in_ipv6_terms(v4: str, v6: str) -> None:
    assert to_ipv6(v4) == v6


@pytest.mark.parametrize("cidr", ["172.17.0.0/16", "10.244.0.0/20", "192.168.1.0/24", "fd00::/8"])
def test_a_cidr_outside_the_plan_has_no_ipv6_counterpart(cidr: str) -> None:
    with pytest.raises(ValueError, match=cidr):
        to_ipv6(cidr)


def test_a_policy_in_ipv6_terms_changes_only_its_ipblocks() -> None:
    doc = {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}, "spec": {
        "podSelector": {},
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}},
                              {"podSelector": {}}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.244.3.0/24"}}], "ports": [{"port": 80}]}]}}
    out = policy_in_ipv6(doc)
    assert out["spec"]["ingress"][0]["from"] == [
        {"ipBlock": {"cidr": "fd00:10:244::/48", "except": ["fd00:10:244:2::/64"]}}, {"podSelector": {}}]
    assert out["spec"]["egress"] == [{"to": [{"ipBlock": {"cidr": "fd00:10:244:3::/64"}}], "ports": [{"port": 80}]}]
    assert doc["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"] == "10.244.3.0/24", "the case itself is untouched"
    namespace = {"kind": "Namespace", "metadata": {"name": "x"}}
    assert policy_in_ipv6(namespace) is namespace


def test_each_family_has_its_pod_cidr_and_gateway_per_node(tmp_path: Path) -> None:
    assert families("4") == (4,) and families("6") == (6,) and families("dual") == (4, 6)
    with pytest.raises(ValueError, match="ip family '5'"):
        families("5")
    node2 = new_state(tmp_path, 3, "vxlan", [], "controller", "dual").node("node2")
    assert node2.pod_cidrs == ["10.244.2.0/24", "fd00:10:244:2::/64"]
    assert node2.gateways == ["10.244.2.254", "fd00:10:244:2:ffff:ffff:ffff:fffe"]
    assert (node2.pod_cidr, node2.gateway) == ("10.244.2.0/24", "10.244.2.254")
    v6 = new_state(tmp_path, 3, "vxlan", [], "controller", "6")
    assert v6.families == (6,) and v6.node("node3").pod_cidr == "fd00:10:244:3::/64"
    assert v6.node("node3").cidr_of(4) is None


def test_pods_with_ipv6_status_addresses_land_on_the_node_holding_them(tmp_path: Path) -> None:
    dual = new_state(tmp_path, 3, "vxlan", [], "controller", "dual").nodes
    placed = {p.pod.name: p for p in place([pod("a", "fd00:10:244:3::7", node="node1"),
                                            pod("b", "fd00:10:244:2::9", "10.244.2.9"), pod("c")], dual)}
    assert (placed["a"].node, placed["a"].ips) == ("node3", ("fd00:10:244:3::7",))
    assert (placed["b"].node, placed["b"].ips) == ("node2", ("10.244.2.9", "fd00:10:244:2::9")), "lab order"
    assert placed["b"].ip == "10.244.2.9" and placed["c"].ips == ()
    v6 = new_state(tmp_path, 2, "vxlan", [], "controller", "6").nodes
    assert place([pod("a", "fd00:10:244:2::5")], v6)[0].node == "node2"


@pytest.mark.parametrize(("ips", "family", "message"), [
    (("10.244.1.5",), "6", "pod x/a: status.podIP 10.244.1.5 is IPv4, but the lab's pods have IPv6 only"),
    (("fd00:10:244:1::5",), "4", "pod x/a: status.podIP fd00:10:244:1::5 is IPv6, but the lab's pods have IPv4 only"),
    (("fd00:10:244:9::5",), "dual", r"status.podIP fd00:10:244:9::5 is in no node's pod CIDR \(fd00:10:244:1::/64"),
    (("fd00:10:244:1:ffff:ffff:ffff:fffe",), "6", "is in no node's pod CIDR"),
    (("10.244.1.5", "fd00:10:244:2::5"), "dual", "point at different nodes"),
])
def test_status_addresses_the_lab_cannot_give_are_refused(tmp_path: Path, ips: tuple[str, ...], family: str,
                                                          message: str) -> None:
    with pytest.raises(LabError, match=message):
        place([pod("a", *ips)], new_state(tmp_path, 2, "vxlan", [], "controller", family).nodes)


def test_a_dual_stack_node_gives_host_local_a_range_of_each_family(tmp_path: Path) -> None:
    node = new_state(tmp_path, 2, "vxlan", [], "controller", "dual").node("node2")
    conf = cni_config(node, ("10.244.2.9", "fd00:10:244:2::9"))
    assert conf["ipam"]["ranges"] == [
        [{"subnet": "10.244.2.0/24", "rangeEnd": "10.244.2.253", "gateway": "10.244.2.254"}],
        [{"subnet": "fd00:10:244:2::/64", "rangeEnd": "fd00:10:244:2:ffff:ffff:ffff:fffd",
          "gateway": "fd00:10:244:2:ffff:ffff:ffff:fffe"}]]
    assert conf["runtimeConfig"] == {"ips": ["10.244.2.9/24", "fd00:10:244:2::9/64"]}
    assert "runtimeConfig" not in cni_config(node, ())
    manifest = node_manifest("node2", "10.10.0.2", node.pod_cidrs)
    assert manifest["spec"] == {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]}
    status = with_pod_status({"kind": "Pod", "metadata": {"name": "a"}}, "node2", ["10.244.2.9", "fd00:10:244:2::9"])
    assert status["status"] == {"phase": "Running", "podIP": "10.244.2.9",
                                "podIPs": [{"ip": "10.244.2.9"}, {"ip": "fd00:10:244:2::9"}]}


def test_a_state_file_of_a_lab_before_families_reads_as_ipv4(tmp_path: Path) -> None:
    doc = json.loads(json.dumps({
        "workdir": str(tmp_path), "prefix": "sdnlab-", "tunnel": "vxlan",
        "nodes": [{"name": "node1", "index": 1, "netns": "n", "rundir": "r", "address": "10.10.0.1",
                   "pod_cidr": "10.244.1.0/24", "gateway": "10.244.1.254"}],
        "pods": {"x/a": {"key": "x/a", "node": "node1", "netns": "p", "container_id": "c", "ip": "10.244.1.1",
                         "mac": "02:00:0a:f4:01:01"}}}))
    state = LabState.from_json(doc)
    assert state.ip_family == "4" and state.families == (4,)
    assert state.node("node1").pod_cidrs == ["10.244.1.0/24"] and state.node("node1").gateways == ["10.244.1.254"]
    assert state.pods["x/a"].ips == ["10.244.1.1"] and state.pods["x/a"].ip_of(6) is None


def test_probe_in_a_family_the_lab_lacks_and_external_on_ipv6_are_refused(tmp_path: Path) -> None:
    new_state(tmp_path / "v6", 2, "vxlan", [], "controller", "6").save()
    with pytest.raises(LabError, match=r"--family 4: this lab's pods have no IPv4 address, only IPv6 "
                                       r"\(it was brought up with --ip-family 6\)"):
        Lab(tmp_path / "v6").probe("TCP", 80, family=4)
    with pytest.raises(LabError, match=r"--external 172\.17\.0\.10: the external host takes IPv4 addresses"):
        Lab(tmp_path / "up").up([], 2, external=["172.17.0.10"], ip_family="6")
    with pytest.raises(LabError, match="--ip-family 5: must be one of 4, 6, dual"):
        Lab(tmp_path / "up").up([], 2, ip_family="5")
    assert not (tmp_path / "up").exists(), "refused before anything was made"
