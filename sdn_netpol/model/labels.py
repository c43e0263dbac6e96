"""Labels and label selectors, with the API server's validation rules.

Labels are stored as a hashable mapping so the objects that carry them can be frozen
dataclasses and live in sets and caches.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from sdn_netpol.model.errors import FieldErrors

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


class Labels(Mapping[str, str]):
    """An immutable, hashable str→str mapping (label sets are compared and cached a lot)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(sorted((items or {}).items()))
        self._hash = hash(tuple(self._items.items()))

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._items == other._items
        return isinstance(other, Mapping) and self._items == dict(other)

    def __repr__(self) -> str:
        return f"Labels({self._items!r})"

    def with_label(self, key: str, value: str) -> Labels:
        return Labels({**self._items, key: value})


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry; values are a frozenset because their order is meaningless."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return key_in(labels, self.key, self.values)
        if self.operator == "NotIn":
            return not key_in(labels, self.key, self.values)
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


def key_in(labels: Mapping[str, str], key: str, values: frozenset[str]) -> bool:
    value = labels.get(key)
    return value is not None and value in values


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels AND matchExpressions; the empty selector matches everything."""

    match_labels: Labels = field(default_factory=Labels)
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    @property
    def keys(self) -> frozenset[str]:
        """The label keys this selector looks at: labels outside them never change its answer."""
        return frozenset(self.match_labels) | {req.key for req in self.match_expressions}

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions)

    def describe(self) -> str:
        """kubectl-like text, used in explanations."""
        if self.is_empty:
            return "<all>"
        parts = [f"{k}={v}" for k, v in self.match_labels.items()]
        for req in self.match_expressions:
            if req.operator in ("In", "NotIn"):
                values = ",".join(sorted(req.values))
                parts.append(f"{req.key} {req.operator.lower().replace('notin', 'notin')} ({values})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts)


def validate_label_key(key: object, path: str, errors: FieldErrors) -> bool:
    """A qualified name: optional DNS-subdomain prefix and '/', then a 63-char name."""
    if not isinstance(key, str):
        errors.add(path, f"label key must be a string, got {key!r}")
        return False
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        errors.add(path, f"{key!r}: prefix part must be non-empty")
        return False
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        errors.add(path, f"{key!r}: prefix part must be a lowercase RFC 1123 subdomain")
        return False
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        errors.add(
            path,
            f"{key!r}: name part must be 1-63 characters of alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        )
        return False
    return True


def validate_label_value(value: object, path: str, errors: FieldErrors) -> bool:
    if not isinstance(value, str):
        errors.add(path, f"label value must be a string, got {value!r}")
        return False
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        errors.add(
            path,
            f"{value!r}: a label value must be empty or 1-63 characters of alphanumerics, "
            "'-', '_' or '.', starting and ending with an alphanumeric",
        )
        return False
    return True


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS1123_SUBDOMAIN_RE.match(name))


def is_dns_label(name: str) -> bool:
    """RFC 1123 label (namespace names): at most 63 characters, no dots."""
    return len(name) <= 63 and "." not in name and bool(_DNS1123_SUBDOMAIN_RE.match(name))
