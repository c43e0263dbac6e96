"""Realization on a real OVS: how long a change takes to reach the switch, and how fast
flows go in compared with `ovs-ofctl --bundle add-flows`.

    .venv/bin/python benchmarks/realize.py                  # 1k and 10k pods × 1,000 policies
    .venv/bin/python benchmarks/realize.py --pods 1000      # one size
    .venv/bin/python benchmarks/realize.py --samples 10     # fewer samples per scenario
    .venv/bin/python benchmarks/realize.py --pods 50000 --policies 5000 --latency-only   # issue 17.3
    .venv/bin/python benchmarks/realize.py --pods 50000 --policies 5000 --latency-only --nodes 200
    REALIZE_PROFILE=1 .venv/bin/python benchmarks/realize.py --pods 10000   # + cProfile of the realizer

The controller's own parts (store, port map, realizer, os-ken app, OVSDB monitor) run in
this process, against a userspace OVS in a private network namespace; the source is left
out and changes are handed to the store as a source would. Latency = from that hand-over to
the barrier reply acknowledging the bundle (the realization histogram's definition), for
a local pod add (its port already attached, as after a CNI ADD), a pod relabel and a
policy add. Full resync: OVS restarted (vswitchd only), from the switch's reconnection to
the barrier after every flow is back; and a controller's read of a full table. Install
rate: the flows of the first full install (ofwire encoding, cold cache) and of the
resync (bytes cached), against `ovs-ofctl --bundle add-flows` of the same flows on the same
bridge in the same run. Clusters: tests/synthetic_cluster.py (100 namespaces, 10 nodes,
ten policy shapes), node0's view, as in benchmarks/compile.py; `--nodes N` spreads the pods
over N nodes instead (at 50k pods, 200 nodes give node0 250 local pods, a kubelet's
order of magnitude, where 10 give it 5,000 OVS ports). Each size runs in its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netaddr import IPAddress

from sdn_netpol.compiler.diff import diff
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import render_flows
from sdn_netpol.compiler.topology import mac_for_ip
from sdn_netpol.controller import app, wire
from sdn_netpol.controller.audit import AuditLog
from sdn_netpol.controller.config import Config
from sdn_netpol.controller.nodes import NodeInfo
from sdn_netpol.controller.portmap import InterfaceMonitor
from sdn_netpol.controller.runtime import Parts, build
from sdn_netpol.controller.store import StoredObject, node_key
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Pod
from sdn_netpol.model.parse import ObjectKey, object_key
from sdn_netpol.policy.state import ClusterState
from tests.controller_fixtures import BRIDGE, Switch, switch, wait_for
from tests.synthetic_cluster import N_NODES, policies, policy_doc, synthetic_state

NODE = "node0"
N_POLICIES = 1_000
OFPORT_BASE = 1_000  # clear of the fixture's tunnel port (100)
TARGET_P99_MS, TARGET_RATIO = 100.0, 0.5


class Probe:
    """Timestamps of the controller's milestones, taken from inside (wrapped methods)."""

    def __init__(self, parts: Parts) -> None:
        self.realized: queue.Queue[tuple[float, int, int]] = queue.Queue()
        self.connected_at = 0.0
        self.ready_at = 0.0
        self.phases: dict[str, float] = {}
        board, switch_, realizer = parts.board, parts.switch, parts.realizer
        set_realized, connected, on_ready = board.set_realized, switch_.connected, switch_.on_ready
        compile_, send = realizer._compile, realizer._send

        def _set_realized(realized: Any, mods: int) -> None:
            set_realized(realized, mods)
            self.realized.put((time.monotonic(), realized.generation, mods))

        def _connected(dp: Any) -> None:
            self.connected_at = time.monotonic()
            connected(dp)

        def _ready() -> None:
            self.ready_at = time.monotonic()
            on_ready()

        board.set_realized = _set_realized  # type: ignore[method-assign,assignment]
        switch_.connected = _connected  # type: ignore[method-assign,assignment]
        switch_.on_ready = _ready
        realizer._compile = self._timed("compile", compile_)  # type: ignore[method-assign]
        realizer._send = self._timed("send", send)  # type: ignore[method-assign]

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            start = time.monotonic()
            try:
                return fn(*args)
            finally:  # summed over the realizations of one change (a no-op one may follow)
                self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - start
        return wrapper

    def wait_generation(self, generation: int, timeout: float = 300.0) -> tuple[float, int]:
        deadline = time.monotonic() + timeout
        while True:
            at, gen, mods = self.realized.get(timeout=max(0.0, deadline - time.monotonic()))
            if gen >= generation:
                return at, mods

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.realized.get_nowait()


def cluster(n_pods: int, n_policies: int = N_POLICIES, n_nodes: int = N_NODES) -> tuple[ClusterState, list[NodeInfo]]:
    nodes = [NodeInfo(f"node{k}", IPAddress(f"192.168.{k // 250}.{k % 250 + 1}")) for k in range(n_nodes)]
    return synthetic_state(n_pods, n_policies, n_nodes), nodes


def attach_ports(sw: Switch, pods: list[Pod]) -> None:
    """Internal ports with the CNI shim's external_ids, in batches of 250 per transaction,
    not waiting for vswitchd to create each batch (at 5k ports on a loaded machine one
    batch's wait outlasted ovs-vsctl's 10 s timeout, and so did the database transaction: 120 s);
    start_controller waits for them all."""
    args: list[str] = []
    for i, pod in enumerate(pods):
        ip = pod.ips[0]
        name = f"q{i}"
        args += ["--", "add-port", BRIDGE, name, "--", "set", "Interface", name, "type=internal",
                 f"ofport_request={OFPORT_BASE + i}", f'external_ids:iface-id="{pod.namespace}/{pod.name}"',
                 f'external_ids:pod-ip="{ip}"', f'external_ids:pod-mac="{mac_for_ip(ip)}"']
        if len(args) > 250 * 12:
            sw.ovs.vsctl("--no-wait", "--timeout=120", *args)
            args = []
    if args:
        sw.ovs.vsctl("--no-wait", "--timeout=120", *args)


def objects_of(state: ClusterState, nodes: list[NodeInfo]) -> dict[ObjectKey, StoredObject]:
    found: dict[ObjectKey, StoredObject] = {}
    for group in (state.namespaces, state.pods, state.policies):
        found.update({object_key(o): o for o in group})
    found.update({node_key(n.name): n for n in nodes})
    return found


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "n": len(ordered)}


class Run:
    """One size: OVS, the controller's parts, the scenarios."""

    def __init__(self, sw: Switch, parts: Parts, probe: Probe, state: ClusterState) -> None:
        self.sw, self.parts, self.probe, self.state = sw, parts, probe, state
        self.phases: dict[str, list[float]] = {"compile": [], "send": []}

    def change(self, key: ObjectKey, obj: StoredObject) -> tuple[float, int]:
        """Hand one object to the store; seconds until the barrier acknowledged it, flow mods."""
        self.probe.drain()
        self.probe.phases.clear()
        start = time.monotonic()
        self.parts.store.put(key, obj)
        at, mods = self.probe.wait_generation(self.parts.store.generation)
        for name in self.phases:
            self.phases[name].append(self.probe.phases.get(name, 0.0))
        return at - start, mods

    def scenario(self, name: str, changes: Iterator[tuple[ObjectKey, StoredObject]]) -> dict[str, Any]:
        for phase in self.phases.values():
            phase.clear()
        results = [self.change(key, obj) for key, obj in changes]
        print(f"  {name} samples (ms): {[round(r[0] * 1000) for r in results]}; compile: "
              f"{[round(c * 1000) for c in self.phases['compile']]}", file=sys.stderr)
        out = {"scenario": name, **percentiles([r[0] for r in results]),
               "flow_mods_mean": round(statistics.mean(r[1] for r in results), 1)}
        out.update({f"{p}_p50_ms": round(statistics.median(v) * 1000, 1) for p, v in self.phases.items()})
        print(f"  {name}: {out}", file=sys.stderr)
        return out


def pod_adds(spare: list[Pod]) -> Iterator[tuple[ObjectKey, StoredObject]]:
    for pod in spare:
        yield object_key(pod), pod


def relabels(state: ClusterState, count: int) -> Iterator[tuple[ObjectKey, StoredObject]]:
    local = [p for p in state.pods if p.node_name == NODE]
    for i in range(count):
        pod = local[(i * 37) % len(local)]
        app_label = f"a{(int(pod.labels.get('app', 'a0')[1:]) + 1 + i) % 20}"
        yield object_key(pod), replace(pod, labels=Labels({**pod.labels, "app": app_label}))


def policy_adds(count: int, n_policies: int = N_POLICIES) -> Iterator[tuple[ObjectKey, StoredObject]]:
    for i in range(count):
        (policy,) = policies([{**policy_doc(n_policies + i),
                               "metadata": {"name": f"bench-{i}", "namespace": f"ns-{i % 100:03d}"}}])
        yield object_key(policy), policy


def spare_pods(n_pods: int, count: int, n_nodes: int = N_NODES) -> list[Pod]:
    """Pods that do not exist yet, on node0, with ports attached before they are added."""
    base = synthetic_state(n_pods + (count + 1) * n_nodes, 0, n_nodes).pods
    fresh = [p for p in base if int(p.name.split("-")[1]) >= n_pods and p.node_name == NODE]
    return fresh[:count]  # the hash spreads pods unevenly: a few fewer than `count`, at times


def start_controller(sw: Switch, pods: list[Pod], config: Config | None = None) -> tuple[Parts, Probe]:
    """The controller's parts in this process, connected to `sw`, its pods' ports attached
    (the source is left out: changes go to the store as a source would hand them over)."""
    sw.set_controller(6653)
    attach_ports(sw, pods)
    parts = build(config or Config(node=NODE, source="bench", ofp_listen=f"{sw.root_ip}:6653",
                                   ovsdb=f"unix:{sw.ovs.db_sock}"))
    probe = Probe(parts)
    parts.realizer.start()
    InterfaceMonitor(f"unix:{sw.ovs.db_sock}", BRIDGE, parts.ports).start()
    no_audit = AuditLog(NODE, None, lambda: parts.realizer.realized_state)  # no namespace audited here
    app.start(f"{sw.root_ip}:6653", app.Link(parts.switch, parts.ports, no_audit))
    wait_for(lambda: len(parts.ports.view().switch_ports) >= len(pods), 60 + len(pods) / 20, "ports")
    return parts, probe


def install(parts: Parts, probe: Probe, state: ClusterState, nodes: list[NodeInfo]) -> tuple[float, int]:
    """The whole cluster handed to the store at once; (when realized, flow mods sent)."""
    parts.store.replace(("Namespace", "Pod", "NetworkPolicy", "Node"), objects_of(state, nodes), {}, "0",
                        synced=True)
    return probe.wait_generation(parts.store.generation)


def measure(n_pods: int, samples: int, n_policies: int = N_POLICIES, latency_only: bool = False,
            n_nodes: int = N_NODES) -> dict[str, Any]:
    """`latency_only`: the three change scenarios, without the OVS restart and the install
    rates (at 50k pods × 5,000 policies those re-send ~140k flows nine times)."""
    state, nodes = cluster(n_pods, n_policies, n_nodes)
    local = [p for p in state.pods if p.node_name == NODE]
    spare = spare_pods(n_pods, samples, n_nodes)
    with tempfile.TemporaryDirectory(prefix="realize-bench-") as tmp, switch(Path(tmp)) as sw:
        parts, probe = start_controller(sw, local + spare)
        start = time.monotonic()
        at, flows = install(parts, probe, state, nodes)
        first = {"seconds": round(at - start, 3), "flows": flows, "compile_s": round(probe.phases["compile"], 3),
                 "send_s": round(probe.phases["send"], 3)}
        print(f"  first install: {first}", file=sys.stderr)
        run = Run(sw, parts, probe, state)
        result: dict[str, Any] = {"pods": n_pods, "policies": n_policies, "nodes": n_nodes, "local_pods": len(local),
                                  "flows": flows, "first_install": first}
        profiler = _profile_realizer(parts) if os.environ.get("REALIZE_PROFILE") else None
        result["latency"] = [run.scenario("pod add", pod_adds(spare)),
                             run.scenario("pod relabel", relabels(state, samples)),
                             run.scenario("policy add", policy_adds(samples, n_policies))]
        if profiler is not None:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumtime").print_stats(40)
        if latency_only:
            return result
        result["resync"] = resync(sw, parts, probe)
        result["install"] = install_rate(sw, parts)
        return result


def _profile_realizer(parts: Parts) -> cProfile.Profile:
    """REALIZE_PROFILE=1: where the realizer thread spends the latency scenarios (stderr)."""
    profiler = cProfile.Profile()
    realize = parts.realizer.realize

    def profiled(since: float | None) -> None:
        profiler.runcall(realize, since)

    parts.realizer.realize = profiled  # type: ignore[method-assign]
    return profiler


def resync(sw: Switch, parts: Parts, probe: Probe) -> dict[str, Any]:
    """OVS restarted: from the reconnection to the barrier after everything is back."""
    session = parts.switch.session()
    assert session is not None and session.installed is not None
    held = len(session.installed)
    probe.drain()
    probe.phases.clear()
    sw.ovs.restart_vswitchd()
    at, mods = probe.wait_generation(parts.store.generation)
    out = {"flows": mods, "seconds": round(at - probe.connected_at, 3),
           "read_s": round(probe.ready_at - probe.connected_at, 3), "compile_s": round(probe.phases["compile"], 3),
           "send_s": round(probe.phases["send"], 3)}
    assert mods == held, (mods, held)
    # a restarted controller reads a full table first: drop the connection, time the re-read
    probe.drain()
    session = parts.switch.session()
    assert session is not None
    session.close("benchmark: re-read a full table")
    wait_for(lambda: probe.ready_at > at, 60, "the switch to reconnect")
    out["read_full_table_s"] = round(probe.ready_at - probe.connected_at, 3)
    print(f"  resync: {out}", file=sys.stderr)
    return out


def install_rate(sw: Switch, parts: Parts) -> dict[str, Any]:
    """The same flows into the same emptied bridge, best of three each: `ovs-ofctl --bundle
    add-flows`, the controller with every FlowMod already serialised (warm: what a resync
    sends), and with a fresh cache (cold: every flow encoded by compiler/ofwire.py)."""
    session = parts.switch.session()
    assert session is not None and session.installed is not None
    flows: FlowSet = session.installed
    text = render_flows(flows)
    everything = wire.Change(diff(FlowSet(), flows))

    def timed(install: Callable[[], None]) -> float:
        best = float("inf")
        for _ in range(3):
            sw.ovs.ofctl("del-flows", BRIDGE)
            start = time.monotonic()
            install()
            best = min(best, time.monotonic() - start)
        return best

    ofctl = timed(lambda: sw.ovs.add_flows(BRIDGE, text))
    warm = timed(lambda: session.apply(everything, parts.realizer.cache, 120))
    cold = timed(lambda: session.apply(everything, wire.FlowModCache(), 120))
    assert sw.flows() == flows  # the bridge holds what the controller believes again
    out = {"flows": len(flows), "ovs_ofctl_bundle_s": round(ofctl, 3), "controller_warm_s": round(warm, 3),
           "controller_cold_s": round(cold, 3), "ratio_warm": round(ofctl / warm, 2),
           "ratio_cold": round(ofctl / cold, 2)}
    print(f"  install: {out}", file=sys.stderr)
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| pods × policies | flows (node0) | scenario | p50 ms | p99 ms | compile p50 ms | send+barrier p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for lat in r["latency"]:
            lines.append(f"| {r['pods']:,} × {r['policies']:,} | {r['flows']:,} | {lat['scenario']} | {lat['p50_ms']} "
                         f"| {lat['p99_ms']} | {lat['compile_p50_ms']} | {lat['send_p50_ms']} |")
    lines += ["", "| pods × policies | flows | first install s (compile / send) "
              "| OVS restart: resync s (read / send) | full-table read s | ovs-ofctl --bundle s "
              "| controller warm s (rate ratio) | controller cold s (ratio) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results if "resync" in r):
        f, s, i = r["first_install"], r["resync"], r["install"]
        lines.append(f"| {r['pods']:,} × {r['policies']:,} | {i['flows']:,} | {f['seconds']} ({f['compile_s']} / "
                     f"{f['send_s']}) | {s['seconds']} ({s['read_s']} / {s['send_s']}) | {s['read_full_table_s']} | "
                     f"{i['ovs_ofctl_bundle_s']} | {i['controller_warm_s']} ({i['ratio_warm']}×) | "
                     f"{i['controller_cold_s']} ({i['ratio_cold']}×) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, action="append", help="size(s); default 1000 and 10000")
    parser.add_argument("--samples", type=int, default=0, help="changes per scenario (default 50 at 1k, 20 at 10k)")
    parser.add_argument("--policies", type=int, default=N_POLICIES, help="policies (default 1,000)")
    parser.add_argument("--latency-only", action="store_true", help="no OVS restart, no install rates")
    parser.add_argument("--nodes", type=int, default=N_NODES,
                        help=f"nodes the pods spread over (default {N_NODES}: node0 holds a tenth of them)")
    parser.add_argument("--verbose", action="store_true", help="the controller's INFO log on stderr")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    sizes = args.pods or [1_000, 10_000]
    if args.one:
        n = sizes[0]
        print(json.dumps(measure(n, args.samples or (50 if n <= 1_000 else 20), args.policies, args.latency_only,
                                 args.nodes)), flush=True)
        os._exit(0)  # os-ken's threads are not daemons and cannot be stopped
    results = []
    for n in sizes:
        print(f"{n} pods × {args.policies} policies", file=sys.stderr)
        child = [sys.executable, __file__, "--one", "--pods", str(n), "--samples", str(args.samples),
                 "--policies", str(args.policies), "--nodes", str(args.nodes),
                 *(["--latency-only"] if args.latency_only else [])]
        out = subprocess.run([*child, *(["--verbose"] if args.verbose else [])], check=True, stdout=subprocess.PIPE,
                             text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
