"""The public C API's delivery loop next to the core's internal loop (group
"c api: deliver"; ids ``test_capi_deliver[internal]`` and ``[capi]``).  One
timed C loop of n deliveries per round; ns per delivery in extra_info.

    .venv/bin/python -m pytest benchmarks/test_bench_capi.py --benchmark-only
"""

from __future__ import annotations

import shutil

import pytest

import lguest

if shutil.which("gcc") is None:
    pytest.skip("gcc needed", allow_module_level=True)
pytest.importorskip("lguest._core")

import benchlib  # noqa: E402
import capi  # noqa: E402


@pytest.fixture(scope="module")
def capi_lib():
    return capi.build()


@pytest.mark.benchmark(group="c api: deliver")
@pytest.mark.parametrize("path", ["internal", "capi"])
def test_capi_deliver(benchmark, loops, capi_lib, path):
    n, _ = loops
    cy = lguest.load_core("cython")
    _guest, cpu = benchlib.make_guest(cy)
    ns: list[int] = []
    if path == "internal":
        def run():
            ns.append(cy.bench_deliver(cpu, 5, n))
    else:
        def run():
            ns.append(capi_lib.capi_bench_deliver(cpu, 5, n))
    benchmark.pedantic(run, rounds=5, iterations=1)
    assert min(ns) > 0 and cpu.guest.dead is None
    benchmark.extra_info["ns_per_op"] = min(ns) / n
