"""A lab whose nodes are kernel-datapath VMs (issue 16): the host side.

Each node is a qemu VM (sdn_netpol/lab/vm.py) running, as a real node does, the system OVS
on the kernel datapath, the controller, the CNI plugin and pods as namespaces
(sdn_netpol/lab/vmguest.py does the node's part inside). The VMs share a private underlay
(10.10.0.N/24, kernel VXLAN between them). The manifests folder is replicated: every change
is written to each node's copy, then every node's controller must report that exact folder
version realized (the netdev lab's rule, per node). Probes run inside each VM from its pods
to every pod; the expected matrix is the engine's, from the host's own copy of the folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sdn_netpol.lab.store import LabError, ObjectRef, Store, node_manifest, ref_of, with_pod_status
from sdn_netpol.lab.vm import Vm, VmError, VmGroup
from sdn_netpol.model.objects import Protocol
from sdn_netpol.policy.matrix import Matrix, build_matrix
from sdn_netpol.policy.state import ClusterState

VM_MEMORY_MIB = 768  # OVS, the controller (~70 MiB), a server per pod (~14 MiB each)
REALIZE_TIMEOUT = 120.0


@dataclass
class VmPod:
    key: str
    node: str
    ip: str
    mac: str
    netns: str  # inside its node's VM


def place(pod_docs: Sequence[dict[str, Any]], nodes: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """A pod whose spec.nodeName names a node goes there; the others round-robin over the
    nodes in sorted namespace/name order."""
    placed: dict[str, list[dict[str, Any]]] = {n: [] for n in nodes}
    rest = []
    for doc in sorted(pod_docs, key=lambda d: ref_of(d).key):
        wanted = (doc.get("spec") or {}).get("nodeName")
        if wanted in placed:
            placed[wanted].append(doc)
        else:
            rest.append(doc)
    for i, doc in enumerate(rest):
        placed[nodes[i % len(nodes)]].append(doc)
    return placed


@dataclass
class VmLab:
    workdir: Path
    nodes: int = 2
    memory_mib: int = VM_MEMORY_MIB
    group: VmGroup | None = None
    pods: dict[str, VmPod] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        """The host's copy of the folder every node holds (for the engine's matrix)."""
        return Store(self.workdir / "manifests")

    @property
    def vms(self) -> dict[str, Vm]:
        if self.group is None:
            raise LabError("the VM lab is not up")
        return self.group.vms

    def guest(self, node: str, command: str, request: dict[str, Any], timeout: float = 300.0) -> Any:
        """One vmguest command in `node` (run by its agent); its answer."""
        try:
            return self.vms[node].call("sdn_netpol.lab.vmguest", command, request, timeout)
        except VmError as exc:
            raise LabError(f"vmguest {command}: {exc}") from exc

    # ------------------------------------------------------------ up / down

    def up(self, objects: Sequence[dict[str, Any]]) -> None:
        start = time.monotonic()
        names = [f"node{i}" for i in range(1, self.nodes + 1)]
        self.group = VmGroup(self.workdir, names, memory_mib=self.memory_mib)
        try:
            self.group.start()
            self.timings["boot"] = round(time.monotonic() - start, 1)
            nodes = [{"name": n, "address": f"10.10.0.{i}", "pod_cidr": f"10.244.{i}.0/24"}
                     for i, n in enumerate(names, start=1)]
            self._each({n["name"]: ("node-up", {**n, "index": i, "nodes": nodes})
                        for i, n in enumerate(nodes, start=1)})
            for node in nodes:
                self.store.write(node_manifest(node["name"], node["address"], node["pod_cidr"]))
            pod_docs = [o for o in objects if o.get("kind") == "Pod"]
            placed = place(pod_docs, names)
            added = self._each({node: ("pods-add", {"pods": docs}) for node, docs in placed.items() if docs})
            for node, got in added.items():
                for pod in got:
                    self.pods[pod["key"]] = VmPod(pod["key"], node, pod["ip"], pod["mac"], pod["netns"])
            by_key = {ref_of(d).key: d for d in pod_docs}
            published = [with_pod_status(by_key[p.key], p.node, p.ip) for p in self.pods.values()]
            self.timings["nodes and pods"] = round(time.monotonic() - start - self.timings["boot"], 1)
            self._change([*[o for o in objects if o.get("kind") != "Pod"], *published], ())
        except BaseException:
            self.down()
            raise
        self.timings["up"] = round(time.monotonic() - start, 1)

    def down(self) -> None:
        if self.group is not None:
            self.group.stop()
            self.group = None

    # ------------------------------------------------------------ changes

    def apply(self, objects: Iterable[dict[str, Any]]) -> None:
        self._change(list(objects), ())

    def delete(self, refs: Iterable[ObjectRef]) -> None:
        self._change([], list(refs))

    def _change(self, write: list[dict[str, Any]], remove: list[ObjectRef]) -> None:
        """Every node's folder copy, then wait until every node's controller realized it."""
        for doc in write:
            self.store.write(doc)
        for ref in remove:
            self.store.remove(ref)
        request = {"write": write, "remove": [[r.kind, r.namespace, r.name] for r in remove]}
        written = self._each({n: ("objects", request) for n in self.vms})
        versions = {node: got["version"] for node, got in written.items()}
        if len(set(versions.values())) != 1:
            raise LabError(f"the nodes' folders differ: {versions}")
        self._each({n: ("realized", {"timeout": REALIZE_TIMEOUT}) for n in self.vms}, REALIZE_TIMEOUT + 30)

    def _each(self, calls: dict[str, tuple[str, dict[str, Any]]], timeout: float = 300.0) -> dict[str, Any]:
        """One guest command per node, all nodes at once (each VM has its own agent and core)."""
        with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
            futures = {node: pool.submit(self.guest, node, command, request, timeout)
                       for node, (command, request) in calls.items()}
            return {node: future.result() for node, future in futures.items()}

    # ------------------------------------------------------------ probes

    def cluster(self) -> ClusterState:
        return ClusterState.from_parse(self.store.parse())

    def probe(self, protocol: str, port: int) -> tuple[Matrix, Matrix, list[tuple[str, str]]]:
        """(measured, expected, mismatches) for every pod pair, with real packets."""
        expected = build_matrix(self.cluster(), cast(Protocol, protocol.upper()), port)
        targets = {key: pod.ip for key, pod in self.pods.items()}
        outcome: dict[str, dict[str, str]] = {}
        request = {"protocol": protocol, "port": port, "targets": targets}
        for found in self._each({n: ("probe", request) for n in self.vms}).values():
            outcome.update(found)
        allowed = {s: {d: outcome.get(s, {}).get(d, "self") in ("connected", "refused", "self")
                       for d in expected.pods} for s in expected.pods}
        measured = Matrix(expected.protocol, port, expected.pods, allowed)
        wrong = [(s, d) for s in expected.pods for d in expected.pods if s != d
                 and allowed[s][d] != expected.allowed[s][d]]
        return measured, expected, wrong

    def rss_mib(self) -> dict[str, int]:
        return {name: vm.rss_bytes() >> 20 for name, vm in self.vms.items()}

