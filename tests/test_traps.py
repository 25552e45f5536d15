"""deliver_trap (seed 247-267) and kill-message formatting."""
import pytest
from lgtest import INTR_GATE, gate, regs_dict, set_regs, words

ERR_TRAPS = (8, 10, 11, 12, 13, 14, 17)


@pytest.mark.parametrize("num", list(range(32)) + [32, 0x40, 0x80, 0xFF])
def test_deliver_present_trap(kernel_regs, mem, num):
    cpu = kernel_regs
    handler = 0xC0300000 + num * 0x100
    cpu.idt[num] = gate(handler)
    before = regs_dict(cpu)
    assert cpu.deliver_trap(num) is True
    if num in ERR_TRAPS:
        assert words(mem, 0x2FEC, 5) == [0, 0xE4E4, 0xC0101234, 0x61, 0x202]
        esp = 0x2FF0
    else:
        assert words(mem, 0x2FEC, 5) == [0, 0, 0xC0101234, 0x61, 0x202]
        esp = 0x2FF4
    before.update(esp=esp, eip=handler, cs=0x61, ss=0x69)
    assert regs_dict(cpu) == before
    assert cpu.guest.dead is None


def test_page_fault_from_user_mode(kernel_regs, mem, set_ld):
    cpu = kernel_regs
    set_ld(0x1000, irq_enabled=0)
    cpu.idt[14] = gate(0xC0108888, INTR_GATE)
    set_regs(cpu, ss=0x7B, esp=0xBFFFE000, cs=0x73, eflags=0x246, eip=0x0804A000, errcode=6)
    cpu.esp1 = 0x4000
    cpu.ss1 = 0x69
    assert cpu.deliver_trap(14) is True
    assert words(mem, 0x3FE8, 6) == [6, 0x0804A000, 0x73, 0x046, 0xBFFFE000, 0x7B]
    assert (cpu.regs.ss, cpu.regs.esp, cpu.regs.cs, cpu.regs.eip) == (0x69, 0x3FE8, 0x61, 0xC0108888)
    assert mem.read_u32(0x1000) == 0
    assert cpu.guest.dead is None


@pytest.mark.parametrize("b", [0, 0x7F00, 0xFFFF7FFF])
def test_not_present_is_false(kernel_regs, mem, b):
    cpu = kernel_regs
    cpu.idt[3] = (0x00611234, b)
    before = regs_dict(cpu)
    assert cpu.deliver_trap(3) is False
    assert regs_dict(cpu) == before
    assert mem.read(0x2000, 0x1000) == bytes(0x1000)
    assert cpu.guest.dead is None


@pytest.mark.parametrize("num", [256, 257, 1000, 0xFFFFFFFF])
def test_impossible_trap_number_is_false(kernel_regs, mem, num):
    cpu = kernel_regs
    cpu.idt[:] = (0x00611234, 0xC0108F00)
    before = regs_dict(cpu)
    assert cpu.deliver_trap(num) is False
    assert regs_dict(cpu) == before
    assert mem.read(0x2000, 0x1000) == bytes(0x1000)
    assert cpu.guest.dead is None


def test_trap_with_bad_type_still_delivered(kernel_regs, mem):
    # set_trap would have killed; a present entry with another type is delivered anyway
    cpu = kernel_regs
    cpu.idt[5] = (0x00611234, 0xC0208C00)
    assert cpu.deliver_trap(5) is True
    assert cpu.regs.eip == 0xC0201234
    assert cpu.regs.esp == 0x2FF4
    assert cpu.guest.dead is None


def test_stack_overflow_in_delivery_kills_with_address(kernel_regs, mem):
    cpu = kernel_regs
    cpu.idt[13] = gate(0xC0101111)
    set_regs(cpu, esp=0x00100000)     # far outside 64 pages
    assert cpu.deliver_trap(13) is True
    assert cpu.guest.dead == "bad write address 0xffffc len 4"
    assert cpu.regs.esp == 0x000FFFF0
    assert cpu.regs.eip == 0xC0101111


# --- kill formatting -------------------------------------------------------------

def test_kill_first_reason_wins(guest):
    assert guest.dead is None
    guest.kill("first")
    guest.kill("second")
    assert guest.dead == "first"


def test_hex_format_of_zero(core, host, mem, clock):
    # pin_page of vaddr 0 that maps outside memory: "bad stack page %#lx" -> 0x0
    g = host.new_guest(mem, page_offset=0x1000, clock=clock, core=core)
    c = g.new_cpu()
    c.guest_set_stack(0x69, 1, 1)
    assert g.dead == "bad stack page 0x0"


def test_hex_is_lowercase(kernel_regs):
    cpu = kernel_regs
    cpu.idt[0] = gate(0xC0101111)
    set_regs(cpu, esp=0xABCDEF00)
    cpu.deliver_trap(0)
    assert cpu.guest.dead == "bad write address 0xabcdeefc len 4"
