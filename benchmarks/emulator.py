"""Leaving the emulator: lguest's trap and hypercall round trips on Unicorn
against the bare-Unicorn floors, measured in one interleaved run.

Every measurement runs the same guest loop -- ``mov $n,%ecx; 1: <event>;
dec %ecx; jnz 1b`` -- and is checked to have done the same guest work
(the event count and the final ``ecx``):

``bare_binding``   (baseline a) bare Unicorn, no lguest: the official Python
                   binding's UC_HOOK_INTR callback calls ``emu_stop`` at each
                   ``int3`` and a Python loop calls ``emu_start`` again;
``bare_native``    (baseline b) the same loop with a native UC_HOOK_INTR (C,
                   built here with gcc) doing what lguest's hook does to
                   handle a trap without leaving the emulator -- save the
                   CPU context (its small form: registers and segment
                   caches), restore it -- and no lguest work;
``bare_native_ring3`` (baseline c) the floor for direct syscalls: the
                   ``syscall_ring3`` guest's loop and handler (same bytes,
                   same addresses) on a bare engine whose native UC_HOOK_INTR
                   does only what the real hook does for a ring-3
                   ``int $0x80`` minus lguest -- save the small context, read
                   eflags, push ss/esp/eflags/cs/eip at esp1, load CS and SS
                   (ss1) into the segment caches, restore; checked to leave
                   the same final registers, kernel-stack frame and
                   lguest_data word as ``syscall_ring3``;
``bare_native_reflect`` the ``reflected`` guest's loop and handler on the same
                   bare engine and hook as (c), at ring 1 (eflags, cs, eip
                   pushed on the current stack, no stack switch): the guest
                   work of a reflected trap (its handler's store and
                   ``iret``) with no lguest work; checked like (c);
``bare_native_full`` (b) with the whole 5.5 KiB context saved and restored
                   (the hook's mechanism for traps below 32 before it read
                   the exception fields in place);
``bare_native_stop`` a native hook that stops, re-entered from C: the cost of
                   leaving and re-entering that the design avoids;
``reflected``      lguest: ``int3`` through the guest's interrupt gate, a
                   trap handle_trap only reflects, delivered by the hook (the
                   guest's handler runs: re-enables interrupts, ``iret``);
``reflected_loop`` the same through the Python run loop (``native_direct=False``);
``hcall_flush``    a ``LHCALL_FLUSH_ASYNC`` hypercall round trip;
``hcall_clockevent`` a ``LHCALL_SET_CLOCKEVENT(0)`` round trip (virtual clock,
                   the launcher's default: the hook cancels the event in C,
                   ``uh_vclock_hcall``);
``hcall_clockevent_arm`` ``SET_CLOCKEVENT(1 s)`` on the virtual clock: each call
                   advances the clock, re-arms and sets the block budget in C;
``hcall_clockevent_py`` / ``hcall_clockevent_arm_py`` the same two through the
                   Python handler (``UnicornBackend.native_vclock = False``:
                   the path before the C one);
``hcall_clockevent_wall`` the same on the wall clock (the compiled core's
                   NativeClock: the hook cancels the timer in C);
``hcall_clockevent_arm_wall`` ``SET_CLOCKEVENT(1 s)`` on the wall clock: each
                   call re-arms the native timer in C (the first in Python);
``syscall_ring1`` / ``syscall_ring3``  ``int $0x80`` through the direct trap
                   gate from ring 1 / from ring 3 (the handler ``iret``s).

    .venv/bin/python benchmarks/emulator.py [--quick]

prints per-event nanoseconds (median of the rounds) and the issue-15 ratios.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ENTRY = 0x1000
LGUEST_DATA = 0x8000
COUNTER = 0x9000
KSTACK = 0x7000
USTACK = 0x6000

# --- lguest guests ---------------------------------------------------------------------
# LGUEST_INIT; a guest gate for VEC; optionally SET_STACK and a drop to
# ring 3; the loop; hlt (at ring 1 a #GP with no gate: the kill ends the
# run; at ring 3 the same).  The handler re-enables interrupts (an
# interrupt gate cleared lguest_data.irq_enabled) and irets.
GUEST = """
    .code32
    .globl _start
_start:
    mov $1, %eax; mov ${ld}, %ebx; vmcall
    mov $6, %eax; mov ${vec}, %ebx; mov $(0x610000 + (handler - _start + {entry}) & 0xffff), %ecx
    mov $(((handler - _start + {entry}) & 0xffff0000) | {gate_hi}), %edx; vmcall
    mov ${kstack}, %esp
    {to_user}
loop:
    mov ${n}, %ecx
1:  {insn}
    dec %ecx
    jnz 1b
done:
    hlt
handler:
    movl $0x200, {ld}
    iret
"""

# SET_STACK (7): ss1 0x69, esp1 KSTACK; then iret to ring 3 (cs 0x73, ss 0x7b).
TO_USER = """
    mov $7, %eax; mov $0x69, %ebx; mov ${kstack}, %ecx; mov $0, %edx; vmcall
    push $0x7b; push ${ustack}; push $0x202; push $0x73; push $2f; iret
2:  mov $0x7b, %eax; mov %eax, %ds; mov %eax, %es
"""

HCALL = "mov ${num}, %eax; mov ${a1}, %ebx; xor %edx, %edx; push %ecx; xor %ecx, %ecx; int $0x1f; pop %ecx"


def _assemble(src: str, tmp: Path) -> bytes:
    s, o, b = tmp / "g.s", tmp / "g.o", tmp / "g.bin"
    s.write_text(src)
    subprocess.run(["as", "--32", "-o", str(o), str(s)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", hex(ENTRY), "--oformat", "binary", "-o", str(b), str(o)],
                   check=True)
    return b.read_bytes()


def _symbols(src: str, tmp: Path) -> dict[str, int]:
    """The guest's labels (loop, done, handler) as addresses."""
    s, o = tmp / "sym.s", tmp / "sym.o"
    s.write_text(src)
    subprocess.run(["as", "--32", "-o", str(o), str(s)], check=True)
    out = subprocess.run(["nm", str(o)], check=True, capture_output=True, text=True).stdout
    return {f[2]: ENTRY + int(f[0], 16) for f in (ln.split() for ln in out.splitlines()) if len(f) == 3}


def _guest_src(*, n: int, insn: str, vec: int = 3, gate_hi: int = 0xEE00, user: bool = False) -> str:
    to_user = TO_USER.format(kstack=KSTACK, ustack=USTACK) if user else ""
    return GUEST.format(ld=LGUEST_DATA, vec=vec, entry=ENTRY, gate_hi=gate_hi, kstack=KSTACK,
                        to_user=to_user, n=n, insn=insn)


def lguest_guest(tmp: Path, *, n: int, insn: str, vec: int = 3, gate_hi: int = 0xEE00, user: bool = False) -> bytes:
    return _assemble(_guest_src(n=n, insn=insn, vec=vec, gate_hi=gate_hi, user=user), tmp)


#: The syscall_ring3 guest: lguest runs it whole; baseline (c) runs its
#: loop and handler (same bytes, same addresses) from ``loop`` to ``done``.
RING3 = {"insn": "int $0x80", "vec": 0x80, "gate_hi": 0xEF00, "user": True}


def kernel_frame(mem: Any) -> tuple[int, ...]:
    """The last syscall frame on the kernel stack (eip, cs, eflags, esp, ss)
    and lguest_data's first word: what the ring-3 guest work leaves."""
    words = struct.unpack("<5I", bytes(mem[KSTACK - 20:KSTACK]))
    return (*words, struct.unpack("<I", bytes(mem[LGUEST_DATA:LGUEST_DATA + 4]))[0])


def run_lguest(code: bytes, *, state: dict | None = None, **kw) -> tuple[float, dict, int]:
    """One fresh launcher, one timed run(); (seconds, stats, final ecx).
    ``state``, if given, receives the final esp, cs, ss and kernel_frame."""
    import lguest
    from lguest.unicorn import UnicornLauncher

    with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32)),
                         **kw) as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)  # an empty async ring
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)  # syscall_vec
        t0 = time.perf_counter()
        res = lg.run(timeout=600)
        dt = time.perf_counter() - t0
        assert res.reason == "dead" and str(res.message).startswith("unhandled trap 13"), res
        ecx = int(lg.cpu.regs.ecx)
        stats = lg.stats
        if state is not None:
            r = lg.cpu.regs
            state.update(esp=int(r.esp), cs=int(r.cs), ss=int(r.ss), frame=kernel_frame(lg.memory.view))
    return dt, stats, ecx


# --- bare Unicorn ----------------------------------------------------------------------
BARE_C = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>
typedef int (*ctx_io_t)(void *, void *);
typedef int (*emu_start_t)(void *, uint64_t, uint64_t, uint64_t, size_t);
typedef int (*emu_stop_t)(void *);
typedef int (*reg_read_t)(void *, int, void *);
struct floor { ctx_io_t save, restore; emu_start_t start; emu_stop_t stop; reg_read_t rd;
               void *ctx; uint64_t count; int stop_each; int eip_id; };
/* lguest's hook handling a trap in place, minus lguest: save, restore. */
void floor_hook(void *uc, uint32_t intno, void *user) {
    struct floor *f = user;
    f->count++;
    if (f->ctx) { f->save(uc, f->ctx); f->restore(uc, f->ctx); }
    if (f->stop_each) f->stop(uc);
}
/* Re-enter from C after each stop until `until`. */
int floor_loop(void *uc, struct floor *f, uint32_t eip, uint32_t until) {
    for (;;) {
        int err = f->start(uc, eip, until, 0, 0);
        if (err) return err;
        f->rd(uc, f->eip_id, &eip);
        if (eip == until) return 0;
    }
}

/* Baseline (c): a ring-3 int $0x80 taken to a ring-1 handler with nothing
 * but the user->kernel frame push and the ring switch, by the real hook's
 * mechanism (uh_on_intr + uh_deliver in lguest/unicorn/_uchook.h): save the
 * small context, read the computed eflags with uc_reg_read, push ss, esp,
 * eflags, cs, eip on the stack at esp1 (ss1's base is 0), load CS and SS
 * from the GDT into the saved segment caches, recompute hflags, set eip/esp,
 * restore.  No lguest work: no gate lookup or DPL check, no
 * lguest_address_ok, no irq_enabled, no error code, no counters per vector. */
struct floor3 { ctx_io_t save, restore; reg_read_t rd; uint8_t *ctx; uint8_t *mem; uint32_t *gdt;
                int off_regs, off_eip, off_eflags, off_hflags, off_segs, seg_stride, eflags_id;
                uint32_t esp1, ss1, handler_cs, handler; uint64_t count; int same_ring; };
enum { S_ES, S_CS, S_SS, S_DS };
static void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static void load_seg(struct floor3 *f, uint8_t *c, int seg, uint32_t sel) {
    uint8_t *sc = c + f->off_segs + seg * f->seg_stride;
    uint32_t e1 = f->gdt[2 * (sel >> 3)], e2 = f->gdt[2 * (sel >> 3) + 1];
    uint32_t base = (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000u);
    uint32_t limit = (e1 & 0xFFFF) | (e2 & 0x000F0000u);
    if (e2 & 0x00800000u) limit = (limit << 12) | 0xFFF;
    st32(sc, sel); st64(sc + 8, base); st32(sc + 16, limit); st32(sc + 20, e2);
}
static void fix_hflags(struct floor3 *f, uint8_t *c) {   /* uh_fix_hflags */
    uint32_t hf = ld32(c + f->off_hflags);
    uint32_t csf = ld32(c + f->off_segs + S_CS * f->seg_stride + 20);
    uint32_t ssf = ld32(c + f->off_segs + S_SS * f->seg_stride + 20);
    uint64_t bases = ld64(c + f->off_segs + S_DS * f->seg_stride + 8) | ld64(c + f->off_segs + S_ES * f->seg_stride + 8)
                   | ld64(c + f->off_segs + S_SS * f->seg_stride + 8);
    hf &= ~(3u | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 3));
    hf |= (ssf >> 13) & 3;
    if (csf & (1u << 22)) hf |= 1u << 4;
    if (ssf & (1u << 22)) hf |= 1u << 5;
    if (!(hf & (1u << 4)) || bases) hf |= 1u << 6;
    st32(c + f->off_hflags, hf);
}
void floor3_hook(void *uc, uint32_t intno, void *user) {
    struct floor3 *f = user;
    uint8_t *c = f->ctx;
    uint32_t eflags = 0, esp, *frame;
    f->count++;
    f->save(uc, c);
    f->rd(uc, f->eflags_id, &eflags);
    if (f->same_ring) {   /* a trap at ring 1: eflags, cs, eip on the current stack */
        esp = (uint32_t)ld64(c + f->off_regs + 4 * 8) - 12;
        frame = (uint32_t *)(f->mem + esp);
    } else {
        esp = f->esp1 - 20;
        frame = (uint32_t *)(f->mem + esp);
        frame[3] = (uint32_t)ld64(c + f->off_regs + 4 * 8);
        frame[4] = ld32(c + f->off_segs + S_SS * f->seg_stride);
    }
    frame[0] = (uint32_t)ld64(c + f->off_eip);
    frame[1] = ld32(c + f->off_segs + S_CS * f->seg_stride);
    frame[2] = eflags;
    load_seg(f, c, S_CS, f->handler_cs);
    if (!f->same_ring) load_seg(f, c, S_SS, f->ss1);
    fix_hflags(f, c);
    st64(c + f->off_eip, f->handler);
    st64(c + f->off_regs + 4 * 8, esp);
    st64(c + f->off_eflags, ld64(c + f->off_eflags) & ~(uint64_t)(0x100 | 0x4000 | 0x10000 | 0x20000));
    f->restore(uc, c);
}
/* Put the CPU at ring 3 (cs, ss, ds, es = user selectors) by the same
 * context patch, for the loop to start in user mode. */
void floor3_user(void *uc, struct floor3 *f, uint32_t cs, uint32_t ds) {
    uint8_t *c = f->ctx;
    f->save(uc, c);
    load_seg(f, c, S_CS, cs); load_seg(f, c, S_SS, ds); load_seg(f, c, S_DS, ds); load_seg(f, c, S_ES, ds);
    fix_hflags(f, c);
    f->restore(uc, c);
}
"""


class Floor(ctypes.Structure):
    _fields_ = [("save", ctypes.c_void_p), ("restore", ctypes.c_void_p), ("start", ctypes.c_void_p),
                ("stop", ctypes.c_void_p), ("rd", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("count", ctypes.c_uint64), ("stop_each", ctypes.c_int), ("eip_id", ctypes.c_int)]


_LIB: dict[str, ctypes.CDLL] = {}


def bare_lib() -> ctypes.CDLL:
    if "lib" not in _LIB:
        d = Path(tempfile.mkdtemp(prefix="lgbare"))
        (d / "floor.c").write_text(BARE_C)
        cc = shutil.which(os.environ.get("CC", "gcc")) or "gcc"
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(d / "floor.so"), str(d / "floor.c")], check=True)
        lib = ctypes.CDLL(str(d / "floor.so"))
        lib.floor_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
        _LIB["lib"] = lib
    return _LIB["lib"]


def bare_code(n: int) -> tuple[bytes, int]:
    """``mov $n,%ecx; 1: int3; dec %ecx; jnz 1b``; and the address after it."""
    code = b"\xb9" + n.to_bytes(4, "little") + b"\xcc\x49\x75\xfc"
    return code, ENTRY + len(code)


def _bare_uc(n: int):
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as x

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 1 << 20)
    code, until = bare_code(n)
    uc.mem_write(ENTRY, code)
    uc.reg_write(x.UC_X86_REG_ESP, KSTACK)
    return uc, until


def run_bare_binding(n: int) -> tuple[float, int, int]:
    """Baseline (a): (seconds, exits, final ecx)."""
    from unicorn import UC_HOOK_INTR
    from unicorn import x86_const as x

    uc, until = _bare_uc(n)
    count = [0]

    def on_intr(uc, intno, user):
        count[0] += 1
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    eip = ENTRY
    t0 = time.perf_counter()
    while eip != until:
        uc.emu_start(eip, until)
        eip = uc.reg_read(x.UC_X86_REG_EIP)
    dt = time.perf_counter() - t0
    return dt, count[0], uc.reg_read(x.UC_X86_REG_ECX)


def run_bare_native(n: int, *, stop_each: bool, full: bool = False) -> tuple[float, int, int]:
    """Baseline (b) (stop_each=False) or the native stop/re-enter loop.
    (b) saves and restores the small context (registers and segment
    caches), as the hook does for every trap since it reads the exception
    fields in place; ``full``: the whole 5.5 KiB context, as it did before."""
    from unicorn import x86_const as x

    from lguest.unicorn.engine import engine_handle, function_addresses, uclib
    from lguest.unicorn.layout import context_layout

    lib, ucl = bare_lib(), uclib()
    uc, until = _bare_uc(n)
    h = engine_handle(uc)
    f = function_addresses()
    ctx = ctypes.c_void_p()
    if ucl.uc_context_alloc(ctypes.c_void_p(h), ctypes.byref(ctx)) != 0:
        raise OSError("uc_context_alloc")
    if not full:
        lay = context_layout()
        ctypes.memmove(ctx.value, struct.pack("<Q", lay["segs"] + 6 * lay["seg_stride"] - lay["data"]), 8)
    fl = Floor(f["uc_context_save"], f["uc_context_restore"], f["uc_emu_start"], f["uc_emu_stop"],
               f["uc_reg_read"], None if stop_each else ctx.value, 0, int(stop_each), x.UC_X86_REG_EIP)
    hh = ctypes.c_size_t()
    cb = ctypes.cast(lib.floor_hook, ctypes.c_void_p)
    add = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)(f["uc_hook_add"])
    if add(h, ctypes.addressof(hh), 1, cb, ctypes.addressof(fl), 1, 0) != 0:  # UC_HOOK_INTR
        raise OSError("uc_hook_add")
    t0 = time.perf_counter()
    err = lib.floor_loop(ctypes.c_void_p(h), ctypes.addressof(fl), ENTRY, until)
    dt = time.perf_counter() - t0
    assert err == 0, err
    ecx = uc.reg_read(x.UC_X86_REG_ECX)
    ucl.uc_free(ctx)
    return dt, fl.count, ecx


class Floor3(ctypes.Structure):
    _fields_ = [("save", ctypes.c_void_p), ("restore", ctypes.c_void_p), ("rd", ctypes.c_void_p),
                ("ctx", ctypes.c_void_p), ("mem", ctypes.c_void_p), ("gdt", ctypes.c_void_p),
                ("off_regs", ctypes.c_int), ("off_eip", ctypes.c_int), ("off_eflags", ctypes.c_int),
                ("off_hflags", ctypes.c_int), ("off_segs", ctypes.c_int), ("seg_stride", ctypes.c_int),
                ("eflags_id", ctypes.c_int), ("esp1", ctypes.c_uint32), ("ss1", ctypes.c_uint32),
                ("handler_cs", ctypes.c_uint32), ("handler", ctypes.c_uint32), ("count", ctypes.c_uint64),
                ("same_ring", ctypes.c_int)]


GDT = 0xC000  # baseline (c)'s GDT: lguest's flat guest segments at their indices


def run_bare_ring3(code: bytes, syms: dict[str, int], *, state: dict | None = None,
                   ring1: bool = False) -> tuple[float, int, int]:
    """Baseline (c): the syscall_ring3 guest's loop and handler on a bare
    engine (no paging, no lguest) with ``floor3_hook`` as its UC_HOOK_INTR,
    entered at ring 3 like lguest's guest after its iret; (seconds, syscalls,
    final ecx).  ``state`` receives what run_lguest's does.  ``ring1``: the
    reflected guest's loop at ring 1 instead (cs 0x61, ss/ds/es 0x69 as
    lguest's setup_regs; the frame on the current stack)."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
    from unicorn import x86_const as x

    from lguest.unicorn.engine import engine_handle, function_addresses, uclib
    from lguest.unicorn.layout import context_layout
    from lguest.unicorn.switcher import GUEST_FLAT_SEGMENTS

    lib, ucl, lay = bare_lib(), uclib(), context_layout()
    size = 1 << 20
    mem = (ctypes.c_uint8 * size)()
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map_ptr(0, size, UC_PROT_ALL, ctypes.addressof(mem))
    uc.mem_write(ENTRY, code)
    for i, (a, b) in GUEST_FLAT_SEGMENTS.items():
        uc.mem_write(GDT + 8 * i, struct.pack("<II", a, b))
    uc.reg_write(x.UC_X86_REG_GDTR, (0, GDT, 32 * 8 - 1, 0))
    h = engine_handle(uc)
    f = function_addresses()
    ctx = ctypes.c_void_p()
    if ucl.uc_context_alloc(ctypes.c_void_p(h), ctypes.byref(ctx)) != 0:
        raise OSError("uc_context_alloc")
    # the hook's small context: registers and segment caches only (as the backend's)
    ctypes.memmove(ctx.value, struct.pack("<Q", lay["segs"] + 6 * lay["seg_stride"] - lay["data"]), 8)
    fl = Floor3(f["uc_context_save"], f["uc_context_restore"], f["uc_reg_read"], ctx.value,
                ctypes.addressof(mem), ctypes.addressof(mem) + GDT, lay["regs"], lay["eip"], lay["eflags"],
                lay["hflags"], lay["segs"], lay["seg_stride"], x.UC_X86_REG_EFLAGS, KSTACK, 0x69, 0x61,
                syms["handler"], 0, int(ring1))
    lib.floor3_user.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.floor3_user(ctypes.c_void_p(h), ctypes.addressof(fl), *((0x61, 0x69) if ring1 else (0x73, 0x7B)))
    uc.reg_write(x.UC_X86_REG_ESP, KSTACK if ring1 else USTACK)
    uc.reg_write(x.UC_X86_REG_EFLAGS, 0x202)
    hh = ctypes.c_size_t()
    add = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)(f["uc_hook_add"])
    if add(h, ctypes.addressof(hh), 1, ctypes.cast(lib.floor3_hook, ctypes.c_void_p), ctypes.addressof(fl), 1, 0):
        raise OSError("uc_hook_add")
    t0 = time.perf_counter()
    uc.emu_start(syms["loop"], syms["done"])
    dt = time.perf_counter() - t0
    ecx = uc.reg_read(x.UC_X86_REG_ECX)
    if state is not None:
        state.update(esp=uc.reg_read(x.UC_X86_REG_ESP), cs=uc.reg_read(x.UC_X86_REG_CS),
                     ss=uc.reg_read(x.UC_X86_REG_SS), frame=kernel_frame(memoryview(mem).cast("B")))
    ucl.uc_free(ctx)
    return dt, fl.count, ecx


# --- the measurements ------------------------------------------------------------------
def measurements(tmp: Path, n: int) -> dict[str, Callable[[], float]]:
    """name -> a function running n events and returning seconds (after
    checking the guest work)."""
    guests = {
        "reflected": lguest_guest(tmp, n=n, insn="int3"),
        "syscall_ring1": lguest_guest(tmp, n=n, insn="int $0x80", vec=0x80, gate_hi=0xEF00),
        "syscall_ring3": lguest_guest(tmp, n=n, **RING3),
        "hcall_flush": lguest_guest(tmp, n=n, insn=HCALL.format(num=0, a1=0)),
        "hcall_clockevent": lguest_guest(tmp, n=n, insn=HCALL.format(num=9, a1=0)),
        "hcall_clockevent_arm": lguest_guest(tmp, n=n, insn=HCALL.format(num=9, a1=1_000_000_000)),
    }

    # Baseline (c) and syscall_ring3 must leave the same guest state (final
    # esp, cs, ss, the last kernel-stack frame, lguest_data's word): each
    # records its own and checks it against the other's, once both ran.
    states: dict[str, dict] = {}
    pair = {"syscall_ring3": "bare_native_ring3", "bare_native_ring3": "syscall_ring3",
            "reflected": "bare_native_reflect", "bare_native_reflect": "reflected"}

    def same_state(name: str, st: dict) -> None:
        states[name] = st
        other = states.get(pair[name])
        assert other is None or other == st, (name, st, other)

    def lg(name: str, key: str | None, *, native_vclock: bool = True, **kw) -> Callable[[], float]:
        def f() -> float:
            from lguest.unicorn.backend import UnicornBackend

            st: dict = {}
            UnicornBackend.native_vclock = native_vclock  # read when the launcher starts
            try:
                dt, stats, ecx = run_lguest(guests[name], state=st, **kw)
            finally:
                UnicornBackend.native_vclock = True
            assert ecx == 0, (name, ecx)
            if key is not None:
                assert stats.get(key, 0) == n, (name, key, stats)
            if name in pair:
                same_state(name, st)
            return dt
        return f

    def bare(fn: Callable[[dict], tuple[float, int, int]], name: str = "") -> Callable[[], float]:
        def f() -> float:
            st: dict = {}
            dt, count, ecx = fn(st)
            assert (count, ecx) == (n, 0), (count, ecx)
            if name in pair:
                same_state(name, st)
            return dt
        return f

    ring3_syms = _symbols(_guest_src(n=n, **RING3), tmp)
    reflect_syms = _symbols(_guest_src(n=n, insn="int3"), tmp)
    return {
        "bare_binding": bare(lambda st: run_bare_binding(n)),
        "bare_native": bare(lambda st: run_bare_native(n, stop_each=False)),
        "bare_native_ring3": bare(lambda st: run_bare_ring3(guests["syscall_ring3"], ring3_syms, state=st),
                                  "bare_native_ring3"),
        "bare_native_reflect": bare(lambda st: run_bare_ring3(guests["reflected"], reflect_syms, state=st, ring1=True),
                                    "bare_native_reflect"),
        "bare_native_full": bare(lambda st: run_bare_native(n, stop_each=False, full=True)),
        "bare_native_stop": bare(lambda st: run_bare_native(n, stop_each=True)),
        "reflected": lg("reflected", "reflected_3"),
        "reflected_loop": lg("reflected", "reflected_3", native_direct=False),
        "hcall_flush": lg("hcall_flush", "hypercall_0"),
        "hcall_clockevent": lg("hcall_clockevent", "hypercall_9"),
        "hcall_clockevent_arm": lg("hcall_clockevent_arm", "hypercall_9"),
        "hcall_clockevent_py": lg("hcall_clockevent", "hypercall_9", native_vclock=False),
        "hcall_clockevent_arm_py": lg("hcall_clockevent_arm", "hypercall_9", native_vclock=False),
        "hcall_clockevent_wall": lg("hcall_clockevent", "hypercall_9", clock="wall"),
        "hcall_clockevent_arm_wall": lg("hcall_clockevent_arm", "hypercall_9", clock="wall"),
        "syscall_ring1": lg("syscall_ring1", "direct_0x80"),
        "syscall_ring3": lg("syscall_ring3", "direct_0x80"),
    }


def measure(n: int = 100_000, rounds: int = 5) -> dict[str, list[float]]:
    """ns per event of every measurement, ``rounds`` interleaved rounds."""
    tmp = Path(tempfile.mkdtemp(prefix="lgemu"))
    ms = measurements(tmp, n)
    out: dict[str, list[float]] = {k: [] for k in ms}
    for _ in range(rounds):
        for k, f in ms.items():
            out[k].append(f() * 1e9 / n)
    return out


def report(res: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in res.items()}
    lines = [f"{'measurement':<26} {'ns/event':>10} {'min':>10} {'max':>10} {'M/s':>8}"]
    for k, v in res.items():
        lines.append(f"{k:<26} {med[k]:>10.0f} {min(v):>10.0f} {max(v):>10.0f} {1e3 / med[k]:>8.2f}")
    a, b = med["bare_binding"], med["bare_native"]
    lines += [
        "",
        f"reflected vs (a) bare_binding:        {a / med['reflected']:.1f}x  (target >= 5x)",
        f"reflected vs (b) bare_native:         {med['reflected'] / b:.2f}x slower  (target <= 1.5x)",
        f"reflected vs bare_native_full (old b): {med['reflected'] / med['bare_native_full']:.2f}x slower",
        f"reflected vs bare_native_reflect:     {med['reflected'] / med['bare_native_reflect']:.2f}x slower"
        "  (same guest work, no lguest work)",
        f"hcall_flush vs (a):                   {a / med['hcall_flush']:.1f}x  (target >= 4x)",
        f"hcall_clockevent vs (a):              {a / med['hcall_clockevent']:.1f}x  (target >= 4x; virtual clock)",
        f"hcall_clockevent_arm vs (a):          {a / med['hcall_clockevent_arm']:.1f}x  (target >= 4x; virtual clock)",
        f"hcall_clockevent_py vs (a):           {a / med['hcall_clockevent_py']:.1f}x  (the Python handler)",
        f"hcall_clockevent_arm_py vs (a):       {a / med['hcall_clockevent_arm_py']:.1f}x  (the Python handler)",
        f"hcall_clockevent_wall vs (a):         {a / med['hcall_clockevent_wall']:.1f}x  (target >= 4x; wall clock)",
        f"hcall_clockevent_arm_wall vs (a): {a / med['hcall_clockevent_arm_wall']:.1f}x  (target >= 4x; wall clock)",
        f"syscall_ring3 vs (c) bare_native_ring3: {med['bare_native_ring3'] / med['syscall_ring3']:.2f}x"
        "  (target >= 0.8x)",
        f"syscall_ring3 vs syscall_ring1:       {med['syscall_ring1'] / med['syscall_ring3']:.2f}x",
        f"syscall_ring3 vs reflected:           {med['reflected'] / med['syscall_ring3']:.1f}x  (target >= 15x)",
        f"syscall_ring3 vs reflected_loop (the old Python path): "
        f"{med['reflected_loop'] / med['syscall_ring3']:.1f}x",
        f"reflected vs reflected_loop (before): {med['reflected_loop'] / med['reflected']:.1f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    res = measure(n=5_000 if quick else 100_000, rounds=1 if quick else 5)
    print(f"# {os.cpu_count()} vCPUs (shared), Python {sys.version.split()[0]}")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
