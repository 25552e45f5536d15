"""Which busybox the exec benchmarks run: ``--busybox PATH``, else
``LGUEST_BUSYBOX``, else the copy ``.ci/fetch-busybox`` caches in the
repository (Debian's busybox-static:i386)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CACHED = Path(__file__).resolve().parent.parent / ".cache" / "busybox-i386" / "bin" / "busybox"


def default() -> Path:
    return Path(os.environ.get("LGUEST_BUSYBOX") or CACHED)


def add_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--busybox", default=str(default()), help="the static i386 busybox (default: %(default)s)")


def checked(path: str | Path) -> Path | None:
    """``path`` if it is a file, else None after saying how to get one."""
    p = Path(path)
    if p.is_file():
        return p
    print(f"no busybox at {p}: run .ci/fetch-busybox", file=sys.stderr)
    return None
