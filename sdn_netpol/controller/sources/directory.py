"""`--source dir:PATH`: a folder of manifests, with the meaning of `sdn-netpol matrix -f PATH`.

Files are read in sorted order (`manifests.manifest_files`: *.yaml, *.yml, *.json, also in
sub-folders); a later object with the same kind/namespace/name replaces an earlier one.
Creating, changing or deleting a file is a change. Beyond `matrix -f`, the folder is read
again and again, so two rules keep enforcement steady while a user edits it:
- an object whose new version is invalid keeps its last valid version (and is reported);
- a file that cannot be decoded (half-written YAML) keeps the documents it last decoded to.

The folder is polled (one `scandir` walk and a stat of every file; a file is re-read when
its stat changed, and also while it is "racily clean" as git says: its content is trusted
only once it was read long enough after its mtime that a later write must carry a later
mtime: two seconds where mtimes are whole seconds, 0.1 s where they have sub-second digits)
rather than watched with inotify: it works on every filesystem. A look costs a stat per
file, ~30 ms at 10,000 files, so the interval grows with it (`poll_delay`): a controller
polling 10,000 policies' files every 0.1 s spent 0.36–0.41 of a core doing nothing else
(benchmarks/dataplane.py, 2026-12-04); at most a tenth of a core now.

A folder being written is read once the writing pauses: the worker waits until the newest
mtime of the files and folders is `settle` seconds old (at most `max_settle` after it first
saw the change), so that a writer putting 1,000 files there (`lab apply` of 1,000 policies)
costs one new version, not one per poll that caught it half way. Each version is a complete,
consistent folder either way; only the number of realizations changes.

`folder_version(path)` is the version the controller reports in /status for this source,
computed from exactly the bytes the realized state was parsed from (see its docstring).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdn_netpol.controller.sources.objects import NO_KIND, WANTED_KINDS, convert, is_wanted
from sdn_netpol.controller.store import Store, StoredObject
from sdn_netpol.controller.worker import Worker
from sdn_netpol.inputs.manifests import MANIFEST_SUFFIXES, ManifestError, decode_documents
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import ObjectKey, flatten

LOG = logging.getLogger(__name__)
RACY_SECONDS = 2.0  # an mtime this recent may hide a same-size rewrite in the same tick
FINE_RACY_SECONDS = 0.1  # the same where mtimes have sub-second digits (the kernel's coarse clock ticks ≤ 10 ms)
SETTLE_SECONDS = 0.05  # a folder changed this recently is being written: wait for the writer to pause
MAX_SETTLE_SECONDS = 1.0  # but never longer than this after the change was seen (a writer that never pauses)
_RACY_NS = int(RACY_SECONDS * 1e9)


def racy_ns(mtime_ns: int) -> int:
    """How long after `mtime_ns` a same-size rewrite could still carry the same mtime: two
    seconds for a whole-second mtime (a filesystem keeping seconds, or FAT's two), else twice
    the granularity its trailing zeros show, at least FINE_RACY_SECONDS."""
    if mtime_ns % 1_000_000_000 == 0:
        return _RACY_NS
    granularity = 1
    while mtime_ns % (granularity * 10) == 0:
        granularity *= 10
    return max(int(FINE_RACY_SECONDS * 1e9), 2 * granularity)


StatKey = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass(frozen=True)
class Listing:
    """One walk of the folder: every manifest file (sorted by relative POSIX path) with its
    stat key, and the newest mtime of those files and of the folders holding them."""

    files: tuple[tuple[str, str, StatKey], ...]  # (relative posix path, path, key)
    newest_ns: int
    folders: tuple[str, ...] = ()  # the folder and its sub-folders (a file: none)

    @property
    def signature(self) -> tuple[tuple[str, StatKey], ...]:
        return tuple((rel, key) for rel, _, key in self.files)


def scan(path: str | Path) -> Listing:
    """The files `manifest_files(path)` lists (a folder: every *.yaml, *.yml, *.json regular
    file, or symlink to one, at any depth, without descending into symlinked folders or
    unreadable ones; a file: itself), with one `scandir` per folder instead of pathlib."""
    root = os.fspath(path)
    files: list[tuple[str, str, StatKey]] = []
    newest = 0
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise ManifestError(f"{root}: no such file or directory") from None
    except OSError as exc:
        raise ManifestError(f"{root}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{root}: no such file or directory")
        return Listing(((os.path.basename(root), root, (st.st_mtime_ns, st.st_size, st.st_ino)),), st.st_mtime_ns)
    folders = [(root, "", st.st_mtime_ns)]
    walked = []
    while folders:
        folder, prefix, mtime = folders.pop()
        walked.append(folder)
        newest = max(newest, mtime)
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
        except PermissionError:
            continue
        except FileNotFoundError:  # removed while walking
            continue
        for entry in found:
            rel = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append((entry.path, rel + "/", entry.stat(follow_symlinks=False).st_mtime_ns))
                    continue
            except FileNotFoundError:
                continue
            if _suffix(entry.name) not in MANIFEST_SUFFIXES:
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:  # gone, or a dangling symlink
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EBADF):
                    continue  # what pathlib's is_file() takes for "not a file"
                raise ManifestError(f"{entry.path}: {exc.strerror or exc}") from exc
            if stat.S_ISREG(st.st_mode):
                files.append((rel, entry.path, (st.st_mtime_ns, st.st_size, st.st_ino)))
                newest = max(newest, st.st_mtime_ns)
    files.sort()
    return Listing(tuple(files), newest, tuple(walked))


def _suffix(name: str) -> str:
    """pathlib's `PurePath.suffix` of a file name ("..yaml" has one, ".yaml" none)."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def newest_folder_mtime(folders: tuple[str, ...]) -> int:
    """The newest mtime of these folders (a create, rename or delete in one changes it)."""
    newest = 0
    for folder in folders:
        try:
            newest = max(newest, os.stat(folder).st_mtime_ns)
        except OSError:
            continue
    return newest


@dataclass(frozen=True)
class FolderContents:
    files: tuple[tuple[str, bytes], ...]  # (relative posix path, content), sorted by path
    version: str


def read_folder(path: str | Path) -> FolderContents:
    """Every manifest file's bytes, and their version, from one read of each file."""
    files = []
    for rel, file, _ in scan(path).files:
        data = _read(file)
        if data is not None:
            files.append((rel, data))
    return FolderContents(tuple(files), _version(files))


def _read(file: str) -> bytes | None:
    """The file's bytes; None if it was deleted between listing and reading (it is gone)."""
    try:
        with open(file, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"{file}: {exc.strerror or exc}") from exc


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


#: A look at an unchanged folder takes at most this share of a core: the next one comes
#: after the poll interval or 1 / POLL_SHARE times the last look's duration, whichever is longer.
POLL_SHARE = 0.1


def poll_delay(poll_interval: float, scan_seconds: float) -> float:
    """Seconds until the next look at a folder whose last scan took `scan_seconds`."""
    return max(poll_interval, scan_seconds / POLL_SHARE)


@dataclass(frozen=True)
class _Read:
    key: StatKey
    data: bytes
    trusted: bool  # read racy_ns(mtime) or more after its mtime: a later change must change the key


class DirectorySource(Worker):
    """Polls a folder; every new version of its contents replaces the store's objects."""

    thread_name = "source-dir"

    def __init__(self, path: str | Path, store: Store, report: Callable[[str | None], None],
                 poll_interval: float = 0.1, settle: float = SETTLE_SECONDS,
                 max_settle: float = MAX_SETTLE_SECONDS) -> None:
        self.path = Path(path)
        self.store = store
        self.report = report
        self.poll_interval = poll_interval
        self.settle = settle
        self.max_settle = max_settle
        self._files: dict[str, ParsedFile] = {}
        self._reads: dict[str, _Read] = {}
        self._version: str | None = None
        self._signature: tuple[tuple[str, StatKey], ...] | None = None
        self._settling_since: float | None = None  # time.monotonic() the unsettled change was first seen
        self._folders: tuple[str, ...] = ()
        super().__init__()

    def run(self) -> None:
        while not self._stop.is_set():
            delay = self.poll_interval
            try:
                delay = self.step()
            except ManifestError as exc:
                LOG.error("source %s: %s (keeping the last state)", self.path, exc)
                self.report(str(exc))
                self._signature = None
            self._stop.wait(delay)

    def step(self) -> float:
        """One look at the folder (the worker's loop): read it if it changed and the writing
        has paused; returns the seconds until the next look. While a writer is at work, a
        look is a stat of the folders only (each file it puts there changes one)."""
        if self._settling_since is not None and self._folders:
            wait = self._wait(newest_folder_mtime(self._folders))
            if wait > 0:
                return wait
        started = time.monotonic()
        listing = scan(self.path)
        scanned = time.monotonic() - started
        self._folders = listing.folders
        wait = self._wait(listing.newest_ns) if listing.signature != self._signature else 0.0
        if wait > 0:
            return wait
        self._settling_since = None
        self._poll(listing)
        return poll_delay(self.poll_interval, scanned)

    def _wait(self, newest_ns: int) -> float:
        """Seconds to wait before reading a changed folder whose newest mtime is this (0: read it now)."""
        quiet = (time.time_ns() - newest_ns) / 1e9
        if quiet >= self.settle:
            return 0.0
        now = time.monotonic()
        if self._settling_since is None:
            self._settling_since = now
        left = self._settling_since + self.max_settle - now
        if left <= 0:
            return 0.0
        return max(0.001, min(self.settle - quiet, left, self.poll_interval))

    def poll(self) -> bool:
        """Read the folder if it may have changed; True if the store got a new version."""
        return self._poll(scan(self.path))

    def _poll(self, listing: Listing) -> bool:
        signature = listing.signature
        racy = any(not (r := self._reads.get(rel)) or r.key != key or not r.trusted for rel, _, key in listing.files)
        if signature == self._signature and not racy:
            return False
        contents = self._read(listing)
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

    def _read(self, listing: Listing) -> FolderContents:
        """The folder's bytes: a file whose stat key is unchanged and whose last read is
        trusted is not read again."""
        reads: dict[str, _Read] = {}
        files = []
        for rel, file, key in listing.files:
            known = self._reads.get(rel)
            if known is None or known.key != key or not known.trusted:
                read_at = time.time_ns()
                data = _read(file)
                if data is None:
                    continue
                known = _Read(key, data, read_at >= key[0] + racy_ns(key[0]))
            reads[rel] = known
            files.append((rel, known.data))
        self._reads = reads
        return FolderContents(tuple(files), _version(files))
