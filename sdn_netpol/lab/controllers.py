"""One `sdn-netpol controller` per node, inside the node's namespace, and its /status.

Like a per-node DaemonSet with host networking: the controller listens for its switch on
127.0.0.1:6653 *of the node namespace* (LAB-NOTES: a root-namespace controller is not
reachable at 127.0.0.1 from a node). Its /status is served on a unix socket in the node's
rundir, reachable from any namespace. `apply`/`delete` wait until every node reports the
manifests folder's current version realized with exactly its own pods' ports.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn_netpol.lab import procs
from sdn_netpol.lab.state import OFP_PORT, LabState, NodeState
from sdn_netpol.lab.store import LabError

REALIZE_TIMEOUT = 60.0
STATS_INTERVAL = 2.0  # the lab's controllers refresh /metrics' rule counters this often
# More controller flags for every node, e.g. "--datapath-purge never" to watch the OVS
# megaflow bug of docs/reliability.md happen; read when a controller starts.
EXTRA_ARGS_ENV = "SDN_NETPOL_LAB_CONTROLLER_ARGS"
STATUS_TIMEOUT = 2.0


def controller_markers(state: LabState) -> list[str]:
    return [f"dir:{state.manifests}"]


def controller_argv(state: LabState, node: NodeState, extra: Sequence[str] = ()) -> list[str]:
    """`sdn-netpol controller …`, run as its module so that it works whether or not the
    subcommand is registered in this install. `extra` flags come last: a repeated option
    overrides (the chaos runner moves a controller to another source, port or audit path;
    the `dir:` marker stays in argv, so stop and cleanup still find it)."""
    return [
        sys.executable, "-m", "sdn_netpol.cli.controller", "--source", f"dir:{state.manifests}",
        "--node", node.name, "--bridge", "br-int", "--ovsdb", f"unix:{node.rundir}/db.sock",
        "--ofp-listen", f"127.0.0.1:{OFP_PORT}", "--status-listen", f"unix:{status_socket(node)}",
        "--stats-interval", str(STATS_INTERVAL), "--audit-log", str(audit_log(node)),
        *shlex.split(os.environ.get(EXTRA_ARGS_ENV, "")), *extra,
    ]


def audit_log(node: NodeState) -> Path:
    """Where the node's controller logs audited connections (Namespace sdn-netpol.io/audit)."""
    return Path(node.rundir) / "audit.jsonl"


def status_socket(node: NodeState) -> Path:
    return Path(node.rundir) / "status.sock"


def start(state: LabState, node: NodeState, extra: Sequence[str] = (), log: Path | None = None) -> None:
    """Start the node's controller; its stderr goes to `log` (default: the rundir's
    controller.log)."""
    log = log or Path(node.rundir) / "controller.log"
    proc = procs.spawn(node.netns, controller_argv(state, node, extra), log)
    node.controller_pid = proc.pid


def stop(state: LabState, node: NodeState) -> None:
    procs.stop([node.controller_pid], controller_markers(state))
    node.controller_pid = None


def restart(state: LabState, node: NodeState) -> None:
    stop(state, node)
    start(state, node)


def get(node: NodeState, path: str, timeout: float = STATUS_TIMEOUT) -> bytes:
    """GET `path` from the node's controller over its status socket (raises OSError or
    ValueError when it does not answer 200)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(status_socket(node)))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
        raise ValueError(f"{path} answered {head.splitlines()[0] if head else b'nothing'!r}")
    return body


def status(node: NodeState, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """GET /status from the node's controller: its entry for this node (raises
    OSError/ValueError when it does not answer)."""
    doc = json.loads(get(node, "/status", timeout))
    entry = doc.get("nodes", {}).get(node.name) if isinstance(doc, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"/status has no entry for node {node.name}")
    return entry


@dataclass
class NodeProgress:
    node: str
    pods: frozenset[str]  # the pods this node hosts once the change is done
    doc: dict[str, Any] | None = None
    problem: str = "no answer yet"
    dead: bool = False  # the controller process is gone: waiting is pointless

    def realized(self, version: str) -> bool:
        """Realized from exactly these folder bytes, nothing newer pending, and enforcing
        exactly this node's pods (a port the controller has not seen yet would otherwise
        slip through: ports come from the switch, not from the folder)."""
        doc = self.doc
        return (doc is not None and doc.get("source_version") == version
                and doc.get("realized_generation") == doc.get("desired_generation")
                and set(doc.get("ports") or {}) == self.pods)


def wait_realized(state: LabState, version: str, timeout: float = REALIZE_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Until every node's controller reports `version` of the folder realized.

    Fails with what each lagging node last said (its last_error first: a controller that
    refuses an object, or cannot reach its switch, says so there).
    """
    progress = {n.name: NodeProgress(n.name, local_pods(state, n.name)) for n in state.nodes}
    deadline = time.monotonic() + timeout
    while True:
        for node in state.nodes:
            item = progress[node.name]
            if item.realized(version):
                continue
            _poll(state, node, item)
        if all(p.realized(version) for p in progress.values()):
            return {name: p.doc or {} for name, p in progress.items()}
        if time.monotonic() >= deadline or any(p.dead for p in progress.values()):
            raise LabError(_lagging(progress, version, timeout))
        time.sleep(0.05)


def local_pods(state: LabState, node: str) -> frozenset[str]:
    return frozenset(k for k, p in state.pods.items() if p.node == node and p.published)


def _poll(state: LabState, node: NodeState, item: NodeProgress) -> None:
    if not procs.alive(node.controller_pid):
        item.doc, item.dead = None, True
        item.problem = f"controller is not running; {log_tail(node)}"
        return
    try:
        item.doc = status(node)
    except (OSError, ValueError) as exc:
        item.problem = f"/status: {exc}"
        return
    item.problem = describe(item.doc)


def log_tail(node: NodeState, lines: int = 3) -> str:
    log = Path(node.rundir) / "controller.log"
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        tail = []
    return f"{log} ends with: " + " | ".join(tail) if tail else f"see {log}"


def describe(doc: dict[str, Any]) -> str:
    parts = [f"source_version={str(doc.get('source_version'))[:19]}",
             f"generation realized/desired={doc.get('realized_generation')}/{doc.get('desired_generation')}",
             f"switch_connected={doc.get('switch_connected')}", f"ports={sorted(doc.get('ports') or {})}"]
    if doc.get("last_error"):
        parts.insert(0, f"last_error: {doc['last_error']}")
    if doc.get("invalid_objects"):
        parts.append(f"invalid_objects: {doc['invalid_objects']}")
    return "; ".join(parts)


def _lagging(progress: dict[str, NodeProgress], version: str, timeout: float) -> str:
    lines = [f"not realized after {timeout:.0f} s (folder version {version[:19]}):"]
    lines += [f"  {p.node}: {p.problem}" for p in progress.values() if not p.realized(version)]
    return "\n".join(lines)

