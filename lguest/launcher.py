"""The Launcher's side: running a cpu, its early console, irqs and break-out.

In lguest the Launcher is a user process that reads /dev/lguest to run the
guest; each read returns when the guest NOTIFYs an address.  An address that
is not a device is the early console: a NUL-terminated string in guest memory.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .messages import lx
from .run import Backend, GuestKilled, run_guest

ConsoleSink = Callable[[bytes], None]


@dataclass
class RunResult:
    """Why a guest run ended: ``reason`` is "dead", "restart", "timeout" or
    "break"; ``message`` is the kill reason for the first two."""

    reason: str
    message: str | None = None


class Launcher:
    """Drives one cpu through a backend, handling NOTIFY as lguest's Launcher did."""

    def __init__(self, cpu: Any, backend: Backend, *, console: ConsoleSink | Any = None,
                 devices: dict[int, Callable[[int], None]] | None = None) -> None:
        self.cpu = cpu
        self.backend = backend
        self.devices = dict(devices or {})
        self._console = bytearray()
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

    @property
    def console(self) -> bytes:
        """Everything the guest printed through the early console."""
        return bytes(self._console)

    def early_console(self, addr: int) -> None:
        """Print the NUL-terminated string at guest-physical ``addr``."""
        mem = self.cpu.guest.memory
        if addr >= mem.size:
            # lguest's Launcher gave up here ("Bad NOTIFY"); we end the guest.
            self.cpu.guest.kill(f"Bad NOTIFY {lx(addr)}")
            return
        end = min(mem.size, addr + 65536)
        raw = mem.read(addr, end - addr)
        chunk = raw.split(b"\0", 1)[0]
        self._console += chunk
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

    def _run(self, timeout: float | None) -> RunResult:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ex = run_guest(self.cpu, self.backend, timeout=remaining)
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


def stdout_console(chunk: bytes) -> None:
    sys.stdout.write(chunk.decode("latin-1"))
    sys.stdout.flush()
