"""Chaos on the lab (issue 14, point 1): faults injected into a 3-node lab under traffic and churn.

While a `Prober` (traffic.py) probes every pod pair on TCP/80 about once a second, long
`Stream`s run on pairs that every state of the churn allows (pods of x on 81, never isolated
for ingress; no egress policy exists), and a `Churn` thread changes policies and Namespace
labels one at a time (writing the manifests folder, and the fake API server when one is
attached), each change waited for until every node realizes it. Then each fault of
chaos_faults.py is injected once per round, and for each one is reported: false allows
(must be 0), false denies of allowed pairs and how long the longest lasted, streams cut,
flow mods sent by the restarted controller, and the time from the fault to the first probe
round that equals the engine's matrix with every node realized again.
"""

from __future__ import annotations

import contextlib
import copy
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sdn_netpol.controller.sources.directory import folder_version
from sdn_netpol.lab import controllers, procs
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import LabState, NodeState, locked
from sdn_netpol.lab.store import ObjectRef, Store, ref_of
from sdn_netpol.lab.traffic import Pair, Prober, Stream, Timeline, exact_rounds, judge
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState

PORT = 80  # probed
STREAM_PORT = 81
STREAMS = (("y/b", "x/a"), ("z/c", "x/b"), ("z/a", "x/a"), ("y/c", "x/b"))
DWELL = 1.0  # seconds between a change realized and the next one
REALIZE_DEADLINE = 120.0  # a change not realized everywhere this long after its write: stuck
CONVERGE_DEADLINE = 120.0
AUDIT = {"sdn-netpol.io/audit": "all"}  # on x: the controllers write audit lines all along


class KubeApi(Protocol):
    """What the chaos runner needs of an API server (tests/fakekube.py's FakeKube)."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]: ...
    def drop_watches(self, *, clean: bool = False) -> None: ...
    def stall_watches(self, seconds: float) -> None: ...
    def compact(self) -> int: ...
    def send_bookmarks(self) -> None: ...
    @property
    def resource_version(self) -> str: ...
    @property
    def url(self) -> str: ...


def _policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _from(**selectors: dict[str, Any]) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{k: {"matchLabels": v} for k, v in selectors.items()}]}]}


def base_policies() -> list[dict[str, Any]]:
    """Fixed: x/c only from y; y/a only from Namespaces labelled team=t (denied pairs from the start)."""
    x_c = {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"],
           "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}
    return [_policy("c-from-y", "x", x_c), _policy("a-from-team", "y", _from(namespaceSelector={"team": "t"}))]


def churn_pool() -> list[dict[str, Any]]:
    """Ingress policies in y and z only: x's pods (the streams' ends) are never isolated."""
    deny = {"podSelector": {}, "policyTypes": ["Ingress"]}
    b_from_x = {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}],
                             "ports": [{"protocol": "TCP", "port": PORT}]}]}
    return [_policy("deny-ingress", "y", deny), _policy("deny-ingress", "z", deny),
            _policy("a-from-b", "z", _from(podSelector={"pod": "b"})),
            _policy("b-from-x", "z", b_from_x), _policy("b-from-x", "y", b_from_x)]


def namespace_doc(name: str, team: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"ns": name, **({"team": "t"} if team else {})}}
    if name == "x":
        meta["annotations"] = dict(AUDIT)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


class Churn:
    """One change at a time (a pool policy in or out, or a team label flipped), each written to
    the folder (and the API server), then waited for on every node, then DWELL."""

    def __init__(self, lab: Lab, seed: int) -> None:
        self.lab, self.state = lab, lab.state()
        self.store = Store(self.state.manifests)
        self.rng = random.Random(seed)
        self.docs: dict[ObjectRef, dict[str, Any]] = {}  # the valid objects: what the engine sees
        for ref in self.store.refs():
            body = self.store.get(ref)
            if body is not None:
                self.docs[ref] = body
        self.pairs: list[Pair] = [(s, d) for s in sorted(self.state.pods) for d in sorted(self.state.pods)]
        self.timeline = Timeline(self.expected(), time.monotonic())
        self.kube: KubeApi | None = None
        self.kube_nodes: set[str] = set()
        self.lock = threading.RLock()  # a fault's own writes and the churn's never interleave
        self.changes = 0
        self.stuck: list[str] = []
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)

    # ------------------------------------------------------------ the cluster and the engine

    def expected(self) -> dict[Pair, bool]:
        parsed = parse_documents([Document(str(ref), body) for ref, body in self.docs.items()])
        matrix = build_matrix(ClusterState.from_parse(parsed), "TCP", PORT)
        return {(s, d): matrix.allowed[s][d] for s, d in self.pairs}

    def write(self, body: dict[str, Any], valid: bool = True) -> int:
        """Write one object (to every source), record the new expected matrix; returns its epoch."""
        with self.lock, locked(self.lab.workdir):
            ref = ref_of(body)
            if valid:
                self.docs[ref] = copy.deepcopy(body)
            self.store.write(body)
            if self.kube is not None:
                self.kube.apply(body)
            return self.timeline.written(self.expected(), time.monotonic())

    def remove(self, body: dict[str, Any]) -> int:
        with self.lock, locked(self.lab.workdir):
            ref = ref_of(body)
            self.docs.pop(ref, None)
            self.store.remove(ref)
            if self.kube is not None:
                self.kube.delete(ref.kind, ref.namespace or None, ref.name)
            return self.timeline.written(self.expected(), time.monotonic())

    def kube_version(self) -> int:
        return int(self.kube.resource_version) if self.kube is not None else 0

    # ------------------------------------------------------------ realization

    def node_realized(self, node: NodeState, folder: str, kube_rv: int) -> bool:
        if not procs.alive(node.controller_pid):
            return False
        try:
            doc = controllers.status(node)
        except (OSError, ValueError):
            return False
        version = str(doc.get("source_version"))
        if node.name in self.kube_nodes:
            ok_version = version.isdigit() and int(version) >= kube_rv
        else:
            ok_version = version == folder
        return (ok_version and doc.get("realized_generation") == doc.get("desired_generation")
                and set(doc.get("ports") or {}) == controllers.local_pods(self.state, node.name))

    def wait_realized(self, epoch: int, deadline: float = REALIZE_DEADLINE) -> bool:
        """Until every node enforces the folder (and API server) as they are at that moment,
        which `epoch` is then part of (read anew each time: a fault may write meanwhile, and a
        folder's version tells nothing of order)."""
        end, bookmarks = time.monotonic() + deadline, 0.0
        while time.monotonic() < end and not self._stop.is_set():
            with self.lock:
                folder, kube_rv = folder_version(self.state.manifests), self.kube_version()
            nodes = self.lab.state().nodes  # pids change when a fault restarts a controller
            if all(self.node_realized(n, folder, kube_rv) for n in nodes):
                self.timeline.realized(epoch, time.monotonic())
                return True
            if self.kube is not None and self.kube_nodes and time.monotonic() - bookmarks > 1.0:
                self.kube.send_bookmarks()  # the watch of an unchanged kind moves on too
                bookmarks = time.monotonic()
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------ the thread

    def start(self) -> Churn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REALIZE_DEADLINE + 10)

    def pause(self) -> None:
        with self.lock:
            self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def step(self) -> int:
        """One random change; returns its epoch."""
        with self.lock:
            if self.rng.random() < 0.3:
                ns = self.rng.choice(("x", "y", "z"))
                labels = self.docs[ObjectRef("Namespace", "", ns)]["metadata"].get("labels", {})
                return self.write(namespace_doc(ns, "team" not in labels))
            doc = self.rng.choice(churn_pool())
            if ref_of(doc) in self.docs:
                return self.remove(doc)
            return self.write(doc)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pause.is_set():
                self._stop.wait(0.1)
                continue
            epoch = self.step()
            self.changes += 1
            if not self.wait_realized(epoch) and not self._stop.is_set():
                self.stuck.append(f"change {epoch} not realized within {REALIZE_DEADLINE:.0f} s")
            self._stop.wait(DWELL)


@dataclass
class FaultResult:
    name: str
    node: str
    false_allows: int = 0
    false_denies: int = 0  # probes of allowed pairs that failed
    longest_false_deny: float = 0.0  # seconds, the longest run of failures of one pair
    pairs_denied: int = 0
    streams_cut: int = 0
    converge_seconds: float | None = None  # None: never within the deadline
    flow_mods: float | None = None  # sent by the node's (restarted) controller after the fault
    flows: int = 0  # the node's flows once converged (a flush would resend about as many)
    detail: str = ""
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        conv = "never" if self.converge_seconds is None else f"{self.converge_seconds:.1f} s"
        mods = "" if self.flow_mods is None else f", flow mods {self.flow_mods:.0f} of {self.flows} flows"
        return (f"{self.name:<24} {self.node}: false allows {self.false_allows}, false denies "
                f"{self.false_denies} ({self.pairs_denied} pairs, longest {self.longest_false_deny:.1f} s), "
                f"streams cut {self.streams_cut}, converged in {conv}{mods}"
                + (f"; {self.detail}" if self.detail else ""))


@dataclass
class ChaosRun:
    """The lab with its traffic and churn; faults (chaos_faults.py) act on it."""

    lab: Lab
    scratch: Path
    churn: Churn
    prober: Prober
    streams: list[Stream] = field(default_factory=list)
    results: list[FaultResult] = field(default_factory=list)

    @property
    def state(self) -> LabState:
        return self.lab.state()

    def node(self, name: str) -> NodeState:
        return self.state.node(name)

    def open_streams(self) -> None:
        pods = self.state.pods
        for src, dst in STREAMS:
            self.streams.append(Stream(pods[src], pods[dst], STREAM_PORT).start())

    def replace_cut_streams(self) -> None:
        for i, stream in enumerate(self.streams):
            if stream.cut_at is not None:
                stream.stop()
                self.streams[i] = Stream(stream.source, stream.destination, STREAM_PORT).start()

    def set_controller(self, node: NodeState, pid: int | None) -> None:
        with locked(self.lab.workdir):
            state = self.lab.state()
            state.node(node.name).controller_pid = pid
            state.save()
        node.controller_pid = pid

    def wait_converged(self, since: float, deadline: float = CONVERGE_DEADLINE) -> float | None:
        """Seconds from `since` to the end of the first probe round, begun once every node
        had realized the current state, that equals the engine's matrix."""
        end = time.monotonic() + deadline
        realized_at: float | None = None
        while time.monotonic() < end:
            epoch = self.churn.timeline.current()
            if realized_at is None and self.churn.wait_realized(epoch.index, deadline=1.0):
                realized_at = time.monotonic()
            if realized_at is not None:
                rounds = exact_rounds([s for s in self.prober.snapshot() if s.start >= realized_at],
                                      self.churn.timeline.epochs())
                if rounds:
                    return rounds[0][1] - since
                if self.churn.timeline.current().index != epoch.index:
                    realized_at = None  # a newer change: wait for it too
            time.sleep(0.2)
        return None

    def measure(self, name: str, node: NodeState, inject: Callable[[], str]) -> FaultResult:
        """Inject one fault, wait for convergence, judge the traffic of the whole episode.
        Flow mods: what the node's controller sent from the fault to convergence (all it
        sent, when the fault restarted it)."""
        self.replace_cut_streams()
        pid, mods_before = self.node(node.name).controller_pid, flow_mods(self.node(node.name))
        start = time.monotonic()
        detail = inject()
        converged = self.wait_converged(start)
        end = time.monotonic()
        after = self.node(node.name)
        mods = flow_mods(after) - (mods_before if after.controller_pid == pid else 0.0)
        verdict = judge(self.prober.snapshot(), self.churn.timeline.epochs(), since=start, until=end)
        cut = [s for s in self.streams if s.cut_at is not None and s.cut_at >= start]
        result = FaultResult(name, node.name, len(verdict.false_allows), len(verdict.false_denies),
                             verdict.false_deny_seconds, len({o.pair for o in verdict.outages}), len(cut),
                             converged, mods, detail=detail)
        with contextlib.suppress(OSError, ValueError):
            result.flows = int(controllers.status(self.node(node.name)).get("flows", {}).get("total", 0))
        result.examples = [f"false allow {s.pair} at {s.start - start:+.1f} s ({s.outcome})"
                           for s in verdict.false_allows[:5]]
        result.examples += [f"false deny {o.pair[0]}->{o.pair[1]} from {o.start - start:+.1f} s for {o.seconds:.1f} s"
                            for o in sorted(verdict.outages, key=lambda o: -o.seconds)[:40]]
        result.examples += [f"stream {s.name} cut at {(s.cut_at or 0) - start:+.1f} s: {s.error}" for s in cut]
        self.results.append(result)
        return result


def flow_mods(node: NodeState) -> float:
    return metric_sum(node, "sdn_netpol_flow_mods_sent_total")


def metric_sum(node: NodeState, prefix: str, label: str = "") -> float:
    """Sum of a /metrics family of the node's controller over the samples whose labels
    include `label` (0 when it does not answer)."""
    try:
        text = controllers.get(node, "/metrics").decode()
    except (OSError, ValueError):
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and label in line.rsplit(" ", 1)[0])


def setup(lab: Lab, scratch: Path, seed: int = 0, kube: KubeApi | None = None) -> ChaosRun:
    """On a lab already up over the conformance model: the base policies and x's audit
    annotation, then the prober, the streams and the churn, all running. With `kube`, every
    object is mirrored into that API server too (the watch faults move one node onto it)."""
    churn = Churn(lab, seed)
    if kube is not None:
        for body in churn.docs.values():
            kube.apply(body)
        churn.kube = kube
    for doc in [*base_policies(), namespace_doc("x", False)]:
        churn.wait_realized(churn.write(doc))
    prober = Prober(lab.state(), churn.pairs, PORT).start()
    run = ChaosRun(lab, scratch, churn, prober)
    run.open_streams()
    churn.start()
    return run


def teardown(run: ChaosRun) -> None:
    run.churn.stop()
    run.prober.stop()
    for stream in run.streams:
        stream.stop()

