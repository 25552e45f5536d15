"""The pure-Python core: the reference for, and stand-in of, ``_core.pyx``.

Every function here follows ``drivers/lguest/interrupts_and_traps.c`` as it
behaves on i386: 32-bit wraparound, the order of side effects, and which
writes still happen after the guest has been killed (a kill only records the
first reason; execution carries on, the run loop notices later).

Registers, the guest IDT and the GDT live in u32 words (memoryviews of
bytearrays: ``regs.words``, ``cpu.idt_words``, ``cpu.gdt_words``), the
compiled core's storage layout; ``cpu.regs.array`` / ``cpu.idt`` /
``cpu.gdt`` are numpy views of the same words, made on first use, so
running a guest never imports numpy.
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import Any

from . import messages as M
from .clock import system_clock
from .constants import (
    CHANGED_IDT,
    FIRST_EXTERNAL_VECTOR,
    GDT_ENTRIES,
    GUEST_CS,
    GUEST_DS,
    GUEST_PL,
    IDT_ENTRIES,
    LD_BLOCKED_INTERRUPTS,
    LD_IRQ_ENABLED,
    LD_SYSCALL_VEC,
    LD_TIME,
    LGUEST_CS,
    LGUEST_IRQS,
    LGUEST_TRAP_ENTRY,
    PAGE_ACCESSED,
    PAGE_DIRTY,
    PAGE_PRESENT,
    PAGE_PSE,
    PAGE_RW,
    PAGE_SIZE,
    PAGE_TABLE,
    R_CS,
    R_DS,
    R_EFLAGS,
    R_EIP,
    R_ERRCODE,
    R_ES,
    R_ESP,
    R_SS,
    REG_NAMES,
    SWITCHER_ADDR,
    SYSCALL_VECTOR,
    X86_EFLAGS_IF,
    is_direct_trap,
)
from .validate import as_defaults as _as_defaults
from .validate import as_idt as _as_idt
from .validate import (
    check_regs_array,
    clock_cell,
    no_pickle,
    not_initialised,
    to_bytes,
    to_idt_pair,
    to_index,
    to_range,
    to_timeout,
    words_view,
)
from .validate import check_vector as _check_vector
from .validate import to_u32 as _check_u32

NAME = "python"
U32 = 0xFFFFFFFF
_u32 = struct.Struct("<I")


@functools.cache  # keyed by a vector: at most 256 entries
def _direct_vectors(syscall_vector: int) -> tuple[int, ...]:
    """The vectors copy_traps visits: those is_direct_trap allows, ascending."""
    return tuple(i for i in range(IDT_ENTRIES) if is_direct_trap(i, syscall_vector))


# --- the IDT entry helpers (module functions in both cores) ------------------
def idt_address(lo: int, hi: int) -> int:
    """The handler address is split across the two words of a gate."""
    return (_check_u32(lo, "lo") & 0x0000FFFF) | (_check_u32(hi, "hi") & 0xFFFF0000)


def idt_type(lo: int, hi: int) -> int:
    """Gate type, bits 8-11 of the high word (0xE interrupt, 0xF trap)."""
    _check_u32(lo, "lo")
    return (_check_u32(hi, "hi") >> 8) & 0xF


def idt_present(lo: int, hi: int) -> bool:
    """Whether the gate's present bit (bit 15 of the high word) is set."""
    _check_u32(lo, "lo")
    return bool(_check_u32(hi, "hi") & 0x8000)


def has_err(trap: int) -> bool:
    """The traps for which the CPU pushes an error code."""
    trap = _check_u32(trap, "trap")
    return trap == 8 or 10 <= trap <= 14 or trap == 17


def default_idt_entry(trap: int, handler: int, base: tuple[int, int] | None = None) -> tuple[int, int]:
    """A present interrupt gate into the Switcher, which returns to the host.

    The hypercall gate gets DPL 1 so the guest kernel may ``int $0x1f``;
    otherwise the guest's own DPL (``base``) is kept so, say, ``int3`` from
    guest userspace still works.
    """
    trap = _check_u32(trap, "trap")
    handler = _check_u32(handler, "handler")
    pair = None if base is None else to_idt_pair(base)
    flags = 0x8E00
    if trap == LGUEST_TRAP_ENTRY:
        flags |= GUEST_PL << 13
    elif pair is not None:
        flags |= pair[1] & 0x6000
    return ((LGUEST_CS << 16) | (handler & 0x0000FFFF)) & U32, (handler & 0xFFFF0000) | flags


def setup_default_idt_entries(idt: Any, defaults: Any) -> None:
    """Fill a host IDT with the default Switcher entries."""
    idt = _as_idt(idt)
    defaults = _as_defaults(defaults)
    for i in range(IDT_ENTRIES):
        idt[i, 0], idt[i, 1] = default_idt_entry(i, int(defaults[i]))


# --- registers ----------------------------------------------------------------

class Regs:
    """``struct lguest_regs``: 18 u32 words, attribute access and a numpy view.

    Built in ``__new__`` (as the compiled core's ``__cinit__``), so even
    ``Regs.__new__(Regs)`` is a usable all-zero register file.
    """

    __slots__ = ("_array", "_words")

    def __new__(cls, array: Any = None) -> Regs:
        self = super().__new__(cls)
        if array is None:
            self._words = words_view(len(REG_NAMES))
            self._array = None  # numpy is imported only if someone asks for .array
        else:
            self._array = check_regs_array(array)
            self._words = memoryview(self._array)
        return self

    def __init__(self, array: Any = None) -> None:
        pass

    @property
    def array(self) -> Any:
        """The 18 words as a numpy uint32 array sharing their memory (numpy
        is imported on first use; the same array every time)."""
        if self._array is None:
            import numpy as np

            self._array = np.asarray(self._words)
        return self._array

    @property
    def words(self) -> memoryview:
        """The 18 words as a memoryview of format "I" (no numpy)."""
        return self._words

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise no_pickle(self)

    def __repr__(self) -> str:
        return "Regs(" + ", ".join(f"{n}={int(v):#x}" for n, v in zip(REG_NAMES, self._words, strict=True)) + ")"


def _reg_property(index: int, name: str) -> property:
    def get(self: Regs) -> int:
        return self._words[index]

    def set(self: Regs, value: int) -> None:
        self._words[index] = _check_u32(value, name)

    return property(get, set, doc=f"register {name}")


for _i, _n in enumerate(REG_NAMES):
    setattr(Regs, _n, _reg_property(_i, _n))


# --- the guest ------------------------------------------------------------------
_GUEST_U32_FIELDS = frozenset(("noirq_start", "noirq_end", "stack_pages", "kernel_address", "tsc_khz"))
# Read-only once built, as the compiled core's ``readonly`` attributes.
_GUEST_READONLY = frozenset(("host", "memory", "clock", "page_offset", "pfn_limit", "syscall_vector", "cpus"))


class Guest:
    """``struct lguest``: one guest, its memory and its kill state.

    An instance whose ``__init__`` never ran (``Guest.__new__(Guest)``, a
    subclass that skips ``super().__init__``) raises ``RuntimeError`` on use,
    exactly like the compiled core's.
    """

    def __init__(self, host: Any, memory: Any, *, page_offset: int = 0xC0000000, clock: Any = None) -> None:
        from .memory import GuestMemory

        d = self.__dict__
        if "_init" in d:
            raise RuntimeError("Guest.__init__ called twice")
        if not isinstance(memory, GuestMemory):
            raise TypeError("memory must be a GuestMemory")
        page_offset = _check_u32(page_offset, "page_offset")
        syscall_vector = _check_vector(host.syscall_vector)
        clock = clock if clock is not None else system_clock()
        clock_cell(clock)  # the same bind-time check as the compiled core's
        view = memory.view
        d["_init"] = True
        self.host = host
        self.memory = memory
        self.page_offset = page_offset
        self.clock = clock
        self.syscall_vector = syscall_vector
        self._view = view
        self._size = memory.size
        self.pfn_limit = memory.size // PAGE_SIZE
        self._lguest_data: int | None = None
        self._pgdir: int | None = None
        self.noirq_start = 0
        self.noirq_end = 0
        self.stack_pages = 0
        self.kernel_address = 0
        self.tsc_khz = 0
        self.restart = False
        self._dead: str | None = None
        self.cpus: list[Cpu] = []
        memory._register(self)
        d["_ready"] = True

    # host-settable u32 fields, validated; the rest read-only once built
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "_init" not in d:
            raise not_initialised(self)
        if "_ready" in d and name not in d and not hasattr(type(self), name):
            # As the compiled Guest (no __dict__): no attributes beyond its own.
            raise AttributeError(f"'Guest' object has no attribute {name!r}")
        if name in _GUEST_U32_FIELDS:
            value = _check_u32(value, name)
        elif name == "restart":
            value = bool(value)
        elif name in _GUEST_READONLY and "_ready" in d:
            raise AttributeError(f"attribute {name!r} of 'Guest' objects is not writable")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup failed: on a half-built object
        # that is the missing __init__, not a missing attribute.
        if not name.startswith("__") and "_ready" not in self.__dict__:
            raise not_initialised(self)
        raise AttributeError(f"'Guest' object has no attribute {name!r}")

    def _check_ready(self) -> None:
        if "_ready" not in self.__dict__:
            raise not_initialised(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise no_pickle(self)

    @property
    def lguest_data(self) -> int | None:
        return self._lguest_data

    @lguest_data.setter
    def lguest_data(self, value: int | None) -> None:
        self._lguest_data = None if value is None else _check_u32(value, "lguest_data")

    @property
    def pgdir(self) -> int | None:
        return self._pgdir

    @pgdir.setter
    def pgdir(self, value: int | None) -> None:
        self._pgdir = None if value is None else _check_u32(value, "pgdir")

    # --- death ------------------------------------------------------------------
    @property
    def dead(self) -> str | None:
        return self._dead

    def kill(self, reason: str) -> None:
        """``kill_guest``: only the first reason sticks; the caller carries on."""
        if self._dead is None:
            self._dead = str(reason)

    def _kill(self, code: int, a: int = 0, b: int = 0) -> None:
        if self._dead is None:
            self._dead = M.format_reason(code, a, b)

    def _detach_memory(self) -> None:
        self._view = None

    def _attach_memory(self) -> None:
        """Undo _detach_memory when GuestMemory.close() was refused."""
        self._view = self.memory.view

    def _mem(self) -> memoryview:
        if self._view is None:
            raise ValueError("guest memory is closed")
        return self._view

    # --- guest memory through lguest's checks -----------------------------------
    def address_ok(self, addr: int, length: int) -> bool:
        """``lguest_address_ok``: the end's page must be below pfn_limit, no wrap."""
        addr = _check_u32(addr, "addr")
        length = _check_u32(length, "length")
        self._mem()  # closed memory has no addresses (the compiled core's limit is 0)
        end = (addr + length) & U32
        return end // PAGE_SIZE < self.pfn_limit and end >= addr

    def _lgread_u32(self, addr: int) -> int:
        if not self.address_ok(addr, 4):
            self._kill(M.BAD_READ_ADDRESS, addr, 4)
            return 0
        return _u32.unpack_from(self._view, addr)[0]

    def _lgwrite_u32(self, addr: int, value: int) -> None:
        if not self.address_ok(addr, 4):
            self._kill(M.BAD_WRITE_ADDRESS, addr, 4)
            return
        _u32.pack_into(self._view, addr, value)

    def ld_read_u32(self, off: int) -> int | None:
        """get_user on a lguest_data field: None if it would fault."""
        off = _check_u32(off, "off")
        mem = self._mem()
        ld = self._lguest_data
        if ld is None or ld + off + 4 > self._size:
            return None
        return _u32.unpack_from(mem, ld + off)[0]

    def ld_write_u32(self, off: int, value: int) -> bool:
        """put_user on a lguest_data field: False (nothing written) if it would fault."""
        off = _check_u32(off, "off")
        value = _check_u32(value, "value")
        mem = self._mem()
        ld = self._lguest_data
        if ld is None or ld + off + 4 > self._size:
            return False
        _u32.pack_into(mem, ld + off, value & U32)
        return True

    # --- address translation ----------------------------------------------------------
    def guest_pa(self, vaddr: int) -> int:
        """Guest-virtual to guest-physical, as the core sees it."""
        vaddr = _check_u32(vaddr, "vaddr")
        self._mem()
        return self._guest_pa(vaddr)

    def _guest_pa(self, vaddr: int) -> int:
        pgdir = self._pgdir
        if pgdir is None:
            return (vaddr - self.page_offset) & U32
        pgd = self._lgread_u32((pgdir + (vaddr >> 22) * 4) & U32)
        if not pgd & PAGE_PRESENT:
            self._kill(M.BAD_ADDRESS, vaddr)
            return U32
        pte = self._lgread_u32(((pgd & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4) & U32)
        if not pte & PAGE_PRESENT:
            self._kill(M.BAD_ADDRESS, vaddr)
        return (pte & 0xFFFFF000) | (vaddr & 0xFFF)

    def _pin_page(self, vaddr: int) -> None:
        if self._pgdir is None:
            page = self._guest_pa(vaddr) & 0xFFFFF000
            if page + PAGE_SIZE <= self._size:
                return
            self._kill(M.BAD_STACK_PAGE, vaddr)
            return
        # page_writable + demand_page(vaddr, write) without shadow tables,
        # in the kernel's order (API.md): the Switcher's range first, whatever
        # the guest's tables say; it touches no guest memory.
        if vaddr >= SWITCHER_ADDR:
            self._kill(M.SWITCHER_PAGES)
            return
        pgd = self._lgread_u32((self._pgdir + (vaddr >> 22) * 4) & U32)
        if not pgd & PAGE_PRESENT:
            self._kill(M.BAD_STACK_PAGE, vaddr)
            return
        # check_gpgd kills but demand_page carries on with the walk (a bad
        # pfn then fails the pte read: that kill is already shadowed).
        if pgd & 0xFFF & ~PAGE_TABLE or pgd >> 12 >= self.pfn_limit:
            self._kill(M.BAD_PGD)
        pte_addr = ((pgd & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4) & U32
        pte = self._lgread_u32(pte_addr)
        if not pte & PAGE_PRESENT or not pte & PAGE_RW:
            self._kill(M.BAD_STACK_PAGE, vaddr)
            return
        if pte & PAGE_PSE or pte >> 12 >= self.pfn_limit:
            self._kill(M.BAD_PTE)  # check_gpte; the pin counts as done
            return
        self._lgwrite_u32(pte_addr, pte | PAGE_ACCESSED | PAGE_DIRTY)

    def pin_page(self, vaddr: int) -> None:
        """Make sure a kernel stack page is mapped, else kill the guest."""
        vaddr = _check_u32(vaddr, "vaddr")
        self._mem()
        self._pin_page(vaddr)

    def check_syscall_vector(self) -> bool:
        """The guest's wanted syscall vector must be one this host allows."""
        vector = self.ld_read_u32(LD_SYSCALL_VEC)
        if vector is None:
            return False
        return vector == SYSCALL_VECTOR or vector == self.syscall_vector

    def could_be_syscall(self, num: int) -> bool:
        num = _check_u32(num, "num")
        vector = self.syscall_vector  # first: a half-built Guest raises even for 0x80
        return num == SYSCALL_VECTOR or num == vector

    def direct_trap(self, num: int) -> bool:
        num = _check_u32(num, "num")
        self._check_ready()
        return is_direct_trap(num, self.syscall_vector)

    def new_cpu(self) -> Cpu:
        cpu = Cpu(self, len(self.cpus))
        self.cpus.append(cpu)
        return cpu

    def __repr__(self) -> str:
        if "_ready" not in self.__dict__:
            return f"<Guest ({NAME} core) uninitialised>"
        return f"<Guest ({NAME} core) {self._size:#x} bytes{' dead: ' + repr(self._dead) if self._dead else ''}>"


# --- the virtual CPU -------------------------------------------------------------
_CPU_U32_FIELDS = frozenset(("pending_notify", "last_pagefault"))
_CPU_BOOL_FIELDS = frozenset(("halted", "hcall_pending", "break_out"))
_CPU_READONLY = frozenset(("guest", "id", "regs", "idt", "gdt", "idt_words", "gdt_words"))
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1  # lg_cpu's ``int`` fields


class Cpu:
    """``struct lg_cpu``: registers, IDT, pending irqs and the stack the
    guest told us about.  Half-built instances raise ``RuntimeError``, as
    :class:`Guest`'s do."""

    def __init__(self, guest: Guest, id: int = 0) -> None:
        d = self.__dict__
        if "_init" in d:
            raise RuntimeError("Cpu.__init__ called twice")
        if not isinstance(guest, Guest):
            raise TypeError(f"guest must be a {__name__}.Guest, not {type(guest).__name__}")
        guest._check_ready()
        id = to_range(id, 0, INT_MAX, "id")
        d["_init"] = True
        self.guest = guest
        self.id = id
        self.regs = Regs()
        self.idt_words = words_view(2 * IDT_ENTRIES, (IDT_ENTRIES, 2))
        self.gdt_words = words_view(2 * GDT_ENTRIES, (GDT_ENTRIES, 2))
        self._idt = self._gdt = None  # their numpy views, made on first use
        self._esp1 = 0
        self._ss1 = 0
        self.halted = False
        self._changed = 0
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._wakeup = threading.Event()
        self.ts = 0
        self.pending_notify = 0
        self.last_pagefault = 0
        self.hcall_pending = False
        self.next_hcall = 0
        self.break_out = False
        self._irq_counts = [0] * LGUEST_IRQS
        d["_ready"] = True

    # Host-settable fields follow the compiled core's C types; the rest is
    # read-only once built.
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "_init" not in d:
            raise not_initialised(self)
        if "_ready" in d and name not in d and not hasattr(type(self), name):
            # As the compiled Cpu (no __dict__): no attributes beyond its own.
            raise AttributeError(f"'Cpu' object has no attribute {name!r}")
        if name in _CPU_BOOL_FIELDS:
            value = bool(value)
        elif name in _CPU_U32_FIELDS:
            value = _check_u32(value, name)
        elif name == "ts":
            value = to_range(value, INT_MIN, INT_MAX, "ts")
        elif name == "next_hcall":
            value = to_range(value, 0, 63, "next_hcall")
        elif name in _CPU_READONLY and "_ready" in d:
            raise AttributeError(f"attribute {name!r} of 'Cpu' objects is not writable")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("__") and "_ready" not in self.__dict__:
            raise not_initialised(self)
        raise AttributeError(f"'Cpu' object has no attribute {name!r}")

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise no_pickle(self)

    @property
    def idt(self) -> Any:
        """The guest's IDT as a numpy uint32 (256, 2) array, a live view of
        ``idt_words`` (numpy is imported on first use; the same array every time)."""
        if self._idt is None:
            import numpy as np

            object.__setattr__(self, "_idt", np.asarray(self.idt_words))
        return self._idt

    @property
    def gdt(self) -> Any:
        """The GDT as a numpy uint32 (32, 2) array, a live view of ``gdt_words``."""
        if self._gdt is None:
            import numpy as np

            object.__setattr__(self, "_gdt", np.asarray(self.gdt_words))
        return self._gdt

    @property
    def irq_counts(self) -> tuple[int, ...]:
        """How many times each virtual irq was delivered (a 32-tuple)."""
        return tuple(self._irq_counts)

    # --- host-settable fields -------------------------------------------------
    @property
    def esp1(self) -> int:
        return self._esp1

    @esp1.setter
    def esp1(self, v: int) -> None:
        self._esp1 = _check_u32(v, "esp1")

    @property
    def ss1(self) -> int:
        return self._ss1

    @ss1.setter
    def ss1(self, v: int) -> None:
        self._ss1 = _check_u32(v, "ss1") & 0xFF  # a u8 in this era's lg_cpu

    @property
    def changed(self) -> int:
        return self._changed

    @changed.setter
    def changed(self, v: int) -> None:
        self._changed = _check_u32(v, "changed")

    @property
    def irqs_pending(self) -> int:
        return self._pending

    @irqs_pending.setter
    def irqs_pending(self, v: int) -> None:
        v = _check_u32(v, "irqs_pending")
        with self._pending_lock:
            self._pending = v

    # --- wake-ups (the Launcher task sleeping in run_guest) ----------------------
    def wake(self) -> None:
        self._wakeup.set()

    def wait_for_wakeup(self, timeout: float | None = None) -> bool:
        woken = self._wakeup.wait(to_timeout(timeout))
        self._wakeup.clear()
        return woken

    def _set_pending(self, irq: int) -> None:
        with self._pending_lock:
            self._pending |= 1 << irq

    def _clear_pending(self, irq: int) -> None:
        with self._pending_lock:
            self._pending &= ~(1 << irq)

    # --- checked guest memory ---------------------------------------------------
    def lgread(self, addr: int, n: int) -> bytes:
        """__lgread: zeros and a kill if the range is not the guest's."""
        g = self.guest
        addr = _check_u32(addr, "addr")
        n = _check_u32(n, "n")
        mem = g._mem()
        if not g.address_ok(addr, n):
            g._kill(M.BAD_READ_ADDRESS, addr, n)
            return bytes(n)
        return bytes(mem[addr:addr + n])

    def lgwrite(self, addr: int, data: bytes) -> bool:
        """__lgwrite: nothing written and a kill if the range is not the guest's."""
        g = self.guest
        addr = _check_u32(addr, "addr")
        data = to_bytes(data)
        mem = g._mem()
        n = len(data)
        if not g.address_ok(addr, n):
            g._kill(M.BAD_WRITE_ADDRESS, addr, n)
            return False
        mem[addr:addr + n] = data
        return True

    # --- delivery -----------------------------------------------------------------
    def set_guest_interrupt(self, lo: int, hi: int, has_err: bool) -> None:
        """Push an interrupt frame on the guest's stack and jump to its handler.

        ``lo`` and ``hi`` are the gate's two 32-bit words as the IDT stores them: ``lo``
        holds the code selector (bits 16-31) and the handler's low 16 bits; ``hi`` the
        handler's high 16 bits, the present bit (15), the DPL (13-14) and the type
        (8-11: 0xE interrupt, 0xF trap gate).  ``lguest.gate()`` builds them,
        ``lguest.decode_gate()`` reads them.  ``has_err``: push cpu.regs.errcode too.
        """
        lo = _check_u32(lo, "lo")
        hi = _check_u32(hi, "hi")
        err = bool(has_err)  # before the check: __bool__ may run Python (and close the memory)
        self.guest._mem()
        self._set_guest_interrupt(lo, hi, err)

    def _push(self, gstack: int, value: int) -> int:
        """push_guest_stack: the stack grows down; move, then write."""
        gstack = (gstack - 4) & U32
        self.guest._lgwrite_u32(gstack, value)
        return gstack

    def _set_guest_interrupt(self, lo: int, hi: int, has_err: bool) -> None:
        g = self.guest
        r = self.regs._words
        regs_ss = int(r[R_SS])
        if regs_ss & 3 != GUEST_PL:
            # From guest userspace: switch to the kernel stack from
            # SET_STACK and save the user ss:esp for iret to restore.
            virtstack = self._esp1
            ss = self._ss1
            gstack = origstack = g._guest_pa(virtstack)
            gstack = self._push(gstack, regs_ss)
            gstack = self._push(gstack, int(r[R_ESP]))
        else:
            virtstack = int(r[R_ESP])
            ss = regs_ss
            gstack = origstack = g._guest_pa(virtstack)

        # The guest's real IF is always on; its wish lives in irq_enabled
        # (read only now: the pushes above may have just overwritten it),
        # and that is what the frame must show.
        eflags = int(r[R_EFLAGS])
        irq_enable = g.ld_read_u32(LD_IRQ_ENABLED)
        if irq_enable is not None and not irq_enable & X86_EFLAGS_IF:
            eflags &= ~X86_EFLAGS_IF & U32
        gstack = self._push(gstack, eflags)
        gstack = self._push(gstack, int(r[R_CS]))
        gstack = self._push(gstack, int(r[R_EIP]))
        if has_err:
            gstack = self._push(gstack, int(r[R_ERRCODE]))

        r[R_SS] = ss
        r[R_ESP] = (virtstack + (gstack - origstack)) & U32
        r[R_CS] = GUEST_CS
        r[R_EIP] = idt_address(lo, hi)
        # An interrupt gate enters with interrupts off.
        if idt_type(lo, hi) == 0xE and not g.ld_write_u32(LD_IRQ_ENABLED, 0):
            g._kill(M.DISABLING_INTERRUPTS)

    def maybe_do_interrupt(self) -> None:
        """Before entering the guest: divert it into a pending, unblocked irq."""
        g = self.guest
        g._mem()
        if g._lguest_data is None:
            return
        blocked = g.ld_read_u32(LD_BLOCKED_INTERRUPTS)
        if blocked is None:
            return
        blk = self._pending & ~blocked
        if not blk:
            return
        irq = (blk & -blk).bit_length() - 1
        eip = self.regs._words[R_EIP]
        if g.noirq_start <= eip < g.noirq_end:
            return  # inside the guest's iret sequence
        if self.halted:
            if not g.ld_write_u32(LD_IRQ_ENABLED, X86_EFLAGS_IF):
                g._kill(M.REENABLING_INTERRUPTS)
            self.halted = False
        else:
            if not g.ld_read_u32(LD_IRQ_ENABLED):
                return
        idt = self.idt_words
        lo, hi = idt[FIRST_EXTERNAL_VECTOR + irq, 0], idt[FIRST_EXTERNAL_VECTOR + irq, 1]
        if hi & 0x8000:
            self._clear_pending(irq)
            self._set_guest_interrupt(lo, hi, False)
            self._irq_counts[irq] += 1
        self._write_timestamp()

    def deliver_trap(self, num: int) -> bool:
        """Reflect trap ``num`` into the guest; False if it has no handler."""
        num = _check_u32(num, "num")
        self.guest._mem()
        if num >= IDT_ENTRIES:
            return False
        idt = self.idt_words
        lo, hi = idt[num, 0], idt[num, 1]
        if not hi & 0x8000:
            return False
        self._set_guest_interrupt(lo, hi, has_err(num))
        return True

    # --- stacks ---------------------------------------------------------------------
    def setup_regs(self, start: int) -> None:
        """lguest_arch_setup_regs: the registers a new guest starts with.

        Kernel segments at the guest's privilege level (cs 0x61, ds = es =
        ss 0x69), interrupts on (eflags 0x202: IF and the always-one bit),
        eip = ``start``; every other word, the trap number included, zero.
        The cs RPL of 1 is what marks the guest kernel: the first vmcall is
        patched only from there."""
        r = self.regs._words  # first: a half-built Cpu raises, whatever start is
        start = _check_u32(start, "start")
        for i in range(len(r)):
            r[i] = 0
        r[R_DS] = r[R_ES] = r[R_SS] = GUEST_DS
        r[R_CS] = GUEST_CS
        r[R_EFLAGS] = X86_EFLAGS_IF | 2
        r[R_EIP] = start

    def pin_stack_pages(self) -> None:
        g = self.guest
        g._mem()
        for i in range(g.stack_pages):
            if g._dead is not None:
                break  # hardening: a dead guest's page count may be hostile
            g._pin_page((self._esp1 - 1 - i * PAGE_SIZE) & U32)

    def guest_set_stack(self, seg: int, esp: int, pages: int) -> None:
        """SET_STACK: where the guest kernel stack is, for user→kernel traps."""
        seg = _check_u32(seg, "seg")
        esp = _check_u32(esp, "esp")
        pages = _check_u32(pages, "pages")
        g = self.guest
        g._mem()
        if seg & 3 != GUEST_PL:
            g._kill(M.BAD_STACK_SEGMENT, seg)
        if pages > 2:
            g._kill(M.BAD_STACK_PAGES, pages)
        self._ss1 = seg & 0xFF
        self._esp1 = esp
        g.stack_pages = pages
        self.pin_stack_pages()

    # --- the IDT ------------------------------------------------------------------------
    def _set_trap(self, num: int, lo: int, hi: int) -> None:
        if not hi & 0x8000:
            self.idt_words[num, 0] = self.idt_words[num, 1] = 0
            return
        t = idt_type(lo, hi)
        if t != 0xE and t != 0xF:
            self.guest._kill(M.BAD_IDT_TYPE, t)
        self.idt_words[num, 0] = (GUEST_CS << 16) | (lo & 0xFFFF)
        self.idt_words[num, 1] = hi & 0xFFFFEF00

    def load_guest_idt_entry(self, num: int, lo: int, hi: int) -> None:
        """LOAD_IDT_ENTRY: check and store the guest's gate for vector ``num``.

        ``lo`` and ``hi`` are the gate's two 32-bit words as the IDT stores them: ``lo``
        holds the code selector (bits 16-31) and the handler's low 16 bits; ``hi`` the
        handler's high 16 bits, the present bit (15), the DPL (13-14) and the type
        (8-11: 0xE interrupt, 0xF trap gate).  ``lguest.gate()`` builds them,
        ``lguest.decode_gate()`` reads them.
        """
        num = _check_u32(num, "num")
        lo = _check_u32(lo, "lo")
        hi = _check_u32(hi, "hi")
        self.guest._mem()
        # NMI, double fault, spurious and the hypercall trap stay the host's.
        if num in (2, 8, 15, LGUEST_TRAP_ENTRY):
            return
        self._changed |= CHANGED_IDT
        if num >= IDT_ENTRIES:
            self.guest._kill(M.SETTING_IDT_ENTRY, num)
        else:
            self._set_trap(num, lo, hi)

    def copy_traps(self, idt: Any, defaults: Any) -> None:
        """Build the host IDT used while this guest runs.

        Direct trap gates go straight to the guest; everything else bounces
        through the Switcher back to the host, keeping the guest's DPL.
        """
        idt = _as_idt(idt)
        defaults = _as_defaults(defaults)
        # Only the vectors that can be direct (at most 29 of 256), as the
        # compiled core's lg_copy_traps visits them.
        gidt = self.idt_words
        for i in _direct_vectors(self.guest.syscall_vector):
            lo, hi = gidt[i, 0], gidt[i, 1]
            if idt_type(lo, hi) == 0xF:
                idt[i, 0], idt[i, 1] = lo, hi
            else:
                idt[i, 0], idt[i, 1] = default_idt_entry(i, int(defaults[i]), (lo, hi))

    # --- the clock ------------------------------------------------------------------
    def set_clockevent(self, delta_ns: int) -> None:
        """Arm the guest's one-shot timer ``delta_ns`` from now; 0 cancels."""
        delta_ns = _check_u32(delta_ns, "delta_ns")
        clock = self.guest.clock
        if delta_ns == 0:
            clock.cancel(self)
            return
        clock.arm(self, clock.now_ns() + delta_ns, self._clock_fired)

    def _clock_fired(self) -> None:
        """clockdev_fn: irq 0 is the timer; wake the cpu if it sleeps."""
        self._set_pending(0)
        if self.halted:
            self.wake()

    def write_timestamp(self) -> None:
        self.guest._mem()
        self._write_timestamp()

    def _write_timestamp(self) -> None:
        g = self.guest
        now = g.clock.now_ns()
        ld = g._lguest_data
        if ld is None or ld + LD_TIME + 8 > g._size:
            g._kill(M.WRITING_TIMESTAMP)
            return
        struct.pack_into("<II", g._view, ld + LD_TIME, (now // 1_000_000_000) & U32, now % 1_000_000_000)

    def send_irq(self, irq: int) -> None:
        """The Launcher's LHREQ_IRQ: mark ``irq`` pending and wake the cpu."""
        irq = to_index(irq, "irq")
        if not 0 <= irq < LGUEST_IRQS:
            raise ValueError(f"irq {irq} out of range 0..{LGUEST_IRQS - 1}")
        self._set_pending(irq)
        self.wake()

    def __repr__(self) -> str:
        if "_ready" not in self.__dict__:
            return f"<Cpu ({NAME} core) uninitialised>"
        return f"<Cpu {self.id} ({NAME} core) eip={self.regs._words[R_EIP]:#x}>"
