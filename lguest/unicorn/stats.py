"""``UnicornLauncher.stats``: every counter of a run, as one flat mapping."""

from __future__ import annotations

from typing import Any

from ..host.stats import OTHER, Stats


def flat_stats(cpu: Any, stats: Stats, backend: Any) -> dict[str, int]:
    """A flat mapping of counters (all ints):

    ``irq<n>``            deliveries of virtual irq n (vector 32+n)
    ``direct_<0xVV>``     direct traps delivered at vector VV (native hook, or
                          the Python path with ``native_direct=False``)
    ``reflected_<n>``     traps handle_trap reflected into the guest, by number
    ``hypercall_<n>``     hypercalls by number (``hypercall_other``: every
                          unknown number, one key whatever the guest tries)
    ``vector_<0xVV>``     every delivery at vector VV (the three above)
    ``exits_<reason>``    why the emulator stopped (trap, timer, irq, ...)
    ``entries``, ``kills``, ``blocks`` (guest basic blocks executed),
    ``io_emulated`` (in/out instructions given lguest's answer)
    """
    out: dict[str, int] = {}
    vectors: dict[int, int] = {}
    for irq, n in enumerate(cpu.irq_counts):
        if n:
            out[f"irq{irq}"] = int(n)
            vectors[32 + irq] = vectors.get(32 + irq, 0) + int(n)
    for v, n in backend.direct_counts().items():
        out[f"direct_{v:#04x}"] = int(n)
        vectors[v] = vectors.get(v, 0) + int(n)
    for v, n in sorted(stats.reflected_traps.items()):
        out[f"reflected_{v}"] = int(n)
        vectors[v] = vectors.get(v, 0) + int(n)
    for h, n in sorted(stats.hypercalls.items()):
        out["hypercall_other" if h == OTHER else f"hypercall_{h}"] = int(n)
    out["entries"] = int(stats.entries)
    out["kills"] = int(stats.kills)
    for v, n in sorted(vectors.items()):
        out[f"vector_{v:#04x}"] = n
    hooks = backend.hooks
    if hooks is not None:
        for reason, n in hooks.stop_counts().items():
            out[f"exits_{reason}"] = int(n)
        out["blocks"] = int(hooks.blocks)
        if hooks.io_count:
            out["io_emulated"] = int(hooks.io_count)
    return out
