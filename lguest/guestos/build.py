"""Finding (and if need be building) the guest kernel ``lguest-kernel.elf``.

The kernel is C for i386 (``kernel/``: gcc ``-m32 -ffreestanding``, binutils,
no libc or libgcc).  The package build puts it beside this module when the
compiler can target i386; otherwise it is built on first use into a cache
directory keyed by the sources' hash; where that fails too,
:class:`KernelUnavailable` says how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# hashlib, shutil, subprocess and tempfile (~6 ms together) are imported
# where they are used: every `lguest exec` checks the kernel's hash, but
# only the first one builds it.

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "kernel"
KERNEL_NAME = "lguest-kernel.elf"

HOW_TO_GET = ("the lguest exec guest kernel needs gcc able to target i386 (-m32) and binutils: "
              "install them (Debian: apt-get install gcc binutils), then run "
              f"`make -C {SOURCES}` or set LGUEST_KERNEL to a built lguest-kernel.elf")


class KernelUnavailable(RuntimeError):
    """No guest kernel, and it cannot be built here."""


def _sha256() -> Any:
    """A fresh SHA-256, from the interpreter's own module when it has one:
    hashlib loads OpenSSL first (~2 ms of every start-up); the digest is
    the same."""
    try:
        from _sha256 import sha256  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython >= 3.12
        except ImportError:
            from hashlib import sha256
    return sha256()


def source_hash() -> str:
    h = _sha256()
    for p in sorted(SOURCES.iterdir()):
        if p.suffix in (".c", ".h", ".S", ".ld") or p.name == "Makefile":
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lguest" / f"kernel-{source_hash()}"


def build(out_dir: str | os.PathLike[str]) -> Path:
    """Build the kernel into ``out_dir``; KernelUnavailable with the compiler's words if it fails."""
    import shutil
    import subprocess
    import tempfile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make = shutil.which("make")
    if make is None or shutil.which(os.environ.get("CC", "gcc")) is None:
        raise KernelUnavailable("no make or gcc here; " + HOW_TO_GET)
    # Build in a temporary file and rename: concurrent first uses never see half a kernel.
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        proc = subprocess.run([make, "-s", "-C", str(SOURCES), f"O={tmp}"], capture_output=True, text=True)
        built = Path(tmp) / KERNEL_NAME
        if proc.returncode or not built.exists():
            raise KernelUnavailable(f"building the guest kernel failed: {proc.stderr.strip()[-800:]}; " + HOW_TO_GET)
        final = out / KERNEL_NAME
        os.replace(built, final)
    return final


def kernel_path() -> Path:
    """The guest kernel to boot: $LGUEST_KERNEL, the packaged one, the cached
    one, or a fresh build into the cache."""
    env = os.environ.get("LGUEST_KERNEL")
    if env:
        p = Path(env)
        if not p.is_file():
            raise KernelUnavailable(f"LGUEST_KERNEL={env}: no such file")
        return p
    packaged = HERE / KERNEL_NAME
    stamp = HERE / "lguest-kernel.hash"
    if packaged.is_file() and stamp.is_file() and stamp.read_text().strip() == source_hash():
        return packaged
    cached = cache_dir() / KERNEL_NAME
    if cached.is_file():
        return cached
    return build(cache_dir())
