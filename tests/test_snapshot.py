"""snapshot()/restore() of the trap state round-trips through pickle, both cores."""

from __future__ import annotations

import pickle

import lguest
from lguest.host.snapshot import restore, snapshot


def _guest(core):
    host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
    return host.new_guest(lguest.GuestMemory(16 * 4096), page_offset=0, clock=lguest.VirtualClock(1000), core=core)


def test_round_trip(core) -> None:
    g = _guest(core)
    cpu = g.new_cpu()
    g.lguest_data = 0x2000
    g.noirq_start, g.noirq_end = 0x100, 0x120
    g.memory.write(0x5000, b"state")
    cpu.regs.eip, cpu.regs.esp, cpu.regs.ss = 0x1234, 0x8000, 0x69
    cpu.load_guest_idt_entry(0x80, 0x00001000, 0x0010EF00)
    cpu.guest_set_stack(0x69, 0x9000, 1)
    cpu.gdt[12] = (0xFFFF, 0xCF9A00)
    cpu.send_irq(5)
    cpu.halted = True
    cpu.set_clockevent(500)
    snap = pickle.loads(pickle.dumps(snapshot(cpu, memory=True)))

    g2 = _guest(core)
    cpu2 = g2.new_cpu()
    restore(cpu2, snap)
    assert snapshot(cpu2, memory=True) == snap
    assert (cpu2.idt == cpu.idt).all() and (cpu2.gdt == cpu.gdt).all()
    assert g2.memory.read(0x5000, 5) == b"state"
    # The armed timer came along: 500 ns later irq 0 is pending too.
    g2.clock.advance(499)
    assert cpu2.irqs_pending == 1 << 5
    g2.clock.advance(1)
    assert cpu2.irqs_pending == (1 << 5) | 1


def test_dead_state_is_kept(core) -> None:
    g = _guest(core)
    cpu = g.new_cpu()
    cpu.load_guest_idt_entry(300, 0, 0)
    snap = snapshot(cpu)
    assert snap.dead == "Setting idt entry 300"
    g2 = _guest(core)
    cpu2 = g2.new_cpu()
    restore(cpu2, snap)
    assert g2.dead == "Setting idt entry 300"
