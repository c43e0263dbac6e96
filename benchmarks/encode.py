"""FlowMod encoding: µs per flow of os-ken (compiler/osken.py, the reference) against the
struct encoder the controller uses (compiler/ofwire.py), over one node's whole FlowSet.

    .venv/bin/python benchmarks/encode.py                    # 10k pods × 1,000 policies, node0
    .venv/bin/python benchmarks/encode.py --pods 1000 --policies 100

Clusters come from tests/synthetic_cluster.py, node0's view, as in benchmarks/compile.py.
Each path encodes every flow as an add (what a first install sends); the best of --repeat
runs is kept. The bytes of both paths are compared for every flow before timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdn_netpol.compiler.compile import compile_node
from sdn_netpol.compiler.flow import Flow
from sdn_netpol.compiler.ofwire import encode_flow_mod
from sdn_netpol.compiler.osken import to_flow_mod
from sdn_netpol.compiler.topology import assign_ports
from sdn_netpol.controller import wire
from tests.synthetic_cluster import synthetic_state

NODE = "node0"


def os_ken(flow: Flow) -> bytes:
    return wire.serialise(to_flow_mod(flow, wire.DESC, "add"))


def ofwire(flow: Flow) -> bytes:
    return encode_flow_mod(flow, "add")


def per_flow_us(encode: Callable[[Flow], bytes], flows: list[Flow], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for flow in flows:
            encode(flow)
        best = min(best, time.perf_counter() - start)
    return best / len(flows) * 1e6


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--pods", type=int, default=10_000)
    args.add_argument("--policies", type=int, default=1_000)
    args.add_argument("--repeat", type=int, default=3)
    opts = args.parse_args()
    state = synthetic_state(opts.pods, opts.policies)
    flows = list(compile_node(state, assign_ports(state, NODE)))
    mismatched = sum(os_ken(f) != ofwire(f) for f in flows)
    if mismatched:
        raise SystemExit(f"{mismatched} of {len(flows)} flows encode differently from os-ken")
    reference = per_flow_us(os_ken, flows, opts.repeat)
    fast = per_flow_us(ofwire, flows, opts.repeat)
    print(f"{opts.pods} pods × {opts.policies} policies, {NODE}: {len(flows)} flows, bytes equal")
    print(f"os-ken  {reference:7.2f} µs/flow  ({reference * len(flows) / 1e3:7.1f} ms)")
    print(f"ofwire  {fast:7.2f} µs/flow  ({fast * len(flows) / 1e3:7.1f} ms)  {reference / fast:.1f}× faster")


if __name__ == "__main__":
    main()
