"""lguest.gate / lguest.decode_gate: the IDT words a guest hands to
LOAD_IDT_ENTRY, checked against each core's own reading of them and against
a real delivery, and the README's example run verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lguest
from lguest import decode_gate, gate


def test_the_readme_words() -> None:
    # The example the README used to spell as raw words.
    assert gate(0x102000, type="trap") == (0x00612000, 0x00108F00)
    assert gate(0x102000, type="interrupt", dpl=3) == (0x00612000, 0x0010EE00)
    assert gate(0xC0101234, type=0xE, selector=0x61) == (0x00611234, 0xC0108E00)
    assert decode_gate(0x00612000, 0x00108F00) == lguest.Gate(0x102000, 0xF, 0, 0x61, True)


@given(handler=st.integers(0, 2**32 - 1), kind=st.integers(0, 15), dpl=st.integers(0, 3),
       selector=st.integers(0, 0xFFFF), present=st.booleans())
def test_round_trip_and_both_cores_agree(handler: int, kind: int, dpl: int, selector: int, present: bool) -> None:
    lo, hi = gate(handler, type=kind, dpl=dpl, selector=selector, present=present)
    assert decode_gate(lo, hi) == (handler, kind, dpl, selector, present)
    for name in ("python", "cython"):
        core = lguest.load_core(name) if name == "python" or lguest.cores.compiled() is not None else None
        if core is None:
            continue
        assert core.idt_address(lo, hi) == handler
        assert core.idt_type(lo, hi) == kind
        assert core.idt_present(lo, hi) == present


@pytest.mark.parametrize("kwargs,exc", [
    (dict(handler=-1), ValueError), (dict(handler=2**32), ValueError), (dict(handler=True), TypeError),
    (dict(handler=0, type="call"), ValueError), (dict(handler=0, type=16), ValueError),
    (dict(handler=0, dpl=4), ValueError), (dict(handler=0, selector=0x10000), ValueError),
    (dict(handler=0, present=1), TypeError), (dict(handler=1.5), TypeError),
])
def test_bad_arguments(kwargs: dict, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        gate(**kwargs)


def test_a_gate_delivers_where_it_says(core) -> None:
    with lguest.Host(syscall_vector=0x80, used_vectors=lguest.UsedVectors(used=range(32))) as host, \
            lguest.GuestMemory(1 << 20) as mem:
        guest = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=core)
        cpu = guest.new_cpu()
        guest.lguest_data = 0x1000
        mem.write_u32(0x1000, 0x200)
        cpu.load_guest_idt_entry(33, *gate(0x10ABCD, type="interrupt"))
        cpu.regs.cs, cpu.regs.ss, cpu.regs.esp, cpu.regs.eip = 0x61, 0x69, 0x9000, 0x100000
        cpu.send_irq(1)
        cpu.maybe_do_interrupt()
        assert cpu.regs.eip == 0x10ABCD and guest.dead is None
        assert mem.read_u32(0x1000) == 0  # an interrupt gate turned the guest's interrupts off


def test_readme_example_runs_verbatim() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if not readme.exists():
        pytest.skip("no README next to the tests")
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, "the README has a Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


# --- the compiled classes read like the Python ones -----------------------------------------------
def test_compiled_methods_have_real_signatures() -> None:
    import inspect

    if lguest.cores.compiled() is None:
        pytest.skip("the compiled core is not built")
    core = lguest.cores.compiled()
    assert str(inspect.signature(core.Cpu.load_guest_idt_entry)) == "(self, num, lo, hi)"
    assert core.Cpu.load_guest_idt_entry.__doc__.startswith("Cpu.load_guest_idt_entry(self, num, lo, hi)")
    assert core.Guest.__doc__.startswith("Guest(host, memory, ")


def test_repr_agrees_across_cores() -> None:
    if lguest.cores.compiled() is None:
        pytest.skip("the compiled core is not built")
    seen = {}
    for name in ("python", "cython"):
        host = lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))
        with lguest.GuestMemory(1 << 20) as mem:
            guest = host.new_guest(mem, page_offset=0, clock=lguest.VirtualClock(), core=name)
            cpu = guest.new_cpu()
            cpu.regs.eip = 0x100000
            seen[name] = [repr(o).replace(f"({name} core)", "(core)") for o in (guest, cpu, cpu.regs)]
    assert seen["python"] == seen["cython"]


def test_gates_module_example_runs() -> None:
    import doctest

    import lguest.gates

    result = doctest.testmod(lguest.gates)
    assert result.attempted > 0 and result.failed == 0
