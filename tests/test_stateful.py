"""Hostile-guest fuzzing (bounded): random sequences of hypercalls, traps,
irqs, IDT loads and stack changes, run in lockstep on both cores.

Invariants after every step: no exception escapes, both cores agree on every
observable, a dead guest stays dead with its first reason, and no host access
leaves guest memory (guard pages would fault the process).
"""

from __future__ import annotations

import re

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import lguest
from lguest.constants import LD_BLOCKED_INTERRUPTS, LD_IRQ_ENABLED, LD_SYSCALL_VEC, LGUEST_DATA_SIZE
from lguest.host.hypercalls import HcallArgs, do_hcall, do_hypercalls
from lguest.host.run import RunContext, ScriptedBackend
from lguest.host.traps import handle_trap

PAGES = 8
SIZE = PAGES * 4096
u32 = st.integers(0, 0xFFFFFFFF)
# Addresses that are interesting for a tiny memory: near 0, near the end, wild.
addr = st.one_of(st.integers(0, SIZE + 64), st.integers(SIZE - 64, SIZE + 8), st.integers(0xFFFFFFF0, 0xFFFFFFFF), u32)
vector = st.one_of(st.integers(0, 255), st.integers(0, 255), st.integers(0, 300), u32)
gate_hi = st.one_of(
    st.builds(lambda h, t, dpl: (h << 16) | 0x8000 | (dpl << 13) | (t << 8),
              st.integers(0, 0xFFFF), st.sampled_from([0xE, 0xF, 0x5, 0x0]), st.integers(0, 3)),
    u32,
)


class LockstepCores(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sides: list[tuple[object, object]] = []
        self.contexts: dict[int, RunContext] = {}  # by id(cpu): the run context handlers get

    @initialize(ld=st.one_of(st.none(), st.integers(0, SIZE - LGUEST_DATA_SIZE), st.integers(SIZE - 1200, SIZE)),
                page_offset=st.sampled_from([0, 0xC0000000, 0xFFFFF000]),
                syscall_vec=st.sampled_from([0x80, 0x40, 0x31, 0xFFFFFFFF]))
    def setup(self, ld, page_offset, syscall_vec) -> None:
        host = lguest.Host(syscall_vector=0x40, used_vectors=lguest.UsedVectors())
        for name in ("python", "cython"):
            mem = lguest.GuestMemory(SIZE, guard_pages=True)
            guest = host.new_guest(mem, page_offset=page_offset, clock=lguest.VirtualClock(), core=name)
            cpu = guest.new_cpu()
            # A backend per side: a backend serves one guest and keeps state
            # for it (known_pgdir); shared, the second side's NEW_PGTABLE
            # found the first side's directory already known and skipped the pin.
            self.contexts[id(cpu)] = RunContext(cpu, ScriptedBackend([]))
            if ld is not None:
                guest.lguest_data = ld
                guest.ld_write_u32(LD_IRQ_ENABLED, 0x200)
                guest.ld_write_u32(LD_SYSCALL_VEC, syscall_vec)
            self.sides.append((guest, cpu))
        self.first_death: str | None = None

    def each(self, fn) -> None:
        for guest, cpu in self.sides:
            fn(guest, cpu)

    @rule(name=st.sampled_from(["eax", "ebx", "ecx", "edx", "eip", "esp", "ss", "cs", "eflags", "errcode"]),
          value=st.one_of(u32, st.sampled_from([0x61, 0x69, 0x73, 0x7B, 0, 3, 4])))
    def set_reg(self, name, value) -> None:
        self.each(lambda g, c: setattr(c.regs, name, value))

    @rule(irq=st.integers(0, 31))
    def send_irq(self, irq) -> None:
        self.each(lambda g, c: c.send_irq(irq))

    @rule(blocked=u32, enabled=st.sampled_from([0, 0x200, 0xFFFFFFFF]))
    def guest_irq_state(self, blocked, enabled) -> None:
        def go(g, c) -> None:
            g.ld_write_u32(LD_BLOCKED_INTERRUPTS, blocked)
            g.ld_write_u32(LD_IRQ_ENABLED, enabled)
        self.each(go)

    @rule()
    def maybe_do_interrupt(self) -> None:
        self.each(lambda g, c: c.maybe_do_interrupt())

    @rule(num=vector)
    def deliver_trap(self, num) -> None:
        results = {c.deliver_trap(num) for _, c in self.sides}
        assert len(results) == 1

    @rule(num=vector, lo=u32, hi=gate_hi)
    def load_idt_entry(self, num, lo, hi) -> None:
        self.each(lambda g, c: c.load_guest_idt_entry(num, lo, hi))

    @rule(seg=st.one_of(st.just(0x69), st.just(0x69), st.sampled_from([0x68, 0x6B, 0x169]), u32),
          esp=addr, pages=st.integers(0, 3))
    def set_stack(self, seg, esp, pages) -> None:
        self.each(lambda g, c: c.guest_set_stack(seg, esp, pages))

    @rule(pgdir=st.one_of(st.none(), addr))
    def switch_translation(self, pgdir) -> None:
        self.each(lambda g, c: setattr(g, "pgdir", pgdir))

    @rule(where=addr, value=u32)
    def guest_writes_its_memory(self, where, value) -> None:
        # The guest scribbling on its own RAM (page tables, lguest_data, stack).
        if where + 4 <= SIZE:
            self.each(lambda g, c: g.memory.write_u32(where, value))

    @rule(call=st.one_of(st.sampled_from([0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17]),
                         st.sampled_from([0, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17]), st.integers(0, 20), u32),
          a1=st.one_of(addr, u32), a2=u32, a3=u32)
    def hypercall(self, call, a1, a2, a3) -> None:
        self.each(lambda g, c: do_hcall(c, HcallArgs(call, a1, a2, a3), self.contexts[id(c)]))

    @rule(eax=st.integers(0, 20), ebx=addr)
    def trap31_hypercall(self, eax, ebx) -> None:
        def go(g, c):
            c.regs.eax, c.regs.ebx = eax, ebx
            c.hcall_pending = True
            do_hypercalls(c, self.contexts[id(c)])
        self.each(go)

    @rule(trap=st.one_of(st.integers(0, 40), st.just(256), vector), errcode=u32, cr2=u32)
    def trap(self, trap, errcode, cr2) -> None:
        def go(g, c):
            c.regs.trapnum, c.regs.errcode, c.last_pagefault = trap, errcode, cr2
            handle_trap(c, self.contexts[id(c)])
        self.each(go)

    @rule(ns=st.integers(0, 10**6))
    def time_passes(self, ns) -> None:
        self.each(lambda g, c: g.clock.advance(ns))

    @invariant()
    def cores_agree(self) -> None:
        if not self.sides:
            return
        (g1, c1), (g2, c2) = self.sides
        assert c1.regs.array.tolist() == c2.regs.array.tolist()
        assert (c1.idt == c2.idt).all() and (c1.gdt == c2.gdt).all()
        assert g1.memory.read(0, SIZE) == g2.memory.read(0, SIZE)
        assert g1.dead == g2.dead
        for field in ("irqs_pending", "halted", "changed", "esp1", "ss1", "ts", "pending_notify", "next_hcall",
                      "hcall_pending"):
            assert getattr(c1, field) == getattr(c2, field), field
        for field in ("lguest_data", "pgdir", "noirq_start", "noirq_end", "stack_pages", "restart"):
            assert getattr(g1, field) == getattr(g2, field), field

    @invariant()
    def dead_stays_dead(self) -> None:
        if not self.sides:
            return
        dead = self.sides[0][0].dead
        event("dead: " + ("no" if dead is None else re.sub(r"\b(0x[0-9a-f]+|-?[0-9]+)\b", "N", dead.split(":")[0])))
        if self.first_death is not None:
            assert dead == self.first_death
        self.first_death = dead

    def teardown(self) -> None:
        for guest, _ in self.sides:
            guest.memory.close()


# max_examples comes from the active hypothesis profile (see conftest.py).
LockstepCores.TestCase.settings = settings(stateful_step_count=40, deadline=None)
TestLockstepCores = LockstepCores.TestCase
