"""What every ``lguest`` subcommand shares: exit statuses, the one-line usage error, argument parsers."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from typing import NoReturn

from ..constants import PAGE_SIZE
from ..host.vectors import VectorBusy

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
        sys.stderr.write(usage_line(message, self.prog.removeprefix(PROG).strip()) + "\n")
        raise SystemExit(EXIT_USAGE)


def _terminal_size() -> tuple[int, int]:
    """(lines, columns) as shutil.get_terminal_size((80, 24)) finds them
    ($LINES/$COLUMNS, else stdout's terminal), without importing shutil
    (with its compression modules, ~1.5 ms of `lguest exec`'s start-up)."""
    def env(name: str) -> int:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            return 0
    columns, lines = env("COLUMNS"), env("LINES")
    if columns <= 0 or lines <= 0:
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
            found = (size.lines, size.columns)
        except (AttributeError, ValueError, OSError):
            found = (24, 80)
        lines = lines if lines > 0 else found[0] or 24
        columns = columns if columns > 0 else found[1] or 80
    return lines, columns


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, its width found by :func:`_terminal_size`:
    argparse builds one for every add_argument, and its own imports shutil."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_size()[1] - 2 if width is None else width)


def usage_line(message: str, sub: str = "") -> str:
    """argparse's complaint as lguest's one line: ``lguest: --memory: <why>
    (see lguest exec --help)`` (argparse says "argument --memory: <why>")."""
    message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[-1] + ": ", message)
    return f"{PROG}: {message} (see {PROG}{' ' + sub if sub else ''} --help)"


def _version() -> str:
    from importlib import metadata

    from .. import CORE, __version__

    try:
        uc = f"Unicorn {metadata.version('unicorn')}"
    except metadata.PackageNotFoundError:
        uc = "Unicorn not installed"
    return f"{PROG} {__version__} (core: {CORE}; {uc}; Python {sys.version.split()[0]})"


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
