"""Checking a guest image and the memory layout before the backend sees them (one-line errors)."""

from __future__ import annotations

import os
import stat
from typing import Any

from ..constants import SWITCHER_ADDR
from .common import UsageError, _mib


# --- lguest run: checks that turn every bad input into one line ------------------------------------
def check_layout(memory: int, page_offset: int) -> None:
    """The memory/page-offset rules UnicornLauncher enforces, with the ranges spelled out."""
    top = SWITCHER_ADDR  # the Switcher's 4 MiB at the top of the address space
    if page_offset:
        if page_offset % (4 << 20) or not 0 < page_offset < top:
            raise UsageError(f"--page-offset: {page_offset:#x} is not a multiple of 4 MiB (0x400000) below "
                             f"the Switcher at {top:#x} (e.g. 0xC0000000, or 0 for no paging)")
        if page_offset < memory:
            raise UsageError(f"--page-offset: {page_offset:#x} lies inside guest RAM ({_mib(memory)}); "
                             f"it must be at least --memory ({memory:#x})")
        if page_offset + memory > top:
            raise UsageError(f"--memory: {_mib(memory)} at --page-offset {page_offset:#x} overlaps the Switcher; "
                             f"the largest is {_mib(top - page_offset)}")
    elif memory > top:
        raise UsageError(f"--memory: {_mib(memory)} is too large: the backend takes 4 KiB to {_mib(top)} "
                         "(the top 4 MiB of the 32-bit address space hold the Switcher)")


#: The largest image file read: a 32-bit guest cannot load more.
MAX_IMAGE = 1 << 32


def load_image(path: str, memory: int) -> tuple[int, list[tuple[int, bytes, int]]]:
    """Read and check an ELF32 i386 image: (entry, segments), or UsageError."""
    from ..unicorn import parse_elf32  # the loader UnicornLauncher.load_elf uses

    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: is a directory, not a guest image")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file")  # /dev/zero would be read forever
        if st.st_size > MAX_IMAGE:
            raise UsageError(f"{path}: {st.st_size} bytes is too large for a 32-bit guest image")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise UsageError(f"{path}: empty file, not an ELF image")
    if data[:4] == b"\x7fELF" and len(data) > 4 and data[4] == 2:
        raise UsageError(f"{path}: a 64-bit ELF file; lguest guests are 32-bit i386 (link with ld -m elf_i386)")
    try:
        entry, segments = parse_elf32(data)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not segments:
        raise UsageError(f"{path}: no loadable (PT_LOAD) segments")
    need = max(paddr + memsz for paddr, _raw, memsz in segments)
    if need > memory:
        fit = -(-need // (1 << 20)) << 20
        raise UsageError(f"{path}: segments do not fit in {_mib(memory)} of guest memory: "
                         f"they need {need} bytes ({need:#x}); try --memory {fit >> 20}M")
    return entry, segments


def _import_backend() -> Any:
    """UnicornLauncher, or UsageError saying which piece is missing."""
    from importlib import util

    if util.find_spec("unicorn") is None:
        raise UsageError("the Unicorn backend needs Unicorn 2.1.4: install it with pip install 'lguest[unicorn]'")
    try:
        from ..unicorn import UnicornLauncher
    except ImportError as exc:
        missing = {getattr(e, "name", None) for e in (exc, exc.__cause__)}
        if "lguest.unicorn._uchook" in missing:  # tell "hooks not built" from "Unicorn missing"
            cause = exc.__cause__ or exc
            raise UsageError(f"the compiled Unicorn hooks (lguest.unicorn._uchook) are not built ({cause}); "
                             "rebuild the package: pip install -e . (needs Cython and a C compiler)") from None
        raise UsageError(f"the Unicorn backend is not usable: {exc}") from None
    return UnicornLauncher
