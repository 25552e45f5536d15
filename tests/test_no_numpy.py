"""Running a guest never imports numpy (it was ~40 ms of a ~130 ms ``lguest exec``).

Each core, in a fresh interpreter: ``import lguest``, ``lguest run`` of the
example guest (paged: the shadow page directory is synced), ``lguest exec``
of a real program (busybox when present, else a freestanding test program
from tests/exec_progs), ``run_program`` with stdin and a
:class:`UnicornLauncher` run -- and ``numpy`` is still not in
``sys.modules``.  Then the numpy API of API.md still holds: the first
``cpu.regs.array`` / ``cpu.idt`` / ``cpu.gdt`` imports numpy and returns a
live view of the words the core and the native hook use (written through
the view, read through the attribute API or the core, and back), the same
object on every access.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lgtest import EXEC_CFLAGS, EXEC_PROGS, build_example, busybox_path

pytest.importorskip("unicorn")
pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import sys

core, elf, root, prog = sys.argv[1:5]
argv = sys.argv[5:]


def no_numpy(after):
    assert "numpy" not in sys.modules, f"numpy was imported by {after}"


import lguest
no_numpy("import lguest")
assert lguest.CORE == core

from lguest.cli import main

rc = main(["run", "--memory", "4M", "--page-offset", "0xC0000000", "--core", core, elf])
assert rc == 0, f"lguest run: {rc}"
no_numpy("lguest run")

rc = main(["exec", "--root", root, "--", prog, *argv])  # its core: the active one (LGUEST_PURE_PYTHON)
assert rc == 0, f"lguest exec: {rc}"
no_numpy("lguest exec")

from lguest.guestos.runner import run_program

res = run_program("/echo", root=root, stdin=b"hello", core=core, timeout=60)
assert (res.status, res.stdout, res.stderr) == (0, b"hello", b"5\n"), res
no_numpy("run_program")

from lguest.constants import R_EAX, R_EIP
from lguest.unicorn import UnicornLauncher

with UnicornLauncher(memory=4 << 20, page_offset=0xC0000000, core=core) as lg:
    lg.load_elf(elf)
    result = lg.run(timeout=60)
    assert (result.reason, result.message) == ("dead", "CRASH: bye"), result  # its LHCALL_SHUTDOWN
    no_numpy("a UnicornLauncher run")
    cpu = lg.cpu
    assert lguest.core_of(cpu).NAME == core

    # Registers: the first .array imports numpy; it is a live view, cached.
    eip = cpu.regs.eip
    arr = cpu.regs.array
    assert "numpy" in sys.modules
    import numpy as np

    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint32 and arr.shape == (18,)
    assert cpu.regs.array is arr and int(arr[R_EIP]) == eip
    arr[R_EAX] = 0x12345678
    assert cpu.regs.eax == 0x12345678 and cpu.regs.words[R_EAX] == 0x12345678
    cpu.regs.eax = 0xCAFEF00D
    assert int(arr[R_EAX]) == 0xCAFEF00D

    # The guest IDT and the GDT: numpy writes are the core's words, and back.
    idt = cpu.idt
    assert isinstance(idt, np.ndarray) and idt.dtype == np.uint32 and idt.shape == (256, 2)
    assert cpu.idt is idt and idt.flags.writeable
    idt[0x41] = (0x00611234, 0xC0108F00)
    assert (cpu.idt_words[0x41, 0], cpu.idt_words[0x41, 1]) == (0x00611234, 0xC0108F00)
    gdt = cpu.gdt
    assert cpu.gdt is gdt and gdt.shape == (32, 2)
    gdt[20] = (1, 2)
    assert (cpu.gdt_words[20, 0], cpu.gdt_words[20, 1]) == (1, 2)

# A fresh cpu (numpy is loaded now): the core reads what numpy wrote.
host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
cpu = host.new_guest(lguest.GuestMemory(1 << 20), page_offset=0, core=core).new_cpu()
idt = cpu.idt
handler = 0x00101234
idt[0x41] = (0x00610000 | (handler & 0xFFFF), (handler & 0xFFFF0000) | 0x8F00)  # a present trap gate
cpu.load_guest_idt_entry(0x42, 0x00615678, 0x00108E00)
assert idt[0x42].tolist() == [0x00615678, 0x00108E00]
cpu.regs.array[:] = 0
cpu.regs.ss, cpu.regs.esp = 0x69, 0x2000
assert cpu.deliver_trap(0x41) is True and cpu.regs.eip == handler and int(cpu.regs.array[R_EIP]) == handler
idt[0x80] = (0x00613333, 0x0010EF00)  # the syscall vector's trap gate, DPL 3: direct
host_idt = np.zeros((256, 2), np.uint32)
cpu.copy_traps(host_idt, list(range(256)))
assert host_idt[0x80].tolist() == [0x00613333, 0x0010EF00]
print("ok")
"""


def _build_echo(out: Path) -> Path | None:
    exe = out / "echo"
    proc = subprocess.run(["gcc", *EXEC_CFLAGS, "-o", str(exe), str(EXEC_PROGS / "echo_stdin.c")], capture_output=True)
    return exe if proc.returncode == 0 else None


def test_running_guests_never_imports_numpy(core: Any, tmp_path: Path) -> None:
    from lguest.guestos import KernelUnavailable, kernel_path

    try:
        kernel_path()
    except KernelUnavailable as exc:
        pytest.skip(f"no guest kernel: {exc}")
    root = tmp_path / "root"
    root.mkdir()
    if _build_echo(root) is None:
        pytest.skip("gcc cannot build i386 programs here")
    busybox = busybox_path()
    if busybox is not None:
        (root / "bin").mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        prog = ["/bin/busybox", "true"]
    else:
        prog = ["/echo"]
    elf = build_example(str(tmp_path), "paged", 0xC0000000, NSYSCALLS=20, TICK_NS=20000)
    env = {k: v for k, v in os.environ.items() if k != "LGUEST_PURE_PYTHON"}
    if core.NAME == "python":
        env["LGUEST_PURE_PYTHON"] = "1"  # lguest exec runs the active core
    proc = subprocess.run([sys.executable, "-c", WORKER, core.NAME, elf, str(root), *prog],
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.endswith("ok\n"), proc.stdout[-2000:] + proc.stderr[-3000:]


MISUSE = r"""
import sys

import lguest
from lguest.validate import words_view

core = lguest.load_core(sys.argv[1])
cpu = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32))).new_guest(
    lguest.GuestMemory(1 << 20), page_offset=0, core=core).new_cpu()
good = words_view(512, (256, 2))
readonly = memoryview(bytes(2048)).cast("I", (256, 2))
calls = {
    "list idt": lambda: cpu.copy_traps([[0, 0]] * 256, list(range(256))),
    "short idt": lambda: cpu.copy_traps(words_view(510, (255, 2)), list(range(256))),
    "read-only idt": lambda: cpu.copy_traps(readonly, list(range(256))),
    "bytes idt": lambda: core.setup_default_idt_entries(bytearray(2048), list(range(256))),
    "Regs(list)": lambda: core.Regs([0] * 18),
    "Regs(words)": lambda: core.Regs(words_view(18)),
    "cell [0]": lambda: lguest.Host(used_vectors=lguest.UsedVectors(used=range(32))).new_guest(
        lguest.GuestMemory(4096), clock=type("C", (), {"cell": [0], "realtime": False, "now_ns": lambda s: 0})(),
        core=core),
}
for what, call in calls.items():
    try:
        call()
    except ValueError:
        pass
    else:
        raise AssertionError(f"{what}: no ValueError")
    assert "numpy" not in sys.modules, what
for what, bad in (("bool", True), ("float", 1.5), ("str", "1")):
    try:
        cpu.deliver_trap(bad)
    except TypeError:
        pass
    else:
        raise AssertionError(f"deliver_trap({what}): no TypeError")
cpu.copy_traps(good, list(range(256)))  # lguest's own tables and a list of ints: fine, and no numpy
core.setup_default_idt_entries(good, tuple(range(256)))
assert "numpy" not in sys.modules
print("ok")
"""


def test_misuse_is_refused_alike_without_numpy(core: Any) -> None:
    # validate skips its numpy branches while numpy is not imported (the
    # caller cannot hold an ndarray then): the misuse test_misuse.py checks
    # with numpy objects, made with lguest's own kinds of tables, still
    # raises the same exceptions -- and imports no numpy on the way.
    proc = subprocess.run([sys.executable, "-c", MISUSE, core.NAME], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.endswith("ok\n"), proc.stdout[-2000:] + proc.stderr[-3000:]
