"""The objects a source has delivered, and the immutable snapshots the realizer compiles.

Sources (kube watch events, folder reloads) mutate the store; every mutation bumps the
generation and wakes the realizer, which takes one `Snapshot` per realization. An update
that fails validation never replaces the last valid version of its object (as an API
server that rejected the update would have kept it); it is listed in `invalid` until the
object becomes valid again or goes away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from sdn_netpol.controller.nodes import NODE_KIND, NodeInfo, place_pods
from sdn_netpol.model.cluster_objects import CLUSTER_KINDS, ClusterPolicy
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.objects import Namespace, NetworkPolicy, Pod, PodKey
from sdn_netpol.model.parse import ObjectKey
from sdn_netpol.policy.state import ClusterState

StoredObject = Namespace | Pod | NetworkPolicy | ClusterPolicy | NodeInfo


def node_key(name: str) -> ObjectKey:
    return (NODE_KIND, "", name)


@dataclass(frozen=True)
class Invalid:
    """An object whose latest version was rejected; `enforced` = a last valid version stays."""

    key: ObjectKey
    errors: tuple[ValidationError, ...]
    enforced: bool

    def to_json(self) -> dict[str, object]:
        kind, namespace, name = self.key
        return {
            "kind": kind, "namespace": namespace, "name": name, "last_valid_enforced": self.enforced,
            "errors": [{"object": e.obj, "path": e.path, "message": e.message, "text": str(e)}
                       for e in self.errors],
        }


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything one realization depends on from the source side."""

    generation: int
    objects: Mapping[ObjectKey, StoredObject]
    invalid: tuple[Invalid, ...]
    source_version: str
    synced: bool
    changed_at: float  # time.monotonic() of the mutation that made this generation
    # An earlier snapshot's state, and the keys of every object changed since: this state is
    # that one patched (O(change)) unless a Namespace or Node changed (then built in full).
    base: tuple[ClusterState, frozenset[ObjectKey]] | None = None

    @cached_property
    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(sorted(o for o in self.objects.values() if isinstance(o, NodeInfo)))

    @cached_property
    def state(self) -> ClusterState:
        """Pods that name no node are placed by the nodes' pod CIDRs (see nodes.place_pods)."""
        base, self.__dict__["base"] = self.base, None  # keep no earlier state alive once this one exists
        if base is not None and all(key[0] in _PATCHABLE for key in base[1]):
            return self._patched_state(*base)
        values = self.objects.values()
        return ClusterState.build(
            (o for o in values if isinstance(o, Namespace)),
            place_pods((o for o in values if isinstance(o, Pod)), self.nodes),
            (o for o in values if isinstance(o, NetworkPolicy)),
            self.generation,
            (o for o in values if isinstance(o, ClusterPolicy)),
        )


    def _patched_state(self, base: ClusterState, touched: frozenset[ObjectKey]) -> ClusterState:
        pods: dict[PodKey, Pod | None] = {}
        policies: dict[tuple[str, str], NetworkPolicy | None] = {}
        cluster: list[ClusterPolicy] | None = None  # all of them again when one changed (they are few)
        for kind, namespace, name in touched:
            found = self.objects.get((kind, namespace, name))
            if kind in CLUSTER_KINDS:
                if cluster is None:
                    cluster = [o for o in self.objects.values() if isinstance(o, ClusterPolicy)]
            elif kind == "Pod":
                pods[found.key if isinstance(found, Pod) else PodKey(namespace, name)] = found \
                    if isinstance(found, Pod) else None
            else:
                policies[(namespace, name)] = found if isinstance(found, NetworkPolicy) else None
        placed = place_pods([p for p in pods.values() if p is not None], self.nodes)
        pods.update((pod.key, pod) for pod in placed)
        declared = {ns for _, ns, _ in touched if ("Namespace", "", ns) in self.objects}
        return base.with_changes(pods, policies, declared, self.generation, cluster)


_PATCHABLE = frozenset({"Pod", "NetworkPolicy", *CLUSTER_KINDS})
_MAX_PATCH = 512  # changed objects beyond which a snapshot's state is built, not patched


@dataclass
class Store:
    """Thread-safe; `on_change` is called (outside the lock) after every mutation."""

    on_change: Callable[[], None] = lambda: None
    _objects: dict[ObjectKey, StoredObject] = field(default_factory=dict)
    _invalid: dict[ObjectKey, tuple[ValidationError, ...]] = field(default_factory=dict)
    _generation: int = 0
    _version: str = ""
    _synced: bool = False
    _changed_at: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _snapshot: Snapshot | None = None
    _last: Snapshot | None = None  # the newest snapshot taken (the base of the next one)
    _touched: set[ObjectKey] | None = field(default_factory=set)  # keys changed since; None: a relist
    # per NetworkPolicy: the generation that brought its latest version (or its rejection)
    _policy_changed: dict[ObjectKey, int] = field(default_factory=dict)

    def put(self, key: ObjectKey, obj: StoredObject | None, errors: Iterable[ValidationError] = (),
            version: str | None = None) -> None:
        """One object's new version (a watch ADDED/MODIFIED); None = rejected, keep the old."""
        with self._lock:
            if obj is not None:
                if self._objects.get(key) != obj:  # a Node status update must not force a full build
                    self._touch(key)
                    self._policy_change(key)
                self._objects[key] = obj
                self._invalid.pop(key, None)
            else:
                self._invalid[key] = tuple(errors)
                self._policy_change(key)
            self._bump(version)
        self.on_change()

    def delete(self, key: ObjectKey, version: str | None = None) -> None:
        with self._lock:
            if self._objects.pop(key, None) is not None:
                self._touch(key)
            self._invalid.pop(key, None)
            self._policy_changed.pop(key, None)
            self._bump(version)
        self.on_change()

    def replace(self, kinds: Iterable[str], objects: Mapping[ObjectKey, StoredObject],
                invalid: Mapping[ObjectKey, Iterable[ValidationError]], version: str | None = None,
                synced: bool | None = None) -> None:
        """Everything of `kinds` is now `objects` (a relist, a folder reload). A rejected key
        keeps its previous valid version when the new set has none. Only the objects that
        differ count as changed: the next snapshot's state is patched from the last one
        (O(change), see `Snapshot.state`) unless more than `_MAX_PATCH` differ."""
        wanted = set(kinds)
        with self._lock:
            old = {k: v for k, v in self._objects.items() if k[0] in wanted}
            for key in set(objects) | set(invalid) | set(old):
                rejected = tuple(invalid[key]) if key in invalid else None
                newly_rejected = rejected is not None and self._invalid.get(key) != rejected
                if newly_rejected or (rejected is None and old.get(key) != objects.get(key)):
                    self._policy_change(key)
                if key not in objects and rejected is None:
                    self._policy_changed.pop(key, None)
            for key in old:
                del self._objects[key]
            self._objects.update(objects)
            for key in invalid:
                if key not in objects and key in old:
                    self._objects[key] = old[key]
            self._invalid = {k: v for k, v in self._invalid.items() if k[0] not in wanted}
            self._invalid.update({k: tuple(v) for k, v in invalid.items()})
            if synced is not None:
                self._synced = synced
            changed = [k for k in set(old) | set(objects)
                       if (now := self._objects.get(k)) is not (was := old.get(k)) and now != was]
            if len(changed) > _MAX_PATCH:
                self._touched = None
            else:
                for key in changed:
                    self._touch(key)
            self._bump(version)
        self.on_change()

    def set_version(self, version: str) -> None:
        """A newer source version with no object change (a bookmark)."""
        with self._lock:
            if version == self._version:
                return
            self._bump(version)
        self.on_change()

    def mark_synced(self) -> None:
        with self._lock:
            if self._synced:
                return
            self._synced = True
            self._bump(None)
        self.on_change()

    def _policy_change(self, key: ObjectKey) -> None:
        if key[0] == "NetworkPolicy":
            self._policy_changed[key] = self._generation + 1  # the generation _bump is about to make

    def policy_generations(self) -> dict[str, tuple[int, bool]]:
        """Per policy `NS/NAME`: (the generation of its latest version, whether that version
        is invalid and so not the one enforced)."""
        with self._lock:
            return {f"{k[1]}/{k[2]}": (g, k in self._invalid) for k, g in sorted(self._policy_changed.items())}

    def _touch(self, key: ObjectKey) -> None:
        if self._touched is not None:
            self._touched.add(key)

    def _bump(self, version: str | None) -> None:
        self._generation += 1
        self._changed_at = time.monotonic()
        if version is not None:
            self._version = version
        self._snapshot = None

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    def snapshot(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None:
                invalid = tuple(
                    Invalid(k, v, k in self._objects) for k, v in sorted(self._invalid.items()))
                self._snapshot = Snapshot(self._generation, dict(self._objects), invalid, self._version,
                                          self._synced, self._changed_at, self._base())
                nodes = self._unchanged_nodes()
                if nodes is not None:  # finding them walks every object: ~8 ms at 55k
                    self._snapshot.__dict__["nodes"] = nodes
                self._last, self._touched = self._snapshot, set()
            return self._snapshot

    def _unchanged_nodes(self) -> tuple[NodeInfo, ...] | None:
        """The last snapshot's Node objects, if it has found them and none changed since."""
        last = self._last
        if self._touched is None or last is None or "nodes" not in last.__dict__:
            return None
        if any(key[0] == NODE_KIND for key in self._touched):
            return None
        return last.nodes  # type: ignore[no-any-return]

    def _base(self) -> tuple[ClusterState, frozenset[ObjectKey]] | None:
        """The newest computed state and what changed since (never a chain of snapshots:
        a snapshot holds at most one earlier state)."""
        last = self._last
        if self._touched is None or last is None:
            return None
        if "state" in last.__dict__:
            return last.state, frozenset(self._touched)
        if last.base is not None and len(last.base[1]) + len(self._touched) <= _MAX_PATCH:
            return last.base[0], last.base[1] | self._touched
        return None  # nothing computed for long: patching would cost more than building
