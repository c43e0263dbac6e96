"""The lab's state on disk: names, addresses and processes of one lab, under one workdir.

Every command is a separate process, so everything a later `apply`, `probe` or `down`
needs is written here as soon as it exists; a crash therefore leaves a state file (and a
name prefix, and argv markers) from which `down` or the next `up` finds every leftover.
A file lock serialises commands on one workdir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_WORKDIR = Path("/tmp/sdn-netpol-lab")
STATE_FILE = "state.json"
UNDERLAY_PREFIX = "10.10.0"  # node N has 10.10.0.N on its br-phy tap
POD_CIDR = "10.244.{n}.0/24"
POD_GATEWAY = "10.244.{n}.254"  # virtual: answered by the OpenFlow ARP responder
OFP_PORT = 6653


def lab_prefix(workdir: Path) -> str:
    """Name prefix of every namespace of this lab: `sdnlab-` for the default workdir,
    `sdnlab-XXXX-` (a hash of the workdir) for others, so two labs never share a name."""
    resolved = Path(workdir).resolve()
    if resolved == DEFAULT_WORKDIR.resolve():
        return "sdnlab-"
    return f"sdnlab-{hashlib.sha256(str(resolved).encode()).hexdigest()[:4]}-"


@dataclass
class NodeState:
    name: str
    index: int
    netns: str
    rundir: str
    address: str  # underlay (tunnel endpoint) address
    pod_cidr: str
    gateway: str
    bridge_mac: str = ""
    controller_pid: int | None = None


@dataclass
class PodState:
    key: str  # namespace/name
    node: str
    netns: str
    container_id: str
    ip: str
    mac: str
    ports: list[tuple[str, int]] = field(default_factory=list)  # (protocol, port)
    server_pid: int | None = None
    published: bool = True  # its manifest (with node and IP) is in the shared folder


@dataclass
class LabState:
    workdir: str
    prefix: str
    tunnel: str
    nodes: list[NodeState] = field(default_factory=list)
    pods: dict[str, PodState] = field(default_factory=dict)
    external: list[str] = field(default_factory=list)  # addresses of the external host
    flows: str = "controller"  # or "static": the lab compiles and loads flows itself (debug)

    # ------------------------------------------------------------ paths

    @property
    def root(self) -> Path:
        return Path(self.workdir)

    @property
    def manifests(self) -> Path:
        """The shared folder every node's controller reads (`--source dir:`)."""
        return self.root / "manifests"

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}underlay"

    @property
    def external_netns(self) -> str:
        return f"{self.prefix}external"

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no lab node {name!r}")

    def pod_netns(self, key: str) -> str:
        namespace, _, name = key.partition("/")
        return f"{self.prefix}{namespace}.{name}"  # namespaces have no dots: unambiguous

    # ------------------------------------------------------------ persistence

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, self.root / STATE_FILE)

    @classmethod
    def load(cls, workdir: Path) -> LabState | None:
        try:
            doc = json.loads((Path(workdir) / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls.from_json(doc)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabState:
        nodes = [NodeState(**n) for n in doc.get("nodes", [])]
        pods = {}
        for key, raw in doc.get("pods", {}).items():
            raw = dict(raw)
            raw["ports"] = [(str(p), int(n)) for p, n in raw.get("ports", [])]
            pods[key] = PodState(**raw)
        return cls(workdir=doc["workdir"], prefix=doc["prefix"], tunnel=doc.get("tunnel", "vxlan"),
                   nodes=nodes, pods=pods, external=list(doc.get("external", [])),
                   flows=doc.get("flows", "controller"))


def new_state(workdir: Path, nodes: int, tunnel: str, external: list[str], flows: str) -> LabState:
    """Names and addresses of a K-node lab (nothing created yet)."""
    root = Path(workdir).resolve()
    prefix = lab_prefix(root)
    state = LabState(workdir=str(root), prefix=prefix, tunnel=tunnel, external=list(external), flows=flows)
    for n in range(1, nodes + 1):
        state.nodes.append(NodeState(
            name=f"node{n}", index=n, netns=f"{prefix}node{n}", rundir=str(root / "nodes" / f"node{n}"),
            address=f"{UNDERLAY_PREFIX}.{n}", pod_cidr=POD_CIDR.format(n=n), gateway=POD_GATEWAY.format(n=n),
        ))
    return state


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """One lab command at a time per workdir (a second one waits)."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
