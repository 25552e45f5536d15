"""Trap handling: what the host does when the guest stops with a trap.

This is x86 ``lguest_arch_handle_trap``: a few traps are the host's own
business (in/out emulation on #GP, shadow paging on #PF, the lazy FPU on #NM,
real interrupts, hypercalls, and the ``vmcall`` patch on #UD); the rest are
reflected into the guest through its IDT, or kill it if it has no handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import messages as M
from ..constants import (
    GUEST_PL,
    KVM_HYPERCALL,
    LD_CR2,
    LGUEST_HYPERCALL_PATCH,
    LGUEST_TRAP_ENTRY,
    U32,
)

if TYPE_CHECKING:
    from .run import RunContext


def emulate_insn(cpu: Any) -> bool:
    """Emulate the guest kernel's ``in``/``out``: reads see all ones, writes vanish."""
    r = cpu.regs
    physaddr = cpu.guest.guest_pa(r.eip)
    if r.cs & 3 != GUEST_PL:
        return False  # only the guest kernel gets this courtesy
    insnlen = shift = 0
    insn = cpu.lgread(physaddr, 1)[0]
    if insn == 0x66:  # operand-size prefix: the upper half of eax
        shift = 16
        insnlen = 1
        insn = cpu.lgread((physaddr + insnlen) & U32, 1)[0]
    op = insn & 0xFE
    if op == 0xE4:  # in imm8
        insnlen += 2
        is_in = True
    elif op == 0xEC:  # in (%dx)
        insnlen += 1
        is_in = True
    elif op == 0xE6:  # out imm8
        insnlen += 2
        is_in = False
    elif op == 0xEE:  # out (%dx)
        insnlen += 1
        is_in = False
    else:
        return False
    if is_in:
        if insn & 1:
            r.eax = U32
        else:
            r.eax = r.eax | ((0xFFFF << shift) & U32)  # sic: 16 bits, as the C does
    r.eip = (r.eip + insnlen) & U32
    return True


def is_hypercall(cpu: Any) -> bool:
    """A ``vmcall`` from the guest kernel (it raised #UD on this CPU)."""
    r = cpu.regs
    if r.cs & 3 != GUEST_PL:
        return False
    return cpu.lgread(cpu.guest.guest_pa(r.eip), 3) == KVM_HYPERCALL


def rewrite_hypercall(cpu: Any, backend: Any = None) -> None:
    """Patch ``vmcall`` into ``int $0x1f; nop`` and let the guest run it again."""
    gpa = cpu.guest.guest_pa(cpu.regs.eip)
    if cpu.lgwrite(gpa, LGUEST_HYPERCALL_PATCH) and backend is not None:
        backend.code_changed(cpu, gpa, len(LGUEST_HYPERCALL_PATCH))


def handle_trap(cpu: Any, ctx: RunContext | None = None) -> None:
    """Deal with ``cpu.regs.trapnum`` after the guest stopped (for the run
    ``ctx``: its backend pages in faults, its stats count reflections)."""
    r = cpu.regs
    g = cpu.guest
    trapnum = r.trapnum
    backend = None if ctx is None else ctx.backend
    stats = None if ctx is None else ctx.stats
    if trapnum == 13:  # general protection fault
        if r.errcode == 0 and emulate_insn(cpu):
            return
    elif trapnum == 14:  # page fault
        if backend is not None and backend.demand_page(cpu, cpu.last_pagefault, r.errcode):
            return
        # The guest's fault: it finds the address in lguest_data.cr2.
        if g.lguest_data is not None and not g.ld_write_u32(LD_CR2, cpu.last_pagefault):
            g.kill("Writing cr2")
    elif trapnum == 7:  # device not available: the FPU is already restored
        if not cpu.ts:
            return
    elif 32 <= trapnum < 256:  # a real interrupt, the host's
        return
    elif trapnum == LGUEST_TRAP_ENTRY:  # hypercall: done before the next entry
        cpu.hcall_pending = True
        return
    elif trapnum == 6:  # invalid opcode: perhaps a vmcall to patch
        if is_hypercall(cpu):
            rewrite_hypercall(cpu, backend)
            return

    if stats is not None:
        stats.reflected(trapnum, r.eip)
    if not cpu.deliver_trap(trapnum):
        extra = cpu.last_pagefault if trapnum == 14 else r.errcode
        g.kill(f"unhandled trap {M.li(trapnum)} at {M.lx(r.eip)} ({M.lx(extra)})")
