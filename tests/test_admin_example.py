"""examples/multi-tenant: an admin deny, a Pass to the namespace owners, a baseline default
deny (examples/multi-tenant/README.md), through the CLI as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sdn_netpol.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "multi-tenant"
PODS = ["monitoring/grafana", "monitoring/prometheus", "tenant-a/db", "tenant-a/web", "tenant-b/api",
        "tenant-b/web"]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def allowed_pairs(port: int) -> set[tuple[str, str]]:
    doc = json.loads(run("matrix", "-f", str(EXAMPLE), "--port", str(port), "-o", "json"))
    assert doc["pods"] == PODS
    return {(src, dst) for src, row in doc["allowed"].items() for dst, ok in row.items() if ok and src != dst}


def test_the_example_validates() -> None:
    assert run("validate", "-f", str(EXAMPLE)).strip() == (
        "ok: 3 namespace(s), 6 pod(s), 2 network policies, 4 cluster policies")


def test_only_monitoring_reaches_monitoring_and_tenants_decide_within_the_baseline() -> None:
    assert allowed_pairs(8080) == {
        ("monitoring/grafana", "monitoring/prometheus"), ("monitoring/prometheus", "monitoring/grafana"),
        ("tenant-a/db", "tenant-a/web"), ("tenant-a/web", "tenant-a/db"),  # tenant-a's NetworkPolicy
        ("tenant-b/web", "tenant-b/api"),  # tenant-b's NetworkPolicy; tenant-b/web falls to the baseline deny
    }


def test_prometheus_scrapes_every_tenant_pod_on_the_named_metrics_port() -> None:
    scraped = {dst for src, dst in allowed_pairs(9100) if src == "monitoring/prometheus"}
    assert scraped == set(PODS) - {"monitoring/prometheus"}


def test_explain_names_the_pass_and_the_admin_deny() -> None:
    text = run("explain", "-f", str(EXAMPLE), "--from", "tenant-b/web", "--to", "tenant-a/web", "--port", "8080")
    assert ('  ingress: Passed by AdminNetworkPolicy tenant-owners (Admin, priority 30) ingress rule 0 '
            '"to-namespace-owners"') in text.splitlines()
    text = run("explain", "-f", str(EXAMPLE), "--from", "tenant-a/web", "--to", "monitoring/grafana", "--port", "8080")
    assert ('  ingress: Denied by ClusterNetworkPolicy protect-monitoring (Admin, priority 10) ingress rule 1 '
            '"block-all"') in text.splitlines()
    doc = json.loads(run("explain", "-f", str(EXAMPLE), "--from", "tenant-b/api", "--to", "tenant-b/web",
                         "--port", "8080", "-o", "json"))
    assert doc["allowed"] is False and doc["ingress"]["decided_in"] == "Baseline"
    assert doc["ingress"]["baseline"]["policy"] == "BaselineAdminNetworkPolicy/default"
    assert doc["ingress"]["admin"]["action"] == "Pass" and doc["egress"]["decided_in"] is None
