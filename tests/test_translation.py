"""guest_pa: linear mode and the 2-level page-table walk (API.md, ABI.md section 4)."""
import pytest
from lgtest import MEM_SIZE, set_regs, words

LO, HI = 0x00605678, 0xC0108F00
PGDIR = 0x10000
TABLE = 0x11000


@pytest.mark.parametrize("page_offset,vaddr,pa", [
    (0, 0, 0), (0, 0x1234, 0x1234), (0, 0xFFFFFFFF, 0xFFFFFFFF),
    (0xC0000000, 0xC0001234, 0x1234), (0xC0000000, 0x1000, 0x40001000),
    (0xC0000000, 0xBFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0, 1), (0x1000, 0, 0xFFFFF000),
])
def test_linear(core, host, mem, clock, page_offset, vaddr, pa):
    g = host.new_guest(mem, page_offset=page_offset, clock=clock, core=core)
    assert g.page_offset == page_offset
    assert g.pgdir is None
    assert g.guest_pa(vaddr) == pa
    assert g.dead is None


@pytest.fixture
def tables(guest, mem):
    mem.write_u32(PGDIR + 0x300 * 4, TABLE | 0x67)      # 0xC0000000..0xC03FFFFF
    mem.write_u32(TABLE + 2 * 4, 0x5000 | 0x63)         # 0xC0002000 -> 0x5000
    mem.write_u32(TABLE + 3 * 4, 0x7000 | 0x62)         # 0xC0003000: not present, pfn 7
    mem.write_u32(TABLE + 4 * 4, 0x00100000 | 0x01)     # 0xC0004000 -> pfn 256 (no check here)
    mem.write_u32(PGDIR + 0x301 * 4, 0x00100000 | 0x67)  # table outside memory
    mem.write_u32(PGDIR + 0x302 * 4, 0xABCDE066)        # not present
    guest.pgdir = PGDIR
    return guest


def test_walk_present(tables):
    assert tables.guest_pa(0xC0002ABC) == 0x5ABC
    assert tables.guest_pa(0xC0002000) == 0x5000
    assert tables.guest_pa(0xC0004FFF) == 0x00100FFF
    assert tables.dead is None


def test_walk_ignores_page_offset(core, host, mem, clock):
    g = host.new_guest(mem, page_offset=0xC0000000, clock=clock, core=core)
    mem.write_u32(PGDIR, TABLE | 0x67)
    mem.write_u32(TABLE, 0x9000 | 0x67)
    g.pgdir = PGDIR
    assert g.guest_pa(0x123) == 0x9123
    g.pgdir = None
    assert g.guest_pa(0xC0000123) == 0x123
    assert g.dead is None


def test_missing_pte_kills_but_translates(tables):
    assert tables.guest_pa(0xC0003ABC) == 0x7ABC
    assert tables.dead == "Bad address 0xc0003abc"
    assert tables.guest_pa(0xC0005001) == 0x001        # pte 0
    assert tables.dead == "Bad address 0xc0003abc"


def test_missing_pgd(tables):
    assert tables.guest_pa(0xC0800010) == 0xFFFFFFFF
    assert tables.dead == "Bad address 0xc0800010"


def test_missing_pgd_at_zero_formats_0x0(tables):
    assert tables.guest_pa(0) == 0xFFFFFFFF
    assert tables.dead == "Bad address 0x0"


def test_table_outside_memory(tables):
    # pte read at 0x100000 + 2*4 fails: zeros -> not present; the first kill is the read's
    assert tables.guest_pa(0xC0402123) == 0x123
    assert tables.dead == "bad read address 0x100008 len 4"


def test_not_present_pgd_with_bits(tables):
    assert tables.guest_pa(0xC0800000) == 0xFFFFFFFF
    assert tables.dead == "Bad address 0xc0800000"


def test_pgdir_outside_memory(guest):
    guest.pgdir = MEM_SIZE
    assert guest.guest_pa(0x5000) == 0xFFFFFFFF
    assert guest.dead == "bad read address 0x40000 len 4"


def test_pgd_in_last_word_is_unreadable(guest, mem):
    # lgread uses the strict lguest_address_ok: the last word of RAM is refused
    guest.pgdir = MEM_SIZE - 4096
    mem.write_u32(MEM_SIZE - 4, TABLE | 0x67)
    assert guest.guest_pa(0xFFC00000) == 0xFFFFFFFF
    assert guest.dead == "bad read address 0x3fffc len 4"


def test_translation_only_at_stack_start(tables, cpu, mem):
    # esp 0xC0003000 is translated once (page 0xC0003000 -> pte 3, not present:
    # killed but translated to 0x7000); pushes then go down physically
    mem.write_u32(TABLE + 3 * 4, 0x7000 | 0x63)
    set_regs(cpu, ss=0x69, esp=0xC0003000, cs=0x61, eflags=0x202, eip=0xC0100000)
    cpu.set_guest_interrupt(LO, HI, False)
    assert words(mem, 0x6FF4, 3) == [0xC0100000, 0x61, 0x202]
    assert cpu.regs.esp == 0xC0002FF4
    assert cpu.guest.dead is None


def test_missing_pgd_in_delivery(tables, cpu, mem):
    set_regs(cpu, ss=0x69, esp=0xC0801000, cs=0x61, eflags=0x202, eip=0xC0100000)
    before = mem.read(0, MEM_SIZE)
    cpu.set_guest_interrupt(LO, HI, True)
    # gstack = 0xffffffff: every push fails (its kill ignored), registers still move
    assert cpu.guest.dead == "Bad address 0xc0801000"
    assert cpu.regs.esp == 0xC0800FF0
    assert (cpu.regs.ss, cpu.regs.cs, cpu.regs.eip) == (0x69, 0x61, 0xC0105678)
    assert mem.read(0, MEM_SIZE) == before
