"""`--source dir:PATH`: a folder of manifests, with the meaning of `sdn-netpol matrix -f PATH`.

Files are read in sorted order (`manifests.manifest_files`: *.yaml, *.yml, *.json, also in
sub-folders); a later object with the same kind/namespace/name replaces an earlier one.
Creating, changing or deleting a file is a change. Beyond `matrix -f`, the folder is read
again and again, so two rules keep enforcement steady while a user edits it:
- an object whose new version is invalid keeps its last valid version (and is reported);
- a file that cannot be decoded (half-written YAML) keeps the documents it last decoded to.

The folder is polled (stat of every file; an unchanged listing is trusted only once its
newest mtime is a couple of seconds old, as git does for "racily clean" files) rather than
watched with inotify: it works on every filesystem and costs little at folder sizes.

`folder_version(path)` is the version the controller reports in /status for this source,
computed from exactly the bytes the realized state was parsed from (see its docstring).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn_netpol.controller.sources.objects import NO_KIND, WANTED_KINDS, convert, is_wanted
from sdn_netpol.controller.store import Store, StoredObject
from sdn_netpol.controller.worker import Worker
from sdn_netpol.inputs.manifests import ManifestError, decode_documents, manifest_files
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import ObjectKey, flatten

LOG = logging.getLogger(__name__)
RACY_SECONDS = 2.0  # an mtime this recent may hide a same-size rewrite in the same tick


@dataclass(frozen=True)
class FolderContents:
    files: tuple[tuple[str, bytes], ...]  # (relative posix path, content), sorted by path
    version: str


def read_folder(path: str | Path) -> FolderContents:
    """Every manifest file's bytes, and their version, from one read of each file."""
    root = Path(path)
    found = manifest_files(root)
    base = root if root.is_dir() else root.parent
    files = []
    for file in found:
        try:
            files.append((file.relative_to(base).as_posix(), file.read_bytes()))
        except FileNotFoundError:
            continue  # deleted between listing and reading: it is simply gone
        except OSError as exc:
            raise ManifestError(f"{file}: {exc.strerror or exc}") from exc
    files.sort()
    return FolderContents(tuple(files), _version(files))


def folder_version(path: str | Path) -> str:
    """"sha256:" + hex digest over the manifest files sorted by relative path (POSIX
    separators): for each file, the UTF-8 path (a name that is not UTF-8: its bytes as on
    disk), a NUL, the decimal byte length of the content, a NUL, then the content.
    Length-prefixing keeps (path, content) pairs unambiguous; an empty folder hashes the
    empty input."""
    return read_folder(path).version


def _version(files: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for rel, data in files:
        digest.update(os.fsencode(rel) + b"\0" + str(len(data)).encode() + b"\0")
        digest.update(data)
    return "sha256:" + digest.hexdigest()


Entry = tuple[ObjectKey, StoredObject | None, tuple[ValidationError, ...]]  # None: rejected


@dataclass(frozen=True)
class ParsedFile:
    """One file's bytes and what they mean, kept so that an unchanged file is not parsed
    again (a 10k-pod folder costs seconds of YAML) and a broken one keeps its last meaning."""

    data: bytes
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Loaded:
    objects: dict[ObjectKey, StoredObject]
    invalid: dict[ObjectKey, tuple[ValidationError, ...]]
    files: dict[str, ParsedFile]  # for the next load


def load(root: str, contents: FolderContents, previous: dict[str, ParsedFile]) -> Loaded:
    """Objects and rejections of one folder read, in `matrix -f` order."""
    objects: dict[ObjectKey, StoredObject] = {}
    invalid: dict[ObjectKey, tuple[ValidationError, ...]] = {}
    files: dict[str, ParsedFile] = {}
    for rel, data in contents.files:
        label = os.path.join(root, rel)
        parsed, problem = _parse_file(label, data, previous.get(rel))
        files[rel] = parsed
        for key, obj, errors in parsed.entries:
            if obj is not None:
                objects[key] = obj
                invalid.pop(key, None)
            else:
                invalid[key] = errors
        if problem is not None:
            invalid[(NO_KIND, label, "")] = (ValidationError(label, "", problem),)
    return Loaded(objects, invalid, files)


def _parse_file(label: str, data: bytes, previous: ParsedFile | None) -> tuple[ParsedFile, str | None]:
    """The file's meaning, or (when it cannot be decoded) its last meaning and why."""
    if previous is not None and previous.data == data:
        return previous, None
    try:
        documents = list(decode_documents(label, data.decode("utf-8")))
    except (ManifestError, UnicodeDecodeError) as exc:
        kept = "; its last decodable content still applies" if previous is not None and previous.entries else ""
        return previous or ParsedFile(b"", ()), f"cannot decode: {exc}{kept}"
    entries = [_entry(source, body) for doc in documents for source, body in flatten(doc.source, doc.body)]
    return ParsedFile(data, tuple(e for e in entries if e is not None)), None


def _entry(source: str, body: Any) -> Entry | None:
    if isinstance(body, dict) and body.get("kind") and not is_wanted(body):
        return None  # another kind, or another API's NetworkPolicy: skipped, as matrix -f does
    if not isinstance(body, dict) or not body.get("kind"):
        return ((NO_KIND, source, ""), None, (ValidationError(source, "kind", "Required value"),))
    result = convert(body)
    if result.obj is not None and result.key is not None:
        return (result.key, result.obj, ())
    return (result.key or (str(body["kind"]), source, ""), None, result.errors)


Signature = tuple[tuple[str, int, int, int], ...]


def _signature(root: Path) -> tuple[Signature, bool]:
    """(path, mtime_ns, size, inode) of every manifest file, and whether any is racy."""
    entries = []
    racy_after = time.time_ns() - int(RACY_SECONDS * 1e9)
    racy = False
    for file in manifest_files(root):
        try:
            st = file.stat()
        except FileNotFoundError:
            continue
        entries.append((str(file), st.st_mtime_ns, st.st_size, st.st_ino))
        racy = racy or st.st_mtime_ns >= racy_after
    return tuple(entries), racy


class DirectorySource(Worker):
    """Polls a folder; every new version of its contents replaces the store's objects."""

    thread_name = "source-dir"

    def __init__(self, path: str | Path, store: Store, report: Callable[[str | None], None],
                 poll_interval: float = 0.1) -> None:
        self.path = Path(path)
        self.store = store
        self.report = report
        self.poll_interval = poll_interval
        self._files: dict[str, ParsedFile] = {}
        self._version: str | None = None
        self._signature: Signature | None = None
        super().__init__()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except ManifestError as exc:
                LOG.error("source %s: %s (keeping the last state)", self.path, exc)
                self.report(str(exc))
                self._signature = None
            self._stop.wait(self.poll_interval)

    def poll(self) -> bool:
        """Read the folder if it may have changed; True if the store got a new version."""
        signature, racy = _signature(self.path)
        if signature == self._signature and not racy:
            return False
        contents = read_folder(self.path)
        self._signature = signature
        if contents.version == self._version:
            return False
        loaded = load(str(self.path), contents, self._files)
        self._files = loaded.files
        self._version = contents.version
        for key, errors in loaded.invalid.items():
            for error in errors:
                LOG.warning("invalid object %s skipped: %s", "/".join(k for k in key if k), error)
        self.store.replace((*WANTED_KINDS, NO_KIND), loaded.objects, loaded.invalid, contents.version, synced=True)
        self.report(None)
        LOG.info("source %s: version %s, %d objects, %d invalid", self.path, contents.version[:19],
                 len(loaded.objects), len(loaded.invalid))
        return True
