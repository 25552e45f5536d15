"""``lguest exec``: run a static Linux program on the guest kernel (docs/EXEC.md)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from ..constants import SYSCALL_VECTOR
from ..host.vectors import VectorBusy
from .common import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    PROG,
    UsageError,
    _busy_line,
    _default_vector,
    _Formatter,
    _terminal_size,
    parse_size,
    parse_timeout,
    parse_vector,
)


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
        formatter_class=_Formatter,
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
    exe.add_argument("--trace-out", metavar="FILE", default=None,
                     help="write a timeline of the run (Chrome trace-event JSON: interrupts, system calls, "
                     "hypercalls, timer fires) to FILE")
    rr = exe.add_mutually_exclusive_group()
    rr.add_argument("--record", metavar="FILE", default=None,
                    help="log the run's inputs (stdin, wall-clock timer fires and timestamps, rdtsc) with the guest's "
                    "position to FILE, to replay it exactly")
    rr.add_argument("--replay", metavar="FILE", default=None,
                    help="replay a --record FILE (stdin is not read): same output, status and counters, or the "
                    "first difference (exit 125)")
    exe.add_argument("program", metavar="PROGRAM")
    exe.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")


# --- lguest exec ---------------------------------------------------------------------------------
class _ExecTerminated(Exception):
    """SIGTERM arrived (exit 143)."""


def cmd_exec(args: argparse.Namespace) -> int:
    from .. import _startup
    from .._startup import resume as _resume_gc
    from ..guestos.runner import print_exec_stats, run_program

    _resume_gc()  # the last of the start-up imports is in

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
        result = run_program(args.program, prog_args, root=args.root, memory=args.memory, clock=args.clock,
                             syscall_vector=vector, timeout=args.timeout, stdin=0, stdout=1, stderr=2,
                             export=args.export,
                             tty=(os.isatty(0), os.isatty(1), os.isatty(2)), tty_size=_terminal_size(),
                             record=args.record, replay=args.replay, trace_out=args.trace_out,
                             _leaving=_startup.command_line)  # main() then leaves at once
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
    if result.replay is not None:
        if result.replay:
            print(f"{PROG}: the replay differs from the recording:", file=sys.stderr)
            for line in result.replay:
                print(f"  {line}", file=sys.stderr)
            return 125
        print(f"{PROG}: replay identical to the recording ({result.replay_inputs} inputs and checkpoints)",
              file=sys.stderr)
    return result.status
