"""What Unicorn 2.1.4's store slow path costs ``lguest exec`` -- an experiment,
not a feature (docs/PERFORMANCE.md, "lguest exec: where the time goes"):

    python benchmarks/notdirty_experiment.py [--busybox PATH] [--rounds N]

Unicorn 2.1.4 marks every writable page TLB_NOTDIRTY, so every guest store
takes the slow path.  This script runs busybox ``dd bs=1 count=50000``
under ``run_program`` twice per round, interleaved: as shipped, and with
TLB_NOTDIRTY cleared, after each return from the emulator, on the CPU's
TLB entries of pages outside busybox's text and the kernel's text (the
pages whose stores must invalidate translated code in this run).  That is
**unsafe in general** -- self-modifying code elsewhere would run stale
translations -- and is done only here, to measure what a libunicorn that
tracks code pages (upstream QEMU's behaviour), or a hook that re-protects
pages as they gain translations (``tlb_protect_code_x86_64`` and
``tlb_reset_dirty_x86_64`` are exported by libunicorn 2.1.4), would save.

The TLB's place is checked, not guessed: the three {mask, table} pairs just
before ``env`` must have masks of the form (2^k - 1) << 6 and tables whose
entries point into guest memory; otherwise the script refuses.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import busybox_path

REPO = Path(__file__).resolve().parent.parent
TLB_NOTDIRTY = 1 << 10      # TARGET_PAGE_BITS_MIN - 2 (QEMU 5.0 cputlb)
ENTRY = 64                  # sizeof(CPUTLBEntry): addr_read, addr_write, addr_code, paddr, addend
NO_ENTRY = 0xFFFF_FFFF_FFFF_FFFF


def tlb_tables(uc: Any) -> list[tuple[int, int]]:
    """The CPU's three {mask, table} pairs (CPUTLBDescFast f[NB_MMU_MODES]), checked."""
    from lguest.unicorn.engine import _UC_CPU, _X86CPU_ENV, engine_handle

    cpu = struct.unpack("<Q", ctypes.string_at(engine_handle(uc) + _UC_CPU, 8))[0]
    words = struct.unpack("<6Q", ctypes.string_at(cpu + _X86CPU_ENV - 64, 48))
    pairs = [(words[2 * i], words[2 * i + 1]) for i in range(3)]
    for mask, table in pairs:
        n = (mask >> 6) + 1
        if mask & 0x3F or n & (n - 1) or not 64 <= n <= 1 << 20 or table < 1 << 16:
            raise SystemExit(f"unexpected TLB layout (mask {mask:#x}, table {table:#x}): refusing")
    return pairs


def clear_notdirty(uc: Any, mem_base: int, mem_size: int, code_ranges: list[tuple[int, int]]) -> int:
    """Clear TLB_NOTDIRTY on entries for guest RAM outside code_ranges (virtual); returns how many."""
    cleared = seen = outside = 0
    for mask, table in tlb_tables(uc):
        n = (mask >> 6) + 1
        raw = ctypes.string_at(table, n * ENTRY)
        for i in range(n):
            _, w, _, _, addend = struct.unpack_from("<5Q", raw, i * ENTRY)
            if w == NO_ENTRY or not w & TLB_NOTDIRTY or w & 0xBFF:   # only NOTDIRTY among the flags
                continue
            page = w & ~0xFFF
            host = (page + addend) & 0xFFFF_FFFF_FFFF_FFFF
            seen += 1
            if not mem_base <= host < mem_base + mem_size:   # the Switcher's pages, say
                outside += 1
                continue
            if any(lo <= page < hi for lo, hi in code_ranges):
                continue
            ctypes.memmove(table + i * ENTRY + 8, struct.pack("<Q", w & ~TLB_NOTDIRTY), 8)
            cleared += 1
    if seen and outside == seen:
        raise SystemExit("no writable TLB entry points into guest memory: unexpected layout, refusing")
    return cleared


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    busybox_path.add_option(ap)
    ap.add_argument("--rounds", type=int, default=5)
    opts = ap.parse_args()
    busybox = busybox_path.checked(opts.busybox)
    if busybox is None:
        return 2
    from lguest.guestos.runner import run_program
    from lguest.unicorn.backend import UnicornBackend

    # busybox's text and the kernel's (docs: the pages this run executes)
    code = [(0x0804_8000, 0x081C_D000), (0xC010_0000, 0xC011_0000)]
    state = {"on": False, "cleared": 0}
    orig = UnicornBackend.run_guest

    def run_guest(self: Any, cpu: Any, idt: Any, changed: int) -> None:
        orig(self, cpu, idt, changed)
        if state["on"]:
            mem = self.guest.memory
            state["cleared"] += clear_notdirty(self.uc, mem.address, mem.size, code)

    UnicornBackend.run_guest = run_guest  # type: ignore[method-assign]
    times: dict[str, list[float]] = {"as shipped": [], "NOTDIRTY cleared": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        data = (hashlib.sha256(b"lguest").digest() * 32 * 50)[:50_000]
        (root / "in.bin").write_bytes(data)
        for _ in range(opts.rounds):
            for name in times:
                state["on"] = name != "as shipped"
                export = root.parent / (root.name + "-export")
                shutil.rmtree(export, ignore_errors=True)
                t0 = time.perf_counter()
                r = run_program("/bin/busybox", ["dd", "if=/in.bin", "of=/out.bin", "bs=1", "count=50000"],
                                root=root, export=export)
                times[name].append(time.perf_counter() - t0)
                if r.status != 0 or (export / "out.bin").read_bytes() != data:
                    raise SystemExit(f"{name}: the run went wrong: {r.status} {r.message}")
                shutil.rmtree(export, ignore_errors=True)
    print(f"run_program dd bs=1 count=50000, {opts.rounds} rounds interleaved (load {os.getloadavg()[0]:.1f}):")
    for name, v in times.items():
        print(f"  {name:<17} min {min(v):.3f} s  median {statistics.median(v):.3f} s")
    print(f"  ({state['cleared']} TLB entries cleared in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
