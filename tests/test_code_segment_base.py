"""Guest code in a segment with a base: the native block hook must reason
in eips.

Unicorn hands the block hook the translator's pc, the code segment's base
plus eip (in 64 bits, without the 4 GiB wrap), while lguest's rules speak of
eips: the no-interrupt window (lguest_data's noirq_start/end) and the
debugger's resume point.  A guest may load a code segment of its own with a
non-zero base (LOAD_GDT), so the hook takes the base back off first.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("unicorn")

from test_hostile_guests import INIT, LD_ADDR, _gdt_table, assemble, launcher, prepare_ld  # noqa: E402

from lguest import gate  # noqa: E402
from lguest.constants import LD_NOIRQ_END, LD_NOIRQ_START  # noqa: E402
from lguest.unicorn import segment_descriptor  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

BASE = 0x402000       # the guest's own code segment (GDT entry 20, selector 0xa1)
EIP = 0xFFC00100      # where it runs: linear (BASE + EIP) mod 2**32 = 0x2100
LINEAR = (BASE + EIP) & 0xFFFFFFFF
TURNS = 200_000


@pytest.mark.parametrize("window", ["linear", "eip"])
def test_the_noirq_window_is_compared_with_eips(tmp_path, core, window):
    """An irq is pending and the guest enables interrupts inside the based
    segment, then counts down.  With the window over the loop's *linear*
    addresses (not its eips) the interrupt is due at once: the handler sees
    the count barely started.  With the window over the loop's eips it may
    not come before the loop leaves the window: the count is done.  Before
    the fix the hook compared the linear address, so the first case waited
    for the whole loop."""
    image, sym = assemble(tmp_path, INIT + f"""
    mov $0x7800, %esp
    mov $6, %eax            # LOAD_IDT_ENTRY(33, lo, hi): irq 1's vector
    mov $33, %ebx
    mov $0, %ecx            # lo, hi patched in below by the host
    mov $0, %edx
    vmcall
    mov $3, %eax            # LOAD_GDT(0x5000, 24)
    mov $0x5000, %ebx
    mov $24, %ecx
    vmcall
    ljmp $0xa1, ${EIP:#x}
handler:
    mov %ecx, 0x30000
finish:
    mov $2, %eax            # SHUTDOWN
    mov $0, %ebx
    vmcall
""")
    (tmp_path / "b").mkdir()
    body, bsym = assemble(tmp_path / "b", f"""
    mov $0x200, %eax
    mov %eax, %ds:{LD_ADDR:#x}  # irq_enabled = X86_EFLAGS_IF: the pending irq is now due
    mov ${TURNS}, %ecx
loop:
    dec %ecx
    jnz loop
    mov %ecx, 0x30000
    ljmp $0x61, ${sym['finish']:#x}   # back to the flat segment (a vmcall is found by eip)
""", base=EIP)
    lo, hi = gate(sym["handler"])
    # the LOAD_IDT_ENTRY's immediates: `mov $0, %ecx` / `mov $0, %edx` are b9/ba imm32
    image = image.replace(b"\xb9\x00\x00\x00\x00\xba\x00\x00\x00\x00",
                          b"\xb9" + lo.to_bytes(4, "little") + b"\xba" + hi.to_bytes(4, "little"), 1)
    loop_eip = bsym["loop"]
    start = (loop_eip + BASE) & 0xFFFFFFFF if window == "linear" else loop_eip
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.memory.write_u32(LD_ADDR + LD_NOIRQ_START, start)
        lg.memory.write_u32(LD_ADDR + LD_NOIRQ_END, start + 0x10)
        lg.load_flat(image, 0x1000, 0x1000)
        lg.memory.write(LINEAR, body)
        lg.memory.write(0x5000, _gdt_table({20: segment_descriptor(BASE, 0xFFFFF, 0xBB)}))
        lg.cpu.send_irq(1)
        result = lg.run(timeout=20)
        left = lg.memory.read_u32(0x30000)
    assert (result.reason, result.message) == ("dead", "CRASH: "), result  # SHUTDOWN with an empty message
    if window == "linear" and core.NAME == "cython":
        assert left > TURNS - 1000, left      # delivered within the first blocks of the loop
    else:
        # the window held it off to the end; the Python core's hook never
        # calls into Python per block, so with it an irq that was already
        # pending waits for the guest's next exit (the SHUTDOWN) either way
        assert left == 0, left
