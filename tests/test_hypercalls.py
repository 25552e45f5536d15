"""Hypercalls (ABI.md §5 do_hypercalls / initialize / do_async_hcalls / do_hcall,
§6 messages), on both cores.

Every expected value is derived by hand from ABI.md, not from the
implementation.  Synchronous calls go the way a guest makes them: the backend
stops the guest with trap 31 and eax/ebx/ecx/edx holding the call, the run
loop does the call at the top of its next turn and then returns on
break-out (step 4, after the hypercalls of step 1).
"""

from __future__ import annotations

import struct

import pytest
from lgtest import LD, set_regs

import lguest
from lguest.host import hypercalls
from lguest.host.run import GuestKilled, RunExit, ScriptedBackend, run_guest

PAGE = 4096
MEM_SIZE = 64 * PAGE  # conftest's mem fixture: 64 pages, pfn_limit 64
M32 = 0xFFFFFFFF

# struct lguest_data (ABI.md §2)
LD_IRQ_ENABLED = 0
LD_BLOCKED = 4
LD_CR2 = 8
LD_TIME = 12
LD_STATUS = 20
LD_HCALLS = 84
LD_RESERVE_MEM = 1108
LD_TSC_KHZ = 1112
LD_PGDIR = 1116
LD_NOIRQ_START = 1120
LD_NOIRQ_END = 1124
LD_KERNEL_ADDRESS = 1128
LD_SYSCALL_VEC = 1132
LD_SIZE = 1136

SENTINEL = 0xA5A5A5A5

# hypercall numbers (ABI.md §1, HC)
FLUSH_ASYNC, LGUEST_INIT, SHUTDOWN, LOAD_GDT, NEW_PGTABLE, FLUSH_TLB = 0, 1, 2, 3, 4, 5
LOAD_IDT_ENTRY, SET_STACK, TS, SET_CLOCKEVENT, HALT = 6, 7, 8, 9, 10
SET_PTE, SET_PMD, LOAD_TLS, NOTIFY = 14, 15, 16, 17

CHANGED_IDT, CHANGED_GDT, CHANGED_GDT_TLS = 1, 2, 4


# --- helpers ----------------------------------------------------------------------
def fixed_desc(b):
    """The GDT fix-up of ABI.md §5 (SEGC) on a descriptor's high word."""
    if b & 0x6000 == 0:
        b |= 0x2000  # DPL 0 -> the guest's ring 1
    return b | 0x100  # accessed


def hcall(cpu, n, a1=0, a2=0, a3=0, backend=None, extra=None):
    """The guest stops with trap 31 holding call n; the loop runs it, then
    returns on break-out (or on a NOTIFY).  Returns (backend, RunExit or
    GuestKilled)."""
    if backend is None:
        backend = ScriptedBackend([])

    def step(c):
        set_regs(c, eax=n, ebx=a1, ecx=a2, edx=a3, trapnum=31)
        if extra:
            set_regs(c, **extra)
        c.break_out = True

    backend.steps.append(step)
    try:
        result = run_guest(cpu, backend, timeout=5)
    except GuestKilled as exc:
        result = exc
    return backend, result


def queue(mem, slot, n, a1=0, a2=0, a3=0, status=0, ld=LD):
    """Put hcall n in async ring slot `slot`, pending (status != 0xFF)."""
    mem.write(ld + LD_HCALLS + slot * 16, struct.pack("<4I", n, a1, a2, a3))
    mem.write(ld + LD_STATUS + slot, bytes([status]))


def status(mem, ld=LD):
    return mem.read(ld + LD_STATUS, 64)


@pytest.fixture
def ld(guest, mem):
    """A registered lguest_data with an empty async ring."""
    guest.lguest_data = LD
    mem.write(LD + LD_STATUS, b"\xff" * 64)
    mem.write_u32(LD + LD_IRQ_ENABLED, 0x200)
    return LD


@pytest.fixture
def init_page(guest, mem):
    """The guest's lguest_data before LGUEST_INIT: fields the guest fills,
    sentinels where the host must write."""
    mem.write_u32(LD + LD_SYSCALL_VEC, 0x80)
    mem.write_u32(LD + LD_KERNEL_ADDRESS, 0xC0000000)
    mem.write_u32(LD + LD_NOIRQ_START, 0xC0101000)
    mem.write_u32(LD + LD_NOIRQ_END, 0xC0101020)
    for off in (LD_TIME, LD_TIME + 4, LD_RESERVE_MEM, LD_TSC_KHZ, LD_PGDIR, LD_CR2):
        mem.write_u32(LD + off, SENTINEL)
    return LD


def u32(mem, addr):
    return mem.read_u32(addr)


# --- the table ------------------------------------------------------------------------
def test_hypercall_table_has_exactly_this_eras_calls():
    assert set(hypercalls.HYPERCALLS) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17}


def test_lhcall_constants():
    assert (lguest.LHCALL_FLUSH_ASYNC, lguest.LHCALL_LGUEST_INIT, lguest.LHCALL_SHUTDOWN,
            lguest.LHCALL_LOAD_GDT, lguest.LHCALL_NEW_PGTABLE, lguest.LHCALL_FLUSH_TLB,
            lguest.LHCALL_LOAD_IDT_ENTRY, lguest.LHCALL_SET_STACK, lguest.LHCALL_TS,
            lguest.LHCALL_SET_CLOCKEVENT, lguest.LHCALL_HALT, lguest.LHCALL_SET_PTE,
            lguest.LHCALL_SET_PMD, lguest.LHCALL_LOAD_TLS, lguest.LHCALL_NOTIFY) == (
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17)


# --- LGUEST_INIT (initialize) ---------------------------------------------------------
def test_init_every_step(guest, cpu, mem, clock, init_page):
    clock.advance(1_234_567_890_123)  # 1234 s + 567890123 ns
    guest.tsc_khz = 2_400_000
    guest.pgdir = 0x9000  # pgdirs[0].gpgdir: the initial top-level table
    backend, res = hcall(cpu, LGUEST_INIT, LD)
    assert res == RunExit("break")
    assert guest.dead is None
    assert guest.lguest_data == LD
    assert u32(mem, LD + LD_TSC_KHZ) == 2_400_000
    assert (guest.noirq_start, guest.noirq_end) == (0xC0101000, 0xC0101020)
    assert u32(mem, LD + LD_TIME) == 1234
    assert u32(mem, LD + LD_TIME + 4) == 567890123
    assert guest.kernel_address == 0xC0000000
    assert u32(mem, LD + LD_RESERVE_MEM) == 0x400000
    assert u32(mem, LD + LD_PGDIR) == 0x9000
    # untouched: cr2 and the guest's own fields
    assert u32(mem, LD + LD_CR2) == SENTINEL
    assert u32(mem, LD + LD_KERNEL_ADDRESS) == 0xC0000000
    assert u32(mem, LD + LD_SYSCALL_VEC) == 0x80
    assert not cpu.hcall_pending


def test_init_writes_the_hosts_tsc_khz(guest, cpu, mem, init_page):
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead is None
    # whatever the host's value (0 when not constant/stable), it is written
    assert u32(mem, LD + LD_TSC_KHZ) == guest.tsc_khz


def test_init_is_not_run_as_a_call_and_does_not_touch_the_ring(guest, cpu, mem, init_page):
    # status bytes are all 0 (= pending) in fresh memory: INIT must not run the ring
    mem.write(LD + LD_STATUS, bytes(64))
    queue(mem, 0, TS, 5)
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead is None  # in particular not "already have lguest_data"
    assert cpu.ts == 0
    assert cpu.next_hcall == 0
    assert status(mem) == bytes(64)
    assert not cpu.hcall_pending


def test_init_at_address_zero(guest, cpu, mem):
    mem.write_u32(LD_SYSCALL_VEC, 0x80)
    hcall(cpu, LGUEST_INIT, 0)
    assert guest.dead is None
    assert guest.lguest_data == 0  # 0 is a valid place, only None is "unset"
    assert u32(mem, LD_RESERVE_MEM) == 0x400000


def test_init_bad_syscall_vector_kills_but_init_succeeds(guest, cpu, mem, init_page):
    mem.write_u32(LD + LD_SYSCALL_VEC, 0x40)  # this host only allows 0x80
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead == "bad syscall vector"
    assert guest.lguest_data == LD
    # every later step still ran
    assert (guest.noirq_start, guest.noirq_end) == (0xC0101000, 0xC0101020)
    assert u32(mem, LD + LD_TIME + 4) != SENTINEL
    assert u32(mem, LD + LD_RESERVE_MEM) == 0x400000
    assert guest.kernel_address == 0xC0000000


@pytest.mark.parametrize("vec", [0x80, 0x40])
def test_init_syscall_vector_of_a_0x40_host(core, mem, vec):
    host = lguest.Host(syscall_vector=0x40, used_vectors=lguest.UsedVectors(used=range(32)))
    guest = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    mem.write_u32(LD + LD_SYSCALL_VEC, vec)
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead is None
    assert guest.lguest_data == LD


@pytest.mark.parametrize("addr", [
    MEM_SIZE - LD_SIZE,       # end == pfn_limit * 4096: refused (strict <)
    MEM_SIZE - LD_SIZE + 1,
    MEM_SIZE,
    0xFFFFFFFF,               # wraps
    0xFFFFFC00,               # wraps: addr + 1136 mod 2^32 < addr
])
def test_init_bad_guest_page_null(guest, cpu, mem, addr):
    before = bytes(mem.read(0, MEM_SIZE))
    hcall(cpu, LGUEST_INIT, addr)
    assert guest.dead == "bad guest page (null)"
    assert guest.lguest_data is None
    assert bytes(mem.read(0, MEM_SIZE)) == before  # nothing written anywhere
    assert not cpu.hcall_pending


def test_init_last_acceptable_address(guest, cpu, mem):
    addr = MEM_SIZE - LD_SIZE - 1  # end = size - 1: page 63 < 64
    mem.write_u32(addr + LD_SYSCALL_VEC, 0x80)
    hcall(cpu, LGUEST_INIT, addr)
    assert guest.dead is None
    assert guest.lguest_data == addr
    assert u32(mem, addr + LD_RESERVE_MEM) == 0x400000


@pytest.mark.parametrize("kaddr, msg", [
    (0xFFC00000, "bad kernel address 0xffc00000"),
    (0xFFFFFFFF, "bad kernel address 0xffffffff"),
    (0xFFBFFFFF, None),       # >> 22 == 1022: fine
    (0x00000000, None),
])
def test_init_kernel_address(guest, cpu, mem, init_page, kaddr, msg):
    mem.write_u32(LD + LD_KERNEL_ADDRESS, kaddr)
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead == msg
    assert guest.kernel_address == kaddr
    assert u32(mem, LD + LD_RESERVE_MEM) == 0x400000


def test_init_first_kill_wins(guest, cpu, mem, init_page):
    mem.write_u32(LD + LD_SYSCALL_VEC, 0x41)
    mem.write_u32(LD + LD_KERNEL_ADDRESS, 0xFFC00000)
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead == "bad syscall vector"
    assert guest.kernel_address == 0xFFC00000


def test_init_pins_the_stack(guest, cpu, mem, init_page):
    # guest_pagetable_clear_all -> pin_stack_pages: a stack outside RAM dies
    cpu.esp1 = 0x100000
    guest.stack_pages = 1
    hcall(cpu, LGUEST_INIT, LD)
    assert guest.dead == "bad stack page 0xfffff"
    assert guest.lguest_data == LD


@pytest.mark.parametrize("n, msg", [
    (0, "hypercall 0 before INIT"),
    (2, "hypercall 2 before INIT"),
    (17, "hypercall 17 before INIT"),
    (0x7FFFFFFF, "hypercall 2147483647 before INIT"),
    (0x80000000, "hypercall -2147483648 before INIT"),
    (0xFFFFFFFF, "hypercall -1 before INIT"),
])
def test_hypercall_before_init(guest, cpu, mem, init_page, n, msg):
    before = bytes(mem.read(0, MEM_SIZE))
    hcall(cpu, n, LD, 2, 3)
    assert guest.dead == msg
    assert guest.lguest_data is None
    assert bytes(mem.read(0, MEM_SIZE)) == before
    assert not cpu.hcall_pending
    assert cpu.ts == 0 and not cpu.halted


def test_init_again(guest, cpu, mem, init_page):
    hcall(cpu, LGUEST_INIT, LD)
    mem.write(LD + LD_STATUS, b"\xff" * 64)
    assert guest.dead is None
    hcall(cpu, LGUEST_INIT, 0x2000)
    assert guest.dead == "already have lguest_data"
    assert guest.lguest_data == LD


# --- synchronous calls ---------------------------------------------------------------
def test_flush_async_does_nothing(guest, cpu, mem, ld):
    before = bytes(mem.read(0, MEM_SIZE))
    backend, res = hcall(cpu, FLUSH_ASYNC, 0x1234, 0x5678, 0x9ABC)
    assert res == RunExit("break")
    assert guest.dead is None
    assert bytes(mem.read(0, MEM_SIZE)) == before
    assert backend.calls == []
    assert cpu.ts == 0 and not cpu.halted and cpu.pending_notify == 0
    assert not cpu.hcall_pending


def test_shutdown_message(guest, cpu, mem, ld):
    mem.write(0x2000, b"bye\0junk")
    _, res = hcall(cpu, SHUTDOWN, 0x2000, 1)
    assert guest.dead == "CRASH: bye"
    assert guest.restart is False
    assert res == RunExit("break")  # break-out (step 4) comes before the dead check


def test_shutdown_message_is_cut_at_127_bytes(guest, cpu, mem, ld):
    mem.write(0x2000, bytes(range(0x41, 0x41 + 26)) * 10)  # 260 bytes, no NUL
    hcall(cpu, SHUTDOWN, 0x2000, 1)
    expect = (bytes(range(0x41, 0x41 + 26)) * 10)[:127].decode()
    assert guest.dead == "CRASH: " + expect
    assert len(guest.dead) == 7 + 127


def test_shutdown_restart(guest, cpu, mem, ld):
    mem.write(0x2000, b"reboot\0")
    hcall(cpu, SHUTDOWN, 0x2000, 2)
    assert guest.dead == "CRASH: reboot"
    assert guest.restart is True


@pytest.mark.parametrize("how", [0, 1, 3, 0xFFFFFFFF])
def test_shutdown_other_arg2_is_no_restart(guest, cpu, mem, ld, how):
    mem.write(0x2000, b"x\0")
    hcall(cpu, SHUTDOWN, 0x2000, how)
    assert guest.dead == "CRASH: x"
    assert guest.restart is False


@pytest.mark.parametrize("addr, msg", [
    (MEM_SIZE - 128, "bad read address 0x3ff80 len 128"),  # end == size: refused
    (MEM_SIZE - 100, "bad read address 0x3ff9c len 128"),
    (0xFFFFFFC0, "bad read address 0xffffffc0 len 128"),
])
def test_shutdown_unreadable_message(guest, cpu, mem, ld, addr, msg):
    hcall(cpu, SHUTDOWN, addr, 1)
    assert guest.dead == msg


def test_shutdown_last_readable_message(guest, cpu, mem, ld):
    mem.write(MEM_SIZE - 129, b"end\0")
    hcall(cpu, SHUTDOWN, MEM_SIZE - 129, 1)
    assert guest.dead == "CRASH: end"


def test_shutdown_restart_overrides_an_earlier_death(guest, cpu, mem, ld):
    # in one ring pass: a bad call kills, then SHUTDOWN(RESTART) still sets restart
    mem.write(0x2000, b"bye\0")
    queue(mem, 0, 11)
    queue(mem, 1, SHUTDOWN, 0x2000, 2)
    hcall(cpu, FLUSH_ASYNC)
    assert guest.dead == "Bad hypercall 11\n"
    assert guest.restart is True


GDT_TABLE = 0x3000


def gdt_table():
    """32 descriptors: a_i = 0x11110000+i; b rotates DPL0 / DPL3 / DPL2+accessed;
    entries 10, 11, 16, 31 are DPL0 without accessed (must stay so)."""
    rows = []
    for i in range(32):
        b = (0x00CF9A00, 0x00CFF200, 0x00CFD300)[i % 3]
        if i in (10, 11, 16, 31):
            b = 0x00CF9A00
        rows.append((0x11110000 + i, b))
    return rows


def write_table(mem, addr, rows):
    mem.write(addr, b"".join(struct.pack("<II", a, b) for a, b in rows))


def test_load_gdt_fixups(guest, cpu, mem, ld):
    rows = gdt_table()
    write_table(mem, GDT_TABLE, rows)
    backend, _ = hcall(cpu, LOAD_GDT, GDT_TABLE, 32)
    assert guest.dead is None
    for i, (a, b) in enumerate(rows):
        want_b = b if i in (10, 11, 16, 31) else fixed_desc(b)
        assert (int(cpu.gdt[i, 0]), int(cpu.gdt[i, 1])) == (a, want_b), i
    assert int(cpu.gdt[0, 1]) == 0x00CFBB00
    assert int(cpu.gdt[1, 1]) == 0x00CFF300
    assert int(cpu.gdt[2, 1]) == 0x00CFD300
    assert int(cpu.gdt[10, 1]) == 0x00CF9A00
    assert cpu.changed == CHANGED_GDT  # the loop cleared changed at entry


def test_load_gdt_changed_reaches_next_entry(guest, cpu, mem, ld):
    write_table(mem, GDT_TABLE, gdt_table())
    backend = ScriptedBackend([])
    hcall(cpu, LOAD_GDT, GDT_TABLE, 32, backend=backend)
    backend.steps.append(lambda c: setattr(c, "break_out", True) or setattr(c.regs, "trapnum", 32))
    run_guest(cpu, backend, timeout=5)
    assert backend.entries[1][2] & CHANGED_GDT
    assert cpu.changed == 0


def test_load_gdt_fewer_entries_fixes_up_the_whole_table(guest, cpu, mem, ld):
    rows = gdt_table()
    write_table(mem, GDT_TABLE, rows)
    cpu.gdt[5] = (0x55, 0x00409200)   # stale entry beyond num
    cpu.gdt[16] = (0x66, 0x00008900)  # TSS: never touched
    hcall(cpu, LOAD_GDT, GDT_TABLE, 3)
    assert guest.dead is None
    for i in range(3):
        assert (int(cpu.gdt[i, 0]), int(cpu.gdt[i, 1])) == (rows[i][0], fixed_desc(rows[i][1]))
    assert (int(cpu.gdt[3, 0]), int(cpu.gdt[3, 1])) == (0, 0x2100)
    assert (int(cpu.gdt[5, 0]), int(cpu.gdt[5, 1])) == (0x55, 0x0040B300)
    assert (int(cpu.gdt[16, 0]), int(cpu.gdt[16, 1])) == (0x66, 0x00008900)
    assert (int(cpu.gdt[10, 0]), int(cpu.gdt[10, 1])) == (0, 0)
    assert (int(cpu.gdt[31, 0]), int(cpu.gdt[31, 1])) == (0, 0)


@pytest.mark.parametrize("num, msg", [
    (33, "too many gdt entries 33"),
    (1000, "too many gdt entries 1000"),
    (0x80000000, "too many gdt entries -2147483648"),
    (0xFFFFFFFF, "too many gdt entries -1"),
])
def test_load_gdt_too_many(guest, cpu, mem, ld, num, msg):
    rows = gdt_table()
    write_table(mem, GDT_TABLE, rows)
    hcall(cpu, LOAD_GDT, GDT_TABLE, num)
    assert guest.dead == msg
    # clamped to the 32-entry table: nothing past it, and the table is the guest's
    for i, (a, b) in enumerate(rows):
        want_b = b if i in (10, 11, 16, 31) else fixed_desc(b)
        assert (int(cpu.gdt[i, 0]), int(cpu.gdt[i, 1])) == (a, want_b), i


def test_load_gdt_32_is_not_too_many(guest, cpu, mem, ld):
    write_table(mem, GDT_TABLE, gdt_table())
    hcall(cpu, LOAD_GDT, GDT_TABLE, 32)
    assert guest.dead is None


def test_load_gdt_unreadable_table(guest, cpu, mem, ld):
    hcall(cpu, LOAD_GDT, MEM_SIZE - 256, 32)  # end == size: refused
    assert guest.dead == "bad read address 0x3ff00 len 256"


def test_load_gdt_zero_entries(guest, cpu, mem, ld):
    cpu.gdt[4] = (0x44, 0x00409200)
    hcall(cpu, LOAD_GDT, GDT_TABLE, 0)
    assert guest.dead is None
    assert (int(cpu.gdt[4, 0]), int(cpu.gdt[4, 1])) == (0x44, 0x0040B300)
    assert cpu.changed == CHANGED_GDT


def test_load_gdt_zero_entries_still_checks_the_address(guest, cpu, mem, ld):
    hcall(cpu, LOAD_GDT, MEM_SIZE, 0)  # lguest_address_ok(size, 0): page 64, refused
    assert guest.dead == "bad read address 0x40000 len 0"


def test_new_pgtable(guest, cpu, mem, ld):
    backend, res = hcall(cpu, NEW_PGTABLE, 0x8000)
    assert res == RunExit("break")
    assert guest.pgdir == 0x8000
    assert ("new_pgtable", 0x8000) in backend.calls


@pytest.mark.parametrize("arg, kernel_too", [(1, True), (0xFFFFFFFF, True), (0, False)])
def test_flush_tlb(guest, cpu, mem, ld, arg, kernel_too):
    backend, _ = hcall(cpu, FLUSH_TLB, arg)
    assert guest.dead is None
    assert backend.calls == [("flush_tlb", kernel_too)]


def test_flush_tlb_all_repins_the_stack(guest, cpu, mem, ld):
    cpu.esp1 = 0x100000  # outside RAM
    guest.stack_pages = 1
    hcall(cpu, FLUSH_TLB, 0)
    assert guest.dead is None  # user part only: no pinning
    hcall(cpu, FLUSH_TLB, 1)
    assert guest.dead == "bad stack page 0xfffff"


def test_load_idt_entry(guest, cpu, mem, ld):
    hcall(cpu, LOAD_IDT_ENTRY, 0x21, 0x00601234, 0xC0108E55)
    assert guest.dead is None
    assert (int(cpu.idt[0x21, 0]), int(cpu.idt[0x21, 1])) == (0x00611234, 0xC0108E00)
    assert cpu.changed & CHANGED_IDT


def test_load_idt_entry_bad_type(guest, cpu, mem, ld):
    hcall(cpu, LOAD_IDT_ENTRY, 3, 0, 0x8C00)
    assert guest.dead == "bad IDT type 12"


def test_set_stack_args_are_ebx_ecx_edx(guest, cpu, mem, ld):
    # distractors in esi/edi: the pre-4cd8b5e2 order (edx, ebx, ecx) must not be used
    _, _ = hcall(cpu, SET_STACK, 0x69, 0x3000, 2, extra=dict(esi=0x61, edi=0x1))
    assert guest.dead is None
    assert (cpu.ss1, cpu.esp1, guest.stack_pages) == (0x69, 0x3000, 2)


@pytest.mark.parametrize("args, msg", [
    ((0x68, 0x3000, 1), "bad stack segment 104"),
    ((0x69, 0x3000, 3), "bad stack pages 3"),
])
def test_set_stack_kills(guest, cpu, mem, ld, args, msg):
    hcall(cpu, SET_STACK, *args)
    assert guest.dead == msg
    assert (cpu.ss1, cpu.esp1, guest.stack_pages) == (args[0], args[1], args[2])


def test_ts(guest, cpu, mem, ld):
    hcall(cpu, TS, 1)
    assert cpu.ts == 1
    hcall(cpu, TS, 0)
    assert cpu.ts == 0
    assert guest.dead is None


def test_set_clockevent(guest, cpu, mem, ld, clock):
    hcall(cpu, SET_CLOCKEVENT, 1000)
    clock.advance(999)
    assert cpu.irqs_pending & 1 == 0
    clock.advance(1)
    assert cpu.irqs_pending & 1 == 1


def test_set_clockevent_zero_cancels_and_rearm_replaces(guest, cpu, mem, ld, clock):
    hcall(cpu, SET_CLOCKEVENT, 1000)
    hcall(cpu, SET_CLOCKEVENT, 0)
    clock.advance(5000)
    assert cpu.irqs_pending == 0
    hcall(cpu, SET_CLOCKEVENT, 1000)
    hcall(cpu, SET_CLOCKEVENT, 3000)
    clock.advance(2000)
    assert cpu.irqs_pending == 0
    clock.advance(1000)
    assert cpu.irqs_pending == 1


def test_halt(guest, cpu, mem, ld):
    _, res = hcall(cpu, HALT)
    assert res == RunExit("break")  # break-out is seen before the halted sleep
    assert cpu.halted
    assert guest.dead is None


# --- NEW_PGTABLE pins the stack only in a page directory it has not seen ----------------
def _pgdir(mem, at, table=0xA000):
    """A page directory at ``at`` whose entry 0 is the page table ``table``."""
    mem.write(at, bytes(PAGE))
    mem.write_u32(at, table | 0x67)


def _stack_in_paged_guest(cpu, mem, guest):
    """Kernel stack page 0x1F000 (esp1 0x20000), identity-mapped by the table at 0xA000."""
    mem.write(0xA000, bytes(PAGE))
    mem.write_u32(0xA000 + 0x1F * 4, 0x1F000 | 0x67)
    for pgd in (0x8000, 0x9000, 0xB000):
        _pgdir(mem, pgd)
    cpu.esp1 = 0x20000
    guest.stack_pages = 1


def test_new_pgtable_keeps_a_known_directory_pinned(guest, cpu, mem, ld):
    # The kernel re-pins the stack only when the shadow for a page
    # directory is freshly allocated.  Switching back to one already used
    # keeps its mappings: a stack pte the guest has cleared since does not
    # kill.  A directory never seen before is pinned, and that kills.
    _stack_in_paged_guest(cpu, mem, guest)
    backend = ScriptedBackend([])
    for pgd in (0x8000, 0x9000):
        hcall(cpu, NEW_PGTABLE, pgd, backend=backend)
        assert guest.dead is None
    mem.write_u32(0xA000 + 0x1F * 4, 0)  # the guest unmaps its stack page
    hcall(cpu, NEW_PGTABLE, 0x8000, backend=backend)
    assert guest.dead is None and guest.pgdir == 0x8000
    hcall(cpu, NEW_PGTABLE, 0xB000, backend=backend)
    assert guest.dead == "bad stack page 0x1ffff"


def test_new_pgtable_forgets_the_oldest_directory_beyond_its_bound(guest, cpu, mem, ld):
    # The values remembered are bounded (a guest naming ever new directories
    # must not grow the host); a forgotten one is fresh again, and pinned.
    _stack_in_paged_guest(cpu, mem, guest)
    backend = ScriptedBackend([])
    hcall(cpu, NEW_PGTABLE, 0x8000, backend=backend)
    for i in range(backend.KNOWN_PGDIRS):  # unseen values, not pages: switching alone
        assert not backend.known_pgdir(0x100000 + i * PAGE)
    assert len(backend._known_pgdirs) == backend.KNOWN_PGDIRS
    mem.write_u32(0xA000 + 0x1F * 4, 0)
    hcall(cpu, NEW_PGTABLE, 0x8000, backend=backend)
    assert guest.dead == "bad stack page 0x1ffff"


def test_set_pte(guest, cpu, mem, ld):
    backend, _ = hcall(cpu, SET_PTE, 0x8000, 0xC0123000, 0x00456067)
    assert guest.dead is None
    assert backend.calls == [("set_pte", 0x8000, 0xC0123000, 0x00456067)]


@pytest.mark.parametrize("vaddr, killed", [(0xFFBFFFFF, False), (0xFFC00000, True), (0xFFFFF000, True)])
def test_set_pte_in_the_switcher_range_kills_before_the_backend_sees_it(guest, cpu, mem, ld, vaddr, killed):
    backend, _ = hcall(cpu, SET_PTE, 0x8000, vaddr, 0)
    if killed:
        assert guest.dead == "attempt to access switcher pages"
        assert backend.calls == []
    else:
        assert guest.dead is None
        assert backend.calls == [("set_pte", 0x8000, vaddr, 0)]


@pytest.mark.parametrize("index, called", [(0, True), (768, True), (1022, True),
                                            (1023, False), (1024, False), (0xFFFFFFFF, False)])
def test_set_pmd(guest, cpu, mem, ld, index, called):
    backend, _ = hcall(cpu, SET_PMD, 0x8000, index)
    assert guest.dead is None
    assert backend.calls == ([("set_pmd", 0x8000, index)] if called else [])


def test_load_tls(guest, cpu, mem, ld):
    rows = [(0xAAAA0001, 0x00CF9200), (0xAAAA0002, 0x00CFF200), (0xAAAA0003, 0x00CFD300)]
    write_table(mem, 0x3800, rows)
    cpu.gdt[5] = (0x55, 0x00409200)
    cpu.gdt[9] = (0x99, 0x00409200)
    hcall(cpu, LOAD_TLS, 0x3800, 0)  # arg2 = cpu number, ignored
    assert guest.dead is None
    assert [(int(cpu.gdt[i, 0]), int(cpu.gdt[i, 1])) for i in (6, 7, 8)] == [
        (0xAAAA0001, 0x00CFB300), (0xAAAA0002, 0x00CFF300), (0xAAAA0003, 0x00CFD300)]
    # only 6..8 are loaded or fixed up
    assert (int(cpu.gdt[5, 0]), int(cpu.gdt[5, 1])) == (0x55, 0x00409200)
    assert (int(cpu.gdt[9, 0]), int(cpu.gdt[9, 1])) == (0x99, 0x00409200)
    assert cpu.changed == CHANGED_GDT_TLS


def test_load_tls_unreadable(guest, cpu, mem, ld):
    hcall(cpu, LOAD_TLS, MEM_SIZE - 24, 0)
    assert guest.dead == "bad read address 0x3ffe8 len 24"


def test_notify(guest, cpu, mem, ld):
    backend, res = hcall(cpu, NOTIFY, 0x2345)
    # notify (step 2) wins over break-out (step 4)
    assert res == RunExit("notify", 0x2345)
    assert cpu.pending_notify == 0x2345
    assert len(backend.entries) == 1


def test_notify_zero_is_no_notification(guest, cpu, mem, ld):
    _, res = hcall(cpu, NOTIFY, 0)
    assert res == RunExit("break")


@pytest.mark.parametrize("n, msg", [
    (11, "Bad hypercall 11\n"),
    (12, "Bad hypercall 12\n"),
    (13, "Bad hypercall 13\n"),
    (18, "Bad hypercall 18\n"),
    (19, "Bad hypercall 19\n"),
    (0x7FFFFFFF, "Bad hypercall 2147483647\n"),
    (0x80000000, "Bad hypercall -2147483648\n"),
    (0xFFFFFFFF, "Bad hypercall -1\n"),
])
def test_bad_hypercall(guest, cpu, mem, ld, n, msg):
    _, res = hcall(cpu, n, 1, 2, 3)
    assert guest.dead == msg
    assert not cpu.hcall_pending


@pytest.mark.parametrize("n, msg", [(11, "Bad hypercall 11\n"), (0xFFFFFFFF, "Bad hypercall -1\n")])
def test_do_hcall_directly(guest, cpu, mem, ld, n, msg):
    hypercalls.do_hcall(cpu, hypercalls.HcallArgs(n, 0, 0, 0))
    assert guest.dead == msg


def test_do_hypercalls_reads_eax_ebx_ecx_edx(guest, cpu, mem, ld):
    set_regs(cpu, eax=SET_STACK, ebx=0x69, ecx=0x2000, edx=1, esi=7, edi=8)
    cpu.hcall_pending = True
    hypercalls.do_hypercalls(cpu)
    assert (cpu.ss1, cpu.esp1, guest.stack_pages) == (0x69, 0x2000, 1)
    assert not cpu.hcall_pending


# --- the async ring ------------------------------------------------------------------------
def test_ring_runs_before_the_synchronous_call(guest, cpu, mem, ld):
    queue(mem, 0, TS, 1)
    queue(mem, 1, TS, 2, status=0x01)
    queue(mem, 2, TS, 3, status=0xFE)
    hcall(cpu, TS, 9)
    assert cpu.ts == 9
    assert status(mem) == b"\xff" * 64
    assert cpu.next_hcall == 3
    assert guest.dead is None


def test_ring_order(guest, cpu, mem, ld):
    queue(mem, 0, SET_STACK, 0x69, 0x1000, 1)
    queue(mem, 1, SET_STACK, 0x69, 0x2000, 2)
    hcall(cpu, FLUSH_ASYNC)
    assert (cpu.esp1, guest.stack_pages) == (0x2000, 2)


def test_ring_stops_at_first_empty_slot(guest, cpu, mem, ld):
    queue(mem, 0, TS, 1)
    queue(mem, 2, TS, 2)  # slot 1 is 0xFF: never reached
    hcall(cpu, FLUSH_ASYNC)
    assert cpu.ts == 1
    assert cpu.next_hcall == 1
    assert status(mem)[2] == 0


def test_ring_resumes_where_it_stopped(guest, cpu, mem, ld):
    queue(mem, 0, TS, 1)
    hcall(cpu, FLUSH_ASYNC)
    queue(mem, 1, TS, 2)
    queue(mem, 0, TS, 7)  # behind the cursor: not reached this time
    hcall(cpu, FLUSH_ASYNC)
    assert cpu.ts == 2
    assert cpu.next_hcall == 2
    assert status(mem)[0] == 0


def test_ring_wraps_around(guest, cpu, mem, ld):
    cpu.next_hcall = 62
    queue(mem, 62, TS, 62)
    queue(mem, 63, TS, 63)
    queue(mem, 0, TS, 100)
    hcall(cpu, FLUSH_ASYNC)
    assert cpu.ts == 100
    assert cpu.next_hcall == 1
    assert status(mem) == b"\xff" * 64


def test_ring_full_runs_64_calls_once(guest, cpu, mem, ld):
    cpu.next_hcall = 5
    for slot in range(64):
        queue(mem, slot, TS, 1000 + slot)
    hcall(cpu, FLUSH_ASYNC)
    assert cpu.ts == 1004  # slots 5..63, 0..4: slot 4 last
    assert cpu.next_hcall == 5
    assert status(mem) == b"\xff" * 64


def test_zeroed_ring_is_64_pending_flush_async(guest, cpu, mem):
    guest.lguest_data = LD  # status bytes 0: all pending, hcalls all 0 = FLUSH_ASYNC
    hcall(cpu, FLUSH_ASYNC)
    assert guest.dead is None
    assert status(mem) == b"\xff" * 64
    assert cpu.next_hcall == 0


def test_ring_status_is_a_snapshot(guest, cpu, mem, ld):
    class Writer(ScriptedBackend):
        def set_pte(self, c, pgdir, vaddr, pte):
            super().set_pte(c, pgdir, vaddr, pte)
            mem.write(LD + LD_STATUS + 1, b"\xff")  # slot 1 "done" - but snapshot says pending
            mem.write(LD + LD_STATUS + 2, b"\x00")  # slot 2 pending - snapshot says empty

    queue(mem, 0, SET_PTE, 0x8000, 0x1000, 0x1067)
    queue(mem, 1, TS, 7)
    mem.write(LD + LD_HCALLS + 2 * 16, struct.pack("<4I", TS, 8, 0, 0))
    backend = Writer([])
    hcall(cpu, FLUSH_ASYNC, backend=backend)
    assert cpu.ts == 7
    assert cpu.next_hcall == 2
    assert status(mem)[:3] == b"\xff\xff\x00"


def test_ring_notify_stops_and_leaves_sync_call_pending(guest, cpu, mem, ld):
    queue(mem, 0, TS, 1)
    queue(mem, 1, NOTIFY, 0x2222)
    queue(mem, 2, TS, 3)
    backend, res = hcall(cpu, TS, 9)
    assert res == RunExit("notify", 0x2222)
    assert cpu.ts == 1
    assert status(mem)[:3] == b"\xff\xff\x00"  # the NOTIFY's own status is written
    assert cpu.next_hcall == 2
    assert cpu.hcall_pending
    # The Launcher's next read(): the ring goes on, then the trap's own call.
    cpu.break_out = True
    res = run_guest(cpu, backend, timeout=5)
    assert res == RunExit("break")
    assert cpu.ts == 9
    assert status(mem)[:3] == b"\xff\xff\xff"
    assert cpu.next_hcall == 3
    assert not cpu.hcall_pending
    assert len(backend.entries) == 1  # no guest entry in between


def test_ring_notify_zero_does_not_stop(guest, cpu, mem, ld):
    queue(mem, 0, NOTIFY, 0)
    queue(mem, 1, TS, 5)
    _, res = hcall(cpu, TS, 6)
    assert res == RunExit("break")
    assert cpu.ts == 6
    assert cpu.next_hcall == 2


def test_ring_bad_call_kills_but_ring_and_sync_call_go_on(guest, cpu, mem, ld):
    queue(mem, 0, 13)
    queue(mem, 1, TS, 5)
    hcall(cpu, SET_STACK, 0x69, 0x2000, 1)
    assert guest.dead == "Bad hypercall 13\n"
    assert cpu.ts == 5
    assert (cpu.esp1, guest.stack_pages) == (0x2000, 1)
    assert status(mem)[:2] == b"\xff\xff"


def test_ring_init_again(guest, cpu, mem, ld):
    queue(mem, 0, LGUEST_INIT, 0x3000)
    hcall(cpu, FLUSH_ASYNC)
    assert guest.dead == "already have lguest_data"
    assert guest.lguest_data == LD


def test_ring_fetch_failure(guest, cpu, mem):
    ldx = MEM_SIZE - 100  # status fits; hcalls[0] ends exactly at the end; hcalls[1] does not
    guest.lguest_data = ldx
    mem.write(ldx + LD_STATUS, b"\xff" * 64)
    queue(mem, 0, TS, 4, ld=ldx)
    mem.write(ldx + LD_STATUS + 1, b"\x00")
    hcall(cpu, SET_STACK, 0x69, 0x2000, 1)
    assert guest.dead == "Fetching async hypercalls"
    assert cpu.ts == 4
    assert cpu.next_hcall == 2
    assert mem.read(ldx + LD_STATUS, 2) == b"\xff\x00"
    assert cpu.esp1 == 0x2000  # the synchronous call still ran


def test_ring_status_unreadable_is_silent(guest, cpu, mem):
    ldx = MEM_SIZE - 70  # status bytes run past the end of memory
    guest.lguest_data = ldx
    hcall(cpu, TS, 3)
    assert guest.dead is None
    assert cpu.ts == 3
    assert cpu.next_hcall == 0
