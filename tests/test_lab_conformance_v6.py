"""The conformance run on an IPv6 lab (`lab up --ip-family 6`, issue 15): every case of
tests/test_lab_conformance.py, collected here with this module's lab — probed with IPv6
packets, ipBlocks written in IPv6 terms by the rule of docs/lab.md (10.244.N.0/24 →
fd00:10:244:N::/64 …), headers, neighbours and sockets in IPv6, a model pod with an IPv6
status.podIPs, and IPv4 refused on this lab. 3 nodes, VXLAN on the IPv4 underlay.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdn_netpol.lab.lab import Lab
from tests.family_fixtures import family_lab
from tests.test_lab_conformance import *  # noqa: F403  (every case, collected here with this module's lab)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, links_before: set[str]) -> Iterator[Lab]:
    with family_lab(tmp_path_factory.mktemp("lab6"), "6") as made:
        yield made
