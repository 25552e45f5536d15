"""Exit decoding: why the emulator stopped, turned into what lguest's host sees.

The native hook stops Unicorn with a reason (a trap, a host stop for the
clock, an irq, a break-out or the deadline, a memory fault, a refused entry,
...); :class:`ExitDecoding` turns each into the trap number ``handle_trap``
deals with, or a kill with the host's words for it.
"""

from __future__ import annotations

from typing import Any

import unicorn as _unicorn
from unicorn import unicorn_const as _ucc

from .. import messages as M
from ..constants import SWITCHER_ADDR, U32
from . import _uchook

#: trapnum the backend reports when it stopped the guest for the host's own
#: reasons (clock, pending irq, break-out, deadline): a "real interrupt",
#: which handle_trap ignores (lguest's case 32..255).  0xEF is the local
#: APIC timer vector.
HOST_IRQ_TRAP = 0xEF

_MEM_WRITE_TYPES = (_ucc.UC_MEM_WRITE_UNMAPPED, _ucc.UC_MEM_WRITE_PROT)

#: The native hook's stop reasons, by name: ``lguest.unicorn._uchook.REASONS``
#: (code -> name) is their one definition.
_REASON_CODES = {name: code for code, name in _uchook.REASONS.items()}
REASON_BADSEG = _REASON_CODES["badseg"]
REASON_BREAK = _REASON_CODES["break"]
REASON_DEAD = _REASON_CODES["dead"]
REASON_DEADLINE = _REASON_CODES["deadline"]
REASON_DIRECT = _REASON_CODES["direct"]
REASON_HCALL = _REASON_CODES["hcall"]
REASON_INVALID = _REASON_CODES["invalid"]
REASON_IRQ = _REASON_CODES["irq"]
REASON_MEM = _REASON_CODES["mem"]
REASON_RING0 = _REASON_CODES["ring0"]
REASON_SOFT_GP = _REASON_CODES["soft_gp"]
REASON_SWITCHER = _REASON_CODES["switcher"]
REASON_TIMER = _REASON_CODES["timer"]
REASON_TRAP = _REASON_CODES["trap"]
REASON_VM86 = _REASON_CODES["vm86"]


class ExitDecoding:
    """The exit half of :class:`~lguest.unicorn.backend.UnicornBackend`.

    Uses the backend's ``guest``, ``hooks`` (the native hook), ``core`` (the
    cpu's core), ``paging`` and ``python_direct`` (direct traps delivered
    from Python, by vector).
    """

    guest: Any
    hooks: Any
    core: Any
    paging: bool
    python_direct: dict[int, int]

    def _exit(self, cpu: Any, idt: Any, reason: int, err: int) -> None:
        r = cpu.regs
        g = self.guest
        hooks = self.hooks
        if reason == REASON_TRAP:
            if r.trapnum == 14:
                cpu.last_pagefault = hooks.cr2
        elif reason in (REASON_TIMER, REASON_IRQ, REASON_BREAK, REASON_DEADLINE, REASON_HCALL):
            if reason == REASON_IRQ and not hooks.has_native_core:
                hooks.clear_poke()
            r.trapnum = HOST_IRQ_TRAP
        elif reason == REASON_INVALID:
            pass  # trapnum 6 at the instruction: handle_trap patches vmcall or reflects #UD
        elif reason == REASON_SOFT_GP:
            n = hooks.trapnum
            r.eip = (r.eip - self._int_length(cpu, n)) & U32
            r.trapnum = 13
            r.errcode = n * 8 + 2
        elif reason == REASON_DIRECT:
            # A direct trap the hook left to us: the same core call, from Python.
            n = hooks.trapnum
            a, b = int(idt[n, 0]), int(idt[n, 1])
            r.errcode = hooks.errcode
            cpu.set_guest_interrupt(a, b, (not hooks.is_int) and bool(self.core.has_err(n)))
            if g.dead is None:
                self.python_direct[n] = self.python_direct.get(n, 0) + 1
            r.trapnum = HOST_IRQ_TRAP
        elif reason == REASON_MEM:
            self._memory_fault(cpu)
        elif reason == REASON_SWITCHER:
            g.kill(f"lguest: trap {hooks.trapnum} ({M.lx(hooks.errcode)}) entering the guest at {M.lx(r.eip)}")
        elif reason == REASON_BADSEG:
            g.kill(f"lguest: bad segment {M.lx(hooks.errcode)} delivering trap {hooks.trapnum}")
        elif reason == REASON_DEAD:
            pass
        elif reason == REASON_RING0:
            g.kill(f"lguest: guest code at CPL 0 at {M.lx(r.eip)}")
        elif reason == REASON_VM86:
            g.kill(f"lguest: guest in virtual-8086 mode at {M.lx(r.eip)}")
        else:  # emu_start ended by itself: an emulator error, or the guest ran into the Switcher
            if err:
                g.kill(f"unicorn: {_unicorn.UcError(err)} at {M.lx(r.eip)}")
            else:
                g.kill("attempt to access switcher pages")

    def _int_length(self, cpu: Any, n: int) -> int:
        """Length of the ``int`` that raised vector n (eip is after it)."""
        if n in (3, 4):  # int3 (CC) and into (CE) are one byte; int $3 is two
            gpa = cpu.guest.guest_pa((cpu.regs.eip - 1) & U32)
            last = cpu.guest.memory.read(gpa, 1)[0] if gpa < cpu.guest.memory.size else 0
            if last in (0xCC, 0xCE):
                return 1
        return 2

    def _memory_fault(self, cpu: Any) -> None:
        r = cpu.regs
        typ, addr, _size = self.hooks.mem_fault
        if addr >= SWITCHER_ADDR:
            self.guest.kill("attempt to access switcher pages")
        elif self.paging:
            self.guest.kill("bad page table entry")  # a guest pte names a frame beyond RAM
        else:
            # A flat guest touched memory it does not have: the page fault a
            # real lguest guest would get (no page, so the present bit is 0).
            r.trapnum = 14
            r.errcode = (2 if typ in _MEM_WRITE_TYPES else 0) | (4 if r.cs & 3 == 3 else 0)
            cpu.last_pagefault = addr & U32

