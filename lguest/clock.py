"""Guest clocks: the wall clock with real timers, and a virtual clock.

lguest arms one high-resolution timer per virtual CPU at an absolute
CLOCK_REALTIME expiry; when it fires, irq 0 becomes pending.  Here a clock
owns the timers of every CPU that uses it:

* :class:`SystemClock` keeps the armed expiries in a heap serviced by *one*
  daemon thread (a timer wheel, not a thread per event).
* ``lguest._clock.NativeClock`` (``lguest.NativeClock``; compiled core only, and its default) does
  the same in C: one native thread, no GIL, atomic bit sets, fast enough
  for a 100 kHz clock.
* :class:`VirtualClock` has no thread: time only moves in :meth:`advance`,
  which fires due timers synchronously, so a run is exactly repeatable.

A timer is keyed by its owner (a Cpu); arming again replaces the expiry,
like ``hrtimer_start`` on an active hrtimer.

The guest decides how often it re-arms (every SET_CLOCKEVENT hypercall), so
the heap is kept O(live timers): a replaced or cancelled expiry stays in the
heap only as a stale entry, and the heap is rebuilt from the live ones as
soon as stale entries outnumber ``2 * live + 16`` (amortised O(1) per arm).
"""

from __future__ import annotations

import array
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from .validate import check_callback, check_expiry, to_range

Callback = Callable[[], None]


class _Timers:
    """Expiry bookkeeping shared by both clocks (call with the lock held)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any]] = []
        self._armed: dict[Any, tuple[int, int, Callback]] = {}
        self._seq = itertools.count()

    def _arm(self, key: Any, expiry: int, callback: Callback) -> None:
        # The host API's rule for both clocks, as NativeClock applies it.
        expiry = check_expiry(expiry)
        check_callback(callback)
        seq = next(self._seq)
        self._armed[key] = (expiry, seq, callback)
        heapq.heappush(self._heap, (expiry, seq, key))
        self._compact()

    def _cancel(self, key: Any) -> bool:
        if self._armed.pop(key, None) is None:
            return False
        self._compact()
        return True

    def _compact(self) -> None:
        """Drop stale heap entries once they outnumber ``2 * live + 16``.

        Every live timer has exactly one heap entry (the one whose seq it
        holds), so ``len(heap) - live`` is the stale count.  Rebuilding costs
        O(heap), and at least ``live + 16`` re-arms or cancels happen between
        two rebuilds, so a guest re-arming forever pays amortised O(1) per
        hypercall and the heap never exceeds ``3 * live + 16`` entries.
        """
        live = len(self._armed)
        if len(self._heap) - live > 2 * live + 16:
            self._heap = [(expiry, seq, key) for key, (expiry, seq, _) in self._armed.items()]
            heapq.heapify(self._heap)

    def _pop_due(self, now: int) -> list[Callback]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            expiry, seq, key = heapq.heappop(self._heap)
            entry = self._armed.get(key)
            if entry is not None and entry[1] == seq:  # not re-armed or cancelled since
                del self._armed[key]
                due.append(entry[2])
        return due

    def _next_expiry(self) -> int | None:
        while self._heap:
            expiry, seq, key = self._heap[0]
            entry = self._armed.get(key)
            if entry is not None and entry[1] == seq:
                return expiry
            heapq.heappop(self._heap)  # stale
        return None

    def armed(self, key: Any) -> int | None:
        """The expiry armed for ``key`` (ns), or None."""
        entry = self._armed.get(key)
        return None if entry is None else entry[0]


class SystemClock(_Timers):
    """CLOCK_REALTIME with real timers fired from one background thread."""

    #: the compiled core reads the time itself with clock_gettime(CLOCK_REALTIME)
    realtime = True

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.fired = 0

    @staticmethod
    def now_ns() -> int:
        return time.time_ns()

    def arm(self, key: Any, expiry_ns: int, callback: Callback) -> None:
        with self._cond:
            self._arm(key, expiry_ns, callback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._service, name="lguest-clock", daemon=True)
                self._thread.start()
            self._cond.notify()

    def cancel(self, key: Any) -> None:
        with self._cond:
            self._cancel(key)
            self._cond.notify()

    def armed(self, key: Any) -> int | None:
        with self._cond:
            return super().armed(key)

    def _service(self) -> None:
        while True:
            with self._cond:
                while True:
                    nxt = self._next_expiry()
                    now = time.time_ns()
                    if nxt is not None and nxt <= now:
                        break
                    # Idle threads exit after a while; arm() restarts one.
                    timeout = 5.0 if nxt is None else (nxt - now) / 1e9
                    if not self._cond.wait(timeout) and nxt is None and self._next_expiry() is None:
                        self._thread = None
                        return
                due = self._pop_due(time.time_ns())
            for callback in due:  # outside the lock: callbacks may re-arm
                self.fired += 1
                callback()


_system_clock: SystemClock | None = None
_system_clock_lock = threading.Lock()


def system_clock() -> SystemClock:
    """The process-wide wall clock that guests use by default."""
    global _system_clock
    with _system_clock_lock:
        if _system_clock is None:
            _system_clock = SystemClock()
        return _system_clock


#: The words of :attr:`VirtualClock.native`: the clock event of one key (the
#: bound cpu), kept where the native Unicorn hook reads and writes it.
N_EXPIRY, N_SEQ, N_ARMED, N_STD, N_FIRED, N_NEXT_SEQ, N_OTHERS = range(7)
N_WORDS = 8

_NO_KEY = object()
_SLOT_METHODS = (("_arm", "_slot_arm"), ("_cancel", "_slot_cancel"), ("_pop_due", "_slot_pop_due"),
                 ("_next_expiry", "_slot_next_expiry"), ("armed", "_slot_armed"))


class VirtualClock(_Timers):
    """A clock that moves only when told to; timers fire inside advance().

    One key's timer can live outside the heap, in :attr:`native` (int64
    words, see ``N_*``): its expiry, its arm sequence number, armed or not,
    and whether its callback is the key's own clock event
    (``key._clock_fired``), next to the count of fires, the sequence counter
    every arm draws from and the number of other armed timers.  The native
    Unicorn hook (lguest/unicorn/_uchook.h, ``uh_vclock_hcall``) does a
    SET_CLOCKEVENT of that key there without the GIL -- advancing
    :attr:`cell`, firing the due event, re-arming -- when nothing else is
    armed; every method here reads and writes the same words, so what the
    clock reports is the same whichever side armed it.  The hook runs on
    the thread that drives the guest, and the clock is that thread's to
    drive: another thread arming or reading it while the guest runs sees
    the hook's work without the clock's lock.
    """

    realtime = False

    def __init__(self, start_ns: int = 0) -> None:
        super().__init__()
        if not isinstance(start_ns, int) or start_ns < 0:
            raise ValueError("start_ns must be a non-negative int")
        # One int64 cell the compiled core reads directly (no Python call
        # to timestamp a delivery), and the words the native hook keeps the
        # cpu's clock event in.  array.array, not numpy (whose import is a
        # third of an `lguest exec`): the C side holds a typed memoryview
        # of each, which also stops them from being resized under it.
        self.cell = array.array("q", [start_ns])
        self.native = array.array("q", bytes(8 * N_WORDS))
        # The native words as Python ints (a memoryview item is the cheapest
        # read; they are touched on every arm).
        self._nv = memoryview(self.native)
        self._nkey: Any = _NO_KEY     # whose timer lives in native (_NO_KEY: nobody's)
        self._nstd: Any = None        # that key's clock event (N_STD)
        self._ncb: Any = None         # the slot's callback when it is not that
        self._fired = 0               # fires by advance(); the hook's are in N_FIRED
        self._lock = threading.RLock()

    @property
    def fired(self) -> int:
        """Timers fired so far (by advance() or by the native hook)."""
        return self._fired + self._nv[N_FIRED]

    @fired.setter
    def fired(self, value: int) -> None:
        self._fired = value - self._nv[N_FIRED]

    # --- the native slot -------------------------------------------------------------------
    def _bind_native(self, key: Any, clock_event: Callback) -> None:
        """Keep ``key``'s timer in :attr:`native` (moving it there if armed);
        ``clock_event``: the callback the hook's fires stand for."""
        with self._lock:
            self._unbind_native()
            nv = self._nv
            entry = self._armed.pop(key, None)  # its heap entry becomes stale
            # While bound, arms on both sides draw from the words' counter.
            nv[N_NEXT_SEQ] = next(self._seq)
            self._nkey, self._nstd = key, clock_event
            for name, slot_name in _SLOT_METHODS:
                setattr(self, name, getattr(self, slot_name))
            nv[N_ARMED] = 0
            if entry is not None:
                self._slot_set(entry[0], entry[1], entry[2])
            nv[N_OTHERS] = len(self._armed)

    def _native_key(self) -> Any:
        """The key whose timer lives in :attr:`native`, or None."""
        return None if self._nkey is _NO_KEY else self._nkey

    def _unbind_native(self) -> None:
        """Put the bound key's timer back in the heap."""
        with self._lock:
            key, nv = self._nkey, self._nv
            if key is _NO_KEY:
                return
            if nv[N_ARMED]:
                expiry, seq = nv[N_EXPIRY], nv[N_SEQ]
                self._armed[key] = (expiry, seq, self._slot_callback())
                heapq.heappush(self._heap, (expiry, seq, key))
            nv[N_ARMED] = 0
            self._seq = itertools.count(nv[N_NEXT_SEQ])
            for name, _ in _SLOT_METHODS:
                del self.__dict__[name]
            self._nkey = _NO_KEY
            self._nstd = self._ncb = None

    def _slot_set(self, expiry: int, seq: int, callback: Callback) -> None:
        std = self._nstd
        # The hook's fire is key._clock_fired's work; any other callback
        # (a bound method of another object, a function) is Python's.
        is_std = type(callback) is type(std) and callback == std
        nv = self._nv
        nv[N_EXPIRY], nv[N_SEQ], nv[N_STD], nv[N_ARMED] = expiry, seq, int(is_std), 1
        self._ncb = None if is_std else callback

    def _slot_callback(self) -> Callback:
        return self._nstd if self._nv[N_STD] else self._ncb

    def _take_slot(self) -> Callback:
        callback = self._slot_callback()
        self._nv[N_ARMED] = 0
        self._ncb = None
        return callback

    # --- _Timers with the slot: these replace _arm, _cancel, _pop_due, _next_expiry
    # and armed on the instance while a key is bound (_SLOT_METHODS), so an
    # unbound clock runs _Timers' own code at its own cost.
    def _slot_arm(self, key: Any, expiry: int, callback: Callback) -> None:
        expiry = check_expiry(expiry)
        check_callback(callback)
        nv = self._nv
        seq = nv[N_NEXT_SEQ]  # one counter for both sides: ties fire in arm order
        nv[N_NEXT_SEQ] = seq + 1
        if key is self._nkey:
            self._slot_set(expiry, seq, callback)
            return
        self._armed[key] = (expiry, seq, callback)
        heapq.heappush(self._heap, (expiry, seq, key))
        self._compact()
        nv[N_OTHERS] = len(self._armed)

    def _slot_cancel(self, key: Any) -> bool:
        if key is self._nkey:
            was = bool(self._nv[N_ARMED])
            self._nv[N_ARMED] = 0
            self._ncb = None
            return was
        done = _Timers._cancel(self, key)
        self._nv[N_OTHERS] = len(self._armed)
        return done

    def _slot_pop_due(self, now: int) -> list[Callback]:
        nv = self._nv
        slot = (nv[N_EXPIRY], nv[N_SEQ]) if nv[N_ARMED] and nv[N_EXPIRY] <= now else None
        due = []
        while self._heap and self._heap[0][0] <= now:
            expiry, seq, key = self._heap[0]
            if slot is not None and slot < (expiry, seq):
                due.append(self._take_slot())
                slot = None
            heapq.heappop(self._heap)
            entry = self._armed.get(key)
            if entry is not None and entry[1] == seq:  # not re-armed or cancelled since
                del self._armed[key]
                due.append(entry[2])
        if slot is not None:
            due.append(self._take_slot())
        nv[N_OTHERS] = len(self._armed)
        return due

    def _slot_next_expiry(self) -> int | None:
        nxt = _Timers._next_expiry(self)
        if self._nv[N_ARMED]:
            mine = self._nv[N_EXPIRY]
            nxt = mine if nxt is None else min(nxt, mine)
        return nxt

    def _slot_armed(self, key: Any) -> int | None:
        if key is self._nkey:
            return self._nv[N_EXPIRY] if self._nv[N_ARMED] else None
        return _Timers.armed(self, key)

    def now_ns(self) -> int:
        return self.cell[0]

    def arm(self, key: Any, expiry_ns: int, callback: Callback) -> None:
        with self._lock:
            self._arm(key, expiry_ns, callback)

    def cancel(self, key: Any) -> None:
        with self._lock:
            self._cancel(key)

    def next_expiry(self) -> int | None:
        """When the earliest armed timer fires (ns), or None."""
        with self._lock:
            return self._next_expiry()

    def advance(self, ns: int) -> None:
        """Move time forward by ``ns`` and fire, in order, every timer now due.

        Each timer fires with the clock reading its own expiry, so a callback
        that re-arms relative to now() keeps a steady period.
        """
        ns = to_range(ns, 0, (1 << 63) - 1, "ns")
        with self._lock:
            target = int(self.cell[0]) + ns
            while True:
                nxt = self._next_expiry()
                if nxt is None or nxt > target:
                    break
                self.cell[0] = max(nxt, int(self.cell[0]))
                for callback in self._pop_due(nxt):
                    self._fired += 1
                    callback()
            self.cell[0] = target

    def advance_to_next(self) -> bool:
        """Jump to the next expiry (a halted guest's idle time); False if none."""
        with self._lock:
            nxt = self._next_expiry()
            if nxt is None:
                return False
            self.advance(max(0, nxt - int(self.cell[0])))
            return True
