# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled wall clock: a native timer wheel and the cpu's waker.

One C thread per :class:`NativeClock` fires the clock event of every
compiled Cpu armed on it, without taking the GIL (so a busy Python thread
cannot delay it, and 100 kHz clocks are possible).  The C is in
``_clock.h`` (types) and ``_clock_wheel.h`` (code); the Cpu side is
:class:`CpuTimer`, the base class of ``lguest._core.Cpu``.
"""

from libc.stdint cimport int64_t, uint32_t

from lguest._regs cimport to_u32

from . import validate as _validate

cdef extern from "_lgutil.h" nogil:
    int64_t lg_realtime_ns() noexcept
    void lg_atomic_or(uint32_t *p, uint32_t v) noexcept

cdef extern from "_clock_wheel.h" nogil:
    void lg_waker_init(lg_waker *w) noexcept
    void lg_waker_destroy(lg_waker *w) noexcept
    void lg_wake(lg_waker *w) noexcept
    int lg_wait(lg_waker *w, int64_t timeout_ns) noexcept
    void lg_wheel_init(lg_wheel *w) noexcept
    int lg_wheel_running(lg_wheel *w) noexcept
    int lg_wheel_arm(lg_wheel *w, lg_timer *t, int64_t expiry, int64_t period) noexcept
    void lg_timer_cancel(lg_timer *t) noexcept
    void lg_timer_detach(lg_timer *t) noexcept
    void lg_wheel_shutdown(lg_wheel *w) noexcept


cdef class CpuTimer:
    """The clock event and waker of a compiled Cpu, and their methods (the
    base class of lguest._core.Cpu; useless alone: a CpuTimer that is not a
    Cpu has no irqs_pending to fire into, and refuses every call)."""

    def __cinit__(self, *args, **kwargs):
        lg_waker_init(&self.waker)
        self.timer.waker = &self.waker

    def __dealloc__(self):
        # Unlinked before the object (and the lg_cpu its timer points into) goes.
        lg_timer_detach(&self.timer)
        lg_waker_destroy(&self.waker)

    cdef int _timer_ready(self) except -1:
        # Cpu overrides this: RuntimeError while its __init__ never ran.
        if self.timer.pending == NULL:
            raise RuntimeError("a CpuTimer is only usable as a lguest._core.Cpu")
        return 0

    def wake(self):
        """Wake the run loop if it sleeps (the kernel's wake_up_process)."""
        self._timer_ready()
        with nogil:
            self._wake()

    def wait_for_wakeup(self, timeout=None) -> bool:
        """Sleep (without the GIL) until wake(), the clock or ``timeout`` seconds."""
        self._timer_ready()
        # lguest.validate.to_timeout: None / inf mean "until woken", NaN and
        # non-numbers raise (the float cast below is then always defined).
        t_obj = _validate.to_timeout(timeout)
        cdef int64_t ns = -1 if t_obj is None else <int64_t>(<double>t_obj * 1e9)
        cdef int woken
        with nogil:
            woken = self._wait(ns)
        return bool(woken)

    def set_clockevent(self, delta_ns):
        """Arm the guest's one-shot timer ``delta_ns`` from now; 0 cancels."""
        self._timer_ready()
        cdef uint32_t delta = to_u32(delta_ns, "delta_ns")
        clock = self._guest_clock
        if isinstance(clock, NativeClock):
            # The compiled clock fires in C, without the GIL.
            if delta == 0:
                self._cancel_timer()
            else:
                (<NativeClock>clock)._arm(self, lg_realtime_ns() + delta, 0)
            return
        if delta == 0:
            clock.cancel(self)
            return
        clock.arm(self, clock.now_ns() + delta, self._clock_fired)

    def _clock_fired(self):
        """clockdev_fn: irq 0 is the timer; wake the cpu if it sleeps."""
        if self.timer.pending == NULL:
            raise RuntimeError("a CpuTimer is only usable as a lguest._core.Cpu")
        lg_atomic_or(self.timer.pending, 1)
        if self.timer.halted[0]:
            self._wake()

    cdef void _wake(self) noexcept nogil:
        lg_wake(&self.waker)

    cdef int _wait(self, int64_t timeout_ns) noexcept nogil:
        return lg_wait(&self.waker, timeout_ns)

    cdef void _cancel_timer(self) noexcept:
        lg_timer_cancel(&self.timer)


cdef int clockevent_nogil(lg_timer *t, lg_wheel *w, uint32_t delta) noexcept nogil:
    """CpuTimer.set_clockevent's NativeClock branch (``t`` the cpu's timer,
    ``w`` its guest's clock's wheel) without Python objects, so the native
    Unicorn hook calls it without the GIL: 0 cancels (always the same C
    call); else one-shot at now + delta, when the timer already sits on
    ``w`` with ``w``'s thread running -- then ``_native_clock`` is already
    this clock (the arm that linked the timer set it) and no thread can
    fail to start.  1: done; 0: not so (the first arm on this wheel), the
    caller takes the Python path."""
    if delta == 0:
        lg_timer_cancel(t)
        return 1
    if t.wheel != w or not lg_wheel_running(w):
        return 0
    if lg_wheel_arm(w, t, lg_realtime_ns() + delta, 0) != 0:
        return 0   # unreachable: the thread runs, nothing is created
    return 1


cdef class NativeClock:
    """CLOCK_REALTIME with a native timer wheel: one C thread fires the clock
    event of every compiled Cpu armed on it, without taking the GIL (so a
    busy Python thread cannot delay it, and 100 kHz clocks are possible).

    Timers of other owners (``arm(key, expiry, callback)`` with a Python
    callback) are passed to a Python :class:`lguest.clock.SystemClock`.
    """
    realtime = True

    def __cinit__(self):
        lg_wheel_init(&self.wheel)

    def __dealloc__(self):
        with nogil:
            lg_wheel_shutdown(&self.wheel)

    @staticmethod
    def now_ns():
        return lg_realtime_ns()

    @property
    def fired(self):
        """How many compiled-cpu clock events have fired."""
        return self.wheel.fired

    @property
    def windows(self):
        """How many fires found irq 0 not yet pending (each must be delivered once)."""
        return self.wheel.windows

    cdef int _arm(self, CpuTimer cpu, int64_t expiry, int64_t period) except -1:
        # A CpuTimer that is not a ready Cpu has no irqs_pending to point at.
        if cpu.timer.pending == NULL:
            raise RuntimeError("the cpu is not initialised")
        cpu._native_clock = self
        if lg_wheel_arm(&self.wheel, &cpu.timer, expiry, period) != 0:
            raise OSError("could not start the clock thread")
        return 0

    def arm_periodic(self, CpuTimer cpu not None, period_ns):
        """Fire ``cpu``'s clock every ``period_ns`` until cancelled (not in
        lguest, whose clock is one-shot: a load generator for stress tests).

        ``period_ns`` must be at least ``lguest.validate.MIN_TIMER_PERIOD_NS``
        (10 us): a shorter period keeps the timer thread permanently behind
        (``ValueError``).  Missed periods are skipped, not replayed."""
        cdef int64_t period = _validate.check_timer_period(period_ns)
        cpu._timer_ready()
        if cpu._guest_clock is not self:
            raise ValueError("the cpu's guest does not use this clock")
        self._arm(cpu, lg_realtime_ns() + period, period)

    cdef object _python(self):
        if self._py is None:
            from .clock import SystemClock
            self._py = SystemClock()
        return self._py

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    def arm(self, key, expiry_ns, callback):
        expiry_ns = _validate.check_expiry(expiry_ns)
        _validate.check_callback(callback)
        if (isinstance(key, CpuTimer) and (<CpuTimer>key)._guest_clock is self
                and callback == key._clock_fired):
            self._arm(<CpuTimer>key, <int64_t>expiry_ns, 0)
        else:
            self._python().arm(key, expiry_ns, callback)

    def cancel(self, key):
        if isinstance(key, CpuTimer) and (<CpuTimer>key).timer.wheel == &self.wheel:
            lg_timer_cancel(&(<CpuTimer>key).timer)
        elif self._py is not None:
            self._py.cancel(key)

    def armed(self, key):
        """The expiry armed for ``key`` (ns), or None."""
        if isinstance(key, CpuTimer) and (<CpuTimer>key).timer.wheel == &self.wheel:
            return (<CpuTimer>key).timer.expiry if (<CpuTimer>key).timer.armed else None
        return None if self._py is None else self._py.armed(key)


_native_clock = None


def native_clock():
    """The process-wide compiled wall clock that compiled guests use by default."""
    global _native_clock
    if _native_clock is None:
        _native_clock = NativeClock()
    return _native_clock
