"""Host-side misuse raises clear Python exceptions; it never crashes the process."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

import lguest


@pytest.fixture
def host() -> lguest.Host:
    return lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))


def test_memory_sizes() -> None:
    for bad in (0, -4096, 4095, 4097, 1.5, True):
        with pytest.raises(ValueError):
            lguest.GuestMemory(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lguest.GuestMemory((1 << 32) + 4096)
    with pytest.raises(TypeError):
        lguest.GuestMemory.from_mmap(bytearray(4096))  # type: ignore[arg-type]


def test_closed_memory_everywhere(core, host) -> None:
    mem = lguest.GuestMemory(4 * 4096)
    guest = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    mem.close()
    mem.close()  # idempotent
    assert mem.closed
    for call in (
        cpu.maybe_do_interrupt,
        lambda: cpu.deliver_trap(0),
        lambda: cpu.set_guest_interrupt(0, 0x8E00, False),
        lambda: cpu.guest_set_stack(0x69, 0x1000, 1),
        cpu.pin_stack_pages,
        lambda: cpu.load_guest_idt_entry(3, 0, 0x8F00),
        cpu.write_timestamp,
        lambda: cpu.lgread(0, 4),
        lambda: cpu.lgwrite(0, b"x"),
        lambda: guest.guest_pa(0),
        lambda: guest.pin_page(0),
        lambda: mem.read(0, 1),
        lambda: mem.write_u32(0, 1),
        lambda: mem.address,
        lambda: memoryview(mem),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    # A closed memory cannot take new guests either.
    with pytest.raises(ValueError):
        host.new_guest(mem, page_offset=0, core=core)


def test_memory_cannot_close_under_a_live_view() -> None:
    mem = lguest.GuestMemory(4096)
    view = memoryview(mem)
    with pytest.raises(BufferError):
        mem.close()
    view[0] = 7
    view.release()
    assert mem.read(0, 1) == b"\x07"
    mem.close()


def test_from_mmap_is_pinned() -> None:
    mm = mmap.mmap(-1, 2 * 4096)
    mem = lguest.GuestMemory.from_mmap(mm)
    with pytest.raises(BufferError):
        mm.close()  # the core may hold a raw pointer: the mapping stays
    mem.close()
    mm.close()  # now it can go


@pytest.mark.parametrize("value", [-1, 1 << 32, 1 << 70])
def test_u32_arguments_out_of_range(core, host, value: int) -> None:
    guest = host.new_guest(lguest.GuestMemory(4096), page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    for call in (
        lambda: cpu.deliver_trap(value),
        lambda: cpu.load_guest_idt_entry(value, 0, 0),
        lambda: cpu.load_guest_idt_entry(0, value, 0),
        lambda: cpu.set_guest_interrupt(0, value, False),
        lambda: cpu.guest_set_stack(0x69, value, 1),
        lambda: cpu.set_clockevent(value),
        lambda: setattr(cpu.regs, "eip", value),
        lambda: setattr(cpu, "esp1", value),
        lambda: setattr(guest, "lguest_data", value),
        lambda: setattr(guest, "noirq_end", value),
        lambda: guest.guest_pa(value),
    ):
        with pytest.raises(ValueError):
            call()
    assert guest.dead is None  # misuse is not the guest's fault


@pytest.mark.parametrize("irq", [-1, 32, 1000])
def test_send_irq_range(core, host, irq: int) -> None:
    cpu = host.new_guest(lguest.GuestMemory(4096), page_offset=0, core=core).new_cpu()
    with pytest.raises(ValueError):
        cpu.send_irq(irq)
    assert cpu.irqs_pending == 0


def test_non_integers_are_type_errors(core, host) -> None:
    cpu = host.new_guest(lguest.GuestMemory(4096), page_offset=0, core=core).new_cpu()
    with pytest.raises(TypeError):
        cpu.deliver_trap(1.0)
    with pytest.raises(TypeError):
        cpu.send_irq("3")
    cpu.deliver_trap(np.uint32(5))  # numpy integers are integers


@pytest.mark.parametrize("vector", [-1, 256, 1 << 40])
def test_vectors_out_of_range(vector: int) -> None:
    with pytest.raises(ValueError):
        lguest.Host(syscall_vector=vector)
    table = lguest.UsedVectors()
    with pytest.raises(ValueError):
        table.reserve(vector)
    with pytest.raises(ValueError):
        table.release(vector)
    with pytest.raises(ValueError):
        lguest.UsedVectors(used=[vector])


def test_copy_traps_argument_shapes(core, host) -> None:
    cpu = host.new_guest(lguest.GuestMemory(4096), page_offset=0, core=core).new_cpu()
    good = np.zeros((256, 2), np.uint32)
    defaults = np.zeros(256, np.uint32)
    for idt in (np.zeros((255, 2), np.uint32), np.zeros((256, 2), np.int64), [[0, 0]] * 256):
        with pytest.raises(ValueError):
            cpu.copy_traps(idt, defaults)
    readonly = good.copy()
    readonly.flags.writeable = False
    with pytest.raises(ValueError):
        cpu.copy_traps(readonly, defaults)
    with pytest.raises(ValueError):
        cpu.copy_traps(good, np.zeros(255, np.uint32))
    with pytest.raises(ValueError):
        cpu.copy_traps(good, np.full(256, -1))
    cpu.copy_traps(good, list(range(256)))  # any integer sequence of u32 handlers


def test_cpu_after_death_keeps_working_and_run_reports_it(core, host) -> None:
    from lguest.host.run import GuestKilled, ScriptedBackend, run_guest

    guest = host.new_guest(lguest.GuestMemory(4 * 4096), page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    guest.kill("first")
    guest.kill("second")
    assert guest.dead == "first"
    # Core operations still run, as the kernel's do after kill_guest().
    cpu.load_guest_idt_entry(3, 0x00001000, 0x00008F00)
    assert cpu.idt[3].tolist() == [0x00611000, 0x00008F00]
    with pytest.raises(GuestKilled) as info:
        run_guest(cpu, ScriptedBackend([]))
    assert info.value.message == "first" and not info.value.restart


def test_syscall_vector_is_fixed_once_guests_exist(core) -> None:
    host = lguest.Host(syscall_vector=0x40, used_vectors=lguest.UsedVectors())
    host.syscall_vector = 0x41  # still configurable
    host.new_guest(lguest.GuestMemory(4096), page_offset=0, core=core)
    with pytest.raises(AttributeError):
        host.syscall_vector = 0x42


def test_notify_outside_memory_ends_the_guest(core, host) -> None:
    from lguest.host.launcher import Launcher
    from lguest.host.run import ScriptedBackend

    guest = host.new_guest(lguest.GuestMemory(4 * 4096), page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    guest.lguest_data = 0  # already initialised
    guest.memory.write(20, b"\xff" * 64)  # empty hypercall ring
    result = Launcher(cpu, ScriptedBackend([{"trapnum": 31, "eax": 17, "ebx": 0x4000}])).run(timeout=5)
    assert result.reason == "dead" and result.message == "Bad NOTIFY 0x4000"


# =====================================================================================
# Misuse that used to crash the process (segfault / use-after-free / livelock).  Each
# runs in a subprocess: a signal or a hang is a test failure, not a dead pytest.
# =====================================================================================
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
import weakref  # noqa: E402

from lgtest import load_core_or_fail  # noqa: E402

from lguest import validate  # noqa: E402


def run_isolated(code: str, timeout: float = 60.0) -> str:
    """Run ``code`` in a fresh interpreter; fail on a signal, a hang or an error."""
    prelude = "import lguest, numpy as np\nfrom lguest import _core, fallback\n"
    try:
        proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s (livelock?)")
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: killed by a signal)\n{proc.stderr[-3000:]}"
    return proc.stdout


def _guest(core, mem=None, clock=None):
    host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
    mem = mem if mem is not None else lguest.GuestMemory(4 * 4096)
    return host.new_guest(mem, page_offset=0, clock=clock or lguest.VirtualClock(), core=core)


def test_hold_blocks_close_from_any_thread(core) -> None:
    mem = lguest.GuestMemory(4 * 4096)
    guest = _guest(core, mem)
    errors: list[BaseException] = []
    with mem.hold():
        with mem.hold():  # holds nest
            assert mem.held == 2
        t = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, mem.close).value))
        t.start()
        t.join(10)
        assert errors and "in use" in str(errors[0])
        assert not mem.closed and guest.guest_pa(5) == 5
    assert mem.held == 0
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        with mem.hold():
            pass


def test_close_during_a_nogil_loop_raises_instead_of_crashing() -> None:
    # bench_deliver runs lg_maybe_do_interrupt without the GIL: a close()
    # from another thread used to NULL the memory pointer under it (SIGSEGV).
    out = run_isolated("""
        import threading
        mem = lguest.GuestMemory(16 * 4096)
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        guest = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=_core)
        cpu = guest.new_cpu()
        guest.lguest_data = 0
        mem.write_u32(0, 0x200)
        cpu.idt[32] = (0x00610000, 0x8E00 | 0x8000)
        cpu.regs.ss, cpu.regs.esp = 0x69, 0x8000
        started = threading.Event()
        def loop():
            started.set()
            _core.bench_deliver(cpu, 0, 3_000_000)
        t = threading.Thread(target=loop); t.start(); started.wait()
        refused = 0
        while t.is_alive():
            try:
                mem.close()
                break
            except RuntimeError:
                refused += 1
        t.join()
        mem.close()
        print("refused", refused, mem.closed)
    """)
    assert out.split()[-1] == "True"


def test_memory_init_runs_once() -> None:
    # A second __init__ used to remap: guests kept the old, unmapped address.
    run_isolated("""
        mem = lguest.GuestMemory(4 * 4096)
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        cpu = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=_core).new_cpu()
        try:
            mem.__init__(64 * 4096)
        except RuntimeError as e:
            assert "already initialised" in str(e)
        else:
            raise AssertionError("re-init accepted")
        import gc; gc.collect()
        cpu.lgwrite(0, b"x" * 4096)
        assert mem.read(0, 2) == b"xx" and mem.size == 4 * 4096
    """)
    mem = lguest.GuestMemory(4096)
    mem.close()
    with pytest.raises(RuntimeError):
        mem.__init__(4096)


def test_from_mmap_sizes_by_the_exported_buffer() -> None:
    # A subclass lying in __len__ used to size the guest past the mapping.
    run_isolated("""
        import mmap
        class Liar(mmap.mmap):
            def __len__(self):
                return 1 << 30
        mm = Liar(-1, 2 * 4096)
        mem = lguest.GuestMemory.from_mmap(mm)
        assert mem.size == 2 * 4096, mem.size
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        cpu = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=_core).new_cpu()
        assert cpu.lgwrite(1 << 29, b"boom") is False
        assert cpu.guest.dead == "bad write address 0x20000000 len 4"
    """)
    for bad in (mmap.mmap(-1, 4096 + 100),):
        with pytest.raises(ValueError):
            lguest.GuestMemory.from_mmap(bad)
    closed = mmap.mmap(-1, 4096)
    closed.close()
    with pytest.raises(ValueError):
        lguest.GuestMemory.from_mmap(closed)


HALF_BUILT_CALLS = {
    "Guest": ["dead", "lguest_data", "pgdir", "noirq_start", "stack_pages", "memory", "host", "clock",
              "cpus", "restart", "kernel_address", "page_offset", "pfn_limit",
              "kill('x')", "address_ok(0, 4)", "ld_read_u32(0)", "ld_write_u32(0, 1)", "guest_pa(0)",
              "pin_page(0)", "check_syscall_vector()", "could_be_syscall(0x80)", "direct_trap(3)",
              "new_cpu()"],
    "Cpu": ["regs", "idt", "gdt", "guest", "id", "esp1", "ss1", "halted", "changed", "irqs_pending",
            "irq_counts", "ts", "next_hcall", "break_out", "hcall_pending", "pending_notify",
            "wake()", "wait_for_wakeup(0)", "lgread(0, 4)", "lgwrite(0, b'x')", "set_guest_interrupt(0, 0x8e00, 0)",
            "maybe_do_interrupt()", "deliver_trap(3)", "pin_stack_pages()", "guest_set_stack(0x69, 0x1000, 1)",
            "load_guest_idt_entry(3, 0, 0x8f00)", "copy_traps(np.zeros((256, 2), np.uint32), np.zeros(256, np.uint32))",
            "set_clockevent(5)", "write_timestamp()", "send_irq(1)"],
}


@pytest.mark.parametrize("core_name", ["python", "cython"])
def test_half_built_objects_raise_runtime_error(core_name: str) -> None:
    # Cpu.__new__(Cpu) used to dereference NULL on repr() or any method.
    load_core_or_fail(core_name)
    mod = "fallback" if core_name == "python" else "_core"
    out = run_isolated(f"""
        import pickle
        mod = {mod}
        calls = {HALF_BUILT_CALLS!r}
        for name, exprs in calls.items():
            cls = getattr(mod, name)
            class Sub(cls):
                def __init__(self, *a, **k):
                    pass  # forgets super().__init__
            for obj in (cls.__new__(cls), Sub()):
                assert "uninitialised" in repr(obj), repr(obj)
                try:
                    pickle.dumps(obj)
                except TypeError:
                    pass
                else:
                    raise AssertionError("pickled " + name)
                for expr in exprs:
                    try:
                        eval("obj." + expr, {{"obj": obj, "np": np}})
                    except RuntimeError as e:
                        assert "not initialised" in str(e)
                    else:
                        raise AssertionError(name + "." + expr + " did not raise")
                for attr, value in (("esp1", 1), ("halted", True), ("noirq_end", 3), ("restart", True)):
                    if hasattr(cls, attr):
                        try:
                            setattr(obj, attr, value)
                        except RuntimeError:
                            pass
                        else:
                            raise AssertionError("set " + name + "." + attr)
        # A Cpu cannot be built on a half-built Guest either.
        try:
            mod.Cpu(mod.Guest.__new__(mod.Guest))
        except RuntimeError:
            pass
        else:
            raise AssertionError("Cpu on a half-built Guest")
        # Regs is built in __new__/__cinit__: usable without __init__.
        r = mod.Regs.__new__(mod.Regs)
        assert r.eax == 0 and r.array.shape == (18,)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_init_twice_is_refused(core) -> None:
    guest = _guest(core)
    cpu = guest.new_cpu()
    with pytest.raises(RuntimeError):
        guest.__init__(guest.host, guest.memory)
    with pytest.raises(RuntimeError):
        cpu.__init__(guest)
    for obj in (guest, cpu, cpu.regs):
        with pytest.raises(TypeError, match="cannot pickle"):
            pickle.dumps(obj)


@pytest.mark.parametrize("cell", [np.zeros(0, np.int64), np.zeros(1, np.int32), np.zeros(1, ">i8"),
                                  np.zeros(4, np.int64)[::2][:1][::-1][:0], np.zeros((1, 1), np.int64), [0]])
def test_clock_cell_is_checked_at_bind_time(core, cell) -> None:
    # The compiled core reads cell[0] through a raw pointer: an empty cell
    # was read out of bounds.
    class BadClock:
        realtime = False

        def __init__(self) -> None:
            self.cell = cell

        def now_ns(self) -> int:
            return 0

    with pytest.raises(ValueError, match="cell"):
        _guest(core, clock=BadClock())


def test_native_api_capsule_owns_its_cpu() -> None:
    _core = load_core_or_fail("cython")
    guest = _guest(_core)
    cpu = _core.Cpu(guest)  # not guest.new_cpu(): guest.cpus would keep it alive
    ref = weakref.ref(cpu)
    capsule = _core.native_api(cpu)
    del cpu
    import gc
    gc.collect()
    assert ref() is not None, "the capsule's raw cpu pointer outlived the cpu"
    del capsule
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("period", [-1, 0, 1, 1000, validate.MIN_TIMER_PERIOD_NS - 1, 1 << 63, 1.5e4, None, True])
def test_periodic_timer_below_minimum_is_refused(period) -> None:
    _core = load_core_or_fail("cython")
    clock = _core.NativeClock()
    cpu = _guest(_core, clock=clock).new_cpu()
    with pytest.raises(ValueError if isinstance(period, int) and not isinstance(period, bool) else TypeError):
        clock.arm_periodic(cpu, period)
    assert clock.armed(cpu) is None


def test_tiny_periodic_timer_cannot_freeze_python_threads() -> None:
    # A 1 ns period used to keep the wheel thread behind forever with its
    # mutex held; the next set_clockevent (GIL held) then froze everything.
    run_isolated("""
        import time
        clock = _core.NativeClock()
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        cpu = host.new_guest(lguest.GuestMemory(4096), page_offset=0, clock=clock, core=_core).new_cpu()
        try:
            clock.arm_periodic(cpu, 1)
        except ValueError:
            pass
        time.sleep(0.2)                          # (the old wheel thread fell behind for good here)
        cpu.set_clockevent(1_000_000)
        clock.arm_periodic(cpu, 10_000)          # the minimum: must stay responsive
        t0 = time.monotonic()
        for _ in range(200):
            cpu.set_clockevent(1_000_000)
            clock.arm_periodic(cpu, 10_000)
        clock.cancel(cpu)
        assert time.monotonic() - t0 < 20
    """, timeout=60)


def test_guest_clockevent_deltas_are_unchanged(core) -> None:
    # The guest-visible path keeps the seed's treatment: any u32 is a delta.
    clock = lguest.VirtualClock()
    cpu = _guest(core, clock=clock).new_cpu()
    for delta in (1, 2, 9_999, 0xFFFFFFFF):
        cpu.set_clockevent(delta)
        assert clock.armed(cpu) == delta
    cpu.set_clockevent(0)
    assert clock.armed(cpu) is None


# --- one argument rule for both cores (lguest.validate) -----------------------------------
HOSTILE = [(-1, ValueError), (1 << 32, ValueError), (1 << 80, ValueError), (np.int64(-1), ValueError),
           (1.0, TypeError), (None, TypeError), (True, TypeError), (np.bool_(True), TypeError),
           ("1", TypeError), (b"\x01", TypeError), (np.float64(2.0), TypeError)]


@pytest.mark.parametrize(("value", "exc"), HOSTILE)
def test_every_u32_argument_follows_one_rule(core, value, exc) -> None:
    guest = _guest(core)
    cpu = guest.new_cpu()
    calls = [
        lambda: core.idt_address(value, 0), lambda: core.idt_address(0, value),
        lambda: core.idt_type(value, 0), lambda: core.idt_type(0, value),
        lambda: core.idt_present(value, 0x8000), lambda: core.idt_present(0, value),
        lambda: core.has_err(value),
        lambda: core.default_idt_entry(value, 0), lambda: core.default_idt_entry(0, value),
        lambda: core.default_idt_entry(0, 0, (value, 0)), lambda: core.default_idt_entry(0, 0, (0, value)),
        lambda: guest.direct_trap(value), lambda: guest.could_be_syscall(value),
        lambda: guest.address_ok(value, 1), lambda: guest.ld_read_u32(value),
        lambda: guest.pin_page(value), lambda: setattr(guest, "kernel_address", value),
        lambda: setattr(guest, "tsc_khz", value),
        lambda: setattr(guest, "pgdir", value if value is not None else -1),  # None: unset
        lambda: cpu.lgread(value, 1), lambda: cpu.lgread(0, value), lambda: cpu.lgwrite(value, b""),
        lambda: cpu.deliver_trap(value), lambda: cpu.set_clockevent(value),
        lambda: setattr(cpu, "pending_notify", value), lambda: setattr(cpu, "last_pagefault", value),
        lambda: setattr(cpu, "changed", value), lambda: setattr(cpu.regs, "eax", value),
    ]
    for i, call in enumerate(calls):
        expected = ValueError if value is None and i == 18 else exc  # 18: the pgdir setter
        with pytest.raises(expected):
            call()
            pytest.fail(f"call {i} accepted {value!r}")
    assert guest.dead is None


def test_numpy_integers_are_integers(core) -> None:
    guest = _guest(core)
    assert core.idt_address(np.uint32(0x1234), np.uint64(0xABCD0000)) == 0xABCD1234
    assert guest.direct_trap(np.int16(3)) is True
    assert core.default_idt_entry(np.uint8(3), np.uint32(0x1000), (np.uint32(0), np.uint32(0x6000))) == \
        (0x00501000, 0x0000EE00)


@pytest.mark.parametrize("data", [8, 0, None, "text", 1.5, [1, 2], object()])
def test_lgwrite_wants_bytes_like_data(core, data) -> None:
    # The compiled core used to turn lgwrite(addr, 8) into bytes(8): eight zeros.
    cpu = _guest(core).new_cpu()
    cpu.guest.memory.write(0, b"\xaa" * 8)
    with pytest.raises(TypeError, match="bytes-like"):
        cpu.lgwrite(0, data)
    assert cpu.guest.memory.read(0, 8) == b"\xaa" * 8


def test_lgwrite_takes_any_buffer(core) -> None:
    cpu = _guest(core).new_cpu()
    assert cpu.lgwrite(0, np.array([0x04030201], np.uint32)) is True
    assert cpu.lgwrite(4, memoryview(b"\x05\x06")) is True
    assert cpu.lgwrite(6, bytearray(b"\x07")) is True
    assert cpu.guest.memory.read(0, 7) == bytes(range(1, 8))


@pytest.mark.parametrize(("base", "exc"), [(5, TypeError), ("ab", TypeError), ((1,), ValueError),
                                           ((1, 2, 3), ValueError), ((0, -1), ValueError), ((0, None), TypeError)])
def test_default_idt_entry_base_is_a_u32_pair(core, base, exc) -> None:
    with pytest.raises(exc):
        core.default_idt_entry(3, 0x1000, base)


@pytest.mark.parametrize(("timeout", "exc"), [("1", TypeError), (float("nan"), ValueError), (True, TypeError),
                                              (b"", TypeError), ([], TypeError)])
def test_wait_for_wakeup_timeout_rule(core, timeout, exc) -> None:
    cpu = _guest(core).new_cpu()
    with pytest.raises(exc):
        cpu.wait_for_wakeup(timeout)
    assert cpu.wait_for_wakeup(-5) is False
    cpu.wake()
    assert cpu.wait_for_wakeup(float("inf")) is True


@pytest.mark.parametrize(("field", "value", "exc"), [
    ("ts", 1 << 31, ValueError), ("ts", -(1 << 31) - 1, ValueError), ("ts", 1.0, TypeError),
    ("next_hcall", 64, ValueError), ("next_hcall", -1, ValueError), ("next_hcall", None, TypeError),
    ("pending_notify", -1, ValueError), ("last_pagefault", 1 << 32, ValueError),
    ("guest", None, AttributeError), ("regs", None, AttributeError), ("idt", None, AttributeError),
    ("id", 3, AttributeError),
])
def test_cpu_control_fields_follow_the_c_types(core, field, value, exc) -> None:
    cpu = _guest(core).new_cpu()
    with pytest.raises(exc):
        setattr(cpu, field, value)


def test_cpu_control_fields_roundtrip(core) -> None:
    cpu = _guest(core).new_cpu()
    cpu.ts = -5
    cpu.next_hcall = 63
    cpu.halted = "yes"
    cpu.break_out = 0
    cpu.hcall_pending = [1]
    assert (cpu.ts, cpu.next_hcall, cpu.halted, cpu.break_out, cpu.hcall_pending) == (-5, 63, True, False, True)


@pytest.mark.parametrize("field", ["host", "memory", "clock", "page_offset", "pfn_limit", "syscall_vector", "cpus"])
def test_guest_structure_is_read_only(core, field) -> None:
    guest = _guest(core)
    with pytest.raises(AttributeError):
        setattr(guest, field, getattr(guest, field))


def test_cpu_needs_a_guest_of_its_own_core(core) -> None:
    other = lguest.load_core("python" if core.NAME == "cython" else "cython")
    guest = _guest(other)
    for bad in (guest, None, 5):
        with pytest.raises(TypeError):
            core.Cpu(bad)
    for bad_id, exc in ((-1, ValueError), (1.0, TypeError), (1 << 31, ValueError)):
        with pytest.raises(exc):
            core.Cpu(_guest(core), bad_id)


# --- pin_page in page-table mode: the kernel's kills, in its order (API.md pin_page) ------------
PT_PGDIR, PT_TABLE = 0x1000, 0x2000


def _paged(core):
    """A guest whose tables map every 4 MiB slot (switcher's included) through
    one table at 0x2000 whose pte 0 names frame 3, present and writable."""
    guest = _guest(core)
    mem = guest.memory
    for slot in range(1024):
        mem.write_u32(PT_PGDIR + slot * 4, PT_TABLE | 0x67)
    for i in range(1024):
        mem.write_u32(PT_TABLE + i * 4, 0x3000 | 0x03)
    guest.pgdir = PT_PGDIR
    return guest


@pytest.mark.parametrize("vaddr", [0xFFC00000, 0xFFC00FFF, 0xFFFFF000, 0xFFFFFFFF])
def test_pin_page_in_the_switcher_range_kills_first(core, vaddr) -> None:
    guest = _paged(core)
    guest.pin_page(vaddr)
    assert guest.dead == "attempt to access switcher pages"
    assert guest.memory.read_u32(PT_TABLE + ((vaddr >> 12) & 0x3FF) * 4) == 0x3003  # no pte touched


def test_pin_page_switcher_wins_over_missing_tables(core) -> None:
    guest = _paged(core)
    guest.memory.write_u32(PT_PGDIR + 1023 * 4, 0)  # not present: would be "bad stack page"
    guest.pin_page(0xFFFFE000)
    assert guest.dead == "attempt to access switcher pages"


def test_kernel_stack_in_the_switcher_range(core) -> None:
    # SET_STACK's pinning reaches pin_page with esp1 - 1.
    guest = _paged(core)
    cpu = guest.new_cpu()
    cpu.guest_set_stack(0x69, 0xFFC01000, 1)
    assert guest.dead == "attempt to access switcher pages"
    assert cpu.esp1 == 0xFFC01000  # stored before pinning, as the C does


def test_pin_page_just_below_the_switcher_is_pinned(core) -> None:
    guest = _paged(core)
    guest.pin_page(0xFFBFFFFF)
    assert guest.dead is None
    assert guest.memory.read_u32(PT_TABLE + 1023 * 4) == 0x3063


@pytest.mark.parametrize(("pgd", "dead"), [
    (PT_TABLE | 0x67 | 0x100, "bad page directory entry"),      # a flag outside _PAGE_TABLE
    (PT_TABLE | 0x67 | 0x080, "bad page directory entry"),      # PSE (4 MiB pages)
    ((64 << 12) | 0x67, "bad page directory entry"),           # table beyond RAM (4 pages)
    (PT_TABLE | 0x66, "bad stack page 0xc0000000"),            # not present
])
def test_pin_page_bad_page_directory_entries(core, pgd, dead) -> None:
    guest = _paged(core)
    guest.memory.write_u32(PT_PGDIR + (0xC0000000 >> 22) * 4, pgd)
    guest.pin_page(0xC0000000)
    assert guest.dead == dead


@pytest.mark.parametrize(("pte", "dead", "after"), [
    (0x3003 | 0x80, "bad page table entry", 0x3083),            # PSE in a pte: no write-back
    ((64 << 12) | 0x03, "bad page table entry", (64 << 12) | 0x03),
    (0x3001, "bad stack page 0xc0000000", 0x3001),              # read-only
    (0x3002, "bad stack page 0xc0000000", 0x3002),              # not present
    (0x3003, None, 0x3063),
])
def test_pin_page_page_table_entries(core, pte, dead, after) -> None:
    guest = _paged(core)
    guest.memory.write_u32(PT_TABLE, pte)
    guest.pin_page(0xC0000000)
    assert guest.dead == dead
    assert guest.memory.read_u32(PT_TABLE) == after


def test_pin_page_bad_pgd_flags_carry_on_with_the_walk(core) -> None:
    # check_gpgd kills, demand_page continues: the pte is still marked.
    guest = _paged(core)
    guest.memory.write_u32(PT_PGDIR + (0xC0000000 >> 22) * 4, PT_TABLE | 0x67 | 0x200)
    guest.pin_page(0xC0000000)
    assert guest.dead == "bad page directory entry"
    assert guest.memory.read_u32(PT_TABLE) == 0x3063


def test_close_racing_core_calls_from_other_threads() -> None:
    # Found by fuzz/fuzz_api.py's threaded phase: close() used to unmap the
    # pages *before* detaching the guests, so a core call from another thread
    # between the two ran on unmapped memory (SIGSEGV).
    run_isolated("""
        import sys, threading
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        for round in range(60):
            mem = lguest.GuestMemory(4 * 4096)
            host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
            cpu = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=_core).new_cpu()
            stop = False
            def hammer():
                while not stop:
                    try:
                        cpu.lgwrite(0x1000, b"abcd" * 256)
                        cpu.lgread(0x2000, 1024)
                    except ValueError:
                        pass
            threads = [threading.Thread(target=hammer) for _ in range(3)]
            for t in threads:
                t.start()
            for _ in range(200):
                try:
                    mem.close()
                    break
                except RuntimeError:
                    pass
            stop = True
            for t in threads:
                t.join()
    """, timeout=120)


def test_refused_close_keeps_guests_attached(core) -> None:
    mem = lguest.GuestMemory(4 * 4096)
    cpu = _guest(core, mem).new_cpu()
    view = memoryview(mem.mmap)  # an export of the mmap itself: munmap is refused
    with pytest.raises(BufferError):
        mem.close()
    assert not mem.closed
    assert cpu.lgwrite(8, b"ok") is True and mem.read(8, 2) == b"ok"
    view.release()
    mem.close()
    with pytest.raises(ValueError, match="closed"):
        cpu.lgwrite(8, b"no")


def test_memory_accessors_take_python_integers_only() -> None:
    mem = lguest.GuestMemory(4096)
    for gpa, n in ((np.uint64((1 << 64) - 1), 1), (np.int64((1 << 63) - 1), 2)):
        with pytest.raises(IndexError):
            mem.read(gpa, n)  # numpy arithmetic used to wrap past the check
    for bad in (1.0, None, True):
        with pytest.raises(TypeError):
            mem.read(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mem.write_u32(0, -1)
    assert mem.read(np.uint32(0), np.int8(2)) == b"\0\0"
