"""A soak: one lab living through many policy and label changes, checked after every one.

Each step applies or deletes one object (a NetworkPolicy from a fixed pool, or a Namespace's
labels), which `Lab.apply`/`delete` return from only once every node realized it; then the
whole TCP matrix is probed with real packets and compared with the engine, and every node's
megaflows are checked against its tables (`Lab.verify`). Controller memory and flow counts
are sampled each step so that a leak shows as a slope. All along, a `traffic.Prober` probes
every pod pair about once a second, between the steps as well as during them, and each
sample is judged against the matrices legitimate at its moment (a change's predecessor
until `apply` returned, the change from the moment it was written): what the per-step probe
cannot see, a hole or an outage that comes and goes while nothing is being checked, shows as
a false allow or a false deny. benchmarks/soak.py runs it for as long as asked;
tests/test_soak.py runs a short one in `make test`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.traffic import Judgement, Pair, Prober, Timeline, judge
from sdn_netpol.policy.matrix import build_matrix

PORT = 80
NAMESPACES = ("x", "y", "z")


def _policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def policy_pool() -> list[dict[str, Any]]:
    """Policies over the conformance model (namespaces x, y, z labelled ns; pods a, b, c)."""
    pool = []
    for ns in NAMESPACES:
        pool += [
            _policy("deny-ingress", ns, {"podSelector": {}, "policyTypes": ["Ingress"]}),
            _policy("deny-egress", ns, {"podSelector": {}, "policyTypes": ["Egress"]}),
            _policy("a-from-b", ns, {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                                     "ingress": [{"from": [{"namespaceSelector": {},
                                                            "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            _policy("b-from-team", ns, {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"],
                                        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t"}}}],
                                                     "ports": [{"protocol": "TCP", "port": PORT}]}]}),
            _policy("c-to-x", ns, {"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"],
                                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
        ]
    return pool


def _namespace(name: str, team: bool) -> dict[str, Any]:
    labels = {"ns": name, **({"team": "t"} if team else {})}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


@dataclass
class Step:
    change: str
    mismatches: int
    stale_megaflows: int
    controller_rss_kib: int
    flows: int
    seconds: float


@dataclass
class SoakReport:
    steps: list[Step] = field(default_factory=list)
    probe_rounds: int = 0  # of the continuous prober, every pod pair each
    probe_samples: int = 0
    traffic: Judgement = field(default_factory=Judgement)

    @property
    def mismatches(self) -> int:
        return sum(s.mismatches for s in self.steps)

    @property
    def stale(self) -> int:
        return sum(s.stale_megaflows for s in self.steps)

    def slope(self, value: Callable[[Step], float], skip: float = 0.0) -> float:
        """Least-squares growth per step (0 for fewer than two steps), after leaving out the
        first `skip` fraction of the steps (warm-up: caches filling)."""
        steps = self.steps[int(len(self.steps) * skip):]
        n = len(steps)
        if n < 2:
            return 0.0
        xs, ys = range(n), [value(s) for s in steps]
        mean_x, mean_y = (n - 1) / 2, sum(ys) / n
        var = sum((x - mean_x) ** 2 for x in xs)
        return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def _rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _flow_total(status: dict[str, Any]) -> int:
    """Flows every node's controller reports installed (its /status)."""
    total = 0
    for node in status["nodes"]:
        answer = node.get("controller") or {}  # the controller's /status entry for its node
        total += int(answer.get("flows", {}).get("total", 0))
    return total


def _write(folder: Path, doc: dict[str, Any], counter: int) -> Path:
    path = folder / f"soak-{counter}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def expected_matrix(lab: Lab, pairs: list[Pair]) -> dict[Pair, bool]:
    """The engine's TCP/PORT verdict for each pair, over the lab's manifests as they are."""
    matrix = build_matrix(lab.cluster(), "TCP", PORT)
    return {(s, d): matrix.allowed[s][d] for s, d in pairs}


def soak(lab: Lab, folder: Path, seconds: float, seed: int = 0,
         on_step: Callable[[Step], None] = lambda _s: None) -> SoakReport:
    """Churn the (already up) lab for `seconds`, probed all along; every step checked as the
    module says."""
    state = lab.state()
    pairs = [(s, d) for s in sorted(state.pods) for d in sorted(state.pods)]
    timeline = Timeline(expected_matrix(lab, pairs), time.monotonic())
    prober = Prober(state, pairs, PORT).start()
    try:
        report = _churn(lab, folder, seconds, seed, on_step, timeline, pairs)
    finally:
        prober.stop()
    samples = prober.snapshot()
    report.probe_rounds, report.probe_samples = prober.rounds, len(samples)
    report.traffic = judge(samples, timeline.epochs())
    return report


def _churn(lab: Lab, folder: Path, seconds: float, seed: int, on_step: Callable[[Step], None],
           timeline: Timeline, pairs: list[Pair]) -> SoakReport:
    rng = random.Random(seed)
    pool, applied, team = policy_pool(), {}, dict.fromkeys(NAMESPACES, False)
    report, counter, end = SoakReport(), 0, time.monotonic() + seconds
    while time.monotonic() < end:
        counter += 1
        start = time.monotonic()
        if rng.random() < 0.2:
            ns = rng.choice(NAMESPACES)
            team[ns] = not team[ns]
            lab.apply([_write(folder, _namespace(ns, team[ns]), counter)])
            change = f"namespace {ns} team={team[ns]}"
        else:
            doc = rng.choice(pool)
            key = (doc["metadata"]["namespace"], doc["metadata"]["name"])
            if key in applied:
                lab.delete([_write(folder, applied.pop(key), counter)])
                change = f"delete {key[0]}/{key[1]}"
            else:
                applied[key] = doc
                lab.apply([_write(folder, doc, counter)])
                change = f"apply {key[0]}/{key[1]}"
        # legitimate from its write (`start`: the file is written just after) until the next
        # one; `apply`/`delete` returned, so every node enforces it now
        timeline.realized(timeline.written(expected_matrix(lab, pairs), start), time.monotonic())
        probed = lab.probe("TCP", PORT)
        stale = sum(len(r.stale) for r in lab.verify().values())
        state = lab.state()
        flows = _flow_total(lab.status())
        step = Step(change, len(probed.mismatches), stale,
                    sum(_rss_kib(n.controller_pid) for n in state.nodes), flows, time.monotonic() - start)
        report.steps.append(step)
        on_step(step)
    return report


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
