"""lguest_arch_handle_trap (ABI.md §5) on both cores: in/out emulation on #GP,
page faults, #NM, real interrupts, the hypercall trap, the vmcall patch on
#UD, reflection into the guest and the `unhandled trap` kill.

Expected values are derived by hand from ABI.md.
"""

from __future__ import annotations

import struct

import pytest
from lgtest import LD, install, set_regs

import lguest
from lguest.host.run import RunContext, ScriptedBackend
from lguest.host.traps import emulate_insn, handle_trap

PAGE = 4096
MEM_SIZE = 64 * PAGE
M32 = 0xFFFFFFFF
LD_CR2 = 8
EIP = 0x5000  # guest code (flat guest: physical == virtual)
STACK = 0x8000


def kernel(cpu, **extra):
    """A guest-kernel trap frame (cs 0x61, ss 0x69)."""
    set_regs(cpu, eax=0x12345678, ebx=0xB, ecx=0xC, edx=0xD, eip=EIP, cs=0x61,
             eflags=0x202, esp=STACK, ss=0x69, ds=0x69, es=0x69, errcode=0)
    set_regs(cpu, **extra)
    return cpu


def regs(cpu):
    return tuple(int(x) for x in cpu.regs.array)


class Recorder(ScriptedBackend):
    """Records demand_page calls and answers with `handled`."""

    def __init__(self, handled=False):
        super().__init__([])
        self.handled = handled

    def demand_page(self, cpu, vaddr, errcode):
        self.calls.append(("demand_page", vaddr, errcode))
        return self.handled


@pytest.fixture
def backend():
    return Recorder()


def trap(cpu, backend, num, **extra):
    kernel(cpu, trapnum=num, **extra)
    handle_trap(cpu, RunContext(cpu, backend))


# --- 13: general protection, in/out emulation -----------------------------------------
@pytest.mark.parametrize("code, eax, length", [
    (b"\xe4\x60", 0x1234FFFF, 2),          # in $0x60, %al: eax |= 0xFFFF (sic, 16 bits)
    (b"\xe5\x60", 0xFFFFFFFF, 2),          # in $0x60, %eax
    (b"\xec", 0x1234FFFF, 1),              # in (%dx), %al
    (b"\xed", 0xFFFFFFFF, 1),              # in (%dx), %eax
    (b"\x66\xe4\x60", 0xFFFF5678, 3),      # 0x66 prefix: shift 16
    (b"\x66\xe5\x60", 0xFFFFFFFF, 3),
    (b"\x66\xec", 0xFFFF5678, 2),
    (b"\x66\xed", 0xFFFFFFFF, 2),
    (b"\xe6\x60", 0x12345678, 2),          # out: nothing but eip
    (b"\xe7\x60", 0x12345678, 2),
    (b"\xee", 0x12345678, 1),
    (b"\xef", 0x12345678, 1),
    (b"\x66\xe6\x60", 0x12345678, 3),
    (b"\x66\xe7\x60", 0x12345678, 3),
    (b"\x66\xee", 0x12345678, 2),
    (b"\x66\xef", 0x12345678, 2),
])
def test_gpf_in_out_emulated(cpu, mem, backend, code, eax, length):
    mem.write(EIP, code)
    install(cpu, 13, 0x7000)  # emulation wins over delivery
    trap(cpu, backend, 13)
    assert cpu.guest.dead is None
    assert cpu.regs.eax == eax
    assert cpu.regs.eip == EIP + length
    assert (cpu.regs.esp, cpu.regs.cs) == (STACK, 0x61)  # not delivered


def test_gpf_in_al_ors_into_existing_eax(cpu, mem, backend):
    mem.write(EIP, b"\xe4\x60")
    trap(cpu, backend, 13, eax=0xABCD0000)
    assert cpu.regs.eax == 0xABCDFFFF
    mem.write(EIP, b"\x66\xe4\x60")
    trap(cpu, backend, 13, eax=0x0000ABCD)
    assert cpu.regs.eax == 0xFFFFABCD


def test_emulate_insn_return_value(cpu, mem):
    mem.write(EIP, b"\xec")
    kernel(cpu)
    assert emulate_insn(cpu)
    mem.write(EIP, b"\x90")
    kernel(cpu)
    assert not emulate_insn(cpu)


def test_gpf_emulation_with_page_offset(core, host, mem, backend):
    guest = host.new_guest(mem, page_offset=0xC0000000, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    mem.write(0x2000, b"\xed")
    trap(cpu, backend, 13, eip=0xC0002000)
    assert guest.dead is None
    assert (cpu.regs.eax, cpu.regs.eip) == (0xFFFFFFFF, 0xC0002001)


@pytest.mark.parametrize("code", [b"\x90", b"\xf4", b"\x0f\x0b", b"\x66\x90", b"\x66\x66\xec",
                                  b"\xe2\x00", b"\xe8\x00\x00\x00\x00"])
def test_gpf_other_instruction_is_not_emulated(cpu, mem, backend, code):
    mem.write(EIP, code)
    trap(cpu, backend, 13, errcode=0)
    assert cpu.guest.dead == "unhandled trap 13 at 0x5000 (0x0)"
    assert cpu.regs.eax == 0x12345678


def test_gpf_with_errcode_is_not_emulated(cpu, mem, backend):
    mem.write(EIP, b"\xec")
    trap(cpu, backend, 13, errcode=0x10)
    assert cpu.guest.dead == "unhandled trap 13 at 0x5000 (0x10)"
    assert (cpu.regs.eax, cpu.regs.eip) == (0x12345678, EIP)


@pytest.mark.parametrize("cs", [0x60, 0x62, 0x73])
def test_gpf_outside_guest_kernel_ring_is_not_emulated(cpu, mem, backend, cs):
    mem.write(EIP, b"\xec")
    trap(cpu, backend, 13, cs=cs)
    assert cpu.guest.dead == "unhandled trap 13 at 0x5000 (0x0)"
    assert (cpu.regs.eax, cpu.regs.eip) == (0x12345678, EIP)


def test_gpf_other_instruction_is_delivered(cpu, mem, backend):
    mem.write(EIP, b"\x0f\x0b")
    install(cpu, 13, 0x7000)
    trap(cpu, backend, 13, errcode=0x18)
    assert cpu.guest.dead is None
    assert cpu.regs.eip == 0x7000
    assert cpu.regs.cs == 0x61
    # same-ring frame: eflags, cs, eip, errcode (13 has one)
    assert cpu.regs.esp == STACK - 16
    assert struct.unpack("<4I", mem.read(STACK - 16, 16)) == (0x18, EIP, 0x61, 0x202)


def test_gpf_translates_eip_before_checking_cs(cpu, mem, guest, backend):
    # page-table mode, nothing mapped: guest_pa(eip) kills even for a user cs
    guest.pgdir = 0x9000
    trap(cpu, backend, 13, eip=0x00401000, cs=0x73)
    assert guest.dead == "Bad address 0x401000"


def test_gpf_with_errcode_does_not_translate(cpu, mem, guest, backend):
    guest.pgdir = 0x9000
    trap(cpu, backend, 13, eip=0x00401000, cs=0x73, errcode=4)
    assert guest.dead == "unhandled trap 13 at 0x401000 (0x4)"


def test_gpf_insn_read_at_last_byte_of_ram(cpu, mem, backend):
    # lguest_address_ok(size - 1, 1): end page == pfn_limit, refused
    trap(cpu, backend, 13, eip=MEM_SIZE - 1)
    assert cpu.guest.dead == "bad read address 0x3ffff len 1"


def test_gpf_prefix_read_past_ram(cpu, mem, backend):
    mem.write(MEM_SIZE - 2, b"\x66")
    trap(cpu, backend, 13, eip=MEM_SIZE - 2)
    assert cpu.guest.dead == "bad read address 0x3ffff len 1"


# --- 14: page fault ----------------------------------------------------------------------
def test_pf_handled_by_demand_page(cpu, mem, guest):
    guest.lguest_data = LD
    mem.write_u32(LD + LD_CR2, 0xDEAD)
    backend = Recorder(handled=True)
    cpu.last_pagefault = 0xC0123456
    before = None
    kernel(cpu, trapnum=14, errcode=6)
    before = regs(cpu)
    handle_trap(cpu, RunContext(cpu, backend))
    assert backend.calls == [("demand_page", 0xC0123456, 6)]
    assert guest.dead is None
    assert regs(cpu) == before
    assert mem.read_u32(LD + LD_CR2) == 0xDEAD  # the guest never hears of it


def test_pf_reflected_writes_cr2(cpu, mem, guest, backend):
    guest.lguest_data = LD
    mem.write_u32(LD, 0x200)
    install(cpu, 14, 0x7100, flags=0x8E00)
    cpu.last_pagefault = 0x00345678
    trap(cpu, backend, 14, errcode=2)
    assert backend.calls == [("demand_page", 0x00345678, 2)]
    assert guest.dead is None
    assert mem.read_u32(LD + LD_CR2) == 0x00345678
    assert cpu.regs.eip == 0x7100
    assert struct.unpack("<4I", mem.read(STACK - 16, 16)) == (2, EIP, 0x61, 0x202)


def test_pf_unhandled_reports_last_pagefault(cpu, mem, guest, backend):
    guest.lguest_data = LD
    cpu.last_pagefault = 0xC0ABC000
    trap(cpu, backend, 14, errcode=7)
    assert guest.dead == "unhandled trap 14 at 0x5000 (0xc0abc000)"
    assert mem.read_u32(LD + LD_CR2) == 0xC0ABC000


def test_pf_unhandled_cr2_zero_prints_0x0(cpu, mem, guest, backend):
    cpu.last_pagefault = 0
    trap(cpu, backend, 14, errcode=7)
    assert guest.dead == "unhandled trap 14 at 0x5000 (0x0)"


def test_pf_without_lguest_data_skips_cr2(cpu, mem, guest, backend):
    assert guest.lguest_data is None
    cpu.last_pagefault = 0x1234
    trap(cpu, backend, 14, errcode=0)
    assert guest.dead == "unhandled trap 14 at 0x5000 (0x1234)"


def test_pf_writing_cr2_fails(cpu, mem, guest, backend):
    guest.lguest_data = MEM_SIZE - 8  # cr2 (offset 8) lies past the end
    install(cpu, 14, 0x7100)
    cpu.last_pagefault = 0x1234
    trap(cpu, backend, 14, errcode=0)
    assert guest.dead == "Writing cr2"
    assert cpu.regs.eip == 0x7100  # delivery still happens


# --- 7: device not available ----------------------------------------------------------------
def test_nm_without_ts_is_the_hosts(cpu, mem, backend):
    cpu.ts = 0
    kernel(cpu, trapnum=7)
    before = regs(cpu)
    handle_trap(cpu, RunContext(cpu, backend))
    assert cpu.guest.dead is None
    assert regs(cpu) == before


def test_nm_with_ts_is_delivered(cpu, mem, backend):
    cpu.ts = 1
    install(cpu, 7, 0x7200)
    trap(cpu, backend, 7)
    assert cpu.guest.dead is None
    assert cpu.regs.eip == 0x7200
    assert cpu.regs.esp == STACK - 12  # no error code for 7


def test_nm_with_ts_unhandled(cpu, mem, backend):
    cpu.ts = 1
    trap(cpu, backend, 7, errcode=0x99)
    assert cpu.guest.dead == "unhandled trap 7 at 0x5000 (0x99)"


# --- 32..255: real interrupts ------------------------------------------------------------
@pytest.mark.parametrize("num", [32, 0x41, 0x80, 0xEF, 255])
def test_real_interrupt_is_ignored(cpu, mem, backend, num):
    kernel(cpu, trapnum=num)
    before = regs(cpu)
    handle_trap(cpu, RunContext(cpu, backend))
    assert cpu.guest.dead is None
    assert regs(cpu) == before
    assert not cpu.hcall_pending


def test_real_interrupt_even_with_a_guest_gate(cpu, mem, backend):
    install(cpu, 0x80, 0x7300, flags=0xEF00)
    kernel(cpu, trapnum=0x80)
    before = regs(cpu)
    handle_trap(cpu, RunContext(cpu, backend))
    assert regs(cpu) == before


# --- 31: hypercall --------------------------------------------------------------------------
def test_trap31_marks_hypercall_pending(cpu, mem, backend):
    kernel(cpu, trapnum=31, eax=17, ebx=0x1234)
    before = regs(cpu)
    handle_trap(cpu, RunContext(cpu, backend))
    assert cpu.hcall_pending
    assert regs(cpu) == before
    assert cpu.guest.dead is None
    assert cpu.pending_notify == 0  # the call is made later, by the run loop


# --- 6: invalid opcode / vmcall patch -------------------------------------------------------
def test_vmcall_is_patched(cpu, mem, backend):
    mem.write(EIP, b"\x0f\x01\xc1\x90")
    trap(cpu, backend, 6)
    assert mem.read(EIP, 4) == b"\xcd\x1f\x90\x90"
    assert cpu.regs.eip == EIP  # not advanced: the guest re-runs it as int $0x1f
    assert cpu.guest.dead is None
    assert ("code_changed", EIP, 3) in backend.calls
    assert not cpu.hcall_pending


def test_vmcall_is_patched_at_guest_pa(core, host, mem, backend):
    guest = host.new_guest(mem, page_offset=0xC0000000, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    mem.write(0x2345, b"\x0f\x01\xc1")
    trap(cpu, backend, 6, eip=0xC0002345)
    assert mem.read(0x2345, 3) == b"\xcd\x1f\x90"
    assert cpu.regs.eip == 0xC0002345
    assert guest.dead is None
    assert ("code_changed", 0x2345, 3) in backend.calls


@pytest.mark.parametrize("cs", [0x73, 0x60, 0x62])
def test_vmcall_outside_guest_kernel_is_not_patched(cpu, mem, backend, cs):
    mem.write(EIP, b"\x0f\x01\xc1")
    trap(cpu, backend, 6, cs=cs)
    assert mem.read(EIP, 3) == b"\x0f\x01\xc1"
    assert cpu.guest.dead == "unhandled trap 6 at 0x5000 (0x0)"
    assert not any(c[0] == "code_changed" for c in backend.calls)


@pytest.mark.parametrize("code", [b"\x0f\x0b\x00", b"\x0f\x01\xc2", b"\x0f\x01\xd9", b"\xcd\x1f\x90"])
def test_other_ud_is_delivered_or_kills(cpu, mem, backend, code):
    mem.write(EIP, code)
    trap(cpu, backend, 6)
    assert mem.read(EIP, 3) == code
    assert cpu.guest.dead == "unhandled trap 6 at 0x5000 (0x0)"


def test_ud_delivered(cpu, mem, backend):
    mem.write(EIP, b"\x0f\x0b")
    install(cpu, 6, 0x7400)
    trap(cpu, backend, 6)
    assert cpu.guest.dead is None
    assert cpu.regs.eip == 0x7400
    assert cpu.regs.esp == STACK - 12


def test_the_real_kill_message_of_commit_88df781a(core, host, mem, backend):
    # "lguest: unhandled trap 6 at 0x418726 (0x0)"
    guest = host.new_guest(mem, page_offset=0x400000, clock=lguest.VirtualClock(), core=core)
    cpu = guest.new_cpu()
    trap(cpu, backend, 6, eip=0x418726)
    assert guest.dead == "unhandled trap 6 at 0x418726 (0x0)"


def test_ud_code_read_fails(cpu, mem, backend):
    trap(cpu, backend, 6, eip=MEM_SIZE - 3)  # end == size: refused
    assert cpu.guest.dead == "bad read address 0x3fffd len 3"


# --- everything else ---------------------------------------------------------------------
@pytest.mark.parametrize("num, err", [(0, False), (1, False), (3, False), (4, False), (5, False),
                                      (10, True), (11, True), (12, True), (16, False),
                                      (17, True), (19, False)])
def test_other_traps_are_delivered(cpu, mem, backend, num, err):
    install(cpu, num, 0x7500)
    trap(cpu, backend, num, errcode=0x42)
    assert cpu.guest.dead is None
    assert cpu.regs.eip == 0x7500
    assert cpu.regs.esp == STACK - (16 if err else 12)


@pytest.mark.parametrize("num, msg", [
    (0, "unhandled trap 0 at 0x5000 (0x42)"),
    (3, "unhandled trap 3 at 0x5000 (0x42)"),
    (12, "unhandled trap 12 at 0x5000 (0x42)"),
    (30, "unhandled trap 30 at 0x5000 (0x42)"),
])
def test_other_traps_without_handler_kill(cpu, mem, backend, num, msg):
    trap(cpu, backend, num, errcode=0x42)
    assert cpu.guest.dead == msg


@pytest.mark.parametrize("num", [2, 8, 15])
def test_host_owned_vectors_cannot_be_installed(cpu, mem, backend, num):
    install(cpu, num, 0x7500)  # LOAD_IDT_ENTRY ignores 2, 8, 15 (and 31)
    trap(cpu, backend, num, errcode=0)
    assert cpu.guest.dead == f"unhandled trap {num} at 0x5000 (0x0)"


def test_kill_message_formats(cpu, mem, backend):
    trap(cpu, backend, 0, eip=0, errcode=0)
    assert cpu.guest.dead == "unhandled trap 0 at 0x0 (0x0)"


def test_kill_message_large_values(cpu, mem, backend):
    trap(cpu, backend, 0, eip=0xFFFFFFFF, errcode=0xFFFFFFFF)
    assert cpu.guest.dead == "unhandled trap 0 at 0xffffffff (0xffffffff)"


def test_trapnum_256_always_kills(cpu, mem, backend):
    for v in range(256):
        install(cpu, v, 0x7600)
    trap(cpu, backend, 256, errcode=0x5)
    assert cpu.guest.dead == "unhandled trap 256 at 0x5000 (0x5)"
    assert cpu.regs.eip == EIP


@pytest.mark.parametrize("num, msg", [
    (0x80000000, "unhandled trap -2147483648 at 0x5000 (0x0)"),
    (0xFFFFFFFF, "unhandled trap -1 at 0x5000 (0x0)"),
])
def test_trapnum_printed_signed(cpu, mem, backend, num, msg):
    trap(cpu, backend, num)
    assert cpu.guest.dead == msg


def test_first_kill_reason_stays(cpu, mem, backend):
    cpu.guest.kill("earlier")
    trap(cpu, backend, 0)
    assert cpu.guest.dead == "earlier"


# --- page-table mode: the instruction is found through the guest's own tables ----------------
PGDIR = 0x9000
PGTABLE = 0xA000
VEIP = 0xC0400123  # pgd index 0x301, pte index 0


def map_eip(mem, guest, pte=0x2000 | 0x63):
    guest.pgdir = PGDIR
    mem.write_u32(PGDIR + (VEIP >> 22) * 4, PGTABLE | 0x67)
    mem.write_u32(PGTABLE + ((VEIP >> 12) & 0x3FF) * 4, pte)


def test_vmcall_patched_through_page_tables(cpu, mem, guest, backend):
    map_eip(mem, guest)
    mem.write(0x2123, b"\x0f\x01\xc1")
    trap(cpu, backend, 6, eip=VEIP)
    assert guest.dead is None
    assert mem.read(0x2123, 3) == b"\xcd\x1f\x90"
    assert cpu.regs.eip == VEIP
    assert ("code_changed", 0x2123, 3) in backend.calls


def test_in_emulated_through_page_tables(cpu, mem, guest, backend):
    map_eip(mem, guest)
    mem.write(0x2123, b"\x66\xed")
    trap(cpu, backend, 13, eip=VEIP, eax=0)
    assert guest.dead is None
    assert (cpu.regs.eax, cpu.regs.eip) == (0xFFFFFFFF, VEIP + 2)


def test_missing_pte_kills_but_carries_on(cpu, mem, guest, backend):
    # pte not present: "Bad address", yet guest_pa still returns (pte & ~0xFFF) | offset
    map_eip(mem, guest, pte=0)
    mem.write(0x123, b"\x0f\x01\xc1")
    trap(cpu, backend, 6, eip=VEIP)
    assert guest.dead == "Bad address 0xc0400123"
    assert mem.read(0x123, 3) == b"\xcd\x1f\x90"
    assert cpu.regs.eip == VEIP
