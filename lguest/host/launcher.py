"""The Launcher's side: running a cpu, its early console, irqs and break-out.

In lguest the Launcher is a user process that reads /dev/lguest to run the
guest; each read returns when the guest NOTIFYs an address.  An address that
is not a device is the early console: a NUL-terminated string in guest memory.

The guest decides how much it prints, so the host keeps only a ring of the
last ``console_limit`` bytes (every chunk still goes to the sink as it comes)
and reads at most :data:`NOTIFY_MAX` bytes of string per NOTIFY.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..messages import lx
from .run import Backend, GuestKilled, RunContext, run_guest
from .stats import Stats

ConsoleSink = Callable[[bytes], None]

#: Bytes of early-console output the Launcher keeps by default (the newest).
DEFAULT_CONSOLE_LIMIT = 1 << 20

#: The longest string one NOTIFY prints: a string with no NUL within this
#: many bytes (or before the end of memory) is cut there.  lguest's Launcher
#: scanned to the end of guest memory; a bound keeps one hypercall's host work
#: and its temporary copy small whatever the memory size.
NOTIFY_MAX = 65536

#: The first read of a NOTIFY string; later reads double, so the scan costs
#: O(string length), not NOTIFY_MAX, for the usual short line.
_NOTIFY_FIRST_READ = 256


@dataclass
class RunResult:
    """Why a guest run ended: ``reason`` is "dead", "restart", "timeout" or
    "break"; ``message`` is the kill reason for the first two."""

    reason: str
    message: str | None = None


class Launcher:
    """Drives one cpu through a backend, handling NOTIFY as lguest's Launcher did."""

    def __init__(self, cpu: Any, backend: Backend, *, console: ConsoleSink | Any = None,
                 devices: dict[int, Callable[[int], None]] | None = None,
                 console_limit: int = DEFAULT_CONSOLE_LIMIT, stats: Stats | None = None,
                 host_idt: Any = None, start: int | None = None) -> None:
        """``start``: the guest's entry point; when given, the cpu's registers
        are set as the kernel's LHREQ_INITIALIZE set them (``cpu.setup_regs``),
        else they are left as the caller made them.  ``stats``, ``host_idt``:
        the run context's (see :attr:`context`)."""
        self.cpu = cpu
        self.backend = backend
        #: The cpu's run context, kept across runs: its stats, its host IDT
        #: (``host_idt``: the backend's own, or built at the first entry).
        self.context = RunContext(cpu, backend, stats=stats, host_idt=host_idt)
        self.devices = dict(devices or {})
        self._console = bytearray()
        self._console_limit = 0
        #: Early-console bytes dropped from the front of the ring so far.
        self.console_dropped = 0
        self.console_limit = console_limit
        # One run at a time: a cpu (and its backend) is driven by one thread.
        self._run_lock = threading.Lock()
        if console is None:
            self._sink: ConsoleSink | None = None
        elif callable(console):
            self._sink = console
        elif hasattr(console, "write"):
            self._sink = lambda chunk: (console.write(chunk.decode("latin-1")), console.flush())
        else:
            raise TypeError("console must be a callable or have a write() method")
        if start is not None:  # last: a refused argument leaves the cpu untouched
            cpu.setup_regs(start)

    @property
    def console(self) -> bytes:
        """The last ``console_limit`` bytes the guest printed through the early console."""
        return bytes(self._console)

    @property
    def console_limit(self) -> int:
        """How many of the newest console bytes are kept (0: none)."""
        return self._console_limit

    @console_limit.setter
    def console_limit(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError("console_limit must be an int")
        if limit < 0:
            raise ValueError("console_limit must be >= 0")
        self._console_limit = limit
        self._trim()

    def _trim(self) -> None:
        excess = len(self._console) - self._console_limit
        if excess > 0:
            # Deleting from the front of a bytearray is amortised O(1) in
            # CPython (it moves the start), so the ring costs O(chunk).
            del self._console[:excess]
            self.console_dropped += excess

    def _keep(self, chunk: bytes) -> None:
        limit = self._console_limit
        if len(chunk) >= limit:  # the chunk alone fills the ring
            self.console_dropped += len(self._console) + len(chunk) - limit
            self._console[:] = chunk[len(chunk) - limit:]
            return
        self._console += chunk
        self._trim()

    def _read_string(self, addr: int) -> bytes:
        """The NUL-terminated string at ``addr``, cut at NOTIFY_MAX or the end of memory."""
        mem = self.cpu.guest.memory
        end = min(mem.size, addr + NOTIFY_MAX)
        parts: list[bytes] = []
        pos, step = addr, _NOTIFY_FIRST_READ
        while pos < end:
            n = min(step, end - pos)
            raw = mem.read(pos, n)
            nul = raw.find(b"\0")
            if nul >= 0:
                parts.append(raw[:nul])
                break
            parts.append(raw)
            pos += n
            step *= 2
        return b"".join(parts)

    def early_console(self, addr: int) -> None:
        """Print the NUL-terminated string at guest-physical ``addr``."""
        mem = self.cpu.guest.memory
        if addr >= mem.size:
            # lguest's Launcher gave up here ("Bad NOTIFY"); we end the guest.
            self.cpu.guest.kill(f"Bad NOTIFY {lx(addr)}")
            return
        chunk = self._read_string(addr)
        self._keep(chunk)
        if self._sink is not None:
            self._sink(chunk)

    def handle_notify(self, addr: int) -> None:
        device = self.devices.get(addr)
        if device is not None:
            device(addr)
        else:
            self.early_console(addr)

    def run(self, timeout: float | None = None) -> RunResult:
        """Run until the guest dies, asks for a restart, breaks out or times out.
        RuntimeError if another thread is already running this Launcher."""
        if not self._run_lock.acquire(blocking=False):
            raise RuntimeError("Launcher.run() is already running on another thread")
        try:
            return self._run(timeout)
        finally:
            self._run_lock.release()

    @property
    def stats(self) -> Stats:
        """The counters (and trace) of this cpu's runs."""
        return self.context.stats

    def _run(self, timeout: float | None) -> RunResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ex = run_guest(self.cpu, self.backend, timeout=remaining, context=self.context)
            except GuestKilled as killed:
                return RunResult("restart" if killed.restart else "dead", killed.message)
            if ex.reason == "notify":
                self.handle_notify(ex.notify)
                continue
            return RunResult(ex.reason)

    def send_irq(self, irq: int) -> None:
        """LHREQ_IRQ: raise virtual irq ``irq`` (ValueError if >= 32); thread-safe."""
        self.cpu.send_irq(irq)

    def break_out(self) -> None:
        """LHREQ_BREAK: make the run loop return "break" at its next turn; thread-safe."""
        self.cpu.break_out = True
        self.cpu.wake()

