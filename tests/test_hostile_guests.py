"""Hostile guest code on the Unicorn backend: the host range, CPL 0, the run lock.

Every guest here is real i386 code assembled at test time (``as --32``,
``ld -m elf_i386``) and run by Unicorn.  Each run ends with a clean timeout
or the exact kill reason: lguest's own words where the kernel has them
(``attempt to access switcher pages``, ``unhandled trap N at 0x... (0x...)``),
else the emulator-level messages documented in lguest/unicorn.py.

The host range is the Switcher at 0xFFC00000 (5 pages) and everything above
it.  Expected outcomes are worked out from the x86 rules and lguest's
design, not read back from the implementation:

* writes and instruction fetches anywhere in it, at ring 1 or 3, flat or
  paged, kill the guest;
* reads kill it too, except the GDT's page, which the CPU itself reads at
  the guest's privilege level (segment loads, iret); the guest may read it
  there too (it holds the guest's own descriptors and the Switcher's three
  public ones) -- except at ring 3 with paging, where the page is
  supervisor-only, so the read page-faults and the fault in the host range
  kills.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("unicorn")

import lguest  # noqa: E402
from lguest.memory import GuestMemory  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

MEM = 1 << 20
PAGED = 0xC0000000
SWITCHER = 0xFFC00000
GDT_PAGE = SWITCHER + 0x1000
HOST_TARGETS = [SWITCHER + i * 0x1000 for i in range(5)] + [0xFFFFFFFC]  # each Switcher page, the top
SWITCHER_KILL = "attempt to access switcher pages"
LD_ADDR = 0x8000  # lguest_data, for the guests that make hypercalls


def assemble(tmp: Path, source: str, base: int = 0x1000) -> tuple[bytes, dict[str, int]]:
    """(flat image linked at ``base``, {symbol: address}) of an AT&T source."""
    src, obj, elf, img = (tmp / n for n in ("g.s", "g.o", "g.elf", "g.bin"))
    src.write_text(".code32\n.text\n.globl _start\n_start:\n" + textwrap.dedent(source))
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", f"-Ttext={base:#x}", "-e", "_start", "-o", str(elf), str(obj)],
                   check=True, capture_output=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(elf), str(img)], check=True)
    syms = {}
    for line in subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return img.read_bytes(), syms


def launcher(core=None, **kw):
    kw.setdefault("memory", MEM)
    kw.setdefault("used_vectors", lguest.UsedVectors(used=range(32)))
    return UnicornLauncher(core=core, **kw)


# Ring 1 -> ring 3 by iret: the user flat segments of lguest.unicorn's GDT.
TO_RING3 = """
    mov $0x7800, %esp       # the ring-1 stack (the guest starts with esp 0)
    pushl $0x7b             # ss: user data (entry 15, RPL 3)
    pushl $0x7000           # esp
    pushl $0x202
    pushl $0x73             # cs: user code (entry 14, RPL 3)
    pushl $ring3
    iret
ring3:
"""

# LGUEST_INIT(LD_ADDR): the first vmcall is patched into the hypercall trap.
INIT = f"""
    mov $1, %eax
    mov ${LD_ADDR:#x}, %ebx
    vmcall
"""


def prepare_ld(lg) -> None:
    lg.memory.write(LD_ADDR + 20, b"\xff" * 64)  # an empty async hypercall ring
    lg.memory.write_u32(LD_ADDR + 1132, 0x80)  # syscall_vec


def unhandled(trap: int, eip: int, err: int) -> str:
    return f"unhandled trap {trap} at {eip:#x} ({err:#x})"


# --- 1. every page of the host range, every access, both rings, flat and paged ----------------------------
ACCESS = """
    mov 0x4000, %ebx        # the target address
    mov 0x4004, %ecx        # 0 read, 1 write, 2 jump
    cmp $1, %ecx
    je do_write
    cmp $2, %ecx
    je do_jump
    mov (%ebx), %eax
after_read:
    hlt                     # #GP at either ring: the guest has no IDT, so it dies here
do_write:
    mov %eax, (%ebx)
    hlt
do_jump:
    jmp *%ebx
"""


@pytest.fixture(scope="module")
def access_images(tmp_path_factory):
    return {ring: assemble(tmp_path_factory.mktemp(f"r{ring}"), (TO_RING3 if ring == 3 else "") + ACCESS)
            for ring in (1, 3)}


@pytest.mark.parametrize("op", ["read", "write", "jump"])
@pytest.mark.parametrize("ring", [1, 3])
@pytest.mark.parametrize("paged", [False, True], ids=["flat", "paged"])
def test_every_host_page_is_out_of_reach(access_images, core, op, ring, paged):
    image, sym = access_images[ring]
    for target in HOST_TARGETS:
        with launcher(core, page_offset=PAGED if paged else 0) as lg:
            lg.load_flat(image, 0x1000, 0x1000)
            lg.memory.write(0x4000, struct.pack("<II", target, ("read", "write", "jump").index(op)))
            t0 = time.monotonic()
            result = lg.run(timeout=5)
            assert time.monotonic() - t0 < 2
            eax = lg.cpu.regs.eax
        if op == "read" and target == GDT_PAGE and not (paged and ring == 3):
            # the read worked (GDT entry 0, the null descriptor); the guest died at its hlt
            assert (result.reason, result.message, eax) == ("dead", unhandled(13, sym["after_read"], 0), 0)
        else:
            assert (result.reason, result.message) == ("dead", SWITCHER_KILL), hex(target)


@pytest.mark.parametrize("op,page,expected", [
    ("read", GDT_PAGE, None),  # the GDT: readable, even through an alias at ring 3
    ("read", SWITCHER + 0x3000, SWITCHER_KILL),  # the CPU's page directory (PROT_NONE)
    ("read", SWITCHER, SWITCHER_KILL),  # unmapped
    ("write", GDT_PAGE, SWITCHER_KILL),  # Unicorn reports the physical address: a host page
    ("jump", GDT_PAGE, SWITCHER_KILL),
])
def test_guest_page_table_aliases_of_host_pages(access_images, core, op, page, expected):
    """A paged guest's own page table maps a user page onto a host page's
    *physical* address (Unicorn walks the guest's second-level tables
    itself): the same containment holds, by Unicorn's region protections."""
    image, sym = access_images[3]
    alias = 0x300000  # beyond the 1 MiB of RAM: free in the initial page table
    with launcher(core, page_offset=PAGED) as lg:
        pgd = lg.guest.pgdir
        table = lg.memory.read_u32(pgd) & ~0xFFF
        lg.memory.write_u32(table + 4 * (alias >> 12), page | 0x67)  # present, writable, user, A, D
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write(0x4000, struct.pack("<II", alias, ("read", "write", "jump").index(op)))
        result = lg.run(timeout=5)
        eax = lg.cpu.regs.eax
    if expected is None:
        assert (result.reason, result.message, eax) == ("dead", unhandled(13, sym["after_read"], 0), 0)
    else:
        assert (result.reason, result.message) == ("dead", expected)


# --- 2. the planted-bytes hang (the bug this file was written for) ------------------------------------------
# Old design: the entry frame on the Switcher stack (0xFFC02FDC..0xFFC02FFF,
# mapped executable) held the guest's esp at 0xFFC02FF8.  A guest with esp =
# 0xFEEB (bytes EB FE: "jmp .") jumping there ran host code forever, unseen
# by the block hook: run(timeout) and break_out() never returned.
PLANTED = """
    mov $0xfeeb, %esp
spin:
    cmpl $0, 0x4000
    je spin
    mov $0xffc02ff8, %eax
    jmp *%eax
"""

PLANTED_CHILD = """
import sys, time, json
sys.path[:0] = {path!r}
import lguest
from lguest.unicorn import UnicornLauncher
out = []
for ring, image in {images!r}:
    for po in (0, 0xC0000000):
        with UnicornLauncher(memory=1 << 20, page_offset=po, core={core!r},
                             used_vectors=lguest.UsedVectors(used=range(32))) as lg:
            lg.load_flat(bytes.fromhex(image), 0x1000, 0x1000)
            first = lg.run(timeout=0.2).reason  # spinning: the frame now holds esp = 0xfeeb
            lg.memory.write_u32(0x4000, 1)
            t0 = time.monotonic()
            r = lg.run(timeout=0.5)
            out.append([ring, po, first, r.reason, r.message, time.monotonic() - t0])
print(json.dumps(out))
"""


def test_planted_jmp_in_the_entry_frame_cannot_hang_the_host(tmp_path, core):
    import json

    images = []
    for ring in (1, 3):
        (tmp_path / str(ring)).mkdir()
        images.append((ring, assemble(tmp_path / str(ring), (TO_RING3 if ring == 3 else "") + PLANTED)[0].hex()))
    path = [str(Path(lguest.__file__).resolve().parent.parent)]
    child = PLANTED_CHILD.format(path=path, images=images, core=core.NAME)
    # A subprocess: before the fix this hung for ever (and tearing it down crashed).
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    for ring, po, first, reason, message, elapsed in json.loads(proc.stdout):
        assert first == "timeout", (ring, po)
        assert (reason, message) == ("dead", SWITCHER_KILL), (ring, po)
        assert elapsed < 0.5 + 0.5


def test_jump_into_the_host_range_returns_within_the_timeout(tmp_path, core):
    image, _ = assemble(tmp_path, "mov $0xffc00000, %eax\njmp *%eax\n")
    with launcher(core) as lg:
        lg.load_flat(image, 0x1000, 0x1000)
        t0 = time.monotonic()
        result = lg.run(timeout=0.5)
        assert time.monotonic() - t0 < 0.5 + 0.5
    assert (result.reason, result.message) == ("dead", SWITCHER_KILL)


# --- 3. deadline and break-out, whatever the guest runs ---------------------------------------------------------
SPINNERS = {
    "jmp": "1: jmp 1b\n",
    "rep_movsb": "1: mov $0x10000, %esi\nmov $0x20000, %edi\nmov $0x8000, %ecx\nrep movsb\njmp 1b\n",
    "ring3": TO_RING3 + "1: jmp 1b\n",
    "hypercall_storm": INIT + "1: mov $5, %eax\nvmcall\njmp 1b\n",  # LHCALL_FLUSH_TLB: an exit each time
}


@pytest.mark.parametrize("kind", sorted(SPINNERS))
def test_timeout_and_break_out_end_any_guest(tmp_path, core, kind):
    image, _ = assemble(tmp_path, SPINNERS[kind])
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        t0 = time.monotonic()
        result = lg.run(timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 0.5
        assert (result.reason, result.message) == ("timeout", None)
        # break_out() from another thread ends a run without a timeout
        results = []
        runner = threading.Thread(target=lambda: results.append(lg.run()))
        runner.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        lg.break_out()
        runner.join(5)
        assert not runner.is_alive() and time.monotonic() - t0 < 0.5
        assert results[0].reason == "break"


# --- 4. no way to CPL 0 ------------------------------------------------------------------------------------------
def _gdt_table(extra: dict[int, tuple[int, int]]) -> bytes:
    """A LOAD_GDT table: the guest's flat segments at 12..15 plus ``extra``."""
    from lguest.unicorn import GUEST_FLAT_SEGMENTS

    table = np.zeros((24, 2), dtype=np.uint32)
    for i, (a, b) in {**GUEST_FLAT_SEGMENTS, **extra}.items():
        table[i] = (a, b)
    return table.tobytes()


def _gate(selector: int, offset: int, type_: int, dpl: int = 3) -> tuple[int, int]:
    return (selector << 16) | (offset & 0xFFFF), (offset & 0xFFFF0000) | 0x8000 | (dpl << 13) | (type_ << 8)


GATES = """
    mov $3, %eax            # LOAD_GDT(0x5000, 24)
    mov $0x5000, %ebx
    mov $24, %ecx
    vmcall
    mov 0x4000, %eax        # which far transfer
    cmp $1, %eax
    je via_jmp
via_call:
    lcall *0x4008
via_jmp:
    ljmp *0x4008
ring0:
    hlt
"""


@pytest.mark.parametrize("how", ["call", "jmp"])
@pytest.mark.parametrize("entry,kind", [
    (20, "call gate to LGUEST_CS"), (21, "16-bit call gate (a task gate after fixup)"),
    (22, "TSS with a ring-0 CS"), (23, "task gate to that TSS")])
def test_far_transfers_through_guest_descriptors_never_reach_ring0(tmp_path, core, how, entry, kind):
    image, sym = assemble(tmp_path, INIT + GATES)
    tss = 0x6000
    extra = {
        20: _gate(0x50, sym["ring0"], 0xC),  # 32-bit call gate, DPL 3, to the Switcher's code segment
        21: _gate(0x50, sym["ring0"], 0x4),  # 16-bit call gate: LOAD_GDT's accessed bit makes it a task gate
        22: (((tss & 0xFFFF) << 16) | 103, (tss & 0xFF000000) | ((tss >> 16) & 0xFF) | 0xA900),  # TSS, DPL 1
        23: _gate(22 * 8, 0, 0x5),  # task gate to entry 22
    }
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write(0x5000, _gdt_table(extra))
        # The TSS a task switch would load: ring-0 code and stack, eip at `ring0`.
        fields = {8: 0x58, 32: sym["ring0"], 36: 0x2, 56: 0x7000, 72: 0x58, 76: 0x50, 80: 0x58, 84: 0x58}
        for off, v in fields.items():
            lg.memory.write_u32(tss + off, v)
        lg.memory.write(0x4000, struct.pack("<III", 1 if how == "jmp" else 0, 0, 0))
        lg.memory.write(0x4008, struct.pack("<IH", 0, entry * 8 + 1))
        result = lg.run(timeout=5)
        cpu_gdt = lg.backend.gdt.copy()
    at = sym["via_jmp"] if how == "jmp" else sym["via_call"]
    # The guest's table is in cpu.gdt as lguest stores it; the CPU's copy has no system descriptors:
    # the far transfer faults #GP(selector) and the guest, with no IDT, dies of it.
    assert not cpu_gdt[entry].any(), kind
    assert (result.reason, result.message) == ("dead", unhandled(13, at, entry * 8)), kind


@pytest.mark.parametrize("ring", [1, 3])
@pytest.mark.parametrize("insn,outcome", [
    ("ljmp $0x50, $0x2000", ("gp", 0x50)),  # the Switcher's own ring-0 code segment
    ("lcall $0x50, $0x2000", ("gp", 0x50)),
    ("ljmp $0x80, $0", ("gp", 0x80)),  # the Switcher's TSS (DPL 0, busy)
    ("lcall $0x80, $0", ("gp", 0x80)),
    ("sysexit", ("gp", 0)),  # CPL != 0
    ("sysret", ("ud", 0)),  # EFER.SCE off
    ("sysenter", ("same_cpl", 0)),  # Unicorn: only hooks, no privilege change
    ("syscall", ("same_cpl", 0)),
])
def test_ring0_entry_instructions_fault_or_stay_put(tmp_path, core, ring, insn, outcome):
    image, sym = assemble(tmp_path, (TO_RING3 if ring == 3 else "") + f"at:\n{insn}\nmov %cs, %eax\nend:\nhlt\n")
    with launcher(core) as lg:
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=5)
        cs = lg.cpu.regs.eax
    kind, err = outcome
    if kind == "same_cpl":
        assert (result.message, cs) == (unhandled(13, sym["end"], 0), 0x61 if ring == 1 else 0x73)
    else:
        assert result.message == unhandled(13 if kind == "gp" else 6, sym["at"], err)


def test_a_code_segment_with_a_base_runs_at_any_eip(tmp_path, core):
    """A guest-made code segment based at 0x402000: eip 0xffc00100 is linear
    0x2100, guest RAM.  Only linear addresses in the host range are the
    host's (the block hook sees eips, so it must not judge by them)."""
    from lguest.unicorn import segment_descriptor

    image, _ = assemble(tmp_path, INIT + """
    mov $3, %eax            # LOAD_GDT(0x5000, 24)
    mov $0x5000, %ebx
    mov $24, %ecx
    vmcall
    ljmp $0xa1, $0xffc00100
""")
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write(0x2100, bytes.fromhex("8cc8" "f4"))  # mov %cs,%eax; hlt
        lg.memory.write(0x5000, _gdt_table({20: segment_descriptor(0x402000, 0xFFFFF, 0xBB)}))
        result = lg.run(timeout=5)
        cs = lg.cpu.regs.eax
    # It ran there (cs read back); its hlt is #GP(0), and lguest's in/out
    # emulation reads the instruction at eip as an address, ignoring the base
    # (as the kernel did): the kernel's words for that read.
    assert (result.message, cs) == ("bad read address 0xffc00102 len 1", 0xA1)


@pytest.mark.parametrize("ring", [1, 3])
@pytest.mark.parametrize("cs,ss", [(0x50, 0x58), (0x51, 0x59), (0x53, 0x5B), (0x73, 0x58), (0x73, 0x5B)])
def test_iret_to_a_forged_ring0_frame_faults(tmp_path, core, ring, cs, ss):
    src = (TO_RING3 if ring == 3 else "mov $0x7800, %esp\n") + f"""
    pushl ${ss:#x}
    pushl $0x7000
    pushl $0x202
    pushl ${cs:#x}
    pushl $target
forged:
    iret
target:
    hlt
"""
    image, sym = assemble(tmp_path, src)
    with launcher(core) as lg:
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=5)
    if cs != 0x73:  # LGUEST_CS: RPL below the CPL, or DPL 0 != RPL: #GP(cs)
        expected = unhandled(13, sym["forged"], 0x50)
    elif ring == 1:  # to ring 3 with a ring-0 stack segment: #GP(ss)
        expected = unhandled(13, sym["forged"], 0x58)
    else:  # ring 3 to ring 3: ss is not popped; the guest reaches its hlt
        expected = unhandled(13, sym["target"], 0)
    assert (result.reason, result.message) == ("dead", expected)


@pytest.mark.parametrize("insn", ["lidt 0x4000", "lgdt 0x4000", "ltr %ax", "mov %eax, %cr3", "mov %eax, %cr0",
                                  "mov %cr0, %eax", "lldt %ax", "clts", "wrmsr", "hlt", "cli"])
def test_privileged_instructions_at_ring1_are_gp_and_kill(tmp_path, core, insn):
    # lguest emulates only in/out for a #GP(0); anything else is reflected,
    # and this guest has no IDT: "unhandled trap 13".
    image, sym = assemble(tmp_path, f"mov $0x80000011, %eax\nat:\n{insn}\nhlt\n")
    with launcher(core) as lg:
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=5)
    assert (result.reason, result.message) == ("dead", unhandled(13, sym["at"], 0))


@pytest.mark.parametrize("entry,access,expected", [
    (13, 0x33, "lguest: trap 11 (0x68) entering the guest at {at}"),  # ds not present: #NP(ds)
    (12, 0x3B, "lguest: trap 11 (0x60) entering the guest at {at}"),  # cs not present: #NP(cs)
    (12, 0xB3, "lguest: trap 13 (0x60) entering the guest at {at}"),  # cs is data: #GP(cs)
    (13, 0xF3, "lguest: trap 13 (0x68) entering the guest at {at}"),  # ss DPL 3 != RPL 1: #GP(ss)
    (13, 0xB1, "lguest: trap 13 (0x68) entering the guest at {at}"),  # ss read-only: #GP(ss)
    (13, 0xB9, "lguest: trap 13 (0x68) entering the guest at {at}"),  # ds execute-only code: #GP(ds)
    (12, 0xBF, None),  # a conforming DPL-1 code segment: entered at CPL 1
])
def test_entry_checks_the_guests_segments_as_the_cpu_did(tmp_path, core, entry, access, expected):
    """LOAD_GDT breaks the segment in use; the next entry refuses it with the
    trap and error code the Switcher's pop/iretd raised on Unicorn (checked
    against the former trampoline: the same messages)."""
    from lguest.unicorn import segment_descriptor

    image, sym = assemble(tmp_path, INIT + """
    mov $3, %eax            # LOAD_GDT(0x5000, 24)
    mov $0x5000, %ebx
    mov $24, %ecx
    vmcall
at:
    mov %cs, %eax
    hlt
""")
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write(0x5000, _gdt_table({entry: segment_descriptor(0, 0xFFFFF, access)}))
        result = lg.run(timeout=5)
        cs = lg.cpu.regs.eax
    if expected is None:
        assert (result.message, cs) == (unhandled(13, sym["at"] + 2, 0), 0x61)
    else:
        # the patched vmcall is "int $0x1f; nop": the guest re-enters at the nop
        assert (result.reason, result.message) == ("dead", expected.format(at=hex(sym["at"] - 1)))


def test_entry_refuses_ring0_code_selectors(core):
    """The host writes a ring-0 cs into the guest's registers (as a buggy
    control plane might): the entry refuses it as the CPU's iret would not."""
    with launcher(core) as lg:
        lg.load_flat(b"\xeb\xfe", 0x1000, 0x1000)
        lg.cpu.regs.cs, lg.cpu.regs.ss = 0x50, 0x58
        result = lg.run(timeout=5)
    assert (result.reason, result.message) == ("dead", "lguest: trap 13 (0x50) entering the guest at 0x1000")


# --- 5. self-modifying code, stacks at the edge -------------------------------------------------------------
def test_self_modifying_code_over_a_patched_vmcall(tmp_path, core):
    # The first vmcall (LGUEST_INIT) is patched by the host into the
    # hypercall trap; the guest then overwrites those bytes with hlt and runs
    # them again: the CPU must run the guest's bytes, not a stale translation.
    src = """
    mov $1, %eax
    mov $0x8000, %ebx
patched:
    vmcall
    cmpl $0, 0x4000
    jne again
    movl $1, 0x4000
    movb $0xf4, patched     # hlt over the patched hypercall
    jmp patched
again:
    hlt
"""
    image, sym = assemble(tmp_path, src)
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=5)
        patched = lg.memory.read(sym["patched"], 3)
    assert patched[0] == 0xF4
    assert (result.reason, result.message) == ("dead", unhandled(13, sym["patched"], 0))


@pytest.mark.parametrize("esp,message", [
    (MEM, None),  # the top of RAM: both pushes land in RAM, the guest dies at its hlt
    (4, SWITCHER_KILL),  # the second push wraps to 0xfffffffc: the host range
    (0, SWITCHER_KILL),
    (MEM + 0x1000, "pf"),  # just past RAM, flat: a page fault the guest cannot take
])
def test_stacks_at_the_edge_of_memory(tmp_path, core, esp, message):
    image, sym = assemble(tmp_path, f"mov ${esp:#x}, %esp\npush %eax\nsecond:\npush %eax\nend:\nhlt\n")
    with launcher(core) as lg:
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=5)
    if message is None:
        message = unhandled(13, sym["end"], 0)
    elif message == "pf":
        message = unhandled(14, sym["_start"] + 5, MEM + 0x1000 - 4)  # lguest prints cr2 for a #PF
    assert (result.reason, result.message) == ("dead", message)


# --- 6. host-API misuse: the run lock, teardown, the memory hold, NativeHooks ------------------------------------
def test_second_run_and_teardown_during_a_run(tmp_path, core):
    image, _ = assemble(tmp_path, "1: jmp 1b\n")
    lg = launcher(core)
    lg.__enter__()
    lg.load_flat(image, 0x1000, 0x1000)
    results = []
    runner = threading.Thread(target=lambda: results.append(lg.run()))
    runner.start()
    deadline = time.monotonic() + 5
    while not lg.backend.hooks.running and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="already running"):
        lg.run(timeout=0.1)
    with pytest.raises(RuntimeError, match="already running"):
        lg.launcher.run(timeout=0.1)  # the generic Launcher's own lock
    with pytest.raises(RuntimeError, match="in use"):
        lg.memory.close()  # Unicorn maps it
    t0 = time.monotonic()
    lg.__exit__(None, None, None)  # breaks the run out, waits for it, then tears down
    runner.join(5)
    assert not runner.is_alive() and time.monotonic() - t0 < 1.0
    assert results[0].reason == "break"
    assert lg.memory.closed and lg.backend is None


def test_native_hooks_refuse_misuse(core):
    from lguest.unicorn._uchook import NativeHooks

    class Skipped(NativeHooks):
        def __init__(self) -> None:  # never calls NativeHooks.__init__
            pass

    for bare in (NativeHooks.__new__(NativeHooks), Skipped()):
        for call in (lambda h: h.run(), lambda h: h.install(), lambda h: h.uninstall(),
                     lambda h: h.bind(None, None, None, None, None, None), lambda h: h.set_guest_data(None, 0, 0)):
            with pytest.raises(RuntimeError, match="not initialised"):
                call(bare)
        assert "uninitialised" in repr(bare) and bare.blocks == 0 and not bare.has_native_core
        bare.close()
        bare.close()

    with launcher(core) as lg:
        hooks, cpu, mem = lg.backend.hooks, lg.cpu, lg.memory
        host_idt = lg.backend.host_idt
        api = None
        if core.NAME == "cython":
            api = core.native_api(cpu)
        with pytest.raises(RuntimeError, match="already installed"):
            hooks.install()
        good = (cpu, cpu.regs.array, host_idt, cpu.idt, mem, api)
        bad_args = [
            ((cpu, cpu.regs.array.astype(np.int64), host_idt, cpu.idt, mem, api), TypeError),
            ((cpu, np.zeros(18, np.uint32), host_idt, cpu.idt, mem, api), ValueError),  # not the cpu's
            ((cpu, cpu.regs.array, np.zeros((255, 2), np.uint32), cpu.idt, mem, api), ValueError),
            ((cpu, cpu.regs.array, np.zeros((2, 256), np.uint32).T, cpu.idt, mem, api), ValueError),
            ((cpu, cpu.regs.array, host_idt, list(cpu.idt), mem, api), TypeError),
            ((cpu, cpu.regs.array, host_idt, cpu.idt, mem.address, api), TypeError),  # a raw address
        ]
        for args, exc in bad_args:
            with pytest.raises(exc):
                hooks.bind(*args)
        closed = GuestMemory(MEM)
        closed.close()
        with pytest.raises(TypeError, match="live GuestMemory"):
            hooks.bind(cpu, cpu.regs.array, host_idt, cpu.idt, closed, api)
        if api is not None:
            other = lguest.Host(0x80, lguest.UsedVectors(used=range(32)))
            other_cpu = other.new_guest(GuestMemory(MEM), core=core).new_cpu()
            with pytest.raises(ValueError, match="not this cpu"):
                hooks.bind(cpu, cpu.regs.array, host_idt, cpu.idt, mem, core.native_api(other_cpu))
            with pytest.raises(TypeError):
                hooks.bind(cpu, cpu.regs.array, host_idt, cpu.idt, mem, object())
        hooks.bind(*good)  # rebinding the right things works
        assert hooks.has_native_core == (api is not None)
    # torn down: the hooks dropped every pointer, the memory is unmapped
    with pytest.raises(RuntimeError, match="closed"):
        hooks.run()
    with pytest.raises(RuntimeError, match="closed"):
        hooks.install()
    with pytest.raises(RuntimeError, match="closed"):
        hooks.bind(*good)
    hooks.close()  # idempotent
    assert mem.closed
    with pytest.raises(RuntimeError, match="context manager"):
        lg.run(timeout=0.1)


# --- 9. hypercall storms with extreme arguments ---------------------------------------------------------------
# Each guest calls one hypercall number 400 times, cycling through four
# argument sets (zeros, all ones, host-range addresses, the edge of RAM),
# then powers off.  Whatever the number, the run ends by its deadline with a
# clean timeout or one of the documented kill reasons -- never an exception,
# a hang or a crash.
STORM = INIT + """
    xor %esi, %esi
1:  mov %esi, %edi
    and $3, %edi
    shl $4, %edi
    mov 0x4000, %eax
    mov 0x4010(%edi), %ebx
    mov 0x4014(%edi), %ecx
    mov 0x4018(%edi), %edx
    vmcall
    inc %esi
    cmp $400, %esi
    jne 1b
    mov $2, %eax            # SHUTDOWN("storm done", POWEROFF)
    mov $done, %ebx
    mov $1, %ecx
    vmcall
done: .asciz "storm done"
"""
STORM_ARGS = [(0, 0, 0), (0xFFFFFFFF,) * 3, (SWITCHER, SWITCHER + 0x1000, 0xFFFFF000), (MEM - 1, MEM, 1)]
# Worked out from the hypercall code, one number at a time (the first
# argument set that is fatal decides):
STORM_EXPECTED = {
    0: ("dead", "CRASH: storm done"),  # FLUSH_ASYNC: an empty ring, harmless
    1: ("dead", "already have lguest_data"),
    2: ("dead", "CRASH: "),  # SHUTDOWN(0, 0): the message at address 0 is empty
    3: ("dead", "too many gdt entries -1"),  # LOAD_GDT(0, 0) is fine; then num 0xffffffff, printed %i
    4: ("dead", "unhandled trap 14 at 0x1030 (0x1030)"),  # NEW_PGTABLE(0): RAM page 0 holds no mappings
    5: ("dead", "CRASH: storm done"),  # FLUSH_TLB
    6: ("dead", "Setting idt entry 4294967295"),  # entry 0 zeroed, then num 0xffffffff (%u)
    7: ("dead", "bad stack segment 0"),  # SET_STACK(0, ...): RPL 0
    8: ("dead", "CRASH: storm done"),  # TS
    9: ("dead", "CRASH: storm done"),  # SET_CLOCKEVENT: irq 0 is never enabled by this guest
    10: ("timeout", None),  # HALT: nothing ever wakes it
    11: ("dead", "Bad hypercall 11\n"),
    14: ("dead", SWITCHER_KILL),  # SET_PTE(0xffffffff, 0xffffffff, ...): vaddr in the host range
    15: ("dead", "CRASH: storm done"),  # SET_PMD: a flat guest has no shadow to update
    16: ("dead", "bad read address 0xffffffff len 24"),  # LOAD_TLS(0xffffffff): 3 descriptors
    17: ("dead", "Bad NOTIFY 0xffffffff"),  # NOTIFY(0) prints nothing; then outside RAM
    0x80000000: ("dead", "Bad hypercall -2147483648\n"),
    0xFFFFFFFF: ("dead", "Bad hypercall -1\n"),
}


@pytest.fixture(scope="module")
def storm_image(tmp_path_factory):
    return assemble(tmp_path_factory.mktemp("storm"), STORM)


@pytest.mark.parametrize("num", sorted(STORM_EXPECTED))
def test_hypercall_storms_with_extreme_arguments(storm_image, core, num):
    image, _ = storm_image
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write_u32(0x4000, num)
        for i, args in enumerate(STORM_ARGS):
            lg.memory.write(0x4010 + 16 * i, struct.pack("<III", *args))
        t0 = time.monotonic()
        result = lg.run(timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 0.5
        stats = lg.stats
    assert (result.reason, result.message) == STORM_EXPECTED[num]
    if (result.message or "").startswith("Bad hypercall"):  # one key for every unknown number, not one per number
        assert stats["hypercall_other"] == 1 and f"hypercall_{num}" not in stats


# --- 10. timers at the extremes ---------------------------------------------------------------------------------
# SET_CLOCKEVENT(delta) then HALT, forever.  A timer that fires raises irq 0
# and wakes the halted guest (lguest re-enables its interrupts to do so), but
# the guest has no IDT entry for it, so the irq stays pending and the guest
# loops between re-arming and halting.  Whatever the delta (0 cancels, 1 ns,
# the largest), the run ends at its deadline: the host neither spins past it
# nor sleeps through it.
TIMER = INIT + """
1:  mov $9, %eax            # SET_CLOCKEVENT(delta)
    mov 0x4000, %ebx
    vmcall
    mov $10, %eax           # HALT
    vmcall
    jmp 1b
"""


@pytest.mark.parametrize("clock", ["virtual", "wall"])
@pytest.mark.parametrize("delta", [0, 1, 2, 1000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_timers_at_the_extremes_end_by_the_deadline(tmp_path, core, clock, delta):
    image, _ = assemble(tmp_path, TIMER)
    with launcher(core, clock=clock) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write_u32(0x4000, delta)
        t0 = time.monotonic()
        result = lg.run(timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 0.5
    assert (result.reason, result.message) == ("timeout", None)


# --- 11. the guest's page tables over the host range ------------------------------------------------------------
# A paged guest points its own page directory's last entry (the host range)
# at a page table mapping guest RAM, and asks for it with NEW_PGTABLE: the
# CPU's directory keeps the host's entry, so 0xFFC00000 still is the host
# range and touching it kills.
PGD_OVER_HOST = INIT + """
    mov 0x4000, %edi        # the guest's page directory (physical)
    mov 0x4004, %eax        # the entry to put in slot 1023
    mov %eax, 0xc0000ffc(%edi)
    mov $4, %eax            # NEW_PGTABLE(pgdir)
    mov %edi, %ebx
    vmcall
    mov $5, %eax            # FLUSH_TLB
    mov $1, %ebx
    vmcall
    mov 0xffc00000, %eax
    hlt
"""


def test_guest_page_directory_entry_over_the_host_range_is_ignored(tmp_path, core):
    image, _ = assemble(tmp_path, PGD_OVER_HOST, base=0xC0001000)
    with launcher(core, page_offset=PAGED) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0xC0001000)
        pgd = lg.guest.pgdir
        first_table = lg.memory.read_u32(pgd) & ~0xFFF
        lg.memory.write(0x4000, struct.pack("<II", pgd, first_table | 0x67))
        result = lg.run(timeout=5)
    assert (result.reason, result.message) == ("dead", SWITCHER_KILL)


# --- 12. SET_PTE: which new ptes kill (do_set_pte / check_gpte) --------------------------------------------------
# A paged guest (all RAM mapped at 0 and at 0xC0000000) sends one SET_PTE
# and powers off.  The kernel looks at the new pte only where it holds a
# shadow directory entry for the address (every shadow for kernel
# addresses, pgdir's own for user ones), and only at a pte the guest marked
# ACCESSED or DIRTY -- present or not; such a pte with PSE or a frame past
# RAM (1 MiB: pfn 256) kills.  An address in the host range kills first.
SET_PTE_GUEST = INIT + """
    mov $14, %eax           # SET_PTE(pgdir, vaddr, pte)
    mov 0x4000, %ebx
    mov 0x4004, %ecx
    mov 0x4008, %edx
    vmcall
    mov $2, %eax            # SHUTDOWN("set", POWEROFF): a guest-physical address
    mov $done - 0xC0000000, %ebx
    mov $1, %ecx
    vmcall
done: .asciz "set"
"""
KERNEL_VA = 0xC0005000
USER_VA = 0x5000  # RAM is mapped at 0 too: directory entry 0 is present
OFF_MAP_VA = 0x80000000  # no directory entry: no shadow to check against
BAD_PFN = 256 << 12


@pytest.mark.parametrize("pgdir,vaddr,pte,expected", [
    ("cur", KERNEL_VA, 0x1000 | 0x67, "CRASH: set"),  # a good pte
    ("cur", KERNEL_VA, BAD_PFN | 0x21, "bad page table entry"),  # present+accessed, past RAM
    ("cur", KERNEL_VA, BAD_PFN | 0x40, "bad page table entry"),  # dirty, not present: still checked
    ("cur", KERNEL_VA, 0x1000 | 0xA0, "bad page table entry"),  # PSE + accessed
    ("cur", KERNEL_VA, 0xFFFFFFFF, "bad page table entry"),
    ("cur", KERNEL_VA, BAD_PFN | 0x01, "CRASH: set"),  # present, neither A nor D: just dropped
    ("cur", KERNEL_VA, 0x1000 | 0x81, "CRASH: set"),  # PSE without A/D: dropped too
    (0x9000, KERNEL_VA, BAD_PFN | 0x61, "bad page table entry"),  # kernel address: every shadow
    (0x9000, USER_VA, BAD_PFN | 0x61, "CRASH: set"),  # user address of a directory without a shadow
    ("cur", USER_VA, BAD_PFN | 0x61, "bad page table entry"),
    ("cur", OFF_MAP_VA, BAD_PFN | 0x61, "CRASH: set"),  # no shadow directory entry there
    ("cur", SWITCHER, 0x1000 | 0x67, SWITCHER_KILL),
    (0x9000, 0xFFFFF000, 0, SWITCHER_KILL),
], ids=lambda v: hex(v) if isinstance(v, int) else str(v)[:14])
def test_set_pte_checks_what_the_kernel_checked(tmp_path_factory, core, pgdir, vaddr, pte, expected):
    image, _ = assemble(tmp_path_factory.mktemp("setpte"), SET_PTE_GUEST, base=0xC0001000)
    with launcher(core, page_offset=PAGED) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0xC0001000)
        current = lg.guest.pgdir
        lg.memory.write(0x4000, struct.pack("<III", current if pgdir == "cur" else pgdir, vaddr, pte))
        result = lg.run(timeout=5)
    assert (result.reason, result.message) == ("dead", expected)
