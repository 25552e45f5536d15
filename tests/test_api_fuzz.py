"""Host-API misuse, fuzzed: both cores must raise the same exception class
for the same hostile call, and nothing may crash or hang.

The short run of ``fuzz/fuzz_api.py`` (subprocess workers: a signal or a
hang is a finding) plus a Hypothesis property over the argument rule of
every u32-taking entry point.  The long campaign is
``python fuzz/fuzz_api.py --seconds 600``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lgtest import load_core_or_fail, pure_python_only

import lguest

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz", "fuzz_api.py")

pytestmark = pytest.mark.skipif(pure_python_only(), reason="compares the compiled core with the Python core")


def test_short_api_fuzz_finds_nothing() -> None:
    proc = subprocess.run([sys.executable, FUZZ, "--seconds", "10", "--chunk", "5", "--seed", "20261129", "--json"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\napi fuzz: {summary['calls']} compared calls ({summary['calls_per_s']}/s), "
          f"{summary['thread_calls']} threaded, {summary['unicorn_calls']} UnicornLauncher")
    assert summary["findings"] == []
    assert summary["calls"] > 10_000 and summary["thread_calls"] > 1_000


# --- the argument rule, property-tested across cores ------------------------------------------------
hostile = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.sampled_from([0, 1, 0x1F, 0x80, 0xFF, 0x100, 0xFFFFFFFF, 1 << 32, -1]),
    st.floats(allow_nan=True), st.none(), st.booleans(), st.text(max_size=3), st.binary(max_size=3),
    st.integers(min_value=0, max_value=0xFFFFFFFF).map(np.uint32),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1).map(np.int64),
    st.just(np.bool_(True)), st.just(np.float32(1.0)),
)


class _World:
    def __init__(self, core: Any) -> None:
        self.core = core
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        self.guest = host.new_guest(lguest.GuestMemory(4 * 4096), page_offset=0, clock=lguest.VirtualClock(),
                                    core=core)
        self.cpu = self.guest.new_cpu()


_WORLDS: dict[str, _World] = {}


def _world(name: str) -> _World:
    if name not in _WORLDS:
        _WORLDS[name] = _World(load_core_or_fail(name))
    return _WORLDS[name]


CALLS: dict[str, Callable[[_World, Any], Any]] = {
    "idt_address": lambda w, v: w.core.idt_address(v, 0x8E00),
    "idt_type": lambda w, v: w.core.idt_type(0, v),
    "idt_present": lambda w, v: w.core.idt_present(v, 0x8000),
    "has_err": lambda w, v: w.core.has_err(v),
    "default_idt_entry.trap": lambda w, v: w.core.default_idt_entry(v, 0x1000),
    "default_idt_entry.base": lambda w, v: w.core.default_idt_entry(3, 0x1000, (0, v)),
    "direct_trap": lambda w, v: w.guest.direct_trap(v),
    "could_be_syscall": lambda w, v: w.guest.could_be_syscall(v),
    "address_ok": lambda w, v: w.guest.address_ok(v, 4),
    "ld_read_u32": lambda w, v: w.guest.ld_read_u32(v),
    "guest_pa": lambda w, v: w.guest.guest_pa(v),
    "lgread.n": lambda w, v: len(w.cpu.lgread(0xFFFFF000, v)) if not isinstance(v, (int, np.integer))
    or not 4096 < int(v) <= 0xFFFFFFFF else None,
    "lgwrite.data": lambda w, v: w.cpu.lgwrite(0, v),
    "deliver_trap": lambda w, v: w.cpu.deliver_trap(v),
    "send_irq": lambda w, v: w.cpu.send_irq(v),
    # None and positive timeouts (inf: forever) would only sleep; the rule is about the rest
    "wait_for_wakeup": lambda w, v: w.cpu.wait_for_wakeup(v) if v is not None and not (
        isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) and float(v) > 0) else None,
    "regs.eip": lambda w, v: setattr(w.cpu.regs, "eip", v),
    "esp1": lambda w, v: setattr(w.cpu, "esp1", v),
    "ts": lambda w, v: setattr(w.cpu, "ts", v),
    "next_hcall": lambda w, v: setattr(w.cpu, "next_hcall", v),
    "pending_notify": lambda w, v: setattr(w.cpu, "pending_notify", v),
    "kernel_address": lambda w, v: setattr(w.guest, "kernel_address", v),
    "noirq_start": lambda w, v: setattr(w.guest, "noirq_start", v),
    "lguest_data": lambda w, v: setattr(w.guest, "lguest_data", v),
    "Host.syscall_vector": lambda w, v: lguest.Host(syscall_vector=v, used_vectors=lguest.UsedVectors()),
}


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - the class is the observable
        return "raise", type(exc).__name__
    return "ok", result if isinstance(result, (int, bool, tuple, type(None))) else type(result).__name__


@pytest.mark.parametrize("name", sorted(CALLS))
@given(value=hostile)
def test_both_cores_answer_hostile_arguments_alike(name: str, value: Any) -> None:
    call = CALLS[name]
    py = _outcome(lambda: call(_world("python"), value))
    cy = _outcome(lambda: call(_world("cython"), value))
    assert py == cy, f"{name}({value!r}): python {py} vs cython {cy}"
    assert py[0] == "ok" or py[1] in ("TypeError", "ValueError"), f"{name}({value!r}) raised {py[1]}"
