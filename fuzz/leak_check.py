#!/usr/bin/env python3
"""Is there a slow per-program leak in the guest fuzzer's worker?

Runs fuzz_guest's programs in this process (one ``Worker``, the reference
guest included, as a campaign's worker does) and samples, every ``--every``
programs after a warm-up: the process RSS, and with ``--tracemalloc`` the
Python heap tracemalloc sees.  At the end: least-squares slopes in bytes per
program for both, and the tracemalloc lines that grew most between the first
sample and the last.  RSS covers Unicorn's and the cores' C allocations;
tracemalloc names Python ones (its own tables grow the RSS: read the RSS
slope from a run without it).

    python fuzz/leak_check.py --seconds 900 --seed 5 --tracemalloc
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_guest as fg  # noqa: E402


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=900)
    ap.add_argument("--programs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1000, help="programs before the first sample")
    ap.add_argument("--every", type=int, default=500, help="programs between samples")
    ap.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap (about 2x slower)")
    ap.add_argument("--json", default=None, help="write the samples and the fit here")
    args = ap.parse_args(argv)

    w = fg.Worker(reference=True)
    rng = random.Random(args.seed)
    samples: list[tuple[int, int, int]] = []  # (programs, rss, traced)
    first_snap = None
    end = time.monotonic() + args.seconds
    n = 0
    try:
        while time.monotonic() < end and (args.programs is None or n < args.programs):
            res = w.run_program(fg.generate(rng, "both", 0.2))
            if res.get("reason") == "crash":
                print("crash:", res, file=sys.stderr)
            n += 1
            if n == args.warmup and args.tracemalloc:
                tracemalloc.start(12)
            # the first sample one interval after tracemalloc starts: its own start is no growth
            if n > args.warmup and (n - args.warmup) % args.every == 0:
                gc.collect()
                traced = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
                samples.append((n, fg._rss(), traced))
                if args.tracemalloc and first_snap is None:
                    first_snap = tracemalloc.take_snapshot()
                print(f"{n:7d} programs  rss {samples[-1][1] / 2**20:7.2f} MiB  traced {traced / 2**20:7.2f} MiB",
                      flush=True)
    finally:
        gc.collect()  # cyclic garbage (a launcher waiting for the collector) is no leak
        last_snap = tracemalloc.take_snapshot() if args.tracemalloc and first_snap is not None else None
        w.close()
    if len(samples) < 3:
        print("too few samples", file=sys.stderr)
        return 1
    xs = [float(s[0]) for s in samples]
    fit = {"programs": n, "samples": len(samples), "ref_runs": w.ref_runs,
           "rss_bytes_per_program": slope(xs, [float(s[1]) for s in samples]),
           "traced_bytes_per_program": slope(xs, [float(s[2]) for s in samples]) if args.tracemalloc else None,
           "rss_first_last_mib": [samples[0][1] / 2**20, samples[-1][1] / 2**20]}
    print(json.dumps(fit, indent=1))
    if first_snap is not None and last_snap is not None:
        print("tracemalloc: the lines that grew most since the first sample")
        for stat in last_snap.compare_to(first_snap, "lineno")[:12]:
            print(" ", stat)
    if args.json:
        Path(args.json).write_text(json.dumps({**fit, "series": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
