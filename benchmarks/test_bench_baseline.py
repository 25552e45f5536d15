"""The compiled core's C loops against plain C (baseline.c).

``lguest._core.bench_deliver(cpu, irq, n)`` and ``bench_copy_traps(cpu, idt,
defaults, n)`` run the core's own lg_* functions in a C loop; baseline.c runs
the kernel's logic over malloc'd memory in the same loop.  Both return the
elapsed ns.  Each test measures the two alternately (best of several) and
records ns/op and the ratio in ``benchmark.extra_info`` (and prints it); the
benchmark itself then times one loop of n operations of *its* implementation,
so the group shows both side by side.  No timing is asserted: this machine is
noisy and CI runs these with --benchmark-disable and a small n.
"""

from __future__ import annotations

import numpy as np
import pytest
from benchlib import LGUEST_DATA, c_twin, defaults_table, host_idt, interleaved_ns_per_op, make_guest

import lguest

IRQ = 5


@pytest.fixture(scope="module")
def cython():
    return lguest.load_core("cython")


# --- the baseline computes what the core computes --------------------------------------------------
@pytest.mark.parametrize("user", [False, True], ids=["kernel", "user"])
def test_baseline_matches_core(cython, cbaseline, user):
    """One delivery in each: same registers, same frame, same lguest_data, same
    pending bits (virtual clock, so the timestamp is deterministic too)."""
    guest, cpu = make_guest(cython, user=user)
    twin = c_twin(cpu)
    mask = (1 << IRQ) | (1 << 9)
    cpu.irqs_pending = mask
    twin.irqs_pending = mask
    cpu.maybe_do_interrupt()
    twin.maybe_do_interrupt()
    assert list(twin.regs) == list(cpu.regs.array)
    assert twin.irqs_pending == cpu.irqs_pending == 1 << 9
    assert twin.read(LGUEST_DATA, 20) == guest.memory.read(LGUEST_DATA, 20)
    sp = cpu.guest.guest_pa(cpu.regs.esp)
    assert twin.read(sp, 20) == guest.memory.read(sp, 20)
    assert guest.memory.read_u32(LGUEST_DATA + lguest.LD_TIME) != 0  # the timestamp was written
    assert not twin.dead and guest.dead is None

    idt_core, idt_c, defaults = host_idt(), host_idt(), defaults_table()
    cpu.copy_traps(idt_core, defaults)
    twin.copy_traps(idt_c, defaults)
    assert np.array_equal(idt_core, idt_c)
    twin.close()


def _record(benchmark, info):
    benchmark.extra_info.update(info)
    print("\n  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))


# --- the delivery loop --------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["compiled", "plain C"])
@pytest.mark.parametrize("clock", ["system", "virtual"])
def test_deliver_loop(benchmark, cython, cbaseline, loops, clock, impl):
    """n x (set irq pending; maybe_do_interrupt; restore ss esp cs eip).

    clock "system": the guest uses the SystemClock, so the compiled core calls
    clock_gettime(CLOCK_REALTIME) per delivery, as baseline.c does; "virtual":
    both read the VirtualClock's int64 cell.
    """
    benchmark.group = f"C loop: deliver, {clock} clock (time per {loops[0]} deliveries)"
    n, repeat = loops
    guest, cpu = make_guest(cython, clock=clock)
    twin = c_twin(cpu)
    contenders = {
        "compiled": lambda k: cython.bench_deliver(cpu, IRQ, k),
        "plain C": lambda k: twin.bench_deliver(IRQ, k),
    }
    best = interleaved_ns_per_op(contenders, n, repeat)
    _record(benchmark, {
        "n": n,
        "ns_per_op": best[impl],
        "compiled_ns_per_op": best["compiled"],
        "c_ns_per_op": best["plain C"],
        "ratio_compiled_over_c": best["compiled"] / best["plain C"],
    })
    benchmark.pedantic(contenders[impl], args=(n,), rounds=repeat, warmup_rounds=1 if repeat > 1 else 0)
    assert guest.dead is None and not twin.dead
    assert cpu.irq_counts[IRQ] >= n and cpu.irqs_pending == 0
    twin.close()


# --- copy_traps ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["compiled", "plain C"])
def test_copy_traps_loop(benchmark, cython, cbaseline, loops, impl):
    """n x copy_traps into the host IDT (256 entries scanned, 28 can be direct)."""
    n, repeat = loops
    n //= 4  # ~4x the cost of a delivery
    benchmark.group = f"C loop: copy_traps (time per {n} calls)"
    guest, cpu = make_guest(cython)
    twin = c_twin(cpu)
    idt_core, idt_c, defaults = host_idt(), host_idt(), defaults_table()
    contenders = {
        "compiled": lambda k: cython.bench_copy_traps(cpu, idt_core, defaults, k),
        "plain C": lambda k: twin.bench_copy_traps(idt_c, defaults, k),
        "plain C, direct vectors listed": lambda k: twin.bench_copy_traps_listed(idt_c, defaults, k),
    }
    best = interleaved_ns_per_op(contenders, n, repeat)
    _record(benchmark, {
        "n": n,
        "ns_per_op": best[impl],
        "compiled_ns_per_op": best["compiled"],
        "c_ns_per_op": best["plain C"],
        "c_listed_ns_per_op": best["plain C, direct vectors listed"],
        "ratio_compiled_over_c": best["compiled"] / best["plain C"],
    })
    benchmark.pedantic(contenders[impl], args=(n,), rounds=repeat, warmup_rounds=1 if repeat > 1 else 0)
    assert np.array_equal(idt_core, idt_c)
    twin.close()
