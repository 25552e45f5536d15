#!/usr/bin/env python3
"""Lifetime stress of the compiled NativeClock timer wheel under ASan.

The differential harness uses VirtualClock (deterministic), so the native
wheel thread (lg_wheel_main / lg_wheel_arm / lg_timer_cancel /
lg_timer_detach) is never reached there.  This script arms, re-arms and
cancels timers with tiny deltas on many compiled cpus, drops cpus (and whole
clocks) while their timers are armed and while the wheel thread may be
firing them, and lets the cycle collector free Guest/Cpu cycles, for
SECONDS seconds (default 20).  Any ASan report is a finding.

    fuzz/run_sanitized.sh fuzz/stress_native_clock.py [SECONDS]
"""

import gc
import random
import sys
import time

import lguest
from lguest import _core

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
rnd = random.Random(1)
host = lguest.Host(used_vectors=lguest.UsedVectors())
mem = lguest.GuestMemory(8192, guard_pages=True)
clock = _core.NativeClock()
end = time.monotonic() + seconds
rounds = fired_before = 0
while time.monotonic() < end:
    cpus = []
    for _ in range(40):
        g = host.new_guest(mem, core="cython", clock=clock, page_offset=0)
        c = g.new_cpu()
        c.halted = rnd.random() < 0.5
        c.set_clockevent(rnd.choice((1, 10, 1000, 20000, 0)))
        cpus.append(c)
    if rnd.random() < 0.3:
        clock.arm_periodic(cpus[0], 5000)
    rnd.shuffle(cpus)
    del cpus[:20]                      # dropped while armed (cycles: Guest.cpus <-> Cpu.guest)
    for c in cpus:
        c.set_clockevent(0 if rnd.random() < 0.3 else rnd.choice((1, 50, 5000)))
        c.maybe_do_interrupt()
    cpus[-1].wait_for_wakeup(0.0002)
    del cpus, c, g
    rounds += 1
    if rounds % 7 == 0:
        gc.collect()
    if rounds % 25 == 0:
        fired_before += clock.fired
        clock = _core.NativeClock()    # the old wheel shuts down with timers still linked
print(f"{rounds} rounds, {fired_before + clock.fired} timer fires, no sanitizer report")
