"""/status says, per policy, whether this node enforces its latest version (issue #12.5):
the store records the generation that brought each NetworkPolicy's latest version, and a
policy is realized once the realized generation reaches it, never while its latest
version is invalid (the last valid one is what is enforced then)."""

from __future__ import annotations

from sdn_netpol.controller.status import Realized, StatusBoard
from sdn_netpol.controller.store import Store
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.labels import LabelSelector
from sdn_netpol.model.objects import NetworkPolicy
from sdn_netpol.model.parse import object_key


def policy(name: str, types: frozenset[str] = frozenset({"Ingress"})) -> NetworkPolicy:
    return NetworkPolicy("x", name, LabelSelector(), types)  # type: ignore[arg-type]


def board(store: Store) -> StatusBoard:
    return StatusBoard("node1", "dir:/m", desired=lambda: store.generation, policies=store.policy_generations)


def realize(board_: StatusBoard, generation: int) -> None:
    board_.set_realized(Realized(generation, "v", 0.0, {}, {}, ()), 0)


def policies(board_: StatusBoard) -> dict[str, dict[str, object]]:
    return dict(board_.to_json()["nodes"]["node1"]["policies"])


def test_a_policy_is_realized_once_the_realized_generation_reaches_its_latest_version() -> None:
    store = Store()
    status = board(store)
    deny = policy("deny")
    store.put(object_key(deny), deny)
    assert policies(status) == {"x/deny": {"generation": 1, "invalid": False, "realized": False}}
    realize(status, store.generation)
    assert policies(status)["x/deny"]["realized"] is True
    store.put(object_key(deny), policy("deny", frozenset({"Ingress", "Egress"})))
    assert policies(status)["x/deny"] == {"generation": 2, "invalid": False, "realized": False}
    realize(status, store.generation)
    assert policies(status)["x/deny"]["realized"] is True


def test_an_unchanged_put_does_not_make_a_policy_unrealized() -> None:
    store = Store()
    status = board(store)
    deny = policy("deny")
    store.put(object_key(deny), deny)
    realize(status, store.generation)
    store.put(object_key(deny), policy("deny"))
    assert policies(status)["x/deny"]["realized"] is True


def test_an_invalid_latest_version_is_not_realized_and_a_deleted_policy_disappears() -> None:
    store = Store()
    status = board(store)
    deny = policy("deny")
    store.put(object_key(deny), deny)
    store.put(object_key(deny), None, [ValidationError("policy x/deny", "spec.podSelector", "bad")])
    realize(status, store.generation)
    assert policies(status)["x/deny"] == {"generation": 2, "invalid": True, "realized": False}
    store.delete(object_key(deny))
    assert policies(status) == {}


def test_a_relist_marks_only_the_policies_it_changed() -> None:
    store = Store()
    status = board(store)
    a, b = policy("a"), policy("b")
    store.replace(("NetworkPolicy",), {object_key(a): a, object_key(b): b}, {})
    realize(status, store.generation)
    store.replace(("NetworkPolicy",), {object_key(a): a, object_key(b): policy("b", frozenset({"Egress"}))}, {})
    assert {ref: v["realized"] for ref, v in policies(status).items()} == {"x/a": True, "x/b": False}
