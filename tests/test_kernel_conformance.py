"""The conformance cases on the kernel datapath, in full (issue 16, point 3): the matrix cases
of tests/test_lab_conformance.py, collected here with a kernel lab of this module's own
(2 qemu VM nodes, `VmLab`: system OVS on the guest kernel, kernel conntrack, kernel VXLAN;
docs/lab.md, "Kernel datapath"), driven through `tests/kernel_fixtures.KernelCluster`. Every
matrix a case probes (TCP, UDP, SCTP) is measured with real packets inside the VMs and must
equal the engine's; a `lab verify` of every VM's megaflows follows each.

Only with `SDN_NETPOL_CONFORMANCE_FULL=1` (`scripts/conformance-kernel.sh`, ~10 min):
`make test` runs the short version, tests/test_kernel_datapath.py.

Not collected, because a kernel lab does not offer what they need:
- test_pods_spread_over_every_node_with_cni_addresses: the netdev lab's state file, three
  nodes and their manifests (the kernel lab's placement: test_kernel_datapath);
- test_forwarding_decrements_ttl_and_keeps_mtu_1450_across_the_tunnel, test_spoofed_source_is_dropped,
  test_removing_the_allow_cuts_an_established_connection,
  test_controller_restart_does_not_break_a_long_tcp_stream: they open sockets, sniff and
  send frames in the pods' namespaces from the test's process, and those namespaces are in
  the VMs (spoofing and the revoked connection run in the VMs in test_kernel_datapath); the
  last also restarts a controller, which `VmLab` does not;
- test_new_pod_has_no_connectivity_before_its_flows, test_a_model_pod_with_status_pod_ips_lands_where_they_are:
  pods created after `up` (the kernel lab's pods come from the model at `up`; no
  `status.podIP` placement);
- test_a_pod_address_of_a_family_the_lab_lacks_is_refused, test_the_cli_probes_each_family_and_says_which:
  IPv6, `--family` and `--external`, which a kernel lab has not;
- test_zz_down_leaves_nothing: the netdev lab's leftovers (the kernel lab's: test_kernel_datapath).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sdn_netpol.lab.vm import qemu_pids
from sdn_netpol.lab.vmlab import VmLab
from tests.kernel_fixtures import KernelCluster, KernelLab
from tests.lab_fixtures import MODEL

if os.environ.get("SDN_NETPOL_CONFORMANCE_FULL"):
    from tests.test_lab_conformance import (  # noqa: F401  (collected here, with this module's lab)
        test_allow_all_overrides_default_deny,
        test_default_deny_egress,
        test_default_deny_ingress,
        test_end_port_range,
        test_ip_block_with_except,
        test_match_expressions,
        test_named_port,
        test_namespace_and_pod_selector_in_one_peer_is_and,
        test_namespace_relabel,
        test_namespace_selector_alone,
        test_no_policy_everything_connects_on_every_protocol,
        test_pod_relabel_in_place,
        test_pod_selector_alone,
        test_policy_update_and_delete,
        test_sctp_reverse_of_an_allowed_association_is_still_checked,
        test_sctp_rule,
        test_sctp_works_both_ways_after_an_association_the_other_way,
        test_two_peers_are_or,
        test_udp_rule,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelLab]:
    workdir = tmp_path_factory.mktemp("kernel-conformance")
    made = VmLab(workdir, nodes=2)
    try:
        made.up([doc for doc in yaml.safe_load_all(MODEL.read_text()) if doc])
        yield KernelLab(made)
    finally:
        made.down()
        assert qemu_pids(workdir) == [], "lab down leaves no qemu"


@pytest.fixture
def cluster(lab: KernelLab, tmp_path: Path) -> Iterator[KernelCluster]:
    view = KernelCluster(lab, tmp_path)  # type: ignore[arg-type]  (the Lab calls it makes)
    yield view
    view.reset()
