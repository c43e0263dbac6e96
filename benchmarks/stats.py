"""What one sample of the per-rule statistics costs (controller/rulestats.py), on a real OVS.

    .venv/bin/python benchmarks/stats.py                 # 10k pods × 1,000 policies
    .venv/bin/python benchmarks/stats.py --pods 1000

The same cluster and controller set-up as benchmarks/realize.py (node0's view, installed by
the controller); then the sampler's read is timed: ``dump-flows`` of the RULE and ISOLATION
cookie categories, parsing, naming (cached per cluster state) and summing. The controller
does this once per ``--stats-interval`` (10 s); a /metrics scrape only reads the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import realize

from sdn_netpol.controller.rulestats import RuleStatsSampler
from tests.controller_fixtures import BRIDGE, switch


def measure(n_pods: int, samples: int) -> dict[str, object]:
    state, nodes = realize.cluster(n_pods)
    local = [p for p in state.pods if p.node_name == realize.NODE]
    with tempfile.TemporaryDirectory(prefix="stats-bench-") as tmp, switch(Path(tmp)) as sw:
        parts, probe = realize.start_controller(sw, local)
        _at, flows = realize.install(parts, probe, state, nodes)
        sampler = RuleStatsSampler(sw.ovs.rundir, BRIDGE, realize.NODE, lambda: parts.realizer.realized_state)
        began = time.monotonic()
        first = sampler.sample()
        cold = time.monotonic() - began
        times = []
        for _ in range(samples):
            began = time.monotonic()
            sampler.sample()
            times.append(time.monotonic() - began)
        assert first is not None
        counted = sum(1 for f in sampler._dump(realize_filter()) if "conjunction(" not in f.actions)
        return {"pods": n_pods, "policies": realize.N_POLICIES, "flows": flows, "rule_series": len(first.rules),
                "isolation_series": len(first.isolation_drops), "counted_rule_flows": counted,
                "cold_ms": round(cold * 1000, 1), "warm_p50_ms": round(statistics.median(times) * 1000, 1),
                "warm_max_ms": round(max(times) * 1000, 1)}


def realize_filter() -> str:
    from sdn_netpol.debug.stats import FILTERS
    return FILTERS[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(args.pods, args.samples)), flush=True)
    os._exit(0)  # os-ken's threads are not daemons and cannot be stopped


if __name__ == "__main__":
    main()
