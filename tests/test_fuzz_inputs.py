"""Fuzzing every file and object input outside the CNI plugin (which is test_fuzz_cni.py's):
a failure is a clear error, never a traceback, and never costs what was valid before.

- manifests through `sdn-netpol validate` and `matrix` (in-process with click's CliRunner,
  and a sample through the real console script): exit 0 or 1, every error line names the
  object and the field path (model.errors.ValidationError), nothing escapes;
- the controller's folder source (`--source dir:`) on a folder whose files are overwritten
  or joined by broken ones: the poll never raises, objects of untouched files stay exactly
  as they were, an invalid or undecodable new version keeps the last valid one;
- the kube source's object parsing path (Reflector.relist/watch/apply with a fake API
  client): list items and watch events of any shape never kill the stream, and the objects
  no valid event changed stay; invalid policies still get their Event body;
- the ports file of `sdn-netpol compile --ports`: exit 0 or 1 (documented), one line per error;
- the lab's model files (`sdn-netpol lab up -f`, with the lab's side effects stubbed): a bad
  model fails before the previous lab is torn down, with one `Error:` line and one line per
  invalid object.

Inputs are tests/strategies.py's hostile strategies: VALID_MANIFESTS with subtrees replaced
by junk, rendered as YAML or JSON, then damaged as bytes (truncated, invalid UTF-8, nested
deeper than the parsers recurse, a megabyte long). Runs are derandomized (the same examples
on every run, as CI wants); SDN_NETPOL_FUZZ=N runs N random examples per test instead.
The crashes found are kept as @example regressions (docs/reliability.md, "Fuzzing").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from sdn_netpol.cli import main
from sdn_netpol.controller.config import KubeOptions
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.sources.directory import DirectorySource
from sdn_netpol.controller.sources.events import event_body
from sdn_netpol.controller.sources.kube import KubeSource, Reflector, Resource
from sdn_netpol.controller.sources.objects import convert, is_wanted, raw_key
from sdn_netpol.controller.store import Store
from sdn_netpol.inputs.manifests import ManifestError, decode_documents, load_paths
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import ObjectKey, flatten
from tests.strategies import VALID_MANIFESTS, deep_nesting, hostile_bytes, hostile_junk, mutated_manifests, mutated_tree

CONSOLE_SCRIPT = Path(sys.executable).parent / "sdn-netpol"
WHOLE_DOCUMENT = "a manifest must be an object"
MAX_LINE = 2500  # an error line shows at most a 300-character object, path and 1000-character message
RANDOM = int(os.environ.get("SDN_NETPOL_FUZZ", "0"))


def fuzz(examples: int) -> settings:
    """`examples` derandomized examples (CI), or SDN_NETPOL_FUZZ random ones (a longer hunt)."""
    return settings(max_examples=RANDOM or examples, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def quiet() -> Iterator[None]:
    """The sources' warnings about every invalid object are not wanted in the test output."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@contextmanager
def folder() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is per test, not per example)."""
    path = Path(tempfile.mkdtemp(prefix="sdn-netpol-fuzz-"))
    try:
        with quiet():
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / os.fsencode(name).decode("utf-8", "surrogateescape")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ---- inputs ------------------------------------------------------------------------------

bodies = st.lists(st.sampled_from(VALID_MANIFESTS) | mutated_manifests(hostile_junk) | hostile_junk, max_size=4)


@st.composite
def rendered(draw: st.DrawFn, docs: list[Any]) -> bytes:
    """`docs` as a file holds them: YAML documents, a JSON stream or array, or a kind: List."""
    style = draw(st.sampled_from(("yaml", "json", "json-array", "list")))
    if style == "yaml":
        text = yaml.safe_dump_all(docs)
    elif style == "json":
        text = "\n".join(json.dumps(d) for d in docs)
    elif style == "json-array":
        text = json.dumps(docs)
    else:
        text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8, as on disk


@st.composite
def manifest_file(draw: st.DrawFn) -> bytes:
    return draw(hostile_bytes(draw(rendered(draw(bodies)))))


FILE_NAMES = ("a.yaml", "b.yml", "c.json", "sub/d.yaml", os.fsdecode(b"\xff-e.yaml"), "f.yaml")
manifest_folders = st.dictionaries(st.sampled_from(FILE_NAMES), manifest_file(), min_size=1, max_size=3)

DEEP_JSON = deep_nesting(100_000)
DEEP_YAML = deep_nesting(1_000, json_style=False)
ESCAPED_NAME = json.dumps({**VALID_MANIFESTS[1], "metadata": {"name": "a\x1b[2J\nb", "namespace": "x"}}).encode()
OTHER_API_LINE = json.dumps({**VALID_MANIFESTS[1], "apiVersion": "x/v1\nerror: forged"}).encode()


# ---- checks ------------------------------------------------------------------------------


def well_formed(error: ValidationError) -> None:
    """Names the object (or the file) and the field path, on one printable line."""
    text = str(error)
    assert error.obj, error
    assert error.path or error.message == WHOLE_DOCUMENT or error.message.startswith("cannot decode"), error
    assert text.isprintable() and len(text) < MAX_LINE, repr(text[:300])


def no_traceback(result: Result, codes: tuple[int, ...] = (0, 1)) -> list[str]:
    """The command ended by itself (no exception escaped click) with a documented code;
    returns its stderr lines, each one printable line of bounded length."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        raise AssertionError("".join(traceback.format_exception(result.exception)))
    assert result.exit_code in codes, (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    for line in lines:
        assert len(line) < MAX_LINE and (line.isprintable() or line.startswith("  ")), repr(line[:300])
    return lines


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": "200"})


# ---- validate / matrix --------------------------------------------------------------------


def check_validate_and_matrix(root: Path) -> None:
    try:
        expected = load_paths([root])
    except ManifestError as exc:
        expected_errors: list[str] | None = None
        problem = str(exc)
    else:
        for error in expected.errors:
            well_formed(error)
        expected_errors = [f"error: {e}" for e in expected.errors]
    validate = cli("validate", "-f", root)
    lines = no_traceback(validate)
    for line in lines:
        assert line.startswith(("error: ", "note: ", "warning: ", "Error: ")), line
    if expected_errors is None:
        assert validate.exit_code == 1 and lines == [f"Error: {problem}"], lines
    else:
        assert [line for line in lines if line.startswith("error: ")] == expected_errors
        assert validate.exit_code == (1 if expected_errors else 0)
    matrix = cli("matrix", "-f", root, "--port", "80", "-o", "json")
    no_traceback(matrix)
    assert matrix.exit_code == validate.exit_code
    if matrix.exit_code == 0:
        assert "allowed" in json.loads(matrix.stdout)


@fuzz(200)
@given(manifest_folders)
@example({"a.json": DEEP_JSON})
@example({"a.yaml": DEEP_YAML})
@example({"a.yaml": b"kind: [\x1f"})  # a YAML error is one line, not PyYAML's excerpt under it
@example({"a.json": ESCAPED_NAME})
@example({"a.json": OTHER_API_LINE})
@example({os.fsdecode(b"\xff-e.yaml"): json.dumps(VALID_MANIFESTS[0]).encode()})
def test_validate_and_matrix_never_show_a_traceback(files: dict[str, bytes]) -> None:
    with folder() as root:
        write_files(root, files)
        check_validate_and_matrix(root)


SAMPLES = {
    "deep.json": DEEP_JSON, "deep.yaml": DEEP_YAML, "not-utf8.yaml": b"kind: Pod\nmetadata: {name: \xff}\n",
    "escape.json": ESCAPED_NAME, "binary.yaml": bytes(range(256)),
}


def test_a_sample_through_the_console_script(tmp_path: Path) -> None:
    """The real process (interpreter stack depth, stderr encoding), not CliRunner's."""
    write_files(tmp_path, SAMPLES)
    for name in SAMPLES:
        proc = subprocess.run([CONSOLE_SCRIPT, "validate", "-f", tmp_path / name], capture_output=True,
                              text=True, errors="surrogateescape", check=False, timeout=60)
        assert proc.returncode == 1, (name, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, (name, proc.stderr)
        lines = proc.stderr.splitlines()
        assert lines and all(line.startswith(("error: ", "warning: ", "Error: ")) for line in lines), lines
        assert all(line.isprintable() and len(line) < MAX_LINE for line in lines), lines


# ---- the controller's folder source ------------------------------------------------------

SOURCE_FILES = {f"{i}-{body['kind'].lower()}.yaml": body for i, body in enumerate(VALID_MANIFESTS)}


def _documents(name: str, data: bytes) -> list[Any] | None:
    """What a file means to the folder source, or None if it cannot be decoded."""
    try:
        return [item for doc in decode_documents(name, data.decode("utf-8"))
                for _, item in flatten(doc.source, doc.body)]
    except (ManifestError, UnicodeDecodeError):
        return None


def _key(body: Any) -> ObjectKey | None:
    return raw_key(body) if isinstance(body, dict) and is_wanted(body) else None


@st.composite
def folder_changes(draw: st.DrawFn) -> dict[str, bytes]:
    """Some of the valid files overwritten by a damaged version of their own object, and new
    files of anything."""
    changes: dict[str, bytes] = {}
    for name in draw(st.sets(st.sampled_from(sorted(SOURCE_FILES)), max_size=2)):
        own = draw(mutated_tree(SOURCE_FILES[name], hostile_junk))
        changes[name] = draw(hostile_bytes(draw(rendered([own]))))
    changes.update(draw(st.dictionaries(st.sampled_from(("9-new.yaml", "5-x.json", os.fsdecode(b"\xff.yaml"))),
                                        manifest_file(), max_size=2)))
    return changes


@fuzz(150)
@given(folder_changes())
@example({"1-pod.yaml": DEEP_JSON})
@example({"9-new.yaml": DEEP_YAML})
@example({os.fsdecode(b"\xff.yaml"): json.dumps(VALID_MANIFESTS[0]).encode()})
@example({"1-pod.yaml": ESCAPED_NAME})
@example({"0-namespace.yaml": b"", "5-x.json": yaml.safe_dump(VALID_MANIFESTS[0]).encode()})  # YAML in a .json
def test_folder_source_keeps_what_was_valid(changes: dict[str, bytes]) -> None:
    reports: list[str | None] = []
    store = Store()
    with folder() as root:
        write_files(root, {name: yaml.safe_dump(body).encode() for name, body in SOURCE_FILES.items()})
        source = DirectorySource(root, store, reports.append)
        assert source.poll()
        before = dict(store.snapshot().objects)
        assert len(before) == len(SOURCE_FILES), reports
        write_files(root, changes)
        source.poll()  # never raises: a bad file is reported, not fatal
    snap = store.snapshot()
    assert reports[-1] is None, reports
    snap.state  # noqa: B018  (what the realizer compiles builds)
    for invalid in snap.invalid:
        for error in invalid.errors:
            well_formed(error)
    decoded = {name: _documents(name, data) for name, data in changes.items()}
    mentioned = {_key(body) for docs in decoded.values() if docs for body in docs}
    redefined = {_key(body) for docs in decoded.values() if docs for body in docs
                 if isinstance(body, dict) and _key(body) is not None and convert(body).obj is not None}
    for name, body in SOURCE_FILES.items():
        key = _key(body)
        assert key is not None
        if name in changes and decoded[name] is not None and key not in mentioned:
            continue  # its file now says something else: the object is gone, as in `matrix -f`
        assert key in snap.objects, (key, snap.invalid)
        if key not in redefined:
            assert snap.objects[key] == before[key], key


# ---- the kube source's object parsing path -----------------------------------------------

class FakeResponse:
    """What Reflector reads of a urllib3 response (`_preload_content=False`)."""

    def __init__(self, data: bytes = b"", chunks: tuple[bytes, ...] = ()) -> None:
        self.status, self.reason, self.data, self.chunks = 200, "OK", data, chunks

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks

    def release_conn(self) -> None:
        pass


class FakeEvents:
    """EventRecorder's part that depends on the object: the Event body, as JSON."""

    def __init__(self) -> None:
        self.posted: list[str] = []

    def invalid_policy(self, policy: dict[str, Any], errors: tuple[ValidationError, ...]) -> None:
        self.posted.append(json.dumps(event_body(policy, errors, "node-1", "2024-01-01T00:00:00Z")))


KINDS = {"Namespace": "namespaces", "Pod": "pods", "NetworkPolicy": "networkpolicies", "Node": "nodes"}


def _items(kind: str) -> list[dict[str, Any]]:
    """Two valid objects of `kind`, as a list response carries them (no kind, no apiVersion)."""
    (body,) = [b for b in VALID_MANIFESTS if b["kind"] == kind]
    item = {k: v for k, v in body.items() if k not in ("kind", "apiVersion")}
    other = json.loads(json.dumps(item))
    other["metadata"]["name"] = "other"
    return [item, other]


@st.composite
def watch_streams(draw: st.DrawFn, kind: str) -> tuple[list[Any], list[bytes]]:
    """Events about valid objects damaged, junk events, and (now and then) junk lines."""
    events: list[Any] = []
    for _ in range(draw(st.integers(1, 5))):
        base = {**draw(st.sampled_from(_items(kind))), "kind": kind}
        obj = draw(st.sampled_from([base]) | mutated_tree(base, hostile_junk) | hostile_junk)
        kind_of_event = draw(st.sampled_from(("ADDED", "MODIFIED", "MODIFIED", "DELETED", "BOOKMARK")) | hostile_junk)
        event: Any = draw(st.sampled_from([{"type": kind_of_event, "object": obj}])
                          | mutated_tree({"type": kind_of_event, "object": obj}, hostile_junk, max_changes=1))
        events.append(event)
    lines = [json.dumps(e).encode() for e in events]
    if draw(st.integers(0, 4)) == 0:  # not an event at all: the stream is broken, not one object
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from([b"{not json", b"\xff\xfe", b"[1]"])))
    return events, lines


def _json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def reflector_for(kind: str, page: dict[str, Any], lines: list[bytes]) -> tuple[Reflector, Store, FakeEvents]:
    store = Store()
    source = KubeSource(store, lambda _m: None, Metrics(), KubeOptions())
    events = FakeEvents()
    source.events = events  # type: ignore[assignment]
    pages = [page]

    def list_fn(**kw: Any) -> FakeResponse:
        if kw.get("watch"):
            return FakeResponse(chunks=tuple(line + b"\n" for line in lines))
        return FakeResponse(json.dumps(pages.pop(0) if len(pages) > 1 else pages[0]).encode())

    resource = Resource(KINDS[kind], kind, lambda _api: list_fn)
    return Reflector(resource, None, source), store, events  # type: ignore[arg-type]


def _page(items: list[Any], rv: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}


@fuzz(300)
@given(st.sampled_from(sorted(KINDS)).flatmap(lambda k: st.tuples(st.just(k), watch_streams(k))))
@example(("Pod", ([{"type": "MODIFIED", "object": []}], [b'{"type": "MODIFIED", "object": []}'])))
@example(("Pod", ([{"type": "ADDED", "object": {"metadata": []}}], [b'{"type": "ADDED", "object": {"metadata": []}}'])))
@example(("Node", ([], [b"[1]"])))
@example(("Pod", ([], [b'{"type": "ERROR", "object": "gone"}'])))
def test_kube_watch_events_never_kill_the_stream(case: tuple[str, tuple[list[Any], list[bytes]]]) -> None:
    kind, (events, lines) = case
    reflector, store, _ = reflector_for(kind, _page(_items(kind), "10"), lines)
    rv = reflector.relist()
    before = dict(store.snapshot().objects)
    assert len(before) == 2
    broken_stream = any(not isinstance(e, dict) or e.get("type") == "ERROR" for e in map(_json, lines))
    try:
        with quiet():
            reflector.watch(rv)
    except ValueError:  # Reflector.run handles it: the watch is re-opened ("dropped")
        assert broken_stream, lines
    except ApiException:  # an ERROR event: Reflector.run handles it (re-list on 410, else back off)
        assert broken_stream, lines
    snap = store.snapshot()
    for invalid in snap.invalid:
        for error in invalid.errors:
            well_formed(error)
    touched: set[ObjectKey | None] = set()
    for event in events:
        obj = event.get("object") if isinstance(event, dict) else None
        if isinstance(obj, dict):
            body = {**obj, "kind": kind}
            if event.get("type") == "DELETED" or (event.get("type") in ("ADDED", "MODIFIED")
                                                  and convert(body).obj is not None):
                touched.add(raw_key(body))
    for key, obj in before.items():
        if key not in touched:
            assert snap.objects.get(key) == obj, key


@fuzz(200)
@given(st.sampled_from(sorted(KINDS)).flatmap(lambda k: st.tuples(
    st.just(k), st.lists(st.sampled_from(_items(k)).flatmap(lambda b: mutated_tree(b, hostile_junk)) | hostile_junk,
                         min_size=1, max_size=4), st.booleans())))
@example(("Pod", [[1], "x", None], False))
def test_kube_relist_items_never_cost_the_valid_ones(case: tuple[str, list[Any], bool]) -> None:
    kind, junk_items, first = case
    valid = _items(kind)
    items = [*junk_items, *valid] if first else [*valid, *junk_items]
    reflector, store, events = reflector_for(kind, _page(valid, "10"), [])
    reflector.relist()
    before = dict(store.snapshot().objects)
    reflector.list_fn = lambda **_kw: FakeResponse(json.dumps(_page(items, "11")).encode())
    with quiet():
        reflector.relist()
    snap = store.snapshot()
    for invalid in snap.invalid:
        for error in invalid.errors:
            well_formed(error)
    redefined = {raw_key({**i, "kind": kind}) for i in junk_items
                 if isinstance(i, dict) and convert({**i, "kind": kind}).obj is not None}
    for key, obj in before.items():
        assert key in snap.objects, key
        if key not in redefined or first:  # items later in the page win
            assert snap.objects[key] == obj, key
    if kind == "NetworkPolicy":
        assert all(json.loads(text)["reason"] == "InvalidPolicy" for text in events.posted)


# ---- the ports file ----------------------------------------------------------------------

VALID_PORTS = {"pods": {"x/a": 3}, "tunnel": 100, "gateway": 101, "gateway_peer_mac": "52:54:00:00:01:01",
               "nodes": {"n1": "192.168.0.1", "n2": "192.168.0.2"}}


@st.composite
def ports_files(draw: st.DrawFn) -> bytes:
    doc = draw(st.sampled_from([VALID_PORTS]) | mutated_tree(VALID_PORTS, hostile_junk) | hostile_junk)
    text = yaml.safe_dump(doc) if draw(st.booleans()) else json.dumps(doc)
    return draw(hostile_bytes(text.encode("utf-8", "surrogatepass")))


@fuzz(200)
@given(ports_files())
@example(json.dumps(VALID_PORTS).encode())
@example(b"pods: {\xff: 1}\n")
@example(DEEP_JSON)
@example(b"pods: {x/a: 3}\ngateway_peer_mac: [\x1f\n")
@example(b"\x00")
def test_ports_file_errors_are_one_line_each(data: bytes) -> None:
    with folder() as root:
        write_files(root, {"m/cluster.yaml": yaml.safe_dump_all(VALID_MANIFESTS).encode(), "n1.ports": data})
        result = cli("compile", "-f", root / "m", "--node", "n1", "--ports", root / "n1.ports")
        lines = no_traceback(result)
        errors = [line for line in lines if not line.startswith("note: ")]
        assert all(line.startswith("error: ") for line in errors), errors
        assert (result.exit_code == 1) == bool(errors), lines
        for line in errors:  # says which input: the file, or the ports file's entry
            assert str(root / "n1.ports") in line or "ports file" in line, line
        if data == json.dumps(VALID_PORTS).encode():
            assert result.exit_code == 0 and "in_port=3" in result.stdout


# ---- the lab's model files -----------------------------------------------------------------


@fuzz(150)
@given(manifest_folders)
@example({"a.yaml": yaml.safe_dump({**VALID_MANIFESTS[1], "apiVersion": "x/v1", "metadata": {"name": 5}}).encode()})
@example({"a.yaml": yaml.safe_dump({**VALID_MANIFESTS[1], "apiVersion": "x/v1", "metadata": [1]}).encode()})
@example({"a.yaml": yaml.safe_dump({**VALID_MANIFESTS[1], "status": {"podIP": "10.9.9.9"}}).encode()})
@example({"a.yaml": DEEP_YAML})
def test_lab_up_refuses_a_bad_model_before_touching_the_lab(files: dict[str, bytes]) -> None:
    """A valid model goes on to tear the previous lab down and build (both stubbed here);
    a bad one stops before that, with `Error:` and one line per invalid object."""
    with folder() as root, mock.patch("sdn_netpol.lab.cleanup.teardown") as teardown, \
            mock.patch("sdn_netpol.lab.lab.Lab._build") as build:
        write_files(root / "model", files)
        result = cli("lab", "--workdir", root / "work", "up", "-f", root / "model", "--nodes", "2")
        lines = no_traceback(result)
        if result.exit_code == 0:
            assert teardown.called and build.called
            return
        assert not teardown.called and not build.called, lines
        assert lines and lines[0].startswith("Error: ") and all(line.startswith("  ") for line in lines[1:]), lines
