"""F2 (ASan heap-use-after-free): resizing cpu.idt or cpu.regs.array in place.

    fuzz/run_sanitized.sh fuzz/findings/F2_resize_use_after_free.py idt
    fuzz/run_sanitized.sh fuzz/findings/F2_resize_use_after_free.py regs

lguest/_core.pyx: Cpu.__init__ points the C struct at the numpy IDT
(`self.c.idt = &idt_view[0, 0]`, idt_view is a local memoryview released
when __init__ returns) and Regs.__cinit__ does the same for the register
array (`self.r = <lg_regs *>&view[0]`, local `view`).  Afterwards the only
thing keeping the storage is an ordinary reference to the ndarray, so
ndarray.resize() passes numpy's refcheck (refcount == 2) and realloc()s the
buffer: lg_deliver_trap / lg_maybe_do_interrupt / lg_copy_traps and every
Regs property then read and write freed heap memory.  Reachable from plain
Python, no ctypes; the Python core only raises IndexError.
Fix: keep the typed memoryviews as members of Cpu / Regs for the object's
lifetime (an extra reference: numpy's refcheck then refuses the resize), or
hand out non-owning views (`np.zeros(...).view()`: "cannot resize this
array: it does not own its data").
"""
import sys

import lguest

mem = lguest.GuestMemory(8192, guard_pages=True)
host = lguest.Host(used_vectors=lguest.UsedVectors())
cpu = host.new_guest(mem, core="cython", page_offset=0).new_cpu()
if (sys.argv[1:] or ["idt"])[0] == "idt":
    cpu.idt.resize((1, 2))       # frees/reallocs the 2 KiB the core still points at
    print("deliver_trap(200) ->", cpu.deliver_trap(200))   # reads freed memory
else:
    cpu.regs.array.resize((1,))
    cpu.regs.eax = 1                                          # writes freed memory
    print("eip =", cpu.regs.eip)
