"""`matrix --family` and `explain --family` (issue 15): a dual-stack cluster evaluated in the
family asked for, the JSON saying which (`"family"`, docs/cli.md), and a clear error naming
the pod (or the address) when it has no address of that family. The engine underneath
(`build_matrix`, `decide` with a family) is checked directly too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.verdict import Endpoint, FamilyError, decide
from tests.builders import build, namespace, pod
from tests.test_cli import run, write

# a and b dual-stack (IPv4 first), b admits only the IPv6 pod network: a reaches b over IPv6 only
DUAL = (
    namespace("x"),
    pod("x/a", ["10.244.1.2", "fd00:10:244:1::2"], {"pod": "a"}),
    pod("x/b", ["10.244.2.2", "fd00:10:244:2::2"], {"pod": "b"}),
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "v6", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
              "ingress": [{"from": [{"ipBlock": {"cidr": "fd00:10:244::/48", "except": ["fd00:10:244:9::/64"]}}]}]}},
)
V4_ONLY = pod("x/c", "10.244.3.2", {"pod": "c"})


@pytest.fixture
def dual(tmp_path: Path) -> Path:
    return write(tmp_path, "dual.yaml", *DUAL)


def matrix_json(*args: str | Path) -> dict[str, object]:
    result = run("matrix", *args, "--port", "80", "-o", "json")
    assert result.exit_code == 0, result.output
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def test_matrix_family_picks_the_addresses_and_says_so(dual: Path) -> None:
    v4, v6 = matrix_json("-f", dual, "--family", "4"), matrix_json("-f", dual, "--family", "6")
    assert list(v4) == ["protocol", "port", "pods", "allowed", "family"], "the contract's keys first, unchanged"
    assert (v4["family"], v6["family"]) == (4, 6)
    assert v4["allowed"] == {"x/a": {"x/a": True, "x/b": False}, "x/b": {"x/a": True, "x/b": True}}
    assert v6["allowed"] == {"x/a": {"x/a": True, "x/b": True}, "x/b": {"x/a": True, "x/b": True}}


def test_matrix_without_family_follows_the_first_shared_family_and_names_it(dual: Path, tmp_path: Path) -> None:
    assert matrix_json("-f", dual) == matrix_json("-f", dual, "--family", "4"), "IPv4 comes first in podIPs"
    flipped = [pod("x/a", ["fd00:10:244:1::2", "10.244.1.2"], {"pod": "a"}),
               pod("x/b", ["fd00:10:244:2::2", "10.244.2.2"], {"pod": "b"})]
    doc = matrix_json("-f", write(tmp_path, "v6first.yaml", DUAL[0], *flipped, DUAL[3]))
    assert doc["family"] == 6 and doc["allowed"]["x/a"]["x/b"] is True  # type: ignore[index]
    mixed = matrix_json("-f", write(tmp_path, "mixed.yaml", *DUAL, pod("x/d", "fd00:10:244:4::2"), V4_ONLY))
    assert mixed["family"] is None, "pairs in different families: no single family to name"
    v4_cluster = matrix_json("-f", write(tmp_path, "v4.yaml", V4_ONLY))
    assert list(v4_cluster) == ["protocol", "port", "pods", "allowed"], "an IPv4 cluster: exactly DESIGN.md"


def test_matrix_family_a_pod_lacks_is_a_usage_error_naming_the_pod(dual: Path, tmp_path: Path) -> None:
    extra = write(tmp_path, "c.yaml", V4_ONLY)
    result = run("matrix", "-f", dual, "-f", extra, "--port", "80", "--family", "6", "-o", "json")
    assert result.exit_code == 2 and result.stdout == ""
    assert "Invalid value for --family: pod x/c has no IPv6 address (it has 10.244.3.2)" in result.stderr
    assert run("matrix", "-f", dual, "--port", "80", "--family", "5").exit_code == 2


def test_matrix_table_title_names_the_family(dual: Path) -> None:
    result = run("matrix", "-f", dual, "--port", "80", "--family", "6", columns=200)
    assert result.exit_code == 0 and "TCP/80 (IPv6)" in result.stdout


def test_explain_family(dual: Path) -> None:
    def explain(*args: str) -> tuple[int, str, str]:
        result = run("explain", "-f", dual, "--from", "x/a", "--to", "x/b", "--port", "80", *args)
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = explain("--family", "6")
    assert code == 0 and out.splitlines()[0] == "ALLOWED: x/a -> x/b TCP/80 over IPv6"
    assert "peer: ipBlock fd00:10:244::/48 except fd00:10:244:9::/64" in out
    code, out, _ = explain("--family", "4", "-o", "json")
    doc = json.loads(out)
    assert (code, doc["allowed"], doc["family"]) == (0, False, 4)
    assert json.loads(explain("-o", "json")[1])["family"] == 4, "the first shared family, named"
    assert json.loads(explain("--family", "6", "-o", "json")[1])["allowed"] is True


def test_explain_family_errors_name_the_pod_or_the_address(dual: Path, tmp_path: Path) -> None:
    extra = write(tmp_path, "c.yaml", V4_ONLY)
    result = run("explain", "-f", dual, "-f", extra, "--from", "x/c", "--to", "x/b", "--port", "80", "--family", "6")
    assert result.exit_code == 2 and "pod x/c has no IPv6 address (it has 10.244.3.2)" in result.stderr
    result = run("explain", "-f", dual, "--from", "10.244.1.2", "--to", "x/b", "--port", "80", "--family", "6")
    assert result.exit_code == 2 and "10.244.1.2 is not an IPv6 address (--family 6)" in result.stderr
    result = run("explain", "-f", dual, "--from", "fd00:10:244:9::1", "--to", "x/b", "--port", "80", "--family", "6")
    assert result.exit_code == 0 and result.stdout.startswith("DENIED: fd00:10:244:9::1 -> x/b TCP/80 over IPv6")


def test_engine_family_is_pure_and_checked() -> None:
    state = build(*DUAL, V4_ONLY)
    a, b, c = (Endpoint(pod=state.pod("x", n)) for n in "abc")
    assert decide(state, a, b, "TCP", 80, 6).allowed and not decide(state, a, b, "TCP", 80, 4).allowed
    assert decide(state, a, b, "TCP", 80).family == 4 and decide(state, a, b, "TCP", 80, 6).family == 6
    assert decide(state, c, a, "TCP", 80, 4).family == 4
    with pytest.raises(FamilyError, match="pod x/c has no IPv6 address"):
        decide(state, c, a, "TCP", 80, 6)
    with pytest.raises(FamilyError, match="must be 4 or 6"):
        decide(state, a, b, "TCP", 80, 5)
    with pytest.raises(FamilyError, match="pod x/c has no IPv6 address"):
        build_matrix(state, "TCP", 80, 6)
    unknown = build(namespace("x"), pod("x/new", None), *DUAL[1:])
    matrix = build_matrix(unknown, "TCP", 80, 6)
    assert matrix.family == 6 and matrix.allowed["x/new"]["x/b"] is False, "no address: no ipBlock matches it"
