"""Bulk changes: `sdn-netpol lab apply -f FILE` of 1,000 NetworkPolicies at once, until every
node has realized them (the command returns only then), with a split by phase.

    .venv/bin/python benchmarks/bulk.py              # 3 nodes, 1,000 policies, 3 runs (~1-2 min, root)
    .venv/bin/python benchmarks/bulk.py --quick      # 1 run (make bench)
    .venv/bin/python benchmarks/bulk.py --profile /tmp/prof   # + cProfile of the apply and of every controller

A lab of the conformance model (9 pods in x, y, z) on `--nodes` nodes; the policies are
generated over x, y and z in five shapes (a pod allowing a same-namespace pod on a port, a
pod allowing another namespace on a named port, an ipBlock /32 with an except on a port,
egress to a namespace's pods on a port, a namespace-wide ingress isolation), each with ports
of its own so that every policy has flows of its own on every node that hosts its pods.

Each run: `lab apply -f policies.yaml` as a user runs it (a new process: imports, reading and
validating the file, writing the manifests folder, waiting for every node's /status), then
`--singles` times `lab apply` of one more policy (and its delete, untimed) with the 1,000 in
place, then `lab delete -f policies.yaml` (the same bulk change backwards). Figures per run:
- command wall time (apply, delete), and the CLI's start-up alone (`lab apply --help`);
- the same apply in this process (`Lab.apply`), split into read+validate / write / wait;
- from every controller's log, relative to the command's start: when its source first saw a
  new folder version and when it read the final one, how many folder versions and bundles
  the change cost, and (from the realizer's per-realization line) the time of the last
  realization's snapshot build, compile, send and settle.
Between the runs the policies are gone again, so every run applies the same change.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdn_netpol.lab.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "conformance" / "model.yaml"
CLI = Path(sys.executable).parent / "sdn-netpol"
PROFILE_ENV = "SDN_NETPOL_PROFILE"  # a folder: each controller writes a cProfile there when it stops
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


def policies(count: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(count):
        ns, pod, other = NAMESPACES[i % 3], PODS[i % 3], PODS[(i + 1) % 3]
        port = 1000 + i
        shape = i % 5
        spec: dict[str, Any]
        if shape == 0:
            spec = {"podSelector": {"matchLabels": {"pod": pod}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": other}}}],
                                 "ports": [{"port": port}]}]}
        elif shape == 1:
            spec = {"podSelector": {"matchLabels": {"pod": pod}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": NAMESPACES[(i + 1) % 3]}}}],
                                 "ports": [{"port": "serve-81-tcp"}, {"port": port, "protocol": "UDP"}]}]}
        elif shape == 2:
            spec = {"podSelector": {"matchLabels": {"pod": pod}},
                    "ingress": [{"from": [{"ipBlock": {"cidr": f"192.168.{i // 256}.0/24",
                                                       "except": [f"192.168.{i // 256}.{i % 256}/32"]}}],
                                 "ports": [{"port": port}]}]}
        elif shape == 3:
            spec = {"podSelector": {"matchLabels": {"pod": pod}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": NAMESPACES[(i + 2) % 3]}},
                                        "podSelector": {"matchLabels": {"pod": other}}}],
                                "ports": [{"port": port}]}]}
        else:
            spec = {"podSelector": {}, "policyTypes": ["Ingress"],
                    "ingress": [{"ports": [{"port": port, "protocol": "SCTP"}]}]}
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"bulk-{i:04d}", "namespace": ns}, "spec": spec})
    return docs


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ ([\w.]+): (.*)$")
REALIZED = re.compile(r"realized generation \d+ .*?state ([\d.]+) s, compile ([\d.]+) s, send ([\d.]+) s"
                      r"(?: \((\d+) flow mods\))?, settle ([\d.]+) s")


def log_events(path: Path, since: float, until: float) -> list[tuple[float, str, str]]:
    """(seconds after `since`, logger, message) of a controller log's lines in [since, until]."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if since - 0.002 <= at <= until + 0.002:
            events.append((at - since, m.group(2), m.group(3)))
    return events


def controller_split(lab: Lab, since: float, until: float) -> dict[str, dict[str, Any]]:
    out = {}
    for node in lab.state().nodes:
        events = log_events(Path(node.rundir) / "controller.log", since, until)
        versions = [t for t, name, msg in events if name.endswith("directory") and " version " in msg]
        bundles = [t for t, name, msg in events if msg.startswith("bundle committed")]
        realized = [(t, REALIZED.search(msg)) for t, _, msg in events if REALIZED.search(msg)]
        last = realized[-1] if realized else None
        out[node.name] = {
            "first_version_at": versions[0] if versions else None,
            "last_version_at": versions[-1] if versions else None,
            "versions": len(versions), "bundles": len(bundles),
            "realizations": len(realized),
            "last_realized_at": last[0] if last else (bundles[-1] if bundles else None),
            "last": {k: float(v) for k, v in zip(("state", "compile", "send", "mods", "settle"),
                                                 last[1].groups(), strict=True) if v is not None}
            if last and last[1] else {},
        }
    return out


def cli(workdir: Path, *args: str) -> tuple[float, float, str]:
    """(wall seconds, unix start, stdout) of `sdn-netpol lab --workdir W ARGS`."""
    start_unix, start = time.time(), time.monotonic()
    out = subprocess.run([str(CLI), "lab", "--workdir", str(workdir), *args], capture_output=True, text=True,
                         check=False, env={**os.environ, "COLUMNS": "200"})
    wall = time.monotonic() - start
    if out.returncode != 0:
        raise SystemExit(f"lab {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return wall, start_unix, out.stdout


def single_policy(k: int) -> dict[str, Any]:
    """One more policy (x/a admits x/b on a port of its own)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"single-{k}", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                                  "ports": [{"port": 3000 + k}]}]}}


def one_run(lab: Lab, file: Path, singles: int = 0) -> dict[str, Any]:
    wall, since, _ = cli(lab.workdir, "apply", "-f", str(file))
    run: dict[str, Any] = {"apply": wall, "apply_nodes": controller_split(lab, since, since + wall), "single": []}
    for k in range(singles):  # one policy more, with the 1,000 installed
        single = file.with_name(f"single-{k}.yaml")
        single.write_text(yaml.safe_dump(single_policy(k)))
        run["single"].append(cli(lab.workdir, "apply", "-f", str(single))[0])
        cli(lab.workdir, "delete", "-f", str(single))
    wall, since, _ = cli(lab.workdir, "delete", "-f", str(file))
    run["delete"] = wall
    run["delete_nodes"] = controller_split(lab, since, since + wall)
    # the same apply in this process, split by phase
    start = time.monotonic()
    lab.apply([file])
    run["inprocess"] = time.monotonic() - start
    run["phases"] = dict(lab.timings)
    lab.delete([file])
    return run


def profiled_apply(lab: Lab, file: Path, folder: Path) -> None:
    """One more apply and delete in this process under cProfile (not in the figures)."""
    profiler = cProfile.Profile()
    profiler.enable()
    lab.apply([file])
    profiler.disable()
    profiler.dump_stats(str(folder / "apply.prof"))
    lab.delete([file])


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report(args: argparse.Namespace, runs: list[dict[str, Any]], startup: float) -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    lines = [f"bulk apply: {args.nodes} nodes, conformance model (9 pods), {args.policies} NetworkPolicies in one "
             f"`lab apply -f`; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{os.cpu_count()} CPUs, load average {' '.join(load)} at the end", "",
             "| run | `lab apply` s | `lab delete` s | in-process apply s (read+validate / write / wait) | "
             "per node: folder versions / bundles | per node: first version seen, final version read, "
             "realized (s after start) | last realization: state / compile / send / settle s |",
             "|---|---|---|---|---|---|---|"]
    for i, run in enumerate(runs, 1):
        phases = run["phases"]
        split = " / ".join(fmt(phases.get(k)) for k in ("read", "write", "wait"))
        nodes = run["apply_nodes"]
        counts = ", ".join(f"{n['versions']}/{n['bundles']}" for n in nodes.values())
        times = ", ".join(f"{fmt(n['first_version_at'])}→{fmt(n['last_version_at'])}→{fmt(n['last_realized_at'])}"
                          for n in nodes.values())
        last = "; ".join(" / ".join(fmt(n["last"].get(k), 3) for k in ("state", "compile", "send", "settle"))
                         if n["last"] else "—" for n in nodes.values())
        lines.append(f"| {i} | {run['apply']:.2f} | {run['delete']:.2f} | {run['inprocess']:.2f} ({split}) | "
                     f"{counts} | {times} | {last} |")
    applies = [r["apply"] for r in runs]
    deletes = [r["delete"] for r in runs]
    singles = [t for r in runs for t in r["single"]]
    lines += ["", f"`lab apply` median {statistics.median(applies):.2f} s (min {min(applies):.2f}, max "
                  f"{max(applies):.2f}); `lab delete` median {statistics.median(deletes):.2f} s; CLI start-up "
                  f"(`lab apply --help`) {startup:.2f} s"]
    if singles:
        lines.append(f"one policy more with the 1,000 installed (`lab apply` of one, {len(singles)} times): median "
                     f"{statistics.median(singles):.2f} s (min {min(singles):.2f}, max {max(singles):.2f})")
    return "\n".join(lines)


def print_profiles(folder: Path, top: int = 25) -> None:
    for path in sorted(folder.glob("*.prof")):
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.sort_stats("cumulative").print_stats(top)
        print(f"\n===== {path.name} =====\n{out.getvalue()}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--singles", type=int, default=3,
                        help="per run, this many `lab apply` of one more policy with the 1,000 installed")
    parser.add_argument("--profile", type=Path, default=None,
                        help="folder for cProfile files: one more in-process apply, and each controller's whole life "
                             f"({PROFILE_ENV}); printed to stderr at the end")
    args = parser.parse_args()
    runs_wanted = 1 if args.quick else args.runs
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ[PROFILE_ENV] = str(args.profile.resolve())
    with tempfile.TemporaryDirectory(prefix="sdnlab-bulk-") as raw:
        tmp = Path(raw)
        file = tmp / "policies.yaml"
        file.write_text(yaml.safe_dump_all(policies(args.policies), sort_keys=False))
        lab = Lab(tmp / "lab")
        lab.up([MODEL], args.nodes)
        try:
            start = time.monotonic()
            subprocess.run([str(CLI), "lab", "--workdir", str(lab.workdir), "apply", "--help"],
                           capture_output=True, check=True)
            startup = time.monotonic() - start
            runs = [one_run(lab, file, args.singles) for _ in range(runs_wanted)]
            if args.profile:
                profiled_apply(lab, file, args.profile)
        finally:
            lab.down()  # controllers stop here: with --profile they write their profiles
    print(report(args, runs, startup))
    if args.profile:
        time.sleep(0.5)
        print_profiles(args.profile)


if __name__ == "__main__":
    main()
