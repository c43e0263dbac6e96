"""sdn-netpol-cni with IPv6 (issue 15, part 2): dual-stack and IPv6-only pods through the real
`host-local` with the ranges `sdn-netpol node install-cni` writes for a Node's podCIDRs, and
what a node or pod without IPv6 gets instead: a CNI error naming the cause, nothing left.

Real parts only: a node netns with its own OVS (tests/cni_fixtures.py), pod netns, the
plugin run as a runtime runs it, Debian's /usr/lib/cni/host-local.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netaddr import EUI, IPNetwork

from sdn_netpol.compiler.topology import link_local
from sdn_netpol.node import cni_install
from tests.cni_fixtures import Node, allocations, host_end, node_with_ovs, plugin_config, run_ip

V4, V6 = "10.244.1.0/24", "fd00:10:244:1::/64"
V4_GW, V6_GW = "10.244.1.254", "fd00:10:244:1:ffff:ffff:ffff:fffe"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with node_with_ovs(tmp_path_factory.mktemp("ovs")) as made:
        yield made


def conf_for(node: Node, data_dir: Path, *cidrs: str) -> dict[str, Any]:
    """The plugin entry `node install-cni` writes for a Node with these podCIDRs."""
    listed = cni_install.conflist(cni_install.parse_pod_cidrs("n1", list(cidrs)), "br-int", "unix:x", 1450)
    conf = plugin_config(node.ovs.db_sock, data_dir, ipam=listed["plugins"][0]["ipam"])
    conf["ipam"]["dataDir"] = str(data_dir)
    return conf


@pytest.fixture
def pod(node: Node) -> Iterator[str]:
    name = node.new_pod_netns()
    yield name
    node.delete_pod_netns(name)
    node.pods.remove(name)


def sysctl(netns: str, setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", setting], check=True)


def add(node: Node, conf: dict[str, Any], pod: str, **kw: Any) -> dict[str, Any]:
    run = node.cni("ADD", conf, container_id=f"c-{pod}", netns=pod,
                   args=f"K8S_POD_NAMESPACE=x;K8S_POD_NAME={pod}", **kw)
    assert run.rc == 0, run.stdout + run.stderr
    doc: dict[str, Any] = run.doc
    return doc


def delete(node: Node, conf: dict[str, Any], pod: str) -> None:
    assert node.cni("DEL", conf, container_id=f"c-{pod}", netns=pod).rc == 0


def addresses(pod: str) -> list[dict[str, Any]]:
    out = json.loads(run_ip("-n", pod, "-j", "addr", "show", "eth0"))
    return list(out[0]["addr_info"])


def cni_error(run: Any, code: int) -> dict[str, Any]:
    assert run.rc == 1 and "Traceback" not in run.stdout + run.stderr, run.stdout + run.stderr
    doc: dict[str, Any] = json.loads(run.stdout)
    assert doc["code"] == code, doc
    return doc


def nothing_left(node: Node, data_dir: Path, pod: str) -> None:
    assert not any(link.startswith("veth") for link in node.links())
    assert node.ports() == set()
    assert allocations(data_dir) == {}
    assert [line.split(":")[1].strip() for line in run_ip("-n", pod, "-o", "link", "show").splitlines()] == ["lo"]


# ---------------------------------------------------------------------------- pods


def test_install_cni_gives_a_dual_stack_node_one_range_per_family() -> None:
    """A Node with two podCIDRs gets two host-local range sets (one address of each family per
    pod), each gateway the second-to-last address; two CIDRs of one family are refused."""
    ipam = cni_install.conflist(cni_install.parse_pod_cidrs("n1", [V4, V6]), "br-int", "unix:x", 1450)
    assert ipam["plugins"][0]["ipam"]["ranges"] == [
        [{"subnet": V4, "rangeEnd": "10.244.1.253", "gateway": V4_GW}],
        [{"subnet": V6, "rangeEnd": "fd00:10:244:1:ffff:ffff:ffff:fffd", "gateway": V6_GW}]]
    with pytest.raises(cni_install.InstallError, match=r"spec\.podCIDRs\[1\]: fd00::/64 is a second IPv6 pod CIDR"):
        cni_install.parse_pod_cidrs("n1", ["fd00:10:244:1::/64", "fd00::/64"])


def test_a_dual_stack_pod_gets_both_addresses_both_default_routes_and_no_tentative_address(
        node: Node, pod: str, tmp_path: Path) -> None:
    """The CNI 1.0 result lists both addresses with their gateways and a default route per
    family; in the pod both addresses and the link-local (fe80:: + EUI-64 of the MAC, the one
    the pipeline's spoofguard derives) are usable at once: none is tentative (no DAD), and
    the kernel made none of its own. OVSDB's pod-ip names both addresses."""
    conf = conf_for(node, tmp_path / "ipam", V4, V6)
    res = add(node, conf, pod)
    v4, v6 = (ipaddress.ip_interface(ip["address"]) for ip in res["ips"])
    assert (v4 in ipaddress.ip_network(V4), v6 in ipaddress.ip_network(V6)) == (True, True)
    assert [ip["gateway"] for ip in res["ips"]] == [V4_GW, V6_GW]
    assert {"dst": "0.0.0.0/0", "gw": V4_GW} in res["routes"] and {"dst": "::/0", "gw": V6_GW} in res["routes"]
    mac = res["interfaces"][1]["mac"]
    assert mac == "02:00:" + ":".join(f"{b:02x}" for b in v4.ip.packed)
    found = {(a["local"], a["prefixlen"]): a for a in addresses(pod)}
    lladdr = str(link_local(EUI(mac)))
    assert set(found) == {(str(v4.ip), 24), (str(v6.ip), 64), (lladdr, 64)}
    assert not [a for a in found.values() if a.get("tentative") or a.get("dadfailed")], found
    assert f"default via {V6_GW} dev eth0" in run_ip("-n", pod, "-6", "route")
    ids = node.external_ids(host_end(f"c-{pod}"))
    assert ids["pod-ip"] == f"{v4.ip},{v6.ip}" and ids["pod-mac"] == mac
    assert node.cni("CHECK", {**conf, "prevResult": res}, container_id=f"c-{pod}", netns=pod).rc == 0
    delete(node, conf, pod)
    nothing_left(node, tmp_path / "ipam", pod)


def test_an_ipv6_only_pod_gets_its_address_a_default_route_and_a_mac_of_its_own(
        node: Node, pod: str, tmp_path: Path) -> None:
    conf = conf_for(node, tmp_path / "ipam", V6)
    res = add(node, conf, pod)
    (only,) = res["ips"]
    assert ipaddress.ip_interface(only["address"]).version == 6 and only["gateway"] == V6_GW
    assert res["routes"] == [{"dst": "::/0", "gw": V6_GW}]
    mac = res["interfaces"][1]["mac"]
    assert int(mac.split(":")[0], 16) & 0x03 == 0x02  # locally administered, unicast
    assert {a["local"] for a in addresses(pod)} == {only["address"].split("/")[0], str(link_local(EUI(mac)))}
    assert node.external_ids(host_end(f"c-{pod}"))["pod-ip"] == only["address"].split("/")[0]
    delete(node, conf, pod)
    nothing_left(node, tmp_path / "ipam", pod)


# ---------------------------------------------------------------------------- bad input


def test_an_ipv6_range_on_a_node_without_ipv6_is_a_cni_error_and_leaves_nothing(
        node: Node, pod: str, tmp_path: Path) -> None:
    conf = conf_for(node, tmp_path / "ipam", V4, V6)
    sysctl(node.name, "net.ipv6.conf.all.disable_ipv6=1")
    try:
        doc = cni_error(node.cni("ADD", conf, container_id="c1", netns=pod), 7)
    finally:
        sysctl(node.name, "net.ipv6.conf.all.disable_ipv6=0")
    assert doc["msg"] == f"IPv6 range ipam.ranges[1][0].subnet {V6} on a node without IPv6", doc
    assert "net.ipv6.conf.all.disable_ipv6=1" in doc["details"]
    nothing_left(node, tmp_path / "ipam", pod)
    assert not (tmp_path / "ipam").exists()  # host-local never ran


def test_an_ipv6_range_for_a_pod_namespace_without_ipv6_is_a_cni_error_and_leaves_nothing(
        node: Node, pod: str, tmp_path: Path) -> None:
    conf = conf_for(node, tmp_path / "ipam", V6)
    sysctl(pod, "net.ipv6.conf.default.disable_ipv6=1")
    doc = cni_error(node.cni("ADD", conf, container_id="c1", netns=pod), 7)
    assert doc["msg"] == "IPv6 range on a pod whose network namespace has no IPv6", doc
    assert "net.ipv6.conf.default.disable_ipv6=1" in doc["details"]
    nothing_left(node, tmp_path / "ipam", pod)


@pytest.mark.parametrize("second", ["10.244.1.128/25", "10.244.0.0/16"])
def test_overlapping_ranges_are_a_cni_error_and_leave_nothing(
        node: Node, pod: str, tmp_path: Path, second: str) -> None:
    conf = conf_for(node, tmp_path / "ipam", V4, V6)
    conf["ipam"]["ranges"].append([{"subnet": second}])
    doc = cni_error(node.cni("ADD", conf, container_id="c1", netns=pod), 7)
    assert doc["msg"] == f"IPAM ranges overlap: ipam.ranges[2][0].subnet {IPNetwork(second)} and " \
                         f"ipam.ranges[0][0].subnet {V4}", doc
    nothing_left(node, tmp_path / "ipam", pod)
    assert not (tmp_path / "ipam").exists()


@pytest.mark.parametrize("how", ["runtimeConfig", "CNI_ARGS"])
def test_a_pod_asking_for_a_family_the_node_lacks_is_a_cni_error_and_leaves_nothing(
        node: Node, pod: str, tmp_path: Path, how: str) -> None:
    conf = conf_for(node, tmp_path / "ipam", V4)
    wanted = "fd00:10:244:1::9"
    if how == "runtimeConfig":
        conf["runtimeConfig"] = {"ips": [f"{wanted}/64"]}
        run = node.cni("ADD", conf, container_id="c1", netns=pod)
        where = "runtimeConfig.ips"
    else:
        run = node.cni("ADD", conf, container_id="c1", netns=pod, args=f"IgnoreUnknown=1;IP={wanted}")
        where = "CNI_ARGS IP"
    doc = cni_error(run, 7)
    assert doc["msg"] == f"the pod asks for IPv6 address {wanted} ({where}), but this node has no IPv6 range", doc
    assert doc["details"] == f"the node's ranges: {V4}"
    nothing_left(node, tmp_path / "ipam", pod)
