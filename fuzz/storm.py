"""Hypercall storms: does a guest that hammers one hypercall grow the host?

For every hypercall number of this era (each ``LHCALL_*`` in
lguest/constants.py), plus an unknown number, a NOTIFY storm that prints a
60 KB string each time, an ever-earlier SET_CLOCKEVENT storm and an async-ring
storm, this runs a real guest on Unicorn that makes that hypercall in a tight
loop with extreme and random arguments, for ``--seconds`` each.  A guest the
host kills (most random arguments are fatal) is replaced by a fresh
UnicornLauncher at once, so launcher set-up and teardown are stormed too.

The process RSS (``/proc/self/statm``) is read after a warm-up and at the
end; a storm passes if RSS grew by at most ``--limit-mib`` (32) after warm-up.

    python fuzz/storm.py                       # 60 s per storm, ~17 min
    python fuzz/storm.py --seconds 2 --only NOTIFY_CONSOLE,SET_CLOCKEVENT_EARLIER

The guest (assembled at run time with ``as --32``; needs binutils):

* boots with LGUEST_INIT (lguest_data at 0x2000, an empty async ring);
* walks a 1 MiB table of argument triples at 0x100000 (filled by the host
  with extremes such as 0, 0xffffffff, the last byte of RAM, 0xffc00000, and
  random values), starting at a random row for each guest;
* per row: ``mov $N,%eax`` (or a random number for BAD), ebx/ecx/edx from the
  row, ``vmcall``; then the next row, wrapping.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import lguest
from lguest import constants as C
from lguest.host.stats import OTHER

MEMORY = 4 << 20
CODE = 0x1000
LD = 0x2000
TABLE = 0x100000  # 1 MiB of 16-byte rows: ebx, ecx, edx, eax-for-BAD
TABLE_ROWS = 1 << 16
CONSOLE_TEXT = 0x200000  # NOTIFY_CONSOLE's string
CONSOLE_LEN = 60_000
PAGE = 4096

#: ``name -> hypercall number`` for every LHCALL_* (the ring size is not a call).
HYPERCALLS: dict[str, int] = {
    name[len("LHCALL_"):]: value for name, value in vars(C).items()
    if name.startswith("LHCALL_") and name != "LHCALL_RING_SIZE"
}


@dataclass(frozen=True)
class Storm:
    name: str
    number: int  # the call made (OTHER: random unknown numbers)
    body: str  # assembly run once per row, with %edi at the row
    prologue: str = ""  # assembly run once after LGUEST_INIT


def _vmcall(number: int) -> str:
    return (f"mov $0x{number:x}, %eax\n"
            "mov 0(%edi), %ebx\nmov 4(%edi), %ecx\nmov 8(%edi), %edx\nvmcall\n")


#: SET_CLOCKEVENT(1) and wait for it: irq 0 stays pending from then on.
_WAKER = (f"mov $0x{C.LHCALL_SET_CLOCKEVENT:x}, %eax\nmov $1, %ebx\nvmcall\n"
          f"mov $0x{C.LHCALL_HALT:x}, %eax\nvmcall\n")


def storms() -> list[Storm]:
    out = []
    for name, number in sorted(HYPERCALLS.items(), key=lambda kv: kv[1]):
        prologue = ""
        body = _vmcall(number)
        if number in (C.LHCALL_HALT, C.LHCALL_FLUSH_ASYNC):
            # A halted guest with no timer would sleep until the deadline:
            # one timer irq (the guest has no handler, so it stays pending)
            # makes every later HALT return at once.
            prologue = _WAKER
        if number == C.LHCALL_FLUSH_ASYNC:
            # Queue the row as a ring call (number 0..15: valid, fatal and
            # unknown ones, HALT included) in slot (row % 64), then flush.
            ring = (
                "mov %edi, %esi\nand $0x3f0, %esi\n"
                "mov 12(%edi), %eax\nand $0xf, %eax\n"
                f"mov %eax, {LD + C.LD_HCALLS}(%esi)\n"
                f"mov 0(%edi), %eax\nmov %eax, {LD + C.LD_HCALLS + 4}(%esi)\n"
                f"mov 4(%edi), %eax\nmov %eax, {LD + C.LD_HCALLS + 8}(%esi)\n"
                f"mov 8(%edi), %eax\nmov %eax, {LD + C.LD_HCALLS + 12}(%esi)\n"
                f"shr $4, %esi\nmovb $0, {LD + C.LD_HCALL_STATUS}(%esi)\n"
            )
            body = ring + body
        out.append(Storm(name, number, body, prologue))
    out.append(Storm("BAD", OTHER, "mov 12(%edi), %eax\nmov 0(%edi), %ebx\nmov 4(%edi), %ecx\n"
                                   "mov 8(%edi), %edx\nvmcall\n"))
    out.append(Storm("NOTIFY_CONSOLE", C.LHCALL_NOTIFY,
                     f"mov $0x{C.LHCALL_NOTIFY:x}, %eax\nmov ${CONSOLE_TEXT:#x}, %ebx\nvmcall\n"))
    # Ever-earlier deadlines: the row's ebx is ignored, %ebp counts down from
    # 0xffffffff by 1000 ns a call, far faster than virtual time moves, so
    # every re-arm replaces a later expiry with an earlier one.
    out.append(Storm("SET_CLOCKEVENT_EARLIER", C.LHCALL_SET_CLOCKEVENT,
                     f"sub $1000, %ebp\njnz 1f\nmov $0xffffffff, %ebp\n1:\n"
                     f"mov $0x{C.LHCALL_SET_CLOCKEVENT:x}, %eax\nmov %ebp, %ebx\nvmcall\n",
                     prologue="mov $0xffffffff, %ebp\n"))
    return out


def source(storm: Storm) -> str:
    return f"""\
    .code32
    .globl _start
_start:
    mov ${C.LHCALL_LGUEST_INIT}, %eax
    mov ${LD:#x}, %ebx
    vmcall
{storm.prologue}
loop:
{storm.body}
    add $16, %edi
    and ${TABLE_ROWS * 16 - 1:#x}, %edi
    or ${TABLE:#x}, %edi
    jmp loop
"""


def assemble(storm: Storm, workdir: Path) -> bytes:
    """The guest as a flat image for guest-physical CODE."""
    src = workdir / f"{storm.name}.S"
    obj, elf, raw = (workdir / f"{storm.name}{ext}" for ext in (".o", ".elf", ".bin"))
    src.write_text(source(storm))
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", f"-Ttext={CODE:#x}", "-e", "_start", "-o", str(elf), str(obj)],
                   check=True, capture_output=True)
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(raw)], check=True)
    image = raw.read_bytes()
    if CODE + len(image) > LD:
        raise RuntimeError(f"{storm.name}: guest code overlaps lguest_data")
    return image


def arg_table(rng: random.Random, memory: int = MEMORY) -> bytes:
    """TABLE_ROWS rows of (ebx, ecx, edx, eax-for-BAD): a third extremes, a
    third random u32, a third addresses in RAM (most near the interesting ends)."""
    extremes = [0, 1, 2, 3, 4, 7, 8, 14, 15, 16, 31, 32, 33, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x400,
                0xFFF, 0x1000, LD, LD + 1135, memory - 1, memory - 16, memory - 1136, memory, memory + PAGE,
                0x7FFFFFFF, 0x80000000, 0xBFFFFFFF, 0xC0000000, 0xFFC00000, 0xFFFFF000, 0xFFFFFFF0,
                0xFFFFFFFE, 0xFFFFFFFF]
    bad_numbers = [11, 12, 13, 18, 19, 31, 63, 64, 99, 0x100, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    words = np.empty((TABLE_ROWS, 4), dtype=np.uint32)
    for row in range(TABLE_ROWS):
        for col in range(3):
            kind = rng.randrange(3)
            if kind == 0:
                v = rng.choice(extremes)
            elif kind == 1:
                v = rng.getrandbits(32)
            else:
                v = rng.randrange(memory)
            words[row, col] = v & 0xFFFFFFFF
        words[row, 3] = rng.choice(bad_numbers) if rng.randrange(2) else rng.getrandbits(32) | 0x40
    # the BAD storm's eax must never be a valid number (0x40 set: all are > 17)
    assert not np.isin(words[:, 3], list(HYPERCALLS.values())).any()
    return words.tobytes()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


@dataclass
class Row:
    name: str
    calls: int
    guests: int
    reasons: dict[str, int]
    rss_warm: float
    rss_end: float
    seconds: float

    @property
    def growth(self) -> float:
        return self.rss_end - self.rss_warm


def run_storm(storm: Storm, image: bytes, table: bytes, *, seconds: float, warmup: float,
              clock: str = "virtual", core: str | None = None, rng: random.Random | None = None,
              console_sink: bool = False) -> Row:
    """Run ``storm`` for ``seconds``; RSS is read after ``warmup`` seconds and at the end."""
    from lguest.unicorn import UnicornLauncher

    rng = rng or random.Random(0)
    calls = guests = 0
    reasons: dict[str, int] = {}
    t0 = time.monotonic()
    warm_at, end_at = t0 + warmup, t0 + seconds
    rss_warm: float | None = None
    sink = (lambda chunk: None) if console_sink else None
    key = "hypercall_other" if storm.number == OTHER else f"hypercall_{storm.number}"
    while True:
        now = time.monotonic()
        if rss_warm is None and now >= warm_at:
            gc.collect()
            rss_warm = rss_mib()
        if now >= end_at:
            break
        with UnicornLauncher(MEMORY, clock=clock, console=sink, core=core,
                             used_vectors=lguest.UsedVectors(used=range(32))) as lg:
            guests += 1
            mem = lg.memory
            mem.write(LD + C.LD_HCALL_STATUS, b"\xff" * C.LHCALL_RING_SIZE)
            mem.write_u32(LD + C.LD_SYSCALL_VEC, 0x80)
            mem.write(TABLE, table)
            mem.write(CONSOLE_TEXT, bytes(rng.randrange(32, 127) for _ in range(64)) * (CONSOLE_LEN // 64)
                      + b"\0")
            lg.load_flat(image, CODE, CODE)
            lg.cpu.regs.edi = TABLE + 16 * rng.randrange(TABLE_ROWS)
            # Stop at the warm-up mark too, so the first reading is taken on time.
            stop = warm_at if rss_warm is None else end_at
            result = lg.run(timeout=max(0.01, stop - time.monotonic()))
            reasons[result.reason] = reasons.get(result.reason, 0) + 1
        calls += int(lg.stats.get(key, 0))
    gc.collect()
    assert rss_warm is not None
    return Row(storm.name, calls, guests, reasons, rss_warm, rss_mib(), time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="per storm (default 60)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the first RSS reading "
                   "(default: 10%% of --seconds, at least 0.5)")
    p.add_argument("--only", default="", help="comma-separated storm names (default: all)")
    p.add_argument("--clock", choices=["virtual", "wall"], default="virtual")
    p.add_argument("--core", choices=["python", "cython"], default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit-mib", type=float, default=32.0, help="pass criterion: RSS growth after warm-up")
    args = p.parse_args(argv)
    if not (shutil.which("as") and shutil.which("ld") and shutil.which("objcopy")):
        print("storm: binutils (as, ld, objcopy) needed", file=sys.stderr)
        return 2
    warmup = args.warmup if args.warmup is not None else max(0.5, args.seconds / 10)
    chosen = [s for s in storms() if not args.only or s.name in args.only.split(",")]
    if not chosen:
        print(f"storm: no storm named {args.only!r}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    table = arg_table(rng)
    print(f"lguest {lguest.CORE if args.core is None else args.core} core, {args.clock} clock, "
          f"{args.seconds:g} s per storm, warm-up {warmup:g} s, start RSS {rss_mib():.1f} MiB", flush=True)
    print(f"{'hypercall':<24} {'calls':>12} {'guests':>8} {'RSS warm':>9} {'RSS end':>9} {'growth MiB':>11}  ends",
          flush=True)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for storm in chosen:
            image = assemble(storm, Path(tmp))
            row = run_storm(storm, image, table, seconds=args.seconds, warmup=warmup, clock=args.clock,
                            core=args.core, rng=rng)
            ok = row.growth <= args.limit_mib
            if not ok:
                failed.append(row.name)
            ends = ", ".join(f"{k} {v}" for k, v in sorted(row.reasons.items()))
            print(f"{row.name:<24} {row.calls:>12} {row.guests:>8} {row.rss_warm:>9.1f} {row.rss_end:>9.1f} "
                  f"{row.growth:>+11.2f}  {ends}{'' if ok else '  FAIL'}", flush=True)
    print("FAIL: " + ", ".join(failed) if failed else f"all {len(chosen)} storms within {args.limit_mib:g} MiB",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
