"""poll, ppoll, select and pselect6 under ``lguest exec``, compared with Linux.

tests/exec_progs/poll.c exercises every call on the files the kernel has
(always ready), stdout, closed descriptors, bad pointers and timeouts, and
stdin as the test gives it -- the read end of a pipe holding bytes whose
writer is gone, an empty one whose writer is gone, one whose writer stays
and never writes (every wait times out), one written to later -- natively
and under ``lguest exec`` with the same kind of stdin; the outputs must be
identical.  busybox ash's ``read`` polls stdin before every byte; its runs
are compared with native ones, and a run that polls stdin is recorded and
replayed.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import test_exec
from lgtest import busybox_path
from test_exec import make_root
from test_exec_record import feeder, outcome, replay

from lguest.guestos.runner import run_program

pytest.importorskip("unicorn")

# test_exec's fixtures: the test programs built for i386, and whether this host runs them
guest_kernel, progs, native_i386 = test_exec.guest_kernel, test_exec.progs, test_exec.native_i386


@contextmanager
def stdin_pipe(mode: str) -> Iterator[int]:
    """The read end of a pipe in the state ``mode`` names (see the module text)."""
    rfd, wfd = os.pipe()
    writer: threading.Thread | None = None
    try:
        if mode == "data":
            os.write(wfd, b"hi\n")
        if mode in ("data", "eof"):
            os.close(wfd)
            wfd = -1
        if mode == "late":
            writer = threading.Thread(target=lambda: (time.sleep(0.3), os.write(wfd, b"later")))
            writer.start()
        yield rfd
    finally:
        if writer is not None:
            writer.join()
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def both(run: Callable[[int], Any], native: list[str], mode: str, cwd: Path) -> tuple[Any, Any]:
    with stdin_pipe(mode) as rfd:
        result = run(rfd)
    try:
        with stdin_pipe(mode) as rfd:
            nat = subprocess.run(native, stdin=rfd, cwd=cwd, capture_output=True, timeout=60,
                                 env={"PATH": "/bin:/usr/bin"})
    except OSError as exc:
        pytest.skip(f"this host does not run i386 programs natively ({exc}): compared nothing")
    return result, nat


@pytest.mark.parametrize("mode,clock", [("data", "virtual"), ("eof", "virtual"), ("wait", "virtual"),
                                        ("wait", "wall"), ("late", "virtual"), ("late", "wall")])
def test_poll_and_select_match_native(mode: str, clock: str, progs: dict[str, Path], native_i386: bool,
                                      tmp_path: Path, core: Any) -> None:
    """Every line the program prints -- results, revents, the sets, what is
    left of a timeout, whether the wait lasted -- is Linux's (before: poll
    and select were -ENOSYS)."""
    if not native_i386:
        pytest.skip("this host does not run i386 programs natively: compared nothing")
    root = make_root(tmp_path / "g", progs)
    nroot = make_root(tmp_path / "n", progs)
    t0 = time.monotonic()
    result, nat = both(lambda rfd: run_program("/bin/poll", (mode,), root=root, stdin=rfd, core=core, clock=clock,
                                               timeout=60, memory=32 << 20),
                       [str(nroot / "bin" / "poll"), mode], mode, nroot)
    assert result.message is None, result.message
    assert not result.unsupported, result.unsupported
    assert result.stdout.decode() == nat.stdout.decode()
    assert result.status == nat.returncode == 0
    if mode == "wait" and clock == "virtual":  # the guest's clock waited, not the host
        assert time.monotonic() - t0 < 30
    for call in ("poll", "select"):
        assert result.syscalls.get(call if call == "poll" else "_newselect", 0) > 0


@pytest.fixture(scope="module")
def bbroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bb = busybox_path()
    if bb is None:
        pytest.skip("busybox-static:i386 is absent: run .ci/fetch-busybox")
    r = tmp_path_factory.mktemp("bbroot")
    (r / "bin").mkdir()
    (r / "bin" / "busybox").write_bytes(bb.read_bytes())
    (r / "bin" / "busybox").chmod(0o755)
    return r


SCRIPTS = {
    "read": ("data", 'read a; echo "got:$a"'),
    "while-read": ("lines", 'n=0; while read x y; do n=$((n+1)); echo "$n [$x|$y]"; done; echo "end $n"'),
    "read-at-end": ("eof", 'read a; echo "status:$? a:$a"'),
    "read-timeout": ("wait", 'read -t 0.2 a; echo "status:$? a:$a"'),
    "read-later": ("late", 'read -n 5 a; echo "got:$a"'),
}


@contextmanager
def bb_stdin(kind: str) -> Iterator[int]:
    if kind == "lines":
        rfd, wfd = os.pipe()
        os.write(wfd, b"one two\nthree\n  four  five six\n\nlast line without newline")
        os.close(wfd)
        try:
            yield rfd
        finally:
            os.close(rfd)
        return
    with stdin_pipe("data" if kind == "data" else kind) as rfd:
        yield rfd


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_busybox_read_matches_native(case: str, bbroot: Path, core: Any) -> None:
    """ash's read polls stdin before each byte: before this, poll was
    -ENOSYS and `read a` got nothing (`got:` where Linux prints `got:hi`)."""
    kind, script = SCRIPTS[case]
    with bb_stdin(kind) as rfd:
        result = run_program("/bin/busybox", ("sh", "-c", script), root=bbroot, stdin=rfd, core=core, timeout=60,
                             memory=32 << 20)
    assert result.message is None, result.message
    assert not result.unsupported, result.unsupported
    assert result.syscalls.get("poll", 0) > 0
    try:
        with bb_stdin(kind) as rfd:
            nat = subprocess.run([str(bbroot / "bin" / "busybox"), "sh", "-c", script], stdin=rfd,
                                 capture_output=True, timeout=60)
    except OSError as exc:
        pytest.skip(f"this host does not run i386 programs natively ({exc}): compared nothing")
    assert (result.stdout, result.stderr, result.status) == (nat.stdout, nat.stderr, nat.returncode)


def test_the_cli_reads_a_line_from_a_pipe(bbroot: Path) -> None:
    """The issue's own command line."""
    import sys
    proc = subprocess.run(f"echo hello | {sys.executable} -m lguest exec --root {bbroot} -- /bin/busybox sh -c "
                          "'read a; echo \"got:$a\"'", shell=True, capture_output=True, timeout=120)
    assert (proc.stdout, proc.returncode) == (b"got:hello\n", 0), proc.stderr


def test_a_run_that_polls_stdin_replays_identically(bbroot: Path, core: Any, tmp_path: Path) -> None:
    """ash's `while read` over chunks that come at random times, under the
    wall clock: the recording holds what each poll found (bytes, nothing
    yet, the writer gone) where it asked, and replays twice identically."""
    script = 'while read -r l; do echo "${#l}"; done; echo end'
    runs = []
    for seed in (1, 2):
        path = tmp_path / f"rec{seed}.json"
        rfd, t = feeder(seed, chunks=4)
        try:
            r = run_program("/bin/busybox", ("sh", "-c", script), root=bbroot, memory=32 << 20, clock="wall",
                            stdin=rfd, core=core, timeout=60, record=path)
        finally:
            t.join()
            os.close(rfd)
        assert r.message is None and r.status == 0 and r.stdout.endswith(b"end\n"), r
        assert r.syscalls["poll"] > 0
        kinds = {type(e[3]).__name__ for e in json.loads(path.read_text())["sync"] if e[2] == "stdin"}
        assert "str" in kinds and kinds <= {"str", "list"}, kinds  # bytes; poll's looks (nothing yet ...)
        runs.append((path, outcome(r)))
        for _ in range(2):
            again, report = replay(bbroot, path, "/bin/busybox", ("sh", "-c", script), core)
            assert report == []
            assert again == outcome(r)
    assert runs[0][1]["stdout"] != runs[1][1]["stdout"]


def test_a_poll_with_timeouts_replays_identically(progs: dict[str, Path], tmp_path: Path, core: Any) -> None:
    """The wall clock's waits (poll, select, ppoll, pselect6 timing out on a
    stdin that never comes) recorded, then replayed twice: identical."""
    root = make_root(tmp_path / "g", progs)
    path = tmp_path / "rec.json"
    with stdin_pipe("wait") as rfd:
        r = run_program("/bin/poll", ("wait",), root=root, memory=32 << 20, clock="wall", stdin=rfd, core=core,
                        timeout=60, record=path)
    assert r.message is None and r.status == 0, r
    assert b"stdin poll 100 ms: 0 0\npoll waited 100 ms: 1\n" in r.stdout
    assert b"stdin select 60 ms: 0 in 0 out 0\nselect waited 60 ms: 1\n" in r.stdout
    # each look at stdin found nothing yet: logged as such, not as the end of the input
    looks = [e[3] for e in json.loads(path.read_text())["sync"] if e[2] == "stdin"]
    assert looks and all(v == [None, False] for v in looks), looks
    for _ in range(2):
        again, report = replay(root, path, "/bin/poll", ("wait",), core)
        assert report == []
        assert again == outcome(r)


def test_a_tty_stdin_reads_its_eof_once(bbroot: Path, core: Any) -> None:
    """A terminal's ^D is readable to poll and ends one read; the next read
    waits for the next line (before: the ^D poll saw stuck, every later
    read ended at once)."""
    import pty
    script = 'read a; echo "got:$a"; read b; echo "status:$? b:$b"; read c; echo "again:$? c:$c"'
    outs = []
    for native in (False, True):
        master, slave = pty.openpty()

        def feed(fd: int = master) -> None:
            for chunk in (b"hi\n", b"\x04", b"x\n"):
                time.sleep(0.3)
                os.write(fd, chunk)
        t = threading.Thread(target=feed)
        t.start()
        try:
            if native:
                try:
                    nat = subprocess.run([str(bbroot / "bin" / "busybox"), "sh", "-c", script], stdin=slave,
                                         capture_output=True, timeout=60)
                except OSError as exc:
                    pytest.skip(f"this host does not run i386 programs natively ({exc}): compared nothing")
                outs.append((nat.stdout, nat.returncode))
            else:
                r = run_program("/bin/busybox", ("sh", "-c", script), root=bbroot, stdin=slave, core=core,
                                timeout=60, memory=32 << 20, tty=(True, False, False))
                assert r.message is None, r.message
                outs.append((r.stdout, r.status))
        finally:
            t.join()
            os.close(master)
            os.close(slave)
    assert outs[0] == outs[1] == (b"got:hi\nstatus:1 b:\nagain:0 c:x\n", 0)
