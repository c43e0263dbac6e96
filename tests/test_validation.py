"""Bad input is rejected as the API server rejects it, naming the object and the field path;
what the API server accepts is accepted."""

from __future__ import annotations

from typing import Any

import pytest
from netaddr import IPNetwork

from sdn_netpol.model.labels import Labels, LabelSelector
from sdn_netpol.model.objects import IPBlock, NetworkPolicy, Peer, PolicyPort
from tests.builders import namespace, parse, pod

CIDR_HINT = "must be a valid CIDR (e.g. 10.0.0.0/16 or 2001:db8::/64)"
SVC_NAME_HINT = (
    "must be a valid IANA service name (at most 15 characters: lowercase letters, digits and '-', "
    "at least one letter, no leading, trailing or double '-')"
)
KEY_NAME_HINT = (
    "name part must be 1-63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
)
VALUE_HINT = (
    "a label value must be empty or 1-63 characters of alphanumerics, '-', '_' or '.', "
    "starting and ending with an alphanumeric"
)
PROTOCOLS_HINT = 'supported values: "TCP", "UDP", "SCTP"'


def policy(spec: str, name: str = "deny", namespace_name: str = "x") -> str:
    head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
    head += f"metadata: {{name: {name}, namespace: {namespace_name}}}\n"
    return head + "spec:\n" + "".join(f"  {line}\n" for line in spec.splitlines())


def errors_of(*parts: str | dict[str, Any]) -> list[str]:
    return [str(e) for e in parse(*parts).errors]


def from_peer(peer: str) -> str:
    return f"ingress:\n- from: [{peer}]"


def port_entry(entry: str) -> str:
    return f"ingress:\n- ports: [{entry}]"


P = "policy x/deny: "
PEER = P + "spec.ingress[0].from[0]"
PORT = P + "spec.ingress[0].ports[0]"

BAD_POLICIES = [
    # --- ipBlock.cidr
    ("cidr-not-an-address", from_peer("{ipBlock: {cidr: banana}}"), f"{PEER}.ipBlock.cidr: 'banana': {CIDR_HINT}"),
    ("cidr-without-prefix", from_peer("{ipBlock: {cidr: 10.0.0.1}}"), f"{PEER}.ipBlock.cidr: '10.0.0.1': {CIDR_HINT}"),
    ("cidr-prefix-too-long", from_peer("{ipBlock: {cidr: 10.0.0.0/33}}"),
     f"{PEER}.ipBlock.cidr: '10.0.0.0/33': {CIDR_HINT}"),
    ("cidr-ipv6-prefix-too-long", from_peer('{ipBlock: {cidr: "2001:db8::/129"}}'),
     f"{PEER}.ipBlock.cidr: '2001:db8::/129': {CIDR_HINT}"),
    ("cidr-three-octets", from_peer("{ipBlock: {cidr: 10.0.0/8}}"), f"{PEER}.ipBlock.cidr: '10.0.0/8': {CIDR_HINT}"),
    ("cidr-octet-too-big", from_peer("{ipBlock: {cidr: 10.0.0.256/8}}"),
     f"{PEER}.ipBlock.cidr: '10.0.0.256/8': {CIDR_HINT}"),
    ("cidr-missing", from_peer("{ipBlock: {}}"), f"{PEER}.ipBlock.cidr: Required value"),
    ("cidr-not-a-string", from_peer("{ipBlock: {cidr: 10}}"), f"{PEER}.ipBlock.cidr: 10: {CIDR_HINT}"),
    # --- ipBlock.except
    ("except-outside-cidr",
     "ingress:\n- from: [{podSelector: {}}, {ipBlock: {cidr: 172.17.0.0/16, except: [10.1.0.0/16]}}]",
     P + "spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/16 is not within 172.17.0.0/16"),
    ("except-equal-to-cidr", from_peer("{ipBlock: {cidr: 172.17.0.0/16, except: [172.17.0.0/16]}}"),
     f"{PEER}.ipBlock.except[0]: 172.17.0.0/16 is not strictly within 172.17.0.0/16 (it must be a smaller range)"),
    ("except-wider-than-cidr", from_peer("{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}"),
     f"{PEER}.ipBlock.except[0]: 10.0.0.0/8 is not within 10.0.0.0/16"),
    ("except-other-family", from_peer('{ipBlock: {cidr: 10.0.0.0/16, except: ["fd00::/64"]}}'),
     f"{PEER}.ipBlock.except[0]: fd00::/64: must be of the same IP family as cidr 10.0.0.0/16"),
    ("except-ipv6-outside", from_peer('{ipBlock: {cidr: "fd00::/64", except: ["fd01::/80"]}}'),
     f"{PEER}.ipBlock.except[0]: fd01::/80 is not within fd00::/64"),
    ("except-not-a-cidr", from_peer("{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0]}}"),
     f"{PEER}.ipBlock.except[0]: '10.0.1.0': {CIDR_HINT}"),
    # --- ports
    ("port-zero", port_entry("{port: 0}"), f"{PORT}.port: 0: must be between 1 and 65535, inclusive"),
    ("port-too-big", port_entry("{port: 65536}"), f"{PORT}.port: 65536: must be between 1 and 65535, inclusive"),
    ("port-negative", port_entry("{port: -1}"), f"{PORT}.port: -1: must be between 1 and 65535, inclusive"),
    ("port-name-uppercase", port_entry("{port: HTTP}"), f"{PORT}.port: 'HTTP': {SVC_NAME_HINT}"),
    ("port-name-too-long", port_entry("{port: abcdefghijklmnop}"),
     f"{PORT}.port: 'abcdefghijklmnop': {SVC_NAME_HINT}"),
    ("port-name-double-dash", port_entry("{port: a--b}"), f"{PORT}.port: 'a--b': {SVC_NAME_HINT}"),
    ("port-name-leading-dash", port_entry("{port: -http}"), f"{PORT}.port: '-http': {SVC_NAME_HINT}"),
    ("port-name-without-letter", port_entry('{port: "8-0"}'), f"{PORT}.port: '8-0': {SVC_NAME_HINT}"),
    ("port-number-quoted", port_entry('{port: "80"}'),
     f"{PORT}.port: '80': a numeric port must not be quoted as a string name"),
    ("port-float", port_entry("{port: 80.5}"), f"{PORT}.port: 80.5: must be a port number or a port name"),
    ("end-port-below-port", port_entry("{port: 80, endPort: 79}"),
     f"{PORT}.endPort: 79: must be greater than or equal to `port` (80)"),
    ("end-port-with-named-port", port_entry("{port: http, endPort: 90}"),
     f"{PORT}.endPort: may not be specified when `port` is non-numeric"),
    ("end-port-without-port", port_entry("{endPort: 90}"),
     f"{PORT}.endPort: may not be specified when `port` is not specified"),
    ("end-port-too-big", port_entry("{port: 80, endPort: 70000}"),
     f"{PORT}.endPort: 70000: must be between 1 and 65535, inclusive"),
    ("protocol-unknown", port_entry("{protocol: ICMP}"), f"{PORT}.protocol: 'ICMP': {PROTOCOLS_HINT}"),
    ("protocol-lowercase", port_entry("{protocol: tcp, port: 80}"), f"{PORT}.protocol: 'tcp': {PROTOCOLS_HINT}"),
    ("egress-port-path", "egress:\n- ports: [{protocol: ICMP}]",
     P + f"spec.egress[0].ports[0].protocol: 'ICMP': {PROTOCOLS_HINT}"),
    # --- peers
    ("peer-empty", from_peer("{}"), f"{PEER}: must specify a peer (podSelector, namespaceSelector or ipBlock)"),
    ("peer-null-selectors", from_peer("{podSelector: null}"),
     f"{PEER}: must specify a peer (podSelector, namespaceSelector or ipBlock)"),
    ("peer-ipblock-and-pods", from_peer("{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}"),
     f"{PEER}: may not specify both ipBlock and another peer"),
    ("peer-ipblock-and-namespaces", from_peer("{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}"),
     f"{PEER}: may not specify both ipBlock and another peer"),
    ("egress-peer-empty", "egress:\n- to: [{}]",
     P + "spec.egress[0].to[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)"),
    # --- selectors
    ("in-without-values", "podSelector: {matchExpressions: [{key: app, operator: In}]}",
     P + "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In'"),
    ("notin-with-empty-values", "podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}",
     P + "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'NotIn'"),
    ("exists-with-values", "podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}",
     P + "spec.podSelector.matchExpressions[0].values: may not be specified when `operator` is 'Exists'"),
    ("doesnotexist-with-values",
     "podSelector: {matchExpressions: [{key: app, operator: DoesNotExist, values: [a]}]}",
     P + "spec.podSelector.matchExpressions[0].values: may not be specified when `operator` is 'DoesNotExist'"),
    ("operator-unknown", "podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}",
     P + "spec.podSelector.matchExpressions[0].operator: 'Equals': not a valid selector operator "
     '("In", "NotIn", "Exists", "DoesNotExist")'),
    ("expression-key-invalid", "podSelector: {matchExpressions: [{key: 'a b', operator: Exists}]}",
     P + f"spec.podSelector.matchExpressions[0].key: 'a b': {KEY_NAME_HINT}"),
    ("expression-value-invalid", "podSelector: {matchExpressions: [{key: app, operator: In, values: ['-a']}]}",
     P + f"spec.podSelector.matchExpressions[0].values[0]: '-a': {VALUE_HINT}"),
    ("label-key-leading-dash", "podSelector: {matchLabels: {-app: a}}",
     P + f"spec.podSelector.matchLabels: '-app': {KEY_NAME_HINT}"),
    ("label-key-name-too-long", "podSelector: {matchLabels: {" + "a" * 64 + ": v}}",
     P + f"spec.podSelector.matchLabels: '{'a' * 64}': {KEY_NAME_HINT}"),
    ("label-key-prefix-uppercase", "podSelector: {matchLabels: {Example.com/app: a}}",
     P + "spec.podSelector.matchLabels: 'Example.com/app': prefix part must be a lowercase RFC 1123 subdomain"),
    ("label-key-empty-prefix", "podSelector: {matchLabels: {/app: a}}",
     P + "spec.podSelector.matchLabels: '/app': prefix part must be non-empty"),
    ("label-value-with-space", "podSelector: {matchLabels: {app: 'a b'}}",
     P + f"spec.podSelector.matchLabels.app: 'a b': {VALUE_HINT}"),
    ("label-value-too-long", "podSelector: {matchLabels: {app: " + "v" * 64 + "}}",
     P + f"spec.podSelector.matchLabels.app: '{'v' * 64}': {VALUE_HINT}"),
    ("label-value-not-a-string", "podSelector: {matchLabels: {app: 1}}",
     P + "spec.podSelector.matchLabels.app: label value must be a string, got 1"),
    ("namespace-selector-path", "egress:\n- to: [{namespaceSelector: {matchLabels: {team: '-x'}}}]",
     P + f"spec.egress[0].to[0].namespaceSelector.matchLabels.team: '-x': {VALUE_HINT}"),
    ("peer-pod-selector-path", "ingress:\n- from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]",
     P + "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: must be specified when `operator` is 'In'"),
    # --- unknown (misspelt) fields: strict, as kubectl's default field validation
    ("unknown-field-form", "ingress:\n- form: [{podSelector: {}}]", P + "spec.ingress[0].form: unknown field"),
    ("unknown-spec-field", "podselector: {matchLabels: {app: db}}", P + "spec.podselector: unknown field"),
    ("unknown-peer-field", from_peer("{podSelector: {}, namespace: {}}"), f"{PEER}.namespace: unknown field"),
    ("unknown-ipblock-field", from_peer("{ipBlock: {cidr: 10.0.0.0/8, exceptions: [10.1.0.0/16]}}"),
     f"{PEER}.ipBlock.exceptions: unknown field"),
    ("unknown-port-field", port_entry("{port: 80, end_port: 90}"), f"{PORT}.end_port: unknown field"),
    ("unknown-selector-field", "podSelector: {matchlabels: {app: db}}",
     P + "spec.podSelector.matchlabels: unknown field"),
    ("unknown-expression-field", "podSelector: {matchExpressions: [{key: a, operator: Exists, value: [b]}]}",
     P + "spec.podSelector.matchExpressions[0].value: unknown field"),
    # --- policyTypes and shape
    ("policy-type-lowercase", "policyTypes: [ingress]",
     P + "spec.policyTypes[0]: 'ingress': supported values: \"Ingress\", \"Egress\""),
    ("policy-types-three", "policyTypes: [Ingress, Egress, Ingress]",
     P + "spec.policyTypes: may not specify more than two policyTypes"),
    ("ingress-not-a-list", "ingress: {from: []}", P + "spec.ingress: must be a list"),
    ("from-not-a-list", "ingress:\n- from: {podSelector: {}}", P + "spec.ingress[0].from: must be a list"),
]


@pytest.mark.parametrize(("spec", "message"), [c[1:] for c in BAD_POLICIES], ids=[c[0] for c in BAD_POLICIES])
def test_bad_network_policy_is_rejected_naming_object_and_field(spec: str, message: str) -> None:
    result = parse(policy(spec))
    assert [str(e) for e in result.errors] == [message]
    assert result.policies == ()


def _pod_with(**changes: Any) -> dict[str, Any]:
    body = pod("x/web", "10.0.0.1", ports=[("http", 80)])
    for dotted, value in changes.items():
        target = body
        *path, last = dotted.split("__")
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    return body


BAD_OTHERS = [
    ("policy-name-missing", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\n",
     "policy x/<unnamed>: metadata.name: Required value"),
    ("policy-name-uppercase", policy("podSelector: {}", name="Deny"),
     "policy x/Deny: metadata.name: 'Deny': must be a lowercase RFC 1123 subdomain"),
    ("policy-namespace-with-dot", policy("podSelector: {}", namespace_name="a.b"),
     "policy a.b/deny: metadata.namespace: 'a.b': must be a lowercase RFC 1123 label"),
    ("namespace-name-with-dot", namespace("team.a"),
     "namespace team.a: metadata.name: 'team.a': a namespace name must be a lowercase RFC 1123 label"),
    ("namespace-label-key", namespace("a", **{"bad key": "v"}),
     f"namespace a: metadata.labels: 'bad key': {KEY_NAME_HINT}"),
    ("pod-label-value", pod("x/web", "10.0.0.1", {"app": "-web"}),
     f"pod x/web: metadata.labels.app: '-web': {VALUE_HINT}"),
    ("pod-ip-invalid", pod("x/web", "10.0.0.300"), "pod x/web: status.podIP: '10.0.0.300': must be a valid IP address"),
    ("pod-second-ip-invalid", pod("x/web", ["10.0.0.1", "fd00::g"]),
     "pod x/web: status.podIPs[1].ip: 'fd00::g': must be a valid IP address"),
    ("container-port-zero", _pod_with(spec__containers__0__ports__0__containerPort=0),
     "pod x/web: spec.containers[0].ports[0].containerPort: 0: must be between 1 and 65535, inclusive"),
    ("container-port-protocol", _pod_with(spec__containers__0__ports__0__protocol="ICMP"),
     f"pod x/web: spec.containers[0].ports[0].protocol: 'ICMP': {PROTOCOLS_HINT}"),
    ("container-port-name", _pod_with(spec__containers__0__ports__0__name="Web_Port"),
     f"pod x/web: spec.containers[0].ports[0].name: 'Web_Port': {SVC_NAME_HINT}"),
    ("container-ports-not-a-list", _pod_with(spec__containers__0__ports=1),
     "pod x/web: spec.containers[0].ports: must be a list"),
    ("pod-ips-not-a-list", _pod_with(status__podIPs="10.0.0.1"), "pod x/web: status.podIPs: must be a list"),
    ("container-port-name-duplicate", pod("x/web", "10.0.0.1", ports=[("http", 80), ("http", 81)]),
     "pod x/web: spec.containers[0].ports[1].name: Duplicate value: 'http'"),
]


@pytest.mark.parametrize(("manifest", "message"), [c[1:] for c in BAD_OTHERS], ids=[c[0] for c in BAD_OTHERS])
def test_bad_object_is_rejected_naming_object_and_field(manifest: str | dict[str, Any], message: str) -> None:
    result = parse(manifest)
    assert [str(e) for e in result.errors] == [message]
    assert result.namespaces == result.pods == result.policies == ()


def test_every_error_of_one_policy_is_reported_in_one_run() -> None:
    spec = (
        "ingress:\n"
        "- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}, namespaceSelector: {}}]\n"
        "  ports: [{port: 0}, {protocol: UDP, port: 53, endPort: 52}]\n"
        "policyTypes: [Sideways]"
    )
    assert errors_of(policy(spec)) == [
        PORT + ".port: 0: must be between 1 and 65535, inclusive",
        P + "spec.ingress[0].ports[1].endPort: 52: must be greater than or equal to `port` (53)",
        PEER + ".ipBlock.except[0]: 11.0.0.0/16 is not within 10.0.0.0/8",
        PEER + ": may not specify both ipBlock and another peer",
        P + "spec.policyTypes[0]: 'Sideways': supported values: \"Ingress\", \"Egress\"",
    ]


def test_errors_of_several_objects_are_all_reported_and_valid_objects_kept() -> None:
    result = parse(policy(port_entry("{port: 0}")), namespace("ok"), pod("x/web", "nope"))
    assert [str(e) for e in result.errors] == [
        PORT + ".port: 0: must be between 1 and 65535, inclusive",
        "pod x/web: status.podIP: 'nope': must be a valid IP address",
    ]
    assert [ns.name for ns in result.namespaces] == ["ok"]


# --- what the API server accepts ------------------------------------------------------------


def accepted(spec: str) -> NetworkPolicy:
    result = parse(policy(spec))
    assert [str(e) for e in result.errors] == []
    [parsed] = result.policies
    return parsed


def only_block(p: NetworkPolicy) -> IPBlock | None:
    return p.ingress[0].peers[0].ip_block


def test_cidr_with_host_bits_set_is_accepted_as_its_network() -> None:
    p = accepted(from_peer("{ipBlock: {cidr: 192.168.1.77/24, except: [192.168.1.77/28]}}"))
    assert only_block(p) == IPBlock(IPNetwork("192.168.1.0/24"), (IPNetwork("192.168.1.64/28"),))


def test_cidr_with_leading_zeros_is_read_as_decimal_like_the_legacy_parser() -> None:
    p = accepted(from_peer("{ipBlock: {cidr: 010.000.0.0/08, except: [10.0.1.0/24]}}"))
    assert only_block(p) == IPBlock(IPNetwork("10.0.0.0/8"), (IPNetwork("10.0.1.0/24"),))


def test_ipv6_cidr_with_ipv6_except_is_accepted() -> None:
    p = accepted(from_peer('{ipBlock: {cidr: "fd00::/64", except: ["fd00::/65", "fd00:0:0:0:8000::/120"]}}'))
    assert only_block(p) == IPBlock(IPNetwork("fd00::/64"), (IPNetwork("fd00::/65"), IPNetwork("fd00::8000:0:0:0/120")))


def test_whole_address_space_and_single_address_are_accepted() -> None:
    p = accepted("ingress:\n- from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.1/32]}}, {ipBlock: {cidr: '::/0'}}]")
    assert [peer.ip_block for peer in p.ingress[0].peers] == [
        IPBlock(IPNetwork("0.0.0.0/0"), (IPNetwork("10.0.0.1/32"),)),
        IPBlock(IPNetwork("::/0")),
    ]


def test_end_port_equal_to_port_is_accepted() -> None:
    p = accepted(port_entry("{port: 8080, endPort: 8080}"))
    assert p.ingress[0].ports == (PolicyPort("TCP", 8080, 8080),)


def test_port_bounds_and_a_fifteen_character_name_are_accepted() -> None:
    p = accepted("ingress:\n- ports: [{port: 1, endPort: 65535}, {port: abcdefghijklmno}, {port: h2c-1}]")
    assert p.ingress[0].ports == (PolicyPort("TCP", 1, 65535), PolicyPort("TCP", "abcdefghijklmno"),
                                  PolicyPort("TCP", "h2c-1"))


def test_empty_selectors_are_accepted_and_select_everything() -> None:
    p = accepted("podSelector: {}\ningress:\n- from: [{podSelector: {}}, {namespaceSelector: {}},"
                 " {podSelector: {}, namespaceSelector: {}}]")
    assert p.pod_selector == LabelSelector()
    assert p.ingress[0].peers == (
        Peer(pod_selector=LabelSelector()),
        Peer(namespace_selector=LabelSelector()),
        Peer(pod_selector=LabelSelector(), namespace_selector=LabelSelector()),
    )


def test_empty_from_list_is_accepted_and_means_all_sources() -> None:
    p = accepted("ingress:\n- from: []\n  ports: [{port: 80}]")
    assert p.ingress[0].peers == () and p.ingress[0].ports == (PolicyPort("TCP", 80),)


def test_duplicate_policy_types_are_accepted() -> None:
    assert accepted("policyTypes: [Egress, Egress]").policy_types == {"Egress"}


def test_empty_label_value_and_prefixed_key_are_accepted() -> None:
    p = accepted("podSelector: {matchLabels: {example.com/tier: '', app.kubernetes.io/name: db}}")
    assert p.pod_selector.match_labels == Labels({"example.com/tier": "", "app.kubernetes.io/name": "db"})


def test_in_and_notin_values_may_be_repeated() -> None:
    p = accepted("podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a, a, b]}]}")
    assert p.pod_selector.match_expressions[0].values == {"a", "b"}
