# cython: language_level=3
# struct lguest_regs' Python face (lguest/_regs.pyx), cimported by the core.
from libc.stdint cimport uint32_t

from lguest.abi cimport lg_regs


cdef class Regs:
    cdef lg_regs *r            # the words of `words`: the core's lg_cpu.regs
    cdef object _words         # a memoryview of the 18 words ("I")
    cdef object _array         # the numpy view `array` made on first use, or None
    cdef uint32_t[::1] _view   # held for life: the storage cannot be resized under us


cdef uint32_t to_u32_slow(object v, str what) except? 0xFFFFFFFF


cdef inline uint32_t to_u32(object v, str what) except? 0xFFFFFFFF:
    """A guest-visible 32-bit value from Python: outside 0..2**32-1 is host misuse.

    The rule is lguest.validate.to_u32's (no bools, TypeError / ValueError);
    exact ints take this C fast path, everything else goes to that function
    (through to_u32_slow), so both cores agree by construction."""
    if type(v) is int and 0 <= v <= 0xFFFFFFFF:
        return <uint32_t>(<unsigned long long>v)
    return to_u32_slow(v, what)
