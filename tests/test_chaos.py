"""Chaos on the lab (issue 14, point 1; the long run is benchmarks/chaos.py): a 3-node lab with
policies, every pod pair probed about once a second, four long TCP streams, policy and label
churn, and every fault of sdn_netpol/lab/chaos_faults.py injected once: controller, vswitchd
and ovsdb-server `kill -9`, a controller started before its OVS, a switch cut mid-bundle, an
invalid manifest, a full disk under the controller's logs, and stalled, dropped and expired
(410) API watches against tests/fakekube.py. For every fault: no denied pair ever got
through, the matrix measured again equals the engine's, and where the switch keeps its
flows (everything but a dead OVS) no stream is cut; a restarted controller resends no table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sdn_netpol.lab import chaos, chaos_faults
from sdn_netpol.lab.chaos_faults import ALL_FAULTS
from tests.fakekube import FakeKube
from tests.lab_fixtures import lab_up

OVS_DIES = ("ovs-vswitchd kill -9", "controller before OVS")  # the datapath's conntrack goes with it


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[chaos.FaultResult], chaos.ChaosRun]]:
    tmp = tmp_path_factory.mktemp("chaos")
    with FakeKube() as kube, lab_up(tmp / "lab", 3) as lab:
        run = chaos.setup(lab, tmp, seed=3, kube=kube)
        try:
            found = chaos_faults.run_faults(run, ALL_FAULTS, on_result=lambda r: print("\n" + r.line(), *r.examples,
                                                                               sep="\n    "))
        finally:
            chaos.teardown(run)
        yield found, run


def _by_name(results: list[chaos.FaultResult]) -> dict[str, chaos.FaultResult]:
    return {r.name: r for r in results}


def test_every_fault_ran(results: tuple[list[chaos.FaultResult], chaos.ChaosRun]) -> None:
    found, run = results
    assert len(found) == len(ALL_FAULTS)
    assert run.churn.changes >= len(ALL_FAULTS), "the churn went on during the faults"
    assert not run.churn.stuck, run.churn.stuck
    assert run.prober.rounds >= 60


def test_no_fault_lets_a_denied_pair_through(results: tuple[list[chaos.FaultResult], chaos.ChaosRun]) -> None:
    leaks = [f"{r.line()}\n    " + "\n    ".join(r.examples) for r in results[0] if r.false_allows]
    assert not leaks, "\n".join(leaks)


def test_every_fault_converges_to_the_engines_matrix(results: tuple[list[chaos.FaultResult], chaos.ChaosRun]) -> None:
    stuck = [r.line() for r in results[0] if r.converge_seconds is None]
    assert not stuck, "\n".join(stuck)


def test_streams_survive_every_fault_that_leaves_ovs_running(
        results: tuple[list[chaos.FaultResult], chaos.ChaosRun]) -> None:
    cut = [f"{r.line()}\n    " + "\n    ".join(r.examples) for r in results[0]
           if r.streams_cut and r.name not in OVS_DIES]
    assert not cut, "\n".join(cut)
    assert _by_name(results[0])["controller kill -9"].streams_cut == 0


def test_a_killed_controller_comes_back_without_a_flush(
        results: tuple[list[chaos.FaultResult], chaos.ChaosRun]) -> None:
    """fail_mode=secure held the flows; the restarted controller reads the table and sends
    only what the churn changed meanwhile, far from the whole table."""
    killed = _by_name(results[0])["controller kill -9"]
    assert killed.flow_mods is not None and killed.flows > 0
    assert killed.flow_mods < killed.flows / 2, killed.line()
    assert killed.false_denies == 0, killed.line()


def test_the_fault_specific_paths_were_taken(results: tuple[list[chaos.FaultResult], chaos.ChaosRun]) -> None:
    found = _by_name(results[0])
    assert found["switch cut mid-bundle"].detail == "connection cut mid-change"
    assert found["manifest turns invalid"].detail.startswith("invalid reported by 3 node(s)")
    assert "controller alive on the full disk" in found["disk full (log, audit)"].detail
    assert found["API watch expired"].detail == "410 Gone on every watch, relisted"


def test_cli_fault_names_match(tmp_path: Path) -> None:
    assert set(ALL_FAULTS) >= {"controller-kill", "vswitchd-kill", "ovsdb-kill", "controller-before-switch",
                               "mid-bundle", "watch-stall", "watch-drop", "watch-410", "invalid-manifest",
                               "disk-full"}
