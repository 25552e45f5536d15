"""The run loop (``run_guest``) and the protocol an emulator backend implements.

One turn of the loop, in the order lguest's run_guest() takes:

1. a hypercall left pending by trap 31 is done;
2. a NOTIFY makes the loop return its address to the caller (the
   Launcher's read() returning);
3. a break-out request returns too;
4. ``maybe_do_interrupt`` may divert the guest into an interrupt handler;
5. a dead guest ends the loop (:class:`GuestKilled`);
6. a halted guest sleeps until the clock, ``send_irq`` or ``break_out``
   wakes it (a virtual clock simply jumps to its next expiry);
7. the backend runs the guest until a trap, and ``handle_trap`` deals with it.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..constants import CHANGED_ALL, CHANGED_IDT, IDT_ENTRIES, SWITCHER_ADDR
from ..cores import core_of
from ..validate import u32_words
from .hypercalls import do_hypercalls
from .stats import Stats
from .traps import handle_trap


class GuestKilled(Exception):
    """The guest died: ``message`` is its first kill reason; ``restart`` is
    set when it asked to be rebooted (SHUTDOWN with LGUEST_SHUTDOWN_RESTART)."""

    def __init__(self, message: str | None, restart: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.restart = restart


@dataclass(frozen=True)
class RunExit:
    """Why :func:`run_guest` returned while the guest is still alive."""

    reason: str  # "notify", "break" or "timeout"
    notify: int = 0  # the NOTIFY address for "notify"


class Backend(abc.ABC):
    """What an emulator provides to run a guest.

    Only :meth:`run_guest` is required; the other methods are the host's
    page-table and code-cache duties, which an emulator with its own MMU
    implements (the defaults accept and ignore them).
    """

    #: Host addresses of the 256 Switcher entry points: where a non-direct
    #: trap lands in the host IDT built by ``copy_traps``.
    #: (256 u32 words, read-only: a memoryview of "I"; a backend may give a
    #: numpy array instead.)
    default_handlers: Any = u32_words(range(SWITCHER_ADDR + 0x100, SWITCHER_ADDR + 0x100 + 8 * IDT_ENTRIES, 8))

    @abc.abstractmethod
    def run_guest(self, cpu: Any, idt: Any, changed: int) -> None:
        """Run the guest from ``cpu.regs`` until a trap the host must see.

        ``idt`` is the host IDT (a direct trap gate in it means the
        backend delivers that trap to the guest itself); ``changed`` holds
        the CHANGED_* bits since the last entry (reload the GDT, ...).  On
        return ``cpu.regs`` is the guest state at the trap, with
        ``trapnum`` and ``errcode`` set, and for a page fault
        ``cpu.last_pagefault`` holds the faulting address (cr2).
        """

    def demand_page(self, cpu: Any, vaddr: int, errcode: int) -> bool:
        """Fix a page fault the host caused (shadow paging); True if handled."""
        return False

    #: How many page-directory values :meth:`known_pgdir` remembers.  The
    #: kernel kept four shadow page-directory sets per guest; remembering
    #: more only spares re-pins, and the bound keeps a guest that names
    #: ever new directories from growing the host.
    KNOWN_PGDIRS = 64

    def known_pgdir(self, pgdir: int) -> bool:
        """True if NEW_PGTABLE already switched to ``pgdir`` (its shadow
        exists, the stack was pinned in it); remembers it either way.  The
        memory is the backend's: one backend serves one guest.

        The kernel pins the guest's stack only when the shadow set for a
        page directory is freshly allocated: switching back to a known one
        keeps its mappings, so a stack pte the guest has since cleared is
        not a reason to kill.  The oldest value is forgotten beyond
        KNOWN_PGDIRS, and is then fresh (pinned) again if it comes back,
        as an evicted shadow would be."""
        known: dict[int, None] = self.__dict__.setdefault("_known_pgdirs", {})
        if pgdir in known:
            return True
        known[pgdir] = None
        if len(known) > self.KNOWN_PGDIRS:
            del known[next(iter(known))]
        return False

    def new_pgtable(self, cpu: Any, pgdir: int) -> None:
        """The guest switched page tables (cr3 = ``pgdir``)."""

    def flush_tlb(self, cpu: Any, kernel_too: bool) -> None:
        """Drop cached translations (user ones only unless ``kernel_too``)."""

    def set_pte(self, cpu: Any, pgdir: int, vaddr: int, pte: int) -> None:
        """The guest changed one page-table entry."""

    def set_pmd(self, cpu: Any, pgdir: int, index: int) -> None:
        """The guest changed one page-directory entry."""

    def code_changed(self, cpu: Any, gpa: int, length: int) -> None:
        """The host rewrote guest code (the vmcall patch): drop translations of it."""


class ScriptedBackend(Backend):
    """Replays a list of traps, for testing the loop without an emulator.

    Each step is a trap number, or a dict of register values to set
    (``trapnum`` included, plus an optional ``cr2`` for page faults), or a
    callable ``step(cpu)`` that edits the cpu itself.  ``entries`` records
    ``(eip, esp, changed)`` at each entry.  Running past the end kills the
    guest with "script finished".
    """

    def __init__(self, steps: Iterable[Any]) -> None:
        self.steps = list(steps)
        self.entries: list[tuple[int, int, int]] = []
        self.calls: list[tuple[Any, ...]] = []

    def run_guest(self, cpu: Any, idt: Any, changed: int) -> None:
        self.entries.append((cpu.regs.eip, cpu.regs.esp, changed))
        if not self.steps:
            cpu.guest.kill("script finished")
            return
        step = self.steps.pop(0)
        if callable(step):
            step(cpu)
        elif isinstance(step, dict):
            for name, value in step.items():
                if name == "cr2":
                    cpu.last_pagefault = value
                else:
                    setattr(cpu.regs, name, value)
        else:
            cpu.regs.trapnum = int(step)

    def new_pgtable(self, cpu: Any, pgdir: int) -> None:
        self.calls.append(("new_pgtable", pgdir))

    def flush_tlb(self, cpu: Any, kernel_too: bool) -> None:
        self.calls.append(("flush_tlb", kernel_too))

    def set_pte(self, cpu: Any, pgdir: int, vaddr: int, pte: int) -> None:
        self.calls.append(("set_pte", pgdir, vaddr, pte))

    def set_pmd(self, cpu: Any, pgdir: int, index: int) -> None:
        self.calls.append(("set_pmd", pgdir, index))

    def code_changed(self, cpu: Any, gpa: int, length: int) -> None:
        self.calls.append(("code_changed", gpa, length))


class RunContext:
    """What the host keeps for one cpu between runs, beside the cpu itself:
    the backend running it, its :class:`Stats`, the host IDT ``copy_traps``
    fills (None until the first entry builds it, unless the backend brings
    its own) and the cpu's core module.  The run loop hands it to the
    hypercall and trap handlers; whoever drives the cpu (a Launcher) keeps
    it from one :func:`run_guest` to the next.  The cpu carries none of it.
    """

    __slots__ = ("backend", "core", "host_idt", "stats")

    def __init__(self, cpu: Any, backend: Backend | None = None, *, stats: Stats | None = None,
                 host_idt: Any = None) -> None:
        self.backend = backend
        self.core = core_of(cpu)
        self.stats = stats if stats is not None else Stats()
        self.host_idt = host_idt

    def ensure_host_idt(self, cpu: Any) -> Any:
        """The host IDT, built (every trap to the Switcher's stubs) on first
        use.  A numpy uint32 (256, 2) array, what ``Backend.run_guest`` has
        always been handed; the Unicorn backend gives the context its own
        (the Switcher's words, a memoryview), so running it imports no numpy."""
        if self.host_idt is None:
            import numpy as np

            idt = np.zeros((IDT_ENTRIES, 2), dtype=np.uint32)
            handlers = (self.backend if self.backend is not None else Backend).default_handlers
            self.core.setup_default_idt_entries(idt, handlers)
            self.host_idt = idt
            cpu.changed |= CHANGED_ALL  # first entry: everything is new to the host
        return self.host_idt


#: The longest a halted cpu sleeps on the main thread between two looks
#: at pending signals.
SIGNAL_SLICE_S = 0.05


def _sleep_halted(cpu: Any, deadline: float | None) -> None:
    clock = cpu.guest.clock
    advance_to_next = getattr(clock, "advance_to_next", None)
    if advance_to_next is not None and advance_to_next():
        return  # virtual time: idle until the next timer, instantly
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    if threading.current_thread() is threading.main_thread():
        # The compiled core sleeps on a condvar without the GIL, which no
        # signal interrupts: on the main thread sleep in slices, so Python
        # gets to run its handlers (Ctrl-C) between them.  The loop above
        # simply sleeps again if nothing woke the cpu.
        timeout = SIGNAL_SLICE_S if timeout is None else min(timeout, SIGNAL_SLICE_S)
    cpu.wait_for_wakeup(timeout)


def _maybe_do_interrupt(cpu: Any, stats: Stats) -> None:
    """Step 4; with a trace, each delivery is recorded at the eip it interrupted."""
    if stats.trace is None:
        cpu.maybe_do_interrupt()
        return
    before = cpu.irq_counts
    eip = cpu.regs.eip
    cpu.maybe_do_interrupt()
    for irq, (a, b) in enumerate(zip(before, cpu.irq_counts, strict=True)):
        if b != a:
            stats.irq(irq, b - a, eip)


def _enter(cpu: Any, backend: Backend, idt: Any, stats: Stats) -> None:
    """Step 7's entry: refresh the host IDT if the guest's changed, hand the
    backend the CHANGED_* bits (cleared first, as lguest's run_guest_once did)
    and run the guest until its next trap."""
    changed = cpu.changed
    if changed & CHANGED_IDT:
        cpu.copy_traps(idt, backend.default_handlers)
    cpu.changed = 0
    cpu.regs.trapnum = 256  # what a fault inside the Switcher would report
    stats.entries += 1
    backend.run_guest(cpu, idt, changed)


def run_guest(cpu: Any, backend: Backend, *, timeout: float | None = None,
              context: RunContext | None = None) -> RunExit:
    """Run ``cpu`` until it notifies, breaks out, times out (RunExit) or dies
    (:class:`GuestKilled`).  ``context`` is the cpu's :class:`RunContext`
    from earlier runs (its stats, its host IDT); without one a fresh one is
    made for this run."""
    if context is None:
        context = RunContext(cpu, backend)
    elif context.backend is not backend:
        raise ValueError("the run context belongs to another backend")
    g = cpu.guest
    stats = context.stats
    deadline = None if timeout is None else time.monotonic() + timeout
    idt = context.ensure_host_idt(cpu)
    cpu.pending_notify = 0  # read() clears it before running

    while g.dead is None:
        if cpu.hcall_pending:
            do_hypercalls(cpu, context)
        if cpu.pending_notify:
            return RunExit("notify", cpu.pending_notify)
        if cpu.break_out:
            cpu.break_out = False
            return RunExit("break")
        if deadline is not None and time.monotonic() >= deadline:
            return RunExit("timeout")

        _maybe_do_interrupt(cpu, stats)
        if g.dead is not None:
            break
        if cpu.halted:
            _sleep_halted(cpu, deadline)
            continue

        _enter(cpu, backend, idt, stats)
        if g.dead is None:
            handle_trap(cpu, context)

    stats.kills += 1
    stats._event(-1, cpu.regs.eip, "kill")
    raise GuestKilled(g.dead, bool(getattr(g, "restart", False)))
