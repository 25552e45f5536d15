"""The ``lguest`` command: inspect host vectors and run guest images.

    lguest vectors [--syscall-vector N]
    lguest run IMAGE [--syscall-vector N] [--memory SIZE] [--page-offset A]
                     [--timeout S] [--stats] [--trace] [--trace-out FILE.json]
                     [--record FILE | --replay FILE] [--gdb PORT]
"""

from __future__ import annotations

import argparse
import os
import signal
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
    run.add_argument("--trace-out", default=None, metavar="FILE.json",
                     help="write a timeline (Chrome trace-event JSON: Perfetto, chrome://tracing) of every "
                     "delivery, hypercall, timer fire and kill")
    run.add_argument("--trace-limit", type=int, default=None, metavar="N",
                     help="keep the newest N timeline events (default 1000000; the rest are counted as dropped)")
    run.add_argument("--record", default=None, metavar="FILE",
                     help="log the run's inputs (irqs, wall-clock timer fires, timestamps) with the guest's "
                     "position, for --replay")
    run.add_argument("--replay", default=None, metavar="FILE",
                     help="run again with the inputs of a --record FILE (its clock) and check the console, "
                     "counters and registers; exit 1 naming the first checkpoint that differs")
    run.add_argument("--gdb", type=int, default=None, metavar="PORT",
                     help="wait for gdb on 127.0.0.1:PORT before the first instruction (0: a free port, printed)")
    return parser


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


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


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

    if args.record is not None and args.replay is not None:
        print(f"{PROG}: --record and --replay are exclusive", file=sys.stderr)
        return 2
    replay = None
    if args.replay is not None:
        from .host.record import load
        try:
            replay = load(args.replay)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: --replay: {exc}", file=sys.stderr)
            return 2
    timeline = None
    result = None
    if (args.trace_out or args.record) is not None and threading.current_thread() is threading.main_thread():
        # SIGTERM ends the run like Ctrl-C: through the finally below, which writes the file.
        signal.signal(signal.SIGTERM, _terminated)
    try:
        launcher = UnicornLauncher(memory=args.memory, syscall_vector=vector, page_offset=args.page_offset,
                                   clock=args.clock, console=console, trace_size=64 if args.trace else 0,
                                   record=args.record is not None, replay=replay)
        launcher.__enter__()
    except VectorBusy as exc:
        print(_busy_line(exc), file=sys.stderr)
        return 1
    try:
        launcher.load_elf(args.image)
        if args.trace_out is not None:
            timeline = launcher.start_timeline(args.trace_limit)
        if args.gdb is not None:
            port = launcher.serve_gdb(args.gdb)
            print(f"{PROG}: waiting for gdb on 127.0.0.1:{port} (target remote :{port})", file=sys.stderr, flush=True)
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
        # Every way out (power-off, kill, timeout, Ctrl-C, SIGTERM) leaves a whole file.
        if timeline is not None:
            timeline.write(args.trace_out)
        if args.record is not None:
            launcher.save_recording(args.record, result, args.image)
        report = launcher.replay_report(result, args.image) if replay is not None and result is not None else []
        launcher.__exit__(None, None, None)
    if replay is not None:
        if report:
            print(f"{PROG}: the replay differs from the recording:")
            for line in report:
                print(f"  {line}")
            return 1
        print(f"{PROG}: replay identical to the recording ({len(replay['events'])} inputs and checkpoints)")
    if result.reason == "timeout":
        return 3
    # SHUTDOWN (power-off or restart) is the guest's own choice; any other
    # death is the host killing a misbehaving guest.
    shut_down = result.reason == "restart" or (result.message or "").startswith("CRASH: ")
    return 0 if shut_down else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "vectors":
        return cmd_vectors(args)
    return cmd_run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
