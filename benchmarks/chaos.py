"""Chaos on the lab: `python benchmarks/chaos.py --rounds 3 [--faults a,b]` (root, from the repo root).

One 3-node lab over the conformance model, with the fixed policies, the prober (every pod
pair on TCP/80 about once a second), four long TCP streams and policy/label churn of
sdn_netpol/lab/chaos.py; every fault of sdn_netpol/lab/chaos_faults.py is injected once per
round (on node round+i mod 3). The API-watch faults move one node's controller onto the
fake API server of tests/fakekube.py for their duration. Prints one line per fault episode
and a per-fault summary; record it in docs/reliability.md ("Chaos") with the machine and date.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdn_netpol.lab import chaos, chaos_faults  # noqa: E402
from sdn_netpol.lab.chaos_faults import ALL_FAULTS  # noqa: E402
from sdn_netpol.lab.lab import Lab  # noqa: E402
from tests.fakekube import FakeKube  # noqa: E402

MODEL = ROOT / "examples" / "conformance" / "model.yaml"


def summary(results: list[chaos.FaultResult]) -> list[str]:
    lines = ["| fault | episodes | false allows | false denies (probes) | longest false deny | streams cut "
             "| converge (median / max) |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r.name for r in results):
        rs = [r for r in results if r.name == name]
        conv = sorted(r.converge_seconds for r in rs if r.converge_seconds is not None)
        never = len(rs) - len(conv)
        conv_text = (f"{conv[len(conv) // 2]:.1f} s / {conv[-1]:.1f} s" if conv else "—") + (
            f" ({never} never)" if never else "")
        lines.append(f"| {name} | {len(rs)} | {sum(r.false_allows for r in rs)} | "
                     f"{sum(r.false_denies for r in rs)} | {max(r.longest_false_deny for r in rs):.1f} s | "
                     f"{sum(r.streams_cut for r in rs)} | {conv_text} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faults", default=",".join(ALL_FAULTS), help="comma-separated, of: " + ", ".join(ALL_FAULTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy every node's logs here before down")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    unknown = [f for f in faults if f not in ALL_FAULTS]
    if unknown:
        parser.error(f"unknown fault(s): {unknown}")
    def report(result: chaos.FaultResult) -> None:
        print(result.line(), flush=True)
        for example in result.examples:
            print("    " + example, flush=True)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, FakeKube() as kube:
        lab = Lab(Path(tmp) / "lab")
        try:
            lab.up([MODEL], nodes=3)
            run = chaos.setup(lab, Path(tmp), seed=args.seed, kube=kube)
            try:
                results = chaos_faults.run_faults(run, faults, args.rounds, on_result=report)
            finally:
                chaos.teardown(run)
            print(f"\nchurn: {run.churn.changes} changes, stuck: {run.churn.stuck or 'none'}; "
                  f"prober: {run.prober.rounds} rounds of {len(run.churn.pairs)} pairs; "
                  f"{time.monotonic() - started:.0f} s in all")
            print("\n".join(summary(results)))
        finally:
            if args.keep_logs:
                shutil.copytree(Path(tmp) / "lab" / "nodes", args.keep_logs, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock", "*.ctl", "*.mgmt", "*.snoop", "disk-*"))
            lab.down()


if __name__ == "__main__":
    main()
