"""Leaving the emulator: lguest's trap and hypercall round trips on Unicorn
against the bare-Unicorn floors, measured in one interleaved run.

Every measurement runs the same guest loop -- ``mov $n,%ecx; 1: <event>;
dec %ecx; jnz 1b`` -- and is checked to have done the same guest work
(the event count and the final ``ecx``):

``bare_binding``   (baseline a) bare Unicorn, no lguest: the official Python
                   binding's UC_HOOK_INTR callback calls ``emu_stop`` at each
                   ``int3`` and a Python loop calls ``emu_start`` again;
``bare_native``    (baseline b) the same loop with a native UC_HOOK_INTR (C,
                   built here with gcc) doing what lguest's hook does to
                   handle a trap without leaving the emulator -- save the
                   CPU context, restore it -- and no lguest work;
``bare_native_stop`` a native hook that stops, re-entered from C: the cost of
                   leaving and re-entering that the design avoids;
``reflected``      lguest: ``int3`` through the guest's interrupt gate, a
                   trap handle_trap only reflects, delivered by the hook (the
                   guest's handler runs: re-enables interrupts, ``iret``);
``reflected_loop`` the same through the Python run loop (``native_direct=False``);
``hcall_flush``    a ``LHCALL_FLUSH_ASYNC`` hypercall round trip;
``hcall_clockevent`` a ``LHCALL_SET_CLOCKEVENT`` round trip;
``syscall_ring1`` / ``syscall_ring3``  ``int $0x80`` through the direct trap
                   gate from ring 1 / from ring 3 (the handler ``iret``s).

    .venv/bin/python benchmarks/emulator.py [--quick]

prints per-event nanoseconds (median of the rounds) and the issue-15 ratios.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRY = 0x1000
LGUEST_DATA = 0x8000
COUNTER = 0x9000
KSTACK = 0x7000
USTACK = 0x6000

# --- lguest guests ---------------------------------------------------------------------
# LGUEST_INIT; a guest gate for VEC; optionally SET_STACK and a drop to
# ring 3; the loop; hlt (at ring 1 a #GP with no gate: the kill ends the
# run; at ring 3 the same).  The handler re-enables interrupts (an
# interrupt gate cleared lguest_data.irq_enabled) and irets.
GUEST = """
    .code32
    .globl _start
_start:
    mov $1, %eax; mov ${ld}, %ebx; vmcall
    mov $6, %eax; mov ${vec}, %ebx; mov $(0x610000 + (handler - _start + {entry}) & 0xffff), %ecx
    mov $(((handler - _start + {entry}) & 0xffff0000) | {gate_hi}), %edx; vmcall
    mov ${kstack}, %esp
    {to_user}
    mov ${n}, %ecx
1:  {insn}
    dec %ecx
    jnz 1b
    hlt
handler:
    movl $0x200, {ld}
    iret
"""

# SET_STACK (7): ss1 0x69, esp1 KSTACK; then iret to ring 3 (cs 0x73, ss 0x7b).
TO_USER = """
    mov $7, %eax; mov $0x69, %ebx; mov ${kstack}, %ecx; mov $0, %edx; vmcall
    push $0x7b; push ${ustack}; push $0x202; push $0x73; push $2f; iret
2:  mov $0x7b, %eax; mov %eax, %ds; mov %eax, %es
"""

HCALL = "mov ${num}, %eax; mov ${a1}, %ebx; xor %edx, %edx; push %ecx; xor %ecx, %ecx; int $0x1f; pop %ecx"


def _assemble(src: str, tmp: Path) -> bytes:
    s, o, b = tmp / "g.s", tmp / "g.o", tmp / "g.bin"
    s.write_text(src)
    subprocess.run(["as", "--32", "-o", str(o), str(s)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", hex(ENTRY), "--oformat", "binary", "-o", str(b), str(o)],
                   check=True)
    return b.read_bytes()


def lguest_guest(tmp: Path, *, n: int, insn: str, vec: int = 3, gate_hi: int = 0xEE00, user: bool = False) -> bytes:
    to_user = TO_USER.format(kstack=KSTACK, ustack=USTACK) if user else ""
    return _assemble(GUEST.format(ld=LGUEST_DATA, vec=vec, entry=ENTRY, gate_hi=gate_hi, kstack=KSTACK,
                                  to_user=to_user, n=n, insn=insn), tmp)


def run_lguest(code: bytes, **kw) -> tuple[float, dict, int]:
    """One fresh launcher, one timed run(); (seconds, stats, final ecx)."""
    import lguest
    from lguest.unicorn import UnicornLauncher

    with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32)),
                         **kw) as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)  # an empty async ring
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)  # syscall_vec
        t0 = time.perf_counter()
        res = lg.run(timeout=600)
        dt = time.perf_counter() - t0
        assert res.reason == "dead" and str(res.message).startswith("unhandled trap 13"), res
        ecx = int(lg.cpu.regs.ecx)
        stats = lg.stats
    return dt, stats, ecx


# --- bare Unicorn ----------------------------------------------------------------------
BARE_C = r"""
#include <stddef.h>
#include <stdint.h>
typedef int (*ctx_io_t)(void *, void *);
typedef int (*emu_start_t)(void *, uint64_t, uint64_t, uint64_t, size_t);
typedef int (*emu_stop_t)(void *);
typedef int (*reg_read_t)(void *, int, void *);
struct floor { ctx_io_t save, restore; emu_start_t start; emu_stop_t stop; reg_read_t rd;
               void *ctx; uint64_t count; int stop_each; int eip_id; };
/* lguest's hook handling a trap in place, minus lguest: save, restore. */
void floor_hook(void *uc, uint32_t intno, void *user) {
    struct floor *f = user;
    f->count++;
    if (f->ctx) { f->save(uc, f->ctx); f->restore(uc, f->ctx); }
    if (f->stop_each) f->stop(uc);
}
/* Re-enter from C after each stop until `until`. */
int floor_loop(void *uc, struct floor *f, uint32_t eip, uint32_t until) {
    for (;;) {
        int err = f->start(uc, eip, until, 0, 0);
        if (err) return err;
        f->rd(uc, f->eip_id, &eip);
        if (eip == until) return 0;
    }
}
"""


class Floor(ctypes.Structure):
    _fields_ = [("save", ctypes.c_void_p), ("restore", ctypes.c_void_p), ("start", ctypes.c_void_p),
                ("stop", ctypes.c_void_p), ("rd", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("count", ctypes.c_uint64), ("stop_each", ctypes.c_int), ("eip_id", ctypes.c_int)]


_LIB: dict[str, ctypes.CDLL] = {}


def bare_lib() -> ctypes.CDLL:
    if "lib" not in _LIB:
        d = Path(tempfile.mkdtemp(prefix="lgbare"))
        (d / "floor.c").write_text(BARE_C)
        cc = shutil.which(os.environ.get("CC", "gcc")) or "gcc"
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(d / "floor.so"), str(d / "floor.c")], check=True)
        lib = ctypes.CDLL(str(d / "floor.so"))
        lib.floor_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
        _LIB["lib"] = lib
    return _LIB["lib"]


def bare_code(n: int) -> tuple[bytes, int]:
    """``mov $n,%ecx; 1: int3; dec %ecx; jnz 1b``; and the address after it."""
    code = b"\xb9" + n.to_bytes(4, "little") + b"\xcc\x49\x75\xfc"
    return code, ENTRY + len(code)


def _bare_uc(n: int):
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn import x86_const as x

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 1 << 20)
    code, until = bare_code(n)
    uc.mem_write(ENTRY, code)
    uc.reg_write(x.UC_X86_REG_ESP, KSTACK)
    return uc, until


def run_bare_binding(n: int) -> tuple[float, int, int]:
    """Baseline (a): (seconds, exits, final ecx)."""
    from unicorn import UC_HOOK_INTR
    from unicorn import x86_const as x

    uc, until = _bare_uc(n)
    count = [0]

    def on_intr(uc, intno, user):
        count[0] += 1
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    eip = ENTRY
    t0 = time.perf_counter()
    while eip != until:
        uc.emu_start(eip, until)
        eip = uc.reg_read(x.UC_X86_REG_EIP)
    dt = time.perf_counter() - t0
    return dt, count[0], uc.reg_read(x.UC_X86_REG_ECX)


def run_bare_native(n: int, *, stop_each: bool) -> tuple[float, int, int]:
    """Baseline (b) (stop_each=False) or the native stop/re-enter loop."""
    from unicorn import x86_const as x

    from lguest.unicorn.engine import engine_handle, function_addresses, uclib

    lib, ucl = bare_lib(), uclib()
    uc, until = _bare_uc(n)
    h = engine_handle(uc)
    f = function_addresses()
    ctx = ctypes.c_void_p()
    if ucl.uc_context_alloc(ctypes.c_void_p(h), ctypes.byref(ctx)) != 0:
        raise OSError("uc_context_alloc")
    fl = Floor(f["uc_context_save"], f["uc_context_restore"], f["uc_emu_start"], f["uc_emu_stop"],
               f["uc_reg_read"], None if stop_each else ctx.value, 0, int(stop_each), x.UC_X86_REG_EIP)
    hh = ctypes.c_size_t()
    cb = ctypes.cast(lib.floor_hook, ctypes.c_void_p)
    add = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)(f["uc_hook_add"])
    if add(h, ctypes.addressof(hh), 1, cb, ctypes.addressof(fl), 1, 0) != 0:  # UC_HOOK_INTR
        raise OSError("uc_hook_add")
    t0 = time.perf_counter()
    err = lib.floor_loop(ctypes.c_void_p(h), ctypes.addressof(fl), ENTRY, until)
    dt = time.perf_counter() - t0
    assert err == 0, err
    ecx = uc.reg_read(x.UC_X86_REG_ECX)
    ucl.uc_free(ctx)
    return dt, fl.count, ecx


# --- the measurements ------------------------------------------------------------------
def measurements(tmp: Path, n: int) -> dict[str, Callable[[], float]]:
    """name -> a function running n events and returning seconds (after
    checking the guest work)."""
    guests = {
        "reflected": lguest_guest(tmp, n=n, insn="int3"),
        "syscall_ring1": lguest_guest(tmp, n=n, insn="int $0x80", vec=0x80, gate_hi=0xEF00),
        "syscall_ring3": lguest_guest(tmp, n=n, insn="int $0x80", vec=0x80, gate_hi=0xEF00, user=True),
        "hcall_flush": lguest_guest(tmp, n=n, insn=HCALL.format(num=0, a1=0)),
        "hcall_clockevent": lguest_guest(tmp, n=n, insn=HCALL.format(num=9, a1=0)),
    }

    def lg(name: str, key: str | None, **kw) -> Callable[[], float]:
        def f() -> float:
            dt, stats, ecx = run_lguest(guests[name], **kw)
            assert ecx == 0, (name, ecx)
            if key is not None:
                assert stats.get(key, 0) == n, (name, key, stats)
            return dt
        return f

    def bare(fn: Callable[[], tuple[float, int, int]]) -> Callable[[], float]:
        def f() -> float:
            dt, count, ecx = fn()
            assert (count, ecx) == (n, 0), (count, ecx)
            return dt
        return f

    return {
        "bare_binding": bare(lambda: run_bare_binding(n)),
        "bare_native": bare(lambda: run_bare_native(n, stop_each=False)),
        "bare_native_stop": bare(lambda: run_bare_native(n, stop_each=True)),
        "reflected": lg("reflected", "reflected_3"),
        "reflected_loop": lg("reflected", "reflected_3", native_direct=False),
        "hcall_flush": lg("hcall_flush", "hypercall_0"),
        "hcall_clockevent": lg("hcall_clockevent", "hypercall_9"),
        "syscall_ring1": lg("syscall_ring1", "direct_0x80"),
        "syscall_ring3": lg("syscall_ring3", "direct_0x80"),
    }


def measure(n: int = 100_000, rounds: int = 5) -> dict[str, list[float]]:
    """ns per event of every measurement, ``rounds`` interleaved rounds."""
    tmp = Path(tempfile.mkdtemp(prefix="lgemu"))
    ms = measurements(tmp, n)
    out: dict[str, list[float]] = {k: [] for k in ms}
    for _ in range(rounds):
        for k, f in ms.items():
            out[k].append(f() * 1e9 / n)
    return out


def report(res: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in res.items()}
    lines = [f"{'measurement':<20} {'ns/event':>10} {'min':>10} {'max':>10} {'M/s':>8}"]
    for k, v in res.items():
        lines.append(f"{k:<20} {med[k]:>10.0f} {min(v):>10.0f} {max(v):>10.0f} {1e3 / med[k]:>8.2f}")
    a, b = med["bare_binding"], med["bare_native"]
    lines += [
        "",
        f"reflected vs (a) bare_binding:        {a / med['reflected']:.1f}x  (target >= 5x)",
        f"reflected vs (b) bare_native:         {med['reflected'] / b:.2f}x slower  (target <= 1.5x)",
        f"hcall_flush vs (a):                   {a / med['hcall_flush']:.1f}x  (target >= 4x)",
        f"hcall_clockevent vs (a):              {a / med['hcall_clockevent']:.1f}x  (target >= 4x)",
        f"syscall_ring3 vs syscall_ring1:       {med['syscall_ring1'] / med['syscall_ring3']:.2f}x",
        f"syscall_ring3 vs reflected:           {med['reflected'] / med['syscall_ring3']:.1f}x  (target >= 15x)",
        f"reflected vs reflected_loop (before): {med['reflected_loop'] / med['reflected']:.1f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    res = measure(n=5_000 if quick else 100_000, rounds=1 if quick else 5)
    print(f"# {os.cpu_count()} vCPUs (shared), Python {sys.version.split()[0]}")
    print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
