#!/usr/bin/env python3
"""Guest-code fuzzer for the Unicorn backend: the guest is the attacker.

Every program is real i386 machine code run by a fresh
:class:`lguest.unicorn.UnicornLauncher` (the guest kernel at ring 1, or --
through an ``iret`` the prologue makes -- a user program at ring 3; flat or
paged at 0xC0000000).  Programs are either random byte streams or built from
a grammar by a tiny encoder (no assembler per program): hypercalls with
hostile arguments, ``int N``, segment loads, far jumps/calls/irets with
random frames, LOAD_GDT of call gates / TSS / task gates, page-table writes,
accesses and jumps into the host-owned range at 0xFFC00000, writes over the
code itself, in/out and string I/O, hlt/cli/sti/popf, tight loops...

What must hold after every program (else it is a *finding*):

* ``run(timeout)`` returned by its deadline + 0.5 s (``late``), and the
  worker answered at all (``hang``: the parent kills it);
* no signal, no sanitizer report, no escaped Python exception (``crash``,
  ``exception``);
* process RSS at most 32 MiB above its level after warm-up (``rss``), no
  single guest growing it by more than 32 MiB while it runs
  (``rss-one-guest``), no guest filling a host buffer (the Launcher's
  console) past 16 MiB (``console``);
* the host memory the emulated CPU can reach holds what the host put there
  (``switcher``): Unicorn maps guest RAM, the Switcher's GDT page (read-only)
  and its two page-table pages (PROT_NONE), and nothing else -- checked with
  ``uc.mem_regions()``; the GDT page holds the guest's GDT after the host's
  fixups (no system descriptors, DPL >= 1, accessed) plus the Switcher's
  descriptors, then zeros; the Switcher's page table maps only the GDT page;
  the shadow page directory holds only checked guest entries and entry 1023.
  The unmapped Switcher pages (IDT stubs, TSS, host IDT) are checked too --
  for the program's own launcher and again, later, for the last few
  launchers still alive in the process (isolation between guests);
* a long-lived reference guest (examples/guest) in the same process, run a
  couple of milliseconds between programs, prints exactly what it prints
  alone (``reference``);
* a kill reason is one of the documented messages (``undocumented-kill``).

Workers are subprocesses fed programs as JSON lines on stdin; a hang or a
crash kills/restarts the worker and the program that caused it is saved.

    python fuzz/fuzz_guest.py --seconds 60 --workers 1 --seed 1 [--mode bytes|structured|both]
    python fuzz/fuzz_guest.py --replay fuzz/findings/guest/FILE.json [--minimise]
    LGUEST_SAN_CC=gcc fuzz/run_sanitized.sh fuzz/fuzz_guest.py --seconds 60 --late-margin 2  # ASan+UBSan
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import queue
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FINDINGS_DIR = HERE / "findings" / "guest"

# --- guest layout (guest-physical; the kernel sees BASE + pa) ----------------------------------
MEM = 1 << 20
PAGED_OFFSET = 0xC0000000
SWITCHER = 0xFFC00000
PA_PROLOGUE = 0x1000
PA_LDATA = 0x2000  # struct lguest_data (1136 bytes)
PA_HANDLER = 0x3000  # the fault handler
PA_SHUTDOWN = 0x3200  # SHUTDOWN stub
PA_SYSCALL = 0x3300  # the int $0x80 handler: shutdown
PA_CONT = 0x3F00  # u32: where the fault handler resumes (the next item)
PA_COUNT = 0x3F04  # u32: faults taken so far
PA_MSG = 0x4000  # the SHUTDOWN message
PA_GDT = 0x5000  # scratch GDT for LOAD_GDT
PA_TSS = 0x6000  # scratch TSS (task switches)
PA_KSTACK = 0x8000  # kernel stack top (SET_STACK)
PA_USTACK = 0xA000  # user stack top
PA_BODY = 0x10000  # the program
BODY_MAX = 0x8000
PA_SCRATCH = 0x20000  # scratch data, a spare page directory at 0x20000
MAX_FAULTS = 48
LD_STATUS, LD_HCALLS, LD_SYSCALL_VEC = 20, 84, 1132

REG = {"eax": 0, "ecx": 1, "edx": 2, "ebx": 3, "esp": 4, "ebp": 5, "esi": 6, "edi": 7}
SREG = {"es": 0, "cs": 1, "ss": 2, "ds": 3, "fs": 4, "gs": 5}


# --- a tiny i386 encoder --------------------------------------------------------------------
def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def u16(v: int) -> bytes:
    return struct.pack("<H", v & 0xFFFF)


def mov_ri(reg: str, v: int) -> bytes:
    return bytes([0xB8 + REG[reg]]) + u32(v)


def movl_mi(addr: int, v: int) -> bytes:  # movl $v, addr
    return b"\xc7\x05" + u32(addr) + u32(v)


def vmcall() -> bytes:
    return b"\x0f\x01\xc1"


def hypercall(nr: int, a1: int = 0, a2: int = 0, a3: int = 0, *, patched: bool = False) -> bytes:
    return (mov_ri("eax", nr) + mov_ri("ebx", a1) + mov_ri("ecx", a2) + mov_ri("edx", a3)
            + (b"\xcd\x1f" if patched else vmcall()))


def jmp_abs(target: int) -> bytes:  # mov $target,%ecx; jmp *%ecx
    return mov_ri("ecx", target) + b"\xff\xe1"


def gate(handler: int, flags: int, selector: int = 0x61) -> tuple[int, int]:
    return (selector << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | flags


def descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> bytes:
    a = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    b = ((base >> 16) & 0xFF) | (access << 8) | (((limit >> 16) & 0xF) << 16) | (flags << 20) | (base & 0xFF000000)
    return u32(a) + u32(b)


def gate_descriptor(offset: int, selector: int, typ: int, dpl: int) -> bytes:
    """A call gate (0xC), task gate (0x5), interrupt/trap gate (0xE/0xF) for the GDT."""
    a = (selector << 16) | (offset & 0xFFFF)
    b = (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (typ << 8)
    return u32(a) + u32(b)


# --- program generation ------------------------------------------------------------------------
LHCALLS = list(range(0, 18))
INTERESTING_SEL = [0, 3, 0x08, 0x50, 0x53, 0x58, 0x5B, 0x60, 0x61, 0x63, 0x68, 0x69, 0x6B, 0x73, 0x7B, 0x80,
                   0x83, 0x30, 0x31, 0x33, 0x38, 0x3B, 0xA0, 0xA1, 0xA3, 0xF8, 0xFB, 0x100, 0xFFFF, 0x4, 0x7]


class Gen:
    """Builds one program spec from an RNG."""

    def __init__(self, rng: random.Random, paged: bool, ring: int) -> None:
        self.r = rng
        self.paged = paged
        self.base = PAGED_OFFSET if paged else 0
        self.ring = ring
        self.data: list[tuple[int, bytes]] = []

    def u32(self) -> int:
        return self.r.getrandbits(32)

    def addr(self) -> int:
        """A virtual address biased to edges: RAM's end, the host range, the program."""
        r, b = self.r, self.base
        k = r.randrange(14)
        if k == 0:
            return self.u32()
        if k == 1:
            return SWITCHER + r.choice([0, 0x100, 0x800, 0xFF0, 0x1000, 0x1080, 0x1100, 0x1800, 0x2FDC, 0x2FFC,
                                        0x3000, 0x3FFC, 0x4000, 0x4FFC, 0x5000, r.randrange(0x5000)])
        if k == 2:
            return (0xFFFFFFFF - r.randrange(16)) & ~r.choice([0, 3])
        if k == 3:
            return b + MEM - r.choice([1, 2, 3, 4, 8, 16, 4096, 0, -4096, -1])
        if k == 4:
            return MEM - r.choice([1, 4, 4096, 8192, 0, -4])  # physical-looking, or the identity map
        if k == 5:
            return b + PA_BODY + r.randrange(0x800)
        if k == 6:
            return b + PA_SCRATCH + r.randrange(0x10000)
        if k == 7:
            return b + r.choice([PA_LDATA, PA_HANDLER, PA_CONT, PA_KSTACK - 4, PA_USTACK - 4, PA_GDT, 0])
        if k == 8:
            return b + MEM - 8192 + 4 * r.randrange(2048)  # the page tables
        if k == 9:
            return r.choice([0, 4, 0x1000, 0xFFF, 0x80000000, 0x7FFFFFFC, PAGED_OFFSET, PAGED_OFFSET - 4])
        if k == 10:
            return 0xFFC00000 - r.choice([4, 1, 4096, 0x400000])
        if k == 11:
            return b + r.randrange(MEM)
        if k == 12:
            return r.randrange(0x10000)
        return b + PA_SCRATCH + 4 * r.randrange(1024)

    def value(self) -> int:
        r = self.r
        k = r.randrange(6)
        if k == 0:
            return self.u32()
        if k == 1:
            return self.addr()
        if k == 2:
            return r.choice([0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFF, 0x1000, 0x7FFFFFFF, 0x80000000,
                             0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFC, 0xFFFFF000, 31, 32, 33, 255, 256, 1135, 1136])
        if k == 3:
            return r.choice(INTERESTING_SEL)
        if k == 4:
            return r.randrange(64)
        return self.addr() & ~0xFFF | r.choice([0x1, 0x3, 0x7, 0x67, 0x83, 0x87, 0xE7, 0x27])  # pte-ish

    def sel(self) -> int:
        return self.r.choice(INTERESTING_SEL) if self.r.random() < 0.8 else self.r.getrandbits(16)

    # ---- items (each one a few instructions; position independent) ----
    def it_hypercall(self) -> bytes:
        r = self.r
        nr = r.choice(LHCALLS) if r.random() < 0.85 else r.choice([self.u32(), 18, 19, 31, 64, 99, 0x80000000])
        a1, a2, a3 = self.value(), self.value(), self.value()
        if nr == 2 and r.random() < 0.8:  # SHUTDOWN ends the program: mostly not
            nr = 17
        if nr == 1 and r.random() < 0.7:
            nr = 0
        if nr == 0:  # FLUSH_ASYNC: a ring of random calls
            self.async_ring()
        elif nr == 3:  # LOAD_GDT
            self.gdt_table()
            a1 = PA_GDT if r.random() < 0.8 else a1
            a2 = r.choice([14, 16, 17, 21, 32, 33, 0, 1, 0xFFFFFFFF, a2]) if r.random() < 0.9 else a2
        elif nr == 4:  # NEW_PGTABLE
            self.spare_pgdir()
            a1 = r.choice([MEM - 4096, PA_SCRATCH, PA_SCRATCH + 1, MEM, 0, a1])
        elif nr == 6:  # LOAD_IDT_ENTRY
            a1 = r.choice([r.randrange(256), r.randrange(300), 0x80, 0x1F, 0x20, 13, 14, 8, a1])
            h = self.base + PA_HANDLER if r.random() < 0.7 else self.addr()
            lo, hi = gate(h, r.choice([0x8E00, 0x8F00, 0xEE00, 0xEF00, 0xAF00, 0x0F00, 0x8500, 0x8C00, 0x8F00]),
                          self.sel() if r.random() < 0.2 else 0x61)
            a2, a3 = (lo, hi) if r.random() < 0.85 else (a2, a3)
        elif nr == 7:  # SET_STACK
            a1 = r.choice([0x69, 0x69, 0x61, 0x7B, 0x68, 0, a1])
            a2 = r.choice([self.base + PA_KSTACK, a2])
            a3 = r.choice([0, 1, 1, 2, 3, 0xFFFFFFFF, a3])
        elif nr == 9:  # SET_CLOCKEVENT
            a1 = r.choice([0, 1, 10, 1000, 100000, 0xFFFFFFFF, a1])
        elif nr == 14:  # SET_PTE
            a1 = r.choice([MEM - 4096, PA_SCRATCH, a1])
        elif nr == 15:  # SET_PMD
            a1 = r.choice([MEM - 4096, PA_SCRATCH, a1])
            a2 = r.choice([r.randrange(1024), 1023, 768, a2])
        elif nr == 17:  # NOTIFY
            a1 = r.choice([PA_MSG, MEM - 1, MEM, PA_BODY, a1])
        elif nr == 2:
            a1 = r.choice([PA_MSG, a1])
        return hypercall(nr, a1, a2, a3, patched=r.random() < 0.3)

    def async_ring(self) -> None:
        r = self.r
        status = bytearray(b"\xff" * 64)
        calls = bytearray(64 * 16)
        for _ in range(r.randrange(1, 8)):
            i = r.randrange(64)
            status[i] = 0
            nr = r.choice(LHCALLS + [self.u32()])
            struct.pack_into("<IIII", calls, 16 * i, nr if nr not in (1, 2) else 17, self.value(), self.value(),
                             self.value())
        self.data.append((PA_LDATA + LD_STATUS, bytes(status)))
        self.data.append((PA_LDATA + LD_HCALLS, bytes(calls)))

    def gdt_table(self) -> None:
        r = self.r
        flat = {12: descriptor(0, 0xFFFFF, 0xBB), 13: descriptor(0, 0xFFFFF, 0xB3),
                14: descriptor(0, 0xFFFFF, 0xFB), 15: descriptor(0, 0xFFFFF, 0xF3)}
        out = bytearray(40 * 8)
        for i in range(40):
            k = r.randrange(10)
            if i in flat and r.random() < 0.8:
                d = flat[i]
            elif k == 0:
                d = gate_descriptor(self.base + PA_BODY + r.randrange(0x100), r.choice([0x50, 0x58, 0x61, 0x60, 0x73]),
                                    0xC, r.choice([0, 1, 3]))  # call gate, e.g. into ring 0
            elif k == 1:
                d = descriptor(PA_TSS + self.base, 103, r.choice([0x89, 0xA9, 0xE9, 0x8B]), 0)  # a TSS
            elif k == 2:
                d = gate_descriptor(0, r.choice([0x80, 0xB0, 0xA8]), 0x5, r.choice([0, 1, 3]))  # task gate
            elif k == 3:
                d = descriptor(r.choice([0, SWITCHER, self.u32()]), r.getrandbits(20),
                               r.choice([0x9B, 0x93, 0xBB, 0xB3, 0xFB, 0xF3, 0x9F, 0x97, 0x82, 0x83]),
                               r.choice([0xC, 0x4, 0x0, 0x8]))
            elif k == 4:
                d = struct.pack("<Q", r.getrandbits(64))
            else:
                d = bytes(8)
            out[8 * i:8 * i + 8] = d
        self.data.append((PA_GDT, bytes(out)))
        # a TSS whose task runs at ring 0 on the Switcher's segments, or the guest's
        tss = bytearray(104)
        struct.pack_into("<I", tss, 28, self.base + MEM - 4096 if self.paged else 0)  # cr3
        struct.pack_into("<I", tss, 32, self.base + PA_BODY)  # eip
        struct.pack_into("<I", tss, 36, 2)  # eflags
        struct.pack_into("<I", tss, 56, self.base + PA_KSTACK)  # esp
        cs, ss = r.choice([(0x50, 0x58), (0x61, 0x69), (0x73, 0x7B), (self.sel(), self.sel())])
        struct.pack_into("<I", tss, 76, cs)
        for off in (72, 80, 84, 88, 92):
            struct.pack_into("<I", tss, off, ss)
        self.data.append((PA_TSS, bytes(tss)))

    def spare_pgdir(self) -> None:
        r = self.r
        pgd = bytearray(4096)
        for _ in range(r.randrange(1, 12)):
            i = r.choice([0, 768, 1023, 1022, r.randrange(1024)])
            struct.pack_into("<I", pgd, 4 * i, r.choice([(MEM - 8192) | 0x7, (MEM - 8192) | 0x87, 0x83 | (i << 22),
                                                         self.value(), (MEM + 4096) | 0x7, 0xFFC00000 | 0x87]))
        self.data.append((PA_SCRATCH, bytes(pgd)))

    def it_int(self) -> bytes:
        r = self.r
        k = r.randrange(6)
        if k == 0:
            return r.choice([b"\xcc", b"\xce", b"\xf1", b"\xcd\x03", b"\xcd\x80", b"\xcd\x1f", b"\xcd\x20"])
        if k == 1:  # a direct trap on a hostile stack
            return mov_ri("esp", self.addr()) + b"\xcd\x80"
        return b"\xcd" + bytes([r.randrange(256)])

    def it_segment(self) -> bytes:
        r = self.r
        sreg = r.choice(list(SREG))
        v = self.sel()
        if r.random() < 0.6:
            return b"\x66" + mov_ri("eax", v)[:1] + u16(v) + bytes([0x8E, 0xC0 | (SREG[sreg] << 3)])
        pops = {"es": b"\x07", "ss": b"\x17", "ds": b"\x1f", "fs": b"\x0f\xa1", "gs": b"\x0f\xa9"}
        if sreg == "cs":
            sreg = "ds"
        return b"\x68" + u32(v) + pops[sreg]

    def it_far(self) -> bytes:
        r = self.r
        k = r.randrange(7)
        sel, off = self.sel(), (self.addr() if r.random() < 0.5 else self.base + PA_BODY + r.randrange(0x400))
        if k == 0:
            return b"\xea" + u32(off) + u16(sel)  # ljmp
        if k == 1:
            return b"\x9a" + u32(off) + u16(sel)  # lcall
        frame = [off, sel, r.choice([0x202, 0x2, 0x3202, 0x20202, 0x4202, 0x100, self.u32()]),
                 self.addr(), self.sel()]
        if k in (2, 3):  # iret with a random frame (3 or 5 words)
            n = r.choice([3, 5])
            return b"".join(b"\x68" + u32(w) for w in reversed(frame[:n])) + b"\xcf"
        if k == 4:
            return b"".join(b"\x68" + u32(w) for w in reversed(frame[:2])) + b"\xcb"  # lret
        if k == 5:
            return b"".join(b"\x68" + u32(w) for w in reversed(frame)) + b"\xca" + u16(r.choice([0, 4, 0xFFFC]))
        return b"\x68" + u32(off) + b"\xc3"  # ret to anywhere

    def it_pagetable(self) -> bytes:
        r = self.r
        pgdir = MEM - 4096
        if r.random() < 0.5:
            where = self.base + pgdir + 4 * r.choice([0, 768, 1023, 1022, 1, r.randrange(1024)])
        else:
            where = self.base + MEM - 8192 + 4 * r.randrange(1024)
        out = movl_mi(where, self.value())
        nr = r.choice([14, 15, 5, 4, 5])
        if nr == 14:
            out += hypercall(14, pgdir, self.addr(), self.value())
        elif nr == 15:
            out += hypercall(15, pgdir, r.randrange(1024), 0)
        elif nr == 4:
            out += hypercall(4, pgdir, 0, 0)
        else:
            out += hypercall(5, r.choice([0, 1]), 0, 0)
        return out

    def it_host_range(self) -> bytes:
        r = self.r
        a = SWITCHER + r.randrange(0x400000) if r.random() < 0.5 else self.addr()
        k = r.randrange(8)
        if k == 0:
            return b"\xa1" + u32(a)  # mov a,%eax
        if k == 1:
            return b"\xa3" + u32(a)  # mov %eax,a
        if k == 2:
            return mov_ri("eax", a) + b"\xff\xe0"  # jmp *%eax
        if k == 3:
            return mov_ri("eax", a) + b"\xff\xd0"  # call *%eax
        if k == 4:  # rep stosl / movsl across it
            return (mov_ri("edi", a) + mov_ri("esi", self.addr()) + mov_ri("ecx", r.choice([1, 2, 16, 4096, 0x40000]))
                    + (b"\xf3\xab" if r.random() < 0.5 else b"\xf3\xa5"))
        if k == 5:
            return mov_ri("esp", a) + b"\x68" + u32(self.u32()) + b"\x9c"  # push onto it
        if k == 6:  # lgdt/lidt/sgdt/sidt/ltr/str with a pointer anywhere
            op = r.choice([b"\x0f\x01\x15", b"\x0f\x01\x1d", b"\x0f\x01\x05", b"\x0f\x01\x0d"])
            return op + u32(a)
        return movl_mi(a, self.u32())

    def it_selfmod(self) -> bytes:
        r = self.r
        where = self.base + PA_BODY + r.randrange(0x400)
        if r.random() < 0.3:
            where = self.base + r.choice([PA_HANDLER, PA_SHUTDOWN, PA_PROLOGUE]) + r.randrange(32)
        val = r.choice([self.u32(), 0x90909090, 0xC1010F90, 0xFEEB, 0x1FCD, 0xCCCCCCCC])
        return movl_mi(where, val)

    def it_misc(self) -> bytes:
        r = self.r
        return r.choice([
            b"\xf4", b"\xfa", b"\xfb", b"\x9c", b"\x9d", b"\x9c\x58", b"\x0f\x0b",
            b"\x68" + u32(r.choice([0, 0x200, 0x3000, 0x4000, 0x20000, 0x40000, 0x100, 0xFFFFFFFF])) + b"\x9d",
            b"\x0f\x05", b"\x0f\x34", b"\x0f\x35", b"\x0f\x30", b"\x0f\x32", b"\x0f\xa2", b"\x0f\x31",
            b"\x0f\x22\xc0", b"\x0f\x22\xd8", b"\x0f\x20\xd0", b"\x0f\x20\xc0", b"\x0f\x00\xd8", b"\x0f\x00\xd0",
            b"\x0f\x06", b"\x0f\x09", b"\x0f\x08", b"\x0f\x01\xf8", b"\xd6", b"\x63\xc0", b"\x0f\x00\xe0",
            b"\x0f\x02\xc0", b"\x0f\x03\xc0", b"\xf0\x90", b"\x0f\xff", b"\x0f\x01\xc8", b"\x0f\x01\xd0",
            b"\x0f\x01\xc2", b"\x0f\x01\xc3", b"\x0f\x01\xc4", b"\x0f\x01\xd8", b"\xcf", b"\x0f\xae\x00",
            b"\x8e\xd8", b"\x8c\xc8\x8e\xd0", b"\xdb\xe3", b"\xd9\xee", b"\x0f\x77", b"\x0f\x0d\x00",
            mov_ri("eax", r.choice([0x50, 0x80, 0xA0, 0x61])) + b"\x0f\x00\xd8",  # ltr
        ])

    def it_io(self) -> bytes:
        r = self.r
        port = r.choice([0x20, 0x21, 0x60, 0x64, 0x70, 0x71, 0x80, 0xCF8, 0xCFC, 0x3F8, r.getrandbits(16)])
        k = r.randrange(4)
        if k == 0:
            return bytes([r.choice([0xE4, 0xE5, 0xE6, 0xE7]), port & 0xFF])
        if k == 1:
            return mov_ri("edx", port) + bytes([r.choice([0xEC, 0xED, 0xEE, 0xEF])])
        # string I/O: ins writes memory at es:edi, outs reads ds:esi
        return (mov_ri("edx", port) + mov_ri("edi", self.addr()) + mov_ri("esi", self.addr())
                + mov_ri("ecx", r.choice([1, 4, 4096, 0x100000, 0xFFFFFFFF]))
                + (b"\xf3" if r.random() < 0.7 else b"") + bytes([r.choice([0x6C, 0x6D, 0x6E, 0x6F])]))

    def it_loop(self) -> bytes:
        r = self.r
        n = r.choice([10, 1000, 100000, 10000000])
        k = r.randrange(4)
        if k == 0:
            return mov_ri("ecx", n) + b"\xe2\xfe"  # loop .
        if k == 1:
            return b"\xeb\xfe" if r.random() < 0.2 else mov_ri("ecx", n) + b"\x49\x75\xfd"  # dec; jnz
        if k == 2:  # a loop that also makes hypercalls
            return mov_ri("esi", min(n, 1000)) + hypercall(r.choice([5, 17, 8, 0, 9]), PA_MSG, 1, 0) + b"\x4e\x75" + \
                bytes([(-(len(hypercall(0)) + 3)) & 0xFF])
        return mov_ri("ecx", n) + mov_ri("eax", self.addr()) + b"\x89\x00\x49\x75\xfb"  # store loop

    def it_mem(self) -> bytes:
        r = self.r
        a = self.addr()
        k = r.randrange(4)
        if k == 0:
            return mov_ri("ebx", a) + b"\x8b\x03"
        if k == 1:
            return mov_ri("ebx", a) + mov_ri("eax", self.value()) + b"\x89\x03"
        if k == 2:  # lguest_data fields
            off = r.choice([0, 4, 8, 12, 16, 1108, 1112, 1116, 1120, 1124, 1128, 1132, 20, 84])
            return movl_mi(self.base + PA_LDATA + off, self.value())
        return mov_ri(r.choice(list(REG)), self.value())

    def it_raw(self) -> bytes:
        return self.r.randbytes(self.r.randrange(1, 12))

    # Short instructions that do not end a translation block: a long run of
    # one of them makes a huge block (Unicorn's TCG has hard limits there).
    REPEATABLE = ("90", "d40a", "d50a", "d9ee", "ddd8", "d9f0", "d9e8", "de c1", "0f3a0fc001", "660f58c0", "0f28c1",
                  "27", "37", "60", "61", "a5", "ce", "0fa2", "0f31", "e460", "9c9d", "d7", "f7f1", "0fc8", "0000")

    def it_repeat(self) -> bytes:
        r = self.r
        insn = bytes.fromhex(r.choice(self.REPEATABLE).replace(" ", "")) if r.random() < 0.8 else r.randbytes(
            r.randrange(1, 4))
        n = r.choice([16, 100, 300, 460, 470, 520, 1000])
        return (insn * n)[:BODY_MAX // 4]

    def it_console_flood(self) -> bytes:
        """NOTIFY in a loop with a long string: the Launcher's console buffer."""
        r = self.r
        self.data.append((PA_SCRATCH + 0x8000, b"A" * r.choice([100, 4096, 0x7FFF])))
        call = hypercall(17, PA_SCRATCH + 0x8000, 0, 0)
        return mov_ri("esi", r.choice([10, 1000, 1000000])) + call + b"\x4e\x75" + bytes([(-(len(call) + 3)) & 0xFF])

    ITEMS = (("it_hypercall", 22), ("it_int", 10), ("it_segment", 8), ("it_far", 8), ("it_pagetable", 6),
             ("it_host_range", 10), ("it_selfmod", 4), ("it_misc", 10), ("it_io", 5), ("it_loop", 3),
             ("it_mem", 10), ("it_raw", 4), ("it_repeat", 2), ("it_console_flood", 1))


def generate(rng: random.Random, mode: str, timeout: float, core: str | None = None) -> dict[str, Any]:
    """One program spec (JSON-able); see assemble().  ``core``: "cython" or
    "python" for every program, or None for the compiled core on 9 in 10."""
    kind = mode if mode != "both" else ("bytes" if rng.random() < 0.3 else "structured")
    paged = rng.random() < 0.5
    ring = 3 if rng.random() < 0.4 else 1
    g = Gen(rng, paged, ring)
    spec: dict[str, Any] = {"mode": kind, "paged": paged, "ring": ring, "timeout": timeout,
                            "core": ("python" if rng.random() < 0.1 else "cython") if core is None else core,
                            "break_at": round(rng.uniform(0, timeout * 0.8), 4) if rng.random() < 0.15 else None,
                            "clock": "wall" if rng.random() < 0.15 else "virtual"}
    if rng.random() < 0.2:  # virtual irqs from a helper thread: (seconds after the start, irq)
        spec["irqs"] = sorted((round(rng.uniform(0, timeout * 0.8), 4), rng.randrange(32))
                              for _ in range(rng.randrange(1, 6)))
    if kind == "bytes":
        spec["prologue"] = rng.choice(["none", "init", "init"])
        spec["items"] = [rng.randbytes(rng.randrange(1, 256)).hex()]
    else:
        spec["prologue"] = "init"
        names, weights = zip(*Gen.ITEMS, strict=True)
        items = []
        for _ in range(rng.randrange(1, 24)):
            items.append(getattr(g, rng.choices(names, weights)[0])().hex())
        spec["items"] = items
    spec["data"] = [[pa, blob.hex()] for pa, blob in g.data]
    return spec


def assemble(spec: dict[str, Any]) -> tuple[bytes, int]:
    """The guest image (guest-physical bytes from 0) and the entry point.

    Layout: a prologue (LGUEST_INIT, trap gates for every exception to one
    fault handler, SET_STACK, and for ring 3 an iret to the user program),
    the fault handler (counts faults, gives up with SHUTDOWN after a few
    dozen, else resumes at the next item: each structured item first stores
    the address of the next one in CONT), and the program body.
    """
    paged, ring = spec["paged"], spec["ring"]
    base = PAGED_OFFSET if paged else 0
    img = bytearray(PA_SCRATCH + 0x10000)
    for pa, blob in spec.get("data", []):  # grow the image for data past the scratch area
        img.extend(bytes(max(0, pa + len(blob) // 2 - len(img))))
    body_va = base + PA_BODY
    # the body
    items = [bytes.fromhex(h) for h in spec["items"]]
    body = bytearray()
    if spec["mode"] == "structured":
        for item in items:
            nxt = body_va + len(body) + 10 + len(item)
            body += movl_mi(base + PA_CONT, nxt) + item
    else:
        body += b"".join(items)
    epilogue = b"\xcd\x80" if ring == 3 else jmp_abs(base + PA_SHUTDOWN)
    if spec["mode"] != "structured":  # a fault in the raw bytes resumes at the epilogue
        body = movl_mi(base + PA_CONT, body_va + 10 + len(body)) + body
    body += epilogue
    if len(body) > BODY_MAX:
        raise ValueError("program too long")
    img[PA_BODY:PA_BODY + len(body)] = body
    # the fault handler (ring 1): count, give up, or resume at CONT
    h = bytearray()
    h += b"\x36\xff\x05" + u32(base + PA_COUNT)  # incl %ss:count
    h += b"\x36\x81\x3d" + u32(base + PA_COUNT) + u32(MAX_FAULTS)  # cmpl $MAX, %ss:count
    h += b"\x72\x07" + jmp_abs(base + PA_SHUTDOWN)  # jb 1f; (7 bytes) 1:
    h += mov_ri("esp", base + PA_KSTACK)
    h += b"\x2e\x8b\x0d" + u32(base + PA_CONT)  # mov %cs:cont, %ecx
    if ring == 3:
        h += b"\x6a\x7b" + b"\x68" + u32(base + PA_USTACK) + b"\x68" + u32(0x202) + b"\x6a\x73" + b"\x51\xcf"
    else:
        h += b"\xff\xe1"
    img[PA_HANDLER:PA_HANDLER + len(h)] = h
    stub = hypercall(2, PA_MSG, 1, 0, patched=True) + b"\xeb\xfe"  # SHUTDOWN(poweroff); jmp .
    img[PA_SHUTDOWN:PA_SHUTDOWN + len(stub)] = stub
    img[PA_SYSCALL:PA_SYSCALL + 9] = jmp_abs(base + PA_SHUTDOWN) + b"\x90\x90"
    img[PA_MSG:PA_MSG + 12] = b"fuzz: done\n\0"
    # the prologue
    p = bytearray()
    if spec["prologue"] != "none":
        p += mov_ri("esp", base + PA_KSTACK)
        p += hypercall(1, PA_LDATA)  # LGUEST_INIT (a vmcall: patched on first use)
        for v in [*range(32), *range(0x20, 0x30), 0x80]:  # exceptions, irqs 0-15, system calls
            target = base + (PA_SYSCALL if v == 0x80 else PA_HANDLER)
            flags = 0xEF00 if v in (0x80, 3, 4) else 0xAF00  # trap gates; DPL 3 for int3/into/syscalls
            lo, hi = gate(target, flags)
            p += hypercall(6, v, lo, hi, patched=True)
        p += hypercall(7, 0x69, base + PA_KSTACK, 1, patched=True)  # SET_STACK
        if ring == 3:
            p += b"\x6a\x7b" + b"\x68" + u32(base + PA_USTACK) + b"\x68" + u32(0x202) + b"\x6a\x73"
            p += b"\x68" + u32(body_va) + b"\xcf"
        else:
            p += mov_ri("esp", base + PA_KSTACK) + jmp_abs(body_va)
    else:
        p += jmp_abs(body_va)
    img[PA_PROLOGUE:PA_PROLOGUE + len(p)] = p
    # lguest_data as a kernel would leave it before LGUEST_INIT: the async ring empty
    struct.pack_into("<II", img, PA_LDATA, 0x200, 0)
    img[PA_LDATA + LD_STATUS:PA_LDATA + LD_STATUS + 64] = b"\xff" * 64
    struct.pack_into("<I", img, PA_LDATA + LD_SYSCALL_VEC, 0x80)
    for pa, blob in spec.get("data", []):
        raw = bytes.fromhex(blob)
        img[pa:pa + len(raw)] = raw
    return bytes(img), base + PA_PROLOGUE


# --- documented kill reasons -------------------------------------------------------------------
_HEX = r"0x[0-9a-f]+"
DOCUMENTED = [re.compile(p + r"\Z", re.S) for p in (
    r"Disabling interrupts", r"Re-enabling interrupts", r"bad stack segment -?\d+", r"bad stack pages \d+",
    r"bad IDT type -?\d+", r"Setting idt entry \d+", rf"bad read address {_HEX} len \d+",
    rf"bad write address {_HEX} len \d+", rf"Bad address {_HEX}", rf"bad stack page {_HEX}", r"Writing timestamp",
    r"already have lguest_data", r"CRASH: .*", r"Bad hypercall -?\d+\n", r"too many gdt entries -?\d+",
    r"hypercall -?\d+ before INIT", r"bad syscall vector", r"bad guest page (\(null\)|[0-9a-f]{8})",
    rf"bad kernel address {_HEX}", r"Fetching async hypercalls", r"Writing result for async hypercall",
    rf"Bad NOTIFY {_HEX}", r"Writing cr2", rf"unhandled trap -?\d+ at {_HEX} \({_HEX}\)",
    rf"lguest: trap \d+ \({_HEX}\) entering the guest at {_HEX}", rf"lguest: bad segment {_HEX} delivering trap \d+",
    r"attempt to access switcher pages", r"bad page table entry", r"bad page directory entry",
    rf"lguest: guest in virtual-8086 mode at {_HEX}",
)]


def normalise_reason(msg: str | None) -> str:
    """A kill reason with its numbers folded, for the histogram."""
    if msg is None:
        return "-"
    if msg.startswith("CRASH: "):
        return "CRASH: <text>"
    m = re.sub(_HEX, "\0", msg)
    m = re.sub(r"-?\d+", "N", m)
    return m.replace("\0", "0x#").replace("\n", "\\n")


def documented(msg: str) -> bool:
    return any(p.match(msg) for p in DOCUMENTED)


# --- the worker ------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Worker:
    """Runs programs in this process and checks the invariants."""

    KEEP_ALIVE = 3
    RSS_LIMIT = 32 << 20
    WARMUP = 40

    def __init__(self, reference: bool = True, ref_slice: float = 0.002, late_margin: float = 0.5) -> None:
        import numpy as np

        import lguest
        from lguest import unicorn as lu

        self.np, self.lguest, self.lu = np, lguest, lu
        self.live: collections.deque[tuple[Any, dict[str, Any]]] = collections.deque()
        self.count = 0
        self.rss_base: int | None = None
        self.ref_slice = ref_slice
        self.late_margin = late_margin
        self.ref: Any = None
        self.ref_elf: Path | None = None
        self.ref_expected: tuple[str | None, bytes, dict[str, int]] | None = None
        self.ref_runs = 0
        self.ref_fd: int | None = None
        if reference:
            self.ref_elf = self._build_reference()
            if self.ref_elf is not None:
                self.ref_expected = self._ref_alone()

    # -- the reference guest --
    def _build_reference(self) -> Path | None:
        if not (shutil.which("as") and shutil.which("ld")):
            return None
        src = ROOT / "examples" / "guest"
        # The ELF lives in a memfd, not a temp dir kept for the worker's life: a worker the
        # parent kills (a hang, a crash: the point of fuzzing) never reaches close(), and each
        # one used to leave a lguest-fuzz-guest-* directory in /tmp.  The build's own
        # directory lives for the two commands only.
        with tempfile.TemporaryDirectory(prefix="lguest-fuzz-guest-") as tmp:
            obj, elf = Path(tmp) / "ref.o", Path(tmp) / "ref.elf"
            subprocess.run(["as", "--32", "--defsym=NSYSCALLS=5000", "-o", str(obj), str(src / "guest.S")],
                           check=True, capture_output=True)
            subprocess.run(["ld", "-m", "elf_i386", "--defsym=PAGE_OFFSET=0", "-T", str(src / "guest.ld"), "-o",
                            str(elf), str(obj)], check=True, capture_output=True)
            data = elf.read_bytes()
        self.ref_fd = os.memfd_create("lguest-fuzz-ref.elf", os.MFD_CLOEXEC)
        os.write(self.ref_fd, data)
        return Path(f"/proc/self/fd/{self.ref_fd}")

    @staticmethod
    def _ref_stats(stats: dict[str, int]) -> dict[str, int]:
        # exits_*, entries and blocks-per-exit depend on how the run was sliced
        return {k: v for k, v in stats.items() if not k.startswith(("exits_", "entries"))}

    def _new_ref(self) -> Any:
        lg = self.lu.UnicornLauncher(memory=4 << 20, used_vectors=self.lguest.UsedVectors(used=range(32)))
        lg.__enter__()
        lg.load_elf(self.ref_elf)
        return lg

    def _ref_alone(self) -> tuple[str | None, bytes, dict[str, int]]:
        lg = self._new_ref()
        try:
            res = lg.run(timeout=30)
            return res.message, lg.console, self._ref_stats(lg.stats)
        finally:
            lg.__exit__(None, None, None)

    def _step_ref(self) -> list[str]:
        if self.ref_expected is None:
            return []
        if self.ref is None:
            self.ref = self._new_ref()
        lg = self.ref
        res = lg.run(timeout=self.ref_slice)
        want_msg, want_console, want_stats = self.ref_expected
        console = lg.console
        problems = []
        if not want_console.startswith(console):
            problems.append(f"reference console diverged: {console[-80:]!r}")
        if res.reason not in ("timeout", "dead"):
            problems.append(f"reference run ended {res.reason}")
        if res.reason == "dead":
            stats = self._ref_stats(lg.stats)
            if (res.message, console) != (want_msg, want_console):
                problems.append(f"reference ended {res.message!r} with {len(console)} console bytes")
            elif stats != want_stats:
                diff = {k: (stats.get(k), want_stats.get(k)) for k in set(stats) | set(want_stats)
                        if stats.get(k) != want_stats.get(k)}
                problems.append(f"reference stats differ: {diff}")
            lg.__exit__(None, None, None)
            self.ref = None
            self.ref_runs += 1
        if problems and self.ref is not None:
            self.ref.__exit__(None, None, None)
            self.ref = None
        return problems

    # -- the host memory the emulated CPU can reach --
    # Unicorn maps exactly three host regions into the guest's CPU (docs/
    # SECURITY.md, "Emulator containment"): guest RAM at 0, the Switcher's GDT
    # page read-only, and its two page-table pages PROT_NONE.  So the check is
    # (1) that nothing else is mapped -- above all nothing more of 0xFFC00000+
    # -- and (2) that those host pages hold exactly what the host put there.
    # The Switcher's unmapped pages (IDT stubs + TSS, host IDT) are checked
    # too: the guest cannot reach them, but a host bug driven by the guest
    # could scribble on them.
    @staticmethod
    def gdt_fixup(gdt: Any) -> list[tuple[int, int]]:
        """What the CPU's GDT copy must hold for the guest's GDT, written out
        per entry (independently of UnicornBackend.load_gdt): system
        descriptors (S = 0: gates, TSS, LDT, and empty entries) blank, code
        and data at DPL >= 1 with the accessed bit set."""
        out = []
        for a, b in ((int(x), int(y)) for x, y in gdt):
            if not b & 0x1000:
                out.append((0, 0))
                continue
            if not b & 0x6000:
                b |= 0x2000
            out.append((a, b | 0x100))
        return out

    def switcher_expectation(self, lg: Any) -> dict[str, Any]:
        """Records what the host put in its pages now, and wraps the backend's
        load_gdt so the GDT page's expected content follows each reload."""
        lu = self.lu
        b = lg.backend
        sw = b.switcher.mem
        expect: dict[str, Any] = {"page0": bytes(sw[:lu.SW_GDT]), "loaded": None}
        real_load_gdt = b.load_gdt

        def load_gdt(cpu: Any) -> None:
            expect["loaded"] = self.np.array(cpu.gdt, dtype=self.np.uint32)
            real_load_gdt(cpu)

        b.load_gdt = load_gdt
        from lguest.constants import CHANGED_GDT, CHANGED_GDT_TLS

        if not int(lg.cpu.changed) & (CHANGED_GDT | CHANGED_GDT_TLS):  # the page holds cpu.gdt's fixup
            expect["loaded"] = self.np.array(lg.cpu.gdt, dtype=self.np.uint32)
        return expect

    def check_switcher(self, lg: Any, expect: dict[str, Any]) -> list[str]:
        lu, np = self.lu, self.np
        from lguest.constants import CHANGED_IDT, LGUEST_DS, SWITCHER_ADDR

        b = lg.backend
        sw = b.switcher.mem
        out = []
        base = SWITCHER_ADDR
        want_regions = {(0, lg.memory.size - 1, 7), (base + lu.SW_GDT, base + lu.SW_GDT + 0xFFF, 1),
                        (base + lu.SW_PGD, base + lu.SW_PT + 0xFFF, 0)}
        regions = {(int(s), int(e), int(p)) for s, e, p in b.uc.mem_regions()}
        if regions != want_regions:
            extra = sorted(regions - want_regions)
            out.append(f"unicorn regions differ: extra {[(hex(s), hex(e), p) for s, e, p in extra]}, "
                       f"missing {[(hex(s), hex(e), p) for s, e, p in sorted(want_regions - regions)]}")
        # page 0: stubs, the until byte, the TSS; only esp1/ss1 (SET_STACK's mirror) may change
        page0 = bytearray(sw[:lu.SW_GDT])
        old0 = bytearray(expect["page0"])
        for buf in (page0, old0):
            buf[lu.SW_TSS + 12:lu.SW_TSS + 20] = bytes(8)
        if page0 != old0:
            diff = [hex(i) for i in range(lu.SW_GDT) if page0[i] != old0[i]][:8]
            out.append(f"switcher page 0 (stubs, TSS) changed at {diff}")
        words = np.frombuffer(sw, dtype=np.uint32)
        tss = words[lu.SW_TSS // 4:lu.SW_TSS // 4 + 26]
        if int(tss[2]) != LGUEST_DS or int(tss[25]) >> 16 != lu.TSS_SIZE:
            out.append(f"TSS ss0/iomap changed: {int(tss[2]):#x} {int(tss[25]):#x}")
        # the GDT page: 32 descriptors, then zeros
        gdt = words[lu.SW_GDT // 4:lu.SW_GDT // 4 + 64].reshape(32, 2)
        if any(sw[lu.SW_GDT + 256:lu.SW_GDT + 0x1000]):
            out.append("GDT page written past the 32 descriptors")
        for i, (a, bb) in lu.SWITCHER_SEGMENTS.items():
            if (int(gdt[i, 0]), int(gdt[i, 1])) != (a, bb):
                out.append(f"switcher GDT entry {i} is {int(gdt[i, 0]):#x},{int(gdt[i, 1]):#x}")
        for i in range(32):
            if i in lu.SWITCHER_SEGMENTS:
                continue
            hi = int(gdt[i, 1])
            if (hi or int(gdt[i, 0])) and (not hi & 0x1000 or not hi & 0x6000 or not hi & 0x100):
                out.append(f"CPU GDT entry {i} is a system, DPL-0 or unaccessed descriptor: {hi:#x}")
        if expect["loaded"] is not None:
            want = self.gdt_fixup(expect["loaded"])
            rows = [i for i in range(32) if i not in lu.SWITCHER_SEGMENTS
                    and (int(gdt[i, 0]), int(gdt[i, 1])) != want[i]]
            if rows:
                out.append(f"CPU GDT differs from the fixed-up guest GDT at entries {rows}")
        # the page-table pages: the Switcher's table maps only the GDT page;
        # the shadow directory holds checked copies of guest entries + 1023
        pt = words[lu.SW_PT // 4:lu.SW_PT // 4 + 1024]
        want_pt = np.zeros(1024, dtype=np.uint32)
        want_pt[lu.SW_GDT >> 12] = (base + lu.SW_GDT) | 0x61
        if not np.array_equal(pt, want_pt):
            out.append(f"switcher page table entries {np.nonzero(pt != want_pt)[0][:4].tolist()} changed")
        pgd = words[lu.SW_PGD // 4:lu.SW_PGD // 4 + 1024]
        want_top = (base + lu.SW_PT) | 0x21 if b.paging else 0
        if int(pgd[1023]) != want_top:
            out.append(f"shadow pgd entry 1023 is {int(pgd[1023]):#x}")
        if not b.paging and pgd.any():
            out.append("shadow pgd written while not paging")
        bad = [i for i in range(1023) if int(pgd[i]) and (not int(pgd[i]) & 1 or int(pgd[i]) & 0xF98
                                                          or (int(pgd[i]) >> 12) >= lg.guest.pfn_limit)]
        if bad:
            out.append(f"shadow pgd entries {bad[:4]} are not checked guest entries: "
                       f"{[hex(int(pgd[i])) for i in bad[:4]]}")
        # the host IDT (unmapped): what copy_traps makes of the guest's IDT
        cpu = lg.cpu
        if not int(cpu.changed) & CHANGED_IDT and lg.launcher.context.host_idt is not None:
            core = self.lguest.core_of(cpu)
            want_idt = np.zeros((256, 2), dtype=np.uint32)
            core.setup_default_idt_entries(want_idt, b.default_handlers)
            cpu.copy_traps(want_idt, b.default_handlers)
            host_idt = words[lu.SW_IDT // 4:lu.SW_IDT // 4 + 512].reshape(256, 2)
            if not np.array_equal(want_idt, host_idt):
                rows = [i for i in range(256) if not np.array_equal(want_idt[i], host_idt[i])]
                out.append(f"host IDT differs from copy_traps' at vectors {rows[:8]}")
        return out

    # -- one program --
    def run_program(self, spec: dict[str, Any]) -> dict[str, Any]:
        findings: list[list[str]] = []
        out: dict[str, Any] = {"findings": findings}
        selftest = spec.get("selftest")  # proves the oracles fire (tests/test_guest_fuzz.py)
        if selftest == "hang":
            time.sleep(3600)
        elif selftest == "crash":
            import signal

            os.kill(os.getpid(), signal.SIGSEGV)
        image, entry = assemble(spec)
        lg = self.lu.UnicornLauncher(memory=spec.get("memory", MEM), page_offset=PAGED_OFFSET if spec["paged"] else 0,
                                     used_vectors=self.lguest.UsedVectors(used=range(32)), core=spec["core"],
                                     clock=spec.get("clock", "virtual"))
        lg.__enter__()
        try:
            if spec["paged"]:  # keep the launcher's page tables (top of RAM)
                lg.memory.write(0, image)
                lg.cpu.regs.eip = entry
            else:
                lg.load_flat(image, 0, entry)
            expect = self.switcher_expectation(lg)
            timers = []
            if spec.get("break_at") is not None:
                timers.append(threading.Timer(spec["break_at"], lg.break_out))
            for at, irq in spec.get("irqs", []):
                timers.append(threading.Timer(at, lg.send_irq, args=(irq,)))
            for timer in timers:
                timer.daemon = True
                timer.start()
            timeout = spec["timeout"]
            rss0 = _rss()
            t0 = time.monotonic()
            try:
                res = lg.run(timeout=timeout)
                out["reason"], out["message"] = res.reason, res.message
            except Exception as exc:  # noqa: BLE001 - any escape is a finding
                out["reason"], out["message"] = "exception", None
                findings.append(["exception", f"{type(exc).__name__}: {exc}"[:300]])
            elapsed = time.monotonic() - t0
            for timer in timers:
                timer.cancel()
                timer.join()
            out["elapsed"] = round(elapsed, 4)
            if selftest == "tamper":  # the host scribbles on its own Switcher: the check must see it
                sw = lg.backend.switcher.mem
                sw[self.lu.SW_STUBS] ^= 0xFF
                sw[self.lu.SW_GDT + 8 * 11] ^= 0x01
                sw[self.lu.SW_PT + 4 * 2] ^= 0x01
                lg.backend.uc.mem_map(self.lguest.SWITCHER_ADDR + self.lu.SW_SIZE, 0x1000, 1)
            if len(lg.console) > self.RSS_LIMIT // 2:  # host memory the guest filled, whatever RSS says
                findings.append(["console", f"Launcher.console holds {len(lg.console) >> 20} MiB"])
            grown = _rss() - rss0
            if grown > self.RSS_LIMIT:  # one guest, while it is still alive
                what = "its console buffer" if len(lg.console) > self.RSS_LIMIT // 2 else "not its console"
                findings.append(["rss-one-guest", f"one guest grew RSS by {grown >> 20} MiB ({what})"])
            if elapsed > timeout + self.late_margin:
                findings.append(["late", f"run(timeout={timeout}) returned after {elapsed:.2f} s"])
            if out["reason"] == "dead" and out["message"] is not None and not documented(out["message"]):
                findings.append(["undocumented-kill", normalise_reason(out["message"])])
            for problem in self.check_switcher(lg, expect):
                findings.append(["switcher", problem])
            out["blocks"] = int(lg.stats.get("blocks", 0))
            out["flushes"] = int(lg.backend.hooks.stop_counts().get("flush", 0))
        except BaseException:
            lg.__exit__(None, None, None)
            raise
        # keep a few launchers alive: a later guest must not disturb them
        self.live.append((lg, expect))
        while len(self.live) > self.KEEP_ALIVE:
            old, old_expect = self.live.popleft()
            for problem in self.check_switcher(old, old_expect):
                findings.append(["switcher", "an earlier guest's " + problem])
            old.__exit__(None, None, None)
        for problem in self._step_ref():
            findings.append(["reference", problem])
        self.count += 1
        rss = _rss()
        if self.count == self.WARMUP:
            self.rss_base = rss
        elif self.rss_base is not None and rss - self.rss_base > self.RSS_LIMIT:
            findings.append(["rss", f"RSS grew {(rss - self.rss_base) >> 20} MiB after {self.count} programs"])
            self.rss_base = rss  # report each further 32 MiB once
        out["rss"] = rss
        out["ref_runs"] = self.ref_runs
        return out

    def close(self) -> None:
        while self.live:
            self.live.popleft()[0].__exit__(None, None, None)
        if self.ref is not None:
            self.ref.__exit__(None, None, None)
        if self.ref_fd is not None:
            os.close(self.ref_fd)
            self.ref_fd = None


def worker_main(args: argparse.Namespace) -> int:
    """The subprocess: one JSON program per stdin line, one JSON result per stdout line."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it closes our stdin
    w = Worker(reference=not args.no_reference, ref_slice=args.ref_slice, late_margin=args.late_margin)
    print(json.dumps({"ready": True, "reference": w.ref_expected is not None}), flush=True)
    for line in sys.stdin:
        spec = json.loads(line)
        res = w.run_program(spec)
        print(json.dumps(res), flush=True)
    w.close()
    return 0


# --- the parent: worker pool, findings, reporting --------------------------------------------------
class WorkerProc:
    """A worker subprocess with a reader thread; restarted after a crash or a hang."""

    def __init__(self, idx: int, extra: list[str]) -> None:
        self.idx = idx
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errfile: Any = None
        self.reference = False
        self.start()

    def start(self) -> None:
        self.errfile = tempfile.TemporaryFile(mode="w+", prefix="fuzz-guest-err-")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", *self.extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile, text=True,
                                     bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._reader, args=(self.proc, self.lines), daemon=True).start()
        try:
            first = self.lines.get(timeout=300)
        except queue.Empty:
            first = None
            self.kill()
        if first is None:
            raise RuntimeError(f"worker failed to start:\n{self.stderr_tail()}")
        self.reference = json.loads(first).get("reference", False)

    @staticmethod
    def _reader(proc: subprocess.Popen[str], q: queue.Queue[str | None]) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            q.put(line)
        q.put(None)

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            self.errfile.seek(0)
            return self.errfile.read()[-n:]
        except (OSError, ValueError):
            return ""

    def run(self, spec: dict[str, Any], hang_after: float) -> dict[str, Any]:
        """The worker's result, or a synthetic one for a crash/hang (the worker is restarted)."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
            line = self.lines.get(timeout=hang_after)
        except queue.Empty:
            line = "HANG"
        except (BrokenPipeError, OSError):
            line = None
        if line not in (None, "HANG"):
            return json.loads(line)
        if line == "HANG":
            self.kill()
            res = {"reason": "hang", "findings": [["hang", f"no answer within {hang_after:.0f} s"]]}
        else:
            rc = self.proc.wait()
            tail = self.stderr_tail()
            sig = f"signal {-rc}" if rc < 0 else f"exit {rc}"
            res = {"reason": "crash", "findings": [["crash", f"{sig}: {crash_summary(tail)}"]], "stderr": tail}
        self.start()
        return res

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


def crash_summary(stderr: str) -> str:
    """The line that names a crash: a sanitizer's SUMMARY (the library path
    dropped), a Python fatal error or traceback's last line, else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for marker in ("SUMMARY: ", "Fatal Python error", "runtime error:", "Error", "ERROR"):
        for ln in lines:
            if marker in ln:
                return re.sub(r"\(/\S+/", "(", ln)[:200]
    return lines[-1][:200] if lines else "(no output)"


def finding_key(kind: str, detail: str) -> str:
    """Findings are deduplicated by kind and the detail with numbers folded."""
    return f"{kind}: {normalise_reason(detail)}"


def save_finding(spec: dict[str, Any], kind: str, detail: str, extra: dict[str, Any] | None = None) -> Path:
    FINDINGS_DIR.mkdir(parents=True, exist_ok=True)
    blob = json.dumps(spec, sort_keys=True)
    name = f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.json"
    path = FINDINGS_DIR / name
    path.write_text(json.dumps({"kind": kind, "detail": detail, "spec": spec, **(extra or {})}, indent=1))
    return path


def campaign(*, seconds: float | None, programs: int | None, workers: int, seed: int, mode: str,
             timeout: float = 0.2, save: bool = True, quiet: bool = False,
             worker_args: list[str] | None = None, hang_after: float | None = None,
             core: str | None = None) -> dict[str, Any]:
    """Run programs on ``workers`` subprocesses; returns the summary dict."""
    lock = threading.Lock()
    findings: dict[str, dict[str, Any]] = {}
    reasons: collections.Counter[str] = collections.Counter()
    kills: collections.Counter[str] = collections.Counter()
    total = [0]
    t_start = time.monotonic()
    end = None if seconds is None else t_start + seconds
    # A worker that has not answered this long after run()'s own deadline is hung.
    hang_after = timeout + 10.0 if hang_after is None else hang_after
    ref_runs = [0]
    per_worker = None if programs is None else -(-programs // workers)

    errors: list[str] = []
    stop: list[bool] = []  # non-empty: Ctrl-C, finish the current programs and report

    def loop(idx: int) -> None:
        try:
            run_worker(idx)
        except Exception as exc:  # noqa: BLE001 - reported in the summary, the campaign fails
            errors.append(f"worker {idx}: {type(exc).__name__}: {exc}")

    def run_worker(idx: int) -> None:
        rng = random.Random(seed * 1_000_003 + idx)
        wp = WorkerProc(idx, worker_args or [])
        try:
            n = 0
            last_ref = 0
            while not stop and (end is None or time.monotonic() < end) and (per_worker is None or n < per_worker):
                spec = generate(rng, mode, timeout, core)
                res = wp.run(spec, hang_after)
                n += 1
                with lock:
                    total[0] += 1
                    if "ref_runs" in res:  # cumulative per worker process (0 again after a restart)
                        now_ref = res["ref_runs"]
                        ref_runs[0] += now_ref - last_ref if now_ref >= last_ref else now_ref
                        last_ref = now_ref
                    reasons[res.get("reason", "?")] += 1
                    if res.get("reason") in ("dead", "restart"):
                        kills[normalise_reason(res.get("message"))] += 1
                    for kind, detail in res.get("findings", []):
                        key = finding_key(kind, detail)
                        f = findings.get(key)
                        if f is None:
                            path = save_finding(spec, kind, detail, {"stderr": res.get("stderr")}) if save else None
                            findings[key] = f = {"kind": kind, "detail": detail, "count": 0,
                                                 "file": str(path) if path else None}
                            if not quiet:
                                print(f"[worker {idx}] NEW FINDING {key}  -> {f['file']}", flush=True)
                        f["count"] += 1
        finally:
            wp.close()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    last = time.monotonic()
    while any(t.is_alive() for t in threads):
        try:
            for t in threads:
                t.join(timeout=1.0)
        except KeyboardInterrupt:
            if stop:
                raise
            stop.append(True)
            print("interrupted: finishing the programs in flight (Ctrl-C again to abort)", flush=True)
        if not quiet and time.monotonic() - last >= 10:
            last = time.monotonic()
            with lock:
                el = last - t_start
                print(f"[{el:6.0f} s] {total[0]} programs, {total[0] / el:.1f}/s, {len(findings)} distinct findings",
                      flush=True)
    elapsed = time.monotonic() - t_start
    return {"programs": total[0], "seconds": round(elapsed, 1), "per_second": round(total[0] / max(elapsed, 1e-9), 1),
            "findings": findings, "reasons": dict(reasons), "kills": dict(kills), "reference_runs": ref_runs[0],
            "errors": errors}


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n== {s['programs']} programs in {s['seconds']} s: {s['per_second']} programs/s")
    print(f"== reference guest runs completed and compared: {s['reference_runs']}")
    print("== run() results: " + ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items())))
    print("== kill reasons (numbers folded):")
    for k, v in sorted(s["kills"].items(), key=lambda kv: -kv[1]):
        print(f"   {v:7d}  {k}")
    for err in s.get("errors", []):
        print(f"== HARNESS ERROR: {err}")
    print(f"== findings: {len(s['findings'])} distinct")
    for key, f in sorted(s["findings"].items()):
        print(f"   {f['count']:5d}x  {key}\n          {f['file']}")


# --- replay and minimisation ------------------------------------------------------------------------
def replay(path: Path, worker_args: list[str], hang_after: float = 15.0) -> dict[str, Any]:
    spec = json.loads(path.read_text())
    spec = spec.get("spec", spec)
    wp = WorkerProc(0, worker_args)
    try:
        return wp.run(spec, hang_after)
    finally:
        wp.close()


def minimise(spec: dict[str, Any], key: str, worker_args: list[str], hang_after: float = 15.0,
             budget: int = 300) -> dict[str, Any]:
    """ddmin over the program's items (structured) or bytes (random bytes), keeping ``key``."""
    wp = WorkerProc(0, worker_args)
    tries = [0]

    def still(candidate: dict[str, Any]) -> bool:
        if tries[0] >= budget:
            return False
        tries[0] += 1
        try:
            assemble(candidate)
        except ValueError:
            return False
        res = wp.run(candidate, hang_after)
        return any(finding_key(k, d) == key for k, d in res.get("findings", []))

    def ddmin(units: list[str], rebuild: Any) -> list[str]:
        n = 2
        while len(units) >= 2:
            chunk = max(1, len(units) // n)
            reduced = False
            for i in range(0, len(units), chunk):
                cand = units[:i] + units[i + chunk:]
                if cand and still(rebuild(cand)):
                    units, n, reduced = cand, max(n - 1, 2), True
                    break
            if not reduced:
                if n >= len(units):
                    break
                n = min(len(units), 2 * n)
        return units

    try:
        spec = dict(spec)
        if spec["mode"] == "structured":
            spec["items"] = ddmin(spec["items"], lambda it: {**spec, "items": it})
            data = spec.get("data", [])
            if data and still({**spec, "data": []}):
                spec["data"] = []
            # then each item's shortest reproducing prefix (binary search: a
            # run of one instruction shrinks to the count that still fails)
            for i, item in enumerate(spec["items"]):
                lo, hi = 0, len(item) // 2
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    items = list(spec["items"])
                    items[i] = item[:2 * mid]
                    if still({**spec, "items": items}):
                        hi = mid
                    else:
                        lo = mid
                spec["items"][i] = item[:2 * hi]
        else:
            raw = bytes.fromhex("".join(spec["items"]))
            units = ddmin([raw[i:i + 1].hex() for i in range(len(raw))], lambda u: {**spec, "items": ["".join(u)]})
            spec["items"] = ["".join(units)]
        for knob, value in (("break_at", None), ("irqs", []), ("clock", "virtual"), ("core", "cython"),
                            ("paged", False), ("ring", 1)):
            if spec.get(knob) != value and still({**spec, knob: value}):
                spec[knob] = value
    finally:
        wp.close()
    spec["_tries"] = tries[0]
    return spec


def disassembly_hint(spec: dict[str, Any]) -> str:
    """The items as hex, long ones abbreviated (the file has them whole)."""
    return " | ".join(h if len(h) <= 64 else f"{h[:48]}...({len(h) // 2} bytes)" for h in spec["items"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--programs", type=int, default=None, help="stop after this many programs (overall)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mode", choices=["bytes", "structured", "both"], default="both")
    ap.add_argument("--core", choices=["cython", "python"], default=None,
                    help="run every program on this core (default: the compiled core, the Python one on 1 in 10)")
    ap.add_argument("--timeout", type=float, default=0.2, help="run(timeout=...) per program")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference guest (no binutils)")
    ap.add_argument("--hang-after", type=float, default=None,
                    help="seconds without an answer before a worker counts as hung (default timeout + 10)")
    ap.add_argument("--late-margin", type=float, default=0.5,
                    help="run(timeout) may return this much late (raise it under the sanitizers)")
    ap.add_argument("--ref-slice", type=float, default=0.002, help="reference guest run per program, seconds")
    ap.add_argument("--replay", type=Path, help="run one saved program and print its result")
    ap.add_argument("--minimise", action="store_true", help="with --replay: shrink it, keeping its first finding")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON too")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    wargs = (["--no-reference"] if args.no_reference else []) + ["--ref-slice", str(args.ref_slice),
                                                                 "--late-margin", str(args.late_margin)]
    if args.replay:
        res = replay(args.replay, wargs, args.hang_after or 15.0)
        print(json.dumps({k: v for k, v in res.items() if k != "stderr"}, indent=1))
        if res.get("stderr"):
            print(res["stderr"])
        if args.minimise and res.get("findings"):
            kind, detail = res["findings"][0]
            key = finding_key(kind, detail)
            doc = json.loads(args.replay.read_text())
            small = minimise(doc.get("spec", doc), key, wargs)
            out = args.replay.with_name(args.replay.stem + "-min.json")
            out.write_text(json.dumps({"kind": kind, "detail": detail, "spec": small}, indent=1))
            print(f"minimised ({small['_tries']} runs) to {out}:\n  items: {disassembly_hint(small)}")
        return 1 if res.get("findings") else 0
    summary = campaign(seconds=None if args.programs else args.seconds, programs=args.programs,
                       workers=args.workers, seed=args.seed, mode=args.mode, timeout=args.timeout, worker_args=wargs,
                       hang_after=args.hang_after, core=args.core)
    print_summary(summary)
    if args.json:
        print(json.dumps(summary, indent=1))
    return 2 if summary["errors"] else 1 if summary["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
