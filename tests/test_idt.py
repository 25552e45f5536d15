"""IDT handling: idt_* helpers, load_guest_idt_entry/set_trap, default_idt_entry,
setup_default_idt_entries, copy_traps (seed lines 23-40, 360-475)."""
import numpy as np
import pytest

import lguest

# --- helpers (seed 24-40) -----------------------------------------------------


@pytest.mark.parametrize("lo,hi,addr,typ,present", [
    (0, 0, 0, 0, False),
    (0x00601234, 0xC0108E00, 0xC0101234, 0xE, True),
    (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xF, True),
    (0x12345678, 0x9ABC7F00, 0x9ABC5678, 0xF, False),
    (0xABCD0000, 0x0000A500, 0x00000000, 0x5, True),
    (0x0000FFFF, 0xFFFF0000, 0xFFFFFFFF, 0x0, False),
    (0, 0x8000, 0, 0, True),
    (0, 0x7FFF, 0, 0xF, False),
])
def test_idt_helpers(core, lo, hi, addr, typ, present):
    assert core.idt_address(lo, hi) == addr
    assert core.idt_type(lo, hi) == typ
    assert core.idt_present(lo, hi) is present
    assert lguest.idt_address(lo, hi) == addr


def test_has_err(core):
    assert [t for t in range(300) if core.has_err(t)] == [8, 10, 11, 12, 13, 14, 17]
    assert core.has_err(14) is True and core.has_err(15) is False


# --- load_guest_idt_entry (seed 362-408) ----------------------------------------

@pytest.mark.parametrize("num", [2, 8, 15, 31])
def test_ignored_vectors(cpu, num):
    cpu.idt[num] = (0x11111111, 0x22222222)
    cpu.load_guest_idt_entry(num, 0x00601234, 0xC0108F00)
    assert cpu.changed == 0
    assert cpu.idt[num].tolist() == [0x11111111, 0x22222222]
    assert cpu.guest.dead is None


@pytest.mark.parametrize("num", [0, 1, 3, 14, 30, 32, 0x40, 0x80, 255])
def test_trap_gate_stored(cpu, num):
    cpu.load_guest_idt_entry(num, 0xDEAD1234, 0xC010FF77)
    # a = (0x61 << 16) | lo & 0xFFFF ; b = hi & 0xFFFFEF00
    assert cpu.idt[num].tolist() == [0x00611234, 0xC010EF00]
    assert cpu.changed == 1
    assert cpu.guest.dead is None
    others = np.delete(cpu.idt, num, axis=0)
    assert not others.any()


def test_interrupt_gate_and_dpl_kept(cpu):
    cpu.load_guest_idt_entry(0x21, 0x00000010, 0x00008E00)
    assert cpu.idt[0x21].tolist() == [0x00610010, 0x00008E00]
    cpu.load_guest_idt_entry(0x80, 0x0060ABCD, 0xC000EE00)   # DPL 3 interrupt gate
    assert cpu.idt[0x80].tolist() == [0x0061ABCD, 0xC000EE00]
    cpu.load_guest_idt_entry(3, 0x0060ABCD, 0xC000DF00)      # DPL 2 trap gate, bit 12 set
    assert cpu.idt[3].tolist() == [0x0061ABCD, 0xC000CF00]
    assert cpu.changed == 1
    assert cpu.guest.dead is None


def test_changed_is_ored(cpu):
    cpu.changed = 6
    cpu.load_guest_idt_entry(5, 0, 0)
    assert cpu.changed == 7
    cpu.changed = 2
    cpu.load_guest_idt_entry(8, 0, 0)   # ignored: changed untouched
    assert cpu.changed == 2


def test_not_present_zeroes(cpu):
    cpu.idt[0x30] = (0x00611234, 0xC0108F00)
    cpu.load_guest_idt_entry(0x30, 0xFFFFFFFF, 0xFFFF7FFF)
    assert cpu.idt[0x30].tolist() == [0, 0]
    assert cpu.changed == 1
    assert cpu.guest.dead is None
    # not present with a bad type: zeroed, no kill (the type is checked after)
    cpu.idt[0x31] = (1, 2)
    cpu.load_guest_idt_entry(0x31, 0x1234, 0x00000500)
    assert cpu.idt[0x31].tolist() == [0, 0]
    assert cpu.guest.dead is None


@pytest.mark.parametrize("typ", [0x0, 0x5, 0xC, 0xD, 0x6, 0x7])
def test_bad_type_kills_but_stores(cpu, typ):
    hi = 0xC0109000 | (typ << 8) | 0xFF   # bit 12 and the low byte are dropped
    cpu.load_guest_idt_entry(40, 0x55556666, hi)
    assert cpu.guest.dead == f"bad IDT type {typ}"
    assert cpu.idt[40].tolist() == [0x00616666, (hi & 0xFFFFEF00)]
    assert cpu.changed == 1


def test_first_kill_wins(cpu):
    cpu.load_guest_idt_entry(40, 0, 0x8C00)
    cpu.load_guest_idt_entry(41, 0, 0x8D00)
    cpu.load_guest_idt_entry(300, 0, 0x8F00)
    assert cpu.guest.dead == "bad IDT type 12"
    assert cpu.idt[41].tolist() == [0x00610000, 0x8D00]


@pytest.mark.parametrize("num,text", [(256, "256"), (300, "300"), (0xFFFFFFFF, "4294967295"),
                                      (0x80000000, "2147483648")])
def test_out_of_range_entry_kills(cpu, num, text):
    before = cpu.idt.copy()
    cpu.load_guest_idt_entry(num, 0x00601234, 0xC0108F00)
    assert cpu.guest.dead == f"Setting idt entry {text}"
    assert cpu.changed == 1                # set before the bounds check
    assert (cpu.idt == before).all()


def test_idt_is_live_view(cpu):
    assert cpu.idt.shape == (256, 2)
    assert cpu.idt.dtype == np.uint32
    assert not cpu.idt.any()   # kzalloc'd
    cpu.idt[7, 1] = 0x8F00
    assert cpu.idt[7].tolist() == [0, 0x8F00]
    cpu.load_guest_idt_entry(7, 0x0000BEEF, 0x12348E00)
    assert int(cpu.idt[7, 0]) == 0x0061BEEF and int(cpu.idt[7, 1]) == 0x12348E00


# --- default_idt_entry (seed 413-433) -----------------------------------------

@pytest.mark.parametrize("trap,handler,base,a,b", [
    (0, 0xC0123456, None, 0x00503456, 0xC0128E00),
    (31, 0xFFC01234, None, 0x00501234, 0xFFC0AE00),
    (31, 0xFFC01234, (0, 0xE000), 0x00501234, 0xFFC0AE00),      # trap 31 ignores base
    (3, 0x00000000, (0x00611234, 0xC010EF00), 0x00500000, 0x0000EE00),
    (3, 0xFFFFFFFF, (0xFFFFFFFF, 0xFFFFFFFF), 0x0050FFFF, 0xFFFFEE00),
    (0x80, 0x12345678, (0, 0x2000), 0x00505678, 0x1234AE00),
    (0x80, 0x12345678, (0, 0x4000), 0x00505678, 0x1234CE00),
    (5, 0xABCD0000, (0, 0), 0x00500000, 0xABCD8E00),
    (5, 0xABCD0000, (0xFFFFFFFF, 0x9FFF), 0x00500000, 0xABCD8E00),
])
def test_default_idt_entry(core, trap, handler, base, a, b):
    assert tuple(int(x) for x in core.default_idt_entry(trap, handler, base)) == (a, b)
    if base is None:
        assert tuple(int(x) for x in core.default_idt_entry(trap, handler)) == (a, b)


def test_setup_default_idt_entries(core):
    idt = np.full((256, 2), 0xA5A5A5A5, dtype=np.uint32)
    defaults = np.array([0xC0000000 + 0x10 * i + (i << 16) for i in range(256)], dtype=np.uint32)
    core.setup_default_idt_entries(idt, defaults)
    for i in range(256):
        h = int(defaults[i])
        flags = 0xAE00 if i == 31 else 0x8E00
        assert idt[i].tolist() == [0x500000 | (h & 0xFFFF), (h & 0xFFFF0000) | flags], i


# --- copy_traps (seed 448-475) ------------------------------------------------

DIRECT_0x80 = [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
               30, 0x80]


def _filled_guest_idt(cpu):
    # every entry: a recognisable value; type varies with the vector
    for i in range(256):
        typ = (0xF, 0xE, 0x0, 0x5)[i % 4]
        dpl = (i % 3) << 13
        cpu.idt[i] = (0x00610000 | i, 0xC0000000 | (i << 16) | 0x8000 | dpl | (typ << 8))


def test_copy_traps(cpu):
    _filled_guest_idt(cpu)
    guest_idt_before = cpu.idt.copy()
    host_idt = np.full((256, 2), 0x5A5A5A5A, dtype=np.uint32)
    defaults = np.array([0xFFC10000 + 0x20 * i for i in range(256)], dtype=np.uint32)
    cpu.copy_traps(host_idt, defaults)
    for i in range(256):
        ga, gb = (int(x) for x in guest_idt_before[i])
        if i not in DIRECT_0x80:
            expect = [0x5A5A5A5A, 0x5A5A5A5A]          # left alone
        elif (gb >> 8) & 0xF == 0xF:
            expect = [ga, gb]                          # direct trap gate, verbatim
        else:
            h = int(defaults[i])
            expect = [0x500000 | (h & 0xFFFF), (h & 0xFFFF0000) | 0x8E00 | (gb & 0x6000)]
        assert host_idt[i].tolist() == expect, i
    assert (cpu.idt == guest_idt_before).all()
    assert cpu.guest.dead is None


def test_copy_traps_concrete_entries(cpu):
    host_idt = np.zeros((256, 2), dtype=np.uint32)
    defaults = np.full(256, 0xFFC0ABCD, dtype=np.uint32)
    cpu.idt[3] = (0x00611111, 0xC010EF00)      # DPL3 trap gate: direct
    cpu.idt[4] = (0x00612222, 0xC010EE00)      # DPL3 interrupt gate: default, DPL copied
    cpu.idt[0x80] = (0x00613333, 0xC010EF00)   # syscall trap gate: direct
    cpu.idt[0x81] = (0x00614444, 0xC010EF00)   # not a syscall vector: untouched
    cpu.idt[14] = (0x00615555, 0xC010EF00)     # page fault never direct: untouched
    cpu.copy_traps(host_idt, defaults)
    assert host_idt[3].tolist() == [0x00611111, 0xC010EF00]
    assert host_idt[4].tolist() == [0x0050ABCD, 0xFFC0EE00]
    assert host_idt[0x80].tolist() == [0x00613333, 0xC010EF00]
    assert host_idt[0x81].tolist() == [0, 0]
    assert host_idt[14].tolist() == [0, 0]
    assert host_idt[0].tolist() == [0x0050ABCD, 0xFFC08E00]   # empty guest entry -> default
    assert host_idt[31].tolist() == [0, 0]
    assert host_idt[0x40].tolist() == [0, 0]


def test_copy_traps_plan9_vector(core, mem, clock):
    h = lguest.Host(syscall_vector=0x40, used_vectors=lguest.UsedVectors())
    g = h.new_guest(mem, page_offset=0, clock=clock, core=core)
    c = g.new_cpu()
    c.idt[0x40] = (0x00617777, 0x0040EF00)
    c.idt[0x80] = (0x00618888, 0x0040EE00)
    host_idt = np.zeros((256, 2), dtype=np.uint32)
    defaults = np.arange(256, dtype=np.uint32) * 0x10001
    c.copy_traps(host_idt, defaults)
    assert host_idt[0x40].tolist() == [0x00617777, 0x0040EF00]
    assert host_idt[0x80].tolist() == [0x00500000 | 0x0080, 0x00800000 | 0xEE00]
    assert [i for i in range(32, 256) if host_idt[i].any()] == [0x40, 0x80]


@pytest.mark.parametrize("vector", [0x20, 0x40, 0x80, 0x81, 0xFF])
def test_copy_traps_visits_exactly_the_direct_vectors(core, mem, clock, vector):
    # copy_traps visits only the vectors that can be direct (a list made
    # once per guest from its syscall vector); the result must be the
    # kernel's loop over all 256 with direct_trap(i).
    h = lguest.Host(syscall_vector=vector, used_vectors=lguest.UsedVectors())
    c = h.new_guest(mem, page_offset=0, clock=clock, core=core).new_cpu()
    _filled_guest_idt(c)
    host_idt = np.full((256, 2), 0x5A5A5A5A, dtype=np.uint32)
    defaults = np.array([0xFFC10000 + 0x20 * i for i in range(256)], dtype=np.uint32)
    c.copy_traps(host_idt, defaults)
    for i in range(256):
        ga, gb = (int(x) for x in c.idt[i])
        if not c.guest.direct_trap(i):
            expect = [0x5A5A5A5A, 0x5A5A5A5A]
        elif (gb >> 8) & 0xF == 0xF:
            expect = [ga, gb]
        else:
            expect = core.default_idt_entry(i, int(defaults[i]), (ga, gb))
        assert list(host_idt[i]) == list(expect), i
    assert sum(c.guest.direct_trap(i) for i in range(256)) == 27 + len({0x80, vector})
