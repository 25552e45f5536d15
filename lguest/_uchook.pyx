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

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, int32_t
from libc.string cimport memset
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid

import numpy as np

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>
    #include <time.h>

    typedef void uh_engine;
    typedef size_t uh_hookh;
    typedef int (*uh_hook_add_t)(uh_engine *, uh_hookh *, int, void *, void *, uint64_t, uint64_t, ...);
    typedef int (*uh_hook_del_t)(uh_engine *, uh_hookh);
    typedef int (*uh_emu_start_t)(uh_engine *, uint64_t, uint64_t, uint64_t, size_t);
    typedef int (*uh_emu_stop_t)(uh_engine *);
    typedef int (*uh_reg_read_t)(uh_engine *, int, void *);
    typedef int (*uh_reg_write_t)(uh_engine *, int, const void *);
    typedef int (*uh_context_alloc_t)(uh_engine *, void **);
    typedef int (*uh_context_io_t)(uh_engine *, void *);
    typedef int (*uh_free_t)(void *);
    typedef int (*uh_ctl_t)(uh_engine *, int, ...);
    /* uc_ctl(UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0)): type 10, no arguments, write */
    #define UH_CTL_TB_FLUSH ((10) | (0 << 26) | (1 << 30))

    /* Must match lg_native_api in lguest/_core.pyx (version 1). */
    typedef struct {
        uint32_t version, size;
        void *cpu;
        uint32_t *regs;
        uint32_t *irqs_pending;
        int *dead_code;
        void (*set_guest_interrupt)(void *cpu, uint32_t lo, uint32_t hi, int has_err);
    } uh_native_api;

    /* struct lguest_regs word indices */
    enum { R_EAX, R_EBX, R_ECX, R_EDX, R_ESI, R_EDI, R_EBP, R_GS, R_FS, R_DS, R_ES,
           R_TRAPNUM, R_ERRCODE, R_EIP, R_CS, R_EFLAGS, R_ESP, R_SS, R_NUM };
    /* qemu segment indices in env->segs[] */
    enum { S_ES, S_CS, S_SS, S_DS, S_FS, S_GS };

    /* Why the emulator stopped. */
    enum {
        UH_NONE = 0,      /* emu_start returned on its own (until reached, error) */
        UH_TRAP = 1,      /* an exception or int N for the host: trapnum, errcode */
        UH_SOFT_GP = 2,   /* int N at CPL > gate DPL: becomes #GP(N*8+2) */
        UH_DIRECT = 3,    /* a direct trap the hook did not deliver (Python does) */
        UH_SWITCHER = 4,  /* the entry refused the guest's segments (trapnum, errcode) */
        UH_BADSEG = 5,    /* a direct trap needs a code/stack segment that is unusable */
        UH_INVALID = 6,   /* #UD (ud2, vmcall) through UC_HOOK_INSN_INVALID */
        UH_TIMER = 7,     /* the virtual clock's block budget ran out */
        UH_IRQ = 8,       /* an interrupt the guest would take is pending */
        UH_BREAK = 9,     /* break-out request */
        UH_DEADLINE = 10, /* wall-clock deadline or time slice */
        UH_MEM = 11,      /* unmapped or protected memory */
        UH_DEAD = 12,     /* the guest was killed during a native delivery */
        UH_RING0 = 13,    /* the guest at CPL 0 (a backstop: cannot happen) */
        UH_VM86 = 14,     /* the guest in virtual-8086 mode (see uh_run) */
        UH_FLUSH = 15     /* internal: the translation cache is nearly full (see uh_on_block) */
    };

    #define UH_EFLAGS_TF 0x100u
    #define UH_EFLAGS_IF 0x200u
    #define UH_EFLAGS_NT 0x4000u
    #define UH_EFLAGS_RF 0x10000u
    #define UH_EFLAGS_VM 0x20000u
    /* what a guest keeps of its eflags across an entry: the arithmetic flags,
     * TF, DF, AC and ID.  IF is always on (the guest's own IF is virtual, in
     * lguest_data.irq_enabled); IOPL 0, no VM86, no NT. */
    #define UH_EFLAGS_KEEP 0x00240DD5u

    #define UH_HF_CPL_MASK 3u
    #define UH_HF_CS32 (1u << 4)
    #define UH_HF_SS32 (1u << 5)
    #define UH_HF_ADDSEG (1u << 6)
    #define UH_HF_INHIBIT_IRQ (1u << 3)

    typedef struct {
        /* libunicorn */
        uh_engine *uc;
        uh_hook_add_t hook_add;
        uh_hook_del_t hook_del;
        uh_emu_start_t emu_start;
        uh_emu_stop_t emu_stop;
        uh_reg_read_t reg_read;
        uh_reg_write_t reg_write;
        uh_context_io_t ctx_save;
        uh_context_io_t ctx_restore;
        uh_ctl_t ctl;
        uint8_t *ctx;                /* a whole saved context */
        uint8_t *ctx_small;          /* one whose size covers registers and segments only */
        int reg_ids[R_NUM];          /* Unicorn register ids in lguest_regs order (-1: none) */
        int reg_cr2;
        /* uc_context layout, measured by lguest.unicorn (offsets from the uc_context pointer) */
        int off_regs, off_eip, off_eflags, off_hflags, off_segs, seg_stride;
        int off_err, off_isint, off_oldexc;
        /* the Switcher: host memory mapped at switcher_va */
        uint8_t *switcher;
        uint32_t switcher_va, switcher_size;
        uint32_t *gdt;               /* 32 x {a, b}, inside the Switcher */
        uint32_t until_va;          /* emu_start's "until": unmapped host address */
        uint32_t host_cs, host_ss;   /* ring-0 selectors of the Switcher */
        uint32_t *idt;               /* host IDT (256 x {a, b}) the guest runs with */
        uint32_t *guest_idt;         /* the guest's own IDT (for the irq check) */
        /* the core */
        uh_native_api *api;          /* NULL: direct traps go to Python */
        uint32_t *regs;              /* cpu.regs.array */
        uint32_t *pending;           /* the cpu's irqs_pending, or &attention */
        uint32_t attention;
        int native_direct;
        /* guest memory and lguest_data, for "would maybe_do_interrupt deliver?" */
        uint8_t *mem;
        uint64_t mem_size;
        int has_ld;
        uint32_t ld, noirq_start, noirq_end;
        /* the translator's bounds (see uh_on_block): fields inside Unicorn */
        uint32_t *tb_cflags;         /* &cpu->cflags_next_tb */
        uint8_t **code_gen_ptr;      /* &tcg_ctx->code_gen_ptr */
        uint8_t **code_gen_highwater;/* &tcg_ctx->code_gen_highwater */
        uint32_t tb_max_insns;
        uint64_t tb_guard;           /* flush when fewer bytes than this remain */
        /* run control */
        int stop_flag;               /* atomic: break-out */
        uint64_t blocks;             /* guest blocks executed, ever */
        uint64_t budget_end;         /* stop when blocks reaches this (0: no budget) */
        int64_t deadline_ns;         /* CLOCK_MONOTONIC; 0: none */
        int64_t slice_ns;            /* stop every slice_ns of wall time; 0: never */
        int64_t slice_end;
        /* the exit */
        int reason;
        uint32_t trapnum, errcode, cr2, is_int;
        int mem_type;
        uint64_t mem_addr;
        int mem_size_access;
        /* statistics */
        uint64_t direct_counts[256];
        uint64_t stops[16];
        uint64_t intr_hooks;
        uint64_t io_count;
        /* debugger (lguest.unicorn.gdbstub): the first block after a resume
         * at skip_addr continues a block already counted (the debugger
         * stopped the guest inside it), so it is neither counted nor checked */
        int skip_armed;
        uint32_t skip_addr;
        /* timeline (lguest.host.trace): direct traps, 4 words each (blocks,
         * CLOCK_MONOTONIC ns, eip, vector | cpl from << 8 | cpl to << 16);
         * NULL when off, so the one cost is a test per direct trap */
        uint64_t *trace;
        uint32_t trace_cap, trace_len;
        uint64_t trace_dropped;
    } uh_state;

    static inline int64_t uh_monotonic_ns(void) {
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    static inline uint32_t uh_ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline void uh_st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
    static inline uint64_t uh_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    static inline void uh_st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

    static inline void uh_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline void uh_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

    static inline int uh_has_err(uint32_t trap) {
        return trap == 8 || (trap >= 10 && trap <= 14) || trap == 17;
    }

    static void uh_stop(uh_state *st, int reason) {
        st->reason = reason;
        if (reason >= 0 && reason < 16) st->stops[reason]++;
        st->emu_stop(st->uc);
    }

    /* Load segment register `seg` of the saved context from the Switcher's
     * GDT, as the CPU's descriptor load would.  kind: 0 data, 1 code, 2 stack;
     * the code and stack segments must have DPL == RPL == cpl.  Returns 0, or
     * -1 if the selector is unusable. */
    static int uh_load_seg(uh_state *st, uint8_t *c, int seg, uint32_t sel, int kind, int cpl) {
        uint8_t *sc = c + st->off_segs + seg * st->seg_stride;
        uint32_t idx = (sel & 0xFFFF) >> 3, e1, e2, base, limit, dpl, rpl = sel & 3;
        if ((sel & 0xFFFC) == 0) {
            if (kind != 0) return -1;
            uh_st32(sc, sel & 0xFFFF); uh_st64(sc + 8, 0); uh_st32(sc + 16, 0); uh_st32(sc + 20, 0);
            return 0;
        }
        if ((sel & 4) || idx >= 32) return -1;   /* no LDT; 32 GDT entries */
        e1 = st->gdt[2 * idx]; e2 = st->gdt[2 * idx + 1];
        dpl = (e2 >> 13) & 3;
        if (!(e2 & 0x8000) || !(e2 & 0x1000)) return -1;   /* present, code/data */
        if (kind == 1) {
            if (!(e2 & 0x800) || (e2 & 0x400) || dpl != (uint32_t)cpl || rpl != (uint32_t)cpl) return -1;
        } else if (kind == 2) {
            if ((e2 & 0x800) || !(e2 & 0x200) || dpl != (uint32_t)cpl || rpl != (uint32_t)cpl) return -1;
        } else {
            if ((e2 & 0xA00) == 0x800) return -1;   /* execute-only code */
            if (!((e2 & 0x800) && (e2 & 0x400)) && (dpl < (uint32_t)cpl || dpl < rpl)) return -1;
        }
        base = (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000u);
        limit = (e1 & 0xFFFF) | (e2 & 0x000F0000u);
        if (e2 & 0x00800000u) limit = (limit << 12) | 0xFFF;
        uh_st32(sc, sel & 0xFFFF); uh_st64(sc + 8, base); uh_st32(sc + 16, limit); uh_st32(sc + 20, e2);
        return 0;
    }

    /* hflags after the CS/SS caches changed (cpu_x86_load_seg_cache, 32-bit PE). */
    static void uh_fix_hflags(uh_state *st, uint8_t *c) {
        uint32_t hf = uh_ld32(c + st->off_hflags);
        uint32_t csf = uh_ld32(c + st->off_segs + S_CS * st->seg_stride + 20);
        uint32_t ssf = uh_ld32(c + st->off_segs + S_SS * st->seg_stride + 20);
        uint64_t bases = uh_ld64(c + st->off_segs + S_DS * st->seg_stride + 8)
                       | uh_ld64(c + st->off_segs + S_ES * st->seg_stride + 8)
                       | uh_ld64(c + st->off_segs + S_SS * st->seg_stride + 8);
        hf &= ~(UH_HF_CPL_MASK | UH_HF_CS32 | UH_HF_SS32 | UH_HF_ADDSEG | UH_HF_INHIBIT_IRQ);
        hf |= (ssf >> 13) & 3;
        if (csf & (1u << 22)) hf |= UH_HF_CS32;
        if (ssf & (1u << 22)) hf |= UH_HF_SS32;
        if (!(hf & UH_HF_CS32) || bases) hf |= UH_HF_ADDSEG;
        uh_st32(c + st->off_hflags, hf);
    }

    /* Deliver trap `num` through host IDT entry (a, b) to the guest, in C.
     * 0: done, the context holds the handler's state; else the UH_* reason. */
    static int uh_deliver(uh_state *st, uint8_t *c, uint32_t num, uint32_t a, uint32_t b, int has_err, uint32_t err, int cpl) {
        uh_native_api *api = st->api;
        uint32_t *r = api->regs;
        uint32_t eflags = 0, old_ss, new_cs, new_ss;
        int new_cpl;
        st->reg_read(st->uc, st->reg_ids[R_EFLAGS], &eflags);   /* computed flags */
        r[R_EIP] = (uint32_t)uh_ld64(c + st->off_eip);
        r[R_ESP] = (uint32_t)uh_ld64(c + st->off_regs + 4 * 8);
        r[R_CS] = uh_ld32(c + st->off_segs + S_CS * st->seg_stride);
        old_ss = r[R_SS] = uh_ld32(c + st->off_segs + S_SS * st->seg_stride);
        r[R_EFLAGS] = eflags;
        r[R_ERRCODE] = err;
        api->set_guest_interrupt(api->cpu, a, b, has_err);
        if (*api->dead_code) return UH_DEAD;
        new_cs = r[R_CS]; new_ss = r[R_SS];
        new_cpl = new_cs & 3;
        if (uh_load_seg(st, c, S_CS, new_cs, 1, new_cpl) != 0) { st->errcode = new_cs & 0xFFFC; return UH_BADSEG; }
        if (new_ss != old_ss || new_cpl != cpl) {
            if (uh_load_seg(st, c, S_SS, new_ss, 2, new_cpl) != 0) { st->errcode = new_ss & 0xFFFC; return UH_BADSEG; }
        }
        uh_fix_hflags(st, c);
        uh_st64(c + st->off_eip, r[R_EIP]);
        uh_st64(c + st->off_regs + 4 * 8, r[R_ESP]);
        /* The CPU clears TF, NT, RF (and VM) when it takes an interrupt. */
        uh_st64(c + st->off_eflags, uh_ld64(c + st->off_eflags) & ~(uint64_t)(UH_EFLAGS_TF | UH_EFLAGS_NT | UH_EFLAGS_RF | UH_EFLAGS_VM));
        return 0;
    }

    static void uh_on_intr(uh_engine *uc, uint32_t intno, void *user) {
        uh_state *st = (uh_state *)user;
        /* Vectors 32..255 only come from int N: no error code, no exception
         * in flight, so the registers and segments are all we need (a
         * 5.5 KiB context copy each way otherwise). */
        uint8_t *c = intno >= 32 && st->ctx_small ? st->ctx_small : st->ctx;
        uint32_t a = 0, b = 0, err;
        int cpl, is_int, direct, rc;
        st->intr_hooks++;
        st->ctx_save(uc, c);
        cpl = uh_ld32(c + st->off_hflags) & 3;
        is_int = intno >= 32 ? 1 : (int)uh_ld32(c + st->off_isint) != 0;
        err = (!is_int && uh_has_err(intno)) ? uh_ld32(c + st->off_err) : 0;
        /* Unicorn never clears the exception in flight: without this a second
         * #GP or #PF would be reported as a double fault. */
        if (c == st->ctx) uh_st32(c + st->off_oldexc, 0xFFFFFFFFu);
        st->trapnum = intno; st->errcode = err; st->is_int = is_int;
        if (intno == 14) {   /* read it now: emu_start's exit path may touch CR2 */
            uint64_t cr2 = 0; st->reg_read(uc, st->reg_cr2, &cr2); st->cr2 = (uint32_t)cr2;
        }
        if (cpl == 0 || intno > 255) {   /* no host code runs in the emulator: CPL 0 is the guest's */
            st->ctx_restore(uc, c);
            uh_stop(st, cpl == 0 ? UH_RING0 : UH_SWITCHER);
            return;
        }
        a = st->idt[2 * intno]; b = st->idt[2 * intno + 1];
        if (is_int && (int)((b >> 13) & 3) < cpl) {
            /* int N at a gate the caller may not use: #GP(N*8+2) at the int. */
            st->ctx_restore(uc, c);
            uh_stop(st, UH_SOFT_GP);
            return;
        }
        direct = (b & 0x8000) && ((b >> 8) & 0xF) == 0xF && (a >> 16) == 0x61;
        if (!direct) {
            st->ctx_restore(uc, c);
            uh_stop(st, UH_TRAP);
            return;
        }
        if (!st->native_direct || st->api == NULL) {
            st->ctx_restore(uc, c);
            uh_stop(st, UH_DIRECT);
            return;
        }
        uint32_t eip0 = st->trace ? (uint32_t)uh_ld64(c + st->off_eip) : 0;   /* for the timeline */
        rc = uh_deliver(st, c, intno, a, b, !is_int && uh_has_err(intno), err, cpl);
        st->ctx_restore(uc, c);   /* the handler's state, or the trap's untouched */
        if (rc != 0) {
            uh_stop(st, rc);
            return;
        }
        st->direct_counts[intno]++;
        /* -- timeline: one test when off -- */
        if (st->trace) {
            if (st->trace_len < st->trace_cap) {
                uint64_t *e = st->trace + 4 * (size_t)st->trace_len++;
                e[0] = st->blocks; e[1] = (uint64_t)uh_monotonic_ns(); e[2] = eip0;
                e[3] = intno | ((uint64_t)cpl << 8) | ((uint64_t)(st->api->regs[R_CS] & 3) << 16);
            } else {
                st->trace_dropped++;
            }
        }
        /* -- end timeline -- */
    }

    static int uh_on_invalid(uh_engine *uc, void *user) {
        uh_state *st = (uh_state *)user;
        uint8_t *c = st->ctx;
        st->ctx_save(uc, c);
        uh_st32(c + st->off_oldexc, 0xFFFFFFFFu);
        st->ctx_restore(uc, c);
        st->trapnum = 6; st->errcode = 0; st->is_int = 0;
        uh_stop(st, UH_INVALID);
        return 1;   /* "handled": emu_start returns UC_ERR_OK at the stop */
    }

    static int uh_on_mem_invalid(uh_engine *uc, int type, uint64_t address, int size, int64_t value, void *user) {
        uh_state *st = (uh_state *)user;
        st->mem_type = type; st->mem_addr = address; st->mem_size_access = size;
        uh_stop(st, UH_MEM);
        return 0;
    }

    /* in/out.  On lguest they #GP (the guest runs with IOPL 0) and the host
     * emulates them for the guest kernel: reads see all ones, writes vanish
     * (emulate_insn).  Unicorn performs no I/O permission check and cannot
     * fault from these hooks, so the hooks give that result directly --
     * for user mode too, where real hardware would deliver #GP. */
    static uint32_t uh_on_in(uh_engine *uc, uint32_t port, int size, void *user) {
        uh_state *st = (uh_state *)user;
        uint32_t eax = 0;
        st->io_count++;
        st->reg_read(uc, st->reg_ids[R_EAX], &eax);
        /* emulate_insn: "in" of a byte ORs 16 ones into eax (sic), wider ones set it all */
        eax = size == 1 ? (eax | 0xFFFFu) : 0xFFFFFFFFu;
        st->reg_write(uc, st->reg_ids[R_EAX], &eax);
        return size == 1 ? 0xFFu : size == 2 ? 0xFFFFu : 0xFFFFFFFFu;
    }
    static void uh_on_out(uh_engine *uc, uint32_t port, int size, uint32_t value, void *user) {
        ((uh_state *)user)->io_count++;
    }

    /* Would lguest's maybe_do_interrupt deliver something at `eip` now? */
    static inline int uh_irq_ready(uh_state *st, uint32_t eip) {
        uint32_t pend = __atomic_load_n(st->pending, __ATOMIC_SEQ_CST), blocked, enabled, irq;
        if (!pend) return 0;
        if (st->api == NULL) return 1;           /* the Python core: any attention */
        if (!st->has_ld) return 0;
        blocked = uh_ld32(st->mem + st->ld + 4);
        enabled = uh_ld32(st->mem + st->ld);
        pend &= ~blocked;
        if (!pend || !(enabled & UH_EFLAGS_IF)) return 0;
        if (eip >= st->noirq_start && eip < st->noirq_end) return 0;
        irq = (uint32_t)__builtin_ctz(pend);
        return (st->guest_idt[2 * (32 + irq) + 1] & 0x8000) != 0;
    }

    /* Every block the emulator runs is the guest's (the entry runs no host
     * code, and no host page is executable), so every block counts toward
     * the budget and the deadline and sees a break-out.  `address` is the
     * guest's eip, not a linear address (a guest code segment may have a
     * base), so it says nothing about the host range.  Guest code at CPL 0
     * cannot happen (the entry refuses RPL-0 code, load_gdt lets no gate or
     * TSS of the guest's into the CPU's GDT, and the CPU's own iret and
     * far-transfer checks keep CPL >= 1); it is checked anyway as a
     * backstop, at every stop (uh_run, uh_on_intr) and every 1024th block:
     * a reg_read on every block cost 40% of a tight loop's block rate. */
    static void uh_on_block(uh_engine *uc, uint64_t address, uint32_t size, void *user) {
        uh_state *st = (uh_state *)user;
        uint32_t cs = 0;
        /* Bound the next translation block, before anything else.
         *
         * Unicorn 2.1.4's x86 translator leaks TCG temporaries: some
         * instructions (x87 register forms, fldz, aam, palignr...) allocate
         * one or two per instruction and never free them, and the pool
         * (TCGContext.temps[512]) is bounds-checked only in debug builds.
         * A block of ~230 such instructions -- guest code, 500 bytes --
         * writes past the pool and crashes the host.  A block stops at 512
         * instructions or a page, so the pool is the only bound there is.
         *
         * cpu->cflags_next_tb is the translator's "use exactly these flags
         * for the next block" request; its low bits cap the block's
         * instructions.  The main loop consumes it at each block lookup, and
         * every block starts with this hook, so storing it here (and in
         * uh_run before each entry) covers every block the guest makes.  A
         * block then holds at most tb_max_insns (128) instructions: 51 temps
         * at the start plus 2 per instruction (the worst of 18,000 encodings
         * measured, fuzz/tcg_temps.py) is 307 of 512.  The cost: indirect
         * jumps no longer chain (the chaining lookup uses flags 0), they
         * return to the main loop, which finds the block in its cache.
         *
         * One path bypasses the request: when the code buffer is full the
         * translator flushes it and restarts the main loop, and the first
         * block after that is made with flags 0.  So the buffer must never
         * fill: at most one block is translated between two runs of this
         * hook, far less than tb_guard bytes, and once fewer than tb_guard
         * bytes remain the guest stops here (before the block runs) and
         * uh_run flushes and re-enters it. */
        *st->tb_cflags = st->tb_max_insns;
        if (*st->code_gen_ptr + st->tb_guard > *st->code_gen_highwater) { uh_stop(st, UH_FLUSH); return; }
        /* -- debugger: see skip_armed (one test of a field that is 0 without a debugger) -- */
        if (st->skip_armed) {
            st->skip_armed = 0;
            if ((uint32_t)address == st->skip_addr) return;
        }
        /* -- end debugger -- */
        if (st->budget_end && st->blocks >= st->budget_end) { uh_stop(st, UH_TIMER); return; }
        if (__atomic_load_n(&st->stop_flag, __ATOMIC_SEQ_CST)) {
            __atomic_store_n(&st->stop_flag, 0, __ATOMIC_SEQ_CST);
            uh_stop(st, UH_BREAK); return;
        }
        if (uh_irq_ready(st, (uint32_t)address)) { uh_stop(st, UH_IRQ); return; }
        /* Sampled: a clock read on every block costs ~10% of a tight loop,
         * a reg_read ~40%.  The clock is read every 64th block: a block is
         * translated the first time it runs, which can take ~1 ms for a
         * page of SSE code (more under load), so 64 fresh blocks stay well
         * inside run(timeout)'s 0.5 s grace where 1024 did not (~0.3-0.95 s
         * late).  The CPL backstop stays at every 1024th. */
        if ((st->blocks & 63) == 0) {
            if ((st->blocks & 1023) == 0) {
                st->reg_read(uc, st->reg_ids[R_CS], &cs);
                if ((cs & 3) == 0) { uh_stop(st, UH_RING0); return; }
            }
            if (st->deadline_ns || st->slice_ns) {
                int64_t now = uh_monotonic_ns();
                if ((st->deadline_ns && now >= st->deadline_ns) || (st->slice_ns && now >= st->slice_end)) {
                    uh_stop(st, UH_DEADLINE); return;
                }
            }
        }
        st->blocks++;
    }

    /* One segment register of the entry, checked as the Switcher's
     * `pop %seg` (kind 0, at CPL 0) or its `iretd` (kind 1: CS, kind 2: SS
     * at `cpl`) would check it, in the same order of tests as Unicorn's
     * helpers (QEMU's helper_load_seg / helper_ret_protected), so a bad
     * selector gives the same trap and error code it gave on the real
     * instructions.  0: loaded into the saved context; else the trap number
     * (13 #GP, 11 #NP) with st->errcode set. */
    static int uh_entry_seg(uh_state *st, uint8_t *c, int seg, uint32_t sel, int kind, int cpl) {
        uint8_t *sc = c + st->off_segs + seg * st->seg_stride;
        uint32_t idx = (sel & 0xFFFF) >> 3, e1, e2, base, limit, dpl, rpl = sel & 3;
        st->errcode = sel & 0xFFFC;
        if ((sel & 0xFFFC) == 0) {
            if (kind != 0) { st->errcode = 0; return 13; }
            uh_st32(sc, sel & 0xFFFF); uh_st64(sc + 8, 0); uh_st32(sc + 16, 0); uh_st32(sc + 20, 0);
            return 0;
        }
        if ((sel & 4) || idx >= 32) return 13;     /* no LDT; 32 GDT entries */
        e1 = st->gdt[2 * idx]; e2 = st->gdt[2 * idx + 1];
        dpl = (e2 >> 13) & 3;
        if (!(e2 & 0x1000)) return 13;             /* a system descriptor */
        if (kind == 1) {
            if (!(e2 & 0x800)) return 13;          /* not code */
            if (rpl < (uint32_t)cpl) return 13;
            if (e2 & 0x400) { if (dpl > rpl) return 13; }
            else if (dpl != rpl) return 13;
        } else if (kind == 2) {
            if (rpl != (uint32_t)cpl || (e2 & 0x800) || !(e2 & 0x200) || dpl != rpl) return 13;
        } else {
            if ((e2 & 0xA00) == 0x800) return 13;   /* execute-only code */
            if (!((e2 & 0x800) && (e2 & 0x400)) && (dpl < (uint32_t)cpl || dpl < rpl)) return 13;
        }
        if (!(e2 & 0x8000)) return 11;             /* not present (Unicorn: #NP for SS too) */
        base = (e1 >> 16) | ((e2 & 0xFF) << 16) | (e2 & 0xFF000000u);
        limit = (e1 & 0xFFFF) | (e2 & 0x000F0000u);
        if (e2 & 0x00800000u) limit = (limit << 12) | 0xFFF;
        uh_st32(sc, sel & 0xFFFF); uh_st64(sc + 8, base); uh_st32(sc + 16, limit); uh_st32(sc + 20, e2);
        st->errcode = 0;
        return 0;
    }

    /* iretd to an outer level nulls the data segments the new CPL may not use. */
    static void uh_validate_seg(uh_state *st, uint8_t *c, int seg, int cpl) {
        uint8_t *sc = c + st->off_segs + seg * st->seg_stride;
        uint32_t e2 = uh_ld32(sc + 20), dpl = (e2 >> 13) & 3;
        if ((seg == S_FS || seg == S_GS) && (uh_ld32(sc) & 0xFFFC) == 0) return;
        if ((!(e2 & 0x800) || !(e2 & 0x400)) && dpl < (uint32_t)cpl) {
            uh_st32(sc, 0); uh_st64(sc + 8, 0); uh_st32(sc + 16, 0); uh_st32(sc + 20, 0);
        }
    }

    /* Enter the guest at st->regs and run it until a hook stops it.
     * Returns Unicorn's uc_err.
     *
     * The entry is a saved-context patch, not host code: the segment checks
     * lguest's Switcher left to the CPU (`pop %gs; pop %fs; pop %es;
     * pop %ds; iretd` from ring 0) are made here, in that order, against the
     * GDT the CPU uses, and the result is written into the CPU state.  So no
     * host instruction ever runs inside the emulator and no host byte the
     * CPU might execute or the guest might read holds a guest value; the
     * only host page the emulated CPU can reach is the GDT (read-only).
     * A selector the CPU would have refused stops with UH_SWITCHER and the
     * trap it would have raised; a code segment of RPL 0 (guest code at
     * CPL 0) is refused the same way (#GP). */
    static int uh_run(uh_state *st) {
        uint8_t *c = st->ctx;
        uint32_t *r = st->regs;
        uint32_t v, cs, ss;
        int i, err, cpl, trap;
        static const int data_order[4] = {S_GS, S_FS, S_ES, S_DS};
        static const int data_reg[4] = {R_GS, R_FS, R_ES, R_DS};
        st->reason = UH_NONE;
        st->trapnum = 256; st->errcode = 0; st->is_int = 0;
        if (__atomic_load_n(&st->stop_flag, __ATOMIC_SEQ_CST)) {
            __atomic_store_n(&st->stop_flag, 0, __ATOMIC_SEQ_CST);
            st->reason = UH_BREAK; st->stops[UH_BREAK]++;
            return 0;
        }
        if (st->slice_ns) st->slice_end = uh_monotonic_ns() + st->slice_ns;
        st->ctx_save(st->uc, c);
        /* 1. The data segments, as the pops at CPL 0 load them. */
        for (i = 0; i < 4; i++) {
            trap = uh_entry_seg(st, c, data_order[i], r[data_reg[i]] & 0xFFFF, 0, 0);
            if (trap) goto refused;
        }
        /* 2. CS then SS, as iretd checks them; never CPL 0. */
        cs = r[R_CS] & 0xFFFF; ss = r[R_SS] & 0xFFFF;
        if ((cs & 3) == 0 && (cs & 0xFFFC) != 0) { trap = 13; st->errcode = cs & 0xFFFC; goto refused; }
        trap = uh_entry_seg(st, c, S_CS, cs, 1, 0);
        if (trap) goto refused;
        cpl = (int)(cs & 3);
        trap = uh_entry_seg(st, c, S_SS, ss, 2, cpl);
        if (trap) goto refused;
        for (i = 0; i < 4; i++) uh_validate_seg(st, c, data_order[i], cpl);
        uh_fix_hflags(st, c);
        uh_st32(c + st->off_oldexc, 0xFFFFFFFFu);
        uh_st64(c + st->off_eip, r[R_EIP]);
        st->ctx_restore(st->uc, c);
        for (i = R_EAX; i <= R_EBP; i++) st->reg_write(st->uc, st->reg_ids[i], &r[i]);
        st->reg_write(st->uc, st->reg_ids[R_ESP], &r[R_ESP]);
        /* what iretd at CPL 0 loads: the guest's flags, IF on, IOPL 0, no NT/VM */
        v = (r[R_EFLAGS] & UH_EFLAGS_KEEP) | UH_EFLAGS_IF | 2u;
        st->reg_write(st->uc, st->reg_ids[R_EFLAGS], &v);
        /* 3. Run, flushing the translation cache when it nears full (see
         *    uh_on_block); the guest stopped at a block start and resumes
         *    there with its state untouched. */
        v = r[R_EIP];
        if (*st->code_gen_ptr + st->tb_guard > *st->code_gen_highwater) {
            st->ctl(st->uc, UH_CTL_TB_FLUSH); st->stops[UH_FLUSH]++;
        }
        for (;;) {
            *st->tb_cflags = st->tb_max_insns;
            err = st->emu_start(st->uc, v, st->until_va, 0, 0);
            if (err || st->reason != UH_FLUSH) break;
            st->ctl(st->uc, UH_CTL_TB_FLUSH);       /* counted by uh_stop */
            st->reason = UH_NONE;
            st->reg_read(st->uc, st->reg_ids[R_EIP], &v);
        }
        /* 4. The guest's state at the stop; a stop at CPL 0 (impossible, see
         *    uh_on_block) is reported as such, whatever stopped it. */
        for (i = 0; i < R_NUM; i++) {
            if (st->reg_ids[i] >= 0) {
                v = 0; st->reg_read(st->uc, st->reg_ids[i], &v);
                r[i] = (i >= R_GS && i <= R_ES) || i == R_CS || i == R_SS ? (v & 0xFFFF) : v;
            }
        }
        /* Virtual-8086 mode: Unicorn's iret takes EFLAGS.VM from the popped
         * image at any CPL (QEMU's helper_ret_protected goes to
         * return_to_vm86), where the CPU ignores it unless CPL is 0.  The
         * guest then runs real-mode segments at CPL 3: no privilege, but a
         * state lguest never supports (and whose cs has no RPL, so it could
         * pass for CPL 0 below).  Whatever stopped it, report that. */
        if (r[R_EFLAGS] & UH_EFLAGS_VM) {
            if (st->reason != UH_VM86) { st->reason = UH_VM86; st->stops[UH_VM86]++; }
        } else if ((r[R_CS] & 3) == 0 && st->reason != UH_RING0) {
            st->reason = UH_RING0; st->stops[UH_RING0]++;
        }
        r[R_TRAPNUM] = st->trapnum;
        r[R_ERRCODE] = st->errcode;
        return err;
    refused:
        /* The guest never ran: its registers stay as they were.  The CPU
         * state is untouched too (c is not restored). */
        st->trapnum = (uint32_t)trap;
        st->reason = UH_SWITCHER; st->stops[UH_SWITCHER]++;
        r[R_TRAPNUM] = st->trapnum;
        r[R_ERRCODE] = st->errcode;
        return 0;
    }
    """
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
    ctypedef struct uh_native_api:
        uint32_t version
        uint32_t size
        void *cpu
        uint32_t *regs
        uint32_t *irqs_pending
        int *dead_code
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
        int reg_ids[18]
        int reg_cr2
        int off_regs, off_eip, off_eflags, off_hflags, off_segs, seg_stride
        int off_err, off_isint, off_oldexc
        uint8_t *switcher
        uint32_t switcher_va, switcher_size
        uint32_t *gdt
        uint32_t until_va
        uint32_t host_cs, host_ss
        uint32_t *idt
        uint32_t *guest_idt
        uh_native_api *api
        uint32_t *regs
        uint32_t *pending
        uint32_t attention
        int native_direct
        uint8_t *mem
        uint64_t mem_size
        int has_ld
        uint32_t ld, noirq_start, noirq_end
        uint32_t *tb_cflags
        uint8_t **code_gen_ptr
        uint8_t **code_gen_highwater
        uint32_t tb_max_insns
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
        uint64_t stops[16]
        uint64_t intr_hooks
        uint64_t io_count
        int skip_armed
        uint32_t skip_addr
        uint64_t *trace
        uint32_t trace_cap, trace_len
        uint64_t trace_dropped
    int uh_run(uh_state *st) noexcept nogil
    void uh_store_int(int *p, int v) noexcept nogil
    void uh_store_u32(uint32_t *p, uint32_t v) noexcept nogil
    int64_t uh_monotonic_ns() noexcept nogil
    void *uh_on_intr_ptr "((void *)uh_on_intr)"
    void *uh_on_invalid_ptr "((void *)uh_on_invalid)"
    void *uh_on_mem_invalid_ptr "((void *)uh_on_mem_invalid)"
    void *uh_on_block_ptr "((void *)uh_on_block)"
    void *uh_on_in_ptr "((void *)uh_on_in)"
    void *uh_on_out_ptr "((void *)uh_on_out)"
    enum:
        UH_NONE, UH_TRAP, UH_SOFT_GP, UH_DIRECT, UH_SWITCHER, UH_BADSEG, UH_INVALID, UH_TIMER
        UH_IRQ, UH_BREAK, UH_DEADLINE, UH_MEM, UH_DEAD, UH_RING0, UH_VM86, UH_FLUSH

REASONS = {
    UH_NONE: "none", UH_TRAP: "trap", UH_SOFT_GP: "soft_gp", UH_DIRECT: "direct", UH_SWITCHER: "switcher",
    UH_BADSEG: "badseg", UH_INVALID: "invalid", UH_TIMER: "timer", UH_IRQ: "irq", UH_BREAK: "break",
    UH_DEADLINE: "deadline", UH_MEM: "mem", UH_DEAD: "dead", UH_RING0: "ring0", UH_VM86: "vm86",
    UH_FLUSH: "flush",
}
globals().update({"REASON_" + name.upper(): code for code, name in REASONS.items()})

# UC_HOOK_* numbers (unicorn.h, stable across Unicorn 2)
cdef enum:
    UC_HOOK_INTR = 1 << 0
    UC_HOOK_INSN = 1 << 1
    UC_HOOK_BLOCK = 1 << 3
    UC_HOOK_MEM_INVALID = 1008   # unmapped + protection, read/write/fetch
    UC_HOOK_INSN_INVALID = 1 << 14


cdef inline size_t _ptr(object v):
    return <size_t>int(v)


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
    cdef int insn_in, insn_out
    cdef object _free
    cdef int state         # 0: __init__ not run, 1: ready, 2: closed
    cdef int busy          # a run() is in progress (set and cleared with the GIL held)
    cdef object _trace     # the timeline's numpy buffer, or None

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
        self._trace = None

    def __init__(self, *, uc_handle, funcs, reg_ids, reg_cr2, layout, switcher, switcher_va,
                 switcher_size, gdt_offset, until_va, host_cs, host_ss,
                 ctx_alloc, ctx_small_alloc, uc_free, insn_in, insn_out, internals, uc_owner=None):
        """``funcs``: addresses of uc_hook_add, uc_hook_del, uc_emu_start,
        uc_emu_stop, uc_reg_read, uc_reg_write, uc_context_save,
        uc_context_restore; ``layout``: the measured uc_context offsets;
        ``internals``: addresses inside the engine (checked by
        lguest.unicorn): ``tb_cflags`` (the CPU's cflags_next_tb),
        ``code_gen_ptr`` and ``code_gen_highwater`` (the translator's), with
        ``tb_max_insns`` and ``tb_guard`` (see uh_on_block);
        ``switcher``: the writable buffer (an mmap) holding the host
        structures, pinned (so it cannot be unmapped) until close();
        ``uc_owner``: the object owning the engine, kept alive likewise."""
        cdef int i
        cdef unsigned char[::1] sw
        if self.state != 0:
            raise RuntimeError("NativeHooks is already initialised")
        if not uc_handle or not ctx_alloc:
            raise ValueError("NativeHooks needs an engine and a context")
        if len(reg_ids) != 18:
            raise ValueError("reg_ids needs 18 entries")
        sw = switcher   # a writable, contiguous buffer (TypeError/ValueError otherwise)
        if switcher_size <= 0 or sw.shape[0] < switcher_size or gdt_offset < 0 or gdt_offset + 32 * 8 > switcher_size:
            raise ValueError("the Switcher buffer does not hold the layout")
        for name in ("uc_hook_add", "uc_hook_del", "uc_emu_start", "uc_emu_stop", "uc_reg_read", "uc_reg_write",
                     "uc_context_save", "uc_context_restore", "uc_ctl"):
            if not funcs[name]:
                raise ValueError(f"no address for {name}")
        for name in ("tb_cflags", "code_gen_ptr", "code_gen_highwater"):
            if not internals[name]:
                raise ValueError(f"no address for {name}")
        if not 1 <= internals["tb_max_insns"] <= 512 or internals["tb_guard"] <= 0:
            raise ValueError("tb_max_insns must be 1..512 and tb_guard positive")
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
        self.st.tb_guard = internals["tb_guard"]
        for i in range(18):
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

    def close(self):
        """Remove the hooks, free the contexts and drop every pointer (call
        before closing Unicorn).  Idempotent; RuntimeError during a run."""
        if self.state == 2:
            return
        if self.busy:
            raise RuntimeError("NativeHooks is running a guest")
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
        """Point the hooks at a cpu: its registers (``cpu.regs.array``), the
        host IDT and the guest's (``cpu.idt``), its live GuestMemory (held
        while bound, so it cannot be closed under the hooks) and (compiled
        core) the core's native API capsule for that cpu."""
        cdef uint32_t[::1] rv
        cdef uint32_t[:, ::1] hv
        cdef uint32_t[:, ::1] gv
        cdef uh_native_api *api = NULL
        from .memory import GuestMemory
        self._check_idle()
        arrays = {"regs": (regs_array, (18,)), "host IDT": (host_idt, (256, 2)), "guest IDT": (guest_idt, (256, 2))}
        for name, (arr, shape) in arrays.items():
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint32:
                raise TypeError(f"the {name} must be a numpy uint32 array")
            if arr.shape != shape or not arr.flags.c_contiguous or not arr.flags.writeable:
                raise ValueError(f"the {name} must be a writable C-contiguous uint32{list(shape)}")
        if regs_array.ctypes.data != cpu.regs.array.ctypes.data or guest_idt.ctypes.data != cpu.idt.ctypes.data:
            raise ValueError("regs_array and guest_idt must be the cpu's own")
        if not isinstance(memory, GuestMemory) or memory.closed:
            raise TypeError("memory must be a live GuestMemory")
        if api_capsule is not None:
            if not PyCapsule_IsValid(api_capsule, b"lguest._core.lg_native_api"):
                raise TypeError("not a lguest._core native API capsule")
            api = <uh_native_api *>PyCapsule_GetPointer(api_capsule, b"lguest._core.lg_native_api")
            if api.version != 1 or <size_t>api.regs != <size_t>regs_array.ctypes.data:
                raise ValueError("lguest._core native API mismatch (not this cpu's)")
        hold = memory.hold()
        hold.__enter__()
        self._unbind()
        rv = regs_array
        hv = host_idt
        gv = guest_idt
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
        return err

    def resume(self, uint64_t budget_end, int64_t deadline_ns, int64_t skip_addr):
        """The debugger's run (lguest.unicorn.gdbstub): like run(), but the
        block budget is absolute (stop when ``blocks`` reaches ``budget_end``;
        0: none), so a run the debugger split keeps its one budget; and with
        ``skip_addr`` >= 0 the first block, if it starts there, is the rest
        of a block the guest was stopped inside (already counted): it is
        neither counted nor checked, so the virtual clock and the block
        starts where irqs are taken are those of a run without stops."""
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
            with nogil:
                err = uh_run(&self.st)
        finally:
            self.busy = 0
            self.st.skip_armed = 0
        return err

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
            arr = np.zeros((int(capacity), 4), dtype=np.uint64)
            buf = arr
            self._trace = arr
            self.st.trace_cap = <uint32_t>capacity
            self.st.trace = &buf[0, 0]

    def trace_drain(self):
        """(events, dropped): a copy of the direct traps recorded since the
        last drain (an array of rows blocks, monotonic ns, eip, vector |
        cpl_from << 8 | cpl_to << 16) and how many did not fit; resets both."""
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

    def clear_stop(self):
        uh_store_int(&self.st.stop_flag, 0)

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

    def stop_counts(self):
        cdef int i
        return {REASONS[i]: self.st.stops[i] for i in range(len(REASONS)) if self.st.stops[i]}


def monotonic_ns():
    return uh_monotonic_ns()
