"""Bulk changes through the folder source (issue 17.4): what makes `lab apply` of 1,000
policies cheap must not change what the controller enforces.

- the folder walk lists exactly what `manifest_files` lists;
- a folder being written is read once the writing pauses (or after `max_settle`), and a
  file whose content is trusted is not read again on every poll;
- a folder reload patches the store's last state instead of rebuilding it, and the patched
  state equals a full build;
- the lab's manifests are JSON when JSON holds the object exactly (YAML otherwise), read
  back as the same object by the lab and the controller, and an unchanged object is not
  rewritten;
- YAML read through libyaml is exactly what the pure-Python loader reads (values, and the
  error messages of what it refuses);
- /status answers the board as it is at each request (its text is reused while unchanged).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sdn_netpol.controller import status
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.sources.directory import (
    DirectorySource,
    folder_version,
    load,
    poll_delay,
    read_folder,
    scan,
)
from sdn_netpol.controller.store import _MAX_PATCH, Store
from sdn_netpol.inputs.manifests import ManifestError, decode_documents, load_yaml_all, manifest_files
from sdn_netpol.lab.store import Store as LabStore
from sdn_netpol.lab.store import ref_of
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.state import ClusterState
from tests.controller_fixtures import namespace_manifest, pod_manifest, policy_manifest, write
from tests.strategies import VALID_MANIFESTS, deep_nesting, hostile_bytes, hostile_junk, mutated_manifests


def age(root: Path, seconds: float) -> None:
    """Every file and folder under root (root too) last modified `seconds` ago."""
    when = time.time_ns() - int(seconds * 1e9)
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(when, when), follow_symlinks=False)


# ---- the walk ---------------------------------------------------------------------------


def test_scan_lists_exactly_the_manifest_files(tmp_path: Path) -> None:
    root = tmp_path / "m"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("a.yaml", "b.yml", "c.json", "d.txt", ".e.yaml", ".f.yaml.tmp", "sub/g.yaml", "sub/deeper/h.json",
                ".hidden/i.yaml", "sub/.yaml", "a-b.yaml", "..yaml", "x.", "y.yaml."):
        (root / rel).write_text("{}")
    (root / "dir.yaml").mkdir()  # a folder named like a manifest
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.yaml").write_text("{}")
    (root / "linked-dir").symlink_to(outside)  # not descended into, as rglob does not
    (root / "linked.yaml").symlink_to(root / "a.yaml")  # a symlink to a file is a file
    (root / "dangling.yaml").symlink_to(tmp_path / "nothing")
    expected = sorted(p.relative_to(root).as_posix() for p in manifest_files(root))
    assert [rel for rel, _, _ in scan(root).files] == expected
    assert "linked.yaml" in expected and "sub/deeper/h.json" in expected and "linked-dir/o.yaml" not in expected
    assert [rel for rel, _, _ in scan(root / "sub" / "g.yaml").files] == ["g.yaml"]
    assert read_folder(root).version == folder_version(root)


# ---- settling and trusted reads ---------------------------------------------------------


def test_a_folder_being_written_is_read_once_the_writing_pauses(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None, settle=30.0, max_settle=3600.0)
    write(tmp_path / "ns.yaml", namespace_manifest("x"))
    write(tmp_path / "p.yaml", policy_manifest("x", "db", "db", {"app": "web"}))
    assert source.step() > 0, "written just now: the writer may not be done"
    assert store.generation == 0 and not store.snapshot().synced
    age(tmp_path, 60)
    assert source.step() == source.poll_interval
    assert [p.name for p in store.snapshot().state.policies] == ["db"]
    generation = store.generation
    (tmp_path / "p.yaml").unlink()  # a delete changes the folder's mtime: settling again
    assert source.step() > 0 and store.generation == generation
    age(tmp_path, 60)
    source.step()
    assert store.snapshot().state.policies == ()


def test_a_folder_that_takes_long_to_scan_is_looked_at_less_often(tmp_path: Path) -> None:
    """A look costs a stat per file: the next one waits ten times as long as the scan took,
    so an idle controller spends at most a tenth of a core on a folder of any size."""
    assert poll_delay(0.1, 0.001) == 0.1
    assert poll_delay(0.1, 0.035) == pytest.approx(0.35)
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None, settle=0.0)
    write(tmp_path / "ns.yaml", namespace_manifest("x"))
    age(tmp_path, 60)
    real_scan = scan

    def slow_scan(path: str | Path) -> Any:
        clock.append(clock[-1] + 0.05)  # this scan took 50 ms
        return real_scan(path)

    clock = [100.0]
    with mock.patch("sdn_netpol.controller.sources.directory.scan", slow_scan), \
            mock.patch("sdn_netpol.controller.sources.directory.time.monotonic", lambda: clock[-1]):
        assert source.step() == pytest.approx(0.5)
    assert [n.name for n in store.snapshot().state.namespaces] == ["x"]


def test_a_writer_that_never_pauses_is_read_after_max_settle(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None, settle=30.0, max_settle=0.2)
    write(tmp_path / "ns.yaml", namespace_manifest("x"))
    assert source.step() > 0
    time.sleep(0.25)
    source.step()
    assert [n.name for n in store.snapshot().state.namespaces] == ["x"]


def test_poll_reads_at_once_and_an_unchanged_folder_costs_no_new_version(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None, settle=30.0)
    write(tmp_path / "ns.yaml", namespace_manifest("x"))
    assert source.poll(), "poll() itself never waits"
    generation = store.generation
    write(tmp_path / "ns.yaml", namespace_manifest("x"))  # the same bytes again (new mtime, new inode)
    assert not source.poll()
    assert store.generation == generation


def test_a_trusted_file_is_not_read_again(tmp_path: Path) -> None:
    """Read two seconds or more after its mtime, a file's content is trusted as long as its
    (mtime, size, inode) stay; a later write changes them (tests/test_controller_units.py:
    within one mtime tick of the read, a same-size rewrite is still seen)."""
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    path = tmp_path / "n.yaml"
    path.write_text("kind: Namespace\nmetadata: {name: aa}\n")
    age(tmp_path, 10)
    assert source.poll()
    stat = path.stat()
    path.write_text("kind: Namespace\nmetadata: {name: bb}\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same key: nothing says it changed
    assert not source.poll()
    assert [n.name for n in store.snapshot().state.namespaces] == ["aa"]
    path.write_text("kind: Namespace\nmetadata: {name: cc}\n")  # a real write: a new mtime
    assert source.poll()
    assert [n.name for n in store.snapshot().state.namespaces] == ["cc"]


def test_a_whole_second_mtime_stays_racy_for_two_seconds(tmp_path: Path) -> None:
    """A filesystem that keeps whole seconds (or FAT's two) can give a rewrite half a second
    later the same mtime: such a file is read again until two seconds have passed; one with
    sub-second digits only for 0.1 s (racy_ns)."""
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    coarse, fine = tmp_path / "coarse.yaml", tmp_path / "fine.yaml"
    coarse.write_text("kind: Namespace\nmetadata: {name: aa}\n")
    fine.write_text("kind: Namespace\nmetadata: {name: xx}\n")
    second = (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000  # a whole second, 1-2 s ago
    os.utime(coarse, ns=(second, second))
    sub = time.time_ns() - 500_000_000 + 123_457  # half a second ago, sub-second digits
    os.utime(fine, ns=(sub, sub))
    assert source.poll()
    for path, name in ((coarse, "bb"), (fine, "yy")):
        path.write_text(f"kind: Namespace\nmetadata: {{name: {name}}}\n")  # same size
    os.utime(coarse, ns=(second, second))
    os.utime(fine, ns=(sub, sub))
    assert source.poll()
    assert [n.name for n in store.snapshot().state.namespaces] == ["bb", "xx"]


# ---- folder reloads patch the snapshot --------------------------------------------------


def folder_state(root: Path) -> ClusterState:
    """What a fresh controller builds from the folder (no earlier state)."""
    store = Store()
    DirectorySource(root, store, lambda _m: None).poll()
    return store.snapshot().state


def manifests(policies: int, relabel: bool = False) -> dict[str, dict[str, Any]]:
    files = {"ns-x.yaml": namespace_manifest("x"), "ns-y.yaml": namespace_manifest("y")}
    for i in range(6):
        labels = {"app": "db" if i % 2 else "web"} | ({"tier": "new"} if relabel and i == 3 else {})
        files[f"pod-{i}.yaml"] = pod_manifest("xy"[i % 2], f"p{i}", f"10.0.0.{i + 1}", **labels)
    for i in range(policies):
        files[f"pol-{i:04d}.yaml"] = policy_manifest("xy"[i % 2], f"pol{i}", "db", {"app": "web"})
    return files


def put(root: Path, files: dict[str, dict[str, Any]]) -> None:
    for old in root.glob("*.yaml"):
        if old.name not in files:
            old.unlink()
    for name, body in files.items():
        write(root / name, body)


@pytest.mark.parametrize("change", ["add", "delete", "relabel", "modify"])
def test_a_folder_reload_patches_the_last_state_and_equals_a_full_build(tmp_path: Path, change: str) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    files = manifests(20)
    put(tmp_path, files)
    source.poll()
    first = store.snapshot().state
    if change == "add":
        files = manifests(25)
    elif change == "delete":
        files = manifests(12)
    elif change == "relabel":
        files = manifests(20, relabel=True)
    else:
        files["pol-0003.yaml"] = policy_manifest("y", "pol3", "web", {"app": "db"})
    put(tmp_path, files)
    assert source.poll()
    state = store.snapshot().state
    assert state.patched_from(first) is not None, "patched from the last state, not rebuilt"
    assert state == folder_state(tmp_path)
    assert set(state.policies) == set(parse_documents(
        Document(str(p), yaml.safe_load(p.read_text())) for p in sorted(tmp_path.glob("pol-*.yaml"))).policies)


def test_a_namespace_change_or_a_bulk_reload_builds_the_state_in_full(tmp_path: Path) -> None:
    store = Store()
    source = DirectorySource(tmp_path, store, lambda _m: None)
    put(tmp_path, manifests(3))
    source.poll()
    first = store.snapshot().state
    write(tmp_path / "ns-z.yaml", namespace_manifest("z"))
    assert source.poll()
    second = store.snapshot().state
    assert second.patched_from(first) is None and second == folder_state(tmp_path)
    put(tmp_path, manifests(_MAX_PATCH + 10) | {"ns-z.yaml": namespace_manifest("z")})
    assert source.poll()
    third = store.snapshot().state
    assert third.patched_from(second) is None and third == folder_state(tmp_path)
    assert len(third.policies) == _MAX_PATCH + 10


# ---- the lab's manifests ----------------------------------------------------------------


def test_lab_manifests_are_json_read_back_exactly_and_not_rewritten_unchanged(tmp_path: Path) -> None:
    store = LabStore(tmp_path / "manifests")
    policy = policy_manifest("x", "db", "db", {"app": "web"})
    policy["metadata"]["annotations"] = {"note": "caf\u00e9 \u2028 \x85 \x7f \\/ \"\b\f", "quoted": "yes", "n": "null"}
    dated = pod_manifest("x", "a", "10.0.0.1")
    dated["metadata"]["annotations"] = {"built": datetime.date(2026, 12, 4)}  # what YAML makes of 2026-12-04
    int_keys = namespace_manifest("y")
    int_keys["metadata"]["labels"] = {80: "x"}  # YAML allows it; JSON would turn it into "80"
    floating = policy_manifest("z", "f", "db", None)
    floating["metadata"]["annotations"] = {"ratio": 1e100}  # JSON's 1e+100 is a string to YAML 1.1
    astral = namespace_manifest("w")
    astral["metadata"]["annotations"] = {"face": "\U0001f600"}  # JSON: a surrogate pair, two characters to YAML
    bodies = (policy, dated, int_keys, floating, astral)
    for body in bodies:
        assert store.write(body) is False, "a new object"
        assert store.write(body) is True, "it existed"
    files = {ref_of(b): tmp_path / "manifests" / ref_of(b).filename for b in bodies}
    assert files[ref_of(policy)].read_text().startswith("{")
    for body in bodies[1:]:
        assert not files[ref_of(body)].read_text().startswith("{"), body
    for body in bodies:
        path = files[ref_of(body)]
        assert store.get(ref_of(body)) == body
        (doc,) = decode_documents(str(path), path.read_text())  # as the controller decodes it
        assert doc.body == body
        assert yaml.safe_load(path.read_text()) == body  # and as any YAML reader does
    stat = files[ref_of(policy)].stat()
    version = folder_version(tmp_path / "manifests")
    assert store.write(policy)
    again = files[ref_of(policy)].stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert folder_version(tmp_path / "manifests") == version
    policy["spec"]["podSelector"] = {"matchLabels": {"app": "other"}}
    store.write(policy)
    assert folder_version(tmp_path / "manifests") != version
    loaded = load(str(tmp_path), read_folder(tmp_path / "manifests"), {})
    assert ("NetworkPolicy", "x", "db") in loaded.objects


# ---- YAML through libyaml ---------------------------------------------------------------


def outcome(load: Callable[[], list[Any]]) -> tuple[str, Any]:
    try:
        return "ok", load()
    except ManifestError as exc:
        return "error", str(exc)


def pure_python(text: str) -> list[Any]:
    """What load_yaml_all returned before libyaml: yaml.safe_load_all, errors as ManifestError."""
    with mock.patch("sdn_netpol.inputs.manifests._C_LOADER", None):
        return load_yaml_all("f.yaml", text)


yaml_texts = st.lists(st.sampled_from(VALID_MANIFESTS) | mutated_manifests(hostile_junk) | hostile_junk,
                      max_size=3).map(lambda docs: yaml.safe_dump_all(docs).encode("utf-8", "surrogatepass")).flatmap(
                          hostile_bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(yaml_texts)
@example(deep_nesting(1_000, json_style=False))
@example(deep_nesting(600, json_style=False))  # libyaml reads it, the pure-Python parser gives up
@example(b"a: &x [1, *x]\nb: *x\n")  # recursive alias
@example(b"a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\n")
@example(b"k: \xc2\x85v\nq: \xef\xbf\xbe\n")  # NEL, and a non-character refused by both
@example(b"%YAML 1.2\n---\na: 1\n")
@example(b"a: 1\n\tb: 2\n")
@example("emoji: \U0001f600\nlist: !!set {a, b}\nd: 2026-12-04\nf: 1e3\nm: !!omap [a: 1]\n".encode())
def test_yaml_through_libyaml_reads_exactly_what_the_pure_python_loader_reads(data: bytes) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return  # refused before any YAML parser sees it
    fast = outcome(lambda: load_yaml_all("f.yaml", text))
    slow = outcome(lambda: pure_python(text))
    assert repr(fast) == repr(slow)  # repr: types shown, and a recursive alias compares without recursing


# ---- /status while lab apply asks every 50 ms -------------------------------------------


def get_status(sock: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(str(sock))
        client.sendall(b"GET /status HTTP/1.0\r\n\r\n")
        chunks = []
        while data := client.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    return body


def test_status_answers_the_board_as_it_is_at_each_request(tmp_path: Path) -> None:
    policies = {f"x/p{i}": (3, False) for i in range(1000)}
    generation = [3]
    board = status.StatusBoard("n1", "dir:/m", desired=lambda: generation[0], policies=lambda: dict(policies))
    sock = tmp_path / "status.sock"
    status.serve(f"unix:{sock}", board, Metrics(), lambda: True)
    first = get_status(sock)
    assert first == json.dumps(board.to_json(), indent=1).encode() + b"\n"
    assert get_status(sock) == first
    board.set_realized(status.Realized(3, "sha256:v", 1.0, {0: 5}, {"x/a": 1}, ()), 5)
    realized = json.loads(get_status(sock))["nodes"]["n1"]
    assert realized["realized_generation"] == 3 and realized["policies"]["x/p7"]["realized"] is True
    policies["x/p7"] = (4, False)
    generation[0] = 4
    board.report("source", "broken")
    after = json.loads(get_status(sock))["nodes"]["n1"]
    assert after["desired_generation"] == 4 and after["policies"]["x/p7"]["realized"] is False
    assert after["last_error"] == "source: broken"
    assert get_status(sock) == json.dumps(board.to_json(), indent=1).encode() + b"\n"
