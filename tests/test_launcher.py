"""The Launcher side (ABI.md §5 "Launcher side", API.md UnicornLauncher
semantics) driven by a ScriptedBackend, on both cores: the early console
(NOTIFY of a NUL-terminated string), console sinks, send_irq, break_out from
another thread, and the RunResult reasons.
"""

from __future__ import annotations

import threading
import time

import pytest

from lguest.launcher import Launcher, RunResult
from lguest.run import Backend, ScriptedBackend

LD = 0x1000
LD_IRQ_ENABLED, LD_BLOCKED, LD_STATUS = 0, 4, 20
EIP = 0x5000
STACK = 0x8000
IRQ_HANDLER = 0x6000


def set_regs(cpu, **values):
    for name, value in values.items():
        setattr(cpu.regs, name, value)


def hc(n, a1=0, a2=0, a3=0):
    return dict(eax=n, ebx=a1, ecx=a2, edx=a3, trapnum=31)


def prepare(cpu, mem):
    cpu.guest.lguest_data = LD
    mem.write_u32(LD + LD_IRQ_ENABLED, 0x200)
    mem.write_u32(LD + LD_BLOCKED, 0)
    mem.write(LD + LD_STATUS, b"\xff" * 64)
    set_regs(cpu, eip=EIP, cs=0x61, eflags=0x202, esp=STACK, ss=0x69, ds=0x69, es=0x69)
    return cpu


@pytest.fixture
def kcpu(cpu, mem):
    return prepare(cpu, mem)


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
    mem.write(LD + LD_STATUS, b"\x00")
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
