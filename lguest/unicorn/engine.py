"""The Unicorn library itself: its version, its C entry points, and the
three fields inside an engine that the native hook bounds translation with.

Nothing here knows about lguest's guests; :mod:`.layout` measures the saved
context, :mod:`.backend` puts both to use.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Any

import unicorn as _unicorn
from unicorn import x86_const as _x86

UNICORN_VERSION = "2.1.4"
#: Per-engine translation cache (QEMU's code_gen_buffer: translated host code
#: and the TranslationBlock structs, both allocated from it).  Unicorn's
#: default reserves 1 GiB and a guest running through fresh code (1 MiB of
#: zeroed RAM is ~250,000 blocks) touched ~100 bytes of it per guest byte,
#: 50-100 MiB per guest, kept until close.  When the buffer is full QEMU
#: flushes every translation and starts again, so host memory stays below
#: this; a working set larger than it only costs re-translation.
TCG_BUFFER_SIZE = 8 << 20


def uclib() -> Any:
    """The loaded libunicorn (ctypes), as the Python binding loaded it."""
    from unicorn.unicorn_py3 import unicorn as binding

    return binding.uclib


def engine_open(uc: Any) -> bool:
    """False once Unicorn's binding has closed ``uc``: its ``weakref.finalize``
    has run.  The garbage collector runs weakref callbacks before any
    ``__del__`` of the same collection, so a launcher freed together with
    its engine finds the engine already closed, and must not call into it.
    (A binding without that finalizer: taken as open, as before.)"""
    fin = getattr(uc, "_Uc__finalizer", None)
    return fin is None or bool(fin.alive)


def function_addresses() -> dict[str, int]:
    """The C entry points the native hooks call, by name."""
    lib = uclib()
    names = ("uc_hook_add", "uc_hook_del", "uc_emu_start", "uc_emu_stop", "uc_reg_read", "uc_reg_write",
             "uc_context_save", "uc_context_restore", "uc_ctl")
    return {n: ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in names}


def engine_handle(uc: Any) -> int:
    """The engine's ``uc_engine *``."""
    return uc._uch.value


def check_version() -> None:
    version = getattr(_unicorn, "__version__", "?")
    if version != UNICORN_VERSION:
        raise ImportError(f"lguest.unicorn is calibrated for Unicorn {UNICORN_VERSION}, found {version}")


class UnsupportedUnicorn(RuntimeError):
    """The Unicorn library's saved-context layout is not what lguest expects."""


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
    with, each checked against what the engine reports through its API,
    and ``env``, the CPU state (whose registers are checked likewise): the
    hook reads a trap's error code and kind there (uh_intr_record).

    Raises UnsupportedUnicorn when the engine does not have Unicorn 2.1.4's
    layout: lguest does not run a guest it cannot contain."""
    check_version()
    handle = engine_handle(uc)
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
    internals = {"tb_cflags": cpu + _CPU_CFLAGS_NEXT_TB, "env": cpu + _X86CPU_ENV,
                 "code_gen_ptr": tcg + _TCG_CODE_GEN_PTR, "code_gen_highwater": tcg + _TCG_CODE_GEN_HIGHWATER,
                 "nb_temps": tcg + _TCG_NB_TEMPS,
                 "tb_max_insns": TB_MAX_INSNS, "tb_guard": TB_GUARD}
    internals.update(tlb_internals(cpu, cpu + _X86CPU_ENV))
    return internals


# --- the store fast path ----------------------------------------------------------------------
# Unicorn 2.1.4 marks every writable RAM page TLB_NOTDIRTY in the CPU's TLB,
# so every guest store takes the slow path (docs/PERFORMANCE.md); the native
# block hook takes the flag off pages that hold no translated code (see
# uh_fast_new_block in _uchook.h).  For that it needs the TLB: QEMU 5's
# CPUTLBDescFast f[NB_MMU_MODES] ({mask, table} each) lies just before env,
# in CPUNegativeOffsetState; each entry is 64 bytes (addr_read, addr_write,
# addr_code, Unicorn's paddr, addend); TLB_NOTDIRTY is bit 10 of addr_write;
# and libunicorn's own tlb_reset_dirty_x86_64(cpu, host, length) puts the
# flag back on every entry (every MMU index, the victim TLB) mapping a host
# range.  All of it is checked first, by running a store on a scratch engine
# (tlb_probe); an engine that fails runs without the fast path.
TLB_NOTDIRTY = 1 << 10
_TLB_ENTRY = 64
_NB_MMU_MODES = 3
_TLB_F_BEFORE_ENV = 64  # &env->tlb.f[0] == (char *)env - 64


def _tlb_pairs(env: int) -> list[tuple[int, int]]:
    """The {mask, table} pairs before ``env``, each checked: a mask of the
    form (2^k - 1) << 6 with 2^6..2^22 entries, a table readable whole."""
    words = struct.unpack(f"<{2 * _NB_MMU_MODES}Q", _peek(env - _TLB_F_BEFORE_ENV, 16 * _NB_MMU_MODES))
    pairs = [(words[2 * i], words[2 * i + 1]) for i in range(_NB_MMU_MODES)]
    for mask, table in pairs:
        n = (mask >> 6) + 1
        if mask & 0x3F or n & (n - 1) or not 64 <= n <= 1 << 22 or table < 1 << 16:
            raise UnsupportedUnicorn(f"unexpected TLB (mask {mask:#x}, table {table:#x})")
        _peek(table, n * _TLB_ENTRY)
    return pairs


def _tlb_entry(env: int, va: int) -> tuple[int, list[int]] | None:
    """(address, [addr_read, addr_write, addr_code, paddr, addend]) of the
    main-table entry holding page ``va``, whichever MMU index has it."""
    page = va & ~0xFFF
    for mask, table in _tlb_pairs(env):
        at = table + (((page >> 12) << 6) & mask)
        words = list(struct.unpack("<5Q", _peek(at, 40)))
        if words[2] == page or (words[1] & ~0xFFF) == page:
            return at, words
    return None


_probe_result: list[str | None] = []


def tlb_probe() -> str | None:
    """Check the TLB layout and tlb_reset_dirty on a scratch engine (once
    per process): after ``mov %eax, data; ...`` the data page's entry must
    map it with addr_write == page | TLB_NOTDIRTY and the code page's
    addr_code == page, both with addends onto our buffer; tlb_reset_dirty
    on the data page must put back a cleared flag, and leave an entry of
    another page alone.  None when all holds, else why not."""
    if _probe_result:
        return _probe_result[0]
    import mmap

    from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc

    why: str | None = None
    buf = mmap.mmap(-1, 0x3000)
    cbuf = ctypes.c_char.from_buffer(buf)
    host = ctypes.addressof(cbuf)
    try:
        code, data, other = 0x10000, 0x11000, 0x12000
        buf[0:16] = bytes.fromhex("a3001001008905002001009090909090")  # mov %eax,data; mov %eax,other
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        try:
            uc.mem_map_ptr(code, 0x3000, UC_PROT_ALL, host)
            uc.emu_start(code, code + 11)
            cpu = struct.unpack("<Q", _peek(engine_handle(uc) + _UC_CPU, 8))[0]
            env = cpu + _X86CPU_ENV
            d, o, c = _tlb_entry(env, data), _tlb_entry(env, other), _tlb_entry(env, code)
            if d is None or o is None or c is None:
                raise UnsupportedUnicorn("no TLB entry for the probe's pages")
            (d_at, dw), (o_at, ow), (_, cw) = d, o, c
            if dw[1] != data | TLB_NOTDIRTY or dw[4] + data != host + 0x1000 \
                    or ow[1] != other | TLB_NOTDIRTY or cw[2] != code or cw[4] + code != host:
                raise UnsupportedUnicorn(f"the TLB entries are not as expected ({dw}, {cw})")
            reset = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)(
                ctypes.cast(uclib().tlb_reset_dirty_x86_64, ctypes.c_void_p).value)
            for at in (d_at, o_at):
                ctypes.memmove(at + 8, struct.pack("<Q", data if at == d_at else other), 8)
            reset(cpu, host + 0x1000, 0x1000)
            dw2 = struct.unpack("<Q", _peek(d_at + 8, 8))[0]
            ow2 = struct.unpack("<Q", _peek(o_at + 8, 8))[0]
            if dw2 != data | TLB_NOTDIRTY or ow2 != other:
                raise UnsupportedUnicorn("tlb_reset_dirty_x86_64 does not re-protect as expected")
            # the cleared entry takes the inline path, and the store lands
            uc.reg_write(_x86.UC_X86_REG_EAX, 0x6C677374)
            uc.emu_start(code, code + 11)
            if bytes(buf[0x2000:0x2004]) != b"tsgl" or bytes(buf[0x1000:0x1004]) != b"tsgl":
                raise UnsupportedUnicorn("a store through a cleared entry went astray")
        finally:
            uc.mem_unmap(code, 0x3000)
            del uc
    except (UnsupportedUnicorn, AttributeError, OSError, ImportError) as exc:
        why = str(exc)
    except Exception as exc:  # a Unicorn error on the scratch engine: no fast path, no crash
        why = f"{type(exc).__name__}: {exc}"
    finally:
        del cbuf
        buf.close()
    _probe_result.append(why)
    return why


def tlb_internals(cpu: int, env: int) -> dict[str, int]:
    """The store fast path's fields for this engine (the CPU, its TLB pairs,
    libunicorn's tlb_reset_dirty), or {} when tlb_probe or this engine's
    pairs fail their checks: the guest then runs without it."""
    if tlb_probe() is not None:
        return {}
    try:
        _tlb_pairs(env)
        reset = ctypes.cast(uclib().tlb_reset_dirty_x86_64, ctypes.c_void_p).value
    except (UnsupportedUnicorn, AttributeError):
        return {}
    return {"fast_cpu": cpu, "tlb_fast": env - _TLB_F_BEFORE_ENV, "tlb_reset_dirty": reset}

