"""End-to-end: the example guest kernel (examples/guest/guest.S) on Unicorn.

The guest is assembled and linked with binutils (as --32, ld -m elf_i386)
into a temporary directory.  Expected console text, counters and kill
messages are worked out from the guest's source and ABI.md, not from the
implementation.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as X  # noqa: E402

import lguest  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402

GUEST_DIR = Path(__file__).resolve().parent.parent / "examples" / "guest"
MEM = 4 << 20
PAGED = 0xC0000000

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")


def build(outdir: Path, name: str, page_offset: int = 0, **defsyms: int) -> Path:
    """Assemble and link examples/guest/guest.S with --defsym NAME=VALUE."""
    obj = outdir / f"{name}.o"
    elf = outdir / f"{name}.elf"
    syms = dict(defsyms, PAGE_OFFSET=page_offset)
    args = [f"--defsym={k}={v:#x}" for k, v in syms.items()]
    subprocess.run(["as", "--32", *args, "-o", str(obj), str(GUEST_DIR / "guest.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", f"--defsym=PAGE_OFFSET={page_offset:#x}", "-T",
                    str(GUEST_DIR / "guest.ld"), "-o", str(elf), str(obj)], check=True, capture_output=True)
    return elf


def symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(elf)], check=True, capture_output=True, text=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    d = tmp_path_factory.mktemp("guest")
    return {
        "flat": build(d, "flat"),
        "paged": build(d, "paged", PAGED),
        "vec40": build(d, "vec40", SYSCALL_VEC=0x40),
        "small": build(d, "small", NSYSCALLS=20, TICK_NS=20000),
        "small_paged": build(d, "small_paged", PAGED, NSYSCALLS=20, TICK_NS=20000),
        "irq1": build(d, "irq1", WAIT_IRQ1=1),
        "bad1": build(d, "bad1", BAD=1),
        "bad2": build(d, "bad2", BAD=2),
        "bad3": build(d, "bad3", BAD=3),
        "bad2_paged": build(d, "bad2_paged", PAGED, BAD=2),
    }


def private_vectors():
    return lguest.UsedVectors(used=range(32))


def launcher(**kw):
    kw.setdefault("memory", MEM)
    kw.setdefault("used_vectors", private_vectors())
    return UnicornLauncher(**kw)


def expected_console(nsyscalls=1000, paged=False, pf_addr=0x10000000, ud_eip=None, extra=""):
    return (
        "lguest example guest: booted\n"
        "hello from user mode\n"
        "user #GP, eax/err=0x40a\n"  # int $0x81 at a DPL-0 gate: 0x81*8+2
        "user #GP, eax/err=0x0\n"  # cli at CPL 3, IOPL 0
        f"user #UD at {ud_eip:#x}\n"
        f"user #PF at {pf_addr:#x}\n"
        f"{extra}"
        "user mode done\n"
        f"system calls: {nsyscalls + 3}\n"  # hello, the loop, done, exit
        "clock ticks: 3\n"
        "powering off\n"
    )


# --- the example guest ----------------------------------------------------------------------------
def test_flat_guest_runs_to_power_off(guests):
    elf = guests["flat"]
    sym = symbols(elf)
    chunks = []
    with launcher(console=chunks.append) as lg:
        assert lg.load_elf(elf) == sym["_start"]
        result = lg.run(timeout=30)
        stats = lg.stats
        console = lg.console
    assert (result.reason, result.message) == ("dead", "CRASH: bye")
    assert console.decode() == expected_console(ud_eip=sym["user_ud2_insn"])
    assert b"".join(chunks) == console and len(chunks) > 10  # one chunk per NOTIFY
    assert stats["direct_0x80"] == 1003  # every system call, none through Python
    assert stats["reflected_13"] == 2 and stats["reflected_6"] == 1 and stats["reflected_14"] == 1
    assert stats["irq0"] == 3 and stats["vector_0x20"] == 3
    assert stats["hypercall_6"] == 7  # LOAD_IDT_ENTRY: 0x20, 0x80, 0x81, 13, 6, 14, 0x21
    assert stats["hypercall_7"] == 1 and stats["hypercall_2"] == 1 and stats["hypercall_10"] >= 1
    assert stats["exits_soft_gp"] == 1  # the user int $0x81
    assert stats["exits_invalid"] == 2  # the first vmcall, and ud2
    assert "direct_0x81" not in stats


def test_paged_guest_runs_to_power_off(guests):
    elf = guests["paged"]
    sym = symbols(elf)
    with launcher(page_offset=PAGED) as lg:
        initial = lg.guest.pgdir
        assert initial == MEM - 4096  # lguest's Launcher put them at the top of RAM
        assert lg.load_elf(elf) == sym["_start"] >= PAGED  # a virtual entry point
        result = lg.run(timeout=30)
        stats = lg.stats
        console = lg.console
        # LHCALL_NEW_PGTABLE: the guest's own directory, and Unicorn's CR3 is the
        # Switcher's shadow of it, outside guest RAM.
        assert lg.guest.pgdir == sym["kpgd"] - PAGED
        assert lg.uc.reg_read(X.UC_X86_REG_CR3) == 0xFFC03000
        assert lg.memory.read_u32(sym["ld_pgdir"] - PAGED) == initial  # told at LGUEST_INIT
    assert (result.reason, result.message) == ("dead", "CRASH: bye")
    assert console.decode() == expected_console(pf_addr=sym["banner"], ud_eip=sym["user_ud2_insn"])
    assert stats["direct_0x80"] == 1003
    assert stats["hypercall_4"] == 1
    assert stats["reflected_14"] == 1


def test_syscall_vector_0x40(guests):
    elf = guests["vec40"]
    with launcher(syscall_vector=0x40) as lg:
        assert lg.host.syscall_vector == 0x40
        assert 0x40 in lg.host.used_vectors
        lg.load_elf(elf)
        result = lg.run(timeout=30)
        stats = lg.stats
    assert result.message == "CRASH: bye"
    assert stats["direct_0x40"] == 1003 and "direct_0x80" not in stats


def test_reserves_and_frees_the_vector_in_the_process_registry(guests):
    used = lguest.UsedVectors.default()
    with UnicornLauncher(memory=MEM, syscall_vector=0x40) as lg:
        assert 0x40 in used
        with pytest.raises(lguest.VectorBusy):
            with UnicornLauncher(memory=MEM, syscall_vector=0x40):
                pass
        lg.load_elf(guests["vec40"])
        assert lg.run(timeout=30).message == "CRASH: bye"
    assert 0x40 not in used
    with pytest.raises(lguest.VectorBusy):
        UnicornLauncher(memory=MEM, syscall_vector=0x31).__enter__()  # a legacy IRQ's per-cpu vector


def test_virtual_clock_runs_are_identical(guests):
    def once():
        with launcher(page_offset=PAGED) as lg:
            lg.load_elf(guests["paged"])
            result = lg.run(timeout=30)
            return (result, lg.console, lg.stats, lg.guest.clock.now_ns(), lg.cpu.regs.array.tolist())

    first, second = once(), once()
    assert first == second
    # Virtual time: 10 ns per block, plus the halted idle time jumped over.
    assert first[3] >= 3 * 1_000_000


def test_halted_guest_jumps_the_virtual_clock(guests):
    with launcher() as lg:
        lg.load_elf(guests["flat"])
        t0 = time.monotonic()
        assert lg.run(timeout=30).message == "CRASH: bye"
        elapsed = time.monotonic() - t0
        now = lg.guest.clock.now_ns()
        blocks = lg.stats["blocks"]
    assert now >= 3_000_000  # three 1 ms ticks
    assert now > blocks * UnicornLauncher.ns_per_block  # the idle wait cost no blocks
    assert elapsed < 5


def test_wall_clock(guests):
    with launcher(clock="wall") as lg:
        lg.load_elf(guests["flat"])
        result = lg.run(timeout=30)
        stats = lg.stats
    assert result.message == "CRASH: bye"
    assert stats["irq0"] >= 3 and stats["direct_0x80"] == 1003


def test_pure_python_core_delivers_the_same(guests):
    with launcher(core="python") as lg:
        assert lguest.core_of(lg.cpu) is lguest.fallback
        lg.load_elf(guests["small"])
        result = lg.run(timeout=30)
        stats = lg.stats
    assert result.message == "CRASH: bye"
    assert stats["direct_0x80"] == 23  # through the Python path: C has no core to call
    assert stats["exits_direct"] == 23


def test_python_direct_path_matches_native(guests):
    def once(native):
        with launcher(native_direct=native) as lg:
            lg.load_elf(guests["small"])
            result = lg.run(timeout=30)
            return result, lg.console, {k: v for k, v in lg.stats.items() if not k.startswith(("exits", "entries"))}

    assert once(True) == once(False)


# --- traps ------------------------------------------------------------------------------------------------
def test_vmcall_is_patched_and_seen_by_the_cpu(guests):
    elf = guests["flat"]
    sym = symbols(elf)
    with launcher() as lg:
        lg.load_elf(elf)
        assert lg.memory.read(sym["hcall"], 3) == b"\x0f\x01\xc1"
        result = lg.run(timeout=30)
        patched = lg.memory.read(sym["hcall"], 3)
        stats = lg.stats
    assert result.message == "CRASH: bye"
    assert patched == b"\xcd\x1f\x90"  # int $0x1f; nop
    # One #UD for the vmcall (then every call traps as 31) and one for ud2.
    assert stats["exits_invalid"] == 2
    assert sum(v for k, v in stats.items() if k.startswith("hypercall_")) >= 30


def test_user_int_at_kernel_gate_is_gp_at_the_int(guests):
    elf = guests["flat"]
    sym = symbols(elf)
    frames = []

    def on_gp_entry(uc, address, size, user):
        esp = uc.reg_read(X.UC_X86_REG_ESP)  # flat: physical == virtual
        frames.append(tuple(int.from_bytes(uc.mem_read(esp + 4 * i, 4), "little") for i in range(6)))

    with launcher() as lg:
        lg.load_elf(elf)
        lg.uc.hook_add(unicorn.UC_HOOK_CODE, on_gp_entry, begin=sym["general_protection"],
                       end=sym["general_protection"])
        assert lg.run(timeout=30).message == "CRASH: bye"
        user_stack_top = sym["user_stack_top"]
    # [error code, eip, cs, eflags, esp, ss]: the int $0x81 itself, from ring 3
    err, eip, cs, eflags, esp, ss = frames[0]
    assert (err, eip, cs, esp, ss) == (0x81 * 8 + 2, sym["user_int_gp"], 0x73, user_stack_top, 0x7B)
    assert eflags & 0x200
    assert frames[1][:3] == (0, sym["user_cli_insn"], 0x73)


def test_hypercall_before_init_is_killed():
    # A flat image: ring 1 may use int $0x1f (its gate has DPL 1), but the
    # first call must be LGUEST_INIT.
    code = bytes.fromhex("b863000000" "cd1f" "ebfe")  # mov $99,%eax; int $0x1f; jmp .
    with launcher() as lg:
        lg.load_flat(code, 0x1000, 0x1000)
        result = lg.run(timeout=10)
    assert (result.reason, result.message) == ("dead", "hypercall 99 before INIT")


# --- every frame the core pushed is consumed by Unicorn's iret -----------------------------------------------
class FrameTracer:
    """Watches every guest instruction; checks each frame the host pushed
    against the interrupted state and against what the guest's iret restores."""

    REGS = (X.UC_X86_REG_EIP, X.UC_X86_REG_ESP, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_SS,
            X.UC_X86_REG_EDI)

    def __init__(self, lg, sym):
        self.lg = lg
        self.prev = None
        self.frames = {}  # frame address -> record
        self.consumed = 0
        self.pushed = 0
        self.errors = []
        self.handlers = {sym["timer_interrupt"]: 0x20, sym["irq1_interrupt"]: 0x21, sym["system_call"]: 0x80,
                         sym["general_protection"]: 13, sym["invalid_op"]: 6, sym["page_fault"]: 14}
        self.skippers = {sym["general_protection"], sym["invalid_op"], sym["page_fault"]}
        self.with_err = {sym["general_protection"], sym["page_fault"]}

    def state(self, uc):
        eip, esp, eflags, cs, ss, edi = uc.reg_read_batch(self.REGS)
        return {"eip": eip, "esp": esp, "eflags": eflags, "cs": cs & 0xFFFF, "ss": ss & 0xFFFF, "edi": edi}

    def read(self, addr, n):
        # through the core's translation: the same as Unicorn's MMU, or the test fails
        return self.lg.memory.read(self.lg.guest.guest_pa(addr), n)

    def word(self, uc, addr):
        return int.from_bytes(self.read(addr, 4), "little")

    def on_code(self, uc, address, size, user):
        try:
            self._on_code(uc, address, size, user)
        except Exception as exc:  # the binding would swallow it
            self.errors.append(("exception", repr(exc)))
            raise

    def _on_code(self, uc, address, size, user):
        cur = self.state(uc)
        prev, self.prev = self.prev, (cur, self.read(address, 1))
        if prev is None:
            return
        p, opcode = prev
        if opcode == b"\xcf" and p["cs"] & 3 and p["esp"] in self.frames:  # that was an iret
            rec = self.frames.pop(p["esp"])
            self.consumed += 1
            want = dict(rec["frame"])
            if rec["skip"] is not None:
                want["eip"] = (want["eip"] + rec["skip"]) & 0xFFFFFFFF
            got = {k: cur[k] for k in want}
            # the guest's own IF lives in lguest_data; the real IF is always on
            got["eflags"] &= ~0x200
            want["eflags"] &= ~0x200
            if got != want:
                self.errors.append(("return", rec, got, want))
        if address in self.handlers:  # only ever reached by a delivery
            self.pushed += 1
            handler = address
            esp = cur["esp"]
            if handler in self.with_err:
                esp += 4
            eip, cs, eflags = (self.word(uc, esp + 4 * i) for i in range(3))
            frame = {"eip": eip, "cs": cs, "eflags": eflags}
            if cs & 3 == 3:
                frame["esp"], frame["ss"] = self.word(uc, esp + 12), self.word(uc, esp + 16)
                after_esp = esp + 20
            else:
                frame["esp"], frame["ss"] = esp + 12, cur["ss"]
                after_esp = esp + 12
            # The frame must describe the state the guest was in when interrupted.
            expect = {"cs": p["cs"], "ss": p["ss"], "eflags": p["eflags"] & ~0x200}
            seen = {"cs": cs, "ss": frame["ss"], "eflags": eflags & ~0x200}
            if p["esp"] != frame["esp"] and not (cs & 3 != 3 and p["esp"] == after_esp):
                self.errors.append(("esp", p, frame))
            if seen != expect:
                self.errors.append(("state", p, frame))
            skip = p["edi"] if handler in self.skippers else None
            self.frames[esp] = {"vector": self.handlers[handler], "frame": frame, "skip": skip}


@pytest.mark.parametrize("name,po,kw", [
    ("small", 0, {}),
    ("small_paged", PAGED, {}),
    ("small", 0, {"native_direct": False}),  # direct traps delivered from Python
    ("small", 0, {"core": "python"}),
])
def test_every_pushed_frame_is_consumed_by_iret(guests, name, po, kw):
    elf = guests[name]
    sym = symbols(elf)
    with launcher(page_offset=po, **kw) as lg:
        lg.load_elf(elf)
        tracer = FrameTracer(lg, sym)
        lo = po + 0x100000
        lg.uc.hook_add(unicorn.UC_HOOK_CODE, tracer.on_code, begin=lo, end=lo + 0x10000)
        result = lg.run(timeout=60)
        stats = lg.stats
    assert tracer.errors == []
    assert result.message == "CRASH: bye"
    # Every delivery: 23 direct system calls, 4 reflected faults, the ticks.
    assert stats["direct_0x80"] == 23 and stats["irq0"] >= 3
    assert tracer.pushed == stats["direct_0x80"] + 4 + stats["irq0"]
    # All consumed except the exit system call's, which never returns.
    left = [r["vector"] for r in tracer.frames.values()]
    assert left == [0x80]
    assert tracer.consumed == tracer.pushed - 1


# --- interrupts from outside -------------------------------------------------------------------------
def test_send_irq_and_break_out_from_another_thread(guests):
    with launcher() as lg:
        lg.load_elf(guests["irq1"])
        timer = threading.Timer(0.2, lg.break_out)
        timer.start()
        t0 = time.monotonic()
        first = lg.run(timeout=20)
        assert first.reason == "break"
        assert 0.1 < time.monotonic() - t0 < 5
        assert "waiting for irq 1" in lg.console.decode()
        sender = threading.Timer(0.1, lg.send_irq, args=(1,))
        sender.start()
        second = lg.run(timeout=20)
        console = lg.console.decode()
        stats = lg.stats
    assert second.message == "CRASH: bye"
    assert "waiting for irq 1\nirq 1\nuser mode done\n" in console
    assert stats["irq1"] == 1


def test_send_irq_checks_the_number():
    with launcher() as lg:
        with pytest.raises(ValueError):
            lg.send_irq(32)


def test_shutdown_restart():
    code = bytes.fromhex(
        "b801000000" "bb00200000" "0f01c1"  # LGUEST_INIT(0x2000)
        "b802000000" "bb00300000" "b902000000" "0f01c1"  # SHUTDOWN(0x3000, LGUEST_SHUTDOWN_RESTART)
        "ebfe")
    with launcher() as lg:
        lg.load_flat(code, 0x1000, 0x1000)
        lg.memory.write(0x2000 + 20, b"\xff" * 64)
        lg.memory.write_u32(0x2000 + 1132, 0x80)
        lg.memory.write(0x3000, b"reboot\0")
        result = lg.run(timeout=10)
    assert result.reason == "restart"


def test_timeout_of_a_spinning_guest():
    with launcher() as lg:
        lg.load_flat(b"\xeb\xfe", 0x1000, 0x1000)  # jmp .
        t0 = time.monotonic()
        result = lg.run(timeout=0.3)
        assert result.reason == "timeout" and result.message is None
        assert time.monotonic() - t0 < 3
        assert lg.cpu.regs.eip == 0x1000 and lg.guest.dead is None


# --- misbehaving guests: killed, the process carries on ------------------------------------------------------
@pytest.mark.parametrize("name,po,message", [
    ("bad1", 0, "bad IDT type 5"),
    ("bad2", 0, "bad stack page 0xfffffff"),
    ("bad2_paged", PAGED, "bad stack page 0xcfffffff"),
    ("bad3", 0, "Bad hypercall 99\n"),
])
def test_misbehaving_guest_is_killed(guests, name, po, message):
    with launcher(page_offset=po) as lg:
        lg.load_elf(guests[name])
        result = lg.run(timeout=30)
    assert (result.reason, result.message) == ("dead", message)
    # ... and the next guest runs fine.
    with launcher() as lg:
        lg.load_elf(guests["small"])
        assert lg.run(timeout=30).message == "CRASH: bye"


def test_direct_trap_onto_a_stack_outside_ram_kills_in_the_hook():
    # Flat: LGUEST_INIT, a DPL-3 trap gate for 0x80, esp far outside RAM,
    # int $0x80.  The native delivery's first push fails: the core kills.
    code = bytes.fromhex(
        "b801000000" "bb00200000" "0f01c1"  # mov $1,%eax; mov $0x2000,%ebx; vmcall
        "b806000000" "bb80000000" "b900116100" "ba00ef0000" "0f01c1"  # LOAD_IDT_ENTRY 0x80 -> 0x1100
        "bc00f0ffff" "cd80" "ebfe")  # mov $0xfffff000,%esp; int $0x80
    with launcher() as lg:
        lg.load_flat(code, 0x1000, 0x1000)
        lg.memory.write(0x2000 + 20, b"\xff" * 64)  # lguest_data: an empty async ring
        lg.memory.write_u32(0x2000 + 1132, 0x80)  # syscall_vec
        result = lg.run(timeout=10)
        stats = lg.stats
    assert (result.reason, result.message) == ("dead", "bad write address 0xffffeffc len 4")
    assert "direct_0x80" not in stats
    if lguest.CORE == "cython":  # else the hook leaves the delivery to Python
        assert stats["exits_dead"] == 1


def test_in_out_get_lguests_emulation():
    # xor %eax,%eax; in $0x60,%al; mov %eax,%ebx; in (%dx),%eax; out %al,$0x80; hlt
    # lguest: reads see ones ("in" of a byte ORs 16 ones in, sic), writes vanish;
    # hlt at ring 1 is #GP(0), which the host does not emulate.
    code = bytes.fromhex("31c0" "e460" "89c3" "ed" "e680" "f4")
    with launcher() as lg:
        lg.load_flat(code, 0x1000, 0x1000)
        result = lg.run(timeout=10)
        regs = lg.cpu.regs
        assert (regs.ebx, regs.eax, regs.eip) == (0xFFFF, 0xFFFFFFFF, 0x1009)
        assert lg.stats["io_emulated"] == 3
    assert result.message == "unhandled trap 13 at 0x1009 (0x0)"


def test_broken_gdt_faults_in_the_switcher_and_kills():
    # LGUEST_INIT, then LOAD_GDT of 14 empty descriptors: the kernel's data
    # segment 0x69 is gone, so the Switcher's pop %ds faults entering.
    code = bytes.fromhex(
        "b801000000" "bb00200000" "0f01c1"  # LGUEST_INIT(0x2000)
        "b803000000" "bb00300000" "b90e000000" "0f01c1"  # LOAD_GDT(0x3000, 14)
        "ebfe")
    with launcher() as lg:
        lg.load_flat(code, 0x1000, 0x1000)
        lg.memory.write(0x2000 + 20, b"\xff" * 64)
        lg.memory.write_u32(0x2000 + 1132, 0x80)
        result = lg.run(timeout=10)
    assert result.reason == "dead"
    assert result.message == "lguest: trap 13 (0x68) entering the guest at 0x101e"  # a system descriptor: #GP


def test_guest_writing_the_switcher_is_killed():
    # mov %eax, 0xffc01000 (the GDT): the Switcher is mapped read-only
    code = bytes.fromhex("a30010c0ff" "ebfe")
    with launcher() as lg:
        lg.load_flat(code, 0x1000, 0x1000)
        result = lg.run(timeout=10)
    assert result.message == "attempt to access switcher pages"


def test_host_structures_live_in_the_switcher(guests):
    with launcher(page_offset=PAGED) as lg:
        lg.load_elf(guests["small_paged"])
        lg.run(timeout=30)
        uc = lg.uc
        for reg in (X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_TR):
            assert uc.reg_read(reg)[1] >= 0xFFC00000
        assert uc.reg_read(X.UC_X86_REG_CR3) >= 0xFFC00000
        assert lg.guest.pgdir < MEM


def test_load_elf_rejects_bad_images(tmp_path):
    bad = tmp_path / "x.elf"
    bad.write_bytes(b"not an elf")
    with launcher() as lg:
        with pytest.raises(ValueError):
            lg.load_elf(bad)
    with pytest.raises(ValueError):
        UnicornLauncher(memory=MEM, page_offset=0x1000)
    with pytest.raises(ValueError):
        UnicornLauncher(memory=MEM, clock="sundial")


@pytest.mark.parametrize("bad", ["bad1", "bad2", "bad3"])
def test_two_guests_in_one_process_one_misbehaves(guests, bad):
    """Both guests live at once, each on its own thread; the bad one is killed
    with its reason and released, the good one runs on undisturbed."""
    import threading

    results = {}
    with launcher() as good, launcher() as evil:
        good.load_elf(guests["flat"])
        evil.load_elf(guests[bad])
        threads = [threading.Thread(target=lambda lg=lg, k=k: results.__setitem__(k, lg.run(timeout=60)))
                   for k, lg in (("good", good), ("evil", evil))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        good_stats = good.stats
    assert results["evil"].reason == "dead" and results["evil"].message == {
        "bad1": "bad IDT type 5", "bad2": "bad stack page 0xfffffff", "bad3": "Bad hypercall 99\n"}[bad]
    assert (results["good"].reason, results["good"].message) == ("dead", "CRASH: bye")
    assert good_stats["direct_0x80"] == 1003


def test_console_limit_keeps_the_newest_bytes(guests):
    """UnicornLauncher hands console_limit to its Launcher: the sink still sees
    every byte, the launcher keeps only the newest ones and counts the rest."""
    chunks = []
    with launcher(console=chunks.append, console_limit=40) as lg:
        lg.load_elf(guests["flat"])
        result = lg.run(timeout=30)
        kept, dropped = lg.console, lg.console_dropped
    streamed = b"".join(chunks)
    assert result.reason == "dead"
    assert kept == streamed[-40:] and dropped == len(streamed) - 40


# --- the engine internals the translation cap needs ------------------------------------------------
@pytest.mark.parametrize("name,value", [("_UC_CPU", 8), ("_UC_TCG_CTX", 16), ("_X86CPU_ENV", 35408 - 64),
                                        ("_UC_CPU", 1 << 40), ("_TCG_CODE_GEN_BUFFER", 0)])
def test_an_engine_of_another_layout_is_refused_not_run(monkeypatch, core, name, value):
    # lguest caps Unicorn's translation blocks through three fields inside
    # the engine (see engine_internals).  Offsets that do not match the
    # engine -- another Unicorn build -- must refuse the guest with a clear
    # error, never read or write a wrong field, and leave nothing behind.
    import unicorn as U

    import lguest.unicorn as lu
    import lguest.unicorn.engine as engine

    monkeypatch.setattr(engine, name, value)
    with pytest.raises(lu.UnsupportedUnicorn, match="Unicorn 2.1.4|cannot read"):
        lu.engine_internals(U.Uc(U.UC_ARCH_X86, U.UC_MODE_32))
    lg = UnicornLauncher(memory=1 << 20, core=core.NAME)
    with pytest.raises(lu.UnsupportedUnicorn):
        lg.__enter__()
    monkeypatch.undo()
    with UnicornLauncher(memory=1 << 20, core=core.NAME) as ok:  # the process is unharmed
        ok.load_flat(b"\xf4", 0x1000, 0x1000)
        assert ok.run(timeout=1.0).reason in ("timeout", "dead")


def test_engine_internals_read_back_what_the_engine_reports():
    import ctypes

    import unicorn as U

    import lguest.unicorn as lu

    uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(lu.TCG_BUFFER_SIZE)
    cells = lu.engine_internals(uc)
    assert cells["tb_max_insns"] == lu.TB_MAX_INSNS and cells["tb_guard"] == lu.TB_GUARD
    # the CPU's "next block" request caps a block: 40 nops run as blocks of 16
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x90" * 40 + b"\xf4")
    sizes: list[int] = []
    uc.hook_add(U.UC_HOOK_BLOCK, lambda u, a, s, d: sizes.append(s))
    ctypes.c_uint32.from_address(cells["tb_cflags"]).value = 16
    uc.emu_start(0x1000, 0x1000 + 41)
    assert sizes[0] == 16
    hw = ctypes.c_uint64.from_address(cells["code_gen_highwater"]).value
    ptr = ctypes.c_uint64.from_address(cells["code_gen_ptr"]).value
    assert 0 < hw - ptr < lu.TCG_BUFFER_SIZE


def test_engine_internals_env_is_the_state_a_context_saves():
    """``env`` is the live CPU state whose copy a saved context's data is:
    the hook reads a trap's error code and kind there and clears the
    exception in flight (uh_intr_record), so the bytes at every measured
    offset must be the saved context's."""
    import ctypes

    import unicorn as U

    import lguest.unicorn as lu
    from lguest.unicorn.layout import context_layout

    uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(lu.TCG_BUFFER_SIZE)
    cells = lu.engine_internals(uc)
    lay = context_layout()
    uc.reg_write(U.x86_const.UC_X86_REG_EBX, 0x5A5A1234)
    ctx = uc.context_save()
    base = cells["env"] - lay["data"]
    for key in ("regs", "eip", "hflags", "error_code", "exception_is_int", "old_exception"):
        live = ctypes.string_at(base + lay[key], 4)
        assert live == ctypes.string_at(ctx.context.value + lay[key], 4), key
    assert ctypes.c_uint32.from_address(base + lay["regs"] + 3 * 8).value == 0x5A5A1234  # ebx
