# The client's generated models type every field Optional; asserting on them is the point here.
# mypy: disable-error-code="union-attr"
"""Prove FakeKube looks like a kube-apiserver to the unchanged `kubernetes` client.

Several tests pin down *how the client surfaces* server behaviour (which exception, which
event), because that is exactly what the controller's list/watch loop has to handle.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException, ServiceException

from tests.fakekube import FakeKube

Event = dict[str, Any]
GUARD = (5, 5)  # (connect, read) client timeouts so a broken fake fails a test, not hangs it


def pod(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    """Pods need spec.containers: the client's pydantic models reject them otherwise."""
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def netpol(name: str, ns: str = "default") -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                  "ports": [{"protocol": "TCP", "port": 5432}]}]}}


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    """Every test also checks the server logged no handler errors and leaked no threads."""
    with FakeKube() as fk:
        yield fk
    assert fk.errors == []
    assert fk.open_watches() == 0
    assert not [t for t in threading.enumerate()
                if t.name == "fakekube" or "process_request_thread" in t.name]


@pytest.fixture
def core(fake: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(client.ApiClient(fake.client_configuration()))


def take(stream: Iterator[Event], count: int) -> list[Event]:
    """Read `count` events, then close the generator so the connection is released."""
    out: list[Event] = []
    try:
        for ev in stream:
            out.append(ev)
            if len(out) == count:
                break
    finally:
        stream.close()  # type: ignore[attr-defined]
    return out


def when_watching(fake: FakeKube, count: int, action: Callable[[], Any]) -> threading.Thread:
    """Run `action` in the background once `count` watches are open on the server."""

    def run() -> None:
        assert fake.wait_for_watches(count)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def raw(call: Callable[..., Any], **kwargs: Any) -> urllib3.BaseHTTPResponse:
    """With _preload_content=False the client hands back the urllib3 response (wire bytes)."""
    return cast(urllib3.BaseHTTPResponse, call(_preload_content=False, **kwargs))


def summary(events: list[Event]) -> list[tuple[str, str]]:
    return [(ev["type"], ev["raw_object"]["metadata"]["name"]) for ev in events]


def test_list_returns_applied_pods_with_server_metadata(fake: FakeKube,
                                                        core: client.CoreV1Api) -> None:
    stored = fake.apply(pod("a"))
    fake.apply(pod("b", ns="kube-system"))
    result = core.list_pod_for_all_namespaces()
    assert result.metadata.resource_version == fake.resource_version
    assert [(p.metadata.namespace, p.metadata.name) for p in result.items] == [
        ("default", "a"), ("kube-system", "b")]
    first = result.items[0].metadata
    assert first.resource_version == stored["metadata"]["resourceVersion"]
    assert first.uid == stored["metadata"]["uid"]
    assert first.creation_timestamp is not None


def test_replace_keeps_uid_and_bumps_resource_version(fake: FakeKube) -> None:
    first = fake.apply(pod("a"))
    second = fake.apply(pod("a", app="web"))
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def test_list_wire_format_omits_item_kind_like_real_server(fake: FakeKube,
                                                           core: client.CoreV1Api) -> None:
    fake.apply(pod("a"))
    resp = raw(core.list_pod_for_all_namespaces)
    body = json.loads(resp.data)
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"] == {"resourceVersion": fake.resource_version}
    assert "kind" not in body["items"][0] and "apiVersion" not in body["items"][0]


def test_watch_replays_history_in_order(fake: FakeKube, core: client.CoreV1Api) -> None:
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    fake.apply(pod("a"))
    fake.apply(pod("a", app="web"))
    gone = fake.delete("Pod", "default", "a")
    w = watch.Watch()
    events = list(w.stream(core.list_pod_for_all_namespaces, resource_version=rv,
                           timeout_seconds=1))
    assert summary(events) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert isinstance(events[0]["object"], client.V1Pod)
    assert events[1]["object"].metadata.labels == {"app": "web"}
    # DELETED carries the deletion's resourceVersion, so resuming from it skips nothing.
    assert events[2]["object"].metadata.resource_version == gone["metadata"]["resourceVersion"]
    assert w.resource_version == fake.resource_version


def test_watch_without_resource_version_starts_with_synthetic_added(
        fake: FakeKube, core: client.CoreV1Api) -> None:
    fake.apply(pod("b"))
    fake.apply(pod("a"))
    fake.delete("Pod", "default", "b")
    events = list(watch.Watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=1))
    assert summary(events) == [("ADDED", "a")]


def test_watch_streams_live_events_and_filters_by_namespace(
        fake: FakeKube, core: client.CoreV1Api) -> None:
    stream = watch.Watch().stream(core.list_namespaced_pod, "default",
                                  resource_version=fake.resource_version, _request_timeout=GUARD)

    def mutate() -> None:
        fake.apply(pod("x", ns="other"))
        fake.apply(pod("a"))
        fake.delete("Pod", "default", "a")

    thread = when_watching(fake, 1, mutate)
    assert summary(take(stream, 2)) == [("ADDED", "a"), ("DELETED", "a")]
    thread.join()


def test_watch_from_compacted_version_raises_410(fake: FakeKube, core: client.CoreV1Api) -> None:
    """Wire: HTTP 200 + one ERROR event (Status 410 Expired). Client: ApiException(410)
    from the generator, never an ERROR event. Without timeout_seconds the client silently
    retries once with the same resourceVersion before raising."""
    old = fake.resource_version
    fake.apply(pod("a"))
    fake.compact()
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=old,
                                  timeout_seconds=5))
    assert info.value.status == 410
    assert info.value.reason.startswith("Expired: too old resource version")
    assert fake.request_count("watch", "/api/v1/pods") == 1
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=old))
    assert info.value.status == 410
    assert fake.request_count("watch", "/api/v1/pods") == 3


def test_watch_410_on_the_wire_is_an_error_event(fake: FakeKube, core: client.CoreV1Api) -> None:
    old = fake.resource_version
    fake.apply(pod("a"))
    fake.compact()
    resp = raw(core.list_pod_for_all_namespaces, watch=True, resource_version=old)
    assert resp.status == 200
    lines = resp.data.decode().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    assert {k: event["object"][k] for k in ("kind", "code", "reason")} == {
        "kind": "Status", "code": 410, "reason": "Expired"}


def test_watch_at_compaction_point_still_works(fake: FakeKube, core: client.CoreV1Api) -> None:
    rv = str(fake.compact())
    fake.apply(pod("a"))
    events = list(watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=rv,
                                       timeout_seconds=1))
    assert summary(events) == [("ADDED", "a")]


def test_bookmarks_arrive_only_when_requested(fake: FakeKube, core: client.CoreV1Api) -> None:
    fake.apply(pod("a"))
    rv = fake.resource_version
    w = watch.Watch()
    plain = raw(core.list_pod_for_all_namespaces, watch=True, resource_version=rv,
                timeout_seconds=1)  # returns as soon as the stream is open
    marked = w.stream(core.list_pod_for_all_namespaces, resource_version=rv,
                      allow_watch_bookmarks=True, _request_timeout=GUARD)
    thread = when_watching(fake, 2, fake.send_bookmarks)
    bookmark = take(marked, 1)[0]
    thread.join()
    assert bookmark["type"] == "BOOKMARK"
    assert isinstance(bookmark["object"], dict)  # the client does not deserialise bookmarks
    assert bookmark["object"]["metadata"]["resourceVersion"] == rv
    assert w.resource_version == rv
    assert plain.data == b""  # no bookmark for the watch that did not ask


def test_drop_watches_raises_urllib3_protocol_error(fake: FakeKube,
                                                    core: client.CoreV1Api) -> None:
    """An abrupt cut is not retried by the client: urllib3 ProtocolError escapes the loop."""
    stream = watch.Watch().stream(core.list_pod_for_all_namespaces,
                                  resource_version=fake.resource_version, _request_timeout=GUARD)
    thread = when_watching(fake, 1, fake.drop_watches)
    with pytest.raises(urllib3.exceptions.ProtocolError, match="ended prematurely"):
        list(stream)
    thread.join()


def test_clean_stream_end_makes_client_rewatch_from_last_version(
        fake: FakeKube, core: client.CoreV1Api) -> None:
    """Without timeout_seconds, a cleanly ended stream is silently re-opened from the last
    resourceVersion seen (the apiserver's own request timeout looks like this)."""
    start = fake.resource_version
    stream = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=start,
                                  _request_timeout=GUARD)
    thread = when_watching(fake, 1, lambda: fake.apply(pod("a")))
    first = next(stream)
    thread.join()
    fake.drop_watches(clean=True)
    fake.apply(pod("b"))
    assert summary([first, *take(stream, 1)]) == [("ADDED", "a"), ("ADDED", "b")]
    watches = [r.query["resourceVersion"] for r in fake.request_log() if r.verb == "watch"]
    assert watches == [start, first["raw_object"]["metadata"]["resourceVersion"]]


def test_stall_trips_client_read_timeout(fake: FakeKube, core: client.CoreV1Api) -> None:
    """A stalled stream hangs forever unless the client sets a read timeout; then urllib3
    ReadTimeoutError escapes the loop."""
    fake.apply(pod("a"))
    fake.stall_watches(3)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        list(watch.Watch().stream(core.list_pod_for_all_namespaces, _request_timeout=(5, 0.3)))


def test_stall_delays_events_without_losing_them(fake: FakeKube,
                                                 core: client.CoreV1Api) -> None:
    rv = fake.resource_version
    fake.stall_watches(0.6)
    fake.apply(pod("a"))
    started = time.monotonic()
    events = take(watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=rv,
                                       _request_timeout=GUARD), 1)
    assert summary(events) == [("ADDED", "a")]
    assert time.monotonic() - started >= 0.4


def test_paging_returns_a_consistent_snapshot(fake: FakeKube, core: client.CoreV1Api) -> None:
    for name in "abcde":
        fake.apply(pod(name))
    first = core.list_pod_for_all_namespaces(limit=2)
    assert first.metadata.remaining_item_count == 3
    fake.delete("Pod", "default", "c")  # changes after page one must not leak into page two
    fake.apply(pod("d", app="new"))
    fake.apply(pod("f"))
    second = core.list_pod_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    third = core.list_pod_for_all_namespaces(limit=2, _continue=second.metadata._continue)
    assert [p.metadata.name for p in first.items + second.items + third.items] == list("abcde")
    assert second.items[1].metadata.labels == {}
    assert third.metadata._continue is None
    assert third.metadata.resource_version == first.metadata.resource_version


def test_continue_after_compaction_is_410(fake: FakeKube, core: client.CoreV1Api) -> None:
    for name in "abc":
        fake.apply(pod(name))
    token = core.list_pod_for_all_namespaces(limit=1).metadata._continue
    fake.apply(pod("z"))
    fake.compact()
    with pytest.raises(ApiException) as info:
        core.list_pod_for_all_namespaces(limit=1, _continue=token)
    assert info.value.status == 410


def test_network_policies_deserialise(fake: FakeKube) -> None:
    fake.apply(netpol("db"))
    api = client.NetworkingV1Api(client.ApiClient(fake.client_configuration()))
    (policy,) = api.list_network_policy_for_all_namespaces().items
    assert isinstance(policy, client.V1NetworkPolicy)
    assert policy.spec.pod_selector.match_labels == {"app": "db"}
    assert policy.spec.ingress and policy.spec.ingress[0].ports
    assert policy.spec.ingress[0].ports[0].port == 5432
    assert api.list_namespaced_network_policy("other").items == []
    assert api.read_namespaced_network_policy("db", "default").kind == "NetworkPolicy"


def test_namespaced_list_and_single_get(fake: FakeKube, core: client.CoreV1Api) -> None:
    fake.apply({"kind": "Namespace", "metadata": {"name": "web"}})
    fake.apply(pod("a", ns="web"))
    fake.apply(pod("b"))
    assert [p.metadata.name for p in core.list_namespaced_pod("web").items] == ["a"]
    assert core.read_namespaced_pod("a", "web").metadata.namespace == "web"
    assert core.read_namespace("web").metadata.name == "web"
    assert [n.metadata.name for n in core.list_namespace().items] == ["web"]
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod("a", "default")
    assert info.value.status == 404


def test_discovery_documents(fake: FakeKube) -> None:
    api_client = client.ApiClient(fake.client_configuration())
    assert client.VersionApi(api_client).get_code().major == "1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = client.ApisApi(api_client).get_api_versions().groups
    assert [g.name for g in groups] == ["networking.k8s.io", "policy.networking.k8s.io"]
    assert [v.version for v in groups[1].versions] == ["v1alpha1", "v1alpha2"]
    core_names = {r.name for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert core_names == {"namespaces", "pods", "nodes"}
    net = client.NetworkingV1Api(api_client).get_api_resources().resources
    assert [(r.name, r.namespaced) for r in net] == [("networkpolicies", True)]


def test_kubeconfig_is_loadable(fake: FakeKube, tmp_path: Path) -> None:
    path = fake.write_kubeconfig(tmp_path / "kubeconfig")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    assert cfg.host == fake.url
    fake.apply(pod("a"))
    api = client.CoreV1Api(client.ApiClient(cfg))
    assert [p.metadata.name for p in api.list_pod_for_all_namespaces().items] == ["a"]


def test_injected_failures_surface_as_api_exception_500(fake: FakeKube,
                                                        core: client.CoreV1Api) -> None:
    fake.fail_next_lists(2)
    for _ in range(2):
        with pytest.raises(ServiceException) as info:  # subclass of ApiException
            core.list_pod_for_all_namespaces()
        assert info.value.status == 500
    # watches are unaffected unless asked for
    assert list(watch.Watch().stream(core.list_pod_for_all_namespaces, timeout_seconds=1)) == []
    assert core.list_pod_for_all_namespaces().items == []
    assert fake.request_count("list", "/api/v1/pods") == 3


def test_injected_watch_failure_is_raised_by_stream(fake: FakeKube,
                                                    core: client.CoreV1Api) -> None:
    fake.fail_next_lists(1, 503, include_watches=True)
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version="1"))
    assert info.value.status == 503


def test_client_disconnect_frees_the_watch_quietly(fake: FakeKube,
                                                   core: client.CoreV1Api) -> None:
    stream = watch.Watch().stream(core.list_pod_for_all_namespaces, _request_timeout=GUARD)
    fake.apply(pod("a"))
    assert len(take(stream, 1)) == 1
    deadline = time.monotonic() + 5
    while fake.open_watches() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.open_watches() == 0


def test_stop_cuts_open_watches_and_refuses_new_requests() -> None:
    fk = FakeKube().start()
    core = client.CoreV1Api(client.ApiClient(fk.client_configuration()))
    stream = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version="1",
                                  _request_timeout=GUARD)
    thread = when_watching(fk, 1, fk.stop)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        list(stream)
    thread.join()
    with pytest.raises(urllib3.exceptions.MaxRetryError):  # connection refused, after retries
        core.list_pod_for_all_namespaces()
    assert fk.errors == []


ops = st.lists(st.tuples(st.sampled_from(["apply", "delete"]), st.sampled_from("abcd")),
               max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=ops, after=ops)
def test_list_then_watch_reconstructs_state(before: list[tuple[str, str]],
                                            after: list[tuple[str, str]]) -> None:
    """The list+watch contract: list at N, then apply the watch from N, equals a fresh list."""
    with FakeKube() as fk:
        core = client.CoreV1Api(client.ApiClient(fk.client_configuration()))
        run_ops(fk, before)
        listed = core.list_pod_for_all_namespaces(limit=2)
        state = {p.metadata.name: p.metadata.resource_version for p in listed.items}
        token = listed.metadata._continue
        run_ops(fk, after)
        while token:  # later pages must still show the state at the first page
            page = core.list_pod_for_all_namespaces(limit=2, _continue=token)
            state.update({p.metadata.name: p.metadata.resource_version for p in page.items})
            token = page.metadata._continue
        rv, final = listed.metadata.resource_version, fk.resource_version
        stream = watch.Watch().stream(core.list_pod_for_all_namespaces, resource_version=rv,
                                      _request_timeout=GUARD)
        while rv != final:
            ev = next(stream)
            meta = ev["object"].metadata
            rv = meta.resource_version
            if ev["type"] == "DELETED":
                del state[meta.name]
            else:
                state[meta.name] = rv
        stream.close()
        fresh = core.list_pod_for_all_namespaces()
        assert state == {p.metadata.name: p.metadata.resource_version for p in fresh.items}


def run_ops(fk: FakeKube, ops: list[tuple[str, str]]) -> None:
    for op, name in ops:
        if op == "apply":
            fk.apply(pod(name, gen=fk.resource_version))
        else:
            with contextlib.suppress(KeyError):  # deleting a missing pod is a no-op here
                fk.delete("Pod", "default", name)
