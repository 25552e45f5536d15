"""The numbers the guest kernel and the host share (``kernel/kernel.h``).

Guest-physical layout of an ``lguest exec`` guest::

    0x1000    struct bootinfo      host -> kernel (what to run), kernel -> host (results)
    0x2000    struct cons_page     the console device: NOTIFY this address
    0x10000   stdout ring, 0x20000 stderr ring, 0x30000 stdin ring (RING_SIZE each)
    0x100000  the kernel (linked at PAGE_OFFSET + 1 MiB)
    ...       the kernel's page allocator (program pages, page tables, files written)
    top       the root image (newc cpio), argv/envp, the Launcher's initial page tables
"""

from __future__ import annotations

import struct

PAGE_OFFSET = 0xC000_0000
PAGE_SIZE = 4096
BOOTINFO_PA = 0x1000
CONS_PA = 0x2000
RING_OUT_PA = 0x10000
RING_IN_PA = 0x30000
RING_SIZE = 0x10000
KERNEL_PA = 0x100000
BOOT_MAGIC = 0x5845474C  # "LGEX"
NSYSCALLS = 512

BF_EXPORT = 1
BF_STDIN_TTY = 2
BF_STDOUT_TTY = 4
BF_STDERR_TTY = 8

R_NONE, R_EXIT, R_SIGNAL, R_NOTFOUND, R_NOEXEC, R_NOMEM = range(6)

#: struct bootinfo: 32 words in, then the results.
BOOT_IN_FIELDS = ("magic", "mem_size", "image_pa", "image_len", "args_pa", "args_len", "argc", "envc",
                  "syscall_vector", "tick_ns", "epoch_sec", "seed_lo", "seed_hi", "flags", "tty_rows",
                  "tty_cols", "alloc_limit_pa")
BOOT_IN_WORDS = 32
BOOT_OUT_FIELDS = ("result", "status", "export_pa", "export_len", "counts_pa", "enosys_pa", "pages_used",
                   "pages_total")
BOOT_OUT_OFFSET = BOOT_IN_WORDS * 4

#: struct cons_page, in words.
CONS_FIELDS = ("magic", "out_head0", "out_head1", "out_tail0", "out_tail1", "in_head", "in_tail", "in_want", "in_eof",
               "in_nowait", "in_hup")
CONS = {name: 4 * i for i, name in enumerate(CONS_FIELDS)}


def pack_bootinfo(**fields: int) -> bytes:
    words = [fields.get(name, 0) & 0xFFFF_FFFF for name in BOOT_IN_FIELDS]
    words += [0] * (BOOT_IN_WORDS - len(words))
    return struct.pack(f"<{BOOT_IN_WORDS}I", *words)


def unpack_results(raw: bytes) -> dict[str, int]:
    values = struct.unpack_from(f"<{len(BOOT_OUT_FIELDS)}I", raw, BOOT_OUT_OFFSET)
    return dict(zip(BOOT_OUT_FIELDS, values, strict=True))
