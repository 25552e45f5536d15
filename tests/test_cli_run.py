"""``lguest run`` as a user meets it: the real command in a subprocess, real
guest images assembled here with binutils, real signals.

Every mistake is one line on stderr (``lguest: <what>: <why>``), exit status
2, no traceback; every outcome has its documented exit status; SIGINT and
SIGTERM stop even a guest that never leaves the emulator.  Time bounds are
generous containment bounds only (a signal answered "within T + 0.5 s"
where the promise is half a second).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lgtest import default_signals

pytest.importorskip("unicorn")
pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

# A minimal flat guest (page_offset 0, linked at 1 MiB): LGUEST_INIT, then
# one of the behaviours below.  Hypercalls are vmcall (the host patches them).
GUEST_S = r"""
        .text
        .globl _start
_start:
        movl    $1, %eax                /* LHCALL_LGUEST_INIT(lguest_data) */
        movl    $lguest_data, %ebx
        vmcall
.ifdef HALT
1:      movl    $10, %eax               /* LHCALL_HALT, forever: the run loop sleeps */
        vmcall
        jmp     1b
.endif
.ifdef SHUTDOWN
        movl    $2, %eax                /* LHCALL_SHUTDOWN(message, SHUTDOWN) */
        movl    $message, %ebx
        movl    $SHUTDOWN, %ecx
        vmcall
.endif
.ifdef BADCALL
        movl    $99, %eax               /* no such hypercall: the host kills */
        vmcall
.endif
spin:   jmp     spin                    /* never leaves the emulator */

        .data
message: .asciz "bye from the guest"
        .balign 4096
lguest_data:                            /* struct lguest_data */
        .long   0x200                   /* irq_enabled: interrupts on */
        .fill   16, 1, 0                /* blocked_interrupts, cr2, time */
        .fill   64, 1, 0xff             /* hcall_status: the async ring is empty */
        .fill   1132 - 84, 1, 0
        .long   0x80                    /* syscall_vec (offset 1132): LGUEST_INIT checks it */
        .fill   4096 - 1136, 1, 0
"""


def _build(d: Path, name: str, *syms: str, ld_args: tuple[str, ...] = ("-m", "elf_i386")) -> Path:
    src = d / "g.S"
    src.write_text(GUEST_S)
    obj, elf = d / f"{name}.o", d / f"{name}.elf"
    defs = [f"--defsym={s}" for s in syms]
    subprocess.run(["as", "--32", *defs, "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", *ld_args, "-Ttext=0x100000", "-e", "_start", "-o", str(elf), str(obj)],
                   check=True, capture_output=True)
    return elf


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli_images")
    out = {
        "spin": _build(d, "spin"),
        "halt": _build(d, "halt", "HALT=1"),
        "poweroff": _build(d, "poweroff", "SHUTDOWN=1"),
        "restart": _build(d, "restart", "SHUTDOWN=2"),
        "badcall": _build(d, "badcall", "BADCALL=1"),
    }
    # An x86-64 ELF: the same source assembled for 64 bits.
    src64 = d / "g64.S"
    src64.write_text(".text\n.globl _start\n_start: jmp _start\n")
    subprocess.run(["as", "--64", "-o", str(d / "g64.o"), str(src64)], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64", "-e", "_start", "-o", str(d / "elf64.elf"), str(d / "g64.o")],
                   check=True, capture_output=True)
    out["elf64"] = d / "elf64.elf"
    # A 32-bit ELF for another machine: the spin guest with e_machine = 40 (ARM).
    arm = bytearray(out["spin"].read_bytes())
    arm[18:20] = (40).to_bytes(2, "little")
    (d / "arm.elf").write_bytes(arm)
    out["arm"] = d / "arm.elf"
    (d / "empty.elf").write_bytes(b"")
    out["empty"] = d / "empty.elf"
    (d / "random.bin").write_bytes(bytes((i * 151 + 7) & 0xFF for i in range(4096)))
    out["random"] = d / "random.bin"
    out["dir"] = d
    return out


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LGUEST_SYSCALL_VECTOR", "LGUEST_DEBUG")}
    env.update(extra or {})
    return env


def lguest(*args: str | Path, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lguest", *map(str, args)], capture_output=True, text=True,
                          env=_env(env), timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert the documented usage-error shape and return the line."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("lguest: "), lines[0]
    assert out.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- bad images ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which,fragments", [
    ("dir", ("is a directory",)),
    ("empty", ("empty file", "not an ELF")),
    ("random", ("not an ELF file",)),
    ("elf64", ("64-bit ELF", "32-bit i386")),
    ("arm", ("not an i386 ELF file", "40")),
])
def test_bad_image_is_one_line(images: dict[str, Path], which: str, fragments: tuple[str, ...]) -> None:
    line = one_line_error(lguest("run", images[which]), *fragments)
    assert str(images[which]) in line  # the user sees which file


def test_missing_image(tmp_path: Path) -> None:
    one_line_error(lguest("run", tmp_path / "nope.elf"), "nope.elf: no such file")


def test_device_file_is_refused_not_read_forever() -> None:
    one_line_error(lguest("run", "/dev/zero", timeout=30), "/dev/zero: not a regular file")


def test_segments_that_do_not_fit_say_how_much_they_need(images: dict[str, Path]) -> None:
    # The spin guest loads at 1 MiB: its segments end past 64 KiB.
    line = one_line_error(lguest("run", images["spin"], "--memory", "64k"), "do not fit", "64 KiB")
    need = int(line.split("they need ")[1].split(" bytes")[0])
    assert need > 0x100000
    assert "--memory 2M" in line


# --- bad options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragments", [
    (("--memory", "4G"), ("--memory", "4 KiB to 4092 MiB")),
    (("--memory", "1t"), ("--memory", "'1t'", "K, M or G", "any case")),
    (("--memory", "12345"), ("--memory", "'12345'", "4 KiB")),
    (("--memory", "0"), ("--memory", "'0'",)),
    (("--page-offset", "0x1000"), ("--page-offset", "0x1000", "4 MiB")),
    (("--page-offset", "0xffc00000"), ("--page-offset", "below the Switcher")),
    (("--page-offset", "0x400000"), ("--page-offset", "inside guest RAM")),
    (("--page-offset", "0xC0000000", "--memory", "2G"), ("--memory", "largest is 1020 MiB")),
    (("--page-offset", "banana"), ("--page-offset", "'banana'", "not a number")),
    (("--timeout", "-1"), ("--timeout", "'-1'", "positive")),
    (("--timeout", "0"), ("--timeout", "'0'", "positive")),
    (("--timeout", "nan"), ("--timeout", "'nan'")),
    (("--syscall-vector", "0x100"), ("--syscall-vector", "'0x100'", "0..255")),
    (("--core", "pypy"), ("--core", "'pypy'")),
])
def test_bad_option_is_one_line(images: dict[str, Path], args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    one_line_error(lguest("run", images["spin"], *args), *fragments)


@pytest.mark.parametrize("spelling", ["16M", "16m", "16MB", "16mib", "16MiB", "0x1000000", "16384K", "16384k"])
def test_size_suffixes_in_any_case(images: dict[str, Path], spelling: str) -> None:
    out = lguest("run", images["poweroff"], "--memory", spelling)
    assert out.returncode == 0, out.stderr


def test_bad_environment_vector_is_a_usage_error(images: dict[str, Path]) -> None:
    out = lguest("run", images["spin"], env={"LGUEST_SYSCALL_VECTOR": "300"})
    one_line_error(out, "LGUEST_SYSCALL_VECTOR", "'300'", "0..255")
    out = lguest("vectors", env={"LGUEST_SYSCALL_VECTOR": "banana"})
    one_line_error(out, "LGUEST_SYSCALL_VECTOR", "'banana'")


def test_busy_vector_has_its_own_status(images: dict[str, Path]) -> None:
    out = lguest("run", images["spin"], "--syscall-vector", "0x31")
    assert out.returncode == 5, out.stderr
    assert out.stderr.splitlines() == ["lguest: couldn't reserve syscall 49: vector in use by per-CPU legacy IRQ 1"]


# --- outcomes and their exit statuses ------------------------------------------------------------------
@pytest.fixture(params=["python", "cython"])
def core_name(request: pytest.FixtureRequest) -> str:
    """The CLI's --core: every run test runs on both cores."""
    from lgtest import load_core_or_fail, pure_python_only

    if request.param == "cython" and pure_python_only():
        pytest.skip("LGUEST_PURE_PYTHON=1: the compiled core is not tested")
    load_core_or_fail(request.param)
    return request.param


def test_shutdown_is_reported_as_a_shutdown(images: dict[str, Path], core_name: str) -> None:
    out = lguest("run", images["poweroff"], "--core", core_name)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "lguest: guest shut down: bye from the guest"
    assert "CRASH" not in out.stderr and "dead" not in out.stderr
    assert out.stdout == ""  # host messages never reach the guest console's stream


def test_guest_text_in_the_outcome_line_is_escaped(images: dict[str, Path], tmp_path: Path) -> None:
    """The shutdown message is guest memory: a newline or a terminal escape
    in it reached the terminal raw (two lines, a recoloured screen).  It is
    shown escaped, on one line."""
    elf = images["poweroff"].read_bytes()
    hostile = b"bye\n\x1b[2Jguest!!!!!"
    assert len(hostile) == len(b"bye from the guest")
    path = tmp_path / "esc.elf"
    path.write_bytes(elf.replace(b"bye from the guest", hostile))
    out = lguest("run", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0] == "lguest: guest shut down: bye\\n\\x1b[2Jguest!!!!!"
    assert "\x1b" not in out.stderr


def test_restart_has_its_own_status(images: dict[str, Path], core_name: str) -> None:
    out = lguest("run", images["restart"], "--core", core_name)
    assert out.returncode == 4, out.stderr
    assert out.stderr.splitlines()[0] == "lguest: guest asked to restart: bye from the guest"


def test_kill_by_the_host_is_a_kill(images: dict[str, Path], core_name: str) -> None:
    out = lguest("run", images["badcall"], "--core", core_name)
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines()[0] == "lguest: guest killed by the host: Bad hypercall 99"


def test_timeout_status_and_stats_on_stderr(images: dict[str, Path], core_name: str) -> None:
    out = lguest("run", images["spin"], "--core", core_name, "--timeout", "0.3", "--stats")
    assert out.returncode == 3, out.stderr
    assert out.stderr.splitlines()[0].startswith("lguest: timed out after ")
    assert "blocks" in out.stderr and out.stdout == ""


def test_help_documents_every_exit_status() -> None:
    from lguest.cli import EXIT_CODES

    text = lguest("run", "--help").stdout
    for code, _what in EXIT_CODES:
        assert f"  {code:>3}  " in text
    assert {c for c, _ in EXIT_CODES} >= {0, 1, 2, 3, 4, 5, 130, 143}
    doc = (Path(__file__).resolve().parent.parent / "docs" / "CLI.md")
    if doc.exists():  # the sdist may ship tests without docs
        for code, what in EXIT_CODES:
            assert f"| {code} | {what} |" in doc.read_text()


def test_version_names_package_core_and_unicorn() -> None:
    import unicorn

    import lguest as pkg

    out = lguest("--version")
    assert out.returncode == 0
    line = out.stdout.strip()
    assert line.startswith(f"lguest {pkg.__version__} ")
    assert f"core: {pkg.CORE}" in line and f"Unicorn {unicorn.__version__}" in line


# --- signals -------------------------------------------------------------------------------------------
def _wait_until_signals_are_taken(proc: subprocess.Popen[Any], limit: float = 60.0) -> None:
    """Until the CLI has installed its signal handling: SIGTERM is caught (the
    kernel's SigCgt mask), which plain Python never does.  A fixed sleep was
    not enough on a loaded machine (a SIGINT before that is Python's default
    KeyboardInterrupt, during the imports).  Then a little more, so that the
    guest is running when the signal comes."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            break
        if caught & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.02)
    time.sleep(0.5)


def _signal_run(image: Path, sig: int, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start ``lguest run``, wait until the guest runs, send ``sig``; (result, seconds to exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", str(image), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=default_signals)
    try:
        _wait_until_signals_are_taken(proc)
        assert proc.poll() is None, proc.communicate()
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), took


@pytest.mark.parametrize("guest", ["spin", "halt"])
@pytest.mark.parametrize("extra", [(), ("--timeout", "600")])
def test_sigint_stops_any_guest(images: dict[str, Path], core_name: str, guest: str, extra: tuple[str, ...]) -> None:
    out, took = _signal_run(images[guest], signal.SIGINT, "--core", core_name, "--stats", *extra)
    assert out.returncode == 130, out.stderr
    assert took < 0.5 + 1.5  # the promise is 0.5 s; the rest is a loaded machine's slack for exit
    assert "Traceback" not in out.stderr and "KeyboardInterrupt" not in out.stderr
    lines = out.stderr.splitlines()
    assert lines[0].startswith("lguest: interrupted after ") and lines[0].endswith(" s")
    assert lines[1].startswith("counter")  # --stats still printed
    assert out.stdout == ""


def test_sigterm_stops_with_143_and_prints_the_trace(images: dict[str, Path], core_name: str) -> None:
    out, took = _signal_run(images["halt"], signal.SIGTERM, "--core", core_name, "--trace")
    assert out.returncode == 143, out.stderr
    assert took < 2.0
    lines = out.stderr.splitlines()
    assert lines[0].startswith("lguest: terminated after ")
    assert "last events (time_ns, vector, eip, kind):" in out.stderr


def test_sigint_ends_the_progress_line_first(images: dict[str, Path]) -> None:
    # stderr on a pseudo-terminal: the progress line is shown, and must be
    # ended before "interrupted" is printed.
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", str(images["spin"])],
                                stdout=subprocess.DEVNULL, stderr=slave, env=_env(),
                                preexec_fn=default_signals)
        os.close(slave)
        _wait_until_signals_are_taken(proc)
        time.sleep(2.0)  # the progress line is written every second
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    text = b"".join(chunks).decode()
    assert proc.returncode == 130
    assert "M blocks/s" in text
    progress_end = text.rindex("interrupts/s")
    interrupted = text.index("lguest: interrupted after ")
    assert progress_end < interrupted
    assert "\n" in text[progress_end:interrupted]
