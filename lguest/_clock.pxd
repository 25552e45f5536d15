# The native clock (lguest/_clock.pyx): declarations shared with the core,
# whose Cpu is a CpuTimer.
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from "_clock.h" nogil:
    ctypedef struct lg_waker:
        pass
    ctypedef struct lg_wheel:
        uint64_t fired
        uint64_t windows
    ctypedef struct lg_timer:
        lg_wheel *wheel
        int64_t expiry
        int armed
        uint32_t *pending
        int *halted
        lg_waker *waker


cdef class CpuTimer:
    # The part of a compiled Cpu the native clock drives: its clock event
    # on a wheel and the waker that event (or send_irq, or wake()) wakes.
    # lguest._core.Cpu points timer.pending / timer.halted at its lg_cpu.
    cdef lg_timer timer
    cdef lg_waker waker
    cdef object _native_clock   # keeps the wheel alive while our timer may be on it
    cdef object _guest_clock    # the clock of the cpu's guest: set once by Cpu.__init__
    cdef int _timer_ready(self) except -1
    cdef void _wake(self) noexcept nogil
    cdef int _wait(self, int64_t timeout_ns) noexcept nogil
    cdef void _cancel_timer(self) noexcept


cdef class NativeClock:
    cdef lg_wheel wheel
    cdef object _py
    cdef int _arm(self, CpuTimer cpu, int64_t expiry, int64_t period) except -1
    cdef object _python(self)


# SET_CLOCKEVENT on a NativeClock without Python objects or the GIL, for
# the native Unicorn hook (see its definition in _clock.pyx).
cdef int clockevent_nogil(lg_timer *t, lg_wheel *w, uint32_t delta) noexcept nogil
