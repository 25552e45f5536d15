"""Property tests: the same random state in both cores and in a small reference
model written here from the C (independent of lguest); every observable must
agree after the same operations.

Observables: regs array, guest IDT, memory bytes, dead, irqs_pending, halted,
changed, esp1, ss1, stack_pages, return values (and the host IDT for copy_traps).
"""
import functools

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from lgtest import core_names, load_core_or_fail

import lguest

M32 = 0xFFFFFFFF
PAGE = 4096
LD_TIME = 12
R = {n: i for i, n in enumerate(("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "gs", "fs", "ds", "es",
                                 "trapnum", "errcode", "eip", "cs", "eflags", "esp", "ss"))}
SWITCHER = 0xFFC00000


def s32(v):
    return v - (1 << 32) if v & 0x80000000 else v


# --------------------------------------------------------------------------------------
# Reference model (a transcription of interrupts_and_traps.c + ABI.md section 4)
# --------------------------------------------------------------------------------------

class Model:
    def __init__(self, st_):
        self.size = st_["npages"] * PAGE
        self.pfn_limit = st_["npages"]
        self.mem = bytearray(st_["memory"])
        self.page_offset = st_["page_offset"]
        self.pgdir = st_["pgdir"]
        self.ld = st_["ld"]
        self.sv = st_["syscall_vector"]
        self.now = st_["now_ns"]
        self.noirq_start, self.noirq_end = st_["noirq"]
        self.stack_pages = st_["stack_pages"]
        self.regs = list(st_["regs"])
        self.idt = [list(e) for e in st_["idt"]]
        self.esp1 = st_["esp1"]
        self.ss1 = st_["ss1"] & 0xFF
        self.halted = st_["halted"]
        self.changed = st_["changed"]
        self.pending = st_["pending"]
        self.dead = None

    # -- helpers
    def kill(self, msg):
        if self.dead is None:
            self.dead = msg

    def r32(self, a):
        return int.from_bytes(self.mem[a:a + 4], "little")

    def w32(self, a, v):
        self.mem[a:a + 4] = (v & M32).to_bytes(4, "little")

    def address_ok(self, addr, n):
        end = (addr + n) & M32
        return end // PAGE < self.pfn_limit and end >= addr

    def lgread32(self, addr):
        if not self.address_ok(addr, 4):
            self.kill(f"bad read address {addr:#x} len 4")
            return 0
        return self.r32(addr)

    def lgwrite32(self, addr, v):
        if not self.address_ok(addr, 4):
            self.kill(f"bad write address {addr:#x} len 4")
            return
        self.w32(addr, v)

    def ld_read(self, off):
        if self.ld is None or self.ld + off + 4 > self.size:
            return None
        return self.r32(self.ld + off)

    def ld_write(self, off, v):
        if self.ld is None or self.ld + off + 4 > self.size:
            return False
        self.w32(self.ld + off, v)
        return True

    def guest_pa(self, vaddr):
        if self.pgdir is None:
            return (vaddr - self.page_offset) & M32
        pgd = self.lgread32((self.pgdir + (vaddr >> 22) * 4) & M32)
        if not pgd & 1:
            self.kill(f"Bad address {vaddr:#x}")
            return M32
        pte = self.lgread32((pgd & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4)
        if not pte & 1:
            self.kill(f"Bad address {vaddr:#x}")
        return (pte & 0xFFFFF000) | (vaddr & 0xFFF)

    def could_be_syscall(self, n):
        return n == 0x80 or n == self.sv

    def direct_trap(self, n):
        if n >= 32 and not self.could_be_syscall(n):
            return False
        return n not in (14, 13, 7, 6, 31)

    # -- seed functions
    def push(self, gstack, val):
        gstack = (gstack - 4) & M32
        self.lgwrite32(gstack, val)
        return gstack

    def set_guest_interrupt(self, lo, hi, has_err):
        r = self.regs
        if (r[R["ss"]] & 3) != 1:
            virtstack, ss = self.esp1, self.ss1
            origstack = gstack = self.guest_pa(virtstack)
            gstack = self.push(gstack, r[R["ss"]])
            gstack = self.push(gstack, r[R["esp"]])
        else:
            virtstack, ss = r[R["esp"]], r[R["ss"]]
            origstack = gstack = self.guest_pa(virtstack)
        eflags = r[R["eflags"]]
        irq = self.ld_read(0)
        if irq is not None and not irq & 0x200:
            eflags &= ~0x200 & M32
        gstack = self.push(gstack, eflags)
        gstack = self.push(gstack, r[R["cs"]])
        gstack = self.push(gstack, r[R["eip"]])
        if has_err:
            gstack = self.push(gstack, r[R["errcode"]])
        r[R["ss"]] = ss
        r[R["esp"]] = (virtstack + gstack - origstack) & M32
        r[R["cs"]] = 0x61
        r[R["eip"]] = (lo & 0xFFFF) | (hi & 0xFFFF0000)
        if (hi >> 8) & 0xF == 0xE:
            if not self.ld_write(0, 0):
                self.kill("Disabling interrupts")

    def write_timestamp(self):
        sec, nsec = (self.now // 10**9) & M32, self.now % 10**9
        if self.ld is None or self.ld + LD_TIME + 8 > self.size:
            self.kill("Writing timestamp")
            return
        self.w32(self.ld + LD_TIME, sec)
        self.w32(self.ld + LD_TIME + 4, nsec)

    def maybe_do_interrupt(self):
        if self.ld is None:
            return
        blocked = self.ld_read(4)
        if blocked is None:
            return
        blk = self.pending & ~blocked & M32
        if blk == 0:
            return
        irq = (blk & -blk).bit_length() - 1
        eip = self.regs[R["eip"]]
        if self.noirq_start <= eip < self.noirq_end:
            return
        if self.halted:
            if not self.ld_write(0, 0x200):
                self.kill("Re-enabling interrupts")
            self.halted = False
        else:
            ie = self.ld_read(0)
            if not ie:
                return
        a, b = self.idt[32 + irq]
        if b & 0x8000:
            self.pending &= ~(1 << irq)
            self.set_guest_interrupt(a, b, False)
        self.write_timestamp()

    def deliver_trap(self, num):
        if num >= 256:
            return False
        a, b = self.idt[num]
        if not b & 0x8000:
            return False
        self.set_guest_interrupt(a, b, num == 8 or 10 <= num <= 14 or num == 17)
        return True

    def pin_page(self, vaddr):
        if self.pgdir is None:
            ok = (self.guest_pa(vaddr) & 0xFFFFF000) + PAGE <= self.size
        else:
            ok = False
            pgd = self.lgread32(self.pgdir + (vaddr >> 22) * 4)
            if pgd & 1 and (pgd >> 12) < self.pfn_limit:
                pte_addr = (pgd & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4
                pte = self.lgread32(pte_addr)
                if pte & 1 and pte & 2 and (pte >> 12) < self.pfn_limit:
                    self.lgwrite32(pte_addr, pte | 0x60)
                    ok = True
        if not ok:
            self.kill(f"bad stack page {vaddr:#x}")

    def pin_stack_pages(self):
        for i in range(self.stack_pages):
            if self.dead is not None:
                break
            self.pin_page((self.esp1 - 1 - i * PAGE) & M32)

    def guest_set_stack(self, seg, esp, pages):
        if seg & 3 != 1:
            self.kill(f"bad stack segment {s32(seg)}")
        if pages > 2:
            self.kill(f"bad stack pages {pages}")
        self.ss1 = seg & 0xFF
        self.esp1 = esp
        self.stack_pages = pages
        self.pin_stack_pages()

    def load_guest_idt_entry(self, num, lo, hi):
        if num in (2, 8, 15, 31):
            return
        self.changed |= 1
        if num >= 256:
            self.kill(f"Setting idt entry {num}")
            return
        if not hi & 0x8000:
            self.idt[num] = [0, 0]
            return
        typ = (hi >> 8) & 0xF
        if typ not in (0xE, 0xF):
            self.kill(f"bad IDT type {typ}")
        self.idt[num] = [(0x61 << 16) | (lo & 0xFFFF), hi & 0xFFFFEF00]

    @staticmethod
    def default_idt_entry(trap, handler, base):
        flags = 0x8E00
        if trap == 31:
            flags |= 0x2000
        elif base is not None:
            flags |= base[1] & 0x6000
        return [(0x50 << 16) | (handler & 0xFFFF), (handler & 0xFFFF0000) | flags]

    def copy_traps(self, host_idt, defaults):
        for i in range(256):
            if not self.direct_trap(i):
                continue
            g = self.idt[i]
            if (g[1] >> 8) & 0xF == 0xF:
                host_idt[i] = list(g)
            else:
                host_idt[i] = self.default_idt_entry(i, defaults[i], g)


# --------------------------------------------------------------------------------------
# Building the same state in a core
# --------------------------------------------------------------------------------------

class Real:
    def __init__(self, core, st_):
        self.mem = lguest.GuestMemory(st_["npages"] * PAGE)
        self.mem.write(0, bytes(st_["memory"]))
        host = lguest.Host(syscall_vector=st_["syscall_vector"], used_vectors=lguest.UsedVectors())
        self.clock = lguest.VirtualClock(start_ns=st_["now_ns"])
        g = host.new_guest(self.mem, page_offset=st_["page_offset"], clock=self.clock, core=core)
        g.lguest_data = st_["ld"]
        g.pgdir = st_["pgdir"]
        g.noirq_start, g.noirq_end = st_["noirq"]
        g.stack_pages = st_["stack_pages"]
        c = g.new_cpu()
        c.regs.array[:] = np.array(st_["regs"], dtype=np.uint32)
        c.idt[:] = np.array(st_["idt"], dtype=np.uint32)
        c.esp1 = st_["esp1"]
        c.ss1 = st_["ss1"]
        c.halted = st_["halted"]
        c.changed = st_["changed"]
        c.irqs_pending = st_["pending"]
        self.guest, self.cpu = g, c

    def close(self):
        self.guest = self.cpu = None
        self.mem.close()

    def observe(self):
        c, g = self.cpu, self.guest
        return dict(regs=c.regs.array.tolist(), idt=c.idt.tolist(),
                    mem=self.mem.read(0, self.mem.size), dead=g.dead, pending=int(c.irqs_pending),
                    halted=bool(c.halted), changed=int(c.changed), esp1=int(c.esp1), ss1=int(c.ss1),
                    stack_pages=int(g.stack_pages))


def observe_model(m):
    return dict(regs=list(m.regs), idt=[list(e) for e in m.idt], mem=bytes(m.mem), dead=m.dead,
                pending=m.pending, halted=bool(m.halted), changed=m.changed, esp1=m.esp1, ss1=m.ss1,
                stack_pages=m.stack_pages)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

u32 = st.integers(0, M32)
SS_VALUES = [0x69, 0x7B, 0x68, 0x61, 0x6A, 0xE9]


GATE_HI = st.one_of(
    u32,
    st.builds(lambda h, p, dpl, t, low: (h << 16) | (p << 15) | (dpl << 13) | (t << 8) | low,
              st.integers(0, 0xFFFF), st.sampled_from([1, 1, 1, 0]), st.integers(0, 3),
              st.sampled_from([0xE, 0xF, 0xF, 0xE, 0x5, 0xC, 0x0]), st.sampled_from([0, 0, 0xFF, 0x1F])),
)


def gate_hi():
    return GATE_HI


# Strategies are built once (per memory size): building them per example is
# what dominates hypothesis' run time.
PAGE_OFFSETS = st.one_of(st.sampled_from([0, 0, 0xC0000000, 0x1000]), u32)
IRQ_ENABLED = st.one_of(st.sampled_from([0, 0x200, 0x202, 1]), u32)
BLOCKED = st.one_of(st.sampled_from([0, 1, M32]), u32)
CS = st.one_of(st.sampled_from([0x61, 0x73]), u32)
SS = st.one_of(st.sampled_from(SS_VALUES), u32)
EFLAGS = st.one_of(st.sampled_from([0x202, 0x002, 0x246]), u32)
IDT_WRITES = st.lists(st.tuples(st.one_of(st.integers(32, 63), st.integers(0, 31), st.sampled_from([0x40, 0x80]),
                                          st.integers(0, 255)), u32, GATE_HI), max_size=10)
NOIRQ = st.one_of(
    st.tuples(st.just("near"), st.integers(0, 16), st.integers(0, 32)),
    st.tuples(st.just("any"), u32, u32),
    st.just(("none", 0, 0)),
)
PENDING = st.one_of(st.sampled_from([0, 1, 0b10, 0x80000000]), u32)
REST = st.fixed_dictionaries(dict(
    syscall_vector=st.sampled_from([0x80, 0x40, 0x05, 0xFF]), now_ns=st.integers(0, 2**62),
    stack_pages=st.integers(0, 3), ss1=st.integers(0, 255), halted=st.booleans(), changed=st.integers(0, 7),
    pending=PENDING,
))


@functools.cache
def sized(npages):
    size = npages * PAGE
    # (value, relative): relative values get page_offset added
    near = st.one_of(
        u32.map(lambda v: (v, False)),
        st.integers(0, 32).map(lambda v: (v, False)),
        st.integers(-8, 40).map(lambda k: (size - k, True)),
        st.integers(0, size + 64).map(lambda v: (v, True)),
    )
    mem_writes = st.lists(st.tuples(st.integers(0, size // 4 - 1), u32), max_size=12)
    ld = st.one_of(st.none(), st.integers(0, 24).map(lambda k: size - k), u32, st.integers(0, size - 24))
    esp1_paged = st.one_of(st.integers(0x3000, SWITCHER), st.integers(0x3000, size + 0x3000))
    return dict(near=near, mem_writes=mem_writes, ld=ld, pgdir=st.integers(0, npages - 2),
                esp1_paged=esp1_paged)


@st.composite
def states(draw, paging=None):
    npages = draw(st.integers(4, 8))
    size = npages * PAGE
    S = sized(npages)
    page_offset = draw(PAGE_OFFSETS)
    use_pgdir = draw(st.booleans()) if paging is None else paging
    pgdir = draw(S["pgdir"]) * PAGE if use_pgdir else None
    base = 0 if use_pgdir else page_offset

    def vnear():
        v, rel = draw(S["near"])
        return (v + base) & M32 if rel else v

    mem = bytearray(size)
    for off, val in draw(S["mem_writes"]):
        mem[4 * off:4 * off + 4] = val.to_bytes(4, "little")

    ld = draw(S["ld"])
    if ld is not None and ld + 8 <= size:
        mem[ld:ld + 4] = draw(IRQ_ENABLED).to_bytes(4, "little")
        mem[ld + 4:ld + 8] = draw(BLOCKED).to_bytes(4, "little")

    raw = draw(st.binary(min_size=72, max_size=72))
    regs = [int.from_bytes(raw[4 * i:4 * i + 4], "little") for i in range(18)]
    regs[R["eip"]] = draw(u32)
    regs[R["errcode"]] = draw(u32)
    regs[R["cs"]] = draw(CS)
    regs[R["ss"]] = draw(SS)
    regs[R["esp"]] = vnear()
    regs[R["eflags"]] = draw(EFLAGS)
    # page-table mode: keep pinned addresses below the Switcher and above the wrap (see pin_tables)
    esp1 = draw(S["esp1_paged"]) if use_pgdir else vnear()

    idt = [[0, 0] for _ in range(256)]
    for vec, a, b in draw(IDT_WRITES):
        idt[vec] = [a, b]

    kind, x, y = draw(NOIRQ)
    if kind == "near":
        lo_ = (regs[R["eip"]] - x) & M32
        noirq = (lo_, (lo_ + y) & M32)
    else:
        noirq = (x, y)

    return dict(npages=npages, memory=mem, page_offset=page_offset, pgdir=pgdir, ld=ld, noirq=noirq,
                regs=regs, idt=idt, esp1=esp1, **draw(REST))


def pin_tables(draw, state, vaddrs):
    """In page-table mode, give every address that will be pinned a well-formed
    pgd/pte pair (flags within _PAGE_TABLE, pfns inside memory), so that the
    only outcomes are the API's: pinned, or "bad stack page"."""
    if state["pgdir"] is None:
        return
    npages = state["npages"]
    mem = state["memory"]
    pgdir = state["pgdir"]
    tables = {}
    ptes, pgds = [], []
    for v in vaddrs:
        slot = v >> 22
        if slot not in tables:
            tables[slot] = (draw(st.integers(0, npages - 2)),
                            draw(st.sampled_from([0x67, 0x07, 0x27, 0x00, 0x06, 0x66])))
        t, pflags = tables[slot]
        pgds.append((pgdir + slot * 4, (t << 12) | pflags))
        pte = (draw(st.integers(0, npages - 1)) << 12) | draw(st.sampled_from([0x63, 0x03, 0x07, 0x01, 0x00,
                                                                                 0x02, 0x23, 0x43]))
        ptes.append(((t << 12) + ((v >> 12) & 0x3FF) * 4, pte))
    for addr, val in ptes + pgds:      # pgds last: every walk sees only these values
        mem[addr:addr + 4] = val.to_bytes(4, "little")


def pinned(esp, pages):
    return [(esp - 1 - i * PAGE) & M32 for i in range(min(pages, 3))]


core_ops = st.one_of(
    st.tuples(st.just("maybe_do_interrupt")),
    st.tuples(st.just("deliver_trap"), st.one_of(st.integers(0, 300), st.sampled_from([0x80, 0x40, 14, 8]), u32)),
    st.tuples(st.just("set_guest_interrupt"), u32, gate_hi(), st.booleans()),
    st.tuples(st.just("load_guest_idt_entry"), st.one_of(st.integers(0, 260), u32), u32, gate_hi()),
    st.tuples(st.just("guest_set_stack"), st.one_of(st.sampled_from([0x69, 0x68, 0x7B, 0x169]), u32),
              st.integers(0x3000, SWITCHER), st.one_of(st.integers(0, 3), st.just(M32))),
    st.tuples(st.just("pin_stack_pages")),
    st.tuples(st.just("write_timestamp")),
    st.tuples(st.just("copy_traps")),
)
clock_ops = st.one_of(
    st.tuples(st.just("send_irq"), st.integers(0, 31)),
    st.tuples(st.just("set_clockevent"), st.integers(0, 2000)),
    st.tuples(st.just("advance"), st.integers(0, 3000)),
)
ops = st.one_of(core_ops, clock_ops)


def make_deliverable(draw, state):
    """Bias a state towards an actual delivery by maybe_do_interrupt."""
    npages = state["npages"]
    size = npages * PAGE
    mem = state["memory"]
    ld = draw(st.integers(0, size - 24))
    state["ld"] = ld
    blocked = draw(st.sampled_from([0, 0, 1, 0xFFFF0000, 0x7FFFFFFF]))
    pending = draw(st.integers(1, M32)) | draw(st.sampled_from([1, 2, 0x10000, 0x80000000]))
    state["pending"] = pending
    mem[ld + 4:ld + 8] = blocked.to_bytes(4, "little")
    mem[ld:ld + 4] = draw(st.sampled_from([0x200, 0x200, 0, 1])).to_bytes(4, "little")
    blk = pending & ~blocked & M32
    if blk and draw(st.integers(0, 3)):
        irq = (blk & -blk).bit_length() - 1
        state["idt"][32 + irq] = [draw(u32), draw(gate_hi()) | 0x8000]
    if draw(st.booleans()):
        state["noirq"] = (0, 0)


def run_and_compare(state, op_list):
    cores = [load_core_or_fail(n) for n in core_names()]
    model = Model(state)
    reals = [Real(c, state) for c in cores]
    host_idt0 = np.array([[(i * 0x01010101) & M32, M32 - i] for i in range(256)], dtype=np.uint32)
    defaults = np.array([(0xFFC00000 + i * 0x10 + (i << 16)) & M32 for i in range(256)], dtype=np.uint32)
    timer = None    # the model's VirtualClock timer: expiry, or None
    try:
        for op in op_list:
            name, args = op[0], op[1:]
            if name == "copy_traps":
                mh = host_idt0.tolist()
                model.copy_traps(mh, defaults.tolist())
                for r in reals:
                    h = host_idt0.copy()
                    r.cpu.copy_traps(h, defaults.copy())
                    assert h.tolist() == mh, r.guest
                continue
            if name == "send_irq":
                model.pending |= 1 << args[0]
                for r in reals:
                    r.cpu.send_irq(args[0])
                continue
            if name == "set_clockevent":
                timer = None if args[0] == 0 else model.now + args[0]
                for r in reals:
                    r.cpu.set_clockevent(args[0])
                continue
            if name == "advance":
                model.now += args[0]
                if timer is not None and model.now >= timer:
                    model.pending |= 1
                    timer = None
                for r in reals:
                    r.clock.advance(args[0])
                continue
            results = [getattr(model, name)(*args)]
            for r in reals:
                results.append(getattr(r.cpu, name)(*args))
            if name == "deliver_trap":
                assert all(type(x) is bool for x in results[1:])
            assert results[1:] == [results[0]] * len(reals), (name, results)
        expect = observe_model(model)
        event("dead: " + (" ".join(model.dead.split()[:2]) if model.dead else "no"))
        event("regs changed" if model.regs != list(state["regs"]) else "regs same")
        for core, r in zip(cores, reals, strict=True):
            got = r.observe()
            for key in expect:
                assert got[key] == expect[key], (core.NAME, key, op_list)
    finally:
        for r in reals:
            r.close()


def pins_for(state, op_list):
    pins = pinned(state["esp1"], state["stack_pages"])
    for op in op_list:
        if op[0] == "guest_set_stack":
            pins += pinned(op[2], op[3] if op[3] <= 2 else 0)
    return pins


@given(data=st.data())
def test_single_operation(data):
    state = data.draw(states())
    op = data.draw(core_ops)
    pin_tables(data.draw, state, pins_for(state, [op]))
    run_and_compare(state, [op])


@given(data=st.data())
def test_maybe_do_interrupt(data):
    state = data.draw(states())
    make_deliverable(data.draw, state)
    run_and_compare(state, [("maybe_do_interrupt",)])


@given(data=st.data())
def test_set_guest_interrupt_linear(data):
    state = data.draw(states(paging=False))
    op = ("set_guest_interrupt", data.draw(u32), data.draw(gate_hi()), data.draw(st.booleans()))
    run_and_compare(state, [op])


@given(data=st.data())
def test_deliver_every_trap(data):
    state = data.draw(states())
    num = data.draw(st.integers(0, 255))
    state["idt"][num] = [data.draw(u32), data.draw(gate_hi()) | 0x8000]
    run_and_compare(state, [("deliver_trap", num)])


@given(data=st.data())
def test_operation_sequences(data):
    state = data.draw(states())
    if data.draw(st.booleans()):
        make_deliverable(data.draw, state)
    op_list = data.draw(st.lists(ops, min_size=2, max_size=8))
    pin_tables(data.draw, state, pins_for(state, op_list))
    run_and_compare(state, op_list)


@given(data=st.data())
def test_copy_traps_matches_model(data):
    state = data.draw(states(paging=False))
    for vec in data.draw(st.lists(st.integers(0, 255), max_size=40)):
        state["idt"][vec] = [data.draw(u32), data.draw(gate_hi())]
    run_and_compare(state, [("copy_traps",)])
