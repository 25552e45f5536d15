"""Fixtures for the benchmarks: every core benchmark runs once per core.

Full run:   .venv/bin/python -m pytest benchmarks/ --benchmark-autosave
Smoke run:  .venv/bin/python -m pytest benchmarks --benchmark-disable   (CI; each body runs once, small n)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import lguest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, also when imported from elsewhere

import benchlib  # noqa: E402

MIN_TIME = "0.00002"  # 20 us per round unless --benchmark-min-time says otherwise


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Rounds of at least 20 us instead of pytest-benchmark's 5 us: a sub-microsecond
    call is then timed ~100 times per round, so the timer's own cost and a noisy
    calibration (one slow first call used to give 1-iteration rounds) wash out."""
    if not any(str(a).startswith("--benchmark-min-time") for a in config.invocation_params.args):
        try:
            from pytest_benchmark.utils import parse_seconds
        except ImportError:  # pragma: no cover - pytest-benchmark is a test dependency
            return
        if hasattr(config.option, "benchmark_min_time"):
            config.option.benchmark_min_time = parse_seconds(MIN_TIME)


@pytest.fixture(params=["python", "cython"])
def core(request):
    """The core module under test: lguest.fallback or lguest._core."""
    if request.param == "cython" and os.environ.get("LGUEST_PURE_PYTHON") not in (None, "", "0"):
        pytest.skip("LGUEST_PURE_PYTHON is set")
    return lguest.load_core(request.param)


@pytest.fixture
def guest_cpu(core):
    """(guest, cpu) on ``core``: flat 1 MiB, VirtualClock, lguest_data at 0x1000 with
    irq_enabled=0x200 and nothing blocked, trap gates for every irq and trap,
    kernel-mode registers (ss 0x69, esp 0x80000)."""
    guest, cpu = benchlib.make_guest(core)
    yield guest, cpu
    assert guest.dead is None, guest.dead


@pytest.fixture
def smoke(request) -> bool:
    """True under --benchmark-disable (CI): the C-loop measurements use a small n."""
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture
def loops(smoke):
    """How many deliveries one C-loop measurement makes, and how many times it is repeated
    (short measurements, about 1 ms, many times: on a loaded machine some still
    run within one scheduler time slice)."""
    return (2_000, 1) if smoke else (20_000, 31)


@pytest.fixture(scope="session")
def cbaseline():
    """baseline.c compiled and loaded (skips if there is no C compiler at all;
    a compiler that fails on baseline.c is an error)."""
    if shutil.which(benchlib.compiler()) is None:
        pytest.skip(f"no C compiler ({benchlib.compiler()}) for the plain-C baseline")
    return benchlib.build_baseline()
