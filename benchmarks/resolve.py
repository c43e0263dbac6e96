"""Policy resolution benchmark: synthetic clusters → every rule of every policy resolved into
concrete address and port sets (`resolve_all`, including building the label indexes).

    .venv/bin/python benchmarks/resolve.py           # 1k/10k pods × 100/1,000 policies
    .venv/bin/python benchmarks/resolve.py --quick   # the small sizes only

Each size runs in its own subprocess so that peak memory (ru_maxrss) is that size's alone.
Time is the best of a few runs, each on a fresh ClusterState (the index is cached per state);
"peak alloc" is tracemalloc's peak during one more, traced, run: what resolution allocates.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.resolve import resolve_all
from sdn_netpol.policy.state import ClusterState

NAMESPACES = 100
TEAMS = [f"team-{i}" for i in range(10)]
ENVS = ["prod", "staging", "dev"]
APPS = [f"app-{i}" for i in range(40)]
ROLES = ["frontend", "backend", "db", "cache", "worker"]
SIZES = [(1_000, 100), (1_000, 1_000), (10_000, 100), (10_000, 1_000)]
QUICK_SIZES = [(1_000, 100), (1_000, 1_000)]


def namespace_manifests(rnd: random.Random) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": f"ns-{i}", "labels": {"team": rnd.choice(TEAMS), "env": rnd.choice(ENVS)}}}
        for i in range(NAMESPACES)
    ]


def pod_manifests(rnd: random.Random, count: int) -> list[dict[str, Any]]:
    pods = []
    for i in range(count):
        ips = [f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"]
        if i % 10 == 0:  # a tenth are dual stack
            ips.append(f"fd00::{i:x}")
        http = rnd.choice([80, 8080, 8000])
        ports = [{"name": "http", "containerPort": http}, {"name": "metrics", "containerPort": 9090}]
        if i % 4 == 0:
            ports.append({"name": "grpc", "containerPort": 50051})
        labels = {"app": rnd.choice(APPS), "role": rnd.choice(ROLES), "version": rnd.choice(["v1", "v2"])}
        pods.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{i}", "namespace": f"ns-{i % NAMESPACES}", "labels": labels},
            "spec": {"nodeName": f"node-{i % 50}", "containers": [{"name": "main", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
        })
    return pods


def _selector(rnd: random.Random) -> dict[str, Any]:
    choice = rnd.random()
    if choice < 0.5:
        return {"matchLabels": {"app": rnd.choice(APPS)}}
    if choice < 0.8:
        return {"matchLabels": {"role": rnd.choice(ROLES)},
                "matchExpressions": [{"key": "version", "operator": "In", "values": ["v1", "v2"]}]}
    return {"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["db"]}]}


def policy_manifest(rnd: random.Random, i: int) -> dict[str, Any]:
    """A realistic mix: pod / namespace / pod-in-namespace / ipBlock peers, numeric, named and
    ranged ports, default-deny and egress-with-DNS policies."""
    kind = rnd.random()
    spec: dict[str, Any] = {"podSelector": _selector(rnd)}
    http = {"protocol": "TCP", "port": "http"}
    if kind < 0.30:  # same-namespace clients on a named or numeric port
        spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"role": rnd.choice(ROLES)}}}],
                            "ports": [http, {"port": 8080}]}]
    elif kind < 0.50:  # whole namespaces of a team
        spec["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {"team": rnd.choice(TEAMS)}}}]}]
    elif kind < 0.65:  # monitoring: pods of prod namespaces scrape the metrics port
        spec["ingress"] = [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                                      "podSelector": {"matchLabels": {"app": rnd.choice(APPS)}}}],
                            "ports": [{"port": "metrics"}]}]
    elif kind < 0.80:  # outside clients, except a range, on a port range
        spec["ingress"] = [{"from": [{"ipBlock": {"cidr": "172.16.0.0/12",
                                                  "except": ["172.17.0.0/16", "172.20.1.0/24"]}},
                                     {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}],
                            "ports": [{"port": 30000, "endPort": 32767}, {"protocol": "UDP", "port": 53}]}]
    elif kind < 0.90:  # default deny
        spec = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    else:  # egress: DNS anywhere, the team's namespaces on http, the internet except private ranges
        spec["policyTypes"] = ["Egress"]
        spec["egress"] = [
            {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"team": rnd.choice(TEAMS)}}}], "ports": [http]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}],
             "ports": [{"port": 443}]},
        ]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"policy-{i}", "namespace": f"ns-{rnd.randrange(NAMESPACES)}"}, "spec": spec}


def cluster(pods: int, policies: int, seed: int = 1) -> ClusterState:
    rnd = random.Random(seed)
    docs = namespace_manifests(rnd) + pod_manifests(rnd, pods) + [policy_manifest(rnd, i) for i in range(policies)]
    result = parse_documents(Document("bench", d) for d in docs)
    assert not result.errors, result.errors[:3]
    return ClusterState.from_parse(result)


def measure(pods: int, policies: int, repeats: int) -> dict[str, Any]:
    template = cluster(pods, policies)

    def fresh() -> ClusterState:  # same objects, no cached index
        return ClusterState(template.namespaces, template.pods, template.policies)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        state = fresh()
        start = time.perf_counter()
        resolved = resolve_all(state)
        times.append(time.perf_counter() - start)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grants = sum(len(rule.grants) for rp in resolved for rule in rp.rules)
    cidrs = sum(len(g.peers.cidrs) for rp in resolved for rule in rp.rules for g in rule.grants)
    del resolved
    tracemalloc.start()
    resolve_all(fresh())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"pods": pods, "policies": policies, "best_s": min(times), "median_s": sorted(times)[len(times) // 2],
            "grants": grants, "peer_cidrs": cidrs, "peak_alloc_mib": peak / 2**20,
            "maxrss_mib": rss_after / 1024, "rss_growth_mib": (rss_after - rss_before) / 1024}


def run_child(pods: int, policies: int, repeats: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(pods), str(policies), "--repeats", str(repeats)],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 1k-pod sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per size (best is reported)")
    parser.add_argument("--child", nargs=2, type=int, metavar=("PODS", "POLICIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pods, policies = args.child
        print(json.dumps(measure(pods, policies, args.repeats)))
        return
    header = f"{'pods':>7} {'policies':>8} {'best s':>8} {'median s':>9} {'grants':>7} {'peer CIDRs':>10} " \
             f"{'peak alloc MiB':>14} {'max RSS MiB':>11}"
    print(header)
    print("-" * len(header))
    for pods, policies in QUICK_SIZES if args.quick else SIZES:
        r = run_child(pods, policies, args.repeats)
        print(f"{r['pods']:>7,} {r['policies']:>8,} {r['best_s']:>8.3f} {r['median_s']:>9.3f} {r['grants']:>7,} "
              f"{r['peer_cidrs']:>10,} {r['peak_alloc_mib']:>14.1f} {r['maxrss_mib']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
