"""The controller's sources and store with the admin-policy kinds (issue 18): the kube source
lists and watches the CRDs when they are installed and syncs without them when they are not;
the dir source reads them from the folder; an invalid version never replaces the last valid
one. Against the wire-level fake API server, without a switch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from netaddr import IPAddress

from sdn_netpol.controller.config import KubeOptions
from sdn_netpol.controller.metrics import Metrics
from sdn_netpol.controller.sources.directory import DirectorySource
from sdn_netpol.controller.sources.events import event_body
from sdn_netpol.controller.sources.kube import KubeSource
from sdn_netpol.controller.store import Store
from sdn_netpol.model.errors import ValidationError
from sdn_netpol.model.labels import Labels
from sdn_netpol.model.objects import Pod
from sdn_netpol.model.parse import Document, object_key, parse_documents
from sdn_netpol.policy.state import ClusterState
from tests.fakekube import RESOURCES, FakeKube

CNP = "policy.networking.k8s.io/v1alpha2"


def cnp(name: str, priority: Any = 10, action: str = "Deny") -> dict[str, Any]:
    return {"apiVersion": CNP, "kind": "ClusterNetworkPolicy", "metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
                     "egress": [{"name": "r", "action": action,
                                 "to": [{"networks": ["169.254.169.254/32"]}]}]}}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def admin_refs(store: Store) -> list[str]:
    return [p.ref for p in store.snapshot().state.cluster_policies]


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Callable[[FakeKube], tuple[Store, KubeSource]]]:
    started: list[KubeSource] = []

    def start(fake: FakeKube) -> tuple[Store, KubeSource]:
        store = Store()
        options = KubeOptions(kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")), read_timeout=5.0,
                              crd_recheck=0.2)
        src = KubeSource(store, lambda _m: None, Metrics(), options)
        src.start()
        started.append(src)
        return store, src

    yield start
    for src in started:
        src.stop()


def test_kube_source_watches_the_admin_policy_crds_when_installed(source: Any) -> None:
    with FakeKube() as fake:
        fake.apply(cnp("deny-metadata"))
        store, _ = source(fake)
        wait_for(lambda: store.snapshot().synced, "the first sync")
        assert admin_refs(store) == ["ClusterNetworkPolicy/deny-metadata"]
        fake.apply({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
                    "metadata": {"name": "default"},
                    "spec": {"subject": {"namespaces": {}},
                             "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}})
        wait_for(lambda: len(admin_refs(store)) == 2, "the watched BANP")
        assert admin_refs(store) == ["ClusterNetworkPolicy/deny-metadata", "BaselineAdminNetworkPolicy/default"]


def test_an_invalid_admin_policy_version_keeps_the_last_valid_one_enforced(source: Any) -> None:
    with FakeKube() as fake:
        fake.apply(cnp("deny-metadata"))
        store, _ = source(fake)
        wait_for(lambda: store.snapshot().synced, "the first sync")
        fake.apply(cnp("deny-metadata", priority=5000))  # out of range: the API server's schema would refuse it
        wait_for(lambda: bool(store.snapshot().invalid), "the rejected version")
        invalid = store.snapshot().invalid[0]
        assert invalid.key == ("ClusterNetworkPolicy", "", "deny-metadata") and invalid.enforced
        assert "spec.priority" in str(invalid.errors[0])
        [kept] = store.snapshot().state.cluster_policies
        assert kept.priority == 10 and kept.egress[0].action == "Deny"
        fake.delete("ClusterNetworkPolicy", None, "deny-metadata")
        wait_for(lambda: admin_refs(store) == [], "the deletion")


def test_kube_source_syncs_without_the_crds_and_finds_them_later(source: Any) -> None:
    with FakeKube(crds=False) as fake:
        store, _ = source(fake)
        wait_for(lambda: store.snapshot().synced, "a sync without the CRDs")
        assert admin_refs(store) == []
        assert store.snapshot().source_version != ""
        fake.served = RESOURCES  # the CRDs installed
        fake.apply(cnp("late"))
        wait_for(lambda: admin_refs(store) == ["ClusterNetworkPolicy/late"], "the CRD installed later")


def test_dir_source_reads_admin_policies_and_keeps_the_last_valid_version(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "admin.yaml").write_text(yaml.safe_dump(cnp("deny-metadata")))
    store = Store()
    source = DirectorySource(folder, store, lambda _m: None)
    assert source.poll()
    assert admin_refs(store) == ["ClusterNetworkPolicy/deny-metadata"]
    time.sleep(0.01)
    (folder / "admin.yaml").write_text(yaml.safe_dump(cnp("deny-metadata", action="Allow")))  # v1alpha2 says Accept
    source.poll()
    snapshot = store.snapshot()
    assert [str(e) for i in snapshot.invalid for e in i.errors] == [
        "ClusterNetworkPolicy/deny-metadata: spec.egress[0].action: 'Allow': supported values: "
        '"Accept", "Deny", "Pass"']
    assert snapshot.state.cluster_policies[0].egress[0].action == "Deny"
    assert isinstance(snapshot.state, ClusterState)


def test_an_invalid_admin_policy_gets_an_event_in_default_naming_it() -> None:
    body = {**cnp("deny-metadata", priority=5000), "metadata": {"name": "deny-metadata", "uid": "u1",
                                                                "resourceVersion": "7"}}
    errors = (ValidationError("ClusterNetworkPolicy/deny-metadata", "spec.priority", "5000: out of range"),)
    event = event_body(body, errors, "node-1", "2026-12-04T00:00:00Z")
    assert event["metadata"]["namespace"] == "default"
    assert event["involvedObject"] == {"apiVersion": CNP, "kind": "ClusterNetworkPolicy", "name": "deny-metadata",
                                       "uid": "u1", "resourceVersion": "7"}
    assert event["message"] == "not enforced (the last valid version stays): spec.priority: 5000: out of range"


def test_every_node_names_the_event_of_one_invalid_version_alike() -> None:
    """So the API server keeps one Event per invalid version (the others get AlreadyExists)."""
    body = {**cnp("deny-metadata", priority=5000), "metadata": {"name": "deny-metadata", "uid": "u1",
                                                                "resourceVersion": "7"}}
    errors = (ValidationError("ClusterNetworkPolicy/deny-metadata", "spec.priority", "5000: out of range"),)
    names = {event_body(body, errors, node, "2026-12-04T00:00:00Z")["metadata"]["name"] for node in ("n1", "n2")}
    newer = {**body, "metadata": {**body["metadata"], "resourceVersion": "8"}}
    assert len(names) == 1 and next(iter(names)).startswith("deny-metadata.")
    assert event_body(newer, errors, "n1", "2026-12-04T00:00:00Z")["metadata"]["name"] not in names
    long = {**body, "metadata": {**body["metadata"], "name": "p" * 253}}
    assert len(event_body(long, errors, "n1", "2026-12-04T00:00:00Z")["metadata"]["name"]) == 253


def test_a_cluster_policy_change_patches_the_snapshot_and_equals_a_full_build() -> None:
    store = Store()
    pod = Pod("x", "a", Labels({"app": "a"}), (IPAddress("10.244.1.2"),), "node-1")
    store.replace(("Pod",), {object_key(pod): pod}, {}, "1", synced=True)
    first = store.snapshot().state
    [policy] = parse_documents([Document("d", cnp("deny-metadata"))]).cluster_policies
    store.put(object_key(policy), policy)
    patched = store.snapshot().state
    assert patched.patched_from(first) is not None  # patched, not built again over every pod
    assert patched.cluster_policies == (policy,)
    assert patched == ClusterState.build(first.namespaces, first.pods, first.policies, 0, (policy,))
    store.delete(object_key(policy))
    assert store.snapshot().state.cluster_policies == ()
