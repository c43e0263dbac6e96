"""Dataplane throughput with N policies selecting the server (issue 17 point 2).

    .venv/bin/python benchmarks/dataplane.py            # 0, 100, 1,000, 4,000, 10,000 policies; 5 pairs (~12 min, root)
    .venv/bin/python benchmarks/dataplane.py --quick    # 0 and 1,000 policies; 2 pairs, short runs (~1.5 min)

Two figures per path (client on the server's node, client on the other node of a 2-node
VXLAN lab brought up through the product path: CNI plugin, one controller per node):
- iperf3, one TCP stream, Gbit/s received;
- new TCP connections per second: a client keeps CONCURRENCY connections in flight, each
  connect, send 64 bytes, read the 64-byte answer and the server's close, for a few
  seconds against a one-thread server in the server pod (both this file, run inside the
  pods' namespaces). The server closes first, so TIME_WAIT stays on its side and the
  client never runs out of ports. Every connection is a conntrack commit and, with
  policies, a SYN that walks the ingress rules: this is the figure the fast path for
  established packets cannot help.

A/B without re-installing policies: the N policies select `role: target` in the server's
namespace and are installed once per size (sizes are cumulative, one lab for all of them).
A is the server pod labelled `app: server`, selected by nothing (not isolated, no rule
walked); B is the same pod relabelled `app: server, role: target` with one `lab apply`,
which every node has realized when it returns. A relabel costs one pod's compile on the
server's node, where applying or deleting 10,000 policies would cost seconds per switch
and would change every other table. Policy 0 admits the clients on both ports; the others
admit the clients on other ports or /32 ipBlocks on these ports (as benchmarks/lab.py), so
every packet that walks the rules meets thousands of flows that almost match. What the ratio
leaves out: the controllers hold the N policies in A too, so their own cost of holding
them (CPU that grows with N, shown per phase) weighs on A and B alike.

4,000 is the largest size the controller can realize with these policies: every rule that
selects the server adds a 16-byte conjunction action to one clause flow (`reg2=<server's
port>` in IngressRule), and an OpenFlow FlowMod is at most 65,535 bytes, so past ~4,090
rules that flow cannot be sent (10,000: "'H' format requires 0 <= number <= 65535"). A size
that is not realized ends the run and is reported with the controller's error.

Noise: the machine has 2 vCPUs shared with other jobs, so A and B phases alternate, each
measuring all four figures; a pair's ratio is B/A of adjacent phases, and the report gives
the median ratio and its spread (min–max) over the pairs. Pairs run A B, B A, A B, …
(not A B, A B): with B always second, a trend in the machine's load reads as a cost or a
gain of the policies (a run in A B order gave 0.89× for iperf3 on one node with no policy
at all). The phase after a relabel also pays the controller's realization and datapath
purge; in A B, B A order that phase is B and A equally often (exactly, with an even number
of pairs). Size 0 relabels with no policy: its spread is the noise floor.

During every phase the server node's datapath is read (ovs-appctl on the lab's own
vswitchd): megaflows installed after the run (`dpctl/dump-flows`), dpcls subtables in use
(`dpif-netdev/subtable-lookup-info-get`: one per distinct mask and input port), and the
main thread's `dpif-netdev/pmd-stats-show` counters since the phase began: exact-match
cache hits, megaflow hits, upcalls, and the average number of subtables looked up per
megaflow hit, which is what a wider rule table costs each packet that misses the exact-
match cache. A long stream mostly hits that cache; short connections mostly do not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IPERF_PORT, CONN_PORT = 5201, 5202
CONCURRENCY = 16
SETTLE = 2.0  # after installing policies: the controller's own aftermath is not A's cost
PAYLOAD = 64
PATHS = (("same node", "bench/local"), ("across nodes", "bench/remote"))
TESTS = ("iperf3 Gbit/s", "connections/s")


# ---------------------------------------------------------------- inside the pods


def serve(port: int) -> None:
    """Answer each connection's 64 bytes with 64 bytes, then close (server side first)."""
    sel = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4096)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                _accept_all(sel, listener)
                continue
            try:
                if sock.recv(PAYLOAD):
                    sock.send(b"y" * PAYLOAD)
            except OSError:
                pass
            sel.unregister(sock)
            sock.close()


def _accept_all(sel: selectors.BaseSelector, listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)


def connect_loop(address: str, port: int, seconds: float) -> None:
    """Keep CONCURRENCY connections in flight for `seconds`; print completed/s as JSON."""
    sel = selectors.DefaultSelector()
    done = errors = 0
    start = time.monotonic()
    end = start + seconds
    for _ in range(CONCURRENCY):
        _open(sel, address, port)
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            ok = _step(sel, sock, key.data)
            if ok is None:
                continue
            done, errors = done + ok, errors + (not ok)
            _open(sel, address, port)
    elapsed = time.monotonic() - start
    print(json.dumps({"per_s": done / elapsed, "done": done, "errors": errors}), flush=True)


def _open(sel: selectors.BaseSelector, address: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex((address, port))
    sel.register(sock, selectors.EVENT_WRITE, {"got": 0})


def _step(sel: selectors.BaseSelector, sock: socket.socket, data: dict[str, int]) -> bool | None:
    """One event of a connection: connected → send; readable → read. True/False when it
    ended (answered and closed / failed), None while it goes on."""
    try:
        if data["got"] == 0 and sel.get_key(sock).events == selectors.EVENT_WRITE:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise OSError("connect failed")
            sock.send(b"x" * PAYLOAD)
            sel.modify(sock, selectors.EVENT_READ, data)
            return None
        chunk = sock.recv(4096)
        data["got"] += len(chunk)
        if chunk:
            return None
        ok = data["got"] >= PAYLOAD
    except OSError:
        ok = False
    sel.unregister(sock)
    sock.close()
    return ok


# ---------------------------------------------------------------- the lab side


def pod(name: str, labels: dict[str, str], node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "bench", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                                                       "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}


def policy(i: int) -> dict[str, Any]:
    """Policy i selects `role: target`; 0 admits the clients, odd ones the clients on
    another port, even ones a /32 that is no pod on the benchmark's ports."""
    clients = [{"podSelector": {"matchLabels": {"app": "client"}}}]
    ports = [{"port": IPERF_PORT}, {"port": CONN_PORT}]
    if i == 0:
        rule: dict[str, Any] = {"from": clients, "ports": ports}
    elif i % 2:
        rule = {"from": clients, "ports": [{"port": 10000 + i}]}
    else:
        rule = {"from": [{"ipBlock": {"cidr": f"192.168.{i // 256}.{i % 256}/32"}}], "ports": ports}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"p{i:05d}", "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"role": "target"}}, "ingress": [rule]}}


def write(path: Path, docs: list[dict[str, Any]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump_all(docs))
    return path


@dataclass
class Bench:
    """One lab for the whole run, its helper servers, and the measurements so far."""

    lab: Any
    tmp: Path
    seconds: float
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    installed: int = 0

    @property
    def state(self) -> Any:
        return self.lab.state()

    def netns_run(self, pod_key: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.state.pods[pod_key].netns, *argv]

    def start_servers(self) -> None:
        """The connection server in the server pod, for the lab's lifetime (iperf3's is
        started per run: see `iperf`)."""
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve", str(CONN_PORT)]
        self.servers.append(subprocess.Popen(self.netns_run("bench/server", *argv), text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        assert self.servers[0].stdout is not None
        if self.servers[0].stdout.readline().strip() != "ready":
            raise RuntimeError("the connection server did not start")

    def stop_servers(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        self.servers.clear()

    def label(self, selected: bool) -> None:
        labels = {"app": "server", **({"role": "target"} if selected else {})}
        self.lab.apply([write(self.tmp / "server.yaml", [pod("server", labels, "node1")])])

    def install(self, size: int) -> float:
        """Policies installed..size (cumulative; sizes grow); seconds until realized."""
        if size <= self.installed:
            return 0.0
        start = time.monotonic()
        self.lab.apply([write(self.tmp / f"policies-{size}.yaml", [policy(i) for i in range(self.installed, size)])])
        self.installed = size
        return time.monotonic() - start

    def iperf(self, client: str) -> float:
        """One run against a fresh `iperf3 -s -1` (one long-lived server hung in three full
        runs, see docs/benchmarks.md); the client retries while the server is not listening."""
        server = subprocess.Popen(self.netns_run("bench/server", "iperf3", "-s", "-1", "-p", str(IPERF_PORT)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(20):
                out = subprocess.run(self.netns_run(client, "iperf3", "-c", self.state.pods["bench/server"].ip, "-p",
                                                    str(IPERF_PORT), "-t", str(self.seconds), "-J"),
                                     capture_output=True, text=True, timeout=self.seconds + 30)
                if "unable to connect" not in out.stdout:
                    break
                time.sleep(0.1)
            out.check_returncode()
            return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
        finally:
            server.kill()
            server.wait()

    def connections(self, client: str) -> float:
        argv = [sys.executable, str(Path(__file__).resolve()), "--connect", self.state.pods["bench/server"].ip,
                str(CONN_PORT), str(self.seconds)]
        out = subprocess.run(self.netns_run(client, *argv), capture_output=True, text=True,
                             timeout=self.seconds + 30, check=True)
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        if doc["errors"] > doc["done"] * 0.01:
            print(f"warning: {doc['errors']} failed connections of {doc['done']}", file=sys.stderr)
        return float(doc["per_s"])

    def appctl(self, node: str, *args: str) -> str:
        from sdn_netpol.ovs.instance import OvsInstance

        return str(OvsInstance(Path(self.state.node(node).rundir)).appctl(*args))

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the server node's vswitchd and controller: where the two
        vCPUs go besides the pods (the controller's periodic work grows with the policies)."""
        node = self.state.node("node1")
        vswitchd = int((Path(node.rundir) / "ovs-vswitchd.pid").read_text())
        return cpu_seconds(vswitchd), cpu_seconds(node.controller_pid)

    def diagnose(self) -> None:
        """After a failure, to stderr: is the helper server alive, do new connections to
        the pod's own server still open from each client, and what each node's datapath
        holds (a hung client is either the helper or the path; this tells which)."""
        from sdn_netpol.lab import probe

        print("servers alive:", [proc.poll() is None for proc in self.servers], file=sys.stderr)
        state = self.state
        probes = [probe.Probe(c, "bench/server", state.pods[c].netns, state.pods["bench/server"].ip)
                  for _, c in PATHS]
        print("TCP 80 from the clients:", {p.source: o for p, o in probe.run_probes(probes, "TCP", 80).items()},
              file=sys.stderr)
        for node in ("node1", "node2"):
            for args in (("dpctl/ct-get-nconns",), ("tnl/neigh/show",), ("dpctl/dump-flows",)):
                print(f"--- {node} {' '.join(args)}\n{self.appctl(node, *args)}", file=sys.stderr, flush=True)

    def phase(self) -> dict[str, Any]:
        """All four figures, then the server node's datapath as the phase left it."""
        self.appctl("node1", "dpif-netdev/pmd-stats-clear")
        cpu, start = self.cpu(), time.monotonic()
        figures: dict[str, Any] = {}
        for path, client in PATHS:
            figures[f"{path}|{TESTS[0]}"] = self.iperf(client)
            figures[f"{path}|{TESTS[1]}"] = self.connections(client)
        wall = time.monotonic() - start
        used = [(after - before) / wall for before, after in zip(cpu, self.cpu(), strict=True)]
        figures["datapath"] = datapath(self.appctl("node1", "dpctl/dump-flows"),
                                       self.appctl("node1", "dpif-netdev/pmd-stats-show"),
                                       self.appctl("node1", "dpif-netdev/subtable-lookup-info-get"))
        figures["datapath"].update(vswitchd_cpu=used[0], controller_cpu=used[1])
        return figures


def cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def datapath(flows: str, pmd: str, lookup: str) -> dict[str, float]:
    """Megaflows, dpcls subtables in use (one per distinct mask and input port: the
    "Use count" of the lookup implementations), and the main thread's counters."""
    stats = {"megaflows": float(sum("actions:" in line for line in flows.splitlines())),
             "subtables": float(sum(int(n) for n in re.findall(r"Use count: (\d+)", lookup)))}
    for name, key in (("emc hits", "emc"), ("megaflow hits", "hits"), ("miss with success upcall", "upcalls"),
                      ("avg. subtable lookups per megaflow hit", "lookups_per_hit")):
        found = re.search(rf"{re.escape(name)}:\s*([0-9.]+)", pmd)
        if found:
            stats[key] = float(found.group(1))
    return stats


def run_size(bench: Bench, size: int, pairs: int) -> dict[str, Any]:
    """`pairs` of A and B phases at `size` policies, in the order A B, B A, A B, …: the
    server changes label only inside a pair, and a drift of the machine's load over the
    run weighs on A and B alike. The server is left unselected (A)."""
    apply_s = bench.install(size)
    time.sleep(SETTLE)
    phases: list[tuple[dict[str, Any], dict[str, Any]]] = []
    relabel: list[float] = []
    for n in range(pairs):
        first = bench.phase()
        start = time.monotonic()
        bench.label(n % 2 == 0)
        relabel.append(time.monotonic() - start)
        second = bench.phase()
        a, b = (first, second) if n % 2 == 0 else (second, first)
        phases.append((a, b))
        print(f"{size} policies, pair {n + 1}/{pairs} ({'AB' if n % 2 == 0 else 'BA'}): " + ", ".join(
            f"{k} {a[k]:.3g}→{b[k]:.3g}" for k in a if k != "datapath"), file=sys.stderr, flush=True)
    if pairs % 2:
        bench.label(False)
    return {"size": size, "apply_s": apply_s, "relabel_s": statistics.median(relabel), "phases": phases}


def summary(result: dict[str, Any]) -> dict[str, tuple[float, float, float, float, float]]:
    """Per figure: median A, median B, median ratio, min ratio, max ratio."""
    rows = {}
    for key in result["phases"][0][0]:
        if key == "datapath":
            continue
        ratios = [b[key] / a[key] for a, b in result["phases"]]
        rows[key] = (statistics.median(a[key] for a, _ in result["phases"]),
                     statistics.median(b[key] for _, b in result["phases"]),
                     statistics.median(ratios), min(ratios), max(ratios))
    return rows


def dp_median(result: dict[str, Any], side: int, key: str) -> float:
    values = [phase[side]["datapath"].get(key, 0.0) for phase in result["phases"]]
    return statistics.median(values)


def report(results: list[dict[str, Any]], pairs: int, seconds: float, load: str) -> str:
    lines = ["### Dataplane throughput (issue 17.2)", "",
             f"Measured by `benchmarks/dataplane.py` ({pairs} A/B pairs per size, {seconds:g} s runs; 2-node "
             f"netdev lab, VXLAN; load average before / after: {load}). A = server selected by no policy, "
             "B = relabelled into N policies; ratio = B/A of adjacent phases, median (min–max).", "",
             "| policies | path | figure | A (median) | B (median) | B/A median | B/A min–max |",
             "|---:|---|---|---:|---:|---:|---|"]
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    for result in results:
        for key, (a, b, med, lo, hi) in summary(result).items():
            path, test = key.split("|")
            fmt = "{:.2f}" if "Gbit" in test else "{:,.0f}"
            lines.append(f"| {result['size']:,} | {path} | {test} | {fmt.format(a)} | {fmt.format(b)} | "
                         f"{med:.2f} | {lo:.2f}–{hi:.2f} |")
    lines += ["", "Server node's datapath in a phase (median over the phases, A / B): megaflows and dpcls "
              "subtables at its end; exact-match cache hits, megaflow hits, subtable lookups per megaflow hit "
              "and upcalls during it; CPU of the node's vswitchd and controller during it (cores); time to install the "
              "size's policies and to relabel the server in:", "",
              "| policies | megaflows | subtables | EMC hits | megaflow hits | lookups/hit | upcalls | vswitchd CPU "
              "| controller CPU | install s | relabel s |", "|---:|---|---|---|---|---|---|---|---|---:|---:|"]
    keys = (("megaflows", 0), ("subtables", 0), ("emc", 0), ("hits", 0), ("lookups_per_hit", 2), ("upcalls", 0),
            ("vswitchd_cpu", 2), ("controller_cpu", 2))
    for r in results:
        cells = [f"{dp_median(r, 0, k):,.{d}f} / {dp_median(r, 1, k):,.{d}f}" for k, d in keys]
        lines.append(f"| {r['size']:,} | " + " | ".join(cells) + f" | {r['apply_s']:.1f} | {r['relabel_s']:.2f} |")
    lines += [f"\n**{r['size']:,} policies: failed**, the run stopped there: {r['error']}" for r in failed]
    return "\n".join(lines)


def model(tmp: Path) -> Path:
    return write(tmp / "model.yaml", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}},
        pod("server", {"app": "server"}, "node1"),
        pod("local", {"app": "client"}, "node1"),
        pod("remote", {"app": "client"}, "node2"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0 and 1,000 policies, 2 pairs, 2 s runs")
    parser.add_argument("--pairs", type=int, help="A/B pairs per size (default 5; --quick 2)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 0,100,1000,10000")
    parser.add_argument("--seconds", type=float, help="length of each run (default 3; --quick 2)")
    parser.add_argument("--workdir", type=Path, help="lab workdir (default: a fresh /tmp/dataplane-*)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connect", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.connect:
        return connect_loop(args.connect[0], int(args.connect[1]), float(args.connect[2]))
    sizes = args.sizes or ([0, 1000] if args.quick else [0, 100, 1000, 4000, 10000])
    pairs = args.pairs or (2 if args.quick else 5)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    print(benchmark(sorted(sizes), pairs, seconds, args.workdir))


def sizes_until_failure(bench: Bench, sizes: list[int], pairs: int) -> list[dict[str, Any]]:
    """Every size in turn. One that fails (not realized, a client that hangs) ends the run,
    as the lab may no longer be what the next size assumes, and is reported with its
    error; each finished size is also written to stderr as JSON, so nothing is lost."""
    results: list[dict[str, Any]] = []
    for size in sizes:
        try:
            results.append(run_size(bench, size, pairs))
        except Exception as exc:  # reported; the lab still goes down
            print(f"{size} policies: {exc!r}", file=sys.stderr, flush=True)
            bench.diagnose()
            results.append({"size": size, "error": " ".join(str(exc).split())})
            break
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def benchmark(sizes: list[int], pairs: int, seconds: float, workdir: Path | None) -> str:
    from sdn_netpol.lab.lab import Lab

    before = Path("/proc/loadavg").read_text().split()[0]
    with tempfile.TemporaryDirectory(prefix="dataplane-") as raw:
        tmp = Path(raw)
        lab = Lab(workdir or tmp / "lab")
        lab.up([model(tmp)], 2)
        bench = Bench(lab, tmp, seconds)
        try:
            bench.start_servers()
            results = sizes_until_failure(bench, sizes, pairs)
        finally:
            bench.stop_servers()
            lab.down()
    after = Path("/proc/loadavg").read_text().split()[0]
    return report(results, pairs, seconds, f"{before} / {after}")


if __name__ == "__main__":
    main()
