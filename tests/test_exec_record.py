"""Record and replay of ``lguest exec`` (``--record``/``--replay``, ``run_program(record=, replay=)``).

A program's inputs under the guest kernel: the bytes its stdin delivers
(as they enter the console ring, in the chunks a pipe happened to give),
the wall clock (the timer fires, the timestamps the host writes into
lguest_data) and the TSC.  Each test records two runs whose inputs differ
(stdin fed from a pipe at random times, the wall clock, rdtsc -- the two
outputs must differ, or the test proves nothing) and replays each twice:
stdout, stderr, the exit status, the counters and the final registers must
be the recording's every time.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lgtest import EXEC_PROGS as PROGS
from lgtest import build_i386, busybox_path, guest_kernel_or_skip

from lguest.guestos.runner import ExecResult, run_program
from lguest.host.record import guest_counters

pytest.importorskip("unicorn")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    guest_kernel_or_skip()
    r = tmp_path_factory.mktemp("recroot")
    (r / "bin").mkdir()
    for name in ("record_me", "echo_stdin"):
        build_i386(PROGS / f"{name}.c", r / "bin" / name)
    bb = busybox_path()
    if bb is not None:
        shutil.copy(bb, r / "bin" / "busybox")
    return r


def feeder(seed: int, chunks: int = 5) -> tuple[int, threading.Thread]:
    """The read end of a pipe a thread writes random chunks into at random times, then closes."""
    rfd, wfd = os.pipe()
    rnd = random.Random(seed)

    def write() -> None:
        try:
            for _ in range(chunks):
                time.sleep(rnd.uniform(0.005, 0.05))
                os.write(wfd, rnd.randbytes(rnd.randint(1, 3000)))
        finally:
            os.close(wfd)
    t = threading.Thread(target=write)
    t.start()
    return rfd, t


def outcome(r: ExecResult) -> dict[str, Any]:
    return {"status": r.status, "stdout": r.stdout, "stderr": r.stderr, "message": r.message,
            "syscalls": r.syscalls, "counters": guest_counters(r.stats)}


def record(root: Path, path: Path, program: str, args: tuple[str, ...], core: Any, seed: int | None) -> dict[str, Any]:
    rfd, t = feeder(seed) if seed is not None else (None, None)
    try:
        r = run_program(program, args, root=root, memory=32 << 20, clock="wall", stdin=rfd, core=core, timeout=60,
                        record=path)
    finally:
        if t is not None:
            t.join()
            os.close(rfd)  # type: ignore[arg-type]
    assert r.replay is None and r.message is None, r
    return outcome(r)


def replay(root: Path, path: Path, program: str, args: tuple[str, ...], core: Any) -> tuple[dict[str, Any], list[str]]:
    r = run_program(program, args, root=root, memory=32 << 20, stdin=b"not read", core=core, timeout=60,
                    replay=path)
    assert r.replay is not None
    return outcome(r), r.replay


def check(root: Path, tmp_path: Path, program: str, args: tuple[str, ...], core: Any,
          stdin: bool) -> list[tuple[Path, dict[str, Any]]]:
    paths = [tmp_path / "one.json", tmp_path / "two.json"]
    runs = [record(root, p, program, args, core, seed=i if stdin else None) for i, p in enumerate(paths)]
    assert runs[0]["stdout"] != runs[1]["stdout"]  # other inputs, other output: the test means something
    for path, run in zip(paths, runs, strict=True):
        for _ in range(2):
            again, report = replay(root, path, program, args, core)
            assert report == []
            assert again == run
    return list(zip(paths, runs, strict=True))


def test_a_freestanding_program_reading_stdin_the_clock_and_the_tsc(root: Path, core: Any, tmp_path: Path) -> None:
    path, run = check(root, tmp_path, "/bin/record_me", (), core, stdin=True)[0]
    data = json.loads(path.read_text())
    assert {e[2] for e in data["sync"]} == {"stdin", "rdtsc"}
    # hex, or [hex, hup] for bytes read after the writer was gone
    stdin = [bytes.fromhex(e[3] if isinstance(e[3], str) else e[3][0]) for e in data["sync"] if e[2] == "stdin"]
    assert stdin[-1] == b"" and all(stdin[:-1])  # the chunks as they came, then the end of the input
    assert f"bytes: {sum(map(len, stdin))}\n".encode() in run["stdout"]
    assert {"time", "timer"} <= {e[2] for e in data["events"]}  # the wall clock's fires and timestamps


def test_a_replay_of_another_program_names_the_first_difference(root: Path, core: Any, tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    record(root, path, "/bin/record_me", (), core, seed=7)
    again, report = replay(root, path, "/bin/echo_stdin", (), core)
    diverged = [line for line in report if line.startswith("diverged: ")]
    assert len(diverged) == 1 and " of " in diverged[0] and "differs" in diverged[0], report
    assert any(line.startswith("program: recorded '/bin/record_me', replayed '/bin/echo_stdin'") for line in report)
    again, report = replay(root, path, "/bin/record_me", ("an", "argument"), core)
    assert "args: recorded [], replayed ['an', 'argument']" in report


@pytest.mark.parametrize("args,stdin", [(("sha256sum",), True), (("sh", "-c", "echo $RANDOM"), False)],
                         ids=["sha256sum-of-stdin", "sh-random-from-the-clock"])
def test_busybox(root: Path, core: Any, tmp_path: Path, args: tuple[str, ...], stdin: bool) -> None:
    """sha256sum of stdin fed in chunks at random times; ash's $RANDOM,
    seeded from the clock (busybox under lguest exec cannot fork a date)."""
    if not (root / "bin" / "busybox").exists():
        pytest.skip("busybox-static:i386 is absent: run .ci/fetch-busybox")
    check(root, tmp_path, "/bin/busybox", args, core, stdin=stdin)


def lguest_exec(*args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "lguest", "exec", *args], stdin=stdin, capture_output=True,
                          timeout=120)


def test_the_command_records_and_replays(root: Path, tmp_path: Path) -> None:
    rec = tmp_path / "cli.json"
    rfd, t = feeder(11)
    try:
        first = lguest_exec("--clock", "wall", "--record", str(rec), "--root", str(root), "--", "/bin/record_me",
                            stdin=rfd)
    finally:
        t.join()
        os.close(rfd)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(b"chunk ") >= 1
    again = lguest_exec("--replay", str(rec), "--root", str(root), "--", "/bin/record_me")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert b"replay identical to the recording" in again.stderr
    other = lguest_exec("--replay", str(rec), "--root", str(root), "--", "/bin/record_me", "x")
    assert other.returncode == 125 and b"the replay differs from the recording" in other.stderr
    both = lguest_exec("--record", str(rec), "--replay", str(rec), "--root", str(root), "--", "/bin/record_me")
    assert both.returncode == 125 and b"not allowed with" in both.stderr
    missing = lguest_exec("--replay", str(tmp_path / "missing.json"), "--root", str(root), "--", "/bin/record_me")
    assert missing.returncode == 125 and b"--replay" in missing.stderr


def test_the_timeline_of_an_exec_run(root: Path, tmp_path: Path) -> None:
    """lguest exec --trace-out: the system calls (direct traps), the ticks and
    their timer fires, the SHUTDOWN, in time order; it adds up to --stats."""
    out = tmp_path / "t.json"
    run = lguest_exec("--clock", "wall", "--stats", "--trace-out", str(out), "--root", str(root), "--",
                      "/bin/record_me", stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    evs = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "i"]
    times = [e["ts"] for e in evs]
    assert times == sorted(times)
    stats = dict(line.rsplit(None, 1) for line in run.stderr.decode().splitlines()
                 if line.split() and line.split()[-1].isdigit() and len(line.split()) >= 2)
    direct = sum(1 for e in evs if e["cat"] == "direct")
    assert direct == int(stats["direct traps"].strip()) > 0
    irqs = sum(1 for e in evs if e["cat"] == "irq")
    assert irqs == int(stats["interrupts"].strip())
    assert sum(1 for e in evs if e["cat"] == "timer") >= sum(1 for e in evs if e["name"].startswith("irq 0 "))
    assert any(e["name"] == "hcall SHUTDOWN" for e in evs)
