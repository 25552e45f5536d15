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
import os
import sys

from .. import _startup
from .._startup import resume as _resume_gc
from ..constants import SWITCHER_ADDR
from .common import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_USAGE,
    PROG,
    UsageError,
    _exit_table,
    _mib,
    _Parser,
    _version,
    parse_int,
    parse_port,
    parse_positive,
    parse_size,
    parse_timeout,
    parse_vector,
    usage_line,
)
from .exec import _exec_error, _ExecUsage, add_exec_parser, cmd_exec

# `lguest run` (its signal watcher's socket), `lguest vectors` (json) are
# imported in main() when chosen: `lguest exec` is a start-up race against
# other emulators, and their modules cost it ~3 ms.

__all__ = ["EXIT_CODES", "PROG", "UsageError", "build_parser", "main", "parse_int", "parse_size",
           "parse_timeout", "parse_vector"]


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


def main(argv: list[str] | None = None) -> int:
    """Run the ``lguest`` command with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["exec"]:
            # exec's own parser alone: an unknown option is exec's usage error (125, as env(1)), not the
            # top parser's (2)
            holder = argparse.ArgumentParser(prog=PROG, add_help=False)
            holder.error = _exec_error  # type: ignore[method-assign]
            # prog given: argparse would build a HelpFormatter to spell it, which imports shutil
            add_exec_parser(holder.add_subparsers(dest="command", prog=PROG))
            args = holder.parse_args(argv)
        else:
            args = build_parser().parse_args(argv)
    except _ExecUsage as exc:
        print(usage_line(str(exc), "exec"), file=sys.stderr)
        return 125
    try:
        if args.command == "vectors":
            from .vectors import cmd_vectors
            _resume_gc()
            return cmd_vectors(args)
        if args.command == "exec":
            status = cmd_exec(args)
            if _startup.command_line:
                _startup.leave(status)  # no interpreter teardown: see lguest._startup
            return status
        from .run import cmd_run
        from .signals import _signals
        _resume_gc()
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
