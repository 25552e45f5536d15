"""How many TCG temporaries does Unicorn's translator leak per instruction?

Unicorn 2.1.4's x86 translator allocates TCG temporaries that some
instructions never free; a translation block's temporaries live in a pool
of TCG_MAX_TEMPS (512) entries that release builds do not bound-check.  The
Unicorn backend caps every block at TB_MAX_INSNS instructions (see
uh_on_block in lguest/unicorn/_uchook.pyx) so that a block of the worst instruction
still fits.  This script measures the worst: for each candidate encoding it
translates blocks of 4 and of 8 copies and reads the pool's fill
(TCGContext.nb_temps) after each; the difference over four copies is the
leak per instruction.

    python fuzz/tcg_temps.py            # every candidate (~60,000 valid encodings, ~15 s)
    python fuzz/tcg_temps.py --x87      # the x87 escape space only (~1 s)

It prints the largest leaks, the base fill of a block and the bound the cap
gives.  Run it again before moving to another Unicorn release.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import sys
from collections.abc import Iterable, Iterator

import unicorn as U
from unicorn import x86_const as X

from lguest.unicorn import TB_MAX_INSNS, TCG_MAX_TEMPS, engine_internals

CODE = 0x10000
PREFIXES = [b"", b"\x66", b"\x67", b"\xf0", b"\xf2", b"\xf3", b"\x0f", b"\x66\x0f", b"\xf2\x0f", b"\xf3\x0f",
            b"\x0f\x38", b"\x66\x0f\x38", b"\xf2\x0f\x38", b"\x0f\x3a", b"\x66\x0f\x3a", b"\x0f\x0f"]


def candidates(prefixes: Iterable[bytes] = PREFIXES, opcodes: Iterable[int] = range(256)) -> Iterator[bytes]:
    """prefix + opcode + a ModRM of each reg field -- register, (%eax), SIB and disp32
    forms -- + 6 bytes of zero (SIB, displacement or immediate); the real length is
    measured."""
    for p, op in itertools.product(list(prefixes), list(opcodes)):
        for modrm in [form | (r << 3) for form in (0xC1, 0x00, 0x04, 0x05) for r in range(8)]:
            yield p + bytes([op, modrm]) + bytes(6)


class Probe:
    """A scratch engine whose block hook records the size of the block it runs, then stops."""

    def __init__(self) -> None:
        self.uc = uc = U.Uc(U.UC_ARCH_X86, U.UC_MODE_32)
        uc.mem_map(0, 0x100000)
        self.cells = engine_internals(uc)
        self.sizes: list[int] = []
        uc.hook_add(U.UC_HOOK_BLOCK, self._on_block)

    def _on_block(self, uc, address, size, user) -> None:  # noqa: ANN001
        self.sizes.append(size)
        uc.emu_stop()

    def run(self, code: bytes, max_insns: int = 0) -> tuple[int | None, int]:
        """(size of the first block, nb_temps after translating it)."""
        uc = self.uc
        uc.ctl_flush_tb()
        uc.mem_write(CODE, code + b"\xf4" * 16)
        for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_ESI,
                  X.UC_X86_REG_EDI, X.UC_X86_REG_EBP):
            uc.reg_write(r, 0x8000)
        uc.reg_write(X.UC_X86_REG_ESP, 0x9000)
        ctypes.c_uint32.from_address(self.cells["tb_cflags"]).value = max_insns or 0xFFFFFFFF
        self.sizes.clear()
        try:
            uc.emu_start(CODE, CODE + 0x10000)
        except U.UcError:
            pass
        return (self.sizes[0] if self.sizes else None), ctypes.c_int32.from_address(self.cells["nb_temps"]).value


def measure(cands: Iterable[bytes]) -> tuple[dict[str, float], int]:
    """({instruction hex: temps leaked per copy}, the fill of a block of one nop)."""
    probe = Probe()
    _, base = probe.run(b"\x90")
    out: dict[str, float] = {}
    for c in cands:
        length, _ = probe.run(c, max_insns=1)
        if not length:
            continue
        insn = c[:length]
        s4, t4 = probe.run(insn * 4)
        s8, t8 = probe.run(insn * 8)
        if s4 == 4 * length + 1 and s8 == 8 * length + 1:  # all copies (and the hlt) in one block
            out[insn.hex()] = (t8 - t4) / 4
    return out, base


def mixes(leaks: dict[str, float], n: int, seed: int = 0) -> tuple[int, float]:
    """(the largest fill, the largest excess of (fill - base) over the summed per-copy
    leaks) over ``n`` blocks of random measured instructions translated under the cap
    of TB_MAX_INSNS."""
    import random

    rng = random.Random(seed)
    probe = Probe()
    _, base = probe.run(b"\x90")
    pool = sorted(leaks)
    top, excess, counted = 0, 0.0, 0
    for _ in range(n):
        block = [rng.choice(pool) for _ in range(TB_MAX_INSNS + 16)]
        size, fill = probe.run(bytes.fromhex("".join(block)), max_insns=TB_MAX_INSNS)
        used = block[:TB_MAX_INSNS]
        if size != sum(len(i) // 2 for i in used):  # a block that ended early
            continue
        counted += 1
        top = max(top, fill)
        excess = max(excess, fill - base - sum(leaks[i] for i in used))
    if counted < n // 2:
        raise RuntimeError(f"only {counted} of {n} mixed blocks translated whole")
    return top, excess


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--x87", action="store_true", help="only the x87 escapes (d8..df)")
    ap.add_argument("--mixes", type=int, default=200, help="random mixed blocks to check (default 200)")
    args = ap.parse_args(argv)
    cands = candidates([b""], range(0xD8, 0xE0)) if args.x87 else candidates()
    leaks, base = measure(cands)
    worst = max(leaks.values())
    top = sorted(leaks.items(), key=lambda kv: -kv[1])[:10]
    print(f"{len(leaks)} encodings; base fill {base}; worst leak {worst:g} per instruction")
    print("worst:", ", ".join(f"{k} ({v:g})" for k, v in top))
    bound = base + worst * TB_MAX_INSNS
    print(f"a block of {TB_MAX_INSNS} instructions of the worst: {bound:g} of {TCG_MAX_TEMPS} temps")
    top, excess = mixes(leaks, args.mixes)
    print(f"{args.mixes} random blocks of {TB_MAX_INSNS}: largest fill {top}, at most {excess:g} more than "
          "the summed leaks")
    return 0 if max(bound, top) < TCG_MAX_TEMPS else 1


if __name__ == "__main__":
    sys.exit(main())
