"""Leaving the emulator, as pytest-benchmark groups with stable ids.

Each benchmark is one measurement of ``benchmarks/emulator.py`` (see its
docstring for what each does and how it is checked to do the same guest
work): a fresh engine, ``N`` events, one timed run per round; the
per-event time is ``mean / N`` (``extra_info["events"]``).  The test ids
(``test_emulator[bare_binding]`` ...) and the group names do not change
between versions, so saved runs compare (docs/PERFORMANCE.md, "Tracking").

    .venv/bin/python -m pytest benchmarks/test_bench_emulator.py --benchmark-only
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("unicorn")
if shutil.which("as") is None or shutil.which("gcc") is None:
    pytest.skip("binutils and gcc needed", allow_module_level=True)

import emulator  # noqa: E402  (benchmarks/ is on sys.path: conftest)

N = 20_000

# group: the floor a measurement is read against
GROUPS = {
    "bare_binding": "emulator: floors",
    "bare_native": "emulator: floors",
    "bare_native_full": "emulator: floors",
    "bare_native_reflect": "emulator: reflected trap",
    "bare_native_stop": "emulator: floors",
    "bare_native_ring3": "emulator: direct syscall",
    "reflected": "emulator: reflected trap",
    "reflected_loop": "emulator: reflected trap",
    "hcall_flush": "emulator: hypercall",
    "hcall_clockevent": "emulator: hypercall",
    "hcall_clockevent_arm": "emulator: hypercall",
    "hcall_clockevent_py": "emulator: hypercall",
    "hcall_clockevent_arm_py": "emulator: hypercall",
    "hcall_clockevent_wall": "emulator: hypercall",
    "hcall_clockevent_arm_wall": "emulator: hypercall",
    "syscall_ring1": "emulator: direct syscall",
    "syscall_ring3": "emulator: direct syscall",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return {}, tmp_path_factory.mktemp("emu")


@pytest.mark.parametrize("name", list(GROUPS))
def test_emulator(benchmark, smoke, built, name):
    cache, tmp = built
    n = N // 20 if smoke else N
    if n not in cache:
        cache[n] = emulator.measurements(Path(tmp), n)
    f = cache[n][name]
    benchmark.group = GROUPS[name]
    benchmark.extra_info["events"] = n
    benchmark.pedantic(f, rounds=1 if smoke else 5, iterations=1)


def test_floor_c_does_the_ring3_work(tmp_path):
    """Baseline (c) runs the syscall_ring3 guest's own loop and handler and
    ends in the same state: ecx 0, as many syscalls, the same esp, cs and
    ss, the same last kernel-stack frame and lguest_data word."""
    n = 300
    src = emulator._guest_src(n=n, **emulator.RING3)
    code = emulator._assemble(src, tmp_path)
    bare: dict = {}
    _, count, ecx = emulator.run_bare_ring3(code, emulator._symbols(src, tmp_path), state=bare)
    real: dict = {}
    _, stats, real_ecx = emulator.run_lguest(code, state=real)
    assert (count, ecx) == (stats["direct_0x80"], real_ecx) == (n, 0)
    assert bare == real
    assert bare["frame"][1:] == (0x73, bare["frame"][2], emulator.USTACK, 0x7B, 0x200)


def test_floor_reflect_does_the_reflected_work(tmp_path):
    """bare_native_reflect runs the reflected guest's loop and handler at
    ring 1 and ends in the same state as lguest's reflected run."""
    n = 300
    src = emulator._guest_src(n=n, insn="int3")
    code = emulator._assemble(src, tmp_path)
    bare: dict = {}
    _, count, ecx = emulator.run_bare_ring3(code, emulator._symbols(src, tmp_path), state=bare, ring1=True)
    real: dict = {}
    _, stats, real_ecx = emulator.run_lguest(code, state=real)
    assert (count, ecx) == (stats["reflected_3"], real_ecx) == (n, 0)
    assert bare == real
    assert (bare["cs"], bare["ss"], bare["esp"]) == (0x61, 0x69, emulator.KSTACK)
