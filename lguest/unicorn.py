"""Run real i386 guest code on Unicorn 2.1.4 with lguest's trap machinery.

:class:`UnicornLauncher` is lguest's Launcher for an emulated CPU: it owns a
:class:`lguest.Host` (reserving the syscall vector), the guest's RAM (one
copy, mapped into Unicorn with ``mem_map_ptr``), the Guest and its cpu 0,
and a :class:`UnicornBackend` that :class:`lguest.launcher.Launcher` drives
through :func:`lguest.run.run_guest`.

How the pieces map onto lguest
------------------------------

* **The Switcher** (host-owned, at 0xFFC00000, never in guest RAM): the
  addresses of the 256 default IDT stubs the host IDT points at, the TSS
  (esp1/ss1 mirror SET_STACK), the GDT (the guest's 32 entries plus the
  Switcher's ring-0 LGUEST_CS, LGUEST_DS and TSS), the host IDT that
  ``copy_traps`` fills, and -- when paging -- the top-level page table the
  CPU really uses (a shadow of the guest's page directory whose last entry
  maps the Switcher, as lguest's shadow tables did) and the Switcher's own
  page table.  Of all this the emulated CPU can reach only the GDT's page,
  read-only (it reads descriptors at the guest's privilege level); the
  page tables are mapped PROT_NONE (Unicorn's page walker reads physical
  memory unchecked) and the rest is not mapped at all, so any other guest
  access to the host range is killed (``attempt to access switcher
  pages``).  See "Emulator containment" in docs/SECURITY.md.
* **Entering the guest** is a saved-``uc_context`` patch (Unicorn checks
  segment loads against the current CPL, so ``reg_write`` cannot leave
  ring 3): the checks lguest's Switcher left to ``pop %gs; pop %fs;
  pop %es; pop %ds; iretd`` at ring 0 are made in C, in that order and
  with the trap numbers and error codes Unicorn's own instructions raise,
  then the guest's segments, eip, esp and flags are written and Unicorn
  starts at the guest's eip.  No host instruction runs in the emulator, so
  every block it runs is the guest's, counts toward the clock and the
  deadline, and sees a break-out.  A code selector of RPL 0 is refused
  (the guest never runs at CPL 0).
* **Direct traps** (the guest's syscall gate, and any trap gate
  ``copy_traps`` copies) are delivered inside a native UC_HOOK_INTR
  callback by the compiled core (:mod:`lguest._uchook`); the guest runs
  on without a Python call.  Everything else stops the emulator and goes
  through :func:`lguest.traps.handle_trap`.
* **The clock**: ``clock="virtual"`` (default) gives each guest a
  :class:`lguest.VirtualClock` that advances by :attr:`UnicornLauncher.ns_per_block`
  nanoseconds per executed guest basic block (Unicorn's translation blocks;
  counted by a native UC_HOOK_BLOCK callback that also stops the guest,
  between two blocks, exactly when the next timer expires) and jumps to the
  next expiry while the guest is halted: the same image prints the same
  thing every run.  ``clock="wall"`` uses real time (the compiled core's C
  timer thread); the block hook stops the guest at the next block once an
  interrupt it would take is pending.  Nothing ever stops Unicorn
  asynchronously, so no instruction is ever run twice.
* **Paging** (``page_offset != 0``): like lguest's Launcher, the initial page
  tables sit at the top of guest RAM, mapping all RAM at 0 and at
  ``page_offset``; ``guest.pgdir`` is their address, so the core's page-table
  walk and Unicorn's MMU translate alike.  LHCALL_NEW_PGTABLE loads CR3
  (:meth:`UnicornBackend.new_pgtable`; the stack is pinned only in a
  directory not switched to before, :meth:`Backend.known_pgdir`),
  FLUSH_TLB/SET_PTE/SET_PMD flush Unicorn's TLB, SET_PTE checks the new pte
  as the kernel's ``do_set_pte`` did (see :meth:`UnicornBackend.set_pte`),
  and a page-directory entry the shadow lacks is filled on the fault
  (``demand_page``).

Exits the host adds to lguest's kill messages: ``lguest: trap N (0xE)
entering the guest at 0x...`` (the entry's segment checks refused the
guest's state -- the trap the Switcher's ``pop``/``iret`` would have raised,
e.g. after a LOAD_GDT that removed the segment in use, or an RPL-0 code
selector), ``lguest: bad segment 0x.. delivering trap N`` (a direct
trap's code or stack segment is unusable), ``attempt to access switcher
pages`` (lguest's own words, for any guest read, write or instruction
fetch in the host range other than reading the GDT),
``lguest: guest code at CPL 0 at 0x...`` (a backstop that cannot fire:
see docs/SECURITY.md), ``lguest: guest in virtual-8086 mode at 0x...``
(an ``iret`` whose flags image has VM set: Unicorn honours it at CPL 1,
the CPU would not) and ``bad page table entry`` (a guest pte names a
frame beyond RAM).  A flat guest touching memory it does not have gets a
page fault, as it would through lguest's shadow tables.

Host API: one ``run()`` at a time per launcher (another thread gets
RuntimeError); leaving the ``with`` block while another thread is in
``run()`` breaks that run out, waits for it (up to ``teardown_wait``
seconds) and then tears down; guest memory is held open
(``GuestMemory.hold``) while Unicorn maps it.

Limits (documented, deliberate): one cpu; no LDT; the guest's second-level
page tables are walked by Unicorn directly, so a guest kernel that maps
frames outside its RAM gets "bad page table entry" only when it touches
them; the FPU is not switched lazily (#NM never happens); Unicorn makes no
I/O permission check, so ``in``/``out`` never fault: native UC_HOOK_INSN
callbacks give them lguest's emulation (reads see ones, writes vanish) at
any privilege level, where real hardware would #GP a user-mode one.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import unicorn as _unicorn
    from unicorn import unicorn_const as _ucc
    from unicorn import x86_const as _x86
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("lguest.unicorn needs Unicorn 2.1.4: pip install 'lguest[unicorn]'") from exc

from . import Host, VirtualClock, load_core
from . import messages as M
from .constants import (
    CHANGED_ALL,
    CHANGED_GDT,
    CHANGED_GDT_TLS,
    GDT_ENTRIES,
    GDT_ENTRY_DOUBLEFAULT_TSS,
    GDT_ENTRY_LGUEST_CS,
    GDT_ENTRY_LGUEST_DS,
    GDT_ENTRY_TSS,
    IDT_ENTRIES,
    LGUEST_CS,
    LGUEST_DS,
    PAGE_PSE,
    PAGE_SIZE,
    SWITCHER_ADDR,
    U32,
)
from .launcher import DEFAULT_CONSOLE_LIMIT, Launcher, RunResult
from .memory import GuestMemory
from .run import Backend
from .stats import OTHER
from .validate import to_bytes, to_timeout, to_u32

try:
    from . import _uchook
except ImportError as exc:  # pragma: no cover - only when the build failed
    raise ImportError(f"lguest.unicorn needs the compiled hooks (lguest._uchook): {exc}") from exc

__all__ = ["UnicornLauncher", "UnicornBackend", "UNICORN_VERSION", "context_layout", "HOST_IRQ_TRAP"]

UNICORN_VERSION = "2.1.4"
#: Per-engine translation cache (QEMU's code_gen_buffer: translated host code
#: and the TranslationBlock structs, both allocated from it).  Unicorn's
#: default reserves 1 GiB and a guest running through fresh code (1 MiB of
#: zeroed RAM is ~250,000 blocks) touched ~100 bytes of it per guest byte,
#: 50-100 MiB per guest, kept until close.  When the buffer is full QEMU
#: flushes every translation and starts again, so host memory stays below
#: this; a working set larger than it only costs re-translation.
TCG_BUFFER_SIZE = 8 << 20

#: trapnum the backend reports when it stopped the guest for the host's own
#: reasons (clock, pending irq, break-out, deadline): a "real interrupt",
#: which handle_trap ignores (lguest's case 32..255).  0xEF is the local
#: APIC timer vector.
HOST_IRQ_TRAP = 0xEF

# --- the Switcher's layout (offsets from SWITCHER_ADDR) ---------------------------------
# What the emulated CPU can reach of it (see "Emulator containment" in
# docs/SECURITY.md): only the GDT page, read-only, because the CPU reads
# descriptors at the guest's privilege level; the page directory and the
# Switcher's page table are mapped PROT_NONE (Unicorn's page walker reads
# physical memory without a permission check; any guest access faults);
# the rest is not mapped at all.  No host code runs in the emulator.
SW_STUBS = 0x0100  # 256 x 8 bytes: the default host IDT handlers (Backend.default_handlers)
SW_TSS = 0x0A00  # the TSS (esp1/ss1 mirror SET_STACK); Unicorn never reads it
SW_UNTIL = 0x0FF0  # emu_start's "until": unmapped, never reached by a healthy guest
SW_GDT = 0x1000  # alone on its page: the only host page the CPU can read
SW_IDT = 0x2000  # the host IDT copy_traps fills (read by the native hook only)
SW_PGD = 0x3000  # the CPU's page directory (shadow of the guest's)
SW_PT = 0x4000  # maps the GDT page (pgd entry 1023)
SW_SIZE = 0x5000
SWITCHER_PGD_INDEX = SWITCHER_ADDR >> 22  # 1023

STUB = bytes.fromhex("0f0b" "f4f4f4f4f4f4")  # ud2; hlt...: not mapped, never executed

GDT_ENTRY_KERNEL_CS = 12
GDT_ENTRY_KERNEL_DS = 13
GDT_ENTRY_USER_CS = 14
GDT_ENTRY_USER_DS = 15
TSS_SELECTOR = GDT_ENTRY_TSS * 8
TSS_SIZE = 104

PTE_PRESENT = 0x1
PTE_RW = 0x2
PTE_USER = 0x4
PTE_ACCESSED = 0x20
PTE_DIRTY = 0x40
PGD_ALLOWED = 0x67  # _PAGE_TABLE: the only flags a page-directory entry may carry

CR0_WP = 1 << 16
CR0_PG = 1 << 31


def segment_descriptor(base: int, limit: int, access: int, flags: int = 0xC) -> tuple[int, int]:
    """An 8-byte GDT descriptor as (a, b); ``flags`` is the G/D nibble."""
    a = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    b = ((base >> 16) & 0xFF) | (access << 8) | (((limit >> 16) & 0xF) << 16) | (flags << 20) | (base & 0xFF000000)
    return a, b


#: The flat segments lguest sets up for a guest (setup_guest_gdt: kernel
#: code/data at the guest's privilege level 1) plus user code/data at ring 3.
#: The accessed bit is set so the CPU never writes the table.
GUEST_FLAT_SEGMENTS = {
    GDT_ENTRY_KERNEL_CS: segment_descriptor(0, 0xFFFFF, 0xBB),
    GDT_ENTRY_KERNEL_DS: segment_descriptor(0, 0xFFFFF, 0xB3),
    GDT_ENTRY_USER_CS: segment_descriptor(0, 0xFFFFF, 0xFB),
    GDT_ENTRY_USER_DS: segment_descriptor(0, 0xFFFFF, 0xF3),
}
SWITCHER_SEGMENTS = {
    GDT_ENTRY_LGUEST_CS: segment_descriptor(0, 0xFFFFF, 0x9B),
    GDT_ENTRY_LGUEST_DS: segment_descriptor(0, 0xFFFFF, 0x93),
    GDT_ENTRY_TSS: segment_descriptor(SWITCHER_ADDR + SW_TSS, TSS_SIZE - 1, 0x8B, 0x0),
    GDT_ENTRY_DOUBLEFAULT_TSS: (0, 0),
}


# --- libunicorn -------------------------------------------------------------------------
def _uclib() -> Any:
    from unicorn.unicorn_py3 import unicorn as binding

    return binding.uclib


def _function_addresses() -> dict[str, int]:
    lib = _uclib()
    names = ("uc_hook_add", "uc_hook_del", "uc_emu_start", "uc_emu_stop", "uc_reg_read", "uc_reg_write",
             "uc_context_save", "uc_context_restore", "uc_ctl")
    return {n: ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names}


def _engine_handle(uc: Any) -> int:
    return uc._uch.value


def _check_version() -> None:
    version = getattr(_unicorn, "__version__", "?")
    if version != UNICORN_VERSION:
        raise ImportError(f"lguest.unicorn is calibrated for Unicorn {UNICORN_VERSION}, found {version}")


# --- measuring the uc_context layout ---------------------------------------------------------
_layout_cache: dict[str, int] | None = None
_layout_lock = threading.Lock()


class UnsupportedUnicorn(RuntimeError):
    """The Unicorn library's saved-context layout is not what lguest expects."""


def _find_all(blob: bytes, needle: bytes) -> list[int]:
    out, i = [], blob.find(needle)
    while i >= 0:
        out.append(i)
        i = blob.find(needle, i + 1)
    return out


def _scratch_engine(gdt_entries: dict[int, tuple[int, int]], code: bytes) -> Any:
    uc = _unicorn.Uc(_ucc.UC_ARCH_X86, _ucc.UC_MODE_32)
    uc.mem_map(0, 0x10000)
    for i, (a, b) in gdt_entries.items():
        uc.mem_write(0x1000 + i * 8, struct.pack("<II", a, b))
    uc.reg_write(_x86.UC_X86_REG_GDTR, (0, 0x1000, 16 * 8 - 1, 0))
    uc.reg_write(_x86.UC_X86_REG_CS, 0x08)
    uc.reg_write(_x86.UC_X86_REG_SS, 0x10)
    uc.reg_write(_x86.UC_X86_REG_DS, 0x10)
    uc.reg_write(_x86.UC_X86_REG_ES, 0x10)
    uc.reg_write(_x86.UC_X86_REG_ESP, 0x8000)
    uc.mem_write(0x2000, code)
    return uc


def _context_bytes(uc: Any) -> tuple[Any, int, bytes]:
    ctx = uc.context_save()
    addr = ctx.context.value
    size = _uclib().uc_context_size(uc._uch)
    return ctx, addr, ctypes.string_at(addr, size)


def _measure_layout() -> dict[str, int]:
    """Find, in a saved uc_context, the fields the native hooks patch.

    Every offset is measured on a scratch engine against known states and
    then checked (the reset of ``old_exception`` must make a second #GP a
    #GP again, not a double fault).  Offsets are from the uc_context pointer.
    """
    sd = segment_descriptor
    flat = {1: sd(0, 0xFFFFF, 0x9B), 2: sd(0, 0xFFFFF, 0x93),
            3: sd(0x12345000, 0x0ABCD, 0x93, 0x4), 4: sd(0x23456000, 0x01111, 0x93, 0x4),
            5: sd(0x34567000, 0x02222, 0x93, 0x4), 6: sd(0x45678000, 0x03333, 0x93, 0x4),
            7: sd(0, 0xFFFFF, 0x13)}  # 7: not present
    layout: dict[str, int] = {}

    # 1. registers, eip, eflags, segment caches, hflags
    uc = _scratch_engine(flat, b"\x90")
    gprs = [(_x86.UC_X86_REG_EAX, 0x1A2B3C01), (_x86.UC_X86_REG_ECX, 0x1A2B3C02), (_x86.UC_X86_REG_EDX, 0x1A2B3C03),
            (_x86.UC_X86_REG_EBX, 0x1A2B3C04), (_x86.UC_X86_REG_ESP, 0x1A2B3C05), (_x86.UC_X86_REG_EBP, 0x1A2B3C06),
            (_x86.UC_X86_REG_ESI, 0x1A2B3C07), (_x86.UC_X86_REG_EDI, 0x1A2B3C08)]
    for reg, value in gprs:
        uc.reg_write(reg, value)
    uc.reg_write(_x86.UC_X86_REG_EIP, 0x0BADC0DE)
    uc.reg_write(_x86.UC_X86_REG_EFLAGS, 0x240202)  # AC and ID: kept in env->eflags itself
    sels = {"es": 0x18, "ds": 0x20, "fs": 0x28, "gs": 0x30}
    for name, sel in sels.items():
        uc.reg_write(getattr(_x86, "UC_X86_REG_" + name.upper()), sel)
    _, _, blob = _context_bytes(uc)
    hits = _find_all(blob, struct.pack("<Q", 0x1A2B3C01))
    if len(hits) != 1:
        raise UnsupportedUnicorn("cannot find eax in the saved context")
    regs = hits[0]
    for i, (_, value) in enumerate(gprs):  # qemu order: eax ecx edx ebx esp ebp esi edi, u64 each
        if struct.unpack_from("<Q", blob, regs + 8 * i)[0] != value:
            raise UnsupportedUnicorn("unexpected register layout")
    layout["regs"] = regs
    # uc_context: a header whose first word is the size of the CPU state
    # copied by save/restore, then that state (env, registers first).
    if struct.unpack_from("<Q", blob, 0)[0] != len(blob) - regs:
        raise UnsupportedUnicorn("unexpected uc_context header")
    layout["data"] = regs
    eip = _find_all(blob, struct.pack("<Q", 0x0BADC0DE))
    if eip != [regs + 16 * 8]:
        raise UnsupportedUnicorn("unexpected eip position")
    layout["eip"] = eip[0]
    layout["eflags"] = eip[0] + 8
    if struct.unpack_from("<Q", blob, layout["eflags"])[0] & 0x240000 != 0x240000:
        raise UnsupportedUnicorn("unexpected eflags position")

    def seg_cache(sel: int) -> bytes:
        a, b = flat[sel >> 3]
        base = (a >> 16) | ((b & 0xFF) << 16) | (b & 0xFF000000)
        limit = (a & 0xFFFF) | (b & 0xF0000)
        if b & 0x800000:
            limit = (limit << 12) | 0xFFF
        return struct.pack("<I", sel) + b"\0\0\0\0" + struct.pack("<QII", base, limit, b)

    es = _find_all(blob, seg_cache(0x18))
    ds = _find_all(blob, seg_cache(0x20))
    if len(es) != 1 or len(ds) != 1 or (ds[0] - es[0]) % 3:
        raise UnsupportedUnicorn("cannot find the segment caches")
    stride = (ds[0] - es[0]) // 3
    segs = es[0]
    expect = {0: 0x18, 1: 0x08, 2: 0x10, 3: 0x20, 4: 0x28, 5: 0x30}  # ES CS SS DS FS GS
    for idx, sel in expect.items():
        if blob[segs + idx * stride: segs + idx * stride + 24] != seg_cache(sel):
            raise UnsupportedUnicorn("unexpected segment cache layout")
    layout["segs"], layout["seg_stride"] = segs, stride
    hflags = segs - 8  # hflags, hflags2, then segs[]
    hf = struct.unpack_from("<I", blob, hflags)[0]
    if hf & 3 != 0 or hf & 0xB0 != 0xB0:  # CPL 0, PE, CS32, SS32
        raise UnsupportedUnicorn("cannot find hflags")
    layout["hflags"] = hflags

    # 2. error_code, exception_is_int, old_exception: two faults, then an int
    code = bytes.fromhex("66b83812" "8ed8"  # mov $0x1238,%ax; mov %ax,%ds: #GP(0x1238)
                         "66b83800" "8ec0"  # mov $0x38,%ax; mov %ax,%es: #NP(0x38)
                         "cd80" "90")  # int $0x80
    seen: list[tuple[int, int, bytes]] = []

    def on_intr(uc: Any, intno: int, user: Any) -> None:
        _, addr, raw = _context_bytes(uc)
        seen.append((intno, uc.reg_read(_x86.UC_X86_REG_EIP), raw))
        if intno in (8, 11, 13):
            uc.reg_write(_x86.UC_X86_REG_EIP, uc.reg_read(_x86.UC_X86_REG_EIP) + 2)
        else:
            uc.emu_stop()

    uc = _scratch_engine(flat, code)
    uc.hook_add(_ucc.UC_HOOK_INTR, on_intr)
    uc.emu_start(0x2000, 0x2000 + len(code))
    if [s[0] for s in seen] != [13, 8, 0x80]:  # the second fault is a "double fault": the bug we fix
        raise UnsupportedUnicorn(f"unexpected exception sequence {[s[0] for s in seen]}")
    err = set(_find_all(seen[0][2], struct.pack("<i", 0x1238)))
    old = set(_find_all(seen[0][2], struct.pack("<i", 13))) & set(_find_all(seen[1][2], struct.pack("<i", 8)))
    err = {o for o in err if struct.unpack_from("<i", seen[1][2], o)[0] == 0}  # #DF has error code 0
    if len(err) != 1 or len(old) != 1:
        raise UnsupportedUnicorn("cannot find error_code / old_exception")
    layout["error_code"] = err.pop()
    layout["exception_is_int"] = layout["error_code"] + 4
    layout["old_exception"] = old.pop()
    isint = layout["exception_is_int"]
    if struct.unpack_from("<i", seen[0][2], isint)[0] != 0 or struct.unpack_from("<i", seen[2][2], isint)[0] != 1:
        raise UnsupportedUnicorn("cannot find exception_is_int")

    # 3. check: resetting old_exception keeps the second fault a #NP
    seen.clear()
    old_off = layout["old_exception"]

    def on_intr_reset(uc: Any, intno: int, user: Any) -> None:
        ctx = uc.context_save()
        raw = ctypes.string_at(ctx.context.value + layout["error_code"], 4)
        seen.append((intno, struct.unpack("<i", raw)[0], b""))
        ctypes.memmove(ctx.context.value + old_off, struct.pack("<i", -1), 4)
        uc.context_restore(ctx)
        if intno in (11, 13):
            uc.reg_write(_x86.UC_X86_REG_EIP, uc.reg_read(_x86.UC_X86_REG_EIP) + 2)
        else:
            uc.emu_stop()

    uc = _scratch_engine(flat, code)
    uc.hook_add(_ucc.UC_HOOK_INTR, on_intr_reset)
    uc.emu_start(0x2000, 0x2000 + len(code))
    if [(s[0], s[1]) for s in seen] != [(13, 0x1238), (11, 0x38), (0x80, seen[2][1])]:
        raise UnsupportedUnicorn(f"old_exception reset does not work: {[(s[0], s[1]) for s in seen]}")
    return layout


# --- bounding the translator ------------------------------------------------------------------
# Unicorn 2.1.4's x86 translator leaks TCG temporaries (up to two per
# instruction) into a 512-entry pool whose bound it checks only in debug
# builds, so one long translation block of guest code overruns it and
# crashes the host.  The native block hook caps every block at TB_MAX_INSNS
# instructions through the CPU's cflags_next_tb and keeps the code buffer
# from ever filling (a full buffer restarts translation without the cap);
# see uh_on_block in _uchook.pyx.  Both need three fields inside the engine.
# Their offsets are those of the Unicorn 2.1.4 sources (struct uc_struct,
# CPUState, X86CPU, TCGContext) compiled for x86-64 Linux, as in the PyPI
# wheels; engine_internals() checks them on each engine before use, reading
# through /proc/self/mem so that a wrong offset raises instead of crashing.
_UC_CPU = 440  # offsetof(struct uc_struct, cpu)
_UC_TCG_CTX = 768  # offsetof(struct uc_struct, tcg_ctx)
_CPU_CFLAGS_NEXT_TB = 24  # offsetof(CPUState, cflags_next_tb)
_X86CPU_ENV = 35408  # offsetof(X86CPU, env); env.regs[16] (64-bit) at its start, env.eip at +128
_TCG_NB_TEMPS = 48  # offsetof(TCGContext, nb_temps)
_TCG_CODE_GEN_BUFFER = 160  # .code_gen_buffer, then .code_gen_buffer_size at 184
_TCG_CODE_GEN_PTR = 192
_TCG_CODE_GEN_HIGHWATER = 208
TCG_MAX_TEMPS = 512
#: The most instructions one translation block may hold: 51 temps at the
#: start of a block plus 2 per instruction (the worst measured) is 307.
TB_MAX_INSNS = 128
#: Flush the translation cache when fewer bytes than this remain in it.
TB_GUARD = 1 << 20


def _peek(addr: int, size: int) -> bytes:
    """``size`` bytes of this process at ``addr``, or UnsupportedUnicorn if unmapped."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as f:
            data = os.pread(f.fileno(), size, addr)
    except (OSError, OverflowError, ValueError) as exc:
        raise UnsupportedUnicorn(f"cannot read the engine's state at {addr:#x}: {exc}") from None
    if len(data) != size:
        raise UnsupportedUnicorn(f"cannot read the engine's state at {addr:#x}")
    return data


def engine_internals(uc: Any) -> dict[str, int]:
    """Addresses of the engine fields the native hook bounds translation
    with, each checked against what the engine reports through its API.

    Raises UnsupportedUnicorn when the engine does not have Unicorn 2.1.4's
    layout: lguest does not run a guest it cannot contain."""
    _check_version()
    handle = _engine_handle(uc)
    ids = [_x86.UC_X86_REG_EAX, _x86.UC_X86_REG_ECX, _x86.UC_X86_REG_EDX, _x86.UC_X86_REG_EBX,
           _x86.UC_X86_REG_ESP, _x86.UC_X86_REG_EBP, _x86.UC_X86_REG_ESI, _x86.UC_X86_REG_EDI]
    saved = [uc.reg_read(i) for i in ids]  # (also initialises the engine)
    cpu, tcg = struct.unpack("<QQ", _peek(handle + _UC_CPU, 8) + _peek(handle + _UC_TCG_CTX, 8))
    if not cpu or not tcg:
        raise UnsupportedUnicorn("the engine has no CPU or translator where Unicorn 2.1.4 keeps them")
    # The CPU: its env holds the registers as the API reads them.
    probe = [0x6C670000 + 0x1111 * (i + 1) for i in range(8)]
    try:
        for i, v in zip(ids, probe, strict=True):
            uc.reg_write(i, v)
        env = struct.unpack("<8Q", _peek(cpu + _X86CPU_ENV, 64))  # target_ulong regs[16]
        eip = struct.unpack("<Q", _peek(cpu + _X86CPU_ENV + 128, 8))[0]
    finally:
        for i, v in zip(ids, saved, strict=True):
            uc.reg_write(i, v)
    if list(env) != probe or eip != uc.reg_read(_x86.UC_X86_REG_EIP) & 0xFFFFFFFF:
        raise UnsupportedUnicorn("the engine's CPU state is not where Unicorn 2.1.4 keeps it")
    cflags = struct.unpack("<I", _peek(cpu + _CPU_CFLAGS_NEXT_TB, 4))[0]
    if cflags != 0xFFFFFFFF and cflags > 0x7FFF:
        raise UnsupportedUnicorn(f"unexpected cflags_next_tb {cflags:#x}")
    # The translator: its buffer is the size the engine reports (less the
    # prologue), its pointers ordered inside it, its temp counts sane.
    buf, size, ptr, _, high = struct.unpack("<QQQQQ", _peek(tcg + _TCG_CODE_GEN_BUFFER, 8) + _peek(
        tcg + _TCG_CODE_GEN_BUFFER + 24, 32))
    nb_globals, nb_temps = struct.unpack("<ii", _peek(tcg + _TCG_NB_TEMPS - 4, 8))  # adjacent fields
    want = uc.ctl_get_tcg_buffer_size()
    if not (buf and want - 0x10000 <= size <= want and buf <= ptr <= high <= buf + size
            and high >= buf + size - 0x10000 and 8 <= nb_globals <= nb_temps <= TCG_MAX_TEMPS):
        raise UnsupportedUnicorn("the engine's translator is not where Unicorn 2.1.4 keeps it")
    if size < 4 * TB_GUARD:
        raise UnsupportedUnicorn(f"the engine's translation buffer ({size} bytes) is under {4 * TB_GUARD}")
    return {"tb_cflags": cpu + _CPU_CFLAGS_NEXT_TB, "code_gen_ptr": tcg + _TCG_CODE_GEN_PTR,
            "code_gen_highwater": tcg + _TCG_CODE_GEN_HIGHWATER, "nb_temps": tcg + _TCG_NB_TEMPS,
            "tb_max_insns": TB_MAX_INSNS, "tb_guard": TB_GUARD}


def context_layout() -> dict[str, int]:
    """The measured uc_context offsets (cached per process)."""
    global _layout_cache
    with _layout_lock:
        if _layout_cache is None:
            _check_version()
            _layout_cache = _measure_layout()
        return dict(_layout_cache)


# --- the backend -------------------------------------------------------------------------------
_MEM_WRITE_TYPES = (_ucc.UC_MEM_WRITE_UNMAPPED, _ucc.UC_MEM_WRITE_PROT)


class UnicornBackend(Backend):
    """A :class:`lguest.run.Backend` on a Unicorn engine: see the module text.

    Built and owned by :class:`UnicornLauncher`.  ``native_direct=False``
    stops the emulator at direct traps too and delivers them from Python
    (the same core call, for comparison).
    """

    #: Host IDT targets of non-direct traps: the Switcher's stubs.
    default_handlers = (SWITCHER_ADDR + SW_STUBS + np.arange(IDT_ENTRIES, dtype=np.uint32) * 8).astype(np.uint32)

    def __init__(self, uc: Any, cpu: Any, *, virtual: bool, ns_per_block: int, native_direct: bool = True) -> None:
        self.uc = uc
        self.cpu = cpu
        self.guest = cpu.guest
        self.virtual = virtual
        self.ns_per_block = int(ns_per_block)
        self.deadline_ns = 0
        self.paging = False
        self._last_blocks = 0
        self.python_direct: dict[int, int] = {}

        # The Switcher: host memory; the CPU sees only its GDT page (read-only).
        self._sw = mmap.mmap(-1, SW_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._sw_addr = ctypes.addressof(ctypes.c_char.from_buffer(self._sw))
        self._sw_words = np.frombuffer(self._sw, dtype=np.uint32)
        for i in range(IDT_ENTRIES):
            self._sw[SW_STUBS + 8 * i:SW_STUBS + 8 * i + 8] = STUB
        self._sw[SW_UNTIL:SW_UNTIL + 1] = b"\xf4"
        self.gdt = self._sw_words[SW_GDT // 4:SW_GDT // 4 + 2 * GDT_ENTRIES].reshape(GDT_ENTRIES, 2)
        self.host_idt = self._sw_words[SW_IDT // 4:SW_IDT // 4 + 2 * IDT_ENTRIES].reshape(IDT_ENTRIES, 2)
        self.shadow_pgd = self._sw_words[SW_PGD // 4:SW_PGD // 4 + 1024]
        switcher_pt = self._sw_words[SW_PT // 4:SW_PT // 4 + 1024]
        # Only the GDT page: supervisor, read-only, already accessed (ring 3
        # cannot touch it; the CPU's descriptor reads are supervisor reads).
        switcher_pt[SW_GDT // PAGE_SIZE] = (SWITCHER_ADDR + SW_GDT) | PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY
        tss = self._sw_words[SW_TSS // 4:SW_TSS // 4 + TSS_SIZE // 4]
        tss[2] = LGUEST_DS  # ss0 (no ring-0 stack: the entry is a context patch)
        struct.pack_into("<H", self._sw, SW_TSS + 102, TSS_SIZE)  # no I/O bitmap (all ports denied)
        self._tss = tss
        # Separate regions, separate protections: Unicorn's are the same for
        # every ring, so nothing the guest must not read or run is mapped
        # readable or executable at all.
        self._sw_regions = ((SW_GDT, PAGE_SIZE, _ucc.UC_PROT_READ), (SW_PGD, 2 * PAGE_SIZE, _ucc.UC_PROT_NONE))
        for off, size, prot in self._sw_regions:
            uc.mem_map_ptr(SWITCHER_ADDR + off, size, prot, self._sw_addr + off)

        # lguest's host IDT for this cpu lives in the Switcher too; run_guest
        # finds it as cpu.host_idt and copy_traps fills it.
        core = load_core("cython" if type(cpu).__module__ == "lguest._core" else "python")
        core.setup_default_idt_entries(self.host_idt, self.default_handlers)
        cpu.host_idt = self.host_idt
        cpu.changed |= CHANGED_ALL

        uc.reg_write(_x86.UC_X86_REG_GDTR, (0, SWITCHER_ADDR + SW_GDT, GDT_ENTRIES * 8 - 1, 0))
        uc.reg_write(_x86.UC_X86_REG_IDTR, (0, SWITCHER_ADDR + SW_IDT, IDT_ENTRIES * 8 - 1, 0))
        self.load_gdt(cpu)
        uc.reg_write(_x86.UC_X86_REG_TR, (TSS_SELECTOR, SWITCHER_ADDR + SW_TSS, TSS_SIZE - 1, 0x8B00))
        uc.reg_write(_x86.UC_X86_REG_CR0, uc.reg_read(_x86.UC_X86_REG_CR0) | CR0_WP)

        # The native half.
        lib = _uclib()
        layout = context_layout()
        ctx, ctx_small = ctypes.c_void_p(), ctypes.c_void_p()
        if lib.uc_context_alloc(uc._uch, ctypes.byref(ctx)) != 0 or \
                lib.uc_context_alloc(uc._uch, ctypes.byref(ctx_small)) != 0:
            raise OSError("uc_context_alloc failed")
        # The small context saves and restores only the registers and the
        # segment caches: its size word (the header's first) says so.
        small = layout["segs"] + 6 * layout["seg_stride"] - layout["data"]
        ctypes.memmove(ctx_small.value, struct.pack("<Q", small), 8)
        reg_ids = [_x86.UC_X86_REG_EAX, _x86.UC_X86_REG_EBX, _x86.UC_X86_REG_ECX, _x86.UC_X86_REG_EDX,
                   _x86.UC_X86_REG_ESI, _x86.UC_X86_REG_EDI, _x86.UC_X86_REG_EBP, _x86.UC_X86_REG_GS,
                   _x86.UC_X86_REG_FS, _x86.UC_X86_REG_DS, _x86.UC_X86_REG_ES, -1, -1, _x86.UC_X86_REG_EIP,
                   _x86.UC_X86_REG_CS, _x86.UC_X86_REG_EFLAGS, _x86.UC_X86_REG_ESP, _x86.UC_X86_REG_SS]
        self.hooks = _uchook.NativeHooks(
            uc_handle=_engine_handle(uc), funcs=_function_addresses(), reg_ids=reg_ids,
            reg_cr2=_x86.UC_X86_REG_CR2, layout=layout, switcher=self._sw,
            switcher_va=SWITCHER_ADDR, switcher_size=SW_SIZE, gdt_offset=SW_GDT,
            until_va=SWITCHER_ADDR + SW_UNTIL,
            host_cs=LGUEST_CS, host_ss=LGUEST_DS, ctx_alloc=ctx.value, ctx_small_alloc=ctx_small.value,
            uc_free=lambda p: lib.uc_free(ctypes.c_void_p(p)),
            insn_in=_x86.UC_X86_INS_IN, insn_out=_x86.UC_X86_INS_OUT, internals=engine_internals(uc),
            uc_owner=uc)
        api = None
        if type(cpu).__module__ == "lguest._core":
            from . import _core

            native_api = getattr(_core, "native_api", None)  # None: direct traps take the Python path
            api = native_api(cpu) if native_api is not None else None
        mem = self.guest.memory
        self.hooks.bind(cpu, cpu.regs.array, self.host_idt, cpu.idt, mem, api)
        self.hooks.native_direct = native_direct
        self.hooks.install()

    # --- host structures -------------------------------------------------------------------
    def load_gdt(self, cpu: Any) -> None:
        """The GDT the CPU uses: the guest's entries and the Switcher's own.

        Of the guest's entries only code and data segments reach the CPU,
        at DPL 1 or above and already accessed: a system descriptor (call
        gate, task gate, TSS, LDT) is blanked, so no far jump, call or task
        switch of the guest's can reach CPL 0 or make the CPU write its
        state into host pages.  (The core already raises DPL 0 to 1 and sets
        the accessed bit, as lguest did; this is the CPU's view, enforced.)"""
        gdt = np.array(cpu.gdt, dtype=np.uint32)
        b = gdt[:, 1]
        system = (b & 0x1000) == 0
        gdt[system] = 0
        dpl0 = ~system & ((b & 0x6000) == 0)
        b[dpl0] |= np.uint32(1 << 13)
        b[~system] |= np.uint32(0x100)
        self.gdt[:] = gdt
        for i, (a, b_) in SWITCHER_SEGMENTS.items():
            self.gdt[i] = (a, b_)

    def close(self) -> None:
        hooks = getattr(self, "hooks", None)
        if hooks is not None:
            hooks.close()
            self.hooks = None
        if self.uc is not None:
            for off, size, _prot in self._sw_regions:
                try:
                    self.uc.mem_unmap(SWITCHER_ADDR + off, size)
                except _unicorn.UcError:
                    pass
        self.gdt = self.host_idt = self.shadow_pgd = self._tss = self._sw_words = None
        if getattr(self.cpu, "host_idt", None) is not None:
            self.cpu.host_idt = None
        self.uc = None

    def release_switcher(self) -> None:
        """Free the Switcher's memory (after the engine that mapped it is gone)."""
        if self._sw is not None:
            try:
                self._sw.close()
            except BufferError:  # a view still lives (a traceback's frame): the GC frees it
                pass
            self._sw = None

    # --- running ---------------------------------------------------------------------------
    def run_guest(self, cpu: Any, idt: np.ndarray, changed: int) -> None:
        g = self.guest
        hooks = self.hooks
        if changed & (CHANGED_GDT | CHANGED_GDT_TLS):
            self.load_gdt(cpu)
        self._tss[3] = cpu.esp1  # the TSS mirrors SET_STACK, as lguest's did
        self._tss[4] = cpu.ss1
        hooks.set_guest_data(g.lguest_data, g.noirq_start, g.noirq_end)
        budget = 0
        clock = g.clock
        if self.virtual:
            nxt = clock.next_expiry()
            if nxt is not None:
                budget = max(1, -(-(nxt - clock.now_ns()) // self.ns_per_block))
        err = hooks.run(budget, self.deadline_ns)
        if self.virtual:
            blocks = hooks.blocks
            if blocks != self._last_blocks:
                clock.advance((blocks - self._last_blocks) * self.ns_per_block)
                self._last_blocks = blocks
        self._exit(cpu, idt, hooks.reason, err)

    def _exit(self, cpu: Any, idt: np.ndarray, reason: int, err: int) -> None:
        r = cpu.regs
        g = self.guest
        hooks = self.hooks
        if reason == _uchook.REASON_TRAP:
            if r.trapnum == 14:
                cpu.last_pagefault = hooks.cr2
        elif reason in (_uchook.REASON_TIMER, _uchook.REASON_IRQ, _uchook.REASON_BREAK, _uchook.REASON_DEADLINE):
            if reason == _uchook.REASON_IRQ and not hooks.has_native_core:
                hooks.clear_poke()
            r.trapnum = HOST_IRQ_TRAP
        elif reason == _uchook.REASON_INVALID:
            pass  # trapnum 6 at the instruction: handle_trap patches vmcall or reflects #UD
        elif reason == _uchook.REASON_SOFT_GP:
            n = hooks.trapnum
            r.eip = (r.eip - self._int_length(cpu, n)) & U32
            r.trapnum = 13
            r.errcode = n * 8 + 2
        elif reason == _uchook.REASON_DIRECT:
            # A direct trap the hook left to us: the same core call, from Python.
            n = hooks.trapnum
            a, b = int(idt[n, 0]), int(idt[n, 1])
            r.errcode = hooks.errcode
            cpu.set_guest_interrupt(a, b, (not hooks.is_int) and bool(load_core().has_err(n)))
            if g.dead is None:
                self.python_direct[n] = self.python_direct.get(n, 0) + 1
            r.trapnum = HOST_IRQ_TRAP
        elif reason == _uchook.REASON_MEM:
            self._memory_fault(cpu)
        elif reason == _uchook.REASON_SWITCHER:
            g.kill(f"lguest: trap {hooks.trapnum} ({M.lx(hooks.errcode)}) entering the guest at {M.lx(r.eip)}")
        elif reason == _uchook.REASON_BADSEG:
            g.kill(f"lguest: bad segment {M.lx(hooks.errcode)} delivering trap {hooks.trapnum}")
        elif reason == _uchook.REASON_DEAD:
            pass
        elif reason == _uchook.REASON_RING0:
            g.kill(f"lguest: guest code at CPL 0 at {M.lx(r.eip)}")
        elif reason == _uchook.REASON_VM86:
            g.kill(f"lguest: guest in virtual-8086 mode at {M.lx(r.eip)}")
        else:  # emu_start ended by itself: an emulator error, or the guest ran into the Switcher
            if err:
                g.kill(f"unicorn: {_unicorn.UcError(err)} at {M.lx(r.eip)}")
            else:
                g.kill("attempt to access switcher pages")

    def _int_length(self, cpu: Any, n: int) -> int:
        """Length of the ``int`` that raised vector n (eip is after it)."""
        if n in (3, 4):  # int3 (CC) and into (CE) are one byte; int $3 is two
            gpa = cpu.guest.guest_pa((cpu.regs.eip - 1) & U32)
            last = cpu.guest.memory.read(gpa, 1)[0] if gpa < cpu.guest.memory.size else 0
            if last in (0xCC, 0xCE):
                return 1
        return 2

    def _memory_fault(self, cpu: Any) -> None:
        r = cpu.regs
        typ, addr, _size = self.hooks.mem_fault
        if addr >= SWITCHER_ADDR:
            self.guest.kill("attempt to access switcher pages")
        elif self.paging:
            self.guest.kill("bad page table entry")  # a guest pte names a frame beyond RAM
        else:
            # A flat guest touched memory it does not have: the page fault a
            # real lguest guest would get (no page, so the present bit is 0).
            r.trapnum = 14
            r.errcode = (2 if typ in _MEM_WRITE_TYPES else 0) | (4 if r.cs & 3 == 3 else 0)
            cpu.last_pagefault = addr & U32

    # --- page tables ----------------------------------------------------------------------------
    def _guest_pgd(self, pgdir: int) -> np.ndarray | None:
        mem = self.guest.memory
        if pgdir % PAGE_SIZE or pgdir + PAGE_SIZE > mem.size:
            return None
        return np.frombuffer(mem.read(pgdir, PAGE_SIZE), dtype=np.uint32)

    def _sync_shadow(self, index: int | None = None) -> None:
        """Copy the guest's page-directory entries the CPU may use into the
        shadow (present, only _PAGE_TABLE flags, frames inside RAM); the rest
        are filled on demand (demand_page kills for bad ones)."""
        pgdir = self.guest.pgdir
        entries = self._guest_pgd(pgdir) if pgdir is not None else None
        if entries is None:
            if index is None:
                self.shadow_pgd[:SWITCHER_PGD_INDEX] = 0
            else:
                self.shadow_pgd[index] = 0
            return
        ok = ((entries & PTE_PRESENT) != 0) & ((entries & ~np.uint32(0xFFFFF000 | PGD_ALLOWED)) == 0) \
            & ((entries >> 12) < self.guest.pfn_limit)
        shadow = np.where(ok, entries | PTE_ACCESSED, 0).astype(np.uint32)
        if index is None:
            self.shadow_pgd[:SWITCHER_PGD_INDEX] = shadow[:SWITCHER_PGD_INDEX]
        elif index < SWITCHER_PGD_INDEX:
            self.shadow_pgd[index] = shadow[index]

    def enable_paging(self) -> None:
        self.shadow_pgd[SWITCHER_PGD_INDEX] = (SWITCHER_ADDR + SW_PT) | PTE_PRESENT | PTE_ACCESSED
        self._sync_shadow()
        self.uc.reg_write(_x86.UC_X86_REG_CR3, SWITCHER_ADDR + SW_PGD)
        if not self.paging:
            self.uc.reg_write(_x86.UC_X86_REG_CR0, self.uc.reg_read(_x86.UC_X86_REG_CR0) | CR0_PG | CR0_WP)
            self.paging = True

    def _flush_tlb(self) -> None:
        self.uc.ctl(_ucc.UC_CTL_TLB_FLUSH, _ucc.UC_CTL_IO_WRITE)

    def new_pgtable(self, cpu: Any, pgdir: int) -> None:
        self.enable_paging()  # guest.pgdir is already the new table; CR3 reload flushes the TLB

    def flush_tlb(self, cpu: Any, kernel_too: bool) -> None:
        if self.paging:
            self._sync_shadow()
            self._flush_tlb()

    def set_pte(self, cpu: Any, pgdir: int, vaddr: int, pte: int) -> None:
        """do_set_pte: the kernel checks the new pte only where it holds a
        shadow directory entry for vaddr -- in every shadow set for kernel
        addresses, in pgdir's for user ones; here the one shadow is the
        current directory's.  It copies a pte the guest marked ACCESSED or
        DIRTY (present or not: check_gpte does not look), and such a pte
        with PSE or a frame past RAM kills; one with neither bit is just
        dropped from the shadow, to be faulted in (and checked) later."""
        g = self.guest
        if self.paging and self.shadow_pgd[vaddr >> 22] & PTE_PRESENT \
                and (vaddr >= g.page_offset or pgdir == g.pgdir) \
                and pte & (PTE_ACCESSED | PTE_DIRTY) \
                and (pte & PAGE_PSE or (pte >> 12) >= g.pfn_limit):
            g.kill("bad page table entry")
        if self.paging:
            self._flush_tlb()

    def set_pmd(self, cpu: Any, pgdir: int, index: int) -> None:
        if self.paging and pgdir == self.guest.pgdir:
            self._sync_shadow(index)
            self._flush_tlb()

    def demand_page(self, cpu: Any, vaddr: int, errcode: int) -> bool:
        """A fault on a directory entry the shadow lacks but the guest has."""
        if not self.paging:
            return False
        index = vaddr >> 22
        if vaddr >= SWITCHER_ADDR:
            self.guest.kill("attempt to access switcher pages")
            return False
        if self.shadow_pgd[index] & PTE_PRESENT:
            return False
        entries = self._guest_pgd(self.guest.pgdir)
        if entries is None or not entries[index] & PTE_PRESENT:
            return False
        e = int(entries[index])
        if e & ~(0xFFFFF000 | PGD_ALLOWED) or (e >> 12) >= self.guest.pfn_limit:
            self.guest.kill("bad page directory entry")
            return False
        self.shadow_pgd[index] = e | PTE_ACCESSED
        self._flush_tlb()
        return True

    def code_changed(self, cpu: Any, gpa: int, length: int) -> None:
        """The vmcall patch: drop Unicorn's translations of those bytes."""
        eip = cpu.regs.eip
        try:
            self.uc.ctl_remove_cache(eip, eip + length)
        except _unicorn.UcError:
            self.uc.ctl_flush_tb()

    # --- statistics --------------------------------------------------------------------------------
    def direct_counts(self) -> dict[int, int]:
        counts = dict(self.hooks.direct_counts()) if self.hooks is not None else {}
        for n, c in self.python_direct.items():
            counts[n] = counts.get(n, 0) + c
        return dict(sorted(counts.items()))


# --- ELF ------------------------------------------------------------------------------------------
def parse_elf32(data: bytes) -> tuple[int, list[tuple[int, bytes, int]]]:
    """(entry, [(paddr, file bytes, memsz)]) of an ELF32 i386 executable's PT_LOAD segments."""
    if len(data) < 52 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 1 or data[5] != 1:
        raise ValueError("not a 32-bit little-endian ELF file")
    e_type, e_machine, _v, e_entry, e_phoff, _sh, _fl, _eh, e_phentsize, e_phnum = struct.unpack_from(
        "<HHIIIIIHHH", data, 16)
    if e_machine != 3:
        raise ValueError(f"not an i386 ELF file (e_machine {e_machine})")
    if e_type not in (2, 3):
        raise ValueError("not an executable ELF file")
    segments = []
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if e_phentsize < 32 or off + 32 > len(data):
            raise ValueError("truncated ELF program header table")
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _flags, _align = struct.unpack_from("<8I", data, off)
        if p_type != 1:  # PT_LOAD
            continue
        if p_offset + p_filesz > len(data) or p_filesz > p_memsz:
            raise ValueError("truncated ELF segment")
        segments.append((p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))
    return e_entry, segments


# --- the launcher ------------------------------------------------------------------------------------
class UnicornLauncher:
    """lguest's Launcher for a guest running on Unicorn (see the module text).

    ``with UnicornLauncher(memory=16 << 20) as lg: lg.load_elf(path); result = lg.run()``
    """

    #: Virtual clock: guest nanoseconds per executed basic block (Unicorn
    #: translation block).  A block is a handful of instructions, so this is
    #: a guest that runs a few hundred million instructions a second.
    ns_per_block = 10

    #: On the main thread, run() returns to Python at least this often (a
    #: host stop the guest cannot see) so that signal handlers -- Ctrl-C --
    #: run while a guest spins inside the emulator.
    SIGNAL_SLICE_NS = 50_000_000

    def __init__(self, memory: int, *, syscall_vector: int = 0x80, page_offset: int = 0,
                 clock: str = "virtual", console: Callable[[bytes], None] | Any = None,
                 used_vectors: Any = None, native_direct: bool = True, core: Any = None,
                 console_limit: int = DEFAULT_CONSOLE_LIMIT) -> None:
        if clock not in ("virtual", "wall"):
            raise ValueError('clock must be "virtual" or "wall"')
        if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0 or memory % PAGE_SIZE:
            raise ValueError(f"memory must be a positive multiple of {PAGE_SIZE}")
        if page_offset % (4 << 20) or not 0 <= page_offset < SWITCHER_ADDR:
            raise ValueError("page_offset must be a multiple of 4 MiB below the Switcher")
        if page_offset and page_offset < memory:
            raise ValueError("page_offset must lie above guest RAM")
        if page_offset + memory > SWITCHER_ADDR or memory > SWITCHER_ADDR:
            raise ValueError("guest memory overlaps the Switcher")
        self.memory_size = memory
        self.syscall_vector = syscall_vector
        self.page_offset = page_offset
        self.clock_mode = clock
        self._console_arg = console
        self._console_limit = console_limit
        self._used_vectors = used_vectors
        self._native_direct = native_direct
        self._core = core
        self.host: Any = None
        self.memory: GuestMemory | None = None
        self.guest: Any = None
        self.cpu: Any = None
        self.uc: Any = None
        self.backend: UnicornBackend | None = None
        self.launcher: Launcher | None = None
        self.entry: int | None = None
        # One run at a time: the engine, the native hooks' state and the
        # cpu are not thread-safe.  Held for the whole of run().
        self._run_lock = threading.Lock()
        self._run_thread: int | None = None  # ident of the thread inside run(), if any
        self._memory_hold: Any = None

    # --- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> UnicornLauncher:
        if self.host is not None or self.backend is not None:
            raise RuntimeError("UnicornLauncher is already entered (one with block at a time)")
        _check_version()
        host = Host(self.syscall_vector, self._used_vectors)
        host.init_interrupts()  # VectorBusy if another module has the vector
        self.host = host
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        return self

    #: __exit__ during a run on another thread breaks the guest out and
    #: waits this long for run() to return before giving up.
    teardown_wait = 5.0

    def __exit__(self, *exc: Any) -> None:
        """Tear down.  If another thread is inside run(), break it out and
        wait (run returns within a block of the request); RuntimeError, with
        nothing released, if it has not returned after ``teardown_wait``."""
        if self._run_thread == threading.get_ident():
            raise RuntimeError("UnicornLauncher cannot be torn down from inside its own run (a console or "
                               "device callback); call break_out() there and leave the with block after run()")
        if not self._run_lock.acquire(blocking=False):
            try:
                self.break_out()
            except RuntimeError:
                pass  # already torn down by another thread
            if not self._run_lock.acquire(timeout=self.teardown_wait):
                raise RuntimeError("UnicornLauncher is still running a guest on another thread; not torn down")
        try:
            self._teardown()
        finally:
            self._run_lock.release()

    def _setup(self) -> None:
        self.memory = mem = GuestMemory(self.memory_size)
        clock = VirtualClock() if self.clock_mode == "virtual" else None
        self.guest = g = self.host.new_guest(mem, page_offset=self.page_offset, clock=clock, core=self._core)
        self.cpu = cpu = g.new_cpu()
        # lguest_arch_setup_regs (the loader sets eip), and setup_guest_gdt's flat segments.
        cpu.setup_regs(0)
        for i, (a, b) in GUEST_FLAT_SEGMENTS.items():
            cpu.gdt[i] = (a, b)
        self.uc = uc = _unicorn.Uc(_ucc.UC_ARCH_X86, _ucc.UC_MODE_32)
        # Cap the translation cache before anything initialises the engine
        # (Unicorn sizes the code buffer once, at its lazy init, on the first
        # mem_map): see TCG_BUFFER_SIZE.
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)
        # Unicorn maps the pages themselves: hold the memory open until
        # mem_unmap (GuestMemory.close() raises meanwhile).
        hold = mem.hold()
        hold.__enter__()
        self._memory_hold = hold
        uc.mem_map_ptr(0, mem.size, _ucc.UC_PROT_ALL, mem.address)
        self.backend = backend = UnicornBackend(uc, cpu, virtual=clock is not None, ns_per_block=self.ns_per_block,
                                                native_direct=self._native_direct)
        if not backend.hooks.has_native_core:
            backend.hooks.slice_ns = 0 if clock is not None else 1_000_000  # pure Python core, wall clock
        cpu.backend = backend
        if self.page_offset:
            g.pgdir = self._initial_page_tables()
            backend.enable_paging()
        self.launcher = Launcher(cpu, backend, console=self._console_arg, console_limit=self._console_limit)

    def _initial_page_tables(self) -> int:
        """lguest's Launcher's tables: all RAM at 0 and at page_offset, at the top of RAM."""
        mem = self.memory
        pages = mem.size // PAGE_SIZE
        n_tables = -(-pages // 1024)
        pgdir = mem.size - PAGE_SIZE
        tables = pgdir - n_tables * PAGE_SIZE
        if tables <= 0:
            raise ValueError("guest memory too small for its page tables")
        ptes = (np.arange(n_tables * 1024, dtype=np.uint32) * PAGE_SIZE) | (PTE_PRESENT | PTE_RW | PTE_USER)
        ptes[pages:] = 0
        mem.write(tables, ptes.tobytes())
        pgd = np.zeros(1024, dtype=np.uint32)
        for i in range(n_tables):
            entry = (tables + i * PAGE_SIZE) | PTE_PRESENT | PTE_RW | PTE_USER
            pgd[i] = entry
            pgd[(self.page_offset >> 22) + i] = entry
        mem.write(pgdir, pgd.tobytes())
        return pgdir

    def _teardown(self) -> None:
        if self.backend is not None and self.cpu is not None:
            self._final_stats = self.stats  # still readable after the with block
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()
        unmapped = True
        if self.uc is not None:
            try:
                self.uc.mem_unmap(0, self.memory_size)
            except _unicorn.UcError:
                unmapped = self._memory_hold is None  # mapped, or never mapped
            self.uc = None  # the last reference: the engine is closed
        if self._memory_hold is not None and unmapped:
            self._memory_hold.__exit__(None, None, None)
            self._memory_hold = None
        if backend is not None:
            backend.release_switcher()  # Unicorn no longer maps it
        if self.cpu is not None:
            self.cpu.backend = None
        if self.memory is not None:
            try:
                self.memory.close()
            except (BufferError, RuntimeError):  # a view or a hold still lives: the GC frees it
                pass
        if self.host is not None:
            self.host.free_interrupts()
            self.host = None

    def __del__(self) -> None:
        # A launcher entered but never exited (an exception, a forgotten with
        # block) is otherwise never freed: the native hooks, the core's native
        # API capsule, the cpu and its backend form a cycle the garbage
        # collector cannot see through (capsules are not traversed).
        if getattr(self, "backend", None) is not None and getattr(self, "_run_thread", None) is None:
            try:
                self._teardown()
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
                pass

    # --- loading ----------------------------------------------------------------------------------
    def _check_live(self) -> None:
        if self.backend is None:
            raise RuntimeError("use UnicornLauncher as a context manager")

    def load_flat(self, data: bytes, load_address: int, entry: int) -> None:
        """Copy a raw image to guest-physical ``load_address``; start at ``entry``."""
        self._check_live()
        data = to_bytes(data)
        load_address, entry = to_u32(load_address, "load_address"), to_u32(entry, "entry")
        if load_address + len(data) > self.memory.size:
            raise ValueError("image does not fit in guest memory")
        self.memory.write(load_address, data)
        self.cpu.regs.eip = entry
        self.entry = entry

    def load_elf(self, path: Any) -> int:
        """Load an ELF32 i386 executable: PT_LOAD segments at their physical
        addresses, bss zeroed; start at its entry point (virtual when
        page_offset is set: the initial page tables map it).  Returns the entry."""
        self._check_live()
        with open(path, "rb") as f:
            data = f.read()
        entry, segments = parse_elf32(data)
        for paddr, raw, memsz in segments:
            if paddr + memsz > self.memory.size:
                raise ValueError(f"ELF segment at {paddr:#x} ({memsz:#x} bytes) does not fit in guest memory")
            self.memory.write(paddr, raw + bytes(memsz - len(raw)))
        self.cpu.regs.eip = entry
        self.entry = entry
        return entry

    # --- running -----------------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> RunResult:
        """Run until the guest dies ("dead"), asks to reboot ("restart"), a
        break-out ("break") or ``timeout`` seconds ("timeout")."""
        timeout = to_timeout(timeout)
        if self._run_thread == threading.get_ident():
            raise RuntimeError("UnicornLauncher.run() called from inside its own run (a console or device callback)")
        if not self._run_lock.acquire(blocking=False):
            raise RuntimeError("UnicornLauncher.run() is already running on another thread")
        try:
            self._check_live()
            backend = self.backend
            hooks = backend.hooks
            backend.deadline_ns = 0 if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
            # Python runs signal handlers only between bytecodes, and a guest
            # that never leaves the emulator never gives it one: on the main
            # thread (where SIGINT lands) the native loop hands back control
            # every SIGNAL_SLICE_NS, so Ctrl-C raises KeyboardInterrupt soon.
            # The slice is a host stop like the clock's: the guest cannot see it.
            slice_ns = hooks.slice_ns
            if threading.current_thread() is threading.main_thread():
                hooks.slice_ns = min(slice_ns, self.SIGNAL_SLICE_NS) if slice_ns else self.SIGNAL_SLICE_NS
            self._run_thread = threading.get_ident()
            try:
                return self.launcher.run(timeout)
            finally:
                self._run_thread = None
                backend.deadline_ns = 0
                hooks.slice_ns = slice_ns
        finally:
            self._run_lock.release()

    def _live_parts(self) -> tuple[Launcher, Any]:
        """(launcher, hooks), read once: another thread's __exit__ may clear
        the attributes between two reads."""
        launcher, backend = self.launcher, self.backend
        hooks = backend.hooks if backend is not None else None
        if launcher is None or hooks is None:
            raise RuntimeError("UnicornLauncher is not entered (or already torn down)")
        return launcher, hooks

    def send_irq(self, irq: int) -> None:
        """Raise virtual irq ``irq`` (LHREQ_IRQ); thread-safe, honoured at the next guest block."""
        launcher, hooks = self._live_parts()
        launcher.send_irq(irq)
        hooks.poke()

    def break_out(self) -> None:
        """Make run() return "break" soon (LHREQ_BREAK); thread-safe."""
        launcher, hooks = self._live_parts()
        launcher.break_out()
        hooks.request_stop()

    @property
    def console(self) -> bytes:
        """The newest ``console_limit`` bytes of early-console output."""
        return self.launcher.console if self.launcher is not None else b""

    @property
    def console_dropped(self) -> int:
        """Early-console bytes dropped from the front to keep ``console_limit``."""
        return self.launcher.console_dropped if self.launcher is not None else 0

    @property
    def stats(self) -> dict[str, int]:
        """A flat mapping of counters (all ints):

        ``irq<n>``            deliveries of virtual irq n (vector 32+n)
        ``direct_<0xVV>``     direct traps delivered at vector VV (native hook, or
                              the Python path with ``native_direct=False``)
        ``reflected_<n>``     traps handle_trap reflected into the guest, by number
        ``hypercall_<n>``     hypercalls by number (``hypercall_other``: every
                              unknown number, one key whatever the guest tries)
        ``vector_<0xVV>``     every delivery at vector VV (the three above)
        ``exits_<reason>``    why the emulator stopped (trap, timer, irq, ...)
        ``entries``, ``kills``, ``blocks`` (guest basic blocks executed),
        ``io_emulated`` (in/out instructions given lguest's answer)
        """
        cpu = self.cpu
        out: dict[str, int] = {}
        if self.backend is None:
            return dict(getattr(self, "_final_stats", out))
        if cpu is None:
            return out
        st = getattr(cpu, "stats", None)
        vectors: dict[int, int] = {}
        for irq, n in enumerate(cpu.irq_counts):
            if n:
                out[f"irq{irq}"] = int(n)
                vectors[32 + irq] = vectors.get(32 + irq, 0) + int(n)
        if self.backend is not None:
            for v, n in self.backend.direct_counts().items():
                out[f"direct_{v:#04x}"] = int(n)
                vectors[v] = vectors.get(v, 0) + int(n)
        if st is not None:
            for v, n in sorted(st.reflected_traps.items()):
                out[f"reflected_{v}"] = int(n)
                vectors[v] = vectors.get(v, 0) + int(n)
            for h, n in sorted(st.hypercalls.items()):
                out["hypercall_other" if h == OTHER else f"hypercall_{h}"] = int(n)
            out["entries"] = int(st.entries)
            out["kills"] = int(st.kills)
        for v, n in sorted(vectors.items()):
            out[f"vector_{v:#04x}"] = n
        if self.backend is not None and self.backend.hooks is not None:
            for reason, n in self.backend.hooks.stop_counts().items():
                out[f"exits_{reason}"] = int(n)
            out["blocks"] = int(self.backend.hooks.blocks)
            if self.backend.hooks.io_count:
                out["io_emulated"] = int(self.backend.hooks.io_count)
        return out
