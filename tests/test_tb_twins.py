"""Twins: second translations, without the block cap, of blocks the capped
translation ended before the cap (uh_twin in lguest/unicorn/_uchook.h), so
that indirect jumps find them and chain.  They change how fast the guest
runs, nothing else: the same blocks are counted, so the virtual clock, the
interrupts and every counter come out the same.  (Hostile code around them
-- long blocks of leaking instructions reached by indirect jumps, and
self-modifying code before one -- is in tests/test_guest_fuzz.py.)"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

pytest.importorskip("unicorn")
from lgtest import build_example  # noqa: E402

import lguest  # noqa: E402
from lguest.host.record import regs_hash  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")


def run_example(elf: str, core: Any, page_offset: int) -> dict[str, Any]:
    with UnicornLauncher(memory=4 << 20, used_vectors=lguest.UsedVectors(used=range(32)), core=core,
                         page_offset=page_offset) as lg:
        lg.load_elf(elf)
        result = lg.run(timeout=60)
        return {"result": (result.reason, result.message), "console": lg.console, "regs": regs_hash(lg.cpu.regs.array),
                "stats": {k: v for k, v in lg.stats.items() if k != "entries" and not k.startswith("exits_")},
                "now": lg.guest.clock.now_ns(), "twins": lg.backend.hooks.fast_path_stats()["twins"]}


@pytest.mark.parametrize("page_offset", [0, 0xC0000000])
def test_twins_change_nothing_but_speed(tmp_path: Any, core: Any, monkeypatch: Any, page_offset: int) -> None:
    elf = build_example(str(tmp_path), "guest", page_offset=page_offset)
    runs = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("LGUEST_TB_TWINS", setting)
        runs[setting] = run_example(elf, core, page_offset)
    off, on = runs["0"], runs["1"]
    assert off.pop("twins") == 0 and on.pop("twins") > 0
    assert off["stats"]["blocks"] > 10_000 and off["result"][0] == "dead"
    assert on == off
