"""What the debugging hooks cost when they are off (and the timeline when on).

The native hook carries two debugging fields (lguest/_uchook.h): the
debugger's "skip" test in every block (``skip_armed``) and the timeline's
NULL test in every direct trap (``trace``).  This measures, on the example
guest, the native system-call path (direct traps) and a tight loop (blocks),
with the timeline off and on.  Run it once against this tree and once with
``PYTHONPATH`` pointing at a build without the fields to compare:

    python benchmarks/debug_overhead.py [--syscalls N] [--repeat R]

Needs binutils (as, ld) and Unicorn 2.1.4.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import lguest
from lguest.unicorn import UnicornLauncher

GUEST = Path(__file__).resolve().parent.parent / "examples" / "guest"


def build(out: Path, **defsyms: int) -> Path:
    name = "_".join(f"{k}{v}" for k, v in defsyms.items()) or "plain"
    obj, elf = out / f"{name}.o", out / f"{name}.elf"
    args = [f"--defsym={k}={v}" for k, v in dict(defsyms, PAGE_OFFSET=0).items()]
    subprocess.run(["as", "--32", *args, "-o", str(obj), str(GUEST / "guest.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "--defsym=PAGE_OFFSET=0", "-T", str(GUEST / "guest.ld"), "-o", str(elf),
                    str(obj)], check=True, capture_output=True)
    return elf


def syscalls_per_s(elf: Path, timeline: bool) -> float:
    with UnicornLauncher(memory=4 << 20, used_vectors=lguest.UsedVectors(used=range(32))) as lg:
        lg.load_elf(elf)
        if timeline and hasattr(lg, "start_timeline"):
            lg.start_timeline()
        t0 = time.perf_counter()
        result = lg.run(timeout=600)
        elapsed = time.perf_counter() - t0
        assert result.message == "CRASH: bye", result
        return lg.stats["direct_0x80"] / elapsed


def blocks_per_s(elf: Path) -> float:
    """The guest spinning for irq 1 (one block per turn) for 1 s."""
    with UnicornLauncher(memory=4 << 20, used_vectors=lguest.UsedVectors(used=range(32))) as lg:
        lg.load_elf(elf)
        t0 = time.perf_counter()
        lg.run(timeout=1.0)
        return lg.stats["blocks"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--syscalls", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sys_elf = build(Path(d), NSYSCALLS=args.syscalls)
        spin_elf = build(Path(d), WAIT_IRQ1=1)
        rows: dict[str, list[float]] = {"syscalls/s, timeline off": [], "syscalls/s, timeline on": [],
                                        "blocks/s (spin), timeline off": []}
        for _ in range(args.repeat):
            rows["syscalls/s, timeline off"].append(syscalls_per_s(sys_elf, False))
            rows["syscalls/s, timeline on"].append(syscalls_per_s(sys_elf, True))
            rows["blocks/s (spin), timeline off"].append(blocks_per_s(spin_elf))
        for name, vals in rows.items():
            print(f"{name:32s} median {statistics.median(vals) / 1e6:7.3f} M  "
                  f"(runs: {', '.join(f'{v / 1e6:.3f}' for v in vals)})")


if __name__ == "__main__":
    main()
