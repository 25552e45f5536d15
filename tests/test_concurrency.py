"""No interrupt is lost when other threads raise irqs (send_irq / a real timer)
while the cpu's own thread runs maybe_do_interrupt (seed 183: clear_bit, 512:
set_bit -- both atomic bit operations on the same word)."""
import sys
import threading
import time

from lgtest import LD, gate, set_regs

import lguest

STACK = 0x8000
IDLE_EIP = 0xC0100000
IRQS = (0, 5, 31)


def handler(irq):
    return 0xC0200000 + irq * 0x100


def _setup(core, clock):
    mem = lguest.GuestMemory(16 * 4096)
    host = lguest.Host(used_vectors=lguest.UsedVectors())
    guest = host.new_guest(mem, page_offset=0, clock=clock, core=core)
    cpu = guest.new_cpu()
    guest.lguest_data = LD
    mem.write_u32(LD, 0x200)          # irq_enabled
    mem.write_u32(LD + 4, 0)          # nothing blocked
    for irq in range(32):
        cpu.idt[32 + irq] = gate(handler(irq))    # trap gates: irq_enabled stays on
    set_regs(cpu, cs=0x61, ss=0x69, esp=STACK, eip=IDLE_EIP, eflags=0x202)
    return mem, guest, cpu


def _run(core, duration, producers_for):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)       # many more thread switches inside the core's ops
    clock = lguest.VirtualClock()
    mem, guest, cpu = _setup(core, clock)
    stop = threading.Event()
    delivered = dict.fromkeys(IRQS, 0)
    try:
        threads, counts = producers_for(cpu, stop)
        for t in threads:
            t.start()
        deadline = time.monotonic() + duration
        by_eip = {handler(i): i for i in IRQS}

        def step():
            cpu.maybe_do_interrupt()
            eip = cpu.regs.eip
            if eip != IDLE_EIP:
                delivered[by_eip[eip]] += 1
                assert cpu.regs.esp == STACK - 12
                cpu.regs.eip = IDLE_EIP
                cpu.regs.esp = STACK

        while time.monotonic() < deadline:
            step()
        stop.set()
        for t in threads:
            t.join(5)
            assert not t.is_alive()
        for _ in range(100):          # drain what is still pending
            step()
        assert cpu.irqs_pending == 0
        assert guest.dead is None
        return counts, delivered
    finally:
        stop.set()
        sys.setswitchinterval(old)
        mem.close()


def _send_irq_producers(cpu, stop):
    counts = dict.fromkeys(IRQS, 0)

    def producer(irq):
        bit = 1 << irq
        while not stop.is_set():
            if not cpu.irqs_pending & bit:     # a new window: only this thread sets the bit
                cpu.send_irq(irq)
                counts[irq] += 1
            else:
                time.sleep(0)

    return [threading.Thread(target=producer, args=(irq,)) for irq in IRQS], counts


def test_send_irq_from_threads_loses_nothing(core):
    counts, delivered = _run(core, 0.4, _send_irq_producers)
    assert delivered == counts
    assert all(counts[i] > 50 for i in IRQS), counts


def test_system_clock_timer_loses_nothing(core):
    """Irq 0 from real SystemClock timers re-armed by the cpu's own thread after
    each tick (as a guest's timer handler does), irqs 5 and 31 from threads."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    mem, guest, cpu = _setup(core, lguest.SystemClock())
    stop = threading.Event()
    delivered = dict.fromkeys(IRQS, 0)
    try:
        threads, counts = _send_irq_producers(cpu, stop)
        threads = threads[1:]                 # irq 0 comes from the timer
        counts[0] = 0
        for t in threads:
            t.start()
        by_eip = {handler(i): i for i in IRQS}

        def step():
            cpu.maybe_do_interrupt()
            eip = cpu.regs.eip
            if eip != IDLE_EIP:
                irq = by_eip[eip]
                delivered[irq] += 1
                cpu.regs.eip = IDLE_EIP
                cpu.regs.esp = STACK
                if irq == 0 and not stop.is_set():
                    cpu.set_clockevent(200_000)      # 0.2 ms
                    counts[0] += 1

        cpu.set_clockevent(200_000)
        counts[0] += 1
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            step()
        stop.set()
        for t in threads:
            t.join(5)
            assert not t.is_alive()
        end = time.monotonic() + 2.0           # the last armed timer fires too
        while time.monotonic() < end and (delivered[0] < counts[0] or cpu.irqs_pending):
            step()
            time.sleep(0)
        assert delivered == counts
        assert cpu.irqs_pending == 0
        assert counts[0] > 20, counts
        assert guest.dead is None
    finally:
        stop.set()
        cpu.set_clockevent(0)
        sys.setswitchinterval(old)
        mem.close()
