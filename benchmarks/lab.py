"""Lab figures: bring-up time and memory, probe time, pod-to-pod throughput with policies.

    .venv/bin/python benchmarks/lab.py            # everything (~2 minutes, root)
    .venv/bin/python benchmarks/lab.py --quick    # 3 × 9 bring-up, probe and iperf3 only
    .venv/bin/python benchmarks/lab.py --throughput-only --ip-family dual   # iperf3 over IPv4 and IPv6

Prints a Markdown section for docs/benchmarks.md. Every lab goes through the product path
(CNI plugin, one controller per node); each lab lives in its own workdir and is torn down.
- bring-up: `Lab.up` wall time by phase; memory = summed RSS of the lab's processes (OVS
  daemons, controllers, pod servers) and the machine's used-memory delta;
- probe: a full TCP matrix, with a default-deny in one namespace so that denied pairs (which
  cost the probe timeout) are part of it;
- iperf3 (one stream, best of two 3 s runs) server pod on node1, clients on node1 and node2, with no policy
  and then with 1,000 policies all selecting the server's namespace (one of them allowing
  the client on 5201), in the same lab and run, so the ratio compares like with like. With
  `--ip-family dual` each figure is taken over IPv4 and over IPv6, alternately, in one
  dual-stack lab (IPv6 over the IPv4 VXLAN underlay), so the families compare like with like.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdn_netpol.lab import cleanup, procs
from sdn_netpol.lab.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "conformance" / "model.yaml"


def pod(ns: str, name: str, labels: dict[str, str], node: str | None = None,
        ports: tuple[tuple[str, int], ...] = (("TCP", 80), ("UDP", 80), ("SCTP", 80))) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i", "ports": [
        {"containerPort": p, "protocol": proto} for proto, p in ports]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec}


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def big_model(tmp: Path, pods: int) -> Path:
    namespaces = [f"ns{i}" for i in range(10)]
    docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                                  for n in namespaces]
    docs += [pod(namespaces[i % 10], f"p{i:03d}", {"app": f"a{i % 7}"}) for i in range(pods)]
    return write(tmp / f"model-{pods}.yaml", docs)


def lab_memory(workdir: Path) -> dict[str, float]:
    """MiB of RSS of the lab's processes (found by their argv markers), by kind."""
    kinds = {"ovs": 0.0, "controllers": 0.0, "servers": 0.0}
    for pid in procs.find_marked(cleanup.markers(workdir)):
        argv = " ".join(procs.cmdline(pid))
        kind = "ovs" if "--pidfile=" in argv else "controllers" if "controller" in argv else "servers"
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kinds[kind] += int(line.split()[1]) / 1024
        except OSError:
            continue
    return kinds


def used_memory() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kib / 1024


def bring_up(tmp: Path, model: Path, nodes: int, label: str) -> tuple[Lab, dict[str, Any]]:
    lab = Lab(tmp / f"lab-{label}")
    before = used_memory()
    lab.up([model], nodes)
    time.sleep(1.0)  # let the daemons settle before reading RSS
    figures = {"label": label, "pods": len(lab.state().pods), "timings": dict(lab.timings),
               "rss_mib": lab_memory(lab.workdir), "used_delta_mib": used_memory() - before}
    return lab, figures


def probe_time(lab: Lab, tmp: Path, deny_ns: str) -> dict[str, Any]:
    lab.apply([write(tmp / "deny.yaml", [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                          "metadata": {"name": "deny", "namespace": deny_ns},
                                          "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}])])
    start = time.monotonic()
    report = lab.probe("TCP", 80)
    wall = time.monotonic() - start
    allowed = sum(v for row in report.measured.allowed.values() for v in row.values())
    return {"pairs": len(report.measured.pods) ** 2, "allowed": allowed, "seconds": round(report.seconds, 2),
            "wall": round(wall, 2), "mismatches": len(report.mismatches)}


def iperf(lab: Lab, client: str, server: str, seconds: int = 3, runs: int = 2, family: int = 4) -> float:
    """Gbit/s received, one TCP stream: the best of `runs` (other jobs share these 2 vCPUs)."""
    return max(_iperf_once(lab, client, server, seconds, family) for _ in range(runs))


def _iperf_once(lab: Lab, client: str, server: str, seconds: int, family: int) -> float:
    state = lab.state()
    address = state.pods[server].ip_of(family)
    srv = subprocess.Popen(["ip", "netns", "exec", state.pods[server].netns, "iperf3", "-s", "-1", "-p", "5201"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["ip", "netns", "exec", state.pods[client].netns, "iperf3", "-c",
                              str(address), "-p", "5201", "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 20, check=True)
        doc = json.loads(out.stdout)
        return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def thousand_policies(families: tuple[int, ...] = (4,)) -> list[dict[str, Any]]:
    """1,000 policies selecting every pod of `bench`: one allows the clients on 5201; the
    others allow the clients on other ports, or other addresses (ipBlock /32s, and /128s
    where the pods have IPv6, so both families walk as many flows) on 5201, so the server's
    packets walk a rule table of thousands of flows."""
    docs = []
    for i in range(1000):
        if i == 0:
            rule: dict[str, Any] = {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                    "ports": [{"port": 5201}]}
        elif i % 2:
            rule = {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 10000 + i}]}
        else:
            blocks = {4: f"192.168.{i // 256}.{i % 256}/32", 6: f"fd00:192:168::{i:x}/128"}
            rule = {"from": [{"ipBlock": {"cidr": blocks[f]}} for f in families], "ports": [{"port": 5201}]}
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"p{i:04d}", "namespace": "bench"},
                     "spec": {"podSelector": {}, "ingress": [rule]}})
    return docs


def paths(lab: Lab) -> dict[str, float]:
    """Each path in each family of the lab, the families alternating (load drifts)."""
    figures = {}
    for path, client in (("same node", "bench/local"), ("across nodes", "bench/remote")):
        for family in lab.state().families:
            figures[f"{path}|{family}"] = iperf(lab, client, "bench/server", family=family)
    return figures


def throughput(tmp: Path, ip_family: str = "4") -> dict[str, Any]:
    model = write(tmp / "iperf.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
        pod("bench", "server", {"app": "server"}, "node1", (("TCP", 80),)),
        pod("bench", "local", {"app": "client"}, "node1", (("TCP", 80),)),
        pod("bench", "remote", {"app": "client"}, "node2", (("TCP", 80),)),
    ])
    lab = Lab(tmp / "lab-iperf")
    lab.up([model], 2, ip_family=ip_family)
    try:
        base = paths(lab)
        start = time.monotonic()
        lab.apply([write(tmp / "policies.yaml", thousand_policies(lab.state().families))])
        realized = time.monotonic() - start
        flows = sum((lab.status()["nodes"][i]["controller"] or {}).get("flows", {}).get("total", 0) for i in (0, 1))
        loaded = paths(lab)
    finally:
        lab.down()
    return {"base": base, "policies": loaded, "apply_1000_s": round(realized, 2), "flows_total": flows}


def report(ups: list[dict[str, Any]], probes: dict[str, dict[str, Any]], tput: dict[str, Any]) -> str:
    load = Path("/proc/loadavg").read_text().split()[0]
    lines = ["## Lab", "", "Measured by `benchmarks/lab.py` (2 vCPU VM, userspace OVS 3.1, VXLAN, one controller "
             f"per node, pods attached by the CNI plugin; load average {load} when it finished).", ""]
    if ups:
        lines += ["| lab | bring-up | nodes / controllers / pods (CNI + servers) / realized | RSS: OVS + "
                  "controllers + pod servers | used memory Δ |", "|---|---|---|---|---|"]
    for up in ups:
        t, rss = up["timings"], up["rss_mib"]
        lines.append(f"| {up['label']} ({up['pods']} pods) | {t['total']:.1f} s | {t['nodes']:.1f} / "
                     f"{t['controllers']:.2f} / {t['pods']:.1f} / {t['realized']:.2f} s | "
                     f"{sum(rss.values()):.0f} MiB = {rss['ovs']:.0f} + {rss['controllers']:.0f} + "
                     f"{rss['servers']:.0f} | {up['used_delta_mib']:.0f} MiB |")
    if probes:
        lines += ["", "| probe (TCP, one namespace default-deny; silences confirmed) | pairs | allowed | mismatches | "
                  "probe time | command wall time |", "|---|---|---|---|---|---|"]
    for label, p in probes.items():
        lines.append(f"| {label} | {p['pairs']} | {p['allowed']} | {p['mismatches']} | {p['seconds']:.2f} s | "
                     f"{p['wall']:.2f} s |")
    lines += ["", "iperf3, one TCP stream, best of two 3 s runs; 1,000 policies selecting the server "
              f"({tput['flows_total']} flows over both nodes, applied and realized in "
              f"{tput['apply_1000_s']:.1f} s):", "",
              "| path | family | no policy | 1,000 policies | ratio |", "|---|---|---|---|---|"]
    for key, base in tput["base"].items():
        path, family = key.split("|")
        loaded = tput["policies"][key]
        lines.append(f"| {path} | IPv{family} | {base:.2f} Gbit/s | {loaded:.2f} Gbit/s | {loaded / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="skip the 5 × 20 lab")
    parser.add_argument("--throughput-only", action="store_true", help="only iperf3 (no bring-up or probe labs)")
    parser.add_argument("--ip-family", choices=["4", "6", "dual"], default="4",
                        help="pod addresses of the iperf3 lab; dual: every figure over IPv4 and IPv6")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sdnlab-bench-") as raw:
        tmp = Path(raw)
        ups, probes = [], {}
        sizes = [("3 × 9", MODEL, 3, "x")] + ([] if args.quick else [("5 × 20", big_model(tmp, 100), 5, "ns0")])
        sizes = [] if args.throughput_only else sizes
        for label, model, nodes, deny_ns in sizes:
            lab, figures = bring_up(tmp, model, nodes, label.replace(" ", ""))
            try:
                ups.append({**figures, "label": label})
                probes[f"{label}: {figures['pods']}×{figures['pods']}"] = probe_time(lab, tmp, deny_ns)
            finally:
                lab.down()
        tput = throughput(tmp, args.ip_family)
    print(report(ups, probes, tput))


if __name__ == "__main__":
    main()
