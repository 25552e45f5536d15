"""SET_CLOCKEVENT on the virtual clock done in C inside the Unicorn hook
(uh_vclock_hcall in lguest/unicorn/_uchook.h, VirtualClock's native words).

The same guest runs with the C path on (the default), off
(``UnicornBackend.native_vclock = False``: the hook calls the Python
handler) and with the run loop doing every hypercall
(``native_direct=False``); every observable must be the same: each timer
interrupt the guest took (where, at which loop turn, the timestamp lguest
wrote), the final registers, the counters, the stats and the clock's state.
The deltas are hostile on purpose: 0 (cancel), 1 ns, 0xFFFFFFFF, and a
clock started next to INT64_MAX so that advancing or arming overflows.
Real i386 code, assembled at test time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("unicorn")
if shutil.which("as") is None or shutil.which("ld") is None:
    pytest.skip("binutils (as, ld) needed", allow_module_level=True)

from test_native_exits import COUNTER, ENTRY, LGUEST_DATA, build  # noqa: E402

import lguest  # noqa: E402
from lguest.clock import VirtualClock  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402
from lguest.unicorn.backend import UnicornBackend  # noqa: E402

LOG, CURSOR, LOG_END = 0x10000, COUNTER + 4, 0x30000

# The timer handler (vector 32, after the shared one's `incl COUNTER`) logs
# each interrupt: the eip it interrupted, the loop counter and the
# timestamp lguest_data.time held (written by the host at the delivery).
LOGGER = (f"push %eax; push %ebx; mov {CURSOR}, %ebx; cmp ${LOG_END}, %ebx; jae 9f; "
          "mov 8(%esp), %eax; mov %eax, (%ebx); mov %ecx, 4(%ebx); "
          f"mov {LGUEST_DATA + 12}, %eax; mov %eax, 8(%ebx); mov {LGUEST_DATA + 16}, %eax; mov %eax, 12(%ebx); "
          f"add $16, %ebx; mov %ebx, {CURSOR}; 9: pop %ebx; pop %eax")

# One loop turn: SET_CLOCKEVENT(delta(ecx)) then a busy wait of `spin`
# blocks.  delta: (ecx * 7919) & mask, 0xFFFFFFFF every 64th turn, 0 (a
# cancel) every 32nd other one.
TURN = ("push %ecx; mov %ecx, %ebx; imul $7919, %ebx; and ${mask}, %ebx; "
        "test $31, %ecx; jnz 4f; xor %ebx, %ebx; test $63, %ecx; jnz 4f; mov $0xFFFFFFFF, %ebx; "
        "4: mov $9, %eax; xor %ecx, %ecx; xor %edx, %edx; int $0x1f; "
        "mov ${spin}, %ecx; 5: dec %ecx; jnz 5b; pop %ecx")


def guest(tmp: Path, *, n: int, mask: int = 0x1FF, spin: int = 30) -> bytes:
    return build(tmp, vec=32, insn=TURN.format(mask=mask, spin=spin), n=n, skip=LOGGER)


def run(code: bytes, core: str, monkeypatch: pytest.MonkeyPatch, *, native_vclock: bool = True,
        start_ns: int | None = None, **kw) -> dict:
    """Everything observable about a run (an exception raised by run() included)."""
    monkeypatch.setattr(UnicornBackend, "native_vclock", native_vclock)
    with UnicornLauncher(memory=1 << 20, core=core, used_vectors=lguest.UsedVectors(used=range(32)),
                         clock="virtual", **kw) as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)  # an empty async ring
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)  # syscall_vec
        lg.memory.write_u32(LGUEST_DATA, 0x200)  # irq_enabled
        lg.memory.write_u32(CURSOR, LOG)
        clock = lg.guest.clock
        if start_ns is not None:
            clock.cell[0] = start_ns
        try:
            res = lg.run(timeout=60)
            outcome: object = (res.reason, res.message)
        except Exception as e:  # noqa: BLE001 -- compared between the paths
            outcome = (type(e).__name__, str(e))
        log = lg.memory.read(LOG, lg.memory.read_u32(CURSOR) - LOG)
        return {
            "outcome": outcome,
            "regs": [int(x) for x in lg.cpu.regs.array],
            "counter": lg.memory.read_u32(COUNTER),
            "log": [tuple(int.from_bytes(log[i + k:i + k + 4], "little") for k in (0, 4, 8, 12))
                    for i in range(0, len(log), 16)],
            "stats": {k: v for k, v in lg.stats.items() if not k.startswith(("exits_", "entries", "stop_"))},
            "exits": {k: v for k, v in lg.stats.items() if k.startswith(("exits_", "entries", "stop_"))},
            "clock": (clock.now_ns(), clock.fired, clock.armed(lg.cpu), clock.next_expiry()),
            "blocks": lg.backend.hooks.blocks,
        }


def _python_handler_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from lguest.host import hypercalls

    calls: list[int] = []
    orig = hypercalls.HYPERCALLS[9]

    def counted(cpu, args, ctx):
        calls.append(args.arg1)
        orig(cpu, args, ctx)

    monkeypatch.setitem(hypercalls.HYPERCALLS, 9, counted)
    return calls


def _same(a: dict, b: dict, *, exits: bool = True) -> None:
    for key in a:
        if key != "exits" or exits:
            assert a[key] == b[key], key


@pytest.mark.parametrize("core_name", ["cython", "python"])
@pytest.mark.parametrize("mask,spin", [(0x1FF, 30), (0x3, 1), (0xFFFF, 200)])
def test_the_c_path_is_the_python_path(tmp_path, core_name, mask, spin, monkeypatch):
    n = 600
    code = guest(tmp_path, n=n, mask=mask, spin=spin)
    calls = _python_handler_calls(monkeypatch)
    native = run(code, core_name, monkeypatch)
    c_calls = len(calls)
    hooked = run(code, core_name, monkeypatch, native_vclock=False)
    looped = run(code, core_name, monkeypatch, native_direct=False)
    _same(native, hooked)  # the same stops too: neither leaves the emulator
    _same(native, looped, exits=False)
    assert native["outcome"][0] == "dead" and native["counter"] == len(native["log"]) > 0
    assert native["stats"]["hypercall_9"] == n
    if core_name == "cython":
        assert c_calls == 0  # every one done in C
        assert native["exits"].get("exits_trap", 0) < 5, native["exits"]
        if mask != 0xFFFF:
            assert native["clock"][1] > 50  # many fires, in C


@pytest.mark.parametrize("core_name", ["cython", "python"])
@pytest.mark.parametrize("start", [(1 << 63) - 1 - 3000, (1 << 63) - 1 - 0xFFFFFFFF - 5000, (1 << 63) - 1])
def test_overflowing_time_is_the_python_paths(tmp_path, core_name, start, monkeypatch):
    # A clock next to INT64_MAX: an arm past it (check_expiry) or an advance
    # past it (the cell) raises in Python; the C path leaves exactly those
    # calls to Python, which raises from run() with the same state.
    code = guest(tmp_path, n=200, mask=0x1FF, spin=30)
    native = run(code, core_name, monkeypatch, start_ns=start)
    hooked = run(code, core_name, monkeypatch, start_ns=start, native_vclock=False)
    looped = run(code, core_name, monkeypatch, start_ns=start, native_direct=False)
    _same(native, hooked)
    _same(native, looped, exits=False)
    assert native["outcome"][0] in ("ValueError", "OverflowError"), native["outcome"]


def test_another_timer_on_the_clock_takes_the_python_path(tmp_path, monkeypatch):
    # A second timer armed on the clock (another key): its callback is
    # Python's and may run inside an advance, so every call goes to Python,
    # and the result is still the same on both paths.
    code = guest(tmp_path, n=300)
    calls = _python_handler_calls(monkeypatch)
    results = []
    for native_vclock in (True, False):
        fired: list[int] = []
        monkeypatch.setattr(UnicornBackend, "native_vclock", native_vclock)
        with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32)),
                             clock="virtual") as lg:
            lg.load_flat(code, ENTRY, ENTRY)
            lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)
            lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)
            lg.memory.write_u32(LGUEST_DATA, 0x200)
            lg.memory.write_u32(CURSOR, LOG)
            clock = lg.guest.clock
            clock.arm("other", 20_000, lambda clock=clock, fired=fired: fired.append(clock.now_ns()))
            res = lg.run(timeout=60)
            results.append((res.reason, fired, lg.memory.read(LOG, lg.memory.read_u32(CURSOR) - LOG),
                            clock.now_ns(), clock.fired, clock.armed(lg.cpu), lg.stats["hypercall_9"]))
    assert results[0] == results[1]
    assert results[0][1] == [20_000]
    # Off: all 300 through the handler; on: those until "other" fired,
    # then the cpu's event is alone on the clock and C does the rest.
    assert 300 < len(calls) < 600


def test_the_clock_keeps_the_event_across_binding(monkeypatch):
    # VirtualClock's native words are the truth for the bound key: arm,
    # cancel, next_expiry, armed and advance see the same timer whichever
    # side armed it, ties fire in arm order, and unbinding puts it back.
    clock = VirtualClock()
    order: list[str] = []

    class Key:
        def _clock_fired(self) -> None:
            order.append("cpu")

    cpu = Key()
    clock.arm(cpu, 100, cpu._clock_fired)
    clock.arm("b", 100, lambda: order.append("b"))
    clock._bind_native(cpu, cpu._clock_fired)
    assert clock.armed(cpu) == 100 and clock.next_expiry() == 100
    assert clock.native[6] == 1  # one other timer: the hook leaves calls to Python
    clock.advance(100)
    assert order == ["cpu", "b"] and clock.fired == 2 and clock.native[6] == 0
    clock.arm("c", 150, lambda: order.append("c"))
    clock.arm(cpu, 150, lambda: order.append("other callback"))
    assert clock.native[3] == 0  # not the cpu's own event: never fired by the hook
    clock._unbind_native()
    assert clock.armed(cpu) == 150 and clock.native[2] == 0
    clock.advance(100)
    assert order == ["cpu", "b", "c", "other callback"] and clock.fired == 4
    assert clock.next_expiry() is None


def test_closing_the_launcher_puts_the_event_back(tmp_path, monkeypatch):
    code = guest(tmp_path, n=50, mask=0xFFFF, spin=1)
    with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32)),
                         clock="virtual") as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)
        lg.memory.write_u32(LGUEST_DATA, 0x200)
        lg.memory.write_u32(CURSOR, LOG)
        lg.run(timeout=60)
        clock, cpu = lg.guest.clock, lg.cpu
        armed = clock.armed(cpu)
        assert armed is not None
    assert clock._nkey is not cpu  # unbound
    assert clock.armed(cpu) == armed


@pytest.mark.parametrize("native_vclock", [True, False])
def test_an_event_armed_in_the_hook_fires_before_a_later_arm_at_the_same_time(tmp_path, native_vclock,
                                                                               monkeypatch):
    # Timers due at the same time fire in arm order: the hook's arms draw
    # from the clock's one sequence counter.  After the run the cpu's event
    # (armed last by the guest) is still pending; another timer armed now
    # for the same instant must fire after it and see irq 0 raised.
    monkeypatch.setattr(UnicornBackend, "native_vclock", native_vclock)
    code = guest(tmp_path, n=50, mask=0xFFFF, spin=1)
    with UnicornLauncher(memory=1 << 20, core="cython", used_vectors=lguest.UsedVectors(used=range(32)),
                         clock="virtual") as lg:
        lg.load_flat(code, ENTRY, ENTRY)
        lg.memory.write(LGUEST_DATA + 20, b"\xff" * 64)
        lg.memory.write_u32(LGUEST_DATA + 1132, 0x80)
        lg.memory.write_u32(LGUEST_DATA, 0x200)
        lg.memory.write_u32(CURSOR, LOG)
        lg.run(timeout=60)
        clock, cpu = lg.guest.clock, lg.cpu
        due = clock.armed(cpu)
        assert due is not None and cpu.irqs_pending == 0
        seen: list[int] = []
        clock.arm("x", due, lambda: seen.append(cpu.irqs_pending & 1))
        clock.advance(due - clock.now_ns())
        assert seen == [1] and clock.armed(cpu) is None


def test_a_clock_keeps_one_key_in_its_native_words(tmp_path):
    # A clock already keeping another key's event (a clock shared by two
    # cpus) is not taken over: the second binding is refused and that
    # cpu's calls go through the handler.
    with UnicornLauncher(memory=1 << 20, core="cython", clock="virtual") as lg:
        lg.load_flat(guest(tmp_path, n=1), ENTRY, ENTRY)
        clock, hooks = lg.guest.clock, lg.backend.hooks
        assert clock._native_key() is lg.cpu
        assert hooks.set_virtual_clock(None, None, 1) is False and clock._native_key() is None
        clock._bind_native("someone", lambda: None)
        assert hooks.set_virtual_clock(lg.cpu, clock, 10) is False
        assert clock._native_key() == "someone"
        clock._unbind_native()
        assert hooks.set_virtual_clock(lg.cpu, clock, 10) is True and clock._native_key() is lg.cpu
        with pytest.raises(ValueError):
            hooks.set_virtual_clock(lg.cpu, clock, 0)


@pytest.mark.parametrize("core_name", ["cython", "python"])
def test_a_huge_block_length_is_the_python_paths(tmp_path, core_name, monkeypatch):
    # (blocks run) x ns_per_block past INT64_MAX: the advance raises in
    # Python (to_range), so the C path must leave that call to it.
    monkeypatch.setattr(UnicornLauncher, "ns_per_block", 1 << 61)
    code = guest(tmp_path, n=100, mask=0x1FF, spin=30)
    native = run(code, core_name, monkeypatch)
    hooked = run(code, core_name, monkeypatch, native_vclock=False)
    looped = run(code, core_name, monkeypatch, native_direct=False)
    _same(native, hooked)
    _same(native, looped, exits=False)
    assert native["outcome"][0] in ("ValueError", "OverflowError"), native["outcome"]
