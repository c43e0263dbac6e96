"""Kernel-datapath figures (issue 16, point 5), each beside its netdev twin in docs/benchmarks.md.

    .venv/bin/python benchmarks/kernel.py            # all (~10 min)
    .venv/bin/python benchmarks/kernel.py --quick    # the 2-node bring-up and throughput only

Nodes are qemu TCG VMs (sdn_netpol/lab/vmlab.py): absolute figures are those of emulated
CPUs, not of a production node; the ratios (0 vs 1,000 policies) are what carries over.

- bring-up of the conformance model (9 pods) on 2 and 3 nodes: time by phase, qemu RSS per
  VM, the guest's own used memory;
- iperf3, one TCP stream, best of two 3 s runs, same node and across nodes (kernel VXLAN),
  with no policy and with the 1,000 policies of benchmarks/lab.py selecting the server;
- realization: wall time of `apply` until every node's controller reports it realized
  (1,000 policies at once, then single-policy changes), from the host, agent round trips
  included;
- evidence for docs/pipeline.md "Per datapath": kernel conntrack's SCTP entries after an
  association (ports or not), and TCP/UDP across nodes with TX checksum offload turned on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.lab import pod, thousand_policies
from sdn_netpol.lab.store import read_objects
from sdn_netpol.lab.vmlab import VmLab

MODEL = Path(__file__).resolve().parent.parent / "examples" / "conformance" / "model.yaml"


def bring_up(tmp: Path, nodes: int) -> dict[str, Any]:
    lab = VmLab(tmp / f"up-{nodes}", nodes=nodes)
    lab.up(read_objects([MODEL]))
    try:
        used = {n: int(vm.check(["free", "-m"]).splitlines()[1].split()[2]) for n, vm in lab.vms.items()}
        return {"nodes": nodes, "timings": lab.timings, "rss_mib": lab.rss_mib(), "guest_used_mib": used}
    finally:
        lab.down()


def iperf(lab: VmLab, client: str, server: str, runs: int = 2) -> float:
    best = 0.0
    srv, cli = lab.pods[server], lab.pods[client]
    for _ in range(runs):
        lab.vms[srv.node].spawn(["ip", "netns", "exec", srv.netns, "iperf3", "-s", "-1", "-p", "5201"],
                                "/run/sdn-netpol/iperf3.log")
        time.sleep(1.0)
        out = lab.vms[cli.node].run(["ip", "netns", "exec", cli.netns, "iperf3", "-c", srv.ip, "-p", "5201",
                                     "-t", "3", "-J"], timeout=60)
        if out.rc == 0:
            best = max(best, json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6)
    return round(best, 1)


def throughput(tmp: Path) -> dict[str, Any]:
    lab = VmLab(tmp / "iperf", nodes=2)
    lab.up([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
            pod("bench", "server", {"app": "server"}, "node1", (("TCP", 80),)),
            pod("bench", "local", {"app": "client"}, "node1", (("TCP", 80),)),
            pod("bench", "remote", {"app": "client"}, "node2", (("TCP", 80),))])
    try:
        paths = {"same node": "bench/local", "across nodes": "bench/remote"}
        base = {path: iperf(lab, client, "bench/server") for path, client in paths.items()}
        start = time.monotonic()
        lab.apply(thousand_policies())
        realized = time.monotonic() - start
        flows = {n: vm.check(["ovs-ofctl", "dump-aggregate", "br-int"]).split("flow_count=")[1].split()[0]
                 for n, vm in lab.vms.items()}
        loaded = {path: iperf(lab, client, "bench/server") for path, client in paths.items()}
        singles = []
        for i in range(10):
            doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "single", "namespace": "bench"},
                   "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                            "ingress": [{"ports": [{"port": 20000 + i}]}]}}
            start = time.monotonic()
            lab.apply([doc])
            singles.append(time.monotonic() - start)
        return {"base": base, "policies": loaded, "apply_1000_s": round(realized, 1), "flows": flows,
                "single_change_s": {"median": round(statistics.median(singles), 2), "max": round(max(singles), 2)}}
    finally:
        lab.down()


def evidence(tmp: Path) -> dict[str, Any]:
    lab = VmLab(tmp / "evidence", nodes=2)
    lab.up(read_objects([MODEL]))
    try:
        found: dict[str, Any] = {}
        targets = {k: p.ip for k, p in lab.pods.items()}
        src, dst = lab.pods["x/a"], lab.pods["x/b"]  # node1 -> node2
        probe = {"protocol": "SCTP", "port": 80, "targets": targets, "pairs": [["x/a", "x/b"]]}
        found["sctp_probe"] = lab.guest(src.node, "probe", probe)
        found["sctp_conntrack"] = [line for line in lab.vms[dst.node].check(
            ["ovs-appctl", "dpctl/dump-conntrack"]).splitlines() if "sctp" in line]
        for pod in (src, dst):
            lab.vms[pod.node].check(["ip", "netns", "exec", pod.netns, "ethtool", "-K", "eth0", "tx", "on"])
        found["tx_on"] = {proto: lab.guest(src.node, "probe", {**probe, "protocol": proto})
                          for proto in ("TCP", "UDP")}
        found["tx_state"] = lab.vms[src.node].check(["ip", "netns", "exec", src.netns, "ethtool", "-k", "eth0"])
        found["tx_state"] = [ln for ln in found["tx_state"].splitlines() if "tx-checksumming" in ln]
        return found
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kernel-bench-") as name:
        tmp = Path(name)
        figures: dict[str, Any] = {"bring_up": [bring_up(tmp, 2)]}
        print(json.dumps(figures["bring_up"][-1]), flush=True)
        figures["throughput"] = throughput(tmp)
        print(json.dumps(figures["throughput"]), flush=True)
        if not args.quick:
            figures["bring_up"].append(bring_up(tmp, 3))
            print(json.dumps(figures["bring_up"][-1]), flush=True)
            figures["evidence"] = evidence(tmp)
            print(json.dumps(figures["evidence"], indent=1), flush=True)


if __name__ == "__main__":
    main()
