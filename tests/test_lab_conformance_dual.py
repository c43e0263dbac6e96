"""The conformance run on a dual-stack lab (`lab up --ip-family dual`, issue 15): pods with an
IPv4 and an IPv6 address (IPv4 first), and every matrix measured in both families against the
engine's matrix of that family (tests/family_fixtures.FamilyCluster). The ipBlocks stay in
IPv4 terms, so the IPv6 matrices also show that an IPv4 ipBlock admits no IPv6 connection.

`make test` runs a representative subset (~1.5 min): the lab itself, no policy on every
protocol, default deny, a namespace-and-pod peer, ipBlock with except, named ports, SCTP,
forwarding and MTU, spoofing, a pod before its flows, controller restarts under streams of
both families, a withdrawn allow, a model pod with both status.podIPs. Every case of
tests/test_lab_conformance.py, as on the IPv4 and IPv6 labs: `SDN_NETPOL_CONFORMANCE_FULL=1`
(scripts/conformance-families.sh).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from sdn_netpol.lab.lab import Lab
from tests.family_fixtures import family_lab

if os.environ.get("SDN_NETPOL_CONFORMANCE_FULL"):
    from tests.test_lab_conformance import *  # noqa: F403  (the cases: collected here, with this module's lab)
else:
    from tests.test_lab_conformance import (  # noqa: F401  (collected here, with this module's lab)
        cluster,
        links_before,
        test_a_model_pod_with_status_pod_ips_lands_where_they_are,
        test_a_pod_address_of_a_family_the_lab_lacks_is_refused,
        test_controller_restart_does_not_break_a_long_tcp_stream,
        test_default_deny_ingress,
        test_forwarding_decrements_ttl_and_keeps_mtu_1450_across_the_tunnel,
        test_ip_block_with_except,
        test_named_port,
        test_namespace_and_pod_selector_in_one_peer_is_and,
        test_new_pod_has_no_connectivity_before_its_flows,
        test_no_policy_everything_connects_on_every_protocol,
        test_pods_spread_over_every_node_with_cni_addresses,
        test_removing_the_allow_cuts_an_established_connection,
        test_sctp_rule,
        test_spoofed_source_is_dropped,
        test_the_cli_probes_each_family_and_says_which,
        test_zz_down_leaves_nothing,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, links_before: set[str]) -> Iterator[Lab]:
    with family_lab(tmp_path_factory.mktemp("labdual"), "dual") as made:
        yield made

