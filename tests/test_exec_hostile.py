"""lguest exec against hostile programs, hostile guest-kernel output and user mistakes.

Everything the guest controls is untrusted here: the names, modes and
contents of the files a program leaves (``--export``), the exported image
the kernel writes (as if the kernel itself were hostile), its console rings.
The host must stay inside the export directory, never follow a link out of
it, never hang, keep its memory bounded, and answer every mistake with one
line and a documented exit status.  Runs that could hang or blow up run in a
subprocess with a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lgtest import EXEC_PROGS as PROGS
from lgtest import build_i386, default_signals, guest_kernel_or_skip

from lguest.guestos import EXIT_CANNOT_RUN, EXIT_LGUEST, EXIT_NOT_FOUND, EXIT_TIMEOUT
from lguest.guestos.cpio import _entry, unpack_tree
from lguest.guestos.runner import run_program

pytest.importorskip("unicorn")

LGUEST = [sys.executable, "-m", "lguest", "exec"]
TRAILER = _entry("TRAILER!!!", 0, 0, 0, 0)


@pytest.fixture(scope="module")
def hprogs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    guest_kernel_or_skip()
    out = tmp_path_factory.mktemp("hostile_progs")
    return {stem: build_i386(PROGS / f"{stem}.c", out / stem) for stem in ("hostile", "echo_stdin", "spin")}


def image(*entries: tuple[str, int, bytes]) -> bytes:
    """A newc image of (name, mode, data) entries, as a hostile kernel could write it."""
    out = b""
    for i, (name, mode, data) in enumerate(entries):
        piece = _entry(name, mode, len(data), 0, i + 2)
        out += piece + data + b"\0" * (-len(data) % 4)
    return out + TRAILER


def snapshot(d: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under d (not following links): its mode and content or link target."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            body: bytes | str = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else ""
            out[str(p.relative_to(d))] = (st.st_mode, body)
    return out


def canary(tmp_path: Path) -> Path:
    c = tmp_path / "canary"
    (c / "d").mkdir(parents=True)
    (c / "f").write_bytes(b"secret\n")
    return c


# --- --export: the exported image is guest-controlled -------------------------------------------
def test_export_never_goes_through_a_symlink(tmp_path: Path) -> None:
    """A symlink entry then entries below it (or a symlink the host directory
    already holds): refused before anything is created outside."""
    out = canary(tmp_path)
    before = snapshot(out)
    evil = image(("esc", 0o120777, str(out / "d").encode()), ("esc/a/b/f", 0o100644, b"pwned"))
    with pytest.raises(ValueError, match="esc"):
        unpack_tree(evil, tmp_path / "dst")
    dst2 = tmp_path / "dst2"
    dst2.mkdir()
    os.symlink(out / "d", dst2 / "x")   # left by an earlier export, or by the user
    with pytest.raises(ValueError, match="x/f"):
        unpack_tree(image(("x/f", 0o100644, b"pwned")), dst2)
    with pytest.raises(ValueError):
        unpack_tree(image(("x/new/f", 0o100644, b"pwned")), dst2)
    assert snapshot(out) == before


def test_export_replaces_links_instead_of_writing_through_them(tmp_path: Path) -> None:
    """A symlink, a hard link or a fifo already at a name the guest exports:
    replaced, never written through (a fifo would block the host forever)."""
    out = canary(tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(out / "f", dst / "sym")
    os.link(out / "f", dst / "hard")
    os.mkfifo(dst / "fifo")
    os.symlink(out / "d", dst / "dirlink")
    before = snapshot(out)
    img = image(("sym", 0o100644, b"guest"), ("hard", 0o100644, b"guest"), ("fifo", 0o100644, b"guest"),
                ("dirlink", 0o40755, b""), ("dirlink/f", 0o100644, b"guest"))
    code = ("import sys; from pathlib import Path; from lguest.guestos.cpio import unpack_tree; "
            "unpack_tree(Path(sys.argv[1]).read_bytes(), sys.argv[2])")
    (tmp_path / "img").write_bytes(img)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "img"), str(dst)], check=True, timeout=60)
    assert snapshot(out) == before
    for name in ("sym", "hard", "fifo", "dirlink/f"):
        p = dst / name
        assert stat.S_ISREG(p.lstat().st_mode) and p.read_bytes() == b"guest", name
    assert os.stat(dst / "hard").st_nlink == 1


def test_export_strips_setuid_and_refuses_bad_names(tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    unpack_tree(image(("suid", 0o106755, b"#!/bin/sh\n"), ("sticky", 0o41777, b""), ("zero", 0o100000, b"z")), dst)
    assert stat.S_IMODE((dst / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dst / "sticky").stat().st_mode) & 0o7000 == 0
    assert (dst / "zero").read_bytes() == b"z"
    for name in ("a\0b", "x" * 256, "/abs/../../up", "..", "", "d/" + "y" * 300):
        with pytest.raises(ValueError):
            unpack_tree(image((name, 0o100644, b"")), tmp_path / "bad")
    with pytest.raises(ValueError):  # a link target with a NUL in it
        unpack_tree(image(("l", 0o120777, b"a\0b")), tmp_path / "bad")
    with pytest.raises(ValueError, match="more than 3"):
        unpack_tree(image(*[(f"f{i}", 0o100644, b"") for i in range(4)]), tmp_path / "many", max_entries=3)
    with pytest.raises(ValueError):  # truncated, and not hex
        unpack_tree(image(("f", 0o100644, b"abcdef"))[:120], tmp_path / "trunc")
    with pytest.raises(ValueError):
        unpack_tree(b"070701" + b"zz" * 55, tmp_path / "hex")


def test_export_type_changes(tmp_path: Path) -> None:
    """The guest's tree wins over files, links and empty directories in its
    way; a non-empty host directory where the guest has a file is refused
    (the host's files are never deleted wholesale)."""
    dst = tmp_path / "dst"
    (dst / "was_file").parent.mkdir(parents=True)
    (dst / "was_file").write_bytes(b"host")
    (dst / "empty_dir").mkdir()
    unpack_tree(image(("was_file", 0o40755, b""), ("was_file/in", 0o100644, b"g"), ("empty_dir", 0o100644, b"g"),
                      ("l", 0o120777, b"target"), ("l", 0o100644, b"now a file")), dst)
    assert (dst / "was_file" / "in").read_bytes() == b"g" and (dst / "empty_dir").read_bytes() == b"g"
    assert (dst / "l").read_bytes() == b"now a file"
    (dst / "full").mkdir()
    (dst / "full" / "keep").write_bytes(b"host")
    with pytest.raises(ValueError, match="full.*directory"):
        unpack_tree(image(("full", 0o100644, b"g")), dst)
    assert (dst / "full" / "keep").read_bytes() == b"host"


def test_export_of_a_hostile_program(hprogs: dict[str, Path], tmp_path: Path, core: object) -> None:
    """A real program's names: a 255-byte name, a newline, symlinks to host
    paths and up out of the root, a setuid file.  The links are recreated as
    links, never followed; the host's files stay as they were."""
    out = canary(tmp_path)
    before = snapshot(out)
    ex = tmp_path / "ex"
    r = run_program(str(hprogs["hostile"]), ["names", str(out / "d"), str(out / "f")], export=ex, core=core,
                    memory=16 << 20)
    assert r.status == 0, (r.message, r.stdout)
    assert b"through: -2" in r.stdout   # the guest's own tree has no host directory
    got = snapshot(ex)
    assert os.readlink(ex / "hostdir") == str(out / "d") and os.readlink(ex / "up") == "../../../../../../../../.."
    assert (ex / "new\nline").read_bytes() == b"nl\n" and any(len(n) == 255 for n in os.listdir(ex))
    assert stat.S_IMODE(got["suid"][0]) == 0o755
    # a second export into the same directory, now holding traps in the guest's names
    (ex / "clashdir").rename(tmp_path / "old")
    os.symlink(out / "d", ex / "clashdir")
    (ex / "suid").unlink()
    os.link(out / "f", ex / "suid")
    r = run_program(str(hprogs["hostile"]), ["names", str(out / "d"), str(out / "f")], export=ex, core=core,
                    memory=16 << 20)
    assert r.status == 0, r.message
    assert (ex / "clashdir" / "inner").read_bytes() == b"inner\n" and not (ex / "clashdir").is_symlink()
    assert (ex / "suid").read_bytes() == b"#!/bin/sh\n"
    assert snapshot(out) == before


def test_export_mistakes_are_one_line_before_the_run(hprogs: dict[str, Path], tmp_path: Path) -> None:
    """--export naming a file, or a directory under a file: 125 and one line,
    before the program runs (its output never appears)."""
    (tmp_path / "file").write_bytes(b"")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        p = subprocess.run([*LGUEST, "--export", str(target), "--", str(hprogs["echo_stdin"])], input=b"ran",
                           capture_output=True, timeout=120)
        assert (p.returncode, p.stdout) == (125, b""), p.stderr
        assert p.stderr.count(b"\n") == 1 and b"--export" in p.stderr and b"Traceback" not in p.stderr
    # a non-empty host directory where the program leaves a file: 125, one line, the host's files kept
    ex = tmp_path / "ex"
    (ex / "clash").mkdir(parents=True)
    (ex / "clash" / "keep").write_bytes(b"host")
    p = subprocess.run([*LGUEST, "--export", str(ex), "--", str(hprogs["hostile"]), "names", "/a", "/b"],
                       capture_output=True, timeout=120)
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1 and b"clash" in p.stderr, p.stderr
    assert (ex / "clash" / "keep").read_bytes() == b"host"


def test_export_of_many_files_and_a_big_one(hprogs: dict[str, Path], tmp_path: Path) -> None:
    """Thousands of files and tens of MiB: the export is whole, bounded by guest memory."""
    ex = tmp_path / "ex"
    r = run_program(str(hprogs["hostile"]), ["many", "3000", "100"], export=ex, memory=32 << 20)
    assert r.status == 0 and b"created: 3000" in r.stdout, (r.message, r.stdout)
    assert len(os.listdir(ex / "many")) == 3000 and (ex / "many" / "f2999").read_bytes() == b"x" * 100
    r = run_program(str(hprogs["hostile"]), ["many", "1", str(8 << 20)], export=tmp_path / "big", memory=48 << 20)
    assert r.status == 0 and (tmp_path / "big" / "many" / "f0").stat().st_size == 8 << 20, r.message
    r = run_program(str(hprogs["hostile"]), ["many", "1", str(16 << 20)], export=tmp_path / "big2", memory=48 << 20)
    assert r.status == 0 and (tmp_path / "big2" / "many" / "f0").stat().st_size == 16 << 20, r.message


# --- --root and PROGRAM ----------------------------------------------------------------------------
def test_root_packing_skips_specials_and_keeps_links_as_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    out = canary(tmp_path)
    os.symlink(out / "f", root / "escape")
    os.symlink("..", root / "self")
    os.symlink(".", root / "loop")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        code = ("import sys; from lguest.guestos.cpio import pack_tree, iter_newc; "
                "print(sorted((n, oct(m), d) for n, m, d in iter_newc(pack_tree(sys.argv[1]))))")
        p = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    finally:
        sock.close()
    assert p.returncode == 0, p.stderr
    entries = eval(p.stdout)  # noqa: S307 - our own repr
    assert entries == [("escape", oct(0o120777), str(out / "f").encode()), ("loop", oct(0o120777), b"."),
                       ("self", oct(0o120777), b"..")]


#: Root reads every file: without its two DAC capabilities it is bound by the modes like anyone.
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_root_or_program_is_one_line(hprogs: dict[str, Path], tmp_path: Path) -> None:
    """Unreadable files and directories in the root, an unreadable PROGRAM:
    one line, 125 (126 for the program), never a traceback.  Run as nobody
    without root's DAC capabilities when the tests run as root."""
    base = tmp_path / "u"
    (base / "root" / "closed").mkdir(parents=True)
    (base / "root" / "secret").write_bytes(b"s")
    prog = base / "prog"
    prog.write_bytes(hprogs["spin"].read_bytes())
    os.chmod(base / "root" / "secret", 0)
    os.chmod(prog, 0)
    for p in (tmp_path, base, base / "root"):
        os.chmod(p, 0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if subprocess.run([*NO_DAC, "true"], capture_output=True).returncode:
            pytest.skip("running as root without setpriv: every file is readable")
        prefix = NO_DAC
    try:
        checks = [(["--root", str(base / "root"), "--", "/secret"], 125, b"secret"),
                  (["--", str(prog)], EXIT_CANNOT_RUN, b"prog")]
        for argv, status, what in checks:
            p = subprocess.run([*prefix, *LGUEST, *argv], capture_output=True, timeout=120)
            assert p.returncode == status and p.stderr.count(b"\n") == 1 and what in p.stderr, p.stderr
        os.chmod(base / "root" / "secret", 0o644)
        os.chmod(base / "root" / "closed", 0)
        p = subprocess.run([*prefix, *LGUEST, "--root", str(base / "root"), "--", "/x"], capture_output=True,
                           timeout=120)
        assert p.returncode == 125 and p.stderr.count(b"\n") == 1 and b"closed" in p.stderr, p.stderr
    finally:
        os.chmod(base / "root" / "closed", 0o755)


def test_program_without_root_that_is_not_a_file(tmp_path: Path) -> None:
    """A directory or a fifo as PROGRAM: 126 (never read, never a hang);
    a missing one 127; a huge one hits the cap without being read."""
    os.mkfifo(tmp_path / "fifo")
    assert run_program(str(tmp_path)).status == EXIT_CANNOT_RUN
    assert run_program(str(tmp_path / "fifo"), timeout=5).status == EXIT_CANNOT_RUN
    assert run_program(str(tmp_path / "missing")).status == EXIT_NOT_FOUND
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(4 << 30)   # sparse: reading it would take 4 GiB of host memory
    code = ("import resource, sys; from lguest.guestos.runner import run_program; "
            "r = run_program(sys.argv[1], memory=32 << 20); "
            "print(r.status, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.message)")
    p = subprocess.run([sys.executable, "-c", code, str(huge)], capture_output=True, text=True, timeout=120)
    status, maxrss_kib, message = p.stdout.split(" ", 2)
    assert int(status) == EXIT_LGUEST and "cap" in message, p.stdout + p.stderr
    assert int(maxrss_kib) < 400 << 10


@pytest.mark.parametrize("memory", ["1024M", "2G", "4G", "100K"])
def test_memory_out_of_range_is_one_line(memory: str, hprogs: dict[str, Path]) -> None:
    """The kernel maps all RAM at 0xC0000000, below the Switcher at 0xFFC00000: 1020 MiB at most."""
    p = subprocess.run([*LGUEST, "--memory", memory, "--", str(hprogs["spin"])], capture_output=True, timeout=120)
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1 and b"--memory" in p.stderr, p.stderr
    assert b"internal error" not in p.stderr


# --- the console device -------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_flood_is_exact_bounded_and_interruptible(signum: int, status: int, hprogs: dict[str, Path]) -> None:
    """A program writing 64 KiB blocks forever to a slow reader: every byte
    arrives once, in order, host RSS stays flat, and a signal ends it
    promptly even while the host is blocked writing to the full pipe."""
    p = subprocess.Popen([*LGUEST, "--", str(hprogs["hostile"]), "flood"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=default_signals)
    assert p.stdout is not None
    period = b"0123456789abcdef"
    big = period * ((1 << 16) + 2)   # 1 MiB and a period to spare
    got = 0
    rss: list[int] = []
    try:
        while got < 48 << 20:
            chunk = p.stdout.read(1 << 20)
            assert chunk == big[got % 16:got % 16 + len(chunk)], f"wrong bytes after {got}"
            got += len(chunk)
            if got % (8 << 20) == 0:
                rss.append(_rss_kib(p.pid))
        time.sleep(0.5)   # stop reading: the pipe fills and the host blocks in write()
        t0 = time.monotonic()
        p.send_signal(signum)
        _, err = p.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == status and err.count(b"\n") == 1, err
    assert elapsed < 5
    assert max(rss) - rss[0] < 16 << 10, rss   # KiB: flat after the first 8 MiB


@pytest.mark.parametrize(("signum", "status"), [(None, EXIT_TIMEOUT), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_blocked_on_stdin_still_times_out_and_takes_signals(signum: int | None, status: int,
                                                            hprogs: dict[str, Path]) -> None:
    """A program reading a stdin that never comes (a pipe held open, nothing
    written): --timeout and the signals still end the run."""
    r, w = os.pipe()
    try:
        argv = [*LGUEST, "--timeout", "1.5", "--", str(hprogs["hostile"]), "stdin"] if signum is None else \
            [*LGUEST, "--", str(hprogs["hostile"]), "stdin"]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=default_signals)
        try:
            assert p.stdout is not None and p.stdout.readline() == b"reading\n"  # booted, about to block
            if signum is not None:
                time.sleep(0.5)
                p.send_signal(signum)
            _, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        elapsed = time.monotonic() - t0
    finally:
        os.close(r)
        os.close(w)
    assert p.returncode == status and err.count(b"\n") == 1, err
    assert elapsed < (1.5 if signum is None else 0.5) + 10   # generous: includes start-up


def test_captured_output_has_a_cap(hprogs: dict[str, Path]) -> None:
    """run_program capturing a flood: the guest is stopped at the cap with a
    clear reason, host memory never grows past it."""
    code = ("import resource, sys; from lguest.guestos.runner import run_program; "
            "r = run_program(sys.argv[1], ['flood'], output_limit=8 << 20); "
            "print(r.status, len(r.stdout), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.message)")
    p = subprocess.run([sys.executable, "-c", code, str(hprogs["hostile"])], capture_output=True, text=True,
                       timeout=120)
    status, n, maxrss_kib, message = p.stdout.split(" ", 3)
    assert int(status) == EXIT_LGUEST and "output" in message and int(n) <= 8 << 20, p.stdout + p.stderr
    assert int(maxrss_kib) < 400 << 10



# --- CLI misuse ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "status"), [
    ([], 125),                                         # no PROGRAM
    (["--no-such-option", "--", "/x"], 125),
    (["--memory", "1", "--", "{spin}"], 125),
    (["--memory", "lots", "--", "{spin}"], 125),
    (["--root", "{nodir}", "--", "/x"], 125),
    (["--", "{missing}"], EXIT_NOT_FOUND),
    (["--", "{dir}"], EXIT_CANNOT_RUN),                # a directory, without a root
    (["--root", "{dir}", "--", "/"], EXIT_CANNOT_RUN),  # ... and inside one
    (["--", "{text}"], EXIT_CANNOT_RUN),               # not ELF
    (["--", sys.executable], EXIT_CANNOT_RUN),         # 64-bit, dynamic
    (["--root", "{dir}", "--", "../../../../{spin}"], EXIT_NOT_FOUND),  # outside the root: not in it
])
def test_cli_misuse_is_one_line_and_its_status(argv: list[str], status: int, hprogs: dict[str, Path],
                                               tmp_path: Path) -> None:
    (tmp_path / "text").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "nodir").write_bytes(b"")
    names = {"spin": str(hprogs["spin"]), "dir": str(tmp_path), "text": str(tmp_path / "text"),
             "missing": str(tmp_path / "missing"), "nodir": str(tmp_path / "nodir")}
    p = subprocess.run([*LGUEST, *(a.format(**names) for a in argv)], capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == status and p.stderr.count(b"\n") == 1 and p.stdout == b"", p.stderr
    # the project's form, "lguest: <what>: <why>" (usage errors said "lguest exec: argument --memory: ...")
    assert p.stderr.startswith(b"lguest: ") and b"Traceback" not in p.stderr
    assert b"argument " not in p.stderr.split(b":")[1]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_export_writes(signum: int, status: int, hprogs: dict[str, Path], tmp_path: Path) -> None:
    """A signal while the host writes thousands of exported files: 130/143
    promptly, one line, nothing written outside the export directory."""
    ex = tmp_path / "ex"
    p = subprocess.Popen([*LGUEST, "--memory", "96M", "--export", str(ex), "--", str(hprogs["hostile"]), "many",
                          "15000", "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 120
        while not (ex / "many").exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        p.send_signal(signum)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == status and err.count(b"\n") == 1, err
    assert elapsed < 5
    assert len(os.listdir(ex / "many")) < 15000   # stopped part-way
    assert sorted(os.listdir(tmp_path)) == ["ex"]


# --- a hostile guest kernel ---------------------------------------------------------------------
KERNEL_DIR = Path(__file__).resolve().parent.parent / "lguest" / "guestos" / "kernel"


@pytest.fixture(scope="module")
def liar(hprogs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/exec_kernels/liar.c, built as the real kernel is (its flags, its kernel.ld)."""
    out = tmp_path_factory.mktemp("liar") / "liar.elf"
    cmd = ["gcc", "-m32", "-march=i686", "-ffreestanding", "-fno-pie", "-fno-pic", "-nostdlib", "-O2",
           "-fno-stack-protector", "-fno-builtin", "-mgeneral-regs-only", "-fno-asynchronous-unwind-tables",
           "-fno-tree-loop-distribute-patterns", "-std=gnu11", "-static", "-no-pie",
           f"-Wl,-T,{KERNEL_DIR / 'kernel.ld'}", "-Wl,--build-id=none", "-o", str(out),
           str(Path(__file__).parent / "exec_kernels" / "liar.c")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot build the hostile kernel: {proc.stderr[-300:]}")
    return out


def test_a_kernel_lying_in_its_console_and_result_words(liar: Path, hprogs: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch, core: object) -> None:
    """300 NOTIFYs each claiming ~4 GiB in both output rings and asking for
    4 GiB of stdin past a full ring; result words outside guest RAM: the host
    takes one ring (64 KiB) per stream per NOTIFY, reads no stdin past the
    ring's room, ignores the counters, and reports the kernel's status."""
    monkeypatch.setenv("LGUEST_KERNEL", str(liar))
    asked: list[int] = []

    class Stdin:
        def read(self, n: int) -> bytes:
            asked.append(n)
            return b"x" * n
    out, err = bytearray(), bytearray()
    r = run_program(str(hprogs["spin"]), ["counters"], memory=8 << 20, stdin=Stdin(), stdout=out.extend,
                    stderr=err.extend, core=core)  # type: ignore[arg-type]
    assert (r.status, r.message, r.syscalls, r.unsupported) == (7, None, {}, {})
    assert len(out) == len(err) == 300 << 16
    assert all(n == 0 for n in asked)   # the stdin ring is "full": no room, nothing read
    # ... and a claimed export past the end of RAM is refused, not read
    r = run_program(str(hprogs["spin"]), ["badexport"], memory=8 << 20, export=Path(str(liar) + ".ex"), core=core)
    assert r.status == EXIT_LGUEST and "outside guest memory" in (r.message or "")
    # ... and no export at all where one was asked for is said, not silently skipped
    r = run_program(str(hprogs["spin"]), ["noexport"], memory=8 << 20, export=Path(str(liar) + ".ex"), core=core)
    assert r.status == EXIT_LGUEST and "no exported tree" in (r.message or "")


def test_a_kernel_exporting_through_a_symlink(liar: Path, hprogs: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LGUEST_KERNEL", str(liar))
    out = canary(tmp_path)
    before = snapshot(out)
    p = subprocess.run([*LGUEST, "--export", str(tmp_path / "ex"), "--", str(hprogs["spin"]), "export",
                        str(out / "d")], capture_output=True, timeout=120)
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1 and b"esc/pwned" in p.stderr, p.stderr
    assert snapshot(out) == before


def test_closed_stdout_ends_the_program_as_sigpipe(hprogs: dict[str, Path]) -> None:
    """`lguest exec -- yes | head -1`: once the reader is gone the program must
    end (as SIGPIPE ends it natively, 128+13), not flood a closed pipe forever."""
    p = subprocess.Popen([*LGUEST, "--", str(hprogs["hostile"]), "flood"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=default_signals)
    assert p.stdout is not None and p.stderr is not None
    try:
        assert len(p.stdout.read(1 << 20)) == 1 << 20
        p.stdout.close()
        p.wait(timeout=30)
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGPIPE and err.count(b"\n") == 1 and b"SIGPIPE" in err, err


@pytest.mark.parametrize("args", [["a"] * 5000, ["x" * (200 << 10)]], ids=["5000 args", "a 200 KiB arg"])
def test_too_many_arguments_is_e2big_not_a_bad_program(args: list[str], hprogs: dict[str, Path]) -> None:
    """execve's E2BIG, as a shell reports it (126), not 'not an ELF' or 'out of memory'."""
    r = run_program(str(hprogs["echo_stdin"]), args, memory=32 << 20)
    assert r.status == EXIT_CANNOT_RUN and "argument list too long" in (r.message or ""), r.message


def test_a_deep_root_packs(tmp_path: Path) -> None:
    """1100 nested directories (Python 3.11's os.walk would recurse past its limit)."""
    from lguest.guestos.cpio import iter_newc, pack_tree
    d = tmp_path / "root"
    dirs = [d.joinpath(*["d"] * k) for k in range(1, 1101)]
    d.mkdir()
    try:
        for sub in dirs:
            sub.mkdir()
        (dirs[-1] / "leaf").write_bytes(b"deep")
        entries = list(iter_newc(pack_tree(d)))
        assert len(entries) == 1101 and entries[-1] == ("/".join(["d"] * 1100) + "/leaf", 0o100644, b"deep")
    finally:
        # bottom-up, here: 3.11's shutil.rmtree recurses too, and pytest's own
        # clean-up of old temp dirs would die of RecursionError on this tree
        (dirs[-1] / "leaf").unlink(missing_ok=True)
        for sub in reversed(dirs):
            if sub.exists():
                sub.rmdir()


def _close_stdout() -> None:
    default_signals()
    os.close(1)


@pytest.mark.parametrize("where", ["/dev/full", "closed"])
def test_unwritable_stdout_is_one_line(where: str, hprogs: dict[str, Path]) -> None:
    """A full disk or a closed stdout: the write error cannot reach the
    program (its bytes went through the ring), so the run ends: 125, one line."""
    if where == "/dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open(where if where != "closed" else os.devnull, "wb") as sink:
        p = subprocess.run([*LGUEST, "--", str(hprogs["hostile"]), "flood"], stdout=sink, stderr=subprocess.PIPE,
                           timeout=60, preexec_fn=_close_stdout if where == "closed" else default_signals)
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1 and b"cannot write its stdout" in p.stderr, p.stderr


def test_refusals_quote_the_guests_names(tmp_path: Path) -> None:
    """A refused name with a newline and a terminal escape in it: the message
    stays one line and carries no raw control bytes."""
    evil = "clash\n\x1b[2J\x1b]0;pwned\x07"
    (tmp_path / "dst" / evil).mkdir(parents=True)
    (tmp_path / "dst" / evil / "keep").write_bytes(b"host")
    for img in (image((evil, 0o100644, b"g")), image((evil + "/../x", 0o100644, b"")),
                image(("l", 0o120777, b"t"), ("l/" + evil, 0o100644, b""))):
        with pytest.raises(ValueError) as info:
            unpack_tree(img, tmp_path / "dst")
        assert not any(c in str(info.value) for c in "\n\x1b\x07"), str(info.value)


def test_a_kernel_shouting_escapes(liar: Path, hprogs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's SHUTDOWN message is guest memory: the host's line about it
    stays one line, with no raw control bytes for the user's terminal."""
    monkeypatch.setenv("LGUEST_KERNEL", str(liar))
    p = subprocess.run([*LGUEST, "--", str(hprogs["spin"]), "shout"], capture_output=True, timeout=120)
    assert p.returncode == 125 and p.stderr.count(b"\n") == 1 and b"panic" in p.stderr, p.stderr
    assert not any(c in p.stderr for c in b"\x1b\x07")


def test_timeout_holds_while_the_reader_stalls(hprogs: dict[str, Path]) -> None:
    """`lguest exec --timeout 2 -- yes | sleep 100`: the host blocked writing
    to a pipe nobody reads must still stop at the timeout (124), as
    `timeout 2 yes | sleep 100` does."""
    t0 = time.monotonic()
    p = subprocess.Popen([*LGUEST, "--timeout", "2", "--", str(hprogs["hostile"]), "flood"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=default_signals)
    assert p.stderr is not None
    try:
        p.wait(timeout=30)   # never reading stdout: the pipe fills at once
        elapsed = time.monotonic() - t0
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == EXIT_TIMEOUT and err.count(b"\n") == 1 and b"timed out" in err, err
    assert elapsed < 2 + 5


def test_a_run_the_host_stops_still_leaves_its_recording(hprogs: dict[str, Path], tmp_path: Path) -> None:
    """--record, and the host ends the run itself (the reader went away): the
    recording is still written, as an interrupted run."""
    seen = [0]

    def stdout(data: bytes) -> None:
        seen[0] += len(data)
        if seen[0] > 1 << 20:
            raise BrokenPipeError
    r = run_program(str(hprogs["hostile"]), ["flood"], stdout=stdout, record=tmp_path / "run.rec")
    assert r.status == 128 + signal.SIGPIPE and r.signal == signal.SIGPIPE
    assert (tmp_path / "run.rec").stat().st_size > 0
