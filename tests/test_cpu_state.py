"""Constants (ABI.md section 1), Regs layout (section 2), host-settable state and
u32 argument validation (API.md)."""
import numpy as np
import pytest
from lgtest import REG_NAMES, pure_python_only

import lguest


def test_constants():
    assert (lguest.GUEST_PL, lguest.KERNEL_CS, lguest.KERNEL_DS) == (1, 0x60, 0x68)
    assert (lguest.LGUEST_CS, lguest.LGUEST_DS, lguest.USER_CS, lguest.USER_DS) == (0x50, 0x58, 0x73, 0x7B)
    assert (lguest.LGUEST_TRAP_ENTRY, lguest.SYSCALL_VECTOR, lguest.FIRST_EXTERNAL_VECTOR) == (31, 0x80, 0x20)
    assert (lguest.IDT_ENTRIES, lguest.LGUEST_IRQS, lguest.X86_EFLAGS_IF) == (256, 32, 0x200)
    assert (lguest.CHANGED_IDT, lguest.PAGE_SIZE) == (1, 4096)
    hc = {"FLUSH_ASYNC": 0, "LGUEST_INIT": 1, "SHUTDOWN": 2, "LOAD_GDT": 3, "NEW_PGTABLE": 4, "FLUSH_TLB": 5,
          "LOAD_IDT_ENTRY": 6, "SET_STACK": 7, "TS": 8, "SET_CLOCKEVENT": 9, "HALT": 10, "SET_PTE": 14,
          "SET_PMD": 15, "LOAD_TLS": 16, "NOTIFY": 17}
    for name, value in hc.items():
        assert getattr(lguest, "LHCALL_" + name) == value, name
    assert lguest.CORE in ("python", "cython")


def test_compiled_core_is_available():
    # a missing extension FAILS the run unless LGUEST_PURE_PYTHON=1 was asked for
    if pure_python_only():
        assert lguest.CORE == "python"
        pytest.skip("LGUEST_PURE_PYTHON=1")
    mod = lguest.load_core("cython")
    assert mod.NAME == "cython"
    assert lguest.CORE == "cython"


def test_load_core_names():
    assert lguest.load_core("python").NAME == "python"
    assert lguest.load_core("python") is lguest.fallback


def test_new_cpu_state(cpu, guest):
    assert cpu.guest is guest
    assert cpu in guest.cpus
    assert cpu.irqs_pending == 0
    assert cpu.halted is False
    assert not cpu.idt.any()
    assert guest.dead is None
    assert guest.lguest_data is None
    assert (guest.noirq_start, guest.noirq_end) == (0, 0)


def test_regs_layout(cpu):
    arr = cpu.regs.array
    assert arr.dtype == np.uint32
    assert arr.shape == (18,)
    for i, name in enumerate(REG_NAMES):
        setattr(cpu.regs, name, 0x1000 + i)
    assert arr.tolist() == [0x1000 + i for i in range(18)]
    arr[13] = 0xDEADBEEF
    assert cpu.regs.eip == 0xDEADBEEF
    arr[16] = 0xFFFFFFFF
    assert cpu.regs.esp == 0xFFFFFFFF
    assert cpu.regs.array is arr or np.shares_memory(cpu.regs.array, arr)


def test_ss1_keeps_low_8_bits(cpu):
    cpu.ss1 = 0x1234
    assert cpu.ss1 == 0x34
    cpu.ss1 = 0x69
    assert cpu.ss1 == 0x69


def test_host_settable_state(cpu, guest):
    cpu.esp1 = 0xFFFFFFFF
    cpu.halted = True
    cpu.changed = 3
    cpu.irqs_pending = 0x80000001
    guest.noirq_start, guest.noirq_end, guest.stack_pages = 1, 2, 2
    guest.lguest_data = 0
    assert (cpu.esp1, cpu.halted, cpu.changed, cpu.irqs_pending) == (0xFFFFFFFF, True, 3, 0x80000001)
    assert (guest.noirq_start, guest.noirq_end, guest.stack_pages, guest.lguest_data) == (1, 2, 2, 0)
    guest.lguest_data = None
    assert guest.lguest_data is None


BAD = [-1, 2**32, 2**40]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("call", [
    lambda c, v: c.set_guest_interrupt(v, 0x8F00, False),
    lambda c, v: c.set_guest_interrupt(0, v, False),
    lambda c, v: c.deliver_trap(v),
    lambda c, v: c.load_guest_idt_entry(v, 0, 0x8F00),
    lambda c, v: c.load_guest_idt_entry(3, v, 0x8F00),
    lambda c, v: c.load_guest_idt_entry(3, 0, v),
    lambda c, v: c.guest_set_stack(v, 0x2000, 1),
    lambda c, v: c.guest_set_stack(0x69, v, 1),
    lambda c, v: c.guest_set_stack(0x69, 0x2000, v),
    lambda c, v: c.set_clockevent(v),
    lambda c, v: setattr(c.regs, "eax", v),
    lambda c, v: setattr(c.regs, "esp", v),
])
def test_u32_arguments_validated(kernel_regs, mem, bad, call):
    cpu = kernel_regs
    cpu.idt[3] = (0x00611234, 0xC0108F00)
    before = cpu.regs.array.tolist()
    idt_before = cpu.idt.copy()
    with pytest.raises(ValueError):
        call(cpu, bad)
    assert cpu.regs.array.tolist() == before
    assert (cpu.idt == idt_before).all()
    assert cpu.guest.dead is None
    assert cpu.changed == 0
    assert mem.read(0x2000, 0x1000) == bytes(0x1000)


def test_new_guest_defaults_and_links(core, host, mem):
    g = host.new_guest(mem, core=core)
    assert g.page_offset == 0xC0000000
    assert g.memory is mem
    assert g.host is host
    assert g.pgdir is None
    assert g.cpus == []
    c = g.new_cpu()
    assert g.cpus == [c]
    assert type(c).__module__.split(".")[-1] in ("fallback", "_core")
    assert isinstance(c, core.Cpu) and isinstance(g, core.Guest)


def test_new_guest_core_by_name(host, mem, clock):
    g = host.new_guest(mem, page_offset=0, clock=clock, core="python")
    assert isinstance(g, lguest.load_core("python").Guest)
    assert g.clock is clock
