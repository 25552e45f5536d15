"""Guest code on the Unicorn backend: what the translation-block cap costs.

The backend caps every translation block at TB_MAX_INSNS instructions (a
crash guard, see uh_on_block in lguest/unicorn/_uchook.pyx).  That splits long
straight-line blocks and stops indirect jumps (ret, jmp *reg) from chaining
to the next block inside the translator.  These loops measure plain guest
code at ring 1 -- no traps, no hypercalls -- one timed ``run()`` of a fresh
launcher per round; the per-iteration time is ``mean / ITERATIONS``.

    .venv/bin/python -m pytest benchmarks/test_bench_unicorn.py --benchmark-only
"""

from __future__ import annotations

import struct

import pytest

pytest.importorskip("unicorn")

from lguest.unicorn import UnicornLauncher  # noqa: E402

ENTRY = 0x1000


def _loop(body: bytes, prologue: bytes = b"") -> bytes:
    """mov $n,%ecx; 1: body; dec %ecx; jnz 1b; hlt  (n patched in by the benchmark)."""
    jump = len(body) + 1 + 6
    return prologue + b"\xb9" + struct.pack("<I", 0) + body + b"\x49\x0f\x85" + struct.pack("<i", -jump) + b"\xf4"


# The loops.  Each ends in hlt, which at ring 1 is #GP: the guest has no
# IDT, so that kills it and run() returns.
LOOPS = {
    # 300 register adds: one long block, cut into three by the cap
    "straight_300": _loop(b"\x01\xd8" * 300),
    # a short counted loop: direct jumps only, chained as before
    "tight": _loop(b"\x01\xd8"),
}


def _call_ret_loop() -> bytes:
    # mov $esp; mov $n,%ecx; 1: call f; dec %ecx; jnz 1b; hlt; f: ret
    head = b"\xbc" + struct.pack("<I", 0x8000) + b"\xb9" + struct.pack("<I", 0)
    loop = b"\xe8" + struct.pack("<i", 8) + b"\x49\x0f\x85" + struct.pack("<i", -(5 + 1 + 6)) + b"\xf4\xc3"
    return head + loop


# call/ret: ret is an indirect jump (the translator's lookup_and_goto_ptr)
LOOPS["call_ret"] = _call_ret_loop()
# a store to a data page (mov %eax,(%ebx), ebx 0x8000): Unicorn's slow path
# unless the store fast path is on (NativeHooks.store_fast_path)
LOOPS["store"] = _loop(b"\x89\x03", prologue=b"\xbb" + struct.pack("<I", 0x8000))
ITERATIONS = {"straight_300": 20_000, "call_ret": 300_000, "tight": 1_000_000, "store": 1_000_000}


@pytest.mark.parametrize("fast", ["fast_on", "fast_off"])
@pytest.mark.parametrize("name", sorted(LOOPS))
def test_guest_loop(benchmark, smoke, monkeypatch, name, fast):
    monkeypatch.setenv("LGUEST_STORE_FAST_PATH", "1" if fast == "fast_on" else "0")
    n = ITERATIONS[name] // (100 if smoke else 1)
    code = bytearray(LOOPS[name])
    at = code.index(b"\xb9" + struct.pack("<I", 0))
    code[at + 1:at + 5] = struct.pack("<I", n)
    launchers: list[UnicornLauncher] = []

    def setup():
        lg = UnicornLauncher(memory=1 << 20, core="cython").__enter__()
        lg.load_flat(bytes(code), ENTRY, ENTRY)
        launchers.append(lg)
        return (lg,), {}

    def run(lg):
        res = lg.run(timeout=60.0)
        assert res.reason == "dead" and "unhandled trap 13" in str(res.message), res

    try:
        benchmark.pedantic(run, setup=setup, rounds=1 if smoke else 7, iterations=1)
    finally:
        for lg in launchers:
            lg.__exit__(None, None, None)
    benchmark.extra_info["iterations"] = n
