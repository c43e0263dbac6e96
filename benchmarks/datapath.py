"""What purging the megaflows after each change costs (docs/reliability.md), on a real OVS.

    .venv/bin/python benchmarks/datapath.py                       # 10k pods × 1,000 policies
    .venv/bin/python benchmarks/datapath.py --pods 1000 --flows 500 --flows 5000

The controller's parts run in this process against a userspace OVS, as in
benchmarks/realize.py (same synthetic cluster, node0's view, pods as internal ports). Traffic:
TCP SYNs sent from node0's pods (raw frames on their internal ports: their own MAC and IP,
to the gateway MAC) to other pods' addresses and ports, enough distinct packets to make the
datapath hold about F megaflows. Then, for each F:

* purge: how long ``revalidator/purge`` takes with F megaflows in the datapath;
* upcall burst: the same packets sent again right after a purge; every one is an upcall
  (``dpctl/show`` missed count) until the megaflows are back: upcalls, the time to send the
  whole burst against the same burst on a warm datapath, and the megaflows re-made;
* re-made within: from the start of that burst until the datapath holds 95% of the
  megaflows it had (the time the node's traffic runs on upcalls after a purge);
* realization with traffic: a local pod relabel while the megaflows are held, with the
  purge (``--datapath-purge purge``) and without it (``never``): the change's latency to
  the barrier (and the purge), and the realizer's settle phase alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import realize

from sdn_netpol.compiler.pipeline import GATEWAY_MAC
from sdn_netpol.compiler.topology import mac_for_ip
from sdn_netpol.controller.config import Config, DatapathOptions
from sdn_netpol.lab import netns
from sdn_netpol.ovs import datapath
from sdn_netpol.ovs.trace import Tracer
from tests.controller_fixtures import Switch, switch

SAMPLES = 9  # relabels per mode and size
_DPCTL = re.compile(r"lookups: hit:(\d+) missed:(\d+) lost:(\d+)\s+flows: (\d+)")


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def syn_frame(src_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int) -> bytes:
    eth = bytes.fromhex(GATEWAY_MAC.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", _checksum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return eth + ip + tcp


class Traffic:
    """Raw sockets on node0's pods' internal ports, in the switch's namespace."""

    def __init__(self, sw: Switch, ports: list[str]) -> None:
        self.socks = {}
        for name in ports:
            subprocess.run(["ip", "-n", sw.netns, "link", "set", name, "up"], check=True)
            sock = netns.socket_in(sw.netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((name, 0))
            self.socks[name] = sock

    def send(self, frames: list[tuple[str, bytes]]) -> float:
        start = time.monotonic()
        for port, frame in frames:
            self.socks[port].send(frame)
        return time.monotonic() - start


def dp_counters(unixctl: Tracer) -> dict[str, int]:
    found = _DPCTL.search(unixctl.call("dpctl/show"))
    assert found, "dpctl/show without lookups/flows lines"
    return {"hit": int(found[1]), "missed": int(found[2]), "lost": int(found[3]), "flows": int(found[4])}


def settle_flows(unixctl: Tracer, quiet: float = 0.3) -> int:
    """Wait until the megaflow count stops moving; return it."""
    last, still = -1, time.monotonic()
    while True:
        flows = dp_counters(unixctl)["flows"]
        if flows != last:
            last, still = flows, time.monotonic()
        elif time.monotonic() - still > quiet:
            return flows
        time.sleep(0.05)


def wait_flows(unixctl: Tracer, target: int, timeout: float = 30.0) -> float:
    """Seconds until the datapath holds at least `target` megaflows (polled every ms)."""
    start = time.monotonic()
    while dp_counters(unixctl)["flows"] < target:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"megaflows not back to {target} within {timeout} s")
        time.sleep(0.001)
    return time.monotonic() - start


def frames_for(local: list[Any], others: list[Any], wanted: int) -> list[tuple[str, bytes]]:
    """About `wanted` distinct packets: each local pod to a spread of other pods, port 80 and 443."""
    frames = []
    for i in range(wanted):
        src, dst = local[i % len(local)], others[(i * 7919) % len(others)]
        dport = (80, 443, 8080, 5432)[i % 4]
        frames.append((f"q{local.index(src)}", syn_frame(str(mac_for_ip(src.ips[0])), str(src.ips[0]),
                                                            str(dst.ips[0]), 10000 + i % 50000, dport)))
    return frames


def measure(n_pods: int, flow_targets: list[int]) -> dict[str, Any]:
    state, nodes = realize.cluster(n_pods)
    local = [p for p in state.pods if p.node_name == realize.NODE]
    others = [p for p in state.pods if p.node_name != realize.NODE] + local
    out: dict[str, Any] = {"pods": n_pods, "policies": realize.N_POLICIES, "local_pods": len(local), "runs": []}
    with tempfile.TemporaryDirectory(prefix="datapath-bench-") as tmp, switch(Path(tmp)) as sw:
        config = Config(node=realize.NODE, source="bench", ofp_listen=f"{sw.root_ip}:6653",
                        ovsdb=f"unix:{sw.ovs.db_sock}", datapath=DatapathOptions(mode="purge"))
        parts, probe = realize.start_controller(sw, local, config)
        parts.realizer._settle = probe._timed("settle", parts.realizer._settle)  # type: ignore[method-assign]
        _at, flows = realize.install(parts, probe, state, nodes)
        out["openflow_flows"] = flows
        traffic = Traffic(sw, [f"q{i}" for i in range(len(local))])
        relabels = realize.relabels(state, 2 * len(flow_targets) * SAMPLES)
        with Tracer(sw.ovs) as unixctl:
            for wanted in flow_targets:
                frames = frames_for(local, others, wanted)
                datapath.purge(unixctl)
                traffic.send(frames)
                held = settle_flows(unixctl)
                warm_send = min(traffic.send(frames) for _ in range(3))
                settle_flows(unixctl)
                before = dp_counters(unixctl)
                start = time.monotonic()
                datapath.purge(unixctl)
                purge_s = time.monotonic() - start
                burst_send = traffic.send(frames)
                remade = settle_flows(unixctl)
                after = dp_counters(unixctl)
                datapath.purge(unixctl)
                began = time.monotonic()
                traffic.send(frames)
                remake_s = time.monotonic() - began + wait_flows(unixctl, int(remade * 0.95))
                run: dict[str, Any] = {
                    "packets": len(frames), "megaflows": held, "purge_ms": round(purge_s * 1000, 2),
                    "burst_upcalls": after["missed"] - before["missed"], "burst_lost": after["lost"] - before["lost"],
                    "burst_send_ms": round(burst_send * 1000, 1), "warm_send_ms": round(warm_send * 1000, 1),
                    "remade_megaflows": remade, "remake_ms": round(remake_s * 1000, 1)}
                for mode in ("purge", "never"):
                    parts.datapath.mode = mode
                    latencies, settles, mods = [], [], []
                    for _ in range(SAMPLES):
                        traffic.send(frames)
                        settle_flows(unixctl, 0.2)
                        probe.drain()
                        probe.phases.clear()
                        key, obj = next(relabels)
                        began = time.monotonic()
                        parts.store.put(key, obj)
                        at, sent = probe.wait_generation(parts.store.generation)
                        latencies.append(at - began)
                        mods.append(sent)
                        settles.append(probe.phases.get("settle", 0.0))
                    run[f"relabel_{mode}_ms"] = round(statistics.median(latencies) * 1000, 1)
                    run[f"relabel_{mode}_flow_mods"] = round(statistics.mean(mods), 1)
                    run[f"settle_{mode}_ms"] = round(statistics.median(settles) * 1000, 2)
                print(f"  {run}", file=sys.stderr)
                out["runs"].append(run)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['pods']:,} pods × {result['policies']:,} policies, node0: {result['local_pods']} local pods, "
             f"{result['openflow_flows']:,} OpenFlow flows", "",
             "| megaflows | purge ms | upcalls after purge (lost) | megaflows re-made | re-made within ms "
             "| pod relabel p50 ms: purge / never (flow mods) | settle p50 ms: purge / never |",
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['megaflows']:,} | {r['purge_ms']} | {r['burst_upcalls']:,} ({r['burst_lost']}) | "
                     f"{r['remade_megaflows']:,} | {r['remake_ms']} | "
                     f"{r['relabel_purge_ms']} / {r['relabel_never_ms']} ({r['relabel_purge_flow_mods']}) | "
                     f"{r['settle_purge_ms']} / {r['settle_never_ms']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--flows", type=int, action="append", help="packets per burst; default 1000 and 5000")
    args = parser.parse_args()
    result = measure(args.pods, args.flows or [1_000, 5_000])
    print(table(result))
    print(json.dumps(result), flush=True)
    os._exit(0)  # os-ken's threads are not daemons and cannot be stopped


if __name__ == "__main__":
    main()
