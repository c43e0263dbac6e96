"""sdn-netpol-cni against real namespaces, a private OVS (userspace datapath) and host-local.

Runs as root. The plugin is always a subprocess started the way a runtime starts it,
inside a node netns (`ip netns exec NODE sdn-netpol-cni`) as the lab does.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sdn_netpol.ovs.instance import daemon_pids
from tests.cni_fixtures import (
    CLIENT,
    SERVER,
    CniRun,
    Node,
    allocations,
    host_end,
    node_with_ovs,
    plugin_config,
    run_ip,
    shipped_conflist,
    wait_gone,
)

POD_ARGS = "K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-{n}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with node_with_ovs(tmp_path_factory.mktemp("cni-ovs")) as made:
        yield made


@pytest.fixture
def conf(node: Node, tmp_path: Path) -> dict[str, Any]:
    return plugin_config(node.ovs.db_sock, tmp_path / "ipam")


@pytest.fixture
def data_dir(conf: dict[str, Any]) -> Path:
    return Path(conf["ipam"]["dataDir"])


class Pod:
    """A pod netns plus the container id the runtime would use for it."""

    def __init__(self, node: Node, n: int) -> None:
        self.node = node
        self.netns = node.new_pod_netns()
        self.cid = f"ctr{os.getpid()}x{self.netns.rsplit('-', 1)[1]}"
        self.args = POD_ARGS.format(n=n)
        self.host = host_end(self.cid)

    def cni(self, command: str, conf: dict[str, Any] | bytes, **kw: Any) -> CniRun:
        kw.setdefault("args", self.args)
        return self.node.cni(command, conf, container_id=self.cid, netns=self.netns, **kw)

    def add(self, conf: dict[str, Any], **kw: Any) -> dict[str, Any]:
        run = self.cni("ADD", conf, **kw)
        assert run.rc == 0, run.stdout + run.stderr
        doc: dict[str, Any] = run.doc
        return doc

    def sh(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True,
                              text=True, check=False, timeout=30)
        assert not check or proc.returncode == 0, proc.stderr
        return proc.stdout


@pytest.fixture
def pods(node: Node) -> Iterator[Any]:
    made: list[Pod] = []

    class Factory:
        def new(self) -> Pod:
            pod = Pod(node, len(made))
            made.append(pod)
            return pod

    yield Factory()
    for pod in made:  # a failing test must not leave ports/veths to the next one
        node.ovs.vsctl("--if-exists", "del-port", pod.host)
        run_ip("-n", node.name, "link", "del", pod.host, check=False)
        node.delete_pod_netns(pod.netns)


def assert_error(run: CniRun, code: int) -> dict[str, Any]:
    """The spec's error object on stdout, exit != 0, and no traceback anywhere."""
    assert run.rc != 0
    doc: dict[str, Any] = json.loads(run.stdout)
    assert doc["code"] == code, doc
    assert doc["cniVersion"] and isinstance(doc["msg"], str) and doc["msg"]
    assert "Traceback" not in run.stdout + run.stderr
    return doc


def assert_nothing_left(node: Node, pod: Pod, data_dir: Path) -> None:
    assert pod.host not in node.links()
    assert pod.host not in node.ports()
    assert pod.cid not in allocations(data_dir).values()
    assert "eth0" not in pod.sh("ip", "-o", "link")


# ------------------------------------------------------------------------------ tests


def test_version(node: Node) -> None:
    run = node.cni("VERSION", b'{"cniVersion":"1.0.0"}')
    assert run.rc == 0, run.stderr
    assert run.doc["cniVersion"] == "1.0.0"
    assert "1.0.0" in run.doc["supportedVersions"]
    assert run.stderr == ""


def test_shipped_conflist() -> None:
    conflist = shipped_conflist()
    assert conflist["cniVersion"] == "1.0.0"
    plugin = conflist["plugins"][0]
    assert plugin["type"] == "sdn-netpol-cni"
    assert plugin["capabilities"] == {"ips": True}
    rng = plugin["ipam"]["ranges"][0][0]
    assert plugin["ipam"]["type"] == "host-local"
    assert (rng["subnet"], rng["gateway"], rng["rangeEnd"]) == \
        ("10.244.1.0/24", "10.244.1.254", "10.244.1.253")


def test_add_check_del(node: Node, conf: dict[str, Any], data_dir: Path, pods: Any) -> None:
    pod = pods.new()
    run = pod.cni("ADD", conf)
    assert run.rc == 0, run.stdout + run.stderr
    res = run.doc
    print(f"ADD latency {run.seconds * 1000:.0f} ms")

    # result: spec 1.0.0 shape, values
    assert res["cniVersion"] == "1.0.0"
    host, pod_if = res["interfaces"]
    assert host["name"] == pod.host and len(pod.host) <= 15 and "sandbox" not in host
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", host["mac"])
    assert pod_if == {"name": "eth0", "mac": pod_if["mac"], "sandbox": f"/var/run/netns/{pod.netns}"}
    [ip] = res["ips"]
    addr = ipaddress.ip_interface(ip["address"])
    assert addr in ipaddress.ip_network("10.244.1.0/24") or addr.network.prefixlen == 24
    assert ip["gateway"] == "10.244.1.254" and ip["interface"] == 1 and "version" not in ip
    assert pod_if["mac"] == "02:00:" + ":".join(f"{b:02x}" for b in addr.ip.packed)
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.244.1.254"}]
    assert isinstance(res["dns"], dict)
    assert allocations(data_dir) == {str(addr.ip): pod.cid}

    # inside the pod
    link = json.loads(pod.sh("ip", "-j", "-d", "addr", "show", "eth0"))[0]
    assert link["address"] == pod_if["mac"] and link["mtu"] == 1450
    assert "UP" in link["flags"]
    v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [(str(addr.ip), 24)]
    assert "default via 10.244.1.254 dev eth0" in pod.sh("ip", "route")
    assert "UP" in json.loads(pod.sh("ip", "-j", "link", "show", "lo"))[0]["flags"]
    features = pod.sh("ethtool", "-k", "eth0")
    assert re.search(r"^tx-checksumming: off", features, re.M)
    assert re.search(r"tx-checksum-ip-generic: off", features)

    # host end in the node netns, on br-int with the pod's identity
    hlink = json.loads(run_ip("-n", node.name, "-j", "link", "show", pod.host))[0]
    assert hlink["mtu"] == 1450 and "UP" in hlink["flags"] and hlink["address"] == host["mac"]
    assert pod.host in node.ports()
    assert node.external_ids(pod.host) == {
        "pod-namespace": "team-a", "pod-name": "web-0", "iface-id": "team-a/web-0",
        "pod-ip": str(addr.ip), "pod-mac": pod_if["mac"], "container-id": pod.cid,
    }
    assert int(node.iface(pod.host, "ofport")) > 0

    # CHECK with the prevResult the runtime keeps
    check = pod.cni("CHECK", {**conf, "prevResult": res})
    assert check.rc == 0 and check.stdout == "", check.stdout + check.stderr

    # DEL removes everything; a second DEL is fine
    first = pod.cni("DEL", {**conf, "prevResult": res})
    assert first.rc == 0 and first.stdout == "", first.stdout + first.stderr
    print(f"DEL latency {first.seconds * 1000:.0f} ms")
    assert_nothing_left(node, pod, data_dir)
    again = pod.cni("DEL", conf)
    assert again.rc == 0, again.stdout + again.stderr


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_two_pods_exchange_packets(node: Node, conf: dict[str, Any], pods: Any,
                                   proto: str) -> None:
    """A TCP/UDP round trip through br-int with two plain L2 flows (ARP included). It only
    works with tx checksum offload off in the pods (userspace datapath, LAB-NOTES)."""
    a, b = pods.new(), pods.new()
    a.add(conf)
    ip_b = b.add(conf)["ips"][0]["address"].split("/")[0]
    pa, pb = node.iface(a.host, "ofport"), node.iface(b.host, "ofport")
    node.ovs.add_flows("br-int", f"in_port={pa} actions=output:{pb}\n"
                                 f"in_port={pb} actions=output:{pa}\n")
    try:
        server = subprocess.Popen(["ip", "netns", "exec", b.netns, "python3", "-c", SERVER,
                                   proto, ip_b], stdout=subprocess.PIPE, text=True)
        out = a.sh("python3", "-c", CLIENT, proto, ip_b)
        server.wait(timeout=10)
        assert out.strip() == "HELLO"
    finally:
        node.ovs.ofctl("del-flows", "br-int")


def test_del_after_netns_is_gone(node: Node, conf: dict[str, Any], data_dir: Path,
                                 pods: Any) -> None:
    pod = pods.new()
    pod.add(conf)
    node.delete_pod_netns(pod.netns)
    run = pod.cni("DEL", conf)
    assert run.rc == 0, run.stdout + run.stderr
    assert pod.host not in node.links() and pod.host not in node.ports()
    assert pod.cid not in allocations(data_dir).values()
    # a runtime may also omit CNI_NETNS once the namespace is gone
    run = node.cni("DEL", conf, container_id=pod.cid, netns="", args=pod.args)
    assert run.rc == 0, run.stdout + run.stderr


def test_del_of_unknown_container_succeeds(node: Node, conf: dict[str, Any], pods: Any) -> None:
    pod = pods.new()
    run = pod.cni("DEL", conf)
    assert run.rc == 0, run.stdout + run.stderr


BAD_CONFIGS: list[tuple[str, Any, int]] = [
    ("bad json", b'{"cniVersion": "1.0.0", "name": ', 6),
    ("not an object", b"[1, 2]", 6),
    ("missing ipam", {"drop": "ipam"}, 7),
    ("ipam without type", {"ipam": {"subnet": "10.244.1.0/24"}}, 7),
    ("unknown ipam plugin", {"ipam": {"type": "no-such-ipam"}}, 101),
    ("unsupported version", {"cniVersion": "9.9.9"}, 1),
    ("missing name", {"drop": "name"}, 7),
    ("bad mtu", {"mtu": "big"}, 7),
    ("ipam rejects its config", {"ipam": {"type": "host-local"}}, 101),
]


@pytest.mark.parametrize(("label", "change", "code"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_add_bad_config(node: Node, conf: dict[str, Any], data_dir: Path, pods: Any,
                        label: str, change: Any, code: int) -> None:
    pod = pods.new()
    if isinstance(change, bytes):
        body: dict[str, Any] | bytes = change
    else:
        body = dict(conf)
        if "drop" in change:
            body.pop(change["drop"])
        else:
            body.update(change)
    doc = assert_error(pod.cni("ADD", body), code)
    assert label and doc["msg"]
    assert_nothing_left(node, pod, data_dir)


@pytest.mark.parametrize(("missing", "env"), [
    ("CNI_COMMAND", {"CNI_COMMAND": "FROB"}),
    ("CNI_CONTAINERID", {"CNI_CONTAINERID": ""}),
    ("CNI_IFNAME", {"CNI_IFNAME": "name-much-too-long"}),
    ("CNI_NETNS", {"CNI_NETNS": "/var/run/netns/cnit-does-not-exist"}),
])
def test_add_bad_env(node: Node, conf: dict[str, Any], data_dir: Path, pods: Any,
                     missing: str, env: dict[str, str]) -> None:
    pod = pods.new()
    doc = assert_error(pod.cni("ADD", conf, env=env), 4)
    assert missing in doc["msg"]
    assert_nothing_left(node, pod, data_dir)


def test_add_rolls_back_when_bridge_is_missing(node: Node, conf: dict[str, Any],
                                               data_dir: Path, pods: Any) -> None:
    """Fails after IPAM, veth and pod setup: all of it must be undone."""
    pod = pods.new()
    doc = assert_error(pod.cni("ADD", {**conf, "bridge": "br-nope"}), 11)
    assert "br-nope" in doc["msg"]
    assert_nothing_left(node, pod, data_dir)
    assert (data_dir / "sdn-netpol").is_dir()  # IPAM did run, and released its address


def test_add_rolls_back_when_ovsdb_is_unreachable(node: Node, conf: dict[str, Any],
                                                  data_dir: Path, pods: Any,
                                                  tmp_path: Path) -> None:
    pod = pods.new()
    run = pod.cni("ADD", {**conf, "ovsdb": f"unix:{tmp_path}/nothing.sock", "ovsTimeout": 2})
    assert_error(run, 11)
    assert_nothing_left(node, pod, data_dir)


def test_add_rolls_back_the_port_it_added_even_when_ovsdb_is_slow(node: Node, conf: dict[str, Any],
                                                                 data_dir: Path, pods: Any) -> None:
    """ovs-vswitchd never opens the port (stopped), so ADD fails waiting for its ofport after
    the Port row was committed; ovsdb-server then stalls for longer than ovsTimeout. The
    rollback still removes the row: it waits up to ROLLBACK_OVS_TIMEOUT, not ovsTimeout."""
    pod = pods.new()
    vswitchd, = daemon_pids(node.ovs.rundir, "ovs-vswitchd")
    ovsdb, = daemon_pids(node.ovs.rundir, "ovsdb-server")
    stalled: list[float] = []

    def stall_ovsdb_once_the_port_is_committed() -> None:
        deadline = time.monotonic() + 30
        while pod.host not in node.ports() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(ovsdb, signal.SIGSTOP)
        stalled.append(time.monotonic())
        time.sleep(4.0)  # the ADD's ofport wait (2 s) runs out meanwhile, and its rollback begins
        os.kill(ovsdb, signal.SIGCONT)

    os.kill(vswitchd, signal.SIGSTOP)
    try:
        staller = threading.Thread(target=stall_ovsdb_once_the_port_is_committed)
        staller.start()
        doc = assert_error(pod.cni("ADD", {**conf, "ovsTimeout": 2}), 11)
        staller.join()
    finally:
        os.kill(ovsdb, signal.SIGCONT)
        os.kill(vswitchd, signal.SIGCONT)
    assert stalled and "ofport" in doc["details"] and "rollback" not in doc["details"], doc
    assert_nothing_left(node, pod, data_dir)


def test_add_rolls_back_when_ifname_is_taken(node: Node, conf: dict[str, Any],
                                             data_dir: Path, pods: Any) -> None:
    """Fails after IPAM, at veth creation: the address is released."""
    pod = pods.new()
    pod.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
    doc = assert_error(pod.cni("ADD", conf), 102)
    assert "eth0" in doc["details"]
    assert pod.host not in node.links() and pod.host not in node.ports()
    assert pod.cid not in allocations(data_dir).values()


def test_concurrent_adds(node: Node, conf: dict[str, Any], data_dir: Path, pods: Any) -> None:
    batch = [pods.new() for _ in range(10)]
    with ThreadPoolExecutor(len(batch)) as pool:
        runs = list(pool.map(lambda p: p.cni("ADD", conf), batch))
    assert all(r.rc == 0 for r in runs), [r.stdout for r in runs if r.rc]
    print("concurrent ADD latencies (ms):", sorted(round(r.seconds * 1000) for r in runs))
    addrs = {r.doc["ips"][0]["address"] for r in runs}
    assert len(addrs) == 10
    ofports = {node.iface(p.host, "ofport") for p in batch}
    assert len(ofports) == 10 and all(int(o) > 0 for o in ofports)
    assert {p.host for p in batch} <= node.ports()
    with ThreadPoolExecutor(len(batch)) as pool:
        dels = list(pool.map(lambda p: p.cni("DEL", conf), batch))
    assert all(r.rc == 0 for r in dels), [r.stdout for r in dels if r.rc]
    assert allocations(data_dir) == {}
    assert not {p.host for p in batch} & (node.ports() | node.links())


def test_static_ip_via_cni_args(node: Node, conf: dict[str, Any], data_dir: Path,
                                pods: Any) -> None:
    """IP= in CNI_ARGS next to the K8S_* keys (host-local alone would reject those)."""
    pod = pods.new()
    res = pod.add(conf, args=pod.args + ";IP=10.244.1.77")
    assert res["ips"][0]["address"] == "10.244.1.77/24"
    assert res["interfaces"][1]["mac"] == "02:00:0a:f4:01:4d"
    assert "10.244.1.77/24" in pod.sh("ip", "-o", "addr", "show", "eth0")
    assert allocations(data_dir) == {"10.244.1.77": pod.cid}
    assert node.external_ids(pod.host)["pod-ip"] == "10.244.1.77"
    assert pod.cni("DEL", conf).rc == 0


def test_static_ip_via_runtime_config(node: Node, conf: dict[str, Any], data_dir: Path,
                                      pods: Any) -> None:
    pod = pods.new()
    res = pod.add({**conf, "runtimeConfig": {"ips": ["10.244.1.88/24"]}})
    assert res["ips"][0]["address"] == "10.244.1.88/24"
    assert "10.244.1.88/24" in pod.sh("ip", "-o", "addr", "show", "eth0")
    assert allocations(data_dir) == {"10.244.1.88": pod.cid}
    assert pod.cni("DEL", conf).rc == 0


def test_check_fails_when_port_removed(node: Node, conf: dict[str, Any], pods: Any) -> None:
    pod = pods.new()
    res = pod.add(conf)
    with_prev = {**conf, "prevResult": res}
    assert pod.cni("CHECK", with_prev).rc == 0
    node.ovs.vsctl("del-port", "br-int", pod.host)
    doc = assert_error(pod.cni("CHECK", with_prev), 104)
    assert pod.host in doc["msg"]
    assert pod.cni("DEL", conf).rc == 0


def test_check_detects_wrong_address(node: Node, conf: dict[str, Any], pods: Any) -> None:
    pod = pods.new()
    res = pod.add(conf)
    pod.sh("ip", "addr", "flush", "dev", "eth0")
    assert_error(pod.cni("CHECK", {**conf, "prevResult": res}), 104)
    assert_error(pod.cni("CHECK", conf), 7)  # no prevResult
    assert pod.cni("DEL", conf).rc == 0


def test_older_cni_version_result(node: Node, conf: dict[str, Any], pods: Any) -> None:
    pod = pods.new()
    res = pod.add({**conf, "cniVersion": "0.4.0"})
    assert res["cniVersion"] == "0.4.0" and res["ips"][0]["version"] == "4"
    assert pod.cni("DEL", {**conf, "cniVersion": "0.4.0"}).rc == 0


def test_add_without_pod_args_and_stale_host_end(node: Node, conf: dict[str, Any],
                                                 pods: Any) -> None:
    """No K8S_* args: only container-id/pod-ip/pod-mac are written. A leftover host veth
    and port of an interrupted ADD (same deterministic name) are replaced."""
    pod = pods.new()
    run_ip("-n", node.name, "link", "add", pod.host, "type", "veth", "peer", "name", "stalepeer")
    node.ovs.vsctl("add-port", "br-int", pod.host)
    res = pod.add(conf, args="")
    ids = node.external_ids(pod.host)
    assert set(ids) == {"container-id", "pod-ip", "pod-mac"}
    assert ids["pod-mac"] == res["interfaces"][1]["mac"]
    assert int(node.iface(pod.host, "ofport")) > 0
    assert pod.cni("DEL", conf, args="").rc == 0
    assert wait_gone(lambda: pod.host not in node.links())


def test_dual_stack(node: Node, conf: dict[str, Any], data_dir: Path, pods: Any) -> None:
    """Two IPAM ranges: both addresses on eth0, a default route per family, both in
    external_ids:pod-ip (comma-separated); the MAC still comes from the IPv4 address."""
    v6 = {"subnet": "fd00:10:244:1::/64", "gateway": "fd00:10:244:1::fffe"}
    ipam = {**conf["ipam"], "ranges": [*conf["ipam"]["ranges"], [v6]]}
    pod = pods.new()
    res = pod.add({**conf, "ipam": ipam})
    v4addr, v6addr = (ipaddress.ip_interface(i["address"]) for i in res["ips"])
    assert v4addr.version == 4 and v6addr.version == 6
    assert res["ips"][1]["gateway"] == "fd00:10:244:1::fffe"
    assert {"dst": "::/0", "gw": "fd00:10:244:1::fffe"} in res["routes"]
    assert f"inet6 {v6addr}" in pod.sh("ip", "-o", "-6", "addr", "show", "eth0")
    assert "default via fd00:10:244:1::fffe dev eth0" in pod.sh("ip", "-6", "route")
    ids = node.external_ids(pod.host)
    assert ids["pod-ip"] == f"{v4addr.ip},{v6addr.ip}"
    assert ids["pod-mac"] == "02:00:" + ":".join(f"{b:02x}" for b in v4addr.ip.packed)
    assert pod.cni("CHECK", {**conf, "ipam": ipam, "prevResult": res}).rc == 0
    assert pod.cni("DEL", {**conf, "ipam": ipam}).rc == 0
    assert allocations(data_dir) == {}
