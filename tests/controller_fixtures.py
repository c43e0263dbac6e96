"""Real OVS + real controller processes for the controller tests.

Layout of one test node: a private network namespace holding a userspace OVS (one per
netns: OVS creates tap devices) with `br-int` (fail_mode=secure) and a VXLAN port; a veth
pair links it to the root namespace, where the controller process runs, so that it can
reach the fake API server (which listens on 127.0.0.1 of the root namespace) and the
bridge can reach the controller at the veth address. Pods are OVS internal ports carrying
the external_ids the CNI shim writes. Status is read over a unix socket.

Expected flows are computed independently of the controller's port map: from the ports
this module created (ofports read back from OVSDB) and the Node objects it wrote.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from netaddr import EUI, IPAddress, mac_unix_expanded

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import flow_from_parts, render_flows
from sdn_netpol.compiler.topology import NodeContext, PortBinding, mac_for_ip
from sdn_netpol.controller.nodes import NodeInfo, node_addresses, parse_node, place_pods
from sdn_netpol.model.objects import PodKey
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.ovs import OvsInstance
from sdn_netpol.policy.state import ClusterState

BRIDGE = "br-int"
NODE = "node-1"
NODE_IP = "192.168.50.1"
TUNNEL_OFPORT = 100
ROOT = Path(__file__).resolve().parent.parent
_COUNTER = itertools.count(1)
T = TypeVar("T")


class WaitTimeout(AssertionError):
    """wait_for gave up (a distinct type, so that other assertion errors are never mistaken for it)."""


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll with a short back-off until `predicate()` is truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@dataclass
class Pod:
    namespace: str
    name: str
    ip: str
    port: str  # the OVS port (interface) name
    ofport: int = 0

    @property
    def key(self) -> PodKey:
        return PodKey(self.namespace, self.name)

    @property
    def mac(self) -> EUI:
        return mac_for_ip(IPAddress(self.ip))


@dataclass
class Switch:
    """One node's OVS in its own netns, reachable from the root netns over a veth."""

    ovs: OvsInstance
    netns: str
    root_ip: str  # the controller listens here
    pods: dict[PodKey, Pod] = field(default_factory=dict)
    _ports: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def set_controller(self, port: int) -> None:
        """Before any flows (set-controller wipes the table); reconnect within a second."""
        self.ovs.vsctl("--", "--id=@c", "create", "Controller", f'target="tcp:{self.root_ip}:{port}"',
                       "max_backoff=1000", "inactivity_probe=0", "--", "set", "Bridge", BRIDGE, "controller=@c")

    def add_pod(self, namespace: str, name: str, ip: str) -> Pod:
        """An internal port with the external_ids the CNI shim writes."""
        number = next(self._ports)
        pod = Pod(namespace, name, ip, f"p{number}")
        ids = {"pod-namespace": namespace, "pod-name": name, "iface-id": f"{namespace}/{name}",
               "pod-ip": ip, "pod-mac": str(pod.mac), "container-id": f"c{number}"}
        self.ovs.vsctl("add-port", BRIDGE, pod.port, "--", "set", "Interface", pod.port, "type=internal",
                       f"ofport_request={number}",
                       *(f'external_ids:{k}="{v}"' for k, v in ids.items()))
        pod.ofport = int(self.ovs.vsctl("get", "Interface", pod.port, "ofport").strip())
        self.pods[pod.key] = pod
        return pod

    def remove_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop(PodKey(namespace, name))
        self.ovs.vsctl("del-port", BRIDGE, pod.port)

    def flows(self) -> FlowSet:
        return FlowSet(flow_from_parts(d.table, d.priority, d.cookie, d.match, d.actions)
                       for d in self.ovs.dump_flows(BRIDGE))

    def context(self, state: ClusterState, nodes: tuple[NodeInfo, ...]) -> NodeContext:
        """What the node context must be, from what this fixture created."""
        bindings = []
        for pod in self.pods.values():
            found = state.pods_by_key.get(pod.key)
            if found is not None and found.in_policy_scope and found.node_name in (None, NODE):
                bindings.append(PortBinding(pod.key, pod.ofport, pod.mac, (IPAddress(pod.ip),)))
        return NodeContext(NODE, tuple(sorted(bindings)), tunnel_port=TUNNEL_OFPORT,
                           node_addresses=node_addresses(nodes),
                           node_cidrs=tuple(sorted((n.name, net) for n in nodes for net in n.pod_cidrs)))


@contextlib.contextmanager
def switch(tmp: Path) -> Iterator[Switch]:
    n = next(_COUNTER)
    tag = f"{os.getpid() % 10000}x{n}"
    netns = f"ctl{tag}"
    a, b = (os.getpid() * 7 + n) % 250 + 1, (n * 4) % 252
    root_ip, ns_ip = f"169.254.{a}.{b + 1}", f"169.254.{a}.{b + 2}"
    _ip("netns", "add", netns)
    try:
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("link", "add", f"vr{tag}", "type", "veth", "peer", "name", f"vn{tag}", "netns", netns)
        _ip("addr", "add", f"{root_ip}/30", "dev", f"vr{tag}")
        _ip("link", "set", f"vr{tag}", "up")
        _ip("-n", netns, "addr", "add", f"{ns_ip}/30", "dev", f"vn{tag}")
        _ip("-n", netns, "link", "set", f"vn{tag}", "up")
        with OvsInstance.start(tmp / "ovs", netns=netns) as ovs:
            ovs.add_bridge(BRIDGE)
            ovs.vsctl("add-port", BRIDGE, "tun0", "--", "set", "Interface", "tun0", "type=vxlan",
                      "options:remote_ip=flow", "options:key=flow", f"ofport_request={TUNNEL_OFPORT}")
            yield Switch(ovs, netns, root_ip)
    finally:
        _ip("link", "del", f"vr{tag}", check=False)
        _ip("netns", "del", netns, check=False)


# ---- the controller process --------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(self.path))
        self.sock = sock


@dataclass
class Controller:
    """`python -m sdn_netpol.cli.controller` as a child process."""

    args: list[str]
    status_sock: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        with contextlib.suppress(FileNotFoundError):
            self.status_sock.unlink()
        out = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "sdn_netpol.cli.controller", *self.args],
                                     cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._answers, 20, "the controller's status socket")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            self.get("/healthz")
        except OSError:
            return False
        return True

    def get(self, path: str) -> tuple[int, str]:
        conn = _UnixHTTPConnection(self.status_sock)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        node: dict[str, Any] = json.loads(body)["nodes"][NODE]
        return node

    def metrics(self) -> dict[str, float]:
        """Samples by "name{labels}" (labels as printed), e.g. flow mods sent per command."""
        code, body = self.get("/metrics")
        assert code == 200
        samples = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def flow_mods_sent(self) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith("sdn_netpol_flow_mods_sent_total"))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def controller(sw: Switch, tmp: Path, source: str, *extra: str, ofp_port: int = 6653) -> Controller:
    args = ["--source", source, "--node", NODE, "--bridge", BRIDGE, "--ofp-listen", f"{sw.root_ip}:{ofp_port}",
            "--status-listen", f"unix:{tmp / 'status.sock'}", "--ovsdb", f"unix:{sw.ovs.db_sock}",
            "--coalesce-ms", "2", "--dir-poll-ms", "20", "--log-level", "info", *extra]
    return Controller(args, tmp / "status.sock", tmp / "controller.log")


# ---- manifests ---------------------------------------------------------------------------


def pod_manifest(namespace: str, name: str, ip: str, node: str = NODE, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "img",
                                                       "ports": [{"containerPort": 80, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def namespace_manifest(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def node_manifest(name: str, address: str, pod_cidr: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": pod_cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


def policy_manifest(namespace: str, name: str, app: str, allow_from: Mapping[str, str] | None,
                    port: int | str = 80) -> dict[str, Any]:
    """Ingress to pods labelled app=`app`, from pods matching `allow_from` (None: nobody)."""
    rules = [] if allow_from is None else [
        {"from": [{"podSelector": {"matchLabels": dict(allow_from)}}], "ports": [{"protocol": "TCP", "port": port}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"], "ingress": rules}}


def seed(sw: Switch, cluster: Cluster) -> None:
    """Two local pods and one remote, a policy, the two nodes: the start of most scenarios."""
    sw.add_pod("x", "a", "10.244.1.2")
    sw.add_pod("x", "b", "10.244.1.3")
    cluster.apply(
        node_manifest(NODE, "192.168.50.1", "10.244.1.0/24"), node_manifest("node-2", "192.168.50.2", "10.244.2.0/24"),
        namespace_manifest("x", team="a"), namespace_manifest("y", team="b"),
        pod_manifest("x", "a", "10.244.1.2", app="web"), pod_manifest("x", "b", "10.244.1.3", app="db"),
        pod_manifest("y", "r", "10.244.2.7", node="node-2", app="web"),
        policy_manifest("x", "db", "db", {"app": "web"}),
    )


def write(path: Path, *docs: dict[str, Any]) -> None:
    """Atomically (rename), as a careful user or the lab writes a manifest."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.rename(path)


def expected_flows(sw: Switch, state: ClusterState, nodes: tuple[NodeInfo, ...]) -> FlowSet:
    placed = ClusterState.build(state.namespaces, place_pods(state.pods, nodes), state.policies, 0,
                                state.cluster_policies)
    return compile_node(placed, sw.context(placed, nodes))


def assert_flows_converge(sw: Switch, expected: Callable[[], FlowSet], timeout: float = 60.0) -> None:
    """The switch's dump-flows, parsed as Flow values, becomes exactly `expected()`."""
    last: list[FlowSet] = []

    def equal() -> bool:
        last[:] = [expected()]
        try:
            return sw.flows() == last[0]
        except ValueError:  # a flow no Flow value expresses (e.g. NORMAL) is still there
            return False

    try:
        wait_for(equal, timeout, "the switch to hold compile_node's flows")
    except WaitTimeout:
        have, want = sw.flows(), last[0]
        missing = render_flows(f for f in want if f not in have)
        extra = render_flows(f for f in have if f not in want)
        raise AssertionError(f"switch differs from compile_node\nmissing:\n{missing}\nextra:\n{extra}") from None


def mac(text: str) -> EUI:
    return EUI(text, dialect=mac_unix_expanded)


# ---- one cluster, two sources ------------------------------------------------------------


class Cluster:
    """The objects a controller should see, behind either source: a folder (one file per
    object) or a fake API server. Tests drive both through this one interface."""

    def apply(self, *docs: dict[str, Any]) -> None:
        raise NotImplementedError

    def delete(self, kind: str, namespace: str, name: str) -> None:
        raise NotImplementedError

    def docs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def state(self) -> tuple[ClusterState, tuple[NodeInfo, ...]]:
        """The cluster as the model reads it (Nodes parsed by the controller's node parser)."""
        docs = self.docs()
        result = parse_documents(Document(f"doc{i}", d) for i, d in enumerate(docs))
        nodes = tuple(sorted(n for d in docs if d.get("kind") == "Node" for n in [parse_node(d)[0]] if n))
        return ClusterState.from_parse(result), nodes

    def expected(self, sw: Switch) -> FlowSet:
        state, nodes = self.state()
        return expected_flows(sw, state, nodes)


def _file_name(kind: str, namespace: str, name: str) -> str:
    return f"{kind.lower()}-{namespace or '_'}-{name}.yaml"


@dataclass
class FolderCluster(Cluster):
    path: Path

    def apply(self, *docs: dict[str, Any]) -> None:
        for doc in docs:
            meta = doc["metadata"]
            write(self.path / _file_name(doc["kind"], meta.get("namespace", ""), meta["name"]), doc)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        (self.path / _file_name(kind, namespace, name)).unlink()

    def docs(self) -> list[dict[str, Any]]:
        return [d for f in sorted(self.path.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


@dataclass
class StaticCluster(Cluster):
    """Fixed documents: what the switch must hold in a state no live source shows."""

    documents: list[dict[str, Any]]

    def docs(self) -> list[dict[str, Any]]:
        return self.documents


@dataclass
class KubeCluster(Cluster):
    fake: Any  # tests.fakekube.FakeKube

    def apply(self, *docs: dict[str, Any]) -> None:
        for doc in docs:
            self.fake.apply(doc)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.fake.delete(kind, namespace or None, name)

    def docs(self) -> list[dict[str, Any]]:
        with self.fake.cond:
            return [json.loads(json.dumps(o)) for objs in self.fake.objects.values() for o in objs.values()]


# ---- a cuttable OpenFlow connection ------------------------------------------------------


class CutProxy:
    """A TCP relay (bridge → controller, or client → API server) that can cut the connection
    after the target has sent `n` more bytes (`arm`: in the middle of a bundle), or at once
    (`drop`), then refuse reconnections until released. Real sockets; only the wire is
    interrupted (TLS passes through untouched)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.port = int(self.server.getsockname()[1])
        self.budget: int | None = None
        self.refusing = False
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, after_bytes: int) -> None:
        with self._lock:
            self.budget = after_bytes
            self.cut.clear()

    def drop(self) -> None:
        """Close every relayed connection now and refuse new ones until `release`."""
        self.refusing = True
        self._close_all()

    def release(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.server.close()
        self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                switch_side, _ = self.server.accept()
            except OSError:
                return
            if self.refusing:
                switch_side.close()
                continue
            try:
                ctl_side = socket.create_connection(self.target, timeout=5)
            except OSError:
                switch_side.close()
                continue
            ctl_side.settimeout(None)
            with self._lock:
                self._socks += [switch_side, ctl_side]
            threading.Thread(target=self._pump, args=(switch_side, ctl_side, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(ctl_side, switch_side, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_controller: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_controller and not self._forward_budget(data, dst):
                    return
                if not from_controller:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _forward_budget(self, data: bytes, dst: socket.socket) -> bool:
        with self._lock:
            budget = self.budget
            if budget is not None and len(data) > budget:
                self.budget = None
                self.refusing = True
        if budget is None or len(data) <= budget:
            dst.sendall(data)
            if budget is not None:
                with self._lock:
                    self.budget = budget - len(data)
            return True
        dst.sendall(data[:budget])
        self._close_all()
        self.cut.set()
        return False

    def _close_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


# ---- fixtures shared by the controller test modules ---------------------------------------


@pytest.fixture
def sw(tmp_path: Path) -> Iterator[Switch]:
    """A private OVS whose bridge points at a controller on port 6653 (set before any flow)."""
    with switch(tmp_path) as s:
        s.set_controller(6653)
        yield s


@pytest.fixture
def folder_cluster(tmp_path: Path) -> FolderCluster:
    folder = tmp_path / "manifests"
    folder.mkdir()
    return FolderCluster(folder)
