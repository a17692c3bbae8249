"""The suite's hypothesis tests draw the same examples on every run (conftest's "ci" profile)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci",
                                reason="another hypothesis profile was asked for")


def _draws() -> list[tuple[float, int]]:
    seen: list[tuple[float, int]] = []

    @settings(max_examples=20, deadline=None)  # as the suite's tests decorate: only some fields
    @given(st.floats(-1e3, 1e3), st.integers(0, 10**9))
    def probe(x: float, n: int) -> None:
        seen.append((x, n))

    probe()
    return seen


def test_default_profile_is_derandomised() -> None:
    assert settings.default.derandomize is True and settings.default.database is None


def test_the_same_examples_on_every_run() -> None:
    first, second = _draws(), _draws()
    assert len(first) >= 10 and first == second


def test_suite_tests_inherit_the_profile() -> None:
    from test_geometry_alignment import test_umeyama_recovers_exact_similarity as t

    assert t.hypothesis.inner_test is not None
    assert t._hypothesis_internal_use_settings.derandomize is True
