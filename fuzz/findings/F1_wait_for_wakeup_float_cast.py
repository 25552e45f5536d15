"""F1 (UBSan float-cast-overflow): Cpu.wait_for_wakeup(timeout) in the compiled core.

    fuzz/run_sanitized.sh fuzz/findings/F1_wait_for_wakeup_float_cast.py

lguest/_core.pyx, Cpu.wait_for_wakeup:
    cdef int64_t ns = -1 if timeout is None else <int64_t>(max(0.0, float(timeout)) * 1e9)
A timeout >= 2**63 ns (about 9.22e9 s), or float('inf') -- what run_guest passes
through _sleep_halted when run(timeout=float('inf')) is used for "no limit" --
converts an out-of-range double to int64: undefined behaviour (C11 6.3.1.4).
UBSan: "runtime error: inf is outside the range of representable values of type 'long'".
On x86-64 the plain build happens to get INT64_MIN and sleeps forever; the
Python core raises OverflowError from threading.Event.wait instead.
Expected: a timeout too large to represent (or inf) means "no timeout"
(ns = -1), or a ValueError; either way no UB and both cores alike.
"""
import lguest

mem = lguest.GuestMemory(8192)
host = lguest.Host(used_vectors=lguest.UsedVectors())
cpu = host.new_guest(mem, core="cython").new_cpu()
cpu.wake()  # so the plain build returns at once instead of sleeping forever
print("woken:", cpu.wait_for_wakeup(float("inf")))
