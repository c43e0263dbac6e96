"""Read manifests from files and folders (YAML multi-document or JSON) into documents.

The only I/O in front of the pure model: a folder is read in sorted file order so that the
"later objects replace earlier ones" rule is deterministic. Here, not in model/, because it
reads files; used by the CLI, the lab's store and the controller's folder source alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from sdn_netpol.model.errors import one_line
from sdn_netpol.model.parse import Document, ParseResult, parse_documents

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    """A path that cannot be read or decoded; names the file and the reason, on one line
    (a file name may hold a line break or an escape sequence: they are shown escaped)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 2000))


def manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    if path.is_file():
        return [path]
    raise ManifestError(f"{path}: no such file or directory")


def read_documents(path: Path) -> Iterator[Document]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # UTF-8, with or without a byte-order mark
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    yield from decode_documents(str(path), text)


def decode_documents(source: str, text: str) -> Iterator[Document]:
    """YAML (multi-document) or JSON: one value, a stream of values (as kubectl reads), or an array.

    Every decoding problem is a ManifestError of one line naming the source: invalid JSON or
    YAML (with the line and column), and nesting deeper than the parsers can recurse."""
    if source.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            values = _json_values(text)
        except json.JSONDecodeError as exc:
            if source.endswith(".json"):
                raise ManifestError(f"{source}: invalid JSON: {exc}") from exc
        except RecursionError:
            raise ManifestError(f"{source}: invalid JSON: {TOO_DEEP}") from None
        else:
            if len(values) == 1 and isinstance(values[0], list):
                for i, item in enumerate(values[0]):
                    yield Document(f"{source}[{i}]", item)
            else:
                for i, body in enumerate(values):
                    yield Document(f"{source} document {i + 1}" if len(values) > 1 else source, body)
            return
    bodies = load_yaml_all(source, text)
    for i, body in enumerate(bodies):
        if body is not None:
            yield Document(f"{source} document {i + 1}" if len(bodies) > 1 else source, body)


TOO_DEEP = "nested too deeply"


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where (line, column) and what, without the source excerpt
    PyYAML prints under it."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(str(part) for part in (exc.context, exc.problem) if part) or type(exc).__name__
        text = f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else what
    else:
        text = str(exc)
    return " ".join(text.split())


# libyaml's parser (PyYAML's CSafeLoader: the same constructor and resolver, the parser in C)
# reads manifests ~7x faster than the pure-Python one (1,000 policies: ~0.1 s instead of
# ~0.7 s). It is only trusted where the two agree: whatever it refuses, and anything nested
# deeper than manifests are (the pure-Python parser recurses and gives up far sooner than
# libyaml's limit of 1,000 levels), is read again by the pure-Python loader, so results and
# error messages stay exactly those of `yaml.safe_load_all`.
_C_LOADER: Any = getattr(yaml, "CSafeLoader", None)
C_MAX_DEPTH = 64


def load_yaml_all(source: str, text: str) -> list[Any]:
    """`yaml.safe_load_all`, every failure a one-line ManifestError naming `source`."""
    if _C_LOADER is not None:
        try:
            values = list(yaml.load_all(text, Loader=_C_LOADER))
        except Exception:  # the pure-Python loader says what is wrong, exactly as before
            pass
        else:
            if _depth_within(values, C_MAX_DEPTH):
                return values
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: invalid YAML: {yaml_problem(exc)}") from exc
    except RecursionError:
        raise ManifestError(f"{source}: invalid YAML: {TOO_DEEP}") from None


def _depth_within(values: list[Any], limit: int) -> bool:
    """No container nested deeper than `limit` (each container walked once: an alias, even
    a recursive one, costs nothing more; walked in document order, each is first met at its
    place in the text)."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(v, 1) for v in reversed(values)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list, tuple, set)) or id(value) in seen:
            continue
        if depth > limit:
            return False
        seen.add(id(value))
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
        stack.extend((item, depth + 1) for item in reversed(items))
    return True


def _json_values(text: str) -> list[object]:
    decoder = json.JSONDecoder()
    values: list[object] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return values
        value, position = decoder.raw_decode(text, position)
        values.append(value)


def read_paths(paths: Iterable[Path | str]) -> list[Document]:
    """Every document of every manifest file in these files/folders (ManifestError if unreadable)."""
    return [doc for path in paths for file in manifest_files(Path(path)) for doc in read_documents(file)]


def load_paths(paths: Iterable[Path | str]) -> ParseResult:
    return parse_documents(read_paths(paths))
