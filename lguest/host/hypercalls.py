"""Hypercalls: how the guest talks to the host.

A guest makes a hypercall KVM's way, ``vmcall`` with the call number in eax
and arguments in ebx, ecx, edx; the host patches each ``vmcall`` into
``int $0x1f`` the first time it traps (see traps.py), and trap 31 leaves the
call pending on the cpu.  Calls can also be queued in the 64-entry ring in
``struct lguest_data`` and are run at the next exit to the host.

:data:`HYPERCALLS` maps every call number of this era to its handler: the
one place to look to see what a guest may ask for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import messages as M
from ..constants import (
    CHANGED_GDT,
    CHANGED_GDT_TLS,
    GDT_ENTRIES,
    GDT_ENTRY_DOUBLEFAULT_TSS,
    GDT_ENTRY_LGUEST_CS,
    GDT_ENTRY_LGUEST_DS,
    GDT_ENTRY_TLS_ENTRIES,
    GDT_ENTRY_TLS_MIN,
    GDT_ENTRY_TSS,
    GUEST_PL,
    LD_HCALL_STATUS,
    LD_HCALLS,
    LD_KERNEL_ADDRESS,
    LD_NOIRQ_END,
    LD_NOIRQ_START,
    LD_PGDIR,
    LD_RESERVE_MEM,
    LD_TSC_KHZ,
    LGUEST_DATA_SIZE,
    LGUEST_SHUTDOWN_RESTART,
    LHCALL_FLUSH_ASYNC,
    LHCALL_FLUSH_TLB,
    LHCALL_HALT,
    LHCALL_LGUEST_INIT,
    LHCALL_LOAD_GDT,
    LHCALL_LOAD_IDT_ENTRY,
    LHCALL_LOAD_TLS,
    LHCALL_NEW_PGTABLE,
    LHCALL_NOTIFY,
    LHCALL_RING_SIZE,
    LHCALL_SET_CLOCKEVENT,
    LHCALL_SET_PMD,
    LHCALL_SET_PTE,
    LHCALL_SET_STACK,
    LHCALL_SHUTDOWN,
    LHCALL_TS,
    RESERVE_MEM,
    SWITCHER_ADDR,
)
from .stats import OTHER

if TYPE_CHECKING:
    from .run import RunContext


class HcallArgs(NamedTuple):
    """``struct hcall_args``: arg0 is the call number."""

    arg0: int
    arg1: int = 0
    arg2: int = 0
    arg3: int = 0

    @classmethod
    def from_regs(cls, cpu: Any) -> HcallArgs:
        # The trap-31 hypercall overlays eax, ebx, ecx, edx.  The Regs
        # attributes are plain ints (the compiled Regs reads its C words):
        # four word reads and int() calls cost ~2.5x as much.
        r = cpu.regs
        return cls(r.eax, r.ebx, r.ecx, r.edx)

    @classmethod
    def from_bytes(cls, raw: bytes) -> HcallArgs:
        return cls(*(int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8, 12)))


def _backend(ctx: RunContext | None) -> Any:
    """The backend of the run, if any (a hypercall run outside the loop has none)."""
    return None if ctx is None else ctx.backend


# --- the handlers ----------------------------------------------------------------
def _flush_async(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    """Nothing: the exit itself already ran the ring."""


def _init_again(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.guest.kill("already have lguest_data")


def _shutdown(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    """The guest is going: record why.  RESTART asks the Launcher to reboot it."""
    msg = bytearray(cpu.lgread(args.arg1, 128))
    msg[127] = 0
    text = bytes(msg).split(b"\0", 1)[0].decode("latin-1")
    cpu.guest.kill("CRASH: " + text)
    if args.arg2 == LGUEST_SHUTDOWN_RESTART:
        cpu.guest.restart = True  # the kernel's dead = ERR_PTR(-ERESTART): overrides any reason


def _load_gdt(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    load_guest_gdt(cpu, args.arg1, args.arg2)


def _new_pgtable(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    """Switch to the page directory at guest-physical arg1; pin the stack
    only in one not seen before (see Backend.known_pgdir).  Without a
    backend there are no shadows to keep: every switch pins."""
    cpu.guest.pgdir = args.arg1
    backend = _backend(ctx)
    known = False
    if backend is not None:
        known = backend.known_pgdir(args.arg1)
        backend.new_pgtable(cpu, args.arg1)
    if not known:
        cpu.pin_stack_pages()


def _flush_tlb(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    """arg1 non-zero: drop every mapping (kernel too); 0: the user part only."""
    backend = _backend(ctx)
    if backend is not None:
        backend.flush_tlb(cpu, bool(args.arg1))
    if args.arg1:
        cpu.pin_stack_pages()


def _load_idt_entry(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.load_guest_idt_entry(args.arg1, args.arg2, args.arg3)


def _set_stack(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.guest_set_stack(args.arg1, args.arg2, args.arg3)


def _ts(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.ts = args.arg1 - (1 << 32) if args.arg1 & 0x80000000 else args.arg1  # an int in lg_cpu


def _set_clockevent(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.set_clockevent(args.arg1)


def _halt(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.halted = True


def _set_pte(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    """arg1 = page directory, arg2 = vaddr, arg3 = the new pte.  The kernel
    looks up the shadow directory entry for vaddr first, and the Switcher's
    entry is never the guest's: that kills whatever the pte says.  The pte
    itself is the backend's to check (only where it holds a shadow)."""
    if args.arg2 >= SWITCHER_ADDR:
        cpu.guest.kill("attempt to access switcher pages")
        return
    backend = _backend(ctx)
    if backend is not None:
        backend.set_pte(cpu, args.arg1, args.arg2, args.arg3)


def _set_pmd(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    backend = _backend(ctx)
    if backend is not None and args.arg2 < 1023:  # the Switcher's entry is never the guest's
        backend.set_pmd(cpu, args.arg1, args.arg2)


def _load_tls(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    guest_load_tls(cpu, args.arg1)


def _notify(cpu: Any, args: HcallArgs, ctx: RunContext | None) -> None:
    cpu.pending_notify = args.arg1


Handler = Callable[[Any, HcallArgs, "RunContext | None"], None]

#: Every hypercall of this era, by number (arch/x86/include/asm/lguest_hcall.h).
HYPERCALLS: dict[int, Handler] = {
    LHCALL_FLUSH_ASYNC: _flush_async,
    LHCALL_LGUEST_INIT: _init_again,
    LHCALL_SHUTDOWN: _shutdown,
    LHCALL_LOAD_GDT: _load_gdt,
    LHCALL_NEW_PGTABLE: _new_pgtable,
    LHCALL_FLUSH_TLB: _flush_tlb,
    LHCALL_LOAD_IDT_ENTRY: _load_idt_entry,
    LHCALL_SET_STACK: _set_stack,
    LHCALL_TS: _ts,
    LHCALL_SET_CLOCKEVENT: _set_clockevent,
    LHCALL_HALT: _halt,
    LHCALL_SET_PTE: _set_pte,
    LHCALL_SET_PMD: _set_pmd,
    LHCALL_LOAD_TLS: _load_tls,
    LHCALL_NOTIFY: _notify,
}

#: Names for reports, e.g. ``lguest run --stats``.
HYPERCALL_NAMES: dict[int, str] = {
    LHCALL_FLUSH_ASYNC: "FLUSH_ASYNC", LHCALL_LGUEST_INIT: "LGUEST_INIT", LHCALL_SHUTDOWN: "SHUTDOWN",
    LHCALL_LOAD_GDT: "LOAD_GDT", LHCALL_NEW_PGTABLE: "NEW_PGTABLE", LHCALL_FLUSH_TLB: "FLUSH_TLB",
    LHCALL_LOAD_IDT_ENTRY: "LOAD_IDT_ENTRY", LHCALL_SET_STACK: "SET_STACK", LHCALL_TS: "TS",
    LHCALL_SET_CLOCKEVENT: "SET_CLOCKEVENT", LHCALL_HALT: "HALT", LHCALL_SET_PTE: "SET_PTE",
    LHCALL_SET_PMD: "SET_PMD", LHCALL_LOAD_TLS: "LOAD_TLS", LHCALL_NOTIFY: "NOTIFY",
    OTHER: "unknown",  # how Stats counts every number not in HYPERCALLS
}


def do_hcall(cpu: Any, args: HcallArgs, ctx: RunContext | None = None) -> None:
    """Run one hypercall (for the run ``ctx``: its backend, its stats); an
    unknown number kills the guest."""
    handler = HYPERCALLS.get(args.arg0)
    stats = None if ctx is None else ctx.stats
    if stats is not None:
        # Validated before it is counted: one key for every unknown number,
        # not one per number a guest cares to try (the kill names it).
        stats.hypercall(args.arg0 if handler is not None else OTHER, args)
    if handler is None:
        cpu.guest.kill(f"Bad hypercall {M.li(args.arg0)}\n")
        return
    handler(cpu, args, ctx)


# --- the GDT (segments.c) ------------------------------------------------------------
_IGNORED_GDT = (GDT_ENTRY_TSS, GDT_ENTRY_LGUEST_CS, GDT_ENTRY_LGUEST_DS, GDT_ENTRY_DOUBLEFAULT_TSS)


def _fixup_gdt(cpu: Any, start: int, end: int) -> None:
    """Guest segments must not be ring 0: DPL 0 becomes the guest's ring 1.
    The accessed bit is set up front so the CPU never writes the table."""
    gdt = cpu.gdt_words
    for i in range(start, end):
        if i in _IGNORED_GDT:
            continue
        b = int(gdt[i, 1])
        if b & 0x6000 == 0:
            b |= GUEST_PL << 13
        gdt[i, 1] = b | 0x100


def load_guest_gdt(cpu: Any, table: int, num: int) -> None:
    """LOAD_GDT: copy ``num`` descriptors from guest-physical ``table``."""
    if num > GDT_ENTRIES:
        cpu.guest.kill(f"too many gdt entries {M.li(num)}")
        num = GDT_ENTRIES  # the C goes on to overflow its array; we clamp
    raw = cpu.lgread(table, num * 8)
    gdt = cpu.gdt_words
    for i in range(num):
        gdt[i, 0] = int.from_bytes(raw[i * 8:i * 8 + 4], "little")
        gdt[i, 1] = int.from_bytes(raw[i * 8 + 4:i * 8 + 8], "little")
    _fixup_gdt(cpu, 0, GDT_ENTRIES)
    cpu.changed |= CHANGED_GDT


def guest_load_tls(cpu: Any, gtls: int) -> None:
    """LOAD_TLS: the three thread-local-storage descriptors."""
    raw = cpu.lgread(gtls, GDT_ENTRY_TLS_ENTRIES * 8)
    gdt = cpu.gdt_words
    for k in range(GDT_ENTRY_TLS_ENTRIES):
        gdt[GDT_ENTRY_TLS_MIN + k, 0] = int.from_bytes(raw[k * 8:k * 8 + 4], "little")
        gdt[GDT_ENTRY_TLS_MIN + k, 1] = int.from_bytes(raw[k * 8 + 4:k * 8 + 8], "little")
    _fixup_gdt(cpu, GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_MIN + GDT_ENTRY_TLS_ENTRIES)
    cpu.changed |= CHANGED_GDT_TLS


# --- LGUEST_INIT -----------------------------------------------------------------------------
def initialize(cpu: Any, ctx: RunContext | None = None) -> None:
    """The first hypercall must be LGUEST_INIT, telling us where lguest_data is.

    Every step runs even after an earlier one killed the guest, as in the C.
    """
    g = cpu.guest
    args = HcallArgs.from_regs(cpu)
    if args.arg0 != LHCALL_LGUEST_INIT:
        g.kill(f"hypercall {M.li(args.arg0)} before INIT")
        return

    # lguest_arch_init_hypercalls
    ok = g.address_ok(args.arg1, LGUEST_DATA_SIZE)
    if ok:
        g.lguest_data = args.arg1
        ok = g.ld_write_u32(LD_TSC_KHZ, g.tsc_khz)
        if not g.check_syscall_vector():
            g.kill("bad syscall vector")
    if not ok:
        g.kill("bad guest page " + M.p(g.lguest_data))

    start = g.ld_read_u32(LD_NOIRQ_START)
    end = g.ld_read_u32(LD_NOIRQ_END)
    if start is None or end is None:
        g.kill("bad guest page " + M.p(g.lguest_data))
    else:
        g.noirq_start, g.noirq_end = start, end

    cpu.write_timestamp()

    kernel_address = g.ld_read_u32(LD_KERNEL_ADDRESS)
    ok = kernel_address is not None
    ok = g.ld_write_u32(LD_RESERVE_MEM, RESERVE_MEM) and ok
    ok = g.ld_write_u32(LD_PGDIR, g.pgdir or 0) and ok
    if not ok:
        g.kill("bad guest page " + M.p(g.lguest_data))
    if kernel_address is not None:
        g.kernel_address = kernel_address
        if kernel_address >> 22 >= 1023:
            g.kill("bad kernel address " + M.lx(kernel_address))

    # guest_pagetable_clear_all: drop every mapping, re-pin the stack.
    backend = _backend(ctx)
    if backend is not None:
        backend.flush_tlb(cpu, True)
    cpu.pin_stack_pages()


# --- the async ring ------------------------------------------------------------------------
def do_async_hcalls(cpu: Any, ctx: RunContext | None = None) -> None:
    """Run the queued calls, oldest first, from a snapshot of the status bytes."""
    g = cpu.guest
    ld = g.lguest_data
    if ld is None or ld + LD_HCALL_STATUS + LHCALL_RING_SIZE > g.memory.size:
        return  # copy_from_user failed: nothing to do
    # The common case, nothing queued, is one status byte read in place;
    # only a non-empty ring is snapshotted (the calls see the status bytes
    # as they were when the exit began, as the kernel's copy did).
    if g.memory.read(ld + LD_HCALL_STATUS + cpu.next_hcall, 1)[0] == 0xFF:
        return
    status = g.memory.read(ld + LD_HCALL_STATUS, LHCALL_RING_SIZE)
    for _ in range(LHCALL_RING_SIZE):
        n = cpu.next_hcall
        if status[n] == 0xFF:
            break
        cpu.next_hcall = (n + 1) % LHCALL_RING_SIZE
        off = ld + LD_HCALLS + n * 16
        if off + 16 > g.memory.size:
            g.kill("Fetching async hypercalls")
            break
        do_hcall(cpu, HcallArgs.from_bytes(g.memory.read(off, 16)), ctx)
        if ld + LD_HCALL_STATUS + n + 1 > g.memory.size:
            g.kill("Writing result for async hypercall")
            break
        g.memory.write(ld + LD_HCALL_STATUS + n, b"\xff")
        if cpu.pending_notify:
            break


def do_hypercalls(cpu: Any, ctx: RunContext | None = None) -> None:
    """The exit-time hypercall work: LGUEST_INIT first, then ring, then the trap's call."""
    if cpu.guest.lguest_data is None:
        initialize(cpu, ctx)
        cpu.hcall_pending = False
        return
    do_async_hcalls(cpu, ctx)
    # A NOTIFY in the ring stops here: the trap's own call stays pending and
    # is done after the Launcher has seen the notification.
    if not cpu.pending_notify:
        do_hcall(cpu, HcallArgs.from_regs(cpu), ctx)
        cpu.hcall_pending = False
