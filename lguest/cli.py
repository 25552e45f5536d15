"""The ``lguest`` command: inspect host vectors and run guest images.

    lguest vectors [--syscall-vector N]
    lguest run IMAGE [--syscall-vector N] [--memory SIZE] [--page-offset A]
                     [--timeout S] [--stats] [--trace]
    lguest exec [--root DIR] [--memory SIZE] [--clock virtual|wall] [--syscall-vector N]
                [--timeout S] [--stats] [--export DIR] -- PROGRAM [ARGS...]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from .constants import SYSCALL_VECTOR
from .host.vectors import Host, UsedVectors, VectorBusy

PROG = "lguest"
_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_int(text: str) -> int:
    """Decimal or 0x-hex."""
    text = text.strip()
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (use decimal or 0x-hex)") from None


def parse_vector(text: str) -> int:
    v = parse_int(text)
    if not 0 <= v <= 255:
        raise argparse.ArgumentTypeError(f"vector {text} out of range 0..255")
    return v


def parse_size(text: str) -> int:
    """Bytes: a number (decimal or 0x-hex) optionally followed by K, M or G."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    scale = 1
    if t and t[-1] in _SUFFIXES:
        scale = _SUFFIXES[t[-1]]
        t = t[:-1]
    size = parse_int(t) * scale
    if size <= 0 or size % 4096:
        raise argparse.ArgumentTypeError(f"memory size {text} must be a positive multiple of 4096 bytes")
    return size


def _default_vector() -> int | None:
    env = os.environ.get("LGUEST_SYSCALL_VECTOR")
    if env is None or env == "":
        return None
    try:
        return parse_vector(env)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"{PROG}: LGUEST_SYSCALL_VECTOR: {exc}") from None


def _busy_line(exc: VectorBusy) -> str:
    return f"{PROG}: {exc}: vector in use by {exc.owner or 'the host'}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="lguest's interrupt and trap machinery: host vectors and guest images.",
        epilog="Vectors accept decimal or 0x-hex. LGUEST_SYSCALL_VECTOR sets the default --syscall-vector.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    vec = sub.add_parser(
        "vectors",
        help="show the host's used interrupt vectors and whether a syscall vector can be reserved",
        description="Print the used-vector table (who owns what) and, with --syscall-vector, "
        "whether that vector can be reserved. Exit status 0 if it can, 1 if not.",
    )
    vec.add_argument("--syscall-vector", type=parse_vector, default=None, metavar="N",
                     help="the syscall vector to check (default 0x80, or $LGUEST_SYSCALL_VECTOR)")

    run = sub.add_parser(
        "run",
        help="run a guest image on the Unicorn emulator",
        description="Run an ELF32 i386 lguest guest image on the Unicorn backend (pip install 'lguest[unicorn]'). "
        "Exit status 0 when the guest powers off, 1 when it is killed, 2 on usage errors, 3 on timeout.",
    )
    run.add_argument("image", metavar="IMAGE", help="ELF32 i386 guest kernel")
    run.add_argument("--syscall-vector", type=parse_vector, default=None, metavar="N",
                     help="the guests' system-call vector (default 0x80, or $LGUEST_SYSCALL_VECTOR)")
    run.add_argument("--memory", type=parse_size, default=16 << 20, metavar="SIZE",
                     help="guest memory, e.g. 16M (default), 65536 or 0x1000000")
    run.add_argument("--page-offset", type=parse_int, default=0, metavar="A",
                     help="guest kernel's virtual base, e.g. 0xC0000000 (default 0: flat, no paging)")
    run.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds")
    run.add_argument("--clock", choices=("virtual", "wall"), default="virtual",
                     help="virtual (repeatable, default) or wall-clock time")
    run.add_argument("--stats", action="store_true", help="print the counters as a table at the end")
    run.add_argument("--trace", action="store_true", help="print the last trap/interrupt events at the end")
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
    exe.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds (exit 124)")
    exe.add_argument("--stats", action="store_true",
                     help="on stderr at exit: system calls by name, direct vs reflected traps, hypercalls")
    exe.add_argument("--export", metavar="DIR", default=None, help="write the final root tree to host DIR at exit")
    exe.add_argument("program", metavar="PROGRAM")
    exe.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")


def cmd_vectors(args: argparse.Namespace) -> int:
    used = UsedVectors.default()
    vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    print("vector  owner")
    for v, owner in used.table():
        print(f"  {v:#04x}  {owner}")
    if vector is None:
        vector = SYSCALL_VECTOR
    host = Host(vector, used)
    try:
        host.init_interrupts()
    except VectorBusy as exc:
        print(_busy_line(exc))
        return 1
    host.free_interrupts()
    if vector == SYSCALL_VECTOR:
        print(f"syscall vector {vector:#x}: Linux's own, always available")
    else:
        print(f"syscall vector {vector:#x} ({vector}): free, can be reserved")
    return 0


def _progress(launcher: Any, stop: threading.Event) -> None:
    last_t = time.monotonic()
    last = dict(launcher.stats)
    while not stop.wait(1.0):
        now = time.monotonic()
        cur = dict(launcher.stats)
        dt = now - last_t
        insns = cur.get("blocks", 0) - last.get("blocks", 0)
        irqs = sum(v for k, v in cur.items() if k.startswith("irq")) - sum(
            v for k, v in last.items() if k.startswith("irq"))
        sys.stderr.write(f"\r{PROG}: {insns / dt / 1e6:8.2f} M blocks/s  {irqs / dt:10.0f} interrupts/s ")
        sys.stderr.flush()
        last, last_t = cur, now
    sys.stderr.write("\n")


def print_summary(stats: dict[str, Any], elapsed: float, out: Any = sys.stdout) -> None:
    """The final table: one counter per line, then rates."""
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


def print_brief(stats: dict[str, Any], elapsed: float, out: Any = sys.stdout) -> None:
    """One line of totals: what --stats expands into a table."""
    def total(prefix: str) -> int:
        return sum(v for k, v in stats.items() if k.startswith(prefix) and isinstance(v, int))

    line = (f"{PROG}: {elapsed:.3f} s, {total('irq')} interrupts, {total('direct')} direct traps, "
            f"{total('reflected')} reflected traps, {total('hypercall')} hypercalls")
    blocks = stats.get("blocks")
    if isinstance(blocks, int) and elapsed > 0:
        line += f", {blocks / elapsed / 1e6:.2f} M guest blocks/s"
    print(line, file=out)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        from .unicorn import UnicornLauncher
    except ImportError as exc:
        print(f"{PROG}: the Unicorn backend is not available ({exc}); install it with: pip install 'lguest[unicorn]'",
              file=sys.stderr)
        return 2
    vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    if vector is None:
        vector = SYSCALL_VECTOR
    if not os.path.exists(args.image):
        print(f"{PROG}: {args.image}: no such file", file=sys.stderr)
        return 2

    def console(chunk: bytes) -> None:
        sys.stdout.write(chunk.decode("latin-1"))
        sys.stdout.flush()

    try:
        launcher = UnicornLauncher(memory=args.memory, syscall_vector=vector, page_offset=args.page_offset,
                                   clock=args.clock, console=console, trace_size=64 if args.trace else 0)
        launcher.__enter__()
    except VectorBusy as exc:
        print(_busy_line(exc), file=sys.stderr)
        return 1
    try:
        launcher.load_elf(args.image)
        stop = threading.Event()
        ticker = None
        if sys.stderr.isatty():
            ticker = threading.Thread(target=_progress, args=(launcher, stop), daemon=True)
            ticker.start()
        t0 = time.monotonic()
        result = launcher.run(timeout=args.timeout)
        elapsed = time.monotonic() - t0
        stop.set()
        if ticker is not None:
            ticker.join()
        print(f"\n{PROG}: guest stopped: {result.reason}" + (f": {result.message!r}" if result.message else ""))
        stats = dict(launcher.stats)
        if args.stats:
            print_summary(stats, elapsed)
        else:
            print_brief(stats, elapsed)
        trace = launcher.run_stats.trace if args.trace else None
        if trace:
            print("\nlast events (time_ns, vector, eip, kind):")
            for ev in trace:
                print(f"  {ev.time_ns:>16} {ev.vector:>4} {ev.eip:#010x} {ev.kind}")
    finally:
        launcher.__exit__(None, None, None)
    if result.reason == "timeout":
        return 3
    # SHUTDOWN (power-off or restart) is the guest's own choice; any other
    # death is the host killing a misbehaving guest.
    shut_down = result.reason == "restart" or (result.message or "").startswith("CRASH: ")
    return 0 if shut_down else 1


class _Terminated(Exception):
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

    from .guestos.runner import EXIT_SIGINT, EXIT_SIGTERM, print_exec_stats, run_program

    vector = args.syscall_vector if args.syscall_vector is not None else _default_vector()
    if vector is None:
        vector = SYSCALL_VECTOR
    prog_args = args.args[1:] if args.args[:1] == ["--"] else args.args

    def on_term(signum: int, frame: Any) -> None:
        raise _Terminated()

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
    except _Terminated:
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
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["exec"]:
            # exec's own parser alone: an unknown option is exec's usage error (125), not the top parser's
            holder = argparse.ArgumentParser(prog=PROG, add_help=False)
            holder.error = _exec_error  # type: ignore[method-assign]
            add_exec_parser(holder.add_subparsers(dest="command"))
        else:
            holder = build_parser()
        args = holder.parse_args(argv)
    except _ExecUsage as exc:
        print(f"{PROG} exec: {exc} (see lguest exec --help)", file=sys.stderr)
        return 125
    if args.command == "vectors":
        return cmd_vectors(args)
    if args.command == "exec":
        return cmd_exec(args)
    return cmd_run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
