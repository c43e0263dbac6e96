"""Golden flow tables (flows/) and the `compile` command that prints them.

The golden files are exactly `sdn-netpol compile` output; regeneration (`make flows`, i.e.
`sdn-netpol flows-regen flows`) is byte-stable; and a real OVS 3.1 takes every file with
`ovs-ofctl --bundle replace-flows` (header comment included) and dumps back the same flows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdn_netpol.cli.flows import compile_cmd, flows_regen_cmd
from sdn_netpol.cli.golden import GoldenCase, cases, examples
from sdn_netpol.compiler.flowset import FlowSet
from sdn_netpol.compiler.ofctl import flow_from_parts, parse_flows
from sdn_netpol.ovs import OvsInstance
from tests.ovs_fixtures import private_ovs

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "flows"
SEED_EXAMPLES = [
    "admin-tiers",  # not from the seed page: the cluster-wide admin policy tiers (issue 18)
    "allow-all-egress", "allow-all-ingress", "default-deny-all", "default-deny-egress",
    "default-deny-ingress", "namespace-and-pod-selector", "namespace-or-pod-selector", "test-network-policy",
]
CASES = cases(GOLDEN)


def run(command: object, args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(command, args)  # type: ignore[arg-type]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# ---- the golden files ------------------------------------------------------------------

def test_every_seed_example_has_golden_flows_for_both_nodes() -> None:
    assert examples(GOLDEN) == SEED_EXAMPLES
    assert sorted((c.example, c.node) for c in CASES) == [(e, n) for e in SEED_EXAMPLES for n in ("node1", "node2")]
    assert all(c.expected.is_file() and c.ports is not None for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.example}-{c.node}")
def test_compile_prints_exactly_the_golden_file(case: GoldenCase) -> None:
    code, out, err = run(compile_cmd, case.cli_args())
    assert (code, err) == (0, "")
    assert out == case.expected.read_text()


def test_regeneration_is_one_command_and_byte_identical(tmp_path: Path) -> None:
    copy = tmp_path / "flows"
    shutil.copytree(GOLDEN, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert run(flows_regen_cmd, [str(copy), "--check"])[0] == 0  # the committed files are current
    for _ in range(2):
        code, out, _ = run(flows_regen_cmd, [str(copy)])
        assert code == 0 and out.endswith("0 golden file(s) changed\n")
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_regeneration_rewrites_edited_files_and_removes_stale_ones(tmp_path: Path) -> None:
    copy = tmp_path / "flows"
    shutil.copytree(GOLDEN, copy)
    edited = copy / "test-network-policy" / "node1.flows"
    original = edited.read_text()
    edited.write_text(original.replace("tp_dst=6379", "tp_dst=6380"))
    stale = copy / "default-deny-all" / "node3.flows"
    stale.write_text("table=0, actions=drop\n")
    code, out, _ = run(flows_regen_cmd, [str(copy), "--check"])
    assert code == 1 and f"stale: {edited}" in out and f"stale: {stale}" in out
    assert run(flows_regen_cmd, [str(copy)])[0] == 0
    assert edited.read_text() == original and not stale.exists()


def test_golden_flows_show_the_seed_semantics() -> None:
    """Spot checks a reviewer would make, tied to the seed page's sentences."""
    text = (GOLDEN / "test-network-policy" / "node1.flows").read_text()
    assert "nw_src=172.17.0.0/24 " in text and "nw_src=172.17.1.0/24" not in text  # except is a hole
    assert "nw_src=10.244.2.10 " in text and "nw_src=10.244.2.14 " not in text  # frontend, not stranger
    assert "nw_src=10.244.1.13 " in text  # myproject/api via namespaceSelector
    assert "nw_dst=10.0.0.0/24 " in text and "tp_dst=5978 " in text
    and_text = (GOLDEN / "namespace-and-pod-selector" / "node1.flows").read_text()
    or_text = (GOLDEN / "namespace-or-pod-selector" / "node1.flows").read_text()
    assert "nw_src=10.244.1.12 " in and_text and "nw_src=10.244.2.11 " not in and_text  # alice AND client
    assert all(f"nw_src={ip} " in or_text for ip in ("10.244.1.12", "10.244.2.11", "10.244.2.12"))
    assert "nw_src=10.244.2.13 " not in or_text  # bob/client: neither alice's nor default's
    deny = (GOLDEN / "default-deny-all" / "node2.flows").read_text()
    assert "conjunction" not in deny and deny.count("table=41, priority=100,") == 2  # default/frontend, client


# ---- real OVS takes the files as they are ------------------------------------------------

@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    with private_ovs(tmp_path_factory.mktemp("ovs"), "golden-test", "br-int") as inst:
        yield inst


def test_ovs_ofctl_replace_flows_takes_every_golden_file_and_dumps_it_back(ovs: OvsInstance) -> None:
    for case in CASES:
        text = case.expected.read_text()
        assert text.startswith("# sdn-netpol compile --node ")
        ovs.replace_flows("br-int", text)
        dumped = parse_flows(ovs.ofctl("--no-names", "dump-flows", "br-int"))
        assert dumped == parse_flows(text), case.expected


# ---- the compile command -----------------------------------------------------------------

def test_json_output_is_the_same_flows_as_text() -> None:
    case = CASES[-1]
    code, out, _ = run(compile_cmd, [*case.cli_args(), "-o", "json"])
    rows = json.loads(out)
    assert code == 0 and set(rows[0]) == {"table", "priority", "cookie", "match", "actions"}
    flows = FlowSet(flow_from_parts(r["table"], r["priority"], int(r["cookie"], 16), r["match"], r["actions"])
                    for r in rows)
    assert flows == parse_flows(case.expected.read_text())


def test_without_a_ports_file_ports_are_deterministic_and_node_objects_give_addresses() -> None:
    args = ["-f", str(GOLDEN / "cluster.yaml"), "-f", str(GOLDEN / "test-network-policy"), "--node", "node1"]
    first, second = run(compile_cmd, args), run(compile_cmd, args)
    assert first == second and first[0] == 0
    assert "set_field:192.168.56.12->tun_dst" in first[1]  # node2's InternalIP
    assert "in_port=32766 " in first[1] and "in_port=1 " in first[1]


def test_ports_file_sets_pod_ports_and_overrides_node_addresses(tmp_path: Path) -> None:
    ports = tmp_path / "ports.json"
    ports.write_text(json.dumps({"pods": {"default/db": 7}, "tunnel": 1, "nodes": {"node2": "10.9.9.2"}}))
    code, out, _ = run(compile_cmd, ["-f", str(GOLDEN / "cluster.yaml"), "--node", "node1", "--ports", str(ports)])
    assert code == 0
    assert "reg2=0x7 actions=output:7" in out and "in_port=1 actions=set_field:0x2->reg0" in out
    assert "set_field:10.9.9.2->tun_dst" in out and "192.168.56.12" not in out
    assert "in_port=2 " in out  # the first automatic pod port skips the tunnel's 1


def test_invalid_inputs_exit_1_listing_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [ipBlock: {cidr: 172.17.0.0/16, except: [10.1.0.0/16]}]
    ports: [{port: 80, endPort: 70}]
---
apiVersion: v1
kind: Node
metadata: {name: node9}
status: {addresses: [{type: InternalIP, address: not-an-ip}]}
""")
    code, out, err = run(compile_cmd, ["-f", str(bad), "--node", "node9"])
    assert code == 1 and out == ""
    assert "spec.ingress[0].from[0].ipBlock.except[0]" in err and "endPort" in err
    assert "node node9: status.addresses[0].address: 'not-an-ip'" in err


def test_bad_ports_file_and_unknown_node_exit_1_with_every_reason(tmp_path: Path) -> None:
    ports = tmp_path / "ports.yaml"
    ports.write_text("pods: {default/db: 0, nobody: 3, default/nope: 4}\ngateway: 5\n"
                     "gateway_peer_mac: 52:54:00:00:01:01\ntunel: 1\n")
    cluster = ["-f", str(GOLDEN / "cluster.yaml")]
    code, _, err = run(compile_cmd, [*cluster, "--node", "node1", "--ports", str(ports)])
    assert code == 1
    for reason in ("pods[default/db]: 0: an ofport", "pods: 'nobody': must be NAMESPACE/POD",
                   "tunel: unknown key", "gateway_peer_mac: a number, not a MAC: quote it"):
        assert reason in err
    ports.write_text("pods: {default/nope: 4, default/frontend: 5}\ngateway: 4\n")
    code, _, err = run(compile_cmd, [*cluster, "--node", "node1", "--ports", str(ports)])
    assert code == 1 and "pods[default/nope]: no such pod on node node1" in err
    assert "pods[default/frontend]: no such pod on node node1" in err
    code, _, err = run(compile_cmd, [*cluster, "--node", "nod1"])
    assert code == 1
    assert "--node nod1: no pod, Node object or ports-file node has that name (known: node1, node2)" in err


def test_help_explains_the_ports_file() -> None:
    code, out, _ = run(compile_cmd, ["--help"])
    assert code == 0
    for key in ("pods:", "tunnel:", "gateway:", "gateway_peer_mac:", "nodes:", "replace-flows", "-o json"):
        assert key in out
