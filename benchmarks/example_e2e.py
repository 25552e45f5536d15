"""The example guest end to end, for A/B comparisons between two trees.

Builds ``examples/guest/guest.S`` twice (flat: the default 1,000 system
calls; and with 300,000), then, ``--reps`` times: a fresh
``UnicornLauncher(memory=4 MiB)``, load, run, close -- the wall time of the
short guest (ms) and the system-call rate of the long one (M/s, direct
``int $0x80`` traps through the native hook).  Prints one JSON object.
Run it with each tree's interpreter, alternately, on the same ELF files:

    .venv/bin/python benchmarks/example_e2e.py --out /tmp/ab --reps 10

Needs binutils (as, ld) and Unicorn 2.1.4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

GUEST = Path(__file__).resolve().parent.parent / "examples" / "guest"


def build(out: Path, name: str, *defsyms: str) -> Path:
    """The flat example guest, built once into ``out`` (kept if present)."""
    elf = out / f"{name}.elf"
    if not elf.exists():
        obj = out / f"{name}.o"
        args = [f"--defsym={d}" for d in ("PAGE_OFFSET=0", *defsyms)]
        subprocess.run(["as", "--32", *args, "-o", str(obj), str(GUEST / "guest.S")], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "--defsym=PAGE_OFFSET=0", "-T", str(GUEST / "guest.ld"),
                        "-o", str(elf), str(obj)], check=True, capture_output=True)
    return elf


def once(path: Path) -> tuple[float, Any, int]:
    from lguest.unicorn import UnicornLauncher

    t0 = time.perf_counter()
    with UnicornLauncher(memory=4 << 20) as lg:
        lg.load_elf(str(path))
        res = lg.run(timeout=120)
        n = lg.stats.get("direct_0x80", 0)
    return time.perf_counter() - t0, res, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where the ELF files go (shared by both trees)")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    short, long = build(a.out, "guest"), build(a.out, "guest_long", "NSYSCALLS=300000")
    once(short)  # imports, the context layout, the kernel's first translations
    e2e: list[float] = []
    rate: list[float] = []
    for _ in range(a.reps):
        dt, res, _ = once(short)
        assert res.reason == "dead", res
        e2e.append(dt * 1e3)
        dt, res, n = once(long)
        rate.append(n / dt / 1e6)
    print(json.dumps({"e2e_ms": e2e, "syscalls_M_per_s": rate}))


if __name__ == "__main__":
    main()
