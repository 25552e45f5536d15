"""The public C API's delivery loop against the core's internal one.

``capi_bench_deliver`` (C, built here with gcc against ``lguest.get_include()``)
makes the same rounds as ``lguest._core.bench_deliver`` -- set an irq
pending, maybe_do_interrupt, put back ss/esp/cs/eip -- through the
``lguest._core._C_API`` capsule's handle and function pointers, timed inside
C.  Both run interleaved on the benchmark guest (benchlib.make_guest).

    .venv/bin/python benchmarks/capi.py
"""

from __future__ import annotations

import ctypes
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

import lguest  # noqa: E402

SOURCE = r"""
#include <Python.h>
#include <time.h>
#include "lguest/lguest.h"

static int64_t now_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

long long capi_bench_deliver(PyObject *cpu, int irq, long long n) {
    const struct lguest_c_api *api = PyCapsule_Import(LGUEST_C_API_CAPSULE, 0);
    lguest_handle *h;
    uint32_t ss, esp, cs, eip, bit = 1u << irq, *r;
    int64_t t0, t1;
    long long i;
    if (api == NULL || api->version != LGUEST_C_API_VERSION) { PyErr_Clear(); return -1; }
    h = api->acquire(cpu);
    if (h == NULL) { PyErr_Clear(); return -1; }
    r = h->regs;
    ss = r[LG_R_SS]; esp = r[LG_R_ESP]; cs = r[LG_R_CS]; eip = r[LG_R_EIP];
    Py_BEGIN_ALLOW_THREADS
    t0 = now_ns();
    for (i = 0; i < n; i++) {
        __atomic_fetch_or(h->irqs_pending, bit, __ATOMIC_SEQ_CST);
        api->maybe_do_interrupt(h);
        r[LG_R_SS] = ss; r[LG_R_ESP] = esp; r[LG_R_CS] = cs; r[LG_R_EIP] = eip;
    }
    t1 = now_ns();
    Py_END_ALLOW_THREADS
    api->release(h);
    return t1 - t0;
}
"""


def build() -> ctypes.PyDLL:
    d = Path(tempfile.mkdtemp(prefix="lgcapi"))
    (d / "capi.c").write_text(SOURCE)
    cc = shutil.which("gcc") or "cc"
    subprocess.run([cc, *benchlib.extension_cflags(), "-shared", "-fPIC", "-I", lguest.get_include(), "-I",
                    sysconfig.get_paths()["include"], "-o", str(d / "capi.so"), str(d / "capi.c")], check=True)
    lib = ctypes.PyDLL(str(d / "capi.so"))
    lib.capi_bench_deliver.argtypes = [ctypes.py_object, ctypes.c_int, ctypes.c_longlong]
    lib.capi_bench_deliver.restype = ctypes.c_longlong
    return lib


def measure(n: int = 20_000, repeat: int = 31) -> dict[str, list[float]]:
    """ns per delivery, ``repeat`` interleaved pairs (internal, C API) on one cpu."""
    lib = build()
    cy = lguest.load_core("cython")
    _guest, cpu = benchlib.make_guest(cy)
    out: dict[str, list[float]] = {"internal": [], "capi": []}
    for _ in range(repeat):
        out["internal"].append(cy.bench_deliver(cpu, 5, n) / n)
        ns = lib.capi_bench_deliver(cpu, 5, n)
        assert ns >= 0
        out["capi"].append(ns / n)
    assert cpu.guest.dead is None
    return out


def main() -> int:
    res = measure()
    i, c = min(res["internal"]), min(res["capi"])
    mi, mc = statistics.median(res["internal"]), statistics.median(res["capi"])
    print(f"internal bench_deliver: min {i:.1f} ns, median {mi:.1f} ns")
    print(f"C API loop:             min {c:.1f} ns, median {mc:.1f} ns")
    print(f"C API / internal: {c / i:.3f} (min), {mc / mi:.3f} (median)  (target <= 1.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
