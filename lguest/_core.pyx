# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled core: interrupt and trap delivery over raw guest memory.

This is ``lguest.fallback`` again, in C.  Guest memory is a raw pointer into
the GuestMemory mmap, the cpu and guest state are C structs, and the
delivery path (stack pushes, the pending/blocked bitmaps, IDT checks and the
IDT copy) touches no Python object, allocates nothing and raises nothing:
a misbehaving guest is killed by recording a reason code, which Python
formats only when ``guest.dead`` is read.

The ``lg_*`` functions are ``nogil`` so an emulator's native hook can call
them without the interpreter (through ``native_api``, whose table is
``struct lguest_native_api`` of lguest/include/lguest/abi.h); the classes
below are their Python face.

Beside it: ``_core.pxd`` (the C state, and every access to guest memory
and its page tables), ``lguest/include/lguest/abi.h`` (the facts shared with
C and Python), ``_regs.pyx`` (``Regs``) and ``_clock.pyx`` (the Cpu's clock
event and waker: its base class ``CpuTimer``; ``NativeClock``).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

# The C state (lg_guest, lg_cpu) and the guest-memory accessors are declared
# in _core.pxd, which Cython reads first; the shared facts in lguest/abi.pxd.
from lguest.abi cimport *
from lguest._clock cimport CpuTimer
from lguest._regs cimport Regs as _CRegs, to_u32

import operator

from . import messages as _messages
from . import validate as _validate
from ._clock import NativeClock, native_clock  # NativeClock: re-exported for lguest._core users
from ._regs import Regs  # the Python face of struct lguest_regs
from .validate import check_vector as _check_vector

NAME = "cython"

# --- the clock ----------------------------------------------------------------------
cdef int64_t lg_now_ns(lg_guest *lg) noexcept nogil:
    if lg.clock_kind == CLOCK_REALTIME_KIND:
        return lg_realtime_ns()
    if lg.clock_kind == CLOCK_CELL_KIND:
        return lg.clock_cell[0]
    with gil:
        return _python_now(<object>lg.clock_obj)

cdef int64_t _python_now(object clock) noexcept:
    try:
        return clock.now_ns()
    except BaseException as exc:  # a broken host clock must not unwind a delivery
        import sys
        sys.unraisablehook(_Unraisable(exc, clock))
        return 0

class _Unraisable:
    def __init__(self, exc, obj):
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = "lguest: guest clock now_ns() failed"
        self.object = obj

cdef inline void lg_write_timestamp(lg_guest *lg) noexcept nogil:
    cdef int64_t now
    cdef int64_t sec, nsec
    cdef timespec ts
    if lg.clock_kind == CLOCK_REALTIME_KIND:
        # ktime_get_real_ts: seconds and nanoseconds (tv_nsec 0..10^9-1)
        # straight into the two words, no round trip through an int64 of ns.
        if not lg_ld_ok(lg, LD_TIME, 8):
            lg_kill(lg, K_WRITING_TIMESTAMP, 0, 0)
            return
        clock_gettime(CLOCK_REALTIME, &ts)
        lg_store32(lg.mem + lg.lguest_data + LD_TIME, <uint32_t>ts.tv_sec)
        lg_store32(lg.mem + lg.lguest_data + LD_TIME + 4, <uint32_t>ts.tv_nsec)
        return
    now = lg_now_ns(lg)   # before the check, as before: a Python clock is called either way
    if not lg_ld_ok(lg, LD_TIME, 8):
        lg_kill(lg, K_WRITING_TIMESTAMP, 0, 0)
        return
    # struct timespec of i386: two 32-bit longs; tv_sec wraps past 2038.
    sec = now // 1000000000
    nsec = now - sec * 1000000000
    if nsec < 0:
        nsec += 1000000000
        sec -= 1
    lg_store32(lg.mem + lg.lguest_data + LD_TIME, <uint32_t>sec)
    lg_store32(lg.mem + lg.lguest_data + LD_TIME + 4, <uint32_t>nsec)


# --- delivery -------------------------------------------------------------------------
cdef inline void lg_push(lg_guest *lg, uint32_t *gstack, uint32_t val) noexcept nogil:
    # push_guest_stack: the stack grows down, so move first, then write.
    gstack[0] -= 4
    lg_write32(lg, gstack[0], val)

cdef inline void lg_set_guest_interrupt(lg_cpu *cpu, uint32_t lo, uint32_t hi, bint has_err) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    cdef lg_regs *r = cpu.regs
    cdef uint32_t gstack, origstack, virtstack, ss, eflags, irq_enable

    if (r.ss & 3) != GUEST_PL:
        # Interrupted guest userspace: change to the kernel stack the guest
        # gave us with SET_STACK, saving ss:esp there for iret.
        virtstack = cpu.esp1
        ss = cpu.ss1
        gstack = origstack = lg_guest_pa(lg, virtstack)
        lg_push(lg, &gstack, r.ss)
        lg_push(lg, &gstack, r.esp)
    else:
        virtstack = r.esp
        ss = r.ss
        gstack = origstack = lg_guest_pa(lg, virtstack)

    # The real IF is never off in a guest; the frame shows the guest's own
    # wish from irq_enabled (read after the pushes above, as the C does).
    eflags = r.eflags
    if lg_ld_read(lg, LD_IRQ_ENABLED, &irq_enable) and not (irq_enable & X86_EFLAGS_IF):
        eflags &= ~(<uint32_t>X86_EFLAGS_IF)

    lg_push(lg, &gstack, eflags)
    lg_push(lg, &gstack, r.cs)
    lg_push(lg, &gstack, r.eip)
    if has_err:
        lg_push(lg, &gstack, r.errcode)

    r.ss = ss
    r.esp = virtstack + (gstack - origstack)
    r.cs = GUEST_CS
    r.eip = (lo & 0x0000FFFF) | (hi & 0xFFFF0000U)

    # Interrupt gates (type 0xE) enter with interrupts disabled.
    if ((hi >> 8) & 0xF) == 0xE:
        if not lg_ld_write(lg, LD_IRQ_ENABLED, 0):
            lg_kill(lg, K_DISABLING_INTERRUPTS, 0, 0)

cdef void lg_maybe_do_interrupt(lg_cpu *cpu) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    cdef uint32_t blocked, irq, irq_enabled, a, b
    if not lg.has_lguest_data:
        return
    if not lg_ld_read(lg, LD_BLOCKED_INTERRUPTS, &blocked):
        return
    if not lg_ld_read(lg, LD_IRQ_ENABLED, &irq_enabled):
        irq_enabled = 0   # get_user failed: as if disabled
    # The choice is abi.h's, shared with the emulator hooks' "stop for an irq?".
    irq = lg_irq_to_take(lg_atomic_load(&cpu.irqs_pending), blocked, irq_enabled, cpu.halted,
                         cpu.regs.eip, lg.noirq_start, lg.noirq_end)
    if irq >= LGUEST_IRQS:
        return
    if cpu.halted:
        # An interrupt wakes a halted guest with interrupts back on.
        if not lg_ld_write(lg, LD_IRQ_ENABLED, X86_EFLAGS_IF):
            lg_kill(lg, K_REENABLING_INTERRUPTS, 0, 0)
        cpu.halted = 0
    a = cpu.idt[2 * (FIRST_EXTERNAL_VECTOR + irq)]
    b = cpu.idt[2 * (FIRST_EXTERNAL_VECTOR + irq) + 1]
    if lg_gate_present(b):
        lg_atomic_and(&cpu.irqs_pending, ~(<uint32_t>1 << irq))
        lg_set_guest_interrupt(cpu, a, b, False)
        cpu.irq_counts[irq] += 1
    # The timestamp is refreshed at every attempt: at least every timer tick.
    lg_write_timestamp(lg)

cdef bint lg_deliver_trap(lg_cpu *cpu, uint32_t num) noexcept nogil:
    cdef uint32_t a, b
    if num >= IDT_ENTRIES:
        return False  # e.g. 256, the Switcher's "impossible" trap number
    a = cpu.idt[2 * num]
    b = cpu.idt[2 * num + 1]
    if not lg_gate_present(b):
        return False
    lg_set_guest_interrupt(cpu, a, b, lg_has_err(num))
    return True


# --- stacks -------------------------------------------------------------------------------
cdef void lg_pin_stack_pages(lg_cpu *cpu) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    cdef uint32_t i
    for i in range(lg.stack_pages):
        if lg.dead_code != K_ALIVE:
            break  # hardening: don't spin 2**32 times for a dead guest
        lg_pin_page(lg, cpu.esp1 - 1 - i * PAGE_SIZE)

cdef void lg_guest_set_stack(lg_cpu *cpu, uint32_t seg, uint32_t esp, uint32_t pages) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    if (seg & 3) != GUEST_PL:
        lg_kill(lg, K_BAD_STACK_SEGMENT, seg, 0)
    if pages > 2:
        lg_kill(lg, K_BAD_STACK_PAGES, pages, 0)
    cpu.ss1 = <uint8_t>seg
    cpu.esp1 = esp
    lg.stack_pages = pages
    lg_pin_stack_pages(cpu)


# --- the IDT ----------------------------------------------------------------------------------
cdef inline void lg_default_idt_entry(uint32_t *entry, uint32_t trap, uint32_t handler,
                                      const uint32_t *base) noexcept nogil:
    cdef uint32_t flags = 0x8E00
    if trap == LGUEST_TRAP_ENTRY:
        flags |= GUEST_PL << 13
    elif base != NULL:
        flags |= base[1] & 0x6000
    entry[0] = (<uint32_t>LGUEST_CS << 16) | (handler & 0x0000FFFF)
    entry[1] = (handler & 0xFFFF0000U) | flags

cdef void lg_load_guest_idt_entry(lg_cpu *cpu, uint32_t num, uint32_t lo, uint32_t hi) noexcept nogil:
    cdef uint32_t t
    # NMI, double fault, spurious interrupt and the hypercall trap are
    # never the guest's to handle: ignore attempts to set them.
    if num == 2 or num == 8 or num == 15 or num == LGUEST_TRAP_ENTRY:
        return
    cpu.changed |= CHANGED_IDT
    if num >= IDT_ENTRIES:
        lg_kill(cpu.lg, K_SETTING_IDT_ENTRY, num, 0)
        return
    if not (hi & 0x8000):
        cpu.idt[2 * num] = 0
        cpu.idt[2 * num + 1] = 0
        return
    t = (hi >> 8) & 0xF
    if t != 0xE and t != 0xF:
        lg_kill(cpu.lg, K_BAD_IDT_TYPE, t, 0)
    # Keep only the handler, present bit, DPL and type; the selector is
    # always the guest kernel's.
    cpu.idt[2 * num] = (<uint32_t>GUEST_CS << 16) | (lo & 0x0000FFFF)
    cpu.idt[2 * num + 1] = hi & 0xFFFFEF00U

cdef void lg_copy_traps(const lg_cpu *cpu, uint32_t *idt, const uint32_t *defaults) noexcept nogil:
    # The kernel's loop asks direct_trap(i) of all 256 vectors; at most 29
    # can answer yes (0..31 but 6, 7, 13, 14, 31; 0x80; the syscall
    # vector), so only those are visited.  Every entry is independent of
    # the others: the same IDT, ~4x fewer instructions (PERFORMANCE.md).
    cdef unsigned k, i
    cdef const uint32_t *gidt
    for k in range(cpu.lg.n_direct):
        i = cpu.lg.direct_list[k]
        gidt = cpu.idt + 2 * i
        if lg_gate_type(gidt[1]) == TRAP_GATE:
            idt[2 * i] = gidt[0]
            idt[2 * i + 1] = gidt[1]
        else:
            lg_default_idt_entry(idt + 2 * i, i, defaults[i], gidt)

cdef void lg_fill_direct(lg_guest *lg) noexcept nogil:
    cdef unsigned i
    lg.n_direct = 0
    for i in range(<unsigned>IDT_ENTRIES):
        lg.direct[i] = lg_direct_trap(i, lg.syscall_vector)
        if lg.direct[i]:
            lg.direct_list[lg.n_direct] = <uint8_t>i
            lg.n_direct += 1


# ===================================================================================
# The Python face
# ===================================================================================
cdef object _py_to_index = _validate.to_index

cdef inline int _not_ready(object obj) except -1:
    raise _validate.not_initialised(obj)


# --- IDT helpers ------------------------------------------------------------------------
def idt_address(lo, hi) -> int:
    """The handler address, split across the two words of a gate."""
    return (to_u32(lo, "lo") & 0x0000FFFF) | (to_u32(hi, "hi") & 0xFFFF0000U)


def idt_type(lo, hi) -> int:
    """Gate type, bits 8-11 of the high word (0xE interrupt, 0xF trap)."""
    to_u32(lo, "lo")
    return lg_gate_type(to_u32(hi, "hi"))


def idt_present(lo, hi) -> bool:
    """Whether the gate's present bit (bit 15 of the high word) is set."""
    to_u32(lo, "lo")
    return lg_gate_present(to_u32(hi, "hi"))


def has_err(trap) -> bool:
    """The traps for which the CPU pushes an error code."""
    return lg_has_err(to_u32(trap, "trap"))


def default_idt_entry(trap, handler, base=None):
    """A present interrupt gate into the Switcher, which returns to the host."""
    cdef uint32_t entry[2]
    cdef uint32_t b[2]
    cdef uint32_t t = to_u32(trap, "trap")
    cdef uint32_t h = to_u32(handler, "handler")
    if base is None:
        lg_default_idt_entry(entry, t, h, NULL)
    else:
        b[0], b[1] = _validate.to_idt_pair(base)
        lg_default_idt_entry(entry, t, h, b)
    return (entry[0], entry[1])


# lguest.validate.as_idt / as_defaults: the one rule for both cores.
cdef object _as_idt = _validate.as_idt
cdef object _words_view = _validate.words_view
cdef object _as_defaults = _validate.as_defaults


def setup_default_idt_entries(idt, defaults):
    """Fill a host IDT with the default Switcher entries."""
    cdef uint32_t[:, ::1] t = _as_idt(idt)
    cdef const uint32_t[::1] d = _as_defaults(defaults)
    cdef unsigned i
    for i in range(<unsigned>IDT_ENTRIES):
        lg_default_idt_entry(&t[i, 0], i, d[i], NULL)


# --- the guest ------------------------------------------------------------------------------
cdef class Guest:
    """``struct lguest``: one guest, its memory and its kill state.

    A Guest whose ``__init__`` never ran (``Guest.__new__(Guest)``, a
    subclass skipping ``super().__init__``) raises ``RuntimeError`` on every
    use instead of touching its zeroed C state -- as the Python core does.
    """
    cdef lg_guest g
    cdef bint _ready
    cdef bint _init_started
    cdef object _host
    cdef object _memory
    cdef object _clock
    cdef list _cpus
    cdef bint _restart
    cdef uint32_t _kernel_address
    cdef uint32_t _tsc_khz
    cdef object _custom_dead
    cdef object _dead_cache
    cdef int64_t[::1] _clock_cell   # held for life: the cell cannot be resized under the raw pointer
    cdef object __weakref__

    def __init__(self, host, memory, *, page_offset=0xC0000000, clock=None):
        from .memory import GuestMemory
        cdef int64_t[::1] cell_view
        if self._init_started:
            raise RuntimeError("Guest.__init__ called twice")
        if not isinstance(memory, GuestMemory):
            raise TypeError("memory must be a GuestMemory")
        cdef uint32_t po = to_u32(page_offset, "page_offset")
        cdef uint32_t vector = _check_vector(host.syscall_vector)
        clock = clock if clock is not None else native_clock()
        # The cell is read through a raw pointer on every timestamp: check
        # it now (lguest.validate.clock_cell, the Python core's check too).
        cell = _validate.clock_cell(clock)
        address = memory.address  # ValueError if closed
        self._init_started = True
        memset(&self.g, 0, sizeof(lg_guest))
        self._host = host
        self._memory = memory
        self._cpus = []
        self.g.page_offset = po
        self.g.syscall_vector = vector
        lg_fill_direct(&self.g)
        self._clock = clock
        if getattr(clock, "realtime", False) is True:
            self.g.clock_kind = CLOCK_REALTIME_KIND
        elif cell is not None:
            cell_view = cell
            self._clock_cell = cell_view
            self.g.clock_kind = CLOCK_CELL_KIND
            self.g.clock_cell = &cell_view[0]
        else:
            self.g.clock_kind = CLOCK_PYTHON_KIND
        self.g.clock_obj = <void *>clock
        self.g.mem = <uint8_t *><size_t>address
        self.g.mem_size = memory.size
        self.g.pfn_limit = memory.size // PAGE_SIZE
        self.g.limit = <uint64_t>self.g.pfn_limit * PAGE_SIZE
        memory._register(self)
        self._ready = True

    cdef inline int _check_ready(self) except -1:
        if not self._ready:
            _not_ready(self)
        return 0

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    @property
    def host(self):
        self._check_ready()
        return self._host

    @property
    def memory(self):
        self._check_ready()
        return self._memory

    @property
    def clock(self):
        self._check_ready()
        return self._clock

    @property
    def cpus(self):
        self._check_ready()
        return self._cpus

    @property
    def restart(self):
        self._check_ready()
        return self._restart

    @restart.setter
    def restart(self, value):
        self._check_ready()
        self._restart = bool(value)

    @property
    def kernel_address(self):
        self._check_ready()
        return self._kernel_address

    @kernel_address.setter
    def kernel_address(self, value):
        self._check_ready()
        self._kernel_address = to_u32(value, "kernel_address")

    @property
    def tsc_khz(self):
        self._check_ready()
        return self._tsc_khz

    @tsc_khz.setter
    def tsc_khz(self, value):
        self._check_ready()
        self._tsc_khz = to_u32(value, "tsc_khz")

    def _detach_memory(self):
        """Called by GuestMemory.close() before it unmaps: no more raw access."""
        self.g.mem = NULL
        self.g.mem_size = 0
        self.g.limit = 0

    def _attach_memory(self):
        """Undo _detach_memory when GuestMemory.close() was refused."""
        memory = self._memory
        self.g.mem = <uint8_t *><size_t>memory.address
        self.g.mem_size = memory.size
        self.g.limit = <uint64_t>self.g.pfn_limit * PAGE_SIZE

    cdef inline int _check_mem(self) except -1:
        if self.g.mem == NULL:
            raise ValueError("guest memory is closed")
        return 0

    # --- fields --------------------------------------------------------------------
    @property
    def page_offset(self):
        self._check_ready()
        return self.g.page_offset

    @property
    def pfn_limit(self):
        self._check_ready()
        return self.g.pfn_limit

    @property
    def syscall_vector(self):
        self._check_ready()
        return self.g.syscall_vector

    @property
    def lguest_data(self):
        self._check_ready()
        return self.g.lguest_data if self.g.has_lguest_data else None

    @lguest_data.setter
    def lguest_data(self, value):
        self._check_ready()
        if value is None:
            self.g.has_lguest_data = 0
            self.g.lguest_data = 0
        else:
            self.g.lguest_data = to_u32(value, "lguest_data")
            self.g.has_lguest_data = 1

    @property
    def pgdir(self):
        self._check_ready()
        return self.g.pgdir if self.g.has_pgdir else None

    @pgdir.setter
    def pgdir(self, value):
        self._check_ready()
        if value is None:
            self.g.has_pgdir = 0
            self.g.pgdir = 0
        else:
            self.g.pgdir = to_u32(value, "pgdir")
            self.g.has_pgdir = 1

    @property
    def noirq_start(self):
        self._check_ready()
        return self.g.noirq_start

    @noirq_start.setter
    def noirq_start(self, value):
        self._check_ready()
        self.g.noirq_start = to_u32(value, "noirq_start")

    @property
    def noirq_end(self):
        self._check_ready()
        return self.g.noirq_end

    @noirq_end.setter
    def noirq_end(self, value):
        self._check_ready()
        self.g.noirq_end = to_u32(value, "noirq_end")

    @property
    def stack_pages(self):
        self._check_ready()
        return self.g.stack_pages

    @stack_pages.setter
    def stack_pages(self, value):
        self._check_ready()
        self.g.stack_pages = to_u32(value, "stack_pages")

    # --- death --------------------------------------------------------------------------
    @property
    def dead(self):
        self._check_ready()
        cdef int code = self.g.dead_code
        if code == K_ALIVE:
            return None
        if code == K_CUSTOM:
            return self._custom_dead
        if self._dead_cache is None:
            self._dead_cache = _messages.format_reason(code, self.g.dead_a, self.g.dead_b)
        return self._dead_cache

    def kill(self, reason):
        """``kill_guest``: only the first reason sticks; the caller carries on."""
        self._check_ready()
        if self.g.dead_code == K_ALIVE:
            self._custom_dead = str(reason)
            self.g.dead_code = K_CUSTOM

    # --- guest memory through lguest's checks ------------------------------------------
    def address_ok(self, addr, length) -> bool:
        """``lguest_address_ok``: the end's page must be below pfn_limit, no wrap."""
        self._check_ready()
        cdef uint32_t a = to_u32(addr, "addr")
        cdef uint32_t n = to_u32(length, "length")
        self._check_mem()  # closed memory has no addresses, in both cores
        return lg_range_ok(&self.g, a, n)

    def ld_read_u32(self, off):
        """get_user on a lguest_data field: None if it would fault."""
        self._check_ready()
        cdef uint32_t v
        cdef uint32_t o = to_u32(off, "off")
        self._check_mem()
        if not lg_ld_read(&self.g, o, &v):
            return None
        return v

    def ld_write_u32(self, off, value) -> bool:
        """put_user on a lguest_data field: False (nothing written) if it would fault."""
        self._check_ready()
        cdef uint32_t o = to_u32(off, "off")
        cdef uint32_t v = to_u32(value, "value")
        self._check_mem()
        return lg_ld_write(&self.g, o, v)

    def guest_pa(self, vaddr) -> int:
        """Guest-virtual to guest-physical, as the core sees it."""
        self._check_ready()
        cdef uint32_t v = to_u32(vaddr, "vaddr")
        self._check_mem()
        return lg_guest_pa(&self.g, v)

    def pin_page(self, vaddr):
        """Make sure a kernel stack page is mapped, else kill the guest."""
        self._check_ready()
        cdef uint32_t v = to_u32(vaddr, "vaddr")
        self._check_mem()
        lg_pin_page(&self.g, v)

    def check_syscall_vector(self) -> bool:
        """The guest's wanted syscall vector must be one this host allows."""
        self._check_ready()
        cdef uint32_t vector
        self._check_mem()
        if not lg_ld_read(&self.g, LD_SYSCALL_VEC, &vector):
            return False
        return vector == SYSCALL_VECTOR or vector == self.g.syscall_vector

    def could_be_syscall(self, num) -> bool:
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        return n == SYSCALL_VECTOR or n == self.g.syscall_vector

    def direct_trap(self, num) -> bool:
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        return n < IDT_ENTRIES and self.g.direct[n] != 0

    def new_cpu(self):
        self._check_ready()
        cpu = Cpu(self, len(self.cpus))
        self.cpus.append(cpu)
        return cpu

    def __repr__(self):
        if not self._ready:
            return "<Guest (cython core) uninitialised>"
        dead = self.dead
        return f"<Guest (cython core) {self.g.mem_size:#x} bytes{' dead: ' + repr(dead) if dead else ''}>"


# --- the virtual CPU ----------------------------------------------------------------------------
cdef class Cpu(CpuTimer):
    """``struct lg_cpu``: registers, IDT, pending irqs and the guest's kernel stack.

    Like :class:`Guest`, a Cpu whose ``__init__`` never ran raises
    ``RuntimeError`` on use: its ``c.lg`` / ``c.regs`` are NULL.  Its clock
    event and waker are the base class's (lguest._clock.CpuTimer).
    """
    cdef lg_cpu c
    cdef bint _ready
    cdef Guest _guest
    cdef _CRegs _regs
    cdef object _idt_words   # the guest IDT's storage: a memoryview (256, 2) of "I"
    cdef object _gdt_words   # the GDT's: (32, 2) of "I"
    cdef object _idt         # the numpy views of the two, made on first use (or None)
    cdef object _gdt
    cdef int _id
    cdef uint32_t[:, ::1] _idt_view   # held for life: the IDT cannot be resized under us
    cdef int _ts
    cdef uint32_t _pending_notify
    cdef uint32_t _last_pagefault
    cdef bint _hcall_pending
    cdef int _next_hcall
    cdef bint _break_out
    cdef object __weakref__

    def __init__(self, guest, id=0):
        cdef uint32_t[:, ::1] idt_view
        if self._guest is not None:
            # memset below would unlink nothing and corrupt an armed timer.
            raise RuntimeError("Cpu.__init__ called twice")
        if not isinstance(guest, Guest):
            raise TypeError(f"guest must be a {__name__}.Guest, not {type(guest).__name__}")
        (<Guest>guest)._check_ready()
        cdef int ident = _validate.to_range(id, 0, 0x7FFFFFFF, "id")
        memset(&self.c, 0, sizeof(lg_cpu))
        self._guest = guest
        self._id = ident
        self._regs = Regs()
        # Not numpy (~40 ms of an `lguest exec`): `idt` / `gdt` make the
        # numpy views over these words on first use.
        self._idt_words = _words_view(2 * IDT_ENTRIES, (IDT_ENTRIES, 2))
        self._gdt_words = _words_view(2 * 32, (32, 2))
        idt_view = self._idt_words
        self._idt_view = idt_view
        self.c.lg = &(<Guest>guest).g
        self.c.regs = self._regs.r
        self.c.idt = &idt_view[0, 0]
        self._guest_clock = (<Guest>guest)._clock
        self._ready = True

    def __cinit__(self, *args, **kwargs):
        # The clock event (CpuTimer) fires into this cpu's lg_cpu.
        self.timer.pending = &self.c.irqs_pending
        self.timer.halted = &self.c.halted

    cdef inline int _check_ready(self) except -1:
        if not self._ready:
            _not_ready(self)
        return 0

    cdef int _timer_ready(self) except -1:
        return self._check_ready()

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    # --- read-only parts ------------------------------------------------------------------
    @property
    def guest(self):
        self._check_ready()
        return self._guest

    @property
    def regs(self):
        self._check_ready()
        return self._regs

    @property
    def idt(self):
        """The guest's IDT as a numpy uint32 (256, 2) array, a live view of
        ``idt_words`` (numpy is imported on first use; the same array every time)."""
        self._check_ready()
        if self._idt is None:
            import numpy as np

            self._idt = np.asarray(self._idt_words)
        return self._idt

    @property
    def gdt(self):
        """The GDT as a numpy uint32 (32, 2) array, a live view of ``gdt_words``."""
        self._check_ready()
        if self._gdt is None:
            import numpy as np

            self._gdt = np.asarray(self._gdt_words)
        return self._gdt

    @property
    def idt_words(self):
        """The guest's IDT as a memoryview (256, 2) of "I" words (no numpy)."""
        self._check_ready()
        return self._idt_words

    @property
    def gdt_words(self):
        """The GDT as a memoryview (32, 2) of "I" words (no numpy)."""
        self._check_ready()
        return self._gdt_words

    @property
    def id(self):
        self._check_ready()
        return self._id

    # --- control-plane state (same C types, and rules, as lg_cpu's) ---------------------------
    @property
    def ts(self):
        self._check_ready()
        return self._ts

    @ts.setter
    def ts(self, value):
        self._check_ready()
        self._ts = _validate.to_range(value, -0x80000000, 0x7FFFFFFF, "ts")

    @property
    def pending_notify(self):
        self._check_ready()
        return self._pending_notify

    @pending_notify.setter
    def pending_notify(self, value):
        self._check_ready()
        self._pending_notify = to_u32(value, "pending_notify")

    @property
    def last_pagefault(self):
        self._check_ready()
        return self._last_pagefault

    @last_pagefault.setter
    def last_pagefault(self, value):
        self._check_ready()
        self._last_pagefault = to_u32(value, "last_pagefault")

    @property
    def hcall_pending(self):
        self._check_ready()
        return self._hcall_pending

    @hcall_pending.setter
    def hcall_pending(self, value):
        self._check_ready()
        self._hcall_pending = bool(value)

    @property
    def next_hcall(self):
        self._check_ready()
        return self._next_hcall

    @next_hcall.setter
    def next_hcall(self, value):
        self._check_ready()
        self._next_hcall = _validate.to_range(value, 0, 63, "next_hcall")

    @property
    def break_out(self):
        self._check_ready()
        return self._break_out

    @break_out.setter
    def break_out(self, value):
        self._check_ready()
        self._break_out = bool(value)

    cdef inline int _check_mem(self) except -1:
        if self.c.lg.mem == NULL:
            raise ValueError("guest memory is closed")
        return 0

    # --- fields ---------------------------------------------------------------------------
    @property
    def esp1(self):
        self._check_ready()
        return self.c.esp1

    @esp1.setter
    def esp1(self, value):
        self._check_ready()
        self.c.esp1 = to_u32(value, "esp1")

    @property
    def ss1(self):
        self._check_ready()
        return self.c.ss1

    @ss1.setter
    def ss1(self, value):
        self._check_ready()
        self.c.ss1 = <uint8_t>to_u32(value, "ss1")  # a u8 in this era's lg_cpu

    @property
    def halted(self):
        self._check_ready()
        return bool(self.c.halted)

    @halted.setter
    def halted(self, value):
        self._check_ready()
        self.c.halted = 1 if value else 0

    @property
    def changed(self):
        self._check_ready()
        return self.c.changed

    @changed.setter
    def changed(self, value):
        self._check_ready()
        self.c.changed = to_u32(value, "changed")

    @property
    def irqs_pending(self):
        self._check_ready()
        return lg_atomic_load(&self.c.irqs_pending)

    @irqs_pending.setter
    def irqs_pending(self, value):
        self._check_ready()
        lg_atomic_store(&self.c.irqs_pending, to_u32(value, "irqs_pending"))

    @property
    def irq_counts(self):
        """How many times each virtual irq was delivered (a 32-tuple)."""
        self._check_ready()
        return tuple(self.c.irq_counts[i] for i in range(LGUEST_IRQS))

    # --- checked guest memory ------------------------------------------------------------------
    def lgread(self, addr, n) -> bytes:
        """__lgread: zeros and a kill if the range is not the guest's."""
        self._check_ready()
        cdef uint32_t a = to_u32(addr, "addr")
        cdef uint32_t length = to_u32(n, "n")
        self._check_mem()
        if not lg_range_ok(&self._guest.g, a, length):
            lg_kill(&self._guest.g, K_BAD_READ_ADDRESS, a, length)
            return bytes(length)
        return (<char *>self.c.lg.mem)[a:a + length]

    def lgwrite(self, addr, data) -> bool:
        """__lgwrite: nothing written and a kill if the range is not the guest's."""
        self._check_ready()
        cdef uint32_t a = to_u32(addr, "addr")
        # bytes-like only: bytes(8) would be eight zero bytes, not an error.
        cdef const uint8_t[::1] src = _validate.to_bytes(data)
        cdef uint32_t length = to_u32(src.shape[0], "length")  # > 4 GiB must not wrap
        self._check_mem()
        if not lg_range_ok(&self._guest.g, a, length):
            lg_kill(&self._guest.g, K_BAD_WRITE_ADDRESS, a, length)
            return False
        if length:
            memcpy(self.c.lg.mem + a, &src[0], length)
        return True

    # wake(), wait_for_wakeup(), set_clockevent() and _clock_fired() are
    # the clock's: lguest._clock.CpuTimer.

    # --- the seed functions -----------------------------------------------------------------------
    def set_guest_interrupt(self, lo, hi, has_err):
        """Push an interrupt frame on the guest's stack and jump to its handler.

        ``lo`` and ``hi`` are the gate's two 32-bit words as the IDT stores them: ``lo``
        holds the code selector (bits 16-31) and the handler's low 16 bits; ``hi`` the
        handler's high 16 bits, the present bit (15), the DPL (13-14) and the type
        (8-11: 0xE interrupt, 0xF trap gate).  ``lguest.gate()`` builds them,
        ``lguest.decode_gate()`` reads them.  ``has_err``: push cpu.regs.errcode too.
        """
        self._check_ready()
        cdef uint32_t l = to_u32(lo, "lo")
        cdef uint32_t h = to_u32(hi, "hi")
        cdef bint e = bool(has_err)  # before the check: __bool__ may run Python
        self._check_mem()
        lg_set_guest_interrupt(&self.c, l, h, e)

    def maybe_do_interrupt(self):
        """Before entering the guest: divert it into a pending, unblocked irq."""
        self._check_ready()
        if self.c.lg.mem == NULL:
            raise ValueError("guest memory is closed")
        lg_maybe_do_interrupt(&self.c)

    def deliver_trap(self, num) -> bool:
        """Reflect trap ``num`` into the guest; False if it has no handler."""
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        self._check_mem()
        return lg_deliver_trap(&self.c, n)

    def setup_regs(self, start):
        """lguest_arch_setup_regs: the registers a new guest starts with.

        Kernel segments at the guest's privilege level (cs 0x61, ds = es =
        ss 0x69), interrupts on (eflags 0x202: IF and the always-one bit),
        eip = ``start``; every other word, the trap number included, zero.
        The cs RPL of 1 is what marks the guest kernel: the first vmcall is
        patched only from there."""
        self._check_ready()
        cdef uint32_t eip = to_u32(start, "start")
        memset(self.c.regs, 0, sizeof(lg_regs))
        self.c.regs.ds = GUEST_DS
        self.c.regs.es = GUEST_DS
        self.c.regs.ss = GUEST_DS
        self.c.regs.cs = GUEST_CS
        self.c.regs.eflags = X86_EFLAGS_IF | 2
        self.c.regs.eip = eip

    def pin_stack_pages(self):
        self._check_ready()
        self._check_mem()
        lg_pin_stack_pages(&self.c)

    def guest_set_stack(self, seg, esp, pages):
        """SET_STACK: where the guest kernel stack is, for user-to-kernel traps."""
        self._check_ready()
        cdef uint32_t s = to_u32(seg, "seg")
        cdef uint32_t e = to_u32(esp, "esp")
        cdef uint32_t p = to_u32(pages, "pages")
        self._check_mem()
        lg_guest_set_stack(&self.c, s, e, p)

    def load_guest_idt_entry(self, num, lo, hi):
        """LOAD_IDT_ENTRY: check and store the guest's gate for vector ``num``.

        ``lo`` and ``hi`` are the gate's two 32-bit words as the IDT stores them: ``lo``
        holds the code selector (bits 16-31) and the handler's low 16 bits; ``hi`` the
        handler's high 16 bits, the present bit (15), the DPL (13-14) and the type
        (8-11: 0xE interrupt, 0xF trap gate).  ``lguest.gate()`` builds them,
        ``lguest.decode_gate()`` reads them.
        """
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        cdef uint32_t l = to_u32(lo, "lo")
        cdef uint32_t h = to_u32(hi, "hi")
        self._check_mem()
        lg_load_guest_idt_entry(&self.c, n, l, h)

    def copy_traps(self, idt, defaults):
        """Build the host IDT used while this guest runs."""
        self._check_ready()
        cdef uint32_t[:, ::1] t = _as_idt(idt)
        cdef const uint32_t[::1] d = _as_defaults(defaults)
        lg_copy_traps(&self.c, &t[0, 0], &d[0])

    def write_timestamp(self):
        self._check_ready()
        self._check_mem()
        lg_write_timestamp(self.c.lg)

    def send_irq(self, irq):
        """The Launcher's LHREQ_IRQ: mark ``irq`` pending and wake the cpu."""
        self._check_ready()
        cdef object i = _py_to_index(irq, "irq")
        if i < 0 or i >= LGUEST_IRQS:
            raise ValueError(f"irq {i} out of range 0..{LGUEST_IRQS - 1}")
        lg_atomic_or(&self.c.irqs_pending, <uint32_t>1 << <unsigned>i)
        self._wake()

    def __repr__(self):
        if not self._ready:
            return "<Cpu (cython core) uninitialised>"
        return f"<Cpu {self._id} (cython core) eip={self.c.regs.eip:#x}>"


# --- benchmark entry points: loops in C over the real delivery code ---------------------------------
def bench_deliver(Cpu cpu not None, irq, long long n) -> int:
    """``n`` rounds of: set ``irq`` pending, maybe_do_interrupt, then put back
    the registers a delivery changes (ss, esp, cs, eip).  Returns elapsed ns."""
    cdef long long irqn = operator.index(irq)
    cdef uint32_t bit
    cdef lg_cpu *c = &cpu.c
    if not 0 <= irqn < LGUEST_IRQS:
        raise ValueError("irq out of range")
    bit = <uint32_t>1 << <unsigned>irqn
    cpu._check_ready()
    cpu._check_mem()
    with cpu._guest._memory.hold():   # the loop runs without the GIL: no close() under it
        return _bench_deliver_loop(c, bit, n)


cdef int64_t _bench_deliver_loop(lg_cpu *c, uint32_t bit, long long n) except? -1:
    cdef uint32_t ss, esp, cs, eip
    cdef int64_t t0, t1
    cdef long long i
    ss = c.regs.ss
    esp = c.regs.esp
    cs = c.regs.cs
    eip = c.regs.eip
    with nogil:
        t0 = lg_monotonic_ns()
        for i in range(n):
            lg_atomic_or(&c.irqs_pending, bit)
            lg_maybe_do_interrupt(c)
            c.regs.ss = ss
            c.regs.esp = esp
            c.regs.cs = cs
            c.regs.eip = eip
        t1 = lg_monotonic_ns()
    return t1 - t0


def bench_copy_traps(Cpu cpu not None, idt, defaults, long long n) -> int:
    """``n`` calls of copy_traps in a C loop; returns elapsed ns."""
    cdef uint32_t[:, ::1] t = _as_idt(idt)
    cdef const uint32_t[::1] d = _as_defaults(defaults)
    cdef uint32_t *tp = &t[0, 0]
    cdef const uint32_t *dp = &d[0]
    cpu._check_ready()
    cdef lg_cpu *c = &cpu.c
    cdef int64_t t0, t1
    cdef long long i
    with nogil:
        t0 = lg_monotonic_ns()
        for i in range(n):
            lg_copy_traps(c, tp, dp)
        t1 = lg_monotonic_ns()
    return t1 - t0


# --- the native API for an emulator's compiled hook (lguest.unicorn._uchook) ------------------------
# A native hook (e.g. a Unicorn UC_HOOK_INTR callback) delivers a direct trap
# without entering Python: it fills cpu.regs from the emulator, calls
# set_guest_interrupt through this table and loads the result back.  The
# layout is versioned; the struct lguest_regs it points at is the ABI's.
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_GetContext, PyCapsule_SetContext
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdlib cimport malloc, free
from lguest.lguest cimport (LGUEST_NATIVE_API_CAPSULE, LGUEST_NATIVE_API_VERSION, LGUEST_C_API_CAPSULE,
                            LGUEST_C_API_VERSION, lg_native_api, lguest_c_api, lguest_handle)
from lguest._clock cimport lg_waker
from cpython.exc cimport PyErr_SetObject

cdef extern from "_clock_wheel.h" nogil:
    void lg_wake(lg_waker *w)

cdef void _api_set_guest_interrupt(void *cpu, uint32_t lo, uint32_t hi, int has_err) noexcept nogil:
    lg_set_guest_interrupt(<lg_cpu *>cpu, lo, hi, has_err != 0)

cdef void _api_free(object capsule) noexcept:
    # The capsule owns a reference to its cpu (the context): the raw
    # pointers in the table stay valid exactly as long as the capsule.
    cdef void *cpu = PyCapsule_GetContext(capsule)
    free(PyCapsule_GetPointer(capsule, LGUEST_NATIVE_API_CAPSULE))
    Py_XDECREF(<PyObject *>cpu)

cdef lg_native_api *_new_api_table(Cpu cpu) noexcept:
    """A malloc'd table pointing at ``cpu``'s state (NULL: out of memory);
    owner, hold and waker NULL for the caller to fill as it owns them."""
    cdef lg_native_api *api = <lg_native_api *>malloc(sizeof(lg_native_api))
    if api == NULL:
        return NULL
    api.version = LGUEST_NATIVE_API_VERSION
    api.size = sizeof(lg_native_api)
    api.cpu = <void *>&cpu.c
    api.regs = <uint32_t *>cpu.c.regs
    api.irqs_pending = &cpu.c.irqs_pending
    api.dead_code = &cpu.c.lg.dead_code
    api.set_guest_interrupt = _api_set_guest_interrupt
    api.owner = NULL
    api.hold = NULL
    api.waker = NULL
    return api

def native_api(Cpu cpu not None):
    """A PyCapsule ("lguest._core.lg_native_api") holding the C entry points a
    native emulator hook uses to deliver traps for ``cpu`` (see lguest.unicorn._uchook).
    The capsule keeps ``cpu`` (and so its guest) alive; the guest memory can
    still be closed, after which every access fails the bounds check -- hold
    it (``GuestMemory.hold()``) while a hook may run without the GIL."""
    cpu._check_ready()
    cdef lg_native_api *api = _new_api_table(cpu)
    if api == NULL:
        raise MemoryError()
    # the capsule owns the cpu (its context): no owner, hold or waker here
    try:
        capsule = PyCapsule_New(<void *>api, LGUEST_NATIVE_API_CAPSULE, _api_free)
    except BaseException:
        free(api)
        raise
    Py_INCREF(cpu)
    PyCapsule_SetContext(capsule, <void *>cpu)
    return capsule


# --- the public C API (lguest/lguest.h): lguest._core._C_API ------------------------------------
# One static table; handles are struct lguest_native_api (the per-cpu table
# above) with what they own filled in.  The delivery entry points are the
# seed functions themselves: no GIL, no Python, no checks beyond the core's.
cdef lguest_handle *_capi_acquire(void *cpu_obj) noexcept:
    cdef lg_native_api *h
    cdef Cpu cpu
    try:
        obj = <object><PyObject *>cpu_obj
        if not isinstance(obj, Cpu):
            raise TypeError(f"acquire() needs a lguest._core.Cpu, not {type(obj).__name__}")
        cpu = <Cpu>obj
        cpu._check_ready()
        cpu._check_mem()
        hold = cpu.guest.memory.hold()
        hold.__enter__()  # until release(): the memory cannot be closed under a handle
        h = _new_api_table(cpu)
        if h == NULL:
            hold.__exit__(None, None, None)
            raise MemoryError()
        h.waker = <void *>&cpu.waker
        Py_INCREF(cpu)
        h.owner = <void *>cpu
        Py_INCREF(hold)
        h.hold = <void *>hold
        return h
    except BaseException as exc:
        PyErr_SetObject(type(exc), exc)   # left set for the C caller: NULL means "see the exception"
        return NULL

cdef void _capi_release(lguest_handle *h) noexcept:
    if h == NULL:
        return
    hold = <object><PyObject *>h.hold
    try:
        hold.__exit__(None, None, None)
    except BaseException:
        pass
    Py_XDECREF(<PyObject *>h.hold)
    Py_XDECREF(<PyObject *>h.owner)
    free(h)

cdef void _capi_maybe_do_interrupt(lguest_handle *h) noexcept nogil:
    lg_maybe_do_interrupt(<lg_cpu *>h.cpu)

cdef int _capi_deliver_trap(lguest_handle *h, uint32_t num) noexcept nogil:
    return 1 if lg_deliver_trap(<lg_cpu *>h.cpu, num) else 0

cdef void _capi_set_guest_interrupt(lguest_handle *h, uint32_t lo, uint32_t hi, int has_err) noexcept nogil:
    lg_set_guest_interrupt(<lg_cpu *>h.cpu, lo, hi, has_err != 0)

cdef int _capi_send_irq(lguest_handle *h, uint32_t irq) noexcept nogil:
    if irq >= LGUEST_IRQS:
        return -1
    lg_atomic_or(&(<lg_cpu *>h.cpu).irqs_pending, <uint32_t>1 << irq)
    lg_wake(<lg_waker *>h.waker)
    return 0

cdef void _capi_copy_traps(lguest_handle *h, uint32_t *idt, const uint32_t *defaults) noexcept nogil:
    lg_copy_traps(<lg_cpu *>h.cpu, idt, defaults)

cdef int _capi_irq_deliverable(lguest_handle *h) noexcept nogil:
    cdef lg_cpu *cpu = <lg_cpu *>h.cpu
    cdef lg_guest *lg = cpu.lg
    cdef uint32_t blocked, enabled
    if not lg_ld_read(lg, LD_BLOCKED_INTERRUPTS, &blocked) or not lg_ld_read(lg, LD_IRQ_ENABLED, &enabled):
        return 0
    return 1 if lg_irq_deliverable(lg_atomic_load(&cpu.irqs_pending), blocked, enabled, cpu.halted,
                                   cpu.regs.eip, lg.noirq_start, lg.noirq_end, cpu.idt) else 0

cdef lguest_c_api _C_API_TABLE
_C_API_TABLE.version = LGUEST_C_API_VERSION
_C_API_TABLE.size = sizeof(lguest_c_api)
_C_API_TABLE.acquire = _capi_acquire
_C_API_TABLE.release = _capi_release
_C_API_TABLE.maybe_do_interrupt = _capi_maybe_do_interrupt
_C_API_TABLE.deliver_trap = _capi_deliver_trap
_C_API_TABLE.set_guest_interrupt = _capi_set_guest_interrupt
_C_API_TABLE.send_irq = _capi_send_irq
_C_API_TABLE.copy_traps = _capi_copy_traps
_C_API_TABLE.irq_deliverable = _capi_irq_deliverable

#: The public C API (lguest/lguest.h): a capsule named "lguest._core._C_API"
#: holding a ``const struct lguest_c_api *``, valid for the life of the process.
_C_API = PyCapsule_New(<void *>&_C_API_TABLE, LGUEST_C_API_CAPSULE, NULL)
