"""A timeline of what the host did for a guest, as Chrome trace-event JSON.

``lguest run --trace-out FILE.json`` (or ``UnicornLauncher.start_timeline``)
records every interrupt delivery (vector, how: a virtual irq, a direct trap
taken in the native hook, a trap the host reflected; the ring it came from
and went to), every hypercall (number, arguments), every timer fire (the
virtual clock's when it fires; the wall clock's, which fire in the
compiled core's own timer thread, at their expiry, put in time order when
the host sees them -- :meth:`TimelineStats.watch_wall_timer`), the wake-up that ends a HALT (with how long the guest was
halted) and the kill, as instant events ("ph": "i") on one track per cpu.  Perfetto
(ui.perfetto.dev) and ``chrome://tracing`` open the file as it is.

Time ("ts", microseconds, as the format wants) is the guest's: the virtual
clock's nanoseconds under ``--clock virtual``; under the wall clock, host
nanoseconds since the timeline started.

**Bounded.**  The timeline keeps the newest ``limit`` events (a ring);
``otherData.dropped`` says how many older ones it let go, and the native
hook's own buffer of direct traps between two host stops
(:data:`DIRECT_CAPACITY`) counts what it could not hold in
``otherData.direct_dropped``.  Without drops, the file's events add up to
the ``--stats`` counters (a test checks it).

**Valid after any ending.**  Nothing is written while the guest runs; the
file is written once, by :meth:`Timeline.write`, to a temporary name and
renamed over FILE, so a reader sees the old file or the whole new one --
the CLI writes it on every way out of a run (power-off, kill, timeout,
Ctrl-C, SIGTERM).

**Free when off.**  Without a timeline the run loop's stats are the plain
:class:`~lguest.host.stats.Stats`, and the native hook tests one NULL
pointer per direct trap (``PERFORMANCE.md``: no measurable difference).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from .hypercalls import HYPERCALL_NAMES
from .jsonfile import write_json_atomic
from .stats import OTHER, Stats

#: Newest events a timeline keeps by default.
DEFAULT_LIMIT = 1_000_000

#: Direct traps the native hook can hold between two host stops.
DIRECT_CAPACITY = 1 << 16

_TRAP_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF", 10: "#TS",
               11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 19: "#XM"}


class Timeline:
    """A bounded ring of trace events for one guest; :meth:`write` saves it as JSON."""

    def __init__(self, limit: int = DEFAULT_LIMIT, *, clock: str = "virtual") -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError("limit must be a positive int")
        self.limit = limit
        self.clock = clock
        # Events as dicts, or direct traps as compact tuples (made into
        # dicts only when written: a guest makes millions of them).
        self._ring: deque[Any] = deque(maxlen=limit)
        self.recorded = 0  # events ever added
        self.direct_dropped = 0  # direct traps the native buffer could not hold

    @property
    def dropped(self) -> int:
        """Events let go from the front of the ring."""
        return self.recorded - len(self._ring)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events kept, oldest first, as trace-event dicts."""
        return [e if isinstance(e, dict) else _direct_event(*e) for e in self._ring]

    def add(self, ts_ns: int, name: str, cat: str, args: dict[str, Any] | None = None, tid: int = 0) -> None:
        ev: dict[str, Any] = {"name": name, "cat": cat, "ph": "i", "s": "t", "ts": ts_ns / 1000.0,
                              "pid": 1, "tid": tid}
        if args:
            ev["args"] = args
        self._ring.append(ev)
        self.recorded += 1

    def add_in_order(self, ts_ns: int, name: str, cat: str, args: dict[str, Any] | None = None) -> None:
        """An event the host learnt of late (a wall-clock timer fire): put it
        before the events kept that came after it, so the file stays in time
        order.  The scan back covers only those (a tick's worth at most)."""
        ring = self._ring
        ts_us = ts_ns / 1000.0
        i = len(ring)
        while i > 0 and _ts_us(ring[i - 1]) > ts_us:
            i -= 1
        self.recorded += 1
        if len(ring) == self.limit:
            if i == 0:
                return  # older than everything kept: it is one of the dropped
            ring.popleft()
            i -= 1
        ev: dict[str, Any] = {"name": name, "cat": cat, "ph": "i", "s": "t", "ts": ts_us, "pid": 1, "tid": 0}
        if args:
            ev["args"] = args
        ring.insert(i, ev)

    def to_json(self) -> dict[str, Any]:
        meta = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "lguest guest"}},
                {"name": "thread_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "cpu 0"}}]
        return {
            "traceEvents": meta + list(self.events),
            "displayTimeUnit": "ns",
            "otherData": {"clock": "guest (virtual)" if self.clock == "virtual" else "host (wall)",
                          "recorded": self.recorded, "dropped": self.dropped,
                          "direct_dropped": self.direct_dropped, "limit": self.limit},
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON to ``path`` atomically (a temporary file renamed over it)."""
        write_json_atomic(path, self.to_json(), prefix=".lguest-trace-", compact=True)

    # --- events from the native hook ------------------------------------------------------
    def add_direct(self, rows: Any, to_ns: Callable[[int, int], int]) -> None:
        """Direct traps drained from the hook (rows of blocks, monotonic ns,
        eip, vector | cpl_from << 8 | cpl_to << 16); ``to_ns(blocks, mono)``
        gives their timeline times (numpy arrays in, an array out)."""
        ts = to_ns(rows[:, 0].astype("int64"), rows[:, 1].astype("int64"))
        self._ring.extend(zip(ts.tolist(), rows[:, 2].tolist(), rows[:, 3].tolist(), strict=True))
        self.recorded += len(rows)


def _ts_us(e: Any) -> float:
    return float(e["ts"]) if isinstance(e, dict) else e[0] / 1000.0


def _direct_event(ts_ns: int, eip: int, packed: int) -> dict[str, Any]:
    vector = packed & 0xFF
    return {"name": f"direct {vector:#04x}", "cat": "direct", "ph": "i", "s": "t", "ts": ts_ns / 1000.0,
            "pid": 1, "tid": 0, "args": {"vector": vector, "kind": "direct", "eip": f"{eip:#010x}",
                                         "ring_from": (packed >> 8) & 3, "ring_to": (packed >> 16) & 3}}


class TimelineStats(Stats):
    """:class:`Stats` that also puts each event on a :class:`Timeline`, with
    the guest time ``now_ns()`` and what the cpu shows at that moment."""

    def __init__(self, timeline: Timeline, cpu: Any, now_ns: Callable[[], int], trace_size: int = 64) -> None:
        # A trace ring makes the run loop report each delivery (Stats.irq).
        super().__init__(trace_size=max(1, trace_size))
        self.timeline = timeline
        self.cpu = cpu
        self.now_ns = now_ns
        self._halt_ns: int | None = None  # when the guest last asked to halt
        # The wall clock's timer (watch_wall_timer): its clock, and the
        # expiry believed armed -- exact (read back from the clock) or, just
        # after SET_CLOCKEVENT, the one the hypercall asked for.
        self._wall_clock: Any = None
        self._expiry: int | None = None
        self._expiry_exact = False

    def watch_wall_timer(self, clock: Any) -> None:
        """Put the wall clock's timer fires on the timeline.  They happen in a
        timer thread (the compiled core's, in C, without the GIL) that tells
        nobody; what the host can see is the armed expiry going away once
        it has passed.  So the timer is looked at whenever the host runs
        for this guest anyway -- each hypercall (before SET_CLOCKEVENT
        re-arms it), each delivery, the kill -- and a fire is placed at its
        expiry, in time order."""
        self._wall_clock = clock
        self._poll_timer()

    def _poll_timer(self) -> None:
        clock = self._wall_clock
        if clock is None:
            return
        armed = clock.armed(self.cpu)
        expiry = self._expiry
        if armed is not None and not self._expiry_exact:
            pass  # the expiry SET_CLOCKEVENT asked for, now read back exactly
        elif expiry is not None and armed != expiry:
            now = clock.now_ns()
            if expiry <= now:  # gone once it was due: it fired (a cancel before it is no fire)
                self.timeline.add_in_order(self.now_ns() - (now - expiry), "timer fire", "timer",
                                           {"clock": "wall"})
        self._expiry, self._expiry_exact = armed, True

    def _frame_ring(self) -> int | None:
        """The ring the interrupted code ran at: the cs of the frame just
        pushed on the guest's stack (eip, cs, eflags from its top)."""
        cpu = self.cpu
        try:
            g = cpu.guest
            pa = g.guest_pa((int(cpu.regs.esp) + 4) & 0xFFFFFFFF)
            if 0 <= pa and pa + 4 <= g.memory.size:
                return g.memory.read_u32(pa) & 3
        except Exception:  # noqa: BLE001 - a report, never a failure of the run
            return None
        return None

    def irq(self, irq: int, count: int, eip: int) -> None:
        super().irq(irq, count, eip)
        self._poll_timer()
        if self._halt_ns is not None:  # the irq that ends a HALT
            now = self.now_ns()
            self.timeline.add(now, "wake", "halt", {"irq": irq, "halted_ns": now - self._halt_ns})
            self._halt_ns = None
        args = {"vector": 32 + irq, "kind": "irq", "eip": f"{eip:#010x}", "ring_from": self._frame_ring(),
                "ring_to": int(self.cpu.regs.cs) & 3}
        for _ in range(count):
            self.timeline.add(self.now_ns(), f"irq {irq} (vector {32 + irq:#04x})", "irq", args)

    def reflected(self, trapnum: int, eip: int) -> None:
        super().reflected(trapnum, eip)
        name = _TRAP_NAMES.get(trapnum, f"trap {trapnum}")
        self.timeline.add(self.now_ns(), f"reflect {name}", "reflect",
                          {"vector": trapnum, "kind": "reflected", "eip": f"{eip:#010x}",
                           "errcode": f"{int(self.cpu.regs.errcode):#x}", "ring_from": int(self.cpu.regs.cs) & 3})

    def hypercall(self, num: int, args: Any = None) -> None:
        super().hypercall(num, args)
        detail: dict[str, Any] = {"nr": num}
        if args is not None:
            detail["args"] = [f"{int(getattr(args, f'arg{i}')):#x}" for i in range(1, 4)]
        name = HYPERCALL_NAMES.get(num, str(num)) if num != OTHER else "unknown"
        self._poll_timer()
        if name == "SET_CLOCKEVENT" and args is not None and self._wall_clock is not None:
            delta = int(args.arg1)  # the handler (run next) arms now + delta, or cancels
            self._expiry = self._wall_clock.now_ns() + delta if delta else None
            self._expiry_exact = not delta
        now = self.now_ns()
        self.timeline.add(now, f"hcall {name}", "hcall", detail)
        if name == "HALT":
            self._halt_ns = now

    def _event(self, vector: int, eip: int, kind: str) -> None:
        super()._event(vector, eip, kind)
        if kind == "kill":
            self._poll_timer()
            self.timeline.add(self.now_ns(), "kill", "kill",
                              {"eip": f"{eip:#010x}", "reason": self.cpu.guest.dead})

    def timer(self) -> None:
        """The guest's clock event fired."""
        self.timeline.add(self.now_ns(), "timer fire", "timer")
