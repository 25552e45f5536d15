"""Shadow paging: the page directory the CPU walks, kept from the guest's.

lguest kept shadow page tables; here only the top level is a shadow (in the
Switcher, :data:`~lguest.unicorn.switcher.SW_PGD`) whose last entry maps the
Switcher and whose other entries are the guest's, checked (present, only
_PAGE_TABLE flags, frames inside RAM) or filled on the fault; Unicorn walks
the guest's second-level tables itself.
"""

from __future__ import annotations

import array
from typing import Any

from unicorn import unicorn_const as _ucc
from unicorn import x86_const as _x86

from ..constants import PAGE_PSE, PAGE_SIZE, SWITCHER_ADDR
from ._uchook import shadow_pgd_entries
from .switcher import (
    CR0_PG,
    CR0_WP,
    PGD_ALLOWED,
    PTE_ACCESSED,
    PTE_DIRTY,
    PTE_PRESENT,
    PTE_RW,
    PTE_USER,
    SW_PGD,
    SW_PT,
    SWITCHER_PGD_INDEX,
)


class ShadowPaging:
    """The page-table half of :class:`~lguest.unicorn.backend.UnicornBackend`
    (the Backend's ``new_pgtable``, ``flush_tlb``, ``set_pte``, ``set_pmd``,
    ``demand_page``).  Uses the backend's ``uc``, ``guest`` and
    ``shadow_pgd_words`` (the Switcher's 1024 words, a memoryview of "I")."""

    uc: Any
    guest: Any
    shadow_pgd_words: Any
    paging: bool = False

    def _guest_pgd(self, pgdir: int) -> memoryview | None:
        mem = self.guest.memory
        if pgdir % PAGE_SIZE or pgdir + PAGE_SIZE > mem.size:
            return None
        return memoryview(mem.read(pgdir, PAGE_SIZE)).cast("I")

    def _sync_shadow(self, index: int | None = None) -> None:
        """Copy the guest's page-directory entries the CPU may use into the
        shadow (present, only _PAGE_TABLE flags, frames inside RAM); the rest
        are filled on demand (demand_page kills for bad ones)."""
        pgdir = self.guest.pgdir
        shadow = self.shadow_pgd_words
        entries = self._guest_pgd(pgdir) if pgdir is not None else None
        if entries is None:
            if index is None:
                shadow[:SWITCHER_PGD_INDEX] = _ZERO_PGD
            else:
                shadow[index] = 0
            return
        if index is None:
            start, stop = 0, SWITCHER_PGD_INDEX
        elif index < SWITCHER_PGD_INDEX:
            start, stop = index, index + 1
        else:
            return
        shadow_pgd_entries(entries, shadow, self.guest.pfn_limit, PTE_PRESENT, ~(0xFFFFF000 | PGD_ALLOWED) & 0xFFFFFFFF,
                           PTE_ACCESSED, start, stop)

    def enable_paging(self) -> None:
        self.shadow_pgd_words[SWITCHER_PGD_INDEX] = (SWITCHER_ADDR + SW_PT) | PTE_PRESENT | PTE_ACCESSED
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
        if self.paging and self.shadow_pgd_words[vaddr >> 22] & PTE_PRESENT \
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
        if self.shadow_pgd_words[index] & PTE_PRESENT:
            return False
        entries = self._guest_pgd(self.guest.pgdir)
        if entries is None or not entries[index] & PTE_PRESENT:
            return False
        e = entries[index]
        if e & ~(0xFFFFF000 | PGD_ALLOWED) or (e >> 12) >= self.guest.pfn_limit:
            self.guest.kill("bad page directory entry")
            return False
        self.shadow_pgd_words[index] = e | PTE_ACCESSED
        self._flush_tlb()
        return True


def initial_page_tables(mem: Any, page_offset: int) -> int:
    """lguest's Launcher's tables: all RAM at 0 and at ``page_offset``, written at
    the top of guest memory ``mem``; returns the page directory's address."""
    pages = mem.size // PAGE_SIZE
    n_tables = -(-pages // 1024)
    pgdir = mem.size - PAGE_SIZE
    tables = pgdir - n_tables * PAGE_SIZE
    if tables <= 0:
        raise ValueError("guest memory too small for its page tables")
    # Page i maps frame i (i * PAGE_SIZE | flags, flags < PAGE_SIZE: the
    # range below makes the words in C); the last table's tail is empty.
    flags = PTE_PRESENT | PTE_RW | PTE_USER
    ptes = array.array("I", range(flags, pages * PAGE_SIZE, PAGE_SIZE))
    mem.write(tables, ptes.tobytes() + bytes(4 * (n_tables * 1024 - pages)))
    pgd = array.array("I", bytes(4 * 1024))
    for i in range(n_tables):
        entry = (tables + i * PAGE_SIZE) | flags
        pgd[i] = entry
        pgd[(page_offset >> 22) + i] = entry
    mem.write(pgdir, pgd.tobytes())
    return pgdir


#: SWITCHER_PGD_INDEX zero words, to clear the guest's part of the shadow at once.
_ZERO_PGD = memoryview(bytes(4 * SWITCHER_PGD_INDEX)).cast("I")
