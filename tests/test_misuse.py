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
    from lguest.run import GuestKilled, ScriptedBackend

    guest = host.new_guest(lguest.GuestMemory(4 * 4096), page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    guest.kill("first")
    guest.kill("second")
    assert guest.dead == "first"
    # Core operations still run, as the kernel's do after kill_guest().
    cpu.load_guest_idt_entry(3, 0x00001000, 0x00008F00)
    assert cpu.idt[3].tolist() == [0x00611000, 0x00008F00]
    with pytest.raises(GuestKilled) as info:
        cpu.run(ScriptedBackend([]))
    assert info.value.message == "first" and not info.value.restart


def test_syscall_vector_is_fixed_once_guests_exist(core) -> None:
    host = lguest.Host(syscall_vector=0x40, used_vectors=lguest.UsedVectors())
    host.syscall_vector = 0x41  # still configurable
    host.new_guest(lguest.GuestMemory(4096), page_offset=0, core=core)
    with pytest.raises(AttributeError):
        host.syscall_vector = 0x42


def test_notify_outside_memory_ends_the_guest(core, host) -> None:
    from lguest.launcher import Launcher
    from lguest.run import ScriptedBackend

    guest = host.new_guest(lguest.GuestMemory(4 * 4096), page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    guest.lguest_data = 0  # already initialised
    guest.memory.write(20, b"\xff" * 64)  # empty hypercall ring
    result = Launcher(cpu, ScriptedBackend([{"trapnum": 31, "eax": 17, "ebx": 0x4000}])).run(timeout=5)
    assert result.reason == "dead" and result.message == "Bad NOTIFY 0x4000"
