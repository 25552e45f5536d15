"""Guest stacks: push bounds (lguest_address_ok), wrap-around, guest_set_stack,
pin_stack_pages / pin_page (seed 44-49, 113-116, 318-355; ABI.md section 4)."""
import time

import pytest
from lgtest import MEM_SIZE, gate, regs_dict, set_regs, words

LO, HI = 0x00605678, 0xC0108F00
HANDLER = 0xC0105678


# --- pushes and lguest_address_ok --------------------------------------------------

def test_wraparound_below_zero(kernel_regs, mem):
    cpu = kernel_regs
    set_regs(cpu, esp=8)
    before = regs_dict(cpu)
    cpu.set_guest_interrupt(LO, HI, False)
    # eflags at 4, cs at 0, eip at 0xfffffffc: (addr+len) wraps to 0 < addr -> refused
    assert words(mem, 0, 3) == [0x61, 0x202, 0]
    assert cpu.guest.dead == "bad write address 0xfffffffc len 4"
    before.update(esp=0xFFFFFFFC, eip=HANDLER, cs=0x61, ss=0x69)
    assert regs_dict(cpu) == before


def test_wraparound_with_error_code(kernel_regs, mem):
    cpu = kernel_regs
    set_regs(cpu, esp=8)
    cpu.set_guest_interrupt(LO, HI, True)
    assert words(mem, 0, 3) == [0x61, 0x202, 0]
    assert cpu.guest.dead == "bad write address 0xfffffffc len 4"
    assert cpu.regs.esp == 0xFFFFFFF8


def test_all_pushes_fail_from_zero(kernel_regs, mem):
    cpu = kernel_regs
    set_regs(cpu, esp=0)
    cpu.set_guest_interrupt(LO, HI, True)
    assert cpu.guest.dead == "bad write address 0xfffffffc len 4"
    assert cpu.regs.esp == 0xFFFFFFF0
    assert cpu.regs.eip == HANDLER
    assert mem.read(0, MEM_SIZE) == bytes(MEM_SIZE)


def test_user_stack_switch_wraps_too(kernel_regs, mem):
    cpu = kernel_regs
    set_regs(cpu, ss=0x7B, esp=0x11111110, cs=0x73, eflags=0x202, eip=0x08048000)
    cpu.esp1 = 4
    cpu.ss1 = 0x69
    cpu.set_guest_interrupt(LO, HI, False)
    # ss at 0; esp at 0xfffffffc (fails); eflags, cs, eip below that fail too
    assert mem.read_u32(0) == 0x7B
    assert cpu.guest.dead == "bad write address 0xfffffffc len 4"
    assert cpu.regs.esp == 0xFFFFFFF0
    assert cpu.regs.ss == 0x69


def test_last_word_of_memory_is_refused(kernel_regs, mem):
    # strict '<': a write ending exactly at size is refused
    cpu = kernel_regs
    set_regs(cpu, esp=MEM_SIZE)
    cpu.set_guest_interrupt(LO, HI, False)
    assert cpu.guest.dead == "bad write address 0x3fffc len 4"
    assert words(mem, MEM_SIZE - 16, 4) == [0, 0xC0101234, 0x61, 0]
    assert cpu.regs.esp == MEM_SIZE - 12


def test_second_to_last_word_is_fine(kernel_regs, mem):
    cpu = kernel_regs
    set_regs(cpu, esp=MEM_SIZE - 4)
    cpu.set_guest_interrupt(LO, HI, True)
    assert cpu.guest.dead is None
    assert words(mem, MEM_SIZE - 24, 6) == [0, 0xE4E4, 0xC0101234, 0x61, 0x202, 0]
    assert cpu.regs.esp == MEM_SIZE - 20


def test_first_kill_wins_and_execution_continues(kernel_regs, mem, set_ld):
    cpu = kernel_regs
    cpu.guest.kill("already dead")
    set_ld(0x1000, irq_enabled=0x200)
    set_regs(cpu, esp=MEM_SIZE + 0x1000)
    cpu.set_guest_interrupt(LO, 0xC0108E00, False)
    assert cpu.guest.dead == "already dead"
    assert mem.read_u32(0x1000) == 0               # interrupt gate write still happens
    assert cpu.regs.esp == MEM_SIZE + 0x1000 - 12


# --- guest_set_stack -----------------------------------------------------------------

@pytest.mark.parametrize("pages", [0, 1, 2])
def test_set_stack_ok(cpu, pages):
    cpu.guest_set_stack(0x69, 0x3000, pages)
    assert (cpu.ss1, cpu.esp1, cpu.guest.stack_pages) == (0x69, 0x3000, pages)
    assert cpu.guest.dead is None


def test_set_stack_stores_low_8_bits_of_segment(cpu):
    cpu.guest_set_stack(0x12345669, 0x3000, 1)
    assert cpu.ss1 == 0x69
    assert cpu.guest.dead is None


@pytest.mark.parametrize("seg,text,ss1", [
    (0x68, "104", 0x68), (0, "0", 0), (0x7B, "123", 0x7B), (0x6A, "106", 0x6A),
    (0xFFFFFFFE, "-2", 0xFE), (0x80000000, "-2147483648", 0), (0xFFFFFFFF, "-1", 0xFF),
])
def test_bad_stack_segment(cpu, seg, text, ss1):
    cpu.guest_set_stack(seg, 0x3000, 1)
    assert cpu.guest.dead == f"bad stack segment {text}"
    assert (cpu.ss1, cpu.esp1, cpu.guest.stack_pages) == (ss1, 0x3000, 1)


@pytest.mark.parametrize("pages", [3, 100, 0x80000000, 0xFFFFFFFF])
def test_bad_stack_pages(cpu, pages):
    t0 = time.monotonic()
    cpu.guest_set_stack(0x69, 0x3000, pages)
    assert time.monotonic() - t0 < 1.0      # hardening: pinning stops once dead
    assert cpu.guest.dead == f"bad stack pages {pages}"
    assert (cpu.ss1, cpu.esp1, cpu.guest.stack_pages) == (0x69, 0x3000, pages)


def test_segment_reported_before_pages(cpu):
    cpu.guest_set_stack(0x68, 0x3000, 3)
    assert cpu.guest.dead == "bad stack segment 104"
    assert cpu.guest.stack_pages == 3


# --- pin_page, linear mode -------------------------------------------------------------

@pytest.mark.parametrize("esp,pages,dead", [
    (MEM_SIZE, 1, None),                        # pins 0x3ffff: last page is whole
    (MEM_SIZE, 2, None),
    (MEM_SIZE + 1, 1, "bad stack page 0x40000"),
    (MEM_SIZE + 0x1000, 2, "bad stack page 0x40fff"),
    (MEM_SIZE + 0x1000, 1, "bad stack page 0x40fff"),
    (0x1000, 1, None),
    (0x1000, 2, "bad stack page 0xffffffff"),   # 0x1000 - 1 - 4096 wraps
    (0, 1, "bad stack page 0xffffffff"),
    (0, 0, None),                               # no pages: nothing pinned
    (0xFFFFFFFF, 2, "bad stack page 0xfffffffe"),
])
def test_pin_linear(cpu, mem, esp, pages, dead):
    cpu.guest_set_stack(0x69, esp, pages)
    assert cpu.guest.dead == dead
    assert mem.read(0, MEM_SIZE) == bytes(MEM_SIZE)


def test_pin_linear_with_page_offset(core, host, mem, clock):
    g = host.new_guest(mem, page_offset=0xC0000000, clock=clock, core=core)
    c = g.new_cpu()
    c.guest_set_stack(0x69, 0xC0040000, 2)
    assert g.dead is None
    c.guest_set_stack(0x69, 0xC0000000, 1)      # 0xbfffffff -> pa 0xffffffff
    assert g.dead == "bad stack page 0xbfffffff"
    assert (c.esp1, c.ss1, g.stack_pages) == (0xC0000000, 0x69, 1)


def test_pin_stack_pages_uses_current_state(cpu):
    cpu.esp1 = 0x5000
    cpu.guest.stack_pages = 2
    cpu.pin_stack_pages()
    assert cpu.guest.dead is None
    cpu.esp1 = MEM_SIZE + 0x2000
    cpu.pin_stack_pages()
    assert cpu.guest.dead == "bad stack page 0x41fff"


# --- pin_page, page-table mode -----------------------------------------------------------

PGDIR = 0x10000
TABLE = 0x11000
PGD_SLOT = PGDIR + (0xC0003000 >> 22) * 4     # 0x10c00


@pytest.fixture
def paged(cpu, mem):
    """pgdir at 0x10000; 0xC0000000-0xC03FFFFF through the table at 0x11000."""
    mem.write_u32(PGD_SLOT, TABLE | 0x67)
    mem.write_u32(TABLE + 1 * 4, 0x4000 | 0x03)   # 0xC0001000 -> 0x4000 rw
    mem.write_u32(TABLE + 2 * 4, 0x5000 | 0x03)   # 0xC0002000 -> 0x5000 rw
    cpu.guest.pgdir = PGDIR
    return cpu


def test_pin_paged_sets_accessed_dirty(paged, mem):
    paged.guest_set_stack(0x69, 0xC0003000, 2)
    assert paged.guest.dead is None
    assert words(mem, TABLE, 4) == [0, 0x4063, 0x5063, 0]
    assert mem.read_u32(PGD_SLOT) == TABLE | 0x67


def test_pin_paged_one_page(paged, mem):
    paged.guest_set_stack(0x69, 0xC0003000, 1)
    assert paged.guest.dead is None
    assert words(mem, TABLE, 4) == [0, 0x4003, 0x5063, 0]


def test_pin_paged_read_only_page(paged, mem):
    mem.write_u32(TABLE + 4, 0x4001)               # present, not writable
    paged.guest_set_stack(0x69, 0xC0003000, 2)
    assert paged.guest.dead == "bad stack page 0xc0001fff"
    assert words(mem, TABLE, 4) == [0, 0x4001, 0x5063, 0]


def test_pin_paged_stops_once_dead(paged, mem):
    mem.write_u32(TABLE + 8, 0x5002)               # top stack page not present
    paged.guest_set_stack(0x69, 0xC0003000, 2)
    assert paged.guest.dead == "bad stack page 0xc0002fff"
    assert words(mem, TABLE, 4) == [0, 0x4003, 0x5002, 0]   # second page not pinned


def test_pin_paged_missing_pgd(paged, mem):
    paged.guest_set_stack(0x69, 0xC0403000, 1)
    assert paged.guest.dead == "bad stack page 0xc0402fff"
    assert words(mem, TABLE, 4) == [0, 0x4003, 0x5003, 0]


def test_pin_paged_after_segment_kill(paged, mem):
    paged.guest_set_stack(0x68, 0xC0003000, 2)
    assert paged.guest.dead == "bad stack segment 104"
    assert words(mem, TABLE, 4) == [0, 0x4003, 0x5003, 0]


def test_pin_paged_pfn_outside_memory(paged, mem):
    mem.write_u32(TABLE + 8, 0x00100003)           # pfn 256 >= 64 pages
    paged.guest_set_stack(0x69, 0xC0003000, 1)
    # API.md: "otherwise kill with bad stack page"; ABI.md's demand_page says
    # "bad page table entry" first -- either is the seed's behaviour model.
    assert paged.guest.dead in ("bad stack page 0xc0002fff", "bad page table entry")
    assert mem.read_u32(TABLE + 8) == 0x00100003


def test_delivery_after_pinning_uses_physical_stack(paged, mem):
    cpu = paged
    cpu.guest_set_stack(0x69, 0xC0003000, 2)
    set_regs(cpu, ss=0x7B, esp=0x0804F000, cs=0x73, eflags=0x202, eip=0x08048000)
    cpu.idt[0x80] = gate(HANDLER)
    assert cpu.deliver_trap(0x80) is True
    # guest_pa(0xC0003000): pte index 3 is not present -> "Bad address"
    assert cpu.guest.dead == "Bad address 0xc0003000"
    # it translated to pfn 0 | 0: gstack 0, all five pushes wrap and fail
    assert cpu.regs.esp == 0xC0002FEC
    assert (cpu.regs.ss, cpu.regs.cs, cpu.regs.eip) == (0x69, 0x61, HANDLER)
