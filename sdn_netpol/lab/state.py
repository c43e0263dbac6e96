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

from sdn_netpol.lab.families import by_family, families, gateway, pod_cidr

DEFAULT_WORKDIR = Path("/tmp/sdn-netpol-lab")
STATE_FILE = "state.json"
VM_STATE_FILE = "vmlab.json"  # a kernel-datapath lab's (lab/vmlab.py), in the same kind of workdir
UNDERLAY_PREFIX = "10.10.0"  # node N has 10.10.0.N on its br-phy tap
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
    pod_cidr: str  # of the lab's first family
    gateway: str
    bridge_mac: str = ""
    controller_pid: int | None = None
    pod_cidrs: list[str] = field(default_factory=list)  # one per family of the lab, first family first
    gateways: list[str] = field(default_factory=list)  # the virtual gateway of each

    def __post_init__(self) -> None:  # a state written before the lab had families
        self.pod_cidrs = self.pod_cidrs or [self.pod_cidr]
        self.gateways = self.gateways or [self.gateway]

    def cidr_of(self, family: int) -> str | None:
        return by_family(self.pod_cidrs, family)


@dataclass
class PodState:
    key: str  # namespace/name
    node: str
    netns: str
    container_id: str
    ip: str  # of the lab's first family (status.podIP)
    mac: str
    ports: list[tuple[str, int]] = field(default_factory=list)  # (protocol, port)
    server_pid: int | None = None
    published: bool = True  # its manifest (with node and IP) is in the shared folder
    ips: list[str] = field(default_factory=list)  # one per family of the lab (status.podIPs)

    def __post_init__(self) -> None:
        self.ips = self.ips or ([self.ip] if self.ip else [])

    def ip_of(self, family: int) -> str | None:
        return by_family(self.ips, family)


@dataclass
class LabState:
    workdir: str
    prefix: str
    tunnel: str
    nodes: list[NodeState] = field(default_factory=list)
    pods: dict[str, PodState] = field(default_factory=dict)
    external: list[str] = field(default_factory=list)  # addresses of the external host
    flows: str = "controller"  # or "static": the lab compiles and loads flows itself (debug)
    ip_family: str = "4"  # `lab up --ip-family`: 4, 6 or dual

    @property
    def families(self) -> tuple[int, ...]:
        """The pods' address families, the first one first (IPv4 first in a dual lab)."""
        return families(self.ip_family)

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
                   flows=doc.get("flows", "controller"), ip_family=str(doc.get("ip_family", "4")))


def new_state(workdir: Path, nodes: int, tunnel: str, external: list[str], flows: str,
              ip_family: str = "4") -> LabState:
    """Names and addresses of a K-node lab (nothing created yet)."""
    root = Path(workdir).resolve()
    prefix = lab_prefix(root)
    state = LabState(workdir=str(root), prefix=prefix, tunnel=tunnel, external=list(external), flows=flows,
                     ip_family=ip_family)
    for n in range(1, nodes + 1):
        cidrs = [pod_cidr(n, family) for family in families(ip_family)]
        gateways = [gateway(cidr) for cidr in cidrs]
        state.nodes.append(NodeState(
            name=f"node{n}", index=n, netns=f"{prefix}node{n}", rundir=str(root / "nodes" / f"node{n}"),
            address=f"{UNDERLAY_PREFIX}.{n}", pod_cidr=cidrs[0], gateway=gateways[0], pod_cidrs=cidrs,
            gateways=gateways,
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
