"""Shared set-up for the benchmarks and for ``report.py``.

* :func:`make_guest` builds the benchmark guest the same way for both cores;
* :func:`frame` gives what a timed function needs to put back the registers a
  delivery changes, so it can deliver again and again (the cost of that
  restore is benchmarked on its own, to be subtracted);
* :func:`build_baseline` compiles ``baseline.c`` (the plain-C baseline) with the
  flags the extension is built with and loads it with ctypes;
* :func:`c_twin` makes a baseline cpu in the same state as a benchmark cpu.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

import lguest

HERE = Path(__file__).resolve().parent
BASELINE_C = HERE / "baseline.c"

# --- the benchmark guest ----------------------------------------------------------------
MEM_SIZE = 1 << 20  # 1 MiB of guest RAM, flat (page_offset 0)
LGUEST_DATA = 0x1000  # struct lguest_data lives here
KERNEL_ESP = 0x80000  # the guest kernel's stack (ss 0x69)
USER_ESP = 0x40000000  # a user stack far away (never touched: ring 3 frames go to esp1)
ESP1 = 0x90000  # the kernel stack SET_STACK gave us
EIP = 0x200000
EFLAGS = 0x202
HANDLER_BASE = 0x00100000  # irq n's handler: HANDLER_BASE + 16*n
TRAP_GATE = 0x8F00  # present, DPL 0, type 0xF: delivery leaves irq_enabled alone
INTR_GATE = 0x8E00  # type 0xE: delivery clears irq_enabled (restore it!)
KERNEL_SS, KERNEL_CS = 0x69, 0x61
USER_SS, USER_CS = 0x7B, 0x73

R_EIP = lguest.R_EIP  # eip cs eflags esp ss are the last five registers
assert lguest.REG_NAMES[R_EIP:] == ("eip", "cs", "eflags", "esp", "ss")

_HOSTS: dict[int, lguest.Host] = {}


def host() -> lguest.Host:
    """One private Host per process (its registry holds vectors 0..31 like the real host's)."""
    h = _HOSTS.get(0)
    if h is None:
        h = _HOSTS[0] = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
    return h


def gate(irq_or_trap: int, gate_type: int = TRAP_GATE) -> tuple[int, int]:
    """(lo, hi) of a guest gate to HANDLER_BASE + 16*n."""
    handler = HANDLER_BASE + 16 * irq_or_trap
    return (KERNEL_CS << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | gate_type


def make_guest(core, *, clock="virtual", gate_type=TRAP_GATE, mem_size=MEM_SIZE, user=False):
    """A guest and its cpu ready to take interrupts.

    ``clock``: "virtual" (VirtualClock: the compiled core reads its int64
    cell), "system" (clock=None: the SystemClock, CLOCK_REALTIME per
    delivery), or a clock object.
    """
    if clock == "virtual":
        clock = lguest.VirtualClock(start_ns=1_700_000_000_123_456_789)
    elif clock == "system":
        clock = None
    mem = lguest.GuestMemory(mem_size)
    guest = host().new_guest(mem, page_offset=0, clock=clock, core=core)
    cpu = guest.new_cpu()
    guest.lguest_data = LGUEST_DATA
    mem.write_u32(LGUEST_DATA + lguest.LD_IRQ_ENABLED, lguest.X86_EFLAGS_IF)
    mem.write_u32(LGUEST_DATA + lguest.LD_BLOCKED_INTERRUPTS, 0)
    # an empty async hypercall ring: every status byte 0xFF
    mem.write(LGUEST_DATA + lguest.LD_HCALL_STATUS, b"\xff" * lguest.LHCALL_RING_SIZE)
    for irq in range(lguest.LGUEST_IRQS):
        cpu.load_guest_idt_entry(lguest.FIRST_EXTERNAL_VECTOR + irq, *gate(lguest.FIRST_EXTERNAL_VECTOR + irq,
                                                                            gate_type))
    for trap in range(lguest.FIRST_EXTERNAL_VECTOR):
        cpu.load_guest_idt_entry(trap, *gate(trap, TRAP_GATE))
    cpu.load_guest_idt_entry(lguest.SYSCALL_VECTOR, *gate(lguest.SYSCALL_VECTOR, TRAP_GATE | 0x6000))
    cpu.changed = 0
    cpu.esp1 = ESP1
    cpu.ss1 = KERNEL_SS
    r = cpu.regs
    if user:
        r.ss, r.esp, r.cs = USER_SS, USER_ESP, USER_CS
    else:
        r.ss, r.esp, r.cs = KERNEL_SS, KERNEL_ESP, KERNEL_CS
    r.eip = EIP
    r.eflags = EFLAGS
    r.errcode = 0x6
    return guest, cpu


def frame(cpu):
    """(registers array, copy of eip..ss): ``arr[R_EIP:] = saved`` puts back
    everything a delivery changes in the registers (one numpy slice store)."""
    arr = cpu.regs.array
    return arr, arr[R_EIP:].copy()


DELIVERIES = 64  # per call of a round_robin() function


def round_robin(core, m: int):
    """m guests (each its own GuestMemory, one cpu each) and a function that makes
    DELIVERIES deliveries (set irq 5 pending, maybe_do_interrupt, restore)
    round-robin over their cpus: the same work for every m."""
    if DELIVERIES % m:
        raise ValueError(f"m must divide {DELIVERIES}")
    cpus = [make_guest(core)[1] for _ in range(m)]
    bit = 1 << 5
    seq = [(cpu, cpu.maybe_do_interrupt, *frame(cpu)) for cpu in cpus] * (DELIVERIES // m)

    def deliver_round_robin():
        for cpu, mdi, arr, saved in seq:
            cpu.irqs_pending = bit
            mdi()
            arr[R_EIP:] = saved

    return cpus, deliver_round_robin


def round_robin_timed_in_c(m: int):
    """m compiled guests (own memory, one cpu each) and a function ``f(passes)``
    that makes ``passes`` x DELIVERIES deliveries round-robin, each timed inside
    C by ``_core.bench_deliver(cpu, 5, 1)``; it returns the summed ns.  Python's
    overhead between deliveries is outside the timed region, so what differs
    with m is only the delivery itself touching another guest's state (plus a
    constant: one clock_gettime(CLOCK_MONOTONIC) pair per delivery)."""
    if DELIVERIES % m:
        raise ValueError(f"m must divide {DELIVERIES}")
    cy = lguest.load_core("cython")
    cpus = [make_guest(cy)[1] for _ in range(m)]
    seq = cpus * (DELIVERIES // m)
    bench = cy.bench_deliver

    def run(passes: int) -> int:
        total = 0
        for _ in range(passes):
            for cpu in seq:
                total += bench(cpu, 5, 1)
        return total

    return cpus, run


def defaults_table() -> np.ndarray:
    """The Switcher's default handler addresses, (256,) uint32."""
    return (0xFFC00000 + 32 * np.arange(lguest.IDT_ENTRIES, dtype=np.uint64)).astype(np.uint32)


def host_idt() -> np.ndarray:
    idt = np.zeros((lguest.IDT_ENTRIES, 2), dtype=np.uint32)
    lguest.load_core("python").setup_default_idt_entries(idt, defaults_table())
    return idt


# --- the plain-C baseline ----------------------------------------------------------------------
def extension_cflags() -> list[str]:
    """What setuptools passes when it compiles lguest/_core.c (setup.py adds -O3 last)."""
    flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
    flags += shlex.split(sysconfig.get_config_var("CCSHARED") or "-fPIC")
    return [*flags, "-O3"]


def compiler() -> str:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return os.environ.get("CC", cc)


@functools.cache
def build_baseline() -> ctypes.CDLL:
    """Compile baseline.c into a temporary shared library and load it."""
    tmp = tempfile.mkdtemp(prefix="lguest-baseline-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the loaded library stays mapped
    out = Path(tmp) / "baseline.so"
    cmd = [compiler(), *extension_cflags(), "-shared", "-o", str(out), str(BASELINE_C)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the C baseline failed: {shlex.join(cmd)}\n{proc.stderr}")
    lib = ctypes.CDLL(str(out))
    p, u32, i64, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int64, ctypes.c_int
    sigs = {
        "bl_new": ([u32, u32], p),
        "bl_free": ([p], None),
        "bl_mem": ([p], p),
        "bl_regs": ([p], p),
        "bl_idt": ([p], p),
        "bl_dead": ([p], i32),
        "bl_pending": ([p], u32),
        "bl_set_pending": ([p, u32], None),
        "bl_set_lguest_data": ([p, u32], None),
        "bl_set_stack": ([p, u32, u32], None),
        "bl_set_noirq": ([p, u32, u32], None),
        "bl_set_clock": ([p, i32, p], None),
        "bl_maybe_do_interrupt": ([p], None),
        "bl_deliver_trap": ([p, ctypes.c_uint], i32),
        "bl_copy_traps": ([p, p, p], None),
        "bl_load_guest_idt_entry": ([p, ctypes.c_uint, u32, u32], None),
        "bl_bench_deliver": ([p, ctypes.c_uint, i64], i64),
        "bl_bench_deliver_mask": ([p, u32, i64], i64),
        "bl_bench_copy_traps": ([p, p, p, i64], i64),
        "bl_bench_copy_traps_listed": ([p, p, p, i64], i64),
    }
    for name, (argtypes, restype) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    lib.compile_command = shlex.join(cmd)
    return lib


class CTwin:
    """A baseline cpu (malloc'd memory, plain structs) mirroring a benchmark cpu."""

    def __init__(self, cpu):
        self.lib = lib = build_baseline()
        g = cpu.guest
        self.ptr = lib.bl_new(g.memory.size, g.page_offset)
        if not self.ptr:
            raise MemoryError("bl_new")
        self.size = g.memory.size
        ctypes.memmove(lib.bl_mem(self.ptr), g.memory.address, self.size)
        self.regs = np.ctypeslib.as_array((ctypes.c_uint32 * 18).from_address(lib.bl_regs(self.ptr)))
        self.regs[:] = cpu.regs.array
        self.idt = np.ctypeslib.as_array((ctypes.c_uint32 * 512).from_address(lib.bl_idt(self.ptr))).reshape(256, 2)
        self.idt[:] = cpu.idt
        lib.bl_set_lguest_data(self.ptr, g.lguest_data)
        lib.bl_set_stack(self.ptr, cpu.ss1, cpu.esp1)
        lib.bl_set_noirq(self.ptr, g.noirq_start, g.noirq_end)
        lib.bl_set_pending(self.ptr, cpu.irqs_pending)
        cell = getattr(g.clock, "cell", None)
        if cell is not None and not isinstance(cell, np.ndarray):
            cell = np.frombuffer(cell, dtype=np.int64)  # VirtualClock's array.array('q'): the same word
        if getattr(g.clock, "realtime", False) is True:
            lib.bl_set_clock(self.ptr, 0, None)
        elif isinstance(cell, np.ndarray) and cell.dtype == np.int64:
            self._cell = cell  # keep it alive
            lib.bl_set_clock(self.ptr, 1, cell.ctypes.data)
        else:
            raise ValueError("the C baseline needs a SystemClock or a VirtualClock guest")

    def read(self, gpa: int, n: int) -> bytes:
        return ctypes.string_at(self.lib.bl_mem(self.ptr) + gpa, n)

    @property
    def dead(self) -> bool:
        return bool(self.lib.bl_dead(self.ptr))

    @property
    def irqs_pending(self) -> int:
        return self.lib.bl_pending(self.ptr)

    @irqs_pending.setter
    def irqs_pending(self, v: int) -> None:
        self.lib.bl_set_pending(self.ptr, v)

    def maybe_do_interrupt(self) -> None:
        self.lib.bl_maybe_do_interrupt(self.ptr)

    def deliver_trap(self, num: int) -> bool:
        return bool(self.lib.bl_deliver_trap(self.ptr, num))

    def bench_deliver(self, irq: int, n: int) -> int:
        return self.lib.bl_bench_deliver(self.ptr, irq, n)

    def bench_deliver_mask(self, mask: int, n: int) -> int:
        return self.lib.bl_bench_deliver_mask(self.ptr, mask, n)

    def copy_traps(self, idt: np.ndarray, defaults: np.ndarray) -> None:
        self.lib.bl_copy_traps(self.ptr, idt.ctypes.data, defaults.ctypes.data)

    def bench_copy_traps(self, idt: np.ndarray, defaults: np.ndarray, n: int) -> int:
        assert idt.flags.c_contiguous and idt.dtype == np.uint32 and defaults.dtype == np.uint32
        return self.lib.bl_bench_copy_traps(self.ptr, idt.ctypes.data, defaults.ctypes.data, n)

    def bench_copy_traps_listed(self, idt: np.ndarray, defaults: np.ndarray, n: int) -> int:
        assert idt.flags.c_contiguous and idt.dtype == np.uint32 and defaults.dtype == np.uint32
        return self.lib.bl_bench_copy_traps_listed(self.ptr, idt.ctypes.data, defaults.ctypes.data, n)

    def close(self) -> None:
        if self.ptr:
            self.lib.bl_free(self.ptr)
            self.ptr = None
            self.regs = self.idt = None

    def __del__(self):
        self.close()


def c_twin(cpu) -> CTwin:
    return CTwin(cpu)


# --- measurement helpers ----------------------------------------------------------------------
def interleaved_ns_per_op(loops: dict, n: int, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` ns per operation of C loops ``loops[name](n) -> elapsed ns``,
    run alternately (ABAB..., order flipped every repeat) so drifting machine
    noise hits every contender alike."""
    names = list(loops)
    best = dict.fromkeys(names, float("inf"))
    for r in range(repeat):
        for name in names if r % 2 == 0 else reversed(names):
            best[name] = min(best[name], loops[name](n) / n)
    return best


def interleaved_stmt_ns(
    stmts: dict[str, str], namespace: dict, repeat: int, target_s: float = 0.02
) -> dict[str, float]:
    """Best-of-``repeat`` ns per execution of each Python statement (timeit, so the
    only overhead is timeit's own ``for`` loop; subtract a baseline statement to
    remove it), measured alternately.  Each measurement runs about ``target_s``."""
    import timeit

    timers = {name: timeit.Timer(stmt, globals=namespace) for name, stmt in stmts.items()}
    number = {}
    for name, timer in timers.items():  # calibrate (and warm up)
        k = 100
        while (t := timer.timeit(k)) < target_s / 10:
            k *= 10
        number[name] = max(1, int(k * target_s / max(t, 1e-9)))
    names = list(timers)
    best = dict.fromkeys(names, float("inf"))
    for r in range(repeat):
        for name in names if r % 2 == 0 else reversed(names):
            best[name] = min(best[name], timers[name].timeit(number[name]) * 1e9 / number[name])
    return best


def pending_mask(k: int) -> tuple[int, int]:
    """k irqs pending, the top k (32-k..31); the lowest, 32-k, is the one delivered."""
    low = lguest.LGUEST_IRQS - k
    return ((1 << lguest.LGUEST_IRQS) - 1) & ~((1 << low) - 1), low


# --- measurement helpers ----------------------------------------------------------------------
def machine() -> dict[str, str]:
    """nproc, the top of lscpu, python version, date: the machine a run was on."""
    import datetime
    import platform

    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "n/a"

    lscpu = run(["lscpu"])
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "n/a")
    return {
        "nproc": run(["nproc"]),
        "cpu": model,
        "lscpu_head": "\n".join(lscpu.splitlines()[:10]),
        "python": sys.version.split()[0] + " " + platform.python_implementation(),
        "compiler": run([compiler(), "--version"]).splitlines()[0] if run([compiler(), "--version"]) else "n/a",
        "cflags": " ".join(extension_cflags()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "clocksource": Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
        if Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").exists()
        else "n/a",
    }
