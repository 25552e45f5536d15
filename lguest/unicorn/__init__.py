"""Run real i386 guest code on Unicorn 2.1.4 with lguest's trap machinery.

:class:`UnicornLauncher` is lguest's Launcher for an emulated CPU: it owns a
:class:`lguest.Host` (reserving the syscall vector), the guest's RAM (one
copy, mapped into Unicorn with ``mem_map_ptr``), the Guest and its cpu 0,
and a :class:`UnicornBackend` that :class:`lguest.host.launcher.Launcher` drives
through :func:`lguest.host.run.run_guest`.

The package, by concern: :mod:`.engine` (the library, its version, the engine
fields the hook bounds translation with), :mod:`.layout` (measuring the saved
context), :mod:`.switcher` (the host's pages), :mod:`.exits` (why the emulator
stopped), :mod:`.paging` (shadow paging), :mod:`.elf` (loading),
:mod:`.backend` (the Backend), :mod:`.launcher` (``UnicornLauncher``) and
:mod:`.stats` (its flat counters); the native hook is ``lguest.unicorn._uchook``.

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
  callback by the compiled core (:mod:`lguest.unicorn._uchook`); the guest runs
  on without a Python call.  Everything else stops the emulator and goes
  through :func:`lguest.host.traps.handle_trap`.
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

try:
    import unicorn as _unicorn  # noqa: F401 - checked here, used by the modules below
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError("lguest.unicorn needs Unicorn 2.1.4: pip install 'lguest[unicorn]'") from exc

try:
    from . import _uchook  # noqa: F401 - checked here, used by the modules below
except ImportError as exc:  # pragma: no cover - only when the build failed
    raise ImportError(f"lguest.unicorn needs the compiled hooks (lguest.unicorn._uchook): {exc}") from exc

from .backend import UnicornBackend
from .elf import parse_elf32
from .engine import (
    TB_GUARD,
    TB_MAX_INSNS,
    TCG_BUFFER_SIZE,
    TCG_MAX_TEMPS,
    UNICORN_VERSION,
    UnsupportedUnicorn,
    engine_internals,
)
from .exits import HOST_IRQ_TRAP
from .launcher import UnicornLauncher
from .layout import context_layout
from .switcher import (
    GUEST_FLAT_SEGMENTS,
    SW_GDT,
    SW_IDT,
    SW_PGD,
    SW_PT,
    SW_SIZE,
    SW_STUBS,
    SW_TSS,
    SWITCHER_SEGMENTS,
    TSS_SIZE,
    Switcher,
    segment_descriptor,
)

__all__ = [
    "UnicornLauncher", "UnicornBackend", "UNICORN_VERSION", "context_layout", "HOST_IRQ_TRAP",
    "TCG_BUFFER_SIZE", "TB_MAX_INSNS", "TB_GUARD", "TCG_MAX_TEMPS", "UnsupportedUnicorn", "engine_internals",
    "parse_elf32", "Switcher", "segment_descriptor", "GUEST_FLAT_SEGMENTS", "SWITCHER_SEGMENTS", "TSS_SIZE",
    "SW_GDT", "SW_IDT", "SW_PGD", "SW_PT", "SW_SIZE", "SW_STUBS", "SW_TSS",
]
