"""Shared fixtures: every core test runs once per core."""

from __future__ import annotations

import os

import pytest

import lguest


@pytest.fixture(params=["python", "cython"])
def core(request):
    """The core module under test: lguest.fallback or lguest._core."""
    if request.param == "cython" and os.environ.get("LGUEST_PURE_PYTHON") not in (None, "", "0"):
        pytest.skip("LGUEST_PURE_PYTHON is set")
    return lguest.load_core(request.param)  # fails loudly if the extension is not built
