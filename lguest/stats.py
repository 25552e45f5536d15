"""Counters and an optional trace of what the host did for a guest (not in lguest)."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, NamedTuple


class TraceEvent(NamedTuple):
    time_ns: int
    vector: int
    eip: int
    kind: str  # "irq", "reflect", "direct", "hcall", "kill"


class Stats:
    """Per-cpu counters; ``trace`` keeps the last ``trace_size`` events when enabled."""

    def __init__(self, trace_size: int = 0) -> None:
        self.hypercalls: Counter[int] = Counter()
        self.reflected_traps: Counter[int] = Counter()
        self.direct_traps: Counter[int] = Counter()
        self.kills = 0
        self.entries = 0  # guest entries (backend runs)
        self.trace: deque[TraceEvent] | None = deque(maxlen=trace_size) if trace_size else None

    def _event(self, vector: int, eip: int, kind: str) -> None:
        if self.trace is not None:
            self.trace.append(TraceEvent(time.monotonic_ns(), vector, eip, kind))

    def hypercall(self, num: int) -> None:
        self.hypercalls[num] += 1
        if self.trace is not None:
            self._event(0x1F, 0, "hcall")

    def reflected(self, trapnum: int, eip: int) -> None:
        self.reflected_traps[trapnum] += 1
        self._event(trapnum, eip, "reflect")

    def direct(self, vector: int, count: int = 1) -> None:
        self.direct_traps[vector] += count

    def irq(self, irq: int, count: int, eip: int) -> None:
        """Trace a delivery (the counts themselves live in ``cpu.irq_counts``)."""
        self._event(32 + irq, eip, "irq")

    def as_dict(self, cpu: Any = None) -> dict[str, Any]:
        irqs = {} if cpu is None else {32 + i: n for i, n in enumerate(cpu.irq_counts) if n}
        return {
            "entries": self.entries,
            "irqs": irqs,
            "direct_traps": dict(sorted(self.direct_traps.items())),
            "reflected_traps": dict(sorted(self.reflected_traps.items())),
            "hypercalls": dict(sorted(self.hypercalls.items())),
            "kills": self.kills,
        }
