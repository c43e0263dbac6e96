"""Debugging a lab with real packets: what `trace`, `flows` and the rule statistics say.

A 2-node lab (the conformance model) with one policy in x: ingress from namespace y on
UDP and TCP port 80 only. Known traffic goes through it — datagrams from y/a that the rule
admits, datagrams from z/a that x/a's isolation drops — and the counters must say exactly
that; `trace` must name the same rule and the same isolation; `flows` must select the
rule's flows and show the counted packets on its conj_id flow.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sdn_netpol.debug.flows import Selection
from sdn_netpol.debug.trace import DebugError
from sdn_netpol.lab import controllers, debug, netns
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.state import PodState
from tests.controller_fixtures import wait_for
from tests.lab_fixtures import MODEL, netpol

ALLOW_Y = netpol("allow-y", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                               "ports": [{"port": 80, "protocol": "UDP"},
                                                         {"port": 80, "protocol": "TCP"}]}]})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("debuglab")
    made = Lab(workdir)
    try:
        made.up([MODEL], nodes=2)
        policy = workdir / "allow-y.yaml"
        policy.write_text(yaml.safe_dump(ALLOW_Y))
        made.apply([policy])
        yield made
    finally:
        made.down()


def send_datagrams(src: PodState, dst: PodState, count: int, port: int = 80) -> None:
    """`count` new connections of one datagram each (a socket, so a source port, apiece): the
    first packet of a connection always walks the rules, so the admitting rule counts each
    one exactly, and an isolation drops every packet."""
    for n in range(count):
        with netns.socket_in(src.netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(f"datagram {n}".encode(), (dst.ip, port))
        time.sleep(0.01)


def counters(lab: Lab) -> tuple[int, int]:
    """(packets of x/allow-y ingress[0], packets dropped by x/a's ingress isolation), all nodes."""
    sample = debug.rule_stats(lab.state(), lab.cluster())
    rule = sum(r.packets for r in sample.rules
               if (r.namespace, r.policy, r.direction, r.rule) == ("x", "allow-y", "Ingress", 0))
    drops = sum(d.packets for d in sample.isolation_drops if (d.namespace, d.pod, d.direction) == ("x", "a", "Ingress"))
    return rule, drops


def test_the_admitting_rule_and_the_isolation_drop_count_exactly_the_connections_sent(lab: Lab) -> None:
    pods = lab.state().pods
    assert pods["y/a"].node != pods["x/a"].node, "the admitted traffic crosses the tunnel"
    rule_before, drops_before = counters(lab)
    send_datagrams(pods["y/a"], pods["x/a"], 20)
    send_datagrams(pods["z/a"], pods["x/a"], 7)
    want = (rule_before + 20, drops_before + 7)
    wait_for(lambda: counters(lab) == want, timeout=30.0, what="the tunnelled datagrams to be counted")
    assert counters(lab) == want


def test_trace_names_the_rule_that_admits_and_the_policy_that_isolates(lab: Lab) -> None:
    state, cluster = lab.state(), lab.cluster()
    allowed = debug.trace(state, cluster, "y/a", "x/a", 80, "UDP")
    assert allowed.verdict == "allowed" and allowed.nodes == (state.pods["y/a"].node, state.pods["x/a"].node)
    assert allowed.decided_by == {"policy": "x/allow-y", "direction": "Ingress", "rule": 0}
    assert [s.table_name for s in allowed.steps if s.node == state.pods["x/a"].node][-1] == "Output"
    denied = debug.trace(state, cluster, "z/a", "x/a", 80, "UDP")
    assert denied.verdict == "denied" and denied.isolated_by == ("x/allow-y",)
    assert denied.reason == "denied by ingress isolation of x/a (policies x/allow-y)"
    assert denied.steps[-1].table_name == "IngressDefault" and denied.steps[-1].category == "isolation"
    other_port = debug.trace(state, cluster, "y/a", "x/a", 81, "UDP")
    assert other_port.verdict == "denied", "only port 80 is admitted"
    reply = debug.trace(state, cluster, "z/a", "x/a", 80, "UDP", "reply")
    assert reply.verdict == "allowed" and reply.decided_by is None, "replies bypass the rules"


def test_flows_select_a_rule_and_show_its_counted_packets(lab: Lab) -> None:
    state, cluster = lab.state(), lab.cluster()
    node = state.pods["x/a"].node
    rule_flows = debug.flows(state, cluster, node, Selection("x/allow-y", 0, "Ingress"))
    # the rule's own flows carry its cookie; the clause flows of its conjunction are shown too,
    # marked shared (grants with the same peers and ports share one conjunction)
    own = [f for f in rule_flows if f.category != "shared"]
    assert own and all((f.policy, f.direction, f.rule) == ("x/allow-y", "Ingress", 0) for f in own)
    conj = [f for f in own if "conj_id=" in f.flow.match]
    conj_ids = {f.flow.match.split("conj_id=")[1].split(",")[0] for f in conj}
    shared = [f for f in rule_flows if f.category == "shared"]
    assert conj and all(any(f"conjunction({i}," in f.flow.actions for i in conj_ids) for f in shared)
    assert {f.to_json()["table_name"] for f in rule_flows} == {"IngressRule"}
    send_datagrams(state.pods["y/a"], state.pods["x/a"], 5)

    def counted() -> int:
        again = {f.flow.match: f.flow.n_packets for f in debug.flows(state, cluster, node,
                                                                     Selection("x/allow-y", 0, "Ingress"))}
        return sum(again[f.flow.match] - f.flow.n_packets for f in conj)

    wait_for(lambda: counted() >= 5, timeout=30.0, what="the 5 datagrams on the rule's flows")
    assert counted() == 5
    pod_flows = debug.flows(state, cluster, node, Selection(pod="x/a"))
    assert {f.to_json()["table_name"] for f in pod_flows} >= {"Classifier", "SpoofGuard", "L3Forwarding",
                                                             "IngressDefault", "Output"}
    assert all(f.pod == "x/a" for f in pod_flows)


@pytest.mark.parametrize(("args", "message"), [
    (("x/nope", "y/a", 80), "no such pod"),
    (("x/a", "y/nope", 80), "no such pod"),
    (("x/a", "192.0.2.1", 80), "outside every node's pod CIDR"),
    (("x/a", "y/a", 70000), "out of range"),
    (("x/a", "y/a", 80, "ICMP"), "use TCP, UDP or SCTP"),
])
def test_bad_trace_input_is_one_clear_error(lab: Lab, args: tuple[object, ...], message: str) -> None:
    with pytest.raises(DebugError, match=message):
        debug.trace(lab.state(), lab.cluster(), *args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("selection", "message"), [
    (Selection(policy="x/nope"), "no such NetworkPolicy"),
    (Selection(pod="x/nope"), "no such pod"),
    (Selection(rule=0, direction="Ingress"), "within a --policy"),
    (Selection(policy="x/allow-y", rule=0), "needs --direction"),
])
def test_bad_flows_input_is_one_clear_error(lab: Lab, selection: Selection, message: str) -> None:
    with pytest.raises(DebugError, match=message):
        debug.flows(lab.state(), lab.cluster(), None, selection)


def _metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in labels.split(",")):
            return float(line.rpartition(" ")[2])
    return 0.0


def test_the_controller_serves_the_same_counters_on_metrics(lab: Lab) -> None:
    state = lab.state()
    node = state.node(state.pods["x/a"].node)
    rule = 'namespace="x",policy="allow-y",direction="ingress",rule="0"'
    drop = 'namespace="x",pod="a",direction="ingress"'

    def scraped() -> tuple[float, float]:
        text = controllers.get(node, "/metrics").decode()
        return (_metric(text, "sdn_netpol_rule_packets_total", rule),
                _metric(text, "sdn_netpol_isolation_drops_total", drop))

    before = counters(lab)
    send_datagrams(state.pods["y/a"], state.pods["x/a"], 3)
    send_datagrams(state.pods["z/a"], state.pods["x/a"], 2)
    want = (before[0] + 3, before[1] + 2)
    wait_for(lambda: counters(lab) == want, timeout=30.0, what="the datagrams to be counted on the switch")
    # the controller polls the switch every STATS_INTERVAL: generous, however busy the machine
    wait_for(lambda: scraped() == (float(want[0]), float(want[1])), timeout=10 * controllers.STATS_INTERVAL + 30,
             what="/metrics to serve the switch's counters")
    assert want[0] > 0 and want[1] > 0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sdn_netpol.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_commands_answer_bad_input_with_one_line_and_exit_2(lab: Lab, tmp_path: Path) -> None:
    workdir = str(lab.workdir)
    cases = [
        ("lab", "--workdir", str(tmp_path / "no-lab"), "trace", "--from", "x/a", "--to", "y/a", "--port", "80"),
        ("lab", "--workdir", workdir, "trace", "--from", "x/nope", "--to", "y/a", "--port", "80"),
        ("lab", "--workdir", workdir, "trace", "--from", "x/a", "--to", "203.0.113.9", "--port", "80"),
        ("lab", "--workdir", workdir, "flows", "--policy", "x/nope"),
        ("lab", "--workdir", workdir, "flows", "--node", "node9"),
        ("trace", "--from", "x/a", "--to", "y/a", "--port", "80", "--ovs-rundir", str(tmp_path),
         "--node", "node1", "--source", f"dir:{lab.workdir / 'manifests'}"),
        ("flows", "--pod", "x/a", "--bridge", "br-nope", "--ovs-rundir", str(lab.workdir / "nodes" / "node1"),
         "--node", "node1", "--source", f"dir:{lab.workdir / 'manifests'}"),
    ]
    for args in cases:
        done = _run(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_trace_json_follows_the_contract(lab: Lab) -> None:
    done = _run("lab", "--workdir", str(lab.workdir), "trace", "--from", "z/a", "--to", "x/a", "--port", "80",
                "-o", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {"verdict", "reason", "nodes", "steps", "decided_by", "isolated_by"} <= set(doc)
    assert doc["verdict"] == "denied" and doc["isolated_by"] == ["x/allow-y"] and doc["decided_by"] is None
    step_keys = {"node", "table", "table_name", "priority", "match", "actions", "cookie", "category", "policy",
                 "direction", "rule"}
    assert all(step_keys <= set(step) for step in doc["steps"])
