"""Helpers and hand-copied ABI numbers shared by the core tests.

The numbers are copied from ABI.md on purpose (not imported from lguest), so
the tests check the implementation's constants instead of trusting them.
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest

import lguest

PAGE = 4096
MEM_PAGES = 64
MEM_SIZE = MEM_PAGES * PAGE
M32 = 0xFFFFFFFF

#: Where the tests' guests keep struct lguest_data.
LD = 0x1000

# struct lguest_data field offsets (ABI.md section 2)
LD_IRQ_ENABLED = 0
LD_BLOCKED = 4
LD_CR2 = 8
LD_TIME = 12
LD_HCALL_STATUS = 20
LD_SYSCALL_VEC = 1132
LD_SIZE = 1136

# The run-loop tests' guest kernel: where it runs, its stack, an irq handler.
EIP = 0x5000
STACK = 0x8000
IRQ_HANDLER = 0x6000

REG_NAMES = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "gs", "fs", "ds",
             "es", "trapnum", "errcode", "eip", "cs", "eflags", "esp", "ss")

# gate words: b = handler[31:16] | P | DPL | type
TRAP_GATE = 0x8F00
INTR_GATE = 0x8E00


def gate(handler, flags=TRAP_GATE, selector=0x61):
    """(a, b) of an IDT gate to `handler` (as set_trap would store it)."""
    return ((selector << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | flags)


def set_regs(cpu, **values):
    for name, value in values.items():
        setattr(cpu.regs, name, value)


def install(cpu, vector, handler, flags=TRAP_GATE):
    """The guest's LOAD_IDT_ENTRY for a present gate to ``handler`` (selector
    0x60: the core makes it the guest's 0x61)."""
    cpu.load_guest_idt_entry(vector, (0x60 << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | flags)


def hc(n, a1=0, a2=0, a3=0):
    """A ScriptedBackend step: the guest makes hypercall n through trap 31."""
    return dict(eax=n, ebx=a1, ecx=a2, edx=a3, trapnum=31)


def prepare(cpu, mem, *, irq_enabled=0x200, blocked=0):
    """A guest kernel that has done LGUEST_INIT (lguest_data at LD), with an
    empty async ring, about to run at EIP on STACK."""
    cpu.guest.lguest_data = LD
    mem.write_u32(LD + LD_IRQ_ENABLED, irq_enabled)
    mem.write_u32(LD + LD_BLOCKED, blocked)
    mem.write(LD + LD_HCALL_STATUS, b"\xff" * 64)
    set_regs(cpu, eip=EIP, cs=0x61, eflags=0x202, esp=STACK, ss=0x69, ds=0x69, es=0x69)
    return cpu


def regs_dict(cpu):
    return {name: int(getattr(cpu.regs, name)) for name in REG_NAMES}


def words(mem, addr, n):
    """n little-endian u32 words at addr (host-side read)."""
    return [mem.read_u32(addr + 4 * i) for i in range(n)]


def pure_python_only():
    """LGUEST_PURE_PYTHON=1: only the pure-Python core is tested."""
    return os.environ.get("LGUEST_PURE_PYTHON") not in (None, "", "0")


def core_names():
    """The cores that must be tested in this run."""
    return ["python"] if pure_python_only() else ["python", "cython"]


def load_core_or_fail(name):
    try:
        return lguest.load_core(name)
    except Exception as exc:  # ImportError, build problems, ...
        pytest.fail(f"cannot load the {name} core: {exc!r} "
                    "(set LGUEST_PURE_PYTHON=1 to test the pure-Python core only)")


# --- the example guest (examples/guest/guest.S), built at test time ----------------------
EXAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "guest")


def build_example(outdir, name, page_offset=0, **defsyms):
    """Assemble and link examples/guest/guest.S (as --32, ld -m elf_i386)
    with --defsym NAME=VALUE into ``outdir``; returns the ELF's path."""
    import subprocess

    obj = os.path.join(outdir, f"{name}.o")
    elf = os.path.join(outdir, f"{name}.elf")
    syms = dict(defsyms, PAGE_OFFSET=page_offset)
    args = [f"--defsym={k}={v:#x}" for k, v in syms.items()]
    subprocess.run(["as", "--32", *args, "-o", obj, os.path.join(EXAMPLE_DIR, "guest.S")], check=True)
    subprocess.run(["ld", "-m", "elf_i386", f"--defsym=PAGE_OFFSET={page_offset:#x}", "-T",
                    os.path.join(EXAMPLE_DIR, "guest.ld"), "-o", elf, obj], check=True, capture_output=True)
    return elf


def elf_symbols(elf):
    """{name: address} from nm."""
    import subprocess

    out = subprocess.run(["nm", elf], check=True, capture_output=True, text=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


def default_signals() -> None:
    """``preexec_fn`` for a child that must see SIGINT/SIGTERM at their defaults,
    whatever the test runner inherited: a background job (``cmd &`` in a
    script, nohup) starts with SIGINT ignored, and an ignored signal is
    inherited -- the CLI then rightly keeps ignoring it."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


# --- freestanding i386 test programs for lguest exec (tests/exec_progs) --------------------------------
EXEC_PROGS = Path(__file__).parent / "exec_progs"
#: gcc flags for them: i386, no libc, no PIE, static, no stack protector
#: (it would need the TLS canary a libc sets up).
EXEC_CFLAGS = ["-m32", "-O1", "-ffreestanding", "-fno-pie", "-no-pie", "-nostdlib", "-static", "-fno-stack-protector",
               "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none"]
BUSYBOX_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "busybox-i386" / "bin" / "busybox"


def guest_kernel_or_skip() -> Path:
    """The built exec guest kernel; skips the test where it cannot be built."""
    from lguest.guestos import KernelUnavailable, kernel_path

    try:
        return kernel_path()
    except KernelUnavailable as exc:
        pytest.skip(f"no guest kernel: {exc}")


def build_i386(src: Path, exe: Path, *extra: str) -> Path:
    """``src`` built with EXEC_CFLAGS (then ``extra``: a later -O wins) into
    ``exe``; skips the test where gcc cannot target i386."""
    proc = subprocess.run(["gcc", *EXEC_CFLAGS, *extra, "-o", str(exe), str(src)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"gcc cannot build i386 programs here: {proc.stderr.strip()[-300:]}")
    return exe


def busybox_path() -> Path | None:
    """Debian's static i386 busybox: LGUEST_BUSYBOX, else .ci/fetch-busybox's cache; None if absent."""
    env = os.environ.get("LGUEST_BUSYBOX")
    p = Path(env) if env else BUSYBOX_CACHE
    return p if p.is_file() else None
