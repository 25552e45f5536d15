"""Loading: the PT_LOAD segments of an ELF32 i386 executable."""

from __future__ import annotations

import struct


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

