"""lguest exec: real i386 programs under the guest kernel, compared with the
same programs run natively on this (x86-64 Linux) host.

The test programs (tests/exec_progs/*.c) are freestanding: built here with
``gcc -m32 -nostdlib``, they make raw ``int $0x80`` system calls and print
each result (return values and -errno), so a difference from Linux shows up
as a differing line.  Each runs natively with the root directory as its
working directory and under ``lguest exec`` with that directory as its root;
stdout, the exit status and the files it leaves (through --export) must match.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lgtest import EXEC_PROGS as PROGS
from lgtest import build_i386, default_signals, guest_kernel_or_skip

from lguest.guestos import EXIT_CANNOT_RUN, EXIT_LGUEST, EXIT_NOT_FOUND, EXIT_TIMEOUT, KernelUnavailable
from lguest.guestos.cpio import ImageTooLarge, _entry, pack_tree, unpack_tree
from lguest.guestos.runner import run_program

pytest.importorskip("unicorn")

def _signal_status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    return guest_kernel_or_skip()


@pytest.fixture(scope="session")
def progs(tmp_path_factory: pytest.TempPathFactory, guest_kernel: Path) -> dict[str, Path]:
    """Every test program, built for i386 (skips if gcc cannot target it)."""
    out = tmp_path_factory.mktemp("exec_progs")
    built = {}
    for src in sorted(PROGS.glob("*.c")):
        extra = ['-DSYSCALL_INSN="int $0x40"'] if src.stem == "vector" else []
        built[src.stem] = build_i386(src, out / src.stem, *extra)
    return built


@pytest.fixture(scope="session")
def native_i386(progs: dict[str, Path]) -> bool:
    """Whether this host runs i386 programs (an x86-64 Linux kernel with IA32 emulation)."""
    try:
        proc = subprocess.run([str(progs["time"])], capture_output=True, timeout=30)
    except OSError:
        return False
    return proc.returncode == 0 and b"realtime plausible: 1" in proc.stdout


def make_root(base: Path, progs: dict[str, Path]) -> Path:
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "in.txt").write_bytes(b"line one\nline two\nline three\n")
    (root / "sub" / "a.txt").write_bytes(b"in a subdirectory\n")
    (root / "sub" / "b").mkdir()
    os.symlink("in.txt", root / "link")
    for name, exe in progs.items():
        shutil.copy(exe, root / "bin" / name)
    return root


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (contents), directory and symlink (target) under root."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes()
    return out


def run_both(name: str, progs: dict[str, Path], tmp_path: Path, native: bool, core: object = None,
             stdin: bytes = b"", args: tuple[str, ...] = ()) -> tuple[object, subprocess.CompletedProcess | None]:
    """(lguest result, native CompletedProcess or None); the native run works in a copy of the root."""
    root = make_root(tmp_path / "g", progs)
    export = tmp_path / "export"
    result = run_program(f"/bin/{name}", args, root=root, stdin=stdin, export=export, core=core, timeout=60,
                         memory=32 << 20)
    nat = None
    if native:
        nroot = make_root(tmp_path / "n", progs)
        nat = subprocess.run([str(nroot / "bin" / name), *args], cwd=nroot, input=stdin, capture_output=True,
                             timeout=60, env={"PATH": "/bin:/usr/bin"})
        assert tree(export) == tree(nroot), "the exported tree differs from the native run's"
    return result, nat


@pytest.mark.parametrize("name", ["files", "mem", "proc", "time", "badptr", "fsops", "textmap", "rwfast"])
def test_syscall_family_matches_native(name: str, progs: dict[str, Path], native_i386: bool, tmp_path: Path,
                                       core: object) -> None:
    result, nat = run_both(name, progs, tmp_path, native_i386, core=core)
    assert result.message is None, result.message
    assert not result.unsupported or set(result.unsupported) == {"syscall_500"}, result.unsupported
    if nat is None:
        pytest.skip("this host does not run i386 programs natively: compared nothing")
    assert result.stdout.decode() == nat.stdout.decode()
    assert result.status == _signal_status(nat.returncode)


def test_unknown_syscall_is_enosys_and_counted(progs: dict[str, Path], tmp_path: Path) -> None:
    result, _ = run_both("proc", progs, tmp_path, False)
    assert b"unknown call: -38\n" in result.stdout
    assert result.unsupported == {"syscall_500": 1}
    assert result.status == 3
    assert result.syscalls["set_thread_area"] == 1 and result.stats["direct_0x80"] >= 30


def test_stdin_stdout_stderr_binary_safe(progs: dict[str, Path], native_i386: bool, tmp_path: Path,
                                         core: object) -> None:
    """200 KiB of every byte value: more than a ring (64 KiB), through and back, stderr apart."""
    data = bytes(range(256)) * 800
    result, nat = run_both("echo_stdin", progs, tmp_path, native_i386, core=core, stdin=data)
    assert result.stdout == data
    assert result.stderr == b"204800\n"
    assert result.status == 0
    if nat is not None:
        assert (nat.stdout, nat.stderr) == (result.stdout, result.stderr)


def test_segv_is_signal_status(progs: dict[str, Path], native_i386: bool, tmp_path: Path) -> None:
    result, nat = run_both("segv", progs, tmp_path, native_i386)
    assert result.stdout == b"before\n"
    assert result.status == 139 and result.signal == 11
    assert "SIGSEGV" in result.message
    if nat is not None:
        assert nat.stdout == b"before\n" and _signal_status(nat.returncode) == 139


@pytest.mark.parametrize("vector", [0x40, 0x81])
def test_syscall_vector(vector: int, progs: dict[str, Path], tmp_path: Path, core: object) -> None:
    """The program built with `int $0x40`: with --syscall-vector 0x40 both it
    and int $0x80 are direct traps into the kernel; without, int $0x40 hits
    no gate (a #GP: SIGSEGV)."""
    root = make_root(tmp_path, progs)
    result = run_program("/bin/vector", root=root, syscall_vector=vector, core=core, memory=32 << 20)
    if vector == 0x40:
        assert (result.status, result.stdout) == (7, b"through the vector\nand 0x80\n")
        assert result.stats["direct_0x40"] == 2 and result.stats["direct_0x80"] == 1
    else:
        assert (result.status, result.stdout) == (139, b"")


def test_exit_codes_of_lguest_outcomes(progs: dict[str, Path], tmp_path: Path) -> None:
    root = make_root(tmp_path, progs)
    assert run_program("/bin/missing", root=root).status == EXIT_NOT_FOUND
    r = run_program("/in.txt", root=root)
    assert r.status == EXIT_CANNOT_RUN and "not a static ELF32 i386" in r.message
    assert run_program("/sub", root=root).status == EXIT_CANNOT_RUN
    # dynamically linked (this interpreter) and 64-bit both refused
    shutil.copy(sys.executable, root / "bin" / "python")
    assert run_program("/bin/python", root=root, memory=256 << 20).status == EXIT_CANNOT_RUN
    t0 = time.monotonic()
    r = run_program("/bin/spin", root=root, timeout=0.5)
    assert r.status == EXIT_TIMEOUT and "timed out" in r.message
    assert time.monotonic() - t0 < 0.5 + 5  # generous: includes boot
    r = run_program("/bin/time", root=root, memory=2 << 20)
    assert r.status == EXIT_LGUEST and "memory" in r.message


def test_root_image_cap(progs: dict[str, Path], tmp_path: Path) -> None:
    root = make_root(tmp_path, progs)
    (root / "big").write_bytes(b"\0" * (20 << 20))
    r = run_program("/bin/time", root=root, memory=32 << 20)
    assert r.status == EXIT_LGUEST and "cap" in r.message
    with pytest.raises(ImageTooLarge, match="more than 3 files"):
        pack_tree(root, max_entries=3)


def test_cli_exec(progs: dict[str, Path], tmp_path: Path) -> None:
    root = make_root(tmp_path, progs)
    cmd = [sys.executable, "-m", "lguest", "exec", "--root", str(root)]
    p = subprocess.run([*cmd, "--stats", "--", "/bin/proc"], capture_output=True, timeout=120)
    assert p.returncode == 3 and b"unknown call: -38" in p.stdout
    assert b"set_thread_area" in p.stderr and b"direct traps" in p.stderr and b"syscall_500" in p.stderr
    p = subprocess.run([*cmd, "--", "/bin/echo_stdin"], input=b"abc", capture_output=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"abc", b"3\n")
    p = subprocess.run([*cmd, "--", "/nope"], capture_output=True, timeout=120)
    assert p.returncode == 127 and p.stderr.count(b"\n") == 1
    p = subprocess.run([*cmd, "--no-such-option", "--", "/bin/proc"], capture_output=True, timeout=120)
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1
    p = subprocess.run([*cmd, "--timeout", "0.3", "--", "/bin/spin"], capture_output=True, timeout=120)
    assert p.returncode == 124 and p.stderr.count(b"\n") == 1


@pytest.mark.parametrize(("signum", "status", "name"), [(15, 143, b"SIGTERM"), (2, 130, b"SIGINT")])
def test_cli_exec_signals(signum: int, status: int, name: bytes, progs: dict[str, Path], tmp_path: Path) -> None:
    """SIGTERM/SIGINT while the guest spins: lguest's own codes, one line on stderr."""
    root = make_root(tmp_path, progs)
    p = subprocess.Popen([sys.executable, "-m", "lguest", "exec", "--root", str(root), "--", "/bin/spin"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_signals)
    assert p.stdout.readline() == b"spinning\n"  # the program runs: the handlers are in place
    p.send_signal(signum)
    _, err = p.communicate(timeout=60)
    assert p.returncode == status and name in err and err.count(b"\n") == 1


def test_cpio_round_trip_and_refusals(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x" * 5)
    os.symlink("d/f", src / "l")
    image = pack_tree(src, {"/extra/e": b"e"})
    unpack_tree(image, tmp_path / "dst")
    assert tree(tmp_path / "dst") == {"d": "dir", "d/f": b"xxxxx", "l": "-> d/f", "extra": "dir", "extra/e": b"e"}
    # a symlink out of the export directory, then a file through it: refused
    trailer = _entry("TRAILER!!!", 0, 0, 0, 0)
    evil = _entry("esc", 0o120777, 4, 0, 2) + b"/tmp" + _entry("esc/pwned", 0o100644, 0, 0, 3) + trailer
    with pytest.raises(ValueError):
        unpack_tree(evil, tmp_path / "dst2")
    assert not Path("/tmp/pwned").exists()
    with pytest.raises(ValueError):
        unpack_tree(_entry("../up", 0o100644, 0, 0, 2) + trailer, tmp_path / "dst3")


def test_console_device_distrusts_the_guest_counters() -> None:
    """A guest that claims 4 GiB in its stdout ring, or asks for 1 GiB of
    stdin: the host drains one ring's worth and reads at most the ring's room."""
    import struct

    from lguest.guestos import layout as L
    from lguest.guestos.runner import _Console
    from lguest.memory import GuestMemory

    with GuestMemory(1 << 20) as mem:
        out: list[bytes] = []
        asked: list[int] = []

        def stdin(n: int, wait: bool) -> tuple[bytes | None, bool]:
            asked.append(n)
            return b"x" * n, False

        cons = _Console(mem, out.append, out.append, stdin)
        mem.write(L.CONS_PA + L.CONS["out_head0"], struct.pack("<I", 0xFFFF_FFF0))
        mem.write(L.CONS_PA + L.CONS["out_tail0"], struct.pack("<I", 0))
        mem.write(L.CONS_PA + L.CONS["in_want"], struct.pack("<I", 1 << 30))
        cons(L.CONS_PA)
        assert [len(c) for c in out] == [L.RING_SIZE]
        assert asked == [L.RING_SIZE]
        assert struct.unpack_from("<I", mem.read(L.CONS_PA + L.CONS["in_head"], 4))[0] == L.RING_SIZE


def test_no_i386_compiler_says_how_to_get_the_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where gcc cannot build the kernel, lguest exec fails with 125 and says what to install."""
    from lguest.guestos import build

    monkeypatch.delenv("LGUEST_KERNEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-gcc"))
    monkeypatch.setattr(build, "HERE", tmp_path)  # no packaged kernel either
    with pytest.raises(KernelUnavailable, match="gcc"):
        build.kernel_path()
    r = run_program("/bin/true")
    assert r.status == EXIT_LGUEST and "-m32" in r.message and "LGUEST_KERNEL" in r.message
    monkeypatch.setenv("LGUEST_KERNEL", str(tmp_path / "missing.elf"))
    assert "no such file" in run_program("/bin/true").message


def test_the_export_gather_list_is_checked_not_trusted() -> None:
    """--export: the kernel hands over a list of {pa, len} pieces (file data
    is referenced where it lies, not copied); a list or piece past the end
    of guest memory, or pieces adding up to more than memory (one page named
    a million times), export nothing instead of reading out of bounds or
    building a huge buffer on the host."""
    import struct

    from lguest import GuestMemory
    from lguest.guestos.runner import _gather

    size = 1 << 20
    mem = GuestMemory(size)
    mem.write(0x3000, b"070701")
    mem.write(0x5000, b"hello")

    def put(pairs: list[tuple[int, int]]) -> int:
        mem.write(0x8000, b"".join(struct.pack("<II", pa, n) for pa, n in pairs))
        return len(pairs)

    assert _gather(mem, 0x8000, put([(0x3000, 6), (0x5000, 5)]), size) == b"070701hello"
    assert _gather(mem, 0x8000, 0, size) is None
    assert _gather(mem, size - 8, 2, size) is None                         # the list itself past the end
    assert _gather(mem, 0x8000, put([(0x3000, 6), (size - 2, 5)]), size) is None   # a piece past the end
    assert _gather(mem, 0x8000, put([(0xFFFF_FFF0, 0x20)]), size) is None  # pa + len wrapping 32 bits
    assert _gather(mem, 0x8000, put([(0, size)] * 2), size) is None        # more than memory in all
    assert _gather(mem, 0x8000, 1 << 30, size) is None                     # an absurd count
    mem.close()
