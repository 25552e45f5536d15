"""set_guest_interrupt (seed 63-125) and maybe_do_interrupt (seed 132-196).

Register fixture `kernel_regs`: eip 0xC0101234, cs 0x61, eflags 0x202,
esp 0x3000, ss 0x69, errcode 0xE4E4 (guest page_offset 0: flat).
"""
import pytest
from lgtest import INTR_GATE, LD, LD_TIME, MEM_SIZE, TRAP_GATE, gate, regs_dict, set_regs, words

import lguest

HANDLER = 0xC0105678
LO = 0x00605678          # selector bits of lo are ignored by idt_address
HI_TRAP = 0xC0108F00
HI_INTR = 0xC0108E00
NOW = 5_123_456_789      # virtual clock: tv_sec 5, tv_nsec 123456789


def after(before, **changes):
    d = dict(before)
    d.update(changes)
    return d


# --- set_guest_interrupt: same privilege (ss & 3 == 1) -------------------------

@pytest.mark.parametrize("has_err", [False, True])
def test_same_stack_trap_gate_no_lguest_data(kernel_regs, mem, has_err):
    cpu = kernel_regs
    before = regs_dict(cpu)
    cpu.set_guest_interrupt(LO, HI_TRAP, has_err)
    if has_err:
        assert words(mem, 0x2FEC, 6) == [0, 0xE4E4, 0xC0101234, 0x61, 0x202, 0]
        esp = 0x2FF0
    else:
        assert words(mem, 0x2FEC, 6) == [0, 0, 0xC0101234, 0x61, 0x202, 0]
        esp = 0x2FF4
    assert regs_dict(cpu) == after(before, ss=0x69, esp=esp, cs=0x61, eip=HANDLER)
    assert cpu.guest.dead is None
    assert mem.read(0, 0x2FEC) == bytes(0x2FEC)


def test_has_err_takes_any_truth_value(kernel_regs, mem):
    kernel_regs.set_guest_interrupt(LO, HI_TRAP, 1)
    assert kernel_regs.regs.esp == 0x2FF0
    assert mem.read_u32(0x2FF0) == 0xE4E4


def test_selector_and_low_flags_do_not_matter_for_eip(kernel_regs):
    kernel_regs.set_guest_interrupt(0xFFFF5678, 0xC010AF7F, False)
    assert kernel_regs.regs.eip == 0xC0105678
    assert kernel_regs.regs.cs == 0x61


@pytest.mark.parametrize("user_ss", [0x7B, 0x68, 0x6A, 0x0])
@pytest.mark.parametrize("has_err", [False, True])
def test_privilege_switch_uses_esp1_ss1(kernel_regs, mem, user_ss, has_err):
    cpu = kernel_regs
    set_regs(cpu, ss=user_ss, esp=0xBFFFF000, cs=0x73, eflags=0x246, eip=0x08048123, errcode=0x10)
    cpu.esp1 = 0x2000
    cpu.ss1 = 0x69
    before = regs_dict(cpu)
    cpu.set_guest_interrupt(LO, HI_TRAP, has_err)
    pushed = [0x08048123, 0x73, 0x246, 0xBFFFF000, user_ss]
    if has_err:
        assert words(mem, 0x1FE4, 7) == [0, 0x10] + pushed
    else:
        assert words(mem, 0x1FE4, 7) == [0, 0] + pushed
    assert regs_dict(cpu) == after(before, ss=0x69, esp=0x1FE8 if has_err else 0x1FEC, cs=0x61, eip=HANDLER)
    assert cpu.esp1 == 0x2000 and cpu.ss1 == 0x69
    assert cpu.guest.dead is None


def test_privilege_switch_takes_ss_from_ss1(kernel_regs, mem):
    cpu = kernel_regs
    set_regs(cpu, ss=0x7B, esp=0x1234)
    cpu.esp1 = 0x8000
    cpu.ss1 = 0xE9
    cpu.set_guest_interrupt(LO, HI_TRAP, False)
    assert cpu.regs.ss == 0xE9
    assert cpu.regs.esp == 0x7FEC
    assert words(mem, 0x7FEC, 5) == [0xC0101234, 0x61, 0x202, 0x1234, 0x7B]


def test_page_offset_translation(core, host, mem, clock):
    g = host.new_guest(mem, page_offset=0xC0000000, clock=clock, core=core)
    cpu = g.new_cpu()
    set_regs(cpu, ss=0x69, esp=0xC0003000, cs=0x61, eflags=0x202, eip=0xC0100000)
    cpu.set_guest_interrupt(LO, HI_TRAP, False)
    assert words(mem, 0x2FF4, 3) == [0xC0100000, 0x61, 0x202]
    assert cpu.regs.esp == 0xC0002FF4
    # user mode: esp1 is virtual too
    set_regs(cpu, ss=0x7B, esp=0x0804F000, cs=0x73, eflags=0x202, eip=0x08048000)
    cpu.esp1 = 0xC0006000
    cpu.ss1 = 0x69
    cpu.set_guest_interrupt(LO, HI_TRAP, True)
    assert words(mem, 0x5FE8, 6) == [0, 0x08048000, 0x73, 0x202, 0x0804F000, 0x7B]
    assert cpu.regs.esp == 0xC0005FE8
    assert g.dead is None


# --- set_guest_interrupt: irq_enabled and the gate type ------------------------

@pytest.mark.parametrize("irq_enabled,eflags,pushed", [
    (0x200, 0x202, 0x202),
    (0x200, 0x002, 0x002),       # never adds IF
    (0x0, 0x202, 0x002),
    (0x0, 0x246, 0x046),
    (0x1, 0x202, 0x002),         # only bit 9 counts
    (0xFFFFFDFF, 0x202, 0x002),
    (0x201, 0x3202, 0x3202),
])
def test_eflags_if_from_irq_enabled_trap_gate(kernel_regs, mem, set_ld, irq_enabled, eflags, pushed):
    cpu = kernel_regs
    set_ld(LD, irq_enabled=irq_enabled)
    cpu.regs.eflags = eflags
    cpu.set_guest_interrupt(LO, HI_TRAP, False)
    assert mem.read_u32(0x2FFC) == pushed
    assert cpu.regs.eflags == eflags           # the register itself is unchanged
    assert mem.read_u32(LD) == irq_enabled     # trap gate: irq_enabled untouched
    assert cpu.guest.dead is None


@pytest.mark.parametrize("irq_enabled,pushed", [(0x200, 0x202), (0, 0x002)])
def test_interrupt_gate_disables_interrupts(kernel_regs, mem, set_ld, irq_enabled, pushed):
    cpu = kernel_regs
    set_ld(LD, irq_enabled=irq_enabled)
    cpu.set_guest_interrupt(LO, HI_INTR, False)
    assert mem.read_u32(0x2FFC) == pushed
    assert mem.read_u32(LD) == 0
    assert cpu.regs.eip == HANDLER and cpu.regs.esp == 0x2FF4
    assert cpu.guest.dead is None


@pytest.mark.parametrize("typ", [0x0, 0x5, 0xC, 0xD])
def test_other_gate_types_do_not_touch_irq_enabled(kernel_regs, mem, set_ld, typ):
    set_ld(LD, irq_enabled=0x200)
    kernel_regs.set_guest_interrupt(LO, 0xC0108000 | (typ << 8), False)
    assert mem.read_u32(LD) == 0x200
    assert kernel_regs.regs.eip == HANDLER
    assert kernel_regs.guest.dead is None


@pytest.mark.parametrize("eflags", [0x202, 0x002])
def test_no_lguest_data_eflags_as_is_and_intr_gate_kills(kernel_regs, mem, eflags):
    cpu = kernel_regs
    assert cpu.guest.lguest_data is None
    cpu.regs.eflags = eflags
    cpu.set_guest_interrupt(LO, HI_TRAP, False)
    assert mem.read_u32(0x2FFC) == eflags
    assert cpu.guest.dead is None
    set_regs(cpu, esp=0x5000)
    cpu.set_guest_interrupt(LO, HI_INTR, False)
    assert words(mem, 0x4FF4, 3) == [HANDLER, 0x61, eflags]
    assert cpu.regs.esp == 0x4FF4
    assert cpu.guest.dead == "Disabling interrupts"
    assert mem.read_u32(0) == 0


def test_lguest_data_zero_is_valid(kernel_regs, mem, set_ld):
    set_ld(0, irq_enabled=0)
    kernel_regs.set_guest_interrupt(LO, HI_INTR, False)
    assert mem.read_u32(0x2FFC) == 0x002
    assert mem.read_u32(0) == 0
    assert kernel_regs.guest.dead is None


def test_irq_enabled_at_last_word_of_memory(kernel_regs, mem):
    # lguest_data accesses are plain `<= size` checks (not lguest_address_ok)
    kernel_regs.guest.lguest_data = MEM_SIZE - 4
    mem.write_u32(MEM_SIZE - 4, 0x200)
    kernel_regs.set_guest_interrupt(LO, HI_INTR, False)
    assert mem.read_u32(0x2FFC) == 0x202
    assert mem.read_u32(MEM_SIZE - 4) == 0
    assert kernel_regs.guest.dead is None


def test_irq_enabled_past_end_of_memory(kernel_regs, mem):
    cpu = kernel_regs
    cpu.guest.lguest_data = MEM_SIZE - 2
    mem.write(MEM_SIZE - 2, b"\x00\x00")
    cpu.regs.eflags = 0x202
    cpu.set_guest_interrupt(LO, HI_TRAP, False)
    assert mem.read_u32(0x2FFC) == 0x202      # read failed: eflags pushed as is
    assert cpu.guest.dead is None
    cpu.set_guest_interrupt(LO, HI_INTR, False)
    assert cpu.guest.dead == "Disabling interrupts"
    assert mem.read(MEM_SIZE - 2, 2) == b"\x00\x00"


# --- maybe_do_interrupt -------------------------------------------------------

def handler(irq):
    return 0xC0200000 + irq * 0x10


@pytest.fixture
def irq_cpu(kernel_regs, set_ld, clock):
    cpu = kernel_regs
    set_ld(LD, irq_enabled=0x200, blocked=0)
    clock.advance(NOW)
    for irq in range(32):
        cpu.idt[32 + irq] = gate(handler(irq))
    return cpu


def delivered(cpu, mem, irq, *, eflags=0x202, eip=0xC0101234):
    assert cpu.regs.eip == handler(irq)
    assert cpu.regs.esp == 0x2FF4
    assert cpu.regs.cs == 0x61 and cpu.regs.ss == 0x69
    assert words(mem, 0x2FF4, 3) == [eip, 0x61, eflags]


def not_delivered(cpu, mem, before):
    assert regs_dict(cpu) == before
    assert words(mem, 0x2FF4, 3) == [0, 0, 0]


def timestamp(mem, ld=LD):
    return words(mem, ld + LD_TIME, 2)


def test_delivers_irq0_and_stamps_time(irq_cpu, mem):
    cpu = irq_cpu
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0)
    assert cpu.irqs_pending == 0
    assert timestamp(mem) == [5, 123456789]
    assert mem.read_u32(LD) == 0x200     # trap gate
    assert cpu.halted is False
    assert cpu.guest.dead is None


def test_first_unblocked_bit_wins(irq_cpu, mem):
    cpu = irq_cpu
    cpu.irqs_pending = 0b1010_1000        # 3, 5, 7
    mem.write_u32(LD + 4, 0b0000_1000)    # 3 blocked
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 5)
    assert cpu.irqs_pending == 0b1000_1000


def test_irq31(irq_cpu, mem):
    irq_cpu.irqs_pending = 0x80000000
    mem.write_u32(LD + 4, 0x7FFFFFFF)
    irq_cpu.maybe_do_interrupt()
    delivered(irq_cpu, mem, 31)
    assert irq_cpu.irqs_pending == 0


def test_one_delivery_per_call(irq_cpu, mem):
    cpu = irq_cpu
    cpu.irqs_pending = 0b110
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 1)
    assert cpu.irqs_pending == 0b100
    cpu.maybe_do_interrupt()               # delivered again on the new stack
    assert cpu.regs.eip == handler(2)
    assert cpu.regs.esp == 0x2FE8
    assert words(mem, 0x2FE8, 3) == [handler(1), 0x61, 0x202]
    assert cpu.irqs_pending == 0


@pytest.mark.parametrize("pending,blocked", [(0, 0), (0b110, 0b110), (0xFFFFFFFF, 0xFFFFFFFF), (1, 1)])
def test_nothing_deliverable_does_nothing(irq_cpu, mem, pending, blocked):
    cpu = irq_cpu
    cpu.irqs_pending = pending
    cpu.halted = True
    mem.write_u32(LD + 4, blocked)
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    not_delivered(cpu, mem, before)
    assert cpu.irqs_pending == pending
    assert timestamp(mem) == [0, 0]          # returned before write_timestamp
    assert cpu.halted
    assert mem.read_u32(LD) == 0x200


@pytest.mark.parametrize("eip,inside", [
    (0xC0101000, True), (0xC0101234, True), (0xC0101FFF, True),
    (0xC0102000, False), (0xC0100FFF, False), (0, False), (0xFFFFFFFF, False),
])
def test_noirq_window(irq_cpu, mem, eip, inside):
    cpu = irq_cpu
    cpu.guest.noirq_start = 0xC0101000
    cpu.guest.noirq_end = 0xC0102000
    cpu.regs.eip = eip
    cpu.irqs_pending = 1
    cpu.halted = True
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    if inside:
        not_delivered(cpu, mem, before)
        assert cpu.irqs_pending == 1
        assert cpu.halted
        assert timestamp(mem) == [0, 0]
    else:
        delivered(cpu, mem, 0, eip=eip)
        assert cpu.irqs_pending == 0
        assert not cpu.halted
        assert timestamp(mem) == [5, 123456789]


def test_empty_noirq_window(irq_cpu, mem):
    cpu = irq_cpu
    cpu.guest.noirq_start = 0xC0102000
    cpu.guest.noirq_end = 0xC0101000      # start > end: nothing is inside
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0)


@pytest.mark.parametrize("irq_enabled", [0, 0x200])
def test_halted_wakes_and_delivers(irq_cpu, mem, irq_enabled):
    cpu = irq_cpu
    mem.write_u32(LD, irq_enabled)
    cpu.halted = True
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    assert not cpu.halted
    assert mem.read_u32(LD) == 0x200           # put_user(X86_EFLAGS_IF)
    delivered(cpu, mem, 0, eflags=0x202)       # IF kept: irq_enabled now 0x200
    assert cpu.irqs_pending == 0
    assert timestamp(mem) == [5, 123456789]
    assert cpu.guest.dead is None


def test_halted_with_interrupt_gate(irq_cpu, mem):
    cpu = irq_cpu
    cpu.idt[32] = gate(handler(0), INTR_GATE)
    mem.write_u32(LD, 0)
    cpu.regs.eflags = 0x002
    cpu.halted = True
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0, eflags=0x002)       # eflags pushed as the register holds it
    assert mem.read_u32(LD) == 0               # 0x200 then 0 by the interrupt gate
    assert not cpu.halted


def test_halted_without_handler(irq_cpu, mem):
    cpu = irq_cpu
    cpu.idt[32] = (0, 0)
    mem.write_u32(LD, 0)
    cpu.halted = True
    cpu.irqs_pending = 1
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    not_delivered(cpu, mem, before)
    assert not cpu.halted
    assert mem.read_u32(LD) == 0x200
    assert cpu.irqs_pending == 1
    assert timestamp(mem) == [5, 123456789]


def test_interrupts_disabled(irq_cpu, mem):
    cpu = irq_cpu
    mem.write_u32(LD, 0)
    cpu.irqs_pending = 1
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    not_delivered(cpu, mem, before)
    assert cpu.irqs_pending == 1
    assert timestamp(mem) == [0, 0]
    assert mem.read_u32(LD) == 0


@pytest.mark.parametrize("irq_enabled", [1, 0x100, 0x80000000])
def test_any_nonzero_irq_enabled_allows_delivery(irq_cpu, mem, irq_enabled):
    cpu = irq_cpu
    mem.write_u32(LD, irq_enabled)
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0, eflags=0x002)   # but IF is cleared in the pushed eflags
    assert mem.read_u32(LD) == irq_enabled


def test_interrupt_gate_clears_irq_enabled(irq_cpu, mem):
    cpu = irq_cpu
    cpu.idt[33] = gate(handler(1), INTR_GATE)
    cpu.irqs_pending = 2
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 1)
    assert mem.read_u32(LD) == 0
    # now disabled: the next one waits
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    assert cpu.irqs_pending == 1
    assert cpu.regs.eip == handler(1)


@pytest.mark.parametrize("b", [0, 0x7F00, 0xC0107E00])
def test_not_present_entry_keeps_pending_but_stamps(irq_cpu, mem, b):
    cpu = irq_cpu
    cpu.idt[32] = (0x00611234, b)
    cpu.irqs_pending = 1
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    not_delivered(cpu, mem, before)
    assert cpu.irqs_pending == 1
    assert timestamp(mem) == [5, 123456789]
    assert cpu.guest.dead is None


def test_not_present_first_irq_blocks_later_ones(irq_cpu, mem):
    # find_first_bit picks irq 0; its entry is absent: irq 1 is NOT tried
    cpu = irq_cpu
    cpu.idt[32] = (0, 0)
    cpu.irqs_pending = 0b11
    cpu.maybe_do_interrupt()
    assert cpu.irqs_pending == 0b11
    assert cpu.regs.eip == 0xC0101234


def test_no_lguest_data_does_nothing(kernel_regs, mem, clock):
    cpu = kernel_regs
    clock.advance(NOW)
    cpu.idt[32] = gate(handler(0))
    cpu.irqs_pending = 1
    cpu.halted = True
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    not_delivered(cpu, mem, before)
    assert cpu.halted
    assert cpu.irqs_pending == 1
    assert mem.read(0, 64) == bytes(64)
    assert cpu.guest.dead is None


def test_blocked_unreadable_does_nothing(irq_cpu, mem):
    cpu = irq_cpu
    cpu.guest.lguest_data = MEM_SIZE - 4       # irq_enabled readable, blocked past the end
    mem.write_u32(MEM_SIZE - 4, 0)
    cpu.irqs_pending = 1
    cpu.halted = True
    before = regs_dict(cpu)
    cpu.maybe_do_interrupt()
    not_delivered(cpu, mem, before)
    assert cpu.halted
    assert mem.read_u32(MEM_SIZE - 4) == 0
    assert cpu.guest.dead is None


def test_timestamp_unwritable_kills_after_delivery(irq_cpu, mem):
    cpu = irq_cpu
    ld = MEM_SIZE - 12                           # blocked ok, time (12..20) past the end
    cpu.guest.lguest_data = ld
    mem.write_u32(ld, 0x200)
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0)
    assert cpu.irqs_pending == 0
    assert cpu.guest.dead == "Writing timestamp"
    assert words(mem, MEM_SIZE - 12, 3) == [0x200, 0, 0]


def test_timestamp_at_end_of_memory(irq_cpu, mem):
    cpu = irq_cpu
    ld = MEM_SIZE - 20
    cpu.guest.lguest_data = ld
    mem.write_u32(ld, 0x200)
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0)
    assert words(mem, MEM_SIZE - 8, 2) == [5, 123456789]
    assert cpu.guest.dead is None


def test_user_mode_interrupt_switches_stack(irq_cpu, mem):
    cpu = irq_cpu
    set_regs(cpu, ss=0x7B, esp=0xBFFF0000, cs=0x73, eflags=0x246, eip=0x08048000)
    cpu.esp1 = 0x6000
    cpu.ss1 = 0x69
    cpu.irqs_pending = 1 << 4
    cpu.maybe_do_interrupt()
    assert words(mem, 0x5FEC, 5) == [0x08048000, 0x73, 0x246, 0xBFFF0000, 0x7B]
    assert (cpu.regs.esp, cpu.regs.ss, cpu.regs.cs, cpu.regs.eip) == (0x5FEC, 0x69, 0x61, handler(4))
    assert cpu.irqs_pending == 0


def test_dead_guest_still_delivers(irq_cpu, mem):
    # the seed never checks dead here: run_guest does
    cpu = irq_cpu
    cpu.guest.kill("earlier")
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    delivered(cpu, mem, 0)
    assert cpu.guest.dead == "earlier"


def test_vectors_below_32_are_not_used_for_irqs(irq_cpu, mem):
    cpu = irq_cpu
    cpu.idt[32] = (0, 0)
    cpu.idt[0] = gate(0xC0999999)
    cpu.irqs_pending = 1
    cpu.maybe_do_interrupt()
    assert cpu.regs.eip == 0xC0101234
    assert cpu.irqs_pending == 1


def test_trap_gate_constant():
    assert lguest.X86_EFLAGS_IF == 0x200
    assert (TRAP_GATE, INTR_GATE) == (0x8F00, 0x8E00)
