"""One "which irq would be delivered" rule for the core and the native hook.

lguest/include/lguest/abi.h defines it once (lg_irq_to_take): the lowest
pending, unblocked irq, none inside the noirq window, and for a running cpu
only while ``lguest_data.irq_enabled`` is non-zero -- any bit, as the
kernel's ``if (!irq_enabled) return`` reads it, not just X86_EFLAGS_IF.
The Unicorn hook asks the same question before every guest block to decide
whether to stop for an irq; here a real guest spins with ``irq_enabled = 1``
and an irq sent from outside must reach its handler.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

pytest.importorskip("unicorn")

from test_hostile_guests import INIT, LD_ADDR, assemble, launcher, prepare_ld  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")), reason="binutils (as, ld) needed")

# LOAD_IDT_ENTRY(0x21: irq 1) to an interrupt gate at `handler` (below 64 KiB,
# so the high word is just P | type 0xE), irq_enabled = 1, then spin (on a
# stack at 0x7800, for the frame): only an
# irq can end the loop, and its handler powers off.
SPIN_WITH_IRQ_ENABLED_ONE = "\n    mov $0x7800, %esp\n" + INIT + f"""
    mov $6, %eax
    mov $0x21, %ebx
    mov $handler, %ecx
    or $0x610000, %ecx
    mov $0x8e00, %edx
    vmcall
    movl $1, {LD_ADDR:#x}     # irq_enabled = 1: non-zero, but not X86_EFLAGS_IF
    movl $1, 0x4000           # tell the host we are spinning
1:  jmp 1b
handler:
    mov $2, %eax              # SHUTDOWN("irq 1", POWEROFF)
    mov $msg, %ebx
    mov $1, %ecx
    vmcall
msg: .asciz "irq 1"
"""


def test_an_irq_reaches_a_spinning_guest_whose_irq_enabled_is_one(tmp_path, core):
    image, _ = assemble(tmp_path, SPIN_WITH_IRQ_ENABLED_ONE)
    results = []
    with launcher(core) as lg:
        prepare_ld(lg)
        lg.load_flat(image, 0x1000, 0x1000)
        # Not the main thread: no signal slice, so only the hook's irq check
        # (or the deadline) stops a spinning guest.
        runner = threading.Thread(target=lambda: results.append(lg.run(timeout=5)))
        runner.start()
        deadline = time.monotonic() + 5
        while lg.memory.read_u32(0x4000) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        lg.send_irq(1)
        runner.join(10)
        elapsed = time.monotonic() - t0
    assert not runner.is_alive()
    assert (results[0].reason, results[0].message) == ("dead", "CRASH: irq 1")
    assert elapsed < 4  # delivered at the next block, not found at the 5 s deadline
