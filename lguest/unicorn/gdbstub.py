"""A gdb remote stub for a guest on Unicorn (``lguest run --gdb PORT``, ``UnicornLauncher.serve_gdb``).

gdb speaks its remote serial protocol over TCP; this stub answers it for
the guest's one cpu, with the guest's view of the machine:

* **registers** -- the i386 set gdb expects (eax ecx edx ebx esp ebp esi edi
  eip eflags cs ss ds es fs gs) from ``cpu.regs``, the state the host keeps
  between entries; eflags.IF is the guest's *virtual* IF
  (``lguest_data.irq_enabled``), not the real one, which is always on;
* **memory** -- at guest virtual addresses, translated through the guest's
  own page tables (``guest.pgdir``) when it is paged, never reaching the
  host range (the Switcher at SWITCHER_ADDR) or past guest RAM;
* **breakpoints** -- Unicorn code hooks at the addresses, never bytes written
  into guest memory (the guest cannot see or overwrite them);
* **watchpoints** (``watch``, ``rwatch``, ``awatch``: Z2/Z3/Z4) -- Unicorn
  memory hooks; a hit stops the guest after the instruction that made the
  access, as the CPU's debug registers do, and the stop reply names the
  address (``watch:ADDR``).  Unicorn 2.1.4 matches memory hooks on
  *physical* addresses, so the range is translated through the guest's page
  tables when gdb sets it (a page the guest maps elsewhere later is not
  followed; an access to the same RAM through another mapping is a hit);
* **single step** -- a code hook that stops before the second instruction; an
  ``int N`` (a system call through a direct trap, a hypercall) is stepped
  over as hardware single-step does: the handler runs and the step ends at
  the instruction after the ``int`` on the same stack;
* **stops** -- a breakpoint or step (SIGTRAP), gdb's Ctrl-C (SIGINT), a
  trap the guest takes that gdb cares about (#DE SIGFPE, #UD SIGILL, #GP and
  a flat guest's #PF SIGSEGV, before the host reflects it), and the guest's
  end: a power-off is an exit, a kill is SIGKILL with the kill reason sent
  as console output first;
* ``monitor console`` / ``monitor stats`` print the early console and the
  counters; console output is also forwarded to gdb while the guest runs.

**The clock does not see the debugger.**  Virtual time is counted in
translation blocks, and irqs are taken at block starts.  A stop inside a
block and the resume from there would start a new block in the middle of
one already counted; the native hook is told (``NativeHooks.resume``'s
``skip_addr``) that this first block is the rest of the old one, and the
block budget of an entry is absolute, so a run stopped and resumed any
number of times counts the same blocks and takes every interrupt at the
same guest time and eip as the run without gdb -- also inside a block the
translator had cut at its 128-instruction cap: the rest runs one
instruction per block up to the cut (``_uchook.h``, ``skip_armed``), where
a whole new block from the stop would have run up to 128 instructions past
it and moved every later block start.

**Containment is unchanged.**  The stub listens on 127.0.0.1 only.  While
it waits (for gdb to attach, or stopped at a breakpoint) it polls every
50 ms: ``break_out()``, ``run(timeout)``'s deadline and Ctrl-C on the main
thread end the wait, and run() returns as it would have without gdb.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from typing import Any

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE
from unicorn import x86_const as _x86

from ..constants import LD_IRQ_ENABLED, PAGE_SIZE, SWITCHER_ADDR, U32
from .exits import REASON_BREAK, REASON_INVALID, REASON_MEM, REASON_SOFT_GP, REASON_TRAP

#: gdb's i386 register order -> index in ``cpu.regs.array``.
GDB_REGS = (0, 2, 3, 1, 16, 6, 4, 5, 13, 15, 14, 17, 9, 10, 8, 7)
_R_EFLAGS = 15
_IF = 0x200

SIGINT, SIGILL, SIGTRAP, SIGFPE, SIGKILL, SIGSEGV = 2, 4, 5, 8, 9, 11
#: Traps the guest takes that stop it for gdb (before the host reflects them).
TRAP_SIGNALS = {0: SIGFPE, 6: SIGILL, 13: SIGSEGV, 14: SIGSEGV}

_POLL_S = 0.05
#: The longest memory read or write one packet may ask for.
MAX_MEM = 0x1000


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def _hex(text: str) -> str:
    return text.encode("latin-1", "replace").hex()


class GdbStub:
    """One gdb connection's worth of debugging for a :class:`UnicornLauncher`'s guest.

    Built by :meth:`UnicornLauncher.serve_gdb`, which binds 127.0.0.1:``port``
    (0: a free port, see :attr:`port`); the guest then waits for gdb before
    its first instruction.  The stub runs inside ``run()``: the backend hands
    it each entry (:meth:`execute`).
    """

    def __init__(self, launcher: Any, port: int = 0) -> None:
        self.lg = launcher
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(1)
        self.sock.settimeout(_POLL_S)
        self.port: int = self.sock.getsockname()[1]
        self.conn: socket.socket | None = None
        self._rx: queue.Queue[bytes | None] = queue.Queue()
        self._buf = b""
        self._reader: threading.Thread | None = None
        self._resumed = False  # gdb resumed the guest and waits for a stop reply
        self._interrupt = False  # gdb's Ctrl-C asked for a stop
        self._stop: int | None = SIGTRAP  # a stop to report before running: the first one is the attach
        self._detached = False
        self.breakpoints: dict[int, int] = {}  # address -> Unicorn hook handle
        self.watchpoints: dict[tuple[str, int, int], list[int]] = {}  # (Z type, address, length) -> hooks
        # A watched access: (Z type, watched address, accessed physical address, the bytes a write replaced)
        self._watch_hit: tuple[str, int, int, bytes | None] | None = None
        self._watch_eip: int | None = None  # the instruction being completed: its accesses are not new hits
        self._watch_report: tuple[str, int] | None = None  # for the stop reply: watch:ADDR
        self._hit: int | None = None  # a code hook stopped the guest at this eip
        self._ignore_bp: int | None = None  # the breakpoint the resume starts at
        self._step: dict[str, Any] | None = None
        self._step_hook: int | None = None
        self._skip: int | None = None  # eip where the guest was stopped inside a counted block
        self._lock = threading.Lock()  # socket writes (run thread, console sink)

    # --- the connection ---------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.conn is not None and not self._detached

    def _wait_attach(self) -> bool:
        """Accept gdb; False if the run must end first (deadline, break-out)."""
        while self.conn is None:
            if self._must_leave():
                return False
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = conn
            self._reader = threading.Thread(target=self._read_loop, args=(conn,), daemon=True,
                                            name="lguest-gdb-reader")
            self._reader.start()
        return True

    def _read_loop(self, conn: socket.socket) -> None:
        """Everything gdb sends goes to the queue; a Ctrl-C (0x03) while the
        guest runs stops it at its next block (thread-safe request)."""
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._rx.put(None)
                return
            if b"\x03" in data and self._resumed:
                self._interrupt = True
                hooks = self.lg.backend.hooks if self.lg.backend is not None else None
                if hooks is not None:
                    hooks.request_stop()
            self._rx.put(data)

    def _send_raw(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self._detached:
            return
        with self._lock:
            try:
                conn.sendall(data)
            except OSError:
                self._detached = True

    def send(self, payload: str) -> None:
        body = payload.encode("latin-1")
        self._send_raw(b"$" + body + b"#" + _checksum(body))

    def _next_packet(self) -> str | None:
        """The next packet (acked), "\\x03" for a bare Ctrl-C, or None if the
        run must end first or gdb went away (then :attr:`_detached`)."""
        while True:
            buf = self._buf
            while buf[:1] in (b"+", b"-"):
                buf = buf[1:]
            if buf[:1] == b"\x03":
                self._buf = buf[1:]
                return "\x03"
            start = buf.find(b"$")
            end = buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(buf) >= end + 3:
                body = buf[start + 1:end]
                self._buf = buf[end + 3:]
                self._send_raw(b"+")
                return body.decode("latin-1")
            self._buf = buf
            if self._detached:
                return None
            if self._must_leave():
                return None
            try:
                data = self._rx.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if data is None:
                self._detached = True
                return None
            self._buf += data

    def _must_leave(self) -> bool:
        """A wait must end: break_out() or the run's deadline (Ctrl-C on the
        main thread raises KeyboardInterrupt out of the waits by itself)."""
        backend = self.lg.backend
        if backend is None or self.lg.cpu.break_out:
            return True
        return bool(backend.deadline_ns) and time.monotonic_ns() >= backend.deadline_ns

    def close(self) -> None:
        self._detach_hooks()
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.sock.close()
        self._detached = True

    # --- the guest's view -----------------------------------------------------------------
    def _regs(self) -> list[int]:
        arr = self.lg.cpu.regs.words
        vals = [int(arr[i]) for i in GDB_REGS]
        g = self.lg.guest
        if g.lguest_data is not None:  # the guest's IF is virtual
            enabled = g.ld_read_u32(LD_IRQ_ENABLED) or 0
            vals[9] = (vals[9] & ~_IF) | (enabled & _IF)
        return vals

    def _set_reg(self, n: int, value: int) -> None:
        if not 0 <= n < len(GDB_REGS):
            return
        idx = GDB_REGS[n]
        value &= U32
        if idx == _R_EFLAGS:
            g = self.lg.guest
            if g.lguest_data is not None:
                g.ld_write_u32(LD_IRQ_ENABLED, value & _IF)
            value |= _IF  # the real IF stays on
        elif idx in (7, 8, 9, 10, 14, 17):
            value &= 0xFFFF
        self.lg.cpu.regs.words[idx] = value

    def translate(self, va: int) -> int | None:
        """Guest-physical address of guest-virtual ``va`` through the guest's
        page tables (flat: the same), or None: unmapped, the host range, or
        outside RAM."""
        if not 0 <= va < SWITCHER_ADDR:
            return None
        mem = self.lg.memory
        backend = self.lg.backend
        pa: int | None = va
        if backend is not None and backend.paging:
            pgdir = self.lg.guest.pgdir
            pa = None
            if pgdir is not None and pgdir + PAGE_SIZE <= mem.size:
                pde = mem.read_u32(pgdir + (va >> 22) * 4)
                if pde & 1 and pde & 0x80:  # a 4 MiB page
                    pa = (pde & 0xFFC00000) | (va & 0x3FFFFF)
                elif pde & 1 and (pde & ~0xFFF) + PAGE_SIZE <= mem.size:
                    pte = mem.read_u32((pde & ~0xFFF) + ((va >> 12) & 0x3FF) * 4)
                    if pte & 1:
                        pa = (pte & ~0xFFF) | (va & 0xFFF)
        if pa is None or pa >= mem.size:
            return None
        return pa

    def read_memory(self, va: int, n: int) -> bytes | None:
        out = bytearray()
        while n > 0:
            pa = self.translate(va)
            if pa is None:
                return bytes(out) if out else None
            chunk = min(n, PAGE_SIZE - (va & 0xFFF), self.lg.memory.size - pa)
            out += self.lg.memory.read(pa, chunk)
            va, n = va + chunk, n - chunk
        return bytes(out)

    def write_memory(self, va: int, data: bytes) -> bool:
        start = va
        parts: list[tuple[int, bytes]] = []
        while data:  # translate everything first: all or nothing
            pa = self.translate(va)
            if pa is None:
                return False
            chunk = min(len(data), PAGE_SIZE - (va & 0xFFF), self.lg.memory.size - pa)
            parts.append((pa, data[:chunk]))
            va, data = va + chunk, data[chunk:]
        for pa, part in parts:
            self.lg.memory.write(pa, part)
        uc = self.lg.uc
        if uc is not None and va > start:  # the code Unicorn translated from there is stale
            try:
                uc.ctl_remove_cache(start, va)
            except Exception:  # noqa: BLE001 - fall back to dropping every translation
                uc.ctl_flush_tb()
        return True

    # --- breakpoints and steps --------------------------------------------------------------------
    def _on_breakpoint(self, uc: Any, address: int, size: int, data: Any) -> None:
        if self._ignore_bp == address:
            self._ignore_bp = None  # the resume starts on it: run it once
            return
        self._ignore_bp = None
        if address in self.breakpoints:
            self._hit = address
            uc.emu_stop()

    def _on_step(self, uc: Any, address: int, size: int, data: Any) -> None:
        step = self._step
        if step is None:
            return
        if step["first"]:
            step["first"] = False
            if address == step["start"]:
                return  # the instruction being stepped
        if step["over"] is not None:
            eip_after, esp = step["over"]
            if address != eip_after or uc.reg_read(_x86.UC_X86_REG_ESP) != esp:
                return  # inside the int's handler, or the hypercall's return path
        self._hit = address
        uc.emu_stop()

    def _on_watch(self, uc: Any, access: int, address: int, size: int, value: int, data: Any) -> None:
        """A watched access (a memory hook, called before the access).
        Unicorn's stop from a memory hook lands *inside* the instruction:
        the store is done but eip still points at the instruction, and
        resuming there runs it again (an ``incl`` would count twice).  So
        this keeps the bytes a write is about to replace; :meth:`execute`
        puts them back and runs the instruction once more, whole, under a
        single step that ignores its accesses, and only then tells gdb --
        after the instruction, where a debug-register trap stops."""
        if self._watch_hit is not None or int(uc.reg_read(_x86.UC_X86_REG_EIP)) == self._watch_eip:
            return
        mem = self.lg.memory
        old = mem.read(address, size) if access == UC_MEM_WRITE and address + size <= mem.size else None
        self._watch_hit = (data[0], data[1], address, old)
        uc.emu_stop()

    def _watch(self, set_it: bool, kind: str, addr: int, length: int) -> str:
        """Z2/Z3/Z4 (write, read, access) and their z: a memory hook over [addr, addr + length)."""
        if not 1 <= length <= MAX_MEM or addr + length > SWITCHER_ADDR:
            return "E22"
        key = (kind, addr, length)
        if set_it and key not in self.watchpoints:
            ranges = []  # physical, a page at a time
            va, end = addr, addr + length
            while va < end:
                pa = self.translate(va)
                if pa is None:
                    return "E14"
                n = min(end - va, PAGE_SIZE - (va & 0xFFF))
                ranges.append((pa, pa + n - 1))
                va += n
            types = {"2": UC_HOOK_MEM_WRITE, "3": UC_HOOK_MEM_READ, "4": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}[kind]
            self.watchpoints[key] = [int(self.lg.uc.hook_add(types, self._on_watch, (kind, addr), begin=b, end=e))
                                     for b, e in ranges]
            self.lg.uc.ctl_flush_tb()  # blocks translated before them may not call them
        elif not set_it and key in self.watchpoints:
            for h in self.watchpoints.pop(key):
                self._unhook(h)
        return "OK"

    def _hook(self, begin: int, end: int, callback: Any) -> int:
        """A code hook over [begin, end].  Unicorn builds its hook calls into
        each translated block, so the blocks already translated must go:
        every translation is dropped (cheap here: the guest is stopped, and
        the blocks come out the same, so the clock does not notice)."""
        handle = self.lg.uc.hook_add(UC_HOOK_CODE, callback, begin=begin, end=end)
        self.lg.uc.ctl_flush_tb()
        return int(handle)

    def _unhook(self, handle: int) -> None:
        uc = self.lg.uc
        if uc is not None:
            uc.hook_del(handle)
            uc.ctl_flush_tb()  # blocks that still call the hook would run slowly

    def _int_length(self, eip: int) -> int:
        """Length of an ``int N`` / ``int3`` / ``into`` / the patched hypercall at eip, else 0."""
        code = self.read_memory(eip, 2) or b""
        if code[:1] == b"\xcd" and len(code) == 2:
            return 2
        if code[:1] in (b"\xcc", b"\xce"):
            return 1
        return 0

    def _vmcall_at(self, eip: int) -> bool:
        return (self.read_memory(eip, 3) or b"") == b"\x0f\x01\xc1"

    def _arm_step(self) -> None:
        eip = int(self.lg.cpu.regs.eip)
        n = self._int_length(eip)
        if not n and self._vmcall_at(eip):
            n = 3  # the host patches it to int $0x1f; nop: step over the hypercall
        esp = int(self.lg.cpu.regs.esp)
        self._step = {"start": eip, "first": True, "over": ((eip + n) & U32, esp) if n else None}
        if self._step_hook is None:
            self._step_hook = self._hook(1, 0, self._on_step)

    def _disarm_step(self) -> None:
        self._step = None
        if self._step_hook is not None:
            self._unhook(self._step_hook)
            self._step_hook = None

    def _detach_hooks(self) -> None:
        self._step = None
        if self._step_hook is not None:
            self._unhook(self._step_hook)
        for h in [*self.breakpoints.values(), *(h for hs in self.watchpoints.values() for h in hs)]:
            self._unhook(h)
        self._step_hook = None
        self.breakpoints.clear()
        self.watchpoints.clear()
        self._watch_hit = self._watch_eip = self._watch_report = None

    # --- running -------------------------------------------------------------------------------------
    def execute(self, hooks: Any, budget: int, deadline_ns: int) -> int:
        """Run one entry of the guest for the backend (instead of
        ``hooks.run(budget, deadline_ns)``): stop for gdb at breakpoints and
        steps, resume under the same block budget, and return when the
        guest stops for the host (a trap, the clock, an irq, a break-out, the
        deadline), as ``hooks.run`` would."""
        budget_end = hooks.blocks + budget if budget else 0
        cpu = self.lg.cpu
        while True:
            if self._stop is not None and not self._detached:
                if not self._wait_attach() or not self._command_loop(self._stop):
                    return self._leave(hooks, budget_end, deadline_ns)
                self._stop = None
            if self._detached:
                self._detach_hooks()
            eip = int(cpu.regs.eip)
            skip = self._skip if self._skip == eip else -1
            self._skip = None
            self._ignore_bp = eip if eip in self.breakpoints and not self._detached else None
            self._hit = None
            err = hooks.resume(budget_end, deadline_ns, skip)
            if self._watch_hit is not None:  # a memory hook stopped it inside an instruction
                kind, addr, accessed, old = self._watch_hit
                self._watch_hit = None
                if old is not None:
                    self.lg.memory.write(accessed, old)  # as before the store: the instruction runs again
                self._watch_eip = int(cpu.regs.eip)
                self._watch_report = (kind, addr)
                self._skip = self._watch_eip  # inside a counted block
                self._disarm_step()
                self._arm_step()  # that one instruction, then the stop gdb hears of
                continue
            if self._hit is not None:  # a code hook stopped it: inside a counted block
                self._skip = int(cpu.regs.eip)
                self._watch_eip = None
                self._disarm_step()
                self._stop = SIGTRAP
                continue
            reason = hooks.reason
            if reason == REASON_BREAK and self._interrupt:
                self._interrupt = False
                if not cpu.break_out:  # gdb's own stop, at a block start: nothing counted
                    self._stop = SIGINT
                    continue
                self._stop = SIGINT  # reported at the next entry, after the break-out
            if self.attached and reason in (REASON_TRAP, REASON_INVALID, REASON_SOFT_GP, REASON_MEM):
                sig = self._trap_signal(reason, hooks)
                if sig is not None:
                    self._disarm_step()
                    # A refused int N stopped after the int; the #GP is at it
                    # (ExitDecoding moves eip back when it decodes the stop).
                    back = self.lg.backend._int_length(cpu, hooks.trapnum) if reason == REASON_SOFT_GP else 0
                    cpu.regs.eip = (int(cpu.regs.eip) - back) & U32
                    self._command_loop(sig)  # False (deadline, break-out): the run loop sees them after the trap
                    cpu.regs.eip = (int(cpu.regs.eip) + back) & U32
            return err

    def _trap_signal(self, reason: int, hooks: Any) -> int | None:
        cpu = self.lg.cpu
        trap = 14 if reason == REASON_MEM else 13 if reason == REASON_SOFT_GP else int(hooks.trapnum)
        if trap == 6 and self._vmcall_at(int(cpu.regs.eip)):
            return None  # a hypercall's first vmcall: the host patches it
        if trap == 14 and self.lg.backend.paging:
            return None  # the host fills its shadow page directory on faults
        if reason == REASON_MEM and int(hooks.mem_fault[1]) >= SWITCHER_ADDR:
            return None  # the host kills the guest: reported as the kill
        return TRAP_SIGNALS.get(trap)

    def _leave(self, hooks: Any, budget_end: int, deadline_ns: int) -> int:
        """End this entry without running the guest: a host stop the run
        loop then handles (it sees the deadline or the break-out)."""
        hooks.request_stop()
        return int(hooks.resume(budget_end, deadline_ns, -1))

    def guest_ended(self, reason: str, message: str | None) -> None:
        """The run ended with the guest dead: tell gdb (exit or SIGKILL) and
        close.  A power-off (SHUTDOWN) is an exit; any other death a kill."""
        if not self.attached:
            return
        shut_down = reason == "restart" or (message or "").startswith("CRASH: ")
        if message:
            self.send("O" + _hex(f"lguest: guest stopped: {reason}: {message}\n"))
        self.send("W00" if shut_down else f"X{SIGKILL:02x}")
        self.close()

    def console(self, chunk: bytes) -> None:
        """Console output, forwarded to gdb while the guest runs for it."""
        if self._resumed and self.attached and chunk:
            self.send("O" + chunk.hex())

    # --- the protocol -------------------------------------------------------------------------------
    def _stop_reply(self, sig: int) -> str:
        regs = self._regs()
        watch = ""
        if self._watch_report is not None and sig == SIGTRAP:
            kind, addr = self._watch_report
            watch = f"{ {'2': 'watch', '3': 'rwatch', '4': 'awatch'}[kind]}:{addr:x};"
        return (f"T{sig:02x}08:{regs[8].to_bytes(4, 'little').hex()};04:{regs[4].to_bytes(4, 'little').hex()};"
                f"{watch}thread:1;")

    def _command_loop(self, sig: int) -> bool:
        """Report the stop and serve gdb until it resumes the guest (True);
        False if the run must end first (deadline, break-out) or gdb left."""
        if self._detached:
            return True
        if self._resumed:  # (a stop the last wait reported already is not reported twice)
            self._resumed = False
            self.send(self._stop_reply(sig))
        while True:
            pkt = self._next_packet()
            if pkt is None:
                if self._detached:
                    self._detach_hooks()
                    return True  # gdb is gone: the guest runs on by itself
                self._stop = sig  # report the stop again at the next entry
                return False
            if pkt == "\x03":
                continue  # already stopped
            reply = self._handle(pkt)
            if reply is _RESUME:
                self._resumed = True
                self._watch_report = None
                return True
            if reply is not None:
                self.send(reply)
            if self._detached:
                self._detach_hooks()
                self.close()
                return True

    def _handle(self, pkt: str) -> Any:  # noqa: C901 - one case per packet
        cmd = pkt[:1]
        if cmd == "?":
            return self._stop_reply(SIGTRAP)
        if cmd == "g":
            return "".join(v.to_bytes(4, "little").hex() for v in self._regs())
        if cmd == "G":
            raw = bytes.fromhex(pkt[1:])
            for n in range(min(len(raw) // 4, len(GDB_REGS))):
                self._set_reg(n, int.from_bytes(raw[4 * n:4 * n + 4], "little"))
            return "OK"
        if cmd == "p":
            n = int(pkt[1:], 16)
            return self._regs()[n].to_bytes(4, "little").hex() if n < len(GDB_REGS) else "E00"
        if cmd == "P":
            n, _, val = pkt[1:].partition("=")
            if int(n, 16) >= len(GDB_REGS):
                return "E00"
            self._set_reg(int(n, 16), int.from_bytes(bytes.fromhex(val), "little"))
            return "OK"
        if cmd == "m":
            addr, _, n = pkt[1:].partition(",")
            data = self.read_memory(int(addr, 16), min(int(n, 16), MAX_MEM))
            return data.hex() if data else "E14"
        if cmd == "M":
            head, _, hexdata = pkt[1:].partition(":")
            addr, _, n = head.partition(",")
            data = bytes.fromhex(hexdata)
            if len(data) != int(n, 16) or len(data) > MAX_MEM:
                return "E16"
            return "OK" if self.write_memory(int(addr, 16), data) else "E14"
        if cmd in ("Z", "z"):
            kind, addr_s, length = (pkt[1:].split(",") + ["", ""])[:3]
            if kind in ("2", "3", "4"):
                return self._watch(cmd == "Z", kind, int(addr_s, 16) & U32, int(length.partition(";")[0], 16))
            if kind not in ("0", "1"):
                return ""
            addr = int(addr_s, 16) & U32
            if cmd == "Z" and addr not in self.breakpoints:
                self.breakpoints[addr] = self._hook(addr, addr, self._on_breakpoint)
            elif cmd == "z" and addr in self.breakpoints:
                self._unhook(self.breakpoints.pop(addr))
            return "OK"
        if cmd in ("c", "s", "C", "S"):
            # C/S carry a signal to deliver: the trap that stopped the guest
            # is the host's to deliver (it reflects it on resume), so it is
            # ignored; an address resumes there.
            rest = pkt[1:]
            if cmd in ("C", "S"):
                rest = rest.partition(";")[2]
            if rest:
                self.lg.cpu.regs.eip = int(rest, 16) & U32
            if cmd in ("s", "S"):
                self._arm_step()
            return _RESUME
        if cmd == "D":
            self.send("OK")
            self._detached = True
            return None
        if cmd == "k":
            self.lg.guest.kill("killed by gdb")
            self._detached = True
            return None
        if cmd == "H" or pkt.startswith("T"):
            return "OK"
        if pkt.startswith("qSupported"):
            return "PacketSize=4000;swbreak-;hwbreak-"
        if pkt == "qAttached":
            return "1"
        if pkt == "qC":
            return "QC1"
        if pkt == "qfThreadInfo":
            return "m1"
        if pkt == "qsThreadInfo":
            return "l"
        if pkt.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(pkt[6:]).decode("latin-1").strip())
        return ""  # unsupported: gdb knows the empty reply

    def _monitor(self, command: str) -> str:
        if command == "console":
            text = self.lg.console.decode("latin-1")
        elif command == "stats":
            text = "".join(f"{k} {v}\n" for k, v in sorted(self.lg.stats.items()))
        elif command == "clock":
            g = self.lg.guest
            text = f"{g.clock.now_ns()} ns, {self.lg.backend.hooks.blocks} blocks\n"
        else:
            text = "monitor commands: console, stats, clock\n"
        if text:
            self.send("O" + _hex(text))
        return "OK"


_RESUME = object()
