/* The native Unicorn hooks of lguest/unicorn/_uchook.pyx: the C half (see that
 * module's docstring for what each hook does and why).
 *
 * Facts shared with the core -- struct lguest_regs' word order, has_err,
 * "would maybe_do_interrupt deliver an irq now", the native API table --
 * come from lguest/abi.h; nothing here re-states them. */
#ifndef LGUEST_UCHOOK_H
#define LGUEST_UCHOOK_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "lguest/lguest.h"
#include "_lgutil.h"

typedef void uh_engine;
typedef size_t uh_hookh;
typedef int (*uh_hook_add_t)(uh_engine *, uh_hookh *, int, void *, void *, uint64_t, uint64_t, ...);
typedef int (*uh_hook_del_t)(uh_engine *, uh_hookh);
typedef int (*uh_emu_start_t)(uh_engine *, uint64_t, uint64_t, uint64_t, size_t);
typedef int (*uh_emu_stop_t)(uh_engine *);
typedef int (*uh_reg_read_t)(uh_engine *, int, void *);
typedef int (*uh_reg_write_t)(uh_engine *, int, const void *);
typedef int (*uh_context_io_t)(uh_engine *, void *);
typedef int (*uh_ctl_t)(uh_engine *, int, ...);
/* uc_ctl(UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0)): type 10, no arguments, write */
#define UH_CTL_TB_FLUSH ((10) | (0 << 26) | (1 << 30))
/* uc_ctl_request_cache: UC_CTL_TB_REQUEST_CACHE (8), 2 arguments, read-write */
#define UH_CTL_TB_REQUEST ((8u) | (2u << 26) | (3u << 30))
typedef struct { uint64_t pc; uint16_t icount; uint16_t size; } uh_tb_info;   /* Unicorn's uc_tb */

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
    UH_FLUSH = 15,    /* internal: the translation cache is nearly full (see uh_on_block) */
    UH_HCALL = 16     /* a hypercall done in the hook asks the run loop to look (uh_hcall) */
};
#define UH_NREASONS 17

#define UH_EFLAGS_TF 0x100u
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
    /* Read by uh_on_block on every guest block, so kept together in the
     * first two cache lines rather than spread over five (the hook is
     * ~15 % of a system-call-heavy run's samples; the gain measured ~2 %
     * of user time, inside the noise).  Their groups are named in (). */
    uint32_t *tb_cflags;         /* &cpu->cflags_next_tb */
    uint8_t **code_gen_ptr;      /* &tcg_ctx->code_gen_ptr */
    uint8_t *twin_seen;          /* (twins) */
    uint64_t *env_cs_base;       /* (the live CPU state) */
    uint64_t blocks;             /* guest blocks executed, ever */
    uint64_t budget_end;         /* stop when blocks reaches this (0: no budget) */
    uint32_t *pending;           /* the cpu's irqs_pending, or &attention */
    struct lguest_native_api *api;          /* NULL: direct traps go to Python */
    int64_t deadline_ns;         /* CLOCK_MONOTONIC; 0: none */
    int64_t slice_ns;            /* stop every slice_ns of wall time; 0: never */
    uint64_t fast_next;          /* (store fast path) the next clearing pass: when blocks reaches this */
    uint32_t tb_max_insns;       /* (the translator's bounds) */
    int stop_flag;               /* atomic: break-out */
    int fast_on;                 /* (store fast path) clear TLB_NOTDIRTY on pages without code */
    int skip_armed;              /* (debugger) */
    uint32_t skip_addr, skip_end;/* (debugger) */
    uint32_t block_pc, block_end;/* (debugger) */
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
    int reg_ids[LG_NUM_REGS];          /* Unicorn register ids in lguest_regs order (-1: none) */
    int reg_cr2;
    /* uc_context layout, measured by lguest.unicorn (offsets from the uc_context pointer) */
    int off_regs, off_eip, off_eflags, off_hflags, off_segs, seg_stride;
    int off_err, off_isint, off_oldexc;
    /* The same three fields in the live CPU state (engine_internals' env;
     * NULL: unknown).  With them a trap below 32 needs only the small
     * context: its error code and kind are read, and the exception in
     * flight cleared, in place (see uh_intr_record). */
    uint32_t *env_err, *env_isint, *env_oldexc;
    /* env_cs_base (at the top): the live code segment's base (env->segs[R_CS].base; NULL: unknown,
     * taken as 0).  The block hook's address is this base plus eip; lguest's
     * rules (the no-interrupt window, the debugger's resume point) speak of
     * eips, so uh_on_block takes the base back off. */
    /* the Switcher: host memory mapped at switcher_va */
    uint8_t *switcher;
    uint32_t switcher_va, switcher_size;
    uint32_t *gdt;               /* 32 x {a, b}, inside the Switcher */
    uint32_t until_va;          /* emu_start's "until": unmapped host address */
    uint32_t host_cs, host_ss;   /* ring-0 selectors of the Switcher */
    uint32_t *idt;               /* host IDT (256 x {a, b}) the guest runs with */
    uint32_t *guest_idt;         /* the guest's own IDT (for the irq check) */
    /* the core */
    uint32_t *regs;              /* cpu.regs.array */
    uint32_t attention;
    int native_direct;
    /* Reflected traps delivered in the hook (see uh_reflect): vectors 0..31
     * in reflect_mask; 0 disables it (the Python core, a trace, no stats). */
    uint32_t reflect_mask;
    /* Hypercalls done in the hook (see uh_hcall): numbers in hcall_mask;
     * hcall_cb runs those that need the host (the GIL taken) and returns
     * the new block budget (0: none) or -1 to stop. */
    uint32_t hcall_mask;
    int64_t (*hcall_cb)(void *self, uint32_t num, uint32_t arg1);
    void *hcall_self;
    /* SET_CLOCKEVENT on the guest's NativeClock (the wall clock) without
     * the GIL: lguest._clock's clockevent_nogil on the cpu's timer and the
     * clock's wheel; it returns 0 when the Python path must do it (the
     * first arm).  NULL: every SET_CLOCKEVENT goes through hcall_cb. */
    int (*clock_cb)(void *timer, void *wheel, uint32_t delta);
    void *clock_timer, *clock_wheel;
    /* SET_CLOCKEVENT on a plain VirtualClock without the GIL (see
     * uh_vclock_hcall): its time cell and its native slot (lguest.clock's
     * N_* words), the cpu's halted flag, ns per block; NULL slot: off.
     * vclock_last: the blocks at which the clock last advanced (the
     * backend's _last_blocks, kept here so both sides move it). */
    int64_t *vclock_cell, *vclock_slot;
    int *vclock_halted;
    int64_t vclock_npb;
    uint64_t vclock_last;
    /* guest memory and lguest_data, for "would maybe_do_interrupt deliver?" */
    uint8_t *mem;
    uint64_t mem_size;
    int has_ld;
    uint32_t ld, noirq_start, noirq_end;
    /* the translator's bounds (see uh_on_block): fields inside Unicorn */
    uint8_t **code_gen_highwater;/* &tcg_ctx->code_gen_highwater */
    uint64_t tb_guard;           /* flush when fewer bytes than this remain */
    /* twins (see uh_twin): on, the code_gen_ptr the hook last saw, counts */
    int twin_on;
    uint64_t twins, twin_skipped;
    /* run control */
    int64_t slice_end;
    /* the exit */
    int reason;
    uint32_t trapnum, errcode, cr2, is_int;
    int mem_type;
    uint64_t mem_addr;
    int mem_size_access;
    /* statistics */
    uint64_t direct_counts[256];
    uint64_t reflect_counts[32]; /* traps reflected by uh_reflectable's path, by vector */
    uint64_t reflect_total;      /* their sum: one read tells the backend whether to look */
    uint64_t hcall_counts[32];   /* hypercalls done in the hook (uh_hcall), by number */
    uint64_t hcall_total;
    uint64_t stops[UH_NREASONS];
    uint64_t intr_hooks;
    uint64_t io_count;
    /* debugger (lguest.unicorn.gdbstub): after a resume at skip_addr the
     * guest runs the rest of a block already counted (the debugger stopped
     * it inside), neither counted nor checked, one instruction per block up
     * to skip_end -- where the translator had cut the counted block -- so
     * the next block counted starts where it did without the stop (a rest
     * translated whole would run up to tb_max_insns past the cut).
     * block_pc/block_end: the extent of the last block counted.  (The
     * fields are at the top.) */
    /* timeline (lguest.host.trace): direct traps, 4 words each (blocks,
     * CLOCK_MONOTONIC ns, eip, vector | cpl from << 8 | cpl to << 16);
     * NULL when off, so the one cost is a test per direct trap */
    uint64_t *trace;
    uint32_t trace_cap, trace_len;
    uint64_t trace_dropped;
    /* The store fast path (see uh_fast_new_block): fields inside Unicorn,
     * located and checked by lguest.unicorn.engine.tlb_internals. */
    int fast_dead;               /* gave up for good (a check failed): never again */
    void *fast_cpu;              /* the engine's CPUState, for tlb_reset_dirty */
    void (*tlb_reset_dirty)(void *cpu, uintptr_t host, uintptr_t length);
    uint64_t *tlb_fast;          /* env->tlb.f[3]: {mask, table} per MMU index */
    uint8_t *code_pages;         /* one bit per guest page a block has run from */
    uint8_t *seen_ptr;           /* code_gen_ptr as the last block hook left it */
    uint64_t fast_passes, fast_cleared, fast_pages, fast_resets;
} uh_state;

static inline uint64_t uh_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void uh_st64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static inline void uh_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline void uh_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

static void uh_stop(uh_state *st, int reason) {
    st->reason = reason;
    if (reason >= 0 && reason < UH_NREASONS) st->stops[reason]++;
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
        lg_store32(sc, sel & 0xFFFF); uh_st64(sc + 8, 0); lg_store32(sc + 16, 0); lg_store32(sc + 20, 0);
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
    lg_store32(sc, sel & 0xFFFF); uh_st64(sc + 8, base); lg_store32(sc + 16, limit); lg_store32(sc + 20, e2);
    return 0;
}

/* hflags after the CS/SS caches changed (cpu_x86_load_seg_cache, 32-bit PE). */
static void uh_fix_hflags(uh_state *st, uint8_t *c) {
    uint32_t hf = lg_load32(c + st->off_hflags);
    uint32_t csf = lg_load32(c + st->off_segs + S_CS * st->seg_stride + 20);
    uint32_t ssf = lg_load32(c + st->off_segs + S_SS * st->seg_stride + 20);
    uint64_t bases = uh_ld64(c + st->off_segs + S_DS * st->seg_stride + 8)
                   | uh_ld64(c + st->off_segs + S_ES * st->seg_stride + 8)
                   | uh_ld64(c + st->off_segs + S_SS * st->seg_stride + 8);
    hf &= ~(UH_HF_CPL_MASK | UH_HF_CS32 | UH_HF_SS32 | UH_HF_ADDSEG | UH_HF_INHIBIT_IRQ);
    hf |= (ssf >> 13) & 3;
    if (csf & (1u << 22)) hf |= UH_HF_CS32;
    if (ssf & (1u << 22)) hf |= UH_HF_SS32;
    if (!(hf & UH_HF_CS32) || bases) hf |= UH_HF_ADDSEG;
    lg_store32(c + st->off_hflags, hf);
}

/* Deliver trap `num` through host IDT entry (a, b) to the guest, in C.
 * 0: done, the context holds the handler's state; else the UH_* reason. */
static int uh_deliver(uh_state *st, uint8_t *c, uint32_t num, uint32_t a, uint32_t b, int has_err, uint32_t err, int cpl) {
    struct lguest_native_api *api = st->api;
    uint32_t *r = api->regs;
    uint32_t eflags = 0, old_ss, new_cs, new_ss;
    int new_cpl;
    st->reg_read(st->uc, st->reg_ids[LG_R_EFLAGS], &eflags);   /* computed flags */
    r[LG_R_EIP] = (uint32_t)uh_ld64(c + st->off_eip);
    r[LG_R_ESP] = (uint32_t)uh_ld64(c + st->off_regs + 4 * 8);
    r[LG_R_CS] = lg_load32(c + st->off_segs + S_CS * st->seg_stride);
    old_ss = r[LG_R_SS] = lg_load32(c + st->off_segs + S_SS * st->seg_stride);
    r[LG_R_EFLAGS] = eflags;
    r[LG_R_ERRCODE] = err;
    api->set_guest_interrupt(api->cpu, a, b, has_err);
    if (*api->dead_code) return UH_DEAD;
    new_cs = r[LG_R_CS]; new_ss = r[LG_R_SS];
    new_cpl = new_cs & 3;
    if (uh_load_seg(st, c, S_CS, new_cs, 1, new_cpl) != 0) { st->errcode = new_cs & 0xFFFC; return UH_BADSEG; }
    if (new_ss != old_ss || new_cpl != cpl) {
        if (uh_load_seg(st, c, S_SS, new_ss, 2, new_cpl) != 0) { st->errcode = new_ss & 0xFFFC; return UH_BADSEG; }
    }
    uh_fix_hflags(st, c);
    uh_st64(c + st->off_eip, r[LG_R_EIP]);
    uh_st64(c + st->off_regs + 4 * 8, r[LG_R_ESP]);
    /* The CPU clears TF, NT, RF (and VM) when it takes an interrupt. */
    uh_st64(c + st->off_eflags, uh_ld64(c + st->off_eflags) & ~(uint64_t)(UH_EFLAGS_TF | UH_EFLAGS_NT | UH_EFLAGS_RF | UH_EFLAGS_VM));
    return 0;
}

/* Record trap `intno` from the saved context `c`: st->trapnum, errcode and
 * is_int (and cr2 for #PF).  Returns the CPL the trap came from. */
static int uh_intr_record(uh_state *st, uh_engine *uc, uint8_t *c, uint32_t intno) {
    int cpl = lg_load32(c + st->off_hflags) & 3;
    int is_int;
    uint32_t err;
    if (c == st->ctx) {
        is_int = intno >= 32 ? 1 : (int)lg_load32(c + st->off_isint) != 0;
        err = (!is_int && lg_has_err(intno)) ? lg_load32(c + st->off_err) : 0;
        /* Unicorn never clears the exception in flight: without this a second
         * #GP or #PF would be reported as a double fault. */
        lg_store32(c + st->off_oldexc, 0xFFFFFFFFu);
    } else if (intno < 32) {
        /* The small context (uh_on_intr): the same three fields, live.
         * Saving and restoring the whole 5.5 KiB context for them cost
         * about a third of a reflected trap. */
        is_int = *st->env_isint != 0;
        err = (!is_int && lg_has_err(intno)) ? *st->env_err : 0;
        *st->env_oldexc = 0xFFFFFFFFu;
    } else {
        is_int = 1; err = 0;   /* int N: no error code, no exception in flight */
    }
    st->trapnum = intno; st->errcode = err; st->is_int = is_int;
    if (intno == 14) {   /* read it now: emu_start's exit path may touch CR2 */
        uint64_t cr2 = 0; st->reg_read(uc, st->reg_cr2, &cr2); st->cr2 = (uint32_t)cr2;
    }
    return cpl;
}

/* Where the recorded trap goes, without side effects: 0 to deliver it
 * here (a direct trap), else the UH_* reason to stop the emulator with. */
static int uh_intr_route(const uh_state *st, uint32_t intno, int cpl) {
    uint32_t b;
    if (cpl == 0) return UH_RING0;   /* no host code runs in the emulator: CPL 0 is the guest's */
    if (intno > 255) return UH_SWITCHER;
    b = st->idt[2 * intno + 1];
    /* int N at a gate the caller may not use: #GP(N*8+2) at the int. */
    if (st->is_int && (int)((b >> 13) & 3) < cpl) return UH_SOFT_GP;
    if (!lg_host_gate_direct(st->idt[2 * intno], b)) return UH_TRAP;
    if (!st->native_direct || st->api == NULL) return UH_DIRECT;   /* Python delivers it */
    return 0;
}

/* Can code descriptor `sel` be loaded at CPL `cpl`?  uh_load_seg's kind-1
 * test without the load. */
static int uh_code_seg_usable(const uh_state *st, uint32_t sel, int cpl) {
    uint32_t idx = (sel & 0xFFFF) >> 3, e2;
    if ((sel & 0xFFFC) == 0 || (sel & 4) || idx >= 32 || (sel & 3) != (uint32_t)cpl) return 0;
    e2 = st->gdt[2 * idx + 1];
    return (e2 & 0x8000) && (e2 & 0x1000) && (e2 & 0x800) && !(e2 & 0x400) && ((e2 >> 13) & 3) == (uint32_t)cpl;
}

/* Would the run loop do nothing with this stop but reflect the trap
 * (handle_trap's last lines: count it, deliver_trap)?  Then uh_reflect
 * delivers it here through the same core call and the guest runs on.
 * Only when all of these hold, so the result is the Python path's to the
 * bit, kill messages included:
 *  - the vector is one handle_trap never keeps for the host: not #UD
 *    (vmcall patch), #NM (lazy FPU), #GP (in/out), #PF (paging), the
 *    hypercall trap, nor 32..255 (reflect_mask, set by the backend);
 *  - the guest has a present gate for it (else Python kills "unhandled
 *    trap", with its message);
 *  - it came from the guest kernel (CPL 1, ss RPL 1): set_guest_interrupt then keeps
 *    ss and sets cs to GUEST_CS, which must be loadable, so uh_deliver
 *    cannot fail on a segment (a ring-3 trap switches to ss1, which only
 *    the entry checks; it takes the Python path).
 * A kill by the frame push itself (a bad stack) is the core's, with the
 * core's message, and stops the emulator as UH_DEAD.  The run loop's
 * checks between two entries -- break-out, the deadline, a deliverable
 * interrupt -- are made by uh_on_block before the handler's first block. */
static inline int uh_reflectable(const uh_state *st, const uint8_t *c, uint32_t intno, int cpl) {
    return intno < 32 && ((st->reflect_mask >> intno) & 1) && st->api != NULL && cpl == 1
           && (lg_load32(c + st->off_segs + S_SS * st->seg_stride) & 3) == 1
           && lg_gate_present(st->guest_idt[2 * intno + 1]) && uh_code_seg_usable(st, LG_GUEST_CS, 1);
}

/* lguest_data's async hypercall ring: hcall_status[64] at this offset
 * (constants.LD_HCALL_STATUS), 0xFF marking a free slot. */
#define UH_LD_HCALL_STATUS 20
#define UH_HCALL_RING 64
#define UH_LHCALL_FLUSH_ASYNC 0
#define UH_LHCALL_SET_CLOCKEVENT 9
#define LG_TRAP_ENTRY_VEC 31      /* LGUEST_TRAP_ENTRY: int $0x1f */

/* Can the hook do this `int $0x1f` hypercall itself?  The run loop would
 * run the async ring, then the call, then look at notify, break-out, the
 * deadline and irqs before re-entering.  The hook does it when that is
 * provably the same: from the guest kernel, after LGUEST_INIT, with the
 * async ring empty (all 64 status bytes read in place, no copy -- a
 * queued call may be any hypercall, NOTIFY or page tables included, so
 * any queued call takes the run loop's path), and for a call number the
 * backend listed (hcall_mask: FLUSH_ASYNC, done by nothing at all, and
 * SET_CLOCKEVENT, done by hcall_cb under the GIL).  uh_on_block then
 * makes the loop's remaining checks before the guest's next block. */
static inline int uh_hcall_here(const uh_state *st, const uint8_t *c, int cpl, uint32_t *num) {
    const uint8_t *ring;
    uint64_t w;
    int i;
    if (!st->hcall_mask || cpl != 1 || !st->is_int || !st->has_ld) return 0;
    *num = (uint32_t)uh_ld64(c + st->off_regs + 0 * 8);   /* eax */
    if (*num >= 32 || !((st->hcall_mask >> *num) & 1)) return 0;
    if ((uint64_t)st->ld + UH_LD_HCALL_STATUS + UH_HCALL_RING > st->mem_size) return 0;
    ring = st->mem + st->ld + UH_LD_HCALL_STATUS;
    for (i = 0; i < UH_HCALL_RING; i += 8) {
        memcpy(&w, ring + i, 8);
        if (w != ~(uint64_t)0) return 0;
    }
    return 1;
}

/* lguest.clock's VirtualClock.native words */
enum { UH_VC_EXPIRY, UH_VC_SEQ, UH_VC_ARMED, UH_VC_STD, UH_VC_FIRED, UH_VC_NEXT_SEQ, UH_VC_OTHERS };

/* SET_CLOCKEVENT(delta) on the guest's VirtualClock, exactly as
 * UnicornBackend._hook_hcall does it through Python, when the cpu's clock
 * event is the only timer on the clock: 1 done (and the block budget set),
 * 0 nothing touched -- the Python path must do it.
 *
 * The Python path, step by step: (1) _advance_clock: if blocks moved since
 * vclock_last, advance the clock by (blocks - last) * npb, which fires the
 * cpu's event if it is due -- the clock reading its expiry, then irq 0
 * pending (cpu._clock_fired), fired + 1 -- and ends at the target; (2)
 * cpu.set_clockevent: 0 cancels, else arm at now + delta with the next
 * sequence number (check_expiry: <= INT64_MAX); (3) stop if the guest is
 * dead or halted (a notify, a changed table or a break-out cannot come
 * from this call: see the wall clock's branch in uh_hcall); (4) the budget,
 * ceil((expiry - now) / npb) blocks but at least 1, or none.
 * Everything that would raise there (an overflowing advance or expiry),
 * run Python code (another timer due, a callback that is not the cpu's
 * own) or stop (dead, halted -- then _clock_fired would also wake) is
 * decided before anything is written, and left to Python. */
static int uh_vclock_hcall(uh_state *st, uint32_t delta) {
    int64_t *slot = st->vclock_slot, *cell = st->vclock_cell;
    int64_t npb = st->vclock_npb, now, target, ns = 0, d;
    uint64_t db = st->blocks - st->vclock_last, budget = 0;
    int fire;
    if (slot == NULL || npb < 1 || slot[UH_VC_OTHERS] != 0) return 0;
    if (*st->api->dead_code != LG_KILL_ALIVE || __atomic_load_n(st->vclock_halted, __ATOMIC_SEQ_CST)) return 0;
    now = cell[0];
    if (db > (uint64_t)INT64_MAX / (uint64_t)npb) return 0;     /* to_range(ns) raises */
    ns = (int64_t)db * npb;
    if (__builtin_add_overflow(now, ns, &target)) return 0;      /* the cell cannot hold it */
    fire = db != 0 && slot[UH_VC_ARMED] && slot[UH_VC_EXPIRY] <= target;
    if (fire && !slot[UH_VC_STD]) return 0;                      /* a Python callback */
    if (delta != 0 && target > INT64_MAX - (int64_t)delta) return 0;   /* check_expiry raises */
    /* (1) */
    if (db != 0) {
        if (fire) {
            cell[0] = slot[UH_VC_EXPIRY] > now ? slot[UH_VC_EXPIRY] : now;
            slot[UH_VC_ARMED] = 0;
            slot[UH_VC_FIRED]++;
            lg_atomic_or(st->pending, 1);   /* irq 0; not halted: no wake-up */
        }
        cell[0] = target;
        st->vclock_last = st->blocks;
    }
    /* (2) */
    if (delta == 0) {
        slot[UH_VC_ARMED] = 0;
    } else {
        slot[UH_VC_EXPIRY] = target + (int64_t)delta;
        slot[UH_VC_SEQ] = slot[UH_VC_NEXT_SEQ]++;
        slot[UH_VC_STD] = 1;
        slot[UH_VC_ARMED] = 1;
    }
    /* (4): the only timer is this one */
    if (slot[UH_VC_ARMED]) {
        d = slot[UH_VC_EXPIRY] - target;
        budget = d <= 0 ? 1 : (uint64_t)(d / npb + (d % npb != 0));
    }
    st->budget_end = budget ? st->blocks + budget : 0;
    return 1;
}

/* Do hypercall `num` (uh_hcall_here said yes): 0 to run on, else UH_HCALL
 * (the run loop takes over after the call, at its step 2). */
static int uh_hcall(uh_state *st, const uint8_t *c, uint32_t num) {
    int64_t budget;
    /* The call's arguments in lguest_regs (eax, ebx, ecx, edx), as the
     * run loop would see them; QEMU keeps eax, ecx, edx, ebx in that order. */
    st->regs[LG_R_EAX] = num;
    st->regs[LG_R_EBX] = (uint32_t)uh_ld64(c + st->off_regs + 3 * 8);
    st->regs[LG_R_ECX] = (uint32_t)uh_ld64(c + st->off_regs + 1 * 8);
    st->regs[LG_R_EDX] = (uint32_t)uh_ld64(c + st->off_regs + 2 * 8);
    st->hcall_counts[num]++; st->hcall_total++;   /* counted before it runs, as do_hcall does */
    if (num == UH_LHCALL_FLUSH_ASYNC) return 0;  /* the (empty) ring was the whole work */
    /* The wall clock's SET_CLOCKEVENT in C: the same timer call as
     * CpuTimer.set_clockevent, and what the backend's handler then finds
     * is known -- the call kills nothing and sets no notify, halt or
     * changed table (a break-out from another thread is the block hook's
     * stop_flag), and a wall clock sets no block budget. */
    if (num == UH_LHCALL_SET_CLOCKEVENT && st->clock_cb != NULL
        && st->clock_cb(st->clock_timer, st->clock_wheel, st->regs[LG_R_EBX])) {
        st->budget_end = 0;
        return 0;
    }
    /* The virtual clock's, when it is only the cpu's clock event: in C too. */
    if (num == UH_LHCALL_SET_CLOCKEVENT && st->vclock_slot != NULL && uh_vclock_hcall(st, st->regs[LG_R_EBX]))
        return 0;
    if (st->hcall_cb == NULL) return UH_HCALL;
    budget = st->hcall_cb(st->hcall_self, num, st->regs[LG_R_EBX]);
    if (budget < 0) return UH_HCALL;
    st->budget_end = budget ? st->blocks + (uint64_t)budget : 0;
    return 0;
}

static void uh_on_intr(uh_engine *uc, uint32_t intno, void *user) {
    uh_state *st = (uh_state *)user;
    /* Vectors 32..255 only come from int N: no error code, no exception
     * in flight, so the registers and segments are all we need (a
     * 5.5 KiB context copy each way otherwise); below 32 too when the
     * exception fields can be reached in the live CPU state. */
    uint8_t *c = (intno >= 32 || st->env_isint != NULL) && st->ctx_small ? st->ctx_small : st->ctx;
    int cpl, reason;
    uint32_t num = 0;
    st->intr_hooks++;
    st->ctx_save(uc, c);
    cpl = uh_intr_record(st, uc, c, intno);
    reason = uh_intr_route(st, intno, cpl);
    if (reason == 0) {
        uint32_t eip0 = st->trace ? (uint32_t)uh_ld64(c + st->off_eip) : 0;   /* for the timeline */
        reason = uh_deliver(st, c, intno, st->idt[2 * intno], st->idt[2 * intno + 1],
                            !st->is_int && lg_has_err(intno), st->errcode, cpl);
        if (reason == 0) st->direct_counts[intno]++;
        /* -- timeline: one test when off -- */
        if (reason == 0 && st->trace) {
            if (st->trace_len < st->trace_cap) {
                uint64_t *e = st->trace + 4 * (size_t)st->trace_len++;
                e[0] = st->blocks; e[1] = (uint64_t)lg_monotonic_ns(); e[2] = eip0;
                e[3] = intno | ((uint64_t)cpl << 8) | ((uint64_t)(st->api->regs[LG_R_CS] & 3) << 16);
            } else {
                st->trace_dropped++;
            }
        }
        /* -- end timeline -- */
    } else if (reason == UH_TRAP && intno == LG_TRAP_ENTRY_VEC && uh_hcall_here(st, c, cpl, &num)) {
        reason = uh_hcall(st, c, num);
    } else if (reason == UH_TRAP && uh_reflectable(st, c, intno, cpl)) {
        /* handle_trap would only reflect it: do it here, without leaving
         * the emulator.  Counted first, as handle_trap counts before
         * deliver_trap (a kill by the push still counts). */
        st->reflect_counts[intno]++; st->reflect_total++;
        reason = uh_deliver(st, c, intno, st->guest_idt[2 * intno], st->guest_idt[2 * intno + 1],
                            lg_has_err(intno), st->errcode, cpl);
    }
    st->ctx_restore(uc, c);   /* the handler's state, or the trap's untouched */
    if (reason != 0) uh_stop(st, reason);
}

static int uh_on_invalid(uh_engine *uc, void *user) {
    uh_state *st = (uh_state *)user;
    uint8_t *c = st->ctx;
    st->ctx_save(uc, c);
    lg_store32(c + st->off_oldexc, 0xFFFFFFFFu);
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
    st->reg_read(uc, st->reg_ids[LG_R_EAX], &eax);
    /* emulate_insn: "in" of a byte ORs 16 ones into eax (sic), wider ones set it all */
    eax = size == 1 ? (eax | 0xFFFFu) : 0xFFFFFFFFu;
    st->reg_write(uc, st->reg_ids[LG_R_EAX], &eax);
    return size == 1 ? 0xFFu : size == 2 ? 0xFFFFu : 0xFFFFFFFFu;
}
static void uh_on_out(uh_engine *uc, uint32_t port, int size, uint32_t value, void *user) {
    ((uh_state *)user)->io_count++;
}

/* Would lguest's maybe_do_interrupt deliver something at `eip` now?  The
 * core's own rule (abi.h), on lguest_data read in place: set_guest_data
 * only records an address whose two words lie inside guest memory.  The
 * guest runs, so it is not halted. */
static inline int uh_irq_ready(uh_state *st, uint32_t eip) {
    uint32_t pend = lg_atomic_load(st->pending);
    if (!pend) return 0;
    if (st->api == NULL) return 1;           /* the Python core: any attention */
    if (!st->has_ld) return 0;
    return lg_irq_deliverable(pend, lg_load32(st->mem + st->ld + LG_LD_BLOCKED_INTERRUPTS),
                              lg_load32(st->mem + st->ld + LG_LD_IRQ_ENABLED), 0,
                              eip, st->noirq_start, st->noirq_end, st->guest_idt);
}

/* ---- The store fast path ---------------------------------------------
 *
 * Unicorn 2.1.4 stubs out QEMU's dirty-memory bitmap, so tlb_set_page
 * marks every writable RAM entry TLB_NOTDIRTY and every guest store leaves
 * the translated code for notdirty_write, whose one job here is to
 * invalidate translations of the page stored to (its tlb_set_dirty never
 * fires: every x86 page without NX has a code entry).  Its own
 * tlb_protect_code is a no-op, and tb_gen_code re-protects only the new
 * block's virtual range, not the page's other virtual aliases.
 *
 * So the hook keeps the protection itself:
 *  - code_pages: a bit per guest page (by host address, so every alias of
 *    the page is one bit) that a translated block comes from.  A block runs
 *    this hook first, before Unicorn's exit check (translator.c emits the
 *    block hook before gen_tb_start) and before any guest store, so the
 *    first run of every new block is seen; code_gen_ptr moving since the
 *    last hook says "this block is new" (one translation per hook: the
 *    main loop translates one block and runs it).  Its page(s), found
 *    through the code TLB entry that tb_gen_code has just filled, get the
 *    bit and libunicorn's tlb_reset_dirty on the host page: TLB_NOTDIRTY
 *    on every entry of every MMU index, the victim TLB included, that maps
 *    it, whatever the virtual address;
 *  - every UH_FAST_PERIOD blocks and at each entry, uh_fast_clear takes
 *    TLB_NOTDIRTY off the main-table entries of guest RAM pages whose bit
 *    is clear: their stores take the inline path.  Entries refilled later
 *    come back with the flag (slow, still exact) until the next pass;
 *  - a code_gen_ptr below the last one seen means the cache was flushed:
 *    no translation is left, so the bitmap starts again;
 *  - uh_fast_sync (each entry and exit of uh_run): code_gen_ptr moved with
 *    no hook to see it (a run outside uh_run, or anything unforeseen) ->
 *    flush the translation cache and start again: no block of unknown
 *    page survives.  A code page the hook cannot find (no code TLB entry)
 *    -> give up for good: re-protect all of guest memory, clear no more.
 * Stores to a page with code therefore always take notdirty_write, from
 * any alias, as before; pages whose translations were all invalidated keep
 * their bit (slow, exact) until a flush. */
#define UH_TLB_ENTRY_BITS 6          /* sizeof(CPUTLBEntry) == 64 */
#define UH_TLB_NOTDIRTY 0x400ull     /* 1 << (TARGET_PAGE_BITS_MIN - 2) */
#define UH_TLB_FLAGS 0xFFFull        /* every flag bit of addr_write */
#define UH_NB_MMU 3                  /* x86: NB_MMU_MODES */
#define UH_FAST_PERIOD 4096u        /* blocks between two clearing passes */
#define UH_FAST_ENTRY_GAP 256u       /* and at an entry, if this many since the last */

/* Mark one host page as code, re-protecting it (every TLB entry mapping
 * it, whatever its virtual address) the first time. */
static void uh_fast_mark_host(uh_state *st, uint8_t *h) {
    uint64_t pg;
    /* Outside guest memory: uh_fast_clear never touches such an entry. */
    if (h < st->mem || (uint64_t)(h - st->mem) >= st->mem_size) return;
    pg = (uint64_t)(h - st->mem) >> 12;
    if (!(st->code_pages[pg >> 3] & (1u << (pg & 7)))) {
        st->code_pages[pg >> 3] |= (uint8_t)(1u << (pg & 7));
        st->tlb_reset_dirty(st->fast_cpu, (uintptr_t)(st->mem + (pg << 12)), 4096);
        st->fast_pages++;
    }
}

/* Mark the page(s) that linear `va` maps to as code: the host page of
 * every code TLB entry (addr_code == page exactly) for it, in every MMU
 * index -- normally one page, but a guest that changed a PTE without
 * invalidating it may leave an older entry in another index, and the
 * block came from one of them.  -1 if none has it (give up). */
static int uh_fast_mark(uh_state *st, uint64_t va) {
    uint64_t page = va & ~0xFFFull;
    int i, found = 0;
    for (i = 0; i < UH_NB_MMU; i++) {
        uint64_t mask = st->tlb_fast[2 * i];
        uint8_t *e = (uint8_t *)(uintptr_t)st->tlb_fast[2 * i + 1] + (((page >> 12) << UH_TLB_ENTRY_BITS) & mask);
        if (uh_ld64(e + 16) == page) {
            uh_fast_mark_host(st, (uint8_t *)(uintptr_t)(page + uh_ld64(e + 32)));
            found = 1;
        }
    }
    return found ? 0 : -1;
}

/* Re-protect every page of guest memory (every entry uh_fast_clear could
 * have cleared) and never clear again. */
static void uh_fast_give_up(uh_state *st) {
    st->fast_on = 0;
    st->fast_dead = 1;
    if (st->mem_size) st->tlb_reset_dirty(st->fast_cpu, (uintptr_t)st->mem, (uintptr_t)st->mem_size);
}

/* The block at eip `address`, `size` bytes, runs for the first time since
 * code_gen_ptr last moved: it is the block just translated. */
static void uh_fast_new_block(uh_state *st, uint64_t address, uint32_t size) {
    /* `address` is the block's pc as the translator keys it: the code
     * segment's base plus eip, in 64 bits (Unicorn passes tb->pc; with a
     * base, eip 0xffc00100 is 0x1_00002100, and so is the TLB's page). */
    uint64_t va = address, last = va + (size ? size - 1 : 0);
    if (*st->code_gen_ptr < st->seen_ptr)   /* flushed since: no translation is left */
        memset(st->code_pages, 0, (size_t)((st->mem_size >> 15) + 1));
    if (uh_fast_mark(st, va) != 0 || (((last ^ va) & ~0xFFFull) && uh_fast_mark(st, last) != 0)) {
        uh_fast_give_up(st);
        return;
    }
    st->seen_ptr = *st->code_gen_ptr;
}

/* Take TLB_NOTDIRTY off the main-table entries of guest RAM pages without
 * code.  Only an entry whose one flag is TLB_NOTDIRTY (so not empty,
 * invalid, MMIO or read-only) and whose host page lies in guest memory. */
static void uh_fast_clear(uh_state *st) {
    int i;
    uint64_t j, n, w, off;
    uint8_t *t;
    if (!st->fast_on || *st->code_gen_ptr != st->seen_ptr) return;   /* an unseen block: wait */
    st->fast_next = st->blocks + UH_FAST_PERIOD;
    st->fast_passes++;
    for (i = 0; i < UH_NB_MMU; i++) {
        n = (st->tlb_fast[2 * i] >> UH_TLB_ENTRY_BITS) + 1;
        t = (uint8_t *)(uintptr_t)st->tlb_fast[2 * i + 1];
        for (j = 0; j < n; j++, t += 1u << UH_TLB_ENTRY_BITS) {
            w = uh_ld64(t + 8);
            if ((w & UH_TLB_FLAGS) != UH_TLB_NOTDIRTY) continue;
            off = (w & ~UH_TLB_FLAGS) + uh_ld64(t + 32) - (uint64_t)(uintptr_t)st->mem;
            if (off >= st->mem_size || (st->code_pages[off >> 15] & (1u << ((off >> 12) & 7)))) continue;
            uh_st64(t + 8, w & ~UH_TLB_NOTDIRTY);
            st->fast_cleared++;
        }
    }
}

/* At each entry and exit of uh_run: a translation no hook saw (code_gen_ptr
 * moved since the last hook) may be of any page, so flush them all. */
static void uh_fast_sync(uh_state *st) {
    if (!st->fast_on || *st->code_gen_ptr == st->seen_ptr) return;
    st->ctl(st->uc, UH_CTL_TB_FLUSH);
    memset(st->code_pages, 0, (size_t)((st->mem_size >> 15) + 1));
    st->seen_ptr = *st->code_gen_ptr;
    st->fast_resets++;
}

/* ---- Twins: indirect jumps that chain despite the block cap ---------
 *
 * The cap (see uh_on_block) gives every block cflags 128, and Unicorn
 * 2.1.4 looks up the target of an indirect jump (ret, call *, jmp *) with
 * cflags 0: the lookup always misses -- a jump-cache probe, a hash-table
 * probe that walks the page tables for the physical pc -- and the guest
 * leaves the translated code for the main loop, which finds the capped
 * block.  That was ~30 % of a system-call-heavy exec run (perf: lookup_tb_ptr,
 * tb_htable_lookup, qht_lookup, get_page_addr_code).
 *
 * A twin is a second translation of a new block, made with cflags 0 (so
 * found by those lookups), only when the capped translation ended before
 * the cap: then the uncapped one holds the very same instructions (the
 * translator is deterministic, and no guest instruction runs between the
 * two), so it is bounded as the capped one is.  Whether it ended before
 * the cap is asked of Unicorn itself: uc_ctl_request_cache with the cap
 * in cflags_next_tb returns the capped block at this pc (translating one,
 * capped, if the block that just ran was made with other flags -- a
 * one-instruction block after self-modifying code) and its icount.  Two
 * translations at most, each far below tb_guard: they are only made while
 * three guards of room remain, so the buffer still never fills.
 * Both translations sit on the block's own page(s), which
 * uh_fast_new_block has just marked as code. */
static uint32_t uh_twin(uh_state *st, uint64_t address) {
    uh_tb_info info;
    uint32_t extent = 0;
    if (*st->code_gen_ptr + 3 * st->tb_guard > *st->code_gen_highwater) { st->twin_skipped++; return 0; }
    *st->tb_cflags = st->tb_max_insns;
    info.pc = ~0ull; info.icount = 0xFFFF; info.size = 0;
    if (st->ctl(st->uc, UH_CTL_TB_REQUEST, address, &info) == 0 && info.pc == address) {
        extent = info.size;
        if (info.icount < st->tb_max_insns) {
            *st->tb_cflags = 0xFFFFFFFFu;          /* no request: the lookups' flags, 0 */
            if (st->ctl(st->uc, UH_CTL_TB_REQUEST, address, &info) == 0) st->twins++;
        } else {
            st->twin_skipped++;
        }
    } else {
        st->twin_skipped++;
    }
    *st->tb_cflags = st->tb_max_insns;
    return extent;
}

/* Every block the emulator runs is the guest's (the entry runs no host
 * code, and no host page is executable), so every block counts toward
 * the budget and the deadline and sees a break-out.  `address` is the
 * translator's pc: the code segment's base plus eip in 64 bits, with no
 * wrap at 4 GiB (eip 0xffc00100 in a segment based at 0x402000 is
 * 0x1_00002100; measured, tests/test_store_fast_path.py), so it says
 * nothing about the host range.  Guest code at CPL 0
 * cannot happen (the entry refuses RPL-0 code, load_gdt lets no gate or
 * TSS of the guest's into the CPU's GDT, and the CPU's own iret and
 * far-transfer checks keep CPL >= 1); it is checked anyway as a
 * backstop, at every stop (uh_run, uh_on_intr) and every 1024th block:
 * a reg_read on every block cost 40% of a tight loop's block rate. */
static void uh_on_block(uh_engine *uc, uint64_t address, uint32_t size, void *user) {
    uh_state *st = (uh_state *)user;
    uint32_t cs = 0, eip;
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
     * jumps would no longer chain (the chaining lookup uses flags 0):
     * twins (uh_twin) win that back for every block that ended before
     * the cap.
     *
     * One path bypasses the request: when the code buffer is full the
     * translator flushes it and restarts the main loop, and the first
     * block after that is made with flags 0.  So the buffer must never
     * fill: at most one block is translated between two runs of this
     * hook (three with a twin, made only while three guards remain), far
     * less than tb_guard bytes, and once fewer than tb_guard bytes remain
     * the guest stops here (before the block runs) and uh_run flushes
     * and re-enters it. */
    *st->tb_cflags = st->tb_max_insns;
    /* The store fast path: a new block's pages are code (see uh_fast_new_block). */
    if (__builtin_expect(*st->code_gen_ptr != st->twin_seen, 0)) {   /* the block just translated: its first run */
        if (st->fast_on && *st->code_gen_ptr != st->seen_ptr) uh_fast_new_block(st, address, size);
        if (st->twin_on && !st->skip_armed && *st->code_gen_ptr > st->twin_seen) {
            uint8_t *before = *st->code_gen_ptr;
            uint64_t extent = uh_twin(st, address), last = address + (extent ? extent - 1 : 0);
            /* What was translated lies on the capped block's page(s) --
             * not always the page(s) of the block that just ran (a shorter
             * one, after self-modifying code): mark them, as for a new block. */
            if (st->fast_on && *st->code_gen_ptr != before) {
                if (!extent || uh_fast_mark(st, address) != 0
                    || (((last ^ address) & ~0xFFFull) && uh_fast_mark(st, last) != 0))
                    uh_fast_give_up(st);
                else
                    st->seen_ptr = *st->code_gen_ptr;
            }
        }
        st->twin_seen = *st->code_gen_ptr;
        /* the buffer only grows by translating, and every translation is
         * seen here (code_gen_ptr moved), so the guard is checked here */
        if (*st->code_gen_ptr + st->tb_guard > *st->code_gen_highwater) { uh_stop(st, UH_FLUSH); return; }
    }
    /* The eip the block starts at: everything below compares eips (a guest
     * may run in a code segment of its own with a base, see env_cs_base). */
    eip = (uint32_t)(address - (st->env_cs_base ? *st->env_cs_base : 0));
    /* -- debugger: see skip_armed (one test of a field that is 0 without a debugger) -- */
    if (st->skip_armed) {
        if (eip == st->skip_addr) {
            if (st->skip_end == 0) { st->skip_armed = 0; return; }   /* extent unknown: this block only */
            if (eip < st->skip_end) {
                /* the rest goes on in a straight line (or leaves it: then a block
                 * of its own); the block at the cut is made whole again */
                st->skip_addr = eip + size;
                if (st->skip_addr < st->skip_end) *st->tb_cflags = 1;
                return;
            }
        }
        st->skip_armed = 0;
    }
    /* -- end debugger -- */
    if (st->budget_end && st->blocks >= st->budget_end) { uh_stop(st, UH_TIMER); return; }
    if (__atomic_load_n(&st->stop_flag, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&st->stop_flag, 0, __ATOMIC_SEQ_CST);
        uh_stop(st, UH_BREAK); return;
    }
    if (uh_irq_ready(st, eip)) { uh_stop(st, UH_IRQ); return; }
    /* Sampled: a clock read on every block costs ~10% of a tight loop,
     * a reg_read ~40%.  The clock is read every 64th block: a block is
     * translated the first time it runs, which can take ~1 ms for a
     * page of SSE code (more under load), so 64 fresh blocks stay well
     * inside run(timeout)'s 0.5 s grace where 1024 did not (~0.3-0.95 s
     * late).  The CPL backstop stays at every 1024th. */
    if ((st->blocks & 63) == 0) {
        if ((st->blocks & 1023) == 0) {
            st->reg_read(uc, st->reg_ids[LG_R_CS], &cs);
            if ((cs & 3) == 0) { uh_stop(st, UH_RING0); return; }
        }
        if (st->deadline_ns || st->slice_ns) {
            int64_t now = lg_monotonic_ns();
            if ((st->deadline_ns && now >= st->deadline_ns) || (st->slice_ns && now >= st->slice_end)) {
                uh_stop(st, UH_DEADLINE); return;
            }
        }
    }
    st->block_pc = eip;
    st->block_end = eip + size;
    st->blocks++;
    if (st->fast_on && st->blocks >= st->fast_next) uh_fast_clear(st);
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
        lg_store32(sc, sel & 0xFFFF); uh_st64(sc + 8, 0); lg_store32(sc + 16, 0); lg_store32(sc + 20, 0);
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
    lg_store32(sc, sel & 0xFFFF); uh_st64(sc + 8, base); lg_store32(sc + 16, limit); lg_store32(sc + 20, e2);
    st->errcode = 0;
    return 0;
}

/* iretd to an outer level nulls the data segments the new CPL may not use. */
static void uh_validate_seg(uh_state *st, uint8_t *c, int seg, int cpl) {
    uint8_t *sc = c + st->off_segs + seg * st->seg_stride;
    uint32_t e2 = lg_load32(sc + 20), dpl = (e2 >> 13) & 3;
    if ((seg == S_FS || seg == S_GS) && (lg_load32(sc) & 0xFFFC) == 0) return;
    if ((!(e2 & 0x800) || !(e2 & 0x400)) && dpl < (uint32_t)cpl) {
        lg_store32(sc, 0); uh_st64(sc + 8, 0); lg_store32(sc + 16, 0); lg_store32(sc + 20, 0);
    }
}

/* Steps 1 and 2 of uh_run: load the guest's segments into the saved context
 * as the Switcher's pops and iretd would, then its registers into the CPU.
 * 0, or the trap the CPU would have raised (st->errcode set); on a refusal
 * the CPU state is untouched (c is not restored). */
static int uh_enter(uh_state *st, uint8_t *c) {
    static const int data_order[4] = {S_GS, S_FS, S_ES, S_DS};
    static const int data_reg[4] = {LG_R_GS, LG_R_FS, LG_R_ES, LG_R_DS};
    uint32_t *r = st->regs;
    uint32_t v, cs = r[LG_R_CS] & 0xFFFF, ss = r[LG_R_SS] & 0xFFFF;
    int i, cpl, trap;
    /* 1. The data segments, as the pops at CPL 0 load them. */
    for (i = 0; i < 4; i++) {
        trap = uh_entry_seg(st, c, data_order[i], r[data_reg[i]] & 0xFFFF, 0, 0);
        if (trap) return trap;
    }
    /* 2. CS then SS, as iretd checks them; never CPL 0. */
    if ((cs & 3) == 0 && (cs & 0xFFFC) != 0) { st->errcode = cs & 0xFFFC; return 13; }
    trap = uh_entry_seg(st, c, S_CS, cs, 1, 0);
    if (trap) return trap;
    cpl = (int)(cs & 3);
    trap = uh_entry_seg(st, c, S_SS, ss, 2, cpl);
    if (trap) return trap;
    for (i = 0; i < 4; i++) uh_validate_seg(st, c, data_order[i], cpl);
    uh_fix_hflags(st, c);
    lg_store32(c + st->off_oldexc, 0xFFFFFFFFu);
    uh_st64(c + st->off_eip, r[LG_R_EIP]);
    st->ctx_restore(st->uc, c);
    for (i = LG_R_EAX; i <= LG_R_EBP; i++) st->reg_write(st->uc, st->reg_ids[i], &r[i]);
    st->reg_write(st->uc, st->reg_ids[LG_R_ESP], &r[LG_R_ESP]);
    /* what iretd at CPL 0 loads: the guest's flags, IF on, IOPL 0, no NT/VM */
    v = (r[LG_R_EFLAGS] & UH_EFLAGS_KEEP) | LG_X86_EFLAGS_IF | 2u;
    st->reg_write(st->uc, st->reg_ids[LG_R_EFLAGS], &v);
    return 0;
}

/* Step 3: run from eip until a hook stops the guest, flushing the
 * translation cache when it nears full (see uh_on_block): the guest stopped
 * at a block start and resumes there with its state untouched.  Unicorn's
 * uc_err. */
static int uh_emulate(uh_state *st, uint32_t eip) {
    int err;
    if (*st->code_gen_ptr + st->tb_guard > *st->code_gen_highwater) {
        st->ctl(st->uc, UH_CTL_TB_FLUSH); st->stops[UH_FLUSH]++;
    }
    for (;;) {
        *st->tb_cflags = st->skip_armed && st->skip_end ? 1 : st->tb_max_insns;   /* a rest: see skip_armed */
        err = st->emu_start(st->uc, eip, st->until_va, 0, 0);
        if (err || st->reason != UH_FLUSH) return err;
        st->ctl(st->uc, UH_CTL_TB_FLUSH);       /* counted by uh_stop */
        st->reason = UH_NONE;
        st->reg_read(st->uc, st->reg_ids[LG_R_EIP], &eip);
    }
}

/* Step 4: the guest's registers at the stop, into st->regs; a stop in
 * virtual-8086 mode or at CPL 0 is reported as such, whatever stopped it. */
static void uh_exit_state(uh_state *st) {
    uint32_t *r = st->regs, v;
    int i;
    for (i = 0; i < LG_NUM_REGS; i++) {
        if (st->reg_ids[i] >= 0) {
            v = 0; st->reg_read(st->uc, st->reg_ids[i], &v);
            r[i] = (i >= LG_R_GS && i <= LG_R_ES) || i == LG_R_CS || i == LG_R_SS ? (v & 0xFFFF) : v;
        }
    }
    /* Virtual-8086 mode: Unicorn's iret takes EFLAGS.VM from the popped
     * image at any CPL (QEMU's helper_ret_protected goes to
     * return_to_vm86), where the CPU ignores it unless CPL is 0.  The
     * guest then runs real-mode segments at CPL 3: no privilege, but a
     * state lguest never supports (and whose cs has no RPL, so it could
     * pass for CPL 0 below).  CPL 0 itself is impossible (see uh_on_block). */
    if (r[LG_R_EFLAGS] & UH_EFLAGS_VM) {
        if (st->reason != UH_VM86) { st->reason = UH_VM86; st->stops[UH_VM86]++; }
    } else if ((r[LG_R_CS] & 3) == 0 && st->reason != UH_RING0) {
        st->reason = UH_RING0; st->stops[UH_RING0]++;
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
    uint32_t *r = st->regs;
    int err = 0, trap;
    st->reason = UH_NONE;
    st->trapnum = 256; st->errcode = 0; st->is_int = 0;
    if (__atomic_load_n(&st->stop_flag, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&st->stop_flag, 0, __ATOMIC_SEQ_CST);
        st->reason = UH_BREAK; st->stops[UH_BREAK]++;
        return 0;
    }
    if (st->slice_ns) st->slice_end = lg_monotonic_ns() + st->slice_ns;
    st->ctx_save(st->uc, st->ctx);
    trap = uh_enter(st, st->ctx);
    if (trap) {
        /* The guest never ran: its registers and the CPU stay as they were. */
        st->trapnum = (uint32_t)trap;
        st->reason = UH_SWITCHER; st->stops[UH_SWITCHER]++;
    } else {
        uh_fast_sync(st);
        /* a pass on entry too (the guest may have stopped to change its page
         * tables: fresh entries), but not on every entry of a trap-heavy
         * guest: a pass reads the whole TLB */
        if (st->blocks + UH_FAST_PERIOD >= st->fast_next + UH_FAST_ENTRY_GAP) uh_fast_clear(st);
        err = uh_emulate(st, r[LG_R_EIP]);
        uh_fast_sync(st);
        uh_exit_state(st);
    }
    r[LG_R_TRAPNUM] = st->trapnum;
    r[LG_R_ERRCODE] = st->errcode;
    return err;
}

#endif /* LGUEST_UCHOOK_H */
