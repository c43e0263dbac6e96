"""The faults of the chaos runner (chaos.py), each injected on one node of a running ChaosRun.

Every fault returns a FaultResult measured by `ChaosRun.measure`: the episode starts when the
fault is injected and ends at convergence (a probe round equal to the engine's matrix, every
node realized). Processes are killed with SIGKILL by their pid, never by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sdn_netpol.lab import controllers, netns, procs, topology
from sdn_netpol.lab.chaos import ChaosRun, FaultResult, _policy, base_policies, metric_sum
from sdn_netpol.lab.state import OFP_PORT, NodeState
from sdn_netpol.ovs.instance import daemon_pids

DEAD_TIMEOUT = 15.0
RELAY_PORT = OFP_PORT + 2  # the controller's listen port while a relay sits in front of it
API_PORT = 6443  # inside a node: the relay to the API server in the root namespace
DISK_BYTES = 4 * 1024 * 1024


def _kill(pid: int | None) -> None:
    """SIGKILL one pid and wait until it is gone (or a zombie)."""
    if pid is None or not procs.alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not procs.wait_for(lambda: not procs.alive(pid), DEAD_TIMEOUT):
        raise RuntimeError(f"pid {pid} survived SIGKILL for {DEAD_TIMEOUT} s")


def start_controller(run: ChaosRun, node: NodeState, extra: tuple[str, ...] = (), log: Path | None = None) -> None:
    controllers.start(run.state, node, extra, log)
    run.set_controller(node, node.controller_pid)


def kill_controller(run: ChaosRun, node: NodeState) -> None:
    _kill(run.node(node.name).controller_pid)


# ------------------------------------------------------------------ OVS daemons


def restart_vswitchd(node: NodeState) -> None:
    """What a node's ovs-vswitchd needs when it comes back: its bridges (from OVSDB), the node
    address on the br-phy tap (the tap died with it) and the tunnel neighbours."""
    inst = topology.ovs(node)
    inst.restart_vswitchd()
    netns.add_address(node.netns, "br-phy", f"{node.address}/{topology.UNDERLAY_PLEN}")
    netns.set_up(node.netns, "br-phy")


def _seed_arp(run: ChaosRun) -> None:
    topology.seed_tunnel_arp(run.state)


def controller_kill(run: ChaosRun, node: NodeState) -> FaultResult:
    def inject() -> str:
        kill_controller(run, node)
        start_controller(run, node)
        return ""
    return run.measure("controller kill -9", node, inject)


def vswitchd_kill(run: ChaosRun, node: NodeState) -> FaultResult:
    def inject() -> str:
        for pid in daemon_pids(Path(node.rundir).resolve(), "ovs-vswitchd"):
            _kill(pid)
        restart_vswitchd(node)
        _seed_arp(run)
        return ""
    return run.measure("ovs-vswitchd kill -9", node, inject)


def ovsdb_kill(run: ChaosRun, node: NodeState) -> FaultResult:
    def inject() -> str:
        for pid in daemon_pids(Path(node.rundir).resolve(), "ovsdb-server"):
            _kill(pid)
        run.churn.wait_realized(run.churn.step(), deadline=5.0)  # a change while OVSDB is away
        topology.ovs(node).restart_ovsdb()
        return ""
    return run.measure("ovsdb-server kill -9", node, inject)


def controller_before_switch(run: ChaosRun, node: NodeState) -> FaultResult:
    """OVS (both daemons) and the controller die; the controller comes back first, OVS later."""
    def inject() -> str:
        rundir = Path(node.rundir).resolve()
        for name in ("ovs-vswitchd", "ovsdb-server"):
            for pid in daemon_pids(rundir, name):
                _kill(pid)
        kill_controller(run, node)
        start_controller(run, node)
        up = procs.wait_for(lambda: _answers(run.node(node.name)), 30.0, interval=0.2)
        topology.ovs(node).restart_ovsdb()
        restart_vswitchd(node)
        _seed_arp(run)
        return "" if up else "the controller did not answer /status before OVS came back"
    return run.measure("controller before OVS", node, inject)


def _answers(node: NodeState) -> bool:
    try:
        controllers.status(node)
    except (OSError, ValueError):
        return False
    return True


# ------------------------------------------------------------------ a relay (netns to netns)


class Relay:
    """TCP from `listen` in one namespace to `target` in another, in threads of this process.
    `arm(n)`: cut every relayed connection once the target side has sent n more bytes."""

    def __init__(self, listen_ns: str | None, listen: tuple[str, int], target_ns: str | None,
                 target: tuple[str, int]) -> None:
        self.target_ns, self.target = target_ns, target
        self.server = netns.socket_in(listen_ns, socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not procs.wait_for(lambda: self._bind(listen), 15.0, interval=0.1):
            holders = subprocess.run(["ip", "netns", "exec", listen_ns or "", "ss", "-tlnp"] if listen_ns
                                     else ["ss", "-tlnp"], capture_output=True, text=True, check=False).stdout
            self.server.close()
            raise OSError(errno.EADDRINUSE, f"{listen} stays in use:\n{holders}")
        self.server.listen(16)
        self.budget: int | None = None
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _bind(self, listen: tuple[str, int]) -> bool:
        try:
            self.server.bind(listen)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return False
        return True

    def arm(self, after_bytes: int) -> None:
        with self._lock:
            self.budget = after_bytes
            self.cut.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.server.accept()
            except OSError:
                return
            try:
                far = netns.socket_in(self.target_ns, socket.AF_INET, socket.SOCK_STREAM)
                far.settimeout(5)
                far.connect(self.target)
                far.settimeout(None)
            except OSError:
                near.close()
                continue
            with self._lock:
                self._socks += [near, far]
            threading.Thread(target=self._pump, args=(near, far, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_target: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_target:
                    with self._lock:
                        if self.budget is not None:
                            if len(data) >= self.budget:
                                dst.sendall(data[:self.budget])
                                self.budget = None
                                self.cut.set()
                                raise ConnectionAbortedError("cut")
                            self.budget -= len(data)
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    def _close_pair(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _close_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        self._close_pair(*socks)


def wide_policy() -> dict[str, Any]:
    """A change big enough to span many OpenFlow messages that changes no pod verdict: z/c
    admits everyone (every namespace) and 60 unrelated CIDRs."""
    peers: list[dict[str, Any]] = [{"namespaceSelector": {}}]
    peers += [{"ipBlock": {"cidr": f"10.50.{i}.0/24"}} for i in range(60)]
    return _policy("wide", "z", {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Ingress"],
                                 "ingress": [{"from": peers}]})


def mid_bundle(run: ChaosRun, node: NodeState) -> FaultResult:
    """The switch reaches its controller through a relay, which cuts the connection once the
    controller has sent 1500 bytes of a big change: the switch drops the open bundle and
    reconnects (the relay lets it) to a controller that must end exact."""
    kill_controller(run, node)
    relay = Relay(node.netns, ("127.0.0.1", OFP_PORT), node.netns, ("127.0.0.1", RELAY_PORT))
    try:
        start_controller(run, node, ("--ofp-listen", f"127.0.0.1:{RELAY_PORT}"))
        run.churn.wait_realized(run.churn.timeline.current().index)
        wide = wide_policy()

        def inject() -> str:
            relay.arm(1500)
            run.churn.write(wide)
            cut = relay.cut.wait(30)
            return "connection cut mid-change" if cut else "the relay never cut (change too small?)"
        result = run.measure("switch cut mid-bundle", node, inject)
        run.churn.wait_realized(run.churn.remove(wide))
    finally:
        kill_controller(run, node)
        relay.close()
        start_controller(run, node)
        run.churn.wait_realized(run.churn.timeline.current().index)
    return result


# ------------------------------------------------------------------ invalid manifest


def invalid_manifest(run: ChaosRun, node: NodeState) -> FaultResult:
    """A policy's next version is invalid (endPort with a named port): the last valid version
    stays enforced while the churn goes on; then a valid version replaces it."""
    good = base_policies()[0]
    bad = _policy(good["metadata"]["name"], good["metadata"]["namespace"], {
        **good["spec"], "ingress": [{**good["spec"]["ingress"][0],
                                     "ports": [{"protocol": "TCP", "port": "http", "endPort": 90}]}]})

    def inject() -> str:
        run.churn.write(bad, valid=False)
        changes = run.churn.changes
        churned = procs.wait_for(lambda: run.churn.changes >= changes + 2, 60.0, interval=0.2)
        invalid = _invalid_reported(run)
        run.churn.write(good)
        return (f"invalid reported by {invalid} node(s)"
                + ("" if churned else "; churn made fewer than 2 changes meanwhile"))
    return run.measure("manifest turns invalid", node, inject)


def _invalid_reported(run: ChaosRun) -> int:
    count = 0
    for node in run.state.nodes:
        with contextlib.suppress(OSError, ValueError):
            count += bool(controllers.status(node).get("invalid_objects"))
    return count


# ------------------------------------------------------------------ disk full


def disk_full(run: ChaosRun, node: NodeState) -> FaultResult:
    """The controller's log and audit log on a small tmpfs, which then fills up: it must go on
    enforcing (audit lines and log lines are lost, nothing else), and start again on it."""
    mount = run.scratch / f"disk-{node.name}"
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "chaos-disk", str(mount)], check=True)
    filler = mount / "filler"
    flags = ("--audit-log", str(mount / "audit.jsonl"))
    try:
        kill_controller(run, node)
        start_controller(run, node, flags, log=mount / "controller.log")
        run.churn.wait_realized(run.churn.timeline.current().index)

        def inject() -> str:
            written = _fill(filler)
            changes = run.churn.changes
            procs.wait_for(lambda: run.churn.changes >= changes + 2, 60.0, interval=0.2)
            alive = procs.alive(run.node(node.name).controller_pid)
            kill_controller(run, node)  # and a start on the full disk
            start_controller(run, node, flags, log=mount / "controller.log")
            return f"full ({written}); controller {'alive' if alive else 'DIED'} on the full disk"
        result = run.measure("disk full (log, audit)", node, inject)
    finally:
        kill_controller(run, node)
        start_controller(run, node)
        with contextlib.suppress(OSError):
            filler.unlink()
        # a controller just killed may still hold its log for a moment: detach lazily then
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        run.churn.wait_realized(run.churn.timeline.current().index)
    return result


def _fill(path: Path) -> str:
    """Fill the file system of `path` up; says what was on it and what the filler took."""
    before = {p.name: p.stat().st_size for p in path.parent.iterdir() if p.is_file()}
    written = 0
    try:
        with path.open("wb") as out:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
                written += 4096
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    return f"{before} before, filler {written} B"


# ------------------------------------------------------------------ API watches (kube source)


def kube_faults(run: ChaosRun, node: NodeState, faults: list[str]) -> list[FaultResult]:
    """The API-watch faults, one after the other, during one stay of the node on the kube source."""
    def injector(kind: str) -> Callable[[], str]:
        return lambda: _watch_fault(run, node, kind)

    with kube_source(run, node):
        return [run.measure(f"API watch {KUBE_FAULTS[f]}", node, injector(KUBE_FAULTS[f])) for f in faults]


def _watch_fault(run: ChaosRun, node: NodeState, kind: str) -> str:
    kube = run.churn.kube
    assert kube is not None
    if kind == "stalled":
        kube.stall_watches(6.0)
        run.churn.step()  # a change the stalled watches withhold
        return "watches stalled 6 s"
    if kind == "dropped":
        kube.drop_watches()
        run.churn.step()
        return "watches dropped"
    metric, label = "sdn_netpol_watch_restarts_total", 'reason="expired"'
    expired = metric_sum(run.node(node.name), metric, label)
    kube.stall_watches(60.0)
    run.churn.step()  # lost with the history
    kube.compact()
    kube.drop_watches()
    relisted = procs.wait_for(lambda: metric_sum(run.node(node.name), metric, label) >= expired + 4, 60.0,
                              interval=0.2)
    kube.stall_watches(0)
    return "410 Gone on every watch, relisted" if relisted else "no 410 seen on every watch"


@contextlib.contextmanager
def kube_source(run: ChaosRun, node: NodeState) -> Iterator[None]:
    """The node's controller on `--source kube` against the attached API server (reached
    through a relay inside the node namespace), the cluster mirrored into it first."""
    churn = run.churn
    kube = churn.kube
    assert kube is not None, "no API server attached (chaos.setup(..., kube=...))"
    host, _, port = kube.url.rpartition("//")[2].partition(":")
    relay = Relay(node.netns, ("127.0.0.1", API_PORT), None, (host, int(port)))
    config = run.scratch / f"kubeconfig-{node.name}"
    config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        f' "clusters": [{{"name": "c", "cluster": {{"server": "http://127.0.0.1:{API_PORT}"}}}}],'
        ' "users": [{"name": "u", "user": {}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}')
    with churn.lock:
        churn.kube_nodes = {node.name}
        kill_controller(run, node)
        start_controller(run, node, ("--source", "kube", "--kubeconfig", str(config),
                                     "--watch-read-timeout", "2"))
    try:
        churn.wait_realized(churn.timeline.current().index)
        yield
    finally:
        with churn.lock:
            churn.kube_nodes = set()
            kill_controller(run, node)
            start_controller(run, node)
        relay.close()
        churn.wait_realized(churn.timeline.current().index)


FAULTS: dict[str, Callable[[ChaosRun, NodeState], FaultResult]] = {
    "controller-kill": controller_kill,
    "vswitchd-kill": vswitchd_kill,
    "ovsdb-kill": ovsdb_kill,
    "controller-before-switch": controller_before_switch,
    "mid-bundle": mid_bundle,
    "invalid-manifest": invalid_manifest,
    "disk-full": disk_full,
}
KUBE_FAULTS = {"watch-stall": "stalled", "watch-drop": "dropped", "watch-410": "expired"}
ALL_FAULTS = (*FAULTS, *KUBE_FAULTS)


def run_faults(run: ChaosRun, faults: Sequence[str], rounds: int = 1,
               on_result: Callable[[FaultResult], None] = lambda _r: None) -> list[FaultResult]:
    """Each fault once per round, on node (round + i) mod N; the API-watch faults of a round
    share one stay of that node on the kube source. Results in order."""
    nodes = [n.name for n in run.state.nodes]
    out: list[FaultResult] = []
    for r in range(rounds):
        watch = [f for f in faults if f in KUBE_FAULTS]
        for i, name in enumerate(faults):
            node = run.node(nodes[(r + i) % len(nodes)])
            if name in KUBE_FAULTS:
                if name != watch[0]:
                    continue
                results = kube_faults(run, node, watch)
            else:
                results = [FAULTS[name](run, node)]
            for result in results:
                on_result(result)
            out += results
    return out
