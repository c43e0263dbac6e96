"""The realizer: one worker thread that makes the switch hold compile_node(state, node)
(compiled incrementally: policies a change cannot touch keep their previous resolution).

Every change (store mutation, port change, a switch that finished reading its table) marks
`Pending`; the worker waits a few ms so that a burst lands as one change, then takes one
snapshot of each side, compiles, diffs against the table the switch holds, and sends the
difference as ONE atomic bundle followed by a barrier. Only after the barrier does the
realized generation advance. Nothing is sent before the source has synced (an empty
store would mean "no policies": an open switch) or before both halves of the port map
are known; until then the switch keeps the flows it has (fail_mode=secure).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from operator import attrgetter

from sdn_netpol.compiler.compile import NodeCompilation, compile_node_incremental
from sdn_netpol.compiler.diff import FlowDiff, diff
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.topology import NodeContext
from sdn_netpol.controller import wire
from sdn_netpol.controller.config import Timing
from sdn_netpol.controller.datapath import DatapathGuard, DatapathUnsettled
from sdn_netpol.controller.gcpolicy import GcPolicy
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.nodes import NodeInfo, own_node_problem
from sdn_netpol.controller.portmap import NodeBindings, PortMap, realized_ports
from sdn_netpol.controller.status import Realized, StatusBoard
from sdn_netpol.controller.store import Snapshot, Store
from sdn_netpol.controller.switch import BundleRejected, Session, Switch, SwitchGone
from sdn_netpol.policy.state import ClusterState

LOG = logging.getLogger(__name__)
_TABLE = attrgetter("table")
IDLE_CHECK = 30.0  # seconds without a change before the idle-time chores (see gcpolicy.py)


class Pending:
    """'Something changed since …': a wake-up flag plus the time of the oldest unrealized change."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._since: float | None = None
        self._lock = threading.Lock()

    def mark(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def take(self) -> float | None:
        """Clear the flag; return when the oldest change being taken happened."""
        with self._lock:
            self._event.clear()
            since, self._since = self._since, None
        return since


class Realizer:
    def __init__(self, node: str, store: Store, ports: PortMap, switch: Switch, pending: Pending,
                 board: StatusBoard, metrics: Metrics, timing: Timing | None = None,
                 datapath: DatapathGuard | None = None) -> None:
        self.node = node
        self.store = store
        self.ports = ports
        self.switch = switch
        self.pending = pending
        self.board = board
        self.metrics = metrics
        self.timing = timing or Timing()
        self.datapath = datapath  # None only where no ovs-vswitchd exists (unit tests)
        self._unsettled = False  # a bundle went in, its megaflows are not settled yet
        self.realized_state: ClusterState | None = None  # what the switch enforces (for statistics)
        self.cache = wire.FlowModCache()
        self.gc = GcPolicy()
        self._bindings = NodeBindings(node)  # the port bindings, re-derived only for ports that changed
        self._compiled: tuple[int, NodeContext] | None = None
        self._compilation: NodeCompilation | None = None  # the next compile starts from it
        self._by_table: tuple[FlowSet, dict[int, int]] | None = None  # the last published flow counts
        self._retry = 0.0
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self.gc.install()
        self.thread = threading.Thread(target=self.run, name="realizer", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        self._stop.set()
        self.pending.mark()

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.pending.wait(IDLE_CHECK):
                self.gc.idle()
                continue
            time.sleep(self.timing.coalesce)
            since = self.pending.take()
            if self._stop.is_set():
                return
            if self.step(since):
                self._retry = 0.0
            elif self._retry:
                self._stop.wait(self._retry)
                self.pending.mark()

    def step(self, since: float | None) -> bool:
        """One realization attempt; False means "retry after a back-off"."""
        try:
            self.realize(since)
            return True
        except SwitchGone as exc:
            LOG.warning("switch gone during realization: %s; waiting for it to reconnect", exc)
            self.board.report("switch", str(exc))
            return True  # the reconnect (a new session reading its table) marks pending
        except DatapathUnsettled as exc:
            self._fail("datapath", f"flows installed, datapath not settled: {exc}")
        except BundleRejected as exc:
            self.metrics.bundles.labels(result="rejected").inc()
            self._fail("switch", f"bundle rejected, switch unchanged: {exc}")
        except Exception as exc:  # a compiler bug must not kill the worker; the switch stays as it is
            LOG.exception("realization failed")
            self._fail("realize", f"{type(exc).__name__}: {exc}")
        return False

    def _fail(self, place: str, message: str) -> None:
        LOG.error("%s", message)
        self.board.report(place, message)
        self._retry = min(max(self._retry * 2, self.timing.retry_min), self.timing.retry_max)

    def realize(self, since: float | None) -> None:
        snap = self.store.snapshot()
        view = self.ports.view()
        session = self.switch.session()
        self.board.observe(snap.synced)
        if not snap.synced or not view.complete or session is None or session.installed is None:
            return
        if self._node_problem(snap.nodes):
            return
        previous = self._compilation
        t0 = time.monotonic()
        with self.gc.realizing():  # not around the send: it waits for the switch
            state = snap.state
            t1 = time.monotonic()
            context = self._bindings.context(view, state, snap.nodes)
            compiled = self._compile(snap, context)
        t2 = time.monotonic()
        desired = compiled.flows
        # The compiler knows what changed since `previous`: if the switch holds exactly that,
        # no diff over the whole table is needed.
        fresh = previous is not None and compiled is not previous and session.installed is previous.flows
        known = compiled.change if fresh else None
        sent = self._send(session, session.installed, desired, known)
        session.installed, session.foreign = desired, ()
        self.cache.retain(desired)
        t3 = time.monotonic()
        self._settle(bool(sent))
        t4 = time.monotonic()
        self._publish(snap, context, desired, sent, since, self._table_counts(desired, previous, compiled))
        compiled.resolution.warm()  # realized already: the next pod change finds it built
        LOG.info("realized generation %d (source %s): state %.3f s, compile %.3f s, send %.3f s (%d flow mods), "
                 "settle %.3f s", snap.generation, snap.source_version[:19], t1 - t0, t2 - t1, t3 - t2,
                 sum(sent.values()), t4 - t3)

    def _node_problem(self, nodes: tuple[NodeInfo, ...]) -> bool:
        """Report what is wrong with this controller's Node; True: hold the switch as it is."""
        problem = own_node_problem(self.node, nodes)
        message = problem.message if problem else None
        if message and message != self.board.errors.get("node"):
            LOG.error("%s", message)
        self.board.report("node", message)
        return problem is not None and problem.hold

    def _settle(self, changed: bool) -> None:
        """The barrier says the tables changed; the datapath may still forward by the old
        ones.  Realized is published only once it cannot (controller/datapath.py)."""
        self._unsettled = self._unsettled or changed
        if self._unsettled and self.datapath is not None:
            self.datapath.settle()
        self._unsettled = False

    def _compile(self, snap: Snapshot, context: NodeContext) -> NodeCompilation:
        if self._compilation is not None and self._compiled == (snap.generation, context):
            return self._compilation
        self._compilation = compile_node_incremental(snap.state, context, self._compilation)
        self._compiled = (snap.generation, context)
        return self._compilation

    def _send(self, session: Session, installed: FlowSet, desired: FlowSet, known: FlowDiff | None) -> dict[str, int]:
        if installed is desired and not session.foreign:
            return {}
        deletes = tuple(wire.raw_delete(f.table, f.priority, f.match) for f in session.foreign)
        change = wire.Change(known if known is not None else diff(installed, desired), deletes)
        if not change:
            return {}
        timeout = self.timing.barrier_timeout + 0.001 * len(change)
        session.apply(change, self.cache, timeout)
        counts = change.counts()
        for command, n in counts.items():
            self.metrics.flow_mods.labels(command=command).inc(n)
        self.metrics.bundles.labels(result="committed").inc()
        LOG.info("bundle committed: %s", ", ".join(f"{n} {c}" for c, n in counts.items() if n))
        return counts

    def _table_counts(self, desired: FlowSet, previous: NodeCompilation | None,
                      compiled: NodeCompilation) -> dict[int, int]:
        """Flows per table, patched from the last published counts when the compile's change
        leads from the flows they counted to `desired`: counting 140k flows on every
        realization cost ~60 ms of a 50k-pod relabel's latency."""
        held = self._by_table
        if held is not None and held[0] is desired:
            return held[1]
        change = compiled.change
        if held is not None and change is not None and previous is not None and held[0] is previous.flows:
            base, counts = previous.flows, dict(held[1])
            for flow in change.adds:
                if base.get(flow.id) is None:  # an add can also be a cookie change of a held flow
                    counts[flow.table] = counts.get(flow.table, 0) + 1
            for flow in change.deletes:
                counts[flow.table] -= 1
                if not counts[flow.table]:
                    del counts[flow.table]
        else:
            counts = dict(Counter(map(_TABLE, desired.unordered())))  # C-level count, no sort
        self._by_table = (desired, counts)
        return counts

    def _publish(self, snap: Snapshot, context: NodeContext, desired: FlowSet, sent: dict[str, int],
                 since: float | None, by_table: dict[int, int]) -> None:
        realized = Realized(snap.generation, snap.source_version, time.time(), by_table,
                            realized_ports(context), snap.invalid)
        self.realized_state = snap.state
        self.board.set_realized(realized, sum(sent.values()))
        self.metrics.set_flow_counts(by_table)
        self.metrics.realized_generation.set(snap.generation)
        self.metrics.invalid_objects.set(len(snap.invalid))
        if since is not None:
            self.metrics.realization.observe(time.monotonic() - since)
        self.gc.realized()

    def healthy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()
