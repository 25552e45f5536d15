"""Virtual-8086 mode through iret, on the Unicorn backend (both cores).

Unicorn 2.1.4's iret takes EFLAGS.VM from the popped flags image at any CPL
(QEMU's helper_ret_protected jumps to return_to_vm86); the CPU ignores VM
there unless CPL is 0.  A ring-1 guest could so enter virtual-8086 mode,
which lguest never supports.  Found by the guest fuzzer's short campaign as
an "undocumented kill": with a code selector of RPL 0 (cs = 4 is a real-mode
segment in vm86) the CPL-0 backstop fired with a false "guest code at CPL 0";
with cs = 7 the guest went on running in vm86 and nothing noticed.  Now any
stop in vm86 kills the guest with its own reason.

Each program runs in a fuzz_guest worker subprocess (real Unicorn, real x86
code: the fuzzer's prologue, then the items), so a crash fails the test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("unicorn")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import fuzz_guest as fg  # noqa: E402

VM = 0x20000


@pytest.fixture(scope="module")
def worker():
    wp = fg.WorkerProc(0, ["--no-reference"])
    yield wp
    wp.close()


def iret_to(eip: int, cs: int, eflags: int) -> bytes:
    """push eflags; push cs; push eip; iret (a 32-bit frame, no stack switch)."""
    return b"".join(b"\x68" + v.to_bytes(4, "little") for v in (eflags, cs, eip)) + b"\xcf"


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("cs", [4, 7])  # RPL 0 (looked like CPL 0) and RPL 3 (went unnoticed)
def test_iret_into_vm86_kills_the_guest(worker, core, paged, cs):
    spec = {"mode": "structured", "paged": paged, "ring": 1, "timeout": 0.2, "core": core.NAME, "break_at": None,
            "clock": "virtual", "prologue": "init", "items": [iret_to(0x1000, cs, VM | 0x202).hex(), "90"],
            "data": []}
    res = worker.run(spec, 30)
    assert res["reason"] == "dead", res
    assert res["message"].startswith("lguest: guest in virtual-8086 mode at 0x"), res["message"]
    assert fg.documented(res["message"])
    assert res["findings"] == [], res["findings"]


def test_iret_without_vm_is_unchanged(worker, core):
    # The same frame without VM: cs = 7 (RPL 3, LDT) is refused by iret as
    # it always was (#GP into the program's handler, which goes on).
    spec = {"mode": "structured", "paged": False, "ring": 1, "timeout": 0.2, "core": core.NAME, "break_at": None,
            "clock": "virtual", "prologue": "init", "items": [iret_to(0x1000, 7, 0x202).hex()], "data": []}
    res = worker.run(spec, 30)
    assert (res["reason"], res["message"], res["findings"]) == ("dead", "CRASH: fuzz: done\n", [])
