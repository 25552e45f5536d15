"""Measuring the saved ``uc_context`` layout the native hooks patch.

The Switcher's entry and a direct trap's delivery are patches to a saved
context (registers, segment caches, hflags, the pending exception), whose
layout Unicorn does not publish.  Each offset is found on a scratch engine
by writing known values through the API and looking for them in the saved
bytes, then checked; anything unexpected raises :class:`UnsupportedUnicorn`.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from typing import Any

import unicorn as _unicorn
from unicorn import unicorn_const as _ucc
from unicorn import x86_const as _x86

from .engine import UnsupportedUnicorn, check_version, uclib
from .switcher import segment_descriptor

_layout_cache: dict[str, int] | None = None
_layout_lock = threading.Lock()


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
    size = uclib().uc_context_size(uc._uch)
    return ctx, addr, ctypes.string_at(addr, size)


#: The scratch GDT every measurement runs with: flat ring-0 code and data,
#: four data segments with distinct bases and limits (so each segment cache
#: is unique in the saved bytes), and 7, not present.
_FLAT = {1: segment_descriptor(0, 0xFFFFF, 0x9B), 2: segment_descriptor(0, 0xFFFFF, 0x93),
         3: segment_descriptor(0x12345000, 0x0ABCD, 0x93, 0x4), 4: segment_descriptor(0x23456000, 0x01111, 0x93, 0x4),
         5: segment_descriptor(0x34567000, 0x02222, 0x93, 0x4), 6: segment_descriptor(0x45678000, 0x03333, 0x93, 0x4),
         7: segment_descriptor(0, 0xFFFFF, 0x13)}

#: Two faults, then a software interrupt: the second fault is what Unicorn
#: turns into a "double fault" unless ``old_exception`` is reset (the bug
#: the native hook fixes).
_FAULTS = bytes.fromhex("66b83812" "8ed8"  # mov $0x1238,%ax; mov %ax,%ds: #GP(0x1238)
                        "66b83800" "8ec0"  # mov $0x38,%ax; mov %ax,%es: #NP(0x38)
                        "cd80" "90")  # int $0x80


def _seg_cache(sel: int) -> bytes:
    """The bytes of QEMU's SegmentCache for selector ``sel`` of :data:`_FLAT`."""
    a, b = _FLAT[sel >> 3]
    base = (a >> 16) | ((b & 0xFF) << 16) | (b & 0xFF000000)
    limit = (a & 0xFFFF) | (b & 0xF0000)
    if b & 0x800000:
        limit = (limit << 12) | 0xFFF
    return struct.pack("<I", sel) + b"\0\0\0\0" + struct.pack("<QII", base, limit, b)


def _measure_state() -> dict[str, int]:
    """Registers, eip, eflags, the segment caches and hflags: written with
    distinctive values through the API, then found in the saved bytes."""
    layout: dict[str, int] = {}
    flat = _FLAT
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

    layout.update(_segment_layout(blob))
    return layout


def _segment_layout(blob: bytes) -> dict[str, int]:
    """Where the six segment caches (ES CS SS DS FS GS) and hflags sit in a
    context saved with :data:`_FLAT`'s selectors loaded."""
    es = _find_all(blob, _seg_cache(0x18))
    ds = _find_all(blob, _seg_cache(0x20))
    if len(es) != 1 or len(ds) != 1 or (ds[0] - es[0]) % 3:
        raise UnsupportedUnicorn("cannot find the segment caches")
    stride = (ds[0] - es[0]) // 3
    segs = es[0]
    expect = {0: 0x18, 1: 0x08, 2: 0x10, 3: 0x20, 4: 0x28, 5: 0x30}  # ES CS SS DS FS GS
    for idx, sel in expect.items():
        if blob[segs + idx * stride: segs + idx * stride + 24] != _seg_cache(sel):
            raise UnsupportedUnicorn("unexpected segment cache layout")
    hflags = segs - 8  # hflags, hflags2, then segs[]
    hf = struct.unpack_from("<I", blob, hflags)[0]
    if hf & 3 != 0 or hf & 0xB0 != 0xB0:  # CPL 0, PE, CS32, SS32
        raise UnsupportedUnicorn("cannot find hflags")
    return {"segs": segs, "seg_stride": stride, "hflags": hflags}


def _measure_exceptions() -> dict[str, int]:
    """error_code, exception_is_int, old_exception: their values differ
    between the two faults and the interrupt of :data:`_FAULTS`."""
    layout: dict[str, int] = {}
    flat = _FLAT
    code = _FAULTS
    seen: list[tuple[int, int, bytes]] = []

    def on_intr(uc: Any, intno: int, user: Any) -> None:
        _, _, raw = _context_bytes(uc)
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

    return layout


def _check_old_exception_reset(layout: dict[str, int]) -> None:
    """Resetting old_exception at each fault keeps the second one a #NP."""
    flat = _FLAT
    code = _FAULTS
    seen: list[tuple[int, int]] = []
    old_off = layout["old_exception"]

    def on_intr_reset(uc: Any, intno: int, user: Any) -> None:
        ctx = uc.context_save()
        raw = ctypes.string_at(ctx.context.value + layout["error_code"], 4)
        seen.append((intno, struct.unpack("<i", raw)[0]))
        ctypes.memmove(ctx.context.value + old_off, struct.pack("<i", -1), 4)
        uc.context_restore(ctx)
        if intno in (11, 13):
            uc.reg_write(_x86.UC_X86_REG_EIP, uc.reg_read(_x86.UC_X86_REG_EIP) + 2)
        else:
            uc.emu_stop()

    uc = _scratch_engine(flat, code)
    uc.hook_add(_ucc.UC_HOOK_INTR, on_intr_reset)
    uc.emu_start(0x2000, 0x2000 + len(code))
    if [s[0] for s in seen] != [13, 11, 0x80] or seen[:2] != [(13, 0x1238), (11, 0x38)]:
        raise UnsupportedUnicorn(f"old_exception reset does not work: {seen}")


def _measure_layout() -> dict[str, int]:
    """Find, in a saved uc_context, the fields the native hooks patch.

    Every offset is measured on a scratch engine against known states and
    then checked (the reset of ``old_exception`` must make a second #GP a
    #GP again, not a double fault).  Offsets are from the uc_context pointer.
    """
    layout = _measure_state()
    layout.update(_measure_exceptions())
    _check_old_exception_reset(layout)
    return layout


def context_layout() -> dict[str, int]:
    """The measured uc_context offsets (cached per process)."""
    global _layout_cache
    with _layout_lock:
        if _layout_cache is None:
            check_version()
            _layout_cache = _measure_layout()
        return dict(_layout_cache)

