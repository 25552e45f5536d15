"""SIGINT/SIGTERM while a guest runs: a watcher thread breaks the guest out (see :class:`_Signals`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .common import PROG


# --- lguest run: signals -----------------------------------------------------------------------
class _Signals:
    """SIGINT/SIGTERM stop the guest instead of killing the process.

    A Python signal handler runs only on the main thread between bytecodes:
    while the guest spins inside the emulator that is at the next signal
    slice (UnicornLauncher.SIGNAL_SLICE_NS), and while a halted guest sleeps
    in a lock wait it may be never.  So the handlers here do nothing but let
    the C-level handler write the signal number to a wakeup socket
    (``signal.set_wakeup_fd``, async-signal-safe, whatever the main thread
    holds); a watcher thread reads it and calls the thread-safe
    ``break_out()``, which stops a spinning guest at its next block and wakes
    a sleeping one.  ``run()`` then returns "break".  A second signal exits
    at once (a guest that somehow does not stop must not trap the user).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.target: Any = None  # the UnicornLauncher to break out, once it exists
        self.at_line_start = True
        self._lock = threading.Lock()
        self._rsock, self._wsock = socket.socketpair()
        self._wsock.setblocking(False)
        self._old: dict[int, Any] = {}
        self._old_fd: int | None = None
        self._thread = threading.Thread(target=self._watch, name="lguest-signals", daemon=True)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # main() called from a thread (tests): signals are not ours to take
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old is signal.SIG_IGN:
                continue  # nohup / a background job: the user asked for this signal to be ignored
            self._old[sig] = old
            signal.signal(sig, self._noop)
        self._old_fd = signal.set_wakeup_fd(self._wsock.fileno(), warn_on_full_buffer=False)
        self._thread.start()

    @staticmethod
    def _noop(signum: int, frame: Any) -> None:
        pass  # the watcher thread acts on the byte set_wakeup_fd wrote

    def _watch(self) -> None:
        while True:
            try:
                data = self._rsock.recv(64)
            except OSError:
                return
            if not data:
                return  # uninstall() closed the socket
            for signum in data:
                if signum not in self._old:
                    continue  # a signal someone else handles (SIGCHLD, ...)
                with self._lock:
                    first = self.signum is None
                    if first:
                        self.signum = signum
                    target = self.target
                if not first:
                    sys.stderr.write(f"\n{PROG}: {signal.Signals(signum).name} again: exiting now\n")
                    sys.stderr.flush()
                    os._exit(128 + signum)
                if target is not None:
                    with contextlib.suppress(RuntimeError):  # run already over, or torn down
                        target.break_out()

    def arm(self, target: Any) -> None:
        """From now on a signal breaks ``target`` out; at once if one already came."""
        with self._lock:
            self.target = target
            pending = self.signum is not None
        if pending:
            with contextlib.suppress(RuntimeError):
                target.break_out()

    def disarm(self) -> None:
        with self._lock:
            self.target = None

    def uninstall(self) -> None:
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        self._wsock.close()
        with contextlib.suppress(OSError):
            self._rsock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(1.0)
        self._rsock.close()


@contextlib.contextmanager
def _signals() -> Iterator[_Signals]:
    s = _Signals()
    s.install()
    try:
        yield s
    finally:
        s.uninstall()
