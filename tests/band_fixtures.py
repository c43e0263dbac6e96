"""Test hooks for compiler/bands.py: clusters small enough to trace put their conjunctions in bands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from sdn_netpol.compiler import bands


@contextmanager
def flows_of_at_most(conjunctions: int) -> Iterator[None]:
    """A smaller band threshold: matches cross it (and leave it) with a few policies."""
    with mock.patch.object(bands, "CLAUSE_CONJUNCTIONS", conjunctions):
        yield


@contextmanager
def every_match_in_all_bands() -> Iterator[None]:
    """Every match counts as busy enough for all MAX_BANDS bands, so each conjunction sits
    in its own band (its id mod 64): nearly every pair of conjunctions is in different ones."""
    def all_bands(conjunctions: int) -> int:
        return bands.MAX_BANDS
    with mock.patch.object(bands, "bands_for", all_bands):  # policy_flows calls it through the module
        yield
