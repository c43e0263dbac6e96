"""Bad input never crashes the model: every malformed manifest yields errors, not exceptions.

Hypothesis mutates valid manifests (replacing any subtree with junk of any JSON type) and
also throws arbitrary JSON documents at the parser.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdn_netpol.inputs.manifests import decode_documents
from sdn_netpol.model.parse import Document, parse_documents
from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["TCP", "In", "10.0.0.0/8", "Ingress", "a/b", "-", "", "0"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=8,
)

VALID: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}},
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
     "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
         {"containerPort": 80, "name": "http", "protocol": "TCP"}]}]},
     "status": {"podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}], "phase": "Running"}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "p", "namespace": "x"},
     "spec": {"podSelector": {"matchLabels": {"pod": "a"},
                              "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
              "policyTypes": ["Ingress", "Egress"],
              "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}],
                           "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}, {"port": "http"}]}],
              "egress": [{"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP"}]}]}},
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(junk)
    return doc


def _parse_all(bodies: list[Any]) -> None:
    result = parse_documents(Document(f"doc{i}", b) for i, b in enumerate(bodies))
    for error in result.errors:
        assert str(error).startswith(error.obj)
    state = ClusterState.from_parse(result)
    build_matrix(state, "TCP", 80)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=3))
def test_mutated_manifests_never_crash(bodies: list[dict[str, Any]]) -> None:
    _parse_all([*VALID, *bodies])


@settings(max_examples=200, deadline=None)
@given(st.lists(junk, max_size=3))
def test_arbitrary_documents_never_crash(bodies: list[Any]) -> None:
    _parse_all(bodies)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_is_an_error_or_documents(text: str) -> None:
    try:
        documents = list(decode_documents("fuzz.yaml", text))
    except Exception as exc:  # only the documented error type may escape
        assert type(exc).__name__ == "ManifestError", repr(exc)
        return
    _parse_all([d.body for d in documents])
