"""Counters and an optional trace of what the host did for a guest (not in lguest).

Every structure here has a fixed size whatever the guest does: the counters
are keyed by a number the guest influences (a hypercall or trap number), so
each holds at most :attr:`Stats.MAX_KEYS` keys and counts anything beyond
under :data:`OTHER`; the trace is a ring of ``trace_size`` events.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, NamedTuple

#: The key that counts unknown hypercall numbers, and any key past the cap.
OTHER = -1


class TraceEvent(NamedTuple):
    time_ns: int
    vector: int
    eip: int
    kind: str  # "irq", "reflect", "hcall", "kill"


class Stats:
    """Per-cpu counters; ``trace`` keeps the last ``trace_size`` events when enabled."""

    #: Distinct keys a counter may hold (every vector 0..255 plus the
    #: Switcher's 256); later new keys count under :data:`OTHER`.
    MAX_KEYS = 257

    def __init__(self, trace_size: int = 0) -> None:
        self.hypercalls: Counter[int] = Counter()
        self.reflected_traps: Counter[int] = Counter()
        self.kills = 0
        self.entries = 0  # guest entries (backend runs)
        self.trace: deque[TraceEvent] | None = deque(maxlen=trace_size) if trace_size else None

    def _event(self, vector: int, eip: int, kind: str) -> None:
        if self.trace is not None:
            self.trace.append(TraceEvent(time.monotonic_ns(), vector, eip, kind))

    @classmethod
    def _count(cls, counter: Counter[int], key: int) -> None:
        if key not in counter and len(counter) >= cls.MAX_KEYS:
            key = OTHER
        counter[key] += 1

    def hypercall(self, num: int, args: Any = None) -> None:
        """Count hypercall ``num`` (the caller passes OTHER for an unknown
        number); ``args`` (its HcallArgs) is for a timeline's subclass."""
        self._count(self.hypercalls, num)
        if self.trace is not None:
            self._event(0x1F, 0, "hcall")

    def reflected(self, trapnum: int, eip: int) -> None:
        self._count(self.reflected_traps, trapnum)
        self._event(trapnum, eip, "reflect")

    def irq(self, irq: int, count: int, eip: int) -> None:
        """Trace a delivery (the counts themselves live in ``cpu.irq_counts``)."""
        self._event(32 + irq, eip, "irq")
