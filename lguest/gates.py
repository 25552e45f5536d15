"""IDT gates as words: build the ``(lo, hi)`` pair a guest hands to
LHCALL_LOAD_IDT_ENTRY (and :meth:`Cpu.load_guest_idt_entry` takes), and read
one back.

An i386 interrupt/trap gate is 8 bytes, kept by lguest as two 32-bit words::

    lo = selector << 16 | handler & 0xffff
    hi = handler & 0xffff0000 | present << 15 | dpl << 13 | type << 8

``type`` is 0xE for an interrupt gate (the CPU clears IF on entry: lguest
clears the guest's virtual ``irq_enabled``), 0xF for a trap gate (interrupts
stay as they were) and 0x5 for a task gate (which lguest refuses: the guest
is killed with "bad IDT type 5").  ``dpl`` is the most privileged ring that
may reach the gate with ``int $n`` (3: user code may; 0 or 1: only the guest
kernel); ``selector`` is the code segment the handler runs in, normally the
guest kernel's ``GUEST_CS`` (0x61).

    >>> lo, hi = gate(0x102000, type="trap")
    >>> hex(lo), hex(hi)
    ('0x612000', '0x108f00')
    >>> decode_gate(lo, hi)
    Gate(handler=1056768, type=15, dpl=0, selector=97, present=True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .constants import GUEST_CS
from .validate import to_index, to_range, to_u32

__all__ = ["GATE_TYPES", "Gate", "decode_gate", "gate"]

#: Gate type names accepted by :func:`gate` and their 4-bit type field.
GATE_TYPES: dict[str, int] = {"interrupt": 0xE, "trap": 0xF, "task": 0x5}


class Gate(NamedTuple):
    """One decoded IDT entry (see the module text for the fields)."""

    handler: int   #: the handler's address (segment offset), 32 bits
    type: int      #: 0xE interrupt gate, 0xF trap gate, 0x5 task gate, or another 4-bit value
    dpl: int       #: descriptor privilege level, 0..3
    selector: int  #: the handler's code segment selector
    present: bool  #: the P bit: a non-present gate is an empty IDT slot


def gate(handler: int, *, type: str | int = "interrupt", dpl: int = 0, selector: int = GUEST_CS,
         present: bool = True) -> tuple[int, int]:
    """The ``(lo, hi)`` words of an IDT gate to ``handler``.

    ``type`` is "interrupt", "trap", "task" or the raw 4-bit type; ``dpl``
    0..3; ``selector`` a 16-bit selector (default ``GUEST_CS``, 0x61).
    ValueError or TypeError for anything out of range.
    """
    handler = to_u32(handler, "handler")
    if isinstance(type, str):
        if type not in GATE_TYPES:
            raise ValueError(f"gate type {type!r} is not one of {', '.join(GATE_TYPES)} (or a 4-bit number)")
        kind = GATE_TYPES[type]
    else:
        kind = to_range(type, 0, 0xF, "gate type")
    dpl = to_range(dpl, 0, 3, "dpl")
    selector = to_range(selector, 0, 0xFFFF, "selector")
    if not isinstance(present, bool):
        raise TypeError(f"present must be a bool, not {present.__class__.__name__}")
    lo = (selector << 16) | (handler & 0xFFFF)
    hi = (handler & 0xFFFF0000) | (int(present) << 15) | (dpl << 13) | (kind << 8)
    return lo, hi


def decode_gate(lo: Any, hi: Any) -> Gate:
    """The fields of the IDT gate ``(lo, hi)``: the reverse of :func:`gate`."""
    lo, hi = to_u32(to_index(lo, "lo"), "lo"), to_u32(to_index(hi, "hi"), "hi")
    return Gate(
        handler=(hi & 0xFFFF0000) | (lo & 0xFFFF),
        type=(hi >> 8) & 0xF,
        dpl=(hi >> 13) & 3,
        selector=lo >> 16,
        present=bool(hi & 0x8000),
    )
