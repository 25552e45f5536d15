"""Save and restore the whole trap state of a cpu and its guest (not in lguest).

A :class:`Snapshot` is plain data (ints, bytes, tuples), so it pickles.  It
holds the registers, the guest IDT and GDT, the stack and interrupt state,
the guest fields the core uses, the kill state, and the armed timer as a
delay from the clock's now; with ``memory=True`` also the guest RAM.
Restoring onto a fresh guest of the same memory size reproduces every
observable of the trap machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    regs: tuple[int, ...]
    idt: bytes
    gdt: bytes
    esp1: int
    ss1: int
    halted: bool
    changed: int
    irqs_pending: int
    ts: int
    pending_notify: int
    last_pagefault: int
    hcall_pending: bool
    next_hcall: int
    lguest_data: int | None
    pgdir: int | None
    noirq_start: int
    noirq_end: int
    stack_pages: int
    kernel_address: int
    dead: str | None
    restart: bool
    timer_delay_ns: int | None  # armed clock event, relative to the clock's now
    clock_now_ns: int
    memory_size: int
    memory: bytes | None = None


def snapshot(cpu: Any, *, memory: bool = False) -> Snapshot:
    """Capture ``cpu`` and its guest."""
    g = cpu.guest
    clock = g.clock
    now = clock.now_ns()
    expiry = clock.armed(cpu) if hasattr(clock, "armed") else None
    return Snapshot(
        regs=tuple(cpu.regs.words),
        idt=cpu.idt_words.tobytes(),
        gdt=cpu.gdt_words.tobytes(),
        esp1=cpu.esp1,
        ss1=cpu.ss1,
        halted=bool(cpu.halted),
        changed=cpu.changed,
        irqs_pending=cpu.irqs_pending,
        ts=int(cpu.ts),
        pending_notify=int(cpu.pending_notify),
        last_pagefault=int(cpu.last_pagefault),
        hcall_pending=bool(cpu.hcall_pending),
        next_hcall=int(cpu.next_hcall),
        lguest_data=g.lguest_data,
        pgdir=g.pgdir,
        noirq_start=g.noirq_start,
        noirq_end=g.noirq_end,
        stack_pages=g.stack_pages,
        kernel_address=int(g.kernel_address),
        dead=g.dead,
        restart=bool(g.restart),
        timer_delay_ns=None if expiry is None else max(0, expiry - now),
        clock_now_ns=now,
        memory_size=g.memory.size,
        memory=g.memory.read(0, g.memory.size) if memory else None,
    )


def restore(cpu: Any, snap: Snapshot) -> None:
    """Put ``snap`` back into ``cpu`` and its guest.

    The guest must be alive (a kill cannot be undone) or dead with the same
    reason, and its memory the same size.
    """
    g = cpu.guest
    if g.memory.size != snap.memory_size:
        raise ValueError(f"snapshot is of {snap.memory_size:#x} bytes of memory, guest has {g.memory.size:#x}")
    if g.dead is not None and g.dead != snap.dead:
        raise ValueError("cannot restore onto a guest that is already dead")
    import numpy as np  # restoring is rare; numpy's conversions are its checks

    cpu.regs.array[:] = np.array(snap.regs, dtype=np.uint32)
    cpu.idt[:] = np.frombuffer(snap.idt, dtype=np.uint32).reshape(cpu.idt.shape)
    cpu.gdt[:] = np.frombuffer(snap.gdt, dtype=np.uint32).reshape(cpu.gdt.shape)
    cpu.esp1 = snap.esp1
    cpu.ss1 = snap.ss1
    cpu.halted = snap.halted
    cpu.changed = snap.changed
    cpu.irqs_pending = snap.irqs_pending
    cpu.ts = snap.ts
    cpu.pending_notify = snap.pending_notify
    cpu.last_pagefault = snap.last_pagefault
    cpu.hcall_pending = snap.hcall_pending
    cpu.next_hcall = snap.next_hcall
    g.lguest_data = snap.lguest_data
    g.pgdir = snap.pgdir
    g.noirq_start = snap.noirq_start
    g.noirq_end = snap.noirq_end
    g.stack_pages = snap.stack_pages
    g.kernel_address = snap.kernel_address
    g.restart = snap.restart
    if snap.dead is not None:
        g.kill(snap.dead)
    if snap.memory is not None:
        g.memory.write(0, snap.memory)
    if snap.timer_delay_ns is None:
        g.clock.cancel(cpu)
    else:
        g.clock.arm(cpu, g.clock.now_ns() + snap.timer_delay_ns, cpu._clock_fired)
