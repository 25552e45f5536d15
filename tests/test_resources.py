"""Per-guest host resources a hostile guest can grow are capped.

Each test drives the guest-controlled input that used to grow a host
structure without bound and checks the documented cap (docs/SECURITY.md,
"Resource caps").  The clock's timer heap is covered in test_clock.py and the
early console in test_launcher.py; the last test here is a short run of
fuzz/storm.py: real Unicorn guests hammering every hypercall.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from lgtest import LD, LD_SIZE

from lguest.host.hypercalls import HcallArgs, do_async_hcalls, do_hcall
from lguest.host.run import RunContext
from lguest.host.stats import OTHER, Stats

LD_STATUS, LD_HCALLS = 20, 84
BAD_NUMBERS = [11, 12, 13, 18, 63, 64, 99, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def test_stats_count_every_bad_hypercall_under_one_key(cpu):
    # Unknown numbers are validated before they are counted: a guest cannot
    # make one dictionary key per number it tries (there are 2**32).
    ctx = RunContext(cpu, stats=Stats())
    cpu.guest.lguest_data = LD
    for n in BAD_NUMBERS + list(range(1000, 3000)):
        do_hcall(cpu, HcallArgs(n, 1, 2, 3), ctx)
    assert cpu.guest.dead == "Bad hypercall 11\n"  # the first reason stays
    assert dict(ctx.stats.hypercalls) == {OTHER: len(BAD_NUMBERS) + 2000}
    do_hcall(cpu, HcallArgs(8, 1), ctx)  # LHCALL_TS: a known call keeps its number
    assert ctx.stats.hypercalls[8] == 1


def test_stats_bad_hypercalls_from_the_async_ring(cpu, mem):
    # The ring runs all 64 slots even after the first bad call kills the
    # guest (as the C does): 64 distinct bad numbers, still one key.
    ctx = RunContext(cpu, stats=Stats())
    cpu.guest.lguest_data = LD
    assert LD + LD_SIZE <= mem.size
    mem.write(LD + LD_STATUS, b"\x00" * 64)
    for slot in range(64):
        mem.write(LD + LD_HCALLS + 16 * slot, struct.pack("<4I", 0x1000 + slot, 0, 0, 0))
    do_async_hcalls(cpu, ctx)
    assert dict(ctx.stats.hypercalls) == {OTHER: 64}


def test_stats_trap_counters_have_a_fixed_number_of_keys():
    # Trap numbers come from the emulator (0..256), but the counters do not
    # rely on it: past MAX_KEYS distinct keys, the rest count under OTHER.
    st = Stats()
    for n in range(5000):
        st.reflected(n, 0)
    counter = st.reflected_traps
    assert len(counter) <= Stats.MAX_KEYS + 1
    assert sum(counter.values()) == 5000
    assert counter[0] == 1 and counter[255] == 1 and counter[OTHER] == 5000 - Stats.MAX_KEYS


def test_stats_trace_is_a_ring():
    st = Stats(trace_size=16)
    for n in range(1000):
        st.reflected(n % 32, n)
    assert len(st.trace) == 16 and st.trace[-1].eip == 999


# --- a short storm: real Unicorn guests hammering hypercalls --------------------------------
STORM = Path(__file__).resolve().parent.parent / "fuzz" / "storm.py"
SHORT_STORMS = "NOTIFY_CONSOLE,SET_CLOCKEVENT_EARLIER,BAD,FLUSH_ASYNC"


@pytest.mark.skipif(not all(shutil.which(t) for t in ("as", "ld", "objcopy")), reason="binutils needed")
@pytest.mark.parametrize("core_name", ["python", "cython"])
def test_short_storm_keeps_rss_flat(core_name):
    # 1.5 s per storm, RSS read after 0.5 s: before the caps, the console
    # storm grew the host by ~400 MiB/s and the clock storm by ~17 MiB/s,
    # so a 4 MiB limit over the last second separates them from noise.
    pytest.importorskip("unicorn")
    from lgtest import pure_python_only
    if core_name == "cython" and pure_python_only():
        pytest.skip("LGUEST_PURE_PYTHON=1: the compiled core is not tested")
    cmd = [sys.executable, str(STORM), "--seconds", "1.5", "--warmup", "0.5", "--limit-mib", "4",
           "--core", core_name, "--only", SHORT_STORMS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:-1]}
    assert set(rows) == set(SHORT_STORMS.split(","))
    for name, cols in rows.items():
        calls, guests = int(cols[1]), int(cols[2])
        assert calls > 100 and guests >= 1, (name, proc.stdout)
    assert "all 4 storms within 4 MiB" in proc.stdout


def test_storm_covers_every_hypercall():
    spec = importlib.util.spec_from_file_location("lguest_storm", STORM)
    storm = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("lguest_storm", storm)  # dataclasses look their module up
    spec.loader.exec_module(storm)
    from lguest import constants
    numbers = {v for k, v in vars(constants).items() if k.startswith("LHCALL_") and k != "LHCALL_RING_SIZE"}
    covered = {s.number for s in storm.storms()}
    assert numbers | {OTHER} <= covered
    names = {s.name for s in storm.storms()}
    assert {"NOTIFY_CONSOLE", "SET_CLOCKEVENT_EARLIER", "BAD"} <= names
