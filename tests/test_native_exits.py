"""Traps reflected and hypercalls done inside the Unicorn hook
(uh_reflectable, uh_hcall_here in _uchook.h).

A trap handle_trap would only reflect (count it, deliver_trap) is delivered
by the native hook through the same core call, and a FLUSH_ASYNC or
SET_CLOCKEVENT with an empty async ring is done there too; the guest runs
on without leaving the emulator.  These guests check that the result is the
run loop's to the bit: the same registers, memory, counters and kill
message whether the hook reflects (the default), the Python run loop does
(``native_direct=False``) or a trace is on (which turns the hook's
reflection off so every event is recorded).  Real i386 code, assembled at
test time.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("unicorn")
if shutil.which("as") is None or shutil.which("ld") is None:
    pytest.skip("binutils (as, ld) needed", allow_module_level=True)

import lguest  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402
from lguest.unicorn.backend import UnicornBackend  # noqa: E402

ENTRY = 0x1000
LGUEST_DATA = 0x8000
COUNTER = 0x9000

# LGUEST_INIT, a guest gate for vector VEC (GATE_HI: type and DPL), then
# N traps from a loop; the handler counts, re-enables interrupts (an
# interrupt gate cleared lguest_data.irq_enabled) and irets.  Finally hlt,
# which at ring 1 is #GP with no gate: the kill ends the run.
SOURCE = """
    .code32
    .globl _start
_start:
    mov $1, %eax; mov ${ld}, %ebx; vmcall
    mov $6, %eax; mov ${vec}, %ebx; mov $(0x610000 + (handler - _start + {entry}) & 0xffff), %ecx
    mov $(((handler - _start + {entry}) & 0xffff0000) | {gate_hi}), %edx; vmcall
    mov ${esp}, %esp
    mov ${n}, %ecx
1:  {insn}
    dec %ecx
    jnz 1b
    mov $0x1234, %esi
    hlt
handler:
    incl {counter}
    {skip}
    movl $0x200, {ld}
    iret
"""


def build(tmp: Path, *, vec: int, insn: str, n: int, gate_hi: int = 0xEE00, esp: int = 0x7000,
          skip: str = "") -> bytes:
    src = SOURCE.format(ld=LGUEST_DATA, vec=vec, entry=ENTRY, gate_hi=gate_hi, esp=esp, n=n, insn=insn,
                        counter=COUNTER, skip=skip)
    s, o, b = tmp / "g.s", tmp / "g.o", tmp / "g.bin"
    s.write_text(src)
    subprocess.run(["as", "--32", "-o", str(o), str(s)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", hex(ENTRY), "--oformat", "binary", "-o", str(b), str(o)],
                   check=True)
    return b.read_bytes()


def run(code: bytes, core: str, ring: bytes = b"", **kw) -> tuple[object, dict, dict, int]:
    with UnicornLauncher(memory=1 << 20, core=core, used_vectors=lguest.UsedVectors(used=range(32)), **kw) as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)  # an empty async ring
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)  # syscall_vec
        lg.memory.write_u32(LGUEST_DATA, 0x200)  # irq_enabled
        if ring:  # queued async hypercalls: status bytes 0, the calls at LD_HCALLS
            lg.memory.write(LGUEST_DATA + 20, b"\x00" * (len(ring) // 16))
            lg.memory.write(LGUEST_DATA + lguest.constants.LD_HCALLS, ring)
        res = lg.run(timeout=60)
        regs = {name: int(lg.cpu.regs.array[i]) for i, name in enumerate(lguest.REG_NAMES)}
        counter = lg.memory.read_u32(COUNTER)
        stats = lg.stats
    return (res.reason, res.message), regs, stats, counter


def _compare(code: bytes, core: str, n: int, **kw) -> dict:
    native = run(code, core, **kw)
    python = run(code, core, native_direct=False, **kw)
    traced = run(code, core, trace_size=16, **kw)
    assert native[:2] == python[:2] == traced[:2]  # the kill and every register
    assert native[3] == python[3] == traced[3] == n
    for key in {k for k in python[2] if k.startswith(("reflected_", "hypercall_", "irq", "blocks"))}:
        assert native[2].get(key) == python[2][key] == traced[2][key], key
    return native[2]


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_int3_through_an_interrupt_gate(tmp_path, core_name):
    n = 2000
    code = build(tmp_path, vec=3, insn="int3", n=n)
    stats = _compare(code, core_name, n)
    assert stats["reflected_3"] == n
    if core_name == "cython":  # the hook reflected them: the emulator never stopped for one
        assert stats.get("exits_trap", 0) < 5, stats
    else:  # the Python core has no native API: every trap stops
        assert stats["exits_trap"] >= n


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_a_fault_is_reflected_at_the_faulting_instruction(tmp_path, core_name):
    # #DE through an interrupt gate (a trap gate would be direct): the frame's eip is the div's; the handler
    # steps over the two-byte div (addl $2 to the saved eip) and counts.
    n = 300
    code = build(tmp_path, vec=0, insn="xor %eax, %eax; xor %edx, %edx; div %eax", n=n, gate_hi=0x8E00,
                 skip="addl $2, (%esp)")
    stats = _compare(code, core_name, n)
    assert stats["reflected_0"] == n


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_a_kill_by_the_frame_push_has_the_same_message(tmp_path, core_name):
    # The stack is outside guest RAM: the first push of the reflected frame kills.
    code = build(tmp_path, vec=3, insn="int3", n=10, esp=0xFFFFF000)
    native = run(code, core_name)
    python = run(code, core_name, native_direct=False)
    assert native[0] == python[0] == ("dead", "bad write address 0xffffeffc len 4")
    assert native[2].get("reflected_3") == python[2].get("reflected_3") == 1


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_no_gate_still_leaves_the_kill_to_the_run_loop(tmp_path, core_name):
    # A divide error (#DE, a fault: eip at the div) with a gate for 4 only.
    code = build(tmp_path, vec=4, insn="xor %eax, %eax; xor %edx, %edx; div %eax", n=10)
    native = run(code, core_name)
    python = run(code, core_name, native_direct=False)
    assert native[0] == python[0]
    assert native[0][1].startswith("unhandled trap 0 at ")


def test_a_guest_that_only_reflects_traps_still_times_out(tmp_path):
    # ~4 billion int3s, none of which leaves the emulator: the block hook's
    # deadline check alone bounds the run (containment, docs/SECURITY.md).
    import time

    code = build(tmp_path, vec=3, insn="int3", n=0xFFFFFFFF)
    with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32))) as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)
        t0 = time.monotonic()
        res = lg.run(timeout=0.3)
        elapsed = time.monotonic() - t0
        stats = lg.stats
    assert res.reason == "timeout"
    assert elapsed < 0.3 + 0.5
    assert stats["reflected_3"] > 0 and stats.get("exits_trap", 0) <= 2


# mov $num,%eax; mov $a1,%ebx; int $0x1f, keeping the loop's ecx
HCALL = "push %ecx; mov ${num}, %eax; mov ${a1}, %ebx; xor %ecx, %ecx; xor %edx, %edx; int $0x1f; pop %ecx"


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_flush_async_with_an_empty_ring(tmp_path, core_name):
    n = 2000
    code = build(tmp_path, vec=3, insn=HCALL.format(num=0, a1=0) + "; incl 0x9000", n=n)
    stats = _compare(code, core_name, n)
    assert stats["hypercall_0"] == n
    if core_name == "cython":
        assert stats.get("exits_trap", 0) < 5, stats


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_a_queued_async_call_takes_the_run_loops_path(tmp_path, core_name):
    # One FLUSH_ASYNC queued in the ring: the first hypercall runs it (the
    # run loop's path); once the ring is empty the hook does the rest.
    n = 200
    code = build(tmp_path, vec=3, insn=HCALL.format(num=0, a1=0) + "; incl 0x9000", n=n)
    stats = _compare(code, core_name, n, ring=bytes(16))
    assert stats["hypercall_0"] == n + 1


@pytest.mark.parametrize("core_name", ["cython", "python"])
@pytest.mark.parametrize("delta", [50_000_000_000, 1])
def test_set_clockevent_on_the_virtual_clock(tmp_path, core_name, delta):
    # Each call re-arms the clock event.  With a short delta the timer
    # fires (virtual time: the same block counts on every path), irq 0
    # through its interrupt gate; the handler is the same counting one.
    n = 1000
    code = build(tmp_path, vec=32, insn=HCALL.format(num=9, a1=delta), n=n)
    native, python = (run(code, core_name, clock="virtual", native_direct=nd) for nd in (True, False))
    traced = run(code, core_name, clock="virtual", trace_size=8)
    assert native[:2] == python[:2] == traced[:2]
    assert native[3] == python[3] == traced[3]
    keys = {k for k in python[2] if k.startswith(("hypercall_", "irq", "blocks", "vector_"))}
    assert {k: native[2].get(k) for k in keys} == {k: python[2][k] for k in keys}
    assert native[2]["hypercall_9"] == n
    if delta > 1_000_000:
        assert native[3] == 0
    else:
        assert native[3] > 0  # the timer fired
    if core_name == "cython":
        assert native[2].get("exits_trap", 0) < 5, native[2]


def test_an_exception_in_the_hypercall_handler_reaches_the_caller(tmp_path, monkeypatch):
    from lguest.host import hypercalls

    def boom(cpu, args, ctx):
        raise ZeroDivisionError("from the handler")

    monkeypatch.setitem(hypercalls.HYPERCALLS, 9, boom)
    # The compiled core does a virtual-clock SET_CLOCKEVENT in C
    # (uh_vclock_hcall) unless told not to: use the handler's path.
    monkeypatch.setattr(UnicornBackend, "native_vclock", False)
    code = build(tmp_path, vec=3, insn=HCALL.format(num=9, a1=1000), n=5)
    with pytest.raises(ZeroDivisionError, match="from the handler"):
        run(code, "cython")


def _count_python_clockevents(monkeypatch) -> list[int]:
    """Count the SET_CLOCKEVENTs that reach the Python handler."""
    from lguest.host import hypercalls

    calls: list[int] = []
    orig = hypercalls.HYPERCALLS[9]

    def counted(cpu, args, ctx):
        calls.append(args.arg1)
        orig(cpu, args, ctx)

    monkeypatch.setitem(hypercalls.HYPERCALLS, 9, counted)
    return calls


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_set_clockevent_on_the_wall_clock_fires_once_per_arm(tmp_path, core_name, monkeypatch):
    # Each turn arms the wall clock 20 us ahead and spins until the timer's
    # irq 0 (through the vector-32 interrupt gate) has bumped the counter:
    # one-shot, so exactly one fire per arm on every path.  On the compiled
    # core the hook arms the native wheel itself: only the first arm (which
    # links the timer and starts the wheel's thread) reaches Python.
    n = 50
    wait = "mov 0x9000, %esi; " + HCALL.format(num=9, a1=20_000) + "; 2: cmp 0x9000, %esi; je 2b"
    code = build(tmp_path, vec=32, insn=wait, n=n)
    calls = _count_python_clockevents(monkeypatch)
    native = run(code, core_name, clock="wall")
    native_calls = len(calls)
    python = run(code, core_name, clock="wall", native_direct=False)
    assert native[:2] == python[:2]
    assert native[3] == python[3] == n
    assert native[2]["hypercall_9"] == python[2]["hypercall_9"] == n
    assert len(calls) - native_calls == n  # the run loop calls the handler for each
    assert native_calls == (1 if core_name == "cython" else n)


@pytest.mark.parametrize("last", [0, 2_000_000_000])
def test_set_clockevent_in_the_hook_arms_and_cancels_the_native_timer(tmp_path, last, monkeypatch):
    # 300 arms 2 s ahead, the last turn followed by one more call: 0
    # cancels, else it re-arms.  The cpu's timer on the NativeClock is what
    # CpuTimer.set_clockevent would leave.
    n = 300
    arm = HCALL.format(num=9, a1=2_000_000_000)
    insn = arm + "; cmp $1, %ecx; jne 3f; " + HCALL.format(num=9, a1=last) + "; 3:"
    code = build(tmp_path, vec=32, insn=insn, n=n)
    calls = _count_python_clockevents(monkeypatch)
    with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32)),
                         clock="wall") as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)  # an empty async ring
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)  # syscall_vec
        lg.memory.write_u32(LGUEST_DATA, 0x200)
        t0 = lg.guest.clock.now_ns()
        res = lg.run(timeout=60)
        t1 = lg.guest.clock.now_ns()
        assert res.reason == "dead" and str(res.message).startswith("unhandled trap 13"), res
        armed = lg.guest.clock.armed(lg.cpu)
        assert lg.stats["hypercall_9"] == n + 1
    assert len(calls) == 1  # the first arm; the hook did the rest
    if last == 0:
        assert armed is None
    else:
        assert t0 + last <= armed <= t1 + last


def test_set_clockevent_0_on_the_wall_clock_stays_in_the_hook(tmp_path, monkeypatch):
    # Cancelling is the same C call whether or not the timer was ever
    # armed, so not even the first one needs Python; the path's result is
    # the run loop's.
    n = 500
    code = build(tmp_path, vec=32, insn=HCALL.format(num=9, a1=0), n=n)
    calls = _count_python_clockevents(monkeypatch)
    native = run(code, "cython", clock="wall")
    assert calls == []
    python = run(code, "cython", clock="wall", native_direct=False)
    assert native[:2] == python[:2] and native[3] == python[3] == 0
    assert native[2]["hypercall_9"] == python[2]["hypercall_9"] == n
    assert len(calls) == n
