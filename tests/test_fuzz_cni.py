"""Fuzzing sdn-netpol-cni's stdin and environment: every failure is the spec's error object
(cniVersion, an integer code, a message) on stdout with exit 1, no traceback on stdout or
stderr, and nothing is left behind.

Two layers:
- in-process, hundreds of examples a second: `plugin.main` on any environment and stdin,
  with the three commands stubbed (nothing reaches the kernel or OVS), so that every way
  the parsing and the error path itself can fail is tried;
- the real plugin (a subprocess, run as a runtime runs it, inside a node netns with its own
  ovsdb-server/ovs-vswitchd and Debian's host-local; tests/cni_fixtures.py), a bounded
  number of derandomized examples: the shipped config with subtrees replaced by junk, then
  damaged as bytes (truncated, invalid UTF-8, nested too deep, a megabyte long), and the
  CNI_* variables missing, empty, garbage, huge or not UTF-8. After each example the node is
  exactly as before: no OVSDB Port or Interface, no link in the node or pod netns, no
  host-local lease, no new netns. An ADD that succeeds must be undone by the same DEL.

SDN_NETPOL_FUZZ=N runs N random examples per test instead (a longer hunt).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sdn_netpol.cni import plugin
from sdn_netpol.cni.config import SUPPORTED_VERSIONS
from tests.cni_fixtures import CNI_PATH, Node, node_with_ovs, plugin_cmd, plugin_config, run_ip
from tests.strategies import HOSTILE_STRINGS, LongText, deep_nesting, hostile_bytes, hostile_junk, mutated_tree

RANDOM = int(os.environ.get("SDN_NETPOL_FUZZ", "0"))
REAL_EXAMPLES = 60  # each one is 1-3 plugin processes (ip netns exec + Python) plus the checks: 0.3-1 s
VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
FOREIGN_PLUGINS = frozenset(os.listdir(CNI_PATH)) - {"host-local", "static"}  # never run as IPAM by a fuzz example


def fuzz(examples: int) -> settings:
    return settings(max_examples=RANDOM or examples, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def not_utf8(data: bytes) -> str:
    """Bytes as an environment variable holds them (os.environ decodes with surrogateescape)."""
    return os.fsdecode(data)


# ---- what a runtime can hand the plugin ----------------------------------------------------

env_text = st.sampled_from([h for h in HOSTILE_STRINGS if "\x00" not in h]) | st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
garbage_env = st.one_of(
    env_text,
    st.binary(min_size=1, max_size=20).filter(lambda b: b"\x00" not in b).map(not_utf8),
    st.sampled_from([LongText("x" * 100_000), not_utf8(b"eth\xff"), not_utf8(b"\xc3\xa0"), "é" * 7, "é" * 8, "a" * 15,
                     "a" * 16, "lo", ".", "..", "a b", "a/b", "a:b", "eth0\n"]),
)


@st.composite
def environments(draw: st.DrawFn, base: dict[str, str], changes: tuple[int, ...] = (0, 1, 2, 6)) -> dict[str, str]:
    """The runtime's CNI_* variables, `changes` of them (at most) missing, empty or garbage."""
    bad = draw(st.sets(st.sampled_from(VARS), max_size=draw(st.sampled_from(changes))))
    env: dict[str, str] = {}
    for name in VARS:
        choice = draw(st.sampled_from(("missing", "empty", "garbage", "garbage"))) if name in bad else "keep"
        if choice == "keep":
            env[name] = base[name]
        elif choice == "empty":
            env[name] = ""
        elif choice == "garbage":
            env[name] = draw(garbage_env)
    return env


# ---- in-process: parsing and the error path, commands stubbed -------------------------------

BASE_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/none",
            "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", "CNI_PATH": CNI_PATH}
BASE_CONF = plugin_config(Path("/run/none/db.sock"), Path("/run/none/ipam"), x="x")


def check_error_json(stdout: str, stderr: str) -> dict[str, Any]:
    """Exactly the spec's error object; the same error, on stderr, for the node's log."""
    doc = json.loads(stdout)
    assert isinstance(doc, dict) and set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
    assert doc["cniVersion"] in SUPPORTED_VERSIONS, doc
    assert isinstance(doc["code"], int) and not isinstance(doc["code"], bool) and doc["code"] > 0, doc
    assert isinstance(doc["msg"], str) and doc["msg"].strip(), doc
    assert isinstance(doc.get("details", ""), str), doc
    assert stderr.startswith(f"sdn-netpol-cni: [{doc['code']}] "), stderr[:500]
    return doc


@st.composite
def stdins(draw: st.DrawFn) -> bytes:
    conf = draw(st.sampled_from([BASE_CONF]) | mutated_tree(BASE_CONF, hostile_junk) | hostile_junk)
    return draw(hostile_bytes(json.dumps(conf).encode("utf-8", "surrogatepass")))


@fuzz(1000)
@given(environments(BASE_ENV), stdins())
@example({**BASE_ENV}, deep_nesting(100_000))
@example({**BASE_ENV, "CNI_COMMAND": "VERSION"}, b"[" * 100_000)
@example({**BASE_ENV, "CNI_IFNAME": not_utf8(b"\xff")}, json.dumps(BASE_CONF).encode())
@example({**BASE_ENV, "CNI_IFNAME": "é" * 8}, json.dumps(BASE_CONF).encode())
@example({**BASE_ENV}, json.dumps({**BASE_CONF, "name": "../../../tmp/escape"}).encode())
def test_main_answers_every_input_with_a_result_or_an_error_object(env: dict[str, str], stdin: bytes) -> None:
    """Whatever the runtime sends: a result (here the stubs' `{}`) and exit 0, or the error
    object and exit 1. A stub is reached only with an environment and config that parsed."""
    reached: list[str] = []

    def stub(name: str) -> Any:
        return lambda env, conf: reached.append(name) or ({} if name == "ADD" else None)

    out, err = io.StringIO(), io.StringIO()
    stdin_file = io.TextIOWrapper(io.BytesIO(stdin))
    with mock.patch.dict(os.environ, env, clear=True), mock.patch.object(sys, "stdout", out), \
            mock.patch.object(sys, "stderr", err), mock.patch.object(sys, "stdin", stdin_file), \
            mock.patch.object(plugin, "cmd_add", stub("ADD")), mock.patch.object(plugin, "cmd_del", stub("DEL")), \
            mock.patch("sdn_netpol.cni.check.cmd_check", stub("CHECK")), \
            mock.patch.object(plugin, "_without_green_threads"):  # it would hide eventlet from this process
        rc = plugin.main()
    if rc == 0:
        assert err.getvalue() == "", err.getvalue()
        if env.get("CNI_COMMAND") == "VERSION":
            assert "supportedVersions" in json.loads(out.getvalue())
        else:
            assert reached == [env["CNI_COMMAND"]]
        return
    assert rc == 1 and not reached
    check_error_json(out.getvalue(), err.getvalue())


# ---- the real plugin on a real node ----------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with node_with_ovs(tmp_path_factory.mktemp("cni-fuzz-ovs")) as made:
        yield made


def ovsdb_rows(node: Node, table: str) -> set[str]:
    out = node.ovs.vsctl("--format=json", "--columns=name", "list", table)
    return {row[0] for row in json.loads(out)["data"]}


def leases(root: Path) -> set[str]:
    """host-local's reservation files anywhere under `root` (a network name with `..` in it
    would put them beside dataDir, not in it)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and p.name != "lock" and not p.name.startswith("last_reserved_ip")}


def world(node: Node, pod_netns: str, root: Path) -> dict[str, object]:
    """Everything an invocation may create, compared before and after each example: the
    node's OVSDB rows and links, the pod netns' links, host-local's leases. (The plugin
    creates no namespace; other tests on the machine do, so the netns list is not compared.)"""
    return {
        "ovs ports": ovsdb_rows(node, "Port"), "ovs interfaces": ovsdb_rows(node, "Interface"),
        "node links": node.links(),
        "pod links": {line.split(":")[1].strip().split("@")[0]
                      for line in run_ip("-n", pod_netns, "-o", "link", "show").splitlines()},
        "leases": leases(root),
    }


def invoke(node: Node, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """As a runtime does: only these CNI_* variables, the config on stdin, in the node netns."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")} | env
    return subprocess.run(["ip", "netns", "exec", node.name, *plugin_cmd()], input=stdin, capture_output=True,
                          env={k: os.fsencode(v) for k, v in full.items()}, timeout=120, check=False)


def safe_config(conf: Any, data_dir: Path, db_remote: str) -> Any:
    """Keep a fuzzed config from doing what no test may: leases outside the test's folder,
    another CNI plugin run as IPAM, a remote that would wait for its whole timeout."""
    if not isinstance(conf, dict):
        return conf
    ipam = conf.get("ipam")
    if isinstance(ipam, dict):
        ipam["dataDir"] = str(data_dir)
        if isinstance(ipam.get("type"), str) and ipam["type"] in FOREIGN_PLUGINS:
            ipam["type"] = "no-such-ipam"
    remote = conf.get("ovsdb")
    if isinstance(remote, str) and remote != db_remote:
        conf["ovsdb"] = "unix:/nonexistent/db.sock" if remote.startswith("unix:") else "tcp:127.0.0.1:1"
    return conf


@st.composite
def invocations(draw: st.DrawFn, base_env: dict[str, str], base_conf: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """Mostly one thing wrong at a time (so that most examples get past the first check):
    a variable, a config subtree, or the bytes."""
    env = draw(environments(base_env, changes=(0, 0, 0, 1, 1, 2, 6)))
    if "CNI_COMMAND" in env and env["CNI_COMMAND"] == base_env["CNI_COMMAND"]:
        env["CNI_COMMAND"] = draw(st.sampled_from(("ADD",) * 6 + ("DEL", "CHECK", "VERSION")))
    conf = draw(st.sampled_from([base_conf]) | mutated_tree(base_conf, hostile_junk, max_changes=2)
                | st.sampled_from([{**base_conf, "ovsTimeout": t} for t in (1e-9, 0.05, 0.3)]))
    conf = safe_config(conf, Path(base_conf["ipam"]["dataDir"]), base_conf["ovsdb"])
    data = json.dumps(conf).encode("utf-8", "surrogatepass")
    return env, draw(hostile_bytes(data)) if draw(st.booleans()) else data


def test_the_real_plugin_leaves_nothing_behind(node: Node, tmp_path: Path) -> None:
    pod_netns = node.new_pod_netns()
    root = tmp_path / "leases"
    data_dir = root / "a" / "b" / "ipam"
    base_conf = plugin_config(node.ovs.db_sock, data_dir, x="x")
    base_env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "fuzzctr", "CNI_NETNS": f"/var/run/netns/{pod_netns}",
                "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=fz;K8S_POD_NAME=p", "CNI_PATH": CNI_PATH}
    good = json.dumps(base_conf).encode()
    data_dir.mkdir(parents=True)
    before = world(node, pod_netns, root)
    added = []

    @fuzz(REAL_EXAMPLES)
    @given(invocations(base_env, base_conf))
    @example((base_env, good))  # the plain ADD works (and its DEL undoes it)
    @example(({**base_env, "CNI_IFNAME": "é" * 7}, good))  # 14 bytes: a valid Linux name
    @example(({**base_env, "CNI_IFNAME": "é" * 8}, good))  # 16 bytes: too long for the kernel
    @example(({**base_env, "CNI_IFNAME": not_utf8(b"et\xff")}, good))
    @example(({**base_env, "CNI_IFNAME": "lo"}, good))
    @example(({**base_env, "CNI_ARGS": not_utf8(b"K8S_POD_NAMESPACE=\xff;K8S_POD_NAME=p")}, good))
    @example((base_env, json.dumps({**base_conf, "ovsTimeout": 0.05}).encode()))
    @example((base_env, json.dumps({**base_conf, "name": "../../escape"}).encode()))
    @example((base_env, deep_nesting(100_000)))
    def one(case: tuple[dict[str, str], bytes]) -> None:
        env, stdin = case
        run = invoke(node, env, stdin)
        out, err = run.stdout.decode("utf-8", "replace"), run.stderr.decode("utf-8", "replace")
        assert "Traceback" not in out + err, err
        if run.returncode == 0:
            assert err == "", err
            if env.get("CNI_COMMAND") == "ADD":
                result = json.loads(out)
                assert result["ips"] and result["interfaces"][1]["name"] == env["CNI_IFNAME"], result
                added.append(env["CNI_IFNAME"])
                undo = invoke(node, {**env, "CNI_COMMAND": "DEL"}, stdin)
                assert undo.returncode == 0, undo.stdout.decode() + undo.stderr.decode()
        else:
            assert run.returncode == 1, (run.returncode, out, err)
            check_error_json(out, err)
        assert world(node, pod_netns, root) == before, (env, stdin[:300], out, err)

    one()
    assert added, "no example got as far as a successful ADD"
