"""run_guest (ABI.md §5, "run_guest", steps 1-9) with a ScriptedBackend, on
both cores: the order of the steps, the halted sleep and who wakes it, the
host IDT re-copy on CHANGED_IDT, trapnum 256 at entry, and GuestKilled.

Expected values are derived by hand from ABI.md / API.md.
"""

from __future__ import annotations

import struct
import threading
import time

import lgtest
import pytest
from lgtest import EIP, INTR_GATE, IRQ_HANDLER, LD, LD_HCALL_STATUS, STACK, hc, prepare, set_regs

import lguest
from lguest.host.run import GuestKilled, RunExit, ScriptedBackend, run_guest

PAGE = 4096
MEM_SIZE = 64 * PAGE
LD_IRQ_ENABLED, LD_CR2, LD_TIME = 0, 8, 12

CHANGED_IDT = 1


def install(cpu, vector, handler, flags=INTR_GATE):
    lgtest.install(cpu, vector, handler, flags)  # the run loop's tests use interrupt gates


def brk(trapnum=32):
    """A step: the guest stops (a host interrupt), and the Launcher asks for a break."""
    def step(c):
        c.regs.trapnum = trapnum
        c.break_out = True
    return step


class Capture(ScriptedBackend):
    """Also records, at each entry, trapnum and a copy of the host IDT."""

    def __init__(self, steps):
        super().__init__(steps)
        self.trapnums = []
        self.idts = []
        self.halted = []

    def run_guest(self, cpu, idt, changed):
        self.trapnums.append(int(cpu.regs.trapnum))
        self.idts.append(idt.copy())
        self.halted.append(bool(cpu.halted))
        super().run_guest(cpu, idt, changed)


# --- step 9: entry ------------------------------------------------------------------------
def test_trapnum_is_256_at_entry(kcpu):
    kcpu.regs.trapnum = 31
    backend = Capture([lambda c: None])  # the guest "faults in the Switcher": trapnum stays
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=5)
    assert backend.trapnums == [256]
    assert exc.value.message == "unhandled trap 256 at 0x5000 (0x0)"
    assert exc.value.restart is False


def test_each_entry_sees_trapnum_256(kcpu):
    backend = Capture([31, 32, 0x80, brk()])
    set_regs(kcpu, eax=0)  # FLUSH_ASYNC on the trap 31
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert backend.trapnums == [256, 256, 256, 256]
    assert len(backend.entries) == 4


# --- steps 1 and 2: hypercalls, then notify ------------------------------------------------
def test_hypercall_is_done_before_the_notify_check(kcpu):
    backend = Capture([hc(17, 0x1234)])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("notify", 0x1234)
    assert len(backend.entries) == 1  # returned without entering again
    assert not kcpu.hcall_pending


def test_notify_is_cleared_by_the_next_run(kcpu):
    backend = Capture([hc(17, 0x1234), brk()])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("notify", 0x1234)
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert len(backend.entries) == 2


def test_notify_comes_before_break(kcpu):
    def step(c):
        set_regs(c, **hc(17, 0x4444))
        c.break_out = True
    backend = Capture([step])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("notify", 0x4444)
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert len(backend.entries) == 1


def test_hypercall_runs_before_break(kcpu):
    def step(c):
        set_regs(c, **hc(8, 1))  # TS 1
        c.break_out = True
    backend = Capture([step])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert kcpu.ts == 1


# --- step 4 before step 5: break before maybe_do_interrupt ------------------------------------
def test_break_comes_before_interrupt_delivery(kcpu, mem):
    install(kcpu, 0x23, IRQ_HANDLER)
    kcpu.irqs_pending = 1 << 3
    kcpu.break_out = True
    backend = Capture([])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert backend.entries == []
    assert kcpu.regs.eip == EIP
    assert kcpu.irqs_pending == 1 << 3


# --- step 5: maybe_do_interrupt right before entry -----------------------------------------
def test_interrupt_is_delivered_before_entry(kcpu, mem):
    install(kcpu, 0x23, IRQ_HANDLER)
    kcpu.irqs_pending = 1 << 3
    backend = Capture([brk()])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert backend.entries[0][:2] == (IRQ_HANDLER, STACK - 12)
    assert kcpu.irqs_pending == 0
    assert struct.unpack("<3I", mem.read(STACK - 12, 12)) == (EIP, 0x61, 0x202)
    assert mem.read_u32(LD + LD_IRQ_ENABLED) == 0  # interrupt gate


def test_interrupt_after_a_trap_is_delivered_at_the_next_entry(kcpu, mem):
    install(kcpu, 0x20, IRQ_HANDLER)

    def timer(c):
        c.regs.trapnum = 0xEF  # a host interrupt stops the guest...
        c.irqs_pending = 1      # ...and the guest's timer is now pending
    backend = Capture([timer, brk()])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert [e[0] for e in backend.entries] == [EIP, IRQ_HANDLER]


def test_blocked_interrupt_is_not_delivered(cpu, mem):
    prepare(cpu, mem, blocked=1 << 3)
    install(cpu, 0x23, IRQ_HANDLER)
    cpu.irqs_pending = 1 << 3
    backend = Capture([brk()])
    run_guest(cpu, backend, timeout=5)
    assert backend.entries[0][0] == EIP
    assert cpu.irqs_pending == 1 << 3


# --- step 7: dead check --------------------------------------------------------------------
def test_dead_before_running(kcpu):
    kcpu.guest.kill("gone")
    backend = Capture([brk()])
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=5)
    assert (exc.value.message, exc.value.restart) == ("gone", False)
    assert backend.entries == []


def test_kill_during_interrupt_delivery_stops_before_entry(kcpu, mem):
    kcpu.guest.pgdir = 0x9000  # page-table mode with nothing mapped
    install(kcpu, 0x20, IRQ_HANDLER)
    kcpu.irqs_pending = 1
    backend = Capture([brk()])
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=5)
    assert exc.value.message == "Bad address 0x8000"
    assert backend.entries == []


def test_kill_by_a_hypercall_stops_before_entry(kcpu):
    backend = Capture([hc(11), brk()])
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=5)
    assert exc.value.message == "Bad hypercall 11\n"
    assert len(backend.entries) == 1


def test_kill_by_trap_handling(kcpu):
    backend = Capture([0, brk()])
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=5)
    assert exc.value.message == "unhandled trap 0 at 0x5000 (0x0)"
    assert len(backend.entries) == 1


def test_hypercall_before_init_kills(cpu, mem):
    set_regs(cpu, eip=EIP, cs=0x61, esp=STACK, ss=0x69)
    backend = Capture([hc(3, 0x3000, 1), brk()])
    with pytest.raises(GuestKilled) as exc:
        run_guest(cpu, backend, timeout=5)
    assert exc.value.message == "hypercall 3 before INIT"
    assert len(backend.entries) == 1


@pytest.mark.parametrize("how, restart", [(1, False), (2, True)])
def test_shutdown_raises_guest_killed(kcpu, mem, how, restart):
    mem.write(0x2000, b"bye\0")
    backend = Capture([hc(2, 0x2000, how), brk()])
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=5)
    assert exc.value.message == "CRASH: bye"
    assert exc.value.restart is restart
    assert len(backend.entries) == 1
    assert str(exc.value) == "CRASH: bye"


# --- CHANGED_IDT: the host IDT is re-copied ------------------------------------------------
def test_changed_idt_recopies_the_host_idt(kcpu):
    backend = Capture([])
    h3 = int(backend.default_handlers[3])
    default3 = ((0x50 << 16) | (h3 & 0xFFFF), (h3 & 0xFFFF0000) | 0x8E00)

    def poke(c):  # the guest's IDT changes behind the host's back: no CHANGED_IDT
        c.idt[3] = (0x00617777, 0xC010EF00)
        c.regs.trapnum = 32

    # LOAD_IDT_ENTRY 3: a DPL-3 trap gate (int3 from user space goes direct)
    backend.steps += [hc(6, 3, 0x00601234, 0xC010EF00), poke, brk()]
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    first, second, third = backend.idts
    assert tuple(int(x) for x in first[3]) == default3
    assert tuple(int(x) for x in second[3]) == (0x00611234, 0xC010EF00)
    assert tuple(int(x) for x in third[3]) == (0x00611234, 0xC010EF00)  # not re-copied
    assert backend.entries[1][2] & CHANGED_IDT
    assert backend.entries[2][2] == 0
    assert kcpu.changed == 0


def test_first_entry_is_told_everything_changed(kcpu):
    backend = Capture([brk()])
    run_guest(kcpu, backend, timeout=5)
    assert backend.entries[0][2] & 3 == 3  # CHANGED_ALL


# --- step 8: halted ---------------------------------------------------------------------------
def test_halted_guest_is_woken_by_virtual_timer(cpu, mem, clock):
    prepare(cpu, mem, irq_enabled=0)  # the guest halts with interrupts "off"
    install(cpu, 0x20, IRQ_HANDLER)
    backend = Capture([hc(9, 1_000_000), hc(10), brk()])  # SET_CLOCKEVENT 1 ms; HALT
    assert run_guest(cpu, backend, timeout=5) == RunExit("break")
    assert clock.now_ns() == 1_000_000  # idle time jumps to the expiry
    assert [e[0] for e in backend.entries] == [EIP, EIP, IRQ_HANDLER]
    assert backend.halted == [False, False, False]
    assert not cpu.halted
    assert cpu.irqs_pending == 0
    assert mem.read_u32(LD + LD_IRQ_ENABLED) == 0  # re-enabled, then the gate turned it off
    assert mem.read_u32(LD + LD_TIME + 4) == 1_000_000  # timestamp at delivery


@pytest.mark.parametrize("which", ["SystemClock", "default"])
def test_halted_guest_is_woken_by_real_timer(core, host, mem, which):
    clock = lguest.SystemClock() if which == "SystemClock" else None
    guest = host.new_guest(mem, page_offset=0, clock=clock, core=core)
    cpu = prepare(guest.new_cpu(), mem, irq_enabled=0)
    install(cpu, 0x20, IRQ_HANDLER, flags=0x8F00)  # trap gate: irq_enabled stays as set
    backend = Capture([hc(9, 50_000_000), hc(10), brk()])  # 50 ms, then HALT
    t0 = time.monotonic()
    assert run_guest(cpu, backend, timeout=5) == RunExit("break")
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 4
    assert [e[0] for e in backend.entries] == [EIP, EIP, IRQ_HANDLER]
    assert not cpu.halted
    assert mem.read_u32(LD + LD_IRQ_ENABLED) == 0x200  # maybe_do_interrupt re-enabled them
    assert abs(mem.read_u32(LD + LD_TIME) - time.time()) < 5


def test_halted_guest_is_woken_by_send_irq_from_another_thread(kcpu, mem):
    install(kcpu, 0x22, IRQ_HANDLER)
    backend = Capture([hc(10), brk()])
    t = threading.Timer(0.05, kcpu.send_irq, args=(2,))
    t0 = time.monotonic()
    t.start()
    try:
        res = run_guest(kcpu, backend, timeout=5)
    finally:
        t.cancel()
        t.join()
    assert res == RunExit("break")
    assert 0.04 <= time.monotonic() - t0 < 4
    assert [e[0] for e in backend.entries] == [EIP, IRQ_HANDLER]
    assert not kcpu.halted
    assert kcpu.irqs_pending == 0


def test_halted_guest_sleeps_on_through_a_blocked_irq(cpu, mem):
    prepare(cpu, mem, blocked=1 << 2)
    install(cpu, 0x22, IRQ_HANDLER)
    backend = Capture([hc(10)])

    def later():
        time.sleep(0.03)
        cpu.send_irq(2)  # blocked: wakes the loop, which goes back to sleep
        time.sleep(0.05)
        cpu.break_out = True
        cpu.wake()

    t = threading.Thread(target=later)
    t.start()
    try:
        res = run_guest(cpu, backend, timeout=5)
    finally:
        t.join()
    assert res == RunExit("break")
    assert len(backend.entries) == 1
    assert cpu.halted
    assert cpu.irqs_pending == 1 << 2


def test_pending_irq_wakes_a_halted_guest_without_sleeping(kcpu, mem):
    # maybe_do_interrupt (step 5) comes before the halted check (step 8)
    install(kcpu, 0x21, IRQ_HANDLER)
    kcpu.halted = True
    kcpu.irqs_pending = 1 << 1
    backend = Capture([brk()])
    t0 = time.monotonic()
    assert run_guest(kcpu, backend, timeout=2) == RunExit("break")
    assert time.monotonic() - t0 < 1
    assert backend.entries[0][0] == IRQ_HANDLER
    assert not kcpu.halted


def test_dead_guest_does_not_sleep_when_halted(kcpu, mem):
    # ring: HALT then a bad call; the dead check (step 7) precedes the sleep (step 8)
    import struct as _s
    mem.write(LD + 84, _s.pack("<4I", 10, 0, 0, 0) + _s.pack("<4I", 11, 0, 0, 0))
    mem.write(LD + LD_HCALL_STATUS, b"\x00\x00")
    backend = Capture([hc(0)])
    t0 = time.monotonic()
    with pytest.raises(GuestKilled) as exc:
        run_guest(kcpu, backend, timeout=2)
    assert exc.value.message == "Bad hypercall 11\n"
    assert time.monotonic() - t0 < 1
    assert kcpu.halted


def test_halted_guest_times_out(kcpu):
    kcpu.halted = True
    backend = Capture([])
    t0 = time.monotonic()
    assert run_guest(kcpu, backend, timeout=0.05) == RunExit("timeout")
    assert time.monotonic() - t0 < 4
    assert backend.entries == []


# --- whole trap round trips ---------------------------------------------------------------
def test_vmcall_round_trip(kcpu, mem):
    mem.write(EIP, b"\x0f\x01\xc1")
    backend = Capture([6, hc(17, 0x2000)])  # #UD, then the patched int $0x1f
    assert run_guest(kcpu, backend, timeout=5) == RunExit("notify", 0x2000)
    assert mem.read(EIP, 3) == b"\xcd\x1f\x90"
    assert [e[0] for e in backend.entries] == [EIP, EIP]  # eip not advanced
    assert ("code_changed", EIP, 3) in backend.calls


def test_page_fault_round_trip(kcpu, mem):
    install(kcpu, 14, 0x7100)
    backend = Capture([dict(trapnum=14, errcode=6, cr2=0x00ABC123), brk()])
    assert run_guest(kcpu, backend, timeout=5) == RunExit("break")
    assert kcpu.last_pagefault == 0x00ABC123
    assert mem.read_u32(LD + LD_CR2) == 0x00ABC123
    assert backend.entries[1][:2] == (0x7100, STACK - 16)
    assert struct.unpack("<4I", mem.read(STACK - 16, 16)) == (6, EIP, 0x61, 0x202)


def test_gpf_emulation_round_trip(kcpu, mem):
    mem.write(EIP, b"\xec")  # in (%dx), %al
    backend = Capture([dict(trapnum=13, errcode=0, eax=0), brk()])
    run_guest(kcpu, backend, timeout=5)
    assert backend.entries[1][0] == EIP + 1
    assert kcpu.regs.eax == 0xFFFF
