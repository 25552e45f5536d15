"""The timeline: ``lguest run --trace-out FILE.json`` (Chrome trace-event JSON).

Checked against ``--stats`` event by event, bounded (the ring and the
native hook's buffer both count what they drop), and a whole JSON file
after every way a run ends: power-off, kill, timeout, Ctrl-C, SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from lgtest import default_signals

pytest.importorskip("unicorn")
from lgtest import build_example  # noqa: E402

import lguest  # noqa: E402
from lguest.host.trace import Timeline  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

PAGED = 0xC0000000


@pytest.fixture(scope="module")
def elves(tmp_path_factory: Any) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("traceguest"))
    return {
        "flat": build_example(d, "flat", TICK_NS=20000, TICKS=20),
        "paged": build_example(d, "paged", PAGED),
        "irq1": build_example(d, "irq1", WAIT_IRQ1=1),  # spins until irq 1, which never comes
        "bad3": build_example(d, "bad3", BAD=3),
    }


def lguest_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lguest", "run", "--memory", "4M", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **(env or {})))


def counters(stdout: str) -> dict[str, int]:
    rows = (line.split() for line in stdout.splitlines())
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and re.fullmatch(r"[a-z_0-9x]+", r[0]) and r[1].isdigit()}


def events(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = json.loads(path.read_text())  # valid JSON, or this raises
    evs = [e for e in data["traceEvents"] if e["ph"] != "M"]
    for e in evs:
        assert e["ph"] == "i" and isinstance(e["ts"], float) and e["pid"] == 1
    return evs, data["otherData"]


@pytest.mark.parametrize("pure", ["0", "1"], ids=["cython", "python"])
@pytest.mark.parametrize("kind", ["flat", "paged"])
@pytest.mark.parametrize("clock", ["virtual", "wall"])
def test_the_timeline_adds_up_to_the_stats(elves: dict[str, str], tmp_path: Path, pure: str, kind: str,
                                           clock: str) -> None:
    out = tmp_path / "t.json"
    args = ["--page-offset", hex(PAGED)] if kind == "paged" else []
    run = lguest_run(*args, "--clock", clock, "--stats", "--trace-out", str(out), elves[kind],
                     env={"LGUEST_PURE_PYTHON": pure})
    assert run.returncode == 0, run.stderr
    stats = counters(run.stderr)
    evs, other = events(out)
    assert other["dropped"] == 0 and other["direct_dropped"] == 0
    by = Counter((e["cat"], e.get("args", {}).get("vector", e.get("args", {}).get("nr"))) for e in evs)
    expect: Counter[tuple[str, Any]] = Counter()
    for key, n in stats.items():
        if m := re.fullmatch(r"irq(\d+)", key):
            expect["irq", 32 + int(m.group(1))] = n
        elif m := re.fullmatch(r"direct_0x([0-9a-f]+)", key):
            expect["direct", int(m.group(1), 16)] = n
        elif m := re.fullmatch(r"reflected_(\d+)", key):
            expect["reflect", int(m.group(1))] = n
        elif m := re.fullmatch(r"hypercall_(\d+)", key):
            expect["hcall", int(m.group(1))] = n
    expect["kill", None] = stats["kills"]
    got = Counter({k: v for k, v in by.items() if k[0] not in ("timer", "halt")})
    assert got == expect
    assert stats["direct_0x80"] == 1003 and stats["kills"] == 1
    # the guest's story, in order: syscalls from ring 3 to ring 1, its faults, the ticks it waited for
    direct = [e for e in evs if e["cat"] == "direct"]
    assert all(e["args"]["ring_from"] == 3 and e["args"]["ring_to"] == 1 for e in direct)
    irqs = [e for e in evs if e["cat"] == "irq"]
    assert all(e["args"]["ring_to"] == 1 and e["args"]["ring_from"] in (1, 3) for e in irqs)
    assert [e["args"]["vector"] for e in evs if e["cat"] == "reflect"] == [13, 13, 6, 14]
    assert evs[-1]["cat"] == "kill" and evs[-1]["args"]["reason"] == "CRASH: bye"
    times = [e["ts"] for e in evs]
    assert times == sorted(times)  # one clock for everything
    wakes = [e for e in evs if e["name"] == "wake"]
    assert len(wakes) == stats.get("hypercall_10", 0) and all(e["args"]["halted_ns"] >= 0 for e in wakes)
    # every tick the guest took was a timer fire, the wall clock's (fired in
    # the compiled core's timer thread) too, each before the tick it caused
    fires = [e["ts"] for e in evs if e["cat"] == "timer"]
    ticks = [e["ts"] for e in irqs if e["args"]["vector"] == 0x20]
    assert len(fires) >= stats["irq0"] > 0
    assert all(f <= t for f, t in zip(fires, ticks, strict=False))
    if clock == "virtual":
        # virtual time: the ticks sit TICK_NS of guest time apart or more
        ticks = [e["ts"] for e in irqs if e["args"]["vector"] == 0x20]
        assert all(b - a >= 20.0 - 1e-6 for a, b in zip(ticks, ticks[1:], strict=False))


def test_the_timeline_is_bounded_and_counts_what_it_drops(elves: dict[str, str], tmp_path: Path) -> None:
    full, small = tmp_path / "full.json", tmp_path / "small.json"
    assert lguest_run("--trace-out", str(full), elves["flat"]).returncode == 0
    assert lguest_run("--trace-out", str(small), "--trace-limit", "100", elves["flat"]).returncode == 0
    all_evs, other_full = events(full)
    kept, other = events(small)
    assert len(kept) == 100 and other["recorded"] == other_full["recorded"] == len(all_evs)
    assert other["dropped"] == len(all_evs) - 100
    assert kept == all_evs[-100:]  # the newest


def test_the_hooks_direct_trap_buffer_is_bounded(elves: dict[str, str], core: Any) -> None:
    """Between two host stops the hook holds at most its capacity of direct
    traps; the rest are counted, and the two add up to the deliveries."""
    with UnicornLauncher(memory=4 << 20, used_vectors=lguest.UsedVectors(used=range(32)), core=core) as lg:
        lg.load_elf(elves["flat"])
        timeline = lg.start_timeline()
        if lg.backend.hooks.has_native_core:
            lg.backend.hooks.trace_direct(8)
        assert lg.run(timeout=60).message == "CRASH: bye"
        direct = sum(1 for e in timeline.events if e["cat"] == "direct")
        assert direct + timeline.direct_dropped == lg.stats["direct_0x80"] == 1003
        if lg.backend.hooks.has_native_core:
            assert timeline.direct_dropped > 0


def test_write_is_atomic_and_valid(tmp_path: Path) -> None:
    t = Timeline(limit=3)
    for i in range(5):
        t.add(i * 1000, f"e{i}", "irq", {"vector": 32})
    path = tmp_path / "t.json"
    path.write_text("old")
    t.write(path)
    data = json.loads(path.read_text())
    assert [e["name"] for e in data["traceEvents"] if e["ph"] == "i"] == ["e2", "e3", "e4"]
    assert data["otherData"]["dropped"] == 2
    assert os.listdir(tmp_path) == ["t.json"]  # no temporary left
    with pytest.raises(ValueError):
        Timeline(limit=0)


def test_an_event_learnt_late_goes_in_time_order(tmp_path: Path) -> None:
    """add_in_order (a wall-clock timer fire, seen after later events): the
    file stays sorted, and a full ring still keeps the newest."""
    t = Timeline(limit=4)
    for i in (1, 2, 4, 5):
        t.add(i * 1000, f"e{i}", "irq")
    t.add_in_order(3000, "fire", "timer")
    assert [e["name"] for e in t.events] == ["e2", "fire", "e4", "e5"]
    t.add_in_order(500, "too old", "timer")  # older than everything kept: dropped
    assert [e["name"] for e in t.events] == ["e2", "fire", "e4", "e5"]
    assert t.recorded == 6 and t.dropped == 2


def test_valid_json_after_a_kill_and_a_timeout(elves: dict[str, str], tmp_path: Path) -> None:
    killed = tmp_path / "killed.json"
    run = lguest_run("--trace-out", str(killed), elves["bad3"])
    assert run.returncode == 1
    evs, _ = events(killed)
    assert evs[-1]["cat"] == "kill" and "Bad hypercall 99" in evs[-1]["args"]["reason"]
    timed = tmp_path / "timeout.json"
    t0 = time.monotonic()
    run = lguest_run("--trace-out", str(timed), "--timeout", "0.5", elves["irq1"])
    assert run.returncode == 3 and time.monotonic() - t0 < 30
    evs, _ = events(timed)
    assert not any(e["cat"] == "kill" for e in evs) and any(e["cat"] == "hcall" for e in evs)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_valid_json_after_a_signal(elves: dict[str, str], tmp_path: Path, sig: int) -> None:
    out = tmp_path / "sig.json"
    proc = subprocess.Popen([sys.executable, "-m", "lguest", "run", "--memory", "4M", "--trace-out", str(out),
                             elves["irq1"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        line = ""
        while "waiting for irq 1" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()  # the guest is spinning once it says so
        proc.send_signal(sig)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    evs, _ = events(out)
    assert any(e["cat"] == "direct" for e in evs)
