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

import fcntl
import json
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from sdn_netpol.debug import stats
from sdn_netpol.debug.names import Names
from sdn_netpol.debug.stats import Stats
from sdn_netpol.lab.lab import ProbeReport
from sdn_netpol.lab.probe import REACHABLE
from sdn_netpol.lab.state import VM_STATE_FILE
from sdn_netpol.lab.store import LabError, ObjectRef, Store, node_manifest, ref_of, with_pod_status
from sdn_netpol.lab.vm import Vm, VmError, VmGroup
from sdn_netpol.lab.vm import cleanup as vm_cleanup
from sdn_netpol.lab.vmguest import WORKDIR as GUEST_WORKDIR
from sdn_netpol.lab.vmovs import VmSwitch
from sdn_netpol.model.objects import Protocol
from sdn_netpol.ovs.dumpflows import DumpedFlow, parse_dump_flows
from sdn_netpol.policy.matrix import Matrix, build_matrix
from sdn_netpol.policy.state import ClusterState

VM_MEMORY_MIB = 768  # OVS, the controller (~70 MiB), a server per pod (~14 MiB each)
REALIZE_TIMEOUT = 120.0
GUEST_MANIFESTS = GUEST_WORKDIR / "manifests"  # each node's copy of the folder, in its VM


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
    lock: IO[str] | None = None

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
        self.down()  # whatever an earlier or crashed VM lab left here
        names = [f"node{i}" for i in range(1, self.nodes + 1)]
        self.group = VmGroup(self.workdir, names, memory_mib=self.memory_mib)
        try:
            self.group.start()
            self.timings["boot"] = round(time.monotonic() - start, 1)
            nodes = [{"name": n, "address": f"10.10.0.{i}", "pod_cidr": f"10.244.{i}.0/24"}
                     for i, n in enumerate(names, start=1)]
            self._each({n["name"]: ("node-up", {**n, "index": i, "nodes": nodes})
                        for i, n in enumerate(nodes, start=1)})
            for spec in nodes:
                self.store.write(node_manifest(spec["name"], spec["address"], spec["pod_cidr"]))
            pod_docs = [o for o in objects if o.get("kind") == "Pod"]
            placed = place(pod_docs, names)
            added = self._each({node: ("pods-add", {"pods": docs}) for node, docs in placed.items() if docs})
            for name, got in added.items():
                for pod in got:
                    self.pods[pod["key"]] = VmPod(pod["key"], name, pod["ip"], pod["mac"], pod["netns"])
            by_key = {ref_of(d).key: d for d in pod_docs}
            published = [with_pod_status(by_key[p.key], p.node, p.ip) for p in self.pods.values()]
            self.timings["nodes and pods"] = round(time.monotonic() - start - self.timings["boot"], 1)
            self._change([*[o for o in objects if o.get("kind") != "Pod"], *published], [])
        except BaseException:
            self.down()
            raise
        self.timings["up"] = round(time.monotonic() - start, 1)
        self.save()

    def down(self) -> None:
        """No qemu, netns, overlay, socket or state file left (also after a crash: by marker)."""
        if self.group is not None:
            self.group.stop()
            self.group = None
        vm_cleanup(self.workdir)
        (self.workdir / VM_STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.workdir / "manifests", ignore_errors=True)

    # ------------------------------------------------------------ changes

    def apply(self, objects: Iterable[dict[str, Any]]) -> None:
        """Namespaces and NetworkPolicies; a Pod only if it exists (relabelled in place: it
        keeps its node and address, as a running pod does). New pods come from `up`."""
        docs = []
        for doc in objects:
            key = ref_of(doc).key
            if doc.get("kind") == "Pod":
                if key not in self.pods:
                    raise LabError(f"pod {key}: the kernel-datapath lab creates pods at `lab up` only")
                doc = with_pod_status(doc, self.pods[key].node, self.pods[key].ip)
            docs.append(doc)
        self._change(docs, [])

    def delete(self, refs: Iterable[ObjectRef]) -> None:
        refs = list(refs)
        for ref in refs:
            if ref.kind == "Pod" or (ref.kind == "Namespace" and any(k.startswith(f"{ref.name}/") for k in self.pods)):
                raise LabError(f"{ref}: the kernel-datapath lab does not delete pods (lab down does)")
        self._change([], refs)

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

    def probe(self, protocol: str, port: int) -> ProbeReport:
        """Every pod to every pod with real packets (each VM probes from its own pods), next to
        the engine's matrix: `lab probe`'s report."""
        expected = build_matrix(self.cluster(), cast(Protocol, protocol.upper()), port)
        targets = {key: pod.ip for key, pod in self.pods.items() if key in expected.pods}
        outcomes: dict[tuple[str, str], str] = {}
        request = {"protocol": protocol, "port": port, "targets": targets}
        start = time.monotonic()
        for found in self._each({n: ("probe", request) for n in self.vms}).values():
            outcomes.update({(s, d): o for s, row in found.items() for d, o in row.items()})
        seconds = time.monotonic() - start
        allowed = {s: {d: outcomes.get((s, d), "missing") in REACHABLE for d in expected.pods} for s in expected.pods}
        measured = Matrix(expected.protocol, port, expected.pods, allowed)
        return ProbeReport(measured, expected, measured.differences(expected), seconds, outcomes)

    def status(self) -> dict[str, Any]:
        """`lab status`'s document: nodes (address, VM memory, controller), pods."""
        found = self._each({n: ("status", {}) for n in self.vms})
        nodes = [{"name": n, "address": self.vms[n].ip, "pod_cidr": f"10.244.{i}.0/24", "datapath": "kernel",
                  "vm_rss_mib": self.vms[n].rss_bytes() >> 20, "controller_running": doc["controller_running"],
                  "controller": doc["controller"], "controller_error": doc.get("controller_error")}
                 for i, (n, doc) in enumerate(found.items(), start=1)]
        pods = {key: {"node": p.node, "ip": p.ip, "ips": [p.ip], "netns": p.netns,
                      **found[p.node]["pods"].get(key, {"server_running": False, "ports": []})}
                for key, p in sorted(self.pods.items())}
        return {"workdir": str(self.workdir), "datapath": "kernel", "tunnel": "vxlan", "nodes": nodes,
                "pods": pods, "external": []}

    def stats(self) -> Stats:
        """Every node's rule and isolation-drop counters (debug/stats.py), read now from the
        VMs' switches after a revalidator round (as the netdev lab's `stats`)."""
        names = Names.of(self.cluster())
        parts = []
        for node, vm in self.vms.items():
            switch = VmSwitch(vm)
            switch.appctl("revalidator/wait")

            def dump(cookie: str | None, switch: VmSwitch = switch) -> list[DumpedFlow]:
                return parse_dump_flows(switch.ofctl("--no-names", "dump-flows", "br-int", *filter(None, [cookie])))

            parts.append(stats.read(node, dump, names))
        return stats.merge(parts)

    def verify(self) -> dict[str, dict[str, Any]]:
        """Per node: every kernel megaflow against a fresh translation of its key."""
        return self._each({n: ("verify", {}) for n in self.vms})

    # ------------------------------------------------------------ state on disk

    def save(self) -> None:
        doc = {"nodes": self.nodes, "memory_mib": self.memory_mib, "pods": {k: asdict(p) for k, p in self.pods.items()}}
        (self.workdir / VM_STATE_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True))

    @classmethod
    def load(cls, workdir: Path) -> VmLab | None:
        """The VM lab another process brought up in `workdir` (its VMs still running), or None."""
        try:
            doc = json.loads((workdir / VM_STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        lab = cls(workdir.resolve(), doc["nodes"], doc["memory_mib"])
        # qemu serves one agent connection per VM at a time: a second process would connect
        # and then wait forever, so commands on one workdir take turns (held until exit)
        lab.lock = (workdir / ".vmlab.lock").open("w")
        fcntl.flock(lab.lock, fcntl.LOCK_EX)
        lab.pods = {k: VmPod(**p) for k, p in doc["pods"].items()}
        group = VmGroup(lab.workdir, [f"node{i}" for i in range(1, lab.nodes + 1)], memory_mib=lab.memory_mib)
        try:
            lab.group = group.attach()
        except VmError as exc:
            raise LabError(f"the kernel-datapath lab in {workdir} is broken ({exc}); run `lab down`") from exc
        return lab

    def close(self) -> None:
        """Let another process command the lab: the agents' connections and the lock go (the
        VMs keep running)."""
        if self.group is not None:
            for vm in self.group.vms.values():
                if vm.agent is not None:
                    vm.agent.close()
                    vm.agent = None
            self.group = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    @staticmethod
    def exists(workdir: Path) -> bool:
        return (workdir / VM_STATE_FILE).exists()

    def rss_mib(self) -> dict[str, int]:
        return {name: vm.rss_bytes() >> 20 for name, vm in self.vms.items()}

