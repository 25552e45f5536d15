"""Kill reasons, formatted the way the kernel's vsnprintf formats them.

The compiled core must not build Python strings on the delivery path, so a
kill there records a small code and up to two numbers; the message is only
formatted when somebody reads ``guest.dead``.  The pure-Python core uses the
same table so both cores agree on every byte.
"""

from __future__ import annotations


def lx(value: int) -> str:
    """``%#lx`` of a 32-bit unsigned long: ``0x`` + lowercase hex, 0 is ``0x0``."""
    return "0x%x" % (value & 0xFFFFFFFF)


def li(value: int) -> str:
    """``%li`` / ``%i`` of a 32-bit quantity: signed decimal."""
    value &= 0xFFFFFFFF
    return str(value - (1 << 32) if value & 0x80000000 else value)


def u(value: int) -> str:
    """``%u``: unsigned 32-bit decimal."""
    return str(value & 0xFFFFFFFF)


def p(value: int | None) -> str:
    """``%p`` of a 32-bit pointer: 8 hex digits, NULL prints ``(null)``."""
    return "(null)" if value is None else "%08x" % (value & 0xFFFFFFFF)


# Codes recorded by the cores.  0 means "alive"; CUSTOM means the reason is
# a Python string given to Guest.kill().
ALIVE = 0
CUSTOM = 1
DISABLING_INTERRUPTS = 2
REENABLING_INTERRUPTS = 3
BAD_STACK_SEGMENT = 4
BAD_STACK_PAGES = 5
BAD_IDT_TYPE = 6
SETTING_IDT_ENTRY = 7
BAD_READ_ADDRESS = 8
BAD_WRITE_ADDRESS = 9
BAD_ADDRESS = 10
BAD_STACK_PAGE = 11
WRITING_TIMESTAMP = 12
SWITCHER_PAGES = 13
BAD_PGD = 14
BAD_PTE = 15

_FORMATS = {
    DISABLING_INTERRUPTS: lambda a, b: "Disabling interrupts",
    REENABLING_INTERRUPTS: lambda a, b: "Re-enabling interrupts",
    BAD_STACK_SEGMENT: lambda a, b: "bad stack segment " + li(a),
    BAD_STACK_PAGES: lambda a, b: "bad stack pages " + u(a),
    BAD_IDT_TYPE: lambda a, b: "bad IDT type " + li(a),
    SETTING_IDT_ENTRY: lambda a, b: "Setting idt entry " + u(a),
    BAD_READ_ADDRESS: lambda a, b: f"bad read address {lx(a)} len {u(b)}",
    BAD_WRITE_ADDRESS: lambda a, b: f"bad write address {lx(a)} len {u(b)}",
    BAD_ADDRESS: lambda a, b: "Bad address " + lx(a),
    BAD_STACK_PAGE: lambda a, b: "bad stack page " + lx(a),
    WRITING_TIMESTAMP: lambda a, b: "Writing timestamp",
    SWITCHER_PAGES: lambda a, b: "attempt to access switcher pages",
    BAD_PGD: lambda a, b: "bad page directory entry",
    BAD_PTE: lambda a, b: "bad page table entry",
}


def format_reason(code: int, a: int = 0, b: int = 0) -> str:
    """The message for a kill recorded as ``(code, a, b)``."""
    return _FORMATS[code](a, b)
