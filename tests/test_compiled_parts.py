"""The compiled core's parts keep their public paths and refuse misuse.

``lguest._core`` is split over several extensions (``_clock``: the Cpu's
clock event and waker, its base class ``CpuTimer``, and ``NativeClock``;
``_regs``: ``Regs``; ``_memory``: GuestMemory's buffer exporter).  The old
paths still work, and the base class a user can reach on its own has no
cpu state to write into: every call refuses instead of dereferencing NULL.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import lguest

pytestmark = pytest.mark.skipif(lguest.load_core().NAME != "cython", reason="the compiled core is not active")


def test_the_old_paths_still_work():
    from lguest import _clock, _core, _regs

    assert _core.NativeClock is _clock.NativeClock is lguest.NativeClock
    assert _core.Regs is _regs.Regs and issubclass(_core.Cpu, _clock.CpuTimer)
    assert callable(_core.bench_deliver) and callable(_core.bench_copy_traps) and callable(_core.native_api)


def test_a_bare_cpu_timer_refuses_every_call():
    # In a subprocess: a NULL dereference would kill it, not the test run.
    code = textwrap.dedent("""
        from lguest import _clock
        clock = _clock.NativeClock()

        class Sub(_clock.CpuTimer):
            pass

        for t in (_clock.CpuTimer(), Sub()):
            for call in (t.wake, lambda: t.wait_for_wakeup(0), lambda: t.set_clockevent(1000), t._clock_fired,
                         lambda: clock.arm_periodic(t, 10**6)):
                try:
                    call()
                except RuntimeError:
                    continue
                raise SystemExit(f"{call} did not refuse")
            far = 1 << 62                        # never due during the test
            clock.arm(t, far, t._clock_fired)    # not this clock's cpu: the Python delegate keeps it
            assert clock.armed(t) == far
            clock.cancel(t)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout.strip()) == (0, "ok"), run.stderr[-2000:]
