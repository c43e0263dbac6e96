"""The controller's pure parts: folder versions and loading, the store's last-valid rule,
Node parsing and pod placement, the pod-to-port join, the bytes of a bundle."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import EUI, IPAddress, IPNetwork
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn_netpol.compiler.diff import FlowDiff
from sdn_netpol.compiler.flow import Conjunction, Flow, GotoTable, Match
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.osken import to_flow_mod
from sdn_netpol.controller import portmap, wire
from sdn_netpol.controller.nodes import NodeInfo, parse_node, place_pods
from sdn_netpol.controller.portmap import Interface, NodeBindings, PortView, node_context
from sdn_netpol.controller.sources.directory import DirectorySource, folder_version, load, read_folder
from sdn_netpol.controller.sources.kube import Versions
from sdn_netpol.controller.store import Store
from sdn_netpol.model.objects import Pod, PodKey
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.state import ClusterState
from tests.controller_fixtures import namespace_manifest, node_manifest, pod_manifest, policy_manifest, write

# ---- folder version and loading ----------------------------------------------------------


def test_folder_version_is_the_documented_hash(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.yaml").write_bytes(b"kind: Namespace\n")
    (tmp_path / "sub" / "a.json").write_bytes(b"{}")
    (tmp_path / "notes.txt").write_bytes(b"not a manifest")
    digest = hashlib.sha256()
    for rel, data in [("b.yaml", b"kind: Namespace\n"), ("sub/a.json", b"{}")]:
        digest.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    assert folder_version(tmp_path) == "sha256:" + digest.hexdigest()


def test_folder_version_follows_content_and_names_not_times(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x: 1\n")
    first = folder_version(tmp_path)
    os.utime(tmp_path / "a.yaml", (1, 1))
    assert folder_version(tmp_path) == first
    (tmp_path / "a.yaml").write_text("x: 2\n")
    assert folder_version(tmp_path) != first
    (tmp_path / "a.yaml").write_text("x: 1\n")
    assert folder_version(tmp_path) == first
    (tmp_path / "a.yaml").rename(tmp_path / "b.yaml")
    assert folder_version(tmp_path) != first
    assert folder_version(tmp_path / "b.yaml") == folder_version(tmp_path)  # a file is a folder of one


def test_folder_means_what_matrix_f_means(tmp_path: Path) -> None:
    write(tmp_path / "1.yaml", namespace_manifest("x"), pod_manifest("x", "a", "10.0.0.1", app="web"),
          {"kind": "List", "items": [pod_manifest("x", "b", "10.0.0.2")]})
    write(tmp_path / "2.yaml", pod_manifest("x", "a", "10.0.0.1", app="db"),
          {**policy_manifest("x", "calico", "db", None), "apiVersion": "crd.projectcalico.org/v1"},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    loaded = load(str(tmp_path), read_folder(tmp_path), {})
    model = parse_documents(Document(str(p), d) for p in sorted(tmp_path.glob("*.yaml"))
                            for d in yaml.safe_load_all(p.read_text()))
    assert set(loaded.objects.values()) == {*model.namespaces, *model.pods, *model.policies}
    pod = loaded.objects[("Pod", "x", "a")]
    assert isinstance(pod, Pod) and pod.labels.get("app") == "db"  # later replaces earlier
    assert loaded.invalid == {}


def test_invalid_update_keeps_the_last_valid_version_across_reloads(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    write(tmp_path / "p.yaml", policy_manifest("x", "db", "db", {"app": "web"}))
    assert source.poll()
    valid = store.snapshot().state.policies
    broken = policy_manifest("x", "db", "db", {"app": "web"})
    broken["spec"]["ingress"][0]["ports"][0]["port"] = 70000
    write(tmp_path / "p.yaml", broken)
    assert source.poll()
    snap = store.snapshot()
    assert snap.state.policies == valid
    (entry,) = snap.invalid
    assert entry.key == ("NetworkPolicy", "x", "db") and entry.enforced
    assert entry.errors[0].path == "spec.ingress[0].ports[0].port"
    (tmp_path / "p.yaml").unlink()
    assert source.poll()
    assert store.snapshot().state.policies == () and store.snapshot().invalid == ()


def test_undecodable_file_keeps_what_it_last_decoded_to(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    write(tmp_path / "p.yaml", pod_manifest("x", "a", "10.0.0.1"))
    source.poll()
    (tmp_path / "p.yaml").write_text("kind: Pod\nmetadata: {name: [unclosed\n")
    assert source.poll()
    snap = store.snapshot()
    assert [p.name for p in snap.state.pods] == ["a"]
    assert "cannot decode" in snap.invalid[0].errors[0].message


def test_polling_notices_a_same_size_rewrite_within_one_mtime_tick(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    path = tmp_path / "n.yaml"
    path.write_text("kind: Namespace\nmetadata: {name: aa}\n")
    source.poll()
    stat = path.stat()
    path.write_text("kind: Namespace\nmetadata: {name: bb}\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only a re-read tells
    assert source.poll()
    assert [n.name for n in store.snapshot().state.namespaces] == ["bb"]


# ---- store ------------------------------------------------------------------------------


def test_store_generations_and_last_valid_rule() -> None:
    calls: list[int] = []
    store = Store(on_change=lambda: calls.append(1))
    key = ("Namespace", "", "x")
    from sdn_netpol.model.objects import Namespace

    store.put(key, Namespace.implied("x"), version="5")
    store.put(key, None, [], version="6")
    snap = store.snapshot()
    assert (snap.generation, snap.source_version, len(calls)) == (2, "6", 2)
    assert [n.name for n in snap.state.namespaces] == ["x"] and snap.invalid[0].enforced
    assert store.snapshot() is snap  # unchanged: the same snapshot (and its compiled state)
    store.replace(["Namespace"], {}, {key: []})  # a relist that still has only the bad version
    assert [n.name for n in store.snapshot().state.namespaces] == ["x"]
    store.delete(key)
    assert store.snapshot().state.namespaces == () and store.snapshot().invalid == ()
    assert not store.snapshot().synced
    store.mark_synced()
    assert store.snapshot().synced


# ---- nodes ------------------------------------------------------------------------------


def test_node_parsing_and_pod_placement() -> None:
    node, errors = parse_node(node_manifest("n2", "192.168.0.2", "10.244.2.0/24"))
    assert errors == [] and node == NodeInfo("n2", IPAddress("192.168.0.2"), (IPNetwork("10.244.2.0/24"),))
    _, errors = parse_node({"kind": "Node", "metadata": {"name": "n"}, "spec": {"podCIDR": "nope"}})
    assert [e.path for e in errors] == ["spec.podCIDR"]
    unplaced = [pod_manifest("x", "a", "10.244.2.9"), pod_manifest("x", "b", "10.9.9.9")]
    for doc in unplaced:
        del doc["spec"]["nodeName"]
    pods = parse_documents(Document(str(i), d) for i, d in enumerate(unplaced)).pods
    placed = {p.name: p.node_name for p in place_pods(pods, [node])}
    assert placed == {"a": "n2", "b": None}


# ---- the pod-to-port join -----------------------------------------------------------------


def test_ports_join_switch_ports_with_cni_external_ids() -> None:
    state = ClusterState.from_parse(parse_documents([
        Document("a", pod_manifest("x", "a", "10.244.1.2")), Document("b", pod_manifest("x", "b", "10.244.1.3")),
        Document("c", pod_manifest("x", "gone", "10.244.1.4", node="node-2")),
    ]))
    ids = {"iface-id": "x/a", "pod-ip": "10.244.1.2", "pod-mac": "02:00:0a:f4:01:02"}
    view = PortView(
        switch_ports={"p1": 1, "p2": 2, "p3": 3, "tun0": 100, "gw": 7},
        interfaces={
            "p1": Interface("p1", "", ids),
            "p2": Interface("p2", "", {"pod-namespace": "x", "pod-name": "b"}),  # no ip/mac: from the Pod
            "p3": Interface("p3", "", {"iface-id": "x/gone"}),  # the pod lives on another node now
            "p9": Interface("p9", "", {"iface-id": "x/a"}),  # not on the switch (yet)
            "tun0": Interface("tun0", "geneve", {}),
            "gw": Interface("gw", "internal", {"sdn-netpol-role": "gateway", "peer-mac": "aa:bb:cc:dd:ee:ff"}),
        },
        switch_known=True, interfaces_known=True)
    ctx = node_context("node-1", view, state, (NodeInfo("node-2", IPAddress("192.168.0.2")),))
    assert [(str(b.pod), b.ofport, str(b.ips[0])) for b in ctx.bindings] == [
        ("x/a", 1, "10.244.1.2"), ("x/b", 2, "10.244.1.3")]
    assert ctx.bindings[0].mac == EUI("02:00:0a:f4:01:02")
    assert (ctx.tunnel_port, ctx.gateway_port, ctx.gateway_peer_mac) == (100, 7, EUI("aa:bb:cc:dd:ee:ff"))
    assert ctx.node_addresses == (("node-2", IPAddress("192.168.0.2")),)
    assert ctx.local_pods == {PodKey("x", "a"), PodKey("x", "b")}


_POD_NAMES = ("a", "b", "c", "d")
# Every variant of every pod, parsed once: worlds built from them share the objects of the
# pods they did not change, as the store's snapshots do.
_POD_VARIANTS = {
    (name, node, app): pod
    for name in _POD_NAMES for node in ("node-1", "node-2") for app in ("web", "db")
    for pod in parse_documents([Document(name, pod_manifest(
        "x", name, f"10.244.1.{_POD_NAMES.index(name) + 2}", node=node, app=app))]).pods
}
_NAMESPACES = ClusterState.from_parse(parse_documents([Document("x", namespace_manifest("x"))])).namespaces


@st.composite
def _port_worlds(draw: st.DrawFn) -> tuple[PortView, ClusterState]:
    """A node's ports and the pods they may bind: pods come, go, move away or get relabelled;
    ports are renumbered, lose their pod-ip, or two claim one pod."""
    pods = [_POD_VARIANTS[(name, draw(st.sampled_from(["node-1", "node-1", "node-2"])),
                           draw(st.sampled_from(["web", "db"])))]
            for name in draw(st.lists(st.sampled_from(_POD_NAMES), unique=True))]
    state = ClusterState.build(_NAMESPACES, pods, [])
    ports, interfaces = {}, {}
    claims = draw(st.lists(st.sampled_from(_POD_NAMES), max_size=5))
    ofports = draw(st.lists(st.integers(1, 9), min_size=len(claims), max_size=len(claims), unique=True))
    for number, (name, ofport) in enumerate(zip(claims, ofports, strict=True)):
        port = f"p{number}"
        ids = {"iface-id": f"x/{name}"}
        if draw(st.booleans()):
            ids |= {"pod-ip": f"10.244.1.{number + 20}", "pod-mac": f"02:00:0a:f4:01:{number + 20:02x}"}
        interfaces[port] = Interface(port, "", ids)
        ports[port] = ofport
    if draw(st.booleans()):
        ports["tun0"], interfaces["tun0"] = 100, Interface("tun0", "vxlan", {})
    return PortView(switch_ports=ports, interfaces=interfaces, switch_known=True, interfaces_known=True), state


@settings(max_examples=300, deadline=None)
@given(st.lists(_port_worlds(), min_size=1, max_size=8))
def test_bindings_kept_across_realizations_equal_bindings_derived_afresh(
        worlds: list[tuple[PortView, ClusterState]]) -> None:
    bindings = NodeBindings("node-1")
    nodes = (NodeInfo("node-2", IPAddress("192.168.0.2")),)
    for view, state in [world for world in worlds for world in (world, world)]:  # each twice: nothing changed
        assert bindings.context(view, state, nodes) == node_context("node-1", view, state, nodes)


@st.composite
def _pod_changes(draw: st.DrawFn) -> dict[PodKey, Pod | None]:
    """One snapshot's pod changes: pods come, go, move to the other node or get relabelled."""
    changes: dict[PodKey, Pod | None] = {}
    for name in draw(st.lists(st.sampled_from(_POD_NAMES), min_size=1, max_size=2, unique=True)):
        variants = [(node, app) for node in ("node-1", "node-1", "node-2") for app in ("web", "db")]
        variant = draw(st.sampled_from([None, *variants]))
        changes[PodKey("x", name)] = None if variant is None else _POD_VARIANTS[(name, *variant)]
    return changes


@settings(max_examples=300, deadline=None)
@given(_port_worlds(), st.lists(st.tuples(_pod_changes(), st.booleans(), st.booleans()), min_size=1, max_size=8))
def test_bindings_of_patched_states_equal_bindings_derived_afresh(
        world: tuple[PortView, ClusterState], steps: list[tuple[dict[PodKey, Pod | None], bool, bool]]) -> None:
    """The controller's path: one port view across pod changes patched into each next state
    (only the ports naming changed pods are looked at), now and then a new view (every port
    is), now and then a state nobody bound (the next one is patched from that, not from the
    last one bound)."""
    view, state = world
    bindings = NodeBindings("node-1")
    nodes = (NodeInfo("node-2", IPAddress("192.168.0.2")),)
    assert bindings.context(view, state, nodes) == node_context("node-1", view, state, nodes)
    for changes, new_view, skipped in steps:
        state = state.with_changes(changes, {}, ())
        if new_view:
            view = PortView(switch_ports=dict(view.switch_ports), interfaces=dict(view.interfaces),
                            switch_known=True, interfaces_known=True)
        if skipped:
            continue
        assert bindings.context(view, state, nodes) == node_context("node-1", view, state, nodes)


def test_a_realization_with_no_port_or_pod_change_keeps_the_bindings_tuple() -> None:
    state = ClusterState.from_parse(parse_documents([Document("a", pod_manifest("x", "a", "10.244.1.2"))]))
    view = PortView(switch_ports={"p1": 1}, interfaces={"p1": Interface("p1", "", {"iface-id": "x/a"})},
                    switch_known=True, interfaces_known=True)
    bindings = NodeBindings("node-1")
    first = bindings.bindings(view, state)
    assert bindings.bindings(view, state) is first and [str(b.pod) for b in first] == ["x/a"]
    moved = PortView(switch_ports={"p1": 2}, interfaces=view.interfaces, switch_known=True, interfaces_known=True)
    assert [b.ofport for b in bindings.bindings(moved, state)] == [2]


def test_a_context_after_bindings_of_the_same_view_has_that_views_edges() -> None:
    view = PortView(switch_ports={"tun0": 100}, interfaces={"tun0": Interface("tun0", "vxlan", {})},
                    switch_known=True, interfaces_known=True)
    nodes = (NodeInfo("node-2", IPAddress("192.168.0.2")),)
    bindings = NodeBindings("node-1")
    bindings.bindings(view, ClusterState())
    assert bindings.context(view, ClusterState(), nodes).tunnel_port == 100


def test_a_derivation_that_raised_is_derived_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The realizer retries a realization that raised: its snapshot must not count as seen."""
    state = ClusterState.from_parse(parse_documents([Document("a", pod_manifest("x", "a", "10.244.1.2"))]))
    view = PortView(switch_ports={"p1": 1}, interfaces={"p1": Interface("p1", "", {"iface-id": "x/a"})},
                    switch_known=True, interfaces_known=True)
    bindings = NodeBindings("node-1")
    assert [str(b.pod) for b in bindings.bindings(view, state)] == ["x/a"]
    pod = state.pod("x", "a")
    assert pod is not None
    deleted = state.with_changes({pod.key: None}, {}, ())

    def transient(*args: object) -> None:
        raise RuntimeError("transient")

    with monkeypatch.context() as patch:
        patch.setattr(portmap, "_binding", transient)
        with pytest.raises(RuntimeError):
            bindings.bindings(view, deleted)
    assert bindings.bindings(view, deleted) == ()


# ---- kube versions ------------------------------------------------------------------------


def test_kube_source_version_is_the_lowest_stream_position() -> None:
    versions = Versions(["Pod", "Namespace"])
    assert versions.update("Pod", "10") is None  # not every stream listed yet
    assert versions.update("Namespace", "9") == "9"
    assert versions.update("Namespace", "12") == "10"
    assert versions.update("Pod", "100") == "12"  # integers, not text order


# ---- bundle bytes -------------------------------------------------------------------------

FLOWS = [
    Flow(40, 200, Match.build("tcp", nw_src=IPNetwork("10.0.0.0/8"), tp_dst=80), (Conjunction(7, 1, 2),), 0x5E01),
    Flow(0, 100, Match.build(in_port=3), (GotoTable(10),), 0x5E02),
]


@pytest.mark.parametrize("command", ["add", "modify_strict", "delete_strict"])
def test_bundle_add_bytes_equal_os_kens(command: str) -> None:
    for flow in FLOWS:
        inner = to_flow_mod(flow, wire.DESC, command)  # type: ignore[arg-type]
        msg = parser.ONFBundleAddMsg(wire.DESC, 77, wire.BUNDLE_FLAGS, inner, [])
        msg.xid = 0x1234
        msg.serialize()
        cache = wire.FlowModCache()
        assert wire.bundle_add(77, 0x1234, cache.encode(flow, command)) == bytes(msg.buf)  # type: ignore[arg-type]


def test_bundle_control_and_barrier_bytes_equal_os_kens() -> None:
    for ctrl in (ofp.ONF_BCT_OPEN_REQUEST, ofp.ONF_BCT_COMMIT_REQUEST):
        msg = parser.ONFBundleCtrlMsg(wire.DESC, 9, ctrl, wire.BUNDLE_FLAGS, [])
        msg.xid = 5
        msg.serialize()
        assert wire.bundle_ctrl(9, ctrl, 5) == bytes(msg.buf)
    barrier = parser.OFPBarrierRequest(wire.DESC)
    barrier.xid = 6
    barrier.serialize()
    assert wire.barrier_request(6) == bytes(barrier.buf)


def test_flow_mod_cache_keeps_only_what_the_switch_holds() -> None:
    cache = wire.FlowModCache()
    change = wire.Change(FlowDiff(adds=(FLOWS[0],), deletes=(FLOWS[1],)))
    bodies = list(wire.flow_mod_bodies(change, cache))
    assert len(bodies) == 2 and cache.misses == 2
    list(wire.flow_mod_bodies(change, cache))
    assert cache.hits == 2
    cache.retain(FlowSet([FLOWS[0]]))
    assert len(cache) == 2  # small: pruning waits until the cache is twice the table
    for i in range(1100):
        cache.encode(Flow(0, 1 + i, Match.build(in_port=1 + i), (GotoTable(10),)), "add")
    cache.retain(FlowSet([FLOWS[0]]))
    assert len(cache) == 1
    assert b"".join(wire.chunks(bodies, size=1)) == b"".join(bodies)


# ---- garbage-collector policy -------------------------------------------------------------


def test_gc_policy_freezes_survivors_and_collects_cycles_when_idle() -> None:
    import gc
    import weakref

    from sdn_netpol.controller.gcpolicy import GcPolicy

    class Node:
        other: object = None

    policy = GcPolicy(full_every=0.0)
    try:
        node = Node()
        node.other = node  # a cycle: only the cyclic collector can free it
        ref = weakref.ref(node)
        policy.realized()
        del node
        gc.collect()
        assert ref() is not None  # frozen: ordinary collections leave it alone
        policy.idle()
        assert ref() is None  # the idle full collection reclaimed it
    finally:
        gc.unfreeze()


def test_gc_policy_collects_the_garbage_cycles_of_the_interval_before_freezing() -> None:
    import gc
    import weakref

    from sdn_netpol.controller.gcpolicy import GcPolicy

    class Node:
        other: object = None

    policy = GcPolicy(full_every=3600.0)  # never idle in this test
    try:
        node = Node()
        node.other = node
        ref = weakref.ref(node)
        del node  # garbage since the last realization, as a status request's JSON encoder leaves
        policy.realized()
        assert ref() is None, "a dead cycle frozen would live until the next full collection"
    finally:
        gc.unfreeze()
