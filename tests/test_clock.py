"""The guest clock: guest_set_clockevent / clockdev_fn (seed 489-524),
write_timestamp, send_irq (LHREQ_IRQ)."""
import threading
import time

import pytest
from lgtest import LD, LD_TIME, MEM_SIZE, words

import lguest


def test_virtual_clock_basics():
    c = lguest.VirtualClock()
    assert c.now_ns() == 0
    c.advance(0)
    assert c.now_ns() == 0
    c.advance(1500)
    c.advance(1)
    assert c.now_ns() == 1501
    c2 = lguest.VirtualClock(start_ns=10**18)
    assert c2.now_ns() == 10**18


def test_clockevent_fires_once_at_expiry(cpu, clock):
    clock.advance(1000)
    cpu.set_clockevent(500)          # expires at 1500
    clock.advance(499)
    assert cpu.irqs_pending == 0
    clock.advance(1)
    assert cpu.irqs_pending == 1
    cpu.irqs_pending = 0
    clock.advance(10**9)
    assert cpu.irqs_pending == 0     # HRTIMER_NORESTART


def test_clockevent_fires_when_jumped_past(cpu, clock):
    cpu.set_clockevent(10)
    clock.advance(10**6)
    assert cpu.irqs_pending == 1


def test_clockevent_only_sets_bit0(cpu, clock):
    cpu.irqs_pending = 0b1010
    cpu.set_clockevent(1)
    clock.advance(1)
    assert cpu.irqs_pending == 0b1011


def test_clockevent_zero_cancels(cpu, clock):
    cpu.set_clockevent(100)
    cpu.set_clockevent(0)
    clock.advance(10**6)
    assert cpu.irqs_pending == 0
    cpu.set_clockevent(0)            # cancelling nothing is fine
    assert cpu.irqs_pending == 0


def test_rearming_replaces(cpu, clock):
    cpu.set_clockevent(1000)
    clock.advance(400)
    cpu.set_clockevent(5000)         # now expires at 5400
    clock.advance(600)
    assert cpu.irqs_pending == 0
    clock.advance(4399)
    assert cpu.irqs_pending == 0
    clock.advance(1)
    assert cpu.irqs_pending == 1


def test_max_delta(cpu, clock):
    cpu.set_clockevent(0xFFFFFFFF)
    clock.advance(0xFFFFFFFE)
    assert cpu.irqs_pending == 0
    clock.advance(1)
    assert cpu.irqs_pending == 1


def test_timer_does_not_clear_halted_but_wakes(cpu, clock):
    cpu.halted = True
    cpu.set_clockevent(1000)
    result = {}

    def sleeper():
        t0 = time.monotonic()
        result["woken"] = cpu.wait_for_wakeup(3.0)
        result["took"] = time.monotonic() - t0

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.1)
    clock.advance(1000)
    t.join(5)
    assert not t.is_alive()
    assert result["woken"] is True
    assert result["took"] < 2.5
    assert cpu.halted is True
    assert cpu.irqs_pending == 1


def test_timer_then_maybe_do_interrupt_clears_halted(cpu, clock, set_ld, mem):
    set_ld(LD, irq_enabled=0)
    cpu.regs.ss = 0x69
    cpu.regs.esp = 0x3000
    cpu.regs.eflags = 0x202
    cpu.idt[32] = (0x00610040, 0xC0108E00)
    cpu.halted = True
    cpu.set_clockevent(2_000_000_000)
    clock.advance(2_000_000_000)
    assert cpu.halted is True
    cpu.maybe_do_interrupt()
    assert cpu.halted is False
    assert cpu.irqs_pending == 0
    assert cpu.regs.eip == 0xC0100040
    assert words(mem, LD, 1) == [0]      # 0x200 then disabled by the interrupt gate
    assert words(mem, LD + LD_TIME, 2) == [2, 0]


# --- write_timestamp ---------------------------------------------------------------

def test_write_timestamp(cpu, clock, set_ld, mem):
    set_ld(LD)
    clock.advance(1_999_999_999)
    cpu.write_timestamp()
    assert words(mem, LD + LD_TIME, 2) == [1, 999_999_999]
    assert cpu.guest.dead is None


def test_timestamp_wraps_tv_sec(core, host, mem):
    c = lguest.VirtualClock(start_ns=(2**32 + 5) * 10**9 + 42)
    g = host.new_guest(mem, page_offset=0, clock=c, core=core)
    cp = g.new_cpu()
    g.lguest_data = 0x2000
    cp.write_timestamp()
    assert words(mem, 0x2000 + LD_TIME, 2) == [5, 42]
    c.advance(3 * 10**9)
    cp.write_timestamp()
    assert words(mem, 0x2000 + LD_TIME, 2) == [8, 42]


def test_timestamp_without_lguest_data_kills(cpu, mem):
    cpu.write_timestamp()
    assert cpu.guest.dead == "Writing timestamp"
    assert mem.read(0, 64) == bytes(64)


def test_timestamp_whole_or_nothing(cpu, clock, mem):
    clock.advance(7 * 10**9 + 3)
    cpu.guest.lguest_data = MEM_SIZE - 19        # time would end one byte past memory
    cpu.write_timestamp()
    assert cpu.guest.dead == "Writing timestamp"
    assert mem.read(MEM_SIZE - 8, 8) == bytes(8)
    cpu.guest.lguest_data = MEM_SIZE - 20
    cpu.write_timestamp()
    assert words(mem, MEM_SIZE - 8, 2) == [7, 3]


def test_timestamp_past_memory_entirely(cpu, clock):
    cpu.guest.lguest_data = 0xFFFFFFFF
    cpu.write_timestamp()
    assert cpu.guest.dead == "Writing timestamp"


# --- send_irq ---------------------------------------------------------------------------

def test_send_irq_sets_bits(cpu):
    cpu.halted = True
    cpu.send_irq(0)
    cpu.send_irq(31)
    cpu.send_irq(5)
    cpu.send_irq(5)
    assert cpu.irqs_pending == (1 << 31) | (1 << 5) | 1
    assert cpu.halted is True


@pytest.mark.parametrize("irq", [-1, 32, 33, 256, 2**32])
def test_send_irq_range(cpu, irq):
    with pytest.raises(ValueError):
        cpu.send_irq(irq)
    assert cpu.irqs_pending == 0


# --- real timers ---------------------------------------------------------------------------

def _wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.002)
    return pred()


def test_system_clock_default(core, host, mem):
    g = host.new_guest(mem, page_offset=0, core=core)
    now = g.clock.now_ns()
    assert abs(now - time.time_ns()) < 2 * 10**9
    c = g.new_cpu()
    try:
        c.set_clockevent(20_000_000)                       # 20 ms
        assert c.irqs_pending == 0
        assert _wait_for(lambda: c.irqs_pending == 1, 3.0)
        c.irqs_pending = 0
        c.set_clockevent(100_000_000)
        c.set_clockevent(0)                                # cancel
        time.sleep(0.25)
        assert c.irqs_pending == 0
        c.set_clockevent(30_000_000)
        c.set_clockevent(4_000_000_000)                    # re-arm far away
        time.sleep(0.2)
        assert c.irqs_pending == 0
    finally:
        c.set_clockevent(0)


def test_system_clock_class(core, host, mem):
    clk = lguest.SystemClock()
    g = host.new_guest(mem, page_offset=0, clock=clk, core=core)
    c = g.new_cpu()
    c.halted = True
    woke = {}

    def sleeper():
        woke["v"] = c.wait_for_wakeup(3.0)

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.05)
    c.set_clockevent(10_000_000)
    t.join(5)
    assert woke["v"] is True
    assert c.irqs_pending == 1
    assert c.halted is True


# --- hostile re-arming: the timer heap stays O(live timers) ---------------------------------
# A guest may re-arm SET_CLOCKEVENT on every hypercall with ever earlier (or
# ever later) deadlines, or arm and cancel forever.  Each re-arm leaves the old
# expiry behind in the heap; the clocks compact it, so memory is bounded by the
# number of live timers (the bound below is the documented one: stale entries
# never exceed 2 x live + 16, so the heap holds at most 3 x live + 16).
STORM = 20_000


def heap_bound(live):
    return 3 * live + 16


def test_ever_earlier_rearm_keeps_the_heap_small(cpu, clock):
    clock.advance(1000)
    for i in range(STORM):
        cpu.set_clockevent(0xFFFFFFFF - i)
        assert len(clock._heap) <= heap_bound(1)
    # Re-arming replaced: only the last deadline is armed, and it fires once.
    last = 1000 + 0xFFFFFFFF - (STORM - 1)
    assert clock.armed(cpu) == last
    assert clock.next_expiry() == last
    clock.advance(last - 1 - clock.now_ns())
    assert cpu.irqs_pending == 0
    clock.advance(1)
    assert cpu.irqs_pending == 1 and clock.fired == 1
    cpu.irqs_pending = 0
    clock.advance(2 * 0xFFFFFFFF)  # every stale expiry has passed: none fires
    assert cpu.irqs_pending == 0 and clock.fired == 1
    assert clock.next_expiry() is None


def test_ever_later_rearm_and_cancel_storms_keep_the_heap_small(cpu, clock):
    for i in range(STORM):
        cpu.set_clockevent(1 + i)
        assert len(clock._heap) <= heap_bound(1)
    assert clock.armed(cpu) == STORM
    for _ in range(STORM):
        cpu.set_clockevent(5)
        cpu.set_clockevent(0)  # cancel
        assert len(clock._heap) <= heap_bound(0)
    assert clock.armed(cpu) is None and clock.next_expiry() is None
    clock.advance(10**10)
    assert cpu.irqs_pending == 0 and clock.fired == 0


def test_many_cpus_rearming_keep_the_heap_small(guest, clock):
    cpus = [guest.new_cpu() for _ in range(8)]
    for i in range(STORM // 8):
        for n, c in enumerate(cpus):
            c.set_clockevent(10**9 - i * 8 - n)
        assert len(clock._heap) <= heap_bound(len(cpus))
    # Every cpu's own last deadline fires, once, in deadline order.
    expiries = [clock.armed(c) for c in cpus]
    assert expiries == [10**9 - (STORM // 8 - 1) * 8 - n for n in range(8)]
    clock.advance(min(expiries))
    assert [c.irqs_pending for c in cpus] == [0] * 7 + [1]
    clock.advance(max(expiries) - min(expiries))
    assert [c.irqs_pending for c in cpus] == [1] * 8 and clock.fired == 8


def test_system_clock_ever_earlier_rearm_keeps_the_heap_small(core, host, mem):
    clk = lguest.SystemClock()
    g = host.new_guest(mem, page_offset=0, clock=clk, core=core)
    c = g.new_cpu()
    try:
        for i in range(STORM):
            c.set_clockevent(0xFFFFFFFF - i)  # ~4 s away: none fires during the storm
            assert len(clk._heap) <= heap_bound(1)
        c.set_clockevent(1_000_000)  # re-arming replaces: 1 ms from now
        assert _wait_for(lambda: c.irqs_pending == 1, 3.0)
        time.sleep(0.05)
        assert clk.fired == 1  # the 20000 replaced deadlines never fire
    finally:
        c.set_clockevent(0)
    assert len(clk._heap) <= heap_bound(0)


def _clock_kinds():
    kinds = [("system", lguest.SystemClock), ("virtual", lguest.VirtualClock)]
    if lguest.NativeClock is not None:
        kinds.append(("native", lguest.NativeClock))
    return kinds


@pytest.mark.parametrize("name,factory", _clock_kinds(), ids=[k for k, _ in _clock_kinds()])
@pytest.mark.parametrize("expiry,callback,exc", [
    (-1, "cb", ValueError), (1 << 63, "cb", ValueError), (1.5, "cb", TypeError), (None, "cb", TypeError),
    (True, "cb", TypeError), (10, None, TypeError), (10, 5, TypeError),
])
def test_every_clock_refuses_the_same_host_arguments(name, factory, expiry, callback, exc):
    """SystemClock, VirtualClock and NativeClock apply one rule to arm()
    (lguest.validate): the same bad call raises the same class everywhere,
    and nothing is armed."""
    clock = factory()
    cb = (lambda: None) if callback == "cb" else callback
    with pytest.raises(exc):
        clock.arm("k", expiry, cb)
    assert clock.armed("k") is None
