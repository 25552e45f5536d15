"""The ``lguest`` command: inspect host vectors and run guest images.

    lguest vectors [--syscall-vector N] [--free] [--json]
    lguest run IMAGE [--syscall-vector N] [--memory SIZE] [--page-offset A]
                     [--timeout S] [--clock virtual|wall] [--core cython|python]
                     [--stats] [--trace] [--trace-out FILE.json [--trace-limit N]]
                     [--record FILE | --replay FILE] [--gdb PORT]
    lguest exec [--root DIR] [--memory SIZE] [--clock virtual|wall] [--syscall-vector N]
                [--timeout S] [--stats] [--export DIR] -- PROGRAM [ARGS...]   (docs/EXEC.md)
    lguest --version

Every mistake a user can make on the command line (a bad option, a bad
image, an environment variable out of range) ends in one line on stderr,
``lguest: <what>: <why>``, and exit status 2: never a traceback.  The guest's
console is the only thing written to stdout, so it can be piped clean; host
messages, ``--stats`` and ``--trace`` go to stderr.  The exit statuses are
the table :data:`EXIT_CODES` (also in ``lguest run --help`` and
docs/CLI.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn

from .constants import PAGE_SIZE, SWITCHER_ADDR, SYSCALL_VECTOR
from .host.vectors import Host, UsedVectors, VectorBusy

PROG = "lguest"

# --- exit statuses ------------------------------------------------------------------------------
EXIT_SHUTDOWN = 0      # the guest shut itself down (LHCALL_SHUTDOWN, power-off)
EXIT_KILLED = 1        # the host killed the guest (a kill reason is printed)
EXIT_USAGE = 2         # a bad option, image or environment variable
EXIT_TIMEOUT = 3       # --timeout expired
EXIT_RESTART = 4       # the guest asked to be restarted (LHCALL_SHUTDOWN, restart)
EXIT_VECTOR_BUSY = 5   # the syscall vector is in use by the host
EXIT_REPLAY_DIFFERS = 6  # --replay: the run differs from the recording (the first difference is printed)
EXIT_INTERNAL = 70     # a bug in lguest or an unsupported Unicorn build (EX_SOFTWARE)
EXIT_SIGINT = 128 + signal.SIGINT    # 130: interrupted (Ctrl-C)
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: terminated (SIGTERM)

#: ``lguest run``'s exit statuses, as printed by ``--help`` and docs/CLI.md.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_SHUTDOWN, "the guest shut down (SHUTDOWN hypercall: power-off, or a guest's own panic)"),
    (EXIT_KILLED, "the host killed the guest (the kill reason is printed)"),
    (EXIT_USAGE, "usage error: bad option, image or LGUEST_SYSCALL_VECTOR"),
    (EXIT_TIMEOUT, "--timeout expired"),
    (EXIT_RESTART, "the guest asked to be restarted (SHUTDOWN with LGUEST_SHUTDOWN_RESTART)"),
    (EXIT_VECTOR_BUSY, "the syscall vector is in use by the host"),
    (EXIT_REPLAY_DIFFERS, "--replay: the run differs from the recording (the differences are printed)"),
    (EXIT_INTERNAL, "internal error (a bug, or an unsupported Unicorn build)"),
    (EXIT_SIGINT, "interrupted by SIGINT (Ctrl-C)"),
    (EXIT_SIGTERM, "terminated by SIGTERM"),
)


def _exit_table() -> str:
    return "exit status:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES)


class UsageError(Exception):
    """A user mistake: printed as ``lguest: <message>``, exit status 2."""


# --- argument parsing ---------------------------------------------------------------------------
def parse_int(text: str) -> int:
    """Decimal or 0x-hex."""
    t = text.strip()
    try:
        return int(t, 16) if t.lower().startswith("0x") else int(t, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use decimal or 0x-hex)") from None


def parse_vector(text: str) -> int:
    """A vector 0..255, decimal or 0x-hex."""
    v = parse_int(text)
    if not 0 <= v <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (a vector is 0..255, i.e. 0x00..0xff)")
    return v


_SIZE = re.compile(r"(0x[0-9a-f]+|[0-9]+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SIZE_FORMS = "a number of bytes with an optional K, M or G suffix in any case (16M, 16mib, 65536, 0x1000000)"


def parse_size(text: str) -> int:
    """Bytes: a number (decimal or 0x-hex) with an optional K, M or G suffix
    in any case, optionally followed by B or iB (binary units either way)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use {_SIZE_FORMS}")
    digits, unit = m.groups()
    size = int(digits, 16 if digits.lower().startswith("0x") else 10) * _SCALE[unit.lower()]
    if size <= 0 or size % PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive multiple of 4 KiB ({PAGE_SIZE} bytes)")
    return size


def parse_timeout(text: str) -> float:
    """Seconds, a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _mib(n: int) -> str:
    """A byte count for humans: KiB or MiB, exact."""
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


def _default_vector() -> int | None:
    env = os.environ.get("LGUEST_SYSCALL_VECTOR")
    if env is None or env == "":
        return None
    try:
        return parse_vector(env)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"LGUEST_SYSCALL_VECTOR: {exc}") from None


def _busy_line(exc: VectorBusy) -> str:
    return f"{PROG}: {exc}: vector in use by {exc.owner or 'the host'}"


class _Parser(argparse.ArgumentParser):
    """argparse with lguest's one-line errors: ``lguest: --memory: '1t' is not a size ...``."""

    def error(self, message: str) -> NoReturn:
        # "argument --memory: <why>" -> "--memory: <why>"; "argument IMAGE: ..." likewise.
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[-1] + ": ", message)
        sub = self.prog.removeprefix(PROG).strip()
        hint = f" (see {PROG}{' ' + sub if sub else ''} --help)"
        sys.stderr.write(f"{PROG}: {message}{hint}\n")
        raise SystemExit(EXIT_USAGE)


def _version() -> str:
    from importlib import metadata

    from . import CORE, __version__

    try:
        uc = f"Unicorn {metadata.version('unicorn')}"
    except metadata.PackageNotFoundError:
        uc = "Unicorn not installed"
    return f"{PROG} {__version__} (core: {CORE}; {uc}; Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="lguest's interrupt and trap machinery: host vectors and guest images.",
        epilog="Vectors accept decimal or 0x-hex. LGUEST_SYSCALL_VECTOR sets the default --syscall-vector.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    vec = sub.add_parser(
        "vectors",
        help="show the host's used interrupt vectors and whether a syscall vector can be reserved",
        description="Print the used-vector table (who owns what) and, with --syscall-vector, "
        "whether that vector can be reserved. Exit status 0 if it can, 1 if not, 2 on usage errors.",
    )
    vec.add_argument("--syscall-vector", type=parse_vector, default=None, metavar="N",
                     help="the syscall vector to check (default 0x80, or $LGUEST_SYSCALL_VECTOR)")
    vec.add_argument("--free", action="store_true",
                     help="list the vectors a syscall vector may take instead of the used ones")
    vec.add_argument("--json", action="store_true",
                     help="print the used table, the free vectors and the verdict as one JSON object")

    run = sub.add_parser(
        "run",
        help="run a guest image on the Unicorn emulator",
        description="Run an ELF32 i386 lguest guest image on the Unicorn backend (pip install 'lguest[unicorn]'). "
        "The guest's console goes to stdout; everything the host says goes to stderr. "
        "Ctrl-C (SIGINT) or SIGTERM stops the guest within half a second and still prints --stats/--trace.",
        epilog=_exit_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("image", metavar="IMAGE", help="ELF32 i386 guest kernel")
    run.add_argument("--syscall-vector", type=parse_vector, default=None, metavar="N",
                     help="the guests' system-call vector (default 0x80, or $LGUEST_SYSCALL_VECTOR)")
    run.add_argument("--memory", type=parse_size, default=16 << 20, metavar="SIZE",
                     help="guest memory, e.g. 16M (default), 64k, 65536 or 0x1000000; "
                          f"4 KiB to {_mib(SWITCHER_ADDR)} in 4 KiB steps")
    run.add_argument("--page-offset", type=parse_int, default=0, metavar="A",
                     help="guest kernel's virtual base, e.g. 0xC0000000 (default 0: flat, no paging); "
                          "a multiple of 4 MiB, at least --memory, below 0xffc00000")
    run.add_argument("--timeout", type=parse_timeout, default=None, metavar="S",
                     help="stop after S seconds (a positive number)")
    run.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                     help="virtual (repeatable, default) or wall-clock time")
    run.add_argument("--core", choices=("cython", "python"), default=None,
                     help="the core that runs the guest (default: the active one, see lguest --version)")
    run.add_argument("--stats", action="store_true", help="print the counters as a table at the end (stderr)")
    run.add_argument("--trace", action="store_true", help="print the last trap/interrupt events at the end (stderr)")
    run.add_argument("--trace-out", default=None, metavar="FILE.json",
                     help="write a timeline (Chrome trace-event JSON: Perfetto, chrome://tracing) of every "
                     "delivery, hypercall, timer fire and kill; written however the run ends")
    run.add_argument("--trace-limit", type=parse_positive, default=None, metavar="N",
                     help="keep the newest N timeline events (default 1000000; the rest are counted as dropped)")
    run.add_argument("--record", default=None, metavar="FILE",
                     help="log the run's inputs (irqs, wall-clock timer fires, timestamps) with the guest's "
                     "position, for --replay")
    run.add_argument("--replay", default=None, metavar="FILE",
                     help="run again with the inputs of a --record FILE (and its clock); check the console, "
                     "counters and registers, naming the first checkpoint that differs")
    run.add_argument("--gdb", type=parse_port, default=None, metavar="PORT",
                     help="wait for gdb on 127.0.0.1:PORT before the first instruction (0: a free port, printed)")
    add_exec_parser(sub)
    return parser


class _ExecUsage(Exception):
    """A usage error of `lguest exec` (exit 125, not argparse's 2)."""


def _exec_error(message: str) -> Any:
    raise _ExecUsage(message)


def add_exec_parser(sub: Any) -> None:
    exe = sub.add_parser(
        "exec",
        help="run a static Linux i386 program under the lguest exec guest kernel",
        description="Run PROGRAM (a static ELF32 i386 Linux executable; a path inside --root, whose / is the "
        "working directory) under the guest kernel, its system calls direct traps into the guest kernel. "
        "Exits with the program's status (128+N for signal N); lguest's own outcomes: 124 timeout, 125 usage "
        "errors and a killed guest kernel, 126 not a static ELF32 i386 program, 127 not found, 130/143 "
        "interrupted by SIGINT/SIGTERM, each with one line on stderr.",
    )
    exe.error = _exec_error  # type: ignore[method-assign]  # usage errors exit 125 here, as env(1)'s do
    exe.add_argument("--root", metavar="DIR", default=None,
                     help="host directory packed into the guest's in-memory root (default: just PROGRAM, a host file)")
    exe.add_argument("--memory", type=parse_size, default=128 << 20, metavar="SIZE", help="guest memory (default 128M)")
    exe.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                     help="virtual (repeatable, default) or wall-clock time")
    exe.add_argument("--syscall-vector", type=parse_vector, default=None, metavar="N",
                     help="also take system calls at int $N (0x80 always works; "
                     "default $LGUEST_SYSCALL_VECTOR or 0x80)")
    exe.add_argument("--timeout", type=parse_timeout, default=None, metavar="S",
                     help="stop after S seconds (exit 124)")
    exe.add_argument("--stats", action="store_true",
                     help="on stderr at exit: system calls by name, direct vs reflected traps, hypercalls")
    exe.add_argument("--export", metavar="DIR", default=None, help="write the final root tree to host DIR at exit")
    exe.add_argument("program", metavar="PROGRAM")
    exe.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")


# --- lguest vectors -----------------------------------------------------------------------------
def free_vectors(used: UsedVectors) -> list[int]:
    """The vectors a syscall vector may take: Linux's 0x80 and every vector nobody owns."""
    return [v for v in range(256) if v == SYSCALL_VECTOR or used.owner(v) is None]


def _ranges(vectors: list[int]) -> str:
    """0x20-0x2f, 0x40-0x7f, ...: consecutive runs folded."""
    out: list[str] = []
    start = prev = None
    for v in [*vectors, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            out.append(f"{start:#04x}" if start == prev else f"{start:#04x}-{prev:#04x}")
        start = prev = v
    return ", ".join(out)


def cmd_vectors(args: argparse.Namespace) -> int:
    used = UsedVectors.default()
    vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    if vector is None:
        vector = SYSCALL_VECTOR
    free = free_vectors(used)
    host = Host(vector, used)
    try:
        host.init_interrupts()
    except VectorBusy as exc:
        busy: VectorBusy | None = exc
    else:
        busy = None
        host.free_interrupts()
    if args.json:
        verdict = {"vector": vector, "available": busy is None,
                   "owner": busy.owner if busy is not None else None,
                   "message": _busy_line(busy).removeprefix(f"{PROG}: ") if busy is not None else None}
        doc = {"used": [{"vector": v, "owner": owner} for v, owner in used.table()],
               "free": free, "syscall_vector": verdict}
        print(json.dumps(doc, indent=2))
        return 0 if busy is None else 1
    if args.free:
        print(f"free for a syscall vector: {_ranges(free)}  ({len(free)} vectors; 0x80 is Linux's own)")
    else:
        print("vector  owner")
        for v, owner in used.table():
            print(f"  {v:#04x}  {owner}")
    if busy is not None:
        print(_busy_line(busy))
        return 1
    if vector == SYSCALL_VECTOR:
        print(f"syscall vector {vector:#x}: Linux's own, always available")
    else:
        print(f"syscall vector {vector:#x} ({vector}): free, can be reserved")
    return 0


# --- lguest run: checks that turn every bad input into one line ------------------------------------
def check_layout(memory: int, page_offset: int) -> None:
    """The memory/page-offset rules UnicornLauncher enforces, with the ranges spelled out."""
    top = SWITCHER_ADDR  # the Switcher's 4 MiB at the top of the address space
    if page_offset:
        if page_offset % (4 << 20) or not 0 < page_offset < top:
            raise UsageError(f"--page-offset: {page_offset:#x} is not a multiple of 4 MiB (0x400000) below "
                             f"the Switcher at {top:#x} (e.g. 0xC0000000, or 0 for no paging)")
        if page_offset < memory:
            raise UsageError(f"--page-offset: {page_offset:#x} lies inside guest RAM ({_mib(memory)}); "
                             f"it must be at least --memory ({memory:#x})")
        if page_offset + memory > top:
            raise UsageError(f"--memory: {_mib(memory)} at --page-offset {page_offset:#x} overlaps the Switcher; "
                             f"the largest is {_mib(top - page_offset)}")
    elif memory > top:
        raise UsageError(f"--memory: {_mib(memory)} is too large: the backend takes 4 KiB to {_mib(top)} "
                         "(the top 4 MiB of the 32-bit address space hold the Switcher)")


#: The largest image file read: a 32-bit guest cannot load more.
MAX_IMAGE = 1 << 32


def load_image(path: str, memory: int) -> tuple[int, list[tuple[int, bytes, int]]]:
    """Read and check an ELF32 i386 image: (entry, segments), or UsageError."""
    from .unicorn import parse_elf32  # the loader UnicornLauncher.load_elf uses

    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{path}: is a directory, not a guest image")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: not a regular file")  # /dev/zero would be read forever
        if st.st_size > MAX_IMAGE:
            raise UsageError(f"{path}: {st.st_size} bytes is too large for a 32-bit guest image")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data:
        raise UsageError(f"{path}: empty file, not an ELF image")
    if data[:4] == b"\x7fELF" and len(data) > 4 and data[4] == 2:
        raise UsageError(f"{path}: a 64-bit ELF file; lguest guests are 32-bit i386 (link with ld -m elf_i386)")
    try:
        entry, segments = parse_elf32(data)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if not segments:
        raise UsageError(f"{path}: no loadable (PT_LOAD) segments")
    need = max(paddr + memsz for paddr, _raw, memsz in segments)
    if need > memory:
        fit = -(-need // (1 << 20)) << 20
        raise UsageError(f"{path}: segments do not fit in {_mib(memory)} of guest memory: "
                         f"they need {need} bytes ({need:#x}); try --memory {fit >> 20}M")
    return entry, segments


def _import_backend() -> Any:
    """UnicornLauncher, or UsageError saying which piece is missing."""
    from importlib import util

    if util.find_spec("unicorn") is None:
        raise UsageError("the Unicorn backend needs Unicorn 2.1.4: install it with pip install 'lguest[unicorn]'")
    try:
        from .unicorn import UnicornLauncher
    except ImportError as exc:
        missing = {getattr(e, "name", None) for e in (exc, exc.__cause__)}
        if "lguest.unicorn._uchook" in missing:  # tell "hooks not built" from "Unicorn missing"
            cause = exc.__cause__ or exc
            raise UsageError(f"the compiled Unicorn hooks (lguest.unicorn._uchook) are not built ({cause}); "
                             "rebuild the package: pip install -e . (needs Cython and a C compiler)") from None
        raise UsageError(f"the Unicorn backend is not usable: {exc}") from None
    return UnicornLauncher


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


# --- lguest run: output ------------------------------------------------------------------------
def _progress(launcher: Any, stop: threading.Event) -> None:
    last_t = time.monotonic()
    last = dict(launcher.stats)
    shown = False
    while not stop.wait(1.0):
        now = time.monotonic()
        cur = dict(launcher.stats)
        dt = now - last_t
        blocks = cur.get("blocks", 0) - last.get("blocks", 0)
        irqs = sum(v for k, v in cur.items() if k.startswith("irq")) - sum(
            v for k, v in last.items() if k.startswith("irq"))
        sys.stderr.write(f"\r{PROG}: {blocks / dt / 1e6:8.2f} M blocks/s  {irqs / dt:10.0f} interrupts/s ")
        sys.stderr.flush()
        shown = True
        last, last_t = cur, now
    if shown:
        sys.stderr.write("\n")  # end the progress line before anything else is said
        sys.stderr.flush()


def print_summary(stats: dict[str, Any], elapsed: float, out: Any = None) -> None:
    """The final table: one counter per line, then rates."""
    out = sys.stderr if out is None else out
    print(f"{'counter':<32} {'value':>14}", file=out)
    print("-" * 47, file=out)
    for key in sorted(stats):
        value = stats[key]
        if isinstance(value, (int, float)):
            print(f"{key:<32} {value:>14}", file=out)
    print("-" * 47, file=out)
    print(f"{'run time (s)':<32} {elapsed:>14.3f}", file=out)
    blocks = stats.get("blocks")
    if isinstance(blocks, int) and elapsed > 0:
        print(f"{'guest blocks/s':<32} {blocks / elapsed:>14.0f}", file=out)


def print_brief(stats: dict[str, Any], elapsed: float, out: Any = None) -> None:
    """One line of totals: what --stats expands into a table."""
    out = sys.stderr if out is None else out

    def total(prefix: str) -> int:
        return sum(v for k, v in stats.items() if k.startswith(prefix) and isinstance(v, int))

    line = (f"{PROG}: {elapsed:.3f} s, {total('irq')} interrupts, {total('direct')} direct traps, "
            f"{total('reflected')} reflected traps, {total('hypercall')} hypercalls")
    blocks = stats.get("blocks")
    if isinstance(blocks, int) and elapsed > 0:
        line += f", {blocks / elapsed / 1e6:.2f} M guest blocks/s"
    print(line, file=out)


def outcome(reason: str, message: str | None, signum: int | None, elapsed: float) -> tuple[str, int]:
    """(the line saying how the run ended, the exit status) for a RunResult."""
    if signum is not None and reason in ("break", "timeout"):
        what = "interrupted" if signum == signal.SIGINT else "terminated"
        return f"{PROG}: {what} after {elapsed:.1f} s", 128 + signum
    if reason == "timeout":
        return f"{PROG}: timed out after {elapsed:.1f} s", EXIT_TIMEOUT
    text = message or ""
    if reason == "restart":
        return f"{PROG}: guest asked to restart: {text.removeprefix('CRASH: ')}", EXIT_RESTART
    if reason == "dead" and text.startswith("CRASH: "):
        # LHCALL_SHUTDOWN kills the guest with "CRASH: <its message>": a
        # power-off and a guest's own panic look the same, so say what it said.
        return f"{PROG}: guest shut down: {text.removeprefix('CRASH: ')}", EXIT_SHUTDOWN
    if reason == "dead":
        return f"{PROG}: guest killed by the host: {text}", EXIT_KILLED
    return f"{PROG}: guest stopped: {reason}", EXIT_KILLED


def parse_positive(text: str) -> int:
    n = parse_int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return n


def parse_port(text: str) -> int:
    n = parse_int(text)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port {text} out of range 0..65535")
    return n


def _debugging_options(args: argparse.Namespace) -> Any:
    """--record/--replay checked, the recording loaded (None without --replay)."""
    if args.record is not None and args.replay is not None:
        raise UsageError("--record and --replay are exclusive")
    if args.replay is None:
        return None
    from .host.record import load

    try:
        return load(args.replay)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--replay {args.replay}: {exc}") from None


def cmd_run(args: argparse.Namespace, sigs: _Signals) -> int:
    vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    if vector is None:
        vector = SYSCALL_VECTOR
    check_layout(args.memory, args.page_offset)
    UnicornLauncher = _import_backend()
    if args.core is not None:
        from . import load_core

        try:
            load_core(args.core)
        except ImportError as exc:
            raise UsageError(f"--core {args.core}: {exc}") from None
    entry, _segments = load_image(args.image, args.memory)
    replay = _debugging_options(args)
    timeline = None
    result = None
    report: list[str] = []

    def console(chunk: bytes) -> None:
        if chunk:
            sys.stdout.write(chunk.decode("latin-1"))
            sys.stdout.flush()
            sigs.at_line_start = chunk.endswith(b"\n")

    try:
        launcher = UnicornLauncher(memory=args.memory, syscall_vector=vector, page_offset=args.page_offset,
                                   clock=args.clock, console=console, core=args.core,
                                   trace_size=64 if args.trace else 0,
                                   record=args.record is not None, replay=replay)
    except ValueError as exc:
        raise UsageError(f"--memory/--page-offset: {exc}") from None
    try:
        launcher.__enter__()
    except VectorBusy as exc:
        print(_busy_line(exc), file=sys.stderr)
        return EXIT_VECTOR_BUSY
    except ImportError as exc:  # the installed Unicorn is not the version the backend is calibrated for
        raise UsageError(f"the Unicorn backend is not usable: {exc}") from None
    except (ValueError, MemoryError) as exc:
        raise UsageError(f"cannot set up {_mib(args.memory)} of guest memory: {exc or 'out of memory'}") from None
    except OSError as exc:
        raise UsageError(f"cannot set up {_mib(args.memory)} of guest memory: {exc.strerror or exc}") from None
    try:
        launcher.load_elf(args.image)
        if args.trace_out is not None:
            timeline = launcher.start_timeline(args.trace_limit)
        if args.gdb is not None:
            try:
                port = launcher.serve_gdb(args.gdb)
            except OSError as exc:
                raise UsageError(f"--gdb {args.gdb}: cannot listen on 127.0.0.1: {exc.strerror or exc}") from None
            print(f"{PROG}: waiting for gdb on 127.0.0.1:{port} (target remote :{port})", file=sys.stderr, flush=True)
        stop = threading.Event()
        ticker = None
        if sys.stderr.isatty():
            ticker = threading.Thread(target=_progress, args=(launcher, stop), daemon=True)
            ticker.start()
        t0 = time.monotonic()
        sigs.arm(launcher)
        try:
            result = launcher.run(timeout=args.timeout)
        finally:
            sigs.disarm()
            elapsed = time.monotonic() - t0
            stop.set()
            if ticker is not None:
                ticker.join()
        line, status = outcome(result.reason, result.message, sigs.signum, elapsed)
        if not sigs.at_line_start and sys.stdout.isatty():
            sys.stdout.write("\n")  # the guest left its console line open: don't glue our line to it
            sys.stdout.flush()
        print(line, file=sys.stderr)
        stats = dict(launcher.stats)
        if args.stats:
            print_summary(stats, elapsed)
        else:
            print_brief(stats, elapsed)
        if args.trace:
            print("\nlast events (time_ns, vector, eip, kind):", file=sys.stderr)
            for ev in launcher.run_stats.trace or ():
                print(f"  {ev.time_ns:>16} {ev.vector:>4} {ev.eip:#010x} {ev.kind}", file=sys.stderr)
            if not launcher.run_stats.trace:
                print("  (none)", file=sys.stderr)
    finally:
        # Every way out (power-off, kill, timeout, a signal) leaves whole files.
        if timeline is not None:
            timeline.write(args.trace_out)
        if args.record is not None:
            launcher.save_recording(args.record, result, args.image)
        if replay is not None and result is not None:
            report = launcher.replay_report(result, args.image)
        launcher.__exit__(None, None, None)
    if replay is not None:
        if report:
            print(f"{PROG}: the replay differs from the recording:", file=sys.stderr)
            for line in report:
                print(f"  {line}", file=sys.stderr)
            return EXIT_REPLAY_DIFFERS
        print(f"{PROG}: replay identical to the recording ({len(replay['events'])} inputs and checkpoints)",
              file=sys.stderr)
    return status


# --- lguest exec ---------------------------------------------------------------------------------
class _ExecTerminated(Exception):
    """SIGTERM arrived (exit 143)."""


def _write_all(fd: int) -> Any:
    def sink(data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            pass
    return sink


def cmd_exec(args: argparse.Namespace) -> int:
    import shutil
    import signal

    from .guestos.runner import print_exec_stats, run_program

    try:
        vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    except UsageError as exc:
        print(f"{PROG} exec: {exc}", file=sys.stderr)
        return 125
    if vector is None:
        vector = SYSCALL_VECTOR
    prog_args = args.args[1:] if args.args[:1] == ["--"] else args.args

    def on_term(signum: int, frame: Any) -> None:
        raise _ExecTerminated()

    old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        size = shutil.get_terminal_size((80, 24))
        result = run_program(args.program, prog_args, root=args.root, memory=args.memory, clock=args.clock,
                             syscall_vector=vector, timeout=args.timeout, stdin=0, stdout=_write_all(1),
                             stderr=_write_all(2), export=args.export,
                             tty=(os.isatty(0), os.isatty(1), os.isatty(2)), tty_size=(size.lines, size.columns))
    except KeyboardInterrupt:
        print(f"{PROG}: {args.program}: interrupted (SIGINT)", file=sys.stderr)
        return EXIT_SIGINT
    except _ExecTerminated:
        print(f"{PROG}: {args.program}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_SIGTERM
    except VectorBusy as exc:
        print(_busy_line(exc), file=sys.stderr)
        return 125
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if result.message:
        print(result.message, file=sys.stderr)
    if args.stats:
        print_exec_stats(result)
    return result.status


def main(argv: list[str] | None = None) -> int:
    """Run the ``lguest`` command with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["exec"]:
            # exec's own parser alone: an unknown option is exec's usage error (125, as env(1)), not the
            # top parser's (2)
            holder = argparse.ArgumentParser(prog=PROG, add_help=False)
            holder.error = _exec_error  # type: ignore[method-assign]
            add_exec_parser(holder.add_subparsers(dest="command"))
            args = holder.parse_args(argv)
        else:
            args = build_parser().parse_args(argv)
    except _ExecUsage as exc:
        print(f"{PROG} exec: {exc} (see lguest exec --help)", file=sys.stderr)
        return 125
    try:
        if args.command == "vectors":
            return cmd_vectors(args)
        if args.command == "exec":
            return cmd_exec(args)
        with _signals() as sigs:
            return cmd_run(args, sigs)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a signal before the handlers were in place
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback; LGUEST_DEBUG=1 shows it
        if os.environ.get("LGUEST_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (LGUEST_DEBUG=1 shows the traceback; "
              "please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
