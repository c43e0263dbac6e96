"""A short soak (the long one is benchmarks/soak.py): one 3-node lab through a few minutes of
policy and Namespace label churn. After every change: the measured TCP matrix equals the
engine's, no megaflow contradicts the tables, and memory and flows do not grow with time;
all along, every pod pair probed over and over never passes where every legitimate matrix
denies, nor fails where every one allows; after `down`, nothing is left (namespaces,
processes, this process's descriptors)."""

from __future__ import annotations

from pathlib import Path

from sdn_netpol.lab import cleanup
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.soak import open_fds, soak
from sdn_netpol.lab.traffic import Pair, Sample
from tests.lab_fixtures import MODEL

SECONDS = 180.0


def repeated_denies(false_denies: list[Sample]) -> list[tuple[Pair, int]]:
    """(pair, round) of every false deny whose pair was falsely denied the round before too."""
    seen = {(s.pair, s.round) for s in false_denies}
    return sorted((pair, r) for pair, r in seen if (pair, r - 1) in seen)


def test_a_lab_soaked_in_churn_stays_exact_and_leaves_nothing(tmp_path: Path) -> None:
    fds_before = open_fds()
    lab = Lab(tmp_path / "lab")
    try:
        lab.up([MODEL], nodes=3)
        report = soak(lab, tmp_path, SECONDS, seed=1)
    finally:
        lab.down()
    assert len(report.steps) >= 10, "a soak of so few steps shows nothing"
    assert {s.change.split()[0] for s in report.steps} >= {"apply", "delete", "namespace"}
    wrong = [s for s in report.steps if s.mismatches or s.stale_megaflows]
    assert not wrong, wrong
    assert report.probe_rounds > len(report.steps), "the prober ran between the steps too"
    assert report.traffic.false_allows == [], report.traffic.false_allows[:10]
    # One SYN, 0.8 s, once a second: a loaded machine may let one probe time out; an allowed
    # pair failing two rounds in a row is an outage.
    assert repeated_denies(report.traffic.false_denies) == []
    # Flat: the flow count follows the policies (bounded by the pool), RSS must not climb
    # step after step; 200 KiB/step over 3 controllers would be a leak of ~1 MB per 5 changes.
    rss_slope = report.slope(lambda s: s.controller_rss_kib, skip=0.5)  # after warm-up
    print(f"\nsoak: {len(report.steps)} steps, {report.probe_rounds} probe rounds, "
          f"{len(report.traffic.false_denies)} false-denied probes, "
          f"RSS slope {rss_slope:.1f} KiB/step, "
          f"flows {min(s.flows for s in report.steps)}-{max(s.flows for s in report.steps)}")
    assert rss_slope < 200
    assert max(s.flows for s in report.steps) > min(s.flows for s in report.steps) > 0, "flows follow the churn"
    assert cleanup.leftovers(lab.workdir) == {"netns": [], "processes": []}
    assert open_fds() <= fds_before + 2


