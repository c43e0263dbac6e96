"""The `sdn-netpol.io/audit` Namespace annotation: parsed, validated, kept in ClusterState."""

from __future__ import annotations

from typing import Any

import pytest

from tests.builders import build, namespace, parse


def audited(name: str, mode: Any) -> dict[str, Any]:
    body = namespace(name)
    body["metadata"]["annotations"] = {"sdn-netpol.io/audit": mode}
    return body


@pytest.mark.parametrize("mode", ["deny", "allow", "all"])
def test_the_audit_annotation_sets_the_namespace_mode(mode: str) -> None:
    result = parse(audited("x", mode))
    assert not result.errors
    assert result.namespaces[0].audit == mode


def test_a_namespace_without_the_annotation_is_not_audited() -> None:
    assert parse(namespace("x")).namespaces[0].audit is None


@pytest.mark.parametrize("value", ["Deny", "", "none", 1, True, None])
def test_another_audit_value_is_an_error_naming_the_object_and_field(value: Any) -> None:
    result = parse(audited("x", value))
    assert [str(e) for e in result.errors] == [
        f'namespace x: metadata.annotations["sdn-netpol.io/audit"]: {value!r}: must be one of deny, allow, all']
    assert result.namespaces == ()


def test_a_rejected_audit_update_keeps_the_last_valid_version() -> None:
    result = parse(audited("x", "all"), audited("x", "everything"))
    assert len(result.errors) == 1
    assert [ns.audit for ns in result.namespaces] == ["all"]


def test_the_cluster_state_keeps_the_audit_mode() -> None:
    s = build(audited("x", "all"), namespace("y"), {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "a", "namespace": "x"}, "spec": {"containers": []}})
    assert s.namespace("x").audit == "all"
    assert set(s.audited_namespaces) == {"x"}
