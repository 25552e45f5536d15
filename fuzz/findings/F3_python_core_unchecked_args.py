"""F3 (API conformance, Python core): offsets and lengths are not checked as u32.

    .venv/bin/python fuzz/findings/F3_python_core_unchecked_args.py

API.md: values that model guest-supplied numbers are u32; outside
0..2**32-1 is host misuse (ValueError).  The compiled core raises
ValueError for all four calls below; lguest/fallback.py does not:
* Guest.ld_read_u32(off) / ld_write_u32(off, v): only `ld + off + 4 > size`
  is checked; a negative off passes, and struct.unpack_from/pack_into treat
  a negative offset as counting from the END of the buffer: with
  lguest_data = 0, ld_read_u32(-4) returns the last word of guest memory and
  ld_write_u32(-8, 7) overwrites it.
* Cpu.lgread(addr, n): n unchecked; n = -1 kills the guest with
  "bad read address 0x0 len 4294967295" and then raises "negative count";
  n >= 2**32 would kill and allocate n zero bytes.
* Guest.address_ok(addr, length): length unchecked (returns False).
Fix: `_check_u32` on off/n/length at these entry points (as the Cython
core's to_u32 does).
"""
import lguest

mem = lguest.GuestMemory(8192)
host = lguest.Host(used_vectors=lguest.UsedVectors())
guest = host.new_guest(mem, core="python", page_offset=0)
cpu = guest.new_cpu()
mem.write(8188, b"\x11\x22\x33\x44")
guest.lguest_data = 0
print("ld_read_u32(-4) =", hex(guest.ld_read_u32(-4)), "(last word of memory; cython: ValueError)")
print("ld_write_u32(-8, 7) =", guest.ld_write_u32(-8, 7), "->", mem.read(8184, 4).hex())
try:
    cpu.lgread(0, -1)
except ValueError as e:
    print("lgread(0, -1): ValueError", e, "| guest.dead =", repr(guest.dead))
