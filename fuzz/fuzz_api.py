#!/usr/bin/env python3
"""Host-API misuse fuzzer: hostile arguments to every public callable of both cores.

Where ``fuzz_core.py`` plays a hostile *guest*, this plays a careless or
hostile *host program*: it calls the public API of the compiled and the
pure-Python core (Guest, Cpu, Regs, the IDT helpers), GuestMemory,
Host/UsedVectors, the clocks and, when importable, UnicornLauncher, with
negative numbers, values >= 2**32, floats, None, bools, strings, numpy
scalars, huge sizes, objects whose ``__index__`` / ``__bool__`` /
``__bytes__`` close the memory mid-call, closed memory, half-built objects
(``__new__`` without ``__init__``) -- and, in a threaded phase, from several
threads at once.

Invariants:

* no signal (each worker is a subprocess; a negative exit status is a finding),
* no hang (each worker has a deadline),
* both cores give the same outcome for the same call -- the same exception
  class, or equal results -- and the same observable state afterwards
  (kill reason, registers, irqs, guest memory), compared call by call.

Usage::

    python fuzz/fuzz_api.py --seconds 600            # the long campaign
    python fuzz/fuzz_api.py --calls 20000 --seed 7   # a fixed budget
    python fuzz/fuzz_api.py --worker 123 --calls 500 # one worker, in-process (debugging)

It prints calls, calls/s and every finding (with the seed and call index to
replay); the exit status is 1 if anything was found.
"""

# ruff: noqa: B008 - argument defaults materialise each hostile value once per world, by design
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import lguest  # noqa: E402
from lguest import fallback  # noqa: E402

try:
    from lguest import _core
except ImportError:  # pragma: no cover
    _core = None

PAGE = 4096
MEM_PAGES = 4

# --- hostile values ---------------------------------------------------------------------------
INTERESTING = [0, 1, 2, 3, 6, 8, 13, 14, 15, 31, 32, 0x40, 0x61, 0x69, 0x80, 255, 256, 0x3FF, 0xFFF,
               0x1000, 0x1FFF, 0x2000, 0x3000, 0x3FFC, 0x3FFF, 0x4000, 0x8E00, 0x8F00, 0xEF00, 0xFFC00000,
               0xC0000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFC, 0xFFFFFFFE, 0xFFFFFFFF]
OUT_OF_RANGE = [-1, -2, -(1 << 31), -(1 << 31) - 1, 1 << 31, 1 << 32, (1 << 32) + 1, 1 << 63, 1 << 64, 1 << 100]


class Spec:
    """A hostile argument, materialised per world (an Evil binds to that world)."""

    def __init__(self, kind: str, value: Any = None) -> None:
        self.kind, self.value = kind, value

    def __repr__(self) -> str:
        return f"{self.kind}({self.value!r})" if self.value is not None else self.kind

    def make(self, world: World) -> Any:
        k, v = self.kind, self.value
        if k == "int":
            return v
        if k == "np_u32":
            return np.uint32(v)
        if k == "np_i64":
            return np.int64(v)
        if k == "np_u64":
            return np.uint64(v)
        if k == "float":
            return float(v)
        if k == "np_f64":
            return np.float64(v)
        if k == "bool":
            return bool(v)
        if k == "np_bool":
            return np.bool_(v)
        if k == "str":
            return str(v)
        if k == "bytes":
            return bytes(v)
        if k == "bytearray":
            return bytearray(v)
        if k == "u32array":
            return np.array(v, dtype=np.uint32)
        if k == "none":
            return None
        if k == "list":
            return list(v)
        if k == "object":
            return object()
        if k == "evil_index":
            return EvilIndex(world, v)
        if k == "evil_bool":
            return EvilBool(world)
        if k == "evil_bytes":
            return EvilBytes(world)
        if k == "raising_index":
            return RaisingIndex()
        raise AssertionError(k)


class EvilIndex:
    """An integer that closes the world's memory while being converted."""

    def __init__(self, world: World, value: int) -> None:
        self.world, self.value = world, value

    def __index__(self) -> int:
        self.world.try_close()
        return self.value


class EvilBool:
    def __init__(self, world: World) -> None:
        self.world = world

    def __bool__(self) -> bool:
        self.world.try_close()
        return True


class EvilBytes:
    """Bytes-like only via __bytes__ (not the buffer protocol): must be refused."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __bytes__(self) -> bytes:
        self.world.try_close()
        return b"evil"


class RaisingIndex:
    def __index__(self) -> int:
        raise KeyError("index exploded")


def any_int(r: random.Random) -> int:
    x = r.random()
    if x < 0.55:
        return r.choice(INTERESTING)
    if x < 0.8:
        return r.getrandbits(32)
    if x < 0.9:
        return r.randrange(0, MEM_PAGES * PAGE + 64)
    return r.choice(OUT_OF_RANGE)


def u32_spec(r: random.Random) -> Spec:
    """Mostly-valid u32s, sometimes anything else."""
    x = r.random()
    if x < 0.75:
        return Spec("int", any_int(r))
    kinds = ["np_u32", "np_i64", "np_u64", "float", "np_f64", "bool", "np_bool", "str", "bytes", "none",
             "list", "object", "evil_index", "raising_index"]
    k = r.choice(kinds)
    v = any_int(r)
    if k == "np_u32":
        v &= 0xFFFFFFFF
    elif k == "np_u64":
        v = abs(v) & ((1 << 64) - 1)
    elif k == "np_i64":
        v = max(min(v, (1 << 63) - 1), -(1 << 63))
    elif k in ("bool", "np_bool"):
        v = r.random() < 0.5
    elif k == "str":
        v = str(v)
    elif k == "bytes":
        v = b"\x01\x02"
    elif k == "list":
        v = [v]
    elif k == "evil_index":
        v &= 0xFFFFFFFF
    elif k in ("none", "object", "raising_index"):
        v = None
    return Spec(k, v)


def data_spec(r: random.Random) -> Spec:
    x = r.random()
    n = r.choice([0, 1, 3, 4, 8, 64, 4096, 5000])
    if x < 0.5:
        return Spec("bytes", bytes(r.getrandbits(8) for _ in range(min(n, 64))) * max(1, n // 64))
    if x < 0.6:
        return Spec("bytearray", b"\xab" * n)
    if x < 0.7:
        return Spec("u32array", [r.getrandbits(32) for _ in range(r.randrange(0, 4))])
    if x < 0.8:
        return Spec("evil_bytes")
    return u32_spec(r)  # ints, None, str... -> TypeError in both


def timeout_spec(r: random.Random) -> Spec:
    # (no None: nobody would wake the cpu -- a hang of the harness, not of lguest)
    return r.choice([Spec("int", 0), Spec("float", 0.0), Spec("float", -1.0), Spec("str", "0"),
                     Spec("float", float("nan")), Spec("bool", True), Spec("int", -5), Spec("float", 1e-4)])


# --- one world per core ------------------------------------------------------------------------
class World:
    """Host, memory, guest and cpu of one core, rebuilt after a close."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.build()

    def build(self) -> None:
        self.host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        self.clock = lguest.VirtualClock()
        self.mem = lguest.GuestMemory(MEM_PAGES * PAGE, guard_pages=True)
        self.guest = self.host.new_guest(self.mem, page_offset=0, clock=self.clock, core=self.core)
        self.cpu = self.guest.new_cpu()
        self.half_guest = self.core.Guest.__new__(self.core.Guest)
        self.half_cpu = self.core.Cpu.__new__(self.core.Cpu)

    def try_close(self) -> None:
        try:
            self.mem.close()
        except (RuntimeError, BufferError):
            pass

    def state(self) -> Any:
        """Everything observable that both cores must agree on."""
        g, c = self.guest, self.cpu
        mem = None if self.mem.closed else hash(self.mem.read(0, MEM_PAGES * PAGE))
        return (g.dead, g.lguest_data, g.pgdir, g.noirq_start, g.noirq_end, g.stack_pages, g.restart,
                c.regs.array.tobytes(), c.idt.tobytes(), c.esp1, c.ss1, c.halted, c.changed, c.irqs_pending,
                c.irq_counts, c.ts, c.next_hcall, c.break_out, mem, self.mem.closed, self.clock.armed(c))


def normalise(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.tolist())
    if isinstance(value, (bool, int, float, str, bytes, type(None))):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (tuple, list)):
        return tuple(normalise(v) for v in value)
    if isinstance(value, memoryview):
        return ("memoryview", value.nbytes)
    return type(value).__name__  # objects of a core: only their kind is comparable


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", normalise(call()))
    except Exception as exc:  # noqa: BLE001 - the class is what we compare
        return ("raise", type(exc).__name__)


# Exceptions that are never an acceptable answer to misuse.
BAD_EXCEPTIONS = {"SystemError", "MemoryError", "RecursionError", "UnboundLocalError", "NameError"}

GUEST_RW = ["lguest_data", "pgdir", "noirq_start", "noirq_end", "stack_pages", "kernel_address", "tsc_khz", "restart"]
GUEST_RO = ["page_offset", "pfn_limit", "syscall_vector", "host", "memory", "clock", "cpus", "dead"]
CPU_RW = ["esp1", "ss1", "halted", "changed", "irqs_pending", "ts", "pending_notify", "last_pagefault",
          "hcall_pending", "next_hcall", "break_out"]
CPU_RO = ["guest", "id", "regs", "idt", "gdt", "irq_counts"]
REGS = ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "gs", "fs", "ds", "es", "trapnum", "errcode", "eip",
        "cs", "eflags", "esp", "ss"]


def make_op(r: random.Random) -> tuple[str, Callable[[World], Callable[[], Any]], list[Spec]]:
    """One random call: (description, world -> thunk, argument specs)."""
    u = lambda: u32_spec(r)  # noqa: E731
    a = [u(), u(), u()]
    kind = r.randrange(40)

    def arg(i: int) -> Callable[[World], Any]:
        return lambda w: a[i].make(w)

    if kind == 0:
        f = r.choice(["idt_address", "idt_type", "idt_present"])
        return f, lambda w: (lambda x=arg(0)(w), y=arg(1)(w): getattr(w.core, f)(x, y)), a[:2]
    if kind == 1:
        return "has_err", lambda w: (lambda x=arg(0)(w): w.core.has_err(x)), a[:1]
    if kind == 2:
        base = r.choice([None, "pair", "short", "int", "long"])

        def mk(w: World) -> Callable[[], Any]:
            b = {None: None, "pair": (a[2].make(w), 0x6000), "short": (1,), "int": 5, "long": (1, 2, 3)}[base]
            return lambda: w.core.default_idt_entry(a[0].make(w), a[1].make(w), b)
        return f"default_idt_entry(base={base})", mk, a
    if kind == 3:
        shape = r.choice(["ok", "short", "int64", "list", "readonly", "fortran"])
        dchoice = r.randrange(7)
        which_call = r.random() < 0.5

        def mk(w: World) -> Callable[[], Any]:
            idt = {"ok": np.zeros((256, 2), np.uint32), "short": np.zeros((255, 2), np.uint32),
                   "int64": np.zeros((256, 2), np.int64), "list": [[0, 0]] * 256,
                   "readonly": np.zeros((256, 2), np.uint32),
                   "fortran": np.zeros((256, 2), np.uint32, order="F")}[shape]
            if shape == "readonly":
                idt.flags.writeable = False
            defaults = [np.arange(256, dtype=np.uint32), list(range(256)), np.full(256, -1), None, [1.5] * 256,
                        np.arange(255, dtype=np.uint32), "x" * 256][dchoice]
            if which_call:
                return lambda: w.cpu.copy_traps(idt, defaults)
            return lambda: w.core.setup_default_idt_entries(idt, defaults)
        return f"copy_traps/setup({shape})", mk, []
    if kind in (4, 5):
        name = r.choice(GUEST_RW)
        return f"guest.{name}=", lambda w: (lambda v=arg(0)(w): setattr(w.guest, name, v)), a[:1]
    if kind == 6:
        name = r.choice(GUEST_RW + GUEST_RO)
        if r.random() < 0.3:
            return f"guest.{name}= (ro?)", lambda w: (lambda: setattr(w.guest, name, getattr(w.guest, name))), []
        return f"guest.{name}", lambda w: (lambda: getattr(w.guest, name)), []
    if kind in (7, 8):
        name = r.choice(CPU_RW)
        return f"cpu.{name}=", lambda w: (lambda v=arg(0)(w): setattr(w.cpu, name, v)), a[:1]
    if kind == 9:
        name = r.choice(CPU_RW + CPU_RO)
        if r.random() < 0.3:
            return f"cpu.{name}= (ro?)", lambda w: (lambda: setattr(w.cpu, name, getattr(w.cpu, name))), []
        return f"cpu.{name}", lambda w: (lambda: getattr(w.cpu, name)), []
    if kind in (10, 11):
        name = r.choice(REGS)
        return f"regs.{name}=", lambda w: (lambda v=arg(0)(w): setattr(w.cpu.regs, name, v)), a[:1]
    if kind == 12:
        m = r.choice(["address_ok", "ld_write_u32"])
        return f"guest.{m}", lambda w: (lambda x=arg(0)(w), y=arg(1)(w): getattr(w.guest, m)(x, y)), a[:2]
    if kind in (13, 14):
        m = r.choice(["ld_read_u32", "guest_pa", "pin_page", "could_be_syscall", "direct_trap"])
        return f"guest.{m}", lambda w: (lambda x=arg(0)(w): getattr(w.guest, m)(x)), a[:1]
    if kind == 15:
        m = r.choice(["check_syscall_vector", "dead"])
        return f"guest.{m}", lambda w: (lambda: w.guest.check_syscall_vector() if m != "dead" else w.guest.dead), []
    if kind == 16:
        reason = r.choice(["bye", 5, None, b"x"])
        return "guest.kill", lambda w: (lambda: w.guest.kill(reason)), []
    if kind == 17:
        n = Spec("int", r.choice([0, 1, 4, 64, 4096, 5000])) if r.random() < 0.8 else u()
        if isinstance(n.value, int) and not isinstance(n.value, bool) and (1 << 20) < n.value <= 0xFFFFFFFF:
            # lgread returns n zero bytes on failure (API.md): a valid n near
            # 2**32 is a 4 GiB allocation in both cores, not a finding.
            n = Spec(n.kind, 1 << 20)
        return "cpu.lgread", lambda w: (lambda x=arg(0)(w), y=n.make(w): w.cpu.lgread(x, y)), [a[0], n]
    if kind == 18:
        d = data_spec(r)
        return "cpu.lgwrite", lambda w: (lambda x=arg(0)(w), y=d.make(w): w.cpu.lgwrite(x, y)), [a[0], d]
    if kind == 19:
        e = r.choice([Spec("bool", True), Spec("bool", False), Spec("evil_bool"), Spec("none")])
        return ("cpu.set_guest_interrupt",
                lambda w: (lambda x=arg(0)(w), y=arg(1)(w), z=e.make(w): w.cpu.set_guest_interrupt(x, y, z)),
                a[:2] + [e])
    if kind in (20, 21):
        m = r.choice(["maybe_do_interrupt", "pin_stack_pages", "write_timestamp", "wake"])
        return f"cpu.{m}", lambda w: (lambda: getattr(w.cpu, m)()), []
    if kind == 22:
        m = r.choice(["deliver_trap", "set_clockevent", "send_irq"])
        if m == "send_irq" and r.random() < 0.7:
            a[0] = Spec("int", r.randrange(-2, 34))
        return f"cpu.{m}", lambda w: (lambda x=arg(0)(w): getattr(w.cpu, m)(x)), a[:1]
    if kind in (23, 24):
        m = r.choice(["guest_set_stack", "load_guest_idt_entry"])
        if m == "guest_set_stack" and r.random() < 0.8:
            a[2] = Spec("int", r.randrange(0, 4))
        return f"cpu.{m}", lambda w: (lambda x=arg(0)(w), y=arg(1)(w), z=arg(2)(w): getattr(w.cpu, m)(x, y, z)), a
    if kind == 25:
        t = timeout_spec(r)
        return "cpu.wait_for_wakeup", lambda w: (lambda x=t.make(w): w.cpu.wait_for_wakeup(x)), [t]
    if kind == 26:
        m = r.choice(["read", "read_u32", "write", "write_u32"])
        d = data_spec(r) if m == "write" else u()
        if m == "read":
            return "mem.read", lambda w: (lambda x=arg(0)(w), y=d.make(w): w.mem.read(x, y)), [a[0], d]
        if m == "read_u32":
            return "mem.read_u32", lambda w: (lambda x=arg(0)(w): w.mem.read_u32(x)), [a[0]]
        return f"mem.{m}", lambda w: (lambda x=arg(0)(w), y=d.make(w): getattr(w.mem, m)(x, y)), [a[0], d]
    if kind == 27:
        m = r.choice(["size", "closed", "len", "view", "hold", "memoryview", "held"])

        def mk(w: World) -> Callable[[], Any]:
            if m == "len":
                return lambda: len(w.mem)
            if m == "hold":
                def held() -> Any:
                    with w.mem.hold():
                        try:
                            w.mem.close()
                        except RuntimeError:
                            return "refused"
                        return "closed under a hold"
                return held
            if m == "memoryview":
                def mv() -> Any:
                    with memoryview(w.mem) as v:
                        return v.nbytes
                return mv
            return lambda: getattr(w.mem, m)
        return f"mem.{m}", mk, []
    if kind == 28:
        if r.random() < 0.15:
            return "mem.close", lambda w: (lambda: w.mem.close()), []
        return "rebuild", lambda w: (lambda: w.build()), []
    if kind == 29:
        which = r.choice(["half_guest", "half_cpu"])
        name = r.choice(GUEST_RW + GUEST_RO + ["address_ok(0, 1)", "guest_pa(0)", "new_cpu()", "kill('x')"]
                        if which == "half_guest" else
                        CPU_RW + CPU_RO + ["wake()", "lgread(0, 1)", "deliver_trap(3)", "maybe_do_interrupt()",
                                           "send_irq(0)", "set_clockevent(1)", "wait_for_wakeup(0)"])

        def mk(w: World) -> Callable[[], Any]:
            obj = getattr(w, which)
            return lambda: eval("obj." + name, {"obj": obj})  # noqa: S307 - fixed strings
        return f"{which}.{name}", mk, []
    if kind == 30:
        which = r.choice(["guest", "cpu", "regs", "mem", "half_cpu"])

        def mk(w: World) -> Callable[[], Any]:
            obj = {"guest": w.guest, "cpu": w.cpu, "regs": w.cpu.regs, "mem": w.mem, "half_cpu": w.half_cpu}[which]
            return lambda: (pickle.dumps(obj), repr(obj).split()[0])[1]
        return f"pickle/repr({which})", mk, []
    if kind == 31:
        return "host.could_be_syscall/direct_trap", lambda w: (lambda x=arg(0)(w): (
            w.host.could_be_syscall(x), w.host.direct_trap(x))), a[:1]
    if kind == 32:
        return "UsedVectors.reserve/release", lambda w: (lambda x=arg(0)(w): (
            w.host.used_vectors.try_reserve(x), x in w.host.used_vectors, w.host.used_vectors.release(x))), a[:1]
    if kind == 33:
        return "Host(syscall_vector)", lambda w: (lambda x=arg(0)(w): lguest.Host(
            syscall_vector=x, used_vectors=lguest.UsedVectors()).syscall_vector), a[:1]
    if kind == 34:
        size = r.choice([0, 4095, 4096, -4096, 1.5, None, True, 1 << 33, PAGE * 2, "4096"])
        return f"GuestMemory({size!r})", lambda w: (lambda: lguest.GuestMemory(size).close()), []
    if kind == 35:
        po = u()
        return "new_guest(page_offset)", lambda w: (lambda x=po.make(w): w.host.new_guest(
            w.mem, page_offset=x, clock=w.clock, core=w.core).page_offset), [po]
    if kind == 36:
        which = r.choice(["advance", "arm", "start"])
        if which == "advance":
            return "VirtualClock.advance", lambda w: (lambda x=arg(0)(w): w.clock.advance(x)), a[:1]
        if which == "start":
            return "VirtualClock(start)", lambda w: (lambda x=arg(0)(w): lguest.VirtualClock(x).now_ns()), a[:1]
        return "cpu.set_clockevent+advance", lambda w: (lambda x=arg(0)(w): (w.cpu.set_clockevent(x),
                                                                            w.clock.advance(1 << 20))), a[:1]
    if kind == 37:
        n = r.randrange(0, 4)
        return "cpu.irq_counts/new_cpu", lambda w: (lambda: [w.guest.new_cpu().id for _ in range(n)]), []
    if kind == 38:
        return "Cpu(guest, id)", lambda w: (lambda x=arg(0)(w): w.core.Cpu(w.guest, x).id), a[:1]
    rchoice = r.randrange(6)
    return f"Regs(array #{rchoice})", lambda w: (lambda: w.core.Regs([
        None, np.zeros(18, np.uint32), np.zeros(17, np.uint32), np.zeros(18, np.int32), [0] * 18,
        np.zeros(36, np.uint32)[::2]][rchoice]).eax), []


# --- threads: misuse from several threads at once (crash/hang only, no comparison) --------------
def threaded_phase(r: random.Random, core: Any, seconds: float) -> int:
    """Several threads hammer one world of ``core`` with thread-safe and
    unsafe calls (close under holds, send_irq, wake, timers, reads)."""
    clock = core.NativeClock() if core.NAME == "cython" and r.random() < 0.5 else lguest.VirtualClock()
    host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
    mem = lguest.GuestMemory(MEM_PAGES * PAGE, guard_pages=True)
    guest = host.new_guest(mem, page_offset=0, clock=clock, core=core)
    cpu = guest.new_cpu()
    guest.lguest_data = 0
    cpu.idt[32] = (0x00610000, 0x8E00 | 0x8000)
    cpu.regs.ss, cpu.regs.esp = 0x69, 0x3000
    stop = time.monotonic() + seconds
    calls = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rr = random.Random(seed)
        n = 0
        while time.monotonic() < stop:
            k = rr.randrange(12)
            try:
                if k == 0:
                    cpu.send_irq(rr.randrange(-1, 33))
                elif k == 1:
                    cpu.wake()
                elif k == 2:
                    cpu.wait_for_wakeup(0.0)
                elif k == 3:
                    cpu.maybe_do_interrupt()
                elif k == 4:
                    cpu.set_clockevent(rr.choice([0, 1, 1000, 100000]))
                elif k == 5:
                    with mem.hold():
                        cpu.lgread(rr.randrange(0, MEM_PAGES * PAGE), 4)
                elif k == 6 and rr.random() < 0.01:
                    mem.close()
                elif k == 7:
                    cpu.break_out = True
                    _ = cpu.irqs_pending
                elif k == 8 and core.NAME == "cython":
                    if isinstance(clock, core.NativeClock):
                        clock.arm_periodic(cpu, rr.choice([1, 10_000, 50_000]))
                    else:
                        core.bench_deliver(cpu, rr.randrange(32), 200)
                elif k == 9:
                    cpu.deliver_trap(rr.randrange(300))
                elif k == 10:
                    guest.pin_page(rr.getrandbits(32))
                else:
                    cpu.lgwrite(rr.randrange(0, MEM_PAGES * PAGE), b"abcd")
            except (ValueError, RuntimeError, BufferError, TypeError):
                pass
            n += 1
        with lock:
            calls[0] += n

    threads = [threading.Thread(target=worker, args=(r.getrandbits(32),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if isinstance(clock, lguest.VirtualClock):
        pass
    else:
        clock.cancel(cpu)
    try:
        mem.close()
    except (RuntimeError, BufferError):
        pass
    return calls[0]


def unicorn_phase(r: random.Random) -> tuple[int, list[str]]:
    """UnicornLauncher's public methods with hostile arguments (crash/hang only)."""
    try:
        from lguest.unicorn import UnicornLauncher
    except ImportError:
        return 0, []
    odd: list[str] = []
    n = 0
    kwargs: dict[str, Any] = {"memory": r.choice([16 * PAGE, 0, -PAGE, 4095, 1.5, None, 1 << 40]),
                              "syscall_vector": r.choice([0x80, 0x40, -1, 256, None, 1.5, True]),
                              "clock": r.choice(["virtual", "wall", "bogus", None, 5])}
    try:
        launcher = UnicornLauncher(**kwargs)
    except (ValueError, TypeError, OSError, RuntimeError):
        return 1, odd
    n += 1
    try:
        with launcher:
            for _ in range(6):
                k = r.randrange(6)
                try:
                    if k == 0:
                        launcher.load_flat(r.choice([b"\xeb\xfe", b"\xf4\xeb\xfd", b"", 5, None, b"\x0f\x0b"]),
                                           r.choice([0, 0x1000, -1, 1 << 32, 16 * PAGE - 1, 1.5]),
                                           r.choice([0, 0x1000, -1, 1 << 32, None]))
                    elif k == 1:
                        launcher.run(timeout=r.choice([0.02, 0, -1, None if r.random() < 0 else 0.01, "x",
                                                       float("nan")]))
                    elif k == 2:
                        launcher.send_irq(r.choice([0, 1, 31, 32, -1, 1.5, None, True]))
                    elif k == 3:
                        launcher.break_out()
                    elif k == 4:
                        _ = (launcher.console, launcher.stats)
                    else:
                        try:
                            launcher.memory.close()
                            odd.append("UnicornLauncher: memory.close() accepted while the launcher is open")
                        except (RuntimeError, BufferError):
                            pass
                except (ValueError, TypeError, OSError, RuntimeError, BufferError, IndexError) as exc:
                    if isinstance(exc, IndexError):
                        odd.append(f"UnicornLauncher: IndexError for call {k}: {exc}")
                n += 1
    except (ValueError, TypeError, OSError, RuntimeError, BufferError):
        pass
    return n, odd


# --- a worker: one seed, one subprocess ------------------------------------------------------
def worker(seed: int, max_calls: int, seconds: float, threads: bool, unicorn: bool) -> dict[str, Any]:
    r = random.Random(seed)
    assert _core is not None, "the compiled core is not built"
    worlds = [World(fallback), World(_core)]
    findings: list[str] = []
    calls = 0
    t0 = time.monotonic()
    i = 0
    while calls < max_calls and time.monotonic() - t0 < seconds:
        i += 1
        desc, mk, specs = make_op(r)
        if desc == "rebuild":
            for w in worlds:
                w.try_close()
                w.build()
            continue
        results = []
        for w in worlds:
            try:
                thunk = mk(w)
            except Exception as exc:  # noqa: BLE001 - materialising an argument failed
                results.append(("setup-raise", type(exc).__name__))
                continue
            results.append(outcome(thunk))
        calls += 2
        py, cy = results
        where = f"seed={seed} call={i} {desc}{tuple(specs)}"
        if py != cy:
            findings.append(f"divergence: {where}: python {py} vs cython {cy}")
        for res in results:
            if res[0] == "raise" and res[1] in BAD_EXCEPTIONS:
                findings.append(f"bad exception: {where}: {res}")
        try:
            s0, s1 = (w.state() for w in worlds)
        except Exception as exc:  # noqa: BLE001
            findings.append(f"state read failed: {where}: {type(exc).__name__}: {exc}")
            for w in worlds:
                w.try_close()
                w.build()
            continue
        if s0 != s1:
            diff = [k for k, (x, y) in enumerate(zip(s0, s1, strict=True)) if x != y]
            findings.append(f"state divergence: {where}: fields {diff}")
            for w in worlds:  # resynchronise
                w.try_close()
                w.build()
        if len(findings) > 20:
            break
    for w in worlds:
        w.try_close()
    thread_calls = 0
    if threads:
        thread_calls += threaded_phase(r, _core, 0.4)
        thread_calls += threaded_phase(r, fallback, 0.2)
    uc_calls = 0
    if unicorn:
        for _ in range(3):
            n, odd = unicorn_phase(r)
            uc_calls += n
            findings += [f"seed={seed} {o}" for o in odd]
    return {"seed": seed, "calls": calls, "thread_calls": thread_calls, "unicorn_calls": uc_calls,
            "seconds": time.monotonic() - t0, "findings": findings}


def run_worker_subprocess(seed: int, calls: int, seconds: float, threads: bool, unicorn: bool,
                          deadline: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(seed), "--calls", str(calls),
           "--seconds", str(seconds)]
    if not threads:
        cmd.append("--no-threads")
    if not unicorn:
        cmd.append("--no-unicorn")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline)
    except subprocess.TimeoutExpired:
        return {"seed": seed, "calls": 0, "thread_calls": 0, "unicorn_calls": 0,
                "findings": [f"hang: seed={seed} did not finish within {deadline:.0f} s"]}
    if proc.returncode != 0:
        what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"seed": seed, "calls": 0, "thread_calls": 0, "unicorn_calls": 0,
                "findings": [f"crash ({what}): seed={seed}: {proc.stderr[-1500:]}"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="total wall time (default 30)")
    ap.add_argument("--calls", type=int, default=0, help="stop after this many calls (0: no limit)")
    ap.add_argument("--seed", type=int, default=None, help="first worker seed (default: random)")
    ap.add_argument("--chunk", type=float, default=8.0, help="seconds per worker subprocess")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-threads", action="store_true", help="skip the multi-threaded phase")
    ap.add_argument("--no-unicorn", action="store_true", help="skip UnicornLauncher")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.worker is not None:
        try:
            res = worker(args.worker, args.calls or 1 << 62, args.seconds, not args.no_threads, not args.no_unicorn)
        except Exception:  # noqa: BLE001 - report, the parent records it
            res = {"seed": args.worker, "calls": 0, "thread_calls": 0, "unicorn_calls": 0,
                   "findings": ["harness error: " + traceback.format_exc()[-1500:]]}
        print(json.dumps(res))
        return 0
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(31)
    t0 = time.monotonic()
    total = {"calls": 0, "thread_calls": 0, "unicorn_calls": 0, "workers": 0}
    findings: list[str] = []
    while True:
        left = args.seconds - (time.monotonic() - t0)
        if left <= 0.5 or (args.calls and total["calls"] >= args.calls):
            break
        chunk = min(args.chunk, left)
        budget = (args.calls - total["calls"]) if args.calls else 1 << 62
        res = run_worker_subprocess(seed, budget, chunk, not args.no_threads, not args.no_unicorn,
                                    deadline=chunk + 60)
        for k in ("calls", "thread_calls", "unicorn_calls"):
            total[k] += res.get(k, 0)
        total["workers"] += 1
        findings += res["findings"]
        seed += 1
    elapsed = time.monotonic() - t0
    summary = {**total, "seconds": round(elapsed, 1), "calls_per_s": round(total["calls"] / elapsed, 1),
               "findings": findings, "first_seed": seed - total["workers"]}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"api fuzz: {total['calls']} compared calls ({total['calls'] / elapsed:.0f}/s), "
              f"{total['thread_calls']} threaded calls, {total['unicorn_calls']} UnicornLauncher calls, "
              f"{total['workers']} workers from seed {summary['first_seed']}, {elapsed:.1f} s")
        print(f"findings: {len(findings)}")
        for f in findings:
            print("  " + f)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
