"""``lguest vectors``: the host's used vectors and whether a syscall vector can be reserved."""

from __future__ import annotations

import argparse
import json

from ..constants import SYSCALL_VECTOR
from ..host.vectors import Host, UsedVectors, VectorBusy
from .common import PROG, _busy_line, _default_vector


# --- lguest vectors -----------------------------------------------------------------------------
def free_vectors(used: UsedVectors) -> list[int]:
    """The vectors a syscall vector may take: Linux's 0x80 and every vector nobody owns."""
    return [v for v in range(256) if v == SYSCALL_VECTOR or used.owner(v) is None]


def _ranges(vectors: list[int]) -> str:
    """0x20-0x2f, 0x40-0x7f, ...: consecutive runs folded."""
    out: list[str] = []
    start = prev = None
    for v in [*vectors, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            out.append(f"{start:#04x}" if start == prev else f"{start:#04x}-{prev:#04x}")
        start = prev = v
    return ", ".join(out)


def cmd_vectors(args: argparse.Namespace) -> int:
    used = UsedVectors.default()
    vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    if vector is None:
        vector = SYSCALL_VECTOR
    free = free_vectors(used)
    host = Host(vector, used)
    try:
        host.init_interrupts()
    except VectorBusy as exc:
        busy: VectorBusy | None = exc
    else:
        busy = None
        host.free_interrupts()
    if args.json:
        verdict = {"vector": vector, "available": busy is None,
                   "owner": busy.owner if busy is not None else None,
                   "message": _busy_line(busy).removeprefix(f"{PROG}: ") if busy is not None else None}
        doc = {"used": [{"vector": v, "owner": owner} for v, owner in used.table()],
               "free": free, "syscall_vector": verdict}
        print(json.dumps(doc, indent=2))
        return 0 if busy is None else 1
    if args.free:
        print(f"free for a syscall vector: {_ranges(free)}  ({len(free)} vectors; 0x80 is Linux's own)")
    else:
        print("vector  owner")
        for v, owner in used.table():
            print(f"  {v:#04x}  {owner}")
    if busy is not None:
        print(_busy_line(busy))
        return 1
    if vector == SYSCALL_VECTOR:
        print(f"syscall vector {vector:#x}: Linux's own, always available")
    else:
        print(f"syscall vector {vector:#x} ({vector}): free, can be reserved")
    return 0
