"""Concurrency under load: a fast clock and several send_irq threads against
a busy run loop.  Every irq raised into an empty pending window is delivered
exactly once; nothing deadlocks; break_out from another thread always returns
the loop; shutdown is clean.
"""

from __future__ import annotations

import threading
import time

import pytest

import lguest
from lguest.constants import LD_BLOCKED_INTERRUPTS, LD_IRQ_ENABLED
from lguest.host.launcher import Launcher
from lguest.host.run import Backend

STACK = 0x8000
HANDLER_BASE = 0x1000
IRQS = (0, 3, 7, 12)  # 0 is the clock's


class BusyGuest(Backend):
    """A guest that runs, is interrupted, and irets straight back."""

    def __init__(self) -> None:
        self.entries = 0

    def run_guest(self, cpu, idt, changed) -> None:
        self.entries += 1
        r = cpu.regs
        # "iret": back to the interrupted kernel code with the frame popped.
        r.esp, r.eip, r.cs, r.ss = STACK, 0x100, 0x61, 0x69
        r.trapnum = 0x20 + 0x10  # a host interrupt: handle_trap ignores it


def _producer(cpu, launcher: Launcher, irq: int, stop: threading.Event, raised: dict[int, int]) -> None:
    """Raise ``irq`` whenever its bit is clear: each raise opens a new window."""
    bit = 1 << irq
    while not stop.is_set():
        if not cpu.irqs_pending & bit:  # only this thread sets this bit
            launcher.send_irq(irq)
            raised[irq] += 1
        else:
            time.sleep(0)


def _guest(core, clock):
    host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
    guest = host.new_guest(lguest.GuestMemory(16 * 4096, guard_pages=True), page_offset=0, clock=clock, core=core)
    cpu = guest.new_cpu()
    guest.lguest_data = 0x2000
    guest.ld_write_u32(LD_IRQ_ENABLED, 0x200)
    guest.ld_write_u32(LD_BLOCKED_INTERRUPTS, 0)
    for irq in range(32):  # trap gates: delivery leaves irq_enabled on
        cpu.load_guest_idt_entry(32 + irq, 0x00600000 | (HANDLER_BASE + irq), 0x00008F00)
    cpu.regs.cs, cpu.regs.ss, cpu.regs.esp, cpu.regs.eip, cpu.regs.eflags = 0x61, 0x69, STACK, 0x100, 0x202
    return guest, cpu


def test_compiled_100khz_clock_and_send_irq_threads_deliver_exactly_once() -> None:
    """The compiled core's native clock fires every 10 us (100 kHz) from a C
    thread while three Python threads raise irqs against the busy run loop."""
    from lguest._core import NativeClock

    clock = NativeClock()
    guest, cpu = _guest(lguest.load_core("cython"), clock)
    launcher = Launcher(cpu, BusyGuest())
    stop = threading.Event()
    raised = dict.fromkeys(IRQS[1:], 0)

    threads = [threading.Thread(target=_producer, args=(cpu, launcher, irq, stop, raised)) for irq in raised]
    result: list = []
    runner = threading.Thread(target=lambda: result.append(launcher.run(timeout=30)))
    runner.start()
    for t in threads:
        t.start()
    t0 = time.monotonic()
    clock.arm_periodic(cpu, 10_000)
    time.sleep(1.0)
    clock.cancel(cpu)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(5)
    deadline = time.monotonic() + 5
    while cpu.irqs_pending and time.monotonic() < deadline:
        time.sleep(0.001)
    launcher.break_out()
    runner.join(10)
    assert not runner.is_alive(), "run loop did not return after break_out"
    assert result and result[0].reason == "break" and guest.dead is None
    assert cpu.irqs_pending == 0
    counts = cpu.irq_counts
    print(f"\nnative clock: {clock.fired / elapsed:.0f} fires/s, {clock.windows} windows, "
          f"{counts[0]} timer deliveries; raises {raised}; {launcher.backend.entries} guest entries")
    assert counts[0] == clock.windows > 0  # every window delivered exactly once
    assert clock.fired >= clock.windows
    for irq, n in raised.items():
        assert n > 0 and counts[irq] == n, f"irq {irq}: raised {n} windows, delivered {counts[irq]}"


def test_send_irq_threads_and_the_python_clock_lose_nothing(core) -> None:
    guest, cpu = _guest(core, lguest.SystemClock())
    launcher = Launcher(cpu, BusyGuest())
    stop = threading.Event()
    raised = dict.fromkeys(IRQS[1:], 0)
    fired = [0]

    def clock_tick() -> None:
        # The real clock path: re-arm 10 us ahead from inside the expiry.
        fired[0] += 1
        if not stop.is_set():
            guest.clock.arm(cpu, guest.clock.now_ns() + 10_000, clock_tick_and_fire)

    def clock_tick_and_fire() -> None:
        cpu._clock_fired()
        clock_tick()

    threads = [threading.Thread(target=_producer, args=(cpu, launcher, irq, stop, raised)) for irq in raised]
    result: list = []
    runner = threading.Thread(target=lambda: result.append(launcher.run(timeout=30)))
    runner.start()
    for t in threads:
        t.start()
    clock_tick()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(5)
    guest.clock.cancel(cpu)
    # Let the loop drain the last windows, then stop it from this thread.
    deadline = time.monotonic() + 5
    while cpu.irqs_pending and time.monotonic() < deadline:
        time.sleep(0.001)
    launcher.break_out()
    runner.join(10)
    assert not runner.is_alive(), "run loop did not return after break_out"
    assert result and result[0].reason == "break"
    assert guest.dead is None
    assert cpu.irqs_pending == 0  # nothing left behind
    counts = cpu.irq_counts
    for irq, n in raised.items():
        assert n > 0
        assert counts[irq] == n, f"irq {irq}: raised {n} windows, delivered {counts[irq]}"
    # Timer windows merge, so deliveries <= fires; but at least one per fire
    # that found the bit clear, and never more than fires.
    print(f"\n{core.NAME} core, Python clock: {fired[0]} fires/s, raises {raised}, "
          f"{counts[0]} timer deliveries, {launcher.backend.entries} guest entries")
    assert 0 < counts[0] <= fired[0]
    for irq in set(range(32)) - set(IRQS):
        assert counts[irq] == 0


@pytest.mark.parametrize("rounds", [20])
def test_break_out_always_returns_the_loop(core, rounds: int) -> None:
    guest, cpu = _guest(core, lguest.VirtualClock())
    launcher = Launcher(cpu, BusyGuest())
    for _ in range(rounds):
        result: list = []
        runner = threading.Thread(target=lambda result=result: result.append(launcher.run(timeout=30)))
        runner.start()
        time.sleep(0.005)
        launcher.break_out()
        runner.join(10)
        assert not runner.is_alive() and result[0].reason == "break"


def test_break_out_wakes_a_halted_guest(core) -> None:
    guest, cpu = _guest(lguest.load_core(core.NAME), lguest.SystemClock())
    cpu.halted = True  # nothing pending, no timer: it would sleep forever
    launcher = Launcher(cpu, BusyGuest())
    result: list = []
    runner = threading.Thread(target=lambda: result.append(launcher.run(timeout=30)))
    runner.start()
    time.sleep(0.05)
    assert runner.is_alive()
    launcher.break_out()
    runner.join(5)
    assert not runner.is_alive() and result[0].reason == "break"
