#!/usr/bin/env python3
"""Differential fuzz harness: the compiled core against the pure-Python core.

Every input (a byte string) is decoded into

* a guest state: 2-8 pages of guest memory (GuestMemory with guard pages,
  so a host access just outside guest RAM faults at once), page_offset,
  syscall_vector, registers, IDT entries, esp1/ss1, stack_pages,
  lguest_data (often near the very end of memory), its fields (irq_enabled,
  blocked_interrupts, the async hypercall ring, noirq window,
  kernel_address, syscall_vec), optionally page-table mode with a random
  2-level table, irqs_pending, halted, changed, raw memory patches;
* a sequence of operations: the seed functions (maybe_do_interrupt,
  deliver_trap, set_guest_interrupt, load_guest_idt_entry, guest_set_stack,
  pin_stack_pages, copy_traps, write_timestamp), the checked accessors
  (lgread/lgwrite, ld_read_u32/ld_write_u32, guest_pa, pin_page,
  address_ok), the control plane (hypercalls.do_hcall / do_hypercalls /
  initialize, traps.handle_trap, run_guest with a ScriptedBackend), the
  virtual clock, and host-side state changes.

The same program runs on a guest of each core (``lguest.load_core``).  After
every operation the observable state must be identical: registers, IDT,
GDT, every byte of guest memory, dead/restart, irqs_pending, halted,
changed, esp1, ss1, ts, pending_notify, hcall_pending, next_hcall,
break_out, irq_counts, the guest's fields, the armed timer, and the
operation's own result.  Guest-visible arguments are always valid u32s, so
an exception escaping a core operation is a finding too (API.md: core
operations never raise on guest misbehaviour).  Under the sanitizer build
(fuzz/run_sanitized.sh) any ASan/UBSan report aborts the run.

Modes:
  fuzz_core.py [libFuzzer flags] [CORPUS_DIR...]   atheris (coverage guided)
  fuzz_core.py FILE...                             replay files (atheris does this too)
  fuzz_core.py --replay FILE... [--trace]          replay without atheris, print the program
  fuzz_core.py --random N [--seed S]               no atheris: N random inputs
  fuzz_core.py --make-seeds DIR                    write the seed corpus

Environment:
  LGUEST_FUZZ_PY_EVERY=k   run the Python core (the differential check) on 1 input in k
                           (default 1 = every input); the other inputs run the compiled
                           core alone (sanitizers + no-exception check only).
  LGUEST_FUZZ_TRACE=1      print each operation and its result.
"""

from __future__ import annotations

import os
import random
import sys
import zlib

try:
    import atheris
except ImportError:  # the random / replay modes work without it
    atheris = None

# Python-level coverage (atheris bytecode instrumentation), by
# LGUEST_FUZZ_INSTRUMENT: "control" (default: hypercalls, traps, run: the
# control plane), "all" (every lguest module, the pure-Python core too:
# about 3x slower), "none".  The compiled core reports its own edges when
# built with -fsanitize=fuzzer-no-link (fuzz/run_sanitized.sh).
_INSTRUMENT = os.environ.get("LGUEST_FUZZ_INSTRUMENT", "control")
if atheris is not None and "--replay" not in sys.argv and "--random" not in sys.argv and _INSTRUMENT != "none":
    import lguest  # noqa: I001 - the core modules stay uninstrumented unless "all"
    if _INSTRUMENT == "all":
        for _m in [m for m in sys.modules if m == "lguest" or m.startswith("lguest.")]:
            del sys.modules[_m]
    with atheris.instrument_imports(include=["lguest"] if _INSTRUMENT == "all"
                                    else ["lguest.host.hypercalls", "lguest.host.traps", "lguest.host.run"]):
        import lguest
        from lguest.host import hypercalls as HC
        from lguest.host import run as RUN
        from lguest.host import traps as TR
else:
    import lguest
    from lguest.host import hypercalls as HC
    from lguest.host import run as RUN
    from lguest.host import traps as TR

import numpy as np  # noqa: E402

from lguest.constants import CHANGED_ALL, IDT_ENTRIES, PAGE_SIZE  # noqa: E402

CORES = {"cython": lguest.load_core("cython"), "python": lguest.load_core("python")}
TRACE = os.environ.get("LGUEST_FUZZ_TRACE", "") not in ("", "0") or "--trace" in sys.argv
PY_EVERY = max(1, int(os.environ.get("LGUEST_FUZZ_PY_EVERY", "1")))
U32 = 0xFFFFFFFF

INTERESTING = (
    0, 1, 2, 3, 4, 7, 8, 0x1F, 0x20, 0x40, 0x61, 0x69, 0x7B, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0x202,
    0xFFF, 0x1000, 0x6000, 0x8000, 0x8E00, 0x8F00, 0xAE00, 0xEE00, 0xEF00, 0xFFFF, 0x10000,
    0x3FFFFF, 0x400000, 0x7FFFFFFF, 0x80000000, 0xBFFFFFFF, 0xC0000000, 0xFFC00000, 0xFFFFF000,
    0xFFFFFFFB, 0xFFFFFFFC, 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF,
)
HCALLS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 11, 18, 0xFFFFFFFF)
TRAPS = (0, 1, 3, 6, 6, 7, 8, 13, 13, 14, 14, 17, 31, 31, 32, 0x40, 0x80, 255, 256, 0xFFFFFFFF)
LD_SIZE = 1136


class Finding(AssertionError):
    """A mismatch between the cores, or an exception out of a core operation."""


# --- input decoding ----------------------------------------------------------------------
class Reader:
    """Bytes to values; past the end every read is 0 (so every input is valid)."""

    __slots__ = ("d", "i", "n")

    def __init__(self, data: bytes) -> None:
        self.d = data
        self.i = 0
        self.n = len(data)

    def u8(self) -> int:
        i = self.i
        if i >= self.n:
            return 0
        self.i = i + 1
        return self.d[i]

    def u16(self) -> int:
        return self.u8() | self.u8() << 8

    def u32(self) -> int:
        i = self.i
        if i + 4 <= self.n:
            self.i = i + 4
            return int.from_bytes(self.d[i:i + 4], "little")
        return self.u16() | self.u16() << 16

    def raw(self, n: int) -> bytes:
        i = self.i
        b = self.d[i:i + n]
        self.i = i + len(b)
        return b + bytes(n - len(b))

    def more(self) -> bool:
        return self.i < self.n


class Spec:
    """What the input says about the world, decoded once, applied to both cores."""

    def __init__(self, r: Reader) -> None:
        flags = r.u8()
        self.pages = 2 + (flags & 7) % 7  # 2..8
        self.size = size = self.pages * PAGE_SIZE
        po = (flags >> 3) & 3
        self.page_offset = r.u32() if po == 3 else (0, 0xC0000000, 0)[po]
        self.syscall_vector = 0x80 if not flags & 0x20 else (0x40 if flags & 0x40 else r.u8())
        self.start_ns = r.u32() * 1_000_003 if flags & 0x80 else 0
        self.r = r
        image = bytearray(size)
        # lguest_data: None, near the end of memory, page aligned, anywhere, wild
        k = r.u8()
        kind = k & 7
        if kind == 0:
            ld = None
        elif kind in (1, 2):
            ld = max(0, size - LD_SIZE - (r.u8() % 24)) if kind == 1 else max(0, size - r.u16() % (LD_SIZE + 64))
        elif kind == 3:
            ld = (r.u8() % self.pages) * PAGE_SIZE
        elif kind == 4:
            ld = r.u16() % size
        elif kind == 5:
            ld = r.u32()
        else:
            ld = (size - LD_SIZE) & ~3 if size >= LD_SIZE else 0
        self.lguest_data = ld
        self.ld_fields = k & 0x8
        self.image = image
        # fields of lguest_data (written only where they fit)
        if ld is not None and self.ld_fields == 0:
            self.put32(ld + 0, (0x200, 0, 0x200, r.u32())[r.u8() & 3])  # irq_enabled
            self.put32(ld + 4, (0, 1, r.u32(), 0xFFFFFFFE)[r.u8() & 3])  # blocked_interrupts
            n = r.u8() & 7  # pending ring entries
            for j in range(64):
                self.put8(ld + 20 + j, 0xFF)
            for _ in range(n):
                slot = r.u8() & 63
                self.put8(ld + 20 + slot, r.u8() & 0x7F)
                self.put32(ld + 84 + slot * 16, HCALLS[r.u8() % len(HCALLS)])
                for a in range(1, 4):
                    self.put32(ld + 84 + slot * 16 + 4 * a, self.val(r))
            self.put32(ld + 1120, self.val(r))  # noirq_start
            self.put32(ld + 1124, self.val(r))  # noirq_end
            self.put32(ld + 1128, (0xC0000000, 0, r.u32(), 0xFFC00000)[r.u8() & 3])  # kernel_address
            self.put32(ld + 1132, (0x80, 0x40, self.syscall_vector, r.u32())[r.u8() & 3])  # syscall_vec
        # page tables
        self.pgdir = None
        self.pgdir_mode = False
        t = r.u8()
        if t & 1:
            pd = (r.u8() % self.pages) * PAGE_SIZE
            pt = (r.u8() % self.pages) * PAGE_SIZE
            self.pgdir = pd
            self.pgdir_mode = bool(t & 2)
            for _ in range(1 + (t >> 2) % 6):
                idx = (self.page_offset >> 22, 0, r.u16() & 1023, 1023)[r.u8() & 3]
                self.put32(pd + idx * 4, (pt | (0x67, 0x7, 0x1, 0, 0x63, r.u16())[r.u8() % 6]) & U32)
            for _ in range(r.u8() & 15):
                idx = r.u16() & 1023
                frame = (r.u8() % (self.pages + 2)) << 12
                self.put32(pt + idx * 4, frame | (0x67, 0x7, 0x5, 0x1, 0, 0x3)[r.u8() % 6])
        # code at interesting places (vmcall, in/out)
        for _ in range(r.u8() & 3):
            at = self.addr(r)
            code = (b"\x0f\x01\xc1", b"\xe4\x10", b"\xe5\x10", b"\xec", b"\x66\xed", b"\xe6\x70", b"\xee", b"\x90")
            self.patch(at, code[r.u8() % len(code)])
        # raw patches
        for _ in range(r.u8() & 3):
            at = self.addr(r)
            self.patch(at, r.raw(r.u8() & 15))
        # registers
        self.regs = [0] * 18
        for i in range(18):
            self.regs[i] = 0
        rk = r.u8()
        self.regs[8] = self.regs[9] = self.regs[10] = 0x69
        self.regs[14] = (0x61, 0x73, 0x60, r.u32())[rk & 3]  # cs
        self.regs[17] = (0x69, 0x7B, 0x68, r.u32())[(rk >> 2) & 3]  # ss
        self.regs[15] = (0x202, 0x2, 0x246, r.u32())[(rk >> 4) & 3]  # eflags
        self.regs[16] = self.vaddr(r)  # esp
        self.regs[13] = self.vaddr(r)  # eip
        self.regs[12] = self.val(r)  # errcode
        for i in range(4):
            self.regs[i] = HCALLS[r.u8() % len(HCALLS)] if i == 0 else self.val(r)
        # IDT: a few raw entries
        self.idt = []
        for _ in range(r.u8() & 15):
            num = (r.u8(), 0x20 + (r.u8() & 31), 14, 13, 6, 7, 0x80, 0x40)[r.u8() & 7]
            self.idt.append((num, self.val(r), self.gate_hi(r)))
        self.esp1 = self.vaddr(r)
        self.ss1 = (0x69, 0x68, 0x6A, r.u8())[r.u8() & 3]
        sp = r.u8()
        self.stack_pages = sp % 4 if sp < 0xF0 else sp & 63
        self.irqs_pending = (0, 1, 1 << (r.u8() & 31), r.u32())[r.u8() & 3]
        self.halted = bool(r.u8() & 1)
        self.changed = r.u8() & 7
        self.noirq = (r.u32(), r.u32()) if r.u8() & 1 else None
        self.has_py = True

    # values ---------------------------------------------------------------------------------
    def put32(self, at: int, v: int) -> None:
        if 0 <= at and at + 4 <= self.size:
            self.image[at:at + 4] = (v & U32).to_bytes(4, "little")

    def put8(self, at: int, v: int) -> None:
        if 0 <= at < self.size:
            self.image[at] = v & 0xFF

    def patch(self, at: int, data: bytes) -> None:
        at = min(at, self.size)
        data = data[: self.size - at]
        self.image[at:at + len(data)] = data

    def addr(self, r: Reader) -> int:
        """A guest-physical address, biased to page boundaries and the end of memory."""
        k = r.u8() & 7
        size = self.size
        if k == 0:
            return r.u16() % size
        if k == 1:
            return (size - 1 - (r.u8() & 31)) & U32
        if k == 2:
            return ((r.u8() % self.pages) * PAGE_SIZE - 8 + (r.u8() & 15)) & U32
        if k == 3:
            return (size + (r.u8() & 15) - 4) & U32
        if k == 4 and self.lguest_data is not None:
            return (self.lguest_data + r.u16() % (LD_SIZE + 16)) & U32
        if k == 5:
            return INTERESTING[r.u8() % len(INTERESTING)]
        if k == 6:
            return r.u32()
        return (r.u8() * 4) % size

    def vaddr(self, r: Reader) -> int:
        """A guest-virtual address (page_offset + physical, or wild)."""
        k = r.u8() & 3
        if k == 3:
            return r.u32()
        return (self.addr(r) + (self.page_offset if k != 2 else 0)) & U32

    def val(self, r: Reader) -> int:
        k = r.u8() & 3
        if k == 0:
            return INTERESTING[r.u8() % len(INTERESTING)]
        if k == 1:
            return r.u8()
        if k == 2:
            return self.vaddr(r)
        return r.u32()

    def gate_hi(self, r: Reader) -> int:
        k = r.u8()
        handler_hi = (self.page_offset if k & 1 else r.u16() << 16) & 0xFFFF0000
        flags = (0x8E00, 0x8F00, 0xEE00, 0xEF00, 0x8C00, 0x0E00, 0xAE00, r.u16())[(k >> 1) & 7]
        return handler_hi | flags


# --- the two worlds ---------------------------------------------------------------------------
class FuzzClock(lguest.VirtualClock):
    """A virtual clock; when a halted guest has nothing left to wait for, the
    run loop would sleep forever: break it out instead (deterministically)."""

    cpu = None

    def advance_to_next(self) -> bool:
        if super().advance_to_next():
            return True
        if self.cpu is not None:
            self.cpu.break_out = True
        return True


class FuzzBackend(RUN.ScriptedBackend):
    def __init__(self, steps, demand):
        super().__init__(steps)
        self.demand = list(demand)

    def demand_page(self, cpu, vaddr, errcode):
        return self.demand.pop(0) if self.demand else False


_MEMS: dict[tuple[str, int], lguest.GuestMemory] = {}
_HOSTS: dict[int, lguest.Host] = {}


def _host(vector: int) -> lguest.Host:
    h = _HOSTS.get(vector)
    if h is None:
        h = _HOSTS[vector] = lguest.Host(syscall_vector=vector, used_vectors=lguest.UsedVectors())
    return h
_DEFAULTS = RUN.Backend.default_handlers
_DEFAULT_HOST_IDT = np.zeros((IDT_ENTRIES, 2), dtype=np.uint32)
CORES["cython"].setup_default_idt_entries(_DEFAULT_HOST_IDT, _DEFAULTS)


def _memory(core: str, pages: int) -> lguest.GuestMemory:
    m = _MEMS.get((core, pages))
    if m is None:
        m = _MEMS[(core, pages)] = lguest.GuestMemory(pages * PAGE_SIZE, guard_pages=True)
    return m


class World:
    def __init__(self, name: str, spec: Spec) -> None:
        self.name = name
        core = CORES[name]
        self.mem = mem = _memory(name, spec.pages)
        mem.view[:] = spec.image
        self.host = _host(spec.syscall_vector)
        self.clock = FuzzClock(spec.start_ns)
        self.guest = g = self.host.new_guest(mem, page_offset=spec.page_offset, clock=self.clock, core=core)
        self.cpu = c = g.new_cpu()
        self.clock.cpu = c
        g.lguest_data = spec.lguest_data
        if spec.pgdir_mode:
            g.pgdir = spec.pgdir
        c.regs.array[:] = spec.regs
        for num, lo, hi in spec.idt:
            c.idt[num] = (lo, hi)
        c.esp1 = spec.esp1
        c.ss1 = spec.ss1
        g.stack_pages = spec.stack_pages
        c.irqs_pending = spec.irqs_pending
        c.halted = spec.halted
        c.changed = spec.changed
        if spec.noirq is not None:
            g.noirq_start, g.noirq_end = spec.noirq
        self.host_idt = np.zeros((IDT_ENTRIES, 2), dtype=np.uint32)
        self.core = core
        self.run_context = None  # the cpu's RunContext, from its first "run"

    def observe(self, full: bool = True) -> tuple:
        """The observable state; ``full=False`` leaves out the big arrays
        (IDT, GDT, host IDT, memory): compared once at the end instead."""
        c, g = self.cpu, self.guest
        if not full:
            return (c.regs.array.tobytes(), g.dead, c.irqs_pending, c.halted, c.changed, c.esp1, c.ss1,
                    c.pending_notify, g.lguest_data, g.pgdir)
        if full:
            big = (c.idt.tobytes(), c.gdt.tobytes(), self.host_idt.tobytes(), self.mem.view.tobytes())
        else:
            big = (None, None, None, None)
        return (
            c.regs.array.tobytes(), *big,
            g.dead, bool(getattr(g, "restart", False)), c.irqs_pending, c.halted, c.changed, c.esp1, c.ss1,
            c.ts, c.pending_notify, c.last_pagefault, bool(c.hcall_pending), c.next_hcall, bool(c.break_out),
            c.irq_counts, g.lguest_data, g.pgdir, g.noirq_start, g.noirq_end, g.stack_pages,
            g.kernel_address, g.tsc_khz, self.clock.armed(c), self.clock.now_ns(),
        )


FIELDS = (
    "regs", "idt", "gdt", "host_idt", "memory", "dead", "restart", "irqs_pending", "halted", "changed",
    "esp1", "ss1", "ts", "pending_notify", "last_pagefault", "hcall_pending", "next_hcall", "break_out",
    "irq_counts", "lguest_data", "pgdir", "noirq_start", "noirq_end", "stack_pages", "kernel_address",
    "tsc_khz", "timer", "now",
)


LIGHT_FIELDS = ("regs", "dead", "irqs_pending", "halted", "changed", "esp1", "ss1", "pending_notify",
                "lguest_data", "pgdir")


def _diff(a: tuple, b: tuple) -> str:
    out = []
    for name, x, y in zip(FIELDS if len(a) == len(FIELDS) else LIGHT_FIELDS, a, b, strict=False):
        if x == y:
            continue
        if isinstance(x, bytes) and isinstance(y, bytes):
            width = 4 if name != "memory" else 1
            diffs = [i for i in range(0, min(len(x), len(y)), width) if x[i:i + width] != y[i:i + width]][:8]
            out.append(f"{name}: differ at byte offsets {diffs}: "
                       + ", ".join(f"{i:#x}: {x[i:i + 4].hex()} vs {y[i:i + 4].hex()}" for i in diffs))
        else:
            out.append(f"{name}: cython={x!r} python={y!r}")
    return "; ".join(out)


# --- operations --------------------------------------------------------------------------------
def decode_ops(spec: Spec) -> list[tuple]:
    """The operation list: (name, args...) tuples, decoded once for both worlds."""
    r = spec.r
    ops = []
    n = 1 + r.u8() % 12
    for _ in range(n):
        if not r.more() and ops:
            break
        k = r.u8() % 30
        if k in (0, 1, 2):
            ops.append(("maybe_do_interrupt",))
        elif k in (3, 4):
            ops.append(("deliver_trap", TRAPS[r.u8() % len(TRAPS)] if r.u8() & 1 else spec.val(r)))
        elif k == 5:
            ops.append(("set_guest_interrupt", spec.val(r), spec.gate_hi(r), r.u8() & 1))
        elif k in (6, 7):
            num = (r.u8(), 0x20 + (r.u8() & 31), 14, 31, 2, 256, spec.val(r), 0x80)[r.u8() & 7]
            ops.append(("load_guest_idt_entry", num, spec.val(r), spec.gate_hi(r)))
        elif k == 8:
            seg = (0x69, 0x68, 0x6B, 0x7B, 0x169, spec.val(r), 0x61, 0xFFFFFF69)[r.u8() & 7]
            pages = (0, 1, 2, 3, 0xFFFFFFFF, spec.val(r))[r.u8() % 6]
            ops.append(("guest_set_stack", seg, spec.vaddr(r), pages))
        elif k == 9:
            ops.append(("pin_stack_pages",))
        elif k == 10:
            ops.append(("copy_traps",))
        elif k == 11:
            ops.append(("write_timestamp",))
        elif k == 12:
            at = spec.addr(r)
            lengths = (0, 1, 3, 4, 8, 128, r.u16() % (spec.size + 64), spec.size)
            ops.append(("lgread", at, lengths[r.u8() & 7]))
        elif k == 13:
            ops.append(("lgwrite", spec.addr(r), r.raw(r.u8() % 20)))
        elif k in (14, 15, 16):
            call = HCALLS[r.u8() % len(HCALLS)]
            ops.append(("do_hcall", call, spec.val(r), spec.val(r), spec.val(r)))
        elif k == 17:
            ops.append(("do_hypercalls",))
        elif k == 18:
            ops.append(("initialize", spec.addr(r) if r.u8() & 1 else (spec.lguest_data or 0)))
        elif k in (19, 20):
            ops.append(("handle_trap", TRAPS[r.u8() % len(TRAPS)], spec.val(r), spec.vaddr(r), r.u8() & 3))
        elif k == 21:
            steps = []
            for _ in range(r.u8() & 3):
                s = r.u8() & 3
                if s == 0:
                    steps.append(TRAPS[r.u8() % len(TRAPS)])
                elif s == 1:
                    steps.append({"trapnum": 31, "eax": HCALLS[r.u8() % len(HCALLS)], "ebx": spec.val(r),
                                  "ecx": spec.val(r), "edx": spec.val(r)})
                elif s == 2:
                    steps.append({"trapnum": 14, "cr2": spec.vaddr(r), "errcode": r.u8() & 7})
                else:
                    steps.append({"trapnum": TRAPS[r.u8() % len(TRAPS)], "eip": spec.vaddr(r),
                                  "cs": (0x61, 0x73)[r.u8() & 1], "errcode": (0, spec.val(r))[r.u8() & 1]})
            ops.append(("run", tuple(steps), r.u8() & 3))
        elif k == 22:
            ops.append(("advance", (0, 1, 1000, r.u32(), 10**9)[r.u8() % 5]))
        elif k == 23:
            ops.append(("set_clockevent", (0, 1, 1000, spec.val(r))[r.u8() & 3]))
        elif k == 24:
            what = r.u8() % 12
            if what == 0:
                ops.append(("host", "irqs_pending", spec.val(r)))
            elif what == 1:
                ops.append(("host", "send_irq", r.u8() & 31))
            elif what == 2:
                ops.append(("host", "halted", bool(r.u8() & 1)))
            elif what == 3:
                ops.append(("host", "lguest_data", None if r.u8() & 1 else spec.addr(r)))
            elif what == 4:
                ops.append(("host", "pgdir", None if r.u8() & 1 else spec.addr(r)))
            elif what == 5:
                ops.append(("host", "noirq", spec.vaddr(r), spec.vaddr(r)))
            elif what == 6:
                ops.append(("host", "stack_pages", r.u8() & 7))
            elif what == 7:
                ops.append(("host", "esp1", spec.vaddr(r)))
            elif what == 8:
                ops.append(("host", "ss1", spec.val(r)))
            elif what == 9:
                ops.append(("host", "changed", r.u8() & 7))
            elif what == 10:
                ops.append(("host", "idt", r.u8(), spec.val(r), spec.gate_hi(r)))
            else:
                ops.append(("host", "kill", "fuzz kill"))
        elif k == 25:
            ops.append(("reg", r.u8() % 18, spec.vaddr(r) if r.u8() & 1 else spec.val(r)))
        elif k == 26:
            at = spec.addr(r)
            ops.append(("memwrite", at, r.raw(r.u8() % 12)))
        elif k == 27:
            q = r.u8() % 6
            ops.append(("query", q, spec.vaddr(r) if q in (0, 1) else spec.val(r), (0, 1, 4, 8, 1136)[r.u8() % 5]))
        elif k == 28:
            ops.append(("ld_access", r.u8() & 1, (0, 4, 8, 12, 16, 1108, 1112, 1116, 1132, 1136, 1132 + 4,
                                                  spec.val(r))[r.u8() % 12], spec.val(r)))
        else:
            ops.append(("module", spec.val(r), spec.val(r), spec.val(r)))
    return ops


def _apply(w: World, op: tuple):
    """Run one operation on one world; returns a comparable result."""
    c, g = w.cpu, w.guest
    name = op[0]
    if name == "maybe_do_interrupt":
        return c.maybe_do_interrupt()
    if name == "deliver_trap":
        return c.deliver_trap(op[1])
    if name == "set_guest_interrupt":
        return c.set_guest_interrupt(op[1], op[2], bool(op[3]))
    if name == "load_guest_idt_entry":
        return c.load_guest_idt_entry(op[1], op[2], op[3])
    if name == "guest_set_stack":
        return c.guest_set_stack(op[1], op[2], op[3])
    if name == "pin_stack_pages":
        return c.pin_stack_pages()
    if name == "copy_traps":
        return c.copy_traps(w.host_idt, _DEFAULTS)
    if name == "write_timestamp":
        return c.write_timestamp()
    if name == "lgread":
        return c.lgread(op[1], op[2])
    if name == "lgwrite":
        return c.lgwrite(op[1], op[2])
    if name == "do_hcall":
        return HC.do_hcall(c, HC.HcallArgs(op[1], op[2], op[3], op[4]))
    if name == "do_hypercalls":
        c.hcall_pending = True
        return HC.do_hypercalls(c)
    if name == "initialize":
        c.regs.eax, c.regs.ebx = 1, op[1]
        return HC.initialize(c)
    if name == "handle_trap":
        c.regs.trapnum = op[1]
        c.regs.errcode = op[2]
        c.last_pagefault = op[3]
        return TR.handle_trap(c, RUN.RunContext(c, FuzzBackend([], [bool(op[4] & 1)])) if op[4] & 2 else None)
    if name == "run":
        backend = FuzzBackend(op[1], [bool(op[2] & 1)] * 4)
        if w.run_context is None:
            # What RunContext.ensure_host_idt does on the first run, minus
            # rebuilding the (input-independent) default table in Python every time.
            w.run_context = RUN.RunContext(c, backend, host_idt=_DEFAULT_HOST_IDT.copy())
            c.changed |= CHANGED_ALL
        w.run_context.backend = backend  # the host IDT and stats persist, as on one Launcher
        try:
            ex = RUN.run_guest(c, backend, context=w.run_context)
        except RUN.GuestKilled as e:
            return ("killed", e.message, e.restart, backend.entries, backend.calls)
        return ("exit", ex.reason, ex.notify, backend.entries, backend.calls)
    if name == "advance":
        return w.clock.advance(op[1])
    if name == "set_clockevent":
        return c.set_clockevent(op[1])
    if name == "host":
        what = op[1]
        if what == "send_irq":
            return c.send_irq(op[2])
        if what == "lguest_data":
            g.lguest_data = op[2]
        elif what == "pgdir":
            g.pgdir = op[2]
        elif what == "noirq":
            g.noirq_start, g.noirq_end = op[2], op[3]
        elif what == "stack_pages":
            g.stack_pages = op[2]
        elif what == "idt":
            c.idt[op[2]] = (op[3], op[4])
        elif what == "kill":
            g.kill(op[2])
        else:
            setattr(c, what, op[2])
        return None
    if name == "reg":
        c.regs.array[op[1]] = op[2]
        return None
    if name == "memwrite":
        at, data = op[1], op[2]
        if at + len(data) <= w.mem.size:
            w.mem.write(at, data)
        return None
    if name == "query":
        q, v, n = op[1], op[2], op[3]
        if q == 0:
            return g.guest_pa(v)
        if q == 1:
            return g.pin_page(v)
        if q == 2:
            ok = g.address_ok(v, n)
            end = (v + n) & U32
            if ok != (end // PAGE_SIZE < w.mem.size // PAGE_SIZE and end >= v):  # ABI.md §4
                raise Finding(f"{w.name}: address_ok({v:#x}, {n}) = {ok} contradicts lguest_address_ok")
            return ok
        if q == 3:
            return g.check_syscall_vector()
        if q == 4:
            return (g.could_be_syscall(v & 0xFF), g.direct_trap(v & 0xFF))
        return (TR.emulate_insn(c) if v & 1 else TR.is_hypercall(c))
    if name == "ld_access":
        if op[1]:
            return g.ld_write_u32(op[2], op[3])
        return g.ld_read_u32(op[2])
    if name == "module":
        m = w.core
        a, b, t = op[1], op[2], op[3]
        return (m.has_err(t), m.idt_address(a, b), m.idt_type(a, b), m.idt_present(a, b),
                m.default_idt_entry(t & 0xFF, a), m.default_idt_entry(t & 0xFF, a, (b, t)))
    raise AssertionError(f"unknown op {op!r}")


def _run_op(w: World, op: tuple):
    try:
        return ("ok", _apply(w, op))
    except Finding:
        raise
    except Exception as e:  # noqa: BLE001 - every escaping exception is a finding
        return ("raised", type(e).__name__, str(e))


def _fmt(op: tuple) -> str:
    def f(x):
        if isinstance(x, int) and not isinstance(x, bool):
            return hex(x)
        if isinstance(x, bytes):
            return "b'" + x.hex() + "'"
        return repr(x)

    return op[0] + "(" + ", ".join(f(x) for x in op[1:]) + ")"


_count = 0


def _check_setup_default_idt_entries() -> None:
    """Input-independent: checked once at start-up, not per input."""
    tables = []
    for m in CORES.values():
        idt = np.zeros((IDT_ENTRIES, 2), dtype=np.uint32)
        m.setup_default_idt_entries(idt, _DEFAULTS)
        tables.append(idt.tobytes())
    if tables[0] != tables[1]:
        raise Finding("setup_default_idt_entries differs between the cores")


def one_input(data: bytes) -> None:
    try:
        _one_input(data, precise=False)
    except Finding as fast:
        if "final state" not in str(fast):
            raise
        # Localise: run again comparing the whole state after every operation.
        _one_input(data, precise=True)
        raise


def _one_input(data: bytes, precise: bool) -> None:
    global _count
    _count += 1
    spec = Spec(Reader(data))
    ops = decode_ops(spec)
    with_py = PY_EVERY == 1 or zlib.crc32(data) % PY_EVERY == 0
    cy = World("cython", spec)
    py = World("python", spec) if with_py else None
    if TRACE:
        print(f"-- {spec.pages} pages, page_offset={spec.page_offset:#x}, syscall_vector={spec.syscall_vector:#x}, "
              f"lguest_data={spec.lguest_data if spec.lguest_data is None else hex(spec.lguest_data)}, "
              f"pgdir={spec.pgdir if not spec.pgdir_mode else hex(spec.pgdir)}")
        print(f"   regs={cy.cpu.regs!r}")
        print(f"   esp1={spec.esp1:#x} ss1={spec.ss1:#x} stack_pages={spec.stack_pages} "
              f"irqs_pending={spec.irqs_pending:#x} halted={spec.halted} "
              f"idt={[(n, hex(a), hex(b)) for n, a, b in spec.idt]}")
    if py is not None:
        a, b = cy.observe(), py.observe()
        if a != b:
            raise Finding("initial state differs: " + _diff(a, b))
    for i, op in enumerate(ops):
        rc = _run_op(cy, op)
        if TRACE:
            print(f"{i:2d} {_fmt(op)} -> {rc!r:.200}  dead={cy.guest.dead!r}")
        if py is not None:
            rp = _run_op(py, op)
            if rc != rp:
                raise Finding(f"op {i} {_fmt(op)}: result cython={rc!r:.300} python={rp!r:.300}")
            a, b = cy.observe(precise), py.observe(precise)
            if a != b:
                raise Finding(f"op {i} {_fmt(op)}: state differs: " + _diff(a, b))
        if rc[0] == "raised":
            raise Finding(f"op {i} {_fmt(op)}: exception escaped the cython core: {rc[1]}: {rc[2]}")
        if py is not None and rp[0] == "raised":
            raise Finding(f"op {i} {_fmt(op)}: exception escaped the python core: {rp[1]}: {rp[2]}")
    if py is not None and not precise:
        a, b = cy.observe(), py.observe()
        if a != b:
            raise Finding(f"final state differs after {len(ops)} ops: " + _diff(a, b))


# --- seeds ----------------------------------------------------------------------------------------
def make_seeds(directory: str, count: int = 12, seed: int = 1) -> None:
    """Small structured seeds: one per op kind with a sensible guest, plus random ones."""
    os.makedirs(directory, exist_ok=True)
    rnd = random.Random(seed)
    n = 0
    for k in range(30):
        for variant in range(2):
            if n >= count:
                break
            head = bytes([(variant * 3) | (1 << 3) * variant, 1 if variant else 6])  # pages/po, ld kind
            body = bytes(rnd.randrange(256) for _ in range(40 + 8 * variant))
            ops = bytes([4]) + bytes([k, rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)]) * 1
            ops += bytes([0, 17, 21, 3, 1, 0x1F])
            data = head + body + ops
            with open(os.path.join(directory, f"seed-{n:03d}"), "wb") as f:
                f.write(data)
            n += 1


def _random_mode(n: int, seed: int) -> None:
    rnd = random.Random(seed)
    import time

    t0 = time.monotonic()
    for i in range(n):
        data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(8, 200)))
        try:
            one_input(data)
        except Finding:
            path = f"crash-random-{seed}-{i}"
            with open(path, "wb") as f:
                f.write(data)
            print(f"finding after {i} inputs, saved {path}", file=sys.stderr)
            raise
        if i and i % 10000 == 0:
            print(f"{i} inputs, {i / (time.monotonic() - t0):.0f}/s", file=sys.stderr)
    dt = time.monotonic() - t0
    print(f"{n} inputs in {dt:.1f}s ({n / dt:.0f}/s), no finding", file=sys.stderr)


def main(argv: list[str]) -> None:
    assert "site-packages" in lguest.__file__ or os.environ.get("LGUEST_FUZZ_ALLOW_SOURCE"), (
        f"lguest imported from {lguest.__file__}: run through fuzz/run_sanitized.sh "
        "(or set LGUEST_FUZZ_ALLOW_SOURCE=1 to fuzz the source tree's build)")
    _check_setup_default_idt_entries()
    if "--make-seeds" in argv:
        make_seeds(argv[argv.index("--make-seeds") + 1])
        return
    if "--random" in argv:
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
        _random_mode(int(argv[argv.index("--random") + 1]), seed)
        return
    if "--replay" in argv:
        files = [a for a in argv[1:] if not a.startswith("--")]
        for path in files:
            print(f"== {path}")
            with open(path, "rb") as f:
                one_input(f.read())
            print("   no finding")
        return
    if atheris is None:
        raise SystemExit("atheris is not installed: use --random N or --replay FILE")
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
