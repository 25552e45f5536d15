"""The Launcher side (ABI.md §5 "Launcher side", API.md UnicornLauncher
semantics) driven by a ScriptedBackend, on both cores: the early console
(NOTIFY of a NUL-terminated string), console sinks, send_irq, break_out from
another thread, and the RunResult reasons.
"""

from __future__ import annotations

import threading
import time

import pytest
from lgtest import EIP, IRQ_HANDLER, LD, LD_HCALL_STATUS, hc, set_regs

from lguest.host.launcher import Launcher, RunResult
from lguest.host.run import Backend, ScriptedBackend


def shutdown(mem, text, how=1, at=0x3000):
    mem.write(at, text + b"\0")
    return hc(2, at, how)


# --- the early console --------------------------------------------------------------------
def test_early_console(kcpu, mem):
    mem.write(0x2000, b"hello\0garbage")
    backend = ScriptedBackend([hc(17, 0x2000), shutdown(mem, b"bye")])
    launcher = Launcher(kcpu, backend)
    res = launcher.run(timeout=5)
    assert res == RunResult("dead", "CRASH: bye")
    assert launcher.console == b"hello"


def test_console_is_read_at_the_time_of_the_notify(kcpu, mem):
    mem.write(0x2000, b"hello \0")

    def second(c):
        mem.write(0x2000, b"world\n\0")
        set_regs(c, **hc(17, 0x2000))

    chunks = []
    backend = ScriptedBackend([hc(17, 0x2000), second, shutdown(mem, b"bye")])
    launcher = Launcher(kcpu, backend, console=chunks.append)
    assert launcher.run(timeout=5) == RunResult("dead", "CRASH: bye")
    assert launcher.console == b"hello world\n"
    assert b"".join(chunks) == b"hello world\n"
    assert chunks == [b"hello ", b"world\n"]


def test_console_from_the_async_ring(kcpu, mem):
    import struct
    mem.write(0x2000, b"ring\0")
    mem.write(LD + 84, struct.pack("<4I", 17, 0x2000, 0, 0))
    mem.write(LD + LD_HCALL_STATUS, b"\x00")
    backend = ScriptedBackend([hc(0), shutdown(mem, b"x")])
    launcher = Launcher(kcpu, backend)
    assert launcher.run(timeout=5) == RunResult("dead", "CRASH: x")
    assert launcher.console == b"ring"


def test_console_binary_bytes(kcpu, mem):
    mem.write(0x2000, b"\x01\xff\x80z\0")
    seen = []
    backend = ScriptedBackend([hc(17, 0x2000), shutdown(mem, b"x")])
    launcher = Launcher(kcpu, backend, console=seen.append)
    launcher.run(timeout=5)
    assert launcher.console == b"\x01\xff\x80z"
    assert seen == [b"\x01\xff\x80z"]


def test_empty_string_prints_nothing(kcpu, mem):
    backend = ScriptedBackend([hc(17, 0x2000), shutdown(mem, b"x")])
    launcher = Launcher(kcpu, backend)
    launcher.run(timeout=5)
    assert launcher.console == b""


# --- the early console is a bounded ring ------------------------------------------------------
class Printer(Backend):
    """A guest that prints ``count`` distinct lines, one NOTIFY each, then dies."""

    def __init__(self, mem, count, width=100, at=0x2000):
        self.mem, self.count, self.width, self.at = mem, count, width, at
        self.printed = bytearray()
        self.n = 0

    def line(self, i):
        return f"{i:08d}".encode().ljust(self.width - 1, b"x") + b"\n"

    def run_guest(self, cpu, idt, changed):
        if self.n == self.count:
            cpu.guest.kill("done")
            return
        text = self.line(self.n)
        self.mem.write(self.at, text + b"\0")
        self.printed += text
        self.n += 1
        set_regs(cpu, **hc(17, self.at))


def test_console_default_limit_is_one_mib(kcpu):
    launcher = Launcher(kcpu, ScriptedBackend([]))
    assert launcher.console_limit == 1 << 20 and launcher.console_dropped == 0


@pytest.mark.parametrize("limit", [0, 1, 150, 4096])
def test_console_keeps_the_last_limit_bytes_and_streams_everything(kcpu, mem, limit):
    chunks = []
    backend = Printer(mem, 3000)
    launcher = Launcher(kcpu, backend, console=chunks.append, console_limit=limit)
    assert launcher.run(timeout=30) == RunResult("dead", "done")
    total = bytes(backend.printed)
    assert len(total) == 300_000
    assert b"".join(chunks) == total  # the sink saw every byte, in order
    assert launcher.console == total[len(total) - limit:]  # the ring: the newest bytes
    assert launcher.console_dropped == len(total) - limit


def test_console_limit_bounds_host_memory_in_a_notify_storm(kcpu, mem):
    # 3000 NOTIFYs of 4 KiB each: 12 MiB printed, at most 64 KiB kept.
    backend = Printer(mem, 3000, width=4096)
    launcher = Launcher(kcpu, backend, console_limit=64 << 10)
    launcher.run(timeout=60)
    assert len(launcher.console) == 64 << 10
    assert launcher.console_dropped == 3000 * 4096 - (64 << 10)
    assert launcher.console.endswith(backend.line(2999))


def test_console_limit_can_be_lowered_later(kcpu, mem):
    launcher = Launcher(kcpu, Printer(mem, 10))
    launcher.run(timeout=5)
    assert len(launcher.console) == 1000
    launcher.console_limit = 250  # e.g. UnicornLauncher's .launcher, after setup
    assert launcher.console == Printer(mem, 0).line(7)[-50:] + Printer(mem, 0).line(8) + Printer(mem, 0).line(9)
    assert launcher.console_dropped == 750


@pytest.mark.parametrize("bad", [-1, 1.5, "1", None, True])
def test_console_limit_must_be_a_non_negative_int(kcpu, bad):
    with pytest.raises((TypeError, ValueError)):
        Launcher(kcpu, ScriptedBackend([]), console_limit=bad)


def test_one_notify_reads_at_most_64_kib(kcpu, mem):
    # No NUL for 128 KiB: one NOTIFY prints the first NOTIFY_MAX bytes, and
    # a string that runs into the end of memory stops there.
    from lguest.host.launcher import NOTIFY_MAX
    assert NOTIFY_MAX == 65536
    mem.write(0x10000, b"A" * (mem.size - 0x10000))
    chunks = []
    end = mem.size - 10
    backend = ScriptedBackend([hc(17, 0x10000), hc(17, end), shutdown(mem, b"x", at=0x3000)])
    launcher = Launcher(kcpu, backend, console=chunks.append)
    launcher.run(timeout=5)
    assert [len(c) for c in chunks] == [NOTIFY_MAX, 10]


# --- RunResult reasons -----------------------------------------------------------------------
def test_result_dead(kcpu):
    launcher = Launcher(kcpu, ScriptedBackend([0]))  # trap 0, no handler
    assert launcher.run(timeout=5) == RunResult("dead", "unhandled trap 0 at 0x5000 (0x0)")


def test_result_restart(kcpu, mem):
    launcher = Launcher(kcpu, ScriptedBackend([shutdown(mem, b"reboot", how=2)]))
    res = launcher.run(timeout=5)
    assert res.reason == "restart"
    assert res.message == "CRASH: reboot"


def test_result_bad_hypercall_keeps_newline(kcpu):
    launcher = Launcher(kcpu, ScriptedBackend([hc(12)]))
    assert launcher.run(timeout=5) == RunResult("dead", "Bad hypercall 12\n")


def test_result_timeout(kcpu):
    kcpu.halted = True
    launcher = Launcher(kcpu, ScriptedBackend([]))
    t0 = time.monotonic()
    res = launcher.run(timeout=0.05)
    assert res.reason == "timeout"
    assert res.message is None
    assert time.monotonic() - t0 < 4


def test_result_break_set_before_running(kcpu):
    backend = ScriptedBackend([])
    launcher = Launcher(kcpu, backend)
    launcher.break_out()
    res = launcher.run(timeout=5)
    assert res.reason == "break"
    assert res.message is None
    assert backend.entries == []


# --- break_out and send_irq from another thread -----------------------------------------------
class Spinner(Backend):
    """A guest that keeps running: every entry ends in a host interrupt."""

    def __init__(self):
        self.entries = 0

    def run_guest(self, cpu, idt, changed):
        self.entries += 1
        cpu.regs.trapnum = 0xEF
        time.sleep(0.001)


def test_break_out_from_another_thread_stops_a_running_guest(kcpu):
    backend = Spinner()
    launcher = Launcher(kcpu, backend)
    t = threading.Timer(0.05, launcher.break_out)
    t0 = time.monotonic()
    t.start()
    try:
        res = launcher.run(timeout=5)
    finally:
        t.cancel()
        t.join()
    assert res.reason == "break"
    assert 0.04 <= time.monotonic() - t0 < 4
    assert backend.entries >= 1


def test_break_out_from_another_thread_wakes_a_halted_guest(kcpu):
    backend = ScriptedBackend([hc(10)])  # HALT, no timer: sleeps until woken
    launcher = Launcher(kcpu, backend)
    t = threading.Timer(0.05, launcher.break_out)
    t0 = time.monotonic()
    t.start()
    try:
        res = launcher.run(timeout=5)
    finally:
        t.cancel()
        t.join()
    assert res.reason == "break"
    assert 0.04 <= time.monotonic() - t0 < 4
    assert len(backend.entries) == 1


def test_send_irq_from_another_thread_wakes_a_halted_guest(kcpu, mem):
    kcpu.load_guest_idt_entry(0x25, (0x60 << 16) | (IRQ_HANDLER & 0xFFFF), 0x8E00)
    backend = ScriptedBackend([hc(10), shutdown(mem, b"woken")])
    launcher = Launcher(kcpu, backend)
    t = threading.Timer(0.05, launcher.send_irq, args=(5,))
    t.start()
    try:
        res = launcher.run(timeout=5)
    finally:
        t.cancel()
        t.join()
    assert res == RunResult("dead", "CRASH: woken")
    assert [e[0] for e in backend.entries] == [EIP, IRQ_HANDLER]


@pytest.mark.parametrize("irq", [0, 1, 31])
def test_send_irq_sets_the_bit(kcpu, irq):
    launcher = Launcher(kcpu, ScriptedBackend([]))
    launcher.send_irq(irq)
    assert kcpu.irqs_pending == 1 << irq


def test_send_irq_accumulates(kcpu):
    launcher = Launcher(kcpu, ScriptedBackend([]))
    launcher.send_irq(3)
    launcher.send_irq(7)
    launcher.send_irq(3)
    assert kcpu.irqs_pending == (1 << 3) | (1 << 7)


@pytest.mark.parametrize("irq", [32, 33, 255, 1 << 40, -1])
def test_send_irq_out_of_range(kcpu, irq):
    launcher = Launcher(kcpu, ScriptedBackend([]))
    with pytest.raises(ValueError):
        launcher.send_irq(irq)
    assert kcpu.irqs_pending == 0


def test_send_irq_is_thread_safe(kcpu):
    launcher = Launcher(kcpu, ScriptedBackend([]))
    threads = [threading.Thread(target=lambda i=i: [launcher.send_irq(i) for _ in range(200)])
               for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert kcpu.irqs_pending == 0xFFFFFFFF


# --- lguest_arch_setup_regs -------------------------------------------------------------------------
def test_setup_regs_is_the_kernels(cpu):
    cpu.regs.array[:] = 0xDEADBEEF
    cpu.setup_regs(0x123456)
    r = cpu.regs
    assert (r.ds, r.es, r.ss, r.cs, r.eflags, r.eip) == (0x69, 0x69, 0x69, 0x61, 0x202, 0x123456)
    assert [int(v) for i, v in enumerate(r.array) if i not in (9, 10, 17, 14, 15, 13)] == [0] * 12


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1 << 32, ValueError), ("0x10", TypeError),
                                      (1.0, TypeError), (None, TypeError)])
def test_setup_regs_refuses_what_is_not_a_u32_and_changes_nothing(cpu, bad, exc):
    cpu.regs.eip = 0x777
    with pytest.raises(exc):
        cpu.setup_regs(bad)
    assert cpu.regs.eip == 0x777 and cpu.regs.cs == 0


def test_setup_regs_on_a_half_built_cpu_raises(core):
    cpu = core.Cpu.__new__(core.Cpu)
    with pytest.raises(RuntimeError):
        cpu.setup_regs(0x1000)
    with pytest.raises(RuntimeError):
        cpu.setup_regs(-1)  # the same exception whatever the argument


def test_launcher_with_a_start_sets_the_registers_so_the_first_vmcall_is_patched(cpu, mem):
    # A cpu fresh from new_cpu() has every register 0 (cs RPL 0): its first
    # vmcall (#UD) would not be patched and the guest would die with
    # "unhandled trap 6".  Launcher(start=...) sets the registers as the
    # kernel's LHREQ_INITIALIZE did, so the patch happens.
    mem.write(EIP, b"\x0f\x01\xc1")
    lg = Launcher(cpu, ScriptedBackend([6]), start=EIP)
    assert (cpu.regs.cs, cpu.regs.eip, cpu.regs.eflags) == (0x61, EIP, 0x202)
    res = lg.run(timeout=5)
    assert res == RunResult("dead", "script finished")
    assert mem.read(EIP, 3) == b"\xcd\x1f\x90"


def test_launcher_without_a_start_leaves_the_registers(cpu, mem):
    mem.write(EIP, b"\x0f\x01\xc1")
    cpu.regs.eip = EIP
    res = Launcher(cpu, ScriptedBackend([6])).run(timeout=5)
    assert res == RunResult("dead", f"unhandled trap 6 at {EIP:#x} (0x0)")
    assert mem.read(EIP, 3) == b"\x0f\x01\xc1"
