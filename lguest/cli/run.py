"""``lguest run``: run a guest image on the Unicorn backend and report how it ended."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

from ..constants import SYSCALL_VECTOR
from ..host.vectors import VectorBusy
from .common import (
    EXIT_KILLED,
    EXIT_REPLAY_DIFFERS,
    EXIT_RESTART,
    EXIT_SHUTDOWN,
    EXIT_TIMEOUT,
    EXIT_VECTOR_BUSY,
    PROG,
    UsageError,
    _busy_line,
    _default_vector,
    _mib,
)
from .image import _import_backend, check_layout, load_image
from .signals import _Signals


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
    # Kill messages carry guest text (LHCALL_SHUTDOWN's string, read from
    # guest memory): escape control characters so the line stays one inert
    # line on a terminal.  RunResult.message itself keeps the exact bytes.
    # (The kernel's own kill messages end in a newline, printk style.)
    text = repr(message.rstrip("\n"))[1:-1] if message else ""
    if reason == "restart":
        return f"{PROG}: guest asked to restart: {text.removeprefix('CRASH: ')}", EXIT_RESTART
    if reason == "dead" and text.startswith("CRASH: "):
        # LHCALL_SHUTDOWN kills the guest with "CRASH: <its message>": a
        # power-off and a guest's own panic look the same, so say what it said.
        return f"{PROG}: guest shut down: {text.removeprefix('CRASH: ')}", EXIT_SHUTDOWN
    if reason == "dead":
        return f"{PROG}: guest killed by the host: {text}", EXIT_KILLED
    return f"{PROG}: guest stopped: {reason}", EXIT_KILLED


def _debugging_options(args: argparse.Namespace) -> Any:
    """--record/--replay checked, the recording loaded (None without --replay)."""
    if args.record is not None and args.replay is not None:
        raise UsageError("--record and --replay are exclusive")
    if args.replay is None:
        return None
    from ..host.record import load

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
        from .. import load_core

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
        inputs = len(replay["events"]) + len(replay.get("sync", []))
        print(f"{PROG}: replay identical to the recording ({inputs} inputs and checkpoints)", file=sys.stderr)
    return status
