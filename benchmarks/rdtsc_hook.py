"""What recording the guest's TSC costs, and that a plain run pays nothing.

``rdtsc``/``rdtscp`` are hooked (``NativeHooks.set_tsc_handler``) only while
a run is recorded or replayed; a plain run installs no hook, and Unicorn
looks its rdtsc hooks up inside the rdtsc helper, not in translated code,
so even an installed hook costs code without rdtsc nothing.  This measures,
on the example guest (median of ``--repeat`` runs):

* blocks/s of a tight loop without rdtsc: plain, and with the hook installed;
* rdtsc/s of a loop of rdtsc and a system call (``RDTSC_GAP=1``): plain
  (Unicorn's own), with the hook and a trivial handler, and recorded.

    python benchmarks/rdtsc_hook.py [--reads N] [--repeat R]

Needs binutils (as, ld) and Unicorn 2.1.4.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from debug_overhead import blocks_per_s, build  # type: ignore[import-not-found]

import lguest
from lguest.unicorn import UnicornLauncher


def rdtsc_per_s(elf: Path, reads: int, mode: str) -> float:
    with UnicornLauncher(memory=4 << 20, used_vectors=lguest.UsedVectors(used=range(32)),
                         record=mode == "recorded") as lg:
        lg.load_elf(elf)
        if mode == "hooked":
            lg.backend.hooks.set_tsc_handler(lambda rdtscp, blocks, eip, host: host)
        t0 = time.perf_counter()
        result = lg.run(timeout=600)
        elapsed = time.perf_counter() - t0
        assert result.message == "CRASH: bye", result
        return reads / elapsed


def hooked_blocks_per_s(elf: Path) -> float:
    with UnicornLauncher(memory=4 << 20, used_vectors=lguest.UsedVectors(used=range(32))) as lg:
        lg.load_elf(elf)
        lg.backend.hooks.set_tsc_handler(lambda *a: 0)
        t0 = time.perf_counter()
        lg.run(timeout=1.0)
        return lg.stats["blocks"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        spin = build(Path(d), WAIT_IRQ1=1)
        tsc = build(Path(d), RDTSC=a.reads, RDTSC_GAP=1, NSYSCALLS=1)

        def med(f: Any, *args: Any) -> float:
            return statistics.median(f(*args) for _ in range(a.repeat))
        print(f"tight loop, no rdtsc:      plain {med(blocks_per_s, spin) / 1e6:7.2f} M blocks/s, "
              f"hook installed {med(hooked_blocks_per_s, spin) / 1e6:7.2f} M blocks/s")
        for mode in ("plain", "hooked", "recorded"):
            print(f"rdtsc + system call loop:  {mode:<8} {med(rdtsc_per_s, tsc, a.reads, mode) / 1e3:8.1f} k reads/s")


if __name__ == "__main__":
    main()
