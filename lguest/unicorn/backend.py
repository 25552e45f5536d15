"""The :class:`~lguest.host.run.Backend` on a Unicorn engine.

:class:`UnicornBackend` joins the parts: the :class:`~.switcher.Switcher`'s
pages, the native hook (:mod:`lguest.unicorn._uchook`, which enters the guest and
delivers direct traps in C), :class:`~.exits.ExitDecoding` for why the
emulator stopped and :class:`~.paging.ShadowPaging` for the page-table
hypercalls.  :class:`~.launcher.UnicornLauncher` builds and owns it.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from typing import Any

import unicorn as _unicorn
from unicorn import x86_const as _x86

from ..clock import VirtualClock
from ..constants import (
    CHANGED_ALL,
    CHANGED_GDT,
    CHANGED_GDT_TLS,
    IDT_ENTRIES,
    LGUEST_CS,
    LGUEST_DS,
    LGUEST_TRAP_ENTRY,
    LHCALL_FLUSH_ASYNC,
    LHCALL_SET_CLOCKEVENT,
    SWITCHER_ADDR,
)
from ..cores import compiled, core_of
from ..host.hypercalls import HYPERCALLS, HcallArgs
from ..host.run import Backend
from ..validate import u32_words
from . import _uchook
from .engine import engine_handle, engine_internals, function_addresses, uclib
from .exits import REASON_DIRECT, ExitDecoding
from .layout import context_layout
from .paging import ShadowPaging
from .switcher import CR0_WP, SW_GDT, SW_SIZE, SW_STUBS, SW_UNTIL, Switcher

#: The registers of ``cpu.regs.array``, by index, as Unicorn names them (-1:
#: trapnum and errcode, which are not registers).
#: The traps handle_trap only ever reflects (every vector below 32 but #UD,
#: #NM, #GP, #PF and the hypercall trap): the native hook may reflect these
#: itself (uh_reflectable in _uchook.h).
REFLECT_MASK = 0xFFFFFFFF & ~((1 << 6) | (1 << 7) | (1 << 13) | (1 << 14) | (1 << LGUEST_TRAP_ENTRY))


def store_fast_path_default() -> bool:
    """Whether new backends turn on the store fast path (NativeHooks.store_fast_path:
    guest stores to pages without translated code skip Unicorn's slow path).
    ``LGUEST_STORE_FAST_PATH=0`` in the environment turns it off, to compare."""
    return os.environ.get("LGUEST_STORE_FAST_PATH", "1") != "0"


#: The hypercalls the native hook does itself when the async ring is empty
#: (uh_hcall_here): FLUSH_ASYNC (nothing left to do) and SET_CLOCKEVENT
#: (through :meth:`UnicornBackend._hook_hcall`).  Everything else changes
#: what the entry or the run loop must look at, and stops.
HCALL_MASK = (1 << LHCALL_FLUSH_ASYNC) | (1 << LHCALL_SET_CLOCKEVENT)

_REG_IDS = [_x86.UC_X86_REG_EAX, _x86.UC_X86_REG_EBX, _x86.UC_X86_REG_ECX, _x86.UC_X86_REG_EDX,
            _x86.UC_X86_REG_ESI, _x86.UC_X86_REG_EDI, _x86.UC_X86_REG_EBP, _x86.UC_X86_REG_GS,
            _x86.UC_X86_REG_FS, _x86.UC_X86_REG_DS, _x86.UC_X86_REG_ES, -1, -1, _x86.UC_X86_REG_EIP,
            _x86.UC_X86_REG_CS, _x86.UC_X86_REG_EFLAGS, _x86.UC_X86_REG_ESP, _x86.UC_X86_REG_SS]


class UnicornBackend(ExitDecoding, ShadowPaging, Backend):
    """A :class:`lguest.host.run.Backend` on a Unicorn engine: see :mod:`lguest.unicorn`.

    Built and owned by :class:`UnicornLauncher`.  ``native_direct=False``
    stops the emulator at direct traps too and delivers them from Python
    (the same core call, for comparison).
    """

    #: Do the virtual clock's SET_CLOCKEVENT in the hook, in C
    #: (uh_vclock_hcall), when the compiled core runs a plain VirtualClock;
    #: False: through the Python handler (for comparison; read at start-up).
    native_vclock = True

    #: Host IDT targets of non-direct traps: the Switcher's stubs (256 u32
    #: words, read-only).
    default_handlers = u32_words(range(SWITCHER_ADDR + SW_STUBS, SWITCHER_ADDR + SW_STUBS + 8 * IDT_ENTRIES, 8))

    def __init__(self, uc: Any, cpu: Any, *, virtual: bool, ns_per_block: int, native_direct: bool = True) -> None:
        self.uc = uc
        self.cpu = cpu
        self.guest = cpu.guest
        self.core = core_of(cpu)
        self.virtual = virtual
        self.ns_per_block = int(ns_per_block)
        self.deadline_ns = 0
        self.paging = False
        self.python_direct: dict[int, int] = {}
        self.native_direct = native_direct
        #: The run's Stats (set by the launcher): with one and no trace, the
        #: hook reflects traps itself and their counts are added here.
        self.stats: Any = None
        self._reflected: dict[int, int] = {}
        self._reflected_total = 0
        self._hcalls: dict[int, int] = {}
        self._hcalls_total = 0
        #: What runs each entry instead of ``hooks.run(budget, deadline)``:
        #: the gdb stub (lguest.unicorn.gdbstub), a recorder or a replayer
        #: (lguest.host.record), or None.
        self.runner: Any = None
        #: A lguest.host.trace.Timeline the direct traps the hook records go to, or None.
        self.timeline: Any = None
        self.hooks: Any = None
        self._enter_switcher(uc, cpu)
        self.hooks = self._native_hooks(uc, cpu, native_direct)

    def _enter_switcher(self, uc: Any, cpu: Any) -> None:
        """Map the Switcher and load the CPU's host state: GDTR, IDTR, the
        GDT, TR and CR0.WP; the host IDT starts with every trap going to
        the Switcher's stubs (``copy_traps`` fills it at the first entry)."""
        self.switcher = sw = Switcher()
        # The Switcher's word tables (memoryviews of "I"); ``gdt``,
        # ``host_idt`` and ``shadow_pgd`` are numpy views of them on demand.
        self.gdt_words, self.host_idt_words, self.shadow_pgd_words = sw.gdt, sw.host_idt, sw.shadow_pgd
        sw.map(uc)
        # lguest's host IDT for this cpu lives in the Switcher: the launcher
        # hands it to the run context, and copy_traps fills it.
        self.core.setup_default_idt_entries(self.host_idt_words, self.default_handlers)
        cpu.changed |= CHANGED_ALL
        self.load_gdt(cpu)
        sw.load_task_register(uc)
        uc.reg_write(_x86.UC_X86_REG_CR0, uc.reg_read(_x86.UC_X86_REG_CR0) | CR0_WP)

    def _native_hooks(self, uc: Any, cpu: Any, native_direct: bool) -> Any:
        """The native half: two saved contexts (the full one, and a small one
        for registers and segment caches only), the hooks bound to the cpu's
        arrays and, on the compiled core, its native API for direct traps."""
        lib = uclib()
        layout = context_layout()
        ctx, ctx_small = ctypes.c_void_p(), ctypes.c_void_p()
        if lib.uc_context_alloc(uc._uch, ctypes.byref(ctx)) != 0 or \
                lib.uc_context_alloc(uc._uch, ctypes.byref(ctx_small)) != 0:
            raise OSError("uc_context_alloc failed")
        # The small context saves and restores only the registers and the
        # segment caches: its size word (the header's first) says so.
        small = layout["segs"] + 6 * layout["seg_stride"] - layout["data"]
        ctypes.memmove(ctx_small.value, struct.pack("<Q", small), 8)
        hooks = _uchook.NativeHooks(
            uc_handle=engine_handle(uc), funcs=function_addresses(), reg_ids=_REG_IDS,
            reg_cr2=_x86.UC_X86_REG_CR2, layout=layout, switcher=self.switcher.mem,
            switcher_va=SWITCHER_ADDR, switcher_size=SW_SIZE, gdt_offset=SW_GDT,
            until_va=SWITCHER_ADDR + SW_UNTIL,
            host_cs=LGUEST_CS, host_ss=LGUEST_DS, ctx_alloc=ctx.value, ctx_small_alloc=ctx_small.value,
            uc_free=lambda p: lib.uc_free(ctypes.c_void_p(p)),
            insn_in=_x86.UC_X86_INS_IN, insn_out=_x86.UC_X86_INS_OUT, internals=engine_internals(uc),
            uc_owner=uc)
        api = None
        if self.core is compiled():
            native_api = getattr(self.core, "native_api", None)  # None: direct traps take the Python path
            api = native_api(cpu) if native_api is not None else None
        hooks.bind(cpu, cpu.regs.words, self.host_idt_words, cpu.idt_words, self.guest.memory, api)
        if api is not None and not self.virtual:
            from .._clock import NativeClock  # the compiled core's: api says it is there

            if isinstance(self.guest.clock, NativeClock):
                hooks.set_native_clock(cpu, self.guest.clock)  # the wall clock's SET_CLOCKEVENT in C
        if api is not None and self.virtual and self.native_vclock and type(self.guest.clock) is VirtualClock:
            # the virtual clock's SET_CLOCKEVENT in C (uh_vclock_hcall); a
            # recording's or a replay's clock subclass keeps the Python path
            hooks.set_virtual_clock(cpu, self.guest.clock, self.ns_per_block)
        hooks.native_direct = native_direct
        self.api_less = api is None  # irqs the hook cannot see (_hook_hcall)
        hooks.store_fast_path = store_fast_path_default()
        hooks.install()
        hooks.set_hcall_handler(self._hook_hcall)
        return hooks

    @property
    def _last_blocks(self) -> int:
        """The blocks at which the virtual clock last advanced: kept in the
        hook's state, which moves it when it advances the clock itself."""
        return self.hooks.vclock_last

    @_last_blocks.setter
    def _last_blocks(self, value: int) -> None:
        self.hooks.vclock_last = value

    # --- host structures -------------------------------------------------------------------
    @staticmethod
    def _numpy_view(words: memoryview | None) -> Any:
        if words is None:
            return None
        import numpy as np  # not on a run's path: for tests and tools that look

        return np.asarray(words)

    @property
    def gdt(self) -> Any:
        """The GDT the CPU uses: a numpy uint32 (32, 2) view of the Switcher's words (None once closed)."""
        return self._numpy_view(self.gdt_words)

    @property
    def host_idt(self) -> Any:
        """The host IDT: a numpy uint32 (256, 2) view of the Switcher's words (None once closed)."""
        return self._numpy_view(self.host_idt_words)

    @property
    def shadow_pgd(self) -> Any:
        """The shadow page directory: a numpy uint32 (1024,) view (None once closed)."""
        return self._numpy_view(self.shadow_pgd_words)

    def load_gdt(self, cpu: Any) -> None:
        """The GDT the CPU uses (see :meth:`Switcher.load_gdt`)."""
        self.switcher.load_gdt(cpu.gdt_words)

    def close(self, engine_closed: bool = False) -> None:
        """Let go of the engine (``engine_closed``: Unicorn's binding has
        closed it already -- nothing is removed from it, only dropped)."""
        hooks = getattr(self, "hooks", None)
        if hooks is not None:
            hooks.close(engine_closed)
            self.hooks = None
        if self.uc is not None and not engine_closed:
            self.switcher.unmap(self.uc)
        self.gdt_words = self.host_idt_words = self.shadow_pgd_words = None
        self.switcher.drop_views()
        self.uc = None

    def release_switcher(self) -> None:
        """Free the Switcher's memory (after the engine that mapped it is gone)."""
        self.switcher.release()

    # --- running ---------------------------------------------------------------------------
    def run_guest(self, cpu: Any, idt: Any, changed: int) -> None:
        g = self.guest
        hooks = self.hooks
        if changed & (CHANGED_GDT | CHANGED_GDT_TLS):
            self.load_gdt(cpu)
        self.switcher.set_stack(cpu.esp1, cpu.ss1)
        hooks.set_guest_data(g.lguest_data, g.noirq_start, g.noirq_end)
        stats = self.stats
        runner = self.runner
        # Work done in the hook is counted into the run's Stats afterwards.
        # Without Stats, with a trace or a timeline (which record every
        # event the run loop sees), or under a runner (gdb's stops, a
        # recording's or a replay's inputs, placed at the stops this path
        # makes), every trap and hypercall stops the emulator as before.
        fast = (stats is not None and stats.trace is None and self.native_direct
                and runner is None and self.timeline is None)
        hooks.reflect_mask = REFLECT_MASK if fast else 0
        hooks.hcall_mask = HCALL_MASK if fast else 0
        budget = self._budget()
        try:
            if runner is None:
                err = hooks.run(budget, self.deadline_ns)
            else:  # gdb's stops, a recording's or a replay's inputs, under the same budget
                err = runner.execute(hooks, budget, self.deadline_ns)
        finally:
            if hooks.reflect_total != self._reflected_total or hooks.hcall_total != self._hcalls_total:
                self._count_native(stats)
        if self.timeline is not None:
            self._drain_timeline(cpu, idt, g.clock)  # before the clock advances
        self._advance_clock()
        self._exit(cpu, idt, hooks.reason, err)

    def _budget(self) -> int:
        """Guest blocks to the virtual clock's next expiry (0: no limit)."""
        if self.virtual:
            clock = self.guest.clock
            nxt = clock.next_expiry()
            if nxt is not None:
                return max(1, -(-(nxt - clock.now_ns()) // self.ns_per_block))
        return 0

    def _advance_clock(self) -> None:
        """Virtual time: the blocks run so far, at ns_per_block each."""
        if self.virtual:
            blocks = self.hooks.blocks
            if blocks != self._last_blocks:
                self.guest.clock.advance((blocks - self._last_blocks) * self.ns_per_block)
                self._last_blocks = blocks

    def _hook_hcall(self, num: int, arg1: int) -> int:
        """Hypercall ``num`` from inside the hook (uh_hcall; the emulator is
        still running): the run loop's step 1 for a call the hook may do,
        then its steps 2-6 as far as they would not just re-enter -- a
        notify, a break-out, a kill, a halt or a changed table (-1) stop
        the emulator and the loop takes over; the deadline and irqs are
        the block hook's.  Else the new block budget."""
        cpu = self.cpu
        self._advance_clock()  # the clock the call reads is the loop's
        HYPERCALLS[num](cpu, HcallArgs(num, arg1), None)
        if self.guest.dead is not None or cpu.pending_notify or cpu.break_out or cpu.halted or cpu.changed:
            return -1
        if self.api_less and cpu.irqs_pending:
            # The pure-Python core's pending bits are out of the hook's
            # sight: an irq the advance just raised is taken at the next
            # block start, as the run loop takes it before re-entering.
            self.hooks.poke()
        return self._budget()

    def _count_native(self, stats: Any) -> None:
        """Add the traps the hook reflected and the hypercalls it did to ``stats``."""
        hooks = self.hooks
        counts = hooks.reflect_counts()
        for n, c in counts.items():
            d = c - self._reflected.get(n, 0)
            if d:
                stats.reflected_many(n, d)
        self._reflected, self._reflected_total = counts, hooks.reflect_total
        counts = hooks.hcall_counts()
        for n, c in counts.items():
            d = c - self._hcalls.get(n, 0)
            if d:
                stats.hypercalls_many(n, d)
        self._hcalls, self._hcalls_total = counts, hooks.hcall_total

    def _drain_timeline(self, cpu: Any, idt: Any, clock: Any) -> None:
        """The direct traps the hook recorded during this entry, onto the
        timeline (before the clock advances: a trap's guest time is the
        clock's now plus the blocks run up to it); a direct trap left to the
        Python path (the pure-Python core) is added here, before ``_exit``
        delivers it."""
        hooks = self.hooks
        rows, dropped = hooks.trace_drain()
        timeline = self.timeline
        timeline.direct_dropped += dropped
        if self.virtual:
            now, start = clock.now_ns(), self._last_blocks
            ns = self.ns_per_block

            def to_ns(blocks: Any, _mono: Any) -> Any:
                return now + (blocks - start) * ns
        else:
            t0 = self.timeline_t0

            def to_ns(_blocks: Any, mono: Any) -> Any:
                return mono - t0
        if rows is not None and len(rows):
            timeline.add_direct(rows, to_ns)
        if hooks.reason == REASON_DIRECT and hooks.trapnum < IDT_ENTRIES:
            n = hooks.trapnum
            row = [hooks.blocks, time.monotonic_ns(), int(cpu.regs.eip),
                   n | (int(cpu.regs.cs) & 3) << 8 | ((int(idt[n, 0]) >> 16) & 3) << 16]
            import numpy as np  # a timeline (--trace-out) works in numpy arrays

            timeline.add_direct(np.array([row], dtype=np.uint64), to_ns)

    def code_changed(self, cpu: Any, gpa: int, length: int) -> None:
        """The vmcall patch: drop Unicorn's translations of those bytes."""
        eip = cpu.regs.eip
        try:
            self.uc.ctl_remove_cache(eip, eip + length)
        except _unicorn.UcError:
            self.uc.ctl_flush_tb()

    # --- statistics --------------------------------------------------------------------------------
    def direct_counts(self) -> dict[int, int]:
        counts = dict(self.hooks.direct_counts()) if self.hooks is not None else {}
        for n, c in self.python_direct.items():
            counts[n] = counts.get(n, 0) + c
        return dict(sorted(counts.items()))
