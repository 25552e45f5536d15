"""Scaling: the cost of one delivery should not depend on how many irqs are
pending nor on how many guests/cpus one process holds.

* pending 1 -> 32: k irqs pending (the top k, 32-k..31); every round re-arms
  them and maybe_do_interrupt delivers the lowest, 32-k.  Measured in the
  compiled C loop (bench_deliver, compiled core and plain C) and from Python
  (both cores).
* guests 1 -> 64: m guests, each with its own GuestMemory and one cpu; every
  timed call makes 64 deliveries round-robin over the m cpus (64/m passes),
  so all entries of a group do the same work and should show the same time.
  From Python (both cores: set pending, maybe_do_interrupt, restore), and
  compiled with each delivery timed inside C by bench_deliver(cpu, 5, 1), which
  leaves Python's overhead (that would hide a cache effect) out.
"""

from __future__ import annotations

import pytest
from benchlib import (
    DELIVERIES,
    R_EIP,
    c_twin,
    frame,
    interleaved_ns_per_op,
    make_guest,
    pending_mask,
    round_robin,
    round_robin_timed_in_c,
)

import lguest

PENDING = [1, 2, 4, 8, 16, 32]
GUESTS = [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("k", PENDING)
@pytest.mark.parametrize("impl", ["compiled", "plain C"])
def test_pending_scaling_c_loop(benchmark, cbaseline, loops, impl, k):
    n, repeat = loops
    benchmark.group = f"scaling: pending 1..32, C loop, {impl} (time per {n} deliveries)"
    cython = lguest.load_core("cython")
    guest, cpu = make_guest(cython)
    mask, low = pending_mask(k)
    if impl == "compiled":
        def loop(count):
            cpu.irqs_pending = mask
            return cython.bench_deliver(cpu, low, count)
    else:
        twin = c_twin(cpu)

        def loop(count):
            twin.irqs_pending = mask
            return twin.bench_deliver(low, count)

    best = interleaved_ns_per_op({impl: loop}, n, repeat)[impl]
    benchmark.extra_info.update({"pending": k, "delivered_irq": low, "n": n, "ns_per_op": best})
    print(f"\n  {impl} pending={k}: {best:.2f} ns/delivery")
    benchmark.pedantic(loop, args=(n,), rounds=repeat)
    if impl == "compiled":
        assert cpu.irq_counts[low] >= n and cpu.irqs_pending == mask & ~(1 << low)


@pytest.mark.parametrize("k", PENDING)
def test_pending_scaling_python(benchmark, core, k):
    benchmark.group = f"scaling: pending 1..32, from Python, {core.NAME} core"
    guest, cpu = make_guest(core)
    arr, saved = frame(cpu)
    mask, low = pending_mask(k)
    mdi = cpu.maybe_do_interrupt

    def round_():
        cpu.irqs_pending = mask
        mdi()
        arr[R_EIP:] = saved

    benchmark.extra_info.update({"pending": k, "delivered_irq": low})
    benchmark(round_)
    assert cpu.irq_counts[low] >= 1 and cpu.irqs_pending == mask & ~(1 << low)


@pytest.mark.parametrize("m", GUESTS)
def test_guest_scaling(benchmark, core, m):
    benchmark.group = f"scaling: guests 1..64, {DELIVERIES} deliveries round-robin, {core.NAME} core"
    cpus, deliver_64 = round_robin(core, m)
    benchmark.extra_info.update({"guests": m, "deliveries_per_call": DELIVERIES})
    benchmark(deliver_64)
    for cpu in cpus:
        assert cpu.irq_counts[5] >= DELIVERIES // m and cpu.guest.dead is None


@pytest.mark.parametrize("m", GUESTS)
def test_guest_scaling_timed_in_c(benchmark, smoke, m):
    """The same round-robin, but each delivery timed inside C (bench_deliver(cpu, 5, 1)):
    extra_info holds ns/delivery with Python's overhead left out."""
    benchmark.group = f"scaling: guests 1..64, {DELIVERIES} deliveries round-robin via bench_deliver(cpu, 5, 1)"
    cpus, run = round_robin_timed_in_c(m)
    passes = 1 if smoke else 20
    best = min(run(passes) for _ in range(1 if smoke else 31)) / (passes * DELIVERIES)
    benchmark.extra_info.update({"guests": m, "c_timed_ns_per_delivery": best})
    print(f"\n  {m} guests: {best:.1f} ns/delivery timed in C")
    benchmark(run, 1)
    for cpu in cpus:
        assert cpu.irq_counts[5] >= DELIVERIES // m and cpu.guest.dead is None
