# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Native Unicorn hooks for lguest.unicorn: the guest's fast paths in C.

Unicorn never delivers an interrupt through the IDT: every ``int N`` and
every exception stops in a UC_HOOK_INTR callback.  The callbacks here are C
functions registered with libunicorn's ``uc_hook_add`` (function pointers
taken from the Unicorn wheel's own ``libunicorn.so.2`` at run time, so this
module builds without Unicorn installed), and they run without the GIL:

* **direct traps** -- a trap whose host IDT entry is a guest trap gate
  (type 0xF, selector 0x61: what ``copy_traps`` copies for the syscall
  vector) is delivered right in the hook: the registers go into the core's
  ``struct lguest_regs``, the compiled core's ``set_guest_interrupt`` pushes
  the frame, and the CPU is moved to the handler by patching the segment
  caches, CPL and eip/esp of a saved ``uc_context`` (offsets measured at
  start-up by lguest.unicorn).  Counted per vector.  Nothing enters Python.
* everything else (hypercalls, #PF, #GP, #UD, non-direct vectors, a user
  ``int N`` aimed at a gate whose DPL is below the caller's CPL, accesses
  to the host range) records why and stops the emulator synchronously; the
  Python run loop takes over.
* UC_HOOK_INSN callbacks give ``in``/``out`` lguest's emulation (reads see
  ones, writes vanish): Unicorn makes no I/O permission check, so they never
  fault as they would on lguest;
* a UC_HOOK_BLOCK callback counts executed guest blocks (virtual time) and
  stops, at a block boundary and so never mid-instruction, when the block
  budget to the next virtual timer expiry is used up, when an interrupt the
  guest would take is pending (the wall clock's C timer thread or
  ``send_irq`` set the bit), on a break-out request, or at a deadline.

Entering the guest (``run``) is a context patch: the segment checks the
Switcher's ``pop %gs; pop %fs; pop %es; pop %ds; iretd`` made are made in C
(``uh_entry_seg``, same order, same traps and error codes), the guest's
segments, eip, esp and flags are written into the CPU state and Unicorn
starts at the guest's eip.  No host code runs in the emulator, so every
block is the guest's (see uh_on_block).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid

from lguest.abi cimport NUM_REGS
from lguest._clock cimport CpuTimer, NativeClock, clockevent_nogil
from lguest.lguest cimport LGUEST_NATIVE_API_CAPSULE, LGUEST_NATIVE_API_VERSION, lg_native_api

cdef extern from "_uchook.h":
    ctypedef void uh_engine
    ctypedef size_t uh_hookh
    ctypedef int (*uh_hook_add_t)(uh_engine *, uh_hookh *, int, void *, void *, uint64_t, uint64_t, ...) noexcept nogil
    ctypedef int (*uh_hook_del_t)(uh_engine *, uh_hookh) noexcept nogil
    ctypedef int (*uh_emu_start_t)(uh_engine *, uint64_t, uint64_t, uint64_t, size_t) noexcept nogil
    ctypedef int (*uh_emu_stop_t)(uh_engine *) noexcept nogil
    ctypedef int (*uh_reg_read_t)(uh_engine *, int, void *) noexcept nogil
    ctypedef int (*uh_reg_write_t)(uh_engine *, int, const void *) noexcept nogil
    ctypedef int (*uh_context_io_t)(uh_engine *, void *) noexcept nogil
    ctypedef int (*uh_ctl_t)(uh_engine *, int, ...) noexcept nogil
    ctypedef struct uh_state:
        uh_engine *uc
        uh_hook_add_t hook_add
        uh_hook_del_t hook_del
        uh_emu_start_t emu_start
        uh_emu_stop_t emu_stop
        uh_reg_read_t reg_read
        uh_reg_write_t reg_write
        uh_context_io_t ctx_save
        uh_context_io_t ctx_restore
        uh_ctl_t ctl
        uint8_t *ctx
        uint8_t *ctx_small
        int reg_ids[NUM_REGS]
        int reg_cr2
        int off_regs, off_eip, off_eflags, off_hflags, off_segs, seg_stride
        int off_err, off_isint, off_oldexc
        uint32_t *env_err
        uint32_t *env_isint
        uint32_t *env_oldexc
        uint64_t *env_cs_base
        uint8_t *switcher
        uint32_t switcher_va, switcher_size
        uint32_t *gdt
        uint32_t until_va
        uint32_t host_cs, host_ss
        uint32_t *idt
        uint32_t *guest_idt
        lg_native_api *api
        uint32_t *regs
        uint32_t *pending
        uint32_t attention
        int native_direct
        uint32_t reflect_mask
        uint32_t hcall_mask
        int64_t (*hcall_cb)(void *, uint32_t, uint32_t) noexcept nogil
        void *hcall_self
        int (*clock_cb)(void *, void *, uint32_t) noexcept nogil
        void *clock_timer
        void *clock_wheel
        int64_t *vclock_cell
        int64_t *vclock_slot
        int *vclock_halted
        int64_t vclock_npb
        uint64_t vclock_last
        uint8_t *mem
        uint64_t mem_size
        int has_ld
        uint32_t ld, noirq_start, noirq_end
        uint32_t *tb_cflags
        uint8_t **code_gen_ptr
        uint8_t **code_gen_highwater
        uint32_t tb_max_insns
        int twin_on
        uint8_t *twin_seen
        uint64_t twins, twin_skipped
        uint64_t tb_guard
        int stop_flag
        uint64_t blocks
        uint64_t budget_end
        int64_t deadline_ns
        int64_t slice_ns
        int64_t slice_end
        int reason
        uint32_t trapnum, errcode, cr2, is_int
        int mem_type
        uint64_t mem_addr
        int mem_size_access
        uint64_t direct_counts[256]
        uint64_t reflect_counts[32]
        uint64_t reflect_total
        uint64_t hcall_counts[32]
        uint64_t hcall_total
        uint64_t stops[17]   # UH_NREASONS
        uint64_t intr_hooks
        uint64_t io_count
        int skip_armed
        uint32_t skip_addr, skip_end
        uint32_t block_pc, block_end
        uint64_t *trace
        uint32_t trace_cap, trace_len
        uint64_t trace_dropped
        int fast_on
        int fast_dead
        void *fast_cpu
        void (*tlb_reset_dirty)(void *, size_t, size_t) noexcept nogil
        uint64_t *tlb_fast
        uint8_t *code_pages
        uint8_t *seen_ptr
        uint64_t fast_next
        uint64_t fast_passes, fast_cleared, fast_pages, fast_resets
    int uh_run(uh_state *st) noexcept nogil
    void uh_fast_give_up(uh_state *st) noexcept nogil
    void uh_store_int(int *p, int v) noexcept nogil
    void uh_store_u32(uint32_t *p, uint32_t v) noexcept nogil
    void *uh_on_intr_ptr "((void *)uh_on_intr)"
    void *uh_on_invalid_ptr "((void *)uh_on_invalid)"
    void *uh_on_mem_invalid_ptr "((void *)uh_on_mem_invalid)"
    void *uh_on_block_ptr "((void *)uh_on_block)"
    int UH_CTL_TB_FLUSH_C "UH_CTL_TB_FLUSH"
    void *uh_on_in_ptr "((void *)uh_on_in)"
    void *uh_on_out_ptr "((void *)uh_on_out)"
    enum:
        UH_NONE, UH_TRAP, UH_SOFT_GP, UH_DIRECT, UH_SWITCHER, UH_BADSEG, UH_INVALID, UH_TIMER
        UH_IRQ, UH_BREAK, UH_DEADLINE, UH_MEM, UH_DEAD, UH_RING0, UH_VM86, UH_FLUSH, UH_HCALL, UH_NREASONS

cdef extern from *:
    """
    /* What Unicorn's own rdtsc returns (cpu_get_host_ticks: the host's
     * TSC on x86), read where a recording's rdtsc hook replaces it. */
    static inline uint64_t uh_host_tsc(void) {
    #if defined(__x86_64__) || defined(__i386__)
        return __builtin_ia32_rdtsc();
    #else
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    #endif
    }
    """
    uint64_t uh_host_tsc() noexcept nogil

# Why the emulator stopped (NativeHooks.reason): the C enum's values, by name.
REASON_NONE = UH_NONE
REASON_TRAP = UH_TRAP
REASON_SOFT_GP = UH_SOFT_GP
REASON_DIRECT = UH_DIRECT
REASON_SWITCHER = UH_SWITCHER
REASON_BADSEG = UH_BADSEG
REASON_INVALID = UH_INVALID
REASON_TIMER = UH_TIMER
REASON_IRQ = UH_IRQ
REASON_BREAK = UH_BREAK
REASON_DEADLINE = UH_DEADLINE
REASON_MEM = UH_MEM
REASON_DEAD = UH_DEAD
REASON_RING0 = UH_RING0
REASON_VM86 = UH_VM86
REASON_FLUSH = UH_FLUSH
REASON_HCALL = UH_HCALL
REASONS = {
    UH_NONE: "none", UH_TRAP: "trap", UH_SOFT_GP: "soft_gp", UH_DIRECT: "direct", UH_SWITCHER: "switcher",
    UH_BADSEG: "badseg", UH_INVALID: "invalid", UH_TIMER: "timer", UH_IRQ: "irq", UH_BREAK: "break",
    UH_DEADLINE: "deadline", UH_MEM: "mem", UH_DEAD: "dead", UH_RING0: "ring0", UH_VM86: "vm86",
    UH_FLUSH: "flush", UH_HCALL: "hcall",
}

# UC_HOOK_* numbers (unicorn.h, stable across Unicorn 2)
cdef enum:
    UC_HOOK_INTR = 1 << 0
    UC_HOOK_INSN = 1 << 1
    UC_HOOK_BLOCK = 1 << 3
    UC_HOOK_MEM_INVALID = 1008   # unmapped + protection, read/write/fetch
    UC_HOOK_INSN_INVALID = 1 << 14
    UC_X86_INS_RDTSC = 608       # unicorn/x86.h's uc_x86_insn (checked in tests/test_record.py)
    UC_X86_INS_RDTSCP = 609


cdef inline size_t _ptr(object v):
    return <size_t>int(v)


cdef _check_addresses(funcs, internals):
    """Every libunicorn entry point NativeHooks calls, and every engine field
    it writes, must have an address (0 would be called or written)."""
    for name in ("uc_hook_add", "uc_hook_del", "uc_emu_start", "uc_emu_stop", "uc_reg_read", "uc_reg_write",
                 "uc_context_save", "uc_context_restore", "uc_ctl"):
        if not funcs[name]:
            raise ValueError(f"no address for {name}")
    for name in ("tb_cflags", "code_gen_ptr", "code_gen_highwater"):
        if not internals[name]:
            raise ValueError(f"no address for {name}")
    if not 1 <= internals["tb_max_insns"] <= 512 or internals["tb_guard"] <= 0:
        raise ValueError("tb_max_insns must be 1..512 and tb_guard positive")


cdef int64_t _hcall_trampoline(void *self, uint32_t num, uint32_t arg1) noexcept with gil:
    """uh_hcall's way back into Python (the hook runs without the GIL): the
    handler's budget, or -1 to stop -- also when it raised; run() re-raises."""
    cdef NativeHooks h = <NativeHooks>self
    try:
        return h._hcall_handler(num, arg1)
    except BaseException as e:
        h._hcall_error = e
        return -1


cdef uint32_t _rdtsc_trampoline(uh_engine *uc, void *self) noexcept with gil:
    """UC_HOOK_INSN for rdtsc (installed only by :meth:`NativeHooks.set_tsc_handler`)."""
    return (<NativeHooks>self)._tsc(0)


cdef uint32_t _rdtscp_trampoline(uh_engine *uc, void *self) noexcept with gil:
    return (<NativeHooks>self)._tsc(1)


cdef class NativeHooks:
    """The native half of lguest.unicorn's backend: state shared with the C
    hooks, the entry/exit sequence and the counters.  Built by
    lguest.unicorn.UnicornBackend; not a public API.

    Every C pointer it holds is owned by an object it keeps a reference to
    (the engine, the Switcher mapping, the cpu's arrays, a hold on guest
    memory); close() drops them all and from then on (and on an instance
    whose __init__ never ran) every method that would follow one raises
    RuntimeError instead."""

    cdef uh_state st
    cdef uh_hookh handles[6]
    cdef int nhooks
    cdef void *ctx_ptr
    cdef void *ctx_small_ptr
    cdef object _keep      # objects whose memory the C side points into (bind)
    cdef object _owners    # the engine and the Switcher pin (__init__)
    cdef object _hold      # a GuestMemory.hold() while bound
    cdef object _trace     # the timeline's numpy buffer (trace_direct), or None: numpy only with a timeline
    cdef int insn_in, insn_out
    cdef object _free
    cdef int state         # 0: __init__ not run, 1: ready, 2: closed
    cdef int busy          # a run() is in progress (set and cleared with the GIL held)
    cdef object _hcall_handler  # handler(num, arg1) -> budget or -1 (see uh_hcall)
    cdef object _hcall_error
    cdef object _vclock         # the VirtualClock bound by set_virtual_clock, or None
    cdef object _tsc_handler    # handler(rdtscp, blocks, eip, host_tsc) -> tsc (set_tsc_handler), or None
    cdef object _tsc_error
    cdef uh_hookh tsc_handles[2]
    cdef int ntsc
    cdef int fast_want     # the store fast path requested (store_fast_path)
    cdef object _code_pages  # its bitmap (a bytearray), while bound

    def __cinit__(self):
        memset(&self.st, 0, sizeof(uh_state))
        self.st.pending = &self.st.attention
        self.nhooks = 0
        self.ctx_ptr = NULL
        self.ctx_small_ptr = NULL
        self.state = 0
        self.busy = 0
        self._keep = None
        self._owners = None
        self._hold = None
        self._hcall_handler = None
        self._hcall_error = None
        self._trace = None
        self._tsc_handler = None
        self._tsc_error = None
        self.ntsc = 0
        self.fast_want = 0
        self._code_pages = None

    def __init__(self, *, uc_handle, funcs, reg_ids, reg_cr2, layout, switcher, switcher_va,
                 switcher_size, gdt_offset, until_va, host_cs, host_ss,
                 ctx_alloc, ctx_small_alloc, uc_free, insn_in, insn_out, internals, uc_owner=None):
        """``funcs``: addresses of uc_hook_add, uc_hook_del, uc_emu_start,
        uc_emu_stop, uc_reg_read, uc_reg_write, uc_context_save,
        uc_context_restore; ``layout``: the measured uc_context offsets;
        ``internals``: addresses inside the engine (checked by
        lguest.unicorn): ``tb_cflags`` (the CPU's cflags_next_tb),
        ``code_gen_ptr`` and ``code_gen_highwater`` (the translator's), with
        ``tb_max_insns`` and ``tb_guard`` (see uh_on_block), and optionally
        ``env`` (the CPU state, see uh_intr_record);
        ``switcher``: the writable buffer (an mmap) holding the host
        structures, pinned (so it cannot be unmapped) until close();
        ``uc_owner``: the object owning the engine, kept alive likewise."""
        cdef unsigned char[::1] sw
        if self.state != 0:
            raise RuntimeError("NativeHooks is already initialised")
        if not uc_handle or not ctx_alloc:
            raise ValueError("NativeHooks needs an engine and a context")
        if len(reg_ids) != NUM_REGS:
            raise ValueError(f"reg_ids needs {NUM_REGS} entries")
        sw = switcher   # a writable, contiguous buffer (TypeError/ValueError otherwise)
        if switcher_size <= 0 or sw.shape[0] < switcher_size or gdt_offset < 0 or gdt_offset + 32 * 8 > switcher_size:
            raise ValueError("the Switcher buffer does not hold the layout")
        _check_addresses(funcs, internals)
        # state stays 0 until the end: should a layout key or an address still
        # fail below, every method refuses the half-set instance.
        self._set_engine(uc_handle, funcs, internals)
        self._set_layout(reg_ids, reg_cr2, layout)
        self._set_env(internals.get("env", 0), layout)
        self._set_fast(internals, layout)
        self.st.switcher = &sw[0]
        self.st.switcher_va = switcher_va
        self.st.switcher_size = switcher_size
        self.st.gdt = <uint32_t *>(self.st.switcher + <size_t>gdt_offset)
        self.st.until_va = until_va
        self.st.host_cs = host_cs
        self.st.host_ss = host_ss
        self.st.pending = &self.st.attention
        self.ctx_ptr = <void *>_ptr(ctx_alloc)
        self.st.ctx = <uint8_t *>self.ctx_ptr
        self.ctx_small_ptr = <void *>_ptr(ctx_small_alloc) if ctx_small_alloc else NULL
        self.st.ctx_small = <uint8_t *>self.ctx_small_ptr
        self._free = uc_free
        self._keep = []
        self._owners = [uc_owner, sw]   # the memoryview pins the mmap: close() raises BufferError
        self.insn_in = insn_in
        self.insn_out = insn_out
        self.state = 1

    cdef _set_engine(self, uc_handle, funcs, internals):
        """libunicorn's entry points, and the translator fields uh_on_block writes."""
        self.st.uc = <uh_engine *>_ptr(uc_handle)
        self.st.hook_add = <uh_hook_add_t>_ptr(funcs["uc_hook_add"])
        self.st.hook_del = <uh_hook_del_t>_ptr(funcs["uc_hook_del"])
        self.st.emu_start = <uh_emu_start_t>_ptr(funcs["uc_emu_start"])
        self.st.emu_stop = <uh_emu_stop_t>_ptr(funcs["uc_emu_stop"])
        self.st.reg_read = <uh_reg_read_t>_ptr(funcs["uc_reg_read"])
        self.st.reg_write = <uh_reg_write_t>_ptr(funcs["uc_reg_write"])
        self.st.ctx_save = <uh_context_io_t>_ptr(funcs["uc_context_save"])
        self.st.ctx_restore = <uh_context_io_t>_ptr(funcs["uc_context_restore"])
        self.st.ctl = <uh_ctl_t>_ptr(funcs["uc_ctl"])
        self.st.tb_cflags = <uint32_t *>_ptr(internals["tb_cflags"])
        self.st.code_gen_ptr = <uint8_t **>_ptr(internals["code_gen_ptr"])
        self.st.code_gen_highwater = <uint8_t **>_ptr(internals["code_gen_highwater"])
        self.st.tb_max_insns = internals["tb_max_insns"]
        self.st.twin_on = 1 if __import__("os").environ.get("LGUEST_TB_TWINS", "1") != "0" else 0
        self.st.twin_seen = self.st.code_gen_ptr[0]
        self.st.tb_guard = internals["tb_guard"]

    cdef _set_layout(self, reg_ids, reg_cr2, layout):
        """Unicorn's register ids (lguest_regs order) and the measured uc_context offsets."""
        cdef int i
        for i in range(NUM_REGS):
            self.st.reg_ids[i] = reg_ids[i]
        self.st.reg_cr2 = reg_cr2
        self.st.off_regs = layout["regs"]
        self.st.off_eip = layout["eip"]
        self.st.off_eflags = layout["eflags"]
        self.st.off_hflags = layout["hflags"]
        self.st.off_segs = layout["segs"]
        self.st.seg_stride = layout["seg_stride"]
        self.st.off_err = layout["error_code"]
        self.st.off_isint = layout["exception_is_int"]
        self.st.off_oldexc = layout["old_exception"]

    cdef _set_env(self, env, layout):
        """The live CPU state (``internals["env"]``, the address of the
        engine's CPUX86State, whose copy a saved context's data is; 0:
        unknown): the exception fields uh_intr_record reads there."""
        cdef size_t base
        if not env:
            self.st.env_err = self.st.env_isint = self.st.env_oldexc = NULL
            self.st.env_cs_base = NULL
            return
        base = _ptr(env) - <size_t>layout["data"]
        self.st.env_err = <uint32_t *>(base + <size_t>layout["error_code"])
        self.st.env_isint = <uint32_t *>(base + <size_t>layout["exception_is_int"])
        self.st.env_oldexc = <uint32_t *>(base + <size_t>layout["old_exception"])
        # segs[] entries are {selector u32, pad, base u64, limit, flags}: the base at +8
        self.st.env_cs_base = <uint64_t *>(base + <size_t>layout["segs"] + <size_t>layout["seg_stride"] + 8)

    cdef _set_fast(self, internals, layout):
        """The store fast path's engine fields (lguest.unicorn.engine.tlb_internals;
        absent: the path is unavailable and store_fast_path stays False)."""
        cdef size_t env = _ptr(internals.get("env", 0))
        self.st.fast_on = 0
        if not (env and internals.get("tlb_fast") and internals.get("fast_cpu") and internals.get("tlb_reset_dirty")):
            self.st.tlb_fast = NULL
            return
        self.st.fast_cpu = <void *>_ptr(internals["fast_cpu"])
        self.st.tlb_fast = <uint64_t *>_ptr(internals["tlb_fast"])
        self.st.tlb_reset_dirty = <void (*)(void *, size_t, size_t) noexcept nogil>_ptr(internals["tlb_reset_dirty"])

    cdef _fast_apply(self):
        """Make the C side follow fast_want: on (bound, available, not given
        up) with an empty bitmap after a flush of every translation (their
        pages are unknown); off with every guest page re-protected."""
        cdef uint8_t[::1] pages
        if self.fast_want and self.st.tlb_fast != NULL and not self.st.fast_dead and self.st.mem != NULL:
            if self.st.fast_on:
                return
            self._code_pages = pages = bytearray((self.st.mem_size >> 15) + 1)
            self.st.code_pages = &pages[0]  # the bytearray is never resized: only this object holds it
            self.st.ctl(self.st.uc, UH_CTL_TB_FLUSH_C)
            self.st.seen_ptr = self.st.code_gen_ptr[0]
            self.st.fast_next = 0
            self.st.fast_on = 1
        elif self.st.fast_on:
            uh_fast_give_up(&self.st)
            self.st.fast_dead = 0   # switched off, not given up
            self.st.code_pages = NULL
            self._code_pages = None

    @property
    def store_fast_path(self):
        """Guest stores to pages without translated code take Unicorn's
        inline path (see uh_fast_new_block in _uchook.h).  Setting it True
        is a request: it holds while bound, if the engine passed
        lguest.unicorn.engine.tlb_internals' checks and the hook has not
        given up; reading tells whether it is on."""
        return bool(self.st.fast_on)

    @store_fast_path.setter
    def store_fast_path(self, value):
        self._check_idle()
        self.fast_want = 1 if value else 0
        self._fast_apply()

    @property
    def store_fast_path_available(self):
        return self.st.tlb_fast != NULL and not self.st.fast_dead

    def fast_path_stats(self):
        """Counters of the store fast path: code pages marked, clearing
        passes, entries cleared, resets (flushes), gave up."""
        return {"pages": self.st.fast_pages, "passes": self.st.fast_passes, "cleared": self.st.fast_cleared,
                "resets": self.st.fast_resets, "gave_up": bool(self.st.fast_dead),
                "twins": self.st.twins, "twin_skipped": self.st.twin_skipped}

    cdef int _check(self) except -1:
        if self.state == 0:
            raise RuntimeError("NativeHooks is not initialised")
        if self.state == 2:
            raise RuntimeError("NativeHooks is closed")
        return 0

    cdef int _check_idle(self) except -1:
        self._check()
        if self.busy:
            raise RuntimeError("NativeHooks is running a guest")
        return 0

    def install(self):
        """Register the native hooks with Unicorn (once)."""
        cdef int types[4]
        cdef void *cbs[4]
        cdef int i, rc
        self._check_idle()
        if self.nhooks:
            raise RuntimeError("NativeHooks are already installed")
        types[0] = UC_HOOK_INTR; cbs[0] = uh_on_intr_ptr
        types[1] = UC_HOOK_INSN_INVALID; cbs[1] = uh_on_invalid_ptr
        types[2] = UC_HOOK_MEM_INVALID; cbs[2] = uh_on_mem_invalid_ptr
        types[3] = UC_HOOK_BLOCK; cbs[3] = uh_on_block_ptr
        for i in range(4):
            rc = self.st.hook_add(self.st.uc, &self.handles[i], types[i], cbs[i], <void *>&self.st, 1, 0)
            if rc != 0:
                self.uninstall()
                raise OSError(f"uc_hook_add failed: error {rc}")
            self.nhooks += 1
        rc = self.st.hook_add(self.st.uc, &self.handles[4], UC_HOOK_INSN, uh_on_in_ptr, <void *>&self.st, 1, 0,
                              <int>self.insn_in)
        if rc != 0:
            self.uninstall()
            raise OSError(f"uc_hook_add(IN) failed: error {rc}")
        self.nhooks += 1
        rc = self.st.hook_add(self.st.uc, &self.handles[5], UC_HOOK_INSN, uh_on_out_ptr, <void *>&self.st, 1, 0,
                              <int>self.insn_out)
        if rc != 0:
            self.uninstall()
            raise OSError(f"uc_hook_add(OUT) failed: error {rc}")
        self.nhooks += 1

    def uninstall(self):
        cdef int i
        self._check_idle()
        for i in range(self.nhooks):
            self.st.hook_del(self.st.uc, self.handles[i])
        self.nhooks = 0
        for i in range(self.ntsc):
            self.st.hook_del(self.st.uc, self.tsc_handles[i])
        self.ntsc = 0
        self._tsc_handler = None

    def close(self, engine_closed=False):
        """Remove the hooks, free the contexts and drop every pointer (call
        before closing Unicorn; ``engine_closed``: it is closed already, so
        the hooks and the TLB are left alone -- they went with it).
        Idempotent; RuntimeError during a run."""
        if self.state == 2:
            return
        if self.busy:
            raise RuntimeError("NativeHooks is running a guest")
        if engine_closed:
            self.nhooks = self.ntsc = 0
            self._tsc_handler = None
            self.st.fast_on = 0     # so _unbind re-protects nothing in the freed engine
        if self.state == 1:
            self.uninstall()
            if self.ctx_ptr != NULL and self._free is not None:
                self._free(<size_t>self.ctx_ptr)
            if self.ctx_small_ptr != NULL and self._free is not None:
                self._free(<size_t>self.ctx_small_ptr)
        self.state = 2
        self.st.trace = NULL
        self._trace = None
        self._unbind()
        self.ctx_ptr = NULL
        self.ctx_small_ptr = NULL
        self.st.ctx = NULL
        self.st.ctx_small = NULL
        self.st.uc = NULL
        self.st.switcher = NULL
        self.st.gdt = NULL
        self._owners = None
        self._free = None

    cdef _unbind(self):
        if self.st.fast_on:   # the engine may run on without these hooks: re-protect
            uh_fast_give_up(&self.st)
            self.st.fast_dead = 0
        self.st.fast_on = 0
        self.st.code_pages = NULL
        self._code_pages = None
        self.st.clock_cb = NULL
        self.st.clock_timer = NULL
        self.st.clock_wheel = NULL
        self._unbind_vclock()
        self.st.regs = NULL
        self.st.idt = NULL
        self.st.guest_idt = NULL
        self.st.mem = NULL
        self.st.mem_size = 0
        self.st.has_ld = 0
        self.st.api = NULL
        self.st.pending = &self.st.attention
        self._keep = []
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.__exit__(None, None, None)

    def bind(self, cpu, regs_array, host_idt, guest_idt, memory, api_capsule):
        """Point the hooks at a cpu: its registers (``cpu.regs.words`` or
        ``cpu.regs.array``), the host IDT and the guest's (``cpu.idt_words``
        or ``cpu.idt``), its live GuestMemory (held while bound, so it
        cannot be closed under the hooks) and (compiled core) the core's
        native API capsule for that cpu.  The word tables are anything
        exporting u32 words ("I": numpy uint32 arrays, lguest's memoryviews);
        the buffer protocol checks them, so no numpy is needed."""
        cdef uint32_t[::1] rv
        cdef uint32_t[:, ::1] hv
        cdef uint32_t[:, ::1] gv
        cdef uint32_t[::1] own_rv
        cdef uint32_t[:, ::1] own_gv
        cdef lg_native_api *api = NULL
        from ..memory import GuestMemory
        self._check_idle()
        arrays = {"regs": (regs_array, (NUM_REGS,)), "host IDT": (host_idt, (256, 2)), "guest IDT": (guest_idt, (256, 2))}
        for name, (arr, shape) in arrays.items():
            try:
                view = memoryview(arr)
            except TypeError:
                view = None
            if view is None or view.format != "I":
                raise TypeError(f"the {name} must be an array of u32 words (numpy uint32, or a memoryview of 'I')")
            with view:
                if view.shape != shape or not view.c_contiguous or view.readonly:
                    raise ValueError(f"the {name} must be a writable C-contiguous uint32{list(shape)}")
        rv = regs_array
        hv = host_idt
        gv = guest_idt
        own_rv = cpu.regs.words
        own_gv = cpu.idt_words
        if &rv[0] != &own_rv[0] or &gv[0, 0] != &own_gv[0, 0]:
            raise ValueError("regs_array and guest_idt must be the cpu's own")
        if not isinstance(memory, GuestMemory) or memory.closed:
            raise TypeError("memory must be a live GuestMemory")
        if api_capsule is not None:
            if not PyCapsule_IsValid(api_capsule, LGUEST_NATIVE_API_CAPSULE):
                raise TypeError("not a lguest._core native API capsule")
            api = <lg_native_api *>PyCapsule_GetPointer(api_capsule, LGUEST_NATIVE_API_CAPSULE)
            if api.version != LGUEST_NATIVE_API_VERSION or <size_t>api.regs != <size_t>&rv[0]:
                raise ValueError("lguest._core native API mismatch (not this cpu's)")
        hold = memory.hold()
        hold.__enter__()
        self._unbind()
        self._hold = hold
        self._keep = [cpu, regs_array, host_idt, guest_idt, memory, api_capsule]
        self.st.regs = &rv[0]
        self.st.idt = &hv[0, 0]
        self.st.guest_idt = &gv[0, 0]
        self.st.mem = <uint8_t *>_ptr(memory.address)
        self.st.mem_size = memory.size
        if api != NULL:
            self.st.api = api
            self.st.pending = api.irqs_pending
        else:
            self.st.api = NULL
            self.st.pending = &self.st.attention
        self._fast_apply()

    def set_native_clock(self, cpu, clock):
        """Let the hook do SET_CLOCKEVENT without the GIL (uh_hcall) when
        ``clock`` is the NativeClock of the bound compiled ``cpu``'s guest
        (the wall clock; the first arm still goes through the hypercall
        handler).  None: every SET_CLOCKEVENT goes through the handler."""
        self._check_idle()
        self.st.clock_cb = NULL
        self.st.clock_timer = NULL
        self.st.clock_wheel = NULL
        if clock is None:
            return
        if self.st.regs == NULL or cpu is not self._keep[0]:
            raise ValueError("cpu must be the bound cpu")
        if not isinstance(cpu, CpuTimer) or not isinstance(clock, NativeClock) \
                or (<CpuTimer>cpu)._guest_clock is not clock:
            raise ValueError("clock must be the NativeClock of the compiled cpu's guest")
        self._keep.append(clock)   # the wheel lives as long as the binding
        self.st.clock_timer = <void *>&(<CpuTimer>cpu).timer
        self.st.clock_wheel = <void *>&(<NativeClock>clock).wheel
        self.st.clock_cb = <int (*)(void *, void *, uint32_t) noexcept nogil>clockevent_nogil

    cdef _unbind_vclock(self):
        self.st.vclock_slot = NULL
        self.st.vclock_cell = NULL
        self.st.vclock_halted = NULL
        clock, self._vclock = self._vclock, None
        if clock is not None:
            clock._unbind_native()

    def set_virtual_clock(self, cpu, clock, int64_t ns_per_block):
        """Let the hook do SET_CLOCKEVENT without the GIL (uh_vclock_hcall)
        when ``clock`` is the plain lguest.VirtualClock of the bound compiled
        ``cpu``'s guest and the cpu's clock event is the only timer armed on
        it; the clock keeps that event in its native words from now on
        (VirtualClock._bind_native).  None: every SET_CLOCKEVENT goes
        through the hypercall handler (and the event back into the heap).
        False when the clock already keeps another key's event there (a
        clock shared by several cpus: the first one bound has it; the
        others' calls take the Python path, and the bound one's too while
        theirs are armed)."""
        from ..clock import N_WORDS, VirtualClock
        cdef int64_t[::1] cell, slot
        self._check_idle()
        self._unbind_vclock()
        if clock is None:
            return False
        if self.st.regs == NULL or self.st.api == NULL or cpu is not self._keep[0]:
            raise ValueError("cpu must be the bound compiled cpu")
        if type(clock) is not VirtualClock or not isinstance(cpu, CpuTimer) \
                or (<CpuTimer>cpu)._guest_clock is not clock:
            raise ValueError("clock must be the VirtualClock of the compiled cpu's guest")
        if ns_per_block < 1:
            raise ValueError("ns_per_block must be at least 1")
        # The hook's fire is _clock_fired's: irq 0 into the bitmap the block
        # hook watches, and a halted flag it reads (never NULL on a ready Cpu).
        if (<CpuTimer>cpu).timer.pending != self.st.pending or (<CpuTimer>cpu).timer.halted == NULL:
            raise ValueError("the cpu's timer is not the bound cpu's")
        cell = clock.cell
        slot = clock.native
        if slot.shape[0] < N_WORDS:
            raise ValueError("not a VirtualClock's native words")
        if clock._native_key() is not None:
            return False
        clock._bind_native(cpu, cpu._clock_fired)
        self._vclock = clock
        self._keep.extend((clock, clock.cell, clock.native))   # the words the C side writes
        self.st.vclock_npb = ns_per_block
        self.st.vclock_halted = (<CpuTimer>cpu).timer.halted
        self.st.vclock_cell = &cell[0]
        self.st.vclock_slot = &slot[0]
        return True

    @property
    def vclock_last(self):
        """Blocks at which the virtual clock last advanced (the backend's and uh_vclock_hcall's)."""
        return self.st.vclock_last

    @vclock_last.setter
    def vclock_last(self, uint64_t value):
        self.st.vclock_last = value

    def set_guest_data(self, lguest_data, uint32_t noirq_start, uint32_t noirq_end):
        """Where lguest_data is (None: not yet), and the guest's noirq window."""
        self._check()
        if lguest_data is None or lguest_data < 0 or lguest_data + 8 > self.st.mem_size:
            self.st.has_ld = 0
            self.st.ld = 0
        else:
            self.st.has_ld = 1
            self.st.ld = lguest_data
        self.st.noirq_start = noirq_start
        self.st.noirq_end = noirq_end

    def run(self, uint64_t budget_blocks=0, int64_t deadline_ns=0):
        """Enter the guest and run it until a hook stops it; the GIL is
        released meanwhile.  ``budget_blocks``: stop after that many guest
        blocks (0: no limit).  Returns Unicorn's error code.  One run at a
        time: RuntimeError if another thread is inside run()."""
        cdef int err
        self._check_idle()
        if self.st.regs == NULL:
            raise RuntimeError("NativeHooks are not bound to a cpu")
        if not self.nhooks:
            raise RuntimeError("NativeHooks are not installed")
        self.busy = 1   # with the GIL held: a second caller sees it
        try:
            self.st.budget_end = self.st.blocks + budget_blocks if budget_blocks else 0
            self.st.deadline_ns = deadline_ns
            with nogil:
                err = uh_run(&self.st)
        finally:
            self.busy = 0
        if self._hcall_error is not None:
            e, self._hcall_error = self._hcall_error, None
            raise e
        self._reraise_tsc()
        return err

    def resume(self, uint64_t budget_end, int64_t deadline_ns, int64_t skip_addr):
        """The debugger's and the replay's run (lguest.unicorn.gdbstub,
        lguest.host.record): like run(), but the block budget is absolute
        (stop when ``blocks`` reaches ``budget_end``; 0: none), so an entry
        split into several runs keeps its one budget; and with ``skip_addr``
        >= 0 the guest resumes there inside a block it was stopped in
        (already counted): the rest of that block, up to where the
        translator had ended it, runs one instruction per block, neither
        counted nor checked, so the virtual clock and the block starts
        where irqs are taken are those of a run without stops."""
        cdef int err
        self._check_idle()
        if self.st.regs == NULL:
            raise RuntimeError("NativeHooks are not bound to a cpu")
        if not self.nhooks:
            raise RuntimeError("NativeHooks are not installed")
        self.busy = 1
        try:
            self.st.budget_end = budget_end
            self.st.deadline_ns = deadline_ns
            self.st.skip_armed = 1 if skip_addr >= 0 else 0
            self.st.skip_addr = <uint32_t>(skip_addr & 0xFFFFFFFF) if skip_addr >= 0 else 0
            # The rest runs up to where the counted block was cut (see
            # skip_armed in _uchook.h); a stop outside the last counted block
            # (none yet): skip_end 0, its first block only.
            if skip_addr >= 0 and self.st.block_pc <= self.st.skip_addr < self.st.block_end:
                self.st.skip_end = self.st.block_end
            else:
                self.st.skip_end = 0
            with nogil:
                err = uh_run(&self.st)
        finally:
            self.busy = 0
            self.st.skip_armed = 0
        self._reraise_tsc()
        return err

    @property
    def tsc_handler(self):
        """The rdtsc handler (:meth:`set_tsc_handler`), None when no hook is installed."""
        return self._tsc_handler if self.ntsc else None

    cdef _reraise_tsc(self):
        if self._tsc_error is not None:
            e, self._tsc_error = self._tsc_error, None
            raise e

    def set_tsc_handler(self, handler):
        """Take over the guest's ``rdtsc`` and ``rdtscp`` (a recording or a
        replay, lguest.host.record): ``handler(rdtscp, blocks, eip,
        host_tsc) -> int`` runs (with the GIL) at each one, at its exact
        position -- ``blocks`` counts the block it is in, ``eip`` is its
        own -- and its result is what the guest reads in EDX:EAX (rdtscp's
        ECX: 0, its TSC_AUX, which a guest at CPL 1 or 3 cannot set);
        ``host_tsc`` is what Unicorn would have answered.  A handler that
        raises gets ``host_tsc`` to the guest, stops it at its next block
        and the exception comes out of run()/resume().  None removes the
        hooks.  Unicorn looks its rdtsc hooks up at each rdtsc (in the
        helper, not when translating), so without a handler nothing is
        installed and the guest pays nothing."""
        cdef int rc
        self._check_idle()
        if not self.nhooks:
            raise RuntimeError("NativeHooks are not installed")
        for i in range(self.ntsc):
            self.st.hook_del(self.st.uc, self.tsc_handles[i])
        self.ntsc = 0
        self._tsc_handler = handler
        if handler is None:
            return
        rc = self.st.hook_add(self.st.uc, &self.tsc_handles[0], UC_HOOK_INSN, <void *>_rdtsc_trampoline,
                              <void *>self, 1, 0, <int>UC_X86_INS_RDTSC)
        if rc == 0:
            self.ntsc = 1
            rc = self.st.hook_add(self.st.uc, &self.tsc_handles[1], UC_HOOK_INSN, <void *>_rdtscp_trampoline,
                                  <void *>self, 1, 0, <int>UC_X86_INS_RDTSCP)
        if rc != 0:
            self.set_tsc_handler(None)
            raise OSError(f"uc_hook_add(RDTSC) failed: error {rc}")
        self.ntsc = 2

    cdef uint32_t _tsc(self, int rdtscp) noexcept:
        """The guest's rdtsc/rdtscp (Unicorn's RDTSC hooks): EDX:EAX (and
        ECX) from the handler; returns 1, "skip the instruction's own"."""
        cdef uint32_t eip = 0, lo, hi, zero = 0
        cdef uint64_t host = uh_host_tsc(), value = host
        self.st.reg_read(self.st.uc, self.st.reg_ids[13], &eip)   # R_EIP: Unicorn synced it before the hook
        try:
            value = <uint64_t>(int(self._tsc_handler(bool(rdtscp), self.st.blocks, eip, host)) & 0xFFFFFFFFFFFFFFFF)
        except BaseException as e:
            if self._tsc_error is None:
                self._tsc_error = e
            uh_store_int(&self.st.stop_flag, 1)
        lo = <uint32_t>value
        hi = <uint32_t>(value >> 32)
        self.st.reg_write(self.st.uc, self.st.reg_ids[0], &lo)    # R_EAX
        self.st.reg_write(self.st.uc, self.st.reg_ids[3], &hi)    # R_EDX
        if rdtscp:
            self.st.reg_write(self.st.uc, self.st.reg_ids[2], &zero)  # R_ECX: TSC_AUX
        return 1

    def trace_direct(self, capacity):
        """Record direct traps for a timeline (lguest.host.trace): at most
        ``capacity`` between two :meth:`trace_drain` calls (the rest are
        counted as dropped); 0 turns it off."""
        cdef uint64_t[:, ::1] buf
        self._check_idle()
        self.st.trace = NULL
        self.st.trace_cap = 0
        self.st.trace_len = 0
        self._trace = None
        if capacity > 0:
            import numpy as np  # only with a timeline (--trace-out): a guest run needs no numpy

            arr = np.zeros((int(capacity), 4), dtype=np.uint64)
            buf = arr
            self._trace = arr
            self.st.trace_cap = <uint32_t>capacity
            self.st.trace = &buf[0, 0]

    def trace_drain(self):
        """(events, dropped): a copy of the direct traps recorded since the
        last drain (rows of blocks, monotonic ns, eip, vector | cpl_from << 8
        | cpl_to << 16) and how many did not fit; resets both."""
        cdef uint32_t n = self.st.trace_len
        cdef uint64_t dropped = self.st.trace_dropped
        self._check_idle()
        if self._trace is None:
            return None, 0
        out = self._trace[:n].copy()
        self.st.trace_len = 0
        self.st.trace_dropped = 0
        return out, int(dropped)

    @property
    def running(self):
        return bool(self.busy)

    def request_stop(self):
        """Stop the running guest at its next block (thread-safe)."""
        uh_store_int(&self.st.stop_flag, 1)

    def poke(self):
        """Make the running guest stop soon to look at pending irqs (the
        pure-Python core, whose pending bits C cannot see)."""
        uh_store_u32(&self.st.attention, 1)

    def clear_poke(self):
        uh_store_u32(&self.st.attention, 0)

    def __repr__(self):
        state = ("uninitialised", "ready", "closed")[self.state]
        return f"<NativeHooks {state}, {self.nhooks} hooks, {self.st.blocks} blocks>"

    @property
    def native_direct(self):
        return bool(self.st.native_direct)

    @native_direct.setter
    def native_direct(self, value):
        self._check()
        self.st.native_direct = 1 if value else 0

    @property
    def has_native_core(self):
        return self.st.api != NULL

    @property
    def slice_ns(self):
        return self.st.slice_ns

    @slice_ns.setter
    def slice_ns(self, int64_t value):
        self._check()
        self.st.slice_ns = value

    @property
    def reason(self):
        return self.st.reason

    @property
    def trapnum(self):
        return self.st.trapnum

    @property
    def errcode(self):
        return self.st.errcode

    @property
    def is_int(self):
        return bool(self.st.is_int)

    @property
    def cr2(self):
        return self.st.cr2

    @property
    def mem_fault(self):
        """(type, address, size) of the last invalid memory access."""
        return (self.st.mem_type, self.st.mem_addr, self.st.mem_size_access)

    @property
    def blocks(self):
        return self.st.blocks

    @property
    def intr_hooks(self):
        return self.st.intr_hooks

    @property
    def io_count(self):
        """in/out instructions emulated in the hooks."""
        return self.st.io_count

    def direct_counts(self):
        """{vector: deliveries} of the native direct path."""
        cdef int i
        return {i: self.st.direct_counts[i] for i in range(256) if self.st.direct_counts[i]}

    @property
    def reflect_mask(self):
        """Vectors 0..31 (a bitmask) the hook reflects into the guest itself
        when handle_trap would do nothing else with them (uh_reflectable);
        0: every non-direct trap stops the emulator."""
        return self.st.reflect_mask

    @reflect_mask.setter
    def reflect_mask(self, uint32_t value):
        self._check()
        self.st.reflect_mask = value

    @property
    def reflect_total(self):
        return self.st.reflect_total

    @property
    def hcall_mask(self):
        """Hypercall numbers (a bitmask, below 32) the hook does itself when
        uh_hcall_here allows; 0: every hypercall stops the emulator."""
        return self.st.hcall_mask

    @hcall_mask.setter
    def hcall_mask(self, uint32_t value):
        self._check()
        self.st.hcall_mask = value

    def set_hcall_handler(self, handler):
        """``handler(num, arg1) -> int``: does hypercall ``num`` from inside
        the hook (with the GIL) and returns the new block budget (0: none)
        or -1 to stop the emulator (reason "hcall").  None: the hook does
        only FLUSH_ASYNC and stops for the others."""
        self._check_idle()
        self._hcall_handler = handler
        if handler is None:
            self.st.hcall_cb = NULL
            self.st.hcall_self = NULL
        else:
            self.st.hcall_cb = _hcall_trampoline
            self.st.hcall_self = <void *>self

    @property
    def hcall_total(self):
        return self.st.hcall_total

    def hcall_counts(self):
        """{number: hypercalls done in the hook} since the start."""
        cdef int i
        return {i: self.st.hcall_counts[i] for i in range(32) if self.st.hcall_counts[i]}

    def reflect_counts(self):
        """{vector: traps reflected in the hook} since the start."""
        cdef int i
        return {i: self.st.reflect_counts[i] for i in range(32) if self.st.reflect_counts[i]}

    def stop_counts(self):
        cdef int i
        return {REASONS[i]: self.st.stops[i] for i in range(len(REASONS)) if self.st.stops[i]}



def shadow_pgd_entries(const uint32_t[::1] entries, uint32_t[::1] shadow, uint64_t pfn_limit, uint32_t present,
                       uint32_t bad_bits, uint32_t accessed, Py_ssize_t start, Py_ssize_t stop):
    """The shadow page directory's entries ``start..stop-1`` from the guest's
    (lguest.unicorn.paging): an entry that is present, has none of
    ``bad_bits`` and a frame below ``pfn_limit`` is copied with ``accessed``
    set, any other becomes 0.  In C: the Python loop over 1023 entries would
    cost ~100 us per TLB flush, and numpy's import a guest run ~40 ms."""
    cdef Py_ssize_t i
    cdef uint32_t e
    if start < 0 or stop > entries.shape[0] or stop > shadow.shape[0] or start > stop:
        raise ValueError("entry range out of bounds")
    for i in range(start, stop):
        e = entries[i]
        shadow[i] = (e | accessed) if (e & present) and not (e & bad_bits) and (e >> 12) < pfn_limit else 0
