"""Host-API argument rules, written down once for both cores.

API.md: every value that models a guest register or a guest-supplied number
is a u32; outside ``0..2**32-1`` is host misuse.  This module is the single
definition of what "is a u32" means at the Python boundary.  The pure-Python
core calls these functions; the compiled core mirrors ``to_u32`` in C (it
sits on every call) and calls the rest directly, and ``tests/test_api_fuzz.py``
checks call by call that both cores raise the same exception class.

The rules:

* an integer is anything with ``__index__`` (``int``, numpy integers) — but
  **not** ``bool`` (``True`` where a register value belongs is a bug, not a
  1) and not ``float`` / ``None`` / ``str`` / ``bytes``: ``TypeError``;
* an integer outside the range: ``ValueError`` (``"<what> <n> is not a u32"``);
* data to write into guest memory must be bytes-like (the buffer protocol);
  an ``int`` is refused (``bytes(8)`` would silently mean eight zero bytes):
  ``TypeError``;
* timeouts are ``None`` or a real number; NaN is ``ValueError``; negative
  means "don't wait"; ``inf`` means "no timeout".
"""

from __future__ import annotations

import array as _array
import math
import operator
import sys
from typing import TYPE_CHECKING, Any

from .constants import IDT_ENTRIES

if TYPE_CHECKING:
    import numpy as np

# numpy is not imported here, nor anywhere on the way to running a guest: it
# is ~40 ms of a ~130 ms ``lguest exec``.  The rules below still accept (and
# check) numpy objects exactly as before, with one trick: if numpy is not in
# ``sys.modules`` the caller cannot be holding an ndarray or a numpy scalar,
# so the numpy branch is skipped without importing it
# (``sys.modules.get("numpy")``).  lguest's own word tables are memoryviews
# cast to "I" (``words_view``), which the cores accept wherever a host IDT
# goes.


U32_MAX = 0xFFFFFFFF

#: The shortest period a host-API *periodic* timer may have (NativeClock.
#: arm_periodic and any Python equivalent).  One pass of the native timer
#: thread (scan the armed list, read CLOCK_REALTIME, one atomic OR, maybe a
#: wake-up) costs ~0.1-1 us; at a period near that cost the thread is always
#: behind, never sleeps, and holds the wheel mutex that set_clockevent /
#: cancel take *with the GIL held* -- freezing every Python thread.  10 us
#: (a 100 kHz clock, what the stress tests drive) keeps the thread's duty
#: cycle at or below ~10 % even on a loaded machine.  The guest's own
#: SET_CLOCKEVENT deltas are not subject to this: any u32 is legal there
#: (a one-shot timer cannot livelock).
MIN_TIMER_PERIOD_NS = 10_000
#: Longest periodic timer period / absolute expiry the clocks accept (int64 ns).
MAX_TIMER_NS = (1 << 63) - 1


#: numpy, once something has imported it (``_numpy_now`` looks again until then).
_np: Any = None


def _numpy_now() -> Any:
    global _np
    _np = sys.modules.get("numpy")
    return _np


def words_view(n: int, shape: tuple[int, ...] | None = None) -> memoryview:
    """``n`` zeroed u32 words in a fresh buffer, as a writable memoryview of
    format "I" (1-D, or ``shape``): the storage of the registers, the IDTs and
    the GDT.  The bytearray behind it cannot be resized while any view of it
    exists, so a raw pointer into it stays good."""
    mv = memoryview(bytearray(4 * n))
    return mv.cast("I") if shape is None else mv.cast("I", shape)


def u32_words(values: Any) -> memoryview:
    """Integers as a read-only memoryview of u32 words ("I"): a constant
    table (a backend's ``default_handlers``)."""
    return memoryview(_array.array("I", values).tobytes()).cast("I")


def to_index(v: Any, what: str = "value") -> int:
    """``operator.index`` without bools: the integer rule of every host API."""
    if type(v) is int:  # noqa: E721 - the common case, and never a bool
        return v
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an integer, not bool")
    np = sys.modules.get("numpy")  # not imported: v cannot be a numpy bool
    if np is not None and isinstance(v, np.bool_):
        raise TypeError(f"{what} must be an integer, not bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(v).__name__}") from None


def check_vector(v: Any) -> int:
    """A vector number 0..IDT_ENTRIES-1 (the integer rule: no bools): both
    cores check the host's syscall vector with it, ``lguest.host.vectors``
    every vector it is handed."""
    v = to_index(v, "vector")
    if not 0 <= v < IDT_ENTRIES:
        raise ValueError(f"vector {v} out of range 0..{IDT_ENTRIES - 1}")
    return v


def to_u32(v: Any, what: str = "value") -> int:
    """A guest-visible 32-bit quantity: anything outside 0..2**32-1 is host misuse."""
    i = to_index(v, what)
    if not 0 <= i <= U32_MAX:
        raise ValueError(f"{what} {i} is not a u32")
    return i


def to_range(v: Any, lo: int, hi: int, what: str = "value") -> int:
    """An integer in ``lo..hi`` inclusive (``ValueError`` outside)."""
    i = to_index(v, what)
    if not lo <= i <= hi:
        raise ValueError(f"{what} {i} out of range {lo}..{hi}")
    return i


def to_bytes(data: Any, what: str = "data") -> bytes:
    """Bytes-like data as ``bytes`` (its raw bytes, whatever the item size)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (int, str)) or data is None:
        raise TypeError(f"{what} must be a bytes-like object, not {type(data).__name__}")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object, not {type(data).__name__}") from None
    with view:
        return view.tobytes()


def to_idt_pair(base: Any, what: str = "base") -> tuple[int, int]:
    """An IDT gate ``(a, b)``: a sequence of exactly two u32 words."""
    if isinstance(base, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be an (a, b) pair of u32, not {type(base).__name__}")
    try:
        items = tuple(base)
    except TypeError:
        raise TypeError(f"{what} must be an (a, b) pair of u32, not {type(base).__name__}") from None
    if len(items) != 2:
        raise ValueError(f"{what} must be an (a, b) pair, got {len(items)} items")
    return to_u32(items[0], what + " a"), to_u32(items[1], what + " b")


def to_timeout(timeout: Any) -> float | None:
    """``None`` (wait forever), or seconds as a float: negative waits not at
    all, ``inf`` (or anything past ~290 years) is ``None``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        np = sys.modules.get("numpy")
        if np is None or isinstance(timeout, np.bool_) or not isinstance(timeout, (np.integer, np.floating)):
            raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    t = float(timeout)
    if math.isnan(t):
        raise ValueError("timeout must not be NaN")
    if t >= 9.0e9:
        return None
    return max(0.0, t)


def check_timer_period(period_ns: Any) -> int:
    """A host-API periodic timer period (ns): MIN_TIMER_PERIOD_NS..MAX_TIMER_NS."""
    p = to_index(period_ns, "period_ns")
    if not MIN_TIMER_PERIOD_NS <= p <= MAX_TIMER_NS:
        raise ValueError(f"timer period {p} ns out of range {MIN_TIMER_PERIOD_NS}..{MAX_TIMER_NS} "
                         f"(a shorter period would keep the timer thread permanently behind)")
    return p


def check_expiry(expiry_ns: Any) -> int:
    """An absolute timer expiry (ns since the clock's epoch): 0..MAX_TIMER_NS."""
    return to_range(expiry_ns, 0, MAX_TIMER_NS, "expiry_ns")


def check_callback(callback: Any) -> Any:
    if not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__}")
    return callback


def as_idt(idt: Any) -> Any:
    """A host IDT the core may write through a raw pointer: a numpy uint32
    array of shape (256, 2), or lguest's own kind of table (a writable
    memoryview of "I" words of that shape, see ``words_view``)."""
    np = _np or _numpy_now()
    if np is None or not isinstance(idt, np.ndarray):
        if type(idt) is memoryview and idt.format == "I" and idt.shape == (IDT_ENTRIES, 2) \
                and not idt.readonly and idt.c_contiguous:  # noqa: E721 - exact type
            return idt
        raise ValueError("idt must be a numpy uint32 array of shape (256, 2)")
    if idt.dtype != np.uint32 or idt.shape != (IDT_ENTRIES, 2):
        raise ValueError("idt must be a numpy uint32 array of shape (256, 2)")
    if not idt.flags.writeable:
        raise ValueError("idt must be writable")
    if not idt.flags.c_contiguous or not idt.flags.aligned:
        raise ValueError("idt must be C-contiguous and aligned")
    return idt


def as_defaults(defaults: Any) -> Any:
    """256 u32 handler addresses as C-contiguous u32 words (a copy if needed).

    Without numpy: a memoryview of 256 "I" words as is, and a list or tuple
    of 256 plain ints in range as an ``array.array``.  Anything else goes
    through numpy (imported then), so every other input -- and every misuse
    -- meets exactly the rule numpy's conversion always gave it."""
    np = _np or _numpy_now()
    if np is not None and isinstance(defaults, np.ndarray):
        if defaults.dtype == np.uint32 and defaults.shape == (IDT_ENTRIES,) and defaults.flags.c_contiguous \
                and defaults.flags.aligned:
            return defaults
    else:
        kind = type(defaults)
        if kind is memoryview:
            if defaults.format == "I" and defaults.shape == (IDT_ENTRIES,) and defaults.c_contiguous:
                return defaults
        elif kind is list or kind is tuple:
            if len(defaults) == IDT_ENTRIES and all(type(x) is int and 0 <= x <= U32_MAX for x in defaults):  # noqa: E721
                return _array.array("I", defaults)
        if np is None:
            import numpy as np
    try:
        arr = np.asarray(defaults)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("defaults must hold 256 u32 handler addresses") from None
    if arr.shape != (IDT_ENTRIES,):
        raise ValueError("defaults must hold 256 handler addresses")
    if arr.dtype != np.uint32:
        if arr.dtype.kind not in "iu" or (arr.size and (int(arr.min()) < 0 or int(arr.max()) > U32_MAX)):
            raise ValueError("defaults must be u32 handler addresses")
    return np.ascontiguousarray(arr, dtype=np.uint32)


def check_regs_array(array: Any) -> np.ndarray:
    """Storage for ``struct lguest_regs``: a writable, C-contiguous uint32[18]."""
    np = sys.modules.get("numpy")  # not imported: the caller holds no ndarray
    if np is None or not isinstance(array, np.ndarray) or array.dtype != np.uint32 or array.shape != (18,):
        raise ValueError("Regs needs a numpy uint32 array of 18 words")
    if not array.flags.writeable or not array.flags.c_contiguous or not array.flags.aligned:
        raise ValueError("Regs needs a writable, C-contiguous, aligned array")
    return array


def clock_cell(clock: Any) -> Any:
    """The int64 time cell a clock exposes for the compiled core to read
    directly, validated when a guest binds to the clock; None if it has none.

    The core reads ``cell[0]`` through a raw pointer on every timestamp, so a
    cell that is empty, the wrong dtype or byte order, or not contiguous is
    host misuse (``ValueError``), not something to read past.  A cell is a
    numpy int64 array of shape (1,), or an ``array.array("q")`` of one item
    (``VirtualClock``'s: no numpy needed).
    """
    cell = getattr(clock, "cell", None)
    if cell is None:
        return None
    if type(cell) is _array.array and cell.typecode == "q" and len(cell) == 1:  # noqa: E721 - exact type
        return cell
    np = sys.modules.get("numpy")  # not imported: the caller holds no ndarray
    if (np is None or not isinstance(cell, np.ndarray) or cell.dtype != np.int64 or cell.shape != (1,)
            or not cell.flags.c_contiguous or not cell.flags.aligned):
        raise ValueError("clock.cell must be a C-contiguous numpy int64 array of shape (1,)"
                         " or an array.array('q') of one item")
    return cell


def not_initialised(obj: Any) -> RuntimeError:
    """The error for an object whose ``__init__`` never ran (both cores)."""
    return RuntimeError(f"{type(obj).__name__} object is not initialised (its __init__ was not called)")


def no_pickle(obj: Any) -> TypeError:
    """Core objects own host resources (raw pointers, threads, locks)."""
    return TypeError(f"cannot pickle {type(obj).__name__} objects: they own host resources "
                     "(use lguest.snapshot for a pickleable copy of the state)")
