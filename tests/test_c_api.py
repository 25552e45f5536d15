"""The public C API (lguest/lguest.h): a shared library built here with gcc
against ``lguest.get_include()``, loaded with ctypes, takes the capsule
``lguest._core._C_API``, acquires a handle on a real compiled cpu and
delivers through it; the guest stack and registers must hold exactly what
the Python API's delivery leaves."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import lguest

if shutil.which("gcc") is None:
    pytest.skip("gcc needed", allow_module_level=True)

core = pytest.importorskip("lguest._core")

SOURCE = r"""
#include <Python.h>
#include "lguest/lguest.h"

/* Acquire `cpu`, deliver trap `num` (and maybe an irq), release.  Returns
 * deliver_trap's result, or -100 if acquire failed, -200 on a version mismatch. */
int drive(PyObject *cpu, int num, int irq) {
    const struct lguest_c_api *api = PyCapsule_Import(LGUEST_C_API_CAPSULE, 0);
    lguest_handle *h;
    int r;
    if (api == NULL) return -300;
    if (api->version != LGUEST_C_API_VERSION || api->size < sizeof(struct lguest_c_api)) return -200;
    h = api->acquire(cpu);
    if (h == NULL) { PyErr_Clear(); return -100; }
    Py_BEGIN_ALLOW_THREADS     /* the delivery calls need no GIL */
    r = api->deliver_trap(h, (uint32_t)num);
    if (irq >= 0) { api->send_irq(h, (uint32_t)irq); if (api->irq_deliverable(h)) api->maybe_do_interrupt(h); }
    Py_END_ALLOW_THREADS
    api->release(h);
    return r;
}

/* n deliveries of trap `num` through the C API, restoring eip/esp each time. */
long long loop(PyObject *cpu, int num, long long n) {
    const struct lguest_c_api *api = PyCapsule_Import(LGUEST_C_API_CAPSULE, 0);
    lguest_handle *h = api->acquire(cpu);
    uint32_t eip, esp, cs, eflags;
    long long i, ok = 0;
    if (h == NULL) { PyErr_Clear(); return -1; }
    eip = h->regs[LG_R_EIP]; esp = h->regs[LG_R_ESP]; cs = h->regs[LG_R_CS]; eflags = h->regs[LG_R_EFLAGS];
    for (i = 0; i < n; i++) {
        ok += api->deliver_trap(h, (uint32_t)num);
        h->regs[LG_R_EIP] = eip; h->regs[LG_R_ESP] = esp; h->regs[LG_R_CS] = cs; h->regs[LG_R_EFLAGS] = eflags;
    }
    api->release(h);
    return ok;
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.PyDLL:
    d = tmp_path_factory.mktemp("capi")
    (d / "drive.c").write_text(SOURCE)
    so = d / "drive.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", lguest.get_include(), "-I",
                    sysconfig.get_paths()["include"], "-o", str(so), str(d / "drive.c")], check=True)
    dll = ctypes.PyDLL(str(so))  # PyDLL: called with the GIL held, as acquire() requires
    dll.drive.argtypes = [ctypes.py_object, ctypes.c_int, ctypes.c_int]
    dll.drive.restype = ctypes.c_int
    dll.loop.argtypes = [ctypes.py_object, ctypes.c_int, ctypes.c_longlong]
    dll.loop.restype = ctypes.c_longlong
    return dll


def _guest():
    mem = lguest.GuestMemory(1 << 20)
    guest = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32))).new_guest(mem, page_offset=0, core=core,
                                                                                     clock=lguest.VirtualClock())
    cpu = guest.new_cpu()
    guest.lguest_data = 0x1000
    mem.write_u32(0x1000, 0x200)  # irq_enabled
    cpu.regs.eip, cpu.regs.cs, cpu.regs.ss, cpu.regs.esp, cpu.regs.eflags = 0x5000, 0x61, 0x69, 0x8000, 0x202
    for v, handler in ((14, 0x6000), (32 + 3, 0x7000)):
        cpu.load_guest_idt_entry(v, 0x00610000 | (handler & 0xFFFF), (handler & 0xFFFF0000) | 0x8F00)
    cpu.regs.errcode = 0x6
    return mem, guest, cpu


def test_get_include_holds_the_headers():
    inc = Path(lguest.get_include())
    assert (inc / "lguest" / "lguest.h").is_file() and (inc / "lguest" / "abi.h").is_file()
    assert (Path(lguest.__file__).parent / "lguest.pxd").is_file()


def test_a_delivery_through_the_capsule_matches_the_python_api(lib):
    mem, guest, cpu = _guest()
    mem2, guest2, cpu2 = _guest()
    assert lib.drive(cpu, 14, 3) == 1
    assert cpu2.deliver_trap(14)
    cpu2.send_irq(3)
    cpu2.maybe_do_interrupt()
    assert np.array_equal(cpu.regs.array, cpu2.regs.array)
    assert mem.read(0x7F00, 0x100) == mem2.read(0x7F00, 0x100)
    # the frames: #PF (eflags, cs, eip, errcode) under irq 3's (eflags, cs, eip)
    assert cpu.regs.eip == 0x7000 and cpu.regs.esp == 0x8000 - 16 - 12
    assert [mem.read_u32(0x8000 - 4 * i) for i in range(1, 5)] == [0x202, 0x61, 0x5000, 0x6]
    assert guest.dead is None


def test_acquire_refuses_what_is_not_a_cpu(lib):
    assert lib.drive(object(), 14, -1) == -100
    mem, guest, cpu = _guest()
    mem.close()
    assert lib.drive(cpu, 14, -1) == -100


def test_a_handle_holds_the_memory(lib):
    mem, guest, cpu = _guest()
    capi = ctypes.pythonapi
    capi.PyCapsule_GetPointer.restype = ctypes.c_void_p
    capi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = capi.PyCapsule_GetPointer(core._C_API, b"lguest._core._C_API")
    acquire = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object)(ctypes.c_void_p.from_address(table + 8).value)
    release = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)(ctypes.c_void_p.from_address(table + 16).value)
    h = acquire(cpu)
    assert h
    with pytest.raises(RuntimeError, match="in use"):
        mem.close()
    release(h)
    mem.close()


def test_a_kill_is_recorded_without_the_gil(lib):
    mem, guest, cpu = _guest()
    cpu.regs.esp = 0xFFFFF000  # outside guest memory: the first push kills
    assert lib.drive(cpu, 14, -1) == 1
    assert guest.dead is not None and guest.dead.startswith("bad write address")


def test_the_c_api_loop_delivers_every_time(lib):
    mem, guest, cpu = _guest()
    assert lib.loop(cpu, 14, 1000) == 1000
    assert cpu.regs.eip == 0x5000 and guest.dead is None
