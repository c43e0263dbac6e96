"""Soak the lab: `python benchmarks/soak.py --minutes 30` (root). One 3-node lab over the
conformance model through policy and Namespace label churn (sdn_netpol/lab/soak.py); after
every change the TCP matrix is probed and every node's megaflows verified, and all along
every pod pair is probed about once a second. Prints one line per step and the totals:
mismatches, stale megaflows, false allows and denies of the continuous probes, controller
RSS and flow slopes, and what `down` left. Record the figures in docs/benchmarks.md with the machine and date."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sdn_netpol.lab import cleanup
from sdn_netpol.lab.lab import Lab
from sdn_netpol.lab.soak import SoakReport, Step, open_fds, soak

MODEL = Path(__file__).resolve().parents[1] / "examples" / "conformance" / "model.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fds = open_fds()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        count = [0]

        def show(step: Step) -> None:
            count[0] += 1
            print(f"{count[0]:5d} {step.seconds:5.2f}s mismatches={step.mismatches} stale={step.stale_megaflows} "
                  f"rss={step.controller_rss_kib}KiB flows={step.flows} {step.change}", flush=True)

        try:
            lab.up([MODEL], nodes=3)
            report = soak(lab, Path(tmp), args.minutes * 60, args.seed, show)
            summarize(report)  # before `down`: the figures stand whatever teardown does
        finally:
            lab.down()
        left = cleanup.leftovers(lab.workdir)
    print(f"after down: {left}, descriptors {open_fds() - fds:+d}")


def summarize(report: SoakReport) -> None:
    traffic = report.traffic
    print(f"steps {len(report.steps)}, mismatches {report.mismatches}, stale megaflows {report.stale}")
    print(f"continuous probes: {report.probe_rounds} rounds, {report.probe_samples} samples, "
          f"false allows {len(traffic.false_allows)}, false denies {len(traffic.false_denies)}, "
          f"longest false deny {traffic.false_deny_seconds:.1f} s")
    rss = [s.controller_rss_kib for s in report.steps]
    flows = [s.flows for s in report.steps]
    if rss:
        print(f"controller RSS (3 nodes) first {rss[0]} KiB, last {rss[-1]} KiB, max {max(rss)} KiB; "
              f"flows {min(flows)}-{max(flows)}")
    print(f"controller RSS slope {report.slope(lambda s: s.controller_rss_kib, 0.5):.2f} KiB/step (second half), "
          f"flows slope {report.slope(lambda s: s.flows):.3f}/step", flush=True)

if __name__ == "__main__":
    main()
