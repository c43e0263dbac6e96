"""Fixtures every controller test module uses (defined in tests/controller_fixtures.py), and
the order of the tiers.

The tiers that need artifacts built once per machine (the real kube-apiserver, the image,
the container runtimes' pause image, the kernel-datapath VMs' image) run last: `make
prebuild` starts those builds in the background, niced, so they build while the fast tiers
run, and the slow tiers' fixtures wait for them (each build script takes a lock and finds the cache when it is done).
"""

from __future__ import annotations

import pytest

from tests.controller_fixtures import folder_cluster, sw  # noqa: F401  (pytest fixtures, used by name)

LAST = ("test_kube_apiserver", "test_image", "test_runtime", "test_kernel")


def _needs_artifacts(item: pytest.Item) -> bool:
    return item.path.name.startswith(LAST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A stable sort: modules keep their order and stay contiguous (module fixtures)."""
    items.sort(key=_needs_artifacts)
