"""Fixtures every controller test module uses (defined in tests/controller_fixtures.py)."""

from tests.controller_fixtures import folder_cluster, sw  # noqa: F401  (pytest fixtures, used by name)
