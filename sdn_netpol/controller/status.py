"""/healthz, /status and /metrics over HTTP (TCP `HOST:PORT` or `unix:PATH`).

A unix socket is offered because a controller inside a node's network namespace (the lab,
a test) is not reachable at 127.0.0.1 from outside it, while a socket file is.

/status is JSON, one entry per node this process serves (always one; the shape lets a lab
merge the answers of all its controllers):

    {"node": "n1", "nodes": {"n1": {
        "source": "dir:/m", "source_synced": true, "switch_connected": true,
        "desired_generation": 7, "realized_generation": 7,
        "source_version": "sha256:…",          # of the realized state (kube: resourceVersion)
        "realized_at": 1732630000.1,             # unix time of the last realization
        "last_error": null,
        "errors": {"source": null, "node": null, "ovsdb": null, "switch": null, "realize": null, "datapath": null},
        "flows": {"total": 42, "by_table": {"0": 5, …}}, "flow_mods_sent": 42,
        "ports": {"ns/pod": 3},                  # pods this node enforces, realized
        "invalid_objects": [{"kind": …, "namespace": …, "name": …,
                             "last_valid_enforced": true, "errors": [{"object", "path",
                             "message", "text"}]}],
        "policies": {"x/deny": {"generation": 5, "invalid": false, "realized": true}},
        "datapath": {"mode": "auto", "purge_after_change": true, "ovs_version": "3.1.0", "datapath_type": "netdev",
                     "purges": 12, "last_purge_seconds": 0.002, "repairs": 0, "error": null,
                     "last_verify": {"at": …, "seconds": …, "checked": 40, "unverifiable": 0,
                                     "stale": 0, "examples": []}}}}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.store import Invalid

LOG = logging.getLogger(__name__)

ERROR_PLACES = ("source", "node", "ovsdb", "switch", "realize", "datapath")
# How long a client may take to send its request, and each write of the answer may block.
# Without it an idle connection held a handler thread forever: anyone who can reach the
# port (deploy/ listens on 0.0.0.0:9180) could pile up threads until the controller died.
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class Realized:
    generation: int
    source_version: str
    at: float
    flows_by_table: dict[int, int]
    ports: dict[str, int]
    invalid: tuple[Invalid, ...]


@dataclass
class StatusBoard:
    """Written by the realizer and the sources, read by the HTTP handler; one lock."""

    node: str
    source: str
    desired: Callable[[], int] = lambda: 0  # the store's generation, read live
    connected: Callable[[], bool] = lambda: False  # the switch is connected and its table read
    datapath: Callable[[], dict[str, Any] | None] = lambda: None  # DatapathGuard.to_json
    policies: Callable[[], dict[str, tuple[int, bool]]] = dict  # Store.policy_generations
    source_synced: bool = False
    realized: Realized | None = None
    errors: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(ERROR_PLACES))
    last_error: str | None = None
    flow_mods_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, place: str, message: str | None) -> None:
        """An error at `place` (None: it recovered). last_error is the latest error while
        any place is still failing, None once all have recovered."""
        with self._lock:
            self.errors[place] = message
            if message is not None:
                self.last_error = f"{place}: {message}"
            elif not any(self.errors.values()):
                self.last_error = None

    def observe(self, source_synced: bool) -> None:
        with self._lock:
            self.source_synced = source_synced

    def set_realized(self, realized: Realized, flow_mods: int) -> None:
        with self._lock:
            self.realized = realized
            self.flow_mods_sent += flow_mods
            for place in ("realize", "switch", "datapath"):
                self.errors[place] = None
            if not any(self.errors.values()):
                self.last_error = None

    def to_json(self) -> dict[str, Any]:
        desired = self.desired()  # read first: a realization that lands meanwhile only looks behind
        connected = self.connected()
        datapath = self.datapath()
        policies = self.policies()
        with self._lock:
            done = self.realized
            entry: dict[str, Any] = {
                "source": self.source, "source_synced": self.source_synced,
                "switch_connected": connected,
                "desired_generation": desired,
                "realized_generation": done.generation if done else None,
                "source_version": done.source_version if done else None,
                "realized_at": done.at if done else None,
                "last_error": self.last_error, "errors": dict(self.errors),
                "flows": {"total": sum(done.flows_by_table.values()) if done else 0,
                          "by_table": {str(t): n for t, n in sorted(done.flows_by_table.items())} if done else {}},
                "flow_mods_sent": self.flow_mods_sent,
                "ports": dict(sorted(done.ports.items())) if done else {},
                "invalid_objects": [i.to_json() for i in done.invalid] if done else [],
                "datapath": datapath,
                "policies": {ref: {"generation": generation, "invalid": invalid,
                                   "realized": done is not None and not invalid and done.generation >= generation}
                             for ref, (generation, invalid) in policies.items()},
            }
        return {"node": self.node, "nodes": {self.node: entry}}


class StatusCollector:
    """/status as alertable series, read from the board at scrape time (no second copy):
    `sdn_netpol_desired_generation` beside `sdn_netpol_realized_generation` (a gap that lasts
    means a change is not enforced), `sdn_netpol_error{place}` 1 while that place fails, and
    `sdn_netpol_source_synced`."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        entry = self.board.to_json()["nodes"][self.board.node]
        desired = GaugeMetricFamily("sdn_netpol_desired_generation", "Source generation the controller has read")
        desired.add_metric([], entry["desired_generation"])
        errors = GaugeMetricFamily("sdn_netpol_error", "1 while this place reports an error (see /status)",
                                   labels=["place"])
        for place, message in entry["errors"].items():
            errors.add_metric([place], 1 if message else 0)
        synced = GaugeMetricFamily("sdn_netpol_source_synced", "1 once the source has listed everything")
        synced.add_metric([], 1 if entry["source_synced"] else 0)
        yield from (desired, errors, synced)


class _Handler(BaseHTTPRequestHandler):
    timeout = REQUEST_TIMEOUT  # socket timeout of every connection (StreamRequestHandler)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        server: _StatusServer = self.server  # type: ignore[assignment]
        if path == "/healthz":
            healthy = server.healthy()
            self._send(200 if healthy else 503, b"ok\n" if healthy else b"unhealthy\n", "text/plain")
        elif path == "/status":
            self._send(200, server.status_body(), "application/json")
        elif path == "/metrics":
            self._send(200, server.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the log; errors still surface in /status."""


class _StatusServer:
    board: StatusBoard
    metrics: Metrics
    healthy: Callable[[], bool]
    # The last /status document and its text: indented JSON is encoded by Python's json
    # (~5 ms at 1,000 policies), while comparing the new document with the last one costs
    # a tenth of that; `lab apply` asks every 50 ms while the controller is busy realizing.
    _last_status: tuple[dict[str, Any], bytes] | None = None

    def status_body(self) -> bytes:
        doc = self.board.to_json()
        last = self._last_status
        if last is not None and last[0] == doc:
            return last[1]
        body = json.dumps(doc, indent=1).encode() + b"\n"
        self._last_status = (doc, body)
        return body

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up before its answer (a probe's timeout on a busy node) is
        its own business; anything else is ours, logged with its traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            LOG.exception("status server: request from %s failed", client_address)


class _TcpServer(_StatusServer, ThreadingHTTPServer):
    daemon_threads = True


class _UnixServer(_StatusServer, socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


def serve(listen: str, board: StatusBoard, metrics: Metrics, healthy: Callable[[], bool]) -> threading.Thread:
    """Start the server in a daemon thread; `listen` is HOST:PORT or unix:PATH."""
    server: _TcpServer | _UnixServer
    if listen.startswith("unix:"):
        path = Path(listen[len("unix:"):])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = _UnixServer(str(path), _Handler)
    else:
        host, _, port = listen.rpartition(":")
        server = _TcpServer((host.strip("[]") or "127.0.0.1", int(port)), _Handler)
    server.board, server.metrics, server.healthy = board, metrics, healthy
    thread = threading.Thread(target=server.serve_forever, name="status-http", daemon=True)
    thread.start()
    return thread
