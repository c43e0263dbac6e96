"""The OpenFlow connection to the bridge: what its flow table holds, and changing it atomically.

A `Session` is one connection. On connect it reads the whole flow table (multipart flow
stats, possibly many replies flagged MORE) and only then is it ready: the realizer diffs
against what the switch really holds, never against what it believes it sent, so a
restarted controller sends nothing when nothing changed, a restarted OVS gets everything
back, and a connection lost mid-bundle (the switch discards uncommitted bundles) is
repaired by the next session's read. Nothing here ever flushes a table.

Threads: os-ken handlers (app.py) call the `on_*` methods from the app's event thread;
the realizer calls `Switch.session()` and `Session.apply()` from its own thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn_netpol.compiler.flow import Flow
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.osken import from_flow_stats
from sdn_netpol.compiler.pipeline import is_learned
from sdn_netpol.controller import wire
from sdn_netpol.controller.metrics import Metrics

LOG = logging.getLogger(__name__)
_XIDS = itertools.cycle(range(0x40000000, 0x7FFFFFFF))  # clear of os-ken's own handshake/echo xids
_BUNDLE_IDS = itertools.cycle(range(1, 0xFFFFFFFF))


class SwitchGone(Exception):
    """The connection ended (or stopped answering) before the change was acknowledged."""


class BundleRejected(Exception):
    """The switch refused the bundle; being atomic, it applied none of it."""


@dataclass(frozen=True)
class Foreign:
    """A switch entry that no Flow value expresses (timeouts, NORMAL, ...): to be deleted."""

    table: int
    priority: int
    match: Any
    reason: str


@dataclass
class _Bundle:
    bundle_id: int
    xids: frozenset[int]
    barrier_xid: int
    done: threading.Event = field(default_factory=threading.Event)
    committed: bool = False
    errors: list[str] = field(default_factory=list)


def _next_xid() -> int:
    return next(_XIDS)


class Session:
    """One connection; `installed` is None until the flow table has been read."""

    def __init__(self, datapath: Any) -> None:
        self.datapath = datapath
        self.alive = True
        self.installed: FlowSet | None = None
        self.foreign: tuple[Foreign, ...] = ()
        self._reading: list[Flow] = []
        self._reading_foreign: list[Foreign] = []
        self._stats_xid = _next_xid()
        self._bundles: dict[int, _Bundle] = {}
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.alive and self.installed is not None

    def request_flows(self) -> None:
        req = parser.OFPFlowStatsRequest(self.datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         0, 0, parser.OFPMatch())
        req.xid = self._stats_xid
        self.datapath.send_msg(req)

    def take_flow_stats(self, msg: Any) -> bool:
        """One reply part; True when the table has been read completely."""
        if msg.xid != self._stats_xid:
            return False
        for stats in msg.body:
            if is_learned(stats.cookie):
                continue  # the switch's own SCTP reply flows: neither desired nor foreign
            try:
                self._reading.append(from_flow_stats(stats))
            except ValueError as exc:
                self._reading_foreign.append(Foreign(stats.table_id, stats.priority, stats.match, str(exc)))
        if msg.flags & ofp.OFPMPF_REPLY_MORE:
            return False
        self.installed = FlowSet(self._reading)
        self.foreign = tuple(self._reading_foreign)
        self._reading, self._reading_foreign = [], []
        return True

    def apply(self, change: wire.Change, cache: wire.FlowModCache, timeout: float) -> None:
        """Send `change` as one atomic bundle, then a barrier; return once acknowledged.

        Raises BundleRejected (nothing applied) or SwitchGone (unknown: the next session
        re-reads the table). On success `installed` becomes the table the switch holds."""
        bundle_id = next(_BUNDLE_IDS)
        open_xid, add_xid, commit_xid, barrier_xid = (_next_xid() for _ in range(4))
        bundle = _Bundle(bundle_id, frozenset({open_xid, add_xid, commit_xid}), barrier_xid)
        with self._lock:
            self._bundles[bundle_id] = bundle
        try:
            messages = itertools.chain(
                (wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, open_xid),),
                (wire.bundle_add(bundle_id, add_xid, body) for body in wire.flow_mod_bodies(change, cache)),
                (wire.bundle_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, commit_xid),
                 wire.barrier_request(barrier_xid)),
            )
            for chunk in wire.chunks(messages):
                if not self.alive or not self.datapath.send(chunk):
                    raise SwitchGone("connection closed while sending the bundle")
            if not bundle.done.wait(timeout):
                self.close("no barrier reply")
                raise SwitchGone(f"no barrier reply within {timeout:.0f} s")
            if not self.alive and not bundle.committed:
                raise SwitchGone("connection closed before the bundle was acknowledged")
        finally:
            with self._lock:
                self._bundles.pop(bundle_id, None)
        if bundle.errors or not bundle.committed:
            raise BundleRejected("; ".join(bundle.errors) or "no commit reply before the barrier")

    # ---- replies (os-ken event thread) ------------------------------------------------

    def on_barrier_reply(self, xid: int) -> None:
        with self._lock:
            bundles = [b for b in self._bundles.values() if b.barrier_xid == xid]
        for bundle in bundles:
            bundle.done.set()

    def on_bundle_reply(self, bundle_id: int, reply_type: int) -> None:
        with self._lock:
            bundle = self._bundles.get(bundle_id)
        if bundle is not None and reply_type == ofp.ONF_BCT_COMMIT_REPLY:
            bundle.committed = True

    def on_error(self, xid: int, text: str) -> bool:
        """True if the error belongs to one of our bundles (else it is someone else's)."""
        with self._lock:
            bundles = [b for b in self._bundles.values() if xid in b.xids]
        for bundle in bundles:
            bundle.errors.append(text)
        return bool(bundles)

    def close(self, why: str) -> None:
        """Drop the connection (the switch reconnects, and the new session re-reads)."""
        LOG.warning("closing the OpenFlow connection: %s", why)
        self.on_gone()
        self.datapath.close()

    def on_gone(self) -> None:
        self.alive = False
        with self._lock:
            bundles = list(self._bundles.values())
        for bundle in bundles:
            bundle.done.set()


class Switch:
    """Holds the current session; `on_ready` is called when a session has read its table."""

    def __init__(self, metrics: Metrics, on_ready: Callable[[], None]) -> None:
        self.metrics = metrics
        self.on_ready = on_ready
        self._session: Session | None = None
        self._lock = threading.Lock()

    def session(self) -> Session | None:
        with self._lock:
            current = self._session
        return current if current is not None and current.ready else None

    def connected(self, datapath: Any) -> None:
        session = Session(datapath)
        with self._lock:
            old, self._session = self._session, session
        if old is not None and old.datapath is not datapath:
            old.on_gone()
        self.metrics.switch_connects.inc()
        LOG.info("switch connected (dpid %016x), reading its flow table", datapath.id or 0)
        session.request_flows()

    def disconnected(self, datapath: Any) -> bool:
        """True if `datapath` was the current connection (a stale one's end changes nothing)."""
        with self._lock:
            current = self._session
            if current is None or current.datapath is not datapath:
                return False
            self._session = None
        current.on_gone()
        self.metrics.switch_connected.set(0)
        LOG.warning("switch disconnected; its flows stay in place (fail_mode=secure)")
        return True

    def _current(self, datapath: Any) -> Session | None:
        with self._lock:
            current = self._session
        return current if current is not None and current.datapath is datapath else None

    def flow_stats(self, datapath: Any, msg: Any) -> None:
        session = self._current(datapath)
        if session is not None and session.take_flow_stats(msg):
            assert session.installed is not None
            LOG.info("flow table read: %d flows, %d foreign", len(session.installed), len(session.foreign))
            self.metrics.switch_connected.set(1)
            self.on_ready()

    def barrier_reply(self, datapath: Any, xid: int) -> None:
        session = self._current(datapath)
        if session is not None:
            session.on_barrier_reply(xid)

    def bundle_reply(self, datapath: Any, bundle_id: int, reply_type: int) -> None:
        session = self._current(datapath)
        if session is not None:
            session.on_bundle_reply(bundle_id, reply_type)

    def error(self, datapath: Any, xid: int, text: str) -> None:
        session = self._current(datapath)
        if session is None or not session.on_error(xid, text):
            LOG.error("OpenFlow error from the switch (xid %#x): %s", xid, text)
