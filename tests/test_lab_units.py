"""The lab's pure parts: placement, names, the manifests folder, SCTP packets, report shape.

No namespaces or switches here: these are the rules the real-packet tests rely on.
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
from netaddr import IPAddress

from sdn_netpol.lab import cleanup, hostlimits, sctp
from sdn_netpol.lab.lab import ProbeReport
from sdn_netpol.lab.pods import cni_config, place, served_ports
from sdn_netpol.lab.state import LabState, lab_prefix, new_state
from sdn_netpol.lab.store import LabError, ObjectRef, Store, read_objects, ref_of, with_pod_status
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import ContainerPort, Pod
from sdn_netpol.policy.matrix import Matrix


def pod(name: str, ns: str = "x", ip: str | None = None, node: str | None = None) -> Pod:
    return Pod(ns, name, Labels(), (IPAddress(ip),) if ip else (), node, ports=(ContainerPort("web", 80),))


@pytest.fixture
def state(tmp_path: Path) -> LabState:
    return new_state(tmp_path / "lab", 3, "vxlan", [], "controller")


# ------------------------------------------------------------------ placement


def test_spread_by_sorted_name_round_robin(state: LabState) -> None:
    pods = [pod(n, ns) for ns in "yx" for n in "cba"]
    placed = {f"{p.pod.namespace}/{p.pod.name}": p.node for p in place(pods, state.nodes)}
    assert placed == {"x/a": "node1", "x/b": "node2", "x/c": "node3",
                      "y/a": "node1", "y/b": "node2", "y/c": "node3"}


def test_pod_ip_selects_the_node_whose_cidr_holds_it(state: LabState) -> None:
    placed = place([pod("a", ip="10.244.3.7", node="node1")], state.nodes)
    assert (placed[0].node, placed[0].ip) == ("node3", "10.244.3.7")


def test_node_name_is_honoured_when_it_names_a_lab_node(state: LabState) -> None:
    placed = place([pod("a", node="node2"), pod("b", node="elsewhere")], state.nodes)
    assert [(p.pod.name, p.node) for p in placed] == [("a", "node2"), ("b", "node1")]


def test_spread_fills_the_least_loaded_node(state: LabState) -> None:
    placed = place([pod("new")], state.nodes, {"node1": 3, "node2": 1, "node3": 2})
    assert placed[0].node == "node2"


def test_pod_ip_outside_every_node_cidr_is_refused(state: LabState) -> None:
    with pytest.raises(LabError, match=r"x/a: status.podIP 10.9.0.1 is in no node's pod CIDR"):
        place([pod("a", ip="10.9.0.1")], state.nodes)


def test_static_ip_goes_to_host_local_through_runtime_config(state: LabState) -> None:
    conf = cni_config(state.nodes[1], "10.244.2.9")
    assert conf["runtimeConfig"] == {"ips": ["10.244.2.9/24"]}
    assert conf["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24", "rangeEnd": "10.244.2.253",
                                        "gateway": "10.244.2.254"}]]
    assert conf["mtu"] == 1450
    assert conf["ovsdb"] == f"unix:{state.nodes[1].rundir}/db.sock"
    assert "runtimeConfig" not in cni_config(state.nodes[1], None)


def test_served_ports_are_every_container_port() -> None:
    p = Pod("x", "a", Labels(), ports=(ContainerPort("s", 81, "UDP"), ContainerPort(None, 80), ContainerPort("t", 80)))
    assert served_ports(p) == [("TCP", 80), ("UDP", 81)]


def test_arp_table_need_counts_same_node_peers() -> None:
    assert hostlimits.needed_entries(["node1"] * 20 + ["node2"] * 20) == 800
    assert hostlimits.needed_entries(["node1", "node2", "node3"] * 3) == 27


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A /proc/sys of files and a host record of this test's own."""
    root = tmp_path / "sys"
    keys = (*hostlimits.NEIGH_KEYS, *hostlimits.NEIGH6_KEYS)
    for key, value in {**dict.fromkeys(keys, 1024), hostlimits.RMEM_DEFAULT: 212992}.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(f"{value}\n")
    for family in ("ipv4", "ipv6"):
        (root / f"net/{family}/neigh/default/gc_thresh1").write_text("128\n")
        (root / f"net/{family}/neigh/default/gc_thresh2").write_text("512\n")
    monkeypatch.setattr(hostlimits, "SYSCTL", root)
    monkeypatch.setattr(hostlimits, "RECORD", tmp_path / "run" / "host-sysctls.json")
    return tmp_path


def rmem() -> int:
    return hostlimits.read([hostlimits.RMEM_DEFAULT])[hostlimits.RMEM_DEFAULT]


def test_a_small_lab_leaves_the_host_arp_limits_alone(host: Path) -> None:
    before = hostlimits.read(hostlimits.NEIGH_KEYS)
    hostlimits.ensure_capacity(host / "a", ["node1", "node2", "node3"] * 3)
    assert before == hostlimits.read(hostlimits.NEIGH_KEYS)
    assert hostlimits.originals() == {}


def test_a_big_lab_raises_the_arp_and_ndp_limits_and_the_last_lab_down_restores_them(host: Path) -> None:
    hostlimits.ensure_capacity(host / "a", ["node1"] * 40)
    for keys in (hostlimits.NEIGH_KEYS, hostlimits.NEIGH6_KEYS):
        assert hostlimits.read(keys) == dict(zip(keys, (800, 3200, 6400), strict=True))
    assert hostlimits.release(host / "a", alive=lambda _lab: True) == {
        key: value for keys in (hostlimits.NEIGH_KEYS, hostlimits.NEIGH6_KEYS)
        for key, value in zip(keys, (128, 512, 1024), strict=True)}
    assert hostlimits.read(hostlimits.NEIGH6_KEYS)["net/ipv6/neigh/default/gc_thresh3"] == 1024


def test_a_lab_going_down_leaves_the_buffers_raised_while_another_lab_relies_on_them(host: Path) -> None:
    hostlimits.ensure_receive_buffers(host / "a")
    hostlimits.ensure_receive_buffers(host / "b")  # found them raised already
    assert hostlimits.release(host / "a", alive=lambda _lab: True) == {}
    assert rmem() == hostlimits.RECEIVE_BUFFER, "b's ports still need them"
    assert hostlimits.release(host / "b", alive=lambda _lab: True) == {hostlimits.RMEM_DEFAULT: 212992}
    assert rmem() == 212992, "the last lab out restores what the host had, though it raised nothing itself"
    assert hostlimits.originals() == {}


def test_a_lab_that_is_gone_without_down_does_not_keep_the_host_raised(host: Path) -> None:
    hostlimits.ensure_receive_buffers(host / "crashed")
    hostlimits.ensure_receive_buffers(host / "b")
    assert hostlimits.release(host / "b", alive=lambda lab: lab.name != "crashed") == {
        hostlimits.RMEM_DEFAULT: 212992}
    assert rmem() == 212992


def test_the_first_original_is_the_one_restored(host: Path) -> None:
    hostlimits.ensure_receive_buffers(host / "a")
    (host / "sys" / hostlimits.RMEM_DEFAULT).write_text(f"{8 << 20}\n")  # someone raised it further
    hostlimits.ensure_receive_buffers(host / "b")
    assert hostlimits.originals() == {hostlimits.RMEM_DEFAULT: 212992}


# ------------------------------------------------------------------ names and state


def test_every_name_carries_the_lab_prefix(state: LabState, tmp_path: Path) -> None:
    prefix = lab_prefix(tmp_path / "lab")
    assert prefix.startswith("sdnlab-") and prefix != "sdnlab-"
    assert lab_prefix(Path("/tmp/sdn-netpol-lab")) == "sdnlab-"
    assert lab_prefix(tmp_path / "other") != prefix
    names = [state.underlay_netns, state.external_netns, state.pod_netns("x/a.b"),
             *(n.netns for n in state.nodes)]
    assert all(n.startswith(prefix) for n in names)
    assert state.pod_netns("x-y/z") != state.pod_netns("x/y-z")


def test_state_round_trips_through_disk(state: LabState) -> None:
    state.nodes[0].controller_pid = 42
    state.save()
    loaded = LabState.load(Path(state.workdir))
    assert loaded == state


# ------------------------------------------------------------------ manifests folder


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return path


def test_read_objects_validates_all_or_nothing(tmp_path: Path) -> None:
    bad = write(tmp_path, """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]
""")
    with pytest.raises(LabError, match="is not within"):
        read_objects([bad])


def test_read_objects_refuses_kinds_the_lab_owns(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="'Node' cannot be applied"):
        read_objects([write(tmp_path, "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n")])


def test_lists_are_flattened_and_namespace_defaults(tmp_path: Path) -> None:
    objs = read_objects([write(tmp_path, """
kind: PodList
apiVersion: v1
items: [{apiVersion: v1, metadata: {name: a}}]
""")])
    assert [ref_of(o) for o in objs] == [ObjectRef("Pod", "default", "a")]
    assert objs[0]["metadata"]["namespace"] == "default"


def test_store_writes_one_file_per_object(tmp_path: Path) -> None:
    store = Store(tmp_path / "m")
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}}}
    store.write(with_pod_status(body, "node2", "10.244.2.3"))
    store.write({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["namespace-x.yaml", "pod-x.a.yaml"]
    parsed = store.parse()
    assert [(p.name, p.node_name, [str(i) for i in p.ips]) for p in parsed.pods] == [("a", "node2", ["10.244.2.3"])]
    assert store.remove(ObjectRef("Pod", "x", "a")) and not store.remove(ObjectRef("Pod", "x", "a"))
    assert body.get("status") is None, "the caller's manifest is not modified"


# ------------------------------------------------------------------ SCTP in user space


def test_crc32c_known_answer() -> None:
    assert sctp.crc32c(b"123456789") == 0xE3069283


def test_init_is_answered_with_init_ack_carrying_the_peer_tag() -> None:
    init = sctp.parse_sctp("10.244.1.1", sctp.init(40000, 80, 0xABCD))
    assert init is not None and init.tag == 0 and init.first(sctp.INIT) is not None
    reply = sctp.parse_sctp("10.244.2.1", sctp.reply_to(init, frozenset({80})) or b"")
    assert reply is not None
    assert (reply.sport, reply.dport, reply.tag) == (80, 40000, 0xABCD)
    ack = reply.first(sctp.INIT_ACK)
    assert ack is not None and sctp.init_tag(ack.value) == 0xABCD
    assert struct.pack("!H", sctp.STATE_COOKIE) in ack.value


def test_checksum_is_valid_on_every_built_packet() -> None:
    raw = sctp.init(1, 2, 3)
    zeroed = raw[:8] + b"\0\0\0\0" + raw[12:]
    assert struct.unpack("<I", raw[8:12])[0] == sctp.crc32c(zeroed)


def test_init_to_an_unserved_port_is_aborted() -> None:
    init = sctp.parse_sctp("10.0.0.1", sctp.init(40000, 81, 7))
    assert init is not None
    reply = sctp.parse_sctp("10.0.0.2", sctp.reply_to(init, frozenset({80})) or b"")
    assert reply is not None and reply.tag == 7
    abort = reply.first(sctp.ABORT)
    assert abort is not None and abort.flags & sctp.FLAG_T


def test_client_chunks_are_ignored_by_the_server() -> None:
    ack = sctp.parse_sctp("10.0.0.1", sctp.init_ack(80, 40000, 1, 1, b"c"))
    assert ack is not None and sctp.reply_to(ack, frozenset({40000, 80})) is None


def test_parse_ip_rejects_non_sctp() -> None:
    header = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2])
    assert sctp.parse_ip(header + b"\0" * 20) is None


# ------------------------------------------------------------------ report contract


def test_probe_json_is_the_matrix_shape_plus_expected_and_mismatches() -> None:
    pods = ("x/a", "x/b")
    measured = Matrix("TCP", 80, pods, {"x/a": {"x/a": True, "x/b": True}, "x/b": {"x/a": True, "x/b": True}})
    expected = Matrix("TCP", 80, pods, {"x/a": {"x/a": True, "x/b": False}, "x/b": {"x/a": True, "x/b": True}})
    doc = ProbeReport(measured, expected, measured.differences(expected), 0.1).to_json()
    assert list(doc) == ["protocol", "port", "pods", "allowed", "expected", "mismatches"]
    assert doc["protocol"] == "TCP" and doc["port"] == 80 and doc["pods"] == ["x/a", "x/b"]
    assert doc["expected"]["x/a"]["x/b"] is False and doc["allowed"]["x/a"]["x/b"] is True
    assert doc["mismatches"] == [["x/a", "x/b"]]


def test_another_lab_counts_while_its_state_file_exists_even_one_this_code_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"nodes": [{"name": "node1", "a-field-of-a-newer-version": 1}]}')
    assert cleanup._has_state(tmp_path)
    assert not cleanup._has_state(tmp_path / "gone")
