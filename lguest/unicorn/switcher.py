"""The Switcher: the host's pages at SWITCHER_ADDR, as the emulated CPU sees them.

In lguest the Switcher is the host code and data mapped at the top of every
guest's address space: the default IDT stubs, the TSS, the GDT the CPU uses,
the host IDT and (with shadow paging) the page tables the CPU really walks.
Here it is one host mmap of :data:`SW_SIZE` bytes; :class:`Switcher` owns it
and the views of u32 words (memoryviews, no numpy) the backend, the pager and
the native hook write through.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any

import unicorn as _unicorn
from unicorn import unicorn_const as _ucc
from unicorn import x86_const as _x86

from ..constants import (
    GDT_ENTRIES,
    GDT_ENTRY_DOUBLEFAULT_TSS,
    GDT_ENTRY_LGUEST_CS,
    GDT_ENTRY_LGUEST_DS,
    GDT_ENTRY_TSS,
    IDT_ENTRIES,
    LGUEST_DS,
    PAGE_SIZE,
    SWITCHER_ADDR,
)

# The layout (offsets from SWITCHER_ADDR).
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



class Switcher:
    """The Switcher's memory for one engine, and the views into it.

    ``gdt`` (32 x 2 words) is the GDT the CPU uses, ``host_idt`` (256 x 2)
    the host IDT ``copy_traps`` fills, ``shadow_pgd`` (1024) the page
    directory the CPU walks when paging, ``tss`` the TSS words: each a
    memoryview of "I" words over the mmap.  Of all this
    the CPU can reach only the GDT page, read-only (:meth:`map`).
    """

    #: (offset, size, protection) of what :meth:`map` maps.  Separate regions,
    #: separate protections: Unicorn's are the same for every ring, so nothing
    #: the guest must not read or run is mapped readable or executable at all.
    REGIONS = ((SW_GDT, PAGE_SIZE, _ucc.UC_PROT_READ), (SW_PGD, 2 * PAGE_SIZE, _ucc.UC_PROT_NONE))

    def __init__(self) -> None:
        self.mem: mmap.mmap | None = mmap.mmap(-1, SW_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        raw = memoryview(self.mem)

        def words(offset: int, n: int, shape: tuple[int, ...] | None = None) -> memoryview:
            return raw[offset:offset + 4 * n].cast("I", shape or (n,))

        for i in range(IDT_ENTRIES):
            self.mem[SW_STUBS + 8 * i:SW_STUBS + 8 * i + 8] = STUB
        self.mem[SW_UNTIL:SW_UNTIL + 1] = b"\xf4"
        self.gdt: memoryview | None = words(SW_GDT, 2 * GDT_ENTRIES, (GDT_ENTRIES, 2))
        self.host_idt: memoryview | None = words(SW_IDT, 2 * IDT_ENTRIES, (IDT_ENTRIES, 2))
        self.shadow_pgd: memoryview | None = words(SW_PGD, 1024)
        switcher_pt = words(SW_PT, 1024)
        # Only the GDT page: supervisor, read-only, already accessed (ring 3
        # cannot touch it; the CPU's descriptor reads are supervisor reads).
        switcher_pt[SW_GDT // PAGE_SIZE] = (SWITCHER_ADDR + SW_GDT) | PTE_PRESENT | PTE_ACCESSED | PTE_DIRTY
        tss = words(SW_TSS, TSS_SIZE // 4)
        tss[2] = LGUEST_DS  # ss0 (no ring-0 stack: the entry is a context patch)
        switcher_pt.release()  # the views kept share one export of the mmap, dropped with the last of them
        struct.pack_into("<H", self.mem, SW_TSS + 102, TSS_SIZE)  # no I/O bitmap (all ports denied)
        self.tss: memoryview | None = tss

    def map(self, uc: Any) -> None:
        """Map the reachable regions into ``uc`` and point GDTR and IDTR at them."""
        for off, size, prot in self.REGIONS:
            uc.mem_map_ptr(SWITCHER_ADDR + off, size, prot, self.address + off)
        uc.reg_write(_x86.UC_X86_REG_GDTR, (0, SWITCHER_ADDR + SW_GDT, GDT_ENTRIES * 8 - 1, 0))
        uc.reg_write(_x86.UC_X86_REG_IDTR, (0, SWITCHER_ADDR + SW_IDT, IDT_ENTRIES * 8 - 1, 0))

    def load_task_register(self, uc: Any) -> None:
        """TR: the Switcher's TSS (whose esp1/ss1 mirror SET_STACK)."""
        uc.reg_write(_x86.UC_X86_REG_TR, (TSS_SELECTOR, SWITCHER_ADDR + SW_TSS, TSS_SIZE - 1, 0x8B00))

    def unmap(self, uc: Any) -> None:
        for off, size, _prot in self.REGIONS:
            try:
                uc.mem_unmap(SWITCHER_ADDR + off, size)
            except _unicorn.UcError:
                pass

    def load_gdt(self, guest_gdt: Any) -> None:
        """The GDT the CPU uses: the guest's entries and the Switcher's own.

        Of the guest's entries only code and data segments reach the CPU,
        at DPL 1 or above and already accessed: a system descriptor (call
        gate, task gate, TSS, LDT) is blanked, so no far jump, call or task
        switch of the guest's can reach CPL 0 or make the CPU write its
        state into host pages.  (The core already raises DPL 0 to 1 and sets
        the accessed bit, as lguest did; this is the CPU's view, enforced.)
        ``guest_gdt``: (32, 2) u32 words (``cpu.gdt_words``, or a numpy array)."""
        gdt = self.gdt
        for i in range(GDT_ENTRIES):
            a, b = int(guest_gdt[i, 0]), int(guest_gdt[i, 1])
            if not b & 0x1000:
                a = b = 0              # a system descriptor: blanked
            else:
                if not b & 0x6000:
                    b |= 1 << 13       # DPL 0 -> 1
                b |= 0x100             # accessed
            gdt[i, 0], gdt[i, 1] = a, b
        for i, (a, b) in SWITCHER_SEGMENTS.items():
            gdt[i, 0], gdt[i, 1] = a, b

    def set_stack(self, esp1: int, ss1: int) -> None:
        """The TSS mirrors SET_STACK, as lguest's did."""
        self.tss[3] = esp1
        self.tss[4] = ss1

    def drop_views(self) -> None:
        """Forget the views (together they hold an export of the mmap)."""
        self.gdt = self.host_idt = self.shadow_pgd = self.tss = None

    def release(self) -> None:
        """Free the memory (after the engine that mapped it is gone)."""
        self.drop_views()
        if self.mem is not None:
            try:
                self.mem.close()
            except BufferError:  # a view still lives (a traceback's frame): the GC frees it
                pass
            self.mem = None
