"""The seed functions called from Python, on both cores, side by side.

Each group holds the ``[python]`` and ``[cython]`` variants of one operation.
Where a delivery changes state, the timed function puts it back itself
(``arr[R_EIP:] = saved``: eip, cs, eflags, esp, ss in one numpy slice store,
plus whatever else is named) so every round does the same work; the
``restore only`` benchmark in the same group times exactly that extra work,
to be subtracted:  cost(op) = round - restore only.
"""

from __future__ import annotations

import pytest
from benchlib import (
    INTR_GATE,
    LGUEST_DATA,
    R_EIP,
    USER_CS,
    USER_ESP,
    USER_SS,
    defaults_table,
    frame,
    gate,
    host_idt,
    make_guest,
)

import lguest

IRQ = 5  # the deliverable irq: vector 37
ALL = 0xFFFFFFFF


def _empty():
    pass


# --- the baseline: what one Python-level call costs ------------------------------------
@pytest.mark.benchmark(group="deliver: one irq")
def test_empty_python_call(benchmark):
    """``def f(): pass`` -- the floor for any call from Python."""
    benchmark(_empty)


# --- maybe_do_interrupt --------------------------------------------------------------------
@pytest.mark.benchmark(group="deliver: nothing pending")
def test_maybe_do_interrupt_nothing_pending(benchmark, guest_cpu):
    guest, cpu = guest_cpu
    cpu.irqs_pending = 0
    benchmark(cpu.maybe_do_interrupt)
    assert cpu.regs.eip == 0x200000


@pytest.mark.benchmark(group="deliver: one irq")
def test_maybe_do_interrupt_one_irq(benchmark, guest_cpu):
    """set irq 5 pending, maybe_do_interrupt (delivers it), restore the registers."""
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)
    bit = 1 << IRQ
    mdi = cpu.maybe_do_interrupt

    def round_():
        cpu.irqs_pending = bit
        mdi()
        arr[R_EIP:] = saved

    benchmark(round_)
    assert cpu.irq_counts[IRQ] >= 1 and cpu.irqs_pending == 0


@pytest.mark.benchmark(group="deliver: one irq")
def test_restore_only_one_irq(benchmark, guest_cpu):
    """What test_maybe_do_interrupt_one_irq does besides maybe_do_interrupt."""
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)
    bit = 1 << IRQ

    def restore():
        cpu.irqs_pending = bit
        arr[R_EIP:] = saved

    benchmark(restore)


@pytest.mark.benchmark(group="deliver: one irq, interrupt gate")
def test_maybe_do_interrupt_interrupt_gate(benchmark, core):
    """Type 0xE gate: delivery clears irq_enabled, so the round writes 0x200 back."""
    guest, cpu = make_guest(core, gate_type=INTR_GATE)
    arr, saved = frame(cpu)
    bit = 1 << IRQ
    mdi = cpu.maybe_do_interrupt
    write_u32 = guest.memory.write_u32

    def round_():
        cpu.irqs_pending = bit
        mdi()
        arr[R_EIP:] = saved
        write_u32(LGUEST_DATA, 0x200)

    benchmark(round_)
    assert cpu.irq_counts[IRQ] >= 1 and guest.dead is None


@pytest.mark.benchmark(group="deliver: one irq, interrupt gate")
def test_restore_only_interrupt_gate(benchmark, core):
    guest, cpu = make_guest(core, gate_type=INTR_GATE)
    arr, saved = frame(cpu)
    bit = 1 << IRQ
    write_u32 = guest.memory.write_u32

    def restore():
        cpu.irqs_pending = bit
        arr[R_EIP:] = saved
        write_u32(LGUEST_DATA, 0x200)

    benchmark(restore)


@pytest.mark.benchmark(group="deliver: all 32 pending")
def test_maybe_do_interrupt_all_pending(benchmark, guest_cpu):
    """All 32 pending each round: irq 0, the lowest, is delivered."""
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)
    mdi = cpu.maybe_do_interrupt

    def round_():
        cpu.irqs_pending = ALL
        mdi()
        arr[R_EIP:] = saved

    benchmark(round_)
    assert cpu.irq_counts[0] >= 1 and cpu.irqs_pending == ALL & ~1


@pytest.mark.benchmark(group="deliver: all 32 pending")
def test_restore_only_all_pending(benchmark, guest_cpu):
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)

    def restore():
        cpu.irqs_pending = ALL
        arr[R_EIP:] = saved

    benchmark(restore)


@pytest.mark.benchmark(group="deliver: send_irq + maybe_do_interrupt")
def test_send_irq_and_deliver(benchmark, guest_cpu):
    """The launcher's injection (sets the bit, wakes the cpu) then the delivery."""
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)
    send, mdi = cpu.send_irq, cpu.maybe_do_interrupt

    def round_():
        send(IRQ)
        mdi()
        arr[R_EIP:] = saved

    benchmark(round_)
    assert cpu.irq_counts[IRQ] >= 1 and cpu.irqs_pending == 0


# --- set_guest_interrupt / deliver_trap ------------------------------------------------------
@pytest.mark.benchmark(group="set_guest_interrupt: kernel to kernel")
def test_set_guest_interrupt_kernel(benchmark, guest_cpu):
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)
    lo, hi = gate(0x20 + IRQ)
    sgi = cpu.set_guest_interrupt

    def round_():
        sgi(lo, hi, False)
        arr[R_EIP:] = saved

    benchmark(round_)
    assert cpu.regs.esp == 0x80000


@pytest.mark.benchmark(group="set_guest_interrupt: user to kernel")
def test_set_guest_interrupt_user(benchmark, core):
    """From ring 3: switch to esp1/ss1 and push ss:esp too (5 words)."""
    guest, cpu = make_guest(core, user=True)
    arr, saved = frame(cpu)
    lo, hi = gate(0x20 + IRQ)
    sgi = cpu.set_guest_interrupt
    sgi(lo, hi, False)
    assert (cpu.regs.ss, cpu.regs.esp) == (cpu.ss1, cpu.esp1 - 20)
    arr[R_EIP:] = saved

    def round_():
        sgi(lo, hi, False)
        arr[R_EIP:] = saved

    benchmark(round_)
    assert (cpu.regs.ss, cpu.regs.esp, cpu.regs.cs) == (USER_SS, USER_ESP, USER_CS)


@pytest.mark.benchmark(group="set_guest_interrupt: restore only")
def test_restore_only_registers(benchmark, guest_cpu):
    """The restore the set_guest_interrupt and deliver_trap rounds do."""
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)

    def restore():
        arr[R_EIP:] = saved

    benchmark(restore)


@pytest.mark.benchmark(group="deliver_trap(14): with error code")
def test_deliver_trap_with_errcode(benchmark, guest_cpu):
    """A reflected page fault: four words (eflags, cs, eip, errcode)."""
    guest, cpu = guest_cpu
    arr, saved = frame(cpu)
    deliver = cpu.deliver_trap

    def round_():
        deliver(14)
        arr[R_EIP:] = saved

    assert deliver(14) and cpu.regs.esp == 0x80000 - 16
    arr[R_EIP:] = saved
    benchmark(round_)


# --- the IDT ----------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="load_guest_idt_entry")
def test_load_guest_idt_entry(benchmark, guest_cpu):
    guest, cpu = guest_cpu
    lo, hi = gate(0x21)
    benchmark(cpu.load_guest_idt_entry, 0x21, lo, hi)
    assert cpu.changed & lguest.CHANGED_IDT


@pytest.mark.benchmark(group="copy_traps")
def test_copy_traps(benchmark, guest_cpu):
    guest, cpu = guest_cpu
    idt, defaults = host_idt(), defaults_table()
    benchmark(cpu.copy_traps, idt, defaults)
    assert idt[0x80, 1] & 0xF00 == 0xF00  # the syscall trap gate goes direct


# --- the control plane: one hypercall round trip ------------------------------------------------------
@pytest.mark.benchmark(group="hypercall: do_hcall(LOAD_IDT_ENTRY)")
def test_do_hcall(benchmark, guest_cpu):
    from lguest.host.hypercalls import HcallArgs, do_hcall

    guest, cpu = guest_cpu
    lo, hi = gate(0x21)
    args = HcallArgs(lguest.LHCALL_LOAD_IDT_ENTRY, 0x21, lo, hi)
    benchmark(do_hcall, cpu, args)


@pytest.mark.benchmark(group="hypercall: round trip")
def test_hypercall_round_trip(benchmark, guest_cpu):
    """What the run loop does between two guest entries for ``int $0x1f``:
    handle_trap (trap 31: hcall pending), do_hypercalls (empty async ring,
    then LOAD_IDT_ENTRY from eax..edx), maybe_do_interrupt (nothing pending)."""
    from lguest.host.hypercalls import do_hypercalls
    from lguest.host.traps import handle_trap

    guest, cpu = guest_cpu
    lo, hi = gate(0x21)
    r = cpu.regs
    r.eax, r.ebx, r.ecx, r.edx = lguest.LHCALL_LOAD_IDT_ENTRY, 0x21, lo, hi
    r.trapnum = lguest.LGUEST_TRAP_ENTRY
    mdi = cpu.maybe_do_interrupt

    def round_():
        handle_trap(cpu)
        do_hypercalls(cpu)
        mdi()

    benchmark(round_)
    assert not cpu.hcall_pending and cpu.changed & lguest.CHANGED_IDT
