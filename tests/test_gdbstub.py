"""The gdb remote stub (``lguest run --gdb PORT``, ``UnicornLauncher.serve_gdb``).

End to end with the real ``gdb`` in batch mode against the example guest
(examples/guest/guest.S, assembled at test time), and with a small
protocol client for what batch gdb cannot do on cue (Ctrl-C, a break-out or
a deadline while the guest is stopped, refused memory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lgtest import default_signals

pytest.importorskip("unicorn")
from lgtest import build_example, elf_symbols  # noqa: E402

import lguest  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")
needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb needed")

MEM = 4 << 20
PAGED = 0xC0000000
SWITCHER_ADDR = 0xFFC00000  # ABI.md


@pytest.fixture(scope="module")
def elves(tmp_path_factory: Any) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("gdbguest"))
    return {
        "flat": build_example(d, "flat"),
        "paged": build_example(d, "paged", PAGED),
        # ticks every 2 us of guest time: several while gdb steps through the syscall loop
        "ticks": build_example(d, "ticks", NSYSCALLS=50, TICK_NS=2000, TICKS=6),
        "irq1": build_example(d, "irq1", WAIT_IRQ1=1),
        "bad3": build_example(d, "bad3", BAD=3),
    }


# --- the lguest command under the real gdb -------------------------------------------------------
def start_lguest(elf: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", "--memory", "4M", *args, "--gdb", "0", elf],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})), preexec_fn=default_signals)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"waiting for gdb on 127\.0\.0\.1:(\d+)", line)
    if m is None:
        proc.kill()
        pytest.fail(f"no gdb port announced: {line!r}")
    return proc, int(m.group(1))


def gdb_batch(elf: str, port: int, commands: str, tmp: Path) -> str:
    script = tmp / "session.gdb"
    script.write_text(f"set pagination off\nset confirm off\ntarget remote 127.0.0.1:{port}\n{commands}\n")
    out = subprocess.run(["gdb", "-batch", "-nx", "-x", str(script), elf], capture_output=True, text=True,
                         timeout=180)
    return out.stdout + out.stderr


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """(exit status, the console (stdout), the host's report (stderr))."""
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stdout, stderr


@needs_gdb
@pytest.mark.parametrize("kind", ["flat", "paged"])
def test_gdb_session_break_step_read_watch_detach(elves: dict[str, str], kind: str, tmp_path: Path) -> None:
    """Break on a symbol, continue, read registers (the guest's cs/ss/IF) and
    a variable, step over an ``int $0x80``, see the console (forwarded and
    through ``monitor console``), detach: the guest then runs to its power-off."""
    elf = elves[kind]
    syms = elf_symbols(elf)
    args = ["--page-offset", hex(PAGED)] if kind == "paged" else []
    proc, port = start_lguest(elf, *args)
    try:
        out = gdb_batch(elf, port, """
break user_start
continue
info registers eip cs ss eflags
x/3i $pc
stepi
stepi
x/i $pc
stepi
printf "after the int: %#x\\n", $pc
printf "syscall_count=%d\\n", *(int *)&syscall_count
break system_call
continue
printf "cs in the handler: %#x, esp %#x\\n", $cs, $esp
delete
monitor console
detach
""", tmp_path)
        code, stdout, _ = finish(proc)
    finally:
        proc.kill()
    user_start = syms["user_start"]
    assert f"Breakpoint 1, {user_start:#010x} in user_start" in out, out
    assert re.search(r"cs\s+0x73", out) and re.search(r"ss\s+0x7b", out), out  # ring 3, the guest's selectors
    assert re.search(r"eflags\s+0x[0-9a-f]+\s+\[ IF \]", out), out  # the guest's virtual IF: on in user mode
    assert "int    $0x80" in out
    assert f"after the int: {user_start + 12:#x}" in out, out  # mov(5) mov(5) int(2): stepped over
    assert "syscall_count=1" in out, out  # the write system call ran inside the step
    assert "cs in the handler: 0x61" in out, out  # ring 1: the guest kernel
    assert "hello from user mode" in out  # the console, seen from gdb
    assert "lguest example guest: booted" in out  # monitor console
    assert "detached" in out, out
    assert code == 0, stdout
    assert "system calls: 1003" in stdout and "powering off" in stdout


def _deliveries(path: Path) -> list[tuple[Any, ...]]:
    data = json.loads(path.read_text())
    return [(e["ts"], e["cat"], e.get("args", {}).get("vector"), e.get("args", {}).get("eip"))
            for e in data["traceEvents"] if e.get("cat") in ("irq", "direct", "reflect", "timer")]


def _counters(stdout: str) -> dict[str, str]:
    rows = (line.split() for line in stdout.splitlines())
    return {r[0]: r[1] for r in rows if len(r) == 2 and re.fullmatch(r"[a-z_0-9x]+", r[0])}


@needs_gdb
@pytest.mark.parametrize("pure", ["0", "1"], ids=["cython", "python"])
def test_breakpoints_and_steps_keep_the_interrupt_sequence(elves: dict[str, str], pure: str, tmp_path: Path) -> None:
    """Under the virtual clock, a run stopped at breakpoints (some hit with
    an ignore count, so gdb steps off them) and single-stepped until a timer
    interrupt arrives mid-step takes every interrupt at the same guest time
    and eip, runs the same blocks and prints the same as the run without gdb."""
    elf = elves["ticks"]
    env = {"LGUEST_PURE_PYTHON": pure}
    plain_json, gdb_json = tmp_path / "plain.json", tmp_path / "gdb.json"
    plain = subprocess.run([sys.executable, "-m", "lguest", "run", "--memory", "4M", "--stats", "--trace-out",
                            str(plain_json), elf], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, **env))
    assert plain.returncode == 0, plain.stderr
    proc, port = start_lguest(elf, "--stats", "--trace-out", str(gdb_json), env=env)
    try:
        out = gdb_batch(elf, port, """
break user_start
continue
set $n = 0
while $pc != &timer_interrupt && $n < 3000
  stepi
  set $n = $n + 1
end
printf "steps until the timer: %d at %#x\\n", $n, $pc
stepi 40
break system_call
ignore 2 5
continue
delete
stepi 30
continue
""", tmp_path)
        code, stdout, stderr = finish(proc)
    finally:
        proc.kill()
    m = re.search(r"steps until the timer: (\d+) at (0x[0-9a-f]+)", out)
    assert m is not None, out
    assert int(m.group(2), 16) == elf_symbols(elf)["timer_interrupt"], out  # a tick arrived while stepping
    assert code == 0, stdout
    assert _deliveries(gdb_json) == _deliveries(plain_json)
    assert len(_deliveries(plain_json)) > 50
    ours, theirs = _counters(stderr), _counters(plain.stderr)
    for volatile in ("guest", "run"):  # blocks/s and run time
        ours.pop(volatile, None)
        theirs.pop(volatile, None)
    assert ours == theirs and "blocks" in ours
    assert stdout == plain.stdout  # the console


# --- the protocol, in-process -------------------------------------------------------------------------
class Client:
    """A minimal gdb remote-protocol client."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.console = b""

    def send(self, payload: str) -> None:
        body = payload.encode()
        self.s.sendall(b"$" + body + b"#" + b"%02x" % (sum(body) & 0xFF))

    def packet(self, timeout: float = 10.0) -> str:
        """The next packet that is not console output (O packets are collected)."""
        self.s.settimeout(timeout)
        while True:
            self.buf = self.buf.lstrip(b"+")
            start, end = self.buf.find(b"$"), self.buf.find(b"#")
            if start >= 0 and end > start and len(self.buf) >= end + 3:
                body = self.buf[start + 1:end].decode()
                self.buf = self.buf[end + 3:]
                try:
                    self.s.sendall(b"+")
                except OSError:
                    pass  # the stub closes right after an exit or kill reply
                if body.startswith("O") and body != "OK":
                    self.console += bytes.fromhex(body[1:])
                    continue
                return body
            data = self.s.recv(4096)
            if not data:
                raise EOFError("stub closed the connection")
            self.buf += data

    def cmd(self, payload: str) -> str:
        self.send(payload)
        return self.packet()

    def close(self) -> None:
        self.s.close()


def launcher(**kw: Any) -> UnicornLauncher:
    kw.setdefault("memory", MEM)
    kw.setdefault("used_vectors", lguest.UsedVectors(used=range(32)))
    return UnicornLauncher(**kw)


def run_in_thread(lg: UnicornLauncher, timeout: float | None = None) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        t0 = time.monotonic()
        box["result"] = lg.run(timeout=timeout)
        box["elapsed"] = time.monotonic() - t0
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


@needs_gdb
@pytest.mark.parametrize("kind", ["flat", "paged"])
def test_hardware_watchpoints(elves: dict[str, str], kind: str, tmp_path: Path) -> None:
    """watch / rwatch with the real gdb (Z2, Z3): each hit stops after the
    accessing instruction with the old and new value -- the watched
    ``incl`` counted once, not twice -- and, under the virtual clock, the
    run takes every interrupt at the same guest time and eip and prints the
    same as the run without gdb."""
    elf = elves["ticks"] if kind == "flat" else elves["paged"]
    args = ["--page-offset", hex(PAGED)] if kind == "paged" else []
    plain_json, gdb_json = tmp_path / "plain.json", tmp_path / "gdb.json"
    plain = subprocess.run([sys.executable, "-m", "lguest", "run", "--memory", "4M", *args, "--stats",
                            "--trace-out", str(plain_json), elf], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    proc, port = start_lguest(elf, *args, "--stats", "--trace-out", str(gdb_json))
    try:
        out = gdb_batch(elf, port, """
handle SIGSEGV SIGILL nostop noprint pass
watch *(int *)&syscall_count
continue
printf "after the first write: count=%d at %#x\\n", *(int *)&syscall_count, $pc
continue
printf "after the second write: count=%d\\n", *(int *)&syscall_count
delete
rwatch *(int *)&irq1_count
awatch *(int *)&spins
info watchpoints
delete
break user_pf_done
continue
delete
rwatch *(int *)&ticks
continue
printf "read ticks at %#x\\n", $pc
delete
continue
""", tmp_path)
        code, stdout, stderr = finish(proc)
    finally:
        proc.kill()
    syms = elf_symbols(elf)
    assert "Hardware watchpoint 1: *(int *)&syscall_count" in out, out
    assert re.search(r"Old value = 0\s+New value = 1", out) and re.search(r"Old value = 1\s+New value = 2", out), out
    m = re.search(r"after the first write: count=1 at (0x[0-9a-f]+)", out)
    # stopped after the incl in the write system call: inside system_call, past its first instruction
    assert m is not None and syms["system_call"] < int(m.group(1), 16) < syms["general_protection"], out
    assert "after the second write: count=2" in out, out
    assert "read watchpoint" in out and "acc watchpoint" in out, out
    assert "Hardware read watchpoint 5: *(int *)&ticks" in out and "Value = " in out, out
    m = re.search(r"read ticks at (0x[0-9a-f]+)", out)
    assert m is not None and syms["user_pf_done"] < int(m.group(1), 16) < syms["ticks"], out
    assert code == 0, stdout
    assert stdout == plain.stdout and "system calls: " in stdout  # every system call counted once
    assert _deliveries(gdb_json) == _deliveries(plain_json)


def test_stub_listens_on_localhost_and_the_deadline_ends_the_wait(elves: dict[str, str], core: Any) -> None:
    with launcher(core=core) as lg:
        lg.load_elf(elves["flat"])
        port = lg.serve_gdb(0)
        assert lg._gdb.sock.getsockname() == ("127.0.0.1", port)
        t0 = time.monotonic()
        result = lg.run(timeout=0.5)  # gdb never comes
        assert result.reason == "timeout"
        assert time.monotonic() - t0 < 0.5 + 0.5
        assert lg.stats["blocks"] == 0  # not one guest instruction ran


def test_break_out_and_deadline_while_stopped_in_gdb(elves: dict[str, str], core: Any) -> None:
    with launcher(core=core) as lg:
        lg.load_elf(elves["flat"])
        port = lg.serve_gdb(0)
        t, box = run_in_thread(lg)
        c = Client(port)
        try:
            assert c.cmd("?").startswith("T05")
            threading.Timer(0.2, lg.break_out).start()
            t.join(5)
            assert box["result"].reason == "break"  # gdb kept the guest stopped; break_out still works
            result = lg.run(timeout=0.3)  # still stopped: the deadline ends this run
            assert result.reason == "timeout"
            # the stub answers gdb inside run(): the next run sees the detach
            c.send("D")
            t, box = run_in_thread(lg, timeout=30)
            assert c.packet() == "OK"
            t.join(30)
            assert box["result"].message == "CRASH: bye"  # detached: it runs to its end
        finally:
            c.close()


def test_memory_goes_through_the_guests_page_tables_never_the_host(elves: dict[str, str], core: Any) -> None:
    elf = elves["paged"]
    syms = elf_symbols(elf)
    code = Path(elf).read_bytes()
    with launcher(core=core, page_offset=PAGED) as lg:
        lg.load_elf(elf)
        port = lg.serve_gdb(0)
        t, box = run_in_thread(lg, timeout=60)
        c = Client(port)
        try:
            c.cmd("?")
            assert c.cmd(f"Z0,{syms['user_start']:x},1") == "OK"
            reply = c.cmd("c")
            assert reply.startswith("T05") and f"08:{syms['user_start']:08x}"[:3] in reply
            regs = bytes.fromhex(c.cmd("g"))
            assert int.from_bytes(regs[32:36], "little") == syms["user_start"]
            # the code gdb reads at the virtual address is the ELF's, found through the page tables
            got = bytes.fromhex(c.cmd(f"m{syms['user_start']:x},10"))
            assert got in code and len(got) == 16
            assert lg.memory.read(syms["user_start"] - PAGED, 16) == got
            assert c.cmd(f"m{SWITCHER_ADDR:x},4") == "E14"  # the host range
            assert c.cmd(f"m{PAGED + MEM:x},4") == "E14"  # past guest RAM
            assert c.cmd(f"M{SWITCHER_ADDR:x},4:90909090") == "E14"
            assert c.cmd("m0,4") == "E14"  # the guest's own tables map nothing at 0
            # a write lands in guest memory through the same translation
            count = syms["syscall_count"]
            assert c.cmd(f"M{count:x},4:2a000000") == "OK"
            assert lg.memory.read_u32(count - PAGED) == 42
            assert c.cmd(f"M{count:x},4:00000000") == "OK"
            c.send("D")
            assert c.packet() == "OK"
            t.join(60)
            assert box["result"].message == "CRASH: bye"
            assert b"system calls: 1003" in lg.console
        finally:
            c.close()


def test_ctrl_c_from_gdb_stops_the_running_guest(elves: dict[str, str], core: Any) -> None:
    """The guest spins waiting for irq 1; gdb's Ctrl-C stops it (SIGINT)."""
    with launcher(core=core) as lg:
        lg.load_elf(elves["irq1"])
        port = lg.serve_gdb(0)
        t, box = run_in_thread(lg, timeout=60)
        c = Client(port)
        try:
            c.cmd("?")
            for _ in range(4):  # the user program's #GP, #GP, #UD, #PF
                assert c.cmd("c")[:3] in ("T0b", "T04")
            c.send("c")
            time.sleep(0.3)
            c.s.sendall(b"\x03")
            reply = c.packet(timeout=5)
            assert reply.startswith("T02"), reply
            blocks = lg.stats["blocks"]
            time.sleep(0.1)
            assert lg.stats["blocks"] == blocks  # stopped
            assert b"waiting for irq 1" in c.console  # forwarded while it ran
            lg.send_irq(1)
            c.send("c")
            assert c.packet(timeout=30) == "W00"  # the power-off is an exit
            t.join(30)
            assert box["result"].message == "CRASH: bye"
        finally:
            c.close()


def test_a_killed_guest_is_reported_with_its_reason(elves: dict[str, str], core: Any) -> None:
    with launcher(core=core) as lg:
        lg.load_elf(elves["bad3"])
        port = lg.serve_gdb(0)
        t, box = run_in_thread(lg, timeout=60)
        c = Client(port)
        try:
            c.cmd("?")
            c.send("c")
            assert c.packet(timeout=30) == "X09"  # SIGKILL
            assert b"Bad hypercall 99" in c.console
            t.join(30)
            assert box["result"].reason == "dead"
        finally:
            c.close()


def test_a_trap_of_interest_stops_before_the_host_reflects_it(elves: dict[str, str], core: Any) -> None:
    """The user program's #GP (int $0x81 at a DPL-0 gate), #UD and #PF stop
    for gdb at the faulting instruction; resuming delivers them as before."""
    elf = elves["flat"]
    syms = elf_symbols(elf)
    with launcher(core=core) as lg:
        lg.load_elf(elf)
        port = lg.serve_gdb(0)
        t, box = run_in_thread(lg, timeout=60)
        c = Client(port)
        try:
            c.cmd("?")
            seen = []
            for _ in range(4):
                reply = c.cmd("c")
                eip = int.from_bytes(bytes.fromhex(reply.split("08:")[1][:8]), "little")
                seen.append((reply[:3], eip))
            assert seen == [("T0b", syms["user_int_gp"]), ("T0b", syms["user_cli_insn"]),
                            ("T04", syms["user_ud2_insn"]), ("T0b", syms["user_pf_insn"])]
            assert c.cmd("c") == "W00"
            t.join(30)
            assert b"user #UD at" in lg.console
        finally:
            c.close()


def test_ctrl_c_while_waiting_for_gdb(elves: dict[str, str]) -> None:
    """The guest waits for gdb before its first instruction; Ctrl-C ends that wait."""
    import signal

    proc, _port = start_lguest(elves["flat"])
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 10
    finally:
        proc.kill()
    assert proc.returncode != 0


# --- a stop inside a block the translator cut at its cap ------------------------------------------------
#: 300 x ``inc %eax`` then ``jmp`` back: blocks of 128, 128 and 45 instructions (the translator's cap).
CAPPED = b"\x40" * 300 + b"\xe9" + (-(300 + 5)).to_bytes(4, "little", signed=True)
CAPPED_AT = 0x10000


def _capped(core: Any) -> UnicornLauncher:
    lg = UnicornLauncher(memory=1 << 20, used_vectors=lguest.UsedVectors(used=range(32)), core=core)
    lg.__enter__()
    lg.load_flat(CAPPED, CAPPED_AT, CAPPED_AT)
    return lg


@pytest.mark.parametrize("stops", [[50], [50, 51, 52, 127], [127], [0, 1], [200]], ids=str)
def test_a_stop_inside_a_capped_block_keeps_the_block_count(core: Any, stops: list[int]) -> None:
    """Stopped inside a block (a breakpoint, a step) and resumed there, the
    guest runs the rest of the counted block, uncounted, up to where the
    translator had cut it -- not a new block of up to 128 instructions
    past the cut, which moved every later block start (and the virtual
    clock and where irqs are taken) by as much."""
    from unicorn import UC_HOOK_CODE
    from unicorn.x86_const import UC_X86_REG_EAX

    for budget in (3, 7, 10):
        plain = _capped(core)
        try:
            plain.backend.hooks.resume(budget, 0, -1)
            want = (plain.backend.hooks.blocks, int(plain.uc.reg_read(UC_X86_REG_EAX)), int(plain.cpu.regs.eip))
        finally:
            plain.__exit__(None, None, None)
        lg = _capped(core)
        try:
            hooks, skip = lg.backend.hooks, -1
            for n in stops:  # a breakpoint at each, one after the other (a step when consecutive)
                def bp(uc: Any, address: int, size: int, data: Any) -> None:
                    uc.emu_stop()
                handle = lg.uc.hook_add(UC_HOOK_CODE, bp, begin=CAPPED_AT + n, end=CAPPED_AT + n)
                lg.uc.ctl_flush_tb()
                hooks.resume(budget, 0, skip)
                lg.uc.hook_del(handle)
                lg.uc.ctl_flush_tb()
                assert int(lg.cpu.regs.eip) == CAPPED_AT + n
                skip = CAPPED_AT + n
            hooks.resume(budget, 0, skip)
            got = (hooks.blocks, int(lg.uc.reg_read(UC_X86_REG_EAX)), int(lg.cpu.regs.eip))
        finally:
            lg.__exit__(None, None, None)
        assert got == want, (budget, stops)
