"""One raw manifest (a dict, as YAML/JSON/the API server gives it) → a store entry.

Both sources use this, so a Pod means the same whether it was read from a folder or
from a watch: the model's own validation (`parse_object`), plus Node objects, which the
model skips but the controller needs (see nodes.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdn_netpol.controller.nodes import NODE_KIND, parse_node
from sdn_netpol.controller.store import StoredObject
from sdn_netpol.model.cluster_objects import CLUSTER_KINDS
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import API_VERSIONS, KINDS, ObjectKey, parse_object

WANTED_KINDS = (*KINDS, NODE_KIND)
NO_KIND = ""  # store key kind of a document that names no kind (only a folder has those)


@dataclass(frozen=True)
class Converted:
    """`key` None: the body names no object (no usable metadata.name)."""

    key: ObjectKey | None
    obj: StoredObject | None
    errors: tuple[ValidationError, ...]


def raw_key(body: Mapping[str, Any]) -> ObjectKey | None:
    """The object a body is about, even when it fails validation (so the last valid
    version can be kept): (kind, namespace, name) as model.parse.object_key spells it."""
    kind = body.get("kind")
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(kind, str) or not isinstance(name, str) or not name:
        return None
    if kind in ("Namespace", NODE_KIND, *CLUSTER_KINDS):  # cluster-scoped
        return (kind, "", name)
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return (kind, namespace if isinstance(namespace, str) and namespace else "default", name)


def is_wanted(body: Any) -> bool:
    """A kind the controller uses, in the API version whose semantics it implements
    (a Calico `NetworkPolicy` is another kind of object and is skipped, as the model does)."""
    if not isinstance(body, dict) or body.get("kind") not in WANTED_KINDS:
        return False
    kind = body["kind"]
    expected = "v1" if kind == NODE_KIND else API_VERSIONS[kind]
    return body.get("apiVersion") in (None, expected)


def convert(body: Mapping[str, Any]) -> Converted:
    key = raw_key(body)
    if body.get("kind") == NODE_KIND:
        node, errors = parse_node(body)
        return Converted(key, node, tuple(errors))
    obj, errors = parse_object(body)
    return Converted(key, obj, tuple(errors))
