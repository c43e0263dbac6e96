"""Realized means enforced: clients that keep retrying across nodes while policies change.

The regression test of docs/reliability.md: on OVS's userspace datapath (< 3.1.3) a
revalidator modifies the wrong one of two overlapping megaflows, and a stale allow or drop
outlives the policy change for as long as traffic keeps it alive.  A fresh probe after each
change does not see it (a new connection from an idle pod gets a fresh translation); clients
retrying all along do.  So every x pod retries new TCP connections to every pod of y and z
on the other nodes, every 0.2-0.5 s, while x's egress goes round

    allow (to y:80) -> open (no policy) -> deny (all egress) -> peer-in -> peer-out -> …

(peer-in/out: a policy admitting pods labelled role=peer, and y/a relabelled in and out).
After each `lab apply` returns: no connection started afterwards may be admitted where the
policy denies it, every allowed client connects within 1 s, and `lab verify` finds no
megaflow that contradicts the tables.  Each x pod also serves a long stream to a pod on
another node, as busy pods do: its answers keep the coarse route-only megaflows alive,
which is what makes the exact policy megaflows overlap them.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sdn_netpol.lab import netns
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import PodState
from sdn_netpol.lab.traffic import Stream
from tests.lab_fixtures import lab_up, netpol, pod_manifest

LOOPS = 20
CONNECT_TIMEOUT = 0.3
RETRY = (0.2, 0.5)
ALLOWED_WITHIN = 1.0
OBSERVE = 1.2  # seconds each phase is watched before the next change


@dataclass
class Attempt:
    start: float
    end: float
    connected: bool


@dataclass
class Client:
    """New TCP connections from `source` to `destination`:80, one every 0.2-0.5 s."""

    source: PodState
    destination: PodState
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def pair(self) -> str:
        return f"{self.source.key}->{self.destination.key}"

    def run(self) -> None:
        while not self._stop.is_set():
            sock = netns.socket_in(self.source.netns, socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            start = time.monotonic()
            try:
                sock.connect((self.destination.ip, 80))
                connected = True
            except OSError:
                connected = False
            finally:
                sock.close()
            self.attempts.append(Attempt(start, time.monotonic(), connected))
            self._stop.wait(random.uniform(*RETRY))

    def since(self, moment: float) -> list[Attempt]:
        return [a for a in list(self.attempts) if a.start >= moment]


def egress(name: str, rules: list[dict[str, Any]] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": {}, "policyTypes": ["Egress"]}
    if rules is not None:
        spec["egress"] = rules
    return netpol(name, "x", spec)


ALLOW_Y = egress("x-egress", [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}])
DENY = egress("x-egress", None)
PEERS = egress("x-egress", [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "peer"}}}],
                             "ports": [{"port": 80}]}])
SERVE = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81), ("SCTP", 80), ("SCTP", 81)]


def y_a(**labels: str) -> dict[str, Any]:
    return pod_manifest("y", "a", {"pod": "a", **labels}, SERVE)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory.mktemp("realized"), 3) as made:
        yield made


class Phases:
    def __init__(self, lab: Lab, tmp: Path, clients: list[Client]) -> None:
        self.lab, self.tmp, self.clients = lab, tmp, clients
        self.failures: list[str] = []

    def apply(self, label: str, *docs: dict[str, Any], allowed: set[str]) -> None:
        path = self.tmp / "change.yaml"
        path.write_text(yaml.safe_dump_all(list(docs)))
        self.lab.apply([path])
        returned = time.monotonic()
        time.sleep(OBSERVE)
        for client in self.clients:
            attempts = client.since(returned)
            if client.destination.key in allowed:
                if not any(a.connected and a.end <= returned + ALLOWED_WITHIN for a in attempts):
                    self.failures.append(f"{label}: {client.pair} allowed, no connection within "
                                         f"{ALLOWED_WITHIN} s: {self._timeline(attempts, returned)}")
            elif any(a.connected for a in attempts):
                self.failures.append(f"{label}: {client.pair} denied, connected: {self._timeline(attempts, returned)}")
        for node, report in self.lab.verify().items():
            self.failures += [f"{label}: {node} stale megaflow {s.describe()}" for s in report.stale]

    @staticmethod
    def _timeline(attempts: list[Attempt], returned: float) -> str:
        return " ".join(f"{a.start - returned:+.2f}{'✓' if a.connected else '·'}" for a in attempts)


def test_retrying_clients_see_every_change_the_moment_apply_returns(lab: Lab, tmp_path: Path) -> None:
    pods = lab.state().pods
    clients = [Client(pods[s], pods[d]) for s in ("x/a", "x/b", "x/c") for d in sorted(pods)
               if d[0] in "yz" and pods[d].node != pods[s].node]
    streams = [Stream(pods[remote], pods[x], 81).start()
               for x, remote in (("x/a", "y/b"), ("x/b", "y/c"), ("x/c", "y/a"))]
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    phases = Phases(lab, tmp_path, clients)
    y_pods = {k for k in pods if k.startswith("y/")}
    everyone = {k for k in pods if k[0] in "yz"}
    try:
        for loop in range(LOOPS):
            phases.apply(f"loop {loop} allow", ALLOW_Y, allowed=y_pods)
            phases.apply(f"loop {loop} open", egress("x-egress", [{}]), allowed=everyone)
            phases.apply(f"loop {loop} deny", DENY, allowed=set())
            phases.apply(f"loop {loop} peer-in", PEERS, y_a(role="peer"), allowed={"y/a"})
            phases.apply(f"loop {loop} peer-out", y_a(), allowed=set())
    finally:
        for client in clients:
            client._stop.set()
        for thread in threads:
            thread.join(2)
        for stream in streams:
            stream.stop()
    assert not phases.failures, f"{len(phases.failures)} failure(s):\n" + "\n".join(phases.failures[:20])
    assert all(any(a.connected for a in c.attempts) for c in clients), "every client connected at some point"
    assert all(s.cut_at is None for s in streams), [s.error for s in streams]


# ---- the fast path for established connections still revokes (docs/pipeline.md) ----------

Y_INGRESS_PORTS = [{"port": 80}, {"port": 81}]


def y_ingress(ports: list[dict[str, Any]], peer: dict[str, Any] | None = None) -> dict[str, Any]:
    source = peer or {"namespaceSelector": {"matchLabels": {"ns": "x"}}}
    return netpol("y-ingress", "y", {"podSelector": {}, "ingress": [{"from": [source], "ports": ports}]})


UNRELATED_Z = netpol("z-unrelated", "z", {"podSelector": {"matchLabels": {"pod": "a"}},
                                           "ingress": [{"from": [{"podSelector": {}}]}]})
CLIENTS_ONLY = {"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"role": "client"}}}


OPEN_X = egress("x-egress", [{}])  # whatever the test above left x's egress at


def x_a(**labels: str) -> dict[str, Any]:
    return pod_manifest("x", "a", {"pod": "a", **labels}, SERVE)


@dataclass
class Cut:
    """When a stream stopped being echoed, relative to the `lab apply` that cut it."""

    stream: Stream
    started: float
    returned: float

    @property
    def first_drop(self) -> float:
        """The first chunk that got no echo left one period after the last echo."""
        return self.stream.last_echo + self.stream.period

    def describe(self) -> str:
        return (f"{self.stream.name}: first unanswered chunk {self.first_drop - self.returned:+.3f} s after "
                f"apply returned ({self.first_drop - self.started:+.3f} s after it started, "
                f"apply took {self.returned - self.started:.3f} s)")


def _streams_from_x_a(pods: dict[str, PodState]) -> list[Stream]:
    """x/a to a y pod on its own node and to one on another node (whichever exist), port 80."""
    source = pods["x/a"]
    same = [k for k in sorted(pods) if k.startswith("y/") and pods[k].node == source.node][:1]
    other = [k for k in sorted(pods) if k.startswith("y/") and pods[k].node != source.node][:1]
    return [Stream(source, pods[k], 80, period=0.01, stall_limit=3.0).start() for k in (*same, *other)]


def _apply(lab: Lab, tmp: Path, *docs: dict[str, Any]) -> tuple[float, float]:
    path = tmp / "fastpath-change.yaml"
    path.write_text(yaml.safe_dump_all(list(docs)))
    started = time.monotonic()
    lab.apply([path])
    return started, time.monotonic()


def _cuts(lab: Lab, tmp: Path, streams: list[Stream], *docs: dict[str, Any]) -> list[Cut]:
    """Apply `docs` while the streams run; every stream must be cut (no echo 2 s later)."""
    time.sleep(0.5)
    echoed = [s.echoed for s in streams]
    assert all(s.cut_at is None for s in streams) and all(echoed), [s.error for s in streams]
    started, returned = _apply(lab, tmp, *docs)
    time.sleep(2.0)
    after = [s.echoed for s in streams]
    time.sleep(0.5)
    assert [s.echoed for s in streams] == after, "a stream was still echoed 2 s after apply returned"
    return [Cut(s, started, returned) for s in streams]


def _undo(lab: Lab, tmp: Path, streams: list[Stream], docs: list[dict[str, Any]]) -> None:
    for stream in streams:
        stream.stop()
    path = tmp / "fastpath-undo.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    lab.delete([path])


def test_a_narrowed_allow_cuts_established_streams_within_one_realization(lab: Lab, tmp_path: Path) -> None:
    pods = lab.state().pods
    _apply(lab, tmp_path, y_ingress(Y_INGRESS_PORTS), OPEN_X)
    streams = _streams_from_x_a(pods)
    try:
        # an unrelated policy changes no fingerprint of x/a or y: nothing is cut
        before = [s.echoed for s in streams]
        _apply(lab, tmp_path, UNRELATED_Z)
        time.sleep(1.0)
        assert all(s.cut_at is None for s in streams), [s.error for s in streams]
        assert all(s.echoed > b for s, b in zip(streams, before, strict=True))
        cuts = _cuts(lab, tmp_path, streams, y_ingress([{"port": 81}]))  # 80 withdrawn
        for cut in cuts:
            print(cut.describe())
            assert cut.first_drop <= cut.returned + 0.1, cut.describe()
    finally:
        _undo(lab, tmp_path, streams, [y_ingress(Y_INGRESS_PORTS), UNRELATED_Z, OPEN_X])


def test_a_pod_relabelled_out_of_the_peer_selector_loses_its_established_streams(lab: Lab, tmp_path: Path) -> None:
    pods = lab.state().pods
    _apply(lab, tmp_path, y_ingress(Y_INGRESS_PORTS, CLIENTS_ONLY), x_a(role="client"), OPEN_X)
    streams = _streams_from_x_a(pods)
    try:
        for cut in _cuts(lab, tmp_path, streams, x_a()):
            print(cut.describe())
            assert cut.first_drop <= cut.returned + 0.1, cut.describe()
    finally:
        _undo(lab, tmp_path, streams, [y_ingress(Y_INGRESS_PORTS), OPEN_X])
        _apply(lab, tmp_path, x_a())
