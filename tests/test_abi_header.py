"""lguest/include/lguest/abi.h is the one definition of every cross-language fact.

The compiled core and the native hooks include it; the Python constants
(lguest.constants, lguest.messages) and the Python rules (lguest.fallback's
has_err, lguest.constants.is_direct_trap) are checked against it here:

* by parsing it: every ``#define LG_*`` / enumerator has its Python twin with
  the same value, struct lguest_regs lists REG_NAMES in order;
* by compiling it: a standalone C99 program including only the header
  (``-Wall -Wextra -Werror``: it must stand alone as a public header) prints
  its rules over their whole input range, which must match Python's, and
  the native-API struct's layout, which must match what
  ``lguest._core.native_api`` hands out.
"""

from __future__ import annotations

import ctypes
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import lguest
from lguest import constants as C
from lguest import fallback
from lguest import messages as M

HEADER = Path(lguest.__file__).resolve().parent / "include" / "lguest" / "abi.h"

# header name -> Python name, where they differ beyond the LG_ prefix
RENAMED = {"LG_IRQS": "LGUEST_IRQS"}
# header facts with no Python twin, and why
C_ONLY = {
    "LGUEST_NATIVE_API_VERSION": "the C API's version (checked against native_api below)",
    "LGUEST_NATIVE_API_CAPSULE": "the capsule's name (checked against native_api below)",
    "LGUEST_ABI_H": "the include guard",
}


def parse_header() -> dict[str, int | str]:
    text = HEADER.read_text()
    facts: dict[str, int | str] = {}
    for name, value in re.findall(r"^#define[ \t]+(\w+)[ \t]+(\S+)", text, re.M):
        facts[name] = value.strip('"') if value.startswith('"') else int(value, 0)
    for name, value in re.findall(r"^\s+(LG_\w+)\s*=\s*(\w+),", text, re.M):
        facts[name] = int(value, 0)
    return facts


def python_twin(name: str) -> tuple[object, str]:
    if name.startswith("LG_KILL_"):
        return M, name[len("LG_KILL_"):]
    return C, RENAMED.get(name, name[len("LG_"):])


def test_every_header_fact_has_its_python_twin_with_the_same_value():
    facts = parse_header()
    assert len(facts) > 50  # the parser found the defines and both enums
    for name, value in facts.items():
        if name in C_ONLY:
            continue
        module, twin = python_twin(name)
        assert hasattr(module, twin), f"{name} has no Python twin {module.__name__}.{twin}"
        python = getattr(module, twin)
        assert python == value, f"{name} = {value:#x} but {module.__name__}.{twin} = {python:#x}"


def test_every_kill_code_and_register_index_is_in_the_header():
    facts = parse_header()
    codes = {n: v for n, v in vars(M).items() if n.isupper() and isinstance(v, int)}
    assert {f"LG_KILL_{n}": v for n, v in codes.items()} == {n: v for n, v in facts.items() if n.startswith("LG_KILL_")}
    regs = {f"LG_R_{n.upper()}": i for i, n in enumerate(C.REG_NAMES)}
    assert regs == {n: v for n, v in facts.items() if n.startswith("LG_R_")}


def test_struct_lguest_regs_lists_the_registers_in_order():
    body = re.search(r"struct lguest_regs \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    fields = re.findall(r"\b([a-z]+)\b", body.replace("uint32_t", ""))
    assert tuple(fields) == C.REG_NAMES


# --- the rules, compiled ----------------------------------------------------------------------
PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include "lguest/abi.h"

int main(void)
{
    static const uint32_t vectors[] = {0x80, 0x40, 0x20, 0x1f, 0x21, 0xff, 0x100, 0xffffffffu};
    uint32_t idt[512] = {0};
    unsigned i, v;
    unsigned a[7];
    printf("api %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct lguest_native_api),
           offsetof(struct lguest_native_api, cpu), offsetof(struct lguest_native_api, regs),
           offsetof(struct lguest_native_api, irqs_pending), offsetof(struct lguest_native_api, dead_code),
           offsetof(struct lguest_native_api, set_guest_interrupt), sizeof(struct lguest_regs));
    for (i = 0; i < 300; i++)
        printf("err %u %d\n", i, lg_has_err(i));
    for (v = 0; v < sizeof vectors / sizeof vectors[0]; v++)
        for (i = 0; i < 300; i++)
            printf("direct %u %u %d\n", vectors[v], i, lg_direct_trap(i, vectors[v]));
    /* irq cases from stdin: pending blocked irq_enabled halted eip start end present_mask */
    while (scanf("%u %u %u %u %u %u %u", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]) == 7) {
        unsigned mask; if (scanf("%u", &mask) != 1) return 1;
        for (i = 0; i < 32; i++) idt[2 * (32 + i) + 1] = (mask >> i) & 1 ? 0x8e00 : 0;
        printf("irq %u %d\n", lg_irq_to_take(a[0], a[1], a[2], (int)a[3], a[4], a[5], a[6]),
               lg_irq_deliverable(a[0], a[1], a[2], (int)a[3], a[4], a[5], a[6], idt));
    }
    return 0;
}
"""


def irq_to_take(pending: int, blocked: int, irq_enabled: int, halted: int, eip: int, start: int, end: int) -> int:
    """maybe_do_interrupt's choice, from the kernel's code (32: none)."""
    ready = pending & ~blocked & 0xFFFFFFFF
    if not ready or start <= eip < end or (not halted and not irq_enabled):
        return 32
    return (ready & -ready).bit_length() - 1


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("abi")
    (d / "t.c").write_text(PROGRAM)
    subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-I", str(HEADER.parent.parent),
                    "-o", str(d / "t"), str(d / "t.c")], check=True, capture_output=True)
    rng = random.Random(10)
    cases = []
    for _ in range(3000):
        pick = lambda: rng.choice([0, 1, 0x200, 0x80000000, 0xFFFFFFFF, rng.getrandbits(32), 1 << rng.randrange(32)])  # noqa: E731
        eip, start = rng.getrandbits(12), rng.getrandbits(12)
        cases.append((pick(), pick(), pick(), rng.randrange(2), eip, start, start + rng.getrandbits(10), pick()))
    stdin = "".join(" ".join(map(str, c)) + "\n" for c in cases)
    out = subprocess.run([str(d / "t")], input=stdin, check=True, capture_output=True, text=True).stdout
    return out.splitlines(), cases


def test_has_err_is_one_rule(compiled):
    lines, _ = compiled
    cython = lguest.load_core("cython") if lguest.CORE == "cython" else None
    for line in (ln for ln in lines if ln.startswith("err ")):
        _, trap, value = line.split()
        assert bool(int(value)) == fallback.has_err(int(trap)), trap
        if cython is not None:
            assert cython.has_err(int(trap)) == fallback.has_err(int(trap)), trap


def test_the_direct_trap_rule_is_one_rule(compiled):
    lines, _ = compiled
    seen = 0
    for line in (ln for ln in lines if ln.startswith("direct ")):
        _, vector, num, value = line.split()
        assert bool(int(value)) == C.is_direct_trap(int(num), int(vector)), (vector, num)
        seen += 1
    assert seen == 8 * 300


@pytest.mark.parametrize("vector", [0x80, 0x40, 0x21, 0xFF])
def test_every_direct_trap_answer_agrees(core, mem, vector):
    """Host.direct_trap, Guest.direct_trap of both cores and the rule."""
    h = lguest.Host(syscall_vector=vector, used_vectors=lguest.UsedVectors(used=range(32)))
    g = h.new_guest(mem, core=core, clock=lguest.VirtualClock())
    for num in range(300):
        assert g.direct_trap(num) == h.direct_trap(num) == C.is_direct_trap(num, vector), num


def test_the_irq_rule_matches_the_kernel(compiled):
    lines, cases = compiled
    answers = [ln.split() for ln in lines if ln.startswith("irq ")]
    assert len(answers) == len(cases)
    for (_, irq, deliverable), case in zip(answers, cases, strict=True):
        expect = irq_to_take(*case[:7])
        assert int(irq) == expect, case
        assert bool(int(deliverable)) == (expect < 32 and bool(case[7] >> expect & 1)), case


def test_the_native_api_is_the_headers(compiled, host, mem):
    if lguest.CORE != "cython":
        pytest.skip("the compiled core is not active")
    lines, _ = compiled
    size, off_cpu, off_regs, off_pending, off_dead, off_fn, regs_size = map(int, lines[0].split()[1:])
    facts = parse_header()
    core = lguest.load_core("cython")
    cpu = host.new_guest(mem, core=core, clock=lguest.VirtualClock()).new_cpu()
    capsule = core.native_api(cpu)
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = (ctypes.py_object,)
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = (ctypes.py_object, ctypes.c_char_p)
    name = api.PyCapsule_GetName(capsule)
    assert name.decode() == facts["LGUEST_NATIVE_API_CAPSULE"]
    p = api.PyCapsule_GetPointer(capsule, name)
    version, struct_size = (ctypes.c_uint32 * 2).from_address(p)
    assert (version, struct_size) == (facts["LGUEST_NATIVE_API_VERSION"], size)
    word = lambda off: ctypes.c_void_p.from_address(p + off).value  # noqa: E731
    assert word(off_regs) == cpu.regs.array.ctypes.data and regs_size == 4 * C.NUM_REGS
    assert word(off_cpu) and word(off_pending) and word(off_dead) and word(off_fn)
    cpu.irqs_pending = 0x5
    assert ctypes.c_uint32.from_address(word(off_pending)).value == 0x5
