"""Wiring of one controller process, and its life: start every part, exit on SIGTERM.

    source ──► Store ──┐
    OVSDB IDL ─► PortMap ─┼─► Pending ─► Realizer ─► Switch (os-ken app) ─► br-int
    os-ken port events ─┘                    └─► StatusBoard / Metrics ─► HTTP

Exit is `os._exit` after flushing the logs: os-ken's native hub cannot stop its threads
(AppManager.close raises), and nothing needs undoing: the flows stay on the switch
(fail_mode=secure) and an uncommitted bundle is discarded by OVS when the socket closes.
"""

from __future__ import annotations

import cProfile
import logging
import os
import pstats
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from sdn_netpol.controller import app, status
from sdn_netpol.controller.audit import AuditLog
from sdn_netpol.controller.config import Config
from sdn_netpol.controller.datapath import DatapathGuard, DatapathVerifier
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.portmap import InterfaceMonitor, PortMap
from sdn_netpol.controller.rulestats import RuleStatsSampler
from sdn_netpol.controller.store import Store
from sdn_netpol.controller.switch import Switch
from sdn_netpol.controller.sync import Pending, Realizer

LOG = logging.getLogger(__name__)


@dataclass
class Parts:
    metrics: Metrics
    board: status.StatusBoard
    store: Store
    ports: PortMap
    switch: Switch
    realizer: Realizer
    datapath: DatapathGuard
    threads: list[threading.Thread]


def build(config: Config) -> Parts:
    """Every part, connected, nothing started."""
    metrics = Metrics()
    pending = Pending()
    store = Store(on_change=pending.mark)
    ports = PortMap(on_change=pending.mark)
    switch = Switch(metrics, on_ready=pending.mark)
    guard = DatapathGuard(Path(config.ovs_rundir()), config.datapath.mode, config.bridge, metrics)
    board = status.StatusBoard(config.node, config.source, desired=lambda: store.generation,
                               connected=lambda: switch.session() is not None, datapath=guard.to_json,
                               policies=store.policy_generations)
    realizer = Realizer(config.node, store, ports, switch, pending, board, metrics, config.timing, guard)
    return Parts(metrics, board, store, ports, switch, realizer, guard, [])


def _start_source(config: Config, parts: Parts) -> threading.Thread:
    def report(message: str | None) -> None:
        parts.board.report("source", message)

    if config.source == "kube":
        from sdn_netpol.controller.sources.kube import KubeSource  # the client is slow to import

        return KubeSource(parts.store, report, parts.metrics, config.kube, config.node).start()
    if config.source.startswith("dir:"):
        from sdn_netpol.controller.sources.directory import DirectorySource

        return DirectorySource(config.source[len("dir:"):], parts.store, report, config.dir_poll).start()
    raise ValueError(f"unknown source {config.source!r}: use kube or dir:PATH")


def _check_bindable(listen: str) -> None:
    """os-ken binds in a thread of its own and only logs a failure there, leaving a process
    that can never reach its switch: bind once here first, so that it fails loudly."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))


def start(config: Config) -> Parts:
    """Start every part; raises (before anything runs) if an address cannot be used."""
    _check_bindable(config.ofp_listen)
    parts = build(config)

    def ovsdb_report(message: str | None) -> None:
        parts.board.report("ovsdb", message)

    parts.metrics.registry.register(status.StatusCollector(parts.board))
    status.serve(config.status_listen, parts.board, parts.metrics, lambda: all(t.is_alive() for t in parts.threads))
    parts.threads.append(parts.realizer.start())
    parts.threads.append(InterfaceMonitor(config.ovsdb, config.bridge, parts.ports, ovsdb_report).start())
    parts.threads.append(_start_source(config, parts))
    if config.stats_interval > 0:
        sampler = RuleStatsSampler(Path(config.ovs_rundir()), config.bridge, config.node,
                                   lambda: parts.realizer.realized_state, config.stats_interval)
        parts.metrics.registry.register(sampler)
        parts.threads.append(sampler.start())
    if config.datapath.verify_interval > 0:
        verifier = DatapathVerifier(parts.datapath, lambda: parts.store.generation,
                                    config.datapath.verify_interval, config.datapath.verify_limit)
        parts.threads.append(verifier.start())
    audit = AuditLog(config.node, Path(config.audit.log) if config.audit.log else None,
                     lambda: parts.realizer.realized_state, config.audit.rate, config.audit.max_bytes)
    if audit.path is not None:
        parts.threads.append(audit.start())
    parts.threads.extend(app.start(config.ofp_listen, app.Link(parts.switch, parts.ports, audit, config.bridge,
                                                                      lambda m: parts.board.report("switch", m))))
    return parts


PROFILE_ENV = "SDN_NETPOL_PROFILE"  # a folder: cProfile every thread, written there at exit (benchmarks)


class _ThreadProfiles:
    """One cProfile per thread started from now on (os-ken's, the realizer, the sources),
    merged into DIR/controller-NODE-PID.prof when the process stops."""

    def __init__(self, folder: Path, node: str) -> None:
        self.path = folder / f"controller-{node}-{os.getpid()}.prof"
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        threading.setprofile(self._first_event)

    def _first_event(self, *_args: object) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()  # replaces this hook in this thread

    def write(self) -> None:
        threading.setprofile(None)
        with self._lock:
            profiles = list(self.profiles)
        stats: pstats.Stats | None = None
        for profile in profiles:
            try:
                profile.create_stats()
                stats = pstats.Stats(profile) if stats is None else stats.add(profile)
            except (TypeError, ValueError):  # a thread that never recorded a call
                continue
        if stats is not None:
            stats.dump_stats(str(self.path))


def run(config: Config) -> int:
    """Run until SIGTERM/SIGINT; never returns normally (the process exits)."""
    stop = threading.Event()
    folder = os.environ.get(PROFILE_ENV)
    profiles = _ThreadProfiles(Path(folder), config.node) if folder else None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: exiting; flows stay on the switch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        start(config)
    except Exception as exc:  # a bad address, an unreadable kubeconfig: say so and stop
        LOG.error("cannot start: %s: %s", type(exc).__name__, exc)
        logging.shutdown()
        os._exit(1)
    LOG.info("controller for node %s: source %s, bridge %s, status on %s", config.node, config.source,
             config.bridge, config.status_listen)
    while not stop.wait(1.0):
        pass
    if profiles is not None:
        profiles.write()
    logging.shutdown()
    os._exit(0)
