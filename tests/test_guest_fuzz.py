"""Hostile guest code on the Unicorn backend: fuzz/fuzz_guest.py, short.

Every program runs in a worker subprocess (fuzz_guest.WorkerProc), so a
hang or a crash of the host fails the test instead of wedging or killing
pytest.  The invariants (see fuzz/fuzz_guest.py): run() returns by its
deadline + 0.5 s, no signal, no escaped exception, RSS bounded, the host
memory the emulated CPU can reach unchanged, a reference guest in the same
process unaffected, every kill reason documented.

Each finding of the fuzzer (F1..F5 in fuzz/README.md) has a reproducer
here, and all five are fixed.  F1 was a crash inside Unicorn 2.1.4's
translator (TCG temporaries leaked past their pool by one long block of
guest code); the backend now caps every translation block and keeps the
translation cache from filling (uh_on_block in lguest/unicorn/_uchook.pyx), and
the bound it relies on is measured below with fuzz/tcg_temps.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("unicorn")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import fuzz_guest as fg  # noqa: E402

HAVE_BINUTILS = bool(shutil.which("as") and shutil.which("ld"))

@pytest.fixture(scope="module")
def worker():
    """One worker subprocess (no reference guest) shared by the reproducers;
    WorkerProc restarts it after a crash or a hang."""
    wp = fg.WorkerProc(0, ["--no-reference"])
    yield wp
    wp.close()


def program(items: list[bytes], core: str, *, ring: int = 1, paged: bool = False, timeout: float = 0.2,
            data: Sequence[tuple[int, bytes]] = (), memory: int | None = None) -> dict:
    spec = {"mode": "structured", "paged": paged, "ring": ring, "timeout": timeout, "core": core, "break_at": None,
            "prologue": "init", "items": [i.hex() for i in items], "data": [[pa, b.hex()] for pa, b in data]}
    if memory is not None:
        spec["memory"] = memory
    return spec


def kinds(result: dict) -> list[str]:
    return [kind for kind, _ in result.get("findings", [])]


# --- the harness itself ---------------------------------------------------------------------------
def test_every_layout_runs_the_empty_program_to_its_shutdown(worker, core):
    for paged in (False, True):
        for ring in (1, 3):
            res = worker.run(program([], core.NAME, ring=ring, paged=paged), 30)
            assert (res["reason"], res["message"], res["findings"]) == ("dead", "CRASH: fuzz: done\n", []), \
                (paged, ring)


def test_faults_resume_at_the_next_item(worker, core):
    # ud2, a user-forbidden int, a #PF beyond RAM, hlt: each fault lands in the
    # program's handler, which resumes at the next item; then the shutdown.
    items = [b"\x0f\x0b", b"\xcd\x81", b"\xa1" + fg.u32(0x800000), b"\xf4"]
    for ring in (1, 3):
        res = worker.run(program(items, core.NAME, ring=ring), 30)
        assert (res["reason"], res["message"], res["findings"]) == ("dead", "CRASH: fuzz: done\n", [])


def test_oracles_fire(worker):
    """The parent sees a hang and a crash; the host-memory check sees scribbles on the
    Switcher's pages (mapped or not) and an extra host page mapped into Unicorn."""
    spec = program([], "cython")
    t0 = time.monotonic()
    res = worker.run({**spec, "selftest": "hang"}, 3)
    assert kinds(res) == ["hang"] and time.monotonic() - t0 < 30
    res = worker.run({**spec, "selftest": "crash"}, 30)
    assert kinds(res) == ["crash"] and "signal 11" in res["findings"][0][1]
    res = worker.run({**spec, "selftest": "tamper"}, 30)
    details = " | ".join(d for _, d in res["findings"])
    assert set(kinds(res)) == {"switcher"} and len(res["findings"]) == 4, details
    assert "page 0 (stubs, TSS) changed at ['0x100']" in details and "GDT entry 11" in details
    assert "page table entries [2] changed" in details and "extra [('0xffc05000', '0xffc05fff', 1)]" in details
    # ... and the worker still runs programs after all that
    assert worker.run(spec, 30)["findings"] == []


def test_killed_workers_leave_no_temp_dirs(tmp_path, monkeypatch):
    """A worker the parent kills (a crash, a hang) never reaches its cleanup:
    it must have nothing in the temp directory to leave behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))   # the workers' tempfile.gettempdir()
    wp = fg.WorkerProc(0, [] if HAVE_BINUTILS else ["--no-reference"])
    try:
        spec = program([], "cython")
        assert kinds(wp.run({**spec, "selftest": "crash"}, 30)) == ["crash"]
        assert kinds(wp.run({**spec, "selftest": "hang"}, 3)) == ["hang"]
        assert wp.run(spec, 30)["findings"] == []
        assert os.listdir(tmp) == []
    finally:
        wp.close()
    assert os.listdir(tmp) == []


def test_kill_reasons_are_classified():
    assert fg.documented("bad write address 0xffffeffc len 4")
    assert fg.documented("Bad hypercall 99\n")
    assert fg.documented("lguest: trap 13 (0x68) entering the guest at 0x101e")
    assert fg.documented("CRASH: anything\nat all")
    assert not fg.documented("unicorn: Invalid instruction (UC_ERR_INSN_INVALID) at 0x1000")
    assert fg.normalise_reason("bad read address 0x10 len 4") == "bad read address 0x# len N"


def test_generation_is_deterministic_and_assembles():
    import random

    a = [fg.generate(random.Random(7), "both", 0.2) for _ in range(1)]
    b = [fg.generate(random.Random(7), "both", 0.2) for _ in range(1)]
    assert a == b
    rng = random.Random(11)
    for _ in range(300):
        spec = fg.generate(rng, "both", 0.2)
        image, entry = fg.assemble(spec)
        assert entry in (fg.PA_PROLOGUE, fg.PAGED_OFFSET + fg.PA_PROLOGUE)
        assert len(image) <= fg.MEM - 8192  # never over the launcher's page tables


# --- the short campaign ----------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_BINUTILS, reason="binutils (as, ld) build the reference guest")
def test_short_campaign(core, tmp_path):
    """A fixed seed, 120 programs per core, every invariant, reference guest on."""
    summary = fg.campaign(seconds=None, programs=120, workers=1, seed=20261129, mode="both", timeout=0.2,
                          save=False, quiet=True, core=core.NAME)
    assert summary["errors"] == []
    assert summary["programs"] == 120
    assert summary["reference_runs"] > 0
    assert summary["findings"] == {}, "\n".join(summary["findings"])


# --- reproducers of the findings -------------------------------------------------------------------------
@pytest.mark.parametrize("insn", ["d9ee", "d40a", "660f3a0fc001", "dcc1"])  # fldz, aam, palignr, fadd %st,%st(1)
def test_long_block_of_fpu_instructions_does_not_crash_the_host(worker, core, insn):
    # F1: one block of 520 copies of `dc c1` (232 were enough) leaked TCG
    # temporaries past TCGContext.temps[512] and the host died of SIGSEGV.
    # 3000 copies also cross pages; every block holds at most TB_MAX_INSNS.
    from lguest.unicorn import TB_MAX_INSNS

    for copies in (520, 3000):
        res = worker.run(program([bytes.fromhex(insn) * copies], core.NAME), 30)
        assert "crash" not in kinds(res), res["findings"]
        assert res["reason"] == "dead", res
        assert res["blocks"] >= copies // TB_MAX_INSNS, res


def test_a_long_block_reached_by_indirect_jumps_does_not_crash_the_host(worker, core):
    # Indirect jumps chain through twins: blocks translated again without
    # the cap (uh_twin in _uchook.h), made only when the capped translation
    # ended before the cap.  520 copies of `dc c1` called through `call
    # *%ecx`, three times: the capped pieces of the run get no twin, the
    # short tail (and the caller's code after the call) do.
    block = b"\xdc\xc1" * 520 + b"\xc3"
    loop = fg.mov_ri("ecx", 0x100000) + b"\xff\xd1" + b"\x4e"  # call *%ecx; dec %esi
    body = fg.mov_ri("esi", 3) + loop + b"\x75" + bytes([(-(len(loop) + 2)) & 0xFF])
    res = worker.run(program([body], core.NAME, timeout=20.0, memory=4 << 20, data=[(0x100000, block)]), 60)
    assert "crash" not in kinds(res), res["findings"]
    assert (res["reason"], res["message"]) == ("dead", "CRASH: fuzz: done\n"), res


def test_self_modifying_code_before_a_long_block_does_not_crash_the_host(worker, core):
    # A store into the block being run makes Unicorn translate the next
    # block with one instruction (cflags_next_tb = 1): a short block whose
    # uncapped twin would run on through the 600 copies of `dc c1` after it.
    # The twin is made only if the *capped* translation at that pc ended
    # before the cap -- here it does not, so there is none.
    code = b"\xc6\x05" + (0x100010).to_bytes(4, "little") + b"\x90"   # movb $0x90, 0x100010
    code += b"\x90" * (0x10 - len(code)) + b"\x40"                       # ... inc %eax, made a nop
    code += b"\xdc\xc1" * 600 + b"\x0f\x0b"                              # then ud2: resumes at the shutdown
    res = worker.run(program([fg.jmp_abs(0x100000)], core.NAME, timeout=20.0, memory=4 << 20,
                             data=[(0x100000, code)]), 60)
    assert "crash" not in kinds(res), res["findings"]
    assert (res["reason"], res["message"]) == ("dead", "CRASH: fuzz: done\n"), res


def test_the_cap_holds_after_the_translation_cache_fills(worker, core):
    # The cap rides on cflags_next_tb, which a full code buffer bypasses (the
    # translator flushes and makes the next block uncapped).  ~1.2 MiB of
    # `dc c1` translates to ~45 MiB of host code, so an 8 MiB cache would
    # fill five times over: the block hook flushes it first, every time,
    # and the guest runs through all of it.
    # It ends in ud2, whose fault resumes the program at its shutdown.
    body = b"\xdc\xc1" * 600_000 + b"\x0f\x0b"
    res = worker.run(program([fg.jmp_abs(0x100000)], core.NAME, timeout=60.0, memory=4 << 20,
                             data=[(0x100000, body)]), 120)
    assert "crash" not in kinds(res), res["findings"]
    assert (res["reason"], res["message"]) == ("dead", "CRASH: fuzz: done\n"), res
    assert res["flushes"] >= 3, res


def test_the_measured_leak_fits_the_cap():
    # The bound TB_MAX_INSNS rests on: every encoding fuzz/tcg_temps.py
    # generates (single instructions and random mixes) leaks so few TCG
    # temporaries that a full block stays well inside the pool.
    import tcg_temps

    from lguest.unicorn import TB_MAX_INSNS, TCG_MAX_TEMPS

    leaks, base = tcg_temps.measure(tcg_temps.candidates())
    assert len(leaks) > 40_000
    worst = max(leaks.values())
    assert base + worst * TB_MAX_INSNS <= TCG_MAX_TEMPS * 2 // 3, (base, worst)
    top, excess = tcg_temps.mixes(leaks, 200)
    assert top <= TCG_MAX_TEMPS // 2 and excess <= 16, (top, excess)


def test_notify_flood_does_not_grow_host_memory(worker, core):
    # F2, fixed: the early console keeps only the last console_limit bytes.
    call = fg.hypercall(17, fg.PA_SCRATCH + 0x8000, 0, 0)
    loop = fg.mov_ri("esi", 1_000_000) + call + b"\x4e\x75" + bytes([(-(len(call) + 3)) & 0xFF])
    res = worker.run(program([loop], core.NAME, data=[(fg.PA_SCRATCH + 0x8000, b"A" * 0x7FFF)]), 30)
    assert res["reason"] in ("timeout", "dead")
    assert "console" not in kinds(res), res["findings"]


def test_running_through_ram_does_not_grow_host_memory(worker, core):
    # Jump into 0.8 MiB of zero bytes (add %al,(%eax)): every block is new
    # code, ~1,800 blocks of 512 instructions, until the guest runs off its
    # RAM and dies.  Unicorn's default 1 GiB translation cache kept ~54 KiB of
    # host code per block: +96 MiB for this one guest.  TCG_BUFFER_SIZE caps
    # it (QEMU flushes the cache when it is full), so RSS stays under the
    # worker's 32 MiB per-guest limit however much fresh code runs.
    from lguest.unicorn import TCG_BUFFER_SIZE, UnicornLauncher

    with UnicornLauncher(memory=1 << 20) as lg:
        assert lg.uc.ctl_get_tcg_buffer_size() == TCG_BUFFER_SIZE <= 16 << 20
    res = worker.run(program([fg.jmp_abs(fg.PA_BODY + 0x100)], core.NAME, timeout=5.0), 60)
    assert res["reason"] == "dead" and res["blocks"] > 1500, res  # it did run through all of RAM
    assert "rss-one-guest" not in kinds(res), res["findings"]


def test_fresh_code_stops_soon_after_the_deadline(worker):
    # 7 MiB of mulps (0f 59 05 <abs32>): every block is freshly translated,
    # ~0.2-0.3 ms each here (~1 ms under load).  The deadline is 10 ms away,
    # so a guest stopped within a generous 0.5 s has run a few hundred blocks
    # at most.  The block hook used to look at the clock only when the block
    # count was a multiple of 1024, so exactly 1024 ran (0.3 s idle, up to
    # ~0.95 s seen under load: the fuzzer's "late" finding); it now looks
    # every 64 blocks (128 ran here).  Counting blocks keeps the test
    # independent of the machine's speed.
    mulps = bytes.fromhex("0f590500000300")
    fill = mulps * ((7 << 20) // len(mulps))
    res = worker.run(program([fg.jmp_abs(fg.PA_SCRATCH + 0x10000)], "cython", memory=8 << 20, timeout=0.01,
                             data=[(fg.PA_SCRATCH + 0x10000, fill)]), 60)
    assert res["reason"] == "timeout"
    assert "late" not in kinds(res), res["findings"]
    assert res["blocks"] < 256, res["blocks"]  # those before the deadline + at most 64 more


def iret_to_vm86(cs: int, eip: int) -> bytes:
    """A 32-bit iret frame for a virtual-8086 return (eip, cs, eflags with VM,
    esp, ss, es, ds, fs, gs; pushed in reverse), then the iret."""
    frame = [eip, cs, 0x20202, 0x1000, 0x2000, 0, 0, 0, 0]
    return b"".join(b"\x68" + fg.u32(v) for v in reversed(frame)) + b"\xcf"


@pytest.mark.parametrize("ring", [1, 3], ids=["ring1", "ring3"])
@pytest.mark.parametrize("cs", [0x2000, 0x1FF3], ids=["cs0x2000", "cs0x1ff3"])
def test_iret_into_virtual_8086_mode_kills_the_guest(worker, core, ring, cs):
    # The SDM returns to virtual-8086 mode only "IF EFLAGS.VM = 1 (in the
    # popped image) AND CPL = 0"; at CPL 1 or 3 a real CPU makes it a
    # protected-mode return to selector cs.  Unicorn 2.1.4 skips the CPL
    # test and runs real-mode code at linear cs * 16 + eip (here `jmp .`).
    # The backend cannot undo an iret it did not see, so any stop in vm86
    # mode kills the guest with its own reason (F5; both selectors, whatever
    # their RPL bits) instead of letting it run on or tripping the CPL-0
    # backstop.
    at = fg.PA_SCRATCH
    res = worker.run(program([iret_to_vm86(cs, at - cs * 16)], core.NAME, ring=ring, data=[(at, b"\xeb\xfe")]), 30)
    assert res["reason"] == "dead" and res["findings"] == [], res
    assert re.fullmatch(r"lguest: guest in virtual-8086 mode at 0x[0-9a-f]+", res["message"]), res["message"]
