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
    return {"tb_cflags": cpu + _CPU_CFLAGS_NEXT_TB, "env": cpu + _X86CPU_ENV, "code_gen_ptr": tcg + _TCG_CODE_GEN_PTR,
            "code_gen_highwater": tcg + _TCG_CODE_GEN_HIGHWATER, "nb_temps": tcg + _TCG_NB_TEMPS,
            "tb_max_insns": TB_MAX_INSNS, "tb_guard": TB_GUARD}

