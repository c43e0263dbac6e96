"""The lab as an object: up, apply, delete, probe, status, down (one CLI command each).

Every method loads the state from the workdir, holds the workdir lock, and saves the state
as soon as something new exists, so that separate CLI processes (and a crash) always see
what is there. Kubernetes behaviour where it is visible: applying an existing Pod or
Namespace changes it in place (a pod keeps its namespace, node and IP); deleting a
Namespace deletes what is in it; changes are done once every controller has realized them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from netaddr import IPAddress

from sdn_netpol.lab import cleanup, controllers, hostlimits, pods, probe, procs, topology
from sdn_netpol.lab.families import IP_FAMILIES, family_of
from sdn_netpol.lab.state import DEFAULT_WORKDIR, LabState, PodState, locked, new_state
from sdn_netpol.lab.store import LabError, ObjectRef, Store, node_manifest, read_objects, ref_of, with_pod_status
from sdn_netpol.model.objects import Pod, Protocol
from sdn_netpol.model.parse import parse_object
from sdn_netpol.ovs.instance import OvsInstance

if TYPE_CHECKING:
    from sdn_netpol.ovs.datapath import VerifyReport
    from sdn_netpol.policy.matrix import Matrix
    from sdn_netpol.policy.state import ClusterState

# The policy engine, the compiler and the tracer are imported by the commands that use them:
# `lab apply` and `lab delete` (a shell command each, 1,000 policies in < 3 s) only write the
# folder and wait, and importing them cost 0.3 s of CLI start-up idle, 1 s at load 8.

CNI_PARALLEL = 6


@dataclass
class ProbeReport:
    measured: Matrix
    expected: Matrix
    mismatches: list[tuple[str, str]]
    seconds: float
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md: the matrix shape measured, plus `expected` (same shape as `allowed`)
        and `mismatches` ([from, to] pairs)."""
        doc = self.measured.to_json()
        doc["expected"] = self.expected.to_json()["allowed"]
        doc["mismatches"] = [list(pair) for pair in self.mismatches]
        return doc


@dataclass(frozen=True)
class ExternalResult:
    source: str
    destination: str
    outcome: str
    expected: bool

    @property
    def allowed(self) -> bool:
        return self.outcome in probe.REACHABLE


def _unique(objects: Iterable[dict[str, Any]]) -> dict[ObjectRef, dict[str, Any]]:
    """Later objects with the same kind/namespace/name replace earlier ones (DESIGN)."""
    found: dict[ObjectRef, dict[str, Any]] = {}
    for body in objects:
        found[ref_of(body)] = body
    return found


def _address(pod: PodState, family: int) -> str:
    found = pod.ip_of(family)
    if found is None:  # a pod made before the lab had families, or by hand
        raise LabError(f"pod {pod.key} has no IPv{family} address ({', '.join(pod.ips)})")
    return found


def _check_external(state: LabState) -> None:
    """The external host reaches the pods over IPv4 (its routes go through each node's IPv4
    gateway): an IPv6 address of it, or a lab without IPv4, is refused before anything exists."""
    for address in state.external:
        if family_of(address) != 4 or 4 not in state.families:
            raise LabError(f"--external {address}: the external host takes IPv4 addresses, on a lab whose pods "
                           f"have IPv4 (--ip-family 4 or dual; this one is {state.ip_family})")


def _parsed_pod(body: dict[str, Any]) -> Pod:
    obj, _ = parse_object(body)
    assert isinstance(obj, Pod), "read_objects validated it"
    return obj


class Lab:
    def __init__(self, workdir: Path = DEFAULT_WORKDIR) -> None:
        self.workdir = Path(workdir).resolve()
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ helpers

    def state(self) -> LabState:
        state = LabState.load(self.workdir)
        if state is None:
            raise LabError(f"no lab in {self.workdir}: run `sdn-netpol lab up` first")
        return state

    def _phase(self, name: str, start: float) -> float:
        now = time.monotonic()
        self.timings[name] = round(now - start, 3)
        return now

    def wait_realized(self) -> None:
        """Until every node enforces the folder as it is now (e.g. after a controller restart)."""
        self._realize(self.state())

    def _realize(self, state: LabState) -> None:
        """Return once every node enforces the folder as it is now."""
        if state.flows == "static":
            from sdn_netpol.lab import staticflows

            staticflows.push(state)
            return
        from sdn_netpol.controller.sources.directory import folder_version

        controllers.wait_realized(state, folder_version(state.manifests))

    # ------------------------------------------------------------------ up / down

    def up(self, paths: Sequence[Path], nodes: int, tunnel: str = "vxlan", external: Sequence[str] = (),
           flows: str = "controller", ip_family: str = "4") -> LabState:
        if nodes < 1:
            raise LabError("--nodes must be at least 1")
        if ip_family not in IP_FAMILIES:
            raise LabError(f"--ip-family {ip_family}: must be one of {', '.join(IP_FAMILIES)}")
        # Validate before touching anything (a previous lab is torn down next): the objects,
        # and where each pod goes (a pod IP that no node's CIDR holds is refused here).
        objects = _unique(read_objects(paths))
        state = new_state(self.workdir, nodes, tunnel, list(external), flows, ip_family)
        _check_external(state)
        model_pods = [_parsed_pod(b) for r, b in objects.items() if r.kind == "Pod"]
        placements = pods.place(model_pods, state.nodes)
        with locked(self.workdir):
            t = start = time.monotonic()
            cleanup.teardown(self.workdir)  # a crashed or forgotten lab first
            t = self._phase("cleanup", t)
            state.save()
            try:
                self._build(state, objects, placements, t)
            except BaseException:
                state.save()
                raise
            self.timings["total"] = round(time.monotonic() - start, 3)
            return state

    def _build(self, state: LabState, objects: dict[ObjectRef, dict[str, Any]],
               placements: list[pods.Placement], t: float) -> None:
        hostlimits.ensure_receive_buffers(self.workdir)  # before any port exists
        topology.underlay_up(state)
        for node in state.nodes:
            topology.node_up(state, node, with_controller=state.flows == "controller")
            state.save()
        topology.seed_tunnel_arp(state)
        if state.external:
            topology.external_up(state)
        t = self._phase("nodes", t)
        store = Store(state.manifests)
        for node in state.nodes:
            store.write(node_manifest(node.name, node.address, node.pod_cidrs))
        for ref, body in objects.items():
            if ref.kind != "Pod":
                store.write(body)
        if state.flows == "controller":
            for node in state.nodes:
                controllers.start(state, node)
            state.save()
        t = self._phase("controllers", t)
        self._create_pods(state, [(p, objects[ObjectRef("Pod", p.pod.namespace, p.pod.name)]) for p in placements])
        t = self._phase("pods", t)
        self._realize(state)
        self._phase("realized", t)

    def _create_pods(self, state: LabState, items: list[tuple[pods.Placement, dict[str, Any]]],
                     publish: bool = True) -> list[PodState]:
        """CNI ADD in parallel (host-local locks its own store), then servers, then the
        manifests with node and IP, as a kubelet reports pod status."""
        nodes = [p.node for p in state.pods.values()] + [placement.node for placement, _ in items]
        hostlimits.ensure_capacity(self.workdir, nodes)
        with ThreadPoolExecutor(CNI_PARALLEL) as pool:
            futures = [pool.submit(pods.add_pod, state, placement) for placement, _ in items]
            created = []
            errors = []
            for future in futures:
                try:
                    created.append(future.result())
                except Exception as exc:
                    errors.append(exc)
        for pod in created:
            pod.published = publish
            state.pods[pod.key] = pod
        state.save()
        if errors:
            raise errors[0]
        pods.start_servers(state, created)
        state.save()
        if publish:
            store = Store(state.manifests)
            for pod, (_, body) in zip(created, items, strict=True):
                store.write(with_pod_status(body, pod.node, pod.ips))
        return created

    def down(self) -> float:
        with locked(self.workdir):
            return cleanup.teardown(self.workdir)

    # ------------------------------------------------------------------ apply / delete

    def apply(self, paths: Sequence[Path]) -> list[str]:
        """Create or update objects; returns one line per object (kubectl style)."""
        self.timings.clear()
        t = time.monotonic()
        objects = _unique(read_objects(paths))
        t = self._phase("read", t)
        with locked(self.workdir):
            state = self.state()
            store = Store(state.manifests)
            done: list[str] = []
            new: list[tuple[Pod, dict[str, Any]]] = []
            for ref, body in objects.items():
                if ref.kind == "Pod" and ref.key not in state.pods:
                    new.append((_parsed_pod(body), body))
                    continue
                if ref.kind == "Pod":
                    existed = store.get(ref) is not None
                    self._update_pod(state, state.pods[ref.key], body)
                else:
                    existed = store.write(body)
                done.append(f"{ref} {'configured' if existed else 'created'}")
            if new:
                load = {n.name: sum(p.node == n.name for p in state.pods.values()) for n in state.nodes}
                placements = pods.place([p for p, _ in new], state.nodes, load)
                bodies = {(p.namespace, p.name): b for p, b in new}
                self._create_pods(state, [(pl, bodies[(pl.pod.namespace, pl.pod.name)]) for pl in placements])
                done += [f"Pod {pl.pod.namespace}/{pl.pod.name} created on {pl.node}" for pl in placements]
            t = self._phase("write", t)
            self._realize(state)
            self._phase("wait", t)
            return done

    def _update_pod(self, state: LabState, pod: PodState, body: dict[str, Any]) -> None:
        """In place, as Kubernetes does: labels (and ports) change, namespace/node/IP stay."""
        ports = pods.served_ports(_parsed_pod(body))
        if ports != pod.ports:
            pods.stop_server(state, pod)
            pod.ports = ports
            pods.start_servers(state, [pod])
        Store(state.manifests).write(with_pod_status(body, pod.node, pod.ips))
        pod.published = True
        state.save()

    def create_unpublished(self, paths: Sequence[Path]) -> list[PodState]:
        """Test hook: pods attached by the CNI plugin and serving, whose manifests are not
        written yet (a kubelet that has not reported the pod's IP). A later `apply` of the
        same manifests publishes them in place."""
        objects = _unique(read_objects(paths))
        with locked(self.workdir):
            state = self.state()
            load = {n.name: sum(p.node == n.name for p in state.pods.values()) for n in state.nodes}
            placements = pods.place([_parsed_pod(b) for r, b in objects.items() if r.kind == "Pod"], state.nodes, load)
            items = [(pl, objects[ObjectRef("Pod", pl.pod.namespace, pl.pod.name)]) for pl in placements]
            return self._create_pods(state, items, publish=False)

    def restart_controller(self, node: str) -> None:
        """Test hook: stop and start one node's controller (flows stay: fail_mode=secure)."""
        with locked(self.workdir):
            state = self.state()
            controllers.restart(state, state.node(node))
            state.save()

    def delete(self, paths: Sequence[Path]) -> list[str]:
        objects = _unique(read_objects(paths))
        with locked(self.workdir):
            state = self.state()
            store = Store(state.manifests)
            done: list[str] = []
            gone_pods: list[PodState] = []
            for ref in objects:
                targets = [ref]
                if ref.kind == "Namespace":  # its pods and policies go with it
                    targets = [r for r in store.refs() if r.namespace == ref.name] + [ref]
                for target in targets:
                    if store.remove(target):
                        done.append(f"{target} deleted")
                        if target.kind == "Pod" and target.key in state.pods:
                            gone_pods.append(state.pods[target.key])
                    elif target is ref:
                        done.append(f"{target} not found")
            for pod in gone_pods:
                pods.delete_pod(state, pod)
                del state.pods[pod.key]
                state.save()
            self._realize(state)
            return done

    # ------------------------------------------------------------------ probes

    def cluster(self) -> ClusterState:
        from sdn_netpol.policy.state import ClusterState

        return ClusterState.from_parse(Store(self.state().manifests).parse())

    def probe(self, protocol: str, port: int, timeout: float = probe.TIMEOUT, family: int | None = None) -> ProbeReport:
        """Every pod to every pod on PROTOCOL/PORT with real packets of `family` (default:
        the lab's first), next to the engine's matrix in that family."""
        from sdn_netpol.policy.matrix import Matrix, build_matrix
        from sdn_netpol.policy.verdict import FamilyError

        state = self.state()
        asked, family = family, self._family(state, family)
        # the engine in that family; an IPv4 lab probed without --family: the contract's shape
        explicit = None if asked is None and state.families == (4,) else family
        try:
            expected = build_matrix(self.cluster(), cast(Protocol, protocol.upper()), port, explicit)
        except FamilyError as exc:
            raise LabError(f"--family {family}: {exc}") from exc
        names = [p for p in expected.pods if p in state.pods]
        probes = [probe.Probe(s, d, state.pods[s].netns, _address(state.pods[d], family)) for s in names for d in names]
        start = time.monotonic()
        outcomes = probe.run_probes(probes, protocol, port, timeout)
        seconds = time.monotonic() - start
        result = {(p.source, p.destination): o for p, o in outcomes.items()}
        allowed = {s: {d: result.get((s, d), "missing") in probe.REACHABLE for d in expected.pods}
                   for s in expected.pods}
        measured = Matrix(expected.protocol, port, expected.pods, allowed, expected.family, expected.family_shown)
        return ProbeReport(measured, expected, measured.differences(expected), seconds, result)

    @staticmethod
    def _family(state: LabState, family: int | None) -> int:
        if family is None:
            return state.families[0]
        if family not in state.families:
            have = " and ".join(f"IPv{f}" for f in state.families)
            raise LabError(f"--family {family}: this lab's pods have no IPv{family} address, only {have} "
                           f"(it was brought up with --ip-family {state.ip_family})")
        return family

    def probe_external(self, protocol: str, port: int) -> list[ExternalResult]:
        """From each external address to every pod (the ipBlock side of a policy)."""
        from sdn_netpol.policy.verdict import Endpoint, decide

        state = self.state()
        if not state.external:
            return []
        cluster = self.cluster()
        targets = {f"{p.namespace}/{p.name}": p for p in cluster.pods if f"{p.namespace}/{p.name}" in state.pods}
        probes = [probe.Probe(src, key, state.external_netns, _address(state.pods[key], 4), src_ip=src)
                  for src in state.external for key in sorted(targets)]
        outcomes = probe.run_probes(probes, protocol, port)
        results = []
        for p in probes:
            verdict = decide(cluster, Endpoint(ip=IPAddress(p.source)), Endpoint(pod=targets[p.destination]),
                             cast(Protocol, protocol.upper()), port)
            results.append(ExternalResult(p.source, p.destination, outcomes[p], verdict.allowed))
        return results

    # ------------------------------------------------------------------ datapath

    def verify(self) -> dict[str, VerifyReport]:
        """Per node: every megaflow re-translated through the current tables (ofproto/trace
        of its own key); the stale ones are those still contradicted after a revalidator
        round (a megaflow the revalidators merely had not reached yet is no finding)."""
        from sdn_netpol.ovs import datapath
        from sdn_netpol.ovs.trace import Tracer

        state = self.state()
        reports = {}
        for node in state.nodes:
            with Tracer(OvsInstance(Path(node.rundir))) as unixctl:
                report = datapath.verify(unixctl)
                if report.stale:
                    unixctl.call("revalidator/wait")
                    report = datapath.recheck(unixctl, report)
            reports[node.name] = report
        return reports

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        state = self.state()
        nodes = []
        for node in state.nodes:
            entry: dict[str, Any] = {"name": node.name, "netns": node.netns, "address": node.address,
                                     "pod_cidr": node.pod_cidr, "pod_cidrs": node.pod_cidrs,
                                     "controller_running": False, "controller": None}
            if state.flows == "controller":
                entry["controller_running"] = procs.alive(node.controller_pid)
                try:
                    entry["controller"] = controllers.status(node)
                except (OSError, ValueError) as exc:
                    entry["controller_error"] = str(exc)
            nodes.append(entry)
        pod_rows = {k: {"node": p.node, "ip": p.ip, "ips": p.ips, "netns": p.netns,
                        "server_running": procs.alive(p.server_pid),
                        "ports": [f"{proto}:{port}" for proto, port in p.ports]} for k, p in sorted(state.pods.items())}
        return {"workdir": state.workdir, "tunnel": state.tunnel, "flows": state.flows,
                "ip_family": state.ip_family, "nodes": nodes,
                "pods": pod_rows, "external": state.external}
