"""Guest system calls per second: the compiled direct path against the Python path.

The same guest (guest.S with a long system-call loop) runs twice:

* native: the syscall gate is a DPL-3 trap gate, so copy_traps puts it in the
  host IDT and lguest.unicorn._uchook delivers each ``int $0x80`` inside Unicorn's
  UC_HOOK_INTR callback (compiled core, no Python);
* python: ``UnicornLauncher(native_direct=False)``: the hook stops the
  emulator at each ``int $0x80`` and the backend delivers it from Python
  through the same core call (``cpu.set_guest_interrupt``), then re-enters
  the guest through the Switcher.

Usage: python examples/guest/syscall_bench.py [--native N] [--python N] [--paged]
Needs binutils (as, ld) and Unicorn 2.1.4.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import lguest
from lguest.unicorn import UnicornLauncher

HERE = Path(__file__).resolve().parent


def build(out: Path, n: int, page_offset: int) -> Path:
    obj, elf = out / f"bench{n}.o", out / f"bench{n}.elf"
    subprocess.run(["as", "--32", f"--defsym=NSYSCALLS={n}", f"--defsym=PAGE_OFFSET={page_offset:#x}",
                    "-o", str(obj), str(HERE / "guest.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", f"--defsym=PAGE_OFFSET={page_offset:#x}", "-T", str(HERE / "guest.ld"),
                    "-o", str(elf), str(obj)], check=True, capture_output=True)
    return elf


def run(elf: Path, native: bool, page_offset: int, clock: str) -> tuple[int, float]:
    with UnicornLauncher(memory=4 << 20, page_offset=page_offset, clock=clock, native_direct=native,
                         used_vectors=lguest.UsedVectors(used=range(32))) as lg:
        lg.load_elf(elf)
        t0 = time.perf_counter()
        result = lg.run(timeout=600)
        elapsed = time.perf_counter() - t0
        if result.message != "CRASH: bye":
            raise SystemExit(f"guest failed: {result}")
        return lg.stats["direct_0x80"], elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--native", type=int, default=2_000_000, help="system calls for the native run")
    ap.add_argument("--python", type=int, default=100_000, help="system calls for the Python-path run")
    ap.add_argument("--paged", action="store_true", help="PAGE_OFFSET 0xC0000000 guest (paging on)")
    ap.add_argument("--clock", choices=("virtual", "wall"), default="virtual")
    args = ap.parse_args()
    po = 0xC0000000 if args.paged else 0
    with tempfile.TemporaryDirectory() as d:
        for label, native, n in (("native (compiled hook)", True, args.native), ("python path", False, args.python)):
            elf = build(Path(d), n, po)
            calls, elapsed = run(elf, native, po, args.clock)
            print(f"{label:24s} {calls:>9} system calls in {elapsed:7.3f} s = {calls / elapsed / 1e6:6.3f} M/s "
                  f"({elapsed / calls * 1e6:6.2f} us each, whole run incl. boot)")


if __name__ == "__main__":
    main()
