"""The store fast path (NativeHooks.store_fast_path, uh_fast_* in
lguest/unicorn/_uchook.h): guest stores to pages without translated code
take Unicorn's inline path, and self-modifying code stays exact.

Every guest is real i386 code assembled at test time and run twice, with
the switch on and off: the registers, the stop and its message must be the
same, and equal to what the x86 rules give (worked out by hand below).
Each one first runs a warm-up loop of several thousand blocks, so that the
hook's clearing passes (every 4096 blocks, and at each entry) have run over
the TLB entries of the code about to be modified: a fast path that cleared
TLB_NOTDIRTY on a code page, or on one alias of it, would leave a stale
translation running and the result would be the old one (checked by
mutation: with uh_fast_mark's tlb_reset_dirty or the bitmap test in
uh_fast_clear removed, these tests fail).
"""

from __future__ import annotations

import shutil
import struct

import pytest

pytest.importorskip("unicorn")

from test_hostile_guests import INIT, assemble, launcher, prepare_ld, unhandled  # noqa: E402

from lguest.unicorn import engine  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

PAGED = 0xC0000000
ALIAS = 0x300000  # beyond the 1 MiB of RAM: free in the paged guest's initial page table

# 6000 calls of f (3 blocks each): several clearing passes over f's page.
WARM = """
    mov $6000, %ecx
1:  call f
    dec %ecx
    jnz 1b
"""
# f returns 1; every scenario patches it to return 2 and calls it again (ebx).
F = """
f:  mov $1, %eax
    ret
"""
AFTER = """
    call f
    mov %eax, %ebx
    hlt
"""

SCENARIOS: dict[str, tuple[str, int, bool]] = {
    # f on the page of the code that stores into it, run thousands of times before
    "same_page": ("mov $0x7800, %esp\n" + WARM + "movl $2, f+1\n" + AFTER + F, 2, False),
    # f alone on its page
    "other_page": ("mov $0x7800, %esp\n" + WARM + "movl $2, f+1\n" + AFTER + ".p2align 12\n" + F, 2, False),
    # through a second virtual alias of f's page (the PTE at ALIAS, set by the test)
    # (the alias is stored to first, while the page holds no code, and a
    # pass takes its flag: f's first run must put it back)
    "alias": ("mov $0x7800, %esp\n" + f"movl $0, {ALIAS + 0xFF0:#x}\n" + "mov $6000, %ecx\n2: dec %ecx\njnz 2b\n"
              + WARM + f"movl $2, {ALIAS + 1:#x}\n"
              + AFTER + ".p2align 12\n" + F, 2, True),
    # rep movsb of f's new bytes from 4 bytes before f's page to inside it
    "rep_movsb_across_pages": ("""
    mov $0x7800, %esp
""" + WARM + """
    mov $newf, %esi
    mov $f - 4, %edi
    mov $10, %ecx
    cld
    rep movsb
""" + AFTER + """
newf:
    .byte 0x90, 0x90, 0x90, 0x90, 0xb8, 2, 0, 0, 0, 0xc3
    .p2align 12, 0x90       # f at a page start, nops before it
""" + F, 2, False),
    # the store into the block that makes it (QEMU's "current TB modified")
    "current_block": ("""
    xor %ebx, %ebx
    mov $10000, %ecx
1:  mov $0x90, %al
    cmp $5000, %ecx
    jae 2f
    mov $0x43, %al          # inc %ebx over the nop, from the 5000th turn
2:  mov %ecx, 0x30000        # a data page: its stores take the fast path
    movb %al, 3f
3:  nop
    dec %ecx
    jnz 1b
    hlt
""", 4999, False),
    # the store into the next block, already run thousands of times
    "next_block": ("""
    xor %ebx, %ebx
    mov $10000, %ecx
1:  mov $0x90, %al
    cmp $5000, %ecx
    jae 2f
    mov $0x43, %al
2:  mov %ecx, 0x30000
    movb %al, 3f
    jmp 3f
3:  nop
    dec %ecx
    jnz 1b
    hlt
""", 4999, False),
    # a page used only as data (stores on the fast path), then code written
    # there, run, then rewritten: the first block run from it protects it
    "data_then_code": ("""
    mov $0x7800, %esp
    mov $6000, %ecx
1:  mov %ecx, 0x20000(,%ecx,4)   # 24 KiB of data stores, six pages from 0x20000
    dec %ecx
    jnz 1b
    movl $0x000007b8, 0x21000      # mov $7, %eax; ret
    movl $0x9090c300, 0x21004
    mov $6000, %ecx
2:  mov $0x21000, %eax
    call *%eax
    dec %ecx
    jnz 2b
    mov %eax, %edx
    movb $8, 0x21001
    mov $0x21000, %eax
    call *%eax
    mov %eax, %ebx
    hlt
""", 8, False),
    # f's TLB entry evicted (256 pages touched through aliases), refilled by
    # running f again, then the store
    "evicted": ("mov $0x7800, %esp\n" + WARM + f"""
    mov ${ALIAS:#x}, %esi
1:  mov (%esi), %eax
    add $0x1000, %esi
    cmp ${ALIAS + 0x100000:#x}, %esi
    jne 1b
""" + WARM + "movl $2, f+1\n" + AFTER + ".p2align 12\n" + F, 2, True),
    # a TLB flush (hypercall) between the warm-up and the store: fresh entries
    "after_tlb_flush": (INIT + "mov $0x7800, %esp\n" + WARM + """
    mov $5, %eax            # LHCALL_FLUSH_TLB
    vmcall
""" + WARM + "movl $2, f+1\n" + AFTER + ".p2align 12\n" + F, 2, False),
}


def run_scenario(tmp_path, core, monkeypatch, name: str, fast: bool):
    source, _, paged = SCENARIOS[name]
    monkeypatch.setenv("LGUEST_STORE_FAST_PATH", "1" if fast else "0")
    tmp_path.mkdir()
    image, sym = assemble(tmp_path, source)
    with launcher(core, page_offset=PAGED if paged else 0) as lg:
        if paged:
            table = lg.memory.read_u32(lg.guest.pgdir) & ~0xFFF
            target = sym["f"] & ~0xFFF if name == "alias" else 0x40000
            for i in range(256 if name == "evicted" else 1):
                lg.memory.write_u32(table + 4 * ((ALIAS >> 12) + i), target | 0x67)
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=20)
        hooks = lg.backend.hooks
        state = (result.reason, result.message, lg.cpu.regs.eax, lg.cpu.regs.ebx, lg.cpu.regs.edx)
        return state, sym, hooks.store_fast_path, hooks.fast_path_stats()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_self_modifying_code_is_exact_with_the_fast_path(tmp_path, core, monkeypatch, name):
    on, sym, was_on, stats = run_scenario(tmp_path / "on", core, monkeypatch, name, True)
    off, _, was_off, _ = run_scenario(tmp_path / "off", core, monkeypatch, name, False)
    assert (was_on, was_off) == (True, False)
    assert stats["cleared"] > 0 and not stats["gave_up"], stats   # the fast path did take entries
    assert on[0] == "dead" and on[1].startswith("unhandled trap 13 at "), on   # the final hlt
    assert on[3] == SCENARIOS[name][1], on
    assert on == off


def test_the_tlb_probe_passes_on_this_unicorn():
    assert engine.tlb_probe() is None


def test_a_wrong_tlb_offset_disables_the_path_without_crashing(monkeypatch):
    """engine.tlb_internals refuses a TLB it cannot verify: the guest runs
    without the fast path (never crashes, never refuses to run)."""
    monkeypatch.setattr(engine, "_TLB_F_BEFORE_ENV", 48)
    monkeypatch.setattr(engine, "_probe_result", [])
    assert engine.tlb_probe() is not None
    with launcher(None) as lg:
        image = bytes.fromhex("a300400000f4")  # mov %eax, 0x4000; hlt
        lg.load_flat(image, 0x1000, 0x1000)
        result = lg.run(timeout=5)
        assert not lg.backend.hooks.store_fast_path
        assert not lg.backend.hooks.store_fast_path_available
    assert result.message == unhandled(13, 0x1005, 0)
    monkeypatch.setattr(engine, "_probe_result", [])


def test_switching_off_reprotects_every_page(tmp_path, core, monkeypatch):
    """store_fast_path = False between runs puts TLB_NOTDIRTY back on every
    guest entry (tlb_reset_dirty over all of guest memory)."""
    monkeypatch.setenv("LGUEST_STORE_FAST_PATH", "1")
    image, _ = assemble(tmp_path, "mov $0x7800, %esp\n" + WARM + "hlt\n" + F)
    with launcher(core) as lg:
        lg.load_flat(image, 0x1000, 0x1000)
        lg.run(timeout=10)
        hooks = lg.backend.hooks
        assert hooks.fast_path_stats()["cleared"] > 0
        env = engine.engine_internals(lg.backend.uc)["env"]
        mem = lg.memory.address

        def cleared() -> int:
            n = 0
            for mask, table in engine._tlb_pairs(env):
                for i in range((mask >> 6) + 1):
                    _, w, _, _, addend = struct.unpack("<5Q", engine._peek(table + 64 * i, 40))
                    host = ((w & ~0xFFF) + addend) % 2**64
                    if w != 2**64 - 1 and not w & 0xFFF and mem <= host < mem + lg.memory.size:
                        n += 1
            return n

        assert cleared() > 0
        hooks.store_fast_path = False
        assert cleared() == 0
        assert not hooks.store_fast_path and hooks.store_fast_path_available


@pytest.mark.parametrize("pure", ["0", "1"], ids=["cython", "python"])
@pytest.mark.parametrize("kind", ["flat", "paged"])
def test_the_guest_story_under_the_virtual_clock_is_the_same(tmp_path, pure, kind):
    """The example guest (syscalls from ring 3, faults, timer ticks it waits
    for) under the virtual clock: console, counters and the whole timeline
    -- every event, its virtual time and arguments -- identical with the
    fast path on and off.  The fast path changes no block: the clock, and
    so every interrupt's place, must not move."""
    import json
    import os
    import subprocess
    import sys

    from lgtest import build_example

    paged = 0xC0000000
    elf = build_example(str(tmp_path), kind, paged if kind == "paged" else 0, TICK_NS=20000, TICKS=20)
    runs = []
    for fast in ("1", "0"):
        out = tmp_path / f"t{fast}.json"
        args = ["--page-offset", hex(paged)] if kind == "paged" else []
        run = subprocess.run([sys.executable, "-m", "lguest", "run", "--memory", "4M", *args, "--clock", "virtual",
                              "--stats", "--trace-out", str(out), elf], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, LGUEST_PURE_PYTHON=pure, LGUEST_STORE_FAST_PATH=fast))
        assert run.returncode == 0, run.stderr
        data = json.loads(out.read_text())
        evs = [(e["cat"], e["name"], e["ts"], {k: v for k, v in e.get("args", {}).items() if k != "halted_ns"})
               for e in data["traceEvents"] if e["ph"] != "M"]
        stats = [line for line in run.stderr.splitlines() if not any(w in line for w in ("time", "/s"))]
        runs.append((run.stdout, stats, evs))
    assert len(runs[0][2]) > 1000
    assert runs[0] == runs[1]


@pytest.mark.parametrize("fast", ["1", "0"])
def test_code_in_a_segment_with_a_base(tmp_path, core, monkeypatch, fast):
    """A guest-made code segment based at 0x402000 runs eip 0xffc00100,
    linear 0x2100 (0x1_00002100 as the translator keys it): the hook finds
    a block's page through that key, so it neither gives up nor misses the
    page (it gave up when it added the segment's base to the hook's
    address, which already holds it).  The code there patches its own next
    block after a warm-up."""
    from test_hostile_guests import _gdt_table

    from lguest.unicorn import segment_descriptor

    monkeypatch.setenv("LGUEST_STORE_FAST_PATH", fast)
    image, _ = assemble(tmp_path, INIT + """
    mov $3, %eax            # LOAD_GDT(0x5000, 24)
    mov $0x5000, %ebx
    mov $24, %ecx
    vmcall
    ljmp $0xa1, $0xffc00100
""")
    # at linear 0x2100 (eip 0xffc00100): the next_block loop, then hlt
    (tmp_path / "b").mkdir()
    body, _ = assemble(tmp_path / "b", """
    xor %ebx, %ebx
    mov $10000, %ecx
1:  mov $0x90, %al
    cmp $5000, %ecx
    jae 2f
    mov $0x43, %al
2:  mov %ecx, %ds:0x30000
    movb %al, %ds:0x2100 + (3f - _start)
    jmp 3f
3:  nop
    dec %ecx
    jnz 1b
    hlt
""", base=0xFFC00100)
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write(0x2100, body)
        lg.memory.write(0x5000, _gdt_table({20: segment_descriptor(0x402000, 0xFFFFF, 0xBB)}))
        lg.run(timeout=10)
        stats = lg.backend.hooks.fast_path_stats()
        ebx = lg.cpu.regs.ebx
    assert ebx == 4999
    if fast == "1":
        assert not stats["gave_up"] and stats["pages"] >= 2 and stats["cleared"] > 0, stats
