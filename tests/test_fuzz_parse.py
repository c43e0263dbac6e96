"""Bad input never crashes the model: every malformed manifest yields errors, not exceptions.

Hypothesis mutates valid manifests (replacing any subtree with junk of any JSON type) and
also throws arbitrary JSON documents and text at the parser. Every error names the object
and the field path; a bad object never drops the valid ones around it. The strategies are
tests/strategies.py's (shared with the CLI, source and CNI fuzz tests in test_fuzz_inputs.py
and test_fuzz_cni.py).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sdn_netpol.inputs.manifests import ManifestError, decode_documents
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.parse import Document, ParseResult, object_key, parse_documents
from sdn_netpol.policy.matrix import build_matrix
from sdn_netpol.policy.state import ClusterState
from tests.strategies import VALID_MANIFESTS, deep_nesting, hostile_junk, junk, mutated_manifests

WHOLE_DOCUMENT = "a manifest must be an object"  # the one error about no field: the document itself


def well_formed(error: ValidationError) -> None:
    """Names the object (kind and name, or the document) and the field, on one line."""
    assert error.obj and error.obj.strip() == error.obj, error
    assert error.path or error.message == WHOLE_DOCUMENT, error
    assert "\n" not in str(error) and "\x1b" not in str(error), repr(str(error))


def _parse_all(bodies: list[Any]) -> ParseResult:
    result = parse_documents(Document(f"doc{i}", b) for i, b in enumerate(bodies))
    for error in result.errors:
        assert str(error).startswith(error.obj)
        well_formed(error)
    state = ClusterState.from_parse(result)
    build_matrix(state, "TCP", 80)
    return result


def _objects(result: ParseResult) -> dict[tuple[str, str, str], object]:
    return {object_key(o): o for o in (*result.namespaces, *result.pods, *result.policies)}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_manifests(), min_size=1, max_size=3))
def test_mutated_manifests_never_crash(bodies: list[dict[str, Any]]) -> None:
    _parse_all([*VALID_MANIFESTS, *bodies])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_manifests(hostile_junk), min_size=1, max_size=3), st.booleans())
@example(bodies=[{**VALID_MANIFESTS[1], "metadata": {"name": "a\x1b[2J\nb", "namespace": "x"}}], before=False)
@example(bodies=[{**VALID_MANIFESTS[2], "metadata": {"name": "p", "namespace": "\n"}}], before=True)
def test_a_bad_object_never_drops_the_others(bodies: list[dict[str, Any]], before: bool) -> None:
    """Mixed in before or after the valid manifests, broken ones change only their own
    objects: an invalid version of an object keeps its last valid one, and every object no
    broken document (validly) redefines is exactly what it was."""
    alone = _objects(_parse_all(list(VALID_MANIFESTS)))
    mixed = _objects(_parse_all([*bodies, *VALID_MANIFESTS] if before else [*VALID_MANIFESTS, *bodies]))
    redefined = {key for body in bodies for key in _objects(parse_documents([Document("b", body)]))}
    assert set(alone) <= set(mixed)
    for key, obj in alone.items():
        if key not in redefined or before:
            assert mixed[key] == obj, key


@settings(max_examples=200, deadline=None)
@given(st.lists(junk | hostile_junk, max_size=3))
def test_arbitrary_documents_never_crash(bodies: list[Any]) -> None:
    _parse_all(bodies)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
@example(deep_nesting(100_000).decode())
@example(deep_nesting(5_000, json_style=False).decode())
def test_arbitrary_text_is_an_error_or_documents(text: str) -> None:
    try:
        documents = list(decode_documents("fuzz.yaml", text))
    except ManifestError as exc:  # only the documented error type may escape, on one line
        assert "\n" not in str(exc), str(exc)
        return
    _parse_all([d.body for d in documents])
