"""Where an ``lguest exec`` run's guest time goes, in counts (docs/PERFORMANCE.md,
"lguest exec: where the time goes"):

    python benchmarks/exec_profile.py [--busybox PATH] [--count N]

* Unicorn 2.1.4 itself: ns per guest store and per guest load in a bare loop
  (no lguest) -- every store takes the emulator's slow path.
* busybox ``dd bs=1`` under lguest exec, run twice (``count`` N and 2N bytes)
  with a Python block hook and a Python store hook added: the difference is
  the steady state per system call (guest blocks, guest stores, kernel vs
  program, and the instruction that ends each block), the rest the fixed
  cost of booting, loading the program and exporting the tree.

The Python hooks make these runs slow (a few seconds); the counts, not the
times, are the result.  Timings are exec_vs_qiling.py's.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import busybox_path

REPO = Path(__file__).resolve().parent.parent
KERNEL_VA = 0xC000_0000


def bare_store_load_ns(n: int = 1_000_000) -> dict[str, float]:
    """ns per iteration of `op; dec %ecx; jnz` on a bare engine, op a store or a load."""
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_REG_EBX, UC_X86_REG_ECX

    loops = {"store": "8903", "load": "8b03", "none": "90"}  # mov %eax,(%ebx) / mov (%ebx),%eax / nop
    out = {}
    for name, op in loops.items():
        code = bytes.fromhex(op + "49" + "75" + format(256 - (len(op) // 2 + 3), "02x"))
        best = float("inf")
        for _ in range(3):
            uc = Uc(UC_ARCH_X86, UC_MODE_32)
            uc.mem_map(0x1000, 0x10000)
            uc.mem_write(0x1000, code)
            uc.reg_write(UC_X86_REG_ECX, n)
            uc.reg_write(UC_X86_REG_EBX, 0x8000)
            t0 = time.perf_counter()
            uc.emu_start(0x1000, 0x1000 + len(code))
            best = min(best, (time.perf_counter() - t0) / n * 1e9)
        out[name] = best
    return out


def counted_run(root: Path, count: int) -> dict[str, Any]:
    """One dd run with a block hook and a store hook: blocks by (address, size), stores by kernel/program."""
    import unicorn

    from lguest.guestos.runner import run_program
    from lguest.unicorn.launcher import UnicornLauncher

    blocks: collections.Counter[tuple[int, int]] = collections.Counter()
    stores = collections.Counter()
    orig = UnicornLauncher.run

    def run(self: Any, timeout: float | None = None) -> Any:
        last = [0]

        def on_block(uc: Any, addr: int, size: int, ud: Any) -> None:
            blocks[(addr, size)] += 1
            last[0] = addr

        def on_store(uc: Any, access: int, addr: int, size: int, value: int, ud: Any) -> None:
            # addr is physical; whose store it is, the block's that runs
            stores["kernel" if last[0] >= KERNEL_VA else "program"] += 1

        self.uc.hook_add(unicorn.UC_HOOK_BLOCK, on_block)
        self.uc.hook_add(unicorn.UC_HOOK_MEM_WRITE, on_store)
        return orig(self, timeout)

    UnicornLauncher.run = run  # type: ignore[method-assign]
    try:
        r = run_program("/bin/busybox", ["dd", "if=/in.bin", "of=/out.bin", "bs=1", f"count={count}"], root=root)
    finally:
        UnicornLauncher.run = orig  # type: ignore[method-assign]
    assert r.status == 0, (r.status, r.message, r.stderr)
    return {"blocks": blocks, "stores": stores, "syscalls": sum(r.syscalls.values())}


def block_enders(blocks: dict[tuple[int, int], float], binaries: list[Path]) -> collections.Counter[str]:
    """The instruction that ends each block (objdump of the program and the kernel), weighted by count."""
    insns: dict[int, str] = {}
    for b in binaries:
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(b)], capture_output=True, text=True).stdout
        for line in dis.splitlines():
            m = re.match(r"\s*([0-9a-f]+):\s+(\S+)", line)
            if m:
                insns[int(m.group(1), 16)] = m.group(2)
    keys = sorted(insns)
    out: collections.Counter[str] = collections.Counter()
    for (addr, size), n in blocks.items():
        i = bisect.bisect_left(keys, addr + size) - 1
        op = insns[keys[i]] if i >= 0 else "?"
        kind = "ret" if op.startswith("ret") else "call" if op.startswith("call") else \
            "jmp" if op.startswith("jmp") else "int/iret" if op.startswith(("int", "iret")) else \
            "jcc" if op.startswith("j") else "other"
        out[("kernel " if addr >= KERNEL_VA else "program ") + kind] += n
    return out


def guest_store_ns(n: int = 1_000_000) -> dict[str, float]:
    """ns per turn of the same store loop as a guest under lguest (ring 1,
    the native hooks), with the store fast path on and off
    (NativeHooks.store_fast_path; LGUEST_STORE_FAST_PATH for new backends)."""
    import struct

    from lguest.unicorn import UnicornLauncher

    # mov $0x8000,%ebx; mov $n,%ecx; 1: mov %eax,(%ebx); dec %ecx; jnz 1b; hlt (#GP: the end)
    code = b"\xbb" + struct.pack("<I", 0x8000) + b"\xb9" + struct.pack("<I", n) + bytes.fromhex("89034975fbf4")
    out: dict[str, float] = {}
    for name, flag in (("store, fast path off", "0"), ("store, fast path on", "1")):
        os.environ["LGUEST_STORE_FAST_PATH"] = flag
        best = float("inf")
        for _ in range(3):
            with UnicornLauncher(memory=1 << 20) as lg:
                lg.load_flat(code, 0x1000, 0x1000)
                t0 = time.perf_counter()
                lg.run(timeout=60)
                best = min(best, (time.perf_counter() - t0) / n * 1e9)
        out[name] = best
    os.environ.pop("LGUEST_STORE_FAST_PATH", None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    busybox_path.add_option(ap)
    ap.add_argument("--count", type=int, default=2000)
    opts = ap.parse_args()
    busybox = busybox_path.checked(opts.busybox)
    if busybox is None:
        return 2
    from lguest.guestos import kernel_path

    ns = bare_store_load_ns()
    print(f"bare Unicorn, ns per loop turn: store {ns['store']:.1f}, load {ns['load']:.1f}, nop {ns['none']:.1f} "
          f"(a store costs {ns['store'] - ns['none']:.1f} ns, a load {ns['load'] - ns['none']:.1f} ns)")
    g = guest_store_ns()
    print("the store loop as a guest under lguest, ns per turn: "
          + ", ".join(f"{k} {v:.1f}" for k, v in g.items()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        (root / "in.bin").write_bytes((hashlib.sha256(b"lguest").digest() * 32 * 50)[:50_000])
        n = opts.count
        a, b = counted_run(root, n), counted_run(root, 2 * n)
    per = 2 * n  # the second run makes 2n more system calls (a read and a write per byte)
    steady = {k: (b["blocks"][k] - a["blocks"].get(k, 0)) / per for k in b["blocks"]}
    fixed_blocks = sum(a["blocks"].values()) - sum(steady.values()) * (a["syscalls"])
    kern = sum(v for (addr, _), v in steady.items() if addr >= KERNEL_VA)
    print(f"dd bs=1, per system call (steady state, count {n} vs {2 * n}):")
    total = sum(steady.values())
    print(f"  guest blocks  {total:6.1f}  (kernel {kern:.1f}, program {total - kern:.1f})")
    for s in ("kernel", "program"):
        print(f"  {s + ' stores':<14}{(b['stores'][s] - a['stores'][s]) / per:6.1f}")
    enders = block_enders(steady, [busybox, kernel_path()])
    print("  blocks ending in: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(enders.items(), key=lambda kv: -kv[1])
                                            if v >= 0.5))
    fixed_stores = sum(a["stores"].values()) - sum(b["stores"][s] - a["stores"][s] for s in b["stores"]) / per \
        * a["syscalls"]
    print(f"fixed cost (boot, loading the program, exit): ~{fixed_blocks / 1000:.0f} k blocks, "
          f"~{fixed_stores / 1000:.0f} k stores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
